#![allow(unsafe_code)]
//! The only room allowed `unsafe`: thin, documented wrappers over syscalls that nix does not offer
//! safely (fork, pidfd_open, adopting an inherited fd, fd passing across exec, the private
//! cgroup mount view a runtime may need on a hybrid host).
//!
//! Every function here is small and states its invariants in a `// SAFETY:` comment; callers in
//! other rooms stay `#![deny(unsafe_code)]`. Nothing here holds state or knows about containers.
//!
//! Its own crate so that both programs, the daemon and `ferrio-monitor`, share it, and so that
//! the crates above it can forbid `unsafe` outright. The tokio helpers are behind the `tokio`
//! feature: the monitor has no async runtime.

mod cgroup_view;
mod idmap;
mod process;

pub use cgroup_view::{mounts_below, CgroupV1View, CGROUP_ROOT};
pub use idmap::{attach as attach_tree, idmapped_tree, spawn_in_new_userns};
pub use process::{parse_stat, proc_stat, ProcStat, ProcessHandle};

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

pub use nix::unistd::ForkResult;

/// Opens a pidfd for `pid` (Linux 5.3+). The fd becomes readable when the process exits, and it
/// works for processes that are not our children (a monitor found again after a daemon restart).
/// ESRCH means the process is already gone (and reaped).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word and returns a new fd or -1; it touches no
    // memory of ours. Arguments are widened to the long-sized registers syscall(2) expects.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends signal `sig` to the process a pidfd refers to (Linux 5.1+). Unlike kill(2) it cannot
/// reach another process that reused the pid after an exit: ESRCH once the process is gone.
pub fn pidfd_send_signal(fd: std::os::fd::BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal takes a pidfd, a signal number, an optional siginfo (NULL here)
    // and flags (0); it reads no memory of ours. `fd` is borrowed, so it is open for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd() as libc::c_long,
            sig as libc::c_long,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends signal `sig` to the single process `pid` with kill(2). Only for a process whose pid
/// cannot have been reused: the caller's own child that it has not reaped yet. Any number the
/// kernel accepts works, realtime signals included (nix's `Signal` has none of those). A pid of
/// 0 or below (a process group, or every process) is refused.
pub fn kill_child(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: kill takes two integers and touches no memory of ours; `pid > 0` keeps it to one
    // process.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits until a pidfd from [`pidfd_open`] turns readable, i.e. until its process has exited.
#[cfg(feature = "tokio")]
pub async fn pidfd_exited(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: `fd` is an OwnedFd moved into the AsyncFd: it stays open and is not replaced while
    // registered, and it is closed only when the AsyncFd deregisters it on drop.
    let afd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }?;
    // A pidfd turns readable once, when the process exits, and stays so.
    let _guard = afd.readable().await?;
    Ok(())
}

/// Registers an owned fd (non-blocking, set by the caller) with the tokio reactor for read and
/// write readiness.
#[cfg(feature = "tokio")]
pub fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the OwnedFd is moved into the AsyncFd, so it stays open and is not replaced while
    // registered, and it is closed only after the AsyncFd deregistered it on drop.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            fd,
            tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
        )
    }
    .map_err(|e| e.into_parts().1)
}

/// What [`open_beneath`] creates when the path is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Open only; a missing component is an error.
    Nothing,
    /// Create missing parents (0755) and the final component as an empty file (0666).
    File,
    /// Create missing parents and the final component as directories (0755).
    Dir,
}

