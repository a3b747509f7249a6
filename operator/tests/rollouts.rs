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

/// The sum of the operator's rollout checks with `result` (`baseline`, `rolled`, `unchanged`, `paused`).
async fn rollout_checks(env: &Env, result: &str) -> u64 {
    let mut total = 0;
    for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
        total += env.metric(&format!(r#"vaultsync_rollouts_total{{kind="{kind}",result="{result}"}}"#)).await;
    }
    total
}

/// Waits until the operator has made `count` more rollout checks with `result` than `before`.
async fn wait_checks(env: &Env, result: &str, before: u64, count: u64) {
    let what = format!("{count} more rollout check(s) with result {result}");
    eventually(Duration::from_secs(30), &what, || async {
        (rollout_checks(env, result).await >= before + count).then_some(())
    })
    .await;
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
    // First sync: a baseline is recorded on both consumers, the pod templates are not touched.
    wait_checks(&env, "baseline", 0, 2).await;
    for app in ["explicit", "labelled", "unlabelled"] {
        assert_eq!(replica_sets(&env, app).await, 1, "{app}: no rollout on the first sync");
    }

    rotate(&env, "db", "db", "v2-value", "1").await;
    wait_replica_sets(&env, "explicit", 2).await;
    wait_replica_sets(&env, "labelled", 2).await;
    assert_eq!(rollout_checks(&env, "rolled").await, 2, "exactly one rollout each");
    assert_eq!(replica_sets(&env, "unlabelled").await, 1, "an unlabelled consumer is left alone");
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "Deployment", "explicit").await;
    assert!(events.iter().any(|e| e == "RolledOut"), "{events:?}");
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "db").await;
    assert!(events.iter().any(|e| e == "RolloutTriggered"), "{events:?}");

    // Nothing changed: a GitOps re-apply of the labelled consumer (checked again: unchanged), an operator restart
    // (every consumer checked again: unchanged). No new ReplicaSet.
    let unchanged = rollout_checks(&env, "unchanged").await;
    apply_workload(&env, "Deployment", "labelled", json!({ "vaultsync.dev/reload": "true", "re": "applied" }), "db")
        .await;
    wait_checks(&env, "unchanged", unchanged, 1).await;
    let mut env = env;
    env.stop_operator().await;
    env.start_operator();
    env.wait_metric_at_least(r#"vaultsync_rollouts_total{kind="Deployment",result="unchanged"}"#, 1).await;
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
    wait_checks(&env, "baseline", 0, 1).await;

    // Two secrets rotated within a second, and one of them twice: one rollout.
    rotate(&env, "a", "a", "a2", "1").await;
    rotate(&env, "b", "b", "b2", "1").await;
    rotate(&env, "a", "a", "a3", "2").await;
    wait_replica_sets(&env, "web", 2).await;
    assert_eq!(rollout_checks(&env, "rolled").await, 1, "one rollout for changes within the window");

    // A change after the window: a second rollout.
    rotate(&env, "b", "b", "b3", "2").await;
    wait_replica_sets(&env, "web", 3).await;
    assert_eq!(rollout_checks(&env, "rolled").await, 2);
    env.finish().await;
}

