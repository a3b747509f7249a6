//! `dataFrom.find` that costs nothing when nothing changed: one list (every page), the names filtered by prefix,
//! regular expression, tags and the store's allowlist, and a GET only for objects whose `updated` time differs from
//! the one remembered for this VaultSecret. Values remembered come from memory; an unchanged vault costs the list
//! and no GET. `rewrite` (regular-expression replacements of the keys) applies to `extract` and `find` alike.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use k8s_openapi::jiff::Timestamp;
use regex::{Regex, RegexBuilder};
use vaultsync_api::secret::{FindRef, Rewrite};
use vaultsync_backend::{Listed, ObjectRef as VaultObject, SecretBytes};

use super::{Context, data_from::Entries, status::NotSynced};
use crate::render;

/// Compiled regular expressions may take at most this much memory (the pattern is bounded at admission too).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// What one find read last time, per object.
#[derive(Clone)]
struct Remembered {
    /// The object's `updated` time when it was read.
    updated: i64,
    /// When it was read (Unix seconds): a value read in the second it was updated may miss a later update in that
    /// same second, so it is trusted only when read later.
    read_at: i64,
    value: SecretBytes,
    version: String,
}

/// A VaultSecret (its UID) and the index of its `dataFrom` entry.
type EntryKey = (String, usize);

/// Per VaultSecret and `dataFrom` entry, what its find read last.
#[derive(Default)]
pub struct FindMemory {
    entries: Mutex<HashMap<EntryKey, BTreeMap<String, Remembered>>>,
}

impl FindMemory {
    /// Forgets a VaultSecret (deleted), by its UID.
    pub fn forget(&self, uid: &str) {
        self.entries.lock().expect("find memory lock").retain(|(owner, _), _| owner != uid);
    }

    fn get(&self, key: &EntryKey) -> BTreeMap<String, Remembered> {
        self.entries.lock().expect("find memory lock").get(key).cloned().unwrap_or_default()
    }

    fn set(&self, key: EntryKey, found: BTreeMap<String, Remembered>) {
        self.entries.lock().expect("find memory lock").insert(key, found);
    }
}

pub(super) fn regex(pattern: &str, what: &str) -> Result<Regex, NotSynced> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| NotSynced::invalid_spec(format!("{what} is not a usable regular expression: {e}")))
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
}

/// Applies `rewrite` to the keys of one `dataFrom` entry; a key that becomes invalid or collides is refused.
pub(super) fn rewrite(index: usize, rules: &[Rewrite], entries: &mut Entries) -> Result<(), NotSynced> {
    if rules.is_empty() {
        return Ok(());
    }
    let compiled: Vec<(Regex, &str)> = rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            Ok((regex(&r.regexp.source, &format!("dataFrom[{index}].rewrite[{i}]"))?, r.regexp.target.as_str()))
        })
        .collect::<Result<_, NotSynced>>()?;
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (key, _, _) in &mut entries.keys {
        let original = key.clone();
        for (pattern, target) in &compiled {
            *key = pattern.replace_all(key, *target).into_owned();
        }
        if !valid_key(key) {
            return Err(NotSynced::invalid_spec(format!(
                "dataFrom[{index}].rewrite turns the key {original:?} into {key:?}, which is not a valid Secret key"
            )));
        }
        if let Some(first) = seen.insert(key.clone(), original.clone()) {
            return Err(NotSynced::new(
                "KeyConflict",
                format!("dataFrom[{index}].rewrite turns both {first:?} and {original:?} into the key {key:?}"),
                Duration::from_secs(120),
            ));
        }
    }
    Ok(())
}

/// The key an object's name becomes: its last path segment, with characters a Secret key cannot hold as `_`.
pub(super) fn key_of(name: &str) -> String {
    name.rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-._".contains(c) { c } else { '_' })
        .collect()
}

