//! CNI networking for pod sandboxes: conflist loading, plugin execution, the on-disk result cache and
//! bringing loopback up inside a pod's network namespace.
//!
//! This room owns the CNI protocol as libcni speaks it (config on stdin, `CNI_*` environment, prevResult
//! chaining, DEL in reverse order with the cached result) and the cache under `cache_dir` in libcni's
//! layout. It does not create or delete pod network namespaces: the sandbox room pins them, and must call
//! [`Cni::teardown`] before it removes one (a DEL without the netns leaks the bridge plugin's NAT chain).
//! Where the netns is already gone, DEL runs in a throwaway stand-in namespace ([`standin`]) that
//! carries the cached addresses, so the plugins still find and remove their rules.
//! It never shells out to `ip`; netns work goes through netlink from a dedicated thread.

mod cache;
mod cni;
mod conflist;
mod exec;
mod loopback;
mod netlink;
mod result;
mod standin;

use std::net::IpAddr;
use std::path::PathBuf;

use futures::future::BoxFuture;

pub use cni::Cni;
pub use conflist::NetworkConfigList;
pub use loopback::{addresses, bring_loopback_up, is_netns, links};
pub use netlink::Link;
pub use result::{result_addrs, result_ips};

/// What the CNI calls need to know about one pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// Sandbox id; passed as CNI_CONTAINERID and K8S_POD_INFRA_CONTAINER_ID and keys the result cache.
    pub id: String,
    /// Pod name (K8S_POD_NAME).
    pub name: String,
    /// Pod namespace (K8S_POD_NAMESPACE).
    pub namespace: String,
    /// Pod uid (K8S_POD_UID).
    pub uid: String,
    /// Path of the pinned network namespace, e.g. /var/run/netns/<id>.
    pub netns: PathBuf,
    /// Interface created inside the netns, usually "eth0".
    pub ifname: String,
    /// Host ports, handed to plugins that declare the `portMappings` capability.
    pub port_mappings: Vec<PortMapping>,
}

/// One host port forwarded to the pod (CRI PortMapping in CNI's `portMappings` shape).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortMapping {
    /// "tcp", "udp" or "sctp".
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    /// Host address to bind; empty means all addresses.
    pub host_ip: String,
}

/// What a successful ADD produced.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkStatus {
    /// Pod addresses from the result, IPv4 first, without loopback addresses.
    pub ips: Vec<IpAddr>,
    /// The final CNI result (output of the last plugin), as the plugin wrote it.
    pub result: serde_json::Value,
}

/// Errors of the network room; each names the plugin, file or network involved.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No usable network configuration (reported as NetworkPluginNotReady).
    #[error("cni config not ready: {reason}")]
    NotReady { reason: String },
    /// A plugin exited with an error; `message` is the plugin's own msg (and details).
    #[error("cni plugin {plugin} failed on {command}: {message}")]
    Plugin {
        plugin: String,
        command: String,
        message: String,
    },
    /// A plugin ran past the timeout and was killed.
    #[error("cni plugin {plugin} timed out on {command}")]
    Timeout { plugin: String, command: String },
    /// Reading or writing a file (conflist, cache entry, netns) failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config or cache file is malformed.
    #[error("invalid cni config {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
}

/// The seam the sandbox code can hold as `Arc<dyn PodNetworking>`, so its unit tests can fake CNI.
/// [`Cni`] is the real implementation; see its methods for the contract.
pub trait PodNetworking: Send + Sync {
    fn ready(&self) -> Result<String, NetworkError>;
    fn setup<'a>(
        &'a self,
        pod: &'a PodNetwork,
    ) -> BoxFuture<'a, Result<NetworkStatus, NetworkError>>;
    fn teardown<'a>(&'a self, pod: &'a PodNetwork) -> BoxFuture<'a, Result<(), NetworkError>>;
}

impl PodNetworking for Cni {
    fn ready(&self) -> Result<String, NetworkError> {
        Cni::ready(self)
    }
    fn setup<'a>(
        &'a self,
        pod: &'a PodNetwork,
    ) -> BoxFuture<'a, Result<NetworkStatus, NetworkError>> {
        Box::pin(Cni::setup(self, pod))
    }
    fn teardown<'a>(&'a self, pod: &'a PodNetwork) -> BoxFuture<'a, Result<(), NetworkError>> {
        Box::pin(Cni::teardown(self, pod))
    }
}

impl NetworkError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> NetworkError {
        NetworkError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
