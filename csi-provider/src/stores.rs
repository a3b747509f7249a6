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
use vaultsync_api::{
    VaultSecret,
    secret::{DataFrom, Decoding},
};
use vaultsync_backend::{Endpoint, FetchedSecret, SecretBytes, ServiceAccount};
use vaultsync_stores::{PodCredentials, Requester, StoreError, Stores, data_from};
use zeroize::Zeroizing;

use crate::{
    error::{Error, Result},
    params::{
        Encoding, FileSpec, MountPlan, PodInfo, PublishSecrets, Source, StoreKind, StoreRef, VaultObject, store_output,
    },
    reader::{Found, InlineReader, ReadAs, VaultReader},
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
        let source = Source::Store(StoreRef { kind, name: vs.spec.store_ref.name.clone() });
        Ok(MountPlan { source, files, data_from: vs.spec.data_from.clone() })
    }

    /// The store, resolved for the pod (its conditions and the pod's credential checked).
    async fn resolve(
        &self,
        pod: &PodInfo,
        secrets: &PublishSecrets,
        store: &StoreRef,
    ) -> Result<vaultsync_stores::ResolvedStore> {
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
        self.stores.resolve(&pod.namespace, &store_ref, Requester::Pod(&credentials)).await.map_err(store_error)
    }

    async fn read_store(
        &self,
        pod: &PodInfo,
        secrets: &PublishSecrets,
        store: &StoreRef,
        objects: &[VaultObject],
        max_age: Option<Duration>,
    ) -> Result<Vec<FetchedSecret>> {
        let resolved = self.resolve(pod, secrets, store).await?;
        for object in objects {
            resolved
                .check_object(&object.name)
                .map_err(|e| Error::denied(format!("object {}", object.name), e.to_string()))?;
        }
        let result = self.inline.read_objects(objects, max_age, |_| Ok(resolved.backend.clone())).await;
        self.forget_refused(&resolved, result)
    }

    /// A refused credential (a rotated secret in nodePublishSecretRef) is read anew next time.
    fn forget_refused<T>(&self, resolved: &vaultsync_stores::ResolvedStore, result: Result<T>) -> Result<T> {
        if let Err(Error::PermissionDenied { .. }) = &result {
            self.stores.forget(&resolved.key);
        }
        result
    }

    /// The keys of `dataFrom` entries, by the stores crate's rules (the operator's): every field of an `extract`
    /// object; for a `find`, one list with the pod's identity, the objects the name expression, tags and the store's
    /// allowlist select, each read through the cache. Then each entry's `rewrite`.
    async fn read_data_from(&self, reading: ReadAs<'_>, store: &StoreRef, entries: &[DataFrom]) -> Result<Vec<Found>> {
        let resolved = self.resolve(reading.pod, reading.secrets, store).await?;
        let result = self.data_from_entries(&resolved, entries, reading.max_age).await;
        self.forget_refused(&resolved, result)
    }

    async fn data_from_entries(
        &self,
        resolved: &vaultsync_stores::ResolvedStore,
        entries: &[DataFrom],
        max_age: Option<Duration>,
    ) -> Result<Vec<Found>> {
        let read = |objects: Vec<VaultObject>| async move {
            self.inline.read_objects(&objects, max_age, |_| Ok(resolved.backend.clone())).await.map(|f| (objects, f))
        };
        let mut out = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let place = format!("dataFrom[{index}]");
            let problem = |p: data_from::Problem| Error::invalid(place.as_str(), p.message);
            let mut found = Vec::new();
            if let Some(extract) = &entry.extract {
                resolved.check_object(&extract.name).map_err(|e| Error::denied(place.as_str(), e.to_string()))?;
                let object = secret_object(&extract.name, extract.version.clone());
                let (_, fetched) = read(vec![object]).await?;
                let fetched = &fetched[0];
                for (key, value) in data_from::extract_fields(fetched.value.expose(), &extract.name).map_err(problem)? {
                    let (id, version) = (format!("secret/{}", extract.name), fetched.version.clone());
                    found.push(Found { key, value: SecretBytes::new(value), id, version });
                }
            } else if let Some(find) = &entry.find {
                let openbao = matches!(resolved.backend.identity().endpoint, Endpoint::OpenBao { .. });
                let name = data_from::find_name(find, index, openbao).map_err(problem)?;
                let listed =
                    resolved.backend.list(&find.path).await.map_err(|e| Error::from_backend(place.as_str(), e))?;
                let selected = data_from::selected(listed, find, name.as_ref(), |n| resolved.check_object(n).is_ok());
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64);
                let names = data_from::readable(selected, find, now).map_err(problem)?.names;
                let keys = data_from::find_keys(&names).map_err(problem)?;
                let (objects, fetched) = read(names.iter().map(|l| secret_object(&l.name, None)).collect()).await?;
                for ((key, object), fetched) in keys.into_iter().zip(&objects).zip(fetched) {
                    let decoding = vaultsync_stores::objects::decoding(find.decoding);
                    let value = vaultsync_render::decode(fetched.value.expose().to_vec(), decoding, &object.name)
                        .map_err(|e| Error::invalid(place.as_str(), e.to_string()))?;
                    let (id, version) = (format!("secret/{}", object.name), fetched.version);
                    found.push(Found { key, value: SecretBytes::new(value), id, version });
                }
            }
            data_from::rewrite(index, &entry.rewrite, found.iter_mut().map(|f| &mut f.key)).map_err(problem)?;
            if let Some(taken) = found.iter().find(|f| out.iter().any(|o: &Found| o.key == f.key)) {
                return Err(problem(data_from::earlier_entry_conflict(index, &taken.key)));
            }
            out.extend(found);
        }
        Ok(out)
    }
}

fn secret_object(name: &str, version: Option<String>) -> VaultObject {
    VaultObject { mount: None, name: name.to_string(), version, kind: vaultsync_backend::ObjectKind::Secret }
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

    fn data_from<'a>(&'a self, reading: ReadAs<'a>, entries: &'a [DataFrom]) -> BoxFuture<'a, Result<Vec<Found>>> {
        match reading.source {
            Source::Store(store) => Box::pin(self.read_data_from(reading, store, entries)),
            _ => Box::pin(async { Err(Error::invalid("dataFrom", "is read from a VaultSecret's store only")) }),
        }
    }
}
