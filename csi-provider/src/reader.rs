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
//! The store forms (`vaultSecret`, `storeRef`) are served by another reader given to
//! [`InlineReader::with_stores`].

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
    params::{AZURE_AUDIENCE, AzureSource, MountPlan, OpenBaoSource, PodInfo, PublishSecrets, Source, VaultObject},
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
    stores: Option<Arc<dyn VaultReader>>,
}

impl InlineReader {
    pub fn new(config: InlineConfig, cache: Arc<ReadCache>) -> Self {
        Self { config, cache, backends: Mutex::default(), budgets: Mutex::default(), stores: None }
    }

    /// Serves `vaultSecret` and `storeRef` through `stores`.
    pub fn with_stores(mut self, stores: Arc<dyn VaultReader>) -> Self {
        self.stores = Some(stores);
        self
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

    fn azure(&self, pod: &PodInfo, secrets: &PublishSecrets, source: &AzureSource) -> Result<Arc<dyn Backend>> {
        let url = match self.config.azure_vault_endpoints.get(&source.vault_name) {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}.{}", source.vault_name, source.cloud.vault_suffix()),
        };
        let authority =
            self.config.azure_authority_host.clone().unwrap_or_else(|| source.cloud.authority_host().to_string());
        let tenant = &source.tenant_id;
        let (key, token, grant_of, client_id): (String, Option<&str>, GrantOf, String) = match &source.client_id {
            Some(client_id) => {
                let token = pod.token(AZURE_AUDIENCE)?;
                let key = format!("azure|{url}|{tenant}|wi:{client_id}|sa:{}", pod.account());
                (key, Some(token.as_str()), GrantOf::Assertion, client_id.clone())
            }
            None => {
                let missing = || {
                    Error::invalid(
                        "nodePublishSecretRef",
                        "without clientID the service principal's clientid and clientsecret must be in nodePublishSecretRef",
                    )
                };
                let client_id = secrets.get("clientid").ok_or_else(missing)?;
                let secret = secrets.get("clientsecret").ok_or_else(missing)?;
                let key = format!("azure|{url}|{tenant}|sp:{client_id}:{}", fingerprint(secret.as_bytes()));
                (key, None, GrantOf::Secret(Zeroizing::new(secret.to_string())), client_id.to_string())
            }
        };
        let identity = key.trim_start_matches(&format!("azure|{url}|")).to_string();
        self.backend(key, token, |assertion| {
            let grant = match (grant_of, assertion) {
                (GrantOf::Secret(secret), _) => Grant::ClientSecret(secret),
                (GrantOf::Assertion, Some(source)) => Grant::ClientAssertion(source),
                (GrantOf::Assertion, None) => return Err(Error::internal("no pod token for workload identity")),
            };
            let credential = EntraToken::new(self.config.http.clone(), &authority, tenant, Some(client_id), grant)
                .for_resource(key_vault_resource(&url));
            let vault = AzureKeyVault::new(self.config.http.clone(), &url, "7.6", Arc::new(credential), &identity)
                .with_budget(self.budget(&url));
            Ok(Arc::new(vault))
        })
    }

