//! The Azure Key Vault secrets client: bearer tokens with the 401 challenge, 429 with
//! `Retry-After`, 5xx and transport failures retried with jittered exponential backoff, every
//! attempt paid for from the store's request budget and reported to an observer (metrics); the
//! attempt loop is shared with the other vault clients (`crate::http`).
//!
//! Written on reqwest rather than the official SDK crates so that each HTTP attempt passes
//! through our budget, retry policy and call counting; see docs/architecture.md.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;
use zeroize::Zeroizing;

pub(crate) use crate::http::describe;
pub use crate::http::{CallObserver, RetryPolicy, http_client};
use crate::{
    Backend, Error, FetchedSecret, ObjectRef, Result, SecretBytes, budget::RequestBudget, http::Caller,
    token::TokenSource,
};

pub struct AzureKeyVault {
    http: reqwest::Client,
    vault_url: String,
    api_version: String,
    credential: Arc<dyn TokenSource>,
    identity: String,
    caller: Caller,
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
            caller: Caller::new(|body| body["error"]["message"].as_str().map(str::to_string)),
        }
    }

    pub fn with_budget(mut self, budget: Arc<RequestBudget>) -> Self {
        self.caller.budget = Some(budget);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.caller.retry = retry;
        self
    }

    pub fn with_observer(mut self, observer: CallObserver) -> Self {
        self.caller.observer = Some(observer);
        self
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
        // A nextLink carries its own api-version.
        let versioned = url.contains("api-version=");
        let request = || async {
            let token = self.credential.token().await?;
            let mut request = self.http.get(url);
            if !versioned {
                request = request.query(&[("api-version", self.api_version.as_str())]);
            }
            Ok(request.query(query).bearer_auth(token.secret.as_str()))
        };
        // A 401 may be a token that expired or was revoked: drop it so the next attempt gets a new one.
        let renew = || {
            self.credential.invalidate();
            true
        };
        self.caller.send(operation, object, request, renew).await
    }
}

impl Backend for AzureKeyVault {
    fn identity(&self) -> &str {
        &self.identity
    }

    fn get<'a>(&'a self, object: &'a ObjectRef) -> BoxFuture<'a, Result<FetchedSecret>> {
        Box::pin(self.get_secret(object))
    }

    /// Pages through the secrets list (25 names a page, following `nextLink`).
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            #[derive(Deserialize)]
            struct Page {
                #[serde(default)]
                value: Vec<Item>,
                #[serde(rename = "nextLink")]
                next_link: Option<String>,
            }
            #[derive(Deserialize)]
            struct Item {
                id: String,
            }
            let mut names = Vec::new();
            let mut url = format!("{}/secrets", self.vault_url);
            let mut query: &[(&str, &str)] = &[("maxresults", "25")];
            loop {
                let page: Page = self
                    .call("list_secrets", &url, query, "the secrets list")
                    .await?
                    .json()
                    .await
                    .map_err(|_| Error::Protocol { message: "the secrets list is not a list".into() })?;
                let lower = prefix.to_ascii_lowercase();
                names.extend(
                    page.value
                        .into_iter()
                        .filter_map(|item| item.id.rsplit('/').next().map(str::to_string))
                        .filter(|name| name.to_ascii_lowercase().starts_with(&lower)),
                );
                match page.next_link {
                    Some(next) if next.starts_with(&self.vault_url) => {
                        url = next;
                        query = &[];
                    }
                    _ => break,
                }
            }
            names.sort();
            Ok(names)
        })
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
