//! Mode 1 end to end: the provider's `Mount` as the Secrets Store CSI Driver calls it, with real
//! service-account tokens from the apiserver, against the Key Vault + Entra test servers (Azure
//! workload identity checked by TokenReview) and the real OpenBao (Kubernetes auth checked by
//! TokenReview).

mod support;

use std::collections::BTreeMap;

use serde_json::json;
use support::*;
use tonic::Code;
use vaultsync_csi::proto::provider::{MountRequest, MountResponse, VersionRequest};
use vaultsync_e2e::{TestNamespace, keyvault::Op, openbao};

fn mount_request(attributes: &BTreeMap<String, String>, permission: &str) -> MountRequest {
    MountRequest {
        attributes: serde_json::to_string(attributes).expect("attributes JSON"),
        secrets: "{}".into(),
        target_path: "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/secrets/mount".into(),
        permission: permission.into(),
        current_object_version: Vec::new(),
    }
}

fn files_of(response: &MountResponse) -> BTreeMap<String, (String, i32)> {
    response
        .files
        .iter()
        .map(|f| (f.path.clone(), (String::from_utf8(f.contents.clone()).expect("UTF-8"), f.mode)))
        .collect()
}

#[tokio::test]
async fn azure_provider_parameters_mount_with_the_pods_workload_identity() {
    let ns = TestNamespace::new("csi-p-azure").await;
    service_account(&ns, "web").await;
    service_account(&ns, "intruder").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    let db_version = azure.vault.set_secret("db-password", "pa55-db-value");
    azure.vault.set_secret("api-key", "api-key-value");
    let plugin = Plugin::start(&azure.flags()).await;
    let mut provider = plugin.provider().await;

    let version = provider.version(VersionRequest { version: "v1alpha1".into() }).await.expect("Version").into_inner();
    assert_eq!(version.version, "v1alpha1");
    assert_eq!(version.runtime_name, "vaultsync-csi");

    // A SecretProviderClass written for the Azure provider, with only the provider name changed.
    let parameters = azure_parameters("app-web", &[("db-password", None), ("api-key", Some("API_KEY"))]);
    let mut attributes = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;
    attributes.extend(parameters.clone());
    let response = provider.mount(mount_request(&attributes, "420")).await.expect("Mount").into_inner();
    let files = files_of(&response);
    assert_eq!(files["db-password"], ("pa55-db-value".to_string(), 0o644));
    assert_eq!(files["API_KEY"], ("api-key-value".to_string(), 0o644), "objectAlias is the file name");
    let versions: BTreeMap<_, _> =
        response.object_version.iter().map(|v| (v.id.as_str(), v.version.as_str())).collect();
    assert_eq!(versions["secret/db-password"], db_version, "the Key Vault version id");
    assert_eq!(versions.len(), 2);
    assert_eq!(azure.vault.calls(Op::GetSecret), 2);

    // Another pod of the same service account shares the reads: no new vault call.
    let mut second = pod_attributes(&ns, "web", "web-1", &[AZURE_AUDIENCE]).await;
    second.extend(parameters.clone());
    let again = provider.mount(mount_request(&second, "384")).await.expect("Mount of a second pod").into_inner();
    assert_eq!(files_of(&again)["db-password"], ("pa55-db-value".to_string(), 0o600), "the driver's permission");
    assert_eq!(azure.vault.calls(Op::GetSecret), 2, "pods of one service account share reads");

    // A pod of a service account the app is not federated with is refused, and reads nothing.
    let mut intruder = pod_attributes(&ns, "intruder", "intruder-0", &[AZURE_AUDIENCE]).await;
    intruder.extend(parameters.clone());
    let refused = provider.mount(mount_request(&intruder, "420")).await.expect_err("a foreign service account");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("authenticate"), "{}", refused.message());
    assert_eq!(azure.vault.calls(Op::GetSecret), 2, "no cached read was served to it");

    // The permitted pod still mounts after the refusal.
    provider.mount(mount_request(&attributes, "420")).await.expect("the permitted pod still mounts");

    let mut secrets_and_tokens = vec!["pa55-db-value".to_string(), "api-key-value".to_string()];
    for a in [&attributes, &second, &intruder] {
        secrets_and_tokens.extend(tokens_of(a));
    }
    assert_logs_free_of(&secrets_and_tokens.iter().map(String::as_str).collect::<Vec<_>>());
    plugin.stop().await;
}

