//! The read path: a [`VaultReader`] reads a volume's objects with the pod's own identity.
//!
//! [`InlineReader`] serves the forms that name the vault in the parameters (the Azure provider's
//! and the Vault provider's SecretProviderClasses): Azure workload identity exchanges the pod's
//! `api://AzureADTokenExchange` token at Entra; OpenBao's Kubernetes auth logs in with the pod's
//! token; a service principal comes from the volume's nodePublishSecretRef. No credential of the
//! plugin itself is ever used for a pod.
//!
//! One backend is kept per identity (vault, tenant or role, client, and the pod's service account
//! or a fingerprint of the nodePublishSecretRef credential), so tokens are reused until shortly
//! before they expire; reads go through one [`ReadCache`] keyed by that identity, so pods of one
//! service account share reads and a pod of another never gets a read it could not make itself.
//! The store forms (`vaultSecret`, `storeRef`) are served by a reader that resolves stores and
//! hands the inline forms to this one (`crate::stores::StoreReader`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::{BoxFuture, try_join_all};
use tokio::time::Instant;
use vaultsync_backend::{
    Backend, FetchedSecret, ObjectRef,
    azure::AzureKeyVault,
    budget::RequestBudget,
    cache::ReadCache,
    openbao::{AuthMethod, KvMount, OpenBao},
    token::{AssertionSource, EntraToken, Grant, key_vault_resource},
};
use zeroize::Zeroizing;

use crate::{
    error::{Error, Result},
    params::{
        AZURE_AUDIENCE, AzureSource, KvVersionKey, MountPlan, OpenBaoSource, PodInfo, PublishSecrets, Source,
        VaultObject,
    },
};

/// Reads a volume's objects with the pod's identity.
pub trait VaultReader: Send + Sync {
    /// The plan of `vaultSecret: <name>`: that VaultSecret's store and mapping, in the pod's namespace.
    fn vault_secret_plan<'a>(&'a self, pod: &'a PodInfo, name: &'a str) -> BoxFuture<'a, Result<MountPlan>>;

    /// Reads `objects` from `source` as the pod; one result per object, in order. Entries older
    /// than `max_age` are not served from the cache.
    fn read<'a>(
        &'a self,
        pod: &'a PodInfo,
        secrets: &'a PublishSecrets,
        source: &'a Source,
        objects: &'a [VaultObject],
        max_age: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<FetchedSecret>>>;
}

/// Plugin-wide settings of the inline forms (set by the cluster's admin, never by tenants).
#[derive(Clone)]
pub struct InlineConfig {
    /// Trusts the plugin's CA bundle, or the system roots.
    pub http: reqwest::Client,
    /// Overrides the Entra authority host of every cloud (private or test authorities).
    pub azure_authority_host: Option<String>,
    /// Key Vault names served at another URL (private endpoints).
    pub azure_vault_endpoints: HashMap<String, String>,
    /// The address when a Vault provider form names none.
    pub openbao_default_address: Option<String>,
    /// Addresses a Vault provider form may name (`*` globs); empty: any.
    pub openbao_allowed_addresses: Vec<String>,
    /// The audience of the pod token for OpenBao when the form names none.
    pub openbao_default_audience: String,
    /// Calls per second per vault endpoint, and the burst.
    pub requests_per_second: u32,
    pub burst: u32,
    /// How long an identity's backend (and its cached vault token) is kept unused.
    pub idle_backend: Duration,
}

/// The pod's latest service-account token, the assertion its identity's backend logs in with.
struct PodToken(Mutex<Zeroizing<String>>);

impl PodToken {
    fn set(&self, token: &str) {
        let mut current = self.0.lock().expect("token lock");
        if current.as_str() != token {
            *current = Zeroizing::new(token.to_string());
        }
    }
}

impl AssertionSource for PodToken {
    fn assertion(&self) -> BoxFuture<'_, vaultsync_backend::Result<Zeroizing<String>>> {
        let token = self.0.lock().expect("token lock").clone();
        Box::pin(async move { Ok(token) })
    }
}

