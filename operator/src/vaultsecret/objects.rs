//! Each `data` item's object as Secret keys: the object kind read, refused when the vault says it must not be used
//! (disabled, expired, not yet valid), rendered by `vaultsync-render` in the format asked for (off the async
//! threads: PKCS#12 key derivation is CPU work), a certificate's secret split into `tls.crt` and `tls.key` for a
//! `kubernetes.io/tls` Secret, and a PFX written before kept when it still holds the same key and chain (PKCS#12
//! salts are random, and a new archive each refresh would look like a change and roll workloads).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::Api;
use vaultsync_api::secret::{Format as ApiFormat, ObjectType, RemoteRef, SecretData as DataItem, SecretKeyRef};
use vaultsync_backend::{FetchedSecret, ObjectRef as VaultObject, SecretBytes};
use vaultsync_render::{
    Format, ObjectSpec, RenderError, Templates,
    certificate::{PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE, Validity},
    object,
};
use vaultsync_stores::objects;
use zeroize::Zeroizing;

use super::{Sync, status::NotSynced};
use crate::render::{self, SecretData};

pub(super) const TLS_TYPE: &str = "kubernetes.io/tls";

/// The object a `data` item reads.
pub(super) fn vault_object(remote: &RemoteRef) -> VaultObject {
    VaultObject::secret(remote.name.clone(), remote.version.clone()).of_kind(objects::object_kind(remote.object_type))
}

fn format(format: Option<ApiFormat>) -> Format {
    format.map(objects::format).unwrap_or_default()
}

/// What the `data` items gave.
#[derive(Default)]
pub(super) struct Items {
    /// Secret key -> value and the version behind it.
    pub keys: Vec<(String, SecretBytes, String)>,
    /// Secret key -> the validity of the certificate in it.
    pub certificates: Vec<(String, Validity)>,
}

fn now() -> i64 {
    Timestamp::now().as_second()
}

/// Refuses a version the vault says must not be used now; the Secret keeps what it has.
pub(super) fn check_usable(object: &VaultObject, fetched: &FetchedSecret) -> Result<(), NotSynced> {
    let Some(reason) = fetched.unusable(now()) else { return Ok(()) };
    let at = |seconds: Option<i64>| {
        seconds.and_then(|s| Timestamp::from_second(s).ok()).map(|t| format!(" at {t}")).unwrap_or_default()
    };
    let message = match reason {
        "Expired" => format!("{object} expired{}", at(fetched.attributes.expires)),
        "NotYetValid" => format!("{object} is not valid before{}", at(fetched.attributes.not_before)),
        _ => format!("{object} is disabled in the vault"),
    };
    Err(NotSynced::new(reason, format!("{message}; the Secret keeps its last values"), Duration::from_secs(300)))
}

