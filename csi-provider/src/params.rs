//! What a volume asks for, parsed from the strings the Secrets Store CSI Driver (`attributes`,
//! `secrets`, `permission`) or kubelet (`volume_context`, `secrets`) sends. Every field is
//! tenant-written and so hostile: lengths and counts are bounded, file names are checked before
//! anything is read, and parse errors say where without echoing the input (which may hold a
//! token).
//!
//! Forms of the parameters:
//! - `vaultSecret: <name>` (or the volume attribute `vaultsync.dev/vaultsecret`): a VaultSecret's
//!   store and mapping, in the pod's namespace; a file per `secretKey`.
//! - `storeRef: <name>` (`storeKind: VaultStore|ClusterVaultStore`) + `objects`: a YAML list of
//!   `{objectName, fileName, version, property, decoding, filePermission}`.
//! - The Azure provider's: `keyvaultName`, `tenantID`/`tenantId`, `cloudName`, `clientID`, and
//!   `objects` as a YAML `array:` of YAML strings.
//! - The Vault provider's: `roleName`, `vaultAddress`, `vaultNamespace`, `vaultAuthMountPath`,
//!   `audience`, and `objects` as a YAML list of `{objectName, secretPath, secretKey, ...}`.

use std::{collections::BTreeMap, fmt};

use serde::Deserialize;
use vaultsync_backend::{ObjectKind, openbao::KvVersion};
pub use vaultsync_render::Format;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
pub const TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";
pub const EPHEMERAL: &str = "csi.storage.k8s.io/ephemeral";
/// The volume attribute by which an inline CSI volume names a VaultSecret (rollouts know it too).
pub const VAULTSECRET_ATTRIBUTE: &str = "vaultsync.dev/vaultsecret";
/// The audience of the token Azure workload identity exchanges at Entra.
pub const AZURE_AUDIENCE: &str = "api://AzureADTokenExchange";

/// At most this many bytes in `attributes`, `secrets`, or one parameter.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;
/// At most this many objects (files) per volume.
pub const MAX_OBJECTS: usize = 256;
/// At most this many bytes of files per volume (the driver's limit for syncing to a Secret).
pub const MAX_TOTAL_BYTES: usize = 1024 * 1024;
const MAX_PATH_BYTES: usize = 1024;
const MAX_NAME_BYTES: usize = 255;

/// A service-account token the kubelet requested for the pod; never printed.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountToken {
    pub token: Zeroizing<String>,
    #[serde(default, rename = "expirationTimestamp")]
    pub expiration: Option<String>,
}

impl fmt::Debug for ServiceAccountToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountToken").field("expiration", &self.expiration).finish_non_exhaustive()
    }
}

/// Who the pod is, as the kubelet told (`podInfoOnMount`), with its tokens by audience.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    pub tokens: BTreeMap<String, ServiceAccountToken>,
}

impl PodInfo {
    /// The pod's token for `audience`, or why there is none.
    pub fn token(&self, audience: &str) -> Result<&Zeroizing<String>> {
        self.tokens.get(audience).map(|t| &t.token).ok_or_else(|| {
            let have: Vec<&str> = self.tokens.keys().map(String::as_str).collect();
            Error::invalid(
                TOKENS,
                format!(
                    "no service-account token for audience {audience:?} (have {have:?}); add it to the CSIDriver's tokenRequests"
                ),
            )
        })
    }

    /// `namespace/serviceaccount`, the principal reads are shared by.
    pub fn account(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// The data of the volume's `nodePublishSecretRef` Secret: credentials, never printed.
#[derive(Clone, Default)]
pub struct PublishSecrets(pub BTreeMap<String, Zeroizing<String>>);

impl fmt::Debug for PublishSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PublishSecrets").field(&self.0.keys().collect::<Vec<_>>()).finish()
    }
}

impl PublishSecrets {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str()).filter(|v| !v.is_empty())
    }
}

/// How a fetched value becomes a file's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// As it is.
    Utf8,
    Base64,
    Base64Url,
    Hex,
    /// Base64 or Base64URL when it decodes as one, else as it is.
    Auto,
}

/// What a file holds of its object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// The value as stored (a `field` taken, then the encoding decoded).
    #[default]
    Value,
    /// The Azure provider's `objectType: secret` with `objectFormat: pem`: a certificate's secret held as PKCS#12
    /// becomes PEM (the private key, then leaf to root); any other value as stored. Then the encoding.
    AzureSecret,
    /// Rendered by `vaultsync-render` in this format (a certificate, a key, a certificate's secret as PEM or PFX),
    /// as the operator renders it.
    Render(Format),
}

/// Which store a `storeRef` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StoreKind {
    VaultStore,
    ClusterVaultStore,
}

/// An object in a vault: its name (OpenBao: the path under `mount`) and an optional pinned version.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VaultObject {
    /// OpenBao / Vault only: the KV mount and its version, from a `secretPath`.
    pub mount: Option<(String, KvVersionKey)>,
    pub name: String,
    pub version: Option<String>,
    /// Azure Key Vault only: a secret, a certificate or a key (the others hold secrets only).
    pub kind: ObjectKind,
}

/// [`KvVersion`] as an ordered, hashable key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvVersionKey {
    V1,
    V2,
}

impl From<KvVersionKey> for KvVersion {
    fn from(value: KvVersionKey) -> Self {
        match value {
            KvVersionKey::V1 => KvVersion::V1,
            KvVersionKey::V2 => KvVersion::V2,
        }
    }
}

/// One file of the volume and where its bytes come from.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSpec {
    /// Relative path in the volume, checked by [`check_path`].
    pub path: String,
    pub mode: u32,
    pub object: VaultObject,
    /// The object's id in `object_version`: `<type>/<name>`.
    pub id: String,
    /// A field of a JSON object value (OpenBao `secretKey`, a store's `property`).
    pub field: Option<String>,
    pub encoding: Encoding,
    /// What the object becomes: its value, or a certificate or key rendered by `vaultsync-render`.
    pub output: Output,
    /// Where this file was asked for, for messages (`objects[2]`).
    pub place: String,
}

/// The Azure Key Vault a SecretProviderClass written for the Azure provider names.
#[derive(Clone, Debug, PartialEq)]
pub struct AzureSource {
    pub vault_name: String,
    pub tenant_id: String,
    pub cloud: AzureCloud,
    /// `Some`: workload identity with this client ID; `None`: a service principal whose
    /// `clientid` and `clientsecret` come from the nodePublishSecretRef.
    pub client_id: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AzureCloud {
    Public,
    China,
    USGovernment,
}

impl AzureCloud {
    pub fn vault_suffix(self) -> &'static str {
        match self {
            AzureCloud::Public => "vault.azure.net",
            AzureCloud::China => "vault.azure.cn",
            AzureCloud::USGovernment => "vault.usgovcloudapi.net",
        }
    }

