//! vaultsync's CSI side: mounts vault objects as files in pods, read with each pod's own
//! service-account identity. Two modes, one binary:
//! - a provider for the Secrets Store CSI Driver (`v1alpha1.CSIDriverProvider`, [`provider`]);
//! - a standalone CSI node plugin for ephemeral inline volumes (csi.v1 Identity + Node, [`node`]).
//!
//! Both parse the same parameters ([`params`]), read through the same [`reader`] (the backend
//! crate's clients and read cache) and render the same files ([`render`]). `run` is the whole
//! program; the binary only parses flags and sets up logging.
#![forbid(unsafe_code)]

pub mod args;
pub mod error;
pub mod metrics;
pub mod mount;
pub mod mounter;
pub mod node;
pub mod params;
pub mod provider;
pub mod reader;
pub mod registration;
pub mod render;
pub mod server;
pub mod stores;
pub mod writer;

/// Code generated from `proto/` by `build.rs`.
pub mod proto {
    #[allow(clippy::all, clippy::pedantic)]
    pub mod csi {
        tonic::include_proto!("csi.v1");
    }
    #[allow(clippy::all, clippy::pedantic)]
    pub mod provider {
        tonic::include_proto!("v1alpha1");
    }
    #[allow(clippy::all, clippy::pedantic)]
    pub mod registration {
        tonic::include_proto!("pluginregistration");
    }
}

use std::{collections::HashMap, future::Future, path::PathBuf, sync::Arc};

use anyhow::{Context as _, bail};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tracing::info;
use vaultsync_backend::cache::ReadCache;

pub use args::Args;

use crate::{
    metrics::Metrics,
    mounter::Mounter,
    node::{NodeConfig, NodePlugin},
    proto::{csi, provider as provider_proto, registration as registration_proto},
    reader::{InlineConfig, InlineReader, VaultReader},
};

