//! The real Secrets Store CSI Driver (built by `make tools` from its published module) calls
//! vaultsync's provider: the driver runs as a node plugin against the local apiserver with its
//! SecretProviderClass CRDs; the test plays kubelet, calling the driver's NodePublishVolume with
//! real service-account tokens; the driver finds the SecretProviderClass (`provider: vaultsync`,
//! parameters written for the Azure provider), calls our socket, and writes the files itself.

mod support;

use std::{collections::BTreeMap, path::Path, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Pod, PodSpec},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use support::*;
use vaultsync_csi::{mount::is_mount_point, proto::csi::node_client::NodeClient};
use vaultsync_e2e::{
    ControlPlane, TestNamespace, eventually,
    process::{Supervised, cache_dir, log_dir, tool},
};

const DRIVER_NODE: &str = "test-node";

/// Applies the driver's CRDs (installed next to it by `make tools`) once per test binary.
async fn install_driver_crds(client: &Client) {
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let api = Api::<CustomResourceDefinition>::all(client.clone());
            let dir = cache_dir().join("secrets-store-csi-driver");
            let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}: run `make tools`", dir.display()));
            for file in files.flatten() {
                let text = std::fs::read_to_string(file.path()).expect("reading a CRD");
                let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("a CRD");
                let name = crd.metadata.name.clone().expect("CRD name");
                api.patch(&name, &PatchParams::apply("vaultsync-e2e").force(), &Patch::Apply(&crd))
                    .await
                    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
                eventually(Duration::from_secs(30), "the driver's CRD to be established", || {
                    let (api, name) = (api.clone(), name.clone());
                    async move {
                        let conditions = api.get(&name).await.ok()?.status?.conditions?;
                        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
                    }
                })
                .await;
            }
        })
        .await;
}

fn secret_provider_classes(ns: &TestNamespace) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "secrets-store.csi.x-k8s.io".into(),
        version: "v1".into(),
        api_version: "secrets-store.csi.x-k8s.io/v1".into(),
        kind: "SecretProviderClass".into(),
        plural: "secretproviderclasses".into(),
    };
    Api::namespaced_with(ns.client.clone(), &ns.name, &resource)
}

