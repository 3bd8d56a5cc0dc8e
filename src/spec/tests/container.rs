//! Containers' specs, end to end through [`crate::spec::container_spec`] on the real host (a
//! temporary rootfs, /dev/null, this process's mountinfo).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxDeviceType, LinuxNamespaceType, Mount, Spec};

use crate::cri::v1::{
    security_profile::ProfileType, Capability, ContainerMetadata, Device, HugepageLimit, ImageSpec,
    Int64Value, KeyValue, LinuxContainerConfig, LinuxPodSandboxConfig, LinuxSandboxSecurityContext,
    Mount as CriMount, NamespaceOption, PodSandboxMetadata, SecurityProfile,
};
use crate::cri::v1::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, MountPropagation,
    NamespaceMode, PodSandboxConfig, SupplementalGroupsPolicy,
};
use crate::image::ImageConfig;
use crate::oci::apparmor::AppArmorRequest;
use crate::oci::host::HostFeatures;
use crate::spec::annotations::*;
use crate::spec::cri::*;
use crate::spec::host::resolve_in_root;
use crate::spec::mounts::mount_propagation_of;
use crate::spec::process::DEFAULT_PATH;
use crate::spec::security::{strings, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS};
use crate::spec::SpecError;
use oci_spec::runtime::{Capability as Cap, LinuxSeccompAction};

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
    daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
    alice:x:1000:1000:Alice:/home/alice:/bin/sh\n\
    bob:x:1001:1001::/home/bob:/bin/sh\n";
const GROUP: &str = "root:x:0:\n\
    wheel:x:10:alice,bob\n\
    alice:x:1000:\n\
    bob:x:1001:\n\
    audio:x:29:alice\n";

struct Fixture {
    dir: tempfile::TempDir,
    config: ContainerConfig,
    pod: PodSandboxConfig,
    image: ImageConfig,
    host: HostFeatures,
    netns: Option<PathBuf>,
    utsns: Option<PathBuf>,
    userns: Option<PathBuf>,
    ipcns: Option<PathBuf>,
    pod_files: bool,
    restrict: bool,
    cgroups_path: String,
    image_volumes: Vec<crate::spec::ImageVolume>,
    apparmor_profile: Option<String>,
    target_pid: Option<i32>,
    cdi: crate::spec::CdiRegistry,
    hooks: Vec<crate::spec::HookDef>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("rootfs/etc");
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("passwd"), PASSWD).unwrap();
        std::fs::write(etc.join("group"), GROUP).unwrap();
        for f in ["hosts", "resolv.conf", "hostname"] {
            std::fs::write(dir.path().join(f), "x\n").unwrap();
        }
        Fixture {
            config: ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "app".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: "docker.io/library/busybox:1.36".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            pod: PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "pod".into(),
                    uid: "uid-1".into(),
                    namespace: "ns".into(),
                    attempt: 0,
                }),
                hostname: "podhost".into(),
                ..Default::default()
            },
            image: ImageConfig {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["default-arg".into()],
                env: vec!["PATH=/image/bin".into(), "A=image".into()],
                ..Default::default()
            },
            host: HostFeatures::default(),
            netns: Some(PathBuf::from("/run/netns/x")),
            utsns: Some(PathBuf::from("/run/ferrio/ns/uts-x")),
            userns: None,
            ipcns: Some(PathBuf::from("/run/ferrio/ns/ipc-x")),
            pod_files: true,
            restrict: true,
            cgroups_path: "/ferrio/pod/c1".into(),
            image_volumes: Vec::new(),
            apparmor_profile: None,
            target_pid: None,
            cdi: Default::default(),
            hooks: Vec::new(),
            dir,
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn sec(&mut self) -> &mut LinuxContainerSecurityContext {
        self.config
            .linux
            .get_or_insert_with(Default::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn resources(&mut self) -> &mut LinuxContainerResources {
        self.config
            .linux
            .get_or_insert_with(LinuxContainerConfig::default)
            .resources
            .get_or_insert_with(Default::default)
    }

    fn privileged(&mut self) {
        self.sec().privileged = true;
        self.pod.linux = Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    fn request(&self) -> ContainerRequest<'_> {
        ContainerRequest::new(&self.config, &self.pod)
    }

    fn build(&self) -> Result<Spec, SpecError> {
        let hosts = self.dir.path().join("hosts");
        let resolv = self.dir.path().join("resolv.conf");
        let hostname = self.dir.path().join("hostname");
        let rootfs = self.rootfs();
        container_spec(&ContainerSpecInput {
            id: "c1",
            request: self.request(),
            sandbox: SandboxContext {
                netns: self.netns.as_deref(),
                ipcns: self.ipcns.as_deref(),
                utsns: self.utsns.as_deref(),
                userns: self.userns.as_deref(),
                pause_pid: 4242,
                pod_files: self.pod_files.then_some(PodFiles {
                    hosts: &hosts,
                    resolv_conf: &resolv,
                    hostname: &hostname,
                }),
            },
            image: &self.image,
            rootfs: &rootfs,
            image_volumes: &self.image_volumes,
            cgroups_path: self.cgroups_path.clone(),
            host: &self.host,
            restrict_oom_score_adj: self.restrict,
            apparmor_profile: self.apparmor_profile.clone(),
            target_pid: self.target_pid,
            cdi: &self.cdi,
            hooks: &self.hooks,
        })
    }

    fn spec(&self) -> Spec {
        self.build().expect("spec")
    }
}

fn invalid_field<T: std::fmt::Debug>(r: Result<T, SpecError>) -> String {
    match r {
        Err(SpecError::Invalid { field, .. }) => field,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

fn process(s: &Spec) -> &oci_spec::runtime::Process {
    s.process().as_ref().unwrap()
}

fn linux(s: &Spec) -> &oci_spec::runtime::Linux {
    s.linux().as_ref().unwrap()
}

fn env_of(s: &Spec) -> Vec<String> {
    process(s).env().clone().unwrap()
}

fn bounding(s: &Spec) -> Vec<Cap> {
    let mut v: Vec<Cap> = process(s)
        .capabilities()
        .as_ref()
        .unwrap()
        .bounding()
        .clone()
        .unwrap()
        .into_iter()
        .collect();
    v.sort_by_key(|c| c.to_string());
    v
}

fn mount_at<'a>(s: &'a Spec, dest: &str) -> Option<&'a Mount> {
    s.mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(dest))
}

