//! The pause (infra) container's OCI spec, built from a `PodSandboxConfig`, the pause image's
//! config and the pod's pinned namespaces; plus the pieces a container spec shares with it
//! (default mounts, masked paths, capabilities, seccomp, sysctl rules, annotations).
//!
//! Pure: reads nothing but a Localhost seccomp profile. Host quirks come in through
//! [`HostFeatures`] (no selinux fields where inactive, `oom_score_adj` clamped); the AppArmor
//! profile comes in resolved (see [`crate::oci::apparmor`]).
//! `container::spec` imports the shared pieces from here; this module never imports
//! `container`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::cri::v1::{
    security_profile::ProfileType, LinuxContainerResources, LinuxPodSandboxConfig, NamespaceMode,
    PodSandboxConfig, SecurityProfile,
};
use oci_spec::runtime::{
    Arch, Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder,
    LinuxDeviceCgroupBuilder, LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType,
    LinuxResourcesBuilder, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompBuilder, LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::image::ImageConfig;
use crate::oci::apparmor::AppArmorRequest;
use crate::oci::cgroups::CgroupLimits;
use crate::oci::host::{HostFeatures, SpecError};

/// The pod cgroup's limits: the containers' sum (`resources`) plus the pod's `overhead`, as
/// kubelet sizes a pod cgroup. Quota and memory are limited only when `resources` limits them
/// (an overhead alone is no reason to throttle a pod whose containers are unlimited); shares
/// add up. `None` when the config asks for nothing.
pub fn pod_limits(linux: &LinuxPodSandboxConfig) -> Option<CgroupLimits> {
    let none = LinuxContainerResources::default();
    let (r, o) = (
        linux.resources.as_ref(),
        linux.overhead.as_ref().unwrap_or(&none),
    );
    let r_or = r.unwrap_or(&none);
    let period = [r_or.cpu_period, o.cpu_period]
        .into_iter()
        .find(|p| *p > 0)
        .map(|p| p as u64);
    let shares = r_or.cpu_shares.max(0) + o.cpu_shares.max(0);
    let quota = (r_or.cpu_quota > 0).then(|| {
        // The overhead's quota is rescaled when it came with a period of its own.
        let extra = match (o.cpu_quota > 0, o.cpu_period > 0, period) {
            (false, _, _) => 0,
            (true, true, Some(p)) => o.cpu_quota * p as i64 / o.cpu_period,
            (true, _, _) => o.cpu_quota,
        };
        r_or.cpu_quota + extra
    });
    let memory = (r_or.memory_limit_in_bytes > 0)
        .then(|| r_or.memory_limit_in_bytes + o.memory_limit_in_bytes.max(0));
    let limits = CgroupLimits {
        cpu_shares: (shares > 0).then_some(shares as u64),
        cpu_quota: quota,
        cpu_period: quota.and(period.or(Some(100_000))),
        memory_limit: memory,
    };
    (!limits.is_empty()).then_some(limits)
}

/// Annotation keys ferrio writes into every spec (containerd's names, which tools know).
pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANN_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANN_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANN_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const ANN_SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
pub const ANN_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const ANN_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// `PATH` for processes whose image and request set none (what docker and CRI-O use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// CRI-O's default capabilities.
pub const DEFAULT_CAPABILITIES: [&str; 9] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_KILL",
];

/// CRI-O's default masked paths.
pub const DEFAULT_MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// CRI-O's default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What kubelet asks for the pause container (it is the last thing to kill in a pod).
pub const PAUSE_OOM_SCORE_ADJ: i64 = -998;

/// Input of [`pause_spec`]; paths are on the host.
pub struct PauseSpecInput<'a> {
    pub config: &'a PodSandboxConfig,
    pub image: &'a ImageConfig,
    pub rootfs: &'a Path,
    /// The pinned network namespace; `None` = the host's.
    pub netns: Option<&'a Path>,
    /// The pinned IPC namespace; `None` = the host's.
    pub ipcns: Option<&'a Path>,
    /// The pinned UTS namespace; `None` = the host's.
    pub utsns: Option<&'a Path>,
    /// Absolute cgroup path (or systemd `slice:prefix:name`).
    pub cgroups_path: String,
    pub hostname: String,
    pub host: &'a HostFeatures,
    pub restrict_oom_score_adj: bool,
    /// The AppArmor profile, resolved from [`pause_apparmor_request`]; `None` = unconfined.
    pub apparmor_profile: Option<String>,
}