    pub fn authority_host(self) -> &'static str {
        match self {
            AzureCloud::Public => "https://login.microsoftonline.com",
            AzureCloud::China => "https://login.chinacloudapi.cn",
            AzureCloud::USGovernment => "https://login.microsoftonline.us",
        }
    }
}

/// The OpenBao / Vault server a SecretProviderClass written for the Vault provider names.
#[derive(Clone, Debug, PartialEq)]
pub struct OpenBaoSource {
    /// `None`: the plugin's default address.
    pub address: Option<String>,
    pub namespace: Option<String>,
    pub role: String,
    pub auth_mount_path: String,
    /// `None`: the plugin's default audience (`vault`).
    pub audience: Option<String>,
}

/// A VaultStore or ClusterVaultStore.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreRef {
    pub kind: StoreKind,
    pub name: String,
}

/// Where a volume's objects are read from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Azure(AzureSource),
    OpenBao(OpenBaoSource),
    Store(StoreRef),
}

/// A source and the files to make from it.
#[derive(Clone, Debug, PartialEq)]
pub struct MountPlan {
    pub source: Source,
    pub files: Vec<FileSpec>,
    /// A VaultSecret's `dataFrom` entries (the store form only): their keys become files too.
    pub data_from: Vec<vaultsync_api::secret::DataFrom>,
}

/// What the parameters ask for.
#[derive(Clone, Debug, PartialEq)]
pub enum Request {
    /// A VaultSecret's mapping; its plan comes from the apiserver.
    VaultSecret {
        name: String,
    },
    Plan(MountPlan),
}

/// A parsed mount: who asks, what for, with which credentials and default file mode.
#[derive(Clone, Debug)]
pub struct MountSpec {
    pub pod: PodInfo,
    pub request: Request,
    pub secrets: PublishSecrets,
}

// === Parsing the driver's and kubelet's strings ===

/// Parses a JSON object of strings (`attributes`, `secrets`), at most [`MAX_INPUT_BYTES`].
pub fn string_map(json: &str, place: &str) -> Result<BTreeMap<String, String>> {
    if json.len() > MAX_INPUT_BYTES {
        return Err(Error::invalid(place, format!("{} bytes, more than the {MAX_INPUT_BYTES} allowed", json.len())));
    }
    // The driver marshals an absent nodePublishSecretRef (a nil map) as `null`.
    if json.trim().is_empty() || json.trim() == "null" {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(json)
        .map_err(|e| Error::invalid(place, format!("not a JSON object of strings ({})", where_json(&e))))
}

/// Line and column of a JSON error; serde's message may quote the input, so it is left out.
fn where_json(error: &serde_json::Error) -> String {
    format!("{:?} error at line {} column {}", error.classify(), error.line(), error.column())
}

/// Line and column of a YAML error, without serde's message (which may quote the input).
fn where_yaml(error: &serde_yaml::Error) -> String {
    match error.location() {
        Some(at) => format!("line {} column {}", at.line(), at.column()),
        None => "unexpected shape".into(),
    }
}

/// The default file mode from `permission`: JSON of a number (`420`) or of a string (`"420"`).
pub fn permission(json: &str) -> Result<u32> {
    let json = json.trim();
    if json.is_empty() {
        return Ok(0o644);
    }
    let number = match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Number(n)) => n.as_u64(),
        Ok(serde_json::Value::String(s)) => s.parse::<u64>().ok(),
        _ => None,
    };
    match number {
        Some(mode) if mode <= 0o777 => Ok(mode as u32),
        _ => Err(Error::invalid("permission", "not a file mode (a decimal number from 0 to 511)")),
    }
}

/// The pod and its tokens from the attributes (and `secrets`, which carry the tokens since
/// Kubernetes 1.35 and are read first).
pub fn pod_info(attributes: &BTreeMap<String, String>, secrets: &BTreeMap<String, String>) -> Result<PodInfo> {
    let field = |key: &str| -> Result<String> {
        match attributes.get(key).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => {
                if v.len() > 253 || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
                    return Err(Error::invalid(key, "not a Kubernetes name"));
                }
                Ok(v.to_string())
            }
            _ => Err(Error::invalid(key, "missing: the CSIDriver needs podInfoOnMount: true")),
        }
    };
    let namespace = field(POD_NAMESPACE)?;
    let name = field(POD_NAME)?;
    let service_account = field(SERVICE_ACCOUNT)?;
    let uid = attributes.get(POD_UID).cloned().unwrap_or_default();
    let raw = secrets.get(TOKENS).or_else(|| attributes.get(TOKENS));
    let tokens = match raw.map(|t| t.trim()).filter(|t| !t.is_empty()) {
        None => BTreeMap::new(),
        Some(raw) => serde_json::from_str::<BTreeMap<String, ServiceAccountToken>>(raw).map_err(|e| {
            Error::invalid(TOKENS, format!("not a JSON object of {{token, expirationTimestamp}} ({})", where_json(&e)))
        })?,
    };
    check_token_subjects(&tokens, &namespace, &service_account)?;
    Ok(PodInfo { namespace, name, uid, service_account, tokens })
}

/// Every token must belong to the pod's service account: reads are cached and shared by
/// service account, so a token of one account must never pass for another's. Kubelet's tokens
/// are JWTs whose `sub` names the account; the signature is the vault's (or Entra's) to check.
fn check_token_subjects(tokens: &BTreeMap<String, ServiceAccountToken>, namespace: &str, account: &str) -> Result<()> {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    #[derive(Deserialize)]
    struct Claims {
        sub: Option<String>,
    }
    let expected = format!("system:serviceaccount:{namespace}:{account}");
    for (audience, token) in tokens {
        let place = format!("{TOKENS}[{audience:?}]");
        let claims = token
            .token
            .split('.')
            .nth(1)
            .and_then(|payload| URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok())
            .and_then(|json| serde_json::from_slice::<Claims>(&json).ok())
            .ok_or_else(|| Error::invalid(place.as_str(), "not a service-account token (a JWT)"))?;
        if claims.sub.as_deref() != Some(expected.as_str()) {
            return Err(Error::denied(place, format!("the token does not belong to {namespace}/{account}")));
        }
    }
    Ok(())
}

