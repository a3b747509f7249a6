//! The `vaultsync-operator` binary: parse flags, set up logging, run.

use clap::Parser as _;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// jemalloc returns pages freed for a while to the system; glibc's allocator kept them, so the operator's resident
/// size grew with each refresh round of 10,000 VaultSecrets (61.7 to 65.4 MiB over two rounds; 60.8 to 63.5 MiB with
/// jemalloc). The images are static musl binaries: with this allocator they allocate as the benchmarked glibc build
/// does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = vaultsync_operator::Args::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    if args.log_json {
        registry.with(fmt::layer().json()).init();
    } else {
        registry.with(fmt::layer()).init();
    }
    vaultsync_operator::run(args).await
}
