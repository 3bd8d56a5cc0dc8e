//! `ferrio`: the daemon. Args -> Config::load -> Daemon::start (recovery) -> serve until a
//! signal. Containers keep running when it exits. SIGHUP reloads the config files.

use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use ferrio::config::{Config, LogLevel, DEFAULT_DROPIN_DIR};
use ferrio::server;
use nix::fcntl::{Flock, FlockArg};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// How long in-flight requests may run after SIGTERM.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the packaged ferrio-monitor lives when it is not next to the ferrio binary: it is run
/// by the daemon only, never by users, so it stays out of PATH.
const LIBEXEC_MONITOR: &str = "/usr/libexec/ferrio/ferrio-monitor";

#[derive(Parser)]
#[command(
    name = "ferrio",
    version,
    about = "A Kubernetes CRI container runtime",
    long_about = "ferrio serves the Kubernetes Container Runtime Interface (CRI v1) over gRPC on a \
        unix socket: it pulls images from registries, runs pods and containers with an OCI runtime \
        (runc or crun), wires pods into the network with CNI plugins, and supervises each \
        container with its own ferrio-monitor process.\n\n\
        Containers keep running while the daemon restarts: a new ferrio finds them again from its \
        state on disk, records exits that happened while it was down and only then serves the \
        socket."
)]
struct Cli {
    /// Config file (default /etc/ferrio/ferrio.toml, optional when not given).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Drop-in directory applied after the config file, in lexical order.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_DROPIN_DIR)]
    config_dir: PathBuf,
    /// Overrides log_level from the config.
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the complete effective config as commented TOML.
    Config,
    /// Print a manual page as roff (what the Debian package installs).
    #[command(hide = true)]
    Man { page: ManPage },
}

#[derive(Clone, Copy, ValueEnum)]
enum ManPage {
    /// ferrio(8)
    #[value(name = "ferrio")]
    Ferrio,
    /// ferrio.toml(5)
    #[value(name = "ferrio.toml")]
    FerrioToml,
}

/// The tracing filter for a log level: ferrio's own crates at `level`, everything else at warn.
fn log_filter(level: LogLevel) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::new(format!("ferrio={level},ferrio_monitor={level},warn"))
}

fn main() {
    ferrio::sys::tune_malloc();
    let cli = Cli::parse();
    // Before the config is read: the pages document the defaults, not this host's files.
    if let Some(Command::Man { page }) = cli.command {
        let version = env!("CARGO_PKG_VERSION");
        print!(
            "{}",
            match page {
                ManPage::Ferrio => ferrio::man::command_page(&Cli::command(), version),
                ManPage::FerrioToml => ferrio::man::config_page(version),
            }
        );
        return;
    }
    let source = server::ConfigSource {
        file: cli.config.clone(),
        dropin_dir: Some(cli.config_dir.clone()),
        log_level: cli.log_level.clone(),
    };
    let mut config = match Config::load(cli.config.as_deref(), Some(&cli.config_dir)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferrio: invalid config: {e}");
            std::process::exit(2);
        }
    };
    if let Some(level) = cli.log_level {
        config.log_level = match level.parse() {
            Ok(l) => l,
            Err(e) => {
                eprintln!("ferrio: --log-level: {e}");
                std::process::exit(2);
            }
        };
    }
    if let Some(Command::Config) = cli.command {
        print!("{}", config.to_commented_toml());
        return;
    }
    // The filter sits behind a reload handle so SIGHUP can change the level in place.
    let (filter, log_handle) = tracing_subscriber::reload::Layer::new(log_filter(config.log_level));
    {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colours for a person at a terminal only: a log file or the journal gets
                    // plain text that grep and journalctl read as it is.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init();
    }
    for (key, why) in config.ignored_keys() {
        tracing::warn!(key, "config key is no longer used and is ignored: {why}");
    }
    let set_log_level = move |level: LogLevel| {
        log_handle
            .reload(log_filter(level))
            .map_err(|e| format!("cannot change the log level: {e}"))
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferrio: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(serve(config, source, set_log_level)) {
        tracing::error!("{e:#}");
        eprintln!("ferrio: {e:#}");
        std::process::exit(1);
    }
}

