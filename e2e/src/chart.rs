//! The Helm chart as tests use it: helm and kubectl with private home folders, and the operator's rights exactly as
//! the chart grants them, so an in-process operator runs with the chart's service account and nothing more. A right
//! the chart lacks then fails a test by behaviour (a 403 on the write that needs it), not by a comparison with a
//! hand-written copy of the rules.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{Api, Client};

use crate::{ControlPlane, TestNamespace, process::tool};

/// The chart's folder, relative to the repository root.
pub const CHART: &str = "charts/vaultsync";
/// The release name tests install the chart (or its RBAC) as.
pub const RELEASE: &str = "vs";
/// The operator's service account in a release named [`RELEASE`].
pub const OPERATOR_SERVICE_ACCOUNT: &str = "vs-vaultsync";

/// The repository root (the chart, `crds/` and the docs are below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs helm and kubectl against the shared control plane with private, temporary home folders, so nothing is
/// written to the user's home. The folders are removed on drop.
pub struct HelmTools {
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl HelmTools {
    /// Tools that talk to the shared control plane (starting it if needed).
    pub fn new() -> Self {
        Self::with_kubeconfig(ControlPlane::shared().kubeconfig_path().to_path_buf())
    }

    /// Tools that talk to the given control plane (the one with a node, say).
    pub fn on(plane: &ControlPlane) -> Self {
        Self::with_kubeconfig(plane.kubeconfig_path().to_path_buf())
    }

    /// Tools for commands that never talk to the apiserver (no control plane is started).
    pub fn offline() -> Self {
        let mut tools = Self::with_kubeconfig(PathBuf::new());
        tools.kubeconfig = tools.home.join("no-kubeconfig");
        tools
    }

    fn with_kubeconfig(kubeconfig: PathBuf) -> Self {
        let home = std::env::temp_dir().join(format!("vaultsync-helm-{}", uuid::Uuid::new_v4().simple()));
        for dir in ["cache", "config", "data", "home"] {
            std::fs::create_dir_all(home.join(dir)).expect("creating the helm home folders");
        }
        Self { home, kubeconfig }
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

    /// `helm template` of the chart as release [`RELEASE`] in `namespace`, with extra arguments; panics unless it
    /// succeeds.
    pub async fn render(&self, namespace: &str, extra: &[&str]) -> String {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", namespace];
        args.extend_from_slice(extra);
        let out = self.helm(&args).await;
        assert_success(&out, "helm template");
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `kubectl auth can-i ARGS --as=USER`: true for "yes", false for "no".
    pub async fn can_i(&self, user: &str, args: &[&str]) -> bool {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let as_user = format!("--as={user}");
        all.push(&as_user);
        let out = self.kubectl(&all, None).await;
        match String::from_utf8_lossy(&out.stdout).trim() {
            "yes" => true,
            "no" => false,
            _ => panic!("kubectl auth can-i {args:?}: unexpected answer:\n{}", text(&out)),
        }
    }
}

impl Default for HelmTools {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for HelmTools {
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

/// Standard output and error of a command, for failure messages.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Panics with the command's output unless it succeeded.
pub fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({}):\n{}", out.status, text(out));
}

/// Installs the operator's service account and RBAC exactly as the chart renders them (release [`RELEASE`] in the
/// test's namespace, with `extra` chart values), and returns a client that authenticates as that service account
/// with a token from the TokenRequest API. Whatever the operator does with this client, it does with the chart's
/// rights only.
pub async fn operator_client(ns: &TestNamespace, extra: &[&str]) -> Client {
    Client::try_from(operator_config(ns, extra).await).expect("a client for the operator's service account")
}

/// Like [`operator_client`], the client configuration (to point it elsewhere, e.g. through a proxy).
pub async fn operator_config(ns: &TestNamespace, extra: &[&str]) -> kube::Config {
    let token = operator_token(ns, extra).await;
    ControlPlane::shared().config_with_token(&token).await
}

/// Like [`operator_client`], the operator's service-account token (for an operator run as its own process).
pub async fn operator_token(ns: &TestNamespace, extra: &[&str]) -> String {
    let tools = HelmTools::new();
    let mut args = vec![
        "--show-only",
        "templates/serviceaccount.yaml",
        "--show-only",
        "templates/clusterrole.yaml",
        "--show-only",
        "templates/role.yaml",
    ];
    args.extend_from_slice(extra);
    let rbac = tools.render(&ns.name, &args).await;
    let out = tools.kubectl(&["apply", "--server-side", "--namespace", &ns.name, "-f", "-"], Some(rbac)).await;
    assert_success(&out, "applying the chart's RBAC");
    let accounts: Api<ServiceAccount> = ns.api();
    // Two hours outlive any test; the operator's client does not renew it.
    service_account_token_for(&accounts, OPERATOR_SERVICE_ACCOUNT, 7200).await
}

async fn service_account_token_for(accounts: &Api<ServiceAccount>, name: &str, seconds: i64) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(seconds), ..Default::default() }),
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(name, &Default::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("a token for service account {name}: {e}"));
    answer.status.and_then(|s| s.token).expect("the TokenRequest answer holds a token")
}
