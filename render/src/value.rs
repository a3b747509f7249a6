//! Plain values: property extraction, decoding, and the keyed HMAC that shows content changed without revealing
//! it. Pure functions; errors name the object and the problem, never the value.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{RenderError, SecretData};

/// How a fetched value is decoded before it is stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Decoding {
    #[default]
    None,
    Base64,
    Base64Url,
    /// Base64 or Base64URL when the value decodes as one, else the value as it is.
    Auto,
}

/// Takes `property` out of a JSON object value, or the whole value when `property` is `None`.
/// A string property gives its text; any other JSON value gives its compact JSON.
pub fn extract(value: &[u8], property: Option<&str>, object: &str) -> Result<Vec<u8>, RenderError> {
    let Some(property) = property else { return Ok(value.to_vec()) };
    let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value)
        .map_err(|_| RenderError::NotJson { object: object.into(), property: property.into() })?;
    match parsed.get(property) {
        Some(serde_json::Value::String(text)) => Ok(text.as_bytes().to_vec()),
        Some(other) => Ok(other.to_string().into_bytes()),
        None => Err(RenderError::MissingProperty { object: object.into(), property: property.into() }),
    }
}

/// Decodes a value as the VaultSecret asks.
pub fn decode(value: Vec<u8>, decoding: Decoding, object: &str) -> Result<Vec<u8>, RenderError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let trimmed = value.trim_ascii();
    let standard = || STANDARD.decode(trimmed).or_else(|_| STANDARD_NO_PAD.decode(trimmed));
    let url = || URL_SAFE.decode(trimmed).or_else(|_| URL_SAFE_NO_PAD.decode(trimmed));
    match decoding {
        Decoding::None => Ok(value),
        Decoding::Base64 => {
            standard().map_err(|_| RenderError::Undecodable { object: object.into(), encoding: "Base64" })
        }
        Decoding::Base64Url => {
            url().map_err(|_| RenderError::Undecodable { object: object.into(), encoding: "Base64URL" })
        }
        Decoding::Auto => Ok(standard().or_else(|_| url()).unwrap_or(value)),
    }
}

