//! The VaultSecret controller: reads the objects a VaultSecret names through the shared cache,
//! writes the target Secret with server-side apply, and keeps it so: routine refreshes on the
//! schedule in `status.refreshTime`, forced refreshes by annotation, and drift healed from the
//! last values it wrote without asking the vault again. A failing store or backend never touches
//! the Secret; it shows up as the `Ready` condition's reason.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, future::try_join_all};
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::OwnerReference,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, PartialObjectMeta, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{Event as Finalizer, finalizer},
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use rand::Rng as _;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};
use vaultsync_api::{
    ClusterVaultStore, Condition, VaultSecret, VaultSecretStatus, VaultStore,
    condition::READY,
    secret::{CreationPolicy, DeletionPolicy, StoreKind},
};
use vaultsync_backend::{ObjectRef as VaultObject, SecretBytes, budget, cache::ReadCache};
use zeroize::Zeroizing;

use crate::{
    Args,
    args::parse_duration,
    metrics::Metrics,
    render::{self, RenderError, SecretData},
    rollout::{Rollouts, Statuses},
    stores::{StoreError, Stores},
};

mod data_from;
mod trigger;

use data_from::data_from;
pub use trigger::RefreshTrigger;

pub const FIELD_MANAGER: &str = "vaultsync-operator";
pub const FINALIZER: &str = "vaultsync.dev/cleanup";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "vaultsync");
/// On a managed Secret: the name of the VaultSecret (same namespace) that writes it.
pub const OWNER_LABEL: &str = "vaultsync.dev/vaultsecret";
/// Any new value refreshes the VaultSecret from the vault now.
pub const FORCE_SYNC: &str = "vaultsync.dev/force-sync";

/// What this process last wrote for one VaultSecret: lets it heal drift without a backend read
/// and skip writes when nothing changed.
struct Written {
    secret: String,
    resource_version: String,
    data: SecretData,
    hmac: String,
}

pub struct Context {
    pub client: Client,
    pub stores: Arc<Stores>,
    pub cache: ReadCache,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    hmac_key: Zeroizing<Vec<u8>>,
    secrets: Store<PartialObjectMeta<Secret>>,
    written: Mutex<HashMap<(String, String), Written>>,
    /// The last status this process wrote per VaultSecret: the object a reconcile gets may not
    /// show it yet, and acting on the older status would read the vault twice.
    statuses: Statuses,
    rollouts: Arc<Rollouts>,
    /// VaultSecrets a vault event asked to refresh now.
    requested: Mutex<std::collections::HashSet<(String, String)>>,
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("writing {object}: {source}")]
    Kube {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer of {object}: {source}")]
    Finalizer {
        object: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Finalizer { .. } => "finalizer",
        }
    }
}

fn kube_error(object: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Kube { object: object.to_string(), source }
}

/// Why a sync did not happen; reported in the `Ready` condition and an Event. The Secret is
/// left exactly as it was.
struct NotSynced {
    reason: &'static str,
    message: String,
    retry: Duration,
}

impl From<StoreError> for NotSynced {
    fn from(e: StoreError) -> Self {
        let retry = match e {
            StoreError::NamespaceNotAllowed { .. } | StoreError::ObjectNotAllowed { .. } => Duration::from_secs(300),
            _ => Duration::from_secs(30),
        };
        NotSynced { reason: e.reason(), message: e.to_string(), retry }
    }
}

impl From<vaultsync_backend::Error> for NotSynced {
    fn from(e: vaultsync_backend::Error) -> Self {
        let retry = match &e {
            vaultsync_backend::Error::Throttled { retry_after } => retry_after.unwrap_or(Duration::from_secs(30)),
            vaultsync_backend::Error::NotFound { .. } | vaultsync_backend::Error::Forbidden { .. } => {
                Duration::from_secs(120)
            }
            _ => Duration::from_secs(30),
        };
        NotSynced { reason: e.reason(), message: e.to_string(), retry }
    }
}

