//! Sharded replicas (`--shards 2`) on a real apiserver, cluster-wide over several namespaces: each replica holds one
//! shard's Lease and syncs only the VaultSecrets of the namespaces that hash to it, never another's; a standby takes
//! over the shard of a replica that dies within one lease duration, and carries on without writing anything twice.
//!
//! Who wrote what is told three ways that an unfiltered replica would fail: the Events of each VaultSecret name the
//! replica that published them (`reportingInstance`, its pod name), each replica's metrics count its own Secret
//! writes and the VaultSecrets it keeps, and the shard gauge names the shard it holds.

mod support;

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use k8s_openapi::api::{coordination::v1::Lease, events::v1::Event};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::{Env, EventGrid, metric_sum};
use tokio::{task::JoinHandle, time::Instant};
use vaultsync_api::{ClusterVaultStore, VaultSecret};
use vaultsync_e2e::process::free_port;
use vaultsync_e2e::{TestNamespace, eventually};
use vaultsync_operator::shard;

const SHARDS: u32 = 2;
const LEASE_DURATION: Duration = Duration::from_secs(3);

/// Both tests run operators that watch every namespace of this binary's control plane: one at a time, and each
/// removes its VaultSecrets before it stops its replicas, so the next never sees them.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One operator replica, run in process with the chart's rights.
struct Replica {
    name: String,
    port: u16,
    /// Its Event Grid endpoint's port.
    grid_port: u16,
    task: JoinHandle<()>,
}

impl Replica {
    /// With its Event Grid endpoint on (the key of `grid`, a port of its own), which the other shards reach at
    /// 127.0.0.1.
    fn start(env: &Env, name: &str, grid: &EventGrid) -> Replica {
        let port = free_port().expect("a free port");
        let mut args = env.operator_args();
        args.watch_namespace = None;
        args.leader_elect = true;
        args.shards = SHARDS;
        args.lease_duration = LEASE_DURATION;
        args.pod_name = name.into();
        args.metrics_addr = format!("127.0.0.1:{port}").parse().expect("address");
        grid.configure(&mut args);
        let grid_port = free_port().expect("a free port");
        args.event_grid_addr = Some(SocketAddr::from(([127, 0, 0, 1], grid_port)));
        args.pod_ip = Some([127, 0, 0, 1].into());
        Replica { name: name.into(), port, grid_port, task: env.spawn_operator(name, args) }
    }

    /// The shard this replica holds (-1 while it stands by), by its own gauge.
    async fn shard(&self) -> i64 {
        let (_, body) = support::http_get(self.port, "/metrics").await;
        body.lines().find_map(|l| l.strip_prefix("vaultsync_shard ")?.parse().ok()).unwrap_or(i64::MIN)
    }

