//! `make demo`: vaultsync working end to end on this machine. Starts a local Kubernetes control
//! plane and the backend test servers, puts a secret in the (test) Azure Key Vault, applies a
//! `VaultStore` and a `VaultSecret`, runs the operator in process, shows the Kubernetes Secret it
//! writes, rotates the vault secret and shows the new value arriving, then waits for Ctrl-C with
//! everything still running so it can be explored with kubectl. Only demo values are used.
//!
//! `--node` (`make demo NODE=1`, needs root) adds a node: a pod reads the Secret from its environment and a
//! file and prints what it sees, before the rotation and, rolled by the operator, after it.

use std::{
    fs::{self, File},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use clap::Parser as _;
use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Namespace, Pod, Secret, ServiceAccount},
    },
    jiff::Timestamp,
};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::signal::unix::{SignalKind, signal};
use vaultsync_api::{VaultSecret, VaultStore};
use vaultsync_e2e::{
    ControlPlane,
    entra::{EntraServer, Federation},
    install_crds,
    keyvault::KeyVaultServer,
    node,
    openbao::{self, OpenBao},
    process::{free_port, log_dir, tool},
    tls::TestCa,
};

const NAMESPACE: &str = "demo";
const READER_SA: &str = "vaultsync-reader";
/// The Entra application the reader account is federated with (a demo value).
const CLIENT_ID: &str = "demo-reader-app";
const TENANT_ID: &str = "demo-tenant";
const AUDIENCE: &str = "api://AzureADTokenExchange";
/// The access token the Entra test server issues and the Key Vault test server demands.
const ACCESS_TOKEN: &str = "demo-access-token";
const STORE: &str = "kv";
const VAULT_SECRET: &str = "db";
const SECRET_KEY: &str = "password";
const VAULT_OBJECT: &str = "demo-db-password";
const REFRESH_INTERVAL: &str = "15s";
const FORCE_SYNC: &str = "vaultsync.dev/force-sync";
const FIELD_MANAGER: &str = "vaultsync-demo";
const STEPS: usize = 6;

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(run());
    // Do not wait for a control plane that is still starting: it stops when this process exits.
    runtime.shutdown_background();
    result
}

async fn run() -> anyhow::Result<()> {
    // Registered first, so Ctrl-C at any point stops the demo cleanly.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let files = DemoFiles::create()?;
    init_logging(&files.operator_log)?;

    println!("vaultsync demo: a Kubernetes Secret kept in sync with an Azure Key Vault secret, all on this machine.");
    println!("Operator log: {}", files.operator_log.display());
    println!("Control plane and OpenBao logs: {}", log_dir().display());

    // Biased: the operator's controllers also stop on Ctrl-C, and that is a stop, not a failure.
    let outcome = tokio::select! {
        biased;
        _ = interrupt.recv() => Ok(()),
        _ = terminate.recv() => Ok(()),
        result = demo(&files, std::env::args().any(|a| a == "--node")) => result,
    };
    // A start interrupted by Ctrl-C fails on a background thread now; that is no news.
    std::panic::set_hook(Box::new(|_| {}));
    println!();
    println!("Stopping: the operator, the test servers, OpenBao and the control plane (its data is removed).");
    drop(files);
    if let Err(e) = &outcome {
        eprintln!("The demo failed: {e:#}");
    }
    outcome
}

/// The demo's temporary folder: the operator log (kept after exit) and the Key Vault CA file
/// (removed on exit).
struct DemoFiles {
    dir: PathBuf,
    operator_log: PathBuf,
    ca_file: PathBuf,
}

impl DemoFiles {
    fn create() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("vaultsync-demo-{}", std::process::id()));
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).with_context(|| format!("{}", dir.display()))?;
        let ca_file = dir.join("keyvault-ca.pem");
        let mut ca = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&ca_file)
            .with_context(|| format!("writing {}", ca_file.display()))?;
        ca.write_all(TestCa::shared().ca_pem().as_bytes())?;
        Ok(Self { operator_log: dir.join("operator.log"), ca_file, dir })
    }
}

