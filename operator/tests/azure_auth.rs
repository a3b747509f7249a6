//! Service principals authenticating with a certificate: the operator reads the certificate
//! from a Secret, signs a client assertion, and the Entra test server verifies it before
//! issuing the token the vault accepts. The wrong certificate is refused with a reason.

mod support;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use serde_json::json;
use support::Env;
use vaultsync_e2e::{
    entra::{CertificateCredential, EntraServer},
    tls::{TestCa, rsa_client_certificate_pem},
};

#[tokio::test]
async fn a_service_principal_certificate_reads_the_vault() {
    let env = Env::start("auth-certificate").await;
    let registered = rsa_client_certificate_pem("app-sp").expect("certificate");
    let other = rsa_client_certificate_pem("someone-else").expect("certificate");
    // This vault accepts only the workload identity token of the test namespace (see Env), so the
    // certificate's token must be that one for reads to work.
    let access_token = format!("token-for-{}", env.ns.name);
    let credential =
        CertificateCredential { client_id: "app-sp".into(), certificate_pem: registered.clone(), access_token };
    let entra = EntraServer::start_with(env.ns.client.clone(), vec![], vec![credential]).await.expect("entra");
    env.vault.set_secret("sp-object", "read-with-a-certificate");

    let secrets = env.ns.api::<Secret>();
    for (name, pem) in [("sp-cert", &registered), ("wrong-cert", &other)] {
        let secret = Secret {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            string_data: Some([("tls.pem".to_string(), pem.clone())].into()),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await.expect("certificate Secret");
    }
    let store = |secret: &str| {
        json!({ "provider": { "azureKeyVault": {
            "vaultUrl": env.vault.url(), "tenantId": "tenant-1", "cloud": "Custom",
            "authorityHost": entra.authority_host(), "caBundle": TestCa::shared().ca_pem(),
            "auth": { "servicePrincipal": { "clientId": "app-sp",
                "clientCertificateRef": { "name": secret, "key": "tls.pem" } } },
        }}})
    };
    env.apply_store("sp", store("sp-cert")).await;
    env.apply_store("sp-wrong", store("wrong-cert")).await;

    let mut spec = support::one_key("k", "sp-object");
    spec["storeRef"] = json!({ "name": "sp" });
    env.apply_vault_secret("by-cert", spec).await;
    env.wait_secret_value("by-cert", "k", "read-with-a-certificate").await;

    let mut spec = support::one_key("k", "sp-object");
    spec["storeRef"] = json!({ "name": "sp-wrong" });
    env.apply_vault_secret("by-wrong-cert", spec).await;
    let vs = env.wait_reason("by-wrong-cert", "AuthenticationFailed").await;
    let message = &vs.status.expect("status").conditions[0].message;
    assert!(message.contains("AADSTS700027"), "{message}");
    assert!(!message.contains("PRIVATE KEY"), "no key material in messages");
    assert!(env.secret("by-wrong-cert").await.is_none());
    env.finish().await;
}
