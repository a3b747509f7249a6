//! The operator with OpenBao stores, against a real apiserver and a real OpenBao dev server:
//! Kubernetes auth (a TokenRequest token of the store's service account, checked by OpenBao
//! with TokenReview), token and AppRole auth, KV v2 properties, rotation, pins, KV v1, a path
//! the policy denies, a server that is gone, store status, and the CRD's admission rules.

mod support;

use std::time::Duration;

use axum::http::Method; // the `http` types reqwest (and so `BaoClient`) uses
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PostParams},
};
use serde_json::{Value, json};
use support::{Env, READER_SA};
use vaultsync_api::{VaultSecret, VaultStore};
use vaultsync_e2e::{
    TestNamespace, eventually, install_crds,
    openbao::{AppRole, BaoClient, OpenBao as BaoServer, shared_with_root, unique},
};

/// The kubernetes auth mount every test of this binary uses (configured once).
const K8S_AUTH: &str = "kubernetes-operator-tests";

/// Enables kubernetes auth at [`K8S_AUTH`] once per test binary. OpenBao checks each login's
/// service-account token with the apiserver's TokenReview API. It does not run in a pod here
/// (`disable_local_ca_jwt`), and without `token_reviewer_jwt` it would authenticate the review
/// with the login's own token, which the apiserver refuses for a token of audience `vault` (and
/// which would need every store's account bound to `system:auth-delegator`). So a reviewer
/// account bound to `system:auth-delegator` gives OpenBao its `token_reviewer_jwt`.
async fn kubernetes_auth(root: &BaoClient) {
    static CONFIGURED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    CONFIGURED
        .get_or_init(|| async {
            let ns = TestNamespace::new("bao-reviewer").await;
            vaultsync_e2e::openbao::enable_kubernetes_auth(root, &ns, K8S_AUTH).await.expect("kubernetes auth");
        })
        .await;
}

/// A kubernetes auth role for the test namespace's reader account, with `policy`; returns its name.
async fn reader_role(root: &BaoClient, env: &Env, policy: &str) -> String {
    kubernetes_auth(root).await;
    let role = unique("reader");
    let body = json!({
        "bound_service_account_names": [READER_SA],
        "bound_service_account_namespaces": [env.ns.name],
        "policies": [policy],
        "audience": "vault",
        "ttl": "1h",
    });
    root.call(Method::POST, &format!("auth/{K8S_AUTH}/role/{role}"), Some(body)).await.expect("role");
    role
}

/// A store on `mount` that logs in with kubernetes auth as the reader account (audience `vault`, the default).
fn kubernetes_store(bao: &BaoServer, mount: &str, role: &str) -> Value {
    json!({ "provider": { "openbao": {
        "server": bao.addr,
        "mount": mount,
        "auth": { "kubernetes": { "role": role, "mountPath": K8S_AUTH, "serviceAccountRef": { "name": READER_SA } } },
    }}})
}

fn from_store(store: &str, data: Value) -> Value {
    json!({ "storeRef": { "name": store }, "data": data })
}

fn status_version(vs: &VaultSecret, key: &str) -> Option<String> {
    vs.status.as_ref()?.versions.get(key).cloned()
}

async fn wait_version(env: &Env, name: &str, key: &str, version: &str) {
    let api = env.ns.api::<VaultSecret>();
    eventually(Duration::from_secs(20), &format!("{name} to report version {version} of {key}"), || {
        let api = api.clone();
        async move { (status_version(&api.get(name).await.ok()?, key).as_deref() == Some(version)).then_some(()) }
    })
    .await;
}

/// Waits for a VaultStore's Ready condition to have `reason`; returns (status, message).
async fn wait_store(env: &Env, name: &str, reason: &str) -> (String, String) {
    let api = env.ns.api::<VaultStore>();
    eventually(Duration::from_secs(20), &format!("store {name} to be {reason}"), || {
        let api = api.clone();
        async move {
            let store = api.get(name).await.ok()?;
            let ready = store.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (ready.reason == reason).then_some((ready.status, ready.message))
        }
    })
    .await
}

async fn put_secret(env: &Env, name: &str, key: &str, value: &str) {
    let secret = Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
        ..Default::default()
    };
    env.ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("creating a credential Secret");
}

