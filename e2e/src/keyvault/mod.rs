//! An in-process HTTPS server speaking the Azure Key Vault data-plane REST API (secrets, keys and
//! certificates), because no Key Vault emulator is available to these tests; it also counts calls
//! and injects faults. It logs nothing, so secret values never leave it.
//!
//! What it follows is Azure's REST specification (`specification/keyvault/data-plane` of
//! azure-rest-api-specs) and what Microsoft's SDKs expect of it (see `e2e/tests/azure_sdk.rs`): the
//! 401 bearer challenge naming the tenant's authority and the vault's resource, the api-versions
//! those SDKs send by default, soft delete with recovery, `nextLink` paging, and Azure's error shape.

mod certificates;
mod client;
mod keys;
mod secrets;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::{Value, json};

pub use client::{KeyVaultClient, KeyVaultError};
pub use secrets::{SecretBundle, SecretItem};

use crate::tls::{TestCa, loopback_listener, serve_https};

/// The api-versions Azure Key Vault answers (and so this server): Microsoft's current SDKs send
/// `2025-07-01` (keys) and `2026-04-01` (secrets, certificates) by default.
pub const API_VERSIONS: [&str; 10] =
    ["2016-10-01", "7.0", "7.1", "7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01", "2026-04-01"];
/// The public cloud's Key Vault resource, for a challenge that names it.
pub const PUBLIC_RESOURCE: &str = "https://vault.azure.net";
const CLIENT_API_VERSION: &str = "7.5";
const CLIENT_TOKEN: &str = "test-token";
const PAGE_SIZE: usize = 25;
const RECOVERABLE_DAYS: i64 = 90;
const RECOVERY_LEVEL: &str = "Recoverable+Purgeable";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const DEFAULT_TENANT: &str = "00000000-0000-0000-0000-000000000000";

/// A data-plane operation, as counted by [`KeyVaultServer::calls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    GetSecret,
    ListSecrets,
    /// Listing the versions of a secret.
    ListVersions,
    SetSecret,
    UpdateSecret,
    DeleteSecret,
    ListDeletedSecrets,
    GetDeletedSecret,
    PurgeDeletedSecret,
    RecoverDeletedSecret,
    CreateKey,
    GetKey,
    ListKeys,
    ListKeyVersions,
    CreateCertificate,
    ImportCertificate,
    GetCertificate,
    ListCertificates,
    ListCertificateVersions,
    GetCertificatePolicy,
    GetCertificateOperation,
}

/// The attributes every object version carries (`SecretAttributes`, `KeyAttributes`,
/// `CertificateAttributes` in the specification); times are Unix seconds.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct Attributes {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub recovery_level: String,
    pub recoverable_days: i64,
    /// Keys only: whether the private key can be exported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exportable: Option<bool>,
}

/// The attributes of a secret version.
pub type SecretAttributes = Attributes;

/// The part of a request's `attributes` this server understands.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(default)]
struct AttributeChange {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

impl Attributes {
    /// Fresh attributes for a version created now.
    fn new(change: AttributeChange) -> Self {
        let time = now();
        Attributes {
            enabled: change.enabled.unwrap_or(true),
            nbf: change.nbf,
            exp: change.exp,
            created: time,
            updated: time,
            recovery_level: RECOVERY_LEVEL.to_string(),
            recoverable_days: RECOVERABLE_DAYS,
            exportable: None,
        }
    }

    fn apply(&mut self, change: AttributeChange) {
        self.enabled = change.enabled.unwrap_or(self.enabled);
        self.nbf = change.nbf.or(self.nbf);
        self.exp = change.exp.or(self.exp);
        self.updated = now();
    }
}

// === versioned objects, soft delete ===

/// What a version of any object kind has.
trait Versioned {
    fn version(&self) -> &str;
}

/// One named object and its versions, oldest first: the last one is the current version,
/// whether enabled or not.
struct Named<V> {
    name: String,
    versions: Vec<V>,
}

impl<V: Versioned> Named<V> {
    fn current(&self) -> Option<&V> {
        self.versions.last()
    }

