//! The daemon's side of `ferrio-monitor`, ferrio's conmon: launching monitors, finding them again,
//! reading exits, and the async attach client. The monitor program and the wire protocol are the
//! `ferrio-monitor` crate; its modules are re-exported here.
//!
//! # Why one monitor process per container
//!
//! Like conmon (and unlike conmon-rs's one per pod), every container gets its own small monitor:
//! - **isolation**: a monitor that crashes or is OOM-killed loses the logs and exit code of one
//!   container, never of a whole pod or node;
//! - **tiny RSS**: a single-threaded, synchronous process (poll over a signalfd and two pipes, no
//!   async runtime, no allocator churn) costs about as much as conmon, and nothing grows with
//!   the number of containers;
//! - **survives daemon restarts**: the monitor runs in its own session and is not the daemon's
//!   child, so the daemon can be SIGKILLed and restarted while containers run, log and exit; the
//!   exit is recorded durably in the exit file, and a restarted daemon finds the monitor again by
//!   handle ([`wait_exit`] uses a pidfd, which works for processes that are not our children).
//!
//! # What lives where
//!
//! - [`protocol`], [`log`], [`oom`] (re-exported from `ferrio-monitor`): command line, sync-pipe
//!   messages and the exit record; the CRI log format; the OOM-kill counter.
//! - [`attach`]: the daemon-side [`attach::AttachClient`] (CRI Attach, ReopenContainerLog), over
//!   the attach socket's wire protocol from `ferrio-monitor`.
//! - `<runtime> exec` is not monitor business: it is [`crate::oci::exec`].
//! - this file: the daemon side, [`launch`] (then [`Launched::created`]), [`spawn`] (both at
//!   once), [`LiveMonitor::find`], [`read_exit`] and [`wait_exit`]. Monitors are known by
//!   [`ProcessHandle`] (pid + start time) and by the handle file the daemon locks for them, never
//!   by their command line.
//!
//! The daemon starts the container itself (`<runtime> start`) once [`spawn`] returned, and
//! deletes it after the exit; the monitor never starts or deletes the container. It signals the
//! container's init only when asked ([`MonitorLauncher::signal`], StopContainer's stop signal):
//! the init is the monitor's unreaped child, so the pid names that process and no other, and no
//! runtime process has to start for it.

pub mod attach;

pub use ferrio_monitor::{log, oom, protocol};

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};

pub use crate::sys::ProcessHandle;
pub use protocol::ExitRecord;

pub use ferrio_monitor::HOLD_ARG;
use protocol::{MonitorArgs, SyncMessage, HANDLE_FD, SYNC_FD};

/// How long `<runtime> create` may take before the spawn gives up (CRI-O's default too).
const CREATE_TIMEOUT: Duration = Duration::from_secs(240);

/// How long a monitor gets to answer a signal request. It answers from its event loop at once;
/// one that does not is stuck, and the caller has the runtime's kill to fall back on.
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of the daemon-side monitor client.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("container {id}: starting monitor {}: {source}", path.display())]
    Spawn {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("container {id}: {message}")]
    Runtime { id: String, message: String },
    #[error("container {id}: monitor protocol: {message}")]
    Protocol { id: String, message: String },
    /// Reading the monitor's sync pipe failed.
    #[error("container {id}: monitor protocol: {source}")]
    Sync { id: String, source: io::Error },
    #[error("container {id}: create did not finish within {}s", timeout.as_secs())]
    Timeout { id: String, timeout: Duration },
    #[error("reading exit file {}: {source}", path.display())]
    ReadExit { path: PathBuf, source: io::Error },
    #[error("parsing exit file {}: {source}", path.display())]
    ParseExit {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("watching monitor pid {pid}: {source}")]
    Watch { pid: i32, source: io::Error },
    #[error("container {id}: monitor handle file {}: {source}", path.display())]
    HandleFile {
        id: String,
        path: PathBuf,
        source: io::Error,
    },
    /// The monitor did not signal the container's init (see [`MonitorLauncher::signal`]).
    #[error("container {id}: signal through the monitor: {source}")]
    Signal {
        id: String,
        source: attach::AttachError,
    },
    #[error("container {id}: the monitor did not answer a signal request within {}ms", timeout.as_millis())]
    SignalTimeout { id: String, timeout: Duration },
}

