//! An in-process HTTPS server speaking the Azure Key Vault secrets data-plane REST API, because
//! no Key Vault emulator is available to these tests; it also counts backend calls and injects
//! faults. It logs nothing, so secret values never leave it.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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

use crate::tls::{TestCa, install_crypto_provider, loopback_listener, serve_https};

const API_VERSIONS: [&str; 5] = ["7.2", "7.3", "7.4", "7.5", "7.6"];
const CLIENT_API_VERSION: &str = "7.5";
const CLIENT_TOKEN: &str = "test-token";
const PAGE_SIZE: usize = 25;
const RECOVERABLE_DAYS: i64 = 90;
const CHALLENGE: &str = "Bearer authorization=\"https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000\", resource=\"https://vault.azure.net\"";

/// A data-plane operation, as counted by [`KeyVaultServer::calls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    GetSecret,
    ListSecrets,
    ListVersions,
    SetSecret,
    UpdateSecret,
    DeleteSecret,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct SecretAttributes {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
    pub recovery_level: String,
    pub recoverable_days: i64,
}

/// A secret version; `value` is absent in update and delete responses, as in Azure.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SecretBundle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    pub attributes: SecretAttributes,
}

/// A listing entry: a secret (id without version) or one of its versions; never a value.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SecretItem {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    pub attributes: SecretAttributes,
}

/// The part of a PUT or PATCH body this server understands.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SecretChange {
    value: Option<String>,
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: AttributeChange,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AttributeChange {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

struct Version {
    id: String,
    value: String,
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: SecretAttributes,
}

struct Secret {
    name: String,
    /// Oldest first: the last one is the current version, whether enabled or not.
    versions: Vec<Version>,
}

struct Fault {
    status: StatusCode,
    retry_after_secs: Option<u64>,
}

#[derive(Default)]
struct Vault {
    /// Keyed by lowercase name: Key Vault names are case-insensitive.
    secrets: BTreeMap<String, Secret>,
    forbidden: HashSet<String>,
    faults: VecDeque<Fault>,
    required_token: Option<String>,
    calls: HashMap<Op, u64>,
}

struct Shared {
    url: String,
    vault: Mutex<Vault>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vault> {
        // A test that panicked while holding the lock must not cascade into every later request.
        self.vault.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The Key Vault API server; its task is aborted on drop.
pub struct KeyVaultServer {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeyVaultServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeyVaultServer {
    pub async fn start() -> anyhow::Result<Self> {
        let (listener, addr) = loopback_listener().await?;
        let config = TestCa::shared().loopback_server_config()?;
        let url = format!("https://localhost:{}", addr.port());
        let shared = Arc::new(Shared { url, vault: Mutex::default() });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(serve_https(listener, config, app));
        Ok(Self { shared, task })
    }

    /// The vault URL, without a trailing slash.
    pub fn url(&self) -> String {
        self.shared.url.clone()
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

    /// Denies reads of `secret_name` as Azure RBAC does when no role assignment covers it.
    pub fn forbid(&self, secret_name: &str) {
        self.shared.lock().forbidden.insert(secret_name.to_ascii_lowercase());
    }

    /// `None` accepts any non-empty bearer token; `Some` accepts only that one.
    pub fn require_bearer(&self, token: Option<String>) {
        self.shared.lock().required_token = token;
    }

    /// Adds a version without going through HTTP (not counted); returns its version id.
    /// Every value of every version stored so far, for scanning logs and messages for leaks.
    pub fn all_values(&self) -> Vec<String> {
        self.shared.lock().secrets.values().flat_map(|s| s.versions.iter().map(|v| v.value.clone())).collect()
    }

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
        let change = SecretChange {
            value: Some(value.to_string()),
            content_type: content_type.map(str::to_string),
            tags: (!tags.is_empty()).then_some(tags),
            attributes: AttributeChange::default(),
        };
        self.shared.lock().put(name, change).versions.last().map(|v| v.id.clone()).unwrap_or_default()
    }

    pub fn disable_version(&self, name: &str, version: &str) {
        let mut vault = self.shared.lock();
        let secret = vault.secrets.get_mut(&name.to_ascii_lowercase());
        let found = secret.and_then(|s| s.versions.iter_mut().find(|v| v.id.eq_ignore_ascii_case(version)));
        let version = found.unwrap_or_else(|| panic!("secret {name} has no version {version}"));
        version.attributes.enabled = false;
        version.attributes.updated = now();
    }

    pub fn client(&self) -> anyhow::Result<KeyVaultClient> {
        install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(self.ca_pem().as_bytes())?;
        Ok(KeyVaultClient {
            http: reqwest::Client::builder().tls_certs_only([ca]).build()?,
            vault_url: self.url(),
            token: Some(CLIENT_TOKEN.to_string()),
        })
    }
}

/// An Azure error answer: `{"error":{"code","message","innererror"?}}`.
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    inner_code: Option<&'static str>,
    challenge: bool,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), inner_code: None, challenge: false, retry_after_secs: None }
    }

    fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadParameter", message)
    }

    fn not_found(name_or_id: &str) -> Self {
        let message = format!(
            "A secret with (name/id) {name_or_id} was not found in this key vault. If you recently deleted this secret you may be able to recover it using the correct recovery command."
        );
        Self::new(StatusCode::NOT_FOUND, "SecretNotFound", message)
    }

    fn forbidden(message: impl Into<String>, inner_code: &'static str) -> Self {
        Self { inner_code: Some(inner_code), ..Self::new(StatusCode::FORBIDDEN, "Forbidden", message) }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(inner) = self.inner_code {
            error["innererror"] = json!({"code": inner});
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
        }
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

type Reply = Result<Response, ApiError>;

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    respond(&shared, &method, &uri, &headers, &body).unwrap_or_else(IntoResponse::into_response)
}

