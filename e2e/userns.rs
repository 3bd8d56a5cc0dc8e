//! Pods with a user namespace of their own (`hostUsers: false`) against a real daemon, on
//! runc and on crun: the rootfs and the volumes are idmapped, so files keep their owners on
//! the host while the container sees them through its mappings, and the container's
//! processes run as unprivileged host ids.

use crate::harness::{
    container_config, pod_config, pull, run_pod, start_container, stop_and_remove_pod, Cri, Daemon,
    LearnedPids, Opts,
};
use ferrio::cri::v1::{
    ContainerStatusRequest, ExecSyncRequest, IdMapping, LinuxSandboxSecurityContext, Mount,
    NamespaceMode, NamespaceOption, PodSandboxConfig, RemoveContainerRequest, StatusRequest,
    UserNamespace,
};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use tonic::Code;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
/// The host ids of the container's 0..65536, where kubelet would put a pod (a multiple of
/// 65536 above the host's own users).
const HOST_BASE: u32 = 30 * 65536;

fn with_userns(config: &mut PodSandboxConfig, uids: Vec<IdMapping>, gids: Vec<IdMapping>) {
    config
        .linux
        .get_or_insert_with(Default::default)
        .security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption {
            userns_options: Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids,
                gids,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
}

fn range(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        host_id,
        container_id,
        length,
    }
}

