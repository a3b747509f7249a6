//! `make bench`: measures the operator on the local control plane and prints the figures.
//!
//! The Key Vault and Entra test servers run in this process; the operator runs as a separate
//! process (under `controlplane supervise`, so it never outlives this program) so that its memory
//! and CPU can be read from `/proc`. The phases, in the order they run:
//!
//! 1. create N VaultSecrets, each on its own vault object: time until all are Ready;
//! 2. one refresh cycle with nothing changed: backend reads and apiserver writes;
//! 3. one refresh cycle after 10% of the objects got a new version: which Secrets changed, reads, writes;
//! 5. an operator restart with nothing due: reads and writes until every VaultSecret was looked at;
//! 4. N VaultSecrets sharing N/10 objects (second namespace, vault and operator): reads until all Ready;
//!
//! and (6) the operator's peak resident memory (VmHWM) at the end of each phase. The numbers are
//! those of the table printed at the end and of `docs/benchmarks.md`, which explains them.
//!
//! `--shards N` runs instead N sharded operators over VaultSecrets spread across namespaces (`run_sharded`).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use futures::StreamExt as _;
use k8s_openapi::{
    api::core::v1::{Secret, ServiceAccount},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{GetParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};
use vaultsync_api::{VaultSecret, VaultStore};
use vaultsync_e2e::{
    ControlPlane, TestNamespace,
    entra::{EntraServer, Federation},
    install_crds,
    keyvault::{KeyVaultServer, Op},
    process::{free_port, tool},
    tls::TestCa,
};
use vaultsync_operator::args::parse_duration;

const READER_SA: &str = "vaultsync-reader";
const ACCESS_TOKEN: &str = "bench-access-token";
const FIELD_MANAGER: &str = "vaultsync-bench";
/// `--interval` times this is the longest a refresh cycle is waited for (a store's round comes at most 1.9 intervals
/// after a read, and lasts a tenth of one).
const CYCLE: f64 = 2.1;

#[derive(clap::Parser, Debug)]
#[command(name = "vaultsync-bench", about = "Measures the vaultsync operator on the local control plane")]
struct Flags {
    /// VaultSecrets per run (the shared-object run uses count/10 objects).
    #[arg(long, default_value_t = 1000)]
    count: usize,

    /// The refreshInterval of every VaultSecret; a refresh cycle is measured until every VaultSecret was refreshed once
    /// (at most 2.1 times this).
    #[arg(long, default_value = "60s")]
    interval: String,

    /// The VaultStore's request budget: backend calls per second.
    #[arg(long, default_value_t = 200)]
    rps: u32,

    /// The VaultStore's request budget: burst.
    #[arg(long, default_value_t = 200)]
    burst: u32,

    /// The operator binary to measure (build it with --release).
    #[arg(long)]
    operator_bin: PathBuf,

    /// Concurrent tasks creating VaultSecrets.
    #[arg(long, default_value_t = 8)]
    creators: usize,

    /// Pad every secret value to at least this many bytes (e.g. 1024, to see what remembering values costs).
    #[arg(long, default_value_t = 0)]
    value_bytes: usize,

    /// Give up waiting for VaultSecrets to become Ready after this long.
    #[arg(long, default_value = "20m")]
    timeout: String,

    /// Instead of the phases: this many sharded operator processes (`--shards`) split `--count` VaultSecrets spread
    /// over `--namespaces` namespaces; prints the time until all are Ready and each shard's peak memory.
    #[arg(long, default_value_t = 1)]
    shards: u32,

    /// With --shards: the namespaces the VaultSecrets are spread over.
    #[arg(long, default_value_t = 20)]
    namespaces: usize,

    /// With --shards: one more operator process, standing by for any shard.
    #[arg(long)]
    standby: bool,

    /// With --shards and --standby: kill (SIGKILL) the holder of shard 0 once half the VaultSecrets are created.
    #[arg(long)]
    kill_shard: bool,
}

/// How the operator's read cache served reads between two scrapes, and the lists it took: the counters that show
/// whether a round was refreshed by a list or object by object.
fn cache_line(before: &Scrape, after: &Scrape) -> String {
    let delta = |series: String| after.get(&series) - before.get(&series);
    let reads = ["hit", "coalesced", "miss", "validated"]
        .map(|r| format!("{r} {}", delta(format!("vaultsync_cache_reads_total{{result=\"{r}\"}}"))));
    let lists = ["complete", "stopped", "refused"]
        .map(|r| format!("{r} {}", delta(format!("vaultsync_refresh_lists_total{{result=\"{r}\"}}"))));
    format!("reads {}; lists {}", reads.join(", "), lists.join(", "))
}

/// Applies the VaultSecrets in `specs`, `creators` at a time, counting them in `created`; returns when the last one
/// was created.
fn spawn_creator(
    specs: Vec<(Api<VaultSecret>, String, Value)>,
    creators: usize,
    created: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<anyhow::Result<Instant>> {
    tokio::spawn(async move {
        let mut applies = futures::stream::iter(specs)
            .map(|(api, name, body)| async move {
                api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
                    .await
                    .with_context(|| format!("applying VaultSecret {name}"))
            })
            .buffer_unordered(creators.max(1));
        while let Some(result) = applies.next().await {
            result?;
            created.fetch_add(1, Ordering::Relaxed);
        }
        anyhow::Ok(Instant::now())
    })
}

const PROBE: &str = "bench-probe";

/// Creates the probe VaultSecret (on `object`) and returns how long it took to be Ready.
async fn probe_ready(api: Api<VaultSecret>, interval: String, object: String) -> anyhow::Result<Duration> {
    let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
    "metadata": { "name": PROBE },
    "spec": {
        "storeRef": { "name": "kv" },
        "refreshInterval": interval,
        "data": [{ "secretKey": "value", "remoteRef": { "name": object } }],
    }});
    let started = Instant::now();
    api.patch(PROBE, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .context("creating the probe VaultSecret")?;
    while started.elapsed() < Duration::from_secs(120) {
        if api.get_opt(PROBE).await?.as_ref().is_some_and(is_ready) {
            return Ok(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the probe VaultSecret was not Ready within 120 s")
}

/// Deletes the probe VaultSecret and its Secret (not left to the garbage collector, which takes minutes with 20,000
/// objects to look at) and waits until both are gone.
async fn remove_probe(api: Api<VaultSecret>, secrets: Api<Secret>) -> anyhow::Result<()> {
    api.delete(PROBE, &Default::default()).await.context("deleting the probe VaultSecret")?;
    match secrets.delete(PROBE, &Default::default()).await {
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Ok(_) => {}
        Err(e) => return Err(e).context("deleting the probe's Secret"),
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if api.get_opt(PROBE).await?.is_none() && secrets.get_opt(PROBE).await?.is_none() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("the probe VaultSecret or its Secret was still there 60 s after its deletion")
}

/// Prints a progress line, stamped with the time since the bench started.
macro_rules! progress {
    ($started:expr, $($arg:tt)*) => {
        println!("[{:>7.1}s] {}", $started.elapsed().as_secs_f64(), format!($($arg)*))
    };
}

/// The authority the test vaults' challenges name (only its tenant is used: tokens come from the store's authority).
const AUTHORITY: &str = "https://login.microsoftonline.com";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let interval = parse_duration(&flags.interval).map_err(anyhow::Error::msg).context("--interval")?;
    let timeout = parse_duration(&flags.timeout).map_err(anyhow::Error::msg).context("--timeout")?;
    if flags.count < 10 {
        bail!("--count must be at least 10 (a tenth of the objects is rotated)");
    }
    if interval < Duration::from_secs(10) {
        bail!("--interval must be at least 10s, the shortest refreshInterval a VaultSecret accepts");
    }
    if !flags.operator_bin.is_file() {
        bail!("--operator-bin {} is not a file", flags.operator_bin.display());
    }
    let mut bench = Bench::setup(flags, interval, timeout).await?;
    if bench.flags.shards > 1 {
        let result = bench.run_sharded().await;
        bench.stop_operators().await;
        result?;
        println!("operator logs: {}", bench.log_dir.display());
        return Ok(());
    }
    let result = bench.run().await;
    bench.stop_operators().await;
    let report = result?;
    report.print(&bench);
    println!();
    println!("operator logs: {}", bench.log_dir.display());
    Ok(())
}

/// Everything the phases share.
struct Bench {
    flags: Flags,
    interval: Duration,
    timeout: Duration,
    started: Instant,
    started_at: Timestamp,
    client: Client,
    kubeconfig: PathBuf,
    log_dir: PathBuf,
    ns_own: TestNamespace,
    ns_shared: TestNamespace,
    vault_own: KeyVaultServer,
    vault_shared: KeyVaultServer,
    entra: EntraServer,
    operators: Vec<Operator>,
    machine: Machine,
    /// The most sockets the current operator had open since the last memory sample.
    peak_sockets: AtomicUsize,
}

/// The figures, filled in as the phases run.
#[derive(Default)]
struct Report {
    create: Option<CreateFigures>,
    idle: Option<CycleFigures>,
    rotation: Option<CycleFigures>,
    rotation_check: Option<RotationCheck>,
    restart: Option<RestartFigures>,
    shared: Option<CreateFigures>,
    memory: Vec<(String, Memory)>,
    final_rss: Vec<(String, u64)>,
    wall: Duration,
}

struct CreateFigures {
    objects: usize,
    created_after: Duration,
    ready_after: Duration,
    delta: Delta,
}

struct CycleFigures {
    window: Duration,
    refreshed: u64,
    delta: Delta,
    /// A VaultSecret created a quarter into the round: how long it took to be Ready, and how far the round was.
    probe: Option<Probe>,
}

struct Probe {
    ready_after: Duration,
    looked_at_when_created: u64,
}

struct RotationCheck {
    rotated: usize,
    changed: usize,
    missed: usize,
    unexpected: usize,
    stale_values: usize,
}

struct RestartFigures {
    how: String,
    reconciled_after: Option<Duration>,
    delta: Delta,
}

impl Bench {
    async fn setup(flags: Flags, interval: Duration, timeout: Duration) -> anyhow::Result<Self> {
        let started = Instant::now();
        let started_at = Timestamp::now();
        let machine = Machine::read();
        println!(
            "vaultsync-bench: N={} interval={} budget={}/s burst {} values {} on {} CPUs, {:.1} GiB RAM ({})",
            flags.count,
            flags.interval,
            flags.rps,
            flags.burst,
            if flags.value_bytes == 0 { "short".to_string() } else { format!(">= {} bytes", flags.value_bytes) },
            machine.cpus,
            machine.mem_gib,
            machine.cpu_model
        );
        progress!(started, "starting the local control plane");
        let cp = tokio::task::spawn_blocking(ControlPlane::shared).await.context("starting the control plane")?;
        let client = cp.client().await;
        install_crds(&client).await;
        let ns_own = TestNamespace::new("bench").await;
        let ns_shared = TestNamespace::new("bench-shared").await;
        let mut federations = Vec::new();
        for (ns, client_id) in [(&ns_own, "bench-own"), (&ns_shared, "bench-shared")] {
            let sa = ServiceAccount {
                metadata: ObjectMeta { name: Some(READER_SA.into()), ..Default::default() },
                ..Default::default()
            };
            ns.api::<ServiceAccount>().create(&PostParams::default(), &sa).await.context("creating the reader SA")?;
            federations.push(Federation {
                client_id: client_id.into(),
                subject: format!("system:serviceaccount:{}:{READER_SA}", ns.name),
                audience: "api://AzureADTokenExchange".into(),
                access_token: ACCESS_TOKEN.into(),
            });
        }
        let vault_own = KeyVaultServer::builder().authority(AUTHORITY, "tenant-1").start().await?;
        let vault_shared = KeyVaultServer::builder().authority(AUTHORITY, "tenant-1").start().await?;
        let entra = federations
            .into_iter()
            .fold(EntraServer::builder(Some(client.clone())), |b, f| b.federation(f))
            .resource(vault_own.challenge_resource())
            .resource(vault_shared.challenge_resource())
            .start()
            .await?;
        for vault in [&vault_own, &vault_shared] {
            vault.require_bearer(Some(ACCESS_TOKEN.into()));
        }
        let log_dir = std::env::temp_dir().join(format!("vaultsync-bench-{}", std::process::id()));
        std::fs::create_dir_all(&log_dir).context("creating the log folder")?;
        let bench = Self {
            kubeconfig: cp.kubeconfig_path().to_path_buf(),
            flags,
            interval,
            timeout,
            started,
            started_at,
            client,
            log_dir,
            ns_own,
            ns_shared,
            vault_own,
            vault_shared,
            entra,
            operators: Vec::new(),
            machine,
            peak_sockets: AtomicUsize::new(0),
        };
        for (ns, vault, client_id) in
            [(&bench.ns_own, &bench.vault_own, "bench-own"), (&bench.ns_shared, &bench.vault_shared, "bench-shared")]
        {
            bench.apply_store(ns, vault, client_id).await?;
        }
        progress!(started, "control plane up; namespaces {} and {}", bench.ns_own.name, bench.ns_shared.name);
        Ok(bench)
    }

    async fn apply_store(&self, ns: &TestNamespace, vault: &KeyVaultServer, client_id: &str) -> anyhow::Result<()> {
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultStore",
        "metadata": { "name": "kv" },
        "spec": {
            "provider": { "azureKeyVault": {
                "vaultUrl": vault.url(),
                "tenantId": "tenant-1",
                "cloud": "Custom",
                "authorityHost": self.entra.authority_host(),
                "caBundle": TestCa::shared().ca_pem(),
                "auth": { "workloadIdentity": {
                    "serviceAccountRef": { "name": READER_SA }, "clientId": client_id } },
            }},
            "budget": { "requestsPerSecond": self.flags.rps, "burst": self.flags.burst },
        }});
        ns.api::<VaultStore>()
            .patch("kv", &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .context("applying the VaultStore")?;
        Ok(())
    }

    async fn run(&mut self) -> anyhow::Result<Report> {
        let mut report = Report::default();
        let n = self.flags.count;
        let width = n.to_string().len();
        let object = move |i: usize| format!("bench-obj-{i:0width$}");
        for i in 0..n {
            self.vault_own.set_secret(&object(i), &self.value(format!("value-{i}-v1")));
        }
        for i in 0..n / 10 {
            self.vault_shared.set_secret(&object(i), &self.value(format!("shared-{i}-v1")));
        }
        // A real vault's objects were written long before the VaultSecrets that read them; reads within a few seconds
        // of a write (whole-second `updated` times) would not be trusted against a list at the next refresh.
        tokio::time::sleep(Duration::from_secs(6)).await;

        // 1. N new VaultSecrets, each on its own object.
        self.start_operator("operator", true).await?;
        progress!(self.started, "phase 1: creating {n} VaultSecrets, each on its own object");
        let create = self.create_and_wait(true, n, object).await?;
        let phase1_took = create.ready_after;
        report.create = Some(create);
        self.sample_memory(&mut report, "1 create");
        if phase1_took.as_secs_f64() > 0.85 * self.interval.as_secs_f64() {
            progress!(
                self.started,
                "warning: creating took longer than 0.85 x interval: VaultSecrets synced first may refresh \
                 twice in the next window (use a longer --interval)"
            );
        }

        // 2. One refresh cycle with nothing changed.
        progress!(
            self.started,
            "phase 2: one refresh cycle with nothing changed ({:.0}s)",
            self.window().as_secs_f64()
        );
        report.idle = Some(self.cycle("idle cycle", false).await?);
        self.sample_memory(&mut report, "2 idle cycle");

        // 3. The same with 10% of the objects rotated right after a cycle.
        let before = self.managed_secrets().await?;
        let rotated: BTreeSet<String> = (0..n).step_by(10).map(|i| self.vault_secret_name(i)).collect();
        for i in (0..n).step_by(10) {
            self.vault_own.set_secret(&object(i), &self.value(format!("value-{i}-v2")));
        }
        progress!(self.started, "phase 3: rotated {} objects; one refresh cycle", rotated.len());
        report.rotation = Some(self.cycle("rotation cycle", true).await?);
        let after = self.managed_secrets().await?;
        report.rotation_check = Some(check_rotation(&before, &after, &rotated));
        self.sample_memory(&mut report, "3 rotation cycle");

        // 5. Restart with nothing due (run before 4, which needs a second operator).
        report.restart = Some(self.restart(&mut report).await?);
        self.sample_memory(&mut report, "5 restart");
        self.record_final_rss(&mut report);
        self.stop_operators().await;

        // 4. N VaultSecrets sharing N/10 objects, with their own namespace, vault and operator.
        self.start_operator("operator-shared", false).await?;
        progress!(self.started, "phase 4: creating {n} VaultSecrets on {} shared objects", n / 10);
        let objects = n / 10;
        report.shared = Some(self.create_and_wait(false, n, move |i| object(i % objects)).await?);
        self.sample_memory(&mut report, "4 shared objects");
        self.record_final_rss(&mut report);
        if let Some(op) = self.operators.last() {
            // The cache counters are published every 5 s.
            tokio::time::sleep(Duration::from_secs(6)).await;
            if let Ok(m) = op.scrape().await {
                let cache: Vec<String> = ["hit", "coalesced", "miss"]
                    .iter()
                    .map(|r| format!("{r} {}", m.get(&format!("vaultsync_cache_reads_total{{result=\"{r}\"}}"))))
                    .collect();
                progress!(self.started, "  shared run: operator cache reads {}", cache.join(", "));
            }
        }
        report.wall = self.started.elapsed();
        Ok(report)
    }

    /// A secret value of at least `--value-bytes`, padded in front (the rotation check reads its end).
    fn value(&self, value: String) -> String {
        format!("{}{value}", "x".repeat(self.flags.value_bytes.saturating_sub(value.len())))
    }

    /// The longest a refresh cycle is waited for: a store's round is at most 1.9 intervals after a read.
    fn window(&self) -> Duration {
        self.interval.mul_f64(CYCLE)
    }

    fn vault_secret_name(&self, i: usize) -> String {
        let width = self.flags.count.to_string().len();
        format!("bench-{i:0width$}")
    }

    fn namespace(&self, own: bool) -> &TestNamespace {
        if own { &self.ns_own } else { &self.ns_shared }
    }

    fn vault(&self, own: bool) -> &KeyVaultServer {
        if own { &self.vault_own } else { &self.vault_shared }
    }

    async fn start_operator(&mut self, label: &str, own: bool) -> anyhow::Result<()> {
        let ns = self.namespace(own).name.clone();
        let args = ["--namespace", &ns, "--watch-namespace", &ns, "--leader-elect", "false"].map(String::from);
        let op = Operator::start(label, &self.flags.operator_bin, &self.kubeconfig, &args, &self.log_dir).await?;
        progress!(self.started, "{label} running (pid {}, metrics on {})", op.pid, op.metrics);
        self.operators.push(op);
        Ok(())
    }

    async fn stop_operators(&mut self) {
        for mut op in self.operators.drain(..) {
            op.stop().await;
        }
    }

    fn operator(&self) -> anyhow::Result<&Operator> {
        self.operators.last().context("no operator running")
    }

    fn sample_memory(&self, report: &mut Report, phase: &str) {
        self.watch_sockets();
        let peak_sockets = self.peak_sockets.swap(0, Ordering::Relaxed);
        if let Some(op) = self.operators.last()
            && let Some(mut memory) = op.memory()
        {
            memory.peak_sockets = peak_sockets;
            progress!(
                self.started,
                "  {} memory: VmHWM {:.1} MiB, VmRSS {:.1} MiB, threads {}; most open sockets seen {}",
                op.label,
                mib(memory.hwm_kb),
                mib(memory.rss_kb),
                memory.threads,
                peak_sockets
            );
            report.memory.push((format!("{phase} ({}, pid {})", op.label, op.pid), memory));
        }
    }

    /// Samples the operator's open sockets (connections to the apiserver, the vault, Entra).
    fn watch_sockets(&self) {
        if let Some(sockets) = self.operators.last().and_then(|op| open_sockets(op.pid)) {
            self.peak_sockets.fetch_max(sockets, Ordering::Relaxed);
        }
    }

    fn record_final_rss(&self, report: &mut Report) {
        if let Some(op) = self.operators.last()
            && let Some(memory) = op.memory()
        {
            report.final_rss.push((op.label.clone(), memory.rss_kb));
        }
    }

    /// Everything measured between two moments.
    async fn snapshot(&self, own: bool) -> anyhow::Result<Snapshot> {
        let op = self.operator()?;
        let metrics = op.scrape().await.context("scraping the operator")?;
        let apiserver = apiserver_requests(&self.client).await.context("scraping the apiserver")?;
        Ok(Snapshot {
            at: Instant::now(),
            reads: self.vault(own).calls(Op::GetSecret),
            lists: self.vault(own).calls(Op::ListSecrets),
            vault_calls: self.vault(own).total_calls(),
            operator: metrics,
            apiserver,
            cpu: cpu_by_process(Some(op.pid)),
        })
    }

    /// Creates `n` VaultSecrets (the i-th on `object(i)`) and waits until all are Ready.
    async fn create_and_wait(
        &self,
        own: bool,
        n: usize,
        object: impl Fn(usize) -> String + Send + Sync + 'static,
    ) -> anyhow::Result<CreateFigures> {
        let api: Api<VaultSecret> = self.namespace(own).api();
        let before = self.snapshot(own).await?;
        let objects = (0..n).map(&object).collect::<BTreeSet<_>>().len();
        let created = Arc::new(AtomicUsize::new(0));
        let specs: Vec<(Api<VaultSecret>, String, Value)> = (0..n)
            .map(|i| {
                let name = self.vault_secret_name(i);
                let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
                "metadata": { "name": name },
                "spec": {
                    "storeRef": { "name": "kv" },
                    "refreshInterval": self.flags.interval,
                    "data": [{ "secretKey": "value", "remoteRef": { "name": object(i) } }],
                }});
                (api.clone(), name, body)
            })
            .collect();
        let creator = spawn_creator(specs, self.flags.creators, created.clone());
        let mut created_at = None;
        let mut creator = Some(creator);
        let mut last_line = Instant::now();
        loop {
            if let Some(task) = creator.take_if(|t| t.is_finished()) {
                created_at = Some(task.await.context("the creating task")??);
                progress!(
                    self.started,
                    "  all {n} VaultSecrets created in {:.1}s",
                    (created_at.unwrap_or(before.at) - before.at).as_secs_f64()
                );
            }
            let list = api.list(&ListParams::default()).await.context("listing VaultSecrets")?;
            let ready = list.items.iter().filter(|vs| is_ready(vs)).count();
            if ready == n && created_at.is_some() {
                break;
            }
            if before.at.elapsed() > self.timeout {
                let reasons = not_ready_reasons(&list.items);
                bail!(
                    "only {ready}/{n} VaultSecrets Ready after {:?}; not ready: {reasons:?}; see {}",
                    self.timeout,
                    self.log_dir.display()
                );
            }
            if last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Instant::now();
                let now = self.snapshot(own).await?;
                let delta = now.since(&before);
                let m = &now.operator;
                progress!(
                    self.started,
                    "  {:>5.1}s: created {}/{n}, Ready {ready}/{n}, backend reads {}, operator writes {}, \
                     in flight {}, waiting {}, cpu {}",
                    delta.wall.as_secs_f64(),
                    created.load(Ordering::Relaxed),
                    delta.reads,
                    delta.operator_writes(),
                    m.get("vaultsync_reconciles_in_flight"),
                    m.get("vaultsync_queue_depth"),
                    delta.cpu_line()
                );
            }
            self.watch_sockets();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let after = self.snapshot(own).await?;
        let delta = after.since(&before);
        let figures = CreateFigures {
            objects,
            created_after: created_at.map_or(delta.wall, |at| at - before.at),
            ready_after: delta.wall,
            delta,
        };
        progress!(
            self.started,
            "  all {n} Ready after {:.1}s: backend reads {}, operator writes {} ({}), syncs {}, cpu {}",
            figures.ready_after.as_secs_f64(),
            figures.delta.reads,
            figures.delta.operator_writes(),
            figures.delta.operator_writes_line(),
            join_counts(&figures.delta.syncs),
            figures.delta.cpu_line()
        );
        progress!(self.started, "  apiserver saw (all clients): {}", figures.delta.apiserver_line());
        Ok(figures)
    }

    /// Measures one refresh cycle of the VaultSecrets in the first namespace: until every one of them was refreshed
    /// once (a store's VaultSecrets come due together, in its round, which may be up to 1.9 intervals away), at most
    /// `window()`.
    /// With `probe`, one more VaultSecret (on an existing object of the same store) is created once a quarter of the
    /// round was worked through, and timed to Ready: new work must not wait behind routine work. It is deleted again
    /// (and its Secret gone) before the cycle's figures are taken.
    async fn cycle(&self, what: &str, probe: bool) -> anyhow::Result<CycleFigures> {
        let before = self.snapshot(true).await?;
        let looked = |m: &Scrape| {
            m.get("vaultsync_syncs_total{result=\"unchanged\"}") + m.get("vaultsync_syncs_total{result=\"synced\"}")
        };
        let looked_before = looked(&before.operator);
        let n = self.flags.count as f64;
        let window = self.window();
        let started = Instant::now();
        let mut next_line = Duration::from_secs(15);
        let mut probing: Option<(tokio::task::JoinHandle<anyhow::Result<Duration>>, u64)> = None;
        while started.elapsed() < window {
            tokio::time::sleep(Duration::from_millis(if probe && probing.is_none() { 200 } else { 1000 })).await;
            self.watch_sockets();
            let elapsed = started.elapsed();
            let m = self.operator()?.scrape().await?;
            let looked_now = looked(&m) - looked_before;
            if probe && probing.is_none() && looked_now >= n / 4.0 {
                let width = self.flags.count.to_string().len();
                let object = format!("bench-obj-{:0width$}", 0);
                let task = tokio::spawn(probe_ready(self.ns_own.api(), self.flags.interval.clone(), object));
                probing = Some((task, looked_now as u64));
            }
            // One round done: every VaultSecret refreshed (and the probe synced), and nothing in flight.
            let expected = n + if probing.is_some() { 1.0 } else { 0.0 };
            if looked_now >= expected && m.get("vaultsync_reconciles_in_flight") == 0.0 {
                break;
            }
            if elapsed < next_line {
                continue;
            }
            next_line += Duration::from_secs(15);
            let now = self.snapshot(true).await?;
            let delta = now.since(&before);
            progress!(
                self.started,
                "  {what}: {:>5.1}s of at most {:.0}s, backend reads {}, list calls {}, operator writes {}",
                elapsed.as_secs_f64(),
                window.as_secs_f64(),
                delta.reads,
                delta.lists,
                delta.operator_writes()
            );
        }
        let window = started.elapsed();
        let probe = match probing {
            Some((task, looked_at_when_created)) => {
                let ready_after = task.await.context("the probe task")??;
                progress!(
                    self.started,
                    "  new VaultSecret created after {looked_at_when_created}/{n} were looked at: Ready after {:.2}s",
                    ready_after.as_secs_f64()
                );
                remove_probe(self.ns_own.api(), self.ns_own.api()).await?;
                Some(Probe { ready_after, looked_at_when_created })
            }
            None => None,
        };
        let after = self.snapshot(true).await?;
        let vault_secrets = self.ns_own.api::<VaultSecret>().list(&ListParams::default()).await?.items.len();
        let delta = after.since(&before);
        // A refresh that finds the same content writes nothing: the operator's own count says what it looked at.
        let refreshed = delta.looked_at();
        progress!(
            self.started,
            "  {what}: {refreshed}/{vault_secrets} VaultSecrets looked at; backend reads {}, list calls {}, operator writes {} ({}), syncs {}, cpu {}",
            delta.reads,
            delta.lists,
            delta.operator_writes(),
            delta.operator_writes_line(),
            join_counts(&delta.syncs),
            delta.cpu_line()
        );
        progress!(self.started, "  apiserver saw (all clients): {}", delta.apiserver_line());
        progress!(self.started, "  operator cache: {}", cache_line(&before.operator, &after.operator));
        Ok(CycleFigures { window, refreshed, delta, probe })
    }

    /// Stops the operator (SIGTERM, as a Pod restart does), starts it again, and waits until it
    /// has looked at every VaultSecret.
    async fn restart(&mut self, report: &mut Report) -> anyhow::Result<RestartFigures> {
        let n = self.flags.count;
        progress!(self.started, "phase 5: restarting the operator right after a refresh cycle");
        let reads_before = self.vault_own.calls(Op::GetSecret);
        let lists_before = self.vault_own.calls(Op::ListSecrets);
        let calls_before = self.vault_own.total_calls();
        let api_before = apiserver_requests(&self.client).await?;
        let cpu_before = cpu_by_process(None);
        if let Some(mut old) = self.operators.pop() {
            if let Some(rss) = old.memory().map(|m| m.rss_kb) {
                report.final_rss.push((format!("{} (before restart)", old.label), rss));
            }
            old.stop().await;
        }
        let stopped = Instant::now();
        self.start_operator("operator-restarted", true).await?;
        let op = self.operator()?;
        let started = Instant::now();
        // Done when every VaultSecret was looked at (`checked`: nothing due, the Secret compared; `unchanged` or
        // `synced`: read) and nothing is in flight for two scrapes in a row.
        let mut reconciled_after = None;
        let mut quiet = 0;
        let deadline = Duration::from_secs(120);
        let mut last_line = Instant::now();
        while started.elapsed() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
            self.watch_sockets();
            let m = op.scrape().await?;
            let looked = m.get("vaultsync_syncs_total{result=\"checked\"}")
                + m.get("vaultsync_syncs_total{result=\"unchanged\"}")
                + m.get("vaultsync_syncs_total{result=\"synced\"}");
            if reconciled_after.is_none() && looked >= n as f64 {
                reconciled_after = Some(started.elapsed());
            }
            if reconciled_after.is_some() && m.get("vaultsync_reconciles_in_flight") == 0.0 {
                quiet += 1;
                if quiet >= 2 {
                    break;
                }
            } else {
                quiet = 0;
            }
            if last_line.elapsed() >= Duration::from_secs(5) {
                last_line = Instant::now();
                progress!(self.started, "  restart: {looked}/{n} VaultSecrets looked at");
            }
        }
        let how = match reconciled_after {
            Some(_) => "until syncs_total{checked+unchanged+synced} >= N and nothing in flight".to_string(),
            None => {
                progress!(self.started, "  restart: syncs_total did not reach N in {deadline:?}; measured after it");
                format!("fixed wait of {deadline:?} (syncs_total did not reach N)")
            }
        };
        let m = op.scrape().await?;
        let api_after = apiserver_requests(&self.client).await?;
        // The restarted operator's CPU is all its own; the old one's last seconds are not counted.
        let delta = Delta {
            wall: stopped.elapsed(),
            reads: self.vault_own.calls(Op::GetSecret) - reads_before,
            lists: self.vault_own.calls(Op::ListSecrets) - lists_before,
            vault_calls: self.vault_own.total_calls() - calls_before,
            operator_by: m.series("vaultsync_apiserver_writes_total"),
            syncs: m.series("vaultsync_syncs_total"),
            apiserver_by: diff_maps(&api_after, &api_before),
            cpu: diff_maps(&cpu_by_process(Some(op.pid)), &cpu_before),
        };
        progress!(
            self.started,
            "  restart: looked at all after {}; backend reads {} (vault calls {}), operator writes {} ({}), syncs {}",
            reconciled_after.map_or("(timeout)".into(), |d| format!("{:.1}s", d.as_secs_f64())),
            delta.reads,
            delta.vault_calls,
            delta.operator_writes(),
            delta.operator_writes_line(),
            join_counts(&delta.syncs)
        );
        progress!(self.started, "  apiserver saw (all clients): {}", delta.apiserver_line());
        Ok(RestartFigures { how, reconciled_after, delta })
    }

    /// Managed Secrets in the first namespace: name -> (resourceVersion, value).
    async fn managed_secrets(&self) -> anyhow::Result<BTreeMap<String, (String, Vec<u8>)>> {
        let params = ListParams::default().labels("app.kubernetes.io/managed-by=vaultsync");
        let list = self.ns_own.api::<Secret>().list(&params).await.context("listing Secrets")?;
        Ok(list
            .items
            .into_iter()
            .filter_map(|s| {
                let value = s.data.as_ref()?.get("value")?.0.clone();
                Some((s.metadata.name?, (s.metadata.resource_version.unwrap_or_default(), value)))
            })
            .collect())
    }
}

