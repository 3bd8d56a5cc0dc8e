//! Running a process in a running container (`<runtime> exec`), daemon side: [`exec_sync`] for
//! CRI ExecSync (kubelet's exec probes) and [`spawn_exec`] -> [`ExecSession`] for the streaming
//! server's Exec (stdin, stdout/stderr or a terminal, resize, exit code).
//!
//! # Why in the daemon and not in a monitor
//!
//! `<runtime> exec` in the foreground stays the parent of the process it runs and exits with
//! its status (128 + signal when killed), so the daemon waits on its own child only (never on
//! pid -1) and no monitor process is needed per exec: nothing outlives the session, which is
//! what CRI wants (an exec does not survive a daemon restart in CRI-O either).
//!
//! A terminal is a pty pair made here: the runtime's stdio is the slave, so `runc exec -t`
//! relays between it and the container's own pty; a resize sets the size on our master and
//! sends SIGWINCH to the runtime, which copies the size into the container's terminal.
//!
//! # Timeouts
//!
//! When an ExecSync runs past its timeout, the exec'd process (pid from the runtime's
//! `--pid-file`) gets SIGKILL, and the call returns the exit code (137) and what was captured,
//! not an error (cri-o#3065: kubelet's probes depend on it).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::monitor::MonitorError;

/// The default cap on what ExecSync keeps of each stream (CRI-O's limit is the same 16 MiB).
pub const EXEC_SYNC_OUTPUT_MAX: usize = 16 * 1024 * 1024;

/// How long output may still arrive after the runtime exited (a background process that
/// inherited the pipes must not hold an ExecSync for ever).
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// How long after SIGKILL the runtime gets to report the exit.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    /// The OCI runtime binary.
    pub runtime_path: PathBuf,
    /// The runtime's `--root`.
    pub runtime_root: PathBuf,
    /// The container, as the runtime knows it.
    pub id: String,
    /// argv of the process; the rest (env, user, cwd, caps) comes from the container's spec.
    pub cmd: Vec<String>,
    /// Run it on a terminal (stdout carries the terminal; there is no stderr).
    pub tty: bool,
    /// Give it a stdin the caller writes (else /dev/null).
    pub stdin: bool,
    /// A directory the daemon owns (the container's run dir) for the runtime's pid file.
    pub state_dir: PathBuf,
    /// Run the runtime in this private cgroup view (`OciRuntime::cgroup_view`: crun on a
    /// hybrid host).
    pub cgroup_view: Option<Arc<crate::sys::CgroupV1View>>,
    /// The container's `process` from its bundle's spec: given to the runtime as `--process`
    /// with `cmd` and `tty` in place, so the process runs as the container's user with its
    /// supplementary groups, env, cwd, capabilities and security settings whatever the runtime
    /// defaults to (crun's `exec` runs as root without it). `None`: the runtime's defaults.
    pub process: Option<serde_json::Value>,
    /// Started before the runtime runs (it moves the process into the container's cgroup); see
    /// [`crate::oci::attach_warm`].
    pub attach_warm: Option<Arc<crate::oci::attach_warm::AttachWarm>>,
}

/// The result of an ExecSync.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExecSyncOutput {
    /// The process's exit status, 128 + signal when it was killed (137 after a timeout).
    pub exit_code: i32,
    /// Captured stdout, at most the limit given.
    pub stdout: Vec<u8>,
    /// Captured stderr, at most the limit given.
    pub stderr: Vec<u8>,
    /// The timeout ran out and the process was killed.
    pub timed_out: bool,
}

/// A process running in a container for a streaming Exec.
///
/// Take the streams you need ([`take_stdin`](Self::take_stdin), ...), pump them, then
/// [`wait`](Self::wait) for the exit code. Dropping the session kills the runtime process (and
/// with it the exec'd process, which the runtime forwards signals to).
pub struct ExecSession {
    id: String,
    child: tokio::process::Child,
    runtime_pid: i32,
    pid_file: PathBuf,
    /// The `--process` file written for the runtime, removed with the pid file.
    process_file: Option<PathBuf>,
    stdin: Option<ExecStdin>,
    stdout: Option<ExecOutput>,
    stderr: Option<ExecOutput>,
    resizer: Option<ExecResizer>,
}

/// The exec'd process's stdin; dropping it (or `shutdown`) closes it. On a terminal, where the
/// master stays open for the output, `shutdown` sends the terminal's EOF character (^D) instead.
pub struct ExecStdin {
    stream: FdStream,
    tty: bool,
    eof_sent: bool,
}

/// One output stream of the exec'd process (stdout, or the terminal with a tty); a terminal's
/// end reads as EOF.
pub struct ExecOutput(FdStream);

