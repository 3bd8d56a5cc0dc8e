//! `ferrio-monitor`: one per container, started by the daemon with its sync pipe on fd 3.
//!
//! All setup (fork, setsid, subreaper, pipes) is synchronous and single-threaded; there is no
//! async runtime in this binary at all. See `ferrio::monitor` for why and how.

fn main() {
    let code = ferrio::monitor::process::main(std::env::args_os().skip(1));
    std::process::exit(code);
}