fn check_rotation(
    before: &BTreeMap<String, (String, Vec<u8>)>,
    after: &BTreeMap<String, (String, Vec<u8>)>,
    rotated: &BTreeSet<String>,
) -> RotationCheck {
    let changed: BTreeSet<&String> =
        after.iter().filter(|(name, (rv, _))| before.get(*name).map(|b| &b.0) != Some(rv)).map(|(n, _)| n).collect();
    let stale_values = rotated
        .iter()
        .filter(|name| after.get(*name).is_none_or(|(_, v)| !String::from_utf8_lossy(v).ends_with("-v2")))
        .count();
    RotationCheck {
        rotated: rotated.len(),
        changed: changed.len(),
        missed: rotated.iter().filter(|n| !changed.contains(n)).count(),
        unexpected: changed.iter().filter(|n| !rotated.contains(**n)).count(),
        stale_values,
    }
}

fn is_ready(vs: &VaultSecret) -> bool {
    vs.status.as_ref().is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn not_ready_reasons(items: &[VaultSecret]) -> BTreeMap<String, usize> {
    let mut reasons = BTreeMap::new();
    for vs in items.iter().filter(|vs| !is_ready(vs)) {
        let reason = vs
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .map_or_else(|| "(no status)".to_string(), |c| format!("{}: {}", c.reason, c.message));
        *reasons.entry(reason).or_default() += 1;
    }
    reasons
}

// === the operator process ===

/// The operator, run under `controlplane supervise` so that it stops when this program ends,
/// however it ends (the supervisor stops it when its standard input closes).
struct Operator {
    label: String,
    supervisor: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    /// The operator's own pid (the supervisor's child), for /proc.
    pid: u32,
    metrics: SocketAddr,
    log: PathBuf,
}

impl Operator {
    async fn start(
        label: &str,
        bin: &Path,
        kubeconfig: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let log = log_dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut supervisor = tokio::process::Command::new(tool("controlplane")?)
            .args(["supervise", "--"])
            .arg(bin)
            .args(args)
            .args(["--metrics-addr", &metrics.to_string(), "--log-json", "true"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdin = supervisor.stdin.take();
        let supervisor_pid = supervisor.id().context("the supervisor has no pid")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let pid = loop {
            if let Some(pid) = children_of(supervisor_pid).first() {
                break *pid;
            }
            if let Some(status) = supervisor.try_wait()? {
                bail!("{label} exited ({status}):\n{}", vaultsync_e2e::process::log_tail(&log, 20));
            }
            if Instant::now() > deadline {
                bail!("{label} did not start");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut op = Self { label: label.into(), supervisor, stdin, pid, metrics, log };
        loop {
            if http_get(op.metrics, "/readyz").await.is_ok_and(|(status, _)| status == 200) {
                break;
            }
            if let Some(status) = op.supervisor.try_wait()? {
                bail!("{label} exited ({status}):\n{}", vaultsync_e2e::process::log_tail(&op.log, 20));
            }
            if Instant::now() > deadline {
                bail!("{label} not ready after 60 s:\n{}", vaultsync_e2e::process::log_tail(&op.log, 20));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(op)
    }

    /// Stops it as Kubernetes would (SIGTERM, then SIGKILL after 10 s) and waits until it is gone.
    async fn stop(&mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(20), self.supervisor.wait()).await.is_err() {
            let _ = self.supervisor.kill().await;
        }
    }

    async fn scrape(&self) -> anyhow::Result<Scrape> {
        let (status, body) = http_get(self.metrics, "/metrics").await?;
        if status != 200 {
            bail!("GET /metrics answered {status}");
        }
        Ok(Scrape::parse(&body))
    }

    fn memory(&self) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let field = |name: &str| {
            status.lines().find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<u64>().ok())
        };
        let threads = status.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok()).unwrap_or(0);
        Some(Memory { hwm_kb: field("VmHWM:")?, rss_kb: field("VmRSS:")?, threads, peak_sockets: 0 })
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // On an error path: closing stdin makes the supervisor stop the operator; kill_on_drop
        // then kills the supervisor, and its death signal kills the operator if it still runs.
        drop(self.stdin.take());
    }
}

#[derive(Clone, Copy)]
struct Memory {
    hwm_kb: u64,
    rss_kb: u64,
    threads: u64,
    peak_sockets: usize,
}

/// One plain HTTP/1.0 GET (the operator's metrics server answers and closes).
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange).await.context("GET timed out")??;
    let raw = String::from_utf8_lossy(&raw);
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    Ok((status, body.to_string()))
}

// === metrics ===

/// Prometheus text, by series (`name{labels}`).
struct Scrape(HashMap<String, f64>);

impl Scrape {
    fn parse(text: &str) -> Self {
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Self(series)
    }

    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// Every series of metric `name`, by its labels.
    fn series(&self, name: &str) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter_map(|(s, v)| {
                let labels = s.strip_prefix(name)?;
                let labels =
                    labels.strip_prefix('{').and_then(|l| l.strip_suffix('}')).or(labels.is_empty().then_some(""))?;
                Some((compact_labels(labels), *v))
            })
            .collect()
    }
}

