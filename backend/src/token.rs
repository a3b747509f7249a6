//! Access tokens for Azure: a fixed token (tests, emulators), and Microsoft Entra tokens from a client secret, a
//! client assertion (workload identity: a Kubernetes service-account token exchanged for an Entra token; or a
//! certificate-signed assertion), the token file the workload identity webhook mounts, or the instance metadata
//! service (managed identity). Tokens are cached per scope until shortly before they expire.
//!
//! Token requests are vault calls like any other: they pass the store's request budget, the retry policy (429 with
//! `Retry-After`, 5xx; the metadata service's 404 and 410 while it starts, as Microsoft's SDKs retry them) and the
//! call observer. A refusal is `Unauthenticated`, throttling `Throttled`.

use std::{
    collections::HashMap,
    fmt,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use reqwest::StatusCode;
use serde::Deserialize;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::{
    Error, Result,
    budget::RequestBudget,
    http::{CallObserver, Caller, RetryPolicy},
};

/// Tokens are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);
/// When a renewal fails for a passing reason (Entra unreachable, throttling) the token held is used while it has at
/// least this long to live, and the renewal is tried again after [`RENEW_RETRY`] at the earliest.
const STILL_VALID: Duration = Duration::from_secs(10);
const RENEW_RETRY: Duration = Duration::from_secs(10);

/// What a token is asked for: the scope (`<resource>/.default`) and, when the vault's challenge named one, the tenant
/// the vault belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TokenScope {
    pub scope: String,
    pub tenant: Option<String>,
}

impl TokenScope {
    /// The resource the scope is for (`https://vault.azure.net` for `https://vault.azure.net/.default`), which the
    /// instance metadata service asks for instead of a scope.
    pub fn resource(&self) -> &str {
        self.scope.strip_suffix("/.default").unwrap_or(&self.scope)
    }
}

/// A bearer token; never printed.
#[derive(Clone)]
pub struct AccessToken {
    pub secret: Arc<Zeroizing<String>>,
    pub expires_at: Instant,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

pub trait TokenSource: Send + Sync {
    fn token<'a>(&'a self, scope: &'a TokenScope) -> BoxFuture<'a, Result<AccessToken>>;
    /// Drops cached tokens the vault refused, so the next call gets a new one.
    fn invalidate(&self) {}
}

/// A fixed token, whatever the scope.
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token<'a>(&'a self, _scope: &'a TokenScope) -> BoxFuture<'a, Result<AccessToken>> {
        let token = AccessToken {
            secret: Arc::new(Zeroizing::new(self.0.clone())),
            expires_at: Instant::now() + Duration::from_secs(3600),
        };
        Box::pin(async move { Ok(token) })
    }
}

/// Produces a client assertion (a JWT) for the Entra token exchange, such as a service-account token obtained with
/// the Kubernetes TokenRequest API, or a certificate-signed assertion.
pub trait AssertionSource: Send + Sync {
    fn assertion(&self) -> BoxFuture<'_, Result<Zeroizing<String>>>;
}

/// How an Entra token is obtained.
pub enum Grant {
    ClientSecret(Zeroizing<String>),
    ClientAssertion(Arc<dyn AssertionSource>),
    /// A service-account token file, read anew for each exchange (the kubelet rotates it): what the workload
    /// identity webhook gives a pod in `AZURE_FEDERATED_TOKEN_FILE`.
    TokenFile(PathBuf),
    /// The instance metadata service; `endpoint` is the token URL without query.
    ManagedIdentity {
        endpoint: String,
    },
}