impl Drop for DemoFiles {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.ca_file);
        println!("Removed {}; the operator log stays in {}.", self.ca_file.display(), self.dir.display());
    }
}

/// The operator's log lines go to a file, so they do not interleave with the narrative.
fn init_logging(path: &Path) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init()
        .map_err(|e| anyhow!("setting up logging: {e}"))
}

fn step(n: usize, title: &str) {
    println!();
    println!("[{n}/{STEPS}] {title}");
}

fn say(text: impl std::fmt::Display) {
    println!("      {text}");
}

async fn demo(files: &DemoFiles, with_node: bool) -> anyhow::Result<()> {
    // 1. The environment.
    step(1, "Starting a local Kubernetes control plane, the Key Vault and Entra test servers, and OpenBao");
    let started = Instant::now();
    let control_plane = tokio::task::spawn_blocking(move || match with_node {
        true => ControlPlane::shared_with_node(),
        false => ControlPlane::shared(),
    });
    let bao = tokio::task::spawn_blocking(OpenBao::shared);
    let control_plane = control_plane.await.map_err(|e| anyhow!("the control plane did not start: {e}"))?;
    let bao = bao.await.map_err(|e| anyhow!("OpenBao did not start: {e}"))?;
    let client = control_plane.client().await;
    let federation = Federation {
        client_id: CLIENT_ID.into(),
        subject: format!("system:serviceaccount:{NAMESPACE}:{READER_SA}"),
        audience: AUDIENCE.into(),
        access_token: ACCESS_TOKEN.into(),
    };
    // The vault's 401 challenge names the store's tenant; Entra issues tokens for the vault's resource.
    let vault = KeyVaultServer::builder().authority("https://login.microsoftonline.com", TENANT_ID).start().await?;
    let entra = EntraServer::builder(Some(client.clone()))
        .federation(federation.clone())
        .resource(vault.challenge_resource())
        .start()
        .await?;
    // Like Azure: only a caller with a token from Entra gets in.
    vault.require_bearer(Some(ACCESS_TOKEN.into()));
    say(format!(
        "Kubernetes  {}  (etcd, kube-apiserver, kube-controller-manager; {})",
        control_plane.server_url(),
        if with_node { "a node: containerd, a kubelet, kube-scheduler" } else { "no kubelet" }
    ));
    say(format!("Key Vault   {}  (the project's Azure Key Vault secrets-API test server)", vault.url()));
    say(format!("Entra ID    {}  (test token endpoint for workload identity)", entra.authority_host()));
    say(format!("OpenBao     {}  (dev server; not used by this walkthrough)", bao.addr));
    install_crds(&client).await;
    let crds: Vec<String> = vaultsync_api::crds().into_iter().filter_map(|c| c.metadata.name).collect();
    say(format!("Installed the CRDs {}", crds.join(", ")));
    say(format!("Ready in {:.1}s", started.elapsed().as_secs_f64()));

    // 2. The vault secret.
    step(2, "Putting a secret in the vault");
    let version = vault.set_secret(VAULT_OBJECT, "demo-password-v1");
    say(format!("{VAULT_OBJECT} = demo-password-v1  (version {version})"));

    // 3. What a user writes.
    step(3, "Telling vaultsync what to sync (what you would write and `kubectl apply`)");
    let namespace =
        Namespace { metadata: ObjectMeta { name: Some(NAMESPACE.into()), ..Default::default() }, ..Default::default() };
    created(Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await)
        .context("creating the namespace")?;
    let account = ServiceAccount {
        metadata: ObjectMeta { name: Some(READER_SA.into()), ..Default::default() },
        ..Default::default()
    };
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    created(accounts.create(&PostParams::default(), &account).await).context("creating the service account")?;
    say(format!("Namespace {NAMESPACE} with service account {READER_SA}."));
    say(format!("Workload identity: Entra trusts {} tokens (audience {AUDIENCE})", federation.subject));
    say(format!("as application {CLIENT_ID}, and Key Vault lets that application read secrets."));
    say("The operator asks Kubernetes for a token of that account and trades it for a Key Vault token.");
    let store = json!({
        "apiVersion": "vaultsync.dev/v1alpha1",
        "kind": "VaultStore",
        "metadata": { "name": STORE, "namespace": NAMESPACE },
        "spec": { "provider": { "azureKeyVault": {
            "vaultUrl": vault.url(),
            "tenantId": TENANT_ID,
            "cloud": "Custom",
            "authorityHost": entra.authority_host(),
            "caBundle": TestCa::shared().ca_pem(),
            "auth": { "workloadIdentity": { "serviceAccountRef": { "name": READER_SA }, "clientId": CLIENT_ID } },
        }}},
    });
    let vault_secret = json!({
        "apiVersion": "vaultsync.dev/v1alpha1",
        "kind": "VaultSecret",
        "metadata": { "name": VAULT_SECRET, "namespace": NAMESPACE },
        "spec": {
            "storeRef": { "name": STORE },
            "refreshInterval": REFRESH_INTERVAL,
            "data": [{ "secretKey": SECRET_KEY, "remoteRef": { "name": VAULT_OBJECT } }],
        },
    });
    let stores: Api<VaultStore> = Api::namespaced(client.clone(), NAMESPACE);
    let vault_secrets: Api<VaultSecret> = Api::namespaced(client.clone(), NAMESPACE);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    stores.patch(STORE, &apply, &Patch::Apply(&store)).await.context("applying the VaultStore")?;
    vault_secrets
        .patch(VAULT_SECRET, &apply, &Patch::Apply(&vault_secret))
        .await
        .context("applying the VaultSecret")?;
    println!();
    print!("{}", indent(&to_yaml(&shorten_ca_bundle(store)), 6));
    println!("      ---");
    print!("{}", indent(&to_yaml(&vault_secret), 6));
    println!();
    say(format!("(caBundle shortened here: it is the test servers' CA, also in {})", files.ca_file.display()));
    say(format!(
        "The VaultSecret asks for Secret {NAMESPACE}/{VAULT_SECRET} with key {SECRET_KEY} from {VAULT_OBJECT},"
    ));
    say(format!("read again every {REFRESH_INTERVAL}."));

    // 4. The operator.
    step(4, "Running the operator");
    let metrics_addr = format!("127.0.0.1:{}", free_port()?);
    let args = vaultsync_operator::Args::try_parse_from([
        "vaultsync-operator",
        "--namespace",
        NAMESPACE,
        "--leader-elect",
        "false",
        "--metrics-addr",
        &metrics_addr,
    ])?;
    let mut operator = AbortOnDrop(tokio::spawn(vaultsync_operator::run_with_client(client.clone(), args)));
    say(format!("In process, watching all namespaces; metrics at http://{metrics_addr}/metrics"));
    say(format!("(also /healthz and /readyz). Its log: {}", files.operator_log.display()));
    say(format!("Waiting for Secret {NAMESPACE}/{VAULT_SECRET} ..."));
    let waited = Instant::now();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for(Duration::from_secs(60), "the Secret to be written", &mut operator, || async {
        synced(&secrets, &vault_secrets, "demo-password-v1", &version).await
    })
    .await?;
    say(format!(
        "Secret {NAMESPACE}/{VAULT_SECRET} appeared after {:.1}s: {SECRET_KEY} = {}",
        waited.elapsed().as_secs_f64(),
        secret_value(&secrets).await?.unwrap_or_default()
    ));
    let status = vault_secrets.get(VAULT_SECRET).await?.status.unwrap_or_default();
    say(format!("VaultSecret {VAULT_SECRET} status (versions and times, never values):"));
    print_status(&status);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    if with_node {
        let image = control_plane.import_image(node::WORKLOAD_IMAGE);
        let mut deployment =
            node::workload_deployment("app", &image, VAULT_SECRET, SECRET_KEY, json!({ RELOAD: "true" }));
        deployment.metadata.namespace = Some(NAMESPACE.into());
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
        created(deployments.create(&PostParams::default(), &deployment).await).context("creating the Deployment")?;
        say(format!("Deployment {NAMESPACE}/app (label {RELOAD}=\"true\") reads the Secret from $VALUE and a file:"));
        show_pod_reading(&pods, "demo-password-v1", &mut operator).await?;
    }

    // 5. Rotation.
    step(5, "Rotating the secret in the vault");
    let refresh_due = status.refresh_time.as_deref().and_then(|t| t.parse::<Timestamp>().ok());
    let rotated = Instant::now();
    let version = vault.set_secret(VAULT_OBJECT, "demo-password-v2");
    say(format!("{VAULT_OBJECT} = demo-password-v2  (version {version})"));
    match refresh_due {
        Some(due) => say(format!(
            "Nobody tells the operator. It reads the vault again at refreshTime, in {:.1}s ...",
            due.duration_since(Timestamp::now()).as_secs_f64().max(0.0)
        )),
        None => say("Nobody tells the operator. It reads the vault again at refreshTime ..."),
    }
    wait_for(Duration::from_secs(45), "the scheduled refresh", &mut operator, || async {
        synced(&secrets, &vault_secrets, "demo-password-v2", &version).await
    })
    .await?;
    say(format!(
        "Secret {NAMESPACE}/{VAULT_SECRET}: {SECRET_KEY} = {}  ({:.1}s after the rotation, by the scheduled refresh)",
        secret_value(&secrets).await?.unwrap_or_default(),
        rotated.elapsed().as_secs_f64()
    ));
    println!();
    say(format!("Not willing to wait? A new value of the annotation {FORCE_SYNC} makes it read the vault now:"));
    say(format!(
        "  kubectl -n {NAMESPACE} annotate vaultsecret {VAULT_SECRET} {FORCE_SYNC}=\"$(date +%s)\" --overwrite"
    ));
    let rotated = Instant::now();
    let version = vault.set_secret(VAULT_OBJECT, "demo-password-v3");
    say(format!("{VAULT_OBJECT} = demo-password-v3  (version {version}), and annotating ..."));
    let stamp = Timestamp::now().as_second().to_string();
    let annotation = json!({ "metadata": { "annotations": { FORCE_SYNC: stamp } } });
    vault_secrets
        .patch(VAULT_SECRET, &PatchParams::default(), &Patch::Merge(&annotation))
        .await
        .context("annotating the VaultSecret")?;
    wait_for(Duration::from_secs(20), "the forced sync", &mut operator, || async {
        synced(&secrets, &vault_secrets, "demo-password-v3", &version).await
    })
    .await?;
    say(format!(
        "Secret {NAMESPACE}/{VAULT_SECRET}: {SECRET_KEY} = {}  ({:.1}s after the rotation, forced)",
        secret_value(&secrets).await?.unwrap_or_default(),
        rotated.elapsed().as_secs_f64()
    ));
    if with_node {
        say("The operator rolled the Deployment: a new pod reads the new value.");
        show_pod_reading(&pods, "demo-password-v3", &mut operator).await?;
    }

    // 6. Exploring.
    step(6, "Look around; everything keeps running until Ctrl-C");
    let kubectl = tool("kubectl")?;
    say("Kubernetes:");
    say(format!("  export KUBECONFIG={}", control_plane.kubeconfig_path().display()));
    say(format!("  alias kubectl={}", kubectl.display()));
    say(format!("  kubectl -n {NAMESPACE} get vaultsecrets,vaultstores,secrets"));
    say(format!("  kubectl -n {NAMESPACE} describe vaultsecret {VAULT_SECRET}"));
    say(format!("  kubectl -n {NAMESPACE} get secret {VAULT_SECRET} -o jsonpath='{{.data.{SECRET_KEY}}}' | base64 -d"));
    say(format!("  ({NAMESPACE}/vaultsync-hmac-key is the operator's key for the status digest.)"));
    say(format!("Key Vault: {}  CA file {}", vault.url(), files.ca_file.display()));
    say("  set a new value and watch it arrive within about 15s:");
    say(format!(
        "  curl --cacert {} -H 'Authorization: Bearer {ACCESS_TOKEN}' -H 'Content-Type: application/json' \\",
        files.ca_file.display()
    ));
    say(format!(
        "    -X PUT -d '{{\"value\":\"demo-password-v4\"}}' '{}/secrets/{VAULT_OBJECT}?api-version=7.5'",
        vault.url()
    ));
    say(format!("Operator: curl -s http://{metrics_addr}/metrics | grep vaultsync_syncs_total"));
    say(format!("  log {}", files.operator_log.display()));
    say(format!("OpenBao: {} (dev server, KV v2 at secret/)", bao.addr));
    say(format!(
        "  BAO_ADDR={} BAO_TOKEN={} {} kv list secret/",
        bao.addr,
        openbao::ROOT_TOKEN,
        openbao::bao_binary().display()
    ));
    println!();
    println!("Press Ctrl-C to stop; everything started here is stopped and its data removed.");
    // The operator returns only when it is told to stop (Ctrl-C, SIGTERM).
    match (&mut operator.0).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.context("the operator stopped")),
        Err(e) => bail!("the operator stopped: {e}"),
    }
}

