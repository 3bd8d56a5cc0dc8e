//! NRI, the runtime side: node plugins (containerd/nri) see every pod and container event and may adjust
//! containers as they are created.
//!
//! Owns: the plugin socket and the plugins connected to it, the plugins pre-installed under `plugin_path`
//! (started by the daemon with a pre-connected socket), registration, configuration, synchronization, the
//! ordered event calls, the folding of several plugins' answers under NRI's conflict rules ([`adjust`]) and
//! the edit of a container's OCI spec that results ([`apply`]), and what a config reload changes of all that
//! ([`Nri::prepare_reload`], [`Nri::reload`]). Must not touch: CRI types or `server`; the
//! daemon hands pods and containers in as NRI's own types and applies updates through [`NodeState`].
//!
//! The wire protocol is carried here rather than by the `ttrpc` crate: that crate generates its messages
//! with the `protobuf` crate (the daemon's schemas are `prost` types), and its server owns whole sockets,
//! while NRI runs a client and a server on two logical connections of one multiplexed socket. ttrpc's
//! framing is a 10-byte header and a protobuf envelope, small enough to own ([`wire`], [`conn`]).
//!
//! Plugins are called one at a time, in index order (then by name). A plugin that times out or whose
//! connection breaks is dropped, and the request goes on without it; an error a plugin answers with
//! fails RunPodSandbox, CreateContainer and UpdateContainer (naming the plugin), and is logged otherwise.

pub mod adjust;
pub mod conn;
pub mod wire;

/// NRI's plugin API (proto/nri/api.proto).
pub mod api {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/nri.pkg.api.v1alpha1.rs"));
}

/// ttrpc's request and response envelopes (proto/ttrpc/ttrpc.proto).
pub(crate) mod ttrpc_proto {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/ttrpc.rs"));
}

use api::Event;
use conn::{CallError, Connection, IncomingRequest};
use futures::future::BoxFuture;
use prost::Message as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::RwLock;

pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// The NRI version this side speaks, as told to plugins in ConfigureRequest.
pub const NRI_VERSION: &str = "v0.12.1";
/// Environment of a pre-installed plugin: its name, index and the fd of its pre-connected socket.
pub const PLUGIN_NAME_ENV: &str = "NRI_PLUGIN_NAME";
pub const PLUGIN_IDX_ENV: &str = "NRI_PLUGIN_IDX";
pub const PLUGIN_SOCKET_ENV: &str = "NRI_PLUGIN_SOCKET";
/// The fd number a pre-installed plugin finds its socket at.
const PLUGIN_SOCKET_FD: i32 = 3;

/// The subscription bit of `event`.
pub fn event_bit(event: Event) -> i32 {
    1 << (event as i32 - 1)
}

/// Every event a plugin may subscribe to (what an empty subscription means).
pub const VALID_EVENTS: i32 = (1 << (Event::Last as i32 - 1)) - 1;