impl Sync<'_> {
    /// Renders every `data` item from its fetched object (`fetched[i]` belongs to `data[i]`). `earlier` are the keys
    /// `dataFrom` gave, which a PFX password template may read too.
    pub(super) async fn render_items(
        &self,
        fetched: Vec<FetchedSecret>,
        earlier: &SecretData,
    ) -> Result<Items, NotSynced> {
        let items = &self.vs.spec.data;
        let split_tls = self.vs.spec.target.type_.as_deref() == Some(TLS_TYPE);
        let names_tls_key = items.iter().any(|i| i.secret_key == "tls.key");
        let mut out = Items::default();
        // PFX outputs whose password is a template are rendered last, over everything else.
        let mut deferred = Vec::new();
        for (item, secret) in items.iter().zip(fetched) {
            check_usable(&vault_object(&item.remote_ref), &secret)?;
            let password = self.password(item.remote_ref.password_secret_ref.as_deref()).await?;
            if item.remote_ref.pfx_password.as_ref().is_some_and(|p| p.template.is_some()) {
                deferred.push((item, secret, password));
                continue;
            }
            let output = match item.remote_ref.pfx_password.as_ref().and_then(|p| p.secret_ref.as_ref()) {
                Some(reference) => self.password(Some(reference)).await?,
                None => None,
            };
            if split_tls && item.secret_key == "tls.crt" && is_certificate(item, &secret) {
                self.split(item, &secret, password, !names_tls_key, &mut out).await?;
                continue;
            }
            self.render_one(item, secret, password, output, &mut out).await?;
        }
        if !deferred.is_empty() {
            let mut inputs = earlier.clone();
            inputs.extend(out.keys.iter().map(|(k, v, _)| (k.clone(), v.clone())));
            let sources: Vec<(String, String)> = deferred
                .iter()
                .map(|(item, _, _)| {
                    let template = item.remote_ref.pfx_password.as_ref().and_then(|p| p.template.clone());
                    (
                        format!("data[{:?}].remoteRef.pfxPassword.template", item.secret_key),
                        template.unwrap_or_default(),
                    )
                })
                .collect();
            let key = self.ctx.hmac_key.clone();
            // Off the async threads, as every template: its filters may be CPU work.
            let passwords = tokio::task::spawn_blocking(move || {
                let templates = Templates::new(&inputs, &key);
                sources.iter().map(|(name, source)| templates.render(name, source)).collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|_| NotSynced::new("TemplateError", "rendering stopped unexpectedly", Duration::from_secs(120)))?
            .map_err(RenderError::from)?;
            for ((item, secret, password), output) in deferred.into_iter().zip(passwords) {
                self.render_one(item, secret, password, Some(output), &mut out).await?;
            }
        }
        Ok(out)
    }

    async fn render_one(
        &self,
        item: &DataItem,
        secret: FetchedSecret,
        password: Option<Zeroizing<String>>,
        output: Option<Zeroizing<String>>,
        out: &mut Items,
    ) -> Result<(), NotSynced> {
        let remote = item.remote_ref.clone();
        let format = format(remote.format);
        let version = secret.version.clone();
        let output_for_check = output.clone();
        let rendered = tokio::task::spawn_blocking(move || {
            let spec =
                object_spec(&remote, password.as_deref().map(String::as_str), output.as_deref().map(String::as_str));
            let rendered = object::render_object(&secret, &spec)?;
            // The bundle, to compare a PFX written before with.
            let bundle = (format == Format::Pfx).then(|| object::certificate_bundle(&secret, &spec)).transpose()?;
            Ok::<_, RenderError>((rendered, bundle))
        })
        .await
        .map_err(|_| NotSynced::new("InvalidValue", "rendering an object failed", Duration::from_secs(120)))?;
        let (rendered, bundle) = rendered?;
        let mut value = rendered.value;
        if let Some(bundle) = bundle
            && let Some(previous) = self.previous_value(&item.secret_key).await
        {
            let (old, new) = (previous.clone(), value.clone());
            let keep = tokio::task::spawn_blocking(move || {
                let password = output_for_check.as_deref().map(String::as_str).unwrap_or_default();
                old.expose() != new.expose() && bundle.same_as_pfx(old.expose(), password)
            })
            .await
            .unwrap_or(false);
            if keep {
                value = previous;
            }
        }
        if let Some(validity) = rendered.certificate {
            out.certificates.push((item.secret_key.clone(), validity));
        }
        out.keys.push((item.secret_key.clone(), value, version));
        Ok(())
    }

    /// A certificate's secret as `tls.crt` (leaf to root) and, unless another item names it, `tls.key` (PKCS#8).
    async fn split(
        &self,
        item: &DataItem,
        secret: &FetchedSecret,
        password: Option<Zeroizing<String>>,
        with_key: bool,
        out: &mut Items,
    ) -> Result<(), NotSynced> {
        let remote = item.remote_ref.clone();
        let secret_for_parse = secret.clone();
        let parsed = tokio::task::spawn_blocking(move || {
            split_bundle(&remote, &secret_for_parse, password.as_deref().map(String::as_str))
        })
        .await
        .map_err(|_| NotSynced::new("InvalidValue", "rendering an object failed", Duration::from_secs(120)))?;
        let (chain, key, validity) = parsed?;
        out.keys.push(("tls.crt".into(), SecretBytes::new(chain.into_bytes()), secret.version.clone()));
        if with_key {
            out.keys.push(("tls.key".into(), SecretBytes::new(key.as_bytes().to_vec()), secret.version.clone()));
        }
        out.certificates.push(("tls.crt".into(), validity));
        Ok(())
    }

    /// A password from a Secret of this namespace.
    async fn password(&self, reference: Option<&SecretKeyRef>) -> Result<Option<Zeroizing<String>>, NotSynced> {
        let Some(reference) = reference else { return Ok(None) };
        let what = format!("reading the password in Secret {} (key {})", reference.name, reference.key);
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let secret =
            api.get_opt(&reference.name).await.map_err(|e| NotSynced::apiserver("PasswordNotFound", &what, &e))?;
        let value = secret.and_then(|s| s.data?.remove(&reference.key)).ok_or_else(|| {
            NotSynced::new("PasswordNotFound", format!("{what}: it does not exist"), Duration::from_secs(60))
        })?;
        let text = String::from_utf8(value.0).map_err(|_| {
            NotSynced::new("PasswordNotFound", format!("{what}: the password is not UTF-8"), Duration::from_secs(120))
        })?;
        Ok(Some(Zeroizing::new(text.trim_end_matches(['\r', '\n']).to_string())))
    }

    /// What the Secret holds at `key` now, read from the apiserver (only a PFX asks, to keep its bytes when the
    /// key and chain in it did not change).
    async fn previous_value(&self, key: &str) -> Option<SecretBytes> {
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let secret = api.get_opt(&self.target).await.ok()??;
        if secret.metadata.labels?.get(super::OWNER_LABEL) != Some(&self.name) {
            return None;
        }
        secret.data?.remove(key).map(|v| SecretBytes::new(v.0))
    }
}