fn ns(s: &Spec, typ: LinuxNamespaceType) -> Option<Option<PathBuf>> {
    linux(s)
        .namespaces()
        .as_ref()
        .unwrap()
        .iter()
        .find(|n| n.typ() == typ)
        .map(|n| n.path().clone())
}

#[test]
fn command_and_args_merge_the_kubernetes_way() {
    let mut f = Fixture::new();
    assert_eq!(
        process(&f.spec()).args().clone().unwrap(),
        ["/entry", "default-arg"]
    );
    f.config.args = vec!["x".into(), "y".into()];
    assert_eq!(
        process(&f.spec()).args().clone().unwrap(),
        ["/entry", "x", "y"]
    );
    f.config.command = vec!["/bin/sh".into(), "-c".into()];
    assert_eq!(
        process(&f.spec()).args().clone().unwrap(),
        ["/bin/sh", "-c", "x", "y"]
    );
    f.config.args.clear();
    // command alone drops the image's cmd
    assert_eq!(
        process(&f.spec()).args().clone().unwrap(),
        ["/bin/sh", "-c"]
    );
    f.config.command.clear();
    f.image.entrypoint.clear();
    f.image.cmd.clear();
    assert_eq!(invalid_field(f.build()), "command");
}

#[test]
fn env_overrides_by_key_and_defaults() {
    let mut f = Fixture::new();
    f.config.envs = vec![
        KeyValue {
            key: "A".into(),
            value: "cri".into(),
        },
        KeyValue {
            key: "B".into(),
            value: "b=c".into(),
        },
    ];
    let env = env_of(&f.spec());
    assert!(env.contains(&"A=cri".to_string()));
    assert!(!env.contains(&"A=image".to_string()));
    assert!(env.contains(&"B=b=c".to_string()));
    assert!(env.contains(&"PATH=/image/bin".to_string()));
    assert!(env.contains(&"HOSTNAME=podhost".to_string()));
    assert!(env.contains(&"HOME=/root".to_string()));
    f.image.env.clear();
    let env = env_of(&f.spec());
    assert!(env.contains(&format!("PATH={}", DEFAULT_PATH)));
    // one entry per key
    assert_eq!(env.iter().filter(|e| e.starts_with("A=")).count(), 1);
    f.config.tty = true;
    let s = f.spec();
    assert!(env_of(&s).contains(&"TERM=xterm".to_string()));
    assert_eq!(process(&s).terminal(), Some(true));
}

#[test]
fn an_env_value_that_is_not_utf8_reaches_the_process_through_the_helper() {
    use crate::spec::envexec::{codec, CONTAINER_PATH};
    let mut f = Fixture::new();
    f.host.envexec = Some("/usr/libexec/ferrio/ferrio-envexec".into());
    f.image.env = vec!["PATH=/bin".into(), "SECRET=from-image".into()];
    f.config.command = vec!["sh".into()];
    f.config.args = vec!["-c".into(), "env".into()];
    f.config.envs = vec![
        KeyValue {
            key: "A".into(),
            value: b"1".to_vec(),
        },
        KeyValue {
            key: "SECRET".into(),
            value: vec![b'a', 0xff, 0xfe],
        },
    ];
    let s = f.spec();
    assert_eq!(
        process(&s).args().as_deref().unwrap(),
        [CONTAINER_PATH, "sh", "-c", "env"],
        "the helper runs the original args unchanged"
    );
    let env = env_of(&s);
    let carrier = format!(
        "{}={}",
        codec::VAR,
        codec::encode(&[b"SECRET=a\xff\xfe".to_vec()])
    );
    // The image's SECRET is replaced where it stood; the other entries are untouched.
    assert_eq!(
        env[..3],
        ["HOSTNAME=podhost", "PATH=/bin", carrier.as_str()]
    );
    assert!(env.contains(&"A=1".to_string()));
    assert!(!env.iter().any(|e| e.starts_with("SECRET=")), "{env:?}");
    let m = s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.destination() == Path::new(CONTAINER_PATH))
        .expect("the helper's mount");
    assert_eq!(
        m.source().as_deref(),
        Some(Path::new("/usr/libexec/ferrio/ferrio-envexec"))
    );
    let options = m.options().clone().unwrap();
    for o in ["ro", "nosuid", "nodev"] {
        assert!(options.iter().any(|x| x == o), "{options:?}");
    }
}

#[test]
fn a_container_with_utf8_env_values_does_not_run_the_helper() {
    use crate::spec::envexec::{codec, CONTAINER_PATH};
    let mut f = Fixture::new();
    f.host.envexec = Some("/usr/libexec/ferrio/ferrio-envexec".into());
    f.config.envs = vec![KeyValue {
        key: "A".into(),
        value: "é".as_bytes().to_vec(),
    }];
    let s = f.spec();
    assert_ne!(process(&s).args().as_deref().unwrap()[0], CONTAINER_PATH);
    assert!(env_of(&s).contains(&"A=é".to_string()));
    assert!(!env_of(&s).iter().any(|e| e.starts_with(codec::VAR)));
    assert!(!s
        .mounts()
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.destination() == Path::new(CONTAINER_PATH)));
}

#[test]
fn a_later_utf8_value_of_the_same_key_wins_over_bytes() {
    let mut f = Fixture::new();
    f.host.envexec = Some("/usr/libexec/ferrio/ferrio-envexec".into());
    f.config.envs = vec![
        KeyValue {
            key: "SECRET".into(),
            value: vec![0xff],
        },
        KeyValue {
            key: "SECRET".into(),
            value: b"plain".to_vec(),
        },
    ];
    let s = f.spec();
    assert!(env_of(&s).contains(&"SECRET=plain".to_string()));
    assert!(!process(&s).args().as_deref().unwrap()[0].contains("envexec"));
}

