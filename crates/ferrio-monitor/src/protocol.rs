//! The wire between the daemon and `ferrio-monitor`: the command line the daemon passes, the
//! messages the monitor writes on its sync pipe, and the exit file it leaves behind.
//!
//! Both sides link this one file, so a field added here is added on both ends at once.

use std::ffi::OsString;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The fd on which the monitor finds its sync pipe (conmon's `_OCI_SYNCPIPE`, but fixed).
pub const SYNC_FD: i32 = 3;

/// The fd on which the monitor finds its handle file: created and `flock`ed by the daemon
/// before the monitor is started, so that the lock (shared by every fd of that open file) is
/// held from before the monitor exists until the monitor exits. The monitor writes its
/// [`ferrio_sys::ProcessHandle`] line into it and keeps it open for its whole life. A daemon
/// killed at any instant of a create thus finds the monitor again through a file in the
/// object's run dir, never through a process listing.
pub const HANDLE_FD: i32 = 4;

/// One newline-terminated JSON object on the sync pipe. The monitor writes `Started` first (so
/// the daemon learns the long-lived monitor's pid), then exactly one of `Created` or `Failed`,
/// then closes the pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum SyncMessage {
    /// The detached monitor is up; `monitor_pid` is the process that will write the exit file,
    /// `start_time` its start time (field 22 of its `/proc/<pid>/stat`).
    Started { monitor_pid: i32, start_time: u64 },
    /// `<runtime> create` (or `run`) succeeded; `pid` is the container's init as read from the
    /// pid file.
    Created { pid: i32 },
    /// Setup or `<runtime> create` failed; `error` is the runtime's own message where it gave one.
    Failed { error: String },
}

impl SyncMessage {
    /// The message as one line of JSON, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing these plain variants cannot fail (no maps with non-string keys).
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// What the monitor records when the container has exited, written atomically to the exit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit status, or 128 + signal number when the process was killed by a signal.
    pub exit_code: i32,
    /// When the monitor reaped the container process, in nanoseconds since the unix epoch.
    pub finished_at: i64,
    /// The container's memory cgroup recorded an OOM kill.
    pub oom_killed: bool,
}

/// The monitor's command line. A hand parser keeps clap out of the monitor binary (size and RSS).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MonitorArgs {
    /// Container id, passed to the runtime.
    pub id: String,
    /// OCI bundle directory.
    pub bundle: PathBuf,
    /// The OCI runtime binary (runc, crun).
    pub runtime_path: PathBuf,
    /// The runtime's `--root` state directory.
    pub runtime_root: PathBuf,
    /// Where the runtime writes the container pid.
    pub pid_file: PathBuf,
    /// Where the monitor writes the [`ExitRecord`].
    pub exit_file: PathBuf,
    /// The CRI log file; `None` discards the container's output.
    pub log_path: Option<PathBuf>,
    /// The container's cgroup below the hierarchy roots (an absolute cgroupfs path, or a
    /// systemd scope's expanded path), to look for OOM kills and left-over processes.
    pub cgroup_path: Option<String>,
    /// Where the runtime logs its errors as JSON; defaults to `<bundle>/runtime-create.log`.
    pub runtime_log: Option<PathBuf>,
    /// Give the container a terminal instead of pipes.
    pub tty: bool,
    /// Keep a stdin pipe open for the container (for attach) instead of /dev/null.
    pub stdin: bool,
    /// Close the container's stdin when the first attach client that wrote stdin is done.
    pub stdin_once: bool,
    /// Pass `--systemd-cgroup` to the runtime (cgroup_manager = "systemd"; the cgroup path is
    /// then `slice:prefix:name`).
    pub systemd_cgroup: bool,
    /// Run the runtime in a private mount namespace whose /sys/fs/cgroup holds the v1
    /// hierarchies only (crun on a cgroup v1 hybrid host; see `sys::CgroupV1View`).
    pub cgroup_v1_view: bool,
    /// Start the container as well: `<runtime> run --detach` instead of `<runtime> create`, for
    /// a container that is started as soon as it exists (one runtime process instead of two).
    pub run: bool,
}

