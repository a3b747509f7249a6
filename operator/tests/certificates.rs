//! Certificates and keys from the Key Vault test server into Secrets: self-signed certificates created with a
//! policy and CA chains imported out of order (PKCS#12 and PEM), every output format parsed back with an X.509
//! library (key matches leaf, chain leaf to root, each certificate signed by the next), a `kubernetes.io/tls` Secret
//! that the apiserver accepts and rustls serves a handshake with, public keys as PEM and JWK against the vault's JWK,
//! and every failure (broken PFX or PEM, wrong password, disabled, expired, not yet valid) with its reason and the
//! Secret untouched.

mod support;

use std::{sync::Arc, time::Duration};

use base64::{Engine as _, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD};
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::api::PostParams;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use serde_json::{Value, json};
use support::Env;
use vaultsync_api::VaultSecret;
use vaultsync_e2e::{eventually, keyvault::KeyVaultClient};
use x509_parser::prelude::{FromDer as _, X509Certificate};

const PKCS12: &str = "application/x-pkcs12";
const PEM: &str = "application/x-pem-file";

/// A root, an intermediate it signs, and a leaf (EC P-256) the intermediate signs, valid from `from` to `to`
/// (days from now).
struct Chain {
    root: Vec<u8>,
    intermediate: Vec<u8>,
    leaf: Vec<u8>,
    leaf_key: Vec<u8>,
}

