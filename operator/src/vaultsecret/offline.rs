//! A VaultSecret's Secret rendered from example values, without a vault or an apiserver (`kubectl vaultsync
//! render`): the same `property`, decoding, formats, certificate split, `dataFrom` and templates a sync uses, so a
//! template is checked before it is applied. What a sync reads elsewhere (vault objects, ConfigMap templates,
//! password Secrets) comes from [`Values`].

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::Deserialize;
use vaultsync_api::{VaultSecret, secret::TemplateFrom};
use vaultsync_backend::{Attributes, FetchedSecret, Listed, SecretBytes};
use vaultsync_render::object;

use vaultsync_stores::data_from as rules;

use super::{data_from, find, objects, status::NotSynced, templating};
use crate::render::SecretData;

/// The salt key of offline renders: bcrypt salts (htpasswd helpers) differ from the cluster's, values do not.
const OFFLINE_SALT_KEY: &[u8] = b"vaultsync offline render";

/// Example values: vault objects by name, ConfigMaps (templates) and Secrets (passwords) by name and key.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    #[serde(default)]
    pub objects: BTreeMap<String, ObjectValue>,
    #[serde(default)]
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
}

/// One vault object: its value as text, or in full.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum ObjectValue {
    Text(String),
    Full(FullObject),
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FullObject {
    /// The value as text.
    #[serde(default)]
    pub value: Option<String>,
    /// The value as Base64 (binary values: a PFX, a certificate's DER).
    #[serde(default)]
    pub base64: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    #[serde(default)]
    pub version: Option<String>,
    /// Key Vault tags, for `dataFrom.find.tags`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The Secret a sync would write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub name: String,
    pub type_: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub data: SecretData,
}

/// Why a render failed: the reason and message the VaultSecret's `Ready` condition would show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub reason: &'static str,
    pub message: String,
}

impl From<NotSynced> for Failed {
    fn from(n: NotSynced) -> Self {
        Failed { reason: n.reason, message: n.message }
    }
}

impl From<rules::Problem> for Failed {
    fn from(problem: rules::Problem) -> Self {
        Failed { reason: problem.reason, message: problem.message }
    }
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}

fn missing(what: String) -> Failed {
    Failed { reason: "NotFound", message: format!("{what} is not in the values file") }
}

