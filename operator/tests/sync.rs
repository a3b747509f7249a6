//! The operator against a real apiserver and the Key Vault test server, with workload identity:
//! create, rotate, pin, property, decoding, drift, ownership, policies, failures, scheduling.

mod support;

use std::time::Duration;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{Env, one_key};
use vaultsync_api::VaultSecret;
use vaultsync_e2e::{eventually, keyvault::Op};

#[tokio::test]
async fn a_vault_secret_becomes_a_secret_and_follows_rotation() {
    let env = Env::start("sync-rotate").await;
    let v1 = env.vault.set_secret("db-password", "first-password-value");
    env.apply_vault_secret("db", one_key("password", "db-password")).await;

    let secret = env.wait_secret_value("db", "password", "first-password-value").await;
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get("vaultsync.dev/vaultsecret").map(String::as_str), Some("db"));
    let owners = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "creationPolicy Owner sets an owner reference");
    assert_eq!(owners[0].kind, "VaultSecret");
    let vs = env.wait_reason("db", "Synced").await;
    let status = vs.status.expect("status");
    assert_eq!(status.versions.get("password"), Some(&v1));
    assert!(status.data_hmac.as_deref().is_some_and(|h| h.starts_with("hmac-sha256:")));
    assert!(status.refresh_time.is_some() && status.synced_at.is_some());

    // Rotate in the vault; a force-sync annotation refreshes at once.
    let v2 = env.vault.set_secret("db-password", "second-password-value");
    env.annotate("db", "vaultsync.dev/force-sync", "1").await;
    env.wait_secret_value("db", "password", "second-password-value").await;
    let api = env.ns.api::<VaultSecret>();
    eventually(Duration::from_secs(10), "status to show the new version", || async {
        let vs = api.get("db").await.ok()?;
        (vs.status?.versions.get("password") == Some(&v2)).then_some(())
    })
    .await;
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "db").await;
    assert!(events.iter().any(|e| e == "Synced"), "a Synced event: {events:?}");
    env.remember_values(&["first-password-value", "second-password-value"]);
    env.finish().await;
}