impl From<RenderError> for NotSynced {
    fn from(e: RenderError) -> Self {
        NotSynced { reason: "InvalidValue", message: e.to_string(), retry: Duration::from_secs(120) }
    }
}

// === impl Context ===

impl Context {
    pub fn new(
        client: Client,
        args: &Args,
        metrics: Arc<Metrics>,
        hmac_key: Zeroizing<Vec<u8>>,
        secrets: Store<PartialObjectMeta<Secret>>,
        stores: Arc<Stores>,
        vaultsecrets: Store<VaultSecret>,
    ) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(args.pod_name.clone()) };
        let statuses = Statuses::default();
        let rollout_reporter =
            Reporter { controller: "vaultsync-rollout".into(), instance: Some(args.pod_name.clone()) };
        let rollouts = Rollouts::new(
            client.clone(),
            metrics.clone(),
            Recorder::new(client.clone(), rollout_reporter),
            hmac_key.clone(),
            vaultsecrets,
            statuses.clone(),
        );
        Self {
            stores,
            cache: ReadCache::new(args.cache_window),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            hmac_key,
            secrets,
            written: Mutex::default(),
            statuses,
            rollouts: Arc::new(rollouts),
            requested: Mutex::default(),
        }
    }

    async fn event(&self, vs: &VaultSecret, type_: EventType, reason: &str, note: String) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: "Sync".into(), secondary: None };
        match self.recorder.publish(&event, &vs.object_ref(&())).await {
            Ok(()) => self.metrics.apiserver_write("create", "events"),
            Err(e) => warn!(error = %e, "publishing an event failed"),
        }
    }
}

/// Builds the controller for VaultSecrets (in `namespace`, or everywhere): a trigger for vault
/// events, and the future that runs the controller until shutdown.
pub fn controller(
    client: Client,
    args: Args,
    metrics: Arc<Metrics>,
    hmac_key: Zeroizing<Vec<u8>>,
    stores: Arc<Stores>,
) -> (RefreshTrigger, impl Future<Output = ()>) {
    let (vaultsecrets, secrets_api, stores_api): (Api<VaultSecret>, Api<PartialObjectMeta<Secret>>, Api<VaultStore>) =
        match &args.watch_namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
        };
    // Only the Secrets we manage, and only their metadata: no cache of every Secret's data.
    let managed = watcher::Config::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
    let (secrets_reader, secrets_writer) = reflector::store();
    let secret_events =
        reflector::reflector(secrets_writer, watcher(secrets_api, managed)).default_backoff().touched_objects();

    // Our own status writes must not trigger reconciles (a failing VaultSecret would retry at
    // once instead of after its backoff): only spec, force-sync and deletion changes do.
    let (reader, writer) = reflector::store();
    let vaultsecret_events =
        reflector::reflector(writer, watcher(vaultsecrets, watcher::Config::default().any_semantic()))
            .default_backoff()
            .applied_objects()
            .predicate_filter(spec_or_request_changed, Default::default());
    let controller = Controller::for_stream(vaultsecret_events, reader.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency));
    // Stores: only spec changes matter here (not the status the store controller writes), and the
    // cached copies spare a GET per reconcile.
    let (vault_store_reader, vault_store_writer) = reflector::store();
    let vault_store_events = reflector::reflector(vault_store_writer, watcher(stores_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .predicate_filter(predicates::generation, Default::default());
    let (cluster_store_reader, cluster_store_writer) = reflector::store();
    let cluster_store_events = reflector::reflector(
        cluster_store_writer,
        watcher(Api::<ClusterVaultStore>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(predicates::generation, Default::default());
    stores.use_caches(vault_store_reader, cluster_store_reader);
    let (by_store, by_cluster_store, by_backlog) = (reader.clone(), reader.clone(), reader.clone());
    let ctx = Arc::new(Context::new(client.clone(), &args, metrics, hmac_key, secrets_reader, stores, reader));
    let rollouts = ctx.rollouts.clone().run(args.watch_namespace.clone());
    let backlog = report_backlog(ctx.clone(), by_backlog.clone());
    let (sender, requests) = mpsc::unbounded_channel();
    let trigger = RefreshTrigger {
        client: client.clone(),
        namespace: args.watch_namespace.clone(),
        vaultsecrets: by_backlog,
        ctx: ctx.clone(),
        sender,
    };
    let controller = controller
        .watches_stream(secret_events, |secret: PartialObjectMeta<Secret>| {
            let owner = secret.labels().get(OWNER_LABEL).cloned();
            owner.map(|name| ObjectRef::new(&name).within(&secret.namespace().unwrap_or_default()))
        })
        .watches_stream(vault_store_events, move |store: VaultStore| {
            referencing(&by_store, StoreKind::VaultStore, &store.name_any(), store.namespace())
        })
        .watches_stream(cluster_store_events, move |store: ClusterVaultStore| {
            referencing(&by_cluster_store, StoreKind::ClusterVaultStore, &store.name_any(), None)
        })
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(requests))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()));
    // The backlog reporter lives exactly as long as the controller.
    let run = async move {
        tokio::select! {
            () = controller => {}
            () = backlog => {}
            () = rollouts => {}
        }
    };
    (trigger, run)
}