#[test]
fn an_env_value_that_is_not_utf8_is_refused_by_name_without_the_helper() {
    let mut f = Fixture::new();
    f.host.envexec = None;
    f.config.envs = vec![KeyValue {
        key: "SECRET".into(),
        value: vec![b'a', 0xff, 0xfe],
    }];
    let err = f.build().expect_err("no helper");
    assert!(err.to_string().contains("SECRET"), "{err}");
    assert!(err.to_string().contains("ferrio-envexec"), "{err}");
    assert_eq!(invalid_field(f.build()), "envs");
}

#[test]
fn the_helper_is_refused_when_the_request_mounts_dev() {
    let mut f = Fixture::new();
    f.host.envexec = Some("/usr/libexec/ferrio/ferrio-envexec".into());
    f.config.envs = vec![KeyValue {
        key: "SECRET".into(),
        value: vec![0xff],
    }];
    f.config.mounts = vec![CriMount {
        container_path: "/dev".into(),
        host_path: f.dir.path().join("dev").display().to_string(),
        ..Default::default()
    }];
    let err = f.build().expect_err("/dev is the request's");
    assert!(err.to_string().contains("/dev"), "{err}");
    assert_eq!(invalid_field(f.build()), "envs");
}

#[test]
fn working_dir_cri_then_image_then_root() {
    let mut f = Fixture::new();
    assert_eq!(process(&f.spec()).cwd(), Path::new("/"));
    f.image.working_dir = "/srv".into();
    assert_eq!(process(&f.spec()).cwd(), Path::new("/srv"));
    f.config.working_dir = "/work".into();
    assert_eq!(process(&f.spec()).cwd(), Path::new("/work"));
    f.config.working_dir = "rel".into();
    assert_eq!(invalid_field(f.build()), "working_dir");
}

fn user_of(s: &Spec) -> (u32, u32, Vec<u32>) {
    let u = process(s).user();
    (
        u.uid(),
        u.gid(),
        u.additional_gids().clone().unwrap_or_default(),
    )
}

#[test]
fn users_resolve_from_the_image() {
    let mut f = Fixture::new();
    assert_eq!(user_of(&f.spec()), (0, 0, vec![]));
    f.image.user = "alice".into();
    assert_eq!(user_of(&f.spec()), (1000, 1000, vec![10, 29]));
    assert!(env_of(&f.spec()).contains(&"HOME=/home/alice".to_string()));
    f.image.user = "bob:audio".into();
    assert_eq!(user_of(&f.spec()), (1001, 29, vec![10]));
    f.image.user = "1001:5".into();
    assert_eq!(user_of(&f.spec()), (1001, 5, vec![10]));
    // a uid without a passwd entry: numeric, group 0
    f.image.user = "4000".into();
    assert_eq!(user_of(&f.spec()), (4000, 0, vec![]));
    f.image.user = "nobody-here".into();
    assert_eq!(invalid_field(f.build()), "user");
    f.image.user = "alice:nogroup".into();
    assert_eq!(invalid_field(f.build()), "group");
}

#[test]
fn users_from_the_security_context() {
    let mut f = Fixture::new();
    f.image.user = "alice".into();
    f.sec().run_as_user = Some(Int64Value { value: 1001 });
    assert_eq!(user_of(&f.spec()), (1001, 1001, vec![10]));
    f.sec().run_as_group = Some(Int64Value { value: 77 });
    f.sec().supplemental_groups = vec![500, 10];
    assert_eq!(user_of(&f.spec()), (1001, 77, vec![10, 500]));
    f.sec().supplemental_groups_policy = SupplementalGroupsPolicy::Strict as i32;
    assert_eq!(user_of(&f.spec()), (1001, 77, vec![500, 10]));
    f.sec().run_as_user = None;
    f.sec().run_as_username = "alice".into();
    f.sec().supplemental_groups_policy = SupplementalGroupsPolicy::Merge as i32;
    f.sec().supplemental_groups.clear();
    assert_eq!(user_of(&f.spec()), (1000, 77, vec![10, 29]));
    f.sec().run_as_username = "mallory".into();
    assert_eq!(invalid_field(f.build()), "user");
    f.sec().run_as_username.clear();
    // a group without a user is refused (CRI says the runtime MUST error)
    assert_eq!(invalid_field(f.build()), "run_as_group");
    f.sec().run_as_group = None;
    f.sec().run_as_user = Some(Int64Value { value: -1 });
    assert_eq!(invalid_field(f.build()), "run_as_user");
}

#[test]
fn passwd_symlinks_stay_inside_the_rootfs() {
    let f = Fixture::new();
    let etc = f.rootfs().join("etc");
    std::fs::create_dir_all(f.rootfs().join("real")).unwrap();
    std::fs::rename(etc.join("passwd"), f.rootfs().join("real/passwd")).unwrap();
    // absolute target: must resolve inside the rootfs, not the host's /real
    std::os::unix::fs::symlink("/real/passwd", etc.join("passwd")).unwrap();
    let mut f = f;
    f.image.user = "alice".into();
    assert_eq!(user_of(&f.spec()).0, 1000);
    assert_eq!(
        resolve_in_root(Path::new("/r"), "/../../etc/passwd"),
        PathBuf::from("/r/etc/passwd")
    );
}

