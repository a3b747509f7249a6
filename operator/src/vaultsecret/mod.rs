//! The VaultSecret controller: reads the objects a VaultSecret names through the shared cache, writes the target
//! Secret, and keeps it so: routine refreshes in computed slots (held back by `routine` so that they never queue in
//! front of new work), forced refreshes by annotation, and drift healed from the read cache (the values the last
//! refresh read) without asking the vault again. A failing store, backend or write never empties or deletes the
//! Secret; it shows up as the `Ready` condition's reason and an Event.
//!
//! This file wires the controller (watches, triggers, the reconcile entry point with its timeout); the sync itself
//! is in `plan` (the decision, a pure function), `sync` (carrying it out), `read`, `target`, `status`, `cleanup` and
//! `routine` (the queue of next refreshes).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, TryStreamExt, future::ready};
use k8s_openapi::{
    api::core::v1::Secret,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client, ResourceExt,
    api::PartialObjectMeta,
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::Reporter,
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use rand::Rng as _;
use tokio::sync::mpsc;
use tracing::{instrument, warn};
use vaultsync_api::{
    ClusterVaultStore, VaultSecret, VaultStore,
    secret::{CreationPolicy, DeletionPolicy, StoreKind},
};
use vaultsync_backend::cache::ReadCache;
use vaultsync_stores::Stores;
use zeroize::Zeroizing;

use crate::{
    Args,
    events::Recorder,
    metrics::Metrics,
    rollout::{Rollouts, Statuses},
    shard::Shard,
};

mod cleanup;
mod data_from;
mod find;
mod managed;
mod objects;
pub mod offline;
pub mod plan;
mod read;
mod routine;
mod status;
mod sync;
mod target;
mod templating;
mod trigger;

pub use target::CREATED_LABEL;
pub use trigger::RefreshTrigger;

pub const FIELD_MANAGER: &str = "vaultsync-operator";
pub const FINALIZER: &str = "vaultsync.dev/cleanup";
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "vaultsync");
/// On a managed Secret: the name of the VaultSecret (same namespace) that writes it.
pub const OWNER_LABEL: &str = "vaultsync.dev/vaultsecret";
/// Any new value refreshes the VaultSecret from the vault now.
pub const FORCE_SYNC: &str = "vaultsync.dev/force-sync";

/// What this process last wrote for one VaultSecret: tells a Secret untouched since (by its resourceVersion) without
/// reading it, so nothing is written when nothing changed. Only the digest of the data: the values themselves are in
/// the read cache already, and a second copy here cost as much memory as the values (a drifted Secret is healed
/// from the cache). One of these per VaultSecret, so as few allocations as will do: a boxed resourceVersion, the
/// target's name only when it is not the VaultSecret's, `meta` only when templates made something.
struct Written {
    /// The Secret written, when it is not named after the VaultSecret.
    secret: Option<Box<str>>,
    resource_version: Box<str>,
    /// What templates made besides data (type, labels, annotations), if anything.
    meta: Option<Box<templating::SecretMeta>>,
    /// SHA-256 of the `dataHmac` written (32 bytes in place of an 85-character string).
    hmac: [u8; 32],
}

impl Written {
    fn hmac_digest(hmac: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(hmac.as_bytes()).into()
    }

    /// Whether this records a write of the Secret `target` of the VaultSecret `name`.
    fn is_of(&self, name: &str, target: &str) -> bool {
        self.secret.as_deref().unwrap_or(name) == target
    }
}

