//! Containers: the lifecycle through ferrio-monitor and the OCI runtime; the OCI spec comes
//! from [`crate::spec`].
//!
//! Owns `<root>/containers/<id>` (records), `<root>/overlay/<id>` (rootfs) and
//! `<runroot>/containers/<id>` (bundle, pid and exit files). May read `sandbox`.

pub mod image_volume;
pub mod lifecycle;
pub mod record;
pub mod stats;
pub mod stop_signal;
pub mod update;
