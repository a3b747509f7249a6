//! The fault suite's lab: the real operator binary as its own process (so it can be killed with SIGKILL and its CPU
//! time read), running with the chart's rights, reading the Key Vault test server and Entra through Toxiproxy; a
//! watch on every Secret of the namespace that records any state a fault must never cause (a Secret deleted,
//! emptied, or holding a value that was never the vault's); and the figures of each case, appended as one row of the
//! table that `make chaos` prints and docs/reliability.md keeps.

#![allow(dead_code)] // each test binary uses a different part

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt as _, watcher},
};
use serde_json::{Value, json};
use vaultsync_api::VaultSecret;
use vaultsync_e2e::{
    ControlPlane, TestNamespace,
    entra::EntraServer,
    eventually, install_crds,
    keyvault::KeyVaultServer,
    process::{Supervised, free_port, log_dir},
    tls::TestCa,
    toxiproxy::{Proxy, Toxiproxy},
};

use crate::support::{CLIENT_ID, READER_SA, TENANT, http_get, metric_sum};

/// Every VaultSecret of the suite refreshes this often unless a case says otherwise (the CRD's minimum), so "two
/// refresh intervals" is 20 s.
pub const REFRESH: Duration = Duration::from_secs(10);
/// The Key Vault client's per-attempt cap (`backend/src/http.rs`): a fault adds attempts, never more than this.
pub const MAX_ATTEMPTS: u64 = 4;

/// How a lab is set up.
#[derive(Clone, Debug)]
pub struct Options {
    /// The lifetime of Entra's tokens.
    pub token_lifetime: Duration,
    /// The VaultSecrets' refresh interval.
    pub refresh: Duration,
    /// The vault objects live in OpenBao (behind its own proxy, token auth) instead of the Key Vault test server.
    pub openbao: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self { token_lifetime: Duration::from_secs(3599), refresh: REFRESH, openbao: false }
    }
}

/// Where the lab's vault objects live.
pub enum Source {
    KeyVault,
    /// OpenBao (root client for setup, the KV v2 mount), behind `proxy`.
    OpenBao {
        root: vaultsync_e2e::openbao::BaoClient,
        mount: String,
        proxy: Proxy,
    },
}

/// The operator binary as a process of its own, under the project's supervisor (so it never outlives the tests).
pub struct OperatorProcess {
    pub name: String,
    pub metrics_port: u16,
    process: Supervised,
    pub log: PathBuf,
}

