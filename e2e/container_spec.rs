//! ContainerConfig end to end: containers run under real runc through the daemon, print what they
//! see (ids, capabilities, masks, mounts) to their CRI log, and the test reads the log. Also
//! UpdateContainerResources (cgroup files and ContainerStatus), the stats RPCs and Status features.

use crate::harness::{
    container_config, pod_config, wait_for_container_state, Cri, Daemon, Env, LearnedPids, Opts,
    REGISTRY_ENV,
};
use ferrio::cri::v1::{
    security_profile::ProfileType, Capability, ContainerConfig, ContainerState,
    ContainerStatsRequest, ContainerStatus, ContainerStatusRequest, CreateContainerRequest, Device,
    ExecSyncRequest, HugepageLimit, ImageSpec, Int64Value, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxSandboxSecurityContext,
    ListContainerStatsRequest, ListContainersRequest, ListMetricDescriptorsRequest,
    ListPodSandboxMetricsRequest, ListPodSandboxStatsRequest, Mount, MountPropagation,
    PodSandboxConfig, PodSandboxStatsRequest, PullImageRequest, RemoveContainerRequest,
    RemoveImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest, SecurityProfile,
    StartContainerRequest, StatusRequest, StopContainerRequest, StopPodSandboxRequest,
    SupplementalGroupsPolicy, UpdateContainerResourcesRequest,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::Code;

const BUSYBOX: &str = "docker.io/library/busybox:1.36";
/// busybox plus an /etc/group that makes `test` a member of group 3000 (see [`groups_image`]).
const BUSYBOX_GROUPS: &str = "docker.io/e2e/busybox-groups:1";
/// CRI-O's default capabilities: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
/// NET_BIND_SERVICE.
const DEFAULT_CAPS: u64 = 0x5fb;

async fn pull(cri: &mut Cri, image: &str) {
    cri.img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("PullImage {image}: {e}"));
}

/// Push `busybox-groups:1` to the test registry once: busybox with an extra layer whose
/// /etc/group lists `test` in group `extra` (3000), so Merge and Strict differ.
fn groups_image() {
    let reg = std::env::var(REGISTRY_ENV).expect("the test registry is set");
    let script = r#"
set -e
reg=$1
if curl -sf -o /dev/null -I -H 'Accept: application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json' "http://$reg/v2/e2e/busybox-groups/manifests/1"; then exit 0; fi
w=$(mktemp -d /var/tmp/ferrio-groups.XXXXXX)
trap 'rm -rf "$w"' EXIT
skopeo copy --quiet --src-tls-verify=false "docker://$reg/library/busybox:1.36" "oci:$w/oci:1"
mkdir -p "$w/root/etc"
printf 'root:x:0:\nnogroup:x:65534:\ntest:x:1000:\nextra:x:3000:test\n' > "$w/root/etc/group"
tar -C "$w/root" -cf "$w/layer.tar" --numeric-owner ./etc/group
umoci raw add-layer --image "$w/oci:1" "$w/layer.tar"
skopeo copy --quiet --dest-tls-verify=false "oci:$w/oci:1" "docker://$reg/e2e/busybox-groups:1"
"#;
    let out = std::process::Command::new("bash")
        .args(["-c", script, "groups-image", &reg])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "building the groups image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One daemon, one privileged-capable pod, and the busybox image pulled.
struct World {
    d: Daemon,
    env: std::sync::Arc<Env>,
    cri: Cri,
    pod: PodSandboxConfig,
    pod_id: String,
    learned: LearnedPids,
}

impl World {
    async fn new(name: &str, images: &[&str]) -> World {
        let d = Daemon::start(Opts::default()).await;
        let env = d.env().clone();
        let mut cri = d.client().await;
        for i in images {
            pull(&mut cri, i).await;
        }
        let mut pod = pod_config(&env, name);
        if let Some(l) = pod.linux.as_mut() {
            l.security_context = Some(LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            });
        }
        let pod_id = cri
            .rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
            .into_inner()
            .pod_sandbox_id;
        let mut learned = LearnedPids::default();
        learned.learn_cgroup(&pod.linux.as_ref().unwrap().cgroup_parent);
        World {
            d,
            env,
            cri,
            pod,
            pod_id,
            learned,
        }
    }

    async fn create(&mut self, config: ContainerConfig) -> Result<String, tonic::Status> {
        self.cri
            .rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: self.pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(self.pod.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    async fn start(&mut self, id: &str) {
        self.cri
            .rt
            .start_container(StartContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {id}: {e}"));
    }

    async fn remove(&mut self, id: &str) {
        self.cri
            .rt
            .stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            })
            .await
            .unwrap_or_else(|e| panic!("StopContainer {id}: {e}"));
        self.cri
            .rt
            .remove_container(RemoveContainerRequest {
                container_id: id.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }

    fn log_path(&self, name: &str) -> PathBuf {
        Path::new(&self.pod.log_directory).join(format!("{name}/0.log"))
    }

    /// Run `config` to its exit; (exit code, stdout+stderr text from its CRI log). The
    /// container is removed afterwards.
    async fn run(&mut self, config: ContainerConfig) -> (i32, String) {
        let (code, log, _) = self.run_status(config).await;
        (code, log)
    }

    /// [`World::run`], also returning the final ContainerStatus.
    async fn run_status(&mut self, config: ContainerConfig) -> (i32, String, ContainerStatus) {
        let name = config.metadata.as_ref().unwrap().name.clone();
        let id = self
            .create(config)
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
        self.start(&id).await;
        let st = wait_for_container_state(
            &mut self.cri,
            &id,
            ContainerState::ContainerExited,
            Duration::from_secs(30),
        )
        .await;
        let log = read_log(&self.log_path(&name));
        self.remove(&id).await;
        (st.exit_code, log, st)
    }

    /// Run `sh -c script` with `edit` applied to the config; the log text, asserting exit 0.
    async fn sh(
        &mut self,
        name: &str,
        script: &str,
        edit: impl FnOnce(&mut ContainerConfig),
    ) -> String {
        let mut c = container_config(name, BUSYBOX, &["sh", "-c", script]);
        edit(&mut c);
        let (code, log) = self.run(c).await;
        assert_eq!(code, 0, "{name} exited {code}; log:\n{log}");
        log
    }

    /// Stop and remove the pod, then assert nothing leaked.
    async fn finish(mut self) {
        self.cri
            .rt
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: self.pod_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
        self.cri
            .rt
            .remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: self.pod_id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
        self.d.assert_no_leaks(&self.learned);
    }
}

/// The text of a CRI log: `<ts> <stream> <F|P> <text>` lines, partial lines joined.
fn read_log(path: &Path) -> String {
    let raw =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = String::new();
    for line in raw.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_, _, tag, text) = (parts.next(), parts.next(), parts.next(), parts.next());
        out.push_str(text.unwrap_or_default());
        if tag == Some("F") {
            out.push('\n');
        }
    }
    out
}

/// The value after `key` on the log's line starting with `key`.
fn field<'a>(log: &'a str, key: &str) -> &'a str {
    log.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key:?} line in log:\n{log}"))
}