/// Log text without the terminal colour sequences (`ESC [ ... m`) the formatter adds.
fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test]
async fn each_read_for_a_pod_leaves_an_audit_record() {
    let ns = TestNamespace::new("csi-p-audit").await;
    service_account(&ns, "web").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("audit-db", "audit-db-value");
    let plugin = Plugin::start(&azure.flags()).await;
    let mut provider = plugin.provider().await;
    let parameters = azure_parameters("app-web", &[("audit-db", None)]);
    for pod in ["web-0", "web-1"] {
        let mut attributes = pod_attributes(&ns, "web", pod, &[AZURE_AUDIENCE]).await;
        attributes.extend(parameters.clone());
        provider.mount(mount_request(&attributes, "420")).await.expect("Mount");
    }
    // One record per read, on the audit target: the first pod's read called the vault, the second was served from
    // the cache; both name the pod and the identity it read with, never the value.
    let text = without_colours(&logs());
    let records: Vec<&str> = text.lines().filter(|l| l.contains("vaultsync::audit") && l.contains(&ns.name)).collect();
    let record = |pod: &str| {
        let requester = format!("requester=\"Pod {}/{pod}\"", ns.name);
        let found: Vec<&&str> = records.iter().filter(|l| l.contains(&requester)).collect();
        assert_eq!(found.len(), 1, "one record for {pod}: {records:#?}");
        found[0].to_string()
    };
    let (first, second) = (record("web-0"), record("web-1"));
    assert!(first.contains("source=\"vault\"") && first.contains("object=\"audit-db\""), "{first}");
    assert!(second.contains("source=\"cache\"") && second.contains("outcome=\"ok\""), "{second}");
    assert!(first.contains(&format!("identity=workload identity {}/web as app-web", ns.name)), "{first}");
    assert_eq!(azure.vault.calls(Op::GetSecret), 1);
    assert_logs_free_of(&["audit-db-value"]);
    plugin.stop().await;
}

#[tokio::test]
async fn vault_provider_parameters_mount_from_openbao_with_kubernetes_auth() {
    let ns = TestNamespace::new("csi-p-bao").await;
    service_account(&ns, "web").await;
    service_account(&ns, "intruder").await;
    let (bao, root) = openbao::shared_with_root();
    let mount = root.enable_kv(2).await.expect("a KV v2 mount");
    let version = root.kv2_put(&mount, "app/db", json!({ "user": "app", "password": "bao-pass-1" })).await.unwrap();
    let policy = root.read_policy(&[format!("{mount}/data/app/*")]).await.expect("policy");
    let auth = openbao::unique("k8s");
    openbao::enable_kubernetes_auth(&root, &ns, &auth).await.expect("kubernetes auth");
    let role = json!({ "bound_service_account_names": ["web"], "bound_service_account_namespaces": [ns.name],
        "audience": "vault", "token_policies": [policy], "token_ttl": "10m" });
    root.call(reqwest::Method::POST, &format!("auth/{auth}/role/app"), Some(role)).await.expect("role");
    let plugin = Plugin::start_trusting(&[], &bao.ca_pem).await;
    let mut provider = plugin.provider().await;

    let parameters = BTreeMap::from([
        ("roleName".to_string(), "app".to_string()),
        ("vaultAddress".to_string(), bao.addr.clone()),
        ("vaultAuthMountPath".to_string(), auth.clone()),
        (
            "objects".to_string(),
            format!(
                "- objectName: db-user\n  secretPath: {mount}/data/app/db\n  secretKey: user\n- objectName: db-password\n  secretPath: {mount}/data/app/db\n  secretKey: password\n  filePermission: \"0400\"\n"
            ),
        ),
    ]);
    let mut attributes = pod_attributes(&ns, "web", "web-0", &["vault"]).await;
    attributes.extend(parameters.clone());
    let response = provider.mount(mount_request(&attributes, "420")).await.expect("Mount").into_inner();
    let files = files_of(&response);
    assert_eq!(files["db-user"], ("app".to_string(), 0o644));
    assert_eq!(files["db-password"], ("bao-pass-1".to_string(), 0o400));
    assert_eq!(response.object_version.len(), 1, "one object, two files");
    assert_eq!(response.object_version[0].id, format!("secret/{mount}/data/app/db"));
    assert_eq!(response.object_version[0].version, version.to_string());

    let mut intruder = pod_attributes(&ns, "intruder", "intruder-0", &["vault"]).await;
    intruder.extend(parameters.clone());
    let refused =
        provider.mount(mount_request(&intruder, "420")).await.expect_err("a service account the role refuses");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    provider.mount(mount_request(&attributes, "420")).await.expect("the permitted pod still mounts");

    // No token for the audience: a clear error naming the CSIDriver's tokenRequests.
    let mut no_token = pod_attributes(&ns, "web", "web-2", &[AZURE_AUDIENCE]).await;
    no_token.extend(parameters);
    let missing = provider.mount(mount_request(&no_token, "420")).await.expect_err("no vault token");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("tokenRequests"), "{}", missing.message());

    let mut values = vec!["bao-pass-1".to_string()];
    for a in [&attributes, &intruder, &no_token] {
        values.extend(tokens_of(a));
    }
    assert_logs_free_of(&values.iter().map(String::as_str).collect::<Vec<_>>());
    plugin.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_what_and_where_and_logged() {
    let ns = TestNamespace::new("csi-p-bad").await;
    service_account(&ns, "web").await;
    let azure = Azure::start(&ns, &[("web", "app-web")]).await;
    azure.vault.set_secret("db-password", "never-read-value");
    azure.vault.set_secret("huge", &"x".repeat(1024 * 1024 + 1));
    let plugin = Plugin::start(&azure.flags()).await;
    let mut provider = plugin.provider().await;
    let pod = pod_attributes(&ns, "web", "web-0", &[AZURE_AUDIENCE]).await;

    let cases: Vec<(&str, BTreeMap<String, String>, Code, &str)> = vec![
        (
            "traversal",
            azure_parameters("app-web", &[("db-password", Some("../../etc/cron.d/x"))]),
            Code::InvalidArgument,
            "objects.array[0]",
        ),
        (
            "absolute",
            azure_parameters("app-web", &[("db-password", Some("/etc/passwd"))]),
            Code::InvalidArgument,
            "absolute",
        ),
        (
            "writer's name",
            azure_parameters("app-web", &[("db-password", Some("..data"))]),
            Code::InvalidArgument,
            "..data",
        ),
        (
            "duplicate",
            azure_parameters("app-web", &[("db-password", None), ("db-password", None)]),
            Code::InvalidArgument,
            "objects.array[1]",
        ),
        (
            "malformed YAML",
            BTreeMap::from([
                ("keyvaultName".into(), VAULT_NAME.into()),
                ("tenantID".into(), TENANT.into()),
                ("clientID".into(), "app-web".into()),
                ("objects".into(), "array: [".into()),
            ]),
            Code::InvalidArgument,
            "objects",
        ),
        (
            "unknown type",
            BTreeMap::from([
                ("keyvaultName".into(), VAULT_NAME.into()),
                ("tenantID".into(), TENANT.into()),
                ("clientID".into(), "app-web".into()),
                ("objects".into(), "array:\n  - |\n    objectName: db-password\n    objectType: blob\n".into()),
            ]),
            Code::InvalidArgument,
            "objectType",
        ),
        ("oversize", azure_parameters("app-web", &[("huge", None)]), Code::InvalidArgument, "1 MiB"),
    ];
    let calls_before = azure.vault.calls(Op::GetSecret);
    for (case, parameters, code, place) in cases {
        let mut attributes = pod.clone();
        attributes.extend(parameters);
        let error = provider.mount(mount_request(&attributes, "420")).await.expect_err(case);
        assert_eq!(error.code(), code, "{case}: {error:?}");
        assert!(error.message().contains(place), "{case}: {:?} should say {place:?}", error.message());
    }
    assert_eq!(azure.vault.calls(Op::GetSecret) - calls_before, 1, "only the oversize case reads (its one object)");

    // Missing pod info and malformed JSON.
    let mut no_pod = pod.clone();
    no_pod.remove("csi.storage.k8s.io/pod.namespace");
    no_pod.extend(azure_parameters("app-web", &[("db-password", None)]));
    let error = provider.mount(mount_request(&no_pod, "420")).await.expect_err("no pod namespace");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().contains("podInfoOnMount"), "{}", error.message());
    let mut garbled = mount_request(&pod, "420");
    garbled.attributes = "{\"unterminated".into();
    let error = provider.mount(garbled).await.expect_err("malformed attributes");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(error.message().starts_with("attributes:"), "{}", error.message());

    // The plugin logged each refusal (the driver swallows them on remounts), without tokens.
    let logs = logs();
    assert!(logs.contains("mount refused") && logs.contains("objects.array[1]"), "refusals are logged");
    let tokens = tokens_of(&pod);
    assert_logs_free_of(&tokens.iter().map(String::as_str).chain(["never-read-value"]).collect::<Vec<_>>());
    plugin.stop().await;
}