/// The ferrio-monitor binary: configured, or next to this executable (a build tree, the cargo
/// install), or the packaged one in /usr/libexec/ferrio.
fn monitor_path(config: &Config) -> anyhow::Result<PathBuf> {
    if !config.runtime.monitor_path.as_os_str().is_empty() {
        return Ok(config.runtime.monitor_path.clone());
    }
    let exe = std::env::current_exe().context("cannot find the ferrio executable")?;
    let beside = exe.with_file_name("ferrio-monitor");
    if beside.exists() {
        return Ok(beside);
    }
    let packaged = PathBuf::from(LIBEXEC_MONITOR);
    if packaged.exists() {
        return Ok(packaged);
    }
    bail!(
        "ferrio-monitor not found next to {} nor at {LIBEXEC_MONITOR} (set runtime.monitor_path)",
        exe.display()
    );
}

/// Tell systemd (Type=notify) that recovery is done and the socket is served. A no-op when not
/// started by systemd.
fn notify_ready() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().to_string();
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|a| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(b"READY=1\nSTATUS=serving CRI", &a)
    });
    if let Err(e) = sent {
        tracing::warn!(socket = %path, error = %e, "cannot notify systemd");
    }
}

/// Bind the CRI socket: parent created, one daemon per socket (a lock file beside it), a stale
/// socket replaced, mode 0660.
fn bind(listen: &Path) -> anyhow::Result<(tokio::net::UnixListener, Flock<std::fs::File>)> {
    let dir = listen.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let lock_path = listen.with_extension("lock");
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("open {}", lock_path.display()))?;
    let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "{}: another ferrio is serving this socket ({e})",
            listen.display()
        )
    })?;
    if listen.exists() {
        std::fs::remove_file(listen)
            .with_context(|| format!("remove stale socket {}", listen.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(listen)
        .with_context(|| format!("bind {}", listen.display()))?;
    std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod {}", listen.display()))?;
    Ok((listener, lock))
}

async fn serve(
    config: Config,
    source: server::ConfigSource,
    set_log_level: impl Fn(LogLevel) -> Result<(), String> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let monitor = monitor_path(&config)?;
    let listen = config.api.listen.clone();
    // Take the socket before recovery so a second daemon cannot recover the same state.
    let (listener, _lock) = bind(&listen)?;
    // Registered before recovery: SIGHUP's default action would kill the daemon. A SIGHUP that
    // comes during recovery is handled once serving starts.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot handle SIGHUP")?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), root = %config.root.display(), runroot = %config.runroot.display(), "ferrio starting");
    let daemon = server::Daemon::start(config, monitor)
        .await
        .context("cannot start")?;
    tracing::info!(socket = %listen.display(), "serving CRI");
    notify_ready();
    {
        let daemon = daemon.clone();
        let set_log_level = std::sync::Arc::new(set_log_level);
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                let (d, src, set) = (daemon.clone(), source.clone(), set_log_level.clone());
                // Reading the files is blocking work.
                match tokio::task::spawn_blocking(move || d.reload(&src, &*set)).await {
                    Ok(result) => server::log_outcome(&result),
                    Err(e) => tracing::error!(error = %e, "config reload task failed"),
                }
            }
        });
    }
    let signal = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            _ => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down, containers keep running"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down, containers keep running"),
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = server::run(daemon, listener, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => r.context("grpc server")?,
        _ = signal => {
            let _ = stop_tx.send(());
            // Graceful shutdown waits for clients to hang up; kubelet never does, so in-flight
            // requests get a bounded grace period.
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(r) => r.context("grpc server")?,
                Err(_) => tracing::info!("clients still connected after {:?}; exiting", SHUTDOWN_GRACE),
            }
        }
    }
    let _ = std::fs::remove_file(&listen);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_lists_every_visible_option_and_command() {
        let page = ferrio::man::command_page(&Cli::command(), "0.0.0");
        for option in ["config", "config\\-dir", "log\\-level", "help", "version"] {
            assert!(
                page.contains(&format!("\\fB\\-\\-{option}\\fR")),
                "--{option} is missing from ferrio(8)"
            );
        }
        assert!(page.contains("\\fB\\-\\-config\\fR \\fIFILE\\fR"));
        assert!(page.contains(".TP\n\\fBconfig\\fR\nPrint the complete effective config"));
        assert!(!page.contains("\\fBman\\fR"), "the man command is hidden");
    }
}
