//! Who reads from where, as a typed value: the read cache's key. Everything that decides what a read may return is
//! in it (the vault endpoint, and the principal with every field Entra or OpenBao looks at), so a read made by one
//! identity is never served to another. Credentials appear only as one-way fingerprints.

use std::fmt;

/// A Kubernetes service account.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A vault endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An Azure Key Vault, by its URL (lowercase, without a trailing slash).
    AzureKeyVault { vault_url: String },
    /// An OpenBao / Vault KV mount.
    OpenBao { server: String, namespace: Option<String>, mount: String, kv_version: u8 },
}

/// The principal a backend authenticates as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A service account's token exchanged at Entra for an app (workload identity).
    AzureWorkload { authority: String, tenant: String, client_id: String, audience: String, account: ServiceAccount },
    /// The token file the workload identity webhook mounts for the operator itself.
    AzureTokenFile { authority: String, tenant: String, client_id: String },
    /// An app's client secret or certificate, by fingerprint.
    AzureServicePrincipal { authority: String, tenant: String, client_id: String, credential: String },
    /// The managed identity of the machine (instance metadata service); `None`: the system-assigned one.
    AzureManagedIdentity { client_id: Option<String> },
    /// A fixed bearer token (tests, emulators), by fingerprint.
    StaticToken { fingerprint: String },
    /// OpenBao's Kubernetes auth with a service account's token.
    OpenBaoKubernetes { mount_path: String, role: String, audience: String, account: ServiceAccount },
    /// A fixed OpenBao token, by fingerprint.
    OpenBaoToken { fingerprint: String },
    /// OpenBao's AppRole auth; the secret ID by fingerprint.
    OpenBaoAppRole { mount_path: String, role_id: String, secret_id: String },
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::AzureWorkload { tenant, client_id, account, .. } => {
                write!(f, "workload identity {account} as {client_id} in tenant {tenant}")
            }
            Principal::AzureTokenFile { tenant, client_id, .. } => {
                write!(f, "the operator's workload identity {client_id} in tenant {tenant}")
            }
            Principal::AzureServicePrincipal { tenant, client_id, .. } => {
                write!(f, "service principal {client_id} in tenant {tenant}")
            }
            Principal::AzureManagedIdentity { client_id: Some(id) } => write!(f, "managed identity {id}"),
            Principal::AzureManagedIdentity { client_id: None } => f.write_str("the system-assigned managed identity"),
            Principal::StaticToken { .. } => f.write_str("a fixed token"),
            Principal::OpenBaoKubernetes { role, account, .. } => write!(f, "{account} as OpenBao role {role}"),
            Principal::OpenBaoToken { .. } => f.write_str("an OpenBao token"),
            Principal::OpenBaoAppRole { role_id, .. } => write!(f, "OpenBao AppRole {role_id}"),
        }
    }
}

/// An endpoint and the principal reading from it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Identity {
    pub endpoint: Endpoint,
    pub principal: Principal,
}

/// A short, one-way fingerprint of credential material (never the material itself).
pub fn fingerprint(material: &[u8]) -> String {
    use ring::digest::{SHA256, digest};
    digest(&SHA256, material).as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect()
}