/// What the daemon asks a monitor to do for one container.
#[derive(Debug, Clone)]
pub struct MonitorSpawn {
    /// The `ferrio-monitor` binary.
    pub monitor_path: PathBuf,
    /// Container id, as the runtime knows it.
    pub id: String,
    /// OCI bundle directory (config.json and rootfs).
    pub bundle: PathBuf,
    /// The OCI runtime binary.
    pub runtime_path: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// CRI log file; `None` discards the output.
    pub log_path: Option<PathBuf>,
    /// Where the monitor writes the [`ExitRecord`].
    pub exit_file: PathBuf,
    /// Where the runtime writes the container's pid.
    pub pid_file: PathBuf,
    /// The monitor's handle file in the object's run dir (see [`protocol::HANDLE_FD`]): how a
    /// restarted daemon finds a monitor it did not record. `None`: not findable that way.
    pub handle_file: Option<PathBuf>,
    /// The OCI cgroupsPath (its syntax tells the runtime's cgroup driver).
    pub cgroup_path: Option<String>,
    /// The container's cgroup below the hierarchy roots (`cgroups::fs_path` of `cgroup_path`),
    /// where the monitor reads OOM kills and finds processes left behind.
    pub cgroup_dir: Option<String>,
    /// Give the container a terminal (a pty whose master the monitor receives from the runtime).
    pub tty: bool,
    /// Keep the container's stdin open for attach.
    pub stdin: bool,
    /// Close the container's stdin once the first attach session that wrote to it ends.
    pub stdin_once: bool,
    /// The runtime needs the private v1 cgroup view (`OciRuntime::cgroup_view`); the monitor
    /// builds it from its own mount table.
    pub cgroup_v1_view: bool,
    /// Where systemd is PID 1: the monitor leaves the daemon's cgroup for a scope of its own.
    pub scope: Option<MonitorScope>,
    /// Start the container too (`<runtime> run --detach`): [`Launched::created`] then means
    /// running.
    pub run: bool,
}

/// The systemd scope a monitor is moved into as soon as it reports its pid, so that it leaves
/// the daemon's service (whose stop or restart must not touch it) and is accounted in `slice`.
#[derive(Clone)]
pub struct MonitorScope {
    pub units: std::sync::Arc<dyn crate::systemd::UnitControl>,
    pub slice: String,
}

impl std::fmt::Debug for MonitorScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorScope")
            .field("slice", &self.slice)
            .finish_non_exhaustive()
    }
}

/// A monitor that created its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// The long-lived monitor process (not our child).
    pub monitor_pid: i32,
    /// The monitor's start time (field 22 of its `/proc/<pid>/stat`).
    pub monitor_start_time: u64,
    /// The container's init, created but not started.
    pub container_pid: i32,
}

impl Spawned {
    /// The monitor as a process handle, to wait on or signal.
    pub fn monitor(&self) -> ProcessHandle {
        ProcessHandle {
            pid: self.monitor_pid,
            start_time: self.monitor_start_time,
        }
    }
}

/// Starts a monitor that runs `<runtime> create` for `req.id`, and waits until the container is
/// created (or creating failed: `MonitorError::Runtime` carries the runtime's message).
pub async fn spawn(req: &MonitorSpawn) -> Result<Spawned, MonitorError> {
    launch(req).await?.created().await
}

/// A monitor that is up and running the runtime's `create`.
pub struct Launched {
    id: String,
    monitor: ProcessHandle,
    lines: tokio::io::Lines<BufReader<tokio::net::unix::pipe::Receiver>>,
    deadline: tokio::time::Instant,
    /// The move into the monitor's scope, which runs while the runtime creates the container.
    moving: Option<tokio::task::JoinHandle<Result<(), crate::systemd::SystemdError>>>,
}

/// Creates and locks the handle file at `path` (see [`protocol::HANDLE_FD`]), emptied. A lock
/// that is held means a monitor of an earlier attempt still lives: that is an error, never a
/// second monitor for one object.
fn open_handle_file(path: &Path) -> io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    lock_handle_file(&f, false)?;
    f.set_len(0)?;
    Ok(f)
}

