//! Mode 2 end to end: the CSI node plugin as kubelet calls it, with real service-account tokens,
//! tmpfs mounts (as root), against OpenBao (Kubernetes auth) and the Key Vault + Entra test
//! servers: files and modes, rotation on republish while a reader never sees a torn set, a
//! failing vault keeping the old files, fsGroup ownership, refused identities, and every bad
//! input leaving nothing behind.

mod support;

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use serde_json::json;
use support::*;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
use vaultsync_csi::{
    mount::is_mount_point,
    proto::{
        csi::{
            GetPluginInfoRequest, NodeGetCapabilitiesRequest, NodeGetInfoRequest, NodeStageVolumeRequest, ProbeRequest,
            VolumeCapability, node_service_capability, volume_capability,
        },
        registration::{InfoRequest, RegistrationStatus, registration_client::RegistrationClient},
    },
};
use vaultsync_e2e::{TestNamespace, keyvault::Op, openbao};

#[tokio::test]
async fn identity_node_information_health_and_kubelet_registration() {
    let registration_dir = std::env::temp_dir().join(format!("vaultsync-csi-reg-{}", std::process::id()));
    let plugin = Plugin::start(&[
        "--kubelet-registration-dir".into(),
        registration_dir.display().to_string(),
        "--kubelet-plugin-path".into(),
        "/var/lib/kubelet/plugins/secrets.vaultsync.dev/csi.sock".into(),
    ])
    .await;
    // What kubelet's plugin watcher asks on the registration socket.
    let socket = registration_dir.join("secrets.vaultsync.dev-reg.sock");
    let mut registration = RegistrationClient::new(unix_channel(&socket).await);
    let info = registration.get_info(InfoRequest {}).await.expect("GetInfo").into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "secrets.vaultsync.dev");
    assert_eq!(info.endpoint, "/var/lib/kubelet/plugins/secrets.vaultsync.dev/csi.sock");
    assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);
    let status = RegistrationStatus { plugin_registered: true, error: String::new() };
    registration.notify_registration_status(status).await.expect("NotifyRegistrationStatus");
    // Both servers answer gRPC health checks.
    for socket in [plugin.csi_socket(), plugin.provider_socket()] {
        let mut health = HealthClient::new(unix_channel(&socket).await);
        let answer = health.check(HealthCheckRequest { service: String::new() }).await.expect("health").into_inner();
        assert_eq!(answer.status, ServingStatus::Serving as i32, "{}", socket.display());
    }
    let mut identity = plugin.identity().await;
    let info = identity.get_plugin_info(GetPluginInfoRequest {}).await.expect("GetPluginInfo").into_inner();
    assert_eq!(info.name, "secrets.vaultsync.dev");
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));
    let probe = identity.probe(ProbeRequest {}).await.expect("Probe").into_inner();
    assert_eq!(probe.ready, Some(true));
    let mut node = plugin.node().await;
    let info = node.node_get_info(NodeGetInfoRequest {}).await.expect("NodeGetInfo").into_inner();
    assert_eq!(info.node_id, "test-node");
    let capabilities = node.node_get_capabilities(NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    let types: Vec<i32> = capabilities
        .capabilities
        .iter()
        .filter_map(|c| c.r#type.map(|node_service_capability::Type::Rpc(rpc)| rpc.r#type))
        .collect();
    assert_eq!(types, vec![node_service_capability::rpc::Type::VolumeMountGroup as i32]);
    let stage = node.node_stage_volume(NodeStageVolumeRequest::default()).await.expect_err("not staged");
    assert_eq!(stage.code(), Code::Unimplemented);
    let sockets = [plugin.csi_socket(), plugin.provider_socket(), socket];
    assert!(sockets.iter().all(|s| s.exists()));
    plugin.stop().await;
    assert!(sockets.iter().all(|s| !s.exists()), "the sockets are removed on stop");
    std::fs::remove_dir_all(&registration_dir).expect("removing the registration folder");
}

/// OpenBao with Kubernetes auth for the service account `web`: returns the plugin parameters
/// (two files from one secret) and the KV mount.
async fn openbao_volume(ns: &TestNamespace) -> (BTreeMap<String, String>, String) {
    let (bao, root) = openbao::shared_with_root();
    let mount = root.enable_kv(2).await.expect("a KV v2 mount");
    root.kv2_put(&mount, "app/db", json!({ "user": "u-1", "password": "p-1" })).await.unwrap();
    let policy = root.read_policy(&[format!("{mount}/data/app/*")]).await.expect("policy");
    let auth = openbao::unique("k8s");
    openbao::enable_kubernetes_auth(&root, ns, &auth).await.expect("kubernetes auth");
    let role = json!({ "bound_service_account_names": ["web"], "bound_service_account_namespaces": [ns.name],
        "audience": "vault", "token_policies": [policy], "token_ttl": "10m" });
    root.call(reqwest::Method::POST, &format!("auth/{auth}/role/app"), Some(role)).await.expect("role");
    let parameters = BTreeMap::from([
        ("roleName".to_string(), "app".to_string()),
        ("vaultAddress".to_string(), bao.addr.clone()),
        ("vaultAuthMountPath".to_string(), auth),
        (
            "objects".to_string(),
            format!(
                "- objectName: user\n  secretPath: {mount}/data/app/db\n  secretKey: user\n- objectName: password\n  secretPath: {mount}/data/app/db\n  secretKey: password\n"
            ),
        ),
    ]);
    (parameters, mount)
}

/// Reads the volume through one resolution of `..data` (what a careful reader does): both files
/// from one payload. `None` when the payload was swapped away mid-read (read again).
fn read_pair(target: &Path) -> Option<(String, String)> {
    let payload = std::fs::read_link(target.join("..data")).ok()?;
    let dir = target.join(payload);
    Some((std::fs::read_to_string(dir.join("user")).ok()?, std::fs::read_to_string(dir.join("password")).ok()?))
}

#[tokio::test]
async fn publishes_on_tmpfs_rotates_atomically_and_unpublishes() {
    let ns = TestNamespace::new("csi-n-rotate").await;
    service_account(&ns, "web").await;
    let (parameters, mount) = openbao_volume(&ns).await;
    let bao = openbao::OpenBao::shared();
    let root = bao.root();
    // Every republish is due: each one reads the vault.
    let plugin = Plugin::start_trusting(&["--refresh-interval".into(), "0".into()], &bao.ca_pem).await;
    let mut node = plugin.node().await;
    let target = plugin.target("rotate");
    let mut context = pod_attributes(&ns, "web", "web-0", &["vault"]).await;
    context.extend(parameters);
    let request = publish_request("csi-rotate", &target, context.clone());
    node.node_publish_volume(request.clone()).await.expect("NodePublishVolume");
    assert!(is_mount_point(&target).unwrap(), "a tmpfs is mounted at the target");
    assert_eq!(
        read_volume(&target),
        BTreeMap::from([("password".into(), "p-1".into()), ("user".into(), "u-1".into())])
    );
    assert_eq!(std::fs::metadata(target.join("user")).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(std::fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o755);

    // A reader loops over the files while the secret rotates and kubelet republishes.
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, retries) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (stop, reads, retries, target) = (stop.clone(), reads.clone(), retries.clone(), target.clone());
        std::thread::spawn(move || {
            let mut torn = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match read_pair(&target) {
                    Some((user, password)) => {
                        reads.fetch_add(1, Ordering::Relaxed);
                        if user.trim_start_matches("u-") != password.trim_start_matches("p-") {
                            torn.push((user, password));
                        }
                    }
                    None => {
                        retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            torn
        })
    };
    for n in 2..=8 {
        root.kv2_put(&mount, "app/db", json!({ "user": format!("u-{n}"), "password": format!("p-{n}") }))
            .await
            .unwrap();
        node.node_publish_volume(request.clone()).await.expect("republish");
        assert_eq!(read_volume(&target)["password"], format!("p-{n}"), "rotation {n} reached the files");
    }
    stop.store(true, Ordering::Relaxed);
    let torn = reader.join().expect("the reader thread");
    assert!(torn.is_empty(), "the reader saw a mix of old and new files: {torn:?}");
    assert!(
        reads.load(Ordering::Relaxed) > 10,
        "the reader read while rotating ({} reads)",
        reads.load(Ordering::Relaxed)
    );
    let payloads = std::fs::read_dir(&target).unwrap().filter(|e| {
        let name = e.as_ref().unwrap().file_name();
        let name = name.to_string_lossy();
        name.starts_with("..") && name != "..data"
    });
    assert_eq!(payloads.count(), 1, "old payload folders are removed");

    node.node_unpublish_volume(unpublish_request("csi-rotate", &target)).await.expect("NodeUnpublishVolume");
    assert!(!target.exists(), "the target is removed");
    node.node_unpublish_volume(unpublish_request("csi-rotate", &target)).await.expect("unpublish is idempotent");
    node.node_unpublish_volume(unpublish_request("never", &plugin.target("never"))).await.expect("never published");
    let tokens = tokens_of(&context);
    assert_logs_free_of(&tokens.iter().map(String::as_str).chain(["p-1", "p-5", "p-8"]).collect::<Vec<_>>());
    plugin.stop().await;
}

#[tokio::test]
async fn a_failing_vault_keeps_the_files_and_a_due_refresh_picks_up_rotation() {
    let ns = TestNamespace::new("csi-n-down").await;
    service_account(&ns, "web").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("db-password", "old-value");
    let mut flags = azure.flags();
    flags.extend(["--refresh-interval".into(), "0".into()]);
    let plugin = Plugin::start(&flags).await;
    let mut node = plugin.node().await;
    let target = plugin.target("down");
    let mut context = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    context.extend(azure_parameters("app-web", &[("db-password", None)]));
    let request = publish_request("csi-down", &target, context.clone());
    node.node_publish_volume(request.clone()).await.expect("NodePublishVolume");
    assert_eq!(read_volume(&target)["db-password"], "old-value");

    // The secret rotates, but the vault fails every attempt of the next republish.
    azure.vault.set_secret("db-password", "new-value");
    azure.vault.fail_next(4, 503, None);
    node.node_publish_volume(request.clone()).await.expect("a failing vault on republish is not an error");
    assert_eq!(read_volume(&target)["db-password"], "old-value", "the old files stay");
    assert!(logs().contains("refresh failed; the volume keeps its files"), "the failure is logged");

    // The vault is back: the next republish brings the new value.
    node.node_publish_volume(request.clone()).await.expect("republish");
    assert_eq!(read_volume(&target)["db-password"], "new-value");

    // A new version that no longer fits (over 1 MiB) does not empty the volume either.
    azure.vault.set_secret("db-password", &"y".repeat(1024 * 1024 + 1));
    node.node_publish_volume(request.clone()).await.expect("an oversize new version on republish is not an error");
    assert_eq!(read_volume(&target)["db-password"], "new-value", "the files stay");
    node.node_unpublish_volume(unpublish_request("csi-down", &target)).await.expect("unpublish");
    assert!(!target.exists());
    let tokens = tokens_of(&context);
    assert_logs_free_of(&tokens.iter().map(String::as_str).chain(["old-value", "new-value"]).collect::<Vec<_>>());
    plugin.stop().await;
}

#[tokio::test]
async fn republish_before_the_interval_makes_no_vault_call_and_directories_work_too() {
    let ns = TestNamespace::new("csi-n-due").await;
    service_account(&ns, "web").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("db-password", "value-1");
    let mut flags = azure.flags();
    flags.extend(["--medium".into(), "directory".into()]);
    let plugin = Plugin::start(&flags).await;
    let mut node = plugin.node().await;
    let target = plugin.target("due");
    let mut context = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    context.extend(azure_parameters("app-web", &[("db-password", None)]));
    let request = publish_request("csi-due", &target, context);
    node.node_publish_volume(request.clone()).await.expect("NodePublishVolume");
    assert!(!is_mount_point(&target).unwrap(), "medium directory: a plain folder");
    assert_eq!(read_volume(&target)["db-password"], "value-1");
    let calls = azure.vault.calls(Op::GetSecret);
    for _ in 0..3 {
        node.node_publish_volume(request.clone()).await.expect("republish");
    }
    assert_eq!(azure.vault.calls(Op::GetSecret), calls, "not due: no vault call");
    node.node_unpublish_volume(unpublish_request("csi-due", &target)).await.expect("unpublish");
    assert!(!target.exists(), "the plain folder is removed too");
    plugin.stop().await;
}

#[tokio::test]
async fn files_belong_to_the_pods_fs_group() {
    let ns = TestNamespace::new("csi-n-group").await;
    service_account(&ns, "web").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("db-password", "group-value");
    let plugin = Plugin::start(&azure.flags()).await;
    let mut node = plugin.node().await;
    let target = plugin.target("group");
    let mut context = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    context.extend(azure_parameters("app-web", &[]));
    context
        .insert("objects".into(), "array:\n  - |\n    objectName: db-password\n    filePermission: \"0600\"\n".into());
    let mut request = publish_request("csi-group", &target, context);
    request.volume_capability = Some(mount_capability("4321"));
    node.node_publish_volume(request).await.expect("NodePublishVolume with a fsGroup");
    let file = std::fs::metadata(target.join("db-password")).unwrap();
    assert_eq!(file.gid(), 4321, "the file's group is the pod's fsGroup");
    assert_eq!(file.permissions().mode() & 0o777, 0o640, "0600 asked, the group may read");
    let root = std::fs::metadata(&target).unwrap();
    assert_eq!((root.gid(), root.permissions().mode() & 0o777), (4321, 0o750), "the volume's root");
    let payload = std::fs::metadata(target.join("..data")).unwrap();
    assert_eq!(payload.gid(), 4321, "the payload folder too");
    node.node_unpublish_volume(unpublish_request("csi-group", &target)).await.expect("unpublish");
    plugin.stop().await;
}

#[tokio::test]
async fn a_pod_without_access_is_refused_and_a_permitted_pod_on_the_node_still_mounts() {
    let ns = TestNamespace::new("csi-n-deny").await;
    service_account(&ns, "web").await;
    service_account(&ns, "intruder").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("db-password", "deny-value");
    let plugin = Plugin::start(&azure.flags()).await;
    let mut node = plugin.node().await;
    let parameters = azure_parameters("app-web", &[("db-password", None)]);

    let mut web = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    web.extend(parameters.clone());
    let web_target = plugin.target("web");
    node.node_publish_volume(publish_request("csi-web", &web_target, web.clone())).await.expect("the permitted pod");

    let mut intruder = pod_attributes(&ns, "intruder", "intruder-0", &[AZURE_AUDIENCE]).await;
    intruder.extend(parameters.clone());
    let intruder_target = plugin.target("intruder");
    let refused = node
        .node_publish_volume(publish_request("csi-intruder", &intruder_target, intruder.clone()))
        .await
        .expect_err("a service account without access");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(!intruder_target.exists(), "nothing was made for the refused pod");

    let second_target = plugin.target("web-1");
    let mut second = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    second.extend(parameters);
    node.node_publish_volume(publish_request("csi-web-1", &second_target, second)).await.expect("still mounts");
    assert_eq!(read_volume(&second_target)["db-password"], "deny-value");
    for (volume, target) in [("csi-web", &web_target), ("csi-web-1", &second_target)] {
        node.node_unpublish_volume(unpublish_request(volume, target)).await.expect("unpublish");
    }
    plugin.stop().await;
}

#[tokio::test]
async fn bad_publish_input_is_refused_and_leaves_nothing() {
    let ns = TestNamespace::new("csi-n-bad").await;
    service_account(&ns, "web").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("db-password", "bad-case-value");
    azure.vault.set_secret("huge", &"x".repeat(1024 * 1024 + 1));
    let plugin = Plugin::start(&azure.flags()).await;
    let mut node = plugin.node().await;
    let pod = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    let with = |parameters: BTreeMap<String, String>| {
        let mut context = pod.clone();
        context.extend(parameters);
        context
    };
    let good = with(azure_parameters("app-web", &[("db-password", None)]));
    let block = VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(volume_capability::BlockVolume {})),
        access_mode: None,
    };
    let mut no_pod = good.clone();
    no_pod.remove("csi.storage.k8s.io/serviceAccount.name");
    let mut no_token = good.clone();
    no_token.remove("csi.storage.k8s.io/serviceAccount.tokens");
    let mut persistent = good.clone();
    persistent.insert("csi.storage.k8s.io/ephemeral".into(), "false".into());

    type Edit = Box<dyn Fn(&mut vaultsync_csi::proto::csi::NodePublishVolumeRequest)>;
    /// A case: its name, the volume context, a change to the request, the code and place expected.
    type Case = (&'static str, BTreeMap<String, String>, Edit, Code, &'static str);
    let cases: Vec<Case> = vec![
        ("no volume id", good.clone(), Box::new(|r| r.volume_id.clear()), Code::InvalidArgument, "volume_id"),
        (
            "no capability",
            good.clone(),
            Box::new(|r| r.volume_capability = None),
            Code::InvalidArgument,
            "volume_capability",
        ),
        (
            "block",
            good.clone(),
            Box::new(move |r| r.volume_capability = Some(block.clone())),
            Code::InvalidArgument,
            "block",
        ),
        (
            "bad group",
            good.clone(),
            Box::new(|r| r.volume_capability = Some(mount_capability("wheel"))),
            Code::InvalidArgument,
            "volume_mount_group",
        ),
        ("persistent", persistent, Box::new(|_| {}), Code::InvalidArgument, "ephemeral"),
        ("no pod info", no_pod, Box::new(|_| {}), Code::InvalidArgument, "serviceAccount.name"),
        ("no token", no_token, Box::new(|_| {}), Code::InvalidArgument, "tokenRequests"),
        (
            "traversal",
            with(azure_parameters("app-web", &[("db-password", Some("../x"))])),
            Box::new(|_| {}),
            Code::InvalidArgument,
            "objects.array[0]",
        ),
        (
            "absolute",
            with(azure_parameters("app-web", &[("db-password", Some("/etc/shadow"))])),
            Box::new(|_| {}),
            Code::InvalidArgument,
            "absolute",
        ),
        (
            "leading dots",
            with(azure_parameters("app-web", &[("db-password", Some("..2024_01_01"))])),
            Box::new(|_| {}),
            Code::InvalidArgument,
            "'..'",
        ),
        (
            "duplicate",
            with(azure_parameters("app-web", &[("db-password", Some("f")), ("huge", Some("f"))])),
            Box::new(|_| {}),
            Code::InvalidArgument,
            "objects.array[1]",
        ),
        (
            "malformed",
            with(BTreeMap::from([("storeRef".into(), "kv".into()), ("objects".into(), "- {objectName: [".into())])),
            Box::new(|_| {}),
            Code::InvalidArgument,
            "objects",
        ),
        (
            "unknown format",
            with(BTreeMap::from([
                ("keyvaultName".into(), VAULT_NAME.into()),
                ("tenantID".into(), TENANT.into()),
                ("clientID".into(), "app-web".into()),
                ("objects".into(), "array:\n  - |\n    objectName: db-password\n    objectFormat: jks\n".into()),
            ])),
            Box::new(|_| {}),
            Code::InvalidArgument,
            "objectFormat",
        ),
        (
            "oversize",
            with(azure_parameters("app-web", &[("huge", None)])),
            Box::new(|_| {}),
            Code::InvalidArgument,
            "1 MiB",
        ),
        (
            "not found",
            with(azure_parameters("app-web", &[("missing-object", None)])),
            Box::new(|_| {}),
            Code::NotFound,
            "missing-object",
        ),
    ];
    for (i, (case, context, edit, code, place)) in cases.into_iter().enumerate() {
        let target = plugin.target(&format!("bad-{i}"));
        let mut request = publish_request(&format!("csi-bad-{i}"), &target, context);
        edit(&mut request);
        let error = node.node_publish_volume(request).await.expect_err(case);
        assert_eq!(error.code(), code, "{case}: {error:?}");
        assert!(error.message().contains(place), "{case}: {:?} should say {place:?}", error.message());
        assert!(!target.exists(), "{case}: nothing may be written");
    }
    let no_target = publish_request("csi-bad-target", Path::new(""), good);
    assert_eq!(node.node_publish_volume(no_target).await.expect_err("no target").code(), Code::InvalidArgument);
    assert!(logs().contains("publish refused"), "refusals are logged");
    assert_logs_free_of(&tokens_of(&pod).iter().map(String::as_str).chain(["bad-case-value"]).collect::<Vec<_>>());
    plugin.stop().await;
}

