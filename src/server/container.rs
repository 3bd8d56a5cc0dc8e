//! Container RPCs: Create/Start/Stop/Remove/List/Status, update, log reopen, exec-sync.

use super::Daemon;
use super::{detached, not_yet, Res};
use crate::cri::v1 as cri;
use std::sync::Arc;
use tonic::{Request, Response, Status};

use super::batches::{in_batches, Batches};
use super::convert;
use crate::container::lifecycle::{Container, ContainerName, CreateRequest};
use crate::error::Error;

pub(super) async fn create_container(
    d: &Arc<Daemon>,
    req: Request<cri::CreateContainerRequest>,
) -> Res<cri::CreateContainerResponse> {
    let req = req.into_inner();
    let config = req.config.ok_or_else(|| {
        Status::invalid_argument("config: CreateContainerRequest has no container config")
    })?;
    let d = d.clone();
    let id = detached(async move {
        let sandbox = d.pods.get(&req.pod_sandbox_id)?;
        // kubelet always sends the pod config; other clients may not.
        let sandbox_config = match req.sandbox_config {
            Some(c) => c,
            None => convert::pod_config(&sandbox.meta),
        };
        let adjust = d.nri.as_ref().map(|nri| super::nri::Adjust {
            nri: nri.clone(),
            pod: super::nri::pod(&sandbox),
            config: config.clone(),
        });
        let create = CreateRequest {
            sandbox_id: &sandbox.id,
            metadata: config.metadata.as_ref().map(|m| ContainerName {
                name: m.name.clone(),
                attempt: m.attempt,
            }),
            image: config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            facts: super::records::container_request_facts(&config),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            log_path: config.log_path.clone(),
            stop_signal: super::records::requested_stop_signal(config.stop_signal),
            raw: serde_json::to_value(&config).unwrap_or_default(),
            spec: crate::spec::ContainerRequest::new(&config, &sandbox_config),
            adjust_spec: adjust
                .as_ref()
                .map(|a| a as &dyn crate::container::lifecycle::SpecAdjust),
        };
        // PostCreateContainer goes out from inside the create (see `Adjust::created`), once per
        // container even when kubelet retries.
        Ok(d.containers.create(create).await?)
    })
    .await?;
    Ok(Response::new(cri::CreateContainerResponse {
        container_id: id,
    }))
}

pub(super) async fn start_container(
    d: &Arc<Daemon>,
    req: Request<cri::StartContainerRequest>,
) -> Res<cri::StartContainerResponse> {
    let id = req.into_inner().container_id;
    let d = d.clone();
    detached(async move {
        let Some(nri) = d.nri.clone() else {
            return Ok(d.containers.start(&id).await?);
        };
        let c = d.containers.get(&id)?;
        let pod = super::nri::pod_of(&d, &c).unwrap_or_default();
        nri.start_container(&pod, &super::nri::container(&c)).await;
        d.containers.start(&id).await?;
        nri.post_start_container(&pod, &super::nri::container(&c))
            .await;
        Ok(())
    })
    .await?;
    Ok(Response::new(cri::StartContainerResponse {}))
}

pub(super) async fn stop_container(
    d: &Arc<Daemon>,
    req: Request<cri::StopContainerRequest>,
) -> Res<cri::StopContainerResponse> {
    let req = req.into_inner();
    let d = d.clone();
    detached(async move {
        let Some(rec) = d.containers.find(&req.container_id)? else {
            return Ok(());
        };
        stop_with_nri(&d, &rec, req.timeout).await
    })
    .await?;
    Ok(Response::new(cri::StopContainerResponse {}))
}

pub(super) async fn remove_container(
    d: &Arc<Daemon>,
    req: Request<cri::RemoveContainerRequest>,
) -> Res<cri::RemoveContainerResponse> {
    let id = req.into_inner().container_id;
    let d = d.clone();
    detached(async move {
        let Some(rec) = d.containers.find(&id)? else {
            return Ok(());
        };
        remove_with_nri(&d, &rec).await
    })
    .await?;
    Ok(Response::new(cri::RemoveContainerResponse {}))
}

/// Stop `c`, then tell NRI plugins if it was running or created until now.
pub(super) async fn stop_with_nri(
    d: &Daemon,
    c: &Arc<Container>,
    timeout: i64,
) -> Result<(), Error> {
    use crate::container::lifecycle::ContainerState;
    let was_live = matches!(
        c.status().state(),
        ContainerState::Created | ContainerState::Running
    );
    d.containers.stop(c, timeout).await?;
    if let (Some(nri), true) = (&d.nri, was_live) {
        let pod = super::nri::pod_of(d, c).unwrap_or_default();
        nri.stop_container(&pod, &super::nri::container(c)).await;
    }
    Ok(())
}

