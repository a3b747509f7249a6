//! The certificates operations: create with a policy (issuer `Self`: a self-signed certificate made
//! at once, its creation operation answered as pending then completed), import (PFX or PEM, with
//! a chain in any order), get, versions, list, policy. Each version also stores the key and the
//! secret of the same name and version, as Azure does: the secret holds the private key and the
//! chain, leaf first, as `application/x-pkcs12` (base64 PFX without a password) or
//! `application/x-pem-file` (PKCS#8 key, then leaf, intermediates, root).

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse as _;
use base64::{Engine as _, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Value, json};

use super::keys::{Key, KeyMaterial};
use super::secrets::Secret;
use super::{ApiError, AttributeChange, Attributes, Op, Reply, Request, Vault, Versioned, new_version_id, ok_json};

pub(super) const PKCS12: &str = "application/x-pkcs12";
pub(super) const PEM: &str = "application/x-pem-file";
const SERVER_AUTH: &str = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH: &str = "1.3.6.1.5.5.7.3.2";

/// A stored certificate version.
pub(super) struct Certificate {
    version: String,
    /// DER, leaf first (or in the order given, with `preserveCertOrder`).
    chain: Vec<Vec<u8>>,
    leaf: usize,
    policy: Value,
    attributes: Attributes,
    tags: Option<BTreeMap<String, String>>,
    preserve_order: bool,
}

impl Versioned for Certificate {
    fn version(&self) -> &str {
        &self.version
    }
}

/// The creation operation of a certificate (`/certificates/{name}/pending`).
pub(super) struct Operation {
    csr: Vec<u8>,
    request_id: String,
    preserve_order: bool,
}

impl Operation {
    fn body(&self, url: &str, name: &str, completed: bool) -> Value {
        let mut body = json!({
            "id": format!("{url}/certificates/{name}/pending"),
            "issuer": { "name": "Self" },
            "csr": STANDARD.encode(&self.csr),
            "cancellation_requested": false,
            "request_id": self.request_id,
        });
        if completed {
            body["status"] = json!("completed");
            body["target"] = json!(format!("{url}/certificates/{name}"));
        } else {
            body["status"] = json!("inProgress");
            body["status_details"] = json!(
                "Pending certificate created. Certificate request is in progress. This may take some time based on the issuer provider. Please check again later."
            );
        }
        if self.preserve_order {
            body["preserveCertOrder"] = json!(true);
        }
        body
    }
}

impl Certificate {
    pub(super) fn attributes_mut(&mut self) -> &mut Attributes {
        &mut self.attributes
    }

    fn leaf(&self) -> &[u8] {
        &self.chain[self.leaf]
    }

    fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, self.leaf()))
    }

    fn bundle(&self, url: &str, name: &str) -> Value {
        let mut bundle = json!({
            "id": format!("{url}/certificates/{name}/{}", self.version),
            "kid": format!("{url}/keys/{name}/{}", self.version),
            "sid": format!("{url}/secrets/{name}/{}", self.version),
            "x5t": self.x5t(),
            "cer": STANDARD.encode(self.leaf()),
            "contentType": self.policy["secret_props"]["contentType"],
            "attributes": self.attributes,
            "policy": self.policy,
        });
        self.decorate(&mut bundle);
        bundle
    }

    fn item(&self, url: &str, name: &str, with_version: bool) -> Value {
        let id = format!("{url}/certificates/{name}");
        let id = if with_version { format!("{id}/{}", self.version) } else { id };
        let mut item = json!({ "id": id, "attributes": self.attributes, "x5t": self.x5t() });
        self.decorate(&mut item);
        item
    }

    fn decorate(&self, body: &mut Value) {
        if let Some(tags) = &self.tags {
            body["tags"] = json!(tags);
        }
        if self.preserve_order {
            body["preserveCertOrder"] = json!(true);
        }
    }
}