/// `verb="apply",resource="secrets"` -> `apply secrets`.
fn compact_labels(labels: &str) -> String {
    parse_labels(labels).into_values().collect::<Vec<_>>().join(" ")
}

fn parse_labels(labels: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = labels;
    while let Some((key, tail)) = rest.split_once("=\"") {
        let Some(end) = tail.find('"') else { break };
        out.insert(key.trim_start_matches(',').to_string(), tail[..end].to_string());
        rest = &tail[end + 1..];
    }
    // Keep the metric's own label order readable: verb before resource.
    if let (Some(verb), Some(resource)) = (out.remove("verb"), out.remove("resource")) {
        out.insert("0verb".into(), verb);
        out.insert("1resource".into(), resource);
    }
    out
}

/// Writes the apiserver has served since it started, all clients, by `VERB resource[/subresource]`.
/// Requests the apiserver has served since it started, all clients: `VERB resource[/subresource]`,
/// with the status code appended when it is not 2xx. Watches are left out (they stay open).
async fn apiserver_requests(client: &Client) -> anyhow::Result<BTreeMap<String, f64>> {
    let request = kube::core::Request::new("").get("metrics", &GetParams::default())?;
    let text = client.request_text(request).await?;
    let mut requests = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let labels = parse_labels(labels);
        let label = |name: &str| labels.get(name).map(String::as_str).unwrap_or_default();
        let verb = label("0verb");
        if verb == "WATCH" || verb == "CONNECT" || label("1resource").is_empty() {
            continue;
        }
        let mut key = format!("{verb} {}", label("1resource"));
        if !label("subresource").is_empty() {
            key = format!("{key}/{}", label("subresource"));
        }
        if !label("code").starts_with('2') {
            key = format!("{key} ({})", label("code"));
        }
        *requests.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(requests)
}

