//! The container lifecycle as a state machine, with a fake runtime, fake monitors and a fake
//! rootfs behind the node context's seams: no root, no runc, no mounts. Root and runroot are temp
//! dirs, so what a step leaves on disk is visible.

use super::{Container, ContainerName, ContainerState, ContainerStatus, Containers, CreateRequest};
use crate::config::{Config, Live, LiveConfig};
use crate::context::{DiskLayout, NodeContext, RootfsMounts, Runtimes};
use crate::image::{ImageError, ImageInfo, ImageStore};
use crate::monitor::attach::AttachError;
use crate::monitor::{
    ExitRecord, FoundMonitor, LaunchedMonitor, MonitorError, MonitorLauncher, MonitorSpawn,
    ProcessHandle, Spawned,
};
use crate::network::Cni;
use crate::oci::host::HostFeatures;
use crate::oci::{OciError, OciState, Runtime, RuntimeBinary};
use crate::sandbox::lifecycle::{Pods, SandboxMeta, SandboxState, SandboxStatus};
use crate::state::{Durability, Table};
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a create is made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailAt {
    /// The overlay mount of the rootfs.
    Rootfs,
    /// The caller's last edit of the spec (NRI plugins), after the rootfs is mounted.
    Adjust,
    /// Starting the monitor.
    Launch,
    /// The runtime's create, reported by the monitor.
    Create,
}

/// What the fake runtime, monitors and rootfs share: the containers "running", the calls made.
#[derive(Default)]
struct World {
    /// Every runtime verb and launch, as `"<verb> <id>"` (kill: `"kill <signal> <id>"`), and
    /// every signal request to a monitor, as `"signal <signal> <id>"`.
    calls: Mutex<Vec<String>>,
    /// Containers the runtime knows (created, not deleted).
    known: Mutex<HashSet<String>>,
    /// Exit files of the containers launched, by id.
    exit_files: Mutex<HashMap<String, PathBuf>>,
    /// Container ids by their monitor's pid.
    monitors: Mutex<HashMap<i32, String>>,
    /// The attach socket of each container's monitor, by id.
    attach_sockets: Mutex<HashMap<String, PathBuf>>,
    /// Monitors answer a signal request with an error, as one that predates the request does.
    monitor_refuses_signals: Mutex<bool>,
    fail_at: Mutex<Option<FailAt>>,
    /// The container's process ignores its stop signal (only SIGKILL ends it).
    ignores_stop_signal: Mutex<bool>,
    /// While a test holds its permits, the runtime's create does not finish.
    hold_create: Gate,
    /// The containers the spec edit was told were created, in order.
    adjusted_created: Mutex<Vec<String>>,
    /// The cgroup the spec edit moves containers to, as an NRI plugin may.
    adjust_cgroups_path: Mutex<Option<String>>,
    /// The cgroup each monitor launch was handed, in order.
    launched_cgroups: Mutex<Vec<String>>,
    /// Whether each monitor launch also starts its container (`run`), in order.
    launched_runs: Mutex<Vec<bool>>,
    /// Containers of `known` that run (a monitor's `run` went through): `state` says running.
    running: Mutex<HashSet<String>>,
    /// Monitors (by pid) that outlive a daemon restart: `find` finds them through the handle file
    /// that names them.
    surviving_monitors: Mutex<HashSet<i32>>,
}

/// A monitor a restarted daemon found, still running.
struct SurvivingMonitor;

impl FoundMonitor for SurvivingMonitor {
    fn alive(&self) -> bool {
        true
    }
    fn stop(&self) {}
}

/// Open (`true`) or holding every create back.
struct Gate(tokio::sync::watch::Sender<bool>);

impl Default for Gate {
    fn default() -> Self {
        Gate(tokio::sync::watch::channel(true).0)
    }
}

/// Opens the gate again when dropped.
struct Closed<'a>(&'a Gate);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0 .0.send_replace(true);
    }
}

impl Gate {
    /// Holds every create until the guard is dropped.
    fn close(&self) -> Closed<'_> {
        self.0.send_replace(false);
        Closed(self)
    }

    async fn pass(&self) {
        let mut open = self.0.subscribe();
        let _ = open.wait_for(|o| *o).await;
    }
}

impl World {
    fn log(&self, call: String) {
        self.calls.lock().unwrap().push(call);
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn calls_of(&self, verb: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(verb))
            .collect()
    }

    fn fails_at(&self, at: FailAt) -> bool {
        *self.fail_at.lock().unwrap() == Some(at)
    }

    /// The container's process ends with `code`, as its monitor records it.
    fn exit(&self, id: &str, code: i32) {
        let Some(file) = self.exit_files.lock().unwrap().get(id).cloned() else {
            return;
        };
        if file.exists() {
            return;
        }
        let rec = ExitRecord {
            exit_code: code,
            finished_at: crate::clock::now_ns(),
            oom_killed: false,
        };
        std::fs::write(&file, serde_json::to_vec(&rec).unwrap()).unwrap();
    }

    fn exited(&self, id: &str) -> bool {
        self.exit_files
            .lock()
            .unwrap()
            .get(id)
            .is_none_or(|f| f.exists())
    }
}

struct FakeRuntime {
    world: Arc<World>,
    /// The handler's `defer_create`: containers are created in the runtime at StartContainer.
    defer_create: bool,
}