/// The objects a find selects among those listed: the allowlist, the name expression and the tags.
pub(super) fn selected(
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

/// Runs one `dataFrom.find` for the VaultSecret `owner` (its UID), entry `index`.
pub(super) async fn find(
    ctx: &Context,
    store: &vaultsync_stores::ResolvedStore,
    find: &FindRef,
    owner: String,
    index: usize,
    max_age: Option<Duration>,
) -> Result<Entries, NotSynced> {
    let name =
        find.name.as_ref().map(|n| regex(&n.regexp, &format!("dataFrom[{index}].find.name.regexp"))).transpose()?;
    let openbao = matches!(store.backend.identity().endpoint, vaultsync_backend::Endpoint::OpenBao { .. });
    if !find.tags.is_empty() && openbao {
        return Err(NotSynced::invalid_spec(format!(
            "dataFrom[{index}].find.tags select Azure Key Vault objects; OpenBao and Vault secrets have no tags"
        )));
    }
    let listed = store.backend.list(&find.path).await;
    vaultsync_backend::audit::list(store.backend.identity(), &find.path, &listed);
    let listed = listed?;
    let now = Timestamp::now().as_second();
    let mut found = Entries::default();
    let mut names = Vec::new();
    for listed in selected(listed, find, name.as_ref(), |n| store.check_object(n).is_ok()) {
        match listed.unreadable(now) {
            Some(reason) => found.skipped.push((listed.name, reason)),
            None => names.push(listed),
        }
    }
    // An empty result (a renamed or deleted folder, a narrowed allowlist) must not empty the Secret: refuse it.
    if names.is_empty() {
        let skipped = if found.skipped.is_empty() {
            String::new()
        } else {
            format!(" ({} found cannot be read: disabled, expired or not yet valid)", found.skipped.len())
        };
        return Err(NotSynced::new(
            "NoObjectsFound",
            format!("dataFrom.find found no object under {:?} that this namespace may read{skipped}", find.path),
            Duration::from_secs(120),
        ));
    }
    let memory_key = (owner, index);
    let remembered = ctx.find_memory.get(&memory_key);
    let mut read = BTreeMap::new();
    let mut origin = BTreeMap::new();
    for listed in names {
        let key = key_of(&listed.name);
        // Two names that become one key would overwrite each other: refuse, naming both.
        if let Some(first) = origin.insert(key.clone(), listed.name.clone()) {
            return Err(NotSynced::new(
                "KeyConflict",
                format!("dataFrom.find: {first:?} and {:?} both become the Secret key {key:?}", listed.name),
                Duration::from_secs(120),
            ));
        }
        let unchanged = remembered
            .get(&listed.name)
            .filter(|r| listed.updated == Some(r.updated) && r.updated < r.read_at)
            .cloned();
        let entry = match unchanged {
            Some(entry) => entry,
            None => {
                // Changed since this find last read it: a cached read from before the change would be stale, so only
                // one made since is accepted. (An object seen for the first time takes the cache as any read does.)
                let changed = remembered.contains_key(&listed.name);
                let since_update = listed
                    .updated
                    .filter(|_| changed)
                    .map(|u| Duration::from_secs(now.saturating_sub(u).max(0) as u64));
                let age = match (max_age, since_update) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let object = VaultObject::latest(listed.name.clone());
                let secret = ctx.cache.get(store.backend.as_ref(), &object, age).await?;
                Remembered {
                    updated: listed.updated.unwrap_or(i64::MAX),
                    read_at: Timestamp::now().as_second(),
                    value: secret.value,
                    version: secret.version,
                }
            }
        };
        let value = render::decode(entry.value.expose().to_vec(), find.decoding, &listed.name)?;
        found.keys.push((key, SecretBytes::new(value), entry.version.clone()));
        read.insert(listed.name, entry);
    }
    ctx.find_memory.set(memory_key, read);
    Ok(found)
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
    }

    #[test]
    fn rewrites_apply_in_order_and_refuse_collisions_and_bad_keys() {
        let rule = |source: &str, target: &str| Rewrite {
            regexp: vaultsync_api::secret::RewriteRegexp { source: source.into(), target: target.into() },
        };
        let entries = |keys: &[&str]| Entries {
            keys: keys.iter().map(|k| (k.to_string(), SecretBytes::new(vec![]), "v".to_string())).collect(),
            skipped: vec![],
        };
        let mut e = entries(&["app-db-password", "app-db-user"]);
        rewrite(0, &[rule("^app-", ""), rule("-", "_")], &mut e).unwrap();
        assert_eq!(e.keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>(), ["db_password", "db_user"]);
        let mut e = entries(&["a-x", "b-x"]);
        assert_eq!(rewrite(0, &[rule("^.-", "")], &mut e).unwrap_err().reason, "KeyConflict");
        let mut e = entries(&["a"]);
        assert_eq!(rewrite(0, &[rule("a", "/")], &mut e).unwrap_err().reason, "InvalidSpec");
    }
}
