//! The pause container's spec, end to end through [`crate::spec::pod_spec`], and the request
//! rules that only pods use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::cri::v1::{
    security_profile::ProfileType, LinuxContainerResources, NamespaceMode, PodSandboxConfig,
    SecurityProfile,
};
use crate::cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxMetadata,
};
use crate::image::ImageConfig;
use crate::oci::apparmor::AppArmorRequest;
use crate::oci::cgroups::CgroupLimits;
use crate::oci::host::HostFeatures;
use crate::spec::annotations::*;
use crate::spec::cri::*;
use crate::spec::process::{merge_env, DEFAULT_PATH};
use crate::spec::security::{
    normalize_capability, parse_capability, strings, DEFAULT_CAPABILITIES, DEFAULT_MASKED_PATHS,
};
use crate::spec::SpecError;
use oci_spec::runtime::Capability as Cap;

struct Fixture {
    config: PodSandboxConfig,
    image: ImageConfig,
    host: HostFeatures,
    netns: Option<PathBuf>,
    ipcns: Option<PathBuf>,
    utsns: Option<PathBuf>,
    userns: Option<PathBuf>,
    restrict: bool,
    apparmor_profile: Option<String>,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            config: PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    name: "pod".into(),
                    uid: "u1".into(),
                    namespace: "default".into(),
                    attempt: 1,
                }),
                hostname: "podhost".into(),
                log_directory: "/var/log/pods/x".into(),
                annotations: [("k".to_string(), "v".to_string())].into(),
                ..Default::default()
            },
            image: ImageConfig {
                entrypoint: vec!["/catatonit".into()],
                cmd: vec!["-P".into()],
                ..Default::default()
            },
            host: HostFeatures::default(),
            netns: Some("/run/netns/p".into()),
            ipcns: Some("/run/ferrio/ns/ipc".into()),
            utsns: Some("/run/ferrio/ns/uts".into()),
            userns: None,
            restrict: true,
            apparmor_profile: None,
        }
    }

    fn sec(&mut self) -> &mut LinuxSandboxSecurityContext {
        self.config
            .linux
            .get_or_insert_with(LinuxPodSandboxConfig::default)
            .security_context
            .get_or_insert_with(Default::default)
    }

    fn sysctls(&mut self) -> &mut HashMap<String, String> {
        &mut self
            .config
            .linux
            .get_or_insert_with(LinuxPodSandboxConfig::default)
            .sysctls
    }

    fn build(&self) -> Result<Spec, SpecError> {
        pod_spec(&PauseSpecInput {
            request: PodRequest::new(&self.config),
            image: &self.image,
            rootfs: Path::new("/var/lib/ferrio/pause/rootfs"),
            netns: self.netns.as_deref(),
            ipcns: self.ipcns.as_deref(),
            utsns: self.utsns.as_deref(),
            userns: self.userns.as_deref(),
            cgroups_path: "/ferrio/pod-1/pause".into(),
            hostname: self.config.hostname.clone(),
            host: &self.host,
            restrict_oom_score_adj: self.restrict,
            apparmor_profile: self.apparmor_profile.clone(),
        })
    }
}

fn ns_types(s: &Spec) -> Vec<(LinuxNamespaceType, Option<PathBuf>)> {
    s.linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .map(|n| (n.typ(), n.path().clone()))
        .collect()
}

