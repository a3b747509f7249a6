//! The keys operations: create (RSA 2048/3072/4096, EC P-256/P-384/P-521), get, versions and
//! list, answering public keys as JSON Web Keys. A certificate's key (`managed: true`) is one of
//! these too. Key material comes from RustCrypto's `rsa` and elliptic-curve crates.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::{ApiError, AttributeChange, Attributes, Op, Reply, Request, Store, Versioned, new_version_id, ok_json};

const RSA_OPS: [&str; 6] = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"];
const EC_OPS: [&str; 2] = ["sign", "verify"];

/// A private key and its public half: PKCS#8 DER, SubjectPublicKeyInfo DER, the public JWK members.
pub(super) struct KeyMaterial {
    /// `RSA` or `EC`.
    pub(super) kty: &'static str,
    pub(super) pkcs8: Zeroizing<Vec<u8>>,
    pub(super) spki: Vec<u8>,
    /// `n`, `e` (RSA) or `crv`, `x`, `y` (EC), base64url as in a JWK.
    public: Map<String, Value>,
}

impl KeyMaterial {
    /// A new key; `size` is the RSA modulus size in bits, `curve` the EC curve name.
    pub(super) fn generate(kty: &str, size: Option<u32>, curve: Option<&str>) -> Result<Self, ApiError> {
        use p256::elliptic_curve::Generate as _;
        use rsa::pkcs8::EncodePrivateKey as _;
        let mut rng = rand_core::UnwrapErr(getrandom::SysRng);
        match kty {
            "RSA" | "RSA-HSM" => {
                let bits = size.unwrap_or(2048);
                if ![2048, 3072, 4096].contains(&bits) {
                    return Err(ApiError::bad_parameter(format!(
                        "Invalid key size {bits}: RSA keys are 2048, 3072 or 4096 bits."
                    )));
                }
                let key = rsa::PrivateKey::new(&mut rng, bits as usize).map_err(internal)?;
                Self::from_pkcs8(&key.to_pkcs8_der().map_err(internal)?.to_bytes())
            }
            "EC" | "EC-HSM" => {
                let pkcs8 = match curve.unwrap_or("P-256") {
                    "P-256" => p256::SecretKey::generate_from_rng(&mut rng).to_pkcs8_der(),
                    "P-384" => p384::SecretKey::generate_from_rng(&mut rng).to_pkcs8_der(),
                    "P-521" => p521::SecretKey::generate_from_rng(&mut rng).to_pkcs8_der(),
                    other => {
                        return Err(ApiError::bad_parameter(format!(
                            "The curve {other} is not supported by this server."
                        )));
                    }
                };
                Self::from_pkcs8(&pkcs8.map_err(internal)?.to_bytes())
            }
            other => Err(ApiError::bad_parameter(format!("Invalid key type (kty) {other}."))),
        }
    }

    /// The key in a PKCS#8 document: RSA, or EC on P-256, P-384 or P-521.
    pub(super) fn from_pkcs8(der: &[u8]) -> Result<Self, ApiError> {
        use rsa::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
        use rsa::traits::PublicKeyParts as _;
        let b64 = |bytes: &[u8]| Value::from(URL_SAFE_NO_PAD.encode(bytes));
        if let Ok(key) = rsa::PrivateKey::from_pkcs8_der(der) {
            let public = key.to_public_key();
            let spki = public.to_public_key_der().map_err(internal)?.to_vec();
            let members = [("n", b64(&public.n_bytes())), ("e", b64(&public.e_bytes()))];
            return Ok(Self::new("RSA", der, spki, members.into_iter()));
        }
        macro_rules! curve {
            ($krate:ident, $name:literal) => {
                if let Ok(key) = $krate::SecretKey::from_pkcs8_der(der) {
                    use $krate::elliptic_curve::sec1::ToSec1Point as _;
                    let public = key.public_key();
                    let point = public.to_sec1_point(false);
                    let spki = public.to_public_key_der().map_err(internal)?.to_vec();
                    let (x, y) = (point.x().map(|x| b64(x)), point.y().map(|y| b64(y)));
                    let members =
                        [("crv", Value::from($name)), ("x", x.unwrap_or_default()), ("y", y.unwrap_or_default())];
                    return Ok(Self::new("EC", der, spki, members.into_iter()));
                }
            };
        }
        curve!(p256, "P-256");
        curve!(p384, "P-384");
        curve!(p521, "P-521");
        Err(ApiError::bad_parameter("The private key is not an RSA or EC (P-256, P-384, P-521) key in PKCS#8 format."))
    }

