//! Instant refreshes from Azure Event Grid: an HTTP endpoint that takes Key Vault events (a new version of a
//! secret, certificate or key) and asks the VaultSecret controller to refresh, now, the VaultSecrets that read
//! the changed object. Polling on each VaultSecret's `refreshInterval` stays as the fallback for lost events.
//!
//! `POST /eventgrid` takes the Event Grid schema (a JSON array of events, including the
//! `SubscriptionValidationEvent` handshake) and CloudEvents 1.0 (structured, batched, or binary mode);
//! `OPTIONS /eventgrid` answers the CloudEvents abuse-protection handshake. Every request carries a shared key,
//! in a header or in the `key` query parameter; it is compared in constant time and never logged.
//!
//! What a delivery gets (see docs/vault-events.md):
//! - 401 without the right key; 413 over 1 MiB or over 100 events; 400 for a body that is not JSON events;
//! - 200 when at least one event was usable (a Key Vault event, or the validation handshake), even if others
//!   in the batch were rejected; 400 when none was; 503 when an event could not be acted on now (this replica
//!   is a standby, the apiserver failed, or, when sharding, another shard could not take it: see `crate::peers`),
//!   so that Event Grid delivers it again.
//!
//! Each distinct (vault, object) of a delivery is passed to the trigger once; the trigger then costs at most
//! one backend read per object, however many VaultSecrets read it.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    net::SocketAddr,
    path::Path,
    sync::{Arc, OnceLock},
};

use anyhow::{Context as _, bail};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, Query, Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::post,
};
use futures::{StreamExt as _, future::BoxFuture};
use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use crate::{Args, metrics::Metrics, vaultsecret::RefreshTrigger};

/// The path of the endpoint.
pub const PATH: &str = "/eventgrid";
/// The largest body taken; Event Grid's own limit for a delivery is 1 MB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The most events taken in one delivery; set the subscription's `maxEventsPerBatch` to this or less.
pub const MAX_EVENTS: usize = 100;
/// Deliveries per minute announced in the CloudEvents handshake (`WebHook-Allowed-Rate`).
pub const ALLOWED_RATE: &str = "120";
/// The shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;
/// The query parameter that may carry the key (Event Grid webhook URLs often do: `...?key=`).
pub const KEY_QUERY_PARAMETER: &str = "key";

const VALIDATION: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";
/// New versions: the VaultSecrets that read the object are refreshed.
const NEW_VERSION: [&str; 3] = [
    "Microsoft.KeyVault.SecretNewVersionCreated",
    "Microsoft.KeyVault.CertificateNewVersionCreated",
    "Microsoft.KeyVault.KeyNewVersionCreated",
];
/// Expiry notices: accepted and counted, nothing to refresh.
const EXPIRY: [&str; 6] = [
    "Microsoft.KeyVault.SecretNearExpiry",
    "Microsoft.KeyVault.SecretExpired",
    "Microsoft.KeyVault.CertificateNearExpiry",
    "Microsoft.KeyVault.CertificateExpired",
    "Microsoft.KeyVault.KeyNearExpiry",
    "Microsoft.KeyVault.KeyExpired",
];
/// How many objects of one delivery are looked up at once.
const CONCURRENT_LOOKUPS: usize = 8;

/// The endpoint's settings, from [`Config::from_args`]. Its `Debug` never shows the key.
pub struct Config {
    pub addr: SocketAddr,
    key: SharedKey,
    key_header: HeaderName,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config").field("addr", &self.addr).field("key_header", &self.key_header).finish()
    }
}

impl Config {
    /// `None` when `--event-grid-addr` is unset; an error when it is set and the key cannot be had.
    pub fn from_args(args: &Args) -> anyhow::Result<Option<Config>> {
        let Some(addr) = args.event_grid_addr else { return Ok(None) };
        let Some(path) = &args.event_grid_key_file else {
            bail!(
                "--event-grid-addr (VAULTSYNC_EVENT_GRID_ADDR) is set but --event-grid-key-file \
                 (VAULTSYNC_EVENT_GRID_KEY_FILE) is not: the Event Grid endpoint needs a shared key"
            );
        };
        let key = read_key(path)?;
        Config::new(addr, &key, &args.event_grid_key_header).map(Some)
    }

    /// The settings for `addr`, with the shared key `key` expected in the header `key_header` (or the query).
    pub fn new(addr: SocketAddr, key: &[u8], key_header: &str) -> anyhow::Result<Config> {
        if key.len() < MIN_KEY_LEN {
            bail!("the Event Grid key is shorter than {MIN_KEY_LEN} characters");
        }
        if !key.iter().all(|b| b.is_ascii_graphic()) {
            bail!("the Event Grid key must be printable ASCII without spaces (it is sent in a header or URL)");
        }
        let key_header = HeaderName::try_from(key_header)
            .with_context(|| format!("--event-grid-key-header {key_header:?} is not a valid HTTP header name"))?;
        Ok(Config { addr, key: SharedKey::new(key), key_header })
    }
}

