//! `dataFrom`: many keys from one entry, every field of a JSON object (`extract`) or every object
//! under a name prefix or folder (`find`).

use std::time::Duration;

use vaultsync_backend::{ObjectRef as VaultObject, SecretBytes};

use super::{Context, status::NotSynced};
use crate::render;

/// What one `dataFrom` entry gives.
#[derive(Default)]
pub(super) struct Entries {
    /// Key, value and the vault version behind it.
    pub keys: Vec<(String, SecretBytes, String)>,
    /// Objects found but left out, and why (`Disabled`, `Expired`, `NotYetValid`).
    pub skipped: Vec<(String, &'static str)>,
}

/// The keys one `dataFrom` entry gives: every field of an object (`extract`), or every object
/// under a path (`find`), read through the cache and within the store's allowlist.
pub(super) async fn data_from(
    ctx: &Context,
    store: &vaultsync_stores::ResolvedStore,
    source: &vaultsync_api::secret::DataFrom,
    max_age: Option<Duration>,
) -> Result<Entries, NotSynced> {
    let valid_key = |key: &str| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if let Some(extract) = &source.extract {
        store.check_object(&extract.name)?;
        let object = VaultObject::secret(extract.name.clone(), extract.version.clone());
        let secret = ctx.cache.get(store.backend.as_ref(), &object, max_age).await?;
        let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(secret.value.expose())
            .map_err(|_| {
                NotSynced::new(
                    "InvalidValue",
                    format!("{} is not a JSON object, so its fields cannot be extracted", extract.name),
                    Duration::from_secs(120),
                )
            })?;
        let mut entries = Vec::new();
        for (field, value) in fields {
            if !valid_key(&field) {
                return Err(NotSynced::new(
                    "InvalidValue",
                    format!("{} has the field {field:?}, which is not a valid Secret key", extract.name),
                    Duration::from_secs(120),
                ));
            }
            let bytes = match value {
                serde_json::Value::String(text) => text.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            entries.push((field, SecretBytes::new(bytes), secret.version.clone()));
        }
        return Ok(Entries { keys: entries, skipped: Vec::new() });
    }
    let Some(find) = &source.find else { return Ok(Entries::default()) };
    // Names outside the namespace's allowlist are skipped, not fetched; so are objects the vault says cannot be read
    // now (one disabled secret under a prefix must not stop the whole VaultSecret), which the status names.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let mut found = Entries::default();
    let mut names = Vec::new();
    for listed in store.backend.list(&find.path).await? {
        if store.check_object(&listed.name).is_err() {
            continue;
        }
        match listed.unreadable(now) {
            Some(reason) => found.skipped.push((listed.name, reason)),
            None => names.push(listed.name),
        }
    }
    // An empty result (a renamed or deleted folder, a narrowed allowlist) must not empty the Secret: refuse it.
    if names.is_empty() {
        let skipped = if found.skipped.is_empty() {
            String::new()
        } else {
            format!(" ({} found cannot be read: disabled, expired or not yet valid)", found.skipped.len())
        };
        return Err(NotSynced::new(
            "NoObjectsFound",
            format!("dataFrom.find found no object under {:?} that this namespace may read{skipped}", find.path),
            Duration::from_secs(120),
        ));
    }
    let mut origin = std::collections::BTreeMap::new();
    for name in names {
        let key: String = name
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' })
            .collect();
        // Two names that become one key would overwrite each other: refuse, naming both.
        if let Some(first) = origin.insert(key.clone(), name.clone()) {
            return Err(NotSynced::new(
                "KeyConflict",
                format!("dataFrom.find: {first:?} and {name:?} both become the Secret key {key:?}"),
                Duration::from_secs(120),
            ));
        }
        let secret = ctx.cache.get(store.backend.as_ref(), &VaultObject::latest(name.clone()), max_age).await?;
        let value = render::decode(secret.value.expose().to_vec(), find.decoding, &name)?;
        found.keys.push((key, SecretBytes::new(value), secret.version));
    }
    Ok(found)
}