/// `CertificateCreateParameters` and `CertificateImportParameters`, the parts this server reads.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct CertificateRequest {
    value: Option<String>,
    pwd: Option<String>,
    policy: Option<Value>,
    attributes: AttributeChange,
    tags: Option<BTreeMap<String, String>>,
    preserve_cert_order: bool,
}

pub(super) fn respond(vault: &mut Vault, op: Op, name: &str, version: Option<&str>, request: &Request) -> Reply {
    let url = request.url;
    match op {
        Op::CreateCertificate => {
            let create: CertificateRequest = request.json()?;
            vault.certificates.check_not_deleted(name)?;
            let policy =
                create.policy.clone().ok_or_else(|| ApiError::bad_parameter("Property policy is required."))?;
            let made = self_signed(&policy)?;
            let operation = Operation {
                csr: made.csr.clone(),
                request_id: new_version_id(),
                preserve_order: create.preserve_cert_order,
            };
            let body = operation.body(url, name, false);
            store(
                vault,
                url,
                name,
                Issued { material: made.material, chain: vec![made.der], leaf: 0 },
                &create,
                policy,
                "Self",
            )?;
            vault.operations.insert(name.to_ascii_lowercase(), operation);
            let mut response = (StatusCode::ACCEPTED, axum::Json(body)).into_response();
            let location = format!("{url}/certificates/{name}/pending?api-version={}", request.query["api-version"]);
            if let Ok(location) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(10));
            Ok(response)
        }
        Op::ImportCertificate => {
            let import: CertificateRequest = request.json()?;
            vault.certificates.check_not_deleted(name)?;
            let (content_type, issued) = parse_import(&import)?;
            let mut policy = derived_policy(&issued.material, &issued.chain[issued.leaf], content_type)?;
            merge(&mut policy, import.policy.clone().unwrap_or(Value::Null));
            ok_json(store(vault, url, name, issued, &import, policy, "Unknown")?)
        }
        Op::GetCertificate => {
            let (named, certificate) = vault.certificates.find(name, version)?;
            ok_json(certificate.bundle(url, &named.name))
        }
        Op::ListCertificates => {
            let certificates = vault.certificates.live.values();
            let items = certificates.filter_map(|c| Some(c.current()?.item(url, &c.name, false)));
            request.page("certificates", items.collect())
        }
        Op::ListCertificateVersions => {
            let named = vault.certificates.named(name)?;
            let items = named.by_version_id().into_iter().map(|c| c.item(url, &named.name, true)).collect();
            request.page(&format!("certificates/{}/versions", named.name), items)
        }
        Op::GetCertificatePolicy => {
            let (_, certificate) = vault.certificates.find(name, None)?;
            ok_json(&certificate.policy)
        }
        Op::GetCertificateOperation => {
            let (named, _) = vault.certificates.find(name, None)?;
            let operation = vault.operations.get(&name.to_ascii_lowercase()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "PendingCertificateNotFound",
                    format!("Pending certificate not found: {name}"),
                )
            })?;
            ok_json(operation.body(url, &named.name, true))
        }
        _ => unreachable!("not a certificates operation: {op:?}"),
    }
}

/// A certificate chain and its key.
struct Issued {
    material: KeyMaterial,
    chain: Vec<Vec<u8>>,
    /// Where the leaf is in `chain`.
    leaf: usize,
}

