//! A Microsoft Entra token endpoint for tests, over HTTPS on loopback. It implements the
//! client-credentials grant with a client assertion (what workload identity uses): the assertion
//! must be a Kubernetes service-account token that the real apiserver accepts (TokenReview) for
//! the federated audience and subject configured for the client ID. Then it issues that
//! client's access token. Certificate-signed assertions and client secrets (service principals)
//! are accepted for the clients registered with them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Form, Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use serde_json::json;

use crate::tls::{TestCa, loopback_listener, serve_https};

/// A federated identity credential: tokens of `subject` for `audience` may act as `client_id`.
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

struct Shared {
    /// `https://localhost:PORT`: the authority host, and so the audience of assertions.
    url: String,
    kube: kube::Client,
    federations: HashMap<String, Federation>,
    certificates: HashMap<String, CertificateCredential>,
    /// Client secrets: client ID -> (secret, access token issued).
    secrets: Mutex<HashMap<String, (String, String)>>,
    issued: AtomicU64,
    refused: AtomicU64,
}

pub struct EntraServer {
    url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EntraServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EntraServer {
    pub async fn start(kube: kube::Client, federations: Vec<Federation>) -> anyhow::Result<Self> {
        Self::start_with(kube, federations, Vec::new()).await
    }

    /// Also accepts certificate-signed client assertions from `certificates`.
    pub async fn start_with(
        kube: kube::Client,
        federations: Vec<Federation>,
        certificates: Vec<CertificateCredential>,
    ) -> anyhow::Result<Self> {
        let (listener, addr) = loopback_listener().await?;
        let url = format!("https://localhost:{}", addr.port());
        let shared = Arc::new(Shared {
            url: url.clone(),
            kube,
            federations: federations.into_iter().map(|f| (f.client_id.clone(), f)).collect(),
            certificates: certificates.into_iter().map(|c| (c.client_id.clone(), c)).collect(),
            secrets: Mutex::default(),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let app = Router::new().route("/{tenant}/oauth2/v2.0/token", post(token)).with_state(shared.clone());
        let task = tokio::spawn(serve_https(listener, TestCa::shared().loopback_server_config()?, app));
        Ok(Self { url, shared, task })
    }

    /// The authority host to configure (`https://localhost:PORT`).
    pub fn authority_host(&self) -> &str {
        &self.url
    }

    pub fn ca_pem(&self) -> &str {
        TestCa::shared().ca_pem()
    }

    /// Also accepts the client-credentials grant with `secret` for `client_id` (a service principal's client
    /// secret), issuing `access_token`.
    pub fn add_client_secret(&self, client_id: &str, secret: &str, access_token: &str) {
        let mut secrets = self.shared.secrets.lock().expect("secrets lock");
        secrets.insert(client_id.into(), (secret.into(), access_token.into()));
    }

    /// Tokens issued and requests refused so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.shared.issued.load(Ordering::Relaxed), self.shared.refused.load(Ordering::Relaxed))
    }
}

fn refuse(shared: &Shared, status: StatusCode, error: &str, description: &str) -> Response {
    shared.refused.fetch_add(1, Ordering::Relaxed);
    (status, Json(json!({ "error": error, "error_description": description }))).into_response()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return refuse(&shared, StatusCode::BAD_REQUEST, "unsupported_grant_type", "only client_credentials");
    }
    if field("scope") != "https://vault.azure.net/.default" {
        return refuse(&shared, StatusCode::BAD_REQUEST, "invalid_scope", "scope must be Key Vault's .default");
    }
    if form.contains_key("client_secret") {
        let known = shared.secrets.lock().expect("secrets lock").get(field("client_id")).cloned();
        return match known {
            Some((secret, access_token)) if secret == field("client_secret") => {
                shared.issued.fetch_add(1, Ordering::Relaxed);
                Json(json!({ "token_type": "Bearer", "expires_in": 3600, "access_token": access_token }))
                    .into_response()
            }
            _ => refuse(
                &shared,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided",
            ),
        };
    }
    if field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return refuse(
            &shared,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a jwt-bearer client_assertion is required",
        );
    }
    if let Some(credential) = shared.certificates.get(field("client_id")) {
        let audience = format!("{}/{tenant}/oauth2/v2.0/token", shared.url);
        return match verify_certificate_assertion(credential, field("client_assertion"), &audience) {
            Ok(()) => {
                shared.issued.fetch_add(1, Ordering::Relaxed);
                Json(json!({ "token_type": "Bearer", "expires_in": 3600, "access_token": credential.access_token }))
                    .into_response()
            }
            Err(why) => refuse(&shared, StatusCode::UNAUTHORIZED, "invalid_client", &format!("AADSTS700027: {why}")),
        };
    }
    let Some(federation) = shared.federations.get(field("client_id")) else {
        return refuse(&shared, StatusCode::BAD_REQUEST, "unauthorized_client", "AADSTS700016: unknown application");
    };
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: field("client_assertion").to_string(),
            audiences: Some(vec![federation.audience.clone()]),
        },
        ..Default::default()
    };
    let reviewed = Api::<TokenReview>::all(shared.kube.clone()).create(&PostParams::default(), &review).await;
    let status = reviewed.ok().and_then(|r| r.status);
    let subject = status.as_ref().and_then(|s| s.user.as_ref()).and_then(|u| u.username.clone());
    let authenticated = status.as_ref().and_then(|s| s.authenticated) == Some(true);
    if !authenticated || subject.as_deref() != Some(federation.subject.as_str()) {
        return refuse(
            &shared,
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "AADSTS700213: No matching federated identity record found for presented assertion subject",
        );
    }
    shared.issued.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "token_type": "Bearer", "expires_in": 3600, "access_token": federation.access_token })).into_response()
}

/// Checks a certificate-signed client assertion: thumbprint, signature (PS256 or RS256), audience,
/// issuer and subject, and lifetime.
fn verify_certificate_assertion(credential: &CertificateCredential, jwt: &str, audience: &str) -> Result<(), String> {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let parts: Vec<&str> = jwt.split('.').collect();
    let [header, claims, signature] = parts[..] else { return Err("malformed assertion".into()) };
    let decode =
        |p: &str| -> Option<serde_json::Value> { serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).ok()?).ok() };
    let (header_json, claims_json) = (decode(header).ok_or("bad header")?, decode(claims).ok_or("bad claims")?);
    let der = CertificateDer::pem_slice_iter(credential.certificate_pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
        .ok_or("no certificate registered")?;
    let thumbprint = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()));
    if header_json["x5t#S256"] != thumbprint.as_str() {
        return Err("the assertion names another certificate".into());
    }
    let algorithm = match header_json["alg"].as_str() {
        Some("PS256") => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        Some("RS256") => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        _ => return Err("unsupported algorithm".into()),
    };
    let certificate = webpki::EndEntityCert::try_from(&der).map_err(|e| e.to_string())?;
    let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|e| e.to_string())?;
    certificate
        .verify_signature(algorithm, format!("{header}.{claims}").as_bytes(), &signature)
        .map_err(|_| "signature does not verify".to_string())?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if claims_json["aud"] != audience {
        return Err(format!("wrong audience {}", claims_json["aud"]));
    }
    if claims_json["iss"] != credential.client_id.as_str() || claims_json["sub"] != credential.client_id.as_str() {
        return Err("issuer and subject must be the client id".into());
    }
    if claims_json["exp"].as_u64().is_none_or(|exp| exp <= now) {
        return Err("the assertion expired".into());
    }
    Ok(())
}
