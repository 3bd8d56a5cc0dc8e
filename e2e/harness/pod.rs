//! One ready pod on a daemon, with busybox pulled: the fixture most container tests start from.

use super::{
    container_config, pod_config, pull, start_container, wait_for_container_state, Cri, Daemon,
    LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerConfig, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ListContainersRequest, PodSandboxConfig,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use std::time::Duration;

/// The image every [`Pod`] pulls.
pub const BUSYBOX: &str = "docker.io/library/busybox:1.36";

/// A daemon with one ready pod and busybox pulled.
pub struct Pod {
    pub d: Daemon,
    pub cri: Cri,
    pub config: PodSandboxConfig,
    pub id: String,
    pub learned: LearnedPids,
}

impl Pod {
    pub async fn start(name: &str) -> Pod {
        let d = Daemon::start(Opts::default()).await;
        Pod::on(d, name).await
    }

    pub async fn on(d: Daemon, name: &str) -> Pod {
        Pod::on_with(d, name, |_| {}).await
    }

    /// A pod named `name` on daemon `d`; `edit` adjusts its config first.
    pub async fn on_with(d: Daemon, name: &str, edit: impl FnOnce(&mut PodSandboxConfig)) -> Pod {
        let mut cri = d.client().await;
        pull(&mut cri, BUSYBOX).await;
        let mut config = pod_config(d.env(), name);
        edit(&mut config);
        let id = cri
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
            .into_inner()
            .pod_sandbox_id;
        Pod {
            d,
            cri,
            config,
            id,
            learned: LearnedPids::default(),
        }
    }

    pub async fn create(&mut self, config: ContainerConfig) -> String {
        self.try_create(config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
    }

    /// CreateContainer, its error returned for the tests that expect one.
    pub async fn try_create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
        self.cri
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    pub async fn start_ctr(&mut self, id: &str) {
        self.cri
            .rt
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
    }

    /// Create and start a busybox container running `command`.
    pub async fn run(&mut self, name: &str, command: &[&str]) -> String {
        let id = self.create(container_config(name, BUSYBOX, command)).await;
        self.start_ctr(&id).await;
        id
    }

    /// Create and start `config`, and wait until it runs.
    pub async fn run_config(&mut self, config: ContainerConfig) -> String {
        let (id, config_of_pod) = (self.id.clone(), self.config.clone());
        start_container(&mut self.cri, &id, &config_of_pod, config).await
    }

    /// ExecSync `sh -c script` in `id`: (exit code, stdout, stderr).
    pub async fn sh(&mut self, id: &str, script: &str) -> (i32, String, String) {
        let r = self
            .cri
            .rt
            .exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {id} {script:?}: {e}"))
            .into_inner();
        (
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        )
    }

    pub async fn wait(&mut self, id: &str, state: ContainerState, secs: u64) -> ContainerStatus {
        wait_for_container_state(&mut self.cri, id, state, Duration::from_secs(secs)).await
    }

    pub async fn status(&mut self, id: &str) -> ContainerStatus {
        self.cri
            .rt
            .container_status(ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner()
            .status
            .expect("status")
    }

    pub fn log_path(&self, name: &str) -> std::path::PathBuf {
        std::path::Path::new(&self.config.log_directory).join(format!("{name}/0.log"))
    }

    pub async fn stop_ctr(&mut self, id: &str, timeout: i64) {
        self.cri
            .rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    pub async fn remove_ctr(&mut self, id: &str) {
        self.cri
            .rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    /// Remove every container, stop and remove the pod, and check nothing leaked.
    pub async fn finish(mut self) {
        let ctrs = self
            .cri
            .rt
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        for c in ctrs {
            self.remove_ctr(&c.id).await;
        }
        self.cri
            .rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
        self.cri
            .rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
        self.d.assert_no_leaks(&self.learned);
    }
}
