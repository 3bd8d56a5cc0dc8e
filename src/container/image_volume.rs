//! Image volumes (KEP-4639, kubelet's `image` volume source): a CRI mount whose `image` is set
//! gets that image's filesystem, read-only, at its container path.
//!
//! The image must already be in the store (kubelet pulls it first and passes PullImage's
//! `image_ref`). Each volume is a read-only overlay of the image's layers, mounted on the host
//! at `<root>/image-volumes/<container id>/<n>/merged` and bound into the container by the OCI
//! runtime. The mounts live as long as the container record: RemoveContainer (and the rollback
//! of a failed create, and the reaping of a half-created container after a crash) takes them
//! down. While they exist the image counts as in use ([`Container::uses_image`]).

use super::lifecycle::{Container, ContainerError, Containers};
use crate::cri::v1::{ContainerConfig, Mount};
use crate::image::{ImageInfo, ImageStore};
use crate::rollback::Rollback;
use std::path::{Path, PathBuf};

/// One image volume of a container, as mounted on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageVolume {
    /// Index of the mount in the request's `mounts`.
    pub index: usize,
    /// The host path bound into the container (the read-only overlay).
    pub source: PathBuf,
}

/// The image volumes of `config`: (index in `mounts`, the image named).
fn image_mounts(config: &ContainerConfig) -> impl Iterator<Item = (usize, &Mount, &str)> {
    config.mounts.iter().enumerate().filter_map(|(i, m)| {
        let image = m.image.as_ref().map(|s| s.image.as_str())?;
        (!image.is_empty()).then_some((i, m, image))
    })
}

/// The ids of the images `config`'s image volumes name, in mount order, checked: the mount
/// must be read-only (the feature's definition; a read-write request is refused, not silently
/// downgraded), must not name a host path too, and the image must be present (kubelet pulls
/// first). Only store lookups, so CreateContainer calls it before reserving anything.
pub fn resolve(
    images: &ImageStore,
    config: &ContainerConfig,
) -> Result<Vec<String>, ContainerError> {
    let mut out = Vec::new();
    for (i, m, image) in image_mounts(config) {
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

/// Where container `id`'s image volumes are mounted on the host.
fn volumes_dir(root: &Path, id: &str) -> PathBuf {
    root.join("image-volumes").join(id)
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
    /// Mount the image volumes of container `rec` (created from `config`; the images are the
    /// ids [`resolve`] put in its record); an undo on `rb` takes them all down if the create
    /// fails later.
    pub(super) async fn mount_image_volumes(
        &self,
        rec: &Container,
        config: &ContainerConfig,
        rb: &mut Rollback,
    ) -> Result<Vec<ImageVolume>, ContainerError> {
        let mut jobs: Vec<(usize, Vec<PathBuf>)> = Vec::new();
        for ((index, _, _), image_id) in image_mounts(config).zip(&rec.meta.image_volumes) {
            // By id: the very image checked before, or NotFound if it was removed meanwhile.
            let image: ImageInfo = self
                .images
                .resolve(image_id)
                .ok_or_else(|| ContainerError::ImageNotFound(image_id.clone()))?;
            jobs.push((index, self.images.layer_dirs(&image)));
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let dir = volumes_dir(&self.pods.config.load().root, &rec.id);
        {
            let dir = dir.clone();
            rb.push("unmount image volumes", async move {
                let _ = tokio::task::spawn_blocking(move || unmount_all(&dir)).await;
            });
        }
        let d = dir.clone();
        tokio::task::spawn_blocking(move || {
            jobs.into_iter()
                .map(|(index, layers)| {
                    let source =
                        crate::image::overlay::mount_readonly(&layers, &d.join(index.to_string()))?;
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
        let dir = volumes_dir(&self.pods.config.load().root, id);
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
    fn unmount_all_is_idempotent_and_removes_the_dir() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c1");
        unmount_all(&dir).unwrap();
        std::fs::create_dir_all(dir.join("0/merged")).unwrap();
        std::fs::create_dir_all(dir.join("3/l")).unwrap();
        unmount_all(&dir).unwrap();
        assert!(!dir.exists());
    }
}
