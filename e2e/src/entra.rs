//! A Microsoft Entra token service for tests, over HTTPS on loopback, with the instance metadata
//! (managed identity) endpoint beside it over plain HTTP, as on an Azure VM.
//!
//! It answers what Microsoft's SDKs ask for: the tenant's OpenID configuration
//! (`/{tenant}/v2.0/.well-known/openid-configuration`), and the client-credentials grant at
//! `/{tenant}/oauth2/v2.0/token` with a client secret, a certificate-signed client assertion, or a
//! federated (workload identity) assertion. A federated assertion is checked as Entra does: the
//! issuer's discovery document and JWKS are fetched (the local apiserver is the issuer), the
//! signature (RS256, or the ES256 the local apiserver signs with) is verified with the JWKS key,
//! then `iss`, `sub`, `aud`, `exp` and `nbf` are matched against the configured federated
//! credentials. Scopes are `<resource>/.default` for a resource
//! the server knows. Faults (429 with `Retry-After`, 5xx, IMDS 404/410) can be injected for a
//! number of calls, and every grant is counted. Nothing is logged.

use std::{
    collections::{BTreeSet, HashMap, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use crate::tls::{TestCa, loopback_listener, serve_https};

/// The resource of Key Vault's data plane in the public cloud, known to every server.
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const TOKEN_LIFETIME_SECS: u64 = 3599;

/// A federated identity credential of the app `client_id`: tokens that the local apiserver (the
/// issuer) signed for `subject` and `audience` may act as that app.
#[derive(Clone, Debug)]
pub struct Federation {
    pub client_id: String,
    /// `system:serviceaccount:<namespace>:<name>`
    pub subject: String,
    pub audience: String,
    /// The access token issued to this client.
    pub access_token: String,
}

/// A certificate credential: assertions signed by this certificate's key may act as `client_id`.
#[derive(Clone, Debug)]
pub struct CertificateCredential {
    pub client_id: String,
    /// The certificate, PEM (only the public part is needed).
    pub certificate_pem: String,
    pub access_token: String,
}

/// A client secret of the app `client_id`.
#[derive(Clone, Debug)]
pub struct ClientSecret {
    pub client_id: String,
    pub secret: String,
    pub access_token: String,
}

/// A managed identity the instance metadata endpoint hands tokens for: the system-assigned one
/// (`client_id` `None`, used when a request names no identity) or a user-assigned one.
#[derive(Clone, Debug)]
pub struct ManagedIdentity {
    pub client_id: Option<String>,
    pub access_token: String,
}

/// What a request asked for, as counted by [`EntraServer::calls`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Grant {
    /// `GET /{tenant}/v2.0/.well-known/openid-configuration`
    Discovery,
    ClientSecret,
    /// A certificate-signed client assertion.
    ClientCertificate,
    /// A federated (workload identity) client assertion.
    Federated,
    /// The instance metadata endpoint.
    ManagedIdentity,
    /// A token request whose client or credential kind the server does not know.
    Unknown,
}

/// Where injected faults apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The tenant's token endpoint (every grant).
    Token,
    /// The instance metadata endpoint.
    Metadata,
}

struct Fault {
    endpoint: Endpoint,
    status: StatusCode,
    retry_after_secs: Option<u64>,
}

/// The configuration of an [`EntraServer`], built with [`EntraServer::builder`].
pub struct EntraBuilder {
    kube: Option<kube::Client>,
    federations: Vec<Federation>,
    certificates: Vec<CertificateCredential>,
    secrets: Vec<ClientSecret>,
    identities: Vec<ManagedIdentity>,
    resources: BTreeSet<String>,
    token_lifetime_secs: u64,
}

impl EntraBuilder {
    /// Tokens of the token endpoint last this long (default 3599 s, as Entra's do), so a test can see one expire.
    pub fn token_lifetime(mut self, lifetime: std::time::Duration) -> Self {
        self.token_lifetime_secs = lifetime.as_secs().max(1);
        self
    }

    pub fn federation(mut self, federation: Federation) -> Self {
        self.federations.push(federation);
        self
    }

    pub fn certificate(mut self, credential: CertificateCredential) -> Self {
        self.certificates.push(credential);
        self
    }

