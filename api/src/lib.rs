//! vaultsync's Kubernetes API (`vaultsync.dev/v1alpha1`): the custom resources as Rust types,
//! from which the CRD YAML in `crds/` is generated. Types only; no client logic.
#![forbid(unsafe_code)]
// kube-derive takes one `printcolumn(..)` attribute per column, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

pub mod condition;
pub mod secret;
pub mod store;
pub mod versions;

pub use k8s_openapi;
pub use kube;

pub use condition::Condition;
pub use secret::{VaultSecret, VaultSecretSpec, VaultSecretStatus};
pub use store::{ClusterVaultStore, StoreStatus, VaultStore};

/// The API group of every vaultsync resource.
pub const GROUP: &str = "vaultsync.dev";

/// Every CustomResourceDefinition of the API, in the order they are written to `crds/`.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    use kube::CustomResourceExt;
    vec![VaultStore::crd(), ClusterVaultStore::crd(), VaultSecret::crd()]
}
