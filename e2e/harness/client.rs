//! A CRI client over the daemon's unix socket.

use ferrio::cri::v1::image_service_client::ImageServiceClient;
use ferrio::cri::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Both CRI services on one channel, as kubelet uses them.
#[derive(Clone)]
pub struct Cri {
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connect to the socket at `path`. The URI is a placeholder: the connector ignores it.
    pub async fn connect(path: &Path) -> Result<Cri, tonic::transport::Error> {
        let path: PathBuf = path.to_path_buf();
        let channel =
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await?;
        Ok(Cri {
            rt: RuntimeServiceClient::new(channel.clone()),
            img: ImageServiceClient::new(channel),
        })
    }
}
