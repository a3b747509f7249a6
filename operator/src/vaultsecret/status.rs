//! What a VaultSecret reports: its `Ready` condition and status (written with server-side apply, only when it
//! changes), Events, and why a sync did not happen. Messages name objects and causes, never values.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Resource as _,
    api::{Patch, PatchParams},
    runtime::{controller::Action, events::EventType},
};
use serde_json::json;
use tracing::warn;
use vaultsync_api::{Condition, VaultSecret, VaultSecretStatus, condition::READY};

use super::{Error, FIELD_MANAGER, Sync, jittered, timestamp};
use vaultsync_stores::StoreError;

use crate::render::RenderError;

/// Why a sync did not happen; reported in the `Ready` condition and an Event. The Secret is left exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NotSynced {
    pub reason: &'static str,
    pub message: String,
    /// When to try again (no later than the refresh interval unless `vault_asked`).
    pub retry: Duration,
    /// The vault asked for the wait (`Retry-After`).
    pub vault_asked: bool,
}

impl NotSynced {
    pub fn new(reason: &'static str, message: impl Into<String>, retry: Duration) -> Self {
        Self { reason, message: message.into(), retry, vault_asked: false }
    }

    /// The spec cannot work as written; retried slowly (a spec change wakes the VaultSecret anyway).
    pub fn invalid_spec(message: impl Into<String>) -> Self {
        Self::new("InvalidSpec", message, Duration::from_secs(300))
    }

    /// The apiserver refused or failed a request: its code and message (which never carry Secret data) are shown.
    pub fn apiserver(reason: &'static str, doing: &str, error: &kube::Error) -> Self {
        let detail = match error {
            kube::Error::Api(status) => {
                format!("the apiserver answered {} {}: {}", status.code, status.reason, status.message)
            }
            other => other.to_string(),
        };
        Self::new(reason, format!("{doing}: {detail}"), Duration::from_secs(30))
    }
}

impl From<StoreError> for NotSynced {
    fn from(e: StoreError) -> Self {
        let retry = match e {
            StoreError::NamespaceNotAllowed { .. } | StoreError::ObjectNotAllowed { .. } => Duration::from_secs(300),
            _ => Duration::from_secs(30),
        };
        NotSynced::new(e.reason(), e.to_string(), retry)
    }
}

impl From<vaultsync_backend::Error> for NotSynced {
    fn from(e: vaultsync_backend::Error) -> Self {
        let vault_asked = matches!(e, vaultsync_backend::Error::Throttled { retry_after: Some(_) });
        let retry = match &e {
            vaultsync_backend::Error::Throttled { retry_after } => retry_after.unwrap_or(Duration::from_secs(30)),
            vaultsync_backend::Error::NotFound { .. }
            | vaultsync_backend::Error::Forbidden { .. }
            | vaultsync_backend::Error::Disabled { .. } => Duration::from_secs(120),
            _ => Duration::from_secs(30),
        };
        let message = match &e {
            vaultsync_backend::Error::Disabled { .. } => format!("{e}; the Secret keeps its last values"),
            _ => e.to_string(),
        };
        NotSynced { vault_asked, ..NotSynced::new(e.reason(), message, retry) }
    }
}

impl From<vaultsync_stores::data_from::Problem> for NotSynced {
    fn from(problem: vaultsync_stores::data_from::Problem) -> Self {
        let retry = problem.retry();
        NotSynced::new(problem.reason, problem.message, retry)
    }
}

impl From<RenderError> for NotSynced {
    fn from(e: RenderError) -> Self {
        NotSynced::new(e.reason(), e.to_string(), Duration::from_secs(120))
    }
}

// === impl Sync: status ===

impl Sync<'_> {
    /// The `Ready` condition, keeping the last transition time when the status does not change.
    pub(super) fn condition(
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
            observed_generation: self.vs.metadata.generation,
        }
    }

    /// Reports why the VaultSecret could not sync (condition and a Warning Event, once per distinct failure); the
    /// Secret is not touched. Requeues after the failure's backoff.
    pub(super) async fn not_synced(&self, failure: NotSynced) -> Result<Action, Error> {
        let old = self.latest_status();
        let condition = self.condition(&old, "False", failure.reason, failure.message.clone(), Timestamp::now());
        self.ctx.metrics.sync(&format!("error_{}", failure.reason));
        warn!(vaultsecret = %self.key(), reason = failure.reason, message = %failure.message, "not synced");
        let unchanged = old.conditions.iter().any(|c| {
            c.type_ == READY && c.status == "False" && c.reason == condition.reason && c.message == condition.message
        }) && old.observed_generation == self.vs.metadata.generation;
        if !unchanged {
            self.event(EventType::Warning, failure.reason, failure.message).await;
            let status = VaultSecretStatus {
                conditions: vec![condition],
                observed_generation: self.vs.metadata.generation,
                ..old
            };
            self.patch_status(&status).await?;
        }
        let interval =
            super::plan::refresh_interval(&self.vs.spec.refresh_interval).unwrap_or(super::plan::Interval::Once);
        Ok(Action::requeue(jittered(super::plan::retry_after_failure(failure.retry, interval, failure.vault_asked))))
    }

    pub(super) async fn patch_status(&self, status: &VaultSecretStatus) -> Result<(), Error> {
        let api: Api<VaultSecret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret", "status": status });
        // Remembered before the write, so that the watch event it causes (which may come before this call returns)
        // finds it and forgets it again; put back as it was if the write fails.
        let before = self.ctx.statuses.lock().expect("statuses lock").insert(self.map_key(), status.clone());
        let written =
            api.patch_status(&self.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await;
        if let Err(source) = written {
            let mut statuses = self.ctx.statuses.lock().expect("statuses lock");
            match before {
                Some(before) => statuses.insert(self.map_key(), before),
                None => statuses.remove(&self.map_key()),
            };
            return Err(Error::Kube { object: self.key(), source });
        }
        self.ctx.metrics.apiserver_write("apply", "vaultsecrets/status");
        Ok(())
    }

    /// The latest status: the one this process last wrote, unless the watch shows a later one (another writer, or
    /// a newer generation acted on). The object a reconcile gets may not show our last write yet, and acting on the
    /// older status would read the vault twice. The watch cache is asked too: a reconcile handed its object before
    /// it waited for its turn may start after the watch brought our write (and our copy was dropped).
    pub(super) fn latest_status(&self) -> VaultSecretStatus {
        let cached = self.ctx.vaultsecrets.get(&kube::runtime::reflector::ObjectRef::from_obj(self.vs));
        let cached = cached.filter(|current| current.metadata.uid == self.vs.metadata.uid);
        let seen = match cached.as_ref().and_then(|current| current.status.as_ref()) {
            Some(status) => status.clone(),
            None => self.vs.status.clone().unwrap_or_default(),
        };
        match self.ctx.statuses.lock().expect("statuses lock").get(&self.map_key()) {
            Some(ours)
                if timestamp(ours.synced_at.as_deref()) >= timestamp(seen.synced_at.as_deref())
                    && ours.observed_generation >= seen.observed_generation =>
            {
                ours.clone()
            }
            _ => seen,
        }
    }

    /// Publishes an Event on the VaultSecret; a failure to publish is logged, never fatal.
    pub(super) async fn event(&self, type_: EventType, reason: &str, note: String) {
        let event = kube::runtime::events::Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Sync".into(),
            secondary: None,
        };
        match self.ctx.recorder.publish(&event, &self.vs.object_ref(&())).await {
            Ok(()) => self.ctx.metrics.apiserver_write("create", "events"),
            Err(e) => warn!(error = %e, "publishing an event failed"),
        }
    }
}
