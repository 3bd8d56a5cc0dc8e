//! Security and device features of a container's spec against a real daemon: a TARGET pid
//! namespace (`kubectl debug --target`), OCI hooks from a hooks directory, CDI devices.

use crate::harness::{
    container_config, pod_config, pull, start_container, wait_for_container_state, Cri, Daemon,
    LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerConfig, ContainerState, CreateContainerRequest, ExecSyncRequest, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, ListContainersRequest,
    NamespaceMode, NamespaceOption, PodSandboxConfig, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopContainerRequest, StopPodSandboxRequest,
};
use std::time::Duration;
use tonic::Code;

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
    /// A pod named `name` on daemon `d`; `edit` adjusts its config first.
    async fn on(d: Daemon, name: &str, edit: impl FnOnce(&mut PodSandboxConfig)) -> Pod {
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

    /// CreateContainer; the error is returned (several tests expect one).
    async fn create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
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

    /// Create and start `config`, and wait until it runs.
    async fn run(&mut self, config: ContainerConfig) -> String {
        start_container(
            &mut self.cri,
            &self.id.clone(),
            &self.config.clone(),
            config,
        )
        .await
    }

    /// ExecSync `sh -c script` in `id`: (exit code, stdout, stderr).
    async fn sh(&mut self, id: &str, script: &str) -> (i32, String, String) {
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

    async fn stop_ctr(&mut self, id: &str) {
        self.cri
            .rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 2,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
    }

    /// Remove every container, stop and remove the pod, and check nothing leaked.
    async fn finish(mut self) {
        let ctrs = self
            .cri
            .rt
            .list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers;
        for c in ctrs {
            self.cri
                .rt
                .remove_container(RemoveContainerRequest {
                    container_id: c.id.clone(),
                })
                .await
                .unwrap_or_else(|e| panic!("RemoveContainer {}: {e}", c.id));
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

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// A container whose pid namespace is `target`'s.
fn debug_container(name: &str, target: &str) -> ContainerConfig {
    let mut c = container_config(name, BUSYBOX, &["sleep", "1000"]);
    security(&mut c).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: target.into(),
        ..Default::default()
    });
    c
}

#[tokio::test]
async fn a_target_pid_namespace_sees_the_target_containers_processes() {
    let d = Daemon::start(Opts::default()).await;
    // Each container of this pod has a pid namespace of its own, so only TARGET shares one.
    let mut p = Pod::on(d, "target-pid", |c| {
        c.linux
            .get_or_insert_with(Default::default)
            .security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    })
    .await;
    let target = p
        .run(container_config("app", BUSYBOX, &["sleep", "4242"]))
        .await;
    let ps = "ps -o args";

    // A container of the pod with its own pid namespace does not see the target's process.
    let other = p
        .run(container_config("other", BUSYBOX, &["sleep", "1000"]))
        .await;
    let (code, out, err) = p.sh(&other, ps).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("sleep 4242"), "{out}");

    // The debug container sees it, and itself.
    let debug = p.run(debug_container("debug", &target)).await;
    let (code, out, err) = p.sh(&debug, ps).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sleep 4242"), "{out}");
    assert!(out.contains("sleep 1000"), "{out}");
    // The target's init is pid 1 of the namespace they share.
    let (_, out, _) = p.sh(&debug, "cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert_eq!(out.trim(), "sleep 4242");

    // Stopping the debug container leaves the target running.
    p.stop_ctr(&debug).await;
    wait_for_container_state(
        &mut p.cri,
        &debug,
        ContainerState::ContainerExited,
        Duration::from_secs(10),
    )
    .await;
    let (code, out, _) = p.sh(&target, ps).await;
    assert_eq!(code, 0);
    assert!(out.contains("sleep 4242"), "{out}");
    assert!(!out.contains("sleep 1000"), "{out}");

    // Refusals: no target, an unknown one, a target that does not run.
    let e = p
        .create(debug_container("no-target", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("target_id"), "{e}");
    let e = p
        .create(debug_container("unknown-target", "0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("0123456789abcdef"), "{e}");
    let e = p
        .create(debug_container("exited-target", &debug))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&debug), "{e}");

    p.finish().await;
}