#[tokio::test]
async fn stateful_sets_and_daemon_sets_are_rolled_and_paused_deployments_wait_with_one_event() {
    let env = Env::start("rollout-kinds").await;
    env.vault.set_secret("cfg", "c1");
    apply_workload(&env, "StatefulSet", "db", json!({}), "cfg").await;
    apply_workload(&env, "DaemonSet", "agent", json!({}), "cfg").await;
    // The paused Deployment is labelled: its changes (a resume) are watched.
    apply_workload(&env, "Deployment", "paused", json!({ "vaultsync.dev/reload": "true" }), "cfg").await;
    let deployments = env.ns.api::<Deployment>();
    let patch = json!({ "spec": { "paused": true } });
    deployments.patch("paused", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("pause");
    wait_replica_sets(&env, "paused", 1).await;
    let targets = json!([{ "kind": "StatefulSet", "name": "db" }, { "kind": "DaemonSet", "name": "agent" }]);
    env.apply_vault_secret("cfg", with_rollout(one_key("k", "cfg"), targets, "1s")).await;
    env.wait_secret_value("cfg", "k", "c1").await;
    wait_checks(&env, "baseline", 0, 3).await;
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
    wait_checks(&env, "paused", 0, 1).await;
    // Checked again while still paused (a change to the Deployment wakes the check): still one Event.
    let note = json!({ "metadata": { "annotations": { "note": "still paused" } } });
    deployments.patch("paused", &PatchParams::default(), &Patch::Merge(&note)).await.expect("annotate");
    wait_checks(&env, "paused", 1, 1).await;
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "Deployment", "paused").await;
    assert_eq!(events.iter().filter(|e| *e == "RolloutSkipped").count(), 1, "one Event per change: {events:?}");
    assert!(!events.contains(&"RolledOut".to_string()));
    let paused = serde_json::to_value(deployments.get("paused").await.expect("paused")).expect("json");
    assert!(template_hash(paused).is_null(), "a paused Deployment's template is not touched");

    // Resumed: it rolls once.
    let resume = json!({ "spec": { "paused": false } });
    deployments.patch("paused", &PatchParams::default(), &Patch::Merge(&resume)).await.expect("resume");
    wait_replica_sets(&env, "paused", 2).await;
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "Deployment", "paused").await;
    assert!(events.contains(&"RolledOut".to_string()), "{events:?}");
    env.finish().await;
}

#[tokio::test]
async fn sources_coming_and_going_and_a_replaced_hmac_key_roll_nothing() {
    let mut env = Env::start("rollout-sources").await;
    env.vault.set_secret("a", "a1");
    env.vault.set_secret("b", "b1");
    // A labelled consumer of two Secrets.
    let mut template = pod_template("two", "a");
    template["spec"]["containers"][0]["envFrom"] =
        json!([{ "secretRef": { "name": "a" } }, { "secretRef": { "name": "b" } }]);
    let body = json!({ "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "two", "labels": { "vaultsync.dev/reload": "true" } },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "two" } }, "template": template } });
    let deployments = env.ns.api::<Deployment>();
    deployments.patch("two", &PatchParams::apply("gitops").force(), &Patch::Apply(&body)).await.expect("deployment");
    env.apply_vault_secret("a", one_key("k", "a")).await;
    env.wait_secret_value("a", "k", "a1").await;
    wait_checks(&env, "baseline", 0, 1).await;
    // A second source arrives (first sync): a new record, not a rollout.
    env.apply_vault_secret("b", one_key("k", "b")).await;
    env.wait_secret_value("b", "k", "b1").await;
    wait_checks(&env, "baseline", 1, 1).await;
    wait_replica_sets(&env, "two", 1).await;

    // A source goes away (its VaultSecret deleted); a scale wakes the check: a new record, not a rollout.
    env.ns.api::<vaultsync_api::VaultSecret>().delete("a", &Default::default()).await.expect("delete");
    let scale = json!({ "spec": { "replicas": 2 } });
    let baselines = rollout_checks(&env, "baseline").await;
    eventually(Duration::from_secs(20), "VaultSecret a to be gone", || async {
        env.ns.api::<vaultsync_api::VaultSecret>().get_opt("a").await.ok()?.is_none().then_some(())
    })
    .await;
    deployments.patch("two", &PatchParams::default(), &Patch::Merge(&scale)).await.expect("scale");
    wait_checks(&env, "baseline", baselines, 1).await;
    assert_eq!(replica_sets(&env, "two").await, 1, "no rollout when a source goes away");

    // The HMAC key is lost and replaced: every digest is new, none is a change.
    env.stop_operator().await;
    env.ns
        .api::<k8s_openapi::api::core::v1::Secret>()
        .delete("vaultsync-hmac-key", &Default::default())
        .await
        .expect("key");
    env.start_operator();
    env.annotate("b", "vaultsync.dev/force-sync", "after-the-key").await;
    env.wait_metric_at_least(r#"vaultsync_rollouts_total{kind="Deployment",result="baseline"}"#, 1).await;
    assert_eq!(rollout_checks(&env, "rolled").await, 0);
    assert_eq!(replica_sets(&env, "two").await, 1, "a replaced key rolls nothing");
    // The next real change, under the new key, rolls.
    env.vault.set_secret("b", "b2");
    env.annotate("b", "vaultsync.dev/force-sync", "changed").await;
    wait_replica_sets(&env, "two", 2).await;
    env.finish().await;
}
