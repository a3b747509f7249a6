//! The OpenBao client against a real OpenBao dev server: KV v2 (latest and pinned versions) and
//! KV v1, listing, policies that deny, revoked tokens, token, AppRole and Kubernetes auth (the
//! service-account token checked by OpenBao with TokenReview at the real apiserver), Vault
//! namespaces, and a server that is not there. Each test makes its own mounts, policies and
//! roles, so the tests share one server and run in parallel.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use reqwest::Method;
use serde_json::{Value, json};
use support::ServiceAccountJwt;
use vaultsync_backend::{
    Backend, Error, ObjectRef, Principal,
    cache::ReadCache,
    http::{RetryPolicy, http_client},
    openbao::{AuthMethod, KV_V1_VERSION, KvMount, KvVersion, OpenBao},
};
use vaultsync_e2e::{
    TestNamespace,
    openbao::{AppRole, shared_with_root, unique},
};
use zeroize::Zeroizing;

/// The audience of the service-account tokens the client logs in with (the operator's default).
const AUDIENCE: &str = "vault";

/// Calls seen by a client's observer, as (operation, outcome).
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(&'static str, &'static str)>>>);

impl Calls {
    fn count(&self, operation: &str, outcome: &str) -> usize {
        self.0.lock().expect("calls").iter().filter(|(o, r)| *o == operation && *r == outcome).count()
    }
}

fn client(server: &str, mount: &str, kv_version: KvVersion, auth: AuthMethod, calls: &Calls) -> OpenBao {
    client_in(server, None, mount, kv_version, auth, calls)
}

fn client_in(
    server: &str,
    namespace: Option<&str>,
    mount: &str,
    kv_version: KvVersion,
    auth: AuthMethod,
    calls: &Calls,
) -> OpenBao {
    let location = KvMount {
        server: server.into(),
        insecure_http: server.starts_with("http://"),
        namespace: namespace.map(str::to_string),
        mount: mount.into(),
        kv_version,
    };
    let seen = calls.0.clone();
    let fast = RetryPolicy { base_backoff: Duration::from_millis(10), ..RetryPolicy::default() };
    let principal = Principal::OpenBaoToken { fingerprint: "test".into() };
    // The real server speaks TLS with its own CA; the hand-made ones below speak plain http.
    let ca = server.starts_with("https://").then(|| vaultsync_e2e::openbao::OpenBao::shared().ca_pem.as_str());
    OpenBao::new(http_client(ca).expect("http"), location, auth, principal)
        .expect("client")
        .with_retry(fast)
        .metered(None, Some(Arc::new(move |op, outcome| seen.lock().expect("calls").push((op, outcome)))))
}

fn token(value: &str) -> AuthMethod {
    AuthMethod::Token(Zeroizing::new(value.to_string()))
}

fn json_of(secret: &vaultsync_backend::FetchedSecret) -> Value {
    serde_json::from_slice(secret.value.expose()).expect("the value is JSON")
}

#[tokio::test]
async fn token_auth_reads_the_latest_and_pinned_kv_v2_versions() {
    let (bao, root) = shared_with_root();
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "app/db", json!({ "password": "first-db-password" })).await.expect("v1");
    root.kv2_put(&mount, "app/db", json!({ "password": "second-db-password", "username": "app" })).await.expect("v2");
    let reader = root
        .token_with(&root.read_policy(&[format!("{mount}/data/app/*")]).await.expect("policy"))
        .await
        .expect("token");
    let calls = Calls::default();
    let kv = client(&bao.addr, &mount, KvVersion::V2, token(&reader), &calls);

    let latest = kv.get(&ObjectRef::latest("app/db")).await.expect("latest");
    assert_eq!(json_of(&latest), json!({ "password": "second-db-password", "username": "app" }));
    assert_eq!(latest.version, "2");
    assert!(!format!("{latest:?}").contains("second-db-password"), "Debug never shows the value");
    let pinned = kv.get(&ObjectRef::secret("app/db", Some("1".into()))).await.expect("pinned");
    assert_eq!(json_of(&pinned), json!({ "password": "first-db-password" }));
    assert_eq!(pinned.version, "1");

    let missing_version = ObjectRef::secret("app/db", Some("9".into()));
    assert_eq!(kv.get(&missing_version).await.expect_err("no version 9").reason(), "NotFound");
    let missing = kv.get(&ObjectRef::latest("app/nope")).await.expect_err("no such secret");
    assert_eq!(missing, Error::NotFound { object: "app/nope".into() });
    let not_a_number = ObjectRef::secret("app/db", Some("latest".into()));
    assert_eq!(kv.get(&not_a_number).await.expect_err("bad pin").reason(), "InvalidSpec");
    assert_eq!(calls.count("kv_read", "ok"), 2);
    assert_eq!(calls.count("kv_read", "not_found"), 2, "not found is not retried");
    kv.check().await.expect("the token is valid");
    assert_eq!(calls.count("lookup_self", "ok"), 1, "check is one lookup-self");

    // A deleted latest version reads as not found; the older one stays readable by pin.
    root.call(Method::DELETE, &format!("{mount}/data/app/db"), None).await.expect("soft delete");
    assert_eq!(kv.get(&ObjectRef::latest("app/db")).await.expect_err("deleted").reason(), "NotFound");
    kv.get(&ObjectRef::secret("app/db", Some("1".into()))).await.expect("v1 is still there");
}

