//! The operator's Prometheus metrics, all named `vaultsync_*`, and their OpenMetrics encoding for `/metrics`.
//! Labels carry only store names (`namespace/name`) and fixed words chosen by the caller, never secret
//! values or object contents, so a scrape cannot leak a secret and label cardinality stays bounded.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

mod vaultsecrets;

use kube::runtime::reflector::Store;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendCallLabels {
    store: String,
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    verb: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VaultEventLabels {
    r#type: String,
    result: String,
}

/// Every metric the operator exports. Cheap to share: clone the `Arc` from [`Metrics::new`].
#[derive(Debug)]
pub struct Metrics {
    // Everything is registered in `new` and never afterwards, so encoding needs only `&Registry`.
    registry: Registry,
    backend_calls: Family<BackendCallLabels, Counter>,
    syncs: Family<ResultLabels, Counter>,
    apiserver_writes: Family<WriteLabels, Counter>,
    rollouts: Family<RolloutLabels, Counter>,
    rollout_latency: Histogram,
    reconcile_duration: Histogram,
    reconciles_in_flight: Gauge,
    queue_depth: Gauge,
    leader: Gauge,
    shard: Gauge,
    cache_reads: Arc<CacheReads>,
    vault_events: Family<VaultEventLabels, Counter>,
    vault_event_forwards: Family<ResultLabels, Counter>,
    vault_secret_states: Arc<vaultsecrets::VaultSecretStates>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `vaultsync` prefix.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("vaultsync");
        let backend_calls = Family::<BackendCallLabels, Counter>::default();
        registry.register(
            "backend_calls",
            "Calls to vault backends, by store (namespace/name), operation and outcome",
            backend_calls.clone(),
        );
        let syncs = Family::<ResultLabels, Counter>::default();
        registry.register("syncs", "VaultSecret sync attempts, by result", syncs.clone());
        let apiserver_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "apiserver_writes",
            "Writes the operator made to the Kubernetes API, by verb and resource",
            apiserver_writes.clone(),
        );
        let rollouts = Family::<RolloutLabels, Counter>::default();
        registry.register(
            "rollouts",
            "Workload rollouts triggered by secret changes, by kind and result",
            rollouts.clone(),
        );
        // 0.5 s to about 17 min: from a content change to the workload's template patch, which
        // includes the debounce window.
        let rollout_latency = Histogram::new(exponential_buckets(0.5, 2.0, 12));
        registry.register_with_unit(
            "rollout_latency",
            "Time from a secret content change to the rollout of a workload that uses it",
            Unit::Seconds,
            rollout_latency.clone(),
        );
        // 5 ms to about 41 s: a reconcile is usually one backend read and one apiserver write, but a
        // throttled or retried backend can take tens of seconds.
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register_with_unit(
            "reconcile_duration",
            "Time taken by one reconcile",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let reconciles_in_flight = Gauge::default();
        registry.register("reconciles_in_flight", "Reconciles running now", reconciles_in_flight.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Objects waiting to be reconciled", queue_depth.clone());
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controllers (holds the Lease), else 0",
            leader.clone(),
        );
        let shard = Gauge::default();
        // Nothing held until the Lease is won.
        shard.set(-1);
        registry.register(
            "shard",
            "The shard this replica holds (0 to --shards - 1; 0 when unsharded), or -1 while it stands by",
            shard.clone(),
        );
        let vault_events = Family::<VaultEventLabels, Counter>::default();
        registry.register(
            "vault_events",
            "Vault events received from Azure Event Grid, by event type and result",
            vault_events.clone(),
        );
        let vault_event_forwards = Family::<ResultLabels, Counter>::default();
        registry.register(
            "vault_event_forwards",
            "Event Grid deliveries passed on to the holder of another shard, by result",
            vault_event_forwards.clone(),
        );
        let cache_reads = Arc::new(CacheReads::default());
        registry.register_collector(Box::new(cache_reads.clone()));
        let vault_secret_states = Arc::new(vaultsecrets::VaultSecretStates::default());
        registry.register_collector(Box::new(vault_secret_states.clone()));
        Arc::new(Self {
            registry,
            backend_calls,
            syncs,
            apiserver_writes,
            rollouts,
            rollout_latency,
            reconcile_duration,
            reconciles_in_flight,
            queue_depth,
            leader,
            shard,
            cache_reads,
            vault_events,
            vault_event_forwards,
            vault_secret_states,
        })
    }

    /// Counts one backend call: `store` is the store's `namespace/name` (or its name for a cluster
    /// store), `operation` and `outcome` are fixed words such as `get_secret` and `ok`.
    pub fn backend_call(&self, store: &str, operation: &str, outcome: &str) {
        let labels =
            BackendCallLabels { store: store.to_owned(), operation: operation.to_owned(), outcome: outcome.to_owned() };
        self.backend_calls.get_or_create(&labels).inc();
    }

    /// Counts one sync attempt; `result` is a fixed word such as `synced`, `unchanged` or `error_not_found`.
    pub fn sync(&self, result: &str) {
        self.syncs.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    /// Counts one write to the Kubernetes API, e.g. verb `update`, resource `secrets`.
    pub fn apiserver_write(&self, verb: &str, resource: &str) {
        self.apiserver_writes
            .get_or_create(&WriteLabels { verb: verb.to_owned(), resource: resource.to_owned() })
            .inc();
    }

    /// Starts timing one reconcile; dropping the timer records its duration, so every exit path
    /// (including `?` and panics) is measured and the in-flight gauge always comes back down.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.reconciles_in_flight.inc();
        ReconcileTimer {
            started: Instant::now(),
            duration: self.reconcile_duration.clone(),
            in_flight: self.reconciles_in_flight.clone(),
        }
    }

    /// Publishes the read cache's running totals (since process start) as the counters
    /// `vaultsync_cache_reads_total{result="hit"|"coalesced"|"miss"|"validated"}` and
    /// `vaultsync_refresh_lists_total{result="complete"|"stopped"|"refused"}`.
    ///
    /// The cache keeps its own totals, so they are copied here as absolute values and reported through
    /// a collector as const counters: Prometheus sees a true counter (rate() works) and no deltas have to
    /// be tracked. Callers should pass totals that only grow.
    pub fn set_cache_stats(&self, totals: CacheTotals) {
        // A poisoned lock still holds plain numbers: take it over.
        *self.cache_reads.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = totals;
    }

    /// Sets the number of objects waiting to be reconciled.
    pub fn set_queue_depth(&self, depth: i64) {
        self.queue_depth.set(depth);
    }

    /// Reports the VaultSecrets' Ready conditions and certificates from `store` (the controller's watched copies).
    pub fn watch_vault_secrets(&self, store: Store<vaultsync_api::VaultSecret>) {
        self.vault_secret_states.watch(store);
    }

    /// Whether this replica runs the controllers.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The shard this replica holds, if any.
    pub fn set_shard(&self, index: Option<u32>) {
        self.shard.set(index.map_or(-1, i64::from));
    }

    /// Observes the seconds from a content change to a rollout.
    pub fn rollout_latency(&self, seconds: f64) {
        self.rollout_latency.observe(seconds);
    }

    /// Counts one workload rollout, e.g. kind `Deployment`, result `rolled`.
    pub fn rollout(&self, kind: &str, result: &str) {
        self.rollouts.get_or_create(&RolloutLabels { kind: kind.to_owned(), result: result.to_owned() }).inc();
    }

    /// Counts one vault event, or one Event Grid delivery that could not be read: `event_type` is a known event
    /// type, `other` or `none` (never text chosen by the sender); `result` is a fixed word such as `refreshed`,
    /// `ignored`, `rejected` or `unauthorized`.
    pub fn vault_event(&self, event_type: &str, result: &str) {
        self.vault_events
            .get_or_create(&VaultEventLabels { r#type: event_type.to_owned(), result: result.to_owned() })
            .inc();
    }

    /// Counts one delivery passed on to another shard's holder: `result` is `ok` or `failed`.
    pub fn vault_event_forward(&self, result: &str) {
        self.vault_event_forwards.get_or_create(&ResultLabels { result: result.to_owned() }).inc();
    }

    /// Every metric in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail and every label here is a plain string.
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        text
    }
}

/// Measures one reconcile from [`Metrics::reconcile_timer`] until dropped.
#[derive(Debug)]
pub struct ReconcileTimer {
    started: Instant,
    duration: Histogram,
    in_flight: Gauge,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.duration.observe(self.started.elapsed().as_secs_f64());
        self.in_flight.dec();
    }
}

