//! CRI messages <-> the typed facts the pod and container records keep. The records speak only
//! their own types; this is where the CRI enums and messages are read into them (at create and
//! update) and written back out of them (for the status RPCs).

use crate::container::record::{
    ContainerRequestFacts, HugepageLimit, Mount, MountImage, Propagation, Resources,
};
use crate::container::stop_signal::RequestedSignal;
use crate::cri::v1 as cri;
use crate::sandbox::record::{
    IdMapping, NamespaceMode, NamespaceModes, PodRequestFacts, UserNamespace,
};

fn propagation(p: i32) -> Propagation {
    match cri::MountPropagation::try_from(p) {
        Ok(cri::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(cri::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        Ok(cri::MountPropagation::PropagationPrivate) | Err(_) => Propagation::Private,
    }
}

fn propagation_to_cri(p: Propagation) -> cri::MountPropagation {
    match p {
        Propagation::Private => cri::MountPropagation::PropagationPrivate,
        Propagation::HostToContainer => cri::MountPropagation::PropagationHostToContainer,
        Propagation::Bidirectional => cri::MountPropagation::PropagationBidirectional,
    }
}

fn id_mapping(m: &cri::IdMapping) -> IdMapping {
    IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    }
}

fn id_mapping_to_cri(m: &IdMapping) -> cri::IdMapping {
    cri::IdMapping {
        host_id: m.host_id,
        container_id: m.container_id,
        length: m.length,
    }
}

fn mount(m: &cri::Mount) -> Mount {
    Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: propagation(m.propagation),
        uid_mappings: m.uid_mappings.iter().map(id_mapping).collect(),
        gid_mappings: m.gid_mappings.iter().map(id_mapping).collect(),
        recursive_read_only: m.recursive_read_only,
        image: m.image.as_ref().map(|i| MountImage {
            image: i.image.clone(),
            annotations: i.annotations.clone().into_iter().collect(),
            user_specified_image: i.user_specified_image.clone(),
            runtime_handler: i.runtime_handler.clone(),
        }),
        image_sub_path: m.image_sub_path.clone(),
    }
}

/// The CRI mount of record mount `m`; `image_id` is the resolved image of an image volume.
pub fn mount_to_cri(m: &Mount, image_id: Option<&str>) -> cri::Mount {
    cri::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: propagation_to_cri(m.propagation) as i32,
        uid_mappings: m.uid_mappings.iter().map(id_mapping_to_cri).collect(),
        gid_mappings: m.gid_mappings.iter().map(id_mapping_to_cri).collect(),
        recursive_read_only: m.recursive_read_only,
        image: m.image.as_ref().map(|i| cri::ImageSpec {
            image: i.image.clone(),
            annotations: i.annotations.clone().into_iter().collect(),
            user_specified_image: i.user_specified_image.clone(),
            runtime_handler: i.runtime_handler.clone(),
            image_ref: image_id.unwrap_or_default().to_string(),
        }),
        image_sub_path: m.image_sub_path.clone(),
    }
}

pub fn resources(r: &cri::LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

pub fn resources_to_cri(r: &Resources) -> cri::LinuxContainerResources {
    cri::LinuxContainerResources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        oom_score_adj: r.oom_score_adj,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| cri::HugepageLimit {
                page_size: h.page_size.clone(),
                limit: h.limit,
            })
            .collect(),
        unified: r.unified.clone().into_iter().collect(),
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
    }
}

/// What a container's record keeps from its CreateContainer request.
pub fn container_request_facts(config: &cri::ContainerConfig) -> ContainerRequestFacts {
    ContainerRequestFacts {
        mounts: config.mounts.iter().map(mount).collect(),
        resources: config
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(resources),
        envexec: crate::spec::envexec::needs_helper(
            config.envs.iter().map(|kv| kv.value.as_slice()),
        ),
        tty: config.tty,
        stdin: config.stdin,
        stdin_once: config.stdin_once,
    }
}