/// How the room runs, from the `[nri]` config table.
#[derive(Debug, Clone)]
pub struct Settings {
    pub socket_path: PathBuf,
    pub plugin_path: PathBuf,
    pub plugin_config_path: PathBuf,
    pub disable_connections: bool,
    pub registration_timeout: Duration,
    pub request_timeout: Duration,
    pub runtime_name: String,
    pub runtime_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NriError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A plugin answered an event with an error.
    #[error("NRI plugin {plugin:?} failed {event}: {message}")]
    Plugin {
        plugin: String,
        event: &'static str,
        message: String,
    },
    #[error("NRI: {0}")]
    Conflict(#[from] adjust::Conflict),
}

/// What the room needs from the daemon.
pub trait NodeState: Send + Sync {
    /// Every pod and container, for a plugin's Synchronize.
    fn snapshot(&self) -> BoxFuture<'_, (Vec<api::PodSandbox>, Vec<api::Container>)>;
    /// Apply resource updates plugins asked for; returns the ones that failed.
    fn update_containers(
        &self,
        updates: Vec<api::ContainerUpdate>,
    ) -> BoxFuture<'_, Vec<api::ContainerUpdate>>;
    /// Stop a container a plugin asked to evict.
    fn evict_container(&self, eviction: api::ContainerEviction) -> BoxFuture<'_, ()>;
}

/// One registered plugin.
struct Plugin {
    /// `<idx>-<name>`, as logs and errors name it.
    id: String,
    idx: String,
    name: String,
    events: i32,
    conn: Arc<Connection>,
    /// A pre-installed plugin we started; killed when it is dropped.
    child: Option<tokio::sync::Mutex<tokio::process::Child>>,
}

impl Plugin {
    fn subscribed(&self, event: Event) -> bool {
        self.events & event_bit(event) != 0
    }
}

/// Told how long each event took to go through every subscribed plugin (the metrics endpoint's histogram).
pub type EventObserver = Box<dyn Fn(&'static str, Duration) + Send + Sync>;

pub struct Nri {
    /// Swapped by [`Nri::reload`]; read, never held across an await.
    settings: std::sync::RwLock<Settings>,
    /// Registered plugins, for the metrics endpoint (which must not wait on `plugins`).
    count: std::sync::atomic::AtomicUsize,
    /// File names under plugin_path whose plugin process runs, so a reload starts only the new ones.
    running: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The task accepting external plugins, while connections are enabled.
    accepting: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    observer: std::sync::OnceLock<EventObserver>,
    /// Sorted by index, then name. Events hold the read side for their whole dispatch and a plugin's
    /// Synchronize holds the write side, so an object created while a plugin synchronizes is either in its
    /// snapshot or reaches it as an event, never neither.
    plugins: RwLock<Vec<Arc<Plugin>>>,
    state: std::sync::OnceLock<Arc<dyn NodeState>>,
    /// Containers plugins were told stopped (by StopContainer or by their own exit): each is told once.
    stopped: std::sync::Mutex<std::collections::HashSet<String>>,
    me: Weak<Nri>,
}

impl Nri {
    pub fn new(settings: Settings) -> Arc<Nri> {
        Arc::new_cyclic(|me| Nri {
            settings: std::sync::RwLock::new(settings),
            count: Default::default(),
            running: Default::default(),
            accepting: Default::default(),
            observer: Default::default(),
            plugins: RwLock::new(Vec::new()),
            state: std::sync::OnceLock::new(),
            stopped: Default::default(),
            me: me.clone(),
        })
    }

    /// Open the plugin socket (unless connections are disabled) and start the pre-installed plugins.
    pub async fn start(&self, state: Arc<dyn NodeState>) -> Result<(), NriError> {
        let _ = self.state.set(state);
        let settings = self.settings();
        if !settings.disable_connections {
            let listener = bind(&settings.socket_path)?;
            self.accept(listener);
        }
        self.launch_preinstalled();
        Ok(())
    }

    /// Time every event from now on with `observer`.
    pub fn observe_events(&self, observer: EventObserver) {
        let _ = self.observer.set(observer);
    }

    /// Registered plugins.
    pub fn plugin_count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn request_timeout(&self) -> Duration {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .request_timeout
    }

    /// The part of a reload to `new` that can fail: opening the socket when connections are enabled again.
    /// Nothing changes until [`Nri::reload`] takes the result; dropped, it closes the socket again.
    pub fn prepare_reload(&self, new: Settings) -> Result<PreparedReload, NriError> {
        let old = self.settings();
        let listener = if old.disable_connections && !new.disable_connections {
            Some(bind(&new.socket_path)?)
        } else {
            None
        };
        Ok(PreparedReload { new, listener })
    }

    /// Put a reload in force: new timeouts and paths for what comes next, the socket opened or closed (then the
    /// external plugins are dropped), and every plugin newly installed under plugin_path started. Enabling NRI
    /// and its socket path are only read at start.
    pub fn reload(&self, mut prepared: PreparedReload) {
        let new = prepared.new.clone();
        let old = std::mem::replace(
            &mut *self.settings.write().unwrap_or_else(|e| e.into_inner()),
            new.clone(),
        );
        if let Some(listener) = prepared.listener.take() {
            self.accept(listener);
        }
        if !old.disable_connections && new.disable_connections {
            if let Some(task) = lock(&self.accepting).take() {
                task.abort();
            }
            let _ = std::fs::remove_file(&old.socket_path);
            tracing::info!(socket = %old.socket_path.display(), "NRI: no longer accepting plugin connections");
            let me = self.me.clone();
            tokio::spawn(async move {
                let Some(nri) = me.upgrade() else { return };
                let external: Vec<_> = nri
                    .plugins
                    .read()
                    .await
                    .iter()
                    .filter(|p| p.child.is_none())
                    .cloned()
                    .collect();
                for p in external {
                    if nri.remove(&p).await {
                        tracing::info!(plugin = %p.id, index = %p.idx, name = %p.name, "NRI: plugin disconnected: connections are disabled");
                    }
                }
            });
        }
        self.launch_preinstalled();
    }

    fn accept(&self, listener: std::os::unix::net::UnixListener) {
        let path = self.settings().socket_path;
        let listener = match UnixListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(socket = %path.display(), error = %e, "NRI: cannot accept plugin connections");
                return;
            }
        };
        tracing::info!(socket = %path.display(), "NRI: accepting plugin connections");
        let task = tokio::spawn(accept_loop(self.me.clone(), listener));
        if let Some(old) = lock(&self.accepting).replace(task) {
            old.abort();
        }
    }

    /// Start every `<idx>-<name>` executable under plugin_path that is not running yet, each with a socket
    /// pre-connected to us.
    fn launch_preinstalled(&self) {
        let dir = self.settings().plugin_path;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| !t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for file in names {
            let Some((idx, name)) = split_plugin_name(&file) else {
                tracing::warn!(file, "NRI: ignoring a plugin file not named <index>-<name>");
                continue;
            };
            if !lock(&self.running).insert(file.clone()) {
                continue;
            }
            match self.launch(&dir, &file, idx, name) {
                Ok(()) => {
                    tracing::info!(plugin = %file, index = %idx, name = %name, "NRI: started pre-installed plugin")
                }
                Err(e) => {
                    lock(&self.running).remove(&file);
                    tracing::error!(plugin = %file, index = %idx, name = %name, error = %e, "NRI: cannot start plugin");
                }
            }
        }
    }

