//! The OCI runtime (runc or crun) driven as a process, the bundles it reads, and the cgroup
//! leaves it leaves behind.
//!
//! Owns `<runroot>/oci/<handler>` (the runtime's `--root`). `create` is not here: the monitor runs
//! it so that it owns the container's stdio (see [`crate::monitor`]).

pub mod apparmor;
pub mod cgroups;
pub mod host;
pub mod runtime;

pub use runtime::{OciError, OciRuntime, OciState};
