//! Shared setup for the operator's integration tests: a fresh namespace on the real control
//! plane, the Key Vault and Entra test servers, a store that uses workload identity, and the
//! operator itself running in process, scoped to the test's namespace.

#![allow(dead_code)] // each test binary uses a different part

use std::{sync::Mutex, time::Duration};

use clap::Parser as _;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use vaultsync_api::{VaultSecret, VaultStore};
use vaultsync_e2e::{
    TestNamespace, azure::AzureVault, entra::EntraServer, eventually, install_crds, keyvault::KeyVaultServer,
};
use vaultsync_operator::Args;

#[allow(unused_imports)] // each test binary uses a different part
pub use vaultsync_e2e::azure::{CLIENT_ID, READER_SA, TENANT};

/// Everything a test needs.
pub struct Env {
    pub ns: TestNamespace,
    /// Where the operator serves /metrics, /healthz and /readyz.
    pub metrics_port: u16,
    pub vault: KeyVaultServer,
    pub entra: EntraServer,
    /// A client with exactly the chart's rights for the operator (its service account's token): every operator a
    /// test runs uses it, so a right the chart lacks fails the test by behaviour.
    pub operator_client: kube::Client,
    operator: Option<tokio::task::JoinHandle<()>>,
    /// Secret values the test used outside the Key Vault test server (OpenBao values, credentials): scanned for
    /// by [`Env::finish`] along with every value of the vault.
    values: Mutex<Vec<String>>,
    finished: bool,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(op) = self.operator.take() {
            op.abort();
        }
        if !std::thread::panicking() {
            vaultsync_e2e::liveness::check();
            assert!(self.finished, "a test must end with `env.finish().await`, which scans for leaked values");
        } else {
            // A failed test: keep the operator's logs (of this test binary) next to the other test logs.
            let file = vaultsync_e2e::process::log_dir().join(format!("operator-{}.log", self.ns.name));
            if std::fs::write(&file, vaultsync_e2e::logs::text()).is_ok() {
                eprintln!("the operator's logs: {}", file.display());
            }
        }
    }
}

/// Captures the logs of every operator run in this test binary, to scan for secret values.
fn capture_logs() {
    vaultsync_e2e::logs::capture();
}

/// Fails if any of `values` appears in the captured operator logs; returns the bytes scanned.
pub fn assert_logs_free_of(values: &[&str]) -> usize {
    let text = vaultsync_e2e::logs::text();
    assert!(!text.is_empty(), "the operator logged nothing: the scan would prove nothing");
    assert_free_of(&text, "the operator's logs", values);
    text.len()
}

/// Appends one test's leak scan to the run's report (`leak-scan.tsv` in Cargo's temporary folder: the test, the
/// values scanned for, the bytes scanned), which `make test` sums up (scripts/leak-report.sh).
pub fn record_leak_scan(test: &str, values: usize, bytes: usize) {
    use std::io::Write as _;
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("leak-scan.tsv");
    if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
        // One write of the whole line: test binaries run at once append to the same file.
        let _ = file.write_all(format!("{test}\t{values}\t{bytes}\n").as_bytes());
    }
}

/// Fails if any of `values` appears in `text`; `what` names where the text came from.
fn assert_free_of(text: &str, what: &str, values: &[&str]) {
    for value in values {
        assert!(!text.contains(value), "a secret value appears in {what} ({} bytes scanned)", text.len());
    }
}

impl Env {
    /// A namespace with the reader service account, the test servers, a VaultStore `kv` using
    /// workload identity, and the operator running.
    pub async fn start(prefix: &str) -> Env {
        capture_logs();
        let ns = TestNamespace::new(prefix).await;
        install_crds(&ns.client).await;
        let AzureVault { vault, entra } = AzureVault::start(&ns).await;
        let metrics_port = vaultsync_e2e::process::free_port().expect("a free port");
        let operator_client = vaultsync_e2e::chart::operator_client(&ns, &[]).await;
        let mut env = Env {
            ns,
            metrics_port,
            vault,
            entra,
            operator_client,
            operator: None,
            values: Mutex::default(),
            finished: false,
        };
        env.apply_store("kv", env.store_spec()).await;
        env.start_operator();
        env
    }

