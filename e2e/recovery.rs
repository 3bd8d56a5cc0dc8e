//! Surviving a reboot: runroot is empty, every process is gone, but root still has the records.

use crate::harness::{
    container_config, pod_config, wait_for_container_state, Daemon, LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerState, ContainerStatusRequest, CreateContainerRequest, ImageSpec, PodSandboxState,
    PodSandboxStatusRequest, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let d = dir.to_string_lossy().to_string();
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&d))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.len()));
    v
}

/// Every pid whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != me)
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Pids in the cgroup `parent` (any v1 hierarchy or v2).
fn cgroup_pids(parent: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let base = h.path().join(parent.trim_start_matches('/'));
        let mut stack = vec![base];
        while let Some(d) = stack.pop() {
            if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
                out.extend(t.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn kill_all(pids: &[i32]) {
    for p in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    for _ in 0..100 {
        if pids.iter().all(|p| {
            !Path::new(&format!("/proc/{p}/cmdline")).exists()
                || std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| c.is_empty())
                    .unwrap_or(true)
        }) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A reboot also empties the netfilter tables: drop the nat rules and chains of `network`.
fn flush_nat_rules_of(network: &str) {
    let out = std::process::Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables -S");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut chains = Vec::new();
    for rule in text
        .lines()
        .filter(|l| l.starts_with("-A ") && l.contains(network))
    {
        // iptables -S quotes like a shell, so let the shell split it back.
        let del = format!("iptables -t nat -D {}", &rule[3..]);
        let _ = std::process::Command::new("sh").args(["-c", &del]).status();
        if let Some(target) = rule.split(" -j ").nth(1) {
            if target.starts_with("CNI-") {
                chains.push(target.trim().to_string());
            }
        }
    }
    for c in chains {
        let _ = std::process::Command::new("iptables")
            .args(["-t", "nat", "-F", &c])
            .status();
        let _ = std::process::Command::new("iptables")
            .args(["-t", "nat", "-X", &c])
            .status();
    }
}

#[tokio::test]
async fn reboot_marks_containers_exited_and_remove_reclaims_everything() {
    let daemon = Daemon::start(Opts::default()).await;
    let env = Arc::clone(daemon.env());
    let mut cri = daemon.client().await;
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
    let pod = pod_config(&env, "reboot");
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
            config: Some(container_config("sleeper", BUSYBOX, &["sleep", "1000"])),
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
        ContainerState::ContainerRunning,
        Duration::from_secs(20),
    )
    .await;
    drop(cri);
    let status = daemon.stop();
    assert!(status.success(), "daemon exit: {status:?}");

    // "Reboot": every process of the pod and every monitor dies, every mount goes away, and the
    // tmpfs runroot comes back empty. Only root (records, CNI cache, IPAM) survives.
    let mut victims = pids_mentioning(&env.dir().to_string_lossy());
    for parent in env.cgroup_parents() {
        victims.extend(cgroup_pids(&parent));
    }
    kill_all(&victims);
    for m in mounts_under(env.dir()) {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    flush_nat_rules_of(env.network_name());
    let runroot = env.runroot();
    std::fs::remove_dir_all(&runroot).expect("clear runroot");
    std::fs::create_dir_all(&runroot).unwrap();
    std::fs::write(
        env.root().join("boot_id"),
        "00000000-0000-0000-0000-000000000000\n",
    )
    .unwrap();

    let daemon = Daemon::start_on(&env).await;
    let mut cri = daemon.client().await;
    let c = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: cid.clone(),
            verbose: false,
        })
        .await
        .expect("ContainerStatus after reboot")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(c.state, ContainerState::ContainerExited as i32);
    assert_eq!(c.exit_code, 255);
    assert!(c.finished_at > 0);
    assert!(c.message.contains("rebooted"), "{}", c.message);
    let p = cri
        .rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .expect("PodSandboxStatus after reboot")
        .into_inner()
        .status
        .unwrap();
    assert_eq!(p.state, PodSandboxState::SandboxNotready as i32);

    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox after reboot");
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("RemovePodSandbox after reboot");
    daemon.assert_no_leaks(&LearnedPids::default());
}

/// Under systemd (Type=notify) READY=1 arrives once recovery is done and the socket serves, and
/// a second daemon on the same socket is refused with a clear message.
#[tokio::test]
async fn notifies_systemd_when_serving_and_refuses_a_second_daemon() {
    use crate::harness::{ferrio_bin, Env};
    let env = Arc::new(Env::new(Opts::default()));
    let notify_path = env.dir().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut child = std::process::Command::new(ferrio_bin())
        .arg("--config")
        .arg(env.config_path())
        .arg("--config-dir")
        .arg(env.dropin_dir())
        .env("NOTIFY_SOCKET", &notify_path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 from ferrio");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1"), "{msg}");
    assert!(env.socket().exists(), "READY only once the socket is there");

    let second = std::process::Command::new(ferrio_bin())
        .arg("--config")
        .arg(env.config_path())
        .arg("--config-dir")
        .arg(env.dropin_dir())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("another ferrio"), "{err}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!env.socket().exists(), "the socket is removed on shutdown");
}
