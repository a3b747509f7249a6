//! Shared by the backend's integration tests.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use vaultsync_backend::{Error, token::AssertionSource};
use vaultsync_e2e::service_account_token;
use zeroize::Zeroizing;

/// A TokenRequest token of a service account for `audience`: the assertion the operator makes
/// for a store (it has its own in the operator crate; the backend does not know Kubernetes).
pub struct ServiceAccountJwt {
    pub api: Api<ServiceAccount>,
    pub name: String,
    pub audience: &'static str,
}

impl AssertionSource for ServiceAccountJwt {
    fn assertion(&self) -> BoxFuture<'_, vaultsync_backend::Result<Zeroizing<String>>> {
        Box::pin(async move {
            let token = service_account_token(&self.api, &self.name, self.audience)
                .await
                .map_err(|e| Error::Unauthenticated { message: format!("TokenRequest for {}: {e}", self.name) })?;
            Ok(Zeroizing::new(token))
        })
    }
}