    fn new(kty: &'static str, der: &[u8], spki: Vec<u8>, members: impl Iterator<Item = (&'static str, Value)>) -> Self {
        let public = members.map(|(k, v)| (k.to_string(), v)).collect();
        KeyMaterial { kty, pkcs8: Zeroizing::new(der.to_vec()), spki, public }
    }

    /// The EC curve name, for EC keys.
    pub(super) fn curve(&self) -> Option<&str> {
        self.public.get("crv").and_then(Value::as_str)
    }

    /// The RSA modulus size in bits, for RSA keys.
    pub(super) fn rsa_bits(&self) -> Option<u32> {
        let n = URL_SAFE_NO_PAD.decode(self.public.get("n")?.as_str()?).ok()?;
        Some(n.len() as u32 * 8)
    }

    fn default_ops(&self) -> Vec<String> {
        let ops: &[&str] = if self.kty == "RSA" { &RSA_OPS } else { &EC_OPS };
        ops.iter().map(|s| s.to_string()).collect()
    }
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", error.to_string())
}

/// A stored key version.
pub(super) struct Key {
    version: String,
    material: KeyMaterial,
    key_ops: Vec<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: Attributes,
    managed: bool,
}

impl Versioned for Key {
    fn version(&self) -> &str {
        &self.version
    }
}

impl Key {
    pub(super) fn attributes_mut(&mut self) -> &mut Attributes {
        &mut self.attributes
    }

    /// The key a certificate version keeps (its operations are the RSA or EC defaults).
    pub(super) fn managed(version: &str, material: KeyMaterial, mut attributes: Attributes, exportable: bool) -> Self {
        attributes.exportable = Some(exportable);
        Key {
            version: version.to_string(),
            key_ops: material.default_ops(),
            material,
            tags: None,
            attributes,
            managed: true,
        }
    }

    fn bundle(&self, url: &str, name: &str) -> Value {
        let mut key = self.material.public.clone();
        key.insert("kid".into(), json!(format!("{url}/keys/{name}/{}", self.version)));
        key.insert("kty".into(), json!(self.material.kty));
        key.insert("key_ops".into(), json!(self.key_ops));
        let mut bundle = json!({ "key": key, "attributes": self.attributes });
        self.decorate(&mut bundle);
        bundle
    }

    fn item(&self, url: &str, name: &str, with_version: bool) -> Value {
        let kid = format!("{url}/keys/{name}");
        let kid = if with_version { format!("{kid}/{}", self.version) } else { kid };
        let mut item = json!({ "kid": kid, "attributes": self.attributes });
        self.decorate(&mut item);
        item
    }

    fn decorate(&self, body: &mut Value) {
        if let Some(tags) = &self.tags {
            body["tags"] = json!(tags);
        }
        if self.managed {
            body["managed"] = json!(true);
        }
    }
}

/// `KeyCreateParameters`, the part this server understands.
#[derive(Deserialize, Default)]
#[serde(default)]
struct KeyCreate {
    kty: Option<String>,
    key_size: Option<u32>,
    crv: Option<String>,
    key_ops: Option<Vec<String>>,
    attributes: AttributeChange,
    tags: Option<BTreeMap<String, String>>,
}

pub(super) fn respond(keys: &mut Store<Key>, op: Op, name: &str, version: Option<&str>, request: &Request) -> Reply {
    let url = request.url;
    match op {
        Op::CreateKey => {
            let create: KeyCreate = request.json()?;
            let kty = create.kty.ok_or_else(|| ApiError::bad_parameter("Property kty is required."))?;
            keys.check_not_deleted(name)?;
            let material = KeyMaterial::generate(&kty, create.key_size, create.crv.as_deref())?;
            let mut attributes = Attributes::new(create.attributes);
            attributes.exportable = Some(false);
            let key = Key {
                version: new_version_id(),
                key_ops: create.key_ops.unwrap_or_else(|| material.default_ops()),
                material,
                tags: create.tags,
                attributes,
                managed: false,
            };
            let named = keys.push(name, key);
            ok_json(named.current().map(|k| k.bundle(url, &named.name)))
        }
        Op::GetKey => {
            let (named, key) = keys.find(name, version)?;
            if !key.attributes.enabled {
                return Err(super::ApiError::forbidden(
                    "Operation get is not allowed on a disabled key.",
                    "KeyDisabled",
                ));
            }
            ok_json(key.bundle(url, &named.name))
        }
        Op::ListKeys => {
            let items = keys.live.values().filter_map(|k| Some(k.current()?.item(url, &k.name, false)));
            request.page("keys", items.collect())
        }
        Op::ListKeyVersions => {
            let named = keys.named(name)?;
            let items = named.by_version_id().into_iter().map(|k| k.item(url, &named.name, true)).collect();
            request.page(&format!("keys/{}/versions", named.name), items)
        }
        _ => unreachable!("not a keys operation: {op:?}"),
    }
}