#[tokio::test]
async fn pinned_versions_properties_and_decoding() {
    let env = Env::start("sync-shapes").await;
    let pinned = env.vault.set_secret("api-key", "old-key");
    env.vault.set_secret("api-key", "new-key");
    env.vault.set_secret("db-config", r#"{"username":"app","port":5432}"#);
    env.vault.set_secret("tls-blob", "aGVsbG8gd29ybGQ=");
    env.apply_vault_secret(
        "shapes",
        json!({ "storeRef": { "name": "kv" }, "data": [
            { "secretKey": "api-key", "remoteRef": { "name": "api-key", "version": pinned } },
            { "secretKey": "username", "remoteRef": { "name": "db-config", "property": "username" } },
            { "secretKey": "port", "remoteRef": { "name": "db-config", "property": "port" } },
            { "secretKey": "blob", "remoteRef": { "name": "tls-blob", "decoding": "Base64" } },
        ]}),
    )
    .await;
    let secret = env.wait_secret_value("shapes", "api-key", "old-key").await;
    let data = secret.data.expect("data");
    assert_eq!(data["username"].0, b"app");
    assert_eq!(data["port"].0, b"5432");
    assert_eq!(data["blob"].0, b"hello world");
    assert_eq!(env.vault.calls(Op::GetSecret), 3, "db-config is read once for two keys");

    // A property that is not there: a clear reason, and the Secret keeps its values.
    env.apply_vault_secret(
        "shapes",
        json!({ "storeRef": { "name": "kv" }, "data": [
            { "secretKey": "username", "remoteRef": { "name": "db-config", "property": "user" } },
        ]}),
    )
    .await;
    let vs = env.wait_reason("shapes", "InvalidValue").await;
    let message = &vs.status.expect("status").conditions[0].message;
    assert!(message.contains(r#"db-config has no property "user""#), "{message}");
    assert_eq!(env.secret("shapes").await.expect("kept").data.expect("data")["api-key"].0, b"old-key");
    env.finish().await;
}

#[tokio::test]
async fn drift_is_healed_without_asking_the_vault() {
    let env = Env::start("sync-drift").await;
    env.vault.set_secret("token", "the-real-token");
    env.apply_vault_secret("app", one_key("token", "token")).await;
    env.wait_secret_value("app", "token", "the-real-token").await;
    env.wait_reason("app", "Synced").await;
    let reads = env.vault.calls(Op::GetSecret);

    let secrets = env.ns.api::<Secret>();
    let tamper = json!({ "data": { "token": ByteString(b"tampered".to_vec()) } });
    secrets.patch("app", &PatchParams::default(), &Patch::Merge(&tamper)).await.expect("editing the Secret");
    env.wait_secret_value("app", "token", "the-real-token").await;

    secrets.delete("app", &DeleteParams::default()).await.expect("deleting the Secret");
    env.wait_secret_value("app", "token", "the-real-token").await;
    assert_eq!(env.vault.calls(Op::GetSecret), reads, "healing made no backend call");
    env.finish().await;
}

#[tokio::test]
async fn secrets_of_others_are_not_taken_over() {
    let env = Env::start("sync-owner").await;
    env.vault.set_secret("db-password", "vault-value");
    let secrets = env.ns.api::<Secret>();
    let theirs = Secret {
        metadata: ObjectMeta { name: Some("existing".into()), ..Default::default() },
        string_data: Some([("password".to_string(), "theirs".to_string())].into()),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &theirs).await.expect("a Secret of someone else");
    let mut spec = one_key("password", "db-password");
    spec["target"] = json!({ "name": "existing" });
    env.apply_vault_secret("grabby", spec).await;
    let vs = env.wait_reason("grabby", "OwnershipConflict").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("use creationPolicy Merge"));
    assert_eq!(env.secret("existing").await.expect("kept").data.expect("data")["password"].0, b"theirs");

    // Two VaultSecrets, one target: the second is refused.
    env.apply_vault_secret("first", one_key("password", "db-password")).await;
    env.wait_reason("first", "Synced").await;
    let mut second = one_key("password", "db-password");
    second["target"] = json!({ "name": "first" });
    env.apply_vault_secret("second", second).await;
    let vs = env.wait_reason("second", "OwnershipConflict").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("managed by VaultSecret first"));
    env.finish().await;
}

#[tokio::test]
async fn merge_keeps_the_other_keys_and_delete_removes_only_ours() {
    let env = Env::start("sync-merge").await;
    env.vault.set_secret("db-password", "from-vault");
    let secrets = env.ns.api::<Secret>();
    let shared = Secret {
        metadata: ObjectMeta { name: Some("shared".into()), ..Default::default() },
        string_data: Some([("other".to_string(), "kept".to_string())].into()),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &shared).await.expect("existing Secret");
    let mut spec = one_key("password", "db-password");
    spec["target"] = json!({ "name": "shared", "creationPolicy": "Merge", "deletionPolicy": "Delete" });
    env.apply_vault_secret("merger", spec).await;
    let secret = env.wait_secret_value("shared", "password", "from-vault").await;
    assert_eq!(secret.data.expect("data")["other"].0, b"kept");

    env.ns.api::<VaultSecret>().delete("merger", &DeleteParams::default()).await.expect("delete");
    let api = env.ns.api::<Secret>();
    eventually(Duration::from_secs(15), "our key to be removed", || async {
        let data = api.get("shared").await.ok()?.data?;
        (!data.contains_key("password") && data.get("other")?.0 == b"kept").then_some(())
    })
    .await;

    // Merge into a Secret that does not exist: a reason, nothing created.
    let mut spec = one_key("password", "db-password");
    spec["target"] = json!({ "name": "absent", "creationPolicy": "Merge" });
    env.apply_vault_secret("lonely", spec).await;
    env.wait_reason("lonely", "TargetNotFound").await;
    assert!(env.secret("absent").await.is_none());
    env.finish().await;
}

#[tokio::test]
async fn deletion_policies() {
    let env = Env::start("sync-delete").await;
    env.vault.set_secret("k", "v");
    let mut delete = one_key("k", "k");
    delete["target"] = json!({ "creationPolicy": "Orphan", "deletionPolicy": "Delete" });
    env.apply_vault_secret("goes", delete).await;
    env.apply_vault_secret("stays", one_key("k", "k")).await; // Owner + Retain (defaults)
    env.wait_secret_value("goes", "k", "v").await;
    env.wait_secret_value("stays", "k", "v").await;

    let vaultsecrets = env.ns.api::<VaultSecret>();
    for name in ["goes", "stays"] {
        vaultsecrets.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    let secrets = env.ns.api::<Secret>();
    eventually(Duration::from_secs(15), "the Delete-policy Secret to go", || async {
        secrets.get_opt("goes").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "both VaultSecrets to be gone", || async {
        (vaultsecrets.get_opt("stays").await.ok()?.is_none() && vaultsecrets.get_opt("goes").await.ok()?.is_none())
            .then_some(())
    })
    .await;
    // Give the garbage collector time to act on any owner reference left behind.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let kept = secrets.get("stays").await.expect("Retain keeps the Secret");
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
    assert_eq!(kept.data.expect("data")["k"].0, b"v");
    env.finish().await;
}

#[tokio::test]
async fn a_failing_backend_leaves_the_secret_alone() {
    let env = Env::start("sync-failure").await;
    env.vault.set_secret("api-key", "good-value");
    let mut spec = one_key("api-key", "api-key");
    spec["refreshInterval"] = json!("1h");
    env.apply_vault_secret("app", spec).await;
    env.wait_secret_value("app", "api-key", "good-value").await;
    env.wait_reason("app", "Synced").await;
    let before = env.secret("app").await.expect("secret");

    env.vault.fail_next(4, 503, None); // the client tries 4 times
    env.annotate("app", "vaultsync.dev/force-sync", "a").await;
    env.wait_reason("app", "BackendUnavailable").await;
    env.vault.fail_next(1, 429, Some(600));
    env.annotate("app", "vaultsync.dev/force-sync", "b").await;
    env.wait_reason("app", "Throttled").await;
    env.vault.forbid("api-key");
    env.annotate("app", "vaultsync.dev/force-sync", "c").await;
    env.wait_reason("app", "Forbidden").await;

    let after = env.secret("app").await.expect("secret still there");
    assert_eq!(after.data, before.data, "the Secret's data is untouched");
    assert_eq!(after.metadata.resource_version, before.metadata.resource_version, "not even rewritten");

    env.apply_vault_secret("missing", one_key("x", "no-such-object")).await;
    env.wait_reason("missing", "NotFound").await;
    assert!(env.secret("missing").await.is_none(), "nothing is created for a missing object");
    env.finish().await;
}

#[tokio::test]
async fn store_problems_are_reported_and_fetch_nothing() {
    let env = Env::start("sync-store").await;
    env.vault.set_secret("k", "v");
    let mut spec = one_key("k", "k");
    spec["storeRef"] = json!({ "name": "nope" });
    env.apply_vault_secret("orphan", spec).await;
    let vs = env.wait_reason("orphan", "StoreNotReady").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("VaultStore/"));

    // A VaultStore of another namespace cannot be used: it is simply not found here.
    let other = vaultsync_e2e::TestNamespace::new("sync-store-other").await;
    let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultStore",
        "metadata": { "name": "theirs" }, "spec": env.store_spec() });
    other
        .api::<vaultsync_api::VaultStore>()
        .patch("theirs", &PatchParams::apply("test"), &Patch::Apply(&body))
        .await
        .expect("store in another namespace");
    let mut spec = one_key("k", "k");
    spec["storeRef"] = json!({ "name": "theirs" });
    env.apply_vault_secret("borrower", spec).await;
    env.wait_reason("borrower", "StoreNotReady").await;
    assert_eq!(env.vault.calls(Op::GetSecret), 0, "nothing was fetched");
    env.finish().await;
}