    /// The spec of a store on the test vault, using workload identity with the reader account.
    pub fn store_spec(&self) -> Value {
        vaultsync_e2e::azure::store_spec(&self.vault, &self.entra)
    }

    pub fn operator_args(&self) -> Args {
        Args::parse_from([
            "vaultsync-operator",
            "--namespace",
            &self.ns.name,
            "--watch-namespace",
            &self.ns.name,
            "--leader-elect",
            "false",
            "--metrics-addr",
            &format!("127.0.0.1:{}", self.metrics_port),
            "--pod-name",
            "test-operator",
        ])
    }

    /// The operator with its Event Grid endpoint on (a free port, a key file in a temp folder), and the store `kv`.
    pub async fn start_with_event_grid(prefix: &str) -> (Env, EventGrid) {
        let mut env = Env::start(prefix).await;
        env.stop_operator().await;
        let grid = EventGrid::new(&env.ns.name);
        let mut args = env.operator_args();
        grid.configure(&mut args);
        env.start_operator_with(args);
        grid.wait_listening().await;
        (env, grid)
    }

    pub fn start_operator(&mut self) {
        let args = self.operator_args();
        self.start_operator_with(args);
    }

    /// Runs the operator in process with the chart's rights; the test fails if it ends on its own.
    pub fn start_operator_with(&mut self, args: Args) {
        self.operator = Some(self.spawn_operator("the operator", args));
    }

    /// Runs another operator (a replica) in process with the chart's rights; the test fails if it ends on its own
    /// unless the test aborts the returned task.
    pub fn spawn_operator(&self, name: &str, args: Args) -> tokio::task::JoinHandle<()> {
        let client = self.operator_client.clone();
        vaultsync_e2e::liveness::spawn(name, vaultsync_operator::run_with_client(client, args))
    }

    /// An Entra test server acting as the machine's managed identity (instance metadata service), issuing the token
    /// the test vault accepts; the operator is restarted to use it.
    pub async fn use_managed_identity(&mut self) -> vaultsync_e2e::entra::EntraServer {
        let identity = vaultsync_e2e::entra::ManagedIdentity {
            client_id: None,
            access_token: format!("token-for-{}", self.ns.name),
        };
        let entra = vaultsync_e2e::entra::EntraServer::builder(None)
            .managed_identity(identity)
            .resource(self.vault.challenge_resource())
            .start()
            .await
            .expect("entra");
        self.stop_operator().await;
        let mut args = self.operator_args();
        args.imds_endpoint = entra.metadata_endpoint();
        self.start_operator_with(args);
        entra
    }

    /// Remembers secret values used outside the Key Vault test server, for [`Env::finish`]'s scan.
    pub fn remember_values(&self, values: &[&str]) {
        self.values.lock().expect("values lock").extend(values.iter().map(|v| v.to_string()));
    }

    /// Ends the test: no secret value of the test (every value of the vault, and those remembered) may appear in
    /// the operator's logs, metrics, Events, or the status of any vaultsync object in the namespace; and the
    /// operator must still be running. Then stops the operator.
    pub async fn finish(mut self) {
        vaultsync_e2e::liveness::check();
        let mut values = self.vault.all_values();
        values.extend(self.values.lock().expect("values lock").iter().cloned());
        let values: Vec<&str> = values.iter().map(String::as_str).filter(|v| v.len() >= 4).collect();
        let mut scanned = assert_logs_free_of(&values);
        if self.operator.is_some() {
            let (code, metrics) = self.http_get("/metrics").await;
            assert_eq!(code, 200, "the operator serves /metrics");
            assert_free_of(&metrics, "the operator's metrics", &values);
            scanned += metrics.len();
        }
        let events = self.ns.api::<k8s_openapi::api::events::v1::Event>().list(&Default::default()).await;
        let events = serde_json::to_string(&events.expect("listing Events").items).expect("events as JSON");
        assert_free_of(&events, "the namespace's Events", &values);
        let core_events = self.ns.api::<k8s_openapi::api::core::v1::Event>().list(&Default::default()).await;
        let core_events = serde_json::to_string(&core_events.expect("listing Events").items).expect("JSON");
        assert_free_of(&core_events, "the namespace's core Events", &values);
        let statuses = self.ns.api::<VaultSecret>().list(&Default::default()).await.expect("listing VaultSecrets");
        let statuses: Vec<_> = statuses.items.into_iter().map(|vs| vs.status).collect();
        let stores = self.ns.api::<VaultStore>().list(&Default::default()).await.expect("listing VaultStores");
        let stores: Vec<_> = stores.items.into_iter().map(|s| s.status).collect();
        let text = serde_json::to_string(&(statuses, stores)).expect("statuses as JSON");
        assert_free_of(&text, "the status of vaultsync objects", &values);
        scanned += events.len() + core_events.len() + text.len();
        record_leak_scan(&self.ns.name, values.len(), scanned);
        self.finished = true;
        self.stop_operator().await;
    }