fn chain(name: &str, from: i64, to: i64) -> Chain {
    let now = time::OffsetDateTime::now_utc();
    let ca = |cn: &str| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.not_before = now - time::Duration::days(365);
        params.not_after = now + time::Duration::days(3650);
        params
    };
    let root_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let root = ca(&format!("{name} root")).self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(ca(&format!("{name} root")), &root_key);
    let intermediate_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let intermediate = ca(&format!("{name} intermediate")).signed_by(&intermediate_key, &root_issuer).unwrap();
    let intermediate_issuer = rcgen::Issuer::new(ca(&format!("{name} intermediate")), &intermediate_key);
    let leaf_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![format!("{name}.example")]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name}.example"));
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let leaf = params.signed_by(&leaf_key, &intermediate_issuer).unwrap();
    Chain {
        root: root.der().to_vec(),
        intermediate: intermediate.der().to_vec(),
        leaf: leaf.der().to_vec(),
        leaf_key: leaf_key.serialize_der(),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let lines: Vec<&str> = body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// A PKCS#12 archive with the chain in the order given (not leaf first).
fn pfx(chain: &Chain, order: &[&[u8]], password: &str) -> Vec<u8> {
    let key = p12_keystore::PrivateKey::from_der(&chain.leaf_key).unwrap();
    let certs: Vec<_> = order.iter().map(|der| p12_keystore::Certificate::from_der(der).unwrap()).collect();
    let mut store = p12_keystore::KeyStore::new();
    let entry = p12_keystore::PrivateKeyChain::new(vec![1, 2, 3, 4], key, certs);
    store.add_entry("imported", p12_keystore::KeyStoreEntry::PrivateKeyChain(entry));
    store.writer(password).write().unwrap()
}

fn client(env: &Env) -> KeyVaultClient {
    env.vault.client().expect("client").with_token(Some(&format!("token-for-{}", env.ns.name)))
}

/// Imports `value` as certificate `name`, keeping the given chain order in its secret (`preserveCertOrder`).
async fn import(env: &Env, name: &str, value: &str, content_type: &str, password: Option<&str>) -> Value {
    let mut body = json!({ "value": value, "policy": { "secret_props": { "contentType": content_type } },
        "preserveCertOrder": true });
    if let Some(password) = password {
        body["pwd"] = json!(password);
    }
    client(env)
        .call(reqwest::Method::POST, &format!("/certificates/{name}/import"), Some(&body))
        .await
        .unwrap_or_else(|e| panic!("importing {name}: {e}"))
}

/// Every base64 line of a PEM private key, for the leak scan (the vault's own values are scanned already).
fn remember_key(env: &Env, pem_text: &str) {
    let mut in_key = false;
    let mut lines = Vec::new();
    for line in pem_text.lines() {
        if line.starts_with("-----BEGIN") {
            in_key = line.contains("PRIVATE KEY");
        } else if line.starts_with("-----END") {
            in_key = false;
        } else if in_key {
            lines.push(line.to_string());
        }
    }
    assert!(!lines.is_empty(), "a private key to remember");
    env.remember_values(&lines.iter().map(String::as_str).collect::<Vec<_>>());
}

/// The PEM sections of a text: (label, DER).
fn sections(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    x509_parser::pem::Pem::iter_from_buffer(text).map(|p| p.unwrap()).map(|p| (p.label, p.contents)).collect()
}

/// Asserts `chain` is leaf first, each certificate signed by the next up to a self-signed root.
fn assert_leaf_to_root(chain: &[Vec<u8>], expected_leaf: &[u8]) {
    assert_eq!(chain[0], expected_leaf, "the leaf comes first");
    let parsed: Vec<X509Certificate<'_>> = chain.iter().map(|d| X509Certificate::from_der(d).unwrap().1).collect();
    for pair in parsed.windows(2) {
        assert_eq!(pair[0].issuer(), pair[1].subject(), "each certificate is followed by its issuer");
        pair[0].verify_signature(Some(pair[1].public_key())).expect("signed by the next certificate");
    }
    let root = parsed.last().unwrap();
    assert_eq!(root.subject(), root.issuer(), "the chain ends at the root");
}

/// Asserts the private key belongs to the leaf (rustls's own check).
fn assert_key_matches(key_der: &[u8], leaf: &[u8]) {
    let key = PrivateKeyDer::try_from(key_der.to_vec()).expect("a private key");
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        rustls::sign::CertifiedKey::from_der(vec![CertificateDer::from(leaf.to_vec())], key, &provider).expect("loads");
    certified.keys_match().expect("the key belongs to the leaf");
}

/// Checks a `pem` output: the private key (PKCS#8) first, then leaf to root.
fn assert_pem_output(value: &[u8], expected_leaf: &[u8]) {
    let sections = sections(value);
    assert_eq!(sections[0].0, "PRIVATE KEY", "the PKCS#8 key comes first");
    assert!(sections[1..].iter().all(|(label, _)| label == "CERTIFICATE"));
    let chain: Vec<Vec<u8>> = sections[1..].iter().map(|(_, der)| der.clone()).collect();
    assert_leaf_to_root(&chain, expected_leaf);
    assert_key_matches(&sections[0].1, &chain[0]);
}

async fn wait_synced(env: &Env, name: &str) -> (Secret, VaultSecret) {
    let vs = env.wait_reason(name, "Synced").await;
    (env.secret(name).await.expect("the Secret"), vs)
}

fn data_of(secret: &Secret) -> std::collections::BTreeMap<String, ByteString> {
    secret.data.clone().expect("data")
}

#[tokio::test]
async fn certificates_in_every_format_parse_back_and_a_tls_secret_serves_tls() {
    let env = Env::start("certs-formats").await;
    // Created by the vault from a policy, in both content types.
    for (name, content_type) in [("self-pfx", PKCS12), ("self-pem", PEM)] {
        let policy = json!({ "policy": { "key_props": { "kty": "EC", "crv": "P-256" },
            "secret_props": { "contentType": content_type },
            "x509_props": { "subject": format!("CN={name}.example"), "validity_months": 12 } } });
        client(&env)
            .call(reqwest::Method::POST, &format!("/certificates/{name}/create"), Some(&policy))
            .await
            .expect("creating a certificate");
    }
    // Imported with a CA chain out of order, in both content types; the vault keeps the order given.
    let ca = chain("imported", -1, 10);
    let scrambled_pem = [pem("CERTIFICATE", &ca.root), pem("PRIVATE KEY", &ca.leaf_key)].concat()
        + &pem("CERTIFICATE", &ca.leaf)
        + &pem("CERTIFICATE", &ca.intermediate);
    import(&env, "chain-pem", &scrambled_pem, PEM, None).await;
    let scrambled_pfx = pfx(&ca, &[&ca.intermediate, &ca.root, &ca.leaf], "import-password");
    import(&env, "chain-pfx", &STANDARD.encode(&scrambled_pfx), PKCS12, Some("import-password")).await;
    remember_key(&env, &scrambled_pem);

    let passwords = env.ns.api::<Secret>();
    let password = Secret {
        metadata: kube::api::ObjectMeta { name: Some("pfx-password".into()), ..Default::default() },
        string_data: Some([("password".to_string(), "out-pfx-password".to_string())].into()),
        ..Default::default()
    };
    passwords.create(&PostParams::default(), &password).await.expect("the password Secret");
    env.remember_values(&["out-pfx-password"]);

    env.apply_vault_secret(
        "certs",
        json!({ "storeRef": { "name": "kv" }, "data": [
            { "secretKey": "self-pfx.pem", "remoteRef": { "name": "self-pfx", "format": "pem" } },
            { "secretKey": "self-pem.pem", "remoteRef": { "name": "self-pem", "format": "pem" } },
            { "secretKey": "chain-pem.pem", "remoteRef": { "name": "chain-pem", "format": "pem" } },
            { "secretKey": "chain-pfx.pem", "remoteRef": { "name": "chain-pfx", "format": "pem" } },
            { "secretKey": "chain.pfx", "remoteRef": { "name": "chain-pem", "format": "pfx",
                "pfxPassword": { "secretRef": { "name": "pfx-password", "key": "password" } } } },
            { "secretKey": "templated.pfx", "remoteRef": { "name": "chain-pfx", "format": "pfx",
                "pfxPassword": { "template": "{{ data['chain-pem.pem'] | length }}-pw" } } },
            { "secretKey": "as-stored.pfx", "remoteRef": { "name": "chain-pfx", "format": "pfx" } },
            { "secretKey": "leaf.pem", "remoteRef": { "name": "chain-pfx", "objectType": "certificate" } },
            { "secretKey": "leaf.der", "remoteRef": { "name": "chain-pfx", "objectType": "certificate",
                "format": "der" } },
        ]}),
    )
    .await;
    let (secret, vs) = wait_synced(&env, "certs").await;
    let data = data_of(&secret);
    for key in ["self-pfx.pem", "self-pem.pem"] {
        let sections = sections(&data[key].0);
        assert_eq!(sections.len(), 2, "{key}: key and the self-signed leaf");
        assert_pem_output(&data[key].0, &sections[1].1);
    }
    assert_pem_output(&data["chain-pem.pem"].0, &ca.leaf);
    assert_pem_output(&data["chain-pfx.pem"].0, &ca.leaf);
    assert_eq!(data["chain-pem.pem"].0, data["chain-pfx.pem"].0, "PEM and PFX sources give the same PEM");

    // PFX outputs: opened with their password, key and chain leaf first.
    let template_password = format!("{}-pw", data["chain-pem.pem"].0.len());
    for (key, password) in [("chain.pfx", "out-pfx-password"), ("templated.pfx", template_password.as_str())] {
        let archive =
            p12_keystore::Pkcs12Archive::from_pkcs12(&data[key].0, password).expect("opens with its password");
        let chain: Vec<Vec<u8>> = archive.certs.iter().map(|c| c.cert.as_der().to_vec()).collect();
        assert_leaf_to_root(&chain, &ca.leaf);
        assert_key_matches(archive.keys[0].key.as_der(), &ca.leaf);
        assert!(p12_keystore::Pkcs12Archive::from_pkcs12(&data[key].0, "wrong").is_err(), "{key}: encrypted");
    }
    // Without a new password, the vault's PFX is passed on byte for byte.
    let stored = client(&env).get("chain-pfx", None).await.expect("the certificate's secret");
    assert_eq!(data["as-stored.pfx"].0, STANDARD.decode(stored.value.expect("value")).unwrap());

    // The certificates API gives the leaf alone.
    assert_eq!(sections(&data["leaf.pem"].0), vec![("CERTIFICATE".to_string(), ca.leaf.clone())]);
    assert_eq!(data["leaf.der"].0, ca.leaf);

    // Status shows each certificate's notAfter; the imported one expires within 30 days: a Warning Event says so.
    let status = vs.status.expect("status");
    let not_after = X509Certificate::from_der(&ca.leaf).unwrap().1.validity().not_after.timestamp();
    let imported = status.certificates.iter().find(|c| c.secret_key == "chain-pem.pem").expect("in status");
    assert_eq!(imported.not_after.parse::<k8s_openapi::jiff::Timestamp>().unwrap().as_second(), not_after);
    assert!(status.certificates.iter().any(|c| c.secret_key == "self-pfx.pem"));
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", "certs").await;
    assert!(events.iter().any(|e| e == "CertificateExpiring"), "{events:?}");

    // A refresh that changed nothing keeps the PFX it wrote (PKCS#12 salts are random): no new content.
    let hmac = status.data_hmac.clone();
    env.annotate("certs", "vaultsync.dev/force-sync", "again").await;
    let api = env.ns.api::<VaultSecret>();
    let refreshed = eventually(Duration::from_secs(20), "the forced refresh", || async {
        let vs = api.get("certs").await.ok()?;
        (vs.status.as_ref()?.force_sync.as_deref() == Some("again")).then_some(vs)
    })
    .await;
    assert_eq!(refreshed.status.expect("status").data_hmac, hmac, "an unchanged certificate is not a change");
    assert_eq!(data_of(&env.secret("certs").await.expect("Secret"))["chain.pfx"].0, data["chain.pfx"].0);

    // kubernetes.io/tls without a template: tls.crt (leaf to root) and tls.key, accepted by the apiserver, served by
    // rustls in a handshake that a client trusting only the root completes.
    env.apply_vault_secret(
        "web-tls",
        json!({ "storeRef": { "name": "kv" }, "target": { "type": "kubernetes.io/tls" },
            "data": [{ "secretKey": "tls.crt", "remoteRef": { "name": "chain-pfx" } }] }),
    )
    .await;
    let (tls, _) = wait_synced(&env, "web-tls").await;
    assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
    let tls_data = data_of(&tls);
    let chain: Vec<Vec<u8>> = sections(&tls_data["tls.crt"].0).into_iter().map(|(_, der)| der).collect();
    assert_leaf_to_root(&chain, &ca.leaf);
    handshake(&tls_data["tls.crt"].0, &tls_data["tls.key"].0, &ca.root, "imported.example").await;

    // objectType certificate under kubernetes.io/tls has no key: a clear reason, no half-made Secret.
    env.apply_vault_secret(
        "no-key",
        json!({ "storeRef": { "name": "kv" }, "target": { "type": "kubernetes.io/tls" },
            "data": [{ "secretKey": "tls.crt", "remoteRef": { "name": "chain-pfx", "objectType": "certificate" } }] }),
    )
    .await;
    let vs = env.wait_reason("no-key", "InvalidSpec").await;
    let message = &vs.status.expect("status").conditions[0].message;
    assert!(message.contains("tls.key would be missing") && message.contains("without its private key"), "{message}");
    assert!(env.secret("no-key").await.is_none());
    env.finish().await;
}

/// A TLS handshake over memory: a server with `chain` and `key`, a client trusting only `root`.
async fn handshake(chain: &[u8], key: &[u8], root: &[u8], name: &str) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain).map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_slice(key).expect("tls.key is a PEM private key");
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("rustls loads tls.crt and tls.key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(root.to_vec())).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let server_name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
    let (served, connected) = tokio::join!(acceptor.accept(server_io), connector.connect(server_name, client_io));
    served.expect("the server side completes");
    connected.expect("the client verifies the chain up to the root");
}

