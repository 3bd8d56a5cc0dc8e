//! The streaming server: exec, attach and port-forward over SPDY/3.1 and WebSocket.
//!
//! CRI's Exec/Attach/PortForward only hand out a URL; kubelet (or crictl) then connects to it and
//! upgrades the HTTP request to SPDY/3.1 or WebSocket. This room owns that server:
//! - [`tokens`]: one-shot random tokens with a short TTL and a cap on how many are in flight;
//! - [`spdy`] and [`session`]: SPDY/3.1 framing, header compression, streams and flow control;
//! - [`http`]: the HTTP/1.1 server and the protocol negotiation;
//! - [`remotecommand`]: exec/attach streams (`v4..v1 channel.k8s.io` over SPDY,
//!   `v5..v1` and `base64` channel protocols over WebSocket);
//! - [`portforward`]: `portforward.k8s.io` over SPDY and WebSocket, and dialing inside a pod's
//!   network namespace.
//!
//! What a stream runs is behind [`Backend`] (implemented by `server/stream.rs`), so this room
//! never touches containers or pods itself and tests can drive it with a fake.

pub mod http;
pub mod portforward;
pub mod remotecommand;
pub mod session;
pub mod spdy;
pub mod tokens;
pub mod websocket;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

pub use tokens::Tokens;

/// How long a client gets to open the streams it announced.
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("streaming server: bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("streaming server: {in_flight} requests in flight, the limit")]
    TooManyRequests { in_flight: usize },
    #[error("container {id}: {message}")]
    Container { id: String, message: String },
    #[error("pod sandbox {id}: {message}")]
    Sandbox { id: String, message: String },
    #[error("streaming server: TLS: {path}: {message}")]
    Tls { path: PathBuf, message: String },
    #[error("port forward to port {port}: {source}")]
    Dial { port: u16, source: std::io::Error },
}

/// Which of the three endpoints a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
}

impl Kind {
    pub fn path(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Attach => "attach",
            Kind::PortForward => "portforward",
        }
    }
}

/// An exec or attach: the streams the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRequest {
    pub container_id: String,
    /// The command for exec; empty for attach.
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

/// A port-forward: the pod and the ports the client may reach (empty: any the client names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_sandbox_id: String,
    pub ports: Vec<u16>,
}

/// What a token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Exec(CommandRequest),
    Attach(CommandRequest),
    PortForward(PortForwardRequest),
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Request::Exec(_) => Kind::Exec,
            Request::Attach(_) => Kind::Attach,
            Request::PortForward(_) => Kind::PortForward,
        }
    }
}

/// A terminal size as the resize stream carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The process side of an exec or attach, as channels. A closed `stdin` is EOF; the backend
/// drops `stdout`/`stderr` when the process's output has ended.
pub struct StreamIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: mpsc::Receiver<TermSize>,
    pub tty: bool,
}

/// Where a port-forward dials: the pod's network namespace (`None`: the host's, for a pod on
/// the host network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    pub netns: Option<PathBuf>,
}

/// How a command ended, as the error stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Failed(String),
}

/// What the streams run. Dropping a returned future must end what it started: an exec's process
/// is killed, an attach detaches (the client went away).
pub trait Backend: Send + Sync + 'static {
    fn exec(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome>;
    fn attach(&self, req: CommandRequest, io: StreamIo) -> BoxFuture<'static, Outcome>;
    fn pod_network(&self, pod_sandbox_id: &str) -> Result<PodNetwork, StreamError>;
}