    pub fn client_secret(mut self, secret: ClientSecret) -> Self {
        self.secrets.push(secret);
        self
    }

    pub fn managed_identity(mut self, identity: ManagedIdentity) -> Self {
        self.identities.push(identity);
        self
    }

    /// Another resource tokens may be asked for (such as a test vault's challenge resource);
    /// `https://vault.azure.net` is always known.
    pub fn resource(mut self, resource: &str) -> Self {
        self.resources.insert(resource.trim_end_matches('/').to_string());
        self
    }

    pub async fn start(self) -> anyhow::Result<EntraServer> {
        let (listener, addr) = loopback_listener().await?;
        let (metadata_listener, metadata_addr) = loopback_listener().await?;
        let url = format!("https://localhost:{}", addr.port());
        let shared = Arc::new(Shared {
            url: url.clone(),
            kube: self.kube,
            federations: self.federations.into_iter().map(|f| (f.client_id.clone(), f)).collect(),
            certificates: self.certificates.into_iter().map(|c| (c.client_id.clone(), c)).collect(),
            secrets: self.secrets.into_iter().map(|s| (s.client_id.clone(), s)).collect(),
            identities: self.identities,
            state: Mutex::new(Mutable { resources: self.resources, ..Mutable::default() }),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            token_lifetime_secs: self.token_lifetime_secs,
        });
        let app = Router::new()
            .route("/{tenant}/v2.0/.well-known/openid-configuration", get(openid_configuration))
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(shared.clone());
        let metadata =
            Router::new().route("/metadata/identity/oauth2/token", get(metadata_token)).with_state(shared.clone());
        let config = TestCa::shared().loopback_server_config()?;
        let tasks = vec![
            tokio::spawn(serve_https(listener, config, app)),
            tokio::spawn(async move {
                let _ = axum::serve(metadata_listener, metadata).await;
            }),
        ];
        Ok(EntraServer { url, metadata_url: format!("http://127.0.0.1:{}", metadata_addr.port()), shared, tasks })
    }
}

#[derive(Default)]
struct Mutable {
    faults: VecDeque<Fault>,
    calls: HashMap<Grant, u64>,
    /// Resources tokens may be asked for besides the public Key Vault one.
    resources: BTreeSet<String>,
}

struct Shared {
    /// `https://localhost:PORT`: the authority host, and so the audience of certificate assertions.
    url: String,
    kube: Option<kube::Client>,
    federations: HashMap<String, Federation>,
    certificates: HashMap<String, CertificateCredential>,
    secrets: HashMap<String, ClientSecret>,
    identities: Vec<ManagedIdentity>,
    state: Mutex<Mutable>,
    issued: AtomicU64,
    refused: AtomicU64,
    token_lifetime_secs: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Mutable> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, grant: Grant) {
        *self.lock().calls.entry(grant).or_default() += 1;
    }

    /// Counts a call of `grant`; answers with the next fault queued for `endpoint`, if any.
    fn enter(&self, grant: Grant, endpoint: Endpoint) -> Option<Response> {
        self.count(grant);
        let mut state = self.lock();
        let position = state.faults.iter().position(|f| f.endpoint == endpoint)?;
        let fault = state.faults.remove(position)?;
        drop(state);
        self.refused.fetch_add(1, Ordering::Relaxed);
        Some(fault.response())
    }

    /// `<resource>/.default` for a known resource; the resource.
    fn resource_of_scope<'a>(&self, scope: &'a str) -> Option<&'a str> {
        // Several scopes may be asked for together; Entra answers for the resource's `.default` one.
        let scope = scope.split(' ').find(|s| s.ends_with("/.default"))?;
        let resource = scope.strip_suffix("/.default")?;
        self.knows(resource).then_some(resource)
    }

    fn knows(&self, resource: &str) -> bool {
        let resource = resource.trim_end_matches('/');
        resource == KEY_VAULT_RESOURCE || self.lock().resources.contains(resource)
    }
}

