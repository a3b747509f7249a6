//! The local control plane, one per test binary, and a fresh namespace per test. A test binary that
//! needs pods to run takes the control plane with a node instead (`ControlPlane::shared_with_node`).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{LazyLock, mpsc},
    time::Duration,
};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::process::{log_dir, log_tail, tool};

/// A running etcd + kube-apiserver + kube-controller-manager, and with a node also containerd, a
/// kubelet and kube-scheduler.
pub struct ControlPlane {
    kubeconfig: PathBuf,
    config: Kubeconfig,
    pub(crate) node: Option<crate::node::Node>,
    _child: Child,
    pid: u32,
    // Held, never written: when the test binary exits, `up` sees end of input and stops.
    _stdin: ChildStdin,
}

static SHARED: LazyLock<Result<ControlPlane, String>> =
    LazyLock::new(|| ControlPlane::start(false).map_err(|e| format!("{e:#}")));

static SHARED_WITH_NODE: LazyLock<Result<ControlPlane, String>> =
    LazyLock::new(|| ControlPlane::start(true).map_err(|e| format!("{e:#}")));

impl ControlPlane {
    /// The control plane shared by every test of this binary, started on first use. No pod runs on
    /// it (no node): tests of the API and the controllers.
    pub fn shared() -> &'static ControlPlane {
        match &*SHARED {
            Ok(cp) => cp,
            Err(e) => panic!("the local control plane did not start: {e}"),
        }
    }

    /// A control plane with a node, shared by every test of this binary and started on first use:
    /// pods run (host network only), from images imported with `import_image`. Tests that use it
    /// return early when `crate::node::skipped()`.
    pub fn shared_with_node() -> &'static ControlPlane {
        match &*SHARED_WITH_NODE {
            Ok(cp) => cp,
            Err(e) => panic!("the local control plane with a node did not start: {e}"),
        }
    }

    fn start(with_node: bool) -> anyhow::Result<Self> {
        let log = log_dir().join(if with_node { "controlplane-node.log" } else { "controlplane.log" });
        let mut up = Command::new(tool("controlplane")?);
        up.arg("up");
        if with_node {
            up.args(crate::node::up_args()?);
        }
        let mut child = up
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting the control plane")?;
        let stdin = child.stdin.take().context("control plane stdin")?;
        let stdout = child.stdout.take().context("control plane stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let timeout = Duration::from_secs(if with_node { 300 } else { 180 });
        let line = rx.recv_timeout(timeout).unwrap_or_default();
        // READY kubeconfig=<path>[\tcontainerd=<socket>\tnode=<name>]
        let mut fields = line.trim_end_matches('\n').split('\t');
        let Some(path) = fields.next().and_then(|f| f.strip_prefix("READY kubeconfig=")) else {
            let _ = child.kill();
            bail!("the control plane did not report READY:\n{}", log_tail(&log, 30));
        };
        let values: std::collections::BTreeMap<&str, &str> = fields.filter_map(|f| f.split_once('=')).collect();
        let node = match (values.get("containerd"), values.get("node")) {
            (Some(socket), Some(name)) => Some(crate::node::Node::new(socket, name)),
            _ if with_node => bail!("the control plane did not report its node: {line}"),
            _ => None,
        };
        let kubeconfig = PathBuf::from(path);
        let config = Kubeconfig::read_from(&kubeconfig)?;
        let pid = child.id();
        Ok(Self { kubeconfig, config, node, _child: child, pid, _stdin: stdin })
    }

    /// Restarts the apiserver alone (etcd and its data kept; `controlplane up` does it on SIGUSR1) and waits until
    /// it went away and is ready again. Every test of this binary shares it: only a binary of its own may do this.
    pub async fn restart_apiserver(&self) -> anyhow::Result<()> {
        let client = self.client().await;
        let ready = || {
            let client = client.clone();
            async move {
                let request = axum::http::Request::get("/readyz").body(Vec::new()).expect("a request");
                client.request_text(request).await.is_ok_and(|body| body.trim() == "ok")
            }
        };
        anyhow::ensure!(ready().await, "the apiserver is not ready before the restart");
        let status = Command::new("kill").args(["-USR1", &self.pid.to_string()]).status()?;
        anyhow::ensure!(status.success(), "signalling the control plane");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while ready().await {
            anyhow::ensure!(std::time::Instant::now() < deadline, "the apiserver did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        while !ready().await {
            anyhow::ensure!(std::time::Instant::now() < deadline, "the apiserver did not come back");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The apiserver URL (also the service-account token issuer).
    pub fn server_url(&self) -> String {
        self.config.clusters[0].cluster.as_ref().and_then(|c| c.server.clone()).unwrap_or_default()
    }

    /// The CA bundle that signs the apiserver's serving certificate, PEM encoded.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        use base64::Engine as _;
        let data = self.config.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.certificate_authority_data.clone())
            .context("kubeconfig has no CA data")?;
        Ok(String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data)?)?)
    }

    /// A new admin client. Make one per test: a client belongs to the runtime it was made in.
    pub async fn client(&self) -> Client {
        crate::tls::install_crypto_provider();
        let config = kube::Config::from_custom_kubeconfig(self.config.clone(), &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        Client::try_from(config).expect("kube client")
    }

    /// A client configuration that authenticates with a bearer token (a service account's), trusting the cluster
    /// CA.
    pub async fn config_with_token(&self, token: &str) -> kube::Config {
        crate::tls::install_crypto_provider();
        let mut config = kube::Config::from_custom_kubeconfig(self.config.clone(), &KubeConfigOptions::default())
            .await
            .expect("kubeconfig");
        config.auth_info = kube::config::AuthInfo { token: Some(token.to_string().into()), ..Default::default() };
        config
    }
}

