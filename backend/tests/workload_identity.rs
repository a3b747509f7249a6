//! Workload identity end to end: a service-account token from the real apiserver (TokenRequest)
//! is exchanged at an Entra token endpoint, which checks it with TokenReview, and the Entra
//! token reads from the vault. A token of another service account is refused.

mod support;

use std::sync::Arc;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use support::ServiceAccountJwt;
use vaultsync_backend::{
    Backend, ObjectRef, Principal,
    azure::{AzureEndpoint, AzureKeyVault, http_client},
    token::{EntraToken, Grant},
};
use vaultsync_e2e::{
    TestNamespace,
    entra::{EntraServer, Federation},
    keyvault::{KeyVaultServer, Op},
};

const AUDIENCE: &str = "api://AzureADTokenExchange";

#[tokio::test]
async fn a_service_account_token_is_exchanged_for_vault_access() {
    let ns = TestNamespace::new("workload-identity").await;
    let accounts: Api<ServiceAccount> = ns.api();
    for name in ["reader", "intruder"] {
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            ..Default::default()
        };
        accounts.create(&PostParams::default(), &sa).await.expect("service account");
    }
    let federation = Federation {
        client_id: "app-reader".into(),
        subject: format!("system:serviceaccount:{}:reader", ns.name),
        audience: AUDIENCE.into(),
        access_token: "entra-issued-token-for-app-reader".into(),
    };
    // The vault's challenge names tenant-1 and its own origin as the resource; Entra issues tokens for it.
    let vault = KeyVaultServer::builder()
        .authority("https://login.microsoftonline.com", "tenant-1")
        .start()
        .await
        .expect("vault");
    let entra = EntraServer::builder(Some(ns.client.clone()))
        .federation(federation.clone())
        .resource(vault.challenge_resource())
        .start()
        .await
        .expect("entra");
    vault.require_bearer(Some(federation.access_token.clone()));
    vault.set_secret("db-password", "s3cr3t");

    let http = http_client(Some(entra.ca_pem())).expect("http");
    let endpoint = Arc::new(AzureEndpoint::new(http.clone(), &vault.url(), "7.6").expect("endpoint"));
    let store = |sa: &str| {
        let assertion = Arc::new(ServiceAccountJwt { api: accounts.clone(), name: sa.into(), audience: AUDIENCE });
        let credential = EntraToken::new(
            http.clone(),
            entra.authority_host(),
            "tenant-1",
            Some("app-reader".into()),
            Grant::ClientAssertion(assertion),
        );
        let principal = Principal::AzureWorkload {
            authority: entra.authority_host().into(),
            tenant: "tenant-1".into(),
            client_id: "app-reader".into(),
            audience: AUDIENCE.into(),
            account: vaultsync_backend::ServiceAccount { namespace: ns.name.clone(), name: sa.into() },
        };
        AzureKeyVault::new(endpoint.clone(), Arc::new(credential), principal)
    };

    // Twenty reads of different objects start together: they share one token exchange.
    for i in 0..20 {
        vault.set_secret(&format!("parallel-{i}"), "v");
    }
    let parallel = Arc::new(store("reader"));
    let reads = (0..20).map(|i| {
        let parallel = parallel.clone();
        tokio::spawn(async move { parallel.get(&ObjectRef::latest(format!("parallel-{i}"))).await })
    });
    for read in futures::future::join_all(reads).await {
        read.expect("task").expect("parallel read");
    }
    assert_eq!(entra.counts(), (1, 0), "concurrent callers share one token exchange");
    vault.reset_counts();

    let reader = store("reader");
    let secret = reader.get(&ObjectRef::latest("db-password")).await.expect("read with workload identity");
    assert_eq!(secret.value.expose(), b"s3cr3t");
    reader.get(&ObjectRef::latest("db-password")).await.expect("second read");
    assert_eq!(entra.counts(), (2, 0), "the Entra token is cached between reads");

    let error = store("intruder").get(&ObjectRef::latest("db-password")).await.expect_err("wrong subject");
    assert_eq!(error.reason(), "AuthenticationFailed", "{error}");
    assert!(error.to_string().contains("AADSTS700213"), "{error}");
    assert_eq!(entra.counts(), (2, 1));
    assert_eq!(vault.calls(Op::GetSecret), 2, "the refused identity never reached the vault");
}
