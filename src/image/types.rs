//! Image records shared with the rest of the daemon.

use serde::{Deserialize, Serialize};

/// What the daemon knows about a stored image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageInfo {
    /// `sha256:<hex>` of the image config blob (what CRI calls the image id).
    pub id: String,
    /// Normalised tagged names, e.g. `docker.io/library/busybox:1.36`.
    pub repo_tags: Vec<String>,
    /// Normalised digested names, e.g. `docker.io/library/busybox@sha256:...`.
    pub repo_digests: Vec<String>,
    /// Sum of the compressed layer sizes plus config (what `crictl images` shows).
    pub size: u64,
    /// The parts of the image config that containers inherit.
    pub config: ImageConfig,
    /// Chain ids of the layers, bottom first (the unpacked layer directories' keys).
    pub chain_ids: Vec<String>,
}

/// The runnable defaults from the image config (`config` in the OCI image config JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    pub working_dir: String,
    /// `user`, `uid`, `user:group` or `uid:gid` as written in the image.
    pub user: String,
    /// e.g. `SIGTERM`; empty when the image sets none.
    pub stop_signal: String,
    /// Paths declared as VOLUME.
    pub volumes: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}
