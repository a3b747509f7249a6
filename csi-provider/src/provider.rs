//! Mode 1: the Secrets Store CSI Driver's provider (`v1alpha1.CSIDriverProvider`). The driver
//! sends the SecretProviderClass parameters, pod info and tokens; we return the files and one
//! version per object, and the driver writes them with its own atomic writer.

use std::{sync::Arc, time::Instant};

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{
    error::Error,
    metrics::Metrics,
    mounter::Mounter,
    params::{self, POD_NAME, POD_NAMESPACE},
    proto::provider::{
        File, MountRequest, MountResponse, ObjectVersion, VersionRequest, VersionResponse,
        csi_driver_provider_server::CsiDriverProvider,
    },
};

pub struct Provider {
    mounter: Arc<Mounter>,
    metrics: Arc<Metrics>,
}

impl Provider {
    pub fn new(mounter: Arc<Mounter>, metrics: Arc<Metrics>) -> Self {
        Self { mounter, metrics }
    }

    async fn mount_files(&self, request: &MountRequest) -> Result<MountResponse, Error> {
        let spec = params::mount_spec(&request.attributes, &request.secrets, &request.permission)?;
        let payload = self.mounter.payload(&spec, None).await?;
        Ok(MountResponse {
            object_version: payload.versions.into_iter().map(|(id, version)| ObjectVersion { id, version }).collect(),
            error: None,
            files: payload
                .files
                .into_iter()
                .map(|f| File { path: f.path, mode: f.mode as i32, contents: f.contents.expose().to_vec() })
                .collect(),
        })
    }
}

/// The pod named in the attributes, for logs (best effort: the attributes may be malformed).
pub fn pod_for_logs(attributes: &str) -> String {
    let map = params::string_map(attributes, "attributes").unwrap_or_default();
    let part = |key: &str| map.get(key).map(|v| v.chars().take(253).collect::<String>()).unwrap_or_else(|| "?".into());
    format!("{}/{}", part(POD_NAMESPACE), part(POD_NAME))
}

#[tonic::async_trait]
impl CsiDriverProvider for Provider {
    async fn version(&self, _request: Request<VersionRequest>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "vaultsync-csi".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn mount(&self, request: Request<MountRequest>) -> Result<Response<MountResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let pod = pod_for_logs(&request.attributes);
        match self.mount_files(&request).await {
            Ok(response) => {
                self.metrics.publish("provider", "published", started.elapsed());
                info!(
                    %pod,
                    files = response.files.len(),
                    objects = response.object_version.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "mount served"
                );
                Ok(Response::new(response))
            }
            Err(error) => {
                // The driver swallows errors on remounts: this log line (and the metric) is where they are seen.
                self.metrics.publish("provider", error.metric_label(), started.elapsed());
                warn!(%pod, reason = error.metric_label(), %error, "mount refused");
                Err(error.into())
            }
        }
    }
}
