//! The fault matrix: real faults between the operator (its own process, with the chart's rights) and the vault,
//! Entra and the apiserver, each case measured. For every case: no Secret is deleted, emptied or given a value the
//! vault never had (a watch checks every state of every managed Secret); every VaultSecret is Ready again with the
//! vault's current value within two refresh intervals of the fault's end; vault calls during the fault stay within a
//! stated bound; the operator's CPU stays low (no hot loop); the Ready condition names the fault while it lasts.
//! Each case prints its row of the table (`make chaos` prints them all; docs/reliability.md keeps the figures).
//! The long variants (`#[ignore]`, run by `make chaos`) use more VaultSecrets and longer faults.

mod faults;
mod support;

use std::time::{Duration, Instant};

use faults::{Lab, Options, REFRESH, Window, assert_row, calls_bound};
use k8s_openapi::api::core::v1::Secret;
use vaultsync_e2e::toxiproxy::{Stream, Toxic};

/// VaultSecrets per case in CI, and in `make chaos`.
const SHORT: usize = 12;
const LONG: usize = 200;

async fn synced_lab(prefix: &str, count: usize, options: Options) -> Lab {
    let mut lab = Lab::start(prefix, options).await;
    lab.start_operator("operator", false, &[]).await;
    lab.sync_all(count, count.min(10)).await;
    lab
}

async fn vault_down(count: usize, hold: Duration) {
    let mut lab = synced_lab("chaos-down", count, Options::default()).await;
    let window = Window::open(&mut lab).await;
    lab.vault_proxy.disable().await.expect("vault down");
    let reasons = lab.wait_reasons(&["BackendUnavailable"], 4 * REFRESH).await;
    window.hold(hold).await;
    lab.vault_proxy.enable().await.expect("vault up");
    let mut row = window.close(&mut lab, "vault down (connections refused)", reasons).await;
    row.calls_bound = calls_bound(count, row.fault, lab.refresh);
    row.report();
    assert_eq!(row.calls_at_vault, Some(0), "nothing reached the vault while it was down");
    assert_row(&row);
    lab.finish().await;
}

#[tokio::test]
async fn vault_down_longer_than_a_refresh_interval() {
    vault_down(SHORT, REFRESH + REFRESH / 2).await;
}

#[tokio::test]
#[ignore = "long variant: make chaos"]
async fn long_vault_down() {
    vault_down(LONG, 12 * REFRESH).await;
}

/// The vault answers every request with `status` (and `Retry-After` when given) for a while.
async fn vault_answers(status: u16, retry_after: Option<u64>, reason: &str, count: usize, hold: Duration) {
    let mut lab = synced_lab(&format!("chaos-{status}"), count, Options::default()).await;
    let window = Window::open(&mut lab).await;
    lab.vault.fail_next(1_000_000, status, retry_after);
    let reasons = lab.wait_reasons(&[reason], 6 * REFRESH).await;
    window.hold(hold).await;
    lab.vault.clear_faults();
    let case = match retry_after {
        Some(s) => format!("vault answers {status} (Retry-After: {s})"),
        None => format!("vault answers {status}"),
    };
    let mut row = window.close(&mut lab, &case, reasons).await;
    row.calls_bound = calls_bound(count, row.fault, lab.refresh);
    // A Retry-After longer than the client waits is honoured by the VaultSecret too: it may add that much.
    row.vault_asked = Duration::from_secs(retry_after.unwrap_or(0));
    row.report();
    assert_row(&row);
    lab.finish().await;
}

#[tokio::test]
async fn vault_throttles_with_retry_after() {
    vault_answers(429, Some(5), "Throttled", SHORT, REFRESH).await;
}

#[tokio::test]
async fn vault_answers_500() {
    vault_answers(500, None, "BackendUnavailable", SHORT, REFRESH).await;
}

#[tokio::test]
async fn vault_answers_503() {
    vault_answers(503, None, "BackendUnavailable", SHORT, REFRESH).await;
}

#[tokio::test]
#[ignore = "long variant: make chaos"]
async fn long_vault_throttles() {
    vault_answers(429, Some(30), "Throttled", LONG, 9 * REFRESH).await;
}

