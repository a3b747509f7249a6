//! Certificates with their private keys: read from PEM (any order, PKCS#8, PKCS#1 or SEC1 keys) or PKCS#12 (base64
//! text as Key Vault stores it, or binary; with a password or none), checked (the key must belong to a certificate),
//! put in the order servers expect (leaf, then each issuer up to the root, then anything unrelated), and written as
//! PEM (PKCS#8 key first, then the chain), split `tls.crt` / `tls.key`, or PKCS#12 under a password.
//!
//! Parsing is done by x509-parser, rustls-pki-types (PEM), the RustCrypto key crates (PKCS#8, PKCS#1, SEC1) and
//! p12-keystore (PKCS#12); nothing here reads or writes DER by hand.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use pem_rfc7468::LineEnding;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use sha2::{Digest as _, Sha256};
use x509_parser::prelude::{FromDer as _, X509Certificate};
use zeroize::Zeroizing;

/// Key Vault's content type of a certificate's secret holding a base64 PKCS#12 archive.
pub const PKCS12_CONTENT_TYPE: &str = "application/x-pkcs12";
/// Key Vault's content type of a certificate's secret holding a PEM key and chain.
pub const PEM_CONTENT_TYPE: &str = "application/x-pem-file";

/// What is wrong with a certificate object. Never carries any of its bytes.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum CertificateProblem {
    #[error("the value is neither PEM nor PKCS#12 (PFX)")]
    NotACertificate,
    #[error("the PEM is malformed")]
    BrokenPem,
    #[error("the PKCS#12 (PFX) archive cannot be read")]
    BrokenPfx,
    #[error("the PKCS#12 (PFX) password is wrong")]
    WrongPassword,
    #[error("it holds no certificate")]
    NoCertificate,
    #[error("a certificate in it is not valid X.509")]
    BrokenCertificate,
    #[error("it holds no private key")]
    NoPrivateKey,
    #[error("its private key is encrypted PEM, which is not supported (store it unencrypted, or as PKCS#12)")]
    EncryptedKey,
    #[error("its private key is not an RSA or EC (P-256, P-384, P-521) key")]
    UnsupportedKey,
    #[error("its private key belongs to none of its certificates")]
    KeyMismatch,
    #[error("it cannot be written as PKCS#12")]
    CannotWritePfx,
}

type Result<T, E = CertificateProblem> = std::result::Result<T, E>;

/// A certificate chain, leaf first, and the leaf's private key (PKCS#8) when the object holds one.
#[derive(Clone)]
pub struct CertificateBundle {
    key: Option<Zeroizing<Vec<u8>>>,
    chain: Vec<Vec<u8>>,
}

impl std::fmt::Debug for CertificateBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateBundle")
            .field("key", &self.key.as_ref().map(|_| "redacted"))
            .field("certificates", &self.chain.len())
            .finish()
    }
}