/// A namespace made for one test, named `<prefix>-<random>`.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    /// Creates a fresh namespace on the shared control plane.
    pub async fn new(prefix: &str) -> Self {
        Self::on(ControlPlane::shared(), prefix).await
    }

    /// Creates a fresh namespace on the given control plane.
    pub async fn on(plane: &ControlPlane, prefix: &str) -> Self {
        let client = plane.client().await;
        let name = format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("vaultsync.dev/test".to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("creating the test namespace");
        Self { name, client }
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` with `what`. Fails at once if a
/// program the test runs in process has died (see [`crate::liveness`]).
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        crate::liveness::check();
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies vaultsync's CRDs (from the Rust types) once per test binary and waits until the
/// apiserver serves them.
pub async fn install_crds(client: &Client) {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let client = client.clone();
    INSTALLED
        .get_or_init(|| async move {
            let api = Api::<CustomResourceDefinition>::all(client);
            for crd in vaultsync_api::crds() {
                let name = crd.metadata.name.clone().expect("crd name");
                api.patch(&name, &PatchParams::apply("vaultsync-e2e").force(), &Patch::Apply(&crd))
                    .await
                    .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
                eventually(Duration::from_secs(30), "the CRD to be established", || {
                    let api = api.clone();
                    let name = name.clone();
                    async move {
                        let crd = api.get(&name).await.ok()?;
                        let conditions = crd.status?.conditions?;
                        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
                    }
                })
                .await;
            }
        })
        .await;
}

/// Requests a token for a service account with the TokenRequest API (10 minutes, one audience).
pub async fn service_account_token(
    accounts: &Api<k8s_openapi::api::core::v1::ServiceAccount>,
    name: &str,
    audience: &str,
) -> kube::Result<String> {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.into()]),
            expiration_seconds: Some(600),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = accounts.create_token_request(name, &PostParams::default(), &request).await?;
    Ok(answer.status.and_then(|s| s.token).unwrap_or_default())
}

/// The reasons of the Events recorded for an object in the namespace (events.k8s.io/v1).
pub async fn events_for(ns: &TestNamespace, kind: &str, name: &str) -> Vec<String> {
    use k8s_openapi::api::events::v1::Event;
    let events: Api<Event> = ns.api();
    let list = events.list(&Default::default()).await.expect("listing events");
    list.items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name))
        })
        .filter_map(|e| e.reason)
        .collect()
}
