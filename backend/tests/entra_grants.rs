//! The client-secret and managed-identity grants of the backend's Entra token source against the
//! Entra test server (token endpoint over verified HTTPS, instance metadata endpoint over HTTP as
//! on a VM), the tokens reading the Key Vault test server.

use std::sync::Arc;

use vaultsync_backend::{
    Backend, ObjectRef, Principal,
    azure::{AzureEndpoint, AzureKeyVault, http_client},
    token::{EntraToken, Grant},
};
use vaultsync_e2e::{
    entra::{ClientSecret, EntraServer, Grant as Requested, ManagedIdentity},
    keyvault::{KeyVaultServer, Op},
};

#[tokio::test]
async fn client_secret_and_managed_identity_tokens_read_the_vault() {
    let token = "entra-issued-token";
    // The vault's challenge names tenant-1 and its own origin as the resource; Entra issues tokens for it.
    let vault = KeyVaultServer::builder()
        .authority("https://login.microsoftonline.com", "tenant-1")
        .start()
        .await
        .expect("vault");
    let entra = EntraServer::builder(None)
        .client_secret(ClientSecret {
            client_id: "app-sp".into(),
            secret: "sp-secret".into(),
            access_token: token.into(),
        })
        .managed_identity(ManagedIdentity { client_id: Some("mi-user".into()), access_token: token.into() })
        .resource(vault.challenge_resource())
        .start()
        .await
        .expect("entra");
    vault.require_bearer(Some(token.into()));
    vault.set_secret("db-password", "s3cr3t");
    let http = http_client(Some(entra.ca_pem())).expect("http");
    let endpoint = Arc::new(AzureEndpoint::new(http.clone(), &vault.url(), "7.6").expect("endpoint"));
    let read = |grant: Grant, client_id: &str, principal: Principal| {
        let credential =
            EntraToken::new(http.clone(), entra.authority_host(), "tenant-1", Some(client_id.into()), grant);
        AzureKeyVault::new(endpoint.clone(), Arc::new(credential), principal)
    };
    let service_principal = |credential: &str| Principal::AzureServicePrincipal {
        authority: entra.authority_host().into(),
        tenant: "tenant-1".into(),
        client_id: "app-sp".into(),
        credential: credential.into(),
    };

    let by_secret = read(Grant::ClientSecret("sp-secret".to_string().into()), "app-sp", service_principal("right"));
    let secret = by_secret.get(&ObjectRef::latest("db-password")).await.expect("read with a client secret");
    assert_eq!(secret.value.expose(), b"s3cr3t");
    let wrong = read(Grant::ClientSecret("not-it".to_string().into()), "app-sp", service_principal("wrong"));
    let error = wrong.get(&ObjectRef::latest("db-password")).await.expect_err("a wrong secret");
    assert_eq!(error.reason(), "AuthenticationFailed", "{error}");
    assert!(error.to_string().contains("AADSTS7000215"), "{error}");
    assert!(!error.to_string().contains("not-it"), "the secret never reaches an error message");

    let managed = Principal::AzureManagedIdentity { client_id: Some("mi-user".into()) };
    let by_identity = read(Grant::ManagedIdentity { endpoint: entra.metadata_endpoint() }, "mi-user", managed);
    let secret = by_identity.get(&ObjectRef::latest("db-password")).await.expect("read with a managed identity");
    assert_eq!(secret.value.expose(), b"s3cr3t");

    assert_eq!((entra.calls(Requested::ClientSecret), entra.calls(Requested::ManagedIdentity)), (2, 1));
    assert_eq!(entra.counts(), (2, 1));
    assert_eq!(vault.calls(Op::GetSecret), 2, "the refused credential never reached the vault");
}
