//! `VaultStore` (namespaced) and `ClusterVaultStore` (cluster-scoped): where secrets come from and
//! which identity reads them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::condition::Condition;

/// A backend store usable by VaultSecrets in its own namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vaultsync.dev",
    version = "v1alpha1",
    kind = "VaultStore",
    namespaced,
    status = "StoreStatus",
    shortname = "vstore",
    category = "vaultsync",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct VaultStoreSpec {
    pub provider: Provider,
    /// Caps this store's backend calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RequestBudget>,
}

/// A backend store shared by several namespaces, with per-namespace limits on what each may read.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "vaultsync.dev",
    version = "v1alpha1",
    kind = "ClusterVaultStore",
    status = "StoreStatus",
    shortname = "cvstore",
    category = "vaultsync",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterVaultStoreSpec {
    #[x_kube(validation = Rule::new("!has(self.azureKeyVault) || !has(self.azureKeyVault.auth.workloadIdentity) || has(self.azureKeyVault.auth.workloadIdentity.serviceAccountRef.namespace)").message("a ClusterVaultStore's workloadIdentity.serviceAccountRef must name its namespace"))]
    #[x_kube(validation = Rule::new("!has(self.openbao) || !has(self.openbao.auth.kubernetes) || has(self.openbao.auth.kubernetes.serviceAccountRef.namespace)").message("a ClusterVaultStore's openbao kubernetes.serviceAccountRef must name its namespace"))]
    #[x_kube(validation = Rule::new("!has(self.openbao) || !has(self.openbao.auth.token) || has(self.openbao.auth.token.secretRef.namespace)").message("a ClusterVaultStore's openbao token.secretRef must name its namespace"))]
    #[x_kube(validation = Rule::new("!has(self.openbao) || !has(self.openbao.auth.appRole) || has(self.openbao.auth.appRole.secretRef.namespace)").message("a ClusterVaultStore's openbao appRole.secretRef must name its namespace"))]
    pub provider: Provider,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<RequestBudget>,
    /// Which namespaces may use this store and which objects each may read. A namespace that
    /// matches no entry is refused; an empty list refuses every namespace.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub conditions: Vec<NamespaceCondition>,
}

/// The backend; exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.azureKeyVault), has(self.openbao)].filter(x, x).size() == 1").message("exactly one provider must be set"))]
pub struct Provider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure_key_vault: Option<AzureKeyVaultProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openbao: Option<OpenBaoProvider>,
}

/// An Azure Key Vault.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(self.cloud == 'Custom') == has(self.authorityHost)").message("authorityHost is required with cloud Custom and not allowed otherwise"))]
pub struct AzureKeyVaultProvider {
    /// The vault's URL, such as `https://my-vault.vault.azure.net`.
    #[schemars(regex(pattern = r"^https://[^/?#@]+/?$"), length(max = 2048))]
    pub vault_url: String,
    /// The Microsoft Entra tenant (directory) ID.
    #[schemars(regex(pattern = r"^[0-9A-Za-z.-]{1,64}$"))]
    pub tenant_id: String,
    #[serde(default)]
    pub cloud: AzureCloud,
    /// The Entra authority host, for `cloud: Custom` only (https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https://[^/?#@]+(/[^?#]*)?$"), length(max = 2048))]
    pub authority_host: Option<String>,
    /// The Key Vault REST api-version.
    #[serde(default = "default_api_version")]
    #[schemars(regex(pattern = r"^7\.[2-6]$"))]
    pub api_version: String,
    /// PEM CA bundle to trust for the vault and the authority (private endpoints, test servers);
    /// the public roots are used when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    pub auth: AzureAuth,
}

fn default_api_version() -> String {
    "7.6".to_string()
}

/// The Azure cloud whose Entra authority issues tokens.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AzureCloud {
    #[default]
    Public,
    China,
    USGovernment,
    Custom,
}

/// How the operator authenticates to Azure; exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.workloadIdentity), has(self.servicePrincipal), has(self.managedIdentity)].filter(x, x).size() == 1").message("exactly one auth method must be set"))]
pub struct AzureAuth {
    /// Exchange a token of a Kubernetes service account (requested with the TokenRequest API)
    /// for an Entra token: each namespace reads with its own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_identity: Option<WorkloadIdentityAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_principal: Option<ServicePrincipalAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentityAuth>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadIdentityAuth {
    pub service_account_ref: ServiceAccountRef,
    /// The application (client) ID federated with the service account.
    #[schemars(length(min = 1, max = 64))]
    pub client_id: String,
    #[serde(default = "default_audience")]
    #[schemars(length(min = 1, max = 256))]
    pub audience: String,
}