/// Resizes the terminal of a tty exec. Cheap to clone.
#[derive(Clone)]
pub struct ExecResizer {
    master: Arc<OwnedFd>,
    runtime_pid: i32,
}

impl ExecResizer {
    /// Sets the terminal to `width` columns and `height` rows.
    pub fn resize(&self, width: u16, height: u16) -> io::Result<()> {
        crate::sys::set_winsize(self.master.as_fd(), width, height)?;
        // The runtime copies its terminal's size into the container's on SIGWINCH.
        kill(Pid::from_raw(self.runtime_pid), Signal::SIGWINCH).map_err(io::Error::from)
    }
}

fn exec_err(id: &str, message: impl std::fmt::Display) -> MonitorError {
    MonitorError::Runtime {
        id: id.to_string(),
        message: format!("exec: {message}"),
    }
}

/// Starts `spec.cmd` in the container through `<runtime> exec`.
pub async fn spawn_exec(spec: &ExecSpec) -> Result<ExecSession, MonitorError> {
    if spec.cmd.is_empty() {
        return Err(exec_err(&spec.id, "no command given"));
    }
    if let Some(warm) = &spec.attach_warm {
        warm.start();
    }
    let name = format!("exec-{:016x}", rand::random::<u64>());
    let pid_file = spec.state_dir.join(format!("{name}.pid"));
    let process_file = spec.state_dir.join(format!("{name}.process.json"));
    let started = start_exec(spec, pid_file.clone(), process_file.clone()).await;
    if started.is_err() {
        // Once an ExecSession exists it removes both; before that, whatever was written goes here.
        for f in [pid_file, process_file] {
            let _ = tokio::fs::remove_file(f).await;
        }
    }
    started
}

/// [`spawn_exec`] after its checks: the runtime writes `pid_file`, and `process_file` holds the
/// exec's process when the spec has the container's.
async fn start_exec(
    spec: &ExecSpec,
    pid_file: PathBuf,
    process_file: PathBuf,
) -> Result<ExecSession, MonitorError> {
    let mut cmd = tokio::process::Command::new(&spec.runtime_path);
    crate::sys::without_daemon_notify(cmd.as_std_mut());
    cmd.arg("--root")
        .arg(&spec.runtime_root)
        .arg("exec")
        .arg("--pid-file")
        .arg(&pid_file);
    let process_file = match &spec.process {
        Some(process) => {
            let json = serde_json::to_vec(&exec_process(process, &spec.cmd, spec.tty))
                .map_err(|e| exec_err(&spec.id, format!("process spec: {e}")))?;
            tokio::fs::write(&process_file, json)
                .await
                .map_err(|e| exec_err(&spec.id, format!("{}: {e}", process_file.display())))?;
            cmd.arg("--process").arg(&process_file).arg(&spec.id);
            Some(process_file)
        }
        None => {
            if spec.tty {
                cmd.arg("--tty");
            }
            cmd.arg(&spec.id).args(&spec.cmd);
            None
        }
    };
    cmd.kill_on_drop(true);
    if let Some(view) = &spec.cgroup_view {
        view.apply(cmd.as_std_mut());
    }

    let io_err = |what: &str, e: &dyn std::fmt::Display| exec_err(&spec.id, format!("{what}: {e}"));
    let mut keep_stdin = None;
    let (stdout, stderr, resizer_master) = if spec.tty {
        let pty = nix::pty::openpty(None, None).map_err(|e| io_err("openpty", &e))?;
        set_cloexec(&pty.master).map_err(|e| io_err("pty", &e))?;
        set_cloexec(&pty.slave).map_err(|e| io_err("pty", &e))?;
        let slave = |e| io_err("pty slave", &e);
        cmd.stdin(Stdio::from(pty.slave.try_clone().map_err(slave)?))
            .stdout(Stdio::from(pty.slave.try_clone().map_err(slave)?))
            .stderr(Stdio::from(pty.slave));
        let master = pty.master;
        if spec.stdin {
            keep_stdin = Some(master.try_clone().map_err(|e| io_err("pty", &e))?);
        }
        let resize = Arc::new(master.try_clone().map_err(|e| io_err("pty", &e))?);
        (Some(master), None, Some(resize))
    } else {
        let (out_r, out_w) = cloexec_pipe().map_err(|e| io_err("pipe", &e))?;
        let (err_r, err_w) = cloexec_pipe().map_err(|e| io_err("pipe", &e))?;
        if spec.stdin {
            let (in_r, in_w) = cloexec_pipe().map_err(|e| io_err("pipe", &e))?;
            cmd.stdin(Stdio::from(in_r));
            keep_stdin = Some(in_w);
        } else {
            cmd.stdin(Stdio::null());
        }
        cmd.stdout(Stdio::from(out_w)).stderr(Stdio::from(err_w));
        (Some(out_r), Some(err_r), None)
    };
    let child = cmd
        .spawn()
        .map_err(|e| io_err(&format!("running {}", spec.runtime_path.display()), &e))?;
    // Our copies of the child's ends go with the Command, so that EOF means every writer is gone.
    drop(cmd);
    let runtime_pid = child.id().map(|p| p as i32).unwrap_or(0);
    let stream = |fd: OwnedFd| FdStream::new(fd).map_err(|e| io_err("async fd", &e));
    Ok(ExecSession {
        id: spec.id.clone(),
        child,
        runtime_pid,
        pid_file,
        process_file,
        stdin: keep_stdin.map(stream).transpose()?.map(|stream| ExecStdin {
            stream,
            tty: spec.tty,
            eof_sent: false,
        }),
        stdout: stdout.map(stream).transpose()?.map(ExecOutput),
        stderr: stderr.map(stream).transpose()?.map(ExecOutput),
        resizer: resizer_master.map(|master| ExecResizer {
            master,
            runtime_pid,
        }),
    })
}