    fn launch(&self, dir: &Path, file: &str, idx: &str, name: &str) -> Result<(), String> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(dir.join(file));
        cmd.env_clear()
            .env(PLUGIN_NAME_ENV, name)
            .env(PLUGIN_IDX_ENV, idx)
            .env(PLUGIN_SOCKET_ENV, PLUGIN_SOCKET_FD.to_string())
            .stdin(std::process::Stdio::null());
        use std::os::fd::AsRawFd;
        crate::sys::pass_fd_at(&mut cmd, theirs.as_raw_fd(), PLUGIN_SOCKET_FD);
        let child = tokio::process::Command::from(cmd)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| e.to_string())?;
        drop(theirs);
        ours.set_nonblocking(true).map_err(|e| e.to_string())?;
        let stream = UnixStream::from_std(ours).map_err(|e| e.to_string())?;
        let me = self.me.clone();
        let launched = Launched {
            idx: idx.to_string(),
            name: name.to_string(),
            child,
            _running: Running {
                nri: self.me.clone(),
                file: file.to_string(),
            },
        };
        tokio::spawn(async move {
            if let Some(nri) = me.upgrade() {
                nri.adopt(stream, Some(launched)).await;
            }
        });
        Ok(())
    }

    /// The configuration text for plugin `idx-name`: `<idx>-<name>.conf`, else `<name>.conf`.
    fn plugin_config(&self, idx: &str, name: &str) -> String {
        let dir = self.settings().plugin_config_path;
        for file in [format!("{idx}-{name}.conf"), format!("{name}.conf")] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                return text;
            }
        }
        String::new()
    }

    /// Register, configure and synchronize the plugin on `stream`, then serve its requests until it leaves.
    async fn adopt(self: Arc<Self>, stream: UnixStream, launched: Option<Launched>) {
        let (conn, mut requests) = Connection::new(
            stream,
            conn::PLUGIN_SERVICE_CONN,
            conn::RUNTIME_SERVICE_CONN,
        );
        let settings = self.settings();
        // Who a pre-installed plugin is, before it says so itself.
        let started = launched
            .as_ref()
            .map(|l| format!("{}-{}", l.idx, l.name))
            .unwrap_or_default();
        let registered = match tokio::time::timeout(settings.registration_timeout, requests.recv())
            .await
        {
            Ok(Some(r)) if r.service == RUNTIME_SERVICE && r.method == "RegisterPlugin" => r,
            Ok(Some(r)) => {
                tracing::warn!(plugin = %started, method = %r.method, "NRI: plugin rejected: it did not register first");
                conn.shutdown().await;
                return;
            }
            _ => {
                tracing::warn!(plugin = %started, "NRI: plugin rejected: it did not register in time");
                conn.shutdown().await;
                return;
            }
        };
        let req = match api::RegisterPluginRequest::decode(registered.payload.as_slice()) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(plugin = %started, error = %e, "NRI: plugin rejected: undecodable registration");
                let _ = conn
                    .respond(
                        registered.stream_id,
                        Err((conn::CODE_UNKNOWN, e.to_string())),
                    )
                    .await;
                conn.shutdown().await;
                return;
            }
        };
        // Held until this function returns: a pre-installed plugin counts as running until then.
        let (idx, name, child, _running) = match launched {
            Some(l) => (l.idx, l.name, Some(l.child), Some(l._running)),
            None => (req.plugin_idx.clone(), req.plugin_name.clone(), None, None),
        };
        if !valid_index(&idx) || name.is_empty() {
            let message = format!(
                "invalid plugin index {idx:?} or name {name:?}: need two digits and a name"
            );
            tracing::warn!(index = %idx, name = %name, reason = %message, "NRI: plugin rejected");
            let _ = conn
                .respond(registered.stream_id, Err((conn::CODE_UNKNOWN, message)))
                .await;
            conn.shutdown().await;
            return;
        }
        let id = format!("{idx}-{name}");
        if conn
            .respond(registered.stream_id, Ok(api::Empty {}.encode_to_vec()))
            .await
            .is_err()
        {
            return;
        }
        let configure = api::ConfigureRequest {
            config: self.plugin_config(&idx, &name),
            runtime_name: settings.runtime_name.clone(),
            runtime_version: settings.runtime_version.clone(),
            registration_timeout: settings.registration_timeout.as_millis() as i64,
            request_timeout: settings.request_timeout.as_millis() as i64,
            nri_version: NRI_VERSION.to_string(),
        };
        // Requests the plugin sends meanwhile (UpdateContainers) are served once it is registered.
        let configured: Result<api::ConfigureResponse, _> = conn
            .call(
                PLUGIN_SERVICE,
                "Configure",
                &configure,
                settings.request_timeout,
            )
            .await;
        let events = match configured {
            Ok(r) if r.events == 0 => VALID_EVENTS,
            Ok(r) if r.events & !VALID_EVENTS != 0 => {
                tracing::warn!(plugin = %id, index = %idx, name = %name, events = r.events, "NRI: plugin rejected: it subscribed to unknown events");
                conn.shutdown().await;
                return;
            }
            Ok(r) => r.events,
            Err(e) => {
                tracing::warn!(plugin = %id, index = %idx, name = %name, error = %e, "NRI: plugin rejected: its configuration failed");
                conn.shutdown().await;
                return;
            }
        };
        let plugin = Arc::new(Plugin {
            id: id.clone(),
            idx: idx.clone(),
            name: name.clone(),
            events,
            conn: conn.clone(),
            child: child.map(tokio::sync::Mutex::new),
        });
        match self.synchronize(plugin.clone()).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(plugin = %id, index = %idx, name = %name, "NRI: plugin rejected: connections are disabled");
                conn.shutdown().await;
                return;
            }
            Err(e) => {
                tracing::warn!(plugin = %id, index = %idx, name = %name, error = %e, "NRI: plugin rejected: its synchronization failed");
                conn.shutdown().await;
                return;
            }
        }
        tracing::info!(plugin = %id, index = %idx, name = %name, events = format!("{events:#x}"), "NRI: plugin connected");
        loop {
            tokio::select! {
                r = requests.recv() => match r {
                    Some(r) => self.serve(&plugin, r).await,
                    None => break,
                },
                _ = conn.closed() => break,
            }
        }
        if self.remove(&plugin).await {
            tracing::info!(plugin = %id, index = %idx, name = %name, "NRI: plugin disconnected");
        }
    }

    /// Hand the plugin every pod and container, and add it to the list, with no event in between. False when
    /// the plugin is external and connections were disabled since it connected.
    async fn synchronize(&self, plugin: Arc<Plugin>) -> Result<bool, CallError> {
        let mut plugins = self.plugins.write().await;
        let settings = self.settings();
        if plugin.child.is_none() && settings.disable_connections {
            return Ok(false);
        }
        let (pods, containers) = match self.state.get() {
            Some(s) => s.snapshot().await,
            None => (Vec::new(), Vec::new()),
        };
        // Synchronization is the end of a plugin's registration and carries the whole node: it gets the
        // longer of the two timeouts.
        let sync_timeout = settings.registration_timeout.max(settings.request_timeout);
        let batches = sync_batches(pods, containers, SYNC_MESSAGE_LIMIT)
            .map_err(|e| CallError::Write(format!("cannot split the synchronization: {e}")))?;
        let mut updates = Vec::new();
        for req in batches {
            let more = req.more;
            let rsp: api::SynchronizeResponse = plugin
                .conn
                .call(PLUGIN_SERVICE, "Synchronize", &req, sync_timeout)
                .await?;
            // A plugin answers the parts before the last with `more` echoed and no updates (NRI's stub
            // collects them and hands the whole node over with the last one).
            if more && (rsp.more != more || !rsp.update.is_empty()) {
                return Err(CallError::Status {
                    code: conn::CODE_UNKNOWN,
                    message: "plugin does not handle split sync requests".into(),
                });
            }
            updates = rsp.update;
        }
        let pos = plugins
            .iter()
            .position(|p| {
                (p.idx.as_str(), p.id.as_str()) > (plugin.idx.as_str(), plugin.id.as_str())
            })
            .unwrap_or(plugins.len());
        plugins.insert(pos, plugin);
        self.count
            .store(plugins.len(), std::sync::atomic::Ordering::Relaxed);
        drop(plugins);
        self.apply_updates(updates, Vec::new()).await;
        Ok(true)
    }

    async fn serve(&self, plugin: &Plugin, r: IncomingRequest) {
        let answer = if r.service == RUNTIME_SERVICE && r.method == "UpdateContainers" {
            match api::UpdateContainersRequest::decode(r.payload.as_slice()) {
                Ok(req) => {
                    let failed = self.apply_updates(req.update, req.evict).await;
                    Ok(api::UpdateContainersResponse { failed }.encode_to_vec())
                }
                Err(e) => Err((conn::CODE_UNKNOWN, e.to_string())),
            }
        } else {
            Err((
                conn::CODE_UNIMPLEMENTED,
                format!("{}/{} is not served", r.service, r.method),
            ))
        };
        if let Err(e) = plugin.conn.respond(r.stream_id, answer).await {
            tracing::debug!(plugin = %plugin.id, error = %e, "NRI: cannot answer plugin");
        }
    }

    async fn apply_updates(
        &self,
        updates: Vec<api::ContainerUpdate>,
        evictions: Vec<api::ContainerEviction>,
    ) -> Vec<api::ContainerUpdate> {
        let Some(state) = self.state.get() else {
            return updates;
        };
        let failed = if updates.is_empty() {
            Vec::new()
        } else {
            state.update_containers(updates).await
        };
        for e in evictions {
            state.evict_container(e).await;
        }
        failed
    }

    /// Drop `plugin`; true if it was still registered.
    async fn remove(&self, plugin: &Arc<Plugin>) -> bool {
        let mut plugins = self.plugins.write().await;
        let before = plugins.len();
        plugins.retain(|p| !Arc::ptr_eq(p, plugin));
        let removed = plugins.len() != before;
        self.count
            .store(plugins.len(), std::sync::atomic::Ordering::Relaxed);
        drop(plugins);
        plugin.conn.shutdown().await;
        if let Some(child) = &plugin.child {
            let _ = child.lock().await.start_kill();
        }
        removed
    }

    /// Call `method` on every plugin subscribed to `event`, in order. Plugins that time out or went away are
    /// dropped; the others' answers (or errors) are handed to `each` as they come.
    async fn dispatch<Req, Resp>(
        &self,
        event: Event,
        method: &'static str,
        req: &Req,
        mut each: impl FnMut(&str, Result<Resp, CallError>) -> Result<(), NriError>,
    ) -> Result<(), NriError>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        let mut dropped = Vec::new();
        let outcome = {
            let plugins = self.plugins.read().await;
            let mut outcome = Ok(());
            let started = Instant::now();
            let timeout = self.request_timeout();
            for p in plugins.iter().filter(|p| p.subscribed(event)) {
                let answer: Result<Resp, CallError> =
                    p.conn.call(PLUGIN_SERVICE, method, req, timeout).await;
                match answer {
                    Err(e) if e.is_fatal() => {
                        tracing::warn!(plugin = %p.id, index = %p.idx, name = %p.name, event = method, error = %e, "NRI: plugin disconnected: dropped");
                        dropped.push(p.clone());
                    }
                    answer => {
                        if let Err(e) = each(&p.id, answer) {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
            }
            self.observe(method, started.elapsed());
            outcome
        };
        for p in dropped {
            self.remove(&p).await;
        }
        outcome
    }

    fn observe(&self, event: &'static str, took: Duration) {
        if let Some(observer) = self.observer.get() {
            observer(event, took);
        }
    }

    /// An event whose plugin errors are logged, not returned.
    async fn notify<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        event: Event,
        method: &'static str,
        req: &Req,
    ) {
        let _ = self
            .dispatch::<Req, Resp>(event, method, req, |plugin, answer| {
                if let Err(e) = answer {
                    tracing::warn!(plugin, event = method, error = %e, "NRI: plugin failed an event");
                }
                Ok(())
            })
            .await;
    }

    fn failing(event: &'static str) -> impl Fn(&str, CallError) -> NriError {
        move |plugin, e| NriError::Plugin {
            plugin: plugin.to_string(),
            event,
            message: e.to_string(),
        }
    }

    pub async fn run_pod_sandbox(&self, pod: &api::PodSandbox) -> Result<(), NriError> {
        let req = api::RunPodSandboxRequest {
            pod: Some(pod.clone()),
        };
        let fail = Self::failing("RunPodSandbox");
        self.dispatch::<_, api::RunPodSandboxResponse>(
            Event::RunPodSandbox,
            "RunPodSandbox",
            &req,
            |p, a| a.map(|_| ()).map_err(|e| fail(p, e)),
        )
        .await
    }

    /// UpdatePodSandbox: plugins see a pod's new overhead and resources before they are applied; a plugin's
    /// error fails the update.
    pub async fn update_pod_sandbox(
        &self,
        pod: &api::PodSandbox,
        overhead: Option<api::LinuxResources>,
        resources: Option<api::LinuxResources>,
    ) -> Result<(), NriError> {
        let req = api::UpdatePodSandboxRequest {
            pod: Some(pod.clone()),
            overhead_linux_resources: overhead,
            linux_resources: resources,
        };
        let fail = Self::failing("UpdatePodSandbox");
        self.dispatch::<_, api::UpdatePodSandboxResponse>(
            Event::UpdatePodSandbox,
            "UpdatePodSandbox",
            &req,
            |p, a| a.map(|_| ()).map_err(|e| fail(p, e)),
        )
        .await
    }

    pub async fn post_update_pod_sandbox(&self, pod: &api::PodSandbox) {
        let req = api::PostUpdatePodSandboxRequest {
            pod: Some(pod.clone()),
        };
        self.notify::<_, api::PostUpdatePodSandboxResponse>(
            Event::PostUpdatePodSandbox,
            "PostUpdatePodSandbox",
            &req,
        )
        .await
    }

    pub async fn stop_pod_sandbox(&self, pod: &api::PodSandbox) {
        let req = api::StopPodSandboxRequest {
            pod: Some(pod.clone()),
        };
        self.notify::<_, api::StopPodSandboxResponse>(Event::StopPodSandbox, "StopPodSandbox", &req)
            .await
    }

    pub async fn remove_pod_sandbox(&self, pod: &api::PodSandbox) {
        let req = api::RemovePodSandboxRequest {
            pod: Some(pod.clone()),
        };
        self.notify::<_, api::RemovePodSandboxResponse>(
            Event::RemovePodSandbox,
            "RemovePodSandbox",
            &req,
        )
        .await
    }

    /// CreateContainer: every subscribed plugin may adjust `container`; their adjustments come back folded
    /// into one (with who set what), for the spec room to apply. A plugin's error or a conflict between two
    /// plugins fails the create.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: api::Container,
    ) -> Result<adjust::Collected, NriError> {
        let mut collected = adjust::Collected::new(container);
        let mut updates = Vec::new();
        let mut evictions = Vec::new();
        let fail = Self::failing("CreateContainer");
        let started = Instant::now();
        let timeout = self.request_timeout();
        let plugins = self.plugins.read().await;
        let subscribed: Vec<Arc<Plugin>> = plugins
            .iter()
            .filter(|p| p.subscribed(Event::CreateContainer))
            .cloned()
            .collect();
        let mut dropped = Vec::new();
        let mut outcome = Ok(());
        for p in subscribed {
            // Each plugin sees the container as the plugins before it left it.
            let req = api::CreateContainerRequest {
                pod: Some(pod.clone()),
                container: Some(collected.container.clone()),
            };
            let answer: Result<api::CreateContainerResponse, CallError> = p
                .conn
                .call(PLUGIN_SERVICE, "CreateContainer", &req, timeout)
                .await;
            match answer {
                Err(e) if e.is_fatal() => {
                    tracing::warn!(plugin = %p.id, index = %p.idx, name = %p.name, event = "CreateContainer", error = %e, "NRI: plugin disconnected: dropped");
                    dropped.push(p);
                }
                Err(e) => {
                    tracing::info!(plugin = %p.id, index = %p.idx, name = %p.name, error = %e, "NRI: plugin rejected a container");
                    outcome = Err(fail(&p.id, e));
                    break;
                }
                Ok(rsp) => {
                    if let Some(a) = rsp.adjust {
                        if let Err(e) = collected.apply(a, &p.id) {
                            outcome = Err(NriError::Conflict(e));
                            break;
                        }
                    }
                    updates.extend(rsp.update);
                    evictions.extend(rsp.evict);
                }
            }
        }
        drop(plugins);
        self.observe("CreateContainer", started.elapsed());
        for p in dropped {
            self.remove(&p).await;
        }
        outcome?;
        self.apply_updates(updates, evictions).await;
        Ok(collected)
    }

    pub async fn post_create_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        let req = api::PostCreateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        self.notify::<_, api::PostCreateContainerResponse>(
            Event::PostCreateContainer,
            "PostCreateContainer",
            &req,
        )
        .await
    }

    pub async fn start_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        let req = api::StartContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        self.notify::<_, api::StartContainerResponse>(Event::StartContainer, "StartContainer", &req)
            .await
    }

    pub async fn post_start_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        let req = api::PostStartContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        self.notify::<_, api::PostStartContainerResponse>(
            Event::PostStartContainer,
            "PostStartContainer",
            &req,
        )
        .await
    }

    /// UpdateContainer: plugins see the requested resources and may answer with updates (of this container or
    /// others); those are returned for the caller to apply after its own update. A plugin's error fails it.
    pub async fn update_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
        resources: &api::LinuxResources,
    ) -> Result<Vec<api::ContainerUpdate>, NriError> {
        let req = api::UpdateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
            linux_resources: Some(resources.clone()),
        };
        let mut updates = Vec::new();
        let mut evictions = Vec::new();
        let fail = Self::failing("UpdateContainer");
        self.dispatch::<_, api::UpdateContainerResponse>(
            Event::UpdateContainer,
            "UpdateContainer",
            &req,
            |p, a| {
                let rsp = a.map_err(|e| fail(p, e))?;
                updates.extend(rsp.update);
                evictions.extend(rsp.evict);
                Ok(())
            },
        )
        .await?;
        if !evictions.is_empty() {
            self.apply_updates(Vec::new(), evictions).await;
        }
        Ok(updates)
    }

    pub async fn post_update_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        let req = api::PostUpdateContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        self.notify::<_, api::PostUpdateContainerResponse>(
            Event::PostUpdateContainer,
            "PostUpdateContainer",
            &req,
        )
        .await
    }

    /// StopContainer, once per container whether it was stopped or exited by itself.
    pub async fn stop_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        let first = self
            .stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(container.id.clone());
        if !first {
            return;
        }
        let req = api::StopContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        let mut updates = Vec::new();
        let _ = self
            .dispatch::<_, api::StopContainerResponse>(Event::StopContainer, "StopContainer", &req, |p, a| {
                match a {
                    Ok(rsp) => updates.extend(rsp.update),
                    Err(e) => tracing::warn!(plugin = p, event = "StopContainer", error = %e, "NRI: plugin failed an event"),
                }
                Ok(())
            })
            .await;
        if !updates.is_empty() {
            self.apply_updates(updates, Vec::new()).await;
        }
    }

    pub async fn remove_container(&self, pod: &api::PodSandbox, container: &api::Container) {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&container.id);
        let req = api::RemoveContainerRequest {
            pod: Some(pod.clone()),
            container: Some(container.clone()),
        };
        self.notify::<_, api::RemoveContainerResponse>(
            Event::RemoveContainer,
            "RemoveContainer",
            &req,
        )
        .await
    }

    /// Close every plugin connection (the daemon is stopping); pre-installed plugins are killed.
    pub async fn shutdown(&self) {
        let plugins: Vec<_> = self.plugins.read().await.clone();
        for p in plugins {
            self.remove(&p).await;
        }
        if let Some(task) = lock(&self.accepting).take() {
            task.abort();
            let _ = std::fs::remove_file(self.settings().socket_path);
        }
    }
}

