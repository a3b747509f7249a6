//! What the vault clients share about HTTP: the client with an optional private CA, and the
//! attempt loop — every attempt paid for from the store's request budget and reported to an
//! observer, 429 with `Retry-After`, 5xx and transport failures retried with jittered
//! exponential backoff, and answers mapped to [`Error`]s. Each vault words its error bodies
//! its own way; the loop is told how to read them.

use std::{future::Future, sync::Arc, time::Duration};

use rand::Rng as _;
use reqwest::{StatusCode, header};

use crate::{Error, Result, budget::RequestBudget};

/// Called once per HTTP attempt with the operation (`get_secret`, `kv_read`, `login`, ...) and its outcome (`ok`,
/// `not_found`, `throttled`, `server_error`, `transport_error`, `unauthorized`, `forbidden`, `other`).
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

/// Reads the human-readable message out of a vault's JSON error body.
pub(crate) type ErrorText = fn(&serde_json::Value) -> Option<String>;

/// The budget, retry policy and observer of one vault client (or token endpoint), and its attempt loop.
#[derive(Clone)]
pub(crate) struct Caller {
    pub budget: Option<Arc<RequestBudget>>,
    pub retry: RetryPolicy,
    pub observer: Option<CallObserver>,
    error_text: ErrorText,
    /// Statuses retried like a 5xx besides 408 and 429 (the instance metadata service answers 404 and 410 while it
    /// starts).
    retry_also: &'static [StatusCode],
}

impl Caller {
    pub fn new(error_text: ErrorText) -> Self {
        Self { budget: None, retry: RetryPolicy::default(), observer: None, error_text, retry_also: &[] }
    }

    /// Also retries these statuses.
    pub fn retrying(mut self, statuses: &'static [StatusCode]) -> Self {
        self.retry_also = statuses;
        self
    }

    pub fn observe(&self, operation: &'static str, outcome: &'static str) {
        if let Some(observer) = &self.observer {
            observer(operation, outcome);
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.retry.base_backoff.saturating_mul(1 << attempt.min(16)).min(self.retry.max_backoff);
        // Full jitter: spreads retries of many callers over the interval.
        exp.mul_f64(rand::rng().random_range(0.5..1.0))
    }

    /// Sends the request `request` builds (anew for each attempt, so it can carry a fresh token) until it is
    /// answered 200, which is returned. On a 401, `unauthorized` is asked once, with the answer's headers (a bearer
    /// challenge), whether the credential was renewed (then the request is sent again) before `Unauthenticated` is
    /// returned. 403 is `Forbidden` and 404 `NotFound` of `object`, without retries; 429, 408, 5xx, the statuses of
    /// [`Caller::retrying`] and transport errors are retried up to `max_attempts`.
    pub async fn send<F, Fut>(
        &self,
        operation: &'static str,
        object: &str,
        mut request: F,
        mut unauthorized: impl FnMut(&reqwest::header::HeaderMap) -> bool,
    ) -> Result<reqwest::Response>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<reqwest::RequestBuilder>>,
    {
        let mut refreshed_token = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.max_attempts;
            if let Some(budget) = &self.budget {
                budget.acquire().await;
            }
            let response = match request().await?.send().await {
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
                    if !refreshed_token && unauthorized(response.headers()) {
                        refreshed_token = true;
                        continue;
                    }
                    return Err(Error::Unauthenticated { message: self.error_message(response).await });
                }
                StatusCode::FORBIDDEN if !self.retry_also.contains(&status) => {
                    self.observe(operation, "forbidden");
                    let body: serde_json::Value = response.json().await.unwrap_or_default();
                    // Key Vault's inner code for a disabled object: `SecretDisabled`, `KeyDisabled`, ...
                    let inner = body["error"]["innererror"]["code"].as_str().unwrap_or_default();
                    if inner.ends_with("Disabled") {
                        return Err(Error::Disabled { object: object.to_string() });
                    }
                    return Err(Error::Forbidden { object: object.to_string(), message: self.body_message(&body) });
                }
                StatusCode::NOT_FOUND if !self.retry_also.contains(&status) => {
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
                s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT || self.retry_also.contains(&s) => {
                    self.observe(operation, "server_error");
                    if last {
                        return Err(Error::Unavailable {
                            message: format!("{s}: {}", self.error_message(response).await),
                        });
                    }
                    let wait = retry_after(&response).unwrap_or_else(|| self.backoff(attempt));
                    tokio::time::sleep(wait.min(self.retry.max_retry_after)).await;
                }
                s => {
                    self.observe(operation, "other");
                    return Err(Error::Protocol {
                        message: format!("{object}: {s}: {}", self.error_message(response).await),
                    });
                }
            }
        }
    }

    /// The message of an error body (never a secret value: error bodies carry none), at most 300 characters.
    async fn error_message(&self, response: reqwest::Response) -> String {
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        self.body_message(&body)
    }

    fn body_message(&self, body: &serde_json::Value) -> String {
        (self.error_text)(body).unwrap_or_else(|| "no detail".into()).chars().take(300).collect()
    }
}

fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let value = response.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
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
