//! The commands that need no cluster: `render` with the operator's rendering, and `migrate` on example resources
//! of each peer (what is made, and that every field not carried over is named).

use std::path::PathBuf;

use base64::Engine as _;
use clap::Parser as _;
use serde_json::Value;
use vaultsync_cli::{Cli, migrate};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

async fn run(args: &[&str]) -> vaultsync_cli::Output {
    let cli = Cli::try_parse_from(std::iter::once("kubectl-vaultsync").chain(args.iter().copied())).expect("arguments");
    vaultsync_cli::run(cli).await.expect("the command runs")
}

fn yaml_documents(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

#[tokio::test]
async fn render_uses_property_decoding_extract_and_templates() {
    let (vs, values) = (data("render-vaultsecret.yaml"), data("render-values.yaml"));
    let out = run(&["render", "-f", vs.to_str().unwrap(), "--values", values.to_str().unwrap()]).await;
    assert_eq!(out.code, 0, "{}", out.text);
    let secret = yaml_documents(&out.text).pop().expect("a Secret");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "billing-db");
    assert_eq!(secret["metadata"]["labels"]["team"], "billing");
    assert_eq!(secret["metadata"]["labels"]["db-user"], "billing-app");
    let value = |key: &str| {
        let encoded = secret["data"][key].as_str().unwrap_or_else(|| panic!("key {key} in {secret}"));
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap()
    };
    assert_eq!(value("username"), "billing-app");
    assert_eq!(value("password"), "correct-horse");
    assert_eq!(value("beta"), "on");
    assert_eq!(value("limit"), "10");
    assert_eq!(value("url"), "postgres://billing-app:correct-horse@db:5432/billing");
    assert_eq!(value("config.yaml"), "user: billing-app\nbeta: on\n");
    // --string-data prints text values as they are.
    let out = run(&["render", "-f", vs.to_str().unwrap(), "--values", values.to_str().unwrap(), "--string-data"]).await;
    let secret = yaml_documents(&out.text).pop().expect("a Secret");
    assert_eq!(secret["stringData"]["password"], "correct-horse");
    // "on" would be a boolean to kubectl's YAML reader: it stays in data.
    assert!(secret["stringData"].get("beta").is_none() && secret["data"]["beta"].is_string(), "{secret}");
}

