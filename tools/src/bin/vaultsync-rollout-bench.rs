//! `make bench-rollout`: how long a rotation in the vault takes to become a new ReplicaSet of the
//! Deployment that uses it, by the polling path (the VaultSecret's refresh interval) and by the
//! event path (an Event Grid delivery), and how many backend reads each rotation costs. Runs on
//! the local control plane with the Key Vault and Entra test servers and the operator in process.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use k8s_openapi::api::{
    apps::v1::{Deployment, ReplicaSet},
    core::v1::ServiceAccount,
};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vaultsync_e2e::{
    TestNamespace,
    entra::{EntraServer, Federation},
    install_crds,
    keyvault::{KeyVaultServer, Op},
    process::free_port,
    tls::TestCa,
};

#[derive(Parser)]
#[command(about = "Rotation-to-rollout latency by the polling path and the event path")]
struct Flags {
    /// Rotations measured per path.
    #[arg(long, default_value_t = 5)]
    rotations: usize,
    /// The VaultSecret's refreshInterval (the polling path's period).
    #[arg(long, default_value = "10s")]
    interval: String,
    /// The VaultSecret's rollout debounce window.
    #[arg(long, default_value = "1s")]
    debounce: String,
}

const OBJECT: &str = "rotating-secret";

struct Setup {
    ns: TestNamespace,
    vault: KeyVaultServer,
    _entra: EntraServer,
    event_port: u16,
    event_key: String,
    _key_dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let flags = Flags::parse();
    let started = Instant::now();
    let setup = setup(&flags).await?;
    println!("waiting for the first sync and the Deployment's baseline...");
    wait_replica_sets(&setup, 1, Duration::from_secs(60)).await?;
    wait_baseline(&setup).await?;

    let mut polling = Vec::new();
    let mut polling_reads = Vec::new();
    for i in 0..flags.rotations {
        let (latency, reads) = rotation(&setup, &format!("polled-{i}"), false).await?;
        println!("  polling path, rotation {}: {:.2}s, {reads} backend read(s)", i + 1, latency.as_secs_f64());
        polling.push(latency);
        polling_reads.push(reads);
    }
    let mut events = Vec::new();
    let mut event_reads = Vec::new();
    for i in 0..flags.rotations {
        let (latency, reads) = rotation(&setup, &format!("event-{i}"), true).await?;
        println!("  event path, rotation {}: {:.2}s, {reads} backend read(s)", i + 1, latency.as_secs_f64());
        events.push(latency);
        event_reads.push(reads);
    }

    println!();
    println!(
        "vaultsync rotation-to-rollout benchmark ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("refreshInterval {}, debounce {}, {} rotations per path", flags.interval, flags.debounce, flags.rotations);
    println!("| path | latency min | median | max | backend reads per rotation |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, latencies, reads) in [("polling", &mut polling, &polling_reads), ("event", &mut events, &event_reads)] {
        latencies.sort();
        let total: u64 = reads.iter().sum();
        println!(
            "| {name} | {:.2}s | {:.2}s | {:.2}s | {:.2} |",
            latencies[0].as_secs_f64(),
            latencies[latencies.len() / 2].as_secs_f64(),
            latencies[latencies.len() - 1].as_secs_f64(),
            total as f64 / reads.len() as f64
        );
    }
    println!("latency = from the new version in the vault to a new ReplicaSet (pod-template-hash) of the Deployment");
    println!("wall time {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn setup(flags: &Flags) -> anyhow::Result<Setup> {
    let ns = TestNamespace::new("bench-rollout").await;
    install_crds(&ns.client).await;
    let accounts: Api<ServiceAccount> = ns.api();
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some("reader".into()), ..Default::default() },
        ..Default::default()
    };
    accounts.create(&PostParams::default(), &sa).await?;
    let access_token = format!("token-for-{}", ns.name);
    let federation = Federation {
        client_id: "app".into(),
        subject: format!("system:serviceaccount:{}:reader", ns.name),
        audience: "api://AzureADTokenExchange".into(),
        access_token: access_token.clone(),
    };
    let vault = KeyVaultServer::builder().authority("https://login.microsoftonline.com", "tenant-1").start().await?;
    let entra = EntraServer::builder(Some(ns.client.clone()))
        .federation(federation)
        .resource(vault.challenge_resource())
        .start()
        .await?;
    vault.require_bearer(Some(access_token));
    vault.set_secret(OBJECT, "initial");

