//! The target Secret: who owns what stands at its name, and writing it without ever losing a user's data.
//!
//! - A new Secret is created with a plain create, which fails if anything stands there: vaultsync never adopts a
//!   Secret someone made a moment earlier. Ownership is checked before the vault is read.
//! - A Secret vaultsync created is then written with server-side apply, so keys, labels and annotations it stops
//!   writing go away while other managers' fields stay. (A create records its fields under an `Update` entry, which
//!   apply would treat as another owner; that entry is handed to our apply identity before the first apply.)
//! - `creationPolicy: Merge` applies only vaultsync's keys into someone's Secret, and never deletes it.
//! - Only a Secret vaultsync created is ever deleted, to replace an immutable one whose content changed: the delete is
//!   guarded by the uid and resourceVersion just read, and if the new Secret cannot be created the old content is put
//!   back at once.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::{ByteString, api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, Resource as _, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
};
use tracing::{info, warn};
use vaultsync_api::secret::{CreationPolicy, DeletionPolicy};
use vaultsync_backend::SecretBytes;

use super::{
    FIELD_MANAGER, MANAGED_BY, OWNER_LABEL, Sync, Written,
    managed::{Managed, update_entry},
    status::NotSynced,
    templating::SecretMeta,
};
use crate::render::{self, SecretData};

/// On a Secret vaultsync created (rather than merged into): only such a Secret is ever deleted or replaced.
pub const CREATED_LABEL: &str = "vaultsync.dev/created";

/// What stands at the target's name, as far as this VaultSecret is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Target {
    /// Nothing: a new Secret is created.
    Absent,
    /// A Secret this VaultSecret created. `converted` tells whether its create-time fields already belong to our
    /// apply identity.
    Created { converted: bool },
    /// Someone else's Secret that `creationPolicy: Merge` merges vaultsync's keys into.
    MergeInto,
}

fn conflict(message: String) -> NotSynced {
    NotSynced::new("OwnershipConflict", message, Duration::from_secs(120))
}