struct Kept {
    backend: Arc<dyn Backend>,
    token: Option<Arc<PodToken>>,
    used: Instant,
}

/// Reads the inline forms itself; the store forms through `stores`, when set.
pub struct InlineReader {
    config: InlineConfig,
    cache: Arc<ReadCache>,
    backends: Mutex<HashMap<String, Kept>>,
    budgets: Mutex<HashMap<String, Arc<RequestBudget>>>,
}

impl InlineReader {
    pub fn new(config: InlineConfig, cache: Arc<ReadCache>) -> Self {
        Self { config, cache, backends: Mutex::default(), budgets: Mutex::default() }
    }

    /// How many identities have a backend now (for tests and the benchmark).
    pub fn identities(&self) -> usize {
        self.backends.lock().expect("backends lock").len()
    }

    fn budget(&self, endpoint: &str) -> Arc<RequestBudget> {
        let mut budgets = self.budgets.lock().expect("budgets lock");
        budgets
            .entry(endpoint.to_string())
            .or_insert_with(|| Arc::new(RequestBudget::new(self.config.requests_per_second, self.config.burst)))
            .clone()
    }

    /// The backend kept for `key`, given the pod's current token; `build` makes a new one.
    fn backend(
        &self,
        key: String,
        token: Option<&str>,
        build: impl FnOnce(Option<Arc<PodToken>>) -> Result<Arc<dyn Backend>>,
    ) -> Result<Arc<dyn Backend>> {
        // A panic elsewhere while holding the lock leaves a map that is still consistent.
        let mut backends = self.backends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if backends.len() >= 64 {
            let idle = self.config.idle_backend;
            backends.retain(|_, kept| now.duration_since(kept.used) < idle);
        }
        if let Some(kept) = backends.get_mut(&key) {
            kept.used = now;
            if let (Some(source), Some(token)) = (&kept.token, token) {
                source.set(token);
            }
            return Ok(kept.backend.clone());
        }
        let source = token.map(|t| Arc::new(PodToken(Mutex::new(Zeroizing::new(t.to_string())))));
        let backend = build(source.clone())?;
        backends.insert(key, Kept { backend: backend.clone(), token: source, used: now });
        Ok(backend)
    }

    /// The backend of an Azure Key Vault for the pod's identity (workload identity) or the
    /// nodePublishSecretRef's service principal.
    pub fn azure_backend(
        &self,
        endpoint: &AzureEndpoint,
        credential: &AzureCredential,
        pod: &PodInfo,
        secrets: &PublishSecrets,
    ) -> Result<Arc<dyn Backend>> {
        let AzureEndpoint { url, authority, tenant, http, trust } = endpoint;
        let (principal, token, grant_of, client_id) = match credential {
            AzureCredential::WorkloadIdentity { client_id, audience } => {
                let token = pod.token(audience)?;
                let principal = format!("wi:{client_id}|aud:{audience}|sa:{}", pod.account());
                (principal, Some(token.as_str()), GrantOf::Assertion, client_id.clone())
            }
            AzureCredential::ServicePrincipal { client_id } => {
                let missing = || {
                    Error::invalid(
                        "nodePublishSecretRef",
                        "a service principal's clientid and clientsecret must be in nodePublishSecretRef",
                    )
                };
                let client_id = match client_id {
                    Some(id) => id.clone(),
                    None => secrets.get("clientid").ok_or_else(missing)?.to_string(),
                };
                let secret = secrets.get("clientsecret").ok_or_else(missing)?;
                // The credential's fingerprint is part of the identity: a wrong secret never gets the right one's reads.
                let principal = format!("sp:{client_id}:{}", fingerprint(secret.as_bytes()));
                (principal, None, GrantOf::Secret(Zeroizing::new(secret.to_string())), client_id)
            }
        };
        let identity = format!("{tenant}|{principal}|trust:{trust}");
        let key = format!("azure|{url}|{identity}");
        self.backend(key, token, |assertion| {
            let grant = match (grant_of, assertion) {
                (GrantOf::Secret(secret), _) => Grant::ClientSecret(secret),
                (GrantOf::Assertion, Some(source)) => Grant::ClientAssertion(source),
                (GrantOf::Assertion, None) => return Err(Error::internal("no pod token for workload identity")),
            };
            let credential = EntraToken::new(http.clone(), authority, tenant, Some(client_id), grant)
                .for_resource(key_vault_resource(url));
            let vault = AzureKeyVault::new(http.clone(), url, "7.6", Arc::new(credential), &identity)
                .with_budget(self.budget(url));
            Ok(Arc::new(vault))
        })
    }

