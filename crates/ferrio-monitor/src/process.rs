//! The monitor side: what `ferrio-monitor` does from `main` to its exit.
//!
//! One synchronous, single-threaded event loop over `poll(2)`: a signalfd (SIGCHLD and the
//! termination signals), the read ends of the container's stdout and stderr pipes, and a timer
//! while the last output drains. No async runtime and no threads keep the RSS small and make
//! `fork` safe. The attach socket ([`crate::attach_server`]: output fan-out, stdin, resize, log
//! reopen, signals for the container's init) and the container's stdin are more fds in the same loop. With a tty, `<runtime>
//! create --console-socket` sends the pty master to a socket in the bundle; it then stands in
//! for the stdout pipe and stdin.
//!
//! Life of a monitor:
//! 1. `main` adopts the sync pipe (fd 3), forks; the first process exits 0 at once (the daemon
//!    reaps it) so that the monitor is not the daemon's child.
//! 2. The second process detaches (setsid), becomes a child subreaper (the container's init is
//!    reparented to it when the runtime's intermediate processes exit), sends `Started`, creates
//!    the stdio pipes and runs `<runtime> create` (with `--run`: `<runtime> run --detach`, which
//!    also starts it).
//! 3. When the runtime exits it sends `Created {pid}` or `Failed {error}` and closes the sync
//!    pipe.
//! 4. It copies output into the CRI log and reaps every child; when the container's init is
//!    reaped and its pipes are at EOF (or a short grace period passed) it writes the exit file
//!    atomically and exits.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::attach::socket_path;
use crate::attach_server::{bind_long, Action, AttachServer};
use crate::log::{CriLog, Stream};
use crate::oom;
use crate::protocol::{ExitRecord, MonitorArgs, SyncMessage, HANDLE_FD, SYNC_FD};
use ferrio_sys as sys;

/// How long output may still arrive after the container's init exited (processes that escaped
/// the init and hold the pipes must not keep the monitor alive for ever).
const EOF_GRACE: Duration = Duration::from_secs(1);

/// How long a partial line waits for its newline before it is logged as a `P` record.
const PARTIAL_FLUSH: Duration = Duration::from_secs(1);

/// How much of the runtime's own output is kept to explain a failed create.
const CREATE_OUTPUT_MAX: usize = 8 * 1024;

/// Read size for the pipes (one pipe buffer's worth is plenty).
const READ_BUF: usize = 32 * 1024;

/// How much attach input may wait for the container's stdin before clients are not read.
const STDIN_BACKLOG: usize = 256 * 1024;

/// How long attach clients get to take the exit notice before the monitor exits.
const CLIENT_EXIT_GRACE: Duration = Duration::from_millis(500);

/// The terminal's end-of-file character, sent when a tty's stdin is closed.
const EOT: u8 = 4;

/// Entry point of the `ferrio-monitor` binary: `args` excludes argv\[0\]; returns the exit status.
pub fn main<I: IntoIterator<Item = OsString>>(args: I) -> i32 {
    // Whatever the daemon leaked to us beyond the sync pipe must neither stay open here nor
    // reach the container. Nothing of ours is open yet.
    let _ = sys::close_from(HANDLE_FD + 1);
    let mut sync = SyncPipe(sys::take_inherited_fd(SYNC_FD).map(File::from));
    let handle_file = sys::take_inherited_fd(HANDLE_FD).map(File::from);
    let args = match MonitorArgs::parse(args) {
        Ok(a) => a,
        Err(e) => {
            sync.send(&SyncMessage::Failed {
                error: e.to_string(),
            });
            return 2;
        }
    };
    // Still single-threaded: nothing above starts a thread.
    match sys::fork_single_threaded() {
        Err(e) => {
            sync.send(&SyncMessage::Failed {
                error: format!("monitor fork: {e}"),
            });
            return 1;
        }
        // The daemon waits for this process; the child carries on without a parent that cares.
        Ok(sys::ForkResult::Parent { .. }) => return 0,
        Ok(sys::ForkResult::Child) => {}
    }
    let monitor = match Monitor::setup(&args, &mut sync, handle_file) {
        Ok(m) => m,
        Err(e) => {
            sync.send(&SyncMessage::Failed { error: e });
            return 1;
        }
    };
    monitor.run(sync)
}

/// The write end of the sync pipe; writes are best effort (a dead daemon must not stop us).
struct SyncPipe(Option<File>);