/// Settings of the server, from `[api]`.
#[derive(Debug, Clone)]
pub struct Settings {
    pub address: String,
    pub port: u16,
    /// Close a connection after this long without a frame either way; `None`: never.
    pub idle_timeout: Option<Duration>,
    pub token_ttl: Duration,
    pub max_in_flight: usize,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// A TLS acceptor that offers HTTP/1.1 only (the upgrades need it).
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, StreamError> {
        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let err = |path: &PathBuf, message: String| StreamError::Tls {
            path: path.clone(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| err(&self.cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(err(&self.cert, "no certificate in the file".into()));
        }
        let key =
            PrivateKeyDer::from_pem_file(&self.key).map_err(|e| err(&self.key, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(&self.cert, e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| err(&self.key, e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// The running streaming server.
pub struct Server {
    pub tokens: Tokens,
    addr: SocketAddr,
    scheme: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Bind and serve in the background.
    pub async fn start(
        settings: Settings,
        backend: Arc<dyn Backend>,
    ) -> Result<Arc<Server>, StreamError> {
        let bind = format!("{}:{}", settings.address, settings.port);
        let ip: std::net::IpAddr =
            settings
                .address
                .parse()
                .map_err(|e: std::net::AddrParseError| StreamError::Bind {
                    addr: bind.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                })?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, settings.port))
            .await
            .map_err(|source| StreamError::Bind {
                addr: bind.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StreamError::Bind {
            addr: bind.clone(),
            source,
        })?;
        let tls = settings.tls.as_ref().map(TlsFiles::acceptor).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let tokens = Tokens::new(settings.token_ttl, settings.max_in_flight);
        let ctx = Arc::new(http::Context {
            tokens: tokens.clone(),
            backend,
            idle_timeout: settings.idle_timeout,
        });
        let task = tokio::spawn(http::serve(listener, tls, ctx));
        tracing::info!(%addr, scheme, "streaming server listening");
        Ok(Arc::new(Server {
            tokens,
            addr,
            scheme,
            task,
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A one-shot URL for `req`.
    pub fn url_for(&self, req: Request) -> Result<String, StreamError> {
        let kind = req.kind();
        let token = self.tokens.insert(req)?;
        Ok(format!(
            "{}://{}/{}/{}",
            self.scheme,
            self.addr,
            kind.path(),
            token
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parse a duration as CRI-O writes them: `90s`, `5m`, `1h30m`, `250ms`; "" or "0" is `None`.
pub fn parse_duration(s: &str) -> Result<Option<Duration>, String> {
    let s = s.trim();
    if s.is_empty() || s == "0" {
        return Ok(None);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{s:?}: a number needs a unit (ms, s, m, h)"))?;
        if digits == 0 {
            return Err(format!("{s:?}: expected a number"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return Err(format!("{s:?}: unknown unit (use ms, s, m, h)"));
        };
        rest = &rest[len..];
        total += unit * n as u32;
    }
    Ok(Some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend for server tests that never gets as far as running anything.
    struct NoBackend;

    impl Backend for NoBackend {
        fn exec(&self, _: CommandRequest, _: StreamIo) -> BoxFuture<'static, Outcome> {
            Box::pin(async { Outcome::Failed("no backend".into()) })
        }
        fn attach(&self, _: CommandRequest, _: StreamIo) -> BoxFuture<'static, Outcome> {
            Box::pin(async { Outcome::Failed("no backend".into()) })
        }
        fn pod_network(&self, id: &str) -> Result<PodNetwork, StreamError> {
            Err(StreamError::Sandbox {
                id: id.into(),
                message: "no backend".into(),
            })
        }
    }

    fn settings(tls: Option<TlsFiles>) -> Settings {
        Settings {
            address: "127.0.0.1".into(),
            port: 0,
            idle_timeout: None,
            token_ttl: Duration::from_secs(60),
            max_in_flight: 10,
            tls,
        }
    }

    fn exec_req() -> Request {
        Request::Exec(CommandRequest {
            container_id: "c".into(),
            cmd: vec!["true".into()],
            tty: false,
            stdin: false,
            stdout: true,
            stderr: false,
        })
    }

    async fn get<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut s: S,
        path: &str,
    ) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).to_string()
    }

    #[tokio::test]
    async fn urls_tokens_and_plain_requests() {
        let server = Server::start(settings(None), Arc::new(NoBackend))
            .await
            .unwrap();
        let url = server.url_for(exec_req()).unwrap();
        let prefix = format!("http://{}/exec/", server.local_addr());
        assert!(url.starts_with(&prefix), "{url}");
        let path = url.trim_start_matches(&format!("http://{}", server.local_addr()));
        let tcp = || tokio::net::TcpStream::connect(server.local_addr());
        // A kind that does not match the token's is refused, and spends the token.
        let attach_path = path.replace("/exec/", "/attach/");
        assert!(get(tcp().await.unwrap(), &attach_path)
            .await
            .starts_with("HTTP/1.1 404"));
        assert!(get(tcp().await.unwrap(), path)
            .await
            .starts_with("HTTP/1.1 404"));
        // A good token without an upgrade is a 400.
        let url = server.url_for(exec_req()).unwrap();
        let path = url.trim_start_matches(&format!("http://{}", server.local_addr()));
        let resp = get(tcp().await.unwrap(), path).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
        // The cap on tokens in flight.
        for _ in 0..10 {
            server.url_for(exec_req()).unwrap();
        }
        assert!(matches!(
            server.url_for(exec_req()),
            Err(StreamError::TooManyRequests { .. })
        ));
    }

    #[tokio::test]
    async fn https_with_a_pem_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let ok = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=ferrio-test",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output();
        match ok {
            Ok(o) if o.status.success() => {}
            _ => {
                eprintln!("openssl cannot make a certificate here; skipping");
                return;
            }
        }
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let server = Server::start(settings(Some(files)), Arc::new(NoBackend))
            .await
            .unwrap();
        let url = server.url_for(exec_req()).unwrap();
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");

        use tokio_rustls::rustls;
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(server.local_addr())
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let resp = get(tls, "/exec/unknown").await;
        assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");

        // A key file without a key is an error naming it.
        let bad = TlsFiles {
            cert: cert.clone(),
            key: cert.clone(),
        };
        let e = bad.acceptor().err().expect("no key in a certificate file");
        assert!(e.to_string().contains("cert.pem"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration(""), Ok(None));
        assert_eq!(parse_duration("0"), Ok(None));
        assert_eq!(parse_duration("90s"), Ok(Some(Duration::from_secs(90))));
        assert_eq!(parse_duration("1h30m"), Ok(Some(Duration::from_secs(5400))));
        assert_eq!(
            parse_duration("250ms"),
            Ok(Some(Duration::from_millis(250)))
        );
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
