//! Security and device features of a container's spec against a real daemon: a TARGET pid
//! namespace (`kubectl debug --target`), OCI hooks from a hooks directory, CDI devices.

use crate::harness::{
    container_config, pod_config, run_pod, stop_and_remove_pod, wait_for_container_state, Daemon,
    Opts, Pod, BUSYBOX,
};
use ferrio::config::Config;
use ferrio::cri::v1::{
    CdiDevice, ContainerConfig, ContainerState, CreateContainerRequest, LinuxContainerConfig,
    LinuxContainerSecurityContext, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

fn security(config: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    config
        .linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// A container whose pid namespace is `target`'s.
fn debug_container(name: &str, target: &str) -> ContainerConfig {
    let mut c = container_config(name, BUSYBOX, &["sleep", "1000"]);
    security(&mut c).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: target.into(),
        ..Default::default()
    });
    c
}

#[tokio::test]
async fn a_target_pid_namespace_sees_the_target_containers_processes() {
    let d = Daemon::start(Opts::default()).await;
    // Each container of this pod has a pid namespace of its own, so only TARGET shares one.
    let mut p = Pod::on_with(d, "target-pid", |c| {
        c.linux
            .get_or_insert_with(Default::default)
            .security_context = Some(LinuxSandboxSecurityContext {
            namespace_options: Some(NamespaceOption {
                pid: NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    })
    .await;
    let target = p
        .run_config(container_config("app", BUSYBOX, &["sleep", "4242"]))
        .await;
    let ps = "ps -o args";

    // A container of the pod with its own pid namespace does not see the target's process.
    let other = p
        .run_config(container_config("other", BUSYBOX, &["sleep", "1000"]))
        .await;
    let (code, out, err) = p.sh(&other, ps).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("sleep 4242"), "{out}");

    // The debug container sees it, and itself.
    let debug = p.run_config(debug_container("debug", &target)).await;
    let (code, out, err) = p.sh(&debug, ps).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("sleep 4242"), "{out}");
    assert!(out.contains("sleep 1000"), "{out}");
    // The target's init is pid 1 of the namespace they share.
    let (_, out, _) = p.sh(&debug, "cat /proc/1/cmdline | tr '\\0' ' '").await;
    assert_eq!(out.trim(), "sleep 4242");

    // Stopping the debug container leaves the target running.
    p.stop_ctr(&debug, 2).await;
    wait_for_container_state(
        &mut p.cri,
        &debug,
        ContainerState::ContainerExited,
        Duration::from_secs(10),
    )
    .await;
    let (code, out, _) = p.sh(&target, ps).await;
    assert_eq!(code, 0);
    assert!(out.contains("sleep 4242"), "{out}");
    assert!(!out.contains("sleep 1000"), "{out}");

    // Refusals: no target, an unknown one, a target that does not run.
    let e = p
        .try_create(debug_container("no-target", ""))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("target_id"), "{e}");
    let e = p
        .try_create(debug_container("unknown-target", "0123456789abcdef"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("0123456789abcdef"), "{e}");
    let e = p
        .try_create(debug_container("exited-target", &debug))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&debug), "{e}");
    // A target of another pod.
    let other_pod = pod_config(p.d.env(), "target-pid-other");
    let other_pod_id = run_pod(&mut p.cri, &other_pod, "")
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"));
    let e = p
        .cri
        .rt
        .create_container(CreateContainerRequest {
            pod_sandbox_id: other_pod_id.clone(),
            config: Some(debug_container("foreign-target", &target)),
            sandbox_config: Some(other_pod),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("another pod"), "{e}");
    stop_and_remove_pod(&mut p.cri, &other_pod_id).await;

    p.finish().await;
}

/// A daemon reading OCI hooks and CDI specs from directories of `dir`.
async fn daemon_with_dirs(dir: &Path) -> Daemon {
    let (hooks, cdi) = (dir.join("hooks.d"), dir.join("cdi"));
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::create_dir_all(&cdi).unwrap();
    Daemon::start(Opts {
        configure: Some(Box::new(move |c: &mut Config| {
            c.runtime.hooks_dir = vec![hooks.clone()];
            c.runtime.cdi_spec_dirs = vec![dir_that_does_not_exist(), cdi.clone()];
        })),
        ..Default::default()
    })
    .await
}

fn dir_that_does_not_exist() -> PathBuf {
    PathBuf::from("/nonexistent/ferrio-e2e-cdi")
}

#[tokio::test]
async fn oci_hooks_from_a_hooks_dir_run_with_the_state_on_stdin() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = daemon_with_dirs(dir.path()).await;
    let mut p = Pod::on_with(d, "hooks", |_| {}).await;
    // Written after the daemon started: the directory is read again when it changes.
    let out = dir.path().join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let script = dir.path().join("hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ncat > {}/\"$1\".json\n", out.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.path().join("hooks.d/50-e2e.json"),
        format!(
            r#"{{"version":"1.0.0",
                "hook":{{"path":"{}","args":["hook.sh","create-runtime"]}},
                "when":{{"annotations":{{"^e2e\\.ferrio\\.dev/hook$":"^yes$"}}}},
                "stages":["createRuntime"]}}"#,
            script.display()
        ),
    )
    .unwrap();
    // Hooks of the later stages, which the runtime runs at start and at delete.
    for (file, arg, stage) in [
        ("51-poststart.json", "poststart", "poststart"),
        ("52-poststop.json", "poststop", "poststop"),
    ] {
        std::fs::write(
            dir.path().join("hooks.d").join(file),
            format!(
                r#"{{"version":"1.0.0","hook":{{"path":"{}","args":["hook.sh","{arg}"]}},
                    "when":{{"annotations":{{"^e2e\\.ferrio\\.dev/hook$":"^yes$"}}}},
                    "stages":["{stage}"]}}"#,
                script.display()
            ),
        )
        .unwrap();
    }
    // An invalid file beside it is skipped, not fatal.
    std::fs::write(dir.path().join("hooks.d/60-bad.json"), "{ not json").unwrap();

    let mut hooked = container_config("hooked", BUSYBOX, &["sleep", "1000"]);
    hooked
        .annotations
        .insert("e2e.ferrio.dev/hook".into(), "yes".into());
    let id = p.run_config(hooked).await;
    let state = std::fs::read_to_string(out.join("create-runtime.json"))
        .expect("the hook wrote the state it got on stdin");
    let state: serde_json::Value = serde_json::from_str(&state).expect("the state is JSON");
    assert_eq!(state["id"], id, "{state}");
    assert!(state["pid"].as_i64().unwrap_or(0) > 0, "{state}");
    let state = std::fs::read_to_string(out.join("poststart.json")).expect("poststart ran");
    assert!(state.contains(&id), "{state}");
    p.stop_ctr(&id, 2).await;
    wait_for_container_state(
        &mut p.cri,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(10),
    )
    .await;
    let state = std::fs::read_to_string(out.join("poststop.json")).expect("poststop ran");
    assert!(state.contains(&id), "{state}");

    // A container that does not match gets no hook.
    for f in ["create-runtime.json", "poststart.json", "poststop.json"] {
        std::fs::remove_file(out.join(f)).unwrap();
    }
    let plain = p
        .run_config(container_config("plain", BUSYBOX, &["sleep", "1000"]))
        .await;
    p.stop_ctr(&plain, 2).await;
    wait_for_container_state(
        &mut p.cri,
        &plain,
        ContainerState::ContainerExited,
        Duration::from_secs(10),
    )
    .await;
    let ran: Vec<_> = std::fs::read_dir(&out).unwrap().flatten().collect();
    assert!(ran.is_empty(), "{ran:?}");
    p.finish().await;
}