/// The label that makes the operator roll a workload when a Secret it uses changes.
const RELOAD: &str = "vaultsync.dev/reload";

/// Waits for a ready pod of the Deployment that prints `value` from both its environment and its file, and shows
/// what it printed (read through the apiserver from the kubelet, like `kubectl logs`).
async fn show_pod_reading(pods: &Api<Pod>, value: &str, operator: &mut AbortOnDrop) -> anyhow::Result<()> {
    let wanted = node::workload_lines(SECRET_KEY, value);
    let found = std::sync::Mutex::new(None);
    wait_for(Duration::from_secs(120), "a pod that reads the value", operator, || async {
        let list = pods.list(&ListParams::default().labels("app=app")).await?;
        for pod in list.items.iter().filter(|p| node::pod_ready(p)) {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let log = pods.logs(&name, &Default::default()).await.unwrap_or_default();
            if wanted.iter().all(|w| log.lines().any(|l| l == w)) {
                *found.lock().map_err(|_| anyhow!("lock"))? = Some((name, log));
                return Ok(true);
            }
        }
        Ok(false)
    })
    .await?;
    let (name, log) = found.into_inner().map_err(|_| anyhow!("lock"))?.unwrap_or_default();
    say(format!("kubectl -n {NAMESPACE} logs {name}:"));
    for line in log.lines() {
        say(format!("  {line}"));
    }
    Ok(())
}

