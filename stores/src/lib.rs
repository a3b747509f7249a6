//! Store resolution, one layer for the operator and the CSI provider: from a store reference (or an inline provider)
//! and a caller to a backend the caller may read through. It finds the `VaultStore` / `ClusterVaultStore`, applies a
//! cluster store's namespace conditions and object allowlists before any vault call, and builds (and keeps) a backend
//! with the right identity: the store's configured one for the operator, the pod's own for the CSI provider.
#![forbid(unsafe_code)]

mod build;
pub mod credentials;
pub mod data_from;
pub mod objects;
pub mod tenancy;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use vaultsync_api::{
    ClusterVaultStore, VaultStore,
    secret::{StoreKind, StoreRef},
    store::{Provider, RequestBudget as BudgetSpec},
};
use vaultsync_backend::{
    Backend, ServiceAccount,
    azure::{AzureEndpoint, CallObserver, http_client},
    budget::RequestBudget,
    identity::fingerprint,
};

pub use credentials::PodCredentials;

use crate::build::{Built, StoreEndpoint};

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
    IdentityNotAllowed { store: String, message: String },
    #[error("{store}: {message}")]
    MissingCredential { store: String, message: String },
    #[error("{store}: {message}")]
    Unavailable { store: String, message: String },
}

impl StoreError {
    /// The reason a VaultSecret (or a mount) reports.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } | StoreError::InvalidSpec { .. } | StoreError::Unavailable { .. } => {
                "StoreNotReady"
            }
            StoreError::NamespaceNotAllowed { .. } => "NamespaceNotAllowed",
            StoreError::ObjectNotAllowed { .. } => "ObjectNotAllowed",
            StoreError::IdentityNotAllowed { .. } => "IdentityNotAllowed",
            StoreError::MissingCredential { .. } => "MissingCredential",
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

    /// Whether the caller is refused (as opposed to the store being broken or unreachable).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::NamespaceNotAllowed { .. }
                | StoreError::ObjectNotAllowed { .. }
                | StoreError::IdentityNotAllowed { .. }
        )
    }

    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::NamespaceNotAllowed { .. } => "namespace_not_allowed",
            StoreError::ObjectNotAllowed { .. } => "object_not_allowed",
            StoreError::InvalidSpec { .. } => "invalid_spec",
            StoreError::IdentityNotAllowed { .. } => "identity_not_allowed",
            StoreError::MissingCredential { .. } => "missing_credential",
            StoreError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Whose identity reads.
pub enum Requester<'a> {
    /// The operator, with each store's configured identity.
    Operator,
    /// A pod, with its own service account and its volume's `nodePublishSecretRef` (the CSI provider).
    Pod(&'a PodCredentials),
}

/// The operator's own Azure workload identity, as the workload identity webhook injects it
/// (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_AUTHORITY_HOST`).
#[derive(Clone, Debug)]
pub struct AzureEnvironment {
    pub client_id: String,
    pub tenant_id: String,
    pub token_file: PathBuf,
    pub authority_host: String,
}

/// How stores are resolved, beyond what each store says.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The managed identity token endpoint (instance metadata service).
    pub imds_endpoint: String,
    /// The request budget of a store that sets none: calls per second and burst.
    pub default_budget: (u32, u32),
    /// The audiences the operator may request service-account tokens for.
    pub allowed_audiences: Vec<String>,
    /// Whether namespaced VaultStores may read with the operator's own identity (`managedIdentity`).
    pub operator_identity_in_vault_stores: bool,
    /// The operator's own Azure workload identity, if the webhook injected one.
    pub azure_environment: Option<AzureEnvironment>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            imds_endpoint: "http://169.254.169.254/metadata/identity/oauth2/token".into(),
            default_budget: (50, 100),
            allowed_audiences: vec!["api://AzureADTokenExchange".into(), "vault".into()],
            operator_identity_in_vault_stores: false,
            azure_environment: None,
        }
    }
}

/// Counts backend calls: (store key, operation, outcome).
pub type StoreObserver = Arc<dyn Fn(&str, &'static str, &'static str) + Send + Sync>;

/// A store a caller may use, with its backend.
pub struct ResolvedStore {
    /// `VaultStore/<namespace>/<name>` or `ClusterVaultStore/<name>`: the metrics label.
    pub key: String,
    pub backend: Arc<dyn Backend>,
    /// Object-name globs the caller's namespace may read; `None`: every object.
    allowed_objects: Option<Vec<String>>,
    namespace: String,
}