#[tokio::test]
async fn render_reports_what_the_operator_would() {
    let dir = std::env::temp_dir().join(format!("vaultsync-cli-render-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vs = |template: &str| {
        format!(
            "apiVersion: vaultsync.dev/v1alpha1\nkind: VaultSecret\nmetadata: {{name: a}}\nspec:\n  storeRef: {{name: \
             kv}}\n  data:\n    - secretKey: password\n      remoteRef: {{name: pw, property: missing}}\n{template}"
        )
    };
    let cases = [
        (vs(""), "pw: '{\"user\": \"x\"}'", "InvalidValue"),
        (vs(""), "other: x", "NotFound"),
        (
            vs("  target:\n    template:\n      data:\n        x: \"{{ password | nosuchfilter }}\"\n")
                .replace(", property: missing", ""),
            "pw: x",
            "TemplateError",
        ),
    ];
    for (i, (vault_secret, objects, reason)) in cases.iter().enumerate() {
        let (vs_file, values_file) = (dir.join(format!("vs-{i}.yaml")), dir.join(format!("values-{i}.yaml")));
        std::fs::write(&vs_file, vault_secret).unwrap();
        std::fs::write(&values_file, format!("objects:\n  {objects}\n")).unwrap();
        let out = run(&["render", "-f", vs_file.to_str().unwrap(), "--values", values_file.to_str().unwrap()]).await;
        assert_eq!(out.code, 1, "{}", out.text);
        assert!(out.text.contains(&format!("does not render: {reason}:")), "{reason}: {}", out.text);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The notes about one resource, by field.
fn notes(migration: &migrate::Migration, resource: &str) -> Vec<String> {
    migration.notes.iter().filter(|n| n.resource == resource).map(|n| n.field.clone()).collect()
}

#[test]
fn migrate_external_secrets_for_azure() {
    let migration = migrate::migrate(&std::fs::read_to_string(data("eso-azure.yaml")).unwrap()).unwrap();
    let [store, vs] = &migration.resources[..] else { panic!("a store and a VaultSecret: {:?}", migration.resources) };
    assert_eq!(store["kind"], "VaultStore");
    let azure = &store["spec"]["provider"]["azureKeyVault"];
    assert_eq!(azure["vaultUrl"], "https://example-vault.vault.azure.net");
    // The client ID comes from the service account's annotation, as ESO reads it.
    assert_eq!(azure["auth"]["workloadIdentity"]["clientId"], "app-reader");
    assert_eq!(vs["spec"]["storeRef"]["name"], "azure-store");
    assert_eq!(vs["spec"]["refreshInterval"], "15m");
    assert_eq!(vs["spec"]["data"][0]["remoteRef"]["name"], "billing-db-password");
    assert_eq!(vs["spec"]["data"][1]["remoteRef"]["property"], "user");
    assert_eq!(
        vs["spec"]["target"]["template"]["data"]["url"],
        "postgres://{{ username }}:{{ password }}@db:5432/billing"
    );
    assert_eq!(vs["spec"]["dataFrom"][0]["rewrite"][0]["regexp"]["target"], "flag-$1");
    assert_eq!(vs["metadata"]["labels"]["app"], "billing");
    assert_eq!(notes(&migration, "SecretStore/team-a/azure-store"), ["spec.retrySettings"]);
    assert_eq!(
        notes(&migration, "ExternalSecret/team-a/db-credentials"),
        ["spec.dataFrom[0].extract.conversionStrategy"]
    );
}

#[test]
fn migrate_external_secrets_for_vault_names_every_field_left_out() {
    let migration = migrate::migrate(&std::fs::read_to_string(data("eso-vault.yaml")).unwrap()).unwrap();
    let [store, vs] = &migration.resources[..] else { panic!("{:?}", migration.resources) };
    assert_eq!(store["kind"], "ClusterVaultStore");
    let bao = &store["spec"]["provider"]["openbao"];
    assert_eq!(bao["mount"], "kv");
    assert_eq!(bao["auth"]["kubernetes"]["serviceAccountRef"]["namespace"], "secrets-system");
    assert_eq!(store["spec"]["conditions"], serde_json::json!([{ "namespaces": ["team-a", "team-b"] }]));
    assert_eq!(vs["spec"]["refreshInterval"], "10s");
    assert_eq!(vs["spec"]["target"]["creationPolicy"], "Merge");
    assert_eq!(vs["spec"]["target"]["type"], "kubernetes.io/basic-auth");
    assert_eq!(notes(&migration, "ClusterSecretStore/vault-backend"), ["spec.conditions[1].namespaceRegexes"]);
    let mut fields = notes(&migration, "ExternalSecret/team-a/api-keys");
    fields.sort();
    assert_eq!(
        fields,
        [
            "spec.dataFrom[1]",
            "spec.data[0].sourceRef",
            "spec.refreshInterval",
            "spec.target.deletionPolicy",
            "spec.target.template.data.token",
        ]
    );
}

#[test]
fn migrate_akv2k8s_and_secret_provider_classes() {
    let migration = migrate::migrate(&std::fs::read_to_string(data("akv2k8s.yaml")).unwrap()).unwrap();
    let kinds: Vec<&str> = migration.resources.iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ClusterVaultStore", "VaultSecret", "ClusterVaultStore", "VaultSecret", "ClusterVaultStore", "VaultSecret"]
    );
    let smtp = &migration.resources[1]["spec"];
    assert_eq!(
        smtp["data"][0],
        serde_json::json!({ "secretKey": "password", "remoteRef": { "name": "smtp-password", "decoding": "Base64" } })
    );
    assert_eq!(smtp["target"]["name"], "smtp");
    assert_eq!(migration.resources[3]["spec"]["dataFrom"][0]["extract"]["name"], "app-settings");
    assert_eq!(migration.resources[5]["spec"]["data"][0]["secretKey"], "tls.crt");
    assert_eq!(
        notes(&migration, "AzureKeyVaultSecret/team-a/smtp-password"),
        ["spec.output.transform[1]", "spec.vault"]
    );
    assert_eq!(
        notes(&migration, "AzureKeyVaultSecret/team-a/ingress-cert"),
        ["spec.output.secret.chainOrder", "spec.vault"]
    );

    let migration =
        migrate::migrate(&std::fs::read_to_string(data("secretproviderclass-azure.yaml")).unwrap()).unwrap();
    let [class] = &migration.resources[..] else { panic!("{:?}", migration.resources) };
    assert_eq!(class["spec"]["provider"], "vaultsync");
    assert_eq!(class["spec"]["parameters"]["clientID"], "app-reader");
    assert!(class["spec"]["parameters"].get("useVMManagedIdentity").is_none());
    assert_eq!(class["spec"]["secretObjects"][0]["secretName"], "db");
    assert_eq!(
        notes(&migration, "SecretProviderClass/team-a/azure-kv"),
        [
            "spec.parameters.objects.array[1].objectType",
            "spec.parameters.useVMManagedIdentity",
            "spec.parameters.userAssignedIdentityID"
        ]
    );
}

#[tokio::test]
async fn migrate_prints_yaml_and_the_notes() {
    let out = run(&["migrate", "-f", data("eso-vault.yaml").to_str().unwrap()]).await;
    assert_eq!(out.code, 0);
    assert!(out.text.contains("# Not carried over: 6 field(s)."), "{}", out.text);
    assert!(
        out.text.contains("# ExternalSecret/team-a/api-keys: spec.dataFrom[1]: only extract and find"),
        "{}",
        out.text
    );
    assert_eq!(yaml_documents(&out.text).len(), 2);
}

#[tokio::test]
async fn help_has_examples_and_completions_are_made() {
    for command in ["status", "why", "sync", "rollout-status", "render", "migrate", "run"] {
        let error = Cli::try_parse_from(["kubectl-vaultsync", command, "--help"]).unwrap_err();
        assert!(error.to_string().contains("Examples:"), "{command} --help: {error}");
    }
    let out = run(&["completion", "bash"]).await;
    assert!(out.text.contains("kubectl-vaultsync"), "{}", out.text);
}
