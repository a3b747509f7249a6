//! The commands against the real local control plane, with the operator running in process with the chart's rights
//! (the operator tests' support): `status`, `why` for each failure reason, `sync`, and `migrate`'s output applied to
//! the apiserver and synced.

#[path = "../../operator/tests/support/mod.rs"]
mod support;

use std::time::Duration;

use clap::Parser as _;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    discovery::ApiResource,
};
use serde_json::{Value, json};
use support::{CLIENT_ID, Env, READER_SA, TENANT, one_key};
use vaultsync_api::ClusterVaultStore;
use vaultsync_cli::{Cli, Kube, Output};
use vaultsync_e2e::eventually;

/// Borrowed arguments for [`cli`].
fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn cli(env: &Env, args: &[&str]) -> Output {
    let cli = Cli::try_parse_from(std::iter::once("kubectl-vaultsync").chain(args.iter().copied())).expect("arguments");
    let kube = Kube { client: env.ns.client.clone(), namespace: env.ns.name.clone() };
    vaultsync_cli::run_in(&kube, &cli.command).await.expect("the command runs")
}

/// A Deployment of `replicas` pods (there is no node: none start) with `labels`, reading `secret` with envFrom.
async fn deployment_using(env: &Env, name: &str, secret: &str, labels: Value, replicas: i32) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": { "replicas": replicas, "selector": { "matchLabels": { "app": name } }, "template": {
            "metadata": { "labels": { "app": name } },
            "spec": { "containers": [{ "name": "app", "image": "example", "envFrom": [{ "secretRef": { "name": secret } }] }] },
        } },
    }))
    .expect("a Deployment");
    env.ns.api::<Deployment>().create(&PostParams::default(), &deployment).await.expect("creating the Deployment");
}

#[tokio::test]
async fn status_lists_vault_secrets_stores_and_the_workloads_using_them() {
    let env = Env::start("cli-status").await;
    env.vault.set_secret("db-password", "status-value-1");
    env.apply_vault_secret("app", one_key("password", "db-password")).await;
    env.wait_secret_value("app", "password", "status-value-1").await;
    deployment_using(&env, "web", "app", json!({}), 1).await;
    deployment_using(&env, "other", "unrelated", json!({}), 1).await;
    let report: Value = eventually(Duration::from_secs(20), "the store to be Ready in status", || {
        let env = &env;
        async move {
            let out = cli(env, &["status", "-o", "json"]).await;
            let report: Value = serde_json::from_str(&out.text).expect("status -o json is JSON");
            (report["stores"][0]["ready"] == "True").then_some(report)
        }
    })
    .await;
    let row = &report["vaultSecrets"][0];
    assert_eq!(row["name"], "app");
    assert_eq!(row["store"], "VaultStore/kv");
    assert_eq!(row["ready"], "True");
    assert_eq!(row["reason"], "Synced", "{row}");
    assert_eq!(row["workloads"], json!(["Deployment/web"]));
    assert!(row["lastSync"].is_string() && row["nextRefresh"].is_string(), "{row}");
    assert_eq!(report["stores"][0]["name"], "kv");
    let table = cli(&env, &["status"]).await.text;
    assert!(table.contains("VAULTSECRET") && table.contains("Deployment/web"), "{table}");
    let yaml: Value = serde_yaml::from_str(&cli(&env, &["status", "-o", "yaml"]).await.text).expect("YAML");
    assert_eq!(yaml["vaultSecrets"][0]["name"], "app");
    // As a kubectl plugin: kubectl finds kubectl-vaultsync on PATH, and the binary reads the kubeconfig.
    let plugin = std::path::Path::new(env!("CARGO_BIN_EXE_kubectl-vaultsync"));
    let path =
        format!("{}:{}", plugin.parent().expect("a folder").display(), std::env::var("PATH").unwrap_or_default());
    let kubectl = vaultsync_e2e::process::tool("kubectl").expect("kubectl");
    let kubeconfig = vaultsync_e2e::ControlPlane::shared().kubeconfig_path().to_path_buf();
    let out = tokio::process::Command::new(kubectl)
        .args(["vaultsync", "status", "-n", &env.ns.name, "-o", "json"])
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .expect("running kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON from the plugin");
    assert_eq!(report["vaultSecrets"][0]["workloads"], json!(["Deployment/web"]));
    env.finish().await;
}

