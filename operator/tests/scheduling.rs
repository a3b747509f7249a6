//! Backend calls are the currency: a restarted operator with nothing due reads nothing, and
//! VaultSecrets that share an object share one read. Counted by the Key Vault test server.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Env, one_key};
use vaultsync_e2e::keyvault::Op;

#[tokio::test]
async fn a_restarted_operator_with_nothing_due_reads_nothing() {
    let mut env = Env::start("sched-restart").await;
    for i in 0..5 {
        env.vault.set_secret(&format!("obj-{i}"), &format!("value-{i}"));
        env.apply_vault_secret(&format!("vs-{i}"), one_key("k", &format!("obj-{i}"))).await;
    }
    for i in 0..5 {
        env.wait_reason(&format!("vs-{i}"), "Synced").await;
    }
    let reads = env.vault.calls(Op::GetSecret);
    assert_eq!(reads, 5);

    env.stop_operator().await;
    let before: Vec<_> = futures_list(&env).await;
    env.start_operator();
    // Proof that the new operator looked at every VaultSecret before asserting that it read nothing.
    env.wait_metric_at_least(r#"vaultsync_syncs_total{result="checked"}"#, 5).await;
    assert_eq!(env.vault.calls(Op::GetSecret), reads, "no backend call after a restart with nothing due");
    assert_eq!(futures_list(&env).await, before, "no Secret was rewritten");

    // A forced sync still reads, once.
    env.vault.set_secret("obj-0", "rotated");
    env.annotate("vs-0", "vaultsync.dev/force-sync", "now").await;
    env.wait_secret_value("vs-0", "k", "rotated").await;
    assert_eq!(env.vault.calls(Op::GetSecret), reads + 1);
    env.finish().await;
}

/// The resourceVersions of the Secrets vs-0..vs-4.
async fn futures_list(env: &Env) -> Vec<Option<String>> {
    let mut versions = Vec::new();
    for i in 0..5 {
        versions.push(env.secret(&format!("vs-{i}")).await.and_then(|s| s.metadata.resource_version));
    }
    versions
}

#[tokio::test]
async fn vault_secrets_sharing_an_object_share_one_read() {
    let env = Env::start("sched-shared").await;
    env.vault.set_secret("shared-object", "shared-value");
    for i in 0..20 {
        env.apply_vault_secret(&format!("consumer-{i}"), one_key("k", "shared-object")).await;
    }
    for i in 0..20 {
        env.wait_secret_value(&format!("consumer-{i}"), "k", "shared-value").await;
    }
    assert_eq!(env.vault.calls(Op::GetSecret), 1, "20 VaultSecrets on one object: one read in the window");
    env.finish().await;
}

#[tokio::test]
async fn routine_refresh_follows_the_interval() {
    let env = Env::start("sched-interval").await;
    env.vault.set_secret("ticker", "one");
    let mut spec = one_key("k", "ticker");
    spec["refreshInterval"] = json!("10s"); // the shortest interval accepted
    env.apply_vault_secret("ticking", spec).await;
    env.wait_secret_value("ticking", "k", "one").await;
    env.vault.set_secret("ticker", "two");
    // The next refresh comes in the VaultSecret's next slot at least half an interval after its read (so within one
    // and a half intervals), and does not reuse its own previous read: the new value arrives with it.
    let started = std::time::Instant::now();
    env.wait_secret_value_within("ticking", "k", "two", Duration::from_secs(25)).await;
    assert!(started.elapsed() <= Duration::from_secs(20), "arrived after {:?} on a 10s interval", started.elapsed());
    // One more routine refresh (an unchanged read) costs exactly one read.
    let reads = env.vault.calls(Op::GetSecret);
    let unchanged = env.metric(r#"vaultsync_syncs_total{result="unchanged"}"#).await;
    env.wait_metric_at_least(r#"vaultsync_syncs_total{result="unchanged"}"#, unchanged + 1).await;
    assert_eq!(env.vault.calls(Op::GetSecret) - reads, 1, "one routine refresh, one read");
    env.finish().await;
}

#[tokio::test]
async fn a_refresh_that_finds_the_same_content_writes_nothing() {
    let env = Env::start("sched-no-write").await;
    env.vault.set_secret("steady", "steady-value");
    let mut spec = one_key("k", "steady");
    spec["refreshInterval"] = json!("10s");
    env.apply_vault_secret("steady", spec).await;
    env.wait_secret_value("steady", "k", "steady-value").await;
    env.wait_reason("steady", "Synced").await;
    let vs_before = env.ns.api::<vaultsync_api::VaultSecret>().get("steady").await.expect("vs");
    let secret_before = env.secret("steady").await.expect("secret");
    let events_before = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "steady").await.len();
    let writes = env.metric("vaultsync_apiserver_writes_total").await;
    let reads = env.vault.calls(Op::GetSecret);

    // Two routine refreshes read the vault and find the same content.
    env.wait_metric_at_least(r#"vaultsync_syncs_total{result="unchanged"}"#, 2).await;
    assert_eq!(env.vault.calls(Op::GetSecret) - reads, 2, "each refresh read the vault");
    // The apiserver's own record: neither the VaultSecret (its status) nor the Secret changed version, no Event.
    let vs_after = env.ns.api::<vaultsync_api::VaultSecret>().get("steady").await.expect("vs");
    assert_eq!(vs_after.metadata.resource_version, vs_before.metadata.resource_version, "no status write");
    let secret_after = env.secret("steady").await.expect("secret");
    assert_eq!(secret_after.metadata.resource_version, secret_before.metadata.resource_version, "no Secret write");
    assert_eq!(vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "steady").await.len(), events_before);
    assert_eq!(env.metric("vaultsync_apiserver_writes_total").await, writes, "the operator counted no write either");
    env.finish().await;
}
