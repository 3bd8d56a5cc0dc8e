//! Image volumes (KEP-4639, kubelet's `image` volume source): a CRI mount whose `image` is set
//! gets that image's filesystem, read-only, at its container path.
//!
//! The image must already be in the store (kubelet pulls it first and passes PullImage's
//! `image_ref`). Each volume is a read-only overlay of the image's layers, mounted on the host
//! at `<root>/image-volumes/<container id>/<n>/merged` and bound into the container by the OCI
//! runtime. The mounts live as long as the container record: RemoveContainer (and the rollback
//! of a failed create, and the reaping of a half-created container after a crash) takes them
//! down. While they exist the image counts as in use ([`Container::uses_image`]).
//!
//! A mount with `image_sub_path` binds only that path of the volume: it is resolved inside the
//! mounted overlay component by component, each symlink read and followed as if the overlay
//! were `/` (an absolute target starts again at the overlay's root, `..` stops there), the way
//! `filepath-securejoin` (CRI-O) and `openat2(RESOLVE_IN_ROOT)` do. The overlay is read-only and
//! its layers never change, so the path resolved is the path bound: no race can swap a
//! component for a symlink in between.

use super::lifecycle::{Container, ContainerError, Containers};
use super::record::Mount;
use crate::image::{ImageInfo, ImageStore};
use crate::rollback::Rollback;
use std::path::{Path, PathBuf};

/// One image volume of a container, as mounted on the host (the spec's input type).
pub use crate::spec::ImageVolume;

/// Symlinks followed while resolving one sub-path before giving up (the kernel's own limit).
const MAX_SYMLINKS: usize = 40;

/// Why an `image_sub_path` cannot be mounted.
#[derive(Debug, thiserror::Error)]
pub enum SubPathError {
    #[error("image_sub_path {0:?} does not exist in the image")]
    Missing(String),
    #[error("image_sub_path {path:?}: {component:?} is not a directory")]
    NotADirectory { path: String, component: String },
    #[error("image_sub_path {0:?}: too many levels of symbolic links")]
    Loop(String),
    #[error("image_sub_path {0:?} is neither a file nor a directory")]
    NotMountable(String),
    #[error("image_sub_path {path:?}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// The host path of `sub_path` inside `root`, resolved as if `root` were `/`: every symlink met
/// is followed inside `root` (never out of it), `..` stops at `root`. The result must be a
/// directory or a regular file (what a bind mount can take).
pub fn resolve_in_root(root: &Path, sub_path: &str) -> Result<PathBuf, SubPathError> {
    use std::collections::VecDeque;
    use std::path::Component;
    let mut pending: VecDeque<std::ffi::OsString> = Path::new(sub_path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    // The components resolved so far, below `root`; none of them is a symlink.
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    let host_path =
        |parts: &[std::ffi::OsString]| parts.iter().fold(root.to_path_buf(), |p, c| p.join(c));
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = host_path(&resolved).join(&part);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SubPathError::Missing(sub_path.to_string()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(SubPathError::NotADirectory {
                    path: sub_path.to_string(),
                    component: resolved
                        .last()
                        .map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                })
            }
            Err(source) => {
                return Err(SubPathError::Io {
                    path: sub_path.to_string(),
                    source,
                })
            }
        };
        if !meta.file_type().is_symlink() {
            resolved.push(part);
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(SubPathError::Loop(sub_path.to_string()));
        }
        let target = std::fs::read_link(&candidate).map_err(|source| SubPathError::Io {
            path: sub_path.to_string(),
            source,
        })?;
        if target.is_absolute() {
            // Absolute inside the image means from the image's root.
            resolved.clear();
        }
        for c in target.components().rev() {
            match c {
                Component::Normal(n) => pending.push_front(n.to_os_string()),
                Component::ParentDir => pending.push_front("..".into()),
                _ => {}
            }
        }
    }
    let path = host_path(&resolved);
    let meta = std::fs::symlink_metadata(&path).map_err(|source| SubPathError::Io {
        path: sub_path.to_string(),
        source,
    })?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(SubPathError::NotMountable(sub_path.to_string()));
    }
    Ok(path)
}

