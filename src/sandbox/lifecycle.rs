//! RunPodSandbox / StopPodSandbox / RemovePodSandbox and recovery, as one multi-step create
//! with a rollback guard. Takes the CRI `PodSandboxConfig` only to hand it to [`crate::spec`];
//! everything persisted is ferrio's own types.

use super::{files, namespaces};
use crate::clock::now_ns;
use crate::config::Live;
use crate::context::NodeContext;
use crate::image::ImageStore;
use crate::monitor;
use crate::network::{Cni, PodNetwork, PortMapping};
use crate::oci::cgroups::{self, CgroupDriver};
use crate::oci::half_created::{self, HalfCreated, Patience};
use crate::oci::Runtime;
use crate::rollback::Rollback;
use crate::spec;
use crate::state::create_once::CreateOnce;
use crate::state::names::Names;
use crate::state::{Durability, Record, StateError, Table};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How long the pause process gets after SIGKILL before we give up waiting for its monitor.
const PAUSE_KILL_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error("pod sandbox {id} is not ready")]
    NotReady { id: String },
    /// The node or the pod's runtime handler lacks what the request needs.
    #[error("runtime handler {handler:?}: {reason}")]
    Unsupported { handler: String, reason: String },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Namespace(#[from] namespaces::NamespaceError),
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
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
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error(transparent)]
    Systemd(#[from] crate::systemd::SystemdError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The caller's last check before ready refused the pod.
    #[error("pod sandbox {id}: {reason}")]
    Refused { id: String, reason: String },
}

impl From<crate::context::UnknownHandler> for SandboxError {
    fn from(e: crate::context::UnknownHandler) -> Self {
        SandboxError::Invalid {
            field: "runtime_handler".into(),
            reason: e.to_string(),
        }
    }
}

/// `wanted`, plus the values that lift each limit `current` sets and `wanted` does not: no CFS quota,
/// no memory limit, the kernel's default CPU weight.
fn lifted_limits(
    current: Option<&cgroups::CgroupLimits>,
    wanted: &cgroups::CgroupLimits,
    v2: bool,
) -> cgroups::CgroupLimits {
    let mut write = wanted.clone();
    let Some(current) = current else {
        return write;
    };
    if current.cpu_quota.is_some() && wanted.cpu_quota.is_none() {
        write.cpu_quota = Some(-1);
        write.cpu_period = wanted.cpu_period.or(current.cpu_period);
    }
    if current.memory_limit.is_some() && wanted.memory_limit.is_none() {
        write.memory_limit = Some(-1);
    }
    if current.cpu_shares.is_some() && wanted.cpu_shares.is_none() {
        // v1's default cpu.shares is 1024; on v2 a share of 0 is written as the default weight 100.
        write.cpu_shares = Some(if v2 { 0 } else { 1024 });
    }
    write
}

/// What [`Pods::create_pause`] needs from the RunPodSandbox request.
struct PauseInput<'a> {
    id: &'a str,
    rec: &'a Arc<Sandbox>,
    runtime: &'a Arc<dyn Runtime>,
    request: spec::PodRequest<'a>,
    pinned: &'a namespaces::Pinned,
    cgroups_path: String,
    hostname: &'a str,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What never changes about a sandbox after RunPodSandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    /// The name reservation key `<name>_<namespace>_<uid>_<attempt>`.
    pub name_key: String,
    /// The CRI PodSandboxConfig as JSON, for PodSandboxStatus's verbose info only: what the
    /// daemon reads back is in `request` and the fields beside it.
    pub config: serde_json::Value,
    /// What the daemon reads back from the request, decided at create.
    pub request: super::record::PodRequestFacts,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub created_at: i64,
    pub hostname: String,
    pub log_directory: String,
    /// The pod's cgroup, parent of every container's cgroup: an absolute cgroupfs path, or a
    /// systemd slice name with `cgroup_manager = "systemd"`.
    pub cgroup_parent: String,
    /// Where the pod's cgroup lives below the hierarchy roots (a slice expanded), removed with
    /// the pod. Empty in records written before it existed: `cgroup_parent` then.
    #[serde(default)]
    pub cgroup_dir: String,
    /// What ferrio wrote into the pod's cgroup: the pod's overhead plus its containers' sum
    /// (`linux.overhead` and `linux.resources`). `None` when the config asked for nothing.
    #[serde(default)]
    pub resources: Option<cgroups::CgroupLimits>,
    pub host_network: bool,
    pub namespaces: namespaces::Pinned,
    pub pod_files: files::PodFilePaths,
    pub port_mappings: Vec<PortMapping>,
}

impl SandboxMeta {
    /// How a root filesystem of this pod is seen through its user namespace, with its idmapped
    /// layers staged at `staging`; `None` for a pod without one.
    pub fn rootfs_idmap(&self, staging: PathBuf) -> Option<crate::image::overlay::Idmap> {
        let userns = self.namespaces.user.clone()?;
        let modes = self.request.namespace_modes.userns.as_ref()?;
        let root = |v: &[super::record::IdMapping]| {
            v.iter().find(|m| m.container_id == 0).map(|m| m.host_id)
        };
        Some(crate::image::overlay::Idmap {
            userns,
            root_uid: root(&modes.uids)?,
            root_gid: root(&modes.gids)?,
            staging,
        })
    }

