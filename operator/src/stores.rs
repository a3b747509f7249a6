//! From a VaultSecret's `storeRef` to a backend it may read through: finds the store, applies a
//! ClusterVaultStore's namespace conditions and object allowlists, and builds (once per store
//! generation) the backend with the store's own identity and request budget.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Namespace, Secret, ServiceAccount},
};
use kube::{
    Api, Client, ResourceExt,
    api::PostParams,
    runtime::reflector::{ObjectRef, Store},
};
use vaultsync_api::{
    ClusterVaultStore, VaultSecret, VaultStore,
    secret::StoreKind,
    store::{AzureCloud, AzureKeyVaultProvider, NamespaceCondition, Provider, RequestBudget as BudgetSpec},
};
use vaultsync_backend::{
    Backend,
    assertion::CertificateAssertion,
    azure::{AzureKeyVault, CallObserver, http_client},
    budget::RequestBudget,
    openbao::{AuthMethod, KvMount, KvVersion, OpenBao},
    token::{AssertionSource, EntraToken, Grant, key_vault_resource, token_url},
};
use zeroize::Zeroizing;

use crate::{Args, metrics::Metrics};

#[derive(thiserror::Error, Debug, Clone, PartialEq)]
pub enum StoreError {
    #[error("{store} not found")]
    NotFound { store: String },
    #[error("{store} may not be used from namespace {namespace}")]
    NamespaceNotAllowed { store: String, namespace: String },
    #[error("{store} does not allow namespace {namespace} to read {object}")]
    ObjectNotAllowed { store: String, namespace: String, object: String },
    #[error("{store} is invalid: {message}")]
    InvalidSpec { store: String, message: String },
    #[error("{store}: {message}")]
    Unavailable { store: String, message: String },
}

impl StoreError {
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } | StoreError::InvalidSpec { .. } | StoreError::Unavailable { .. } => {
                "StoreNotReady"
            }
            StoreError::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            StoreError::ObjectNotAllowed { .. } => "ObjectNotAllowed",
        }
    }

    /// The reason the store itself reports (a VaultSecret reports `StoreNotReady` instead).
    pub fn store_reason(&self) -> &'static str {
        match self {
            StoreError::InvalidSpec { .. } => "InvalidSpec",
            StoreError::Unavailable { .. } => "BackendUnavailable",
            other => other.reason(),
        }
    }
}

/// A store a VaultSecret may use, with its backend.
pub struct ResolvedStore {
    /// `VaultStore/<namespace>/<name>` or `ClusterVaultStore/<name>`: the metrics label.
    pub key: String,
    pub backend: Arc<dyn Backend>,
    /// Object-name globs the VaultSecret's namespace may read; `None`: every object.
    allowed_objects: Option<Vec<String>>,
    namespace: String,
}

impl ResolvedStore {
    /// Refuses objects outside the namespace's allowlist before anything is fetched.
    pub fn check_object(&self, object: &str) -> Result<(), StoreError> {
        match &self.allowed_objects {
            Some(globs) if !globs.iter().any(|g| glob_match(g, object)) => Err(StoreError::ObjectNotAllowed {
                store: self.key.clone(),
                namespace: self.namespace.clone(),
                object: object.to_string(),
            }),
            _ => Ok(()),
        }
    }
}

/// Backends by store key, with the store generation they were built for.
type BuiltBackends = HashMap<String, (i64, Arc<dyn Backend>)>;

/// Builds and keeps one backend per store generation.
pub struct Stores {
    client: Client,
    args: Args,
    metrics: Arc<Metrics>,
    backends: Mutex<BuiltBackends>,
    /// Watched copies of the stores, once the VaultSecret controller runs: a store found there
    /// costs no GET; one not (yet) there is read from the apiserver.
    caches: Mutex<Option<(Store<VaultStore>, Store<ClusterVaultStore>)>>,
}

impl Stores {
    pub fn new(client: Client, args: Args, metrics: Arc<Metrics>) -> Self {
        Self { client, args, metrics, backends: Mutex::default(), caches: Mutex::default() }
    }