/// `flock(LOCK_EX | LOCK_NB)` (or `LOCK_SH`) on the handle file.
fn lock_handle_file(f: &std::fs::File, shared: bool) -> io::Result<()> {
    let op = if shared {
        nix::fcntl::FlockArg::LockSharedNonblock
    } else {
        nix::fcntl::FlockArg::LockExclusiveNonblock
    };
    #[allow(deprecated)] // nix's Flock wrapper would take the File; the lock goes with the fd.
    nix::fcntl::flock(f.as_raw_fd(), op).map_err(io::Error::from)
}

/// Starts a monitor for `req.id` and waits until it reports that it is up (its handle is then
/// also in `req.handle_file`); [`Launched::created`] waits for the runtime's create.
pub async fn launch(req: &MonitorSpawn) -> Result<Launched, MonitorError> {
    let id = req.id.clone();
    let args = MonitorArgs {
        id: req.id.clone(),
        bundle: req.bundle.clone(),
        runtime_path: req.runtime_path.clone(),
        runtime_root: req.runtime_root.clone(),
        pid_file: req.pid_file.clone(),
        exit_file: req.exit_file.clone(),
        log_path: req.log_path.clone(),
        cgroup_path: req.cgroup_dir.clone(),
        runtime_log: None,
        tty: req.tty,
        stdin: req.stdin,
        stdin_once: req.stdin_once,
        // A systemd cgroup path (`slice:prefix:name`) only works with the runtime's systemd
        // driver; a cgroupfs path is always absolute.
        systemd_cgroup: req
            .cgroup_path
            .as_deref()
            .is_some_and(|p| !p.starts_with('/') && p.split(':').count() == 3),
        cgroup_v1_view: req.cgroup_v1_view,
        run: req.run,
    };
    let spawn_err = |source: io::Error| MonitorError::Spawn {
        id: id.clone(),
        path: req.monitor_path.clone(),
        source,
    };

    let handle_file = match &req.handle_file {
        Some(path) => Some(
            open_handle_file(path).map_err(|source| MonitorError::HandleFile {
                id: id.clone(),
                path: path.clone(),
                source,
            })?,
        ),
        None => None,
    };
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
    let mut cmd = std::process::Command::new(&req.monitor_path);
    crate::sys::without_daemon_notify(&mut cmd);
    cmd.args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::sys::pass_fd_at(&mut cmd, write_end.as_raw_fd(), SYNC_FD);
    if let Some(f) = &handle_file {
        crate::sys::pass_fd_at(&mut cmd, f.as_raw_fd(), HANDLE_FD);
    }
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(spawn_err)?;
    // Only the monitor may hold the write end, or EOF never comes.
    drop(write_end);
    // The first monitor process forks and exits at once; reap it.
    child.wait().await.map_err(spawn_err)?;
    // From here only the monitor holds the handle file, and with it the lock.
    drop(handle_file);

    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).map_err(spawn_err)?;
    let mut lines = BufReader::new(pipe).lines();
    let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
    let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
        Ok(Ok(Some(line))) => line,
        Ok(Ok(None)) => {
            return Err(MonitorError::Protocol {
                id,
                message: "monitor exited before it was up".into(),
            })
        }
        Ok(Err(source)) => return Err(MonitorError::Sync { id, source }),
        Err(_) => {
            return Err(MonitorError::Timeout {
                id,
                timeout: CREATE_TIMEOUT,
            })
        }
    };
    let monitor = match serde_json::from_str(&line) {
        Ok(SyncMessage::Started {
            monitor_pid,
            start_time,
        }) => ProcessHandle {
            pid: monitor_pid,
            start_time,
        },
        Ok(SyncMessage::Failed { error }) => {
            return Err(MonitorError::Runtime { id, message: error })
        }
        Ok(SyncMessage::Created { .. }) => {
            return Err(MonitorError::Protocol {
                id,
                message: "container created before the monitor said who it is".into(),
            })
        }
        Err(e) => {
            return Err(MonitorError::Protocol {
                id,
                message: format!("bad message {line:?}: {e}"),
            })
        }
    };
    let moving = req.scope.clone().map(|scope| {
        let id = id.clone();
        tokio::spawn(async move {
            crate::systemd::move_monitor(&*scope.units, &id, monitor.pid, &scope.slice).await
        })
    });
    Ok(Launched {
        id,
        monitor,
        lines,
        deadline,
        moving,
    })
}