/// Builds the pause container's spec.
pub fn pause_spec(input: &PauseSpecInput) -> Result<Spec, SpecError> {
    let config = input.config;
    let linux_cfg = config.linux.as_ref();
    let sec = linux_cfg.and_then(|l| l.security_context.as_ref());
    let privileged = sec.map(|s| s.privileged).unwrap_or(false);
    let ns_opts = sec.and_then(|s| s.namespace_options.as_ref());
    check_cgroups_path(&input.cgroups_path)?;
    reject_user_namespace(ns_opts.and_then(|n| n.userns_options.as_ref()))?;

    let mut args = input.image.entrypoint.clone();
    args.extend(input.image.cmd.iter().cloned());
    if args.is_empty() {
        // An image without entrypoint/cmd: the conventional pause binary.
        args.push("/pause".to_string());
    }
    let env = merge_env(&input.image.env, &[]);
    let cwd = if input.image.working_dir.is_empty() {
        "/".to_string()
    } else {
        input.image.working_dir.clone()
    };

    let caps: Vec<String> = DEFAULT_CAPABILITIES
        .iter()
        .filter(|c| input.host.has_capability(c))
        .map(|c| c.to_string())
        .collect();
    let cap_set = to_capabilities(&caps);
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(cap_set.clone())
        .effective(cap_set.clone())
        .permitted(cap_set)
        .inheritable(Capabilities::new())
        .ambient(Capabilities::new())
        .build()?;

    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(UserBuilder::default().uid(0u32).gid(0u32).build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .oom_score_adj(
            input
                .host
                .clamp_oom_score_adj(PAUSE_OOM_SCORE_ADJ, input.restrict_oom_score_adj),
        )
        .build()?;
    // The builders start from oci-spec's `Default` (a 1024 NOFILE rlimit, youki's hostname,
    // default masked paths...): clear what we do not decide ourselves.
    process.set_rlimits(None);
    // Resolved by the caller (`pause_apparmor_request`, then loaded-profile checks); `None`
    // leaves the field out, which runc needs where AppArmor is off.
    process.set_apparmor_profile(input.apparmor_profile.clone());
    if input.host.selinux && !privileged {
        if let Some(label) = sec.and_then(|s| selinux_label(s.selinux_options.as_ref())) {
            process.set_selinux_label(Some(label));
        }
    }

    let pid_mode = ns_opts
        .and_then(|n| NamespaceMode::try_from(n.pid).ok())
        .unwrap_or(NamespaceMode::Pod);
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)?];
    if pid_mode != NamespaceMode::Node {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None)?);
    }
    push_pinned(&mut namespaces, LinuxNamespaceType::Network, input.netns)?;
    push_pinned(&mut namespaces, LinuxNamespaceType::Ipc, input.ipcns)?;
    push_pinned(&mut namespaces, LinuxNamespaceType::Uts, input.utsns)?;
    if input.host.cgroup_v2 {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }

    let sysctls = validate_sysctls(
        linux_cfg.map(|l| &l.sysctls),
        input.netns.is_none(),
        input.ipcns.is_none(),
    )?;

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![LinuxDeviceCgroupBuilder::default()
                    .allow(false)
                    .access("rwm")
                    .build()?])
                .build()?,
        )
        .build()?;
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);
    if !sysctls.is_empty() {
        linux.set_sysctl(Some(sysctls));
    }
    if !privileged {
        linux.set_masked_paths(Some(strings(&DEFAULT_MASKED_PATHS)));
        linux.set_readonly_paths(Some(strings(&DEFAULT_READONLY_PATHS)));
        #[allow(deprecated)] // the string form is what older kubelets send
        let seccomp =
            sec.and_then(|s| seccomp_request(s.seccomp.as_ref(), &s.seccomp_profile_path));
        if let Some(sc) = seccomp_profile(seccomp.as_ref(), input.host, &caps)? {
            linux.set_seccomp(Some(sc));
        }
    }
    if input.host.selinux {
        if let Some(label) = sec.and_then(|s| selinux_label(s.selinux_options.as_ref())) {
            linux.set_mount_label(Some(mount_label(&label)));
        }
    }

    let mut annotations: HashMap<String, String> = config.annotations.clone();
    annotations.insert(ANN_CONTAINER_TYPE.into(), "sandbox".into());
    if let Some(md) = &config.metadata {
        annotations.insert(ANN_SANDBOX_NAME.into(), md.name.clone());
        annotations.insert(ANN_SANDBOX_NAMESPACE.into(), md.namespace.clone());
        annotations.insert(ANN_SANDBOX_UID.into(), md.uid.clone());
    }
    if !config.log_directory.is_empty() {
        annotations.insert(ANN_SANDBOX_LOG_DIR.into(), config.log_directory.clone());
    }

    let readonly = sec.map(|s| s.readonly_rootfs).unwrap_or(false);
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs.to_path_buf())
                .readonly(readonly)
                .build()?,
        )
        .process(process)
        .mounts(default_mounts(privileged)?)
        .linux(linux)
        .annotations(annotations)
        .build()?;
    spec.set_hostname(None);
    // runc refuses a hostname without a UTS namespace of our own.
    if input.utsns.is_some() && !input.hostname.is_empty() {
        spec.set_hostname(Some(input.hostname.clone()));
    }
    Ok(spec)
}