/// The image volumes among a request's `mounts`: (index in `mounts`, the image named).
fn image_mounts(mounts: &[Mount]) -> impl Iterator<Item = (usize, &Mount, &str)> {
    mounts.iter().enumerate().filter_map(|(i, m)| {
        let image = m.image.as_ref().map(|s| s.image.as_str())?;
        (!image.is_empty()).then_some((i, m, image))
    })
}

/// The ids of the images the image volumes among `mounts` name, in mount order, checked: the mount
/// must be read-only (the feature's definition; a read-write request is refused, not silently
/// downgraded), must not name a host path too, and the image must be present (kubelet pulls
/// first). Only store lookups, so CreateContainer calls it before reserving anything.
pub fn resolve(images: &ImageStore, mounts: &[Mount]) -> Result<Vec<String>, ContainerError> {
    let mut out = Vec::new();
    for (i, m, image) in image_mounts(mounts) {
        let invalid = |reason: &str| ContainerError::Invalid {
            field: format!("mounts[{i}]"),
            reason: format!("image volume {image:?}: {reason}"),
        };
        if !m.readonly {
            return Err(invalid("image volumes are read-only, readonly must be set"));
        }
        if !m.host_path.is_empty() {
            return Err(invalid("host_path and image are mutually exclusive"));
        }
        if !m.container_path.starts_with('/') {
            return Err(invalid("container path is not absolute"));
        }
        let found = images
            .resolve(image)
            .ok_or_else(|| ContainerError::ImageNotFound(image.to_string()))?;
        out.push(found.id);
    }
    Ok(out)
}

