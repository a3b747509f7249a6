//! Refreshing by listing: a Key Vault list page carries `attributes.updated` for 25 secrets, so a cached read whose
//! `updated` the vault still lists is current without reading the value again. For an identity with many cached
//! secrets, one list per refresh round replaces a GET per secret; only what changed is read.
//!
//! The list is taken only when it costs fewer calls than the reads it replaces (it stops as soon as it would not:
//! a list never costs more than the GETs), is shared by every read of the identity while it is fresh enough for
//! them, and is never used by a read that must see the vault as it is now (a forced sync). An identity that may
//! not list is remembered and read object by object.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::{Backend, Error, Identity, ListedUpdates};

/// How long an identity refused a list is read object by object before listing is tried again.
const REFUSED_FOR: Duration = Duration::from_secs(3600);
/// How long after a failed list (throttled, unavailable) listing is tried again.
const FAILED_FOR: Duration = Duration::from_secs(60);
/// A list vouches for reads for this share of the age they accept (a fifth: a refresh round and some slack).
const LIST_SERVES: u32 = 5;
/// A cached read is trusted to match a list only if it was made this long after the `updated` time it carries:
/// `updated` has whole seconds, and a new version written in the same second as the cached one would show the
/// same time. The margin also covers clocks a few seconds apart.
pub const UPDATED_MARGIN_SECS: i64 = 5;

/// One complete list of an identity's vault.
struct Snapshot {
    /// When the list started: an update before that shows in it.
    at: Instant,
    /// When the list ended: what it vouches for is counted from here. A long list (hundreds of pages, with the round's
    /// reads queued behind it) would otherwise be too old for them by the time it ends, and every one would be read.
    done: Instant,
    updates: ListedUpdates,
}

#[derive(Default)]
struct State {
    snapshot: Option<Arc<Snapshot>>,
    /// Pages the vault's list took (or at least needs, when a list stopped early).
    pages: Option<usize>,
    /// No list before this (refused, failed, or not worth it for now).
    quiet_until: Option<Instant>,
    /// Why the last list was refused, while it is.
    refused: Option<String>,
}

/// Counters of the list path.
#[derive(Default, Debug)]
pub struct RefreshStats {
    /// Complete lists taken.
    pub lists: std::sync::atomic::AtomicU64,
    /// Lists stopped because they would have cost more calls than the reads they replace.
    pub stopped: std::sync::atomic::AtomicU64,
    /// Lists the vault refused (the identity may not list).
    pub refused: std::sync::atomic::AtomicU64,
}

/// Per identity: the last list of its vault, and whether listing is worth it or allowed.
#[derive(Default)]
pub struct ListIndex {
    states: Mutex<HashMap<Identity, Arc<tokio::sync::Mutex<State>>>>,
    pub stats: RefreshStats,
}

impl ListIndex {
    fn state(&self, identity: &Identity) -> Arc<tokio::sync::Mutex<State>> {
        self.states.lock().expect("index lock").entry(identity.clone()).or_default().clone()
    }

    /// Why `identity` may not list, if the vault refused its last list.
    pub fn refusal(&self, identity: &Identity) -> Option<String> {
        let state = self.states.lock().expect("index lock").get(identity).cloned()?;
        state.try_lock().ok()?.refused.clone()
    }