/// An answer to a create call, where "it exists already" is fine.
fn created<T>(result: kube::Result<T>) -> kube::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The operator task, aborted when the demo ends however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<anyhow::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `check` every 100 ms until it holds; fails after `timeout`, or if the operator stops.
async fn wait_for<F, Fut>(timeout: Duration, what: &str, operator: &mut AbortOnDrop, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if operator.0.is_finished() {
            let outcome = (&mut operator.0).await;
            let reason = match outcome {
                Ok(Ok(())) => "it returned".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => e.to_string(),
            };
            bail!("the operator stopped while waiting for {what}: {reason}");
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}; see the operator log");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the Secret holds `value` and the VaultSecret's status shows `version`.
async fn synced(
    secrets: &Api<Secret>,
    vault_secrets: &Api<VaultSecret>,
    value: &str,
    version: &str,
) -> anyhow::Result<bool> {
    if secret_value(secrets).await?.as_deref() != Some(value) {
        return Ok(false);
    }
    let status = vault_secrets.get(VAULT_SECRET).await?.status.unwrap_or_default();
    Ok(status.versions.get(SECRET_KEY).map(String::as_str) == Some(version))
}

/// The decoded value of the demo Secret's key, if the Secret exists.
async fn secret_value(secrets: &Api<Secret>) -> anyhow::Result<Option<String>> {
    let secret = secrets.get_opt(VAULT_SECRET).await?;
    let value = secret.and_then(|s| s.data).and_then(|mut d| d.remove(SECRET_KEY));
    Ok(value.map(|v| String::from_utf8_lossy(&v.0).into_owned()))
}

fn print_status(status: &vaultsync_api::secret::VaultSecretStatus) {
    for condition in &status.conditions {
        say(format!("  {:<12}{} ({}): {}", condition.type_, condition.status, condition.reason, condition.message));
    }
    for (key, version) in &status.versions {
        say(format!("  {:<12}{key}: {version}", "versions"));
    }
    say(format!("  {:<12}{}", "syncedAt", status.synced_at.as_deref().unwrap_or("-")));
    say(format!(
        "  {:<12}{}  (the next read of the vault: {REFRESH_INTERVAL} later, plus up to 10% jitter)",
        "refreshTime",
        status.refresh_time.as_deref().unwrap_or("-")
    ));
}

/// A copy of a VaultStore manifest with its CA bundle cut to a few characters, for printing.
fn shorten_ca_bundle(mut store: Value) -> Value {
    let bundle = &mut store["spec"]["provider"]["azureKeyVault"]["caBundle"];
    if let Some(pem) = bundle.as_str() {
        let lines: Vec<&str> = pem.lines().collect();
        if lines.len() > 3 {
            let body: String = lines[1].chars().take(24).collect();
            *bundle = Value::String(format!("{}\n{body}...\n{}\n", lines[0], lines[lines.len() - 1]));
        }
    }
    store
}

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|line| format!("{pad}{line}\n")).collect()
}