#[test]
fn default_capabilities_add_and_drop() {
    let mut f = Fixture::new();
    let caps = bounding(&f.spec());
    assert_eq!(caps.len(), 9);
    assert!(caps.contains(&Cap::Chown) && caps.contains(&Cap::Kill));
    assert!(!caps.contains(&Cap::NetRaw));
    f.sec().capabilities = Some(Capability {
        add_capabilities: vec!["NET_ADMIN".into(), "CAP_SYS_TIME".into(), "net_raw".into()],
        drop_capabilities: vec!["KILL".into(), "CAP_CHOWN".into()],
        add_ambient_capabilities: vec![],
    });
    let caps = bounding(&f.spec());
    assert!(caps.contains(&Cap::NetAdmin) && caps.contains(&Cap::SysTime));
    assert!(caps.contains(&Cap::NetRaw));
    assert!(!caps.contains(&Cap::Kill) && !caps.contains(&Cap::Chown));
    assert_eq!(caps.len(), 10);
    // drop ALL then add one
    f.sec().capabilities = Some(Capability {
        add_capabilities: vec!["NET_BIND_SERVICE".into()],
        drop_capabilities: vec!["ALL".into()],
        add_ambient_capabilities: vec![],
    });
    assert_eq!(bounding(&f.spec()), vec![Cap::NetBindService]);
    // add ALL = what the host has, minus drops
    f.host.cap_bounding.retain(|c| c != "CAP_SYS_RESOURCE");
    f.sec().capabilities = Some(Capability {
        add_capabilities: vec!["ALL".into()],
        drop_capabilities: vec!["MKNOD".into()],
        add_ambient_capabilities: vec![],
    });
    let caps = bounding(&f.spec());
    assert_eq!(caps.len(), f.host.cap_bounding.len() - 1);
    assert!(!caps.contains(&Cap::SysResource) && !caps.contains(&Cap::Mknod));
    f.sec().capabilities = Some(Capability {
        add_capabilities: vec!["NOT_A_CAP".into()],
        ..Default::default()
    });
    assert_eq!(invalid_field(f.build()), "capabilities.add_capabilities");
}

#[test]
fn ambient_capabilities_are_inheritable_too() {
    let mut f = Fixture::new();
    f.sec().capabilities = Some(Capability {
        add_ambient_capabilities: vec!["NET_RAW".into()],
        ..Default::default()
    });
    let s = f.spec();
    let c = process(&s).capabilities().clone().unwrap();
    assert!(c.ambient().as_ref().unwrap().contains(&Cap::NetRaw));
    assert!(c.inheritable().as_ref().unwrap().contains(&Cap::NetRaw));
    assert!(c.bounding().as_ref().unwrap().contains(&Cap::NetRaw));
    assert_eq!(c.inheritable().as_ref().unwrap().len(), 1);
}

#[test]
fn privileged_gets_the_bounding_set_and_no_masks() {
    let mut f = Fixture::new();
    // this host's quirk: CAP_SYS_RESOURCE is not in the bounding set
    f.host.cap_bounding.retain(|c| c != "CAP_SYS_RESOURCE");
    f.privileged();
    let s = f.spec();
    let caps = bounding(&s);
    assert_eq!(caps.len(), f.host.cap_bounding.len());
    assert!(!caps.contains(&Cap::SysResource));
    assert!(caps.contains(&Cap::SysAdmin));
    let l = linux(&s);
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
    assert!(l.seccomp().is_none());
    let rules = l.resources().as_ref().unwrap().devices().clone().unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());
    let sys = mount_at(&s, "/sys").unwrap();
    assert!(sys.options().as_ref().unwrap().contains(&"rw".to_string()));
    // host devices come along (the host's /dev/null at least)
    assert!(l
        .devices()
        .as_ref()
        .map(|d| d.iter().any(|d| d.path() == Path::new("/dev/null")))
        .unwrap_or(false));
}

#[test]
fn privileged_container_needs_a_privileged_pod() {
    let mut f = Fixture::new();
    f.sec().privileged = true;
    assert_eq!(invalid_field(f.build()), "security_context.privileged");
}

#[test]
fn masked_and_readonly_paths() {
    let mut f = Fixture::new();
    let s = f.spec();
    let l = linux(&s);
    assert_eq!(
        l.masked_paths().clone().unwrap(),
        strings(&DEFAULT_MASKED_PATHS)
    );
    assert_eq!(
        l.readonly_paths().clone().unwrap(),
        strings(&DEFAULT_READONLY_PATHS)
    );
    assert!(mount_at(&s, "/sys")
        .unwrap()
        .options()
        .as_ref()
        .unwrap()
        .contains(&"ro".to_string()));
    f.sec().masked_paths = vec!["/proc/kcore".into()];
    f.sec().readonly_paths = vec!["/proc/sys".into()];
    let s = f.spec();
    assert_eq!(linux(&s).masked_paths().clone().unwrap(), ["/proc/kcore"]);
    assert_eq!(linux(&s).readonly_paths().clone().unwrap(), ["/proc/sys"]);
}

#[test]
fn namespaces_follow_the_pod() {
    let mut f = Fixture::new();
    let s = f.spec();
    assert_eq!(ns(&s, LinuxNamespaceType::Mount), Some(None));
    assert_eq!(
        ns(&s, LinuxNamespaceType::Pid),
        Some(Some(PathBuf::from("/proc/4242/ns/pid")))
    );
    assert_eq!(
        ns(&s, LinuxNamespaceType::Network),
        Some(Some(PathBuf::from("/run/netns/x")))
    );
    assert_eq!(
        ns(&s, LinuxNamespaceType::Uts),
        Some(Some(PathBuf::from("/run/ferrio/ns/uts-x")))
    );
    assert!(ns(&s, LinuxNamespaceType::Cgroup).is_some()); // default host is v2
    assert_eq!(s.hostname().as_deref(), Some("podhost"));
    f.sec().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    });
    assert_eq!(ns(&f.spec(), LinuxNamespaceType::Pid), Some(None));
    f.sec().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Node as i32,
        ..Default::default()
    });
    assert_eq!(ns(&f.spec(), LinuxNamespaceType::Pid), None);
    // host network/ipc/uts: no entry, and no hostname without a uts namespace
    f.netns = None;
    f.ipcns = None;
    f.utsns = None;
    f.host.cgroup_v2 = false;
    let s = f.spec();
    assert_eq!(ns(&s, LinuxNamespaceType::Network), None);
    assert_eq!(ns(&s, LinuxNamespaceType::Ipc), None);
    assert_eq!(ns(&s, LinuxNamespaceType::Uts), None);
    assert_eq!(ns(&s, LinuxNamespaceType::Cgroup), None);
    assert!(s.hostname().is_none());
    // TARGET: the target container's pid namespace, once the caller resolved its init
    f.sec().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: "target".into(),
        ..Default::default()
    });
    assert_eq!(
        pid_namespace_target(&f.request()).unwrap().as_deref(),
        Some("target")
    );
    assert_eq!(invalid_field(f.build()), "namespace_options.target_id");
    f.target_pid = Some(4242);
    assert_eq!(
        ns(&f.spec(), LinuxNamespaceType::Pid),
        Some(Some(PathBuf::from("/proc/4242/ns/pid")))
    );
    // TARGET without a target is a bad request; other modes name none
    f.sec().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        ..Default::default()
    });
    assert_eq!(
        invalid_field(pid_namespace_target(&f.request())),
        "linux.security_context.namespace_options.target_id"
    );
    f.sec().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        target_id: "ignored".into(),
        ..Default::default()
    });
    assert_eq!(pid_namespace_target(&f.request()).unwrap(), None);
}

