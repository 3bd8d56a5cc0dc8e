//! Exec, attach and port-forward end to end: a real daemon hands out URLs over CRI, and a test
//! client speaks SPDY/3.1 and WebSocket to its streaming server, into real runc containers.

#[path = "streaming_client.rs"]
mod client;
#[path = "harness/mod.rs"]
mod harness;

use client::{spdy_connect, spdy_exec, ws_collect, ws_connect, ExecOpts};
use ferrio::cri::v1::{
    AttachRequest, ContainerState, ExecRequest, ImageSpec, PodSandboxConfig, PortForwardRequest,
    PullImageRequest, RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use futures::{SinkExt, StreamExt};
use harness::{
    container_config, pod_config, run_pod, start_container, wait_for_container_state, Cri, Daemon,
    LearnedPids, Opts,
};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
const TOKEN_TTL: Duration = Duration::from_secs(2);

/// A daemon whose streaming URLs expire after [`TOKEN_TTL`], so the expiry is testable.
async fn daemon() -> Daemon {
    Daemon::start(Opts {
        configure: Some(Box::new(|c| {
            c.api.stream_token_ttl = format!("{}s", TOKEN_TTL.as_secs());
        })),
        ..Default::default()
    })
    .await
}

/// A running pod with one running busybox container running `command`.
struct Pod {
    id: String,
    container: String,
    config: PodSandboxConfig,
}

async fn pod_with(cri: &mut Cri, d: &Daemon, name: &str, command: &[&str]) -> Pod {
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
    let id = run_pod(cri, &config, "")
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
    let container =
        start_container(cri, &id, &config, container_config(name, BUSYBOX, command)).await;
    Pod {
        id,
        container,
        config,
    }
}

async fn tear_down(cri: &mut Cri, pod: &Pod) {
    cri.rt
        .stop_container(StopContainerRequest {
            container_id: pod.container.clone(),
            timeout: 1,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer: {e}"));
    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: pod.container.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
}

fn exec_req(container: &str, cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: container.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

async fn exec_url(cri: &mut Cri, req: ExecRequest) -> String {
    let url = cri
        .rt
        .exec(req)
        .await
        .unwrap_or_else(|e| panic!("Exec: {e}"))
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(url.contains("/exec/"), "{url}");
    url
}

/// Host pids whose command line is exactly `argv`.
fn pids_running(argv: &[&str]) -> Vec<u32> {
    let want = argv.join("\0");
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).trim_end_matches('\0') == want)
                .unwrap_or(false)
        })
        .collect()
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn exec_over_spdy_and_websocket() {
    let d = daemon().await;
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    let pod = pod_with(&mut cri, &d, "exec", &["sleep", "3600"]).await;
    learned.learn_cgroup(&d.env().cgroup_parent());
    let c = pod.container.as_str();

    // echo: stdout and a Success status.
    let url = exec_url(&mut cri, exec_req(c, &["echo", "hello", "world"])).await;
    let r = spdy_exec(
        &url,
        ExecOpts {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.stdout_str(), "hello world\n");
    assert!(r.stderr.is_empty());
    assert_eq!(r.exit_code(), 0, "{:?}", r.status());

    // The URL is one-shot.
    let (status, _) = client::http_get(&url, &[]).await;
    assert_eq!(status, 404, "a used token");
    let (status, _) = client::http_get(&url.replace("/exec/", "/exec/x"), &[]).await;
    assert_eq!(status, 404, "an unknown token");
    let (status, _) = client::http_get(&url.replace("/exec/", "/nothing/"), &[]).await;
    assert_eq!(status, 404, "an unknown endpoint");

    // stderr and a non-zero exit.
    let url = exec_url(
        &mut cri,
        exec_req(c, &["sh", "-c", "echo out; echo oops >&2; exit 7"]),
    )
    .await;
    let r = spdy_exec(
        &url,
        ExecOpts {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.stdout_str(), "out\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");
    assert_eq!(r.exit_code(), 7, "{:?}", r.status());

    // stdin through cat, and EOF from the client's FIN.
    let mut req = exec_req(c, &["cat"]);
    req.stdin = true;
    let url = exec_url(&mut cri, req).await;
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r = spdy_exec(
        &url,
        ExecOpts {
            stdin: Some(&big),
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(r.stdout.len(), big.len());
    assert!(r.stdout == big, "cat returned what it was given");
    assert_eq!(r.exit_code(), 0);

    // A terminal and a resize: stty sees the size the client sent.
    let req = ExecRequest {
        container_id: c.into(),
        cmd: [
            "sh",
            "-c",
            "for i in $(seq 50); do s=$(stty size); [ \"$s\" = '37 100' ] && break; sleep 0.1; done; echo \"size=$s\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        tty: true,
        stdin: false,
        stdout: true,
        stderr: false,
    };
    let url = exec_url(&mut cri, req).await;
    let r = spdy_exec(
        &url,
        ExecOpts {
            stdout: true,
            tty: true,
            resize: Some((100, 37)),
            ..Default::default()
        },
    )
    .await;
    assert!(
        r.stdout_str().contains("size=37 100"),
        "tty output: {:?}",
        r.stdout_str()
    );
    assert_eq!(r.exit_code(), 0);

    // tty with stderr is refused as kubelet refuses it; so is an exec with no streams.
    let mut bad = exec_req(c, &["true"]);
    bad.tty = true;
    let e = cri.rt.exec(bad).await.expect_err("tty + stderr");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let mut bad = exec_req(c, &["true"]);
    bad.stdout = false;
    bad.stderr = false;
    let e = cri.rt.exec(bad).await.expect_err("no streams");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let e = cri
        .rt
        .exec(exec_req("0000000000000000dead", &["true"]))
        .await
        .expect_err("unknown container");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // No protocol in common: 403 naming what the server speaks.
    let url = exec_url(&mut cri, exec_req(c, &["true"])).await;
    let refused = spdy_connect(&url, &["v9.channel.k8s.io"])
        .await
        .err()
        .expect("an unknown protocol is refused");
    assert_eq!(refused.status, 403, "{refused:?}");
    assert!(refused.body.contains("v4.channel.k8s.io"), "{refused:?}");

    // An older protocol (v2): no status on success, the error text on failure.
    let url = exec_url(&mut cri, exec_req(c, &["sh", "-c", "exit 3"])).await;
    let mut conn = spdy_connect(&url, &["v2.channel.k8s.io"]).await.unwrap();
    assert_eq!(conn.protocol, "v2.channel.k8s.io");
    let mut err = conn.open(&[("streamtype", "error")]).await;
    let mut out = conn.open(&[("streamtype", "stdout")]).await;
    let _errs = conn.open(&[("streamtype", "stderr")]).await;
    let (text, _) = tokio::join!(err.read_to_end(), out.read_to_end());
    assert!(
        String::from_utf8_lossy(&text).contains("exit status 3"),
        "{text:?}"
    );

    // WebSocket v5: stdin closed with the close channel, output by channel, status on 3.
    let mut req = exec_req(c, &["sh", "-c", "cat; echo done >&2; exit 4"]);
    req.stdin = true;
    let url = exec_url(&mut cri, req).await;
    let (mut ws, proto) = ws_connect(&url, &["v5.channel.k8s.io", "v4.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "v5.channel.k8s.io");
    ws.send(Message::Binary(
        [&[0u8][..], b"over websocket\n"].concat().into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    let got = ws_collect(&mut ws).await;
    assert_eq!(
        got.get(&1).map(|v| v.as_slice()),
        Some(&b"over websocket\n"[..])
    );
    assert_eq!(got.get(&2).map(|v| v.as_slice()), Some(&b"done\n"[..]));
    let status: serde_json::Value =
        serde_json::from_slice(got.get(&3).expect("a status on channel 3")).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "4", "{status}");

    // WebSocket base64 (v4): text frames with an ASCII channel digit.
    let url = exec_url(&mut cri, exec_req(c, &["echo", "b64"])).await;
    let (mut ws, proto) = ws_connect(&url, &["v4.base64.channel.k8s.io"])
        .await
        .unwrap();
    assert_eq!(proto, "v4.base64.channel.k8s.io");
    let mut text = String::new();
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) if t.starts_with('1') => text.push_str(&t[1..]),
            Message::Close(_) => break,
            _ => {}
        }
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .unwrap();
    assert_eq!(decoded, b"b64\n");

    // A client that dies mid-exec takes its process with it.
    let marker = format!("{}", 100_000 + rand::random::<u32>() % 800_000);
    let url = exec_url(&mut cri, exec_req(c, &["sleep", &marker])).await;
    let mut conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let _e = conn.open(&[("streamtype", "error")]).await;
    let _o = conn.open(&[("streamtype", "stdout")]).await;
    let _r = conn.open(&[("streamtype", "stderr")]).await;
    wait_until("the exec'd sleep", Duration::from_secs(10), || {
        !pids_running(&["sleep", &marker]).is_empty()
    })
    .await;
    for pid in pids_running(&["sleep", &marker]) {
        learned.add(pid, "exec'd sleep");
    }
    conn.kill().await;
    wait_until(
        "the exec'd sleep to go with its client",
        Duration::from_secs(10),
        || pids_running(&["sleep", &marker]).is_empty(),
    )
    .await;

    // An expired token is a 404 too.
    let url = exec_url(&mut cri, exec_req(c, &["true"])).await;
    tokio::time::sleep(TOKEN_TTL + Duration::from_millis(500)).await;
    let refused = spdy_connect(&url, &["v4.channel.k8s.io"])
        .await
        .err()
        .expect("an expired token is refused");
    assert_eq!(refused.status, 404, "{refused:?}");

    tear_down(&mut cri, &pod).await;
    d.assert_no_leaks(&learned);
}

#[tokio::test]
async fn attach_to_a_running_counter() {
    let d = daemon().await;
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    let pod = pod_with(
        &mut cri,
        &d,
        "counter",
        &[
            "sh",
            "-c",
            "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done",
        ],
    )
    .await;
    learned.learn_cgroup(&d.env().cgroup_parent());
    let attach = |tty| AttachRequest {
        container_id: pod.container.clone(),
        stdin: false,
        tty,
        stdout: true,
        stderr: false,
    };
    let url = cri
        .rt
        .attach(attach(false))
        .await
        .unwrap_or_else(|e| panic!("Attach: {e}"))
        .into_inner()
        .url;
    assert!(url.contains("/attach/"), "{url}");
    let mut conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let _err = conn.open(&[("streamtype", "error")]).await;
    let mut out = conn.open(&[("streamtype", "stdout")]).await;
    let mut text = String::new();
    while text.lines().count() < 5 {
        let b = out.next().await.expect("the counter's output");
        text.push_str(&String::from_utf8_lossy(&b));
    }
    let nums: Vec<u64> = text
        .lines()
        .take(4)
        .map(|l| l.trim().parse().unwrap_or_else(|_| panic!("{text:?}")))
        .collect();
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive counter lines: {nums:?}"
    );
    conn.kill().await;

    // Detaching leaves the container running; a WebSocket attach sees it go on counting.
    let url = cri.rt.attach(attach(false)).await.unwrap().into_inner().url;
    let (mut ws, _) = ws_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let mut got = Vec::new();
    while got.iter().filter(|b| **b == b'\n').count() < 3 {
        match tokio::time::timeout(client::TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&1) => {
                got.extend_from_slice(&b[1..])
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("websocket attach ended: {other:?}"),
        }
    }
    drop(ws);
    wait_for_container_state(
        &mut cri,
        &pod.container,
        ContainerState::ContainerRunning,
        Duration::from_secs(1),
    )
    .await;

    tear_down(&mut cri, &pod).await;
    d.assert_no_leaks(&learned);
}

/// GET / over a SPDY port-forward connection `request_id`.
async fn spdy_fetch(conn: &mut client::SpdyConn, request_id: &str) -> (String, String) {
    let mut err = conn
        .open(&[
            ("streamtype", "error"),
            ("port", "8080"),
            ("requestid", request_id),
        ])
        .await;
    let mut data = conn
        .open(&[
            ("streamtype", "data"),
            ("port", "8080"),
            ("requestid", request_id),
        ])
        .await;
    conn.write(data.id, b"GET /index.html HTTP/1.0\r\n\r\n")
        .await;
    let (d, e) = tokio::join!(data.read_to_end(), err.read_to_end());
    (
        String::from_utf8_lossy(&d).to_string(),
        String::from_utf8_lossy(&e).to_string(),
    )
}

#[tokio::test]
async fn port_forward_to_busybox_httpd() {
    let d = daemon().await;
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    let pod = pod_with(
        &mut cri,
        &d,
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www",
        ],
    )
    .await;
    learned.learn_cgroup(&d.env().cgroup_parent());
    let _ = &pod.config;
    let pf_url = |cri: &mut Cri| {
        let mut cri = cri.clone();
        let id = pod.id.clone();
        async move {
            cri.rt
                .port_forward(PortForwardRequest {
                    pod_sandbox_id: id,
                    port: vec![8080],
                })
                .await
                .unwrap_or_else(|e| panic!("PortForward: {e}"))
                .into_inner()
                .url
        }
    };

    // httpd listens on the pod's loopback only: reachable through the pod's netns alone. Retry
    // until it is up.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let url = pf_url(&mut cri).await;
        assert!(url.contains("/portforward/"), "{url}");
        let mut conn = spdy_connect(&url, &["portforward.k8s.io"]).await.unwrap();
        assert_eq!(conn.protocol, "portforward.k8s.io");
        let (body, err) = spdy_fetch(&mut conn, "0").await;
        if body.contains("hello-from-pod") {
            assert!(err.is_empty(), "{err}");
            assert!(body.starts_with("HTTP/1."), "{body}");
            // Two connections at once on one session.
            let mut a_err = conn
                .open(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "1"),
                ])
                .await;
            let mut a = conn
                .open(&[("streamtype", "data"), ("port", "8080"), ("requestid", "1")])
                .await;
            let mut b_err = conn
                .open(&[
                    ("streamtype", "error"),
                    ("port", "8080"),
                    ("requestid", "2"),
                ])
                .await;
            let mut b = conn
                .open(&[("streamtype", "data"), ("port", "8080"), ("requestid", "2")])
                .await;
            conn.write(b.id, b"GET /index.html HTTP/1.0\r\n\r\n").await;
            conn.write(a.id, b"GET /index.html HTTP/1.0\r\n\r\n").await;
            let (ra, rb, _, _) = tokio::join!(
                a.read_to_end(),
                b.read_to_end(),
                a_err.read_to_end(),
                b_err.read_to_end()
            );
            for r in [ra, rb] {
                assert!(
                    String::from_utf8_lossy(&r).contains("hello-from-pod"),
                    "{:?}",
                    String::from_utf8_lossy(&r)
                );
            }
            // A port nobody listens on: the error stream says so.
            let mut e = conn
                .open(&[
                    ("streamtype", "error"),
                    ("port", "8081"),
                    ("requestid", "3"),
                ])
                .await;
            let _x = conn
                .open(&[("streamtype", "data"), ("port", "8081"), ("requestid", "3")])
                .await;
            let text = String::from_utf8_lossy(&e.read_to_end().await).to_string();
            assert!(text.contains("8081"), "{text:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "httpd never answered: {body:?} {err:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // WebSocket: channel 0 data, 1 errors, each first carrying the port.
    let url = pf_url(&mut cri).await;
    let (mut ws, proto) = ws_connect(&url, &["portforward.k8s.io"]).await.unwrap();
    assert_eq!(proto, "portforward.k8s.io");
    let mut port_frames = 0;
    while port_frames < 2 {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                assert_eq!(&b[1..], &8080u16.to_le_bytes(), "port prefix");
                port_frames += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    ws.send(Message::Binary(
        [&[0u8][..], b"GET /index.html HTTP/1.0\r\n\r\n"]
            .concat()
            .into(),
    ))
    .await
    .unwrap();
    let mut body = Vec::new();
    while !String::from_utf8_lossy(&body).contains("hello-from-pod") {
        match tokio::time::timeout(client::TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&0) => {
                body.extend_from_slice(&b[1..])
            }
            Ok(Some(Ok(Message::Binary(b)))) if b.first() == Some(&1) => {
                panic!("port-forward error: {:?}", String::from_utf8_lossy(&b[1..]))
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("websocket port-forward ended: {other:?}"),
        }
    }
    drop(ws);

    // An unknown pod is NotFound.
    let e = cri
        .rt
        .port_forward(PortForwardRequest {
            pod_sandbox_id: "0000000000000000dead".into(),
            port: vec![80],
        })
        .await
        .expect_err("unknown pod");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    tear_down(&mut cri, &pod).await;
    d.assert_no_leaks(&learned);
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[i]
}

/// `hack/bench-exec.sh` runs this: ExecSync `true`, an exec round trip over SPDY and over
/// WebSocket (Exec RPC, upgrade, streams, status), and plain `runc exec` for the floor.
#[tokio::test]
#[ignore = "a benchmark; hack/bench-exec.sh runs it"]
async fn bench_exec() {
    let n: usize = std::env::var("FERRIO_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let d = daemon().await;
    let mut cri = d.client().await;
    let pod = pod_with(&mut cri, &d, "bench", &["sleep", "3600"]).await;
    let c = pod.container.clone();
    let mut rows = Vec::new();

    let mut t = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let r = cri
            .rt
            .exec_sync(ferrio::cri::v1::ExecSyncRequest {
                container_id: c.clone(),
                cmd: vec!["true".into()],
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync: {e}"))
            .into_inner();
        assert_eq!(r.exit_code, 0);
        t.push(start.elapsed());
    }
    rows.push(("ExecSync true", t));

    let mut t = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let url = exec_url(&mut cri, exec_req(&c, &["true"])).await;
        let r = spdy_exec(
            &url,
            ExecOpts {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(r.exit_code(), 0);
        t.push(start.elapsed());
    }
    rows.push(("Exec true over SPDY (RPC + upgrade + status)", t));

    let mut t = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let url = exec_url(&mut cri, exec_req(&c, &["true"])).await;
        let (mut ws, _) = ws_connect(&url, &["v5.channel.k8s.io"]).await.unwrap();
        let got = ws_collect(&mut ws).await;
        assert!(got.contains_key(&3));
        t.push(start.elapsed());
    }
    rows.push(("Exec true over WebSocket v5", t));

    let root = d.env().config().runtime_root("runc").expect("runc handler");
    let runc = d.env().config().runtime.runtimes["runc"]
        .runtime_path
        .clone();
    let mut t = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        let st = tokio::process::Command::new(&runc)
            .arg("--root")
            .arg(&root)
            .args(["exec", &c, "true"])
            .status()
            .await
            .unwrap();
        assert!(st.success());
        t.push(start.elapsed());
    }
    rows.push(("runc exec true (the floor)", t));

    println!("\n{n} runs each");
    println!("{:<48} {:>10} {:>10}", "path", "p50 ms", "p90 ms");
    for (name, mut t) in rows {
        let p50 = percentile(&mut t, 0.5).as_secs_f64() * 1000.0;
        let p90 = percentile(&mut t, 0.9).as_secs_f64() * 1000.0;
        println!("{name:<48} {p50:>10.1} {p90:>10.1}");
    }
    tear_down(&mut cri, &pod).await;
}

/// A stand-in for the API server as far as kubectl needs one: it serves the pod object and
/// turns each exec/attach/portforward request into a CRI call, then relays the raw connection
/// to the streaming URL (as kubelet does), so a real kubectl talks to ferrio's server.
async fn fake_apiserver(
    cri: Cri,
    pod: String,
    container: String,
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = l.accept().await else {
                return;
            };
            let (mut cri, pod, container) = (cri.clone(), pod.clone(), container.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                while !head.ends_with(b"\r\n\r\n") {
                    let mut b = [0u8; 1];
                    if tcp.read(&mut b).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let mut first = head.lines().next().unwrap_or("").split_whitespace();
                let (method, target) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let params: Vec<(String, String)> = query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), urldecode(v)))
                    .collect();
                let flag = |k: &str| {
                    params
                        .iter()
                        .any(|(n, v)| n == k && (v == "true" || v == "1"))
                };
                let url = if path.ends_with("/exec") {
                    let cmd = params
                        .iter()
                        .filter(|(k, _)| k == "command")
                        .map(|(_, v)| v.clone())
                        .collect();
                    cri.rt
                        .exec(ExecRequest {
                            container_id: container,
                            cmd,
                            tty: flag("tty"),
                            stdin: flag("stdin"),
                            stdout: flag("stdout"),
                            stderr: flag("stderr"),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .url
                } else if path.ends_with("/attach") {
                    cri.rt
                        .attach(AttachRequest {
                            container_id: container,
                            tty: flag("tty"),
                            stdin: flag("stdin"),
                            stdout: flag("stdout"),
                            stderr: flag("stderr"),
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .url
                } else if path.ends_with("/portforward") {
                    let port = params
                        .iter()
                        .filter(|(k, _)| k == "ports")
                        .filter_map(|(_, v)| v.parse().ok())
                        .collect();
                    cri.rt
                        .port_forward(PortForwardRequest {
                            pod_sandbox_id: pod,
                            port,
                        })
                        .await
                        .unwrap()
                        .into_inner()
                        .url
                } else {
                    let body = match (method, path) {
                        ("GET", "/api") => {
                            r#"{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}"#
                        }
                        ("GET", "/apis") => {
                            r#"{"kind":"APIGroupList","apiVersion":"v1","groups":[]}"#
                        }
                        ("GET", "/api/v1") => {
                            r#"{"kind":"APIResourceList","groupVersion":"v1","resources":[{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"],"shortNames":["po"]},{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]},{"name":"pods/attach","singularName":"","namespaced":true,"kind":"PodAttachOptions","verbs":["create","get"]},{"name":"pods/portforward","singularName":"","namespaced":true,"kind":"PodPortForwardOptions","verbs":["create","get"]}]}"#
                        }
                        ("GET", p) if p.ends_with("/pods/web") => {
                            r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"web","namespace":"default"},"spec":{"containers":[{"name":"web","image":"busybox","ports":[{"containerPort":8080}]}]},"status":{"phase":"Running"}}"#
                        }
                        _ => {
                            r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#
                        }
                    };
                    let code = if body.contains("\"code\":404") {
                        "404 Not Found"
                    } else {
                        "200 OK"
                    };
                    let resp = format!("HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                    let _ = tcp.write_all(resp.as_bytes()).await;
                    return;
                };
                // Relay as kubelet does: the same request on the streaming URL's path.
                let (host, spath) = client::split_url(&url);
                let Ok(mut up) = tokio::net::TcpStream::connect(&host).await else {
                    return;
                };
                let mut rest = head
                    .split_once("\r\n")
                    .map(|(_, r)| r.to_string())
                    .unwrap_or_default();
                rest = rest
                    .lines()
                    .filter(|l| !l.to_ascii_lowercase().starts_with("host:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                let fwd = format!("{method} {spath} HTTP/1.1\r\nHost: {host}\r\n{rest}");
                if up.write_all(fwd.as_bytes()).await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut up).await;
            });
        }
    });
    (format!("http://{addr}"), task)
}

fn urldecode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

/// Run kubectl against the fake API server; returns (exit code, stdout, stderr).
async fn kubectl(
    server: &str,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: &[u8],
) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg(format!("--server={server}"))
        .args([
            "--kubeconfig=/dev/null",
            "--namespace=default",
            "--request-timeout=60s",
        ])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run kubectl");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("kubectl finished in time")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Real kubectl (Go's SPDY and WebSocket clients) against ferrio's streaming server.
#[tokio::test]
async fn kubectl_exec_and_port_forward() {
    if std::process::Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_err()
    {
        eprintln!("kubectl is not installed; skipping");
        return;
    }
    let d = daemon().await;
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    let pod = pod_with(
        &mut cri,
        &d,
        "web",
        &["sh", "-c", "mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 127.0.0.1:8080 -h /www"],
    )
    .await;
    learned.learn_cgroup(&d.env().cgroup_parent());
    let (server, task) = fake_apiserver(cri.clone(), pod.id.clone(), pod.container.clone()).await;
    let spdy = [
        ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false"),
        ("KUBECTL_PORT_FORWARD_WEBSOCKETS", "false"),
    ];
    for env in [&spdy[..], &[][..]] {
        let how = if env.is_empty() { "websocket" } else { "spdy" };
        let (code, out, err) = kubectl(
            &server,
            &[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "echo out; echo err >&2; exit 7",
            ],
            env,
            b"",
        )
        .await;
        assert_eq!(code, 7, "{how}: exit code; stdout {out:?} stderr {err:?}");
        assert_eq!(out, "out\n", "{how}: {err}");
        assert!(err.contains("err"), "{how}: {err}");
        let (code, out, err) = kubectl(
            &server,
            &["exec", "-i", "web", "--", "cat"],
            env,
            b"through kubectl\n",
        )
        .await;
        assert_eq!(
            (code, out.as_str()),
            (0, "through kubectl\n"),
            "{how}: {err}"
        );
        // More than SPDY's 64 KiB initial window, to a client that never sends WINDOW_UPDATE.
        let (code, out, err) = kubectl(
            &server,
            &[
                "exec",
                "web",
                "--",
                "sh",
                "-c",
                "head -c 300000 /dev/zero | tr '\\0' a",
            ],
            env,
            b"",
        )
        .await;
        assert_eq!(code, 0, "{how}: {err}");
        assert_eq!(out.len(), 300_000, "{how}: {err}");
    }
    for env in [&spdy[..], &[][..]] {
        let how = if env.is_empty() {
            "websocket tunnel"
        } else {
            "spdy"
        };
        kubectl_port_forward(&server, env, how).await;
    }
    let log = std::fs::read_to_string(d.env().daemon_log()).unwrap_or_default();
    // Drop the colour escapes around `=`.
    let log = log
        .replace("\u{1b}[0m", "")
        .replace("\u{1b}[2m", "")
        .replace("\u{1b}[3m", "");
    for protocol in [
        "v4.channel.k8s.io",
        "v5.channel.k8s.io",
        "protocol=portforward.k8s.io",
        "SPDY/3.1+portforward.k8s.io",
    ] {
        assert!(log.contains(protocol), "kubectl never used {protocol}");
    }
    task.abort();
    tear_down(&mut cri, &pod).await;
    d.assert_no_leaks(&learned);
}

/// `kubectl port-forward pod/web :8080`, then two HTTP requests at once through it.
async fn kubectl_port_forward(server: &str, env: &[(&str, &str)], how: &str) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg(format!("--server={server}"))
        .args(["--kubeconfig=/dev/null", "--namespace=default"])
        .args(["port-forward", "pod/web", ":8080"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run kubectl port-forward");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let local = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{how}: kubectl port-forward did not start"))
            .unwrap()
            .unwrap_or_else(|| panic!("{how}: kubectl port-forward exited"));
        // "Forwarding from 127.0.0.1:41234 -> 8080"
        if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let fetch = |port: String| async move {
        let mut deadline_tries = 0;
        loop {
            let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .unwrap();
            s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                .await
                .unwrap();
            let mut body = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut body)).await;
            let body = String::from_utf8_lossy(&body).to_string();
            if body.contains("hello-from-pod") || deadline_tries > 50 {
                return body;
            }
            // httpd may not listen yet.
            deadline_tries += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let (a, b) = tokio::join!(fetch(local.clone()), fetch(local.clone()));
    for body in [a, b] {
        assert!(body.contains("hello-from-pod"), "{how}: {body:?}");
    }
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// Create and start another container in `pod`, with stdin (and a terminal) as asked.
async fn add_container(
    cri: &mut Cri,
    pod: &Pod,
    name: &str,
    command: &[&str],
    tty: bool,
) -> String {
    let mut config = container_config(name, BUSYBOX, command);
    config.stdin = true;
    config.tty = tty;
    start_container(cri, &pod.id, &pod.config, config).await
}

/// Read `out` until its text contains `want`.
async fn read_until(out: &mut client::ClientStream, want: &str) -> String {
    let mut text = String::new();
    while !text.contains(want) {
        match out.next().await {
            Some(b) => text.push_str(&String::from_utf8_lossy(&b)),
            None => panic!("stream ended before {want:?}; got {text:?}"),
        }
    }
    text
}

#[tokio::test]
async fn attach_with_stdin_and_a_terminal() {
    let d = daemon().await;
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    let pod = pod_with(&mut cri, &d, "attach", &["sleep", "3600"]).await;
    let cat = add_container(&mut cri, &pod, "cat", &["cat"], false).await;
    let shell = add_container(&mut cri, &pod, "shell", &["sh"], true).await;
    learned.learn_cgroup(&d.env().cgroup_parent());

    // stdin reaches the container's cat, whose output comes back on stdout.
    let url = cri
        .rt
        .attach(AttachRequest {
            container_id: cat.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap_or_else(|e| panic!("Attach: {e}"))
        .into_inner()
        .url;
    let mut conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let _err = conn.open(&[("streamtype", "error")]).await;
    let stdin = conn.open(&[("streamtype", "stdin")]).await;
    let mut out = conn.open(&[("streamtype", "stdout")]).await;
    let _stderr = conn.open(&[("streamtype", "stderr")]).await;
    conn.write(stdin.id, b"ping through attach\n").await;
    read_until(&mut out, "ping through attach\n").await;
    conn.kill().await;

    // A terminal: the resize reaches the container's pty.
    let url = cri
        .rt
        .attach(AttachRequest {
            container_id: shell.clone(),
            stdin: true,
            tty: true,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap_or_else(|e| panic!("Attach tty: {e}"))
        .into_inner()
        .url;
    let mut conn = spdy_connect(&url, &["v4.channel.k8s.io"]).await.unwrap();
    let _err = conn.open(&[("streamtype", "error")]).await;
    let resize = conn.open(&[("streamtype", "resize")]).await;
    let stdin = conn.open(&[("streamtype", "stdin")]).await;
    let mut out = conn.open(&[("streamtype", "stdout")]).await;
    conn.write(resize.id, br#"{"Width":123,"Height":45}"#).await;
    // Ask until the size has arrived (the resize and the command race).
    let mut text = String::new();
    for _ in 0..50 {
        conn.write(stdin.id, b"stty size\n").await;
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline && !text.contains("45 123") {
            if let Ok(Some(b)) = tokio::time::timeout(Duration::from_millis(100), out.next()).await
            {
                text.push_str(&String::from_utf8_lossy(&b));
            }
        }
        if text.contains("45 123") {
            break;
        }
    }
    assert!(text.contains("45 123"), "terminal output: {text:?}");
    conn.kill().await;

    for id in [&cat, &shell] {
        cri.rt
            .stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout: 1,
            })
            .await
            .unwrap();
        cri.rt
            .remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap();
    }
    tear_down(&mut cri, &pod).await;
    d.assert_no_leaks(&learned);
}
