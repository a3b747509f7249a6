//! Mode 2: a CSI node plugin (csi.v1 Identity and Node) for ephemeral inline volumes, for
//! clusters without the Secrets Store CSI Driver. A publish reads everything first (bad input or
//! a failing vault leave nothing behind), then mounts a tmpfs at the target and writes the files
//! atomically. Kubelet publishes again about every minute (`requiresRepublish`); the files are
//! refreshed when the refresh interval has passed, and a failing vault then keeps the files the
//! pod has. Unpublish is idempotent: unmount, remove what the plugin wrote, remove the target.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{
    error::{Error, Result},
    metrics::Metrics,
    mount::{self, Medium},
    mounter::Mounter,
    params::{self, EPHEMERAL, MountSpec, POD_NAME, POD_NAMESPACE},
    proto::csi::{
        GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest, GetPluginInfoResponse,
        NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest, NodeGetCapabilitiesResponse,
        NodeGetInfoRequest, NodeGetInfoResponse, NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse,
        NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
        NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest,
        NodeUnstageVolumeResponse, ProbeRequest, ProbeResponse, identity_server::Identity, node_server::Node,
        node_service_capability, volume_capability,
    },
    writer::{self, Ownership},
};

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub driver_name: String,
    pub node_id: String,
    pub medium: Medium,
    /// A republish reads the vault again once this long has passed since the last read.
    pub refresh_interval: Duration,
}

/// A published volume.
struct Volume {
    volume_id: String,
    spec: MountSpec,
    ownership: Ownership,
    refreshed: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<Volume>>>;

pub struct NodePlugin {
    config: NodeConfig,
    mounter: Arc<Mounter>,
    metrics: Arc<Metrics>,
    /// One slot per target path: calls for one target run one at a time.
    volumes: Mutex<HashMap<PathBuf, Slot>>,
}

impl NodePlugin {
    pub fn new(config: NodeConfig, mounter: Arc<Mounter>, metrics: Arc<Metrics>) -> Self {
        Self { config, mounter, metrics, volumes: Mutex::default() }
    }

    fn slot(&self, target: &Path) -> Slot {
        self.volumes.lock().expect("volumes lock").entry(target.to_path_buf()).or_default().clone()
    }

    /// How many volumes are published now.
    pub fn published(&self) -> usize {
        self.volumes.lock().expect("volumes lock").len()
    }