    /// The pod's cgroup below the hierarchy roots, for stats and removal (`cgroup_parent` is a
    /// bare slice name with the systemd driver, which names no directory).
    pub fn cgroup_fs_dir(&self) -> &str {
        if self.cgroup_dir.is_empty() {
            &self.cgroup_parent
        } else {
            &self.cgroup_dir
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum SandboxState {
    /// Being created; hidden from List, reaped by recovery if the daemon died meanwhile.
    #[default]
    Creating,
    Ready,
    NotReady,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct SandboxStatus {
    pub state: SandboxState,
    pub pause_pid: i32,
    /// The pause's monitor, recorded as soon as it is up (before the runtime's create ends).
    pub monitor_pid: i32,
    /// The monitor's start time (field 22 of its `/proc/<pid>/stat`); 0 in records written
    /// before it was kept, whose monitor is then never signalled.
    #[serde(default)]
    pub monitor_start_time: u64,
    /// Pod IPs, first one is the primary.
    pub ips: Vec<String>,
    /// CNI ADD done and DEL not yet run.
    pub network_attached: bool,
    /// The pause container exists in the OCI runtime.
    pub pause_created: bool,
    /// The pause exited and StopPodSandbox has deleted it from the runtime and unmounted its
    /// rootfs, so RemovePodSandbox need not.
    #[serde(default)]
    pub pause_deleted: bool,
    /// The CNI result of the last plugin, for PodSandboxStatus's verbose info.
    #[serde(default)]
    pub network_result: Option<serde_json::Value>,
    /// The pod-level limits of the last UpdatePodSandboxResources (in-place pod resize), which replace
    /// `SandboxMeta::resources`; `None` until the first update.
    #[serde(default)]
    pub resources: Option<cgroups::CgroupLimits>,
}

impl SandboxStatus {
    /// The pause's monitor as a process handle.
    pub fn monitor(&self) -> monitor::ProcessHandle {
        monitor::ProcessHandle {
            pid: self.monitor_pid,
            start_time: self.monitor_start_time,
        }
    }
}

pub type Sandbox = Record<SandboxMeta, SandboxStatus>;

pub use crate::context::MONITOR_HANDLE_FILE;

/// Everything RunPodSandbox needs from the request, in ferrio's terms: the server converts the
/// CRI message.
pub struct RunRequest<'a> {
    /// `metadata`; `None` when the request had none (refused).
    pub metadata: Option<PodName>,
    /// The hostname the request names; empty = the node's.
    pub hostname: String,
    /// `linux.cgroup_parent`; empty = the default parent.
    pub cgroup_parent: String,
    /// `linux.sysctls`, unchecked.
    pub sysctls: HashMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub log_directory: String,
    /// The pod cgroup's limits (`linux.resources` plus `linux.overhead`); `None` = none.
    pub resources: Option<cgroups::CgroupLimits>,
    /// What the record keeps from the request besides the fields above.
    pub facts: super::record::PodRequestFacts,
    /// The request as JSON, for verbose PodSandboxStatus only.
    pub raw: serde_json::Value,
    /// The request as the spec room's entry points read it.
    pub spec: spec::PodRequest<'a>,
    pub runtime_handler: &'a str,
    pub dns: files::Dns,
    pub port_mappings: Vec<PortMapping>,
    pub host_network: bool,
    pub host_ipc: bool,
    /// Called with the pod (still "creating", so nobody lists it or creates in it) and its IPs right
    /// before it is marked ready (NRI's RunPodSandbox); an error rolls the pod back.
    pub before_ready: Option<&'a dyn BeforeReady>,
}

/// A pod's `metadata`: what names it for kubelet.
#[derive(Debug, Clone, Default)]
pub struct PodName {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

/// The last word on a pod before it is ready; it may refuse the pod.
pub trait BeforeReady: Send + Sync {
    fn before_ready<'a>(
        &'a self,
        pod: &'a Arc<Sandbox>,
        ips: &'a [String],
    ) -> futures::future::BoxFuture<'a, Result<(), String>>;
}

/// The pod sandboxes of this node and the services their lifecycle uses. Callers outside the
/// lifecycle go through methods; what pods and containers share is in the node context.
pub struct Pods {
    /// Config, host features, runtimes, paths and the monitor launcher, shared with containers.
    pub(crate) context: Arc<NodeContext>,
    table: Table<SandboxMeta, SandboxStatus>,
    names: Names,
    images: Arc<ImageStore>,
    /// Swapped on reload (network dir, default network); teardown reads its own cache.
    cni: Live<Cni>,
    /// One create per name key at a time, so a retry waits for the first attempt.
    creating: CreateOnce,
}

/// Default parent cgroup of pods whose config names none.
pub const DEFAULT_CGROUP_PARENT: &str = "/ferrio";

/// Where a pod's cgroup goes: the parent containers are put under (`cgroup_parent` in the
/// driver's syntax), the pause container's OCI `cgroupsPath`, and the directory below the
/// hierarchy roots that is removed with the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub parent: String,
    pub pause_path: String,
    pub dir: String,
    /// ferrio made this cgroup (the pod named no parent) and removes it with the pod. A parent
    /// kubelet names under the systemd driver is kubelet's slice: never stopped nor removed here.
    pub owned: bool,
}

/// The pod cgroup of sandbox `id` for the requested `cgroup_parent` ("" = ferrio's own).
/// cgroupfs wants an absolute path; systemd a slice name, and a cgroupfs-style path is turned
/// into one (`/kubepods/burstable/pod1` -> `kubepods-burstable-pod1.slice`).
pub fn pod_cgroup(
    driver: CgroupDriver,
    requested: &str,
    id: &str,
) -> Result<PodCgroup, SandboxError> {
    let short = &id[..id.len().min(12)];
    let invalid = |reason: String| SandboxError::Invalid {
        field: "linux.cgroup_parent".into(),
        reason,
    };
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = if requested.is_empty() {
                format!("{DEFAULT_CGROUP_PARENT}/{short}")
            } else {
                requested.trim_end_matches('/').to_string()
            };
            if !parent.starts_with('/') || parent == "/" || parent.split('/').any(|c| c == "..") {
                return Err(invalid(format!(
                    "{requested:?} is not an absolute cgroupfs path"
                )));
            }
            Ok(PodCgroup {
                pause_path: driver.cgroups_path(&parent, id),
                dir: parent.clone(),
                parent,
                owned: requested.is_empty(),
            })
        }
        CgroupDriver::Systemd => {
            let not_a_slice = || invalid(format!("{requested:?} is not a valid systemd slice"));
            let parent = if requested.is_empty() {
                cgroups::to_slice(&format!("{DEFAULT_CGROUP_PARENT}/pod{short}"))
            } else {
                cgroups::to_slice(requested)
            }
            .ok_or_else(not_a_slice)?;
            let dir = cgroups::expand_slice(&parent)
                .filter(|d| d != "/")
                .ok_or_else(not_a_slice)?;
            Ok(PodCgroup {
                pause_path: driver.cgroups_path(&parent, id),
                dir,
                parent,
                owned: requested.is_empty(),
            })
        }
    }
}

/// Whether ferrio made the pod cgroup `parent` of sandbox `id` (the pod named none): the same
/// answer [`pod_cgroup`] gave at create, from what the record keeps.
pub fn owns_pod_cgroup(driver: CgroupDriver, parent: &str, id: &str) -> bool {
    pod_cgroup(driver, "", id).is_ok_and(|own| own.parent == parent)
}

/// kubelet's annotation (on pods and containers) carrying the pod's termination grace period,
/// in seconds.
pub const ANN_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";

/// The grace period StopPodSandbox gives a container: kubelet's annotation on the container,
/// else on the pod, else 0 (critest and crictl send none; kubelet stops containers itself
/// before it stops the pod, so this matters only when it could not).
pub fn grace_period(container: &BTreeMap<String, String>, pod: &BTreeMap<String, String>) -> i64 {
    [container, pod]
        .into_iter()
        .find_map(|a| a.get(ANN_GRACE_PERIOD)?.trim().parse::<i64>().ok())
        .unwrap_or(0)
        .max(0)
}

impl Pods {
    pub fn new(
        context: Arc<NodeContext>,
        table: Table<SandboxMeta, SandboxStatus>,
        images: Arc<ImageStore>,
        cni: Live<Cni>,
    ) -> Self {
        let names = Names::default();
        for s in table.list() {
            let _ = names.reserve(&s.meta.name_key, &s.id);
        }
        Pods {
            context,
            table,
            names,
            images,
            cni,
            creating: Default::default(),
        }
    }

