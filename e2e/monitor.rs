//! ferrio-monitor against real runc: a busybox bundle in a temp dir, the real monitor binary,
//! `runc start`/`delete` done here the way the daemon does them.
//!
//! Needs root, /usr/sbin/runc and busybox-static at /bin/busybox.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ferrio::monitor::{self, ExitRecord, MonitorError, MonitorSpawn, Spawned};
use tempfile::TempDir;

const RUNC: &str = "/usr/sbin/runc";
const MONITOR: &str = env!("CARGO_BIN_EXE_ferrio-monitor");

/// A container bundle and everything the monitor writes, cleaned up on drop.
struct Bundle {
    dir: TempDir,
    id: String,
    cgroup: String,
    /// Monitor pid, once known, killed on drop if it is still there.
    monitor_pid: Option<i32>,
}

impl Bundle {
    fn new(args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("ferrio-mon-")
            .tempdir()
            .unwrap();
        let suffix: u64 = rand::random();
        let id = format!("ferrio-mon-test-{suffix:x}");
        let cgroup = format!("/{id}");
        let bundle = dir.path().join("bundle");
        let bin = bundle.join("rootfs/bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap();
        std::fs::set_permissions(bin.join("busybox"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir_all(dir.path().join("runc")).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let out = Command::new(RUNC)
            .arg("spec")
            .current_dir(&bundle)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runc spec: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = bundle.join("config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["process"]["args"] = serde_json::json!(args);
        spec["process"]["terminal"] = serde_json::json!(false);
        spec["root"]["path"] = serde_json::json!("rootfs");
        spec["linux"]["cgroupsPath"] = serde_json::json!(cgroup);
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        Bundle {
            dir,
            id,
            cgroup,
            monitor_pid: None,
        }
    }

    /// Edits the bundle's config.json.
    fn edit_spec(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let path = self.path("bundle/config.json");
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut spec);
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_path(&self) -> PathBuf {
        self.path("logs/0.log")
    }

    fn request(&self) -> MonitorSpawn {
        MonitorSpawn {
            monitor_path: MONITOR.into(),
            id: self.id.clone(),
            bundle: self.path("bundle"),
            runtime_path: RUNC.into(),
            runtime_root: self.path("runc"),
            log_path: Some(self.log_path()),
            exit_file: self.path("exit"),
            pid_file: self.path("bundle/pid"),
            handle_file: Some(self.path("monitor.handle")),
            cgroup_path: Some(self.cgroup.clone()),
            cgroup_dir: Some(self.cgroup.clone()),
            tty: false,
            stdin: false,
            stdin_once: false,
            cgroup_v1_view: false,
            scope: None,
            run: false,
        }
    }

    fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new(RUNC)
            .arg("--root")
            .arg(self.path("runc"))
            .args(args)
            .output()
            .unwrap()
    }

    fn start(&self) {
        let out = self.runc(&["start", &self.id]);
        assert!(
            out.status.success(),
            "runc start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn wait(&self, spawned: &Spawned) -> ExitRecord {
        let rec = tokio::time::timeout(
            Duration::from_secs(30),
            monitor::wait_exit(spawned.monitor(), &self.path("exit")),
        )
        .await
        .expect("container exits within 30s")
        .expect("wait_exit")
        .expect("exit file written");
        // The exit file is the monitor's last act; the process itself follows right after.
        let until = Instant::now() + Duration::from_secs(5);
        while alive(spawned.monitor_pid) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive(spawned.monitor_pid), "monitor gone after the exit");
        rec
    }

    /// (stream, tag, text) of every record of the log file, with each timestamp checked.
    fn log_records(&self) -> Vec<(String, String, String)> {
        let text = std::fs::read_to_string(self.log_path()).unwrap();
        assert!(text.ends_with('\n'), "log ends with a newline: {text:?}");
        text.lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let ts = p.next().unwrap();
                chrono::DateTime::parse_from_rfc3339(ts).expect("rfc3339 timestamp");
                let frac = ts.split('.').nth(1).expect("fraction");
                assert!(
                    frac.len() >= 10 && frac[..9].bytes().all(|b| b.is_ascii_digit()),
                    "nine digits: {ts}"
                );
                let stream = p.next().unwrap().to_string();
                let tag = p.next().unwrap().to_string();
                (stream, tag, p.next().unwrap_or("").to_string())
            })
            .collect()
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        let _ = self.runc(&["delete", "-f", &self.id]);
        if let Some(pid) = self.monitor_pid {
            // Deleting the container ends its monitor; wait for that, and kill ours if stuck.
            let until = Instant::now() + Duration::from_secs(5);
            while alive(pid) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            if alive(pid) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        remove_cgroup_leaves(&self.cgroup);
    }
}

/// rmdir of the container's leaf in every cgroup hierarchy (v1 controllers and the v2 mount).
fn remove_cgroup_leaves(cgroup: &str) {
    let rel = cgroup.trim_start_matches('/');
    let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(rel));
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path().join(rel));
        }
    }
}