impl ResolvedStore {
    /// Refuses objects outside the namespace's allowlist before anything is fetched.
    pub fn check_object(&self, object: &str) -> Result<(), StoreError> {
        tenancy::check_object(&self.key, &self.namespace, self.allowed_objects.as_deref(), object)
    }
}

/// Which backend a caller gets: one per store generation for the operator, one per store generation and pod
/// service account (and nodePublishSecretRef content) for pods.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum BackendKey {
    Operator { store: String, generation: i64 },
    Pod { store: String, generation: i64, account: ServiceAccount, secrets: String },
}

/// A store found, with what resolving it needs.
struct Found {
    key: String,
    generation: i64,
    provider: Provider,
    budget: Option<BudgetSpec>,
    allowed_objects: Option<Vec<String>>,
    /// A VaultStore's namespace: its accounts and Secrets are there.
    store_namespace: Option<String>,
}

/// Finds stores, applies their tenancy rules and keeps the backends built for them.
pub struct Stores {
    client: Client,
    settings: Settings,
    observer: StoreObserver,
    /// One endpoint (HTTP client, budget, Key Vault challenge) per store generation.
    endpoints: Mutex<HashMap<String, (i64, StoreEndpoint)>>,
    /// Backends by caller; bounded, since pods bring one identity each.
    backends: moka::sync::Cache<BackendKey, Arc<Built>>,
    /// Watched copies of the stores, once a controller runs: a store found there costs no GET.
    caches: Mutex<Option<(Store<VaultStore>, Store<ClusterVaultStore>)>>,
}

