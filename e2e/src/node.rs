//! The node of the local cluster (`ControlPlane::shared_with_node`): the switch that skips node tests,
//! the images it runs (built by `scripts/build-images.sh`, imported into its containerd), and waiting for
//! pods and what they print.
//!
//! Pods on this node use the host network (there is no pod network); they reach the apiserver through
//! `KUBERNETES_SERVICE_HOST`/`PORT` set to its loopback address (`ControlPlane::service_env`).

use std::{
    collections::BTreeSet,
    path::PathBuf,
    process::Command,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{EnvVar, Pod},
};
use kube::{
    Api,
    api::{ListParams, LogParams},
};

use serde_json::{Value, json};

use crate::{ControlPlane, chart::repo_root, process::cache_dir};

/// Set to 1 to skip the tests that need the node (developers' inner loop); `make test` and CI run them.
pub const SKIP_NODE_TESTS: &str = "VAULTSYNC_SKIP_NODE_TESTS";

/// True when node tests are switched off: the test says so and returns.
pub fn skipped() -> bool {
    let skip = std::env::var(SKIP_NODE_TESTS).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("skipped: {SKIP_NODE_TESTS}=1 (make test runs it)");
    }
    skip
}

/// The pod sandbox image of the node.
pub const PAUSE_IMAGE: &str = "vaultsync-pause";
/// The test workload: prints the values of the environment variables and files it is told to watch.
pub const WORKLOAD_IMAGE: &str = "vaultsync-workload";
/// The operator, as the chart runs it.
pub const OPERATOR_IMAGE: &str = "vaultsync-operator";

/// The reference of an image built by `scripts/build-images.sh` (see `images/images.list`).
pub fn image(name: &str) -> String {
    format!("ghcr.io/vaultsync/{name}:{IMAGE_TAG}")
}

/// The tag of locally built images (the chart's default is the release's appVersion).
pub const IMAGE_TAG: &str = "dev";

/// The images a test binary builds when it does not need every image: see [`build_only`].
static SELECTED: OnceLock<Vec<String>> = OnceLock::new();

/// Limits the images this test binary builds to `names` and the sandbox image (a binary that runs no operator pod
/// need not build the operator's static binary). Call it before the control plane with a node starts; later calls
/// change nothing.
pub fn build_only(names: &[&str]) {
    let mut names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    if !names.iter().any(|n| n == PAUSE_IMAGE) {
        names.insert(0, PAUSE_IMAGE.to_string());
    }
    let _ = SELECTED.set(names);
}

/// The archive of a locally built image. The first call (re)builds every image whose program changed (or those of
/// [`build_only`]), as `make tools` does: the script is cached, and one cargo invocation for all images keeps cargo
/// from rebuilding between the two. When nothing changed it only asks cargo, which answers in a moment.
fn archive(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = Command::new(repo_root().join("scripts/build-images.sh"))
                .args(SELECTED.get().into_iter().flatten())
                .env("VAULTSYNC_CACHE", cache_dir())
                .output()
                .map_err(|e| format!("running scripts/build-images.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "scripts/build-images.sh failed ({}):\n{}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)?;
    if let Some(selected) = SELECTED.get() {
        anyhow::ensure!(selected.iter().any(|n| n == name), "image {name} is not among build_only's {selected:?}");
    }
    let path = cache_dir().join("images").join(format!("{name}.tar"));
    anyhow::ensure!(path.exists(), "no image {name}: is it in images/images.list?");
    Ok(path)
}

/// The arguments of `controlplane up` for a node with the sandbox image.
pub(crate) fn up_args() -> anyhow::Result<Vec<String>> {
    let pause = archive(PAUSE_IMAGE)?;
    Ok(vec![
        "--node".into(),
        "--sandbox-image".into(),
        image(PAUSE_IMAGE),
        "--image-archive".into(),
        pause.display().to_string(),
    ])
}

/// The running node: where its containerd listens, and what was imported into it.
pub struct Node {
    socket: PathBuf,
    name: String,
    imported: Mutex<BTreeSet<String>>,
}

impl Node {
    pub(crate) fn new(socket: &str, name: &str) -> Self {
        Self { socket: PathBuf::from(socket), name: name.to_string(), imported: Mutex::new(BTreeSet::new()) }
    }

    /// The Node object's name (also its address).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kubelet's root folder (`--root-dir`): `plugins_registry/` is where CSI plugins register, `pods/` holds the
    /// pods' volumes. `controlplane up` puts it beside containerd's socket, in the node's folder.
    pub fn kubelet_dir(&self) -> PathBuf {
        self.socket.parent().map(|dir| dir.join("kubelet")).unwrap_or_default()
    }
}

impl ControlPlane {
    /// The node; panics on a control plane started without one.
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("this control plane has no node: use ControlPlane::shared_with_node()")
    }

    /// Builds (when changed) and imports a local image into the node, once; returns its reference.
    /// Pods use it with `imagePullPolicy: Never`: nothing is pulled.
    pub fn import_image(&self, name: &str) -> String {
        let node = self.node();
        let mut imported = node.imported.lock().expect("image import lock");
        if !imported.contains(name) {
            let archive = archive(name).unwrap_or_else(|e| panic!("building image {name}: {e:#}"));
            let out = Command::new(crate::process::tool("ctr").expect("ctr is built"))
                .arg("--address")
                .arg(&node.socket)
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive)
                .output()
                .expect("running ctr");
            assert!(
                out.status.success(),
                "importing {}: {}{}",
                archive.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            imported.insert(name.to_string());
        }
        image(name)
    }

    /// The environment a host-network pod needs to reach the apiserver (in-cluster clients read it).
    pub fn service_env(&self) -> Vec<EnvVar> {
        let url = url_host_port(&self.server_url());
        [("KUBERNETES_SERVICE_HOST", url.0), ("KUBERNETES_SERVICE_PORT", url.1)]
            .into_iter()
            .map(|(name, value)| EnvVar { name: name.into(), value: Some(value), ..Default::default() })
            .collect()
    }
}

