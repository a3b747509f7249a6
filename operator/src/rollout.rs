//! Rollouts: when a VaultSecret's content changes, the workloads that use it get a new pod
//! template annotation (a keyed HMAC of the content they depend on), so their controllers roll
//! them once. Same content, no patch: not on the first sync, not after an operator restart,
//! not on a routine refresh, not when a GitOps tool re-applies the manifest. Changes within the
//! debounce window give one rollout.
//!
//! The workload records, per source VaultSecret, the digest it last saw (with the HMAC key's id). A rollout
//! needs a source whose digest changed under the same key: a source added or removed (a VaultSecret deleted, or
//! not synced yet) only updates the record, and digests under a lost or replaced key are a new baseline.
//!
//! Targets are a VaultSecret's `spec.rollout.targets` and workloads labelled
//! `vaultsync.dev/reload: "true"` that reference its Secret. Only labelled workloads are watched
//! (label-filtered); explicit targets are read when needed.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, future::BoxFuture};
use k8s_openapi::{api::core::v1::PodSpec, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType},
        reflector::{self, Store},
        watcher::{self, watcher},
    },
};
use serde_json::json;
use tokio::{sync::Notify, time::Instant};
use tracing::{info, warn};
use vaultsync_api::{
    VaultSecret, VaultSecretStatus,
    secret::{Rollout, WorkloadKind},
};
use vaultsync_backend::SecretBytes;
use zeroize::Zeroizing;

use crate::{
    args::parse_duration,
    events::Recorder,
    metrics::Metrics,
    render::{self, SecretData},
    shard::Shard,
};

pub const RELOAD_LABEL: &str = "vaultsync.dev/reload";
/// On the pod template: the content hash the pods were started with.
pub const TEMPLATE_ANNOTATION: &str = "vaultsync.dev/content-hash";
/// On the workload: the digest of each source last applied or recorded (a baseline, which rolls nothing), as JSON
/// `{"key": "<HMAC key id>", "sources": {"VaultSecret/<name>": "<digest>"}}`.
pub const OBSERVED_ANNOTATION: &str = "vaultsync.dev/observed-content-hash";
pub const FIELD_MANAGER: &str = "vaultsync-rollout";
const DEFAULT_DEBOUNCE: Duration = Duration::from_secs(5);

/// A workload in a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
}

/// The latest status written per VaultSecret (by UID), shared with the VaultSecret controller.
pub type Statuses = Arc<Mutex<HashMap<crate::vaultsecret::Uid, VaultSecretStatus>>>;

pub struct Rollouts {
    client: Client,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    hmac_key: Zeroizing<Vec<u8>>,
    vaultsecrets: Store<VaultSecret>,
    /// The latest status written per VaultSecret (the reflector may not show it yet).
    statuses: Statuses,
    labelled: Mutex<HashMap<WorkloadKind, Store<DynamicObject>>>,
    /// Workloads to check and when (trailing debounce).
    pending: Mutex<BTreeMap<Workload, Instant>>,
    /// Paused workloads already told about the content they wait for: one Event per change, not per check.
    warned_paused: Mutex<HashMap<Workload, String>>,
    /// Set by the VaultSecret controller's first reconcile, which runs only once it has listed every VaultSecret.
    /// (The list's own readiness future wakes only one waiter, and the controller is it.)
    pub vaultsecrets_listed: Arc<std::sync::atomic::AtomicBool>,
    started: Instant,
    wake: Notify,
}

/// What a workload recorded: the HMAC key id and each source's digest.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Record {
    key: String,
    sources: BTreeMap<String, String>,
}

impl Record {
    fn parse(annotation: Option<&String>) -> Option<Record> {
        serde_json::from_str(annotation?).ok()
    }
}

fn resource(kind: WorkloadKind) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind_name(kind)))
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

const KINDS: [WorkloadKind; 3] = [WorkloadKind::Deployment, WorkloadKind::StatefulSet, WorkloadKind::DaemonSet];