/// A pod of `account` bound to the driver's node (there is no kubelet: it stays Pending, which is
/// all the driver needs to record the mount's status for it).
async fn pod(ns: &TestNamespace, name: &str, account: &str) {
    let pod = Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(PodSpec {
            node_name: Some(DRIVER_NODE.into()),
            service_account_name: Some(account.into()),
            containers: vec![Container { name: "app".into(), image: Some("app:1".into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    };
    ns.api::<Pod>().create(&PostParams::default(), &pod).await.expect("creating a pod");
}

/// The driver running as a node plugin; its socket.
fn start_driver(plugin: &Plugin) -> (Supervised, std::path::PathBuf) {
    let socket = plugin.dir.join("driver.sock");
    let providers = plugin.dir.join("providers").display().to_string();
    let args = vec![
        format!("--endpoint=unix://{}", socket.display()),
        format!("--nodeid={DRIVER_NODE}"),
        format!("--provider-volume={providers}"),
        format!("--additional-provider-volume-paths={providers}"),
        format!("--kubeconfig={}", ControlPlane::shared().kubeconfig_path().display()),
        "--metrics-addr=0".into(),
        "--enable-secret-rotation=true".into(),
        "--rotation-poll-interval=1s".into(),
        "-v=2".into(),
    ];
    let name = format!("secrets-store-csi-driver-{}", plugin.dir.file_name().unwrap_or_default().to_string_lossy());
    let mut driver =
        Supervised::start(&name, &tool("secrets-store-csi-driver").expect("the driver"), &args, &log_dir())
            .expect("starting the driver");
    driver.wait_ready(Duration::from_secs(60), || socket.exists()).expect("the driver's socket");
    (driver, socket)
}

fn kubelet_request(
    volume: &str,
    target: &Path,
    mut context: BTreeMap<String, String>,
    class: &str,
) -> vaultsync_csi::proto::csi::NodePublishVolumeRequest {
    context.insert("secretProviderClass".into(), class.into());
    publish_request(volume, target, context)
}

#[tokio::test]
async fn the_secrets_store_csi_driver_mounts_through_vaultsync() {
    let ns = TestNamespace::new("csi-sscsid").await;
    install_driver_crds(&ns.client).await;
    service_account(&ns, "web").await;
    service_account(&ns, "intruder").await;
    pod(&ns, "web-0", "web").await;
    pod(&ns, "intruder-0", "intruder").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    let first_version = azure.vault.set_secret("db-password", "driver-value-1");
    azure.vault.set_secret("api-key", "driver-api-key");
    // A SecretProviderClass written for the Azure provider; only `provider` changed.
    let class = json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
        "metadata": { "name": "app-secrets" },
        "spec": { "provider": "vaultsync", "parameters": azure_parameters("app-web", &[("db-password", None), ("api-key", Some("API_KEY"))]) },
    });
    secret_provider_classes(&ns)
        .patch("app-secrets", &PatchParams::apply("test").force(), &Patch::Apply(&class))
        .await
        .expect("applying the SecretProviderClass");
    // Reads are shared for half a second (the default is 30s), so the rotation below arrives at once.
    let mut flags = azure.flags();
    flags.extend(["--cache-window".into(), "500ms".into()]);
    let plugin = Plugin::start(&flags).await;
    let (_driver, socket) = start_driver(&plugin);
    let mut driver = NodeClient::new(unix_channel(&socket).await);

    // Kubelet publishes the pod's volume; the driver mounts a tmpfs and writes what we return.
    let target = plugin.target("web-0");
    let web = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    let request = kubelet_request("csi-web-0", &target, web.clone(), "app-secrets");
    driver.node_publish_volume(request.clone()).await.expect("the driver's NodePublishVolume");
    assert!(is_mount_point(&target).unwrap(), "the driver mounted a tmpfs");
    let files = read_volume(&target);
    assert_eq!(files["db-password"], "driver-value-1");
    assert_eq!(files["API_KEY"], "driver-api-key");

    // The driver recorded our object versions for the pod.
    let statuses = Api::<DynamicObject>::namespaced_with(
        ns.client.clone(),
        &ns.name,
        &ApiResource {
            group: "secrets-store.csi.x-k8s.io".into(),
            version: "v1".into(),
            api_version: "secrets-store.csi.x-k8s.io/v1".into(),
            kind: "SecretProviderClassPodStatus".into(),
            plural: "secretproviderclasspodstatuses".into(),
        },
    );
    let status = statuses.list(&Default::default()).await.expect("listing pod statuses");
    let recorded = serde_json::to_string(&status.items).unwrap_or_default();
    assert!(recorded.contains("secret/db-password") && recorded.contains(&first_version), "{recorded}");

    // Rotation: kubelet republishes; once the driver's poll interval has passed it asks us again.
    azure.vault.set_secret("db-password", "driver-value-2");
    eventually(Duration::from_secs(20), "the rotated value in the driver's files", || {
        let (mut driver, request, target) = (driver.clone(), request.clone(), target.clone());
        async move {
            driver.node_publish_volume(request).await.ok()?;
            (read_volume(&target).get("db-password")? == "driver-value-2").then_some(())
        }
    })
    .await;

    // A pod of a service account without access: the driver fails the mount with our refusal.
    let intruder_target = plugin.target("intruder-0");
    let intruder = pod_attributes(&ns, "intruder", "intruder-0", &[AZURE_AUDIENCE]).await;
    let refused = driver
        .node_publish_volume(kubelet_request("csi-intruder-0", &intruder_target, intruder.clone(), "app-secrets"))
        .await
        .expect_err("the driver refuses the intruder's mount");
    assert!(refused.message().contains("PermissionDenied"), "{}", refused.message());
    assert!(!is_mount_point(&intruder_target).unwrap_or(false), "the driver unmounted the failed volume");

    driver.node_unpublish_volume(unpublish_request("csi-web-0", &target)).await.expect("NodeUnpublishVolume");
    assert!(!is_mount_point(&target).unwrap_or(false), "unmounted");
    let mut secrets = vec!["driver-value-1".to_string(), "driver-value-2".into(), "driver-api-key".into()];
    secrets.extend(tokens_of(&web));
    secrets.extend(tokens_of(&intruder));
    assert_logs_free_of(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
    plugin.stop().await;
}
