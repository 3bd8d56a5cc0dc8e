//! What real CRI clients other than kubelet's Go client expect of the gRPC edge: a grpc-core client
//! (Python grpcio) with its own `:authority`, a deadline that expires, and the default runtime handler
//! listed under "" in Status.

use crate::harness::{Daemon, Opts};
use ferrio::cri::v1::image_service_client::ImageServiceClient;
use ferrio::cri::v1::{
    ImageSpec, PullImageRequest, StatusRequest, StatusResponse, StreamPodSandboxesResponse,
    VersionRequest, VersionResponse,
};
use prost::Message;
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::Code;

/// One call's outcome as `hack/grpcio-client.py` prints it.
#[derive(serde::Deserialize, Debug)]
struct GrpcioCall {
    method: String,
    code: String,
    details: String,
    responses: Vec<String>,
}

/// Runs `hack/grpcio-client.py` on `socket` with `(method, request)` pairs. Panics naming the missing
/// piece when python3 or its grpcio module is absent: this test must not pass without running.
fn grpcio(socket: &Path, calls: &[(&str, Vec<u8>)]) -> Vec<GrpcioCall> {
    // grpcio sends the socket path as :authority from 1.57 on; an older one would prove nothing here.
    let version = std::process::Command::new("python3")
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("python3 (needed with its grpcio module): {e}"));
    let version = String::from_utf8_lossy(&version.stdout);
    let minor: Option<u32> = version
        .trim()
        .strip_prefix("1.")
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse().ok());
    assert!(
        minor.is_some_and(|m| m >= 57),
        "this test needs Python grpcio 1.57 or later (hack/install-deps.sh installs it), found {version:?}"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/grpcio-client.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(&script).arg(socket);
    for (method, request) in calls {
        cmd.arg(method).arg(hex::encode(request));
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("python3 (needed with its grpcio module): {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'grpc'"),
        "this test needs Python's grpcio: pip install grpcio"
    );
    assert!(out.status.success(), "grpcio-client.py failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn decoded<M: Message + Default>(call: &GrpcioCall, i: usize) -> M {
    let bytes = hex::decode(&call.responses[i]).expect("hex from grpcio-client.py");
    M::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("{}: {e}", call.method))
}

#[tokio::test]
async fn grpcio_client_with_its_own_authority_gets_answers() {
    let d = Daemon::start(Opts::default()).await;
    let version = VersionRequest {
        version: "v1".into(),
    };
    let status = StatusRequest { verbose: true };
    let empty = Vec::new();
    let calls = grpcio(
        &d.env().socket(),
        &[
            ("Version", version.encode_to_vec()),
            ("Status", status.encode_to_vec()),
            ("ListPodSandbox", empty.clone()),
            ("ListContainers", empty.clone()),
            ("ListContainerStats", empty.clone()),
            ("ListPodSandboxStats", empty.clone()),
            ("ListMetricDescriptors", empty.clone()),
            ("ListPodSandboxMetrics", empty.clone()),
            ("RuntimeConfig", empty.clone()),
            ("ListImages", empty.clone()),
            ("ImageFsInfo", empty.clone()),
            ("StreamPodSandboxes", empty.clone()),
            ("StreamContainers", empty.clone()),
            ("StreamImages", empty.clone()),
            // A pod that does not exist: an answer all the same (NotFound), not a reset stream.
            ("PodSandboxStatus", {
                let mut b = vec![0x0a, 7];
                b.extend_from_slice(b"missing");
                b
            }),
        ],
    );
    assert_eq!(calls.len(), 15, "{calls:?}");
    for c in &calls {
        let expected = if c.method == "PodSandboxStatus" {
            "NOT_FOUND"
        } else {
            "OK"
        };
        assert_eq!(
            c.code, expected,
            "{} answered {}: {}",
            c.method, c.code, c.details
        );
    }
    let v: VersionResponse = decoded(&calls[0], 0);
    assert_eq!(v.runtime_name, "ferrio");
    assert_eq!(v.runtime_api_version, "v1");
    let st: StatusResponse = decoded(&calls[1], 0);
    assert!(!st.runtime_handlers.is_empty(), "{st:?}");
    // No pods: the stream ends without a batch.
    let pods: Vec<StreamPodSandboxesResponse> = (0..calls[11].responses.len())
        .map(|i| decoded(&calls[11], i))
        .collect();
    assert!(pods.iter().all(|b| b.pod_sandboxes.is_empty()), "{pods:?}");
}

