//! A process named by pid and start time, so that a pid the kernel gave to another process
//! after an exit is never taken for ours.
//!
//! The start time is field 22 of `/proc/<pid>/stat` (clock ticks since boot): two processes
//! that share a pid within one boot never share it. Every signal goes through a pidfd opened
//! *before* the start time is compared, so the process checked is the process signalled.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// A process as pid + start time. `start_time == 0` means unknown (a record written before
/// start times were kept): such a handle is trusted to be alive while the pid runs, but is
/// never signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessHandle {
    pub pid: i32,
    pub start_time: u64,
}

/// The parts of `/proc/<pid>/stat` that identify a process and tell whether it still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// The state letter (`R`, `S`, `Z`, ...).
    pub state: char,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_time: u64,
}

/// Parses the text of a `/proc/<pid>/stat` file. The command name (field 2) may hold spaces and
/// parentheses, so the fields after it are found from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // `rest` starts at field 3 (state); field 22 is 19 further on.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// `/proc/<pid>/stat` of `pid`; `None` when there is no such process.
pub fn proc_stat(pid: i32) -> io::Result<Option<ProcStat>> {
    if pid <= 0 {
        return Ok(None);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => parse_stat(&text).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unparsable /proc/{pid}/stat"),
            )
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A process that exits while its stat is read answers ESRCH.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

fn gone(state: char) -> bool {
    state == 'Z' || state == 'X'
}

impl ProcessHandle {
    /// The handle of the live process `pid` now; `None` when it is gone.
    pub fn of(pid: i32) -> io::Result<Option<ProcessHandle>> {
        Ok(proc_stat(pid)?
            .filter(|s| !gone(s.state))
            .map(|s| ProcessHandle {
                pid,
                start_time: s.start_time,
            }))
    }

    /// The calling process.
    pub fn current() -> io::Result<ProcessHandle> {
        ProcessHandle::of(std::process::id() as i32)?
            .ok_or_else(|| io::Error::other("no /proc/<pid>/stat for ourselves"))
    }

    /// Whether this handle names a process at all (a record may hold none yet).
    pub fn is_set(&self) -> bool {
        self.pid > 0
    }

    /// Whether the process still runs (not exited, not a zombie) and is the one this handle
    /// names: same start time, or any process with the pid for a handle of unknown start time.
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Ok(Some(s))
            if !gone(s.state) && (self.start_time == 0 || s.start_time == self.start_time))
    }

    /// A pidfd of the process, opened before its identity is checked so that the fd cannot
    /// belong to a newcomer; `None` when the process is gone, a zombie, or not ours (another
    /// start time). A handle of unknown start time gets a pidfd for waiting, never for signals
    /// (see [`ProcessHandle::signal`]).
    pub fn pidfd(&self) -> io::Result<Option<OwnedFd>> {
        if self.pid <= 0 {
            return Ok(None);
        }
        let fd = match super::pidfd_open(self.pid) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(self.is_alive().then_some(fd))
    }

    /// Sends `signal` to the process if it is still the one this handle names. `Ok(false)`: it
    /// is gone (or the pid is someone else's now, or the start time is unknown), nothing sent.
    pub fn signal(&self, signal: i32) -> io::Result<bool> {
        if self.start_time == 0 {
            return Ok(false);
        }
        let Some(fd) = self.pidfd()? else {
            return Ok(false);
        };
        match super::pidfd_send_signal(fd.as_fd(), signal) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The handle as written into a pid file: `<pid> <start time>\n`.
    pub fn to_line(self) -> String {
        format!("{} {}\n", self.pid, self.start_time)
    }

    /// Parses [`ProcessHandle::to_line`]'s output; `None` for anything else (an empty file
    /// whose writer has not written yet).
    pub fn parse_line(text: &str) -> Option<ProcessHandle> {
        let mut it = text.split_whitespace();
        let pid = it.next()?.parse().ok().filter(|p| *p > 0)?;
        let start_time = it.next()?.parse().ok().filter(|t| *t > 0)?;
        Some(ProcessHandle { pid, start_time })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parens() {
        let text = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1234 56 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    }

    #[test]
    fn our_own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessHandle::current().unwrap();
        assert!(me.start_time > 0);
        assert!(me.is_alive());
        let reused = ProcessHandle {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive(), "another start time is another process");
        assert!(reused.pidfd().unwrap().is_none());
        assert!(!reused.signal(0).unwrap(), "never signalled");
        assert!(me.signal(0).unwrap());
        let unknown = ProcessHandle {
            start_time: 0,
            ..me
        };
        assert!(unknown.is_alive());
        assert!(!unknown.signal(0).unwrap(), "no start time, no signal");
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let h = ProcessHandle { pid, start_time: 1 };
        assert!(!h.is_alive());
        assert!(!h.signal(0).unwrap());
        assert_eq!(ProcessHandle::of(i32::MAX).unwrap(), None);
    }

    #[test]
    fn pid_file_lines_round_trip() {
        let h = ProcessHandle {
            pid: 12,
            start_time: 345,
        };
        assert_eq!(ProcessHandle::parse_line(&h.to_line()), Some(h));
        assert_eq!(ProcessHandle::parse_line(""), None);
        assert_eq!(ProcessHandle::parse_line("12"), None);
        assert_eq!(ProcessHandle::parse_line("12 0"), None);
    }
}
