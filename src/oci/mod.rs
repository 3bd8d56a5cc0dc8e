//! The OCI runtime (runc or crun) driven as a process, the bundles it reads, and the cgroup
//! leaves it leaves behind.
//!
//! Owns `<runroot>/oci/<handler>` (the runtime's `--root`). `create` is not here: the monitor runs
//! it so that it owns the container's stdio (see [`crate::monitor`]).
//!
//! [`Runtime`] is the seam for the verbs the lifecycle runs itself; [`OciRuntime`], the runtime's
//! command line, implements it and runs the binary for every verb. [`half_created`] ends what a
//! daemon kill during a create left, through that seam and the monitor's. [`attach_warm`] starts
//! the grace period a runtime's cgroup v1 attach waits for before the runtime needs it.

pub mod apparmor;
pub mod attach_warm;
pub mod cgroups;
pub mod exec;
pub mod half_created;
pub mod host;
pub mod runtime;

pub use runtime::{OciError, OciRuntime, OciState, Runtime, RuntimeBinary};
