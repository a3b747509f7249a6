//! helm and kubectl, as a user runs them, against a local control plane.
//!
//! They run with a throwaway HOME and HELM_* folders in the temp folder, so nothing is written to the
//! user's home.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use crate::{ControlPlane, process::tool};

/// The repository root; the chart is `charts/vaultsync` below it.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The chart, relative to the repository root (the tools run there).
pub const CHART: &str = "charts/vaultsync";

/// Runs helm and kubectl against one control plane with private, temporary home folders.
pub struct Tools {
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl Tools {
    pub fn new(plane: &ControlPlane) -> Self {
        Self { home: Self::home(), kubeconfig: plane.kubeconfig_path().to_path_buf() }
    }

    /// Like `new`, for tests that never talk to the apiserver (no control plane is started).
    pub fn offline() -> Self {
        let home = Self::home();
        let kubeconfig = home.join("no-kubeconfig");
        Self { home, kubeconfig }
    }

    fn home() -> PathBuf {
        let home = std::env::temp_dir().join(format!("vaultsync-helm-test-{}", uuid::Uuid::new_v4().simple()));
        for dir in ["cache", "config", "data", "home"] {
            std::fs::create_dir_all(home.join(dir)).expect("creating the helm home folders");
        }
        home
    }

    fn command(&self, tool_name: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool(tool_name).expect("the tool is built"));
        cmd.args(args)
            .current_dir(repo_root())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.join("home"))
            .env("HELM_CACHE_HOME", self.home.join("cache"))
            .env("HELM_CONFIG_HOME", self.home.join("config"))
            .env("HELM_DATA_HOME", self.home.join("data"));
        cmd
    }

    /// Runs `helm args`, off the async runtime's thread.
    pub async fn helm(&self, args: &[&str]) -> Output {
        run(self.command("helm", args), None).await
    }

    /// Runs `kubectl args`, with `stdin` as its standard input when given.
    pub async fn kubectl(&self, args: &[&str], stdin: Option<String>) -> Output {
        run(self.command("kubectl", args), stdin).await
    }

    /// `helm template` with the given extra arguments; panics unless it succeeds.
    pub async fn render(&self, namespace: &str, extra: &[&str]) -> String {
        let mut args = vec!["template", "vs", CHART, "--namespace", namespace];
        args.extend_from_slice(extra);
        let out = self.helm(&args).await;
        assert_success(&out, "helm template");
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

impl Drop for Tools {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

async fn run(mut cmd: Command, stdin: Option<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin pipe");
            pipe.write_all(input.as_bytes()).expect("writing stdin");
        }
        child.wait_with_output().expect("waiting for the command")
    })
    .await
    .expect("the command's thread")
}

/// Standard output and standard error of a command, for messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, text(out));
}

/// `kubectl auth can-i` as a user (a service account's full name); true for "yes".
pub async fn can_i(tools: &Tools, user: &str, args: &[&str]) -> bool {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let as_user = format!("--as={user}");
    all.push(&as_user);
    let out = tools.kubectl(&all, None).await;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!("kubectl auth can-i {args:?}: unexpected answer:\n{}", text(&out)),
    }
}