/// YAML for a JSON manifest: block style, keys in the order serde_json keeps them (sorted, as
/// kubectl prints them), multi-line strings as literal blocks.
fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    yaml_block(value, 0, &mut out);
    out
}

fn yaml_block(value: &Value, level: usize, out: &mut String) {
    let pad = "  ".repeat(level);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                out.push_str(&format!("{pad}{key}:"));
                yaml_after_key(item, level, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                out.push_str(&format!("{pad}- "));
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        // The first key goes on the dash line, the rest line up under it.
                        let mut nested = String::new();
                        yaml_block(item, level + 1, &mut nested);
                        out.push_str(nested.trim_start());
                    }
                    _ => out.push_str(&format!("{}\n", yaml_scalar(item))),
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", yaml_scalar(value))),
    }
}

fn yaml_after_key(item: &Value, level: usize, out: &mut String) {
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            yaml_block(item, level + 1, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            yaml_block(item, level + 1, out);
        }
        Value::String(text) if text.contains('\n') => {
            out.push_str(if text.ends_with('\n') { " |\n" } else { " |-\n" });
            let pad = "  ".repeat(level + 1);
            for line in text.lines() {
                out.push_str(&format!("{pad}{line}\n"));
            }
        }
        _ => out.push_str(&format!(" {}\n", yaml_scalar(item))),
    }
}

