//! Every way a store authenticates to Azure, against the Entra and Key Vault test servers: a client secret, the
//! machine's managed identity (instance metadata service), the operator's own workload identity (the webhook's token
//! file); which stores may use the operator's identity; which token audiences the operator asks for; throttling by
//! Entra; and the request budget a store sets.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::{CLIENT_ID, Env, READER_SA, TENANT, one_key};
use vaultsync_api::{ClusterVaultStore, VaultSecret};
use vaultsync_e2e::{
    entra::{ClientSecret, EntraServer, Federation, Grant},
    keyvault::Op,
    service_account_token,
    tls::TestCa,
};

/// The access token the test vault accepts (see `Env`): every credential here is issued that one.
fn vault_token(env: &Env) -> String {
    format!("token-for-{}", env.ns.name)
}

/// An Azure store spec on the test vault with `auth`, tokens from `entra`.
fn azure_store(env: &Env, entra: &EntraServer, auth: Value) -> Value {
    json!({ "provider": { "azureKeyVault": {
        "vaultUrl": env.vault.url(), "tenantId": TENANT, "cloud": "Custom",
        "authorityHost": entra.authority_host(), "caBundle": TestCa::shared().ca_pem(), "auth": auth,
    }}})
}

async fn apply_cluster_store(env: &Env, name: &str, mut spec: Value) {
    spec["conditions"] = json!([{ "namespaces": [env.ns.name] }]);
    let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "ClusterVaultStore",
        "metadata": { "name": name }, "spec": spec });
    kube::Api::<ClusterVaultStore>::all(env.ns.client.clone())
        .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
        .await
        .expect("cluster store");
}

fn via(kind: &str, store: &str, key: &str, object: &str) -> Value {
    let mut spec = one_key(key, object);
    spec["storeRef"] = json!({ "kind": kind, "name": store });
    spec
}

#[tokio::test]
async fn a_client_secret_reads_the_vault_and_a_wrong_one_is_refused() {
    let env = Env::start("auth-secret").await;
    let entra = EntraServer::builder(Some(env.ns.client.clone()))
        .client_secret(ClientSecret {
            client_id: "app-secret".into(),
            secret: "the-client-secret-value".into(),
            access_token: vault_token(&env),
        })
        .resource(env.vault.challenge_resource())
        .start()
        .await
        .expect("entra");
    env.vault.set_secret("by-secret", "read-with-a-client-secret");
    for (name, value) in [("good-secret", "the-client-secret-value"), ("bad-secret", "not-the-secret-value")] {
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            string_data: Some([("secret".to_string(), value.to_string())].into()),
            ..Default::default()
        };
        env.ns.api::<Secret>().create(&PostParams::default(), &secret).await.expect("credential Secret");
    }
    let sp = |secret: &str| json!({ "servicePrincipal": { "clientId": "app-secret", "clientSecretRef": { "name": secret, "key": "secret" } } });
    env.apply_store("sp", azure_store(&env, &entra, sp("good-secret"))).await;
    env.apply_store("sp-wrong", azure_store(&env, &entra, sp("bad-secret"))).await;
    env.apply_vault_secret("good", via("VaultStore", "sp", "k", "by-secret")).await;
    env.apply_vault_secret("bad", via("VaultStore", "sp-wrong", "k", "by-secret")).await;
    env.wait_secret_value("good", "k", "read-with-a-client-secret").await;
    let vs = env.wait_reason("bad", "AuthenticationFailed").await;
    let message = vs.status.expect("status").conditions[0].message.clone();
    assert!(message.contains("token endpoint"), "{message}");
    assert!(entra.calls(Grant::ClientSecret) >= 2);
    env.remember_values(&["the-client-secret-value", "not-the-secret-value"]);
    env.finish().await;
}

#[tokio::test]
async fn managed_identity_is_the_operators_and_only_cluster_stores_may_use_it() {
    let mut env = Env::start("auth-managed").await;
    let entra = env.use_managed_identity().await;
    env.vault.set_secret("by-machine", "read-with-managed-identity");
    // The metadata service is still starting: it answers 404 twice and 410 once, which are retried.
    entra.fail_next(vaultsync_e2e::entra::Endpoint::Metadata, 2, 404, None);
    entra.fail_next(vaultsync_e2e::entra::Endpoint::Metadata, 1, 410, None);

    let cluster = format!("{}-machine", env.ns.name);
    apply_cluster_store(&env, &cluster, azure_store(&env, &entra, json!({ "managedIdentity": {} }))).await;
    env.apply_vault_secret("machine", via("ClusterVaultStore", &cluster, "k", "by-machine")).await;
    env.wait_secret_value("machine", "k", "read-with-managed-identity").await;
    assert!(entra.calls(Grant::ManagedIdentity) >= 4, "three refusals retried, then a token");

    // A namespaced VaultStore may not read with the operator's identity, which every namespace would share.
    let reads = env.vault.calls(Op::GetSecret);
    env.apply_store("mine", azure_store(&env, &entra, json!({ "managedIdentity": {} }))).await;
    env.apply_vault_secret("borrowed", via("VaultStore", "mine", "k", "by-machine")).await;
    let vs = env.wait_reason("borrowed", "IdentityNotAllowed").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("operator's own identity"));
    assert_eq!(env.vault.calls(Op::GetSecret), reads, "a refused identity reads nothing");
    env.finish().await;
}