/// Publishes, every few seconds, how many VaultSecrets wait for work (new, changed, or past
/// their refresh time by more than 10 s) and how the cache served reads.
async fn report_backlog(ctx: Arc<Context>, store: Store<VaultSecret>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let late = Timestamp::now() - SignedDuration::from_secs(10);
        let waiting = store
            .state()
            .iter()
            .filter(|vs| {
                let status = vs.status.clone().unwrap_or_default();
                status.observed_generation != vs.metadata.generation
                    || timestamp(status.refresh_time.as_deref()).is_some_and(|at| at < late)
            })
            .count();
        ctx.metrics.set_queue_depth(i64::try_from(waiting).unwrap_or(i64::MAX));
        let stats = &ctx.cache.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        ctx.metrics.set_cache_stats(load(&stats.hits), load(&stats.coalesced), load(&stats.misses));
    }
}

/// Changes that call for a reconcile: a new spec (generation), a force-sync annotation,
/// deletion, and finalizers (the finalizer helper waits for its own finalizer to be seen).
fn spec_or_request_changed(vs: &VaultSecret) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    vs.metadata.uid.hash(&mut hasher);
    vs.metadata.generation.hash(&mut hasher);
    vs.annotations().get(FORCE_SYNC).hash(&mut hasher);
    vs.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    vs.metadata.finalizers.hash(&mut hasher);
    Some(hasher.finish())
}

/// The VaultSecrets that use a store (in `namespace` for a VaultStore).
fn referencing(
    store: &Store<VaultSecret>,
    kind: StoreKind,
    name: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<VaultSecret>> {
    store
        .state()
        .iter()
        .filter(|vs| vs.spec.store_ref.kind == kind && vs.spec.store_ref.name == name)
        .filter(|vs| namespace.is_none() || vs.namespace() == namespace)
        .map(|vs| ObjectRef::from_obj(vs.as_ref()))
        .collect()
}

#[instrument(skip(vs, ctx), fields(vaultsecret = %format!("{}/{}", vs.namespace().unwrap_or_default(), vs.name_any())))]
async fn reconcile(vs: Arc<VaultSecret>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let namespace = vs.namespace().unwrap_or_default();
    let api: Api<VaultSecret> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = format!("{namespace}/{}", vs.name_any());
    // The finalizer helper patches the VaultSecret to add or remove our finalizer: count those writes.
    let has_finalizer = vs.finalizers().iter().any(|f| f == FINALIZER);
    if has_finalizer == vs.metadata.deletion_timestamp.is_some() {
        ctx.metrics.apiserver_write("patch", "vaultsecrets");
    }
    finalizer(&api, FINALIZER, vs, |event| async {
        match event {
            Finalizer::Apply(vs) => vs.sync(&ctx).await,
            Finalizer::Cleanup(vs) => vs.cleanup(&ctx).await,
        }
    })
    .await
    .map_err(|source| Error::Finalizer { object, source: Box::new(source) })
}

fn error_policy(vs: Arc<VaultSecret>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(vaultsecret = %vs.name_any(), error = %error, "reconcile failed");
    ctx.metrics.sync(&format!("error_{}", error.metric_label()));
    Action::requeue(jittered(Duration::from_secs(10)))
}

/// Adds up to 10% so that many resources on one interval spread out over time.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 + rand::rng().random_range(0.0..0.1))
}

