//! Ending an object (a pause or a container) whose create a daemon kill cut short.
//!
//! Such an object's record says "creating", yet its monitor may still be running the runtime's
//! `create`, and the runtime may already know a container that nobody will start or delete. The
//! monitor is found through the seam [`MonitorLauncher::find`] (its handle file, or the handle on
//! record); the runtime is asked through the [`Runtime`] seam. Touches no other state: the caller
//! removes the object's files, mounts and record afterwards.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::monitor::{FoundMonitor, MonitorLauncher, ProcessHandle};
use crate::oci::Runtime;

/// An object whose create a daemon kill cut short.
#[derive(Debug, Clone)]
pub struct HalfCreated {
    pub id: String,
    /// The monitor on record (unset when the daemon died before the monitor was up).
    pub monitor: ProcessHandle,
    /// The monitor's handle file, which finds a monitor the record does not know.
    pub handle_file: PathBuf,
    /// Where the runtime writes the init's pid once its create is done.
    pub pid_file: PathBuf,
}

/// How long each wait of [`reap`] lasts.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// How long a live monitor may go on with the runtime's create before it is told to give
    /// up: a create cut off midway can strand its init, so it gets the time a create is given.
    pub create: Duration,
    /// How long a monitor gets to exit once its container is deleted or it was told to stop.
    pub exit: Duration,
    /// How often the monitor and the pid file are looked at.
    pub poll: Duration,
}

impl Default for Patience {
    fn default() -> Self {
        Patience {
            create: Duration::from_secs(240),
            exit: Duration::from_secs(10),
            poll: Duration::from_millis(20),
        }
    }
}

/// What [`reap`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reaped {
    /// A live monitor of the object was found.
    pub monitor: bool,
    /// The monitor was still creating when patience ran out and was told to stop.
    pub stopped_monitor: bool,
    /// The runtime knew the object (or could not say), so it was killed and deleted there.
    pub deleted: bool,
}

/// Waits until the object's monitor (if one lives) has finished the runtime's create, then,
/// if the runtime knows the object, kills and deletes it there, and waits for the monitor to go
/// (it writes into the object's run dir until it exits). Problems are logged: recovery goes on.
pub async fn reap(
    h: &HalfCreated,
    runtime: &dyn Runtime,
    monitors: Arc<dyn MonitorLauncher>,
    patience: Patience,
) -> Reaped {
    let mut reaped = Reaped::default();
    let found = let_create_end(h, monitors, patience).await;
    let found = found.map(|(found, stopped)| {
        reaped.monitor = true;
        reaped.stopped_monitor = stopped;
        found
    });
    let known = match runtime.state(&h.id).await {
        Ok(s) => s.is_some(),
        Err(e) => {
            tracing::warn!(id = %h.id, error = %e, "cannot ask the runtime about a half-created object");
            true
        }
    };
    if known {
        if let Err(e) = runtime.kill(&h.id, libc::SIGKILL, false).await {
            tracing::warn!(id = %h.id, error = %e, "cannot kill a half-created object");
        }
        match runtime.delete(&h.id).await {
            Ok(()) => reaped.deleted = true,
            Err(e) => tracing::warn!(id = %h.id, error = %e, "cannot delete a half-created object"),
        }
    }
    if let Some(found) = found {
        let _ = tokio::task::spawn_blocking(move || wait_gone(&*found, patience)).await;
    }
    reaped
}

/// The object's live monitor, if there is one, once it has finished the runtime's create (the
/// pid file is there, or the monitor is gone); `true` with it when patience ran out and the
/// monitor was told to stop.
pub async fn let_create_end(
    h: &HalfCreated,
    monitors: Arc<dyn MonitorLauncher>,
    patience: Patience,
) -> Option<(Box<dyn FoundMonitor>, bool)> {
    let (handle_file, recorded, pid_file) = (h.handle_file.clone(), h.monitor, h.pid_file.clone());
    tokio::task::spawn_blocking(move || {
        let found = monitors.find(&handle_file, recorded)?;
        let deadline = std::time::Instant::now() + patience.create;
        let mut stopped = false;
        while found.alive() && !pid_file.exists() {
            if std::time::Instant::now() >= deadline {
                found.stop();
                stopped = true;
                wait_gone(&*found, patience);
                break;
            }
            std::thread::sleep(patience.poll);
        }
        Some((found, stopped))
    })
    .await
    .unwrap_or_else(|e| {
        tracing::warn!(id = %h.id, error = %e, "waiting for a half-created monitor failed");
        None
    })
}