/// Take down every image volume under `dir` (one sub-directory per volume) and remove `dir`.
/// Idempotent; an unmount failure is returned and leaves the directory in place.
fn unmount_all(dir: &Path) -> Result<(), ContainerError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ContainerError::Io {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    for e in entries.flatten() {
        crate::image::overlay::unmount_rootfs(&e.path())?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ContainerError::Io {
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

impl Containers {
    /// Mount the image volumes of container `rec` (among its request's `mounts`; the images are the
    /// ids [`resolve`] put in its record); an undo on `rb` takes them all down if the create
    /// fails later.
    pub(super) async fn mount_image_volumes(
        &self,
        rec: &Container,
        mounts: &[Mount],
        rb: &mut Rollback,
    ) -> Result<Vec<ImageVolume>, ContainerError> {
        let mut jobs: Vec<(usize, String, Vec<PathBuf>)> = Vec::new();
        for ((index, m, _), image_id) in image_mounts(mounts).zip(&rec.meta.image_volumes) {
            // By id: the very image checked before, or NotFound if it was removed meanwhile.
            let image: ImageInfo = self
                .images
                .resolve(image_id)
                .ok_or_else(|| ContainerError::ImageNotFound(image_id.clone()))?;
            jobs.push((
                index,
                m.image_sub_path.clone(),
                self.images.layer_dirs(&image),
            ));
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.context.layout.image_volumes_dir(&rec.id);
        {
            let dir = dir.clone();
            rb.push("unmount image volumes", async move {
                let _ = tokio::task::spawn_blocking(move || unmount_all(&dir)).await;
            });
        }
        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(index, sub_path, layers)| {
                    let root =
                        crate::image::overlay::mount_readonly(&layers, &d.join(index.to_string()))?;
                    let source = if sub_path.is_empty() {
                        root
                    } else {
                        resolve_in_root(&root, &sub_path).map_err(|e| ContainerError::Invalid {
                            field: format!("mounts[{index}].image_sub_path"),
                            reason: e.to_string(),
                        })?
                    };
                    Ok(ImageVolume { index, source })
                })
                .collect::<Result<Vec<_>, ContainerError>>()
        })
        .await
        .map_err(|e| ContainerError::Io {
            path: dir,
            source: std::io::Error::other(e),
        })?
    }

    /// Unmount container `id`'s image volumes, if it has any. Idempotent.
    pub(super) async fn unmount_image_volumes(&self, id: &str) -> Result<(), ContainerError> {
        let dir = self.context.layout.image_volumes_dir(id);
        let d = dir.clone();
        tokio::task::spawn_blocking(move || unmount_all(&d))
            .await
            .map_err(|e| ContainerError::Io {
                path: dir,
                source: std::io::Error::other(e),
            })?
    }
}

impl Container {
    /// Whether this container runs image `image_id` or mounts it as an image volume: such an
    /// image must not be removed (its layers are the container's lowers).
    pub fn uses_image(&self, image_id: &str) -> bool {
        self.meta.image_id == image_id || self.meta.image_volumes.iter().any(|v| v == image_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs root: umount2"]
    fn unmount_all_is_idempotent_and_removes_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c1");
        unmount_all(&dir).unwrap();
        std::fs::create_dir_all(dir.join("0/merged")).unwrap();
        std::fs::create_dir_all(dir.join("3/l")).unwrap();
        unmount_all(&dir).unwrap();
        assert!(!dir.exists());
    }

    /// An image tree: `etc/group`, `data/file`, `data/dir/inner`, and symlinks that lead out of
    /// it if followed on the host.
    fn image_tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("etc/group"), "image group").unwrap();
        std::fs::create_dir_all(r.join("data/dir")).unwrap();
        std::fs::write(r.join("data/file"), "file").unwrap();
        std::fs::write(r.join("data/dir/inner"), "inner").unwrap();
        let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, r.join(at)).unwrap();
        link("/etc", "data/abs");
        link("../../../../../../etc/group", "data/up");
        link("dir", "data/rel");
        link("/data/loop", "data/loop");
        link("/proc/self", "data/host-only");
        d
    }

    #[test]
    fn sub_paths_resolve_to_files_and_directories_inside_the_root() {
        let d = image_tree();
        let r = d.path();
        assert_eq!(
            resolve_in_root(r, "data/file").unwrap(),
            r.join("data/file")
        );
        assert_eq!(resolve_in_root(r, "data/dir").unwrap(), r.join("data/dir"));
        assert_eq!(
            resolve_in_root(r, "/data/./dir/").unwrap(),
            r.join("data/dir")
        );
        assert_eq!(
            resolve_in_root(r, "data/rel/inner").unwrap(),
            r.join("data/dir/inner")
        );
        assert_eq!(resolve_in_root(r, "..").unwrap(), r.to_path_buf());
    }

    #[test]
    fn symlinks_never_lead_out_of_the_root() {
        let d = image_tree();
        let r = d.path();
        // An absolute target starts again at the image's root, `..` stops there.
        assert_eq!(resolve_in_root(r, "data/abs").unwrap(), r.join("etc"));
        assert_eq!(
            resolve_in_root(r, "data/abs/group").unwrap(),
            r.join("etc/group")
        );
        assert_eq!(resolve_in_root(r, "data/up").unwrap(), r.join("etc/group"));
        assert_eq!(
            resolve_in_root(r, "../../etc/group").unwrap(),
            r.join("etc/group")
        );
        // What exists only on the host is missing in the image.
        assert!(matches!(
            resolve_in_root(r, "data/host-only"),
            Err(SubPathError::Missing(_))
        ));
        assert!(matches!(
            resolve_in_root(r, "data/loop"),
            Err(SubPathError::Loop(_))
        ));
    }

    #[test]
    fn missing_sub_paths_are_named() {
        let d = image_tree();
        let r = d.path();
        let e = resolve_in_root(r, "no/such").unwrap_err();
        assert!(matches!(e, SubPathError::Missing(_)));
        assert!(e.to_string().contains("\"no/such\""), "{e}");
        assert!(matches!(
            resolve_in_root(r, "data/file/below"),
            Err(SubPathError::NotADirectory { .. })
        ));
    }
}
