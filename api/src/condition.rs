//! Status conditions in the shape Kubernetes tools expect (`kubectl wait --for=condition=Ready`).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// One aspect of an object's state; `Ready` is the one every vaultsync object reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// A CamelCase reason, such as `Synced` or `NotFound`.
    pub reason: String,
    /// A human message; never contains secret values.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

pub const READY: &str = "Ready";