/// The nodePublishSecretRef data, without the tokens the kubelet may put there.
pub fn publish_secrets(secrets: BTreeMap<String, String>) -> PublishSecrets {
    PublishSecrets(secrets.into_iter().filter(|(k, _)| k != TOKENS).map(|(k, v)| (k, Zeroizing::new(v))).collect())
}

/// What the parameters ask for (see the module docs for the forms); `mode` is the default file mode.
pub fn request(params: &BTreeMap<String, String>, mode: u32) -> Result<Request> {
    for (key, value) in params {
        if value.len() > MAX_INPUT_BYTES {
            return Err(Error::invalid(key.as_str(), format!("more than {MAX_INPUT_BYTES} bytes")));
        }
    }
    let get = |key: &str| params.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let vault_secret = get("vaultSecret").or(get(VAULTSECRET_ATTRIBUTE));
    if let Some(name) = vault_secret {
        if get("objects").is_some() || get("storeRef").is_some() {
            return Err(Error::invalid("vaultSecret", "set either vaultSecret, or storeRef and objects, not both"));
        }
        check_k8s_name(name, "vaultSecret")?;
        return Ok(Request::VaultSecret { name: name.to_string() });
    }
    if let Some(store) = get("storeRef") {
        return store_plan(store, get("storeKind"), get("objects"), mode).map(Request::Plan);
    }
    if get("keyvaultName").is_some() {
        return azure_plan(params, mode).map(Request::Plan);
    }
    if get("roleName").is_some() || get("vaultAddress").is_some() {
        return openbao_plan(params, mode).map(Request::Plan);
    }
    Err(Error::invalid(
        "parameters",
        "no vault named: set vaultSecret, or storeRef and objects, or keyvaultName (Azure provider form), or roleName (Vault provider form)",
    ))
}

fn check_k8s_name(name: &str, place: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if ok { Ok(()) } else { Err(Error::invalid(place, "not a Kubernetes object name")) }
}

/// A file mode given as an octal string (`"0644"`, `"644"`, `"0o600"`).
fn octal_mode(value: &str, place: &str) -> Result<u32> {
    let digits = value.trim().trim_start_matches("0o");
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if !digits.is_empty() && digits.len() <= 4 && mode <= 0o777 => Ok(mode),
        _ => Err(Error::invalid(place, "filePermission is not an octal file mode from 0000 to 0777")),
    }
}

/// Checks an object name or path from the parameters: bounded, printable, no NUL.
fn check_object_name(name: &str, place: &str, max: usize) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(place, "objectName is empty"));
    }
    if name.len() > max || name.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            place,
            format!("objectName is longer than {max} bytes or holds control characters"),
        ));
    }
    Ok(())
}

/// Checks a file path in the volume, as kubelet's atomic writer does and stricter: relative,
/// no empty, `.` or `..` element, not starting with `..` (`..data` is the writer's own), bounded.
pub fn check_path(path: &str, place: &str) -> Result<()> {
    let bad = |why: &str| Err(Error::invalid(place, format!("file name {:?} {why}", shorten(path))));
    if path.is_empty() {
        return bad("is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return bad("is too long");
    }
    if path.starts_with('/') {
        return bad("is absolute");
    }
    if path.starts_with("..") {
        return bad("starts with '..' (names starting with '..' belong to the writer)");
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return bad("holds control characters or a backslash");
    }
    for element in path.split('/') {
        if element.is_empty() || element == "." || element == ".." {
            return bad("has an empty, '.' or '..' element");
        }
        if element.len() > MAX_NAME_BYTES {
            return bad("has an element longer than 255 bytes");
        }
    }
    Ok(())
}

/// A name shortened for messages.
fn shorten(text: &str) -> String {
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// Refuses duplicate file names, and a file that is also another file's folder.
pub fn check_files(files: &[FileSpec]) -> Result<()> {
    if files.is_empty() {
        return Err(Error::invalid("objects", "no objects are listed"));
    }
    if files.len() > MAX_OBJECTS {
        return Err(Error::invalid("objects", format!("{} objects, more than the {MAX_OBJECTS} allowed", files.len())));
    }
    let mut seen: BTreeMap<&str, &str> = BTreeMap::new();
    for file in files {
        check_path(&file.path, &file.place)?;
        if let Some(first) = seen.insert(&file.path, &file.place) {
            return Err(Error::invalid(
                file.place.as_str(),
                format!("file name {:?} is also the file of {first}", shorten(&file.path)),
            ));
        }
    }
    for file in files {
        let mut prefix = String::new();
        for element in file.path.split('/').collect::<Vec<_>>().split_last().map(|(_, dirs)| dirs).unwrap_or_default() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(element);
            if let Some(other) = seen.get(prefix.as_str()) {
                return Err(Error::invalid(
                    file.place.as_str(),
                    format!(
                        "file name {:?} needs {prefix:?} as a folder, but it is the file of {other}",
                        shorten(&file.path)
                    ),
                ));
            }
        }
    }
    Ok(())
}

// === The store form ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoreObject {
    object_name: String,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    property: Option<String>,
    #[serde(default)]
    decoding: Option<String>,
    #[serde(default)]
    object_type: Option<String>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    file_permission: Option<String>,
}

/// What a file of a store's object holds, by a VaultSecret's rules (`objectType`, `format`): a secret's value as
/// stored unless a format is asked for; certificates and keys rendered (PEM when no format is named).
pub fn store_output(kind: ObjectKind, format: Option<Format>) -> Output {
    match (kind, format) {
        (ObjectKind::Secret, None) => Output::Value,
        (_, format) => Output::Render(format.unwrap_or_default()),
    }
}

/// A store object's `objectType` and `format`, checked as a VaultSecret's are at admission.
fn store_kind_and_format(object: &StoreObject, place: &str) -> Result<(ObjectKind, Option<Format>)> {
    let kind = match object.object_type.as_deref() {
        None | Some("secret") => ObjectKind::Secret,
        Some("certificate") => ObjectKind::Certificate,
        Some("key") => ObjectKind::Key,
        Some(_) => return Err(Error::invalid(place, "objectType must be secret, certificate or key")),
    };
    let format = match object.format.as_deref() {
        None => None,
        Some("pem") => Some(Format::Pem),
        Some("pfx") => Some(Format::Pfx),
        Some("der") => Some(Format::Der),
        Some("jwk") => Some(Format::Jwk),
        Some(_) => return Err(Error::invalid(place, "format must be pem, pfx, der or jwk")),
    };
    let fits = match (kind, format) {
        (_, None) | (_, Some(Format::Pem)) => true,
        (ObjectKind::Secret, Some(f)) => f == Format::Pfx,
        (ObjectKind::Certificate, Some(f)) => f == Format::Der,
        (ObjectKind::Key, Some(f)) => f == Format::Jwk,
    };
    if !fits {
        return Err(Error::invalid(
            place,
            "format must fit objectType: pem or pfx for a secret, pem or der for a certificate, pem or jwk for a key",
        ));
    }
    if object.property.is_some() && (format.is_some() || kind != ObjectKind::Secret) {
        return Err(Error::invalid(place, "property takes a field of a secret's JSON value; not with format"));
    }
    Ok((kind, format))
}