#[tokio::test]
async fn sync_forces_a_read_and_waits_for_the_result() {
    let env = Env::start("cli-sync").await;
    env.vault.set_secret("rotating", "sync-value-1");
    env.apply_vault_secret("app", one_key("value", "rotating")).await;
    env.wait_secret_value("app", "value", "sync-value-1").await;
    env.vault.set_secret("rotating", "sync-value-2");
    let out = cli(&env, &["sync", "app", "-q"]).await;
    assert_eq!(out.code, 0, "{}", out.text);
    assert!(out.text.starts_with("synced "), "{}", out.text);
    // The command returned once the operator acted: the new value is there already.
    let secret = env.secret("app").await.expect("the Secret");
    assert_eq!(secret.data.expect("data")["value"].0, b"sync-value-2");
    // A failing sync is reported with the reason and a pointer to `why`.
    env.apply_vault_secret("broken", one_key("value", "rotating")).await;
    env.wait_reason("broken", "Synced").await;
    env.vault.forbid("rotating");
    let out = cli(&env, &["sync", "broken", "-q", "--timeout", "20s"]).await;
    assert_eq!(out.code, 1, "{}", out.text);
    assert!(
        out.text.contains("did not sync (Forbidden)") && out.text.contains("kubectl vaultsync why"),
        "{}",
        out.text
    );
    env.finish().await;
}

/// A ClusterVaultStore on the test's vault with `conditions`, named after the test's namespace.
async fn cluster_store(env: &Env, conditions: Value) -> String {
    let name = format!("{}-shared", env.ns.name);
    env.apply_cluster_store(&name, conditions).await;
    name
}

/// `why NAME` exits 1 with a line holding `expected`.
async fn assert_wrong(env: &Env, name: &str, expected: &str) {
    let out = cli(env, &["why", name]).await;
    assert_eq!(out.code, 1, "{}", out.text);
    assert!(out.text.contains(expected), "why {name}: expected {expected:?} in {:?}", out.text);
}

#[tokio::test]
async fn why_names_what_is_wrong_and_the_fix() {
    let env = Env::start("cli-why").await;
    env.vault.set_secret("team-a-db", "why-value-1");
    assert_wrong(&env, "nothing-here", "does not exist").await;

    let mut spec = one_key("password", "team-a-db");
    spec["storeRef"]["name"] = json!("no-such-store");
    env.apply_vault_secret("missing-store", spec).await;
    let missing = format!("VaultStore/{}/no-such-store does not exist: create it", env.ns.name);
    assert_wrong(&env, "missing-store", &missing).await;

    let elsewhere = cluster_store(&env, json!([{ "namespaces": ["some-other-namespace"] }])).await;
    let mut spec = one_key("password", "team-a-db");
    spec["storeRef"] = json!({ "kind": "ClusterVaultStore", "name": elsewhere });
    env.apply_vault_secret("refused-namespace", spec).await;
    let refused = format!("may not be used from namespace {0}: add {0} to spec.conditions", env.ns.name);
    assert_wrong(&env, "refused-namespace", &refused).await;

    cluster_store(&env, json!([{ "namespaces": [env.ns.name], "allowedObjects": ["team-b-*"] }])).await;
    assert_wrong(&env, "refused-namespace", "to read team-a-db: add a glob matching team-a-db to allowedObjects").await;

    env.apply_vault_secret("absent-object", one_key("password", "not-in-the-vault")).await;
    env.wait_reason("absent-object", "NotFound").await;
    assert_wrong(&env, "absent-object", "(NotFound): create the object in the vault").await;

    let taken = Secret {
        metadata: kube::api::ObjectMeta { name: Some("taken".into()), ..Default::default() },
        ..Default::default()
    };
    env.ns.api::<Secret>().create(&PostParams::default(), &taken).await.expect("someone's Secret");
    let mut spec = one_key("password", "team-a-db");
    spec["target"] = json!({ "name": "taken" });
    env.apply_vault_secret("conflict", spec).await;
    assert_wrong(&env, "conflict", "Secret taken exists and was not created by this VaultSecret").await;

    let mut spec = one_key("password", "team-a-db");
    spec["target"] = json!({ "template": { "data": { "x": "{{ password | nosuchfilter }}" } } });
    env.apply_vault_secret("bad-template", spec).await;
    env.wait_reason("bad-template", "TemplateError").await;
    assert_wrong(&env, "bad-template", "(TemplateError): fix the template").await;

    env.apply_vault_secret("fine", one_key("password", "team-a-db")).await;
    env.wait_reason("fine", "Synced").await;
    let out = cli(&env, &["why", "fine"]).await;
    assert_eq!(out.code, 0, "{}", out.text);
    assert!(out.text.starts_with("nothing is wrong"), "{}", out.text);

    Api::<ClusterVaultStore>::all(env.ns.client.clone())
        .delete(&elsewhere, &DeleteParams::default())
        .await
        .expect("deleting the ClusterVaultStore");
    env.finish().await;
}

