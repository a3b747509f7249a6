//! An Azure Key Vault that a store reaches with workload identity, as the tests set it up: a
//! service account in the test namespace, federated at the Entra test server to an application whose
//! access token the Key Vault test server requires.

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{ObjectMeta, PostParams};
use serde_json::{Value, json};

use crate::{
    TestNamespace,
    entra::{EntraServer, Federation},
    keyvault::KeyVaultServer,
    tls::TestCa,
};

/// The service account a store uses to read the vault.
pub const READER_SA: &str = "vaultsync-reader";
/// The Entra application it is federated to.
pub const CLIENT_ID: &str = "app-reader";
/// The tenant of the test vault and its stores.
pub const TENANT: &str = "tenant-1";

pub struct AzureVault {
    pub vault: KeyVaultServer,
    pub entra: EntraServer,
}

impl AzureVault {
    /// Creates `READER_SA` in the namespace and starts the Entra and Key Vault test servers.
    pub async fn start(ns: &TestNamespace) -> Self {
        Self::start_with(ns, None).await
    }

    /// Like [`AzureVault::start`], Entra's tokens living `token_lifetime` (by default Entra's hour).
    pub async fn start_with(ns: &TestNamespace, token_lifetime: Option<std::time::Duration>) -> Self {
        let sa = ServiceAccount {
            metadata: ObjectMeta { name: Some(READER_SA.into()), ..Default::default() },
            ..Default::default()
        };
        ns.api::<ServiceAccount>().create(&PostParams::default(), &sa).await.expect("service account");
        let access_token = format!("token-for-{}", ns.name);
        let federation = Federation {
            client_id: CLIENT_ID.into(),
            subject: format!("system:serviceaccount:{}:{READER_SA}", ns.name),
            audience: "api://AzureADTokenExchange".into(),
            access_token: access_token.clone(),
        };
        // The vault's 401 challenge names the store's tenant and the vault's own origin as the resource, which the
        // Entra server issues tokens for.
        let vault = KeyVaultServer::builder()
            .authority("https://login.microsoftonline.com", TENANT)
            .start()
            .await
            .expect("vault");
        let mut entra = EntraServer::builder(Some(ns.client.clone())).federation(federation);
        if let Some(lifetime) = token_lifetime {
            entra = entra.token_lifetime(lifetime);
        }
        let entra = entra.resource(vault.challenge_resource()).start().await.expect("entra");
        vault.require_bearer(Some(access_token));
        Self { vault, entra }
    }

    /// The spec of a store on this vault, using workload identity with `READER_SA`.
    pub fn store_spec(&self) -> Value {
        store_spec(&self.vault, &self.entra)
    }
}

/// The spec of a store on `vault`, using workload identity with `READER_SA` federated at `entra`.
pub fn store_spec(vault: &KeyVaultServer, entra: &EntraServer) -> Value {
    json!({ "provider": { "azureKeyVault": {
        "vaultUrl": vault.url(),
        "tenantId": TENANT,
        "cloud": "Custom",
        "authorityHost": entra.authority_host(),
        "caBundle": TestCa::shared().ca_pem(),
        "auth": { "workloadIdentity": { "serviceAccountRef": { "name": READER_SA }, "clientId": CLIENT_ID } },
    }}})
}
