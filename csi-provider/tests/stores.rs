//! The store forms end to end: `vaultSecret: <name>` and `storeRef` + `objects`, resolved against
//! the real apiserver with the pod's identity (a VaultStore's workload identity is the pod's own
//! service account), a ClusterVaultStore's namespace conditions and object allowlists checked
//! before any vault call; both modes.

mod support;

use std::collections::BTreeMap;

use kube::api::{Patch, PatchParams};
use serde_json::json;
use support::*;
use tonic::Code;
use vaultsync_api::ClusterVaultStore;
use vaultsync_e2e::{TestNamespace, install_crds, keyvault::Op};

#[tokio::test]
async fn a_vault_secret_is_mounted_with_the_pods_identity_in_both_modes() {
    let ns = TestNamespace::new("csi-s-vs").await;
    let azure = web_on_azure(&ns).await;
    azure.vault.set_secret("db-password", "vs-password");
    azure.vault.set_secret("db-config", r#"{"host":"db.internal","port":5432}"#);
    let data = json!([
        { "secretKey": "password", "remoteRef": { "name": "db-password" } },
        { "secretKey": "host", "remoteRef": { "name": "db-config", "property": "host" } },
    ]);
    // Mount-only (`creationPolicy: None`): the operator would write no Secret for it; the mapping serves the mounts.
    let spec = json!({ "data": data, "target": { "creationPolicy": "None" } });
    apply_vault_secret(&ns, &azure, "app-web", "db-files", spec).await;
    let plugin = Plugin::start_with_stores(&[], ns.client.clone()).await;

    // Mode 1: a SecretProviderClass with `vaultSecret: db-files`.
    let mut attributes = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    attributes.insert("vaultSecret".into(), "db-files".into());
    let response = plugin.provider().await.mount(provider_mount(&attributes)).await.expect("Mount").into_inner();
    let files: BTreeMap<_, _> =
        response.files.iter().map(|f| (f.path.clone(), String::from_utf8(f.contents.clone()).unwrap())).collect();
    assert_eq!(
        files,
        BTreeMap::from([("host".into(), "db.internal".into()), ("password".into(), "vs-password".into())])
    );

    // Mode 2: an inline volume naming the VaultSecret by the attribute rollouts know.
    let mut context = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    context.insert("vaultsync.dev/vaultsecret".into(), "db-files".into());
    let target = plugin.target("vs");
    let mut node = plugin.node().await;
    node.node_publish_volume(publish_request("csi-vs", &target, context)).await.expect("NodePublishVolume");
    assert_eq!(read_volume(&target)["password"], "vs-password");
    assert_eq!(azure.vault.calls(Op::GetSecret), 2, "the second pod of the account shared the reads");
    node.node_unpublish_volume(unpublish_request("csi-vs", &target)).await.expect("unpublish");

    // A VaultSecret that does not exist.
    attributes.insert("vaultSecret".into(), "missing".into());
    let error = plugin.provider().await.mount(provider_mount(&attributes)).await.expect_err("no such VaultSecret");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("vaultSecret") && error.message().contains("missing"), "{}", error.message());
    plugin.stop().await;
}

#[tokio::test]
async fn a_cluster_store_refuses_other_namespaces_and_objects_before_any_vault_call() {
    let ns = TestNamespace::new("csi-s-cvs").await;
    let other = TestNamespace::new("csi-s-other").await;
    install_crds(&ns.client).await;
    service_account(&ns, "web").await;
    service_account(&other, "web").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("app-db", "allowed-value");
    azure.vault.set_secret("other-db", "forbidden-value");
    let name = format!("shared-{}", ns.name);
    let store = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "ClusterVaultStore", "metadata": { "name": name },
        "spec": { "provider": azure_store(&azure, "app-web", &ns.name),
            "conditions": [{ "namespaces": [ns.name], "allowedObjects": ["app-*"] }] } });
    kube::Api::<ClusterVaultStore>::all(ns.client.clone())
        .patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&store))
        .await
        .expect("ClusterVaultStore");
    let plugin = Plugin::start_with_stores(&[], ns.client.clone()).await;
    let mut provider = plugin.provider().await;
    let parameters = |object: &str| {
        BTreeMap::from([
            ("storeRef".to_string(), name.clone()),
            ("storeKind".to_string(), "ClusterVaultStore".to_string()),
            ("objects".to_string(), format!("- objectName: {object}\n  fileName: db\n")),
        ])
    };

    let mut allowed = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    allowed.extend(parameters("app-db"));
    let response = provider.mount(provider_mount(&allowed)).await.expect("an allowed object").into_inner();
    assert_eq!(response.files[0].contents, b"allowed-value");
    assert_eq!(response.object_version[0].id, "secret/app-db");

    let mut object = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    object.extend(parameters("other-db"));
    let error = provider.mount(provider_mount(&object)).await.expect_err("an object outside the allowlist");
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(error.message().contains("object other-db"), "{}", error.message());

    let mut namespace = pod_attributes(&other, "web", "web-0", &[AZURE_AUDIENCE]).await;
    namespace.extend(parameters("app-db"));
    let error = provider.mount(provider_mount(&namespace)).await.expect_err("a namespace the store does not admit");
    assert_eq!(error.code(), Code::PermissionDenied);
    assert!(error.message().contains(&other.name), "{}", error.message());
    assert_eq!(azure.vault.calls(Op::GetSecret), 1, "refusals cost no vault call");

    // Node mode: the refused publish leaves nothing.
    let target = plugin.target("refused");
    let mut context = pod_attributes(&other, "web", "web-1", &[AZURE_AUDIENCE]).await;
    context.extend(parameters("app-db"));
    let refused = plugin.node().await.node_publish_volume(publish_request("csi-r", &target, context)).await;
    assert_eq!(refused.expect_err("refused").code(), Code::PermissionDenied);
    assert!(!target.exists());
    assert_logs_free_of(&["allowed-value", "forbidden-value"]);
    plugin.stop().await;
}