#[test]
fn resources_and_host_quirks() {
    let mut f = Fixture::new();
    {
        let r = f.resources();
        r.cpu_shares = 512;
        r.cpu_quota = 50000;
        r.cpu_period = 100000;
        r.cpuset_cpus = "0".into();
        r.memory_limit_in_bytes = 64 << 20;
        r.memory_swap_limit_in_bytes = 64 << 20;
        r.oom_score_adj = -997;
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
        r.unified = [("memory.high".to_string(), "1000000".to_string())].into();
    }
    f.host.min_oom_score_adj = 0;
    let s = f.spec();
    let res = linux(&s).resources().clone().unwrap();
    let cpu = res.cpu().clone().unwrap();
    assert_eq!(cpu.shares(), Some(512));
    assert_eq!(cpu.quota(), Some(50000));
    assert_eq!(cpu.period(), Some(100000));
    assert_eq!(cpu.cpus().as_deref(), Some("0"));
    let mem = res.memory().unwrap();
    assert_eq!(mem.limit(), Some(64 << 20));
    assert_eq!(mem.swap(), Some(64 << 20));
    assert_eq!(res.hugepage_limits().as_ref().map(Vec::len), Some(2));
    assert!(res.unified().is_some());
    // clamped to the host's floor
    assert_eq!(process(&s).oom_score_adj(), Some(0));
    assert_eq!(
        linux(&s).cgroups_path().as_deref(),
        Some(Path::new("/ferrio/pod/c1"))
    );

    // this host: no hugetlb, cgroup v1, no swap accounting, clamp off
    f.host.hugetlb = false;
    f.host.cgroup_v2 = false;
    f.host.memory_swap = false;
    f.restrict = false;
    let s = f.spec();
    let res = linux(&s).resources().clone().unwrap();
    assert!(res.hugepage_limits().is_none());
    assert!(res.unified().is_none());
    assert_eq!(res.memory().unwrap().swap(), None);
    assert_eq!(process(&s).oom_score_adj(), Some(-997));
}

#[test]
fn no_lsm_fields_when_inactive() {
    let mut f = Fixture::new();
    f.host.apparmor = false;
    f.host.selinux = false;
    f.apparmor_profile = None;
    f.sec().selinux_options = Some(crate::cri::v1::SeLinuxOption {
        level: "s0:c1,c2".into(),
        ..Default::default()
    });
    let s = f.spec();
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("apparmorProfile"), "{json}");
    assert!(!json.contains("selinuxLabel"));
    assert!(!json.contains("mountLabel"));
    f.host.apparmor = true;
    f.host.selinux = true;
    f.apparmor_profile = Some("my-profile".into());
    let s = f.spec();
    assert_eq!(
        process(&s).apparmor_profile().as_deref(),
        Some("my-profile")
    );
    assert_eq!(
        process(&s).selinux_label().as_deref(),
        Some("system_u:system_r:container_t:s0:c1,c2")
    );
    assert_eq!(
        linux(&s).mount_label().as_deref(),
        Some("system_u:object_r:container_file_t:s0:c1,c2")
    );
}

#[test]
#[allow(deprecated)]
fn container_apparmor_requests() {
    use AppArmorRequest::*;
    let mut f = Fixture::new();
    // No security context, or one that names nothing: the runtime default.
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        RuntimeDefault
    );
    f.sec();
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        RuntimeDefault
    );
    f.sec().apparmor_profile = "localhost/old-form".into();
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        Localhost("old-form".into())
    );
    // The structured field wins over the string.
    f.sec().apparmor = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "new-form".into(),
    });
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        Localhost("new-form".into())
    );
    f.sec().apparmor = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        RuntimeDefault
    );
    // Privileged: no default profile; a named one still applies.
    f.privileged();
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        Unconfined
    );
    f.sec().apparmor = None;
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        Localhost("old-form".into())
    );
    f.sec().apparmor_profile = String::new();
    assert_eq!(
        container_apparmor_request(&f.request()).unwrap(),
        Unconfined
    );
    f.sec().apparmor_profile = "bogus".into();
    assert!(matches!(
        container_apparmor_request(&f.request()),
        Err(SpecError::Invalid { .. })
    ));
}

