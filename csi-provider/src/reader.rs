//! The read path: a [`VaultReader`] reads a volume's objects with the pod's own identity.
//!
//! [`InlineReader`] serves the forms that name the vault in the parameters (the Azure provider's
//! and the Vault provider's SecretProviderClasses): Azure workload identity exchanges the pod's
//! `api://AzureADTokenExchange` token at Entra; OpenBao's Kubernetes auth logs in with the pod's
//! token; a service principal comes from the volume's nodePublishSecretRef. No credential of the
//! plugin itself is ever used for a pod.
//!
//! One backend is kept per identity (the backend crate's typed [`Principal`]: vault, tenant or
//! role, client, and the pod's service account or a fingerprint of the nodePublishSecretRef
//! credential), so tokens are reused until shortly before they expire; reads go through one
//! [`ReadCache`] keyed by that identity, so pods of one service account share reads and a pod of
//! another never gets a read it could not make itself. One endpoint per vault (its request budget
//! and Key Vault challenge) is shared by every identity reading it. The store forms
//! (`vaultSecret`, `storeRef`) are resolved by the stores crate, the same layer the operator uses
//! (`crate::stores::StoreReader`), and read through [`InlineReader::read_objects`].

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::{BoxFuture, try_join_all};
use tokio::time::Instant;
use vaultsync_backend::{
    Backend, FetchedSecret, ObjectRef, Principal, ServiceAccount,
    azure::{AzureEndpoint, AzureKeyVault},
    budget::RequestBudget,
    cache::ReadCache,
    identity::fingerprint,
    openbao::{AuthMethod, KvMount, OpenBao},
    token::{AssertionSource, EntraToken, Grant},
};
use vaultsync_stores::tenancy::glob_match;
use zeroize::Zeroizing;

use crate::{
    error::{Error, Result},
    params::{AZURE_AUDIENCE, AzureSource, MountPlan, OpenBaoSource, PodInfo, PublishSecrets, Source, VaultObject},
};
use vaultsync_api::secret::DataFrom;

/// The Key Vault REST API version the plugin speaks.
const KEY_VAULT_API_VERSION: &str = "7.6";

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

    /// The keys a VaultSecret's `dataFrom` entries give, read as `reading` says. Only the store form has them.
    fn data_from<'a>(&'a self, _reading: ReadAs<'a>, _entries: &'a [DataFrom]) -> BoxFuture<'a, Result<Vec<Found>>> {
        Box::pin(async { Err(Error::Unimplemented { message: "dataFrom is read from a VaultSecret's store".into() }) })
    }
}

/// Who reads, from where, and how fresh: the pod (its identity), its nodePublishSecretRef, the source, and the age
/// above which cached reads are not taken.
#[derive(Clone, Copy)]
pub struct ReadAs<'a> {
    pub pod: &'a PodInfo,
    pub secrets: &'a PublishSecrets,
    pub source: &'a Source,
    pub max_age: Option<Duration>,
}

/// One key a `dataFrom` entry gave: its file name, value, and the object (id `<type>/<name>`) and version behind it.
#[derive(Clone, Debug)]
pub struct Found {
    pub key: String,
    pub value: vaultsync_backend::SecretBytes,
    pub id: String,
    pub version: String,
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
    /// Whether a Vault provider form may name a plain `http://` address (tokens and values would
    /// cross the network unencrypted).
    pub openbao_insecure_http: bool,
    /// The audience of the pod token for OpenBao when the form names none.
    pub openbao_default_audience: String,
    /// Told of every vault and token call (the plugin's metrics).
    pub observer: Option<vaultsync_backend::azure::CallObserver>,
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
        let mut current = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_str() != token {
            *current = Zeroizing::new(token.to_string());
        }
    }
}

impl AssertionSource for PodToken {
    fn assertion(&self) -> BoxFuture<'_, vaultsync_backend::Result<Zeroizing<String>>> {
        let token = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Box::pin(async move { Ok(token) })
    }
}

struct Kept {
    backend: Arc<dyn Backend>,
    token: Option<Arc<PodToken>>,
    used: Instant,
}