/// Polls until `found` is gone or `patience.exit` passed. Blocking.
fn wait_gone(found: &dyn FoundMonitor, patience: Patience) {
    let until = std::time::Instant::now() + patience.exit;
    while found.alive() && std::time::Instant::now() < until {
        std::thread::sleep(patience.poll);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{LaunchedMonitor, MonitorError, MonitorSpawn};
    use crate::oci::{OciError, OciState};
    use futures::future::BoxFuture;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A runtime that knows the containers in `known` and logs every verb.
    #[derive(Default)]
    struct FakeRuntime {
        known: Mutex<Vec<String>>,
        verbs: Mutex<Vec<String>>,
        state_fails: bool,
    }

    impl FakeRuntime {
        fn knowing(id: &str) -> FakeRuntime {
            FakeRuntime {
                known: Mutex::new(vec![id.to_string()]),
                ..Default::default()
            }
        }
        fn verbs(&self) -> Vec<String> {
            self.verbs.lock().unwrap().clone()
        }
        fn log(&self, verb: &str, id: &str) {
            self.verbs.lock().unwrap().push(format!("{verb} {id}"));
        }
    }

    impl Runtime for FakeRuntime {
        fn name(&self) -> &str {
            "fake"
        }
        fn binary(&self) -> crate::oci::RuntimeBinary {
            crate::oci::RuntimeBinary {
                path: "/nonexistent/fake".into(),
                root: "/nonexistent/root".into(),
                cgroup_view: None,
            }
        }
        fn start<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
            self.log("start", id);
            Box::pin(async { Ok(()) })
        }
        fn kill<'a>(
            &'a self,
            id: &'a str,
            signal: i32,
            _all: bool,
        ) -> BoxFuture<'a, Result<(), OciError>> {
            self.log(&format!("kill {signal}"), id);
            Box::pin(async { Ok(()) })
        }
        fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), OciError>> {
            self.log("delete", id);
            self.known.lock().unwrap().retain(|k| k != id);
            Box::pin(async { Ok(()) })
        }
        fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<OciState>, OciError>> {
            self.log("state", id);
            let r = if self.state_fails {
                Err(OciError::Failed {
                    runtime: "fake".into(),
                    verb: "state",
                    id: id.into(),
                    message: "broken".into(),
                })
            } else {
                Ok(self
                    .known
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|k| k == id)
                    .then(|| OciState {
                        status: "created".into(),
                        pid: 42,
                    }))
            };
            Box::pin(async move { r })
        }
        fn update<'a>(
            &'a self,
            id: &'a str,
            _resources: &'a oci_spec::runtime::LinuxResources,
        ) -> BoxFuture<'a, Result<(), OciError>> {
            self.log("update", id);
            Box::pin(async { Ok(()) })
        }
    }

    /// A monitor still creating: it writes the runtime's pid file after `creates_for` polls
    /// (never, for `None`); it exits when stopped, or when the runtime deleted its container.
    #[derive(Clone)]
    struct FakeMonitor {
        alive: Arc<AtomicBool>,
        polls: Arc<AtomicUsize>,
        creates_for: Option<usize>,
        pid_file: PathBuf,
        stopped: Arc<AtomicBool>,
        runtime: Arc<FakeRuntime>,
        id: String,
        /// Exits by itself once it reported the create (a failed create).
        fails: bool,
    }

    impl FoundMonitor for FakeMonitor {
        fn alive(&self) -> bool {
            let n = self.polls.fetch_add(1, Ordering::SeqCst);
            if self.creates_for.is_some_and(|c| n >= c) && !self.pid_file.exists() {
                if self.fails {
                    self.alive.store(false, Ordering::SeqCst);
                } else {
                    std::fs::write(&self.pid_file, "42").unwrap();
                    self.runtime.known.lock().unwrap().push(self.id.clone());
                }
            }
            let deleted =
                self.pid_file.exists() && !self.runtime.known.lock().unwrap().contains(&self.id);
            if deleted {
                self.alive.store(false, Ordering::SeqCst);
            }
            self.alive.load(Ordering::SeqCst)
        }
        fn stop(&self) {
            self.stopped.store(true, Ordering::SeqCst);
            self.alive.store(false, Ordering::SeqCst);
        }
    }

    /// Finds `monitor` when the handle file exists.
    struct FakeLauncher(Option<FakeMonitor>);

    impl MonitorLauncher for FakeLauncher {
        fn launch<'a>(
            &'a self,
            _req: &'a MonitorSpawn,
        ) -> BoxFuture<'a, Result<Box<dyn LaunchedMonitor>, MonitorError>> {
            unreachable!("recovery launches nothing")
        }
        fn find(&self, handle_file: &Path, _: ProcessHandle) -> Option<Box<dyn FoundMonitor>> {
            assert!(handle_file.ends_with("monitor.handle"));
            let m = self.0.clone()?;
            m.alive.load(Ordering::SeqCst).then(|| Box::new(m) as _)
        }
        fn wait_exit<'a>(
            &'a self,
            _monitor: ProcessHandle,
            _exit_file: &'a Path,
        ) -> BoxFuture<'a, Result<Option<crate::monitor::ExitRecord>, MonitorError>> {
            unreachable!("recovery of a half-created object waits for no exit")
        }
        fn alive(&self, _monitor: ProcessHandle) -> bool {
            unreachable!("recovery asks the found monitor")
        }
        fn signal<'a>(
            &'a self,
            _id: &'a str,
            _socket: &'a Path,
            _signal: i32,
        ) -> BoxFuture<'a, Result<(), MonitorError>> {
            unreachable!("recovery signals through the runtime's kill")
        }
    }

    const ID: &str = "c1";

    fn half_created(dir: &Path) -> HalfCreated {
        HalfCreated {
            id: ID.into(),
            monitor: ProcessHandle::default(),
            handle_file: dir.join("monitor.handle"),
            pid_file: dir.join("container.pid"),
        }
    }

    fn quick() -> Patience {
        Patience {
            create: Duration::from_millis(300),
            exit: Duration::from_millis(300),
            poll: Duration::from_millis(1),
        }
    }

    fn monitor(dir: &Path, rt: &Arc<FakeRuntime>, creates_for: Option<usize>) -> FakeMonitor {
        FakeMonitor {
            alive: Arc::new(AtomicBool::new(true)),
            polls: Default::default(),
            creates_for,
            pid_file: dir.join("container.pid"),
            stopped: Default::default(),
            runtime: rt.clone(),
            id: ID.into(),
            fails: false,
        }
    }

    /// Killed before the monitor was started: nothing lives, the runtime knows nothing, and
    /// nothing is deleted.
    #[tokio::test]
    async fn nothing_started_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::default();
        let r = reap(
            &half_created(dir.path()),
            &rt,
            Arc::new(FakeLauncher(None)),
            quick(),
        )
        .await;
        assert_eq!(r, Reaped::default());
        assert_eq!(rt.verbs(), ["state c1"]);
    }

    /// Killed after the create, before the record said so (the monitor then died too): the
    /// runtime's container is killed and deleted.
    #[tokio::test]
    async fn a_container_only_the_runtime_knows_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::knowing(ID);
        let r = reap(
            &half_created(dir.path()),
            &rt,
            Arc::new(FakeLauncher(None)),
            quick(),
        )
        .await;
        assert_eq!(
            r,
            Reaped {
                deleted: true,
                ..Default::default()
            }
        );
        assert_eq!(rt.verbs(), ["state c1", "kill 9 c1", "delete c1"]);
    }

    /// Killed while the monitor runs the create: the create is let finish (the runtime knows the
    /// container only then), then the container is deleted and the monitor exits.
    #[tokio::test]
    async fn a_create_in_progress_is_let_finish_then_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::default());
        let m = monitor(dir.path(), &rt, Some(20));
        let r = reap(
            &half_created(dir.path()),
            &*rt,
            Arc::new(FakeLauncher(Some(m.clone()))),
            Patience {
                create: Duration::from_secs(30),
                ..quick()
            },
        )
        .await;
        assert_eq!(
            r,
            Reaped {
                monitor: true,
                stopped_monitor: false,
                deleted: true,
            }
        );
        assert_eq!(rt.verbs(), ["state c1", "kill 9 c1", "delete c1"]);
        assert!(!m.alive.load(Ordering::SeqCst), "the monitor went");
        assert!(!m.stopped.load(Ordering::SeqCst), "never told to stop");
    }

    /// A create that fails while recovery waits: its monitor exits, the runtime knows nothing.
    #[tokio::test]
    async fn a_failing_create_is_waited_for_and_nothing_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::default());
        let m = FakeMonitor {
            fails: true,
            ..monitor(dir.path(), &rt, Some(5))
        };
        let r = reap(
            &half_created(dir.path()),
            &*rt,
            Arc::new(FakeLauncher(Some(m.clone()))),
            quick(),
        )
        .await;
        assert_eq!(
            r,
            Reaped {
                monitor: true,
                ..Default::default()
            }
        );
        assert_eq!(rt.verbs(), ["state c1"]);
        assert!(!m.stopped.load(Ordering::SeqCst));
    }

    /// A create that never ends: the monitor is told to stop once patience runs out, and
    /// whatever the runtime made by then is deleted.
    #[tokio::test]
    async fn a_hung_create_is_stopped_after_the_create_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let rt = Arc::new(FakeRuntime::knowing(ID));
        let m = monitor(dir.path(), &rt, None);
        let started = std::time::Instant::now();
        let r = reap(
            &half_created(dir.path()),
            &*rt,
            Arc::new(FakeLauncher(Some(m.clone()))),
            quick(),
        )
        .await;
        assert!(started.elapsed() >= quick().create);
        assert_eq!(
            r,
            Reaped {
                monitor: true,
                stopped_monitor: true,
                deleted: true,
            }
        );
        assert!(m.stopped.load(Ordering::SeqCst));
        assert_eq!(rt.verbs(), ["state c1", "kill 9 c1", "delete c1"]);
    }

    /// A runtime that cannot answer `state` is still asked to delete: a leak is worse than a
    /// needless delete, which is idempotent.
    #[tokio::test]
    async fn a_runtime_that_cannot_say_is_asked_to_delete() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FakeRuntime {
            state_fails: true,
            ..Default::default()
        };
        let r = reap(
            &half_created(dir.path()),
            &rt,
            Arc::new(FakeLauncher(None)),
            quick(),
        )
        .await;
        assert!(r.deleted);
        assert_eq!(rt.verbs(), ["state c1", "kill 9 c1", "delete c1"]);
    }
}
