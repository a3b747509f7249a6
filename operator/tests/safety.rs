//! No error path deletes, empties or takes over a user's Secret, and every failure shows where users look (the Ready
//! condition and an Event): immutable Secrets, Secrets created a moment before the first write, empty and colliding
//! `dataFrom` results, writes the apiserver refuses, and calls that hang.

mod support;

use std::time::Duration;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;
use support::{Env, one_key};
use vaultsync_e2e::eventually;

fn users_secret(name: &str, immutable: bool) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some([("other".to_string(), ByteString(b"kept".to_vec()))].into()),
        immutable: immutable.then_some(true),
        ..Default::default()
    }
}

#[tokio::test]
async fn merging_into_an_immutable_secret_never_deletes_it() {
    let env = Env::start("safe-immutable-merge").await;
    env.vault.set_secret("db-password", "merge-value");
    let secrets = env.ns.api::<Secret>();
    let theirs = secrets.create(&PostParams::default(), &users_secret("theirs", true)).await.expect("a user's Secret");
    let mut spec = one_key("password", "db-password");
    spec["target"] = json!({ "name": "theirs", "creationPolicy": "Merge" });
    env.apply_vault_secret("merger", spec).await;
    let vs = env.wait_reason("merger", "TargetImmutable").await;
    let message = &vs.status.expect("status").conditions[0].message;
    assert!(message.contains("immutable") && message.contains("never deletes"), "{message}");
    let after = secrets.get("theirs").await.expect("the user's Secret is still there");
    assert_eq!(after.metadata.uid, theirs.metadata.uid, "the same object: never deleted and recreated");
    assert_eq!(after.data, theirs.data, "its data untouched");
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "merger").await;
    assert!(events.iter().any(|e| e == "TargetImmutable"), "an Event says why: {events:?}");
    env.finish().await;
}

#[tokio::test]
async fn an_immutable_secret_vaultsync_created_is_replaced_when_the_value_changes() {
    let env = Env::start("safe-immutable-own").await;
    env.vault.set_secret("api-key", "immutable-one");
    let mut spec = one_key("key", "api-key");
    spec["target"] = json!({ "immutable": true });
    env.apply_vault_secret("frozen", spec).await;
    let first = env.wait_secret_value("frozen", "key", "immutable-one").await;
    assert_eq!(first.immutable, Some(true));
    env.wait_reason("frozen", "Synced").await;

    env.vault.set_secret("api-key", "immutable-two");
    env.annotate("frozen", "vaultsync.dev/force-sync", "1").await;
    let second = env.wait_secret_value("frozen", "key", "immutable-two").await;
    assert_ne!(second.metadata.uid, first.metadata.uid, "replaced by a new immutable Secret");
    assert_eq!(second.immutable, Some(true));
    env.finish().await;
}

#[tokio::test]
async fn a_secret_created_a_moment_before_the_first_write_is_not_adopted() {
    let env = Env::start("safe-adopt").await;
    env.vault.set_secret("db-password", "vault-value");
    // The vault holds its answers: the ownership check, made before the first vault call, has passed, and the
    // Secret appears before the operator has anything to write.
    env.vault.hold_requests();
    env.apply_vault_secret("late", one_key("password", "db-password")).await;
    let vault = &env.vault;
    eventually(Duration::from_secs(20), "the first vault call", || async move {
        (vault.held_requests() >= 1).then_some(())
    })
    .await;
    let secrets = env.ns.api::<Secret>();
    let theirs = secrets.create(&PostParams::default(), &users_secret("late", false)).await.expect("someone's Secret");
    env.vault.release_requests();
    let vs = env.wait_reason("late", "OwnershipConflict").await;
    let message = vs.status.expect("status").conditions[0].message.clone();
    assert!(message.contains("Secret late") && message.contains("not managed by vaultsync"), "{message}");
    let after = secrets.get("late").await.expect("their Secret");
    assert_eq!(after.data, theirs.data, "their Secret was not written");
    assert!(after.metadata.labels.unwrap_or_default().is_empty(), "nor labelled as ours");
    env.finish().await;
}