/// When a certificate may be used (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl CertificateBundle {
    /// Reads PEM text, base64 PKCS#12 text (as Key Vault stores a certificate's secret) or binary PKCS#12. The
    /// password opens a PKCS#12 archive (none: the empty password, as Key Vault's archives have).
    pub fn parse(value: &[u8], password: Option<&str>) -> Result<Self> {
        let trimmed = value.trim_ascii();
        if trimmed.starts_with(b"-----BEGIN") {
            return Self::from_pem(trimmed);
        }
        match pfx_der(trimmed) {
            Some(der) => Self::from_pfx(&der, password.unwrap_or_default()),
            None => Err(CertificateProblem::NotACertificate),
        }
    }

    /// A PEM file: certificates in any order and at most one private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let mut chain = Vec::new();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            chain.push(certificate.map_err(|_| CertificateProblem::BrokenPem)?.to_vec());
        }
        let key = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(key) => Some(to_pkcs8(&key)?),
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                if contains(pem, b"ENCRYPTED PRIVATE KEY") {
                    return Err(CertificateProblem::EncryptedKey);
                }
                None
            }
            Err(_) => return Err(CertificateProblem::BrokenPem),
        };
        Self::new(key, chain)
    }

    /// A PKCS#12 archive (DER) under `password`.
    pub fn from_pfx(der: &[u8], password: &str) -> Result<Self> {
        use p12_keystore::error::Error as P12;
        let archive = p12_keystore::Pkcs12Archive::from_pkcs12(der, password).map_err(|e| match e {
            P12::MacError(_) | P12::UnpadError | P12::Pkcs5Error(_) => CertificateProblem::WrongPassword,
            _ => CertificateProblem::BrokenPfx,
        })?;
        let key = archive.keys.first().map(|bag| Zeroizing::new(bag.key.as_der().to_vec()));
        let chain = archive.certs.iter().map(|bag| bag.cert.as_der().to_vec()).collect();
        Self::new(key, chain)
    }

    /// Checks the key against the certificates and puts the chain in order.
    fn new(key: Option<Zeroizing<Vec<u8>>>, given: Vec<Vec<u8>>) -> Result<Self> {
        if given.is_empty() {
            return Err(CertificateProblem::NoCertificate);
        }
        let parsed: Vec<X509Certificate<'_>> = given
            .iter()
            .map(|der| {
                X509Certificate::from_der(der).map(|(_, c)| c).map_err(|_| CertificateProblem::BrokenCertificate)
            })
            .collect::<Result<_>>()?;
        let leaf = match &key {
            Some(key) => {
                let public = public_key_bits(key)?;
                parsed
                    .iter()
                    .position(|c| c.public_key().subject_public_key.data.as_ref() == public.as_slice())
                    .ok_or(CertificateProblem::KeyMismatch)?
            }
            // Without a key: a certificate that issued none of the others, preferably not a self-signed root.
            None => {
                let issued_nothing = |i: usize| {
                    !parsed
                        .iter()
                        .enumerate()
                        .any(|(j, other)| j != i && other.issuer().as_raw() == parsed[i].subject().as_raw())
                };
                let candidates: Vec<usize> = (0..parsed.len()).filter(|&i| issued_nothing(i)).collect();
                candidates
                    .iter()
                    .copied()
                    .find(|&i| !self_issued(&parsed[i]))
                    .or(candidates.first().copied())
                    .unwrap_or(0)
            }
        };
        let mut order = vec![leaf];
        loop {
            let current = &parsed[*order.last().unwrap_or(&leaf)];
            if self_issued(current) {
                break;
            }
            let issuer = (0..parsed.len())
                .find(|i| !order.contains(i) && parsed[*i].subject().as_raw() == current.issuer().as_raw());
            match issuer {
                Some(next) => order.push(next),
                None => break,
            }
        }
        order.extend((0..parsed.len()).filter(|i| !order.contains(i)).collect::<Vec<_>>());
        let chain = order.into_iter().map(|i| given[i].clone()).collect();
        Ok(CertificateBundle { key, chain })
    }

    pub fn has_key(&self) -> bool {
        self.key.is_some()
    }

    /// The certificates, leaf first (DER).
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The leaf certificate (DER).
    pub fn leaf(&self) -> &[u8] {
        &self.chain[0]
    }

    /// The leaf's validity.
    pub fn validity(&self) -> Result<Validity> {
        validity(self.leaf())
    }

    /// The private key as PKCS#8 PEM.
    pub fn key_pem(&self) -> Result<Zeroizing<String>> {
        let key = self.key.as_ref().ok_or(CertificateProblem::NoPrivateKey)?;
        Ok(Zeroizing::new(pem("PRIVATE KEY", key)))
    }

    /// The leaf certificate as PEM.
    pub fn leaf_pem(&self) -> String {
        pem("CERTIFICATE", self.leaf())
    }

    /// Leaf, intermediates and root as PEM (what `tls.crt` holds).
    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(|der| pem("CERTIFICATE", der)).collect()
    }

    /// The certificates after the leaf (intermediates and root) as PEM.
    pub fn ca_pem(&self) -> String {
        self.chain.iter().skip(1).map(|der| pem("CERTIFICATE", der)).collect()
    }

    /// The private key (PKCS#8) first, then leaf to root: what most servers read from one PEM file.
    pub fn pem(&self) -> Zeroizing<String> {
        let mut text = Zeroizing::new(String::new());
        if let Some(key) = &self.key {
            text.push_str(&pem("PRIVATE KEY", key));
        }
        text.push_str(&self.chain_pem());
        text
    }

    /// A PKCS#12 archive (PBES2 with AES-256 and an HMAC-SHA256 MAC) under `password`; the key and its chain, leaf
    /// first, or only the certificates when there is no key. Salts are random: see [`CertificateBundle::same_as_pfx`].
    pub fn pfx(&self, password: &str) -> Result<Zeroizing<Vec<u8>>> {
        let fail = |_| CertificateProblem::CannotWritePfx;
        let certificates: Vec<p12_keystore::Certificate> = self
            .chain
            .iter()
            .map(|der| p12_keystore::Certificate::from_der(der))
            .collect::<Result<_, _>>()
            .map_err(fail)?;
        let mut store = p12_keystore::KeyStore::new();
        match &self.key {
            Some(key) => {
                let key = p12_keystore::PrivateKey::from_der(key).map_err(fail)?;
                let id = Sha256::digest(self.leaf())[..20].to_vec();
                let entry = p12_keystore::PrivateKeyChain::new(id, key, certificates);
                store.add_entry("certificate", p12_keystore::KeyStoreEntry::PrivateKeyChain(entry));
            }
            None => {
                for (index, certificate) in certificates.into_iter().enumerate() {
                    store.add_entry(
                        &format!("certificate-{index}"),
                        p12_keystore::KeyStoreEntry::Certificate(certificate),
                    );
                }
            }
        }
        store.writer(password).write().map(Zeroizing::new).map_err(fail)
    }

    /// Whether `pfx` opens with `password` to this key and chain: a PKCS#12 archive written before can be kept
    /// instead of a new one that differs only in its random salts.
    pub fn same_as_pfx(&self, pfx: &[u8], password: &str) -> bool {
        Self::from_pfx(pfx, password).is_ok_and(|old| old.key == self.key && old.chain == self.chain)
    }
}

