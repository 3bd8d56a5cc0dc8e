//! The gRPC edge: CRI RuntimeService and ImageService on a unix socket.
//!
//! Handlers are thin: they validate and convert CRI messages, call the rooms below, and map
//! errors through [`crate::error`]. Cross-object work (StopPodSandbox stops the pod's containers
//! first) is orchestrated here. The socket is only served after recovery has finished.

mod authority;
mod batches;
mod container;
mod convert;
mod deadline;
mod events;
mod image;
mod nri;
mod observe;
mod pod;
mod records;
mod reload;
mod resources;
mod runtime;
mod stats;
mod status;
mod stream;

pub use reload::{log_outcome, ConfigSource, ReloadError};

use crate::config::{Config, Live, LiveConfig};
use crate::container::lifecycle::Containers;
use crate::context::NodeContext;
use crate::cri::v1::image_service_server::ImageServiceServer;
use crate::cri::v1::runtime_service_server::RuntimeServiceServer;
use crate::error::Error;
use crate::image::ImageStore;
use crate::network::Cni;
use crate::oci::host::HostFeatures;
use crate::sandbox::lifecycle::Pods;
use crate::state::{Durability, Table};
use authority::AuthorityFix;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Response, Status};

pub(crate) type Res<T> = Result<Response<T>, Status>;

pub(crate) fn not_yet(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented by this ferrio version"))
}

/// Run `fut` to completion even if the client goes away: kubelet retries a timed-out create
/// and must find the first attempt's result, not a half-done object.
pub(crate) async fn detached<T: Send + 'static>(
    fut: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(fut)
        .await
        .map_err(|e| Status::internal(format!("request task failed: {e}")))?
        .map_err(Status::from)
}