fn secret_name(vs: &VaultSecret) -> String {
    vs.spec.target.name.clone().unwrap_or_else(|| vs.name_any())
}

fn timestamp(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| t.parse().ok())
}

// === impl VaultSecret ===

trait Reconcile {
    async fn sync(&self, ctx: &Context) -> Result<Action, Error>;
    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error>;
}

impl Reconcile for VaultSecret {
    async fn sync(&self, ctx: &Context) -> Result<Action, Error> {
        let namespace = self.namespace().unwrap_or_default();
        let key = (namespace.clone(), self.name_any());
        let status = self.latest_status(ctx);
        let now = Timestamp::now();
        let interval = match parse_duration(&self.spec.refresh_interval) {
            Ok(interval) => interval,
            Err(message) => {
                let failure = NotSynced { reason: "InvalidSpec", message, retry: Duration::from_secs(300) };
                return self.not_synced(ctx, failure).await;
            }
        };
        let force = self.annotations().get(FORCE_SYNC).cloned();
        let forced = force.is_some() && force != status.force_sync;
        let changed = status.observed_generation != self.metadata.generation;
        // A vault event said an object changed: read it (through the cache, which the event emptied).
        let requested = ctx.requested.lock().expect("requested lock").remove(&(namespace.clone(), self.name_any()));
        // A VaultSecret that is not Ready retries the vault (with the failure's backoff).
        let failing = !status.conditions.iter().any(|c| c.type_ == READY && c.status == "True");
        let due = match timestamp(status.refresh_time.as_deref()) {
            _ if status.synced_at.is_none() => true,
            _ if interval.is_zero() => false,
            Some(at) => at <= now,
            None => true,
        };
        let target = secret_name(self);

        // Nothing is due: make sure the Secret is still what we wrote, from memory or from the
        // apiserver, without asking the vault.
        if !forced
            && !changed
            && !due
            && !failing
            && !requested
            && let Some(expected) = status.data_hmac.as_deref()
        {
            let keys: BTreeSet<String> = status.versions.keys().cloned().collect();
            if self.secret_matches(ctx, &target, expected, &keys).await? {
                ctx.metrics.sync("unchanged");
                return Ok(self.next_refresh(&status, interval, now));
            }
            let remembered =
                ctx.written.lock().expect("written lock").get(&key).map(|w| (w.data.clone(), w.hmac.clone()));
            if let Some((data, hmac)) = remembered
                && hmac.as_str() == expected
            {
                info!(secret = %target, "restoring the Secret from the last synced values");
                self.write(ctx, &target, &data, &hmac).await?;
                ctx.metrics.sync("healed");
                self.event_normal(ctx, "Healed", format!("Secret {target} was changed or deleted; restored")).await;
                return Ok(self.next_refresh(&status, interval, now));
            }
        }

        let store = match ctx.stores.resolve(self).await {
            Ok(store) => store,
            Err(e) => return self.not_synced(ctx, e.into()).await,
        };
        if let Some(denied) = self.spec.data.iter().find_map(|d| store.check_object(&d.remote_ref.name).err()) {
            return self.not_synced(ctx, denied.into()).await;
        }
        // A forced sync must see the vault as it is now; anything else may share a read made
        // within the cache window, but not one older than half its refresh interval (its own
        // previous read is a whole interval old, so a refresh never reuses it).
        let max_age = if forced { Some(Duration::ZERO) } else { Some(interval / 2).filter(|i| !i.is_zero()) };
        let reads = self.spec.data.iter().map(|item| {
            let object = VaultObject { name: item.remote_ref.name.clone(), version: item.remote_ref.version.clone() };
            let (cache, backend) = (&ctx.cache, store.backend.clone());
            async move { cache.get(backend.as_ref(), &object, max_age).await }
        });
        // Scheduled re-reads yield the store's budget to new, changed and forced VaultSecrets.
        let routine = !forced && !changed && !failing && !requested;
        let fetched = if routine { budget::routine(try_join_all(reads)).await } else { try_join_all(reads).await };
        let fetched = match fetched {
            Ok(fetched) => fetched,
            Err(e) => {
                if matches!(e, vaultsync_backend::Error::Unauthenticated { .. }) {
                    ctx.stores.forget(&store.key);
                }
                return self.not_synced(ctx, e.into()).await;
            }
        };
        let mut data = SecretData::new();
        let mut versions = BTreeMap::new();
        // dataFrom first: a key also named in `data` takes its value from `data`.
        for source in &self.spec.data_from {
            let entries = match data_from(ctx, &store, source, max_age).await {
                Ok(entries) => entries,
                Err(failure) => return self.not_synced(ctx, failure).await,
            };
            for (key, value, version) in entries {
                data.insert(key.clone(), value);
                versions.insert(key, version);
            }
        }
        for (item, secret) in self.spec.data.iter().zip(fetched) {
            let object = &item.remote_ref.name;
            let value = render::extract(secret.value.expose(), item.remote_ref.property.as_deref(), object)
                .and_then(|v| render::decode(v, item.remote_ref.decoding, object));
            match value {
                Ok(value) => data.insert(item.secret_key.clone(), SecretBytes::new(value)),
                Err(e) => return self.not_synced(ctx, e.into()).await,
            };
            versions.insert(item.secret_key.clone(), secret.version);
        }
        let hmac = render::data_hmac(&ctx.hmac_key, &data);

        if let Err(failure) = self.check_ownership(ctx, &target).await? {
            return self.not_synced(ctx, failure).await;
        }
        let content_changed = status.data_hmac.as_deref() != Some(hmac.as_str());
        let keys: BTreeSet<String> = data.keys().cloned().collect();
        if content_changed || !self.secret_matches(ctx, &target, &hmac, &keys).await? {
            self.write(ctx, &target, &data, &hmac).await?;
            ctx.metrics.sync("synced");
            if content_changed {
                let note = format!("Synced {} key(s) from {} into Secret {target}", data.len(), store.key);
                self.event_normal(ctx, "Synced", note).await;
            }
        } else {
            ctx.metrics.sync("unchanged");
        }

        let refresh = now + SignedDuration::try_from(jittered(interval)).unwrap_or_default();
        let new_status = VaultSecretStatus {
            conditions: vec![self.condition(
                &status,
                "True",
                "Synced",
                format!("{} key(s) synced from {}", data.len(), store.key),
                now,
            )],
            observed_generation: self.metadata.generation,
            synced_at: Some(now.to_string()),
            refresh_time: (!interval.is_zero()).then(|| refresh.to_string()),
            versions,
            data_hmac: Some(hmac),
            content_changed_at: if content_changed && status.data_hmac.is_some() {
                Some(now.to_string())
            } else {
                status.content_changed_at.clone()
            },
            force_sync: force,
        };
        self.patch_status(ctx, &new_status).await?;
        if content_changed {
            ctx.rollouts.vault_secret_synced(self, &target);
        }
        Ok(if interval.is_zero() {
            Action::await_change()
        } else {
            Action::requeue(refresh.duration_since(now).unsigned_abs())
        })
    }

