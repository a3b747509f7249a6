//! From a store's provider spec and a caller to a backend: the endpoint (shared by every identity that reads the
//! store, with the store's request budget) and the credential of the caller's identity.
//!
//! - The operator reads with the store's configured identity: its service account (TokenRequest) for workload
//!   identity and OpenBao's Kubernetes auth, its Secrets for service principals, tokens and AppRoles, and its own
//!   ambient identity (the workload identity webhook's token file, else the instance metadata service) for
//!   `managedIdentity`, which namespaced VaultStores may use only where the operator allows it.
//! - A pod reads with its own: its service-account token for workload identity and Kubernetes auth, its volume's
//!   `nodePublishSecretRef` for Secret-held credentials, and never the operator's or the node's identity.

use std::sync::Arc;

use k8s_openapi::api::core::v1::ServiceAccount as ServiceAccountObject;
use kube::Api;
use vaultsync_api::store::{AzureCloud, AzureKeyVaultProvider, OpenBaoProvider};
use vaultsync_backend::{
    Backend, Principal, ServiceAccount,
    assertion::CertificateAssertion,
    azure::{AzureEndpoint, AzureKeyVault},
    identity::fingerprint,
    openbao::{AuthMethod, KvMount, KvVersion, OpenBao},
    token::{EntraToken, Grant, token_url},
};

use crate::{
    Requester, StoreError, Stores,
    credentials::{PodToken, TokenRequestAssertion, operator_secret_value},
};

/// What one store shares between the identities that read it.
#[derive(Clone)]
pub(crate) struct StoreEndpoint {
    pub http: reqwest::Client,
    pub budget: Arc<vaultsync_backend::budget::RequestBudget>,
    pub observer: vaultsync_backend::http::CallObserver,
    /// The Key Vault endpoint (with its challenge), for an Azure store.
    pub azure: Option<Arc<AzureEndpoint>>,
}

/// A built backend, and for a pod's backend the token it reads with (refreshed by each mount).
pub(crate) struct Built {
    pub backend: Arc<dyn Backend>,
    pub pod_token: Option<Arc<PodToken>>,
}

/// The Entra authority host of a cloud.
fn authority(spec: &AzureKeyVaultProvider) -> Option<String> {
    Some(match spec.cloud {
        AzureCloud::Public => "https://login.microsoftonline.com".into(),
        AzureCloud::China => "https://login.chinacloudapi.cn".into(),
        AzureCloud::USGovernment => "https://login.microsoftonline.us".into(),
        AzureCloud::Custom => spec.authority_host.clone()?,
    })
}

impl Stores {
    /// Checks an audience the operator would request a token for against the allowed ones.
    fn check_audience(&self, store: &str, audience: &str) -> Result<(), StoreError> {
        if self.settings.allowed_audiences.iter().any(|a| a == audience) {
            return Ok(());
        }
        Err(StoreError::IdentityNotAllowed {
            store: store.into(),
            message: format!(
                "the operator requests service-account tokens only for the audiences {:?}, not {audience:?}",
                self.settings.allowed_audiences
            ),
        })
    }