    async fn publish(&self, request: NodePublishVolumeRequest) -> Result<&'static str> {
        let (volume_id, target, ownership) = check_publish(&request)?;
        let slot = self.slot(&target);
        let mut guard = slot.lock().await;
        let outcome = self.publish_in(&mut guard, request, volume_id, &target, ownership).await;
        if guard.is_none() {
            // Nothing was published here: forget the slot, so failed publishes do not pile up.
            drop(guard);
            let mut volumes = self.volumes.lock().expect("volumes lock");
            if volumes.get(&target).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                volumes.remove(&target);
            }
        }
        outcome
    }

    async fn publish_in(
        &self,
        slot: &mut Option<Volume>,
        request: NodePublishVolumeRequest,
        volume_id: String,
        target: &Path,
        ownership: Ownership,
    ) -> Result<&'static str> {
        if let Some(volume) = slot.as_mut() {
            if volume.volume_id != volume_id {
                return Err(Error::invalid("target_path", "already holds another volume"));
            }
            return self.republish(volume, target).await;
        }
        let spec = mount_spec(&request)?;
        // Everything is read before anything is made: bad input or a failing vault leave no trace.
        let payload = self.mounter.payload(&spec, None).await?;
        let adopted = target.join(writer::DATA).exists();
        if !adopted {
            self.make_target(target, ownership)?;
        }
        if let Err(error) = writer::write(target, &payload.files, ownership) {
            if !adopted {
                let _ = remove_target(target);
            }
            return Err(error);
        }
        *slot = Some(Volume { volume_id, spec, ownership, refreshed: Instant::now() });
        Ok(if adopted { "adopted" } else { "published" })
    }

    /// A republish: refresh when due. Anything that fails then (the vault, or a new value that no
    /// longer renders) keeps the files the pod has and answers OK with a warning: kubelet may tear
    /// the volume down on an error, and the parameters were already checked at the first publish.
    async fn republish(&self, volume: &mut Volume, target: &Path) -> Result<&'static str> {
        if volume.refreshed.elapsed() < self.config.refresh_interval {
            return Ok("not_due");
        }
        let max_age = Some(self.config.refresh_interval);
        let written = match self.mounter.payload(&volume.spec, max_age).await {
            Ok(payload) => writer::write(target, &payload.files, volume.ownership),
            Err(error) => Err(error),
        };
        match written {
            Ok(changed) => {
                volume.refreshed = Instant::now();
                Ok(if changed { "refreshed" } else { "unchanged" })
            }
            Err(error) => {
                warn!(
                    target = %target.display(),
                    reason = error.metric_label(),
                    %error,
                    "refresh failed; the volume keeps its files"
                );
                Ok("kept")
            }
        }
    }

    /// Creates the target and mounts its medium.
    fn make_target(&self, target: &Path, ownership: Ownership) -> Result<()> {
        std::fs::create_dir_all(target).map_err(|e| Error::internal(format!("creating {}: {e}", target.display())))?;
        let directory = |why: &str| -> Result<()> {
            use std::os::unix::fs::PermissionsExt as _;
            warn!(target = %target.display(), "{why}: the files are written to a plain folder on the node's disk");
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(ownership.dir_mode()))
                .map_err(|e| Error::internal(format!("setting the mode of {}: {e}", target.display())))?;
            ownership.apply(target)
        };
        if mount::is_mount_point(target)? {
            return Ok(());
        }
        match self.config.medium {
            Medium::Directory => directory("medium is directory"),
            medium => match mount::mount_tmpfs(target, ownership) {
                Ok(()) => Ok(()),
                Err(nix::errno::Errno::EPERM) if medium == Medium::TmpfsOrDirectory => {
                    directory("mounting a tmpfs is not permitted")
                }
                Err(e) => {
                    let _ = std::fs::remove_dir(target);
                    Err(Error::internal(format!("mounting a tmpfs at {}: {e}", target.display())))
                }
            },
        }
    }

    async fn unpublish(&self, request: NodeUnpublishVolumeRequest) -> Result<()> {
        if request.volume_id.is_empty() {
            return Err(Error::invalid("volume_id", "missing"));
        }
        if request.target_path.is_empty() {
            return Err(Error::invalid("target_path", "missing"));
        }
        let target = PathBuf::from(&request.target_path);
        let slot = self.slot(&target);
        let mut volume = slot.lock().await;
        remove_target(&target)?;
        volume.take();
        drop(volume);
        self.volumes.lock().expect("volumes lock").remove(&target);
        Ok(())
    }
}

/// Unmounts the target, removes what the writer made, and the target itself; absent is fine.
fn remove_target(target: &Path) -> Result<()> {
    mount::unmount(target)?;
    match std::fs::symlink_metadata(target) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::internal(format!("inspecting {}: {e}", target.display()))),
        Ok(meta) if !meta.is_dir() => {
            return Err(Error::internal(format!("{} is not a folder; left alone", target.display())));
        }
        Ok(_) => {}
    }
    writer::clear(target)?;
    std::fs::remove_dir(target).map_err(|e| {
        Error::internal(format!("removing {} (it holds files the plugin did not write?): {e}", target.display()))
    })
}

/// Checks the fields every publish needs, in the order the CSI spec's tests expect.
fn check_publish(request: &NodePublishVolumeRequest) -> Result<(String, PathBuf, Ownership)> {
    if request.volume_id.is_empty() {
        return Err(Error::invalid("volume_id", "missing"));
    }
    if request.volume_id.len() > 512 {
        return Err(Error::invalid("volume_id", "longer than 512 bytes"));
    }
    if request.target_path.is_empty() {
        return Err(Error::invalid("target_path", "missing"));
    }
    let target = PathBuf::from(&request.target_path);
    if !target.is_absolute() || target.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
        return Err(Error::invalid("target_path", "must be an absolute path without '..'"));
    }
    let capability =
        request.volume_capability.as_ref().ok_or_else(|| Error::invalid("volume_capability", "missing"))?;
    let group = match &capability.access_type {
        Some(volume_capability::AccessType::Mount(mount)) => mount.volume_mount_group.trim().to_string(),
        Some(volume_capability::AccessType::Block(_)) => {
            return Err(Error::invalid("volume_capability", "block volumes are not supported; use a mount volume"));
        }
        None => return Err(Error::invalid("volume_capability", "access_type is missing")),
    };
    let group = match group.as_str() {
        "" => None,
        digits => Some(
            digits
                .parse::<u32>()
                .map_err(|_| Error::invalid("volume_capability.mount.volume_mount_group", "not a numeric group id"))?,
        ),
    };
    if request.volume_context.get(EPHEMERAL).is_some_and(|v| v != "true") {
        return Err(Error::invalid(EPHEMERAL, "only ephemeral inline volumes are supported"));
    }
    Ok((request.volume_id.clone(), target, Ownership { group }))
}