    /// Every write of Secrets this replica made (creates, applies, patches, deletes).
    async fn secret_writes(&self) -> u64 {
        let (_, body) = support::http_get(self.port, "/metrics").await;
        body.lines()
            .filter(|l| l.starts_with("vaultsync_apiserver_writes_total{") && l.contains(r#"resource="secrets"}"#))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum()
    }

    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Delivers a new version of `object` to one replica's Event Grid endpoint; returns the answer's status.
async fn announce(env: &Env, grid: &EventGrid, replica: &Replica, object: &str, version: &str) -> u16 {
    let event = json!([{ "id": format!("{object}-{version}"),
        "topic": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/v",
        "subject": object, "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
        "data": { "Id": format!("{}/secrets/{object}/{version}", env.vault.url()), "VaultName": "v",
            "ObjectType": "Secret", "ObjectName": object, "Version": version },
        "dataVersion": "1", "metadataVersion": "1", "eventTime": "2026-01-01T00:00:00Z" }]);
    let headers = [grid.key_header(), ("content-type", "application/json")];
    support::http_request(replica.grid_port, "POST", "/eventgrid", &headers, event.to_string().as_bytes()).await.status
}

/// At least `per_shard` namespaces for each shard, with the shard each belongs to.
async fn namespaces_over_shards(per_shard: usize) -> Vec<(TestNamespace, u32)> {
    let mut made = Vec::new();
    let mut counts = vec![0usize; SHARDS as usize];
    // Names are random: a few more than the minimum are usually enough; 40 without both shards would be a bug.
    for _ in 0..40 {
        if counts.iter().all(|n| *n >= per_shard) {
            return made;
        }
        let ns = TestNamespace::new("shard-tenant").await;
        let owner = shard::of_namespace(&ns.name, SHARDS);
        if counts[owner as usize] < per_shard {
            counts[owner as usize] += 1;
            made.push((ns, owner));
        }
    }
    panic!("40 namespaces did not spread over {SHARDS} shards: {counts:?}");
}

fn lease_name(index: u32) -> String {
    shard::Shard::lease_name("vaultsync-operator", index, SHARDS)
}

async fn holder(env: &Env, index: u32) -> Option<String> {
    env.ns.api::<Lease>().get_opt(&lease_name(index)).await.ok()??.spec?.holder_identity.filter(|h| !h.is_empty())
}

/// Waits until every shard is held; returns the holder of each.
async fn holders(env: &Env) -> Vec<String> {
    eventually(Duration::from_secs(20), "every shard's Lease to be held", || async {
        let mut names = Vec::new();
        for index in 0..SHARDS {
            names.push(holder(env, index).await?);
        }
        Some(names)
    })
    .await
}

/// A ClusterVaultStore on the test vault open to `namespaces` (reading with the test namespace's account).
async fn shared_store(env: &Env, namespaces: &[(TestNamespace, u32)]) -> String {
    let name = format!("{}-shared", env.ns.name);
    let names: Vec<&str> = namespaces.iter().map(|(ns, _)| ns.name.as_str()).collect();
    env.apply_cluster_store(&name, json!([{ "namespaces": names }])).await;
    name
}

async fn apply_vault_secret(ns: &TestNamespace, name: &str, store: &str, object: &str) {
    let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret", "metadata": { "name": name },
        "spec": { "storeRef": { "kind": "ClusterVaultStore", "name": store }, "refreshInterval": "1h",
            "data": [{ "secretKey": "k", "remoteRef": { "name": object } }] } });
    ns.api::<VaultSecret>()
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
        .await
        .expect("applying a VaultSecret");
}

/// Waits until the VaultSecret is Ready and its Secret holds `value`.
async fn wait_synced(ns: &TestNamespace, name: &str, value: &str) {
    let (secrets, vaultsecrets) = (ns.api::<k8s_openapi::api::core::v1::Secret>(), ns.api::<VaultSecret>());
    eventually(Duration::from_secs(30), &format!("{}/{name} to be synced", ns.name), || {
        let (secrets, vaultsecrets) = (secrets.clone(), vaultsecrets.clone());
        async move {
            let secret = secrets.get_opt(name).await.ok()??;
            (secret.data?.get("k")?.0 == value.as_bytes()).then_some(())?;
            let status = vaultsecrets.get(name).await.ok()?.status?;
            status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
        }
    })
    .await;
}

/// The replicas that published Events about the VaultSecret, by `reportingInstance`; waits for at least one Event
/// (the proof that some replica worked on it).
async fn reporters(ns: &TestNamespace, name: &str) -> BTreeMap<String, usize> {
    let events = ns.api::<Event>();
    eventually(Duration::from_secs(15), &format!("an Event about {}/{name}", ns.name), || {
        let events = events.clone();
        async move {
            let mut by = BTreeMap::new();
            for event in events.list(&Default::default()).await.ok()?.items {
                let about = event
                    .regarding
                    .as_ref()
                    .is_some_and(|r| r.kind.as_deref() == Some("VaultSecret") && r.name.as_deref() == Some(name));
                if about {
                    *by.entry(event.reporting_instance.unwrap_or_default()).or_insert(0) += 1;
                }
            }
            (!by.is_empty()).then_some(by)
        }
    })
    .await
}

/// Deletes the test's VaultSecrets and waits until they are gone (while the replicas still run), so that no later
/// operator of this binary finds them.
async fn remove_vault_secrets(namespaces: &[(TestNamespace, u32)]) {
    for (ns, _) in namespaces {
        let api = ns.api::<VaultSecret>();
        api.delete_collection(&DeleteParams::default(), &Default::default()).await.expect("deleting VaultSecrets");
        eventually(Duration::from_secs(30), "the VaultSecrets to be gone", || {
            let api = api.clone();
            async move { api.list(&Default::default()).await.ok()?.items.is_empty().then_some(()) }
        })
        .await;
    }
}

#[tokio::test]
async fn each_shard_syncs_only_its_namespaces() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = Env::start("shard-split").await;
    env.stop_operator().await;
    env.vault.set_secret("shard-object", "shard-split-value");
    let namespaces = namespaces_over_shards(2).await;
    let store = shared_store(&env, &namespaces).await;

