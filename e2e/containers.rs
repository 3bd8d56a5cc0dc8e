//! Container RPCs against a real daemon: ExecSync (timeout), ReopenContainerLog (rotation),
//! attach, OOM, stop signals, termination messages, daemon SIGKILL while a container exits.

use crate::harness::{container_config, Daemon, Opts, Pod, BUSYBOX};
use ferrio::cri::v1::{
    ContainerState, ContainerStatusRequest, ExecSyncRequest, ImageSpec, PullImageRequest,
};
use std::time::{Duration, Instant};

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

/// kubelet's rotation: rename the log, then ReopenContainerLog; repeated while a counter runs,
/// the renamed files and the last one hold every line once, in order.
#[tokio::test]
async fn log_rotation_with_reopen_keeps_every_line_in_order() {
    let mut p = Pod::start("rotate").await;
    let script = "i=0; while [ $i -lt 600 ]; do echo $i; i=$((i+1)); usleep 2000; done; sleep 1000";
    let id = p.run("counter", &["sh", "-c", script]).await;
    p.wait(&id, ContainerState::ContainerRunning, 10).await;
    let log = p.log_path("counter");
    let mut files = Vec::new();
    for n in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let to = log.with_extension(format!("log.{n}"));
        std::fs::rename(&log, &to).unwrap();
        p.cri
            .rt
            .reopen_container_log(ferrio::cri::v1::ReopenContainerLogRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("ReopenContainerLog: {e}"));
        assert!(log.exists(), "the log is back at its path after reopen");
        files.push(to);
    }
    // Wait for the counter to finish.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(" 599\n")
    {
        assert!(Instant::now() < deadline, "counter did not reach 599");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    files.push(log);
    let mut lines = Vec::new();
    for f in &files {
        lines.extend(log_lines(&std::fs::read_to_string(f).unwrap()));
    }
    let want: Vec<String> = (0..600).map(|i| i.to_string()).collect();
    assert_eq!(lines, want, "lines across {} files", files.len());
    let nonempty = files
        .iter()
        .filter(|f| std::fs::metadata(f).unwrap().len() > 0)
        .count();
    assert!(
        nonempty >= 4,
        "rotations happened while it wrote: {nonempty}"
    );

    // Reopen of a container that is not running is refused, not hung.
    p.stop_ctr(&id, 0).await;
    let e = p
        .cri
        .rt
        .reopen_container_log(ferrio::cri::v1::ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .expect_err("ReopenContainerLog of an exited container");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    p.finish().await;
}

#[tokio::test]
async fn a_memory_limit_ends_in_oomkilled() {
    let mut p = Pod::start("oom").await;
    let script = "x=$(head -c 67108864 /dev/zero | tr '\\000' a); echo survived";
    let mut c = container_config("hog", BUSYBOX, &["sh", "-c", script]);
    let limit = 16 * 1024 * 1024;
    c.linux = Some(ferrio::cri::v1::LinuxContainerConfig {
        resources: Some(ferrio::cri::v1::LinuxContainerResources {
            memory_limit_in_bytes: limit,
            memory_swap_limit_in_bytes: limit,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = p.create(c).await;
    p.start_ctr(&id).await;
    let st = p.wait(&id, ContainerState::ContainerExited, 30).await;
    assert_eq!(st.reason, "OOMKilled", "{st:?}");
    assert_eq!(st.exit_code, 137, "{st:?}");
    p.finish().await;
}

/// The daemon is SIGKILLed while a container runs; the monitor carries on, the container exits
/// while the daemon is down, and the restarted daemon reports the exit code, the finish time
/// and the complete log.
#[tokio::test]
async fn a_container_exiting_while_the_daemon_is_killed_is_reported_after_restart() {
    let mut p = Pod::start("sigkill").await;
    let script = "for i in $(seq 1 50); do echo line $i; done; sleep 3; echo last; exit 5";
    let id = p.run("exiter", &["sh", "-c", script]).await;
    p.wait(&id, ContainerState::ContainerRunning, 10).await;
    let info = p
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    let monitor_pid = v["status"]["monitor_pid"].as_i64().expect("monitor_pid") as i32;
    let env = p.d.env().clone();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.d.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let killed_at = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        std::path::Path::new(&format!("/proc/{monitor_pid}")).exists(),
        "the monitor keeps running without the daemon"
    );
    // The container exits about 3s after it started.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarted_at = std::time::SystemTime::now();
    let d = Daemon::start_on(&env).await;
    let old = std::mem::replace(&mut p.d, d);
    drop(old);
    p.cri = p.d.client().await;
    let st = p.wait(&id, ContainerState::ContainerExited, 10).await;
    assert_eq!(st.exit_code, 5, "{st:?}");
    assert_eq!(st.reason, "Error", "{st:?}");
    let nanos = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64
    };
    assert!(
        st.finished_at > nanos(killed_at) && st.finished_at < nanos(restarted_at),
        "finished while the daemon was down: {st:?}"
    );
    let lines = log_lines(&std::fs::read_to_string(p.log_path("exiter")).unwrap());
    let mut want: Vec<String> = (1..=50).map(|i| format!("line {i}")).collect();
    want.push("last".into());
    assert_eq!(lines, want);
    p.finish().await;
}

/// StopContainer: the stop signal first (a trap sees it and exits cleanly), timeout 0 kills at
/// once, a second stop is a no-op, RemoveContainer takes a running container.
#[tokio::test]
async fn stop_signal_timeout_zero_idempotence_and_removing_a_running_container() {
    let mut p = Pod::start("stop").await;
    let trap = "trap 'echo got term; exit 0' TERM; echo ready; while true; do usleep 50000; done";
    let id = p.run("trapper", &["sh", "-c", trap]).await;
    p.wait(&id, ContainerState::ContainerRunning, 10).await;
    wait_for_log(&p.log_path("trapper"), "ready").await;
    let t0 = Instant::now();
    p.stop_ctr(&id, 10).await;
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    // The container's monitor sent the stop signal: no runtime process was needed for it.
    assert_eq!(p.d.env().stop_signal_fallbacks(), Vec::<String>::new());
    let st = p.status(&id).await;
    assert_eq!(
        (st.state, st.exit_code),
        (ContainerState::ContainerExited as i32, 0),
        "{st:?}"
    );
    assert!(
        log_lines(&std::fs::read_to_string(p.log_path("trapper")).unwrap())
            .contains(&"got term".to_string())
    );
    p.stop_ctr(&id, 10).await;

    // Timeout 0: SIGKILL at once, even for a process that would ignore SIGTERM.
    let ignore = "trap '' TERM; while true; do usleep 50000; done";
    let id2 = p.run("ignorer", &["sh", "-c", ignore]).await;
    p.wait(&id2, ContainerState::ContainerRunning, 10).await;
    let t0 = Instant::now();
    p.stop_ctr(&id2, 0).await;
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(p.status(&id2).await.exit_code, 137);

    // RemoveContainer of a running container stops it first.
    let id3 = p.run("running", &["sleep", "1000"]).await;
    p.wait(&id3, ContainerState::ContainerRunning, 10).await;
    p.remove_ctr(&id3).await;
    p.remove_ctr(&id3).await;
    let e = p
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id3.clone(),
            verbose: false,
        })
        .await
        .expect_err("status after remove");
    assert_eq!(e.code(), tonic::Code::NotFound);
    p.finish().await;
}

async fn wait_for_log(path: &std::path::Path, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(text)
    {
        assert!(
            Instant::now() < deadline,
            "{} never had {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The termination message: from kubelet's mounted file, or from a file in the rootfs that
/// ferrio created for the container.
#[tokio::test]
async fn the_termination_message_becomes_the_status_message() {
    let mut p = Pod::start("termmsg").await;
    let key = "io.kubernetes.container.terminationMessagePath";

    let host = p.d.env().dir().join("termination-log");
    std::fs::write(&host, "").unwrap();
    let mut c = container_config(
        "mounted",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "echo 'bye from mount' > /dev/termination-log; exit 1",
        ],
    );
    c.annotations
        .insert(key.into(), "/dev/termination-log".into());
    c.mounts.push(ferrio::cri::v1::Mount {
        container_path: "/dev/termination-log".into(),
        host_path: host.to_string_lossy().into(),
        ..Default::default()
    });
    let id = p.create(c).await;
    p.start_ctr(&id).await;
    let st = p.wait(&id, ContainerState::ContainerExited, 20).await;
    assert_eq!(st.message, "bye from mount", "{st:?}");
    assert_eq!(st.reason, "Error");

    let mut c = container_config(
        "inroot",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "test -f /var/msg/term || exit 9; echo done here > /var/msg/term",
        ],
    );
    c.annotations.insert(key.into(), "/var/msg/term".into());
    let id = p.create(c).await;
    p.start_ctr(&id).await;
    let st = p.wait(&id, ContainerState::ContainerExited, 20).await;
    assert_eq!(
        (st.exit_code, st.message.as_str()),
        (0, "done here"),
        "{st:?}"
    );
    p.finish().await;
}

/// ListContainers filters, attempts, and a retried CreateContainer getting the same container.
#[tokio::test]
async fn list_filters_attempts_and_create_retries() {
    use ferrio::cri::v1::{ContainerFilter, ContainerStateValue, ListContainersRequest};
    let mut p = Pod::start("filters").await;
    let cfg = container_config("web", BUSYBOX, &["sleep", "1000"]);
    let a = p.create(cfg.clone()).await;
    let again = p.create(cfg.clone()).await;
    assert_eq!(
        a, again,
        "a retried CreateContainer returns the first container"
    );
    p.start_ctr(&a).await;
    let mut next = cfg.clone();
    next.metadata.as_mut().unwrap().attempt = 1;
    next.labels.insert("tier".into(), "two".into());
    let b = p.create(next).await;
    assert_ne!(a, b, "a new attempt is a new container");
    p.wait(&a, ContainerState::ContainerRunning, 10).await;
    let st = p.status(&b).await;
    assert_eq!(st.metadata.as_ref().unwrap().attempt, 1);

    let list = |f: ContainerFilter| {
        let mut rt = p.cri.rt.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_containers(ListContainersRequest { filter: Some(f) })
                .await
                .unwrap()
                .into_inner()
                .containers
                .into_iter()
                .map(|c| c.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(list(ContainerFilter::default()).await, both);
    assert_eq!(
        list(ContainerFilter {
            id: a[..12].into(),
            ..Default::default()
        })
        .await,
        vec![a.clone()]
    );
    assert_eq!(
        list(ContainerFilter {
            state: Some(ContainerStateValue {
                state: ContainerState::ContainerCreated as i32
            }),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    assert_eq!(
        list(ContainerFilter {
            pod_sandbox_id: p.id[..12].to_string(),
            label_selector: [("tier".to_string(), "two".to_string())].into(),
            ..Default::default()
        })
        .await,
        vec![b.clone()]
    );
    assert!(list(ContainerFilter {
        pod_sandbox_id: "0000".into(),
        ..Default::default()
    })
    .await
    .is_empty());
    p.finish().await;
}

/// busybox with `STOPSIGNAL SIGUSR1` and `VOLUME /data`, pushed to the test registry once (a
/// derived tag; the base image stays as it is).
fn ensure_stopsig_image() -> &'static str {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let reg = std::env::var(crate::harness::REGISTRY_ENV).expect("registry");
        let work = tempfile::Builder::new()
            .prefix("ferrio-stopsig-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let oci = format!("oci:{}/oci:v", work.path().display());
        let steps: [Vec<String>; 3] = [
            vec![
                "skopeo".into(),
                "copy".into(),
                "-q".into(),
                "--src-tls-verify=false".into(),
                format!("docker://{reg}/library/busybox:1.36"),
                oci.clone(),
            ],
            vec![
                "umoci".into(),
                "config".into(),
                "--image".into(),
                format!("{}/oci:v", work.path().display()),
                "--config.stopsignal".into(),
                "SIGUSR1".into(),
                "--config.volume".into(),
                "/data".into(),
            ],
            vec![
                "skopeo".into(),
                "copy".into(),
                "-q".into(),
                "--dest-tls-verify=false".into(),
                oci,
                format!("docker://{reg}/library/busybox:stopsig"),
            ],
        ];
        for s in steps {
            let out = std::process::Command::new(&s[0])
                .args(&s[1..])
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", s[0]));
            assert!(
                out.status.success(),
                "{s:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
    "docker.io/library/busybox:stopsig"
}

/// The image's STOPSIGNAL is what StopContainer sends first; its VOLUME exists as an empty dir.
#[tokio::test]
async fn the_image_stop_signal_and_volumes_are_honoured() {
    let image = ensure_stopsig_image();
    let mut p = Pod::start("stopsig").await;
    p.cri
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e}"));
    let script = "test -d /data && [ -z \"$(ls -A /data)\" ] && echo volume ok; \
                  trap 'echo got usr1; exit 0' USR1; trap 'echo got term; exit 3' TERM; \
                  echo ready; while true; do usleep 50000; done";
    let id = p
        .create(container_config("sig", image, &["sh", "-c", script]))
        .await;
    p.start_ctr(&id).await;
    wait_for_log(&p.log_path("sig"), "ready").await;
    p.stop_ctr(&id, 10).await;
    let st = p.status(&id).await;
    assert_eq!(st.exit_code, 0, "{st:?}");
    let lines = log_lines(&std::fs::read_to_string(p.log_path("sig")).unwrap());
    assert_eq!(lines, vec!["volume ok", "ready", "got usr1"]);
    p.finish().await;
}

/// The config's stop signal goes before the image's STOPSIGNAL, is reported in ContainerStatus and is
/// still the one sent after a daemon restart.
#[tokio::test]
async fn the_config_stop_signal_wins_and_survives_a_daemon_restart() {
    use ferrio::cri::v1::Signal;
    let image = ensure_stopsig_image();
    let mut p = Pod::start("cfgsig").await;
    p.cri
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e}"));
    let script = "trap 'echo got usr1; exit 0' USR1; trap 'echo got usr2; exit 42' USR2; \
                  trap 'echo got term; exit 3' TERM; echo ready; while true; do usleep 50000; done";
    let mut config = container_config("sig2", image, &["sh", "-c", script]);
    config.stop_signal = Signal::Sigusr2 as i32;
    let id = p.create(config).await;
    p.start_ctr(&id).await;
    wait_for_log(&p.log_path("sig2"), "ready").await;
    assert_eq!(p.status(&id).await.stop_signal, Signal::Sigusr2 as i32);
    // Without a config signal: the image's, and SIGTERM for an image without STOPSIGNAL.
    let from_image = p.create(container_config("img", image, &["true"])).await;
    assert_eq!(
        p.status(&from_image).await.stop_signal,
        Signal::Sigusr1 as i32
    );
    let plain = p
        .create(container_config("plain", BUSYBOX, &["true"]))
        .await;
    assert_eq!(p.status(&plain).await.stop_signal, Signal::Sigterm as i32);

    let Pod {
        d,
        cri: _,
        config,
        id: pod_id,
        learned,
    } = p;
    let env = d.env().clone();
    let exit = d.stop();
    assert!(exit.success(), "daemon exit: {exit:?}");
    let d = Daemon::start_on(&env).await;
    let cri = d.client().await;
    let mut p = Pod {
        d,
        cri,
        config,
        id: pod_id,
        learned,
    };
    assert_eq!(p.status(&id).await.stop_signal, Signal::Sigusr2 as i32);
    p.stop_ctr(&id, 10).await;
    let st = p.status(&id).await;
    assert_eq!(st.exit_code, 42, "{st:?}");
    let lines = log_lines(&std::fs::read_to_string(p.log_path("sig2")).unwrap());
    assert_eq!(lines, vec!["ready", "got usr2"]);
    p.finish().await;
}

/// Percentile `q` (0..=100) of durations, in milliseconds.
fn pct_ms(v: &[Duration], q: usize) -> f64 {
    let mut s: Vec<Duration> = v.to_vec();
    s.sort();
    let i = ((s.len() - 1) * q) / 100;
    s[i].as_secs_f64() * 1000.0
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A bundle next to `donor`'s (same rootfs, namespaces and process), for the raw floors.
struct RawBundle {
    dir: std::path::PathBuf,
    id: String,
    root: std::path::PathBuf,
}

impl RawBundle {
    fn new(base: &std::path::Path, donor: &serde_json::Value, parent: &str, n: usize) -> RawBundle {
        let id = format!("bench-raw-{}-{n}", crate::harness::rand_hex(8));
        let dir = base.join(&id);
        std::fs::create_dir_all(dir.join("exits")).unwrap();
        std::fs::create_dir_all(dir.join("persist")).unwrap();
        let mut spec = donor.clone();
        spec["linux"]["cgroupsPath"] = serde_json::json!(format!("{parent}/{id}"));
        std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        let root = base.join("runc-root");
        RawBundle { dir, id, root }
    }

    fn runc(&self, args: &[&str]) {
        let out = std::process::Command::new("/usr/sbin/runc")
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `runc create` + `runc start`, timed.
    fn runc_create_start(&self) -> Duration {
        let t0 = Instant::now();
        let out = std::process::Command::new("/usr/sbin/runc")
            .arg("--root")
            .arg(&self.root)
            .args(["create", "--bundle"])
            .arg(&self.dir)
            .arg("--pid-file")
            .arg(self.dir.join("pid"))
            .arg(&self.id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(out.success(), "runc create {}", self.id);
        self.runc(&["start", &self.id]);
        t0.elapsed()
    }

    /// conmon runs `runc create` (we wait for the pid file), then `runc start`, timed; returns
    /// the duration and conmon's pid.
    fn conmon_create_start(&self) -> (Duration, i32) {
        let t0 = Instant::now();
        let status = std::process::Command::new("/usr/bin/conmon")
            .args(["-c", &self.id, "-u", &self.id, "-n", &self.id])
            .args(["-r", "/usr/sbin/runc"])
            .arg(format!("--runtime-arg=--root={}", self.root.display()))
            .arg("-b")
            .arg(&self.dir)
            .arg("-p")
            .arg(self.dir.join("pid"))
            .arg("-P")
            .arg(self.dir.join("conmon.pid"))
            .arg("-l")
            .arg(self.dir.join("ctr.log"))
            .arg("--exit-dir")
            .arg(self.dir.join("exits"))
            .arg("-0")
            .arg(self.dir.join("persist"))
            .arg("--socket-dir-path")
            .arg(&self.dir)
            .args(["--log-level", "error"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "conmon {}", self.id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.dir.join("pid").exists() {
            assert!(
                Instant::now() < deadline,
                "conmon did not create {}",
                self.id
            );
            std::thread::sleep(Duration::from_micros(500));
        }
        self.runc(&["start", &self.id]);
        let took = t0.elapsed();
        let pid = std::fs::read_to_string(self.dir.join("conmon.pid"))
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or(0);
        (took, pid)
    }

    fn delete(&self) {
        let _ = std::process::Command::new("/usr/sbin/runc")
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "-f", &self.id])
            .output();
        let _ = std::fs::remove_file(self.dir.join("pid"));
    }
}

/// hack/bench-container.sh: create+start p50 through ferrio vs `runc create`+`runc start` of an
/// equivalent bundle vs conmon + runc; monitor RSS with 1, 10 and 50 containers vs conmon's.
#[tokio::test]
#[ignore]
async fn bench_container() {
    let n: usize = std::env::var("FERRIO_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let d = Daemon::start(Opts {
        log_level: ferrio::config::LogLevel::Warn,
        ..Default::default()
    })
    .await;
    let mut p = Pod::on(d, "bench").await;
    let parent = p.config.linux.as_ref().unwrap().cgroup_parent.clone();

    // The donor: created, never started; its rootfs and spec feed the raw bundles.
    let donor = p
        .create(container_config("donor", BUSYBOX, &["sleep", "1000"]))
        .await;
    let donor_spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            p.d.env()
                .runroot()
                .join("containers")
                .join(&donor)
                .join("bundle/config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let base = p.d.env().dir().join("bench");
    std::fs::create_dir_all(&base).unwrap();

    let mut ferrio_t = Vec::new();
    let mut ferrio_create_t = Vec::new();
    let mut ferrio_stop_t = Vec::new();
    let mut ferrio_remove_t = Vec::new();
    for i in 0..n {
        let cfg = container_config(&format!("b{i}"), BUSYBOX, &["sleep", "1000"]);
        let t0 = Instant::now();
        let id = p.create(cfg).await;
        ferrio_create_t.push(t0.elapsed());
        p.start_ctr(&id).await;
        ferrio_t.push(t0.elapsed());
        let t1 = Instant::now();
        p.stop_ctr(&id, 0).await;
        ferrio_stop_t.push(t1.elapsed());
        let t2 = Instant::now();
        p.remove_ctr(&id).await;
        ferrio_remove_t.push(t2.elapsed());
    }
    let mut runc_t = Vec::new();
    let mut conmon_t = Vec::new();
    for i in 0..n {
        let b = RawBundle::new(&base, &donor_spec, &parent, i);
        runc_t.push(b.runc_create_start());
        b.delete();
        let (t, _) = b.conmon_create_start();
        conmon_t.push(t);
        b.delete();
    }

    // RSS with 1, 10, 50 containers running.
    let mut ferrio_pids = Vec::new();
    let mut conmon_pids = Vec::new();
    let mut raws = Vec::new();
    let mut rows = Vec::new();
    for target in [1usize, 10, 50] {
        while ferrio_pids.len() < target {
            let i = ferrio_pids.len();
            let id = p.run(&format!("r{i}"), &["sleep", "1000"]).await;
            let info = p
                .cri
                .rt
                .container_status(ContainerStatusRequest {
                    container_id: id,
                    verbose: true,
                })
                .await
                .unwrap()
                .into_inner()
                .info;
            let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
            ferrio_pids.push(v["status"]["monitor_pid"].as_i64().unwrap() as i32);
            let b = RawBundle::new(&base, &donor_spec, &parent, 1000 + i);
            let (_, pid) = b.conmon_create_start();
            conmon_pids.push(pid);
            raws.push(b);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let f: u64 = ferrio_pids.iter().map(|p| rss_kib(*p)).sum();
        let c: u64 = conmon_pids.iter().map(|p| rss_kib(*p)).sum();
        rows.push((target, f, c));
    }
    for b in &raws {
        b.delete();
    }

    println!("\ncontainer create+start, {n} runs each (p50 / p90 ms):");
    println!(
        "  ferrio (CreateContainer+StartContainer) {:7.1} / {:7.1}",
        pct_ms(&ferrio_t, 50),
        pct_ms(&ferrio_t, 90)
    );
    println!(
        "    of which CreateContainer              {:7.1} / {:7.1}",
        pct_ms(&ferrio_create_t, 50),
        pct_ms(&ferrio_create_t, 90)
    );
    println!(
        "  ferrio StopContainer (timeout 0)        {:7.1} / {:7.1}",
        pct_ms(&ferrio_stop_t, 50),
        pct_ms(&ferrio_stop_t, 90)
    );
    println!(
        "  ferrio RemoveContainer (after stop)     {:7.1} / {:7.1}",
        pct_ms(&ferrio_remove_t, 50),
        pct_ms(&ferrio_remove_t, 90)
    );
    println!(
        "  runc create + runc start (floor)        {:7.1} / {:7.1}",
        pct_ms(&runc_t, 50),
        pct_ms(&runc_t, 90)
    );
    println!(
        "  conmon + runc                           {:7.1} / {:7.1}",
        pct_ms(&conmon_t, 50),
        pct_ms(&conmon_t, 90)
    );
    println!(
        "  ferrio / runc p50 = {:.2}x (goal <= 1.3x)",
        pct_ms(&ferrio_t, 50) / pct_ms(&runc_t, 50)
    );
    println!("\nmonitor RSS (VmRSS, KiB): containers, ferrio-monitor total/avg, conmon total/avg");
    for (k, f, c) in &rows {
        println!(
            "  {k:3}  ferrio-monitor {f:7} / {:6}   conmon {c:7} / {:6}",
            f / *k as u64,
            c / *k as u64
        );
    }
    p.finish().await;
}

/// The streaming Exec's building block: `spawn_exec` with a tty and stdin, resized, and a plain
/// one with separate stdout/stderr; both report their exit codes.
#[tokio::test]
async fn exec_sessions_with_a_tty_and_with_pipes() {
    use ferrio::oci::exec::{spawn_exec, ExecSpec};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut p = Pod::start("execsess").await;
    let id = p.run("target", &["sleep", "1000"]).await;
    p.wait(&id, ContainerState::ContainerRunning, 10).await;
    let config = p.d.env().config().clone();
    let spec = ExecSpec {
        runtime_path: "/usr/sbin/runc".into(),
        runtime_root: config.runtime_root("runc").expect("runc handler"),
        id: id.clone(),
        cmd: vec!["sh".into()],
        tty: true,
        stdin: true,
        state_dir: p.d.env().dir().to_path_buf(),
        cgroup_view: None,
        process: None,
        attach_warm: None,
    };
    let mut s = spawn_exec(&spec).await.expect("spawn_exec tty");
    assert!(s.take_stderr().is_none(), "a tty has no stderr");
    let mut stdin = s.take_stdin().expect("stdin");
    let mut out = s.take_stdout().expect("stdout");
    // Give runc a moment to wire the terminal before resizing it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.resizer().expect("resizer").resize(91, 27).unwrap();
    stdin.write_all(b"stty size; tty; exit 4\n").await.unwrap();
    let mut text = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), out.read_to_end(&mut text)).await;
    let text = String::from_utf8_lossy(&text);
    assert_eq!(s.wait().await.unwrap(), 4, "{text}");
    assert!(text.contains("27 91"), "{text}");
    assert!(text.contains("/dev/pts/"), "{text}");

    let mut s = spawn_exec(&ExecSpec {
        tty: false,
        cmd: vec![
            "sh".into(),
            "-c".into(),
            "read x; echo \"o $x\"; echo e >&2; exit 2".into(),
        ],
        ..spec
    })
    .await
    .expect("spawn_exec pipes");
    let mut stdin = s.take_stdin().unwrap();
    stdin.write_all(b"hi\n").await.unwrap();
    drop(stdin);
    let (mut o, mut e) = (Vec::new(), Vec::new());
    s.take_stdout().unwrap().read_to_end(&mut o).await.unwrap();
    s.take_stderr().unwrap().read_to_end(&mut e).await.unwrap();
    assert_eq!(s.wait().await.unwrap(), 2);
    assert_eq!((o.as_slice(), e.as_slice()), (&b"o hi\n"[..], &b"e\n"[..]));
    p.finish().await;
}

/// In the pod's shared pid namespace (pid = POD, the CRI default) a background child outlives
/// the container's init: the monitor kills it, so the container finishes at once and nothing of
/// it keeps running (before, the child held the log pipes and ran until RemoveContainer).
#[tokio::test]
async fn leftovers_in_a_shared_pid_namespace_are_killed_when_the_container_exits() {
    let mut p = Pod::start("leftovers").await;
    let id = p
        .run("bg", &["sh", "-c", "sleep 1000 & echo started; exit 0"])
        .await;
    let st = p.wait(&id, ContainerState::ContainerExited, 20).await;
    assert_eq!(st.exit_code, 0);
    let verbose = p
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    let cg = info["cgroupsPath"]
        .as_str()
        .expect("cgroupsPath in info")
        .to_string();
    let rel = cg.trim_start_matches('/');
    let mut left = Vec::new();
    for h in ["pids", "memory", "cpu"] {
        let procs = std::path::Path::new("/sys/fs/cgroup")
            .join(h)
            .join(rel)
            .join("cgroup.procs");
        if let Ok(t) = std::fs::read_to_string(&procs) {
            left.extend(t.lines().map(str::to_string));
        }
    }
    assert!(
        left.is_empty(),
        "processes left in {cg} after the exit: {left:?}"
    );
    let log = std::fs::read_to_string(p.log_path("bg")).unwrap();
    assert!(log_lines(&log).contains(&"started".to_string()), "{log}");
    p.finish().await;
}