    /// The versions sorted by version id, as Azure lists them.
    fn by_version_id(&self) -> Vec<&V> {
        let mut versions: Vec<&V> = self.versions.iter().collect();
        versions.sort_by(|a, b| a.version().cmp(b.version()));
        versions
    }
}

struct Deleted<V> {
    object: Named<V>,
    deleted_date: i64,
}

impl<V> Deleted<V> {
    /// `recoveryId`, `deletedDate` and `scheduledPurgeDate`, added to a body describing the object.
    fn describe(&self, url: &str, collection: &str, mut body: Value) -> Value {
        body["recoveryId"] = json!(format!("{url}/{collection}/{}", self.object.name));
        body["deletedDate"] = json!(self.deleted_date);
        body["scheduledPurgeDate"] = json!(self.deleted_date + RECOVERABLE_DAYS * 86_400);
        body
    }
}

/// The objects of one kind: live ones and soft-deleted ones, keyed by lowercase name
/// (Key Vault names are case-insensitive).
struct Store<V> {
    kind: Kind,
    live: BTreeMap<String, Named<V>>,
    deleted: BTreeMap<String, Deleted<V>>,
}

impl<V: Versioned> Store<V> {
    fn new(kind: Kind) -> Self {
        Self { kind, live: BTreeMap::new(), deleted: BTreeMap::new() }
    }

    fn named(&self, name: &str) -> Result<&Named<V>, ApiError> {
        self.live.get(&name.to_ascii_lowercase()).ok_or_else(|| self.kind.not_found(name))
    }

    /// A version (the current one when `version` is `None`).
    fn find(&self, name: &str, version: Option<&str>) -> Result<(&Named<V>, &V), ApiError> {
        let named = self.named(name)?;
        let found = match version {
            None => named.current(),
            Some(version) => named.versions.iter().find(|v| v.version().eq_ignore_ascii_case(version)),
        };
        let missing = || self.kind.not_found(&format!("{name}/{}", version.unwrap_or_default()));
        Ok((named, found.ok_or_else(missing)?))
    }

    fn find_mut(&mut self, name: &str, version: Option<&str>) -> Result<(&str, &mut V), ApiError> {
        let kind = self.kind;
        let named = self.live.get_mut(&name.to_ascii_lowercase()).ok_or_else(|| kind.not_found(name))?;
        let found = match version {
            None => named.versions.last_mut(),
            Some(version) => named.versions.iter_mut().find(|v| v.version().eq_ignore_ascii_case(version)),
        };
        let found = found.ok_or_else(|| kind.not_found(&format!("{name}/{}", version.unwrap_or_default())))?;
        Ok((&named.name, found))
    }

    /// Refuses a name that is deleted but recoverable, as Azure does on create.
    fn check_not_deleted(&self, name: &str) -> Result<(), ApiError> {
        if !self.deleted.contains_key(&name.to_ascii_lowercase()) {
            return Ok(());
        }
        let noun = self.kind.noun();
        let message = format!(
            "{} {name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the {noun} can only be recovered or purged.",
            capitalized(noun)
        );
        Err(ApiError {
            inner_code: Some("ObjectIsDeletedButRecoverable"),
            ..ApiError::new(StatusCode::CONFLICT, "Conflict", message)
        })
    }

    /// Adds a version; returns the object.
    fn push(&mut self, name: &str, version: V) -> &Named<V> {
        let named = self.live.entry(name.to_ascii_lowercase());
        let named = named.or_insert_with(|| Named { name: name.to_string(), versions: Vec::new() });
        named.versions.push(version);
        named
    }

    fn delete(&mut self, name: &str) -> Result<&Deleted<V>, ApiError> {
        let key = name.to_ascii_lowercase();
        let object = self.live.remove(&key).ok_or_else(|| self.kind.not_found(name))?;
        self.deleted.insert(key.clone(), Deleted { object, deleted_date: now() });
        Ok(&self.deleted[&key])
    }

    fn deleted(&self, name: &str) -> Result<&Deleted<V>, ApiError> {
        self.deleted.get(&name.to_ascii_lowercase()).ok_or_else(|| self.kind.deleted_not_found(name))
    }

    fn recover(&mut self, name: &str) -> Result<&Named<V>, ApiError> {
        let key = name.to_ascii_lowercase();
        let deleted = self.deleted.remove(&key).ok_or_else(|| self.kind.deleted_not_found(name))?;
        self.live.insert(key.clone(), deleted.object);
        Ok(&self.live[&key])
    }