    pub(crate) async fn build_azure(
        &self,
        store: &str,
        spec: &AzureKeyVaultProvider,
        endpoint: &StoreEndpoint,
        store_namespace: Option<&str>,
        requester: &Requester<'_>,
    ) -> Result<Built, StoreError> {
        let invalid = |message: String| StoreError::InvalidSpec { store: store.into(), message };
        let azure = endpoint.azure.clone().ok_or_else(|| invalid("no Key Vault endpoint".into()))?;
        let authority = authority(spec).ok_or_else(|| invalid("authorityHost is required with cloud Custom".into()))?;
        let tenant = spec.tenant_id.clone();
        let auth = &spec.auth;
        let mut pod_token = None;
        let (grant, client_id, principal, authority) = if let Some(wi) = &auth.workload_identity {
            let (source, account): (Arc<dyn vaultsync_backend::token::AssertionSource>, ServiceAccount) =
                match requester {
                    Requester::Operator => {
                        self.check_audience(store, &wi.audience)?;
                        // A VaultStore always uses an account of its own namespace.
                        let namespace =
                            store_namespace.or(wi.service_account_ref.namespace.as_deref()).ok_or_else(|| {
                                invalid("workloadIdentity.serviceAccountRef.namespace is required".into())
                            })?;
                        let source = TokenRequestAssertion {
                            api: Api::<ServiceAccountObject>::namespaced(self.client.clone(), namespace),
                            name: wi.service_account_ref.name.clone(),
                            audience: wi.audience.clone(),
                        };
                        let account =
                            ServiceAccount { namespace: namespace.into(), name: wi.service_account_ref.name.clone() };
                        (Arc::new(source), account)
                    }
                    Requester::Pod(pod) => {
                        let token = Arc::new(PodToken::default());
                        token.set(pod.token(store, &wi.audience)?);
                        pod_token = Some(token.clone());
                        (token, pod.account.clone())
                    }
                };
            let principal = Principal::AzureWorkload {
                authority: authority.clone(),
                tenant: tenant.clone(),
                client_id: wi.client_id.clone(),
                audience: wi.audience.clone(),
                account,
            };
            (Grant::ClientAssertion(source), Some(wi.client_id.clone()), principal, authority)
        } else if let Some(sp) = &auth.service_principal {
            let (secret_ref, what) = match (&sp.client_secret_ref, &sp.client_certificate_ref) {
                (Some(r), _) => (r, "client secret"),
                (None, Some(r)) => (r, "client certificate"),
                (None, None) => {
                    return Err(invalid("servicePrincipal needs clientSecretRef or clientCertificateRef".into()));
                }
            };
            let material = match requester {
                Requester::Operator => {
                    operator_secret_value(&self.client, store, secret_ref, store_namespace, what).await?
                }
                Requester::Pod(pod) => pod.secret_value(store, &secret_ref.key, what)?,
            };
            // Reads are shared only by callers with the same credential: a store claiming a client ID with a wrong
            // credential never gets another store's reads.
            let credential = fingerprint(material.as_bytes());
            let grant = if sp.client_secret_ref.is_some() {
                Grant::ClientSecret(material)
            } else {
                let audience = token_url(&authority, &tenant);
                let assertion = CertificateAssertion::from_pem(&material, &sp.client_id, &audience)
                    .map_err(|e| invalid(format!("client certificate: {e}")))?;
                Grant::ClientAssertion(Arc::new(assertion))
            };
            let principal = Principal::AzureServicePrincipal {
                authority: authority.clone(),
                tenant: tenant.clone(),
                client_id: sp.client_id.clone(),
                credential,
            };
            (grant, Some(sp.client_id.clone()), principal, authority)
        } else if let Some(mi) = &auth.managed_identity {
            if let Requester::Pod(_) = requester {
                return Err(StoreError::IdentityNotAllowed {
                    store: store.into(),
                    message: "managedIdentity reads with the operator's or the node's identity, which a pod may not \
                              use; use workloadIdentity so each pod reads with its own"
                        .into(),
                });
            }
            if store_namespace.is_some() && !self.settings.operator_identity_in_vault_stores {
                return Err(StoreError::IdentityNotAllowed {
                    store: store.into(),
                    message: "managedIdentity reads with the operator's own identity, which every namespace would \
                              share; a VaultStore may not use it here (use a ClusterVaultStore, or workloadIdentity)"
                        .into(),
                });
            }
            match &self.settings.azure_environment {
                // The operator's own workload identity, as the webhook injected it.
                Some(env) if mi.client_id.as_ref().is_none_or(|id| *id == env.client_id) => {
                    let principal = Principal::AzureTokenFile {
                        authority: env.authority_host.clone(),
                        tenant: env.tenant_id.clone(),
                        client_id: env.client_id.clone(),
                    };
                    if !env.tenant_id.eq_ignore_ascii_case(&tenant) {
                        return Err(invalid(format!(
                            "the operator's workload identity is in tenant {}, the store names tenant {tenant}",
                            env.tenant_id
                        )));
                    }
                    (
                        Grant::TokenFile(env.token_file.clone()),
                        Some(env.client_id.clone()),
                        principal,
                        env.authority_host.clone(),
                    )
                }
                _ => {
                    let grant = Grant::ManagedIdentity { endpoint: self.settings.imds_endpoint.clone() };
                    let principal = Principal::AzureManagedIdentity { client_id: mi.client_id.clone() };
                    (grant, mi.client_id.clone(), principal, authority)
                }
            }
        } else {
            return Err(invalid("no auth method is set".into()));
        };
        let (budget, observer) = azure.metering();
        let credential =
            EntraToken::new(endpoint.http.clone(), &authority, &tenant, client_id, grant).metered(budget, observer);
        Ok(Built { backend: Arc::new(AzureKeyVault::new(azure, Arc::new(credential), principal)), pod_token })
    }