#[tokio::test]
async fn keys_as_pem_and_jwk_match_the_vault() {
    let env = Env::start("certs-keys").await;
    for (name, body) in [("ec-key", json!({ "kty": "EC", "crv": "P-384" })), ("rsa-key", json!({ "kty": "RSA" }))] {
        client(&env).call(reqwest::Method::POST, &format!("/keys/{name}/create"), Some(&body)).await.expect("key");
    }
    env.apply_vault_secret(
        "keys",
        json!({ "storeRef": { "name": "kv" }, "data": [
            { "secretKey": "ec.pem", "remoteRef": { "name": "ec-key", "objectType": "key" } },
            { "secretKey": "ec.jwk", "remoteRef": { "name": "ec-key", "objectType": "key", "format": "jwk" } },
            { "secretKey": "rsa.pem", "remoteRef": { "name": "rsa-key", "objectType": "key", "format": "pem" } },
            { "secretKey": "rsa.jwk", "remoteRef": { "name": "rsa-key", "objectType": "key", "format": "jwk" } },
        ]}),
    )
    .await;
    let (secret, _) = wait_synced(&env, "keys").await;
    let data = data_of(&secret);
    for (name, prefix) in [("ec-key", "ec"), ("rsa-key", "rsa")] {
        let vault: Value = client(&env).call(reqwest::Method::GET, &format!("/keys/{name}"), None).await.unwrap();
        let jwk = &vault["key"];
        let ours: Value = serde_json::from_slice(&data[&format!("{prefix}.jwk")].0).expect("JWK output is JSON");
        assert!(ours.get("d").is_none(), "no private member");
        let members: &[&str] = if prefix == "ec" { &["crv", "x", "y", "kid"] } else { &["n", "e", "kid"] };
        for member in members {
            assert_eq!(ours[member], jwk[member], "{prefix}: {member}");
        }
        let pem_sections = sections(&data[&format!("{prefix}.pem")].0);
        assert_eq!(pem_sections[0].0, "PUBLIC KEY");
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem_sections[0].1).expect("SPKI");
        let b64 = |m: &str| URL_SAFE_NO_PAD.decode(jwk[m].as_str().unwrap()).unwrap();
        match spki.parsed().expect("a known key type") {
            x509_parser::public_key::PublicKey::EC(point) => {
                assert_eq!(point.data(), [vec![4u8], b64("x"), b64("y")].concat(), "the EC point is the vault's");
            }
            x509_parser::public_key::PublicKey::RSA(rsa) => {
                let n = rsa.modulus.iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>();
                assert_eq!(n, b64("n"), "the modulus is the vault's");
                assert_eq!(rsa.exponent, b64("e").as_slice());
            }
            other => panic!("unexpected key {other:?}"),
        }
    }
    env.finish().await;
}