/// The most bytes one SynchronizeRequest may encode to: ttrpc's limit on a message, less room for the
/// request envelope around it (service, method, timeout).
const SYNC_MESSAGE_LIMIT: usize = wire::MAX_TTRPC_MESSAGE - 4096;

/// The node's pods and containers as SynchronizeRequests of at most `limit` encoded bytes each, in order
/// (pods first), `more` set on all but the last. One request, maybe empty, when everything fits.
fn sync_batches(
    pods: Vec<api::PodSandbox>,
    containers: Vec<api::Container>,
    limit: usize,
) -> Result<Vec<api::SynchronizeRequest>, String> {
    // A repeated message field costs its tag (one byte here), its length and the message.
    fn field_len(len: usize) -> usize {
        1 + prost::length_delimiter_len(len) + len
    }
    let mut batches = vec![api::SynchronizeRequest::default()];
    let mut used = 0;
    let mut fits = |len: usize, what: &str, id: &str| -> Result<bool, String> {
        let len = field_len(len);
        if len > limit {
            return Err(format!("{what} {id} alone is {len} bytes, over {limit}"));
        }
        let fits = used + len <= limit;
        used = if fits { used + len } else { len };
        Ok(fits)
    };
    for pod in pods {
        if !fits(pod.encoded_len(), "pod", &pod.id)? {
            batches.push(api::SynchronizeRequest::default());
        }
        batches.last_mut().expect("one batch").pods.push(pod);
    }
    for container in containers {
        if !fits(container.encoded_len(), "container", &container.id)? {
            batches.push(api::SynchronizeRequest::default());
        }
        batches
            .last_mut()
            .expect("one batch")
            .containers
            .push(container);
    }
    let last = batches.len() - 1;
    for b in &mut batches[..last] {
        b.more = true;
    }
    Ok(batches)
}

