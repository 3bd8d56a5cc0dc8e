//! Pod sandboxes: pinned namespaces, CNI, the pause container (its spec from [`crate::spec`]),
//! pod files.
//!
//! Owns `<root>/sandboxes/<id>` (records), `<root>/overlay/<id>` (the pause rootfs),
//! `<runroot>/sandboxes/<id>` (bundle, pod files, exit file) and the pod's pinned namespaces.
//! Never imports `container`: stopping a pod's containers first is the server's job.

pub mod files;
pub mod lifecycle;
pub mod namespaces;
pub mod record;