#[tokio::test]
async fn kubernetes_auth_syncs_properties_follows_rotation_and_pins_versions() {
    let (bao, root) = shared_with_root();
    let env = Env::start("bao-sync").await;
    let mount = root.enable_kv(2).await.expect("kv mount");
    let v1 = root
        .kv2_put(&mount, "app/db", json!({ "username": "app", "password": "bao-first-password" }))
        .await
        .expect("v1");
    let role =
        reader_role(&root, &env, &root.read_policy(&[format!("{mount}/data/app/*")]).await.expect("policy")).await;
    env.apply_store("bao", kubernetes_store(bao, &mount, &role)).await;
    let (status, _) = wait_store(&env, "bao", "Valid").await;
    assert_eq!(status, "True", "the store logged in");

    env.apply_vault_secret(
        "db",
        from_store(
            "bao",
            json!([
                { "secretKey": "password", "remoteRef": { "name": "app/db", "property": "password" } },
                { "secretKey": "username", "remoteRef": { "name": "app/db", "property": "username" } },
            ]),
        ),
    )
    .await;
    let secret = env.wait_secret_value("db", "password", "bao-first-password").await;
    assert_eq!(secret.data.expect("data")["username"].0, b"app");
    let vs = env.wait_reason("db", "Synced").await;
    assert_eq!(status_version(&vs, "password"), Some(v1.to_string()));

    // Rotation: a new KV version, then a forced sync.
    let v2 = root
        .kv2_put(&mount, "app/db", json!({ "username": "app", "password": "bao-second-password" }))
        .await
        .expect("v2");
    assert_eq!(v2, v1 + 1);
    env.annotate("db", "vaultsync.dev/force-sync", "1").await;
    env.wait_secret_value("db", "password", "bao-second-password").await;
    wait_version(&env, "db", "password", &v2.to_string()).await;

    // A pin keeps the first version.
    env.apply_vault_secret(
        "pinned",
        from_store(
            "bao",
            json!([{ "secretKey": "password",
                "remoteRef": { "name": "app/db", "property": "password", "version": v1.to_string() } }]),
        ),
    )
    .await;
    env.wait_secret_value("pinned", "password", "bao-first-password").await;
    wait_version(&env, "pinned", "password", &v1.to_string()).await;

    // The whole data object, as JSON, when no property is named.
    env.apply_vault_secret(
        "whole",
        from_store("bao", json!([{ "secretKey": "db.json", "remoteRef": { "name": "app/db" } }])),
    )
    .await;
    env.wait_secret_value("whole", "db.json", r#"{"password":"bao-second-password","username":"app"}"#).await;

    let (_, metrics) = env.http_get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l.contains(r#"operation="login""#) && l.contains(r#"outcome="ok""#)),
        "logins are counted as backend calls"
    );
    env.remember_values(&["bao-first-password", "bao-second-password"]);
    env.finish().await;
}

#[tokio::test]
async fn a_denied_path_is_forbidden_and_a_lost_server_leaves_the_secret_alone() {
    let (bao, root) = shared_with_root();
    let env = Env::start("bao-fail").await;
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "app/api", json!({ "key": "bao-api-key-value" })).await.expect("put");
    root.kv2_put(&mount, "other/api", json!({ "key": "bao-other-team-value" })).await.expect("put");
    let role =
        reader_role(&root, &env, &root.read_policy(&[format!("{mount}/data/app/*")]).await.expect("policy")).await;
    env.apply_store("bao", kubernetes_store(bao, &mount, &role)).await;

    env.apply_vault_secret(
        "denied",
        from_store("bao", json!([{ "secretKey": "key", "remoteRef": { "name": "other/api", "property": "key" } }])),
    )
    .await;
    let vs = env.wait_reason("denied", "Forbidden").await;
    let message = vs.status.expect("status").conditions[0].message.clone();
    assert!(message.contains("other/api") && message.contains("permission denied"), "{message}");
    assert!(env.secret("denied").await.is_none(), "nothing was written");

    env.apply_vault_secret(
        "api",
        from_store("bao", json!([{ "secretKey": "key", "remoteRef": { "name": "app/api", "property": "key" } }])),
    )
    .await;
    env.wait_secret_value("api", "key", "bao-api-key-value").await;
    env.wait_reason("api", "Synced").await;

    // The store now points at a port nobody listens on: the sync fails, the Secret stays.
    let closed = vaultsync_e2e::process::free_port().expect("a free port");
    let mut gone = kubernetes_store(bao, &mount, &role);
    gone["provider"]["openbao"]["server"] = json!(format!("http://127.0.0.1:{closed}"));
    env.apply_store("bao", gone).await;
    let (status, message) = wait_store(&env, "bao", "BackendUnavailable").await;
    assert_eq!(status, "False", "{message}");
    env.annotate("api", "vaultsync.dev/force-sync", "after-the-server-went").await;
    let vs = env.wait_reason("api", "BackendUnavailable").await;
    let ready = vs.status.expect("status").conditions.into_iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!(ready.status, "False");
    let kept = env.secret("api").await.expect("the Secret is still there");
    assert_eq!(kept.data.expect("data")["key"].0, b"bao-api-key-value", "the Secret is untouched");
    env.remember_values(&["bao-api-key-value", "bao-other-team-value"]);
    env.finish().await;
}