struct Launched {
    idx: String,
    name: String,
    child: tokio::process::Child,
    _running: Running,
}

/// A pre-installed plugin's place in [`Nri::running`], given up when its connection is done.
struct Running {
    nri: Weak<Nri>,
    file: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(nri) = self.nri.upgrade() {
            lock(&nri.running).remove(&self.file);
        }
    }
}

/// A reload checked and ready to go in force ([`Nri::prepare_reload`]).
pub struct PreparedReload {
    new: Settings,
    /// The socket, bound when connections are enabled again.
    listener: Option<std::os::unix::net::UnixListener>,
}

impl Drop for PreparedReload {
    fn drop(&mut self) {
        // Not taken by Nri::reload: the reload was refused after all, and the socket goes again.
        if self.listener.take().is_some() {
            let _ = std::fs::remove_file(&self.new.socket_path);
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bind the plugin socket at `path`, replacing a stale socket file but never one another process serves.
fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, NriError> {
    let io = |source| NriError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A socket something still answers on belongs to another runtime's NRI: never take it over.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process serves NRI on this socket",
        )));
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    let listener = std::os::unix::net::UnixListener::bind(path).map_err(io)?;
    listener.set_nonblocking(true).map_err(io)?;
    Ok(listener)
}

async fn accept_loop(nri: Weak<Nri>, listener: UnixListener) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "NRI: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(nri) = nri.upgrade() else { return };
        tokio::spawn(nri.adopt(stream, None));
    }
}