/// Waits for `reason` with a message containing `expected`, and checks the Secret still holds `before` and a
/// Warning Event names the reason.
async fn assert_kept(env: &Env, name: &str, reason: &str, expected: &str, before: &Secret) -> String {
    let api = env.ns.api::<VaultSecret>();
    let message = eventually(Duration::from_secs(20), &format!("{name} to be {reason}: {expected}"), || async {
        let vs = api.get(name).await.ok()?;
        let ready = vs.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.reason == reason && ready.message.contains(expected)).then_some(ready.message)
    })
    .await;
    assert_eq!(env.secret(name).await.expect("kept").data, before.data, "{reason}: the Secret is untouched");
    let events = vaultsync_e2e::controlplane::events_for(&env.ns, "VaultSecret", name).await;
    assert!(events.iter().any(|e| e == reason), "{reason}: {events:?}");
    message
}

async fn force(env: &Env, name: &str, value: &str) {
    env.annotate(name, "vaultsync.dev/force-sync", value).await;
}

#[tokio::test]
async fn broken_certificates_wrong_passwords_and_unusable_objects_keep_the_secret() {
    let env = Env::start("certs-failures").await;
    let good = chain("good", -1, 365);
    let good_pem = pem("PRIVATE KEY", &good.leaf_key) + &pem("CERTIFICATE", &good.leaf);
    remember_key(&env, &good_pem);
    env.vault.set_secret_with("uploaded", &good_pem, Some(PEM), Default::default());
    let spec = json!({ "storeRef": { "name": "kv" },
        "data": [{ "secretKey": "cert.pem", "remoteRef": { "name": "uploaded", "format": "pem" } }] });
    env.apply_vault_secret("cert", spec).await;
    let (before, _) = wait_synced(&env, "cert").await;

    // A broken PFX, then broken PEM: InvalidCertificate, the Secret as it was.
    env.vault.set_secret_with("uploaded", &STANDARD.encode(b"\x30\x03\x02\x01\x01"), Some(PKCS12), Default::default());
    force(&env, "cert", "broken-pfx").await;
    assert_kept(&env, "cert", "InvalidCertificate", "uploaded: the PKCS#12 (PFX) archive cannot be read", &before)
        .await;
    env.vault.set_secret_with(
        "uploaded",
        "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        Some(PEM),
        Default::default(),
    );
    force(&env, "cert", "broken-pem").await;
    assert_kept(&env, "cert", "InvalidCertificate", "uploaded: the PEM is malformed", &before).await;
    // A key that belongs to another certificate.
    let other = chain("other", -1, 365);
    let mismatched = pem("PRIVATE KEY", &other.leaf_key) + &pem("CERTIFICATE", &good.leaf);
    remember_key(&env, &mismatched);
    env.vault.set_secret_with("uploaded", &mismatched, Some(PEM), Default::default());
    force(&env, "cert", "mismatch").await;
    assert_kept(&env, "cert", "InvalidCertificate", "its private key belongs to none of its certificates", &before)
        .await;

    // A password-protected PFX read with the wrong password.
    let protected = STANDARD.encode(pfx(&good, &[&good.leaf], "right-password"));
    env.vault.set_secret_with("protected", &protected, Some(PKCS12), Default::default());
    let wrong = Secret {
        metadata: kube::api::ObjectMeta { name: Some("pfx-in".into()), ..Default::default() },
        string_data: Some([("password".to_string(), "wrong-password".to_string())].into()),
        ..Default::default()
    };
    env.ns.api::<Secret>().create(&PostParams::default(), &wrong).await.expect("password Secret");
    env.remember_values(&["right-password", "wrong-password"]);
    env.apply_vault_secret(
        "cert",
        json!({ "storeRef": { "name": "kv" }, "data": [{ "secretKey": "cert.pem", "remoteRef": { "name": "protected",
            "format": "pem", "passwordSecretRef": { "name": "pfx-in", "key": "password" } } }] }),
    )
    .await;
    assert_kept(&env, "cert", "WrongPassword", "protected: the PKCS#12 (PFX) password is wrong", &before).await;

    // A disabled certificate, an expired one, one not valid yet: their reasons, the Secret as it was.
    let make = |name: &str, from: i64, to: i64| {
        let c = chain(name, from, to);
        (pem("PRIVATE KEY", &c.leaf_key) + &pem("CERTIFICATE", &c.leaf), c)
    };
    for (name, from, to, reason) in
        [("disabled", -1, 365, "Disabled"), ("expired", -30, -1, "Expired"), ("future", 2, 365, "NotYetValid")]
    {
        let (text, _) = make(name, from, to);
        remember_key(&env, &text);
        import(&env, name, &text, PEM, None).await;
        if reason == "Disabled" {
            env.vault.disable_certificate(name);
        }
        env.apply_vault_secret(
            "cert",
            json!({ "storeRef": { "name": "kv" },
                "data": [{ "secretKey": "cert.pem", "remoteRef": { "name": name, "format": "pem" } }] }),
        )
        .await;
        let message = assert_kept(&env, "cert", reason, name, &before).await;
        assert!(message.contains("keeps its last values"), "{reason}: {message}");
    }
    // The certificate alone of a disabled certificate is disabled too.
    env.apply_vault_secret(
        "leaf",
        json!({ "storeRef": { "name": "kv" },
            "data": [{ "secretKey": "leaf.pem", "remoteRef": { "name": "disabled", "objectType": "certificate" } }] }),
    )
    .await;
    env.wait_reason("leaf", "Disabled").await;
    assert!(env.secret("leaf").await.is_none());
    env.finish().await;
}
