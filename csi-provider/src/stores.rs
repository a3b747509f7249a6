//! The store forms, `vaultSecret: <name>` and `storeRef` + `objects`, resolved against the
//! apiserver with **the pod's** identity: the VaultSecret and VaultStore in the pod's namespace,
//! or a ClusterVaultStore whose namespace conditions admit the pod's namespace and whose
//! allowlists admit every object, all checked before any vault call. The store says where the
//! vault is and how pods authenticate; the credential is always the pod's own (its token for
//! workload identity or Kubernetes auth) or the volume's nodePublishSecretRef (service
//! principal secret, OpenBao token or AppRole secret ID), never the store's Secrets or the
//! operator's service account.
//!
//! Kept in this one module on purpose: the store resolution shared with the operator (being
//! moved out of `operator/src/stores.rs`) is meant to replace it behind the same `VaultReader`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    core::{Selector, SelectorExt as _},
};
use vaultsync_api::{
    ClusterVaultStore, VaultSecret, VaultStore,
    secret::Decoding,
    store::{AzureCloud, NamespaceCondition, Provider},
};
use vaultsync_backend::FetchedSecret;

use crate::{
    error::{Error, Result},
    params::{
        Encoding, FileSpec, KvVersionKey, MountPlan, PodInfo, PublishSecrets, Source, StoreKind, StoreRef, VaultObject,
    },
    reader::{
        AzureCredential, AzureEndpoint, InlineReader, OpenBaoCredential, OpenBaoEndpoint, VaultReader, glob_match,
    },
};

/// Resolves stores with the apiserver; hands the inline forms to the [`InlineReader`].
pub struct StoreReader {
    client: Client,
    inline: Arc<InlineReader>,
    /// HTTP clients by the CA bundle they trust.
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

/// A store, as far as a pod may use it.
struct Resolved {
    label: String,
    provider: Provider,
    /// Object-name globs the pod's namespace may read; `None`: every object.
    allowed: Option<Vec<String>>,
}

impl StoreReader {
    pub fn new(client: Client, inline: Arc<InlineReader>) -> Self {
        Self { client, inline, clients: Mutex::default() }
    }

    fn unavailable(what: &str, error: kube::Error) -> Error {
        Error::Unavailable { message: format!("reading {what} from the apiserver: {error}") }
    }

    async fn plan(&self, pod: &PodInfo, name: &str) -> Result<MountPlan> {
        let what = format!("VaultSecret {}/{name}", pod.namespace);
        let vs = Api::<VaultSecret>::namespaced(self.client.clone(), &pod.namespace)
            .get_opt(name)
            .await
            .map_err(|e| Self::unavailable(&what, e))?
            .ok_or_else(|| Error::invalid("vaultSecret", format!("there is no {what}")))?;
        if !vs.spec.data_from.is_empty() {
            return Err(Error::Unimplemented {
                message: format!("vaultSecret: {what} uses dataFrom, which is not mounted yet; list its keys in data"),
            });
        }
        let files = vs
            .spec
            .data
            .iter()
            .enumerate()
            .map(|(i, data)| FileSpec {
                path: data.secret_key.clone(),
                mode: 0o644,
                object: VaultObject {
                    mount: None,
                    name: data.remote_ref.name.clone(),
                    version: data.remote_ref.version.clone(),
                },
                id: format!("secret/{}", data.remote_ref.name),
                field: data.remote_ref.property.clone(),
                encoding: match data.remote_ref.decoding {
                    Decoding::None => Encoding::Utf8,
                    Decoding::Base64 => Encoding::Base64,
                    Decoding::Base64URL => Encoding::Base64Url,
                    Decoding::Auto => Encoding::Auto,
                },
                place: format!("{what} data[{i}]"),
            })
            .collect();
        let kind = match vs.spec.store_ref.kind {
            vaultsync_api::secret::StoreKind::VaultStore => StoreKind::VaultStore,
            vaultsync_api::secret::StoreKind::ClusterVaultStore => StoreKind::ClusterVaultStore,
        };
        Ok(MountPlan { source: Source::Store(StoreRef { kind, name: vs.spec.store_ref.name.clone() }), files })
    }

