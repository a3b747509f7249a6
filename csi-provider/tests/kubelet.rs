//! Mode 2 on a real kubelet: the node plugin registers itself through kubelet's plugin registration
//! socket, the chart's CSIDriver object tells kubelet how to call it, and a real pod (host network,
//! the test workload image) with an inline volume naming a VaultSecret starts with the files; a
//! rotation in the vault reaches the file the running pod reads through kubelet's republish
//! (`requiresRepublish`), and deleting the pod unpublishes the volume (the tmpfs is gone). The pod's
//! own service-account token (the CSIDriver's `tokenRequests`) is exchanged at the Entra test server
//! for the Key Vault test server. `VAULTSYNC_SKIP_NODE_TESTS=1` skips it.

mod support;

use std::{os::unix::fs::MetadataExt as _, path::PathBuf, time::Duration};

use k8s_openapi::api::{
    core::v1::Pod,
    storage::v1::{CSIDriver, CSINode},
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::json;
use support::*;
use vaultsync_csi::mount::is_mount_point;
use vaultsync_e2e::{
    ControlPlane, TestNamespace,
    chart::HelmTools,
    eventually,
    keyvault::Op,
    node::{self, PAUSE_IMAGE, WORKLOAD_IMAGE, pod_ready, wait_for_log_line, wait_for_pods},
};

const DRIVER: &str = "secrets.vaultsync.dev";
/// Pod start-up on this node takes seconds; kubelet retries a failed mount with a back-off, and the
/// machine may be loaded.
const POD_TIMEOUT: Duration = Duration::from_secs(120);
/// The pod's group (`fsGroup`): kubelet hands it to the plugin as the volume's mount group.
const FS_GROUP: u32 = 4321;

/// The chart's CSIDriver object (node mode), with the Azure audience only.
async fn chart_csi_driver(tools: &HelmTools, namespace: &str) -> CSIDriver {
    let rendered = tools
        .render(
            namespace,
            &[
                "--set",
                "csi.enabled=true",
                "--set-json",
                r#"csi.tokenAudiences=["api://AzureADTokenExchange"]"#,
                "--show-only",
                "templates/csi-driver.yaml",
            ],
        )
        .await;
    serde_yaml::from_str(&rendered).expect("the chart's CSIDriver")
}

fn pod(image: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": "web-0", "labels": { "app": "web" } },
        "spec": {
            "hostNetwork": true,
            "serviceAccountName": "web",
            "securityContext": { "fsGroup": FS_GROUP },
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "reader",
                "image": image,
                "imagePullPolicy": "Never",
                "args": ["--file", "/etc/secret/password", "--file", "/etc/secret/host"],
                "volumeMounts": [{ "name": "secrets", "mountPath": "/etc/secret", "readOnly": true }],
            }],
            "volumes": [{ "name": "secrets", "csi": {
                "driver": DRIVER, "readOnly": true,
                "volumeAttributes": { "vaultsync.dev/vaultsecret": "db-files" },
            } }],
        }
    }))
    .expect("the pod")
}

fn file_line(name: &str, value: &str) -> String {
    format!("file /etc/secret/{name}={value:?}")
}

