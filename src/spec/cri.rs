//! The entry points: the only code in `spec/` that sees CRI types. Each converts its request
//! into an [`Input`] and runs its steps; the request-reading rules that need the CRI types
//! (seccomp and AppArmor profile fields, SELinux options) live here too.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxResources, Spec};

use super::annotations::{AnnotationsInput, PodIdentity, SpecKind};
use super::cdi::{self, CdiInput, CdiRegistry};
use super::devices::{DeviceRequest, DevicesInput};
use super::hooks::HookDef;
use super::mounts::{ImageVolume, MountRequest, MountsInput, PodFilePaths, Propagation};
use super::namespaces::{IdRange, NamespacesInput, PidMode, UserNamespaceInput};
use super::process::{self, ProcessInput, ProcessUser};
use super::resources::{self, Resources};
use super::seccomp::SeccompRequest;
use super::security::{self, CapabilityRequest, CapabilitySet, SecurityInput, SelinuxLabels};
use super::user::{self, UserRequest};
use super::{build, HostFiles, HostView, Input, LiveHost, SpecError, CONTAINER_STEPS, POD_STEPS};
use crate::cri::v1::{
    security_profile::ProfileType, ContainerConfig, ContainerMetadata, ImageSpec,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    MountPropagation, NamespaceMode, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    SecurityProfile, SupplementalGroupsPolicy,
};
use crate::image::ImageConfig;
use crate::oci::apparmor::AppArmorRequest;
use crate::oci::host::HostFeatures;

/// What kubelet asks for the pause container (it is the last thing to kill in a pod).
pub const PAUSE_OOM_SCORE_ADJ: i64 = -998;

/// A RunPodSandbox request as this room reads it: the lifecycle carries it to the entry points
/// unopened, so the CRI types stop at the server and here.
#[derive(Clone, Copy)]
pub struct PodRequest<'a> {
    config: &'a PodSandboxConfig,
}

impl<'a> PodRequest<'a> {
    pub fn new(config: &'a PodSandboxConfig) -> PodRequest<'a> {
        PodRequest { config }
    }

    /// The user namespace's uid and gid mappings the pod asks for; `None` when it asks for none.
    /// The same checks as [`user_namespace`] (mode POD, at least one range each).
    pub fn user_namespace(&self) -> Result<Option<IdMappings>, SpecError> {
        user_namespace(
            self.config
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref())
                .and_then(|s| s.namespace_options.as_ref()),
        )
    }
}

/// A CreateContainer request and the config of the pod it joins, as this room reads them: the
/// lifecycle carries it to the entry points unopened.
#[derive(Clone)]
pub struct ContainerRequest<'a> {
    config: Cow<'a, ContainerConfig>,
    pod: Cow<'a, PodSandboxConfig>,
}

impl<'a> ContainerRequest<'a> {
    pub fn new(config: &'a ContainerConfig, pod: &'a PodSandboxConfig) -> ContainerRequest<'a> {
        ContainerRequest {
            config: Cow::Borrowed(config),
            pod: Cow::Borrowed(pod),
        }
    }
}

impl ContainerRequest<'_> {
    /// The same request with the host side of its mounts replaced where `sources` has a path
    /// (index for index): the idmapped copies a pod's user namespace binds from.
    pub fn with_mount_sources(self, sources: &[Option<std::path::PathBuf>]) -> Self {
        let mut config = self.config.into_owned();
        for (m, source) in config.mounts.iter_mut().zip(sources) {
            if let Some(p) = source {
                m.host_path = p.to_string_lossy().into_owned();
            }
        }
        ContainerRequest {
            config: Cow::Owned(config),
            pod: self.pod,
        }
    }
}

impl ContainerRequest<'static> {
    /// A request that names only the container, its image and its pod (what the spec's
    /// annotations carry), for a caller that holds no CRI message: the lifecycle's unit tests.
    pub fn named(name: &str, image: &str, pod: &PodIdentity) -> ContainerRequest<'static> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: image.to_string(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pod = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            ..Default::default()
        };
        ContainerRequest {
            config: Cow::Owned(config),
            pod: Cow::Owned(pod),
        }
    }
}

