//! A Microsoft Entra token endpoint for tests, over HTTPS on loopback. It implements the
//! client-credentials grant with a client assertion (what workload identity uses): the assertion
//! must be a Kubernetes service-account token that the real apiserver accepts (TokenReview) for
//! the federated audience and subject configured for the client ID. Then it issues that
//! client's access token.

use std::{
    collections::HashMap,
    sync::{
        Arc,
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

struct Shared {
    kube: kube::Client,
    federations: HashMap<String, Federation>,
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
        let (listener, addr) = loopback_listener().await?;
        let shared = Arc::new(Shared {
            kube,
            federations: federations.into_iter().map(|f| (f.client_id.clone(), f)).collect(),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let app = Router::new().route("/{tenant}/oauth2/v2.0/token", post(token)).with_state(shared.clone());
        let task = tokio::spawn(serve_https(listener, TestCa::shared().loopback_server_config()?, app));
        Ok(Self { url: format!("https://localhost:{}", addr.port()), shared, task })
    }

    /// The authority host to configure (`https://localhost:PORT`).
    pub fn authority_host(&self) -> &str {
        &self.url
    }

    pub fn ca_pem(&self) -> &str {
        TestCa::shared().ca_pem()
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
    Path(_tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return refuse(&shared, StatusCode::BAD_REQUEST, "unsupported_grant_type", "only client_credentials");
    }
    if field("scope") != "https://vault.azure.net/.default" {
        return refuse(&shared, StatusCode::BAD_REQUEST, "invalid_scope", "scope must be Key Vault's .default");
    }
    if field("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return refuse(
            &shared,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "a jwt-bearer client_assertion is required",
        );
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
