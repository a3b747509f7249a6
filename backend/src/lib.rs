//! Vault backends shared by the operator and the CSI provider: a `Backend` trait, the Azure Key
//! Vault client, token sources, a per-store request budget and a read cache that coalesces
//! concurrent reads. Nothing here knows about Kubernetes.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod azure;
pub mod budget;
pub mod cache;
mod error;
pub mod http;
pub mod identity;
pub mod openbao;
pub mod token;

use std::fmt;

use futures::future::BoxFuture;
use zeroize::Zeroizing;

pub use error::{Error, Result};
pub use identity::{Endpoint, Identity, Principal, ServiceAccount};

/// An object in a vault: its name and, when pinned, a version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub name: String,
    pub version: Option<String>,
}

impl ObjectRef {
    pub fn latest(name: impl Into<String>) -> Self {
        Self { name: name.into(), version: None }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}@{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Secret bytes: zeroed on drop, and never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, redacted)", self.0.len())
    }
}

/// One version of a secret as the vault returned it.
#[derive(Clone, Debug)]
pub struct FetchedSecret {
    pub value: SecretBytes,
    /// The vault's version identifier of what was read.
    pub version: String,
    pub content_type: Option<String>,
}

/// An object a list found: its name and, where the vault says, whether it may be read now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Key Vault's `attributes.enabled`; always true for OpenBao.
    pub enabled: bool,
    /// Not valid before (Unix seconds).
    pub not_before: Option<i64>,
    /// Expires (Unix seconds).
    pub expires: Option<i64>,
    /// Last updated (Unix seconds): a list shows what changed without reading values.
    pub updated: Option<i64>,
}

impl Listed {
    /// Why this object cannot be read at `now` (Unix seconds): `Disabled`, `Expired`, `NotYetValid`.
    pub fn unreadable(&self, now: i64) -> Option<&'static str> {
        if !self.enabled {
            Some("Disabled")
        } else if self.expires.is_some_and(|exp| exp <= now) {
            Some("Expired")
        } else if self.not_before.is_some_and(|nbf| nbf > now) {
            Some("NotYetValid")
        } else {
            None
        }
    }
}

/// A vault the operator and the CSI provider read from.
pub trait Backend: Send + Sync {
    /// Who reads from where: reads are shared only between callers with the same identity, so one tenant never
    /// sees another's cached result.
    fn identity(&self) -> &Identity;

    /// Reads one object.
    fn get<'a>(&'a self, object: &'a ObjectRef) -> BoxFuture<'a, Result<FetchedSecret>>;

    /// Proves the store works: a token can be had and the vault answers (one cheap call).
    fn check(&self) -> BoxFuture<'_, Result<()>>;

    /// The objects whose names start with `prefix` (OpenBao: the secrets directly in the folder `prefix`), sorted
    /// by name, for `dataFrom.find`. Lists names and attributes only, never values.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>>;
}