/// What to make of a `data` item's object.
pub(super) fn object_spec<'a>(
    remote: &'a RemoteRef,
    password: Option<&'a str>,
    output_password: Option<&'a str>,
) -> ObjectSpec<'a> {
    ObjectSpec {
        object: &remote.name,
        kind: vault_object(remote).kind,
        format: format(remote.format),
        property: remote.property.as_deref(),
        decoding: render::decoding(remote.decoding),
        password,
        output_password,
    }
}

/// A certificate's secret split: the chain (leaf to root) as PEM, the key (PKCS#8) and the leaf's validity.
pub(super) fn split_bundle(
    remote: &RemoteRef,
    secret: &FetchedSecret,
    password: Option<&str>,
) -> Result<(String, Zeroizing<String>, Validity), RenderError> {
    let spec = ObjectSpec {
        object: &remote.name,
        decoding: render::decoding(remote.decoding),
        password,
        ..Default::default()
    };
    let bundle = object::certificate_bundle(secret, &spec)?;
    let certificate = |problem| RenderError::Certificate { object: remote.name.clone(), problem };
    let key = bundle.key_pem().map_err(certificate)?;
    let validity = bundle.validity().map_err(certificate)?;
    Ok((bundle.chain_pem(), key, validity))
}

/// Whether an item's object is a certificate's secret (by its content type, or because a certificate format was
/// asked for).
pub(super) fn is_certificate(item: &DataItem, secret: &FetchedSecret) -> bool {
    item.remote_ref.object_type == ObjectType::Secret
        && item.remote_ref.property.is_none()
        && (matches!(secret.content_type.as_deref(), Some(PKCS12_CONTENT_TYPE | PEM_CONTENT_TYPE))
            || matches!(item.remote_ref.format, Some(ApiFormat::Pem | ApiFormat::Pfx))
            || looks_like_pem_with_key(secret.value.expose()))
}

/// A cheap look (no parsing) for a PEM file holding a private key.
fn looks_like_pem_with_key(value: &[u8]) -> bool {
    value.trim_ascii().starts_with(b"-----BEGIN") && value.windows(11).any(|w| w == b"PRIVATE KEY")
}

/// A `kubernetes.io/tls` Secret must hold `tls.crt` and `tls.key`; says which is missing, and why that may be.
pub(super) fn check_tls(type_: Option<&str>, data: &SecretData) -> Result<(), NotSynced> {
    if type_ != Some(TLS_TYPE) {
        return Ok(());
    }
    let missing: Vec<&str> = ["tls.crt", "tls.key"].into_iter().filter(|k| !data.contains_key(*k)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(NotSynced::invalid_spec(format!(
        "a {TLS_TYPE} Secret needs tls.crt and tls.key, and {} would be missing: name a certificate's secret \
         (objectType secret) with secretKey tls.crt to have both split from it (objectType certificate is the \
         certificate alone, without its private key)",
        missing.join(" and ")
    )))
}

/// Certificates' expiry for the status, soonest first.
pub(super) fn expiries(certificates: &[(String, Validity)]) -> BTreeMap<String, Timestamp> {
    certificates
        .iter()
        .filter_map(|(key, validity)| Some((key.clone(), Timestamp::from_second(validity.not_after).ok()?)))
        .collect()
}
