//! The Azure Key Vault secrets client.
//!
//! An [`AzureEndpoint`] is one vault as a store configures it (URL, api-version, HTTP client with its CA bundle,
//! the store's request budget, retry policy and call observer, and the vault's bearer challenge); an
//! [`AzureKeyVault`] reads from it with one identity's token source. Many identities share one endpoint: the CSI
//! provider reads one vault with each pod's own identity, and they all pay from the store's one budget.
//!
//! Tokens follow the vault's 401 challenge, as Microsoft's SDKs do: the first call goes without a token, the
//! `WWW-Authenticate: Bearer authorization="…/<tenant>", resource="…"` (or `scope="…"`) answer says which tenant the
//! vault belongs to and which scope to ask for, and is kept for the endpoint. A challenge whose resource is not the
//! vault's own domain is refused (a vault must not make us ask for a token to something else). A later 401 with a
//! new challenge renews the token once.
//!
//! Written on reqwest rather than the official SDK crates so that each HTTP attempt passes through our budget,
//! retry policy and call counting; see docs/architecture.md.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use reqwest::{Url, header::HeaderMap};
use serde::Deserialize;
use zeroize::Zeroizing;

pub use crate::http::{CallObserver, RetryPolicy, http_client};
use base64::Engine as _;

use crate::{
    Attributes, Backend, Checked, Error, FetchedSecret, Listed, ListedUpdates, ObjectKind, ObjectRef, Result,
    SecretBytes,
    budget::RequestBudget,
    http::Caller,
    identity::{Endpoint, Identity, Principal},
    token::{TokenScope, TokenSource},
};

/// One Key Vault as a store configures it, shared by every identity that reads from it.
pub struct AzureEndpoint {
    http: reqwest::Client,
    vault_url: String,
    origin: Origin,
    api_version: String,
    caller: Caller,
    /// What the vault's last challenge asked for.
    challenge: Mutex<Option<TokenScope>>,
    /// Held while the challenge is asked for, so concurrent first calls share one.
    probing: tokio::sync::Mutex<()>,
}

/// Scheme, host (lowercase) and port of a URL: what `nextLink`s and challenges are compared by.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl Origin {
    fn of(url: &str) -> Option<Origin> {
        let url = Url::parse(url).ok()?;
        Some(Origin {
            scheme: url.scheme().to_ascii_lowercase(),
            host: url.host_str()?.to_ascii_lowercase(),
            port: url.port_or_known_default(),
        })
    }
}

impl AzureEndpoint {
    /// `vault_url` such as `https://my-vault.vault.azure.net`.
    pub fn new(http: reqwest::Client, vault_url: &str, api_version: &str) -> Result<Self> {
        let vault_url = vault_url.trim_end_matches('/').to_string();
        let origin = Origin::of(&vault_url)
            .ok_or_else(|| Error::InvalidConfig { message: format!("vault URL {vault_url:?} is not a URL") })?;
        Ok(Self {
            http,
            vault_url,
            origin,
            api_version: api_version.to_string(),
            caller: Caller::new(|body| body["error"]["message"].as_str().map(str::to_string)),
            challenge: Mutex::default(),
            probing: tokio::sync::Mutex::new(()),
        })
    }

    /// Calls pay from `budget` (the store's) and are reported to `observer`.
    pub fn metered(mut self, budget: Option<Arc<RequestBudget>>, observer: Option<CallObserver>) -> Self {
        self.caller.budget = budget;
        self.caller.observer = observer;
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.caller.retry = retry;
        self
    }

    /// The store's budget and observer, for its token source.
    pub fn metering(&self) -> (Option<Arc<RequestBudget>>, Option<CallObserver>) {
        (self.caller.budget.clone(), self.caller.observer.clone())
    }

    pub fn vault_url(&self) -> &str {
        &self.vault_url
    }

    /// Reads a bearer challenge from a 401's headers, if it is one this vault may make.
    fn take_challenge(&self, headers: &HeaderMap) -> Option<Result<TokenScope>> {
        let header = headers.get(reqwest::header::WWW_AUTHENTICATE)?.to_str().ok()?;
        let parsed = parse_challenge(header, &self.origin.host);
        if let Ok(scope) = &parsed {
            *self.challenge.lock().expect("challenge lock") = Some(scope.clone());
        }
        Some(parsed)
    }

