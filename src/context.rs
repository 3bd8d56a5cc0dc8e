//! The node context: what pods and containers share about this node. The live config, the host's
//! features, the runtime handlers, the disk layout under root and runroot, and the seams to the
//! processes and mounts the lifecycle makes (monitors, the rootfs overlay).
//!
//! Built once when the daemon starts and handed to [`crate::sandbox::lifecycle::Pods`] and
//! [`crate::container::lifecycle::Containers`] as an `Arc`; a test builds one with fakes behind
//! the seams. Owns no state on disk itself: [`DiskLayout`] only names the paths.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::{CgroupDriver, Config, Live, LiveConfig, RuntimeHandler};
use crate::image::ImageError;
use crate::monitor::{self, MonitorLauncher};
use crate::oci::host::HostFeatures;
use crate::oci::{OciRuntime, Runtime};

/// The file in an object's run dir through which its monitor is found again after a daemon
/// restart, even when the record never learnt its pid (see [`monitor::protocol::HANDLE_FD`]).
pub const MONITOR_HANDLE_FILE: &str = "monitor.handle";

/// What pods and containers share about this node.
pub struct NodeContext {
    /// Swapped on reload: read it once per request with `load()`.
    pub config: LiveConfig,
    pub host: HostFeatures,
    /// The configured handlers, and the ones pods keep across a reload.
    pub runtimes: Runtimes,
    /// Every path under root and runroot that pods and containers use.
    pub layout: DiskLayout,
    /// Starts and finds monitors.
    pub monitors: Arc<dyn MonitorLauncher>,
    /// Started before each runtime process that moves a process into a cgroup (the monitor's
    /// create or run, an exec) where cgroup v1 hierarchies make that move wait; see
    /// [`crate::oci::attach_warm`]. `None` elsewhere.
    pub attach_warm: Option<Arc<crate::oci::attach_warm::AttachWarm>>,
    /// The `ferrio-monitor` binary every monitor runs.
    pub monitor_path: PathBuf,
    /// Mounts and removes the overlay root filesystems.
    pub rootfs: Arc<dyn RootfsMounts>,
    /// Turns AppArmor requests into profiles; loads ferrio's default profile on first use.
    pub apparmor: crate::oci::apparmor::AppArmor,
    /// systemd's D-Bus API where systemd is PID 1 (monitor scopes, ferrio's pod slices); `None`
    /// elsewhere, and then nothing talks D-Bus.
    pub systemd: Option<Arc<crate::systemd::Systemd>>,
}

impl NodeContext {
    /// The context of this host: the handlers of `config`, `ferrio-monitor` processes, overlay
    /// mounts.
    pub fn for_host(config: LiveConfig, host: HostFeatures, monitor_path: PathBuf) -> NodeContext {
        let c = config.load();
        let runtimes = Runtimes::from_config(&c);
        let layout = DiskLayout::new(&c.root, &c.runroot);
        let attach_warm = crate::oci::attach_warm::AttachWarm::of_host();
        NodeContext {
            apparmor: crate::oci::apparmor::AppArmor::for_host(host.apparmor),
            config,
            host,
            runtimes,
            layout,
            monitors: Arc::new(monitor::MonitorProcesses::new(attach_warm.clone())),
            attach_warm,
            monitor_path,
            rootfs: Arc::new(OverlayRootfs),
            systemd: crate::systemd::Systemd::on_this_host(),
        }
    }

    /// The runtime for a handler name ("" = the default), as configured now.
    pub fn runtime(&self, handler: &str) -> Result<Arc<dyn Runtime>, UnknownHandler> {
        let config = self.config.load();
        let name = if handler.is_empty() {
            config.runtime.default_runtime.as_str()
        } else {
            handler
        };
        self.runtimes.get(name)
    }

    /// The runtime of the existing pod `sandbox_id`: the one it was started with when a reload
    /// has since changed or removed its handler.
    pub fn runtime_of(
        &self,
        sandbox_id: &str,
        handler: &str,
    ) -> Result<Arc<dyn Runtime>, UnknownHandler> {
        match self.runtimes.pinned(sandbox_id) {
            Some(r) => Ok(r),
            None => self.runtime(handler),
        }
    }