#[tokio::test]
async fn reads_through_the_cache_are_shared_per_identity() {
    let (bao, root) = shared_with_root();
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "shared", json!({ "k": "shared-value-1" })).await.expect("put");
    let calls = Calls::default();
    let kv: Arc<dyn Backend> = Arc::new(client(&bao.addr, &mount, KvVersion::V2, token(&root.token), &calls));
    let cache = Arc::new(ReadCache::new(Duration::from_secs(60)));
    let reads = (0..50).map(|_| {
        let (kv, cache) = (kv.clone(), cache.clone());
        tokio::spawn(async move { cache.get(kv.as_ref(), &ObjectRef::latest("shared"), None).await })
    });
    for read in futures::future::join_all(reads).await {
        assert_eq!(json_of(&read.expect("task").expect("read")), json!({ "k": "shared-value-1" }));
    }
    assert_eq!(calls.count("kv_read", "ok"), 1, "50 concurrent readers, one read");
    let other_mount = client(&bao.addr, "secret", KvVersion::V2, token(&root.token), &calls);
    assert_ne!(kv.identity(), other_mount.identity(), "another mount is another cache identity");
}

#[tokio::test]
async fn kv_v1_secrets_report_the_kv_v1_version() {
    let (bao, root) = shared_with_root();
    let mount = root.enable_kv(1).await.expect("kv mount");
    let body = json!({ "url": "postgres://db:5432", "password": "kv1-password-value", "port": 5432 });
    root.call(Method::POST, &format!("{mount}/team/db"), Some(body.clone())).await.expect("kv v1 write");
    let calls = Calls::default();
    let kv = client(&bao.addr, &mount, KvVersion::V1, token(&root.token), &calls);

    let secret = kv.get(&ObjectRef::latest("team/db")).await.expect("kv v1 read");
    assert_eq!(json_of(&secret), body);
    assert_eq!(secret.version, KV_V1_VERSION);
    let pinned = ObjectRef::secret("team/db", Some(KV_V1_VERSION.into()));
    assert_eq!(json_of(&kv.get(&pinned).await.expect("the kv-v1 pin")), body);
    let numbered = ObjectRef::secret("team/db", Some("1".into()));
    assert_eq!(kv.get(&numbered).await.expect_err("KV v1 has no versions").reason(), "InvalidSpec");
    assert_eq!(kv.list("team").await.expect("list"), ["db"]);
    assert_eq!(kv.list("").await.expect("list the root"), ["team/"]);

    // The same mount read as KV v2 finds no `data/` paths: the version must match the mount.
    let wrong = client(&bao.addr, &mount, KvVersion::V2, token(&root.token), &calls);
    assert_eq!(wrong.get(&ObjectRef::latest("team/db")).await.expect_err("kv v2 path").reason(), "NotFound");
}

#[tokio::test]
async fn list_names_secrets_and_folders_under_a_prefix() {
    let (bao, root) = shared_with_root();
    let mount = root.enable_kv(2).await.expect("kv mount");
    for path in ["app/a", "app/b", "app/sub/c", "other/d"] {
        root.kv2_put(&mount, path, json!({ "v": path })).await.expect("put");
    }
    let lister = root
        .token_with(&root.read_policy(&[format!("{mount}/metadata/app/*")]).await.expect("policy"))
        .await
        .expect("token");
    let calls = Calls::default();
    let kv = client(&bao.addr, &mount, KvVersion::V2, token(&lister), &calls);

    assert_eq!(kv.list("app").await.expect("list"), ["a", "b", "sub/"]);
    assert_eq!(kv.list("app/sub/").await.expect("list a subfolder"), ["c"]);
    assert_eq!(kv.list("app/none").await.expect("an empty folder"), Vec::<String>::new());
    let denied = kv.list("other").await.expect_err("outside the policy");
    assert_eq!(denied.reason(), "Forbidden", "{denied:?}");
    assert_eq!(calls.count("kv_list", "ok"), 2);
}