/// The read cache's running totals.
#[derive(Clone, Copy, Debug, Default)]
pub struct CacheTotals {
    /// Answered from the cache.
    pub hits: u64,
    /// Joined a read already in flight.
    pub coalesced: u64,
    /// Went to the vault.
    pub misses: u64,
    /// Older than the caller accepts, but shown unchanged by a list of the vault (no read).
    pub validated: u64,
    /// Complete lists of a vault taken to validate cached reads.
    pub lists: u64,
    /// Lists stopped because they would have cost more calls than the reads they replace.
    pub lists_stopped: u64,
    /// Lists the vault refused (the identity may not list).
    pub lists_refused: u64,
}

/// The read cache's totals, encoded on each scrape as `vaultsync_cache_reads_total{result}` and
/// `vaultsync_refresh_lists_total{result}`.
#[derive(Debug, Default)]
struct CacheReads {
    totals: Mutex<CacheTotals>,
}

impl Collector for CacheReads {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = *self.totals.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        type Family<'a> = (&'a str, &'a str, &'a [(&'a str, u64)]);
        let families: [Family; 2] = [
            (
                "cache_reads",
                "Backend reads asked of the read cache, by result (hit, coalesced with a read in flight, miss: read \
                 at the vault, validated: shown unchanged by a list)",
                &[
                    ("hit", totals.hits),
                    ("coalesced", totals.coalesced),
                    ("miss", totals.misses),
                    ("validated", totals.validated),
                ],
            ),
            (
                "refresh_lists",
                "Lists of a vault taken to find which cached secrets changed, by result (complete, stopped: longer \
                 than the reads it would replace, refused: the identity may not list)",
                &[("complete", totals.lists), ("stopped", totals.lists_stopped), ("refused", totals.lists_refused)],
            ),
        ];
        for (name, help, counts) in families {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Counter)?;
            for &(result, total) in counts {
                ConstCounter::new(total).encode(family.encode_family(&[("result", result)])?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_names_every_metric_with_its_labels() {
        let metrics = Metrics::new();
        metrics.backend_call("team-a/kv", "get_secret", "ok");
        metrics.backend_call("team-a/kv", "get_secret", "ok");
        metrics.sync("synced");
        metrics.sync("error_not_found");
        metrics.apiserver_write("update", "secrets");
        metrics.rollout("Deployment", "restarted");
        metrics.set_cache_stats(CacheTotals {
            hits: 7,
            coalesced: 3,
            misses: 2,
            validated: 9,
            lists: 1,
            ..Default::default()
        });
        metrics.set_queue_depth(4);
        drop(metrics.reconcile_timer());

        let text = metrics.encode();
        for line in [
            r#"vaultsync_backend_calls_total{store="team-a/kv",operation="get_secret",outcome="ok"} 2"#,
            r#"vaultsync_syncs_total{result="synced"} 1"#,
            r#"vaultsync_syncs_total{result="error_not_found"} 1"#,
            r#"vaultsync_apiserver_writes_total{verb="update",resource="secrets"} 1"#,
            r#"vaultsync_rollouts_total{kind="Deployment",result="restarted"} 1"#,
            r#"vaultsync_cache_reads_total{result="hit"} 7"#,
            r#"vaultsync_cache_reads_total{result="coalesced"} 3"#,
            r#"vaultsync_cache_reads_total{result="miss"} 2"#,
            r#"vaultsync_cache_reads_total{result="validated"} 9"#,
            r#"vaultsync_refresh_lists_total{result="complete"} 1"#,
            r#"vaultsync_refresh_lists_total{result="refused"} 0"#,
            "vaultsync_queue_depth 4",
            "vaultsync_leader 0",
            "vaultsync_shard -1",
            "vaultsync_reconciles_in_flight 0",
            "vaultsync_reconcile_duration_seconds_count 1",
            "# TYPE vaultsync_cache_reads counter",
            "# TYPE vaultsync_reconcile_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "not OpenMetrics-terminated:\n{text}");
    }

    #[test]
    fn vault_events_are_counted_by_type_and_result() {
        let metrics = Metrics::new();
        metrics.vault_event("Microsoft.KeyVault.SecretNewVersionCreated", "refreshed");
        metrics.vault_event("Microsoft.KeyVault.SecretNewVersionCreated", "refreshed");
        metrics.vault_event("none", "unauthorized");
        let text = metrics.encode();
        for line in [
            r#"vaultsync_vault_events_total{type="Microsoft.KeyVault.SecretNewVersionCreated",result="refreshed"} 2"#,
            r#"vaultsync_vault_events_total{type="none",result="unauthorized"} 1"#,
            "# TYPE vaultsync_vault_events counter",
        ] {
            assert!(text.lines().any(|l| l == line), "missing line {line:?} in:\n{text}");
        }
    }

    #[test]
    fn cache_stats_replace_rather_than_add() {
        let metrics = Metrics::new();
        let totals = |n| CacheTotals { hits: n, coalesced: n / 2, ..Default::default() };
        metrics.set_cache_stats(totals(1));
        metrics.set_cache_stats(totals(10));
        let text = metrics.encode();
        assert!(text.contains(r#"vaultsync_cache_reads_total{result="hit"} 10"#), "{text}");
        assert!(text.contains(r#"vaultsync_cache_reads_total{result="coalesced"} 5"#), "{text}");
    }

    #[test]
    fn reconcile_timer_tracks_in_flight_and_observes_on_drop() {
        let metrics = Metrics::new();
        let first = metrics.reconcile_timer();
        let second = metrics.reconcile_timer();
        assert_eq!(metrics.reconciles_in_flight.get(), 2);
        drop(first);
        assert_eq!(metrics.reconciles_in_flight.get(), 1);
        drop(second);
        assert_eq!(metrics.reconciles_in_flight.get(), 0);
        let text = metrics.encode();
        assert!(text.contains("vaultsync_reconcile_duration_seconds_count 2"), "{text}");
    }
}