#[tokio::test]
async fn a_service_principal_comes_from_the_node_publish_secret_and_a_wrong_one_gets_no_cached_read() {
    let ns = TestNamespace::new("csi-p-sp").await;
    service_account(&ns, "web").await;
    let azure = Azure::start_with_secrets(&ns, &[], &[("sp-app", "sp-secret-value")]).await;
    azure.vault.set_secret("db-password", "sp-read-value");
    let plugin = Plugin::start(&azure.flags()).await;
    let mut provider = plugin.provider().await;
    // No clientID: the Azure provider's service principal form, credentials in nodePublishSecretRef.
    let mut attributes = pod_attributes(&ns, "web", "web-0", &[]).await;
    attributes.extend(azure_parameters("", &[("db-password", None)]));
    attributes.remove("clientID");
    let mut request = mount_request(&attributes, "420");
    request.secrets = json!({ "clientid": "sp-app", "clientsecret": "sp-secret-value" }).to_string();
    let response = provider.mount(request.clone()).await.expect("Mount with a service principal").into_inner();
    assert_eq!(files_of(&response)["db-password"].0, "sp-read-value");

    // The same client ID with a wrong secret is refused, although the right one's read is cached.
    request.secrets = json!({ "clientid": "sp-app", "clientsecret": "wrong-secret-value" }).to_string();
    let refused = provider.mount(request.clone()).await.expect_err("a wrong client secret");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert_eq!(azure.vault.calls(Op::GetSecret), 1, "one read, by the right credential");

    request.secrets = "{}".into();
    let missing = provider.mount(request).await.expect_err("no credentials");
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(missing.message().contains("nodePublishSecretRef"), "{}", missing.message());
    assert_logs_free_of(&["sp-secret-value", "wrong-secret-value", "sp-read-value"]);
    plugin.stop().await;
}