/// A command line the monitor could not understand.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown monitor argument {0:?}")]
    Unknown(String),
    #[error("monitor argument {0} needs a value")]
    MissingValue(&'static str),
    #[error("monitor argument {0} is required")]
    Required(&'static str),
}

impl MonitorArgs {
    /// The argument vector (without argv\[0\]) that [`MonitorArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = Vec::with_capacity(20);
        let mut push = |flag: &str, value: OsString| {
            v.push(flag.into());
            v.push(value);
        };
        push("--id", self.id.clone().into());
        push("--bundle", self.bundle.clone().into());
        push("--runtime", self.runtime_path.clone().into());
        push("--runtime-root", self.runtime_root.clone().into());
        push("--pid-file", self.pid_file.clone().into());
        push("--exit-file", self.exit_file.clone().into());
        if let Some(p) = &self.log_path {
            push("--log-path", p.clone().into());
        }
        if let Some(c) = &self.cgroup_path {
            push("--cgroup-path", c.clone().into());
        }
        if let Some(p) = &self.runtime_log {
            push("--runtime-log", p.clone().into());
        }
        if self.tty {
            v.push("--tty".into());
        }
        if self.stdin {
            v.push("--stdin".into());
        }
        if self.stdin_once {
            v.push("--stdin-once".into());
        }
        if self.systemd_cgroup {
            v.push("--systemd-cgroup".into());
        }
        if self.cgroup_v1_view {
            v.push("--cgroup-v1-view".into());
        }
        if self.run {
            v.push("--run".into());
        }
        v
    }

    /// Parses the arguments after argv\[0\].
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Self, ArgsError> {
        let mut a = MonitorArgs::default();
        let (mut id, mut bundle, mut runtime, mut root, mut pid, mut exit) =
            (None, None, None, None, None, None);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let flag_str = flag.to_string_lossy().into_owned();
            let name: &'static str = match flag_str.as_str() {
                "--tty" => {
                    a.tty = true;
                    continue;
                }
                "--stdin" => {
                    a.stdin = true;
                    continue;
                }
                "--stdin-once" => {
                    a.stdin_once = true;
                    continue;
                }
                "--systemd-cgroup" => {
                    a.systemd_cgroup = true;
                    continue;
                }
                "--cgroup-v1-view" => {
                    a.cgroup_v1_view = true;
                    continue;
                }
                "--run" => {
                    a.run = true;
                    continue;
                }
                "--id" => "--id",
                "--bundle" => "--bundle",
                "--runtime" => "--runtime",
                "--runtime-root" => "--runtime-root",
                "--pid-file" => "--pid-file",
                "--exit-file" => "--exit-file",
                "--log-path" => "--log-path",
                "--cgroup-path" => "--cgroup-path",
                "--runtime-log" => "--runtime-log",
                _ => return Err(ArgsError::Unknown(flag_str)),
            };
            let value = it.next().ok_or(ArgsError::MissingValue(name))?;
            match name {
                "--id" => id = Some(value.to_string_lossy().into_owned()),
                "--bundle" => bundle = Some(PathBuf::from(value)),
                "--runtime" => runtime = Some(PathBuf::from(value)),
                "--runtime-root" => root = Some(PathBuf::from(value)),
                "--pid-file" => pid = Some(PathBuf::from(value)),
                "--exit-file" => exit = Some(PathBuf::from(value)),
                "--log-path" => a.log_path = Some(PathBuf::from(value)),
                "--cgroup-path" => a.cgroup_path = Some(value.to_string_lossy().into_owned()),
                _ => a.runtime_log = Some(PathBuf::from(value)),
            }
        }
        a.id = id.ok_or(ArgsError::Required("--id"))?;
        a.bundle = bundle.ok_or(ArgsError::Required("--bundle"))?;
        a.runtime_path = runtime.ok_or(ArgsError::Required("--runtime"))?;
        a.runtime_root = root.ok_or(ArgsError::Required("--runtime-root"))?;
        a.pid_file = pid.ok_or(ArgsError::Required("--pid-file"))?;
        a.exit_file = exit.ok_or(ArgsError::Required("--exit-file"))?;
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_messages_have_the_documented_shape_and_round_trip() {
        let cases = [
            (
                SyncMessage::Started {
                    monitor_pid: 7,
                    start_time: 9,
                },
                r#"{"monitor_pid":7,"start_time":9}"#,
            ),
            (SyncMessage::Created { pid: 42 }, r#"{"pid":42}"#),
            (
                SyncMessage::Failed {
                    error: "boom \"x\"".into(),
                },
                r#"{"error":"boom \"x\""}"#,
            ),
        ];
        for (msg, json) in cases {
            let line = msg.to_line();
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(&line[..line.len() - 1], json.as_bytes());
            let back: SyncMessage = serde_json::from_str(json).unwrap();
            assert_eq!(back, msg);
        }
        assert!(serde_json::from_str::<SyncMessage>(r#"{"pid":"x"}"#).is_err());
        assert!(serde_json::from_str::<SyncMessage>(r#"{"other":1}"#).is_err());
    }

    #[test]
    fn exit_record_round_trips() {
        let r = ExitRecord {
            exit_code: 137,
            finished_at: 1_700_000_000_123_456_789,
            oom_killed: true,
        };
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"exit_code":137,"finished_at":1700000000123456789,"oom_killed":true}"#
        );
        assert_eq!(serde_json::from_str::<ExitRecord>(&json).unwrap(), r);
    }

    #[test]
    fn args_round_trip_and_errors_name_the_flag() {
        let a = MonitorArgs {
            id: "c1".into(),
            bundle: "/b".into(),
            runtime_path: "/usr/sbin/runc".into(),
            runtime_root: "/run/runc".into(),
            pid_file: "/b/pid".into(),
            exit_file: "/x/exit".into(),
            log_path: Some("/l/0.log".into()),
            cgroup_path: Some("/kubepods/x".into()),
            runtime_log: None,
            tty: false,
            stdin: true,
            stdin_once: true,
            systemd_cgroup: true,
            cgroup_v1_view: true,
            run: true,
        };
        assert_eq!(MonitorArgs::parse(a.to_args()).unwrap(), a);
        let created_only = MonitorArgs {
            run: false,
            ..a.clone()
        };
        assert!(!created_only.to_args().contains(&"--run".into()));
        assert_eq!(
            MonitorArgs::parse(created_only.to_args()).unwrap(),
            created_only
        );
        let err = MonitorArgs::parse(vec!["--id".into()]).unwrap_err();
        assert_eq!(err, ArgsError::MissingValue("--id"));
        let err = MonitorArgs::parse(vec!["--bogus".into()]).unwrap_err();
        assert_eq!(err, ArgsError::Unknown("--bogus".into()));
        let err = MonitorArgs::parse(vec!["--id".into(), "x".into()]).unwrap_err();
        assert_eq!(err, ArgsError::Required("--bundle"));
    }
}
