//! What an operator exposes about itself: /metrics with backend calls, syncs, writes, cache and
//! backlog figures (never values), /healthz and /readyz.

mod support;

use std::time::Duration;

use support::{Env, one_key};
use vaultsync_e2e::eventually;

#[tokio::test]
async fn metrics_count_backend_calls_syncs_and_writes() {
    let env = Env::start("observe-metrics").await;
    env.vault.set_secret("metric-object", "metric-secret-value");
    for name in ["a", "b", "c"] {
        env.apply_vault_secret(name, one_key("k", "metric-object")).await;
    }
    for name in ["a", "b", "c"] {
        env.wait_secret_value(name, "k", "metric-secret-value").await;
    }
    let store = format!("VaultStore/{}/kv", env.ns.name);
    let body = eventually(Duration::from_secs(15), "cache figures in /metrics", || async {
        let (code, body) = env.http_get("/metrics").await;
        (code == 200 && body.contains("vaultsync_cache_reads_total{result=\"miss\"} 1")).then_some(body)
    })
    .await;
    let line = |needle: &str| body.lines().find(|l| l.starts_with(needle)).map(str::to_string);
    let get_ok = format!(r#"vaultsync_backend_calls_total{{store="{store}",operation="get_secret",outcome="ok"}} 1"#);
    assert!(body.contains(&get_ok), "one backend read for three VaultSecrets:\n{body}");
    assert!(line(r#"vaultsync_syncs_total{result="synced"}"#).is_some_and(|l| l.ends_with(" 3")), "{body}");
    assert!(line(r#"vaultsync_apiserver_writes_total{verb="create",resource="secrets"}"#).is_some(), "{body}");
    assert!(body.contains("vaultsync_reconcile_duration_seconds_bucket"), "{body}");
    assert!(body.contains("vaultsync_queue_depth"), "{body}");
    assert!(!body.contains("metric-secret-value"), "no value in metrics");

    assert_eq!(env.http_get("/healthz").await.0, 200);
    assert_eq!(env.http_get("/readyz").await.0, 200);
    env.finish().await;
}
