//! A minimal REST client of the Key Vault test server for test setup and assertions.

use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{CLIENT_API_VERSION, KeyVaultServer, SecretBundle, SecretItem};
use crate::tls::install_crypto_provider;

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

/// Trusts only the test CA and resolves the vault's host name to its loopback address.
pub struct KeyVaultClient {
    http: reqwest::Client,
    vault_url: String,
    token: Option<String>,
}

impl KeyVaultClient {
    pub(super) fn new(server: &KeyVaultServer, token: &str) -> anyhow::Result<Self> {
        install_crypto_provider();
        let ca = reqwest::Certificate::from_pem(server.ca_pem().as_bytes())?;
        let http = reqwest::Client::builder().tls_certs_only([ca]).resolve(server.host(), server.addr()).build()?;
        Ok(KeyVaultClient { http, vault_url: server.url(), token: Some(token.to_string()) })
    }

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

    /// Any JSON answer of `method` on `path` (with `body` as JSON when given).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let request = self.request(method, path);
        decode(match body {
            Some(body) => request.json(body),
            None => request,
        })
        .await
    }

    pub async fn versions(&self, name: &str) -> anyhow::Result<Vec<SecretItem>> {
        self.all_pages(&format!("/secrets/{name}/versions")).await
    }

    pub async fn list(&self) -> anyhow::Result<Vec<SecretItem>> {
        self.all_pages("/secrets").await
    }

    /// Every item of a listing at `path`, following `nextLink`.
    pub async fn all_pages<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<Vec<T>> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Page<T> {
            value: Vec<T>,
            next_link: Option<String>,
        }
        let mut items = Vec::new();
        let mut request = self.request(reqwest::Method::GET, path);
        loop {
            let page: Page<T> = decode(request).await?;
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
    Ok(serde_json::from_slice(if bytes.is_empty() { b"null" } else { &bytes })?)
}