    // Both with the Event Grid endpoint on (one key, a port each), reachable by the other shard at 127.0.0.1.
    let grid = EventGrid::new(&env.ns.name);
    let replicas = [Replica::start(&env, "shard-a", &grid), Replica::start(&env, "shard-b", &grid)];
    let held = holders(&env).await;
    assert_ne!(held[0], held[1], "one replica holds both shards");
    let by_name = |name: &str| replicas.iter().find(|r| r.name == name).expect("a replica of this test");

    for (ns, _) in &namespaces {
        for name in ["first", "second"] {
            apply_vault_secret(ns, name, &store, "shard-object").await;
        }
    }
    for (ns, _) in &namespaces {
        for name in ["first", "second"] {
            wait_synced(ns, name, "shard-split-value").await;
        }
    }

    // A new version, announced to one shard only, reaches every VaultSecret that reads it at once (they refresh
    // hourly otherwise): the shard passes the delivery on to the other.
    let version = env.vault.set_secret("shard-object", "shard-split-rotated");
    assert_eq!(announce(&env, &grid, by_name("shard-a"), "shard-object", &version).await, 200);
    for (ns, _) in &namespaces {
        for name in ["first", "second"] {
            wait_synced(ns, name, "shard-split-rotated").await;
        }
    }
    let forwards = r#"vaultsync_vault_event_forwards_total{result="ok"}"#;
    assert_eq!(metric_sum(by_name("shard-a").port, forwards).await, 1, "shard-a passed the delivery on");
    assert_eq!(metric_sum(by_name("shard-b").port, forwards).await, 0, "shard-b passed it back");