    pub async fn stop_operator(&mut self) {
        if let Some(op) = self.operator.take() {
            op.abort();
            let _ = op.await;
            // Its metrics endpoint is a task of its own that ends (and frees the port) a moment later; an operator
            // started again on the same port before that fails to bind it.
            let port = self.metrics_port;
            eventually(Duration::from_secs(10), "the stopped operator's metrics port to be free", || async move {
                std::net::TcpListener::bind(("127.0.0.1", port)).ok().map(drop)
            })
            .await;
        }
    }

    pub async fn apply_store(&self, name: &str, spec: Value) {
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultStore",
            "metadata": { "name": name }, "spec": spec });
        self.ns
            .api::<VaultStore>()
            .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
            .await
            .expect("applying the store");
    }

    /// Applies a ClusterVaultStore `name` on the test's vault, reading with the test namespace's account, open to
    /// the namespaces `conditions` name.
    pub async fn apply_cluster_store(&self, name: &str, conditions: Value) {
        let mut spec = self.store_spec();
        spec["provider"]["azureKeyVault"]["auth"]["workloadIdentity"]["serviceAccountRef"]["namespace"] =
            json!(self.ns.name);
        spec["conditions"] = conditions;
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "ClusterVaultStore",
            "metadata": { "name": name }, "spec": spec });
        kube::Api::<vaultsync_api::ClusterVaultStore>::all(self.ns.client.clone())
            .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
            .await
            .expect("applying the ClusterVaultStore");
    }

    /// Applies a VaultSecret (as a user would, with kubectl apply).
    pub async fn apply_vault_secret(&self, name: &str, spec: Value) {
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
            "metadata": { "name": name }, "spec": spec });
        self.ns
            .api::<VaultSecret>()
            .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
            .await
            .expect("applying the VaultSecret");
    }

    pub async fn annotate(&self, name: &str, key: &str, value: &str) {
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        self.ns
            .api::<VaultSecret>()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("annotating");
    }

    /// Waits for the VaultSecret's Ready condition to have `reason`; returns the VaultSecret.
    pub async fn wait_reason(&self, name: &str, reason: &str) -> VaultSecret {
        let api = self.ns.api::<VaultSecret>();
        eventually(Duration::from_secs(20), &format!("VaultSecret {name} to be {reason}"), || {
            let api = api.clone();
            async move {
                let vs = api.get(name).await.ok()?;
                let ready = vs.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
                (ready.reason == reason).then_some(vs)
            }
        })
        .await
    }

    /// Waits until Secret `name` has `key` = `value`.
    pub async fn wait_secret_value(&self, name: &str, key: &str, value: &str) -> Secret {
        self.wait_secret_value_within(name, key, value, Duration::from_secs(20)).await
    }

    /// Waits up to `timeout` until Secret `name` has `key` = `value`.
    pub async fn wait_secret_value_within(&self, name: &str, key: &str, value: &str, timeout: Duration) -> Secret {
        let api = self.ns.api::<Secret>();
        eventually(timeout, &format!("Secret {name} to hold the expected {key}"), || {
            let api = api.clone();
            async move {
                let secret = api.get_opt(name).await.ok()??;
                let data = secret.data.as_ref()?;
                (data.get(key)?.0 == value.as_bytes()).then_some(secret)
            }
        })
        .await
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.ns.api::<Secret>().get_opt(name).await.expect("reading the Secret")
    }
}