fn is_write(request: &str) -> bool {
    !(request.starts_with("GET ") || request.starts_with("LIST "))
}

struct Snapshot {
    at: Instant,
    reads: u64,
    lists: u64,
    vault_calls: u64,
    operator: Scrape,
    apiserver: BTreeMap<String, f64>,
    cpu: BTreeMap<String, f64>,
}

impl Snapshot {
    fn since(&self, before: &Snapshot) -> Delta {
        let series = |s: &Snapshot, name: &str| s.operator.series(name);
        Delta {
            wall: self.at - before.at,
            reads: self.reads - before.reads,
            lists: self.lists - before.lists,
            vault_calls: self.vault_calls - before.vault_calls,
            operator_by: diff_maps(
                &series(self, "vaultsync_apiserver_writes_total"),
                &series(before, "vaultsync_apiserver_writes_total"),
            ),
            syncs: diff_maps(&series(self, "vaultsync_syncs_total"), &series(before, "vaultsync_syncs_total")),
            apiserver_by: diff_maps(&self.apiserver, &before.apiserver),
            cpu: diff_maps(&self.cpu, &before.cpu),
        }
    }
}

/// What happened between two snapshots.
struct Delta {
    wall: Duration,
    /// Key Vault GetSecret calls (the test server's count).
    reads: u64,
    /// Key Vault list-secrets calls (pages): refreshes that list instead of reading, and store checks.
    lists: u64,
    /// Key Vault calls of every kind (reads, listings made by the store check, ...).
    vault_calls: u64,
    /// `vaultsync_apiserver_writes_total`, by `verb resource`.
    operator_by: BTreeMap<String, f64>,
    /// `vaultsync_syncs_total`, by result.
    syncs: BTreeMap<String, f64>,
    /// The apiserver's own count of requests from every client (see `apiserver_requests`).
    apiserver_by: BTreeMap<String, f64>,
    /// CPU seconds by process.
    cpu: BTreeMap<String, f64>,
}

