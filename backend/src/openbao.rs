//! The OpenBao / HashiCorp Vault client for the KV secrets engine (version 2 and version 1),
//! with Kubernetes, token and AppRole authentication. Every HTTP attempt, logins included, goes
//! through the store's request budget, the retry policy and the observer, as with Key Vault.
//!
//! Objects: `ObjectRef.name` is the secret's path under the mount (`app/db`), `ObjectRef.version`
//! a KV v2 version to pin. The fetched value is the JSON of the secret's data object (keys
//! sorted), so a VaultSecret's `property` picks one field; its version is the KV v2 metadata
//! version (`"3"`). KV v1 keeps no versions: its secrets report the literal version
//! [`KV_V1_VERSION`] (`"kv-v1"`), which is also the only pin a KV v1 read accepts.
//!
//! Tokens: a login (Kubernetes, AppRole) gives a token with a lease. It is cached and used until
//! two thirds of its lease have passed, then the next call logs in again; concurrent callers
//! share one login. Logging in again rather than calling `renew-self` keeps one path for both
//! cases: a renewal cannot outlive the token's max TTL, so a re-login would be needed anyway,
//! and it picks up role changes. A lease of 0 (a token that does not expire) is kept until
//! refused. Replaced tokens are not revoked; they expire with their lease.
//!
//! Refusals: Vault answers 403 both when a policy denies a path and when the token is invalid,
//! expired or revoked. On a 403 the client asks `auth/token/lookup-self` (allowed to every valid
//! token by the `default` policy): if the token is valid the answer is `Forbidden` and no new
//! token is made (so many denied objects do not pile up tokens); if not, a login method logs in
//! once more and retries once (a second 403 is `Forbidden`), and a fixed token is
//! `Unauthenticated`.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use reqwest::{Method, header::HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;
use zeroize::{Zeroize as _, Zeroizing};

use crate::{
    Backend, Checked, Error, FetchedSecret, Listed, ObjectRef, Result, SecretBytes,
    budget::RequestBudget,
    http::{CallObserver, Caller, RetryPolicy},
    identity::{Endpoint, Identity, Principal},
    token::AssertionSource,
};

/// The version reported for (and the only pin accepted by) a secret of a KV v1 mount.
pub const KV_V1_VERSION: &str = "kv-v1";

/// The KV secrets engine version of a mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvVersion {
    V1,
    V2,
}

/// Where the secrets are: the server, an optional Vault namespace, the KV mount and its version.
#[derive(Clone, Debug)]
pub struct KvMount {
    /// `https://bao.example:8200`; `http://` only with `insecure_http`.
    pub server: String,
    /// Allows a plain `http://` server: tokens, logins and values then cross the network unencrypted.
    pub insecure_http: bool,
    /// Sent as `X-Vault-Namespace` on every request (logins included) when set.
    pub namespace: Option<String>,
    /// The mount path, such as `secret` or `team-a/kv`.
    pub mount: String,
    pub kv_version: KvVersion,
}

/// How the client gets its token.
pub enum AuthMethod {
    /// `POST /v1/auth/<mount_path>/login {"role","jwt"}` with a service-account token from `jwt`.
    Kubernetes { mount_path: String, role: String, jwt: Arc<dyn AssertionSource> },
    /// A fixed token, used as given.
    Token(Zeroizing<String>),
    /// `POST /v1/auth/<mount_path>/login {"role_id","secret_id"}`.
    AppRole { mount_path: String, role_id: String, secret_id: Zeroizing<String> },
}

impl AuthMethod {
    fn logs_in(&self) -> bool {
        !matches!(self, AuthMethod::Token(_))
    }
}

impl fmt::Debug for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthMethod::Kubernetes { mount_path, role, .. } => {
                f.debug_struct("Kubernetes").field("mount_path", mount_path).field("role", role).finish_non_exhaustive()
            }
            AuthMethod::Token(_) => f.write_str("Token(redacted)"),
            AuthMethod::AppRole { mount_path, role_id, .. } => f
                .debug_struct("AppRole")
                .field("mount_path", mount_path)
                .field("role_id", role_id)
                .finish_non_exhaustive(),
        }
    }
}

