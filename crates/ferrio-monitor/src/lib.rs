//! `ferrio-monitor`, ferrio's conmon: the program that runs one container's `<runtime> create`,
//! owns its stdio, writes its CRI log and records its exit, and the wire protocol it shares with
//! the daemon.
//!
//! A crate of its own so that the compiler keeps the monitor small and independent: it depends on
//! the wire protocol here and on `ferrio-sys`, never on the daemon (no async runtime, no gRPC, no
//! CRI types). The daemon's side (launching and finding monitors, the async attach client) is
//! `ferrio::monitor`.
//!
//! - [`protocol`]: command line, sync-pipe messages and the exit record, shared by both sides.
//! - [`attach`]: the attach socket's wire protocol, shared by both sides.
//! - [`process`]: the monitor's event loop, from `main` to its exit.
//! - [`attach_server`]: the monitor's end of the attach socket.
//! - [`log`]: the CRI log writer (`F`/`P` records).
//! - [`oom`]: reading the OOM-kill counter of the container's memory cgroup.
//! - [`leftovers`]: killing what the container's init left in its cgroup.
#![forbid(unsafe_code)]

pub mod attach;
pub mod attach_server;
pub mod leftovers;
pub mod log;
pub mod oom;
pub mod process;
pub mod protocol;

pub use process::main;

/// The argument that starts `ferrio-monitor` as a namespace holder (see [`hold`]).
pub const HOLD_ARG: &str = "--hold-namespaces";

/// The namespace holder's whole life: the daemon starts it in a pod's new user namespace (with
/// the pod's new net/IPC/UTS namespaces) and pins those from `/proc/<pid>/ns`; it waits until
/// its stdin reaches EOF, which the daemon causes once they are pinned, then exits 0.
pub fn hold() -> i32 {
    use std::io::Read;
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => return 0,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return 1,
        }
    }
}
