//! A VaultSecret's object fields as the backend and the render crate take them, for the operator (Secret keys) and
//! the CSI provider (files) alike: the kind of object read (`objectType`), the form it is rendered in (`format`) and
//! how a plain value is decoded (`decoding`).

use vaultsync_api::secret::{Decoding as ApiDecoding, Format as ApiFormat, ObjectType};
use vaultsync_backend::ObjectKind;
use vaultsync_render::{Decoding, Format};

/// The kind of object an `objectType` reads.
pub fn object_kind(object_type: ObjectType) -> ObjectKind {
    match object_type {
        ObjectType::Secret => ObjectKind::Secret,
        ObjectType::Certificate => ObjectKind::Certificate,
        ObjectType::Key => ObjectKind::Key,
    }
}

/// The render crate's format for the API's.
pub fn format(format: ApiFormat) -> Format {
    match format {
        ApiFormat::Pem => Format::Pem,
        ApiFormat::Pfx => Format::Pfx,
        ApiFormat::Der => Format::Der,
        ApiFormat::Jwk => Format::Jwk,
    }
}

/// The render crate's decoding for the API's.
pub fn decoding(decoding: ApiDecoding) -> Decoding {
    match decoding {
        ApiDecoding::None => Decoding::None,
        ApiDecoding::Base64 => Decoding::Base64,
        ApiDecoding::Base64URL => Decoding::Base64Url,
        ApiDecoding::Auto => Decoding::Auto,
    }
}