impl Sync<'_> {
    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.ctx.client.clone(), &self.namespace)
    }

    /// Decides, from the Secret's metadata (our watch cache holds the Secrets vaultsync manages; any other is looked
    /// up), whether this VaultSecret may write it and how. Refusals name the reason.
    pub(super) async fn target(&self) -> Result<Target, NotSynced> {
        let found = match self.ctx.secrets.get(&self.namespace, &self.target) {
            Some(managed) => Some(managed),
            None => self
                .secrets()
                .get_metadata_opt(&self.target)
                .await
                .map_err(|e| NotSynced::apiserver("SecretReadFailed", &format!("reading Secret {}", self.target), &e))?
                .map(|m| Managed::of(&m.metadata)),
        };
        let merge = self.vs.spec.target.creation_policy == CreationPolicy::Merge;
        let target = &self.target;
        let Some(found) = found else {
            return if merge {
                Err(NotSynced::new(
                    "TargetNotFound",
                    format!("Secret {target} does not exist; creationPolicy Merge merges into an existing Secret"),
                    Duration::from_secs(60),
                ))
            } else {
                Ok(Target::Absent)
            };
        };
        let uid = self.vs.uid().unwrap_or_default();
        let created_by_us = found.created || found.controller.as_deref() == Some(uid.as_str());
        match found.owner.as_deref() {
            Some(owner) if owner != self.name => {
                Err(conflict(format!("Secret {target} is managed by VaultSecret {owner}")))
            }
            _ if merge => Ok(Target::MergeInto),
            Some(_) if created_by_us => Ok(Target::Created { converted: !found.create_entry }),
            Some(_) => Err(conflict(format!(
                "Secret {target} was not created by vaultsync (keys were merged into it); keep creationPolicy Merge for it"
            ))),
            None => Err(conflict(format!(
                "Secret {target} exists and is not managed by vaultsync; use creationPolicy Merge to merge into it"
            ))),
        }
    }

    /// The Secret vaultsync wants at the target, for a Secret it creates or owns; what templates made (`meta`) goes
    /// over the target's own type, labels and annotations.
    fn desired(&self, data: &SecretData, meta: &SecretMeta) -> Secret {
        let spec = &self.vs.spec.target;
        let mut labels = spec.labels.clone();
        labels.extend(meta.labels.clone());
        let mut annotations = spec.annotations.clone();
        annotations.extend(meta.annotations.clone());
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        labels.insert(OWNER_LABEL.into(), self.name.clone());
        labels.insert(CREATED_LABEL.into(), "true".into());
        // An owner reference only where the Secret should go with its VaultSecret: the garbage collector then deletes
        // it, and no finalizer is needed.
        let owner_references = (spec.creation_policy == CreationPolicy::Owner
            && spec.deletion_policy == DeletionPolicy::Delete)
            .then(|| self.vs.controller_owner_ref(&()))
            .flatten()
            .map(|owner| vec![OwnerReference { block_owner_deletion: None, ..owner }]);
        Secret {
            metadata: ObjectMeta {
                name: Some(self.target.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references,
                ..Default::default()
            },
            type_: Some(meta.type_.clone().or_else(|| spec.type_.clone()).unwrap_or_else(|| "Opaque".into())),
            data: Some(bytes(data)),
            immutable: spec.immutable.then_some(true),
            ..Default::default()
        }
    }

    /// Whether the Secret this VaultSecret created already holds exactly what would be written now: data, type,
    /// immutability, controller owner, and each label and annotation vaultsync sets. So it is when another replica
    /// wrote it and stopped before recording the status (a shard taken over), or a status write was lost: one read
    /// instead of a second write of the same content. The Secret found is remembered as if written.
    pub(super) async fn holds_desired(
        &self,
        data: &SecretData,
        meta: &SecretMeta,
        hmac: &str,
    ) -> Result<Option<Secret>, NotSynced> {
        let current =
            self.secrets().get_opt(&self.target).await.map_err(|e| {
                NotSynced::apiserver("SecretReadFailed", &format!("reading Secret {}", self.target), &e)
            })?;
        let Some(current) = current else { return Ok(None) };
        let desired = self.desired(data, meta);
        let holds = |have: &std::collections::BTreeMap<String, String>,
                     want: &Option<std::collections::BTreeMap<String, String>>| {
            want.iter().flatten().all(|(key, value)| have.get(key) == Some(value))
        };
        let controller = |secret: &Secret| {
            let owners = secret.metadata.owner_references.iter().flatten();
            owners.filter(|o| o.controller == Some(true)).map(|o| o.uid.clone()).collect::<Vec<_>>()
        };
        let same = current.data == desired.data
            && current.type_ == desired.type_
            && current.immutable.unwrap_or(false) == desired.immutable.unwrap_or(false)
            && holds(current.labels(), &desired.metadata.labels)
            && holds(current.annotations(), &desired.metadata.annotations)
            && controller(&current) == controller(&desired);
        if !same {
            return Ok(None);
        }
        self.remember(&current, meta, hmac);
        Ok(Some(current))
    }

    /// Writes `data` to the target as `target` allows, remembers what was written, and returns the Secret as
    /// written.
    pub(super) async fn write(
        &self,
        target: Target,
        data: &SecretData,
        meta: &SecretMeta,
        hmac: &str,
    ) -> Result<Secret, NotSynced> {
        let written = match target {
            Target::Absent => self.create(data, meta).await?,
            Target::Created { converted } => self.apply_created(data, meta, converted).await?,
            Target::MergeInto => self.apply_merge(data).await?,
        };
        self.remember(&written, meta, hmac);
        Ok(written)
    }

    /// Creates the Secret; if one appeared since ownership was checked, decides again rather than adopt it.
    async fn create(&self, data: &SecretData, meta: &SecretMeta) -> Result<Secret, NotSynced> {
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        match self.secrets().create(&params, &self.desired(data, meta)).await {
            Ok(created) => {
                self.ctx.metrics.apiserver_write("create", "secrets");
                info!(secret = %self.target, "created the Secret");
                Ok(created)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let late = format!("Secret {} was created by someone else before vaultsync's first write", self.target);
                match self.target().await {
                    // Our own create, retried after a timeout: carry on with it.
                    Ok(Target::Created { converted }) => self.apply_created(data, meta, converted).await,
                    Ok(Target::Absent) => Err(NotSynced::new(
                        "SecretWriteFailed",
                        format!("{late}, and deleted again; trying again"),
                        Duration::from_secs(5),
                    )),
                    Ok(Target::MergeInto) => Err(conflict(format!("{late}; it is left alone"))),
                    Err(refused) if refused.reason == "OwnershipConflict" => {
                        Err(conflict(format!("{late}; it is left alone ({})", refused.message)))
                    }
                    Err(other) => Err(other),
                }
            }
            Err(e) => Err(NotSynced::apiserver("SecretWriteFailed", &format!("creating Secret {}", self.target), &e)),
        }
    }

    /// Server-side apply of the whole Secret vaultsync created; an immutable one whose content changed is replaced.
    async fn apply_created(&self, data: &SecretData, meta: &SecretMeta, converted: bool) -> Result<Secret, NotSynced> {
        if !converted {
            self.convert_create_fields().await?;
        }
        let desired = self.desired(data, meta);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self.secrets().patch(&self.target, &params, &Patch::Apply(&desired)).await {
            Ok(applied) => {
                self.ctx.metrics.apiserver_write("apply", "secrets");
                Ok(applied)
            }
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains("immutable") => {
                self.replace(desired).await
            }
            Err(e) => Err(NotSynced::apiserver("SecretWriteFailed", &format!("writing Secret {}", self.target), &e)),
        }
    }

    /// Hands the fields our create recorded (an `Update` entry) to our apply identity, so a later apply can remove
    /// what it stops writing. Guarded by JSON patch tests: another writer's change of the entries makes it fail
    /// harmlessly, and it is retried.
    async fn convert_create_fields(&self) -> Result<(), NotSynced> {
        let current =
            self.secrets().get_metadata(&self.target).await.map_err(|e| {
                NotSynced::apiserver("SecretReadFailed", &format!("reading Secret {}", self.target), &e)
            })?;
        let Some(index) = update_entry(&current.metadata) else { return Ok(()) };
        let path = format!("/metadata/managedFields/{index}");
        let patch: json_patch::Patch = serde_json::from_value(serde_json::json!([
            { "op": "test", "path": format!("{path}/manager"), "value": FIELD_MANAGER },
            { "op": "test", "path": format!("{path}/operation"), "value": "Update" },
            { "op": "replace", "path": format!("{path}/operation"), "value": "Apply" },
        ]))
        .expect("a valid JSON patch");
        self.secrets().patch(&self.target, &PatchParams::default(), &Patch::<()>::Json(patch)).await.map_err(|e| {
            NotSynced::apiserver("SecretWriteFailed", &format!("taking over Secret {}", self.target), &e)
        })?;
        self.ctx.metrics.apiserver_write("patch", "secrets");
        Ok(())
    }

    /// Merges vaultsync's keys into someone's Secret with server-side apply: their keys, type and settings stay.
    async fn apply_merge(&self, data: &SecretData) -> Result<Secret, NotSynced> {
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": self.target, "labels": { MANAGED_BY.0: MANAGED_BY.1, OWNER_LABEL: self.name } },
            "data": bytes(data),
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match self.secrets().patch(&self.target, &params, &Patch::Apply(&body)).await {
            Ok(applied) => {
                self.ctx.metrics.apiserver_write("apply", "secrets");
                Ok(applied)
            }
            Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains("immutable") => {
                Err(NotSynced::new(
                    "TargetImmutable",
                    format!(
                        "Secret {} is immutable, so creationPolicy Merge cannot change its keys; vaultsync never \
                         deletes a Secret it did not create",
                        self.target
                    ),
                    Duration::from_secs(300),
                ))
            }
            Err(e) => {
                Err(NotSynced::apiserver("SecretWriteFailed", &format!("merging into Secret {}", self.target), &e))
            }
        }
    }

    /// Replaces an immutable Secret vaultsync created: delete exactly the object just read, create the new one, and
    /// if that fails put the old one back.
    async fn replace(&self, desired: Secret) -> Result<Secret, NotSynced> {
        let api = self.secrets();
        let what = format!("replacing immutable Secret {}", self.target);
        let old = api.get(&self.target).await.map_err(|e| NotSynced::apiserver("SecretWriteFailed", &what, &e))?;
        if old.labels().get(CREATED_LABEL).map(String::as_str) != Some("true")
            && !old.owner_references().iter().any(|o| Some(&o.uid) == self.vs.uid().as_ref())
        {
            return Err(conflict(format!("Secret {} was not created by vaultsync; it is not replaced", self.target)));
        }
        // Check the new Secret before deleting the old one: a dry-run create is validated as the real one would be
        // (a type whose required keys the data lacks, say), and then refused only because the name is taken.
        let dry_run = PostParams { dry_run: true, field_manager: Some(FIELD_MANAGER.into()) };
        match api.create(&dry_run, &desired).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(NotSynced::apiserver("SecretWriteFailed", &what, &e)),
        }
        let preconditions = Preconditions { uid: old.uid(), resource_version: old.resource_version() };
        let delete = DeleteParams { preconditions: Some(preconditions), ..Default::default() };
        api.delete(&self.target, &delete).await.map_err(|e| NotSynced::apiserver("SecretWriteFailed", &what, &e))?;
        self.ctx.metrics.apiserver_write("delete", "secrets");
        let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let failure = match api.create(&params, &desired).await {
            Ok(created) => {
                self.ctx.metrics.apiserver_write("create", "secrets");
                info!(secret = %self.target, "replaced the immutable Secret");
                return Ok(created);
            }
            Err(e) => e,
        };
        // Put the old content back: the Secret must not stay deleted because the second write failed.
        let restored = Secret {
            metadata: ObjectMeta {
                name: old.metadata.name.clone(),
                namespace: old.metadata.namespace.clone(),
                labels: old.metadata.labels.clone(),
                annotations: old.metadata.annotations.clone(),
                owner_references: old.metadata.owner_references.clone(),
                ..Default::default()
            },
            ..old
        };
        for attempt in 0..5u32 {
            match api.create(&params, &restored).await {
                Ok(_) => {
                    self.ctx.metrics.apiserver_write("create", "secrets");
                    return Err(NotSynced::apiserver(
                        "SecretWriteFailed",
                        &format!("{what} (its previous content was restored)"),
                        &failure,
                    ));
                }
                Err(e) => {
                    warn!(secret = %self.target, attempt, error = %e, "restoring the replaced Secret failed");
                    tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
                }
            }
        }
        Err(NotSynced::apiserver(
            "SecretWriteFailed",
            &format!("{what}; restoring its previous content failed too, it is recreated on the next sync"),
            &failure,
        ))
    }

    /// Whether the target Secret holds the content whose digest is `expected` over `keys`: known when the Secret's
    /// resourceVersion is the one our last write left (remembered, or recorded in the status as `written_version`),
    /// else read once and compared.
    pub(super) async fn secret_matches(
        &self,
        expected: &str,
        keys: &BTreeSet<String>,
        written_version: Option<&str>,
    ) -> Result<bool, NotSynced> {
        let cached = self.ctx.secrets.get(&self.namespace, &self.target);
        let cached_version = cached.map(|m| String::from(m.resource_version));
        if let Some(w) = self.ctx.written.lock().expect("written lock").get(&self.map_key())
            && w.is_of(&self.name, &self.target)
            && cached_version.as_deref() == Some(&*w.resource_version)
        {
            return Ok(w.hmac == Written::hmac_digest(expected));
        }
        // After a restart: untouched since the write the status records, so it holds what the status describes.
        if written_version.is_some() && cached_version.as_deref() == written_version {
            return Ok(true);
        }
        // After a restart, when someone else wrote, or while our cache has not seen our own write yet: compare what
        // is there.
        let secret =
            self.secrets().get_opt(&self.target).await.map_err(|e| {
                NotSynced::apiserver("SecretReadFailed", &format!("reading Secret {}", self.target), &e)
            })?;
        let Some(secret) = secret else { return Ok(false) };
        if secret.labels().get(OWNER_LABEL) != Some(&self.name) {
            return Ok(false);
        }
        let stored = secret.data.clone().unwrap_or_default();
        let ours: SecretData =
            keys.iter().filter_map(|k| stored.get(k).map(|v| (k.clone(), SecretBytes::new(v.0.clone())))).collect();
        let hmac = render::data_hmac(&self.ctx.hmac_key, &ours);
        let matches = hmac == expected && ours.len() == keys.len();
        if matches {
            let meta = self.remembered_meta(&secret);
            self.remember(&secret, &meta, &hmac);
        }
        Ok(matches)
    }

    /// Remembers the Secret's resourceVersion and digest after our write (or check): the next check costs no read.
    fn remember(&self, secret: &Secret, meta: &SecretMeta, hmac: &str) {
        self.ctx.written.lock().expect("written lock").insert(
            self.map_key(),
            Written {
                secret: (self.target != self.name).then(|| self.target.as_str().into()),
                resource_version: secret.resource_version().unwrap_or_default().into(),
                meta: (*meta != SecretMeta::default()).then(|| Box::new(meta.clone())),
                hmac: Written::hmac_digest(hmac),
            },
        );
    }

    /// What templates made at our last write, if this process remembers it; else (after a restart) what `secret`
    /// holds under the names the templates make, so a Secret healed from memory keeps its templated type, labels
    /// and annotations.
    fn remembered_meta(&self, secret: &Secret) -> SecretMeta {
        if let Some(written) = self.ctx.written.lock().expect("written lock").get(&self.map_key()) {
            return written.meta.as_deref().cloned().unwrap_or_default();
        }
        let Some(template) = &self.vs.spec.target.template else { return SecretMeta::default() };
        let pick = |names: &std::collections::BTreeMap<String, String>,
                    have: &std::collections::BTreeMap<String, String>| {
            names.keys().filter_map(|k| Some((k.clone(), have.get(k)?.clone()))).collect()
        };
        SecretMeta {
            type_: template.type_.as_ref().and(secret.type_.clone()),
            labels: pick(&template.labels, secret.labels()),
            annotations: pick(&template.annotations, secret.annotations()),
        }
    }
}

fn bytes(data: &SecretData) -> std::collections::BTreeMap<String, ByteString> {
    data.iter().map(|(k, v)| (k.clone(), ByteString(v.expose().to_vec()))).collect()
}