#[tokio::test]
async fn a_path_outside_the_policy_is_forbidden_and_a_revoked_token_is_refused() {
    let (bao, root) = shared_with_root();
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "team-a/key", json!({ "k": "team-a-value" })).await.expect("put a");
    root.kv2_put(&mount, "team-b/key", json!({ "k": "team-b-value" })).await.expect("put b");
    let team_a = root
        .token_with(&root.read_policy(&[format!("{mount}/data/team-a/*")]).await.expect("policy"))
        .await
        .expect("token");
    let calls = Calls::default();
    let kv = client(&bao.addr, &mount, KvVersion::V2, token(&team_a), &calls);

    kv.get(&ObjectRef::latest("team-a/key")).await.expect("inside the policy");
    let error = kv.get(&ObjectRef::latest("team-b/key")).await.expect_err("outside the policy");
    assert!(matches!(&error, Error::Forbidden { object, .. } if object == "team-b/key"), "{error:?}");
    assert!(error.to_string().contains("permission denied"), "{error}");
    assert!(!error.to_string().contains("team-b-value"));
    assert_eq!(calls.count("kv_read", "forbidden"), 1, "a 403 is not retried");
    assert_eq!(calls.count("lookup_self", "ok"), 1, "the token was checked once: it is valid, the policy denies");

    root.call(Method::POST, "auth/token/revoke", Some(json!({ "token": team_a }))).await.expect("revoking");
    let error = kv.get(&ObjectRef::latest("team-a/key")).await.expect_err("revoked token");
    assert_eq!(error.reason(), "AuthenticationFailed", "{error:?}");
    assert!(!error.to_string().contains(&team_a), "the token never reaches a message");
    assert_eq!(kv.check().await.expect_err("check with a revoked token").reason(), "AuthenticationFailed");
}

#[tokio::test]
async fn approle_logs_in_once_and_again_when_its_token_is_revoked() {
    let (bao, root) = shared_with_root();
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "svc/api", json!({ "key": "approle-read-value" })).await.expect("put");
    let policy = root.read_policy(&[format!("{mount}/data/svc/*")]).await.expect("policy");
    let AppRole { mount: approle, role_id, secret_id } = root.approle(&policy).await.expect("approle");
    let login = |secret_id: &str, calls: &Calls| {
        let auth = AuthMethod::AppRole {
            mount_path: approle.clone(),
            role_id: role_id.clone(),
            secret_id: Zeroizing::new(secret_id.to_string()),
        };
        client(&bao.addr, &mount, KvVersion::V2, auth, calls)
    };

    let calls = Calls::default();
    let kv = login(&secret_id, &calls);
    kv.check().await.expect("check logs in");
    assert_eq!(calls.count("login", "ok"), 1);
    for _ in 0..3 {
        let secret = kv.get(&ObjectRef::latest("svc/api")).await.expect("read");
        assert_eq!(json_of(&secret), json!({ "key": "approle-read-value" }));
    }
    assert_eq!(calls.count("login", "ok"), 1, "the token is cached between reads");

    // Every token this AppRole mount issued is revoked: the next read is refused, the token found
    // invalid, and the client logs in again once.
    root.call(Method::PUT, &format!("sys/leases/revoke-prefix/auth/{approle}/login"), None).await.expect("revoke");
    let secret = kv.get(&ObjectRef::latest("svc/api")).await.expect("read after logging in again");
    assert_eq!(json_of(&secret), json!({ "key": "approle-read-value" }));
    assert_eq!(calls.count("login", "ok"), 2);
    assert_eq!(calls.count("lookup_self", "forbidden"), 1);

    let refused = Calls::default();
    let error = login("not-the-secret-id", &refused).get(&ObjectRef::latest("svc/api")).await.expect_err("bad id");
    assert_eq!(error.reason(), "AuthenticationFailed", "{error:?}");
    assert!(error.to_string().contains("invalid role or secret ID"), "{error}");
    assert_eq!(refused.count("kv_read", "ok") + refused.count("kv_read", "forbidden"), 0, "no read without a login");
}

#[tokio::test]
async fn a_vault_namespace_is_sent_with_every_request() {
    let (bao, root) = shared_with_root();
    let namespace = unique("tenant");
    root.call(Method::POST, &format!("sys/namespaces/{namespace}"), Some(json!({}))).await.expect("namespace");
    root.call(
        Method::POST,
        &format!("{namespace}/sys/mounts/kv"),
        Some(json!({ "type": "kv", "options": { "version": "2" } })),
    )
    .await
    .expect("a mount in the namespace");
    root.kv2_put(&format!("{namespace}/kv"), "db", json!({ "password": "namespaced-value" })).await.expect("put");

    let calls = Calls::default();
    let inside = client_in(&bao.addr, Some(&namespace), "kv", KvVersion::V2, token(&root.token), &calls);
    assert_eq!(
        json_of(&inside.get(&ObjectRef::latest("db")).await.expect("read")),
        json!({ "password": "namespaced-value" })
    );
    let outside = client(&bao.addr, "kv", KvVersion::V2, token(&root.token), &calls);
    assert!(outside.get(&ObjectRef::latest("db")).await.is_err(), "the root namespace has no such mount");
    assert_ne!(inside.identity(), outside.identity());
}