    /// The backend of an OpenBao / Vault KV mount for the pod's identity (Kubernetes auth) or the
    /// nodePublishSecretRef's token or AppRole secret ID.
    pub fn openbao_backend(
        &self,
        endpoint: &OpenBaoEndpoint,
        credential: &OpenBaoCredential,
        mount: &str,
        kv: KvVersionKey,
        pod: &PodInfo,
        secrets: &PublishSecrets,
    ) -> Result<Arc<dyn Backend>> {
        let OpenBaoEndpoint { server, namespace, http, trust } = endpoint;
        let from_secret = |keys: &[&str]| {
            keys.iter().find_map(|k| secrets.get(k)).map(|v| Zeroizing::new(v.trim().to_string())).ok_or_else(|| {
                Error::invalid(
                    "nodePublishSecretRef",
                    format!("the credential must be in nodePublishSecretRef under {keys:?}"),
                )
            })
        };
        let (principal, token, method) = match credential {
            OpenBaoCredential::Kubernetes { mount_path, role, audience } => {
                let token = pod.token(audience)?;
                let principal =
                    format!("kubernetes:{}/{role}/aud:{audience}/sa:{}", mount_path.trim_matches('/'), pod.account());
                (principal, Some(token.as_str()), Method::Kubernetes { mount_path, role })
            }
            OpenBaoCredential::Token => {
                let value = from_secret(&["token"])?;
                (format!("token:{}", fingerprint(value.as_bytes())), None, Method::Token(value))
            }
            OpenBaoCredential::AppRole { mount_path, role_id } => {
                let secret_id = from_secret(&["secretid", "secret-id", "secret_id"])?;
                let principal = format!("approle:{mount_path}/{role_id}:{}", fingerprint(secret_id.as_bytes()));
                (principal, None, Method::AppRole { mount_path, role_id, secret_id })
            }
        };
        let key = format!(
            "openbao|{server}|ns={}|{mount}|{kv:?}|{principal}|trust:{trust}",
            namespace.as_deref().unwrap_or_default()
        );
        self.backend(key, token, |assertion| {
            let auth = match method {
                Method::Kubernetes { mount_path, role } => AuthMethod::Kubernetes {
                    mount_path: mount_path.clone(),
                    role: role.clone(),
                    jwt: assertion.ok_or_else(|| Error::internal("no pod token for Kubernetes auth"))?,
                },
                Method::Token(value) => AuthMethod::Token(value),
                Method::AppRole { mount_path, role_id, secret_id } => {
                    AuthMethod::AppRole { mount_path: mount_path.clone(), role_id: role_id.clone(), secret_id }
                }
            };
            let location = KvMount {
                server: server.clone(),
                namespace: namespace.clone(),
                mount: mount.to_string(),
                kv_version: kv.into(),
            };
            let bao = OpenBao::new(http.clone(), location, auth, &principal)
                .map_err(|e| Error::from_backend("server", e))?
                .with_budget(self.budget(server));
            Ok(Arc::new(bao))
        })
    }

