//! From vault objects to what a workload reads, shared by the operator (Secret keys) and the CSI provider (files):
//! a JSON property or a decoding of a plain value ([`value`]), a certificate with its private key and chain as PEM,
//! PFX or split `tls.crt` / `tls.key` ([`certificate`]), a key's public half as PEM or JWK ([`public_key`]),
//! templates over a resource's own values ([`template`]), and the keyed digest that shows content changed without
//! revealing it. Nothing here knows about Kubernetes or does I/O; errors name the object and the problem, never a
//! value.
#![forbid(unsafe_code)]

pub mod certificate;
pub mod object;
pub mod public_key;
pub mod template;
pub mod value;

use std::collections::BTreeMap;

pub use certificate::{CertificateBundle, CertificateProblem};
pub use object::{Format, ObjectSpec, render_object};
pub use template::{TemplateError, Templates};
pub use value::{Comparison, Decoding, compare, data_hmac, decode, digest_key_id, extract, key_id};
pub use vaultsync_backend::SecretBytes;

/// Secret keys and their values, zeroed when dropped.
pub type SecretData = BTreeMap<String, SecretBytes>;

#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    #[error("{object} is not a JSON object, so property {property:?} cannot be taken from it")]
    NotJson { object: String, property: String },
    #[error("{object} has no property {property:?}")]
    MissingProperty { object: String, property: String },
    #[error("{object} is not valid {encoding} (decoding {encoding} was asked for)")]
    Undecodable { object: String, encoding: &'static str },
    #[error("{object}: {problem}")]
    Certificate { object: String, problem: CertificateProblem },
    #[error("{object}: {problem}")]
    PublicKey { object: String, problem: String },
    /// What was asked cannot be made from this object (a format for another kind of object, say).
    #[error("{object}: {problem}")]
    Unsupported { object: String, problem: String },
    #[error(transparent)]
    Template(#[from] TemplateError),
}

impl RenderError {
    /// The condition reason a resource reports for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            RenderError::NotJson { .. } | RenderError::MissingProperty { .. } | RenderError::Undecodable { .. } => {
                "InvalidValue"
            }
            RenderError::Certificate { problem: CertificateProblem::WrongPassword, .. } => "WrongPassword",
            RenderError::Certificate { .. } | RenderError::PublicKey { .. } => "InvalidCertificate",
            RenderError::Unsupported { .. } => "InvalidSpec",
            RenderError::Template(_) => "TemplateError",
        }
    }
}