/// The token service; its tasks are aborted on drop.
pub struct EntraServer {
    url: String,
    metadata_url: String,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for EntraServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl EntraServer {
    /// A server configured by the returned builder. `kube` (an admin client of the local apiserver)
    /// is needed to check federated assertions.
    pub fn builder(kube: Option<kube::Client>) -> EntraBuilder {
        EntraBuilder {
            kube,
            federations: Vec::new(),
            certificates: Vec::new(),
            secrets: Vec::new(),
            identities: Vec::new(),
            resources: BTreeSet::new(),
            token_lifetime_secs: TOKEN_LIFETIME_SECS,
        }
    }

    pub async fn start(kube: kube::Client, federations: Vec<Federation>) -> anyhow::Result<Self> {
        Self::start_with(kube, federations, Vec::new()).await
    }

    /// Also accepts certificate-signed client assertions from `certificates`.
    pub async fn start_with(
        kube: kube::Client,
        federations: Vec<Federation>,
        certificates: Vec<CertificateCredential>,
    ) -> anyhow::Result<Self> {
        let builder = federations.into_iter().fold(Self::builder(Some(kube)), EntraBuilder::federation);
        certificates.into_iter().fold(builder, EntraBuilder::certificate).start().await
    }

    /// Knows `resource` from now on (such as the challenge resource of a vault started after this
    /// server), as [`EntraBuilder::resource`] does.
    pub fn add_resource(&self, resource: &str) {
        self.shared.lock().resources.insert(resource.trim_end_matches('/').to_string());
    }

    /// The authority host to configure (`https://localhost:PORT`).
    pub fn authority_host(&self) -> &str {
        &self.url
    }

    /// The instance metadata service's origin (`http://127.0.0.1:PORT`), what Microsoft's SDKs take
    /// in `AZURE_POD_IDENTITY_AUTHORITY_HOST` instead of `http://169.254.169.254`.
    pub fn metadata_host(&self) -> &str {
        &self.metadata_url
    }

    /// The instance metadata token URL (`http://127.0.0.1:PORT/metadata/identity/oauth2/token`).
    pub fn metadata_endpoint(&self) -> String {
        format!("{}/metadata/identity/oauth2/token", self.metadata_url)
    }

    pub fn ca_pem(&self) -> &str {
        TestCa::shared().ca_pem()
    }

    /// Tokens issued and requests refused (including injected faults) so far, over every grant.
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.issued.load(Ordering::Relaxed), self.shared.refused.load(Ordering::Relaxed))
    }

    /// Requests of `grant` so far, whatever they were answered.
    pub fn calls(&self, grant: Grant) -> u64 {
        self.shared.lock().calls.get(&grant).copied().unwrap_or(0)
    }

    /// Answers the next `n` requests to `endpoint` with `status` (and `Retry-After` if given),
    /// after any faults still queued for it. Refused here, they are counted but issue nothing.
    pub fn fail_next(&self, endpoint: Endpoint, n: usize, status: u16, retry_after_secs: Option<u64>) {
        let status = StatusCode::from_u16(status).expect("fail_next needs a valid HTTP status");
        let mut state = self.shared.lock();
        state.faults.extend((0..n).map(|_| Fault { endpoint, status, retry_after_secs }));
    }
}

// === the tenant's endpoints ===

async fn openid_configuration(State(shared): State<Arc<Shared>>, Path(tenant): Path<String>) -> Response {
    shared.count(Grant::Discovery);
    let base = format!("{}/{tenant}", shared.url);
    Json(json!({
        "issuer": format!("{base}/v2.0"),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "device_authorization_endpoint": format!("{base}/oauth2/v2.0/devicecode"),
        "jwks_uri": format!("{}/{tenant}/discovery/v2.0/keys", shared.url),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "tenant_region_scope": null,
        "cloud_instance_name": "localhost",
    }))
    .into_response()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let client_id = field("client_id");
    let grant = if field("client_assertion_type") == JWT_BEARER {
        if shared.certificates.contains_key(client_id) {
            Grant::ClientCertificate
        } else if shared.federations.contains_key(client_id) {
            Grant::Federated
        } else {
            Grant::Unknown
        }
    } else if shared.secrets.contains_key(client_id) {
        Grant::ClientSecret
    } else {
        Grant::Unknown
    };
    if let Some(fault) = shared.enter(grant, Endpoint::Token) {
        return fault;
    }
    let answer = match issue(&shared, grant, &tenant, &form).await {
        Ok(access_token) => {
            shared.issued.fetch_add(1, Ordering::Relaxed);
            return Json(json!({
                "token_type": "Bearer",
                "expires_in": shared.token_lifetime_secs,
                "ext_expires_in": shared.token_lifetime_secs,
                "access_token": access_token,
            }))
            .into_response();
        }
        Err(refusal) => refusal,
    };
    shared.refused.fetch_add(1, Ordering::Relaxed);
    answer.into_response()
}

