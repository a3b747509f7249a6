//! Vault backends shared by the operator and the CSI provider: a `Backend` trait, the Azure Key
//! Vault client, token sources, a per-store request budget and a read cache that coalesces
//! concurrent reads. Nothing here knows about Kubernetes.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod azure;
pub mod budget;
pub mod cache;
mod error;
pub mod http;
pub mod identity;
pub mod openbao;
pub mod refresh;
pub mod token;

use std::fmt;

use futures::future::BoxFuture;
use zeroize::Zeroizing;

pub use error::{Error, Result};
pub use identity::{Endpoint, Identity, Principal, ServiceAccount};

/// The kinds of object Azure Key Vault holds (OpenBao and Vault hold secrets only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    /// A secret's value (for a certificate: its secret, holding the private key and chain).
    #[default]
    Secret,
    /// A certificate alone (the leaf, DER), without its private key.
    Certificate,
    /// A key's public half (a JSON Web Key).
    Key,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Secret => "secret",
            ObjectKind::Certificate => "certificate",
            ObjectKind::Key => "key",
        })
    }
}

/// An object in a vault: its kind, its name and, when pinned, a version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub name: String,
    pub version: Option<String>,
    pub kind: ObjectKind,
}

impl ObjectRef {
    /// The latest version of a secret.
    pub fn latest(name: impl Into<String>) -> Self {
        Self { name: name.into(), version: None, kind: ObjectKind::Secret }
    }

    /// A secret, at `version` when pinned.
    pub fn secret(name: impl Into<String>, version: Option<String>) -> Self {
        Self { name: name.into(), version, kind: ObjectKind::Secret }
    }

    pub fn of_kind(mut self, kind: ObjectKind) -> Self {
        self.kind = kind;
        self
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.kind != ObjectKind::Secret {
            write!(f, "{}/", self.kind)?;
        }
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

/// One version of an object as the vault returned it: a secret's value, a certificate's leaf (DER), or a key's
/// public JSON Web Key.
#[derive(Clone, Debug)]
pub struct FetchedSecret {
    pub value: SecretBytes,
    /// The vault's version identifier of what was read.
    pub version: String,
    pub content_type: Option<String>,
    /// What the vault says about when the version may be used (Key Vault; OpenBao gives none).
    pub attributes: Attributes,
}

impl FetchedSecret {
    /// Why this version must not be used at `now` (Unix seconds): `Disabled`, `Expired`, `NotYetValid`.
    pub fn unusable(&self, now: i64) -> Option<&'static str> {
        self.attributes.unusable(now)
    }
}

/// Key Vault's `attributes` of an object version (times in Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attributes {
    pub enabled: bool,
    pub not_before: Option<i64>,
    pub expires: Option<i64>,
    /// When the object last changed (a new version or new attributes): what a list shows without reading values.
    pub updated: Option<i64>,
}

impl Default for Attributes {
    fn default() -> Self {
        Attributes { enabled: true, not_before: None, expires: None, updated: None }
    }
}

impl Attributes {
    /// Why an object with these attributes cannot be used at `now` (Unix seconds): `Disabled`, `Expired`,
    /// `NotYetValid`. Key Vault answers expired and not yet valid secrets, so the reader must check.
    pub fn unusable(&self, now: i64) -> Option<&'static str> {
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
    /// Key Vault's tags; empty for OpenBao.
    pub tags: std::collections::BTreeMap<String, String>,
}

impl Listed {
    /// Why this object cannot be read at `now` (Unix seconds): `Disabled`, `Expired`, `NotYetValid`.
    pub fn unreadable(&self, now: i64) -> Option<&'static str> {
        Attributes { enabled: self.enabled, not_before: self.not_before, expires: self.expires, updated: self.updated }
            .unusable(now)
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
    fn check(&self) -> BoxFuture<'_, Result<Checked>>;

    /// The objects whose names start with `prefix` (OpenBao: the secrets directly in the folder `prefix`), sorted
    /// by name, for `dataFrom.find`. Lists names and attributes only, never values.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Listed>>>;

    /// When each secret last changed, from a list of at most `max_pages` calls (Key Vault: 25 secrets a page); `Ok(None)`
    /// when the list is longer. `None` for a vault whose list does not say when secrets changed (OpenBao), so
    /// refreshing by listing is not possible there.
    fn list_updated(&self, max_pages: usize) -> Option<BoxFuture<'_, Result<Option<ListedUpdates>>>> {
        let _ = max_pages;
        None
    }
}

/// What a store check found besides "it works".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// Whether the identity may list secrets (Key Vault); `None` where the check does not tell.
    pub can_list: Option<bool>,
}

/// Every secret's last change, from one complete list.
#[derive(Clone, Debug, Default)]
pub struct ListedUpdates {
    /// Lowercase name (Key Vault names are case-insensitive) -> `attributes.updated`. Boxed names: one entry per
    /// secret in the vault, held while the next list is taken.
    pub updated: std::collections::HashMap<Box<str>, Option<i64>>,
    /// The calls the list took.
    pub pages: usize,
}
