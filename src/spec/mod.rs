//! The OCI spec room: a CRI request, the image config, the pod it runs in and the host's facts
//! become an OCI runtime spec, through a chain of small named steps (the way containerd composes
//! `SpecOpts`), shared by the pause container and the containers.
//!
//! - [`cri`]: the entry points ([`pod_spec`], [`container_spec`], [`update_resources`],
//!   [`pod_limits`], the AppArmor requests). They are the only code here that sees CRI types:
//!   each converts its request into an [`Input`] of this room's own types, then runs its list
//!   of steps ([`POD_STEPS`], [`CONTAINER_STEPS`]).
//! - One file per step family: [`process`], [`user`], [`mounts`], [`devices`],
//!   [`namespaces`], [`resources`], [`security`] (capabilities, LSM labels, masked paths),
//!   [`seccomp`], [`cdi`] (CDI devices), [`hooks`] (OCI hooks directories), [`annotations`],
//!   and [`nri`], which applies node plugins' adjustments after the others (plugins answer
//!   about the spec they produced).
//! - [`envexec`]: env values that are not UTF-8, which reach the process through the
//!   `ferrio-envexec` helper because JSON cannot carry them.
//! - [`host`]: the host as the steps see it ([`HostView`]): features probed once at start and
//!   the file system behind a trait, so no step reads `/proc`, `/sys` or `/dev` itself and each
//!   runs in a unit test without root.
//! - [`watched`]: the definition directories of CDI and OCI hooks, parsed again when a file
//!   changes; the caller reads them ([`CdiSpecDirs`], [`HookDirs`]) and hands the steps the
//!   parsed definitions.
//!
//! A step is a [`Step`]: it edits the spec from the input and nothing else. A new feature
//! (CDI edits, idmapped mounts, OCI hooks, NRI adjustments) is one more step in the lists.
//! This room never imports `sandbox`, `container` or `server`, and writes nothing but a
//! missing bind-mount source directory (through [`HostFiles::bind_source`]).

pub mod annotations;
pub mod cdi;
pub mod cri;
pub mod devices;
pub mod envexec;
mod error;
pub mod hooks;
pub mod host;
pub mod mounts;
pub mod namespaces;
pub mod nri;
pub mod process;
pub mod resources;
pub mod seccomp;
pub mod security;
pub mod user;
pub mod watched;

use std::collections::HashMap;
use std::path::PathBuf;

use oci_spec::runtime::{
    LinuxBuilder, LinuxResourcesBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
};

pub use annotations::{set_sandbox_id, AnnotationsInput};
pub use cdi::{CdiInput, CdiRegistry, CdiSpecDirs};
pub use cri::{
    container_apparmor_request, container_spec, pause_apparmor_request, pid_namespace_target,
    pod_limits, pod_spec, update_resources, user_namespace, ContainerRequest, ContainerSpecInput,
    PauseSpecInput, PodFiles, PodRequest, SandboxContext,
};
pub use devices::DevicesInput;
pub use error::SpecError;
pub use hooks::{HookDef, HookDirs};
pub use host::{HostFiles, HostView, LiveHost};
pub use mounts::{ImageVolume, MountsInput};
pub use namespaces::{
    validate_id_ranges, validate_sysctls, IdRange, NamespacesInput, UserNamespaceInput,
};
pub use process::ProcessInput;
pub use resources::Resources;
pub use security::SecurityInput;

/// What the steps build a spec from: the request in this room's own types, decided facts
/// (the resolved user, the capability set) and the host.
pub struct Input<'a> {
    pub host: HostView<'a>,
    /// The mounted rootfs (a host path).
    pub rootfs: PathBuf,
    pub readonly_rootfs: bool,
    /// Absolute cgroup path (or systemd `slice:prefix:name`), checked by the entry points.
    pub cgroups_path: String,
    /// The hostname, set only with a UTS namespace of its own; empty = none.
    pub hostname: String,
    pub process: ProcessInput,
    pub security: SecurityInput,
    pub mounts: MountsInput,
    pub devices: DevicesInput,
    pub namespaces: NamespacesInput,
    /// The container's cgroup limits; `None` = none.
    pub resources: Option<Resources>,
    /// The pod's sysctls, unchecked.
    pub sysctls: HashMap<String, String>,
    pub annotations: AnnotationsInput,
    /// The CDI devices the request names, and the node's CDI specs.
    pub cdi: CdiInput<'a>,
    /// The node's OCI hook definitions (each step decides by its `when`).
    pub hooks: &'a [HookDef],
}

/// One named step of a spec's construction.
pub type Step = fn(&mut Spec, &Input) -> Result<(), SpecError>;

/// The pause container's steps, in order (errors surface in this order).
pub const POD_STEPS: &[(&str, Step)] = &[
    ("process", process::process),
    ("capabilities", security::capabilities_step),
    ("lsm labels", security::lsm_labels),
    ("mounts", mounts::mounts),
    ("devices", devices::devices),
    ("namespaces", namespaces::namespaces),
    ("sysctls", namespaces::sysctls),
    ("masked paths", security::masked_paths),
    ("seccomp", seccomp::seccomp),
    ("hostname", namespaces::hostname),
    ("annotations", annotations::annotations),
];

/// A container's steps, in order (errors surface in this order).
pub const CONTAINER_STEPS: &[(&str, Step)] = &[
    ("process", process::process),
    ("capabilities", security::capabilities_step),
    ("lsm labels", security::lsm_labels),
    ("mounts", mounts::mounts),
    ("env bytes", envexec::env_bytes),
    ("devices", devices::devices),
    ("namespaces", namespaces::namespaces),
    ("resources", resources::resources),
    ("masked paths", security::masked_paths),
    ("seccomp", seccomp::seccomp),
    ("hostname", namespaces::hostname),
    ("cdi devices", cdi::cdi_devices),
    ("oci hooks", hooks::oci_hooks),
    ("annotations", annotations::annotations),
];

pub use nri::{nri_adjustments, NriCdi};

/// Runs `steps` over a base spec: the root, the cgroup path, and nothing of oci-spec's
/// `Default` (youki's hostname, default mounts and masked paths, a NOFILE rlimit) that a step
/// does not decide.
pub fn build(steps: &[(&str, Step)], input: &Input) -> Result<Spec, SpecError> {
    let mut linux = LinuxBuilder::default()
        .cgroups_path(PathBuf::from(&input.cgroups_path))
        .resources(LinuxResourcesBuilder::default().build()?)
        .build()?;
    linux.set_masked_paths(None);
    linux.set_readonly_paths(None);
    linux.set_namespaces(None);
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(input.rootfs.clone())
                .readonly(input.readonly_rootfs)
                .build()?,
        )
        .process(ProcessBuilder::default().build()?)
        .mounts(Vec::new())
        .linux(linux)
        .annotations(HashMap::new())
        .build()?;
    spec.set_hostname(None);
    for (_name, step) in steps {
        step(&mut spec, input)?;
    }
    Ok(spec)
}

#[cfg(test)]
mod tests;