/// An ImageService client on `socket` that sends the deadline it is given and never enforces it itself
/// (tonic's channel would give up first and call that CANCELLED): what comes back is the server's answer.
async fn image_client_without_own_deadline(
    socket: &Path,
) -> ImageServiceClient<
    impl tonic::client::GrpcService<
        tonic::body::Body,
        ResponseBody = hyper::body::Incoming,
        Error = hyper::Error,
        Future = impl Send,
    >,
> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(socket).await.unwrap());
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let svc = tower::service_fn(move |req| {
        let mut sender = sender.clone();
        async move { sender.send_request(req).await }
    });
    ImageServiceClient::with_origin(svc, "http://localhost".parse().unwrap())
}

#[tokio::test]
async fn an_expired_deadline_answers_deadline_exceeded() {
    // A registry that accepts connections and never answers: the pull can only end by its deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let registry = silent.local_addr().unwrap();
    let d = Daemon::start(Opts::default()).await;
    let mut img = image_client_without_own_deadline(&d.env().socket()).await;
    let mut req = tonic::Request::new(PullImageRequest {
        image: Some(ImageSpec {
            image: format!("{registry}/never/answers:1"),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Sent as the grpc-timeout header.
    req.set_timeout(Duration::from_millis(500));
    let started = Instant::now();
    let err = img
        .pull_image(req)
        .await
        .expect_err("a pull from a silent registry cannot succeed");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        started.elapsed()
    );
    // The daemon still serves.
    d.client()
        .await
        .rt
        .version(VersionRequest::default())
        .await
        .expect("Version after an expired call");
    drop(silent);
}

#[tokio::test]
async fn status_lists_the_default_handler_also_under_the_empty_name() {
    let d = Daemon::start(Opts::default()).await;
    let mut cri = d.client().await;
    let st = cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let default = d.env().config().runtime.default_runtime.clone();
    let by_name = |name: &str| {
        st.runtime_handlers
            .iter()
            .filter(|h| h.name == name)
            .collect::<Vec<_>>()
    };
    let (named, empty) = (by_name(&default), by_name(""));
    assert_eq!(named.len(), 1, "{default:?} once: {st:?}");
    assert_eq!(empty.len(), 1, "\"\" once: {st:?}");
    assert_eq!(named[0].features, empty[0].features);
    assert!(named[0].features.is_some(), "{st:?}");
}

/// Every message of a server stream.
async fn drain<T>(stream: tonic::Response<tonic::Streaming<T>>) -> Vec<T> {
    let mut stream = stream.into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.expect("stream message") {
        out.push(batch);
    }
    out
}

fn sorted<T, K: Ord>(mut v: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    v.sort_by_key(|x| key(x));
    v
}

#[tokio::test]
async fn each_stream_sends_what_its_list_call_returns() {
    use ferrio::cri::v1::{
        ContainerFilter, ContainerState, ContainerStateValue, ContainerStatsFilter,
        ListContainerStatsRequest, ListContainersRequest, ListImagesRequest,
        ListPodSandboxMetricsRequest, ListPodSandboxRequest, ListPodSandboxStatsRequest,
        PodSandboxFilter, PodSandboxState, PodSandboxStateValue, PodSandboxStatsFilter,
        StopPodSandboxRequest, StreamContainerStatsRequest, StreamContainersRequest,
        StreamImagesRequest, StreamPodSandboxMetricsRequest, StreamPodSandboxStatsRequest,
        StreamPodSandboxesRequest,
    };
    const BUSYBOX: &str = "docker.io/library/busybox:1.36";
    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    crate::harness::pull(&mut cri, BUSYBOX).await;
    // Three pods, one container each; the last pod stopped; labels to filter on.
    let mut pods = Vec::new();
    let mut containers = Vec::new();
    for (i, tier) in ["web", "web", "db"].iter().enumerate() {
        let mut pod = crate::harness::pod_config(&env, &format!("streamed-{i}"));
        pod.labels = [("tier".to_string(), tier.to_string())].into();
        let id = crate::harness::run_pod(&mut cri, &pod, "")
            .await
            .expect("RunPodSandbox");
        let mut c = crate::harness::container_config("sleeper", BUSYBOX, &["sleep", "600"]);
        c.labels = [("tier".to_string(), tier.to_string())].into();
        containers.push(crate::harness::start_container(&mut cri, &id, &pod, c).await);
        pods.push(id);
    }
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pods[2].clone(),
        })
        .await
        .expect("StopPodSandbox");

    let web = || [("tier".to_string(), "web".to_string())].into();
    let pod_filters = [
        None,
        Some(PodSandboxFilter {
            label_selector: web(),
            ..Default::default()
        }),
        Some(PodSandboxFilter {
            id: pods[1][..12].to_string(),
            ..Default::default()
        }),
        Some(PodSandboxFilter {
            state: Some(PodSandboxStateValue {
                state: PodSandboxState::SandboxNotready as i32,
            }),
            ..Default::default()
        }),
    ];
    for filter in pod_filters {
        let listed = cri
            .rt
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        let batches = drain(
            cri.rt
                .stream_pod_sandboxes(StreamPodSandboxesRequest {
                    filter: filter.clone(),
                })
                .await
                .unwrap(),
        )
        .await;
        let streamed: Vec<_> = batches.into_iter().flat_map(|b| b.pod_sandboxes).collect();
        assert!(!listed.is_empty(), "{filter:?} selects something");
        assert_eq!(
            sorted(streamed, |p| p.id.clone()),
            sorted(listed, |p| p.id.clone()),
            "{filter:?}"
        );
    }

    let container_filters = [
        None,
        Some(ContainerFilter {
            pod_sandbox_id: pods[0].clone(),
            ..Default::default()
        }),
        Some(ContainerFilter {
            label_selector: web(),
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerRunning as i32,
            }),
            ..Default::default()
        }),
        Some(ContainerFilter {
            id: containers[2][..12].to_string(),
            ..Default::default()
        }),
    ];
    for filter in container_filters {
        let listed = cri
            .rt
            .list_containers(ListContainersRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        let streamed: Vec<_> = drain(
            cri.rt
                .stream_containers(StreamContainersRequest {
                    filter: filter.clone(),
                })
                .await
                .unwrap(),
        )
        .await
        .into_iter()
        .flat_map(|b| b.containers)
        .collect();
        assert!(!listed.is_empty(), "{filter:?} selects something");
        assert_eq!(
            sorted(streamed, |c| c.id.clone()),
            sorted(listed, |c| c.id.clone()),
            "{filter:?}"
        );
    }

    // Statistics change between two reads: the same objects, not the same numbers.
    let stats_filter = Some(ContainerStatsFilter {
        label_selector: web(),
        ..Default::default()
    });
    let ids = |v: Vec<String>| sorted(v, |s| s.clone());
    let listed = cri
        .rt
        .list_container_stats(ListContainerStatsRequest {
            filter: stats_filter.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let streamed: Vec<_> = drain(
        cri.rt
            .stream_container_stats(StreamContainerStatsRequest {
                filter: stats_filter,
            })
            .await
            .unwrap(),
    )
    .await
    .into_iter()
    .flat_map(|b| b.container_stats)
    .collect();
    let attr = |s: &ferrio::cri::v1::ContainerStats| s.attributes.clone().unwrap_or_default().id;
    assert_eq!(listed.len(), 2);
    assert_eq!(
        ids(streamed.iter().map(attr).collect()),
        ids(listed.iter().map(attr).collect())
    );

    let pod_stats_filter = Some(PodSandboxStatsFilter {
        id: pods[0].clone(),
        ..Default::default()
    });
    let listed = cri
        .rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
            filter: pod_stats_filter.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    let streamed: Vec<_> = drain(
        cri.rt
            .stream_pod_sandbox_stats(StreamPodSandboxStatsRequest {
                filter: pod_stats_filter,
            })
            .await
            .unwrap(),
    )
    .await
    .into_iter()
    .flat_map(|b| b.pod_sandbox_stats)
    .collect();
    let pod_attr =
        |s: &ferrio::cri::v1::PodSandboxStats| s.attributes.clone().unwrap_or_default().id;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        streamed.iter().map(pod_attr).collect::<Vec<_>>(),
        listed.iter().map(pod_attr).collect::<Vec<_>>()
    );

    let listed = cri
        .rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let streamed: Vec<_> = drain(
        cri.rt
            .stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest {})
            .await
            .unwrap(),
    )
    .await
    .into_iter()
    .flat_map(|b| b.pod_sandbox_metrics)
    .collect();
    let metric_pods = |v: &[ferrio::cri::v1::PodSandboxMetrics]| {
        ids(v.iter().map(|m| m.pod_sandbox_id.clone()).collect())
    };
    assert_eq!(listed.len(), 2, "the ready pods");
    assert_eq!(metric_pods(&streamed), metric_pods(&listed));

    let listed = cri
        .img
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    let streamed: Vec<_> = drain(
        cri.img
            .stream_images(StreamImagesRequest { filter: None })
            .await
            .unwrap(),
    )
    .await
    .into_iter()
    .flat_map(|b| b.images)
    .collect();
    assert!(!listed.is_empty());
    assert_eq!(
        sorted(streamed, |i| i.id.clone()),
        sorted(listed, |i| i.id.clone())
    );

    for id in &pods {
        crate::harness::stop_and_remove_pod(&mut cri, id).await;
    }
    d.assert_no_leaks(&crate::harness::LearnedPids::default());
}

