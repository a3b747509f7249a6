//! What both modes share: from a parsed mount to its payload (the plan of a VaultSecret when
//! named, the objects read with the pod's identity, the files rendered).

use std::{sync::Arc, time::Duration};

use crate::{
    error::Result,
    params::{MountSpec, Request, VaultObject, check_files},
    reader::{ReadAs, VaultReader},
    render::{self, Payload},
};

pub struct Mounter {
    reader: Arc<dyn VaultReader>,
}

impl Mounter {
    pub fn new(reader: Arc<dyn VaultReader>) -> Self {
        Self { reader }
    }

    /// Reads and renders every file of `spec`; entries older than `max_age` are read afresh.
    pub async fn payload(&self, spec: &MountSpec, max_age: Option<Duration>) -> Result<Payload> {
        let requester = format!("Pod {}/{}", spec.pod.namespace, spec.pod.name);
        vaultsync_backend::audit::scope(requester, self.read_and_render(spec, max_age)).await
    }

    async fn read_and_render(&self, spec: &MountSpec, max_age: Option<Duration>) -> Result<Payload> {
        let resolved;
        let plan = match &spec.request {
            Request::Plan(plan) => plan,
            Request::VaultSecret { name } => {
                resolved = self.reader.vault_secret_plan(&spec.pod, name).await?;
                // A VaultSecret of dataFrom only has no data items (its keys are checked when found).
                if !resolved.files.is_empty() || resolved.data_from.is_empty() {
                    check_files(&resolved.files)?;
                }
                &resolved
            }
        };
        let objects: Vec<VaultObject> = plan.files.iter().map(|f| f.object.clone()).collect();
        let fetched = self.reader.read(&spec.pod, &spec.secrets, &plan.source, &objects, max_age).await?;
        let mut payload = render::payload(&plan.files, &fetched)?;
        if !plan.data_from.is_empty() {
            let reading = ReadAs { pod: &spec.pod, secrets: &spec.secrets, source: &plan.source, max_age };
            let found = self.reader.data_from(reading, &plan.data_from).await?;
            payload = render::with_data_from(payload, found)?;
        }
        Ok(payload)
    }
}