    /// The store, if the pod's namespace may use it.
    async fn resolve(&self, pod: &PodInfo, store: &StoreRef) -> Result<Resolved> {
        match store.kind {
            StoreKind::VaultStore => {
                let label = format!("VaultStore {}/{}", pod.namespace, store.name);
                let found = Api::<VaultStore>::namespaced(self.client.clone(), &pod.namespace)
                    .get_opt(&store.name)
                    .await
                    .map_err(|e| Self::unavailable(&label, e))?
                    .ok_or_else(|| Error::invalid("storeRef", format!("there is no {label}")))?;
                Ok(Resolved { label, provider: found.spec.provider, allowed: None })
            }
            StoreKind::ClusterVaultStore => {
                let label = format!("ClusterVaultStore {}", store.name);
                let found = Api::<ClusterVaultStore>::all(self.client.clone())
                    .get_opt(&store.name)
                    .await
                    .map_err(|e| Self::unavailable(&label, e))?
                    .ok_or_else(|| Error::invalid("storeRef", format!("there is no {label}")))?;
                let matching = self.matching(&found.spec.conditions, &pod.namespace).await?;
                if matching.is_empty() {
                    return Err(Error::denied(
                        "storeRef",
                        format!("{label} may not be used from namespace {}", pod.namespace),
                    ));
                }
                // The union of what the matching conditions allow; one without a list allows all.
                let allowed = if matching.iter().any(|c| c.allowed_objects.is_empty()) {
                    None
                } else {
                    Some(matching.iter().flat_map(|c| c.allowed_objects.clone()).collect())
                };
                Ok(Resolved { label, provider: found.spec.provider, allowed })
            }
        }
    }