impl ExecSession {
    /// The stdin writer (only when the spec asked for stdin).
    pub fn take_stdin(&mut self) -> Option<ExecStdin> {
        self.stdin.take()
    }

    /// The stdout reader (with a tty: the terminal).
    pub fn take_stdout(&mut self) -> Option<ExecOutput> {
        self.stdout.take()
    }

    /// The stderr reader (none with a tty).
    pub fn take_stderr(&mut self) -> Option<ExecOutput> {
        self.stderr.take()
    }

    /// A terminal resizer (only with a tty).
    pub fn resizer(&self) -> Option<ExecResizer> {
        self.resizer.clone()
    }

    /// Waits for the process; returns its exit code (128 + signal when killed).
    pub async fn wait(&mut self) -> Result<i32, MonitorError> {
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| exec_err(&self.id, format!("waiting for the runtime: {e}")))?;
        let _ = tokio::fs::remove_file(&self.pid_file).await;
        if let Some(p) = &self.process_file {
            let _ = tokio::fs::remove_file(p).await;
        }
        use std::os::unix::process::ExitStatusExt;
        Ok(match (status.code(), status.signal()) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 255,
        })
    }

    /// SIGKILLs the exec'd process (and the runtime if the process is not known yet); the exit
    /// then comes through [`wait`](Self::wait).
    pub async fn kill(&mut self) {
        match self.exec_pid().await {
            // Its children too: a shell's `sleep` would otherwise live on in the container.
            Some(pid) => kill_tree(pid),
            None => {
                let _ = self.child.start_kill();
            }
        }
    }

    /// The exec'd process's pid (host pid namespace), once the runtime wrote it.
    pub async fn exec_pid(&self) -> Option<i32> {
        let text = tokio::fs::read_to_string(&self.pid_file).await.ok()?;
        text.trim().parse().ok().filter(|p: &i32| *p > 0)
    }

    /// The runtime process's pid (our child).
    pub fn runtime_pid(&self) -> i32 {
        self.runtime_pid
    }
}