pub struct Context {
    pub client: Client,
    pub stores: Arc<Stores>,
    pub cache: ReadCache,
    pub metrics: Arc<Metrics>,
    recorder: Recorder,
    hmac_key: Zeroizing<Vec<u8>>,
    secrets: managed::ManagedSecrets,
    /// Whether `secrets` has listed every managed Secret.
    secrets_ready: tokio::sync::watch::Receiver<bool>,
    written: Mutex<HashMap<Uid, Written>>,
    /// The last status this process wrote per VaultSecret: the object a reconcile gets may not
    /// show it yet, and acting on the older status would read the vault twice.
    statuses: Statuses,
    /// The watched VaultSecrets: the freshest status the watch has brought, newer than that of the object a
    /// reconcile was handed when it waited for its turn.
    vaultsecrets: Store<VaultSecret>,
    /// What the last VaultSecret event that started a reconcile looked like, per VaultSecret.
    changes: Changes,
    rollouts: Arc<Rollouts>,
    /// VaultSecrets (by UID) a vault event asked to refresh now.
    requested: Mutex<std::collections::HashSet<Uid>>,
    /// The longest a reconcile may take before it is abandoned and retried.
    reconcile_timeout: Duration,
    /// What each `dataFrom.find` read last, so an unchanged object is not read again.
    find_memory: find::FindMemory,
    /// How long before a synced certificate expires a Warning Event says so.
    expiry_warning: Duration,
    /// When this process last read the vault for each VaultSecret: the schedule, kept out of the status so that
    /// unchanged content costs no write.
    schedule: Mutex<HashMap<Uid, Timestamp>>,
    /// Next routine refreshes, passed to the controller only while there is room, so new work never queues behind
    /// a whole round.
    routine: routine::Routine,
}

#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("writing {object}: {source}")]
    Kube {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("the cleanup finalizer of {object}: {source}")]
    Finalizer {
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("reconciling {object} timed out")]
    Timeout { object: String },
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Finalizer { .. } => "finalizer",
            Error::Timeout { .. } => "timeout",
        }
    }
}

/// What the watches keep: the managed Secrets' metadata, the VaultSecrets, and the statuses written but not yet seen.
pub struct Watched {
    changes: Changes,
    secrets: managed::ManagedSecrets,
    vaultsecrets: Store<VaultSecret>,
    statuses: Statuses,
}

// === impl Context ===

impl Context {
    pub fn new(
        client: Client,
        args: &Args,
        metrics: Arc<Metrics>,
        hmac_key: Zeroizing<Vec<u8>>,
        stores: Arc<Stores>,
        watched: Watched,
    ) -> Self {
        let Watched { secrets, vaultsecrets, statuses, changes } = watched;
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: Some(args.pod_name.clone()) };
        let rollout_reporter =
            Reporter { controller: "vaultsync-rollout".into(), instance: Some(args.pod_name.clone()) };
        let rollouts = Rollouts::new(
            client.clone(),
            metrics.clone(),
            Recorder::new(client.clone(), rollout_reporter),
            hmac_key.clone(),
            vaultsecrets.clone(),
            statuses.clone(),
        );
        let secrets_ready = secrets.ready();
        Self {
            secrets_ready,
            stores,
            // VaultSecrets say how old a read they accept (most of their refresh interval); five minutes otherwise.
            cache: ReadCache::new(Duration::from_secs(300)),
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            hmac_key,
            secrets,
            written: Mutex::default(),
            statuses,
            vaultsecrets,
            changes,
            rollouts: Arc::new(rollouts),
            requested: Mutex::default(),
            reconcile_timeout: args.reconcile_timeout,
            find_memory: find::FindMemory::default(),
            expiry_warning: args.certificate_expiry_warning,
            schedule: Mutex::default(),
            routine: routine::Routine::default(),
        }
    }
}

