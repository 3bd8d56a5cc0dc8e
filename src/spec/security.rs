//! Security settings shared by pods and containers: capabilities, AppArmor and SELinux labels,
//! masked and read-only paths. Seccomp is in [`super::seccomp`].

use std::str::FromStr;

use oci_spec::runtime::{Capabilities, Capability, LinuxCapabilitiesBuilder, Spec};

use super::seccomp::SeccompRequest;
use super::{Input, SpecError};
use crate::oci::host::{HostFeatures, CAPABILITY_NAMES};

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

/// The security settings a request asks for.
#[derive(Debug, Clone, Default)]
pub struct SecurityInput {
    /// No masked or read-only paths, no seccomp filter.
    pub privileged: bool,
    /// The process's capabilities, from [`capabilities`].
    pub capabilities: CapabilitySet,
    pub seccomp: Option<SeccompRequest>,
    /// The AppArmor profile, already resolved and loaded; `None` = unconfined.
    pub apparmor_profile: Option<String>,
    /// SELinux labels, used only where SELinux is enabled.
    pub selinux: SelinuxLabels,
    /// Paths to mask; empty = [`DEFAULT_MASKED_PATHS`].
    pub masked_paths: Vec<String>,
    /// Paths to make read-only; empty = [`DEFAULT_READONLY_PATHS`].
    pub readonly_paths: Vec<String>,
}

/// Capabilities for bounding/effective/permitted, and the ambient ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilitySet {
    pub caps: Vec<String>,
    pub ambient: Vec<String>,
}

/// What CRI's capability fields ask for.
#[derive(Debug, Clone, Default)]
pub struct CapabilityRequest {
    /// All the host can give (a privileged container).
    pub all: bool,
    pub add: Vec<String>,
    pub drop: Vec<String>,
    pub add_ambient: Vec<String>,
}

/// The process label and the mount label's source (a pod labels its mounts even when
/// privileged, a container does not).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelinuxLabels {
    pub process: Option<String>,
    pub mount: Option<String>,
}

/// Step: the process's capability sets; ambient capabilities are also inheritable, nothing
/// else is (CVE-2022-24769).
pub fn capabilities_step(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let set = &input.security.capabilities;
    let cap_set = to_capabilities(&set.caps);
    let ambient_set = to_capabilities(&set.ambient);
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(cap_set.clone())
        .effective(cap_set.clone())
        .permitted(cap_set)
        .inheritable(ambient_set.clone())
        .ambient(ambient_set)
        .build()?;
    spec.process_mut()
        .get_or_insert_with(Default::default)
        .set_capabilities(Some(caps));
    Ok(())
}

/// Step: the AppArmor profile (resolved by the caller; `None` leaves the field out, which runc
/// needs where AppArmor is off) and the SELinux labels where SELinux is enabled.
pub fn lsm_labels(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let sec = &input.security;
    let selinux = input.host.features.selinux;
    let process = spec.process_mut().get_or_insert_with(Default::default);
    process.set_apparmor_profile(sec.apparmor_profile.clone());
    if selinux {
        if let Some(label) = &sec.selinux.process {
            process.set_selinux_label(Some(label.clone()));
        }
        if let Some(label) = &sec.selinux.mount {
            linux_of(spec).set_mount_label(Some(mount_label(label)));
        }
    }
    Ok(())
}

/// Step: masked and read-only paths, none for a privileged process.
pub fn masked_paths(spec: &mut Spec, input: &Input) -> Result<(), SpecError> {
    let sec = &input.security;
    let linux = linux_of(spec);
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);
    if !sec.privileged {
        linux.set_masked_paths(Some(or_default(&sec.masked_paths, &DEFAULT_MASKED_PATHS)));
        linux.set_readonly_paths(Some(or_default(
            &sec.readonly_paths,
            &DEFAULT_READONLY_PATHS,
        )));
    }
    Ok(())
}

fn or_default(requested: &[String], default: &[&str]) -> Vec<String> {
    if requested.is_empty() {
        strings(default)
    } else {
        requested.to_vec()
    }
}

pub(crate) fn linux_of(spec: &mut Spec) -> &mut oci_spec::runtime::Linux {
    spec.linux_mut().get_or_insert_with(Default::default)
}

pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A capability name as the OCI types spell it: `CAP_` + upper case.
pub fn normalize_capability(name: &str) -> String {
    let upper = name.trim().to_ascii_uppercase();
    if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    }
}

pub fn parse_capability(name: &str) -> Option<Capability> {
    let n = normalize_capability(name);
    Capability::from_str(n.trim_start_matches("CAP_")).ok()
}

/// Names the OCI types do not know are left out (validated earlier by [`capabilities`]).
pub(crate) fn to_capabilities(names: &[String]) -> Capabilities {
    names.iter().filter_map(|n| parse_capability(n)).collect()
}

/// The capabilities a request gets: CRI-O's defaults plus `add` minus `drop` (`ALL` in either),
/// or everything the host can give when privileged, limited to the host's bounding set.
pub fn capabilities(
    req: &CapabilityRequest,
    host: &HostFeatures,
) -> Result<CapabilitySet, SpecError> {
    if req.all {
        // All the host can give; asking for more makes runc fail ("unable to apply caps").
        return Ok(CapabilitySet {
            caps: host.cap_bounding.clone(),
            ambient: Vec::new(),
        });
    }
    let add: Vec<&str> = req.add.iter().map(String::as_str).collect();
    let drop: Vec<&str> = req.drop.iter().map(String::as_str).collect();
    let ambient_req: Vec<&str> = req.add_ambient.iter().map(String::as_str).collect();
    let is_all = |c: &&str| c.trim().eq_ignore_ascii_case("ALL");
    for (field, list) in [
        ("capabilities.add_capabilities", &add),
        ("capabilities.drop_capabilities", &drop),
        ("capabilities.add_ambient_capabilities", &ambient_req),
    ] {
        for c in list.iter().filter(|c| !is_all(c)) {
            if parse_capability(c).is_none() {
                return Err(SpecError::invalid(
                    field,
                    format!("unknown capability {c:?}"),
                ));
            }
        }
    }

    let mut set: Vec<String> = strings(&DEFAULT_CAPABILITIES);
    if add.iter().any(is_all) {
        set = host.cap_bounding.clone();
    }
    if drop.iter().any(is_all) {
        set.clear();
    }
    for c in add.iter().chain(ambient_req.iter()).filter(|c| !is_all(c)) {
        let n = normalize_capability(c);
        if !set.contains(&n) {
            set.push(n);
        }
    }
    for c in drop.iter().filter(|c| !is_all(c)) {
        let n = normalize_capability(c);
        set.retain(|x| x != &n);
    }
    let (kept, missing): (Vec<String>, Vec<String>) =
        set.into_iter().partition(|c| host.has_capability(c));
    if !missing.is_empty() {
        tracing::warn!(
            ?missing,
            "capabilities outside the host's bounding set left out"
        );
    }
    let mut caps = kept;
    caps.sort_by_key(|c| CAPABILITY_NAMES.iter().position(|n| n == c));
    let ambient: Vec<String> = ambient_req
        .iter()
        .filter(|c| !is_all(c))
        .map(|c| normalize_capability(c))
        .filter(|c| caps.contains(c))
        .collect();
    Ok(CapabilitySet { caps, ambient })
}

/// The file label that goes with a process label.
pub fn mount_label(process_label: &str) -> String {
    let parts: Vec<&str> = process_label.splitn(4, ':').collect();
    let level = parts.get(3).copied().unwrap_or("s0");
    format!("system_u:object_r:container_file_t:{level}")
}