/// Records the sandbox id in a spec; the caller knows it, the translators do not.
pub fn set_sandbox_id(spec: &mut Spec, sandbox_id: &str) {
    let annotations = spec.annotations_mut().get_or_insert_with(HashMap::new);
    annotations.insert(ANN_SANDBOX_ID.to_string(), sandbox_id.to_string());
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The cgroup path must be absolute (a relative one lands under the caller's own cgroup) or
/// systemd's `slice:prefix:name`.
pub(crate) fn check_cgroups_path(path: &str) -> Result<(), SpecError> {
    if path.starts_with('/') || path.split(':').count() == 3 {
        Ok(())
    } else {
        Err(SpecError::invalid(
            "cgroups_path",
            format!("{path:?} is neither absolute nor slice:prefix:name"),
        ))
    }
}

/// User namespaces are not supported yet; refuse rather than run a pod without one.
pub(crate) fn reject_user_namespace(
    userns: Option<&crate::cri::v1::UserNamespace>,
) -> Result<(), SpecError> {
    match userns {
        Some(u)
            if u.mode == NamespaceMode::Pod as i32 && !(u.uids.is_empty() && u.gids.is_empty()) =>
        {
            Err(SpecError::invalid(
                "namespace_options.userns_options",
                "user namespaces are not supported",
            ))
        }
        _ => Ok(()),
    }
}

pub(crate) fn namespace(
    typ: LinuxNamespaceType,
    path: Option<&Path>,
) -> Result<LinuxNamespace, SpecError> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p.to_path_buf());
    }
    Ok(b.build()?)
}

/// Joins a pinned namespace; `None` means the host's, which in OCI is "no entry".
pub(crate) fn push_pinned(
    namespaces: &mut Vec<LinuxNamespace>,
    typ: LinuxNamespaceType,
    path: Option<&Path>,
) -> Result<(), SpecError> {
    if let Some(p) = path {
        namespaces.push(namespace(typ, Some(p))?);
    }
    Ok(())
}

/// Image env (`K=V`) then overrides, by key, keeping first-seen order; `PATH` added if absent.
pub(crate) fn merge_env(image_env: &[String], overrides: &[(String, String)]) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let mut set = |k: &str, entry: String| {
        if !values.contains_key(k) {
            keys.push(k.to_string());
        }
        values.insert(k.to_string(), entry);
    };
    for e in image_env {
        let key = e.split_once('=').map(|(k, _)| k).unwrap_or(e.as_str());
        if !key.is_empty() {
            set(key, e.clone());
        }
    }
    for (k, v) in overrides {
        if !k.is_empty() {
            set(k, format!("{k}={v}"));
        }
    }
    if !values.contains_key("PATH") {
        keys.push("PATH".into());
        values.insert("PATH".into(), format!("PATH={DEFAULT_PATH}"));
    }
    keys.into_iter().filter_map(|k| values.remove(&k)).collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    Ok(MountBuilder::default()
        .destination(PathBuf::from(dest))
        .typ(typ)
        .source(PathBuf::from(source))
        .options(strings(options))
        .build()?)
}

