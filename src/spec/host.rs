//! What the steps know of the host: [`HostFeatures`] (probed once at start) and the few file
//! system facts a request depends on, behind [`HostFiles`].
//!
//! Steps never read the host themselves: they ask a [`HostView`], so each one runs in a unit
//! test against a fake without root. [`LiveHost`] is the real thing and the only code the
//! steps reach the file system through; its one write creates a missing host directory for a
//! bind mount, as CRI-O and containerd do. (The CDI and OCI hook definition directories are
//! read before the steps run, by [`super::watched`], and reach the steps as parsed values.)

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};

use super::SpecError;
use crate::oci::host::HostFeatures;

/// The host as the steps see it.
#[derive(Clone, Copy)]
pub struct HostView<'a> {
    /// Capabilities, cgroup layout, LSMs, seccomp, `oom_score_adj` floor.
    pub features: &'a HostFeatures,
    /// Files the request names (bind sources, devices, the image's passwd) and mount facts.
    pub files: &'a dyn HostFiles,
}

/// The file system facts a spec depends on; a trait so that tests can fake the host.
pub trait HostFiles: Sync {
    /// The daemon's `/proc/self/mountinfo`; empty when unreadable (propagation is then not
    /// second-guessed).
    fn mountinfo(&self) -> String;
    /// The path a bind mount of `host_path` mounts: created as a directory when missing
    /// (kubelet leaves a plain hostPath to the runtime, as docker did), symlinks resolved
    /// (CRI: a symlinked host path mounts its target).
    fn bind_source(&self, host_path: &Path) -> Result<PathBuf, SpecError>;
    /// The device nodes at `host_path` (a directory stands for every device below it), as
    /// seen at `container_path`; `Err` carries the reason for the request's error.
    fn devices_at(
        &self,
        host_path: &Path,
        container_path: &Path,
    ) -> Result<Vec<LinuxDevice>, String>;
    /// Every device node of the host's /dev, for privileged containers (minus what the
    /// runtime makes itself: pts, shm, mqueue, console, ptmx).
    fn host_devices(&self) -> Vec<LinuxDevice>;
    /// A file of the container's rootfs, symlinks resolved inside it; empty when missing.
    fn read_in_root(&self, root: &Path, path: &str) -> Result<String, SpecError>;
    /// A Localhost seccomp profile's text.
    fn read_seccomp_profile(&self, path: &Path) -> std::io::Result<String>;
}

/// The real host.
pub struct LiveHost;

impl HostFiles for LiveHost {
    fn mountinfo(&self) -> String {
        std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
    }

    fn bind_source(&self, host_path: &Path) -> Result<PathBuf, SpecError> {
        if !host_path.exists() {
            std::fs::create_dir_all(host_path).map_err(|source| SpecError::Io {
                path: host_path.to_path_buf(),
                source,
            })?;
        }
        std::fs::canonicalize(host_path).map_err(|source| SpecError::Io {
            path: host_path.to_path_buf(),
            source,
        })
    }

    fn devices_at(
        &self,
        host_path: &Path,
        container_path: &Path,
    ) -> Result<Vec<LinuxDevice>, String> {
        let meta =
            std::fs::metadata(host_path).map_err(|e| format!("{}: {e}", host_path.display()))?;
        if meta.is_dir() {
            Ok(walk_devices(host_path, container_path))
        } else {
            device_from(&meta, container_path)
                .map(|d| vec![d])
                .ok_or_else(|| format!("{} is not a device", host_path.display()))
        }
    }

    fn host_devices(&self) -> Vec<LinuxDevice> {
        let mut out = Vec::new();
        collect_host_devices(Path::new("/dev"), &mut out);
        out.sort_by(|a, b| a.path().cmp(b.path()));
        out
    }

    fn read_in_root(&self, root: &Path, path: &str) -> Result<String, SpecError> {
        let p = resolve_in_root(root, path);
        match std::fs::read_to_string(&p) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(source) => Err(SpecError::Io { path: p, source }),
        }
    }

    fn read_seccomp_profile(&self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }
}

/// Resolves `path` inside `root` the way the container will see it: symlinks (absolute or
/// relative) are followed but can never leave `root`.
pub fn resolve_in_root(root: &Path, path: &str) -> PathBuf {
    let mut pending: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(String::from)
        .collect();
    let mut current: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                current.pop();
                continue;
            }
            _ => {}
        }
        let candidate: PathBuf = root.join(current.iter().collect::<PathBuf>()).join(&part);
        match std::fs::read_link(&candidate) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    current.clear();
                }
                for c in target.components().rev() {
                    if let Component::Normal(s) = c {
                        pending.push(s.to_string_lossy().into_owned());
                    } else if c == Component::ParentDir {
                        pending.push("..".into());
                    }
                }
            }
            _ => current.push(part),
        }
    }
    root.join(current.iter().collect::<PathBuf>())
}

fn device_from(meta: &std::fs::Metadata, dest: &Path) -> Option<LinuxDevice> {
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return None;
    };
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(dest.to_path_buf())
        .typ(typ)
        .major(nix::sys::stat::major(rdev) as i64)
        .minor(nix::sys::stat::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o7777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .ok()
}

fn walk_devices(host_dir: &Path, dest_dir: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(host_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        let dest = dest_dir.join(e.file_name());
        if meta.is_dir() {
            out.extend(walk_devices(&e.path(), &dest));
        } else if let Some(d) = device_from(&meta, &dest) {
            out.push(d);
        }
    }
    out
}

fn collect_host_devices(dir: &Path, out: &mut Vec<LinuxDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if meta.is_dir() {
            if !matches!(
                name.as_ref(),
                "pts" | "shm" | "fd" | "mqueue" | ".lxc" | ".lxd-mounts" | ".udev"
            ) {
                collect_host_devices(&path, out);
            }
        } else if path != Path::new("/dev/console") && path != Path::new("/dev/ptmx") {
            if let Some(d) = device_from(&meta, &path) {
                out.push(d);
            }
        }
    }
}