/// Tokens from Microsoft Entra ID (or the instance metadata service), cached per scope.
pub struct EntraToken {
    http: reqwest::Client,
    authority_host: String,
    tenant_id: String,
    client_id: Option<String>,
    grant: Grant,
    caller: Caller,
    cached: Mutex<HashMap<String, (AccessToken, Instant)>>,
    /// Held while a token is fetched: callers that arrive meanwhile wait and share it.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Zeroizing<String>,
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

/// Entra answers `expires_in` as a number, the metadata service as a string.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

/// Entra's (and the metadata service's) error bodies: the first line of the description, or the error code. They
/// never carry the credential.
fn entra_error_text(body: &serde_json::Value) -> Option<String> {
    let text = body["error_description"].as_str().or(body["error"].as_str())?;
    Some(text.lines().next().unwrap_or_default().to_string())
}

/// The Entra token endpoint of a tenant under an authority host.
pub fn token_url(authority_host: &str, tenant_id: &str) -> String {
    format!("{}/{tenant_id}/oauth2/v2.0/token", authority_host.trim_end_matches('/'))
}

/// The instance metadata service answers these while it starts or is updated; Microsoft's SDKs retry them.
const IMDS_RETRIED: &[StatusCode] = &[StatusCode::NOT_FOUND, StatusCode::GONE];

impl EntraToken {
    /// `authority_host` such as `https://login.microsoftonline.com`; `tenant_id` the store's tenant.
    pub fn new(
        http: reqwest::Client,
        authority_host: &str,
        tenant_id: &str,
        client_id: Option<String>,
        grant: Grant,
    ) -> Self {
        let mut caller = Caller::new(entra_error_text);
        if let Grant::ManagedIdentity { .. } = grant {
            // Retried for longer: the metadata service can take tens of seconds to come up.
            caller = caller.retrying(IMDS_RETRIED);
            caller.retry =
                RetryPolicy { max_attempts: 7, max_backoff: Duration::from_secs(10), ..RetryPolicy::default() };
        }
        Self {
            http,
            authority_host: authority_host.trim_end_matches('/').to_string(),
            tenant_id: tenant_id.to_string(),
            client_id,
            grant,
            caller,
            cached: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Token requests pay from `budget` (the store's) and are reported to `observer`.
    pub fn metered(mut self, budget: Option<Arc<RequestBudget>>, observer: Option<CallObserver>) -> Self {
        self.caller.budget = budget;
        self.caller.observer = observer;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.caller.retry = retry;
        self
    }

    async fn fetch(&self, scope: &TokenScope) -> Result<AccessToken> {
        if let Some(tenant) = &scope.tenant
            && !matches!(self.grant, Grant::ManagedIdentity { .. })
            && !tenant.eq_ignore_ascii_case(&self.tenant_id)
        {
            return Err(Error::Unauthenticated {
                message: format!(
                    "the vault belongs to tenant {tenant} (its challenge says so), but the store names tenant {}",
                    self.tenant_id
                ),
            });
        }
        let response = match &self.grant {
            Grant::ManagedIdentity { endpoint } => {
                let mut query = vec![("api-version", "2018-02-01".to_string()), ("resource", scope.resource().into())];
                if let Some(id) = &self.client_id {
                    query.push(("client_id", id.clone()));
                }
                let request =
                    || std::future::ready(Ok(self.http.get(endpoint).header("Metadata", "true").query(&query)));
                self.caller.send("imds_token", "the instance metadata service", request, |_| false).await
            }
            grant => {
                let credential: Zeroizing<String> = match grant {
                    Grant::ClientSecret(secret) => secret.clone(),
                    Grant::ClientAssertion(source) => source.assertion().await?,
                    Grant::TokenFile(path) => Zeroizing::new(
                        std::fs::read_to_string(path)
                            .map_err(|e| Error::Unauthenticated {
                                message: format!("reading the federated token file {}: {e}", path.display()),
                            })?
                            .trim()
                            .to_string(),
                    ),
                    Grant::ManagedIdentity { .. } => unreachable!("answered above"),
                };
                let url = token_url(&self.authority_host, &self.tenant_id);
                let request = || {
                    let mut form = vec![
                        ("grant_type", "client_credentials".to_string()),
                        ("scope", scope.scope.clone()),
                        ("client_id", self.client_id.clone().unwrap_or_default()),
                    ];
                    match grant {
                        Grant::ClientSecret(_) => form.push(("client_secret", credential.to_string())),
                        _ => {
                            form.push((
                                "client_assertion_type",
                                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                            ));
                            form.push(("client_assertion", credential.to_string()));
                        }
                    }
                    let request = self.http.post(&url).form(&form);
                    // The form held the credential; wipe our copy (the request body keeps its own).
                    for (_, value) in &mut form {
                        zeroize::Zeroize::zeroize(value);
                    }
                    std::future::ready(Ok(request))
                };
                self.caller.send("token", "the token endpoint", request, |_| false).await
            }
        };
        let response = response.map_err(|e| match e {
            // A refusal, however worded (400 invalid_client, 401, 403, 404 unknown tenant), means this credential
            // gets no token here.
            Error::Forbidden { message, .. } | Error::Protocol { message } | Error::Unauthenticated { message } => {
                Error::Unauthenticated { message: format!("token endpoint: {message}") }
            }
            Error::NotFound { object } => Error::Unauthenticated { message: format!("{object} answered 404") },
            other => other,
        })?;
        let answer: TokenAnswer = response
            .json()
            .await
            .map_err(|_| Error::Protocol { message: "token endpoint answered without a token".into() })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        Ok(AccessToken { secret: Arc::new(answer.access_token), expires_at: Instant::now() + lifetime })
    }
}

impl TokenSource for EntraToken {
    fn token<'a>(&'a self, scope: &'a TokenScope) -> BoxFuture<'a, Result<AccessToken>> {
        Box::pin(async move {
            let fresh = || {
                let cached = self.cached.lock().expect("token lock").get(&scope.scope).cloned();
                cached.filter(|(_, renew_at)| Instant::now() < *renew_at).map(|(token, _)| token)
            };
            if let Some(token) = fresh() {
                return Ok(token);
            }
            let still_valid = || {
                let held = self.cached.lock().expect("token lock").get(&scope.scope).cloned();
                held.filter(|(token, _)| token.expires_at > Instant::now() + STILL_VALID).map(|(token, _)| token)
            };
            // One fetch at a time: whoever waited here finds the token the previous holder got. While a renewal is
            // under way, the token held is used if it is still good, rather than waiting for Entra.
            let _fetching = match self.fetching.try_lock() {
                Ok(guard) => guard,
                Err(_) => match still_valid() {
                    Some(token) => return Ok(token),
                    None => self.fetching.lock().await,
                },
            };
            if let Some(token) = fresh() {
                return Ok(token);
            }
            let token = match self.fetch(scope).await {
                Ok(token) => token,
                Err(e @ (Error::Unavailable { .. } | Error::Throttled { .. })) => {
                    // Entra is down or throttling while the token held is still good: go on with it, as Microsoft's
                    // SDKs do, and try to renew again a little later instead of failing every read now.
                    match still_valid() {
                        Some(token) => {
                            let retry_at = (Instant::now() + RENEW_RETRY).min(token.expires_at - STILL_VALID);
                            self.cached
                                .lock()
                                .expect("token lock")
                                .insert(scope.scope.clone(), (token.clone(), retry_at));
                            return Ok(token);
                        }
                        _ => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            };
            // Renew 5 minutes before expiry, or at half-life for short-lived tokens.
            let lifetime = token.expires_at.saturating_duration_since(Instant::now());
            let renew_at = token.expires_at - RENEW_BEFORE.min(lifetime / 2);
            self.cached.lock().expect("token lock").insert(scope.scope.clone(), (token.clone(), renew_at));
            Ok(token)
        })
    }

    fn invalidate(&self) {
        self.cached.lock().expect("token lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_their_resource() {
        let scope = TokenScope { scope: "https://vault.azure.net/.default".into(), tenant: None };
        assert_eq!(scope.resource(), "https://vault.azure.net");
        let odd = TokenScope { scope: "https://vault.azure.cn".into(), tenant: None };
        assert_eq!(odd.resource(), "https://vault.azure.cn");
    }
}
