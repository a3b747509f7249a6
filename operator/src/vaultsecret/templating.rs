//! `target.template`: the Secret's data, labels, annotations and type made by templates (inline, or kept in a
//! ConfigMap of the namespace) over this VaultSecret's own values and nothing else. A template that fails leaves the
//! Secret as it was: `Ready=False`, reason `TemplateError`, a message naming the template, the key and the problem
//! (never a value), and a Warning Event.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use vaultsync_api::secret::{MergePolicy, SecretTemplate};
use vaultsync_backend::SecretBytes;
use vaultsync_render::{TemplateError, Templates};

use super::{Sync, status::NotSynced};
use crate::render::SecretData;

/// The longest template a ConfigMap may hold for vaultsync (inline templates are bounded at admission alike).
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// The version shown in `status.versions` for a key a template made (it depends on several objects).
pub const TEMPLATE_VERSION: &str = "template";

/// What templates make besides data; empty when there is no template.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SecretMeta {
    pub type_: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

fn failed(error: TemplateError) -> NotSynced {
    vaultsync_render::RenderError::from(error).into()
}

fn template_error(template: String, problem: impl Into<String>) -> NotSynced {
    failed(TemplateError { template, problem: problem.into() })
}

/// A label value as Kubernetes accepts it: at most 63 characters, alphanumerics with `-`, `_` and `.` inside.
fn valid_label_value(value: &str) -> bool {
    let inner = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(inner)
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

/// A Secret type as Kubernetes accepts it.
fn valid_type(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
}

impl Sync<'_> {
    /// Renders the templates over `data` (the fetched and formatted values): the Secret's new data with the version
    /// behind each key, and what the templates make besides. Without a template, `data` as it is.
    pub(super) async fn apply_templates(
        &self,
        data: SecretData,
        versions: BTreeMap<String, String>,
    ) -> Result<(SecretData, BTreeMap<String, String>, SecretMeta), NotSynced> {
        let Some(template) = &self.vs.spec.target.template else {
            return Ok((data, versions, SecretMeta::default()));
        };
        let sources = self.template_sources(template).await?;
        let (template, key) = (template.clone(), self.ctx.hmac_key.clone());
        // Off the async threads: bcrypt and certificate filters are CPU work (bounded per sync).
        tokio::task::spawn_blocking(move || render_all(&template, sources, data, versions, &key))
            .await
            .map_err(|_| template_error("target.template".into(), "rendering stopped unexpectedly"))?
    }

    /// The data templates: (name for messages, Secret key, source), inline ones then those from ConfigMaps.
    async fn template_sources(&self, template: &SecretTemplate) -> Result<Vec<(String, String, String)>, NotSynced> {
        let mut sources = inline_sources(template);
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        for (index, from) in template.template_from.iter().enumerate() {
            let reference = &from.config_map;
            let name = template_from_name(index, from);
            let config_map = api.get_opt(&reference.name).await.map_err(|e| {
                NotSynced::apiserver("TemplateError", &format!("reading ConfigMap {}", reference.name), &e)
            })?;
            let Some(config_map) = config_map else {
                return Err(template_error(name, "the ConfigMap does not exist"));
            };
            let Some(source) = config_map.data.and_then(|mut d| d.remove(&reference.key)) else {
                return Err(template_error(name, "the ConfigMap has no such key"));
            };
            if source.len() > MAX_TEMPLATE_BYTES {
                return Err(template_error(name, format!("the template is longer than {MAX_TEMPLATE_BYTES} bytes")));
            }
            sources.push((name, from.secret_key.clone(), source));
        }
        Ok(sources)
    }
}

/// The inline data templates: (name for messages, Secret key, source).
pub(super) fn inline_sources(template: &SecretTemplate) -> Vec<(String, String, String)> {
    template
        .data
        .iter()
        .map(|(key, source)| (format!("target.template.data[{key:?}]"), key.clone(), source.clone()))
        .collect()
}

/// The name a `templateFrom` entry's template has in messages.
pub(super) fn template_from_name(index: usize, from: &vaultsync_api::secret::TemplateFrom) -> String {
    let reference = &from.config_map;
    format!(
        "target.template.templateFrom[{index}] (ConfigMap {}, key {:?}) for key {:?}",
        reference.name, reference.key, from.secret_key
    )
}

type Rendered = (SecretData, BTreeMap<String, String>, SecretMeta);

/// Renders every template over `data`.
pub(super) fn render_all(
    template: &SecretTemplate,
    sources: Vec<(String, String, String)>,
    data: SecretData,
    versions: BTreeMap<String, String>,
    salt_key: &[u8],
) -> Result<Rendered, NotSynced> {
    let templates = Templates::new(&data, salt_key);
    let (mut out, mut out_versions) = match template.merge_policy {
        MergePolicy::Merge => (data.clone(), versions),
        MergePolicy::Replace => (SecretData::new(), BTreeMap::new()),
    };
    for (name, key, source) in sources {
        let value = templates.render(&name, &source).map_err(failed)?;
        out.insert(key.clone(), SecretBytes::new(value.as_bytes().to_vec()));
        out_versions.insert(key, TEMPLATE_VERSION.into());
    }
    let mut meta = SecretMeta::default();
    for (label, source) in &template.labels {
        let name = format!("target.template.labels[{label:?}]");
        let value = templates.render(&name, source).map_err(failed)?;
        let value = value.trim();
        if !valid_label_value(value) {
            return Err(template_error(
                name,
                "renders to an invalid label value (at most 63 letters, digits, '-', '_' or '.', starting and ending \
                 with a letter or digit)",
            ));
        }
        meta.labels.insert(label.clone(), value.to_string());
    }
    for (annotation, source) in &template.annotations {
        let name = format!("target.template.annotations[{annotation:?}]");
        let value = templates.render(&name, source).map_err(failed)?;
        meta.annotations.insert(annotation.clone(), value.to_string());
    }
    if let Some(source) = &template.type_ {
        let name = "target.template.type".to_string();
        let value = templates.render(&name, source).map_err(failed)?;
        let value = value.trim();
        if !valid_type(value) {
            return Err(template_error(name, "renders to an invalid Secret type"));
        }
        meta.type_ = Some(value.to_string());
    }
    if out.is_empty() {
        return Err(template_error(
            "target.template".into(),
            "makes no data (mergePolicy Replace writes only the keys templates make)",
        ));
    }
    Ok((out, out_versions, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_types_are_checked_as_kubernetes_does() {
        for good in ["", "a", "prod-1", "a.b_c", &"x".repeat(63)] {
            assert!(valid_label_value(good), "{good}");
        }
        for bad in ["-a", "a-", "a b", "ä", &"x".repeat(64), "a/b"] {
            assert!(!valid_label_value(bad), "{bad}");
        }
        for good in ["Opaque", "kubernetes.io/tls", "kubernetes.io/dockerconfigjson", "example.com/custom_1"] {
            assert!(valid_type(good), "{good}");
        }
        for bad in ["", " Opaque", "a b", "/x", &"x".repeat(254)] {
            assert!(!valid_type(bad), "{bad}");
        }
    }
}