fn data(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name))
        .expect("test data")
}

/// Applies a migrated resource into the test's namespace; the apiserver's admission (schema and CEL rules) must
/// accept it. ClusterVaultStores get the test's namespace as a prefix (and VaultSecrets using one the same), and are
/// open to the test's namespace; [`delete_cluster_stores`] removes them.
async fn apply(env: &Env, mut resource: Value) {
    let kind = resource["kind"].as_str().expect("a kind").to_string();
    let plural = match kind.as_str() {
        "VaultSecret" => "vaultsecrets",
        "VaultStore" => "vaultstores",
        "ClusterVaultStore" => "clustervaultstores",
        other => panic!("migrate made a {other}"),
    };
    let resource_type = ApiResource {
        group: "vaultsync.dev".into(),
        version: "v1alpha1".into(),
        api_version: "vaultsync.dev/v1alpha1".into(),
        kind: kind.clone(),
        plural: plural.into(),
    };
    let mut name = resource["metadata"]["name"].as_str().expect("a name").to_string();
    let api: Api<DynamicObject> = if kind == "ClusterVaultStore" {
        // Cluster-wide: unique per test, and open to the test's namespace rather than the example's.
        name = format!("{}-{name}", env.ns.name);
        resource["metadata"]["name"] = json!(name);
        resource["spec"]["conditions"] = json!([{ "namespaces": [env.ns.name] }]);
        Api::all_with(env.ns.client.clone(), &resource_type)
    } else {
        resource["metadata"]["namespace"] = json!(env.ns.name);
        if resource["spec"]["storeRef"]["kind"] == "ClusterVaultStore" {
            let store = resource["spec"]["storeRef"]["name"].as_str().expect("a store").to_string();
            resource["spec"]["storeRef"]["name"] = json!(format!("{}-{store}", env.ns.name));
        }
        Api::namespaced_with(env.ns.client.clone(), &env.ns.name, &resource_type)
    };
    let object: DynamicObject = serde_json::from_value(resource).expect("an object");
    api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&object))
        .await
        .unwrap_or_else(|e| panic!("the apiserver refused the migrated {kind} {name}: {e}"));
}

/// Deletes the ClusterVaultStores [`apply`] made for this test.
async fn delete_cluster_stores(env: &Env) {
    let api = Api::<ClusterVaultStore>::all(env.ns.client.clone());
    for store in api.list(&Default::default()).await.expect("listing ClusterVaultStores") {
        let name = store.metadata.name.unwrap_or_default();
        if name.starts_with(&format!("{}-", env.ns.name)) {
            api.delete(&name, &DeleteParams::default()).await.expect("deleting a ClusterVaultStore");
        }
    }
}

