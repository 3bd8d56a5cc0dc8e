//! Stats and metrics RPCs.

use super::Daemon;
use super::{not_yet, Res};
use k8s_cri::v1 as cri;
use std::sync::Arc;
use tonic::Request;

pub(super) async fn container_stats(
    _d: &Arc<Daemon>,
    _req: Request<cri::ContainerStatsRequest>,
) -> Res<cri::ContainerStatsResponse> {
    Err(not_yet("ContainerStats"))
}

pub(super) async fn list_container_stats(
    _d: &Arc<Daemon>,
    _req: Request<cri::ListContainerStatsRequest>,
) -> Res<cri::ListContainerStatsResponse> {
    Err(not_yet("ListContainerStats"))
}

pub(super) async fn pod_sandbox_stats(
    _d: &Arc<Daemon>,
    _req: Request<cri::PodSandboxStatsRequest>,
) -> Res<cri::PodSandboxStatsResponse> {
    Err(not_yet("PodSandboxStats"))
}

pub(super) async fn list_pod_sandbox_stats(
    _d: &Arc<Daemon>,
    _req: Request<cri::ListPodSandboxStatsRequest>,
) -> Res<cri::ListPodSandboxStatsResponse> {
    Err(not_yet("ListPodSandboxStats"))
}

pub(super) async fn list_metric_descriptors(
    _d: &Arc<Daemon>,
    _req: Request<cri::ListMetricDescriptorsRequest>,
) -> Res<cri::ListMetricDescriptorsResponse> {
    Err(not_yet("ListMetricDescriptors"))
}

pub(super) async fn list_pod_sandbox_metrics(
    _d: &Arc<Daemon>,
    _req: Request<cri::ListPodSandboxMetricsRequest>,
) -> Res<cri::ListPodSandboxMetricsResponse> {
    Err(not_yet("ListPodSandboxMetrics"))
}
