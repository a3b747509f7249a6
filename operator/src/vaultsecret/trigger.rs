//! Refreshes asked for by vault events: the VaultSecrets that read a changed object are woken
//! at once, and the object leaves the read cache once, so they share one new read.

use std::sync::Arc;

use kube::{
    Api, Client, ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use tokio::sync::mpsc;
use vaultsync_api::{ClusterVaultStore, VaultSecret, VaultStore, secret::StoreKind};

use super::Context;

/// Asks for an immediate refresh of the VaultSecrets that read a given vault object (used by
/// vault event deliveries). Each object costs at most one backend read, however many
/// VaultSecrets read it: the cache entry is dropped once and the refreshes share the new read.
#[derive(Clone)]
pub struct RefreshTrigger {
    pub(super) client: Client,
    pub(super) namespace: Option<String>,
    pub(super) vaultsecrets: Store<VaultSecret>,
    pub(super) ctx: Arc<Context>,
    pub(super) sender: mpsc::UnboundedSender<ObjectRef<VaultSecret>>,
}

impl RefreshTrigger {
    /// `vault_url` as in a store's `vaultUrl`; returns how many VaultSecrets were asked to refresh.
    pub async fn vault_object_changed(&self, vault_url: &str, object: &str) -> Result<usize, kube::Error> {
        let wanted = vault_url.trim_end_matches('/').to_ascii_lowercase();
        let same_vault = |provider: &vaultsync_api::store::Provider| {
            provider
                .azure_key_vault
                .as_ref()
                .is_some_and(|a| a.vault_url.trim_end_matches('/').to_ascii_lowercase() == wanted)
        };
        let namespaced: Api<VaultStore> = match &self.namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        };
        let mut stores = std::collections::HashSet::new();
        for store in
            namespaced.list(&Default::default()).await?.items.into_iter().filter(|s| same_vault(&s.spec.provider))
        {
            stores.insert((StoreKind::VaultStore, store.namespace(), store.name_any()));
        }
        let cluster = Api::<ClusterVaultStore>::all(self.client.clone()).list(&Default::default()).await?;
        for store in cluster.items.into_iter().filter(|s| same_vault(&s.spec.provider)) {
            stores.insert((StoreKind::ClusterVaultStore, None, store.name_any()));
        }
        let readers: Vec<_> = self
            .vaultsecrets
            .state()
            .into_iter()
            .filter(|vs| {
                let kind = vs.spec.store_ref.kind;
                let namespace = (kind == StoreKind::VaultStore).then(|| vs.namespace()).flatten();
                stores.contains(&(kind, namespace, vs.spec.store_ref.name.clone()))
                    && (vs.spec.data.iter().any(|d| d.remote_ref.name.eq_ignore_ascii_case(object))
                        || vs.spec.data_from.iter().any(|d| {
                            d.extract.as_ref().is_some_and(|e| e.name.eq_ignore_ascii_case(object))
                                || d.find.as_ref().is_some_and(|f| {
                                    object.to_ascii_lowercase().starts_with(&f.path.to_ascii_lowercase())
                                })
                        }))
            })
            .collect();
        if !readers.is_empty() {
            self.ctx.cache.invalidate(object);
        }
        for vs in &readers {
            self.ctx.requested.lock().expect("requested lock").insert(super::uid(vs));
            let _ = self.sender.send(ObjectRef::from_obj(vs.as_ref()));
        }
        Ok(readers.len())
    }
}