fn cgroup_leaves_left(cgroup: &str) -> Vec<PathBuf> {
    let rel = cgroup.trim_start_matches('/');
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join(rel))
        .filter(|p| p.exists())
        .collect()
}

/// Whether `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .map(|s| !s.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) && alive(pid) {
                found.push(pid);
            }
        }
    }
    found
}

fn unix_nanos_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test]
async fn stdout_and_stderr_are_logged_and_the_exit_code_recorded() {
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    let before = unix_nanos_now();
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    assert!(spawned.container_pid > 0);
    assert_ne!(spawned.monitor_pid, std::process::id() as i32);
    assert!(
        monitor::read_exit(&b.path("exit")).unwrap().is_none(),
        "no exit before start"
    );
    b.start();
    let rec = b.wait(&spawned).await;
    assert_eq!(rec.exit_code, 3);
    assert!(!rec.oom_killed);
    assert!(rec.finished_at >= before && rec.finished_at <= unix_nanos_now());
    let mut recs = b.log_records();
    recs.sort();
    assert_eq!(
        recs,
        vec![
            ("stderr".into(), "F".into(), "err".into()),
            ("stdout".into(), "F".into(), "out".into()),
        ]
    );
    assert_eq!(monitor::read_exit(&b.path("exit")).unwrap(), Some(rec));
}

/// With `run` the monitor's one runtime process creates and starts the container: no `start`,
/// and a process that exits before the runtime returns is still recorded with its code.
#[tokio::test]
async fn run_creates_and_starts_in_one_runtime_process() {
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", "echo out; exit 5"]);
    let req = MonitorSpawn {
        run: true,
        ..b.request()
    };
    let spawned = monitor::spawn(&req).await.expect("spawn with run");
    b.monitor_pid = Some(spawned.monitor_pid);
    assert!(spawned.container_pid > 0);
    let rec = b.wait(&spawned).await;
    assert_eq!(rec.exit_code, 5);
    assert_eq!(
        b.log_records(),
        vec![("stdout".into(), "F".into(), "out".into())]
    );
}

#[tokio::test]
async fn a_long_line_is_split_into_p_records_and_a_last_partial_line_kept() {
    let script = "head -c 40000 /dev/zero | tr '\\000' a; echo; printf tail";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
    let recs = b.log_records();
    let shape: Vec<(&str, &str, usize)> = recs
        .iter()
        .map(|(s, t, x)| (s.as_str(), t.as_str(), x.len()))
        .collect();
    let max = ferrio::monitor::log::MAX_LINE;
    assert_eq!(
        shape,
        vec![
            ("stdout", "P", max),
            ("stdout", "P", max),
            ("stdout", "F", 40000 - 2 * max),
            ("stdout", "P", 4),
        ]
    );
    assert!(recs[..3]
        .iter()
        .all(|(_, _, t)| t.bytes().all(|c| c == b'a')));
    assert_eq!(recs[3].2, "tail");
}

