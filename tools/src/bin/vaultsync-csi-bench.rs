//! `make bench-csi`: measures the CSI node plugin (a release build, as its own process, so its
//! memory can be read from /proc) on this machine with real tmpfs mounts, real service-account
//! tokens from the local control plane, and the Key Vault + Entra test servers in this process.
//! Prints publish latency (cold: a new identity, so a token exchange and a vault read; warm: a
//! pod of an identity whose read is cached), vault reads for 100 pods of one service account and
//! of 10, and the plugin's resident memory with 1,000 published volumes. A program that prints
//! figures, not a test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser as _;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use serde_json::json;
use tonic::transport::Channel;
use vaultsync_csi::proto::csi::{NodeUnpublishVolumeRequest, node_client::NodeClient};
use vaultsync_e2e::{
    ControlPlane, TestNamespace,
    entra::{EntraServer, Federation},
    keyvault::{KeyVaultServer, Op},
    process::tool,
    service_account_token,
    tls::TestCa,
};

#[derive(clap::Parser, Debug)]
#[command(name = "vaultsync-csi-bench", about = "Measures the vaultsync CSI node plugin")]
struct Flags {
    /// The vaultsync-csi binary to measure.
    #[arg(long)]
    plugin_bin: PathBuf,
    /// Volumes published for the memory figure.
    #[arg(long, default_value_t = 1000)]
    volumes: usize,
    /// Cold publishes (each a new service account).
    #[arg(long, default_value_t = 50)]
    cold: usize,
    /// Warm publishes.
    #[arg(long, default_value_t = 200)]
    warm: usize,
}

