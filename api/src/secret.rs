//! `VaultSecret`: which vault objects become which keys of which Kubernetes Secret, and how often
//! they are refreshed.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// Go-style duration (`1h`, `15m`, `90s`, `1h30m`) or `0` for "fetch once".
pub const DURATION_PATTERN: &str = r"^(0|([0-9]+(ns|us|ms|s|m|h))+)$";
/// What Kubernetes accepts as a Secret key.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// A Kubernetes object name (DNS subdomain): what a Secret, ServiceAccount or store reference may name.
pub const OBJECT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$";

/// Keeps a Kubernetes Secret in sync with objects in a vault.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vaultsync.dev",
    version = "v1alpha1",
    kind = "VaultSecret",
    namespaced,
    status = "VaultSecretStatus",
    shortname = "vsec",
    category = "vaultsync",
    printcolumn(name = "Store", type_ = "string", json_path = ".spec.storeRef.name"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Last Sync", type_ = "date", json_path = ".status.syncedAt"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.data) ? size(self.data) : 0) + (has(self.dataFrom) ? size(self.dataFrom) : 0) > 0").message("data or dataFrom must name at least one object"))]
pub struct VaultSecretSpec {
    pub store_ref: StoreRef,
    /// How often the vault is read again, from `10s` to `8760h`; `0` reads once.
    #[serde(default = "default_refresh_interval")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("self == '0' || (duration(self) >= duration('10s') && duration(self) <= duration('8760h'))").message("refreshInterval must be 0 (read once) or between 10s and 8760h"))]
    pub refresh_interval: String,
    /// One entry per key of the target Secret.
    #[serde(default)]
    #[schemars(length(max = 256))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["secretKey".into()]))]
    pub data: Vec<SecretData>,
    /// Keys from whole objects; a key also named in `data` takes its value from `data`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub data_from: Vec<DataFrom>,
    #[serde(default)]
    pub target: Target,
    /// Workloads rolled when the Secret's content changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

fn default_refresh_interval() -> String {
    "1h".to_string()
}

/// Which workloads to roll when the content changes, and how long to wait for more changes.
/// Besides `targets`, workloads labelled `vaultsync.dev/reload: "true"` that use the Secret
/// (env, envFrom, secret or projected volumes) are rolled.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub targets: Vec<RolloutTarget>,
    /// Changes within this window give one rollout; at most `10m`.
    #[serde(default = "default_debounce")]
    #[schemars(regex(pattern = DURATION_PATTERN), length(max = 32))]
    #[x_kube(validation = Rule::new("duration(self) <= duration('10m')").message("debounce must be at most 10m"))]
    pub debounce: String,
}

fn default_debounce() -> String {
    "5s".to_string()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    pub kind: WorkloadKind,
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: String,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

/// The store a VaultSecret reads from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreRef {
    #[serde(default)]
    pub kind: StoreKind,
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: String,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StoreKind {
    #[default]
    VaultStore,
    ClusterVaultStore,
}

/// One key of the target Secret and the vault object it comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretData {
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub secret_key: String,
    pub remote_ref: RemoteRef,
}

/// Many keys at once; exactly one of `extract` and `find`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.extract) != has(self.find)").message("set exactly one of extract and find"))]
pub struct DataFrom {
    /// Every field of a JSON object value becomes a key (string fields as text, others as JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<ExtractRef>,
    /// Every object whose name starts with `path` (OpenBao: every secret in the folder `path`)
    /// becomes a key named after it (characters a Secret key cannot hold become `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find: Option<FindRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExtractRef {
    #[schemars(length(min = 1, max = 512))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub version: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FindRef {
    #[serde(default)]
    #[schemars(length(max = 512))]
    pub path: String,
    #[serde(default)]
    pub decoding: Decoding,
}

/// An object in the vault.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemoteRef {
    /// The object's name in the vault.
    #[schemars(length(min = 1, max = 512))]
    pub name: String,
    /// A version to pin; the latest enabled version when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub version: Option<String>,
    /// A top-level field of a JSON object value, taken instead of the whole value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub property: Option<String>,
    #[serde(default)]
    pub decoding: Decoding,
}

/// How the fetched value is decoded before it is stored.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decoding {
    #[default]
    None,
    Base64,
    Base64URL,
    /// Base64 or Base64URL when the value decodes as one, else the value as it is.
    Auto,
}

/// The Kubernetes Secret written.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.creationPolicy) && self.creationPolicy == 'Merge' && has(self.immutable) && self.immutable)").message("immutable cannot be set with creationPolicy Merge: the Secret merged into is not vaultsync's to make immutable"))]
pub struct Target {
    /// The Secret's name; the VaultSecret's name when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: Option<String>,
    /// The Secret's type (`Opaque` when empty).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub type_: Option<String>,
    #[serde(default)]
    pub creation_policy: CreationPolicy,
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Write the Secret as immutable; a changed value then replaces the Secret.
    #[serde(default)]
    pub immutable: bool,
}

/// Who owns the target Secret.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CreationPolicy {
    /// Created and owned by the VaultSecret (owner reference); never adopts an existing Secret.
    #[default]
    Owner,
    /// Created without an owner reference; never adopts an existing Secret.
    Orphan,
    /// Merges the keys into an existing Secret, which must exist; other keys are left alone.
    Merge,
}

/// What happens to the Secret's data when the VaultSecret is deleted.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeletionPolicy {
    /// The Secret stays (with `Owner`, Kubernetes garbage collection still removes it).
    #[default]
    Retain,
    /// The Secret is deleted (with `Merge`, only the keys vaultsync wrote are removed).
    Delete,
}

/// Observed state of a VaultSecret. Holds versions and a keyed digest, never values.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecretStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When a sync last changed this status (content, versions, condition, spec generation) (RFC 3339). A refresh
    /// that finds the same content writes nothing, so this is not the time of the last vault read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synced_at: Option<String>,
    /// No longer written: refreshes are scheduled in memory (see docs/architecture.md), so that unchanged content
    /// costs no write. Kept so objects written by earlier versions still read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_time: Option<String>,
    /// The resourceVersion of the target Secret after vaultsync last wrote it: a Secret still at that version is
    /// known to hold what was written, without reading it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_resource_version: Option<String>,
    /// The vault object version behind each Secret key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub versions: BTreeMap<String, String>,
    /// HMAC-SHA256 of the written data under the installation's key: shows that content changed
    /// without revealing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_hmac: Option<String>,
    /// When the content last changed from one synced value to another (RFC 3339); not set by
    /// the first sync. Workloads created before it and not yet rolled are rolled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_changed_at: Option<String>,
    /// The last `vaultsync.dev/force-sync` annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_sync: Option<String>,
    /// Objects `dataFrom.find` found but could not read (disabled, expired, not yet valid), so their keys are left
    /// out; at most 100 are named.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_objects: Vec<SkippedObject>,
}

/// An object left out of a sync, and why.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkippedObject {
    pub name: String,
    /// `Disabled`, `Expired` or `NotYetValid`.
    pub reason: String,
}