#[tokio::test]
async fn a_runtime_error_carries_runcs_message_and_leaves_nothing() {
    let b = Bundle::new(&["/no/such/binary"]);
    let err = monitor::spawn(&b.request())
        .await
        .expect_err("create must fail");
    let MonitorError::Runtime { id, message } = &err else {
        panic!("unexpected error {err:?}")
    };
    assert_eq!(id, &b.id);
    eprintln!("runc said: {message}");
    assert!(
        message.contains("/no/such/binary"),
        "runc's message: {message}"
    );
    assert!(
        !message.contains('\n'),
        "one message, not a log: {message:?}"
    );
    // Nothing of the monitor's is left: no process, no files, no runc state.
    let until = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&b.id).is_empty() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        processes_mentioning(&b.id),
        Vec::<i32>::new(),
        "no monitor or runtime left"
    );
    assert!(!b.path("exit").exists());
    assert!(!b.path("bundle/pid").exists());
    assert!(!b.log_path().exists(), "the log file it created is removed");
    assert!(!b.path("bundle/runtime-create.log").exists());
    assert!(!b.path("runc").join(&b.id).exists(), "no runc state");
    // runc itself may leave the cgroup leaf of a failed create (see environment.md): the daemon
    // removes it; here the bundle's drop does.
    drop(b);
}