    /// What to ask a token for: the vault's challenge, asked for once (a request without a token) if not known.
    async fn scope(&self) -> Result<TokenScope> {
        if let Some(scope) = self.challenge.lock().expect("challenge lock").clone() {
            return Ok(scope);
        }
        let _probing = self.probing.lock().await;
        if let Some(scope) = self.challenge.lock().expect("challenge lock").clone() {
            return Ok(scope);
        }
        let url = format!("{}/secrets", self.vault_url);
        let request = || {
            let query = [("api-version", self.api_version.as_str()), ("maxresults", "1")];
            std::future::ready(Ok(self.http.get(&url).query(&query)))
        };
        let mut refused = None;
        let answer = self
            .caller
            .send("challenge", "the vault's challenge", request, |headers| {
                refused = self.take_challenge(headers);
                false
            })
            .await;
        match (refused, answer) {
            (Some(challenge), _) => challenge,
            (None, Ok(_)) => Err(Error::Protocol { message: "the vault answered without asking for a token".into() }),
            (None, Err(Error::Unauthenticated { .. })) => {
                Err(Error::Protocol { message: "the vault refused without a bearer challenge".into() })
            }
            (None, Err(e)) => Err(e),
        }
    }
}

/// The most pages of 25 a list follows (25,000 secrets; a Key Vault holds far fewer in practice).
const MAX_LIST_PAGES: usize = 1000;

/// Parses `Bearer authorization="https://login.microsoftonline.com/<tenant>", resource="https://vault.azure.net"`
/// (or `authorization_uri=`, `scope=`) into the scope and tenant to ask a token for. The resource must be the vault's
/// own domain (`vault_host` ends with it), as Microsoft's SDKs check.
pub fn parse_challenge(header: &str, vault_host: &str) -> Result<TokenScope> {
    let refuse = |why: String| Error::Unauthenticated { message: format!("the vault's bearer challenge {why}") };
    let Some(parameters) = header.trim().strip_prefix("Bearer ").or_else(|| header.trim().strip_prefix("bearer "))
    else {
        return Err(refuse("is not a Bearer challenge".into()));
    };
    let mut fields = std::collections::HashMap::new();
    for part in parameters.split(',') {
        if let Some((key, value)) = part.split_once('=') {
            fields.insert(key.trim().to_ascii_lowercase(), value.trim().trim_matches('"').to_string());
        }
    }
    let authorization = fields.get("authorization").or_else(|| fields.get("authorization_uri"));
    let tenant = authorization
        .and_then(|a| Url::parse(a).ok())
        .and_then(|url| url.path_segments()?.find(|s| !s.is_empty()).map(str::to_string));
    let scope = match (fields.get("scope"), fields.get("resource")) {
        (Some(scope), _) => scope.clone(),
        (None, Some(resource)) => format!("{}/.default", resource.trim_end_matches('/')),
        (None, None) => return Err(refuse("names no resource or scope".into())),
    };
    let resource = scope.strip_suffix("/.default").unwrap_or(&scope);
    let resource_host = Url::parse(resource)
        .ok()
        .and_then(|url| url.host_str().map(str::to_ascii_lowercase))
        .ok_or_else(|| refuse(format!("names the resource {resource:?}, which is not a URL")))?;
    let vault_host = vault_host.to_ascii_lowercase();
    if vault_host != resource_host && !vault_host.ends_with(&format!(".{resource_host}")) {
        return Err(refuse(format!("asks for a token to {resource}, which is not this vault's domain ({vault_host})")));
    }
    Ok(TokenScope { scope, tenant })
}

/// Reads a Key Vault with one identity.
pub struct AzureKeyVault {
    endpoint: Arc<AzureEndpoint>,
    credential: Arc<dyn TokenSource>,
    identity: Identity,
}

/// The parts of a secret, certificate or key bundle read here.
#[derive(Deserialize)]
struct Bundle {
    /// A secret's value.
    value: Option<Zeroizing<String>>,
    /// A certificate's id and leaf (base64 DER).
    id: Option<String>,
    cer: Option<String>,
    /// A key's public JSON Web Key (its `kid` is the id).
    key: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(rename = "contentType")]
    content_type: Option<String>,
    #[serde(default)]
    attributes: BundleAttributes,
}

#[derive(Deserialize, Default)]
struct BundleAttributes {
    enabled: Option<bool>,
    nbf: Option<i64>,
    exp: Option<i64>,
    updated: Option<i64>,
}

