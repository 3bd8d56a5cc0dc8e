//! UpdateContainerResources: new limits through the OCI runtime's `update`, and the resources
//! ContainerStatus reports.

use super::{detached, Daemon, Res};
use crate::container::lifecycle::Container;
use crate::cri::v1 as cri;
use std::sync::Arc;
use tonic::{Request, Response};

pub(super) async fn update_container_resources(
    d: &Arc<Daemon>,
    req: Request<cri::UpdateContainerResourcesRequest>,
) -> Res<cri::UpdateContainerResourcesResponse> {
    let req = req.into_inner();
    // Windows resources only: nothing applies on Linux.
    if let Some(linux) = req.linux {
        let d = d.clone();
        detached(async move {
            let Some(nri) = d.nri.clone() else {
                return Ok(d
                    .containers
                    .update_resources(&req.container_id, super::records::resources(&linux))
                    .await?);
            };
            let c = d.containers.get(&req.container_id)?;
            let pod = super::nri::pod_of(&d, &c).unwrap_or_default();
            let updates = nri
                .update_container(
                    &pod,
                    &super::nri::container(&c),
                    &super::nri::nri_resources(&linux),
                )
                .await
                .map_err(crate::error::Error::Nri)?;
            d.containers
                .update_resources(&c.id, super::records::resources(&linux))
                .await?;
            // What plugins asked for goes on top of the request, as their answer to it.
            super::nri::apply_updates(&d, updates).await;
            nri.post_update_container(&pod, &super::nri::container(&c))
                .await;
            Ok(())
        })
        .await?;
    }
    Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
}

/// The resources in force for `c`, as ContainerStatus reports them.
pub(super) fn container_resources(c: &Container) -> Option<cri::ContainerResources> {
    crate::container::update::current_resources(c).map(|r| cri::ContainerResources {
        linux: Some(super::records::resources_to_cri(&r)),
        windows: None,
    })
}

/// The user the container's process runs as (uid, gid and supplemental groups as resolved
/// against the image at create); kubelet reads it when the runtime advertises the supplemental
/// groups policy.
pub(super) fn container_user(c: &Container) -> Option<cri::ContainerUser> {
    let user = c.peek(|s| s.user.clone())?;
    // The groups the process is in, as `id -G` shows them: the primary group first.
    let mut groups = vec![i64::from(user.gid)];
    for g in &user.additional_gids {
        if !groups.contains(&i64::from(*g)) {
            groups.push(i64::from(*g));
        }
    }
    Some(cri::ContainerUser {
        linux: Some(cri::LinuxContainerUser {
            uid: i64::from(user.uid),
            gid: i64::from(user.gid),
            supplemental_groups: groups,
        }),
    })
}