/// Reads the key file; surrounding whitespace (a trailing newline) is not part of the key.
fn read_key(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let raw = Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading the Event Grid key file {}", path.display()))?,
    );
    let text = raw.trim_ascii();
    if text.is_empty() {
        bail!("the Event Grid key file {} is empty", path.display());
    }
    Ok(Zeroizing::new(text.to_vec()))
}

/// The shared key, kept only as an HMAC under a key made at start: a candidate is checked by computing its
/// HMAC and comparing the tags in constant time, so neither the content nor the length of the key leaks
/// through response timing, and the key itself is not kept in memory.
struct SharedKey {
    mac_key: Zeroizing<[u8; 32]>,
    tag: Vec<u8>,
}

impl SharedKey {
    fn new(key: &[u8]) -> Self {
        let mut mac_key = Zeroizing::new([0u8; 32]);
        rand::rng().fill_bytes(mac_key.as_mut());
        let tag = Self::mac(&mac_key, key).finalize().into_bytes().to_vec();
        Self { mac_key, tag }
    }

    fn mac(mac_key: &[u8; 32], data: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(mac_key).expect("HMAC takes a key of any length");
        mac.update(data);
        mac
    }

    fn matches(&self, candidate: &[u8]) -> bool {
        Self::mac(&self.mac_key, candidate).verify_slice(&self.tag).is_ok()
    }
}

/// Asks the controller to refresh the VaultSecrets that read a vault object; see [`RefreshTrigger`].
pub trait Refresh: Send + Sync {
    /// Returns how many VaultSecrets were asked to refresh.
    fn object_changed<'a>(&'a self, vault_url: &'a str, object: &'a str) -> BoxFuture<'a, anyhow::Result<usize>>;
}

impl Refresh for RefreshTrigger {
    fn object_changed<'a>(&'a self, vault_url: &'a str, object: &'a str) -> BoxFuture<'a, anyhow::Result<usize>> {
        Box::pin(async move {
            self.vault_object_changed(vault_url, object).await.context("finding the VaultSecrets that read it")
        })
    }
}

/// Where the endpoint finds the controller's trigger. The endpoint serves from the start, on every replica,
/// so that handshakes succeed on a standby too; Key Vault events are acted on once this is set (on the
/// leader) and answered 503 before, so that Event Grid delivers them again. When sharding, it also holds the other
/// shards, to which deliveries are passed on (`crate::peers`).
#[derive(Clone, Default)]
pub struct RefreshSlot {
    refresh: Arc<OnceLock<Arc<dyn Refresh>>>,
    peers: Arc<OnceLock<crate::peers::Peers>>,
}

impl RefreshSlot {
    /// Sets the trigger; a second call is ignored.
    pub fn set(&self, refresh: impl Refresh + 'static) {
        let _ = self.refresh.set(Arc::new(refresh));
    }

    /// Sets the other shards; a second call is ignored.
    pub fn set_peers(&self, peers: crate::peers::Peers) {
        let _ = self.peers.set(peers);
    }

    fn get(&self) -> Option<Arc<dyn Refresh>> {
        self.refresh.get().cloned()
    }
}

#[derive(Clone)]
struct AppState {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    refresh: RefreshSlot,
}

/// Binds `addr` for [`serve`]; returns the listener and the address it got (useful with port 0).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding the Event Grid address {addr}"))?;
    let local = listener.local_addr().context("reading the bound Event Grid address")?;
    Ok((listener, local))
}

/// Serves the endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    metrics: Arc<Metrics>,
    refresh: RefreshSlot,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    info!(addr = ?listener.local_addr().ok(), path = PATH, "serving Azure Event Grid deliveries");
    // A delivery of 100 events may look up many VaultSecrets; Event Grid itself waits 30 s for an answer.
    let limits = crate::http::Limits { request_timeout: std::time::Duration::from_secs(25), ..Default::default() };
    crate::http::serve_limited(listener, router(config, metrics, refresh), limits, shutdown).await;
    Ok(())
}

/// The endpoint's routes: `POST` and `OPTIONS` on [`PATH`].
pub fn router(config: Config, metrics: Arc<Metrics>, refresh: RefreshSlot) -> Router {
    Router::new()
        .route(PATH, post(deliver).options(handshake))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(AppState { config: Arc::new(config), metrics, refresh })
}

impl AppState {
    /// Whether the request carries the key, in the configured header or the `key` query parameter. Both
    /// are checked, always, so timing does not tell which one was tried.
    fn authorized(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let key = &self.config.key;
        let in_header =
            headers.get_all(&self.config.key_header).iter().fold(false, |ok, v| key.matches(v.as_bytes()) | ok);
        let query = Query::<HashMap<String, String>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
        let in_query = query.get(KEY_QUERY_PARAMETER).is_some_and(|v| key.matches(v.as_bytes()));
        in_header | in_query
    }