fn default_audience() -> String {
    "api://AzureADTokenExchange".to_string()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountRef {
    #[schemars(regex(pattern = crate::secret::OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    /// Required in a ClusterVaultStore; a VaultStore always uses its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.clientSecretRef) != has(self.clientCertificateRef)").message("exactly one of clientSecretRef and clientCertificateRef must be set"))]
pub struct ServicePrincipalAuth {
    #[schemars(length(min = 1, max = 64))]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
    /// A PEM certificate and private key in one Secret key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate_ref: Option<SecretKeyRef>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedIdentityAuth {
    /// A user-assigned identity's client ID; the system-assigned identity when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// Paths of mounts and auth mounts: slash-separated segments that start with a letter, digit or `_` (so never `.`
/// or `..`).
const MOUNT_PATTERN: &str = r"^[A-Za-z0-9_][-A-Za-z0-9_.]*(/[A-Za-z0-9_][-A-Za-z0-9_.]*)*$";

/// An OpenBao or HashiCorp Vault server and one of its KV secrets engine mounts. A VaultSecret's
/// `remoteRef.name` is the secret's path under the mount (`app/db`) and its `version` a KV v2
/// version to pin; the value is the secret's data as a JSON object, so `property` picks one
/// field. KV v1 keeps no versions: its secrets report the version `kv-v1`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.server.startsWith('https://') || (has(self.insecureHttp) && self.insecureHttp)").message("server must be an https URL; a plain http server needs insecureHttp: true"))]
pub struct OpenBaoProvider {
    /// The server's address, such as `https://bao.example.com:8200`.
    #[schemars(regex(pattern = r"^https?://[^/?#@]+(/[^?#]*)?$"), length(max = 2048))]
    pub server: String,
    /// Allow a plain `http://` server (a sidecar on localhost, a test server): logins, tokens and secret values then
    /// cross the network unencrypted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_http: bool,
    /// PEM CA bundle to trust for the server; the public roots are used when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 65536))]
    pub ca_bundle: Option<String>,
    /// The Vault namespace (`X-Vault-Namespace`), such as `team-a` or `org/team-a`; the root namespace when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = MOUNT_PATTERN), length(max = 256))]
    pub namespace: Option<String>,
    /// The path of the KV secrets engine mount.
    #[serde(default = "default_mount")]
    #[schemars(regex(pattern = MOUNT_PATTERN), length(max = 256))]
    pub mount: String,
    /// The KV secrets engine version of the mount: 2 (versioned) or 1.
    #[serde(default = "default_kv_version")]
    #[schemars(range(min = 1, max = 2))]
    pub kv_version: u8,
    pub auth: OpenBaoAuth,
}

fn default_mount() -> String {
    "secret".to_string()
}

fn default_kv_version() -> u8 {
    2
}

/// How the operator authenticates to OpenBao; exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.kubernetes), has(self.token), has(self.appRole)].filter(x, x).size() == 1").message("exactly one auth method must be set"))]
pub struct OpenBaoAuth {
    /// Log in with a token of a Kubernetes service account (requested with the TokenRequest API):
    /// each namespace reads with its own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<OpenBaoKubernetesAuth>,
    /// A fixed token read from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<OpenBaoTokenAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_role: Option<OpenBaoAppRoleAuth>,
}

/// The Kubernetes auth method. OpenBao checks the service-account token with the TokenReview API,
/// so its kubernetes auth config needs a `token_reviewer_jwt` of an account bound to
/// `system:auth-delegator` when it does not run in the cluster, and the role's `audience` must
/// match `audience` here.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenBaoKubernetesAuth {
    /// The role to log in as.
    #[schemars(length(min = 1, max = 256))]
    pub role: String,
    /// Where the kubernetes auth method is mounted.
    #[serde(default = "default_kubernetes_mount_path")]
    #[schemars(regex(pattern = MOUNT_PATTERN), length(max = 256))]
    pub mount_path: String,
    pub service_account_ref: ServiceAccountRef,
    /// The audience of the requested service-account token. `vault` by default: a token meant for
    /// the vault, which the apiserver itself does not accept.
    #[serde(default = "default_openbao_audience")]
    #[schemars(length(min = 1, max = 256))]
    pub audience: String,
}

fn default_kubernetes_mount_path() -> String {
    "kubernetes".to_string()
}

fn default_openbao_audience() -> String {
    "vault".to_string()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenBaoTokenAuth {
    /// The Secret key that holds the token.
    pub secret_ref: SecretKeyRef,
}

/// The AppRole auth method.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OpenBaoAppRoleAuth {
    #[schemars(length(min = 1, max = 256))]
    pub role_id: String,
    /// The Secret key that holds the secret ID.
    pub secret_ref: SecretKeyRef,
    /// Where the AppRole auth method is mounted.
    #[serde(default = "default_approle_mount_path")]
    #[schemars(regex(pattern = MOUNT_PATTERN), length(max = 256))]
    pub mount_path: String,
}

fn default_approle_mount_path() -> String {
    "approle".to_string()
}

/// A key of a Secret (in the store's namespace; a ClusterVaultStore must name the namespace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(regex(pattern = crate::secret::OBJECT_NAME_PATTERN), length(min = 1, max = 253))]
    pub name: String,
    #[schemars(regex(pattern = r"^[-._a-zA-Z0-9]+$"), length(max = 253))]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A token bucket for backend calls: `requestsPerSecond` sustained, `burst` at once.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestBudget {
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: u32,
    #[schemars(range(min = 1, max = 100000))]
    pub burst: u32,
}

/// Namespaces allowed to use a ClusterVaultStore and the objects they may read there.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("size(self.namespaces) > 0 || has(self.namespaceSelector)").message("name namespaces or give a namespaceSelector"))]
pub struct NamespaceCondition {
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Object names (globs with `*` and `?`) these namespaces may read; every object when empty.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub allowed_objects: Vec<String>,
}

/// Observed state of a store.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StoreStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
