//! CreateContainer / StartContainer / StopContainer / RemoveContainer and recovery.
//!
//! Status is derived from facts (created, started_at, finished_at) rather than a stored state
//! enum, as containerd does: a container is Running once started and until it has finished.
//!
//! Records are written with [`Durability::Crash`]: atomic, so a daemon killed at any instant
//! finds every record whole, but not fsynced. Everything a record says is about processes of
//! this boot: after a reboot the boot-id check marks them exited, and a record that a power loss
//! took away leaves only its overlay directory behind, which [`Containers::recover`] sweeps.

use crate::clock::now_ns;
use crate::context::{NodeContext, RootfsMounts};
use crate::image::ImageStore;
use crate::monitor;
use crate::oci::half_created::{self, HalfCreated, Patience};
use crate::oci::Runtime;
use crate::rollback::Rollback;
use crate::sandbox::lifecycle::{Pods, Sandbox, SandboxError, SandboxState};
use crate::spec;
use crate::state::create_once::CreateOnce;
use crate::state::names::Names;
use crate::state::{Durability, Record, StateError, Table};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// After SIGKILL, how long to wait for the monitor to report the exit.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long a failed StartContainer waits for the monitor it launched to be gone before it deletes
/// what the runtime's run may have made.
const MONITOR_GONE_WAIT: Duration = Duration::from_secs(10);

/// The annotation kubelet puts the container's terminationMessagePath in.
pub const TERMINATION_MESSAGE_PATH: &str = "io.kubernetes.container.terminationMessagePath";

/// The most of a termination message kept (kubelet's own limit).
const TERMINATION_MESSAGE_MAX: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("container {0:?} not found")]
    NotFound(String),
    #[error("container {id}: {reason}")]
    WrongState { id: String, reason: String },
    #[error("image {0:?} not found: pull it first")]
    ImageNotFound(String),
    /// SIGKILL was sent and the monitor still runs, yet no exit came within `waited`.
    #[error("container {id}: did not exit after SIGKILL")]
    KillTimeout { id: String, waited: Duration },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    #[error(transparent)]
    AppArmor(#[from] crate::oci::apparmor::AppArmorError),
    #[error(transparent)]
    Monitor(#[from] monitor::MonitorError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    #[error("container {id}: {source}")]
    Attach {
        id: String,
        source: crate::monitor::attach::AttachError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The caller's spec edit refused the container.
    #[error("container {id}: {reason}")]
    Refused { id: String, reason: String },
}

/// Names that removed directories get until they are deleted (in the same parent directory, so
/// that moving them there is a rename).
const TRASH_PREFIX: &str = ".trash-";

/// Unmounts the rootfs in `dir` and leaves the directories in place.
fn unmount_overlay(rootfs: &dyn RootfsMounts, dir: &Path) -> Result<(), ContainerError> {
    rootfs.unmount(dir).map_err(|source| ContainerError::Io {
        path: dir.join("merged"),
        source,
    })
}

/// Renames `dir` to a trash entry beside it; `None` when there is no `dir`.
fn move_to_trash(rootfs: &dyn RootfsMounts, dir: &Path) -> Result<Option<PathBuf>, ContainerError> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let trash = dir.with_file_name(format!("{TRASH_PREFIX}{name}"));
    let mut moved = std::fs::rename(dir, &trash);
    if moved.is_err() && dir.exists() && trash.exists() {
        // What a daemon killed while deleting left in the way.
        empty_trash(rootfs, &trash);
        moved = std::fs::rename(dir, &trash);
    }
    match moved {
        Ok(()) => Ok(Some(trash)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ContainerError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Deletes a trash entry (unmounting first whatever may still be mounted in it).
fn empty_trash(rootfs: &dyn RootfsMounts, trash: &Path) {
    if let Err(e) = rootfs.remove(trash) {
        tracing::warn!(path = %trash.display(), error = %e, "cannot delete a removed directory");
    }
}

fn join_err(path: &Path) -> impl FnOnce(tokio::task::JoinError) -> ContainerError + '_ {
    move |e| ContainerError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub name_key: String,
    /// The CRI ContainerConfig as JSON, for ContainerStatus's verbose info only: what the
    /// daemon reads back is in `request` and the fields beside it.
    pub config: serde_json::Value,
    /// What the daemon reads back from the request, decided at create.
    pub request: super::record::ContainerRequestFacts,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The image as the request named it.
    pub image_ref: String,
    /// `sha256:...` of the resolved image.
    pub image_id: String,
    /// Ids of the images mounted as image volumes, in mount order (see `image_volume`).
    #[serde(default)]
    pub image_volumes: Vec<String>,
    /// Absolute log path; `None` when the pod has no log directory.
    pub log_path: Option<PathBuf>,
    pub created_at: i64,
    pub cgroups_path: String,
    /// Signal number StopContainer sends first (the config's stop_signal, else the image's STOPSIGNAL,
    /// else SIGTERM).
    pub stop_signal: i32,
    /// Where the container writes its termination message, read into the status at exit.
    #[serde(default)]
    pub termination_message: Option<MessageFile>,
}

/// The termination-message file as the daemon reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageFile {
    /// A host file kubelet mounted at the path (kubelet creates one per container).
    Host(PathBuf),
    /// A file in the container's rootfs, read without following the container's symlinks.
    InRootfs { rootfs: PathBuf, path: PathBuf },
}

impl MessageFile {
    /// The message (at most 4 KiB, lossy UTF-8, trimmed of trailing whitespace); empty when
    /// there is none.
    pub fn read(&self) -> String {
        use std::io::Read;
        let file = match self {
            MessageFile::Host(p) => std::fs::File::open(p).ok(),
            MessageFile::InRootfs { rootfs, path } => {
                crate::sys::open_beneath(rootfs, path, crate::sys::Create::Nothing)
                    .ok()
                    .map(std::fs::File::from)
            }
        };
        let Some(file) = file else {
            return String::new();
        };
        // Only a regular file: a FIFO or device must not hang or flood the daemon.
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return String::new();
        }
        let mut buf = Vec::new();
        let _ = file.take(TERMINATION_MESSAGE_MAX).read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).trim_end().to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ContainerStatus {
    /// The OCI runtime has created it (monitor running).
    pub created: bool,
    pub pid: i32,
    /// The container's monitor, recorded as soon as it is up (before the runtime's create ends).
    pub monitor_pid: i32,
    /// The monitor's start time (field 22 of its `/proc/<pid>/stat`); 0 in records written
    /// before it was kept, whose monitor is then never signalled.
    #[serde(default)]
    pub monitor_start_time: u64,
    /// The runtime has deleted the exited container (its state and cgroup are gone), so a
    /// remove need not ask it again.
    #[serde(default)]
    pub runtime_deleted: bool,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub oom_killed: bool,
    /// Why the exit was inferred rather than reported (e.g. monitor vanished).
    pub message: String,
    /// The resources last applied by UpdateContainerResources; `None` while the create
    /// request's still hold.
    #[serde(default)]
    pub resources: Option<super::record::Resources>,
    /// The user the process runs as, resolved against the image when the runtime created it;
    /// `None` before that, and in records of containers created before it was kept.
    #[serde(default)]
    pub user: Option<super::record::ProcessUser>,
    /// The cgroup an NRI plugin's adjustment put the container in; `None`: the metadata's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    /// Created without the runtime: its bundle is ready and StartContainer creates and starts
    /// it with one `run` (the handler's `defer_create`); false once the runtime has it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deferred: bool,
}

/// The CRI-visible state, derived from the facts in the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Creating,
    Created,
    Running,
    Exited,
}

impl ContainerStatus {
    /// The container's monitor as a process handle.
    pub fn monitor(&self) -> monitor::ProcessHandle {
        monitor::ProcessHandle {
            pid: self.monitor_pid,
            start_time: self.monitor_start_time,
        }
    }

    /// Created without the runtime and no start under way: nothing of it runs, and the runtime
    /// does not know it.
    pub fn awaiting_run(&self) -> bool {
        self.deferred && !self.monitor().is_set()
    }

    pub fn state(&self) -> ContainerState {
        if self.finished_at > 0 {
            ContainerState::Exited
        } else if self.started_at > 0 {
            ContainerState::Running
        } else if self.created {
            ContainerState::Created
        } else {
            ContainerState::Creating
        }
    }

    /// CRI's reason for an exited container.
    pub fn reason(&self) -> &'static str {
        match self.state() {
            ContainerState::Exited if self.oom_killed => "OOMKilled",
            ContainerState::Exited if self.exit_code == 0 => "Completed",
            ContainerState::Exited => "Error",
            _ => "",
        }
    }
}

