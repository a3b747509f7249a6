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
    // Owner with Retain (the defaults): no owner reference (the Secret stays when the VaultSecret goes), and so no
    // finalizer either: deleting needs nothing the garbage collector cannot do.
    assert!(secret.metadata.owner_references.clone().unwrap_or_default().is_empty());
    let vs = env.wait_reason("db", "Synced").await;
    assert!(vs.metadata.finalizers.clone().unwrap_or_default().is_empty(), "no finalizer needed");
    let status = vs.status.expect("status");
    assert_eq!(status.versions.get("password"), Some(&v1));
    assert!(status.data_hmac.as_deref().is_some_and(|h| h.starts_with("hmac-sha256:")));
    assert!(status.synced_at.is_some() && status.refresh_time.is_none(), "the schedule is not written");
    assert_eq!(status.secret_resource_version, secret.metadata.resource_version, "the written version is recorded");

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
    let with = |creation: &str, deletion: &str| {
        let mut spec = one_key("k", "k");
        spec["target"] = json!({ "creationPolicy": creation, "deletionPolicy": deletion });
        spec
    };
    env.apply_vault_secret("orphan-goes", with("Orphan", "Delete")).await;
    env.apply_vault_secret("owned-goes", with("Owner", "Delete")).await;
    env.apply_vault_secret("stays", one_key("k", "k")).await; // Owner + Retain (defaults)
    for name in ["orphan-goes", "owned-goes", "stays"] {
        env.wait_secret_value(name, "k", "v").await;
    }
    let vaultsecrets = env.ns.api::<VaultSecret>();
    // A finalizer only where deletion must do what the garbage collector cannot (a Secret without owner reference).
    let finalizers = |vs: VaultSecret| vs.metadata.finalizers.unwrap_or_default();
    let orphan = env.wait_reason("orphan-goes", "Synced").await;
    assert_eq!(finalizers(orphan), ["vaultsync.dev/cleanup"]);
    assert!(finalizers(env.wait_reason("owned-goes", "Synced").await).is_empty());
    let owned = env.secret("owned-goes").await.expect("owned Secret");
    assert_eq!(owned.metadata.owner_references.unwrap_or_default().len(), 1, "Owner with Delete: an owner reference");

    for name in ["orphan-goes", "owned-goes", "stays"] {
        vaultsecrets.delete(name, &DeleteParams::default()).await.expect("delete");
    }
    let secrets = env.ns.api::<Secret>();
    eventually(Duration::from_secs(20), "the Orphan Secret to go (vaultsync's cleanup)", || async {
        secrets.get_opt("orphan-goes").await.ok()?.is_none().then_some(())
    })
    .await;
    // The garbage collector picks up a new custom resource kind within its discovery period (30 s) and then
    // deletes the dependents of a deleted owner.
    eventually(Duration::from_secs(90), "the Owner Secret to go (the garbage collector)", || async {
        secrets.get_opt("owned-goes").await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(Duration::from_secs(15), "the VaultSecrets to be gone", || async {
        vaultsecrets.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    // Retain: the Secret had no owner reference, so the garbage collector, which acts only on owner references, has
    // nothing to act on. It keeps vaultsync's labels: a VaultSecret of the same name takes it back.
    let kept = secrets.get("stays").await.expect("Retain keeps the Secret");
    assert!(kept.metadata.owner_references.unwrap_or_default().is_empty());
    assert_eq!(kept.data.expect("data")["k"].0, b"v");
    env.apply_vault_secret("stays", one_key("k", "k")).await;
    env.wait_reason("stays", "Synced").await;
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

#[tokio::test]
async fn the_target_type_labels_and_annotations_follow_the_spec() {
    let env = Env::start("sync-target").await;
    env.vault.set_secret("user", "app-user");
    env.vault.set_secret("pass", "app-pass-value");
    let spec = |labels: serde_json::Value, annotations: serde_json::Value| {
        json!({ "storeRef": { "name": "kv" },
            "target": { "type": "kubernetes.io/basic-auth", "labels": labels, "annotations": annotations },
            "data": [
                { "secretKey": "username", "remoteRef": { "name": "user" } },
                { "secretKey": "password", "remoteRef": { "name": "pass" } },
            ] })
    };
    env.apply_vault_secret("login", spec(json!({ "team": "a", "tier": "db" }), json!({ "owner": "team-a" }))).await;
    let secret = env.wait_secret_value("login", "password", "app-pass-value").await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        (labels.get("team").map(String::as_str), labels.get("tier").map(String::as_str)),
        (Some("a"), Some("db"))
    );
    assert_eq!(secret.metadata.annotations.unwrap_or_default().get("owner").map(String::as_str), Some("team-a"));

    // A label and an annotation taken out of the spec leave the Secret; one added arrives; the data stays.
    env.apply_vault_secret("login", spec(json!({ "team": "a" }), json!({ "contact": "ops" }))).await;
    let api = env.ns.api::<Secret>();
    let updated = eventually(Duration::from_secs(20), "the Secret's metadata to follow the spec", || async {
        let secret = api.get("login").await.ok()?;
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        (!labels.contains_key("tier") && !annotations.contains_key("owner") && annotations.contains_key("contact"))
            .then_some(secret)
    })
    .await;
    assert_eq!(updated.data.expect("data")["username"].0, b"app-user");
    env.finish().await;
}

#[tokio::test]
async fn a_mount_only_vault_secret_writes_no_secret_and_reads_nothing() {
    let env = Env::start("sync-mount-only").await;
    env.vault.set_secret("mounted", "never-in-a-secret");
    let mut spec = one_key("k", "mounted");
    spec["target"] = json!({ "creationPolicy": "None" });
    env.apply_vault_secret("files-only", spec.clone()).await;
    // The operator looked (its status), and neither wrote a Secret nor asked the vault.
    let vs = env.wait_reason("files-only", "MountOnly").await;
    let ready = vs.status.expect("status").conditions.into_iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!(ready.status, "True");
    assert!(ready.message.contains("pod's own identity"), "{}", ready.message);
    assert!(env.secret("files-only").await.is_none(), "no Secret for a mount-only VaultSecret");
    assert_eq!(env.vault.calls(Op::GetSecret), 0, "nothing read from the vault");
    assert!(vs.metadata.finalizers.unwrap_or_default().is_empty(), "nothing to clean up, so no finalizer");

    // Its store is still checked: a missing one is reported as for any VaultSecret.
    spec["storeRef"] = json!({ "name": "no-such-store" });
    env.apply_vault_secret("files-only", spec).await;
    let vs = env.wait_reason("files-only", "StoreNotReady").await;
    assert_eq!(vs.status.and_then(|s| s.observed_generation), vs.metadata.generation);
    assert_eq!(env.vault.calls(Op::GetSecret), 0);
    env.remember_values(&["never-in-a-secret"]);
    env.finish().await;
}