    /// Where the monitor of an object in a pod with cgroup parent `pod_parent` runs, when
    /// systemd is PID 1: a scope of its own in the pod's slice with the systemd driver (the pod
    /// pays for its monitors, as with CRI-O's `conmon_cgroup = "pod"`), in `system.slice` with
    /// the cgroupfs driver, whose pod cgroups systemd does not know (next to the system's
    /// services, where node allocatable's system-reserved accounts for it; CRI-O's default too).
    pub fn monitor_scope(&self, pod_parent: &str) -> Option<monitor::MonitorScope> {
        let systemd = self.systemd.clone()?;
        let slice = match self.config.load().runtime.cgroup_manager {
            CgroupDriver::Systemd => {
                crate::oci::cgroups::to_slice(pod_parent).unwrap_or_else(|| "system.slice".into())
            }
            CgroupDriver::Cgroupfs => "system.slice".into(),
        };
        Some(monitor::MonitorScope {
            units: systemd,
            slice,
        })
    }

    /// After a daemon restart: a live monitor of object `id` that is not in its scope (started
    /// by a daemon that did not move monitors, or whose move failed) is moved now, in the
    /// background. Does nothing without systemd.
    pub fn keep_monitor_in_scope(
        &self,
        id: &str,
        monitor: monitor::ProcessHandle,
        pod_parent: &str,
    ) {
        let Some(scope) = self.monitor_scope(pod_parent) else {
            return;
        };
        let id = id.to_string();
        tokio::spawn(async move {
            let unit = crate::systemd::monitor_scope_name(&id);
            let u = unit.clone();
            let needed = tokio::task::spawn_blocking(move || {
                monitor.is_alive() && !crate::systemd::runs_in_unit(monitor.pid, &u)
            })
            .await
            .unwrap_or(false);
            if !needed {
                return;
            }
            match crate::systemd::move_monitor(&*scope.units, &id, monitor.pid, &scope.slice).await
            {
                Ok(()) => tracing::info!(%id, %unit, "moved a monitor into its scope"),
                Err(e) => {
                    tracing::warn!(%id, error = %e, "monitor stays in the daemon's cgroup")
                }
            }
        });
    }
}

/// A handler name that no configured (or pinned) runtime answers to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown runtime handler {name:?} (configured: {configured})")]
pub struct UnknownHandler {
    pub name: String,
    /// The configured handler names, comma-separated.
    pub configured: String,
}

/// One configured handler.
#[derive(Clone)]
struct Handler {
    runtime: Arc<dyn Runtime>,
    /// The config entry it was built from, so a reload tells which handlers changed; `None`
    /// for a runtime handed in as is.
    settings: Option<RuntimeHandler>,
}

/// The runtime handlers: the configured ones (swapped on reload), and the ones that pods created
/// before a reload changed or removed their handler keep, so they still stop and remove cleanly.
pub struct Runtimes {
    handlers: Live<HashMap<String, Handler>>,
    /// By sandbox id.
    pinned: Mutex<HashMap<String, Arc<dyn Runtime>>>,
}

impl Runtimes {
    /// One runtime binary per handler of `config`.
    pub fn from_config(config: &Config) -> Runtimes {
        Runtimes {
            handlers: Live::new(handlers_of(config)),
            pinned: Default::default(),
        }
    }

    /// The given runtimes by handler name (a test's fakes).
    pub fn of(runtimes: impl IntoIterator<Item = (String, Arc<dyn Runtime>)>) -> Runtimes {
        let handlers = runtimes
            .into_iter()
            .map(|(name, runtime)| {
                let h = Handler {
                    runtime,
                    settings: None,
                };
                (name, h)
            })
            .collect();
        Runtimes {
            handlers: Live::new(handlers),
            pinned: Default::default(),
        }
    }