pub type Container = Record<ContainerMeta, ContainerStatus>;

/// Says how recording a start that happened while the daemon was down went.
fn log_adopted_start(id: &str, recorded: Result<(), crate::state::StateError>) {
    match recorded {
        Ok(()) => tracing::info!(id = %id, "container started while the daemon went down"),
        Err(e) => tracing::warn!(id = %id, error = %e, "cannot record an interrupted start"),
    }
}

impl Container {
    /// The cgroup the container runs in: the one NRI plugins chose, else the one made at create.
    pub fn cgroups_path(&self) -> String {
        self.peek(|s| s.cgroups_path.clone())
            .unwrap_or_else(|| self.meta.cgroups_path.clone())
    }
}

/// Where the termination message of a container with these `annotations` and `mounts` will
/// be, given its overlay dir: kubelet's mount at the annotated path if there is one, else the
/// path in the rootfs.
fn termination_message(
    annotations: &BTreeMap<String, String>,
    mounts: &[super::record::Mount],
    overlay_dir: &Path,
) -> Option<MessageFile> {
    let path = annotations.get(TERMINATION_MESSAGE_PATH)?;
    if path.is_empty() {
        return None;
    }
    let clean = |p: &str| p.trim_end_matches('/').to_string();
    if let Some(m) = mounts
        .iter()
        .find(|m| clean(&m.container_path) == clean(path))
    {
        return Some(MessageFile::Host(PathBuf::from(&m.host_path)));
    }
    Some(MessageFile::InRootfs {
        rootfs: overlay_dir.join("merged"),
        path: PathBuf::from(path),
    })
}

/// Makes in the fresh rootfs what the container expects to find: the termination-message file
/// (when no mount provides it) and the image's VOLUME directories (empty, where no mount covers
/// them). Nothing follows a symlink of the image's.
async fn prepare_rootfs(
    rootfs: &Path,
    annotations: &BTreeMap<String, String>,
    mounts: &[super::record::Mount],
    volumes: &[String],
) -> Result<(), ContainerError> {
    let mounted: Vec<String> = mounts
        .iter()
        .map(|m| m.container_path.trim_end_matches('/').to_string())
        .collect();
    let mut todo: Vec<(PathBuf, crate::sys::Create)> = volumes
        .iter()
        .filter(|v| !mounted.contains(&v.trim_end_matches('/').to_string()))
        .map(|v| (PathBuf::from(v), crate::sys::Create::Dir))
        .collect();
    if let Some(p) = annotations.get(TERMINATION_MESSAGE_PATH) {
        if !p.is_empty() && !mounted.contains(&p.trim_end_matches('/').to_string()) {
            todo.push((PathBuf::from(p), crate::sys::Create::File));
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let root = rootfs.to_path_buf();
    tokio::task::spawn_blocking(move || {
        for (path, kind) in todo {
            crate::sys::open_beneath(&root, &path, kind).map_err(|source| ContainerError::Io {
                path: root.join(path.strip_prefix("/").unwrap_or(&path)),
                source,
            })?;
        }
        Ok(())
    })
    .await
    .map_err(join_err(rootfs))?
}

/// Writes the bundle's config.json atomically (runc never reads half a file) without fsync: the
/// bundle lives in the runroot, which does not outlive a reboot anyway, and a crash before the
/// record says "created" reaps it.
pub(super) async fn write_volatile_bundle(
    bundle: &Path,
    spec: &oci_spec::runtime::Spec,
) -> Result<(), ContainerError> {
    let b = bundle.to_path_buf();
    let json = serde_json::to_vec(spec).map_err(|e| ContainerError::Io {
        path: b.clone(),
        source: std::io::Error::other(e),
    })?;
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&b).map_err(|source| ContainerError::Io {
            path: b.clone(),
            source,
        })?;
        crate::state::write_atomic(&b.join("config.json"), &json, Durability::Crash)?;
        Ok(())
    })
    .await
    .map_err(join_err(bundle))?
}

/// Parse `SIGTERM`, `TERM` or `15`.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|s| s as i32)
}

/// The containers of this node.
pub struct Containers {
    /// Config, host features, runtimes, paths and the monitor launcher, shared with pods.
    pub(crate) context: Arc<NodeContext>,
    /// Only to look sandboxes up.
    pub(super) pods: Arc<Pods>,
    pub(super) images: Arc<ImageStore>,
    table: Table<ContainerMeta, ContainerStatus>,
    names: Names,
    /// One create per name key at a time, so a retry waits for the first attempt.
    creating: CreateOnce,
    /// The CDI spec files of `runtime.cdi_spec_dirs`, parsed again when they change.
    cdi: spec::CdiSpecDirs,
    /// The OCI hook files of `runtime.hooks_dir`, parsed again when they change.
    hooks: spec::HookDirs,
    /// Deferred containers whose StartContainer runs now: a second one is refused rather than
    /// racing the first's `run`.
    starting: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// A CreateContainer request checked against its sandbox and the image store, before any
/// attempt makes anything.
struct Checked {
    /// `<name>_<sandbox name key>_<attempt>`: what a retry of the same request shares.
    name_key: String,
    name: String,
    attempt: u32,
    sandbox: Arc<Sandbox>,
    image: crate::image::ImageInfo,
    image_ref: String,
    image_volumes: Vec<String>,
    stop_signal: i32,
}

/// Everything CreateContainer needs from the request, in this crate's terms: the server
/// converts the CRI message.
pub struct CreateRequest<'a> {
    pub sandbox_id: &'a str,
    /// `metadata`; `None` when the request had none (refused).
    pub metadata: Option<ContainerName>,
    /// The image the request names; empty when it names none (refused).
    pub image: String,
    /// The mounts and resources the record keeps.
    pub facts: super::record::ContainerRequestFacts,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// `log_path`: below the pod's log directory, or absolute when the pod has none; empty =
    /// no log.
    pub log_path: String,
    pub stop_signal: super::stop_signal::RequestedSignal,
    /// The request as JSON, for verbose ContainerStatus only.
    pub raw: serde_json::Value,
    /// The request as the spec room's entry points read it.
    pub spec: spec::ContainerRequest<'a>,
    /// A last edit of the spec by the caller (NRI plugins), after every other step.
    pub adjust_spec: Option<&'a dyn SpecAdjust>,
}