impl Rollouts {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        hmac_key: Zeroizing<Vec<u8>>,
        vaultsecrets: Store<VaultSecret>,
        statuses: Statuses,
    ) -> Self {
        Self {
            client,
            metrics,
            recorder,
            hmac_key,
            vaultsecrets,
            statuses,
            labelled: Mutex::default(),
            pending: Mutex::default(),
            warned_paused: Mutex::default(),
            vaultsecrets_listed: Arc::default(),
            started: Instant::now(),
            wake: Notify::new(),
        }
    }

    /// Watches labelled workloads (in `namespace`, or everywhere, of the namespaces `shard` owns) and runs the
    /// debounced checks. Only the shard that syncs a namespace's VaultSecrets rolls its workloads.
    pub fn run(self: Arc<Self>, namespace: Option<String>, shard: Shard) -> BoxFuture<'static, ()> {
        let mut watches = Vec::new();
        for kind in KINDS {
            let api: Api<DynamicObject> = match &namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, &resource(kind)),
                None => Api::all_with(self.client.clone(), &resource(kind)),
            };
            let writer = reflector::store::Writer::new(resource(kind));
            let reader = writer.as_reader();
            self.labelled.lock().expect("labelled lock").insert(kind, reader);
            let config = watcher::Config::default().labels(&format!("{RELOAD_LABEL}=true"));
            let this = self.clone();
            // A labelled workload that appears or changes is checked (its baseline recorded).
            let workloads = watcher(api, config).filter(move |event| futures::future::ready(shard.keeps(event)));
            let events =
                reflector::reflector(writer, workloads).default_backoff().applied_objects().for_each(move |object| {
                    if let Ok(object) = object {
                        let workload = Workload {
                            kind,
                            namespace: object.namespace().unwrap_or_default(),
                            name: object.name_any(),
                        };
                        this.schedule(workload, Duration::ZERO);
                    }
                    futures::future::ready(())
                });
            watches.push(Box::pin(events) as BoxFuture<'static, ()>);
        }
        Box::pin(async move {
            tokio::select! {
                _ = futures::future::join_all(watches) => {}
                () = self.work() => {}
            }
        })
    }

    /// A VaultSecret synced (first time or new content): check the workloads that use it after
    /// its debounce window.
    pub fn vault_secret_synced(&self, vs: &VaultSecret, secret_name: &str) {
        let namespace = vs.namespace().unwrap_or_default();
        let debounce = debounce_of(vs.spec.rollout.as_deref());
        let mut workloads: BTreeSet<Workload> = vs
            .spec
            .rollout
            .iter()
            .flat_map(|r| r.targets.iter())
            .map(|t| Workload { kind: t.kind, namespace: namespace.clone(), name: t.name.clone() })
            .collect();
        for (kind, store) in self.labelled.lock().expect("labelled lock").iter() {
            for object in store.state() {
                if object.namespace().as_deref() == Some(namespace.as_str())
                    && pod_spec(&object).is_some_and(|spec| uses(&spec, secret_name, &vs.name_any()))
                {
                    workloads.insert(Workload { kind: *kind, namespace: namespace.clone(), name: object.name_any() });
                }
            }
        }
        for workload in workloads {
            self.schedule(workload, debounce);
        }
    }

    /// Trailing debounce: each new request moves the check to `delay` from now.
    fn schedule(&self, workload: Workload, delay: Duration) {
        self.pending.lock().expect("pending lock").insert(workload, Instant::now() + delay);
        self.wake.notify_one();
    }

    async fn work(&self) {
        loop {
            let next = self.pending.lock().expect("pending lock").values().min().copied();
            let wait = next.map(|at| at.saturating_duration_since(Instant::now()));
            tokio::select! {
                () = self.wake.notified() => continue,
                () = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))) => {}
            }
            let now = Instant::now();
            let due: Vec<Workload> = {
                let mut pending = self.pending.lock().expect("pending lock");
                let due: Vec<_> = pending.iter().filter(|(_, at)| **at <= now).map(|(w, _)| w.clone()).collect();
                for workload in &due {
                    pending.remove(workload);
                }
                due
            };
            for workload in due {
                if let Err(e) = self.check(&workload).await {
                    warn!(?workload, error = %e, "rollout check failed; retrying");
                    self.metrics.rollout(kind_name(workload.kind), "error");
                    self.schedule(workload, Duration::from_secs(10));
                }
            }
        }
    }

    /// Compares the content the workload depends on with what it last saw, and rolls it (or records a baseline)
    /// as needed.
    async fn check(&self, workload: &Workload) -> Result<(), kube::Error> {
        // Judge only with every VaultSecret known: right after a start the watch of workloads may be quicker than the
        // VaultSecrets' (the controller reconciles only once it has listed them). Look again shortly.
        if !self.vaultsecrets_listed.load(std::sync::atomic::Ordering::Relaxed)
            && self.started.elapsed() < Duration::from_secs(30)
        {
            self.schedule(workload.clone(), Duration::from_secs(1));
            return Ok(());
        }
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &workload.namespace, &resource(workload.kind));
        let Some(object) = api.get_opt(&workload.name).await? else { return Ok(()) };
        let Some(spec) = pod_spec(&object) else { return Ok(()) };
        let kind = kind_name(workload.kind);
        let labelled = object.labels().get(RELOAD_LABEL).map(String::as_str) == Some("true");
        let desired = self.desired(workload, &spec, labelled);
        if desired.sources.is_empty() {
            return Ok(());
        }
        let record = Record { key: render::key_id(&self.hmac_key), sources: desired.sources.clone() };
        let observed = Record::parse(object.annotations().get(OBSERVED_ANNOTATION));
        if observed.as_ref() == Some(&record) {
            self.metrics.rollout(kind, "unchanged");
            return Ok(());
        }
        let changed: Vec<String> = match &observed {
            // A source whose digest changed under the same key: the content this workload runs with changed.
            Some(seen) if seen.key == record.key => record
                .sources
                .iter()
                .filter(|(source, digest)| seen.sources.get(*source).is_some_and(|old| old != *digest))
                .map(|(source, _)| source.clone())
                .collect(),
            // Nothing recorded yet: the pods are current unless the workload predates the last change.
            None => {
                let created = object.metadata.creation_timestamp.as_ref().map(|t| t.0);
                match (desired.changed_at, created) {
                    (Some(changed), Some(created)) if created < changed => record.sources.keys().cloned().collect(),
                    _ => Vec::new(),
                }
            }
            // Recorded under another key (lost or replaced), or unreadable: a new baseline, never a rollout.
            Some(_) => Vec::new(),
        };
        let mut body = json!({
            "apiVersion": "apps/v1", "kind": kind,
            "metadata": { "name": workload.name, "annotations": {
                OBSERVED_ANNOTATION: serde_json::to_string(&record).unwrap_or_default() } },
        });
        if !changed.is_empty() {
            if object.data["spec"]["paused"].as_bool() == Some(true) {
                let template = desired.template.clone();
                let already =
                    self.warned_paused.lock().expect("paused lock").insert(workload.clone(), template.clone());
                if already.as_deref() != Some(template.as_str()) {
                    let note = format!(
                        "Secret content changed ({}) but the {kind} is paused; it rolls when resumed",
                        changed.join(", ")
                    );
                    self.event(&object, workload, EventType::Warning, "RolloutSkipped", note).await;
                }
                self.metrics.rollout(kind, "paused");
                // Not watched unless labelled: look again later to roll once it is resumed.
                self.schedule(workload.clone(), Duration::from_secs(30));
                return Ok(());
            }
            body["spec"] =
                json!({ "template": { "metadata": { "annotations": { TEMPLATE_ANNOTATION: desired.template } } } });
        }
        api.patch(&workload.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
        self.metrics.apiserver_write("apply", &format!("{}s", kind.to_ascii_lowercase()));
        self.warned_paused.lock().expect("paused lock").remove(workload);
        if changed.is_empty() {
            self.metrics.rollout(kind, "baseline");
            return Ok(());
        }
        info!(kind, name = %workload.name, "rolled out after a secret change");
        self.metrics.rollout(kind, "rolled");
        if let Some(at) = desired.changed_at {
            let latency = Timestamp::now().duration_since(at).as_secs_f64().max(0.0);
            self.metrics.rollout_latency(latency);
        }
        let note = format!("content of {} changed", changed.join(", "));
        self.event(&object, workload, EventType::Normal, "RolledOut", note).await;
        for source in &changed {
            let name = source.trim_start_matches("VaultSecret/");
            let reference = k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("vaultsync.dev/v1alpha1".into()),
                kind: Some("VaultSecret".into()),
                name: Some(name.into()),
                namespace: Some(workload.namespace.clone()),
                ..Default::default()
            };
            let note = format!("rolled {kind} {} after the content changed", workload.name);
            self.publish(&reference, EventType::Normal, "RolloutTriggered", note).await;
        }
        Ok(())
    }

    /// The content the workload depends on: each source VaultSecret's digest, the template annotation they make
    /// together, and the latest content change among them. No sources when no synced VaultSecret feeds it.
    fn desired(&self, workload: &Workload, spec: &PodSpec, labelled: bool) -> Desired {
        let mut sources = BTreeMap::new();
        let mut changed_at = None;
        for vs in self.vaultsecrets.state() {
            if vs.namespace().as_deref() != Some(workload.namespace.as_str()) {
                continue;
            }
            let secret = vs.spec.target.name.clone().unwrap_or_else(|| vs.name_any());
            let explicit = vs
                .spec
                .rollout
                .iter()
                .flat_map(|r| r.targets.iter())
                .any(|t| t.kind == workload.kind && t.name == workload.name);
            let consumer = explicit || (labelled && uses(spec, &secret, &vs.name_any()));
            if !consumer {
                continue;
            }
            let ours = self.statuses.lock().expect("statuses lock").get(&crate::vaultsecret::uid(&vs)).cloned();
            let status = match (ours.as_ref(), vs.status.as_ref()) {
                (Some(ours), Some(seen)) if seen.synced_at > ours.synced_at => seen.clone(),
                (Some(ours), _) => ours.clone(),
                (None, Some(seen)) => seen.clone(),
                (None, None) => continue,
            };
            // Only digests under the current key: one under a lost key says nothing about the content.
            let Some(hmac) =
                status.data_hmac.filter(|h| render::digest_key_id(h) == Some(&render::key_id(&self.hmac_key)))
            else {
                continue;
            };
            let at = status.content_changed_at.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
            changed_at = changed_at.max(at);
            sources.insert(format!("VaultSecret/{}", vs.name_any()), hmac);
        }
        let content: SecretData =
            sources.iter().map(|(k, v)| (k.clone(), SecretBytes::new(v.as_bytes().to_vec()))).collect();
        Desired { template: render::data_hmac(&self.hmac_key, &content), changed_at, sources }
    }

    async fn event(&self, object: &DynamicObject, workload: &Workload, type_: EventType, reason: &str, note: String) {
        let mut reference = object.object_ref(&resource(workload.kind));
        reference.namespace = Some(workload.namespace.clone());
        self.publish(&reference, type_, reason, note).await;
    }

    async fn publish(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: "Rollout".into(), secondary: None };
        match self.recorder.publish(&event, reference).await {
            Ok(()) => self.metrics.apiserver_write("create", "events"),
            Err(e) => warn!(error = %e, "publishing a rollout event failed"),
        }
    }
}

