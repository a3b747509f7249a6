//! Pods on a real node (containerd, runc, a kubelet and kube-scheduler; images built here and imported):
//! - a workload reads a Secret from its environment and from a volume; a changed Secret reaches the file;
//!   a new pod template makes a new pod that starts with the new value while the old one terminates;
//! - the Helm chart runs the operator as users run it: its pod starts with the chart's service account and
//!   nothing else, wins the Lease, answers the kubelet's probes and syncs a VaultSecret;
//! - a rotation in the vault rolls a workload that reads the synced Secret to a new ReplicaSet, whose pod
//!   sees the new value, and the old pod goes.
//!
//! Pods use the host network (the node has no pod network). `VAULTSYNC_SKIP_NODE_TESTS=1` skips these tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    coordination::v1::Lease,
    core::v1::{Pod, Secret},
    rbac::v1::{ClusterRole, Role},
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use vaultsync_api::{VaultSecret, VaultStore};
use vaultsync_e2e::{
    ControlPlane, TestNamespace,
    azure::AzureVault,
    chart::{CHART, HelmTools, assert_success},
    eventually, install_crds,
    node::{
        self, OPERATOR_IMAGE, WORKLOAD_IMAGE, pod_ready, wait_for_log_line, wait_for_pods, workload_deployment,
        workload_lines,
    },
    process::free_port,
};

/// Pod start-up on this node takes seconds; the margin is for a loaded machine.
const POD_TIMEOUT: Duration = Duration::from_secs(90);

async fn wait_for_values(pods: &Api<Pod>, pod: &str, key: &str, value: &str) {
    for line in workload_lines(key, value) {
        wait_for_log_line(pods, pod, &line, POD_TIMEOUT).await;
    }
}

