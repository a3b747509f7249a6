//! The demo's CSI part: the node plugin in process, a simulated pod's inline volume published as
//! kubelet would (pod info and a real TokenRequest token of the pod's service account), the files
//! shown before and after a rotation. Dropping it unpublishes: nothing stays mounted.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use serde_json::json;
use tonic::transport::Channel;
use vaultsync_csi::proto::csi::{
    NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability, node_client::NodeClient, volume_capability,
};

/// The Key Vault name the demo's volume names; the plugin maps it to the test server.
pub const VAULT_NAME: &str = "demo-kv";
const AUDIENCE: &str = "api://AzureADTokenExchange";

/// Where the demo's plugin finds the vault and the authority.
pub struct Endpoints<'a> {
    pub authority_host: &'a str,
    pub vault_url: &'a str,
    pub ca_file: &'a Path,
}

/// The plugin, and the pod volume it published.
pub struct CsiDemo {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    node: NodeClient<Channel>,
    pub socket: PathBuf,
    pub target: PathBuf,
    request: Option<NodePublishVolumeRequest>,
}

impl CsiDemo {
    /// Starts the plugin with its socket and volumes under `dir`. As root a tmpfs is mounted per
    /// volume; otherwise a plain folder is used (with a warning in the log).
    pub async fn start(dir: &Path, endpoints: &Endpoints<'_>) -> anyhow::Result<Self> {
        let socket = dir.join("csi.sock");
        let args = <vaultsync_csi::Args as clap::Parser>::try_parse_from([
            "vaultsync-csi".to_string(),
            format!("--csi-endpoint=unix://{}", socket.display()),
            "--node-id=demo-node".into(),
            "--medium=tmpfs-or-directory".into(),
            // Every republish reads the vault: the rotation shows at once.
            "--refresh-interval=0".into(),
            "--cache-window=1s".into(),
            format!("--ca-bundle-file={}", endpoints.ca_file.display()),
            format!("--azure-authority-host={}", endpoints.authority_host),
            format!("--azure-vault-endpoint={VAULT_NAME}={}", endpoints.vault_url),
        ])?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(vaultsync_csi::run(args, async move {
            let _ = stopped.await;
        }));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the CSI plugin did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let node = NodeClient::new(vaultsync_csi::server::connect(&socket).await?);
        Ok(Self { stop: Some(stop), task, node, socket, target: dir.join("pods/web-0/volumes/secrets"), request: None })
    }

    /// What a pod author writes: an inline volume with the Azure provider's parameters.
    pub fn volume_attributes(tenant: &str, client_id: &str, object: &str) -> Vec<(String, String)> {
        vec![
            ("keyvaultName".into(), VAULT_NAME.into()),
            ("tenantID".into(), tenant.into()),
            ("clientID".into(), client_id.into()),
            ("objects".into(), format!("array:\n  - |\n    objectName: {object}\n    objectAlias: db-password\n")),
        ]
    }

    /// Publishes the volume of pod `namespace/web-0` (service account `account`) as kubelet would.
    pub async fn publish(
        &mut self,
        accounts: &Api<ServiceAccount>,
        account: &str,
        attributes: Vec<(String, String)>,
    ) -> anyhow::Result<()> {
        let namespace = accounts.namespace().unwrap_or_default().to_string();
        let token = vaultsync_e2e::service_account_token(accounts, account, AUDIENCE).await?;
        let mut context: Vec<(String, String)> = vec![
            ("csi.storage.k8s.io/pod.name".into(), "web-0".into()),
            ("csi.storage.k8s.io/pod.namespace".into(), namespace),
            ("csi.storage.k8s.io/pod.uid".into(), "demo-web-0".into()),
            ("csi.storage.k8s.io/serviceAccount.name".into(), account.into()),
            ("csi.storage.k8s.io/serviceAccount.tokens".into(), json!({ AUDIENCE: { "token": token } }).to_string()),
            ("csi.storage.k8s.io/ephemeral".into(), "true".into()),
        ];
        context.extend(attributes);
        let request = kubelet_publish("demo-web-0-secrets", &self.target, context);
        self.node.node_publish_volume(request.clone()).await.context("NodePublishVolume")?;
        self.request = Some(request);
        Ok(())
    }

    /// Publishes again, as kubelet does about every minute (`requiresRepublish`).
    pub async fn republish(&mut self) -> anyhow::Result<()> {
        let request = self.request.clone().context("nothing published")?;
        self.node.node_publish_volume(request).await.context("NodePublishVolume (republish)")?;
        Ok(())
    }

    /// The volume's files as `name  mode  contents` lines, and whether it is a tmpfs.
    pub fn listing(&self) -> anyhow::Result<(Vec<String>, bool)> {
        let mut lines = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&self.target)?.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let shown = if name.starts_with("..") {
                match std::fs::read_link(entry.path()) {
                    Ok(link) => format!("{name} -> {}", link.display()),
                    Err(_) => format!("{name}/  (the current payload folder)"),
                }
            } else {
                let mode = std::fs::metadata(entry.path())?.permissions().mode() & 0o777;
                let link = std::fs::read_link(entry.path()).map(|l| format!(" -> {}", l.display())).unwrap_or_default();
                let contents = std::fs::read_to_string(entry.path())?;
                format!("{name}{link}  {mode:04o}  {contents:?}")
            };
            lines.push(shown);
        }
        Ok((lines, vaultsync_csi::mount::is_mount_point(&self.target)?))
    }

    /// Unpublishes the volume and stops the plugin.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.unpublish().await?;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }

    async fn unpublish(&mut self) -> anyhow::Result<()> {
        if let Some(request) = self.request.take() {
            let unpublish =
                NodeUnpublishVolumeRequest { volume_id: request.volume_id, target_path: request.target_path };
            self.node.node_unpublish_volume(unpublish).await.context("NodeUnpublishVolume")?;
        }
        Ok(())
    }
}

/// A NodePublishVolumeRequest as kubelet sends it for an inline volume (read-only mount).
pub fn kubelet_publish(volume_id: &str, target: &Path, context: Vec<(String, String)>) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.display().to_string(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeReaderOnly as i32,
            }),
        }),
        readonly: true,
        volume_context: context.into_iter().collect(),
        ..Default::default()
    }
}

impl Drop for CsiDemo {
    fn drop(&mut self) {
        // Interrupted before `stop`: unmount whatever the plugin mounted, then stop it.
        if self.request.is_some() {
            let _ = nix::mount::umount2(&self.target, nix::mount::MntFlags::MNT_DETACH);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}
