//! One pod end to end, bad input, a daemon restart, and the CLI's config handling.

use crate::harness::{
    container_config, ferrio_bin, pod_config, pull, rand_hex, wait_for_container_state, Cri,
    Daemon, LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec, ImageStatusRequest,
    ListContainersRequest, ListImagesRequest, ListPodSandboxRequest, PodSandboxConfig,
    PodSandboxState, PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest, VersionRequest,
};
use std::time::Duration;
use tonic::Code;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

async fn run_pod(cri: &mut Cri, config: &PodSandboxConfig) -> String {
    cri.rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
        .into_inner()
        .pod_sandbox_id
}

async fn create_container(
    cri: &mut Cri,
    pod_id: &str,
    pod: &PodSandboxConfig,
    name: &str,
    command: &[&str],
) -> String {
    cri.rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(container_config(name, BUSYBOX, command)),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
        .into_inner()
        .container_id
}

async fn start_container(cri: &mut Cri, id: &str) {
    cri.rt
        .start_container(StartContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
}

/// Stop and remove a container and its pod, then check that both are gone from the lists.
async fn tear_down(cri: &mut Cri, pod_id: &str, container_id: &str) {
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: container_id.into(),
            timeout: 2,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer: {e}"));
    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: container_id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
    let e = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: container_id.into(),
            verbose: false,
        })
        .await
        .expect_err("ContainerStatus after RemoveContainer");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    let st = pod_status(cri, pod_id).await;
    assert_eq!(
        st.state,
        PodSandboxState::SandboxNotready as i32,
        "a stopped pod is NOTREADY"
    );
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    let e = cri
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.into(),
            verbose: false,
        })
        .await
        .expect_err("PodSandboxStatus after RemovePodSandbox");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    let pods = cri
        .rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(
        pods.iter().all(|p| p.id != pod_id),
        "removed pod still listed"
    );
    let ctrs = cri
        .rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        ctrs.iter().all(|c| c.id != container_id),
        "removed container still listed"
    );
}

async fn pod_status(cri: &mut Cri, id: &str) -> ferrio::cri::v1::PodSandboxStatus {
    cri.rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e}"))
        .into_inner()
        .status
        .expect("PodSandboxStatus has a status")
}

