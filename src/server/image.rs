//! CRI ImageService.

use super::batches::{in_batches, Batches};
use super::convert;
use super::Daemon;
use crate::cri::v1 as cri;
use crate::cri::v1::image_service_server::ImageService;
use crate::error::Error;
use crate::image::usage::dir_usage;
use crate::image::{FsUsage, ImageInfo, RegistryAuth, Removed};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ImageSvc(pub Arc<Daemon>);

type Res<T> = Result<Response<T>, Status>;

impl ImageSvc {
    /// The sandbox image and `pinned_images` (exact names or globs) are never garbage-collected.
    fn pinned(&self, i: &ImageInfo) -> bool {
        let config = self.0.config.load();
        let cfg = &config.image;
        if let Some(sb) = self.0.images.resolve(&cfg.sandbox_image) {
            if sb.id == i.id {
                return true;
            }
        }
        cfg.pinned_images.iter().any(|p| {
            let pat = glob::Pattern::new(p).ok();
            i.repo_tags
                .iter()
                .chain(i.repo_digests.iter())
                .any(|name| name == p || pat.as_ref().is_some_and(|g| g.matches(name)))
        })
    }

    /// The images a list filter selects: all of them, or the one its image names.
    fn select(&self, filter: Option<cri::ImageFilter>) -> Vec<ImageInfo> {
        let name = filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .unwrap_or_default();
        if name.is_empty() {
            self.0.images.list()
        } else {
            self.0.images.resolve(&name).into_iter().collect()
        }
    }

    fn to_cri(&self, i: &ImageInfo) -> cri::Image {
        convert::image(i, self.pinned(i))
    }

    /// ImageStatus's verbose `info`: the whole OCI image config (as `crictl inspecti` shows it),
    /// the layers' chain ids and the digests the image was pulled by.
    async fn verbose_info(&self, i: &ImageInfo) -> Result<String, Status> {
        let store = self.0.images.clone();
        let image = i.clone();
        let blob = tokio::task::spawn_blocking(move || store.config_blob(&image))
            .await
            .map_err(|e| Status::internal(format!("image status task failed: {e}")))?
            .map_err(Error::from)?;
        let spec: serde_json::Value =
            serde_json::from_slice(&blob).unwrap_or(serde_json::Value::Null);
        let (manifest, index) = self.0.images.manifest_digests(&i.id).unwrap_or_default();
        Ok(serde_json::json!({
            "imageSpec": spec,
            "chainIDs": i.chain_ids,
            "manifestDigest": manifest,
            "indexDigest": index,
            "size": i.size,
            "pinned": self.pinned(i),
        })
        .to_string())
    }
}

/// How long a count of the container file system stays fresh: walking every container's upper
/// directory on each of kubelet's frequent ImageFsInfo calls would cost too much.
const CONTAINER_FS_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// The last container file system count: when, and what.
static CONTAINER_FS: std::sync::Mutex<Option<(std::time::Instant, std::path::PathBuf, FsUsage)>> =
    std::sync::Mutex::new(None);

/// Usage of `dir` (the containers' overlay directories), counted at most every
/// [`CONTAINER_FS_TTL`].
async fn container_fs_usage(dir: std::path::PathBuf) -> Result<FsUsage, Status> {
    {
        let cached = CONTAINER_FS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, d, u)) = cached.as_ref() {
            if *d == dir && at.elapsed() < CONTAINER_FS_TTL {
                return Ok(*u);
            }
        }
    }
    let d = dir.clone();
    let u = tokio::task::spawn_blocking(move || dir_usage(&d))
        .await
        .map_err(|e| Status::internal(format!("container fs usage task failed: {e}")))?
        .map_err(|e| Status::internal(format!("{}: {e}", dir.display())))?;
    *CONTAINER_FS.lock().unwrap_or_else(|p| p.into_inner()) =
        Some((std::time::Instant::now(), dir, u));
    Ok(u)
}