    /// The configured handler `name`.
    pub fn get(&self, name: &str) -> Result<Arc<dyn Runtime>, UnknownHandler> {
        let handlers = self.handlers.load();
        match handlers.get(name) {
            Some(h) => Ok(h.runtime.clone()),
            None => {
                let mut names: Vec<&str> = handlers.keys().map(String::as_str).collect();
                names.sort_unstable();
                Err(UnknownHandler {
                    name: name.to_string(),
                    configured: names.join(", "),
                })
            }
        }
    }

    /// The runtime pod `sandbox_id` keeps across a reload, if it keeps one.
    fn pinned(&self, sandbox_id: &str) -> Option<Arc<dyn Runtime>> {
        self.pinned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sandbox_id)
            .cloned()
    }

    /// Reload: the handlers of `config` serve new pods from now on; of `pods` (sandbox id,
    /// handler name), those whose handler changed or went away keep the runtime they had.
    pub fn reload<'a>(&self, config: &Config, pods: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let new = handlers_of(config);
        let old = self.handlers.load();
        let mut pinned = self.pinned.lock().unwrap_or_else(|e| e.into_inner());
        let mut live = HashSet::new();
        for (id, handler) in pods {
            live.insert(id.to_string());
            let Some(before) = old.get(handler) else {
                continue;
            };
            let same = new
                .get(handler)
                .is_some_and(|h| h.settings.is_some() && h.settings == before.settings);
            if !same {
                pinned
                    .entry(id.to_string())
                    .or_insert_with(|| before.runtime.clone());
            }
        }
        pinned.retain(|id, _| live.contains(id));
        self.handlers.store(Arc::new(new));
    }
}

/// One [`OciRuntime`] per configured handler.
fn handlers_of(config: &Config) -> HashMap<String, Handler> {
    config
        .runtime
        .runtimes
        .iter()
        .map(|(name, h)| {
            let root = config.runtime_root(name).unwrap_or_default();
            let runtime = OciRuntime {
                name: name.clone(),
                path: h.runtime_path.clone(),
                root,
                systemd_cgroup: config.runtime.cgroup_manager == CgroupDriver::Systemd,
                cgroup_view: OciRuntime::cgroup_view_for(&h.runtime_path, h.cgroup_v1_view),
                user_namespaces: OciRuntime::probe_user_namespaces(&h.runtime_path),
                defer_create: h.defer_create.unwrap_or(true),
            };
            let handler = Handler {
                runtime: Arc::new(runtime),
                settings: Some(h.clone()),
            };
            (name.clone(), handler)
        })
        .collect()
}

/// Every path under root and runroot that pods and containers use. Root and runroot need a
/// restart to change, so the layout is fixed for the daemon's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    root: PathBuf,
    runroot: PathBuf,
}

impl DiskLayout {
    pub fn new(root: &Path, runroot: &Path) -> DiskLayout {
        DiskLayout {
            root: root.to_path_buf(),
            runroot: runroot.to_path_buf(),
        }
    }

    /// `<root>/overlay`: one overlay rootfs directory per pause and container.
    pub fn overlay_base(&self) -> PathBuf {
        self.root.join("overlay")
    }

    /// `<runroot>/containers`: one run dir per container.
    pub fn containers_run_base(&self) -> PathBuf {
        self.runroot.join("containers")
    }

    /// `<runroot>/idmapped`: idmapped copies of layers and volumes, attached only while a
    /// rootfs is mounted or a runtime creates a container; anything there at start is stale.
    pub fn idmap_staging_base(&self) -> PathBuf {
        self.runroot.join("idmapped")
    }

    /// `<runroot>/idmapped/<id>/<what>`: object `id`'s staging dir for `what` ("rootfs",
    /// "volumes").
    pub fn idmap_staging(&self, id: &str, what: &str) -> PathBuf {
        self.idmap_staging_base().join(id).join(what)
    }

    /// `<root>/image-volumes/<id>`: container `id`'s image volumes, one directory each.
    pub fn image_volumes_dir(&self, id: &str) -> PathBuf {
        self.root.join("image-volumes").join(id)
    }

