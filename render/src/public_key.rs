//! A vault key's public half: Key Vault answers a key as a JSON Web Key (RSA `n`/`e`, EC `crv`/`x`/`y`); this gives
//! it as a SubjectPublicKeyInfo PEM (`PUBLIC KEY`, what TLS and JWT libraries load) or as a public JWK with only
//! the standard members. A private member in the answer is refused, never passed on.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value, json};

type Result<T> = std::result::Result<T, String>;

/// A public key read from a JWK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    jwk: Map<String, Value>,
    spki: Vec<u8>,
}

impl PublicKey {
    /// Reads a JWK (Key Vault's `key` member, or a whole key bundle holding one).
    pub fn from_jwk(value: &[u8]) -> Result<Self> {
        let parsed: Value = serde_json::from_slice(value).map_err(|_| "the key is not a JSON Web Key".to_string())?;
        let jwk = match parsed.get("key") {
            Some(Value::Object(key)) => key.clone(),
            _ => parsed.as_object().cloned().ok_or("the key is not a JSON Web Key")?,
        };
        if ["d", "p", "q", "dp", "dq", "qi", "k"].iter().any(|m| jwk.contains_key(*m)) {
            return Err("the JSON Web Key holds private members; only public keys are read".into());
        }
        let member = |name: &str| -> Result<Vec<u8>> {
            let text = jwk.get(name).and_then(Value::as_str).ok_or(format!("the JSON Web Key has no {name:?}"))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|_| format!("the JSON Web Key's {name:?} is not base64url"))
        };
        let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
        let mut public = Map::new();
        let spki = match kty {
            "RSA" | "RSA-HSM" => {
                use rsa::pkcs8::EncodePublicKey as _;
                let (n, e) = (member("n")?, member("e")?);
                let key = rsa::PublicKey::new_with_size_limits(
                    rsa::BoxedUint::from_be_slice_vartime(&n),
                    rsa::BoxedUint::from_be_slice_vartime(&e),
                    1024..=16384,
                )
                .map_err(|_| "the JSON Web Key is not a valid RSA public key".to_string())?;
                public.insert("kty".into(), json!("RSA"));
                public.insert("n".into(), json!(URL_SAFE_NO_PAD.encode(&n)));
                public.insert("e".into(), json!(URL_SAFE_NO_PAD.encode(&e)));
                key.to_public_key_der().map_err(|_| "the RSA key cannot be encoded".to_string())?.into_vec()
            }
            "EC" | "EC-HSM" => {
                use p256::pkcs8::EncodePublicKey as _;
                let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
                let (x, y) = (member("x")?, member("y")?);
                let mut point = vec![0x04];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let invalid = |_| format!("the JSON Web Key is not a valid {crv} point");
                let der = match crv {
                    "P-256" => p256::PublicKey::from_sec1_bytes(&point).map_err(invalid)?.to_public_key_der(),
                    "P-384" => p384::PublicKey::from_sec1_bytes(&point).map_err(invalid)?.to_public_key_der(),
                    "P-521" => p521::PublicKey::from_sec1_bytes(&point).map_err(invalid)?.to_public_key_der(),
                    other => return Err(format!("the EC curve {other:?} is not supported (P-256, P-384, P-521 are)")),
                };
                public.insert("kty".into(), json!("EC"));
                public.insert("crv".into(), json!(crv));
                public.insert("x".into(), json!(URL_SAFE_NO_PAD.encode(&x)));
                public.insert("y".into(), json!(URL_SAFE_NO_PAD.encode(&y)));
                der.map_err(|_| "the EC key cannot be encoded".to_string())?.into_vec()
            }
            other => return Err(format!("the key type {other:?} has no public key to give (RSA and EC have)")),
        };
        for optional in ["kid", "key_ops"] {
            if let Some(value) = jwk.get(optional) {
                public.insert(optional.into(), value.clone());
            }
        }
        Ok(PublicKey { jwk: public, spki })
    }

    /// The SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn pem(&self) -> String {
        pem_rfc7468::encode_string("PUBLIC KEY", pem_rfc7468::LineEnding::LF, &self.spki).unwrap_or_default()
    }

    /// The SubjectPublicKeyInfo (DER).
    pub fn der(&self) -> &[u8] {
        &self.spki
    }

    /// The public JWK: `kty` (`RSA` or `EC`), `n`/`e` or `crv`/`x`/`y`, and `kid`, `key_ops` when the vault gave them.
    pub fn jwk(&self) -> String {
        Value::Object(self.jwk.clone()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_and_rsa_jwks_become_pem_and_back() {
        use p256::elliptic_curve::sec1::ToSec1Point as _;
        let secret = p256::SecretKey::from_slice(&[7u8; 32]).unwrap();
        let point = secret.public_key().to_sec1_point(false);
        let jwk = json!({ "key": { "kty": "EC-HSM", "crv": "P-256", "kid": "https://v/keys/k/1",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()) } });
        let key = PublicKey::from_jwk(jwk.to_string().as_bytes()).unwrap();
        use p256::pkcs8::DecodePublicKey as _;
        assert_eq!(p256::PublicKey::from_public_key_pem(&key.pem()).unwrap(), secret.public_key());
        let out: Value = serde_json::from_str(&key.jwk()).unwrap();
        assert_eq!(out["kty"], "EC");
        assert_eq!(out["x"], jwk["key"]["x"]);

        let rsa_jwk = json!({ "kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xc5u8; 256]), "e": "AQAB" });
        let key = PublicKey::from_jwk(rsa_jwk.to_string().as_bytes()).unwrap();
        assert!(key.pem().starts_with("-----BEGIN PUBLIC KEY-----"));
    }

    #[test]
    fn private_members_and_unknown_types_are_refused() {
        for bad in [
            json!({ "kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB" }),
            json!({ "kty": "oct", "k": "AQAB" }),
            json!({ "kty": "OKP", "crv": "Ed25519", "x": "AQAB" }),
            json!({ "kty": "EC", "crv": "P-256K", "x": "AQAB", "y": "AQAB" }),
            json!({ "kty": "EC", "crv": "P-256", "x": "AQAB", "y": "AQAB" }),
            json!("not a key"),
        ] {
            assert!(PublicKey::from_jwk(bad.to_string().as_bytes()).is_err(), "{bad}");
        }
    }
}