#[tokio::test]
async fn no_log_path_discards_output_and_a_signal_is_128_plus_signo() {
    // The container's init ignores signals sent from inside its own pid namespace: kill it
    // from outside, as the daemon's StopContainer does.
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", "echo lost; exec sleep 100"]);
    let mut req = b.request();
    req.log_path = None;
    let spawned = monitor::spawn(&req).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    let out = b.runc(&["kill", &b.id, "KILL"]);
    assert!(
        out.status.success(),
        "runc kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.wait(&spawned).await.exit_code, 137);
    assert!(!b.log_path().exists());
}

/// The spawner (a shell standing in for the daemon) is gone before the container even starts:
/// the monitor lives on in its own session, logs, and records the exit for whoever asks.
#[tokio::test]
async fn the_monitor_outlives_its_spawner() {
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", "sleep 1; echo late; exit 7"]);
    let req = b.request();
    let sync = b.path("sync");
    let args = ferrio::monitor::protocol::MonitorArgs {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        runtime_path: req.runtime_path.clone(),
        runtime_root: req.runtime_root.clone(),
        pid_file: req.pid_file.clone(),
        exit_file: req.exit_file.clone(),
        log_path: req.log_path.clone(),
        cgroup_path: req.cgroup_path.clone(),
        ..Default::default()
    };
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg("exec \"$0\" \"$@\" 3>\"$SYNC\"")
        .arg(MONITOR)
        .args(args.to_args())
        .env("SYNC", &sync)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the first monitor process exits 0 at once"
    );
    // Wait for the monitor's report in the sync file.
    let until = Instant::now() + Duration::from_secs(20);
    let ((monitor_pid, monitor_start_time), container_pid) = loop {
        let text = std::fs::read_to_string(&sync).unwrap_or_default();
        let msgs: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let mpid = msgs.iter().find_map(|m| m["monitor_pid"].as_i64());
        let mstart = msgs.iter().find_map(|m| m["start_time"].as_u64());
        let cpid = msgs.iter().find_map(|m| m["pid"].as_i64());
        if let (Some(m), Some(t), Some(c)) = (mpid, mstart, cpid) {
            break ((m as i32, t), c as i32);
        }
        assert!(Instant::now() < until, "no report in {text:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    b.monitor_pid = Some(monitor_pid);
    let me = nix::unistd::Pid::this();
    let mpid = nix::unistd::Pid::from_raw(monitor_pid);
    assert_eq!(
        nix::unistd::getsid(Some(mpid)).unwrap(),
        mpid,
        "own session"
    );
    assert_ne!(
        nix::unistd::getsid(Some(mpid)).unwrap(),
        nix::unistd::getsid(None).unwrap()
    );
    let stat = std::fs::read_to_string(format!("/proc/{monitor_pid}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(ppid, me.as_raw(), "not our child");
    b.start();
    let spawned = Spawned {
        monitor_pid,
        monitor_start_time,
        container_pid,
    };
    let rec = b.wait(&spawned).await;
    assert_eq!(rec.exit_code, 7);
    assert_eq!(
        b.log_records(),
        vec![("stdout".into(), "F".into(), "late".into())]
    );
}

/// After the exit and `runc delete`, the container's cgroups are gone (the monitor does not keep
/// anything alive in them).
#[tokio::test]
async fn delete_after_exit_leaves_no_cgroup() {
    let mut b = Bundle::new(&["/bin/busybox", "true"]);
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
    let out = b.runc(&["delete", &b.id]);
    assert!(
        out.status.success(),
        "runc delete: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cgroup_leaves_left(&b.cgroup), Vec::<PathBuf>::new());
}

/// A container that outgrows its memory limit is OOM-killed: exit 137 and `oom_killed` from the
/// memory cgroup's counter.
#[tokio::test]
async fn an_oom_kill_is_recorded() {
    // The shell keeps the whole 64 MiB string in memory; the limit is 16 MiB without swap.
    let script = "x=$(head -c 67108864 /dev/zero | tr '\\000' a); echo survived";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let limit = 16 * 1024 * 1024;
    b.edit_spec(|spec| {
        spec["linux"]["resources"]["memory"] = serde_json::json!({ "limit": limit, "swap": limit });
    });
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    let rec = b.wait(&spawned).await;
    assert!(rec.oom_killed, "oom recorded: {rec:?}");
    assert_eq!(rec.exit_code, 137);
}

/// Text without a newline is not held back for ever: after a second it is logged as `P`.
#[tokio::test]
async fn a_waiting_partial_line_is_logged_before_its_newline() {
    let script = "printf 'prompt> '; sleep 2; echo answer";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    // While the container sleeps, the prompt is already in the log.
    let until = Instant::now() + Duration::from_millis(1900);
    let mut seen = false;
    while Instant::now() < until && !seen {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = std::fs::read_to_string(b.log_path())
            .unwrap_or_default()
            .contains("prompt>");
    }
    assert!(
        seen,
        "partial line logged before the container wrote its newline"
    );
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
    assert_eq!(
        b.log_records(),
        vec![
            ("stdout".into(), "P".into(), "prompt> ".into()),
            ("stdout".into(), "F".into(), "answer".into()),
        ]
    );
}

#[tokio::test]
async fn a_missing_monitor_binary_is_a_spawn_error() {
    let b = Bundle::new(&["/bin/busybox", "true"]);
    let mut req = b.request();
    req.monitor_path = b.path("no-such-monitor");
    let err = monitor::spawn(&req).await.expect_err("no binary");
    assert!(matches!(err, MonitorError::Spawn { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-monitor"), "{err}");
}

/// With `stdin` the container's stdin stays open (for attach) instead of reading EOF at once.
#[tokio::test]
async fn stdin_stays_open_when_asked() {
    let script = "if read x; then echo got; else echo eof; fi";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let mut req = b.request();
    req.stdin = true;
    let spawned = monitor::spawn(&req).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        monitor::read_exit(&b.path("exit")).unwrap().is_none(),
        "still reading stdin"
    );
    let out = b.runc(&["kill", &b.id, "KILL"]);
    assert!(
        out.status.success(),
        "runc kill: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(b.wait(&spawned).await.exit_code, 137);

    // Without it, stdin is /dev/null.
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
    assert_eq!(
        b.log_records(),
        vec![("stdout".into(), "F".into(), "eof".into())]
    );
}

/// Collects attach events until `pred` holds for the text so far; panics after 10s.
async fn read_until(
    r: &mut ferrio::monitor::attach::AttachReader,
    out: &mut String,
    err: &mut String,
    pred: impl Fn(&str, &str) -> bool,
) -> Option<i32> {
    use ferrio::monitor::attach::AttachEvent;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pred(out, err) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, r.next_event())
            .await
            .unwrap_or_else(|_| panic!("attach: waited 10s; stdout {out:?} stderr {err:?}"))
            .expect("attach event");
        match ev {
            Some(AttachEvent::Stdout(b)) => out.push_str(&String::from_utf8_lossy(&b)),
            Some(AttachEvent::Stderr(b)) => err.push_str(&String::from_utf8_lossy(&b)),
            Some(AttachEvent::Exit(code)) => return Some(code),
            None => panic!("attach closed; stdout {out:?} stderr {err:?}"),
        }
    }
    None
}

/// Two attach clients: output fans out to both by stream, stdin from one reaches the
/// container, and with stdin_once closing it ends the container; both hear the exit.
#[tokio::test]
async fn attach_fans_out_output_and_feeds_stdin() {
    use ferrio::monitor::attach::{socket_path, AttachClient, AttachStreams};
    let script = "while read l; do echo \"got $l\"; echo \"err $l\" >&2; done; echo bye";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let mut req = b.request();
    req.stdin = true;
    req.stdin_once = true;
    let spawned = monitor::spawn(&req).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    let sock = socket_path(&b.path("bundle"));
    let all = AttachStreams {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let (mut ra, mut wa) = AttachClient::connect(&sock, all).await.unwrap().split();
    let only_out = AttachStreams {
        stdout: true,
        ..Default::default()
    };
    let (mut rb, _wb) = AttachClient::connect(&sock, only_out)
        .await
        .unwrap()
        .split();
    b.start();
    wa.write_stdin(b"one\n").await.unwrap();
    let (mut out_a, mut err_a) = (String::new(), String::new());
    read_until(&mut ra, &mut out_a, &mut err_a, |o, e| {
        o.contains("got one") && e.contains("err one")
    })
    .await;
    let (mut out_b, mut err_b) = (String::new(), String::new());
    read_until(&mut rb, &mut out_b, &mut err_b, |o, _| {
        o.contains("got one")
    })
    .await;
    wa.write_stdin(b"two\n").await.unwrap();
    wa.close_stdin().await.unwrap();
    let code_a = read_until(&mut ra, &mut out_a, &mut err_a, |_, _| false).await;
    let code_b = read_until(&mut rb, &mut out_b, &mut err_b, |_, _| false).await;
    assert_eq!((code_a, code_b), (Some(0), Some(0)));
    assert_eq!(out_a, "got one\ngot two\nbye\n");
    assert_eq!(err_a, "err one\nerr two\n");
    assert_eq!(out_b, out_a, "the second client saw all of stdout");
    assert!(err_b.is_empty(), "no stderr for a client that did not ask");
    assert!(matches!(ra.next_event().await, Ok(None)));
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
    // The log has everything too.
    let texts: Vec<String> = b.log_records().into_iter().map(|r| r.2).collect();
    assert!(texts.contains(&"got two".to_string()), "{texts:?}");
}

/// A tty container: the monitor gets the pty master from runc, output and input go through
/// it, a resize is what the container sees, and the exit code comes back.
#[tokio::test]
async fn a_tty_container_is_attached_and_resized() {
    use ferrio::monitor::attach::{socket_path, AttachClient, AttachStreams};
    let mut b = Bundle::new(&["/bin/busybox", "sh"]);
    b.edit_spec(|s| s["process"]["terminal"] = serde_json::json!(true));
    let mut req = b.request();
    req.tty = true;
    req.stdin = true;
    let spawned = monitor::spawn(&req).await.expect("spawn with a tty");
    b.monitor_pid = Some(spawned.monitor_pid);
    let sock = socket_path(&b.path("bundle"));
    let streams = AttachStreams {
        stdin: true,
        stdout: true,
        stderr: true,
    };
    let (mut r, mut w) = AttachClient::connect(&sock, streams).await.unwrap().split();
    b.start();
    w.resize(123, 45).await.unwrap();
    w.write_stdin(b"stty size; tty; exit 7\n").await.unwrap();
    let (mut out, mut err) = (String::new(), String::new());
    let code = read_until(&mut r, &mut out, &mut err, |_, _| false).await;
    assert_eq!(code, Some(7), "{out:?}");
    assert!(out.contains("45 123"), "stty size sees the resize: {out:?}");
    assert!(out.contains("/dev/pts/"), "stdin is a terminal: {out:?}");
    assert!(err.is_empty(), "a tty has no separate stderr: {err:?}");
    assert_eq!(b.wait(&spawned).await.exit_code, 7);
    let texts: Vec<String> = b.log_records().into_iter().map(|r| r.2).collect();
    assert!(
        texts.iter().any(|t| t.contains("45 123")),
        "terminal output is logged: {texts:?}"
    );
}

/// ReopenLog while a counter runs: renamed files plus the new one hold every line once, in order.
#[tokio::test]
async fn log_reopen_loses_and_duplicates_nothing() {
    use ferrio::monitor::attach::{reopen_log, socket_path};
    let script = "i=0; while [ $i -lt 400 ]; do echo $i; i=$((i+1)); usleep 2000; done";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    let log = b.log_path();
    let mut rotated = Vec::new();
    for n in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        let to = b.path(&format!("logs/0.log.{n}"));
        std::fs::rename(&log, &to).unwrap();
        reopen_log(&socket_path(&b.path("bundle")))
            .await
            .expect("reopen");
        rotated.push(to);
    }
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
    rotated.push(log);
    let mut lines = Vec::new();
    for f in &rotated {
        for l in std::fs::read_to_string(f).unwrap().lines() {
            lines.push(l.splitn(4, ' ').nth(3).unwrap_or("").to_string());
        }
    }
    let want: Vec<String> = (0..400).map(|i| i.to_string()).collect();
    assert_eq!(lines, want);
    assert!(
        rotated[..5]
            .iter()
            .filter(|f| std::fs::metadata(f).unwrap().len() > 0)
            .count()
            >= 3,
        "rotations happened while it wrote"
    );
}

/// The monitor is a subreaper: nothing it adopts (the runtime's intermediate processes,
/// orphans of the container) stays a zombie while the container runs.
#[tokio::test]
async fn the_monitor_leaves_no_zombies() {
    let script = "for i in 1 2 3 4 5; do (sleep 0.1 &) ; done; sleep 1; echo done";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut zombies = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let rest: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        if rest.first() == Some(&"Z")
            && rest.get(1) == Some(&spawned.monitor_pid.to_string().as_str())
        {
            zombies.push(e.file_name());
        }
    }
    assert!(
        zombies.is_empty(),
        "zombie children of the monitor: {zombies:?}"
    );
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
}

/// Stands in for systemd: "starts" a monitor's scope by moving the process into a cgroup of that
/// name in the hierarchy `/proc/<pid>/cgroup` reports systemd's units in (the unified one here),
/// and records what it was asked.
struct CgroupfsScopes {
    base: PathBuf,
    asked: std::sync::Mutex<Vec<ferrio::systemd::TransientUnit>>,
}

impl ferrio::systemd::UnitControl for CgroupfsScopes {
    fn start_transient<'a>(
        &'a self,
        unit: &'a ferrio::systemd::TransientUnit,
    ) -> futures::future::BoxFuture<'a, Result<(), ferrio::systemd::SystemdError>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(unit.clone());
            let pids = unit.properties.iter().find_map(|(k, v)| match v {
                ferrio::systemd::PropertyValue::U32Array(p) if *k == "PIDs" => Some(p.clone()),
                _ => None,
            });
            let dir = self.base.join(&unit.name);
            std::fs::create_dir_all(&dir).unwrap();
            for pid in pids.unwrap_or_default() {
                std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
            }
            Ok(())
        })
    }

    fn stop<'a>(
        &'a self,
        _name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), ferrio::systemd::SystemdError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Where systemd's units show in `/proc/self/cgroup`: its v1 `name=systemd` hierarchy, else
/// the unified one (`/sys/fs/cgroup/unified` on a hybrid host).
fn unit_hierarchy() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    if own.lines().any(|l| l.contains(":name=systemd:")) {
        return Some("/sys/fs/cgroup/systemd".into());
    }
    if !own.lines().any(|l| l.starts_with("0::")) {
        return None;
    }
    let unified = Path::new("/sys/fs/cgroup/unified");
    Some(if unified.is_dir() {
        unified.into()
    } else {
        "/sys/fs/cgroup".into()
    })
}