    /// Makes the pod's cgroup ready for its containers and sets the pod's limits in it.
    /// systemd driver: ferrio's own slice is started as a transient unit carrying the limits (so
    /// that systemd writes `memory.max`, `cpu.weight` and `cpu.max`, and a later reload of the
    /// slice keeps them); kubelet's slice is left to kubelet, which sets its limits itself.
    /// cgroupfs driver (or no systemd to ask): the limit files are written directly.
    async fn prepare_pod_cgroup(
        &self,
        driver: CgroupDriver,
        pod_cg: &PodCgroup,
        limits: Option<cgroups::CgroupLimits>,
    ) -> Result<(), SandboxError> {
        if driver == CgroupDriver::Systemd {
            if !pod_cg.owned {
                return Ok(());
            }
            if let Some(systemd) = &self.context.systemd {
                use crate::systemd::{TransientUnit, UnitControl};
                let unit = TransientUnit::pod_slice(&pod_cg.parent, limits.as_ref());
                systemd.start_transient(&unit).await?;
                return Ok(());
            }
        }
        let Some(limits) = limits else {
            return Ok(());
        };
        let dir = pod_cg.dir.clone();
        tokio::task::spawn_blocking(move || cgroups::apply_limits(&dir, &limits))
            .await
            .map_err(|e| SandboxError::Io {
                path: PathBuf::from(&pod_cg.dir),
                source: std::io::Error::other(e),
            })??;
        Ok(())
    }

    /// Removes the pod's cgroup after its last container: ferrio's own slice is stopped through
    /// systemd (which removes its cgroup), a cgroupfs parent is removed with `rmdir`; kubelet's
    /// slice is kubelet's to remove. Problems are logged: nothing is left to retry them with.
    async fn release_pod_cgroup(&self, driver: CgroupDriver, parent: &str, dir: &str, owned: bool) {
        if driver == CgroupDriver::Systemd {
            if !owned {
                return;
            }
            if let Some(systemd) = &self.context.systemd {
                use crate::systemd::UnitControl;
                if let Err(e) = systemd.stop(parent).await {
                    tracing::warn!(slice = %parent, error = %e, "cannot stop the pod slice");
                }
                return;
            }
        }
        let dir = dir.to_string();
        let left = tokio::task::spawn_blocking(move || cgroups::remove(&dir))
            .await
            .unwrap_or_default();
        if !left.is_empty() {
            tracing::warn!(cgroups = ?left, "pod cgroups still busy");
        }
    }

    fn run_dir(&self, id: &str) -> PathBuf {
        self.context.layout.sandbox(id).run_dir
    }

    fn overlay_dir(&self, id: &str) -> PathBuf {
        self.context.layout.sandbox(id).overlay_dir
    }

    fn exit_file(&self, id: &str) -> PathBuf {
        self.context.layout.sandbox(id).exit_file()
    }

    /// The runtime for a handler name ("" = the default), as configured now.
    pub fn runtime(&self, handler: &str) -> Result<Arc<dyn Runtime>, SandboxError> {
        Ok(self.context.runtime(handler)?)
    }

    /// The runtime of an existing pod: the one it was started with when a reload has since
    /// changed or removed its handler.
    pub fn runtime_of(&self, id: &str, handler: &str) -> Result<Arc<dyn Runtime>, SandboxError> {
        Ok(self.context.runtime_of(id, handler)?)
    }

    /// Reload: the handlers of `config` serve new pods from now on; pods whose handler changed
    /// or went away keep theirs (see [`Pods::runtime_of`]).
    pub fn set_runtimes(&self, config: &crate::config::Config) {
        let pods = self.table.list();
        self.context.runtimes.reload(
            config,
            pods.iter()
                .map(|s| (s.id.as_str(), s.meta.runtime_handler.as_str())),
        );
    }

