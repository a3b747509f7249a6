//! Reading what a VaultSecret names: every `data` object and `dataFrom` entry, through the shared read cache and
//! within the store's allowlist, rendered into Secret data with the version behind each key.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use vaultsync_backend::budget;
use vaultsync_render::certificate::Validity;
use vaultsync_stores::ResolvedStore;

use super::{Sync, data_from::data_from, objects, plan, status::NotSynced, templating::SecretMeta};
use crate::render::SecretData;

/// What a read produced.
pub(super) struct Fetched {
    pub data: SecretData,
    /// The vault version behind each key.
    pub versions: BTreeMap<String, String>,
    /// Objects `dataFrom.find` found but could not read, and why.
    pub skipped: Vec<(String, &'static str)>,
    /// What templates made besides data.
    pub meta: SecretMeta,
    /// The certificates read, by the key they were read into.
    pub certificates: Vec<(String, Validity)>,
}

impl Sync<'_> {
    /// Refuses, before any vault call, objects the store does not let this namespace read.
    pub(super) fn check_allowed(&self, store: &ResolvedStore) -> Result<(), NotSynced> {
        for item in &self.vs.spec.data {
            store.check_object(&item.remote_ref.name)?;
        }
        for extract in self.vs.spec.data_from.iter().filter_map(|d| d.extract.as_ref()) {
            store.check_object(&extract.name)?;
        }
        Ok(())
    }

    /// Reads and renders every key. Routine reads yield the store's request budget to other work.
    pub(super) async fn read(&self, store: &ResolvedStore, read: plan::Read) -> Result<Fetched, NotSynced> {
        let work = self.read_all(store, read);
        let result = if read.routine { budget::routine(work).await } else { work.await };
        // The reason a backend's `Unauthenticated` error reports.
        if let Err(failure) = &result
            && failure.reason == "AuthenticationFailed"
        {
            // A refused credential: build the store's backend again, so a rotated credential Secret is read anew.
            self.ctx.stores.forget(&store.key);
        }
        result
    }

    async fn read_all(&self, store: &ResolvedStore, read: plan::Read) -> Result<Fetched, NotSynced> {
        let reads = self.vs.spec.data.iter().map(|item| {
            let object = objects::vault_object(&item.remote_ref);
            let (cache, backend) = (&self.ctx.cache, store.backend.clone());
            async move { cache.get(backend.as_ref(), &object, read.max_age).await }
        });
        let fetched = try_join_all(reads).await?;
        let mut data = SecretData::new();
        let mut versions = BTreeMap::new();
        let mut skipped = Vec::new();
        // dataFrom first: a key also named in `data` takes its value from `data`. Two dataFrom entries giving one key
        // are refused: which value wins would be an accident of order.
        for (index, source) in self.vs.spec.data_from.iter().enumerate() {
            let entries = data_from(self.ctx, store, source, (self.map_key(), index), read.max_age).await?;
            skipped.extend(entries.skipped);
            for (key, value, version) in entries.keys {
                if data.contains_key(&key) {
                    return Err(vaultsync_stores::data_from::earlier_entry_conflict(index, &key).into());
                }
                data.insert(key.clone(), value);
                versions.insert(key, version);
            }
        }
        let items = self.render_items(fetched, &data).await?;
        for (key, value, version) in items.keys {
            data.insert(key.clone(), value);
            versions.insert(key, version);
        }
        let (data, versions, meta) = self.apply_templates(data, versions).await?;
        objects::check_tls(meta.type_.as_deref().or(self.vs.spec.target.type_.as_deref()), &data)?;
        Ok(Fetched { data, versions, skipped, meta, certificates: items.certificates })
    }
}
