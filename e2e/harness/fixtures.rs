//! CRI request bodies the tests share, shaped like kubelet's.

use super::client::Cri;
use super::env::Env;
use super::rand_hex;
use ferrio::cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ImageSpec, LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatus, PodSandboxStatusRequest, PullImageRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use std::time::{Duration, Instant};

/// PullImage `image` as kubelet does before it creates; the image's ref. Panics naming the image.
pub async fn pull(cri: &mut Cri, image: &str) -> String {
    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e}"))
        .into_inner()
        .image_ref
}

/// A pod named `name` in namespace `e2e` with a fresh uid, its own log directory and a cgroup
/// parent unique to the test.
pub fn pod_config(env: &Env, name: &str) -> PodSandboxConfig {
    let uid = rand_hex(32);
    let log_dir = env.pod_log_dir(&format!("{name}_{uid}"));
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid,
            namespace: "e2e".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.to_string_lossy().to_string(),
        labels: [("e2e".to_string(), name.to_string())].into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: env.cgroup_parent(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container `name` running `command` in `image`, logging to `<name>/0.log` as kubelet names it.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        labels: [("e2e".to_string(), name.to_string())].into(),
        ..Default::default()
    }
}

/// Poll ContainerStatus until the container reaches `state`; panic after `timeout`.
pub async fn wait_for_container_state(
    cri: &mut Cri,
    id: &str,
    state: ContainerState,
    timeout: Duration,
) -> ContainerStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let st = cri
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.to_string(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner()
            .status
            .unwrap_or_else(|| panic!("ContainerStatus {id} has no status"));
        if st.state == state as i32 {
            return st;
        }
        if Instant::now() > deadline {
            panic!("container {id} did not reach {state:?} within {timeout:?}; last status {st:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// RunPodSandbox with `handler` ("" is the default runtime). The error is returned, not unwrapped:
/// many tests expect one.
pub async fn run_pod(
    cri: &mut Cri,
    config: &PodSandboxConfig,
    handler: &str,
) -> Result<String, tonic::Status> {
    cri.rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map(|r| r.into_inner().pod_sandbox_id)
}

/// StopPodSandbox then RemovePodSandbox, the way kubelet ends a pod; panics naming the call that failed.
pub async fn stop_and_remove_pod(cri: &mut Cri, id: &str) {
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}"));
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}"));
}

/// Verbose PodSandboxStatus: the status and its `info` parsed as JSON (Null when the daemon sent none).
pub async fn pod_status(cri: &mut Cri, id: &str) -> (PodSandboxStatus, serde_json::Value) {
    let r = cri
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"))
        .into_inner();
    let info = r
        .info
        .get("info")
        .map(|s| serde_json::from_str(s).expect("verbose info is JSON"))
        .unwrap_or(serde_json::Value::Null);
    (r.status.expect("a status"), info)
}

/// CreateContainer + StartContainer in pod `pod_id`, then wait until it is reported running; panics naming
/// the call that failed. Returns the container id.
pub async fn start_container(
    cri: &mut Cri,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let id = create_and_start(cri, pod_id, pod, config).await;
    wait_for_container_state(
        cri,
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(30),
    )
    .await;
    id
}

/// CreateContainer + StartContainer in pod `pod_id`, without waiting (the process may have exited
/// by the time it returns); panics naming the call that failed. Returns the container id.
pub async fn create_and_start(
    cri: &mut Cri,
    pod_id: &str,
    pod: &PodSandboxConfig,
    config: ContainerConfig,
) -> String {
    let name = config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let id = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
        .into_inner()
        .container_id;
    cri.rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
    id
}
