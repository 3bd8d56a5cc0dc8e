//! Pod sandbox RPCs: Run/Stop/Remove/Status/List.

use super::Daemon;
use super::{detached, Res};
use crate::cri::v1 as cri;
use std::sync::Arc;
use tonic::{Request, Response, Status};

use super::batches::{in_batches, Batches};
use super::convert;
use crate::error::Error;
use crate::network::PortMapping;
use crate::sandbox::files::Dns;
use crate::sandbox::lifecycle::{grace_period, PodName, Pods, RunRequest, Sandbox};

pub(super) async fn run_pod_sandbox(
    d: &Arc<Daemon>,
    req: Request<cri::RunPodSandboxRequest>,
) -> Res<cri::RunPodSandboxResponse> {
    let req = req.into_inner();
    let config = req.config.ok_or_else(|| {
        Status::invalid_argument("config: RunPodSandboxRequest has no pod sandbox config")
    })?;
    let pods = d.pods.clone();
    let handler = req.runtime_handler;
    let hook = d.nri.clone().map(super::nri::RunPodHook);
    let id = detached(async move {
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        // TARGET names a container's namespace: meaningless for the pod itself.
        for (field, mode) in [
            ("network", ns.network),
            ("pid", ns.pid),
            ("ipc", ns.ipc),
        ] {
            if mode == cri::NamespaceMode::Target as i32 {
                return Err(Error::InvalidArgument(format!(
                    "linux.security_context.namespace_options.{field}: TARGET is only valid for containers"
                )));
            }
        }
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
        let linux = config.linux.clone().unwrap_or_default();
        let run = RunRequest {
            metadata: config.metadata.as_ref().map(|m| PodName {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
                attempt: m.attempt,
            }),
            hostname: config.hostname.clone(),
            cgroup_parent: linux.cgroup_parent.clone(),
            sysctls: linux.sysctls.clone(),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            log_directory: config.log_directory.clone(),
            resources: crate::spec::pod_limits(&linux),
            facts: super::records::pod_request_facts(&config),
            raw: serde_json::to_value(&config).unwrap_or_default(),
            spec: crate::spec::PodRequest::new(&config),
            runtime_handler: &handler,
            dns,
            port_mappings,
            host_network: ns.network == cri::NamespaceMode::Node as i32,
            host_ipc: ns.ipc == cri::NamespaceMode::Node as i32,
            before_ready: hook
                .as_ref()
                .map(|h| h as &dyn crate::sandbox::lifecycle::BeforeReady),
        };
        Ok(pods.run(run).await?)
    })
    .await?;
    Ok(Response::new(cri::RunPodSandboxResponse {
        pod_sandbox_id: id,
    }))
}

pub(super) async fn stop_pod_sandbox(
    d: &Arc<Daemon>,
    req: Request<cri::StopPodSandboxRequest>,
) -> Res<cri::StopPodSandboxResponse> {
    let id = req.into_inner().pod_sandbox_id;
    let d = d.clone();
    detached(async move {
        // Stop of an unknown pod is success (critest's idempotence specs).
        let Some(rec) = d.pods.find(&id)? else {
            return Ok(());
        };
        // All at once, each with its own grace period: one slow container must not add its
        // wait to the others'.
        let stops = d.containers.of_sandbox(&rec.id).into_iter().map(|c| {
            let grace = grace_period(&c.meta.annotations, &rec.meta.annotations);
            let d = d.clone();
            async move { super::container::stop_with_nri(&d, &c, grace).await }
        });
        futures::future::try_join_all(stops).await?;
        let was_ready = rec.status().state == crate::sandbox::lifecycle::SandboxState::Ready;
        d.pods.stop(&rec).await?;
        if let (Some(nri), true) = (&d.nri, was_ready) {
            nri.stop_pod_sandbox(&super::nri::pod(&rec)).await;
        }
        Ok(())
    })
    .await?;
    Ok(Response::new(cri::StopPodSandboxResponse {}))
}

pub(super) async fn remove_pod_sandbox(
    d: &Arc<Daemon>,
    req: Request<cri::RemovePodSandboxRequest>,
) -> Res<cri::RemovePodSandboxResponse> {
    let id = req.into_inner().pod_sandbox_id;
    let d = d.clone();
    detached(async move {
        let Some(rec) = d.pods.find(&id)? else {
            return Ok(());
        };
        let removes = d.containers.of_sandbox(&rec.id).into_iter().map(|c| {
            let d = d.clone();
            async move { super::container::remove_with_nri(&d, &c).await }
        });
        futures::future::try_join_all(removes).await?;
        d.pods.remove(&rec).await?;
        if let Some(nri) = &d.nri {
            nri.remove_pod_sandbox(&super::nri::pod(&rec)).await;
        }
        Ok(())
    })
    .await?;
    Ok(Response::new(cri::RemovePodSandboxResponse {}))
}

