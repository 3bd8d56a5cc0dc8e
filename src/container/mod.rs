//! Containers: the lifecycle through ferrio-monitor and the OCI runtime; the OCI spec comes
//! from [`crate::spec`].
//!
//! Owns `<root>/containers/<id>` (records), `<root>/overlay/<id>` (rootfs) and
//! `<runroot>/containers/<id>` (bundle, pid and exit files), at the paths
//! [`crate::context::DiskLayout`] names. Looks sandboxes up in `sandbox`; config, runtimes and
//! monitors come from the [`crate::context::NodeContext`].

pub mod image_volume;
pub mod lifecycle;
pub mod record;
pub mod stats;
pub mod stop_signal;
pub mod update;