    fn unauthorized(&self) -> Response {
        self.metrics.vault_event("none", "unauthorized");
        StatusCode::UNAUTHORIZED.into_response()
    }

    fn reject(&self, status: StatusCode, error: &str) -> Response {
        self.metrics.vault_event("none", "rejected");
        debug!(%status, error, "Event Grid delivery rejected");
        (status, Json(json!({ "error": error }))).into_response()
    }
}

/// `OPTIONS /eventgrid`: the CloudEvents webhook abuse-protection handshake.
async fn handshake(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Response {
    if !state.authorized(&headers, &uri) {
        return state.unauthorized();
    }
    let Some(origin) = headers.get("webhook-request-origin") else {
        return state.reject(StatusCode::BAD_REQUEST, "missing WebHook-Request-Origin");
    };
    info!(origin = ?origin, "answered the CloudEvents webhook handshake");
    let headers = [
        (HeaderName::from_static("webhook-allowed-origin"), origin.clone()),
        (HeaderName::from_static("webhook-allowed-rate"), HeaderValue::from_static(ALLOWED_RATE)),
        (header::ALLOW, HeaderValue::from_static("POST, OPTIONS")),
    ];
    (StatusCode::OK, headers).into_response()
}

/// `POST /eventgrid`: a delivery of one or more events.
async fn deliver(State(state): State<AppState>, request: Request) -> Response {
    if !state.authorized(request.headers(), request.uri()) {
        return state.unauthorized();
    }
    // Refuse a declared oversize body before reading any of it.
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return state.reject(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 1 MiB");
    }
    let headers = request.headers().clone();
    let query = request.uri().query().map(str::to_owned);
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return state.reject(StatusCode::PAYLOAD_TOO_LARGE, "the body is larger than 1 MiB");
        }
        Err(_) => return state.reject(StatusCode::BAD_REQUEST, "the body could not be read"),
    };
    let events = match parse_delivery(&headers, &body) {
        Ok(events) => events,
        Err(Invalid::TooMany) => {
            return state.reject(StatusCode::PAYLOAD_TOO_LARGE, "more than 100 events in one delivery");
        }
        Err(Invalid::Malformed(error)) => return state.reject(StatusCode::BAD_REQUEST, error),
    };
    let (answer, objects) = process(&state, events).await;
    // The other shards' VaultSecrets may read these objects too: pass the delivery on, once (not what was passed on
    // to us), and only what this replica could act on itself.
    let Some(peers) = state.refresh.peers.get() else { return answer };
    if objects == 0 || answer.status() != StatusCode::OK || headers.contains_key(crate::peers::FORWARDED_BY) {
        return answer;
    }
    match peers.forward(&headers, query.as_deref(), body).await {
        Ok(()) => {
            state.metrics.vault_event_forward("ok");
            answer
        }
        Err(error) => {
            state.metrics.vault_event_forward("failed");
            warn!(%error, "a vault event could not be passed on to another shard; answering 503 so it is delivered again");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "another shard could not take the events now" })))
                .into_response()
        }
    }
}

/// One event of a delivery, in either schema.
#[derive(Debug, PartialEq)]
struct Event {
    event_type: String,
    data: Option<Value>,
}

#[derive(Debug, PartialEq)]
enum Invalid {
    Malformed(&'static str),
    TooMany,
}

/// The media type of the request, lowercase, without parameters.
fn media_type(headers: &HeaderMap) -> String {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// Reads the events of a delivery. An element that is not an event object is kept as an event without a
/// type, to be rejected on its own; a body that is not a JSON object or array of them fails as a whole.
fn parse_delivery(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Result<Event, &'static str>>, Invalid> {
    let media = media_type(headers);
    // CloudEvents binary mode: the attributes are headers and the body is the data.
    if !media.starts_with("application/cloudevents")
        && let Some(event_type) = headers.get("ce-type")
    {
        let event_type = event_type.to_str().map_err(|_| Invalid::Malformed("ce-type is not text"))?;
        let data = serde_json::from_slice(body).map_err(|_| Invalid::Malformed("the body is not JSON"))?;
        return Ok(vec![Ok(Event { event_type: event_type.to_owned(), data: Some(data) })]);
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| Invalid::Malformed("the body is not JSON"))?;
    let items = match (media.as_str(), value) {
        ("application/cloudevents+json", Value::Object(event)) => vec![Value::Object(event)],
        ("application/cloudevents+json", _) => {
            return Err(Invalid::Malformed("a CloudEvents delivery is one JSON object"));
        }
        ("application/cloudevents-batch+json", Value::Object(_)) => {
            return Err(Invalid::Malformed("a CloudEvents batch is a JSON array"));
        }
        (_, Value::Array(events)) => events,
        (_, Value::Object(event)) => vec![Value::Object(event)],
        _ => return Err(Invalid::Malformed("expected a JSON array of events")),
    };
    if items.is_empty() {
        return Err(Invalid::Malformed("the delivery holds no events"));
    }
    if items.len() > MAX_EVENTS {
        return Err(Invalid::TooMany);
    }
    Ok(items.into_iter().map(event).collect())
}

/// One element of a delivery: a CloudEvent (it has `specversion`) or an Event Grid event.
fn event(item: Value) -> Result<Event, &'static str> {
    let Value::Object(mut fields) = item else { return Err("an event is not a JSON object") };
    let type_field = if fields.contains_key("specversion") { "type" } else { "eventType" };
    let Some(Value::String(event_type)) = fields.remove(type_field) else { return Err("an event has no type") };
    Ok(Event { event_type, data: fields.remove("data") })
}

/// What the endpoint makes of an event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Validation,
    NewVersion,
    Expiry,
    Unknown,
}