/// Input of [`pod_spec`]; paths are on the host.
pub struct PauseSpecInput<'a> {
    pub request: PodRequest<'a>,
    pub image: &'a ImageConfig,
    pub rootfs: &'a Path,
    /// The pinned network namespace; `None` = the host's.
    pub netns: Option<&'a Path>,
    /// The pinned IPC namespace; `None` = the host's.
    pub ipcns: Option<&'a Path>,
    /// The pinned UTS namespace; `None` = the host's.
    pub utsns: Option<&'a Path>,
    /// The pinned user namespace, made with the request's mappings; `None` = the host's.
    pub userns: Option<&'a Path>,
    /// Absolute cgroup path (or systemd `slice:prefix:name`).
    pub cgroups_path: String,
    pub hostname: String,
    pub host: &'a HostFeatures,
    pub restrict_oom_score_adj: bool,
    /// The AppArmor profile, resolved from [`pause_apparmor_request`]; `None` = unconfined.
    pub apparmor_profile: Option<String>,
}

/// The pod a container joins.
pub struct SandboxContext<'a> {
    /// The pod's pinned network namespace; `None` = the host's.
    pub netns: Option<&'a Path>,
    /// The pod's pinned IPC namespace; `None` = the host's.
    pub ipcns: Option<&'a Path>,
    /// The pod's pinned UTS namespace; `None` = the host's.
    pub utsns: Option<&'a Path>,
    /// The pod's pinned user namespace; `None` = the host's.
    pub userns: Option<&'a Path>,
    /// The pause process, whose PID namespace a pid=POD container joins.
    pub pause_pid: i32,
    /// The pod's generated files, mounted unless the request mounts those paths itself.
    pub pod_files: Option<PodFiles<'a>>,
}

/// Host paths of the pod's generated files.
pub struct PodFiles<'a> {
    pub hosts: &'a Path,
    pub resolv_conf: &'a Path,
    pub hostname: &'a Path,
}

/// Input of [`container_spec`].
pub struct ContainerSpecInput<'a> {
    pub id: &'a str,
    /// The request, with the config of the pod it joins.
    pub request: ContainerRequest<'a>,
    pub sandbox: SandboxContext<'a>,
    pub image: &'a ImageConfig,
    /// The mounted rootfs; users and groups are resolved from its /etc/passwd and /etc/group.
    pub rootfs: &'a Path,
    /// The image volumes of `config.mounts`, already mounted read-only on the host.
    pub image_volumes: &'a [ImageVolume],
    /// Absolute cgroup path (or systemd `slice:prefix:name`).
    pub cgroups_path: String,
    pub host: &'a HostFeatures,
    pub restrict_oom_score_adj: bool,
    /// The AppArmor profile, resolved from [`container_apparmor_request`]; `None` = unconfined.
    pub apparmor_profile: Option<String>,
    /// The init pid of the container named by a TARGET pid namespace ([`pid_namespace_target`]),
    /// resolved by the caller; `None` when the request names no target.
    pub target_pid: Option<i32>,
    /// The node's CDI devices (from `runtime.cdi_spec_dirs`).
    pub cdi: &'a CdiRegistry,
    /// The node's OCI hook definitions (from `runtime.hooks_dir`).
    pub hooks: &'a [HookDef],
}

/// Builds the pause container's spec.
pub fn pod_spec(input: &PauseSpecInput) -> Result<Spec, SpecError> {
    pod_spec_on(input, &LiveHost)
}