/// Stores a certificate version with its key and secret; answers the certificate bundle.
fn store(
    vault: &mut Vault,
    url: &str,
    name: &str,
    issued: Issued,
    request: &CertificateRequest,
    mut policy: Value,
    issuer: &str,
) -> Result<Value, ApiError> {
    let Issued { material, chain, leaf } = issued;
    let version = new_version_id();
    let parsed =
        x509_parser::parse_x509_certificate(&chain[leaf]).map_err(|e| ApiError::bad_parameter(e.to_string()))?.1;
    let validity = parsed.validity();
    let attributes = Attributes::new(AttributeChange {
        nbf: Some(validity.not_before.timestamp()),
        exp: Some(validity.not_after.timestamp()),
        ..request.attributes
    });
    let content_type = policy["secret_props"]["contentType"].as_str().unwrap_or(PKCS12).to_string();
    let exportable = policy["key_props"]["exportable"].as_bool().unwrap_or(true);
    // A new version keeps the name's first spelling (names are case-insensitive).
    let display_name = vault.certificates.named(name).map(|n| n.name.clone()).unwrap_or_else(|_| name.to_string());
    normalize(&mut policy, url, &display_name, issuer, attributes.created);
    let secret_value = secret_value(&content_type, &material, &chain, &display_name)?;
    let kid = format!("{url}/keys/{display_name}/{version}");
    let certificate = Certificate {
        version: version.clone(),
        chain,
        leaf,
        policy,
        attributes: attributes.clone(),
        tags: request.tags.clone(),
        preserve_order: request.preserve_cert_order,
    };
    vault.secrets.push(name, Secret::managed(&version, secret_value, &content_type, kid, attributes.clone()));
    vault.keys.push(name, Key::managed(&version, material, attributes, exportable));
    let named = vault.certificates.push(name, certificate);
    Ok(named.current().map(|c| c.bundle(url, &named.name)).unwrap_or(Value::Null))
}

/// The backing secret's value: a base64 PFX (no password) or a PEM file, key then chain.
fn secret_value(content_type: &str, material: &KeyMaterial, chain: &[Vec<u8>], name: &str) -> Result<String, ApiError> {
    if content_type == PEM {
        let mut pem = pem_block("PRIVATE KEY", &material.pkcs8);
        for der in chain {
            pem.push_str(&pem_block("CERTIFICATE", der));
        }
        return Ok(pem);
    }
    let bad = |e: p12_keystore::error::Error| {
        ApiError::bad_parameter(format!("The certificate could not be packed as PKCS#12: {e}"))
    };
    let key = p12_keystore::PrivateKey::from_der(&material.pkcs8).map_err(bad)?;
    let certs =
        chain.iter().map(|der| p12_keystore::Certificate::from_der(der)).collect::<Result<Vec<_>, _>>().map_err(bad)?;
    let key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &chain[0]).as_ref().to_vec();
    let mut store = p12_keystore::KeyStore::new();
    let entry = p12_keystore::PrivateKeyChain::new(key_id, key, certs);
    store.add_entry(name, p12_keystore::KeyStoreEntry::PrivateKeyChain(entry));
    Ok(STANDARD.encode(store.writer("").write().map_err(bad)?))
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let lines: Vec<&str> = encoded.as_bytes().chunks(64).filter_map(|c| std::str::from_utf8(c).ok()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

// === create: self-signed from a policy ===

struct Made {
    material: KeyMaterial,
    der: Vec<u8>,
    csr: Vec<u8>,
}

/// A self-signed certificate and its key, as the policy asks.
fn self_signed(policy: &Value) -> Result<Made, ApiError> {
    let issuer = policy["issuer"]["name"].as_str().unwrap_or("Self");
    if !issuer.eq_ignore_ascii_case("Self") {
        let message = format!(
            "Issuer '{issuer}' is not configured in this vault; this server issues self-signed certificates (issuer Self) only."
        );
        return Err(ApiError::bad_parameter(message));
    }
    let x509 = &policy["x509_props"];
    let subject = x509["subject"].as_str().unwrap_or_default();
    let strings = |value: &Value| -> Vec<String> {
        value.as_array().map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()
    };
    let (dns, emails, upns) =
        (strings(&x509["sans"]["dns_names"]), strings(&x509["sans"]["emails"]), strings(&x509["sans"]["upns"]));
    if subject.is_empty() && dns.is_empty() && emails.is_empty() && upns.is_empty() {
        return Err(ApiError::bad_parameter(
            "The policy must specify a subject or subject alternative names (x509_props).",
        ));
    }
    let key_props = &policy["key_props"];
    let kty = key_props["kty"].as_str().unwrap_or("RSA");
    let curve = key_props["crv"].as_str();
    if curve == Some("P-521") || curve == Some("P-256K") {
        return Err(ApiError::bad_parameter(format!(
            "Certificates with {} keys are not issued by this server.",
            curve.unwrap_or_default()
        )));
    }
    let material = KeyMaterial::generate(kty, key_props["key_size"].as_u64().map(|s| s as u32), curve)?;
    let algorithm = match material.curve() {
        None => &rcgen::PKCS_RSA_SHA256,
        Some("P-384") => &rcgen::PKCS_ECDSA_P384_SHA384,
        Some(_) => &rcgen::PKCS_ECDSA_P256_SHA256,
    };
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(material.pkcs8.as_slice());
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, algorithm)
        .map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(dns).map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    params.distinguished_name = distinguished_name(subject)?;
    for email in emails {
        let email = email.try_into().map_err(|_| ApiError::bad_parameter("Invalid email in sans."))?;
        params.subject_alt_names.push(rcgen::SanType::Rfc822Name(email));
    }
    for upn in upns {
        // The UPN other name (1.3.6.1.4.1.311.20.2.3), as Windows reads it.
        let value = rcgen::OtherNameValue::Utf8String(upn);
        params.subject_alt_names.push(rcgen::SanType::OtherName((vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3], value)));
    }
    params.key_usages = key_usages(&strings(&x509["key_usage"]))?;
    let ekus = strings(&x509["ekus"]);
    params.extended_key_usages = if ekus.is_empty() { vec![SERVER_AUTH.into(), CLIENT_AUTH.into()] } else { ekus }
        .iter()
        .map(|oid| extended_key_usage(oid))
        .collect::<Result<_, _>>()?;
    let months = x509["validity_months"].as_u64().unwrap_or(12).clamp(1, 1200) as i32;
    let start = time::OffsetDateTime::now_utc();
    params.not_before = start;
    params.not_after = add_months(start, months);
    let mut serial = [0u8; 16];
    serial.copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    serial[0] &= 0x7f;
    // The request Azure answers in the pending operation; a CSR has no serial number.
    let csr = params.serialize_request(&key).map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let certificate = params.self_signed(&key).map_err(|e| ApiError::bad_parameter(e.to_string()))?;
    Ok(Made { der: certificate.der().to_vec(), csr: csr.der().to_vec(), material })
}