    async fn cleanup(&self, ctx: &Context) -> Result<Action, Error> {
        let namespace = self.namespace().unwrap_or_default();
        ctx.written.lock().expect("written lock").remove(&(namespace.clone(), self.name_any()));
        ctx.statuses.lock().expect("statuses lock").remove(&(namespace.clone(), self.name_any()));
        let target = secret_name(self);
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let Some(secret) = api.get_opt(&target).await.map_err(kube_error(&target))? else {
            return Ok(Action::await_change());
        };
        if secret.labels().get(OWNER_LABEL) != Some(&self.name_any()) {
            return Ok(Action::await_change()); // not ours: nothing to do
        }
        let policy = (self.spec.target.creation_policy, self.spec.target.deletion_policy);
        match policy {
            (CreationPolicy::Merge, DeletionPolicy::Delete) => {
                // Give up our fields: server-side apply removes the keys only we set.
                let body = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": target } });
                api.patch(&target, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
                    .await
                    .map_err(kube_error(&target))?;
                ctx.metrics.apiserver_write("apply", "secrets");
            }
            (_, DeletionPolicy::Delete) => {
                api.delete(&target, &DeleteParams::default()).await.map_err(kube_error(&target))?;
                ctx.metrics.apiserver_write("delete", "secrets");
            }
            (_, DeletionPolicy::Retain) => {
                // Keep the data; drop our owner reference (so garbage collection keeps it too) and
                // our labels (so it is no longer managed).
                let uid = self.uid().unwrap_or_default();
                let owners: Vec<_> = secret.owner_references().iter().filter(|o| o.uid != uid).cloned().collect();
                let body = json!({ "metadata": {
                    "ownerReferences": owners,
                    "labels": { OWNER_LABEL: null, MANAGED_BY.0: null },
                }});
                api.patch(&target, &PatchParams::default(), &Patch::Merge(&body)).await.map_err(kube_error(&target))?;
                ctx.metrics.apiserver_write("patch", "secrets");
            }
        }
        Ok(Action::await_change())
    }
}

/// Steps of a sync, as methods of the VaultSecret they act for.
trait SyncSteps {
    async fn secret_matches(
        &self,
        ctx: &Context,
        target: &str,
        expected: &str,
        keys: &BTreeSet<String>,
    ) -> Result<bool, Error>;
    async fn check_ownership(&self, ctx: &Context, target: &str) -> Result<Result<(), NotSynced>, Error>;
    async fn write(&self, ctx: &Context, target: &str, data: &SecretData, hmac: &str) -> Result<(), Error>;
    fn condition(
        &self,
        old: &VaultSecretStatus,
        status: &str,
        reason: &str,
        message: String,
        now: Timestamp,
    ) -> Condition;
    async fn not_synced(&self, ctx: &Context, failure: NotSynced) -> Result<Action, Error>;
    fn next_refresh(&self, status: &VaultSecretStatus, interval: Duration, now: Timestamp) -> Action;
    async fn patch_status(&self, ctx: &Context, status: &VaultSecretStatus) -> Result<(), Error>;
    fn latest_status(&self, ctx: &Context) -> VaultSecretStatus;
    async fn event_normal(&self, ctx: &Context, reason: &str, note: String);
    async fn event_warning(&self, ctx: &Context, reason: &str, note: String);
}

impl SyncSteps for VaultSecret {
    /// Whether the target Secret holds what `expected` describes: known from the last write when
    /// the Secret's resourceVersion is unchanged, else read once and compared.
    /// `keys` are the Secret keys vaultsync writes for this VaultSecret.
    async fn secret_matches(
        &self,
        ctx: &Context,
        target: &str,
        expected: &str,
        keys: &BTreeSet<String>,
    ) -> Result<bool, Error> {
        let namespace = self.namespace().unwrap_or_default();
        let cached_version =
            ctx.secrets.get(&ObjectRef::new(target).within(&namespace)).and_then(|m| m.resource_version());
        let key = (namespace.clone(), self.name_any());
        if let Some(w) = ctx.written.lock().expect("written lock").get(&key)
            && w.secret == target
            && cached_version.as_ref() == Some(&w.resource_version)
        {
            return Ok(w.hmac == expected);
        }
        // After a restart, when someone else wrote, or while our cache has not seen our own write
        // yet: compare what is there.
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let Some(secret) = api.get_opt(target).await.map_err(kube_error(target))? else { return Ok(false) };
        if secret.labels().get(OWNER_LABEL) != Some(&self.name_any()) {
            return Ok(false);
        }
        let stored = secret.data.clone().unwrap_or_default();
        let ours: SecretData =
            keys.iter().filter_map(|k| stored.get(k).map(|v| (k.clone(), SecretBytes::new(v.0.clone())))).collect();
        let hmac = render::data_hmac(&ctx.hmac_key, &ours);
        let matches = hmac == expected && ours.len() == keys.len();
        if matches {
            ctx.written.lock().expect("written lock").insert(
                key,
                Written {
                    secret: target.into(),
                    resource_version: secret.resource_version().unwrap_or_default(),
                    data: ours,
                    hmac,
                },
            );
        }
        Ok(matches)
    }

