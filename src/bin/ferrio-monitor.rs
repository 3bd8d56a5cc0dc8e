//! `ferrio-monitor`: one per container, started by the daemon with its sync pipe on fd 3.
//!
//! All setup (fork, setsid, subreaper, pipes) is synchronous and single-threaded; there is no
//! async runtime in this binary at all. See `ferrio::monitor` for why and how.
//!
//! With [`ferrio::monitor::HOLD_ARG`] it only waits for its stdin to close: the daemon starts it
//! in a pod's new user namespace to hold the namespaces while it maps ids and pins them.

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    if args
        .peek()
        .is_some_and(|a| a.as_os_str() == ferrio::monitor::HOLD_ARG)
    {
        std::process::exit(ferrio::monitor::hold());
    }
    let code = ferrio::monitor::process::main(args);
    std::process::exit(code);
}