    fn purge(&mut self, name: &str) -> Result<(), ApiError> {
        self.deleted.remove(&name.to_ascii_lowercase()).map(drop).ok_or_else(|| self.kind.deleted_not_found(name))
    }
}

/// The three kinds of vault object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Secret,
    Key,
    Certificate,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Secret => "secret",
            Kind::Key => "key",
            Kind::Certificate => "certificate",
        }
    }

    fn not_found(self, name_or_id: &str) -> ApiError {
        let code = match self {
            Kind::Secret => "SecretNotFound",
            Kind::Key => "KeyNotFound",
            Kind::Certificate => "CertificateNotFound",
        };
        let message = format!(
            "A {} with (name/id) {name_or_id} was not found in this key vault. If you recently deleted this {0} you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
            self.noun()
        );
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    fn deleted_not_found(self, name: &str) -> ApiError {
        let mut error = self.not_found(name);
        error.message = format!("Deleted {} not found: {name}", capitalized(self.noun()));
        error
    }
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|c| c.to_ascii_uppercase().to_string() + chars.as_str()).unwrap_or_default()
}

// === the server ===

struct Fault {
    status: StatusCode,
    retry_after_secs: Option<u64>,
}

struct Vault {
    secrets: Store<secrets::Secret>,
    keys: Store<keys::Key>,
    certificates: Store<certificates::Certificate>,
    /// Certificate name (lowercase) -> its last creation operation.
    operations: HashMap<String, certificates::Operation>,
    forbidden: HashSet<String>,
    /// Refuses listing secrets, as an access policy with `get` but not `list` does.
    listing_forbidden: bool,
    faults: VecDeque<Fault>,
    required_token: Option<String>,
    calls: HashMap<Op, u64>,
    /// `<authority host>/<tenant>`, named by the challenge.
    authorization: String,
}

impl Default for Vault {
    fn default() -> Self {
        Vault {
            secrets: Store::new(Kind::Secret),
            keys: Store::new(Kind::Key),
            certificates: Store::new(Kind::Certificate),
            operations: HashMap::new(),
            forbidden: HashSet::new(),
            listing_forbidden: false,
            faults: VecDeque::new(),
            required_token: None,
            calls: HashMap::new(),
            authorization: format!("{DEFAULT_AUTHORITY}/{DEFAULT_TENANT}"),
        }
    }
}