/// The longest debounce accepted (also enforced at admission).
pub const MAX_DEBOUNCE: Duration = Duration::from_secs(600);

/// A rollout's debounce window, parsed and bounded (0 to 10 minutes).
pub fn debounce(rollout: &Rollout) -> Result<Duration, String> {
    let window = parse_duration(&rollout.debounce).map_err(|e| format!("rollout.debounce: {e}"))?;
    if window > MAX_DEBOUNCE {
        return Err(format!("rollout.debounce {:?} is longer than the accepted 10m", rollout.debounce));
    }
    Ok(window)
}

/// What a workload should run with.
struct Desired {
    /// Each source VaultSecret's digest.
    sources: BTreeMap<String, String>,
    /// The pod template annotation the sources make together.
    template: String,
    /// The latest content change among the sources.
    changed_at: Option<Timestamp>,
}

fn debounce_of(rollout: Option<&Rollout>) -> Duration {
    rollout.and_then(|r| debounce(r).ok()).unwrap_or(DEFAULT_DEBOUNCE)
}

fn pod_spec(object: &DynamicObject) -> Option<PodSpec> {
    serde_json::from_value(object.data["spec"]["template"]["spec"].clone()).ok()
}

/// The volume attribute by which a CSI volume names the VaultSecret whose objects it mounts.
pub const CSI_VAULTSECRET_ATTRIBUTE: &str = "vaultsync.dev/vaultsecret";