impl AzureKeyVault {
    /// Reads from `endpoint` with tokens from `credential`, which authenticates as `principal`.
    pub fn new(endpoint: Arc<AzureEndpoint>, credential: Arc<dyn TokenSource>, principal: Principal) -> Self {
        let identity = Identity {
            endpoint: Endpoint::AzureKeyVault { vault_url: endpoint.vault_url.to_ascii_lowercase() },
            principal,
        };
        Self { endpoint, credential, identity }
    }

    /// A secret's value, a certificate's leaf (the certificates API: never the private key), or a key's public JWK.
    async fn get_object(&self, object: &ObjectRef) -> Result<FetchedSecret> {
        let base = &self.endpoint.vault_url;
        let (collection, operation) = match object.kind {
            ObjectKind::Secret => ("secrets", "get_secret"),
            ObjectKind::Certificate => ("certificates", "get_certificate"),
            ObjectKind::Key => ("keys", "get_key"),
        };
        let url = match &object.version {
            Some(v) => format!("{base}/{collection}/{}/{}", encode(&object.name), encode(v)),
            None => format!("{base}/{collection}/{}", encode(&object.name)),
        };
        let response = self.call(operation, &url, &[], &object.to_string()).await?;
        let bundle: Bundle = response.json().await.map_err(|_| Error::Protocol {
            message: format!("{object}: the answer is not a {} bundle", object.kind),
        })?;
        let missing = |what: &str| Error::Protocol { message: format!("{object}: the answer has no {what}") };
        let (value, id) = match object.kind {
            ObjectKind::Secret => {
                let value = bundle.value.ok_or_else(|| missing("value"))?;
                (value.as_bytes().to_vec(), bundle.id)
            }
            ObjectKind::Certificate => {
                let cer = bundle.cer.ok_or_else(|| missing("certificate (cer)"))?;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(cer.trim())
                    .map_err(|_| missing("base64 certificate (cer)"))?;
                (der, bundle.id)
            }
            ObjectKind::Key => {
                let key = bundle.key.ok_or_else(|| missing("key"))?;
                let id = key.get("kid").and_then(|k| k.as_str()).map(str::to_string);
                (serde_json::Value::Object(key).to_string().into_bytes(), id)
            }
        };
        let version = id.as_deref().and_then(|id| id.rsplit('/').next()).unwrap_or_default().to_string();
        let attributes = Attributes {
            enabled: bundle.attributes.enabled.unwrap_or(true),
            not_before: bundle.attributes.nbf,
            expires: bundle.attributes.exp,
            updated: bundle.attributes.updated,
        };
        if !attributes.enabled {
            return Err(Error::Disabled { object: object.to_string() });
        }
        let content_type = match object.kind {
            ObjectKind::Secret => bundle.content_type,
            ObjectKind::Certificate => Some("application/pkix-cert".into()),
            ObjectKind::Key => Some("application/jwk+json".into()),
        };
        Ok(FetchedSecret { value: SecretBytes::new(value), version, content_type, attributes })
    }