/// The kind of an event type and its metric label: the canonical type name, or `other`.
fn classify(event_type: &str) -> (Kind, &'static str) {
    let find = |names: &[&'static str]| names.iter().copied().find(|n| n.eq_ignore_ascii_case(event_type));
    if let Some(name) = find(&[VALIDATION]) {
        (Kind::Validation, name)
    } else if let Some(name) = find(&NEW_VERSION) {
        (Kind::NewVersion, name)
    } else if let Some(name) = find(&EXPIRY) {
        (Kind::Expiry, name)
    } else {
        (Kind::Unknown, "other")
    }
}

/// A field of an event's `data`, by name regardless of case (Key Vault writes `Id`, `ObjectName`).
fn field<'a>(data: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    data.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| v.as_str())
}

/// The vault URL of an object id such as `https://myvault.vault.azure.net/secrets/name/version`: its scheme
/// and authority, lowercase, without a default port.
fn vault_url(id: &str) -> Option<String> {
    let uri: Uri = id.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    if authority.as_str().contains('@') || authority.host().is_empty() {
        return None;
    }
    let port = match (scheme.as_str(), authority.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => String::new(),
        ("https" | "http", Some(port)) => format!(":{port}"),
        _ => return None,
    };
    if scheme != "https" && scheme != "http" {
        return None;
    }
    Some(format!("{scheme}://{}{port}", authority.host().to_ascii_lowercase()))
}

/// A Key Vault object name: 1 to 127 letters, digits and dashes.
fn valid_object_name(name: &str) -> bool {
    (1..=127).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The vault and object of a new-version event.
fn target(data: Option<&Value>) -> Result<(String, String), &'static str> {
    let data = data.and_then(Value::as_object).ok_or("a Key Vault event has no data object")?;
    let id = field(data, "Id").ok_or("a Key Vault event has no data.Id")?;
    let vault = vault_url(id).ok_or("data.Id is not an https URL of a vault object")?;
    let object = field(data, "ObjectName").ok_or("a Key Vault event has no data.ObjectName")?;
    if !valid_object_name(object) {
        return Err("data.ObjectName is not a Key Vault object name");
    }
    Ok((vault, object.to_owned()))
}

/// What became of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// VaultSecrets were asked to refresh.
    Refreshed,
    /// Accepted, nothing to do (an expiry notice, or no VaultSecret reads the object).
    Ignored,
    /// The validation handshake was answered.
    Validated,
    /// Unusable: unknown type or missing fields.
    Rejected,
    /// Could not be acted on now; Event Grid should deliver it again.
    Failed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Refreshed => "refreshed",
            Outcome::Ignored => "ignored",
            Outcome::Validated => "validated",
            Outcome::Rejected => "rejected",
            Outcome::Failed => "failed",
        }
    }
}