#[test]
fn seccomp_profiles() {
    let mut f = Fixture::new();
    // nothing asked: unconfined (the CRI default for an empty profile path)
    assert!(linux(&f.spec()).seccomp().is_none());
    f.sec().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    let s = f.spec();
    let sc = linux(&s).seccomp().clone().unwrap();
    assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
    let allowed: Vec<String> = sc
        .syscalls()
        .clone()
        .unwrap()
        .iter()
        .filter(|c| c.action() == LinuxSeccompAction::ScmpActAllow && c.args().is_none())
        .flat_map(|c| c.names().clone())
        .collect();
    assert!(allowed.contains(&"read".to_string()));
    assert!(allowed.contains(&"execve".to_string()));
    assert!(!allowed.contains(&"sethostname".to_string()));
    assert!(!allowed.contains(&"mount".to_string()));
    // SYS_ADMIN unlocks the syscalls it governs
    f.sec().capabilities = Some(Capability {
        add_capabilities: vec!["SYS_ADMIN".into()],
        ..Default::default()
    });
    let s = f.spec();
    let names: Vec<String> = linux(&s)
        .seccomp()
        .clone()
        .unwrap()
        .syscalls()
        .clone()
        .unwrap()
        .iter()
        .flat_map(|c| c.names().clone())
        .collect();
    assert!(names.contains(&"sethostname".to_string()));
    // no kernel support: default silently off
    f.host.seccomp = false;
    assert!(linux(&f.spec()).seccomp().is_none());
    f.host.seccomp = true;
    f.sec().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    });
    assert!(linux(&f.spec()).seccomp().is_none());

    // a docker-format profile from the node
    let path = f.dir.path().join("profile.json");
    std::fs::write(
        &path,
        r#"{"defaultAction":"SCMP_ACT_ALLOW",
            "archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
            "syscalls":[{"names":["sethostname","setdomainname"],"action":"SCMP_ACT_ERRNO","errnoRet":1,
                         "includes":{},"excludes":{}},
                        {"name":"chmod","action":"SCMP_ACT_ERRNO","args":[]}]}"#,
    )
    .unwrap();
    f.sec().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: path.display().to_string(),
    });
    let s = f.spec();
    let sc = linux(&s).seccomp().clone().unwrap();
    assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActAllow);
    assert_eq!(sc.architectures().as_ref().map(Vec::len), Some(2));
    let calls = sc.syscalls().clone().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].names(), &["sethostname", "setdomainname"]);
    assert_eq!(calls[0].errno_ret(), Some(1));
    assert_eq!(calls[1].names(), &["chmod"]);
    f.sec().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: "/nonexistent/profile.json".into(),
    });
    assert_eq!(invalid_field(f.build()), "seccomp.localhost_ref");
    // the deprecated string form
    f.sec().seccomp = None;
    #[allow(deprecated)]
    {
        f.sec().seccomp_profile_path = "runtime/default".into();
    }
    assert!(linux(&f.spec()).seccomp().is_some());
}

#[test]
fn image_volumes_bind_their_overlay_read_only() {
    let mut f = Fixture::new();
    let image = || {
        Some(ImageSpec {
            image: "sha256:abc".into(),
            ..Default::default()
        })
    };
    f.config.mounts = vec![CriMount {
        container_path: "/mnt/image".into(),
        readonly: true,
        image: image(),
        ..Default::default()
    }];
    // Not mounted by the lifecycle: refused, never an empty bind.
    assert_eq!(invalid_field(f.build()), "mounts[0]");
    let source = f.dir.path().join("iv/0/merged");
    f.image_volumes = vec![crate::spec::ImageVolume {
        index: 0,
        source: source.clone(),
    }];
    let s = f.spec();
    let m = mount_at(&s, "/mnt/image").unwrap();
    assert_eq!(m.typ().as_deref(), Some("bind"));
    assert_eq!(m.source().as_deref(), Some(source.as_path()));
    assert_eq!(
        m.options().clone().unwrap(),
        ["rbind", "rprivate", "ro", "nodev"]
    );
}

#[test]
fn bind_mounts_and_pod_files() {
    let mut f = Fixture::new();
    let data = f.dir.path().join("data");
    let missing = f.dir.path().join("created/by/us");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&data, f.dir.path().join("link")).unwrap();
    f.config.mounts = vec![
        CriMount {
            container_path: "/data/sub".into(),
            host_path: missing.display().to_string(),
            ..Default::default()
        },
        CriMount {
            container_path: "/data".into(),
            host_path: f.dir.path().join("link").display().to_string(),
            readonly: true,
            ..Default::default()
        },
        CriMount {
            container_path: "/etc/hosts".into(),
            host_path: f.dir.path().join("hosts").display().to_string(),
            ..Default::default()
        },
    ];
    let s = f.spec();
    let mounts = s.mounts().clone().unwrap();
    let data_idx = mounts
        .iter()
        .position(|m| m.destination() == Path::new("/data"));
    let sub_idx = mounts
        .iter()
        .position(|m| m.destination() == Path::new("/data/sub"));
    assert!(data_idx.unwrap() < sub_idx.unwrap(), "parents first");
    let d = &mounts[data_idx.unwrap()];
    assert_eq!(d.typ().as_deref(), Some("bind"));
    assert_eq!(
        d.source().as_deref(),
        Some(data.canonicalize().unwrap().as_path())
    );
    assert_eq!(d.options().clone().unwrap(), ["rbind", "rprivate", "ro"]);
    assert!(missing.is_dir(), "missing host dirs are created");
    // the request's /etc/hosts wins; the other pod files are ours
    assert_eq!(
        mounts
            .iter()
            .filter(|m| m.destination() == Path::new("/etc/hosts"))
            .count(),
        1
    );
    assert_eq!(
        mount_at(&s, "/etc/resolv.conf")
            .unwrap()
            .source()
            .as_deref(),
        Some(f.dir.path().join("resolv.conf").as_path())
    );
    assert!(mount_at(&s, "/etc/hostname").is_some());
    for d in [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
    ] {
        assert!(mount_at(&s, d).is_some(), "{d}");
    }
    assert!(linux(&s).rootfs_propagation().is_none());

    f.config.mounts = vec![CriMount {
        container_path: "/x".into(),
        host_path: data.display().to_string(),
        recursive_read_only: true,
        ..Default::default()
    }];
    assert_eq!(invalid_field(f.build()), "mounts[0]");
    f.config.mounts[0].readonly = true;
    assert!(mount_at(&f.spec(), "/x")
        .unwrap()
        .options()
        .as_ref()
        .unwrap()
        .contains(&"rro".to_string()));
    f.host.recursive_read_only_mounts = false;
    assert_eq!(invalid_field(f.build()), "mounts[0]");
    f.host.recursive_read_only_mounts = true;
    f.config.mounts[0].container_path = "relative".into();
    assert_eq!(invalid_field(f.build()), "mounts[0]");

    f.pod_files = false;
    f.config.mounts.clear();
    assert!(mount_at(&f.spec(), "/etc/hosts").is_none());
    f.pod_files = true;
    f.sec().readonly_rootfs = true;
    let s = f.spec();
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    assert!(mount_at(&s, "/etc/hosts")
        .unwrap()
        .options()
        .as_ref()
        .unwrap()
        .contains(&"ro".to_string()));
}