    /// Refuses to take over a Secret written by someone else (unless merging into it) or by
    /// another VaultSecret. Our cache only holds labelled Secrets, so an unknown one is looked up.
    async fn check_ownership(&self, ctx: &Context, target: &str) -> Result<Result<(), NotSynced>, Error> {
        let namespace = self.namespace().unwrap_or_default();
        let labels = match ctx.secrets.get(&ObjectRef::new(target).within(&namespace)) {
            Some(meta) => Some(meta.labels().clone()),
            None => {
                let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
                api.get_metadata_opt(target).await.map_err(kube_error(target))?.map(|m| m.labels().clone())
            }
        };
        let conflict =
            |message: String| NotSynced { reason: "OwnershipConflict", message, retry: Duration::from_secs(120) };
        let merge = self.spec.target.creation_policy == CreationPolicy::Merge;
        Ok(match labels.as_ref().map(|l| l.get(OWNER_LABEL)) {
            None if merge => Err(NotSynced {
                reason: "TargetNotFound",
                message: format!("Secret {target} does not exist; creationPolicy Merge merges into an existing Secret"),
                retry: Duration::from_secs(60),
            }),
            None => Ok(()),
            Some(Some(owner)) if *owner == self.name_any() => Ok(()),
            Some(Some(owner)) => Err(conflict(format!("Secret {target} is managed by VaultSecret {owner}"))),
            Some(None) if merge => Ok(()),
            Some(None) => Err(conflict(format!(
                "Secret {target} exists and is not managed by vaultsync; use creationPolicy Merge to merge into it"
            ))),
        })
    }

