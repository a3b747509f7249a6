//! The control plane program fails fast with a clear message instead of hanging.

use std::{net::TcpListener, process::Command, time::Instant};

use vaultsync_e2e::process::tool;

#[test]
fn a_taken_port_is_a_clear_error() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let started = Instant::now();
    let output = Command::new(tool("controlplane").expect("controlplane built"))
        .args(["up", "--apiserver-port", &port.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running controlplane up");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must fail");
    assert!(stderr.contains(&format!("port {port} for kube-apiserver is taken")), "{stderr}");
    assert!(started.elapsed().as_secs() < 10, "fails fast, took {:?}", started.elapsed());
}

#[test]
fn an_unknown_command_prints_usage() {
    let output = Command::new(tool("controlplane").expect("controlplane built")).arg("nonsense").output().expect("run");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: controlplane up"));
}
