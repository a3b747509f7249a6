//! Where the material a store's identity needs comes from, for each kind of caller: service-account tokens (the
//! TokenRequest API for the operator; the tokens the kubelet passed in a mount request for a pod) and credentials a
//! store keeps in a Secret (read from the apiserver for the operator; from the volume's `nodePublishSecretRef` for a
//! pod, never the operator's copy).

use std::{collections::BTreeMap, sync::Mutex};

use futures::future::BoxFuture;
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Secret, ServiceAccount as ServiceAccountObject},
};
use kube::{Api, Client, api::PostParams};
use vaultsync_api::store::SecretKeyRef;
use vaultsync_backend::{ServiceAccount, token::AssertionSource};
use zeroize::Zeroizing;

use crate::StoreError;

/// A pod's own credentials, from a CSI mount request.
pub struct PodCredentials {
    pub account: ServiceAccount,
    /// The pod's service-account tokens by audience, as the kubelet passed them.
    pub tokens: BTreeMap<String, Zeroizing<String>>,
    /// The data of the volume's `nodePublishSecretRef` Secret (empty without one).
    pub secrets: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for PodCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodCredentials")
            .field("account", &self.account)
            .field("token_audiences", &self.tokens.keys().collect::<Vec<_>>())
            .field("secret_keys", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PodCredentials {
    /// The value of `key` in the volume's `nodePublishSecretRef`, as text.
    pub(crate) fn secret_value(&self, store: &str, key: &str, what: &str) -> Result<Zeroizing<String>, StoreError> {
        let bytes = self.secrets.get(key).ok_or_else(|| StoreError::MissingCredential {
            store: store.into(),
            message: format!(
                "the {what} comes from the volume's nodePublishSecretRef for a pod, and it has no key {key:?}"
            ),
        })?;
        let text = std::str::from_utf8(bytes).map_err(|_| StoreError::MissingCredential {
            store: store.into(),
            message: format!("the {what} is not UTF-8"),
        })?;
        Ok(Zeroizing::new(text.trim().to_string()))
    }

    /// The pod's token for `audience`.
    pub(crate) fn token(&self, store: &str, audience: &str) -> Result<Zeroizing<String>, StoreError> {
        self.tokens.get(audience).cloned().ok_or_else(|| StoreError::MissingCredential {
            store: store.into(),
            message: format!(
                "the mount carries no service-account token for audience {audience:?} (the CSIDriver's tokenRequests \
                 must list it)"
            ),
        })
    }
}

/// A service-account token from the TokenRequest API, asked for each time an assertion is needed (ten minutes, one
/// audience): the operator's workload identity assertion and OpenBao login.
pub(crate) struct TokenRequestAssertion {
    pub api: Api<ServiceAccountObject>,
    pub name: String,
    pub audience: String,
}

impl AssertionSource for TokenRequestAssertion {
    fn assertion(&self) -> BoxFuture<'_, vaultsync_backend::Result<Zeroizing<String>>> {
        Box::pin(async move {
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: Some(vec![self.audience.clone()]),
                    expiration_seconds: Some(600),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let answer =
                self.api.create_token_request(&self.name, &PostParams::default(), &request).await.map_err(|e| {
                    vaultsync_backend::Error::Unauthenticated {
                        message: format!("TokenRequest for service account {}: {e}", self.name),
                    }
                })?;
            Ok(Zeroizing::new(answer.status.and_then(|s| s.token).unwrap_or_default()))
        })
    }
}

/// The latest token a pod's mount carried: backends built for a pod are reused across its mounts, and each mount
/// brings a fresher token.
#[derive(Default)]
pub(crate) struct PodToken(Mutex<Zeroizing<String>>);

impl PodToken {
    pub fn set(&self, token: Zeroizing<String>) {
        *self.0.lock().expect("pod token lock") = token;
    }
}

impl AssertionSource for PodToken {
    fn assertion(&self) -> BoxFuture<'_, vaultsync_backend::Result<Zeroizing<String>>> {
        let token = self.0.lock().expect("pod token lock").clone();
        Box::pin(async move { Ok(token) })
    }
}

/// A key of a Secret a store names (in the store's namespace, or the one the reference names for a cluster store),
/// read from the apiserver, as text.
pub(crate) async fn operator_secret_value(
    client: &Client,
    store: &str,
    secret_ref: &SecretKeyRef,
    store_namespace: Option<&str>,
    what: &str,
) -> Result<Zeroizing<String>, StoreError> {
    let invalid = |message: String| StoreError::InvalidSpec { store: store.into(), message };
    let namespace = store_namespace
        .or(secret_ref.namespace.as_deref())
        .ok_or_else(|| invalid(format!("the {what} reference needs a namespace in a ClusterVaultStore")))?;
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&secret_ref.name)
        .await
        .map_err(|e| StoreError::Unavailable { store: store.into(), message: e.to_string() })?
        .ok_or_else(|| invalid(format!("{what} Secret {namespace}/{} not found", secret_ref.name)))?;
    let value = secret
        .data
        .and_then(|mut d| d.remove(&secret_ref.key))
        .ok_or_else(|| invalid(format!("Secret {namespace}/{} has no key {}", secret_ref.name, secret_ref.key)))?;
    let text = String::from_utf8(value.0).map_err(|_| invalid(format!("the {what} is not UTF-8")))?;
    Ok(Zeroizing::new(text.trim().to_string()))
}