fn store_plan(store: &str, kind: Option<&str>, objects: Option<&str>, mode: u32) -> Result<MountPlan> {
    check_k8s_name(store, "storeRef")?;
    let kind = match kind {
        None | Some("VaultStore") => StoreKind::VaultStore,
        Some("ClusterVaultStore") => StoreKind::ClusterVaultStore,
        Some(_) => return Err(Error::invalid("storeKind", "must be VaultStore or ClusterVaultStore")),
    };
    let objects = objects.ok_or_else(|| Error::invalid("objects", "storeRef needs objects (a YAML list)"))?;
    let list: Vec<StoreObject> = serde_yaml::from_str(objects).map_err(|e| {
        Error::invalid(
            "objects",
            format!(
                "not a YAML list of {{objectName, fileName, version, property, decoding, objectType, format, filePermission}} ({})",
                where_yaml(&e)
            ),
        )
    })?;
    let mut files = Vec::new();
    for (i, object) in list.into_iter().enumerate() {
        let place = format!("objects[{i}]");
        check_object_name(&object.object_name, &place, 512)?;
        let encoding = match object.decoding.as_deref() {
            None | Some("None") => Encoding::Utf8,
            Some("Base64") => Encoding::Base64,
            Some("Base64URL") => Encoding::Base64Url,
            Some("Auto") => Encoding::Auto,
            Some(_) => return Err(Error::invalid(place, "decoding must be None, Base64, Base64URL or Auto")),
        };
        let mode = match &object.file_permission {
            Some(p) => octal_mode(p, &place)?,
            None => mode,
        };
        let (kind, format) = store_kind_and_format(&object, &place)?;
        let output = store_output(kind, format);
        let version = bounded_opt(object.version, &place, "version", 128)?;
        let field = bounded_opt(object.property, &place, "property", 253)?;
        files.push(FileSpec {
            path: object.file_name.unwrap_or_else(|| object.object_name.clone()),
            mode,
            id: format!("{kind}/{}", object.object_name),
            object: VaultObject { mount: None, name: object.object_name, version, kind },
            field,
            encoding,
            output,
            place,
        });
    }
    check_files(&files)?;
    Ok(MountPlan { source: Source::Store(StoreRef { kind, name: store.to_string() }), files, data_from: Vec::new() })
}

fn bounded_opt(value: Option<String>, place: &str, what: &str, max: usize) -> Result<Option<String>> {
    match value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
        Some(v) if v.len() > max || v.chars().any(|c| c.is_control()) => {
            Err(Error::invalid(place, format!("{what} is longer than {max} bytes or holds control characters")))
        }
        other => Ok(other),
    }
}

// === The Azure provider's form ===