/// Builds the controller for VaultSecrets (in `namespace`, or everywhere, of the namespaces `shard` owns): a trigger
/// for vault events, and the future that runs the controller until shutdown.
pub fn controller(
    client: Client,
    args: Args,
    metrics: Arc<Metrics>,
    hmac_key: Zeroizing<Vec<u8>>,
    stores: Arc<Stores>,
    shard: Shard,
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
    let secrets_table = managed::ManagedSecrets::default();
    let table = secrets_table.clone();
    let mut relist = None;
    let secret_events = watcher(secrets_api, managed)
        .filter(move |event| ready(shard.keeps(event)))
        .default_backoff()
        .inspect_ok(move |event| table.apply(event, &mut relist))
        .touched_objects();

    // Our own status writes must not trigger reconciles (a failing VaultSecret would retry at
    // once instead of after its backoff): only spec, force-sync and deletion changes do.
    let (reader, writer) = reflector::store();
    let statuses = Statuses::default();
    let reflected = statuses.clone();
    let changes = Changes::default();
    // Memory: the cached VaultSecrets keep neither managed fields nor the last-applied annotation kubectl adds, nor
    // any of another shard's (the apiserver cannot filter by namespace hash, so they are dropped on receipt); the
    // copy of a status we wrote is dropped once the watch brings it.
    let vaultsecret_events = reflector::reflector(
        writer,
        watcher(vaultsecrets, watcher::Config::default().any_semantic())
            .filter(move |event| ready(shard.keeps(event)))
            .modify(move |vs: &mut VaultSecret| {
                vs.metadata.managed_fields = None;
                if let Some(annotations) = vs.metadata.annotations.as_mut() {
                    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                }
                forget_reflected(&reflected, vs);
            }),
    )
    .default_backoff()
    .applied_objects()
    .try_filter({
        let changes = changes.clone();
        move |vs| ready(changes.changed(vs))
    });
    metrics.watch_vault_secrets(reader.clone());
    let controller = Controller::for_stream(vaultsecret_events, reader.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency))
        .trigger_backoff(crate::triggers::EachWatchBacksOff);
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
    let ctx = Arc::new(Context::new(
        client.clone(),
        &args,
        metrics,
        hmac_key,
        stores,
        Watched { secrets: secrets_table, vaultsecrets: reader, statuses, changes },
    ));
    let rollouts = ctx.rollouts.clone().run(args.watch_namespace.clone(), shard);
    let (sender, requests) = mpsc::unbounded_channel();
    let backlog = report_backlog(ctx.clone(), by_backlog.clone(), sender.clone());
    // Routine refreshes wait outside the queue; at most twice the concurrency of them stand in it at a time.
    let routine = {
        let (ctx, store, send) = (ctx.clone(), by_backlog.clone(), sender.clone());
        let limit = 2 * usize::from(args.concurrency.max(1));
        async move { ctx.routine.run(store, limit, send).await }
    };
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
            () = routine => {}
        }
    };
    (trigger, run)
}

/// Publishes, every few seconds, how many VaultSecrets wait for work (new, changed, or more than 10 s past their
/// next refresh slot) and how the cache served reads. A VaultSecret that has waited half a minute without this
/// process ever looking at it (its first event lost in a watch restart, say) is looked at now: none is left
/// unprocessed until its next change.
async fn report_backlog(
    ctx: Arc<Context>,
    store: Store<VaultSecret>,
    kick: mpsc::UnboundedSender<ObjectRef<VaultSecret>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        let forgotten = Timestamp::now() - SignedDuration::from_secs(30);
        let live = store.state();
        for vs in &live {
            let created = vs.metadata.creation_timestamp.as_ref().map(|t| t.0);
            let looked_at = ctx.schedule.lock().expect("schedule lock").contains_key(&uid(vs));
            if !looked_at && vs.status.is_none() && created.is_some_and(|at| at < forgotten) {
                let name = format!("{}/{}", vs.namespace().unwrap_or_default(), vs.name_any());
                tracing::warn!(vaultsecret = %name, "never looked at; reconciling it now");
                let _ = kick.send(ObjectRef::from_obj(vs.as_ref()));
            }
        }
        // Forget what was kept for VaultSecrets that are gone (most go without a finalizer, so without a cleanup).
        if ctx.rollouts.vaultsecrets_listed.load(std::sync::atomic::Ordering::Relaxed) {
            let uids: std::collections::HashSet<Uid> = live.iter().map(|vs| uid(vs)).collect();
            ctx.written.lock().expect("written lock").retain(|k, _| uids.contains(k));
            ctx.statuses.lock().expect("statuses lock").retain(|k, _| uids.contains(k));
            ctx.schedule.lock().expect("schedule lock").retain(|k, _| uids.contains(k));
            ctx.changes.retain(&uids);
        }
        let late = Timestamp::now() - SignedDuration::from_secs(10);
        let schedule = ctx.schedule.lock().expect("schedule lock").clone();
        let waiting = store
            .state()
            .iter()
            .filter(|vs| {
                let status = vs.status.clone().unwrap_or_default();
                let overdue = match (plan::refresh_interval(&vs.spec.refresh_interval), schedule.get(&uid(vs))) {
                    (Ok(plan::Interval::Every(every)), Some(last_read)) => {
                        let phase = plan::phase(&vs.uid().unwrap_or_default(), every);
                        plan::next_due(*last_read, every, phase).is_some_and(|due| due < late)
                    }
                    _ => false,
                };
                status.observed_generation != vs.metadata.generation || overdue
            })
            .count();
        ctx.metrics.set_queue_depth(i64::try_from(waiting).unwrap_or(i64::MAX));
        let (stats, lists) = (&ctx.cache.stats, &ctx.cache.lists.stats);
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        ctx.metrics.set_cache_stats(crate::metrics::CacheTotals {
            hits: load(&stats.hits),
            coalesced: load(&stats.coalesced),
            misses: load(&stats.misses),
            validated: load(&stats.validated),
            lists: load(&lists.lists),
            lists_stopped: load(&lists.stopped),
            lists_refused: load(&lists.refused),
        });
    }
}