struct Shared {
    url: String,
    /// The origin a challenge names as the resource.
    resource: String,
    vault: Mutex<Vault>,
    /// While true, every request waits before it is answered (see [`KeyVaultServer::hold_requests`]).
    held: tokio::sync::watch::Sender<bool>,
    /// Requests that arrived while held.
    held_arrivals: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vault> {
        // A test that panicked while holding the lock must not cascade into every later request.
        self.vault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a [`KeyVaultServer`] presents itself, built with [`KeyVaultServer::builder`].
pub struct KeyVaultBuilder {
    vault_name: Option<String>,
    authority: String,
    tenant: String,
    resource: Option<String>,
}

impl KeyVaultBuilder {
    /// Serves the vault as `https://<name>.localhost:PORT` (a certificate for that name too), so its
    /// host lies under the challenge resource's host (`localhost:PORT`) as `<name>.vault.azure.net`
    /// lies under `vault.azure.net`. Clients must resolve the name to 127.0.0.1 themselves.
    pub fn vault_name(mut self, name: &str) -> Self {
        self.vault_name = Some(name.to_ascii_lowercase());
        self
    }

    /// The tenant the 401 challenge names, under `authority_host` (default
    /// `https://login.microsoftonline.com` and the zero tenant).
    pub fn authority(mut self, authority_host: &str, tenant: &str) -> Self {
        self.authority = authority_host.trim_end_matches('/').to_string();
        self.tenant = tenant.to_string();
        self
    }

    /// The resource the 401 challenge names, such as [`PUBLIC_RESOURCE`]; by default the server's own
    /// origin `https://localhost:PORT`.
    pub fn challenge_resource(mut self, resource: &str) -> Self {
        self.resource = Some(resource.trim_end_matches('/').to_string());
        self
    }

    pub async fn start(self) -> anyhow::Result<KeyVaultServer> {
        let (listener, addr) = loopback_listener().await?;
        let host = match &self.vault_name {
            Some(name) => format!("{name}.localhost"),
            None => "localhost".to_string(),
        };
        let config = TestCa::shared().loopback_server_config_for(&[host.as_str()])?;
        let resource = self.resource.unwrap_or_else(|| format!("https://localhost:{}", addr.port()));
        let vault = Vault { authorization: format!("{}/{}", self.authority, self.tenant), ..Vault::default() };
        let shared = Arc::new(Shared {
            url: format!("https://{host}:{}", addr.port()),
            resource: resource.clone(),
            vault: Mutex::new(vault),
            held: tokio::sync::watch::Sender::new(false),
            held_arrivals: Default::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(serve_https(listener, config, app));
        Ok(KeyVaultServer { shared, addr, host, resource, task })
    }
}

/// The Key Vault API server; its task is aborted on drop.
pub struct KeyVaultServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    host: String,
    resource: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyVaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyVaultServer {
    /// A vault at `https://localhost:PORT` whose challenge names the zero tenant and its own origin.
    pub async fn start() -> anyhow::Result<Self> {
        Self::builder().start().await
    }

    pub fn builder() -> KeyVaultBuilder {
        KeyVaultBuilder {
            vault_name: None,
            authority: DEFAULT_AUTHORITY.to_string(),
            tenant: DEFAULT_TENANT.to_string(),
            resource: None,
        }
    }

    /// The vault URL, without a trailing slash.
    pub fn url(&self) -> String {
        self.shared.url.clone()
    }

    /// The host name clients must resolve to [`KeyVaultServer::addr`].
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The resource the 401 challenge names (tokens are asked for `<resource>/.default`).
    pub fn challenge_resource(&self) -> &str {
        &self.resource
    }

    /// The 401 challenge's `WWW-Authenticate` header.
    pub fn challenge(&self) -> String {
        self.shared.lock().challenge(&self.resource)
    }

    /// Names `<authority_host>/<tenant>` in the challenge from now on (a token service started after
    /// the vault, because it must know the vault's resource).
    pub fn set_authority(&self, authority_host: &str, tenant: &str) {
        self.shared.lock().authorization = format!("{}/{tenant}", authority_host.trim_end_matches('/'));
    }

    pub fn ca_pem(&self) -> &str {
        TestCa::shared().ca_pem()
    }

    /// Authenticated, routed requests of `op`, including those answered with injected faults.
    pub fn calls(&self, op: Op) -> u64 {
        self.shared.lock().calls.get(&op).copied().unwrap_or(0)
    }

    pub fn total_calls(&self) -> u64 {
        self.shared.lock().calls.values().sum()
    }

    pub fn reset_counts(&self) {
        self.shared.lock().calls.clear();
    }

    /// Answers the next `n` authenticated requests with `status`, after any faults still queued.
    pub fn fail_next(&self, n: usize, status: u16, retry_after_secs: Option<u64>) {
        let status = StatusCode::from_u16(status).expect("fail_next needs a valid HTTP status");
        let mut vault = self.shared.lock();
        vault.faults.extend((0..n).map(|_| Fault { status, retry_after_secs }));
    }

    /// Makes every request wait, unanswered, until [`KeyVaultServer::release_requests`]: a test can then act
    /// between a client's call and its answer without depending on how long a retry or a backoff takes.
    pub fn hold_requests(&self) {
        self.shared.held.send_replace(true);
    }

    pub fn release_requests(&self) {
        self.shared.held.send_replace(false);
    }

    /// Requests that arrived while [`KeyVaultServer::hold_requests`] was in force (authenticated or not).
    pub fn held_requests(&self) -> u64 {
        self.shared.held_arrivals.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Drops the faults still queued by [`KeyVaultServer::fail_next`] (a fault that lasted "for a while" ends).
    pub fn clear_faults(&self) {
        self.shared.lock().faults.clear();
    }

    /// Denies reads of `secret_name` as Azure RBAC does when no role assignment covers it.
    pub fn forbid(&self, secret_name: &str) {
        self.shared.lock().forbidden.insert(secret_name.to_ascii_lowercase());
    }

    /// Refuses (or allows again) listing secrets, as Azure does for an identity whose access policy grants `get` but
    /// not `list`.
    pub fn forbid_listing(&self, forbidden: bool) {
        self.shared.lock().listing_forbidden = forbidden;
    }

    /// `None` accepts any non-empty bearer token; `Some` accepts only that one.
    pub fn require_bearer(&self, token: Option<String>) {
        self.shared.lock().required_token = token;
    }

    /// Every value of every secret version stored so far (deleted ones too), for scanning logs and
    /// messages for leaks.
    pub fn all_values(&self) -> Vec<String> {
        let vault = self.shared.lock();
        let live = vault.secrets.live.values();
        let deleted = vault.secrets.deleted.values().map(|d| &d.object);
        live.chain(deleted).flat_map(|s| s.versions.iter().map(|v| v.value.to_string())).collect()
    }

    /// Adds a version without going through HTTP (not counted); returns its version id.
    pub fn set_secret(&self, name: &str, value: &str) -> String {
        self.set_secret_with(name, value, None, BTreeMap::new())
    }

    pub fn set_secret_with(
        &self,
        name: &str,
        value: &str,
        content_type: Option<&str>,
        tags: BTreeMap<String, String>,
    ) -> String {
        assert!(valid_name(name), "{name:?} is not a valid Key Vault secret name");
        let secret = secrets::Secret::new(value, content_type, (!tags.is_empty()).then_some(tags));
        let version = secret.version.clone();
        self.shared.lock().secrets.push(name, secret);
        version
    }

    pub fn disable_version(&self, name: &str, version: &str) {
        let mut vault = self.shared.lock();
        let (_, found) = vault
            .secrets
            .find_mut(name, Some(version))
            .unwrap_or_else(|_| panic!("secret {name} has no version {version}"));
        found.attributes.apply(AttributeChange { enabled: Some(false), ..Default::default() });
    }

    /// Disables the current version of certificate `name` with its key and secret, as updating the certificate's
    /// attributes in Azure does; the secret then answers 403 `SecretDisabled`, the key 403 `KeyDisabled`.
    pub fn disable_certificate(&self, name: &str) {
        let mut vault = self.shared.lock();
        let off = AttributeChange { enabled: Some(false), ..Default::default() };
        let (_, certificate) =
            vault.certificates.find_mut(name, None).unwrap_or_else(|_| panic!("no certificate {name}"));
        certificate.attributes_mut().apply(off);
        if let Ok((_, key)) = vault.keys.find_mut(name, None) {
            key.attributes_mut().apply(off);
        }
        if let Ok((_, secret)) = vault.secrets.find_mut(name, None) {
            secret.attributes.apply(off);
        }
    }

    /// A REST client for test setup, trusting only the test CA and resolving the vault's host.
    pub fn client(&self) -> anyhow::Result<KeyVaultClient> {
        KeyVaultClient::new(self, CLIENT_TOKEN)
    }
}

// === errors ===

/// An Azure error answer: `{"error":{"code","message","innererror"?}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    inner_code: Option<&'static str>,
    challenge: Option<HeaderValue>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), inner_code: None, challenge: None, retry_after_secs: None }
    }

    fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    fn forbidden(message: impl Into<String>, inner_code: &'static str) -> Self {
        Self { inner_code: Some(inner_code), ..Self::new(StatusCode::FORBIDDEN, "Forbidden", message) }
    }

    /// What Azure answers for a path or method it has no operation for.
    fn unknown_operation(method: &Method, path: &str) -> Self {
        let message = format!("The requested resource does not support http method '{method}' on '/{path}'.");
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(inner) = self.inner_code {
            error["innererror"] = json!({"code": inner});
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
        }
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl Fault {
    fn error(&self) -> ApiError {
        let code = match self.status.as_u16() {
            400 => "BadParameter",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "NotFound",
            409 => "Conflict",
            429 => "Throttled",
            502 => "BadGateway",
            503 => "ServiceUnavailable",
            504 => "GatewayTimeout",
            _ => "InternalServerError",
        };
        let message = format!("Injected fault: {}", self.status.canonical_reason().unwrap_or("error"));
        ApiError { retry_after_secs: self.retry_after_secs, ..ApiError::new(self.status, code, message) }
    }
}

type Reply = Result<Response, ApiError>;

// === routing ===

/// One request, as the operation handlers see it.
struct Request<'a> {
    url: &'a str,
    query: HashMap<String, String>,
    body: &'a [u8],
}

impl Request<'_> {
    fn json<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.body.is_empty() {
            return Ok(T::default());
        }
        serde_json::from_slice(self.body)
            .map_err(|e| ApiError::bad_parameter(format!("The request body is not valid: {e}")))
    }