/// HMAC-SHA256 over the keys and values (each length-prefixed, so no two data maps collide), under the
/// installation's key: equal content gives an equal digest, and the digest reveals nothing without the key. The digest
/// names its key (`hmac-sha256:<key id>:<hex>`), so a digest made under another key is known to be incomparable.
pub fn data_hmac(key: &[u8], data: &SecretData) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    for (name, value) in data {
        mac.update(&(name.len() as u64).to_be_bytes());
        mac.update(name.as_bytes());
        mac.update(&(value.expose().len() as u64).to_be_bytes());
        mac.update(value.expose());
    }
    let digest = mac.finalize().into_bytes();
    format!("hmac-sha256:{}:{}", key_id(key), digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// A short name of an HMAC key: the first 8 hex digits of its SHA-256 (a one-way value of 32 random bytes).
pub fn key_id(key: &[u8]) -> String {
    use sha2::Digest as _;
    Sha256::digest(key).iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// The key id a digest names; `None` for a digest without one (made before digests named their key).
pub fn digest_key_id(digest: &str) -> Option<&str> {
    let mut parts = digest.strip_prefix("hmac-sha256:")?.split(':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(id), Some(_), None) => Some(id),
        _ => None,
    }
}

/// How a new digest compares with a recorded one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Same,
    /// Made under the same key, and different: the content changed.
    Changed,
    /// Nothing recorded, or recorded under another key (lost or replaced): whether the content changed is not known,
    /// and must not be taken for a change.
    Unknown,
}

pub fn compare(recorded: Option<&str>, new: &str) -> Comparison {
    match recorded {
        Some(old) if old == new => Comparison::Same,
        Some(old) if digest_key_id(old).is_some() && digest_key_id(old) == digest_key_id(new) => Comparison::Changed,
        _ => Comparison::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use vaultsync_backend::SecretBytes;

    use super::*;

    #[test]
    fn properties_come_out_of_json_objects() {
        let value = br#"{"username":"app","port":5432,"tls":{"mode":"verify-full"}}"#;
        assert_eq!(extract(value, Some("username"), "db").unwrap(), b"app");
        assert_eq!(extract(value, Some("port"), "db").unwrap(), b"5432");
        assert_eq!(extract(value, Some("tls"), "db").unwrap(), br#"{"mode":"verify-full"}"#);
        assert_eq!(extract(value, None, "db").unwrap(), value);
        let missing = extract(value, Some("password"), "db").unwrap_err();
        assert_eq!(missing.to_string(), r#"db has no property "password""#);
        let not_json = extract(b"hunter2", Some("password"), "db").unwrap_err();
        assert!(!not_json.to_string().contains("hunter2"), "errors never carry the value");
    }

    #[test]
    fn decoding_strategies() {
        assert_eq!(decode(b"aGVsbG8=".to_vec(), Decoding::Base64, "o").unwrap(), b"hello");
        assert_eq!(decode(b"aGVsbG8".to_vec(), Decoding::Base64, "o").unwrap(), b"hello");
        assert_eq!(decode(b"-_8=".to_vec(), Decoding::Base64Url, "o").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode(b"-_8=".to_vec(), Decoding::Auto, "o").unwrap(), [0xfb, 0xff]);
        assert_eq!(decode(b"not base64!".to_vec(), Decoding::Auto, "o").unwrap(), b"not base64!");
        assert_eq!(decode(b"x".to_vec(), Decoding::None, "o").unwrap(), b"x");
        let error = decode(b"not base64!".to_vec(), Decoding::Base64, "o").unwrap_err();
        assert_eq!(error, RenderError::Undecodable { object: "o".into(), encoding: "Base64" });
    }

    #[test]
    fn hmac_depends_on_key_and_content_and_is_unambiguous() {
        let data = |pairs: &[(&str, &str)]| -> SecretData {
            pairs.iter().map(|(k, v)| (k.to_string(), SecretBytes::new(v.as_bytes().to_vec()))).collect()
        };
        let a = data_hmac(b"key-1", &data(&[("password", "x")]));
        assert_eq!(a, data_hmac(b"key-1", &data(&[("password", "x")])));
        assert_ne!(a, data_hmac(b"key-2", &data(&[("password", "x")])));
        assert_ne!(a, data_hmac(b"key-1", &data(&[("password", "y")])));
        assert_ne!(data_hmac(b"k", &data(&[("ab", "c")])), data_hmac(b"k", &data(&[("a", "bc")])));
        assert!(a.starts_with("hmac-sha256:") && a.len() == "hmac-sha256:".len() + 9 + 64);
        assert_eq!(digest_key_id(&a), Some(key_id(b"key-1").as_str()));
    }

    #[test]
    fn digests_under_another_key_are_not_a_change() {
        let data: SecretData = [("k".to_string(), SecretBytes::new(b"v".to_vec()))].into();
        let other: SecretData = [("k".to_string(), SecretBytes::new(b"w".to_vec()))].into();
        let (old, same, changed) = (data_hmac(b"key", &data), data_hmac(b"key", &data), data_hmac(b"key", &other));
        assert_eq!(compare(Some(&old), &same), Comparison::Same);
        assert_eq!(compare(Some(&old), &changed), Comparison::Changed);
        assert_eq!(compare(Some(&old), &data_hmac(b"replaced-key", &other)), Comparison::Unknown);
        assert_eq!(compare(None, &same), Comparison::Unknown, "a first sync is not a change");
        let before_key_ids = format!("hmac-sha256:{}", "ab".repeat(32));
        assert_eq!(compare(Some(&before_key_ids), &same), Comparison::Unknown);
        assert_eq!(digest_key_id("hmac-sha256:x:y:z"), None);
    }
}