/// Authentication comes first, so rejected requests are neither counted nor given injected faults.
fn respond(shared: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Reply {
    let mut vault = shared.lock();
    vault.authenticate(headers)?;
    let path = uri.path().trim_matches('/');
    let segments: Vec<&str> = path.split('/').collect();
    let (op, name, version) = match (method, segments.as_slice()) {
        (&Method::GET, ["secrets"]) => (Op::ListSecrets, "", None),
        (&Method::GET, ["secrets", name]) => (Op::GetSecret, *name, None),
        (&Method::GET, ["secrets", name, "versions"]) => (Op::ListVersions, *name, None),
        (&Method::GET, ["secrets", name, version]) => (Op::GetSecret, *name, Some(*version)),
        (&Method::PUT, ["secrets", name]) => (Op::SetSecret, *name, None),
        (&Method::PATCH, ["secrets", name]) => (Op::UpdateSecret, *name, None),
        (&Method::PATCH, ["secrets", name, version]) => (Op::UpdateSecret, *name, Some(*version)),
        (&Method::DELETE, ["secrets", name]) => (Op::DeleteSecret, *name, None),
        _ => return Err(ApiError::new(StatusCode::NOT_FOUND, "NotFound", "This server implements secrets only.")),
    };
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
    if op != Op::ListSecrets && !valid_name(name) {
        return Err(ApiError::bad_parameter(format!("The request URI contains an invalid name: {name}")));
    }
    let url = &shared.url;
    match op {
        Op::GetSecret => vault.get(url, name, version),
        Op::ListSecrets => {
            let items = vault.secrets.values().filter_map(|s| Some(s.versions.last()?.item(url, &s.name, false)));
            page(url, "secrets", &query, items.collect())
        }
        Op::ListVersions => vault.versions(url, name, &query),
        Op::SetSecret => {
            let change = parse_change(body)?;
            if change.value.is_none() {
                return Err(ApiError::bad_parameter("Property value is required."));
            }
            // Answered without the read checks: Azure returns the new version even when it is disabled.
            let secret = vault.put(name, change);
            let created = secret.versions.last().map(|v| v.bundle(url, &secret.name, true));
            Ok(Json(created).into_response())
        }
        Op::UpdateSecret => vault.update(url, name, version, parse_change(body)?),
        Op::DeleteSecret => vault.delete(url, name),
    }
}

impl Vault {
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let token = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.split_once(' '));
        let token = token.filter(|(scheme, t)| scheme.eq_ignore_ascii_case("bearer") && !t.trim().is_empty());
        let message = match (token, &self.required_token) {
            (None, _) => "AKV10000: Request is missing a Bearer or PoP token.",
            (Some((_, given)), Some(required)) if given.trim() != required => {
                "The access token is not valid for this vault."
            }
            _ => return Ok(()),
        };
        Err(ApiError { challenge: true, ..ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message) })
    }

    fn secret(&self, name: &str) -> Result<&Secret, ApiError> {
        self.secrets.get(&name.to_ascii_lowercase()).ok_or_else(|| ApiError::not_found(name))
    }

    fn check_readable(&self, name: &str) -> Result<(), ApiError> {
        if !self.forbidden.contains(&name.to_ascii_lowercase()) {
            return Ok(());
        }
        Err(ApiError::forbidden(
            format!(
                "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action' Resource: 'secrets/{name}' Assignment: (not found) DecisionReason: ForbiddenByRbac"
            ),
            "ForbiddenByRbac",
        ))
    }

    /// Without a version this is the current version, which Azure refuses if it is disabled.
    fn get(&self, url: &str, name: &str, version: Option<&str>) -> Reply {
        self.check_readable(name)?;
        let secret = self.secret(name)?;
        let found = match version {
            None => secret.versions.last(),
            Some(version) => secret.versions.iter().find(|v| v.id.eq_ignore_ascii_case(version)),
        };
        let version = found.ok_or_else(|| ApiError::not_found(&format!("{name}/{}", version.unwrap_or_default())))?;
        if !version.attributes.enabled {
            let message = "Operation get is not allowed on a disabled secret.";
            return Err(ApiError::forbidden(message, "SecretDisabled"));
        }
        Ok(Json(version.bundle(url, &secret.name, true)).into_response())
    }

    fn versions(&self, url: &str, name: &str, query: &HashMap<String, String>) -> Reply {
        self.check_readable(name)?;
        let secret = self.secret(name)?;
        // Azure lists versions by version id, not by age.
        let mut items: Vec<SecretItem> = secret.versions.iter().map(|v| v.item(url, &secret.name, true)).collect();
        items.sort_by(|a, b| a.id.cmp(&b.id));
        page(url, &format!("secrets/{}/versions", secret.name), query, items)
    }

    /// Adds a version; it is the last one of the returned secret.
    fn put(&mut self, name: &str, change: SecretChange) -> &Secret {
        let time = now();
        let version = Version {
            id: uuid::Uuid::new_v4().simple().to_string(),
            value: change.value.unwrap_or_default(),
            content_type: change.content_type,
            tags: change.tags,
            attributes: SecretAttributes {
                enabled: change.attributes.enabled.unwrap_or(true),
                nbf: change.attributes.nbf,
                exp: change.attributes.exp,
                created: time,
                updated: time,
                recovery_level: "Recoverable+Purgeable".to_string(),
                recoverable_days: RECOVERABLE_DAYS,
            },
        };
        let secret = self.secrets.entry(name.to_ascii_lowercase());
        let secret = secret.or_insert_with(|| Secret { name: name.to_string(), versions: Vec::new() });
        secret.versions.push(version);
        secret
    }

    fn update(&mut self, url: &str, name: &str, version: Option<&str>, change: SecretChange) -> Reply {
        let secret = self.secrets.get_mut(&name.to_ascii_lowercase()).ok_or_else(|| ApiError::not_found(name))?;
        let found = match version {
            None => secret.versions.last_mut(),
            Some(version) => secret.versions.iter_mut().find(|v| v.id.eq_ignore_ascii_case(version)),
        };
        let target = found.ok_or_else(|| ApiError::not_found(&format!("{name}/{}", version.unwrap_or_default())))?;
        let attributes = &mut target.attributes;
        attributes.enabled = change.attributes.enabled.unwrap_or(attributes.enabled);
        attributes.nbf = change.attributes.nbf.or(attributes.nbf);
        attributes.exp = change.attributes.exp.or(attributes.exp);
        attributes.updated = now();
        target.content_type = change.content_type.or(target.content_type.take());
        target.tags = change.tags.or(target.tags.take());
        Ok(Json(target.bundle(url, &secret.name, false)).into_response())
    }

    fn delete(&mut self, url: &str, name: &str) -> Reply {
        let secret = self.secrets.remove(&name.to_ascii_lowercase()).ok_or_else(|| ApiError::not_found(name))?;
        let current = secret.versions.last().ok_or_else(|| ApiError::not_found(name))?;
        let mut body = serde_json::to_value(current.bundle(url, &secret.name, false)).unwrap_or(Value::Null);
        let deleted = now();
        body["recoveryId"] = json!(format!("{url}/deletedsecrets/{}", secret.name));
        body["deletedDate"] = json!(deleted);
        body["scheduledPurgeDate"] = json!(deleted + RECOVERABLE_DAYS * 86_400);
        Ok(Json(body).into_response())
    }
}

