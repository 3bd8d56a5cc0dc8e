//! CRI RuntimeService: the trait, delegating to one file per RPC family.

use super::batches::Batches;
use super::{container, pod, resources, stats, status, stream, Daemon, Res};
use crate::cri::v1 as cri;
use crate::cri::v1::runtime_service_server::RuntimeService;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Status};

pub struct RuntimeSvc(pub Arc<Daemon>);

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> Res<cri::VersionResponse> {
        status::version(&self.0, _req).await
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Res<cri::RunPodSandboxResponse> {
        pod::run_pod_sandbox(&self.0, req).await
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Res<cri::StopPodSandboxResponse> {
        pod::stop_pod_sandbox(&self.0, req).await
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Res<cri::RemovePodSandboxResponse> {
        pod::remove_pod_sandbox(&self.0, req).await
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Res<cri::PodSandboxStatusResponse> {
        pod::pod_sandbox_status(&self.0, req).await
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Res<cri::ListPodSandboxResponse> {
        pod::list_pod_sandbox(&self.0, req).await
    }

    type StreamPodSandboxesStream = Batches<cri::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        req: Request<cri::StreamPodSandboxesRequest>,
    ) -> Res<Self::StreamPodSandboxesStream> {
        pod::stream_pod_sandboxes(&self.0, req).await
    }

    async fn update_pod_sandbox_resources(
        &self,
        req: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Res<cri::UpdatePodSandboxResourcesResponse> {
        pod::update_pod_sandbox_resources(&self.0, req).await
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Res<cri::CreateContainerResponse> {
        container::create_container(&self.0, req).await
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Res<cri::StartContainerResponse> {
        container::start_container(&self.0, req).await
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Res<cri::StopContainerResponse> {
        container::stop_container(&self.0, req).await
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Res<cri::RemoveContainerResponse> {
        container::remove_container(&self.0, req).await
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Res<cri::ListContainersResponse> {
        container::list_containers(&self.0, req).await
    }

    type StreamContainersStream = Batches<cri::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        req: Request<cri::StreamContainersRequest>,
    ) -> Res<Self::StreamContainersStream> {
        container::stream_containers(&self.0, req).await
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Res<cri::ContainerStatusResponse> {
        container::container_status(&self.0, req).await
    }

    async fn update_container_resources(
        &self,
        _req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Res<cri::UpdateContainerResourcesResponse> {
        resources::update_container_resources(&self.0, _req).await
    }

    async fn reopen_container_log(
        &self,
        _req: Request<cri::ReopenContainerLogRequest>,
    ) -> Res<cri::ReopenContainerLogResponse> {
        container::reopen_container_log(&self.0, _req).await
    }

    async fn exec_sync(&self, _req: Request<cri::ExecSyncRequest>) -> Res<cri::ExecSyncResponse> {
        container::exec_sync(&self.0, _req).await
    }

    async fn exec(&self, _req: Request<cri::ExecRequest>) -> Res<cri::ExecResponse> {
        stream::exec(&self.0, _req).await
    }

    async fn attach(&self, _req: Request<cri::AttachRequest>) -> Res<cri::AttachResponse> {
        stream::attach(&self.0, _req).await
    }

    async fn port_forward(
        &self,
        _req: Request<cri::PortForwardRequest>,
    ) -> Res<cri::PortForwardResponse> {
        stream::port_forward(&self.0, _req).await
    }

    async fn container_stats(
        &self,
        _req: Request<cri::ContainerStatsRequest>,
    ) -> Res<cri::ContainerStatsResponse> {
        stats::container_stats(&self.0, _req).await
    }

    async fn list_container_stats(
        &self,
        _req: Request<cri::ListContainerStatsRequest>,
    ) -> Res<cri::ListContainerStatsResponse> {
        stats::list_container_stats(&self.0, _req).await
    }

    type StreamContainerStatsStream = Batches<cri::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        req: Request<cri::StreamContainerStatsRequest>,
    ) -> Res<Self::StreamContainerStatsStream> {
        stats::stream_container_stats(&self.0, req).await
    }

    async fn pod_sandbox_stats(
        &self,
        _req: Request<cri::PodSandboxStatsRequest>,
    ) -> Res<cri::PodSandboxStatsResponse> {
        stats::pod_sandbox_stats(&self.0, _req).await
    }

    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Res<cri::ListPodSandboxStatsResponse> {
        stats::list_pod_sandbox_stats(&self.0, _req).await
    }

    type StreamPodSandboxStatsStream = Batches<cri::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        req: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Res<Self::StreamPodSandboxStatsStream> {
        stats::stream_pod_sandbox_stats(&self.0, req).await
    }

    async fn update_runtime_config(
        &self,
        _req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Res<cri::UpdateRuntimeConfigResponse> {
        status::update_runtime_config(&self.0, _req).await
    }

    async fn status(&self, _req: Request<cri::StatusRequest>) -> Res<cri::StatusResponse> {
        status::status(&self.0, _req).await
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Res<cri::CheckpointContainerResponse> {
        container::checkpoint_container(&self.0, _req).await
    }

    type GetContainerEventsStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Res<Self::GetContainerEventsStream> {
        use tokio_stream::StreamExt;
        let metrics = self.0.metrics.clone();
        let rx = self.0.events.subscribe();
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| match r {
                Ok(ev) => Some(Ok(ev)),
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    metrics.events_dropped(n);
                    None
                }
            });
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Res<cri::ListMetricDescriptorsResponse> {
        stats::list_metric_descriptors(&self.0, _req).await
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Res<cri::ListPodSandboxMetricsResponse> {
        stats::list_pod_sandbox_metrics(&self.0, _req).await
    }

    type StreamPodSandboxMetricsStream = Batches<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        req: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Res<Self::StreamPodSandboxMetricsStream> {
        stats::stream_pod_sandbox_metrics(&self.0, req).await
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Res<cri::RuntimeConfigResponse> {
        status::runtime_config(&self.0, _req).await
    }
}
