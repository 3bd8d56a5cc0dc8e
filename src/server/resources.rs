//! UpdateContainerResources: new limits through the OCI runtime's `update`, and the resources
//! ContainerStatus reports.

use super::{detached, Daemon, Res};
use crate::container::lifecycle::Container;
use k8s_cri::v1 as cri;
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
            Ok(d.containers
                .update_resources(&req.container_id, &linux)
                .await?)
        })
        .await?;
    }
    Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
}

/// The resources in force for `c`, as ContainerStatus reports them.
pub(super) fn container_resources(c: &Container) -> Option<cri::ContainerResources> {
    crate::container::update::current_resources(c).map(|linux| cri::ContainerResources {
        linux: Some(linux),
        windows: None,
    })
}