/// Whether a pod spec depends on a VaultSecret: through its Secret, or a CSI volume naming it.
pub fn uses(spec: &PodSpec, secret: &str, vault_secret: &str) -> bool {
    references_secret(spec, secret)
        || spec.volumes.iter().flatten().any(|v| {
            v.csi.as_ref().and_then(|c| c.volume_attributes.as_ref()).and_then(|a| a.get(CSI_VAULTSECRET_ATTRIBUTE))
                == Some(&vault_secret.to_string())
        })
}

/// Whether a pod spec uses the Secret: env `valueFrom`, `envFrom`, `secret` or `projected` volumes.
pub fn references_secret(spec: &PodSpec, secret: &str) -> bool {
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    let by_env =
        containers.clone().any(|c| {
            c.env.iter().flatten().any(|e| {
                e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()).is_some_and(|r| r.name == secret)
            }) || c.env_from.iter().flatten().any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret))
        });
    let by_volume = spec.volumes.iter().flatten().any(|v| {
        v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret)
            || v.projected.as_ref().is_some_and(|p| {
                p.sources.iter().flatten().any(|s| s.secret.as_ref().is_some_and(|s| s.name == secret))
            })
    });
    by_env || by_volume
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> PodSpec {
        serde_json::from_value(value).expect("pod spec")
    }

    #[test]
    fn finds_every_way_a_pod_uses_a_secret() {
        let env = spec(json!({ "containers": [{ "name": "a", "env": [{ "name": "P",
            "valueFrom": { "secretKeyRef": { "name": "db", "key": "password" } } }] }] }));
        let env_from = spec(json!({ "containers": [{ "name": "a", "envFrom": [{ "secretRef": { "name": "db" } }] }] }));
        let init = spec(json!({ "containers": [{ "name": "a" }],
            "initContainers": [{ "name": "i", "envFrom": [{ "secretRef": { "name": "db" } }] }] }));
        let volume = spec(
            json!({ "containers": [{ "name": "a" }], "volumes": [{ "name": "v", "secret": { "secretName": "db" } }] }),
        );
        let projected = spec(json!({ "containers": [{ "name": "a" }], "volumes": [{ "name": "v",
            "projected": { "sources": [{ "secret": { "name": "db" } }] } }] }));
        for (name, s) in
            [("env", &env), ("envFrom", &env_from), ("init", &init), ("volume", &volume), ("projected", &projected)]
        {
            assert!(references_secret(s, "db"), "{name}");
            assert!(!references_secret(s, "other"), "{name} must not match another Secret");
        }
        let csi = spec(json!({ "containers": [{ "name": "a" }], "volumes": [{ "name": "v", "csi": {
            "driver": "secrets-store.csi.k8s.io", "volumeAttributes": { "vaultsync.dev/vaultsecret": "db-files" } } }] }));
        assert!(uses(&csi, "unrelated-secret", "db-files"), "a CSI volume naming the VaultSecret");
        assert!(!uses(&csi, "unrelated-secret", "other"));
        assert!(uses(&env, "db", "x"), "Secret references count too");
    }
}