    let apply = |kind: &str, name: &str, spec: serde_json::Value| json!({ "apiVersion": "vaultsync.dev/v1alpha1", "kind": kind, "metadata": { "name": name }, "spec": spec });
    let store = apply(
        "VaultStore",
        "kv",
        json!({ "provider": { "azureKeyVault": {
        "vaultUrl": vault.url(), "tenantId": "tenant-1", "cloud": "Custom", "authorityHost": entra.authority_host(),
        "caBundle": TestCa::shared().ca_pem(),
        "auth": { "workloadIdentity": { "serviceAccountRef": { "name": "reader" }, "clientId": "app" } } } } }),
    );
    let params = PatchParams::apply("bench").force();
    Api::<vaultsync_api::VaultStore>::namespaced(ns.client.clone(), &ns.name)
        .patch("kv", &params, &Patch::Apply(&store))
        .await?;
    let deployment = json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": { "name": "web" },
        "spec": { "replicas": 1, "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1",
                    "envFrom": [{ "secretRef": { "name": "rotating" } }] }] } } } });
    ns.api::<Deployment>().patch("web", &params, &Patch::Apply(&deployment)).await?;
    let vs = apply(
        "VaultSecret",
        "rotating",
        json!({ "storeRef": { "name": "kv" }, "refreshInterval": flags.interval,
        "data": [{ "secretKey": "value", "remoteRef": { "name": OBJECT } }],
        "rollout": { "targets": [{ "kind": "Deployment", "name": "web" }], "debounce": flags.debounce } }),
    );
    Api::<vaultsync_api::VaultSecret>::namespaced(ns.client.clone(), &ns.name)
        .patch("rotating", &params, &Patch::Apply(&vs))
        .await?;

    let event_port = free_port()?;
    let key_dir = TempDir(std::env::temp_dir().join(format!("vaultsync-rollout-bench-{}", std::process::id())));
    std::fs::create_dir_all(&key_dir.0)?;
    let event_key = format!("bench-key-{}-{}", std::process::id(), event_port);
    std::fs::write(key_dir.0.join("key"), &event_key)?;
    let mut args = vaultsync_operator::Args::parse_from([
        "vaultsync-operator",
        "--namespace",
        &ns.name,
        "--watch-namespace",
        &ns.name,
        "--leader-elect",
        "false",
    ]);
    args.metrics_addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    args.event_grid_addr = Some(format!("127.0.0.1:{event_port}").parse()?);
    args.event_grid_key_file = Some(key_dir.0.join("key"));
    let client = ns.client.clone();
    tokio::spawn(async move {
        if let Err(e) = vaultsync_operator::run_with_client(client, args).await {
            eprintln!("the operator stopped: {e:#}");
            std::process::exit(1);
        }
    });
    Ok(Setup { ns, vault, _entra: entra, event_port, event_key, _key_dir: key_dir })
}

async fn replica_sets(setup: &Setup) -> anyhow::Result<usize> {
    let api: Api<ReplicaSet> = setup.ns.api();
    Ok(api.list(&ListParams::default().labels("app=web")).await?.items.len())
}

async fn wait_replica_sets(setup: &Setup, count: usize, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while replica_sets(setup).await? < count {
        if Instant::now() > deadline {
            bail!("no ReplicaSet number {count} after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn wait_baseline(setup: &Setup) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = setup.ns.api::<Deployment>().get("web").await?;
        if d.metadata.annotations.unwrap_or_default().contains_key("vaultsync.dev/observed-content-hash") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the Deployment got no baseline");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One rotation: a new version in the vault (and, for the event path, its Event Grid delivery);
/// returns the time to the next ReplicaSet and the backend reads it cost.
async fn rotation(setup: &Setup, value: &str, by_event: bool) -> anyhow::Result<(Duration, u64)> {
    let before = replica_sets(setup).await?;
    let reads = setup.vault.calls(Op::GetSecret);
    let started = Instant::now();
    let version = setup.vault.set_secret(OBJECT, value);
    if by_event {
        deliver_event(setup, &version).await?;
    }
    wait_replica_sets(setup, before + 1, Duration::from_secs(120)).await?;
    let latency = started.elapsed();
    // Let any late read of this rotation land before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok((latency, setup.vault.calls(Op::GetSecret) - reads))
}

async fn deliver_event(setup: &Setup, version: &str) -> anyhow::Result<()> {
    let event = json!([{
        "id": format!("bench-{version}"), "subject": OBJECT, "eventType": "Microsoft.KeyVault.SecretNewVersionCreated",
        "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/bench",
        "eventTime": "2026-01-01T00:00:00Z", "dataVersion": "1", "metadataVersion": "1",
        "data": { "Id": format!("{}/secrets/{OBJECT}/{version}", setup.vault.url()), "VaultName": "bench",
            "ObjectType": "Secret", "ObjectName": OBJECT, "Version": version },
    }])
    .to_string();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", setup.event_port)).await?;
    let request = format!(
        "POST /eventgrid HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nx-vaultsync-key: {}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{event}",
        setup.event_key,
        event.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    let status = answer.get(9..12).context("no HTTP status")?;
    if status != "200" {
        bail!("the event delivery was answered {status}");
    }
    Ok(())
}