impl Delta {
    /// VaultSecrets the operator looked at: syncs that wrote and syncs that found nothing to write.
    fn looked_at(&self) -> u64 {
        let count = |result: &str| self.syncs.get(result).copied().unwrap_or(0.0);
        (count("synced") + count("unchanged")).round() as u64
    }

    fn operator_writes(&self) -> u64 {
        self.operator_by.values().sum::<f64>().round() as u64
    }

    fn operator_writes_line(&self) -> String {
        join_counts(&self.operator_by)
    }

    fn apiserver_writes(&self) -> u64 {
        self.apiserver_by.iter().filter(|(k, _)| is_write(k)).map(|(_, v)| v).sum::<f64>().round() as u64
    }

    fn apiserver_line(&self) -> String {
        let writes = self.apiserver_by.iter().filter(|(k, _)| is_write(k)).map(|(k, v)| (k.clone(), *v)).collect();
        let reads = self.apiserver_by.iter().filter(|(k, _)| !is_write(k)).map(|(k, v)| (k.clone(), *v)).collect();
        format!("writes {}; reads {}", join_counts(&writes), join_counts(&reads))
    }

    /// CPU use of the apiserver and the operator, in % of one core over the phase.
    fn busiest(&self) -> String {
        let wall = self.wall.as_secs_f64().max(0.001);
        let share = |name: &str| self.cpu.get(name).map_or("-".into(), |v| format!("{:.0}%", 100.0 * v / wall));
        format!("kube-apiserver {}, operator {}", share("kube-apiserver"), share("operator"))
    }