impl Env {
    /// GETs a path of the operator's HTTP endpoint; returns the status code and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.metrics_port, path).await
    }

    /// The sum of the operator's metric samples whose lines start with `prefix`.
    pub async fn metric(&self, prefix: &str) -> u64 {
        metric_sum(self.metrics_port, prefix).await
    }

    /// Waits until the operator's metric samples starting with `prefix` add up to at least `count`: the positive
    /// signal that it did something (looked at VaultSecrets, checked workloads) before a test asserts what it did
    /// not do.
    pub async fn wait_metric_at_least(&self, prefix: &str, count: u64) -> u64 {
        let port = self.metrics_port;
        eventually(Duration::from_secs(30), &format!("{prefix} to reach {count}"), || async move {
            let value = metric_sum(port, prefix).await;
            (value >= count).then_some(value)
        })
        .await
    }
}

/// The sum of every sample of the metrics whose lines start with `prefix`, on `port`.
pub async fn metric_sum(port: u16, prefix: &str) -> u64 {
    let (_, body) = http_get(port, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// GETs a path of an operator's HTTP endpoint on `port`; returns the status code and body.
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Not listening (yet, or any more): status 0, for callers that wait or assert on the status.
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            return (0, String::new());
        };
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        let code = answer.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (code, body)
    }
}

pub fn one_key(secret_key: &str, object: &str) -> Value {
    json!({ "storeRef": { "name": "kv" }, "data": [{ "secretKey": secret_key, "remoteRef": { "name": object } }] })
}

/// An operator's Event Grid endpoint for a test: a free port and a key file in a folder of its own under the
/// temp folder (removed on drop).
pub struct EventGrid {
    pub port: u16,
    pub key: String,
    dir: std::path::PathBuf,
}

impl EventGrid {
    /// A new port, key and key file; `name` makes the folder unique (the test's namespace).
    pub fn new(name: &str) -> EventGrid {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let key = format!("egk-{nanos:x}-{:x}", std::process::id());
        let dir = std::env::temp_dir().join(format!("vaultsync-eventgrid-{name}"));
        std::fs::create_dir_all(&dir).expect("creating the key folder");
        std::fs::write(dir.join("key"), format!("{key}\n")).expect("writing the key file");
        let port = vaultsync_e2e::process::free_port().expect("a free port");
        EventGrid { port, key, dir }
    }

    /// Turns the endpoint on in `args` (built like [`Env::operator_args`]).
    pub fn configure(&self, args: &mut Args) {
        args.event_grid_addr = Some(format!("127.0.0.1:{}", self.port).parse().expect("an address"));
        args.event_grid_key_file = Some(self.dir.join("key"));
    }

    /// Waits until the endpoint accepts connections.
    pub async fn wait_listening(&self) {
        let port = self.port;
        eventually(Duration::from_secs(20), "the Event Grid endpoint to listen", || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(drop)
        })
        .await;
    }

    /// The key header, for `request`.
    pub fn key_header(&self) -> (&'static str, &str) {
        ("x-vaultsync-key", self.key.as_str())
    }

    /// A request to the endpoint; `headers` are sent as given (add [`EventGrid::key_header`] to authenticate).
    pub async fn request(&self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpAnswer {
        http_request(self.port, method, target, headers, body).await
    }

    /// POSTs `body` as JSON events (Event Grid schema) with the key in the header.
    pub async fn post_events(&self, body: &Value) -> HttpAnswer {
        let headers = [self.key_header(), ("content-type", "application/json")];
        self.request("POST", "/eventgrid", &headers, body.to_string().as_bytes()).await
    }
}

impl Drop for EventGrid {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP answer: status, headers (names lowercase) and body.
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("the body is not JSON ({e}): {:?}", self.body))
    }
}

/// One HTTP/1.0 request to 127.0.0.1:`port` (the server closes the connection after answering). The request
/// is written while the answer is read, so a server that answers before taking the whole body (413) is seen.
pub async fn http_request(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpAnswer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let mut request = format!("{method} {target} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    let write = tokio::spawn(async move {
        // The server may close early (after a 413): a failed write is not the test's concern.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut raw = Vec::new();
    // A reset after the answer (the server did not read the rest of the body) ends the read, keeping what came.
    let _ =
        tokio::time::timeout(Duration::from_secs(20), reader.read_to_end(&mut raw)).await.expect("an answer in time");
    write.abort();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no complete answer: {raw:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).expect("a status code");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpAnswer { status, headers, body: body.to_owned() }
}