/// Two ASCII digits, as NRI requires of a plugin index.
fn valid_index(idx: &str) -> bool {
    idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit())
}

/// `10-logger` -> ("10", "logger").
fn split_plugin_name(file: &str) -> Option<(&str, &str)> {
    let (idx, name) = file.split_once('-')?;
    (valid_index(idx) && !name.is_empty()).then_some((idx, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bits_follow_the_proto_numbering() {
        assert_eq!(event_bit(Event::RunPodSandbox), 1);
        assert_eq!(event_bit(Event::CreateContainer), 1 << 3);
        assert_eq!(VALID_EVENTS, 0x3fff);
    }

    fn settings(dir: &Path) -> Settings {
        Settings {
            socket_path: dir.join("nri.sock"),
            plugin_path: dir.join("plugins"),
            plugin_config_path: dir.join("conf.d"),
            disable_connections: false,
            registration_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(2),
            runtime_name: "ferrio".into(),
            runtime_version: "test".into(),
        }
    }

    struct Empty;

    impl NodeState for Empty {
        fn snapshot(&self) -> BoxFuture<'_, (Vec<api::PodSandbox>, Vec<api::Container>)> {
            Box::pin(async { (Vec::new(), Vec::new()) })
        }
        fn update_containers(
            &self,
            updates: Vec<api::ContainerUpdate>,
        ) -> BoxFuture<'_, Vec<api::ContainerUpdate>> {
            Box::pin(async move { updates })
        }
        fn evict_container(&self, _: api::ContainerEviction) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[tokio::test]
    async fn a_socket_another_process_serves_is_not_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let first = Nri::new(settings(dir.path()));
        first.start(Arc::new(Empty)).await.unwrap();
        let second = Nri::new(settings(dir.path()));
        let err = second.start(Arc::new(Empty)).await.unwrap_err();
        assert!(
            matches!(err, NriError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::AddrInUse),
            "{err}"
        );
        // A stale socket file (nobody listening) is replaced.
        first.shutdown().await;
        std::os::unix::net::UnixListener::bind(dir.path().join("nri.sock"))
            .map(drop)
            .unwrap();
        second.start(Arc::new(Empty)).await.unwrap();
    }

    fn connects(path: &Path) -> bool {
        std::os::unix::net::UnixStream::connect(path).is_ok()
    }

    #[tokio::test]
    async fn a_reload_closes_and_reopens_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let nri = Nri::new(settings(dir.path()));
        nri.start(Arc::new(Empty)).await.unwrap();
        let socket = dir.path().join("nri.sock");
        assert!(connects(&socket));

        let mut off = settings(dir.path());
        off.disable_connections = true;
        off.request_timeout = Duration::from_millis(300);
        nri.reload(nri.prepare_reload(off.clone()).unwrap());
        assert!(
            !socket.exists(),
            "the socket goes with connections disabled"
        );
        assert_eq!(nri.request_timeout(), Duration::from_millis(300));

        // Another process took the path meanwhile: enabling connections again is refused, nothing changes.
        let squatter = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = nri
            .prepare_reload(settings(dir.path()))
            .err()
            .expect("a served socket is not taken over");
        assert!(err.to_string().contains("another process"), "{err}");
        assert!(nri.settings().disable_connections);
        drop(squatter);

        // A prepared reload that is dropped (the reload was refused elsewhere) closes its socket again.
        drop(nri.prepare_reload(settings(dir.path())).unwrap());
        assert!(!connects(&socket));

        nri.reload(nri.prepare_reload(settings(dir.path())).unwrap());
        assert!(connects(&socket), "connections are accepted again");
        assert!(!nri.settings().disable_connections);
        nri.shutdown().await;
        assert!(!socket.exists());
    }

    #[tokio::test]
    async fn a_reload_starts_only_the_plugins_not_running_yet() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let log = dir.path().join("started");
        // A plugin that never registers: it stays running until the registration timeout, or quits at once.
        let install = |file: &str, then: &str| {
            let path = plugins.join(file);
            std::fs::write(
                &path,
                format!(
                    "#!/bin/sh\necho $NRI_PLUGIN_IDX-$NRI_PLUGIN_NAME >> {}\n{then}\n",
                    log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        let started = || -> Vec<String> {
            let mut lines: Vec<String> = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            lines.sort();
            lines
        };
        let running = |nri: &Nri| -> Vec<String> {
            let mut r: Vec<String> = lock(&nri.running).iter().cloned().collect();
            r.sort();
            r
        };
        async fn until(mut done: impl FnMut() -> bool) {
            for _ in 0..200 {
                if done() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        install("10-first", "exec sleep 30");
        let mut s = settings(dir.path());
        s.disable_connections = true;
        s.registration_timeout = Duration::from_secs(20);
        let nri = Nri::new(s.clone());
        nri.start(Arc::new(Empty)).await.unwrap();
        until(|| started().len() == 1).await;
        assert_eq!(started(), ["10-first"]);

        install("20-second", "exit 0");
        nri.reload(nri.prepare_reload(s.clone()).unwrap());
        until(|| started().len() == 2).await;
        assert_eq!(started(), ["10-first", "20-second"]);
        // The one that quit is no longer running; the other still is, and is not started twice.
        until(|| running(&nri) == ["10-first"]).await;
        assert_eq!(running(&nri), ["10-first"]);
        nri.reload(nri.prepare_reload(s.clone()).unwrap());
        until(|| started().len() == 3).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            started(),
            ["10-first", "20-second", "20-second"],
            "a reload starts the plugin that is gone, not the one that runs"
        );
        nri.shutdown().await;
    }

    fn pod(id: &str) -> api::PodSandbox {
        api::PodSandbox {
            id: id.into(),
            annotations: [("a".to_string(), "x".repeat(100))].into(),
            ..Default::default()
        }
    }

    fn ctr(id: &str) -> api::Container {
        api::Container {
            id: id.into(),
            args: vec!["y".repeat(100)],
            ..Default::default()
        }
    }

    #[test]
    fn synchronization_is_split_under_the_message_limit_in_order() {
        let pods: Vec<_> = (0..10).map(|i| pod(&format!("p{i}"))).collect();
        let ctrs: Vec<_> = (0..25).map(|i| ctr(&format!("c{i}"))).collect();
        let limit = 4 * pods[0].encoded_len().max(ctrs[0].encoded_len()) + 20;
        let batches = sync_batches(pods.clone(), ctrs.clone(), limit).unwrap();
        assert!(batches.len() > 5, "{}", batches.len());
        for (i, b) in batches.iter().enumerate() {
            assert!(b.encoded_len() <= limit, "batch {i}: {}", b.encoded_len());
            assert_eq!(b.more, i + 1 < batches.len(), "batch {i}");
        }
        let got_pods: Vec<_> = batches.iter().flat_map(|b| b.pods.clone()).collect();
        let got_ctrs: Vec<_> = batches.iter().flat_map(|b| b.containers.clone()).collect();
        assert_eq!(got_pods, pods);
        assert_eq!(got_ctrs, ctrs);
        // Everything in one message when it fits, and one (empty) message for an empty node.
        let one = sync_batches(pods, ctrs, SYNC_MESSAGE_LIMIT).unwrap();
        assert_eq!(one.len(), 1);
        assert!(!one[0].more);
        assert_eq!(sync_batches(vec![], vec![], limit).unwrap().len(), 1);
        // An object that alone exceeds the limit cannot be sent.
        let err = sync_batches(vec![pod("huge")], vec![], 50).unwrap_err();
        assert!(err.contains("huge"), "{err}");
    }

    /// A node of many containers: a plugin is synchronized in several messages (none over ttrpc's limit),
    /// collects them as NRI's stub does, and then sees pod updates.
    #[tokio::test]
    async fn a_large_node_is_synchronized_in_parts_and_pod_updates_reach_plugins() {
        struct Many;
        impl NodeState for Many {
            fn snapshot(&self) -> BoxFuture<'_, (Vec<api::PodSandbox>, Vec<api::Container>)> {
                Box::pin(async {
                    let big = |i: usize| api::Container {
                        id: format!("c{i}"),
                        annotations: [("big".to_string(), "z".repeat(64 << 10))].into(),
                        ..Default::default()
                    };
                    (vec![pod("p0")], (0..100).map(big).collect())
                })
            }
            fn update_containers(
                &self,
                updates: Vec<api::ContainerUpdate>,
            ) -> BoxFuture<'_, Vec<api::ContainerUpdate>> {
                Box::pin(async move { updates })
            }
            fn evict_container(&self, _: api::ContainerEviction) -> BoxFuture<'_, ()> {
                Box::pin(async {})
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let nri = Nri::new(settings(dir.path()));
        nri.start(Arc::new(Many)).await.unwrap();
        let stream = UnixStream::connect(dir.path().join("nri.sock"))
            .await
            .unwrap();
        let (plugin, mut requests) = Connection::new(
            stream,
            conn::RUNTIME_SERVICE_CONN,
            conn::PLUGIN_SERVICE_CONN,
        );
        let seen = Arc::new(std::sync::Mutex::new(Vec::<(String, usize, bool)>::new()));
        let server = {
            let (plugin, seen) = (plugin.clone(), seen.clone());
            tokio::spawn(async move {
                while let Some(r) = requests.recv().await {
                    let answer = match r.method.as_str() {
                        "Configure" => api::ConfigureResponse {
                            events: event_bit(Event::UpdatePodSandbox)
                                | event_bit(Event::PostUpdatePodSandbox),
                        }
                        .encode_to_vec(),
                        "Synchronize" => {
                            let req =
                                api::SynchronizeRequest::decode(r.payload.as_slice()).unwrap();
                            seen.lock().unwrap().push((
                                "Synchronize".into(),
                                req.pods.len() + req.containers.len(),
                                req.more,
                            ));
                            api::SynchronizeResponse {
                                more: req.more,
                                ..Default::default()
                            }
                            .encode_to_vec()
                        }
                        "UpdatePodSandbox" => {
                            let req =
                                api::UpdatePodSandboxRequest::decode(r.payload.as_slice()).unwrap();
                            let limit = req
                                .linux_resources
                                .and_then(|l| l.memory)
                                .and_then(|m| m.limit)
                                .map(|l| l.value as usize)
                                .unwrap_or_default();
                            seen.lock()
                                .unwrap()
                                .push(("UpdatePodSandbox".into(), limit, false));
                            Vec::new()
                        }
                        other => {
                            seen.lock().unwrap().push((other.into(), 0, false));
                            Vec::new()
                        }
                    };
                    plugin.respond(r.stream_id, Ok(answer)).await.unwrap();
                }
            })
        };
        let register = api::RegisterPluginRequest {
            plugin_name: "many".into(),
            plugin_idx: "10".into(),
            nri_version: NRI_VERSION.into(),
        };
        let _: api::Empty = plugin
            .call(
                RUNTIME_SERVICE,
                "RegisterPlugin",
                &register,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        for _ in 0..200 {
            if nri.plugin_count() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(nri.plugin_count(), 1, "the plugin is synchronized");
        let syncs: Vec<_> = seen.lock().unwrap().clone();
        assert!(syncs.len() > 1, "6.4 MB of containers in one message");
        assert_eq!(syncs.iter().map(|s| s.1).sum::<usize>(), 101);
        assert!(syncs[..syncs.len() - 1].iter().all(|s| s.2));
        assert!(!syncs.last().unwrap().2);

        seen.lock().unwrap().clear();
        let resources = api::LinuxResources {
            memory: Some(api::LinuxMemory {
                limit: Some(api::OptionalInt64 { value: 1 << 20 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        nri.update_pod_sandbox(&pod("p0"), None, Some(resources))
            .await
            .unwrap();
        nri.post_update_pod_sandbox(&pod("p0")).await;
        assert_eq!(
            *seen.lock().unwrap(),
            [
                ("UpdatePodSandbox".to_string(), 1 << 20, false),
                ("PostUpdatePodSandbox".to_string(), 0, false)
            ]
        );
        nri.shutdown().await;
        server.abort();
    }

    #[test]
    fn plugin_file_names_need_a_two_digit_index() {
        assert_eq!(split_plugin_name("10-logger"), Some(("10", "logger")));
        assert_eq!(split_plugin_name("05-a-b"), Some(("05", "a-b")));
        assert_eq!(split_plugin_name("1-x"), None);
        assert_eq!(split_plugin_name("logger"), None);
        assert_eq!(split_plugin_name("10-"), None);
    }
}
