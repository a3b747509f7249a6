//! What deleting a VaultSecret does to its Secret, by `deletionPolicy`: `Delete` removes a Secret vaultsync created
//! (or, with `Merge`, only the keys vaultsync wrote); `Retain` keeps the data and drops vaultsync's owner reference and
//! labels, so neither the garbage collector nor vaultsync touches it again.

use kube::{
    Api, ResourceExt,
    api::{DeleteParams, Patch, PatchParams},
    runtime::controller::Action,
};
use serde_json::json;
use vaultsync_api::{
    VaultSecret,
    secret::{CreationPolicy, DeletionPolicy},
};

use super::{Error, FIELD_MANAGER, FINALIZER, MANAGED_BY, OWNER_LABEL, Sync, target::CREATED_LABEL};

impl Sync<'_> {
    pub(super) async fn cleanup(&self) -> Result<Action, Error> {
        self.ctx.written.lock().expect("written lock").remove(&self.map_key());
        self.ctx.statuses.lock().expect("statuses lock").remove(&self.map_key());
        self.ctx.find_memory.forget(self.map_key());
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let failed = |source| Error::Kube { object: format!("{}/{}", self.namespace, self.target), source };
        let Some(secret) = api.get_opt(&self.target).await.map_err(failed)? else {
            return Ok(Action::await_change());
        };
        if secret.labels().get(OWNER_LABEL) != Some(&self.name) {
            return Ok(Action::await_change()); // not ours: nothing to do
        }
        let created = secret.labels().get(CREATED_LABEL).map(String::as_str) == Some("true");
        match (self.vs.spec.target.creation_policy, self.vs.spec.target.deletion_policy) {
            (CreationPolicy::Merge, DeletionPolicy::Delete) => {
                // Give up our fields: server-side apply removes the keys only we set.
                let body = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": self.target } });
                api.patch(&self.target, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
                    .await
                    .map_err(failed)?;
                self.ctx.metrics.apiserver_write("apply", "secrets");
            }
            (_, DeletionPolicy::Delete) if created => {
                api.delete(&self.target, &DeleteParams::default()).await.map_err(failed)?;
                self.ctx.metrics.apiserver_write("delete", "secrets");
            }
            (_, DeletionPolicy::Delete | DeletionPolicy::Retain) => {
                // Keep the data; drop our owner reference (so garbage collection keeps it too) and our labels (so it
                // is no longer managed).
                let uid = self.vs.uid().unwrap_or_default();
                let owners: Vec<_> = secret.owner_references().iter().filter(|o| o.uid != uid).cloned().collect();
                let body = json!({ "metadata": {
                    "ownerReferences": owners,
                    "labels": { OWNER_LABEL: null, MANAGED_BY.0: null, CREATED_LABEL: null },
                }});
                api.patch(&self.target, &PatchParams::default(), &Patch::Merge(&body)).await.map_err(failed)?;
                self.ctx.metrics.apiserver_write("patch", "secrets");
            }
        }
        Ok(Action::await_change())
    }
}

impl Sync<'_> {
    /// Adds (`true`) or removes (`false`) the cleanup finalizer, guarded by a JSON patch test so that a concurrent
    /// change of the finalizers fails rather than being overwritten.
    pub(super) async fn finalizer(&self, add: bool) -> Result<(), Error> {
        let finalizers = self.vs.finalizers();
        let ops = if add {
            match finalizers.is_empty() {
                true => json!([
                    { "op": "test", "path": "/metadata/finalizers", "value": null },
                    { "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] },
                ]),
                false => json!([
                    { "op": "test", "path": "/metadata/finalizers", "value": finalizers },
                    { "op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER },
                ]),
            }
        } else {
            let Some(index) = finalizers.iter().position(|f| f == FINALIZER) else { return Ok(()) };
            json!([
                { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER },
                { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
            ])
        };
        let patch: json_patch::Patch = serde_json::from_value(ops).expect("a valid JSON patch");
        let api: Api<VaultSecret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        api.patch(&self.name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
            .map_err(|source| Error::Finalizer { object: self.key(), source })?;
        self.ctx.metrics.apiserver_write("patch", "vaultsecrets");
        Ok(())
    }

    /// Takes this VaultSecret's owner reference off its Secret (kept labels and data), for a `Retain` Secret written
    /// by an earlier version that set one.
    pub(super) async fn drop_owner_reference(&self) -> Result<(), Error> {
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let failed = |source| Error::Kube { object: format!("{}/{}", self.namespace, self.target), source };
        let Some(secret) = api.get_metadata_opt(&self.target).await.map_err(failed)? else { return Ok(()) };
        let uid = self.vs.uid().unwrap_or_default();
        if !secret.owner_references().iter().any(|o| o.uid == uid) {
            return Ok(());
        }
        let owners: Vec<_> = secret.owner_references().iter().filter(|o| o.uid != uid).cloned().collect();
        let body = json!({ "metadata": { "ownerReferences": owners } });
        api.patch(&self.target, &PatchParams::default(), &Patch::Merge(&body)).await.map_err(failed)?;
        self.ctx.metrics.apiserver_write("patch", "secrets");
        Ok(())
    }
}