    /// Drops a store's backend after its credential was refused, so the next use builds it again
    /// and reads the credential Secret anew (a rotated client secret, token or secret ID).
    pub fn forget(&self, key: &str) {
        self.backends.lock().expect("backends lock").remove(key);
    }

    /// Serves store lookups from these watched copies.
    pub fn use_caches(&self, vault_stores: Store<VaultStore>, cluster_stores: Store<ClusterVaultStore>) {
        *self.caches.lock().expect("caches lock") = Some((vault_stores, cluster_stores));
    }

    fn cached_vault_store(&self, namespace: &str, name: &str) -> Option<Arc<VaultStore>> {
        let caches = self.caches.lock().expect("caches lock");
        caches.as_ref()?.0.get(&ObjectRef::new(name).within(namespace))
    }

    fn cached_cluster_store(&self, name: &str) -> Option<Arc<ClusterVaultStore>> {
        let caches = self.caches.lock().expect("caches lock");
        caches.as_ref()?.1.get(&ObjectRef::new(name))
    }

    /// The store `vs` names, if its namespace may use it.
    pub async fn resolve(&self, vs: &VaultSecret) -> Result<ResolvedStore, StoreError> {
        let namespace = vs.namespace().unwrap_or_default();
        let name = &vs.spec.store_ref.name;
        let (key, generation, provider, budget, allowed_objects, sa_namespace) = match vs.spec.store_ref.kind {
            StoreKind::VaultStore => {
                let key = format!("VaultStore/{namespace}/{name}");
                let store = match self.cached_vault_store(&namespace, name) {
                    Some(store) => (*store).clone(),
                    None => Api::<VaultStore>::namespaced(self.client.clone(), &namespace)
                        .get_opt(name)
                        .await
                        .map_err(|e| StoreError::Unavailable { store: key.clone(), message: e.to_string() })?
                        .ok_or_else(|| StoreError::NotFound { store: key.clone() })?,
                };
                let generation = store.metadata.generation.unwrap_or_default();
                (key, generation, store.spec.provider, store.spec.budget, None, Some(namespace.clone()))
            }
            StoreKind::ClusterVaultStore => {
                let key = format!("ClusterVaultStore/{name}");
                let store = match self.cached_cluster_store(name) {
                    Some(store) => (*store).clone(),
                    None => Api::<ClusterVaultStore>::all(self.client.clone())
                        .get_opt(name)
                        .await
                        .map_err(|e| StoreError::Unavailable { store: key.clone(), message: e.to_string() })?
                        .ok_or_else(|| StoreError::NotFound { store: key.clone() })?,
                };
                let matching = self.matching_conditions(&store.spec.conditions, &namespace, &key).await?;
                if matching.is_empty() {
                    return Err(StoreError::NamespaceNotAllowed { store: key, namespace });
                }
                // The union of what the matching conditions allow; one without a list allows all.
                let allowed = if matching.iter().any(|c| c.allowed_objects.is_empty()) {
                    None
                } else {
                    Some(matching.iter().flat_map(|c| c.allowed_objects.clone()).collect())
                };
                let generation = store.metadata.generation.unwrap_or_default();
                (key, generation, store.spec.provider, store.spec.budget, allowed, None)
            }
        };
        let backend = self.backend(&key, generation, &provider, budget.as_ref(), sa_namespace.as_deref()).await?;
        Ok(ResolvedStore { key, backend, allowed_objects, namespace })
    }