impl SyncPipe {
    fn send(&mut self, msg: &SyncMessage) {
        if let Some(f) = self.0.as_mut() {
            if f.write_all(&msg.to_line()).is_err() {
                self.0 = None;
            }
        }
    }

    fn close(&mut self) {
        self.0 = None;
    }
}

/// One output pipe of the container, read side.
struct Output {
    stream: Stream,
    fd: File,
}

/// Where the monitor is in the container's life.
enum Phase {
    /// `<runtime> create` runs as our child `runtime_pid`.
    Creating { runtime_pid: Pid },
    /// The container's init `pid` has not been reaped yet.
    Running { pid: Pid },
    /// The init was reaped; the rest of the output is drained until `deadline`.
    Exited {
        exit_code: i32,
        finished_at: i64,
        deadline: Instant,
    },
}

struct Monitor {
    args: MonitorArgs,
    phase: Phase,
    signals: SignalFd,
    outputs: Vec<Output>,
    log: CriLog,
    /// The log file did not exist before us: a failed create removes it again.
    log_created: bool,
    runtime_log: PathBuf,
    /// The runtime's own output while it was creating, to explain a failure.
    create_output: Vec<u8>,
    /// Children reaped before we knew the container's pid (pid, exit code, time).
    early_exits: Vec<(Pid, i32, i64)>,
    /// The container's cgroup counted an OOM kill by the time its init was reaped (see
    /// [`oom`] for why this is not left to the read at exit).
    oom_seen: bool,
    /// While the init runs on cgroup v2: the watch that catches a kill before systemd removes
    /// the cgroup.
    oom_watch: Option<oom::OomWatch>,
    /// Our end of the container's stdin (pipe write end, or a dup of the pty master); kept
    /// open so the container's stdin does not see EOF; attach clients write to it.
    stdin: Option<OwnedFd>,
    /// Attach input not yet taken by the container.
    stdin_buf: Vec<u8>,
    /// Close stdin once `stdin_buf` is written (stdin_once and the attach session ended).
    stdin_close: bool,
    /// The attach socket (also carries ReopenLog and Signal).
    attach: Option<AttachServer>,
    /// With a tty: the console socket the runtime sends the pty master to, while creating.
    console: Option<std::os::unix::net::UnixListener>,
    /// The runtime resolves a long console path through this fd of ours while it creates.
    console_dir: Option<File>,
    /// With a tty: the pty master, for resizes.
    tty_master: Option<OwnedFd>,
    buf: Vec<u8>,
    /// The daemon's handle file ([`HANDLE_FD`]), open until we exit: its lock says we live.
    _handle_file: Option<File>,
}