    /// Hands `each` the secrets whose names start with `prefix` (any case), page by page, and returns the number of
    /// pages read; `None` once more than `max_pages` pages would be needed. Item by item rather than as one vector:
    /// a list of every secret in a large vault is held only in the form its caller keeps.
    async fn list_pages(
        &self,
        prefix: &str,
        max_pages: usize,
        mut each: impl FnMut(Listed) + Send,
    ) -> Result<Option<usize>> {
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
            #[serde(default)]
            attributes: ItemAttributes,
            #[serde(default)]
            tags: Option<std::collections::BTreeMap<String, String>>,
        }
        #[derive(Deserialize, Default)]
        struct ItemAttributes {
            enabled: Option<bool>,
            nbf: Option<i64>,
            exp: Option<i64>,
            updated: Option<i64>,
        }
        let lower = prefix.to_ascii_lowercase();
        let mut url = format!("{}/secrets", self.endpoint.vault_url);
        let mut query: &[(&str, &str)] = &[("maxresults", "25")];
        let mut pages = 0;
        let mut followed = std::collections::HashSet::new();
        loop {
            if pages == max_pages {
                return Ok(None);
            }
            pages += 1;
            let page: Page = self
                .call("list_secrets", &url, query, "the secrets list")
                .await?
                .json()
                .await
                .map_err(|_| Error::Protocol { message: "the secrets list is not a list".into() })?;
            for item in page.value {
                let Some(name) = item.id.rsplit('/').next().filter(|n| n.to_ascii_lowercase().starts_with(&lower))
                else {
                    continue;
                };
                each(Listed {
                    name: name.to_string(),
                    enabled: item.attributes.enabled.unwrap_or(true),
                    not_before: item.attributes.nbf,
                    expires: item.attributes.exp,
                    updated: item.attributes.updated,
                    tags: item.tags.unwrap_or_default(),
                });
            }
            match page.next_link {
                None => break,
                Some(next) if next.is_empty() => break,
                Some(next) => {
                    // Compared parsed: a link to another host (or scheme, or port) would carry our token there.
                    if Origin::of(&next).as_ref() != Some(&self.endpoint.origin) {
                        return Err(Error::Protocol {
                            message: "the secrets list links its next page to another origin; refusing to follow"
                                .into(),
                        });
                    }
                    // A link back to a page already given, or more pages than any vault holds, would loop until the
                    // reconcile timeout, growing the list all along.
                    if followed.len() >= MAX_LIST_PAGES || !followed.insert(next.clone()) {
                        return Err(Error::Protocol {
                            message: format!(
                                "the secrets list does not end (a page links back, or more than {MAX_LIST_PAGES} \
                                 pages); refusing to follow"
                            ),
                        });
                    }
                    url = next;
                    query = &[];
                }
            }
        }
        Ok(Some(pages))
    }

    /// One request with the budget, the token the vault's challenge calls for, and retries; a 200 is returned.
    async fn call(
        &self,
        operation: &'static str,
        url: &str,
        query: &[(&str, &str)],
        object: &str,
    ) -> Result<reqwest::Response> {
        let endpoint = &self.endpoint;
        endpoint.scope().await?;
        // A nextLink carries its own api-version.
        let versioned = url.contains("api-version=");
        let request = || async {
            let scope = endpoint.scope().await?;
            let token = self.credential.token(&scope).await?;
            let mut request = endpoint.http.get(url);
            if !versioned {
                request = request.query(&[("api-version", endpoint.api_version.as_str())]);
            }
            Ok(request.query(query).bearer_auth(token.secret.as_str()))
        };
        // A 401 may be a token that expired or was revoked, or a new challenge: drop the token so the next attempt
        // gets a new one (for the new scope, if the challenge changed). A challenge we must not follow ends it.
        let renew = |headers: &HeaderMap| {
            if let Some(Err(_)) = endpoint.take_challenge(headers) {
                return false;
            }
            self.credential.invalidate();
            true
        };
        endpoint.caller.send(operation, object, request, renew).await
    }
}

impl Backend for AzureKeyVault {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn get<'a>(&'a self, object: &'a ObjectRef) -> BoxFuture<'a, Result<FetchedSecret>> {
        Box::pin(self.get_object(object))
    }