impl Launched {
    /// The monitor process, as it reported itself.
    pub fn monitor(&self) -> ProcessHandle {
        self.monitor
    }

    /// Waits until the runtime's create is done: the container's init pid, or the runtime's
    /// error. On timeout the monitor is told to give up (it kills the runtime on SIGTERM).
    pub async fn created(mut self) -> Result<Spawned, MonitorError> {
        let id = self.id.clone();
        let result = match tokio::time::timeout_at(self.deadline, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => match serde_json::from_str(&line) {
                Ok(SyncMessage::Created { pid }) => Ok(Spawned {
                    monitor_pid: self.monitor.pid,
                    monitor_start_time: self.monitor.start_time,
                    container_pid: pid,
                }),
                Ok(SyncMessage::Failed { error }) => {
                    Err(MonitorError::Runtime { id, message: error })
                }
                Ok(SyncMessage::Started { .. }) => Err(MonitorError::Protocol {
                    id,
                    message: "monitor reported its start twice".into(),
                }),
                Err(e) => Err(MonitorError::Protocol {
                    id,
                    message: format!("bad message {line:?}: {e}"),
                }),
            },
            Ok(Ok(None)) => Err(MonitorError::Protocol {
                id,
                message: "monitor exited without reporting the create".into(),
            }),
            Ok(Err(source)) => Err(MonitorError::Sync { id, source }),
            Err(_) => {
                let _ = self.monitor.signal(libc::SIGTERM);
                Err(MonitorError::Timeout {
                    id,
                    timeout: CREATE_TIMEOUT,
                })
            }
        };
        if let Some(moving) = self.moving.take() {
            if result.is_err() {
                // A monitor that failed its create is gone or going: no point in waiting.
                moving.abort();
            } else {
                // A monitor left in the daemon's cgroup still does its work (CRI-O treats a
                // failed move alike): say so, but keep the container.
                match moving.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(id = %self.id, error = %e, "monitor stays in the daemon's cgroup")
                    }
                    Err(e) => {
                        tracing::warn!(id = %self.id, error = %e, "moving the monitor panicked")
                    }
                }
            }
        }
        result
    }
}

/// Starting and finding monitors: the seam a lifecycle test puts a fake behind.
/// [`MonitorProcesses`], the `ferrio-monitor` binary, is the implementation.
pub trait MonitorLauncher: Send + Sync {
    /// Starts a monitor that runs the runtime's create; resolves once the monitor is up.
    fn launch<'a>(
        &'a self,
        req: &'a MonitorSpawn,
    ) -> BoxFuture<'a, Result<Box<dyn LaunchedMonitor>, MonitorError>>;
    /// The monitor of an object whose record may not know it (a daemon killed during the
    /// create), found through its handle file or else the handle on record, if it still lives.
    /// Blocking (file and /proc reads).
    fn find(&self, handle_file: &Path, recorded: ProcessHandle) -> Option<Box<dyn FoundMonitor>>;
    /// Resolves once `monitor` is gone, with the exit it recorded in `exit_file` (see
    /// [`wait_exit`]).
    fn wait_exit<'a>(
        &'a self,
        monitor: ProcessHandle,
        exit_file: &'a Path,
    ) -> BoxFuture<'a, Result<Option<ExitRecord>, MonitorError>>;
    /// Whether `monitor` still runs. Blocking (a /proc read).
    fn alive(&self, monitor: ProcessHandle) -> bool;
    /// Has the monitor of container `id`, at its attach socket `socket`, send `signal` to the
    /// container's init; resolves with its answer, or an error after [`SIGNAL_TIMEOUT`]. An
    /// error when the monitor has no init to signal (create unfinished, already exited), is
    /// gone, or predates the request.
    fn signal<'a>(
        &'a self,
        id: &'a str,
        socket: &'a Path,
        signal: i32,
    ) -> BoxFuture<'a, Result<(), MonitorError>>;
}

/// A monitor that is up and running the runtime's create.
pub trait LaunchedMonitor: Send {
    /// The monitor process, to put on record before the create ends.
    fn monitor(&self) -> ProcessHandle;
    /// Waits for the runtime's create: the container's init, or the runtime's error.
    fn created(self: Box<Self>) -> BoxFuture<'static, Result<Spawned, MonitorError>>;
}

