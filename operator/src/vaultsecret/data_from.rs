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
    (owner, index): (super::Uid, usize),
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
    (owner, index): (super::Uid, usize),
    max_age: Option<Duration>,
) -> Result<Entries, NotSynced> {
    if let Some(extract) = &source.extract {
        store.check_object(&extract.name)?;
        let object = VaultObject::secret(extract.name.clone(), extract.version.clone());
        let secret = ctx.cache.get(store.backend.as_ref(), &object, max_age).await?;
        super::objects::check_usable(&object, &secret)?;
        let fields = vaultsync_stores::data_from::extract_fields(secret.value.expose(), &extract.name)?;
        let keys = fields.into_iter().map(|(key, value)| (key, SecretBytes::new(value), secret.version.clone()));
        return Ok(Entries { keys: keys.collect(), skipped: Vec::new() });
    }
    let Some(find) = &source.find else { return Ok(Entries::default()) };
    super::find::find(ctx, store, find, owner, index, max_age).await
}