#[tokio::test]
async fn a_vault_secret_with_data_from_mounts_every_key_the_operator_would_write() {
    let ns = TestNamespace::new("csi-s-from").await;
    let azure = web_on_azure(&ns).await;
    azure.vault.set_secret("app-config", r#"{"db_host":"from-extract","port":5432}"#);
    azure.vault.set_secret("pinned-host", "db.internal");
    let tags = |env: &str| BTreeMap::from([("env".to_string(), env.to_string())]);
    azure.vault.set_secret_with("team-a-one", "one-value", None, tags("prod"));
    azure.vault.set_secret_with("team-a-two", "dHdvLXZhbHVl", None, tags("prod")); // base64 of two-value
    azure.vault.set_secret_with("team-a-three", "three-value", None, tags("dev"));
    azure.vault.set_secret_with("other-one", "other-value", None, tags("prod"));
    let spec = json!({
        "data": [{ "secretKey": "db_host", "remoteRef": { "name": "pinned-host" } }],
        "dataFrom": [
            { "extract": { "name": "app-config" } },
            { "find": { "path": "team-a-", "tags": { "env": "prod" }, "decoding": "Auto" },
              "rewrite": [{ "regexp": { "source": "^team-a-", "target": "secret_" } }] },
        ] });
    apply_vault_secret(&ns, &azure, "app-web", "from", spec).await;
    let plugin = Plugin::start_with_stores(&[], ns.client.clone()).await;
    let expected = BTreeMap::from([
        ("db_host".to_string(), "db.internal".to_string()),
        ("port".to_string(), "5432".to_string()),
        ("secret_one".to_string(), "one-value".to_string()),
        ("secret_two".to_string(), "two-value".to_string()),
    ]);

    // Node mode: the files as the operator would write the Secret's keys (a data item wins over dataFrom).
    let mut context = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    context.insert("vaultsync.dev/vaultsecret".into(), "from".into());
    let target = plugin.target("from");
    let mut node = plugin.node().await;
    node.node_publish_volume(publish_request("csi-from", &target, context)).await.expect("NodePublishVolume");
    assert_eq!(read_volume(&target), expected);
    node.node_unpublish_volume(unpublish_request("csi-from", &target)).await.expect("unpublish");

    // Provider mode: the same files, one version per object read.
    let mut attributes = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    attributes.insert("vaultSecret".into(), "from".into());
    let response = plugin.provider().await.mount(provider_mount(&attributes)).await.expect("Mount").into_inner();
    let files: BTreeMap<_, _> =
        response.files.iter().map(|f| (f.path.clone(), String::from_utf8(f.contents.clone()).unwrap())).collect();
    assert_eq!(files, expected);
    let mut ids: Vec<&str> = response.object_version.iter().map(|v| v.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["secret/app-config", "secret/pinned-host", "secret/team-a-one", "secret/team-a-two"]);

    // A find that selects nothing, and a rewrite that makes two keys one, are refused and write nothing.
    for (name, data_from, what) in [
        ("empty", json!([{ "find": { "path": "team-b-" } }]), "found no object"),
        (
            "clash",
            json!([{ "find": { "path": "team-a-", "tags": { "env": "prod" } },
            "rewrite": [{ "regexp": { "source": ".*", "target": "same" } }] }]),
            "into the key",
        ),
        (
            "twice",
            json!([{ "extract": { "name": "app-config" } }, { "extract": { "name": "app-config" } }]),
            "an earlier dataFrom entry",
        ),
    ] {
        apply_vault_secret(&ns, &azure, "app-web", name, json!({ "dataFrom": data_from })).await;
        let mut context = pod_attributes(&ns, "web", "web-2", &[AZURE_AUDIENCE]).await;
        context.insert("vaultsync.dev/vaultsecret".into(), name.into());
        let target = plugin.target(name);
        let error = node.node_publish_volume(publish_request(name, &target, context)).await.expect_err(name);
        assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
        assert!(error.message().contains(what) && error.message().contains("dataFrom["), "{error:?}");
        assert!(!target.exists(), "nothing was made");
    }
    assert_logs_free_of(&["one-value", "two-value", "db.internal", "from-extract"]);
    plugin.stop().await;
}