#[test]
fn pause_process_and_oom_clamp() {
    let mut f = Fixture::new();
    f.host.min_oom_score_adj = 0;
    let s = f.build().unwrap();
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.args().clone().unwrap(), ["/catatonit", "-P"]);
    assert_eq!(
        p.oom_score_adj(),
        Some(0),
        "-998 clamped to the host's floor"
    );
    assert!(p.rlimits().is_none());
    assert!(p.apparmor_profile().is_none() && p.selinux_label().is_none());
    let caps = p
        .capabilities()
        .clone()
        .unwrap()
        .bounding()
        .clone()
        .unwrap();
    assert_eq!(caps.len(), DEFAULT_CAPABILITIES.len());
    assert!(caps.contains(&Cap::Chown) && !caps.contains(&Cap::SysAdmin));
    assert_eq!(s.hostname().as_deref(), Some("podhost"));
    assert_eq!(
        s.linux().as_ref().unwrap().cgroups_path().as_deref(),
        Some(Path::new("/ferrio/pod-1/pause"))
    );
    let a = s.annotations().clone().unwrap();
    assert_eq!(a[ANN_CONTAINER_TYPE], "sandbox");
    assert_eq!(a[ANN_SANDBOX_NAME], "pod");
    assert_eq!(a[ANN_SANDBOX_LOG_DIR], "/var/log/pods/x");
    assert_eq!(a["k"], "v");
    f.restrict = false;
    let s = f.build().unwrap();
    assert_eq!(s.process().as_ref().unwrap().oom_score_adj(), Some(-998));
    f.image.entrypoint.clear();
    f.image.cmd.clear();
    let s = f.build().unwrap();
    assert_eq!(
        s.process().as_ref().unwrap().args().clone().unwrap(),
        ["/pause"]
    );
    let mut spec = s;
    set_sandbox_id(&mut spec, "abc");
    assert_eq!(spec.annotations().as_ref().unwrap()[ANN_SANDBOX_ID], "abc");
}

#[test]
fn pause_namespaces() {
    let mut f = Fixture::new();
    f.host.cgroup_v2 = false;
    let s = f.build().unwrap();
    let n = ns_types(&s);
    assert!(n.contains(&(LinuxNamespaceType::Mount, None)));
    assert!(n.contains(&(LinuxNamespaceType::Pid, None)));
    assert!(n.contains(&(LinuxNamespaceType::Network, Some("/run/netns/p".into()))));
    assert!(n.contains(&(LinuxNamespaceType::Ipc, Some("/run/ferrio/ns/ipc".into()))));
    assert!(n.contains(&(LinuxNamespaceType::Uts, Some("/run/ferrio/ns/uts".into()))));
    assert_eq!(n.len(), 5);
    f.netns = None;
    f.ipcns = None;
    f.utsns = None;
    f.sec().namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let s = f.build().unwrap();
    assert_eq!(ns_types(&s), vec![(LinuxNamespaceType::Mount, None)]);
    assert!(
        s.hostname().is_none(),
        "no hostname without a uts namespace"
    );
}

fn pod_userns(
    uids: Vec<crate::cri::v1::IdMapping>,
    gids: Vec<crate::cri::v1::IdMapping>,
) -> NamespaceOption {
    NamespaceOption {
        userns_options: Some(crate::cri::v1::UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids,
            gids,
        }),
        ..Default::default()
    }
}

fn id_map(container_id: u32, host_id: u32, length: u32) -> crate::cri::v1::IdMapping {
    crate::cri::v1::IdMapping {
        host_id,
        container_id,
        length,
    }
}

#[test]
fn pause_joins_the_pinned_user_namespace_with_its_mappings() {
    let mut f = Fixture::new();
    f.userns = Some("/run/ferrio/ns/userns/p".into());
    f.sec().namespace_options = Some(pod_userns(
        vec![id_map(0, 65536, 65536)],
        vec![id_map(0, 131072, 65536)],
    ));
    let s = f.build().unwrap();
    let n = ns_types(&s);
    // First, so that the namespaces the runtime creates belong to it.
    assert_eq!(
        n[0],
        (
            LinuxNamespaceType::User,
            Some("/run/ferrio/ns/userns/p".into())
        )
    );
    let linux = s.linux().as_ref().unwrap();
    let uids = linux.uid_mappings().clone().unwrap();
    let gids = linux.gid_mappings().clone().unwrap();
    assert_eq!(
        (uids[0].container_id(), uids[0].host_id(), uids[0].size()),
        (0, 65536, 65536)
    );
    assert_eq!(
        (gids[0].container_id(), gids[0].host_id(), gids[0].size()),
        (0, 131072, 65536)
    );
    // The pod's other namespaces stay the pinned ones.
    assert!(n.contains(&(LinuxNamespaceType::Network, Some("/run/netns/p".into()))));
}