/// A container's `metadata`: its name in the pod and kubelet's attempt counter.
#[derive(Debug, Clone, Default)]
pub struct ContainerName {
    pub name: String,
    pub attempt: u32,
}

/// A last edit of a container's OCI spec before its bundle is written; it may refuse the create, which then
/// rolls back like any other failed step.
pub trait SpecAdjust: Send + Sync {
    /// `cdi` resolves the CDI devices the edit asks for, as the CDI step resolves the request's.
    fn adjust<'a>(
        &'a self,
        id: &'a str,
        spec: oci_spec::runtime::Spec,
        cdi: spec::NriCdi<'a>,
    ) -> futures::future::BoxFuture<'a, Result<oci_spec::runtime::Spec, String>>;

    /// The container whose spec this edited is created. Called once per container, inside the
    /// single-flight create: a retry that gets an earlier attempt's container does not call it again.
    fn created<'a>(&'a self, _container: &'a Arc<Container>) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

impl Containers {
    pub fn new(
        context: Arc<NodeContext>,
        pods: Arc<Pods>,
        images: Arc<ImageStore>,
        table: Table<ContainerMeta, ContainerStatus>,
    ) -> Self {
        let names = Names::default();
        for c in table.list() {
            let _ = names.reserve(&c.meta.name_key, &c.id);
        }
        Containers {
            context,
            pods,
            images,
            table,
            names,
            creating: CreateOnce::default(),
            cdi: spec::CdiSpecDirs::default(),
            hooks: spec::HookDirs::default(),
            starting: Default::default(),
        }
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.context.layout.container(id).run_dir
    }

    fn overlay_dir(&self, id: &str) -> PathBuf {
        self.context.layout.container(id).overlay_dir
    }