fn condition(
    resp: &ferrio::cri::v1::StatusResponse,
    ty: &str,
) -> ferrio::cri::v1::RuntimeCondition {
    resp.status
        .as_ref()
        .expect("Status has a status")
        .conditions
        .iter()
        .find(|c| c.r#type == ty)
        .unwrap_or_else(|| panic!("no {ty} condition in {resp:?}"))
        .clone()
}

#[tokio::test]
async fn version_and_status() {
    let d = Daemon::start(Opts::default()).await;
    let mut cri = d.client().await;
    let v = cri
        .rt
        .version(VersionRequest {
            version: "v1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "ferrio");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty());

    let st = cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&st, "RuntimeReady").status, "{st:?}");
    assert!(
        condition(&st, "NetworkReady").status,
        "a conflist is in network_dir: {st:?}"
    );
}

#[tokio::test]
async fn network_not_ready_without_a_conflist() {
    let d = Daemon::start(Opts {
        network: false,
        ..Default::default()
    })
    .await;
    let mut cri = d.client().await;
    let st = cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(condition(&st, "RuntimeReady").status, "{st:?}");
    let net = condition(&st, "NetworkReady");
    assert!(!net.status, "network_dir is empty: {st:?}");
    assert!(
        !net.reason.is_empty(),
        "NetworkReady false needs a reason: {net:?}"
    );
}

#[tokio::test]
async fn pod_and_container_lifecycle() {
    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();

    // Images.
    let image_ref = pull(&mut cri, BUSYBOX).await;
    assert!(!image_ref.is_empty(), "PullImage returns an image ref");
    let img = cri
        .img
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .expect("ImageStatus of a pulled image has an image");
    assert!(
        img.repo_tags.iter().any(|t| t == BUSYBOX),
        "repo_tags {:?} name {BUSYBOX}",
        img.repo_tags
    );
    assert!(img.size > 0, "size {}", img.size);
    let images = cri
        .img
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(
        images.iter().any(|i| i.id == img.id),
        "ListImages {images:?} has {}",
        img.id
    );

    // The pod.
    let pod = pod_config(&env, "lifecycle");
    let parent = pod.linux.as_ref().unwrap().cgroup_parent.clone();
    let pod_id = run_pod(&mut cri, &pod).await;
    assert_eq!(pod_id.len(), 64, "a pod id is 64 hex characters: {pod_id}");
    let st = pod_status(&mut cri, &pod_id).await;
    assert_eq!(st.state, PodSandboxState::SandboxReady as i32, "{st:?}");
    assert_eq!(st.metadata.as_ref().unwrap().name, "lifecycle");
    let ip = st
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(
        env.in_subnet(&ip),
        "pod IP {ip:?} is in the test subnet {}",
        env.subnet()
    );
    assert!(
        learned.learn_cgroup(&parent) > 0,
        "the pause process runs in the pod's cgroup parent {parent}"
    );
    let reservations: Vec<_> = std::fs::read_dir(env.ipam_dir().join(env.network_name()))
        .expect("host-local's data dir exists after a pod got an IP")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        reservations.contains(&ip),
        "IPAM reserved {ip}: {reservations:?}"
    );

    // A container that writes to both streams and fails.
    let ctr_id = create_container(
        &mut cri,
        &pod_id,
        &pod,
        "echo",
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    .await;
    let created = wait_for_container_state(
        &mut cri,
        &ctr_id,
        ContainerState::ContainerCreated,
        Duration::from_secs(5),
    )
    .await;
    assert!(created.created_at > 0);
    start_container(&mut cri, &ctr_id).await;
    let st = wait_for_container_state(
        &mut cri,
        &ctr_id,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(st.exit_code, 3, "{st:?}");
    assert_eq!(st.reason, "Error", "{st:?}");
    assert!(st.started_at > 0, "{st:?}");
    assert!(st.finished_at >= st.started_at, "{st:?}");
    let log_path = std::path::Path::new(&pod.log_directory).join("echo/0.log");
    assert_eq!(
        std::path::Path::new(&st.log_path),
        log_path,
        "log_path is log_directory joined with the container's log_path"
    );

    // CRI log lines: `<RFC3339Nano> <stream> F <text>`.
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("read {}: {e}", log_path.display()));
    let mut seen = Vec::new();
    for line in log.lines() {
        let mut parts = line.splitn(4, ' ');
        let (ts, stream, tag, text) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        chrono::DateTime::parse_from_rfc3339(ts)
            .unwrap_or_else(|e| panic!("timestamp {ts:?} of {line:?} is not RFC 3339: {e}"));
        assert!(
            ts.contains('.'),
            "timestamp {ts:?} has sub-second precision"
        );
        seen.push((stream.to_string(), tag.to_string(), text.to_string()));
    }
    for want in [("stdout", "out"), ("stderr", "err")] {
        assert!(
            seen.iter()
                .any(|(s, t, x)| s == want.0 && t == "F" && x == want.1),
            "log has `{} F {}`: {log:?}",
            want.0,
            want.1
        );
    }

    let listed = cri
        .rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let c = listed
        .iter()
        .find(|c| c.id == ctr_id)
        .expect("ListContainers has the container");
    assert_eq!(c.pod_sandbox_id, pod_id);
    assert_eq!(c.state, ContainerState::ContainerExited as i32);
    let pods = cri
        .rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods
        .iter()
        .any(|p| p.id == pod_id && p.state == PodSandboxState::SandboxReady as i32));

    tear_down(&mut cri, &pod_id, &ctr_id).await;
    d.assert_no_leaks(&learned);
}