    /// One page of `items` (see [`page`]).
    fn page<T: Serialize>(&self, path: &str, items: Vec<T>) -> Reply {
        page(self.url, path, &self.query, items)
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut held = shared.held.subscribe();
    if *held.borrow_and_update() {
        shared.held_arrivals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // The sender lives as long as `shared`, so this ends only on release.
        let _ = held.wait_for(|held| !held).await;
    }
    respond(&shared, &method, &uri, &headers, &body).unwrap_or_else(IntoResponse::into_response)
}

/// The operation a method and path name, and the object name in the path.
fn route<'a>(method: &Method, segments: &[&'a str]) -> Option<(Op, &'a str, Option<&'a str>)> {
    use Method as M;
    let found = match (method, segments) {
        (&M::GET, ["secrets"]) => (Op::ListSecrets, "", None),
        (&M::GET, ["secrets", name]) => (Op::GetSecret, *name, None),
        (&M::GET, ["secrets", name, "versions"]) => (Op::ListVersions, *name, None),
        (&M::GET, ["secrets", name, version]) => (Op::GetSecret, *name, Some(*version)),
        (&M::PUT, ["secrets", name]) => (Op::SetSecret, *name, None),
        (&M::PATCH, ["secrets", name]) => (Op::UpdateSecret, *name, None),
        (&M::PATCH, ["secrets", name, version]) => (Op::UpdateSecret, *name, Some(*version)),
        (&M::DELETE, ["secrets", name]) => (Op::DeleteSecret, *name, None),
        (&M::GET, ["deletedsecrets"]) => (Op::ListDeletedSecrets, "", None),
        (&M::GET, ["deletedsecrets", name]) => (Op::GetDeletedSecret, *name, None),
        (&M::DELETE, ["deletedsecrets", name]) => (Op::PurgeDeletedSecret, *name, None),
        (&M::POST, ["deletedsecrets", name, "recover"]) => (Op::RecoverDeletedSecret, *name, None),
        (&M::GET, ["keys"]) => (Op::ListKeys, "", None),
        (&M::POST, ["keys", name, "create"]) => (Op::CreateKey, *name, None),
        (&M::GET, ["keys", name, "versions"]) => (Op::ListKeyVersions, *name, None),
        (&M::GET, ["keys", name]) => (Op::GetKey, *name, None),
        (&M::GET, ["keys", name, version]) => (Op::GetKey, *name, Some(*version)),
        (&M::GET, ["certificates"]) => (Op::ListCertificates, "", None),
        (&M::POST, ["certificates", name, "create"]) => (Op::CreateCertificate, *name, None),
        (&M::POST, ["certificates", name, "import"]) => (Op::ImportCertificate, *name, None),
        (&M::GET, ["certificates", name, "versions"]) => (Op::ListCertificateVersions, *name, None),
        (&M::GET, ["certificates", name, "policy"]) => (Op::GetCertificatePolicy, *name, None),
        (&M::GET, ["certificates", name, "pending"]) => (Op::GetCertificateOperation, *name, None),
        (&M::GET, ["certificates", name]) => (Op::GetCertificate, *name, None),
        (&M::GET, ["certificates", name, version]) => (Op::GetCertificate, *name, Some(*version)),
        _ => return None,
    };
    Some(found)
}

