//! NRI against a real daemon: the test plugin of the harness connects to the daemon's NRI socket as an
//! external plugin would, sees every event of one pod and container in order, adjusts the container (an env
//! var, a mount and an annotation the container really gets), refuses one create, and is dropped when it
//! hangs on or walks away from a request.

use crate::harness::nri_plugin::{
    PluginState, TestPlugin, ADJUSTED_ANNOTATION, ADJUSTED_ENV, REFUSAL,
};
use crate::harness::{
    container_config, pod_config, pull, run_pod, start_container, stop_and_remove_pod,
    wait_for_container_state, Cri, Daemon, LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerState, CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerResources,
    ListContainersRequest, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest,
};
use ferrio::nri::api;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

async fn create(
    cri: &mut Cri,
    pod_id: &str,
    pod: &ferrio::cri::v1::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    cri.rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(container_config("adjusted", BUSYBOX, &["sleep", "300"])),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .map(|r| r.into_inner().container_id)
}

fn overlay_mounts_under(dir: &std::path::Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.display().to_string();
    info.lines().filter(|l| l.contains(&dir)).count()
}

#[tokio::test]
async fn plugin_sees_events_in_order_adjusts_and_refuses_a_create() {
    let d = Daemon::start(Opts::default()).await;
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
    // The plugin bind-mounts a host directory into every container it adjusts.
    let shared = d.env().dir().join("nri-shared");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the plugin\n").unwrap();
    let state = Arc::new(PluginState::default());
    *state.mount.lock().unwrap() = Some(api::Mount {
        destination: "/nri-e2e".into(),
        r#type: "bind".into(),
        source: shared.display().to_string(),
        options: vec!["rbind".into(), "ro".into()],
    });
    let socket = d.env().config().nri.socket_path.clone();
    let _plugin = TestPlugin::connect(&socket, "10", "e2e", state.clone()).await;
    assert_eq!(
        state.wait_synchronized().await,
        (0, 0),
        "nothing exists yet"
    );

    let config = pod_config(d.env(), "nri");
    let pod_id = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id;

    // Refused: the create fails with the plugin's message and leaves no container and no mount behind.
    let mounts_before = overlay_mounts_under(d.env().dir());
    state.refuse_create.store(true, Ordering::SeqCst);
    let err = create(&mut cri, &pod_id, &config)
        .await
        .expect_err("the plugin refuses the first create");
    assert!(err.message().contains(REFUSAL), "{err:?}");
    assert!(
        err.message().contains("10-e2e"),
        "the error names the plugin: {err:?}"
    );
    let listed = cri
        .rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        listed.is_empty(),
        "a refused container is not listed: {listed:?}"
    );
    assert_eq!(
        overlay_mounts_under(d.env().dir()),
        mounts_before,
        "no rootfs left mounted"
    );
    let containers_dir = d.env().runroot().join("containers");
    let left = std::fs::read_dir(&containers_dir)
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(
        left,
        0,
        "no run dir left under {}",
        containers_dir.display()
    );

    // The retry succeeds, adjusted.
    let id = create(&mut cri, &pod_id, &config)
        .await
        .expect("the retry is accepted");
    cri.rt
        .start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}"));
    wait_for_container_state(
        &mut cri,
        &id,
        ContainerState::ContainerRunning,
        Duration::from_secs(30),
    )
    .await;
    let out = cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["env".into()],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync env: {e}"))
        .into_inner();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(
        env.lines().any(|l| l == ADJUSTED_ENV),
        "the plugin's env var reaches the process:\n{env}"
    );
    let out = cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["cat".into(), "/nri-e2e/hello".into()],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync cat: {e}"))
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the plugin\n",
        "the plugin's mount is in the container; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bundle = d
        .env()
        .runroot()
        .join("containers")
        .join(&id)
        .join("bundle/config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert_eq!(
        spec["annotations"][ADJUSTED_ANNOTATION.0], ADJUSTED_ANNOTATION.1,
        "the plugin's annotation is in the OCI spec"
    );

    cri.rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_shares: 512,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}"));
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer: {e}"));
    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
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

    assert_eq!(
        state.methods(),
        [
            "RunPodSandbox",
            "CreateContainer",
            "CreateContainer",
            "PostCreateContainer",
            "StartContainer",
            "PostStartContainer",
            "UpdateContainer",
            "PostUpdateContainer",
            "StopContainer",
            "RemoveContainer",
            "StopPodSandbox",
            "RemovePodSandbox",
        ],
        "events in order; log:\n{}",
        d.log_tail(40)
    );
    for (method, pod, ctr) in state.events.lock().unwrap().iter() {
        assert_eq!(pod, &pod_id, "{method} names the pod");
        if method.contains("Container") {
            assert_eq!(ctr, "adjusted", "{method} names the container");
        }
    }
    d.assert_no_leaks(&LearnedPids::default());
}