/// Opens `rel` beneath the directory `root` without following a symlink in any component, so
/// a tree the container controls (its rootfs) cannot send the daemon elsewhere on the host.
/// `..` components are refused. Files are opened read-only (or write-only when created).
pub fn open_beneath(
    root: &std::path::Path,
    rel: &std::path::Path,
    create: Create,
) -> io::Result<OwnedFd> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Component;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => parts.push(
                CString::new(n.as_bytes())
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul in path"))?,
            ),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} leaves its root", rel.display()),
                ))
            }
        }
    }
    let dir_flags = libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_RDONLY;
    let root_c = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul in path"))?;
    let open = |dir: libc::c_int, name: &CString, flags: libc::c_int, mode: libc::mode_t| {
        // SAFETY: openat reads the NUL-terminated name, which lives across the call; the
        // returned fd is new and owned by nobody else.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), flags, mode as libc::c_uint) };
        if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            // SAFETY: as above, a fresh fd from the kernel.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
    };
    let mkdir = |dir: libc::c_int, name: &CString| {
        // SAFETY: mkdirat reads the NUL-terminated name only.
        let rc = unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(e);
            }
        }
        Ok(())
    };
    use std::os::fd::AsRawFd;
    let mut dir = open(libc::AT_FDCWD, &root_c, dir_flags, 0)?;
    let Some((last, parents)) = parts.split_last() else {
        return Ok(dir);
    };
    for p in parents {
        if create != Create::Nothing {
            mkdir(dir.as_raw_fd(), p)?;
        }
        dir = open(dir.as_raw_fd(), p, dir_flags, 0)?;
    }
    match create {
        Create::Nothing => open(
            dir.as_raw_fd(),
            last,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK,
            0,
        ),
        Create::File => {
            let f = open(
                dir.as_raw_fd(),
                last,
                libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o666,
            )?;
            // The umask must not take the write bits a non-root container user needs.
            nix::sys::stat::fchmod(
                f.as_raw_fd(),
                nix::sys::stat::Mode::from_bits_truncate(0o666),
            )?;
            Ok(f)
        }
        Create::Dir => {
            mkdir(dir.as_raw_fd(), last)?;
            open(dir.as_raw_fd(), last, dir_flags, 0)
        }
    }
}

/// Forks the calling process.
///
/// Only call this from a process that has a single thread (the monitor before it creates anything
/// else): in the child only async-signal-safe work would be allowed otherwise.
pub fn fork_single_threaded() -> io::Result<ForkResult> {
    // SAFETY: callers guarantee the process is single-threaded (documented above), so the child
    // is a full copy with no lock held by a vanished thread and may run arbitrary code.
    unsafe { nix::unistd::fork() }.map_err(io::Error::from)
}

/// Adopts an fd this process inherited at exec (the monitor's sync pipe on fd 3), if it is open.
/// The fd is marked close-on-exec so that the runtime and the container do not inherit it.
pub fn take_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // F_GETFD fails with EBADF when nothing is open at `fd`.
    fcntl(fd, FcntlArg::F_GETFD).ok()?;
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).ok()?;
    // SAFETY: the fd is open (checked above), it was inherited at exec and nothing else in this
    // process refers to it: the caller takes it once, at startup.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Closes every fd >= `low`, so that fds leaked into this process by whoever started it (a
/// daemon's pipe would never see EOF) neither stay open here nor reach the runtime or container.
///
/// Call it first thing in `main`, before anything in this process opened an fd of its own.
pub fn close_from(low: RawFd) -> io::Result<()> {
    // SAFETY: close_range only drops entries of the kernel's fd table; no memory is passed. The
    // caller guarantees that no Rust object owns any fd >= `low` yet, so nothing is left holding
    // a closed (or later reused) fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            low as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Kernels older than 5.9 lack close_range: walk /proc/self/fd instead.
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= low)
        .collect();
    for fd in fds {
        // The directory's own fd is in the list and already closed: ignore EBADF.
        let _ = nix::unistd::close(fd);
    }
    Ok(())
}