    pub fn get(&self, id: &str) -> Result<Arc<Sandbox>, SandboxError> {
        self.table
            .get(id)?
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))
    }

    /// The sandbox with this id (or unique id prefix), if there is one: for the calls where an
    /// unknown pod is not an error (Stop and Remove are idempotent).
    pub fn find(&self, id: &str) -> Result<Option<Arc<Sandbox>>, SandboxError> {
        Ok(self.table.get(id)?)
    }

    /// Every sandbox record, those still being created included.
    pub fn list(&self) -> Vec<Arc<Sandbox>> {
        self.table.list()
    }

    /// Records a sandbox as is: a lifecycle test's pod, whose pause and network are never made.
    #[cfg(test)]
    pub(crate) async fn insert_for_tests(
        &self,
        id: &str,
        meta: SandboxMeta,
        status: SandboxStatus,
    ) -> Result<Arc<Sandbox>, StateError> {
        self.table
            .insert_with(id, meta, status, Durability::Crash)
            .await
    }

    /// What the host's kernel and security modules support, as probed at start.
    pub fn host(&self) -> &crate::oci::host::HostFeatures {
        &self.context.host
    }

    /// After a reboot no pause process survived: a pod recorded ready is not ready any more, so
    /// that Stop/Remove reclaim what it still holds without waiting for processes that are gone.
    pub async fn mark_not_ready_after_reboot(&self) {
        for p in self.table.list() {
            if p.status().state == SandboxState::Ready {
                if let Err(e) = p.update(|s| s.state = SandboxState::NotReady).await {
                    tracing::warn!(id = %p.id, error = %e, "cannot mark pod not ready after reboot");
                }
            }
        }
    }

    /// The pod cgroup's limits in force: the last update's, else those written at create.
    pub fn limits(rec: &Sandbox) -> Option<cgroups::CgroupLimits> {
        rec.peek(|st| st.resources.clone())
            .or_else(|| rec.meta.resources.clone())
            .filter(|l| !l.is_empty())
    }

    /// UpdatePodSandboxResources: writes `limits` (overhead plus resources, see
    /// [`spec::pod_limits`]) into the pod cgroup and keeps them in the record. A limit in force that
    /// `limits` no longer sets is lifted, so the pod ends with exactly the limits asked for, and the same
    /// request twice writes the same values.
    pub async fn update_resources(
        &self,
        rec: &Sandbox,
        limits: Option<cgroups::CgroupLimits>,
    ) -> Result<(), SandboxError> {
        if rec.peek(|st| st.state) != SandboxState::Ready {
            return Err(SandboxError::NotReady { id: rec.id.clone() });
        }
        let wanted = limits.unwrap_or_default();
        let write = lifted_limits(Self::limits(rec).as_ref(), &wanted, cgroups::is_v2());
        // kubelet resizes its own slice before it calls this (the systemd driver's pod cgroups
        // are kubelet's, as at RunPodSandbox): only the record changes then.
        let driver = self.context.config.load().runtime.cgroup_manager;
        let kubelets = driver == CgroupDriver::Systemd
            && !owns_pod_cgroup(driver, &rec.meta.cgroup_parent, &rec.id);
        if !write.is_empty() && !kubelets {
            let dir = if rec.meta.cgroup_dir.is_empty() {
                rec.meta.cgroup_parent.clone()
            } else {
                rec.meta.cgroup_dir.clone()
            };
            let path = PathBuf::from(&dir);
            tokio::task::spawn_blocking(move || cgroups::apply_limits(&dir, &write))
                .await
                .map_err(|e| SandboxError::Io {
                    path,
                    source: std::io::Error::other(e),
                })??;
        }
        rec.update(|st| st.resources = Some(wanted)).await?;
        Ok(())
    }

    /// RunPodSandbox. A retry of the same pod (same name key) gets the same id.
    pub async fn run(self: &Arc<Self>, req: RunRequest<'_>) -> Result<String, SandboxError> {
        let md = req.metadata.as_ref().ok_or_else(|| SandboxError::Invalid {
            field: "metadata".into(),
            reason: "pod sandbox config has no metadata".into(),
        })?;
        for (field, v) in [
            ("metadata.name", &md.name),
            ("metadata.namespace", &md.namespace),
            ("metadata.uid", &md.uid),
        ] {
            if v.is_empty() {
                return Err(SandboxError::Invalid {
                    field: field.into(),
                    reason: "must not be empty".into(),
                });
            }
        }
        let runtime = self.runtime(req.runtime_handler)?;
        let name_key = format!("{}_{}_{}_{}", md.name, md.namespace, md.uid, md.attempt);

        // A retry (kubelet gave up waiting) waits here for the first attempt and then gets its
        // id instead of "name is reserved".
        self.creating
            .run(&name_key, || self.run_locked(&name_key, &runtime, &req))
            .await
    }

    async fn run_locked(
        self: &Arc<Self>,
        name_key: &str,
        runtime: &Arc<dyn Runtime>,
        req: &RunRequest<'_>,
    ) -> Result<String, SandboxError> {
        if let Some(existing) = self.names.get(name_key) {
            if let Ok(Some(s)) = self.table.get(&existing) {
                if s.status().state != SandboxState::Creating {
                    tracing::debug!(id = %existing, name = %name_key, "run pod sandbox retried; same id");
                    return Ok(existing);
                }
            }
        }
        let name_key = name_key.to_string();

        let id = crate::state::new_id();
        self.names
            .reserve(&name_key, &id)
            .map_err(|holder| SandboxError::Invalid {
                field: "metadata.name".into(),
                reason: format!("name {name_key:?} is reserved for pod sandbox {holder}"),
            })?;
        let mut rb = Rollback::new();
        {
            let this = self.clone();
            let (k, i) = (name_key.clone(), id.clone());
            rb.push("release name", async move { this.names.release(&k, &i) });
        }
        let result = self.create(&id, &name_key, runtime, req, &mut rb).await;
        rb.finish(result.map(|()| id.clone()), "pod sandbox", &id)
            .await
    }

    async fn create(
        self: &Arc<Self>,
        id: &str,
        name_key: &str,
        runtime: &Arc<dyn Runtime>,
        req: &RunRequest<'_>,
        rb: &mut Rollback,
    ) -> Result<(), SandboxError> {
        let md = req.metadata.clone().unwrap_or_default();
        let driver = self.context.config.load().runtime.cgroup_manager;
        let pod_cg = pod_cgroup(driver, &req.cgroup_parent, id)?;
        let cgroup_parent = pod_cg.parent.clone();
        // Refuse bad sysctls before anything is made (the pause spec checks them again).
        spec::validate_sysctls(Some(&req.sysctls), req.host_network, req.host_ipc)?;
        // No hostname: the node's, as CRI-O and containerd do (a pod name may be longer than
        // the 64 bytes sethostname accepts; kubelet always sets one for its pods).
        let hostname = if req.hostname.is_empty() {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "localhost".into())
        } else {
            req.hostname.clone()
        };
        if hostname.len() > 64 {
            return Err(SandboxError::Invalid {
                field: "hostname".into(),
                reason: format!("{hostname:?} is longer than 64 bytes"),
            });
        }
        let user_maps = self.user_namespace_plan(runtime, req)?;
        let run_dir = self.run_dir(id);
        let ns_dir = self.context.config.load().namespaces_dir();
        let pinned_plan = namespaces::Pinned {
            net: (!req.host_network).then(|| namespaces::path_for(&ns_dir, "net", id)),
            ipc: (!req.host_ipc).then(|| namespaces::path_for(&ns_dir, "ipc", id)),
            uts: (!req.host_network).then(|| namespaces::path_for(&ns_dir, "uts", id)),
            user: user_maps
                .is_some()
                .then(|| namespaces::path_for(&ns_dir, "user", id)),
        };
        let meta = SandboxMeta {
            name: md.name.clone(),
            namespace: md.namespace.clone(),
            uid: md.uid.clone(),
            attempt: md.attempt,
            name_key: name_key.to_string(),
            config: req.raw.clone(),
            request: req.facts.clone(),
            labels: req.labels.clone(),
            annotations: req.annotations.clone(),
            runtime_handler: runtime.name().to_string(),
            created_at: now_ns(),
            hostname: hostname.clone(),
            log_directory: req.log_directory.clone(),
            cgroup_parent: cgroup_parent.clone(),
            cgroup_dir: pod_cg.dir.clone(),
            resources: req.resources.clone(),
            host_network: req.host_network,
            namespaces: pinned_plan.clone(),
            pod_files: files::PodFilePaths {
                hostname: run_dir.join("hostname"),
                hosts: run_dir.join("hosts"),
                resolv_conf: run_dir.join("resolv.conf"),
            },
            port_mappings: req.port_mappings.clone(),
        };

        // Record first, so a daemon killed from here on finds the object and reaps it.
        let rec = self
            .table
            .insert(id, meta, SandboxStatus::default())
            .await?;
        {
            let this = self.clone();
            let id = id.to_string();
            rb.push("remove record", async move {
                let _ = this.table.remove(&id).await;
            });
        }
        {
            let rd = run_dir.clone();
            rb.push("remove run dir", async move {
                let _ = tokio::fs::remove_dir_all(&rd).await;
            });
        }
        {
            let this = self.clone();
            let cg = pod_cg.clone();
            rb.push("remove cgroup", async move {
                this.release_pod_cgroup(driver, &cg.parent, &cg.dir, cg.owned)
                    .await;
            });
        }
        // The pod cgroup's limits, before anything runs in it (runc only creates the leaves).
        self.prepare_pod_cgroup(driver, &pod_cg, rec.meta.resources.clone())
            .await?;

        // Namespaces.
        let want = namespaces::Wanted {
            net: pinned_plan.net.is_some(),
            ipc: pinned_plan.ipc.is_some(),
            uts: pinned_plan.uts.is_some(),
            user: user_maps,
        };
        let (d, i, h) = (ns_dir.clone(), id.to_string(), hostname.clone());
        let pinned = tokio::task::spawn_blocking(move || namespaces::pin(&d, &i, want, &h))
            .await
            .map_err(|e| SandboxError::Io {
                path: ns_dir.clone(),
                source: std::io::Error::other(e),
            })??;
        {
            let p = pinned.clone();
            rb.push("unpin namespaces", async move {
                let _ = tokio::task::spawn_blocking(move || namespaces::unpin(&p)).await;
            });
        }

        // The network and the pause container do not wait for each other: the pause joins a
        // pinned netns whether or not CNI has configured it yet, and CNI only needs the netns.
        // Both are chains of processes (the plugins and iptables; the monitor and runc), so
        // side by side a pod is ready in about the time of the longer one. Each keeps its own
        // undo list; both are then stacked on top of the namespaces' undo, so the DEL still
        // runs before the namespaces are unpinned.
        let mut net_rb = Rollback::new();
        let mut pause_rb = Rollback::new();
        let net = async {
            match &pinned.net {
                Some(netns) => self.attach_network(id, &rec, netns, &mut net_rb).await,
                None => Ok(Vec::new()),
            }
        };
        let pause = self.create_pause(
            PauseInput {
                id,
                rec: &rec,
                runtime,
                request: req.spec,
                pinned: &pinned,
                cgroups_path: pod_cg.pause_path.clone(),
                hostname: &hostname,
            },
            &mut pause_rb,
        );
        let (ips, paused) = tokio::join!(net, pause);
        rb.absorb(net_rb);
        rb.absorb(pause_rb);
        let ips = ips?;
        paused?;

        // Pod files: /etc/hosts names the pod's first IP.
        let (rd, hn, ip0, dns) = (
            run_dir.clone(),
            hostname.clone(),
            ips.first().cloned(),
            req.dns.clone(),
        );
        tokio::task::spawn_blocking(move || files::write(&rd, &hn, ip0.as_deref(), &dns))
            .await
            .map_err(|e| SandboxError::Io {
                path: run_dir.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(io_err(&run_dir))?;
        if let Some(hook) = req.before_ready {
            hook.before_ready(&rec, &ips)
                .await
                .map_err(|reason| SandboxError::Refused {
                    id: id.to_string(),
                    reason,
                })?;
        }
        // Ready is a fact of this boot (after a reboot the pause is gone): no fsync.
        rec.update_with(Durability::Crash, |s| {
            s.state = SandboxState::Ready;
            s.ips = ips.clone();
        })
        .await?;
        self.watch_pause(rec.clone());
        tracing::info!(id = %id, pod = %format!("{}/{}", md.namespace, md.name), ip = ?ips, "pod sandbox ready");
        Ok(())
    }

    /// The user namespace the request asks for, checked before anything is made: its mappings
    /// valid, the pod's other namespaces its own (a user namespace owns them), and the node and
    /// the handler able to run it. `None` for the host's.
    fn user_namespace_plan(
        &self,
        runtime: &Arc<dyn Runtime>,
        req: &RunRequest<'_>,
    ) -> Result<Option<namespaces::UserMaps>, SandboxError> {
        let Some((uids, gids)) = req.spec.user_namespace()? else {
            return Ok(None);
        };
        spec::validate_id_ranges("namespace_options.userns_options.uids", &uids)?;
        spec::validate_id_ranges("namespace_options.userns_options.gids", &gids)?;
        let host_pid = req.facts.namespace_modes.pid == super::record::NamespaceMode::Node;
        if req.host_network || req.host_ipc || host_pid {
            return Err(SandboxError::Invalid {
                field: "namespace_options.userns_options".into(),
                reason: "a pod with its own user namespace cannot share the host's network, \
                         ipc or pid namespace"
                    .into(),
            });
        }
        if !self.context.host.idmapped_mounts {
            return Err(SandboxError::Unsupported {
                handler: runtime.name().to_string(),
                reason: "this node's kernel offers no user namespaces with idmapped overlay \
                         mounts (5.19 or newer)"
                    .into(),
            });
        }
        if !runtime.user_namespaces() {
            return Err(SandboxError::Unsupported {
                handler: runtime.name().to_string(),
                reason: "the runtime does not support user namespaces".into(),
            });
        }
        Ok(Some(namespaces::UserMaps {
            uids,
            gids,
            holder: self.context.monitor_path.clone(),
        }))
    }

    /// CNI ADD in the pod's netns; the pod's IPs. Recorded as attached before the ADD, so a
    /// daemon killed during it still runs the DEL that frees the address.
    async fn attach_network(
        self: &Arc<Self>,
        id: &str,
        rec: &Arc<Sandbox>,
        netns: &Path,
        rb: &mut Rollback,
    ) -> Result<Vec<String>, SandboxError> {
        let pod_net = self.pod_network(id, &rec.meta, netns);
        rec.update(|s| s.network_attached = true).await?;
        {
            let this = self.clone();
            let pn = pod_net.clone();
            rb.push("cni del", async move {
                if let Err(e) = this.cni.load().teardown(&pn).await {
                    tracing::warn!(id = %pn.id, error = %e, "cni teardown during rollback failed");
                }
            });
        }
        let st = self.cni.load().setup(&pod_net).await?;
        let ips = st.ips.iter().map(|ip| ip.to_string()).collect();
        let result = st.result;
        rec.update(|s| s.network_result = Some(result)).await?;
        Ok(ips)
    }

    /// The pause container, created and started: its image (pulled on first use), rootfs,
    /// spec and bundle, its monitor and the runtime's create, then start.
    async fn create_pause(&self, p: PauseInput<'_>, rb: &mut Rollback) -> Result<(), SandboxError> {
        let PauseInput {
            id,
            rec,
            runtime,
            request,
            pinned,
            cgroups_path,
            hostname,
        } = p;
        let apparmor_profile = self
            .context
            .apparmor
            .profile_for(&spec::pause_apparmor_request(request)?)
            .await?;
        let config = self.context.config.load();
        let sandbox_image = config.image.sandbox_image.clone();
        let image = match self.images.resolve(&sandbox_image) {
            Some(i) => i,
            None => {
                self.images
                    .pull(&sandbox_image, &config.image, None)
                    .await?
            }
        };
        let layers = self.images.layer_dirs(&image);
        let ov = self.overlay_dir(id);
        let ov2 = ov.clone();
        let mounts = self.context.rootfs.clone();
        let idmap = rec
            .meta
            .rootfs_idmap(self.context.layout.idmap_staging(id, "rootfs"));
        let rootfs =
            tokio::task::spawn_blocking(move || mounts.mount(&layers, &ov2, idmap.as_ref()))
                .await
                .map_err(|e| SandboxError::Io {
                    path: ov.clone(),
                    source: std::io::Error::other(e),
                })??;
        {
            let ov = ov.clone();
            let mounts = self.context.rootfs.clone();
            rb.push("unmount pause rootfs", async move {
                let _ = tokio::task::spawn_blocking(move || mounts.remove(&ov)).await;
            });
        }
        let spec = spec::pod_spec(&spec::PauseSpecInput {
            request,
            image: &image.config,
            rootfs: &rootfs,
            netns: pinned.net.as_deref(),
            ipcns: pinned.ipc.as_deref(),
            utsns: pinned.uts.as_deref(),
            userns: pinned.user.as_deref(),
            cgroups_path: cgroups_path.clone(),
            hostname: hostname.to_string(),
            host: &self.context.host,
            restrict_oom_score_adj: config.runtime.restrict_oom_score_adj,
            apparmor_profile,
        })?;
        let mut spec = spec;
        spec::set_sandbox_id(&mut spec, id);
        let paths = self.context.layout.sandbox(id);
        let bundle = paths.bundle();
        write_bundle(&bundle, &spec).await?;
        {
            let rt = runtime.clone();
            let id = id.to_string();
            rb.push("delete pause container", async move {
                let _ = rt.delete(&id).await;
            });
        }
        let binary = runtime.binary();
        let req = monitor::MonitorSpawn {
            monitor_path: self.context.monitor_path.clone(),
            id: id.to_string(),
            bundle: bundle.clone(),
            runtime_path: binary.path,
            runtime_root: binary.root,
            log_path: None,
            exit_file: paths.exit_file(),
            pid_file: paths.pid_file(),
            handle_file: Some(paths.handle_file()),
            cgroup_dir: cgroups::fs_path(&cgroups_path),
            cgroup_path: Some(cgroups_path),
            tty: false,
            stdin: false,
            stdin_once: false,
            cgroup_v1_view: binary.cgroup_view.is_some(),
            scope: self.context.monitor_scope(&rec.meta.cgroup_parent),
            // Nothing happens between the pause's create and its start: one runtime process
            // (`run --detach`) does both.
            run: true,
        };
        let launched = self.context.monitors.launch(&req).await?;
        // Pids are facts of this boot: no fsync. The monitor is on record before the runtime's
        // run ends, so that a restarted daemon knows whom to wait for.
        let handle = launched.monitor();
        rec.update_with(Durability::Crash, |s| {
            s.monitor_pid = handle.pid;
            s.monitor_start_time = handle.start_time;
        })
        .await?;
        let spawned = launched.created().await?;
        rec.update_with(Durability::Crash, |s| {
            s.pause_created = true;
            s.pause_pid = spawned.container_pid;
        })
        .await?;
        Ok(())
    }

    fn pod_network(&self, id: &str, meta: &SandboxMeta, netns: &Path) -> PodNetwork {
        PodNetwork {
            id: id.to_string(),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
            port_mappings: meta.port_mappings.clone(),
        }
    }

    /// Mark the sandbox not ready when its pause process exits.
    pub fn watch_pause(self: &Arc<Self>, rec: Arc<Sandbox>) {
        let exit_file = self.exit_file(&rec.id);
        let this = self.clone();
        tokio::spawn(async move {
            let handle = rec.status().monitor();
            if !handle.is_set() {
                return;
            }
            let _ = this.context.monitors.wait_exit(handle, &exit_file).await;
            if rec.status().state == SandboxState::Ready {
                tracing::info!(id = %rec.id, "pause process exited; pod sandbox not ready");
                let _ = rec.update(|s| s.state = SandboxState::NotReady).await;
            }
        });
    }

    /// StopPodSandbox for the sandbox itself (its containers are stopped by the caller first):
    /// CNI DEL while the netns still exists, and the pause process killed. Idempotent.
    pub async fn stop(self: &Arc<Self>, rec: &Arc<Sandbox>) -> Result<(), SandboxError> {
        let pinned = rec
            .meta
            .namespaces
            .net
            .as_deref()
            .is_none_or(crate::network::is_netns);
        if rec.status().network_attached && !pinned {
            // The DEL needs the live pause's namespace: network first, then the pause.
            self.stop_network(rec).await?;
            self.stop_pause(rec).await?;
        } else {
            // The pinned netns outlives the pause, so the DEL and the kill need not wait for
            // each other (the DEL's plugins take most of a stop).
            let (net, pause) = tokio::join!(self.stop_network(rec), self.stop_pause(rec));
            net?;
            pause?;
        }
        if rec.status().state != SandboxState::NotReady {
            // A fact of this boot: after a reboot the pause is gone anyway.
            rec.update_with(Durability::Crash, |s| s.state = SandboxState::NotReady)
                .await?;
        }
        Ok(())
    }

    /// CNI DEL, unless it already ran.
    async fn stop_network(&self, rec: &Arc<Sandbox>) -> Result<(), SandboxError> {
        if !rec.status().network_attached {
            return Ok(());
        }
        if let Some(netns) = &rec.meta.namespaces.net {
            let mut pn = self.pod_network(&rec.id, &rec.meta, netns);
            let mut held = None;
            if !crate::network::is_netns(netns) {
                // The pinned file is gone but a live pause still holds the namespace: DEL
                // inside it, or the bridge plugin cannot find the pod's addresses and
                // leaves its masquerade rules behind.
                held = self.live_pause_netns(rec).await;
                if let Some(fd) = &held {
                    // Our own fd keeps the namespace alive even if the pause dies meanwhile.
                    pn.netns = PathBuf::from(format!(
                        "/proc/{}/fd/{}",
                        std::process::id(),
                        fd.as_raw_fd()
                    ));
                    tracing::info!(id = %rec.id, netns = %pn.netns.display(), "pinned netns vanished; using the pause process's");
                }
            }
            self.cni.load().teardown(&pn).await?;
            drop(held);
        }
        // Crash durability: a power loss that undoes this only repeats an idempotent DEL.
        rec.update_with(Durability::Crash, |s| s.network_attached = false)
            .await?;
        Ok(())
    }

    /// SIGKILL to the pause and wait for its monitor to record the exit, unless it did; then
    /// delete it from the runtime and unmount its rootfs, unless that is done.
    async fn stop_pause(&self, rec: &Arc<Sandbox>) -> Result<(), SandboxError> {
        let st = rec.status();
        if !st.pause_created || st.pause_deleted {
            return Ok(());
        }
        // The exit file is the monitor's last act: with it the pause is gone and a second
        // kill (Remove after Stop) would only cost a runtime call.
        let exit_file = self.exit_file(&rec.id);
        let exited = || async { tokio::fs::try_exists(&exit_file).await.unwrap_or(false) };
        let runtime = self.runtime_of(&rec.id, &rec.meta.runtime_handler)?;
        if !exited().await {
            // Not `--all`: the pause is alone in its cgroup (runc would freeze it to find more),
            // and in a shared pid namespace killing it, PID 1, ends the rest.
            runtime.kill(&rec.id, libc::SIGKILL, false).await?;
            if st.monitor().is_set() {
                let _ = tokio::time::timeout(
                    PAUSE_KILL_WAIT,
                    self.context.monitors.wait_exit(st.monitor(), &exit_file),
                )
                .await;
            }
            if !exited().await {
                // RemovePodSandbox deletes it through the runtime, whatever its state.
                return Ok(());
            }
        }
        // The pause is gone: its runtime state and rootfs go now, beside the CNI DEL that
        // takes most of a stop, rather than in RemovePodSandbox after it.
        runtime.delete(&rec.id).await?;
        let ov = self.overlay_dir(&rec.id);
        let mounts = self.context.rootfs.clone();
        tokio::task::spawn_blocking(move || mounts.remove(&ov))
            .await
            .map_err(|e| SandboxError::Io {
                path: self.overlay_dir(&rec.id),
                source: std::io::Error::other(e),
            })??;
        // Crash durability: a power loss that undoes this only repeats an idempotent delete.
        rec.update_with(Durability::Crash, |s| s.pause_deleted = true)
            .await?;
        Ok(())
    }

    /// The pause process's network namespace, opened, when the pause container is running with
    /// the recorded pid (checked after the open, so the fd cannot be a recycled pid's).
    async fn live_pause_netns(&self, rec: &Sandbox) -> Option<std::fs::File> {
        let st = rec.status();
        if !st.pause_created || st.pause_pid <= 0 {
            return None;
        }
        let path = PathBuf::from(format!("/proc/{}/ns/net", st.pause_pid));
        let file = tokio::task::spawn_blocking(move || std::fs::File::open(path))
            .await
            .ok()?
            .ok()?;
        let runtime = self.runtime_of(&rec.id, &rec.meta.runtime_handler).ok()?;
        let state = runtime.state(&rec.id).await.ok()??;
        (state.status == "running" && state.pid == st.pause_pid).then_some(file)
    }

    /// RemovePodSandbox for the sandbox itself (containers removed by the caller first).
    /// Leaves nothing: runtime state, mounts, namespaces, cgroups, files, record. Idempotent.
    pub async fn remove(self: &Arc<Self>, rec: &Arc<Sandbox>) -> Result<(), SandboxError> {
        self.stop(rec).await?;
        let id = rec.id.clone();
        let driver = self.context.config.load().runtime.cgroup_manager;
        let ov = self.overlay_dir(&id);
        let pinned = rec.meta.namespaces.clone();
        // The pause's mounts and namespaces are released while the runtime deletes its state
        // (runc's own start-up is most of a remove), once the pause is known to be gone.
        let mounts = self.context.rootfs.clone();
        let release = move || -> Result<(), SandboxError> {
            mounts.remove(&ov)?;
            namespaces::unpin(&pinned);
            Ok(())
        };
        let join_err = |e: tokio::task::JoinError| SandboxError::Io {
            path: self.overlay_dir(&id),
            source: std::io::Error::other(e),
        };
        if rec.status().pause_created && !rec.status().pause_deleted {
            let runtime = self.runtime_of(&id, &rec.meta.runtime_handler)?;
            let exited = tokio::fs::try_exists(self.exit_file(&id))
                .await
                .unwrap_or(false);
            // No status write after the delete: the record goes below, and a remove retried
            // after a failure in between only repeats the idempotent delete.
            if exited {
                let (deleted, released) =
                    tokio::join!(runtime.delete(&id), tokio::task::spawn_blocking(release));
                deleted?;
                released.map_err(join_err)??;
            } else {
                runtime.delete(&id).await?;
                tokio::task::spawn_blocking(release)
                    .await
                    .map_err(join_err)??;
            }
        } else {
            tokio::task::spawn_blocking(release)
                .await
                .map_err(join_err)??;
        }
        let cg = rec.meta.cgroup_fs_dir().to_string();
        // After the delete: runc removes the leaf, this the pod's cgroup above it.
        let owned = match driver {
            // Records of the cgroupfs driver always had their parent removed with the pod.
            CgroupDriver::Cgroupfs => true,
            CgroupDriver::Systemd => owns_pod_cgroup(driver, &rec.meta.cgroup_parent, &id),
        };
        self.release_pod_cgroup(driver, &rec.meta.cgroup_parent, &cg, owned)
            .await;
        let run_dir = self.run_dir(&id);
        tokio::task::spawn_blocking(move || -> Result<(), SandboxError> {
            match std::fs::remove_dir_all(&run_dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&run_dir)(e)),
                _ => Ok(()),
            }
        })
        .await
        .map_err(|e| SandboxError::Io {
            path: self.run_dir(&id),
            source: std::io::Error::other(e),
        })??;
        self.table.remove(&id).await?;
        self.names.release(&rec.meta.name_key, &id);
        Ok(())
    }

    /// After a daemon restart: finish or reap every sandbox. Half-created ones are removed;
    /// ready ones whose pause died are marked not ready; live ones are watched again.
    pub async fn recover(self: &Arc<Self>) {
        for rec in self.table.list() {
            let st = rec.status();
            if st.state == SandboxState::Creating {
                tracing::info!(id = %rec.id, "reaping pod sandbox left half-created");
                self.end_unrecorded_pause(&rec).await;
                if let Err(e) = self.remove(&rec).await {
                    tracing::warn!(id = %rec.id, error = %e, "cannot reap half-created pod sandbox");
                }
                continue;
            }
            if st.state == SandboxState::Ready {
                if self.context.monitors.alive(st.monitor()) {
                    self.context.keep_monitor_in_scope(
                        &rec.id,
                        st.monitor(),
                        &rec.meta.cgroup_parent,
                    );
                    self.watch_pause(rec.clone());
                } else {
                    let _ = rec.update(|s| s.state = SandboxState::NotReady).await;
                }
            }
        }
    }
}

