//! Namespaces: a mount namespace of its own, the pid namespace the request asks for (its own,
//! the pod's, the host's or a target container's), the pod's
//! pinned network/IPC/UTS namespaces, the pod's pinned user namespace with its id mappings, a
//! cgroup namespace on cgroup v2; the hostname (only with a UTS namespace of its own) and the
//! namespaced sysctls a pod may set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, Spec,
};

use super::security::linux_of;
use super::{Input, SpecError};

/// Where the process's pid namespace comes from (CRI's `NamespaceMode` for pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PidMode {
    /// The pod's: join the pause process's (whose pid is given).
    Pod { pause_pid: i32 },
    /// One of its own.
    #[default]
    Container,
    /// The host's.
    Node,
    /// Another container's of the same pod (`kubectl debug --target`): join the pid namespace
    /// of that container's init, whose pid the caller resolved.
    Target { target_pid: i32 },
}

/// The namespaces a spec gets.
#[derive(Debug, Clone, Default)]
pub struct NamespacesInput {
    pub pid: PidMode,
    /// The pod's pinned network namespace; `None` = the host's.
    pub net: Option<PathBuf>,
    /// The pod's pinned IPC namespace; `None` = the host's.
    pub ipc: Option<PathBuf>,
    /// The pod's pinned UTS namespace; `None` = the host's.
    pub uts: Option<PathBuf>,
    /// The pod's user namespace; `None` = the host's.
    pub user: Option<UserNamespaceInput>,
}

/// One range of an id mapping: `size` ids from `container_id` inside are `host_id` on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdRange {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

/// A pod's user namespace as the processes join it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNamespaceInput {
    /// The pinned user namespace; `None` when the request asks for one and nothing prepared
    /// it (refused).
    pub path: Option<PathBuf>,
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
}

/// The kernel takes at most this many lines in a `uid_map` or `gid_map`.
const MAX_ID_RANGES: usize = 340;

/// Checks the ranges of one id mapping (`field` names it in errors): at least one range, none
/// empty or past the 32-bit id space, no id mapped twice on either side, and the container's
/// root mapped (the rootfs and the process's own ids rely on it).
pub fn validate_id_ranges(field: &str, ranges: &[IdRange]) -> Result<(), SpecError> {
    if ranges.is_empty() {
        return Err(SpecError::invalid(
            field,
            "a user namespace needs at least one range",
        ));
    }
    if ranges.len() > MAX_ID_RANGES {
        return Err(SpecError::invalid(
            field,
            format!(
                "{} ranges, the kernel takes at most {MAX_ID_RANGES}",
                ranges.len()
            ),
        ));
    }
    let end = |start: u32, size: u32| u64::from(start) + u64::from(size);
    for (i, r) in ranges.iter().enumerate() {
        if r.size == 0 {
            return Err(SpecError::invalid(field, format!("range {i} has length 0")));
        }
        // The id 2^32-1 is the kernel's "no id" and cannot be mapped.
        if end(r.container_id, r.size) > u64::from(u32::MAX)
            || end(r.host_id, r.size) > u64::from(u32::MAX)
        {
            return Err(SpecError::invalid(
                field,
                format!("range {i} runs past the last id"),
            ));
        }
        if r.host_id == 0 {
            return Err(SpecError::invalid(
                field,
                format!("range {i} maps onto the host's root"),
            ));
        }
        for (j, o) in ranges.iter().enumerate().take(i) {
            let overlap =
                |a: u32, b: u32| u64::from(a) < end(b, o.size) && u64::from(b) < end(a, r.size);
            if overlap(r.container_id, o.container_id) || overlap(r.host_id, o.host_id) {
                return Err(SpecError::invalid(
                    field,
                    format!("ranges {j} and {i} overlap"),
                ));
            }
        }
    }
    if !ranges.iter().any(|r| r.container_id == 0) {
        return Err(SpecError::invalid(
            field,
            "the container's root (id 0) is not mapped",
        ));
    }
    Ok(())
}

fn oci_mappings(ranges: &[IdRange]) -> Result<Vec<LinuxIdMapping>, SpecError> {
    ranges
        .iter()
        .map(|r| {
            Ok(LinuxIdMappingBuilder::default()
                .container_id(r.container_id)
                .host_id(r.host_id)
                .size(r.size)
                .build()?)
        })
        .collect()
}

