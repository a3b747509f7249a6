//! The CRDs reject invalid specs at admission with a clear message (schema + CEL), on a real
//! apiserver, and fill in the documented defaults.

use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
};
use serde_json::{Value, json};
use vaultsync_e2e::{TestNamespace, install_crds};

fn api(ns: &TestNamespace, kind: &str) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("vaultsync.dev", "v1alpha1", kind));
    if kind == "ClusterVaultStore" {
        Api::all_with(ns.client.clone(), &resource)
    } else {
        Api::namespaced_with(ns.client.clone(), &ns.name, &resource)
    }
}

/// Creates the object and returns the stored object or the apiserver's refusal message.
async fn create(ns: &TestNamespace, kind: &str, name: &str, spec: Value) -> Result<Value, String> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "vaultsync.dev/v1alpha1", "kind": kind,
        "metadata": { "name": name }, "spec": spec,
    }))
    .expect("object");
    match api(ns, kind).create(&PostParams::default(), &object).await {
        Ok(stored) => Ok(serde_json::to_value(stored).expect("json")),
        Err(kube::Error::Api(status)) if status.code == 422 => Err(status.message),
        Err(e) => panic!("unexpected error creating {kind}/{name}: {e}"),
    }
}

fn azure(auth: Value) -> Value {
    json!({ "provider": { "azureKeyVault": {
        "vaultUrl": "https://team-a.vault.azure.net", "tenantId": "00000000-0000-0000-0000-000000000001", "auth": auth,
    }}})
}

fn workload_identity() -> Value {
    json!({ "workloadIdentity": { "serviceAccountRef": { "name": "reader" }, "clientId": "app-1" } })
}

#[tokio::test]
async fn a_valid_store_is_accepted_with_defaults() {
    let ns = TestNamespace::new("admission-store").await;
    install_crds(&ns.client).await;
    let stored = create(&ns, "VaultStore", "kv", azure(workload_identity())).await.expect("valid store accepted");
    let kv = &stored["spec"]["provider"]["azureKeyVault"];
    assert_eq!(kv["apiVersion"], "7.6");
    assert_eq!(kv["cloud"], "Public");
    assert_eq!(kv["auth"]["workloadIdentity"]["audience"], "api://AzureADTokenExchange");
}

#[tokio::test]
async fn invalid_stores_are_rejected_with_a_reason() {
    let ns = TestNamespace::new("admission-store-bad").await;
    install_crds(&ns.client).await;
    let two_auths = json!({ "workloadIdentity": workload_identity()["workloadIdentity"], "managedIdentity": {} });
    let cases = [
        ("two-auth", azure(two_auths), "exactly one auth method must be set"),
        ("no-auth", azure(json!({})), "exactly one auth method must be set"),
        ("no-provider", json!({ "provider": {} }), "exactly one provider must be set"),
        (
            "sp-both",
            azure(json!({ "servicePrincipal": { "clientId": "a",
                "clientSecretRef": { "name": "s", "key": "k" }, "clientCertificateRef": { "name": "c", "key": "k" } } })),
            "exactly one of clientSecretRef and clientCertificateRef",
        ),
    ];
    for (name, spec, expected) in cases {
        let message = create(&ns, "VaultStore", name, spec).await.expect_err(name);
        assert!(message.contains(expected), "{name}: {message}");
    }

    let mut plain_http = azure(workload_identity());
    plain_http["provider"]["azureKeyVault"]["vaultUrl"] = json!("http://team-a.vault.azure.net");
    let message = create(&ns, "VaultStore", "http", plain_http).await.expect_err("http vault URL");
    assert!(message.contains("vaultUrl"), "{message}");

    let mut custom = azure(workload_identity());
    custom["provider"]["azureKeyVault"]["cloud"] = json!("Custom");
    let message = create(&ns, "VaultStore", "custom", custom).await.expect_err("Custom without authorityHost");
    assert!(message.contains("authorityHost is required with cloud Custom"), "{message}");

    let mut cluster = azure(workload_identity());
    cluster["conditions"] = json!([{ "namespaces": [ns.name.clone()] }]);
    let name = format!("{}-cluster", ns.name);
    let message =
        create(&ns, "ClusterVaultStore", &name, cluster).await.expect_err("cluster store without SA namespace");
    assert!(message.contains("must name its namespace"), "{message}");
}

fn vault_secret(data: Value, refresh: &str) -> Value {
    json!({ "storeRef": { "name": "kv" }, "refreshInterval": refresh, "data": data })
}

fn one_key(key: &str) -> Value {
    json!([{ "secretKey": key, "remoteRef": { "name": "db-password" } }])
}