/// `CN=name, O=org, ...` as a distinguished name (the attributes Azure's examples use).
fn distinguished_name(subject: &str) -> Result<rcgen::DistinguishedName, ApiError> {
    use rcgen::DnType;
    let mut name = rcgen::DistinguishedName::new();
    for part in subject.split([',', ';']).map(str::trim).filter(|p| !p.is_empty()) {
        let (attribute, value) =
            part.split_once('=').ok_or_else(|| ApiError::bad_parameter(format!("Invalid subject: {subject}")))?;
        let kind = match attribute.trim().to_ascii_uppercase().as_str() {
            "CN" => DnType::CommonName,
            "O" => DnType::OrganizationName,
            "OU" => DnType::OrganizationalUnitName,
            "C" => DnType::CountryName,
            "ST" | "S" => DnType::StateOrProvinceName,
            "L" => DnType::LocalityName,
            "E" | "EMAIL" => DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            other => return Err(ApiError::bad_parameter(format!("Invalid subject attribute {other} in {subject}"))),
        };
        name.push(kind, value.trim());
    }
    Ok(name)
}

/// Azure's `KeyUsageType` names.
const KEY_USAGES: [(&str, rcgen::KeyUsagePurpose); 9] = [
    ("digitalSignature", rcgen::KeyUsagePurpose::DigitalSignature),
    ("nonRepudiation", rcgen::KeyUsagePurpose::ContentCommitment),
    ("keyEncipherment", rcgen::KeyUsagePurpose::KeyEncipherment),
    ("dataEncipherment", rcgen::KeyUsagePurpose::DataEncipherment),
    ("keyAgreement", rcgen::KeyUsagePurpose::KeyAgreement),
    ("keyCertSign", rcgen::KeyUsagePurpose::KeyCertSign),
    ("cRLSign", rcgen::KeyUsagePurpose::CrlSign),
    ("encipherOnly", rcgen::KeyUsagePurpose::EncipherOnly),
    ("decipherOnly", rcgen::KeyUsagePurpose::DecipherOnly),
];

