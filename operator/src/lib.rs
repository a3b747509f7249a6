//! vaultsync's operator: reconciles `VaultSecret`s into Kubernetes Secrets from the stores they
//! name, heals drift, and reports status, Events and metrics. `run` is the whole program; the
//! binary only parses arguments and sets up logging.
#![forbid(unsafe_code)]

pub mod args;
pub mod eventgrid;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod peers;
pub mod render;
pub mod rollout;
pub mod shard;
pub mod store_status;
pub mod triggers;
pub mod vaultsecret;

use std::{
    sync::{Arc, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context as _;
use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use rand::RngCore as _;
use tracing::{Instrument as _, info};
use zeroize::Zeroizing;

pub use args::Args;

/// Runs the operator until SIGTERM/Ctrl-C, or until leadership is lost.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let config = kube::Config::infer().await.context("finding the Kubernetes API")?;
    run_with_client(client(config)?, args).await
}

/// A client for `config` whose retries of 429, 503 and 504 are bounded: three, 0.5 s to 5 s apart (the apiserver's
/// `Retry-After` honoured). kube's own default retries fifteen times with waits growing to 1000 s, so an apiserver
/// that throttles the operator for a while would hold reconciles for minutes without a word in any condition, and
/// keep them waiting long after it recovered.
pub fn client(mut config: kube::Config) -> anyhow::Result<Client> {
    use kube::client::{ClientBuilder, retry::RetryPolicy};
    config.default_retry = false;
    let policy = RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(5), 3, true)
        .context("the apiserver retry policy")?;
    let builder = ClientBuilder::try_from(config).context("a Kubernetes client")?;
    // The retry layer clones the service it wraps; a buffer makes the boxed stack cloneable.
    Ok(builder
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(policy))
        .build())
}

/// Like `run`, with a given client (tests run the operator in process).
pub async fn run_with_client(client: Client, args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.reconcile_timeout >= std::time::Duration::from_secs(1),
        "--reconcile-timeout must be at least 1s (every sync would time out)"
    );
    // A misconfigured Event Grid endpoint (no key file, unreadable or weak key) fails the start.
    let event_grid = eventgrid::Config::from_args(&args)?;
    if let Some(path) = &args.audit_log {
        vaultsync_backend::audit::write_to(path)
            .with_context(|| format!("opening the audit log {}", path.display()))?;
    }
    let metrics = metrics::Metrics::new();
    let ready = Arc::new(AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr).await.context("binding the metrics address")?;
    // The endpoint stops when this function returns or its future is dropped.
    let (_stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(http::serve(listener, metrics.clone(), ready.clone(), async move {
        let _ = http_stopped.await;
    }));
    // Vault events: served on every replica (handshakes work on a standby), acted on once the controller runs.
    let refresh_slot = eventgrid::RefreshSlot::default();
    let (_stop_events, events_stopped) = tokio::sync::oneshot::channel::<()>();
    let event_grid_addr = event_grid.as_ref().map(|config| config.addr);
    if let Some(config) = event_grid {
        let (listener, _) = eventgrid::bind(config.addr).await?;
        tokio::spawn(eventgrid::serve(listener, config, metrics.clone(), refresh_slot.clone(), async move {
            let _ = events_stopped.await;
        }));
    }

    anyhow::ensure!(
        args.leader_elect || args.shards == 1,
        "--shards above 1 needs --leader-elect: each shard is held through its Lease"
    );
    let mut leadership = None;
    let mut shard = shard::Shard::ALL;
    if args.leader_elect {
        let configs = (0..args.shards)
            .map(|index| leader::LeaderConfig {
                namespace: args.namespace.clone(),
                lease_name: shard::Shard::lease_name(&args.lease_name, index, args.shards),
                identity: args.pod_name.clone(),
                lease_duration: args.lease_duration,
                renew_every: args.lease_duration / 3,
                retry_every: (args.lease_duration / 7).max(std::time::Duration::from_millis(100)),
            })
            .collect();
        // A standby replica is healthy and ready; it just does not write.
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        if args.label_leader_pod {
            // A replica restarted in the pod of a former leader must not keep drawing its traffic.
            mark_leader(&client, &args, false).await;
        }
        info!(lease = %args.lease_name, shards = args.shards, "waiting to become the leader");
        let (index, held) = leader::acquire_any(client.clone(), configs).await?;
        shard = shard::Shard { index: u32::try_from(index).context("a shard index")?, count: args.shards };
        leadership = Some(held);
        if args.label_leader_pod {
            mark_leader(&client, &args, true).await;
        }
        if shard.count > 1
            && let Some(endpoint) = event_grid_addr
        {
            share_vault_events(&client, &args, shard, endpoint, &refresh_slot).await?;
        }
    }
    metrics.set_leader(true);
    metrics.set_shard(Some(shard.index));
    let hmac_key = hmac_key(&client, &args).await?;
    let (client_for_release, args_for_release) = (client.clone(), args.clone());
    ready.store(true, std::sync::atomic::Ordering::Relaxed);
    // Every line this replica logs while it works carries its shard, so a sharded installation's logs can be told
    // apart.
    let span = if shard.count > 1 {
        tracing::info_span!("shard", shard = shard.index, shards = shard.count)
    } else {
        tracing::Span::none()
    };
    span.in_scope(|| info!("vaultsync operator running"));
    let observer_metrics = metrics.clone();
    let observer: vaultsync_stores::StoreObserver =
        Arc::new(move |store, operation, outcome| observer_metrics.backend_call(store, operation, outcome));
    let stores = Arc::new(vaultsync_stores::Stores::new(client.clone(), args.store_settings(), observer));
    let store_status = store_status::run(client.clone(), args.watch_namespace.clone(), stores.clone(), shard);
    let (refresh, vault_secrets) = vaultsecret::controller(client, args, metrics, hmac_key, stores, shard);
    refresh_slot.set(refresh);
    let controller = async {
        futures::join!(vault_secrets, store_status);
    }
    .instrument(span);
    match leadership {
        Some(mut leadership) => {
            tokio::select! {
                () = controller => {}
                () = leadership.lost() => anyhow::bail!("lost the leader lease; exiting so a new leader takes over"),
            }
            // Shutting down (SIGTERM): hand the Lease over now rather than after it expires.
            if args_for_release.label_leader_pod {
                mark_leader(&client_for_release, &args_for_release, false).await;
            }
            leadership.release().await;
            Ok(())
        }
        None => {
            controller.await;
            Ok(())
        }
    }
}

