//! UpdateContainerResources: new limits through the OCI runtime's `update`.

use super::{not_yet, Daemon, Res};
use k8s_cri::v1 as cri;
use std::sync::Arc;
use tonic::Request;

pub(super) async fn update_container_resources(
    _d: &Arc<Daemon>,
    _req: Request<cri::UpdateContainerResourcesRequest>,
) -> Res<cri::UpdateContainerResourcesResponse> {
    Err(not_yet("UpdateContainerResources"))
}
