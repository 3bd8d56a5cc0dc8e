//! Pinned pod namespaces (what CRI-O's `pinns` does): a namespace is created by `unshare` in a
//! dedicated thread and kept alive by bind-mounting `/proc/thread-self/ns/<kind>` onto a file
//! under `<namespaces_dir>/<kind>ns/<id>`, so it outlives every process and the daemon itself.
//!
//! The unshare happens in a short-lived std thread, never in a tokio worker: a namespace change
//! is per thread and must not leak into the async runtime.
//!
//! A pod with a user namespace gets it from a process instead (a thread of a multithreaded
//! process can neither create nor enter one): `ferrio-monitor` started as a namespace holder
//! in a new user namespace with new net/IPC/UTS namespaces, which that user namespace owns
//! (so the pause's runtime may mount sysfs and mqueue for them). The daemon writes the
//! holder's id maps, pins its four namespaces the same way, and lets it exit.

use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::path::{Path, PathBuf};

use crate::spec::IdRange;

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("pin {kind} namespace at {path}: {source}")]
    Pin {
        kind: &'static str,
        path: PathBuf,
        source: nix::Error,
    },
    #[error("create {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("namespace thread failed: {0}")]
    Thread(String),
}

/// Which namespaces a pod gets of its own.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    /// A user namespace with these (uid, gid) mappings, owning the others.
    pub user: Option<UserMaps>,
}

/// The id mappings of a pod's user namespace, checked by [`crate::spec::validate_id_ranges`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserMaps {
    pub uids: Vec<IdRange>,
    pub gids: Vec<IdRange>,
    /// The `ferrio-monitor` binary that holds the namespaces while they are pinned.
    pub holder: PathBuf,
}

/// The pinned namespace files of one pod; `None` means the host's namespace is shared.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Pinned {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
    /// Absent in records of pods without a user namespace.
    #[serde(default)]
    pub user: Option<PathBuf>,
}

impl Pinned {
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts, &self.user]
            .into_iter()
            .flatten()
    }
}

/// The file a namespace of `kind` ("net", "ipc", "uts") of pod `id` is pinned at.
pub fn path_for(dir: &Path, kind: &str, id: &str) -> PathBuf {
    dir.join(format!("{kind}ns")).join(id)
}

