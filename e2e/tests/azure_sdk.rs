//! Microsoft's own SDK (Python: azure-identity, azure-keyvault-secrets/-keys/-certificates, pinned in
//! `e2e/conformance/requirements.txt`) drives the Entra and Key Vault test servers, so their wire
//! format is judged by code nobody here wrote. The clients run with their default api-versions and
//! with the challenge-resource check on; the vault is `https://conformance.localhost:PORT` and its
//! challenge names the resource `https://localhost:PORT`, as `<name>.vault.azure.net` and
//! `https://vault.azure.net`. The program (`e2e/conformance/azure_sdk.py`) runs one phase at a time;
//! between phases this test injects faults and checks what the servers counted.

use std::{collections::BTreeMap, path::PathBuf};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde_json::Value;
use vaultsync_e2e::{
    TestNamespace,
    entra::{ClientSecret, Endpoint, EntraServer, Federation, Grant, ManagedIdentity},
    keyvault::{KeyVaultServer, Op},
    process::cache_dir,
    service_account_token,
    tls::TestCa,
};

const TENANT: &str = "7f3c1a52-0d4e-4b8a-9c21-5e6f7a8b9c0d";
const AUDIENCE: &str = "api://AzureADTokenExchange";

/// A folder of the test's files, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one phase of the conformance program; returns its summary after checking every check passed.
/// The servers answer it from this test's runtime, so the program is awaited, never blocked on.
async fn run_phase(phase: &str, env: &BTreeMap<&str, String>) -> Value {
    let python = cache_dir().join("azure-sdk/bin/python");
    assert!(python.exists(), "{} is missing: run `make tools` (scripts/install-azure-sdk.sh)", python.display());
    let program = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/azure_sdk.py");
    let output = tokio::process::Command::new(&python)
        .arg(&program)
        .arg(phase)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running the conformance program");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let failed: Vec<&Value> = lines.iter().filter(|l| l["ok"] == false).collect();
    assert!(
        output.status.success() && failed.is_empty(),
        "phase {phase} failed: {failed:#?}\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = lines.iter().rev().find_map(|l| l.get("summary")).cloned().expect("a summary line");
    assert!(summary["passed"].as_u64() > Some(0), "phase {phase} checked nothing: {summary}");
    eprintln!("phase {phase}: {summary}");
    summary
}

#[tokio::test]
async fn microsoft_sdk_clients_accept_the_entra_and_key_vault_test_servers() {
    let ns = TestNamespace::new("azure-sdk").await;
    let accounts: Api<ServiceAccount> = ns.api();
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some("sdk".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await.expect("service account");

    let access_token = format!("sdk-token-{}", uuid::Uuid::new_v4().simple());
    let vault = KeyVaultServer::builder().vault_name("conformance").start().await.expect("vault");
    let entra = EntraServer::builder(Some(ns.client.clone()))
        .federation(Federation {
            client_id: "sdk-workload".into(),
            subject: format!("system:serviceaccount:{}:sdk", ns.name),
            audience: AUDIENCE.into(),
            access_token: access_token.clone(),
        })
        .client_secret(ClientSecret {
            client_id: "sdk-service-principal".into(),
            secret: "sdk-client-secret-value".into(),
            access_token: access_token.clone(),
        })
        .managed_identity(ManagedIdentity { client_id: None, access_token: access_token.clone() })
        .managed_identity(ManagedIdentity {
            client_id: Some("sdk-user-assigned".into()),
            access_token: access_token.clone(),
        })
        .resource(vault.challenge_resource())
        .start()
        .await
        .expect("entra");
    vault.set_authority(entra.authority_host(), TENANT);
    vault.require_bearer(Some(access_token.clone()));

    let dir = TempDir(std::env::temp_dir().join(format!("vaultsync-azure-sdk-{}", uuid::Uuid::new_v4().simple())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, TestCa::shared().ca_pem()).expect("CA file");
    let token_file = dir.0.join("token");
    let sa_token = service_account_token(&accounts, "sdk", AUDIENCE).await.expect("TokenRequest");
    std::fs::write(&token_file, sa_token).expect("token file");

    let env = BTreeMap::from([
        ("REQUESTS_CA_BUNDLE", ca.display().to_string()),
        ("VAULT_URL", vault.url()),
        ("RESOURCE", vault.challenge_resource().to_string()),
        ("AUTHORITY_HOST", entra.authority_host().to_string()),
        ("TENANT_ID", TENANT.to_string()),
        ("SECRET_CLIENT_ID", "sdk-service-principal".to_string()),
        ("CLIENT_SECRET", "sdk-client-secret-value".to_string()),
        ("WORKLOAD_CLIENT_ID", "sdk-workload".to_string()),
        ("AZURE_FEDERATED_TOKEN_FILE", token_file.display().to_string()),
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", entra.metadata_host().to_string()),
        ("MANAGED_CLIENT_ID", "sdk-user-assigned".to_string()),
        ("ACCESS_TOKEN", access_token.clone()),
    ]);

    // Identity: the metadata endpoint's first answers are faults the SDK must retry through.
    entra.fail_next(Endpoint::Metadata, 1, 410, None);
    entra.fail_next(Endpoint::Metadata, 1, 429, Some(1));
    entra.fail_next(Endpoint::Token, 1, 429, Some(1));
    let identity = run_phase("credentials", &env).await;
    assert!(entra.calls(Grant::Discovery) >= 1, "MSAL read the tenant's OpenID configuration");
    assert_eq!(entra.calls(Grant::ClientSecret), 2, "one throttled client-secret request, then one issued");
    assert_eq!(entra.calls(Grant::Federated), 1);
    assert_eq!(entra.calls(Grant::ManagedIdentity), 5, "410 and 429 retried, then system, user and unknown identity");

    let secrets = run_phase("secrets", &env).await;
    assert!(vault.calls(Op::ListDeletedSecrets) >= 1 && vault.calls(Op::RecoverDeletedSecret) == 1);
    assert_eq!(vault.calls(Op::PurgeDeletedSecret), 1);

    vault.set_secret("throttled-secret", "after-429");
    let gets = vault.calls(Op::GetSecret);
    vault.fail_next(1, 429, Some(1));
    run_phase("throttled", &env).await;
    assert_eq!(vault.calls(Op::GetSecret), gets + 2, "the throttled read and its retry");

    let keys = run_phase("keys", &env).await;
    assert_eq!(vault.calls(Op::CreateKey), 5);

    let certificates = run_phase("certificates", &env).await;
    assert_eq!(vault.calls(Op::CreateCertificate), 3);
    assert_eq!(vault.calls(Op::ImportCertificate), 3, "two imports and a refused one");

    // The SDKs' default api-versions are what the servers were judged with.
    assert_eq!(secrets["api_versions"]["secrets"], "2026-04-01", "{secrets}");
    assert_eq!(keys["api_versions"]["keys"], "2025-07-01", "{keys}");
    assert_eq!(certificates["api_versions"]["certificates"], "2026-04-01", "{certificates}");
    eprintln!("verified with {}", identity["versions"]);
}