/// Every connection is reset (TCP RST) a moment after it opens, while the vault's answer is still held back: the
/// request went out, the answer never comes.
async fn vault_resets_connections(count: usize, hold: Duration) {
    let mut lab = synced_lab("chaos-reset", count, Options::default()).await;
    let window = Window::open(&mut lab).await;
    let held = Toxic::Latency { latency: Duration::from_millis(500), jitter: Duration::ZERO };
    lab.vault_proxy.add("held", Stream::Downstream, held).await.expect("toxic");
    let reset = Toxic::ResetPeer { after: Duration::from_millis(100) };
    lab.vault_proxy.add("reset", Stream::Downstream, reset).await.expect("toxic");
    let reasons = lab.wait_reasons(&["BackendUnavailable"], 4 * REFRESH).await;
    window.hold(hold).await;
    lab.vault_proxy.remove("reset").await.expect("toxic removed");
    lab.vault_proxy.remove("held").await.expect("toxic removed");
    let mut row = window.close(&mut lab, "connections reset before the answer", reasons).await;
    row.calls_bound = calls_bound(count, row.fault, lab.refresh);
    row.report();
    assert_row(&row);
    lab.finish().await;
}

#[tokio::test]
async fn vault_resets_connections_mid_answer() {
    vault_resets_connections(SHORT, REFRESH).await;
}

/// Every answer takes longer than the operator waits (`--reconcile-timeout 15s`; the HTTP client's own timeout is
/// 30 s): reconciles are abandoned as `Timeout` and no slot stays stuck.
async fn vault_slow(count: usize, hold: Duration, reconcile_timeout: Duration) {
    let mut lab = Lab::start("chaos-slow", Options::default()).await;
    let timeout_flag = format!("{}s", reconcile_timeout.as_secs());
    lab.start_operator("operator", false, &["--reconcile-timeout", &timeout_flag]).await;
    lab.sync_all(count, count.min(10)).await;
    let window = Window::open(&mut lab).await;
    let slow = Toxic::Latency { latency: Duration::from_secs(35), jitter: Duration::ZERO };
    lab.vault_proxy.add("slow", Stream::Downstream, slow).await.expect("toxic");
    // A reconcile is abandoned after the timeout (or its 4 attempts time out after 30 s each): then it says so. A
    // hanging vault holds each of the operator's 32 reconcile slots for that long, so VaultSecrets are tried 32 at
    // a time: the first 32 report the fault after one timeout, the others in turn.
    let first = count.min(32);
    let reasons = lab.wait_reasons_of(&["Timeout", "BackendUnavailable"], first, reconcile_timeout + 4 * REFRESH).await;
    window.hold(hold).await;
    lab.vault_proxy.remove("slow").await.expect("toxic removed");
    let mut row = window
        .close(
            &mut lab,
            &format!("vault slower than the client waits (35 s, reconcile timeout {timeout_flag})"),
            reasons,
        )
        .await;
    row.calls_bound = calls_bound(count, row.fault, lab.refresh);
    row.report();
    assert_row(&row);
    lab.finish().await;
}

#[tokio::test]
async fn vault_slower_than_the_client_timeout() {
    vault_slow(SHORT, 3 * REFRESH, Duration::from_secs(15)).await;
}

#[tokio::test]
#[ignore = "long variant: make chaos"]
async fn long_vault_slow() {
    vault_slow(LONG, 15 * REFRESH, Duration::from_secs(120)).await;
}

/// OpenBao refuses connections for longer than a refresh interval.
#[tokio::test]
async fn openbao_down_longer_than_a_refresh_interval() {
    let options = Options { openbao: true, ..Options::default() };
    let mut lab = synced_lab("chaos-bao-down", SHORT, options).await;
    let window = Window::open(&mut lab).await;
    lab.source_proxy().disable().await.expect("OpenBao down");
    let reasons = lab.wait_reasons(&["BackendUnavailable"], 4 * REFRESH).await;
    window.hold(REFRESH + REFRESH / 2).await;
    lab.source_proxy().enable().await.expect("OpenBao up");
    let mut row = window.close(&mut lab, "OpenBao down (connections refused)", reasons).await;
    row.calls_bound = calls_bound(SHORT, row.fault, lab.refresh);
    row.calls_at_vault = None; // OpenBao counts nothing we can read per test
    row.report();
    assert_row(&row);
    lab.finish().await;
}