impl Version {
    fn bundle(&self, url: &str, name: &str, with_value: bool) -> SecretBundle {
        SecretBundle {
            value: with_value.then(|| self.value.clone()),
            id: format!("{url}/secrets/{name}/{}", self.id),
            content_type: self.content_type.clone(),
            tags: self.tags.clone(),
            attributes: self.attributes.clone(),
        }
    }

    fn item(&self, url: &str, name: &str, with_version: bool) -> SecretItem {
        let id = format!("{url}/secrets/{name}");
        SecretItem {
            id: if with_version { format!("{id}/{}", self.id) } else { id },
            content_type: self.content_type.clone(),
            tags: self.tags.clone(),
            attributes: self.attributes.clone(),
        }
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

fn parse_change(body: &[u8]) -> Result<SecretChange, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::bad_parameter(format!("The request body is not valid: {e}")))
}

fn valid_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// An error answer from the vault, so tests can assert on status and code.
#[derive(Debug, Clone)]
pub struct KeyVaultError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for KeyVaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key Vault answered {} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for KeyVaultError {}

/// A minimal REST client for test setup, trusting only the test CA.
pub struct KeyVaultClient {
    http: reqwest::Client,
    vault_url: String,
    token: Option<String>,
}

impl KeyVaultClient {
    /// The bearer token to send; `None` sends no Authorization header.
    pub fn with_token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_string);
        self
    }

    /// A request to `path` (e.g. "/secrets/a") with api-version and the bearer token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.vault_url));
        self.authorize(request.query(&[("api-version", CLIENT_API_VERSION)]))
    }

    pub async fn set(&self, name: &str, value: &str) -> anyhow::Result<SecretBundle> {
        decode(self.request(reqwest::Method::PUT, &format!("/secrets/{name}")).json(&json!({ "value": value }))).await
    }

    pub async fn get(&self, name: &str, version: Option<&str>) -> anyhow::Result<SecretBundle> {
        let path = format!("/secrets/{name}/{}", version.unwrap_or_default());
        decode(self.request(reqwest::Method::GET, &path)).await
    }

    pub async fn versions(&self, name: &str) -> anyhow::Result<Vec<SecretItem>> {
        self.all_pages(self.request(reqwest::Method::GET, &format!("/secrets/{name}/versions"))).await
    }

    pub async fn list(&self) -> anyhow::Result<Vec<SecretItem>> {
        self.all_pages(self.request(reqwest::Method::GET, "/secrets")).await
    }

    async fn all_pages(&self, first: reqwest::RequestBuilder) -> anyhow::Result<Vec<SecretItem>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page {
            value: Vec<SecretItem>,
            next_link: Option<String>,
        }
        let mut items = Vec::new();
        let mut request = first;
        loop {
            let page: Page = decode(request).await?;
            items.extend(page.value);
            let Some(next) = page.next_link else { return Ok(items) };
            request = self.authorize(self.http.get(next));
        }
    }

    fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

async fn decode<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> anyhow::Result<T> {
    let response = request.send().await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let field = |key: &str| body["error"][key].as_str().unwrap_or_default().to_string();
        let (code, message) = (field("code"), field("message"));
        return Err(KeyVaultError { status: status.as_u16(), code, message }.into());
    }
    Ok(serde_json::from_slice(&bytes)?)
}
