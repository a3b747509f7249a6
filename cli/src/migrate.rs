//! `migrate -f FILE`: resources of other secret operators converted into vaultsync's — External Secrets Operator
//! (`ExternalSecret`, `SecretStore`, `ClusterSecretStore`; Azure Key Vault and HashiCorp Vault providers), akv2k8s
//! (`AzureKeyVaultSecret`) and the Secrets Store CSI Driver (`SecretProviderClass` for the Azure provider).
//!
//! No silent drops: every field of an input is either carried over, or named in a note with the reason. Fields a
//! converter does not know are found by walking the input after it ran ([`Source::unread`]), so a field added by a
//! newer version of a peer is reported too.

mod akv2k8s;
mod eso;
mod spc;

use std::{collections::BTreeSet, path::PathBuf};

use anyhow::Context as _;
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::{Output, read_input};

/// The text a placeholder starts with: a value the input does not hold and the user must fill in.
pub const PLACEHOLDER: &str = "REPLACE-";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The resources (YAML, several documents or a `List`; `-` for standard input).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
}

/// A field not carried over, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `Kind/namespace/name` of the input resource.
    pub resource: String,
    /// The field's path in the input (`spec.data[0].remoteRef.conversionStrategy`).
    pub field: String,
    pub why: String,
}

/// What a migration made.
#[derive(Debug, Default)]
pub struct Migration {
    pub resources: Vec<Value>,
    pub notes: Vec<Note>,
}

pub fn run(args: &Args) -> anyhow::Result<Output> {
    let migration = migrate(&read_input(&args.file)?)?;
    anyhow::ensure!(
        !migration.resources.is_empty() || !migration.notes.is_empty(),
        "{} holds no resource migrate knows (ExternalSecret, SecretStore, ClusterSecretStore, AzureKeyVaultSecret, \
         SecretProviderClass)",
        args.file.display()
    );
    let mut text = String::new();
    for resource in &migration.resources {
        text.push_str("---\n");
        text.push_str(&serde_yaml::to_string(resource)?);
    }
    text.push_str(&format!("# Not carried over: {} field(s).\n", migration.notes.len()));
    for note in &migration.notes {
        text.push_str(&format!("# {}: {}: {}\n", note.resource, note.field, note.why));
    }
    let placeholders = text.lines().filter(|l| !l.starts_with('#') && l.contains(PLACEHOLDER)).count();
    if placeholders > 0 {
        text.push_str(&format!("# {placeholders} value(s) start with {PLACEHOLDER}: fill them in before applying.\n"));
    }
    Ok(Output { text, code: 0 })
}

/// Converts every resource in `text` (YAML documents, `List`s).
pub fn migrate(text: &str) -> anyhow::Result<Migration> {
    let mut inputs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("parsing the input")?;
        match value.get("kind").and_then(Value::as_str) {
            Some("List") => inputs.extend(value["items"].as_array().cloned().unwrap_or_default()),
            Some(_) => inputs.push(value),
            None => {}
        }
    }
    let mut migration = Migration::default();
    for input in &inputs {
        let kind = input["kind"].as_str().unwrap_or_default();
        let api = input["apiVersion"].as_str().unwrap_or_default();
        let group = api.split('/').next().unwrap_or_default();
        let mut source = Source::new(input);
        match (group, kind) {
            ("external-secrets.io", "ExternalSecret") => eso::external_secret(&mut source, &mut migration),
            ("external-secrets.io", "SecretStore" | "ClusterSecretStore") => {
                eso::store(&mut source, &mut migration, &inputs)
            }
            ("spv.no", "AzureKeyVaultSecret") => akv2k8s::secret(&mut source, &mut migration),
            ("secrets-store.csi.x-k8s.io", "SecretProviderClass") => spc::provider_class(&mut source, &mut migration),
            // Read by the converters (a service account's client ID), not converted themselves.
            ("", "ServiceAccount") | ("v1", "ServiceAccount") => continue,
            _ => {
                migration.notes.push(Note {
                    resource: source.id.clone(),
                    field: "(whole resource)".into(),
                    why: format!("{api} {kind} is not something migrate converts"),
                });
                continue;
            }
        }
        let unread = source.unread();
        migration.notes.extend(unread.into_iter().map(|field| Note {
            resource: source.id.clone(),
            field,
            why: "not understood by migrate, so not carried over; check whether it matters".into(),
        }));
    }
    Ok(migration)
}

/// An input resource, remembering which fields were read (carried over or explained in a note).
pub(crate) struct Source<'a> {
    pub value: &'a Value,
    /// `Kind/namespace/name` or `Kind/name`.
    pub id: String,
    pub namespace: Option<String>,
    pub name: String,
    read: BTreeSet<String>,
}

