//! Pinned pod namespaces (what CRI-O's `pinns` does): a namespace is created by `unshare` in a
//! dedicated thread and kept alive by bind-mounting `/proc/thread-self/ns/<kind>` onto a file
//! under `<namespaces_dir>/<kind>ns/<id>`, so it outlives every process and the daemon itself.
//!
//! The unshare happens in a short-lived std thread, never in a tokio worker: a namespace change
//! is per thread and must not leak into the async runtime.

use nix::mount::{umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use std::path::{Path, PathBuf};

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
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

/// The pinned namespace files of one pod; `None` means the host's namespace is shared.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Pinned {
    pub net: Option<PathBuf>,
    pub ipc: Option<PathBuf>,
    pub uts: Option<PathBuf>,
}

impl Pinned {
    fn all(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.net, &self.ipc, &self.uts].into_iter().flatten()
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
            std::fs::File::create(path).map_err(|source| NamespaceError::Io {
                path: path.clone(),
                source,
            })?;
            let src = format!("/proc/thread-self/ns/{kind}");
            nix::mount::mount(
                Some(src.as_str()),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|source| NamespaceError::Pin {
                kind,
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| NamespaceError::Thread("panicked".into()))?;
    for (kind, path) in targets {
        match kind {
            "net" => pinned.net = Some(path),
            "ipc" => pinned.ipc = Some(path),
            _ => pinned.uts = Some(path),
        }
    }
    if let Err(e) = result {
        unpin(&pinned);
        return Err(e);
    }
    Ok(pinned)
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
