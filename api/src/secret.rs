//! `VaultSecret`: which vault objects become which keys of which Kubernetes Secret, and how often
//! they are refreshed.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::{condition::Condition, versions::Versions};

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
#[x_kube(validation = Rule::new("!has(self.rollout) || !has(self.target) || !has(self.target.creationPolicy) || self.target.creationPolicy != 'None'").message("rollout rolls workloads when the Secret changes; with creationPolicy None there is no Secret (mounted files rotate in place)"))]
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
    // Boxed here and below: rarely set, and the operator caches every VaultSecret, so the size of an unset field
    // counts 10,000 times (the JSON and the schema are the same).
    pub rollout: Option<Box<Rollout>>,
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
    /// Regular-expression replacements applied in order to the keys this entry gives; two keys that become one are
    /// refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub rewrite: Vec<Rewrite>,
}

/// One rewrite of the keys a `dataFrom` entry gives.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rewrite {
    pub regexp: RewriteRegexp,
}

/// Replaces every match of `source` (RE2 syntax, no look-around) in a key with `target` (`$1`, `${name}` refer to
/// groups).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RewriteRegexp {
    #[schemars(length(min = 1, max = 256))]
    pub source: String,
    #[schemars(length(max = 256))]
    pub target: String,
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
    /// Only objects whose name matches this regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<FindName>,
    /// Only objects carrying every one of these tags with these values (Azure Key Vault).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "tags_schema")]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub decoding: Decoding,
}

/// A name filter of `dataFrom.find`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FindName {
    /// A regular expression (RE2 syntax) the whole name or part of it must match (anchor it with `^...$`).
    #[schemars(length(min = 1, max = 256))]
    pub regexp: String,
}

/// At most 16 tags; Key Vault's limits on tag names (512) and values (256).
fn tags_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 16,
        "additionalProperties": { "type": "string", "maxLength": 256 },
        "x-kubernetes-validations": [{ "rule": "self.all(k, size(k) <= 512)", "message": "a tag name is at most 512 characters" }],
    })
}

/// An object in the vault.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.format) || (self.format in ['pem', 'pfx'] && (!has(self.objectType) || self.objectType == 'secret')) || (self.format in ['pem', 'der'] && has(self.objectType) && self.objectType == 'certificate') || (self.format in ['pem', 'jwk'] && has(self.objectType) && self.objectType == 'key')").message("format must fit objectType: pem or pfx for a secret, pem or der for a certificate, pem or jwk for a key"))]
#[x_kube(validation = Rule::new("!has(self.property) || !has(self.format)").message("property takes a field of a JSON value; it cannot be combined with format"))]
#[x_kube(validation = Rule::new("!has(self.pfxPassword) || (has(self.format) && self.format == 'pfx')").message("pfxPassword is for format pfx"))]
#[x_kube(validation = Rule::new("!has(self.objectType) || self.objectType == 'secret' || (!has(self.property) && !has(self.passwordSecretRef))").message("property and passwordSecretRef are for objectType secret"))]
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
    /// Which kind of Key Vault object: a secret's value (for a certificate, its secret: key and chain), a
    /// certificate alone (the leaf, no private key), or a key's public half.
    #[serde(default, skip_serializing_if = "is_default")]
    pub object_type: ObjectType,
    /// What to make of the object: `pem` or `pfx` for a certificate's secret, `pem` or `der` for a certificate,
    /// `pem` or `jwk` for a key; the value as stored when empty (certificates and keys: PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// The password of a PFX the vault holds under one (Key Vault's own certificate secrets have none), from a
    /// Secret of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<Box<SecretKeyRef>>,
    /// Encrypts the PFX written (`format: pfx`) with this password; without it a PFX is passed on as the vault holds
    /// it, and one made from PEM has the empty password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pfx_password: Option<Box<PfxPassword>>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// The kinds of Azure Key Vault object.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    #[default]
    Secret,
    Certificate,
    Key,
}

/// Output formats of certificates and keys.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A certificate's secret: the private key (PKCS#8) first, then leaf, intermediates and root; a certificate:
    /// the leaf; a key: the public key (`PUBLIC KEY`).
    Pem,
    /// A certificate's secret as a binary PKCS#12 archive.
    Pfx,
    /// A certificate's leaf as DER.
    Der,
    /// A key's public half as a JSON Web Key.
    Jwk,
}