/// With a scope requested, the monitor is moved while the runtime creates the container, and
/// the spawn returns only once the move shows in `/proc/<monitor>/cgroup`.
#[tokio::test]
async fn the_monitor_is_moved_into_its_scope_during_the_create() {
    let hierarchy = unit_hierarchy().expect("this test needs a cgroup2 or name=systemd hierarchy");
    let base = hierarchy.join(format!("ferrio-scope-test-{}", std::process::id()));
    let scopes = std::sync::Arc::new(CgroupfsScopes {
        base: base.clone(),
        asked: Default::default(),
    });
    let mut b = Bundle::new(&["/bin/busybox", "true"]);
    let mut req = b.request();
    req.scope = Some(monitor::MonitorScope {
        units: scopes.clone(),
        slice: "kubepods-pod1.slice".into(),
    });
    let spawned = monitor::spawn(&req).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    let unit = format!("ferrio-monitor-{}.scope", b.id);
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", spawned.monitor_pid)).unwrap();
    assert!(own.contains(&format!("/{unit}\n")), "{own}");
    let asked = scopes.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        [ferrio::systemd::TransientUnit::monitor_scope(
            &b.id,
            spawned.monitor_pid,
            "kubepods-pod1.slice"
        )]
    );
    b.start();
    assert_eq!(b.wait(&spawned).await.exit_code, 0);
    // The monitor is gone: its cgroup (systemd would collect the scope) can go.
    let _ = std::fs::remove_dir(base.join(&unit));
    std::fs::remove_dir(&base).expect("test cgroups removed");
}

