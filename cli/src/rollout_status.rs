//! `rollout-status NAME`: for each workload using a VaultSecret's Secret, whether vaultsync tracks it for rollouts,
//! whether it has taken in the Secret's current content (its `vaultsync.dev/observed-content-hash` record holds the
//! VaultSecret's current `status.dataHmac`), and whether its own rollout finished; with `--wait`, until all have.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::Api;
use serde_json::Value;
use vaultsync_api::{VaultSecret, secret::WorkloadKind};
use vaultsync_operator::rollout::{OBSERVED_ANNOTATION, RELOAD_LABEL};

use crate::{Kube, Output, status};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The VaultSecret.
    pub name: String,
    /// Wait until every tracked workload runs the current content.
    #[arg(long, short = 'w')]
    pub wait: bool,
    /// How long to wait (Go-style duration).
    #[arg(long, default_value = "5m", value_parser = vaultsync_operator::args::parse_duration)]
    pub timeout: Duration,
}

/// One workload's state.
#[derive(Debug, PartialEq, Eq)]
struct State {
    workload: String,
    tracked: bool,
    content_current: bool,
    /// `None`: the rollout finished; else how far it is.
    progress: Option<String>,
}

impl State {
    fn done(&self) -> bool {
        !self.tracked || (self.content_current && self.progress.is_none())
    }

    fn line(&self) -> String {
        let w = &self.workload;
        if !self.tracked {
            return format!(
                "{w}: uses the Secret but is not rolled by vaultsync (label it {RELOAD_LABEL}=true or list it in \
                 spec.rollout.targets)"
            );
        }
        let content = if self.content_current {
            "runs the current content"
        } else {
            "has not taken in the current content yet (the operator checks it after the rollout debounce)"
        };
        match &self.progress {
            None => format!("{w}: {content}; rollout complete"),
            Some(progress) => format!("{w}: {content}; rollout in progress ({progress})"),
        }
    }
}

pub async fn run(kube: &Kube, args: &Args) -> anyhow::Result<Output> {
    let started = Instant::now();
    loop {
        let states = states(kube, &args.name).await?;
        let done = states.iter().all(State::done);
        if done || !args.wait || started.elapsed() >= args.timeout {
            let mut text: String = states.iter().map(|s| s.line() + "\n").collect();
            if states.is_empty() {
                text = format!("no Deployment, StatefulSet or DaemonSet in {} uses it\n", kube.namespace);
            }
            let code = match (done, args.wait) {
                (true, _) => 0,
                (false, true) => 2,
                (false, false) => 1,
            };
            return Ok(Output { text, code });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn states(kube: &Kube, name: &str) -> anyhow::Result<Vec<State>> {
    let vs = Api::<VaultSecret>::namespaced(kube.client.clone(), &kube.namespace).get(name).await?;
    let digest = vs.status.as_ref().and_then(|s| s.data_hmac.clone());
    let secret = status::secret_name(&vs);
    let all = status::workloads(&kube.client, Some(&kube.namespace)).await?;
    let explicit: Vec<String> = vs
        .spec
        .rollout
        .iter()
        .flat_map(|r| r.targets.iter())
        .map(|t| format!("{}/{}", kind_name(t.kind), t.name))
        .collect();
    let mut users = status::users(&all, &kube.namespace, &secret, name);
    users.extend(explicit.iter().filter(|t| !users.contains(t)).cloned().collect::<Vec<_>>());
    let mut states = Vec::new();
    for workload in users {
        let Some((kind, workload_name)) = workload.split_once('/') else { continue };
        let Some(object) = get(kube, kind, workload_name).await? else { continue };
        let labelled = object["metadata"]["labels"][RELOAD_LABEL] == "true";
        let record: Option<Value> =
            object["metadata"]["annotations"][OBSERVED_ANNOTATION].as_str().and_then(|r| serde_json::from_str(r).ok());
        let recorded = record.as_ref().and_then(|r| r["sources"][format!("VaultSecret/{name}")].as_str());
        states.push(State {
            tracked: labelled || explicit.contains(&workload),
            content_current: digest.is_some() && recorded == digest.as_deref(),
            progress: progress(kind, &object),
            workload,
        });
    }
    Ok(states)
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

async fn get(kube: &Kube, kind: &str, name: &str) -> anyhow::Result<Option<Value>> {
    let client = kube.client.clone();
    let ns = &kube.namespace;
    Ok(match kind {
        "Deployment" => Api::<Deployment>::namespaced(client, ns).get_opt(name).await?.map(serde_json::to_value),
        "StatefulSet" => Api::<StatefulSet>::namespaced(client, ns).get_opt(name).await?.map(serde_json::to_value),
        "DaemonSet" => Api::<DaemonSet>::namespaced(client, ns).get_opt(name).await?.map(serde_json::to_value),
        _ => None,
    }
    .transpose()?)
}

/// How far the workload's own rollout is, as `kubectl rollout status` judges it; `None` when it finished.
fn progress(kind: &str, object: &Value) -> Option<String> {
    let status = &object["status"];
    let number = |field: &str| status[field].as_i64().unwrap_or(0);
    let generation = object["metadata"]["generation"].as_i64().unwrap_or(0);
    if status["observedGeneration"].as_i64().unwrap_or(0) < generation {
        return Some("the controller has not seen the latest template".into());
    }
    let (updated, wanted, available) = match kind {
        "DaemonSet" => (number("updatedNumberScheduled"), number("desiredNumberScheduled"), number("numberAvailable")),
        _ => {
            let wanted = object["spec"]["replicas"].as_i64().unwrap_or(1);
            (number("updatedReplicas"), wanted, number("availableReplicas"))
        }
    };
    let finished = updated >= wanted
        && available >= wanted
        && (kind != "StatefulSet" || status["currentRevision"] == status["updateRevision"]);
    (!finished).then(|| format!("{updated} of {wanted} updated, {available} available"))
}