/// Our copy of a status we wrote is needed only until the watch shows it (a reconcile must not act on the older
/// status meanwhile); then the cached object holds it, and keeping a second copy of every status would cost as much
/// memory as the statuses themselves. The watch event arrives in the same task that starts reconciles, before the
/// store is updated with it, so no reconcile sees neither.
fn forget_reflected(statuses: &Statuses, vs: &VaultSecret) {
    let Some(seen) = vs.status.as_ref() else { return };
    let uid = uid(vs);
    let mut statuses = statuses.lock().expect("statuses lock");
    if statuses.get(&uid).is_some_and(|ours| ours == seen) {
        statuses.remove(&uid);
    }
}

/// Passes a VaultSecret event on only when [`spec_or_request_changed`] differs from the last one passed for its UID:
/// kube-runtime's predicate filter does the same, but keys each VaultSecret by its name, namespace and UID as strings
/// (about 250 bytes each at 10,000 VaultSecrets, against 24 here). Entries of deleted VaultSecrets are dropped with
/// the other per-VaultSecret maps.
#[derive(Clone, Default)]
pub(crate) struct Changes(Arc<Mutex<HashMap<Uid, u64>>>);

impl Changes {
    fn changed(&self, vs: &VaultSecret) -> bool {
        let hash = spec_or_request_changed(vs);
        self.0.lock().expect("changes lock").insert(uid(vs), hash) != Some(hash)
    }

    fn retain(&self, live: &std::collections::HashSet<Uid>) {
        self.0.lock().expect("changes lock").retain(|uid, _| live.contains(uid));
    }
}

/// Changes that call for a reconcile: a new spec (generation), a force-sync annotation, deletion.
fn spec_or_request_changed(vs: &VaultSecret) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    vs.metadata.uid.hash(&mut hasher);
    vs.metadata.generation.hash(&mut hasher);
    vs.annotations().get(FORCE_SYNC).hash(&mut hasher);
    vs.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    hasher.finish()
}

