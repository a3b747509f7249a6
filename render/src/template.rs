//! Templates over one resource's own values (minijinja, Jinja2 syntax). A template sees exactly the values it is
//! given: each key as a variable (`{{ password }}`) and all of them in `data` (`{{ data["tls.crt"] }}`); there is
//! no loader (no `include` or `import` of files), no environment, no network, a bounded amount of work (fuel and
//! recursion limits) and a bounded output. Undefined values are errors, not empty strings.
//!
//! Filters: `b64enc`, `b64dec`, `from_json`, `to_json`, `from_yaml`, `to_yaml`; certificates (PEM, base64 PKCS#12
//! or binary PKCS#12, with an optional password argument): `pem_key`, `pem_leaf`, `pem_chain` (leaf to root),
//! `pem_ca` (after the leaf), `pem_bundle` (key, then leaf to root); `bcrypt` and `htpasswd(user)` (salts derived
//! from the value under the installation's key, so an unchanged password renders the same hash and no rollout
//! follows). Function: `dockerconfigjson(registry, username, password)`.
//!
//! Errors name the template and the problem (and the line), never a value: any value of the resource found in an
//! error's text is replaced by `[redacted]`.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
};

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac as _};
use minijinja::{Environment, Error, ErrorKind, UndefinedBehavior, Value, value::ValueKind};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::{
    SecretData,
    certificate::{CertificateBundle, CertificateProblem},
};

/// The work one template may do (minijinja instructions).
pub const FUEL: u64 = 200_000;
/// The longest output one template may render.
pub const MAX_OUTPUT: usize = 512 * 1024;
/// The bcrypt costs accepted (higher costs would let a template burn the operator's CPU).
pub const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=12;
/// How many costly filter calls (bcrypt, htpasswd, reading a certificate: key derivation the fuel does not count) one
/// [`Templates`] may make across all its renders.
pub const COSTLY_CALLS: u32 = 16;
const DEFAULT_BCRYPT_COST: u32 = 10;

/// A template that could not be rendered: which one, and what is wrong. Never holds a value.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("template {template}: {problem}")]
pub struct TemplateError {
    pub template: String,
    pub problem: String,
}

/// Renders templates over one resource's values.
pub struct Templates {
    env: Environment<'static>,
    context: Value,
    /// The values as text, to keep them out of error messages.
    redact: Vec<Zeroizing<String>>,
}

