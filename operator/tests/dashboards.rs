//! The chart's Grafana dashboard and PrometheusRule ask only for series the operator really exports: every metric
//! name their queries use is in the operator's own /metrics output (from a run that synced a VaultSecret).

mod support;

use std::collections::BTreeSet;

use k8s_openapi::api::apps::v1::Deployment;
use serde::Deserialize as _;
use serde_json::{Value, json};
use support::{Env, one_key};
use vaultsync_e2e::chart::HelmTools;

/// The queries of the rendered chart's dashboard and alert rules.
async fn chart_queries() -> Vec<String> {
    let values = ["--set", "metrics.dashboard.enabled=true", "--set", "metrics.prometheusRule.enabled=true"];
    let rendered = HelmTools::offline().render("vaultsync-system", &values).await;
    let mut queries = Vec::new();
    let (mut dashboards, mut rules) = (0, 0);
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let object = Value::deserialize(document).expect("YAML");
        match object["kind"].as_str() {
            Some("ConfigMap") if object["data"]["vaultsync.json"].is_string() => {
                dashboards += 1;
                let dashboard: Value =
                    serde_json::from_str(object["data"]["vaultsync.json"].as_str().unwrap()).expect("dashboard JSON");
                for panel in dashboard["panels"].as_array().expect("panels") {
                    for target in panel["targets"].as_array().expect("targets") {
                        queries.push(target["expr"].as_str().expect("an expr").to_string());
                    }
                }
            }
            Some("PrometheusRule") => {
                rules += 1;
                for group in object["spec"]["groups"].as_array().expect("groups") {
                    for rule in group["rules"].as_array().expect("rules") {
                        queries.push(rule["expr"].as_str().expect("an expr").to_string());
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!((dashboards, rules), (1, 1), "the chart renders one dashboard and one PrometheusRule");
    queries
}

/// `vaultsync_...` names in a query.
fn metric_names(query: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\bvaultsync_[a-z_]+").expect("a regex");
    re.find_iter(query).map(|m| m.as_str().to_string()).collect()
}

#[tokio::test]
async fn every_series_the_dashboard_and_alerts_use_is_exported() {
    // The Event Grid endpoint on, so vault event metrics exist; a delivery without the key is counted.
    let (env, grid) = Env::start_with_event_grid("dashboards").await;
    assert_eq!(grid.request("POST", "/eventgrid", &[], b"[]").await.status, 401);
    // A workload using the Secret, labelled for rollouts: its first check is counted.
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web", "labels": { "vaultsync.dev/reload": "true" } },
        "spec": { "selector": { "matchLabels": { "app": "web" } }, "template": {
            "metadata": { "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "web", "image": "example",
                "envFrom": [{ "secretRef": { "name": "app" } }] }] } } },
    }))
    .expect("a Deployment");
    env.ns.api::<Deployment>().create(&Default::default(), &deployment).await.expect("the Deployment");
    env.vault.set_secret("dash-secret", "dashboard-value-1");
    env.apply_vault_secret("app", one_key("value", "dash-secret")).await;
    env.wait_secret_value("app", "value", "dashboard-value-1").await;
    env.wait_metric_at_least("vaultsync_rollouts_total", 1).await;
    // A certificate (self-signed by the test vault), so the certificate expiry gauge has one to report.
    let policy = json!({ "policy": { "issuer": { "name": "Self" },
        "x509_props": { "subject": "CN=dash.example", "validity_months": 3 },
        "key_props": { "kty": "EC", "crv": "P-256" }, "secret_props": { "contentType": "application/x-pem-file" } } });
    let vault = env.vault.client().expect("a vault client").with_token(Some(&format!("token-for-{}", env.ns.name)));
    vault.call(reqwest::Method::POST, "/certificates/dash-cert/create", Some(&policy)).await.expect("a certificate");
    env.apply_vault_secret(
        "cert",
        json!({ "storeRef": { "name": "kv" },
            "data": [{ "secretKey": "leaf.pem", "remoteRef": { "name": "dash-cert", "objectType": "certificate" } }] }),
    )
    .await;
    env.wait_reason("cert", "Synced").await;
    let (code, metrics) = env.http_get("/metrics").await;
    assert_eq!(code, 200);
    // Families (`# TYPE name kind`, also when no sample exists yet) and sample names.
    let families: BTreeSet<&str> =
        metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
    let samples: BTreeSet<&str> =
        metrics.lines().filter(|l| !l.starts_with('#')).filter_map(|l| l.split(['{', ' ']).next()).collect();
    let exported = |name: &str| {
        samples.contains(name)
            || ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix).is_some_and(|base| families.contains(base)))
    };
    let queries = chart_queries().await;
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(used.len() >= 8, "the dashboard and rules use the operator's metrics: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|name| !exported(name)).collect();
    assert!(missing.is_empty(), "used by the chart but not exported: {missing:?}\n{metrics}");
    // The leader gauge the no-leader alert watches says this replica leads.
    assert!(metrics.lines().any(|l| l == "vaultsync_leader 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l == r#"vaultsync_vaultsecrets{ready="true"} 2"#), "{metrics}");
    assert!(metrics.lines().any(|l| l == "vaultsync_vaultsecrets_not_ready_beyond_interval 0"), "{metrics}");
    env.finish().await;
}