#[derive(Deserialize)]
struct AzureArray {
    #[serde(default)]
    array: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AzureObject {
    object_name: String,
    #[serde(default)]
    object_alias: Option<String>,
    #[serde(default)]
    object_version: Option<String>,
    #[serde(default)]
    object_version_history: Option<serde_yaml::Value>,
    #[serde(default)]
    object_type: Option<String>,
    #[serde(default)]
    object_format: Option<String>,
    #[serde(default)]
    object_encoding: Option<String>,
    #[serde(default)]
    file_permission: Option<String>,
}

fn flag(params: &BTreeMap<String, String>, key: &str) -> bool {
    params.get(key).is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn azure_plan(params: &BTreeMap<String, String>, mode: u32) -> Result<MountPlan> {
    let get = |key: &str| params.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let vault_name = get("keyvaultName").unwrap_or_default();
    if !(3..=24).contains(&vault_name.len()) || !vault_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return Err(Error::invalid("keyvaultName", "a Key Vault name is 3-24 letters, digits and hyphens"));
    }
    let tenant_id = get("tenantID").or(get("tenantId")).ok_or_else(|| Error::invalid("tenantID", "missing"))?;
    if tenant_id.len() > 64 || !tenant_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(Error::invalid("tenantID", "not a tenant ID or domain"));
    }
    let cloud = match get("cloudName").map(str::to_ascii_lowercase).as_deref() {
        None | Some("azurepubliccloud") => AzureCloud::Public,
        Some("azurechinacloud") => AzureCloud::China,
        Some("azureusgovernmentcloud") => AzureCloud::USGovernment,
        Some(_) => {
            return Err(Error::invalid(
                "cloudName",
                "must be AzurePublicCloud, AzureChinaCloud or AzureUSGovernmentCloud (custom clouds are configured on the plugin)",
            ));
        }
    };
    if flag(params, "usePodIdentity") {
        return Err(Error::invalid(
            "usePodIdentity",
            "pod identity is not supported; use workload identity (clientID)",
        ));
    }
    if flag(params, "useVMManagedIdentity") {
        return Err(Error::invalid(
            "useVMManagedIdentity",
            "a node's managed identity is shared by every pod on the node and is not used; use workload identity (clientID) or a service principal in nodePublishSecretRef",
        ));
    }
    let client_id = match get("clientID") {
        Some(id) if id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            return Err(Error::invalid("clientID", "not a client ID"));
        }
        other => other.map(str::to_string),
    };
    let objects = get("objects").ok_or_else(|| Error::invalid("objects", "missing"))?;
    let array: AzureArray = serde_yaml::from_str(objects)
        .map_err(|e| Error::invalid("objects", format!("not YAML with an `array:` of objects ({})", where_yaml(&e))))?;
    if array.array.len() > MAX_OBJECTS {
        return Err(Error::invalid("objects", format!("more than {MAX_OBJECTS} objects")));
    }
    let mut files = Vec::new();
    for (i, item) in array.array.iter().enumerate() {
        let place = format!("objects.array[{i}]");
        let object: AzureObject = serde_yaml::from_str(item).map_err(|e| {
            Error::invalid(
                place.as_str(),
                format!(
                    "not YAML of objectName, objectAlias, objectVersion, objectType, objectFormat, objectEncoding, filePermission ({})",
                    where_yaml(&e)
                ),
            )
        })?;
        check_object_name(&object.object_name, &place, 127)?;
        if !object.object_name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Error::invalid(place, "objectName: a Key Vault object name is letters, digits and hyphens"));
        }
        let object_type = object.object_type.as_deref().unwrap_or("secret").to_ascii_lowercase();
        let kind = match object_type.as_str() {
            "secret" => ObjectKind::Secret,
            "cert" => ObjectKind::Certificate,
            "key" => ObjectKind::Key,
            _ => return Err(Error::invalid(place, "objectType must be secret, key or cert")),
        };
        // As the Azure provider: a certificate's secret is PEM unless pfx is asked for (then its value, base64 as
        // Key Vault holds it: objectEncoding base64 writes the binary PFX); a certificate is its leaf and a key its
        // public half, as PEM.
        let output = match (object.object_format.as_deref().map(str::to_ascii_lowercase).as_deref(), kind) {
            (None | Some("") | Some("pem"), ObjectKind::Secret) => Output::AzureSecret,
            (None | Some("") | Some("pem"), _) => Output::Render(Format::Pem),
            (Some("pfx"), ObjectKind::Secret) => Output::Value,
            (Some("pfx"), _) => {
                return Err(Error::invalid(
                    place,
                    "objectFormat pfx is for objectType secret (a certificate's secret holds its key)",
                ));
            }
            (Some(_), _) => return Err(Error::invalid(place, "objectFormat must be pem or pfx")),
        };
        let encoding = match object.object_encoding.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("utf-8") => Encoding::Utf8,
            Some("base64") => Encoding::Base64,
            Some("hex") => Encoding::Hex,
            Some(_) => return Err(Error::invalid(place, "objectEncoding must be utf-8, hex or base64")),
        };
        match &object.object_version_history {
            None | Some(serde_yaml::Value::Null) => {}
            Some(serde_yaml::Value::Number(n)) if n.as_u64().is_some_and(|n| n <= 1) => {}
            Some(serde_yaml::Value::String(s)) if matches!(s.trim(), "" | "0" | "1") => {}
            Some(_) => return Err(Error::invalid(place, "objectVersionHistory above 1 is not supported")),
        }
        let mode = match &object.file_permission {
            Some(p) if !p.trim().is_empty() => octal_mode(p, &place)?,
            _ => mode,
        };
        let version = bounded_opt(object.object_version, &place, "objectVersion", 64)?;
        if version.as_deref().is_some_and(|v| !v.bytes().all(|b| b.is_ascii_alphanumeric())) {
            return Err(Error::invalid(place, "objectVersion: a Key Vault version id is letters and digits"));
        }
        let alias = object.object_alias.filter(|a| !a.trim().is_empty());
        files.push(FileSpec {
            path: alias.unwrap_or_else(|| object.object_name.clone()),
            mode,
            id: format!("{object_type}/{}", object.object_name),
            object: VaultObject { mount: None, name: object.object_name, version, kind },
            field: None,
            // objectEncoding applies to secrets only, as in the Azure provider.
            encoding: if kind == ObjectKind::Secret { encoding } else { Encoding::Utf8 },
            output,
            place,
        });
    }
    check_files(&files)?;
    Ok(MountPlan {
        source: Source::Azure(AzureSource {
            vault_name: vault_name.to_string(),
            tenant_id: tenant_id.to_string(),
            cloud,
            client_id,
        }),
        files,
        data_from: Vec::new(),
    })
}

// === The Vault provider's form ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VaultProviderObject {
    object_name: String,
    secret_path: String,
    #[serde(default)]
    secret_key: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    secret_args: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    file_permission: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
}

/// The Vault provider's TLS parameters name files on the provider's node; a tenant must not make
/// the plugin read node files, so the CA is configured on the plugin instead.
const VAULT_TLS_PARAMETERS: [&str; 5] =
    ["vaultCACertPath", "vaultCADirectory", "vaultTLSServerName", "vaultTLSClientCertPath", "vaultTLSClientKeyPath"];

fn openbao_plan(params: &BTreeMap<String, String>, mode: u32) -> Result<MountPlan> {
    let get = |key: &str| params.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
    let role = get("roleName").ok_or_else(|| Error::invalid("roleName", "missing"))?;
    if role.len() > 256 || role.chars().any(|c| c.is_control() || c == '/') {
        return Err(Error::invalid("roleName", "not a role name"));
    }
    let address = match get("vaultAddress") {
        Some(a) if a.len() > 2048 || !(a.starts_with("https://") || a.starts_with("http://")) => {
            return Err(Error::invalid("vaultAddress", "not an http(s) URL"));
        }
        other => other.map(|a| a.trim_end_matches('/').to_string()),
    };
    for key in VAULT_TLS_PARAMETERS {
        if get(key).is_some() {
            return Err(Error::invalid(
                key,
                "TLS files are not read from tenant parameters; the plugin's CA bundle is used",
            ));
        }
    }
    if flag(params, "vaultSkipTLSVerify") {
        return Err(Error::invalid("vaultSkipTLSVerify", "TLS verification is never skipped"));
    }
    let auth_mount_path = get("vaultAuthMountPath").or(get("vaultKubernetesMountPath")).unwrap_or("kubernetes");
    check_mount_path(auth_mount_path, "vaultAuthMountPath")?;
    let namespace = get("vaultNamespace").map(str::to_string);
    if let Some(ns) = &namespace {
        check_mount_path(ns, "vaultNamespace")?;
    }
    let audience = get("audience").map(str::to_string);
    if audience.as_ref().is_some_and(|a| a.len() > 256 || a.chars().any(|c| c.is_control())) {
        return Err(Error::invalid("audience", "not an audience"));
    }
    let objects = get("objects").ok_or_else(|| Error::invalid("objects", "missing"))?;
    let list: Vec<VaultProviderObject> = serde_yaml::from_str(objects).map_err(|e| {
        Error::invalid(
            "objects",
            format!(
                "not a YAML list of {{objectName, secretPath, secretKey, method, secretArgs, filePermission, encoding}} ({})",
                where_yaml(&e)
            ),
        )
    })?;
    let mut files = Vec::new();
    for (i, object) in list.into_iter().enumerate() {
        let place = format!("objects[{i}]");
        if object.method.as_deref().is_some_and(|m| !m.eq_ignore_ascii_case("GET")) {
            return Err(Error::invalid(place, "method: only GET (reading a KV secret) is supported"));
        }
        let mut version = None;
        for (arg, value) in object.secret_args.unwrap_or_default() {
            match (arg.as_str(), value) {
                ("version", serde_yaml::Value::Number(n)) if n.as_u64().is_some() => {
                    version = n.as_u64().map(|v| v.to_string())
                }
                ("version", serde_yaml::Value::String(s)) if s.parse::<u64>().is_ok() => version = Some(s),
                _ => return Err(Error::invalid(place, "secretArgs: only a numeric version is supported")),
            }
        }
        check_object_name(&object.secret_path, &place, 512)?;
        let (mount, kv, name) = split_secret_path(&object.secret_path, &place)?;
        let encoding = match object.encoding.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("utf-8") => Encoding::Utf8,
            Some("base64") => Encoding::Base64,
            Some(_) => return Err(Error::invalid(place, "encoding must be utf-8 or base64")),
        };
        let mode = match &object.file_permission {
            Some(p) if !p.trim().is_empty() => octal_mode(p, &place)?,
            _ => mode,
        };
        let field = bounded_opt(object.secret_key, &place, "secretKey", 253)?;
        files.push(FileSpec {
            path: object.object_name,
            mode,
            id: format!("secret/{}", object.secret_path.trim_matches('/')),
            object: VaultObject { mount: Some((mount, kv)), name, version, kind: ObjectKind::Secret },
            field,
            encoding,
            output: Output::Value,
            place,
        });
    }
    check_files(&files)?;
    Ok(MountPlan {
        source: Source::OpenBao(OpenBaoSource {
            address,
            namespace,
            role: role.to_string(),
            auth_mount_path: auth_mount_path.to_string(),
            audience,
        }),
        files,
        data_from: Vec::new(),
    })
}