#[test]
fn propagation_needs_a_shared_source() {
    let mi = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /mnt/private rw,relatime - tmpfs tmpfs rw
31 22 0:41 / /mnt/slave rw,relatime master:7 - tmpfs tmpfs rw
";
    assert_eq!(
        mount_propagation_of(mi, Path::new("/var/x")),
        Some((true, false))
    );
    assert_eq!(
        mount_propagation_of(mi, Path::new("/mnt/private/a")),
        Some((false, false))
    );
    assert_eq!(
        mount_propagation_of(mi, Path::new("/mnt/slave")),
        Some((false, true))
    );

    // the real host: whichever way its mounts propagate, the spec agrees
    let mut f = Fixture::new();
    let dir = f.dir.path().join("prop");
    std::fs::create_dir(&dir).unwrap();
    let real = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let (shared, slave) = mount_propagation_of(&real, &dir.canonicalize().unwrap()).unwrap();
    f.config.mounts = vec![CriMount {
        container_path: "/p".into(),
        host_path: dir.display().to_string(),
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    match f.build() {
        Ok(s) => {
            assert!(shared);
            assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("rshared"));
            assert!(mount_at(&s, "/p")
                .unwrap()
                .options()
                .as_ref()
                .unwrap()
                .contains(&"rshared".to_string()));
        }
        Err(SpecError::Invalid { .. }) => assert!(!shared),
        Err(e) => panic!("{e}"),
    }
    f.config.mounts[0].propagation = MountPropagation::PropagationHostToContainer as i32;
    match f.build() {
        Ok(s) => {
            assert!(shared || slave);
            assert_eq!(linux(&s).rootfs_propagation().as_deref(), Some("rslave"));
        }
        Err(SpecError::Invalid { .. }) => assert!(!shared && !slave),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn devices_from_the_request() {
    let mut f = Fixture::new();
    f.config.devices = vec![Device {
        container_path: "/dev/mynull".into(),
        host_path: "/dev/null".into(),
        permissions: "rw".into(),
    }];
    let s = f.spec();
    let devs = linux(&s).devices().clone().unwrap();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].path(), Path::new("/dev/mynull"));
    assert_eq!((devs[0].major(), devs[0].minor()), (1, 3));
    assert_eq!(devs[0].typ(), LinuxDeviceType::C);
    let rules = linux(&s)
        .resources()
        .clone()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert!(!rules[0].allow(), "deny all first");
    assert!(rules[1].allow());
    assert_eq!(rules[1].access().as_deref(), Some("rw"));
    assert_eq!(rules[1].major(), Some(1));
    f.config.devices[0].host_path = f.dir.path().join("hosts").display().to_string();
    assert_eq!(invalid_field(f.build()), "devices[0]");
    f.config.devices[0].host_path = "/dev/null".into();
    f.config.devices[0].permissions = "rwx".into();
    assert_eq!(invalid_field(f.build()), "devices[0]");
}

#[test]
fn annotations_and_no_new_privs() {
    let mut f = Fixture::new();
    f.config.annotations = [("a".to_string(), "b".to_string())].into();
    f.sec().no_new_privs = true;
    let s = f.spec();
    let a = s.annotations().clone().unwrap();
    assert_eq!(a["a"], "b");
    assert_eq!(a[ANN_CONTAINER_TYPE], "container");
    assert_eq!(a[ANN_CONTAINER_NAME], "app");
    assert_eq!(a[ANN_SANDBOX_NAME], "pod");
    assert_eq!(a[ANN_SANDBOX_NAMESPACE], "ns");
    assert_eq!(a[ANN_SANDBOX_UID], "uid-1");
    assert_eq!(a[ANN_IMAGE_NAME], "docker.io/library/busybox:1.36");
    assert_eq!(process(&s).no_new_privileges(), Some(true));
}

#[test]
fn a_systemd_cgroup_keeps_crun_out_of_a_subgroup() {
    let mut f = Fixture::new();
    let key = crate::spec::annotations::ANN_CRUN_SYSTEMD_SUBGROUP;
    assert!(!f.spec().annotations().clone().unwrap().contains_key(key));
    f.cgroups_path = "kubepods.slice:ferrio:c1".into();
    assert_eq!(f.spec().annotations().clone().unwrap()[key], "");
    f.config.annotations = [(key.to_string(), "inner".to_string())].into();
    assert_eq!(f.spec().annotations().clone().unwrap()[key], "inner");
}

#[test]
fn update_resources_follow_the_host() {
    let r = LinuxContainerResources {
        cpu_shares: 512,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        memory_limit_in_bytes: 128 << 20,
        memory_swap_limit_in_bytes: 128 << 20,
        hugepage_limits: vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }],
        unified: [("memory.high".to_string(), "100M".to_string())].into(),
        ..Default::default()
    };
    let host = HostFeatures {
        hugetlb: false,
        cgroup_v2: false,
        memory_swap: false,
        ..HostFeatures::default()
    };
    let out = update_resources(&r, &host).unwrap();
    assert!(out.devices().is_none());
    assert!(out.hugepage_limits().is_none());
    assert!(out.unified().is_none());
    let cpu = out.cpu().as_ref().unwrap();
    assert_eq!(cpu.shares(), Some(512));
    assert_eq!(cpu.quota(), Some(50_000));
    assert_eq!(cpu.period(), Some(100_000));
    let mem = out.memory().as_ref().unwrap();
    assert_eq!(mem.limit(), Some(128 << 20));
    assert_eq!(mem.swap(), None);
    let out = update_resources(&r, &HostFeatures::default()).unwrap();
    assert_eq!(out.hugepage_limits().as_ref().map(Vec::len), Some(1));
    assert!(out.unified().is_some());
    assert_eq!(out.memory().as_ref().unwrap().swap(), Some(128 << 20));
}