impl<'a> Source<'a> {
    fn new(value: &'a Value) -> Self {
        let name = value["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let namespace = value["metadata"]["namespace"].as_str().map(str::to_string);
        let kind = value["kind"].as_str().unwrap_or_default();
        let id = match &namespace {
            Some(ns) => format!("{kind}/{ns}/{name}"),
            None => format!("{kind}/{name}"),
        };
        let mut read = BTreeSet::new();
        // Identity and bookkeeping fields: the output gets its own.
        for path in ["apiVersion", "kind", "status", "metadata"] {
            read.insert(path.to_string());
        }
        Source { value, id, namespace, name, read }
    }

    /// The field at `path` (`spec.data[0].remoteRef.key`), marked as read.
    pub fn get(&mut self, path: &str) -> Option<&'a Value> {
        self.read.insert(path.to_string());
        let mut at = self.value;
        for part in split(path) {
            at = match part {
                Part::Key(key) => at.get(key)?,
                Part::Index(i) => at.get(i)?,
            };
        }
        (!at.is_null()).then_some(at)
    }

    pub fn str(&mut self, path: &str) -> Option<&'a str> {
        self.get(path).and_then(Value::as_str)
    }

    /// The length of the list at `path` (0 when absent), without marking the list itself read.
    pub fn len(&self, path: &str) -> usize {
        let mut at = self.value;
        for part in split(path) {
            at = match part {
                Part::Key(key) => &at[key],
                Part::Index(i) => &at[i],
            };
        }
        at.as_array().map_or(0, Vec::len)
    }

    /// A note for the field at `path` when it is set (and marks it read).
    pub fn drop_field(&mut self, migration: &mut Migration, path: &str, why: &str) {
        if self.get(path).is_some() {
            self.note(migration, path, why);
        }
    }

    /// A note for `path` (set or not), marked read.
    pub fn note(&mut self, migration: &mut Migration, path: &str, why: &str) {
        self.read.insert(path.to_string());
        migration.notes.push(Note { resource: self.id.clone(), field: path.into(), why: why.into() });
    }

    /// The leaf fields (and empty objects) under the resource no converter read.
    fn unread(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(self.value, String::new(), &mut out);
        out
    }

    fn walk(&self, value: &Value, path: String, out: &mut Vec<String>) {
        if !path.is_empty() && self.read.contains(&path) {
            return;
        }
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let child_path = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                    self.walk(child, child_path, out);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                for (i, child) in items.iter().enumerate() {
                    self.walk(child, format!("{path}[{i}]"), out);
                }
            }
            Value::Null => {}
            _ => out.push(path),
        }
    }

    /// The output's metadata: the input's name and namespace, and its labels.
    pub fn metadata(&self, name: &str) -> Value {
        let mut metadata = json!({ "name": name });
        if let Some(ns) = &self.namespace {
            metadata["namespace"] = json!(ns);
        }
        if let Some(labels) = self.value["metadata"].get("labels").filter(|l| l.is_object()) {
            metadata["labels"] = labels.clone();
        }
        metadata
    }
}

enum Part<'p> {
    Key(&'p str),
    Index(usize),
}

fn split(path: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    for segment in path.split('.') {
        let (key, indexes) = segment.split_once('[').map_or((segment, ""), |(k, rest)| (k, rest));
        if !key.is_empty() {
            parts.push(Part::Key(key));
        }
        for index in indexes.split('[').filter(|s| !s.is_empty()) {
            parts.push(Part::Index(index.trim_end_matches(']').parse().unwrap_or(usize::MAX)));
        }
    }
    parts
}

/// A refresh interval as vaultsync accepts it (`0`, or 10s to 8760h); a shorter one is raised, with a note.
pub(crate) fn refresh_interval(source: &mut Source<'_>, migration: &mut Migration, path: &str) -> Option<String> {
    let text = source.str(path)?;
    let parsed = vaultsync_operator::args::parse_duration(text).ok();
    match parsed {
        Some(d) if d.is_zero() => Some("0".into()),
        Some(d) if d < std::time::Duration::from_secs(10) => {
            source.note(migration, path, &format!("{text} is below vaultsync's shortest interval; 10s is used"));
            Some("10s".into())
        }
        Some(d) if d > std::time::Duration::from_secs(8760 * 3600) => {
            source.note(migration, path, &format!("{text} is above vaultsync's longest interval; 8760h is used"));
            Some("8760h".into())
        }
        Some(_) => Some(text.into()),
        None => {
            source.note(
                migration,
                path,
                &format!("{text:?} is not a duration vaultsync reads; its default 1h is used"),
            );
            None
        }
    }
}

/// vaultsync's resource of `kind` with `metadata` and `spec`.
pub(crate) fn resource(kind: &str, metadata: Value, spec: Value) -> Value {
    json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unread_fields_are_reported_by_path() {
        let value = json!({ "kind": "X", "metadata": { "name": "a" },
            "spec": { "known": 1, "list": [{ "a": 1, "b": { "c": true } }], "empty": {} } });
        let mut source = Source::new(&value);
        assert_eq!(source.get("spec.list[0].a"), Some(&json!(1)));
        assert_eq!(source.get("spec.known"), Some(&json!(1)));
        assert_eq!(source.unread(), vec!["spec.empty".to_string(), "spec.list[0].b.c".to_string()]);
    }
}
