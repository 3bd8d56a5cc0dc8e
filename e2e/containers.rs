//! Container RPCs against a real daemon: ExecSync (timeout), ReopenContainerLog (rotation),
//! attach, OOM, stop signals, termination messages, daemon SIGKILL while a container exits.

use crate::harness::{
    container_config, pod_config, wait_for_container_state, Cri, Daemon, LearnedPids, Opts,
};
use k8s_cri::v1::{
    ContainerConfig, ContainerState, ContainerStatus, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, PodSandboxConfig, PullImageRequest,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

/// A daemon with one ready pod and busybox pulled.
struct Pod {
    d: Daemon,
    cri: Cri,
    config: PodSandboxConfig,
    id: String,
    learned: LearnedPids,
}

impl Pod {
    async fn start(name: &str) -> Pod {
        let d = Daemon::start(Opts::default()).await;
        Pod::on(d, name).await
    }

    async fn on(d: Daemon, name: &str) -> Pod {
        let mut cri = d.client().await;
        cri.img
            .pull_image(PullImageRequest {
                image: Some(ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("PullImage: {e}"));
        let config = pod_config(d.env(), name);
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

    async fn create(&mut self, config: ContainerConfig) -> String {
        self.cri
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(config),
                sandbox_config: Some(self.config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}"))
            .into_inner()
            .container_id
    }

    async fn start_ctr(&mut self, id: &str) {
        self.cri
            .rt
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
    }

    /// Create and start a busybox container running `command`; wait until it runs.
    async fn run(&mut self, name: &str, command: &[&str]) -> String {
        let id = self.create(container_config(name, BUSYBOX, command)).await;
        self.start_ctr(&id).await;
        id
    }

    async fn wait(&mut self, id: &str, state: ContainerState, secs: u64) -> ContainerStatus {
        wait_for_container_state(&mut self.cri, id, state, Duration::from_secs(secs)).await
    }

    async fn status(&mut self, id: &str) -> ContainerStatus {
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

    fn log_path(&self, name: &str) -> std::path::PathBuf {
        std::path::Path::new(&self.config.log_directory).join(format!("{name}/0.log"))
    }

    async fn stop_ctr(&mut self, id: &str, timeout: i64) {
        self.cri
            .rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    async fn remove_ctr(&mut self, id: &str) {
        self.cri
            .rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    /// Remove every container, stop and remove the pod, and check nothing leaked.
    async fn finish(mut self) {
        let ctrs = self
            .cri
            .rt
            .list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
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

/// The text of the CRI log records in `log`, `P` pieces joined to their line.
fn log_lines(log: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut partial = String::new();
    for rec in log.lines() {
        let mut parts = rec.splitn(4, ' ');
        let (_ts, _stream, tag, text) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        partial.push_str(text);
        if tag == "F" {
            lines.push(std::mem::take(&mut partial));
        }
    }
    lines
}

#[tokio::test]
async fn exec_sync_returns_output_and_a_timeout_kills_the_process() {
    let mut p = Pod::start("execsync").await;
    let id = p.run("sleeper", &["sleep", "1000"]).await;
    p.wait(&id, ContainerState::ContainerRunning, 10).await;

    let out = p
        .cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 3".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(out.exit_code, 3, "{out:?}");
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    // Past its timeout: killed, and the answer is an exit code with the output so far.
    let t0 = Instant::now();
    let out = p
        .cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo before; sleep 60".into()],
            timeout: 1,
        })
        .await
        .expect("ExecSync past its timeout is not an error")
        .into_inner();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert!(took >= Duration::from_secs(1), "took {took:?}");
    assert_ne!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout, b"before\n");
    // The killed process is gone from the container (only the sleeper remains).
    let ps = p
        .cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "ps -o args | grep -c '[s]leep 60' || true".into(),
            ],
            timeout: 5,
        })
        .await
        .expect("ExecSync ps")
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&ps.stdout).trim(),
        "0",
        "the timed-out process and its children are gone: {ps:?}"
    );

    // Exec in a container that is not running is refused, not hung.
    p.stop_ctr(&id, 0).await;
    let e = p
        .cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 1,
        })
        .await
        .expect_err("ExecSync in an exited container");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    p.finish().await;
}