/// A live monitor found by [`MonitorLauncher::find`]. Blocking methods.
pub trait FoundMonitor: Send {
    /// Whether it still runs.
    fn alive(&self) -> bool;
    /// Tells it to give up: a monitor still creating kills the runtime's create and exits.
    fn stop(&self);
}

/// The `ferrio-monitor` binary named in each [`MonitorSpawn`].
#[derive(Debug, Clone, Default)]
pub struct MonitorProcesses {
    /// On a host with cgroup v1 hierarchies: started as each launch begins, so that the grace
    /// period the runtime's cgroup attach waits for runs while the monitor and the runtime start.
    attach_warm: Option<std::sync::Arc<crate::oci::attach_warm::AttachWarm>>,
}

impl MonitorProcesses {
    /// Monitors whose launches start `attach_warm` (see [`crate::oci::attach_warm`]).
    pub fn new(
        attach_warm: Option<std::sync::Arc<crate::oci::attach_warm::AttachWarm>>,
    ) -> MonitorProcesses {
        MonitorProcesses { attach_warm }
    }
}

impl MonitorLauncher for MonitorProcesses {
    fn launch<'a>(
        &'a self,
        req: &'a MonitorSpawn,
    ) -> BoxFuture<'a, Result<Box<dyn LaunchedMonitor>, MonitorError>> {
        Box::pin(async move {
            if let Some(warm) = &self.attach_warm {
                warm.start();
            }
            Ok(Box::new(launch(req).await?) as Box<dyn LaunchedMonitor>)
        })
    }

    fn find(&self, handle_file: &Path, recorded: ProcessHandle) -> Option<Box<dyn FoundMonitor>> {
        let by_file = match LiveMonitor::find(handle_file) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(path = %handle_file.display(), error = %e, "cannot read a monitor handle file");
                None
            }
        };
        match by_file {
            Some(live) => Some(Box::new(FoundProcess {
                live: Some(live),
                recorded,
            })),
            None if recorded.is_set() && recorded.is_alive() => Some(Box::new(FoundProcess {
                live: None,
                recorded,
            })),
            None => None,
        }
    }

    fn wait_exit<'a>(
        &'a self,
        monitor: ProcessHandle,
        exit_file: &'a Path,
    ) -> BoxFuture<'a, Result<Option<ExitRecord>, MonitorError>> {
        Box::pin(wait_exit(monitor, exit_file))
    }

    fn alive(&self, monitor: ProcessHandle) -> bool {
        monitor.is_alive()
    }

    fn signal<'a>(
        &'a self,
        id: &'a str,
        socket: &'a Path,
        signal: i32,
    ) -> BoxFuture<'a, Result<(), MonitorError>> {
        Box::pin(async move {
            match tokio::time::timeout(SIGNAL_TIMEOUT, attach::signal(socket, signal)).await {
                Ok(answer) => answer.map_err(|source| MonitorError::Signal {
                    id: id.to_string(),
                    source,
                }),
                Err(_) => Err(MonitorError::SignalTimeout {
                    id: id.to_string(),
                    timeout: SIGNAL_TIMEOUT,
                }),
            }
        })
    }
}

impl LaunchedMonitor for Launched {
    fn monitor(&self) -> ProcessHandle {
        Launched::monitor(self)
    }
    fn created(self: Box<Self>) -> BoxFuture<'static, Result<Spawned, MonitorError>> {
        Box::pin(Launched::created(*self))
    }
}

/// A live monitor process, known by the lock on its handle file or else by its recorded handle.
struct FoundProcess {
    live: Option<LiveMonitor>,
    recorded: ProcessHandle,
}

impl FoundMonitor for FoundProcess {
    fn alive(&self) -> bool {
        match &self.live {
            Some(l) => !l.released().unwrap_or(true),
            None => self.recorded.is_alive(),
        }
    }

    fn stop(&self) {
        let handle = self
            .live
            .as_ref()
            .and_then(|l| l.handle().ok().flatten())
            .unwrap_or(self.recorded);
        let _ = handle.signal(libc::SIGTERM);
    }
}

/// A monitor found through its handle file after a daemon restart: it still holds the lock.
#[derive(Debug)]
pub struct LiveMonitor {
    file: std::fs::File,
    path: PathBuf,
}