    fn cpu_line(&self) -> String {
        let wall = self.wall.as_secs_f64().max(0.001);
        let parts: Vec<String> =
            self.cpu.iter().map(|(k, v)| format!("{k} {v:.1}s ({:.0}%)", 100.0 * v / wall)).collect();
        parts.join(", ")
    }
}

fn join_counts(counts: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> =
        counts.iter().filter(|(_, v)| **v > 0.0).map(|(k, v)| format!("{k} {}", v.round())).collect();
    if parts.is_empty() { "none".into() } else { parts.join(", ") }
}

fn diff_maps(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

// === /proc ===

/// (ppid, CPU seconds) of a process.
fn proc_stat(pid: u32) -> Option<(u32, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((ppid, ticks as f64 / 100.0))
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    proc_stat(pid).map(|(_, cpu)| cpu)
}

/// CPU seconds used so far by the control plane's processes, this program and the operator.
fn cpu_by_process(operator: Option<u32>) -> BTreeMap<String, f64> {
    let mut pids = control_plane_pids();
    pids.extend(operator.map(|pid| ("operator".to_string(), pid)));
    pids.push(("bench".into(), std::process::id()));
    pids.into_iter().filter_map(|(label, pid)| Some((label, cpu_seconds(pid)?))).collect()
}

fn open_sockets(pid: u32) -> Option<usize> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let sockets = entries
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count();
    Some(sockets)
}

fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect()
}

fn children_of(parent: u32) -> Vec<u32> {
    pids().into_iter().filter(|p| proc_stat(*p).is_some_and(|(ppid, _)| ppid == parent)).collect()
}

