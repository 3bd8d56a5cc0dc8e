//! `runc`/`crun` verbs other than create: start, kill, delete, state, update.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::oci::host::{needs_cgroup_v1_view, CgroupLayout};
use crate::sys::CgroupV1View;
use std::time::Duration;

/// How long one runtime verb may take before it is treated as hung.
const VERB_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{runtime} {verb} {id}: {message}")]
    Failed {
        runtime: String,
        verb: &'static str,
        id: String,
        message: String,
    },
    /// The runtime binary could not be started or waited for.
    #[error("{runtime} {verb} {id}: cannot run {}: {source}", path.display())]
    Spawn {
        runtime: String,
        verb: &'static str,
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file the verb goes through (runc's exec fifo) could not be used.
    #[error("{runtime} {verb} {id}: {source}")]
    Io {
        runtime: String,
        verb: &'static str,
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{runtime} {verb} {id}: timed out after {secs}s")]
    Timeout {
        runtime: String,
        verb: &'static str,
        id: String,
        secs: u64,
    },
}

/// One configured runtime handler.
#[derive(Debug, Clone, PartialEq)]
pub struct OciRuntime {
    /// The handler name (`runc`, `crun`).
    pub name: String,
    pub path: PathBuf,
    /// The runtime's `--root`.
    pub root: PathBuf,
    /// Pass `--systemd-cgroup`: cgroups paths are `slice:prefix:name` and systemd makes them.
    pub systemd_cgroup: bool,
    /// Run every invocation in a private mount namespace whose /sys/fs/cgroup holds the v1
    /// hierarchies only (crun on a hybrid host); see [`OciRuntime::cgroup_view_for`].
    pub cgroup_view: Option<Arc<CgroupV1View>>,
    /// The runtime is runc (set from [`OciRuntime::is_runc`]): two verbs on the create/stop
    /// path are done without a runc process, see [`OciRuntime::start_created`] and
    /// [`OciRuntime::delete_exited`].
    pub runc: bool,
}

/// The part of `runc state` the daemon uses.
#[derive(Debug, Clone, Deserialize)]
pub struct OciState {
    pub status: String,
    #[serde(default)]
    pub pid: i32,
}

/// Messages runc and crun print when the container is not there.
fn is_missing(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("does not exist") || m.contains("not found") || m.contains("no such file")
}

impl OciRuntime {
    /// The private cgroup view the runtime at `path` needs on this host, if any: on a hybrid
    /// host for crun (or as `configured`, the handler's `cgroup_v1_view`), never elsewhere.
    /// Reads the mount table; call it when the handler is set up, not per verb.
    pub fn cgroup_view_for(path: &Path, configured: Option<bool>) -> Option<Arc<CgroupV1View>> {
        if !needs_cgroup_v1_view(CgroupLayout::detect(), path, configured) {
            return None;
        }
        match CgroupV1View::of_host() {
            Ok(view) => view.map(Arc::new),
            // The runtime then runs as is and fails with its own message.
            Err(e) => {
                tracing::warn!(runtime = %path.display(), error = %e, "cannot prepare the v1 cgroup view");
                None
            }
        }
    }

    /// The global flags every verb gets (`--root`, and `--systemd-cgroup` for the systemd driver);
    /// the monitor puts the same in front of `create`.
    pub fn global_args(&self) -> Vec<std::ffi::OsString> {
        let mut v = vec!["--root".into(), self.root.clone().into_os_string()];
        if self.systemd_cgroup {
            v.push("--systemd-cgroup".into());
        }
        v
    }

    async fn run(&self, verb: &'static str, id: &str, args: &[&str]) -> Result<Vec<u8>, OciError> {
        self.run_with_input(verb, id, args, None).await
    }

    async fn run_with_input(
        &self,
        verb: &'static str,
        id: &str,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, OciError> {
        let mut cmd = tokio::process::Command::new(&self.path);
        cmd.args(self.global_args()).args(args);
        if let Some(view) = &self.cgroup_view {
            view.apply(cmd.as_std_mut());
        }
        cmd.stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        });
        cmd.stdout(std::process::Stdio::piped());
        cmd.stderr(std::process::Stdio::piped());
        cmd.kill_on_drop(true);
        let fut = async move {
            let mut child = cmd.spawn()?;
            if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
                use tokio::io::AsyncWriteExt;
                stdin.write_all(&data).await?;
                // Dropping stdin closes it: the runtime reads to EOF.
            }
            child.wait_with_output().await
        };
        let out = match tokio::time::timeout(VERB_TIMEOUT, fut).await {
            Err(_) => {
                return Err(OciError::Timeout {
                    runtime: self.name.clone(),
                    verb,
                    id: id.to_string(),
                    secs: VERB_TIMEOUT.as_secs(),
                })
            }
            Ok(Err(source)) => {
                return Err(OciError::Spawn {
                    runtime: self.name.clone(),
                    verb,
                    id: id.to_string(),
                    path: self.path.clone(),
                    source,
                })
            }
            Ok(Ok(o)) => o,
        };
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(OciError::Failed {
                runtime: self.name.clone(),
                verb,
                id: id.to_string(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// `start`: run the user process of a created container.
    pub async fn start(&self, id: &str) -> Result<(), OciError> {
        self.run("start", id, &["start", id]).await.map(drop)
    }

    /// Whether the binary at `path` is runc (its `--version` says so). One process at handler
    /// set-up; a binary that cannot be run is simply not runc.
    pub fn is_runc(path: &Path) -> bool {
        std::process::Command::new(path)
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"runc version"))
    }

    /// Start a created container whose init process is `init_pid`.
    ///
    /// For runc this does what `runc start` does, without the runc process: `runc create`
    /// leaves the container's init blocked opening `<root>/<id>/exec.fifo` for writing; the
    /// reader that opens it lets init write one byte and exec the user process, and removing
    /// the fifo afterwards is what makes runc report the container as running. A `runc start`
    /// is ~10 ms of Go start-up on this path (a fifth of create+start), the fifo a fraction of a
    /// millisecond. ferrio's specs carry no OCI hooks, the one thing `runc start` could run
    /// besides. Without the fifo (another runtime, a runc that changed its layout, a container
    /// already started) it falls back to `start`, whose message then says what is wrong.
    pub async fn start_created(&self, id: &str, init_pid: i32) -> Result<(), OciError> {
        if self.runc && init_pid > 0 {
            let fifo = self.root.join(id).join("exec.fifo");
            let (name, ident) = (self.name.clone(), id.to_string());
            let opened = tokio::task::spawn_blocking(move || release_exec_fifo(&fifo, init_pid))
                .await
                .map_err(|e| OciError::Failed {
                    runtime: name,
                    verb: "start",
                    id: ident,
                    message: e.to_string(),
                })?;
            match opened {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(source) => {
                    return Err(OciError::Io {
                        runtime: self.name.clone(),
                        verb: "start",
                        id: id.to_string(),
                        source,
                    })
                }
            }
        }
        self.start(id).await
    }

    /// Send `signal` (a number) to the container's init, or to all its processes.
    /// A container that is already gone is not an error.
    pub async fn kill(&self, id: &str, signal: i32, all: bool) -> Result<(), OciError> {
        let sig = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([id, sig.as_str()]);
        match self.run("kill", id, &args).await {
            Err(OciError::Failed { message, .. })
                if is_missing(&message)
                    || message.contains("not running")
                    || message.contains("process already finished") =>
            {
                Ok(())
            }
            r => r.map(drop),
        }
    }

    /// Send `signal` to container `id` whose init is `init_pid`: straight from here when the
    /// kernel vouches the process is still that container's init (see [`signal_directly`]),
    /// through the runtime's `kill` otherwise. `all`: every process of the container; done
    /// directly only when init is PID 1 of its own pid namespace, whose end takes the rest with
    /// it. The runtime's `kill` costs a process start (~10 ms of runc) on StopContainer's path;
    /// the direct signal microseconds.
    pub async fn kill_init(
        &self,
        id: &str,
        init_pid: i32,
        signal: i32,
        all: bool,
    ) -> Result<(), OciError> {
        if init_pid > 0 {
            match signal_directly(id, init_pid, signal, all) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(id, pid = init_pid, error = %e, "direct signal failed; asking the runtime")
                }
            }
        }
        self.kill(id, signal, all).await
    }

    /// Delete container `id` whose init has exited (its monitor reported the exit); its cgroup is
    /// `cgroups_path`. Idempotent.
    ///
    /// For runc with cgroupfs cgroups this is what `runc delete` does for a stopped container,
    /// without the runc process (~10 ms on StopContainer's and RemovePodSandbox's path): remove
    /// the container's cgroup in every hierarchy, then runc's state dir. runc's other step, the
    /// poststop hooks, has nothing to run: ferrio's specs carry no hooks. A cgroup that cannot go
    /// (processes left, e.g. orphans in a shared pid namespace) and the systemd driver (runc
    /// stops the scope over D-Bus) take `delete --force`.
    pub async fn delete_exited(&self, id: &str, cgroups_path: &str) -> Result<(), OciError> {
        if self.runc && !self.systemd_cgroup {
            let state = self.root.join(id);
            let cg = cgroups_path.to_string();
            let done = tokio::task::spawn_blocking(move || {
                if !crate::oci::cgroups::remove(&cg).is_empty() {
                    return false;
                }
                match std::fs::remove_dir_all(&state) {
                    Ok(()) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::NotFound,
                }
            })
            .await
            .unwrap_or(false);
            if done {
                return Ok(());
            }
        }
        self.delete(id).await
    }

    /// `delete --force`; idempotent.
    pub async fn delete(&self, id: &str) -> Result<(), OciError> {
        match self.run("delete", id, &["delete", "--force", id]).await {
            Err(OciError::Failed { message, .. }) if is_missing(&message) => Ok(()),
            r => r.map(drop),
        }
    }

    /// `update --resources -`: new cgroup limits (an OCI `LinuxResources` object) for a
    /// created or running container.
    pub async fn update(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<(), OciError> {
        let json = serde_json::to_vec(resources).map_err(|e| OciError::Failed {
            runtime: self.name.clone(),
            verb: "update",
            id: id.to_string(),
            message: format!("cannot encode resources: {e}"),
        })?;
        self.run_with_input(
            "update",
            id,
            &["update", "--resources", "-", id],
            Some(json),
        )
        .await
        .map(drop)
    }

    /// `state`; `None` when the runtime does not know the container.
    pub async fn state(&self, id: &str) -> Result<Option<OciState>, OciError> {
        match self.run("state", id, &["state", id]).await {
            Err(OciError::Failed { message, .. }) if is_missing(&message) => Ok(None),
            Err(e) => Err(e),
            Ok(out) => serde_json::from_slice(&out)
                .map(Some)
                .map_err(|e| OciError::Failed {
                    runtime: self.name.clone(),
                    verb: "state",
                    id: id.to_string(),
                    message: format!("unparsable state: {e}"),
                }),
        }
    }
}

/// Signals `pid` through a pidfd if it is in container `id`'s cgroup (and, for `all`, PID 1 of
/// its own pid namespace). `Ok(false)`: not provably the container's init, leave it to the
/// runtime.
///
/// The pidfd is opened first and the checks read /proc after: if `pid` was reused by then, the
/// pidfd's own process is gone and the signal fails with ESRCH instead of reaching the newcomer.
/// Every ferrio container's cgroup path carries its id (cgroupfs `.../ferrio-<id>`, systemd
/// `ferrio-<id>.scope`), and the daemon reads /proc in the host's cgroup namespace.
fn signal_directly(id: &str, pid: i32, signal: i32, all: bool) -> std::io::Result<bool> {
    use std::os::fd::AsFd;
    let fd = match crate::sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(false),
        Err(e) => return Err(e),
    };
    let in_container = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?
        .lines()
        .any(|l| l.contains(id));
    if !in_container {
        return Ok(false);
    }
    if all {
        // NSpid lists the pid in each nested namespace, innermost last.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let ns_init = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|v| {
                v.split_whitespace().count() > 1 && v.split_whitespace().last() == Some("1")
            });
        if !ns_init {
            return Ok(false);
        }
    }
    match crate::sys::pidfd_send_signal(fd.as_fd(), signal) {
        // Gone already: what the runtime's kill reports as "not running", not an error.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(true),
        r => r.map(|()| true),
    }
}