#[tokio::test]
async fn find_results_that_vanish_or_collide_keep_the_secret() {
    let env = Env::start("safe-find").await;
    env.vault.set_secret("app-api-key", "found-api-key");
    env.vault.set_secret("app-token", "found-token");
    let find = |path: &str| json!({ "storeRef": { "name": "kv" }, "dataFrom": [{ "find": { "path": path } }] });
    env.apply_vault_secret("found", find("app-")).await;
    env.wait_secret_value("found", "app-token", "found-token").await;
    let before = env.wait_reason("found", "Synced").await;
    let kept = env.secret("found").await.expect("the Secret");

    // The prefix now matches nothing (as after a rename): refused, and the Secret keeps its keys.
    env.apply_vault_secret("found", find("renamed-")).await;
    let vs = env.wait_reason("found", "NoObjectsFound").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("\"renamed-\""));
    let after = env.secret("found").await.expect("the Secret is still there");
    assert_eq!(after.data, kept.data, "no key was removed");
    assert_ne!(before.metadata.generation, None);

    // Two dataFrom entries giving one key: refused rather than one silently winning.
    env.vault.set_secret("config-a", r#"{"url":"a","user":"x"}"#);
    env.vault.set_secret("config-b", r#"{"url":"b"}"#);
    env.apply_vault_secret(
        "twice",
        json!({ "storeRef": { "name": "kv" },
            "dataFrom": [{ "extract": { "name": "config-a" } }, { "extract": { "name": "config-b" } }] }),
    )
    .await;
    let vs = env.wait_reason("twice", "KeyConflict").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("\"url\""));
    assert!(env.secret("twice").await.is_none(), "nothing written");
    env.finish().await;
}

#[tokio::test]
async fn a_write_the_apiserver_refuses_reaches_the_status_and_an_event() {
    let env = Env::start("safe-refused").await;
    // Two values of 600 KiB: the Secret would exceed the apiserver's 1 MiB limit, so the create is refused (422).
    let big = "x".repeat(600 * 1024);
    env.vault.set_secret("part-a", &big);
    env.vault.set_secret("part-b", &big);
    env.apply_vault_secret(
        "huge",
        json!({ "storeRef": { "name": "kv" }, "data": [
            { "secretKey": "a", "remoteRef": { "name": "part-a" } },
            { "secretKey": "b", "remoteRef": { "name": "part-b" } },
        ]}),
    )
    .await;
    let vs = env.wait_reason("huge", "SecretWriteFailed").await;
    let message = vs.status.expect("status").conditions[0].message.clone();
    assert!(message.contains("creating Secret huge") && message.contains("422"), "{message}");
    assert!(message.len() < 2000, "the message is short, and carries no value: {} bytes", message.len());
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "huge").await;
    assert!(events.iter().any(|e| e == "SecretWriteFailed"), "{events:?}");
    env.finish().await;
}

/// A TCP listener that accepts connections and never answers: a vault that hangs.
async fn black_hole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let port = listener.local_addr().expect("address").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (port, task)
}

#[tokio::test]
async fn a_hanging_vault_cannot_stall_the_controller() {
    let mut env = Env::start("safe-hang").await;
    env.stop_operator().await;
    let mut args = env.operator_args();
    args.concurrency = 1; // one slot: a reconcile that never ends would block every other VaultSecret
    args.reconcile_timeout = Duration::from_secs(3);
    env.start_operator_with(args);
    let (port, hole) = black_hole().await;
    let mut hanging = env.store_spec();
    hanging["provider"]["azureKeyVault"]["vaultUrl"] = json!(format!("https://localhost:{port}"));
    env.apply_store("hanging", hanging).await;
    let mut stuck = one_key("k", "anything");
    stuck["storeRef"] = json!({ "name": "hanging" });
    env.apply_vault_secret("stuck", stuck).await;
    let vs = env.wait_reason("stuck", "Timeout").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("did not finish within 3s"));

    env.vault.set_secret("fine", "fine-value");
    env.apply_vault_secret("healthy", one_key("k", "fine")).await;
    env.wait_secret_value("healthy", "k", "fine-value").await;
    hole.abort();
    env.finish().await;
}