/// An Entra error answer: `error`, `error_description` starting with the AADSTS code, `error_codes`.
struct Refusal {
    status: StatusCode,
    error: &'static str,
    code: u32,
    description: String,
}

impl Refusal {
    fn new(status: StatusCode, error: &'static str, code: u32, description: impl Into<String>) -> Self {
        Self { status, error, code, description: description.into() }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({
            "error": self.error,
            "error_description": format!("AADSTS{}: {}", self.code, self.description),
            "error_codes": [self.code],
            "timestamp": now_stamp(),
            "trace_id": uuid::Uuid::new_v4().to_string(),
            "correlation_id": uuid::Uuid::new_v4().to_string(),
        });
        (self.status, Json(body)).into_response()
    }
}

/// Checks the request of `grant`; the access token to issue.
async fn issue(shared: &Shared, grant: Grant, tenant: &str, form: &HashMap<String, String>) -> Result<String, Refusal> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        let message = format!("The grant type '{}' is not supported here.", field("grant_type"));
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "unsupported_grant_type", 70003, message));
    }
    let client_id = field("client_id");
    if grant == Grant::Unknown {
        let message = format!("Application with identifier '{client_id}' was not found in the directory '{tenant}'.");
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "unauthorized_client", 700016, message));
    }
    if shared.resource_of_scope(field("scope")).is_none() {
        let message = format!(
            "The provided value for scope {} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            field("scope")
        );
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "invalid_scope", 1002012, message));
    }
    let invalid_client =
        |code, message: String| Refusal::new(StatusCode::UNAUTHORIZED, "invalid_client", code, message);
    match grant {
        Grant::ClientSecret => {
            let registered = &shared.secrets[client_id];
            if registered.secret != field("client_secret") {
                let message = format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                );
                return Err(invalid_client(7000215, message));
            }
            Ok(registered.access_token.clone())
        }
        Grant::ClientCertificate => {
            let credential = &shared.certificates[client_id];
            let audience = format!("{}/{tenant}/oauth2/v2.0/token", shared.url);
            verify_certificate_assertion(credential, field("client_assertion"), &audience).map_err(|why| {
                invalid_client(700027, format!("Client assertion failed signature validation: {why}"))
            })?;
            Ok(credential.access_token.clone())
        }
        Grant::Federated => {
            let federation = &shared.federations[client_id];
            verify_federated_assertion(shared, federation, field("client_assertion")).await?;
            Ok(federation.access_token.clone())
        }
        Grant::Discovery | Grant::ManagedIdentity | Grant::Unknown => unreachable!("not a token grant"),
    }
}

// === federated (workload identity) assertions ===