impl Runtime for FakeRuntime {
    fn name(&self) -> &str {
        "fake"
    }
    fn defer_create(&self) -> bool {
        self.defer_create
    }
    fn binary(&self) -> RuntimeBinary {
        RuntimeBinary {
            path: "/nonexistent/fake-runtime".into(),
            root: "/nonexistent/fake-root".into(),
            cgroup_view: None,
        }
    }
    fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
        self.world.log(format!("start {id}"));
        Box::pin(async { Ok(()) })
    }
    fn kill<'a>(
        &'a self,
        id: &'a str,
        signal: i32,
        _all: bool,
    ) -> BoxFuture<'a, Result<(), OciError>> {
        self.world.log(format!("kill {signal} {id}"));
        if signal == libc::SIGKILL || !*self.world.ignores_stop_signal.lock().unwrap() {
            self.world.exit(id, 128 + signal);
        }
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
        self.world.log(format!("delete {id}"));
        self.world.known.lock().unwrap().remove(id);
        self.world.running.lock().unwrap().remove(id);
        Box::pin(async { Ok(()) })
    }
    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<OciState>, OciError>> {
        self.world.log(format!("state {id}"));
        let known = self.world.known.lock().unwrap().contains(id);
        let status = if self.world.running.lock().unwrap().contains(id) {
            "running"
        } else {
            "created"
        };
        Box::pin(async move {
            Ok(known.then(|| OciState {
                status: status.into(),
                pid: 42,
            }))
        })
    }
    fn update<'a>(
        &'a self,
        id: &'a str,
        _resources: &'a oci_spec::runtime::LinuxResources,
    ) -> BoxFuture<'a, Result<(), OciError>> {
        self.world.log(format!("update {id}"));
        Box::pin(async { Ok(()) })
    }
}

struct FakeLauncher(Arc<World>);

struct FakeLaunched {
    world: Arc<World>,
    id: String,
    handle: ProcessHandle,
    /// The monitor also starts the container.
    run: bool,
}

impl LaunchedMonitor for FakeLaunched {
    fn monitor(&self) -> ProcessHandle {
        self.handle
    }
    fn created(self: Box<Self>) -> BoxFuture<'static, Result<Spawned, MonitorError>> {
        Box::pin(async move {
            // Waits while the test holds creates back.
            self.world.hold_create.pass().await;
            if self.world.fails_at(FailAt::Create) {
                // The runtime got as far as knowing the container.
                self.world.known.lock().unwrap().insert(self.id.clone());
                return Err(MonitorError::Runtime {
                    id: self.id.clone(),
                    message: "fake create failed".into(),
                });
            }
            self.world.known.lock().unwrap().insert(self.id.clone());
            if self.run {
                self.world.running.lock().unwrap().insert(self.id.clone());
            }
            Ok(Spawned {
                monitor_pid: self.handle.pid,
                monitor_start_time: self.handle.start_time,
                container_pid: 42,
            })
        })
    }
}

impl MonitorLauncher for FakeLauncher {
    fn launch<'a>(
        &'a self,
        req: &'a MonitorSpawn,
    ) -> BoxFuture<'a, Result<Box<dyn LaunchedMonitor>, MonitorError>> {
        Box::pin(async move {
            self.0.log(format!("launch {}", req.id));
            self.0
                .launched_cgroups
                .lock()
                .unwrap()
                .push(req.cgroup_path.clone().unwrap_or_default());
            self.0.launched_runs.lock().unwrap().push(req.run);
            // As a real launch does, before the monitor runs; the monitor writes its handle
            // into it, and it stays when the monitor is gone.
            if let Some(path) = &req.handle_file {
                std::fs::write(path, "").unwrap();
            }
            if self.0.fails_at(FailAt::Launch) {
                return Err(MonitorError::Spawn {
                    id: req.id.clone(),
                    path: req.monitor_path.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
            let mut monitors = self.0.monitors.lock().unwrap();
            let handle = ProcessHandle {
                pid: 1_000_000 + monitors.len() as i32,
                start_time: 7,
            };
            monitors.insert(handle.pid, req.id.clone());
            if let Some(path) = &req.handle_file {
                std::fs::write(path, handle.to_line()).unwrap();
            }
            self.0.attach_sockets.lock().unwrap().insert(
                req.id.clone(),
                crate::monitor::attach::socket_path(&req.bundle),
            );
            self.0
                .exit_files
                .lock()
                .unwrap()
                .insert(req.id.clone(), req.exit_file.clone());
            Ok(Box::new(FakeLaunched {
                world: self.0.clone(),
                id: req.id.clone(),
                handle,
                run: req.run,
            }) as Box<dyn LaunchedMonitor>)
        })
    }

    fn find(&self, handle_file: &Path, _recorded: ProcessHandle) -> Option<Box<dyn FoundMonitor>> {
        // The monitors of these tests live only in this process: a restarted daemon finds only
        // those a test says survived, through the handle file that names them.
        let handle = std::fs::read_to_string(handle_file)
            .ok()
            .and_then(|t| ProcessHandle::parse_line(&t))?;
        self.0
            .surviving_monitors
            .lock()
            .unwrap()
            .contains(&handle.pid)
            .then(|| Box::new(SurvivingMonitor) as Box<dyn FoundMonitor>)
    }

    fn wait_exit<'a>(
        &'a self,
        _monitor: ProcessHandle,
        exit_file: &'a Path,
    ) -> BoxFuture<'a, Result<Option<ExitRecord>, MonitorError>> {
        Box::pin(async move {
            loop {
                if let Some(rec) = crate::monitor::read_exit(exit_file)? {
                    return Ok(Some(rec));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    }

    fn alive(&self, monitor: ProcessHandle) -> bool {
        match self.0.monitors.lock().unwrap().get(&monitor.pid) {
            Some(id) => !self.0.exited(id),
            None => false,
        }
    }

    fn signal<'a>(
        &'a self,
        id: &'a str,
        socket: &'a Path,
        signal: i32,
    ) -> BoxFuture<'a, Result<(), MonitorError>> {
        self.0.log(format!("signal {signal} {id}"));
        let refused = |why: &str| MonitorError::Signal {
            id: id.to_string(),
            source: AttachError::Refused(why.into()),
        };
        let answer = if self
            .0
            .attach_sockets
            .lock()
            .unwrap()
            .get(id)
            .map(|p| p.as_path())
            != Some(socket)
        {
            Err(MonitorError::Signal {
                id: id.to_string(),
                source: AttachError::Connect {
                    path: socket.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                },
            })
        } else if *self.0.monitor_refuses_signals.lock().unwrap() {
            Err(refused("unknown frame kind"))
        } else if self.0.exited(id) {
            Err(refused("container already exited"))
        } else {
            if !*self.0.ignores_stop_signal.lock().unwrap() {
                self.0.exit(id, 128 + signal);
            }
            Ok(())
        };
        Box::pin(async move { answer })
    }
}

/// Plain directories instead of overlay mounts.
struct FakeRootfs(Arc<World>);

impl RootfsMounts for FakeRootfs {
    fn mount(
        &self,
        _layers: &[PathBuf],
        dir: &Path,
        _idmap: Option<&crate::image::overlay::Idmap>,
    ) -> Result<PathBuf, ImageError> {
        if self.0.fails_at(FailAt::Rootfs) {
            return Err(ImageError::Mount {
                path: dir.join("merged"),
                reason: "fake mount failed".into(),
            });
        }
        for sub in ["upper", "work", "merged"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        Ok(dir.join("merged"))
    }
    fn unmount(&self, _dir: &Path) -> std::io::Result<()> {
        Ok(())
    }
    fn remove(&self, dir: &Path) -> Result<(), ImageError> {
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io(dir, e)),
            _ => Ok(()),
        }
    }
}