fn check_mount_path(path: &str, place: &str) -> Result<()> {
    let ok = path.len() <= 256
        && path.trim_matches('/').split('/').all(|s| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        });
    if ok { Ok(()) } else { Err(Error::invalid(place, "not a path of letters, digits, '-', '_' and '.'")) }
}

/// Splits a Vault provider `secretPath` into the KV mount, its version and the secret's path:
/// `secret/data/app/db` is KV v2 (the first `data` element follows the mount), anything else is
/// KV v1 with the first element as the mount.
fn split_secret_path(path: &str, place: &str) -> Result<(String, KvVersionKey, String)> {
    let path = path.trim_matches('/');
    let elements: Vec<&str> = path.split('/').collect();
    if elements.iter().any(|e| e.is_empty() || *e == "." || *e == "..") {
        return Err(Error::invalid(place, "secretPath has an empty, '.' or '..' element"));
    }
    let bad_chars =
        |s: &str| !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' || b == b'/');
    if bad_chars(path) {
        return Err(Error::invalid(
            place,
            "secretPath holds characters other than letters, digits, '-', '_', '.' and '/'",
        ));
    }
    if let Some(at) = elements.iter().position(|e| *e == "data").filter(|&at| at > 0 && at + 1 < elements.len()) {
        return Ok((elements[..at].join("/"), KvVersionKey::V2, elements[at + 1..].join("/")));
    }
    if elements.len() < 2 {
        return Err(Error::invalid(place, "secretPath needs a mount and a secret (`secret/data/app` for KV v2)"));
    }
    Ok((elements[0].to_string(), KvVersionKey::V1, elements[1..].join("/")))
}

