//! One vault object as the value a consumer asked for: a plain value (with `property` and decoding), a certificate
//! with its key (PEM or PFX), a certificate alone (PEM or DER), or a key's public half (PEM or JWK).

use vaultsync_backend::{FetchedSecret, ObjectKind, SecretBytes};

use crate::{
    CertificateBundle, RenderError,
    certificate::{self, PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE, Validity},
    public_key::PublicKey,
    value::{Decoding, decode, extract},
};

/// The form a consumer wants an object in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// A secret's value as stored; a certificate's leaf or a key's public half as PEM.
    #[default]
    AsStored,
    /// A certificate's secret: the private key (PKCS#8) then leaf to root; a certificate: the leaf; a key: the
    /// public key (`PUBLIC KEY`).
    Pem,
    /// A certificate's secret as a binary PKCS#12 archive.
    Pfx,
    /// A certificate's leaf, or a key's SubjectPublicKeyInfo, as DER.
    Der,
    /// A key's public half as a JSON Web Key.
    Jwk,
}

/// What to make of one object.
#[derive(Clone, Copy, Debug, Default)]
pub struct ObjectSpec<'a> {
    /// The object's name, for messages.
    pub object: &'a str,
    pub kind: ObjectKind,
    pub format: Format,
    /// A field of a JSON value (plain values only).
    pub property: Option<&'a str>,
    pub decoding: Decoding,
    /// Opens a PKCS#12 source (none: the empty password Key Vault uses).
    pub password: Option<&'a str>,
    /// Encrypts a PKCS#12 output; without one a PKCS#12 source is passed on as it is, and one made from PEM has the
    /// empty password.
    pub output_password: Option<&'a str>,
}

/// An object rendered.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub value: SecretBytes,
    /// The validity of the certificate the object is or holds, when it is one.
    pub certificate: Option<Validity>,
}

/// Whether a secret's content type says a certificate's key and chain are in it.
pub fn is_certificate_content(content_type: Option<&str>) -> bool {
    matches!(content_type, Some(PKCS12_CONTENT_TYPE | PEM_CONTENT_TYPE))
}

/// The certificate (with its key) a secret holds.
pub fn certificate_bundle(fetched: &FetchedSecret, spec: &ObjectSpec<'_>) -> Result<CertificateBundle, RenderError> {
    if spec.kind != ObjectKind::Secret {
        let problem = match spec.kind {
            ObjectKind::Certificate => {
                "objectType certificate is the certificate alone, without its private key; read the certificate's \
                 secret (objectType secret) for the key"
            }
            _ => "a key object holds no certificate",
        };
        return Err(unsupported(spec.object, problem));
    }
    let value = decode(fetched.value.expose().to_vec(), spec.decoding, spec.object)?;
    CertificateBundle::parse(&value, spec.password)
        .map_err(|problem| RenderError::Certificate { object: spec.object.into(), problem })
}

pub fn render_object(fetched: &FetchedSecret, spec: &ObjectSpec<'_>) -> Result<Rendered, RenderError> {
    let object = spec.object;
    let certificate_error = |problem| RenderError::Certificate { object: object.into(), problem };
    match (spec.kind, spec.format) {
        (ObjectKind::Secret, Format::AsStored) => {
            let value = extract(fetched.value.expose(), spec.property, object)
                .and_then(|v| decode(v, spec.decoding, object))?;
            // A certificate's secret as stored still reports its expiry; a value that does not parse is passed on.
            let certificate = is_certificate_content(fetched.content_type.as_deref())
                .then(|| CertificateBundle::parse(&value, spec.password).ok()?.validity().ok())
                .flatten();
            Ok(Rendered { value: SecretBytes::new(value), certificate })
        }
        (ObjectKind::Secret, Format::Pem) => {
            let bundle = certificate_bundle(fetched, spec)?;
            let validity = bundle.validity().map_err(certificate_error)?;
            Ok(Rendered { value: SecretBytes::new(bundle.pem().as_bytes().to_vec()), certificate: Some(validity) })
        }
        (ObjectKind::Secret, Format::Pfx) => {
            let bundle = certificate_bundle(fetched, spec)?;
            let validity = bundle.validity().map_err(certificate_error)?;
            let source = decode(fetched.value.expose().to_vec(), spec.decoding, object)?;
            let value = match (spec.output_password, certificate::pfx_der(&source)) {
                // Passed on as the vault holds it: the same bytes every time.
                (None, Some(der)) => der,
                (password, _) => bundle.pfx(password.unwrap_or_default()).map_err(certificate_error)?.to_vec(),
            };
            Ok(Rendered { value: SecretBytes::new(value), certificate: Some(validity) })
        }
        (ObjectKind::Certificate, Format::AsStored | Format::Pem | Format::Der) => {
            let der = fetched.value.expose();
            let validity = certificate::validity(der).map_err(certificate_error)?;
            let value = match spec.format {
                Format::Der => der.to_vec(),
                _ => certificate::certificate_pem(der).map_err(certificate_error)?.into_bytes(),
            };
            Ok(Rendered { value: SecretBytes::new(value), certificate: Some(validity) })
        }
        (ObjectKind::Key, Format::AsStored | Format::Pem | Format::Der | Format::Jwk) => {
            let key = PublicKey::from_jwk(fetched.value.expose())
                .map_err(|problem| RenderError::PublicKey { object: object.into(), problem })?;
            let value = match spec.format {
                Format::Jwk => key.jwk().into_bytes(),
                Format::Der => key.der().to_vec(),
                _ => key.pem().into_bytes(),
            };
            Ok(Rendered { value: SecretBytes::new(value), certificate: None })
        }
        (ObjectKind::Secret, format) => {
            Err(unsupported(object, &format!("format {format:?} is for certificates and keys, not secrets")))
        }
        (ObjectKind::Certificate, Format::Pfx) => Err(certificate_bundle(fetched, spec)
            .err()
            .unwrap_or_else(|| unsupported(object, "objectType certificate has no private key to put in a PFX"))),
        (kind, format) => Err(unsupported(object, &format!("format {format:?} does not apply to objectType {kind}"))),
    }
}