/// [`pod_spec`] on a given host.
pub fn pod_spec_on(input: &PauseSpecInput, files: &dyn HostFiles) -> Result<Spec, SpecError> {
    let config = input.request.config;
    let linux_cfg = config.linux.as_ref();
    let sec = linux_cfg.and_then(|l| l.security_context.as_ref());
    let privileged = sec.map(|s| s.privileged).unwrap_or(false);
    let ns_opts = sec.and_then(|s| s.namespace_options.as_ref());
    check_cgroups_path(&input.cgroups_path)?;
    let host = HostView {
        features: input.host,
        files,
    };

    let caps: Vec<String> = security::DEFAULT_CAPABILITIES
        .iter()
        .filter(|c| input.host.has_capability(c))
        .map(|c| c.to_string())
        .collect();
    let label = sec.and_then(|s| selinux_label(s.selinux_options.as_ref()));
    #[allow(deprecated)] // the string form is what older kubelets send
    let seccomp = sec.and_then(|s| seccomp_request(s.seccomp.as_ref(), &s.seccomp_profile_path));
    let pid = match ns_opts.and_then(|n| NamespaceMode::try_from(n.pid).ok()) {
        Some(NamespaceMode::Node) => PidMode::Node,
        _ => PidMode::Container,
    };
    let md = config.metadata.as_ref();
    let input = Input {
        host,
        rootfs: input.rootfs.to_path_buf(),
        readonly_rootfs: sec.map(|s| s.readonly_rootfs).unwrap_or(false),
        cgroups_path: input.cgroups_path.clone(),
        hostname: input.hostname.clone(),
        process: ProcessInput {
            args: process::pause_args(input.image),
            env: process::merge_env(&input.image.env, &[]),
            binary_env: Vec::new(),
            cwd: process::pause_working_dir(input.image),
            terminal: false,
            user: ProcessUser::default(),
            no_new_privileges: true,
            oom_score_adj: Some(PAUSE_OOM_SCORE_ADJ),
            restrict_oom_score_adj: input.restrict_oom_score_adj,
        },
        security: SecurityInput {
            privileged,
            capabilities: CapabilitySet {
                caps,
                ambient: Vec::new(),
            },
            seccomp,
            apparmor_profile: input.apparmor_profile.clone(),
            selinux: SelinuxLabels {
                process: label.clone().filter(|_| !privileged),
                mount: label,
            },
            masked_paths: Vec::new(),
            readonly_paths: Vec::new(),
        },
        mounts: MountsInput {
            privileged,
            ..Default::default()
        },
        devices: DevicesInput::default(),
        namespaces: NamespacesInput {
            pid,
            net: input.netns.map(Path::to_path_buf),
            ipc: input.ipcns.map(Path::to_path_buf),
            uts: input.utsns.map(Path::to_path_buf),
            user: user_namespace(ns_opts)?.map(|(uids, gids)| UserNamespaceInput {
                path: input.userns.map(Path::to_path_buf),
                uids,
                gids,
            }),
        },
        resources: None,
        sysctls: linux_cfg.map(|l| l.sysctls.clone()).unwrap_or_default(),
        annotations: AnnotationsInput {
            kind: SpecKind::Sandbox,
            request: config.annotations.clone(),
            pod: md.map(|m| PodIdentity {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
            }),
            container_name: None,
            image_name: None,
            log_directory: config.log_directory.clone(),
        },
        cdi: CdiInput::default(),
        hooks: &[],
    };
    build(POD_STEPS, &input)
}

/// Builds a container's spec.
pub fn container_spec(input: &ContainerSpecInput) -> Result<Spec, SpecError> {
    container_spec_on(input, &LiveHost)
}