#[tokio::test]
async fn token_and_approle_stores_sync_and_kv_v1_reports_its_version() {
    let (bao, root) = shared_with_root();
    let env = Env::start("bao-auth").await;
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "svc/token-read", json!({ "value": "read-with-a-token" })).await.expect("put");
    root.kv2_put(&mount, "svc/approle-read", json!({ "value": "read-with-approle" })).await.expect("put");
    let kv1 = root.enable_kv(1).await.expect("kv mount");
    root.call(Method::POST, &format!("{kv1}/legacy/cfg"), Some(json!({ "value": "read-from-kv-v1" })))
        .await
        .expect("kv v1 put");
    let policy = root.read_policy(&[format!("{mount}/data/svc/*"), format!("{kv1}/legacy/*")]).await.expect("policy");

    // Token auth: a token with the policy in a Secret of the store's namespace.
    let token = root.token_with(&policy).await.expect("token");
    put_secret(&env, "bao-token", "token", &token).await;
    env.apply_store(
        "by-token",
        json!({ "provider": { "openbao": { "server": bao.addr, "mount": mount,
            "auth": { "token": { "secretRef": { "name": "bao-token", "key": "token" } } } } } }),
    )
    .await;

    // AppRole auth: a role with the policy; its secret ID in a Secret.
    let AppRole { mount: approle, role_id, secret_id } = root.approle(&policy).await.expect("approle");
    put_secret(&env, "approle", "secret-id", &secret_id).await;
    env.apply_store(
        "by-approle",
        json!({ "provider": { "openbao": { "server": bao.addr, "mount": mount,
            "auth": { "appRole": { "roleId": role_id, "mountPath": approle,
                "secretRef": { "name": "approle", "key": "secret-id" } } } } } }),
    )
    .await;
    env.apply_store(
        "legacy",
        json!({ "provider": { "openbao": { "server": bao.addr, "mount": kv1, "kvVersion": 1,
            "auth": { "token": { "secretRef": { "name": "bao-token", "key": "token" } } } } } }),
    )
    .await;

    let one = |store: &str, object: &str| {
        from_store(store, json!([{ "secretKey": "value", "remoteRef": { "name": object, "property": "value" } }]))
    };
    env.apply_vault_secret("via-token", one("by-token", "svc/token-read")).await;
    env.apply_vault_secret("via-approle", one("by-approle", "svc/approle-read")).await;
    env.apply_vault_secret("via-kv1", one("legacy", "legacy/cfg")).await;
    env.wait_secret_value("via-token", "value", "read-with-a-token").await;
    env.wait_secret_value("via-approle", "value", "read-with-approle").await;
    env.wait_secret_value("via-kv1", "value", "read-from-kv-v1").await;
    wait_version(&env, "via-token", "value", "1").await;
    wait_version(&env, "via-kv1", "value", "kv-v1").await;
    for store in ["by-token", "by-approle", "legacy"] {
        assert_eq!(wait_store(&env, store, "Valid").await.0, "True", "{store}");
    }

    // A store whose AppRole secret ID is wrong is not ready, with OpenBao's reason.
    put_secret(&env, "approle-wrong", "secret-id", "not-the-secret-id").await;
    env.apply_store(
        "wrong-approle",
        json!({ "provider": { "openbao": { "server": bao.addr, "mount": mount,
            "auth": { "appRole": { "roleId": role_id, "mountPath": approle,
                "secretRef": { "name": "approle-wrong", "key": "secret-id" } } } } } }),
    )
    .await;
    let (_, message) = wait_store(&env, "wrong-approle", "AuthenticationFailed").await;
    assert!(message.contains("invalid role or secret ID"), "{message}");
    env.remember_values(&[&token, &secret_id, "read-with-a-token", "read-with-approle", "read-from-kv-v1"]);
    env.finish().await;
}