/// Checks a federated assertion as Entra does: the issuer's discovery document and JWKS, the
/// signature with the key the header names, then issuer, subject, audience and lifetime.
async fn verify_federated_assertion(shared: &Shared, federation: &Federation, jwt: &str) -> Result<(), Refusal> {
    let invalid = |code, message: String| Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", code, message);
    let token = Jwt::parse(jwt).ok_or_else(|| invalid(50027, "The client assertion is not a valid JWT.".into()))?;
    let kube = shared.kube.as_ref().ok_or_else(|| {
        invalid(700211, "No matching federated identity record found for presented assertion issuer.".into())
    })?;
    let issuer = token.claims["iss"].as_str().unwrap_or_default();
    let trusted = fetch_json(kube, "/.well-known/openid-configuration")
        .await
        .map_err(|e| invalid(700211, format!("The issuer's OpenID configuration could not be read: {e}")))?;
    if trusted["issuer"].as_str() != Some(issuer) {
        let message = format!(
            "No matching federated identity record found for presented assertion issuer '{issuer}'. Please note that the matching is done using a case-sensitive comparison."
        );
        return Err(invalid(700211, message));
    }
    let jwks_path = trusted["jwks_uri"].as_str().and_then(|uri| uri.strip_prefix(issuer)).unwrap_or_default();
    let jwks = fetch_json(kube, jwks_path)
        .await
        .map_err(|e| invalid(700211, format!("The issuer's signing keys could not be read: {e}")))?;
    token
        .verify(&jwks)
        .map_err(|why| invalid(50013, format!("Assertion failed signature validation. [Reason - {why}]")))?;
    let subject = token.claims["sub"].as_str().unwrap_or_default();
    if subject != federation.subject {
        let message = format!(
            "No matching federated identity record found for presented assertion subject '{subject}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion."
        );
        return Err(invalid(700213, message));
    }
    let audiences = match &token.claims["aud"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !audiences.contains(&federation.audience.as_str()) {
        let message = format!(
            "No matching federated identity record found for presented assertion audience '{}'.",
            audiences.join(",")
        );
        return Err(invalid(700212, message));
    }
    let now = unix_now();
    let expired = token.claims["exp"].as_u64().is_none_or(|exp| exp <= now);
    let early = token.claims["nbf"].as_u64().is_some_and(|nbf| nbf > now);
    if expired || early {
        return Err(invalid(700024, "Client assertion is not within its valid time range.".into()));
    }
    Ok(())
}

async fn fetch_json(kube: &kube::Client, path: &str) -> anyhow::Result<Value> {
    anyhow::ensure!(path.starts_with('/'), "the document is not served by the issuer");
    let request = axum::http::Request::get(path).body(Vec::new())?;
    Ok(serde_json::from_str(&kube.request_text(request).await?)?)
}

/// A compact JWS, decoded but not yet verified.
struct Jwt<'a> {
    signed: &'a str,
    header: Value,
    claims: Value,
    signature: Vec<u8>,
}

impl<'a> Jwt<'a> {
    fn parse(jwt: &'a str) -> Option<Self> {
        let (signed, signature) = jwt.rsplit_once('.')?;
        let (header, claims) = signed.split_once('.')?;
        let decode = |part: &str| -> Option<Value> { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok() };
        Some(Self {
            signed,
            header: decode(header)?,
            claims: decode(claims)?,
            signature: URL_SAFE_NO_PAD.decode(signature).ok()?,
        })
    }

    /// Verifies the signature with the key of `jwks` that the header's `kid` names: RS256 (what Entra
    /// documents as supported) or ES256 (what the local apiserver signs with; Entra says other
    /// algorithms may work but are untested).
    fn verify(&self, jwks: &Value) -> Result<(), String> {
        use ring::signature::{
            ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
        };
        let kid = self.header["kid"].as_str().unwrap_or_default();
        let keys = jwks["keys"].as_array().map(Vec::as_slice).unwrap_or_default();
        let key = keys
            .iter()
            .find(|k| k["kid"] == kid)
            .ok_or_else(|| format!("no signing key '{kid}' is published by the issuer"))?;
        let member = |name: &str| key[name].as_str().and_then(|v| URL_SAFE_NO_PAD.decode(v).ok());
        let message = self.signed.as_bytes();
        let verified = match (self.header["alg"].as_str(), key["kty"].as_str()) {
            (Some("RS256"), Some("RSA")) => {
                let (n, e) = member("n").zip(member("e")).ok_or("the signing key is malformed")?;
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, message, &self.signature)
            }
            (Some("ES256"), Some("EC")) if key["crv"] == "P-256" => {
                let (x, y) = member("x").zip(member("y")).ok_or("the signing key is malformed")?;
                let point = [&[4u8][..], &x, &y].concat();
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message, &self.signature)
            }
            (alg, kty) => return Err(format!("the algorithm {alg:?} with a {kty:?} key is not accepted")),
        };
        verified.map_err(|_| "the signature does not verify".to_string())
    }
}

