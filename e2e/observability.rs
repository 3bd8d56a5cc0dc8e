//! Container events (GetContainerEvents) and the Prometheus endpoint, through a real daemon.

use crate::harness::{
    container_config, pod_config, wait_for_container_state, Cri, Daemon, LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerEventType, ContainerState, CreateContainerRequest, GetEventsRequest, ImageSpec,
    PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn scrape(port: u16) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    out
}

#[tokio::test]
async fn container_events_and_metrics() {
    let port = free_port();
    let daemon = Daemon::start(Opts {
        configure: Some(Box::new(move |c| {
            c.metrics.enable = true;
            c.metrics.address = format!("127.0.0.1:{port}");
        })),
        ..Default::default()
    })
    .await;
    let mut cri: Cri = daemon.client().await;
    let mut events = cri
        .rt
        .get_container_events(GetEventsRequest {})
        .await
        .expect("GetContainerEvents")
        .into_inner();
    // A second subscriber that never reads must not hold anything up.
    let _idle = cri
        .rt
        .get_container_events(GetEventsRequest {})
        .await
        .unwrap();

    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("pull");
    let pod = pod_config(daemon.env(), "events");
    let pod_id = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let cid = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("ev", BUSYBOX, &["true"])),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    cri.rt
        .start_container(StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("StartContainer");
    wait_for_container_state(
        &mut cri,
        &cid,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await;

    // Metrics while the pod exists.
    let text = scrape(port).await;
    assert!(
        text.contains("ferrio_operations_total{operation=\"RunPodSandbox\"} 1"),
        "{text}"
    );
    assert!(text.contains("ferrio_image_pulls_total{outcome=\"success\"} 1"));
    assert!(text.contains("ferrio_sandboxes{state=\"ready\"} 1"));
    assert!(text.contains("ferrio_containers{state=\"exited\"} 1"));

    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("RemoveContainer");

    let mut seen = Vec::new();
    while seen.len() < 4 {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event within 10s")
            .expect("event stream")
            .expect("stream still open");
        assert_eq!(ev.container_id, cid);
        assert!(ev.created_at > 0);
        assert_eq!(
            ev.pod_sandbox_status.as_ref().map(|p| p.id.as_str()),
            Some(pod_id.as_str()),
            "events carry the pod's status"
        );
        seen.push(ContainerEventType::try_from(ev.container_event_type).unwrap());
    }
    assert_eq!(
        seen,
        vec![
            ContainerEventType::ContainerCreatedEvent,
            ContainerEventType::ContainerStartedEvent,
            ContainerEventType::ContainerStoppedEvent,
            ContainerEventType::ContainerDeletedEvent,
        ]
    );

    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .expect("RemovePodSandbox");
    let text = scrape(port).await;
    assert!(
        text.contains("ferrio_sandboxes{state=\"ready\"} 0"),
        "{text}"
    );
    daemon.assert_no_leaks(&LearnedPids::default());
}

#[tokio::test]
async fn nri_plugins_and_event_latency_in_the_metrics() {
    let port = free_port();
    let daemon = Daemon::start(Opts {
        configure: Some(Box::new(move |c| {
            c.metrics.enable = true;
            c.metrics.address = format!("127.0.0.1:{port}");
        })),
        ..Default::default()
    })
    .await;
    let mut cri: Cri = daemon.client().await;
    assert!(scrape(port).await.contains("\nferrio_nri_plugins 0\n"));
    let socket = daemon.env().config().nri.socket_path.clone();
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", socket.display()));
    let plugin = tokio::spawn(crate::nri_plugin::serve(stream, "metered", "42"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !scrape(port).await.contains("\nferrio_nri_plugins 1\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin never counts:\n{}",
            daemon.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    crate::harness::pull(&mut cri, BUSYBOX).await;
    let config = pod_config(daemon.env(), "nri-metrics");
    let pod_id = crate::harness::run_pod(&mut cri, &config, "")
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
    let id = crate::harness::start_container(
        &mut cri,
        &pod_id,
        &config,
        container_config("metered", BUSYBOX, &["sleep", "300"]),
    )
    .await;
    let text = scrape(port).await;
    for event in [
        "RunPodSandbox",
        "CreateContainer",
        "PostCreateContainer",
        "StartContainer",
        "PostStartContainer",
    ] {
        assert!(
            text.contains(&format!(
                "ferrio_nri_event_duration_seconds_count{{event=\"{event}\"}} 1\n"
            )),
            "{event} is timed once:\n{text}"
        );
    }
    assert!(
        text.contains("# TYPE ferrio_nri_event_duration_seconds histogram"),
        "{text}"
    );

    // The plugin goes away: the count drops and the log names it.
    plugin.abort();
    let _ = plugin.await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !scrape(port).await.contains("\nferrio_nri_plugins 0\n") {
        assert!(
            std::time::Instant::now() < deadline,
            "the plugin still counts after it left:\n{}",
            daemon.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(daemon.env().daemon_log()).unwrap();
    let disconnected = log
        .lines()
        .find(|l| l.contains("NRI: plugin disconnected"))
        .unwrap_or_else(|| panic!("no disconnect line:\n{}", daemon.log_tail(30)));
    for field in ["index", "name"] {
        assert!(
            disconnected.contains(field),
            "the disconnect line has the plugin's {field}: {disconnected}"
        );
    }
    assert!(disconnected.contains("42") && disconnected.contains("metered"));

    cri.rt
        .stop_container(ferrio::cri::v1::StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer: {e}"));
    cri.rt
        .remove_container(RemoveContainerRequest { container_id: id })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
    crate::harness::stop_and_remove_pod(&mut cri, &pod_id).await;
    daemon.assert_no_leaks(&LearnedPids::default());
}