impl Values {
    fn fetched(&self, name: &str, version: Option<&str>) -> Result<FetchedSecret, Failed> {
        let object = self.objects.get(name).ok_or_else(|| missing(format!("object {name:?}")))?;
        let (value, content_type, stored_version) = match object {
            ObjectValue::Text(text) => (text.as_bytes().to_vec(), None, None),
            ObjectValue::Full(full) => {
                let value = match (&full.value, &full.base64) {
                    (Some(text), None) => text.as_bytes().to_vec(),
                    (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                        .decode(encoded.trim())
                        .map_err(|e| invalid(format!("object {name:?}: base64 is not valid Base64: {e}")))?,
                    _ => return Err(invalid(format!("object {name:?}: set exactly one of value and base64"))),
                };
                (value, full.content_type.clone(), full.version.clone())
            }
        };
        let version = version.map(str::to_string).or(stored_version).unwrap_or_else(|| "example".into());
        Ok(FetchedSecret { value: SecretBytes::new(value), version, content_type, attributes: Attributes::default() })
    }

    fn listed(&self) -> Vec<Listed> {
        let tags = |v: &ObjectValue| match v {
            ObjectValue::Full(full) => full.tags.clone(),
            ObjectValue::Text(_) => BTreeMap::new(),
        };
        self.objects
            .iter()
            .map(|(name, value)| Listed {
                name: name.clone(),
                enabled: true,
                not_before: None,
                expires: None,
                updated: None,
                tags: tags(value),
            })
            .collect()
    }

    fn password(&self, reference: Option<&vaultsync_api::secret::SecretKeyRef>) -> Result<Option<String>, Failed> {
        let Some(reference) = reference else { return Ok(None) };
        let value = self.secrets.get(&reference.name).and_then(|s| s.get(&reference.key));
        let value = value.ok_or_else(|| missing(format!("Secret {} (key {})", reference.name, reference.key)))?;
        Ok(Some(value.trim_end_matches(['\r', '\n']).to_string()))
    }

    fn template_from(&self, index: usize, from: &TemplateFrom) -> Result<(String, String, String), Failed> {
        let name = templating::template_from_name(index, from);
        let source = self.config_maps.get(&from.config_map.name).and_then(|c| c.get(&from.config_map.key));
        let source = source.ok_or_else(|| missing(name.clone()))?;
        Ok((name, from.secret_key.clone(), source.clone()))
    }
}

fn invalid(message: String) -> Failed {
    Failed { reason: "InvalidValue", message }
}

/// Renders the Secret `vs` would make from `values`, as a sync does (no vault, no apiserver).
pub fn render(vs: &VaultSecret, values: &Values) -> Result<Rendered, Failed> {
    let spec = &vs.spec;
    let mut data = SecretData::new();
    for (index, source) in spec.data_from.iter().enumerate() {
        let mut entries = data_from::Entries::default();
        if let Some(extract) = &source.extract {
            let fetched = values.fetched(&extract.name, extract.version.as_deref())?;
            let fields = rules::extract_fields(fetched.value.expose(), &extract.name)?;
            entries.keys = fields.into_iter().map(|(k, v)| (k, SecretBytes::new(v), fetched.version.clone())).collect();
        } else if let Some(found) = &source.find {
            let name = rules::find_name(found, index, false)?;
            let listed: Vec<Listed> =
                values.listed().into_iter().filter(|l| l.name.starts_with(found.path.as_str())).collect();
            let selected = rules::selected(listed, found, name.as_ref(), |_| true);
            let rules::Readable { names, .. } =
                rules::readable(selected, found, k8s_openapi::jiff::Timestamp::now().as_second())?;
            let keys = rules::find_keys(&names)?;
            for (listed, key) in names.iter().zip(keys) {
                let fetched = values.fetched(&listed.name, None)?;
                let value = vaultsync_render::decode(
                    fetched.value.expose().to_vec(),
                    crate::render::decoding(found.decoding),
                    &listed.name,
                )
                .map_err(NotSynced::from)?;
                entries.keys.push((key, SecretBytes::new(value), fetched.version));
            }
        }
        find::rewrite(index, &source.rewrite, &mut entries)?;
        data.extend(entries.keys.into_iter().map(|(k, v, _)| (k, v)));
    }
    let split_tls = spec.target.type_.as_deref() == Some(objects::TLS_TYPE);
    let names_tls_key = spec.data.iter().any(|i| i.secret_key == "tls.key");
    for item in &spec.data {
        let remote = &item.remote_ref;
        let fetched = values.fetched(&remote.name, remote.version.as_deref())?;
        objects::check_usable(&objects::vault_object(remote), &fetched)?;
        let password = values.password(remote.password_secret_ref.as_deref())?;
        if split_tls && item.secret_key == "tls.crt" && objects::is_certificate(item, &fetched) {
            let (chain, key, _) =
                objects::split_bundle(remote, &fetched, password.as_deref()).map_err(NotSynced::from)?;
            data.insert("tls.crt".into(), SecretBytes::new(chain.into_bytes()));
            if !names_tls_key {
                data.insert("tls.key".into(), SecretBytes::new(key.as_bytes().to_vec()));
            }
            continue;
        }
        let output = match remote.pfx_password.as_ref() {
            Some(p) if p.secret_ref.is_some() => values.password(p.secret_ref.as_ref())?,
            Some(p) => {
                let templates = vaultsync_render::Templates::new(&data, OFFLINE_SALT_KEY);
                let name = format!("data[{:?}].remoteRef.pfxPassword.template", item.secret_key);
                let source = p.template.clone().unwrap_or_default();
                Some(
                    templates
                        .render(&name, &source)
                        .map_err(|e| NotSynced::from(vaultsync_render::RenderError::from(e)))?
                        .to_string(),
                )
            }
            None => None,
        };
        let spec = objects::object_spec(remote, password.as_deref(), output.as_deref());
        let rendered = object::render_object(&fetched, &spec).map_err(NotSynced::from)?;
        data.insert(item.secret_key.clone(), rendered.value);
    }
    let mut meta = templating::SecretMeta::default();
    if let Some(template) = &spec.target.template {
        let mut sources = templating::inline_sources(template);
        for (index, from) in template.template_from.iter().enumerate() {
            sources.push(values.template_from(index, from)?);
        }
        let (out, _, made) = templating::render_all(template, sources, data, BTreeMap::new(), OFFLINE_SALT_KEY)?;
        data = out;
        meta = made;
    }
    let type_ = meta.type_.or(spec.target.type_.clone()).unwrap_or_else(|| "Opaque".into());
    objects::check_tls(Some(&type_), &data)?;
    let mut labels = spec.target.labels.clone();
    labels.extend(meta.labels);
    let mut annotations = spec.target.annotations.clone();
    annotations.extend(meta.annotations);
    let name = spec.target.name.clone().or(vs.metadata.name.clone()).unwrap_or_default();
    Ok(Rendered { name, type_, labels, annotations, data })
}