pub fn namespace_mode(mode: i32) -> NamespaceMode {
    match cri::NamespaceMode::try_from(mode) {
        Ok(cri::NamespaceMode::Container) => NamespaceMode::Container,
        Ok(cri::NamespaceMode::Node) => NamespaceMode::Node,
        Ok(cri::NamespaceMode::Target) => NamespaceMode::Target,
        Ok(cri::NamespaceMode::Pod) | Err(_) => NamespaceMode::Pod,
    }
}

fn namespace_mode_to_cri(mode: NamespaceMode) -> cri::NamespaceMode {
    match mode {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }
}

pub fn namespace_modes(o: &cri::NamespaceOption) -> NamespaceModes {
    let ids = |v: &[cri::IdMapping]| v.iter().map(id_mapping).collect();
    NamespaceModes {
        network: namespace_mode(o.network),
        pid: namespace_mode(o.pid),
        ipc: namespace_mode(o.ipc),
        target_id: o.target_id.clone(),
        userns: o.userns_options.as_ref().map(|u| UserNamespace {
            mode: namespace_mode(u.mode),
            uids: ids(&u.uids),
            gids: ids(&u.gids),
        }),
    }
}

pub fn namespace_modes_to_cri(m: &NamespaceModes) -> cri::NamespaceOption {
    let ids = |v: &[IdMapping]| v.iter().map(id_mapping_to_cri).collect();
    cri::NamespaceOption {
        network: namespace_mode_to_cri(m.network) as i32,
        pid: namespace_mode_to_cri(m.pid) as i32,
        ipc: namespace_mode_to_cri(m.ipc) as i32,
        target_id: m.target_id.clone(),
        userns_options: m.userns.as_ref().map(|u| cri::UserNamespace {
            mode: namespace_mode_to_cri(u.mode) as i32,
            uids: ids(&u.uids),
            gids: ids(&u.gids),
        }),
    }
}

/// What a pod's record keeps from its RunPodSandbox request.
pub fn pod_request_facts(config: &cri::PodSandboxConfig) -> PodRequestFacts {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    PodRequestFacts {
        namespace_modes: sc
            .and_then(|s| s.namespace_options.as_ref())
            .map(namespace_modes)
            .unwrap_or_default(),
        privileged: sc.is_some_and(|s| s.privileged),
        requested_hostname: config.hostname.clone(),
    }
}

/// The stop signal a CreateContainer request names, in Linux terms.
pub fn requested_stop_signal(config_signal: i32) -> RequestedSignal {
    let Ok(requested) = cri::Signal::try_from(config_signal) else {
        return RequestedSignal::Unsupported(format!("{config_signal} is not a CRI signal"));
    };
    if requested == cri::Signal::RuntimeDefault {
        return RequestedSignal::ImageDefault;
    }
    match signal_number(requested) {
        Some(n) => RequestedSignal::Number(n),
        None => RequestedSignal::Unsupported(format!(
            "{} has no number on this host",
            requested.as_str_name()
        )),
    }
}

/// The Linux number of a CRI signal; `None` for RUNTIME_DEFAULT.
pub fn signal_number(signal: cri::Signal) -> Option<i32> {
    use crate::container::lifecycle::parse_signal;
    let name = signal.as_str_name();
    if let Some(n) = name.strip_prefix("SIGRTMINPLUS") {
        return Some(libc::SIGRTMIN() + n.parse::<i32>().ok()?);
    }
    if let Some(n) = name.strip_prefix("SIGRTMAXMINUS") {
        return Some(libc::SIGRTMAX() - n.parse::<i32>().ok()?);
    }
    match signal {
        cri::Signal::RuntimeDefault => None,
        cri::Signal::Sigrtmin => Some(libc::SIGRTMIN()),
        cri::Signal::Sigrtmax => Some(libc::SIGRTMAX()),
        // Linux's other names for SIGCHLD, SIGIO and SIGABRT.
        cri::Signal::Sigcld => Some(libc::SIGCHLD),
        cri::Signal::Sigpoll => Some(libc::SIGIO),
        cri::Signal::Sigiot => Some(libc::SIGABRT),
        _ => parse_signal(name),
    }
}