const SANDBOX: &str = "5b0000000000000000000000000000000000000000000000000000000000000a";
const IMAGE: &str = "docker.io/library/busybox:1.36";

/// A node with one ready pod and one image, every seam faked.
struct Node {
    dir: tempfile::TempDir,
    world: Arc<World>,
    layout: DiskLayout,
    pods: Arc<Pods>,
    containers: Arc<Containers>,
    /// The fake runtime's `defer_create`, kept for the restarted daemon.
    defer_create: bool,
}

fn context(dir: &Path, world: &Arc<World>, defer_create: bool) -> Arc<NodeContext> {
    let mut config = Config {
        root: dir.join("root"),
        runroot: dir.join("run"),
        ..Default::default()
    };
    config.runtime.default_runtime = "fake".into();
    let layout = DiskLayout::new(&config.root, &config.runroot);
    let host = HostFeatures {
        apparmor: false,
        selinux: false,
        ..HostFeatures::default()
    };
    let runtime: Arc<dyn Runtime> = Arc::new(FakeRuntime {
        world: world.clone(),
        defer_create,
    });
    Arc::new(NodeContext {
        config: LiveConfig::new(config),
        apparmor: crate::oci::apparmor::AppArmor::for_host(false),
        host,
        runtimes: Runtimes::of([("fake".to_string(), runtime)]),
        layout,
        monitors: Arc::new(FakeLauncher(world.clone())),
        attach_warm: None,
        monitor_path: "/nonexistent/ferrio-monitor".into(),
        rootfs: Arc::new(FakeRootfs(world.clone())),
        systemd: None,
    })
}

impl Node {
    async fn new() -> Node {
        Node::with_defer_create(false).await
    }

    /// A node whose runtime creates containers at StartContainer, with one `run`.
    async fn deferring() -> Node {
        Node::with_defer_create(true).await
    }

    async fn with_defer_create(defer_create: bool) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let world = Arc::new(World::default());
        let ctx = context(dir.path(), &world, defer_create);
        let root = dir.path().join("root");
        let images = Arc::new(ImageStore::open(&root.join("images")).unwrap());
        let mut image = ImageInfo {
            id: format!("sha256:{}", "ab".repeat(32)),
            repo_tags: vec![IMAGE.into()],
            ..Default::default()
        };
        image.config.cmd = vec!["sleep".into(), "3600".into()];
        images.insert_for_tests(image);
        let (sandboxes, _) = Table::open(&root.join("sandboxes")).unwrap();
        let cni = Live::new(Cni::new(
            dir.path().join("net.d"),
            vec![],
            root.join("cni-cache"),
        ));
        let pods = Arc::new(Pods::new(ctx.clone(), sandboxes, images.clone(), cni));
        let meta = SandboxMeta {
            name: "pod".into(),
            namespace: "default".into(),
            uid: "uid".into(),
            attempt: 0,
            name_key: "pod_default_uid_0".into(),
            config: serde_json::Value::Null,
            request: Default::default(),
            labels: Default::default(),
            annotations: Default::default(),
            runtime_handler: "fake".into(),
            created_at: 1,
            hostname: "pod".into(),
            log_directory: String::new(),
            cgroup_parent: "/ferrio-lifecycle-test".into(),
            cgroup_dir: String::new(),
            resources: None,
            host_network: true,
            namespaces: Default::default(),
            pod_files: Default::default(),
            port_mappings: vec![],
        };
        let status = SandboxStatus {
            state: SandboxState::Ready,
            pause_pid: 4242,
            ..Default::default()
        };
        pods.insert_for_tests(SANDBOX, meta, status).await.unwrap();
        let (table, _) = Table::open(&root.join("containers")).unwrap();
        let containers = Arc::new(Containers::new(ctx.clone(), pods.clone(), images, table));
        Node {
            layout: ctx.layout.clone(),
            dir,
            world,
            pods,
            containers,
            defer_create,
        }
    }

    /// The same node after a daemon restart: records reloaded from disk, nothing in memory.
    async fn restarted(&self) -> Arc<Containers> {
        let ctx = context(self.dir.path(), &self.world, self.defer_create);
        let root = self.dir.path().join("root");
        let images = self.containers.images.clone();
        let (table, broken) = Table::open(&root.join("containers")).unwrap();
        assert!(broken.is_empty(), "{broken:?}");
        Arc::new(Containers::new(ctx, self.pods.clone(), images, table))
    }

    async fn create(&self, name: &str) -> Result<String, super::ContainerError> {
        create(&self.containers, &self.world, name).await
    }

    /// Nothing of container `id` is left: no record, no name, no directories.
    fn assert_gone(&self, id: &str, name: &str) {
        assert!(self.containers.table.get(id).unwrap().is_none(), "record");
        assert!(
            self.containers.table.list().is_empty(),
            "records: {:?}",
            self.containers.table.list().iter().map(|c| c.id.clone())
        );
        assert_eq!(self.containers.names.get(&name_key(name)), None, "name");
        let paths = self.layout.container(id);
        assert!(!paths.run_dir.exists(), "{}", paths.run_dir.display());
        assert!(
            !paths.overlay_dir.exists(),
            "{}",
            paths.overlay_dir.display()
        );
        for base in [
            self.layout.overlay_base(),
            self.layout.containers_run_base(),
        ] {
            let left: Vec<_> = std::fs::read_dir(&base)
                .map(|d| d.flatten().map(|e| e.file_name()).collect())
                .unwrap_or_default();
            assert!(left.is_empty(), "{}: {left:?}", base.display());
        }
    }

    fn get(&self, id: &str) -> Arc<Container> {
        self.containers.get(id).unwrap()
    }
}