impl Templates {
    /// Templates over `values`; `salt_key` (the installation's HMAC key) keys the salts of `bcrypt` and `htpasswd`.
    pub fn new(values: &SecretData, salt_key: &[u8]) -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_fuel(Some(FUEL));
        env.set_recursion_limit(64);
        // A template of a file keeps the file's last newline (Jinja drops it by default).
        if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder().keep_trailing_newline(true).build() {
            env.set_syntax(syntax);
        }
        env.add_filter("b64enc", b64enc);
        env.add_filter("b64dec", b64dec);
        env.add_filter("from_json", from_json);
        env.add_filter("to_json", to_json);
        env.add_filter("from_yaml", from_yaml);
        env.add_filter("to_yaml", to_yaml);
        let calls = Arc::new(AtomicU32::new(0));
        let costly = move |filter: &str| {
            if calls.fetch_add(1, Ordering::Relaxed) >= COSTLY_CALLS {
                return Err(fail(filter, format!("more than {COSTLY_CALLS} bcrypt or certificate operations")));
            }
            Ok(())
        };
        let pem = |name: &'static str, out: fn(&CertificateBundle) -> Result<String, CertificateProblem>| {
            let costly = costly.clone();
            move |v: Value, password: Option<String>| {
                costly(name)?;
                out(&bundle(&v, password.as_deref(), name)?).map_err(|e| fail(name, e))
            }
        };
        env.add_filter("pem_key", pem("pem_key", |b| b.key_pem().map(|k| k.to_string())));
        env.add_filter("pem_leaf", pem("pem_leaf", |b| Ok(b.leaf_pem())));
        env.add_filter("pem_chain", pem("pem_chain", |b| Ok(b.chain_pem())));
        env.add_filter("pem_ca", pem("pem_ca", |b| Ok(b.ca_pem())));
        env.add_filter("pem_bundle", pem("pem_bundle", |b| Ok(b.pem().to_string())));
        let (key, check) = (Zeroizing::new(salt_key.to_vec()), costly.clone());
        env.add_filter("bcrypt", move |v: Value, cost: Option<u32>| {
            check("bcrypt")?;
            bcrypt_hash(&key, &bytes(&v, "bcrypt")?, cost, bcrypt::Version::TwoB, "bcrypt")
        });
        let (key, check) = (Zeroizing::new(salt_key.to_vec()), costly);
        env.add_filter("htpasswd", move |v: Value, user: String, cost: Option<u32>| {
            if user.is_empty() || user.contains(':') || user.contains('\n') {
                return Err(Error::new(ErrorKind::InvalidOperation, "htpasswd: the user name is empty or holds ':'"));
            }
            check("htpasswd")?;
            let hash = bcrypt_hash(&key, &bytes(&v, "htpasswd")?, cost, bcrypt::Version::TwoY, "htpasswd")?;
            Ok(format!("{user}:{hash}"))
        });
        env.add_function("dockerconfigjson", dockerconfigjson);

        let mut data = BTreeMap::new();
        let mut redact = Vec::new();
        for (key, value) in values {
            let text = match std::str::from_utf8(value.expose()) {
                Ok(text) => {
                    redact.push(Zeroizing::new(text.to_string()));
                    Value::from(text)
                }
                Err(_) => Value::from_bytes(value.expose().to_vec()),
            };
            data.insert(key.clone(), text);
        }
        redact.retain(|v| v.len() >= 4);
        // Longest first, so a value containing another is redacted whole.
        redact.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut context: BTreeMap<String, Value> = data.clone();
        context.insert("data".into(), Value::from(data));
        Templates { env, context: Value::from(context), redact }
    }

    /// Renders `source`; `name` says which template it is in errors (e.g. `data["config.json"]`).
    pub fn render(&self, name: &str, source: &str) -> Result<Zeroizing<String>, TemplateError> {
        let output = self
            .env
            .render_named_str(name, source, self.context.clone())
            .map(Zeroizing::new)
            .map_err(|e| self.error(name, &e))?;
        if output.len() > MAX_OUTPUT {
            return Err(TemplateError {
                template: name.into(),
                problem: format!("the output is longer than {MAX_OUTPUT} bytes"),
            });
        }
        Ok(output)
    }

    fn error(&self, name: &str, error: &Error) -> TemplateError {
        let what = match error.kind() {
            ErrorKind::UndefinedError => "undefined value (a key this resource does not have?)".to_string(),
            ErrorKind::OutOfFuel => format!("the template does too much work (more than {FUEL} steps)"),
            kind => kind.to_string(),
        };
        let mut problem = match error.detail() {
            Some(detail) if error.kind() != ErrorKind::UndefinedError => format!("{what}: {detail}"),
            _ => what,
        };
        if let Some(line) = error.line() {
            problem.push_str(&format!(" (line {line})"));
        }
        for value in &self.redact {
            if problem.contains(value.as_str()) {
                problem = problem.replace(value.as_str(), "[redacted]");
            }
        }
        TemplateError { template: name.into(), problem: problem.chars().take(500).collect() }
    }
}

fn fail(filter: &str, problem: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{filter}: {problem}"))
}

/// A value's bytes: text as UTF-8, bytes as they are.
fn bytes(value: &Value, filter: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
    match value.kind() {
        ValueKind::String => Ok(Zeroizing::new(value.as_str().unwrap_or_default().as_bytes().to_vec())),
        ValueKind::Bytes => Ok(Zeroizing::new(value.as_bytes().unwrap_or_default().to_vec())),
        ValueKind::Number | ValueKind::Bool => Ok(Zeroizing::new(value.to_string().into_bytes())),
        kind => Err(fail(filter, format!("takes text or bytes, not {kind}"))),
    }
}

fn text_or_bytes(bytes: Vec<u8>) -> Value {
    match String::from_utf8(bytes) {
        Ok(text) => Value::from(text),
        Err(e) => Value::from_bytes(e.into_bytes()),
    }
}

fn b64enc(value: Value) -> Result<String, Error> {
    Ok(STANDARD.encode(bytes(&value, "b64enc")?))
}

fn b64dec(value: Value) -> Result<Value, Error> {
    let input = bytes(&value, "b64dec")?;
    let text: Vec<u8> = input.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(&text).ok())
        .map(text_or_bytes)
        .ok_or_else(|| fail("b64dec", "the value is not base64"))
}

fn from_json(value: Value) -> Result<Value, Error> {
    let parsed: serde_json::Value =
        serde_json::from_slice(&bytes(&value, "from_json")?).map_err(|e| fail("from_json", json_problem(&e)))?;
    Ok(Value::from(minijinja::value::Serde(parsed)))
}

