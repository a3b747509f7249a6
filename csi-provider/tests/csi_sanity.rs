//! The CSI community's conformance suite, csi-sanity (kubernetes-csi/csi-test, built by
//! `make tools`), against the node plugin: the Identity and Node specs a node-only ephemeral
//! driver can run. Successful publishes need a controller in csi-sanity, so they are tested in
//! `node.rs`.

mod support;

use support::Plugin;

#[tokio::test]
async fn csi_sanity_identity_and_node_specs_pass() {
    let sanity = vaultsync_e2e::process::tool("csi-sanity").expect("csi-sanity");
    let plugin = Plugin::start(&[]).await;
    let output = tokio::process::Command::new(sanity)
        .arg(format!("--csi.endpoint=unix://{}", plugin.csi_socket().display()))
        .arg(format!("--csi.mountdir={}", plugin.dir.join("sanity-mount").display()))
        .arg(format!("--csi.stagingdir={}", plugin.dir.join("sanity-staging").display()))
        .arg("--ginkgo.focus=Identity Service|Node Service")
        // Needs Controller.CreateVolume, which an ephemeral-only driver does not have.
        .arg("--ginkgo.skip=should remove target path")
        .arg("--ginkgo.no-color")
        .kill_on_drop(true)
        .output()
        .await
        .expect("running csi-sanity");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "csi-sanity failed:\n{report}\n{}", String::from_utf8_lossy(&output.stderr));
    // 3 Identity specs and 7 Node specs apply to a driver with no stage, stats or expand capability.
    assert!(report.contains("Ran 10 of"), "{report}");
    assert!(report.contains("10 Passed") && report.contains("0 Failed"), "{report}");
    plugin.stop().await;
}
