//! Routine refreshes, kept out of the controller's queue until there is room for them.
//!
//! kube-runtime's queue serves requests in the order they came due. A store's round brings thousands of VaultSecrets
//! due within seconds; requeued in the controller, they would all stand in front of a VaultSecret created a moment
//! later, which would wait for the whole round. So a reconcile whose only next step is its next refresh leaves the
//! due time here (and returns "await change"), and [`Routine::run`] passes due VaultSecrets to the controller only
//! while fewer than `limit` passed ones have not started yet. New, changed, forced and retried work goes straight
//! into the queue and finds at most `limit` routine requests ahead of it.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::Mutex,
    time::Duration,
};

use kube::runtime::reflector::{ObjectRef, Store};
use tokio::{
    sync::{Notify, mpsc::UnboundedSender},
    time::Instant,
};
use vaultsync_api::VaultSecret;

use super::Uid;

/// A released request not started within this long is forgotten (its VaultSecret went away before it ran).
const RELEASED_FOR: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Queue {
    /// Due times, earliest first; an entry whose time no longer matches `due` is stale and skipped.
    heap: BinaryHeap<Reverse<(Instant, Uid)>>,
    /// Per UID: when it is due, and which VaultSecret.
    due: HashMap<Uid, (Instant, Name)>,
    /// Passed to the controller and not started yet (UID, when passed).
    released: HashMap<Uid, Instant>,
}

/// A VaultSecret's namespace and name as `namespace/name` in one allocation: the queue holds one per VaultSecret, and
/// an `ObjectRef` (four optional strings, 96 bytes inline, two allocations) took about 1.2 MiB more at 10,000.
struct Name(Box<str>);

impl Name {
    fn of(object: &ObjectRef<VaultSecret>) -> Self {
        Self(format!("{}/{}", object.namespace.as_deref().unwrap_or_default(), object.name).into())
    }

    /// The reference again (a namespace has no `/`, so the first one ends it).
    fn object(&self) -> ObjectRef<VaultSecret> {
        match self.0.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() => ObjectRef::new(name).within(namespace),
            _ => ObjectRef::new(self.0.trim_start_matches('/')),
        }
    }
}

#[derive(Default)]
pub struct Routine {
    queue: Mutex<Queue>,
    changed: Notify,
}

impl Routine {
    /// Refreshes the VaultSecret (by `uid`) after `after`.
    pub fn schedule(&self, uid: Uid, object: ObjectRef<VaultSecret>, after: Duration) {
        let at = Instant::now() + after;
        let mut queue = self.queue.lock().expect("routine lock");
        queue.heap.push(Reverse((at, uid)));
        queue.due.insert(uid, (at, Name::of(&object)));
        drop(queue);
        self.changed.notify_one();
    }

    /// A reconcile of the VaultSecret started: whatever was due for it is its business now (it schedules again when
    /// it ends with a next refresh), and a released request no longer waits.
    pub fn started(&self, uid: Uid) {
        let mut queue = self.queue.lock().expect("routine lock");
        queue.due.remove(&uid);
        let was_released = queue.released.remove(&uid).is_some();
        drop(queue);
        if was_released {
            self.changed.notify_one();
        }
    }

    /// Requests waiting for their time.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.queue.lock().expect("routine lock").due.len()
    }

    /// Passes due VaultSecrets (still in `store`) to the controller through `send`, keeping fewer than `limit` passed
    /// and not started. Runs until the controller's receiver is gone.
    pub async fn run(&self, store: Store<VaultSecret>, limit: usize, send: UnboundedSender<ObjectRef<VaultSecret>>) {
        loop {
            let next = {
                let mut queue = self.queue.lock().expect("routine lock");
                let now = Instant::now();
                queue.released.retain(|_, at| now.duration_since(*at) < RELEASED_FOR);
                queue.release_due(&store, limit, now, &send)
            };
            if send.is_closed() {
                return;
            }
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

impl Queue {
    /// Releases what is due while there is room; returns when to look again (`None`: when something changes).
    fn release_due(
        &mut self,
        store: &Store<VaultSecret>,
        limit: usize,
        now: Instant,
        send: &UnboundedSender<ObjectRef<VaultSecret>>,
    ) -> Option<Instant> {
        while let Some(Reverse((at, uid))) = self.heap.peek().cloned() {
            if self.due.get(&uid).is_none_or(|(due, _)| *due != at) {
                self.heap.pop();
                continue;
            }
            if at > now {
                return Some(at);
            }
            if self.released.len() >= limit {
                // Room comes with the next start; look again soon in any case (a start may have been missed).
                return Some(now + Duration::from_secs(1));
            }
            self.heap.pop();
            let Some((_, name)) = self.due.remove(&uid) else { continue };
            let object = name.object();
            let live = store.get(&object).is_some_and(|vs| super::uid(&vs) == uid);
            if live && send.send(object).is_ok() {
                self.released.insert(uid, now);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::runtime::{reflector, watcher};

    use super::*;

    fn vault_secret(name: &str) -> VaultSecret {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
            "metadata": { "name": name, "namespace": "ns", "uid": format!("uid-{name}") },
            "spec": { "storeRef": { "name": "kv" }, "data": [{ "secretKey": "k", "remoteRef": { "name": "o" } }] },
        }))
        .expect("a VaultSecret")
    }

    /// Takes what was passed on, starting each (as the controller would).
    fn start_passed(
        routine: &Routine,
        received: &mut tokio::sync::mpsc::UnboundedReceiver<ObjectRef<VaultSecret>>,
    ) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(object) = received.try_recv() {
            routine.started(Uid::parse(&format!("uid-{}", object.name)));
            names.push(object.name);
        }
        names
    }

    /// A round of 1,000 due VaultSecrets is passed on no more than `limit` at a time, in due order, and only as
    /// the controller starts them; one deleted meanwhile is not passed at all.
    #[tokio::test(start_paused = true)]
    async fn a_round_is_released_a_few_at_a_time() {
        let (reader, mut writer) = reflector::store::<VaultSecret>();
        let objects: Vec<VaultSecret> = (0..1000).map(|i| vault_secret(&format!("vs{i:04}"))).collect();
        for vs in &objects {
            writer.apply_watcher_event(&watcher::Event::Apply(vs.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::Delete(objects[999].clone()));
        let routine = Arc::new(Routine::default());
        for (i, vs) in (0u64..).zip(&objects) {
            routine.schedule(
                super::super::uid(vs),
                ObjectRef::from_obj(vs),
                Duration::from_secs(10) + Duration::from_millis(i),
            );
        }
        let (send, mut received) = tokio::sync::mpsc::unbounded_channel();
        let runner = tokio::spawn({
            let routine = routine.clone();
            async move { routine.run(reader, 8, send).await }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(received.try_recv().is_err(), "nothing is passed on before it is due");
        tokio::time::sleep(Duration::from_secs(10)).await;
        let first = start_passed(&routine, &mut received);
        assert_eq!(first.len(), 8, "only `limit` are passed on before any starts");
        assert_eq!(first[0], "vs0000", "the earliest due first");
        let mut passed = first.len();
        loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let names = start_passed(&routine, &mut received);
            if names.is_empty() {
                break;
            }
            assert!(names.len() <= 8, "{} passed on at once", names.len());
            assert!(!names.iter().any(|n| n == "vs0999"), "a deleted VaultSecret was passed on");
            passed += names.len();
        }
        assert_eq!(passed, 999);
        assert_eq!(routine.waiting(), 0);
        runner.abort();
    }
}