    fn exit_file(&self, id: &str) -> PathBuf {
        self.context.layout.container(id).exit_file()
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>, ContainerError> {
        self.table
            .get(id)?
            .ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    /// The container with this id (or unique id prefix), if there is one: for the calls where
    /// an unknown container is not an error (Stop and Remove are idempotent).
    pub fn find(&self, id: &str) -> Result<Option<Arc<Container>>, ContainerError> {
        Ok(self.table.get(id)?)
    }

    /// Every container record, those still being created included.
    pub fn list(&self) -> Vec<Arc<Container>> {
        self.table.list()
    }

    /// Every insert, update and removal of a container record from now on (see
    /// [`Table::subscribe`]).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::state::Change> {
        self.table.subscribe()
    }

    /// After a reboot no container process survived: a container recorded created or running
    /// exited (code 255, a message saying why), so that Stop/Remove reclaim what it still holds
    /// without waiting for a process that is gone.
    pub async fn mark_exited_after_reboot(&self) {
        // Never 0: a finished_at of 0 means "still running".
        let now = crate::clock::now_ns().max(1);
        for c in self.table.list() {
            if !matches!(
                c.status().state(),
                ContainerState::Created | ContainerState::Running
            ) {
                continue;
            }
            let r = c
                .update(|s| {
                    s.finished_at = now;
                    s.exit_code = 255;
                    s.message = "the machine rebooted while the container was running".into();
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(id = %c.id, error = %e, "cannot mark container exited after reboot");
            }
        }
    }

    /// The containers of one sandbox.
    pub fn of_sandbox(&self, sandbox_id: &str) -> Vec<Arc<Container>> {
        self.table
            .list()
            .into_iter()
            .filter(|c| c.meta.sandbox_id == sandbox_id)
            .collect()
    }

    /// The init pid of `target`, whose pid namespace a TARGET container joins: a running
    /// container of the same pod (`kubectl debug --target` names one of the pod's containers).
    fn pid_namespace_target(&self, sandbox_id: &str, target: &str) -> Result<i32, ContainerError> {
        let c = self.get(target)?;
        if c.meta.sandbox_id != sandbox_id {
            return Err(ContainerError::Invalid {
                field: "linux.security_context.namespace_options.target_id".into(),
                reason: format!("container {target} belongs to another pod sandbox"),
            });
        }
        let st = c.status();
        if st.state() != ContainerState::Running || st.pid <= 0 {
            return Err(ContainerError::WrongState {
                id: target.to_string(),
                reason: "is not running: a TARGET pid namespace joins a running container".into(),
            });
        }
        Ok(st.pid)
    }

    pub(super) fn runtime_for(
        &self,
        sandbox: &Sandbox,
    ) -> Result<Arc<dyn Runtime>, ContainerError> {
        self.context
            .runtime_of(&sandbox.id, &sandbox.meta.runtime_handler)
            .map_err(|e| SandboxError::from(e).into())
    }

    /// CreateContainer. A retry of the same name key returns the container already made.
    pub async fn create(
        self: &Arc<Self>,
        req: CreateRequest<'_>,
    ) -> Result<String, ContainerError> {
        let sandbox = self.pods.get(req.sandbox_id)?;
        if sandbox.status().state != SandboxState::Ready {
            return Err(SandboxError::NotReady {
                id: sandbox.id.clone(),
            }
            .into());
        }
        let md = req
            .metadata
            .as_ref()
            .ok_or_else(|| ContainerError::Invalid {
                field: "metadata".into(),
                reason: "container config has no metadata".into(),
            })?;
        if md.name.is_empty() {
            return Err(ContainerError::Invalid {
                field: "metadata.name".into(),
                reason: "must not be empty".into(),
            });
        }
        let image_ref = req.image.clone();
        if image_ref.is_empty() {
            return Err(ContainerError::Invalid {
                field: "image".into(),
                reason: "must name an image".into(),
            });
        }
        let image = self
            .images
            .resolve(&image_ref)
            .ok_or_else(|| ContainerError::ImageNotFound(image_ref.clone()))?;
        let image_volumes = super::image_volume::resolve(&self.images, &req.facts.mounts)?;
        let stop_signal = super::stop_signal::resolve(&req.stop_signal, &image.config.stop_signal)
            .map_err(|reason| ContainerError::Invalid {
                field: "stop_signal".into(),
                reason,
            })?;
        let checked = Checked {
            name_key: format!("{}_{}_{}", md.name, sandbox.meta.name_key, md.attempt),
            name: md.name.clone(),
            attempt: md.attempt,
            sandbox,
            image,
            image_ref,
            image_volumes,
            stop_signal,
        };
        // A retry (kubelet gave up waiting) waits here for the first attempt and then gets its
        // id instead of "name is reserved".
        self.creating
            .run(&checked.name_key, || self.create_once(&checked, &req))
            .await
    }

    /// CreateContainer for a name no other attempt is creating now.
    async fn create_once(
        self: &Arc<Self>,
        checked: &Checked,
        req: &CreateRequest<'_>,
    ) -> Result<String, ContainerError> {
        let Checked {
            name_key,
            name,
            attempt,
            sandbox,
            image,
            image_ref,
            image_volumes,
            stop_signal,
        } = checked;
        if let Some(holder) = self.names.get(name_key) {
            // Made by an earlier attempt that finished: the same id. A record still being
            // created belongs to a daemon that died meanwhile; recovery reaps it.
            return match self.table.get(&holder)? {
                Some(c) if c.status().state() != ContainerState::Creating => Ok(holder),
                _ => Err(ContainerError::Invalid {
                    field: "metadata.name".into(),
                    reason: format!("name {name_key:?} is reserved for container {holder}"),
                }),
            };
        }
        let id = crate::state::new_id();
        self.names
            .reserve(name_key, &id)
            .map_err(|holder| ContainerError::Invalid {
                field: "metadata.name".into(),
                reason: format!("name {name_key:?} is reserved for container {holder}"),
            })?;
        let mut rb = Rollback::new();
        {
            let this = self.clone();
            let (k, i) = (name_key.clone(), id.clone());
            rb.push("release name", async move { this.names.release(&k, &i) });
        }
        let log_path = if req.log_path.is_empty() {
            None
        } else if sandbox.meta.log_directory.is_empty() {
            Path::new(&req.log_path)
                .is_absolute()
                .then(|| PathBuf::from(&req.log_path))
        } else {
            Some(Path::new(&sandbox.meta.log_directory).join(&req.log_path))
        };
        let driver = self.context.config.load().runtime.cgroup_manager;
        let cgroups_path = driver.cgroups_path(&sandbox.meta.cgroup_parent, &id);
        let meta = ContainerMeta {
            sandbox_id: sandbox.id.clone(),
            name: name.clone(),
            attempt: *attempt,
            name_key: name_key.clone(),
            config: req.raw.clone(),
            request: req.facts.clone(),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            image_ref: image_ref.clone(),
            image_id: image.id.clone(),
            image_volumes: image_volumes.clone(),
            log_path: log_path.clone(),
            created_at: now_ns(),
            cgroups_path: cgroups_path.clone(),
            stop_signal: *stop_signal,
            termination_message: termination_message(
                &req.annotations,
                &req.facts.mounts,
                &self.overlay_dir(&id),
            ),
        };
        let result = self
            .create_steps(&id, meta, sandbox, image, req, &mut rb)
            .await;
        let id = rb
            .finish(result.map(|()| id.clone()), "container", &id)
            .await?;
        if let (Some(adjust), Some(c)) = (req.adjust_spec, self.table.get(&id)?) {
            adjust.created(&c).await;
        }
        Ok(id)
    }

    async fn create_steps(
        self: &Arc<Self>,
        id: &str,
        meta: ContainerMeta,
        sandbox: &Arc<Sandbox>,
        image: &crate::image::ImageInfo,
        req: &CreateRequest<'_>,
        rb: &mut Rollback,
    ) -> Result<(), ContainerError> {
        let runtime = self.runtime_for(sandbox)?;
        let target_pid = match spec::pid_namespace_target(&req.spec)? {
            Some(target) => Some(self.pid_namespace_target(&sandbox.id, &target)?),
            None => None,
        };
        // First, as it may refuse the request (a profile that is not loaded).
        let apparmor_profile = self
            .context
            .apparmor
            .profile_for(&spec::container_apparmor_request(&req.spec)?)
            .await?;
        let cgroups_path = meta.cgroups_path.clone();
        let log_path = meta.log_path.clone();
        // Without fsync (a power loss ends the container anyway; recovery sweeps what a lost
        // record leaves on disk): several fsyncs were most of CreateContainer's time.
        let rec = self
            .table
            .insert_with(id, meta, ContainerStatus::default(), Durability::Crash)
            .await?;
        {
            let this = self.clone();
            let id = id.to_string();
            rb.push("remove record", async move {
                let _ = this.table.remove(&id).await;
            });
        }
        let run_dir = self.run_dir(id);
        {
            let rd = run_dir.clone();
            let cg = cgroups_path.clone();
            rb.push("remove run dir and cgroup", async move {
                let _ = tokio::fs::remove_dir_all(&rd).await;
                let _ = tokio::task::spawn_blocking(move || crate::oci::cgroups::remove(&cg)).await;
            });
        }

        // Root filesystem: the image's layers under a fresh upper dir.
        let layers = self.images.layer_dirs(image);
        let ov = self.overlay_dir(id);
        let ov2 = ov.clone();
        let mounts = self.context.rootfs.clone();
        let idmap = sandbox
            .meta
            .rootfs_idmap(self.context.layout.idmap_staging(id, "rootfs"));
        let rootfs =
            tokio::task::spawn_blocking(move || mounts.mount(&layers, &ov2, idmap.as_ref()))
                .await
                .map_err(join_err(&ov))??;
        {
            let ov = ov.clone();
            let mounts = self.context.rootfs.clone();
            rb.push("unmount rootfs", async move {
                let _ = tokio::task::spawn_blocking(move || mounts.remove(&ov)).await;
            });
        }

        prepare_rootfs(
            &rootfs,
            &req.annotations,
            &req.facts.mounts,
            &image.config.volumes,
        )
        .await?;
        let image_volumes = self
            .mount_image_volumes(&rec, &req.facts.mounts, rb)
            .await?;
        // In a pod's user namespace the volumes are bound from idmapped copies, staged until
        // the runtime has made its own binds of them.
        let volume_staging = self.context.layout.idmap_staging(id, "volumes");
        let request = match &sandbox.meta.namespaces.user {
            Some(userns) => {
                {
                    let dir = self.context.layout.idmap_staging_base().join(id);
                    rb.push("unstage idmapped volumes", async move {
                        let _ = tokio::task::spawn_blocking(move || {
                            crate::image::overlay::unstage_idmapped(&dir)
                        })
                        .await;
                    });
                }
                let (m, u, dir) = (
                    req.facts.mounts.clone(),
                    userns.clone(),
                    volume_staging.clone(),
                );
                let sources =
                    tokio::task::spawn_blocking(move || Self::stage_volumes(&m, &u, &dir))
                        .await
                        .map_err(join_err(&volume_staging))??;
                req.spec.clone().with_mount_sources(&sources)
            }
            None => req.spec.clone(),
        };

        let (cdi, hooks) = {
            let config = self.context.config.load();
            (
                self.cdi.registry(&config.runtime.cdi_spec_dirs),
                self.hooks.hooks(&config.runtime.hooks_dir),
            )
        };
        let st = sandbox.status();
        let ns = &sandbox.meta.namespaces;
        let pf = &sandbox.meta.pod_files;
        let oci = spec::container_spec(&spec::ContainerSpecInput {
            id,
            request,
            sandbox: spec::SandboxContext {
                netns: ns.net.as_deref(),
                ipcns: ns.ipc.as_deref(),
                utsns: ns.uts.as_deref(),
                userns: ns.user.as_deref(),
                pause_pid: st.pause_pid,
                pod_files: Some(spec::PodFiles {
                    hosts: &pf.hosts,
                    resolv_conf: &pf.resolv_conf,
                    hostname: &pf.hostname,
                }),
            },
            image: &image.config,
            rootfs: &rootfs,
            image_volumes: &image_volumes,
            cgroups_path: cgroups_path.clone(),
            host: &self.context.host,
            restrict_oom_score_adj: self.context.config.load().runtime.restrict_oom_score_adj,
            apparmor_profile,
            target_pid,
            cdi: &cdi,
            hooks: &hooks,
        })?;
        let mut oci = oci;
        spec::set_sandbox_id(&mut oci, &sandbox.id);
        if let Some(adjust) = req.adjust_spec {
            let cdi = spec::NriCdi {
                registry: Some(&cdi),
                files: &spec::LiveHost,
            };
            oci = adjust
                .adjust(id, oci, cdi)
                .await
                .map_err(|reason| ContainerError::Refused {
                    id: id.to_string(),
                    reason,
                })?;
            // A plugin may move the container to another cgroup: stats, update, stop and remove must
            // find the one it really gets.
            let adjusted = oci
                .linux()
                .as_ref()
                .and_then(|l| l.cgroups_path().as_ref())
                .map(|p| p.display().to_string())
                .filter(|p| !p.is_empty() && *p != cgroups_path);
            if let Some(adjusted) = adjusted {
                rec.update_with(Durability::Crash, |s| {
                    s.cgroups_path = Some(adjusted.clone())
                })
                .await?;
                let cg = adjusted.clone();
                rb.push("remove adjusted cgroup", async move {
                    let _ =
                        tokio::task::spawn_blocking(move || crate::oci::cgroups::remove(&cg)).await;
                });
            }
        }
        let user = super::record::ProcessUser::of_spec(&oci);
        let paths = self.context.layout.container(id);
        let bundle = paths.bundle();
        write_volatile_bundle(&bundle, &oci).await?;
        if let Some(lp) = &log_path {
            if let Some(dir) = lp.parent() {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|source| ContainerError::Io {
                        path: dir.to_path_buf(),
                        source,
                    })?;
            }
        }
        // The staged idmapped volumes of a user namespace cannot wait for a StartContainer (a
        // daemon restart in between detaches them): such a container is created at once.
        if runtime.defer_create() && sandbox.meta.namespaces.user.is_none() {
            rec.update_with(Durability::Crash, |s| {
                s.created = true;
                s.deferred = true;
                s.user = user;
            })
            .await?;
            return Ok(());
        }
        {
            let rt = runtime.clone();
            let id = id.to_string();
            rb.push("delete container", async move {
                let _ = rt.delete(&id).await;
            });
        }
        let launched = self
            .launch_recorded(&rec, sandbox, &*runtime, false)
            .await?;
        let spawned = launched.created().await;
        if sandbox.meta.namespaces.user.is_some() {
            // The runtime's binds in the container's mount namespace keep the idmapped copies;
            // the staged ones are no longer needed.
            let dir = self.context.layout.idmap_staging_base().join(id);
            tokio::task::spawn_blocking(move || crate::image::overlay::unstage_idmapped(&dir))
                .await
                .map_err(join_err(&volume_staging))??;
        }
        let spawned = spawned?;
        rec.update_with(Durability::Crash, |s| {
            s.created = true;
            s.pid = spawned.container_pid;
            s.user = user;
        })
        .await?;
        self.watch_exit(rec);
        Ok(())
    }

    /// Launches the monitor of `rec` (see [`Self::monitor_spawn`]) and puts it on record before the
    /// runtime's create or run ends, so that a restarted daemon knows whom to wait for.
    async fn launch_recorded(
        &self,
        rec: &Container,
        sandbox: &Sandbox,
        runtime: &dyn Runtime,
        run: bool,
    ) -> Result<Box<dyn monitor::LaunchedMonitor>, ContainerError> {
        let spawn_req = self.monitor_spawn(rec, sandbox, runtime, run);
        let launched = self.context.monitors.launch(&spawn_req).await?;
        let handle = launched.monitor();
        rec.update_with(Durability::Crash, |s| {
            s.monitor_pid = handle.pid;
            s.monitor_start_time = handle.start_time;
        })
        .await?;
        Ok(launched)
    }

    /// What the monitor of `rec` starts with; with `run` it also starts the container.
    fn monitor_spawn(
        &self,
        rec: &Container,
        sandbox: &Sandbox,
        runtime: &dyn Runtime,
        run: bool,
    ) -> monitor::MonitorSpawn {
        let paths = self.context.layout.container(&rec.id);
        let binary = runtime.binary();
        let cgroups_path = rec.cgroups_path();
        let facts = &rec.meta.request;
        monitor::MonitorSpawn {
            monitor_path: self.context.monitor_path.clone(),
            id: rec.id.clone(),
            bundle: paths.bundle(),
            runtime_path: binary.path,
            runtime_root: binary.root,
            log_path: rec.meta.log_path.clone(),
            exit_file: paths.exit_file(),
            pid_file: paths.pid_file(),
            handle_file: Some(paths.handle_file()),
            cgroup_dir: crate::oci::cgroups::fs_path(&cgroups_path),
            cgroup_path: Some(cgroups_path),
            tty: facts.tty,
            stdin: facts.stdin,
            stdin_once: facts.stdin_once,
            cgroup_v1_view: binary.cgroup_view.is_some(),
            scope: self.context.monitor_scope(&sandbox.meta.cgroup_parent),
            run,
        }
    }

    /// Attaches an idmapped copy of each bind mount's source under `staging/<n>`, through the
    /// pod's user namespace `userns`; per mount, the path to bind instead of its host path (`None`
    /// for an image volume, and for a source on a file system that cannot be idmapped). A missing
    /// source directory is created first, as for any bind mount.
    fn stage_volumes(
        mounts: &[super::record::Mount],
        userns: &Path,
        staging: &Path,
    ) -> Result<Vec<Option<PathBuf>>, ContainerError> {
        let mut out = Vec::with_capacity(mounts.len());
        for (i, m) in mounts.iter().enumerate() {
            if m.image.is_some() || m.host_path.is_empty() {
                out.push(None);
                continue;
            }
            let src = Path::new(&m.host_path);
            if !src.exists() {
                std::fs::create_dir_all(src).map_err(|source| ContainerError::Io {
                    path: src.to_path_buf(),
                    source,
                })?;
            }
            let target = staging.join(i.to_string());
            let staged = crate::image::overlay::stage_idmapped_bind(src, &target, userns)?;
            out.push(staged.then_some(target));
        }
        Ok(out)
    }

    /// Record the exit when the container's monitor reports it (also across daemon restarts).
    fn watch_exit(self: &Arc<Self>, rec: Arc<Container>) {
        let exit_file = self.exit_file(&rec.id);
        let this = self.clone();
        tokio::spawn(async move {
            // A pid that is no longer our monitor (gone, or recycled after a reboot) is not
            // waited on: its exit file says all there is.
            let exit = this
                .context
                .monitors
                .wait_exit(rec.status().monitor(), &exit_file)
                .await;
            let (code, at, oom, msg) = match exit {
                Ok(Some(x)) => (x.exit_code, x.finished_at, x.oom_killed, String::new()),
                Ok(None) => (
                    255,
                    now_ns(),
                    false,
                    "monitor exited without an exit record".to_string(),
                ),
                Err(e) => (
                    255,
                    now_ns(),
                    false,
                    format!("cannot read exit record: {e}"),
                ),
            };
            // The runtime's state and the container's cgroup go as soon as the container is
            // gone (as containerd's shim does), before the exit is published: StopContainer
            // then returns with nothing left for RemoveContainer but the rootfs and the record,
            // and no RemoveContainer races this delete.
            let mut deleted = false;
            if rec.status().finished_at == 0 {
                match this.runtime_of(&rec) {
                    Ok(rt) => match rt.delete(&rec.id).await {
                        Ok(()) => deleted = true,
                        Err(e) => {
                            tracing::warn!(id = %rec.id, error = %e, "cannot delete exited container")
                        }
                    },
                    Err(e) => tracing::warn!(id = %rec.id, error = %e, "no runtime to delete with"),
                }
            }
            let mut msg = msg;
            if let Some(file) = rec.meta.termination_message.clone() {
                let text = tokio::task::spawn_blocking(move || file.read())
                    .await
                    .unwrap_or_default();
                if !text.is_empty() {
                    msg = text;
                }
            }
            if rec.status().finished_at == 0 {
                let r = rec
                    .update_with(Durability::Crash, |s| {
                        s.finished_at = at.max(1);
                        s.exit_code = code;
                        s.oom_killed = oom;
                        s.message = msg;
                        s.runtime_deleted = deleted;
                    })
                    .await;
                match r {
                    Ok(_) => {
                        tracing::info!(id = %rec.id, exit_code = code, oom, "container exited")
                    }
                    Err(e) => {
                        tracing::warn!(id = %rec.id, error = %e, "cannot record container exit")
                    }
                }
            }
        });
    }

    /// The bundle directory of container `id` (config.json, the monitor's attach socket).
    pub fn bundle_dir(&self, id: &str) -> PathBuf {
        self.context.layout.container(id).bundle()
    }

    /// The attach socket of container `id`'s monitor (see [`monitor::attach`]).
    pub fn attach_socket(&self, id: &str) -> PathBuf {
        self.context.layout.container(id).attach_socket()
    }

    /// What `<runtime> exec` needs to run `cmd` in the running container `rec` (for ExecSync and
    /// the streaming server's Exec via [`crate::oci::exec::spawn_exec`]).
    pub async fn exec_spec(
        &self,
        rec: &Container,
        cmd: Vec<String>,
        tty: bool,
        stdin: bool,
    ) -> Result<crate::oci::exec::ExecSpec, ContainerError> {
        if rec.status().state() != ContainerState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id.clone(),
                reason: format!(
                    "cannot exec in a container in state {:?}",
                    rec.status().state()
                ),
            });
        }
        if cmd.is_empty() {
            return Err(ContainerError::Invalid {
                field: "cmd".into(),
                reason: "must not be empty".into(),
            });
        }
        let binary = self.runtime_of(rec)?.binary();
        // `<runtime> exec` takes the env of the container's config, where the values that are not
        // UTF-8 are still encoded: the exec process gets them from the same helper.
        let cmd = if rec.meta.request.envexec {
            std::iter::once(spec::envexec::CONTAINER_PATH.to_string())
                .chain(cmd)
                .collect()
        } else {
            cmd
        };
        // The container's process as its bundle has it (the daemon wrote it): the exec inherits
        // its user and groups, env and security settings through the runtime's `--process`.
        let config = self.bundle_dir(&rec.id).join("config.json");
        let process = match tokio::fs::read(&config)
            .await
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
            }) {
            Ok(mut spec) => Some(spec["process"].take()).filter(|p| p.is_object()),
            Err(e) => {
                tracing::warn!(id = %rec.id, path = %config.display(), error = %e, "exec with the runtime's defaults: no container process spec");
                None
            }
        };
        Ok(crate::oci::exec::ExecSpec {
            runtime_path: binary.path,
            runtime_root: binary.root,
            id: rec.id.clone(),
            cmd,
            tty,
            stdin,
            state_dir: self.run_dir(&rec.id),
            cgroup_view: binary.cgroup_view,
            process,
            attach_warm: self.context.attach_warm.clone(),
        })
    }

    /// ExecSync: runs `cmd` and returns its exit code and output; a timeout (0 = none) kills
    /// the process and still answers with what was captured.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> Result<crate::oci::exec::ExecSyncOutput, ContainerError> {
        let rec = self.get(id)?;
        let spec = self.exec_spec(&rec, cmd, false, false).await?;
        let timeout = (!timeout.is_zero()).then_some(timeout);
        let out =
            crate::oci::exec::exec_sync(&spec, timeout, crate::oci::exec::EXEC_SYNC_OUTPUT_MAX)
                .await?;
        if out.timed_out {
            tracing::info!(id = %rec.id, ?timeout, "exec sync timed out; process killed");
        }
        Ok(out)
    }

    /// ReopenContainerLog: the monitor reopens the log file at its path (kubelet renamed the old
    /// one). A container that is not running has no monitor to ask: an error, as in CRI-O.
    pub async fn reopen_log(&self, id: &str) -> Result<(), ContainerError> {
        let rec = self.get(id)?;
        if rec.status().state() != ContainerState::Running {
            return Err(ContainerError::WrongState {
                id: rec.id.clone(),
                reason: "container is not running".into(),
            });
        }
        if rec.meta.log_path.is_none() {
            return Ok(());
        }
        monitor::attach::reopen_log(&self.attach_socket(&rec.id))
            .await
            .map_err(|source| ContainerError::Attach {
                id: rec.id.clone(),
                source,
            })
    }

    /// StartContainer.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<(), ContainerError> {
        let rec = self.get(id)?;
        let st = rec.status();
        if st.state() != ContainerState::Created {
            return Err(ContainerError::WrongState {
                id: rec.id.clone(),
                reason: format!("cannot start a container in state {:?}", st.state()),
            });
        }
        let sandbox = self.pods.get(&rec.meta.sandbox_id)?;
        let runtime = self.runtime_for(&sandbox)?;
        // The process runs from the moment `start` is issued; a container that exits at once
        // must not get a finish time before its start time.
        let started = now_ns();
        if st.deferred {
            return self.run_deferred(&rec, &sandbox, runtime, started).await;
        }
        runtime.start(&rec.id).await?;
        Self::record_start(&rec, started).await
    }

    async fn record_start(rec: &Container, started: i64) -> Result<(), ContainerError> {
        rec.update_with(Durability::Crash, |s| Self::mark_started(s, started))
            .await?;
        Ok(())
    }

    /// The status of a container whose start was issued at `started`.
    fn mark_started(s: &mut ContainerStatus, started: i64) {
        s.deferred = false;
        if s.started_at == 0 {
            s.started_at = if s.finished_at > 0 {
                started.min(s.finished_at)
            } else {
                started
            };
        }
    }

    /// StartContainer of a container created without the runtime: its monitor creates and
    /// starts it with one `<runtime> run --detach`. A failed run leaves it created, with
    /// nothing of the attempt in the runtime.
    async fn run_deferred(
        self: &Arc<Self>,
        rec: &Arc<Container>,
        sandbox: &Sandbox,
        runtime: Arc<dyn Runtime>,
        started: i64,
    ) -> Result<(), ContainerError> {
        if !self.starting.lock().unwrap().insert(rec.id.clone()) {
            return Err(ContainerError::WrongState {
                id: rec.id.clone(),
                reason: "it is being started already".into(),
            });
        }
        let result = async {
            let launched = self.launch_recorded(rec, sandbox, &*runtime, true).await?;
            Ok::<_, ContainerError>(launched.created().await?)
        }
        .await;
        let result = match result {
            Ok(spawned) => rec
                .update_with(Durability::Crash, |s| {
                    s.pid = spawned.container_pid;
                    Self::mark_started(s, started);
                })
                .await
                .map(|_| self.watch_exit(rec.clone()))
                .map_err(ContainerError::from),
            Err(e) => {
                // A monitor told to give up (a run past its time) may still be ending the
                // runtime's run: the delete comes after it, or the run could create what the
                // delete was to remove.
                let handle = rec.status().monitor();
                if handle.is_set() {
                    let monitors = self.context.monitors.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        let until = std::time::Instant::now() + MONITOR_GONE_WAIT;
                        while monitors.alive(handle) && std::time::Instant::now() < until {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    })
                    .await;
                }
                let _ = runtime.delete(&rec.id).await;
                let _ = rec
                    .update_with(Durability::Crash, |s| {
                        s.monitor_pid = 0;
                        s.monitor_start_time = 0;
                    })
                    .await;
                Err(e)
            }
        };
        self.starting.lock().unwrap().remove(&rec.id);
        result
    }

    /// StopContainer: the stop signal (through the monitor, see [`Containers::send_stop_signal`]),
    /// `timeout` seconds, then SIGKILL to every process of the container through the runtime.
    /// Idempotent.
    pub async fn stop(&self, rec: &Arc<Container>, timeout: i64) -> Result<(), ContainerError> {
        let st = rec.status();
        match st.state() {
            ContainerState::Exited | ContainerState::Creating => return Ok(()),
            ContainerState::Created if st.awaiting_run() => {
                // Nothing runs and the runtime has nothing: it ends as a created init killed
                // before its start would.
                rec.update_with(Durability::Crash, |s| {
                    if s.finished_at == 0 {
                        s.finished_at = now_ns();
                        s.exit_code = 128 + libc::SIGKILL;
                        s.message = "stopped before it was started".into();
                        s.runtime_deleted = true;
                    }
                })
                .await?;
                return Ok(());
            }
            ContainerState::Created | ContainerState::Running => {}
        }
        let runtime = self.runtime_of(rec)?;
        let exited = |s: &ContainerStatus| s.finished_at > 0;
        if timeout > 0 {
            self.send_stop_signal(rec, &*runtime).await?;
            let wait = rec.wait_for(exited);
            if tokio::time::timeout(Duration::from_secs(timeout as u64), wait)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        runtime.kill(&rec.id, libc::SIGKILL, true).await?;
        if tokio::time::timeout(KILL_WAIT, rec.wait_for(exited))
            .await
            .is_err()
        {
            // The monitor did not report: trust the runtime's view.
            if !self.context.monitors.alive(rec.status().monitor()) {
                rec.update_with(Durability::Crash, |s| {
                    if s.finished_at == 0 {
                        s.finished_at = now_ns();
                        s.exit_code = 137;
                        s.message = "monitor gone; exit code assumed".into();
                    }
                })
                .await?;
            } else {
                return Err(ContainerError::KillTimeout {
                    id: rec.id.clone(),
                    waited: KILL_WAIT,
                });
            }
        }
        Ok(())
    }

    /// Sends the container's stop signal to its init through its monitor, which signals its own
    /// unreaped child by pid without a runtime process. Whatever keeps the monitor from it (no
    /// socket, a monitor without the request, no init to signal, no answer in time) leaves the
    /// signal to the runtime's kill.
    async fn send_stop_signal(
        &self,
        rec: &Container,
        runtime: &dyn Runtime,
    ) -> Result<(), ContainerError> {
        let signal = rec.meta.stop_signal;
        let socket = self.attach_socket(&rec.id);
        match self.context.monitors.signal(&rec.id, &socket, signal).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!(id = %rec.id, signal, error = %e, "stop signal through the runtime instead of the monitor");
                Ok(runtime.kill(&rec.id, signal, false).await?)
            }
        }
    }

    /// The runtime that runs `rec` (the default one when its pod is gone).
    fn runtime_of(&self, rec: &Container) -> Result<Arc<dyn Runtime>, ContainerError> {
        match self.pods.get(&rec.meta.sandbox_id) {
            Ok(s) => self.runtime_for(&s),
            Err(_) => self
                .context
                .runtime("")
                .map_err(|e| SandboxError::from(e).into()),
        }
    }

    /// RemoveContainer: stops it if needed and leaves nothing behind. Idempotent.
    pub async fn remove(&self, rec: &Arc<Container>) -> Result<(), ContainerError> {
        self.stop(rec, 0).await?;
        let runtime = self.runtime_of(rec)?;
        // Usually deleted already, when the container exited (see watch_exit): a runtime that
        // has no state left for it would only be asked to find that out (a process start).
        let st = rec.status();
        if !st.runtime_deleted && !st.awaiting_run() {
            runtime.delete(&rec.id).await?;
        }
        self.unmount_image_volumes(&rec.id).await?;
        let ov = self.overlay_dir(&rec.id);
        let run_dir = self.run_dir(&rec.id);
        let cg = rec.cgroups_path();
        let mounts = self.context.rootfs.clone();
        let trash = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>, ContainerError> {
            unmount_overlay(&*mounts, &ov)?;
            crate::oci::cgroups::remove(&cg);
            let mut trash = Vec::new();
            for dir in [ov, run_dir] {
                trash.extend(move_to_trash(&*mounts, &dir)?);
            }
            Ok(trash)
        })
        .await
        .map_err(join_err(&self.run_dir(&rec.id)))??;
        // Nothing is mounted any more and nothing is left under the container's names; the
        // files themselves go in the background: every unlink and rmdir costs milliseconds on
        // a journaled disk (an upper dir full of files far more). A daemon killed meanwhile
        // leaves trash entries that recovery sweeps.
        let mounts = self.context.rootfs.clone();
        tokio::task::spawn_blocking(move || {
            for t in trash {
                empty_trash(&*mounts, &t);
            }
        });
        self.table.remove(&rec.id).await?;
        self.names.release(&rec.meta.name_key, &rec.id);
        Ok(())
    }

    /// After a daemon restart: exits that happened while it was down are read from the exit
    /// files; live containers are watched again; half-created ones are reaped.
    pub async fn recover(self: &Arc<Self>) {
        // Staged idmapped copies live only while a create runs, and none runs yet: whatever a
        // daemon killed mid-create left there goes (only unmounted, never deleted through).
        let staging = self.context.layout.idmap_staging_base();
        let s2 = staging.clone();
        match tokio::task::spawn_blocking(move || crate::image::overlay::unstage_idmapped(&s2))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(dir = %staging.display(), error = %e, "cannot clear idmapped staging")
            }
            Err(e) => {
                tracing::warn!(dir = %staging.display(), error = %e, "cannot clear idmapped staging")
            }
        }
        for rec in self.table.list() {
            let st = rec.status();
            if st.state() != ContainerState::Creating && st.user.is_none() {
                self.record_user_from_bundle(&rec).await;
            }
            match st.state() {
                ContainerState::Creating => {
                    tracing::info!(id = %rec.id, "reaping container left half-created");
                    // The monitor may still be creating it, and the runtime may know a container
                    // the record does not: as for a pause, let the create end, then delete it
                    // through the runtime.
                    match self.runtime_of(&rec) {
                        Ok(runtime) => {
                            let paths = self.context.layout.container(&rec.id);
                            let half = HalfCreated {
                                id: rec.id.clone(),
                                monitor: st.monitor(),
                                handle_file: paths.handle_file(),
                                pid_file: paths.pid_file(),
                            };
                            let monitors = self.context.monitors.clone();
                            half_created::reap(&half, &*runtime, monitors, Patience::default())
                                .await;
                        }
                        Err(e) => {
                            tracing::warn!(id = %rec.id, error = %e, "no runtime to reap a half-created container with")
                        }
                    }
                    if let Err(e) = self.remove(&rec).await {
                        tracing::warn!(id = %rec.id, error = %e, "cannot reap half-created container");
                    }
                }
                ContainerState::Exited => {}
                ContainerState::Created if st.deferred => self.recover_deferred(&rec).await,
                ContainerState::Created | ContainerState::Running => {
                    if st.state() == ContainerState::Created {
                        self.adopt_interrupted_start(&rec).await;
                    }
                    if let Ok(sandbox) = self.pods.get(&rec.meta.sandbox_id) {
                        self.context.keep_monitor_in_scope(
                            &rec.id,
                            st.monitor(),
                            &sandbox.meta.cgroup_parent,
                        );
                    }
                    // wait_exit returns at once with the exit file when the monitor is gone.
                    self.watch_exit(rec.clone());
                }
            }
        }
        self.sweep_orphan_rootfs().await;
    }

    /// A deferred container whose StartContainer a daemon kill cut short has a monitor (on
    /// record, or holding its handle file) that may have run it. The run is let end as a
    /// half-created object's create is; if the runtime then has the container (running, or
    /// already exited) under a live monitor it is adopted as started, as an interrupted start
    /// of a created container is; otherwise whatever the attempt left in the runtime is deleted
    /// and the container is created again, so a retried start runs it once. One whose start
    /// never began stays created.
    async fn recover_deferred(self: &Arc<Self>, rec: &Arc<Container>) {
        let st = rec.status();
        let paths = self.context.layout.container(&rec.id);
        let handle_file = paths.handle_file();
        let hf = handle_file.clone();
        let launched = st.monitor().is_set()
            || tokio::task::spawn_blocking(move || hf.exists())
                .await
                .unwrap_or(true);
        if !launched {
            return;
        }
        let runtime = match self.runtime_of(rec) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(id = %rec.id, error = %e, "no runtime to end an interrupted start with");
                return;
            }
        };
        let half = HalfCreated {
            id: rec.id.clone(),
            monitor: st.monitor(),
            handle_file: handle_file.clone(),
            pid_file: paths.pid_file(),
        };
        let monitors = self.context.monitors.clone();
        // Found by its handle file's lock even before it wrote its handle there.
        let ended =
            half_created::let_create_end(&half, monitors.clone(), Patience::default()).await;
        let live = ended
            .as_ref()
            .is_some_and(|(m, stopped)| !*stopped && m.alive());
        let handle = if st.monitor().is_set() {
            st.monitor()
        } else {
            let hf = handle_file.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::read_to_string(&hf)
                    .ok()
                    .and_then(|t| monitor::ProcessHandle::parse_line(&t))
            })
            .await
            .ok()
            .flatten()
            .unwrap_or_default()
        };
        let state = runtime.state(&rec.id).await;
        let started = match &state {
            Ok(Some(s))
                if live
                    && handle.is_set()
                    && matches!(s.status.as_str(), "running" | "paused" | "stopped") =>
            {
                if s.pid > 0 {
                    Some(s.pid)
                } else {
                    tokio::fs::read_to_string(paths.pid_file())
                        .await
                        .ok()
                        .and_then(|t| t.trim().parse().ok())
                }
            }
            _ => None,
        };
        if let Some(pid) = started {
            let now = now_ns();
            let r = rec
                .update_with(Durability::Crash, |s| {
                    s.monitor_pid = handle.pid;
                    s.monitor_start_time = handle.start_time;
                    s.pid = pid;
                    s.deferred = false;
                    if s.started_at == 0 {
                        s.started_at = now;
                    }
                })
                .await;
            log_adopted_start(&rec.id, r.map(|_| ()));
            if let Ok(sandbox) = self.pods.get(&rec.meta.sandbox_id) {
                self.context
                    .keep_monitor_in_scope(&rec.id, handle, &sandbox.meta.cgroup_parent);
            }
            // wait_exit returns at once with the exit file when the monitor is gone.
            self.watch_exit(rec.clone());
            return;
        }
        // The runtime may know what the attempt made, or a monitor may still hold the file: both
        // are ended through the runtime. A failed start that left only its files needs nothing.
        let known = !matches!(state, Ok(None));
        if known || ended.is_some() {
            tracing::info!(id = %rec.id, "undoing a start the daemon's restart cut short");
            drop(ended);
            half_created::reap(&half, &*runtime, monitors, Patience::default()).await;
        }
        // The attempt's answers must not be read as the next one's.
        for stale in [paths.pid_file(), paths.exit_file()] {
            let _ = tokio::fs::remove_file(stale).await;
        }
        if st.monitor().is_set() {
            let r = rec
                .update_with(Durability::Crash, |s| {
                    s.monitor_pid = 0;
                    s.monitor_start_time = 0;
                    s.pid = 0;
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(id = %rec.id, error = %e, "cannot record an undone start");
            }
        }
    }

    /// A record written before the record kept the process user has none: its bundle's
    /// config.json holds the same resolution while the bundle exists, so it is copied into the
    /// record once, and ContainerStatus reads only the record.
    async fn record_user_from_bundle(&self, rec: &Arc<Container>) {
        let path = self.bundle_dir(&rec.id).join("config.json");
        let Ok(bytes) = tokio::fs::read(&path).await else {
            return;
        };
        let user = match serde_json::from_slice::<oci_spec::runtime::Spec>(&bytes) {
            Ok(spec) => super::record::ProcessUser::of_spec(&spec),
            Err(e) => {
                tracing::warn!(id = %rec.id, path = %path.display(), error = %e, "cannot read the process user from the bundle");
                return;
            }
        };
        if user.is_none() {
            return;
        }
        if let Err(e) = rec.update(|s| s.user = user).await {
            tracing::warn!(id = %rec.id, error = %e, "cannot record the process user");
        }
    }

    /// A daemon killed during StartContainer after the runtime's `start` ran leaves a record
    /// that says created while the process runs (found by the e2e fault loop). Ask the runtime:
    /// if it runs, record the start, so the container is listed as running, StopContainer
    /// kills it, and kubelet does not start it a second time. The start time is unknown: the
    /// recovery's clock is the closest bound.
    async fn adopt_interrupted_start(&self, rec: &Arc<Container>) {
        let Ok(sandbox) = self.pods.get(&rec.meta.sandbox_id) else {
            return;
        };
        let Ok(runtime) = self.runtime_for(&sandbox) else {
            return;
        };
        match runtime.state(&rec.id).await {
            Ok(Some(s)) if s.status == "running" || s.status == "paused" => {
                let now = now_ns();
                let r = rec
                    .update(|st| {
                        if st.started_at == 0 {
                            st.started_at = now;
                        }
                    })
                    .await;
                log_adopted_start(&rec.id, r.map(|_| ()));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(id = %rec.id, error = %e, "cannot ask the runtime for the state")
            }
        }
    }

    /// Unmounts and removes the overlay directories that no container or pod record leads to:
    /// records are not fsynced, and one that a power loss took away leaves its rootfs (upper
    /// dir included) on disk. Also empties the trash that a daemon killed during a
    /// RemoveContainer left. Runs during recovery, before any create can be under way.
    async fn sweep_orphan_rootfs(&self) {
        let base = self.context.layout.overlay_base();
        let run_base = self.context.layout.containers_run_base();
        let mounts = self.context.rootfs.clone();
        let known: std::collections::HashSet<String> = self
            .table
            .list()
            .iter()
            .map(|c| c.id.clone())
            .chain(self.pods.list().iter().map(|p| p.id.clone()))
            .collect();
        let swept = tokio::task::spawn_blocking(move || {
            for dir in [&base, &run_base] {
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(TRASH_PREFIX)
                    {
                        empty_trash(&*mounts, &entry.path());
                    }
                }
            }
            let Ok(entries) = std::fs::read_dir(&base) else {
                return;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                // Only what we name: 64 hex digits, as every container and pod id.
                let ours = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
                if !ours || known.contains(&name) {
                    continue;
                }
                match mounts.remove(&entry.path()) {
                    Ok(()) => tracing::info!(id = %name, "removed a rootfs no record leads to"),
                    Err(e) => {
                        tracing::warn!(id = %name, error = %e, "cannot remove an orphaned rootfs")
                    }
                }
            }
        })
        .await;
        if let Err(e) = swept {
            tracing::warn!(error = %e, "sweeping orphaned rootfs directories failed");
        }
    }
}

#[cfg(test)]
#[path = "lifecycle_tests.rs"]
mod tests;