/// Entra goes down after the operator's token reached the age at which it is renewed, and stays down past its
/// expiry. While the token is still valid, reads go on with it (the rotated values arrive); once it expired, the
/// condition names the token endpoint; when Entra is back, everything converges.
#[tokio::test]
async fn entra_down_while_a_token_expires() {
    let lifetime = Duration::from_secs(80);
    let started = Instant::now();
    let options = Options { token_lifetime: lifetime, ..Options::default() };
    let mut lab = synced_lab("chaos-entra", SHORT, options).await;
    let synced = started.elapsed();
    assert!(synced < Duration::from_secs(20), "the lab synced in {synced:?}: too slow for the token's timeline");
    // The lab's one token was issued between `started` and `synced`: it is renewed from half its life and expires
    // at `lifetime`. Entra goes down once the token is surely past renewal (the token's age is the experiment, not
    // a synchronisation), and at least 19 s before it can expire.
    tokio::time::sleep((synced + lifetime / 2 + Duration::from_secs(1)).saturating_sub(started.elapsed())).await;
    let tokens_before = lab.entra.counts().0;
    let window = Window::open(&mut lab).await;
    lab.entra_proxy.disable().await.expect("Entra down");
    // Still within the token's life: the rotated values arrive, read with the token the operator holds.
    let valid_for = lifetime.saturating_sub(started.elapsed()) - Duration::from_secs(1);
    lab.wait_converged(valid_for).await;
    // Past its expiry, reads need Entra, which is down: the condition says so.
    let reasons = lab.wait_reasons(&["BackendUnavailable", "AuthenticationFailed"], lifetime + 2 * REFRESH).await;
    let messages = lab.ready_messages().await;
    assert!(messages.iter().all(|m| m.contains("token")), "the conditions name the token endpoint: {messages:?}");
    window.hold(window.elapsed() + REFRESH).await;
    lab.entra_proxy.enable().await.expect("Entra up");
    let mut row = window.close(&mut lab, "Entra down while the token expires", reasons).await;
    row.calls_bound = calls_bound(SHORT, row.fault, lab.refresh);
    row.report();
    assert!(lab.entra.counts().0 > tokens_before, "a new token was issued once Entra was back");
    assert_row(&row);
    lab.finish().await;
}

/// The operator is killed with SIGKILL while `count` VaultSecrets are being created (a third of their Secrets
/// written), then started again: every Secret ends right, none is written twice by two owners or adopted, and the
/// new process converges.
async fn killed_while_creating(count: usize, refresh: Duration) {
    let options = Options { refresh, ..Options::default() };
    let mut lab = Lab::start("chaos-kill", options).await;
    lab.start_operator("operator", false, &[]).await;
    let objects = 10;
    lab.prepare(count, objects).await;
    let monitor = faults::SecretMonitor::start(lab.ns.api::<Secret>());
    for (name, _, value) in &lab.secrets {
        monitor.allow(name, "value", &[value]);
    }
    let specs = lab.specs();
    let creating = tokio::spawn({
        let api = lab.ns.api::<vaultsync_api::VaultSecret>();
        async move { faults::apply_all(api, specs).await }
    });
    let secrets = lab.ns.api::<Secret>();
    let third = count / 3;
    vaultsync_e2e::eventually(Duration::from_secs(120), "a third of the Secrets to be written", || {
        let secrets = secrets.clone();
        async move {
            let list = secrets.list(&managed()).await.ok()?;
            (list.items.len() >= third).then_some(())
        }
    })
    .await;
    let calls_before = lab.vault.total_calls();
    let killed_at = Instant::now();
    lab.operators[0].kill9();
    let written_when_killed = secrets.list(&managed()).await.expect("listing").items.len();
    creating.await.expect("creating the VaultSecrets");
    lab.start_operator("operator-again", false, &[]).await;
    let down = killed_at.elapsed();
    let restarted = Instant::now();
    lab.wait_converged(2 * refresh + Duration::from_secs(60)).await;
    let recovery = restarted.elapsed();
    let cpu = lab.operators[1].cpu();
    let (states, violations) = monitor.outcome();
    assert!(violations.is_empty(), "Secrets went wrong: {violations:?}");
    // Each Secret is the one its own VaultSecret created: named by it, and created by vaultsync (not adopted).
    for secret in secrets.list(&managed()).await.expect("listing").items {
        let name = secret.metadata.name.clone().unwrap_or_default();
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("vaultsync.dev/vaultsecret"), Some(&name), "{name} names its VaultSecret");
        assert!(labels.contains_key("vaultsync.dev/created"), "{name} was created by vaultsync");
    }
    let row = faults::Row {
        case: format!("operator kill -9 while creating ({written_when_killed} of {count} written), restarted"),
        vaultsecrets: count,
        fault: down,
        reasons: "- (no operator to write them)".into(),
        calls: lab.vault.total_calls() - calls_before,
        // At most one read and one token request per VaultSecret (reads of one object are shared).
        calls_bound: 2 * count as u64,
        calls_at_vault: Some(lab.vault.total_calls() - calls_before),
        cpu_percent: 100.0 * cpu.as_secs_f64() / recovery.as_secs_f64(),
        recovery,
        refresh,
        vault_asked: Duration::ZERO,
        states,
        violations: violations.len(),
    };
    row.report();
    assert!(row.calls <= row.calls_bound, "{} vault calls for {count} VaultSecrets", row.calls);
    assert!(row.recovery <= 2 * refresh, "converged {:?} after the restart", row.recovery);
    lab.finish().await;
}

