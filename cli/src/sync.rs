//! `sync NAME`: a new `vaultsync.dev/force-sync` value (the operator reads the vault afresh for it), then waits
//! until the status says the operator acted on that value, with a progress line on standard error.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use vaultsync_api::VaultSecret;
use vaultsync_operator::vaultsecret::FORCE_SYNC;

use crate::{Kube, Output, ready};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VaultSecret.
    pub name: String,
    /// How long to wait for the operator's result (Go-style duration).
    #[arg(long, default_value = "60s", value_parser = vaultsync_operator::args::parse_duration)]
    pub timeout: Duration,
    /// Do not print progress on standard error.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub async fn run(kube: &Kube, args: &Args) -> anyhow::Result<Output> {
    let api: Api<VaultSecret> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let name = &args.name;
    let Some(before) = api.get_opt(name).await? else {
        anyhow::bail!("VaultSecret {}/{name} does not exist", kube.namespace);
    };
    // A failed sync does not record the force-sync value: it shows as a Ready=False condition that changed, or, when
    // it was failing already, one still failing a few seconds after the annotation woke the operator.
    let failing_before =
        before.status.as_ref().and_then(|s| ready(&s.conditions)).filter(|c| c.status == "False").cloned();
    let value = Timestamp::now().to_string();
    let patch = serde_json::json!({ "metadata": { "annotations": { FORCE_SYNC: value } } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    let started = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let vs = api.get(name).await?;
        let status = vs.status.unwrap_or_default();
        let condition = ready(&status.conditions);
        let acted = status.force_sync.as_deref() == Some(value.as_str());
        let failed = condition.is_some_and(|c| {
            c.status == "False"
                && (failing_before.as_ref() != Some(c)
                    || (failing_before.is_some() && started.elapsed() >= Duration::from_secs(5)))
        });
        if acted || failed {
            let (state, reason, message) =
                condition.map(|c| (c.status.clone(), c.reason.clone(), c.message.clone())).unwrap_or_default();
            let took = started.elapsed().as_secs_f32();
            return Ok(if state == "True" {
                Output { text: format!("synced {}/{name} in {took:.1}s: {reason}\n", kube.namespace), code: 0 }
            } else {
                Output {
                    text: format!(
                        "{}/{name} did not sync ({reason}): {message}\n(kubectl vaultsync why {name} says how to fix \
                         it)\n",
                        kube.namespace
                    ),
                    code: 1,
                }
            });
        }
        if started.elapsed() >= args.timeout {
            return Ok(Output {
                text: format!(
                    "the operator did not act on the force-sync of {}/{name} within {:?}: is it running and watching \
                     this namespace? (kubectl vaultsync why {name})\n",
                    kube.namespace, args.timeout
                ),
                code: 2,
            });
        }
        if !args.quiet && last_progress.elapsed() >= Duration::from_secs(2) {
            eprintln!("waiting for the operator to sync {}/{name} ({}s)", kube.namespace, started.elapsed().as_secs());
            last_progress = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