#[tokio::test]
async fn a_pod_on_the_kubelet_mounts_a_vault_secret_sees_its_rotation_and_unmounts_on_delete() {
    if node::skipped() {
        return;
    }
    node::build_only(&[PAUSE_IMAGE, WORKLOAD_IMAGE]);
    let plane = ControlPlane::shared_with_node();
    let image = plane.import_image(WORKLOAD_IMAGE);
    let ns = TestNamespace::on(plane, "csi-kubelet").await;
    // The vault, a store whose workload identity is the pod's, and a VaultSecret the volume names.
    let azure = web_on_azure(&ns).await;
    azure.vault.set_secret("db-password", "first-password");
    azure.vault.set_secret("db-config", r#"{"host":"db.internal"}"#);
    let data = json!([
        { "secretKey": "password", "remoteRef": { "name": "db-password" } },
        { "secretKey": "host", "remoteRef": { "name": "db-config", "property": "host" } },
    ]);
    apply_vault_secret(&ns, &azure, "app-web", "db-files", json!({ "data": data })).await;

    // The chart's CSIDriver, then the plugin, registering itself in kubelet's plugin registry. Every republish is
    // due after a second, so a rotation reaches the files at kubelet's next pod sync.
    let driver = chart_csi_driver(&HelmTools::on(plane), &ns.name).await;
    let spec = driver.spec.clone();
    assert_eq!(spec.requires_republish, Some(true));
    assert_eq!(spec.pod_info_on_mount, Some(true));
    Api::<CSIDriver>::all(ns.client.clone()).create(&PostParams::default(), &driver).await.expect("the CSIDriver");
    let kubelet = plane.node().kubelet_dir();
    let plugin = Plugin::start_with_stores(
        &[
            "--kubelet-registration-dir".into(),
            kubelet.join("plugins_registry").display().to_string(),
            "--refresh-interval".into(),
            "1s".into(),
        ],
        ns.client.clone(),
    )
    .await;
    let csi_nodes: Api<CSINode> = Api::all(ns.client.clone());
    let node_name = plane.node().name().to_string();
    eventually(POD_TIMEOUT, "kubelet to register the plugin (its CSINode lists the driver)", || async {
        let csi_node = csi_nodes.get_opt(&node_name).await.ok()??;
        csi_node.spec.drivers.iter().any(|d| d.name == DRIVER && d.node_id == "test-node").then_some(())
    })
    .await;

    // The pod starts with the files of the VaultSecret, read with its own token.
    let pods: Api<Pod> = ns.api();
    pods.create(&PostParams::default(), &pod(&image)).await.expect("the pod");
    let started =
        wait_for_pods(&pods, "app=web", POD_TIMEOUT, "the pod to be ready", |p| p.len() == 1 && pod_ready(&p[0])).await;
    let uid = started[0].metadata.uid.clone().expect("the pod's UID");
    wait_for_log_line(&pods, "web-0", &file_line("password", "first-password"), POD_TIMEOUT).await;
    wait_for_log_line(&pods, "web-0", &file_line("host", "db.internal"), POD_TIMEOUT).await;
    let target: PathBuf = kubelet.join(format!("pods/{uid}/volumes/kubernetes.io~csi/secrets/mount"));
    assert!(is_mount_point(&target).expect("the mount table"), "a tmpfs at kubelet's target {}", target.display());
    let metadata = std::fs::metadata(target.join("password")).expect("the file on the node");
    assert_eq!(metadata.gid(), FS_GROUP, "kubelet passed the pod's fsGroup as the volume's mount group");

    // The vault object rotates; kubelet publishes again and the running pod's file changes.
    let reads = azure.vault.calls(Op::GetSecret);
    azure.vault.set_secret("db-password", "second-password");
    wait_for_log_line(&pods, "web-0", &file_line("password", "second-password"), POD_TIMEOUT).await;
    assert!(azure.vault.calls(Op::GetSecret) > reads, "the republish read the vault again");

    // The pod goes: kubelet unpublishes the volume, the tmpfs and the target are gone.
    pods.delete("web-0", &DeleteParams::default()).await.expect("deleting the pod");
    wait_for_pods(&pods, "app=web", POD_TIMEOUT, "the pod to go", |p| p.is_empty()).await;
    eventually(POD_TIMEOUT, "the volume to be unmounted and removed", || {
        let gone = !target.exists() && !is_mount_point(&target).unwrap_or(true);
        async move { gone.then_some(()) }
    })
    .await;
    let log = logs();
    assert!(log.contains("volume unpublished"), "the plugin unpublished the volume:\n{log}");
    assert_logs_free_of(&["first-password", "second-password"]);

    Api::<CSIDriver>::all(ns.client.clone()).delete(DRIVER, &DeleteParams::default()).await.expect("the CSIDriver");
    plugin.stop().await;
}