/// A key of a Secret in the VaultSecret's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(min = 1, max = 253))]
    pub name: String,
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub key: String,
}

/// Where the password of a PFX written comes from: exactly one of a Secret and a template over this VaultSecret's
/// values.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretRef) != has(self.template)").message("set exactly one of secretRef and template"))]
pub struct PfxPassword {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub template: Option<String>,
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
    /// Templates that make the Secret's data, labels, annotations and type from this VaultSecret's values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<SecretTemplate>>,
}

/// Templates (Jinja2 syntax, minijinja) over this VaultSecret's own values: each key is a variable
/// (`{{ password }}`), and all are in `data` (`{{ data["tls.crt"] }}`). See docs/usage.md for the filters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.data) ? size(self.data) : 0) + (has(self.templateFrom) ? size(self.templateFrom) : 0) + (has(self.labels) ? size(self.labels) : 0) + (has(self.annotations) ? size(self.annotations) : 0) + (has(self.type) ? 1 : 0) > 0").message("a template must make at least one of data, templateFrom, labels, annotations or type"))]
pub struct SecretTemplate {
    /// The Secret's type, itself a template (it replaces `target.type`).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub type_: Option<String>,
    /// Secret key -> template of its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "data_templates_schema")]
    pub data: BTreeMap<String, String>,
    /// Label -> template of its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "metadata_templates_schema")]
    pub labels: BTreeMap<String, String>,
    /// Annotation -> template of its value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "metadata_templates_schema")]
    pub annotations: BTreeMap<String, String>,
    /// Data templates kept in ConfigMaps of this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub template_from: Vec<TemplateFrom>,
    #[serde(default, skip_serializing_if = "is_default")]
    pub merge_policy: MergePolicy,
}

/// A data template read from a ConfigMap key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateFrom {
    pub config_map: ConfigMapKeyRef,
    /// The Secret key the template makes.
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub secret_key: String,
}

/// A key of a ConfigMap in the VaultSecret's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"), length(min = 1, max = 253))]
    pub name: String,
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = 253))]
    pub key: String,
}

/// Which keys a templated Secret holds.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergePolicy {
    /// Only the keys the templates make (the fetched values are the templates' inputs).
    #[default]
    Replace,
    /// The fetched keys, and the templates' keys over them.
    Merge,
}

/// At most 64 data templates of at most 64 KiB each, named like Secret keys.
fn data_templates_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": { "type": "string", "maxLength": 65536 },
        "x-kubernetes-validations": [{
            "rule": "self.all(k, size(k) <= 253 && k.matches('^[-._a-zA-Z0-9]+$'))",
            "message": "a data template's key must be a valid Secret key",
        }],
    })
}

/// At most 32 label or annotation templates of at most 4 KiB each, named like label keys.
fn metadata_templates_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": 32,
        "additionalProperties": { "type": "string", "maxLength": 4096 },
        "x-kubernetes-validations": [{
            "rule": "self.all(k, size(k) <= 317 && k.matches('^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$'))",
            "message": "a label or annotation template's key must be a valid label key",
        }],
    })
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
    /// No Secret: the VaultSecret only says what CSI volumes naming it mount (the point of mounting is not to have a
    /// Secret). The operator checks its store, namespace and objects and reports them in the status; it reads
    /// nothing from the vault.
    None,
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
    #[serde(default, skip_serializing_if = "Versions::is_empty")]
    #[schemars(with = "BTreeMap<String, String>")]
    pub versions: Versions,
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
    /// The certificates synced, and when each expires.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateStatus>,
}

/// A certificate written into the Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// The key it was read into (`data[].secretKey`; `tls.crt` for a split certificate).
    pub secret_key: String,
    /// The leaf certificate's notAfter (RFC 3339).
    pub not_after: String,
}

/// An object left out of a sync, and why.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SkippedObject {
    pub name: String,
    /// `Disabled`, `Expired` or `NotYetValid`.
    pub reason: String,
}