fn key_usages(names: &[String]) -> Result<Vec<rcgen::KeyUsagePurpose>, ApiError> {
    let names: Vec<&str> = if names.is_empty() {
        vec!["digitalSignature", "keyEncipherment"]
    } else {
        names.iter().map(String::as_str).collect()
    };
    names
        .iter()
        .map(|n| KEY_USAGES.iter().find(|(name, _)| name == n).map(|(_, usage)| *usage))
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::bad_parameter(format!("Invalid key usage in {names:?}")))
}

fn extended_key_usage(oid: &str) -> Result<rcgen::ExtendedKeyUsagePurpose, ApiError> {
    use rcgen::ExtendedKeyUsagePurpose as Eku;
    Ok(match oid {
        SERVER_AUTH => Eku::ServerAuth,
        CLIENT_AUTH => Eku::ClientAuth,
        "1.3.6.1.5.5.7.3.3" => Eku::CodeSigning,
        "1.3.6.1.5.5.7.3.4" => Eku::EmailProtection,
        "1.3.6.1.5.5.7.3.8" => Eku::TimeStamping,
        "1.3.6.1.5.5.7.3.9" => Eku::OcspSigning,
        other => Eku::Other(
            other
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .map_err(|_| ApiError::bad_parameter(format!("Invalid EKU {other}")))?,
        ),
    })
}

fn add_months(start: time::OffsetDateTime, months: i32) -> time::OffsetDateTime {
    let total = start.month() as i32 - 1 + months;
    let (year, month) = (start.year() + total / 12, (total % 12 + 1) as u8);
    let month = time::Month::try_from(month).unwrap_or(time::Month::January);
    let day = start.day().min(time::util::days_in_month(month, year));
    let date = time::Date::from_calendar_date(year, month, day).unwrap_or(start.date());
    start.replace_date(date)
}

// === import: PFX or PEM ===

/// The content type, and the private key with the chain (leaf first unless the order is preserved).
fn parse_import(import: &CertificateRequest) -> Result<(&'static str, Issued), ApiError> {
    let value = import.value.as_deref().ok_or_else(|| ApiError::bad_parameter("Property value is required."))?.trim();
    let declared = import.policy.as_ref().and_then(|p| p["secret_props"]["contentType"].as_str());
    // PEM may come as text or, as Microsoft's SDKs send it, base64 encoded like a PFX.
    let bytes = if value.starts_with("-----BEGIN") {
        value.as_bytes().to_vec()
    } else {
        STANDARD.decode(value).map_err(|_| ApiError::bad_parameter("The certificate value is not valid base64."))?
    };
    let is_pem = bytes.starts_with(b"-----BEGIN");
    let (content_type, key, given) = match (declared, is_pem) {
        (Some(PEM), false) => {
            return Err(ApiError::bad_parameter(
                "The specified PEM X.509 certificate content is in an unexpected format. Please check if certificate is in valid PEM format.",
            ));
        }
        (Some(PEM), true) | (None, true) => (PEM, pem_key(&bytes)?, pem_certificates(&bytes)?),
        (Some(PKCS12), true) => {
            return Err(ApiError::bad_parameter(
                "The specified PKCS#12 X.509 certificate content can not be read. Please check if certificate is in valid PKCS#12 format.",
            ));
        }
        (Some(PKCS12) | None, false) => {
            let (key, certs) = pfx_contents(&bytes, import.pwd.as_deref().unwrap_or_default())?;
            (PKCS12, key, certs)
        }
        (Some(other), _) => return Err(ApiError::bad_parameter(format!("Invalid content type {other}."))),
    };
    let material = KeyMaterial::from_pkcs8(&key)?;
    let chain = if import.preserve_cert_order { given } else { leaf_first(&material, given) };
    let leaf =
        chain.iter().position(|der| spki_of(der).as_deref() == Some(material.spki.as_slice())).ok_or_else(|| {
            ApiError::bad_parameter(
                "The private key does not match any certificate in the specified X.509 certificate content.",
            )
        })?;
    Ok((content_type, Issued { material, chain, leaf }))
}