/// Checks a certificate-signed client assertion: thumbprint, signature (PS256 or RS256), audience,
/// issuer and subject, and lifetime.
fn verify_certificate_assertion(credential: &CertificateCredential, jwt: &str, audience: &str) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let token = Jwt::parse(jwt).ok_or("malformed assertion")?;
    let der = CertificateDer::pem_slice_iter(credential.certificate_pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .ok_or("no certificate registered")?;
    let thumbprint = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()));
    if token.header["x5t#S256"] != thumbprint.as_str() {
        return Err("the assertion names another certificate".into());
    }
    let algorithm = match token.header["alg"].as_str() {
        Some("PS256") => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        Some("RS256") => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        _ => return Err("unsupported algorithm".into()),
    };
    let certificate = webpki::EndEntityCert::try_from(&der).map_err(|e| e.to_string())?;
    certificate
        .verify_signature(algorithm, token.signed.as_bytes(), &token.signature)
        .map_err(|_| "signature does not verify".to_string())?;
    if token.claims["aud"] != audience {
        return Err(format!("wrong audience {}", token.claims["aud"]));
    }
    if token.claims["iss"] != credential.client_id.as_str() || token.claims["sub"] != credential.client_id.as_str() {
        return Err("issuer and subject must be the client id".into());
    }
    if token.claims["exp"].as_u64().is_none_or(|exp| exp <= unix_now()) {
        return Err("the assertion expired".into());
    }
    Ok(())
}

// === the instance metadata endpoint ===

/// `GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=...` with `Metadata: true`,
/// answered as the instance metadata service does (every number a string).
async fn metadata_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let Some(fault) = shared.enter(Grant::ManagedIdentity, Endpoint::Metadata) {
        return fault;
    }
    let refuse = |status: StatusCode, error: &str, description: &str| {
        shared.refused.fetch_add(1, Ordering::Relaxed);
        (status, Json(json!({ "error": error, "error_description": description }))).into_response()
    };
    if headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "Required metadata header not specified");
    }
    if query.get("api-version").is_none_or(|v| v.is_empty()) {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "Required query variable 'api-version' is missing");
    }
    let Some(resource) = query.get("resource").filter(|r| !r.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "Required audience parameter not specified");
    };
    let wanted = query.get("client_id");
    let Some(identity) = shared.identities.iter().find(|i| i.client_id.as_ref() == wanted) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_request", "Identity not found");
    };
    if !shared.knows(resource) {
        let description = format!("AADSTS500011: The resource principal named {resource} was not found in the tenant.");
        return refuse(StatusCode::BAD_REQUEST, "invalid_resource", &description);
    }
    shared.issued.fetch_add(1, Ordering::Relaxed);
    let now = unix_now();
    Json(json!({
        "access_token": identity.access_token,
        "client_id": identity.client_id.clone().unwrap_or_else(|| "system-assigned".into()),
        "expires_in": TOKEN_LIFETIME_SECS.to_string(),
        "expires_on": (now + TOKEN_LIFETIME_SECS).to_string(),
        "ext_expires_in": TOKEN_LIFETIME_SECS.to_string(),
        "not_before": now.to_string(),
        "resource": resource,
        "token_type": "Bearer",
    }))
    .into_response()
}

impl Fault {
    fn response(&self) -> Response {
        let reason = self.status.canonical_reason().unwrap_or("error");
        let body = match (self.endpoint, self.status.as_u16()) {
            (Endpoint::Metadata, 404) => {
                json!({ "error": "not_found", "error_description": "Identity not yet available" })
            }
            (Endpoint::Metadata, 410) => json!({ "error": "gone", "error_description": "IMDS is being updated" }),
            (Endpoint::Metadata, 429) => {
                json!({ "error": "too_many_requests", "error_description": "Too many requests" })
            }
            (Endpoint::Metadata, _) => {
                json!({ "error": "unknown", "error_description": format!("Injected fault: {reason}") })
            }
            (Endpoint::Token, 429) => {
                json!({ "error": "temporarily_unavailable", "error_description": "AADSTS50196: The server terminated an operation because it encountered a client request loop. Injected fault.", "error_codes": [50196] })
            }
            (Endpoint::Token, _) => {
                json!({ "error": "temporarily_unavailable", "error_description": format!("AADSTS90033: A transient error has occurred. Injected fault: {reason}"), "error_codes": [90033] })
            }
        };
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The current time as Entra stamps its errors (`2026-12-01 10:00:00Z`).
fn now_stamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{} {:02}:{:02}:{:02}Z", now.date(), now.hour(), now.minute(), now.second())
}
