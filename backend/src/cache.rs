//! A read-through cache keyed by (backend identity, object): concurrent reads of one key make
//! one backend call, and results are reused for a window, so N resources that reference one
//! object in the same refresh window cost one read. Errors are kept only briefly.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::{Backend, FetchedSecret, Identity, ObjectRef, Result};

type Key = (Identity, ObjectRef);
type Slot = Arc<tokio::sync::Mutex<Option<(Instant, Result<FetchedSecret>)>>>;

/// Counters of how reads were served.
#[derive(Default, Debug)]
pub struct CacheStats {
    /// Served from a fresh entry.
    pub hits: AtomicU64,
    /// Waited for a read another caller had in flight.
    pub coalesced: AtomicU64,
    /// Went to the backend.
    pub misses: AtomicU64,
}

pub struct ReadCache {
    window: Duration,
    error_window: Duration,
    slots: Mutex<HashMap<Key, Slot>>,
    pub stats: CacheStats,
}

impl ReadCache {
    /// `window`: how long a successful read is reused. Pinned versions never change, but are
    /// kept no longer, so memory stays bounded by what is in use.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            error_window: window.min(Duration::from_secs(2)),
            slots: Mutex::default(),
            stats: CacheStats::default(),
        }
    }

    /// Reads `object` through the cache. `max_age` lets a caller that must see the newest
    /// version (a forced sync, a vault event) accept only entries younger than that.
    pub async fn get(
        &self,
        backend: &dyn Backend,
        object: &ObjectRef,
        max_age: Option<Duration>,
    ) -> Result<FetchedSecret> {
        let key = (backend.identity().clone(), object.clone());
        let slot = self.slots.lock().expect("cache lock").entry(key).or_default().clone();
        let asked = Instant::now();
        let mut entry = slot.lock().await;
        if let Some((at, result)) = entry.as_ref() {
            // Read by another caller after we asked: as fresh as a read of our own would be.
            if *at >= asked {
                self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                return result.clone();
            }
            let limit = if result.is_ok() { self.window } else { self.error_window };
            if at.elapsed() < max_age.map_or(limit, |m| m.min(limit)) {
                self.stats.hits.fetch_add(1, Ordering::Relaxed);
                return result.clone();
            }
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        let result = backend.get(object).await;
        *entry = Some((Instant::now(), result.clone()));
        drop(entry);
        self.prune();
        result
    }

    /// Drops entries past their window so the cache holds only what is in use.
    fn prune(&self) {
        let mut slots = self.slots.lock().expect("cache lock");
        if slots.len() < 1024 {
            return;
        }
        let window = self.window;
        slots.retain(|_, slot| match slot.try_lock() {
            Ok(entry) => entry.as_ref().is_some_and(|(at, _)| at.elapsed() < window),
            Err(_) => true,
        });
    }

    /// Forgets every entry of `object` (all identities), e.g. when the vault reports a new version.
    pub fn invalidate(&self, name: &str) {
        // Key Vault names are case-insensitive, and events may spell them differently.
        self.slots.lock().expect("cache lock").retain(|(_, object), _| !object.name.eq_ignore_ascii_case(name));
    }
}