/// Arranges for `fd` of the parent to appear as `target` in the child that `cmd` starts, and for
/// no other copy of it to cross the exec (the parent's fd is expected to be close-on-exec).
///
/// The caller must keep `fd` open until the command has been spawned.
pub fn pass_fd_at(cmd: &mut std::process::Command, fd: RawFd, target: RawFd) {
    let hook = move || {
        if fd == target {
            // dup2 onto itself is a no-op that would keep FD_CLOEXEC: clear the flag instead.
            // SAFETY: fcntl on an fd number; async-signal-safe, no memory involved.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            // SAFETY: as above.
            if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0
            {
                return Err(io::Error::last_os_error());
            }
        } else {
            // SAFETY: dup2 is async-signal-safe; the new fd does not carry FD_CLOEXEC.
            if unsafe { libc::dup2(fd, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec and only calls async-signal-safe functions
    // (fcntl, dup2) without allocating or taking locks.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// Receives one file descriptor sent with `SCM_RIGHTS` on the unix socket `sock` (blocking per
/// the socket's mode), as `runc --console-socket` sends a pty master. Returns the fd and the
/// bytes that came with it (runc sends the terminal's name).
pub fn recv_fd(sock: std::os::fd::BorrowedFd<'_>) -> io::Result<(OwnedFd, Vec<u8>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut data = [0u8; 4096];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    let (fds, n) = loop {
        let mut iov = [io::IoSliceMut::new(&mut data)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(r) = c {
                        fds.extend(r);
                    }
                }
                break (fds, msg.bytes);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        // SAFETY: the kernel installed these fds in our table for this message; nothing else
        // in the process knows their numbers, so each gets exactly one owner here.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no file descriptor in the message",
        ));
    }
    // Extra fds (never sent by runc) are closed by dropping them.
    let first = owned.swap_remove(0);
    Ok((first, data[..n].to_vec()))
}

/// Sets the window size of the terminal whose (pty master) fd is `fd`.
pub fn set_winsize(fd: std::os::fd::BorrowedFd<'_>, cols: u16, rows: u16) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which points at a live local
    // value for the duration of the call; the fd is borrowed and open.
    let rc = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TIOCSWINSZ,
            &ws as *const libc::winsize,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps a long-lived process's heap small (the daemon's RSS is a feature): at most two glibc
/// malloc arenas instead of up to eight per core (one per allocating thread, each keeping the
/// memory freed into it), and a fixed mmap threshold, so that big buffers (layer downloads,
/// large JSON) are mapped and unmapped rather than raising the threshold and staying in the
/// heap once freed. Call first thing in `main`, before any thread exists.
pub fn tune_malloc() {
    // SAFETY: mallopt only sets glibc allocator parameters (valid values, no pointers), and
    // it runs before any other thread could be allocating concurrently.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Keeps systemd's `NOTIFY_SOCKET` (set for the daemon, a Type=notify service) from a child: runc
/// and crun take it as the container's notify socket and relay its READY=1, so `start` waits for a
/// READY the container never sends.
pub fn without_daemon_notify(cmd: &mut std::process::Command) {
    cmd.env_remove("NOTIFY_SOCKET");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_of_self_opens_and_of_a_gone_process_fails() {
        let me = std::process::id() as i32;
        assert!(pidfd_open(me).is_ok());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let err = pidfd_open(pid).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn open_beneath_creates_inside_and_refuses_symlinks_and_dotdot() {
        use std::path::Path;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        open_beneath(r, Path::new("/a/b/msg"), Create::File).unwrap();
        assert!(r.join("a/b/msg").is_file());
        open_beneath(r, Path::new("vol/data"), Create::Dir).unwrap();
        assert!(r.join("vol/data").is_dir());
        open_beneath(r, Path::new("/a/b/msg"), Create::Nothing).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("evil")).unwrap();
        assert!(open_beneath(r, Path::new("evil/passwd"), Create::Nothing).is_err());
        std::os::unix::fs::symlink("/etc/passwd", r.join("a/link")).unwrap();
        assert!(open_beneath(r, Path::new("a/link"), Create::Nothing).is_err());
        assert!(open_beneath(r, Path::new("a/../../x"), Create::File).is_err());
    }

    #[test]
    fn pass_fd_at_places_the_fd_in_the_child() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "echo hi >&7"]);
        use std::os::fd::AsRawFd;
        pass_fd_at(&mut cmd, w.as_raw_fd(), 7);
        let status = cmd.status().unwrap();
        drop(w);
        assert!(status.success());
        let mut out = String::new();
        use std::io::Read;
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        assert_eq!(out, "hi\n");
    }
}