/// The reader of the inline forms as the flags configure it; its vault calls and cache reads are counted in
/// `metrics`.
pub fn inline_reader(args: &Args, metrics: &Arc<Metrics>) -> anyhow::Result<InlineReader> {
    let ca = match &args.ca_bundle_file {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let http = vaultsync_backend::http::http_client(ca.as_deref())?;
    let mut endpoints = HashMap::new();
    for entry in &args.azure_vault_endpoint {
        let Some((name, url)) = entry.split_once('=') else {
            bail!("--azure-vault-endpoint {entry:?} is not NAME=URL")
        };
        if !url.starts_with("https://") {
            bail!("--azure-vault-endpoint {name}: {url:?} is not an https URL");
        }
        endpoints.insert(name.trim().to_string(), url.trim().to_string());
    }
    let config = InlineConfig {
        http,
        azure_authority_host: args.azure_authority_host.clone(),
        azure_vault_endpoints: endpoints,
        openbao_default_address: args.openbao_address.clone(),
        openbao_allowed_addresses: args.openbao_allowed_address.clone(),
        openbao_insecure_http: args.openbao_insecure_http,
        openbao_default_audience: args.openbao_audience.clone(),
        requests_per_second: args.requests_per_second,
        burst: args.burst,
        idle_backend: std::time::Duration::from_secs(15 * 60),
        observer: Some(metrics.call_observer()),
    };
    let cache = Arc::new(ReadCache::new(args.cache_window));
    metrics.watch_cache(cache.clone());
    Ok(InlineReader::new(config, cache))
}

/// The reader of every form: stores resolved with `client` (with the pod's identity), the inline
/// forms by `inline`, one read cache for both; vault calls are counted in `metrics`.
pub fn store_reader(
    args: &Args,
    client: kube::Client,
    inline: Arc<InlineReader>,
    metrics: &Arc<Metrics>,
) -> stores::StoreReader {
    let settings = vaultsync_stores::Settings {
        default_budget: (args.requests_per_second, args.burst),
        // Pods never read with the plugin's own identity: no token requests, no managed identity.
        allowed_audiences: Vec::new(),
        operator_identity_in_vault_stores: false,
        azure_environment: None,
        ..vaultsync_stores::Settings::default()
    };
    let observer = metrics.call_observer();
    // Counted by operation and outcome only: store names would make a series per tenant.
    let observer = Arc::new(move |_store: &str, operation, outcome| observer(operation, outcome));
    let stores = vaultsync_stores::Stores::new(client.clone(), settings, observer);
    stores::StoreReader::new(client, stores, inline)
}

/// Runs until `shutdown` resolves. The store forms are served when a Kubernetes client can be
/// had (in cluster, or from `KUBECONFIG`); the inline forms always.
pub async fn run(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    if let Some(path) = &args.audit_log {
        vaultsync_backend::audit::write_to(path)
            .map_err(|e| anyhow::anyhow!("opening the audit log {}: {e}", path.display()))?;
    }
    let metrics = Metrics::new();
    let inline = Arc::new(inline_reader(&args, &metrics)?);
    let reader: Arc<dyn VaultReader> = match kube::Client::try_default().await {
        Ok(client) => Arc::new(store_reader(&args, client, inline, &metrics)),
        Err(error) => {
            tracing::warn!(%error, "no Kubernetes client: the vaultSecret and storeRef forms are not served");
            inline
        }
    };
    run_with_reader(args, reader, metrics, shutdown).await
}

/// Runs until `shutdown` resolves, reading through `reader` (tests and the store resolution
/// give their own) and counting in `metrics` (served when `--metrics-address` is set).
pub async fn run_with_reader(
    args: Args,
    reader: Arc<dyn VaultReader>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if args.provider_dir.is_none() && args.csi_endpoint.is_none() {
        bail!(
            "nothing to serve: set --provider-dir (Secrets Store CSI Driver provider) and/or --csi-endpoint (CSI node plugin)"
        );
    }
    let mounter = Arc::new(Mounter::new(reader));
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut servers = tokio::task::JoinSet::new();
    let mut sockets: Vec<PathBuf> = Vec::new();
    let stopped = |stop: &tokio::sync::broadcast::Sender<()>| {
        let mut rx = stop.subscribe();
        async move {
            let _ = rx.recv().await;
        }
    };

    if let Some(dir) = &args.provider_dir {
        let path = dir.join(format!("{}.sock", args.provider_name));
        let listener = server::bind(&path)?;
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<provider_proto::csi_driver_provider_server::CsiDriverProviderServer<provider::Provider>>()
            .await;
        let service = provider_proto::csi_driver_provider_server::CsiDriverProviderServer::new(
            provider::Provider::new(mounter.clone(), metrics.clone()),
        )
        // The driver accepts up to 4 MiB; files are capped at 1 MiB.
        .max_encoding_message_size(4 * 1024 * 1024);
        info!(socket = %path.display(), "serving the Secrets Store CSI Driver provider");
        let router = Server::builder().add_service(health_service).add_service(service);
        let done = stopped(&stop);
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), done)
                .await
                .map_err(anyhow::Error::from)
        });
        sockets.push(path);
    }

    if let Some(endpoint) = &args.csi_endpoint {
        let path = server::socket_path(endpoint)?;
        let listener = server::bind(&path)?;
        let config = NodeConfig {
            driver_name: args.driver_name.clone(),
            node_id: if args.node_id.is_empty() { hostname() } else { args.node_id.clone() },
            medium: args.medium,
            refresh_interval: args.refresh_interval,
        };
        if args.medium == mount::Medium::Directory {
            tracing::warn!("--medium directory: volume files are written to the node's disk");
        }
        let plugin = Arc::new(NodePlugin::new(config, mounter.clone(), metrics.clone()));
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<csi::node_server::NodeServer<Arc<NodePlugin>>>().await;
        info!(socket = %path.display(), driver = %args.driver_name, "serving the CSI node plugin");
        let router = Server::builder()
            .add_service(health_service)
            .add_service(csi::identity_server::IdentityServer::new(plugin.clone()))
            .add_service(csi::node_server::NodeServer::new(plugin));
        let done = stopped(&stop);
        servers.spawn(async move {
            router
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), done)
                .await
                .map_err(anyhow::Error::from)
        });
        sockets.push(path.clone());

        if let Some(dir) = &args.kubelet_registration_dir {
            let registration = dir.join(format!("{}-reg.sock", args.driver_name));
            let listener = server::bind(&registration)?;
            let endpoint = args.kubelet_plugin_path.clone().unwrap_or(path);
            let registrar = registration::Registrar {
                driver_name: args.driver_name.clone(),
                endpoint: endpoint.to_string_lossy().into_owned(),
            };
            info!(socket = %registration.display(), "serving kubelet plugin registration");
            let router = Server::builder()
                .add_service(registration_proto::registration_server::RegistrationServer::new(registrar));
            let done = stopped(&stop);
            // kubelet's plugin watcher sends the socket's path as `:authority`: see registration::fixed_incoming.
            let incoming = registration::fixed_incoming(listener);
            servers.spawn(async move {
                router.serve_with_incoming_shutdown(incoming, done).await.map_err(anyhow::Error::from)
            });
            sockets.push(registration);
        }
    }

    if let Some(address) = args.metrics_address {
        let listener = metrics::bind(address).await?;
        info!(address = %listener.local_addr()?, "serving /metrics");
        let done = stopped(&stop);
        let metrics = metrics.clone();
        servers.spawn(async move { metrics::serve(listener, metrics, done).await.map_err(anyhow::Error::from) });
    }

    // Until asked to stop, or until a server fails.
    let outcome = tokio::select! {
        () = shutdown => Ok(()),
        Some(ended) = servers.join_next() => match ended {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.context("a server failed")),
            Err(e) => Err(anyhow::Error::new(e).context("a server panicked")),
        },
    };
    let _ = stop.send(());
    while servers.join_next().await.is_some() {}
    for socket in &sockets {
        server::remove_socket(socket);
    }
    info!("stopped");
    outcome
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown-node".into())
}
