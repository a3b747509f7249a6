//! `dataFrom`'s rules, shared by the operator (Secret keys) and the CSI provider (files): the fields of a JSON object
//! (`extract`), which listed objects a `find` selects and the keys their names become, and `rewrite`. Each caller
//! reads the objects its own way (the operator remembers what a find read per VaultSecret; a mount reads through the
//! cache with the pod's identity). Problems name the entry and the key or object, never a value.

use std::{collections::BTreeMap, time::Duration};

use regex::{Regex, RegexBuilder};
use vaultsync_api::secret::{FindRef, Rewrite};
use vaultsync_backend::Listed;

/// Compiled regular expressions may take at most this much memory (the pattern is bounded at admission too).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a `dataFrom` entry gives no keys: a condition reason and a message.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("{message}")]
pub struct Problem {
    /// `InvalidSpec`, `InvalidValue`, `KeyConflict` or `NoObjectsFound`.
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self { reason, message: message.into() }
    }

    /// How long before trying again: a spec does not change by itself, a vault may.
    pub fn retry(&self) -> Duration {
        Duration::from_secs(if self.reason == "InvalidSpec" { 300 } else { 120 })
    }
}

/// A regular expression of the spec (`what` names where), with bounded memory.
pub fn regex(pattern: &str, what: &str) -> Result<Regex, Problem> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| Problem::new("InvalidSpec", format!("{what} is not a usable regular expression: {e}")))
}

/// Whether `key` may be a Secret key (and so a file name of a mounted VaultSecret).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Every field of the JSON object `value` of `object`, as keys and values (a string's text, else compact JSON).
pub fn extract_fields(value: &[u8], object: &str) -> Result<Vec<(String, Vec<u8>)>, Problem> {
    let fields: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(value).map_err(|_| {
        Problem::new("InvalidValue", format!("{object} is not a JSON object, so its fields cannot be extracted"))
    })?;
    let mut out = Vec::new();
    for (field, value) in fields {
        if !valid_key(&field) {
            return Err(Problem::new(
                "InvalidValue",
                format!("{object} has the field {field:?}, which is not a valid Secret key"),
            ));
        }
        let bytes = match value {
            serde_json::Value::String(text) => text.into_bytes(),
            other => other.to_string().into_bytes(),
        };
        out.push((field, bytes));
    }
    Ok(out)
}

/// Applies `rules` (entry `index`'s `rewrite`) to `keys` in place; a key that becomes invalid or collides is refused.
pub fn rewrite<'a>(index: usize, rules: &[Rewrite], keys: impl Iterator<Item = &'a mut String>) -> Result<(), Problem> {
    if rules.is_empty() {
        return Ok(());
    }
    let compiled: Vec<(Regex, &str)> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok((regex(&r.regexp.source, &format!("dataFrom[{index}].rewrite[{i}]"))?, r.regexp.target.as_str()))
        })
        .collect::<Result<_, Problem>>()?;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for key in keys {
        let original = key.clone();
        for (pattern, target) in &compiled {
            *key = pattern.replace_all(key, *target).into_owned();
        }
        if !valid_key(key) {
            return Err(Problem::new(
                "InvalidSpec",
                format!(
                    "dataFrom[{index}].rewrite turns the key {original:?} into {key:?}, which is not a valid Secret key"
                ),
            ));
        }
        if let Some(first) = seen.insert(key.clone(), original.clone()) {
            return Err(Problem::new(
                "KeyConflict",
                format!("dataFrom[{index}].rewrite turns both {first:?} and {original:?} into the key {key:?}"),
            ));
        }
    }
    Ok(())
}

/// A key entry `index` gives that an earlier `dataFrom` entry gave too: refused, as which value wins would be an
/// accident of order.
pub fn earlier_entry_conflict(index: usize, key: &str) -> Problem {
    Problem::new(
        "KeyConflict",
        format!("dataFrom[{index}] gives the key {key:?}, which an earlier dataFrom entry gives too"),
    )
}

/// The key an object's name becomes: its last path segment, with characters a Secret key cannot hold as `_`.
pub fn key_of(name: &str) -> String {
    name.rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' })
        .collect()
}

/// Entry `index`'s find checked against the store: its name expression, compiled; tags only where objects have them.
pub fn find_name(find: &FindRef, index: usize, openbao: bool) -> Result<Option<Regex>, Problem> {
    if !find.tags.is_empty() && openbao {
        return Err(Problem::new(
            "InvalidSpec",
            format!(
                "dataFrom[{index}].find.tags select Azure Key Vault objects; OpenBao and Vault secrets have no tags"
            ),
        ));
    }
    find.name.as_ref().map(|n| regex(&n.regexp, &format!("dataFrom[{index}].find.name.regexp"))).transpose()
}