/// Step: the namespace list.
pub fn namespaces(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let req = &input.namespaces;
    let mut out = Vec::new();
    if let Some(user) = &req.user {
        validate_id_ranges("namespace_options.userns_options.uids", &user.uids)?;
        validate_id_ranges("namespace_options.userns_options.gids", &user.gids)?;
        let Some(path) = &user.path else {
            // Refused rather than run the process without one.
            return Err(SpecError::invalid(
                "namespace_options.userns_options",
                "the pod has no user namespace to join",
            ));
        };
        // The runtime joins it first, so that the namespaces it creates (mount, pid, cgroup)
        // belong to it; the mappings are the namespace's, repeated as OCI wants them with it.
        out.push(namespace(LinuxNamespaceType::User, Some(path))?);
        let linux = linux_of(spec);
        linux.set_uid_mappings(Some(oci_mappings(&user.uids)?));
        linux.set_gid_mappings(Some(oci_mappings(&user.gids)?));
    }
    out.push(namespace(LinuxNamespaceType::Mount, None)?);
    match req.pid {
        PidMode::Pod { pause_pid } => {
            if pause_pid <= 0 {
                return Err(SpecError::invalid(
                    "namespace_options.pid",
                    "the pod has no running pause process to share a pid namespace with",
                ));
            }
            let path = PathBuf::from(format!("/proc/{pause_pid}/ns/pid"));
            out.push(namespace(LinuxNamespaceType::Pid, Some(&path))?);
        }
        PidMode::Container => out.push(namespace(LinuxNamespaceType::Pid, None)?),
        PidMode::Node => {}
        PidMode::Target { target_pid } => {
            if target_pid <= 0 {
                return Err(SpecError::invalid(
                    "namespace_options.target_id",
                    "the target container has no running process to share a pid namespace with",
                ));
            }
            let path = PathBuf::from(format!("/proc/{target_pid}/ns/pid"));
            out.push(namespace(LinuxNamespaceType::Pid, Some(&path))?);
        }
    }
    push_pinned(&mut out, LinuxNamespaceType::Network, req.net.as_deref())?;
    push_pinned(&mut out, LinuxNamespaceType::Ipc, req.ipc.as_deref())?;
    push_pinned(&mut out, LinuxNamespaceType::Uts, req.uts.as_deref())?;
    if input.host.features.cgroup_v2 {
        out.push(namespace(LinuxNamespaceType::Cgroup, None)?);
    }
    linux_of(spec).set_namespaces(Some(out));
    Ok(())
}

/// Step: the hostname; runc refuses one without a UTS namespace of our own.
pub fn hostname(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    spec.set_hostname(None);
    if input.namespaces.uts.is_some() && !input.hostname.is_empty() {
        spec.set_hostname(Some(input.hostname.clone()));
    }
    Ok(())
}

/// Step: the pod's sysctls, checked against the namespaces it has.
pub fn sysctls(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let sysctls = validate_sysctls(
        Some(&input.sysctls),
        input.namespaces.net.is_none(),
        input.namespaces.ipc.is_none(),
    )?;
    if !sysctls.is_empty() {
        linux_of(spec).set_sysctl(Some(sysctls));
    }
    Ok(())
}

fn namespace(typ: LinuxNamespaceType, path: Option<&Path>) -> Result<LinuxNamespace, SpecError> {
    let mut b = LinuxNamespaceBuilder::default().typ(typ);
    if let Some(p) = path {
        b = b.path(p.to_path_buf());
    }
    Ok(b.build()?)
}

/// Joins a pinned namespace; `None` means the host's, which in OCI is "no entry".
fn push_pinned(
    namespaces: &mut Vec<LinuxNamespace>,
    typ: LinuxNamespaceType,
    path: Option<&Path>,
) -> Result<(), SpecError> {
    if let Some(p) = path {
        namespaces.push(namespace(typ, Some(p))?);
    }
    Ok(())
}

/// Kubernetes allows `net/ipv4/ip_forward` as well as `net.ipv4.ip_forward`; in the slash
/// form a dot is part of a name (an interface like `eth0.100`), so the two swap.
pub fn normalize_sysctl(name: &str) -> String {
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
pub fn validate_sysctls(
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