impl Drop for ExecSession {
    fn drop(&mut self) {
        // A session dropped while its process runs (the client went away) must not leave the
        // process behind: the runtime cannot forward the SIGKILL that kill_on_drop sends it.
        if matches!(self.child.try_wait(), Ok(None)) {
            if let Some(pid) = std::fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                .filter(|p| *p > 0)
            {
                kill_tree(pid);
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
        if let Some(p) = &self.process_file {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The exec process: the container's `process` with `cmd` as its args and a terminal when `tty`.
fn exec_process(container: &serde_json::Value, cmd: &[String], tty: bool) -> serde_json::Value {
    let mut p = container.clone();
    if let Some(o) = p.as_object_mut() {
        o.insert("args".into(), serde_json::json!(cmd));
        o.insert("terminal".into(), serde_json::json!(tty));
        // The container's terminal size is not the exec's; the client resizes its own.
        o.remove("consoleSize");
    }
    p
}

/// Runs `spec.cmd` to completion, capturing at most `limit` bytes of each stream. With a
/// `timeout` the process is killed when it runs out, and the result says so (not an error).
pub async fn exec_sync(
    spec: &ExecSpec,
    timeout: Option<Duration>,
    limit: usize,
) -> Result<ExecSyncOutput, MonitorError> {
    let spec = ExecSpec {
        tty: false,
        stdin: false,
        ..spec.clone()
    };
    let mut session = spawn_exec(&spec).await?;
    let (exited_tx, exited_rx) = tokio::sync::watch::channel(false);
    // Readers run on their own so that a full pipe never stalls the process while we wait.
    let readers: Vec<_> = [session.take_stdout(), session.take_stderr()]
        .into_iter()
        .map(|out| {
            let exited = exited_rx.clone();
            tokio::spawn(async move {
                match out {
                    Some(out) => read_capped(out, limit, exited).await,
                    None => Vec::new(),
                }
            })
        })
        .collect();
    let mut timed_out = false;
    let exit_code = match timeout {
        Some(t) if !t.is_zero() => match tokio::time::timeout(t, session.wait()).await {
            Ok(r) => r?,
            Err(_) => {
                timed_out = true;
                session.kill().await;
                match tokio::time::timeout(KILL_WAIT, session.wait()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        // The runtime itself hangs: take it down too.
                        let _ = session.child.start_kill();
                        session.wait().await?
                    }
                }
            }
        },
        _ => session.wait().await?,
    };
    let _ = exited_tx.send(true);
    let mut outputs = Vec::with_capacity(2);
    for r in readers {
        outputs.push(r.await.unwrap_or_default());
    }
    let stderr = outputs.pop().unwrap_or_default();
    let stdout = outputs.pop().unwrap_or_default();
    Ok(ExecSyncOutput {
        // A process that ignored the kill long enough to exit 0 still timed out.
        exit_code: if timed_out && exit_code == 0 {
            137
        } else {
            exit_code
        },
        stdout,
        stderr,
        timed_out,
    })
}

/// Reads `out` until EOF, keeping at most `limit` bytes (the rest is read and dropped so that
/// the writer never blocks). Once `exited` turns true, only [`OUTPUT_GRACE`] is left: a
/// background process that inherited the pipe must not hold the caller for ever.
async fn read_capped(
    mut out: ExecOutput,
    limit: usize,
    mut exited: tokio::sync::watch::Receiver<bool>,
) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let n = match deadline {
            Some(d) => match tokio::time::timeout_at(d, out.read(&mut chunk)).await {
                Ok(r) => r,
                Err(_) => break,
            },
            None => tokio::select! {
                r = out.read(&mut chunk) => r,
                _ = exited.wait_for(|e| *e) => {
                    deadline = Some(tokio::time::Instant::now() + OUTPUT_GRACE);
                    continue;
                }
            },
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
    buf
}

/// SIGKILLs `pid` and every descendant it has now (found through /proc's children lists).
fn kill_tree(pid: i32) {
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() && tree.len() < 4096 {
        let p = tree[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                tree.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
        i += 1;
    }
    for p in tree {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::FdFlag;
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(())
}

fn cloexec_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// A non-blocking fd (pipe end or pty master) as a tokio AsyncRead + AsyncWrite.
struct FdStream {
    fd: AsyncFd<OwnedFd>,
}

impl FdStream {
    fn new(fd: OwnedFd) -> io::Result<FdStream> {
        let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(FdStream {
            fd: crate::sys::async_fd(fd)?,
        })
    }
}

impl AsyncRead for FdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard
                .try_io(|fd| nix::unistd::read(fd.as_raw_fd(), unfilled).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // A pty master reads EIO once the last slave is closed: that is its EOF.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for FdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return Poll::Pending,
            };
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for ExecOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ExecStdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tty && !self.eof_sent {
            match Pin::new(&mut self.stream).poll_write(cx, &[4]) {
                Poll::Ready(Ok(_)) => self.eof_sent = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exec_process_is_the_containers_with_its_own_args_and_terminal() {
        let container = serde_json::json!({
            "terminal": true,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1001, "gid": 1001, "additionalGids": [5, 6]},
            "args": ["sleep", "1000"],
            "env": ["PATH=/bin", "A=b"],
            "cwd": "/work",
            "noNewPrivileges": true
        });
        let p = exec_process(&container, &["id".to_string(), "-u".to_string()], false);
        assert_eq!(p["args"], serde_json::json!(["id", "-u"]));
        assert_eq!(p["terminal"], false);
        assert!(p.get("consoleSize").is_none());
        assert_eq!(p["user"], container["user"]);
        assert_eq!(p["env"], container["env"]);
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["noNewPrivileges"], true);
    }

    #[tokio::test]
    async fn an_exec_whose_runtime_cannot_run_leaves_no_file_in_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ExecSpec {
            runtime_path: dir.path().join("no-such-runtime"),
            runtime_root: dir.path().join("root"),
            id: "c1".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            state_dir: dir.path().to_path_buf(),
            cgroup_view: None,
            process: Some(serde_json::json!({"args": ["sleep", "1"], "cwd": "/"})),
            attach_warm: None,
        };
        let err = spawn_exec(&spec)
            .await
            .err()
            .expect("the runtime cannot run");
        assert!(err.to_string().contains("no-such-runtime"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}