    async fn matching<'a>(
        &self,
        conditions: &'a [NamespaceCondition],
        namespace: &str,
    ) -> Result<Vec<&'a NamespaceCondition>> {
        let mut labels = None;
        let mut matching = Vec::new();
        for condition in conditions {
            let mut admits = condition.namespaces.iter().any(|n| n == namespace);
            if let (false, Some(selector)) = (admits, &condition.namespace_selector) {
                if labels.is_none() {
                    let ns = Api::<Namespace>::all(self.client.clone())
                        .get(namespace)
                        .await
                        .map_err(|e| Self::unavailable(&format!("namespace {namespace}"), e))?;
                    labels = Some(ns.metadata.labels.unwrap_or_default());
                }
                // A selector the apiserver accepted but kube cannot read admits nobody.
                let selector = Selector::try_from(selector.clone()).ok();
                admits = selector.is_some_and(|s| s.matches(labels.as_ref().expect("labels were just read")));
            }
            if admits {
                matching.push(condition);
            }
        }
        Ok(matching)
    }

    /// An HTTP client trusting `ca_bundle` (or the system roots), shared by stores with that bundle.
    fn http(&self, ca_bundle: Option<&str>) -> Result<(reqwest::Client, String)> {
        let trust = match ca_bundle.filter(|c| !c.trim().is_empty()) {
            Some(pem) => {
                use sha2::Digest as _;
                sha2::Sha256::digest(pem.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect()
            }
            None => "system".to_string(),
        };
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(&trust) {
            return Ok((client.clone(), trust));
        }
        let client = vaultsync_backend::http::http_client(ca_bundle).map_err(|e| Error::from_backend("caBundle", e))?;
        clients.insert(trust.clone(), client.clone());
        Ok((client, trust))
    }

    async fn read_store(
        &self,
        pod: &PodInfo,
        secrets: &PublishSecrets,
        store: &StoreRef,
        objects: &[VaultObject],
        max_age: Option<Duration>,
    ) -> Result<Vec<FetchedSecret>> {
        let resolved = self.resolve(pod, store).await?;
        if let Some(globs) = &resolved.allowed {
            for object in objects {
                if !globs.iter().any(|g| glob_match(g, &object.name)) {
                    return Err(Error::denied(
                        format!("object {}", object.name),
                        format!("{} does not allow namespace {} to read it", resolved.label, pod.namespace),
                    ));
                }
            }
        }
        let invalid = |message: &str| Error::invalid("storeRef", format!("{}: {message}", resolved.label));
        if let Some(azure) = &resolved.provider.azure_key_vault {
            let authority = match azure.cloud {
                AzureCloud::Public => "https://login.microsoftonline.com".to_string(),
                AzureCloud::China => "https://login.chinacloudapi.cn".to_string(),
                AzureCloud::USGovernment => "https://login.microsoftonline.us".to_string(),
                AzureCloud::Custom => {
                    azure.authority_host.clone().ok_or_else(|| invalid("authorityHost is required"))?
                }
            };
            let (http, trust) = self.http(azure.ca_bundle.as_deref())?;
            let endpoint = AzureEndpoint {
                url: azure.vault_url.trim_end_matches('/').to_string(),
                authority,
                tenant: azure.tenant_id.clone(),
                http,
                trust,
            };
            let auth = &azure.auth;
            let credential = if let Some(wi) = &auth.workload_identity {
                // The pod's own account, not the store's serviceAccountRef (that is the operator's reader).
                AzureCredential::WorkloadIdentity { client_id: wi.client_id.clone(), audience: wi.audience.clone() }
            } else if let Some(sp) = &auth.service_principal {
                if sp.client_secret_ref.is_none() {
                    return Err(invalid("a certificate credential cannot come from nodePublishSecretRef yet"));
                }
                AzureCredential::ServicePrincipal { client_id: Some(sp.client_id.clone()) }
            } else {
                return Err(Error::denied(
                    "storeRef",
                    format!("{}: a managed identity belongs to the node, not the pod, and is not used", resolved.label),
                ));
            };
            let inline = &self.inline;
            return inline
                .read_objects(objects, max_age, |_| inline.azure_backend(&endpoint, &credential, pod, secrets))
                .await;
        }
        if let Some(bao) = &resolved.provider.openbao {
            let (http, trust) = self.http(bao.ca_bundle.as_deref())?;
            let endpoint = OpenBaoEndpoint {
                server: bao.server.trim_end_matches('/').to_string(),
                namespace: bao.namespace.clone(),
                http,
                trust,
            };
            let kv = if bao.kv_version == 1 { KvVersionKey::V1 } else { KvVersionKey::V2 };
            let auth = &bao.auth;
            let credential = if let Some(k8s) = &auth.kubernetes {
                OpenBaoCredential::Kubernetes {
                    mount_path: k8s.mount_path.clone(),
                    role: k8s.role.clone(),
                    audience: k8s.audience.clone(),
                }
            } else if auth.token.is_some() {
                OpenBaoCredential::Token
            } else if let Some(approle) = &auth.app_role {
                OpenBaoCredential::AppRole { mount_path: approle.mount_path.clone(), role_id: approle.role_id.clone() }
            } else {
                return Err(invalid("no auth method is set"));
            };
            let inline = &self.inline;
            return inline
                .read_objects(objects, max_age, |_| {
                    inline.openbao_backend(&endpoint, &credential, &bao.mount, kv, pod, secrets)
                })
                .await;
        }
        Err(invalid("no provider is set"))
    }
}

impl VaultReader for StoreReader {
    fn vault_secret_plan<'a>(&'a self, pod: &'a PodInfo, name: &'a str) -> BoxFuture<'a, Result<MountPlan>> {
        Box::pin(self.plan(pod, name))
    }

    fn read<'a>(
        &'a self,
        pod: &'a PodInfo,
        secrets: &'a PublishSecrets,
        source: &'a Source,
        objects: &'a [VaultObject],
        max_age: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<FetchedSecret>>> {
        match source {
            Source::Store(store) => Box::pin(self.read_store(pod, secrets, store, objects, max_age)),
            inline => self.inline.read(pod, secrets, inline, objects, max_age),
        }
    }
}
