//! CRI RuntimeService.

use super::convert;
use super::Daemon;
use crate::container::lifecycle::CreateRequest;
use crate::error::Error;
use crate::network::PortMapping;
use crate::sandbox::files::Dns;
use crate::sandbox::lifecycle::RunRequest;
use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RuntimeSvc(pub Arc<Daemon>);

type Res<T> = Result<Response<T>, Status>;

fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented by this ferrio version"))
}

/// Run `fut` to completion even if the client goes away: kubelet retries a timed-out create
/// and must find the first attempt's result, not a half-done object.
async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(fut)
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))?
        .map_err(Status::from)
}

fn protocol(p: i32) -> String {
    match cri::Protocol::try_from(p).unwrap_or(cri::Protocol::Tcp) {
        cri::Protocol::Tcp => "tcp",
        cri::Protocol::Udp => "udp",
        cri::Protocol::Sctp => "sctp",
    }
    .to_string()
}

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    async fn version(&self, _req: Request<cri::VersionRequest>) -> Res<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: "ferrio".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        req: Request<cri::RunPodSandboxRequest>,
    ) -> Res<cri::RunPodSandboxResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| {
            Status::invalid_argument("config: RunPodSandboxRequest has no pod sandbox config")
        })?;
        let pods = self.0.pods.clone();
        let handler = req.runtime_handler;
        let id = detached(async move {
            let ns = config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.clone())
                .unwrap_or_default();
            let dns = config
                .dns_config
                .as_ref()
                .map(|d| Dns {
                    servers: d.servers.clone(),
                    searches: d.searches.clone(),
                    options: d.options.clone(),
                })
                .unwrap_or_default();
            let port_mappings = config
                .port_mappings
                .iter()
                .map(|p| PortMapping {
                    protocol: protocol(p.protocol),
                    container_port: p.container_port,
                    host_port: p.host_port,
                    host_ip: p.host_ip.clone(),
                })
                .collect();
            let run = RunRequest {
                config: &config,
                runtime_handler: &handler,
                dns,
                port_mappings,
                host_network: ns.network == cri::NamespaceMode::Node as i32,
                host_ipc: ns.ipc == cri::NamespaceMode::Node as i32,
            };
            Ok(pods.run(run).await?)
        })
        .await?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        req: Request<cri::StopPodSandboxRequest>,
    ) -> Res<cri::StopPodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        let d = self.0.clone();
        detached(async move {
            // Stop of an unknown pod is success (critest's idempotence specs).
            let Some(rec) = d.pods.table.get(&id)? else {
                return Ok(());
            };
            for c in d.containers.of_sandbox(&rec.id) {
                d.containers.stop(&c, 0).await?;
            }
            d.pods.stop(&rec).await?;
            Ok(())
        })
        .await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        req: Request<cri::RemovePodSandboxRequest>,
    ) -> Res<cri::RemovePodSandboxResponse> {
        let id = req.into_inner().pod_sandbox_id;
        let d = self.0.clone();
        detached(async move {
            let Some(rec) = d.pods.table.get(&id)? else {
                return Ok(());
            };
            for c in d.containers.of_sandbox(&rec.id) {
                d.containers.remove(&c).await?;
            }
            d.pods.remove(&rec).await?;
            Ok(())
        })
        .await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        req: Request<cri::PodSandboxStatusRequest>,
    ) -> Res<cri::PodSandboxStatusResponse> {
        let req = req.into_inner();
        let rec = self.0.pods.get(&req.pod_sandbox_id).map_err(Error::from)?;
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "config": rec.meta.config,
                "status": rec.status(),
                "namespaces": rec.meta.namespaces,
                "cgroupParent": rec.meta.cgroup_parent,
            });
            info.insert("info".to_string(), v.to_string());
        }
        let containers = self
            .0
            .containers
            .of_sandbox(&rec.id)
            .iter()
            .map(|c| convert::container_status(c))
            .collect();
        Ok(Response::new(cri::PodSandboxStatusResponse {
            status: Some(convert::pod_sandbox_status(&rec)),
            info,
            containers_statuses: containers,
            timestamp: chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        req: Request<cri::ListPodSandboxRequest>,
    ) -> Res<cri::ListPodSandboxResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let items = self
            .0
            .pods
            .table
            .list()
            .into_iter()
            .filter(|s| s.status().state != crate::sandbox::lifecycle::SandboxState::Creating)
            .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
            .filter(|s| convert::matches(&s.meta.labels, &filter.label_selector))
            .map(|s| convert::pod_sandbox(&s))
            .filter(|p| filter.state.as_ref().is_none_or(|f| f.state == p.state))
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn create_container(
        &self,
        req: Request<cri::CreateContainerRequest>,
    ) -> Res<cri::CreateContainerResponse> {
        let req = req.into_inner();
        let config = req.config.ok_or_else(|| {
            Status::invalid_argument("config: CreateContainerRequest has no container config")
        })?;
        let d = self.0.clone();
        let id = detached(async move {
            let sandbox = d.pods.get(&req.pod_sandbox_id)?;
            // kubelet always sends the pod config; other clients may not.
            let sandbox_config = match req.sandbox_config {
                Some(c) => c,
                None => serde_json::from_value(sandbox.meta.config.clone()).unwrap_or_default(),
            };
            let create = CreateRequest {
                sandbox_id: &sandbox.id,
                config: &config,
                sandbox_config: &sandbox_config,
            };
            Ok(d.containers.create(create).await?)
        })
        .await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        req: Request<cri::StartContainerRequest>,
    ) -> Res<cri::StartContainerResponse> {
        let id = req.into_inner().container_id;
        let d = self.0.clone();
        detached(async move { Ok(d.containers.start(&id).await?) }).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        req: Request<cri::StopContainerRequest>,
    ) -> Res<cri::StopContainerResponse> {
        let req = req.into_inner();
        let d = self.0.clone();
        detached(async move {
            let Some(rec) = d.containers.table.get(&req.container_id)? else {
                return Ok(());
            };
            Ok(d.containers.stop(&rec, req.timeout).await?)
        })
        .await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        req: Request<cri::RemoveContainerRequest>,
    ) -> Res<cri::RemoveContainerResponse> {
        let id = req.into_inner().container_id;
        let d = self.0.clone();
        detached(async move {
            let Some(rec) = d.containers.table.get(&id)? else {
                return Ok(());
            };
            Ok(d.containers.remove(&rec).await?)
        })
        .await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        req: Request<cri::ListContainersRequest>,
    ) -> Res<cri::ListContainersResponse> {
        let filter = req.into_inner().filter.unwrap_or_default();
        let containers = self
            .0
            .containers
            .table
            .list()
            .into_iter()
            .filter(|c| {
                c.status().state() != crate::container::lifecycle::ContainerState::Creating
            })
            .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
            .filter(|c| {
                filter.pod_sandbox_id.is_empty()
                    || c.meta.sandbox_id.starts_with(&filter.pod_sandbox_id)
            })
            .filter(|c| convert::matches(&c.meta.labels, &filter.label_selector))
            .map(|c| convert::container(&c))
            .filter(|c| filter.state.as_ref().is_none_or(|f| f.state == c.state))
            .collect();
        Ok(Response::new(cri::ListContainersResponse { containers }))
    }

    async fn container_status(
        &self,
        req: Request<cri::ContainerStatusRequest>,
    ) -> Res<cri::ContainerStatusResponse> {
        let req = req.into_inner();
        let rec = self
            .0
            .containers
            .get(&req.container_id)
            .map_err(Error::from)?;
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "config": rec.meta.config,
                "status": rec.status(),
                "sandboxID": rec.meta.sandbox_id,
                "cgroupsPath": rec.meta.cgroups_path,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(cri::ContainerStatusResponse {
            status: Some(convert::container_status(&rec)),
            info,
        }))
    }

    async fn update_container_resources(
        &self,
        _req: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Res<cri::UpdateContainerResourcesResponse> {
        Err(not_yet("UpdateContainerResources"))
    }

    async fn reopen_container_log(
        &self,
        _req: Request<cri::ReopenContainerLogRequest>,
    ) -> Res<cri::ReopenContainerLogResponse> {
        Err(not_yet("ReopenContainerLog"))
    }

    async fn exec_sync(&self, _req: Request<cri::ExecSyncRequest>) -> Res<cri::ExecSyncResponse> {
        Err(not_yet("ExecSync"))
    }

    async fn exec(&self, _req: Request<cri::ExecRequest>) -> Res<cri::ExecResponse> {
        Err(not_yet("Exec"))
    }

    async fn attach(&self, _req: Request<cri::AttachRequest>) -> Res<cri::AttachResponse> {
        Err(not_yet("Attach"))
    }

    async fn port_forward(
        &self,
        _req: Request<cri::PortForwardRequest>,
    ) -> Res<cri::PortForwardResponse> {
        Err(not_yet("PortForward"))
    }

    async fn container_stats(
        &self,
        _req: Request<cri::ContainerStatsRequest>,
    ) -> Res<cri::ContainerStatsResponse> {
        Err(not_yet("ContainerStats"))
    }

    async fn list_container_stats(
        &self,
        _req: Request<cri::ListContainerStatsRequest>,
    ) -> Res<cri::ListContainerStatsResponse> {
        Err(not_yet("ListContainerStats"))
    }

    async fn pod_sandbox_stats(
        &self,
        _req: Request<cri::PodSandboxStatsRequest>,
    ) -> Res<cri::PodSandboxStatsResponse> {
        Err(not_yet("PodSandboxStats"))
    }

    async fn list_pod_sandbox_stats(
        &self,
        _req: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Res<cri::ListPodSandboxStatsResponse> {
        Err(not_yet("ListPodSandboxStats"))
    }

    async fn update_runtime_config(
        &self,
        _req: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Res<cri::UpdateRuntimeConfigResponse> {
        // kubelet sends the pod CIDR here; CNI's own config decides addresses, so there is
        // nothing to apply.
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(&self, _req: Request<cri::StatusRequest>) -> Res<cri::StatusResponse> {
        let runtime_ready = cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let network_ready = match self.0.cni.ready() {
            Ok(_) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(e) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!("network plugin not ready: {e}"),
            },
        };
        let runtime_handlers = self
            .0
            .config
            .runtime
            .runtimes
            .keys()
            .map(|name| cri::RuntimeHandler {
                name: name.clone(),
                features: Some(cri::RuntimeHandlerFeatures {
                    recursive_read_only_mounts: false,
                    user_namespaces: false,
                }),
            })
            .collect();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![runtime_ready, network_ready],
            }),
            info: Default::default(),
            runtime_handlers,
            features: None,
        }))
    }

    async fn checkpoint_container(
        &self,
        _req: Request<cri::CheckpointContainerRequest>,
    ) -> Res<cri::CheckpointContainerResponse> {
        Err(not_yet("CheckpointContainer"))
    }

    type GetContainerEventsStream = Pin<
        Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _req: Request<cri::GetEventsRequest>,
    ) -> Res<Self::GetContainerEventsStream> {
        Err(not_yet("GetContainerEvents"))
    }

    async fn list_metric_descriptors(
        &self,
        _req: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Res<cri::ListMetricDescriptorsResponse> {
        Err(not_yet("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _req: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Res<cri::ListPodSandboxMetricsResponse> {
        Err(not_yet("ListPodSandboxMetrics"))
    }

    async fn runtime_config(
        &self,
        _req: Request<cri::RuntimeConfigRequest>,
    ) -> Res<cri::RuntimeConfigResponse> {
        let driver = if self.0.config.runtime.cgroup_manager == "systemd" {
            cri::CgroupDriver::Systemd
        } else {
            cri::CgroupDriver::Cgroupfs
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        }))
    }
}