fn name_of(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

/// The one ready pod of `app`.
async fn ready_pod(pods: &Api<Pod>, app: &str) -> String {
    let ready = wait_for_pods(pods, &format!("app={app}"), POD_TIMEOUT, &format!("a ready {app} pod"), |p| {
        p.len() == 1 && pod_ready(&p[0])
    })
    .await;
    name_of(&ready[0])
}

/// After a rollout: a ready pod other than `old`, and `old` gone; returns the new pod's name.
async fn rolled_pod(pods: &Api<Pod>, app: &str, old: &str) -> String {
    let selector = format!("app={app}");
    let fresh = wait_for_pods(pods, &selector, POD_TIMEOUT, "a new ready pod", |p| {
        p.iter().any(|p| name_of(p) != old && pod_ready(p))
    })
    .await;
    let new = fresh.iter().map(name_of).find(|n| n != old).expect("the new pod");
    wait_for_pods(pods, &selector, POD_TIMEOUT, "the old pod to terminate and go", |p| {
        p.iter().all(|p| name_of(p) != old)
    })
    .await;
    new
}

async fn replica_set_hashes(ns: &TestNamespace, app: &str) -> Vec<String> {
    let list = ns.api::<ReplicaSet>().list(&ListParams::default().labels(&format!("app={app}"))).await;
    list.expect("listing ReplicaSets")
        .items
        .iter()
        .filter_map(|rs| rs.metadata.labels.as_ref()?.get("pod-template-hash").cloned())
        .collect()
}

fn secret(name: &str, key: &str, value: &str) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some(BTreeMap::from([(key.into(), value.into())])),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_pod_reads_a_secret_from_env_and_a_volume_and_a_new_template_rolls_it() {
    if node::skipped() {
        return;
    }
    let plane = ControlPlane::shared_with_node();
    let image = plane.import_image(WORKLOAD_IMAGE);
    let ns = TestNamespace::on(plane, "node-secret").await;
    let secrets: Api<Secret> = ns.api();
    secrets.create(&PostParams::default(), &secret("app-secret", "password", "first-value")).await.expect("Secret");
    let deployments: Api<Deployment> = ns.api();
    let deployment = workload_deployment("reader", &image, "app-secret", "password", json!({}));
    deployments.create(&PostParams::default(), &deployment).await.expect("Deployment");

    let pods: Api<Pod> = ns.api();
    let first = ready_pod(&pods, "reader").await;
    wait_for_values(&pods, &first, "password", "first-value").await;

    // A changed Secret reaches the running pod's file; its environment keeps the value it started with.
    secrets
        .replace("app-secret", &PostParams::default(), &{
            let mut s = secrets.get("app-secret").await.expect("the Secret");
            s.data = None;
            s.string_data = Some(BTreeMap::from([("password".into(), "second-value".into())]));
            s
        })
        .await
        .expect("updating the Secret");
    let [env_line, file_line] = workload_lines("password", "second-value");
    wait_for_log_line(&pods, &first, &file_line, POD_TIMEOUT).await;
    let log = pods.logs(&first, &Default::default()).await.expect("the first pod's log");
    assert!(!log.lines().any(|l| l == env_line), "the environment does not change in a running pod:\n{log}");

    // A new pod template: a new pod starts with the new value in both places, the old one terminates.
    let patch = json!({ "spec": { "template": { "metadata": { "annotations": { "example.com/restarted": "1" } } } } });
    deployments.patch("reader", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patching the template");
    let second = rolled_pod(&pods, "reader", &first).await;
    wait_for_values(&pods, &second, "password", "second-value").await;
    let hashes = replica_set_hashes(&ns, "reader").await;
    assert_eq!(hashes.len(), 2, "a second ReplicaSet: {hashes:?}");
    assert_ne!(hashes[0], hashes[1]);
}

/// The chart, installed as the tests run it on this node: host network, the apiserver's loopback address
/// in the environment, the operator scoped to the test namespace (tests run side by side), a free metrics
/// port, and the locally built image.
async fn install_operator(plane: &ControlPlane, ns: &TestNamespace, tools: &HelmTools) -> u16 {
    install_crds(&ns.client).await;
    let image = plane.import_image(OPERATOR_IMAGE);
    let tag = image.rsplit_once(':').expect("image tag").1.to_string();
    let metrics_port = free_port().expect("a free port");
    let mut env: Vec<Value> = plane.service_env().iter().map(|e| json!({ "name": e.name, "value": e.value })).collect();
    env.push(json!({ "name": "VAULTSYNC_WATCH_NAMESPACE", "value": ns.name }));
    env.push(json!({ "name": "RUST_LOG", "value": "info" }));
    let out = tools
        .helm(&[
            "install",
            "vs",
            CHART,
            "--namespace",
            &ns.name,
            "--skip-crds",
            "--set",
            &format!("image.tag={tag}"),
            "--set",
            "image.pullPolicy=Never",
            "--set",
            "hostNetwork=true",
            // One replica per node on the host network: the metrics port is the node's.
            "--set",
            "replicaCount=1",
            "--set",
            &format!("metrics.port={metrics_port}"),
            "--set-json",
            &format!("operator.extraEnv={}", Value::Array(env)),
        ])
        .await;
    assert_success(&out, "helm install");
    metrics_port
}

async fn apply<K>(api: &Api<K>, body: Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = body["metadata"]["name"].as_str().expect("name").to_string();
    api.patch(&name, &PatchParams::apply("node-test").force(), &Patch::Apply(&body)).await.expect("applying");
}

/// The last lines the chart's operator pods logged, for failure messages.
async fn operator_log(ns: &TestNamespace) -> String {
    let pods: Api<Pod> = ns.api();
    let list = pods.list(&ListParams::default().labels("app.kubernetes.io/instance=vs")).await;
    let mut out = String::new();
    for pod in list.map(|l| l.items).unwrap_or_default() {
        let params = kube::api::LogParams { tail_lines: Some(30), ..Default::default() };
        let log = pods.logs(&name_of(&pod), &params).await.unwrap_or_else(|e| format!("(no log: {e})"));
        out.push_str(&format!("--- {}\n{log}", name_of(&pod)));
    }
    out
}

/// Waits until the VaultSecret's Ready condition has `reason`.
async fn wait_reason(ns: &TestNamespace, name: &str, reason: &str) {
    let api = ns.api::<VaultSecret>();
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + POD_TIMEOUT;
    loop {
        if let Ok(vs) = api.get(name).await {
            let ready = vs.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
            if ready.as_ref().is_some_and(|c| c.reason == reason) {
                return;
            }
            last = format!("{ready:?}");
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "VaultSecret {name} never became {reason}; last: {last}; the operator's log:\n{}",
                operator_log(ns).await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_secret_value(ns: &TestNamespace, name: &str, key: &str, value: &str) {
    let secrets = ns.api::<Secret>();
    eventually(POD_TIMEOUT, &format!("Secret {name} to hold the new {key}"), || async {
        let secret = secrets.get_opt(name).await.ok()??;
        (secret.data?.get(key)?.0 == value.as_bytes()).then_some(())
    })
    .await;
}

/// A store `kv` on the test Key Vault and a VaultSecret `db` that writes `password` into Secret `db`.
async fn sync_db_password(ns: &TestNamespace, azure: &AzureVault, value: &str) {
    azure.vault.set_secret("db-password", value);
    let store = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultStore",
        "metadata": { "name": "kv" }, "spec": azure.store_spec() });
    apply(&ns.api::<VaultStore>(), store).await;
    let vault_secret = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
        "metadata": { "name": "db" },
        "spec": { "storeRef": { "name": "kv" }, "refreshInterval": "1h",
            "data": [{ "secretKey": "password", "remoteRef": { "name": "db-password" } }] } });
    apply(&ns.api::<VaultSecret>(), vault_secret).await;
    wait_reason(ns, "db", "Synced").await;
    wait_secret_value(ns, "db", "password", value).await;
}

/// `kubectl auth can-i --list` for a service account of the namespace, as (resource, verb) pairs; the resource
/// as kubectl prints it, `name[.group][/subresource]`.
async fn can_i_list(tools: &HelmTools, ns: &TestNamespace, account: &str) -> BTreeSet<(String, String)> {
    let user = format!("--as=system:serviceaccount:{}:{account}", ns.name);
    let out = tools.kubectl(&["auth", "can-i", "--list", "--namespace", &ns.name, &user], None).await;
    assert_success(&out, "kubectl auth can-i --list");
    let table = String::from_utf8_lossy(&out.stdout);
    let mut out = BTreeSet::new();
    for line in table.lines().skip(1) {
        let Some(resource) = line.split_whitespace().next().filter(|r| !r.starts_with('[')) else { continue };
        let verbs = line.rsplit_once('[').map(|(_, v)| v.trim_end_matches(']')).unwrap_or_default();
        for verb in verbs.split_whitespace() {
            out.insert((resource.to_string(), verb.to_string()));
        }
    }
    out
}

/// The rules of the release's Role and ClusterRole, in the form of `can_i_list`.
async fn chart_rules(ns: &TestNamespace) -> BTreeSet<(String, String)> {
    let role = ns.api::<Role>().get("vs-vaultsync").await.expect("the chart's Role");
    let cluster_role = Api::<ClusterRole>::all(ns.client.clone())
        .get(&format!("vs-vaultsync-{}", ns.name))
        .await
        .expect("the chart's ClusterRole");
    let mut out = BTreeSet::new();
    for rule in role.rules.into_iter().chain(cluster_role.rules).flatten() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let (base, sub) =
                    resource.split_once('/').map_or((resource.as_str(), String::new()), |(b, s)| (b, format!("/{s}")));
                let name = if group.is_empty() { format!("{base}{sub}") } else { format!("{base}.{group}{sub}") };
                for verb in &rule.verbs {
                    out.insert((name.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn the_chart_runs_the_operator_on_the_node_as_its_service_account() {
    if node::skipped() {
        return;
    }
    let plane = ControlPlane::shared_with_node();
    let ns = TestNamespace::on(plane, "node-chart").await;
    let tools = HelmTools::on(plane);
    let metrics_port = install_operator(plane, &ns, &tools).await;

    // The pod starts, with the chart's service account, and the kubelet's readiness probe (/readyz) passes.
    let pods: Api<Pod> = ns.api();
    let selector = "app.kubernetes.io/instance=vs";
    let ready = wait_for_pods(&pods, selector, POD_TIMEOUT, "the operator pod to be ready", |p| {
        p.len() == 1 && pod_ready(&p[0])
    })
    .await;
    let pod = &ready[0];
    let spec = pod.spec.as_ref().expect("pod spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("vs-vaultsync"));
    assert_eq!(spec.host_network, Some(true));
    let operator = name_of(pod);

    // It wins the Lease, under its pod name.
    let leases: Api<Lease> = ns.api();
    eventually(POD_TIMEOUT, "the operator to hold the Lease", || async {
        let lease = leases.get_opt("vs-vaultsync").await.ok()??;
        (lease.spec?.holder_identity? == operator).then_some(())
    })
    .await;
    let readyz = reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz")).await.expect("GET /readyz");
    assert_eq!(readyz.status(), 200, "the probe's endpoint answers on the node");

    // It syncs a VaultSecret with the chart's rights only: a missing rule would fail here.
    let azure = AzureVault::start(&ns).await;
    sync_db_password(&ns, &azure, "first-value").await;
    let vs = ns.api::<VaultSecret>().get("db").await.expect("the VaultSecret");
    assert!(
        vs.metadata.finalizers.iter().flatten().any(|f| f.starts_with("vaultsync.dev/")),
        "the operator put its finalizer on the VaultSecret: {:?}",
        vs.metadata.finalizers
    );

    // No right beyond the chart's Role and ClusterRole reaches the service account (no other binding applies);
    // the chart tests check that those are exactly what the operator needs.
    let granted = can_i_list(&tools, &ns, "vs-vaultsync").await;
    let chart = chart_rules(&ns).await;
    let missing: Vec<_> = chart.difference(&granted).collect();
    assert!(missing.is_empty(), "kubectl auth can-i --list lacks the chart's rules {missing:?}: {granted:?}");
    // What every service account may do (review itself, read public information), as one without bindings sees it.
    let baseline = can_i_list(&tools, &ns, "nobody").await;
    let excess: Vec<_> = granted.iter().filter(|r| !chart.contains(r) && !baseline.contains(r)).collect();
    assert!(excess.is_empty(), "rights the chart does not grant: {excess:?}");

    let out = tools.helm(&["uninstall", "vs", "--namespace", &ns.name, "--wait"]).await;
    assert_success(&out, "helm uninstall");
    wait_for_pods(&pods, selector, POD_TIMEOUT, "the operator pod to go", |p| p.is_empty()).await;
}

#[tokio::test]
async fn a_rotation_rolls_a_workload_to_a_pod_that_reads_the_new_value() {
    if node::skipped() {
        return;
    }
    let plane = ControlPlane::shared_with_node();
    let ns = TestNamespace::on(plane, "node-rollout").await;
    let tools = HelmTools::on(plane);
    install_operator(plane, &ns, &tools).await;
    let azure = AzureVault::start(&ns).await;
    sync_db_password(&ns, &azure, "first-value").await;

    // A workload labelled for rollouts reads the synced Secret.
    let image = plane.import_image(WORKLOAD_IMAGE);
    let deployments: Api<Deployment> = ns.api();
    let workload = workload_deployment("app", &image, "db", "password", json!({ "vaultsync.dev/reload": "true" }));
    deployments.create(&PostParams::default(), &workload).await.expect("Deployment");
    let pods: Api<Pod> = ns.api();
    let first = ready_pod(&pods, "app").await;
    wait_for_values(&pods, &first, "password", "first-value").await;
    assert_eq!(replica_set_hashes(&ns, "app").await.len(), 1);

    // The vault object rotates; a forced sync picks it up and the operator rolls the workload.
    azure.vault.set_secret("db-password", "second-value");
    let force = json!({ "metadata": { "annotations": { "vaultsync.dev/force-sync": "rotation-1" } } });
    ns.api::<VaultSecret>().patch("db", &PatchParams::default(), &Patch::Merge(&force)).await.expect("force-sync");
    wait_secret_value(&ns, "db", "password", "second-value").await;
    let second = rolled_pod(&pods, "app", &first).await;
    wait_for_values(&pods, &second, "password", "second-value").await;
    let hashes = replica_set_hashes(&ns, "app").await;
    assert_eq!(hashes.len(), 2, "the rollout made a new ReplicaSet: {hashes:?}");
}