/// The mounts `runc spec` starts from; sysfs and cgroupfs are writable only when privileged.
pub(crate) fn default_mounts(privileged: bool) -> Result<Vec<Mount>, SpecError> {
    let rw = if privileged { "rw" } else { "ro" };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", rw])?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", rw],
        )?,
    ])
}

/// A capability name as the OCI types spell it: `CAP_` + upper case.
pub(crate) fn normalize_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

pub(crate) fn parse_capability(name: &str) -> Option<Capability> {
    let n = normalize_capability(name);
    Capability::from_str(n.trim_start_matches("CAP_")).ok()
}

/// Names the OCI types do not know are left out (validated earlier by the callers).
pub(crate) fn to_capabilities(names: &[String]) -> Capabilities {
    names.iter().filter_map(|n| parse_capability(n)).collect()
}

/// The seccomp profile a request asks for, from the typed field or the deprecated string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SeccompRequest {
    RuntimeDefault,
    Unconfined,
    Localhost(PathBuf),
}

pub(crate) fn seccomp_request(
    profile: Option<&SecurityProfile>,
    legacy: &str,
) -> Option<SeccompRequest> {
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

/// Turns a seccomp request into the spec's filter; `caps` are the process's capabilities,
/// which unlock the syscalls they govern in the default profile.
pub(crate) fn seccomp_profile(
    req: Option<&SeccompRequest>,
    host: &HostFeatures,
    caps: &[String],
) -> Result<Option<LinuxSeccomp>, SpecError> {
    match req {
        None | Some(SeccompRequest::Unconfined) => Ok(None),
        // Without kernel support the default profile cannot apply; running unconfined is
        // what CRI-O does on such hosts.
        Some(SeccompRequest::RuntimeDefault) if !host.seccomp => Ok(None),
        Some(SeccompRequest::RuntimeDefault) => default_seccomp_profile(caps).map(Some),
        Some(SeccompRequest::Localhost(path)) => {
            if !host.seccomp {
                return Err(SpecError::invalid(
                    "seccomp",
                    "seccomp is not supported by this kernel",
                ));
            }
            load_seccomp_file(path).map(Some)
        }
    }
}

/// Reads a seccomp profile in docker's format (`archMap`, `names`, `includes`...) or OCI's.
pub(crate) fn load_seccomp_file(path: &Path) -> Result<LinuxSeccomp, SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::invalid(
            "seccomp.localhost_ref",
            format!("{} is not an absolute path", path.display()),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        SpecError::invalid(
            "seccomp.localhost_ref",
            format!("reading {}: {e}", path.display()),
        )
    })?;
    parse_seccomp_json(&text).map_err(|reason| {
        SpecError::invalid(
            "seccomp.localhost_ref",
            format!("{}: {reason}", path.display()),
        )
    })
}