/// Authentication comes first, so rejected requests are neither counted nor given injected faults.
fn respond(shared: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Reply {
    let mut vault = shared.lock();
    vault.authenticate(headers, &shared.resource)?;
    let path = uri.path().trim_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    let (op, name, version) = route(method, &segments).ok_or_else(|| ApiError::unknown_operation(method, path))?;
    *vault.calls.entry(op).or_default() += 1;
    if let Some(fault) = vault.faults.pop_front() {
        return Err(fault.error());
    }
    let query = Query::<HashMap<String, String>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    let api_version = query.get("api-version").map(String::as_str).unwrap_or_default();
    if !API_VERSIONS.contains(&api_version) {
        let supported = API_VERSIONS.join(", ");
        return Err(ApiError::bad_parameter(format!(
            "The specified version ({api_version}) is not recognized. Supported versions: {supported}."
        )));
    }
    if !name.is_empty() && !valid_name(name) {
        return Err(ApiError::bad_parameter(format!("The request URI contains an invalid name: {name}")));
    }
    let request = Request { url: &shared.url, query, body };
    let vault = &mut *vault;
    match op {
        Op::GetSecret
        | Op::ListSecrets
        | Op::ListVersions
        | Op::SetSecret
        | Op::UpdateSecret
        | Op::DeleteSecret
        | Op::ListDeletedSecrets
        | Op::GetDeletedSecret
        | Op::PurgeDeletedSecret
        | Op::RecoverDeletedSecret => vault.secrets(op, name, version, &request),
        Op::CreateKey | Op::GetKey | Op::ListKeys | Op::ListKeyVersions => {
            keys::respond(&mut vault.keys, op, name, version, &request)
        }
        Op::CreateCertificate
        | Op::ImportCertificate
        | Op::GetCertificate
        | Op::ListCertificates
        | Op::ListCertificateVersions
        | Op::GetCertificatePolicy
        | Op::GetCertificateOperation => certificates::respond(vault, op, name, version, &request),
    }
}

impl Vault {
    /// `Bearer authorization="<authority>/<tenant>", resource="<resource>"`, as Azure words it.
    fn challenge(&self, resource: &str) -> String {
        format!("Bearer authorization=\"{}\", resource=\"{resource}\"", self.authorization)
    }

    fn authenticate(&self, headers: &HeaderMap, resource: &str) -> Result<(), ApiError> {
        let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.split_once(' '));
        let token = token.filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty());
        let message = match (token, &self.required_token) {
            (None, _) => "AKV10000: Request is missing a Bearer or PoP token.",
            (Some((_, given)), Some(required)) if given.trim() != required => {
                "AKV10022: Invalid audience. The access token is not valid for this vault."
            }
            _ => return Ok(()),
        };
        let error = ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message);
        Err(ApiError { challenge: HeaderValue::from_str(&self.challenge(resource)).ok(), ..error })
    }
}

