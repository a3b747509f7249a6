//! kubelet's plugin registration (`pluginregistration.Registration` v1), for running without the
//! node-driver-registrar sidecar: a socket in kubelet's `plugins_registry` folder that tells
//! kubelet the driver's name and where its CSI endpoint is.

use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::proto::registration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse, registration_server::Registration,
};

pub struct Registrar {
    pub driver_name: String,
    /// The CSI endpoint's path as kubelet sees it.
    pub endpoint: String,
}

#[tonic::async_trait]
impl Registration for Registrar {
    async fn get_info(&self, _request: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            info!(driver = %self.driver_name, "registered with kubelet");
        } else {
            error!(driver = %self.driver_name, error = %status.error, "kubelet refused the registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