fn managed() -> kube::api::ListParams {
    kube::api::ListParams::default().labels("app.kubernetes.io/managed-by=vaultsync")
}

#[tokio::test]
async fn operator_killed_while_creating_vaultsecrets() {
    killed_while_creating(150, REFRESH).await;
}

#[tokio::test]
#[ignore = "long variant: make chaos"]
async fn long_operator_killed_while_creating_1000() {
    killed_while_creating(1000, Duration::from_secs(60)).await;
}

/// Two replicas; the leader is killed with SIGKILL in the middle of a refresh cycle (some Secrets have the new
/// value, some not yet). The standby takes the Lease when it expires and finishes the cycle.
async fn leader_killed_mid_cycle(count: usize) {
    let mut lab = Lab::start("chaos-leader", Options::default()).await;
    // A budget of 5 calls per second spreads a refresh cycle over several seconds, so "mid-cycle" can be hit.
    let mut spec = lab.store_spec();
    spec["budget"] = serde_json::json!({ "requestsPerSecond": 5, "burst": 5 });
    lab.apply_store("kv", spec).await;
    let first = lab.start_operator("replica-a", true, &[]).await;
    let second = lab.start_operator("replica-b", true, &[]).await;
    lab.sync_all(count, count).await;
    let leases = lab.ns.api::<k8s_openapi::api::coordination::v1::Lease>();
    let holder = leases.get("vaultsync-operator").await.expect("the Lease").spec.and_then(|s| s.holder_identity);
    let leader = if holder.as_deref() == Some("replica-a") { first } else { second };
    let window = Window::open(&mut lab).await;
    let secrets = lab.ns.api::<Secret>();
    let expected: std::collections::HashMap<String, String> =
        lab.secrets.iter().map(|(n, _, v)| (n.clone(), v.clone())).collect();
    let updated = vaultsync_e2e::eventually(Duration::from_secs(60), "the refresh cycle to be under way", || {
        let (secrets, expected) = (secrets.clone(), expected.clone());
        async move {
            let new = faults::holding_current(&secrets, &expected).await?;
            (new >= 1).then_some(new)
        }
    })
    .await;
    let vault_before = lab.vault.total_calls();
    lab.operators[leader].kill9();
    let killed = Instant::now();
    lab.operators.swap_remove(leader);
    // The kill is instantaneous; the time without a leader (until the Lease runs out) is part of the recovery.
    let mut row = window
        .close(
            &mut lab,
            &format!("leader kill -9 mid-cycle ({updated} of {count} refreshed)"),
            "- (Ready throughout)".into(),
        )
        .await;
    row.fault = Duration::ZERO;
    // Counted at the vault from the kill until every VaultSecret converged: the standby's reads.
    row.calls = lab.vault.total_calls() - vault_before;
    row.calls_at_vault = Some(row.calls);
    row.calls_bound = 2 * count as u64;
    row.report();
    assert!(updated < count, "killed mid-cycle: {updated} of {count} were refreshed");
    assert!(row.calls <= row.calls_bound, "{} vault calls to finish the cycle", row.calls);
    // Two refresh intervals after the standby could take over: the Lease (6 s) runs out first.
    assert!(
        killed.elapsed() <= 2 * lab.refresh + Duration::from_secs(6),
        "the standby finished the cycle {:?} after the kill",
        killed.elapsed()
    );
    lab.finish().await;
}