/// When sharding with the Event Grid endpoint on: advertises this replica's endpoint on its shard's Lease, and lets the
/// endpoint pass deliveries on to the other shards (see `peers`). Without `--pod-ip` the other shards cannot reach
/// it: deliveries then refresh only the receiving shard's VaultSecrets, and polling converges the others.
async fn share_vault_events(
    client: &Client,
    args: &Args,
    shard: shard::Shard,
    endpoint: std::net::SocketAddr,
    slot: &eventgrid::RefreshSlot,
) -> anyhow::Result<()> {
    let Some(pod_ip) = args.pod_ip else {
        tracing::warn!(
            "sharded with the Event Grid endpoint on but no --pod-ip: vault events refresh only the VaultSecrets of \
             the shard they reach, the others at their refresh interval"
        );
        return Ok(());
    };
    let lease = shard::Shard::lease_name(&args.lease_name, shard.index, shard.count);
    let url = peers::url(pod_ip, endpoint);
    // Without it the other shards answer 503 to deliveries for this one, and Event Grid delivers them again.
    if let Err(error) = peers::advertise(client.clone(), &args.namespace, &lease, &args.pod_name, &url).await {
        tracing::warn!(error = format!("{error:#}"), %lease, "could not advertise the Event Grid address on the Lease");
    }
    let others = (0..shard.count)
        .filter(|index| *index != shard.index)
        .map(|index| shard::Shard::lease_name(&args.lease_name, index, shard.count))
        .collect();
    slot.set_peers(peers::Peers::new(client.clone(), &args.namespace, others, args.pod_name.clone())?);
    Ok(())
}

/// Labels (or unlabels) this replica's pod as the leader; a failure is logged (the pod may be gone, or the operator
/// may not run in a pod).
async fn mark_leader(client: &Client, args: &Args, leading: bool) {
    if let Err(e) = leader::label_pod(client, &args.namespace, &args.pod_name, leading).await {
        tracing::warn!(error = %e, pod = %args.pod_name, leading, "labelling this replica's pod failed");
    }
}

/// The installation's HMAC key (for status digests): read from its Secret, created on first start.
async fn hmac_key(client: &Client, args: &Args) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &args.namespace);
    let read = |secret: Secret| secret.data.and_then(|mut d| d.remove("key")).map(|k| Zeroizing::new(k.0));
    if let Some(key) = api.get_opt(&args.hmac_secret).await?.and_then(read) {
        return Ok(key);
    }
    let mut key = Zeroizing::new(vec![0u8; 32]);
    rand::rng().fill_bytes(&mut key);
    let secret = Secret {
        metadata: ObjectMeta { name: Some(args.hmac_secret.clone()), ..Default::default() },
        data: Some([("key".to_string(), ByteString(key.to_vec()))].into()),
        immutable: Some(true),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(key),
        // Another replica created it first: use theirs.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            api.get(&args.hmac_secret).await.ok().and_then(read).context("the HMAC key Secret exists but has no key")
        }
        Err(e) => Err(e).context("creating the HMAC key Secret"),
    }
}