    // Each VaultSecret's Events (both syncs) come from the replica holding its namespace's shard, and from no other.
    for (ns, owner) in &namespaces {
        for name in ["first", "second"] {
            let seen = reporters(ns, name).await;
            let expected = &held[*owner as usize];
            assert_eq!(seen.keys().collect::<Vec<_>>(), [expected], "{}/{name} (shard {owner}): {seen:?}", ns.name);
        }
    }
    // Each replica keeps and writes only its own: as many Ready VaultSecrets as its namespaces hold, three Secret
    // writes each (the create; for the rotation, the hand-over of the create's fields and the apply), and its gauge
    // names its shard.
    for (index, name) in held.iter().enumerate() {
        let replica = by_name(name);
        let owned = 2 * namespaces.iter().filter(|(_, owner)| *owner as usize == index).count() as u64;
        assert_eq!(replica.shard().await, index as i64, "{name}'s shard gauge");
        assert_eq!(metric_sum(replica.port, r#"vaultsync_vaultsecrets{ready="true"}"#).await, owned, "{name} keeps");
        assert_eq!(replica.secret_writes().await, 3 * owned, "{name}'s Secret writes");
    }
    // The ClusterVaultStore's status has one writer, shard 0, which reports it.
    let stores = kube::Api::<ClusterVaultStore>::all(env.ns.client.clone());
    eventually(Duration::from_secs(20), "the ClusterVaultStore to be reported Ready", || async {
        let status = stores.get(&store).await.ok()?.status?;
        status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await;

    remove_vault_secrets(&namespaces).await;
    for replica in replicas {
        replica.kill().await;
    }
    env.finish().await;
}

#[tokio::test]
async fn a_standby_takes_over_a_dead_shard_within_one_lease_duration() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut env = Env::start("shard-takeover").await;
    env.stop_operator().await;
    env.vault.set_secret("takeover-object", "shard-takeover-value");
    let namespaces = namespaces_over_shards(1).await;
    let store = shared_store(&env, &namespaces).await;

    let grid = EventGrid::new(&env.ns.name);
    let mut replicas = vec![Replica::start(&env, "shard-x", &grid), Replica::start(&env, "shard-y", &grid)];
    let held = holders(&env).await;
    // The third replica starts once both shards are taken, so it is the standby.
    replicas.push(Replica::start(&env, "shard-z", &grid));
    let standby_port = replicas[2].port;
    eventually(Duration::from_secs(15), "the standby to serve its metrics", || async move {
        (support::http_get(standby_port, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(replicas[2].shard().await, -1, "the third replica holds no shard");

    for (ns, _) in &namespaces {
        apply_vault_secret(ns, "before", &store, "takeover-object").await;
    }
    for (ns, _) in &namespaces {
        wait_synced(ns, "before", "shard-takeover-value").await;
    }

    // The holder of shard 1 dies without releasing its Lease.
    let dead_shard = 1u32;
    let victim = replicas.iter().position(|r| r.name == held[dead_shard as usize]).expect("the holder of shard 1");
    let victim = replicas.remove(victim);
    let victim_name = victim.name.clone();
    let survivor = replicas.iter().find(|r| r.name == held[0]).expect("the holder of shard 0");
    let survivor_writes = survivor.secret_writes().await;
    victim.kill().await;
    let killed = Instant::now();
    // Until a standby holds the dead shard, a vault event cannot reach its VaultSecrets: the survivor answers 503, so
    // Event Grid delivers it again later. (The same version: the survivor's own refresh finds nothing to write.)
    let current = env.vault.set_secret("takeover-object", "shard-takeover-value");
    assert_eq!(announce(&env, &grid, survivor, "takeover-object", &current).await, 503);
    let failed = r#"vaultsync_vault_event_forwards_total{result="failed"}"#;
    assert_eq!(metric_sum(survivor.port, failed).await, 1, "the survivor could not pass the delivery on");
    let taken = eventually(Duration::from_secs(15), "the standby to take the dead shard's Lease", || async {
        (holder(&env, dead_shard).await.as_deref() == Some("shard-z")).then(|| killed.elapsed())
    })
    .await;
    eprintln!("shard {dead_shard} taken over {taken:?} after its holder died (lease duration {LEASE_DURATION:?})");
    // The Lease expires at most one lease duration after the victim's last renewal; the standby looks every
    // seventh of it. Whole-second rounding of the Lease and one apiserver round trip are the rest.
    assert!(taken <= LEASE_DURATION + Duration::from_millis(1500), "took {taken:?}");
    let standby = replicas.iter().find(|r| r.name == "shard-z").expect("the standby");
    eventually(Duration::from_secs(10), "the standby's gauge to name the dead shard", || async {
        (standby.shard().await == i64::from(dead_shard)).then_some(())
    })
    .await;

    // A VaultSecret made in a namespace of the dead shard is synced by the new holder.
    let (orphaned, _) = namespaces.iter().find(|(_, owner)| *owner == dead_shard).expect("a namespace of shard 1");
    apply_vault_secret(orphaned, "after", &store, "takeover-object").await;
    wait_synced(orphaned, "after", "shard-takeover-value").await;
    assert_eq!(reporters(orphaned, "after").await.keys().collect::<Vec<_>>(), ["shard-z"]);

    // The new holder looked at the dead shard's VaultSecrets (checked against what was written, a GET each) and
    // wrote none of them again: its only Secret write is the new one's create. The other shard wrote nothing more.
    let before_in_dead_shard = namespaces.iter().filter(|(_, owner)| *owner == dead_shard).count() as u64;
    let port = standby.port;
    eventually(Duration::from_secs(20), "the new holder to check the dead shard's VaultSecrets", || async move {
        (metric_sum(port, r#"vaultsync_syncs_total{result="checked"}"#).await >= before_in_dead_shard).then_some(())
    })
    .await;
    assert_eq!(standby.secret_writes().await, 1, "the new holder wrote a Secret it did not create");
    assert_eq!(survivor.secret_writes().await, survivor_writes, "the other shard wrote after the takeover");
    for (ns, owner) in namespaces.iter().filter(|(_, owner)| *owner == dead_shard) {
        let seen = reporters(ns, "before").await;
        assert_eq!(seen.keys().collect::<Vec<_>>(), [&victim_name], "{}/before (shard {owner}): {seen:?}", ns.name);
    }

    // Event Grid delivers again once the shard has its new holder: now it reaches every VaultSecret.
    let rotated = env.vault.set_secret("takeover-object", "shard-takeover-rotated");
    assert_eq!(announce(&env, &grid, survivor, "takeover-object", &rotated).await, 200);
    for (ns, _) in &namespaces {
        wait_synced(ns, "before", "shard-takeover-rotated").await;
    }
    wait_synced(orphaned, "after", "shard-takeover-rotated").await;

    remove_vault_secrets(&namespaces).await;
    for replica in replicas {
        replica.kill().await;
    }
    env.finish().await;
}
