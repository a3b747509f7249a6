//! `run -f VAULTSECRET -- CMD...`: local development with the cluster's mapping and no Kubernetes Secret. The
//! VaultSecret's objects are read with the developer's own identity (an Azure CLI token for Key Vault, or a Vault /
//! OpenBao token), rendered by the operator's code, and given to the command as environment variables, or as files
//! in a private temporary folder removed when the command ends. Nothing else is written to disk.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::Value;
use vaultsync_api::{
    ClusterVaultStore, VaultSecret, VaultStore,
    secret::{ObjectType, StoreKind},
    store::Provider,
};
use vaultsync_backend::{
    Backend, ObjectKind, ObjectRef, Principal,
    azure::{AzureEndpoint, AzureKeyVault, http_client},
    identity::fingerprint,
    openbao::{AuthMethod, KvMount, KvVersion, OpenBao},
    token::StaticToken,
};
use vaultsync_operator::vaultsecret::offline::{self, FullObject, ObjectValue, Values};
use zeroize::Zeroizing;

use crate::{Kube, Output, read_input};

pub const EXAMPLES: &str = "Examples:\n  kubectl vaultsync run -f vaultsecret.yaml -- ./server --port 8080\n  \
kubectl vaultsync run -f vaultsecret.yaml --files -- sh -c 'cat \"$VAULTSYNC_SECRETS_DIR/tls.crt\"'\n  \
kubectl vaultsync run -f vaultsecret.yaml --store store.yaml -- env\n\n\
Identity: Key Vault with a token from VAULTSYNC_ACCESS_TOKEN, --token-file, or `az account get-access-token`;\n\
Vault / OpenBao with VAULTSYNC_ACCESS_TOKEN, --token-file, VAULT_TOKEN, BAO_TOKEN or ~/.vault-token.\n\
Keys become environment variables with characters other than letters, digits and _ replaced by _.";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VaultSecret (YAML).
    #[arg(short = 'f', long = "filename")]
    pub file: PathBuf,
    /// The store (a VaultStore or ClusterVaultStore YAML); default: the one spec.storeRef names, from the cluster.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// A file holding the access token to read with (instead of the environment or the Azure CLI).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// ConfigMaps and Secrets the VaultSecret reads (templateFrom, passwords), as in `render --values`.
    #[arg(long)]
    pub values: Option<PathBuf>,
    /// Give the keys as files in a private temporary folder (`VAULTSYNC_SECRETS_DIR`) instead of variables.
    #[arg(long)]
    pub files: bool,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

pub async fn run(kube: Option<&Kube>, args: &Args) -> anyhow::Result<Output> {
    let text = read_input(&args.file)?;
    let vs: VaultSecret = serde_yaml::from_str(&text).context("reading the VaultSecret")?;
    let provider = provider(kube, &vs, args.store.as_deref()).await?;
    let token = token(&provider, args.token_file.as_deref())?;
    let backend = backend(&provider, token)?;
    let mut values: Values = match &args.values {
        Some(path) => serde_yaml::from_str(&read_input(path)?).context("reading the values")?,
        None => Values::default(),
    };
    read_objects(backend.as_ref(), &vs, &mut values).await?;
    let secret = offline::render(&vs, &values).map_err(|failed| anyhow::anyhow!("{failed}"))?;
    let code = if args.files {
        let dir = PrivateDir::new()?;
        for (key, value) in &secret.data {
            write_private(&dir.0.join(key), value.expose())?;
        }
        child(&args.command, &[("VAULTSYNC_SECRETS_DIR".into(), dir.0.display().to_string().into_bytes())]).await?
    } else {
        let vars: Vec<(String, Vec<u8>)> =
            secret.data.iter().map(|(k, v)| (env_name(k), v.expose().to_vec())).collect();
        child(&args.command, &vars).await?
    };
    Ok(Output { text: String::new(), code })
}

/// The store's provider: from `--store`, else from the cluster.
async fn provider(kube: Option<&Kube>, vs: &VaultSecret, file: Option<&Path>) -> anyhow::Result<Provider> {
    if let Some(file) = file {
        let value =
            Value::deserialize(serde_yaml::Deserializer::from_str(&read_input(file)?)).context("reading the store")?;
        return serde_json::from_value(value["spec"]["provider"].clone()).context("reading the store's provider");
    }
    let Some(kube) = kube else { bail!("name the store with --store FILE, or run with access to the cluster") };
    let name = &vs.spec.store_ref.name;
    Ok(match vs.spec.store_ref.kind {
        StoreKind::VaultStore => {
            let ns = vs.metadata.namespace.clone().unwrap_or_else(|| kube.namespace.clone());
            kube::Api::<VaultStore>::namespaced(kube.client.clone(), &ns).get(name).await?.spec.provider
        }
        StoreKind::ClusterVaultStore => {
            kube::Api::<ClusterVaultStore>::all(kube.client.clone()).get(name).await?.spec.provider
        }
    })
}