fn unsupported(object: &str, problem: &str) -> RenderError {
    RenderError::Unsupported { object: object.into(), problem: problem.into() }
}

#[cfg(test)]
mod tests {
    use base64::{Engine as _, engine::general_purpose::STANDARD};

    use super::*;

    fn fetched(value: &[u8], content_type: Option<&str>) -> FetchedSecret {
        FetchedSecret {
            value: SecretBytes::new(value.to_vec()),
            version: "v1".into(),
            content_type: content_type.map(str::to_string),
            attributes: Default::default(),
        }
    }

    #[test]
    fn a_key_vault_pfx_becomes_pem_pfx_and_keeps_its_bytes_without_a_new_password() {
        let c = crate::certificate::tests::chain(&rcgen::PKCS_ECDSA_P256_SHA256);
        let pem =
            |label: &str, der: &[u8]| pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap();
        let source =
            [pem("PRIVATE KEY", &c.leaf_key), pem("CERTIFICATE", &c.leaf), pem("CERTIFICATE", &c.intermediate)];
        let bundle = CertificateBundle::parse(source.concat().as_bytes(), None).unwrap();
        let pfx = bundle.pfx("").unwrap();
        let stored = fetched(STANDARD.encode(&pfx).as_bytes(), Some(PKCS12_CONTENT_TYPE));
        let spec = ObjectSpec { object: "web", format: Format::Pem, ..Default::default() };
        let out = render_object(&stored, &spec).unwrap();
        assert_eq!(out.value.expose(), bundle.pem().as_bytes());
        assert!(out.certificate.is_some());
        let passed_on = render_object(&stored, &ObjectSpec { format: Format::Pfx, ..spec }).unwrap();
        assert_eq!(passed_on.value.expose(), pfx.as_slice());
        let encrypted =
            render_object(&stored, &ObjectSpec { format: Format::Pfx, output_password: Some("pw"), ..spec }).unwrap();
        assert!(bundle.same_as_pfx(encrypted.value.expose(), "pw"));
        let as_stored = render_object(&stored, &ObjectSpec { format: Format::AsStored, ..spec }).unwrap();
        assert_eq!(as_stored.certificate, out.certificate, "as stored still reports the expiry");
    }

    #[test]
    fn formats_that_do_not_fit_the_object_are_refused() {
        let leaf = crate::certificate::tests::chain(&rcgen::PKCS_ECDSA_P256_SHA256).leaf;
        let certificate = fetched(&leaf, None);
        let spec =
            ObjectSpec { object: "web", kind: ObjectKind::Certificate, format: Format::Pfx, ..Default::default() };
        let error = render_object(&certificate, &spec).unwrap_err();
        assert!(error.to_string().contains("without its private key"), "{error}");
        let der = render_object(&certificate, &ObjectSpec { format: Format::Der, ..spec }).unwrap();
        assert_eq!(der.value.expose(), leaf.as_slice());
        let plain = fetched(b"hunter2", None);
        let error = render_object(&plain, &ObjectSpec { kind: ObjectKind::Secret, format: Format::Jwk, ..spec });
        assert_eq!(error.unwrap_err().reason(), "InvalidSpec");
        let error = render_object(&plain, &ObjectSpec { kind: ObjectKind::Secret, format: Format::Pem, ..spec });
        let error = error.unwrap_err();
        assert_eq!(error.reason(), "InvalidCertificate");
        assert!(!error.to_string().contains("hunter2"));
    }
}