/// Where a JSON document is broken, without quoting it.
fn json_problem(error: &serde_json::Error) -> String {
    format!("the value is not JSON (line {}, column {})", error.line(), error.column())
}

fn to_json(value: Value, pretty: Option<bool>) -> Result<String, Error> {
    let json =
        if pretty.unwrap_or(false) { serde_json::to_string_pretty(&value) } else { serde_json::to_string(&value) };
    json.map_err(|_| fail("to_json", "the value cannot be written as JSON"))
}

fn from_yaml(value: Value) -> Result<Value, Error> {
    let parsed: serde_json::Value = serde_yaml::from_slice(&bytes(&value, "from_yaml")?).map_err(|e| {
        let at = e.location().map(|l| format!(" (line {}, column {})", l.line(), l.column())).unwrap_or_default();
        fail("from_yaml", format!("the value is not YAML{at}"))
    })?;
    Ok(Value::from(minijinja::value::Serde(parsed)))
}

fn to_yaml(value: Value) -> Result<String, Error> {
    serde_yaml::to_string(&value).map_err(|_| fail("to_yaml", "the value cannot be written as YAML"))
}

fn bundle(value: &Value, password: Option<&str>, filter: &str) -> Result<CertificateBundle, Error> {
    CertificateBundle::parse(&bytes(value, filter)?, password).map_err(|e| fail(filter, e))
}

/// A bcrypt hash whose salt is an HMAC of the value under the installation's key: the same value gives the same
/// hash (so a sync that changed nothing writes nothing), and equal passwords in two installations hash differently.
fn bcrypt_hash(
    key: &[u8],
    value: &[u8],
    cost: Option<u32>,
    version: bcrypt::Version,
    filter: &str,
) -> Result<String, Error> {
    let cost = cost.unwrap_or(DEFAULT_BCRYPT_COST);
    if !BCRYPT_COSTS.contains(&cost) {
        return Err(fail(filter, format!("the cost must be {} to {}", BCRYPT_COSTS.start(), BCRYPT_COSTS.end())));
    }
    if value.len() > 72 {
        return Err(fail(filter, "bcrypt hashes at most 72 bytes; the value is longer"));
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| fail(filter, "no salt key"))?;
    mac.update(b"vaultsync bcrypt salt\0");
    mac.update(value);
    let digest = mac.finalize().into_bytes();
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&digest[..16]);
    let parts = bcrypt::hash_with_salt(value, cost, salt).map_err(|_| fail(filter, "hashing failed"))?;
    Ok(parts.format_for_version(version))
}

/// A `.dockerconfigjson` document for one registry.
fn dockerconfigjson(registry: String, username: String, password: String) -> Result<String, Error> {
    if registry.is_empty() || username.contains(':') {
        return Err(fail("dockerconfigjson", "the registry is empty or the user name holds ':'"));
    }
    let auth = STANDARD.encode(format!("{username}:{password}"));
    let document =
        serde_json::json!({ "auths": { registry: { "username": username, "password": password, "auth": auth } } });
    Ok(document.to_string())
}

#[cfg(test)]
mod tests {
    use vaultsync_backend::SecretBytes;

    use super::*;

    fn values(pairs: &[(&str, &str)]) -> SecretData {
        pairs.iter().map(|(k, v)| (k.to_string(), SecretBytes::new(v.as_bytes().to_vec()))).collect()
    }

    fn render(pairs: &[(&str, &str)], source: &str) -> Result<String, TemplateError> {
        Templates::new(&values(pairs), b"installation-key").render("data[\"out\"]", source).map(|s| s.to_string())
    }