    /// Pages through the secrets list (25 a page), following `nextLink` only to this vault's own origin.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>> {
        Box::pin(async move {
            let mut listed = Vec::new();
            self.list_pages(prefix, usize::MAX, |item| listed.push(item)).await?;
            listed.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(listed)
        })
    }

    fn list_updated(&self, max_pages: usize) -> Option<BoxFuture<'_, Result<Option<ListedUpdates>>>> {
        Some(Box::pin(async move {
            let mut updated = std::collections::HashMap::new();
            let pages = self.list_pages("", max_pages, |mut item| {
                item.name.make_ascii_lowercase();
                updated.insert(item.name.into_boxed_str(), item.updated);
            });
            let Some(pages) = pages.await? else { return Ok(None) };
            Ok(Some(ListedUpdates { updated, pages }))
        }))
    }

    /// Lists one secret name, reading no value. A refusal to list (an access policy with `get` but not `list`) still
    /// proves the token: the vault authenticated the caller before it refused.
    fn check(&self) -> BoxFuture<'_, Result<Checked>> {
        Box::pin(async move {
            let url = format!("{}/secrets", self.endpoint.vault_url);
            match self.call("list_secrets", &url, &[("maxresults", "1")], "the secrets list").await {
                Ok(_) => Ok(Checked { can_list: Some(true) }),
                Err(Error::Forbidden { .. }) => Ok(Checked { can_list: Some(false) }),
                Err(e) => Err(e),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_give_scope_and_tenant() {
        let public = r#"Bearer authorization="https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47", resource="https://vault.azure.net""#;
        let scope = parse_challenge(public, "team.vault.azure.net").expect("public cloud");
        assert_eq!(scope.scope, "https://vault.azure.net/.default");
        assert_eq!(scope.tenant.as_deref(), Some("72f988bf-86f1-41af-91ab-2d7cd011db47"));
        let china =
            r#"Bearer authorization_uri="https://login.chinacloudapi.cn/t1", scope="https://vault.azure.cn/.default""#;
        let scope = parse_challenge(china, "Team.Vault.Azure.CN").expect("China, case-insensitive host");
        assert_eq!((scope.scope.as_str(), scope.tenant.as_deref()), ("https://vault.azure.cn/.default", Some("t1")));
        let local = r#"Bearer authorization="https://login.microsoftonline.com/t2", resource="https://localhost:8443""#;
        assert_eq!(parse_challenge(local, "localhost").expect("a test vault").scope, "https://localhost:8443/.default");
    }

    #[test]
    fn challenges_for_other_resources_are_refused() {
        for (header, host) in [
            (
                r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://management.azure.com""#,
                "team.vault.azure.net",
            ),
            (
                r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net""#,
                "evilvault.azure.net.example",
            ),
            (
                r#"Bearer authorization="https://login.microsoftonline.com/t", resource="https://vault.azure.net""#,
                "localhost",
            ),
            (r#"Bearer authorization="https://login.microsoftonline.com/t""#, "team.vault.azure.net"),
            (r#"Basic realm="x""#, "team.vault.azure.net"),
            (r#"Bearer resource="not a url""#, "team.vault.azure.net"),
        ] {
            let error = parse_challenge(header, host).expect_err(header);
            assert!(matches!(error, Error::Unauthenticated { .. }), "{header}: {error:?}");
        }
    }

    // Property tests (cases: PROPTEST_CASES, raised by `make fuzz`): whatever a vault answers in its challenge, the
    // parser does not panic, and a token is only ever asked for the vault's own domain.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Challenge-like headers: a scheme, then `key=value` pairs with hostile keys, values, quotes and commas.
        fn challenge() -> impl Strategy<Value = String> {
            let key = prop_oneof![
                Just("authorization".to_string()),
                Just("authorization_uri".to_string()),
                Just("resource".to_string()),
                Just("scope".to_string()),
                "[A-Za-z_ ]{0,12}",
            ];
            let value = prop_oneof![
                Just("https://vault.azure.net".to_string()),
                Just("https://login.microsoftonline.com/tenant".to_string()),
                "https://[a-z.]{0,20}(:[0-9]{1,6})?(/[a-z.%/]{0,12})?",
                "[a-z]{1,8}://[^,\"]{0,30}",
                ".{0,40}",
            ];
            let scheme = prop_oneof![Just("Bearer "), Just("bearer "), Just("Basic "), Just("")];
            (scheme, proptest::collection::vec((key, value, any::<bool>()), 0..6)).prop_map(|(scheme, pairs)| {
                let pairs: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v, quoted)| if quoted { format!("{k}=\"{v}\"") } else { format!("{k}={v}") })
                    .collect();
                format!("{scheme}{}", pairs.join(", "))
            })
        }

        proptest! {
            #[test]
            fn a_token_is_only_asked_for_the_vaults_domain(header in challenge(), host in "[A-Za-z0-9.-]{0,30}") {
                if let Ok(scope) = parse_challenge(&header, &host) {
                    let resource = scope.scope.strip_suffix("/.default").unwrap_or(&scope.scope);
                    let resource_host = Url::parse(resource).expect("an accepted resource is a URL");
                    let resource_host = resource_host.host_str().expect("with a host").to_ascii_lowercase();
                    let host = host.to_ascii_lowercase();
                    let within = host == resource_host || host.ends_with(&format!(".{resource_host}"));
                    prop_assert!(within, "{} accepted for {}", resource, host);
                    if let Some(tenant) = scope.tenant {
                        prop_assert!(!tenant.is_empty() && !tenant.contains('/'));
                    }
                }
            }

            #[test]
            fn any_header_is_answered(header in ".{0,200}", host in ".{0,40}") {
                let _ = parse_challenge(&header, &host);
            }
        }
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        let vault = Origin::of("https://Team.vault.azure.net").unwrap();
        assert_eq!(Origin::of("https://team.VAULT.azure.net:443/secrets?x=1").as_ref(), Some(&vault));
        assert_ne!(Origin::of("http://team.vault.azure.net/secrets").as_ref(), Some(&vault));
        assert_ne!(Origin::of("https://team.vault.azure.net:8443/secrets").as_ref(), Some(&vault));
        assert_ne!(Origin::of("https://team.vault.azure.net.evil.example/secrets").as_ref(), Some(&vault));
        assert_eq!(Origin::of("not a url"), None);
    }
}