#[tokio::test]
async fn vault_secrets_are_validated_at_admission() {
    let ns = TestNamespace::new("admission-secret").await;
    install_crds(&ns.client).await;
    for (name, refresh) in
        [("hourly", "1h"), ("mixed", "1h30m"), ("once", "0"), ("fastest", "10s"), ("yearly", "8760h")]
    {
        create(&ns, "VaultSecret", name, vault_secret(one_key("password"), refresh))
            .await
            .unwrap_or_else(|m| panic!("{refresh} refused: {m}"));
    }
    let stored = create(&ns, "VaultSecret", "defaults", json!({ "storeRef": { "name": "kv" }, "data": one_key("p") }))
        .await
        .expect("defaults");
    assert_eq!(stored["spec"]["refreshInterval"], "1h");
    assert_eq!(stored["spec"]["storeRef"]["kind"], "VaultStore");
    assert_eq!(stored["spec"]["data"][0]["remoteRef"]["decoding"], "None");

    let duplicate = json!([
        { "secretKey": "password", "remoteRef": { "name": "a" } },
        { "secretKey": "password", "remoteRef": { "name": "b" } },
    ]);
    let cases = [
        ("bad-interval", vault_secret(one_key("password"), "1 hour"), "refreshInterval"),
        // Hostile intervals: one overflowed the operator's time arithmetic, the other made it poll in a hot loop.
        ("huge-interval", vault_secret(one_key("password"), "80000000h"), "between 10s and 8760h"),
        ("tiny-interval", vault_secret(one_key("password"), "1ms"), "between 10s and 8760h"),
        ("just-under", vault_secret(one_key("password"), "9s"), "between 10s and 8760h"),
        ("just-over", vault_secret(one_key("password"), "8761h"), "between 10s and 8760h"),
        (
            "long-debounce",
            json!({ "storeRef": { "name": "kv" }, "data": one_key("p"), "rollout": { "debounce": "11m" } }),
            "debounce must be at most 10m",
        ),
        (
            "merge-immutable",
            json!({ "storeRef": { "name": "kv" }, "data": one_key("p"),
                "target": { "creationPolicy": "Merge", "immutable": true } }),
            "immutable cannot be set with creationPolicy Merge",
        ),
        ("bad-key", vault_secret(one_key("bad/key"), "1h"), "secretKey"),
        ("no-data", vault_secret(json!([]), "1h"), "data"),
        ("duplicate-key", vault_secret(duplicate, "1h"), "Duplicate value"),
        (
            "bad-decoding",
            vault_secret(json!([{ "secretKey": "k", "remoteRef": { "name": "a", "decoding": "rot13" } }]), "1h"),
            "decoding",
        ),
    ];
    for (name, spec, expected) in cases {
        let message = create(&ns, "VaultSecret", name, spec).await.expect_err(name);
        assert!(message.contains(expected), "{name}: {message}");
    }
}

fn remote(remote_ref: Value) -> Value {
    vault_secret(json!([{ "secretKey": "k", "remoteRef": remote_ref }]), "1h")
}

fn templated(template: Value) -> Value {
    json!({ "storeRef": { "name": "kv" }, "data": one_key("p"), "target": { "template": template } })
}

#[tokio::test]
async fn certificates_keys_templates_and_find_are_bounded_at_admission() {
    let ns = TestNamespace::new("admission-certs").await;
    install_crds(&ns.client).await;
    let accepted = [
        ("pem", remote(json!({ "name": "web", "format": "pem" }))),
        ("pfx", remote(json!({ "name": "web", "format": "pfx", "pfxPassword": { "template": "{{ p }}" } }))),
        ("leaf", remote(json!({ "name": "web", "objectType": "certificate", "format": "der" }))),
        ("jwk", remote(json!({ "name": "signing", "objectType": "key", "format": "jwk" }))),
        ("tpl", templated(json!({ "data": { "config.json": "{{ p }}" }, "labels": { "app.kubernetes.io/x": "y" } }))),
        (
            "find",
            json!({ "storeRef": { "name": "kv" }, "dataFrom": [{ "find": { "name": { "regexp": "^app-" },
                "tags": { "env": "prod" } }, "rewrite": [{ "regexp": { "source": "^app-", "target": "" } }] }] }),
        ),
    ];
    for (name, spec) in accepted {
        create(&ns, "VaultSecret", name, spec).await.unwrap_or_else(|m| panic!("{name} refused: {m}"));
    }
    let big = "x".repeat(65537);
    let many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("k{i}"), json!("v"))).collect();
    let many_tags: serde_json::Map<String, Value> = (0..17).map(|i| (format!("t{i}"), json!("v"))).collect();
    let cases = [
        ("jwk-of-secret", remote(json!({ "name": "a", "format": "jwk" })), "format must fit objectType"),
        ("pfx-of-key", remote(json!({ "name": "a", "objectType": "key", "format": "pfx" })), "format must fit"),
        ("bad-type", remote(json!({ "name": "a", "objectType": "blob" })), "objectType"),
        ("property-format", remote(json!({ "name": "a", "property": "x", "format": "pem" })), "cannot be combined"),
        (
            "password-no-pfx",
            remote(json!({ "name": "a", "format": "pem", "pfxPassword": { "template": "x" } })),
            "pfxPassword is for format pfx",
        ),
        (
            "two-passwords",
            remote(json!({ "name": "a", "format": "pfx",
                "pfxPassword": { "template": "x", "secretRef": { "name": "s", "key": "k" } } })),
            "exactly one of secretRef and template",
        ),
        ("empty-template", templated(json!({})), "at least one of"),
        ("huge-template", templated(json!({ "data": { "k": big } })), "Too long"),
        ("many-templates", templated(json!({ "data": many })), "must have at most 64"),
        ("bad-template-key", templated(json!({ "data": { "a/b": "x" } })), "valid Secret key"),
        ("bad-label-key", templated(json!({ "labels": { "a b": "x" } })), "valid label key"),
        ("bad-merge-policy", templated(json!({ "data": { "k": "x" }, "mergePolicy": "Sometimes" })), "mergePolicy"),
        (
            "many-tags",
            json!({ "storeRef": { "name": "kv" }, "dataFrom": [{ "find": { "tags": many_tags } }] }),
            "must have at most 16",
        ),
        (
            "long-regexp",
            json!({ "storeRef": { "name": "kv" }, "dataFrom": [{ "find": { "name": { "regexp": "a".repeat(257) } } }] }),
            "Too long",
        ),
    ];
    for (name, spec, expected) in cases {
        let message = create(&ns, "VaultSecret", name, spec).await.expect_err(name);
        assert!(message.contains(expected), "{name}: {message}");
    }
}