    /// The time a list showed `name` still at `updated`, if there is a list no older than a fifth of `max_age` taken after
    /// `read_at` (the cached read's time), taking one when `demand` (the identity's cached secrets that will need a
    /// refresh) is more than the pages a list costs. `None`: read the object.
    pub async fn confirms(
        &self,
        backend: &dyn Backend,
        name: &str,
        updated: i64,
        read_at: Instant,
        max_age: Duration,
        demand: impl FnOnce() -> usize,
    ) -> Option<Instant> {
        if max_age.is_zero() {
            return None;
        }
        let state = self.state(backend.identity());
        // Reads waiting here share the list the first one takes.
        let mut state = state.lock().await;
        // A list serves one refresh round (the operator brings a store's refreshes together in a tenth of the
        // interval), not the whole window: a change listed after it would wait another interval.
        let usable = |s: &Snapshot| s.at > read_at && s.done.elapsed() < max_age / LIST_SERVES;
        let snapshot = match state.snapshot.clone().filter(|s| usable(s)) {
            Some(snapshot) => snapshot,
            None => {
                let now = Instant::now();
                if state.quiet_until.is_some_and(|until| now < until) {
                    return None;
                }
                let demand = demand();
                // The list must cost fewer calls than reading every cached secret once.
                let max_pages = demand.saturating_sub(1);
                if state.pages.is_some_and(|pages| pages > max_pages) || max_pages == 0 {
                    state.quiet_until = Some(now + max_age / 2);
                    return None;
                }
                let list = backend.list_updated(max_pages)?;
                let result = list.await;
                let done = Instant::now();
                let took_ms = u64::try_from(done.duration_since(now).as_millis()).unwrap_or(u64::MAX);
                match result {
                    Ok(Some(updates)) => {
                        self.stats.lists.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        info!(identity = %backend.identity().principal, pages = updates.pages, took_ms, "listed the vault");
                        state.pages = Some(updates.pages);
                        state.refused = None;
                        state.quiet_until = None;
                        let snapshot = Arc::new(Snapshot { at: now, done, updates });
                        state.snapshot = Some(snapshot.clone());
                        snapshot
                    }
                    Ok(None) => {
                        self.stats.stopped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        debug!(identity = %backend.identity().principal, max_pages, took_ms, "stopped a list that cost more than the reads it replaces");
                        state.pages = Some(max_pages + 1);
                        state.quiet_until = Some(now + max_age / 2);
                        return None;
                    }
                    Err(Error::Forbidden { message, .. }) => {
                        self.stats.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        state.refused = Some(message);
                        state.quiet_until = Some(now + REFUSED_FOR);
                        return None;
                    }
                    Err(error) => {
                        warn!(identity = %backend.identity().principal, %error, took_ms, "listing the vault failed; reading object by object for a while");
                        state.quiet_until = Some(now + FAILED_FOR);
                        return None;
                    }
                }
            }
        };
        let listed = snapshot.updates.updated.get(name.to_ascii_lowercase().as_str())?;
        (*listed == Some(updated)).then_some(snapshot.at)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;

    use super::*;
    use crate::{Checked, Endpoint, FetchedSecret, Listed, ObjectRef, Principal, Result};

    /// A vault whose list of `names` (all updated at 100) takes `list_takes`, counting lists.
    struct SlowList {
        identity: Identity,
        names: Vec<String>,
        list_takes: Duration,
        lists: AtomicUsize,
    }

    impl SlowList {
        fn new(objects: usize, list_takes: Duration) -> Self {
            Self {
                identity: Identity {
                    endpoint: Endpoint::AzureKeyVault { vault_url: "https://slow.vault.azure.net".into() },
                    principal: Principal::AzureManagedIdentity { client_id: None },
                },
                names: (0..objects).map(|i| format!("s{i}")).collect(),
                list_takes,
                lists: AtomicUsize::default(),
            }
        }
    }

    impl Backend for SlowList {
        fn identity(&self) -> &Identity {
            &self.identity
        }
        fn get<'a>(&'a self, _: &'a ObjectRef) -> BoxFuture<'a, Result<FetchedSecret>> {
            unreachable!("the index never reads values")
        }
        fn check(&self) -> BoxFuture<'_, Result<Checked>> {
            unreachable!("the index never checks")
        }
        fn list<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
            unreachable!("the index lists through list_updated")
        }
        fn list_updated(&self, _: usize) -> Option<BoxFuture<'_, Result<Option<ListedUpdates>>>> {
            Some(Box::pin(async move {
                self.lists.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(self.list_takes).await;
                let updated = self.names.iter().map(|n| (n.as_str().into(), Some(100))).collect();
                Ok(Some(ListedUpdates { updated, pages: self.names.len().div_ceil(25) }))
            }))
        }
    }

    /// A round's reads that queued behind a list longer than the share of the age it vouches for are still served
    /// by it, and reads soon after it too: one list for the round, not a GET each.
    #[tokio::test(start_paused = true)]
    async fn a_long_list_serves_the_reads_that_waited_for_it() {
        let max_age = Duration::from_secs(135);
        let vault = SlowList::new(10_000, max_age / LIST_SERVES + Duration::from_secs(13));
        let index = ListIndex::default();
        let read_at = Instant::now();
        tokio::time::advance(Duration::from_secs(60)).await;
        let names: Vec<String> = (0..32).map(|i| format!("s{i}")).collect();
        let confirmed = futures::future::join_all(
            names.iter().map(|n| index.confirms(&vault, n, 100, read_at, max_age, || 10_000)),
        )
        .await;
        assert!(confirmed.iter().all(Option::is_some), "a read that waited for the list was not served by it");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(index.confirms(&vault, "s99", 100, read_at, max_age, || 10_000).await.is_some());
        assert_eq!(vault.lists.load(Ordering::Relaxed), 1, "one list serves the round");
        // A changed secret is not confirmed, and a list a fifth of the age old no longer vouches.
        assert!(index.confirms(&vault, "s5", 101, read_at, max_age, || 10_000).await.is_none());
        tokio::time::advance(max_age / LIST_SERVES).await;
        assert!(index.confirms(&vault, "s7", 100, read_at, max_age, || 10_000).await.is_some());
        assert_eq!(vault.lists.load(Ordering::Relaxed), 2, "a list too old for the round is taken again");
    }

    /// A read made after the list started is not vouched for by it (the list may predate the value it read).
    #[tokio::test(start_paused = true)]
    async fn a_list_never_vouches_for_a_newer_read() {
        let max_age = Duration::from_secs(60);
        let vault = SlowList::new(100, Duration::from_secs(1));
        let index = ListIndex::default();
        let before = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(index.confirms(&vault, "s1", 100, before, max_age, || 100).await.is_some());
        let after = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(index.confirms(&vault, "s2", 100, after, max_age, || 100).await.is_some());
        assert_eq!(vault.lists.load(Ordering::Relaxed), 2, "the newer read needed a newer list");
    }
}
