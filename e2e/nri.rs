//! NRI against a real daemon: a small plugin written here connects to the daemon's NRI socket as an external
//! plugin would (with ferrio's own protocol code), sees every event of one pod and container in order, adjusts
//! the container (an env var and an annotation the container really gets), and refuses one create.

use crate::harness::{
    container_config, pod_config, wait_for_container_state, Cri, Daemon, LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerState, CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxContainerResources,
    ListContainersRequest, PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    UpdateContainerResourcesRequest,
};
use ferrio::nri::api;
use ferrio::nri::conn::{Connection, CODE_UNKNOWN, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use ferrio::nri::{event_bit, RUNTIME_SERVICE};
use prost::Message;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
const REFUSAL: &str = "the e2e plugin refuses this container";

/// What the test plugin saw and how it behaves.
#[derive(Default)]
struct PluginState {
    /// (method, pod id, container name) of every event, in arrival order.
    events: Mutex<Vec<(String, String, String)>>,
    /// Refuse the next CreateContainer.
    refuse_create: AtomicBool,
    synchronized: Mutex<Option<(usize, usize)>>,
}

impl PluginState {
    fn methods(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _, _)| m.clone())
            .collect()
    }
}

/// Connect to `socket`, register as `10-e2e`, and serve events until the daemon goes away.
async fn connect_plugin(socket: &std::path::Path, state: Arc<PluginState>) -> Arc<Connection> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .unwrap_or_else(|e| panic!("connect to the NRI socket {}: {e}", socket.display()));
    let (conn, mut requests) = Connection::new(stream, RUNTIME_SERVICE_CONN, PLUGIN_SERVICE_CONN);
    let server = conn.clone();
    tokio::spawn(async move {
        while let Some(r) = requests.recv().await {
            let answer = handle(&state, &r.method, &r.payload);
            let _ = server.respond(r.stream_id, answer).await;
        }
    });
    let register = api::RegisterPluginRequest {
        plugin_name: "e2e".into(),
        plugin_idx: "10".into(),
        nri_version: "v0.12.1".into(),
    };
    let _: api::Empty = conn
        .call(
            RUNTIME_SERVICE,
            "RegisterPlugin",
            &register,
            Duration::from_secs(5),
        )
        .await
        .expect("RegisterPlugin");
    conn
}

fn handle(state: &PluginState, method: &str, payload: &[u8]) -> Result<Vec<u8>, (i32, String)> {
    fn names(pod: &Option<api::PodSandbox>, ctr: &Option<api::Container>) -> (String, String) {
        (
            pod.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
            ctr.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
        )
    }
    let decode_err = |e: prost::DecodeError| (CODE_UNKNOWN, e.to_string());
    let record = |pod_ctr: (String, String)| {
        state
            .events
            .lock()
            .unwrap()
            .push((method.to_string(), pod_ctr.0, pod_ctr.1));
    };
    match method {
        "Configure" => {
            let events = [
                api::Event::RunPodSandbox,
                api::Event::StopPodSandbox,
                api::Event::RemovePodSandbox,
                api::Event::CreateContainer,
                api::Event::PostCreateContainer,
                api::Event::StartContainer,
                api::Event::PostStartContainer,
                api::Event::UpdateContainer,
                api::Event::PostUpdateContainer,
                api::Event::StopContainer,
                api::Event::RemoveContainer,
            ]
            .into_iter()
            .map(event_bit)
            .fold(0, |a, b| a | b);
            Ok(api::ConfigureResponse { events }.encode_to_vec())
        }
        "Synchronize" => {
            let r = api::SynchronizeRequest::decode(payload).map_err(decode_err)?;
            *state.synchronized.lock().unwrap() = Some((r.pods.len(), r.containers.len()));
            Ok(api::SynchronizeResponse::default().encode_to_vec())
        }
        "RunPodSandbox" | "StopPodSandbox" | "RemovePodSandbox" => {
            let r = api::RunPodSandboxRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &None));
            Ok(Vec::new())
        }
        "CreateContainer" => {
            let r = api::CreateContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            if state.refuse_create.swap(false, Ordering::SeqCst) {
                return Err((CODE_UNKNOWN, REFUSAL.into()));
            }
            let adjust = api::ContainerAdjustment {
                env: vec![api::KeyValue {
                    key: "NRI_E2E".into(),
                    value: "adjusted".into(),
                }],
                annotations: [("e2e.nri/adjusted".to_string(), "yes".to_string())].into(),
                ..Default::default()
            };
            Ok(api::CreateContainerResponse {
                adjust: Some(adjust),
                ..Default::default()
            }
            .encode_to_vec())
        }
        "UpdateContainer" => {
            let r = api::UpdateContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            Ok(api::UpdateContainerResponse::default().encode_to_vec())
        }
        "StopContainer" => {
            let r = api::StopContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            Ok(api::StopContainerResponse::default().encode_to_vec())
        }
        // Every other container event has the (pod, container) layout of StartContainerRequest.
        _ => {
            let r = api::StartContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            Ok(Vec::new())
        }
    }
}

async fn wait_synchronized(state: &PluginState) -> (usize, usize) {
    for _ in 0..100 {
        if let Some(s) = *state.synchronized.lock().unwrap() {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the plugin was never synchronized");
}

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
    let state = Arc::new(PluginState::default());
    let socket = d.env().config().nri.socket_path.clone();
    let _plugin = connect_plugin(&socket, state.clone()).await;
    assert_eq!(
        wait_synchronized(&state).await,
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
        env.lines().any(|l| l == "NRI_E2E=adjusted"),
        "the plugin's env var reaches the process:\n{env}"
    );
    let bundle = d
        .env()
        .runroot()
        .join("containers")
        .join(&id)
        .join("bundle/config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert_eq!(
        spec["annotations"]["e2e.nri/adjusted"], "yes",
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
    let plugin = connect_plugin(&d.env().config().nri.socket_path, state.clone()).await;
    assert_eq!(
        wait_synchronized(&state).await,
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