fn name_key(name: &str) -> String {
    format!("{name}_pod_default_uid_0_0")
}

/// Refuses every spec when the world says so.
struct FakeAdjust(Arc<World>);

impl super::SpecAdjust for FakeAdjust {
    fn adjust<'a>(
        &'a self,
        _id: &'a str,
        spec: oci_spec::runtime::Spec,
        _cdi: crate::spec::NriCdi<'a>,
    ) -> BoxFuture<'a, Result<oci_spec::runtime::Spec, String>> {
        let refuse = self.0.fails_at(FailAt::Adjust);
        let cgroups_path = self.0.adjust_cgroups_path.lock().unwrap().clone();
        Box::pin(async move {
            if refuse {
                return Err("fake plugin refused".into());
            }
            let mut spec = spec;
            if let Some(path) = cgroups_path {
                let mut linux = spec.linux().clone().unwrap_or_default();
                linux.set_cgroups_path(Some(path.into()));
                spec.set_linux(Some(linux));
            }
            Ok(spec)
        })
    }

    fn created<'a>(&'a self, c: &'a Arc<Container>) -> BoxFuture<'a, ()> {
        self.0.adjusted_created.lock().unwrap().push(c.id.clone());
        Box::pin(async {})
    }
}

async fn create(
    containers: &Arc<Containers>,
    world: &Arc<World>,
    name: &str,
) -> Result<String, super::ContainerError> {
    let adjust = FakeAdjust(world.clone());
    let pod = crate::spec::annotations::PodIdentity {
        name: "pod".into(),
        uid: "uid".into(),
        namespace: "default".into(),
    };
    containers
        .create(CreateRequest {
            sandbox_id: SANDBOX,
            metadata: Some(ContainerName {
                name: name.into(),
                attempt: 0,
            }),
            image: IMAGE.into(),
            facts: Default::default(),
            labels: Default::default(),
            annotations: Default::default(),
            log_path: String::new(),
            stop_signal: Default::default(),
            raw: serde_json::Value::Null,
            spec: crate::spec::ContainerRequest::named(name, IMAGE, &pod),
            adjust_spec: Some(&adjust),
        })
        .await
}

/// Polls `cond` for up to five seconds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < until, "never: {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn lifecycle_create_then_start_runs_through_the_seams() {
    let node = Node::new().await;
    let id = node.create("app").await.unwrap();
    let c = node.get(&id);
    assert_eq!(c.status().state(), ContainerState::Created);
    assert_eq!(c.status().pid, 42);
    assert!(c.status().monitor().is_set());
    let bundle = node.layout.container(&id).bundle();
    assert!(bundle.join("config.json").is_file());
    node.containers.start(&id).await.unwrap();
    assert_eq!(c.status().state(), ContainerState::Running);
    assert_eq!(
        node.world.calls(),
        [format!("launch {id}"), format!("start {id}")]
    );
}