/// A Vault token and when to log in again (never for a fixed token or a lease of 0).
#[derive(Clone)]
struct VaultToken {
    secret: Arc<Zeroizing<String>>,
    renew_at: Option<Instant>,
}

impl VaultToken {
    fn header(&self) -> Result<HeaderValue> {
        let mut value = HeaderValue::from_str(self.secret.as_str()).map_err(|_| Error::InvalidConfig {
            message: "the Vault token holds characters an HTTP header cannot carry".into(),
        })?;
        value.set_sensitive(true);
        Ok(value)
    }
}

pub struct OpenBao {
    http: reqwest::Client,
    server: String,
    namespace: Option<String>,
    /// The mount path, percent-encoded segment by segment.
    mount: String,
    kv_version: KvVersion,
    auth: AuthMethod,
    identity: Identity,
    caller: Caller,
    token: Mutex<Option<VaultToken>>,
    /// Held while logging in, so concurrent callers share one login.
    login_gate: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct LoginAnswer {
    auth: Option<LoginAuth>,
}

#[derive(Deserialize)]
struct LoginAuth {
    client_token: Zeroizing<String>,
    #[serde(default)]
    lease_duration: u64,
}

impl OpenBao {
    /// `principal` is who `auth` authenticates as, so that cached reads are shared only by callers that
    /// authenticate the same way; the server, namespace and mount complete the identity.
    pub fn new(http: reqwest::Client, location: KvMount, auth: AuthMethod, principal: Principal) -> Result<Self> {
        let server = location.server.trim_end_matches('/').to_string();
        let https = server.starts_with("https://");
        if !(https || location.insecure_http && server.starts_with("http://")) {
            return Err(Error::InvalidConfig {
                message: format!(
                    "server {server:?} is not an https URL (a plain http server needs insecureHttp: true in the store)"
                ),
            });
        }
        let mount = encode_path(location.mount.trim_matches('/'), "mount")?;
        match &auth {
            AuthMethod::Kubernetes { mount_path, .. } | AuthMethod::AppRole { mount_path, .. } => {
                encode_path(mount_path.trim_matches('/'), "auth mount path")?;
            }
            AuthMethod::Token(_) => {}
        }
        let namespace = location.namespace.filter(|n| !n.trim_matches('/').is_empty());
        let kv_version = match location.kv_version {
            KvVersion::V1 => 1,
            KvVersion::V2 => 2,
        };
        let identity = Identity {
            endpoint: Endpoint::OpenBao {
                server: server.to_ascii_lowercase(),
                namespace: namespace.clone(),
                mount: mount.clone(),
                kv_version,
            },
            principal,
        };
        let token = match &auth {
            AuthMethod::Token(secret) => Some(VaultToken { secret: Arc::new(secret.clone()), renew_at: None }),
            _ => None,
        };
        Ok(Self {
            http,
            server,
            namespace,
            mount,
            kv_version: location.kv_version,
            auth,
            identity,
            caller: Caller::new(vault_errors),
            token: Mutex::new(token),
            login_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// Calls, logins included, pay from `budget` (the store's) and are reported to `observer`.
    pub fn metered(mut self, budget: Option<Arc<RequestBudget>>, observer: Option<CallObserver>) -> Self {
        self.caller.budget = budget;
        self.caller.observer = observer;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.caller.retry = retry;
        self
    }

    /// The names directly under the folder `prefix` (`""` for the mount's root; a trailing `/` is optional): secrets
    /// as names, subfolders with a trailing `/`. A folder that does not exist is empty.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let trimmed = prefix.trim_start_matches('/').trim_end_matches('/');
        let folder = if trimmed.is_empty() { String::new() } else { format!("{}/", encode_path(trimmed, "prefix")?) };
        let url = match self.kv_version {
            KvVersion::V2 => format!("{}/v1/{}/metadata/{folder}", self.server, self.mount),
            KvVersion::V1 => format!("{}/v1/{}/{folder}", self.server, self.mount),
        };
        let what = format!("the folder {trimmed:?}");
        let response = match self.authed("kv_list", &url, &[("list", "true".into())], &what).await {
            Err(Error::NotFound { .. }) => return Ok(Vec::new()),
            other => other?,
        };
        let answer: ListAnswer = response
            .json()
            .await
            .map_err(|_| Error::Protocol { message: format!("listing {what}: the answer holds no keys") })?;
        Ok(answer.data.keys)
    }

    async fn read(&self, object: &ObjectRef) -> Result<FetchedSecret> {
        let path = encode_path(object.name.trim_start_matches('/'), "secret path")?;
        let (url, query) = match self.kv_version {
            KvVersion::V2 => {
                let query = match object.version.as_deref() {
                    None => Vec::new(),
                    Some(pin) => match pin.parse::<u64>() {
                        Ok(v) if v > 0 => vec![("version", v.to_string())],
                        _ => {
                            return Err(Error::InvalidConfig {
                                message: format!("{object}: a KV v2 version is a positive integer"),
                            });
                        }
                    },
                };
                (format!("{}/v1/{}/data/{path}", self.server, self.mount), query)
            }
            KvVersion::V1 => {
                if object.version.as_deref().is_some_and(|v| v != KV_V1_VERSION) {
                    return Err(Error::InvalidConfig {
                        message: format!("{object}: KV v1 keeps no versions (only {KV_V1_VERSION:?} may be pinned)"),
                    });
                }
                (format!("{}/v1/{}/{path}", self.server, self.mount), Vec::new())
            }
        };
        let what = object.to_string();
        let response = self.authed("kv_read", &url, &query, &what).await?;
        let mut answer: Value = response
            .json()
            .await
            .map_err(|_| Error::Protocol { message: format!("{what}: the answer is not JSON") })?;
        let result = self.secret_of(&answer, &what);
        wipe(&mut answer);
        result
    }

    /// The data object and version of a read answer.
    fn secret_of(&self, answer: &Value, what: &str) -> Result<FetchedSecret> {
        let (data, version) = match self.kv_version {
            KvVersion::V2 => {
                let version = answer["data"]["metadata"]["version"]
                    .as_u64()
                    .ok_or_else(|| Error::Protocol { message: format!("{what}: the answer has no version") })?;
                (&answer["data"]["data"], version.to_string())
            }
            KvVersion::V1 => (&answer["data"], KV_V1_VERSION.to_string()),
        };
        match data {
            Value::Object(_) => Ok(FetchedSecret {
                value: SecretBytes::new(
                    serde_json::to_vec(data).map_err(|e| Error::Protocol { message: e.to_string() })?,
                ),
                version,
                content_type: Some("application/json".into()),
                attributes: Default::default(),
            }),
            // A deleted or destroyed KV v2 version answers without data.
            Value::Null => Err(Error::NotFound { object: what.to_string() }),
            _ => Err(Error::Protocol { message: format!("{what}: the secret's data is not an object") }),
        }
    }

    /// A GET with the token. A 403 is checked with lookup-self: a valid token means the policy denies (`Forbidden`);
    /// otherwise a login method logs in again once and the request is sent once more.
    async fn authed(
        &self,
        operation: &'static str,
        url: &str,
        query: &[(&'static str, String)],
        object: &str,
    ) -> Result<reqwest::Response> {
        let token = self.token().await?.0;
        match self.send(operation, Method::GET, url, query, None, object, Some(&token)).await {
            Err(Error::Forbidden { object, message }) => {
                if self.token_is_valid(&token).await? {
                    return Err(Error::Forbidden { object, message });
                }
                if !self.auth.logs_in() {
                    return Err(refused_token());
                }
                self.invalidate(&token);
                let token = self.token().await?.0;
                self.send(operation, Method::GET, url, query, None, &object, Some(&token)).await
            }
            other => other,
        }
    }

    /// Whether Vault still accepts `token` (lookup-self answers 200 rather than 403).
    async fn token_is_valid(&self, token: &VaultToken) -> Result<bool> {
        let url = format!("{}/v1/auth/token/lookup-self", self.server);
        match self.send("lookup_self", Method::GET, &url, &[], None, "token lookup-self", Some(token)).await {
            Ok(_) => Ok(true),
            Err(Error::Forbidden { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One request through the budget, retries and observer.
    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        url: &str,
        query: &[(&'static str, String)],
        body: Option<&[u8]>,
        object: &str,
        token: Option<&VaultToken>,
    ) -> Result<reqwest::Response> {
        let token = token.map(VaultToken::header).transpose()?;
        let request = || {
            let mut request = self.http.request(method.clone(), url).query(query);
            if let Some(namespace) = &self.namespace {
                request = request.header("X-Vault-Namespace", namespace);
            }
            if let Some(token) = &token {
                request = request.header("X-Vault-Token", token.clone());
            }
            if let Some(body) = body {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/json").body(body.to_vec());
            }
            std::future::ready(Ok(request))
        };
        // Vault refuses with 403, not 401; refusals are handled by the caller of `send`.
        self.caller.send(operation, object, request, |_| false).await
    }

    /// The cached token, or a new one from a login; `true` when this call logged in.
    async fn token(&self) -> Result<(VaultToken, bool)> {
        if let Some(token) = self.cached() {
            return Ok((token, false));
        }
        let _gate = self.login_gate.lock().await;
        // Another caller may have logged in while this one waited.
        if let Some(token) = self.cached() {
            return Ok((token, false));
        }
        let token = self.login().await?;
        *self.token.lock().expect("token lock") = Some(token.clone());
        Ok((token, true))
    }

    fn cached(&self) -> Option<VaultToken> {
        let cached = self.token.lock().expect("token lock");
        cached.as_ref().filter(|t| t.renew_at.is_none_or(|at| Instant::now() < at)).cloned()
    }

    /// Drops `used` if it is still the cached token (not one another caller already replaced).
    fn invalidate(&self, used: &VaultToken) {
        let mut cached = self.token.lock().expect("token lock");
        if cached.as_ref().is_some_and(|t| Arc::ptr_eq(&t.secret, &used.secret)) {
            cached.take();
        }
    }

    async fn login(&self) -> Result<VaultToken> {
        let (mount_path, mut body) = match &self.auth {
            AuthMethod::Kubernetes { mount_path, role, jwt } => {
                let jwt = jwt.assertion().await?;
                (mount_path, json!({ "role": role, "jwt": jwt.as_str() }))
            }
            AuthMethod::AppRole { mount_path, role_id, secret_id } => {
                (mount_path, json!({ "role_id": role_id, "secret_id": secret_id.as_str() }))
            }
            AuthMethod::Token(_) => return Err(refused_token()),
        };
        let bytes = serde_json::to_vec(&body).map(Zeroizing::new);
        wipe(&mut body);
        let bytes = bytes.map_err(|e| Error::Protocol { message: e.to_string() })?;
        let mount_path = mount_path.trim_matches('/');
        let url = format!("{}/v1/auth/{}/login", self.server, encode_path(mount_path, "auth mount path")?);
        let what = format!("login at auth/{mount_path}");
        let response =
            self.send("login", Method::POST, &url, &[], Some(&bytes), &what, None).await.map_err(|e| match e {
                // 400 (invalid role or secret ID), 403 (not authorized) and 404 (no such mount) all mean that this
                // identity cannot log in here.
                Error::Forbidden { message, .. } | Error::Unauthenticated { message } => {
                    Error::Unauthenticated { message: format!("{what}: {message}") }
                }
                Error::NotFound { .. } => Error::Unauthenticated { message: format!("{what}: no such auth mount") },
                Error::Protocol { message } => Error::Unauthenticated { message },
                other => other,
            })?;
        let answer: LoginAnswer = response
            .json()
            .await
            .map_err(|_| Error::Protocol { message: format!("{what}: the answer holds no token") })?;
        let auth =
            answer.auth.ok_or_else(|| Error::Protocol { message: format!("{what}: the answer holds no token") })?;
        // Log in again once two thirds of the lease have passed.
        let renew_at = (auth.lease_duration > 0)
            .then(|| Instant::now() + Duration::from_secs(auth.lease_duration).mul_f64(2.0 / 3.0));
        Ok(VaultToken { secret: Arc::new(auth.client_token), renew_at })
    }
}

#[derive(Deserialize)]
struct ListAnswer {
    data: ListData,
}

#[derive(Deserialize)]
struct ListData {
    #[serde(default)]
    keys: Vec<String>,
}

fn refused_token() -> Error {
    Error::Unauthenticated {
        message: "the token was refused and lookup-self is denied too: it is invalid, expired or revoked".into(),
    }
}

impl Backend for OpenBao {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn get<'a>(&'a self, object: &'a ObjectRef) -> BoxFuture<'a, Result<FetchedSecret>> {
        if object.kind != crate::ObjectKind::Secret {
            let message =
                format!("{object}: OpenBao and Vault hold secrets only (objectType {} is Key Vault's)", object.kind);
            return Box::pin(std::future::ready(Err(Error::InvalidConfig { message })));
        }
        Box::pin(self.read(object))
    }

    /// One call: a login when no token is cached (it proves the credentials), else a lookup-self of the cached
    /// token (if Vault refuses it, a login method logs in instead).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
        Box::pin(async move {
            let folder = prefix.trim_matches('/');
            let mut listed: Vec<Listed> = OpenBao::list(self, prefix)
                .await?
                .into_iter()
                .filter(|name| !name.ends_with('/'))
                .map(|name| Listed {
                    name: if folder.is_empty() { name } else { format!("{folder}/{name}") },
                    enabled: true,
                    not_before: None,
                    expires: None,
                    updated: None,
                    tags: Default::default(),
                })
                .collect();
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(listed)
        })
    }

    fn check(&self) -> BoxFuture<'_, Result<Checked>> {
        Box::pin(async move {
            let (token, logged_in) = self.token().await?;
            if logged_in || self.token_is_valid(&token).await? {
                return Ok(Checked::default());
            }
            if !self.auth.logs_in() {
                return Err(refused_token());
            }
            self.invalidate(&token);
            self.token().await.map(|_| Checked::default())
        })
    }
}

/// The `errors` of a Vault error body, joined.
fn vault_errors(body: &Value) -> Option<String> {
    let errors: Vec<&str> = body["errors"].as_array()?.iter().filter_map(Value::as_str).collect();
    let text = errors.join("; ");
    (!text.trim().is_empty()).then(|| text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// A slash-separated path with every segment percent-encoded (all but `A-Za-z0-9-._~`), so a name cannot add query
/// or fragment; empty, `.` and `..` segments are refused, so it cannot leave the mount either.
fn encode_path(path: &str, what: &str) -> Result<String> {
    let invalid = |why: &str| Error::InvalidConfig { message: format!("{what} {path:?} {why}") };
    if path.is_empty() {
        return Err(invalid("is empty"));
    }
    let mut encoded = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" => return Err(invalid("has an empty segment")),
            "." | ".." => return Err(invalid("has a . or .. segment")),
            _ => encoded.push(
                segment
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect::<String>(),
            ),
        }
    }
    Ok(encoded.join("/"))
}

/// Overwrites every string of a JSON value (the values of a secret) before it is dropped.
fn wipe(value: &mut Value) {
    match value {
        Value::String(text) => text.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(wipe),
        Value::Object(fields) => fields.values_mut().for_each(wipe),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A request the fake server saw.
    #[derive(Clone, Debug)]
    struct Seen {
        method: String,
        /// Path and query.
        target: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }
    }

    type Answer = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

    /// A one-request-per-connection HTTP server that answers with `answer` and records every request.
    async fn fake(answer: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, answer): (_, Arc<Answer>) = (seen.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
                    let mut lines = head.lines();
                    let mut request_line = lines.next().unwrap_or_default().split(' ');
                    let (method, target) = (request_line.next().unwrap_or_default(), request_line.next());
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                        .collect();
                    let length = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    while buffer.len() < head_end + length {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            break;
                        }
                        buffer.extend_from_slice(&chunk[..n]);
                    }
                    let body = String::from_utf8_lossy(&buffer[head_end..]).to_string();
                    let seen = Seen {
                        method: method.to_string(),
                        target: target.unwrap_or_default().to_string(),
                        headers,
                        body,
                    };
                    let (status, body) = answer(&seen);
                    log.lock().expect("log").push(seen);
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(reply.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (url, seen)
    }

    fn client(url: &str, kv_version: KvVersion, auth: AuthMethod) -> OpenBao {
        let location = KvMount {
            server: url.into(),
            insecure_http: true,
            namespace: Some("team-a".into()),
            mount: "secret".into(),
            kv_version,
        };
        let fast = RetryPolicy { base_backoff: Duration::from_millis(5), ..RetryPolicy::default() };
        OpenBao::new(
            crate::http::http_client(None).expect("http"),
            location,
            auth,
            Principal::OpenBaoToken { fingerprint: "test".into() },
        )
        .expect("client")
        .with_retry(fast)
    }

    fn approle() -> AuthMethod {
        AuthMethod::AppRole {
            mount_path: "approle".into(),
            role_id: "role-1".into(),
            secret_id: Zeroizing::new("secret-id-1".into()),
        }
    }

    fn login_answer(token: &str, lease: u64) -> (u16, String) {
        (200, json!({ "auth": { "client_token": token, "lease_duration": lease, "renewable": true } }).to_string())
    }

    #[tokio::test]
    async fn list_asks_the_metadata_folder_with_the_token_and_namespace() {
        let (url, seen) = fake(|r| match r.target.as_str() {
            "/v1/secret/metadata/app/?list=true" => (200, json!({ "data": { "keys": ["db", "sub/"] } }).to_string()),
            "/v1/secret/metadata/?list=true" => (200, json!({ "data": { "keys": ["app/"] } }).to_string()),
            "/v1/secret/app/?list=true" => (200, json!({ "data": { "keys": ["v1-cfg"] } }).to_string()),
            _ => (404, json!({ "errors": [] }).to_string()),
        })
        .await;
        let bao = client(&url, KvVersion::V2, AuthMethod::Token(Zeroizing::new("t-1".into())));
        assert_eq!(bao.list("app").await.expect("list"), ["db", "sub/"]);
        assert_eq!(bao.list("/app/").await.expect("list with slashes"), ["db", "sub/"]);
        assert_eq!(bao.list("").await.expect("root"), ["app/"]);
        assert_eq!(bao.list("nothing/here").await.expect("a missing folder"), Vec::<String>::new());
        assert!(matches!(bao.list("a/../b").await, Err(Error::InvalidConfig { .. })));
        let v1 = client(&url, KvVersion::V1, AuthMethod::Token(Zeroizing::new("t-1".into())));
        assert_eq!(v1.list("app/").await.expect("kv v1 list"), ["v1-cfg"]);

        let seen = seen.lock().expect("log").clone();
        assert_eq!(seen.len(), 5, "the refused prefix never reached the server: {seen:?}");
        for request in &seen {
            assert_eq!(request.method, "GET");
            assert_eq!(request.header("x-vault-token"), Some("t-1"));
            assert_eq!(request.header("x-vault-namespace"), Some("team-a"));
        }
        assert_eq!(seen[3].target, "/v1/secret/metadata/nothing/here/?list=true");
    }

    #[tokio::test]
    async fn reads_return_the_data_object_and_its_version() {
        let (url, seen) = fake(|r| match r.target.as_str() {
            "/v1/secret/data/app/db" => (
                200,
                json!({ "data": { "data": { "user": "app", "password": "p2" }, "metadata": { "version": 2 } } })
                    .to_string(),
            ),
            "/v1/secret/data/app/db?version=1" => {
                (200, json!({ "data": { "data": { "password": "p1" }, "metadata": { "version": 1 } } }).to_string())
            }
            "/v1/secret/data/a%20b/c%3Fd" => {
                (200, json!({ "data": { "data": {}, "metadata": { "version": 7 } } }).to_string())
            }
            "/v1/secret/app/cfg" => (200, json!({ "data": { "a": "1" }, "lease_duration": 2764800 }).to_string()),
            _ => (404, json!({ "errors": [] }).to_string()),
        })
        .await;
        let token = || AuthMethod::Token(Zeroizing::new("t".into()));
        let bao = client(&url, KvVersion::V2, token());
        let latest = bao.get(&ObjectRef::latest("app/db")).await.expect("latest");
        assert_eq!(latest.value.expose(), br#"{"password":"p2","user":"app"}"#);
        assert_eq!(latest.version, "2");
        let pinned = ObjectRef::secret("app/db", Some("1".into()));
        assert_eq!(bao.get(&pinned).await.expect("pinned").value.expose(), br#"{"password":"p1"}"#);
        assert_eq!(bao.get(&ObjectRef::latest("a b/c?d")).await.expect("encoded").version, "7");
        let bad_pin = ObjectRef::secret("app/db", Some("latest".into()));
        assert!(matches!(bao.get(&bad_pin).await, Err(Error::InvalidConfig { .. })));
        for escape in ["../sys/mounts", "app/./db", "app//db", "app/db/", ""] {
            let error = bao.get(&ObjectRef::latest(escape)).await.expect_err(escape);
            assert!(matches!(error, Error::InvalidConfig { .. }), "{escape}: {error:?}");
        }

        let v1 = client(&url, KvVersion::V1, token());
        let cfg = v1.get(&ObjectRef::latest("app/cfg")).await.expect("kv v1");
        assert_eq!((cfg.value.expose(), cfg.version.as_str()), (&br#"{"a":"1"}"#[..], KV_V1_VERSION));
        let pinned_v1 = ObjectRef::secret("app/cfg", Some(KV_V1_VERSION.into()));
        v1.get(&pinned_v1).await.expect("the kv-v1 pin reads the secret");
        let other_pin = ObjectRef::secret("app/cfg", Some("2".into()));
        assert!(matches!(v1.get(&other_pin).await, Err(Error::InvalidConfig { .. })));
        assert_eq!(seen.lock().expect("log").len(), 5, "refused names and pins made no call");
    }

    #[tokio::test]
    async fn a_login_token_is_shared_and_replaced_after_two_thirds_of_its_lease() {
        let logins = Arc::new(AtomicUsize::new(0));
        let counter = logins.clone();
        let (url, seen) = fake(move |r| match r.target.as_str() {
            "/v1/auth/approle/login" => {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                login_answer(&format!("token-{n}"), 1)
            }
            _ => (200, json!({ "data": { "data": { "k": "v" }, "metadata": { "version": 1 } } }).to_string()),
        })
        .await;
        let bao = Arc::new(client(&url, KvVersion::V2, approle()));
        let reads = (0..8).map(|_| {
            let bao = bao.clone();
            tokio::spawn(async move { bao.get(&ObjectRef::latest("k")).await })
        });
        for read in futures::future::join_all(reads).await {
            read.expect("task").expect("read");
        }
        assert_eq!(logins.load(Ordering::SeqCst), 1, "eight concurrent reads, one login");
        tokio::time::sleep(Duration::from_millis(750)).await; // past 2/3 of the 1 s lease
        bao.get(&ObjectRef::latest("k")).await.expect("read");
        assert_eq!(logins.load(Ordering::SeqCst), 2, "logged in again after two thirds of the lease");

        let seen = seen.lock().expect("log").clone();
        let login = seen.iter().find(|r| r.target == "/v1/auth/approle/login").expect("a login");
        assert_eq!(login.method, "POST");
        assert_eq!(login.header("x-vault-namespace"), Some("team-a"), "logins carry the namespace");
        assert_eq!(login.header("x-vault-token"), None);
        let body: Value = serde_json::from_str(&login.body).expect("JSON body");
        assert_eq!(body, json!({ "role_id": "role-1", "secret_id": "secret-id-1" }));
        assert_eq!(seen.last().expect("a read").header("x-vault-token"), Some("token-2"));
    }

    #[tokio::test]
    async fn a_403_logs_in_again_only_when_the_token_itself_was_refused() {
        // token-1 is revoked: reads and lookup-self with it are refused. token-2 may read `allowed` only.
        let logins = Arc::new(AtomicUsize::new(0));
        let counter = logins.clone();
        let (url, _seen) = fake(move |r| {
            let token = r.header("x-vault-token").unwrap_or_default();
            let denied = (403, json!({ "errors": ["permission denied"] }).to_string());
            match r.target.as_str() {
                "/v1/auth/approle/login" => {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    login_answer(&format!("token-{n}"), 3600)
                }
                _ if token == "token-1" => denied,
                "/v1/auth/token/lookup-self" => (200, json!({ "data": { "ttl": 3000 } }).to_string()),
                "/v1/secret/data/allowed" => {
                    (200, json!({ "data": { "data": { "k": "v" }, "metadata": { "version": 4 } } }).to_string())
                }
                _ => denied,
            }
        })
        .await;
        let bao = client(&url, KvVersion::V2, approle());
        let read = bao.get(&ObjectRef::latest("allowed")).await.expect("read after logging in again");
        assert_eq!(read.version, "4");
        assert_eq!(logins.load(Ordering::SeqCst), 2, "the revoked token was replaced once");

        let error = bao.get(&ObjectRef::latest("denied")).await.expect_err("denied by policy");
        assert_eq!(error.reason(), "Forbidden", "{error:?}");
        assert!(error.to_string().contains("permission denied"), "{error}");
        assert_eq!(logins.load(Ordering::SeqCst), 2, "a valid token that a policy denies is not replaced");
        bao.check().await.expect("check: lookup-self of the cached token");

        // A fixed token that Vault refuses is an authentication failure, not a permission one.
        let fixed = client(&url, KvVersion::V2, AuthMethod::Token(Zeroizing::new("token-1".into())));
        let error = fixed.get(&ObjectRef::latest("allowed")).await.expect_err("revoked token");
        assert_eq!(error.reason(), "AuthenticationFailed", "{error:?}");
        assert_eq!(fixed.check().await.expect_err("check").reason(), "AuthenticationFailed");
    }

    #[tokio::test]
    async fn refused_logins_and_a_sealed_server() {
        let (url, seen) = fake(|r| match r.target.as_str() {
            "/v1/auth/approle/login" => (400, json!({ "errors": ["invalid role or secret ID"] }).to_string()),
            _ => (503, json!({ "errors": ["Vault is sealed"] }).to_string()),
        })
        .await;
        let error = client(&url, KvVersion::V2, approle()).check().await.expect_err("bad secret id");
        assert_eq!(error.reason(), "AuthenticationFailed");
        assert!(error.to_string().contains("invalid role or secret ID"), "{error}");
        assert!(!error.to_string().contains("secret-id-1"), "credentials never reach messages");

        let sealed = client(&url, KvVersion::V2, AuthMethod::Token(Zeroizing::new("t".into())));
        let error = sealed.get(&ObjectRef::latest("k")).await.expect_err("sealed");
        assert_eq!(error.reason(), "BackendUnavailable");
        assert!(error.to_string().contains("Vault is sealed"), "{error}");
        let reads = seen.lock().expect("log").iter().filter(|r| r.target == "/v1/secret/data/k").count();
        assert_eq!(reads, 4, "a 503 is retried up to max_attempts");
    }

    #[test]
    fn identities_name_server_namespace_mount_and_principal() {
        let location = |server: &str, namespace: Option<&str>, mount: &str, insecure_http: bool| KvMount {
            server: server.into(),
            insecure_http,
            namespace: namespace.map(str::to_string),
            mount: mount.into(),
            kv_version: KvVersion::V2,
        };
        let token = |fingerprint: &str| Principal::OpenBaoToken { fingerprint: fingerprint.into() };
        let build = |location: KvMount, principal: Principal| {
            let auth = AuthMethod::Token(Zeroizing::new("t".into()));
            OpenBao::new(crate::http::http_client(None).expect("http"), location, auth, principal)
        };
        let make = |namespace: Option<&str>, mount: &str, principal: &str| {
            build(location("https://Bao.example:8200/", namespace, mount, false), token(principal))
                .expect("client")
                .identity
                .clone()
        };
        let base = make(None, "secret", "a");
        assert_eq!(
            base.endpoint,
            Endpoint::OpenBao {
                server: "https://bao.example:8200".into(),
                namespace: None,
                mount: "secret".into(),
                kv_version: 2
            }
        );
        assert_ne!(base, make(Some("team-a"), "secret", "a"));
        assert_ne!(base, make(None, "other", "a"));
        assert_ne!(base, make(None, "secret", "b"));
        assert!(build(location("bao:8200", None, "secret", false), token("p")).is_err(), "no scheme");
        let plain = build(location("http://bao:8200", None, "secret", false), token("p"));
        assert!(plain.is_err_and(|e| e.to_string().contains("insecureHttp")), "http only when allowed");
        assert!(build(location("http://bao:8200", None, "secret", true), token("p")).is_ok());
        assert_eq!(format!("{:?}", AuthMethod::Token(Zeroizing::new("hunter2".into()))), "Token(redacted)");
    }
}
