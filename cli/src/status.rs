//! `status`: every VaultSecret with its Ready condition, last sync, next refresh and the workloads using its Secret,
//! and every store with its Ready condition.

use std::time::Duration;

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::PodSpec,
    },
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt as _, api::ListParams};
use serde::Serialize;
use vaultsync_api::{ClusterVaultStore, VaultSecret, VaultStore, secret::StoreKind};

use crate::{Format, Kube, Output, ready};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Every namespace, and the ClusterVaultStores.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// What `status` reports; `-o json` and `-o yaml` print it as it is.
#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub vault_secrets: Vec<VaultSecretRow>,
    pub stores: Vec<StoreRow>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct VaultSecretRow {
    pub namespace: String,
    pub name: String,
    /// `VaultStore/<name>` or `ClusterVaultStore/<name>`.
    pub store: String,
    /// The target Secret's name.
    pub secret: String,
    /// `True`, `False`, or `Unknown` before the operator's first status.
    pub ready: String,
    pub reason: String,
    pub message: String,
    /// When a sync last changed the status (RFC 3339).
    pub last_sync: Option<String>,
    pub refresh_interval: String,
    /// When the next scheduled read is due, estimated from the last sync and the interval (the operator adds
    /// jitter and schedules from its own last read); `None` for a read-once VaultSecret or before the first sync.
    pub next_refresh: Option<String>,
    /// `<Kind>/<name>` of each Deployment, StatefulSet and DaemonSet of the namespace using the Secret.
    pub workloads: Vec<String>,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct StoreRow {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub ready: String,
    pub reason: String,
    pub message: String,
}

/// The workloads of a namespace, with their pod specs.
pub(crate) type Workloads = Vec<(String, PodSpec)>;

pub(crate) async fn workloads(client: &Client, namespace: Option<&str>) -> anyhow::Result<Workloads> {
    async fn list<K>(client: &Client, namespace: Option<&str>, out: &mut Workloads) -> anyhow::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + HasPodSpec,
    {
        let api: Api<K> = match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        for object in api.list(&ListParams::default()).await? {
            if let Some(spec) = object.pod_spec() {
                let name = format!("{}/{}/{}", object.namespace().unwrap_or_default(), K::kind(&()), object.name_any());
                out.push((name, spec));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    list::<Deployment>(client, namespace, &mut out).await?;
    list::<StatefulSet>(client, namespace, &mut out).await?;
    list::<DaemonSet>(client, namespace, &mut out).await?;
    Ok(out)
}

pub(crate) trait HasPodSpec {
    fn pod_spec(&self) -> Option<PodSpec>;
}

macro_rules! has_pod_spec {
    ($($kind:ty),*) => {$(
        impl HasPodSpec for $kind {
            fn pod_spec(&self) -> Option<PodSpec> {
                self.spec.template.spec.clone()
            }
        }
    )*};
}
has_pod_spec!(Deployment, StatefulSet, DaemonSet);

/// The workloads (`Kind/name`) of `namespace` among `all` that use the Secret `secret` of VaultSecret `name`.
pub(crate) fn users(all: &Workloads, namespace: &str, secret: &str, name: &str) -> Vec<String> {
    let prefix = format!("{namespace}/");
    all.iter()
        .filter(|(id, spec)| id.starts_with(&prefix) && vaultsync_operator::rollout::uses(spec, secret, name))
        .map(|(id, _)| id[prefix.len()..].to_string())
        .collect()
}

/// The target Secret's name: `target.name`, else the VaultSecret's.
pub(crate) fn secret_name(vs: &VaultSecret) -> String {
    vs.spec.target.name.clone().unwrap_or_else(|| vs.name_any())
}

pub(crate) fn store_label(vs: &VaultSecret) -> String {
    let kind = match vs.spec.store_ref.kind {
        StoreKind::VaultStore => "VaultStore",
        StoreKind::ClusterVaultStore => "ClusterVaultStore",
    };
    format!("{kind}/{}", vs.spec.store_ref.name)
}

/// The next refresh after now on the interval's grid from the last sync.
fn next_refresh(last_sync: Option<&str>, interval: &str) -> Option<String> {
    let every = vaultsync_operator::args::parse_duration(interval).ok().filter(|d| !d.is_zero())?;
    let last: Timestamp = last_sync?.parse().ok()?;
    let now = Timestamp::now();
    let elapsed = now.duration_since(last).as_secs().max(0) as u64;
    let periods = elapsed / every.as_secs().max(1) + 1;
    let next = last.checked_add(Duration::from_secs(periods * every.as_secs().max(1))).ok()?;
    Some(next.to_string())
}

fn condition_fields(conditions: &[vaultsync_api::Condition]) -> (String, String, String) {
    match ready(conditions) {
        Some(c) => (c.status.clone(), c.reason.clone(), c.message.clone()),
        None => ("Unknown".into(), String::new(), String::new()),
    }
}

pub(crate) async fn report(kube: &Kube, all_namespaces: bool) -> anyhow::Result<Report> {
    let namespace = (!all_namespaces).then_some(kube.namespace.as_str());
    let vs_api: Api<VaultSecret> = match namespace {
        Some(ns) => Api::namespaced(kube.client.clone(), ns),
        None => Api::all(kube.client.clone()),
    };
    let store_api: Api<VaultStore> = match namespace {
        Some(ns) => Api::namespaced(kube.client.clone(), ns),
        None => Api::all(kube.client.clone()),
    };
    // A user who may not list workloads still gets the rest; the workloads column is then empty.
    let all = workloads(&kube.client, namespace).await.unwrap_or_default();
    let mut report = Report::default();
    for vs in vs_api.list(&ListParams::default()).await? {
        let status = vs.status.clone().unwrap_or_default();
        let (ready, reason, message) = condition_fields(&status.conditions);
        let ns = vs.namespace().unwrap_or_default();
        let secret = secret_name(&vs);
        report.vault_secrets.push(VaultSecretRow {
            workloads: users(&all, &ns, &secret, &vs.name_any()),
            namespace: ns,
            name: vs.name_any(),
            store: store_label(&vs),
            secret,
            ready,
            reason,
            message,
            next_refresh: next_refresh(status.synced_at.as_deref(), &vs.spec.refresh_interval),
            last_sync: status.synced_at,
            refresh_interval: vs.spec.refresh_interval.clone(),
        });
    }
    for store in store_api.list(&ListParams::default()).await? {
        let (ready, reason, message) = condition_fields(&store.status.clone().unwrap_or_default().conditions);
        report.stores.push(StoreRow {
            kind: "VaultStore".into(),
            namespace: store.namespace(),
            name: store.name_any(),
            ready,
            reason,
            message,
        });
    }
    // ClusterVaultStores: those the VaultSecrets shown use, or every one with -A. A user who may not list them
    // still gets the rest.
    let used: Vec<String> = report
        .vault_secrets
        .iter()
        .filter_map(|r| r.store.strip_prefix("ClusterVaultStore/").map(str::to_string))
        .collect();
    if let Ok(stores) = Api::<ClusterVaultStore>::all(kube.client.clone()).list(&ListParams::default()).await {
        for store in stores.items.into_iter().filter(|s| all_namespaces || used.contains(&s.name_any())) {
            let (ready, reason, message) = condition_fields(&store.status.clone().unwrap_or_default().conditions);
            report.stores.push(StoreRow {
                kind: "ClusterVaultStore".into(),
                namespace: None,
                name: store.name_any(),
                ready,
                reason,
                message,
            });
        }
    }
    Ok(report)
}

pub async fn run(kube: &Kube, args: &Args) -> anyhow::Result<Output> {
    let report = report(kube, args.all_namespaces).await?;
    let text = match args.output {
        Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        Format::Yaml => serde_yaml::to_string(&report)?,
        Format::Table => table(&report, args.all_namespaces),
    };
    Ok(Output::ok(text))
}

fn table(report: &Report, all_namespaces: bool) -> String {
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let mut rows = vec![
        ["NAMESPACE", "VAULTSECRET", "STORE", "SECRET", "READY", "REASON", "LAST SYNC", "NEXT REFRESH", "WORKLOADS"]
            .map(String::from)
            .to_vec(),
    ];
    for r in &report.vault_secrets {
        let workloads = if r.workloads.is_empty() { "-".into() } else { r.workloads.join(",") };
        rows.push(vec![
            r.namespace.clone(),
            r.name.clone(),
            r.store.clone(),
            r.secret.clone(),
            r.ready.clone(),
            r.reason.clone(),
            dash(&r.last_sync),
            r.next_refresh.as_ref().map(|t| format!("~{t}")).unwrap_or_else(|| "-".into()),
            workloads,
        ]);
    }
    let mut text = columns(rows, !all_namespaces);
    text.push('\n');
    let mut rows = vec![["NAMESPACE", "STORE", "READY", "REASON", "MESSAGE"].map(String::from).to_vec()];
    for s in &report.stores {
        rows.push(vec![
            s.namespace.clone().unwrap_or_else(|| "(cluster)".into()),
            format!("{}/{}", s.kind, s.name),
            s.ready.clone(),
            s.reason.clone(),
            s.message.clone(),
        ]);
    }
    text + &columns(rows, false)
}

/// Aligned columns; the first column left out when `drop_first`.
fn columns(rows: Vec<Vec<String>>, drop_first: bool) -> String {
    let skip = usize::from(drop_first);
    let widths: Vec<usize> =
        (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> =
            row.iter().zip(&widths).skip(skip).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_refresh_is_the_next_slot_after_now() {
        let last = Timestamp::now().checked_sub(Duration::from_secs(150)).expect("a time");
        let next: Timestamp = next_refresh(Some(&last.to_string()), "1m").expect("a time").parse().expect("parses");
        assert_eq!(next.duration_since(last).as_secs(), 180);
        assert_eq!(next_refresh(Some(&last.to_string()), "0"), None);
        assert_eq!(next_refresh(None, "1h"), None);
    }
}
