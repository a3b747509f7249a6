//! Smoke tests of the test environment itself: each real component does what later tests
//! rely on.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    authentication::v1::{TokenReview, TokenReviewSpec},
    core::v1::{Secret, ServiceAccount},
};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use vaultsync_e2e::{TestNamespace, eventually, keyvault::KeyVaultServer, openbao::OpenBao, service_account_token};

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1",
                    "envFrom": [{ "secretRef": { "name": "app-secret" } }] }] }
            }
        }
    }))
    .expect("deployment fixture")
}

async fn replica_sets(api: &Api<ReplicaSet>, app: &str) -> Vec<ReplicaSet> {
    api.list(&ListParams::default().labels(&format!("app={app}"))).await.expect("listing replica sets").items
}

#[tokio::test]
async fn controller_manager_rolls_out_a_changed_pod_template() {
    let ns = TestNamespace::new("smoke-rollout").await;
    let secrets: Api<Secret> = ns.api();
    let secret = Secret {
        metadata: kube::api::ObjectMeta { name: Some("app-secret".into()), ..Default::default() },
        string_data: Some(BTreeMap::from([("password".into(), "not-a-real-secret".into())])),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await.expect("creating a secret");
    let stored = secrets.get("app-secret").await.expect("reading the secret back");
    assert_eq!(stored.data.expect("data")["password"].0, b"not-a-real-secret");

    let deployments: Api<Deployment> = ns.api();
    deployments.create(&PostParams::default(), &deployment("web")).await.expect("creating a deployment");
    let rs: Api<ReplicaSet> = ns.api();
    let first = eventually(Duration::from_secs(30), "the first ReplicaSet", || async {
        let list = replica_sets(&rs, "web").await;
        (list.len() == 1).then(|| list[0].clone())
    })
    .await;
    let first_hash = first.metadata.labels.as_ref().expect("labels")["pod-template-hash"].clone();

    let patch = json!({ "spec": { "template": { "metadata": { "annotations": { "vaultsync.dev/test": "2" } } } } });
    deployments.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patching the template");
    let hashes = eventually(Duration::from_secs(30), "a second ReplicaSet", || async {
        let list = replica_sets(&rs, "web").await;
        (list.len() == 2).then(|| {
            list.iter()
                .map(|r| r.metadata.labels.as_ref().expect("labels")["pod-template-hash"].clone())
                .collect::<Vec<_>>()
        })
    })
    .await;
    assert!(hashes.contains(&first_hash), "the first ReplicaSet is still there: {hashes:?}");
    assert_ne!(hashes[0], hashes[1], "the new ReplicaSet has a new pod-template-hash");
}

async fn review(client: &kube::Client, token: &str, audience: &str) -> (bool, Option<String>) {
    let review = TokenReview {
        spec: TokenReviewSpec { token: token.into(), audiences: Some(vec![audience.into()]) },
        ..Default::default()
    };
    let answer =
        Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &review).await.expect("TokenReview");
    let status = answer.status.expect("token review status");
    (status.authenticated == Some(true), status.user.and_then(|u| u.username))
}

#[tokio::test]
async fn service_account_tokens_are_issued_and_reviewed_by_audience() {
    let ns = TestNamespace::new("smoke-tokens").await;
    let accounts: Api<ServiceAccount> = ns.api();
    let sa = ServiceAccount {
        metadata: kube::api::ObjectMeta { name: Some("workload".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await.expect("creating a service account");

    let token = service_account_token(&accounts, "workload", "vaultsync-test").await.expect("TokenRequest");
    let (ok, user) = review(&ns.client, &token, "vaultsync-test").await;
    assert!(ok, "a token for the audience is accepted");
    assert_eq!(user.as_deref(), Some(format!("system:serviceaccount:{}:workload", ns.name).as_str()));

    let other = service_account_token(&accounts, "workload", "someone-else").await.expect("TokenRequest");
    let (ok, _) = review(&ns.client, &other, "vaultsync-test").await;
    assert!(!ok, "a token for another audience is rejected");
}

#[tokio::test]
async fn key_vault_server_keeps_versions_over_verified_https() {
    let vault = KeyVaultServer::start().await.expect("starting the Key Vault server");
    let client = vault.client().expect("client trusting the test CA");
    let v1 = client.set("db-password", "first-value").await.expect("set v1");
    let v2 = client.set("db-password", "second-value").await.expect("set v2");
    assert_ne!(v1.id, v2.id, "each set makes a new version");
    let version_of = |id: &str| id.rsplit('/').next().expect("version").to_string();
    let old = client.get("db-password", Some(&version_of(&v1.id))).await.expect("get v1");
    let new = client.get("db-password", None).await.expect("get latest");
    assert_eq!(old.value.as_deref(), Some("first-value"));
    assert_eq!(new.value.as_deref(), Some("second-value"));

    // A client that does not trust the test CA refuses the server: verification is on.
    let untrusting = reqwest::Client::builder().tls_certs_only([]).build().expect("client");
    let refused = untrusting.get(format!("{}/secrets/db-password?api-version=7.6", vault.url())).send().await;
    assert!(refused.is_err(), "an unknown CA must fail the TLS handshake");
}

#[tokio::test]
async fn openbao_keeps_kv_v2_versions() {
    let bao = OpenBao::shared().root();
    let path = format!("smoke/{}", uuid::Uuid::new_v4().simple());
    let v1 = bao.kv2_put("secret", &path, json!({ "password": "first" })).await.expect("write v1");
    let v2 = bao.kv2_put("secret", &path, json!({ "password": "second" })).await.expect("write v2");
    assert_eq!(v2, v1 + 1);
    assert_eq!(bao.kv2_get("secret", &path, Some(v1)).await.expect("read v1")["password"], "first");
    assert_eq!(bao.kv2_get("secret", &path, None).await.expect("read latest")["password"], "second");
}