fn pem_key(pem: &[u8]) -> Result<Vec<u8>, ApiError> {
    use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
    PrivatePkcs8KeyDer::from_pem_slice(pem).map(|k| k.secret_pkcs8_der().to_vec()).map_err(|_| {
        ApiError::bad_parameter("Private key is not specified in the specified X.509 PEM certificate content. Please specify private key in the X.509 PEM certificate content (PKCS#8).")
    })
}

fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).map(|c| c.to_vec()).collect();
    if certs.is_empty() {
        return Err(ApiError::bad_parameter(
            "No certificate was found in the specified X.509 PEM certificate content.",
        ));
    }
    Ok(certs)
}

fn pfx_contents(pfx: &[u8], password: &str) -> Result<(Vec<u8>, Vec<Vec<u8>>), ApiError> {
    let unreadable = || {
        ApiError::bad_parameter(
            "The specified PKCS#12 X.509 certificate content can not be read. Please check if certificate is in valid PKCS#12 format and that the password is correct.",
        )
    };
    let archive = p12_keystore::Pkcs12Archive::from_pkcs12(pfx, password).map_err(|_| unreadable())?;
    let key = archive.keys.first().ok_or_else(unreadable)?.key.as_der().to_vec();
    let certs: Vec<Vec<u8>> = archive.certs.iter().map(|bag| bag.cert.as_der().to_vec()).collect();
    if certs.is_empty() {
        return Err(unreadable());
    }
    Ok((key, certs))
}

fn spki_of(der: &[u8]) -> Option<Vec<u8>> {
    Some(x509_parser::parse_x509_certificate(der).ok()?.1.public_key().raw.to_vec())
}

/// The certificate of `key` first, then each issuer in turn up to a root, then anything left in the
/// given order.
fn leaf_first(key: &KeyMaterial, mut given: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let Some(position) = given.iter().position(|der| spki_of(der).as_deref() == Some(key.spki.as_slice())) else {
        return given;
    };
    let mut chain = vec![given.remove(position)];
    while let Some((subject, issuer)) = chain.last().and_then(|der| names(der)) {
        let next = given.iter().position(|der| names(der).is_some_and(|(s, _)| s == issuer));
        match next {
            Some(next) if subject != issuer => chain.push(given.remove(next)),
            _ => break,
        }
    }
    chain.extend(given);
    chain
}

/// The raw subject and issuer names of a certificate.
fn names(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let certificate = x509_parser::parse_x509_certificate(der).ok()?.1;
    Some((certificate.subject().as_raw().to_vec(), certificate.issuer().as_raw().to_vec()))
}