async fn sh(cri: &mut Cri, id: &str, script: &str) -> String {
    let r = cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"))
        .into_inner();
    assert_eq!(
        r.exit_code,
        0,
        "{script:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).trim().to_string()
}

/// The `Uid:` line of /proc/<pid>/status: real, effective, saved, fs.
fn host_uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

async fn userns_pod_on(handler: &str) {
    let d = Daemon::start(Opts::default()).await;
    let mut cri = d.client().await;
    let mut learned = LearnedPids::default();
    pull(&mut cri, BUSYBOX).await;

    let status = cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let name = if handler.is_empty() { "runc" } else { handler };
    let features = status
        .runtime_handlers
        .iter()
        .find(|h| h.name == name)
        .and_then(|h| h.features)
        .unwrap_or_else(|| panic!("no handler {name}: {:?}", status.runtime_handlers));
    assert!(features.user_namespaces, "{name}: {features:?}");

    // A volume with a file of host root and one of host uid 1000.
    let vol = d.env().dir().join("userns-volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("root-file"), "r").unwrap();
    std::fs::write(vol.join("user-file"), "u").unwrap();
    std::os::unix::fs::chown(vol.join("user-file"), Some(1000), Some(1000)).unwrap();

    let mut pod = pod_config(d.env(), &format!("userns-{name}"));
    with_userns(
        &mut pod,
        vec![range(0, HOST_BASE, 65536)],
        vec![range(0, HOST_BASE, 65536)],
    );
    let pod_id = run_pod(&mut cri, &pod, handler)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox on {name}: {e}"));
    let mut ctr = container_config("app", BUSYBOX, &["sleep", "1000"]);
    ctr.mounts.push(Mount {
        container_path: "/vol".into(),
        host_path: vol.to_string_lossy().into_owned(),
        ..Default::default()
    });
    let id = start_container(&mut cri, &pod_id, &pod, ctr).await;

    // The container is root in its namespace, and its process an unprivileged host uid.
    assert_eq!(sh(&mut cri, &id, "id -u").await, "0");
    let map = sh(&mut cri, &id, "cat /proc/self/uid_map").await;
    assert_eq!(
        map.split_whitespace().collect::<Vec<_>>(),
        ["0".to_string(), HOST_BASE.to_string(), "65536".to_string()]
    );
    let info = cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info;
    let info: serde_json::Value = serde_json::from_str(info.get("info").unwrap()).unwrap();
    let pid = info["status"]["pid"].as_u64().expect("status.pid") as u32;
    learned.add(pid, "userns container");
    assert_eq!(host_uids(pid), vec![HOST_BASE; 4], "pid {pid}");

    // The image's files are root's inside, through the idmapped layers.
    assert_eq!(
        sh(&mut cri, &id, "stat -c %u:%g /bin/busybox /etc").await,
        "0:0\n0:0"
    );
    // What root writes lands in the upper dir as the mapped host uid; the layers are untouched.
    sh(
        &mut cri,
        &id,
        "echo hi > /made-by-root && echo more >> /etc/passwd",
    )
    .await;
    let upper = d.env().root().join("overlay").join(&id).join("upper");
    let made = std::fs::metadata(upper.join("made-by-root")).unwrap();
    assert_eq!((made.uid(), made.gid()), (HOST_BASE, HOST_BASE));
    assert_eq!(
        std::fs::metadata(upper.join("etc/passwd")).unwrap().uid(),
        HOST_BASE
    );

    // The volume keeps its owners on the host and shows them mapped inside.
    assert_eq!(
        sh(&mut cri, &id, "stat -c %u /vol/root-file /vol/user-file").await,
        "0\n1000"
    );
    sh(&mut cri, &id, "echo new > /vol/by-container-root").await;
    let written = std::fs::metadata(vol.join("by-container-root")).unwrap();
    assert_eq!((written.uid(), written.gid()), (0, 0));
    assert_eq!(
        std::fs::metadata(vol.join("user-file")).unwrap().uid(),
        1000
    );

    // Nothing idmapped stays staged once the runtime made its binds.
    let staging = d.env().runroot().join("idmapped").join(&id);
    assert!(!staging.exists(), "{} is left", staging.display());

    cri.rt
        .stop_container(ferrio::cri::v1::StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .unwrap();
    cri.rt
        .remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    stop_and_remove_pod(&mut cri, &pod_id).await;
    for leftover in [
        d.env().runroot().join("idmapped").join(&pod_id),
        d.env().runroot().join("idmapped").join(&id),
        d.env().runroot().join("ns/userns").join(&pod_id),
    ] {
        assert!(!leftover.exists(), "{} is left", leftover.display());
    }
    d.assert_no_leaks(&learned);
}

#[tokio::test]
async fn a_userns_pod_on_runc_sees_root_while_the_host_keeps_owners() {
    userns_pod_on("").await;
}

#[tokio::test]
async fn a_userns_pod_on_crun_sees_root_while_the_host_keeps_owners() {
    if !Path::new("/usr/bin/crun").exists() {
        println!("SKIPPED: /usr/bin/crun is not installed");
        return;
    }
    userns_pod_on("crun").await;
}

#[tokio::test]
async fn bad_user_namespace_requests_are_refused_and_leave_nothing() {
    let d = Daemon::start(Opts::default()).await;
    let mut cri = d.client().await;
    let good = || vec![range(0, HOST_BASE, 65536)];
    for (i, (uids, why)) in [
        (vec![range(0, HOST_BASE, 0)], "length 0"),
        (vec![range(0, 0, 65536)], "host's root"),
        (vec![range(5, HOST_BASE, 10)], "not mapped"),
        (
            vec![range(0, HOST_BASE, 100), range(50, HOST_BASE + 1000, 100)],
            "overlap",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let mut pod = pod_config(d.env(), &format!("userns-bad-{i}"));
        with_userns(&mut pod, uids, good());
        let e = run_pod(&mut cri, &pod, "").await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(e.message().contains(why), "{e}");
        assert!(e.message().contains("userns_options.uids"), "{e}");
    }
    // A user namespace with the host's network cannot own it.
    let mut pod = pod_config(d.env(), "userns-hostnet");
    with_userns(&mut pod, good(), good());
    if let Some(NamespaceOption { network, .. }) = pod
        .linux
        .as_mut()
        .and_then(|l| l.security_context.as_mut())
        .and_then(|s| s.namespace_options.as_mut())
    {
        *network = NamespaceMode::Node as i32;
    }
    let e = run_pod(&mut cri, &pod, "").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("host's network"), "{e}");
    d.assert_no_leaks(&LearnedPids::default());
}