/// kubelet retries a CreateContainer that took too long: the retry waits for the first attempt
/// and gets its id, and only one container is made.
#[tokio::test]
async fn lifecycle_create_retry_while_the_first_attempt_runs_gets_the_same_id() {
    let node = Node::new().await;
    // No create finishes until the permits come back.
    let held = node.world.hold_create.close();
    let first = tokio::spawn({
        let (c, w) = (node.containers.clone(), node.world.clone());
        async move { create(&c, &w, "app").await }
    });
    let world = node.world.clone();
    eventually("the first attempt launched its monitor", || {
        !world.calls_of("launch").is_empty()
    })
    .await;
    let retry = tokio::spawn({
        let (c, w) = (node.containers.clone(), node.world.clone());
        async move { create(&c, &w, "app").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !retry.is_finished(),
        "the retry answered while the first attempt runs"
    );
    assert!(!first.is_finished());
    drop(held);
    let a = first.await.unwrap().unwrap();
    let b = retry.await.unwrap().unwrap();
    assert_eq!(a, b);
    assert_eq!(
        node.world.calls_of("launch").len(),
        1,
        "{:?}",
        node.world.calls()
    );
    assert_eq!(node.containers.table.list().len(), 1);
    // And a retry after the first attempt finished gets the same id too.
    assert_eq!(node.create("app").await.unwrap(), a);
    assert_eq!(node.world.calls_of("launch").len(), 1);
}

/// The spec edit (NRI's PostCreateContainer) hears of a container once, however often kubelet retries
/// its create, while the first attempt runs or after it finished.
#[tokio::test]
async fn lifecycle_create_retries_tell_the_spec_edit_once() {
    let node = Node::new().await;
    let held = node.world.hold_create.close();
    let attempts: Vec<_> = (0..3)
        .map(|_| {
            let (c, w) = (node.containers.clone(), node.world.clone());
            tokio::spawn(async move { create(&c, &w, "app").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(held);
    let mut ids = Vec::new();
    for a in attempts {
        ids.push(a.await.unwrap().unwrap());
    }
    ids.push(node.create("app").await.unwrap());
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(*node.world.adjusted_created.lock().unwrap(), ids);
}

/// A cgroup an NRI plugin chose is the container's from then on: recorded and handed to its monitor.
#[tokio::test]
async fn lifecycle_a_cgroups_path_the_spec_edit_sets_is_recorded() {
    let node = Node::new().await;
    *node.world.adjust_cgroups_path.lock().unwrap() = Some("/nri-moved/app".into());
    let id = node.create("app").await.unwrap();
    let c = node.get(&id);
    assert_eq!(c.cgroups_path(), "/nri-moved/app");
    assert_ne!(c.meta.cgroups_path, "/nri-moved/app");
    let bundle = node.layout.container(&id).bundle().join("config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle).unwrap()).unwrap();
    assert_eq!(spec["linux"]["cgroupsPath"], "/nri-moved/app");
    assert_eq!(
        *node.world.launched_cgroups.lock().unwrap(),
        ["/nri-moved/app"]
    );
    // A record read back from disk keeps it.
    let status: super::ContainerStatus = crate::state::decode(
        Path::new("status.json"),
        &crate::state::encode(Path::new("status.json"), &c.status()).unwrap(),
    )
    .unwrap();
    assert_eq!(status.cgroups_path.as_deref(), Some("/nri-moved/app"));
    // Without an edit the path made at create stands.
    *node.world.adjust_cgroups_path.lock().unwrap() = None;
    let other = node.get(&node.create("other").await.unwrap());
    assert_eq!(other.cgroups_path(), other.meta.cgroups_path);
}

/// A create that fails at `at` leaves nothing behind, and the runtime is told to delete what
/// it may have begun exactly when the monitor was asked to create.
async fn rollback_at(at: FailAt) {
    let node = Node::new().await;
    *node.world.fail_at.lock().unwrap() = Some(at);
    let err = node.create("app").await.unwrap_err().to_string();
    let launched = node.world.calls_of("launch");
    let deleted = node.world.calls_of("delete");
    match at {
        FailAt::Rootfs | FailAt::Adjust => {
            let expected = if at == FailAt::Rootfs {
                "fake mount failed"
            } else {
                "fake plugin refused"
            };
            assert!(err.contains(expected), "{err}");
            assert!(
                launched.is_empty() && deleted.is_empty(),
                "{:?}",
                node.world.calls()
            );
        }
        FailAt::Launch | FailAt::Create => {
            assert_eq!(launched.len(), 1);
            let id = launched[0].trim_start_matches("launch ");
            assert_eq!(deleted, [format!("delete {id}")]);
            assert!(
                node.world.known.lock().unwrap().is_empty(),
                "left in the runtime"
            );
            node.assert_gone(id, "app");
        }
    }
    node.assert_gone("none", "app");
    // The name is free again: a later attempt succeeds.
    *node.world.fail_at.lock().unwrap() = None;
    let id = node.create("app").await.unwrap();
    assert_eq!(node.get(&id).status().state(), ContainerState::Created);
}

#[tokio::test]
async fn lifecycle_rollback_when_the_rootfs_mount_fails() {
    rollback_at(FailAt::Rootfs).await;
}

#[tokio::test]
async fn lifecycle_rollback_when_the_spec_is_refused_after_the_rootfs_is_mounted() {
    rollback_at(FailAt::Adjust).await;
}

#[tokio::test]
async fn lifecycle_rollback_when_the_monitor_does_not_start() {
    rollback_at(FailAt::Launch).await;
}

#[tokio::test]
async fn lifecycle_rollback_when_the_runtimes_create_fails() {
    rollback_at(FailAt::Create).await;
}

/// Requests refused before anything is made leave nothing either.
#[tokio::test]
async fn lifecycle_rollback_when_the_request_is_refused() {
    let node = Node::new().await;
    node.pods
        .get(SANDBOX)
        .unwrap()
        .update(|s| s.state = SandboxState::NotReady)
        .await
        .unwrap();
    let err = node.create("app").await.unwrap_err().to_string();
    assert!(err.contains("not ready"), "{err}");
    assert!(node.world.calls().is_empty());
    node.assert_gone("none", "app");
}

/// The signals sent to containers, in order: `"signal <signo> <id>"` through a monitor, `"kill
/// <signo> <id>"` through the runtime.
fn signals_sent(world: &World) -> Vec<String> {
    world
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("signal ") || c.starts_with("kill "))
        .collect()
}

/// StopContainer: the stop signal through the monitor, and SIGKILL through the runtime (to
/// every process of the container) once the timeout passed without an exit.
#[tokio::test]
async fn lifecycle_stop_sends_sigkill_after_the_timeout() {
    let node = Node::new().await;
    *node.world.ignores_stop_signal.lock().unwrap() = true;
    let id = node.create("app").await.unwrap();
    node.containers.start(&id).await.unwrap();
    let c = node.get(&id);
    let began = std::time::Instant::now();
    node.containers.stop(&c, 1).await.unwrap();
    assert!(
        began.elapsed() >= Duration::from_secs(1),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(
        signals_sent(&node.world),
        [
            format!("signal {} {id}", libc::SIGTERM),
            format!("kill {} {id}", libc::SIGKILL)
        ]
    );
    let st = c.status();
    assert_eq!(st.state(), ContainerState::Exited);
    assert_eq!(st.exit_code, 128 + libc::SIGKILL);
    // The exit is recorded once the runtime deleted the container.
    assert!(st.runtime_deleted);
    assert_eq!(node.world.calls_of("delete"), [format!("delete {id}")]);
}

/// A container that obeys its stop signal gets no SIGKILL, and its monitor sends the stop
/// signal: no runtime process runs for it.
#[tokio::test]
async fn lifecycle_stop_within_the_timeout_sends_no_sigkill() {
    let node = Node::new().await;
    let id = node.create("app").await.unwrap();
    node.containers.start(&id).await.unwrap();
    let c = node.get(&id);
    node.containers.stop(&c, 30).await.unwrap();
    assert_eq!(
        signals_sent(&node.world),
        [format!("signal {} {id}", libc::SIGTERM)]
    );
    assert_eq!(c.status().exit_code, 128 + libc::SIGTERM);
    // Stopping an exited container again asks nothing.
    node.containers.stop(&c, 30).await.unwrap();
    assert_eq!(signals_sent(&node.world).len(), 1);
}

/// A monitor that refuses the signal request (one that predates it, or has no init to signal)
/// leaves the stop signal to the runtime's kill; the SIGKILL after the timeout goes through the
/// runtime as always.
#[tokio::test]
async fn lifecycle_stop_falls_back_to_the_runtimes_kill_when_the_monitor_refuses() {
    let node = Node::new().await;
    *node.world.monitor_refuses_signals.lock().unwrap() = true;
    let id = node.create("app").await.unwrap();
    node.containers.start(&id).await.unwrap();
    let c = node.get(&id);
    node.containers.stop(&c, 30).await.unwrap();
    assert_eq!(
        signals_sent(&node.world),
        [
            format!("signal {} {id}", libc::SIGTERM),
            format!("kill {} {id}", libc::SIGTERM)
        ]
    );
    assert_eq!(c.status().exit_code, 128 + libc::SIGTERM);

    *node.world.ignores_stop_signal.lock().unwrap() = true;
    let id2 = node.create("app2").await.unwrap();
    node.containers.start(&id2).await.unwrap();
    let c2 = node.get(&id2);
    node.containers.stop(&c2, 1).await.unwrap();
    assert_eq!(
        signals_sent(&node.world)[2..],
        [
            format!("signal {} {id2}", libc::SIGTERM),
            format!("kill {} {id2}", libc::SIGTERM),
            format!("kill {} {id2}", libc::SIGKILL)
        ]
    );
    assert_eq!(c2.status().exit_code, 128 + libc::SIGKILL);
}

/// StopContainer with no grace period sends SIGKILL through the runtime only: the monitor's
/// signal is for the stop signal.
#[tokio::test]
async fn lifecycle_stop_without_a_timeout_kills_through_the_runtime() {
    let node = Node::new().await;
    let id = node.create("app").await.unwrap();
    node.containers.start(&id).await.unwrap();
    let c = node.get(&id);
    node.containers.stop(&c, 0).await.unwrap();
    assert_eq!(
        signals_sent(&node.world),
        [format!("kill {} {id}", libc::SIGKILL)]
    );
    assert_eq!(c.status().exit_code, 128 + libc::SIGKILL);
}

/// RemoveContainer twice (kubelet retries, or the second races the first) is fine, and the
/// first leaves nothing behind.
#[tokio::test]
async fn lifecycle_remove_twice_is_fine() {
    let node = Node::new().await;
    let id = node.create("app").await.unwrap();
    node.containers.start(&id).await.unwrap();
    let c = node.get(&id);
    node.containers.remove(&c).await.unwrap();
    node.containers.remove(&c).await.unwrap();
    assert_eq!(
        node.world.calls_of("kill"),
        [format!("kill {} {id}", libc::SIGKILL)]
    );
    assert!(node.world.known.lock().unwrap().is_empty());
    // The trash goes in the background.
    let (layout, id2) = (node.layout.clone(), id.clone());
    eventually("the removed directories are deleted", move || {
        let c = layout.container(&id2);
        std::fs::read_dir(layout.overlay_base()).is_ok_and(|d| d.count() == 0)
            && std::fs::read_dir(layout.containers_run_base()).is_ok_and(|d| d.count() == 0)
            && !c.run_dir.exists()
    })
    .await;
    node.assert_gone(&id, "app");
}

/// A daemon killed during CreateContainer leaves a record that says Creating, and a container
/// the runtime may know: recovery deletes it there and removes everything else.
#[tokio::test]
async fn lifecycle_recovery_reaps_a_container_whose_record_says_creating() {
    let node = Node::new().await;
    let held = node.world.hold_create.close();
    let mut first = Box::pin({
        let (c, w) = (node.containers.clone(), node.world.clone());
        async move { create(&c, &w, "app").await }
    });
    let table = node.containers.clone();
    let on_record = eventually("the monitor is on record", move || {
        table
            .table
            .list()
            .first()
            .is_some_and(|c| c.status().monitor().is_set())
    });
    tokio::select! {
        r = &mut first => panic!("the create finished while held: {r:?}"),
        () = on_record => {}
    }
    // The daemon dies here: no undo runs. The runtime got as far as knowing the container.
    std::mem::forget(first);
    drop(held);
    let id = node.containers.table.list()[0].id.clone();
    node.world.known.lock().unwrap().insert(id.clone());
    node.world.calls.lock().unwrap().clear();

    let restarted = node.restarted().await;
    let rec = restarted.get(&id).unwrap();
    assert_eq!(rec.status().state(), ContainerState::Creating);
    assert_eq!(
        restarted.names.get(&name_key("app")).as_deref(),
        Some(id.as_str())
    );
    restarted.recover().await;
    let calls = node.world.calls();
    assert!(calls.contains(&format!("state {id}")), "{calls:?}");
    assert!(
        calls.contains(&format!("kill {} {id}", libc::SIGKILL)),
        "{calls:?}"
    );
    assert!(calls.contains(&format!("delete {id}")), "{calls:?}");
    assert!(node.world.known.lock().unwrap().is_empty());
    assert!(restarted.table.list().is_empty());
    assert_eq!(restarted.names.get(&name_key("app")), None);
    let paths = node.layout.container(&id);
    let run_dir = paths.run_dir.clone();
    eventually("the removed directories are deleted", move || {
        !run_dir.exists()
    })
    .await;
    assert!(!paths.overlay_dir.exists());
}

/// A record that says Creating for a create the runtime never heard of (the daemon died before
/// the monitor was up) is removed without a kill.
#[tokio::test]
async fn lifecycle_recovery_of_a_creating_record_the_runtime_does_not_know() {
    let node = Node::new().await;
    let id = crate::state::new_id();
    let meta = {
        // A complete record as a create writes it, then set back to Creating.
        let made = node.create("app").await.unwrap();
        let m = node.get(&made).meta.clone();
        node.containers.remove(&node.get(&made)).await.unwrap();
        m
    };
    node.containers
        .table
        .insert_with(&id, meta, ContainerStatus::default(), Durability::Crash)
        .await
        .unwrap();
    std::fs::create_dir_all(node.layout.container(&id).bundle()).unwrap();
    node.world.calls.lock().unwrap().clear();
    let restarted = node.restarted().await;
    restarted.recover().await;
    assert_eq!(
        node.world.calls(),
        [format!("state {id}"), format!("delete {id}")]
    );
    assert!(restarted.table.list().is_empty());
    assert_eq!(restarted.names.get(&name_key("app")), None);
}

/// The bundle's spec of container `id`, as the runtime's `run` would read it.
fn bundle_spec(node: &Node, id: &str) -> serde_json::Value {
    let path = node.layout.container(id).bundle().join("config.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// With `defer_create`, CreateContainer prepares the bundle only: no monitor, no runtime verb.
#[tokio::test]
async fn lifecycle_deferred_create_leaves_the_runtime_alone() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    assert!(node.world.calls().is_empty(), "{:?}", node.world.calls());
    assert!(node.world.launched_runs.lock().unwrap().is_empty());
    let st = node.get(&id).status();
    assert_eq!(st.state(), ContainerState::Created);
    assert!(st.deferred);
    assert!(st.awaiting_run());
    assert!(!st.monitor().is_set());
    assert_eq!(st.pid, 0);
    assert!(node
        .layout
        .container(&id)
        .bundle()
        .join("config.json")
        .is_file());
}

/// StartContainer of a deferred container is one monitor launch that runs it, and no `start`.
#[tokio::test]
async fn lifecycle_deferred_start_runs_the_container_through_its_monitor() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    node.containers.start(&id).await.unwrap();
    assert_eq!(*node.world.launched_runs.lock().unwrap(), [true]);
    assert_eq!(node.world.calls(), [format!("launch {id}")]);
    let st = node.get(&id).status();
    assert_eq!(st.state(), ContainerState::Running);
    assert!(!st.deferred);
    assert!(!st.awaiting_run());
    assert!(st.monitor().is_set());
    assert_eq!(st.pid, 42);
    assert!(node.world.known.lock().unwrap().contains(&id));
    // Its exit is watched as an eagerly created container's is.
    node.world.exit(&id, 3);
    let c = node.get(&id);
    eventually("the exit is recorded", move || {
        c.status().state() == ContainerState::Exited
    })
    .await;
    assert_eq!(node.get(&id).status().exit_code, 3);
}

/// A run that fails leaves the container created and deferred, with nothing of the attempt in
/// the runtime; a later StartContainer runs it.
#[tokio::test]
async fn lifecycle_deferred_start_that_fails_leaves_the_container_created() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    *node.world.fail_at.lock().unwrap() = Some(FailAt::Create);
    let err = node.containers.start(&id).await.unwrap_err().to_string();
    assert!(err.contains("fake create failed"), "{err}");
    assert_eq!(
        node.world.calls(),
        [format!("launch {id}"), format!("delete {id}")]
    );
    assert!(
        node.world.known.lock().unwrap().is_empty(),
        "left in the runtime"
    );
    let st = node.get(&id).status();
    assert_eq!(st.state(), ContainerState::Created);
    assert!(st.deferred);
    assert!(!st.monitor().is_set());
    assert!(st.awaiting_run());
    assert_eq!(st.pid, 0);

    *node.world.fail_at.lock().unwrap() = None;
    node.containers.start(&id).await.unwrap();
    assert_eq!(*node.world.launched_runs.lock().unwrap(), [true, true]);
    assert!(node.world.calls_of("start").is_empty());
    let st = node.get(&id).status();
    assert_eq!(st.state(), ContainerState::Running);
    assert!(!st.deferred);
    assert_eq!(st.pid, 42);
}

/// A second StartContainer while the first one's run is under way is refused rather than
/// racing it with a second `run` of the same id.
#[tokio::test]
async fn lifecycle_deferred_start_while_one_runs_is_refused() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    let held = node.world.hold_create.close();
    let first = tokio::spawn({
        let (c, id) = (node.containers.clone(), id.clone());
        async move { c.start(&id).await }
    });
    let c = node.get(&id);
    eventually("the monitor is on record", move || {
        c.status().monitor().is_set()
    })
    .await;
    let err = node.containers.start(&id).await.unwrap_err().to_string();
    assert!(err.contains("being started already"), "{err}");
    assert!(!first.is_finished());
    drop(held);
    first.await.unwrap().unwrap();
    assert_eq!(*node.world.launched_runs.lock().unwrap(), [true]);
    assert_eq!(node.get(&id).status().state(), ContainerState::Running);
}

/// StopContainer of a deferred container that was never started asks the runtime nothing, and
/// RemoveContainer after it deletes nothing there.
#[tokio::test]
async fn lifecycle_deferred_stop_and_remove_before_start_ask_the_runtime_nothing() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    let c = node.get(&id);
    node.containers.stop(&c, 30).await.unwrap();
    let st = c.status();
    assert_eq!(st.state(), ContainerState::Exited);
    assert_eq!(st.exit_code, 128 + libc::SIGKILL);
    assert!(
        st.message.contains("before it was started"),
        "{}",
        st.message
    );
    assert!(st.runtime_deleted);
    assert!(node.world.calls().is_empty(), "{:?}", node.world.calls());
    node.containers.remove(&c).await.unwrap();
    assert!(node.world.calls().is_empty(), "{:?}", node.world.calls());
    let (layout, id2) = (node.layout.clone(), id.clone());
    eventually("the removed directories are deleted", move || {
        !layout.container(&id2).run_dir.exists()
            && std::fs::read_dir(layout.overlay_base()).is_ok_and(|d| d.count() == 0)
            && std::fs::read_dir(layout.containers_run_base()).is_ok_and(|d| d.count() == 0)
    })
    .await;
    node.assert_gone(&id, "app");
}

/// RemoveContainer of a deferred container that was never stopped needs no runtime either.
#[tokio::test]
async fn lifecycle_deferred_remove_before_start_asks_the_runtime_nothing() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    node.containers.remove(&node.get(&id)).await.unwrap();
    assert!(node.world.calls().is_empty(), "{:?}", node.world.calls());
    assert!(node.containers.table.list().is_empty());
}

/// UpdateContainerResources before a deferred container runs writes the limits into the spec
/// its `run` reads.
#[tokio::test]
async fn lifecycle_deferred_update_before_start_edits_the_bundle() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    let limit = 64 << 20;
    node.containers
        .update_resources(
            &id,
            crate::container::record::Resources {
                memory_limit_in_bytes: limit,
                cpu_shares: 512,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(node.world.calls().is_empty(), "{:?}", node.world.calls());
    let spec = bundle_spec(&node, &id);
    let resources = &spec["linux"]["resources"];
    assert_eq!(resources["memory"]["limit"], limit, "{resources}");
    assert_eq!(resources["cpu"]["shares"], 512, "{resources}");
    let st = node.get(&id).status();
    assert_eq!(
        st.resources.map(|r| r.memory_limit_in_bytes),
        Some(limit),
        "recorded for ContainerStatus"
    );
    // Once it runs, an update goes through the runtime.
    node.containers.start(&id).await.unwrap();
    node.containers
        .update_resources(
            &id,
            crate::container::record::Resources {
                memory_limit_in_bytes: 2 * limit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(node.world.calls_of("update"), [format!("update {id}")]);
}

/// After a restart, a deferred container nobody started is still created, and the runtime is
/// asked nothing about it.
#[tokio::test]
async fn lifecycle_recovery_keeps_a_deferred_container_that_was_never_started() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    let restarted = node.restarted().await;
    restarted.recover().await;
    assert!(node.world.calls().is_empty(), "{:?}", node.world.calls());
    let st = restarted.get(&id).unwrap().status();
    assert_eq!(st.state(), ContainerState::Created);
    assert!(st.awaiting_run());
    // And the restarted daemon starts it.
    restarted.start(&id).await.unwrap();
    assert_eq!(
        restarted.get(&id).unwrap().status().state(),
        ContainerState::Running
    );
    assert_eq!(*node.world.launched_runs.lock().unwrap(), [true]);
}

/// A daemon killed while a deferred container's monitor runs it leaves the monitor on record.
/// When the runtime did not get as far as running the container, recovery deletes what the
/// attempt left there (as for a half-created create), drops the attempt's answers, and the
/// container is created again: the next StartContainer runs it once.
#[tokio::test]
async fn lifecycle_recovery_undoes_a_deferred_start_the_runtime_did_not_run() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    let held = node.world.hold_create.close();
    let mut start = Box::pin({
        let (c, id) = (node.containers.clone(), id.clone());
        async move { c.start(&id).await }
    });
    let c = node.get(&id);
    let on_record = eventually("the monitor is on record", move || {
        c.status().monitor().is_set()
    });
    tokio::select! {
        r = &mut start => panic!("the start finished while held: {r:?}"),
        () = on_record => {}
    }
    // The daemon dies here. The runtime got as far as creating the container, and the attempt
    // left an exit file a next start must not read.
    std::mem::forget(start);
    drop(held);
    node.world.known.lock().unwrap().insert(id.clone());
    let exit_file = node.layout.container(&id).exit_file();
    std::fs::write(&exit_file, b"{\"exit_code\":1,\"finished_at\":1}").unwrap();
    node.world.calls.lock().unwrap().clear();

    let restarted = node.restarted().await;
    assert!(restarted.get(&id).unwrap().status().deferred);
    restarted.recover().await;
    assert_eq!(
        node.world.calls(),
        [
            format!("state {id}"),
            format!("state {id}"),
            format!("kill {} {id}", libc::SIGKILL),
            format!("delete {id}")
        ]
    );
    assert!(node.world.known.lock().unwrap().is_empty());
    assert!(!exit_file.exists(), "the attempt's exit file is left");
    let st = restarted.get(&id).unwrap().status();
    assert_eq!(st.state(), ContainerState::Created, "{}", st.message);
    assert!(st.awaiting_run());
    assert_eq!(st.pid, 0);
    restarted.start(&id).await.unwrap();
    let rec = restarted.get(&id).unwrap();
    assert_eq!(rec.status().state(), ContainerState::Running);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        rec.status().state(),
        ContainerState::Running,
        "the new run reads the old attempt's exit"
    );
    assert_eq!(*node.world.launched_runs.lock().unwrap(), [true, true]);
}

/// A daemon killed after the monitor was up but before the record named it leaves only the
/// monitor's handle file. When the runtime runs the container, recovery adopts it as started,
/// with the monitor the file names, and watches its exit.
#[tokio::test]
async fn lifecycle_recovery_adopts_a_deferred_start_known_by_its_handle_file() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    let paths = node.layout.container(&id);
    let handle = ProcessHandle {
        pid: 1_234_567,
        start_time: 9,
    };
    std::fs::write(paths.handle_file(), handle.to_line()).unwrap();
    node.world
        .surviving_monitors
        .lock()
        .unwrap()
        .insert(handle.pid);
    // The run is over: the runtime wrote the pid file.
    std::fs::write(paths.pid_file(), "42").unwrap();
    node.world.known.lock().unwrap().insert(id.clone());
    node.world.running.lock().unwrap().insert(id.clone());
    node.world
        .exit_files
        .lock()
        .unwrap()
        .insert(id.clone(), paths.exit_file());

    let restarted = node.restarted().await;
    assert!(!restarted.get(&id).unwrap().status().monitor().is_set());
    restarted.recover().await;
    assert_eq!(node.world.calls(), [format!("state {id}")]);
    let rec = restarted.get(&id).unwrap();
    let st = rec.status();
    assert_eq!(st.state(), ContainerState::Running);
    assert!(!st.deferred);
    assert_eq!(st.monitor(), handle);
    assert_eq!(st.pid, 42);
    assert!(st.started_at > 0);
    node.world.exit(&id, 0);
    eventually("the adopted container's exit is recorded", move || {
        rec.status().state() == ContainerState::Exited
    })
    .await;
}
/// A failed run leaves its monitor's handle file behind, yet no start is under way: after a
/// restart the container is still created, and the restarted daemon runs it.
#[tokio::test]
async fn lifecycle_recovery_keeps_a_deferred_container_whose_start_failed() {
    let node = Node::deferring().await;
    let id = node.create("app").await.unwrap();
    *node.world.fail_at.lock().unwrap() = Some(FailAt::Create);
    node.containers.start(&id).await.unwrap_err();
    *node.world.fail_at.lock().unwrap() = None;
    assert!(node.layout.container(&id).handle_file().exists());
    node.world.calls.lock().unwrap().clear();

    let restarted = node.restarted().await;
    restarted.recover().await;
    assert!(
        node.world.calls_of("kill").is_empty() && node.world.calls_of("delete").is_empty(),
        "{:?}",
        node.world.calls()
    );
    let st = restarted.get(&id).unwrap().status();
    assert_eq!(st.state(), ContainerState::Created, "{}", st.message);
    assert!(st.awaiting_run());
    restarted.start(&id).await.unwrap();
    assert_eq!(
        restarted.get(&id).unwrap().status().state(),
        ContainerState::Running
    );
}