/// Acts on a delivery's events; returns the answer and how many distinct objects had a new version.
async fn process(state: &AppState, events: Vec<Result<Event, &'static str>>) -> (Response, usize) {
    let received = events.len();
    let mut outcomes: Vec<(&'static str, Option<Outcome>)> = Vec::with_capacity(received);
    let mut validation_code = None;
    // Distinct (vault, object) pairs in order of arrival, and which pair each new-version event names.
    let mut targets: Vec<(String, String)> = Vec::new();
    let mut event_target: Vec<Option<usize>> = Vec::with_capacity(received);
    let mut reasons: Vec<&'static str> = Vec::new();
    for event in events {
        let (kind, label) = match &event {
            Ok(event) => classify(&event.event_type),
            Err(_) => (Kind::Unknown, "other"),
        };
        let mut index = None;
        let outcome = match (kind, event) {
            (_, Err(reason)) => {
                reasons.push(reason);
                Some(Outcome::Rejected)
            }
            (Kind::Unknown, Ok(_)) => {
                reasons.push("unknown event type");
                Some(Outcome::Rejected)
            }
            (Kind::Expiry, Ok(_)) => Some(Outcome::Ignored),
            (Kind::Validation, Ok(event)) => {
                let code = event.data.as_ref().and_then(Value::as_object).and_then(|d| field(d, "validationCode"));
                match code {
                    Some(code) if validation_code.is_none() => {
                        validation_code = Some(code.to_owned());
                        Some(Outcome::Validated)
                    }
                    Some(_) => Some(Outcome::Ignored),
                    None => {
                        reasons.push("a validation event has no data.validationCode");
                        Some(Outcome::Rejected)
                    }
                }
            }
            (Kind::NewVersion, Ok(event)) => match target(event.data.as_ref()) {
                Ok(pair) => {
                    let found = targets.iter().position(|t| t.0 == pair.0 && t.1.eq_ignore_ascii_case(&pair.1));
                    index = Some(found.unwrap_or_else(|| {
                        targets.push(pair);
                        targets.len() - 1
                    }));
                    None // decided once the trigger has answered
                }
                Err(reason) => {
                    reasons.push(reason);
                    Some(Outcome::Rejected)
                }
            },
        };
        outcomes.push((label, outcome));
        event_target.push(index);
    }

    // Each distinct object once, a few at a time.
    let objects = targets.len();
    let refresh = state.refresh.get();
    let results: Vec<Outcome> = futures::stream::iter(targets)
        .map(|(vault, object)| refresh_one(refresh.clone(), vault, object))
        .buffered(CONCURRENT_LOOKUPS)
        .collect()
        .await;

    let mut resolved = Vec::with_capacity(received);
    for ((label, outcome), index) in outcomes.into_iter().zip(event_target) {
        let outcome = outcome.or_else(|| index.and_then(|i| results.get(i).copied())).unwrap_or(Outcome::Failed);
        state.metrics.vault_event(label, outcome.label());
        resolved.push(outcome);
    }
    let count = |outcome: Outcome| resolved.iter().filter(|o| **o == outcome).count();
    let (refreshed, ignored, rejected, failed) =
        (count(Outcome::Refreshed), count(Outcome::Ignored), count(Outcome::Rejected), count(Outcome::Failed));
    debug!(received, refreshed, ignored, rejected, failed, "Event Grid delivery processed");

    if failed > 0 {
        return (
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": "some events could not be acted on now" })))
                .into_response(),
            objects,
        );
    }
    if let Some(code) = validation_code {
        info!("answered the Event Grid subscription validation");
        return ((StatusCode::OK, Json(json!({ "validationResponse": code }))).into_response(), objects);
    }
    if refreshed + ignored == 0 {
        reasons.dedup();
        let answer = (StatusCode::BAD_REQUEST, Json(json!({ "error": "no usable event", "reasons": reasons })));
        return (answer.into_response(), objects);
    }
    let summary = json!({ "received": received, "refreshed": refreshed, "ignored": ignored, "rejected": rejected });
    ((StatusCode::OK, Json(summary)).into_response(), objects)
}

/// Asks the trigger to refresh the readers of one object; `None` before this replica runs the controllers.
async fn refresh_one(refresh: Option<Arc<dyn Refresh>>, vault: String, object: String) -> Outcome {
    let Some(refresh) = refresh else {
        warn!(%vault, %object, "a vault event arrived before this replica runs the controllers; answering 503");
        return Outcome::Failed;
    };
    match refresh.object_changed(&vault, &object).await {
        Ok(0) => {
            debug!(%vault, %object, "vault event: no VaultSecret reads this object");
            Outcome::Ignored
        }
        Ok(n) => {
            info!(%vault, %object, vault_secrets = n, "vault event: refreshing the VaultSecrets that read it");
            Outcome::Refreshed
        }
        Err(e) => {
            warn!(%vault, %object, error = format!("{e:#}"), "vault event could not be acted on; answering 503");
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use clap::Parser as _;

    use super::*;

    const KEY: &str = "a-test-key-of-some-length";

    /// Records the calls; answers `readers` for every object.
    #[derive(Default)]
    struct FakeRefresh {
        calls: Mutex<Vec<(String, String)>>,
        readers: usize,
        fail: bool,
    }

    impl Refresh for Arc<FakeRefresh> {
        fn object_changed<'a>(&'a self, vault_url: &'a str, object: &'a str) -> BoxFuture<'a, anyhow::Result<usize>> {
            self.calls.lock().expect("calls").push((vault_url.to_owned(), object.to_owned()));
            let (readers, fail) = (self.readers, self.fail);
            Box::pin(async move {
                if fail {
                    bail!("the apiserver is away");
                }
                Ok(readers)
            })
        }
    }

    fn state(refresh: Option<Arc<FakeRefresh>>) -> AppState {
        let config =
            Config::new("127.0.0.1:0".parse().expect("addr"), KEY.as_bytes(), "x-vaultsync-key").expect("config");
        let slot = RefreshSlot::default();
        if let Some(refresh) = refresh {
            slot.set(refresh);
        }
        AppState { config: Arc::new(config), metrics: Metrics::new(), refresh: slot }
    }

    fn secret_event(vault: &str, object: &str) -> Value {
        json!({ "id": "1", "eventType": "Microsoft.KeyVault.SecretNewVersionCreated", "subject": object,
            "eventTime": "2025-01-01T00:00:00Z", "dataVersion": "1", "topic": "/subscriptions/x",
            "data": { "Id": format!("{vault}/secrets/{object}/abc"), "VaultName": "v", "ObjectType": "Secret",
                "ObjectName": object, "Version": "abc" } })
    }

    async fn post(state: &AppState, path: &str, headers: &[(&str, &str)], body: &str) -> (StatusCode, Value) {
        let mut request = Request::builder().method("POST").uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(axum::body::Body::from(body.to_owned())).expect("request");
        let response = deliver(State(state.clone()), request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    // Property tests (cases: PROPTEST_CASES, raised by `make fuzz`): whatever a delivery holds, the endpoint answers
    // with one of its documented statuses, and asks to refresh only well-formed (vault, object) pairs.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                ".{0,30}".prop_map(Value::from),
                Just(json!({})),
                Just(json!([])),
            ]
        }

        fn event() -> impl Strategy<Value = Value> {
            let event_type = prop_oneof![
                Just("Microsoft.KeyVault.SecretNewVersionCreated".to_string()),
                Just("Microsoft.KeyVault.CertificateNewVersionCreated".to_string()),
                Just("Microsoft.KeyVault.SecretNearExpiry".to_string()),
                Just("Microsoft.EventGrid.SubscriptionValidationEvent".to_string()),
                ".{0,30}",
            ];
            let id = prop_oneof![
                "https://[a-z0-9.-]{0,20}(:[0-9]{1,6})?/secrets/[A-Za-z0-9-]{0,20}/[a-f0-9]{0,32}",
                "[a-z]{0,6}://[^ ]{0,40}",
                ".{0,40}",
            ];
            (event_type, id, "[A-Za-z0-9-]{0,130}|.{0,20}", scalar(), any::<bool>()).prop_map(
                |(event_type, id, name, extra, cloud)| {
                    let data = json!({ "Id": id, "ObjectName": name, "VaultName": extra, "validationCode": extra });
                    if cloud {
                        json!({ "specversion": "1.0", "type": event_type, "source": id, "id": "1", "data": data })
                    } else {
                        json!({ "id": "1", "eventType": event_type, "subject": name, "dataVersion": "1",
                            "eventTime": "2025-01-01T00:00:00Z", "data": data })
                    }
                },
            )
        }

        fn body() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,200}",
                proptest::collection::vec(event(), 0..6).prop_map(|events| Value::Array(events).to_string()),
                event().prop_map(|event| event.to_string()),
                proptest::collection::vec(scalar(), 0..4).prop_map(|items| Value::Array(items).to_string()),
            ]
        }

        fn media_type() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                Just("application/json"),
                Just("application/cloudevents+json"),
                Just("application/cloudevents-batch+json"),
                Just("text/plain"),
            ]
        }

        proptest! {
            #[test]
            fn any_delivery_gets_a_documented_answer(body in body(), media in media_type(), fail in any::<bool>()) {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                let refresh = Arc::new(FakeRefresh { readers: 1, fail, ..Default::default() });
                let state = state(Some(refresh.clone()));
                let headers = [("x-vaultsync-key", KEY), ("content-type", media)];
                let (status, _) = runtime.block_on(post(&state, PATH, &headers, &body));
                prop_assert!([200, 400, 413, 503].contains(&status.as_u16()), "{status} for {body:?}");
                for (vault, object) in refresh.calls.lock().expect("calls").iter() {
                    prop_assert!(vault_url(vault).as_deref() == Some(vault.as_str()), "{vault}");
                    prop_assert!(valid_object_name(object), "{object:?}");
                }
            }
        }
    }

    #[test]
    fn config_needs_a_key_file_and_a_sound_key() {
        let args = |extra: &[&str]| {
            let mut all = vec!["vaultsync-operator"];
            all.extend_from_slice(extra);
            Args::parse_from(all)
        };
        assert!(Config::from_args(&args(&[])).expect("disabled").is_none());
        let missing = Config::from_args(&args(&["--event-grid-addr", "127.0.0.1:0"])).expect_err("no key file");
        assert!(missing.to_string().contains("--event-grid-key-file"), "{missing}");

        let dir = std::env::temp_dir().join(format!("vaultsync-eventgrid-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("key");
        let path = file.to_str().expect("utf-8 path");
        let absent = Config::from_args(&args(&["--event-grid-addr", "127.0.0.1:0", "--event-grid-key-file", path]));
        assert!(format!("{:#}", absent.expect_err("absent file")).contains("reading the Event Grid key file"));
        std::fs::write(&file, "  \n").expect("write");
        let empty = Config::from_args(&args(&["--event-grid-addr", "127.0.0.1:0", "--event-grid-key-file", path]));
        assert!(empty.expect_err("empty").to_string().contains("is empty"));
        std::fs::write(&file, "short\n").expect("write");
        let short = Config::from_args(&args(&["--event-grid-addr", "127.0.0.1:0", "--event-grid-key-file", path]));
        let short = short.expect_err("short key").to_string();
        assert!(short.contains("shorter than 16") && !short.contains("short\n"), "{short}");
        std::fs::write(&file, format!("{KEY}\n")).expect("write");
        let config = Config::from_args(&args(&["--event-grid-addr", "127.0.0.1:0", "--event-grid-key-file", path]))
            .expect("valid")
            .expect("enabled");
        assert!(config.key.matches(KEY.as_bytes()), "the trailing newline is not part of the key");
        assert!(!format!("{config:?}").contains(KEY), "Debug never shows the key");
        let bad_header = Config::new("127.0.0.1:0".parse().expect("addr"), KEY.as_bytes(), "bad header");
        assert!(bad_header.is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn the_key_matches_only_itself() {
        let key = SharedKey::new(KEY.as_bytes());
        assert!(key.matches(KEY.as_bytes()));
        assert!(!key.matches(b""));
        assert!(!key.matches(&KEY.as_bytes()[..KEY.len() - 1]));
        assert!(!key.matches(format!("{KEY}x").as_bytes()));
        assert!(!key.tag.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "the key is not stored as is");
    }

    #[test]
    fn vault_urls_are_scheme_and_authority() {
        assert_eq!(
            vault_url("https://MyVault.vault.azure.net/secrets/db/0123").as_deref(),
            Some("https://myvault.vault.azure.net")
        );
        assert_eq!(
            vault_url("https://myvault.vault.azure.net:443/keys/k").as_deref(),
            Some("https://myvault.vault.azure.net")
        );
        assert_eq!(vault_url("https://localhost:8443/secrets/x/1").as_deref(), Some("https://localhost:8443"));
        for bad in ["", "myvault/secrets/x", "/secrets/x", "ftp://vault/secrets/x", "https://user@vault/secrets/x"] {
            assert_eq!(vault_url(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn deliveries_parse_in_both_schemas() {
        let json = HeaderMap::new();
        let events = parse_delivery(&json, br#"[{"eventType":"A","data":{}},{"id":"2"},3]"#).expect("array");
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].as_ref().expect("first").event_type, "A");
        assert_eq!(events[1].as_ref().expect_err("no type"), &"an event has no type");
        assert!(events[2].is_err());

        let mut cloud = HeaderMap::new();
        cloud.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents+json; charset=utf-8"));
        let single = parse_delivery(&cloud, br#"{"specversion":"1.0","type":"B","eventType":"no","data":{}}"#);
        assert_eq!(single.expect("single")[0].as_ref().expect("event").event_type, "B");
        assert_eq!(parse_delivery(&cloud, b"[]"), Err(Invalid::Malformed("a CloudEvents delivery is one JSON object")));

        let mut batch = HeaderMap::new();
        batch.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/cloudevents-batch+json"));
        let two = parse_delivery(&batch, br#"[{"specversion":"1.0","type":"B"},{"specversion":"1.0","type":"C"}]"#);
        assert_eq!(two.expect("batch").len(), 2);

        let mut binary = HeaderMap::new();
        binary.insert("ce-type", HeaderValue::from_static("D"));
        binary.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let one = parse_delivery(&binary, br#"{"ObjectName":"x"}"#).expect("binary mode");
        assert_eq!(one[0].as_ref().expect("event").event_type, "D");

        assert!(matches!(parse_delivery(&json, b"{not json"), Err(Invalid::Malformed(_))));
        assert!(matches!(parse_delivery(&json, b"[]"), Err(Invalid::Malformed(_))));
        assert!(matches!(parse_delivery(&json, b"\"text\""), Err(Invalid::Malformed(_))));
        let many = Value::Array(vec![json!({"eventType": "A"}); MAX_EVENTS + 1]).to_string();
        assert_eq!(parse_delivery(&json, many.as_bytes()), Err(Invalid::TooMany));
        let most = Value::Array(vec![json!({"eventType": "A"}); MAX_EVENTS]).to_string();
        assert_eq!(parse_delivery(&json, most.as_bytes()).expect("100 events").len(), MAX_EVENTS);
    }

    #[tokio::test]
    async fn one_call_per_object_and_statuses_by_outcome() {
        let fake = Arc::new(FakeRefresh { readers: 2, ..Default::default() });
        let state = state(Some(fake.clone()));
        let key = [("x-vaultsync-key", KEY)];
        let vault = "https://Vault.vault.azure.net";
        let mut upper = secret_event(vault, "DB-password");
        upper["eventType"] = json!("microsoft.keyvault.secretnewversioncreated");
        let body = json!([
            secret_event(vault, "db-password"),
            upper,
            secret_event(vault, "other"),
            { "eventType": "Microsoft.KeyVault.SecretNearExpiry", "data": {} },
            { "eventType": "Microsoft.Storage.BlobCreated", "data": {} },
            { "eventType": "Microsoft.KeyVault.SecretNewVersionCreated", "data": { "ObjectName": "x" } },
        ]);
        let (status, summary) = post(&state, PATH, &key, &body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{summary}");
        assert_eq!(summary, json!({ "received": 6, "refreshed": 3, "ignored": 1, "rejected": 2 }));
        let calls = fake.calls.lock().expect("calls").clone();
        assert_eq!(
            calls,
            [
                ("https://vault.vault.azure.net".to_owned(), "db-password".to_owned()),
                ("https://vault.vault.azure.net".to_owned(), "other".to_owned())
            ],
            "one call per distinct object"
        );
        let text = state.metrics.encode();
        for line in [
            r#"vaultsync_vault_events_total{type="Microsoft.KeyVault.SecretNewVersionCreated",result="refreshed"} 3"#,
            r#"vaultsync_vault_events_total{type="Microsoft.KeyVault.SecretNearExpiry",result="ignored"} 1"#,
            r#"vaultsync_vault_events_total{type="other",result="rejected"} 1"#,
            r#"vaultsync_vault_events_total{type="Microsoft.KeyVault.SecretNewVersionCreated",result="rejected"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in:\n{text}");
        }

        // Nothing usable: 400, with the reasons and no call.
        let (status, answer) =
            post(&state, PATH, &key, &json!([{ "eventType": "Microsoft.Storage.BlobCreated" }]).to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(answer["reasons"], json!(["unknown event type"]));
        assert_eq!(fake.calls.lock().expect("calls").len(), 2);

        // The key in the query works; a wrong one anywhere does not.
        let event = json!([secret_event(vault, "db-password")]).to_string();
        assert_eq!(post(&state, &format!("{PATH}?key={KEY}"), &[], &event).await.0, StatusCode::OK);
        assert_eq!(post(&state, &format!("{PATH}?key=wrong"), &[], &event).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&state, PATH, &[("x-vaultsync-key", "wrong")], &event).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&state, PATH, &[], &event).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(fake.calls.lock().expect("calls").len(), 3, "only the authorized delivery called");
    }

    /// A chunked body (no Content-Length) over 1 MiB is cut off at the limit: 413, no call.
    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_refused() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let fake = Arc::new(FakeRefresh { readers: 1, ..Default::default() });
        let config =
            Config::new("127.0.0.1:0".parse().expect("addr"), KEY.as_bytes(), "x-vaultsync-key").expect("config");
        let slot = RefreshSlot::default();
        slot.set(fake.clone());
        let app = router(config, Metrics::new(), slot);
        let (listener, addr) = bind("127.0.0.1:0".parse().expect("addr")).await.expect("bind");
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut reader, mut writer) = stream.into_split();
        let writing = tokio::spawn(async move {
            let head = format!(
                "POST {PATH} HTTP/1.1\r\nHost: x\r\nx-vaultsync-key: {KEY}\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n"
            );
            writer.write_all(head.as_bytes()).await?;
            let chunk = vec![b' '; 64 * 1024];
            for _ in 0..17 {
                writer.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await?;
                writer.write_all(&chunk).await?;
                writer.write_all(b"\r\n").await?;
            }
            writer.write_all(b"0\r\n\r\n").await
        });
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), reader.read_to_end(&mut answer))
            .await
            .expect("an answer in time");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(fake.calls.lock().expect("calls").is_empty());
        writing.abort();
        server.abort();
    }

    #[tokio::test]
    async fn validation_is_answered_and_failures_ask_for_a_retry() {
        let standby = state(None);
        let key = [("x-vaultsync-key", KEY)];
        let validation = json!([{ "id": "v", "eventType": VALIDATION, "subject": "", "dataVersion": "1",
            "data": { "validationCode": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6", "validationUrl": "https://x" } }]);
        let (status, answer) = post(&standby, PATH, &key, &validation.to_string()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, json!({ "validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" }));
        let no_code = json!([{ "eventType": VALIDATION, "data": {} }]).to_string();
        assert_eq!(post(&standby, PATH, &key, &no_code).await.0, StatusCode::BAD_REQUEST);

        // A standby (no trigger yet) and a failing apiserver: 503, so Event Grid delivers again.
        let event = json!([secret_event("https://v.vault.azure.net", "db")]).to_string();
        assert_eq!(post(&standby, PATH, &key, &event).await.0, StatusCode::SERVICE_UNAVAILABLE);
        let failing = state(Some(Arc::new(FakeRefresh { fail: true, ..Default::default() })));
        assert_eq!(post(&failing, PATH, &key, &event).await.0, StatusCode::SERVICE_UNAVAILABLE);
        let text = failing.metrics.encode();
        assert!(text.contains(r#"type="Microsoft.KeyVault.SecretNewVersionCreated",result="failed"} 1"#), "{text}");
    }
}
