//! The Secrets vaultsync manages, as far as deciding who may write them and whether they drifted needs: a table fed
//! by a metadata watch of the managed-by label.
//!
//! Memory: a reflector store would keep each Secret's whole `ObjectMeta` (a label map costs over half a KiB even with
//! three labels); at 10,000 Secrets this table keeps about 150 bytes each.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{
    api::{ObjectMeta, PartialObjectMeta},
    runtime::watcher,
};
use tokio::sync::watch;

use super::{FIELD_MANAGER, OWNER_LABEL, target::CREATED_LABEL};

/// What the table keeps of one Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Managed {
    pub resource_version: Box<str>,
    /// The VaultSecret named by the owner label.
    pub owner: Option<Box<str>>,
    /// Carries the label saying vaultsync created it (rather than merged into it).
    pub created: bool,
    /// The UID of its controller owner reference.
    pub controller: Option<Box<str>>,
    /// Our create-time (`Update`) managed-fields entry is still there: not yet handed to our apply identity.
    pub create_entry: bool,
}

impl Managed {
    pub fn of(meta: &ObjectMeta) -> Self {
        let label = |key: &str| meta.labels.as_ref().and_then(|labels| labels.get(key));
        let controller = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
        Managed {
            resource_version: meta.resource_version.as_deref().unwrap_or_default().into(),
            owner: label(OWNER_LABEL).map(|owner| owner.as_str().into()),
            created: label(CREATED_LABEL).is_some_and(|v| v == "true"),
            controller: controller.map(|o| o.uid.as_str().into()),
            create_entry: update_entry(meta).is_some(),
        }
    }
}

/// The index of our create-time (`Update`) entry in a Secret's managed fields, if any.
pub(super) fn update_entry(meta: &ObjectMeta) -> Option<usize> {
    let fields = meta.managed_fields.as_ref()?;
    fields.iter().position(|f| f.manager.as_deref() == Some(FIELD_MANAGER) && f.operation.as_deref() == Some("Update"))
}

type Table = HashMap<Arc<str>, HashMap<Box<str>, Managed>>;

/// The table, shared by the watch that fills it and the reconciles that read it.
#[derive(Clone)]
pub(super) struct ManagedSecrets {
    table: Arc<RwLock<Table>>,
    ready: Arc<watch::Sender<bool>>,
}

impl Default for ManagedSecrets {
    fn default() -> Self {
        ManagedSecrets { table: Arc::default(), ready: Arc::new(watch::Sender::new(false)) }
    }
}

impl ManagedSecrets {
    pub fn get(&self, namespace: &str, name: &str) -> Option<Managed> {
        self.table.read().expect("managed table lock").get(namespace)?.get(name).cloned()
    }

    /// Becomes true once the first list is complete (and stays true across relists).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.read().expect("managed table lock").values().map(HashMap::len).sum()
    }

    /// Applies one watch event, as a reflector does: a relist builds a new table, which replaces the old one when
    /// the list is complete (a Secret deleted meanwhile does not linger).
    pub fn apply(&self, event: &watcher::Event<PartialObjectMeta<Secret>>, relist: &mut Option<Table>) {
        match event {
            watcher::Event::Init => *relist = Some(Table::new()),
            watcher::Event::InitApply(secret) => {
                if let Some(table) = relist.as_mut() {
                    insert(table, &secret.metadata);
                }
            }
            watcher::Event::InitDone => {
                if let Some(table) = relist.take() {
                    *self.table.write().expect("managed table lock") = table;
                }
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(secret) => {
                insert(&mut self.table.write().expect("managed table lock"), &secret.metadata)
            }
            watcher::Event::Delete(secret) => {
                let (Some(namespace), Some(name)) = (&secret.metadata.namespace, &secret.metadata.name) else { return };
                let mut table = self.table.write().expect("managed table lock");
                if let Some(names) = table.get_mut(namespace.as_str()) {
                    names.remove(name.as_str());
                    if names.is_empty() {
                        table.remove(namespace.as_str());
                    }
                }
            }
        }
    }
}

fn insert(table: &mut Table, meta: &ObjectMeta) {
    let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else { return };
    let names = match table.get_mut(namespace.as_str()) {
        Some(names) => names,
        None => table.entry(Arc::from(namespace.as_str())).or_default(),
    };
    names.insert(name.as_str().into(), Managed::of(meta));
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, OwnerReference};

    use super::*;

    fn secret(namespace: &str, name: &str, version: &str) -> PartialObjectMeta<Secret> {
        let meta = ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            resource_version: Some(version.into()),
            labels: Some([(OWNER_LABEL.to_string(), "vs".to_string()), (CREATED_LABEL.into(), "true".into())].into()),
            owner_references: Some(vec![
                OwnerReference { uid: "other".into(), ..Default::default() },
                OwnerReference { uid: "vs-uid".into(), controller: Some(true), ..Default::default() },
            ]),
            managed_fields: Some(vec![ManagedFieldsEntry {
                manager: Some(FIELD_MANAGER.into()),
                operation: Some("Update".into()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        PartialObjectMeta { types: None, metadata: meta, _phantom: Default::default() }
    }

    #[test]
    fn keeps_what_ownership_and_drift_need() {
        let managed = Managed::of(&secret("ns", "s", "7").metadata);
        let expected = Managed {
            resource_version: "7".into(),
            owner: Some("vs".into()),
            created: true,
            controller: Some("vs-uid".into()),
            create_entry: true,
        };
        assert_eq!(managed, expected);
        assert_eq!(Managed::of(&ObjectMeta::default()), Managed::default());
    }

    #[test]
    fn follows_events_and_replaces_the_table_on_relist() {
        let secrets = ManagedSecrets::default();
        let ready = secrets.ready();
        let mut relist = None;
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(secret("a", "one", "1")),
            watcher::Event::InitApply(secret("a", "gone", "1")),
        ] {
            secrets.apply(&event, &mut relist);
        }
        assert_eq!(secrets.len(), 0, "nothing until the list is complete");
        assert!(!*ready.borrow());
        secrets.apply(&watcher::Event::InitDone, &mut relist);
        assert!(*ready.borrow());
        assert_eq!(secrets.len(), 2);
        secrets.apply(&watcher::Event::Apply(secret("b", "two", "5")), &mut relist);
        secrets.apply(&watcher::Event::Apply(secret("a", "one", "2")), &mut relist);
        assert_eq!(secrets.get("a", "one").map(|m| m.resource_version), Some("2".into()));
        secrets.apply(&watcher::Event::Delete(secret("b", "two", "6")), &mut relist);
        assert_eq!(secrets.get("b", "two"), None);
        // A relist that no longer finds "gone" drops it.
        for event in
            [watcher::Event::Init, watcher::Event::InitApply(secret("a", "one", "3")), watcher::Event::InitDone]
        {
            secrets.apply(&event, &mut relist);
        }
        assert_eq!(secrets.len(), 1);
        assert_eq!(secrets.get("a", "gone"), None);
        assert_eq!(secrets.get("a", "one").map(|m| m.resource_version), Some("3".into()));
    }
}