/// A scalar, quoted (JSON style, which YAML reads) when plain style could be misread.
fn yaml_scalar(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        Value::String(text) => {
            let plain = !text.is_empty()
                && text.trim() == text
                && !text.contains(": ")
                && !text.contains(" #")
                && !text.starts_with(|c: char| "-?:,[]{}#&*!|>'\"%@`".contains(c))
                && !matches!(
                    text.to_ascii_lowercase().as_str(),
                    "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "~"
                )
                && text.parse::<f64>().is_err()
                && !text.chars().any(char::is_control);
            if plain { text.clone() } else { Value::String(text.clone()).to_string() }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_of_a_manifest() {
        let manifest = json!({
            "apiVersion": "v1",
            "kind": "Thing",
            "metadata": { "name": "x" },
            "spec": {
                "pem": "line1\nline2\n",
                "interval": "15s",
                "flag": "true",
                "count": 3,
                "empty": {},
                "items": [{ "a": "1", "b": { "c": "d" } }, "plain"],
            },
        });
        let expected = "apiVersion: v1\nkind: Thing\nmetadata:\n  name: x\nspec:\n  count: 3\n  empty: {}\n  \
                        flag: \"true\"\n  interval: 15s\n  items:\n    - a: \"1\"\n      b:\n        c: d\n    - plain\n  \
                        pem: |\n    line1\n    line2\n";
        assert_eq!(to_yaml(&manifest), expected);
    }
}
