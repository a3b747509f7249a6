//! Store status: a `VaultStore` or `ClusterVaultStore` is `Ready` once its backend can be
//! built, a token obtained and the vault answers one cheap call; otherwise the condition says
//! why. Checked on every spec change and then every few minutes, never on our own status writes. With sharding,
//! each status is written by one shard (see `run`).

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        predicates,
        reflector::{self},
        watcher::{self, watcher},
    },
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;
use tracing::warn;
use vaultsync_api::{
    ClusterVaultStore, Condition, StoreStatus, VaultStore,
    condition::READY,
    store::{Provider, RequestBudget},
};

use vaultsync_stores::Stores;

use crate::{shard::Shard, vaultsecret::FIELD_MANAGER};

/// The parts of a store this controller needs, for both kinds.
trait StoreObject:
    Resource<DynamicType = ()> + Clone + std::fmt::Debug + DeserializeOwned + Serialize + Send + Sync + 'static
{
    const KIND: &'static str;
    fn provider(&self) -> &Provider;
    fn budget(&self) -> Option<&RequestBudget>;
    fn status(&self) -> Option<&StoreStatus>;
    /// The namespace whose accounts and Secrets a VaultStore uses; none for a cluster store.
    fn own_namespace(&self) -> Option<String>;
    fn api(&self, client: Client) -> Api<Self>;
}

impl StoreObject for VaultStore {
    const KIND: &'static str = "VaultStore";
    fn provider(&self) -> &Provider {
        &self.spec.provider
    }
    fn budget(&self) -> Option<&RequestBudget> {
        self.spec.budget.as_ref()
    }
    fn status(&self) -> Option<&StoreStatus> {
        self.status.as_ref()
    }
    fn own_namespace(&self) -> Option<String> {
        self.namespace()
    }
    fn api(&self, client: Client) -> Api<Self> {
        Api::namespaced(client, &self.namespace().unwrap_or_default())
    }
}

impl StoreObject for ClusterVaultStore {
    const KIND: &'static str = "ClusterVaultStore";
    fn provider(&self) -> &Provider {
        &self.spec.provider
    }
    fn budget(&self) -> Option<&RequestBudget> {
        self.spec.budget.as_ref()
    }
    fn status(&self) -> Option<&StoreStatus> {
        self.status.as_ref()
    }
    fn own_namespace(&self) -> Option<String> {
        None
    }
    fn api(&self, client: Client) -> Api<Self> {
        Api::all(client)
    }
}

#[derive(thiserror::Error, Debug)]
#[error("writing the status of {object}: {source}")]
pub struct Error {
    object: String,
    #[source]
    source: kube::Error,
}

struct Context {
    client: Client,
    stores: Arc<Stores>,
}

/// Runs the status controllers: VaultStores (in `namespace`, or everywhere) and, for a
/// cluster-wide operator only, ClusterVaultStores. A shard writes the status of the VaultStores in its namespaces,
/// and shard 0 that of the ClusterVaultStores, so each status has one writer.
pub async fn run(client: Client, namespace: Option<String>, stores: Arc<Stores>, shard: Shard) {
    let ctx = Arc::new(Context { client: client.clone(), stores });
    let namespaced = match &namespace {
        Some(ns) => Api::<VaultStore>::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let vault_stores = controller(namespaced, ctx.clone(), shard);
    if namespace.is_some() || !shard.owns_cluster_scope() {
        // A namespace-scoped operator does not own the status of cluster-scoped stores.
        vault_stores.await;
    } else {
        futures::join!(vault_stores, controller(Api::<ClusterVaultStore>::all(client), ctx, shard));
    }
}

async fn controller<K: StoreObject>(api: Api<K>, ctx: Arc<Context>, shard: Shard) {
    let (reader, writer) = reflector::store();
    let stores =
        watcher(api, watcher::Config::default()).filter(move |event| futures::future::ready(shard.keeps(event)));
    let events = reflector::reflector(writer, stores)
        .default_backoff()
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    Controller::for_stream(events, reader)
        .trigger_backoff(crate::triggers::EachWatchBacksOff)
        .shutdown_on_signal()
        .run(
            reconcile::<K>,
            |store, error, _| {
                warn!(store = %store.name_any(), %error, "store status update failed");
                Action::requeue(Duration::from_secs(30))
            },
            ctx,
        )
        .for_each(|_| futures::future::ready(()))
        .await;
}

async fn reconcile<K: StoreObject>(store: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = store.name_any();
    let namespace = store.own_namespace();
    let key = match &namespace {
        Some(ns) => format!("{}/{ns}/{name}", K::KIND),
        None => format!("{}/{name}", K::KIND),
    };
    let generation = store.meta().generation.unwrap_or_default();
    let checked = ctx.stores.check(&key, generation, store.provider(), store.budget(), namespace.as_deref()).await;
    let (status, reason, message, retry) = match checked {
        Ok(vaultsync_backend::Checked { can_list: Some(false) }) => (
            "True",
            "Valid",
            "a token was obtained and the vault answered; the identity may not list secrets, so each object is read \
             again at each refresh instead of only those a list shows changed"
                .to_string(),
            600,
        ),
        Ok(_) => ("True", "Valid", "a token was obtained and the vault answered".to_string(), 600),
        Err((reason, message)) => ("False", reason, message, 60),
    };
    let old = store.status().cloned().unwrap_or_default();
    let previous = old.conditions.iter().find(|c| c.type_ == READY);
    let unchanged = previous.is_some_and(|p| p.status == status && p.reason == reason && p.message == message)
        && old.observed_generation == Some(generation);
    if !unchanged {
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Timestamp::now().to_string(),
        };
        let condition = Condition {
            type_: READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: Some(generation),
        };
        let new_status = StoreStatus { conditions: vec![condition], observed_generation: Some(generation) };
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": K::KIND, "status": new_status });
        store
            .api(ctx.client.clone())
            .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(|source| Error { object: key.clone(), source })?;
    }
    Ok(Action::requeue(Duration::from_secs(retry)))
}
