//! The plugin's Prometheus metrics, all named `vaultsync_csi_*`, served as OpenMetrics text on `/metrics` when
//! `--metrics-address` is set (off by default). Labels are fixed words (mode, result, operation, outcome), never pod,
//! object or store names and never values, so a scrape leaks nothing and cardinality stays bounded.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};
use vaultsync_backend::{azure::CallObserver, cache::ReadCache};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PublishLabels {
    /// `provider` (the driver's Mount) or `node` (kubelet's NodePublishVolume).
    mode: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: &'static str,
    outcome: &'static str,
}

/// Every metric of the plugin. Share it as the `Arc` [`Metrics::new`] gives.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    publishes: Family<PublishLabels, Counter>,
    publish_duration: Family<PublishLabels, Histogram>,
    vault_calls: Family<CallLabels, Counter>,
    cache: CacheReads,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("vaultsync_csi");
        let publishes = Family::<PublishLabels, Counter>::default();
        registry.register(
            "publishes",
            "Mounts (provider mode) and NodePublishVolume calls (node mode), by mode and result: published, \
             adopted, refreshed, unchanged, not_due, kept (a failed refresh kept the files), or the error's code",
            publishes.clone(),
        );
        // 1 ms to about 33 s: a warm publish is a cache hit and a write, a cold one a token exchange and reads.
        let publish_duration = Family::<PublishLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 16))
        });
        registry.register_with_unit(
            "publish_duration",
            "Time a mount or publish took, by mode and result",
            Unit::Seconds,
            publish_duration.clone(),
        );
        let vault_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "vault_calls",
            "HTTP calls to vaults and token endpoints (each attempt), by operation and outcome",
            vault_calls.clone(),
        );
        let cache = CacheReads::default();
        registry.register_collector(Box::new(cache.clone()));
        Arc::new(Self { registry, publishes, publish_duration, vault_calls, cache })
    }

    /// Records one mount or publish.
    pub fn publish(&self, mode: &'static str, result: &'static str, took: Duration) {
        let labels = PublishLabels { mode, result };
        self.publishes.get_or_create(&labels).inc();
        self.publish_duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The observer the backends report each vault call to.
    pub fn call_observer(self: &Arc<Self>) -> CallObserver {
        let metrics = self.clone();
        Arc::new(move |operation, outcome| {
            metrics.vault_calls.get_or_create(&CallLabels { operation, outcome }).inc();
        })
    }

    /// Counts the reads of `cache` (hits, reads coalesced with one in flight, misses) from now on.
    pub fn watch_cache(&self, cache: Arc<ReadCache>) {
        *self.cache.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cache);
    }

    /// Every metric as OpenMetrics text, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("encoding metrics into a String cannot fail");
        text
    }
}

/// The read cache's totals, read on each scrape (the cache is set once the reader exists).
#[derive(Clone, Default)]
struct CacheReads(Arc<Mutex<Option<Arc<ReadCache>>>>);

impl std::fmt::Debug for CacheReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheReads")
    }
}

impl Collector for CacheReads {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let cache = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let Some(cache) = cache else { return Ok(()) };
        let mut family = encoder.encode_descriptor(
            "cache_reads",
            "Vault reads asked of the read cache, by result (hit, coalesced with a read in flight, miss)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        let stats = &cache.stats;
        for (result, total) in [("hit", &stats.hits), ("coalesced", &stats.coalesced), ("miss", &stats.misses)] {
            ConstCounter::new(total.load(Ordering::Relaxed)).encode(family.encode_family(&[("result", result)])?)?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{http::header::CONTENT_TYPE, routing::get};
    let app =
        axum::Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move {
                    ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
                }
            }),
        );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Binds the metrics address.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(address).await.with_context(|| format!("binding the metrics address {address}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_names_every_metric_with_its_labels() {
        let metrics = Metrics::new();
        metrics.publish("node", "published", Duration::from_millis(30));
        metrics.publish("node", "published", Duration::from_millis(40));
        metrics.publish("provider", "invalid_argument", Duration::from_millis(1));
        (metrics.call_observer())("get_secret", "ok");
        let cache = Arc::new(ReadCache::new(Duration::from_secs(30)));
        cache.stats.hits.fetch_add(3, Ordering::Relaxed);
        metrics.watch_cache(cache);
        let text = metrics.encode();
        for line in [
            r#"vaultsync_csi_publishes_total{mode="node",result="published"} 2"#,
            r#"vaultsync_csi_publishes_total{mode="provider",result="invalid_argument"} 1"#,
            r#"vaultsync_csi_publish_duration_seconds_count{mode="node",result="published"} 2"#,
            r#"vaultsync_csi_vault_calls_total{operation="get_secret",outcome="ok"} 1"#,
            r#"vaultsync_csi_cache_reads_total{result="hit"} 3"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