#[test]
fn a_user_namespace_without_a_pinned_one_is_refused() {
    let mut f = Fixture::new();
    f.sec().namespace_options = Some(pod_userns(
        vec![id_map(0, 65536, 65536)],
        vec![id_map(0, 65536, 65536)],
    ));
    let e = f.build().unwrap_err().to_string();
    assert!(e.contains("no user namespace to join"), "{e}");
}

#[test]
fn bad_id_mappings_are_refused() {
    let good = || vec![id_map(0, 65536, 65536)];
    for (uids, why) in [
        (vec![], "at least one range"),
        (vec![id_map(0, 65536, 0)], "length 0"),
        (vec![id_map(0, 0, 65536)], "host's root"),
        (vec![id_map(1, 65536, 10)], "root (id 0) is not mapped"),
        (
            vec![id_map(0, 65536, 100), id_map(50, 200000, 100)],
            "overlap",
        ),
        (
            vec![id_map(0, 65536, 100), id_map(100, 65600, 100)],
            "overlap",
        ),
        (vec![id_map(0, u32::MAX - 10, 100)], "past the last id"),
    ] {
        let mut f = Fixture::new();
        f.userns = Some("/run/ferrio/ns/userns/p".into());
        f.sec().namespace_options = Some(pod_userns(uids.clone(), good()));
        let e = f.build().unwrap_err();
        assert!(matches!(e, SpecError::Invalid { .. }), "{uids:?}: {e}");
        assert!(e.to_string().contains(why), "{uids:?}: {e}");
        assert!(e.to_string().contains("userns_options.uids"), "{e}");
    }
    // Two ranges side by side are fine.
    let mut f = Fixture::new();
    f.userns = Some("/run/ferrio/ns/userns/p".into());
    f.sec().namespace_options = Some(pod_userns(
        vec![id_map(0, 65536, 100), id_map(100, 65636, 100)],
        good(),
    ));
    f.build().unwrap();
}

#[test]
fn user_namespace_modes() {
    let opts = |mode: NamespaceMode, uids| NamespaceOption {
        userns_options: Some(crate::cri::v1::UserNamespace {
            mode: mode as i32,
            uids,
            gids: vec![],
        }),
        ..Default::default()
    };
    assert_eq!(user_namespace(None).unwrap(), None);
    assert_eq!(
        user_namespace(Some(&opts(NamespaceMode::Node, vec![]))).unwrap(),
        None
    );
    assert!(user_namespace(Some(&opts(NamespaceMode::Node, vec![id_map(0, 1, 1)]))).is_err());
    assert!(user_namespace(Some(&opts(NamespaceMode::Container, vec![]))).is_err());
    let (uids, gids) = user_namespace(Some(&opts(NamespaceMode::Pod, vec![id_map(0, 7, 3)])))
        .unwrap()
        .unwrap();
    assert_eq!(uids.len(), 1);
    assert!(gids.is_empty());
}

#[test]
fn sysctls_are_validated() {
    let mut f = Fixture::new();
    f.sysctls().insert("net.ipv4.ip_forward".into(), "1".into());
    f.sysctls().insert("kernel.shmmax".into(), "1000000".into());
    f.sysctls()
        .insert("net/ipv4/conf/eth0.100/forwarding".into(), "1".into());
    let s = f.build().unwrap();
    let got = s.linux().as_ref().unwrap().sysctl().clone().unwrap();
    assert_eq!(got["net.ipv4.ip_forward"], "1");
    assert_eq!(got["kernel.shmmax"], "1000000");
    assert_eq!(got["net.ipv4.conf.eth0/100.forwarding"], "1");

    f.ipcns = None;
    assert!(matches!(f.build(), Err(SpecError::Invalid { .. })));
    f.ipcns = Some("/x".into());
    f.netns = None;
    assert!(matches!(f.build(), Err(SpecError::Invalid { .. })));
    f.netns = Some("/y".into());
    f.sysctls().clear();
    f.sysctls().insert("kernel.panic".into(), "1".into());
    match f.build() {
        Err(SpecError::Invalid { field, .. }) => assert_eq!(field, "sysctls[kernel.panic]"),
        other => panic!("{other:?}"),
    }
    f.sysctls().clear();
    for ok in ["kernel.msgmax", "kernel.sem", "fs.mqueue.msg_max"] {
        f.sysctls().insert(ok.into(), "1".into());
    }
    assert!(f.build().is_ok());
}