// === paging and helpers ===

/// One page of `items` plus an absolute `nextLink` whose `$skiptoken` is the encoded offset.
fn page<T: Serialize>(url: &str, path: &str, query: &HashMap<String, String>, items: Vec<T>) -> Reply {
    let page_size = match query.get("maxresults") {
        None => PAGE_SIZE,
        Some(n) => n.parse().ok().filter(|n| (1..=PAGE_SIZE).contains(n)).ok_or_else(|| {
            ApiError::bad_parameter(format!("Invalid maxresults {n}: it must be between 1 and {PAGE_SIZE}."))
        })?,
    };
    let offset = match query.get("$skiptoken") {
        None => 0,
        Some(token) => decode_skip_token(token).ok_or_else(|| ApiError::bad_parameter("Invalid $skiptoken."))?,
    };
    let end = items.len().min(offset.saturating_add(page_size));
    let api_version = query.get("api-version").map(String::as_str).unwrap_or(CLIENT_API_VERSION);
    let next_link = (end < items.len()).then(|| {
        let token = URL_SAFE_NO_PAD.encode(format!("offset:{end}"));
        format!("{url}/{path}?api-version={api_version}&$skiptoken={token}&maxresults={page_size}")
    });
    let value = items.get(offset.min(end)..end).unwrap_or_default();
    Ok(Json(json!({ "value": value, "nextLink": next_link })).into_response())
}

fn decode_skip_token(token: &str) -> Option<usize> {
    let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(token).ok()?).ok()?;
    decoded.strip_prefix("offset:")?.parse().ok()
}

fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A new version id: 32 lowercase hex digits.
fn new_version_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Serializes `value` as the body of a 200 answer.
fn ok_json(value: impl Serialize) -> Reply {
    Ok(Json(value).into_response())
}
