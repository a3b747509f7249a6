//! `dataFrom`: many keys from one entry, every field of a JSON object (`extract`) or every object
//! under a name prefix or folder (`find`).

use std::time::Duration;

use vaultsync_backend::{ObjectRef as VaultObject, SecretBytes};

use super::{Context, status::NotSynced};
use crate::render;

/// The keys one `dataFrom` entry gives: every field of an object (`extract`), or every object
/// under a path (`find`), read through the cache and within the store's allowlist.
pub(super) async fn data_from(
    ctx: &Context,
    store: &crate::stores::ResolvedStore,
    source: &vaultsync_api::secret::DataFrom,
    max_age: Option<Duration>,
) -> Result<Vec<(String, SecretBytes, String)>, NotSynced> {
    let valid_key = |key: &str| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    if let Some(extract) = &source.extract {
        store.check_object(&extract.name)?;
        let object = VaultObject { name: extract.name.clone(), version: extract.version.clone() };
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
        return Ok(entries);
    }
    let Some(find) = &source.find else { return Ok(Vec::new()) };
    // Names outside the namespace's allowlist are skipped, not fetched.
    let names: Vec<String> =
        store.backend.list(&find.path).await?.into_iter().filter(|name| store.check_object(name).is_ok()).collect();
    // An empty result (a renamed or deleted folder, a narrowed allowlist) must not empty the Secret: refuse it.
    if names.is_empty() {
        return Err(NotSynced::new(
            "NoObjectsFound",
            format!("dataFrom.find found no object under {:?} that this namespace may read", find.path),
            Duration::from_secs(120),
        ));
    }
    let mut entries: Vec<(String, SecretBytes, String)> = Vec::new();
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
        entries.push((key, SecretBytes::new(value), secret.version));
    }
    Ok(entries)
}