    /// Reads each distinct object once through the cache, with the backend `backend_for` gives it;
    /// one result per object of `objects`, in order.
    pub async fn read_objects(
        &self,
        objects: &[VaultObject],
        max_age: Option<Duration>,
        backend_for: impl Fn(&VaultObject) -> Result<Arc<dyn Backend>>,
    ) -> Result<Vec<FetchedSecret>> {
        let mut distinct: Vec<&VaultObject> = objects.iter().collect();
        distinct.sort();
        distinct.dedup();
        let mut reads = Vec::new();
        for object in distinct {
            let backend = backend_for(object)?;
            reads.push(async move {
                let reference = ObjectRef { name: object.name.clone(), version: object.version.clone() };
                let fetched = self
                    .cache
                    .get(backend.as_ref(), &reference, max_age)
                    .await
                    .map_err(|e| Error::from_backend(&reference.to_string(), e))?;
                Ok::<_, Error>((object.clone(), fetched))
            });
        }
        let read: HashMap<VaultObject, FetchedSecret> = try_join_all(reads).await?.into_iter().collect();
        Ok(objects.iter().map(|o| read[o].clone()).collect())
    }

    fn inline_azure(&self, source: &AzureSource) -> (AzureEndpoint, AzureCredential) {
        let url = match self.config.azure_vault_endpoints.get(&source.vault_name) {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}.{}", source.vault_name, source.cloud.vault_suffix()),
        };
        let authority =
            self.config.azure_authority_host.clone().unwrap_or_else(|| source.cloud.authority_host().to_string());
        let endpoint = AzureEndpoint {
            url,
            authority,
            tenant: source.tenant_id.clone(),
            http: self.config.http.clone(),
            trust: "plugin".into(),
        };
        let credential = match &source.client_id {
            Some(client_id) => {
                AzureCredential::WorkloadIdentity { client_id: client_id.clone(), audience: AZURE_AUDIENCE.into() }
            }
            None => AzureCredential::ServicePrincipal { client_id: None },
        };
        (endpoint, credential)
    }

    fn inline_openbao(&self, source: &OpenBaoSource) -> Result<(OpenBaoEndpoint, OpenBaoCredential)> {
        let address = source
            .address
            .clone()
            .or_else(|| self.config.openbao_default_address.clone())
            .ok_or_else(|| Error::invalid("vaultAddress", "missing, and the plugin has no default address"))?;
        let allowed = &self.config.openbao_allowed_addresses;
        if !allowed.is_empty() && !allowed.iter().any(|glob| glob_match(glob, &address)) {
            return Err(Error::denied("vaultAddress", format!("{address} is not an address this plugin may call")));
        }
        let audience = source.audience.clone().unwrap_or_else(|| self.config.openbao_default_audience.clone());
        let endpoint = OpenBaoEndpoint {
            server: address,
            namespace: source.namespace.clone(),
            http: self.config.http.clone(),
            trust: "plugin".into(),
        };
        let credential = OpenBaoCredential::Kubernetes {
            mount_path: source.auth_mount_path.clone(),
            role: source.role.clone(),
            audience,
        };
        Ok((endpoint, credential))
    }

    async fn read_inline(
        &self,
        pod: &PodInfo,
        secrets: &PublishSecrets,
        source: &Source,
        objects: &[VaultObject],
        max_age: Option<Duration>,
    ) -> Result<Vec<FetchedSecret>> {
        match source {
            Source::Azure(azure) => {
                let (endpoint, credential) = self.inline_azure(azure);
                self.read_objects(objects, max_age, |_| self.azure_backend(&endpoint, &credential, pod, secrets)).await
            }
            Source::OpenBao(bao) => {
                let (endpoint, credential) = self.inline_openbao(bao)?;
                self.read_objects(objects, max_age, |object| {
                    let (mount, kv) =
                        object.mount.clone().ok_or_else(|| Error::internal("an OpenBao object without a mount"))?;
                    self.openbao_backend(&endpoint, &credential, &mount, kv, pod, secrets)
                })
                .await
            }
            Source::Store(_) => Err(Error::Unimplemented {
                message:
                    "storeRef: mounting from a store needs store resolution, which this plugin was started without"
                        .into(),
            }),
        }
    }
}

