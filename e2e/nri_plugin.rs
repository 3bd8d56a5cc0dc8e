//! A no-op NRI plugin as a process of its own, written with ferrio's protocol code: the daemon starts it as a
//! pre-installed plugin (an executable under `plugin_path`, told its name, index and pre-connected socket in
//! its environment), or it serves any stream connected to the daemon's NRI socket. It subscribes to every
//! event and answers each without adjusting anything. With `log = <path>` in its configuration (the plugin's
//! file under `plugin_config_path`) it appends one line per request, `<method> <pod id> <container name>`, so a
//! test outside the process sees what it saw.
//!
//! The e2e tests run it as their own binary (see `preinstalled_plugin_process`); the benchmark binary
//! includes this file and becomes the plugin the same way.

use ferrio::nri::api;
use ferrio::nri::conn::{Connection, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use ferrio::nri::{
    NRI_VERSION, PLUGIN_IDX_ENV, PLUGIN_NAME_ENV, PLUGIN_SOCKET_ENV, RUNTIME_SERVICE,
};
use prost::Message;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

/// How the daemon started this process, when it did: name, index and the fd of the pre-connected socket.
pub struct Preinstalled {
    pub name: String,
    pub idx: String,
    pub fd: i32,
}

impl Preinstalled {
    /// From the environment the daemon gives a pre-installed plugin; None in any other process.
    pub fn from_env() -> Option<Preinstalled> {
        Some(Preinstalled {
            name: std::env::var(PLUGIN_NAME_ENV).ok()?,
            idx: std::env::var(PLUGIN_IDX_ENV).ok()?,
            fd: std::env::var(PLUGIN_SOCKET_ENV).ok()?.parse().ok()?,
        })
    }

    /// Register on the pre-connected socket and serve until the daemon closes it.
    pub async fn serve(self) -> std::io::Result<()> {
        use std::os::fd::FromRawFd;
        // SAFETY: the daemon passed this fd (a connected unix socket) to this process alone, and nothing
        // else in it opens, uses or closes that fd number.
        let socket = unsafe { std::os::unix::net::UnixStream::from_raw_fd(self.fd) };
        socket.set_nonblocking(true)?;
        serve(
            tokio::net::UnixStream::from_std(socket)?,
            &self.name,
            &self.idx,
        )
        .await
    }
}

/// Register on `stream` as `<idx>-<name>` and answer every request until the daemon goes away. Dropping the
/// future closes the connection.
pub async fn serve(stream: tokio::net::UnixStream, name: &str, idx: &str) -> std::io::Result<()> {
    let (conn, mut requests) = Connection::new(stream, RUNTIME_SERVICE_CONN, PLUGIN_SERVICE_CONN);
    let register = api::RegisterPluginRequest {
        plugin_name: name.to_string(),
        plugin_idx: idx.to_string(),
        nri_version: NRI_VERSION.to_string(),
    };
    // Requests (Configure first) may arrive before the registration call returns: both run at once.
    let registered = conn.call::<_, api::Empty>(
        RUNTIME_SERVICE,
        "RegisterPlugin",
        &register,
        Duration::from_secs(5),
    );
    let served = async {
        let log = Mutex::new(None);
        while let Some(r) = requests.recv().await {
            let answer = answer(&log, &r.method, &r.payload);
            if conn.respond(r.stream_id, Ok(answer)).await.is_err() {
                break;
            }
        }
    };
    let (registered, ()) = tokio::join!(registered, served);
    registered.map(drop).map_err(std::io::Error::other)
}

/// The answer to one request: an empty message is every response without an adjustment, and a
/// ConfigureResponse with no events subscribes to all of them.
fn answer(log: &Mutex<Option<std::fs::File>>, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
    let line = match method {
        "Configure" => {
            let config = api::ConfigureRequest::decode(payload)
                .map(|r| r.config)
                .unwrap_or_default();
            let path = config.lines().find_map(|l| {
                let (key, value) = l.split_once('=')?;
                (key.trim() == "log").then(|| value.trim().to_string())
            });
            *log = path.and_then(|p| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .ok()
            });
            "Configure".to_string()
        }
        "Synchronize" => {
            let r = api::SynchronizeRequest::decode(payload).unwrap_or_default();
            format!("Synchronize {} {}", r.pods.len(), r.containers.len())
        }
        // Every pod and container event carries the pod as field 1 and the container as field 2.
        _ => {
            let r = api::StartContainerRequest::decode(payload).unwrap_or_default();
            format!(
                "{method} {} {}",
                r.pod.map(|p| p.id).unwrap_or_default(),
                r.container.map(|c| c.name).unwrap_or_default()
            )
        }
    };
    if let Some(f) = log.as_mut() {
        let _ = writeln!(f, "{}", line.trim_end());
    }
    Vec::new()
}