#[tokio::test]
async fn migrated_resources_are_admitted_and_synced() {
    let env = Env::start("cli-migrate").await;
    // Admission: every example converts into resources the apiserver accepts.
    for file in ["eso-vault.yaml", "akv2k8s.yaml"] {
        let migration = vaultsync_cli::migrate::migrate(&data(file)).expect("migrates");
        assert!(!migration.resources.is_empty(), "{file}");
        for resource in migration.resources {
            apply(&env, resource).await;
        }
    }
    // Synced: the ESO example, pointed at the test vault, gives the Secret ESO would have made.
    env.vault.set_secret("billing-db-password", "migrate-value-1");
    env.vault.set_secret("billing-db-config", r#"{"user":"billing-app"}"#);
    env.vault.set_secret("billing-flags", r#"{"beta":"on"}"#);
    let text = data("eso-azure.yaml")
        .replace("https://example-vault.vault.azure.net/", &env.vault.url())
        .replace("example-tenant", TENANT)
        .replace("vaultsync-reader", READER_SA)
        .replace("client-id: app-reader", &format!("client-id: {CLIENT_ID}"));
    let migration = vaultsync_cli::migrate::migrate(&text).expect("migrates");
    for mut resource in migration.resources {
        if resource["kind"] == "VaultStore" {
            // What only the test environment needs: its Entra server and CA (ESO's azurekv has no such fields).
            let test_store = env.store_spec();
            let azure = &mut resource["spec"]["provider"]["azureKeyVault"];
            for field in ["cloud", "authorityHost", "caBundle"] {
                azure[field] = test_store["provider"]["azureKeyVault"][field].clone();
            }
        }
        apply(&env, resource).await;
    }
    let secret =
        env.wait_secret_value("db-credentials", "url", "postgres://billing-app:migrate-value-1@db:5432/billing").await;
    assert_eq!(secret.data.expect("data")["password"].0, b"migrate-value-1");
    delete_cluster_stores(&env).await;
    env.finish().await;
}

#[tokio::test]
async fn run_gives_a_command_the_keys_read_with_the_developers_token() {
    let env = Env::start("cli-run").await;
    env.vault.set_secret("run-db", r#"{"user":"app","password":"run-value-1"}"#);
    env.vault.set_secret("run-api-key", "run-value-2");
    let dir = std::env::temp_dir().join(format!("vaultsync-cli-run-{}", env.ns.name));
    std::fs::create_dir_all(&dir).expect("a folder");
    let file = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("writing a test file");
        path.display().to_string()
    };
    // The developer's own token (the test vault's), and the store as a file: no operator identity is involved.
    let token = file("token", format!("token-for-{}\n", env.ns.name));
    let store = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultStore", "metadata": { "name": "kv" },
        "spec": env.store_spec() });
    let store = file("store.yaml", serde_yaml::to_string(&store).expect("YAML"));
    let vs = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret", "metadata": { "name": "app" },
        "spec": { "storeRef": { "name": "kv" }, "data": [
            { "secretKey": "db.user", "remoteRef": { "name": "run-db", "property": "user" } },
            { "secretKey": "db.password", "remoteRef": { "name": "run-db", "property": "password" } },
            { "secretKey": "api-key", "remoteRef": { "name": "run-api-key" } },
        ] } });
    let vs = file("vs.yaml", serde_yaml::to_string(&vs).expect("YAML"));
    let out = dir.join("out");
    let shell = |script: String| vec!["--".to_string(), "sh".into(), "-c".into(), script];
    let run = |extra: Vec<String>| {
        let mut args: Vec<String> =
            ["run", "-f", &vs, "--store", &store, "--token-file", &token].iter().map(|s| s.to_string()).collect();
        args.extend(extra);
        args
    };

    // As environment variables.
    let args = run(shell(format!("env > {}", out.display())));
    let result = cli(&env, &refs(&args)).await;
    assert_eq!(result.code, 0, "{}", result.text);
    let printed = std::fs::read_to_string(&out).expect("the child's output");
    for line in ["db_user=app", "db_password=run-value-1", "api_key=run-value-2"] {
        assert!(printed.lines().any(|l| l == line), "{line} in the child's environment");
    }

    // As files in a private folder, removed when the command ends; the command's exit code is passed on.
    let script = format!(
        "{{ cat \"$VAULTSYNC_SECRETS_DIR/api-key\"; echo; stat -c %a \"$VAULTSYNC_SECRETS_DIR\"; echo \
         \"$VAULTSYNC_SECRETS_DIR\"; }} > {}; exit 3",
        out.display()
    );
    let mut extra = vec!["--files".to_string()];
    extra.extend(shell(script));
    let args = run(extra);
    let result = cli(&env, &refs(&args)).await;
    assert_eq!(result.code, 3, "the command's exit code");
    let printed = std::fs::read_to_string(&out).expect("the child's output");
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines[..2], ["run-value-2", "700"], "the value, in a folder only its owner can open");
    assert!(!std::path::Path::new(lines[2]).exists(), "the private folder is removed");
    std::fs::remove_dir_all(&dir).expect("removing the folder");
    env.finish().await;
}