impl Monitor {
    /// Detaches, creates the pipes and starts `<runtime> create`. Errors are ready-made messages
    /// for the daemon.
    fn setup(
        args: &MonitorArgs,
        sync: &mut SyncPipe,
        handle_file: Option<File>,
    ) -> Result<Monitor, String> {
        nix::unistd::setsid().map_err(|e| format!("monitor setsid: {e}"))?;
        nix::sys::prctl::set_child_subreaper(true)
            .map_err(|e| format!("monitor set child subreaper: {e}"))?;
        redirect_stdio_to_null().map_err(|e| format!("monitor stdio to /dev/null: {e}"))?;
        let me = sys::ProcessHandle::current().map_err(|e| format!("monitor identity: {e}"))?;
        if let Some(f) = &handle_file {
            use std::os::unix::fs::FileExt;
            f.write_all_at(me.to_line().as_bytes(), 0)
                .map_err(|e| format!("monitor handle file: {e}"))?;
        }
        sync.send(&SyncMessage::Started {
            monitor_pid: me.pid,
            start_time: me.start_time,
        });

        // Block the signals we handle so that they queue on the signalfd instead. The runtime
        // gets a clean mask: std's Command resets it in the child before exec.
        let mut mask = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
        ] {
            mask.add(s);
        }
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
            .map_err(|e| format!("monitor block signals: {e}"))?;
        let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| format!("monitor signalfd: {e}"))?;

        let (out_r, out_w) = output_pipe().map_err(|e| format!("monitor stdout pipe: {e}"))?;
        let (err_r, err_w) = output_pipe().map_err(|e| format!("monitor stderr pipe: {e}"))?;
        let (stdin_child, stdin_keep) = if args.stdin && !args.tty {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| format!("monitor stdin pipe: {e}"))?;
            set_nonblocking(&w).map_err(|e| format!("monitor stdin pipe: {e}"))?;
            (Stdio::from(r), Some(w))
        } else {
            (Stdio::null(), None)
        };

        let (log, log_created) = match &args.log_path {
            Some(path) => {
                let existed = path.exists();
                let log = CriLog::open(path)
                    .map_err(|e| format!("opening log file {}: {e}", path.display()))?;
                (log, !existed)
            }
            None => (CriLog::new(None), false),
        };

        let runtime_log = args
            .runtime_log
            .clone()
            .unwrap_or_else(|| args.bundle.join("runtime-create.log"));
        // Stale files from an earlier attempt would be read as this attempt's answers.
        let _ = std::fs::remove_file(&runtime_log);
        let _ = std::fs::remove_file(&args.pid_file);

        // The attach socket exists before the daemon hears "created": attach may come at once.
        let attach_path = socket_path(&args.bundle);
        let attach = AttachServer::bind(&attach_path)
            .map_err(|e| format!("attach socket {}: {e}", attach_path.display()))?;
        // With a tty the runtime connects to a console socket and sends the pty master there.
        // Its path may be too long for sun_path: bind and pass it through our bundle dir's fd.
        let mut console = None;
        let mut console_arg = None;
        let bundle_dir = std::fs::File::open(&args.bundle)
            .map_err(|e| format!("opening bundle {}: {e}", args.bundle.display()))?;
        if args.tty {
            let path = args.bundle.join("console.sock");
            let l =
                bind_long(&path).map_err(|e| format!("console socket {}: {e}", path.display()))?;
            l.set_nonblocking(true)
                .map_err(|e| format!("console socket {}: {e}", path.display()))?;
            console = Some(l);
            console_arg = Some(if path.as_os_str().len() < 100 {
                path
            } else {
                PathBuf::from(format!(
                    "/proc/{}/fd/{}/console.sock",
                    nix::unistd::getpid(),
                    bundle_dir.as_raw_fd()
                ))
            });
        }

        let mut cmd = Command::new(&args.runtime_path);
        if args.cgroup_v1_view {
            // Read from our own mount table, which is the host's: the hook only builds it.
            match sys::CgroupV1View::of_host() {
                Ok(Some(view)) => std::sync::Arc::new(view).apply(&mut cmd),
                // Not hybrid (any more): the runtime needs no help.
                Ok(None) => {}
                Err(e) => return Err(format!("preparing the v1 cgroup view: {e}")),
            }
        }
        if args.systemd_cgroup {
            cmd.arg("--systemd-cgroup");
        }
        cmd.arg("--root")
            .arg(&args.runtime_root)
            .arg("--log")
            .arg(&runtime_log)
            .arg("--log-format")
            .arg("json");
        if args.run {
            // Created and started in one runtime process; the init runs once it returns.
            cmd.arg("run").arg("--detach");
        } else {
            cmd.arg("create");
        }
        cmd.arg("--bundle").arg(&args.bundle);
        if let Some(c) = &console_arg {
            cmd.arg("--console-socket").arg(c);
        }
        cmd.arg("--pid-file")
            .arg(&args.pid_file)
            .arg(&args.id)
            .stdin(stdin_child)
            .stdout(Stdio::from(out_w))
            .stderr(Stdio::from(err_w));
        // The Command (and with it our copies of the pipes' write ends) is dropped right after
        // the spawn, so EOF on the read ends means every writer is gone.
        let child = cmd.spawn();
        drop(cmd);
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                if log_created {
                    if let Some(p) = &args.log_path {
                        let _ = std::fs::remove_file(p);
                    }
                }
                return Err(format!("running {}: {e}", args.runtime_path.display()));
            }
        };
        let runtime_pid = Pid::from_raw(child.id() as i32);
        // Dropping std's Child neither waits nor kills; we reap it through the signalfd.
        drop(child);

        Ok(Monitor {
            args: args.clone(),
            phase: Phase::Creating { runtime_pid },
            signals,
            outputs: vec![
                Output {
                    stream: Stream::Stdout,
                    fd: File::from(out_r),
                },
                Output {
                    stream: Stream::Stderr,
                    fd: File::from(err_r),
                },
            ],
            log,
            log_created,
            runtime_log,
            create_output: Vec::new(),
            early_exits: Vec::new(),
            oom_seen: false,
            oom_watch: None,
            stdin: stdin_keep,
            stdin_buf: Vec::new(),
            stdin_close: false,
            attach: Some(attach),
            console,
            console_dir: console_arg.map(|_| bundle_dir),
            tty_master: None,
            buf: vec![0; READ_BUF],
            _handle_file: handle_file,
        })
    }

    /// The event loop; returns the monitor's exit status.
    fn run(mut self, mut sync: SyncPipe) -> i32 {
        loop {
            let flush_due = self.log.flush_stale(PARTIAL_FLUSH);
            let exit_due = match &self.phase {
                Phase::Exited { deadline, .. } => {
                    Some(deadline.saturating_duration_since(Instant::now()))
                }
                _ => None,
            };
            let timeout = match (flush_due, exit_due) {
                (None, None) => PollTimeout::NONE,
                (a, b) => {
                    let wait = a.unwrap_or(Duration::MAX).min(b.unwrap_or(Duration::MAX));
                    // Round up so that a due time under a millisecond does not spin.
                    let wait = wait.max(Duration::from_millis(1));
                    PollTimeout::try_from(wait).unwrap_or(PollTimeout::MAX)
                }
            };
            let n_out = self.outputs.len();
            let want_stdin = self.stdin.is_some() && !self.stdin_buf.is_empty();
            let (sig_ready, ready, stdin_ready, oom_ready, attach_rev) = {
                let mut fds = Vec::with_capacity(3 + n_out);
                fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
                for o in &self.outputs {
                    fds.push(PollFd::new(o.fd.as_fd(), PollFlags::POLLIN));
                }
                if let (true, Some(fd)) = (want_stdin, &self.stdin) {
                    fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLOUT));
                }
                let oom_at = fds.len();
                if let Some(w) = &self.oom_watch {
                    fds.push(PollFd::new(w.fd(), PollFlags::POLLIN));
                }
                let attach_at = fds.len();
                if let Some(a) = &self.attach {
                    fds.extend(a.poll_fds(self.stdin_buf.len() < STDIN_BACKLOG));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) | Err(Errno::EINTR) => {}
                    // poll only fails for bad arguments; nothing sensible is left to do.
                    Err(_) => return self.finish(),
                }
                let ready: Vec<bool> = fds[1..1 + n_out]
                    .iter()
                    .map(|f| f.any().unwrap_or(false))
                    .collect();
                let stdin_ready = want_stdin && fds[1 + n_out].any().unwrap_or(false);
                let attach_rev: Vec<PollFlags> = fds[attach_at..]
                    .iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect();
                let oom_ready = oom_at < attach_at && fds[oom_at].any().unwrap_or(false);
                (
                    fds[0].any().unwrap_or(false),
                    ready,
                    stdin_ready,
                    oom_ready,
                    attach_rev,
                )
            };
            if oom_ready {
                if let Some(w) = &mut self.oom_watch {
                    w.on_ready();
                }
            }
            // Output first, so that what the container wrote before dying is logged before its
            // exit is acted on.
            for i in (0..ready.len()).rev() {
                if ready[i] {
                    self.read_output(i);
                }
            }
            if sig_ready {
                self.handle_signals();
            }
            if stdin_ready {
                self.write_stdin();
            }
            if !attach_rev.is_empty() {
                self.handle_attach(&attach_rev);
            }
            if let Phase::Creating { runtime_pid } = self.phase {
                if let Some(code) = self.take_early_exit(runtime_pid).map(|(code, _)| code) {
                    match self.finish_create(code, &mut sync) {
                        Ok(()) => {}
                        Err(status) => return status,
                    }
                }
            }
            if let Phase::Exited { deadline, .. } = self.phase {
                if self.outputs.is_empty() || Instant::now() >= deadline {
                    return self.finish();
                }
            }
        }
    }

    /// Reads once from output `i`; at EOF (or a hard error) the stream is closed.
    fn read_output(&mut self, i: usize) {
        let stream = self.outputs[i].stream;
        match self.outputs[i].fd.read(&mut self.buf) {
            Ok(0) => {
                let _ = self.log.flush_partial(stream);
                self.outputs.remove(i);
            }
            Ok(n) => {
                let _ = self.log.write(stream, &self.buf[..n]);
                if let Some(a) = self.attach.as_mut() {
                    a.broadcast(stream, &self.buf[..n]);
                }
                if matches!(self.phase, Phase::Creating { .. }) {
                    let room = CREATE_OUTPUT_MAX.saturating_sub(self.create_output.len());
                    self.create_output
                        .extend_from_slice(&self.buf[..n.min(room)]);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                let _ = self.log.flush_partial(stream);
                self.outputs.remove(i);
            }
        }
    }

    /// Acts on the attach socket's readiness and the clients' requests.
    fn handle_attach(&mut self, revents: &[PollFlags]) {
        let Some(attach) = self.attach.as_mut() else {
            return;
        };
        let actions = attach.handle(revents);
        for action in actions {
            match action {
                Action::Stdin(data) => {
                    if self.stdin.is_some() && !self.stdin_close {
                        self.stdin_buf.extend_from_slice(&data);
                    }
                }
                Action::StdinDone => {
                    if self.args.stdin_once && self.stdin.is_some() && !self.stdin_close {
                        if self.tty_master.is_some() {
                            self.stdin_buf.push(EOT);
                        }
                        self.stdin_close = true;
                    }
                }
                Action::Resize(cols, rows) => {
                    if let Some(m) = &self.tty_master {
                        let _ = sys::set_winsize(m.as_fd(), cols, rows);
                    }
                }
                Action::ReopenLog(client) => {
                    let result = self.log.reopen().map_err(|e| {
                        format!(
                            "reopening log {}: {e}",
                            self.args
                                .log_path
                                .as_deref()
                                .unwrap_or(Path::new(""))
                                .display()
                        )
                    });
                    if let Some(a) = self.attach.as_mut() {
                        a.reply(client, result);
                    }
                }
                Action::Signal { client, signal } => {
                    let result = self.signal_init(signal);
                    if let Some(a) = self.attach.as_mut() {
                        a.reply(client, result);
                    }
                }
            }
        }
        if let Some(a) = self.attach.as_mut() {
            a.sweep();
        }
        self.write_stdin();
    }

    /// Sends `signal` to the container's init (the `Signal` request). Only while the init is
    /// unreaped: it is our child then (we are its subreaper), so its pid cannot have been
    /// reused, and kill(2) by pid reaches exactly the container's init.
    fn signal_init(&self, signal: i32) -> Result<(), String> {
        match self.phase {
            Phase::Running { pid } => sys::kill_child(pid.as_raw(), signal)
                .map_err(|e| format!("signal {signal} to the container's init {pid}: {e}")),
            Phase::Creating { .. } => {
                Err("container not running: the runtime has not finished creating it".into())
            }
            Phase::Exited { .. } => Err("container already exited".into()),
        }
    }

    /// Writes pending attach input into the container's stdin without blocking; closes stdin
    /// when a stdin_once session ended and everything was written.
    fn write_stdin(&mut self) {
        let Some(fd) = &self.stdin else {
            self.stdin_buf = Vec::new();
            return;
        };
        while !self.stdin_buf.is_empty() {
            match nix::unistd::write(fd, &self.stdin_buf) {
                Ok(n) => {
                    self.stdin_buf.drain(..n);
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                // The container closed its stdin (or exited): nothing more can go there.
                Err(_) => {
                    self.stdin = None;
                    self.stdin_buf = Vec::new();
                    return;
                }
            }
        }
        if self.stdin_buf.is_empty() {
            if self.stdin_buf.capacity() > READ_BUF {
                self.stdin_buf = Vec::new();
            }
            if self.stdin_close {
                self.stdin = None;
            }
        }
    }

    /// Takes the pty master the runtime sent to the console socket (tty containers).
    fn receive_console(&mut self) -> Result<(), String> {
        let Some(listener) = self.console.take() else {
            return Ok(());
        };
        self.console_dir = None;
        let _ = std::fs::remove_file(self.args.bundle.join("console.sock"));
        let (conn, _) = listener
            .accept()
            .map_err(|e| format!("the runtime sent no terminal: {e}"))?;
        conn.set_nonblocking(false)
            .map_err(|e| format!("console socket: {e}"))?;
        let (master, _) =
            sys::recv_fd(conn.as_fd()).map_err(|e| format!("receiving the terminal: {e}"))?;
        set_nonblocking(&master).map_err(|e| format!("terminal: {e}"))?;
        let dup = |m: &OwnedFd| m.try_clone().map_err(|e| format!("terminal: {e}"));
        self.outputs.push(Output {
            stream: Stream::Stdout,
            fd: File::from(dup(&master)?),
        });
        if self.args.stdin {
            self.stdin = Some(dup(&master)?);
        }
        self.tty_master = Some(master);
        Ok(())
    }

    /// Reads everything that is already in the pipes, without waiting for more.
    fn drain_outputs(&mut self) {
        for _ in 0..64 {
            let before: usize = self.outputs.len();
            let mut any = false;
            for i in (0..self.outputs.len()).rev() {
                let mut fds = [PollFd::new(self.outputs[i].fd.as_fd(), PollFlags::POLLIN)];
                if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0) {
                    any = true;
                    self.read_output(i);
                }
            }
            if !any && before == self.outputs.len() {
                return;
            }
        }
    }

    fn handle_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => self.reap(),
                // A create that hangs can be cancelled; a running container is not ours to stop.
                Ok(Signal::SIGTERM | Signal::SIGINT) => {
                    if let Phase::Creating { runtime_pid } = self.phase {
                        let _ = kill(runtime_pid, Signal::SIGKILL);
                    }
                }
                _ => {}
            }
        }
        // Signals coalesce: reap even when the SIGCHLD was merged with an earlier one.
        self.reap();
    }

    /// The container's init is gone: processes it left in a shared pid namespace would hold the
    /// pipes open and keep running (see [`crate::leftovers`]).
    fn kill_leftovers(&self) {
        if let Some(cg) = &self.args.cgroup_path {
            crate::leftovers::kill(cg);
        }
    }

    /// Reaps every exited child (we are a subreaper: orphans of the container land here), and
    /// records the status of the ones we care about.
    fn reap(&mut self) {
        loop {
            let (pid, code) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Ok(_) => continue,
                Err(_) => return,
            };
            let now = unix_nanos(SystemTime::now());
            match self.phase {
                Phase::Running { pid: init } if init == pid => {
                    self.phase = Phase::Exited {
                        exit_code: code,
                        finished_at: now,
                        deadline: Instant::now() + EOF_GRACE,
                    };
                    let watched = self.oom_watch.take().is_some_and(|mut w| w.killed(code));
                    self.oom_seen = watched
                        || self
                            .args
                            .cgroup_path
                            .as_deref()
                            .is_some_and(oom::oom_killed);
                    self.kill_leftovers();
                }
                // Until the pid file is read any child may turn out to be the container's init.
                Phase::Creating { .. } if self.early_exits.len() < 64 => {
                    self.early_exits.push((pid, code, now));
                }
                _ => {}
            }
        }
    }

    fn take_early_exit(&mut self, pid: Pid) -> Option<(i32, i64)> {
        let i = self.early_exits.iter().position(|(p, ..)| *p == pid)?;
        let (_, code, at) = self.early_exits.swap_remove(i);
        Some((code, at))
    }

    /// `<runtime> create` exited with `code`: report to the daemon. `Err` carries the monitor's
    /// exit status when there is no container to watch.
    fn finish_create(&mut self, code: i32, sync: &mut SyncPipe) -> Result<(), i32> {
        // Whatever the runtime printed is in the pipes already.
        self.drain_outputs();
        let created = if code == 0 {
            read_pid_file(&self.args.pid_file).and_then(|pid| self.receive_console().map(|_| pid))
        } else {
            Err(self.runtime_error(code))
        };
        let _ = std::fs::remove_file(&self.runtime_log);
        self.create_output = Vec::new();
        match created {
            Ok(pid) => {
                sync.send(&SyncMessage::Created { pid: pid.as_raw() });
                sync.close();
                self.phase = match self.take_early_exit(pid) {
                    Some((exit_code, finished_at)) => {
                        self.kill_leftovers();
                        Phase::Exited {
                            exit_code,
                            finished_at,
                            deadline: Instant::now() + EOF_GRACE,
                        }
                    }
                    None => {
                        self.oom_watch = self
                            .args
                            .cgroup_path
                            .as_deref()
                            .and_then(oom::OomWatch::start);
                        Phase::Running { pid }
                    }
                };
                self.early_exits = Vec::new();
                Ok(())
            }
            Err(error) => {
                sync.send(&SyncMessage::Failed { error });
                sync.close();
                if self.log_created {
                    if let Some(p) = &self.args.log_path {
                        let _ = std::fs::remove_file(p);
                    }
                }
                Err(1)
            }
        }
    }

    /// The runtime's explanation of a failed create: the last error in its JSON log, else what it
    /// printed, else its exit status.
    fn runtime_error(&self, code: i32) -> String {
        if let Some(msg) = std::fs::read_to_string(&self.runtime_log)
            .ok()
            .and_then(|text| last_runtime_error(&text))
        {
            return msg;
        }
        let printed = String::from_utf8_lossy(&self.create_output);
        let printed = printed.trim();
        if !printed.is_empty() {
            return printed.to_string();
        }
        format!(
            "{} {} exited with status {code}",
            self.args.runtime_path.display(),
            if self.args.run { "run" } else { "create" }
        )
    }

    /// The container is gone: flush the log, write the exit file, and return our exit status.
    fn finish(mut self) -> i32 {
        self.drain_outputs();
        let _ = self.log.flush_partial(Stream::Stdout);
        let _ = self.log.flush_partial(Stream::Stderr);
        let (exit_code, finished_at) = match self.phase {
            Phase::Exited {
                exit_code,
                finished_at,
                ..
            } => (exit_code, finished_at),
            // Only reached when poll failed: say so with an impossible exit code.
            _ => (-1, unix_nanos(SystemTime::now())),
        };
        let oom_killed = self.oom_seen
            || self
                .args
                .cgroup_path
                .as_deref()
                .is_some_and(oom::oom_killed);
        let record = ExitRecord {
            exit_code,
            finished_at,
            oom_killed,
        };
        let status = match write_exit_file(&self.args.exit_file, &record) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        if let Some(mut a) = self.attach.take() {
            a.finish(exit_code, CLIENT_EXIT_GRACE);
        }
        let _ = std::fs::remove_file(socket_path(&self.args.bundle));
        status
    }
}