    async fn matching_conditions<'a>(
        &self,
        conditions: &'a [NamespaceCondition],
        namespace: &str,
        key: &str,
    ) -> Result<Vec<&'a NamespaceCondition>, StoreError> {
        let mut labels = None;
        let mut matching = Vec::new();
        for condition in conditions {
            let by_name = condition.namespaces.iter().any(|n| n == namespace);
            let by_selector = match &condition.namespace_selector {
                Some(selector) if !by_name => {
                    if labels.is_none() {
                        let ns = Api::<Namespace>::all(self.client.clone())
                            .get(namespace)
                            .await
                            .map_err(|e| StoreError::Unavailable { store: key.into(), message: e.to_string() })?;
                        labels = Some(ns.metadata.labels.unwrap_or_default());
                    }
                    selector_matches(selector, labels.as_ref().expect("labels were just read"))
                }
                _ => false,
            };
            if by_name || by_selector {
                matching.push(condition);
            }
        }
        Ok(matching)
    }

    /// Whether a store works: its backend can be built, a token had, and the vault answers.
    pub async fn check(
        &self,
        key: &str,
        generation: i64,
        provider: &Provider,
        budget: Option<&BudgetSpec>,
        store_namespace: Option<&str>,
    ) -> Result<(), (&'static str, String)> {
        let backend = self
            .backend(key, generation, provider, budget, store_namespace)
            .await
            .map_err(|e| (e.store_reason(), e.to_string()))?;
        backend.check().await.map_err(|e| {
            if matches!(e, vaultsync_backend::Error::Unauthenticated { .. }) {
                self.forget(key);
            }
            (e.reason(), e.to_string())
        })
    }

    async fn backend(
        &self,
        key: &str,
        generation: i64,
        provider: &Provider,
        budget: Option<&BudgetSpec>,
        store_namespace: Option<&str>,
    ) -> Result<Arc<dyn Backend>, StoreError> {
        if let Some((built_for, backend)) = self.backends.lock().expect("backends lock").get(key)
            && *built_for == generation
        {
            return Ok(backend.clone());
        }
        let backend: Arc<dyn Backend> = if let Some(azure) = &provider.azure_key_vault {
            Arc::new(self.azure(key, azure, budget, store_namespace).await?)
        } else if let Some(openbao) = &provider.openbao {
            Arc::new(self.openbao(key, openbao, budget, store_namespace).await?)
        } else {
            return Err(StoreError::InvalidSpec { store: key.into(), message: "no provider is set".into() });
        };
        self.backends.lock().expect("backends lock").insert(key.to_string(), (generation, backend.clone()));
        Ok(backend)
    }

    async fn azure(
        &self,
        key: &str,
        spec: &AzureKeyVaultProvider,
        budget: Option<&BudgetSpec>,
        store_namespace: Option<&str>,
    ) -> Result<AzureKeyVault, StoreError> {
        let invalid = |message: String| StoreError::InvalidSpec { store: key.into(), message };
        let http = http_client(spec.ca_bundle.as_deref()).map_err(|e| invalid(e.to_string()))?;
        let authority = match spec.cloud {
            AzureCloud::Public => "https://login.microsoftonline.com".to_string(),
            AzureCloud::China => "https://login.chinacloudapi.cn".to_string(),
            AzureCloud::USGovernment => "https://login.microsoftonline.us".to_string(),
            AzureCloud::Custom => {
                spec.authority_host.clone().ok_or_else(|| invalid("authorityHost is required".into()))?
            }
        };
        let auth = &spec.auth;
        let (grant, client_id, principal) = if let Some(wi) = &auth.workload_identity {
            let namespace = wi
                .service_account_ref
                .namespace
                .as_deref()
                .or(store_namespace)
                .ok_or_else(|| invalid("workloadIdentity.serviceAccountRef.namespace is required".into()))?;
            // A VaultStore always uses an account of its own namespace.
            let namespace = store_namespace.unwrap_or(namespace);
            let source = ServiceAccountAssertion {
                api: Api::namespaced(self.client.clone(), namespace),
                name: wi.service_account_ref.name.clone(),
                audience: wi.audience.clone(),
            };
            let principal = format!("sa:{namespace}/{}", wi.service_account_ref.name);
            (Grant::ClientAssertion(Arc::new(source)), Some(wi.client_id.clone()), principal)
        } else if let Some(sp) = &auth.service_principal {
            // Reads are shared by stores with the same principal: include the credential, so a
            // store claiming a client ID with a wrong credential never gets another store's reads.
            let (grant, credential) = match (&sp.client_secret_ref, &sp.client_certificate_ref) {
                (Some(secret_ref), _) => {
                    let secret = self.secret_value(key, secret_ref, store_namespace, "client secret").await?;
                    let fingerprint = fingerprint(secret.as_bytes());
                    (Grant::ClientSecret(secret), fingerprint)
                }
                (None, Some(cert_ref)) => {
                    let pem = self.secret_value(key, cert_ref, store_namespace, "client certificate").await?;
                    let audience = token_url(&authority, &spec.tenant_id);
                    let assertion = CertificateAssertion::from_pem(&pem, &sp.client_id, &audience)
                        .map_err(|e| invalid(format!("client certificate: {e}")))?;
                    (Grant::ClientAssertion(Arc::new(assertion)), fingerprint(pem.as_bytes()))
                }
                (None, None) => {
                    return Err(invalid("servicePrincipal needs clientSecretRef or clientCertificateRef".into()));
                }
            };
            let principal = format!("sp:{}:{credential}", sp.client_id);
            (grant, Some(sp.client_id.clone()), principal)
        } else if let Some(mi) = &auth.managed_identity {
            let grant = Grant::ManagedIdentity { endpoint: self.args.imds_endpoint.clone() };
            let principal = format!("mi:{}", mi.client_id.as_deref().unwrap_or("system"));
            (grant, mi.client_id.clone(), principal)
        } else {
            return Err(invalid("no auth method is set".into()));
        };
        let credential = EntraToken::new(http.clone(), &authority, &spec.tenant_id, client_id, grant)
            .for_resource(key_vault_resource(&spec.vault_url));
        let identity = format!("{}/{principal}", spec.tenant_id);
        let (budget, observer) = self.metering(key, budget);
        Ok(AzureKeyVault::new(http, &spec.vault_url, &spec.api_version, Arc::new(credential), &identity)
            .with_budget(budget)
            .with_observer(observer))
    }
}