/// The policy Azure derives for an imported certificate: its subject, names, usages and validity.
fn derived_policy(key: &KeyMaterial, leaf: &[u8], content_type: &str) -> Result<Value, ApiError> {
    let certificate = x509_parser::parse_x509_certificate(leaf).map_err(|e| ApiError::bad_parameter(e.to_string()))?.1;
    let mut sans = json!({});
    if let Ok(Some(extension)) = certificate.subject_alternative_name() {
        use x509_parser::extensions::GeneralName;
        let (mut dns, mut emails) = (Vec::new(), Vec::new());
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::RFC822Name(e) => emails.push(e.to_string()),
                _ => {}
            }
        }
        if !dns.is_empty() {
            sans["dns_names"] = json!(dns);
        }
        if !emails.is_empty() {
            sans["emails"] = json!(emails);
        }
    }
    let mut ekus = Vec::new();
    if let Ok(Some(extension)) = certificate.extended_key_usage() {
        let eku = extension.value;
        let known = [
            (eku.server_auth, SERVER_AUTH),
            (eku.client_auth, CLIENT_AUTH),
            (eku.code_signing, "1.3.6.1.5.5.7.3.3"),
            (eku.email_protection, "1.3.6.1.5.5.7.3.4"),
        ];
        ekus.extend(known.iter().filter(|(set, _)| *set).map(|(_, oid)| oid.to_string()));
        ekus.extend(eku.other.iter().map(|oid| oid.to_id_string()));
    }
    let mut usages = Vec::new();
    if let Ok(Some(extension)) = certificate.key_usage() {
        let usage = extension.value;
        let flags = [
            usage.digital_signature(),
            usage.non_repudiation(),
            usage.key_encipherment(),
            usage.data_encipherment(),
            usage.key_agreement(),
            usage.key_cert_sign(),
            usage.crl_sign(),
            usage.encipher_only(),
            usage.decipher_only(),
        ];
        usages.extend(KEY_USAGES.iter().zip(flags).filter(|(_, set)| *set).map(|((name, _), _)| name.to_string()));
    }
    let validity = certificate.validity();
    let months =
        ((validity.not_after.timestamp() - validity.not_before.timestamp()) as f64 / (86_400.0 * 30.44)).round() as i64;
    let mut key_props = json!({ "exportable": true, "kty": key.kty, "reuse_key": false });
    match key.curve() {
        Some(curve) => key_props["crv"] = json!(curve),
        None => key_props["key_size"] = json!(key.rsa_bits()),
    }
    Ok(json!({
        "key_props": key_props,
        "secret_props": { "contentType": content_type },
        "x509_props": {
            "subject": certificate.subject().to_string(),
            "sans": sans,
            "ekus": ekus,
            "key_usage": usages,
            "validity_months": months.max(1),
            "basic_constraints": { "ca": certificate.is_ca() },
        },
        "lifetime_actions": [{ "trigger": { "lifetime_percentage": 80 }, "action": { "action_type": "EmailContacts" } }],
    }))
}

/// Fills what a policy leaves out, as Azure answers it: defaults, issuer, id and attributes.
fn normalize(policy: &mut Value, url: &str, name: &str, issuer: &str, created: i64) {
    let defaults = json!({
        "key_props": { "exportable": true, "kty": "RSA", "reuse_key": false },
        "secret_props": { "contentType": PKCS12 },
        "x509_props": {
            "ekus": [SERVER_AUTH, CLIENT_AUTH],
            "key_usage": ["digitalSignature", "keyEncipherment"],
            "validity_months": 12,
            "basic_constraints": { "ca": false },
        },
        "lifetime_actions": [{ "trigger": { "lifetime_percentage": 80 }, "action": { "action_type": "AutoRenew" } }],
        "issuer": { "name": issuer },
    });
    let given = std::mem::take(policy);
    *policy = defaults;
    merge(policy, given);
    if policy["key_props"]["kty"] == "RSA" && policy["key_props"]["key_size"].is_null() {
        policy["key_props"]["key_size"] = json!(2048);
    }
    if policy["key_props"]["kty"] == "EC" && policy["key_props"]["crv"].is_null() {
        policy["key_props"]["crv"] = json!("P-256");
    }
    policy["id"] = json!(format!("{url}/certificates/{name}/policy"));
    policy["attributes"] = json!({ "enabled": true, "created": created, "updated": created });
}

/// Merges `given` into `base`: objects member by member, anything else replaces (nulls are skipped).
fn merge(base: &mut Value, given: Value) {
    match (base, given) {
        (Value::Object(base), Value::Object(given)) => {
            for (key, value) in given {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (_, Value::Null) => {}
        (base, given) => *base = given,
    }
}