/// The monitor signals the container's init on request (StopContainer's stop signal), from
/// outside the container's pid namespace as the runtime's kill does: a trapped SIGTERM reaches
/// the init. Once the init is gone there is nothing to signal, and the request fails.
#[tokio::test]
async fn the_monitor_signals_the_init_on_request() {
    use ferrio::monitor::attach::{signal, socket_path, AttachError};
    let script = "trap 'echo got TERM; exit 42' TERM; echo ready; while :; do usleep 20000; done";
    let mut b = Bundle::new(&["/bin/busybox", "sh", "-c", script]);
    let spawned = monitor::spawn(&b.request()).await.expect("spawn");
    b.monitor_pid = Some(spawned.monitor_pid);
    b.start();
    let socket = socket_path(&b.path("bundle"));
    let until = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(b.log_path())
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(Instant::now() < until, "the trap is set within 10s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(&socket, libc::SIGTERM).await.expect("signal");
    assert_eq!(b.wait(&spawned).await.exit_code, 42);
    assert!(b
        .log_records()
        .iter()
        .any(|(_, _, line)| line == "got TERM"));
    match signal(&socket, libc::SIGTERM).await {
        Err(AttachError::Connect { .. } | AttachError::Refused(_)) => {}
        other => panic!("signal after the exit: {other:?}"),
    }
}

#[test]
fn the_cgroup_attach_warm_up_moves_a_thread_only_into_its_own_cgroup() {
    let Some(warm) = ferrio::oci::attach_warm::AttachWarm::of_host() else {
        println!("SKIPPED: no cgroup v1 hierarchy on this host, so no warm-up to check");
        return;
    };
    let before = std::fs::read_to_string("/proc/thread-self/cgroup").unwrap();
    warm.warm_now().expect("the kernel takes the write");
    assert_eq!(
        std::fs::read_to_string("/proc/thread-self/cgroup").unwrap(),
        before,
        "the thread is where it was in every hierarchy"
    );
}