/// Points fds 0-2 at /dev/null so that we keep none of the daemon's terminals or pipes.
fn redirect_stdio_to_null() -> io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    for fd in 0..3 {
        nix::unistd::dup2(null.as_raw_fd(), fd)?;
    }
    Ok(())
}

/// A pipe for one output stream: the read end (ours) is non-blocking, the write end (the
/// container's) stays blocking so that the container's writes behave normally.
fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let flags = OFlag::from_bits_truncate(fcntl(r.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(r.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok((r, w))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

fn read_pid_file(path: &Path) -> Result<Pid, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading pid file {}: {e}", path.display()))?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Pid::from_raw(pid)),
        _ => Err(format!(
            "pid file {} holds no pid: {:?}",
            path.display(),
            text.trim()
        )),
    }
}

/// The message of the last error-level entry in a runtime's `--log-format json` log (runc and
/// crun write one JSON object per line with `level` and `msg`).
pub fn last_runtime_error(log: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        level: String,
        #[serde(default)]
        msg: String,
    }
    log.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Entry>(l).ok())
        .find(|e| matches!(e.level.as_str(), "error" | "fatal" | "panic") && !e.msg.is_empty())
        .map(|e| e.msg)
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Writes the exit record atomically: a temporary file renamed over the final name, so a reader
/// sees either nothing or the whole record, whoever is killed when. No fsync: the record
/// describes a process of this boot and lives in the runroot (tmpfs on most hosts); after a
/// reboot the daemon marks every container exited without reading it. Two fsyncs cost more
/// than the rest of a StopContainer on a slow disk.
pub fn write_exit_file(path: &Path, record: &ExitRecord) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let json = serde_json::to_vec(record).map_err(io::Error::other)?;
    File::create(&tmp)?.write_all(&json)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_of_a_runc_json_log_is_found() {
        let log = concat!(
            r#"{"level":"warning","msg":"something minor","time":"2024-01-01T00:00:00Z"}"#,
            "\n",
            r#"{"level":"error","msg":"runc create failed: unable to start container process: exec: \"nope\": executable file not found in $PATH","time":"2024-01-01T00:00:00Z"}"#,
            "\n",
            "not json\n",
        );
        assert_eq!(
            last_runtime_error(log).as_deref(),
            Some(
                r#"runc create failed: unable to start container process: exec: "nope": executable file not found in $PATH"#
            )
        );
        assert_eq!(last_runtime_error(r#"{"level":"info","msg":"x"}"#), None);
    }

    #[test]
    fn exit_file_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("exit");
        let rec = ExitRecord {
            exit_code: 3,
            finished_at: 5,
            oom_killed: false,
        };
        write_exit_file(&path, &rec).unwrap();
        let back: ExitRecord = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, rec);
        assert!(!dir.path().join("exit.tmp").exists());
    }
}