/// etcd, kube-apiserver and kube-controller-manager started by this program's control plane.
fn control_plane_pids() -> Vec<(String, u32)> {
    let me = std::process::id();
    let descends_from_me = |pid: u32| {
        let mut current = pid;
        for _ in 0..4 {
            match proc_stat(current) {
                Some((ppid, _)) if ppid == me => return true,
                Some((ppid, _)) if ppid > 1 => current = ppid,
                _ => return false,
            }
        }
        false
    };
    pids()
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let mut args = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned());
            let program = args.next()?;
            let component = args.next()?;
            let known = ["etcd", "kube-apiserver", "kube-controller-manager"].contains(&component.as_str());
            (program.ends_with("controlplane") && known && descends_from_me(pid)).then_some((component, pid))
        })
        .collect()
}

struct Machine {
    cpus: usize,
    mem_gib: f64,
    cpu_model: String,
}

impl Machine {
    fn read() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse().ok())
            .unwrap_or(0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| Some(l.strip_prefix("model name")?.split_once(':')?.1.trim().to_string()))
            .unwrap_or_else(|| "unknown CPU".into());
        Self { cpus, mem_gib: mem_kb as f64 / 1024.0 / 1024.0, cpu_model }
    }
}

fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

// === the table ===

impl Report {
    fn print(&self, bench: &Bench) {
        let n = bench.flags.count;
        let nf = n as f64;
        let mut rows: Vec<[String; 3]> = Vec::new();
        let mut row = |a: &str, b: String, c: String| rows.push([a.to_string(), b, c]);
        if let Some(c) = &self.create {
            let floor = n.saturating_sub(bench.flags.burst as usize) as f64 / f64::from(bench.flags.rps);
            row(
                "1. N new VaultSecrets (own objects): all Ready",
                format!("{:.1} s", c.ready_after.as_secs_f64()),
                format!(
                    "{:.0}/s; created in {:.1} s; budget {}/s burst {} allows N reads in {floor:.1} s; \
                     {} reads, {} operator writes ({} apiserver writes from all clients); CPU {}",
                    nf / c.ready_after.as_secs_f64(),
                    c.created_after.as_secs_f64(),
                    bench.flags.rps,
                    bench.flags.burst,
                    c.delta.reads,
                    c.delta.operator_writes(),
                    c.delta.apiserver_writes(),
                    c.delta.busiest()
                ),
            );
        }
        for (label, cycle) in
            [("2. refresh cycle, nothing changed", &self.idle), ("3. refresh cycle, 10% rotated", &self.rotation)]
        {
            let Some(c) = cycle else { continue };
            row(
                &format!("{label}: backend reads"),
                format!("{}", c.delta.reads),
                format!(
                    "{:.2} per VaultSecret; {}/{n} refreshed in {:.0} s; {} list calls (25 secrets each); {} Key \
                     Vault calls of any kind",
                    c.delta.reads as f64 / nf,
                    c.refreshed,
                    c.window.as_secs_f64(),
                    c.delta.lists,
                    c.delta.vault_calls
                ),
            );
            if let Some(p) = &c.probe {
                row(
                    &format!("{label}: a new VaultSecret during the round"),
                    format!("Ready after {:.2} s", p.ready_after.as_secs_f64()),
                    format!("created when {}/{n} had been looked at (same store and budget)", p.looked_at_when_created),
                );
            }
            row(
                &format!("{label}: apiserver writes"),
                format!("{}", c.delta.operator_writes()),
                format!(
                    "{:.2} per VaultSecret; {}; apiserver saw {} writes from all clients",
                    c.delta.operator_writes() as f64 / nf,
                    c.delta.operator_writes_line(),
                    c.delta.apiserver_writes()
                ),
            );
        }
        if let Some(r) = &self.rotation_check {
            row(
                "3. Secrets changed (resourceVersion)",
                format!("{}", r.changed),
                format!(
                    "expected {}; missed {}, unexpected {}, without the new value {}",
                    r.rotated, r.missed, r.unexpected, r.stale_values
                ),
            );
        }
        if let Some(s) = &self.shared {
            row(
                "4. N VaultSecrets on N/10 objects: backend reads until all Ready",
                format!("{}", s.delta.reads),
                format!(
                    "{} objects; all Ready after {:.1} s; {} operator writes; CPU {}",
                    s.objects,
                    s.ready_after.as_secs_f64(),
                    s.delta.operator_writes(),
                    s.delta.busiest()
                ),
            );
        }
        if let Some(r) = &self.restart {
            row(
                "5. restart, nothing due: backend reads",
                format!("{}", r.delta.reads),
                format!("{} Key Vault calls of any kind; measured {}", r.delta.vault_calls, r.how),
            );
            row(
                "5. restart, nothing due: apiserver writes",
                format!("{}", r.delta.operator_writes()),
                format!(
                    "all looked at {} after start; syncs {}",
                    r.reconciled_after.map_or("(timeout)".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                    join_counts(&r.delta.syncs)
                ),
            );
        }
        let peak = self.memory.iter().map(|(_, m)| m.hwm_kb).max();
        for (phase, memory) in &self.memory {
            row(
                &format!("6. VmHWM after {phase}"),
                format!("{:.1} MiB", mib(memory.hwm_kb)),
                format!("most open sockets seen in the phase: {}", memory.peak_sockets),
            );
        }
        if let Some(peak) = peak {
            row("6. VmHWM, max", format!("{:.1} MiB", mib(peak)), String::new());
        }
        for (label, rss) in &self.final_rss {
            row(&format!("6. VmRSS at the end, {label}"), format!("{:.1} MiB", mib(*rss)), String::new());
        }
        row("wall time of the whole run", format!("{:.0} s", self.wall.as_secs_f64()), String::new());

        println!();
        println!(
            "## vaultsync-bench {} — N={n}, refreshInterval {}, budget {}/s burst {}",
            bench.started_at.strftime("%Y-%m-%d %H:%M UTC"),
            bench.flags.interval,
            bench.flags.rps,
            bench.flags.burst
        );
        println!(
            "machine: {} CPUs ({}), {:.1} GiB RAM",
            bench.machine.cpus, bench.machine.cpu_model, bench.machine.mem_gib
        );
        println!();
        let widths: Vec<usize> = (0..3).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
        let headers = ["figure", "value", "notes"];
        let line = |cells: [&str; 3]| {
            let mut out = String::from("|");
            for (cell, width) in cells.iter().zip(&widths) {
                let _ = write!(out, " {cell:<width$} |", width = (*width).max(6));
            }
            out
        };
        println!("{}", line(headers));
        let dashes: Vec<String> = widths.iter().map(|w| "-".repeat((*w).max(6))).collect();
        println!("{}", line([&dashes[0], &dashes[1], &dashes[2]]));
        for r in &rows {
            println!("{}", line([&r[0], &r[1], &r[2]]));
        }
    }
}

// === the sharded run ===

impl Bench {
    /// `--shards N`: N operator processes (and a standby with `--standby`) with leader election, cluster-wide, split
    /// `--count` VaultSecrets (each on its own object) spread round-robin over `--namespaces` namespaces, all on one
    /// ClusterVaultStore. Prints the time until all are Ready (from the first and from the last creation) and, per
    /// operator, the shard it holds, the VaultSecrets it keeps, its Secret writes and its peak memory.
    async fn run_sharded(&mut self) -> anyhow::Result<()> {
        let (n, shards) = (self.flags.count, self.flags.shards);
        let width = n.to_string().len();
        for i in 0..n {
            self.vault_own.set_secret(&format!("bench-obj-{i:0width$}"), &format!("value-{i}-v1"));
        }
        // As in `run`: objects written well before they are read.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let mut namespaces = Vec::new();
        for _ in 0..self.flags.namespaces.max(1) {
            namespaces.push(TestNamespace::new("bench-tenant").await);
        }
        let names: Vec<String> = namespaces.iter().map(|ns| ns.name.clone()).collect();
        let store = format!("bench-{}", self.ns_own.name);
        let mut spec = json!({
            "provider": { "azureKeyVault": {
                "vaultUrl": self.vault_own.url(), "tenantId": "tenant-1", "cloud": "Custom",
                "authorityHost": self.entra.authority_host(), "caBundle": TestCa::shared().ca_pem(),
                "auth": { "workloadIdentity": {
                    "serviceAccountRef": { "name": READER_SA, "namespace": self.ns_own.name }, "clientId": "bench-own" } },
            }},
            "budget": { "requestsPerSecond": self.flags.rps, "burst": self.flags.burst },
        });
        spec["conditions"] = json!([{ "namespaces": names }]);
        let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "ClusterVaultStore",
            "metadata": { "name": store }, "spec": spec });
        Api::<vaultsync_api::ClusterVaultStore>::all(self.client.clone())
            .patch(&store, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
            .await
            .context("applying the ClusterVaultStore")?;

        let replicas = shards + u32::from(self.flags.standby);
        for i in 0..replicas {
            let label = format!("replica-{i}");
            let args = [
                "--namespace",
                &self.ns_own.name,
                "--leader-elect",
                "true",
                "--shards",
                &shards.to_string(),
                "--pod-name",
                &label,
                "--lease-name",
                "vaultsync-bench",
            ]
            .map(String::from);
            let op = Operator::start(&label, &self.flags.operator_bin, &self.kubeconfig, &args, &self.log_dir).await?;
            progress!(self.started, "{label} running (pid {}, metrics on {})", op.pid, op.metrics);
            self.operators.push(op);
            if i + 1 == shards {
                // Every shard held before the standby starts, so the standby is the one left over.
                self.wait_shards_held(shards).await?;
            }
        }

        progress!(self.started, "creating {n} VaultSecrets over {} namespaces, {shards} shards", namespaces.len());
        let started = Instant::now();
        let specs: Vec<(Api<VaultSecret>, String, Value)> = (0..n)
            .map(|i| {
                let name = self.vault_secret_name(i);
                let body = json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": "VaultSecret",
                    "metadata": { "name": name },
                    "spec": { "storeRef": { "kind": "ClusterVaultStore", "name": store },
                        "refreshInterval": self.flags.interval,
                        "data": [{ "secretKey": "value", "remoteRef": { "name": format!("bench-obj-{i:0width$}") } }] } });
                (namespaces[i % namespaces.len()].api(), name, body)
            })
            .collect();
        let created = Arc::new(AtomicUsize::new(0));
        let mut creator = Some(spawn_creator(specs, self.flags.creators, created.clone()));
        let mut created_at = None;
        let mut killed = None;
        let all: Api<VaultSecret> = Api::all(self.client.clone());
        loop {
            if let Some(task) = creator.take_if(|t| t.is_finished()) {
                created_at = Some(task.await.context("the creating task")??);
            }
            if self.flags.kill_shard && killed.is_none() && created.load(Ordering::Relaxed) >= n / 2 {
                killed = Some(self.kill_shard_holder(0).await?);
            }
            let list = all.list(&ListParams::default()).await.context("listing VaultSecrets")?;
            let ours =
                list.items.iter().filter(|vs| vs.metadata.namespace.as_ref().is_some_and(|ns| names.contains(ns)));
            let ready = ours.filter(|vs| is_ready(vs)).count();
            let mut kept = Vec::new();
            for op in &self.operators {
                let m = op.scrape().await.map(|m| m.get(r#"vaultsync_vaultsecrets{ready="true"}"#)).unwrap_or(-1.0);
                kept.push(format!("{} {m}", op.label));
            }
            progress!(
                self.started,
                "  {:>5.1}s: created {}/{n}, Ready {ready}/{n} (Ready per operator: {})",
                started.elapsed().as_secs_f64(),
                created.load(Ordering::Relaxed),
                kept.join(", ")
            );
            if ready == n && created_at.is_some() {
                break;
            }
            if started.elapsed() > self.timeout {
                bail!("only {ready}/{n} VaultSecrets Ready after {:?}; see {}", self.timeout, self.log_dir.display());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let total = started.elapsed();
        let after_last = created_at.map_or(Duration::ZERO, |at| at.elapsed());
        println!();
        println!(
            "{n} VaultSecrets over {} namespaces, {shards} shards{}: all Ready {:.1}s after the first creation, \
             {:.1}s after the last",
            namespaces.len(),
            if self.flags.standby { " and a standby" } else { "" },
            total.as_secs_f64(),
            after_last.as_secs_f64()
        );
        if let Some((label, shard)) = &killed {
            println!("{label}, the holder of shard {shard}, was killed (SIGKILL) halfway through the creations");
        }
        println!(
            "| operator | shard | VaultSecrets kept | Secret creates | Secret writes by verb | peak memory (VmHWM) |"
        );
        println!("| --- | --- | --- | --- | --- | --- |");
        for op in &self.operators {
            let Ok(m) = op.scrape().await else { continue };
            // By verb: a create per new Secret; a patch and an apply where a Secret's content changed, or where a
            // holder found a Secret it had not written (its predecessor died between the create and the status).
            let writes: BTreeMap<String, f64> = m
                .0
                .iter()
                .filter(|(series, _)| series.starts_with("vaultsync_apiserver_writes_total{"))
                .filter(|(series, _)| series.contains(r#"resource="secrets""#))
                .filter_map(|(series, v)| Some((series.split_once(r#"verb=""#)?.1.split('"').next()?.to_string(), *v)))
                .collect();
            println!(
                "| {} | {} | {} | {} | {} | {:.1} MiB |",
                op.label,
                m.get("vaultsync_shard"),
                m.get(r#"vaultsync_vaultsecrets{ready="true"}"#),
                m.get(r#"vaultsync_apiserver_writes_total{verb="create",resource="secrets"}"#),
                join_counts(&writes),
                op.memory().map_or(0.0, |memory| mib(memory.hwm_kb))
            );
        }
        Ok(())
    }

    /// Waits until `shards` operators report holding a shard.
    async fn wait_shards_held(&self, shards: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut held = 0;
            for op in &self.operators {
                if op.scrape().await.is_ok_and(|m| m.get("vaultsync_shard") >= 0.0) {
                    held += 1;
                }
            }
            if held >= shards {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {held} of {shards} shards held after 60 s; see {}", self.log_dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills the operator holding `shard` the hard way (no release of its Lease); returns its label and shard.
    async fn kill_shard_holder(&mut self, shard: u32) -> anyhow::Result<(String, u32)> {
        let mut holder = None;
        for (index, op) in self.operators.iter().enumerate() {
            if op.scrape().await.is_ok_and(|m| m.get("vaultsync_shard") == f64::from(shard)) {
                holder = Some(index);
            }
        }
        let op = self.operators.remove(holder.context("no operator holds the shard")?);
        let status = tokio::process::Command::new("kill").args(["-KILL", &op.pid.to_string()]).status().await?;
        anyhow::ensure!(status.success(), "kill -KILL {} failed", op.pid);
        progress!(self.started, "killed {} (pid {}), the holder of shard {shard}", op.label, op.pid);
        Ok((op.label.clone(), shard))
    }
}