#[tokio::test]
async fn the_operators_own_workload_identity_comes_from_the_webhooks_token_file() {
    let mut env = Env::start("auth-own").await;
    let accounts = env.ns.api::<ServiceAccount>();
    let account = ServiceAccount {
        metadata: ObjectMeta { name: Some("operator-identity".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &account).await.expect("the operator's account");
    let audience = "api://AzureADTokenExchange";
    let entra = EntraServer::builder(Some(env.ns.client.clone()))
        .federation(Federation {
            client_id: "operator-app".into(),
            subject: format!("system:serviceaccount:{}:operator-identity", env.ns.name),
            audience: audience.into(),
            access_token: vault_token(&env),
        })
        .resource(env.vault.challenge_resource())
        .start()
        .await
        .expect("entra");
    // What the kubelet projects for the webhook: a token of the operator's account, in a file.
    let token = service_account_token(&accounts, "operator-identity", audience).await.expect("token");
    let dir = std::env::temp_dir().join(format!("vaultsync-wi-{}", env.ns.name));
    std::fs::create_dir_all(&dir).expect("token folder");
    std::fs::write(dir.join("token"), &token).expect("token file");
    env.stop_operator().await;
    let mut args = env.operator_args();
    args.azure_client_id = Some("operator-app".into());
    args.azure_tenant_id = Some(TENANT.into());
    args.azure_federated_token_file = Some(dir.join("token"));
    args.azure_authority_host = entra.authority_host().into();
    env.start_operator_with(args);

    env.vault.set_secret("by-operator", "read-with-the-operators-identity");
    let cluster = format!("{}-own", env.ns.name);
    apply_cluster_store(&env, &cluster, azure_store(&env, &entra, json!({ "managedIdentity": {} }))).await;
    env.apply_vault_secret("own", via("ClusterVaultStore", &cluster, "k", "by-operator")).await;
    env.wait_secret_value("own", "k", "read-with-the-operators-identity").await;
    assert_eq!(entra.calls(Grant::Federated), 1, "one exchange of the token file");
    let _ = std::fs::remove_dir_all(&dir);
    env.remember_values(&[&token]);
    env.finish().await;
}

#[tokio::test]
async fn tokens_are_requested_only_for_allowed_audiences() {
    let env = Env::start("auth-audience").await;
    env.vault.set_secret("k", "v-audience");
    let mut spec = env.store_spec();
    // A token for the apiserver's own audience would let whoever runs the vault act as the account there.
    spec["provider"]["azureKeyVault"]["auth"]["workloadIdentity"]["audience"] = json!("https://kubernetes.default.svc");
    env.apply_store("odd", spec).await;
    env.apply_vault_secret("odd", via("VaultStore", "odd", "k", "k")).await;
    let vs = env.wait_reason("odd", "IdentityNotAllowed").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("https://kubernetes.default.svc"));
    assert_eq!(env.vault.calls(Op::GetSecret), 0);
    env.finish().await;
}

#[tokio::test]
async fn entra_throttling_is_reported_as_throttled() {
    let env = Env::start("auth-throttled").await;
    env.vault.set_secret("k", "v-throttled");
    // A fresh token service that answers every token request 429 with a long Retry-After, which is handed back rather
    // than slept through.
    let entra = EntraServer::builder(Some(env.ns.client.clone()))
        .federation(Federation {
            client_id: CLIENT_ID.into(),
            subject: format!("system:serviceaccount:{}:{READER_SA}", env.ns.name),
            audience: "api://AzureADTokenExchange".into(),
            access_token: vault_token(&env),
        })
        .resource(env.vault.challenge_resource())
        .start()
        .await
        .expect("entra");
    entra.fail_next(vaultsync_e2e::entra::Endpoint::Token, 20, 429, Some(600));
    let auth = json!({ "workloadIdentity": { "serviceAccountRef": { "name": READER_SA }, "clientId": CLIENT_ID } });
    env.apply_store("busy", azure_store(&env, &entra, auth)).await;
    env.apply_vault_secret("slow", via("VaultStore", "busy", "k", "k")).await;
    let vs = env.wait_reason("slow", "Throttled").await;
    assert!(vs.status.expect("status").conditions[0].message.contains("throttling"));
    assert_eq!(env.vault.calls(Op::GetSecret), 0, "no token, no read");
    env.finish().await;
}

#[tokio::test]
async fn a_store_budget_spreads_its_calls() {
    let env = Env::start("auth-budget").await;
    let mut spec = env.store_spec();
    spec["budget"] = json!({ "requestsPerSecond": 1, "burst": 1 });
    env.apply_store("slow", spec).await;
    for i in 0..4 {
        env.vault.set_secret(&format!("object-{i}"), &format!("budget-value-{i}"));
    }
    let started = std::time::Instant::now();
    for i in 0..4 {
        env.apply_vault_secret(&format!("vs-{i}"), via("VaultStore", "slow", "k", &format!("object-{i}"))).await;
    }
    for i in 0..4 {
        env.wait_secret_value_within(&format!("vs-{i}"), "k", &format!("budget-value-{i}"), Duration::from_secs(30))
            .await;
    }
    // The challenge, a token and four reads at one a second after a burst of one: at least five seconds.
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(4), "six calls at 1/s took only {took:?}");
    let api = env.ns.api::<VaultSecret>();
    assert!(api.get("vs-3").await.expect("vs-3").status.is_some());
    env.finish().await;
}