    pub(crate) async fn build_openbao(
        &self,
        store: &str,
        spec: &OpenBaoProvider,
        endpoint: &StoreEndpoint,
        store_namespace: Option<&str>,
        requester: &Requester<'_>,
    ) -> Result<Built, StoreError> {
        let invalid = |message: String| StoreError::InvalidSpec { store: store.into(), message };
        let kv_version = match spec.kv_version {
            1 => KvVersion::V1,
            2 => KvVersion::V2,
            other => return Err(invalid(format!("kvVersion {other} is not 1 or 2"))),
        };
        let auth = &spec.auth;
        let mut pod_token = None;
        let (method, principal) = if let Some(k8s) = &auth.kubernetes {
            let (jwt, account): (Arc<dyn vaultsync_backend::token::AssertionSource>, ServiceAccount) = match requester {
                Requester::Operator => {
                    self.check_audience(store, &k8s.audience)?;
                    let reference = &k8s.service_account_ref;
                    // A VaultStore always uses an account of its own namespace.
                    let namespace = store_namespace
                        .or(reference.namespace.as_deref())
                        .ok_or_else(|| invalid("kubernetes.serviceAccountRef.namespace is required".into()))?;
                    let source = TokenRequestAssertion {
                        api: Api::<ServiceAccountObject>::namespaced(self.client.clone(), namespace),
                        name: reference.name.clone(),
                        audience: k8s.audience.clone(),
                    };
                    (Arc::new(source), ServiceAccount { namespace: namespace.into(), name: reference.name.clone() })
                }
                Requester::Pod(pod) => {
                    let token = Arc::new(PodToken::default());
                    token.set(pod.token(store, &k8s.audience)?);
                    pod_token = Some(token.clone());
                    (token, pod.account.clone())
                }
            };
            let principal = Principal::OpenBaoKubernetes {
                mount_path: k8s.mount_path.clone(),
                role: k8s.role.clone(),
                audience: k8s.audience.clone(),
                account,
            };
            let method = AuthMethod::Kubernetes { mount_path: k8s.mount_path.clone(), role: k8s.role.clone(), jwt };
            (method, principal)
        } else if let Some(token) = &auth.token {
            let value = match requester {
                Requester::Operator => {
                    operator_secret_value(&self.client, store, &token.secret_ref, store_namespace, "OpenBao token")
                        .await?
                }
                Requester::Pod(pod) => pod.secret_value(store, &token.secret_ref.key, "OpenBao token")?,
            };
            let principal = Principal::OpenBaoToken { fingerprint: fingerprint(value.as_bytes()) };
            (AuthMethod::Token(value), principal)
        } else if let Some(approle) = &auth.app_role {
            let what = "AppRole secret ID";
            let secret_id = match requester {
                Requester::Operator => {
                    operator_secret_value(&self.client, store, &approle.secret_ref, store_namespace, what).await?
                }
                Requester::Pod(pod) => pod.secret_value(store, &approle.secret_ref.key, what)?,
            };
            let principal = Principal::OpenBaoAppRole {
                mount_path: approle.mount_path.clone(),
                role_id: approle.role_id.clone(),
                secret_id: fingerprint(secret_id.as_bytes()),
            };
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
            insecure_http: spec.insecure_http,
            namespace: spec.namespace.clone(),
            mount: spec.mount.clone(),
            kv_version,
        };
        let backend = OpenBao::new(endpoint.http.clone(), location, method, principal)
            .map_err(|e| invalid(e.to_string()))?
            .metered(Some(endpoint.budget.clone()), Some(endpoint.observer.clone()));
        Ok(Built { backend: Arc::new(backend), pod_token })
    }
}