impl Stores {
    pub fn new(client: Client, settings: Settings, observer: StoreObserver) -> Self {
        let backends = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_idle(Duration::from_secs(3600))
            .support_invalidation_closures()
            .build();
        Self { client, settings, observer, endpoints: Mutex::default(), backends, caches: Mutex::default() }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Drops a store's backends after a credential was refused, so the next use builds them again and reads the
    /// credential anew (a rotated client secret, token or secret ID).
    pub fn forget(&self, store: &str) {
        let store = store.to_string();
        let _ = self.backends.invalidate_entries_if(move |key, _| match key {
            BackendKey::Operator { store: s, .. } | BackendKey::Pod { store: s, .. } => *s == store,
        });
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

    /// The store `store_ref` names for a caller in `namespace`, if that namespace may use it, with a backend for
    /// `requester`.
    pub async fn resolve(
        &self,
        namespace: &str,
        store_ref: &StoreRef,
        requester: Requester<'_>,
    ) -> Result<ResolvedStore, StoreError> {
        let found = self.find(namespace, store_ref).await?;
        vaultsync_backend::audit::set_store(&found.key);
        let backend = self
            .backend(
                &found.key,
                found.generation,
                &found.provider,
                found.budget.as_ref(),
                found.store_namespace.as_deref(),
                &requester,
            )
            .await?;
        Ok(ResolvedStore {
            key: found.key,
            backend,
            allowed_objects: found.allowed_objects,
            namespace: namespace.into(),
        })
    }

    async fn find(&self, namespace: &str, store_ref: &StoreRef) -> Result<Found, StoreError> {
        let name = &store_ref.name;
        match store_ref.kind {
            StoreKind::VaultStore => {
                let key = format!("VaultStore/{namespace}/{name}");
                let store = match self.cached_vault_store(namespace, name) {
                    Some(store) => (*store).clone(),
                    None => Api::<VaultStore>::namespaced(self.client.clone(), namespace)
                        .get_opt(name)
                        .await
                        .map_err(|e| StoreError::Unavailable { store: key.clone(), message: e.to_string() })?
                        .ok_or_else(|| StoreError::NotFound { store: key.clone() })?,
                };
                Ok(Found {
                    key,
                    generation: store.metadata.generation.unwrap_or_default(),
                    provider: store.spec.provider,
                    budget: store.spec.budget,
                    allowed_objects: None,
                    store_namespace: Some(namespace.into()),
                })
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
                let conditions = &store.spec.conditions;
                let labels = if tenancy::needs_labels(conditions, namespace) {
                    let ns = Api::<Namespace>::all(self.client.clone())
                        .get(namespace)
                        .await
                        .map_err(|e| StoreError::Unavailable { store: key.clone(), message: e.to_string() })?;
                    Some(ns.labels().clone())
                } else {
                    None
                };
                let allowed_objects = tenancy::admit(&key, conditions, namespace, labels.as_ref())?;
                Ok(Found {
                    key,
                    generation: store.metadata.generation.unwrap_or_default(),
                    provider: store.spec.provider.clone(),
                    budget: store.spec.budget.clone(),
                    allowed_objects,
                    store_namespace: None,
                })
            }
        }
    }

    /// Whether a store works for the operator: its backend can be built, a token had, and the vault answers.
    pub async fn check(
        &self,
        key: &str,
        generation: i64,
        provider: &Provider,
        budget: Option<&BudgetSpec>,
        store_namespace: Option<&str>,
    ) -> Result<vaultsync_backend::Checked, (&'static str, String)> {
        let backend = self
            .backend(key, generation, provider, budget, store_namespace, &Requester::Operator)
            .await
            .map_err(|e| (e.store_reason(), e.to_string()))?;
        let checked = backend.check().await;
        vaultsync_backend::audit::check(backend.identity(), key, &checked);
        checked.map_err(|e| {
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
        requester: &Requester<'_>,
    ) -> Result<Arc<dyn Backend>, StoreError> {
        let cache_key = match requester {
            Requester::Operator => BackendKey::Operator { store: key.into(), generation },
            Requester::Pod(pod) => {
                let mut material = Vec::new();
                for (name, value) in &pod.secrets {
                    material.extend_from_slice(name.as_bytes());
                    material.push(0);
                    material.extend_from_slice(value);
                    material.push(0);
                }
                BackendKey::Pod {
                    store: key.into(),
                    generation,
                    account: pod.account.clone(),
                    secrets: fingerprint(&material),
                }
            }
        };
        if let Some(built) = self.backends.get(&cache_key) {
            // A pod's backend reads with the freshest token its mounts brought.
            if let (Some(token), Requester::Pod(pod)) = (&built.pod_token, requester) {
                let audience = token_audience(provider).unwrap_or_default();
                token.set(pod.token(key, &audience)?);
            }
            return Ok(built.backend.clone());
        }
        let endpoint = self.endpoint(key, generation, provider, budget)?;
        let built = if let Some(azure) = &provider.azure_key_vault {
            self.build_azure(key, azure, &endpoint, store_namespace, requester).await?
        } else if let Some(openbao) = &provider.openbao {
            self.build_openbao(key, openbao, &endpoint, store_namespace, requester).await?
        } else {
            return Err(StoreError::InvalidSpec { store: key.into(), message: "no provider is set".into() });
        };
        let backend = built.backend.clone();
        self.backends.insert(cache_key, Arc::new(built));
        Ok(backend)
    }

    /// The store's endpoint for this generation: made once and shared by every identity reading the store.
    fn endpoint(
        &self,
        key: &str,
        generation: i64,
        provider: &Provider,
        budget: Option<&BudgetSpec>,
    ) -> Result<StoreEndpoint, StoreError> {
        if let Some((built_for, endpoint)) =
            self.endpoints.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(key)
            && *built_for == generation
        {
            return Ok(endpoint.clone());
        }
        let invalid = |message: String| StoreError::InvalidSpec { store: key.into(), message };
        let ca_bundle = provider
            .azure_key_vault
            .as_ref()
            .and_then(|a| a.ca_bundle.as_deref())
            .or(provider.openbao.as_ref().and_then(|o| o.ca_bundle.as_deref()));
        let http = http_client(ca_bundle).map_err(|e| invalid(e.to_string()))?;
        let (rps, burst) = budget.map(|b| (b.requests_per_second, b.burst)).unwrap_or(self.settings.default_budget);
        let budget = Arc::new(RequestBudget::new(rps, burst));
        let (observe, store) = (self.observer.clone(), key.to_string());
        let observer: CallObserver = Arc::new(move |operation, outcome| observe(&store, operation, outcome));
        let azure = match &provider.azure_key_vault {
            Some(spec) => Some(Arc::new(
                AzureEndpoint::new(http.clone(), &spec.vault_url, &spec.api_version)
                    .map_err(|e| invalid(e.to_string()))?
                    .metered(Some(budget.clone()), Some(observer.clone())),
            )),
            None => None,
        };
        let endpoint = StoreEndpoint { http, budget, observer, azure };
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.into(), (generation, endpoint.clone()));
        Ok(endpoint)
    }
}

/// The audience of the service-account token a store's identity uses, if it uses one.
fn token_audience(provider: &Provider) -> Option<String> {
    let azure = provider.azure_key_vault.as_ref().and_then(|a| a.auth.workload_identity.as_ref()).map(|w| &w.audience);
    let bao = provider.openbao.as_ref().and_then(|o| o.auth.kubernetes.as_ref()).map(|k| &k.audience);
    azure.or(bao).cloned()
}
