//! Rotation reaches the pods: a changed secret rolls the workloads that use it exactly once, on
//! the real controller manager (a new ReplicaSet), and nothing else does.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};
use support::{Env, one_key};
use vaultsync_e2e::eventually;

fn pod_template(app: &str, secret: &str) -> Value {
    json!({
        "metadata": { "labels": { "app": app } },
        "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1",
            "envFrom": [{ "secretRef": { "name": secret } }] }] }
    })
}

/// Applies a workload manifest as a GitOps tool would (its own field manager).
async fn apply_workload(env: &Env, kind: &str, name: &str, labels: Value, secret: &str) {
    let mut spec = json!({ "selector": { "matchLabels": { "app": name } }, "template": pod_template(name, secret) });
    if kind == "StatefulSet" {
        spec["serviceName"] = json!(name);
    }
    if kind != "DaemonSet" {
        spec["replicas"] = json!(1);
    }
    let body = json!({ "apiVersion": "apps/v1", "kind": kind,
        "metadata": { "name": name, "labels": labels }, "spec": spec });
    let params = PatchParams::apply("gitops").force();
    let ns = &env.ns;
    match kind {
        "Deployment" => {
            drop(ns.api::<Deployment>().patch(name, &params, &Patch::Apply(&body)).await.expect("deployment"))
        }
        "StatefulSet" => drop(ns.api::<StatefulSet>().patch(name, &params, &Patch::Apply(&body)).await.expect("sts")),
        _ => drop(ns.api::<DaemonSet>().patch(name, &params, &Patch::Apply(&body)).await.expect("ds")),
    }
}

async fn replica_sets(env: &Env, app: &str) -> usize {
    let api: Api<ReplicaSet> = env.ns.api();
    api.list(&ListParams::default().labels(&format!("app={app}"))).await.expect("replica sets").items.len()
}

async fn wait_replica_sets(env: &Env, app: &str, count: usize) {
    eventually(Duration::from_secs(30), &format!("{count} ReplicaSet(s) of {app}"), || async {
        (replica_sets(env, app).await == count).then_some(())
    })
    .await;
}

async fn rotate(env: &Env, vs: &str, object: &str, value: &str, nonce: &str) {
    env.vault.set_secret(object, value);
    env.annotate(vs, "vaultsync.dev/force-sync", nonce).await;
    env.wait_secret_value(vs, "k", value).await;
}

fn with_rollout(mut spec: Value, targets: Value, debounce: &str) -> Value {
    spec["rollout"] = json!({ "targets": targets, "debounce": debounce });
    spec
}