/// Parses a whole mount: pod info, tokens, credentials and the request.
pub fn mount_spec(attributes: &str, secrets: &str, permission_json: &str) -> Result<MountSpec> {
    let attributes = string_map(attributes, "attributes")?;
    let secrets = string_map(secrets, "secrets")?;
    let mode = permission(permission_json)?;
    let pod = pod_info(&attributes, &secrets)?;
    let request = request(&attributes, mode)?;
    Ok(MountSpec { pod, request, secrets: publish_secrets(secrets) })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// An unsigned JWT whose subject is `namespace/account`, with a recognisable secret part.
    fn jwt(namespace: &str, account: &str) -> String {
        use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
        let claims = json!({ "sub": format!("system:serviceaccount:{namespace}:{account}") });
        format!("eyJhbGciOiJSUzI1NiJ9.{}.secret-token-signature", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    fn pod_attributes() -> serde_json::Map<String, serde_json::Value> {
        let tokens =
            json!({ AZURE_AUDIENCE: { "token": jwt("team-a", "web"), "expirationTimestamp": "2030-01-01T00:00:00Z" } });
        json!({
            POD_NAME: "web-0", POD_NAMESPACE: "team-a", POD_UID: "1234", SERVICE_ACCOUNT: "web",
            TOKENS: tokens.to_string(),
        })
        .as_object()
        .cloned()
        .unwrap()
    }

    fn azure(objects: &str) -> String {
        let mut attributes = pod_attributes();
        attributes.insert("keyvaultName".into(), json!("kv-team-a"));
        attributes.insert("tenantID".into(), json!("tenant-1"));
        attributes.insert("clientID".into(), json!("client-1"));
        attributes.insert("objects".into(), json!(objects));
        serde_json::Value::Object(attributes).to_string()
    }

    fn azure_object(fields: &str) -> String {
        format!("array:\n  - |\n{}", fields.lines().map(|l| format!("    {l}\n")).collect::<String>())
    }

    fn parse(attributes: &str) -> Result<MountSpec> {
        mount_spec(attributes, "{}", "420")
    }

    fn files(attributes: &str) -> Vec<FileSpec> {
        match parse(attributes).unwrap().request {
            Request::Plan(plan) => plan.files,
            other => panic!("not a plan: {other:?}"),
        }
    }

    /// The error of `attributes`: its kind, and that its message names `place`.
    fn refused(attributes: &str, place: &str) -> Error {
        let error = parse(attributes).expect_err("must be refused");
        let message = error.to_string();
        assert!(message.contains(place), "{message:?} should name {place:?}");
        assert!(!message.contains("secret-token"), "a token leaked into {message:?}");
        assert!(!message.contains("eyJhbGciOiJSUzI1NiJ9"), "a token leaked into {message:?}");
        error
    }

    #[test]
    fn azure_form_as_the_azure_provider_names_files() {
        let objects = format!(
            "{}{}",
            azure_object("objectName: db-password\nobjectType: secret"),
            azure_object("objectName: api-key\nobjectAlias: API_KEY\nobjectVersion: abc123\nfilePermission: \"0600\"")
                .trim_start_matches("array:\n")
        );
        let spec = parse(&azure(&objects)).unwrap();
        assert_eq!(spec.pod.account(), "team-a/web");
        assert_eq!(spec.pod.token(AZURE_AUDIENCE).unwrap().as_str(), jwt("team-a", "web"));
        let Request::Plan(plan) = spec.request else { panic!("a plan") };
        assert!(matches!(&plan.source, Source::Azure(a) if a.client_id.as_deref() == Some("client-1")));
        assert_eq!(plan.files[0].path, "db-password");
        assert_eq!(plan.files[0].id, "secret/db-password");
        assert_eq!(plan.files[0].mode, 0o644, "the driver's permission");
        assert_eq!(plan.files[1].path, "API_KEY");
        assert_eq!(plan.files[1].mode, 0o600);
        assert_eq!(plan.files[1].object.version.as_deref(), Some("abc123"));
    }

    #[test]
    fn azure_object_types_and_formats_as_the_azure_provider_writes_them() {
        let objects = [
            "objectType: secret",
            "objectFormat: pfx\nobjectEncoding: base64",
            "objectType: CERT",
            "objectType: key\nobjectEncoding: hex",
        ]
        .iter()
        .enumerate()
        .map(|(i, fields)| azure_object(&format!("objectName: o{i}\n{fields}")).replace("array:\n", ""))
        .collect::<String>();
        let files = files(&azure(&format!("array:\n{objects}")));
        let outputs: Vec<_> = files.iter().map(|f| (f.object.kind, f.output, f.encoding, f.id.as_str())).collect();
        assert_eq!(
            outputs,
            [
                (ObjectKind::Secret, Output::AzureSecret, Encoding::Utf8, "secret/o0"),
                (ObjectKind::Secret, Output::Value, Encoding::Base64, "secret/o1"),
                (ObjectKind::Certificate, Output::Render(Format::Pem), Encoding::Utf8, "cert/o2"),
                (ObjectKind::Key, Output::Render(Format::Pem), Encoding::Utf8, "key/o3"),
            ]
        );
    }

    #[test]
    fn store_object_types_and_formats_follow_the_vault_secret_rules() {
        let store = |objects: &str| {
            let mut attributes = pod_attributes();
            attributes.insert("storeRef".into(), json!("kv"));
            attributes.insert("objects".into(), json!(objects));
            serde_json::Value::Object(attributes).to_string()
        };
        let files = files(&store(
            "- objectName: a\n- objectName: b\n  format: pfx\n- objectName: c\n  objectType: certificate\n  format: der\n- objectName: d\n  objectType: key\n",
        ));
        let outputs: Vec<_> = files.iter().map(|f| (f.object.kind, f.output, f.id.as_str())).collect();
        assert_eq!(
            outputs,
            [
                (ObjectKind::Secret, Output::Value, "secret/a"),
                (ObjectKind::Secret, Output::Render(Format::Pfx), "secret/b"),
                (ObjectKind::Certificate, Output::Render(Format::Der), "certificate/c"),
                // As stored is PEM for certificates and keys (the render crate's AsStored).
                (ObjectKind::Key, Output::Render(Format::AsStored), "key/d"),
            ]
        );
        for (objects, what) in [
            ("- objectName: a\n  objectType: cert\n", "objectType must be secret, certificate or key"),
            ("- objectName: a\n  format: jks\n", "format must be pem"),
            ("- objectName: a\n  objectType: key\n  format: der\n", "format must fit objectType"),
            ("- objectName: a\n  format: pem\n  property: p\n", "property"),
        ] {
            refused(&store(objects), what);
        }
    }

    #[test]
    fn tokens_in_secrets_come_first() {
        let mut attributes = pod_attributes();
        attributes.remove(TOKENS);
        let attributes: BTreeMap<String, String> =
            attributes.into_iter().map(|(k, v)| (k, v.as_str().unwrap().to_string())).collect();
        let secrets: BTreeMap<String, String> =
            [(TOKENS.to_string(), json!({ "vault": { "token": jwt("team-a", "web") } }).to_string())].into();
        let pod = pod_info(&attributes, &secrets).unwrap();
        assert_eq!(pod.token("vault").unwrap().as_str(), jwt("team-a", "web"));
        assert!(!publish_secrets(secrets).0.contains_key(TOKENS), "tokens are not credentials");
    }

    #[test]
    fn vault_provider_form() {
        let mut attributes = pod_attributes();
        attributes.insert("roleName".into(), json!("app"));
        attributes.insert("vaultAddress".into(), json!("http://127.0.0.1:8200/"));
        attributes.insert(
            "objects".into(),
            json!(
                "- objectName: db-user\n  secretPath: secret/data/app/db\n  secretKey: user\n- objectName: legacy\n  secretPath: kv1/app/legacy\n  secretArgs:\n    version: 3\n"
            ),
        );
        let files = files(&serde_json::Value::Object(attributes).to_string());
        assert_eq!(files[0].object.mount, Some(("secret".into(), KvVersionKey::V2)));
        assert_eq!(files[0].object.name, "app/db");
        assert_eq!(files[0].field.as_deref(), Some("user"));
        assert_eq!(files[0].id, "secret/secret/data/app/db");
        assert_eq!(files[1].object.mount, Some(("kv1".into(), KvVersionKey::V1)));
        assert_eq!(files[1].object.version.as_deref(), Some("3"));
    }

    #[test]
    fn store_and_vault_secret_forms() {
        let mut attributes = pod_attributes();
        attributes.insert("vaultSecret".into(), json!("db-files"));
        let spec = parse(&serde_json::Value::Object(attributes.clone()).to_string()).unwrap();
        assert_eq!(spec.request, Request::VaultSecret { name: "db-files".into() });
        attributes.remove("vaultSecret");
        attributes.insert(VAULTSECRET_ATTRIBUTE.into(), json!("db-files"));
        let spec = parse(&serde_json::Value::Object(attributes.clone()).to_string()).unwrap();
        assert_eq!(spec.request, Request::VaultSecret { name: "db-files".into() });
        attributes.remove(VAULTSECRET_ATTRIBUTE);
        attributes.insert("storeRef".into(), json!("shared"));
        attributes.insert("storeKind".into(), json!("ClusterVaultStore"));
        attributes.insert("objects".into(), json!("- objectName: app/db\n  fileName: db.json\n  property: password\n"));
        let files = files(&serde_json::Value::Object(attributes).to_string());
        assert_eq!(files[0].path, "db.json");
        assert_eq!(files[0].field.as_deref(), Some("password"));
    }

    #[test]
    fn bad_file_names_are_refused_with_their_place() {
        for (alias, why) in [
            ("../escape", "starts with '..'"),
            ("..data", "starts with '..'"),
            ("..hidden", "starts with '..'"),
            ("/etc/passwd", "absolute"),
            ("a/../../b", "'..' element"),
            ("a//b", "empty"),
            ("./a", "'.'"),
        ] {
            let objects = azure_object(&format!("objectName: db\nobjectAlias: \"{alias}\""));
            let error = refused(&azure(&objects), "objects.array[0]");
            assert!(matches!(error, Error::InvalidArgument { .. }), "{alias}: {error}");
            assert!(error.to_string().contains(why), "{alias}: {error}");
        }
    }

    #[test]
    fn duplicate_and_conflicting_names_are_refused() {
        let objects = format!(
            "{}{}",
            azure_object("objectName: one\nobjectAlias: same"),
            azure_object("objectName: two\nobjectAlias: same").trim_start_matches("array:\n")
        );
        let error = refused(&azure(&objects), "objects.array[1]");
        assert!(error.to_string().contains("objects.array[0]"), "names the first: {error}");
        let mut attributes = pod_attributes();
        attributes.insert("storeRef".into(), json!("kv"));
        attributes.insert("objects".into(), json!("- objectName: a\n- objectName: a/b\n"));
        refused(&serde_json::Value::Object(attributes).to_string(), "as a folder");
    }

    #[test]
    fn unknown_types_formats_and_encodings_are_refused() {
        for (fields, what) in [
            ("objectName: db\nobjectType: blob", "objectType"),
            ("objectName: db\nobjectFormat: jks", "objectFormat"),
            ("objectName: db\nobjectEncoding: rot13", "objectEncoding"),
            ("objectName: db\nobjectType: cert\nobjectFormat: pfx", "objectFormat pfx is for objectType secret"),
            ("objectName: db\nfilePermission: \"0999\"", "filePermission"),
            ("objectName: db\nfilePermission: \"4755\"", "filePermission"),
            ("objectName: db\nobjectColour: red", "objects.array[0]"),
            ("objectName: \"db/../x\"", "letters, digits and hyphens"),
        ] {
            let error = refused(&azure(&azure_object(fields)), what);
            assert!(matches!(error, Error::InvalidArgument { .. }), "{fields}: {error}");
        }
    }

    #[test]
    fn missing_pod_info_and_malformed_input_are_refused() {
        for key in [POD_NAME, POD_NAMESPACE, SERVICE_ACCOUNT] {
            let mut attributes = pod_attributes();
            attributes.remove(key);
            attributes.insert("storeRef".into(), json!("kv"));
            attributes.insert("objects".into(), json!("- objectName: a\n"));
            refused(&serde_json::Value::Object(attributes).to_string(), key);
        }
        refused("{not json", "attributes");
        refused(r#"{"a": 1}"#, "attributes");
        let mut attributes = pod_attributes();
        attributes.insert(TOKENS.into(), json!("{\"vault\": \"secret-token\"}"));
        attributes.insert("storeRef".into(), json!("kv"));
        attributes.insert("objects".into(), json!("- objectName: a\n"));
        refused(&serde_json::Value::Object(attributes).to_string(), TOKENS);
        refused(&azure("array: [unclosed"), "objects");
        refused(&azure("array:\n  - \"objectName: [\""), "objects.array[0]");
        assert!(mount_spec(&azure(&azure_object("objectName: db")), "{}", "\"not a mode\"").is_err());
        assert!(mount_spec(&azure(&azure_object("objectName: db")), "{}", "4096").is_err());
        assert_eq!(permission("\"384\"").unwrap(), 0o600);
        assert!(string_map("null", "secrets").unwrap().is_empty(), "the driver sends null for no secrets");
    }

    #[test]
    fn a_token_of_another_service_account_is_refused() {
        let mut attributes = pod_attributes();
        let foreign = json!({ "vault": { "token": jwt("team-a", "intruder") } }).to_string();
        attributes.insert(TOKENS.into(), json!(foreign));
        attributes.insert("storeRef".into(), json!("kv"));
        attributes.insert("objects".into(), json!("- objectName: a\n"));
        let error = refused(&serde_json::Value::Object(attributes.clone()).to_string(), "team-a/web");
        assert!(matches!(error, Error::PermissionDenied { .. }), "{error}");
        attributes.insert(TOKENS.into(), json!(json!({ "vault": { "token": "opaque-secret-token" } }).to_string()));
        let error = refused(&serde_json::Value::Object(attributes).to_string(), "not a service-account token");
        assert!(matches!(error, Error::InvalidArgument { .. }), "{error}");
    }

    #[test]
    fn oversize_input_is_refused() {
        let huge = format!("{{\"x\": \"{}\"}}", "a".repeat(MAX_INPUT_BYTES));
        refused(&huge, "attributes");
        let many: String = (0..=MAX_OBJECTS).map(|i| format!("- objectName: o{i}\n")).collect();
        let mut attributes = pod_attributes();
        attributes.insert("storeRef".into(), json!("kv"));
        attributes.insert("objects".into(), json!(many));
        refused(&serde_json::Value::Object(attributes).to_string(), "objects");
    }

    #[test]
    fn node_wide_and_tenant_file_credentials_are_refused() {
        let mut attributes: serde_json::Value = serde_json::from_str(&azure(&azure_object("objectName: db"))).unwrap();
        attributes["useVMManagedIdentity"] = json!("true");
        refused(&attributes.to_string(), "useVMManagedIdentity");
        let mut attributes = pod_attributes();
        attributes.insert("roleName".into(), json!("app"));
        attributes.insert("vaultCACertPath".into(), json!("/etc/shadow"));
        attributes.insert("objects".into(), json!("- objectName: a\n  secretPath: secret/data/a\n"));
        refused(&serde_json::Value::Object(attributes.clone()).to_string(), "vaultCACertPath");
        attributes.remove("vaultCACertPath");
        attributes.insert("objects".into(), json!("- objectName: a\n  secretPath: secret/data/../../sys/raw\n"));
        refused(&serde_json::Value::Object(attributes).to_string(), "objects[0]");
    }

    #[test]
    fn no_form_says_which_exist() {
        let error = refused(&serde_json::Value::Object(pod_attributes()).to_string(), "parameters");
        assert!(error.to_string().contains("keyvaultName"), "{error}");
    }
}