/// The DER of a PKCS#12 value, binary or base64 (as Key Vault stores it); `None` for PEM or anything else.
pub fn pfx_der(value: &[u8]) -> Option<Vec<u8>> {
    let trimmed = value.trim_ascii();
    if trimmed.first() == Some(&0x30) {
        return Some(trimmed.to_vec());
    }
    if trimmed.starts_with(b"-----BEGIN") {
        return None;
    }
    let text: Vec<u8> = trimmed.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    STANDARD.decode(text).ok().filter(|der| der.first() == Some(&0x30))
}

/// A certificate's validity (Unix seconds).
pub fn validity(der: &[u8]) -> Result<Validity> {
    let (_, certificate) = X509Certificate::from_der(der).map_err(|_| CertificateProblem::BrokenCertificate)?;
    let validity = certificate.validity();
    Ok(Validity { not_before: validity.not_before.timestamp(), not_after: validity.not_after.timestamp() })
}

/// A certificate (DER) as PEM, after checking that it is X.509.
pub fn certificate_pem(der: &[u8]) -> Result<String> {
    X509Certificate::from_der(der).map_err(|_| CertificateProblem::BrokenCertificate)?;
    Ok(pem("CERTIFICATE", der))
}

fn pem(label: &str, der: &[u8]) -> String {
    // Encoding fails only for an invalid label; ours are constants.
    pem_rfc7468::encode_string(label, LineEnding::LF, der).unwrap_or_default()
}

