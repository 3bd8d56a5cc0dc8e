//! `ferrio-monitor`: one per container, started by the daemon with its sync pipe on fd 3.
//!
//! All setup (fork, setsid, subreaper, pipes) is synchronous and single-threaded; there is no
//! async runtime in this binary at all. Its code is the `ferrio-monitor` crate, which does not
//! depend on the daemon; see `ferrio_monitor` for why and how.
//!
//! With [`ferrio_monitor::HOLD_ARG`] it only holds the namespaces it was started in until its
//! stdin closes ([`ferrio_monitor::hold`]).
#![forbid(unsafe_code)]

fn main() {
    let mut args = std::env::args_os().skip(1).peekable();
    if args
        .peek()
        .is_some_and(|a| a.as_os_str() == ferrio_monitor::HOLD_ARG)
    {
        std::process::exit(ferrio_monitor::hold());
    }
    let code = ferrio_monitor::main(args);
    std::process::exit(code);
}
