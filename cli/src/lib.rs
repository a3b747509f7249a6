//! `kubectl vaultsync`: what vaultsync does in a cluster and why a Secret is not there (`status`, `why`), a
//! force-sync that waits for the result (`sync`), a VaultSecret's Secret rendered from example values without a
//! vault (`render`), resources of other secret operators converted (`migrate`), and a command run with a
//! VaultSecret's keys read with the developer's own identity (`run`). The commands reuse the operator's own code:
//! store tenancy from `vaultsync-stores`, rendering and the workload matching from `vaultsync-operator`.
#![forbid(unsafe_code)]

pub mod migrate;
mod render;
mod rollout_status;
mod run;
mod status;
mod sync;
mod why;

use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use kube::{Client, Config, config::KubeConfigOptions};

/// What a command printed, and the exit code it asks for.
#[derive(Debug, Default)]
pub struct Output {
    pub text: String,
    pub code: i32,
}

impl Output {
    fn ok(text: String) -> Self {
        Output { text, code: 0 }
    }
}

/// A connection to the cluster and the namespace commands work in.
#[derive(Clone)]
pub struct Kube {
    pub client: Client,
    pub namespace: String,
}

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-vaultsync",
    bin_name = "kubectl vaultsync",
    version,
    about = "See and explain what vaultsync does, force a sync, render a VaultSecret offline, migrate from other \
             secret operators",
    after_help = "Examples:\n  kubectl vaultsync status -A\n  kubectl vaultsync why db-credentials -n team-a\n  \
                  kubectl vaultsync sync db-credentials --timeout 60s\n  kubectl vaultsync render -f vs.yaml --values \
                  values.yaml\n  kubectl vaultsync migrate -f external-secrets.yaml\n  kubectl vaultsync run -f vs.yaml -- ./server"
)]
pub struct Cli {
    /// The namespace (default: the kubeconfig context's namespace, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// VaultSecrets and stores: Ready, reason, last sync, next refresh and the workloads using each Secret.
    #[command(after_help = "Examples:\n  kubectl vaultsync status\n  kubectl vaultsync status -A -o json\n  \
                            kubectl vaultsync status -n team-a -o yaml")]
    Status(status::Args),
    /// Walks a VaultSecret's chain (store, namespace, objects, vault, ownership, templates) and says in one line
    /// what is wrong and how to fix it; exits 1 when something is.
    #[command(after_help = "Examples:\n  kubectl vaultsync why db-credentials\n  kubectl vaultsync why \
                            db-credentials -n team-a")]
    Why(why::Args),
    /// Force-syncs a VaultSecret (the `vaultsync.dev/force-sync` annotation) and waits for the operator's result.
    #[command(after_help = "Examples:\n  kubectl vaultsync sync db-credentials\n  kubectl vaultsync sync \
                            db-credentials -n team-a --timeout 2m")]
    Sync(sync::Args),
    /// For each workload using a VaultSecret's Secret: rolled by vaultsync, running the current content, rollout
    /// finished; `--wait` until all are (exit 0), else exit 1 (2 after a timeout).
    #[command(after_help = "Examples:\n  kubectl vaultsync rollout-status db-credentials\n  kubectl vaultsync \
                            rollout-status db-credentials --wait --timeout 10m")]
    RolloutStatus(rollout_status::Args),
    /// Renders the Secret a VaultSecret would make from example values, without a vault or a cluster.
    #[command(after_help = render::EXAMPLES)]
    Render(render::Args),
    /// Converts External Secrets Operator, akv2k8s and Secrets Store CSI (Azure) resources into vaultsync's,
    /// listing every field not carried over and why.
    #[command(after_help = "Examples:\n  kubectl vaultsync migrate -f externalsecret.yaml > vaultsync.yaml\n  \
                            kubectl get externalsecrets,secretstores -n team-a -o yaml | kubectl vaultsync migrate \
                            -f -\n\nThe notes go to standard error, each as `# <resource>: <field>: <why>`.")]
    Migrate(migrate::Args),
    /// Runs a command with a VaultSecret's keys as environment variables (or files), read with your own identity:
    /// the cluster's mapping for local development, no Kubernetes Secret.
    #[command(after_help = run::EXAMPLES)]
    Run(run::Args),
    /// Prints a shell completion script.
    #[command(
        after_help = "Examples:\n  kubectl vaultsync completion bash > /etc/bash_completion.d/kubectl-vaultsync\n  \
                            kubectl vaultsync completion zsh > \"${fpath[1]}/_kubectl-vaultsync\""
    )]
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How a listing is printed.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Connects with the kubeconfig (or in-cluster configuration), in `context` when given.
pub async fn connect(context: Option<&str>, namespace: Option<&str>) -> anyhow::Result<Kube> {
    let config = match context {
        Some(context) => {
            let options = KubeConfigOptions { context: Some(context.into()), ..Default::default() };
            Config::from_kubeconfig(&options).await?
        }
        None => Config::infer().await?,
    };
    let namespace = namespace.map(str::to_string).unwrap_or_else(|| config.default_namespace.clone());
    Ok(Kube { client: Client::try_from(config)?, namespace })
}

/// Runs a command; commands that need no cluster do not connect.
pub async fn run(cli: Cli) -> anyhow::Result<Output> {
    match &cli.command {
        Command::Render(args) => render::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Completion { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "kubectl-vaultsync", &mut script);
            Ok(Output::ok(String::from_utf8(script)?))
        }
        Command::Run(args) if args.store.is_some() => run::run(None, args).await,
        command => {
            let kube = connect(cli.context.as_deref(), cli.namespace.as_deref()).await?;
            run_in(&kube, command).await
        }
    }
}

/// Runs a command against `kube`.
pub async fn run_in(kube: &Kube, command: &Command) -> anyhow::Result<Output> {
    match command {
        Command::Status(args) => status::run(kube, args).await,
        Command::Why(args) => why::run(kube, args).await,
        Command::Sync(args) => sync::run(kube, args).await,
        Command::RolloutStatus(args) => rollout_status::run(kube, args).await,
        Command::Render(args) => render::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Run(args) => run::run(Some(kube), args).await,
        Command::Completion { .. } => anyhow::bail!("completion needs no cluster"),
    }
}

/// The `Ready` condition of a status.
fn ready(conditions: &[vaultsync_api::condition::Condition]) -> Option<&vaultsync_api::condition::Condition> {
    conditions.iter().find(|c| c.type_ == vaultsync_api::condition::READY)
}

/// Reads `-f FILE` (`-` for standard input).
fn read_input(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context as _;
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
