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

/// As after a shard's takeover: the replica that created the Secret stopped before it recorded the status. The next
/// one compares what stands there with what it would write, and writes only the status.
#[tokio::test]
async fn a_secret_written_before_its_status_was_recorded_is_not_written_again() {
    let mut env = Env::start("sched-unrecorded").await;
    env.vault.set_secret("db", "value-1");
    let mut spec = one_key("password", "db");
    spec["target"] = json!({ "labels": { "team": "a" }, "annotations": { "note": "kept" } });
    env.apply_vault_secret("recorded-late", spec).await;
    env.wait_reason("recorded-late", "Synced").await;
    env.stop_operator().await;
    let vaultsecrets = env.ns.api::<vaultsync_api::VaultSecret>();
    let forget = kube::api::Patch::Merge(json!({ "status": null }));
    vaultsecrets.patch_status("recorded-late", &Default::default(), &forget).await.expect("clearing the status");
    let before = env.secret("recorded-late").await.expect("the Secret").metadata.resource_version;
    let reads = env.vault.calls(Op::GetSecret);

    env.start_operator();
    env.wait_reason("recorded-late", "Synced").await;
    let after = env.secret("recorded-late").await.expect("the Secret").metadata.resource_version;
    assert_eq!(after, before, "the Secret already held this content: not written again");
    assert_eq!(env.vault.calls(Op::GetSecret), reads + 1, "never synced by its record: read once");

    // Content that differs is written as usual.
    env.stop_operator().await;
    vaultsecrets.patch_status("recorded-late", &Default::default(), &forget).await.expect("clearing the status");
    env.vault.set_secret("db", "value-2");
    env.start_operator();
    env.wait_secret_value("recorded-late", "password", "value-2").await;
    env.finish().await;
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

#[tokio::test]
async fn refreshes_of_many_key_vault_secrets_list_the_vault_instead_of_reading_each() {
    let env = Env::start("sched-list").await;
    let count = 60; // three list pages
    for i in 0..count {
        env.vault.set_secret(&format!("app-{i}"), &format!("value-{i}"));
    }
    // `updated` has whole seconds: reads made within 5 s of a write are not trusted against a list.
    tokio::time::sleep(Duration::from_secs(6)).await;
    for i in 0..count {
        let mut spec = one_key("k", &format!("app-{i}"));
        spec["refreshInterval"] = json!("10s");
        env.apply_vault_secret(&format!("vs-{i}"), spec).await;
    }
    for i in 0..count {
        env.wait_reason(&format!("vs-{i}"), "Synced").await;
    }
    let (gets, lists) = (env.vault.calls(Op::GetSecret), env.vault.calls(Op::ListSecrets));
    assert_eq!(gets, count as u64, "the first syncs read each object (the store's check listed one name)");

    // Two rounds of routine refreshes: lists of three pages show every object unchanged; no value is read again.
    let unchanged = env.metric(r#"vaultsync_syncs_total{result="unchanged"}"#).await;
    env.wait_metric_at_least(r#"vaultsync_syncs_total{result="unchanged"}"#, unchanged + 2 * count as u64).await;
    let (round_gets, round_lists) = (env.vault.calls(Op::GetSecret) - gets, env.vault.calls(Op::ListSecrets) - lists);
    assert_eq!(round_gets, 0, "no GET for an unchanged object");
    assert!(round_lists > 0 && round_lists <= 4 * 3, "a list or two per interval, 3 pages each: {round_lists} calls");
    // The cache's totals reach the metrics every few seconds.
    env.wait_metric_at_least(r#"vaultsync_cache_reads_total{result="validated"}"#, 2 * count as u64).await;
    env.wait_metric_at_least(r#"vaultsync_refresh_lists_total{result="complete"}"#, 1).await;

    // A rotated object is seen in the next list and read alone; its VaultSecret gets the new value.
    let gets = env.vault.calls(Op::GetSecret);
    env.vault.set_secret("app-7", "rotated");
    env.wait_secret_value_within("vs-7", "k", "rotated", Duration::from_secs(25)).await;
    assert_eq!(env.vault.calls(Op::GetSecret) - gets, 1, "only the rotated object is read");
    env.finish().await;
}