/// [`container_spec`] on a given host.
pub fn container_spec_on(
    input: &ContainerSpecInput,
    files: &dyn HostFiles,
) -> Result<Spec, SpecError> {
    let config = &*input.request.config;
    let pod = &*input.request.pod;
    let sec = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let privileged = sec.map(|s| s.privileged).unwrap_or(false);
    if privileged && !pod_privileged(pod) {
        return Err(SpecError::invalid(
            "security_context.privileged",
            "the pod sandbox was not created privileged",
        ));
    }
    check_cgroups_path(&input.cgroups_path)?;
    let host = HostView {
        features: input.host,
        files,
    };

    let args = process::process_args(&config.command, &config.args, input.image)?;
    let cwd = process::working_dir(&config.working_dir, input.image)?;
    let user_req = sec.map(user_request);
    let user = user::resolve_user(user_req.as_ref(), &input.image.user, input.rootfs, files)?;
    // A JSON string cannot hold bytes that are not UTF-8: such a value keeps its key's place in the env
    // empty here, and the "env bytes" step hands the bytes to the process another way.
    let mut binary_env: Vec<(String, Vec<u8>)> = Vec::new();
    let mut overrides: Vec<(String, String)> = Vec::new();
    for kv in &config.envs {
        match String::from_utf8(kv.value.clone()) {
            Ok(value) => {
                binary_env.retain(|(k, _)| k != &kv.key);
                overrides.push((kv.key.clone(), value));
            }
            Err(e) => {
                binary_env.retain(|(k, _)| k != &kv.key);
                binary_env.push((kv.key.clone(), e.into_bytes()));
                overrides.push((kv.key.clone(), String::new()));
            }
        }
    }
    let env = process::container_env(
        &pod.hostname,
        config.tty,
        &input.image.env,
        &overrides,
        user.home.as_deref(),
    );
    let capabilities = security::capabilities(&capability_request(sec), input.host)?;
    let label = if privileged {
        None
    } else {
        sec.and_then(|s| selinux_label(s.selinux_options.as_ref()))
    };
    let resources = config.linux.as_ref().and_then(|l| l.resources.as_ref());

    let sb = &input.sandbox;
    let pod_ns = pod
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let ns = sec.and_then(|s| s.namespace_options.as_ref()).or(pod_ns);
    let pid = match ns
        .and_then(|n| NamespaceMode::try_from(n.pid).ok())
        .unwrap_or(NamespaceMode::Pod)
    {
        NamespaceMode::Pod => PidMode::Pod {
            pause_pid: sb.pause_pid,
        },
        NamespaceMode::Container => PidMode::Container,
        NamespaceMode::Node => PidMode::Node,
        NamespaceMode::Target => PidMode::Target {
            target_pid: input.target_pid.unwrap_or(0),
        },
    };

    let input = Input {
        host,
        rootfs: input.rootfs.to_path_buf(),
        readonly_rootfs: sec.map(|s| s.readonly_rootfs).unwrap_or(false),
        cgroups_path: input.cgroups_path.clone(),
        hostname: pod.hostname.clone(),
        process: ProcessInput {
            args,
            env,
            binary_env,
            cwd,
            terminal: config.tty,
            user: ProcessUser {
                uid: user.uid,
                gid: user.gid,
                additional_gids: Some(user.additional_gids.clone()),
            },
            no_new_privileges: sec.map(|s| s.no_new_privs).unwrap_or(false),
            oom_score_adj: resources.map(|r| r.oom_score_adj),
            restrict_oom_score_adj: input.restrict_oom_score_adj,
        },
        security: SecurityInput {
            privileged,
            capabilities,
            #[allow(deprecated)] // the string form is what older kubelets send
            seccomp: sec
                .and_then(|s| seccomp_request(s.seccomp.as_ref(), &s.seccomp_profile_path)),
            apparmor_profile: input.apparmor_profile.clone(),
            selinux: SelinuxLabels {
                process: label.clone(),
                mount: label,
            },
            masked_paths: sec.map(|s| s.masked_paths.clone()).unwrap_or_default(),
            readonly_paths: sec.map(|s| s.readonly_paths.clone()).unwrap_or_default(),
        },
        mounts: MountsInput {
            privileged,
            mounts: config.mounts.iter().map(mount_request).collect(),
            image_volumes: input.image_volumes.to_vec(),
            pod_files: sb.pod_files.as_ref().map(|f| PodFilePaths {
                hosts: f.hosts.to_path_buf(),
                resolv_conf: f.resolv_conf.to_path_buf(),
                hostname: f.hostname.to_path_buf(),
            }),
        },
        devices: DevicesInput {
            all_host: privileged,
            devices: config
                .devices
                .iter()
                .map(|d| DeviceRequest {
                    container_path: d.container_path.clone(),
                    host_path: d.host_path.clone(),
                    permissions: d.permissions.clone(),
                })
                .collect(),
        },
        namespaces: NamespacesInput {
            pid,
            net: sb.netns.map(Path::to_path_buf),
            ipc: sb.ipcns.map(Path::to_path_buf),
            uts: sb.utsns.map(Path::to_path_buf),
            // A container joins its pod's user namespace, with the pod's mappings.
            user: user_namespace(pod_ns)?.map(|(uids, gids)| UserNamespaceInput {
                path: sb.userns.map(Path::to_path_buf),
                uids,
                gids,
            }),
        },
        resources: resources.map(resources_from),
        sysctls: HashMap::new(),
        annotations: AnnotationsInput {
            kind: SpecKind::Container,
            request: config.annotations.clone(),
            pod: pod.metadata.as_ref().map(|m| PodIdentity {
                name: m.name.clone(),
                namespace: m.namespace.clone(),
                uid: m.uid.clone(),
            }),
            container_name: config.metadata.as_ref().map(|m| m.name.clone()),
            image_name: config.image.as_ref().map(|i| i.image.clone()),
            log_directory: String::new(),
        },
        cdi: CdiInput {
            devices: cdi::requested_devices(
                config.cdi_devices.iter().map(|d| d.name.as_str()),
                &config.annotations,
            ),
            registry: Some(input.cdi),
        },
        hooks: input.hooks,
    };
    build(CONTAINER_STEPS, &input)
}