    /// Writes the Secret with server-side apply and remembers what was written.
    async fn write(&self, ctx: &Context, target: &str, data: &SecretData, hmac: &str) -> Result<(), Error> {
        let namespace = self.namespace().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
        let spec = &self.spec.target;
        let mut labels = spec.labels.clone();
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        labels.insert(OWNER_LABEL.into(), self.name_any());
        let merge = spec.creation_policy == CreationPolicy::Merge;
        let owner_references = (spec.creation_policy == CreationPolicy::Owner).then(|| {
            vec![OwnerReference {
                controller: Some(true),
                ..self.controller_owner_ref(&()).expect("VaultSecret has a uid")
            }]
        });
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(target.into()),
                namespace: Some(namespace.clone()),
                labels: Some(labels),
                annotations: (!merge && !spec.annotations.is_empty()).then(|| spec.annotations.clone()),
                owner_references,
                ..Default::default()
            },
            type_: if merge { None } else { Some(spec.type_.clone().unwrap_or_else(|| "Opaque".into())) },
            data: Some(data.iter().map(|(k, v)| (k.clone(), ByteString(v.expose().to_vec()))).collect()),
            immutable: (!merge && spec.immutable).then_some(true),
            ..Default::default()
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let applied = match api.patch(target, &params, &Patch::Apply(&secret)).await {
            Err(kube::Error::Api(status)) if status.code == 422 && spec.immutable => {
                // An immutable Secret cannot change: replace it.
                api.delete(target, &DeleteParams::default()).await.map_err(kube_error(target))?;
                ctx.metrics.apiserver_write("delete", "secrets");
                api.patch(target, &params, &Patch::Apply(&secret)).await
            }
            other => other,
        }
        .map_err(kube_error(target))?;
        ctx.metrics.apiserver_write("apply", "secrets");
        ctx.written.lock().expect("written lock").insert(
            (namespace, self.name_any()),
            Written {
                secret: target.into(),
                resource_version: applied.resource_version().unwrap_or_default(),
                data: data.clone(),
                hmac: hmac.into(),
            },
        );
        Ok(())
    }

