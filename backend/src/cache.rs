//! A read-through cache keyed by (backend identity, object): concurrent reads of one key make
//! one backend call, and a result is reused by every caller that accepts its age, so N resources
//! that reference one object cost one read per refresh interval however long working through them
//! takes. Each caller says how old a read it accepts (a forced sync: none; a routine refresh: most of
//! its interval); callers that do not say accept the default age. Errors are kept only briefly.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    Backend, FetchedSecret, Identity, ObjectKind, ObjectRef, Result,
    refresh::{ListIndex, UPDATED_MARGIN_SECS},
};

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The identity is shared by every key it reads (one allocation per identity, not per object).
type Key = (Arc<Identity>, ObjectRef);

/// An entry is kept this many times the oldest age any caller accepts (at least): a VaultSecret's next refresh round
/// may come up to 1.9 intervals after its last read (its store's rounds, not its own read, set the time), and a list
/// can vouch for the entry then only if it is still here. VaultSecrets created over more than an interval would
/// otherwise have the first ones' entries pruned before their first round, and every one read again.
const KEEP_FACTOR: u32 = 3;
type Slot = Arc<tokio::sync::Mutex<Entry>>;

/// A slot's last read, and the oldest age any caller accepted for it (how long it is worth keeping).
#[derive(Default)]
struct Entry {
    read: Option<(Instant, Result<FetchedSecret>)>,
    /// When the last read started, in Unix seconds (compared with the vault's `updated` times).
    read_unix: i64,
    keep: Duration,
}

/// Counters of how reads were served.
#[derive(Default, Debug)]
pub struct CacheStats {
    /// Served from a fresh entry.
    pub hits: AtomicU64,
    /// Waited for a read another caller had in flight.
    pub coalesced: AtomicU64,
    /// Went to the backend.
    pub misses: AtomicU64,
    /// Older than the caller accepts, but a list no older than that showed the object unchanged.
    pub validated: AtomicU64,
}

pub struct ReadCache {
    default_age: Duration,
    error_age: Duration,
    slots: Mutex<HashMap<Key, Slot>>,
    /// One copy of each identity that has keys here.
    identities: Mutex<std::collections::HashSet<Arc<Identity>>>,
    last_prune: Mutex<Option<Instant>>,
    pub stats: CacheStats,
    /// Lists that show which secrets changed (Key Vault), so unchanged ones are not read again.
    pub lists: ListIndex,
}

impl ReadCache {
    /// `default_age`: how old a read callers that do not say accept.
    pub fn new(default_age: Duration) -> Self {
        Self {
            default_age,
            error_age: Duration::from_secs(2),
            slots: Mutex::default(),
            identities: Mutex::default(),
            last_prune: Mutex::default(),
            stats: CacheStats::default(),
            lists: ListIndex::default(),
        }
    }

