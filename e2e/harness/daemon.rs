//! The real `ferrio` binary as a child process of the test.

use super::client::Cri;
use super::env::{Env, Opts};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// How long a daemon may take to answer Version after it was started (recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long SIGTERM gets before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

pub fn ferrio_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrio"))
}

pub fn monitor_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ferrio-monitor"))
}

/// Whether this ferrio has a `--config-dir` flag, so the test can keep /etc/ferrio/ferrio.d out.
fn supports_config_dir() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        Command::new(ferrio_bin())
            .arg("--help")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--config-dir"))
            .unwrap_or(false)
    })
}

/// A running ferrio. Dropping it stops it (SIGTERM, then SIGKILL); the [`Env`] it runs on is
/// cleaned up when the last daemon and the test let go of it.
pub struct Daemon {
    env: Arc<Env>,
    child: Option<Child>,
    pid: u32,
}

impl Daemon {
    /// A new [`Env`] from `opts` and a daemon on it, answering CRI.
    pub async fn start(opts: Opts) -> Daemon {
        Daemon::start_on(&Arc::new(Env::new(opts))).await
    }

    /// A daemon on an existing env (a restart reuses root and runroot).
    pub async fn start_on(env: &Arc<Env>) -> Daemon {
        let mut d = Daemon::spawn_on(env);
        d.wait_ready().await;
        d
    }

    /// A daemon on an existing env, not yet answering (the fault tests kill it during
    /// recovery); `start_on` is this plus the wait for Version.
    pub fn spawn_on(env: &Arc<Env>) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(env.daemon_log())
            .expect("open the daemon log");
        let mut cmd = Command::new(ferrio_bin());
        cmd.arg("--config").arg(env.config_path());
        if supports_config_dir() {
            cmd.arg("--config-dir").arg(env.dropin_dir());
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup the log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", ferrio_bin().display()));
        let pid = child.id();
        Daemon {
            env: env.clone(),
            child: Some(child),
            pid,
        }
    }

    /// Wait until the socket answers Version; panic with the daemon's log if it exits or hangs.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ferrio exited during start-up with {status}; its log:\n{}",
                    self.log_tail(80)
                );
            }
            if self.env.socket().exists() {
                if let Ok(mut c) = Cri::connect(&self.env.socket()).await {
                    let req = ferrio::cri::v1::VersionRequest {
                        version: "v1".into(),
                    };
                    if c.rt.version(req).await.is_ok() {
                        return;
                    }
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "ferrio did not answer Version on {} within {START_TIMEOUT:?}; its log:\n{}",
                    self.env.socket().display(),
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn env(&self) -> &Arc<Env> {
        &self.env
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A fresh client on this daemon's socket.
    pub async fn client(&self) -> Cri {
        Cri::connect(&self.env.socket())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.env.socket().display()))
    }

    /// SIGHUP (reload the config files) and wait for the daemon to log the outcome: returns the
    /// log lines written since, ending with `config reloaded` or `config reload refused`.
    pub async fn sighup(&self) -> String {
        let read = || std::fs::read_to_string(self.env.daemon_log()).unwrap_or_default();
        let before = read().len();
        kill(Pid::from_raw(self.pid as i32), Signal::SIGHUP).expect("SIGHUP the daemon");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = read();
            let new = text.get(before..).unwrap_or_default();
            if new.contains("config reloaded") || new.contains("config reload refused") {
                return new.to_string();
            }
            if Instant::now() > deadline {
                panic!(
                    "ferrio logged no reload outcome within {START_TIMEOUT:?} of SIGHUP; its log:\n{}",
                    self.log_tail(80)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait for the exit (SIGKILL after a timeout); returns how it ended.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
            .expect("the daemon was running until stop()")
    }

    /// Assert that nothing this env's objects made is left; the daemon keeps running.
    pub fn assert_no_leaks(&self, learned: &super::LearnedPids) {
        self.env.assert_no_leaks(&[self.pid], learned);
    }

    /// The last `n` lines of the env's daemon log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.env.daemon_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "ferrio (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}; killing it",
            self.pid
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- ferrio log ({}) ----\n{}\n---- end of ferrio log ----",
                self.env.daemon_log().display(),
                self.log_tail(150)
            );
        }
        self.terminate();
    }
}
