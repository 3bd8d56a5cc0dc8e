//! Exec, Attach and PortForward: they hand out one-shot URLs on the streaming server, and
//! [`StreamBackend`] is what those URLs run: `<runtime> exec` sessions, the monitor's attach
//! socket, and the pod's network namespace for port-forward.

use super::Daemon;
use super::Res;
use crate::config::Config;
use crate::container::lifecycle::{Container, ContainerState, Containers};
use crate::cri::v1 as cri;
use crate::error::Error;
use crate::monitor::attach::{AttachClient, AttachEvent, AttachStreams};
use crate::oci::exec::{spawn_exec, ExecSpec};
use crate::sandbox::lifecycle::{Pods, SandboxState};
use crate::streaming::{
    self, Backend, CommandRequest, Outcome, PodNetwork, PortForwardRequest, StreamError, StreamIo,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// How many streaming URLs may wait for their client at once (CRI-O and kubelet: 1000).
const MAX_TOKENS_IN_FLIGHT: usize = 1000;
/// How long output may still arrive after an exec'd process ended (a background child that
/// inherited its pipes must not hold the stream open for ever).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Bind the streaming server on `[api] stream_address:stream_port` (port 0: a free one).
pub(super) async fn start_server(
    config: &Config,
    pods: &Arc<Pods>,
    containers: &Arc<Containers>,
) -> Result<Arc<streaming::Server>, StreamError> {
    let bad = |key: &str, e: String| StreamError::Bind {
        addr: format!("{}:{}", config.api.stream_address, config.api.stream_port),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{key}: {e}")),
    };
    let idle_timeout = streaming::parse_duration(&config.api.stream_idle_timeout)
        .map_err(|e| bad("stream_idle_timeout", e))?;
    let token_ttl = streaming::parse_duration(&config.api.stream_token_ttl)
        .map_err(|e| bad("stream_token_ttl", e))?
        .unwrap_or(Duration::from_secs(60));
    let settings = streaming::Settings {
        address: config.api.stream_address.clone(),
        port: config.api.stream_port,
        idle_timeout,
        token_ttl,
        max_in_flight: MAX_TOKENS_IN_FLIGHT,
        tls: config.api.stream_enable_tls.then(|| streaming::TlsFiles {
            cert: config.api.stream_tls_cert.clone(),
            key: config.api.stream_tls_key.clone(),
        }),
    };
    let backend = Arc::new(StreamBackend {
        pods: pods.clone(),
        containers: containers.clone(),
    });
    streaming::Server::start(settings, backend).await
}

fn stream_status(e: StreamError) -> Status {
    match e {
        StreamError::TooManyRequests { .. } => Status::resource_exhausted(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

/// The container must exist and run; returns its full id.
fn running_container(d: &Daemon, id: &str) -> Result<String, Status> {
    let c = d.containers.get(id).map_err(Error::from)?;
    if c.status().state() != ContainerState::Running {
        return Err(Error::FailedPrecondition(format!("container {} is not running", c.id)).into());
    }
    Ok(c.id.clone())
}

/// kubelet's own checks on a stream request.
fn check_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Status> {
    if tty && stderr {
        return Err(Status::invalid_argument(
            "tty and stderr cannot both be true",
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::invalid_argument(
            "one of stdin, stdout, or stderr must be set",
        ));
    }
    Ok(())
}

pub(super) async fn exec(
    d: &Arc<Daemon>,
    req: Request<cri::ExecRequest>,
) -> Res<cri::ExecResponse> {
    let req = req.into_inner();
    if req.cmd.is_empty() {
        return Err(Status::invalid_argument("cmd: no command given"));
    }
    check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
    let container_id = running_container(d, &req.container_id)?;
    let url = d
        .streaming
        .url_for(streaming::Request::Exec(CommandRequest {
            container_id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))
        .map_err(stream_status)?;
    Ok(Response::new(cri::ExecResponse { url }))
}

pub(super) async fn attach(
    d: &Arc<Daemon>,
    req: Request<cri::AttachRequest>,
) -> Res<cri::AttachResponse> {
    let req = req.into_inner();
    check_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
    let container_id = running_container(d, &req.container_id)?;
    let url = d
        .streaming
        .url_for(streaming::Request::Attach(CommandRequest {
            container_id,
            cmd: vec![],
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        }))
        .map_err(stream_status)?;
    Ok(Response::new(cri::AttachResponse { url }))
}

pub(super) async fn port_forward(
    d: &Arc<Daemon>,
    req: Request<cri::PortForwardRequest>,
) -> Res<cri::PortForwardResponse> {
    let req = req.into_inner();
    let sandbox = d.pods.get(&req.pod_sandbox_id).map_err(Error::from)?;
    if sandbox.status().state != SandboxState::Ready {
        return Err(
            Error::FailedPrecondition(format!("pod sandbox {} is not ready", sandbox.id)).into(),
        );
    }
    let mut ports = Vec::with_capacity(req.port.len());
    for p in req.port {
        let p = u16::try_from(p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| Status::invalid_argument(format!("port: {p} is not a TCP port")))?;
        ports.push(p);
    }
    let url = d
        .streaming
        .url_for(streaming::Request::PortForward(PortForwardRequest {
            pod_sandbox_id: sandbox.id.clone(),
            ports,
        }))
        .map_err(stream_status)?;
    Ok(Response::new(cri::PortForwardResponse { url }))
}

/// What the streaming server runs, on the daemon's pods and containers.
pub(crate) struct StreamBackend {
    pods: Arc<Pods>,
    containers: Arc<Containers>,
}

impl StreamBackend {
    fn container(&self, id: &str) -> Result<Arc<Container>, String> {
        let c = self.containers.get(id).map_err(|e| e.to_string())?;
        if c.status().state() != ContainerState::Running {
            return Err(format!("container {} is not running", c.id));
        }
        Ok(c)
    }
}

impl Backend for StreamBackend {
    fn exec(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome> {
        let found = self.container(&req.container_id);
        let containers = self.containers.clone();
        Box::pin(async move {
            let spec = match found {
                Ok(c) => containers
                    .exec_spec(&c, req.cmd, req.tty, req.stdin)
                    .await
                    .map_err(|e| e.to_string()),
                Err(m) => Err(m),
            };
            match spec {
                Ok(spec) => run_exec(spec, io).await,
                Err(m) => Outcome::Failed(m),
            }
        })
    }

    fn attach(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome> {
        let sock = self
            .container(&req.container_id)
            .map(|c| self.containers.attach_socket(&c.id));
        Box::pin(async move {
            match sock {
                Ok(sock) => run_attach(sock, req, io).await,
                Err(m) => Outcome::Failed(m),
            }
        })
    }

    fn pod_network(&self, pod_sandbox_id: &str) -> Result<PodNetwork, StreamError> {
        let err = |message: String| StreamError::Sandbox {
            id: pod_sandbox_id.to_string(),
            message,
        };
        let s = self
            .pods
            .get(pod_sandbox_id)
            .map_err(|e| err(e.to_string()))?;
        let st = s.status();
        if st.state != SandboxState::Ready {
            return Err(err("is not ready".into()));
        }
        if s.meta.host_network {
            return Ok(PodNetwork { netns: None });
        }
        if let Some(p) = s.meta.namespaces.net.clone() {
            return Ok(PodNetwork { netns: Some(p) });
        }
        if st.pause_pid > 0 {
            return Ok(PodNetwork {
                netns: Some(PathBuf::from(format!("/proc/{}/ns/net", st.pause_pid))),
            });
        }
        Err(err("has no network namespace".into()))
    }
}

/// Copy `r` into `tx` until EOF; keeps reading after the receiver is gone so the process never
/// blocks on a full pipe.
async fn pump_out<R: AsyncRead + Unpin>(mut r: R, tx: Option<mpsc::Sender<Bytes>>) {
    let mut tx = tx;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(t) = &tx {
                    if t.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                        tx = None;
                    }
                }
            }
        }
    }
}

async fn run_exec(spec: ExecSpec, io: StreamIo) -> Outcome {
    let mut session = match spawn_exec(&spec).await {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    let StreamIo {
        stdin,
        stdout,
        stderr,
        mut resize,
        ..
    } = io;
    let mut aux = Vec::new();
    if let (Some(mut w), Some(mut rx)) = (session.take_stdin(), stdin) {
        aux.push(tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if w.write_all(&b).await.is_err() {
                    return;
                }
            }
            let _ = w.shutdown().await;
        }));
    }
    if let Some(r) = session.resizer() {
        aux.push(tokio::spawn(async move {
            while let Some(s) = resize.recv().await {
                let _ = r.resize(s.width, s.height);
            }
        }));
    }
    let mut outputs = Vec::new();
    if let Some(r) = session.take_stdout() {
        outputs.push(tokio::spawn(pump_out(r, stdout)));
    }
    if let Some(r) = session.take_stderr() {
        outputs.push(tokio::spawn(pump_out(r, stderr)));
    }
    // The session lives in a task of its own so that a client that goes away (this future is
    // dropped) still gets its process killed and reaped.
    let (guard, mut cancelled) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let code = tokio::select! {
            code = session.wait() => Some(code),
            _ = &mut cancelled => None,
        };
        let code = match code {
            Some(c) => c,
            None => {
                session.kill().await;
                let _ = session.wait().await;
                for t in aux.iter().chain(outputs.iter()) {
                    t.abort();
                }
                return None;
            }
        };
        let drain = futures::future::join_all(outputs.iter_mut());
        if tokio::time::timeout(OUTPUT_GRACE, drain).await.is_err() {
            for t in &outputs {
                t.abort();
            }
        }
        for t in &aux {
            t.abort();
        }
        Some(code)
    });
    let _guard = guard;
    match task.await {
        Ok(Some(Ok(code))) => Outcome::Exited(code),
        Ok(Some(Err(e))) => Outcome::Failed(e.to_string()),
        Ok(None) => Outcome::Failed("cancelled".into()),
        Err(e) => Outcome::Failed(format!("exec task: {e}")),
    }
}