/// Opens runc's exec fifo as its reader, waits for init's byte and for the writer to close
/// (init's exec closes it), then removes the fifo. `Ok(false)`: no fifo to open.
///
/// The open is non-blocking, so it cannot hang when init is gone; Linux reports a FIFO whose
/// reader opened before any writer as neither readable nor hung up until a writer comes, so the
/// poll waits for init. Init's liveness is checked between polls, as runc does.
fn release_exec_fifo(fifo: &Path, init_pid: i32) -> std::io::Result<bool> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    match std::fs::symlink_metadata(fifo) {
        Ok(m) if m.file_type().is_fifo() => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(fifo)?;
    let deadline = std::time::Instant::now() + VERB_TIMEOUT;
    let mut got = 0usize;
    let mut buf = [0u8; 16];
    loop {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        let ready = poll(&mut fds, PollTimeout::from(100u16)).map_err(std::io::Error::from)?;
        if ready > 0 {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            continue;
        }
        // Nothing yet: init may have died before it opened the fifo.
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(init_pid), None).is_ok()
            && !is_zombie(init_pid);
        if !alive {
            // One last look: it may have written and exec'd and exited in between.
            if let Ok(n) = f.read(&mut buf) {
                got += n;
            }
            break;
        }
        if got == 0 && init_has_exec_d(init_pid) {
            // A start cut off after init's byte was read and before the fifo went (a daemon
            // killed in between): the user process runs, only the fifo is left. No writer will
            // come; finishing the start is removing it.
            std::fs::remove_file(fifo)?;
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "container init did not open its exec fifo",
            ));
        }
    }
    if got == 0 {
        return Err(std::io::Error::other("container process is already dead"));
    }
    std::fs::remove_file(fifo)?;
    Ok(true)
}

