//! The fault matrix: real faults between the operator (its own process, with the chart's rights) and the vault,
//! Entra and the apiserver, each case measured. For every case: no Secret is deleted, emptied or given a value the
//! vault never had (a watch checks every state of every managed Secret); every VaultSecret is Ready again with the
//! vault's current value within two refresh intervals of the fault's end; vault calls during the fault stay within a
//! stated bound; the operator's CPU stays low (no hot loop); the Ready condition names the fault while it lasts.
//! Each case prints its row of the table (`make chaos` prints them all; docs/reliability.md keeps the figures).
//! The long variants (`#[ignore]`, run by `make chaos`) use more VaultSecrets and longer faults.

mod faults;
mod support;

use std::time::Duration;

use faults::{Lab, Options, REFRESH, Window, assert_row, calls_bound};
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
    row.calls_bound = calls_bound(count, row.fault);
    row.report();
    assert_eq!(row.calls_at_vault, Some(0), "nothing reached the vault while it was down");
    assert_row(&row);
    lab.finish().await;
}

#[tokio::test]
async fn vault_down_longer_than_a_refresh_interval() {
    vault_down(SHORT, 2 * REFRESH).await;
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
    row.calls_bound = calls_bound(count, row.fault);
    row.report();
    assert_row(&row);
    lab.finish().await;
}

#[tokio::test]
async fn vault_throttles_with_retry_after() {
    vault_answers(429, Some(5), "Throttled", SHORT, 2 * REFRESH).await;
}

#[tokio::test]
async fn vault_answers_500() {
    vault_answers(500, None, "BackendUnavailable", SHORT, 2 * REFRESH).await;
}

#[tokio::test]
async fn vault_answers_503() {
    vault_answers(503, None, "BackendUnavailable", SHORT, 2 * REFRESH).await;
}

#[tokio::test]
#[ignore = "long variant: make chaos"]
async fn long_vault_throttles() {
    vault_answers(429, Some(30), "Throttled", LONG, 9 * REFRESH).await;
}

/// Every answer is cut after `bytes` bytes of the connection (TLS handshake included): answers end mid-way.
async fn vault_cuts_answers(count: usize, hold: Duration) {
    let mut lab = synced_lab("chaos-cut", count, Options::default()).await;
    let window = Window::open(&mut lab).await;
    lab.vault_proxy.add("cut", Stream::Downstream, Toxic::LimitData { bytes: 3000 }).await.expect("toxic");
    let reasons = lab.wait_reasons(&["BackendUnavailable"], 4 * REFRESH).await;
    window.hold(hold).await;
    lab.vault_proxy.remove("cut").await.expect("toxic removed");
    let mut row = window.close(&mut lab, "connections cut mid-answer", reasons).await;
    row.calls_bound = calls_bound(count, row.fault);
    row.report();
    assert_row(&row);
    lab.finish().await;
}

#[tokio::test]
async fn vault_connections_cut_mid_answer() {
    vault_cuts_answers(SHORT, 2 * REFRESH).await;
}
