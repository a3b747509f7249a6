//! One sync of a VaultSecret, carrying out the [`plan`] decision: check the Secret against the recorded digest (and
//! heal it from memory) when nothing is due, or resolve the store, check ownership, read, render, write only what
//! changed, and report.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt as _,
    runtime::{controller::Action, events::EventType},
};
use tracing::info;
use vaultsync_api::{
    VaultSecretStatus,
    secret::{CertificateStatus, SkippedObject, StoreKind},
};

use super::{
    Error, Sync, objects,
    plan::{self, Decision, Facts, Interval, ReadReason},
    status::NotSynced,
    target::Target,
};
use vaultsync_stores::Requester;

use crate::render::{self, Comparison};

impl Sync<'_> {
    pub(super) async fn sync(&self) -> Result<Action, Error> {
        // Judge the Secret by the watch cache once it has listed them all (after a restart: no GET per VaultSecret).
        let _ = self.ctx.secrets_ready.clone().wait_for(|ready| *ready).await;
        let status = self.latest_status();
        let interval = match plan::refresh_interval(&self.vs.spec.refresh_interval) {
            Ok(interval) => interval,
            Err(message) => return self.not_synced(NotSynced::invalid_spec(message)).await,
        };
        if let Some(rollout) = &self.vs.spec.rollout
            && let Err(message) = crate::rollout::debounce(rollout)
        {
            return self.not_synced(NotSynced::invalid_spec(message)).await;
        }
        if self.vs.spec.target.creation_policy == vaultsync_api::secret::CreationPolicy::None {
            return self.mount_only(&status).await;
        }
        let requested = self.ctx.requested.lock().expect("requested lock").remove(&self.map_key());
        let now = Timestamp::now();
        let phase = match interval {
            Interval::Every(every) => plan::slot_phase(&self.store_key(), &self.reads_key(), every),
            Interval::Once => Duration::ZERO,
        };
        let facts = Facts {
            interval,
            status: &status,
            last_read: self.last_read(interval, now),
            phase,
            generation: self.vs.metadata.generation,
            force_annotation: self.vs.annotations().get(super::FORCE_SYNC).map(String::as_str),
            requested,
            now,
        };
        let read = match plan::decide(&facts) {
            Decision::Check { expected, next } => match self.check(&status, &expected).await {
                Ok(true) => return Ok(self.refresh_after(next)),
                Ok(false) => plan::Read::because(ReadReason::Drift, interval),
                Err(failure) => return self.not_synced(failure).await,
            },
            Decision::Read(read) => read,
        };
        let force = plan::new_force_request(&facts).map(str::to_string).or(status.force_sync.clone());
        match self.read_and_write(&status, interval, phase, read, force).await {
            Ok(action) => Ok(action),
            Err(Failure::NotSynced(failure)) => self.not_synced(failure).await,
            Err(Failure::Kube(error)) => Err(error),
        }
    }

    /// `creationPolicy: None`: no Secret and no vault read (CSI volumes read with the pod's identity); the store,
    /// namespace and objects are checked so that the status says whether a mount can work.
    async fn mount_only(&self, status: &VaultSecretStatus) -> Result<Action, Error> {
        let store = match self.ctx.stores.resolve(&self.namespace, &self.vs.spec.store_ref, Requester::Operator).await {
            Ok(store) => store,
            Err(error) => return self.not_synced(NotSynced::from(error)).await,
        };
        if let Err(failure) = self.check_allowed(&store) {
            return self.not_synced(failure).await;
        }
        let message = format!(
            "no Secret is written (creationPolicy None); CSI volumes naming this VaultSecret read from {} with the \
             pod's own identity",
            store.key
        );
        let now = Timestamp::now();
        let new_status = VaultSecretStatus {
            conditions: vec![self.condition(status, "True", "MountOnly", message, now)],
            observed_generation: self.vs.metadata.generation,
            ..VaultSecretStatus::default()
        };
        if new_status != *status {
            self.patch_status(&new_status).await?;
        }
        self.ctx.metrics.sync("mount_only");
        Ok(Action::await_change())
    }

    /// Nothing is due: whether the Secret still holds what was written. `false` when it was changed or deleted: it
    /// is healed by a drift read, which the read cache serves from the last refresh's values (no vault call).
    async fn check(&self, status: &VaultSecretStatus, expected: &str) -> Result<bool, NotSynced> {
        let keys: BTreeSet<String> = status.versions.keys().cloned().collect();
        if self.secret_matches(expected, &keys, status.secret_resource_version.as_deref()).await? {
            self.ctx.metrics.sync("checked");
            return Ok(true);
        }
        info!(secret = %self.target, "the Secret was changed or deleted; restoring it");
        Ok(false)
    }

    async fn read_and_write(
        &self,
        status: &VaultSecretStatus,
        interval: Interval,
        phase: Duration,
        read: plan::Read,
        force: Option<String>,
    ) -> Result<Action, Failure> {
        let store = self
            .ctx
            .stores
            .resolve(&self.namespace, &self.vs.spec.store_ref, Requester::Operator)
            .await
            .map_err(NotSynced::from)?;
        self.check_allowed(&store)?;
        // Ownership before any vault call: a Secret this VaultSecret may not write costs the vault nothing.
        let target = self.target().await?;
        let fetched = self.read(&store, read).await?;
        let hmac = render::data_hmac(&self.ctx.hmac_key, &fetched.data);
        // A digest recorded under another HMAC key (lost or replaced) says nothing: not a change, and no rollout.
        let comparison = render::compare(status.data_hmac.as_deref(), &hmac);
        let content_changed = comparison == Comparison::Changed;
        let keys: BTreeSet<String> = fetched.data.keys().cloned().collect();
        // A spec change may change the Secret's type, labels or annotations without changing its data: write then too.
        // So after a failure, which may have been that spec's write: only a Synced status says the Secret is as the
        // spec wants it.
        let matches = !content_changed
            && read.reason != ReadReason::SpecChanged
            && plan::is_ready(status)
            && target != Target::Absent
            && self.secret_matches(&hmac, &keys, status.secret_resource_version.as_deref()).await?;
        let mut secret_resource_version = status.secret_resource_version.clone();
        // Never synced by any replica's record, yet a Secret this VaultSecret created stands there: compare before
        // writing it again.
        let found = if !matches && read.reason == ReadReason::First && matches!(target, Target::Created { .. }) {
            self.holds_desired(&fetched.data, &fetched.meta, &hmac).await?
        } else {
            None
        };
        if matches {
            self.ctx.metrics.sync("unchanged");
        } else if let Some(current) = found {
            info!(secret = %self.target, "the Secret already holds this content; not written again");
            self.ctx.metrics.sync("unchanged");
            secret_resource_version = current.resource_version();
        } else {
            let written = self.write(target, &fetched.data, &fetched.meta, &hmac).await?;
            secret_resource_version = written.resource_version();
            if read.reason == ReadReason::Drift && comparison == Comparison::Same {
                self.ctx.metrics.sync("healed");
                let note = format!("Secret {} was changed or deleted; restored", self.target);
                self.event(EventType::Normal, "Healed", note).await;
            } else {
                self.ctx.metrics.sync("synced");
                let note =
                    format!("Synced {} key(s) from {} into Secret {}", fetched.data.len(), store.key, self.target);
                self.event(EventType::Normal, "Synced", note).await;
            }
        }
        let now = Timestamp::now();
        self.ctx.schedule.lock().expect("schedule lock").insert(self.map_key(), now);
        let message = format!("{} key(s) synced from {}", fetched.data.len(), store.key);
        let mut new_status = VaultSecretStatus {
            conditions: vec![self.condition(status, "True", "Synced", message, now)],
            observed_generation: self.vs.metadata.generation,
            synced_at: status.synced_at.clone(),
            refresh_time: None,
            versions: fetched.versions.into(),
            data_hmac: Some(hmac),
            content_changed_at: if content_changed { Some(now.to_string()) } else { status.content_changed_at.clone() },
            force_sync: force,
            skipped_objects: fetched
                .skipped
                .iter()
                .take(100)
                .map(|(name, reason)| SkippedObject { name: name.clone(), reason: reason.to_string() })
                .collect(),
            certificates: objects::expiries(&fetched.certificates)
                .into_iter()
                .map(|(secret_key, not_after)| CertificateStatus { secret_key, not_after: not_after.to_string() })
                .collect(),
            secret_resource_version,
        };
        // Nothing to say when nothing changed: a refresh that finds the same content writes nothing.
        if new_status != *status {
            new_status.synced_at = Some(now.to_string());
            self.patch_status(&new_status).await.map_err(Failure::Kube)?;
        }
        self.warn_of_expiry(&fetched.certificates, now).await;
        // A change rolls the workloads that use it. A first sync, or a digest under a new HMAC key, records baselines
        // (the next change is then compared under the same key).
        if comparison != Comparison::Same {
            self.ctx.rollouts.vault_secret_synced(self.vs, &self.target);
        }
        let next = match interval {
            Interval::Every(every) => plan::next_due(now, every, phase)
                .map(|due| due.duration_since(now).unsigned_abs().max(Duration::from_secs(1))),
            Interval::Once => None,
        };
        Ok(self.refresh_after(next))
    }

    /// Leaves the next routine refresh (if any) with the routine queue, not the controller's: see `routine.rs`.
    fn refresh_after(&self, next: Option<Duration>) -> Action {
        if let Some(after) = next {
            // Name and namespace only: the reference waits in the routine queue for every VaultSecret.
            let object = kube::runtime::reflector::ObjectRef::new(&self.name).within(&self.namespace);
            self.ctx.routine.schedule(self.map_key(), object, after);
        }
        Action::await_change()
    }

    /// When this process last read the vault for this VaultSecret; for one it has not read yet (after a restart),
    /// as if just long enough ago that its next slot is the first one still to come (remembered).
    fn last_read(&self, interval: Interval, now: Timestamp) -> Timestamp {
        let mut schedule = self.ctx.schedule.lock().expect("schedule lock");
        *schedule.entry(self.map_key()).or_insert_with(|| match interval {
            Interval::Every(every) => plan::assumed_last_read(now, every),
            Interval::Once => now,
        })
    }

    /// What this VaultSecret reads (store and objects): its refresh slots come from this, so that VaultSecrets
    /// reading the same objects refresh together and share one read.
    fn store_key(&self) -> String {
        let store = &self.vs.spec.store_ref;
        match store.kind {
            StoreKind::VaultStore => format!("VaultStore/{}/{}", self.namespace, store.name),
            StoreKind::ClusterVaultStore => format!("ClusterVaultStore/{}", store.name),
        }
    }

    fn reads_key(&self) -> String {
        let spec = &self.vs.spec;
        let mut objects: Vec<String> = spec
            .data
            .iter()
            .map(|d| format!("{}@{}", d.remote_ref.name, d.remote_ref.version.as_deref().unwrap_or_default()))
            .chain(spec.data_from.iter().map(|d| format!("{d:?}")))
            .collect();
        objects.sort();
        format!("{}|{}", self.store_key(), objects.join("|"))
    }
}

