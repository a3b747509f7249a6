//! Publishing Kubernetes Events (events.k8s.io/v1) with series, remembering only what a series needs.
//!
//! kube-runtime's `Recorder` keeps a copy of every Event it published for six minutes, to turn a repeat into a
//! series update. One Event per VaultSecret sync made that about 2 KiB per VaultSecret: at 10,000 of them the
//! largest single holder of memory, for Events that are almost never repeated. The same behaviour is kept here (a
//! repeat of type, action, reason, reporter, regarding and related object within six minutes patches the first
//! Event's series instead of creating another), remembering per Event only a 64-bit key, its name, namespace, count
//! and when it was last seen.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Mutex,
};

use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as K8sEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};

/// How long a published Event can still be continued as a series (as kube-runtime and client-go do).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);
/// Series older than the window are forgotten at most this often (a scan of the whole map).
const PRUNE_EVERY: SignedDuration = SignedDuration::from_secs(30);

/// A published Event, as much as continuing its series needs. Its name and namespace are not kept: they follow from
/// the object the Event is about (part of the key) and `created`, the nanosecond in its name (memory: one of these
/// per VaultSecret for six minutes after each sync).
struct Series {
    created: i128,
    count: i32,
    last: Timestamp,
}

#[derive(Default)]
struct Memory {
    series: HashMap<u64, Series>,
    pruned: Option<Timestamp>,
}

pub struct Recorder {
    client: Client,
    reporter: Reporter,
    memory: Mutex<Memory>,
}

impl Recorder {
    pub fn new(client: Client, reporter: Reporter) -> Self {
        Self { client, reporter, memory: Mutex::default() }
    }

    /// Publishes `event` about `regarding` (in its namespace; cluster-scoped objects' Events go to `default`).
    pub async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = self.key(event, regarding);
        let repeat = {
            let mut memory = self.memory.lock().expect("events lock");
            memory.prune(now);
            memory.series.get_mut(&key).map(|series| {
                series.count += 1;
                series.last = now;
                (series.created, series.count)
            })
        };
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let name_at =
            |nanos: i128| format!("{}.{nanos:x}", regarding.name.as_deref().unwrap_or(&self.reporter.controller));
        if let Some((created, count)) = repeat {
            let name = name_at(created);
            let patch = serde_json::json!({ "series": { "count": count, "lastObservedTime": MicroTime(now) } });
            Api::<K8sEvent>::namespaced(self.client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            return Ok(());
        }
        let name = name_at(now.as_nanosecond());
        let created = K8sEvent {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(namespace.clone()), ..Default::default() },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            reporting_controller: Some(self.reporter.controller.clone()),
            reporting_instance: Some(
                self.reporter.instance.clone().unwrap_or_else(|| self.reporter.controller.clone()),
            ),
            ..Default::default()
        };
        Api::<K8sEvent>::namespaced(self.client.clone(), &namespace).create(&PostParams::default(), &created).await?;
        let series = Series { created: now.as_nanosecond(), count: 1, last: now };
        self.memory.lock().expect("events lock").series.insert(key, series);
        Ok(())
    }

    /// What makes two Events one series: everything but the note and the time.
    fn key(&self, event: &Event, regarding: &ObjectReference) -> u64 {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (event.type_ == EventType::Warning).hash(&mut hasher);
        event.action.hash(&mut hasher);
        event.reason.hash(&mut hasher);
        self.reporter.controller.hash(&mut hasher);
        self.reporter.instance.hash(&mut hasher);
        for object in std::iter::once(regarding).chain(event.secondary.as_ref()) {
            (&object.api_version, &object.kind, &object.namespace, &object.name, &object.uid).hash(&mut hasher);
            object.field_path.hash(&mut hasher);
        }
        hasher.finish()
    }

    /// How many series are remembered (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.memory.lock().expect("events lock").series.len()
    }
}

impl Memory {
    fn prune(&mut self, now: Timestamp) {
        if self.pruned.is_none_or(|at| now.duration_since(at) >= PRUNE_EVERY) {
            self.series.retain(|_, series| series.last + SERIES_WINDOW > now);
            self.pruned = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("vaultsync.dev/v1alpha1".into()),
            kind: Some("VaultSecret".into()),
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            ..Default::default()
        }
    }

    fn event(reason: &str, note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: reason.into(),
            note: Some(note.into()),
            action: "Sync".into(),
            secondary: None,
        }
    }

    fn recorder() -> Recorder {
        // Never contacted: the tests look at keys and memory only.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("a URL"));
        let client = Client::try_from(config).expect("a client");
        Recorder::new(client, Reporter { controller: "vaultsync-operator".into(), instance: Some("pod-0".into()) })
    }

    /// The note does not split a series (as in kube-runtime); the reason, the object and the reporter do.
    #[tokio::test]
    async fn series_are_keyed_by_everything_but_the_note() {
        let recorder = recorder();
        let synced = recorder.key(&event("Synced", "1 key"), &reference("a"));
        assert_eq!(synced, recorder.key(&event("Synced", "2 keys"), &reference("a")));
        assert_ne!(synced, recorder.key(&event("Updated", "1 key"), &reference("a")));
        assert_ne!(synced, recorder.key(&event("Synced", "1 key"), &reference("b")));
        let mut warning = event("Synced", "1 key");
        warning.type_ = EventType::Warning;
        assert_ne!(synced, recorder.key(&warning, &reference("a")));
        let other = Recorder::new(recorder.client.clone(), Reporter { controller: "x".into(), instance: None });
        assert_ne!(synced, other.key(&event("Synced", "1 key"), &reference("a")));
    }

    /// Series older than six minutes are forgotten, at most every 30 s.
    #[tokio::test]
    async fn old_series_are_forgotten() {
        let recorder = recorder();
        let now = Timestamp::now();
        {
            let mut memory = recorder.memory.lock().expect("events lock");
            for (i, age) in [0i64, 5, 7, 30].into_iter().enumerate() {
                let series = Series { created: i as i128, count: 1, last: now - SignedDuration::from_mins(age) };
                memory.series.insert(i as u64, series);
            }
            memory.prune(now);
        }
        assert_eq!(recorder.remembered(), 2, "the two within six minutes stay");
        recorder.memory.lock().expect("events lock").prune(now + SignedDuration::from_secs(29));
        assert_eq!(recorder.remembered(), 2, "not pruned again within 30 s");
        recorder.memory.lock().expect("events lock").prune(now + SignedDuration::from_mins(7));
        assert_eq!(recorder.remembered(), 0);
    }
}