/// The mount a publish asks for: pod info and parameters from `volume_context`, credentials
/// (and, since Kubernetes 1.35, possibly the tokens) from `secrets`.
fn mount_spec(request: &NodePublishVolumeRequest) -> Result<MountSpec> {
    let attributes: BTreeMap<String, String> = bounded(&request.volume_context, "volume_context")?;
    let secrets: BTreeMap<String, String> = bounded(&request.secrets, "secrets")?;
    let pod = params::pod_info(&attributes, &secrets)?;
    let request = params::request(&attributes, 0o644)?;
    Ok(MountSpec { pod, request, secrets: params::publish_secrets(secrets) })
}

fn bounded(map: &HashMap<String, String>, place: &str) -> Result<BTreeMap<String, String>> {
    let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > params::MAX_INPUT_BYTES || map.len() > 256 {
        return Err(Error::invalid(place, format!("more than {} bytes or 256 entries", params::MAX_INPUT_BYTES)));
    }
    Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn pod_of(request: &NodePublishVolumeRequest) -> String {
    let part =
        |k: &str| request.volume_context.get(k).map(|v| v.chars().take(253).collect::<String>()).unwrap_or("?".into());
    format!("{}/{}", part(POD_NAMESPACE), part(POD_NAME))
}

#[tonic::async_trait]
impl Node for Arc<NodePlugin> {
    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let started = std::time::Instant::now();
        let request = request.into_inner();
        let (pod, target, volume) = (pod_of(&request), request.target_path.clone(), request.volume_id.clone());
        match self.publish(request).await {
            Ok(outcome) => {
                self.metrics.publish("node", outcome, started.elapsed());
                if outcome != "not_due" {
                    let elapsed_ms = started.elapsed().as_millis() as u64;
                    info!(%pod, %volume, %target, outcome, elapsed_ms, "volume published");
                }
                Ok(Response::new(NodePublishVolumeResponse {}))
            }
            Err(error) => {
                self.metrics.publish("node", error.metric_label(), started.elapsed());
                warn!(%pod, %volume, %target, reason = error.metric_label(), %error, "publish refused");
                Err(error.into())
            }
        }
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        let (target, volume) = (request.target_path.clone(), request.volume_id.clone());
        match self.unpublish(request).await {
            Ok(()) => {
                info!(%volume, %target, "volume unpublished");
                Ok(Response::new(NodeUnpublishVolumeResponse {}))
            }
            Err(error) => {
                warn!(%volume, %target, reason = error.metric_label(), %error, "unpublish failed");
                Err(error.into())
            }
        }
    }

    async fn node_stage_volume(
        &self,
        _request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeStageVolume: ephemeral volumes are not staged"))
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeUnstageVolume: ephemeral volumes are not staged"))
    }

    async fn node_get_volume_stats(
        &self,
        _request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("NodeGetVolumeStats"))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume"))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        let mount_group = NodeServiceCapability {
            r#type: Some(node_service_capability::Type::Rpc(node_service_capability::Rpc {
                r#type: node_service_capability::rpc::Type::VolumeMountGroup as i32,
            })),
        };
        Ok(Response::new(NodeGetCapabilitiesResponse { capabilities: vec![mount_group] }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[tonic::async_trait]
impl Identity for Arc<NodePlugin> {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.config.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: HashMap::new(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        // No controller service: ephemeral volumes need none.
        Ok(Response::new(GetPluginCapabilitiesResponse { capabilities: Vec::new() }))
    }

    async fn probe(&self, _request: Request<ProbeRequest>) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse { ready: Some(true) }))
    }
}
