//! Idmapped mounts (Linux 5.12+, overlayfs on idmapped layers 5.19+) and the process that
//! holds a pod's new user namespace.
//!
//! An idmapped mount shows its files with their owners shifted through a user namespace's
//! mappings: a file owned by host uid 0 appears owned by the namespace's root. Made with the
//! new mount API: `open_tree(OPEN_TREE_CLONE)` detaches a copy of a tree, `mount_setattr`
//! with `MOUNT_ATTR_IDMAP` attaches the mapping to it, `move_mount` puts it at a path. A bind
//! mount of an idmapped mount keeps the mapping, and so does overlayfs for a lower layer that
//! is one (it keeps a private clone of each layer's mount).
//!
//! What this rests on, measured on Debian 12 with kernel 6.x, runc 1.1.5 and crun 1.8.1:
//! - an idmapped copy of an ext4 directory shows host uid 0 as the namespace root's host id;
//!   an overlay mounted on idmapped lowers shows the same, and keeps doing so after the staged
//!   lowers are detached; a copy-up by the container's root lands in the upper dir as the
//!   mapped host id;
//! - an overlay mount itself cannot be idmapped (mount_setattr gives EINVAL), hence the lowers;
//! - a plain bind mount of an idmapped mount is idmapped too, also after the source copy is
//!   detached: the runtime's own bind of a staged volume needs no idmap support of its own;
//! - runc 1.1.5 lists no `idmap` mount option, crun 1.8.1 has no `features` verb; both run a
//!   container that joins a pinned user namespace by path (with the same mappings in the spec)
//!   and pinned net/IPC/UTS namespaces it owns, on an idmapped overlay rootfs, with sysfs
//!   mounted.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `struct mount_attr` of mount_setattr(2), version 0.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul in path"))
}

/// A detached copy of the tree at `src` (a directory or a file), idmapped through the user
/// namespace `userns` (an open `/proc/<pid>/ns/user` or a pinned file of one). `recursive`
/// copies and maps the submounts too. Nothing is mounted anywhere until [`attach`]; dropping
/// the fd unmounts the copy.
pub fn idmapped_tree(src: &Path, userns: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let path = c_path(src)?;
    let rec = if recursive {
        libc::AT_RECURSIVE as libc::c_uint
    } else {
        0
    };
    // SAFETY: open_tree reads the NUL-terminated path, alive for the call, and returns a new
    // fd or -1; no other memory is involved.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD as libc::c_long,
            path.as_ptr(),
            (OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec) as libc::c_long,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nobody else owns it.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    // SAFETY: mount_setattr reads the empty NUL-terminated path and `attr` (whose size is
    // passed), both alive for the call; the fds are open (owned or borrowed here).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd() as libc::c_long,
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH as libc::c_uint | rec) as libc::c_long,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>() as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tree)
}

/// Mounts a detached tree from [`idmapped_tree`] at `target` (which must exist, of the same
/// kind: a directory for a directory, a file for a file).
pub fn attach(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let to = c_path(target)?;
    // SAFETY: move_mount reads two NUL-terminated paths, alive for the call; `tree` is open.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd() as libc::c_long,
            c"".as_ptr(),
            libc::AT_FDCWD as libc::c_long,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH as libc::c_long,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts `cmd` in a new user namespace together with new network, IPC and UTS namespaces as
/// `flags` asks (`CLONE_NEWNET`, `CLONE_NEWIPC`, `CLONE_NEWUTS`), which the new user
/// namespace then owns; `hostname` is set in the new UTS namespace. The namespaces are made
/// between fork and exec, so the new process's creator privileges cover them before any id
/// is mapped; the caller writes the child's `uid_map` and `gid_map` afterwards.
pub fn spawn_in_new_userns(
    cmd: &mut std::process::Command,
    flags: libc::c_int,
    hostname: Option<&str>,
) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let host = hostname
        .map(|h| {
            CString::new(h).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul in name"))
        })
        .transpose()?;
    let all = libc::CLONE_NEWUSER | flags;
    let set_host = host.is_some() && flags & libc::CLONE_NEWUTS != 0;
    let hook = move || {
        // SAFETY: unshare takes a flags word only; async-signal-safe.
        if unsafe { libc::unshare(all) } < 0 {
            return Err(io::Error::last_os_error());
        }
        if set_host {
            if let Some(h) = &host {
                // SAFETY: sethostname reads `len` bytes of the CString built before the fork.
                if unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the hook runs between fork and exec, allocates nothing (the CString was built
    // before) and calls only async-signal-safe syscalls (unshare, sethostname).
    unsafe {
        cmd.pre_exec(hook);
    }
    cmd.spawn()
}