#[tokio::test]
async fn bad_input_is_refused_and_leaves_nothing() {
    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let unknown = rand_hex(64);

    for config in [
        None,
        Some(PodSandboxConfig {
            metadata: None,
            ..pod_config(&env, "nometa")
        }),
    ] {
        let e = cri
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config,
                runtime_handler: String::new(),
            })
            .await
            .expect_err("RunPodSandbox without metadata");
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(!e.message().is_empty());
    }

    let e = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config(&env, "badhandler")),
            runtime_handler: "no-such-handler".into(),
        })
        .await
        .expect_err("RunPodSandbox with an unknown runtime handler");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("no-such-handler"), "{e}");

    let e = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: unknown.clone(),
            verbose: false,
        })
        .await
        .expect_err("ContainerStatus of an unknown id");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains(&unknown[..12]), "names the id: {e}");

    let e = cri
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: unknown.clone(),
            verbose: false,
        })
        .await
        .expect_err("PodSandboxStatus of an unknown id");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    let e = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: unknown.clone(),
            config: Some(container_config("x", BUSYBOX, &["true"])),
            sandbox_config: Some(pod_config(&env, "x")),
        })
        .await
        .expect_err("CreateContainer in an unknown pod");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    let e = cri
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: "in valid ref".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("PullImage of an invalid reference");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("in valid ref"),
        "names the reference: {e}"
    );

    let missing = format!("docker.io/library/ferrio-missing-{}:1", rand_hex(6));
    let e = cri
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: missing.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("PullImage of an image the registry does not have");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // An image that is not present: success with no image (kubelet pulls after that).
    let st = cri
        .img
        .image_status(ImageStatusRequest {
            image: Some(ImageSpec {
                image: missing,
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus of an absent image succeeds")
        .into_inner();
    assert!(st.image.is_none(), "{st:?}");

    // Stop and remove of unknown ids succeed (kubelet and critest rely on it).
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: unknown.clone(),
        })
        .await
        .expect("StopPodSandbox of an unknown id");
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: unknown.clone(),
        })
        .await
        .expect("RemovePodSandbox of an unknown id");
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: unknown.clone(),
            timeout: 1,
        })
        .await
        .expect("StopContainer of an unknown id");
    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: unknown.clone(),
        })
        .await
        .expect("RemoveContainer of an unknown id");

    let pods = cri
        .rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "refused requests left pods: {pods:?}");
    d.assert_no_leaks(&LearnedPids::default());
}