/// The `vaultsync_csi_*` lines of a scrape of `/metrics` that start with `prefix`, as (series, value).
async fn scrape(port: u16, prefix: &str) -> BTreeMap<String, f64> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.expect("the metrics text");
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ').map(|(series, value)| (series.to_string(), value.parse().unwrap())))
        .collect()
}

#[tokio::test]
async fn metrics_count_publishes_by_result_vault_calls_and_cache_reads() {
    let ns = TestNamespace::new("csi-n-metrics").await;
    let azure = web_on_azure(&ns).await;
    azure.vault.set_secret("db-password", "metrics-value");
    let port = vaultsync_e2e::process::free_port().expect("a free port");
    let mut flags = azure.flags();
    flags.extend(["--metrics-address".into(), format!("127.0.0.1:{port}")]);
    let plugin = Plugin::start(&flags).await;
    let parameters = azure_parameters("app-web", &[("db-password", None)]);

    // Node mode: a publish, a republish before it is due, a refused publish.
    let mut node = plugin.node().await;
    let target = plugin.target("metrics");
    let mut context = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    context.extend(parameters.clone());
    let request = publish_request("csi-metrics", &target, context.clone());
    node.node_publish_volume(request.clone()).await.expect("NodePublishVolume");
    node.node_publish_volume(request).await.expect("republish");
    let mut bad = context.clone();
    bad.insert("objects".into(), "array: [".into());
    node.node_publish_volume(publish_request("csi-bad", &plugin.target("bad"), bad)).await.expect_err("bad YAML");
    // Provider mode: a second pod of the account mounts the same object (a cache hit).
    let mut attributes = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    attributes.extend(parameters);
    plugin.provider().await.mount(provider_mount(&attributes)).await.expect("Mount");

    let publishes = scrape(port, "vaultsync_csi_publishes_total").await;
    let expected = [
        (r#"vaultsync_csi_publishes_total{mode="node",result="published"}"#, 1.0),
        (r#"vaultsync_csi_publishes_total{mode="node",result="not_due"}"#, 1.0),
        (r#"vaultsync_csi_publishes_total{mode="node",result="invalid_argument"}"#, 1.0),
        (r#"vaultsync_csi_publishes_total{mode="provider",result="published"}"#, 1.0),
    ];
    assert_eq!(publishes, expected.iter().map(|(s, v)| (s.to_string(), *v)).collect(), "{publishes:#?}");
    let durations = scrape(port, "vaultsync_csi_publish_duration_seconds_count").await;
    assert_eq!(durations.values().sum::<f64>(), 4.0, "{durations:#?}");
    // One vault read (the server counted one GET), the second pod's a cache hit.
    assert_eq!(azure.vault.calls(Op::GetSecret), 1);
    let calls = scrape(port, "vaultsync_csi_vault_calls_total").await;
    assert_eq!(calls[r#"vaultsync_csi_vault_calls_total{operation="get_secret",outcome="ok"}"#], 1.0, "{calls:#?}");
    let cache = scrape(port, "vaultsync_csi_cache_reads_total").await;
    assert_eq!(cache[r#"vaultsync_csi_cache_reads_total{result="miss"}"#], 1.0, "{cache:#?}");
    assert_eq!(cache[r#"vaultsync_csi_cache_reads_total{result="hit"}"#], 1.0, "{cache:#?}");
    node.node_unpublish_volume(unpublish_request("csi-metrics", &target)).await.expect("unpublish");
    plugin.stop().await;
    assert!(
        reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.is_err(),
        "the endpoint stops with the plugin"
    );
}