/// Where an Azure Key Vault is and whom its clients trust.
pub struct AzureEndpoint {
    pub url: String,
    pub authority: String,
    pub tenant: String,
    pub http: reqwest::Client,
    /// Names the CA bundle `http` trusts (part of the identity: stores with other CAs get other clients).
    pub trust: String,
}

/// How a pod authenticates to Azure.
pub enum AzureCredential {
    /// The pod's token for `audience`, exchanged at Entra for `client_id`.
    WorkloadIdentity { client_id: String, audience: String },
    /// A client secret from nodePublishSecretRef (`clientsecret`; `clientid` when none is given).
    ServicePrincipal { client_id: Option<String> },
}

/// Where an OpenBao / Vault server is and whom its client trusts.
pub struct OpenBaoEndpoint {
    pub server: String,
    pub namespace: Option<String>,
    pub http: reqwest::Client,
    pub trust: String,
}

/// How a pod authenticates to OpenBao / Vault.
pub enum OpenBaoCredential {
    /// A login to `role` with the pod's token for `audience`.
    Kubernetes { mount_path: String, role: String, audience: String },
    /// A token from nodePublishSecretRef (`token`).
    Token,
    /// An AppRole secret ID from nodePublishSecretRef (`secretid`).
    AppRole { mount_path: String, role_id: String },
}

enum Method<'a> {
    Kubernetes { mount_path: &'a String, role: &'a String },
    Token(Zeroizing<String>),
    AppRole { mount_path: &'a String, role_id: &'a String, secret_id: Zeroizing<String> },
}

enum GrantOf {
    Assertion,
    Secret(Zeroizing<String>),
}

impl VaultReader for InlineReader {
    fn vault_secret_plan<'a>(&'a self, _pod: &'a PodInfo, _name: &'a str) -> BoxFuture<'a, Result<MountPlan>> {
        Box::pin(async {
            Err(Error::Unimplemented {
                message:
                    "vaultSecret: mounting a VaultSecret needs store resolution, which this plugin was started without"
                        .into(),
            })
        })
    }

    fn read<'a>(
        &'a self,
        pod: &'a PodInfo,
        secrets: &'a PublishSecrets,
        source: &'a Source,
        objects: &'a [VaultObject],
        max_age: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<FetchedSecret>>> {
        Box::pin(self.read_inline(pod, secrets, source, objects, max_age))
    }
}

/// A short, one-way fingerprint of credential material (never the material itself).
fn fingerprint(material: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(material).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `*` matches any run of characters, `?` one character; everything else matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => {
            pattern.chars().count() == text.chars().count()
                && pattern.chars().zip(text.chars()).all(|(p, t)| p == '?' || p == t)
        }
        Some((head, rest)) => {
            let head_chars = head.chars().count();
            let Some(split) = text
                .char_indices()
                .nth(head_chars)
                .map(|(i, _)| i)
                .or((text.chars().count() == head_chars).then_some(text.len()))
            else {
                return false;
            };
            if !glob_match(head, &text[..split]) {
                return false;
            }
            let mut tail = &text[split..];
            if rest.is_empty() {
                return true;
            }
            loop {
                if glob_match(rest, tail) {
                    return true;
                }
                let mut chars = tail.chars();
                if chars.next().is_none() {
                    return false;
                }
                tail = chars.as_str();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn address_globs() {
        assert!(glob_match("https://bao.example:8200", "https://bao.example:8200"));
        assert!(glob_match("https://*.example:8200", "https://bao.example:8200"));
        assert!(!glob_match("https://*.example:8200", "https://bao.example:8201"));
        assert!(glob_match("*", "http://anything"));
        assert!(glob_match("team-a-*", "team-a-db-password"));
        assert!(glob_match("db-?", "db-1"));
        assert!(!glob_match("db-?", "db-12"));
        assert!(glob_match("*-password", "team-a-password"));
        assert!(!glob_match("team-a-*", "team-b-db"));
        assert!(!glob_match("exact", "exactly"));
    }
}