    fn condition(
        &self,
        old: &VaultSecretStatus,
        status: &str,
        reason: &str,
        message: String,
        now: Timestamp,
    ) -> Condition {
        let previous = old.conditions.iter().find(|c| c.type_ == READY);
        let last_transition_time = match previous {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => now.to_string(),
        };
        Condition {
            type_: READY.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: self.metadata.generation,
        }
    }

    /// Reports why the VaultSecret could not sync; the Secret is not touched.
    async fn not_synced(&self, ctx: &Context, failure: NotSynced) -> Result<Action, Error> {
        let old = self.latest_status(ctx);
        let now = Timestamp::now();
        let condition = self.condition(&old, "False", failure.reason, failure.message.clone(), now);
        ctx.metrics.sync(&format!("error_{}", failure.reason));
        let unchanged = old
            .conditions
            .iter()
            .any(|c| c.type_ == READY && c.reason == condition.reason && c.message == condition.message);
        if !unchanged {
            self.event_warning(ctx, failure.reason, failure.message).await;
            let status =
                VaultSecretStatus { conditions: vec![condition], observed_generation: self.metadata.generation, ..old };
            self.patch_status(ctx, &status).await?;
        }
        Ok(Action::requeue(jittered(failure.retry)))
    }

    fn next_refresh(&self, status: &VaultSecretStatus, interval: Duration, now: Timestamp) -> Action {
        match timestamp(status.refresh_time.as_deref()) {
            Some(at) if !interval.is_zero() => {
                Action::requeue(at.duration_since(now).unsigned_abs().max(Duration::from_secs(1)))
            }
            _ => Action::await_change(),
        }
    }

    async fn patch_status(&self, ctx: &Context, status: &VaultSecretStatus) -> Result<(), Error> {
        let api: Api<VaultSecret> = Api::namespaced(ctx.client.clone(), &self.namespace().unwrap_or_default());
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret", "status": status });
        api.patch_status(&self.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(kube_error(&self.name_any()))?;
        ctx.metrics.apiserver_write("apply", "vaultsecrets/status");
        let key = (self.namespace().unwrap_or_default(), self.name_any());
        ctx.statuses.lock().expect("statuses lock").insert(key, status.clone());
        Ok(())
    }

    fn latest_status(&self, ctx: &Context) -> VaultSecretStatus {
        let seen = self.status.clone().unwrap_or_default();
        let key = (self.namespace().unwrap_or_default(), self.name_any());
        match ctx.statuses.lock().expect("statuses lock").get(&key) {
            // Ours is newer unless the object shows a later sync (another writer) or a newer
            // generation was acted on.
            Some(ours)
                if timestamp(ours.synced_at.as_deref()) >= timestamp(seen.synced_at.as_deref())
                    && ours.observed_generation >= seen.observed_generation =>
            {
                ours.clone()
            }
            _ => seen,
        }
    }

    async fn event_normal(&self, ctx: &Context, reason: &str, note: String) {
        ctx.event(self, EventType::Normal, reason, note).await;
    }

    async fn event_warning(&self, ctx: &Context, reason: &str, note: String) {
        ctx.event(self, EventType::Warning, reason, note).await;
    }
}
