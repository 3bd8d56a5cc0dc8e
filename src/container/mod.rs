//! Containers: CRI config + image config + sandbox -> OCI spec (`spec.rs`, pure), and the
//! lifecycle through ferrio-monitor and the OCI runtime.
//!
//! Owns `<root>/containers/<id>` (records), `<root>/overlay/<id>` (rootfs) and
//! `<runroot>/containers/<id>` (bundle, pid and exit files). May read `sandbox`.

pub mod image_volume;
pub mod lifecycle;
pub mod record;
pub mod spec;
pub mod stats;
pub mod stop_signal;
pub mod update;