fn sec(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .security_context
        .get_or_insert_with(Default::default)
}

fn resources(c: &mut ContainerConfig) -> &mut LinuxContainerResources {
    c.linux
        .get_or_insert_with(LinuxContainerConfig::default)
        .resources
        .get_or_insert_with(Default::default)
}

fn cap_mask(log: &str, key: &str) -> u64 {
    u64::from_str_radix(field(log, key), 16).unwrap_or_else(|e| panic!("{key} in {log}: {e}"))
}

fn host_status_hex(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    u64::from_str_radix(
        s.lines().find_map(|l| l.strip_prefix(key)).unwrap().trim(),
        16,
    )
    .unwrap()
}

#[tokio::test]
async fn process_user_and_groups_follow_the_image() {
    groups_image();
    let mut w = World::new("specuser", &[BUSYBOX, BUSYBOX_GROUPS]).await;

    // No command: the image's Cmd ["sh"] runs, reading the script from... nothing (stdin is
    // closed), so it exits 0. args alone replace Cmd: ["sh", "-c", ...] is sh's argv.
    let mut c = container_config("imagecmd", BUSYBOX, &[]);
    let (code, _) = w.run(c.clone()).await;
    assert_eq!(code, 0, "the image's Cmd sh runs and ends on EOF");
    c.metadata.as_mut().unwrap().name = "args".into();
    c.log_path = "args/0.log".into();
    c.args = vec!["-c".into(), "echo args $0".into()];
    c.command = vec!["sh".into()];
    let (code, log) = w.run(c).await;
    assert_eq!(code, 0);
    assert!(log.contains("args sh"), "command + args: {log}");

    // Env: the image's PATH kept, a CRI env added and one overriding; HOME from /etc/passwd.
    let log = w
        .sh(
            "env",
            "echo PATH=$PATH; echo FOO=$FOO; echo HOME=$HOME; echo HOSTNAME=$HOSTNAME",
            |c| {
                c.envs = vec![KeyValue {
                    key: "FOO".into(),
                    value: "bar baz".into(),
                }];
            },
        )
        .await;
    assert_eq!(
        field(&log, "PATH="),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(field(&log, "FOO="), "bar baz");
    assert_eq!(field(&log, "HOME="), "/root");
    assert_eq!(field(&log, "HOSTNAME="), "specuser");
    let log = w
        .sh("envover", "echo PATH=$PATH", |c| {
            c.envs = vec![KeyValue {
                key: "PATH".into(),
                value: "/bin".into(),
            }];
        })
        .await;
    assert_eq!(field(&log, "PATH="), "/bin");

    // Working dir.
    let log = w
        .sh("cwd", "echo CWD=$(pwd)", |c| c.working_dir = "/tmp".into())
        .await;
    assert_eq!(field(&log, "CWD="), "/tmp");

    // Users: the image default is root; run_as_username resolves through /etc/passwd.
    let ids = "echo UID=$(id -u); echo GID=$(id -g); echo GROUPS=$(id -G); echo HOME=$HOME; echo NAME=$(id -un)";
    let log = w.sh("root", ids, |_| {}).await;
    assert_eq!(field(&log, "UID="), "0");
    assert_eq!(field(&log, "GID="), "0");
    let log = w
        .sh("byname", ids, |c| sec(c).run_as_username = "test".into())
        .await;
    assert_eq!(field(&log, "UID="), "1000");
    assert_eq!(field(&log, "GID="), "1000");
    assert_eq!(field(&log, "HOME="), "/home/test");
    let log = w
        .sh("byid", ids, |c| {
            sec(c).run_as_user = Some(Int64Value { value: 1000 });
            sec(c).run_as_group = Some(Int64Value { value: 4000 });
        })
        .await;
    assert_eq!(field(&log, "NAME="), "test");
    assert_eq!(field(&log, "GID="), "4000");
    // A name the image does not know is refused.
    let mut c = container_config("nouser", BUSYBOX, &["true"]);
    sec(&mut c).run_as_username = "nosuchuser".into();
    let e = w.create(c).await.expect_err("unknown run_as_username");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // Supplemental groups: Merge adds the image's /etc/group memberships, Strict does not.
    for (policy, want) in [
        (SupplementalGroupsPolicy::Merge, "1000 3000 5000"),
        (SupplementalGroupsPolicy::Strict, "1000 5000"),
    ] {
        let mut c = container_config(
            &format!("groups{}", policy as i32),
            BUSYBOX_GROUPS,
            &["sh", "-c", ids],
        );
        sec(&mut c).run_as_user = Some(Int64Value { value: 1000 });
        sec(&mut c).supplemental_groups = vec![5000];
        sec(&mut c).supplemental_groups_policy = policy as i32;
        let (code, log, st) = w.run_status(c).await;
        assert_eq!(code, 0, "{log}");
        let mut got: Vec<&str> = field(&log, "GROUPS=").split(' ').collect();
        got.sort();
        assert_eq!(got.join(" "), want, "{policy:?}: {log}");
        // ContainerStatus.user says the same (kubelet shows it in the pod status).
        let user = st.user.and_then(|u| u.linux).expect("ContainerStatus.user");
        assert_eq!((user.uid, user.gid), (1000, 1000));
        let mut groups: Vec<String> = user
            .supplemental_groups
            .iter()
            .map(|g| g.to_string())
            .collect();
        groups.sort();
        assert_eq!(groups.join(" "), want, "{policy:?}: {user:?}");
    }
    w.finish().await;
}

#[tokio::test]
async fn security_context_is_enforced() {
    let mut w = World::new("specsec", &[BUSYBOX]).await;
    let caps = "grep -E '^(CapBnd|CapEff|NoNewPrivs|Seccomp):' /proc/self/status";

    // Default capabilities, add, drop, ALL.
    let log = w.sh("capdefault", caps, |_| {}).await;
    assert_eq!(cap_mask(&log, "CapBnd:"), DEFAULT_CAPS, "{log}");
    assert_eq!(cap_mask(&log, "CapEff:"), DEFAULT_CAPS, "{log}");
    let log = w
        .sh("capadd", caps, |c| {
            sec(c).capabilities = Some(Capability {
                add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into()],
                drop_capabilities: vec!["KILL".into()],
                ..Default::default()
            });
        })
        .await;
    assert_eq!(
        cap_mask(&log, "CapBnd:"),
        (DEFAULT_CAPS | 1 << 12 | 1 << 25) & !(1 << 5),
        "{log}"
    );
    let log = w
        .sh("capdropall", caps, |c| {
            sec(c).capabilities = Some(Capability {
                drop_capabilities: vec!["ALL".into()],
                add_capabilities: vec!["CHOWN".into()],
                ..Default::default()
            });
        })
        .await;
    assert_eq!(
        cap_mask(&log, "CapBnd:"),
        1,
        "drop ALL then add CHOWN: {log}"
    );
    let log = w
        .sh("capaddall", caps, |c| {
            sec(c).capabilities = Some(Capability {
                add_capabilities: vec!["ALL".into()],
                ..Default::default()
            });
        })
        .await;
    assert_eq!(
        cap_mask(&log, "CapBnd:"),
        host_status_hex("CapBnd:"),
        "add ALL is the host's bounding set: {log}"
    );
    // A non-root user keeps the bounding set but has no effective capabilities.
    let log = w
        .sh("capuser", caps, |c| {
            sec(c).run_as_user = Some(Int64Value { value: 1000 })
        })
        .await;
    assert_eq!(cap_mask(&log, "CapEff:"), 0, "{log}");
    assert_eq!(cap_mask(&log, "CapBnd:"), DEFAULT_CAPS, "{log}");

    // no_new_privs.
    let log = w.sh("nnp", caps, |c| sec(c).no_new_privs = true).await;
    assert_eq!(field(&log, "NoNewPrivs:"), "1");
    let log = w.sh("nonnp", caps, |_| {}).await;
    assert_eq!(field(&log, "NoNewPrivs:"), "0");

    // Seccomp: RuntimeDefault filters (mode 2) and refuses unshare without CAP_SYS_ADMIN;
    // unconfined, the same user-namespace unshare works.
    let userns = "unshare -U true && echo UNSHARE=ok || echo UNSHARE=refused";
    let log = w
        .sh("seccompdefault", &format!("{caps}; {userns}"), |c| {
            sec(c).seccomp = Some(SecurityProfile {
                profile_type: ProfileType::RuntimeDefault as i32,
                localhost_ref: String::new(),
            });
        })
        .await;
    assert_eq!(field(&log, "Seccomp:"), "2", "{log}");
    assert_eq!(field(&log, "UNSHARE="), "refused", "{log}");
    let log = w
        .sh("seccompnone", &format!("{caps}; {userns}"), |c| {
            sec(c).seccomp = Some(SecurityProfile {
                profile_type: ProfileType::Unconfined as i32,
                localhost_ref: String::new(),
            });
        })
        .await;
    assert_eq!(field(&log, "Seccomp:"), "0", "{log}");
    assert_eq!(field(&log, "UNSHARE="), "ok", "{log}");
    // A Localhost profile that is not there is refused.
    let mut c = container_config("seccompmissing", BUSYBOX, &["true"]);
    sec(&mut c).seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "/nonexistent/profile.json".into(),
    });
    let e = w.create(c).await.expect_err("missing seccomp profile");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // Masked and read-only paths; a read-only rootfs.
    // Read-only paths are read from mountinfo: writing to /proc/sys (or sysrq-trigger) to find out
    // would act on the host if the mount were missing.
    // Masked files are /dev/null bind mounts (this kernel may have no /proc/kcore: /proc/keys
    // and /proc/interrupts are on every kernel).
    let probe = "[ -c /proc/keys ] && echo KEYS=masked || echo KEYS=visible; \
                 [ -c /proc/interrupts ] && echo IRQS=masked || echo IRQS=visible; \
                 echo IRQSIZE=$(wc -c < /proc/interrupts); \
                 [ -e /proc/kcore ] && ! [ -c /proc/kcore ] && echo KCORE=visible; \
                 awk '$5 == \"/proc/sys\" { print \"PROCSYS=\" $6 }' /proc/self/mountinfo; \
                 touch /rootfile 2>/dev/null && echo ROOTFS=writable || echo ROOTFS=readonly; \
                 echo DEVS=$(ls /dev | wc -l)";
    let log = w.sh("masked", probe, |_| {}).await;
    assert_eq!(field(&log, "KEYS="), "masked", "{log}");
    assert_eq!(field(&log, "IRQS="), "masked", "{log}");
    assert_eq!(
        field(&log, "IRQSIZE="),
        "0",
        "a masked file reads empty: {log}"
    );
    assert!(
        !log.contains("KCORE="),
        "/proc/kcore is masked where it exists: {log}"
    );
    assert!(field(&log, "PROCSYS=").starts_with("ro,"), "{log}");
    assert_eq!(field(&log, "ROOTFS="), "writable", "{log}");
    let log = w
        .sh("rorootfs", probe, |c| sec(c).readonly_rootfs = true)
        .await;
    assert_eq!(field(&log, "ROOTFS="), "readonly", "{log}");
    let default_devs: usize = field(&log, "DEVS=").parse().unwrap();

    // Privileged: the host's bounding set, no masks, the host's devices.
    let log = w
        .sh(
            "privileged",
            &format!("{caps}; {probe}; [ -e /dev/kmsg ] && echo KMSG=yes"),
            |c| {
                sec(c).privileged = true;
            },
        )
        .await;
    assert_eq!(
        cap_mask(&log, "CapBnd:"),
        host_status_hex("CapBnd:"),
        "{log}"
    );
    assert_eq!(field(&log, "KEYS="), "visible", "{log}");
    assert_ne!(field(&log, "IRQSIZE="), "0", "{log}");
    assert!(
        !log.contains("PROCSYS=ro"),
        "no read-only paths when privileged: {log}"
    );
    assert_eq!(field(&log, "KMSG="), "yes", "{log}");
    let devs: usize = field(&log, "DEVS=").parse().unwrap();
    assert!(
        devs > default_devs,
        "privileged sees more devices: {devs} vs {default_devs}"
    );

    // oom_score_adj is clamped to the host's floor (kubelet asks -998 for critical pods), and
    // hugepage limits are dropped where there is no hugetlb controller; the container runs.
    let floor = if host_status_hex("CapEff:") & (1 << 24) != 0 {
        -1000
    } else {
        std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    let log = w
        .sh("oom", "echo OOM=$(cat /proc/self/oom_score_adj)", |c| {
            let r = resources(c);
            r.oom_score_adj = -998;
            r.hugepage_limits = vec![
                HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                },
                HugepageLimit {
                    page_size: "1GB".into(),
                    limit: 0,
                },
            ];
        })
        .await;
    assert_eq!(field(&log, "OOM="), floor.max(-998).to_string(), "{log}");
    let log = w
        .sh("oomhigh", "echo OOM=$(cat /proc/self/oom_score_adj)", |c| {
            resources(c).oom_score_adj = 500;
        })
        .await;
    assert_eq!(field(&log, "OOM="), "500", "{log}");
    w.finish().await;
}