async fn run_attach(sock: PathBuf, req: CommandRequest, io: StreamIo) -> Outcome {
    let streams = AttachStreams {
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr && !req.tty,
    };
    let client = match AttachClient::connect(&sock, streams).await {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed(format!("container {}: {e}", req.container_id));
        }
    };
    let (mut rx, mut tx) = client.split();
    let StreamIo {
        stdin,
        stdout,
        stderr,
        mut resize,
        ..
    } = io;
    // Dropped with this future: a client that goes away detaches and nothing else.
    let writer = async move {
        let mut stdin = stdin;
        loop {
            tokio::select! {
                b = async { match &mut stdin { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                    match b {
                        Some(b) => {
                            if tx.write_stdin(&b).await.is_err() {
                                break;
                            }
                        }
                        None => {
                            stdin = None;
                            let _ = tx.close_stdin().await;
                        }
                    }
                }
                s = resize.recv() => match s {
                    Some(s) => {
                        let _ = tx.resize(s.width, s.height).await;
                    }
                    None => std::future::pending::<()>().await,
                },
            }
        }
        std::future::pending::<()>().await
    };
    let reader = async move {
        let (mut out, mut err) = (stdout, stderr);
        loop {
            match rx.next_event().await {
                Ok(Some(AttachEvent::Stdout(b))) => {
                    if let Some(t) = &out {
                        if t.send(Bytes::from(b)).await.is_err() {
                            out = None;
                        }
                    }
                }
                Ok(Some(AttachEvent::Stderr(b))) => {
                    if let Some(t) = &err {
                        if t.send(Bytes::from(b)).await.is_err() {
                            err = None;
                        }
                    }
                }
                // The container ended: an attach ends successfully, as in CRI-O.
                Ok(Some(AttachEvent::Exit(_))) | Ok(None) => return Outcome::Exited(0),
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
    };
    tokio::select! {
        o = reader => o,
        _ = writer => Outcome::Exited(0),
    }
}