/// Remove `c`, then tell NRI plugins.
pub(super) async fn remove_with_nri(d: &Daemon, c: &Arc<Container>) -> Result<(), Error> {
    let pod = d
        .nri
        .as_ref()
        .map(|_| super::nri::pod_of(d, c).unwrap_or_default());
    d.containers.remove(c).await?;
    if let (Some(nri), Some(pod)) = (&d.nri, pod) {
        // Removing a running container stops it: plugins hear of the stop first.
        nri.stop_container(&pod, &super::nri::container(c)).await;
        nri.remove_container(&pod, &super::nri::container(c)).await;
    }
    Ok(())
}

pub(super) async fn list_containers(
    d: &Arc<Daemon>,
    req: Request<cri::ListContainersRequest>,
) -> Res<cri::ListContainersResponse> {
    let filter = req.into_inner().filter.unwrap_or_default();
    let containers = cri_containers(select_containers(d, &filter), &filter);
    Ok(Response::new(cri::ListContainersResponse { containers }))
}

pub(super) async fn stream_containers(
    d: &Arc<Daemon>,
    req: Request<cri::StreamContainersRequest>,
) -> Res<Batches<cri::StreamContainersResponse>> {
    let filter = req.into_inner().filter.unwrap_or_default();
    let selected = select_containers(d, &filter);
    let read = move |batch| std::future::ready(Ok(cri_containers(batch, &filter)));
    Ok(Response::new(in_batches(selected, read, |containers| {
        cri::StreamContainersResponse { containers }
    })))
}

/// The containers a filter's id, pod and labels select (containers still being created are nobody's yet).
fn select_containers(d: &Daemon, filter: &cri::ContainerFilter) -> Vec<Arc<Container>> {
    d.containers
        .list()
        .into_iter()
        .filter(|c| {
            c.peek(|st| st.state()) != crate::container::lifecycle::ContainerState::Creating
        })
        .filter(|c| filter.id.is_empty() || c.id.starts_with(&filter.id))
        .filter(|c| {
            filter.pod_sandbox_id.is_empty()
                || c.meta.sandbox_id.starts_with(&filter.pod_sandbox_id)
        })
        .filter(|c| convert::matches(&c.meta.labels, &filter.label_selector))
        .collect()
}

/// `containers` as CRI objects, less those outside the filter's state.
fn cri_containers(
    containers: Vec<Arc<Container>>,
    filter: &cri::ContainerFilter,
) -> Vec<cri::Container> {
    containers
        .iter()
        .map(|c| convert::container(c))
        .filter(|c| filter.state.as_ref().is_none_or(|f| f.state == c.state))
        .collect()
}

pub(super) async fn container_status(
    d: &Arc<Daemon>,
    req: Request<cri::ContainerStatusRequest>,
) -> Res<cri::ContainerStatusResponse> {
    let req = req.into_inner();
    let rec = d.containers.get(&req.container_id).map_err(Error::from)?;
    let mut info = std::collections::HashMap::new();
    if req.verbose {
        let v = serde_json::json!({
            "config": rec.meta.config,
            "status": rec.status(),
            "sandboxID": rec.meta.sandbox_id,
            "cgroupsPath": rec.cgroups_path(),
        });
        info.insert("info".to_string(), v.to_string());
    }
    let mut status = convert::container_status(&rec);
    status.user = super::resources::container_user(&rec);
    Ok(Response::new(cri::ContainerStatusResponse {
        status: Some(status),
        info,
    }))
}

pub(super) async fn reopen_container_log(
    d: &Arc<Daemon>,
    req: Request<cri::ReopenContainerLogRequest>,
) -> Res<cri::ReopenContainerLogResponse> {
    let id = req.into_inner().container_id;
    let d = d.clone();
    detached(async move { Ok(d.containers.reopen_log(&id).await?) }).await?;
    Ok(Response::new(cri::ReopenContainerLogResponse {}))
}

pub(super) async fn exec_sync(
    d: &Arc<Daemon>,
    req: Request<cri::ExecSyncRequest>,
) -> Res<cri::ExecSyncResponse> {
    let req = req.into_inner();
    if req.timeout < 0 {
        return Err(Status::invalid_argument(format!(
            "timeout: {} is negative",
            req.timeout
        )));
    }
    let d = d.clone();
    // Detached: a client that gives up must not leave the process running unobserved.
    let out = detached(async move {
        let timeout = std::time::Duration::from_secs(req.timeout as u64);
        Ok(d.containers
            .exec_sync(&req.container_id, req.cmd, timeout)
            .await?)
    })
    .await?;
    Ok(Response::new(cri::ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    }))
}

pub(super) async fn checkpoint_container(
    _d: &Arc<Daemon>,
    _req: Request<cri::CheckpointContainerRequest>,
) -> Res<cri::CheckpointContainerResponse> {
    Err(not_yet("CheckpointContainer"))
}
