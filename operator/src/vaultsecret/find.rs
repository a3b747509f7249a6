//! `dataFrom.find` that costs nothing when nothing changed: one list (every page), the names filtered by prefix,
//! regular expression, tags and the store's allowlist, and a GET only for objects whose `updated` time differs from
//! the one remembered for this VaultSecret. Values remembered come from memory; an unchanged vault costs the list
//! and no GET. `rewrite` (regular-expression replacements of the keys) applies to `extract` and `find` alike.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use vaultsync_api::secret::{FindRef, Rewrite};
use vaultsync_backend::{ObjectRef as VaultObject, SecretBytes};
use vaultsync_stores::data_from;

use super::{Context, data_from::Entries, status::NotSynced};
use crate::render;

/// What one find read last time, per object.
#[derive(Clone)]
struct Remembered {
    /// The object's `updated` time when it was read.
    updated: i64,
    /// When it was read (Unix seconds): a value read in the second it was updated may miss a later update in that
    /// same second, so it is trusted only when read later.
    read_at: i64,
    value: SecretBytes,
    version: String,
}

/// A VaultSecret (its UID) and the index of its `dataFrom` entry.
type EntryKey = (super::Uid, usize);

/// Per VaultSecret and `dataFrom` entry, what its find read last.
#[derive(Default)]
pub struct FindMemory {
    entries: Mutex<HashMap<EntryKey, BTreeMap<String, Remembered>>>,
}

impl FindMemory {
    /// Forgets a VaultSecret (deleted), by its UID.
    pub fn forget(&self, uid: super::Uid) {
        self.entries.lock().expect("find memory lock").retain(|(owner, _), _| *owner != uid);
    }

    fn get(&self, key: &EntryKey) -> BTreeMap<String, Remembered> {
        self.entries.lock().expect("find memory lock").get(key).cloned().unwrap_or_default()
    }

    fn set(&self, key: EntryKey, found: BTreeMap<String, Remembered>) {
        self.entries.lock().expect("find memory lock").insert(key, found);
    }
}

/// Applies `rewrite` to the keys of one `dataFrom` entry (the stores crate's rules).
pub(super) fn rewrite(index: usize, rules: &[Rewrite], entries: &mut Entries) -> Result<(), NotSynced> {
    Ok(data_from::rewrite(index, rules, entries.keys.iter_mut().map(|(key, _, _)| key))?)
}

/// Runs one `dataFrom.find` for the VaultSecret `owner` (its UID), entry `index`.
pub(super) async fn find(
    ctx: &Context,
    store: &vaultsync_stores::ResolvedStore,
    find: &FindRef,
    owner: super::Uid,
    index: usize,
    max_age: Option<Duration>,
) -> Result<Entries, NotSynced> {
    let openbao = matches!(store.backend.identity().endpoint, vaultsync_backend::Endpoint::OpenBao { .. });
    let name = data_from::find_name(find, index, openbao)?;
    let listed = store.backend.list(&find.path).await;
    vaultsync_backend::audit::list(store.backend.identity(), &find.path, &listed);
    let listed = listed?;
    let now = Timestamp::now().as_second();
    let selected = data_from::selected(listed, find, name.as_ref(), |n| store.check_object(n).is_ok());
    let data_from::Readable { names, skipped } = data_from::readable(selected, find, now)?;
    let keys = data_from::find_keys(&names)?;
    let mut found = Entries { keys: Vec::new(), skipped };
    let memory_key = (owner, index);
    let remembered = ctx.find_memory.get(&memory_key);
    let mut read = BTreeMap::new();
    for (listed, key) in names.into_iter().zip(keys) {
        let unchanged = remembered
            .get(&listed.name)
            .filter(|r| listed.updated == Some(r.updated) && r.updated < r.read_at)
            .cloned();
        let entry = match unchanged {
            Some(entry) => entry,
            None => {
                // Changed since this find last read it: a cached read from before the change would be stale, so only
                // one made since is accepted. (An object seen for the first time takes the cache as any read does.)
                let changed = remembered.contains_key(&listed.name);
                let since_update = listed
                    .updated
                    .filter(|_| changed)
                    .map(|u| Duration::from_secs(now.saturating_sub(u).max(0) as u64));
                let age = match (max_age, since_update) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let object = VaultObject::latest(listed.name.clone());
                let secret = ctx.cache.get(store.backend.as_ref(), &object, age).await?;
                Remembered {
                    updated: listed.updated.unwrap_or(i64::MAX),
                    read_at: Timestamp::now().as_second(),
                    value: secret.value,
                    version: secret.version,
                }
            }
        };
        let value = render::decode(entry.value.expose().to_vec(), find.decoding, &listed.name)?;
        found.keys.push((key, SecretBytes::new(value), entry.version.clone()));
        read.insert(listed.name, entry);
    }
    ctx.find_memory.set(memory_key, read);
    Ok(found)
}
