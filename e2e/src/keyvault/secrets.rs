//! The secrets operations: set, get, update, versions, list, and soft delete (deleted secrets,
//! recover, purge). A certificate's secret (`managed: true`, `kid` set) is one of these too.

use std::collections::BTreeMap;

use axum::response::IntoResponse as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use super::{
    ApiError, AttributeChange, Attributes, Named, Op, Reply, Request, Vault, Versioned, new_version_id, ok_json,
};

/// A secret version; `value` is absent in update and delete answers, as in Azure.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SecretBundle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    pub attributes: Attributes,
    /// The key of the certificate this secret belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// True when a certificate manages this secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// A listing entry: a secret (id without version) or one of its versions; never a value.
#[derive(Deserialize, Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct SecretItem {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<BTreeMap<String, String>>,
    pub attributes: Attributes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<bool>,
}

/// The part of a PUT or PATCH body this server understands.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct SecretChange {
    value: Option<String>,
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    attributes: AttributeChange,
}

/// A stored secret version.
pub(super) struct Secret {
    pub(super) version: String,
    pub(super) value: Zeroizing<String>,
    content_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    pub(super) attributes: Attributes,
    /// Set for a certificate's secret: the certificate's key id.
    kid: Option<String>,
}

impl Versioned for Secret {
    fn version(&self) -> &str {
        &self.version
    }
}

impl Secret {
    pub(super) fn new(value: &str, content_type: Option<&str>, tags: Option<BTreeMap<String, String>>) -> Self {
        Secret {
            version: new_version_id(),
            value: Zeroizing::new(value.to_string()),
            content_type: content_type.map(str::to_string),
            tags,
            attributes: Attributes::new(AttributeChange::default()),
            kid: None,
        }
    }

    /// The secret a certificate version keeps its private key and chain in.
    pub(super) fn managed(
        version: &str,
        value: String,
        content_type: &str,
        kid: String,
        attributes: Attributes,
    ) -> Self {
        Secret {
            version: version.to_string(),
            value: Zeroizing::new(value),
            content_type: Some(content_type.to_string()),
            tags: None,
            attributes,
            kid: Some(kid),
        }
    }

    fn bundle(&self, url: &str, name: &str, with_value: bool) -> SecretBundle {
        SecretBundle {
            value: with_value.then(|| self.value.to_string()),
            id: format!("{url}/secrets/{name}/{}", self.version),
            content_type: self.content_type.clone(),
            tags: self.tags.clone(),
            attributes: self.attributes.clone(),
            kid: self.kid.clone(),
            managed: self.kid.is_some().then_some(true),
        }
    }

    fn item(&self, url: &str, name: &str, with_version: bool) -> SecretItem {
        let id = format!("{url}/secrets/{name}");
        SecretItem {
            id: if with_version { format!("{id}/{}", self.version) } else { id },
            content_type: self.content_type.clone(),
            tags: self.tags.clone(),
            attributes: self.attributes.clone(),
            managed: self.kid.is_some().then_some(true),
        }
    }
}

impl Vault {
    pub(super) fn secrets(&mut self, op: Op, name: &str, version: Option<&str>, request: &Request) -> Reply {
        let url = request.url;
        match op {
            Op::GetSecret => self.get_secret(url, name, version),
            Op::ListSecrets => {
                if self.listing_forbidden {
                    return Err(ApiError::forbidden(
                        "The user, group or application does not have secrets list permission on key vault. For help \
                         resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287",
                        "ForbiddenByPolicy",
                    ));
                }
                let items = self.secrets.live.values().filter_map(|s| Some(s.current()?.item(url, &s.name, false)));
                request.page("secrets", items.collect())
            }
            Op::ListVersions => {
                self.check_readable(name)?;
                let secret = self.secrets.named(name)?;
                let items = secret.by_version_id().into_iter().map(|v| v.item(url, &secret.name, true)).collect();
                request.page(&format!("secrets/{}/versions", secret.name), items)
            }
            Op::SetSecret => {
                let change: SecretChange = request.json()?;
                let Some(value) = change.value else {
                    return Err(ApiError::bad_parameter("Property value is required."));
                };
                self.secrets.check_not_deleted(name)?;
                let mut secret = Secret::new(&value, change.content_type.as_deref(), change.tags);
                secret.attributes = Attributes::new(change.attributes);
                // Answered without the read checks: Azure returns the new version even when it is disabled.
                let named = self.secrets.push(name, secret);
                ok_json(named.current().map(|v| v.bundle(url, &named.name, true)))
            }
            Op::UpdateSecret => {
                let change: SecretChange = request.json()?;
                let (name, target) = self.secrets.find_mut(name, version)?;
                target.attributes.apply(change.attributes);
                target.content_type = change.content_type.or(target.content_type.take());
                target.tags = change.tags.or(target.tags.take());
                ok_json(target.bundle(url, name, false))
            }
            Op::DeleteSecret => {
                let deleted = self.secrets.delete(name)?;
                let body = deleted_bundle(url, &deleted.object)?;
                ok_json(deleted.describe(url, "deletedsecrets", body))
            }
            Op::ListDeletedSecrets => {
                let items = self.secrets.deleted.values().filter_map(|deleted| {
                    let item = deleted.object.current()?.item(url, &deleted.object.name, false);
                    Some(deleted.describe(url, "deletedsecrets", serde_json::to_value(item).ok()?))
                });
                request.page("deletedsecrets", items.collect())
            }
            Op::GetDeletedSecret => {
                let deleted = self.secrets.deleted(name)?;
                let body = deleted_bundle(url, &deleted.object)?;
                ok_json(deleted.describe(url, "deletedsecrets", body))
            }
            Op::PurgeDeletedSecret => {
                self.secrets.purge(name)?;
                Ok(axum::http::StatusCode::NO_CONTENT.into_response())
            }
            Op::RecoverDeletedSecret => {
                let named = self.secrets.recover(name)?;
                ok_json(named.current().map(|v| v.bundle(url, &named.name, false)))
            }
            _ => unreachable!("not a secrets operation: {op:?}"),
        }
    }

    fn check_readable(&self, name: &str) -> Result<(), ApiError> {
        if !self.forbidden.contains(&name.to_ascii_lowercase()) {
            return Ok(());
        }
        Err(ApiError::forbidden(
            format!(
                "Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/secrets/getSecret/action' Resource: 'secrets/{name}' Assignment: (not found) DecisionReason: ForbiddenByRbac"
            ),
            "ForbiddenByRbac",
        ))
    }

    /// Without a version this is the current version, which Azure refuses if it is disabled.
    fn get_secret(&self, url: &str, name: &str, version: Option<&str>) -> Reply {
        self.check_readable(name)?;
        let (secret, version) = self.secrets.find(name, version)?;
        if !version.attributes.enabled {
            let message = "Operation get is not allowed on a disabled secret.";
            return Err(ApiError::forbidden(message, "SecretDisabled"));
        }
        ok_json(version.bundle(url, &secret.name, true))
    }
}

/// The current version of a deleted secret, without its value.
fn deleted_bundle(url: &str, secret: &Named<Secret>) -> Result<Value, ApiError> {
    let current = secret.current().ok_or_else(|| super::Kind::Secret.not_found(&secret.name))?;
    serde_json::to_value(current.bundle(url, &secret.name, false)).map_err(|e| ApiError::bad_parameter(e.to_string()))
}
