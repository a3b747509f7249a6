//! A certificate client assertion is a JWT that the certificate's public key verifies, with the
//! claims Entra checks.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use vaultsync_backend::{assertion::CertificateAssertion, token::AssertionSource};

fn certificate() -> String {
    vaultsync_e2e::tls::rsa_client_certificate_pem("vaultsync-test-sp").expect("test certificate")
}

#[tokio::test]
async fn the_assertion_verifies_with_the_certificate_and_carries_entra_claims() {
    let pem = certificate();
    let audience = "https://login.example.test/tenant-1/oauth2/v2.0/token";
    let assertion = CertificateAssertion::from_pem(&pem, "app-1", audience).expect("assertion source");
    let jwt = assertion.assertion().await.expect("signed");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let decode = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).expect("base64url")).expect("json")
    };
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    assert_eq!(header["alg"], "PS256");
    assert_eq!(claims["aud"], audience);
    assert_eq!(claims["iss"], "app-1");
    assert_eq!(claims["sub"], "app-1");
    let lifetime = claims["exp"].as_u64().expect("exp") - claims["nbf"].as_u64().expect("nbf");
    assert_eq!(lifetime, 600);

    // The signature verifies with the certificate's public key; a changed payload does not.
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let der = CertificateDer::pem_slice_iter(pem.as_bytes()).next().expect("cert").expect("pem");
    let certificate = webpki::EndEntityCert::try_from(&der).expect("certificate");
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
    let message = format!("{}.{}", parts[0], parts[1]);
    certificate
        .verify_signature(webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY, message.as_bytes(), &signature)
        .expect("the signature verifies");
    let forged = format!("{}.{}", parts[0], URL_SAFE_NO_PAD.encode(r#"{"sub":"someone-else"}"#));
    assert!(
        certificate
            .verify_signature(webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY, forged.as_bytes(), &signature)
            .is_err()
    );
    let thumbprint = URL_SAFE_NO_PAD.encode(ring::digest::digest(&ring::digest::SHA256, der.as_ref()));
    assert_eq!(header["x5t#S256"], thumbprint);

    // Two assertions never share an id (replay protection).
    let again = assertion.assertion().await.expect("signed");
    assert_ne!(decode(again.split('.').nth(1).expect("claims"))["jti"], claims["jti"]);
}

#[test]
fn keys_that_are_not_rsa_are_refused_clearly() {
    let error = CertificateAssertion::from_pem("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "a", "b")
        .err()
        .expect("refused");
    assert_eq!(error.reason(), "InvalidSpec");
}