/// The CRI enum value of a Linux signal number, as ContainerStatus reports it; RUNTIME_DEFAULT
/// for a number no CRI name stands for.
pub fn cri_signal(number: i32) -> cri::Signal {
    // The canonical names first, so SIGCHLD wins over SIGCLD and SIGABRT over SIGIOT.
    let aliases = [
        cri::Signal::Sigcld,
        cri::Signal::Sigpoll,
        cri::Signal::Sigiot,
    ];
    (1..=65)
        .filter_map(|v| cri::Signal::try_from(v).ok())
        .filter(|s| !aliases.contains(s))
        .find(|s| signal_number(*s) == Some(number))
        .unwrap_or(cri::Signal::RuntimeDefault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::stop_signal;
    use cri::Signal;

    fn resolve(config_signal: i32, image_stop_signal: &str) -> Result<i32, String> {
        stop_signal::resolve(&requested_stop_signal(config_signal), image_stop_signal)
    }

    #[test]
    fn the_config_wins_over_the_image_which_wins_over_sigterm() {
        assert_eq!(
            resolve(Signal::Sigusr1 as i32, "SIGQUIT"),
            Ok(libc::SIGUSR1)
        );
        assert_eq!(
            resolve(Signal::RuntimeDefault as i32, "SIGQUIT"),
            Ok(libc::SIGQUIT)
        );
        assert_eq!(
            resolve(Signal::RuntimeDefault as i32, ""),
            Ok(libc::SIGTERM)
        );
        assert!(resolve(99, "").is_err());
    }

    #[test]
    fn every_cri_signal_has_its_linux_number_and_back() {
        let number = signal_number;
        assert_eq!(number(Signal::Sigkill), Some(9));
        assert_eq!(number(Signal::Sigterm), Some(15));
        assert_eq!(number(Signal::Sigcld), Some(libc::SIGCHLD));
        assert_eq!(number(Signal::Sigrtmin), Some(libc::SIGRTMIN()));
        assert_eq!(number(Signal::Sigrtminplus3), Some(libc::SIGRTMIN() + 3));
        assert_eq!(number(Signal::Sigrtmaxminus2), Some(libc::SIGRTMAX() - 2));
        assert_eq!(number(Signal::Sigrtmax), Some(libc::SIGRTMAX()));
        for v in 1..=65 {
            let s = Signal::try_from(v).unwrap();
            let n = number(s).unwrap_or_else(|| panic!("{s:?} has no number"));
            let back = cri_signal(n);
            assert_eq!(number(back), Some(n), "{s:?}");
        }
        assert_eq!(cri_signal(libc::SIGCHLD), Signal::Sigchld);
        assert_eq!(cri_signal(0), Signal::RuntimeDefault);
    }

    #[test]
    fn namespace_modes_convert_both_ways() {
        let o = cri::NamespaceOption {
            network: cri::NamespaceMode::Node as i32,
            pid: cri::NamespaceMode::Target as i32,
            ipc: cri::NamespaceMode::Container as i32,
            target_id: "c1".into(),
            userns_options: Some(cri::UserNamespace {
                mode: cri::NamespaceMode::Pod as i32,
                uids: vec![cri::IdMapping {
                    host_id: 1,
                    container_id: 2,
                    length: 3,
                }],
                gids: vec![],
            }),
        };
        assert_eq!(namespace_modes_to_cri(&namespace_modes(&o)), o);
    }

    fn all_resources() -> cri::LinuxContainerResources {
        cri::LinuxContainerResources {
            cpu_period: 1,
            cpu_quota: 2,
            cpu_shares: 3,
            memory_limit_in_bytes: 4,
            oom_score_adj: 5,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 6,
            }],
            unified: [("memory.high".to_string(), "7".to_string())].into(),
            memory_swap_limit_in_bytes: 8,
        }
    }

    #[test]
    fn resources_convert_both_ways() {
        let r = all_resources();
        assert_eq!(resources_to_cri(&resources(&r)), r);
    }

    #[test]
    fn recorded_resources_reach_the_spec_as_the_request_would() {
        let r = all_resources();
        let host = crate::oci::host::HostFeatures::default();
        assert_eq!(
            crate::spec::resources::update_resources(&resources(&r).to_spec(), &host).unwrap(),
            crate::spec::update_resources(&r, &host).unwrap()
        );
    }
}
