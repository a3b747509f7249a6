//! Client assertions signed with a certificate's private key, for service principals that
//! authenticate with a certificate: a JWT valid for ten minutes, signed PS256 and naming the
//! certificate by its SHA-256 (`x5t#S256`) and SHA-1 (`x5t`) thumbprints, as Entra expects.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::BoxFuture;
use ring::{
    digest,
    rand::{SecureRandom, SystemRandom},
    signature::{RSA_PSS_SHA256, RsaKeyPair},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde_json::json;
use zeroize::Zeroizing;

use crate::{Error, Result, token::AssertionSource};

pub struct CertificateAssertion {
    client_id: String,
    audience: String,
    key: RsaKeyPair,
    sha256_thumbprint: String,
    sha1_thumbprint: String,
    rng: SystemRandom,
}

fn invalid(message: &str) -> Error {
    Error::InvalidConfig { message: message.into() }
}

impl CertificateAssertion {
    /// `pem` holds the certificate (first) and its RSA private key (PKCS#1 or PKCS#8);
    /// `audience` is the token endpoint the assertion is for.
    pub fn from_pem(pem: &str, client_id: &str, audience: &str) -> Result<Self> {
        let certificate = CertificateDer::pem_slice_iter(pem.as_bytes())
            .next()
            .and_then(|c| c.ok())
            .ok_or_else(|| invalid("the client certificate PEM holds no certificate"))?;
        let key = match PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|_| invalid("the client certificate PEM holds no private key"))?
        {
            PrivateKeyDer::Pkcs1(key) => RsaKeyPair::from_der(key.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(key) => RsaKeyPair::from_pkcs8(key.secret_pkcs8_der()),
            _ => return Err(invalid("the client certificate key must be an RSA key")),
        }
        .map_err(|_| invalid("the client certificate key is not a usable RSA key"))?;
        let thumbprint = |algorithm| URL_SAFE_NO_PAD.encode(digest::digest(algorithm, certificate.as_ref()));
        Ok(Self {
            client_id: client_id.into(),
            audience: audience.into(),
            key,
            sha256_thumbprint: thumbprint(&digest::SHA256),
            sha1_thumbprint: thumbprint(&digest::SHA1_FOR_LEGACY_USE_ONLY),
            rng: SystemRandom::new(),
        })
    }

    fn sign(&self) -> Result<Zeroizing<String>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
        let mut jti = [0u8; 16];
        self.rng.fill(&mut jti).map_err(|_| invalid("no randomness for the assertion id"))?;
        let header =
            json!({ "alg": "PS256", "typ": "JWT", "x5t#S256": self.sha256_thumbprint, "x5t": self.sha1_thumbprint });
        let claims = json!({
            "aud": self.audience, "iss": self.client_id, "sub": self.client_id,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "iat": now, "nbf": now, "exp": now + 600,
        });
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let mut signature = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(&RSA_PSS_SHA256, &self.rng, signing_input.as_bytes(), &mut signature)
            .map_err(|_| invalid("signing the client assertion failed"))?;
        Ok(Zeroizing::new(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))))
    }
}

impl AssertionSource for CertificateAssertion {
    fn assertion(&self) -> BoxFuture<'_, Result<Zeroizing<String>>> {
        Box::pin(async move { self.sign() })
    }
}