#[tokio::test]
async fn mounts_and_devices() {
    let mut w = World::new("specmount", &[BUSYBOX]).await;
    let base = w.env.dir().join("mounts");
    let data = base.join("data");
    let sub = data.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::fs::write(data.join("hello"), "hi from the host\n").unwrap();
    // A tmpfs below the mounted directory, to tell `ro` from recursive `rro`.
    nix::mount::mount(
        Some("tmpfs"),
        &sub,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount a tmpfs for the test");
    let mount = |dest: &str, ro: bool, rro: bool, prop: MountPropagation| Mount {
        container_path: dest.into(),
        host_path: data.display().to_string(),
        readonly: ro,
        recursive_read_only: rro,
        propagation: prop as i32,
        ..Default::default()
    };
    let probe = "cat /m/hello; \
                 touch /m/top 2>/dev/null && echo TOP=writable || echo TOP=readonly; \
                 touch /m/sub/f 2>/dev/null && echo SUB=writable || echo SUB=readonly";

    let log = w
        .sh("rwmount", probe, |c| {
            c.mounts = vec![mount(
                "/m",
                false,
                false,
                MountPropagation::PropagationPrivate,
            )];
        })
        .await;
    assert!(log.contains("hi from the host"), "{log}");
    assert_eq!(field(&log, "TOP="), "writable", "{log}");
    assert!(
        data.join("top").exists(),
        "a write through a rw mount reaches the host"
    );
    let log = w
        .sh("romount", probe, |c| {
            c.mounts = vec![mount(
                "/m",
                true,
                false,
                MountPropagation::PropagationPrivate,
            )];
        })
        .await;
    assert_eq!(field(&log, "TOP="), "readonly", "{log}");
    assert_eq!(
        field(&log, "SUB="),
        "writable",
        "plain ro is not recursive: {log}"
    );
    let features = w
        .cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let rro = features.runtime_handlers.iter().all(|h| {
        h.features
            .as_ref()
            .is_some_and(|f| f.recursive_read_only_mounts)
    });
    if rro {
        let log = w
            .sh("rromount", probe, |c| {
                c.mounts = vec![mount(
                    "/m",
                    true,
                    true,
                    MountPropagation::PropagationPrivate,
                )];
            })
            .await;
        assert_eq!(field(&log, "TOP="), "readonly", "{log}");
        assert_eq!(
            field(&log, "SUB="),
            "readonly",
            "rro covers submounts: {log}"
        );
    }

    // Host-to-container propagation needs a shared or slave source: the test dir is private.
    let mut c = container_config("slavemount", BUSYBOX, &["true"]);
    c.mounts = vec![mount(
        "/m",
        false,
        false,
        MountPropagation::PropagationHostToContainer,
    )];
    let e = w.create(c).await.expect_err("rslave of a private mount");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // On a shared mount point, a mount made inside a privileged container with bidirectional
    // propagation shows up on the host.
    let shared = base.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &shared,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    nix::mount::mount(
        None::<&str>,
        &shared,
        None::<&str>,
        nix::mount::MsFlags::MS_SHARED,
        None::<&str>,
    )
    .unwrap();
    std::fs::create_dir_all(shared.join("inner")).unwrap();
    let log = w
        .sh(
            "bidirectional",
            "mount -t tmpfs -o size=1m none /s/inner && echo made > /s/inner/file && echo MOUNT=ok",
            |c| {
                sec(c).privileged = true;
                c.mounts = vec![Mount {
                    container_path: "/s".into(),
                    host_path: shared.display().to_string(),
                    propagation: MountPropagation::PropagationBidirectional as i32,
                    ..Default::default()
                }];
            },
        )
        .await;
    assert_eq!(field(&log, "MOUNT="), "ok", "{log}");
    let seen = std::fs::read_to_string(shared.join("inner/file"));
    let _ = nix::mount::umount2(&shared.join("inner"), nix::mount::MntFlags::MNT_DETACH);
    let _ = nix::mount::umount2(&shared, nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(
        seen.ok().as_deref(),
        Some("made\n"),
        "the container's mount propagated to the host"
    );
    let _ = nix::mount::umount2(&sub, nix::mount::MntFlags::MNT_DETACH);

    // Devices: the host's loop-control (not one runc allows by default) under another name;
    // with permission "r" the device cgroup refuses opening it for writing. `: >` opens and
    // closes without writing anything.
    let dev = |perm: &str| Device {
        container_path: "/dev/mydev".into(),
        host_path: "/dev/loop-control".into(),
        permissions: perm.into(),
    };
    let probe = "[ -c /dev/mydev ] && echo DEV=char; \
                 (: < /dev/mydev) 2>/dev/null && echo READ=ok || echo READ=denied; \
                 (: > /dev/mydev) 2>/dev/null && echo WRITE=ok || echo WRITE=denied";
    let log = w.sh("devrw", probe, |c| c.devices = vec![dev("rwm")]).await;
    assert_eq!(field(&log, "DEV="), "char", "{log}");
    assert_eq!(field(&log, "WRITE="), "ok", "{log}");
    let log = w.sh("devro", probe, |c| c.devices = vec![dev("r")]).await;
    assert_eq!(field(&log, "READ="), "ok", "{log}");
    assert_eq!(
        field(&log, "WRITE="),
        "denied",
        "the device cgroup refuses: {log}"
    );
    let mut c = container_config("devmissing", BUSYBOX, &["true"]);
    c.devices = vec![Device {
        container_path: "/dev/x".into(),
        host_path: "/dev/nonexistent-device".into(),
        permissions: "rwm".into(),
    }];
    let e = w.create(c).await.expect_err("missing device");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    w.finish().await;
}

/// The container's cgroup directory for `controller` (v1) or the unified one (v2).
fn cgroup_dir(cgroups_path: &str, controller: &str) -> PathBuf {
    let rel = cgroups_path.trim_start_matches('/');
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        Path::new("/sys/fs/cgroup").join(rel)
    } else {
        Path::new("/sys/fs/cgroup").join(controller).join(rel)
    }
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// The host mounts below `dir` (from this process's mountinfo).
fn mounts_below(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|mp| mp.starts_with(&prefix))
        .collect()
}

#[tokio::test]
async fn image_volumes_are_read_only_images() {
    groups_image();
    let mut w = World::new("specimgvol", &[BUSYBOX]).await;
    // kubelet pulls the volume's image and passes PullImage's image_ref.
    let volume_ref = w
        .cri
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX_GROUPS.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    let volumes_dir = w.env.root().join("image-volumes");
    let image_mount = |readonly: bool| Mount {
        container_path: "/mnt/iv".into(),
        readonly,
        image: Some(ImageSpec {
            image: volume_ref.clone(),
            user_specified_image: BUSYBOX_GROUPS.into(),
            ..Default::default()
        }),
        ..Default::default()
    };

    // The image's files are there (the extra layer's /etc/group), writes fail, binaries run.
    let mut c = container_config(
        "iv",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "grep -q '^extra:x:3000:test' /mnt/iv/etc/group && echo READ=ok; \
             if touch /mnt/iv/new 2>/dev/null; then echo WRITE=ok; else echo WRITE=refused; fi; \
             /mnt/iv/bin/sh -c 'echo EXEC=ok'; \
             grep ' /mnt/iv ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1 | sed 's/^/OPTS=/'",
        ],
    );
    c.mounts = vec![image_mount(true)];
    let id = w
        .create(c)
        .await
        .unwrap_or_else(|e| panic!("create with an image volume: {e}"));
    w.start(&id).await;
    wait_for_container_state(
        &mut w.cri,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await;
    let log = read_log(&w.log_path("iv"));
    assert_eq!(field(&log, "READ="), "ok", "{log}");
    assert_eq!(field(&log, "WRITE="), "refused", "{log}");
    assert_eq!(field(&log, "EXEC="), "ok", "{log}");
    assert_eq!(field(&log, "OPTS="), "ro", "{log}");

    // ContainerStatus reports the mount with its image; the host holds one read-only overlay.
    let st = w
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let m = st
        .mounts
        .iter()
        .find(|m| m.container_path == "/mnt/iv")
        .expect("the image volume in ContainerStatus mounts");
    assert_eq!(m.image.as_ref().unwrap().image, volume_ref);
    assert!(m.readonly && m.host_path.is_empty(), "{m:?}");
    assert_eq!(
        mounts_below(&volumes_dir).len(),
        1,
        "one overlay on the host"
    );

    // In use: the image cannot go while the container exists.
    let e = w
        .cri
        .img
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: volume_ref.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect_err("an image mounted as a volume is in use");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");

    // RemoveContainer takes the overlay down; then the image may go.
    w.remove(&id).await;
    assert!(mounts_below(&volumes_dir).is_empty());
    assert!(!volumes_dir.join(&id).exists());
    w.cri
        .img
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: volume_ref.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage after the container: {e}"));

    // Refused: an image that is not pulled (NotFound), a read-write image volume and an image
    // volume with a host path (InvalidArgument).
    let mut c = container_config("ivbad", BUSYBOX, &["true"]);
    c.mounts = vec![image_mount(true)];
    let e = w.create(c.clone()).await.expect_err("image not pulled");
    assert_eq!(e.code(), Code::NotFound, "{e}");
    pull(&mut w.cri, BUSYBOX_GROUPS).await;
    c.mounts = vec![image_mount(false)];
    let e = w
        .create(c.clone())
        .await
        .expect_err("read-write image volume");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let mut both = image_mount(true);
    both.host_path = "/tmp".into();
    c.mounts = vec![both];
    let e = w.create(c.clone()).await.expect_err("host path and image");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");

    // A create that fails after the volume was mounted (a later mount is invalid) rolls the
    // volume back: nothing stays mounted and the name is free again.
    c.mounts = vec![
        image_mount(true),
        Mount {
            container_path: "relative".into(),
            host_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let e = w
        .create(c.clone())
        .await
        .expect_err("a relative container path");
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(mounts_below(&volumes_dir).is_empty());
    c.mounts = vec![image_mount(true)];
    c.command = vec!["true".into()];
    let (code, _) = w.run(c).await;
    assert_eq!(code, 0);
    assert!(mounts_below(&volumes_dir).is_empty());

    w.finish().await;
}

const BUSYBOX_SUBPATH: &str = "docker.io/e2e/busybox-subpath:1";

/// Push `busybox-subpath:1` to the test registry once: busybox with a layer holding
/// `/etc/imagemark`, `/data/file`, `/data/dir/inner`, and symlinks that lead out of the image if
/// followed on the host: `/data/abs -> /etc`, `/data/up -> ../../../../../../etc/imagemark`,
/// `/data/host-only -> /etc/debian_version` (a host file the image lacks).
fn subpath_image() {
    let reg = std::env::var(REGISTRY_ENV).expect("the test registry is set");
    let script = r#"
set -e
reg=$1
if curl -sf -o /dev/null -I -H 'Accept: application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json' "http://$reg/v2/e2e/busybox-subpath/manifests/1"; then exit 0; fi
w=$(mktemp -d /var/tmp/ferrio-subpath.XXXXXX)
trap 'rm -rf "$w"' EXIT
skopeo copy --quiet --src-tls-verify=false "docker://$reg/library/busybox:1.36" "oci:$w/oci:1"
mkdir -p "$w/root/etc" "$w/root/data/dir"
echo IMAGEMARK > "$w/root/etc/imagemark"
echo SUBFILE > "$w/root/data/file"
echo INNER > "$w/root/data/dir/inner"
ln -s /etc "$w/root/data/abs"
ln -s ../../../../../../etc/imagemark "$w/root/data/up"
ln -s /etc/debian_version "$w/root/data/host-only"
tar -C "$w/root" -cf "$w/layer.tar" --numeric-owner ./etc/imagemark ./data
umoci raw add-layer --image "$w/oci:1" "$w/layer.tar"
skopeo copy --quiet --dest-tls-verify=false "oci:$w/oci:1" "docker://$reg/e2e/busybox-subpath:1"
"#;
    let out = std::process::Command::new("bash")
        .args(["-c", script, "subpath-image", &reg])
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "building the subpath image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `image_sub_path` binds one file or directory of an image volume, resolved inside the image:
/// a symlink whose target is absolute or climbs with `..` lands inside the image (as CRI-O's
/// securejoin resolves it), never on the host. A path the image lacks is InvalidArgument
/// naming it, and the refused create leaves no mount behind.
#[tokio::test]
async fn image_volume_sub_paths_stay_inside_the_image() {
    subpath_image();
    assert!(
        Path::new("/etc/debian_version").exists(),
        "the test needs a host file the image lacks: /etc/debian_version"
    );
    let mut w = World::new("specsubpath", &[BUSYBOX]).await;
    let volume_ref = w
        .cri
        .img
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: BUSYBOX_SUBPATH.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    let volumes_dir = w.env.root().join("image-volumes");
    let sub = |container_path: &str, sub_path: &str| Mount {
        container_path: container_path.into(),
        readonly: true,
        image: Some(ImageSpec {
            image: volume_ref.clone(),
            user_specified_image: BUSYBOX_SUBPATH.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        ..Default::default()
    };

    let mut c = container_config(
        "sub",
        BUSYBOX,
        &[
            "sh",
            "-c",
            "echo FILE=$(cat /mnt/file); [ -f /mnt/file ] && echo FILETYPE=file; \
             echo DIR=$(ls /mnt/dir); echo INNER=$(cat /mnt/dir/inner); \
             echo ABS=$(cat /mnt/abs/imagemark 2>&1); \
             [ -e /mnt/abs/debian_version ] && echo ABSHOST=seen || echo ABSHOST=absent; \
             echo UP=$(cat /mnt/up 2>&1); \
             if touch /mnt/dir/new 2>/dev/null; then echo WRITE=ok; else echo WRITE=refused; fi",
        ],
    );
    c.mounts = vec![
        sub("/mnt/file", "data/file"),
        sub("/mnt/dir", "data/dir"),
        sub("/mnt/abs", "data/abs"),
        sub("/mnt/up", "data/up"),
    ];
    let id = w
        .create(c)
        .await
        .unwrap_or_else(|e| panic!("create with image sub-paths: {e}"));
    w.start(&id).await;
    let st = wait_for_container_state(
        &mut w.cri,
        &id,
        ContainerState::ContainerExited,
        Duration::from_secs(30),
    )
    .await;
    let log = read_log(&w.log_path("sub"));
    assert_eq!(st.exit_code, 0, "{log}");
    assert_eq!(field(&log, "FILE="), "SUBFILE", "{log}");
    assert_eq!(field(&log, "FILETYPE="), "file", "{log}");
    assert_eq!(
        field(&log, "DIR="),
        "inner",
        "only the sub-directory: {log}"
    );
    assert_eq!(field(&log, "INNER="), "INNER", "{log}");
    assert_eq!(field(&log, "ABS="), "IMAGEMARK", "/etc of the image: {log}");
    assert_eq!(
        field(&log, "ABSHOST="),
        "absent",
        "never the host's /etc: {log}"
    );
    assert_eq!(
        field(&log, "UP="),
        "IMAGEMARK",
        "`..` stops at the image root: {log}"
    );
    assert_eq!(field(&log, "WRITE="), "refused", "{log}");

    // ContainerStatus reports each volume with its image id and sub-path.
    let st = w
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let m = st
        .mounts
        .iter()
        .find(|m| m.container_path == "/mnt/file")
        .expect("the sub-path volume in ContainerStatus mounts");
    let image = m.image.as_ref().unwrap();
    assert_eq!(image.image, volume_ref);
    assert_eq!(image.image_ref, volume_ref, "{m:?}");
    assert_eq!(m.image_sub_path, "data/file");
    assert!(st
        .mounts
        .iter()
        .all(|m| m.image.as_ref().is_some_and(|i| i.image_ref == volume_ref)));
    w.remove(&id).await;
    assert!(mounts_below(&volumes_dir).is_empty());

    // Refused, naming the path: one the image lacks, and a symlink whose target exists only
    // on the host. The volumes mounted before the check are taken down again.
    for (name, path) in [("missing", "data/no-such"), ("hostonly", "data/host-only")] {
        let mut c = container_config(name, BUSYBOX, &["true"]);
        c.mounts = vec![sub("/mnt/ok", "data/dir"), sub("/mnt/bad", path)];
        let e = w.create(c).await.expect_err(path);
        assert_eq!(e.code(), Code::InvalidArgument, "{path}: {e}");
        assert!(e.message().contains(path), "{path}: {e}");
        assert!(
            mounts_below(&volumes_dir).is_empty(),
            "{path}: a mount leaked"
        );
        let left = std::fs::read_dir(&volumes_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{path}: a volume directory leaked");
    }
    let listed = w
        .cri
        .rt
        .list_containers(ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(listed.is_empty(), "{listed:?}");

    w.finish().await;
}

#[tokio::test]
async fn update_resources_and_stats() {
    let mut w = World::new("specstats", &[BUSYBOX]).await;
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();

    // Status features.
    let st = w
        .cri
        .rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(st
        .features
        .as_ref()
        .is_some_and(|f| f.supplemental_groups_policy));
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut it = release.trim().split(['.', '-']);
    let ver: (u32, u32) = (
        it.next().unwrap().parse().unwrap(),
        it.next().unwrap().parse().unwrap(),
    );
    for h in &st.runtime_handlers {
        let f = h.features.as_ref().expect("handler features");
        assert_eq!(f.recursive_read_only_mounts, ver >= (5, 12), "{h:?}");
    }

    // A busy container that wrote 512 KiB into its writable layer, with a gateway to ping.
    let gw = {
        let s = w.env.subnet();
        let base = s.trim_end_matches(".0/24");
        format!("{base}.1")
    };
    let mut c = container_config(
        "busy",
        BUSYBOX,
        &[
            "sh",
            "-c",
            &format!(
                "dd if=/dev/zero of=/big bs=1024 count=512 2>/dev/null; ping -c 2 -W 1 {gw} >/dev/null; echo READY; while :; do :; done"
            ),
        ],
    );
    sec(&mut c).capabilities = Some(Capability {
        add_capabilities: vec!["NET_RAW".into()],
        ..Default::default()
    });
    resources(&mut c).memory_limit_in_bytes = 256 << 20;
    resources(&mut c).cpu_shares = 1024;
    let id = w
        .create(c)
        .await
        .unwrap_or_else(|e| panic!("create busy: {e}"));
    w.start(&id).await;
    let log_path = w.log_path("busy");
    for _ in 0..100 {
        if std::fs::read_to_string(&log_path).is_ok_and(|l| l.contains("READY")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(read_log(&log_path).contains("READY"));
    w.learned
        .learn_cgroup(&w.pod.linux.as_ref().unwrap().cgroup_parent);

    let status = w
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&status.info["info"]).unwrap();
    let cg = info["cgroupsPath"].as_str().unwrap().to_string();
    let linux = status
        .status
        .as_ref()
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.linux.as_ref())
        .expect("ContainerStatus reports resources");
    assert_eq!(linux.memory_limit_in_bytes, 256 << 20);

    // UpdateContainerResources: runc writes the cgroup files; ContainerStatus follows.
    let update = LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        cpu_shares: 512,
        cpu_period: 100_000,
        cpu_quota: 50_000,
        ..Default::default()
    };
    w.cri
        .rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(update.clone()),
            windows: None,
            annotations: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}"));
    if v2 {
        assert_eq!(
            read_trim(&cgroup_dir(&cg, "").join("memory.max")),
            (96u64 << 20).to_string()
        );
        assert_eq!(
            read_trim(&cgroup_dir(&cg, "").join("cpu.max")),
            "50000 100000"
        );
    } else {
        assert_eq!(
            read_trim(&cgroup_dir(&cg, "memory").join("memory.limit_in_bytes")),
            (96u64 << 20).to_string()
        );
        assert_eq!(read_trim(&cgroup_dir(&cg, "cpu").join("cpu.shares")), "512");
        assert_eq!(
            read_trim(&cgroup_dir(&cg, "cpu").join("cpu.cfs_quota_us")),
            "50000"
        );
    }
    let status = w
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    let linux = status
        .status
        .and_then(|s| s.resources)
        .and_then(|r| r.linux)
        .unwrap();
    assert_eq!(
        linux, update,
        "ContainerStatus reports the updated resources"
    );
    let e = w
        .cri
        .rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: "0000nonexistent".into(),
            linux: Some(update.clone()),
            ..Default::default()
        })
        .await
        .expect_err("update of an unknown container");
    assert_eq!(e.code(), Code::NotFound, "{e}");

    // ContainerStats: cumulative CPU and a rate (the busy loop uses about one core), memory,
    // the 512 KiB file in the writable layer.
    let s = w
        .cri
        .rt
        .container_stats(ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(s.attributes.as_ref().unwrap().id, id);
    let cpu = s.cpu.as_ref().unwrap();
    assert!(
        cpu.usage_core_nano_seconds.as_ref().unwrap().value > 0,
        "{cpu:?}"
    );
    let nano = cpu.usage_nano_cores.as_ref().unwrap().value;
    assert!(
        nano > 100_000_000 && nano < 2_100_000_000,
        "a busy loop is roughly one core: {nano}"
    );
    let mem = s.memory.as_ref().unwrap();
    assert!(mem.working_set_bytes.as_ref().unwrap().value > 0, "{mem:?}");
    assert!(
        mem.usage_bytes.as_ref().unwrap().value >= mem.working_set_bytes.as_ref().unwrap().value
    );
    assert!(
        mem.rss_bytes.is_some() && mem.page_faults.is_some(),
        "{mem:?}"
    );
    let avail = mem
        .available_bytes
        .as_ref()
        .expect("a limit gives available bytes")
        .value;
    assert!(avail <= 96 << 20, "{avail}");
    let wl = s.writable_layer.as_ref().unwrap();
    assert!(
        wl.used_bytes.as_ref().unwrap().value >= 512 * 1024,
        "{wl:?}"
    );
    assert!(wl.inodes_used.as_ref().unwrap().value >= 1, "{wl:?}");
    // Pressure stall information comes from cgroup v2's *.pressure files: present there (when
    // the kernel has PSI on), absent, never zeros, on cgroup v1.
    let psi_expected = v2 && Path::new("/proc/pressure/cpu").exists();
    assert_eq!(cpu.psi.is_some(), psi_expected, "{cpu:?}");
    assert_eq!(mem.psi.is_some(), psi_expected, "{mem:?}");
    assert_eq!(s.io.is_some(), psi_expected, "{:?}", s.io);
    if let Some(io) = &s.io {
        assert!(io.psi.as_ref().is_some_and(|p| p.some.is_some()), "{io:?}");
    }

    let list = w
        .cri
        .rt
        .list_container_stats(ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(
        list.iter().any(|s| s.attributes.as_ref().unwrap().id == id),
        "{list:?}"
    );

    // Pod stats: the pod cgroup holds pause and busy; eth0's counters saw the pings.
    let ps = w
        .cri
        .rt
        .pod_sandbox_stats(PodSandboxStatsRequest {
            pod_sandbox_id: w.pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = ps.linux.as_ref().unwrap();
    assert_eq!(linux.io.is_some(), psi_expected, "{:?}", linux.io);
    assert_eq!(
        linux.cpu.as_ref().unwrap().psi.is_some(),
        psi_expected,
        "{linux:?}"
    );
    assert!(
        linux
            .cpu
            .as_ref()
            .unwrap()
            .usage_core_nano_seconds
            .as_ref()
            .unwrap()
            .value
            > 0
    );
    assert!(
        linux
            .process
            .as_ref()
            .unwrap()
            .process_count
            .as_ref()
            .unwrap()
            .value
            >= 2
    );
    let net = linux.network.as_ref().expect("pod network stats");
    let eth0 = net.default_interface.as_ref().unwrap();
    assert_eq!(eth0.name, "eth0");
    assert!(eth0.tx_bytes.as_ref().unwrap().value > 0, "{eth0:?}");
    assert!(eth0.rx_bytes.as_ref().unwrap().value > 0, "{eth0:?}");
    assert!(net.interfaces.iter().all(|i| i.name != "lo"));
    assert_eq!(linux.containers.len(), 1, "{linux:?}");
    let all = w
        .cri
        .rt
        .list_pod_sandbox_stats(ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(all.len(), 1);

    // Metrics.
    let desc = w
        .cri
        .rt
        .list_metric_descriptors(ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    assert!(desc
        .iter()
        .any(|d| d.name == "container_cpu_usage_seconds_total"));
    let metrics = w
        .cri
        .rt
        .list_pod_sandbox_metrics(ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let pm = metrics
        .iter()
        .find(|m| m.pod_sandbox_id == w.pod_id)
        .unwrap();
    assert!(pm
        .metrics
        .iter()
        .any(|m| m.name == "container_network_receive_bytes_total"));
    let cm = pm
        .container_metrics
        .iter()
        .find(|c| c.container_id == id)
        .unwrap();
    for m in &cm.metrics {
        let d = desc.iter().find(|d| d.name == m.name).expect("described");
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{m:?}");
    }
    assert!(cm
        .metrics
        .iter()
        .any(|m| m.name == "container_memory_working_set_bytes"
            && m.value.as_ref().is_some_and(|v| v.value > 0)));
    // The cAdvisor set kubelet's CRI metrics provider (and critest) reads: every described name
    // has a value for the pod or its container (pressure needs cgroup v2 PSI; block I/O counts
    // need a disk that reports per-device I/O), with the descriptor's label count.
    for d in &desc {
        let optional = d.name.starts_with("container_pressure_")
            || d.name.starts_with("container_blkio_")
            || d.name.starts_with("container_fs_reads")
            || d.name.starts_with("container_fs_writes")
            || (d.name == "container_spec_cpu_quota" && !v2);
        let found: Vec<_> = pm
            .metrics
            .iter()
            .chain(&cm.metrics)
            .filter(|m| m.name == d.name)
            .collect();
        assert!(optional || !found.is_empty(), "no value for {}", d.name);
        for m in found {
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{m:?}");
        }
    }
    let value = |name: &str| {
        cm.metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.value.as_ref())
            .map(|v| v.value)
            .unwrap_or_else(|| panic!("container metric {name}"))
    };
    // The values are the container's own: the limits in force after the update, CFS periods
    // under the 50 ms quota of a busy loop, the writable layer's 512 KiB, its start.
    assert_eq!(value("container_spec_memory_limit_bytes"), 96 << 20);
    if !v2 {
        assert_eq!(value("container_spec_cpu_shares"), 512);
        assert_eq!(value("container_spec_cpu_quota"), 50_000);
    }
    assert_eq!(value("container_spec_cpu_period"), 100_000);
    assert!(value("container_cpu_cfs_periods_total") > 0);
    assert!(
        value("container_cpu_user_seconds_total") <= value("container_cpu_usage_seconds_total") + 1
    );
    assert!(value("container_threads") >= 1);
    assert!(value("container_file_descriptors") >= 3, "stdio at least");
    assert!(value("container_fs_usage_bytes") >= 512 * 1024);
    assert!(value("container_fs_limit_bytes") > value("container_fs_usage_bytes"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let started = value("container_start_time_seconds");
    assert!(started <= now && started + 600 > now, "{started} vs {now}");
    let rx = pm
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_packets_total")
        .expect("pod network packets");
    assert_eq!(rx.label_values[3], "eth0");
    assert!(rx.value.as_ref().unwrap().value > 0);

    w.remove(&id).await;
    w.finish().await;
}

/// The container's init pid, from verbose ContainerStatus.
async fn init_pid(w: &mut World, id: &str) -> u32 {
    let info = w
        .cri
        .rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
        .into_inner()
        .info;
    let info: serde_json::Value =
        serde_json::from_str(info.get("info").expect("verbose info")).expect("info is JSON");
    let pid = info["status"]["pid"].as_u64().expect("status.pid") as u32;
    w.learned.add(pid, "container init");
    pid
}

/// The NUL-separated entries of a /proc file.
fn proc_entries(pid: u32, file: &str) -> Vec<Vec<u8>> {
    let raw = std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/{file}: {e}"));
    raw.split(|&b| b == 0)
        .filter(|e| !e.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

#[tokio::test]
async fn env_values_that_are_not_utf8_reach_the_process_byte_for_byte() {
    let mut w = World::new("envbytes", &[BUSYBOX]).await;
    let secret = vec![b'a', 0xff, 0xfe, b'z'];
    let with = |name: &str, value: Vec<u8>, command: &[&str]| {
        let mut c = container_config(name, BUSYBOX, command);
        c.working_dir = "/tmp".into();
        c.envs = vec![
            KeyValue {
                key: "BEFORE".into(),
                value: b"1".to_vec(),
            },
            KeyValue {
                key: "SECRET".into(),
                value,
            },
            KeyValue {
                key: "AFTER".into(),
                value: "é".as_bytes().to_vec(),
            },
        ];
        c
    };
    // The same container with a UTF-8 value: what the process must see apart from SECRET.
    let mut ids = Vec::new();
    for (name, value) in [("bytes", secret.clone()), ("text", b"plain".to_vec())] {
        let id = w
            .create(with(name, value, &["sleep", "1000"]))
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"));
        w.start(&id).await;
        wait_for_container_state(
            &mut w.cri,
            &id,
            ContainerState::ContainerRunning,
            Duration::from_secs(30),
        )
        .await;
        ids.push(id);
    }
    let (bytes_pid, text_pid) = (
        init_pid(&mut w, &ids[0]).await,
        init_pid(&mut w, &ids[1]).await,
    );
    let environ = proc_entries(bytes_pid, "environ");
    let expected: Vec<Vec<u8>> = proc_entries(text_pid, "environ")
        .into_iter()
        .map(|e| {
            if e.starts_with(b"SECRET=") {
                [&b"SECRET="[..], &secret].concat()
            } else {
                e
            }
        })
        .collect();
    let show = |v: &[Vec<u8>]| {
        v.iter()
            .map(|e| String::from_utf8_lossy(e).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        environ,
        expected,
        "the environ of the process, byte for byte: {:?}",
        show(&environ)
    );
    assert_eq!(
        proc_entries(bytes_pid, "cmdline"),
        [b"sleep".to_vec(), b"1000".to_vec()],
        "argv is the container's own"
    );
    assert_eq!(
        std::fs::read_link(format!("/proc/{bytes_pid}/cwd")).unwrap(),
        std::fs::read_link(format!("/proc/{text_pid}/cwd"))
            .unwrap()
            .to_string_lossy()
            .replace(&ids[1], &ids[0]),
        "the working directory is the container's own"
    );

    // An exec process gets the same bytes, and nothing of the helper.
    let out = w
        .cri
        .rt
        .exec_sync(ExecSyncRequest {
            container_id: ids[0].clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "printf %s \"$SECRET\" | od -An -tx1; env | grep -c FERRIO || true".into(),
            ],
            timeout: 10,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    assert_eq!(out.exit_code, 0, "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = stdout.split_whitespace().collect();
    assert_eq!(words, ["61", "ff", "fe", "7a", "0"], "{out:?}");

    for id in ids {
        w.remove(&id).await;
    }

    // A command that cannot run fails in the container, as its log and exit code tell.
    let (code, log) = w.run(with("missing", secret, &["no-such-command"])).await;
    assert_eq!(code, 127, "{log}");
    assert!(
        log.contains("\"no-such-command\": executable file not found in $PATH"),
        "{log}"
    );
    w.finish().await;
}