impl Stores {
    /// A store's request budget (its own, or the operator's default) and the observer that counts
    /// its backend calls under the store's key.
    fn metering(&self, key: &str, budget: Option<&BudgetSpec>) -> (Arc<RequestBudget>, CallObserver) {
        let (rps, burst) = budget
            .map(|b| (b.requests_per_second, b.burst))
            .unwrap_or((self.args.default_requests_per_second, self.args.default_burst));
        let (metrics, store) = (self.metrics.clone(), key.to_string());
        let observer: CallObserver =
            Arc::new(move |operation, outcome| metrics.backend_call(&store, operation, outcome));
        (Arc::new(RequestBudget::new(rps, burst)), observer)
    }

    /// A key of a Secret named by a store (in the store's namespace, or the one the reference
    /// names for a cluster store), as text.
    async fn secret_value(
        &self,
        key: &str,
        secret_ref: &vaultsync_api::store::SecretKeyRef,
        store_namespace: Option<&str>,
        what: &str,
    ) -> Result<Zeroizing<String>, StoreError> {
        let invalid = |message: String| StoreError::InvalidSpec { store: key.into(), message };
        let namespace = store_namespace
            .or(secret_ref.namespace.as_deref())
            .ok_or_else(|| invalid(format!("the {what} reference needs a namespace in a ClusterVaultStore")))?;
        let secret = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(&secret_ref.name)
            .await
            .map_err(|e| StoreError::Unavailable { store: key.into(), message: e.to_string() })?
            .ok_or_else(|| invalid(format!("{what} Secret {namespace}/{} not found", secret_ref.name)))?;
        let value = secret
            .data
            .and_then(|mut d| d.remove(&secret_ref.key))
            .ok_or_else(|| invalid(format!("Secret {namespace}/{} has no key {}", secret_ref.name, secret_ref.key)))?;
        Ok(Zeroizing::new(String::from_utf8(value.0).map_err(|_| invalid(format!("the {what} is not UTF-8")))?))
    }
}