#[tokio::test]
async fn a_late_plugin_is_synchronized_with_the_running_pod() {
    let d = Daemon::start(Opts::default()).await;
    let mut cri = d.client().await;
    let config = pod_config(d.env(), "nri-sync");
    let pod_id = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id;
    let state = Arc::new(PluginState::default());
    let plugin = TestPlugin::connect(
        &d.env().config().nri.socket_path,
        "10",
        "e2e",
        state.clone(),
    )
    .await
    .conn;
    assert_eq!(
        state.wait_synchronized().await,
        (1, 0),
        "the running pod is in the synchronization"
    );
    // A plugin that goes away is dropped; the pod's teardown goes on without it.
    plugin.shutdown().await;
    drop(plugin);
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
    d.assert_no_leaks(&LearnedPids::default());
}

/// A plugin that never answers CreateContainer costs that create the request timeout and is dropped; one
/// that goes away mid-request (as a killed plugin's socket does) is dropped at once. The pod, which needs
/// neither, runs its containers, and later events reach neither plugin.
#[tokio::test]
async fn a_plugin_that_hangs_or_dies_mid_request_is_dropped() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let d = Daemon::start(Opts {
        configure: Some(Box::new(|c| {
            c.nri.plugin_request_timeout = format!("{}s", TIMEOUT.as_secs())
        })),
        ..Default::default()
    })
    .await;
    let mut cri = d.client().await;
    pull(&mut cri, BUSYBOX).await;
    let socket = d.env().config().nri.socket_path.clone();
    let hanging = Arc::new(PluginState::default());
    hanging.hang_create.store(true, Ordering::SeqCst);
    let _hanging = TestPlugin::connect(&socket, "20", "hang", hanging.clone()).await;
    let dying = Arc::new(PluginState::default());
    dying.close_on_create.store(true, Ordering::SeqCst);
    let _dying = TestPlugin::connect(&socket, "30", "die", dying.clone()).await;
    hanging.wait_synchronized().await;
    dying.wait_synchronized().await;

    let config = pod_config(d.env(), "nri-hang");
    let pod_id = run_pod(&mut cri, &config, "")
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
    let started = Instant::now();
    let first = start_container(
        &mut cri,
        &pod_id,
        &config,
        container_config("first", BUSYBOX, &["sleep", "300"]),
    )
    .await;
    assert!(
        started.elapsed() >= TIMEOUT,
        "the create waited for the hanging plugin's timeout, took {:?}",
        started.elapsed()
    );
    let seen = |s: &PluginState| s.methods();
    assert_eq!(seen(&hanging), ["RunPodSandbox", "CreateContainer"]);
    assert_eq!(seen(&dying), ["RunPodSandbox", "CreateContainer"]);

    // Both are gone: the next create does not wait, and neither plugin hears of anything again.
    let started = Instant::now();
    let second = start_container(
        &mut cri,
        &pod_id,
        &config,
        container_config("second", BUSYBOX, &["sleep", "300"]),
    )
    .await;
    assert!(
        started.elapsed() < TIMEOUT,
        "a dropped plugin delays no later request, took {:?}; log:\n{}",
        started.elapsed(),
        d.log_tail(40)
    );
    assert_ne!(first, second);
    stop_and_remove_pod(&mut cri, &pod_id).await;
    assert_eq!(seen(&hanging), ["RunPodSandbox", "CreateContainer"]);
    assert_eq!(seen(&dying), ["RunPodSandbox", "CreateContainer"]);
    let log = std::fs::read_to_string(d.env().daemon_log()).unwrap_or_default();
    for plugin in ["20-hang", "30-die"] {
        assert!(
            log.lines()
                .any(|l| l.contains("plugin disconnected: dropped") && l.contains(plugin)),
            "the log names the dropped plugin {plugin}"
        );
    }
    d.assert_no_leaks(&LearnedPids::default());
}