fn fs_usage(mountpoint: &std::path::Path, u: FsUsage, timestamp: i64) -> cri::FilesystemUsage {
    cri::FilesystemUsage {
        timestamp,
        fs_id: Some(cri::FilesystemIdentifier {
            mountpoint: mountpoint.display().to_string(),
        }),
        used_bytes: Some(cri::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(cri::UInt64Value {
            value: u.inodes_used,
        }),
    }
}

fn image_name(spec: Option<cri::ImageSpec>) -> Result<String, Status> {
    let name = spec.map(|s| s.image).unwrap_or_default();
    if name.trim().is_empty() {
        return Err(Status::invalid_argument("image: no image name given"));
    }
    Ok(name)
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Res<cri::ListImagesResponse> {
        let images = self
            .select(req.into_inner().filter)
            .iter()
            .map(|i| self.to_cri(i))
            .collect();
        Ok(Response::new(cri::ListImagesResponse { images }))
    }

    type StreamImagesStream = Batches<cri::StreamImagesResponse>;

    async fn stream_images(
        &self,
        req: Request<cri::StreamImagesRequest>,
    ) -> Res<Self::StreamImagesStream> {
        let selected = self.select(req.into_inner().filter);
        let svc = ImageSvc(self.0.clone());
        let read = move |batch: Vec<ImageInfo>| {
            std::future::ready(Ok(batch.iter().map(|i| svc.to_cri(i)).collect()))
        };
        Ok(Response::new(in_batches(selected, read, |images| {
            cri::StreamImagesResponse { images }
        })))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Res<cri::ImageStatusResponse> {
        let req = req.into_inner();
        let name = image_name(req.image)?;
        // A missing image is an empty answer, not an error: kubelet decides to pull from it.
        let Some(i) = self.0.images.resolve(&name) else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            info.insert("info".to_string(), self.verbose_info(&i).await?);
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(self.to_cri(&i)),
            info,
        }))
    }

    async fn pull_image(&self, req: Request<cri::PullImageRequest>) -> Res<cri::PullImageResponse> {
        let req = req.into_inner();
        let name = image_name(req.image)?;
        let auth = req.auth.map(|a| RegistryAuth {
            username: a.username,
            password: a.password,
            auth: a.auth,
            identity_token: a.identity_token,
            registry_token: a.registry_token,
        });
        let d = self.0.clone();
        let config = d.config.load();
        // Finish the pull even if the client gives up: a retry then finds the image.
        let info = tokio::spawn(async move {
            d.images
                .pull(&name, &config.image, auth.as_ref())
                .await
                .map_err(Error::from)
        })
        .await
        .map_err(|e| Status::internal(format!("pull task failed: {e}")))??;
        Ok(Response::new(cri::PullImageResponse { image_ref: info.id }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Res<cri::RemoveImageResponse> {
        let name = image_name(req.into_inner().image)?;
        // Absent: success (idempotent). Dropping one of several tags is always allowed; deleting
        // the image itself is refused while a container uses it.
        let Some((i, deletes)) = self.0.images.removal_target(&name) else {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        if deletes {
            if let Some(c) = self
                .0
                .containers
                .list()
                .into_iter()
                .find(|c| c.uses_image(&i.id))
            {
                return Err(Error::FailedPrecondition(format!(
                    "image {name:?} ({}) is in use by container {}",
                    i.id, c.id
                ))
                .into());
            }
        }
        let store = self.0.images.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove(&name))
            .await
            .map_err(|e| Status::internal(format!("remove image task failed: {e}")))?
            .map_err(Error::from)?;
        match removed {
            Removed::Deleted(i) => tracing::info!(id = %i.id, tags = ?i.repo_tags, "image removed"),
            Removed::Untagged(i) => {
                tracing::info!(id = %i.id, tags = ?i.repo_tags, "image untagged")
            }
            Removed::Absent => {}
        }
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Res<cri::ImageFsInfoResponse> {
        let now = crate::clock::now_ns();
        let images_dir = self.0.images.dir().to_path_buf();
        let image_fs = fs_usage(&images_dir, self.0.images.usage(), now);
        let overlay_dir = self.0.config.load().root.join("overlay");
        let container_fs = fs_usage(
            &overlay_dir,
            container_fs_usage(overlay_dir.clone()).await?,
            now,
        );
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![image_fs],
            container_filesystems: vec![container_fs],
        }))
    }
}