/// The OCI resources for `runc update` from an UpdateContainerResources request (see
/// [`resources::update_resources`]).
pub fn update_resources(
    r: &LinuxContainerResources,
    host: &HostFeatures,
) -> Result<LinuxResources, SpecError> {
    resources::update_resources(&resources_from(r), host)
}

/// The pod cgroup's limits from the pod's `resources` and `overhead` (see
/// [`resources::pod_limits`]).
pub fn pod_limits(linux: &LinuxPodSandboxConfig) -> Option<crate::oci::cgroups::CgroupLimits> {
    let r = linux.resources.as_ref().map(resources_from);
    let o = linux.overhead.as_ref().map(resources_from);
    resources::pod_limits(r.as_ref(), o.as_ref())
}

fn resources_from(r: &LinuxContainerResources) -> Resources {
    Resources {
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpu_shares: r.cpu_shares,
        memory_limit_in_bytes: r.memory_limit_in_bytes,
        memory_swap_limit_in_bytes: r.memory_swap_limit_in_bytes,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
        hugepage_limits: r
            .hugepage_limits
            .iter()
            .map(|h| (h.page_size.clone(), h.limit))
            .collect(),
        unified: r.unified.clone(),
    }
}

fn mount_request(m: &crate::cri::v1::Mount) -> MountRequest {
    MountRequest {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        propagation: match MountPropagation::try_from(m.propagation) {
            Ok(MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
            Ok(MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
            _ => Propagation::Private,
        },
        readonly: m.readonly,
        recursive_read_only: m.recursive_read_only,
        image: m.image.as_ref().is_some_and(|s| !s.image.is_empty()),
        idmapped: !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty(),
    }
}

fn user_request(s: &LinuxContainerSecurityContext) -> UserRequest {
    UserRequest {
        run_as_username: s.run_as_username.clone(),
        run_as_user: s.run_as_user.as_ref().map(|v| v.value),
        run_as_group: s.run_as_group.as_ref().map(|v| v.value),
        supplemental_groups: s.supplemental_groups.clone(),
        merge_image_groups: SupplementalGroupsPolicy::try_from(s.supplemental_groups_policy)
            != Ok(SupplementalGroupsPolicy::Strict),
    }
}

fn capability_request(sec: Option<&LinuxContainerSecurityContext>) -> CapabilityRequest {
    let requested = sec.and_then(|s| s.capabilities.as_ref());
    CapabilityRequest {
        all: sec.map(|s| s.privileged).unwrap_or(false),
        add: requested
            .map(|c| c.add_capabilities.clone())
            .unwrap_or_default(),
        drop: requested
            .map(|c| c.drop_capabilities.clone())
            .unwrap_or_default(),
        add_ambient: requested
            .map(|c| c.add_ambient_capabilities.clone())
            .unwrap_or_default(),
    }
}

/// The container whose pid namespace a container asks to join (pid mode TARGET, which only a
/// container's own namespace options can name); `None` for every other mode.
pub fn pid_namespace_target(request: &ContainerRequest) -> Result<Option<String>, SpecError> {
    let config = &*request.config;
    let ns = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    match ns {
        Some(n) if n.pid == NamespaceMode::Target as i32 => {
            if n.target_id.is_empty() {
                return Err(SpecError::invalid(
                    "linux.security_context.namespace_options.target_id",
                    "pid mode TARGET needs the id of a container of the pod",
                ));
            }
            Ok(Some(n.target_id.clone()))
        }
        _ => Ok(None),
    }
}

/// A user namespace's (uid, gid) mappings.
pub type IdMappings = (Vec<IdRange>, Vec<IdRange>);

/// The id mappings (uids, gids) of the user namespace a pod asks for (mode POD); `None` for
/// the host's (mode NODE, or no options). The ranges are checked by the namespaces step.
pub fn user_namespace(ns: Option<&NamespaceOption>) -> Result<Option<IdMappings>, SpecError> {
    const FIELD: &str = "namespace_options.userns_options";
    let Some(u) = ns.and_then(|n| n.userns_options.as_ref()) else {
        return Ok(None);
    };
    let ranges = |v: &[crate::cri::v1::IdMapping]| {
        v.iter()
            .map(|m| IdRange {
                container_id: m.container_id,
                host_id: m.host_id,
                size: m.length,
            })
            .collect::<Vec<_>>()
    };
    match NamespaceMode::try_from(u.mode) {
        Ok(NamespaceMode::Node) => {
            if !u.uids.is_empty() || !u.gids.is_empty() {
                return Err(SpecError::invalid(FIELD, "mode NODE takes no id mappings"));
            }
            Ok(None)
        }
        Ok(NamespaceMode::Pod) => Ok(Some((ranges(&u.uids), ranges(&u.gids)))),
        _ => Err(SpecError::invalid(
            FIELD,
            "only modes POD and NODE are supported for user namespaces",
        )),
    }
}

fn pod_privileged(pod: &PodSandboxConfig) -> bool {
    pod.linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .map(|s| s.privileged)
        .unwrap_or(false)
}

/// The cgroup path must be absolute (a relative one lands under the caller's own cgroup) or
/// systemd's `slice:prefix:name`.
pub fn check_cgroups_path(path: &str) -> Result<(), SpecError> {
    if path.starts_with('/') || path.split(':').count() == 3 {
        Ok(())
    } else {
        Err(SpecError::invalid(
            "cgroups_path",
            format!("{path:?} is neither absolute nor slice:prefix:name"),
        ))
    }
}

/// The seccomp profile a request asks for, from the typed field or the deprecated string.
pub fn seccomp_request(profile: Option<&SecurityProfile>, legacy: &str) -> Option<SeccompRequest> {
    if let Some(p) = profile {
        return Some(match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => SeccompRequest::Unconfined,
            Ok(ProfileType::Localhost) => SeccompRequest::Localhost(PathBuf::from(
                p.localhost_ref.trim_start_matches("localhost/"),
            )),
            _ => SeccompRequest::RuntimeDefault,
        });
    }
    match legacy {
        "" | "unconfined" => Some(SeccompRequest::Unconfined),
        "runtime/default" | "docker/default" => Some(SeccompRequest::RuntimeDefault),
        other => other
            .strip_prefix("localhost/")
            .map(|p| SeccompRequest::Localhost(PathBuf::from(p)))
            .or(Some(SeccompRequest::Unconfined)),
    }
}

/// The deprecated string field's names (Kubernetes' `runtime/default`, `unconfined`,
/// `localhost/<name>`; `docker/default` is what older kubelets sent for the default).
const APPARMOR_RUNTIME_DEFAULT: &str = "runtime/default";
const APPARMOR_DOCKER_DEFAULT: &str = "docker/default";
const APPARMOR_UNCONFINED: &str = "unconfined";
const APPARMOR_LOCALHOST_PREFIX: &str = "localhost/";

/// The AppArmor confinement a CRI security context asks for. The structured `apparmor` field
/// wins over the deprecated string (kubelet sends both); neither means RuntimeDefault. A
/// privileged container gets no default profile, yet runs under a profile it names (containerd's
/// rule: naming one is an explicit choice).
pub fn apparmor_request(
    field: Option<&SecurityProfile>,
    deprecated: &str,
    privileged: bool,
) -> Result<AppArmorRequest, SpecError> {
    let request = match field {
        Some(p) => {
            let kind = ProfileType::try_from(p.profile_type).map_err(|_| {
                SpecError::invalid(
                    "apparmor.profile_type",
                    format!("unknown profile type {}", p.profile_type),
                )
            })?;
            if kind != ProfileType::Localhost && !p.localhost_ref.is_empty() {
                return Err(SpecError::invalid(
                    "apparmor.localhost_ref",
                    format!(
                        "{:?} is set, but the profile type is {}",
                        p.localhost_ref,
                        kind.as_str_name()
                    ),
                ));
            }
            match kind {
                ProfileType::RuntimeDefault => AppArmorRequest::RuntimeDefault,
                ProfileType::Unconfined => AppArmorRequest::Unconfined,
                ProfileType::Localhost => localhost_apparmor(
                    "apparmor.localhost_ref",
                    p.localhost_ref
                        .strip_prefix(APPARMOR_LOCALHOST_PREFIX)
                        .unwrap_or(&p.localhost_ref),
                )?,
            }
        }
        None => match deprecated {
            "" | APPARMOR_RUNTIME_DEFAULT | APPARMOR_DOCKER_DEFAULT => {
                AppArmorRequest::RuntimeDefault
            }
            APPARMOR_UNCONFINED => AppArmorRequest::Unconfined,
            s => match s.strip_prefix(APPARMOR_LOCALHOST_PREFIX) {
                Some(name) => localhost_apparmor("apparmor_profile", name)?,
                None => {
                    return Err(SpecError::invalid(
                        "apparmor_profile",
                        format!(
                            "{s:?} is none of {APPARMOR_RUNTIME_DEFAULT:?}, \
                             {APPARMOR_UNCONFINED:?}, \"{APPARMOR_LOCALHOST_PREFIX}<name>\""
                        ),
                    ))
                }
            },
        },
    };
    Ok(match request {
        AppArmorRequest::RuntimeDefault if privileged => AppArmorRequest::Unconfined,
        r => r,
    })
}

fn localhost_apparmor(field: &str, name: &str) -> Result<AppArmorRequest, SpecError> {
    if name.is_empty() {
        return Err(SpecError::invalid(
            field,
            "a Localhost apparmor profile needs a profile name",
        ));
    }
    Ok(AppArmorRequest::Localhost(name.to_string()))
}

/// The pause container's AppArmor request: only what the pod's security context names. The
/// pause process runs nothing of the user's, so an unset field leaves it unconfined, as CRI-O
/// and containerd leave their infra containers.
pub fn pause_apparmor_request(request: PodRequest) -> Result<AppArmorRequest, SpecError> {
    let config = request.config;
    let sec = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    match sec.and_then(|s| s.apparmor.as_ref()) {
        None => Ok(AppArmorRequest::Unconfined),
        Some(p) => apparmor_request(Some(p), "", sec.is_some_and(|s| s.privileged)),
    }
}

/// `user:role:type:level` from the CRI options, with container defaults for missing parts.
pub fn selinux_label(o: Option<&crate::cri::v1::SeLinuxOption>) -> Option<String> {
    let o = o?;
    if o.user.is_empty() && o.role.is_empty() && o.r#type.is_empty() && o.level.is_empty() {
        return None;
    }
    let or = |s: &str, d: &str| {
        if s.is_empty() {
            d.to_string()
        } else {
            s.to_string()
        }
    };
    Some(format!(
        "{}:{}:{}:{}",
        or(&o.user, "system_u"),
        or(&o.role, "system_r"),
        or(&o.r#type, "container_t"),
        or(&o.level, "s0")
    ))
}

/// The AppArmor confinement a container asks for (see [`apparmor_request`]).
#[allow(deprecated)] // the string form is what older kubelets send, and newer ones send both
pub fn container_apparmor_request(
    request: &ContainerRequest,
) -> Result<AppArmorRequest, SpecError> {
    let config = &*request.config;
    let sec = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    match sec {
        Some(s) => apparmor_request(s.apparmor.as_ref(), &s.apparmor_profile, s.privileged),
        None => Ok(AppArmorRequest::RuntimeDefault),
    }
}
