//! CRI ImageService.

use super::convert;
use super::Daemon;
use crate::error::Error;
use crate::image::{ImageInfo, RegistryAuth};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ImageSvc(pub Arc<Daemon>);

type Res<T> = Result<Response<T>, Status>;

impl ImageSvc {
    /// The sandbox image and `pinned_images` (exact names or globs) are never garbage-collected.
    fn pinned(&self, i: &ImageInfo) -> bool {
        let cfg = &self.0.config.image;
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

    fn to_cri(&self, i: &ImageInfo) -> cri::Image {
        convert::image(i, self.pinned(i))
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
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .unwrap_or_default();
        let images = if filter.is_empty() {
            self.0
                .images
                .list()
                .iter()
                .map(|i| self.to_cri(i))
                .collect()
        } else {
            self.0
                .images
                .resolve(&filter)
                .iter()
                .map(|i| self.to_cri(i))
                .collect()
        };
        Ok(Response::new(cri::ListImagesResponse { images }))
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
            info.insert(
                "info".to_string(),
                serde_json::json!({ "imageSpec": i.config, "chainIDs": i.chain_ids }).to_string(),
            );
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
        // Finish the pull even if the client gives up: a retry then finds the image.
        let info = tokio::spawn(async move {
            d.images
                .pull(&name, &d.config.image, auth.as_ref())
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
        let Some(i) = self.0.images.resolve(&name) else {
            return Ok(Response::new(cri::RemoveImageResponse {}));
        };
        if let Some(c) = self
            .0
            .containers
            .table
            .list()
            .into_iter()
            .find(|c| c.meta.image_id == i.id)
        {
            return Err(Error::FailedPrecondition(format!(
                "image {name:?} is in use by container {}",
                c.id
            ))
            .into());
        }
        self.0.images.remove(&i.id).map_err(Error::from)?;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Res<cri::ImageFsInfoResponse> {
        Err(Status::unimplemented(
            "ImageFsInfo is not implemented by this ferrio version",
        ))
    }
}
