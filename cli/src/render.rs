//! `render -f VAULTSECRET --values VALUES`: the Secret a VaultSecret would make, rendered by the operator's own code
//! (`property`, decoding, formats, `dataFrom`, templates) from example values, without a vault or a cluster.

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::{Map, Value, json};
use vaultsync_api::VaultSecret;
use vaultsync_operator::vaultsecret::offline::{self, Values};

use crate::{Output, read_input};

pub const EXAMPLES: &str = "Examples:\n  kubectl vaultsync render -f vaultsecret.yaml --values values.yaml\n  \
kubectl vaultsync render -f vaultsecret.yaml --values values.yaml --string-data\n\n\
The values file names example vault objects, and the ConfigMaps and Secrets the VaultSecret reads:\n\
  objects:\n    db-password: s3cret                        # a secret's value as text\n    \
db-config: '{\"user\": \"app\", \"port\": 5432}'\n    \
tls-cert: { base64: MIIK..., contentType: application/x-pkcs12, version: v1 }\n  \
configMaps:\n    templates: { config.yaml: 'user: {{ user }}' }\n  \
secrets:\n    pfx-password: { password: example }\n\n\
Exit code 1 and the reason the operator would report when a render fails.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VaultSecret (YAML; `-` for standard input; every VaultSecret in the file is rendered).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// Example values (YAML).
    #[arg(long)]
    pub values: PathBuf,
    /// Print text values as `stringData` (binary ones, and words YAML 1.1 reads as booleans, stay in `data`).
    #[arg(long)]
    pub string_data: bool,
}

pub fn run(args: &Args) -> anyhow::Result<Output> {
    let values: Values = serde_yaml::from_str(&read_input(&args.values)?)
        .with_context(|| format!("reading the values in {}", args.values.display()))?;
    let text = read_input(&args.file)?;
    let mut out = Output::default();
    let mut rendered = 0;
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).context("parsing the VaultSecret")?;
        if value.get("kind").and_then(Value::as_str) != Some("VaultSecret") {
            continue;
        }
        let vs: VaultSecret = serde_json::from_value(value).context("reading the VaultSecret")?;
        rendered += 1;
        match offline::render(&vs, &values) {
            Ok(secret) => {
                out.text.push_str("---\n");
                out.text.push_str(&serde_yaml::to_string(&manifest(&vs, secret, args.string_data))?);
            }
            Err(failed) => {
                let name = vs.metadata.name.clone().unwrap_or_default();
                out.text.push_str(&format!("# VaultSecret {name} does not render: {failed}\n"));
                out.code = 1;
            }
        }
    }
    anyhow::ensure!(rendered > 0, "{} holds no VaultSecret", args.file.display());
    Ok(out)
}

/// Words a YAML 1.1 reader (kubectl's) takes for a boolean or null: as `stringData` they would not be strings, so
/// they stay in `data`.
fn yaml_11_scalar(text: &str) -> bool {
    const WORDS: &[&str] = &["y", "yes", "n", "no", "on", "off", "true", "false", "null", "~", ""];
    WORDS.iter().any(|w| text.eq_ignore_ascii_case(w))
}

fn manifest(vs: &VaultSecret, secret: offline::Rendered, string_data: bool) -> Value {
    let mut data = Map::new();
    let mut text = Map::new();
    for (key, value) in secret.data {
        match std::str::from_utf8(value.expose()) {
            Ok(s) if string_data && !yaml_11_scalar(s) => {
                text.insert(key, json!(s));
            }
            _ => {
                data.insert(key, json!(base64::engine::general_purpose::STANDARD.encode(value.expose())));
            }
        }
    }
    let mut metadata = json!({ "name": secret.name });
    if let Some(ns) = &vs.metadata.namespace {
        metadata["namespace"] = json!(ns);
    }
    if !secret.labels.is_empty() {
        metadata["labels"] = json!(secret.labels);
    }
    if !secret.annotations.is_empty() {
        metadata["annotations"] = json!(secret.annotations);
    }
    let mut manifest = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": metadata, "type": secret.type_ });
    if !data.is_empty() {
        manifest["data"] = Value::Object(data);
    }
    if !text.is_empty() {
        manifest["stringData"] = Value::Object(text);
    }
    manifest
}