    /// Reads `object` through the cache, accepting a read at most `max_age` old (the default age when `None`);
    /// a caller that must see the newest version (a forced sync) passes zero. Errors are reused for two seconds at
    /// most.
    pub async fn get(
        &self,
        backend: &dyn Backend,
        object: &ObjectRef,
        max_age: Option<Duration>,
    ) -> Result<FetchedSecret> {
        let max_age = max_age.unwrap_or(self.default_age);
        let key = (self.interned(backend.identity()), object.clone());
        let slot = self.slots.lock().expect("cache lock").entry(key).or_default().clone();
        let asked = Instant::now();
        let mut entry = slot.lock().await;
        entry.keep = entry.keep.max(max_age);
        if let Some((at, result)) = entry.read.as_ref() {
            // Read by another caller after we asked: as fresh as a read of our own would be.
            if *at >= asked {
                self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                crate::audit::read(backend.identity(), object, result, crate::audit::Source::Coalesced);
                return result.clone();
            }
            let limit = if result.is_ok() { max_age } else { max_age.min(self.error_age) };
            if at.elapsed() < limit {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                crate::audit::read(backend.identity(), object, result, crate::audit::Source::Cache);
                return result.clone();
            }
            // Too old, but a list of the vault may show it unchanged.
            let updated = match result {
                Ok(fetched) if object.version.is_none() && object.kind == ObjectKind::Secret => {
                    fetched.attributes.updated.filter(|u| entry.read_unix >= u.saturating_add(UPDATED_MARGIN_SECS))
                }
                _ => None,
            };
            if let Some(updated) = updated {
                let read_at = *at;
                let demand = || self.demand(backend.identity());
                if let Some(listed_at) =
                    self.lists.confirms(backend, &object.name, updated, read_at, max_age, demand).await
                {
                    self.stats.validated.fetch_add(1, Ordering::Relaxed);
                    if let Some((at, _)) = entry.read.as_mut() {
                        *at = listed_at;
                    }
                    return entry.read.as_ref().map(|(_, r)| r.clone()).expect("the entry was just confirmed");
                }
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // Recorded only with the read's result: a read abandoned half-way (a reconcile timeout) leaves the earlier
        // result, which must keep the time it was read at, or a list would vouch for it as if it were newer.
        let started_unix = unix_now();
        let result = backend.get(object).await;
        entry.read_unix = started_unix;
        crate::audit::read(backend.identity(), object, &result, crate::audit::Source::Vault);
        entry.read = Some((Instant::now(), result.clone()));
        drop(entry);
        self.prune();
        result
    }

    /// Drops entries that no round can use any more ([`KEEP_FACTOR`] times older than any caller accepted), so the
    /// cache holds only what is in use. Checked when the cache has grown past a size worth looking at, and at most
    /// every few seconds.
    fn prune(&self) {
        let mut slots = self.slots.lock().expect("cache lock");
        if slots.len() < 1024 {
            return;
        }
        {
            let mut last = self.last_prune.lock().expect("prune lock");
            if last.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
                return;
            }
            *last = Some(Instant::now());
        }
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(entry) => entry.read.as_ref().is_some_and(|(at, _)| at.elapsed() < entry.keep * KEEP_FACTOR),
            Err(_) => true,
        });
        drop(slots);
        // An identity no key holds any more (only this set does) is forgotten too.
        self.identities.lock().expect("identities lock").retain(|identity| Arc::strong_count(identity) > 1);
    }

    /// The shared copy of `identity`.
    fn interned(&self, identity: &Identity) -> Arc<Identity> {
        let mut identities = self.identities.lock().expect("identities lock");
        if let Some(shared) = identities.get(identity) {
            return shared.clone();
        }
        let shared = Arc::new(identity.clone());
        identities.insert(shared.clone());
        shared
    }

    /// The secrets cached for `identity` that a refresh would read again (latest versions): what a list replaces.
    fn demand(&self, identity: &Identity) -> usize {
        let slots = self.slots.lock().expect("cache lock");
        slots.keys().filter(|(id, o)| **id == *identity && o.version.is_none() && o.kind == ObjectKind::Secret).count()
    }

    /// Forgets every entry of `object` (all identities), e.g. when the vault reports a new version.
    pub fn invalidate(&self, name: &str) {
        // Key Vault names are case-insensitive, and events may spell them differently.
        self.slots.lock().expect("cache lock").retain(|(_, object), _| !object.name.eq_ignore_ascii_case(name));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use futures::future::BoxFuture;

    use super::*;
    use crate::{Attributes, Checked, Endpoint, Listed, ListedUpdates, Principal, SecretBytes};

    /// A vault of `objects` secrets, all last updated long ago, that counts GETs and lists.
    struct Counting {
        identity: Identity,
        objects: usize,
        gets: AtomicUsize,
        lists: AtomicUsize,
    }

    impl Backend for Counting {
        fn identity(&self) -> &Identity {
            &self.identity
        }
        fn get<'a>(&'a self, _: &'a ObjectRef) -> BoxFuture<'a, Result<FetchedSecret>> {
            self.gets.fetch_add(1, Ordering::Relaxed);
            Box::pin(async {
                Ok(FetchedSecret {
                    value: SecretBytes::new(b"value".to_vec()),
                    version: "1".into(),
                    content_type: None,
                    attributes: Attributes { updated: Some(100), ..Attributes::default() },
                })
            })
        }
        fn check(&self) -> BoxFuture<'_, Result<Checked>> {
            unreachable!("the cache never checks")
        }
        fn list<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
            unreachable!("the cache lists through list_updated")
        }
        fn list_updated(&self, _: usize) -> Option<BoxFuture<'_, Result<Option<ListedUpdates>>>> {
            self.lists.fetch_add(1, Ordering::Relaxed);
            let updated = (0..self.objects).map(|i| (format!("s{i}").into(), Some(100))).collect();
            Some(Box::pin(async move { Ok(Some(ListedUpdates { updated, pages: self.objects.div_ceil(25) })) }))
        }
    }

    /// VaultSecrets created over longer than their interval, then their first round: the entries of the first ones
    /// are older than the age they accept, but a list vouches for them; none may have been pruned and read again.
    #[tokio::test(start_paused = true)]
    async fn entries_stay_until_the_round_that_a_list_serves() {
        let objects = 2000;
        let vault = Counting {
            identity: Identity {
                endpoint: Endpoint::AzureKeyVault { vault_url: "https://many.vault.azure.net".into() },
                principal: Principal::AzureManagedIdentity { client_id: None },
            },
            objects,
            gets: AtomicUsize::default(),
            lists: AtomicUsize::default(),
        };
        let cache = ReadCache::new(Duration::from_secs(300));
        let max_age = Some(Duration::from_secs(135));
        for i in 0..objects {
            cache.get(&vault, &ObjectRef::latest(format!("s{i}")), max_age).await.expect("a read");
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        tokio::time::advance(Duration::from_secs(80)).await;
        // A new VaultSecret's read (a miss, which prunes), then the round.
        cache.get(&vault, &ObjectRef::latest("new"), max_age).await.expect("a read");
        for i in 0..objects {
            cache.get(&vault, &ObjectRef::latest(format!("s{i}")), max_age).await.expect("a read");
        }
        assert_eq!(vault.gets.load(Ordering::Relaxed), objects + 1, "the round read objects again");
        assert_eq!(vault.lists.load(Ordering::Relaxed), 1, "one list served the round");
        assert!(cache.stats.validated.load(Ordering::Relaxed) > 0);
    }
}
