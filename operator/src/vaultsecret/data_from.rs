//! `dataFrom`: many keys from one entry, every field of a JSON object (`extract`) or every object
//! under a name prefix or folder (`find`).

use std::time::Duration;

use vaultsync_backend::{ObjectRef as VaultObject, SecretBytes};

use super::{Context, status::NotSynced};

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
    (owner, index): (String, usize),
    max_age: Option<Duration>,
) -> Result<Entries, NotSynced> {
    let mut entries = entries(ctx, store, source, (owner, index), max_age).await?;
    super::find::rewrite(index, &source.rewrite, &mut entries)?;
    Ok(entries)
}

async fn entries(
    ctx: &Context,
    store: &vaultsync_stores::ResolvedStore,
    source: &vaultsync_api::secret::DataFrom,
    (owner, index): (String, usize),
    max_age: Option<Duration>,
) -> Result<Entries, NotSynced> {
    if let Some(extract) = &source.extract {
        store.check_object(&extract.name)?;
        let object = VaultObject::secret(extract.name.clone(), extract.version.clone());
        let secret = ctx.cache.get(store.backend.as_ref(), &object, max_age).await?;
        super::objects::check_usable(&object, &secret)?;
        let keys = extract_fields(&extract.name, &secret.value, &secret.version)?;
        return Ok(Entries { keys, skipped: Vec::new() });
    }
    let Some(find) = &source.find else { return Ok(Entries::default()) };
    super::find::find(ctx, store, find, owner, index, max_age).await
}

/// `extract`: every field of a JSON object value as a key (string fields as text, others as JSON), with `version`.
pub(super) fn extract_fields(
    name: &str,
    value: &SecretBytes,
    version: &str,
) -> Result<Vec<(String, SecretBytes, String)>, NotSynced> {
    let valid_key = |key: &str| !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value.expose()).map_err(|_| {
        NotSynced::new(
            "InvalidValue",
            format!("{name} is not a JSON object, so its fields cannot be extracted"),
            Duration::from_secs(120),
        )
    })?;
    let mut entries = Vec::new();
    for (field, value) in fields {
        if !valid_key(&field) {
            return Err(NotSynced::new(
                "InvalidValue",
                format!("{name} has the field {field:?}, which is not a valid Secret key"),
                Duration::from_secs(120),
            ));
        }
        let bytes = match value {
            serde_json::Value::String(text) => text.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        entries.push((field, SecretBytes::new(bytes), version.to_string()));
    }
    Ok(entries)
}
