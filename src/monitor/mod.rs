//! `ferrio-monitor`, ferrio's conmon: the wire protocol, the daemon-side client and the
//! monitor-side process code.
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
//!   pid ([`wait_exit`] uses a pidfd, which works for processes that are not our children).
//!
//! # What lives where
//!
//! - [`protocol`]: command line, sync-pipe messages and the exit record, shared by both sides.
//! - [`log`]: the CRI log writer (`F`/`P` records).
//! - [`process`]: the monitor's event loop (spawned as `ferrio-monitor`; uses only this module
//!   and `sys`).
//! - [`oom`]: reading the OOM-kill counter of the container's memory cgroup.
//! - [`attach`]: the attach socket's wire protocol and the daemon-side [`attach::AttachClient`]
//!   (CRI Attach, ReopenContainerLog).
//! - [`exec`]: `<runtime> exec` from the daemon: ExecSync with its timeout, and
//!   [`exec::spawn_exec`] sessions for streaming Exec.
//! - this file: the daemon side, [`spawn`], [`read_exit`] and [`wait_exit`].
//!
//! The daemon starts the container itself (`<runtime> start`) once [`spawn`] returned, and
//! deletes it after the exit; the monitor never starts, stops or deletes the container.

pub mod attach;
pub mod attach_server;
pub mod exec;
pub mod leftovers;
pub mod log;
pub mod oom;
pub mod process;
pub mod protocol;

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

pub use protocol::ExitRecord;
use protocol::{MonitorArgs, SyncMessage, SYNC_FD};

/// How long `<runtime> create` may take before the spawn gives up (CRI-O's default too).
const CREATE_TIMEOUT: Duration = Duration::from_secs(240);

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
    /// The container's init, created but not started.
    pub container_pid: i32,
}

/// Starts a monitor that runs `<runtime> create` for `req.id`, and waits until the container is
/// created (or creating failed: `MonitorError::Runtime` carries the runtime's message).
pub async fn spawn(req: &MonitorSpawn) -> Result<Spawned, MonitorError> {
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
    };
    let spawn_err = |source: io::Error| MonitorError::Spawn {
        id: id.clone(),
        path: req.monitor_path.clone(),
        source,
    };

    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
    let mut cmd = std::process::Command::new(&req.monitor_path);
    cmd.args(args.to_args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    crate::sys::pass_fd_at(&mut cmd, write_end.as_raw_fd(), SYNC_FD);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(spawn_err)?;
    // Only the monitor may hold the write end, or EOF never comes.
    drop(write_end);
    // The first monitor process forks and exits at once; reap it.
    child.wait().await.map_err(spawn_err)?;

    let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(read_end).map_err(spawn_err)?;
    let mut lines = BufReader::new(pipe).lines();
    let deadline = tokio::time::Instant::now() + CREATE_TIMEOUT;
    let mut monitor_pid = None;
    // The move into the monitor's scope runs while the runtime creates the container.
    let mut moving: Option<tokio::task::JoinHandle<Result<(), crate::systemd::SystemdError>>> =
        None;
    let result = loop {
        let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => {
                break Err(MonitorError::Protocol {
                    id,
                    message: "monitor exited without reporting the create".into(),
                })
            }
            Ok(Err(source)) => break Err(MonitorError::Sync { id, source }),
            Err(_) => {
                // The monitor kills the runtime on SIGTERM while creating and reports failure.
                if let Some(pid) = monitor_pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                break Err(MonitorError::Timeout {
                    id,
                    timeout: CREATE_TIMEOUT,
                });
            }
        };
        let msg: SyncMessage = match serde_json::from_str(&line) {
            Ok(m) => m,
            Err(e) => {
                break Err(MonitorError::Protocol {
                    id,
                    message: format!("bad message {line:?}: {e}"),
                })
            }
        };
        match msg {
            SyncMessage::Started { monitor_pid: pid } => {
                monitor_pid = Some(pid);
                if let Some(scope) = req.scope.clone() {
                    let id = id.clone();
                    moving = Some(tokio::spawn(async move {
                        crate::systemd::move_monitor(&*scope.units, &id, pid, &scope.slice).await
                    }));
                }
            }
            SyncMessage::Failed { error } => {
                break Err(MonitorError::Runtime { id, message: error })
            }
            SyncMessage::Created { pid } => {
                let Some(monitor_pid) = monitor_pid else {
                    break Err(MonitorError::Protocol {
                        id,
                        message: "container created before the monitor said who it is".into(),
                    });
                };
                break Ok(Spawned {
                    monitor_pid,
                    container_pid: pid,
                });
            }
        }
    };
    if let Some(moving) = moving {
        if result.is_err() {
            // A monitor that failed its create is gone or going: no point in waiting.
            moving.abort();
        } else {
            // A monitor left in the daemon's cgroup still does its work (CRI-O treats a failed
            // move alike): say so, but keep the container.
            match moving.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(id = %req.id, error = %e, "monitor stays in the daemon's cgroup")
                }
                Err(e) => tracing::warn!(id = %req.id, error = %e, "moving the monitor panicked"),
            }
        }
    }
    result
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

/// Resolves when the monitor process `monitor_pid` has exited (pidfd_open + tokio AsyncFd; works
/// for a process that is not our child, e.g. after a daemon restart), then returns read_exit().
/// If the pid is already gone, returns at once.
///
/// The exit file is checked first and returned at once when present: writing it is the monitor's
/// last act, and a pid can be reused once its monitor is gone, so a daemon that recovers after
/// the exit never waits on a stranger.
pub async fn wait_exit(
    monitor_pid: i32,
    exit_file: &Path,
) -> Result<Option<ExitRecord>, MonitorError> {
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
    match crate::sys::pidfd_open(monitor_pid) {
        Ok(fd) => crate::sys::pidfd_exited(fd)
            .await
            .map_err(|source| MonitorError::Watch {
                pid: monitor_pid,
                source,
            })?,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
        Err(source) => {
            return Err(MonitorError::Watch {
                pid: monitor_pid,
                source,
            })
        }
    }
    read(path).await
}