/// The developer's token for the store's vault.
fn token(provider: &Provider, file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(file) = file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        return Ok(Zeroizing::new(text.trim().to_string()));
    }
    if let Ok(token) = std::env::var("VAULTSYNC_ACCESS_TOKEN") {
        return Ok(Zeroizing::new(token));
    }
    if let Some(azure) = &provider.azure_key_vault {
        // The vault's resource is its URL without the vault's name: https://vault.azure.net for public Azure.
        let host = azure.vault_url.trim_start_matches("https://").trim_end_matches('/');
        let resource = format!("https://{}", host.split_once('.').map_or(host, |(_, rest)| rest));
        let out = std::process::Command::new("az")
            .args(["account", "get-access-token", "--resource", &resource, "--tenant", &azure.tenant_id])
            .args(["--query", "accessToken", "--output", "tsv"])
            .output()
            .context("running the Azure CLI (az) for a token; or set VAULTSYNC_ACCESS_TOKEN")?;
        if !out.status.success() {
            bail!("az account get-access-token failed (run az login): {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        return Ok(Zeroizing::new(String::from_utf8(out.stdout)?.trim().to_string()));
    }
    for name in ["VAULT_TOKEN", "BAO_TOKEN"] {
        if let Ok(token) = std::env::var(name) {
            return Ok(Zeroizing::new(token));
        }
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let text = std::fs::read_to_string(home.join(".vault-token"))
        .context("no token: set VAULT_TOKEN or BAO_TOKEN, or log in (bao login / vault login)")?;
    Ok(Zeroizing::new(text.trim().to_string()))
}

fn backend(provider: &Provider, token: Zeroizing<String>) -> anyhow::Result<Arc<dyn Backend>> {
    let print = fingerprint(token.as_bytes());
    if let Some(azure) = &provider.azure_key_vault {
        let http = http_client(azure.ca_bundle.as_deref())?;
        let endpoint = Arc::new(AzureEndpoint::new(http, &azure.vault_url, &azure.api_version)?);
        let credential = Arc::new(StaticToken(token.to_string()));
        return Ok(Arc::new(AzureKeyVault::new(endpoint, credential, Principal::StaticToken { fingerprint: print })));
    }
    let Some(bao) = &provider.openbao else { bail!("the store names no provider") };
    let location = KvMount {
        server: bao.server.clone(),
        insecure_http: bao.insecure_http,
        namespace: bao.namespace.clone(),
        mount: bao.mount.clone(),
        kv_version: if bao.kv_version == 1 { KvVersion::V1 } else { KvVersion::V2 },
    };
    let http = http_client(bao.ca_bundle.as_deref())?;
    let principal = Principal::OpenBaoToken { fingerprint: print };
    Ok(Arc::new(OpenBao::new(http, location, AuthMethod::Token(token), principal)?))
}

/// Reads every object the VaultSecret names into `values`, for the offline render.
async fn read_objects(backend: &dyn Backend, vs: &VaultSecret, values: &mut Values) -> anyhow::Result<()> {
    // Each object, with the tags a list gave (for dataFrom.find.tags).
    let mut wanted: Vec<(ObjectRef, BTreeMap<String, String>)> = Vec::new();
    for item in &vs.spec.data {
        let kind = match item.remote_ref.object_type {
            ObjectType::Secret => ObjectKind::Secret,
            ObjectType::Certificate => ObjectKind::Certificate,
            ObjectType::Key => ObjectKind::Key,
        };
        let object = ObjectRef::secret(item.remote_ref.name.clone(), item.remote_ref.version.clone()).of_kind(kind);
        wanted.push((object, BTreeMap::new()));
    }
    for entry in &vs.spec.data_from {
        if let Some(extract) = &entry.extract {
            wanted.push((ObjectRef::secret(extract.name.clone(), extract.version.clone()), BTreeMap::new()));
        }
        if let Some(find) = &entry.find {
            for listed in backend.list(&find.path).await.with_context(|| format!("listing {:?}", find.path))? {
                wanted.push((ObjectRef::latest(listed.name), listed.tags));
            }
        }
    }
    for (object, tags) in wanted {
        let fetched = backend.get(&object).await.with_context(|| format!("reading {object}"))?;
        let full = FullObject {
            base64: Some(base64::engine::general_purpose::STANDARD.encode(fetched.value.expose())),
            content_type: fetched.content_type.clone(),
            version: Some(fetched.version.clone()),
            tags,
            value: None,
        };
        values.objects.insert(object.name.clone(), ObjectValue::Full(full));
    }
    Ok(())
}

/// A key as an environment variable name.
fn env_name(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

/// Runs the command with `vars` added to the environment; its exit code. Ctrl-C and SIGTERM reach the command (it is
/// in the terminal's process group, or is sent them) and this process waits for it, so the private folder is still
/// removed.
async fn child(command: &[String], vars: &[(String, Vec<u8>)]) -> anyhow::Result<i32> {
    use std::os::unix::ffi::OsStrExt as _;
    use tokio::signal::unix::{SignalKind, signal};
    let (program, arguments) = command.split_first().context("no command")?;
    let mut command = tokio::process::Command::new(program);
    command.args(arguments);
    for (name, value) in vars {
        command.env(name, std::ffi::OsStr::from_bytes(value));
    }
    let (mut interrupt, mut terminate) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let mut child = command.spawn().with_context(|| format!("running {program}"))?;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status?,
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {
                if let Some(pid) = child.id() {
                    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
                }
            }
        }
    };
    Ok(status.code().unwrap_or(1))
}

/// A folder only this user can read, removed with everything in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> anyhow::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("vaultsync-run-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new().mode(0o700).create(&path).context("creating a private folder")?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_private(path: &Path, value: &[u8]) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(value)?;
    Ok(())
}