#[tokio::test]
async fn restart_keeps_pods_and_running_containers() {
    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();

    pull(&mut cri, BUSYBOX).await;
    let pod = pod_config(&env, "restart");
    let parent = pod.linux.as_ref().unwrap().cgroup_parent.clone();
    let pod_id = run_pod(&mut cri, &pod).await;
    let ctr_id = create_container(&mut cri, &pod_id, &pod, "sleeper", &["sleep", "1000"]).await;
    start_container(&mut cri, &ctr_id).await;
    wait_for_container_state(
        &mut cri,
        &ctr_id,
        ContainerState::ContainerRunning,
        Duration::from_secs(10),
    )
    .await;
    learned.learn_cgroup(&parent);
    let before = learned.pids();
    assert!(
        before.len() >= 2,
        "pause and sleep run in the pod's cgroups: {before:?}"
    );

    // A graceful stop leaves containers running.
    drop(cri);
    let status = d.stop();
    assert!(status.success(), "ferrio exits 0 on SIGTERM: {status}");
    assert!(
        learned.still_alive().len() == before.len(),
        "containers keep running while the daemon is down: {:?} of {before:?}",
        learned.still_alive()
    );

    let d = Daemon::start_on(&env).await;
    let mut cri = d.client().await;
    let pods = cri
        .rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    let p = pods
        .iter()
        .find(|p| p.id == pod_id)
        .unwrap_or_else(|| panic!("the pod survives a restart: {pods:?}"));
    assert_eq!(p.state, PodSandboxState::SandboxReady as i32, "{p:?}");
    let ctrs = cri
        .rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    let c = ctrs
        .iter()
        .find(|c| c.id == ctr_id)
        .unwrap_or_else(|| panic!("the container survives a restart: {ctrs:?}"));
    assert_eq!(c.state, ContainerState::ContainerRunning as i32, "{c:?}");
    let st = pod_status(&mut cri, &pod_id).await;
    assert!(
        env.in_subnet(
            &st.network
                .as_ref()
                .map(|n| n.ip.clone())
                .unwrap_or_default()
        ),
        "the pod keeps its IP: {st:?}"
    );

    // sleep is pid 1 of its container and ignores SIGTERM: StopContainer must SIGKILL it after
    // the timeout.
    let t0 = std::time::Instant::now();
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: ctr_id.clone(),
            timeout: 2,
        })
        .await
        .expect("StopContainer after a restart");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "StopContainer took {:?}",
        t0.elapsed()
    );
    let st = wait_for_container_state(
        &mut cri,
        &ctr_id,
        ContainerState::ContainerExited,
        Duration::from_secs(5),
    )
    .await;
    assert_ne!(st.exit_code, 0, "killed by a signal: {st:?}");

    tear_down(&mut cri, &pod_id, &ctr_id).await;
    d.assert_no_leaks(&learned);
}

#[test]
fn config_command_prints_the_effective_config() {
    let out = std::process::Command::new(ferrio_bin())
        .arg("config")
        .output()
        .expect("run ferrio config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ferrio config: {out:?}");
    assert!(text.contains("sandbox_image"), "{text}");
    ferrio::config::Config::from_toml(&text)
        .unwrap_or_else(|e| panic!("ferrio config prints valid config: {e}\n{text}"));

    // With --config, the printed values are the file's.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ferrio.toml");
    std::fs::write(&f, "[image]\nsandbox_image = \"example.com/pause:9\"\n").unwrap();
    let out = std::process::Command::new(ferrio_bin())
        .arg("--config")
        .arg(&f)
        .arg("config")
        .output()
        .expect("run ferrio --config FILE config");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ferrio --config FILE config: {out:?}");
    let c = ferrio::config::Config::from_toml(&text).unwrap();
    assert_eq!(c.image.sandbox_image, "example.com/pause:9");
}

#[test]
fn unknown_config_key_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ferrio.toml");
    std::fs::write(
        &f,
        format!(
            "root = \"{}\"\n[api]\nlisten = \"{}\"\nno_such_key = 1\n",
            dir.path().join("root").display(),
            dir.path().join("s.sock").display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(ferrio_bin())
        .arg("--config")
        .arg(&f)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must refuse at once; a daemon that starts anyway is killed and the test fails.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrio started with an unknown config key");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr:?}");
    assert!(
        lines[0].contains("no_such_key"),
        "names the key: {stderr:?}"
    );
    assert!(
        lines[0].contains(&f.display().to_string()),
        "names the file: {stderr:?}"
    );
    assert!(!dir.path().join("s.sock").exists(), "no socket was opened");
}

#[test]
fn shipped_config_and_conflist_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/ferrio.toml")).unwrap();
    let c = ferrio::config::Config::from_toml(&text).unwrap();
    assert_eq!(
        c,
        ferrio::config::Config::default(),
        "deploy/ferrio.toml spells out the defaults"
    );
    let conf: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("cni/10-ferrio-bridge.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conf["cniVersion"], "1.0.0");
    assert_eq!(conf["plugins"][0]["type"], "bridge");
    assert_eq!(conf["plugins"][0]["bridge"], "ferrio0");
    assert_eq!(conf["plugins"][1]["type"], "portmap");
}
