//! The Azure Key Vault secrets client: bearer tokens with the 401 challenge, 429 with
//! `Retry-After`, 5xx and transport failures retried with jittered exponential backoff, every
//! attempt paid for from the store's request budget and reported to an observer (metrics).
//!
//! Written on reqwest rather than the official SDK crates so that each HTTP attempt passes
//! through our budget, retry policy and call counting; see docs/architecture.md.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use rand::Rng as _;
use reqwest::{StatusCode, header};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{Backend, Error, FetchedSecret, ObjectRef, Result, SecretBytes, budget::RequestBudget, token::TokenSource};

/// Called once per HTTP attempt with the operation (`get_secret`, `list_secrets`) and its outcome (`ok`, `not_found`,
/// `throttled`, `server_error`, `transport_error`, `unauthorized`, `forbidden`, `other`).
pub type CallObserver = Arc<dyn Fn(&'static str, &'static str) + Send + Sync>;

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// A longer `Retry-After` is not waited for here: the caller gets `Throttled` and requeues.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
        }
    }
}

pub struct AzureKeyVault {
    http: reqwest::Client,
    vault_url: String,
    api_version: String,
    credential: Arc<dyn TokenSource>,
    identity: String,
    budget: Option<Arc<RequestBudget>>,
    retry: RetryPolicy,
    observer: Option<CallObserver>,
}

/// An HTTP client for a vault: trusts only `ca_bundle` when one is given, else the system roots.
pub fn http_client(ca_bundle: Option<&str>) -> Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(90));
    if let Some(pem) = ca_bundle.filter(|p| !p.trim().is_empty()) {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| Error::InvalidConfig { message: format!("caBundle is not valid PEM: {e}") })?;
        if certs.is_empty() {
            return Err(Error::InvalidConfig { message: "caBundle holds no certificate".into() });
        }
        builder = builder.tls_certs_only(certs);
    }
    builder.build().map_err(|e| Error::InvalidConfig { message: format!("HTTP client: {e}") })
}

#[derive(Deserialize)]
struct SecretBundle {
    value: Option<Zeroizing<String>>,
    id: String,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
}

impl AzureKeyVault {
    /// `identity` names the principal (tenant and client ID) so that cached reads are shared only
    /// by callers that authenticate the same way.
    pub fn new(
        http: reqwest::Client,
        vault_url: &str,
        api_version: &str,
        credential: Arc<dyn TokenSource>,
        identity: &str,
    ) -> Self {
        let vault_url = vault_url.trim_end_matches('/').to_string();
        Self {
            identity: format!("azure-key-vault|{vault_url}|{identity}"),
            http,
            vault_url,
            api_version: api_version.to_string(),
            credential,
            budget: None,
            retry: RetryPolicy::default(),
            observer: None,
        }
    }

    pub fn with_budget(mut self, budget: Arc<RequestBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    fn observe(&self, operation: &'static str, outcome: &'static str) {
        if let Some(observer) = &self.observer {
            observer(operation, outcome);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.retry.base_backoff.saturating_mul(1 << attempt.min(16)).min(self.retry.max_backoff);
        // Full jitter: spreads retries of many callers over the interval.
        exp.mul_f64(rand::rng().random_range(0.5..1.0))
    }

    async fn get_secret(&self, object: &ObjectRef) -> Result<FetchedSecret> {
        let url = match &object.version {
            Some(v) => format!("{}/secrets/{}/{}", self.vault_url, encode(&object.name), encode(v)),
            None => format!("{}/secrets/{}", self.vault_url, encode(&object.name)),
        };
        let response = self.call("get_secret", &url, &[], &object.to_string()).await?;
        let bundle: SecretBundle = response
            .json()
            .await
            .map_err(|_| Error::Protocol { message: format!("{object}: the answer is not a secret bundle") })?;
        let version = bundle.id.rsplit('/').next().unwrap_or_default().to_string();
        let value = bundle.value.ok_or_else(|| Error::Protocol { message: format!("{object} has no value") })?;
        Ok(FetchedSecret {
            value: SecretBytes::new(value.as_bytes().to_vec()),
            version,
            content_type: bundle.content_type,
        })
    }

    /// One request with the budget, the token, and retries; a 200 answer is returned.
    async fn call(
        &self,
        operation: &'static str,
        url: &str,
        query: &[(&str, &str)],
        object: &str,
    ) -> Result<reqwest::Response> {
        let mut refreshed_token = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            if let Some(budget) = &self.budget {
                budget.acquire().await;
            }
            let token = self.credential.token().await?;
            let sent = self
                .http
                .get(url)
                .query(&[("api-version", self.api_version.as_str())])
                .query(query)
                .bearer_auth(token.secret.as_str())
                .send()
                .await;
            let response = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.observe(operation, "transport_error");
                    if last {
                        return Err(Error::Unavailable { message: describe(&e) });
                    }
                    tokio::time::sleep(self.backoff(attempt)).await;
                    continue;
                }
            };
            let status = response.status();
            match status {
                StatusCode::OK => {
                    self.observe(operation, "ok");
                    return Ok(response);
                }
                StatusCode::UNAUTHORIZED => {
                    self.observe(operation, "unauthorized");
                    // The first 401 may be a token that expired or was revoked: get a new one once.
                    if !refreshed_token {
                        refreshed_token = true;
                        self.credential.invalidate();
                        continue;
                    }
                    return Err(Error::Unauthenticated { message: error_message(response).await });
                }
                StatusCode::FORBIDDEN => {
                    self.observe(operation, "forbidden");
                    return Err(Error::Forbidden {
                        object: object.to_string(),
                        message: error_message(response).await,
                    });
                }
                StatusCode::NOT_FOUND => {
                    self.observe(operation, "not_found");
                    return Err(Error::NotFound { object: object.to_string() });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    self.observe(operation, "throttled");
                    let retry_after = retry_after(&response);
                    let wait = retry_after.unwrap_or_else(|| self.backoff(attempt));
                    if last || wait > self.retry.max_retry_after {
                        return Err(Error::Throttled { retry_after });
                    }
                    tokio::time::sleep(wait).await;
                }
                s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
                    self.observe(operation, "server_error");
                    if last {
                        return Err(Error::Unavailable { message: format!("{s}: {}", error_message(response).await) });
                    }
                    let wait = retry_after(&response).unwrap_or_else(|| self.backoff(attempt));
                    tokio::time::sleep(wait.min(self.retry.max_retry_after)).await;
                }
                s => {
                    self.observe(operation, "other");
                    return Err(Error::Protocol {
                        message: format!("{object}: {s}: {}", error_message(response).await),
                    });
                }
            }
        }
    }
}

impl Backend for AzureKeyVault {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn get<'a>(&'a self, object: &'a ObjectRef) -> BoxFuture<'a, Result<FetchedSecret>> {
        Box::pin(self.get_secret(object))
    }

    /// Lists one secret name: needs a token and list permission, reads no value.
    fn check(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let url = format!("{}/secrets", self.vault_url);
            self.call("list_secrets", &url, &[("maxresults", "1")], "the secrets list").await.map(drop)
        })
    }
}

/// Key Vault names are `[0-9a-zA-Z-]`; anything else is percent-encoded so it cannot change the path.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The `error.message` of an Azure error body (never a secret value: error bodies carry none).
async fn error_message(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    body["error"]["message"].as_str().unwrap_or("no detail").chars().take(300).collect()
}

/// A short description of a transport error with its cause chain.
pub(crate) fn describe(error: &reqwest::Error) -> String {
    let mut message = if error.is_timeout() { "timed out".to_string() } else { error.to_string() };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