#[tokio::test]
async fn a_rotation_rolls_explicit_targets_and_labelled_consumers_once() {
    let env = Env::start("rollout-basic").await;
    env.vault.set_secret("db", "v1-value");
    apply_workload(&env, "Deployment", "explicit", json!({}), "unrelated").await;
    apply_workload(&env, "Deployment", "labelled", json!({ "vaultsync.dev/reload": "true" }), "db").await;
    apply_workload(&env, "Deployment", "unlabelled", json!({}), "db").await;
    let spec = with_rollout(one_key("k", "db"), json!([{ "kind": "Deployment", "name": "explicit" }]), "1s");
    env.apply_vault_secret("db", spec.clone()).await;
    env.wait_secret_value("db", "k", "v1-value").await;
    for app in ["explicit", "labelled", "unlabelled"] {
        wait_replica_sets(&env, app, 1).await;
    }
    // First sync: a baseline is recorded on the workload, the pod template is not touched.
    let deployments: Api<Deployment> = env.ns.api();
    eventually(Duration::from_secs(15), "a baseline on the explicit target", || async {
        let d = deployments.get("explicit").await.ok()?;
        d.metadata.annotations?.contains_key("vaultsync.dev/observed-content-hash").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for app in ["explicit", "labelled", "unlabelled"] {
        assert_eq!(replica_sets(&env, app).await, 1, "{app}: no rollout on the first sync");
    }

    rotate(&env, "db", "db", "v2-value", "1").await;
    wait_replica_sets(&env, "explicit", 2).await;
    wait_replica_sets(&env, "labelled", 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(replica_sets(&env, "unlabelled").await, 1, "an unlabelled consumer is left alone");
    assert_eq!(replica_sets(&env, "explicit").await, 2, "exactly one rollout");
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "Deployment", "explicit").await;
    assert!(events.iter().any(|e| e == "RolledOut"), "{events:?}");
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "db").await;
    assert!(events.iter().any(|e| e == "RolloutTriggered"), "{events:?}");

    // Nothing changed: a forced refresh with the same content, a GitOps re-apply, an operator
    // restart. No new ReplicaSet.
    env.annotate("db", "vaultsync.dev/force-sync", "same-content").await;
    apply_workload(&env, "Deployment", "explicit", json!({}), "unrelated").await;
    apply_workload(&env, "Deployment", "labelled", json!({ "vaultsync.dev/reload": "true" }), "db").await;
    let mut env = env;
    env.stop_operator().await;
    env.start_operator();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(replica_sets(&env, "explicit").await, 2, "no rollout without a content change");
    assert_eq!(replica_sets(&env, "labelled").await, 2, "no rollout without a content change");
    env.finish().await;
}

#[tokio::test]
async fn rotations_within_the_debounce_window_give_one_rollout() {
    let env = Env::start("rollout-debounce").await;
    env.vault.set_secret("a", "a1");
    env.vault.set_secret("b", "b1");
    apply_workload(&env, "Deployment", "web", json!({}), "x").await;
    let targets = json!([{ "kind": "Deployment", "name": "web" }]);
    env.apply_vault_secret("a", with_rollout(one_key("k", "a"), targets.clone(), "4s")).await;
    env.apply_vault_secret("b", with_rollout(one_key("k", "b"), targets, "4s")).await;
    env.wait_secret_value("a", "k", "a1").await;
    env.wait_secret_value("b", "k", "b1").await;
    wait_replica_sets(&env, "web", 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await; // baseline recorded

    // Two secrets rotated within a second, and one of them twice: one rollout.
    rotate(&env, "a", "a", "a2", "1").await;
    rotate(&env, "b", "b", "b2", "1").await;
    rotate(&env, "a", "a", "a3", "2").await;
    wait_replica_sets(&env, "web", 2).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(replica_sets(&env, "web").await, 2, "one rollout for changes within the window");

    // A change after the window: a second rollout.
    rotate(&env, "b", "b", "b3", "2").await;
    wait_replica_sets(&env, "web", 3).await;
    env.finish().await;
}

#[tokio::test]
async fn stateful_sets_and_daemon_sets_are_rolled_and_paused_deployments_skipped() {
    let env = Env::start("rollout-kinds").await;
    env.vault.set_secret("cfg", "c1");
    apply_workload(&env, "StatefulSet", "db", json!({}), "cfg").await;
    apply_workload(&env, "DaemonSet", "agent", json!({}), "cfg").await;
    apply_workload(&env, "Deployment", "paused", json!({}), "cfg").await;
    let patch = json!({ "spec": { "paused": true } });
    env.ns.api::<Deployment>().patch("paused", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("pause");
    let targets = json!([
        { "kind": "StatefulSet", "name": "db" }, { "kind": "DaemonSet", "name": "agent" },
        { "kind": "Deployment", "name": "paused" },
    ]);
    env.apply_vault_secret("cfg", with_rollout(one_key("k", "cfg"), targets, "1s")).await;
    env.wait_secret_value("cfg", "k", "c1").await;
    tokio::time::sleep(Duration::from_secs(3)).await; // baselines
    rotate(&env, "cfg", "cfg", "c2", "1").await;

    let template_hash =
        |value: Value| value["spec"]["template"]["metadata"]["annotations"]["vaultsync.dev/content-hash"].clone();
    let statefulsets: Api<StatefulSet> = env.ns.api();
    let daemonsets: Api<DaemonSet> = env.ns.api();
    eventually(Duration::from_secs(20), "both templates patched", || async {
        let sts = serde_json::to_value(statefulsets.get("db").await.ok()?).ok()?;
        let ds = serde_json::to_value(daemonsets.get("agent").await.ok()?).ok()?;
        (template_hash(sts).is_string() && template_hash(ds).is_string()).then_some(())
    })
    .await;
    let events = eventually(Duration::from_secs(20), "a RolloutSkipped event", || async {
        let events = vaultsync_e2e::controlplane::events_for(&env.ns, "Deployment", "paused").await;
        events.iter().any(|e| e == "RolloutSkipped").then_some(events)
    })
    .await;
    assert!(!events.contains(&"RolledOut".to_string()));
    let paused = serde_json::to_value(env.ns.api::<Deployment>().get("paused").await.expect("paused")).expect("json");
    assert!(template_hash(paused).is_null(), "a paused Deployment's template is not touched");
    env.finish().await;
}