impl Pods {
    /// A daemon killed while the monitor was creating the pause leaves a monitor, and maybe a
    /// created pause, that the record does not know (`pause_created` is set only once the
    /// create returned): `remove` would skip the runtime's delete and leave the pause, its
    /// monitor and its cgroup behind. Find them and end them through the runtime.
    async fn end_unrecorded_pause(&self, rec: &Arc<Sandbox>) {
        if rec.status().pause_created {
            return;
        }
        let runtime = match self.runtime_of(&rec.id, &rec.meta.runtime_handler) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(id = %rec.id, error = %e, "no runtime to reap a half-created pause with");
                return;
            }
        };
        let paths = self.context.layout.sandbox(&rec.id);
        let half = HalfCreated {
            id: rec.id.clone(),
            monitor: rec.status().monitor(),
            handle_file: paths.handle_file(),
            pid_file: paths.pid_file(),
        };
        let monitors = self.context.monitors.clone();
        let reaped = half_created::reap(&half, &*runtime, monitors, Patience::default()).await;
        if reaped.monitor || reaped.deleted {
            tracing::info!(id = %rec.id, "ended the pause and monitor of a half-created pod sandbox");
        }
    }
}

/// Write `config.json` into a fresh bundle directory.
pub async fn write_bundle(
    bundle: &Path,
    spec: &oci_spec::runtime::Spec,
) -> Result<(), SandboxError> {
    let b = bundle.to_path_buf();
    let json = serde_json::to_vec(spec).map_err(|e| SandboxError::Io {
        path: b.clone(),
        source: std::io::Error::other(e),
    })?;
    tokio::task::spawn_blocking(move || -> Result<(), SandboxError> {
        std::fs::create_dir_all(&b).map_err(io_err(&b))?;
        crate::state::write_atomic(&b.join("config.json"), &json, Durability::PowerLoss)?;
        Ok(())
    })
    .await
    .map_err(|e| SandboxError::Io {
        path: bundle.to_path_buf(),
        source: std::io::Error::other(e),
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_resize_lifts_the_limits_it_no_longer_sets() {
        let before = cgroups::CgroupLimits {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            memory_limit: Some(64 << 20),
        };
        let memory_only = cgroups::CgroupLimits {
            memory_limit: Some(128 << 20),
            ..Default::default()
        };
        assert_eq!(
            lifted_limits(Some(&before), &memory_only, false),
            cgroups::CgroupLimits {
                cpu_shares: Some(1024),
                cpu_quota: Some(-1),
                cpu_period: Some(100_000),
                memory_limit: Some(128 << 20),
            }
        );
        assert_eq!(
            lifted_limits(Some(&before), &memory_only, true).cpu_shares,
            Some(0)
        );
        // The same limits again (or a first update) write exactly what was asked.
        assert_eq!(lifted_limits(Some(&before), &before, false), before);
        assert_eq!(lifted_limits(None, &memory_only, false), memory_only);
    }

    #[test]
    fn cgroupfs_parent_is_absolute_and_defaults_to_ferrio() {
        let c = pod_cgroup(CgroupDriver::Cgroupfs, "", ID).unwrap();
        assert_eq!(c.parent, "/ferrio/0123456789ab");
        assert_eq!(c.dir, "/ferrio/0123456789ab");
        assert_eq!(c.pause_path, format!("/ferrio/0123456789ab/ferrio-{ID}"));
        let c = pod_cgroup(CgroupDriver::Cgroupfs, "/kubepods/burstable/pod1/", ID).unwrap();
        assert_eq!(c.parent, "/kubepods/burstable/pod1");
        assert_eq!(
            c.pause_path,
            format!("/kubepods/burstable/pod1/ferrio-{ID}")
        );
        for bad in ["kubepods", "/", "/a/../b", "kubepods-pod1.slice"] {
            let e = pod_cgroup(CgroupDriver::Cgroupfs, bad, ID).unwrap_err();
            assert!(
                matches!(&e, SandboxError::Invalid { field, .. } if field == "linux.cgroup_parent"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn systemd_parent_is_a_slice_and_the_pause_a_scope() {
        let c = pod_cgroup(CgroupDriver::Systemd, "kubepods-burstable-pod1.slice", ID).unwrap();
        assert_eq!(c.parent, "kubepods-burstable-pod1.slice");
        assert_eq!(
            c.dir,
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice"
        );
        assert_eq!(
            c.pause_path,
            format!("kubepods-burstable-pod1.slice:ferrio:{ID}")
        );
        assert!(!c.owned);
        // A cgroupfs-style path is converted to slice syntax.
        let c = pod_cgroup(CgroupDriver::Systemd, "/kubepods/besteffort/pod2", ID).unwrap();
        assert_eq!(c.parent, "kubepods-besteffort-pod2.slice");
        // ferrio's default gets a slice of its own per pod, never a shared one.
        let c = pod_cgroup(CgroupDriver::Systemd, "", ID).unwrap();
        assert_eq!(c.parent, "ferrio-pod0123456789ab.slice");
        assert_eq!(c.dir, "/ferrio.slice/ferrio-pod0123456789ab.slice");
        assert!(c.owned);
        assert!(owns_pod_cgroup(CgroupDriver::Systemd, &c.parent, ID));
        for bad in [
            "-.slice",
            "/kubepods.slice/kubepods-besteffort-pod1.slice",
            "/kubepods.slice/kubepods--pod1.slice",
        ] {
            let e = pod_cgroup(CgroupDriver::Systemd, bad, ID).unwrap_err();
            assert!(matches!(e, SandboxError::Invalid { .. }), "{bad}: {e}");
        }
    }

    /// `linux.cgroup_parent` exactly as kubelet's systemd driver sends it, per QoS class.
    #[test]
    fn kubelets_systemd_parents_for_every_qos_class() {
        let uid = "5f0c2b1e_8a3d_4c2b_9e1f_0a1b2c3d4e5f";
        for (parent, slice) in [
            (
                format!("/kubepods.slice/kubepods-pod{uid}.slice"),
                format!("kubepods-pod{uid}.slice"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice"
                ),
                format!("kubepods-burstable-pod{uid}.slice"),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice"
                ),
                format!("kubepods-besteffort-pod{uid}.slice"),
            ),
        ] {
            let c = pod_cgroup(CgroupDriver::Systemd, &parent, ID).unwrap();
            assert_eq!(c.parent, slice);
            // Stats and limits read the pod's cgroup where kubelet made it.
            assert_eq!(c.dir, parent);
            assert_eq!(c.pause_path, format!("{slice}:ferrio:{ID}"));
            assert_eq!(
                cgroups::fs_path(&c.pause_path),
                Some(format!("{parent}/ferrio-{ID}.scope"))
            );
            // kubelet's slice: never stopped nor removed by ferrio.
            assert!(!c.owned);
            assert!(!owns_pod_cgroup(CgroupDriver::Systemd, &c.parent, ID));
            // A container of the pod lands next to the pause.
            let ctr = CgroupDriver::Systemd.cgroups_path(&c.parent, "c1");
            assert_eq!(
                cgroups::fs_path(&ctr),
                Some(format!("{parent}/ferrio-c1.scope"))
            );
        }
    }

    #[test]
    fn grace_period_from_the_container_then_the_pod() {
        let ann = |v: &str| BTreeMap::from([(ANN_GRACE_PERIOD.to_string(), v.to_string())]);
        let none = BTreeMap::new();
        assert_eq!(grace_period(&none, &none), 0);
        assert_eq!(grace_period(&none, &ann("30")), 30);
        assert_eq!(grace_period(&ann("5"), &ann("30")), 5);
        assert_eq!(grace_period(&ann("x"), &ann("30")), 30);
        assert_eq!(grace_period(&ann("-3"), &none), 0);
    }
}