    #[test]
    fn values_and_filters() {
        let pairs = [("user", "app"), ("password", "s3cr3t-pass"), ("tls.crt", "x"), ("cfg", r#"{"port":5432}"#)];
        assert_eq!(render(&pairs, "{{ user }}:{{ password | b64enc }}").unwrap(), "app:czNjcjN0LXBhc3M=");
        assert_eq!(render(&pairs, r#"{{ data["tls.crt"] }}"#).unwrap(), "x");
        assert_eq!(render(&pairs, "{{ (cfg | from_json).port }}").unwrap(), "5432");
        assert_eq!(render(&pairs, "{{ 'YWJj' | b64dec }}").unwrap(), "abc");
        assert_eq!(render(&pairs, "{{ {'a': 1} | to_json }}").unwrap(), r#"{"a":1}"#);
        assert_eq!(render(&pairs, "{{ ('a: 2' | from_yaml).a }}").unwrap(), "2");
        assert_eq!(render(&pairs, "{{ {'a': [1]} | to_yaml }}").unwrap(), "a:\n- 1\n");
        let docker: serde_json::Value =
            serde_json::from_str(&render(&pairs, "{{ dockerconfigjson('ghcr.io', user, password) }}").unwrap())
                .unwrap();
        assert_eq!(docker["auths"]["ghcr.io"]["auth"], STANDARD.encode("app:s3cr3t-pass"));
    }

    #[test]
    fn bcrypt_is_verifiable_and_stable() {
        let pairs = [("password", "s3cr3t-pass")];
        let hash = render(&pairs, "{{ password | bcrypt(4) }}").unwrap();
        assert!(bcrypt::verify("s3cr3t-pass", &hash).unwrap());
        assert_eq!(hash, render(&pairs, "{{ password | bcrypt(4) }}").unwrap(), "the same value, the same hash");
        let line = render(&pairs, "{{ password | htpasswd('admin', 4) }}").unwrap();
        let (user, hash) = line.split_once(':').unwrap();
        assert_eq!(user, "admin");
        assert!(hash.starts_with("$2y$04$") && bcrypt::verify("s3cr3t-pass", hash).unwrap());
        let too_costly = render(&pairs, "{{ password | bcrypt(31) }}").unwrap_err();
        assert!(too_costly.problem.contains("cost"), "{too_costly}");
    }

    #[test]
    fn pem_filters_read_pem_and_pfx() {
        let c = crate::certificate::tests::chain(&rcgen::PKCS_ECDSA_P256_SHA256);
        let pem =
            |label: &str, der: &[u8]| pem_rfc7468::encode_string(label, pem_rfc7468::LineEnding::LF, der).unwrap();
        let source =
            [pem("CERTIFICATE", &c.root), pem("CERTIFICATE", &c.leaf), pem("PRIVATE KEY", &c.leaf_key)].concat();
        let bundle = CertificateBundle::parse(source.as_bytes(), None).unwrap();
        let pfx = STANDARD.encode(bundle.pfx("pw").unwrap());
        let pairs = [("cert", source.as_str()), ("pfx", pfx.as_str())];
        assert_eq!(render(&pairs, "{{ cert | pem_leaf }}").unwrap(), pem("CERTIFICATE", &c.leaf));
        assert_eq!(render(&pairs, "{{ pfx | pem_key('pw') }}").unwrap(), pem("PRIVATE KEY", &c.leaf_key));
        assert_eq!(render(&pairs, "{{ pfx | pem_ca('pw') }}").unwrap(), pem("CERTIFICATE", &c.root));
        let wrong = render(&pairs, "{{ pfx | pem_key('nope') }}").unwrap_err();
        assert!(wrong.problem.contains("password is wrong"), "{wrong}");
    }

    #[test]
    fn every_error_class_names_the_problem_and_never_a_value() {
        let pairs = [("password", "hunter2-secret"), ("blob", "not-json-hunter2-secret")];
        let cases = [
            ("{{ password ", "syntax error"),
            ("{{ missing_key }}", "undefined value"),
            ("{{ password | no_such_filter }}", "unknown filter"),
            ("{{ blob | from_json }}", "not JSON"),
            ("{{ password | b64dec }}", "not base64"),
            ("{{ password | pem_key }}", "neither PEM nor PKCS#12"),
            ("{% for i in range(100000) %}{% for j in range(100) %}x{% endfor %}{% endfor %}", "too much work"),
            ("{% include 'other' %}", "template not found"),
            ("{{ password + 1 }}", "invalid operation"),
        ];
        for (source, expected) in cases {
            let error = render(&pairs, source).unwrap_err();
            let text = error.to_string();
            assert!(text.contains(expected), "{source}: {text}");
            assert!(text.starts_with(r#"template data["out"]: "#), "{text}");
            assert!(!text.contains("hunter2"), "no value in {text}");
        }
    }

    #[test]
    fn costly_filters_are_counted_across_renders() {
        let templates = Templates::new(&values(&[("password", "pw")]), b"k");
        let source = "{% for i in range(10) %}{{ password | bcrypt(4) }}{% endfor %}";
        templates.render("first", source).expect("10 hashes");
        let error = templates.render("second", source).unwrap_err();
        assert!(error.problem.contains("more than 16 bcrypt or certificate operations"), "{error}");
    }

    #[test]
    fn output_is_bounded() {
        let error = render(&[], "{{ 'x' * 600000 }}").unwrap_err();
        assert!(error.problem.contains("longer than"), "{error}");
    }
}