/// Everything the daemon serves, built once at start.
pub struct Daemon {
    /// Swapped by [`Daemon::reload`]; a request takes one snapshot with `load()`.
    pub config: LiveConfig,
    pub pods: Arc<Pods>,
    pub containers: Arc<Containers>,
    pub images: Arc<ImageStore>,
    /// The CNI network new pods get; swapped by a reload that changes the network settings.
    pub cni: Live<Cni>,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The exec/attach/port-forward server the Exec, Attach and PortForward URLs point at.
    pub streaming: Arc<crate::streaming::Server>,
    pub events: events::Events,
    /// NRI node plugins; `None` with `nri.enable = false`.
    pub nri: Option<Arc<crate::nri::Nri>>,
    /// One reload at a time.
    reloading: std::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Streaming(#[from] crate::streaming::StreamError),
    #[error(transparent)]
    Nri(#[from] crate::nri::NriError),
}

impl Daemon {
    /// Open the stores and recover every pod and container left by a previous run. Returns
    /// only when recovery is complete.
    pub async fn start(config: Config, monitor_path: PathBuf) -> Result<Arc<Daemon>, StartError> {
        let live = LiveConfig::new(config);
        let config = live.load();
        for dir in [&config.root, &config.runroot] {
            std::fs::create_dir_all(dir).map_err(|source| StartError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let images = Arc::new(ImageStore::open(&config.root.join("images"))?);
        let cni = Live::new(cni_for(&config));
        let context = Arc::new(NodeContext::for_host(
            live.clone(),
            HostFeatures::detect(),
            monitor_path,
        ));
        let (sandboxes, broken) = Table::open(&config.root.join("sandboxes"))?;
        for (path, e) in broken {
            tracing::error!(path = %path.display(), error = %e, "skipping broken pod sandbox record");
        }
        let (containers, broken) = Table::open(&config.root.join("containers"))?;
        for (path, e) in broken {
            tracing::error!(path = %path.display(), error = %e, "skipping broken container record");
        }
        let pods = Arc::new(Pods::new(
            context.clone(),
            sandboxes,
            images.clone(),
            cni.clone(),
        ));
        let containers = Arc::new(Containers::new(
            context,
            pods.clone(),
            images.clone(),
            containers,
        ));
        let boot_file = config.root.join("boot_id");
        if rebooted(&boot_file) {
            mark_lost_in_reboot(&pods, &containers).await;
        }
        containers.recover().await;
        pods.recover().await;
        tracing::info!(
            pods = pods.list().len(),
            containers = containers.list().len(),
            "recovery complete"
        );
        let streaming = stream::start_server(&config, &pods, &containers).await?;
        let daemon = Arc::new(Daemon {
            config: live,
            pods,
            containers,
            images,
            cni,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            streaming,
            events: events::Events::new(),
            nri: config
                .nri
                .enable
                .then(|| crate::nri::Nri::new(nri_settings(&config))),
            reloading: std::sync::Mutex::new(()),
        });
        events::spawn(&daemon);
        if let Some(nri) = &daemon.nri {
            let metrics = daemon.metrics.clone();
            nri.observe_events(Box::new(move |event, took| {
                metrics.nri_event(event, took.as_secs_f64())
            }));
            nri.start(Arc::new(nri::DaemonView(Arc::downgrade(&daemon))))
                .await?;
        }
        if config.metrics.enable {
            let addr = config.metrics.address.clone();
            let listener = crate::metrics::bind(&addr)
                .await
                .map_err(|source| StartError::Io {
                    path: addr.clone().into(),
                    source,
                })?;
            let weak = Arc::downgrade(&daemon);
            tokio::spawn(crate::metrics::serve(listener, move || {
                weak.upgrade()
                    .map(|d| d.metrics.render(&d.snapshot()))
                    .unwrap_or_default()
            }));
            tracing::info!(address = %addr, "serving metrics");
        }
        Ok(daemon)
    }
}

/// The CNI network settings of `config`; the result cache lives under root.
fn cni_for(config: &Config) -> Cni {
    Cni::new(
        config.network.network_dir.clone(),
        config.network.plugin_dirs.clone(),
        config.root.join("cni-cache"),
    )
    .with_timeout(std::time::Duration::from_secs(
        config.network.cni_plugin_timeout,
    ))
    .with_default_network(Some(config.network.cni_default_network.clone()))
}

/// The NRI room's settings from `[nri]` (durations were validated with the config).
fn nri_settings(config: &Config) -> crate::nri::Settings {
    let duration = |s: &str, default: u64| {
        crate::config::parse_duration(s).unwrap_or(std::time::Duration::from_secs(default))
    };
    crate::nri::Settings {
        socket_path: config.nri.socket_path.clone(),
        plugin_path: config.nri.plugin_path.clone(),
        plugin_config_path: config.nri.plugin_config_path.clone(),
        disable_connections: config.nri.disable_connections,
        registration_timeout: duration(&config.nri.plugin_registration_timeout, 5),
        request_timeout: duration(&config.nri.plugin_request_timeout, 2),
        runtime_name: "ferrio".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The kernel's id of this boot.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// True when the records under root were written during an earlier boot. Records the current
/// boot either way.
fn rebooted(boot_file: &std::path::Path) -> bool {
    let now = boot_id();
    let before = std::fs::read_to_string(boot_file)
        .map(|s| s.trim().to_string())
        .ok();
    if before.as_deref() != Some(now.as_str()) {
        if let Err(e) = crate::state::write_atomic(boot_file, now.as_bytes(), Durability::PowerLoss)
        {
            tracing::warn!(path = %boot_file.display(), error = %e, "cannot record the boot id");
        }
    }
    matches!(before, Some(b) if b != now)
}

/// After a reboot no container process and no pause process survived: say so in the records
/// (exited, not ready), so that Stop/Remove then reclaim every host resource they still hold
/// (CNI reservations in root, cgroups, records) without waiting for processes that are gone.
async fn mark_lost_in_reboot(pods: &Arc<Pods>, containers: &Arc<Containers>) {
    tracing::info!("the machine rebooted since the last run: containers exited, pods not ready");
    containers.mark_exited_after_reboot().await;
    pods.mark_not_ready_after_reboot().await;
}

impl Daemon {
    /// Object counts for the metrics endpoint, from the in-memory tables.
    pub fn snapshot(&self) -> crate::metrics::Snapshot {
        use crate::container::lifecycle::ContainerState;
        use crate::sandbox::lifecycle::SandboxState;
        let (mut created, mut running, mut exited, mut oom, mut monitors) = (0, 0, 0, 0, 0);
        for c in self.containers.list() {
            let st = c.status();
            match st.state() {
                ContainerState::Created => created += 1,
                ContainerState::Running => running += 1,
                ContainerState::Exited => exited += 1,
                ContainerState::Creating => {}
            }
            if st.oom_killed {
                oom += 1;
            }
            if matches!(
                st.state(),
                ContainerState::Created | ContainerState::Running
            ) {
                monitors += 1;
            }
        }
        let (mut ready, mut notready) = (0, 0);
        for s in self.pods.list() {
            match s.status().state {
                SandboxState::Ready => {
                    ready += 1;
                    monitors += 1;
                }
                SandboxState::NotReady => notready += 1,
                SandboxState::Creating => {}
            }
        }
        crate::metrics::Snapshot {
            containers: vec![
                ("created", created),
                ("running", running),
                ("exited", exited),
            ],
            sandboxes: vec![("ready", ready), ("notready", notready)],
            oom_killed: oom,
            monitors,
            nri_plugins: self.nri.as_ref().map_or(0, |n| n.plugin_count() as i64),
        }
    }
}

/// Serve CRI on `listener` until `shutdown` resolves. Containers keep running afterwards.
pub async fn run(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt;
    let incoming = UnixListenerStream::new(listener).map(|conn| conn.map(AuthorityFix::new));
    let observe = observe::ObserveLayer(daemon.metrics.clone());
    tonic::transport::Server::builder()
        .layer(observe)
        .layer(deadline::DeadlineLayer)
        .add_service(
            RuntimeServiceServer::new(runtime::RuntimeSvc(daemon.clone()))
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        )
        .add_service(
            ImageServiceServer::new(image::ImageSvc(daemon))
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        )
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
