//! The `crun` runtime handler end to end. On a cgroup v1 hybrid host (this one) crun refuses to
//! run unless ferrio gives it the private v1 cgroup view, so this also checks that every verb
//! (create through the monitor, start, exec, kill, delete, the pod's pause) gets that view.

use crate::harness::{
    container_config, pod_config, wait_for_container_state, Daemon, LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerResources, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use std::path::Path;
use std::time::Duration;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
const CRUN: &str = "/usr/bin/crun";
const MEMORY_LIMIT: i64 = 64 * 1024 * 1024;

#[tokio::test]
async fn a_pod_on_crun_runs_execs_logs_stops_and_leaves_nothing() {
    if !Path::new(CRUN).exists() {
        println!("SKIPPED: {CRUN} is not installed (hack/install-deps.sh installs it)");
        return;
    }
    // Where the memory limit is, in the container and on the host (cgroupfs driver).
    let (memory_dir, limit_file) =
        if ferrio::oci::host::CgroupLayout::detect() == ferrio::oci::host::CgroupLayout::Unified {
            ("/sys/fs/cgroup", "memory.max")
        } else {
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")
        };
    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();

    let status = cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .expect("Status")
        .into_inner();
    assert!(
        status.runtime_handlers.iter().any(|h| h.name == "crun"),
        "Status lists the crun handler: {:?}",
        status.runtime_handlers
    );

    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("PullImage");

    let pod = pod_config(&env, "crun");
    let parent = pod.linux.as_ref().unwrap().cgroup_parent.clone();
    let pod_id = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: "crun".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox on crun: {e}\n{}", d.log_tail(30)))
        .into_inner()
        .pod_sandbox_id;
    let crun_root = env.runroot().join("oci/crun");
    assert!(
        crun_root.join(&pod_id).exists(),
        "crun (not runc) holds the pause: {}",
        crun_root.join(&pod_id).display()
    );
    assert!(learned.learn_cgroup(&parent) > 0, "the pause runs");

    // A container that logs, exits 7 on SIGTERM, and has a memory limit.
    let mut config = container_config(
        "main",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "trap 'echo bye; exit 7' TERM; echo hello from crun; while true; do sleep 0.1; done",
        ],
    );
    config.linux = Some(LinuxContainerConfig {
        resources: Some(LinuxContainerResources {
            memory_limit_in_bytes: MEMORY_LIMIT,
            ..Default::default()
        }),
        ..Default::default()
    });
    let ctr_id = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer on crun: {e}"))
        .into_inner()
        .container_id;
    cri.rt
        .start_container(StartContainerRequest {
            container_id: ctr_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer on crun: {e}"));
    // The runtime gets the container at StartContainer (the handler defers its create).
    assert!(
        crun_root.join(&ctr_id).exists(),
        "crun created the container"
    );
    wait_for_container_state(
        &mut cri,
        &ctr_id,
        ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await;
    // The container's init by pid (its cgroup also holds short-lived `sleep`s), and its
    // cgroup on the host, where crun (in its view) wrote the limit.
    let info = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: ctr_id.clone(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus verbose")
        .into_inner()
        .info;
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("verbose info")).expect("info is JSON");
    let pid = info["status"]["pid"].as_u64().expect("status.pid");
    learned.add(pid as u32, "crun container");
    let cgroups_path = info["cgroupsPath"].as_str().expect("cgroupsPath");
    let host_limit = Path::new(memory_dir)
        .join(cgroups_path.trim_start_matches('/'))
        .join(limit_file);
    assert_eq!(
        std::fs::read_to_string(&host_limit)
            .unwrap_or_else(|e| panic!("{}: {e}", host_limit.display()))
            .trim(),
        MEMORY_LIMIT.to_string()
    );

    // ExecSync through crun exec: output, exit code, and the container's own cgroup view.
    let exec = |cmd: &[&str]| ExecSyncRequest {
        container_id: ctr_id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 20,
    };
    let r = cri
        .rt
        .exec_sync(exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]))
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(r.exit_code, 3, "{r:?}");
    assert_eq!(r.stdout, b"out\n");
    assert_eq!(r.stderr, b"err\n");
    let r = cri
        .rt
        .exec_sync(exec(&["cat", &format!("{memory_dir}/{limit_file}")]))
        .await
        .expect("ExecSync cat")
        .into_inner();
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        MEMORY_LIMIT.to_string(),
        "the memory limit is in the container's cgroup"
    );

    // A daemon restart: recovery asks crun for the truth (crun state, in the view too) and
    // finds the container still running.
    let before = learned.pids();
    d.stop();
    assert_eq!(
        learned.still_alive().len(),
        before.len(),
        "the pod outlives the daemon"
    );
    let d = Daemon::start_on(&env).await;
    let mut cri = d.client().await;
    let st = wait_for_container_state(
        &mut cri,
        &ctr_id,
        ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(st.id, ctr_id);

    // Stop: SIGTERM through the container's monitor, the trap's exit code is recorded.
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: ctr_id.clone(),
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer on crun: {e}"));
    let st = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: ctr_id.clone(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status");
    assert_eq!(st.state, ContainerState::ContainerExited as i32, "{st:?}");
    assert_eq!(st.exit_code, 7, "{st:?}");
    assert_eq!(env.stop_signal_fallbacks(), Vec::<String>::new());

    let log_path = Path::new(&pod.log_directory).join("main/0.log");
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", log_path.display()));
    for want in ["stdout F hello from crun", "stdout F bye"] {
        assert!(log.contains(want), "log has {want:?}: {log:?}");
    }

    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: ctr_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
    assert!(!crun_root.join(&ctr_id).exists(), "crun delete ran");
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    assert!(!crun_root.join(&pod_id).exists(), "crun deleted the pause");
    d.assert_no_leaks(&learned);
}

/// `cgroup_v1_view = false` turns the view off for a handler: on a hybrid host crun then fails
/// with its own message, and the failed RunPodSandbox leaves nothing behind.
#[tokio::test]
async fn a_crun_handler_without_the_view_fails_on_a_hybrid_host() {
    use ferrio::oci::host::CgroupLayout;
    if !Path::new(CRUN).exists() {
        println!("SKIPPED: {CRUN} is not installed (hack/install-deps.sh installs it)");
        return;
    }
    let d = Daemon::start(Opts::with_handler(
        "crun-plain",
        ferrio::config::RuntimeHandler {
            runtime_path: CRUN.into(),
            cgroup_v1_view: Some(false),
            ..Default::default()
        },
    ))
    .await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    let pod = pod_config(&env, "crun-plain");
    let res = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: "crun-plain".into(),
        })
        .await;
    match (CgroupLayout::detect(), res) {
        (CgroupLayout::Hybrid, Err(e)) => {
            assert!(e.message().contains("hybrid"), "crun's own message: {e}")
        }
        (CgroupLayout::Hybrid, Ok(_)) => panic!("crun ran on a hybrid host without the view"),
        (layout, r) => {
            println!("{layout:?} host: crun needs no view here");
            let id = r
                .expect("RunPodSandbox on crun")
                .into_inner()
                .pod_sandbox_id;
            learned.learn_cgroup(&pod.linux.as_ref().unwrap().cgroup_parent);
            cri.rt
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await
                .expect("StopPodSandbox");
            cri.rt
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
                .expect("RemovePodSandbox");
        }
    }
    d.assert_no_leaks(&learned);
}