const ACCOUNTS: usize = 100;
const AUDIENCE: &str = "api://AzureADTokenExchange";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    anyhow::ensure!(
        flags.cold <= 50 && flags.volumes >= flags.cold + flags.warm + 200,
        "--cold at most 50; --volumes at least cold + warm + 200"
    );
    vaultsync_e2e::tls::install_crypto_provider();
    let started = Instant::now();
    let cp = tokio::task::spawn_blocking(ControlPlane::shared).await.context("starting the control plane")?;
    let _ = cp.client().await;
    let ns = TestNamespace::new("csi-bench").await;
    let accounts: Api<ServiceAccount> = ns.api();
    let mut federations = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..ACCOUNTS {
        let name = format!("sa-{i}");
        let account = ServiceAccount {
            metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() },
            ..Default::default()
        };
        accounts.create(&PostParams::default(), &account).await?;
        federations.push(Federation {
            client_id: format!("client-{i}"),
            subject: format!("system:serviceaccount:{}:{name}", ns.name),
            audience: AUDIENCE.into(),
            access_token: "bench-access".into(),
        });
        // Kubelet gives each pod its own token; one per account costs the plugin the same.
        tokens.push(service_account_token(&accounts, &name, AUDIENCE).await?);
    }
    let entra = EntraServer::start(ns.client.clone(), federations).await?;
    let vault = KeyVaultServer::start().await?;
    vault.require_bearer(Some("bench-access".into()));
    for object in ["db-password", "shared-one", "shared-ten", "memory"] {
        vault.set_secret(object, &format!("{object}-value-{}", "x".repeat(64)));
    }
    println!(
        "setup: control plane, {ACCOUNTS} service accounts with tokens, test servers ({:.1}s)",
        started.elapsed().as_secs_f64()
    );

    let dir = std::env::temp_dir().join(format!("vaultsync-csi-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("targets"))?;
    std::fs::write(dir.join("ca.pem"), TestCa::shared().ca_pem())?;
    let mut plugin = PluginProcess::start(&flags.plugin_bin, &dir, &entra, &vault).await?;
    let mut node = NodeClient::new(plugin.channel().await?);
    let volume = |pod: usize, account: usize, object: &str| {
        let context = [
            ("csi.storage.k8s.io/pod.name".to_string(), format!("pod-{pod}")),
            ("csi.storage.k8s.io/pod.namespace".into(), ns.name.clone()),
            ("csi.storage.k8s.io/pod.uid".into(), format!("uid-{pod}")),
            ("csi.storage.k8s.io/serviceAccount.name".into(), format!("sa-{account}")),
            (
                "csi.storage.k8s.io/serviceAccount.tokens".into(),
                json!({ AUDIENCE: { "token": tokens[account] } }).to_string(),
            ),
            ("csi.storage.k8s.io/ephemeral".into(), "true".into()),
            ("keyvaultName".into(), "kv-bench".into()),
            ("tenantID".into(), "tenant-bench".into()),
            ("clientID".into(), format!("client-{account}")),
            ("objects".into(), format!("array:\n  - |\n    objectName: {object}\n")),
        ];
        let target = dir.join("targets").join(format!("pod-{pod}"));
        vaultsync_tools::csi_demo::kubelet_publish(&format!("vol-{pod}"), &target, context.into_iter().collect())
    };
    let mut published = Vec::new();
    let mut pod = 0usize;

    // Cold: every publish is a new identity (token exchange at Entra, then the vault read).
    let mut cold = Vec::new();
    for account in 0..flags.cold {
        let request = volume(pod, account, "db-password");
        let at = Instant::now();
        node.node_publish_volume(request.clone()).await.context("a cold publish")?;
        cold.push(at.elapsed());
        published.push(request);
        pod += 1;
    }
    // Warm: pods of identities whose token and read are cached.
    let mut warm = Vec::new();
    for i in 0..flags.warm {
        let request = volume(pod, i % flags.cold.max(1), "db-password");
        let at = Instant::now();
        node.node_publish_volume(request.clone()).await.context("a warm publish")?;
        warm.push(at.elapsed());
        published.push(request);
        pod += 1;
    }
    println!("\npublish latency (NodePublishVolume: read, tmpfs mount, atomic write)");
    println!("  cold (new identity: Entra exchange + vault read), n={}: {}", cold.len(), percentiles(&mut cold));
    println!("  warm (cached identity and read), n={}:               {}", warm.len(), percentiles(&mut warm));

    // Reads: 100 pods of one service account at once, then 100 pods of 10 accounts, one object each.
    println!("\nvault reads (GET secret) for 100 pods published at once, one object");
    for (label, object, spread) in
        [("1 service account", "shared-one", 1usize), ("10 service accounts", "shared-ten", 10)]
    {
        vault.reset_counts();
        let first_account = if spread == 1 { 60 } else { 70 };
        let requests: Vec<_> = (0..100).map(|i| volume(pod + i, first_account + i % spread, object)).collect();
        pod += 100;
        let at = Instant::now();
        let calls = requests.iter().cloned().map(|r| {
            let mut node = node.clone();
            async move { node.node_publish_volume(r).await }
        });
        for result in futures::future::join_all(calls).await {
            result.context("a concurrent publish")?;
        }
        println!(
            "  100 pods, {label}: {} vault reads, {} token exchanges so far, {:.0} ms for all 100",
            vault.calls(Op::GetSecret),
            entra.counts().0,
            at.elapsed().as_secs_f64() * 1000.0
        );
        published.extend(requests);
    }

    // Memory with many volumes published.
    let before = plugin.memory();
    while published.len() < flags.volumes {
        let request = volume(pod, pod % ACCOUNTS, "memory");
        node.node_publish_volume(request.clone()).await.context("publishing for the memory figure")?;
        published.push(request);
        pod += 1;
    }
    let mounts = vaultsync_csi::mount::mount_points()?.iter().filter(|p| p.starts_with(&dir)).count();
    let after = plugin.memory();
    println!("\nplugin memory");
    println!("  after start and the first {} volumes: {before}", flags.cold + flags.warm + 200);
    println!("  with {} volumes published ({mounts} tmpfs mounts): {after}", published.len());

    let at = Instant::now();
    for request in &published {
        node.node_unpublish_volume(NodeUnpublishVolumeRequest {
            volume_id: request.volume_id.clone(),
            target_path: request.target_path.clone(),
        })
        .await
        .context("unpublishing")?;
    }
    println!("\nunpublished {} volumes in {:.1}s", published.len(), at.elapsed().as_secs_f64());
    plugin.stop().await;
    unmount_under(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    println!("total {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn percentiles(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: usize| {
        samples.get((samples.len() * q / 100).min(samples.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(at(50)),
        ms(at(99)),
        ms(samples.last().copied().unwrap_or_default())
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Unmounts anything left under `dir` (an interrupted run).
fn unmount_under(dir: &Path) {
    if let Ok(points) = vaultsync_csi::mount::mount_points() {
        for point in points.into_iter().filter(|p| p.starts_with(dir)) {
            let _ = nix::mount::umount2(&point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The plugin, run under `controlplane supervise` so it stops when this program ends however it ends.
struct PluginProcess {
    supervisor: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    pid: u32,
    socket: PathBuf,
    dir: PathBuf,
}

impl PluginProcess {
    async fn start(bin: &Path, dir: &Path, entra: &EntraServer, vault: &KeyVaultServer) -> anyhow::Result<Self> {
        let socket = dir.join("csi.sock");
        let log = std::fs::File::create(dir.join("plugin.log"))?;
        let mut supervisor = tokio::process::Command::new(tool("controlplane")?)
            .args(["supervise", "--"])
            .arg(bin)
            .arg(format!("--csi-endpoint=unix://{}", socket.display()))
            .args(["--node-id", "bench-node", "--refresh-interval", "10m", "--cache-window", "60s"])
            .args(["--requests-per-second", "1000", "--burst", "1000"])
            .arg(format!("--ca-bundle-file={}", dir.join("ca.pem").display()))
            .arg(format!("--azure-authority-host={}", entra.authority_host()))
            .arg(format!("--azure-vault-endpoint=kv-bench={}", vault.url()))
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("starting the plugin")?;
        let stdin = supervisor.stdin.take();
        let supervisor_pid = supervisor.id().context("no supervisor pid")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let pid = loop {
            // The supervisor's one child is the plugin.
            let children = std::fs::read_to_string(format!("/proc/{supervisor_pid}/task/{supervisor_pid}/children"))
                .unwrap_or_default();
            if let Some(pid) = children.split_whitespace().next().and_then(|p| p.parse().ok())
                && socket.exists()
            {
                break pid;
            }
            if Instant::now() > deadline {
                bail!("the plugin did not start:\n{}", vaultsync_e2e::process::log_tail(&dir.join("plugin.log"), 20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self { supervisor, stdin, pid, socket, dir: dir.to_path_buf() })
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        Ok(vaultsync_csi::server::connect(&self.socket).await?)
    }

    /// VmRSS and VmHWM of the plugin.
    fn memory(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let kib = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        format!("VmRSS {:.1} MiB (peak {:.1} MiB)", kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }

    async fn stop(&mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(20), self.supervisor.wait()).await;
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        unmount_under(&self.dir);
    }
}