#[test]
fn pause_security() {
    let mut f = Fixture::new();
    let s = f.build().unwrap();
    let l = s.linux().as_ref().unwrap();
    assert_eq!(
        l.masked_paths().clone().unwrap(),
        strings(&DEFAULT_MASKED_PATHS)
    );
    assert!(l.seccomp().is_none(), "no profile asked: unconfined");
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(false));
    f.sec().seccomp = Some(SecurityProfile {
        profile_type: ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    f.sec().readonly_rootfs = true;
    let s = f.build().unwrap();
    assert!(s.linux().as_ref().unwrap().seccomp().is_some());
    assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
    f.sec().privileged = true;
    let s = f.build().unwrap();
    let l = s.linux().as_ref().unwrap();
    assert!(l.masked_paths().is_none() && l.readonly_paths().is_none());
    assert!(l.seccomp().is_none());
    let json = serde_json::to_string(&s).unwrap();
    assert!(!json.contains("youki") && !json.contains("apparmor") && !json.contains("rlimits"));
}

#[test]
fn env_merge_and_capability_names() {
    let env = merge_env(
        &["A=1".into(), "B=2".into()],
        &[("A".into(), "x".into()), ("C".into(), "3".into())],
    );
    assert_eq!(env, ["A=x", "B=2", "C=3", &format!("PATH={DEFAULT_PATH}")]);
    assert_eq!(normalize_capability("net_admin"), "CAP_NET_ADMIN");
    // every name the host module knows maps onto an OCI capability
    for n in crate::oci::host::CAPABILITY_NAMES {
        assert!(parse_capability(n).is_some(), "{n}");
    }
    assert!(parse_capability("CAP_NOPE").is_none());
}

#[test]
fn pod_limits_add_the_overhead_to_the_resources() {
    let res = |shares, quota, period, mem| LinuxContainerResources {
        cpu_shares: shares,
        cpu_quota: quota,
        cpu_period: period,
        memory_limit_in_bytes: mem,
        ..Default::default()
    };
    assert_eq!(pod_limits(&LinuxPodSandboxConfig::default()), None);
    let linux = LinuxPodSandboxConfig {
        resources: Some(res(512, 50_000, 100_000, 64 << 20)),
        overhead: Some(res(128, 5_000, 50_000, 16 << 20)),
        ..Default::default()
    };
    assert_eq!(
        pod_limits(&linux),
        Some(CgroupLimits {
            cpu_shares: Some(640),
            cpu_quota: Some(60_000),
            cpu_period: Some(100_000),
            memory_limit: Some(80 << 20),
        })
    );
    // Overhead only: shares, but no throttling of unlimited containers.
    let linux = LinuxPodSandboxConfig {
        overhead: Some(res(128, 5_000, 100_000, 16 << 20)),
        ..Default::default()
    };
    assert_eq!(
        pod_limits(&linux),
        Some(CgroupLimits {
            cpu_shares: Some(128),
            ..Default::default()
        })
    );
}

fn aa(kind: ProfileType, localhost_ref: &str) -> SecurityProfile {
    SecurityProfile {
        profile_type: kind as i32,
        localhost_ref: localhost_ref.into(),
    }
}

#[test]
fn apparmor_request_from_the_structured_field() {
    use AppArmorRequest::*;
    let local = |n: &str| Localhost(n.to_string());
    let cases = [
        (aa(ProfileType::RuntimeDefault, ""), false, RuntimeDefault),
        (aa(ProfileType::RuntimeDefault, ""), true, Unconfined),
        (aa(ProfileType::Unconfined, ""), false, Unconfined),
        (aa(ProfileType::Unconfined, ""), true, Unconfined),
        (
            aa(ProfileType::Localhost, "k8s-nginx"),
            false,
            local("k8s-nginx"),
        ),
        (
            aa(ProfileType::Localhost, "localhost/k8s-nginx"),
            false,
            local("k8s-nginx"),
        ),
        // Naming a profile is explicit: a privileged container runs under it.
        (
            aa(ProfileType::Localhost, "k8s-nginx"),
            true,
            local("k8s-nginx"),
        ),
    ];
    for (field, privileged, want) in cases {
        // The deprecated string is ignored when the field is there (kubelet sends both).
        for deprecated in ["", "unconfined", "localhost/other", "garbage"] {
            assert_eq!(
                apparmor_request(Some(&field), deprecated, privileged).unwrap(),
                want,
                "{field:?} {deprecated:?} privileged={privileged}"
            );
        }
    }
}

#[test]
fn apparmor_request_from_the_deprecated_string() {
    use AppArmorRequest::*;
    let cases = [
        ("", false, RuntimeDefault),
        ("", true, Unconfined),
        ("runtime/default", false, RuntimeDefault),
        ("runtime/default", true, Unconfined),
        ("docker/default", false, RuntimeDefault),
        ("unconfined", false, Unconfined),
        ("unconfined", true, Unconfined),
        ("localhost/k8s-nginx", false, Localhost("k8s-nginx".into())),
        ("localhost/k8s-nginx", true, Localhost("k8s-nginx".into())),
    ];
    for (deprecated, privileged, want) in cases {
        assert_eq!(
            apparmor_request(None, deprecated, privileged).unwrap(),
            want,
            "{deprecated:?} privileged={privileged}"
        );
    }
}

#[test]
fn invalid_apparmor_requests_are_invalid_argument() {
    let invalid = |r: Result<AppArmorRequest, SpecError>, needle: &str| match r {
        Err(e @ SpecError::Invalid { .. }) => {
            assert!(e.to_string().contains(needle), "{e}")
        }
        other => panic!("{other:?}"),
    };
    invalid(
        apparmor_request(Some(&aa(ProfileType::Localhost, "")), "", false),
        "apparmor.localhost_ref",
    );
    invalid(
        apparmor_request(Some(&aa(ProfileType::Localhost, "localhost/")), "", false),
        "needs a profile name",
    );
    invalid(
        apparmor_request(Some(&aa(ProfileType::RuntimeDefault, "x")), "", false),
        "RuntimeDefault",
    );
    let unknown = SecurityProfile {
        profile_type: 42,
        localhost_ref: String::new(),
    };
    invalid(apparmor_request(Some(&unknown), "", false), "42");
    invalid(
        apparmor_request(None, "localhost/", false),
        "apparmor_profile",
    );
    invalid(apparmor_request(None, "k8s-nginx", false), "\"k8s-nginx\"");
}

#[test]
fn the_pause_container_is_confined_only_when_the_pod_asks() {
    let mut f = Fixture::new();
    assert_eq!(
        pause_apparmor_request(PodRequest::new(&f.config)).unwrap(),
        AppArmorRequest::Unconfined
    );
    f.sec().apparmor = Some(aa(ProfileType::RuntimeDefault, ""));
    assert_eq!(
        pause_apparmor_request(PodRequest::new(&f.config)).unwrap(),
        AppArmorRequest::RuntimeDefault
    );
    f.sec().privileged = true;
    assert_eq!(
        pause_apparmor_request(PodRequest::new(&f.config)).unwrap(),
        AppArmorRequest::Unconfined
    );
    f.sec().apparmor = Some(aa(ProfileType::Localhost, "pod-profile"));
    assert_eq!(
        pause_apparmor_request(PodRequest::new(&f.config)).unwrap(),
        AppArmorRequest::Localhost("pod-profile".into())
    );

    // The resolved profile goes into the spec as is.
    f.sec().privileged = false;
    f.apparmor_profile = Some("pod-profile".into());
    let s = f.build().unwrap();
    let p = s.process().as_ref().unwrap();
    assert_eq!(p.apparmor_profile().as_deref(), Some("pod-profile"));
}