#[tokio::test]
async fn a_server_that_is_not_there_is_unavailable() {
    let port = vaultsync_e2e::process::free_port().expect("a free port"); // nothing listens on it
    let calls = Calls::default();
    let kv = client(&format!("http://127.0.0.1:{port}"), "secret", KvVersion::V2, token("t"), &calls);
    let error = kv.get(&ObjectRef::latest("db")).await.expect_err("no server");
    assert_eq!(error.reason(), "BackendUnavailable", "{error:?}");
    assert_eq!(calls.count("kv_read", "transport_error"), 4, "retried up to max_attempts");
    assert_eq!(kv.check().await.expect_err("check").reason(), "BackendUnavailable");

    let auth = AuthMethod::AppRole {
        mount_path: "approle".into(),
        role_id: "r".into(),
        secret_id: Zeroizing::new("s".into()),
    };
    let login = client(&format!("http://127.0.0.1:{port}"), "secret", KvVersion::V2, auth, &calls);
    assert_eq!(login.get(&ObjectRef::latest("db")).await.expect_err("no server").reason(), "BackendUnavailable");
}

/// Kubernetes auth as OpenBao 2.7 verifies it: OpenBao sends the client's JWT to the apiserver's
/// TokenReview API. With `disable_local_ca_jwt` (OpenBao does not run in a pod here) and no
/// `token_reviewer_jwt`, OpenBao would authenticate that TokenReview with the client's own JWT,
/// which fails for a token whose audience is `vault` (the apiserver accepts only its own
/// audience) and would need every client account bound to `system:auth-delegator`. So the test
/// configures `token_reviewer_jwt`: a token (apiserver audience) of a reviewer account bound to
/// `system:auth-delegator`, and roles that require the audience `vault`.
#[tokio::test]
async fn kubernetes_auth_logs_in_with_a_service_account_token() {
    let ns = TestNamespace::new("bao-k8s-auth").await;
    let accounts: Api<ServiceAccount> = ns.api();
    for name in ["reader", "intruder"] {
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        };
        accounts.create(&PostParams::default(), &sa).await.expect("service account");
    }
    let (bao, root) = shared_with_root();
    let auth_mount = unique("k8s");
    vaultsync_e2e::openbao::enable_kubernetes_auth(&root, &ns, &auth_mount).await.expect("kubernetes auth");
    let mount = root.enable_kv(2).await.expect("kv mount");
    root.kv2_put(&mount, "app/db", json!({ "password": "k8s-auth-read-value" })).await.expect("put");
    let policy = root.read_policy(&[format!("{mount}/data/app/*")]).await.expect("policy");
    let role = json!({
        "bound_service_account_names": ["reader"],
        "bound_service_account_namespaces": [ns.name],
        "policies": [policy],
        "audience": AUDIENCE,
        "ttl": "1h",
    });
    root.call(Method::POST, &format!("auth/{auth_mount}/role/app"), Some(role)).await.expect("role");

    let store = |sa: &str, calls: &Calls| {
        let jwt = Arc::new(ServiceAccountJwt { api: accounts.clone(), name: sa.into(), audience: AUDIENCE });
        let auth = AuthMethod::Kubernetes { mount_path: auth_mount.clone(), role: "app".into(), jwt };
        client(&bao.addr, &mount, KvVersion::V2, auth, calls)
    };
    let calls = Calls::default();
    let reader = store("reader", &calls);
    let secret = reader.get(&ObjectRef::latest("app/db")).await.expect("read with a service-account token");
    assert_eq!(json_of(&secret), json!({ "password": "k8s-auth-read-value" }));
    reader.get(&ObjectRef::latest("app/db")).await.expect("second read");
    assert_eq!(calls.count("login", "ok"), 1, "one login for both reads");
    reader.check().await.expect("check");

    let refused = Calls::default();
    let error = store("intruder", &refused).get(&ObjectRef::latest("app/db")).await.expect_err("another account");
    assert_eq!(error.reason(), "AuthenticationFailed", "{error:?}");
    assert!(error.to_string().contains("service account name not authorized"), "{error}");
    assert_eq!(refused.count("login", "forbidden"), 1);
    assert_eq!(refused.count("kv_read", "ok"), 0, "the refused account never read");
}