#[tokio::test]
async fn leader_killed_mid_cycle_and_the_standby_takes_over() {
    leader_killed_mid_cycle(30).await;
}

/// The apiserver refuses the operator's Secret writes for a while, through a validating admission webhook on the
/// namespace's managed Secrets: with 500 when the webhook fails closed and cannot be reached, with 429 when it
/// answers that it is overloaded (a webhook's denial carries its status code, and the apiserver answers with it).
/// API Priority and Fairness cannot be made to refuse every request here (a priority level keeps at least one
/// seat), so the webhook is what makes the real apiserver answer 429.
async fn apiserver_refuses_writes(status: u16) {
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use kube::{Api, api::PostParams};
    let mut lab = synced_lab(&format!("chaos-api{status}"), SHORT, Options::default()).await;
    let client = lab.ns.client.clone();
    let name = lab.ns.name.clone();
    let (url, denier) = match status {
        429 => {
            let (url, task) = overloaded_webhook().await;
            (url, Some(task))
        }
        _ => (format!("https://127.0.0.1:{}/validate", vaultsync_e2e::process::free_port().expect("a port")), None),
    };
    let window = Window::open(&mut lab).await;
    let webhook: ValidatingWebhookConfiguration = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "webhooks": [{ "name": "secrets.chaos.vaultsync.dev",
            "clientConfig": { "url": url, "caBundle": base64_of(vaultsync_e2e::tls::TestCa::shared().ca_pem()) },
            "rules": [{ "operations": ["CREATE", "UPDATE", "DELETE"], "apiGroups": [""], "apiVersions": ["v1"],
                "resources": ["secrets"] }],
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": name } },
            "objectSelector": { "matchLabels": { "app.kubernetes.io/managed-by": "vaultsync" } },
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 2 }] }))
    .expect("a webhook");
    let webhooks = Api::<ValidatingWebhookConfiguration>::all(client);
    webhooks.create(&PostParams::default(), &webhook).await.expect("creating the webhook");
    let reasons = lab.wait_reasons(&["SecretWriteFailed"], 6 * REFRESH).await;
    let messages = lab.ready_messages().await;
    assert!(
        messages.iter().all(|m| m.contains(&status.to_string())),
        "the conditions carry the apiserver's {status}: {messages:?}"
    );
    window.hold(REFRESH).await;
    webhooks.delete(&name, &Default::default()).await.expect("deleting the webhook");
    let mut row = window.close(&mut lab, &format!("apiserver answers {status} to Secret writes"), reasons).await;
    row.calls_bound = calls_bound(SHORT, row.fault, lab.refresh);
    row.report();
    if let Some(task) = denier {
        task.abort();
    }
    assert_row(&row);
    lab.finish().await;
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// An admission webhook (HTTPS, the test CA) that refuses every request with 429, as an overloaded dependency of
/// the apiserver would; returns its URL.
async fn overloaded_webhook() -> (String, tokio::task::JoinHandle<()>) {
    use axum::{Json, Router, routing::post};
    let (listener, addr) = vaultsync_e2e::tls::loopback_listener().await.expect("a listener");
    let config = vaultsync_e2e::tls::TestCa::shared().loopback_server_config().expect("a server certificate");
    let app = Router::new().route(
        "/validate",
        post(|Json(review): Json<serde_json::Value>| async move {
            Json(serde_json::json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "response": { "uid": review["request"]["uid"], "allowed": false,
                    "status": { "code": 429, "reason": "TooManyRequests",
                        "message": "overloaded: try again later (fault test)" } } }))
        }),
    );
    let task = tokio::spawn(vaultsync_e2e::tls::serve_https(listener, config, app));
    (format!("https://127.0.0.1:{}/validate", addr.port()), task)
}

#[tokio::test]
async fn apiserver_throttles_secret_writes_with_429() {
    apiserver_refuses_writes(429).await;
}

#[tokio::test]
async fn apiserver_fails_secret_writes_with_500() {
    apiserver_refuses_writes(500).await;
}