/// Pods (one container each) in [`each_stream_matches_its_list_call_at_scale`]: two full
/// batches and more of every kind of object, so batching shows.
const SCALE_PODS: usize = 200;
/// Calls in flight while the pods are made and taken down (the 2-core runner's useful width).
const SCALE_PARALLEL: usize = 4;

/// Each Stream* RPC against its List counterpart at 200 pods: the same objects under the same
/// filters, sent in more than one batch and none larger than a batch (100).
#[tokio::test]
async fn each_stream_matches_its_list_call_at_scale() {
    use ferrio::cri::v1::{
        ContainerFilter, ContainerState, ContainerStateValue, ContainerStatsFilter,
        ListContainerStatsRequest, ListContainersRequest, ListImagesRequest,
        ListPodSandboxMetricsRequest, ListPodSandboxRequest, ListPodSandboxStatsRequest,
        PodSandboxFilter, PodSandboxState, PodSandboxStateValue, PodSandboxStatsFilter,
        StopPodSandboxRequest, StreamContainerStatsRequest, StreamContainersRequest,
        StreamImagesRequest, StreamPodSandboxMetricsRequest, StreamPodSandboxStatsRequest,
        StreamPodSandboxesRequest,
    };
    use futures::StreamExt;
    const BUSYBOX: &str = "docker.io/library/busybox:1.36";
    const BATCH: usize = 100;
    let started = Instant::now();
    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    crate::harness::pull(&mut cri, BUSYBOX).await;

    // Even pods are "web", odd ones "db"; every tenth pod is stopped (NotReady, container
    // exited) so the state filters select a strict part.
    let tier = |i: usize| if i.is_multiple_of(2) { "web" } else { "db" };
    let made: Vec<(usize, String, String)> = futures::stream::iter(0..SCALE_PODS)
        .map(|i| {
            let (mut cri, env) = (cri.clone(), env.clone());
            async move {
                let mut pod = crate::harness::pod_config(&env, &format!("scale-{i}"));
                pod.labels = [("tier".to_string(), tier(i).to_string())].into();
                let id = crate::harness::run_pod(&mut cri, &pod, "")
                    .await
                    .unwrap_or_else(|e| panic!("RunPodSandbox scale-{i}: {e}"));
                let mut c = crate::harness::container_config("sleeper", BUSYBOX, &["sleep", "600"]);
                c.labels = [("tier".to_string(), tier(i).to_string())].into();
                let cid = crate::harness::start_container(&mut cri, &id, &pod, c).await;
                if i % 10 == 9 {
                    cri.rt
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: id.clone(),
                        })
                        .await
                        .unwrap_or_else(|e| panic!("StopPodSandbox scale-{i}: {e}"));
                }
                (i, id, cid)
            }
        })
        .buffer_unordered(SCALE_PARALLEL)
        .collect()
        .await;
    let made = sorted(made, |m| m.0);
    let pods: Vec<String> = made.iter().map(|m| m.1.clone()).collect();
    let containers: Vec<String> = made.iter().map(|m| m.2.clone()).collect();
    let set_up = started.elapsed();

    // Every batch holds at most BATCH objects, and a list of more than BATCH comes in several.
    let check_batches = |what: &str, sizes: Vec<usize>| {
        let total: usize = sizes.iter().sum();
        assert!(
            sizes.iter().all(|n| *n <= BATCH),
            "{what}: batches {sizes:?}"
        );
        if total > BATCH {
            assert!(
                sizes.len() >= total.div_ceil(BATCH),
                "{what}: batches {sizes:?}"
            );
        }
    };
    let web = || [("tier".to_string(), "web".to_string())].into();
    let not_ready = || {
        Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxNotready as i32,
        })
    };
    let expect_count = |what: &str, filter: &dyn std::fmt::Debug, got: usize, want: usize| {
        assert_eq!(got, want, "{what} {filter:?}");
    };

    let pod_filters = [
        (None, SCALE_PODS),
        (
            Some(PodSandboxFilter {
                label_selector: web(),
                ..Default::default()
            }),
            SCALE_PODS / 2,
        ),
        (
            Some(PodSandboxFilter {
                id: pods[123][..12].to_string(),
                ..Default::default()
            }),
            1,
        ),
        (
            Some(PodSandboxFilter {
                state: not_ready(),
                ..Default::default()
            }),
            SCALE_PODS / 10,
        ),
    ];
    for (filter, want) in pod_filters {
        let listed = cri
            .rt
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        let batches = drain(
            cri.rt
                .stream_pod_sandboxes(StreamPodSandboxesRequest {
                    filter: filter.clone(),
                })
                .await
                .unwrap(),
        )
        .await;
        check_batches(
            "StreamPodSandboxes",
            batches.iter().map(|b| b.pod_sandboxes.len()).collect(),
        );
        let streamed: Vec<_> = batches.into_iter().flat_map(|b| b.pod_sandboxes).collect();
        expect_count("ListPodSandbox", &filter, listed.len(), want);
        assert_eq!(
            sorted(streamed, |p| p.id.clone()),
            sorted(listed, |p| p.id.clone()),
            "{filter:?}"
        );
    }

    let container_filters = [
        (None, SCALE_PODS),
        (
            Some(ContainerFilter {
                pod_sandbox_id: pods[7].clone(),
                ..Default::default()
            }),
            1,
        ),
        (
            Some(ContainerFilter {
                label_selector: web(),
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
            // Stopped pods are the odd ones (i % 10 == 9): every web container runs.
            SCALE_PODS / 2,
        ),
        (
            Some(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerExited as i32,
                }),
                ..Default::default()
            }),
            SCALE_PODS / 10,
        ),
        (
            Some(ContainerFilter {
                id: containers[42][..12].to_string(),
                ..Default::default()
            }),
            1,
        ),
    ];
    for (filter, want) in container_filters {
        let listed = cri
            .rt
            .list_containers(ListContainersRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .containers;
        let batches = drain(
            cri.rt
                .stream_containers(StreamContainersRequest {
                    filter: filter.clone(),
                })
                .await
                .unwrap(),
        )
        .await;
        check_batches(
            "StreamContainers",
            batches.iter().map(|b| b.containers.len()).collect(),
        );
        let streamed: Vec<_> = batches.into_iter().flat_map(|b| b.containers).collect();
        expect_count("ListContainers", &filter, listed.len(), want);
        assert_eq!(
            sorted(streamed, |c| c.id.clone()),
            sorted(listed, |c| c.id.clone()),
            "{filter:?}"
        );
    }

    // Statistics change between two reads: the same objects, not the same numbers.
    let ids = |v: Vec<String>| sorted(v, |s| s.clone());
    let attr = |s: &ferrio::cri::v1::ContainerStats| s.attributes.clone().unwrap_or_default().id;
    for filter in [
        None,
        Some(ContainerStatsFilter {
            label_selector: web(),
            ..Default::default()
        }),
        Some(ContainerStatsFilter {
            pod_sandbox_id: pods[64].clone(),
            ..Default::default()
        }),
    ] {
        let listed = cri
            .rt
            .list_container_stats(ListContainerStatsRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        let batches = drain(
            cri.rt
                .stream_container_stats(StreamContainerStatsRequest {
                    filter: filter.clone(),
                })
                .await
                .unwrap(),
        )
        .await;
        check_batches(
            "StreamContainerStats",
            batches.iter().map(|b| b.container_stats.len()).collect(),
        );
        let streamed: Vec<_> = batches
            .into_iter()
            .flat_map(|b| b.container_stats)
            .collect();
        assert!(!listed.is_empty(), "{filter:?}");
        assert_eq!(
            ids(streamed.iter().map(attr).collect()),
            ids(listed.iter().map(attr).collect()),
            "{filter:?}"
        );
    }

    let pod_attr =
        |s: &ferrio::cri::v1::PodSandboxStats| s.attributes.clone().unwrap_or_default().id;
    for filter in [
        None,
        Some(PodSandboxStatsFilter {
            label_selector: web(),
            ..Default::default()
        }),
        Some(PodSandboxStatsFilter {
            id: pods[0].clone(),
            ..Default::default()
        }),
    ] {
        let listed = cri
            .rt
            .list_pod_sandbox_stats(ListPodSandboxStatsRequest {
                filter: filter.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats;
        let batches = drain(
            cri.rt
                .stream_pod_sandbox_stats(StreamPodSandboxStatsRequest {
                    filter: filter.clone(),
                })
                .await
                .unwrap(),
        )
        .await;
        check_batches(
            "StreamPodSandboxStats",
            batches.iter().map(|b| b.pod_sandbox_stats.len()).collect(),
        );
        let streamed: Vec<_> = batches
            .into_iter()
            .flat_map(|b| b.pod_sandbox_stats)
            .collect();
        assert!(!listed.is_empty(), "{filter:?}");
        assert_eq!(
            ids(streamed.iter().map(pod_attr).collect()),
            ids(listed.iter().map(pod_attr).collect()),
            "{filter:?}"
        );
    }

    let listed = cri
        .rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let batches = drain(
        cri.rt
            .stream_pod_sandbox_metrics(StreamPodSandboxMetricsRequest {})
            .await
            .unwrap(),
    )
    .await;
    check_batches(
        "StreamPodSandboxMetrics",
        batches
            .iter()
            .map(|b| b.pod_sandbox_metrics.len())
            .collect(),
    );
    let streamed: Vec<_> = batches
        .into_iter()
        .flat_map(|b| b.pod_sandbox_metrics)
        .collect();
    let metric_pods = |v: &[ferrio::cri::v1::PodSandboxMetrics]| {
        ids(v.iter().map(|m| m.pod_sandbox_id.clone()).collect())
    };
    assert_eq!(listed.len(), SCALE_PODS - SCALE_PODS / 10, "the ready pods");
    assert_eq!(metric_pods(&streamed), metric_pods(&listed));

    let listed = cri
        .img
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    let batches = drain(
        cri.img
            .stream_images(StreamImagesRequest { filter: None })
            .await
            .unwrap(),
    )
    .await;
    check_batches(
        "StreamImages",
        batches.iter().map(|b| b.images.len()).collect(),
    );
    let streamed: Vec<_> = batches.into_iter().flat_map(|b| b.images).collect();
    assert!(!listed.is_empty());
    assert_eq!(
        sorted(streamed, |i| i.id.clone()),
        sorted(listed, |i| i.id.clone())
    );
    let compared = started.elapsed() - set_up;

    futures::stream::iter(pods)
        .map(|id| {
            let mut cri = cri.clone();
            async move { crate::harness::stop_and_remove_pod(&mut cri, &id).await }
        })
        .buffer_unordered(SCALE_PARALLEL)
        .collect::<Vec<()>>()
        .await;
    eprintln!(
        "{SCALE_PODS} pods: set up in {set_up:?}, compared in {compared:?}, all in {:?}",
        started.elapsed()
    );
    d.assert_no_leaks(&crate::harness::LearnedPids::default());
}