#[tokio::test]
async fn rollout_status_follows_the_workloads_using_a_secret() {
    let env = Env::start("cli-rollout").await;
    env.vault.set_secret("rolled", "rollout-value-1");
    // No replicas (the control plane has no node): a rollout completes as soon as the controller sees it.
    deployment_using(&env, "web", "app", json!({ "vaultsync.dev/reload": "true" }), 0).await;
    deployment_using(&env, "other", "app", json!({}), 0).await;
    let mut spec = one_key("value", "rolled");
    spec["rollout"] = json!({ "debounce": "1s" });
    env.apply_vault_secret("app", spec).await;
    env.wait_secret_value("app", "value", "rollout-value-1").await;
    let out = cli(&env, &["rollout-status", "app", "--wait", "--timeout", "30s"]).await;
    assert_eq!(out.code, 0, "{}", out.text);
    assert!(out.text.contains("Deployment/web: runs the current content; rollout complete"), "{}", out.text);
    assert!(out.text.contains("Deployment/other: uses the Secret but is not rolled by vaultsync"), "{}", out.text);

    // A new version: the operator rolls the labelled Deployment, and the command waits for that.
    env.vault.set_secret("rolled", "rollout-value-2");
    env.annotate("app", "vaultsync.dev/force-sync", "1").await;
    env.wait_secret_value("app", "value", "rollout-value-2").await;
    let out = cli(&env, &["rollout-status", "app", "--wait", "--timeout", "30s"]).await;
    assert_eq!(out.code, 0, "{}", out.text);
    let web = env.ns.api::<Deployment>().get("web").await.expect("the Deployment");
    let template = web.spec.template.metadata.and_then(|m| m.annotations).unwrap_or_default();
    assert!(template.contains_key("vaultsync.dev/content-hash"), "rolled: {template:?}");
    env.finish().await;
}

#[tokio::test]
async fn a_migrated_external_secret_on_openbao_syncs() {
    use base64::Engine as _;
    let env = Env::start("cli-migrate-bao").await;
    let (bao, root) = vaultsync_e2e::openbao::shared_with_root();
    let mount = root.enable_kv(2).await.expect("a KV mount");
    root.kv2_put(&mount, "team-a/payments", json!({ "password": "bao-migrate-value-1" })).await.expect("a secret");
    root.kv2_put(&mount, "team-a/payments-config", json!({ "region": "eu", "retries": 3 })).await.expect("a secret");
    let policy = root.read_policy(&[format!("{mount}/data/*")]).await.expect("a policy");
    let token = root.token_with(&policy).await.expect("a token");
    env.remember_values(&["bao-migrate-value-1", &token]);
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("vault-token".into()), ..Default::default() },
        string_data: Some([("token".to_string(), token.clone())].into()),
        ..Default::default()
    };
    env.ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("the token Secret");
    let text = data("eso-vault-token.yaml")
        .replace("https://vault.example.com:8200", &bao.addr)
        .replace("path: secret", &format!("path: {mount}"))
        .replace("Q0EgQlVORExF", &base64::engine::general_purpose::STANDARD.encode(&bao.ca_pem));
    let migration = vaultsync_cli::migrate::migrate(&text).expect("migrates");
    assert!(migration.notes.is_empty(), "everything carried over: {:?}", migration.notes);
    for resource in migration.resources {
        apply(&env, resource).await;
    }
    env.wait_secret_value("payments", "api-password", "bao-migrate-value-1").await;
    let secret = env.wait_secret_value("payments", "retries", "3").await;
    assert_eq!(secret.data.expect("data")["region"].0, b"eu");
    env.finish().await;
}

#[tokio::test]
async fn migrated_akv2k8s_secrets_sync_with_the_operators_identity() {
    let mut env = Env::start("cli-migrate-akv").await;
    // akv2k8s reads with its controller's identity; the migrated store reads with the operator's managed identity.
    let entra = env.use_managed_identity().await;
    // Base64, as the example's base64decode transform expects.
    env.vault.set_secret("smtp-password", "c210cC1taWdyYXRlLXZhbHVl");
    env.vault.set_secret("app-settings", r#"{"region":"eu","replicas":"3"}"#);
    let migration = vaultsync_cli::migrate::migrate(&data("akv2k8s.yaml")).expect("migrates");
    for mut resource in migration.resources {
        if resource["kind"] == "ClusterVaultStore" {
            // The test vault and its Entra server and CA, for the example's vault name and the tenant placeholder.
            let azure = &mut resource["spec"]["provider"]["azureKeyVault"];
            azure["vaultUrl"] = json!(env.vault.url());
            azure["tenantId"] = json!(TENANT);
            azure["cloud"] = json!("Custom");
            azure["authorityHost"] = json!(entra.authority_host());
            azure["caBundle"] = env.store_spec()["provider"]["azureKeyVault"]["caBundle"].clone();
        }
        apply(&env, resource).await;
    }
    env.wait_secret_value("smtp", "password", "smtp-migrate-value").await;
    env.wait_secret_value("app-settings", "region", "eu").await;
    env.remember_values(&["smtp-migrate-value"]);
    delete_cluster_stores(&env).await;
    env.finish().await;
}