#[test]
fn cgroups_path_must_be_absolute() {
    assert!(check_cgroups_path("/a/b").is_ok());
    assert!(check_cgroups_path("kubepods.slice:cri-ferrio:abc").is_ok());
    assert!(check_cgroups_path("relative/path").is_err());
}

/// Runs a spec through the real runc: (exit status, stdout).
fn run_in_runc(f: &Fixture, name: &str) -> (i32, String) {
    let id = format!("ferrio-spectest-{}-{name}", std::process::id());
    let bundle = f.dir.path().join(format!("bundle-{name}"));
    std::fs::create_dir_all(&bundle).unwrap();
    let spec = f.spec();
    spec.save(bundle.join("config.json")).unwrap();
    let state_root = f.dir.path().join("runc-root");
    let out = std::process::Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(&state_root)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    // runc run deletes the container; make sure of it, then of the cgroup leaves.
    let _ = std::process::Command::new("/usr/sbin/runc")
        .arg("--root")
        .arg(&state_root)
        .args(["delete", "-f", &id])
        .output();
    if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in ctrls.flatten() {
            let _ = std::fs::remove_dir(c.path().join(f.cgroups_path.trim_start_matches('/')));
        }
    }
    let _ = std::fs::remove_dir(
        Path::new("/sys/fs/cgroup").join(f.cgroups_path.trim_start_matches('/')),
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "runc failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn specs_run_under_real_runc() {
    let can_run = nix::unistd::geteuid().is_root()
        && Path::new("/usr/sbin/runc").exists()
        && Path::new("/usr/bin/busybox").exists();
    if !can_run {
        eprintln!("skipped: needs root, /usr/sbin/runc and a static /usr/bin/busybox");
        return;
    }
    let mut f = Fixture::new();
    let bin = f.rootfs().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/usr/bin/busybox", bin.join("busybox")).unwrap();
    f.host = HostFeatures::detect();
    f.netns = None;
    f.ipcns = None;
    f.utsns = None;
    f.cgroups_path = format!("/ferrio-spectest-{}", std::process::id());
    f.image.entrypoint = vec!["/bin/busybox".into(), "sh".into(), "-c".into()];
    f.image.cmd = vec![
        "grep CapBnd /proc/self/status; cat /proc/self/oom_score_adj; \
         /bin/busybox id -u; /bin/busybox touch /x 2>/dev/null && echo writable || echo readonly"
            .into(),
    ];
    f.image.user = "alice".into();
    f.sec().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    });
    f.sec().readonly_rootfs = true;
    f.sec().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    {
        let r = f.resources();
        r.oom_score_adj = -998;
        r.memory_limit_in_bytes = 64 << 20;
        r.hugepage_limits = vec![HugepageLimit {
            page_size: "2MB".into(),
            limit: 0,
        }];
    }
    let (_, out) = run_in_runc(&f, "plain");
    // CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP NET_BIND_SERVICE
    assert!(out.contains("CapBnd:\t00000000000005fb"), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let floor = f.host.min_oom_score_adj.max(-998);
    assert_eq!(lines[1], floor.to_string(), "{out}");
    assert_eq!(lines[2], "1000");
    assert_eq!(lines[3], "readonly");

    // privileged as root: exactly the host's bounding set, which runc must accept
    f.image.user.clear();
    f.privileged();
    f.sec().readonly_rootfs = false;
    let (_, out) = run_in_runc(&f, "privileged");
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .unwrap()
        .trim()
        .to_string();
    assert!(out.contains(&format!("CapBnd:\t{bnd}")), "{out} vs {bnd}");
    assert!(out.contains("writable"));
}

#[test]
fn a_container_joins_its_pods_user_namespace() {
    let mut f = Fixture::new();
    let mapping = crate::cri::v1::IdMapping {
        host_id: 65536,
        container_id: 0,
        length: 65536,
    };
    f.pod.linux = Some(LinuxPodSandboxConfig {
        security_context: Some(LinuxSandboxSecurityContext {
            namespace_options: Some(crate::cri::v1::NamespaceOption {
                userns_options: Some(crate::cri::v1::UserNamespace {
                    mode: crate::cri::v1::NamespaceMode::Pod as i32,
                    uids: vec![mapping],
                    gids: vec![mapping],
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Without the pod's pinned user namespace there is nothing to join.
    let e = f.build().unwrap_err().to_string();
    assert!(e.contains("no user namespace to join"), "{e}");
    f.userns = Some(PathBuf::from("/run/ferrio/ns/userns/p"));
    let s = f.spec();
    assert_eq!(
        ns(&s, LinuxNamespaceType::User),
        Some(Some(PathBuf::from("/run/ferrio/ns/userns/p")))
    );
    let uids = linux(&s).uid_mappings().clone().unwrap();
    assert_eq!(
        (uids[0].container_id(), uids[0].host_id(), uids[0].size()),
        (0, 65536, 65536)
    );
    assert!(linux(&s).gid_mappings().is_some());
    // Without one, no user namespace and no mappings.
    f.pod.linux = None;
    let s = f.spec();
    assert_eq!(ns(&s, LinuxNamespaceType::User), None);
    assert!(linux(&s).uid_mappings().is_none());
}