pub(crate) fn parse_seccomp_json(text: &str) -> Result<LinuxSeccomp, String> {
    use serde_json::{json, Map, Value};
    let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a json object")?;
    let mut out = Map::new();
    out.insert(
        "defaultAction".into(),
        obj.get("defaultAction")
            .cloned()
            .ok_or("defaultAction missing")?,
    );
    if let Some(r) = obj.get("defaultErrnoRet") {
        out.insert("defaultErrnoRet".into(), r.clone());
    }
    let mut arches: Vec<Value> = Vec::new();
    if let Some(a) = obj.get("architectures").and_then(Value::as_array) {
        arches.extend(a.iter().cloned());
    }
    if let Some(map) = obj.get("archMap").and_then(Value::as_array) {
        // docker's format lists arches with their sub-architectures.
        for entry in map {
            if let Some(a) = entry.get("architecture") {
                arches.push(a.clone());
            }
            if let Some(subs) = entry.get("subArchitectures").and_then(Value::as_array) {
                arches.extend(subs.iter().cloned());
            }
        }
    }
    if !arches.is_empty() {
        out.insert("architectures".into(), Value::Array(arches));
    }
    if let Some(f) = obj.get("flags") {
        out.insert("flags".into(), f.clone());
    }
    let mut syscalls = Vec::new();
    for s in obj
        .get("syscalls")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let mut names: Vec<Value> = s
            .get("names")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(n) = s.get("name") {
            names.push(n.clone());
        }
        if names.is_empty() {
            continue;
        }
        let mut call =
            json!({ "names": names, "action": s.get("action").cloned().unwrap_or(Value::Null) });
        for key in ["errnoRet", "args"] {
            if let Some(x) = s.get(key) {
                if !x.is_null() {
                    call[key] = x.clone();
                }
            }
        }
        syscalls.push(call);
    }
    out.insert("syscalls".into(), Value::Array(syscalls));
    serde_json::from_value(Value::Object(out)).map_err(|e| e.to_string())
}

/// Syscalls the default profile allows to everyone (docker's list, in spirit: whatever a
/// normal program needs; nothing that reaches outside the container's namespaces).
const SECCOMP_ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
];

/// Syscalls the default profile allows only to holders of a capability.
const SECCOMP_BY_CAPABILITY: &[(&str, &[&str])] = &[
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "syslog",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
    ("CAP_BPF", &["bpf"]),
    ("CAP_PERFMON", &["perf_event_open"]),
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
];

/// Namespace flags of clone(2) (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET):
/// without CAP_SYS_ADMIN a container may clone but not make namespaces.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
const EPERM: u32 = 1;
const ENOSYS: u32 = 38;

fn allow(names: Vec<String>) -> Result<LinuxSyscall, SpecError> {
    Ok(LinuxSyscallBuilder::default()
        .names(names)
        .action(LinuxSeccompAction::ScmpActAllow)
        .build()?)
}