/// The objects a find selects among those listed: the allowlist, the name expression and the tags.
pub fn selected(
    listed: Vec<Listed>,
    find: &FindRef,
    name: Option<&Regex>,
    allowed: impl Fn(&str) -> bool,
) -> Vec<Listed> {
    listed
        .into_iter()
        .filter(|l| allowed(&l.name))
        .filter(|l| name.is_none_or(|re| re.is_match(&l.name)))
        .filter(|l| find.tags.iter().all(|(k, v)| l.tags.get(k) == Some(v)))
        .collect()
}

/// What a find may read: the objects, and those it skips with the reason (`Disabled`, `Expired`, `NotYetValid`).
pub struct Readable {
    pub names: Vec<Listed>,
    pub skipped: Vec<(String, &'static str)>,
}

/// The readable objects among those a find selected, and those that cannot be read now (disabled, expired, not yet
/// valid) with the reason; none readable is refused (a renamed folder or a narrowed allowlist must not empty a Secret
/// or a volume).
pub fn readable(selected: Vec<Listed>, find: &FindRef, now: i64) -> Result<Readable, Problem> {
    let mut names = Vec::new();
    let mut skipped = Vec::new();
    for listed in selected {
        match listed.unreadable(now) {
            Some(reason) => skipped.push((listed.name, reason)),
            None => names.push(listed),
        }
    }
    if names.is_empty() {
        let skipped = if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({} found cannot be read: disabled, expired or not yet valid)", skipped.len())
        };
        return Err(Problem::new(
            "NoObjectsFound",
            format!("dataFrom.find found no object under {:?} that this namespace may read{skipped}", find.path),
        ));
    }
    Ok(Readable { names, skipped })
}

/// The key of each object a find reads; two names that become one key are refused, naming both.
pub fn find_keys(names: &[Listed]) -> Result<Vec<String>, Problem> {
    let mut origin: BTreeMap<String, &str> = BTreeMap::new();
    let mut keys = Vec::new();
    for listed in names {
        let key = key_of(&listed.name);
        if let Some(first) = origin.insert(key.clone(), &listed.name) {
            return Err(Problem::new(
                "KeyConflict",
                format!("dataFrom.find: {first:?} and {:?} both become the Secret key {key:?}", listed.name),
            ));
        }
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(name: &str, tags: &[(&str, &str)]) -> Listed {
        Listed {
            name: name.into(),
            enabled: true,
            not_before: None,
            expires: None,
            updated: Some(1),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    #[test]
    fn names_tags_and_allowlists_select() {
        let all = vec![
            listed("app-db", &[("env", "prod"), ("team", "a")]),
            listed("app-cache", &[("env", "dev")]),
            listed("other-db", &[("env", "prod")]),
            listed("app-secret", &[("env", "prod")]),
        ];
        let find = FindRef {
            path: String::new(),
            name: None,
            tags: [("env".to_string(), "prod".to_string())].into(),
            decoding: Default::default(),
        };
        let name = regex("^app-", "test").unwrap();
        let names = |l: Vec<Listed>| l.into_iter().map(|l| l.name).collect::<Vec<_>>();
        assert_eq!(names(selected(all.clone(), &find, Some(&name), |_| true)), ["app-db", "app-secret"]);
        assert_eq!(names(selected(all, &find, Some(&name), |n| n != "app-secret")), ["app-db"]);
        assert!(regex("(unclosed", "x").is_err());
        assert!(regex("a{1000}{1000}", "x").is_err(), "a regex too large to compile is refused");
        assert_eq!(find_name(&find, 0, true).unwrap_err().reason, "InvalidSpec");
        let clash = [listed("a/x y", &[]), listed("b/x_y", &[])];
        assert_eq!(find_keys(&clash).unwrap_err().reason, "KeyConflict");
    }

    #[test]
    fn rewrites_apply_in_order_and_refuse_collisions_and_bad_keys() {
        let rule = |source: &str, target: &str| Rewrite {
            regexp: vaultsync_api::secret::RewriteRegexp { source: source.into(), target: target.into() },
        };
        let run = |keys: &[&str], rules: &[Rewrite]| {
            let mut keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
            rewrite(0, rules, keys.iter_mut()).map(|()| keys)
        };
        assert_eq!(
            run(&["app-db-password", "app-db-user"], &[rule("^app-", ""), rule("-", "_")]).unwrap(),
            ["db_password", "db_user"]
        );
        assert_eq!(run(&["a-x", "b-x"], &[rule("^.-", "")]).unwrap_err().reason, "KeyConflict");
        assert_eq!(run(&["a"], &[rule("a", "/")]).unwrap_err().reason, "InvalidSpec");
    }

    #[test]
    fn fields_of_a_json_object() {
        let fields = extract_fields(br#"{"user":"app","port":5432}"#, "db").unwrap();
        assert_eq!(fields, [("port".to_string(), b"5432".to_vec()), ("user".to_string(), b"app".to_vec())]);
        assert_eq!(extract_fields(b"not json", "db").unwrap_err().reason, "InvalidValue");
        assert!(extract_fields(br#"{"a b":"x"}"#, "db").unwrap_err().message.contains("a b"));
    }
}