impl LiveMonitor {
    /// The monitor whose handle file is `path`, if one still holds it: a monitor that the
    /// daemon started and may not have recorded (killed between the start and the record).
    /// Blocking (file I/O).
    pub fn find(path: &Path) -> io::Result<Option<LiveMonitor>> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let live = LiveMonitor {
            file,
            path: path.to_path_buf(),
        };
        Ok((!live.released()?).then_some(live))
    }

    /// Whether the monitor is gone (nobody holds the lock any more).
    pub fn released(&self) -> io::Result<bool> {
        match lock_handle_file(&self.file, true) {
            Ok(()) => {
                // Let go at once: a probe must not keep a new monitor of the object out.
                #[allow(deprecated)] // as in lock_handle_file
                nix::fcntl::flock(self.file.as_raw_fd(), nix::fcntl::FlockArg::Unlock)
                    .map_err(io::Error::from)?;
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The monitor's handle, once it wrote it (its first process may not have forked yet).
    pub fn handle(&self) -> io::Result<Option<ProcessHandle>> {
        let text = std::fs::read_to_string(&self.path)?;
        Ok(ProcessHandle::parse_line(&text))
    }
}

/// Reads the exit record the monitor left; `None` when the container has not exited (yet).
pub fn read_exit(exit_file: &Path) -> Result<Option<ExitRecord>, MonitorError> {
    let bytes = match std::fs::read(exit_file) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(MonitorError::ReadExit {
                path: exit_file.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| MonitorError::ParseExit {
            path: exit_file.to_path_buf(),
            source,
        })
}

/// Resolves when the monitor process `monitor` has exited (a pidfd opened while it is still the
/// process the handle names, and tokio AsyncFd; works for a process that is not our child, e.g.
/// after a daemon restart), then returns read_exit(). If it is already gone, returns at once.
///
/// The exit file is checked first and returned at once when present: writing it is the monitor's
/// last act.
pub async fn wait_exit(
    monitor: ProcessHandle,
    exit_file: &Path,
) -> Result<Option<ExitRecord>, MonitorError> {
    let monitor_pid = monitor.pid;
    let path = exit_file.to_path_buf();
    let read = |path: PathBuf| async move {
        tokio::task::spawn_blocking(move || read_exit(&path))
            .await
            .unwrap_or_else(|e| {
                Err(MonitorError::Watch {
                    pid: monitor_pid,
                    source: io::Error::other(e),
                })
            })
    };
    if let Some(rec) = read(path.clone()).await? {
        return Ok(Some(rec));
    }
    match monitor.pidfd() {
        Ok(Some(fd)) => {
            crate::sys::pidfd_exited(fd)
                .await
                .map_err(|source| MonitorError::Watch {
                    pid: monitor_pid,
                    source,
                })?
        }
        Ok(None) => {}
        Err(source) => {
            return Err(MonitorError::Watch {
                pid: monitor_pid,
                source,
            })
        }
    }
    read(path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in monitor (`sleep`) that holds the locked handle file the way `ferrio-monitor`
    /// does (inherited at [`HANDLE_FD`]): found while it lives, a second launch for the object
    /// refused, told to stop through the recorded handle, and no longer found once it is gone.
    #[test]
    fn a_monitor_is_found_by_its_locked_handle_file_until_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("monitor.handle");
        let f = open_handle_file(&path).unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        crate::sys::pass_fd_at(&mut cmd, f.as_raw_fd(), HANDLE_FD);
        let mut child = cmd.spawn().unwrap();
        drop(f);
        let recorded = ProcessHandle::of(child.id() as i32).unwrap().unwrap();
        let found = MonitorProcesses::default()
            .find(&path, ProcessHandle::default())
            .expect("found by the lock alone");
        assert!(found.alive());
        assert!(
            open_handle_file(&path).is_err(),
            "a second monitor for a live one's object"
        );
        drop(found);
        let found = MonitorProcesses::default()
            .find(&path, recorded)
            .expect("found");
        found.stop();
        child.wait().unwrap();
        // Another test's fork may hold a copy of the fd until its exec.
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while found.alive() {
            assert!(std::time::Instant::now() < until, "still locked");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(MonitorProcesses::default().find(&path, recorded).is_none());
        assert!(MonitorProcesses::default()
            .find(&dir.path().join("none"), ProcessHandle::default())
            .is_none());
        open_handle_file(&path).expect("free for a new monitor");
    }
}