/// The RuntimeDefault profile: an allowlist, everything else fails with EPERM.
pub(crate) fn default_seccomp_profile(caps: &[String]) -> Result<LinuxSeccomp, SpecError> {
    let has = |c: &str| caps.iter().any(|x| x == c);
    let mut syscalls = vec![allow(strings(SECCOMP_ALLOWED))?];
    let mut extra: BTreeSet<&str> = BTreeSet::new();
    for (cap, names) in SECCOMP_BY_CAPABILITY {
        if has(cap) {
            extra.extend(names.iter().copied());
        }
    }
    // Execution domains that do not change the kernel's behaviour in a dangerous way.
    for persona in [0x0u64, 0x0008, 0x20000, 0x20008, 0xffff_ffff] {
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["personality".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(persona)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()?])
                .build()?,
        );
    }
    match std::env::consts::ARCH {
        "x86_64" | "x86" => extra.extend(["arch_prctl", "modify_ldt"]),
        "s390x" => extra.extend([
            "s390_pci_mmio_read",
            "s390_pci_mmio_write",
            "s390_runtime_instr",
        ]),
        _ => {}
    }
    if !has("CAP_SYS_ADMIN") {
        // clone without namespace flags; clone3 hides its flags in memory, so answer ENOSYS
        // and let libc fall back to clone.
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone".to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(CLONE_NAMESPACE_FLAGS)
                    .value_two(0u64)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()?])
                .build()?,
        );
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()?,
        );
    }
    if !extra.is_empty() {
        syscalls.push(allow(extra.into_iter().map(String::from).collect())?);
    }
    let architectures = match std::env::consts::ARCH {
        "x86_64" => vec![Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32],
        "aarch64" => vec![Arch::ScmpArchAarch64, Arch::ScmpArchArm],
        "s390x" => vec![Arch::ScmpArchS390x, Arch::ScmpArchS390],
        "powerpc64" => vec![Arch::ScmpArchPpc64le],
        "riscv64" => vec![Arch::ScmpArchRiscv64],
        _ => vec![Arch::ScmpArchNative],
    };
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .architectures(architectures)
        .syscalls(syscalls)
        .build()?)
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
pub(crate) fn apparmor_request(
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
pub fn pause_apparmor_request(config: &PodSandboxConfig) -> Result<AppArmorRequest, SpecError> {
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
pub(crate) fn selinux_label(o: Option<&crate::cri::v1::SeLinuxOption>) -> Option<String> {
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

/// The file label that goes with a process label.
pub(crate) fn mount_label(process_label: &str) -> String {
    let parts: Vec<&str> = process_label.splitn(4, ':').collect();
    let level = parts.get(3).copied().unwrap_or("s0");
    format!("system_u:object_r:container_file_t:{level}")
}

/// Kubernetes allows `net/ipv4/ip_forward` as well as `net.ipv4.ip_forward`; in the slash
/// form a dot is part of a name (an interface like `eth0.100`), so the two swap.
pub(crate) fn normalize_sysctl(name: &str) -> String {
    if !name.contains('/') {
        return name.to_string();
    }
    name.chars()
        .map(|c| match c {
            '/' => '.',
            '.' => '/',
            c => c,
        })
        .collect()
}

/// Keeps the namespaced sysctls a pod may set and refuses the rest: net.* (not with the
/// host's network), kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.* (not with the host's IPC).
pub(crate) fn validate_sysctls(
    sysctls: Option<&HashMap<String, String>>,
    host_network: bool,
    host_ipc: bool,
) -> Result<HashMap<String, String>, SpecError> {
    let mut out = HashMap::new();
    let Some(sysctls) = sysctls else {
        return Ok(out);
    };
    for (raw, value) in sysctls {
        let name = normalize_sysctl(raw);
        let field = format!("sysctls[{raw}]");
        let ipc = name.starts_with("kernel.shm")
            || name.starts_with("kernel.msg")
            || name == "kernel.sem"
            || name.starts_with("fs.mqueue.");
        if name.starts_with("net.") {
            if host_network {
                return Err(SpecError::invalid(
                    field,
                    "net.* sysctls cannot be set in a pod on the host network",
                ));
            }
        } else if ipc {
            if host_ipc {
                return Err(SpecError::invalid(
                    field,
                    "ipc sysctls cannot be set in a pod sharing the host ipc namespace",
                ));
            }
        } else {
            return Err(SpecError::invalid(field, "not a namespaced sysctl"));
        }
        if name.contains("..") || name.ends_with('.') {
            return Err(SpecError::invalid(field, "malformed sysctl name"));
        }
        out.insert(name, value.clone());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::v1::{
        LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxMetadata,
    };
    use oci_spec::runtime::Capability as Cap;

    struct Fixture {
        config: PodSandboxConfig,
        image: ImageConfig,
        host: HostFeatures,
        netns: Option<PathBuf>,
        ipcns: Option<PathBuf>,
        utsns: Option<PathBuf>,
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
            pause_spec(&PauseSpecInput {
                config: &self.config,
                image: &self.image,
                rootfs: Path::new("/var/lib/ferrio/pause/rootfs"),
                netns: self.netns.as_deref(),
                ipcns: self.ipcns.as_deref(),
                utsns: self.utsns.as_deref(),
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
            pause_apparmor_request(&f.config).unwrap(),
            AppArmorRequest::Unconfined
        );
        f.sec().apparmor = Some(aa(ProfileType::RuntimeDefault, ""));
        assert_eq!(
            pause_apparmor_request(&f.config).unwrap(),
            AppArmorRequest::RuntimeDefault
        );
        f.sec().privileged = true;
        assert_eq!(
            pause_apparmor_request(&f.config).unwrap(),
            AppArmorRequest::Unconfined
        );
        f.sec().apparmor = Some(aa(ProfileType::Localhost, "pod-profile"));
        assert_eq!(
            pause_apparmor_request(&f.config).unwrap(),
            AppArmorRequest::Localhost("pod-profile".into())
        );

        // The resolved profile goes into the spec as is.
        f.sec().privileged = false;
        f.apparmor_profile = Some("pod-profile".into());
        let s = f.build().unwrap();
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.apparmor_profile().as_deref(), Some("pod-profile"));
    }
}