    fn openbao(&self, pod: &PodInfo, source: &OpenBaoSource, object: &VaultObject) -> Result<Arc<dyn Backend>> {
        let address = source
            .address
            .clone()
            .or_else(|| self.config.openbao_default_address.clone())
            .ok_or_else(|| Error::invalid("vaultAddress", "missing, and the plugin has no default address"))?;
        let allowed = &self.config.openbao_allowed_addresses;
        if !allowed.is_empty() && !allowed.iter().any(|glob| glob_match(glob, &address)) {
            return Err(Error::denied("vaultAddress", format!("{address} is not an address this plugin may call")));
        }
        let audience = source.audience.as_deref().unwrap_or(&self.config.openbao_default_audience);
        let token = pod.token(audience)?;
        let Some((mount, kv)) = object.mount.clone() else {
            return Err(Error::internal("an OpenBao object without a mount"));
        };
        let principal = format!(
            "kubernetes:{}/{}/aud:{audience}/sa:{}",
            source.auth_mount_path.trim_matches('/'),
            source.role,
            pod.account()
        );
        let key = format!(
            "openbao|{address}|ns={}|{mount}|{kv:?}|{principal}",
            source.namespace.as_deref().unwrap_or_default()
        );
        self.backend(key, Some(token.as_str()), |assertion| {
            let jwt = assertion.ok_or_else(|| Error::internal("no pod token for Kubernetes auth"))?;
            let auth =
                AuthMethod::Kubernetes { mount_path: source.auth_mount_path.clone(), role: source.role.clone(), jwt };
            let location =
                KvMount { server: address.clone(), namespace: source.namespace.clone(), mount, kv_version: kv.into() };
            let bao = OpenBao::new(self.config.http.clone(), location, auth, &principal)
                .map_err(|e| Error::from_backend("vaultAddress", e))?
                .with_budget(self.budget(&address));
            Ok(Arc::new(bao))
        })
    }

    async fn read_inline(
        &self,
        pod: &PodInfo,
        secrets: &PublishSecrets,
        source: &Source,
        objects: &[VaultObject],
        max_age: Option<Duration>,
    ) -> Result<Vec<FetchedSecret>> {
        // Each distinct object is read once, even when several files come from it.
        let mut distinct: Vec<&VaultObject> = objects.iter().collect();
        distinct.sort();
        distinct.dedup();
        let reads = distinct.iter().map(|object| async move {
            let backend = match source {
                Source::Azure(azure) => self.azure(pod, secrets, azure)?,
                Source::OpenBao(bao) => self.openbao(pod, bao, object)?,
                Source::Store(_) => return Err(Error::internal("store objects are read by the store reader")),
            };
            let reference = ObjectRef { name: object.name.clone(), version: object.version.clone() };
            let fetched = self
                .cache
                .get(backend.as_ref(), &reference, max_age)
                .await
                .map_err(|e| Error::from_backend(&reference.to_string(), e))?;
            Ok::<_, Error>(((*object).clone(), fetched))
        });
        let read: HashMap<VaultObject, FetchedSecret> = try_join_all(reads).await?.into_iter().collect();
        Ok(objects.iter().map(|o| read[o].clone()).collect())
    }
}

enum GrantOf {
    Assertion,
    Secret(Zeroizing<String>),
}

impl VaultReader for InlineReader {
    fn vault_secret_plan<'a>(&'a self, pod: &'a PodInfo, name: &'a str) -> BoxFuture<'a, Result<MountPlan>> {
        match &self.stores {
            Some(stores) => stores.vault_secret_plan(pod, name),
            None => Box::pin(async {
                Err(Error::Unimplemented {
                    message: "vaultSecret: mounting a VaultSecret needs store resolution, which this plugin was started without".into(),
                })
            }),
        }
    }

    fn read<'a>(
        &'a self,
        pod: &'a PodInfo,
        secrets: &'a PublishSecrets,
        source: &'a Source,
        objects: &'a [VaultObject],
        max_age: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<FetchedSecret>>> {
        match (source, &self.stores) {
            (Source::Store(_), Some(stores)) => stores.read(pod, secrets, source, objects, max_age),
            (Source::Store(_), None) => {
                Box::pin(async {
                    Err(Error::Unimplemented {
                    message: "storeRef: mounting from a store needs store resolution, which this plugin was started without".into(),
                })
                })
            }
            _ => Box::pin(self.read_inline(pod, secrets, source, objects, max_age)),
        }
    }
}

/// A short, one-way fingerprint of credential material (never the material itself).
fn fingerprint(material: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(material).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(mut tail) = text.strip_prefix(head) else { return false };
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
    }
}