/// Create and pin the wanted namespaces; `hostname` is set inside a new UTS namespace.
/// On error nothing stays pinned.
pub fn pin(dir: &Path, id: &str, want: Wanted, hostname: &str) -> Result<Pinned, NamespaceError> {
    let mut pinned = Pinned::default();
    let mut flags = CloneFlags::empty();
    let mut targets: Vec<(&'static str, PathBuf)> = Vec::new();
    for (on, kind, flag) in [
        (want.net, "net", CloneFlags::CLONE_NEWNET),
        (want.ipc, "ipc", CloneFlags::CLONE_NEWIPC),
        (want.uts, "uts", CloneFlags::CLONE_NEWUTS),
    ] {
        if !on {
            continue;
        }
        let path = path_for(dir, kind, id);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|source| NamespaceError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        flags |= flag;
        targets.push((kind, path));
    }
    if let Some(user) = &want.user {
        let path = path_for(dir, "user", id);
        let parent = path.parent().unwrap_or(dir);
        std::fs::create_dir_all(parent).map_err(|source| NamespaceError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        targets.push(("user", path));
        let result = pin_from_holder(user, flags, hostname, &targets);
        record_targets(&mut pinned, targets);
        if let Err(e) = result {
            unpin(&pinned);
            return Err(e);
        }
        return Ok(pinned);
    }
    if targets.is_empty() {
        return Ok(pinned);
    }
    let hostname = hostname.to_string();
    let t = targets.clone();
    let result = std::thread::spawn(move || -> Result<(), NamespaceError> {
        nix::sched::unshare(flags).map_err(|source| NamespaceError::Pin {
            kind: "new",
            path: PathBuf::new(),
            source,
        })?;
        if flags.contains(CloneFlags::CLONE_NEWUTS) && !hostname.is_empty() {
            nix::unistd::sethostname(&hostname).map_err(|source| NamespaceError::Pin {
                kind: "uts",
                path: PathBuf::from(&hostname),
                source,
            })?;
        }
        for (kind, path) in &t {
            pin_one(Path::new("/proc/thread-self"), kind, path)?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| NamespaceError::Thread("panicked".into()))?;
    record_targets(&mut pinned, targets);
    if let Err(e) = result {
        unpin(&pinned);
        return Err(e);
    }
    Ok(pinned)
}

/// Pins namespace `kind` of the process (or thread) at `proc_dir` by bind-mounting its
/// `ns/<kind>` onto a new file at `path`.
fn pin_one(proc_dir: &Path, kind: &'static str, path: &PathBuf) -> Result<(), NamespaceError> {
    std::fs::File::create(path).map_err(|source| NamespaceError::Io {
        path: path.clone(),
        source,
    })?;
    let src = proc_dir.join("ns").join(kind);
    nix::mount::mount(
        Some(&src),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|source| NamespaceError::Pin {
        kind,
        path: path.clone(),
        source,
    })
}

fn record_targets(pinned: &mut Pinned, targets: Vec<(&'static str, PathBuf)>) {
    for (kind, path) in targets {
        match kind {
            "net" => pinned.net = Some(path),
            "ipc" => pinned.ipc = Some(path),
            "user" => pinned.user = Some(path),
            _ => pinned.uts = Some(path),
        }
    }
}

/// One line per range, written in one go as the kernel wants.
fn id_map_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{} {} {}\n", r.container_id, r.host_id, r.size))
        .collect()
}

/// Starts the holder in new namespaces (a user namespace plus `flags`), maps its ids, pins
/// each of `targets` from `/proc/<holder>/ns/<kind>`, then lets the holder exit. The holder
/// is our unreaped child until the end, so its pid names it throughout.
fn pin_from_holder(
    user: &UserMaps,
    flags: CloneFlags,
    hostname: &str,
    targets: &[(&'static str, PathBuf)],
) -> Result<(), NamespaceError> {
    use std::process::{Command, Stdio};
    let thread_err = |what: &str, e: std::io::Error| NamespaceError::Thread(format!("{what}: {e}"));
    let mut cmd = Command::new(&user.holder);
    cmd.arg(crate::monitor::HOLD_ARG)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::sys::without_daemon_notify(&mut cmd);
    let host = (!hostname.is_empty()).then_some(hostname);
    let mut child = crate::sys::spawn_in_new_userns(&mut cmd, flags.bits(), host).map_err(|e| {
        thread_err(
            &format!("start namespace holder {}", user.holder.display()),
            e,
        )
    })?;
    let proc_dir = PathBuf::from(format!("/proc/{}", child.id()));
    let result = (|| {
        for (file, ranges) in [("uid_map", &user.uids), ("gid_map", &user.gids)] {
            let path = proc_dir.join(file);
            std::fs::write(&path, id_map_text(ranges))
                .map_err(|source| NamespaceError::Io { path, source })?;
        }
        for (kind, path) in targets {
            pin_one(&proc_dir, kind, path)?;
        }
        Ok(())
    })();
    // EOF on its stdin ends the holder; the pinned files keep the namespaces.
    drop(child.stdin.take());
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

/// Unmount and delete the pinned files. Idempotent; a namespace whose file is already gone is fine.
pub fn unpin(pinned: &Pinned) {
    for path in pinned.all() {
        // Detach: a process may still be entering it; the namespace dies with its last user.
        let _ = umount2(path, MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove pinned namespace file");
            }
        }
    }
}

/// True when `path` is a live pinned namespace (a mounted nsfs file).
pub fn is_pinned(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let p = path.to_string_lossy();
    text.lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()) && l.contains(" - nsfs "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: namespaces"]
    fn pins_and_unpins_net_ipc_uts() {
        let dir = tempfile::tempdir().unwrap();
        let want = Wanted {
            net: true,
            ipc: true,
            uts: true,
            user: None,
        };
        let p = pin(dir.path(), "abc", want, "podhost").unwrap();
        let net = p.net.clone().unwrap();
        assert!(is_pinned(&net));
        assert!(is_pinned(p.uts.as_ref().unwrap()));
        // A different network namespace from ours.
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let st_pinned = nix::sys::stat::stat(&net).unwrap();
        let st_ours = nix::sys::stat::stat("/proc/self/ns/net").unwrap();
        assert_ne!(st_pinned.st_ino, st_ours.st_ino, "{ours:?}");
        unpin(&p);
        unpin(&p);
        assert!(!net.exists());
        assert!(!is_pinned(&net));
    }

    #[test]
    fn nothing_wanted_pins_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = pin(dir.path(), "x", Wanted::default(), "").unwrap();
        assert_eq!(p, Pinned::default());
    }
}