/// Whether process `pid` is no longer runc's init: runc names its init `runc:[2:INIT]` and
/// starts it as `runc init`, and both change at the exec. Both must have changed, so a runc
/// that renamed one of them still reads as waiting (the safe side: the start then times out
/// instead of removing the fifo under a live init). /proc/<pid>/exe cannot tell: init runs
/// from a copy of runc's binary inside the container's root.
fn init_has_exec_d(pid: i32) -> bool {
    let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
        return false;
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let runc_init = args.len() == 2
        && args[1] == b"init"
        && Path::new(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(args[0]))
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("runc"));
    comm.trim_end() != "runc:[2:INIT]" && !runc_init
}

/// A zombie still answers signal 0; its state letter in /proc says it is done.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].trim_start().chars().next())
        })
        .is_none_or(|c| c == 'Z' || c == 'X')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_container_is_absent_not_an_error() {
        let root = tempfile::tempdir().unwrap();
        let rt = OciRuntime {
            name: "runc".into(),
            path: "/usr/sbin/runc".into(),
            root: root.path().into(),
            systemd_cgroup: false,
            cgroup_view: None,
            runc: false,
        };
        if !rt.path.exists() {
            panic!("runc is required: run hack/install-deps.sh");
        }
        assert!(rt.state("nope").await.unwrap().is_none());
        rt.delete("nope").await.unwrap();
        rt.kill("nope", 15, false).await.unwrap();
        let e = rt.start("nope").await.unwrap_err().to_string();
        assert!(e.contains("runc start nope"), "{e}");
        let e = rt
            .update("nope", &Default::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("runc update nope"), "{e}");
    }

    /// Every verb runs in the view when the runtime has one: a stand-in runtime reports as its
    /// "state" whether it sees the cgroup2 mount.
    #[tokio::test]
    async fn verbs_run_in_the_cgroup_view() {
        let Some(view) = CgroupV1View::of_host().unwrap() else {
            eprintln!("skipped: not a hybrid cgroup host");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-crun");
        std::fs::write(
            &script,
            "#!/bin/sh\n\
             if [ -e /sys/fs/cgroup/unified ]; then s=hybrid; else s=v1; fi\n\
             printf '{\"status\":\"%s\"}\\n' $s\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut rt = OciRuntime {
            name: "crun".into(),
            path: script,
            root: dir.path().into(),
            systemd_cgroup: false,
            cgroup_view: None,
            runc: false,
        };
        assert_eq!(rt.state("x").await.unwrap().unwrap().status, "hybrid");
        rt.cgroup_view = Some(Arc::new(view));
        assert_eq!(rt.state("x").await.unwrap().unwrap().status, "v1");
    }

    /// A process that looks like runc's init waiting on its fifo: `sleep` run under the name
    /// runc gives its init. Killed on drop.
    struct FakeInit(std::process::Child);
    impl FakeInit {
        fn start(dir: &Path) -> FakeInit {
            let bin = dir.join("runc:[2:INIT]");
            std::fs::copy("/bin/sleep", &bin).unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let child = loop {
                match std::process::Command::new(&bin).arg("30").spawn() {
                    // Another test's fork may still hold our copy open for writing.
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                        assert!(std::time::Instant::now() < deadline, "{e}");
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    r => break r.unwrap(),
                }
            };
            let init = FakeInit(child);
            // Right after the fork the child still bears the test binary's name.
            let comm = format!("/proc/{}/comm", init.pid());
            while std::fs::read_to_string(&comm)
                .unwrap_or_default()
                .trim_end()
                != "runc:[2:INIT]"
            {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the stand-in never exec'd"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            init
        }
        fn pid(&self) -> i32 {
            self.0.id() as i32
        }
    }
    impl Drop for FakeInit {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The exec-fifo start against a stand-in init: it opens the fifo for writing (blocking
    /// until a reader comes), writes its byte and closes, as runc's init does before exec.
    #[test]
    fn exec_fifo_lets_init_go_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("exec.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let init = FakeInit::start(dir.path());
        assert!(!init_has_exec_d(init.pid()));
        let f2 = fifo.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            // Late, as a busy init may be: the start keeps waiting for it.
            std::thread::sleep(Duration::from_millis(250));
            let mut w = std::fs::OpenOptions::new().write(true).open(f2).unwrap();
            w.write_all(b"0").unwrap();
        });
        assert!(release_exec_fifo(&fifo, init.pid()).unwrap());
        writer.join().unwrap();
        assert!(!fifo.exists(), "the fifo goes, so runc reports running");
        // No fifo: not ours to start (the caller falls back to the runtime's start).
        assert!(!release_exec_fifo(&fifo, init.pid()).unwrap());
    }

    /// A start cut off after init's byte was read leaves the fifo with init already running the
    /// user process: the next start finishes it instead of waiting for a writer that never comes.
    #[test]
    fn exec_fifo_left_behind_an_exec_d_init_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("exec.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut user = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = user.id() as i32;
        let started = std::time::Instant::now();
        let r = release_exec_fifo(&fifo, pid);
        let _ = user.kill();
        let _ = user.wait();
        assert!(r.unwrap());
        assert!(!fifo.exists());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// An init that died before opening the fifo must not leave the start waiting.
    #[test]
    fn exec_fifo_with_dead_init_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("exec.fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        child.wait().unwrap();
        let started = std::time::Instant::now();
        let e = release_exec_fifo(&fifo, pid).unwrap_err();
        assert!(e.to_string().contains("already dead"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(fifo.exists(), "a failed start leaves runc's state alone");
    }

    /// A busybox `sleep 30` created (not started) by real runc in a temp root, cgroup `/<id>`;
    /// deleted with `runc delete --force` on drop, whatever the test left.
    struct RuncContainer {
        rt: OciRuntime,
        id: String,
        cgroup: String,
        _dir: tempfile::TempDir,
    }

    impl RuncContainer {
        async fn create(name: &str) -> RuncContainer {
            let runc = Path::new("/usr/sbin/runc");
            let busybox = Path::new("/bin/busybox");
            assert!(
                runc.exists() && busybox.exists(),
                "runc and busybox-static are required: run hack/install-deps.sh"
            );
            let dir = tempfile::tempdir().unwrap();
            let bundle = dir.path().join("bundle");
            std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
            std::fs::copy(busybox, bundle.join("rootfs/bin/busybox")).unwrap();
            let out = std::process::Command::new(runc)
                .arg("spec")
                .current_dir(&bundle)
                .output()
                .unwrap();
            assert!(out.status.success(), "runc spec: {out:?}");
            let cfg = bundle.join("config.json");
            let mut spec: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
            spec["process"]["terminal"] = false.into();
            spec["process"]["args"] = serde_json::json!(["/bin/busybox", "sleep", "30"]);
            let id = format!("ferrio-{name}-test-{}", std::process::id());
            let cgroup = format!("/{id}");
            spec["linux"]["cgroupsPath"] = cgroup.clone().into();
            std::fs::write(&cfg, serde_json::to_vec(&spec).unwrap()).unwrap();
            let rt = OciRuntime {
                name: "runc".into(),
                path: runc.into(),
                root: dir.path().join("root"),
                systemd_cgroup: false,
                cgroup_view: None,
                runc: true,
            };
            let created = std::process::Command::new(runc)
                .args(rt.global_args())
                .args(["create", "--bundle"])
                .arg(&bundle)
                .arg(&id)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .unwrap();
            assert!(created.success());
            RuncContainer {
                rt,
                id,
                cgroup,
                _dir: dir,
            }
        }
    }

    impl Drop for RuncContainer {
        fn drop(&mut self) {
            let _ = std::process::Command::new(&self.rt.path)
                .args(self.rt.global_args())
                .args(["delete", "--force", &self.id])
                .status();
        }
    }

    /// A container whose cgroup still holds a process cannot be deleted by removing it: the
    /// delete falls back to `runc delete --force`, which ends the process and the state.
    #[tokio::test]
    async fn delete_of_a_container_with_live_processes_falls_back_to_runc() {
        let c = RuncContainer::create("busy").await;
        let pid = c.rt.state(&c.id).await.unwrap().unwrap().pid;
        c.rt.start_created(&c.id, pid).await.unwrap();
        c.rt.delete_exited(&c.id, &c.cgroup).await.unwrap();
        assert!(
            c.rt.state(&c.id).await.unwrap().is_none(),
            "runc still knows it"
        );
        let gone = std::time::Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid) {
            assert!(std::time::Instant::now() < gone, "the process survived");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!Path::new("/sys/fs/cgroup/memory").join(&c.id).exists());
    }

    /// The real thing, the runc shortcuts end to end: `runc create` of a busybox bundle, the
    /// fifo start (runc then reports it running, with the bundle's process), the direct SIGKILL
    /// to every process (init is PID 1 of its own pid namespace), and the delete of the exited
    /// container that leaves neither runc state nor cgroup behind.
    #[tokio::test]
    async fn runc_shortcuts_start_kill_and_delete_a_real_container() {
        let runc = Path::new("/usr/sbin/runc");
        assert!(OciRuntime::is_runc(runc));
        assert!(!OciRuntime::is_runc(Path::new("/bin/busybox")));
        let c = RuncContainer::create("fifo").await;
        let (rt, id, cgroup) = (&c.rt, c.id.as_str(), c.cgroup.as_str());
        let st = rt.state(id).await.unwrap().unwrap();
        assert_eq!(st.status, "created");
        assert!(
            !init_has_exec_d(st.pid),
            "runc's init taken for the user process"
        );
        rt.start_created(id, st.pid).await.unwrap();
        // The fifo's EOF comes from exec closing init's end; the new name follows within it.
        let exec_d = std::time::Instant::now() + Duration::from_secs(5);
        while !init_has_exec_d(st.pid) {
            assert!(
                std::time::Instant::now() < exec_d,
                "the user process taken for runc's init"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let after = rt.state(id).await.unwrap().unwrap();
        assert_eq!((after.status.as_str(), after.pid), ("running", st.pid));
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", st.pid)).unwrap_or_default();
        assert!(cmdline.starts_with(b"/bin/busybox\0sleep"), "{cmdline:?}");

        // A process outside the container is never signalled directly (signal 0 is harmless).
        assert!(!signal_directly(id, std::process::id() as i32, 0, false).unwrap());
        assert!(signal_directly(id, st.pid, 0, true).unwrap());
        rt.kill_init(id, st.pid, libc::SIGKILL, true).await.unwrap();
        let gone = std::time::Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{}", st.pid)).exists() && !is_zombie(st.pid) {
            assert!(std::time::Instant::now() < gone, "init survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
        rt.delete_exited(id, cgroup).await.unwrap();
        assert!(rt.state(id).await.unwrap().is_none(), "runc still knows it");
        let memory_cg = Path::new("/sys/fs/cgroup/memory").join(id);
        assert!(!memory_cg.exists(), "{} left", memory_cg.display());
        rt.delete_exited(id, cgroup).await.unwrap();
        // Gone: the fallback `runc start` says so.
        assert!(rt.start_created(id, st.pid).await.is_err());
    }

    #[test]
    fn systemd_flag_is_global() {
        let mut rt = OciRuntime {
            name: "runc".into(),
            path: "/usr/sbin/runc".into(),
            root: "/run/x".into(),
            systemd_cgroup: false,
            cgroup_view: None,
            runc: false,
        };
        assert_eq!(rt.global_args(), ["--root", "/run/x"]);
        rt.systemd_cgroup = true;
        assert_eq!(rt.global_args(), ["--root", "/run/x", "--systemd-cgroup"]);
    }
}