impl OperatorProcess {
    /// Its process id (the operator itself, not the supervisor).
    pub fn pid(&self) -> u32 {
        self.process.program_pid().unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    /// CPU time (user + system) it used so far.
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// Kills it with SIGKILL: no clean-up of any kind, as a node failure or the OOM killer would.
    pub fn kill9(&mut self) {
        let pid = self.pid();
        let status = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill");
        assert!(status.success(), "kill -9 {pid}");
        let name = self.name.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.process.exited() {
            assert!(Instant::now() < deadline, "{name} still runs after kill -9");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test if the process ended on its own.
    pub fn assert_alive(&mut self) {
        assert!(
            !self.process.exited(),
            "{} ended unexpectedly:\n{}",
            self.name,
            vaultsync_e2e::process::log_tail(&self.log, 30)
        );
    }

    /// Its metric samples starting with `prefix`, added up.
    pub async fn metric(&self, prefix: &str) -> u64 {
        metric_sum(self.metrics_port, prefix).await
    }
}

/// CPU time of a process from /proc (user + system clock ticks, 100 per second on Linux).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3: utime is 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// Every state a watched Secret was seen in that a fault must never cause.
#[derive(Default)]
struct Watched {
    /// For each Secret and key, the values it may hold (the vault's old and new ones).
    allowed: HashMap<String, BTreeMap<String, BTreeSet<Vec<u8>>>>,
    violations: Vec<String>,
    states: u64,
}

/// A watch on the namespace's Secrets that checks every state they pass through.
pub struct SecretMonitor {
    watched: Arc<Mutex<Watched>>,
    task: tokio::task::JoinHandle<()>,
}

impl SecretMonitor {
    pub fn start(api: Api<Secret>) -> Self {
        let watched = Arc::new(Mutex::new(Watched::default()));
        let state = watched.clone();
        let task = tokio::spawn(async move {
            // Restarts (an apiserver restart ends the watch) list again, so no final state is missed.
            let mut events = watcher(api, watcher::Config::default()).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let mut watched = state.lock().expect("monitor lock");
                match event {
                    watcher::Event::Apply(secret) | watcher::Event::InitApply(secret) => watched.check(&secret),
                    watcher::Event::Delete(secret) => {
                        let name = secret.metadata.name.clone().unwrap_or_default();
                        if watched.allowed.contains_key(&name) {
                            watched.violations.push(format!("Secret {name} was deleted"));
                        }
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
        });
        Self { watched, task }
    }

    /// From now on Secret `name` may hold, for each key, one of the given values.
    pub fn allow(&self, name: &str, key: &str, values: &[&str]) {
        let mut watched = self.watched.lock().expect("monitor lock");
        let slot = watched.allowed.entry(name.to_string()).or_default().entry(key.to_string()).or_default();
        slot.extend(values.iter().map(|v| v.as_bytes().to_vec()));
    }

    /// States checked so far, and what went wrong.
    pub fn outcome(&self) -> (u64, Vec<String>) {
        let watched = self.watched.lock().expect("monitor lock");
        (watched.states, watched.violations.clone())
    }
}

impl Drop for SecretMonitor {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watched {
    fn check(&mut self, secret: &Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let Some(keys) = self.allowed.get(&name) else { return };
        self.states += 1;
        let data = secret.data.clone().unwrap_or_default();
        let mut problems = Vec::new();
        for (key, values) in keys {
            match data.get(key) {
                None => problems.push(format!("Secret {name} lost key {key}")),
                Some(value) if !values.contains(&value.0) => {
                    problems.push(format!("Secret {name} key {key} holds a value the vault never had"))
                }
                Some(_) => {}
            }
        }
        self.violations.extend(problems);
    }
}

/// One measured fault, a row of the table.
#[derive(Clone, Debug, Default)]
pub struct Row {
    pub case: String,
    pub vaultsecrets: usize,
    /// How long the fault lasted.
    pub fault: Duration,
    /// The reasons the Ready conditions named while it lasted.
    pub reasons: String,
    /// Vault (and token) HTTP attempts the operator made during the fault, counted by its metrics.
    pub calls: u64,
    /// The bound they were held to.
    pub calls_bound: u64,
    /// Requests that reached the vault during the fault, counted by the vault (None: not reachable).
    pub calls_at_vault: Option<u64>,
    /// Operator CPU during the fault, in % of one core.
    pub cpu_percent: f64,
    /// From the end of the fault until every VaultSecret was Ready with the vault's current values.
    pub recovery: Duration,
    /// The VaultSecrets' refresh interval.
    pub refresh: Duration,
    /// A wait the vault itself asked for (`Retry-After`), honoured on top of the two refresh intervals.
    pub vault_asked: Duration,
    /// Secret states checked by the watch, and how many broke a rule.
    pub states: u64,
    pub violations: usize,
}

impl Row {
    pub const HEADER: &'static str = "| case | VaultSecrets | fault | condition while it lasts | vault calls (bound) | at the vault | operator CPU | back to Ready | Secret states checked | lost / emptied / wrong |\n| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |";

    pub fn markdown(&self) -> String {
        let at_vault = self.calls_at_vault.map_or_else(|| "-".to_string(), |c| c.to_string());
        format!(
            "| {} | {} | {:.0}s | {} | {} (≤ {}) | {} | {:.1}% | {:.1}s | {} | {} |",
            self.case,
            self.vaultsecrets,
            self.fault.as_secs_f64(),
            self.reasons,
            self.calls,
            self.calls_bound,
            at_vault,
            self.cpu_percent,
            self.recovery.as_secs_f64(),
            self.states,
            self.violations
        )
    }

    /// Prints the row and appends it to the report file (`VAULTSYNC_CHAOS_REPORT`, else `chaos-report.md` in the
    /// Cargo target's temporary folder), which `make chaos` prints as a table.
    pub fn report(&self) {
        let line = self.markdown();
        println!("{}\n{line}", Self::HEADER);
        let path = std::env::var_os("VAULTSYNC_CHAOS_REPORT")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chaos-report.md"));
        use std::io::Write as _;
        // The first row of a run writes the header too.
        if let Ok(mut file) = std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            let _ = writeln!(file, "{}", Self::HEADER);
        }
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).open(&path) {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// A namespace with the vault and Entra behind Toxiproxy, a store `kv` using workload identity through both proxies,
/// and operator processes with the chart's rights.
pub struct Lab {
    pub ns: TestNamespace,
    pub vault: KeyVaultServer,
    pub entra: EntraServer,
    /// Between the operator and the vault.
    pub vault_proxy: Proxy,
    /// Between the operator and Entra.
    pub entra_proxy: Proxy,
    kubeconfig: PathBuf,
    pub operators: Vec<OperatorProcess>,
    /// Secret values used outside the vault, for the final scan.
    values: Mutex<Vec<String>>,
    /// The VaultSecrets made by [`Lab::sync_all`]: name, object, current value.
    pub secrets: Vec<(String, String, String)>,
    pub source: Source,
    /// The VaultSecrets' refresh interval.
    pub refresh: Duration,
    generation: u32,
    finished: bool,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            assert!(self.finished, "a fault test must end with `lab.finish().await`, which scans for leaked values");
        }
    }
}

impl Lab {
    pub async fn start(prefix: &str, options: Options) -> Lab {
        let ns = TestNamespace::new(prefix).await;
        install_crds(&ns.client).await;
        let vaultsync_e2e::azure::AzureVault { vault, entra } =
            vaultsync_e2e::azure::AzureVault::start_with(&ns, Some(options.token_lifetime)).await;
        let toxiproxy = Toxiproxy::shared();
        let vault_proxy =
            toxiproxy.proxy(&format!("{}-vault", ns.name), &vault.addr().to_string()).await.expect("vault proxy");
        let entra_upstream = entra.authority_host().trim_start_matches("https://").to_string();
        let entra_proxy = toxiproxy.proxy(&format!("{}-entra", ns.name), &entra_upstream).await.expect("Entra proxy");

        let token = vaultsync_e2e::chart::operator_token(&ns, &[]).await;
        let kubeconfig = log_dir().join(format!("{}.kubeconfig", ns.name));
        write_kubeconfig(&kubeconfig, &token);
        let (source, credential) = match options.openbao {
            true => {
                let (source, token) = openbao_source(&ns, toxiproxy).await;
                (source, Some(token))
            }
            false => (Source::KeyVault, None),
        };
        let lab = Lab {
            ns,
            vault,
            entra,
            vault_proxy,
            entra_proxy,
            kubeconfig,
            operators: Vec::new(),
            values: Mutex::default(),
            secrets: Vec::new(),
            source,
            refresh: options.refresh,
            generation: 0,
            finished: false,
        };
        lab.remember_values(&credential.iter().map(String::as_str).collect::<Vec<_>>());
        lab.apply_store("kv", lab.store_spec()).await;
        lab
    }

    /// Puts `value` in the vault as `object` (not through the operator's path, so not counted as a call).
    pub async fn set_value(&self, object: &str, value: &str) {
        match &self.source {
            Source::KeyVault => {
                self.vault.set_secret(object, value);
            }
            Source::OpenBao { root, mount, .. } => {
                root.kv2_put(mount, object, json!({ "value": value })).await.expect("writing to OpenBao");
                self.remember_values(&[value]);
            }
        }
    }

    /// The proxy in front of the vault the VaultSecrets read.
    pub fn source_proxy(&self) -> &Proxy {
        match &self.source {
            Source::KeyVault => &self.vault_proxy,
            Source::OpenBao { proxy, .. } => proxy,
        }
    }

    /// The store: the vault and Entra as the operator reaches them, through the proxies (TLS passes through).
    pub fn store_spec(&self) -> Value {
        if let Source::OpenBao { mount, proxy, .. } = &self.source {
            let bao = vaultsync_e2e::openbao::OpenBao::shared();
            return json!({ "provider": { "openbao": {
                "server": format!("https://127.0.0.1:{}", proxy.port), "caBundle": bao.ca_pem, "mount": mount,
                "auth": { "token": { "secretRef": { "name": "bao-token", "key": "token" } } } } } });
        }
        json!({ "provider": { "azureKeyVault": {
            "vaultUrl": format!("https://localhost:{}", self.vault_proxy.port),
            "tenantId": TENANT,
            "cloud": "Custom",
            "authorityHost": format!("https://localhost:{}", self.entra_proxy.port),
            "caBundle": TestCa::shared().ca_pem(),
            "auth": { "workloadIdentity": { "serviceAccountRef": { "name": READER_SA }, "clientId": CLIENT_ID } },
        }}})
    }

    pub async fn apply_store(&self, name: &str, spec: Value) {
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultStore",
            "metadata": { "name": name }, "spec": spec });
        self.ns
            .api::<vaultsync_api::VaultStore>()
            .patch(name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
            .await
            .expect("applying the store");
    }

    /// The operator's flags for a replica named `name` (leader election on when `leader_elect`).
    pub fn operator_args(&self, name: &str, metrics_port: u16, leader_elect: bool) -> Vec<String> {
        [
            "--namespace",
            &self.ns.name,
            "--watch-namespace",
            &self.ns.name,
            "--leader-elect",
            if leader_elect { "true" } else { "false" },
            "--lease-duration",
            "6s",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--pod-name",
            name,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// Starts the operator binary (`name`, with `extra` flags), and waits until it is ready (or, with leader
    /// election, serving health).
    pub async fn start_operator(&mut self, name: &str, leader_elect: bool, extra: &[&str]) -> usize {
        let port = free_port().expect("a free port");
        let mut args = vec![
            format!("KUBECONFIG={}", self.kubeconfig.display()),
            "RUST_LOG=debug,hyper=info,h2=info,rustls=info,tower=info,kube=info".to_string(),
            env!("CARGO_BIN_EXE_vaultsync-operator").to_string(),
        ];
        args.extend(self.operator_args(name, port, leader_elect));
        args.extend(extra.iter().map(|s| s.to_string()));
        let log_name = format!("{}-{name}-{}", self.ns.name, self.operators.len());
        // `env` sets the variables and execs the operator, so the supervised program is the operator itself.
        let process = Supervised::start(&log_name, std::path::Path::new("/usr/bin/env"), &args, &log_dir())
            .expect("starting the operator");
        let log = process.log.clone();
        self.operators.push(OperatorProcess { name: name.to_string(), metrics_port: port, process, log });
        let path = if leader_elect { "/healthz" } else { "/readyz" };
        eventually(Duration::from_secs(60), &format!("{name} to serve {path}"), || async move {
            (http_get(port, path).await.0 == 200).then_some(())
        })
        .await;
        self.operators.len() - 1
    }

    /// Creates `count` VaultSecrets `vs-<i>` (refreshing every [`REFRESH`]) over `objects` vault objects, and waits
    /// until every one is Ready with the vault's value.
    pub async fn sync_all(&mut self, count: usize, objects: usize) {
        self.prepare(count, objects).await;
        let specs = self.specs();
        self.create_all(specs).await;
        self.wait_converged(Duration::from_secs(120)).await;
    }

    /// Like [`Lab::sync_all`] without creating anything: the objects in the vault, the VaultSecrets' names and
    /// values in [`Lab::secrets`]; [`Lab::specs`] gives their manifests.
    pub async fn prepare(&mut self, count: usize, objects: usize) {
        self.generation += 1;
        for o in 0..objects {
            self.set_value(&format!("obj-{o}"), &self.value_of(o)).await;
        }
        self.secrets = (0..count)
            .map(|i| {
                let o = i % objects;
                (format!("vs-{i}"), format!("obj-{o}"), self.value_of(o))
            })
            .collect();
    }

    /// The manifests of the VaultSecrets in [`Lab::secrets`].
    pub fn specs(&self) -> Vec<(String, Value)> {
        let refresh = format!("{}s", self.refresh.as_secs());
        let property = matches!(self.source, Source::OpenBao { .. }).then_some("value");
        self.secrets
            .iter()
            .map(|(name, object, _)| {
                let mut remote = json!({ "name": object });
                if let Some(property) = property {
                    remote["property"] = json!(property);
                }
                let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
                    "metadata": { "name": name },
                    "spec": { "storeRef": { "name": "kv" }, "refreshInterval": refresh,
                        "data": [{ "secretKey": "value", "remoteRef": remote }] } });
                (name.clone(), body)
            })
            .collect()
    }

    /// Applies the VaultSecrets (16 at a time).
    pub async fn create_all(&self, specs: Vec<(String, Value)>) {
        apply_all(self.ns.api::<VaultSecret>(), specs).await;
    }

    fn value_of(&self, object: usize) -> String {
        format!("{}-g{}-o{object}", self.ns.name, self.generation)
    }

    /// Gives every object a new value in the vault (not counted as a call); returns the monitor's allowances.
    pub async fn rotate(&mut self, monitor: &SecretMonitor) {
        let objects: BTreeSet<String> = self.secrets.iter().map(|(_, o, _)| o.clone()).collect();
        let old: Vec<(String, String, String)> = self.secrets.clone();
        self.generation += 1;
        for object in &objects {
            let o: usize = object.trim_start_matches("obj-").parse().expect("object number");
            self.set_value(object, &self.value_of(o)).await;
        }
        for (i, (name, object, value)) in old.iter().enumerate() {
            let o: usize = object.trim_start_matches("obj-").parse().expect("object number");
            let new = self.value_of(o);
            monitor.allow(name, "value", &[value, &new]);
            self.secrets[i].2 = new;
        }
    }

    /// Waits until every VaultSecret is Ready=True and its Secret holds the current value; returns how long it took.
    pub async fn wait_converged(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let api = self.ns.api::<VaultSecret>();
        let secrets = self.ns.api::<Secret>();
        let expected: HashMap<String, String> =
            self.secrets.iter().map(|(name, _, value)| (name.clone(), value.clone())).collect();
        let operators: Vec<u16> = self.operators.iter().map(|o| o.metrics_port).collect();
        eventually(timeout, "every VaultSecret to be Ready with the vault's current value", || {
            let (api, secrets, expected) = (api.clone(), secrets.clone(), expected.clone());
            let _ = &operators;
            async move {
                let list = api.list(&Default::default()).await.ok()?;
                let ready = list.items.iter().filter(|vs| ready_reason(vs).as_deref() == Some("True:Synced")).count();
                if ready < expected.len() {
                    return None;
                }
                (holding_current(&secrets, &expected).await? == expected.len()).then_some(())
            }
        })
        .await;
        start.elapsed()
    }

    /// Waits until every VaultSecret's Ready condition is False with one of `reasons` (the fault is named where
    /// users look); returns the reasons seen.
    pub async fn wait_reasons(&self, reasons: &[&str], timeout: Duration) -> String {
        self.wait_reasons_of(reasons, self.secrets.len(), timeout).await
    }

    /// Like [`Lab::wait_reasons`], until at least `count` VaultSecrets report the fault.
    pub async fn wait_reasons_of(&self, reasons: &[&str], count: usize, timeout: Duration) -> String {
        let api = self.ns.api::<VaultSecret>();
        let reasons: Vec<String> = reasons.iter().map(|r| format!("False:{r}")).collect();
        eventually(timeout, &format!("every VaultSecret to report {reasons:?}"), || {
            let (api, reasons) = (api.clone(), reasons.clone());
            async move {
                let list = api.list(&Default::default()).await.ok()?;
                let seen: BTreeSet<String> = list.items.iter().filter_map(ready_reason).collect();
                let named =
                    list.items.iter().filter(|vs| ready_reason(vs).is_some_and(|r| reasons.contains(&r))).count();
                (named >= count).then(|| {
                    seen.iter().map(|r| r.trim_start_matches("False:").to_string()).collect::<Vec<_>>().join(", ")
                })
            }
        })
        .await
    }

    /// The messages of every VaultSecret's Ready condition.
    pub async fn ready_messages(&self) -> Vec<String> {
        let list = self.ns.api::<VaultSecret>().list(&Default::default()).await.expect("listing VaultSecrets");
        list.items
            .iter()
            .filter_map(|vs| {
                vs.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.message.clone())
            })
            .collect()
    }

    /// The sum of `prefix` over every operator still running.
    pub async fn metric(&self, prefix: &str) -> u64 {
        let mut total = 0;
        for op in &self.operators {
            total += op.metric(prefix).await;
        }
        total
    }

    /// Remembers secret values used outside the vault, for the final scan.
    pub fn remember_values(&self, values: &[&str]) {
        self.values.lock().expect("values lock").extend(values.iter().map(|v| v.to_string()));
    }

    /// Ends the test: every operator still runs; no secret value (every value the vault ever held, and those
    /// remembered) appears in any operator's log, its metrics, the namespace's Events or the VaultSecrets' status;
    /// stops the operators. Returns how many values were scanned for.
    pub async fn finish(mut self) -> usize {
        let mut values = self.vault.all_values();
        values.extend(self.values.lock().expect("values lock").iter().cloned());
        let values: Vec<String> = values.into_iter().filter(|v| v.len() >= 4).collect();
        let mut scanned = 0usize;
        for op in &self.operators {
            let log = std::fs::read_to_string(&op.log).unwrap_or_default();
            assert!(!log.is_empty(), "{} logged nothing: the scan would prove nothing", op.name);
            assert_free(&log, &format!("{}'s log", op.name), &values);
            scanned += log.len();
            let (code, metrics) = http_get(op.metrics_port, "/metrics").await;
            if code == 200 {
                assert_free(&metrics, &format!("{}'s metrics", op.name), &values);
                scanned += metrics.len();
            }
        }
        let events = self.ns.api::<k8s_openapi::api::events::v1::Event>().list(&Default::default()).await;
        let events = serde_json::to_string(&events.expect("listing Events").items).expect("JSON");
        assert_free(&events, "the namespace's Events", &values);
        let statuses = self.ns.api::<VaultSecret>().list(&Default::default()).await.expect("listing VaultSecrets");
        let statuses: Vec<_> = statuses.items.into_iter().map(|vs| vs.status).collect();
        let text = serde_json::to_string(&statuses).expect("JSON");
        assert_free(&text, "the VaultSecrets' status", &values);
        scanned += events.len() + text.len();
        crate::support::record_leak_scan(&self.ns.name, values.len(), scanned);
        self.finished = true;
        self.operators.clear();
        values.len()
    }
}

/// How many Secrets hold the value `expected` names for them (by Secret name); `None` if they cannot be listed.
pub async fn holding_current(secrets: &Api<Secret>, expected: &HashMap<String, String>) -> Option<usize> {
    let list = secrets.list(&Default::default()).await.ok()?;
    let current = |s: &&Secret| {
        let name = s.metadata.name.clone().unwrap_or_default();
        let value = s.data.as_ref().and_then(|d| d.get("value")).map(|v| v.0.clone());
        expected.get(&name).is_some_and(|e| value.as_deref() == Some(e.as_bytes()))
    };
    Some(list.items.iter().filter(current).count())
}

/// `True:Synced`, `False:BackendUnavailable`, ...: the Ready condition of a VaultSecret.
pub fn ready_reason(vs: &VaultSecret) -> Option<String> {
    let ready = vs.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?;
    Some(format!("{}:{}", ready.status, ready.reason))
}

fn assert_free(text: &str, what: &str, values: &[String]) {
    for value in values {
        assert!(!text.contains(value.as_str()), "a secret value appears in {what} ({} bytes scanned)", text.len());
    }
}

fn write_kubeconfig(path: &std::path::Path, token: &str) {
    use base64::Engine as _;
    let cp = ControlPlane::shared();
    let ca = base64::engine::general_purpose::STANDARD.encode(cp.ca_pem().expect("the cluster CA"));
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context: {{ cluster: local, user: operator }}\ncurrent-context: local\n",
        cp.server_url()
    );
    std::fs::write(path, config).expect("writing the operator's kubeconfig");
}

/// The measurements of one fault: started by [`Window::open`] when the fault is injected, closed when it ends.
pub struct Window {
    started: Instant,
    calls: u64,
    vault_calls: u64,
    /// CPU time so far of each operator (by name).
    cpu: HashMap<String, Duration>,
    pub monitor: SecretMonitor,
}

impl Window {
    /// Starts watching the Secrets, gives every object a new value (so the fault's end must bring it) and takes the
    /// counters' starting points.
    pub async fn open(lab: &mut Lab) -> Window {
        let monitor = SecretMonitor::start(lab.ns.api::<Secret>());
        for (name, _, value) in &lab.secrets {
            monitor.allow(name, "value", &[value]);
        }
        lab.rotate(&monitor).await;
        Window {
            started: Instant::now(),
            calls: lab.metric("vaultsync_backend_calls_total").await,
            vault_calls: lab.vault.total_calls(),
            cpu: lab.operators.iter().map(|op| (op.name.clone(), op.cpu())).collect(),
            monitor,
        }
    }

    /// How long the fault has lasted so far.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Lets the fault last until `at_least` has passed since it started (the fault's length is the experiment, not a
    /// synchronisation).
    pub async fn hold(&self, at_least: Duration) {
        if let Some(rest) = at_least.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }

    /// The fault is over (call right after clearing it): takes the counters, waits for every VaultSecret to
    /// converge, checks every state the watch saw, and returns the row (calls and CPU over the fault).
    pub async fn close(self, lab: &mut Lab, case: &str, reasons: String) -> Row {
        let fault = self.started.elapsed();
        let calls = lab.metric("vaultsync_backend_calls_total").await.saturating_sub(self.calls);
        let vault_calls = lab.vault.total_calls() - self.vault_calls;
        // Operators killed during the fault are gone from the lab; their CPU time ends with them.
        let cpu: Duration = lab
            .operators
            .iter()
            .map(|op| op.cpu().saturating_sub(self.cpu.get(&op.name).copied().unwrap_or_default()))
            .sum();
        for op in &mut lab.operators {
            op.assert_alive();
        }
        let recovery = lab.wait_converged(2 * lab.refresh + Duration::from_secs(30)).await;
        let (states, violations) = self.monitor.outcome();
        assert!(violations.is_empty(), "{case}: Secrets went wrong: {violations:?}");
        assert!(states >= lab.secrets.len() as u64, "{case}: the watch saw every Secret ({states} states)");
        Row {
            case: case.to_string(),
            vaultsecrets: lab.secrets.len(),
            fault,
            reasons,
            calls,
            calls_bound: 0,
            calls_at_vault: Some(vault_calls),
            cpu_percent: 100.0 * cpu.as_secs_f64() / fault.as_secs_f64(),
            recovery,
            refresh: lab.refresh,
            vault_asked: Duration::ZERO,
            states,
            violations: violations.len(),
        }
    }
}

/// The bound on vault calls during a fault of length `fault` for `vaultsecrets` VaultSecrets refreshing every
/// [`REFRESH`]: a failing VaultSecret is tried again no sooner than one refresh interval later, each try makes at
/// most [`MAX_ATTEMPTS`] attempts at the vault and as many at Entra for a token.
pub fn calls_bound(vaultsecrets: usize, fault: Duration, refresh: Duration) -> u64 {
    let rounds = (fault.as_secs_f64() / refresh.as_secs_f64()).ceil() + 1.0;
    (vaultsecrets as f64 * rounds * (2 * MAX_ATTEMPTS) as f64) as u64
}

/// Asserts the row's promises: converged within two refresh intervals, calls within the bound, no hot loop.
pub fn assert_row(row: &Row) {
    assert!(
        row.recovery <= 2 * row.refresh + row.vault_asked,
        "{}: back to Ready after {:?}, more than two refresh intervals (and the vault's Retry-After)",
        row.case,
        row.recovery
    );
    assert!(
        row.calls <= row.calls_bound,
        "{}: {} vault calls during the fault, bound {}",
        row.case,
        row.calls,
        row.calls_bound
    );
    assert!(
        row.cpu_percent < 25.0,
        "{}: the operator used {:.1}% CPU during the fault (a hot loop?)",
        row.case,
        row.cpu_percent
    );
}

/// The namespace's Secrets by name.
pub async fn secrets_of(ns: &TestNamespace) -> HashMap<String, Secret> {
    let list = ns.api::<Secret>().list(&Default::default()).await.expect("listing Secrets");
    list.items.into_iter().map(|s| (s.metadata.name.clone().unwrap_or_default(), s)).collect()
}

/// A fresh KV v2 mount in the shared OpenBao with a reading token (in the Secret `bao-token`), behind a proxy.
async fn openbao_source(ns: &TestNamespace, toxiproxy: &'static Toxiproxy) -> (Source, String) {
    let (bao, root) = vaultsync_e2e::openbao::shared_with_root();
    let mount = root.enable_kv(2).await.expect("a KV mount");
    let policy = root.read_policy(&[format!("{mount}/data/*"), format!("{mount}/metadata/*")]).await.expect("policy");
    let token = root.token_with(&policy).await.expect("a token");
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: kube::api::ObjectMeta { name: Some("bao-token".into()), ..Default::default() },
        string_data: Some([("token".to_string(), token.clone())].into()),
        ..Default::default()
    };
    ns.api::<Secret>().create(&Default::default(), &secret).await.expect("the token Secret");
    let upstream = bao.addr.trim_start_matches("https://").to_string();
    let proxy = toxiproxy.proxy(&format!("{}-openbao", ns.name), &upstream).await.expect("OpenBao proxy");
    (Source::OpenBao { root, mount, proxy }, token)
}

/// Applies VaultSecret manifests, 16 at a time.
pub async fn apply_all(api: Api<VaultSecret>, specs: Vec<(String, Value)>) {
    futures::stream::iter(specs)
        .for_each_concurrent(16, |(name, body)| {
            let api = api.clone();
            async move {
                api.patch(&name, &PatchParams::apply("test").force(), &Patch::Apply(&body))
                    .await
                    .expect("applying a VaultSecret");
            }
        })
        .await;
}
