//! Access tokens for Azure: a fixed token (tests, emulators), and Microsoft Entra tokens from a
//! client secret, a client assertion (workload identity: a Kubernetes service-account token
//! exchanged for an Entra token) or the instance metadata service (managed identity). Tokens
//! are cached until shortly before they expire.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::{Error, Result};

/// The resource of Key Vault's data plane in the public cloud.
pub const KEY_VAULT_RESOURCE: &str = "https://vault.azure.net";

/// The Key Vault resource a vault URL belongs to, by its DNS suffix: public, China, US Government
/// clouds; the public resource for anything else (private endpoints use the public names).
pub fn key_vault_resource(vault_url: &str) -> &'static str {
    let host =
        vault_url.trim_start_matches("https://").split(['/', ':']).next().unwrap_or_default().to_ascii_lowercase();
    if host.ends_with(".vault.azure.cn") {
        "https://vault.azure.cn"
    } else if host.ends_with(".vault.usgovcloudapi.net") {
        "https://vault.usgovcloudapi.net"
    } else {
        KEY_VAULT_RESOURCE
    }
}
/// Tokens are renewed this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

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
    fn token(&self) -> BoxFuture<'_, Result<AccessToken>>;
    /// Drops a cached token the vault refused, so the next call gets a new one.
    fn invalidate(&self) {}
}

/// A fixed token.
pub struct StaticToken(pub String);

impl TokenSource for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken>> {
        let token = AccessToken {
            secret: Arc::new(Zeroizing::new(self.0.clone())),
            expires_at: Instant::now() + Duration::from_secs(3600),
        };
        Box::pin(async move { Ok(token) })
    }
}

/// Produces a client assertion (a JWT) for the Entra token exchange, such as a service-account
/// token obtained with the Kubernetes TokenRequest API.
pub trait AssertionSource: Send + Sync {
    fn assertion(&self) -> BoxFuture<'_, Result<Zeroizing<String>>>;
}

/// How an Entra token is obtained.
pub enum Grant {
    ClientSecret(Zeroizing<String>),
    ClientAssertion(Arc<dyn AssertionSource>),
    /// The instance metadata service; `endpoint` is the token URL without query.
    ManagedIdentity {
        endpoint: String,
    },
}

/// Tokens from Microsoft Entra ID (or the instance metadata service), cached.
pub struct EntraToken {
    http: reqwest::Client,
    /// `{authority}/{tenant}/oauth2/v2.0/token`
    token_url: String,
    client_id: Option<String>,
    grant: Grant,
    /// The Key Vault resource tokens are asked for (`<resource>/.default` as the scope).
    resource: String,
    cached: Mutex<Option<(AccessToken, Instant)>>,
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

/// The Entra token endpoint of a tenant under an authority host.
pub fn token_url(authority_host: &str, tenant_id: &str) -> String {
    format!("{}/{tenant_id}/oauth2/v2.0/token", authority_host.trim_end_matches('/'))
}

impl EntraToken {
    /// `authority_host` such as `https://login.microsoftonline.com`.
    pub fn new(
        http: reqwest::Client,
        authority_host: &str,
        tenant_id: &str,
        client_id: Option<String>,
        grant: Grant,
    ) -> Self {
        let token_url = token_url(authority_host, tenant_id);
        Self {
            http,
            token_url,
            client_id,
            grant,
            resource: KEY_VAULT_RESOURCE.to_string(),
            cached: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    /// Asks for tokens for another Key Vault resource (a sovereign cloud's, see [`key_vault_resource`]).
    pub fn for_resource(mut self, resource: &str) -> Self {
        self.resource = resource.trim_end_matches('/').to_string();
        self
    }

    async fn fetch(&self) -> Result<AccessToken> {
        let request = match &self.grant {
            Grant::ManagedIdentity { endpoint } => {
                let mut query = vec![("api-version", "2018-02-01".to_string()), ("resource", self.resource.clone())];
                if let Some(id) = &self.client_id {
                    query.push(("client_id", id.clone()));
                }
                self.http.get(endpoint).header("Metadata", "true").query(&query)
            }
            grant => {
                let mut form = vec![
                    ("grant_type", "client_credentials".to_string()),
                    ("scope", format!("{}/.default", self.resource)),
                    ("client_id", self.client_id.clone().unwrap_or_default()),
                ];
                match grant {
                    Grant::ClientSecret(secret) => form.push(("client_secret", secret.to_string())),
                    Grant::ClientAssertion(source) => {
                        let assertion = source.assertion().await?;
                        form.push((
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
                        ));
                        form.push(("client_assertion", assertion.to_string()));
                    }
                    Grant::ManagedIdentity { .. } => unreachable!("handled above"),
                }
                let request = self.http.post(&self.token_url).form(&form);
                // The form held the credential; wipe our copy (the request body keeps its own).
                for (_, value) in &mut form {
                    zeroize::Zeroize::zeroize(value);
                }
                request
            }
        };
        let response =
            request.timeout(Duration::from_secs(30)).send().await.map_err(|e| Error::Unavailable {
                message: format!("token endpoint: {}", crate::azure::describe(&e)),
            })?;
        let status = response.status();
        if !status.is_success() {
            // Entra's error bodies carry an error code and description, never the credential.
            let body = response.text().await.unwrap_or_default();
            let detail: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let message = detail["error_description"].as_str().or(detail["error"].as_str()).unwrap_or("no detail");
            let message = format!("token endpoint answered {status}: {}", message.lines().next().unwrap_or_default());
            return Err(if status.is_server_error() {
                Error::Unavailable { message }
            } else {
                Error::Unauthenticated { message }
            });
        }
        let answer: TokenAnswer = response
            .json()
            .await
            .map_err(|_| Error::Protocol { message: "token endpoint answered without a token".into() })?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(3600));
        Ok(AccessToken { secret: Arc::new(answer.access_token), expires_at: Instant::now() + lifetime })
    }
}

impl TokenSource for EntraToken {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken>> {
        Box::pin(async move {
            let fresh = || {
                let cached = self.cached.lock().expect("token lock").clone();
                cached.filter(|(_, renew_at)| Instant::now() < *renew_at).map(|(token, _)| token)
            };
            if let Some(token) = fresh() {
                return Ok(token);
            }
            // One fetch at a time: whoever waited here finds the token the previous holder got.
            let _fetching = self.fetching.lock().await;
            if let Some(token) = fresh() {
                return Ok(token);
            }
            let token = self.fetch().await?;
            // Renew 5 minutes before expiry, or at half-life for short-lived tokens.
            let lifetime = token.expires_at.saturating_duration_since(Instant::now());
            let renew_at = token.expires_at - RENEW_BEFORE.min(lifetime / 2);
            *self.cached.lock().expect("token lock") = Some((token.clone(), renew_at));
            Ok(token)
        })
    }

    fn invalidate(&self) {
        self.cached.lock().expect("token lock").take();
    }
}

#[cfg(test)]
mod tests {
    use super::key_vault_resource;

    #[test]
    fn sovereign_clouds_get_their_own_resource() {
        assert_eq!(key_vault_resource("https://team.vault.azure.net"), "https://vault.azure.net");
        assert_eq!(key_vault_resource("https://team.vault.azure.cn/"), "https://vault.azure.cn");
        assert_eq!(key_vault_resource("https://Team.Vault.UsGovCloudApi.net:443"), "https://vault.usgovcloudapi.net");
        assert_eq!(key_vault_resource("https://localhost:8443"), "https://vault.azure.net");
    }
}
