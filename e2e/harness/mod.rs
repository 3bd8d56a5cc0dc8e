//! The e2e harness: starts the real `ferrio` binary on a private root, runroot, socket, CNI network
//! and registry mirror, talks CRI to it over its unix socket, and checks that nothing leaked.
//!
//! Every test builds an [`Env`] (temp dirs, a bridge and subnet of its own) and one or more
//! [`Daemon`]s on it. Tests assert [`Env::assert_no_leaks`] *before* dropping anything; the drops
//! then clean up whatever a failed test left (processes by pid, mounts under the temp dir, the
//! bridge, the iptables rules of the test's network, cgroup directories under the test's parent).
//!
//! Other e2e targets can reuse it with `#[path = "harness/mod.rs"] mod harness;`.
#![allow(dead_code, unused_imports)]

mod client;
mod daemon;
mod env;
mod fixtures;
mod leaks;
pub mod nri_plugin;
mod pod;
mod sys;

pub use client::Cri;
pub use daemon::{ferrio_bin, monitor_bin, Daemon};
pub use env::{Configure, Env, Opts, REGISTRY_ENV};
pub use fixtures::{
    container_config, create_and_start, pod_config, pod_status, pull, run_pod, start_container,
    stop_and_remove_pod, wait_for_container_state,
};
pub use leaks::LearnedPids;
pub use pod::{Pod, BUSYBOX};

/// A random lowercase hex string of `n` characters, for unique names.
pub fn rand_hex(n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        s.push_str(&format!("{:08x}", rand::random::<u32>()));
    }
    s.truncate(n);
    s
}