fn url_host_port(url: &str) -> (String, String) {
    let authority = url.trim_start_matches("https://").trim_end_matches('/');
    let (host, port) = authority.rsplit_once(':').expect("the apiserver URL has a port");
    (host.to_string(), port.to_string())
}

/// A Deployment `name` (pods labelled `app: <name>`) of the test workload, on the host network, that prints
/// `key` of Secret `secret` from its environment (`VALUE`) and from a volume (`/etc/secret/<key>`); `labels` go on
/// the Deployment (e.g. `vaultsync.dev/reload`).
pub fn workload_deployment(name: &str, image: &str, secret: &str, key: &str, labels: Value) -> Deployment {
    let file = format!("/etc/secret/{key}");
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "hostNetwork": true,
                    "containers": [{
                        "name": "reader",
                        "image": image,
                        "imagePullPolicy": "Never",
                        "args": ["--env", "VALUE", "--file", file],
                        "env": [{ "name": "VALUE", "valueFrom": { "secretKeyRef": { "name": secret, "key": key } } }],
                        "volumeMounts": [{ "name": "secret", "mountPath": "/etc/secret", "readOnly": true }],
                    }],
                    "volumes": [{ "name": "secret", "secret": { "secretName": secret } }],
                }
            }
        }
    }))
    .expect("workload deployment")
}

/// What the workload of `workload_deployment` prints when its environment variable and file hold `value`.
pub fn workload_lines(key: &str, value: &str) -> [String; 2] {
    [format!("env VALUE={value:?}"), format!("file /etc/secret/{key}={value:?}")]
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// What a pod's status says, for failure messages: phase, conditions, container states.
pub fn describe(pod: &Pod) -> String {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(status) = &pod.status else { return format!("{name}: no status") };
    let conditions: Vec<String> = status
        .conditions
        .iter()
        .flatten()
        .map(|c| format!("{}={} {}", c.type_, c.status, c.message.clone().unwrap_or_default()))
        .collect();
    let containers: Vec<String> =
        status.container_statuses.iter().flatten().map(|c| format!("{}: {:?}", c.name, c.state)).collect();
    format!("{name}: phase {:?}, {conditions:?}, {containers:?}", status.phase)
}

/// Waits until the pods matching `selector` satisfy `check`, then returns them; fails after
/// `timeout` with the pods' states.
pub async fn wait_for_pods(
    pods: &Api<Pod>,
    selector: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&[Pod]) -> bool,
) -> Vec<Pod> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let list = pods.list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default();
        if check(&list) {
            return list;
        }
        if tokio::time::Instant::now() > deadline {
            let states: Vec<String> = list.iter().map(describe).collect();
            panic!("timed out after {timeout:?} waiting for {what}; pods {selector}: {states:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the log of pod `name` (read through the apiserver from the kubelet, as `kubectl logs`
/// does) has a line equal to `line`; fails after `timeout` with the log so far.
pub async fn wait_for_log_line(pods: &Api<Pod>, name: &str, line: &str, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match pods.logs(name, &LogParams::default()).await {
            Ok(log) if log.lines().any(|l| l == line) => return,
            Ok(log) => log,
            Err(e) => format!("(no log: {e})"),
        };
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for pod {name} to print {line:?}; its log:\n{last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