/// Creates a store and returns the stored object or the apiserver's refusal message.
async fn create_store(ns: &TestNamespace, kind: &str, name: &str, spec: Value) -> Result<Value, String> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("vaultsync.dev", "v1alpha1", kind));
    let api: Api<DynamicObject> = if kind == "ClusterVaultStore" {
        Api::all_with(ns.client.clone(), &resource)
    } else {
        Api::namespaced_with(ns.client.clone(), &ns.name, &resource)
    };
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "vaultsync.dev/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec,
    }))
    .expect("object");
    match api.create(&PostParams::default(), &object).await {
        Ok(stored) => Ok(serde_json::to_value(stored).expect("json")),
        Err(kube::Error::Api(status)) if status.code == 422 => Err(status.message),
        Err(e) => panic!("unexpected error creating {kind}/{name}: {e}"),
    }
}

#[tokio::test]
async fn openbao_store_specs_are_checked_at_admission() {
    let ns = TestNamespace::new("bao-admission").await;
    install_crds(&ns.client).await;
    let k8s = json!({ "kubernetes": { "role": "app", "serviceAccountRef": { "name": "reader" } } });
    let store =
        |auth: Value| json!({ "provider": { "openbao": { "server": "https://bao.example:8200", "auth": auth } } });

    let stored = create_store(&ns, "VaultStore", "bao", store(k8s.clone())).await.expect("a valid store");
    let spec = &stored["spec"]["provider"]["openbao"];
    assert_eq!(spec["mount"], "secret");
    assert_eq!(spec["kvVersion"], 2);
    assert_eq!(spec["auth"]["kubernetes"]["mountPath"], "kubernetes");
    assert_eq!(spec["auth"]["kubernetes"]["audience"], "vault");
    let approle = json!({ "appRole": { "roleId": "r", "secretRef": { "name": "s", "key": "id" } } });
    let stored = create_store(&ns, "VaultStore", "approle", store(approle.clone())).await.expect("AppRole");
    assert_eq!(stored["spec"]["provider"]["openbao"]["auth"]["appRole"]["mountPath"], "approle");

    let mut both = store(k8s.clone());
    both["provider"]["azureKeyVault"] = json!({ "vaultUrl": "https://v.vault.azure.net", "tenantId": "t",
        "auth": { "managedIdentity": {} } });
    let mut two_auths = k8s.clone();
    two_auths["token"] = json!({ "secretRef": { "name": "t", "key": "token" } });
    let with = |field: &str, value: Value| {
        let mut spec = store(k8s.clone());
        spec["provider"]["openbao"][field] = value;
        spec
    };
    let cases = [
        ("both", both, "exactly one provider must be set"),
        ("two-auths", store(two_auths), "exactly one auth method must be set"),
        ("no-auth", store(json!({})), "exactly one auth method must be set"),
        ("kv3", with("kvVersion", json!(3)), "kvVersion"),
        ("dot-mount", with("mount", json!("../sys")), "mount"),
        ("empty-segment", with("mount", json!("team//kv")), "mount"),
        ("ftp", with("server", json!("ftp://bao.example")), "server"),
    ];
    for (name, spec, expected) in cases {
        let refused = create_store(&ns, "VaultStore", name, spec).await.expect_err(name);
        assert!(refused.contains(expected), "{name}: {refused}");
    }

    // A ClusterVaultStore must name the namespace of its account and Secrets.
    let cluster = |auth: Value| {
        let mut spec = store(auth);
        spec["conditions"] = json!([{ "namespaces": [ns.name] }]);
        spec
    };
    let name = |suffix: &str| format!("{}-{suffix}", ns.name);
    let refused = create_store(&ns, "ClusterVaultStore", &name("k8s"), cluster(k8s.clone())).await.expect_err("k8s");
    assert!(refused.contains("kubernetes.serviceAccountRef must name its namespace"), "{refused}");
    let token = json!({ "token": { "secretRef": { "name": "t", "key": "token" } } });
    let refused = create_store(&ns, "ClusterVaultStore", &name("token"), cluster(token)).await.expect_err("token");
    assert!(refused.contains("token.secretRef must name its namespace"), "{refused}");
    let refused =
        create_store(&ns, "ClusterVaultStore", &name("approle"), cluster(approle)).await.expect_err("approle");
    assert!(refused.contains("appRole.secretRef must name its namespace"), "{refused}");
    let mut named = k8s.clone();
    named["kubernetes"]["serviceAccountRef"]["namespace"] = json!(ns.name);
    create_store(&ns, "ClusterVaultStore", &name("named"), cluster(named)).await.expect("a namespaced account");
}