impl Stores {
    /// An OpenBao / Vault KV backend. Kubernetes auth logs in with a TokenRequest token of the
    /// store's service account (a VaultStore's own namespace); token and AppRole auth read their
    /// credential from a Secret. Reads are shared only by stores with the same principal, which
    /// for token and AppRole includes a fingerprint of the credential.
    async fn openbao(
        &self,
        key: &str,
        spec: &vaultsync_api::store::OpenBaoProvider,
        budget: Option<&BudgetSpec>,
        store_namespace: Option<&str>,
    ) -> Result<OpenBao, StoreError> {
        let invalid = |message: String| StoreError::InvalidSpec { store: key.into(), message };
        let http = http_client(spec.ca_bundle.as_deref()).map_err(|e| invalid(e.to_string()))?;
        let kv_version = match spec.kv_version {
            1 => KvVersion::V1,
            2 => KvVersion::V2,
            other => return Err(invalid(format!("kvVersion {other} is not 1 or 2"))),
        };
        let auth = &spec.auth;
        let (method, principal) = if let Some(k8s) = &auth.kubernetes {
            let account = &k8s.service_account_ref;
            // A VaultStore always uses an account of its own namespace.
            let namespace = store_namespace
                .or(account.namespace.as_deref())
                .ok_or_else(|| invalid("kubernetes.serviceAccountRef.namespace is required".into()))?;
            let source = ServiceAccountAssertion {
                api: Api::namespaced(self.client.clone(), namespace),
                name: account.name.clone(),
                audience: k8s.audience.clone(),
            };
            let principal = format!("kubernetes:{}/{}/sa:{namespace}/{}", k8s.mount_path, k8s.role, account.name);
            let method = AuthMethod::Kubernetes {
                mount_path: k8s.mount_path.clone(),
                role: k8s.role.clone(),
                jwt: Arc::new(source),
            };
            (method, principal)
        } else if let Some(token) = &auth.token {
            let value = self.secret_value(key, &token.secret_ref, store_namespace, "OpenBao token").await?;
            let value = Zeroizing::new(value.trim().to_string());
            let principal = format!("token:{}", fingerprint(value.as_bytes()));
            (AuthMethod::Token(value), principal)
        } else if let Some(approle) = &auth.app_role {
            let secret_id = self.secret_value(key, &approle.secret_ref, store_namespace, "AppRole secret ID").await?;
            let secret_id = Zeroizing::new(secret_id.trim().to_string());
            let principal =
                format!("approle:{}/{}:{}", approle.mount_path, approle.role_id, fingerprint(secret_id.as_bytes()));
            let method = AuthMethod::AppRole {
                mount_path: approle.mount_path.clone(),
                role_id: approle.role_id.clone(),
                secret_id,
            };
            (method, principal)
        } else {
            return Err(invalid("no auth method is set".into()));
        };
        let location = KvMount {
            server: spec.server.clone(),
            namespace: spec.namespace.clone(),
            mount: spec.mount.clone(),
            kv_version,
        };
        let (budget, observer) = self.metering(key, budget);
        Ok(OpenBao::new(http, location, method, &principal)
            .map_err(|e| invalid(e.to_string()))?
            .with_budget(budget)
            .with_observer(observer))
    }
}

/// A short, one-way fingerprint of credential material (never the material itself).
fn fingerprint(material: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(material).iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// A service-account token from the TokenRequest API: the workload identity assertion.
struct ServiceAccountAssertion {
    api: Api<ServiceAccount>,
    name: String,
    audience: String,
}

impl AssertionSource for ServiceAccountAssertion {
    fn assertion(&self) -> BoxFuture<'_, vaultsync_backend::Result<Zeroizing<String>>> {
        Box::pin(async move {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(vec![self.audience.clone()]),
                    expiration_seconds: Some(600),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let answer =
                self.api.create_token_request(&self.name, &PostParams::default(), &request).await.map_err(|e| {
                    vaultsync_backend::Error::Unauthenticated {
                        message: format!("TokenRequest for service account {}: {e}", self.name),
                    }
                })?;
            Ok(Zeroizing::new(answer.status.and_then(|s| s.token).unwrap_or_default()))
        })
    }
}

fn selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let by_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// `*` matches any run of characters, `?` one character; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("team-a-*", "team-a-db-password"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("db-?", "db-1"));
        assert!(glob_match("*-password", "team-a-password"));
        assert!(!glob_match("team-a-*", "team-b-db-password"));
        assert!(!glob_match("db-?", "db-12"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
