//! The store forms, `vaultSecret: <name>` and `storeRef` + `objects`, resolved with **the pod's**
//! identity by the stores crate, the same layer the operator resolves stores with: the VaultSecret
//! and VaultStore in the pod's namespace, or a ClusterVaultStore whose namespace conditions admit
//! the pod's namespace and whose allowlists admit every object, all checked before any vault
//! call. The store says where the vault is and how pods authenticate; the credential is always the
//! pod's own (its token for workload identity or Kubernetes auth) or the volume's
//! nodePublishSecretRef (a service principal's secret or certificate, an OpenBao token or AppRole
//! secret ID, under the key the store names), never the store's Secrets or the operator's account.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use kube::{Api, Client};
use vaultsync_api::{VaultSecret, secret::Decoding};
use vaultsync_backend::{FetchedSecret, ServiceAccount};
use vaultsync_stores::{PodCredentials, Requester, StoreError, Stores};
use zeroize::Zeroizing;

use crate::{
    error::{Error, Result},
    params::{
        Encoding, FileSpec, MountPlan, PodInfo, PublishSecrets, Source, StoreKind, StoreRef, VaultObject, store_output,
    },
    reader::{InlineReader, VaultReader},
};

/// Resolves stores with the apiserver; hands the inline forms to the [`InlineReader`].
pub struct StoreReader {
    client: Client,
    stores: Stores,
    inline: Arc<InlineReader>,
}

impl StoreReader {
    /// `stores` resolves with `client`; pods' backends share the inline reader's read cache.
    pub fn new(client: Client, stores: Stores, inline: Arc<InlineReader>) -> Self {
        Self { client, stores, inline }
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
        let mut files = Vec::new();
        for (i, data) in vs.spec.data.iter().enumerate() {
            let place = format!("{what} data[{i}]");
            let remote = &data.remote_ref;
            if remote.password_secret_ref.is_some() || remote.pfx_password.is_some() {
                // The plugin reads no Secrets but the volume's nodePublishSecretRef.
                return Err(Error::Unimplemented {
                    message: format!(
                        "{place}: PFX passwords from Secrets or templates are not used for mounts; mount the PEM form"
                    ),
                });
            }
            let kind = vaultsync_stores::objects::object_kind(remote.object_type);
            let format = remote.format.map(vaultsync_stores::objects::format);
            files.push(FileSpec {
                path: data.secret_key.clone(),
                mode: 0o644,
                object: VaultObject { mount: None, name: remote.name.clone(), version: remote.version.clone(), kind },
                id: format!("{kind}/{}", remote.name),
                field: remote.property.clone(),
                encoding: match remote.decoding {
                    Decoding::None => Encoding::Utf8,
                    Decoding::Base64 => Encoding::Base64,
                    Decoding::Base64URL => Encoding::Base64Url,
                    Decoding::Auto => Encoding::Auto,
                },
                output: store_output(kind, format),
                place,
            });
        }
        let kind = match vs.spec.store_ref.kind {
            vaultsync_api::secret::StoreKind::VaultStore => StoreKind::VaultStore,
            vaultsync_api::secret::StoreKind::ClusterVaultStore => StoreKind::ClusterVaultStore,
        };
        Ok(MountPlan { source: Source::Store(StoreRef { kind, name: vs.spec.store_ref.name.clone() }), files })
    }

    async fn read_store(
        &self,
        pod: &PodInfo,
        secrets: &PublishSecrets,
        store: &StoreRef,
        objects: &[VaultObject],
        max_age: Option<Duration>,
    ) -> Result<Vec<FetchedSecret>> {
        let credentials = PodCredentials {
            account: ServiceAccount { namespace: pod.namespace.clone(), name: pod.service_account.clone() },
            tokens: pod.tokens.iter().map(|(audience, token)| (audience.clone(), token.token.clone())).collect(),
            secrets: secrets.0.iter().map(|(k, v)| (k.clone(), Zeroizing::new(v.as_bytes().to_vec()))).collect(),
        };
        let store_ref = vaultsync_api::secret::StoreRef {
            kind: match store.kind {
                StoreKind::VaultStore => vaultsync_api::secret::StoreKind::VaultStore,
                StoreKind::ClusterVaultStore => vaultsync_api::secret::StoreKind::ClusterVaultStore,
            },
            name: store.name.clone(),
        };
        let resolved =
            self.stores.resolve(&pod.namespace, &store_ref, Requester::Pod(&credentials)).await.map_err(store_error)?;
        for object in objects {
            resolved
                .check_object(&object.name)
                .map_err(|e| Error::denied(format!("object {}", object.name), e.to_string()))?;
        }
        let result = self.inline.read_objects(objects, max_age, |_| Ok(resolved.backend.clone())).await;
        if let Err(Error::PermissionDenied { .. }) = &result {
            // A refused credential (a rotated secret in nodePublishSecretRef) is read anew next time.
            self.stores.forget(&resolved.key);
        }
        result
    }
}

/// How a store refusal or failure reaches the kubelet.
fn store_error(error: StoreError) -> Error {
    match &error {
        StoreError::NotFound { .. } | StoreError::InvalidSpec { .. } => Error::invalid("storeRef", error.to_string()),
        StoreError::MissingCredential { .. } => Error::invalid("nodePublishSecretRef", error.to_string()),
        StoreError::NamespaceNotAllowed { .. }
        | StoreError::ObjectNotAllowed { .. }
        | StoreError::IdentityNotAllowed { .. } => Error::denied("storeRef", error.to_string()),
        StoreError::Unavailable { .. } => Error::Unavailable { message: error.to_string() },
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
