//! ferrio: a Kubernetes CRI runtime for nodes.
//!
//! # Layout
//!
//! - [`clock`]: the one wall-clock time stamp (Unix nanoseconds).
//! - [`config`]: TOML config, drop-ins, defaults and validation (pure).
//! - [`man`]: the manual pages ferrio(8) and ferrio.toml(5), rendered from the CLI and [`config`].
//! - [`error`]: typed errors and the one mapping onto gRPC status codes.
//! - [`server`]: the gRPC edge; thin handlers that convert CRI messages and orchestrate rooms below.
//! - [`sandbox`]: pod lifecycle: pinned namespaces, pod files; calls [`spec`] for the pause spec.
//! - [`cri`]: the CRI v1 schema (proto/cri/api.proto) compiled into types and services.
//! - [`spec`]: CRI request + image config + pod context + host facts -> OCI spec, as a chain of
//!   small named steps shared by pods and containers; host facts come in as a `HostView`.
//! - [`container`]: container lifecycle through the runtime and monitor; calls [`spec`].
//! - [`context`]: the node context pods and containers share: live config, host features,
//!   runtime handlers, the disk layout, and the monitor and rootfs seams.
//! - [`oci`]: the OCI runtime behind the `Runtime` trait (the default runs the binary for every
//!   verb); bundles; ending half-created objects; the cgroup v1 attach warm-up.
//! - [`monitor`]: the daemon's side of ferrio-monitor: launching and finding monitors (behind the
//!   `MonitorLauncher` trait), the attach client; the monitor program and the wire protocol are
//!   the `ferrio-monitor` crate (`crates/ferrio-monitor`).
//! - [`image`]: references, registry client + mirrors, content store, layer unpack, overlay mounts.
//! - [`metrics`]: Prometheus instruments; reads state, never changes it.
//! - [`network`]: CNI conflists, plugin exec, result cache, network namespaces.
//! - [`nri`]: NRI node plugins: the plugin socket, registration, ordered events, container adjustments.
//! - [`rollback`]: the undo stack every multi-step create uses.
//! - [`state`]: persistent records written atomically.
//! - [`streaming`]: the exec/attach/port-forward HTTP server (SPDY/3.1, WebSocket, one-shot tokens).
//! - [`systemd`]: transient scopes and slices over systemd's D-Bus API, only where systemd is PID 1.
//! - [`sys`]: the only room allowed `unsafe`, the `ferrio-sys` crate (`crates/ferrio-sys`), shared
//!   with the monitor; this crate forbids `unsafe` outright.
//!
//! Outside the library, `src/envexec/` is `ferrio-envexec`, a static program built by build.rs
//! that containers with env values that are not UTF-8 run first ([`spec::envexec`]); it uses
//! std alone, and its `unsafe` (the raw environment, `execve`) is its own.
//!
//! Rooms below `server` never import `server` nor CRI proto types (only `server/` and the
//! entry points of `spec/`, in `spec/cri.rs`, see them). `sandbox` and `container` share spec
//! steps through `spec/`, never through each other. Processes are known by pid + start time
//! ([`sys::ProcessHandle`]), never by their command line.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod container;
pub mod context;
pub mod cri;
pub mod error;
pub mod image;
pub mod man;
pub mod metrics;
pub mod monitor;
pub mod network;
pub mod nri;
pub mod oci;
pub mod rollback;
pub mod sandbox;
pub mod server;
pub mod spec;
pub mod state;
pub mod streaming;
pub mod systemd;

pub use ferrio_sys as sys;