pub(super) async fn pod_sandbox_status(
    d: &Arc<Daemon>,
    req: Request<cri::PodSandboxStatusRequest>,
) -> Res<cri::PodSandboxStatusResponse> {
    let req = req.into_inner();
    let rec = d.pods.get(&req.pod_sandbox_id).map_err(Error::from)?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let st = rec.status();
        let v = serde_json::json!({
            "id": rec.id,
            "nameKey": rec.meta.name_key,
            "pid": st.pause_pid,
            "monitorPid": st.monitor_pid,
            "runtimeHandler": rec.meta.runtime_handler,
            "image": d.config.load().image.sandbox_image,
            "hostname": rec.meta.hostname,
            "hostNetwork": rec.meta.host_network,
            "namespaces": rec.meta.namespaces,
            "podFiles": rec.meta.pod_files,
            "cgroupParent": rec.meta.cgroup_parent,
            "resources": Pods::limits(&rec),
            "portMappings": rec.meta.port_mappings,
            "network": {
                "ips": st.ips,
                "attached": st.network_attached,
                "cniResult": st.network_result,
            },
            "config": rec.meta.config,
        });
        info.insert("info".to_string(), v.to_string());
    }
    let containers = d
        .containers
        .of_sandbox(&rec.id)
        .iter()
        .map(|c| convert::container_status(c))
        .collect();
    Ok(Response::new(cri::PodSandboxStatusResponse {
        status: Some(convert::pod_sandbox_status(&rec)),
        info,
        containers_statuses: containers,
        timestamp: crate::clock::now_ns(),
    }))
}

pub(super) async fn list_pod_sandbox(
    d: &Arc<Daemon>,
    req: Request<cri::ListPodSandboxRequest>,
) -> Res<cri::ListPodSandboxResponse> {
    let filter = req.into_inner().filter.unwrap_or_default();
    let items = pod_sandboxes(select_pods(d, &filter), &filter);
    Ok(Response::new(cri::ListPodSandboxResponse { items }))
}

pub(super) async fn stream_pod_sandboxes(
    d: &Arc<Daemon>,
    req: Request<cri::StreamPodSandboxesRequest>,
) -> Res<Batches<cri::StreamPodSandboxesResponse>> {
    let filter = req.into_inner().filter.unwrap_or_default();
    let selected = select_pods(d, &filter);
    let read = move |batch| std::future::ready(Ok(pod_sandboxes(batch, &filter)));
    Ok(Response::new(in_batches(selected, read, |pod_sandboxes| {
        cri::StreamPodSandboxesResponse { pod_sandboxes }
    })))
}

pub(super) async fn update_pod_sandbox_resources(
    d: &Arc<Daemon>,
    req: Request<cri::UpdatePodSandboxResourcesRequest>,
) -> Res<cri::UpdatePodSandboxResourcesResponse> {
    let req = req.into_inner();
    let d = d.clone();
    detached(async move {
        let rec = d.pods.get(&req.pod_sandbox_id)?;
        let nri = d.nri.clone().map(|nri| (nri, super::nri::pod(&rec)));
        if let Some((nri, pod)) = &nri {
            let resources = |r: &Option<cri::LinuxContainerResources>| {
                r.as_ref().map(super::nri::nri_resources)
            };
            nri.update_pod_sandbox(pod, resources(&req.overhead), resources(&req.resources))
                .await?;
        }
        let linux = cri::LinuxPodSandboxConfig {
            overhead: req.overhead,
            resources: req.resources,
            ..Default::default()
        };
        let limits = crate::spec::pod_limits(&linux);
        d.pods.update_resources(&rec, limits).await?;
        if let Some((nri, pod)) = &nri {
            nri.post_update_pod_sandbox(pod).await;
        }
        Ok(())
    })
    .await?;
    Ok(Response::new(cri::UpdatePodSandboxResourcesResponse {}))
}

/// The pods a filter's id and labels select (pods still being created are nobody's yet).
fn select_pods(d: &Daemon, filter: &cri::PodSandboxFilter) -> Vec<Arc<Sandbox>> {
    d.pods
        .list()
        .into_iter()
        .filter(|s| s.peek(|st| st.state) != crate::sandbox::lifecycle::SandboxState::Creating)
        .filter(|s| filter.id.is_empty() || s.id.starts_with(&filter.id))
        .filter(|s| convert::matches(&s.meta.labels, &filter.label_selector))
        .collect()
}

/// `pods` as CRI objects, less those outside the filter's state.
fn pod_sandboxes(pods: Vec<Arc<Sandbox>>, filter: &cri::PodSandboxFilter) -> Vec<cri::PodSandbox> {
    pods.iter()
        .map(|s| convert::pod_sandbox(s))
        .filter(|p| filter.state.as_ref().is_none_or(|f| f.state == p.state))
        .collect()
}

fn protocol(p: i32) -> String {
    match cri::Protocol::try_from(p).unwrap_or(cri::Protocol::Tcp) {
        cri::Protocol::Tcp => "tcp",
        cri::Protocol::Udp => "udp",
        cri::Protocol::Sctp => "sctp",
    }
    .to_string()
}
