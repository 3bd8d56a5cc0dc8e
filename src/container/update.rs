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
        let st = rec.status();
        match st.state() {
            ContainerState::Created if st.awaiting_run() => {
                // Not in the runtime yet: the limits go into the spec its `run` reads.
                self.update_bundle(&rec, &oci).await?;
            }
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

impl Containers {
    /// Sets `resources` in the bundle's spec of a container the runtime has not created yet:
    /// each limit the update gives replaces the spec's, as the runtime's `update` would.
    async fn update_bundle(
        &self,
        rec: &Container,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), ContainerError> {
        let bundle = self.bundle_dir(&rec.id);
        let path = bundle.join("config.json");
        let io = |source: std::io::Error| ContainerError::Io {
            path: path.clone(),
            source,
        };
        let bytes = tokio::fs::read(&path).await.map_err(io)?;
        let mut spec: oci_spec::runtime::Spec =
            serde_json::from_slice(&bytes).map_err(|e| io(std::io::Error::other(e)))?;
        let mut linux = spec.linux().clone().unwrap_or_default();
        let merged = merge_resources(linux.resources().clone().unwrap_or_default(), resources)
            .map_err(|e| io(std::io::Error::other(e)))?;
        linux.set_resources(Some(merged));
        spec.set_linux(Some(linux));
        super::lifecycle::write_volatile_bundle(&bundle, &spec).await
    }
}

/// `update`'s limits over `current`: every field the update sets replaces the current one;
/// what it leaves unset (devices, for one) stays.
fn merge_resources(
    current: oci_spec::runtime::LinuxResources,
    update: &oci_spec::runtime::LinuxResources,
) -> Result<oci_spec::runtime::LinuxResources, serde_json::Error> {
    let mut base = serde_json::to_value(current)?;
    if let (Some(b), serde_json::Value::Object(u)) =
        (base.as_object_mut(), serde_json::to_value(update)?)
    {
        for (k, v) in u {
            if !v.is_null() {
                b.insert(k, v);
            }
        }
    }
    serde_json::from_value(base)
}

/// The resources in force for `c`: the last update's, or else the create request's.
pub fn current_resources(c: &Container) -> Option<Resources> {
    c.peek(|s| s.resources.clone())
        .or_else(|| c.meta.request.resources.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_replaces_the_limits_it_sets_and_keeps_the_rest() {
        let current: oci_spec::runtime::LinuxResources =
            serde_json::from_value(serde_json::json!({
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": 100},
                "cpu": {"shares": 2}
            }))
            .unwrap();
        let update: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
            "memory": {"limit": 200}
        }))
        .unwrap();
        let merged = serde_json::to_value(merge_resources(current, &update).unwrap()).unwrap();
        assert_eq!(merged["memory"]["limit"], 200);
        assert_eq!(merged["cpu"]["shares"], 2);
        assert_eq!(merged["devices"][0]["access"], "rwm");
    }
}
