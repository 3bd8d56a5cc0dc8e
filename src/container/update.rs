//! UpdateContainerResources: new cgroup limits through the OCI runtime's `update`, remembered in
//! the container's record so ContainerStatus reports what is in force.
//!
//! Owns nothing on disk of its own: the limits go to the runtime (which writes the cgroup files)
//! and to the record's status (through [`crate::state::Record::update`]).

use super::lifecycle::{Container, ContainerError, ContainerState, Containers};
use super::record::Resources;
use crate::spec;

impl Containers {
    /// Apply `resources` to container `id`. A created or running container gets them through
    /// the runtime first (a refusal leaves the record unchanged); an exited one only has them
    /// recorded, as containerd does, since there is no cgroup left to change.
    pub async fn update_resources(
        &self,
        id: &str,
        resources: Resources,
    ) -> Result<(), ContainerError> {
        let rec = self.get(id)?;
        let oci = spec::resources::update_resources(&resources.to_spec(), &self.context.host)?;
        match rec.status().state() {
            ContainerState::Created | ContainerState::Running => {
                let sandbox = self.pods.get(&rec.meta.sandbox_id)?;
                let runtime = self.runtime_for(&sandbox)?;
                runtime.update(&rec.id, &oci).await?;
            }
            ContainerState::Creating => {
                return Err(ContainerError::WrongState {
                    id: rec.id.clone(),
                    reason: "cannot update a container that is still being created".into(),
                })
            }
            ContainerState::Exited => {}
        }
        rec.update(|s| s.resources = Some(resources)).await?;
        Ok(())
    }
}

/// The resources in force for `c`: the last update's, or else the create request's.
pub fn current_resources(c: &Container) -> Option<Resources> {
    c.peek(|s| s.resources.clone())
        .or_else(|| c.meta.request.resources.clone())
}
