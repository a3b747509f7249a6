//! Sharding: with `--shards N` above 1, replicas split the work by namespace. Each replica holds at most one shard's
//! Lease (`<lease-name>-shard-<i>`) and acts only on the VaultSecrets, managed Secrets, VaultStores and labelled
//! workloads of the namespaces that hash to it; a replica holding none stands by for all of them.
//!
//! The apiserver cannot select objects by a hash of their namespace, so every watch filters on receipt (before the
//! reflector, so a shard's memory holds only its own objects). The hash is FNV-1a (64 bit) of the namespace name's
//! UTF-8 bytes, modulo N: fixed here, independent of the platform and the Rust version, so replicas of different
//! builds always agree on who owns a namespace.

use kube::{Resource, ResourceExt as _, runtime::watcher};

/// The shard a replica holds: `index` of `count`. `count == 1` is the unsharded operator, which owns everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The most shards accepted (`--shards`, the chart's `sharding.shards`).
pub const MAX_SHARDS: u32 = 64;

impl Shard {
    /// The unsharded operator: one shard that owns every namespace.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether objects in `namespace` are this shard's.
    pub fn owns(&self, namespace: &str) -> bool {
        self.count <= 1 || of_namespace(namespace, self.count) == self.index
    }

    /// Whether this shard writes what belongs to no namespace (the status of ClusterVaultStores): shard 0.
    pub fn owns_cluster_scope(&self) -> bool {
        self.index == 0
    }

    /// Whether a namespaced object (or a cluster-scoped one, for shard 0) is this shard's.
    pub fn owns_object<K: Resource>(&self, object: &K) -> bool {
        match object.namespace() {
            Some(namespace) => self.owns(&namespace),
            None => self.owns_cluster_scope(),
        }
    }

    /// Whether a watch event concerns this shard: objects of other shards are dropped; the list markers (and errors)
    /// pass, so a reflector still learns when its list is complete.
    pub fn keeps<K: Resource>(&self, event: &Result<watcher::Event<K>, watcher::Error>) -> bool {
        match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object) | watcher::Event::Delete(object)) => {
                self.owns_object(object)
            }
            _ => true,
        }
    }

    /// The Lease of shard `index` of `count`: the plain `lease_name` when unsharded, so an operator started without
    /// `--shards` keeps the Lease it always had.
    pub fn lease_name(lease_name: &str, index: u32, count: u32) -> String {
        if count <= 1 { lease_name.to_owned() } else { format!("{lease_name}-shard-{index}") }
    }
}

/// The shard (of `count`) that owns `namespace`: FNV-1a 64 of its name, modulo `count`.
pub fn of_namespace(namespace: &str, count: u32) -> u32 {
    let count = u64::from(count.max(1));
    u32::try_from(fnv1a(namespace.as_bytes()) % count).expect("below a u32 count")
}

/// FNV-1a, 64 bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_64() {
        // The published test vectors of FNV-1a 64: a change here would move namespaces between shards on upgrade.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(of_namespace("default", 2), u32::try_from(fnv1a(b"default") % 2).expect("small"));
    }

    #[test]
    fn every_namespace_has_exactly_one_owner() {
        for count in [1, 2, 3, 7, MAX_SHARDS] {
            let shards: Vec<Shard> = (0..count).map(|index| Shard { index, count }).collect();
            let mut per_shard = vec![0u32; count as usize];
            for n in 0..2000 {
                let namespace = format!("team-{n}");
                let owners: Vec<u32> = shards.iter().filter(|s| s.owns(&namespace)).map(|s| s.index).collect();
                assert_eq!(owners.len(), 1, "{namespace} of {count} shards is owned by {owners:?}");
                per_shard[owners[0] as usize] += 1;
            }
            // Spread: no shard gets less than half its fair part of 2000 namespaces.
            let fair = 2000 / count;
            assert!(per_shard.iter().all(|n| *n >= fair / 2), "{count} shards: {per_shard:?}");
        }
        assert!(Shard::ALL.owns("anything"));
    }

    #[test]
    fn watches_keep_their_own_objects_and_every_list_marker() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let in_namespace = |namespace: &str| ConfigMap {
            metadata: kube::api::ObjectMeta { namespace: Some(namespace.into()), ..Default::default() },
            ..Default::default()
        };
        let (mine, theirs) = (Shard { index: 0, count: 2 }, Shard { index: 1, count: 2 });
        let namespace = (0..).map(|n| format!("ns-{n}")).find(|ns| mine.owns(ns)).expect("a namespace of shard 0");
        for event in [
            watcher::Event::Apply(in_namespace(&namespace)),
            watcher::Event::InitApply(in_namespace(&namespace)),
            watcher::Event::Delete(in_namespace(&namespace)),
        ] {
            let event = Ok(event);
            assert!(mine.keeps(&event) && !theirs.keeps(&event), "{event:?}");
        }
        for marker in [watcher::Event::Init, watcher::Event::InitDone] {
            let marker: Result<watcher::Event<ConfigMap>, watcher::Error> = Ok(marker);
            assert!(mine.keeps(&marker) && theirs.keeps(&marker), "every reflector must see {marker:?}");
        }
        let cluster_scoped = Ok(watcher::Event::Apply(ConfigMap::default()));
        assert!(mine.keeps(&cluster_scoped) && !theirs.keeps(&cluster_scoped), "cluster-scoped: shard 0's");
    }

    #[test]
    fn the_unsharded_lease_keeps_its_name() {
        assert_eq!(Shard::lease_name("vaultsync", 0, 1), "vaultsync");
        assert_eq!(Shard::lease_name("vaultsync", 1, 3), "vaultsync-shard-1");
    }
}