impl Sync<'_> {
    /// A Warning Event for each certificate that expires within the warning window (or has expired). No peer warns
    /// before a synced certificate expires; this does at every read, which the Event recorder counts as one series.
    async fn warn_of_expiry(&self, certificates: &[(String, vaultsync_render::certificate::Validity)], now: Timestamp) {
        let window = self.ctx.expiry_warning.as_secs() as i64;
        for (key, validity) in certificates {
            let left = validity.not_after - now.as_second();
            if left > window {
                continue;
            }
            let at = Timestamp::from_second(validity.not_after).map(|t| t.to_string()).unwrap_or_default();
            let note = if left <= 0 {
                format!("the certificate in key {key} of Secret {} expired at {at}", self.target)
            } else {
                format!(
                    "the certificate in key {key} of Secret {} expires at {at}, in {} day(s)",
                    self.target,
                    (left + 86_399) / 86_400
                )
            };
            self.event(EventType::Warning, "CertificateExpiring", note).await;
        }
    }
}

/// How a read-and-write ends when it does not sync: a reason to report, or a failed status write.
enum Failure {
    NotSynced(NotSynced),
    Kube(Error),
}

impl From<NotSynced> for Failure {
    fn from(failure: NotSynced) -> Self {
        Failure::NotSynced(failure)
    }
}

impl From<vaultsync_stores::StoreError> for Failure {
    fn from(error: vaultsync_stores::StoreError) -> Self {
        Failure::NotSynced(error.into())
    }
}