    /// The paths of container `id`.
    pub fn container(&self, id: &str) -> ObjectPaths {
        ObjectPaths {
            run_dir: self.containers_run_base().join(id),
            overlay_dir: self.overlay_base().join(id),
            pid_file_name: "container.pid",
        }
    }

    /// The paths of pod sandbox `id` (its pause container).
    pub fn sandbox(&self, id: &str) -> ObjectPaths {
        ObjectPaths {
            run_dir: self.runroot.join("sandboxes").join(id),
            overlay_dir: self.overlay_base().join(id),
            pid_file_name: "pause.pid",
        }
    }
}

/// The paths of one object (a container, or a pod's pause container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPaths {
    /// Under runroot: the bundle, the monitor's files, the exit file.
    pub run_dir: PathBuf,
    /// Under root: the overlay (upper, work, merged) of its root filesystem.
    pub overlay_dir: PathBuf,
    pid_file_name: &'static str,
}

impl ObjectPaths {
    /// The OCI bundle (config.json, the monitor's attach socket).
    pub fn bundle(&self) -> PathBuf {
        self.run_dir.join("bundle")
    }

    /// Where the monitor writes the exit record.
    pub fn exit_file(&self) -> PathBuf {
        self.run_dir.join("exit.json")
    }

    /// Where the runtime writes the init's pid once its create is done.
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join(self.pid_file_name)
    }

    /// The monitor's handle file (see [`MONITOR_HANDLE_FILE`]).
    pub fn handle_file(&self) -> PathBuf {
        self.run_dir.join(MONITOR_HANDLE_FILE)
    }

    /// The attach socket of the object's monitor (see [`monitor::attach`]).
    pub fn attach_socket(&self) -> PathBuf {
        monitor::attach::socket_path(&self.bundle())
    }

    /// The overlay's upper dir: the object's writable layer.
    pub fn upper_dir(&self) -> PathBuf {
        self.overlay_dir.join("upper")
    }

    /// The merged root filesystem.
    pub fn rootfs(&self) -> PathBuf {
        self.overlay_dir.join("merged")
    }
}

/// Mounting and removing root filesystems: the seam a lifecycle test puts a fake behind (the
/// overlay mount needs root). Blocking methods.
pub trait RootfsMounts: Send + Sync {
    /// Mounts `layers` (bottom first) under a fresh upper dir in `dir`, seen through `idmap`
    /// when given; returns the merged path. On failure nothing is left mounted.
    fn mount(
        &self,
        layers: &[PathBuf],
        dir: &Path,
        idmap: Option<&crate::image::overlay::Idmap>,
    ) -> Result<PathBuf, ImageError>;
    /// Unmounts the rootfs in `dir`, stacked mounts included, and leaves the directories.
    fn unmount(&self, dir: &Path) -> std::io::Result<()>;
    /// Unmounts what is mounted in `dir` and deletes `dir`; idempotent.
    fn remove(&self, dir: &Path) -> Result<(), ImageError>;
}

/// Overlay mounts (see [`crate::image::overlay`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct OverlayRootfs;

impl RootfsMounts for OverlayRootfs {
    fn mount(
        &self,
        layers: &[PathBuf],
        dir: &Path,
        idmap: Option<&crate::image::overlay::Idmap>,
    ) -> Result<PathBuf, ImageError> {
        crate::image::overlay::mount_rootfs(layers, dir, idmap)
    }

    fn unmount(&self, dir: &Path) -> std::io::Result<()> {
        use nix::errno::Errno;
        use nix::mount::{umount2, MntFlags};
        let merged = dir.join("merged");
        for _ in 0..16 {
            match umount2(&merged, MntFlags::empty()) {
                Ok(()) => continue,
                Err(Errno::EINVAL | Errno::ENOENT) => return Ok(()),
                // Busy (a process still has its cwd inside): detach it lazily.
                Err(Errno::EBUSY) => umount2(&merged, MntFlags::MNT_DETACH)?,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn remove(&self, dir: &Path) -> Result<(), ImageError> {
        crate::image::overlay::unmount_rootfs(dir)
    }
}
