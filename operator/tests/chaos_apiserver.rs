//! The apiserver restarted (etcd and its data kept) under a running operator: a test binary of its own, because it
//! restarts its control plane's apiserver, which every test of the binary shares. See chaos.rs for what each case
//! asserts.

mod faults;
mod support;

use std::time::Instant;

use faults::{Lab, Options, REFRESH, Window, calls_bound};
use vaultsync_e2e::ControlPlane;

#[tokio::test]
async fn apiserver_restarted_with_etcd_kept() {
    let mut lab = Lab::start("chaos-apiserver", Options::default()).await;
    lab.start_operator("operator", false, &[]).await;
    lab.sync_all(12, 10).await;
    let window = Window::open(&mut lab).await;
    let restarted = Instant::now();
    ControlPlane::shared().restart_apiserver().await.expect("restarting the apiserver");
    let down = restarted.elapsed();
    // While the apiserver was down nothing could be written, a condition least of all.
    let mut row = window
        .close(
            &mut lab,
            &format!("apiserver restarted, etcd kept (down {:.1}s)", down.as_secs_f64()),
            "- (nothing can be written)".into(),
        )
        .await;
    row.calls_bound = calls_bound(12, row.fault, lab.refresh);
    row.report();
    assert!(row.recovery <= 2 * REFRESH, "back to Ready {:?} after the apiserver", row.recovery);
    assert!(row.calls <= row.calls_bound);
    assert!(row.cpu_percent < 25.0, "{:.1}% CPU while the apiserver restarted", row.cpu_percent);
    for op in &mut lab.operators {
        op.assert_alive();
    }
    lab.finish().await;
}