#[tokio::test]
async fn cdi_devices_inject_a_device_node_an_env_var_and_a_mount() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let d = daemon_with_dirs(dir.path()).await;
    let mut p = Pod::on_with(d, "cdi", |_| {}).await;
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("marker"), "from the cdi spec\n").unwrap();
    std::fs::write(
        dir.path().join("cdi/e2e.yaml"),
        format!(
            r#"cdiVersion: "0.6.0"
kind: e2e.ferrio.dev/test
containerEdits:
  env: ["FERRIO_CDI_VENDOR=e2e"]
devices:
  - name: null2
    containerEdits:
      env: ["FERRIO_CDI=null2"]
      deviceNodes:
        - path: /dev/ferrio-null
          hostPath: /dev/null
      mounts:
        - hostPath: {}
          containerPath: /cdi-share
          options: [ro, nosuid, nodev, bind]
"#,
            share.display()
        ),
    )
    .unwrap();

    let check = "test -c /dev/ferrio-null && echo written > /dev/ferrio-null && \
                 echo \"$FERRIO_CDI $FERRIO_CDI_VENDOR\" && cat /cdi-share/marker && \
                 if touch /cdi-share/x 2>/dev/null; then echo writable; fi";
    // By the CRI field.
    let mut by_field = container_config("by-field", BUSYBOX, &["sleep", "1000"]);
    by_field.cdi_devices = vec![CdiDevice {
        name: "e2e.ferrio.dev/test=null2".into(),
    }];
    let id = p.run_config(by_field).await;
    let (code, out, err) = p.sh(&id, check).await;
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out, "null2 e2e\nfrom the cdi spec\n");

    // By the annotation kubelet still sends.
    let mut by_annotation = container_config("by-annotation", BUSYBOX, &["sleep", "1000"]);
    by_annotation
        .annotations
        .insert("cdi.k8s.io/e2e".into(), "e2e.ferrio.dev/test=null2".into());
    let id = p.run_config(by_annotation).await;
    let (code, out, err) = p.sh(&id, check).await;
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out, "null2 e2e\nfrom the cdi spec\n");

    // An unknown device is refused by name.
    let mut unknown = container_config("unknown", BUSYBOX, &["sleep", "1000"]);
    unknown.cdi_devices = vec![CdiDevice {
        name: "e2e.ferrio.dev/test=nope".into(),
    }];
    let e = p.try_create(unknown).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("e2e.ferrio.dev/test=nope"), "{e}");
    p.finish().await;
}