/// Which backend a read uses: the vault endpoint (URL, Vault namespace and mount) and who reads.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BackendKey {
    endpoint: String,
    principal: Principal,
}

/// Reads the inline forms; the store forms read through [`InlineReader::read_objects`] too.
pub struct InlineReader {
    config: InlineConfig,
    cache: Arc<ReadCache>,
    backends: Mutex<HashMap<BackendKey, Kept>>,
    budgets: Mutex<HashMap<String, Arc<RequestBudget>>>,
    /// One Key Vault endpoint per vault URL: its challenge is asked for once, whoever reads.
    azure_endpoints: Mutex<HashMap<String, Arc<AzureEndpoint>>>,
}

impl InlineReader {
    pub fn new(config: InlineConfig, cache: Arc<ReadCache>) -> Self {
        Self { config, cache, backends: Mutex::default(), budgets: Mutex::default(), azure_endpoints: Mutex::default() }
    }

    /// How many identities have a backend now (for tests and the benchmark).
    pub fn identities(&self) -> usize {
        self.backends.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// The request budget of the calls the plugin makes to one vault.
    fn budget(&self, endpoint: &str) -> Arc<RequestBudget> {
        let mut budgets = self.budgets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        budgets
            .entry(endpoint.to_string())
            .or_insert_with(|| Arc::new(RequestBudget::new(self.config.requests_per_second, self.config.burst)))
            .clone()
    }

    /// The backend kept for `key`, given the pod's current token; `build` makes a new one.
    fn backend(
        &self,
        key: BackendKey,
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

    fn azure_endpoint(&self, url: &str) -> Result<Arc<AzureEndpoint>> {
        let mut endpoints = self.azure_endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(endpoint) = endpoints.get(url) {
            return Ok(endpoint.clone());
        }
        let endpoint = AzureEndpoint::new(self.config.http.clone(), url, KEY_VAULT_API_VERSION)
            .map_err(|e| Error::from_backend("keyvaultName", e))?
            .metered(Some(self.budget(url)), self.config.observer.clone());
        let endpoint = Arc::new(endpoint);
        endpoints.insert(url.to_string(), endpoint.clone());
        Ok(endpoint)
    }

    /// The backend of an Azure Key Vault for the pod's identity (workload identity, when the form
    /// names a client ID) or the nodePublishSecretRef's service principal.
    fn azure_backend(&self, source: &AzureSource, pod: &PodInfo, secrets: &PublishSecrets) -> Result<Arc<dyn Backend>> {
        let url = match self.config.azure_vault_endpoints.get(&source.vault_name) {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!("https://{}.{}", source.vault_name, source.cloud.vault_suffix()),
        };
        let authority =
            self.config.azure_authority_host.clone().unwrap_or_else(|| source.cloud.authority_host().to_string());
        let tenant = source.tenant_id.clone();
        let (principal, token, secret) = match &source.client_id {
            Some(client_id) => {
                let token = pod.token(AZURE_AUDIENCE)?;
                let principal = Principal::AzureWorkload {
                    authority: authority.clone(),
                    tenant: tenant.clone(),
                    client_id: client_id.clone(),
                    audience: AZURE_AUDIENCE.into(),
                    account: account(pod),
                };
                (principal, Some(token.as_str()), None)
            }
            None => {
                let missing = || {
                    Error::invalid(
                        "nodePublishSecretRef",
                        "a service principal's clientid and clientsecret must be in nodePublishSecretRef",
                    )
                };
                let client_id = secrets.get("clientid").ok_or_else(missing)?.to_string();
                let secret = secrets.get("clientsecret").ok_or_else(missing)?;
                // The credential's fingerprint is part of the identity: a wrong secret never gets the right one's reads.
                let principal = Principal::AzureServicePrincipal {
                    authority: authority.clone(),
                    tenant: tenant.clone(),
                    client_id,
                    credential: fingerprint(secret.as_bytes()),
                };
                (principal, None, Some(Zeroizing::new(secret.to_string())))
            }
        };
        let client_id = match &principal {
            Principal::AzureWorkload { client_id, .. } | Principal::AzureServicePrincipal { client_id, .. } => {
                client_id.clone()
            }
            _ => unreachable!("an Azure principal was just made"),
        };
        let key = BackendKey { endpoint: format!("azure|{url}"), principal: principal.clone() };
        self.backend(key, token, |assertion| {
            let grant = match (secret, assertion) {
                (Some(secret), _) => Grant::ClientSecret(secret),
                (None, Some(source)) => Grant::ClientAssertion(source),
                (None, None) => return Err(Error::internal("no pod token for workload identity")),
            };
            let endpoint = self.azure_endpoint(&url)?;
            let (budget, observer) = endpoint.metering();
            let credential = EntraToken::new(self.config.http.clone(), &authority, &tenant, Some(client_id), grant)
                .metered(budget, observer);
            Ok(Arc::new(AzureKeyVault::new(endpoint, Arc::new(credential), principal)))
        })
    }

    /// The backend of an OpenBao / Vault KV mount for the pod's identity (Kubernetes auth).
    fn openbao_backend(
        &self,
        source: &OpenBaoSource,
        mount: &str,
        kv: crate::params::KvVersionKey,
        pod: &PodInfo,
    ) -> Result<Arc<dyn Backend>> {
        let server = source
            .address
            .clone()
            .or_else(|| self.config.openbao_default_address.clone())
            .ok_or_else(|| Error::invalid("vaultAddress", "missing, and the plugin has no default address"))?;
        let server = server.trim_end_matches('/').to_string();
        let allowed = &self.config.openbao_allowed_addresses;
        if !allowed.is_empty() && !allowed.iter().any(|glob| glob_match(glob, &server)) {
            return Err(Error::denied("vaultAddress", format!("{server} is not an address this plugin may call")));
        }
        let audience = source.audience.clone().unwrap_or_else(|| self.config.openbao_default_audience.clone());
        let token = pod.token(&audience)?;
        let principal = Principal::OpenBaoKubernetes {
            mount_path: source.auth_mount_path.clone(),
            role: source.role.clone(),
            audience,
            account: account(pod),
        };
        let key = BackendKey {
            endpoint: format!("openbao|{server}|ns={}|{mount}|{kv:?}", source.namespace.as_deref().unwrap_or_default()),
            principal: principal.clone(),
        };
        self.backend(key, Some(token.as_str()), |assertion| {
            let jwt: Arc<dyn AssertionSource> =
                assertion.ok_or_else(|| Error::internal("no pod token for Kubernetes auth"))?;
            let auth =
                AuthMethod::Kubernetes { mount_path: source.auth_mount_path.clone(), role: source.role.clone(), jwt };
            let location = KvMount {
                server: server.clone(),
                insecure_http: self.config.openbao_insecure_http,
                namespace: source.namespace.clone(),
                mount: mount.to_string(),
                kv_version: kv.into(),
            };
            let bao = OpenBao::new(self.config.http.clone(), location, auth, principal)
                .map_err(|e| Error::from_backend("vaultAddress", e))?
                .metered(Some(self.budget(&server)), self.config.observer.clone());
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
                let reference =
                    ObjectRef { name: object.name.clone(), version: object.version.clone(), kind: object.kind };
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
                let backend = self.azure_backend(azure, pod, secrets)?;
                self.read_objects(objects, max_age, |_| Ok(backend.clone())).await
            }
            Source::OpenBao(bao) => {
                self.read_objects(objects, max_age, |object| {
                    let (mount, kv) =
                        object.mount.clone().ok_or_else(|| Error::internal("an OpenBao object without a mount"))?;
                    self.openbao_backend(bao, &mount, kv, pod)
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

/// The pod's service account, the principal its reads are shared by.
fn account(pod: &PodInfo) -> ServiceAccount {
    ServiceAccount { namespace: pod.namespace.clone(), name: pod.service_account.clone() }
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

#[cfg(test)]
mod tests {
    use super::glob_match;

    /// The admin's address allowlist, with the stores crate's globs.
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
