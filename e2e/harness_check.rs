//! The harness checks itself: its config is what the daemon loads, and its leak check sees real
//! leftovers (a CNI attachment made with the real plugins, a mount, a process, a cgroup) that its
//! cleanup then removes. Runs without a working daemon.

use crate::harness::{rand_hex, Env, LearnedPids, Opts};
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn env_config_is_private_and_loads() {
    let env = Env::new(Opts::default());
    let dir = env.dir().to_path_buf();
    let c = ferrio::config::Config::load(Some(&env.config_path()), Some(&env.dropin_dir()))
        .expect("the generated config loads");
    assert_eq!(&c, env.config());
    for p in [&c.root, &c.runroot, &c.api.listen, &c.network.network_dir] {
        assert!(
            p.starts_with(&dir),
            "{} is inside the temp dir",
            p.display()
        );
    }
    assert!(c.namespaces_dir().starts_with(&c.runroot));
    assert!(
        dir.starts_with("/var/tmp"),
        "overlay needs a real filesystem"
    );
    for prefix in ["registry.k8s.io", "docker.io"] {
        let r = c.registry_for(&format!("{prefix}/x:1")).expect("a mirror");
        assert!(!r.fallback, "tests never pull from the internet");
        assert_eq!(
            r.mirror[0].location,
            std::env::var(crate::harness::REGISTRY_ENV).unwrap()
        );
    }
    let conflists: Vec<_> = std::fs::read_dir(env.network_dir()).unwrap().collect();
    assert_eq!(conflists.len(), 1);
    assert!(env.bridge().len() <= 15, "bridge names fit IFNAMSIZ");
    assert!(env.leaks(&[], &LearnedPids::default()).is_empty());
    drop(env);
    assert!(!dir.exists(), "the temp dir is removed on drop");
}

/// Run one CNI plugin of the env's conflist as libcni does.
fn cni(env: &Env, command: &str, netns: &str, id: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(env.network_dir().join("10-e2e.conflist")).unwrap(),
    )
    .unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let mut child = Command::new("/opt/cni/bin/bridge")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the bridge plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "bridge {command}: {stdout} {out:?}");
    stdout
}

#[test]
fn leak_check_sees_leftovers_and_cleanup_removes_them() {
    let env = Env::new(Opts::default());
    let dir = env.dir().to_path_buf();

    // A CNI attachment: veth on the bridge, an IP reservation, masquerade rules.
    let netns = format!("fe2e-{}", rand_hex(8));
    let id = rand_hex(64);
    assert!(Command::new("ip")
        .args(["netns", "add", &netns])
        .status()
        .unwrap()
        .success());
    let result = cni(&env, "ADD", &netns, &id);
    assert!(result.contains(&env.subnet()[..9]), "{result}");

    // A mount, a process naming the temp dir, a cgroup under a test parent.
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "e2e-check"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let mut sleeper = Command::new("sh")
        .arg("-c")
        .arg(format!("sleep 300; : {}", dir.display()))
        .spawn()
        .unwrap();
    let parent = env.cgroup_parent();
    let cg = std::path::Path::new("/sys/fs/cgroup/pids").join(parent.trim_start_matches('/'));
    let made_cgroup = std::fs::create_dir_all(cg.join("leaf")).is_ok();
    let mut learned = LearnedPids::default();
    learned.add(sleeper.id(), "sleeper");
    // The leak check finds processes by the temp dir in their command line: wait until the child has
    // exec'd sh (right after fork its cmdline is still empty, and a busy machine can take a while).
    let cmdline = format!("/proc/{}/cmdline", sleeper.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&cmdline)
        .unwrap_or_default()
        .contains(&*dir.to_string_lossy())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sleeper never exec'd"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }

    let found = env.leaks(&[], &learned).join("\n");
    for want in [
        "still on bridge",
        "IP reservation",
        "iptables nat rule",
        "mount ",
        "still running",
        "(sleeper) still exists",
    ] {
        assert!(
            found.contains(want),
            "leak check reports {want:?}:\n{found}"
        );
    }
    if made_cgroup {
        assert!(found.contains("cgroup directory"), "{found}");
    }

    // The netns goes first (as a crashed test would leave it), then the harness cleans up.
    let _ = Command::new("ip").args(["netns", "del", &netns]).status();
    env.clean_up();
    let _ = sleeper.wait();
    let left = env.leaks(&[], &learned);
    assert!(
        left.iter().all(|l| l.starts_with("IP reservation")),
        "cleanup removed all but the IPAM files (removed with the temp dir): {left:?}"
    );
    assert!(!cg.exists());
    assert!(!std::path::Path::new(&format!("/sys/class/net/{}", env.bridge())).exists());
}

/// The leak check against a real daemon: a running pod with a running container is seen as
/// everything a pod holds (so the lifecycle tests' clean result means something), and removing
/// them through CRI leaves nothing.
#[tokio::test]
async fn leak_check_sees_a_running_pod() {
    use crate::harness::{container_config, pod_config, wait_for_container_state, Daemon};
    use ferrio::cri::v1::*;

    let d = Daemon::start(Opts::default()).await;
    let env = d.env().clone();
    let mut cri = d.client().await;
    let image = "docker.io/library/busybox:1.36";
    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    let pod = pod_config(&env, "leaky");
    let parent = pod.linux.as_ref().unwrap().cgroup_parent.clone();
    let pod_id = cri
        .rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let ctr_id = cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container_config("sleeper", image, &["sleep", "1000"])),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    cri.rt
        .start_container(StartContainerRequest {
            container_id: ctr_id.clone(),
        })
        .await
        .unwrap();
    wait_for_container_state(
        &mut cri,
        &ctr_id,
        ContainerState::ContainerRunning,
        std::time::Duration::from_secs(10),
    )
    .await;
    let mut learned = LearnedPids::default();
    learned.learn_cgroup(&parent);

    let found = env.leaks(&[d.pid()], &learned).join("\n");
    for want in [
        "mount ",
        "namespace file",
        "runc state",
        "still on bridge",
        "IP reservation",
        "iptables nat rule",
        "cgroup directory",
        "process ",
        "still exists",
    ] {
        assert!(
            found.contains(want),
            "a running pod shows {want:?}:\n{found}"
        );
    }

    cri.rt
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap();
    cri.rt
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id,
        })
        .await
        .unwrap();
    d.assert_no_leaks(&learned);
}
