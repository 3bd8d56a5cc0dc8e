//! `ferrio-monitor`: one per container, started by the daemon with its sync pipe on fd 3.
//!
//! All setup (fork, setsid, subreaper, pipes) is synchronous and single-threaded; there is no
//! async runtime in this binary at all. Its code is the `ferrio-monitor` crate, which does not
//! depend on the daemon; see `ferrio_monitor` for why and how.
#![forbid(unsafe_code)]

fn main() {
    let code = ferrio_monitor::main(std::env::args_os().skip(1));
    std::process::exit(code);
}