fn self_issued(certificate: &X509Certificate<'_>) -> bool {
    certificate.subject().as_raw() == certificate.issuer().as_raw()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Any private key rustls-pki-types found, as PKCS#8 DER.
fn to_pkcs8(key: &PrivateKeyDer<'_>) -> Result<Zeroizing<Vec<u8>>> {
    use p256::pkcs8::EncodePrivateKey as _;
    use rsa::pkcs1::DecodeRsaPrivateKey as _;
    fn unsupported<E>(_: E) -> CertificateProblem {
        CertificateProblem::UnsupportedKey
    }
    match key {
        PrivateKeyDer::Pkcs8(der) => Ok(Zeroizing::new(der.secret_pkcs8_der().to_vec())),
        PrivateKeyDer::Pkcs1(der) => {
            let key = rsa::PrivateKey::from_pkcs1_der(der.secret_pkcs1_der()).map_err(unsupported)?;
            Ok(Zeroizing::new(key.to_pkcs8_der().map_err(unsupported)?.as_bytes().to_vec()))
        }
        PrivateKeyDer::Sec1(der) => {
            let der = der.secret_sec1_der();
            let pkcs8 = if let Ok(key) = p256::SecretKey::from_sec1_der(der) {
                key.to_pkcs8_der()
            } else if let Ok(key) = p384::SecretKey::from_sec1_der(der) {
                key.to_pkcs8_der()
            } else {
                p521::SecretKey::from_sec1_der(der).map_err(unsupported)?.to_pkcs8_der()
            };
            Ok(Zeroizing::new(pkcs8.map_err(unsupported)?.as_bytes().to_vec()))
        }
        _ => Err(CertificateProblem::UnsupportedKey),
    }
}

/// The public key of a PKCS#8 private key, as the bits of a SubjectPublicKeyInfo (what a certificate carries).
fn public_key_bits(pkcs8: &[u8]) -> Result<Vec<u8>> {
    use p256::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
    let spki = if let Ok(key) = rsa::PrivateKey::from_pkcs8_der(pkcs8) {
        key.to_public_key().to_public_key_der()
    } else if let Ok(key) = p256::SecretKey::from_pkcs8_der(pkcs8) {
        key.public_key().to_public_key_der()
    } else if let Ok(key) = p384::SecretKey::from_pkcs8_der(pkcs8) {
        key.public_key().to_public_key_der()
    } else if let Ok(key) = p521::SecretKey::from_pkcs8_der(pkcs8) {
        key.public_key().to_public_key_der()
    } else {
        return Err(CertificateProblem::UnsupportedKey);
    };
    let spki = spki.map_err(|_| CertificateProblem::UnsupportedKey)?;
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki.as_bytes())
        .map_err(|_| CertificateProblem::UnsupportedKey)?;
    Ok(parsed.subject_public_key.data.to_vec())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA, an intermediate it signs and a leaf the intermediate signs; the leaf's key as PKCS#8 DER.
    pub struct Chain {
        pub root: Vec<u8>,
        pub intermediate: Vec<u8>,
        pub leaf: Vec<u8>,
        pub leaf_key: Vec<u8>,
    }

    pub fn chain(algorithm: &'static rcgen::SignatureAlgorithm) -> Chain {
        let ca = |name: &str| {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, name);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
        };
        let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let root = ca("Test Root").self_signed(&root_key).unwrap();
        let root_issuer = rcgen::Issuer::new(ca("Test Root"), &root_key);
        let intermediate_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let intermediate = ca("Test Intermediate").signed_by(&intermediate_key, &root_issuer).unwrap();
        let intermediate_issuer = rcgen::Issuer::new(ca("Test Intermediate"), &intermediate_key);
        let leaf_key = if *algorithm == rcgen::PKCS_RSA_SHA256 {
            // ring (rcgen's backend) does not generate RSA keys.
            use rsa::pkcs8::EncodePrivateKey as _;
            let key = rsa::PrivateKey::new(&mut rand_core::UnwrapErr(getrandom::SysRng), 2048).unwrap();
            let der = key.to_pkcs8_der().unwrap().as_bytes().to_vec();
            let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der);
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, algorithm).unwrap()
        } else {
            rcgen::KeyPair::generate_for(algorithm).unwrap()
        };
        let leaf = rcgen::CertificateParams::new(vec!["app.example".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &intermediate_issuer)
            .unwrap();
        Chain {
            root: root.der().to_vec(),
            intermediate: intermediate.der().to_vec(),
            leaf: leaf.der().to_vec(),
            leaf_key: leaf_key.serialize_der(),
        }
    }

    fn pem_of(parts: &[(&str, &[u8])]) -> String {
        parts.iter().map(|(label, der)| pem(label, der)).collect()
    }

    #[test]
    fn a_chain_out_of_order_comes_out_leaf_first_with_the_key_first() {
        let c = chain(&rcgen::PKCS_ECDSA_P384_SHA384);
        let scrambled = pem_of(&[
            ("CERTIFICATE", &c.root),
            ("CERTIFICATE", &c.leaf),
            ("PRIVATE KEY", &c.leaf_key),
            ("CERTIFICATE", &c.intermediate),
        ]);
        let bundle = CertificateBundle::parse(scrambled.as_bytes(), None).unwrap();
        assert_eq!(bundle.chain(), [c.leaf.clone(), c.intermediate.clone(), c.root.clone()]);
        let out = bundle.pem();
        let labels: Vec<&str> = out.lines().filter(|l| l.starts_with("-----BEGIN")).collect();
        assert_eq!(
            labels,
            [
                "-----BEGIN PRIVATE KEY-----",
                "-----BEGIN CERTIFICATE-----",
                "-----BEGIN CERTIFICATE-----",
                "-----BEGIN CERTIFICATE-----"
            ]
        );
        assert_eq!(bundle.ca_pem(), pem_of(&[("CERTIFICATE", &c.intermediate), ("CERTIFICATE", &c.root)]));
    }

    #[test]
    fn pfx_round_trips_under_a_password_and_refuses_a_wrong_one() {
        let c = chain(&rcgen::PKCS_ECDSA_P256_SHA256);
        let pem = pem_of(&[("PRIVATE KEY", &c.leaf_key), ("CERTIFICATE", &c.intermediate), ("CERTIFICATE", &c.leaf)]);
        let bundle = CertificateBundle::parse(pem.as_bytes(), None).unwrap();
        let pfx = bundle.pfx("s3cret").unwrap();
        let back = CertificateBundle::parse(&pfx, Some("s3cret")).unwrap();
        assert_eq!(back.chain(), bundle.chain());
        assert_eq!(back.key_pem().unwrap(), bundle.key_pem().unwrap());
        assert!(bundle.same_as_pfx(&pfx, "s3cret"));
        assert!(!bundle.same_as_pfx(&pfx, "other"));
        assert_eq!(CertificateBundle::parse(&pfx, Some("wrong")).unwrap_err(), CertificateProblem::WrongPassword);
        // As Key Vault stores it: base64 text, no password.
        let text = STANDARD.encode(bundle.pfx("").unwrap());
        assert_eq!(CertificateBundle::parse(text.as_bytes(), None).unwrap().chain(), bundle.chain());
    }

    #[test]
    fn legacy_key_formats_become_pkcs8() {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        let c = chain(&rcgen::PKCS_RSA_SHA256);
        let rsa_key = rsa::PrivateKey::from_pkcs8_der(&c.leaf_key).unwrap();
        let pkcs1 = rsa_key.to_pkcs1_der().unwrap();
        let pem = pem_of(&[("CERTIFICATE", &c.leaf), ("RSA PRIVATE KEY", pkcs1.as_bytes())]);
        let bundle = CertificateBundle::parse(pem.as_bytes(), None).unwrap();
        assert!(bundle.key_pem().unwrap().starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn broken_inputs_name_their_problem() {
        let c = chain(&rcgen::PKCS_ECDSA_P256_SHA256);
        let other = chain(&rcgen::PKCS_ECDSA_P256_SHA256);
        let mismatch = pem_of(&[("PRIVATE KEY", &other.leaf_key), ("CERTIFICATE", &c.leaf)]);
        let cases: Vec<(Vec<u8>, CertificateProblem)> = vec![
            (b"hunter2 is not a certificate".to_vec(), CertificateProblem::NotACertificate),
            (mismatch.into_bytes(), CertificateProblem::KeyMismatch),
            (pem_of(&[("PRIVATE KEY", &c.leaf_key)]).into_bytes(), CertificateProblem::NoCertificate),
            (b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(), CertificateProblem::BrokenPem),
            (pem_of(&[("CERTIFICATE", b"\x30\x03\x02\x01\x01")]).into_bytes(), CertificateProblem::BrokenCertificate),
            (STANDARD.encode(b"\x30\x03\x02\x01\x01").into_bytes(), CertificateProblem::BrokenPfx),
            (
                pem_of(&[("ENCRYPTED PRIVATE KEY", b"\x30\x00"), ("CERTIFICATE", &c.leaf)]).into_bytes(),
                CertificateProblem::EncryptedKey,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(CertificateBundle::parse(&input, None).unwrap_err(), expected);
        }
        let no_key =
            CertificateBundle::parse(pem_of(&[("CERTIFICATE", &c.root), ("CERTIFICATE", &c.leaf)]).as_bytes(), None)
                .unwrap();
        assert_eq!(no_key.chain()[0], c.leaf, "without a key, the leaf is the certificate that issued nothing");
        assert_eq!(no_key.key_pem().unwrap_err(), CertificateProblem::NoPrivateKey);
    }
}