/// Whether deleting the VaultSecret must do something the garbage collector cannot: delete a Secret that has no owner
/// reference (`Orphan`), or take vaultsync's keys out of someone's Secret (`Merge`). `Owner` with `Delete` gives the
/// Secret an owner reference and the garbage collector removes it; `Retain` leaves it.
pub fn needs_finalizer(vs: &VaultSecret) -> bool {
    vs.spec.target.deletion_policy == DeletionPolicy::Delete
        && matches!(vs.spec.target.creation_policy, CreationPolicy::Orphan | CreationPolicy::Merge)
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
    ctx.routine.started(uid(&vs));
    ctx.rollouts.vaultsecrets_listed.store(true, std::sync::atomic::Ordering::Relaxed);
    let namespace = vs.namespace().unwrap_or_default();
    let object = format!("{namespace}/{}", vs.name_any());
    // A stuck apiserver or vault call must not hold one of the controller's slots for ever.
    let work = async {
        let sync = Sync::new(&vs, &ctx);
        let has = vs.finalizers().iter().any(|f| f == FINALIZER);
        if vs.metadata.deletion_timestamp.is_some() {
            if has {
                sync.cleanup().await?;
                sync.finalizer(false).await?;
            }
            return Ok(Action::await_change());
        }
        match (needs_finalizer(&vs), has) {
            (true, false) => sync.finalizer(true).await?,
            // Earlier versions put the finalizer on every VaultSecret: take it off (and the owner reference a
            // Retain Secret must not keep, or the garbage collector would delete it with the VaultSecret).
            (false, true) => {
                sync.drop_owner_reference().await?;
                sync.finalizer(false).await?;
            }
            _ => {}
        }
        sync.sync().await
    };
    let work = vaultsync_backend::audit::scope(format!("VaultSecret {object}"), work);
    match tokio::time::timeout(ctx.reconcile_timeout, work).await {
        Ok(Err(Error::Finalizer { source, .. })) => {
            // Typically a right the operator lacks: say so where users look, not only in the log.
            let failure = status::NotSynced::apiserver("FinalizerFailed", "updating the cleanup finalizer", &source);
            Sync::new(&vs, &ctx).not_synced(failure).await
        }
        Ok(result) => result,
        Err(_) => {
            let message = format!("the sync did not finish within {:?}; retrying", ctx.reconcile_timeout);
            let failure = status::NotSynced::new("Timeout", message, Duration::from_secs(30));
            // Report it, briefly: the call that timed out may be the status write itself.
            let sync = Sync::new(&vs, &ctx);
            match tokio::time::timeout(Duration::from_secs(10), sync.not_synced(failure)).await {
                Ok(result) => result,
                Err(_) => Err(Error::Timeout { object }),
            }
        }
    }
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

/// A VaultSecret's UID: the key of the per-object maps.
pub(crate) fn uid(vs: &VaultSecret) -> Uid {
    Uid::parse(vs.metadata.uid.as_deref().unwrap_or_default())
}

/// A UID as the key of the per-object maps: 16 bytes in place of a 36-character string in each of them, for every
/// VaultSecret. The apiserver issues RFC 4122 UUIDs; any other text is hashed (never seen in practice).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(u128);

impl Uid {
    pub fn parse(text: &str) -> Uid {
        let mut value: u128 = 0;
        let mut digits = 0;
        for byte in text.bytes().filter(|b| *b != b'-') {
            let Some(digit) = char::from(byte).to_digit(16) else { return Uid::hashed(text) };
            value = (value << 4) | u128::from(digit);
            digits += 1;
        }
        if digits == 32 { Uid(value) } else { Uid::hashed(text) }
    }

    fn hashed(text: &str) -> Uid {
        use std::hash::{Hash, Hasher};
        let half = |salt: u8| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (salt, text).hash(&mut hasher);
            u128::from(hasher.finish())
        };
        Uid((half(0) << 64) | half(1))
    }
}

fn timestamp(text: Option<&str>) -> Option<Timestamp> {
    text.and_then(|t| t.parse().ok())
}

/// One VaultSecret being reconciled, with the context it is reconciled in. The steps of a sync are methods of this
/// type, one file per step: `sync` (the decision carried out), `read`, `target` (the Secret), `status`, `cleanup`.
pub(crate) struct Sync<'a> {
    vs: &'a VaultSecret,
    ctx: &'a Context,
    namespace: String,
    name: String,
    /// The target Secret's name.
    target: String,
}

impl<'a> Sync<'a> {
    fn new(vs: &'a VaultSecret, ctx: &'a Context) -> Self {
        Self { vs, ctx, namespace: vs.namespace().unwrap_or_default(), name: vs.name_any(), target: secret_name(vs) }
    }

    /// `namespace/name`, for messages.
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The key of this VaultSecret in the per-object maps of the context: its UID, so that a VaultSecret deleted and
    /// created again under the same name starts afresh.
    fn map_key(&self) -> Uid {
        uid(self.vs)
    }
}

#[cfg(test)]
mod tests {
    use super::Uid;

    #[test]
    fn a_uuid_is_its_128_bits_and_other_text_is_hashed_apart() {
        let uuid = Uid::parse("0b6f9c2e-1d2a-4c3b-9e8f-00112233aabb");
        assert_eq!(uuid, Uid(0x0b6f_9c2e_1d2a_4c3b_9e8f_0011_2233_aabb));
        assert_eq!(uuid, Uid::parse("0B6F9C2E-1D2A-4C3B-9E8F-00112233AABB"));
        let (a, b) = (Uid::parse("uid-a"), Uid::parse("uid-b"));
        assert_ne!(a, b);
        assert_eq!(a, Uid::parse("uid-a"));
        assert_ne!(Uid::parse(""), Uid::parse("0"), "short text is hashed, not read as a number");
        assert_ne!(Uid::parse("0b6f9c2e-1d2a-4c3b-9e8f-00112233aabbcc"), uuid, "too many digits");
    }
}