#[tokio::test]
async fn data_from_extracts_fields_and_finds_secrets_under_a_path() {
    let (bao, root) = shared_with_root();
    let env = Env::start("bao-datafrom").await;
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "team/db", json!({ "username": "app", "password": "bao-extracted" })).await.expect("db");
    root.kv2_put(&mount, "team/keys/api", json!({ "key": "bao-found-api" })).await.expect("api");
    root.kv2_put(&mount, "team/keys/signing", json!({ "key": "bao-found-signing" })).await.expect("signing");
    root.kv2_put(&mount, "team/keys/nested/deeper", json!({ "key": "not-in-this-folder" })).await.expect("nested");
    // Reading the secrets, and listing the folder (`find` uses the metadata LIST endpoint).
    let paths = [format!("{mount}/data/team/*"), format!("{mount}/metadata/team/*")];
    let policy = root.read_policy(&paths).await.expect("policy");
    let role = reader_role(&root, &env, &policy).await;
    env.apply_store("bao", kubernetes_store(bao, &mount, &role)).await;
    env.apply_vault_secret(
        "many",
        json!({ "storeRef": { "name": "bao" },
            "dataFrom": [{ "extract": { "name": "team/db" } }, { "find": { "path": "team/keys" } }] }),
    )
    .await;
    let secret = env.wait_secret_value("many", "password", "bao-extracted").await;
    let data = secret.data.expect("data");
    assert_eq!(data["username"].0, b"app");
    let api: Value = serde_json::from_slice(&data["api"].0).expect("the found secret is its data object");
    assert_eq!(api["key"], "bao-found-api");
    assert!(data.contains_key("signing"));
    assert!(!data.contains_key("nested") && !data.contains_key("deeper"), "find lists one folder, not below it");
    assert_eq!(data.len(), 4);
    env.finish().await;
}

#[tokio::test]
async fn a_rotated_credential_secret_is_used_after_the_old_one_is_refused() {
    let (bao, root) = shared_with_root();
    let env = Env::start("bao-rotate-cred").await;
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "svc/app", json!({ "value": "read-with-either-token" })).await.expect("put");
    let policy = root.read_policy(&[format!("{mount}/data/svc/*")]).await.expect("policy");
    let first = root.token_with(&policy).await.expect("token");
    put_secret(&env, "bao-token", "token", &first).await;
    env.apply_store(
        "by-token",
        json!({ "provider": { "openbao": { "server": bao.addr, "mount": mount,
            "auth": { "token": { "secretRef": { "name": "bao-token", "key": "token" } } } } } }),
    )
    .await;
    env.apply_vault_secret(
        "app",
        from_store(
            "by-token",
            json!([{ "secretKey": "v",
        "remoteRef": { "name": "svc/app", "property": "value" } }]),
        ),
    )
    .await;
    env.wait_secret_value("app", "v", "read-with-either-token").await;

    // The token is revoked and replaced in its Secret: the next read is refused once, then the
    // store is rebuilt from the Secret and reads again.
    root.call(Method::POST, "auth/token/revoke", Some(json!({ "token": first }))).await.expect("revoke");
    let second = root.token_with(&policy).await.expect("token");
    let patch = json!({ "data": { "token": ByteString(second.into_bytes()) } });
    env.ns
        .api::<Secret>()
        .patch("bao-token", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .expect("rotating");
    env.annotate("app", "vaultsync.dev/force-sync", "after-revoke").await;
    env.wait_reason("app", "AuthenticationFailed").await;
    root.kv2_put(&mount, "svc/app", json!({ "value": "read-with-the-new-token" })).await.expect("put");
    env.annotate("app", "vaultsync.dev/force-sync", "after-rotation").await;
    env.wait_secret_value("app", "v", "read-with-the-new-token").await;
    env.finish().await;
}
