//! A streaming client for the tests, written from the protocol descriptions as kubectl behaves:
//! the HTTP upgrade by hand, SPDY/3.1 frames through ferrio's framer (whose frames are checked
//! byte by byte against the spec in its unit tests), WebSocket through tungstenite.

#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use ferrio::streaming::spdy::{Codec, Frame, FLAG_FIN};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// `host:port` and path of an `http://` URL.
pub fn split_url(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (host, path) = rest.split_once('/').expect("a path");
    (host.to_string(), format!("/{path}"))
}

/// A plain GET (no upgrade): status and body.
pub async fn http_get(url: &str, extra_headers: &[(&str, &str)]) -> (u16, String) {
    let (host, path) = split_url(url);
    let mut tcp = TcpStream::connect(&host).await.expect("connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    tokio::time::timeout(TIMEOUT, tcp.read_to_end(&mut resp))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&resp).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One stream as the client sees it.
pub struct ClientStream {
    pub id: u32,
    rx: mpsc::UnboundedReceiver<Bytes>,
}

impl ClientStream {
    /// Everything until the server's FIN (or the connection's end).
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let fut = async {
            while let Some(b) = self.rx.recv().await {
                out.extend_from_slice(&b);
            }
        };
        tokio::time::timeout(TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("stream {} did not end in time", self.id));
        out
    }

    /// The next chunk; `None` at the end.
    pub async fn next(&mut self) -> Option<Bytes> {
        tokio::time::timeout(TIMEOUT, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no data on stream {} in time", self.id))
    }
}

type Streams = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<Bytes>>>>;

/// A client SPDY connection.
pub struct SpdyConn {
    writer: Arc<tokio::sync::Mutex<(OwnedWriteHalf, Codec)>>,
    streams: Streams,
    next_id: u32,
    reader: tokio::task::JoinHandle<()>,
    /// The protocol the server chose.
    pub protocol: String,
}

/// What a refused upgrade answered.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Upgrade `url` to SPDY/3.1 offering `protocols` in order.
pub async fn spdy_connect(url: &str, protocols: &[&str]) -> Result<SpdyConn, Refused> {
    let (host, path) = split_url(url);
    let mut tcp = TcpStream::connect(&host).await.expect("connect");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n"
    );
    for p in protocols {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    // Read the response head byte by byte: SPDY frames may follow it at once.
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(TIMEOUT, tcp.read(&mut b))
            .await
            .expect("response in time")
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if status != 101 {
        let mut body = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut body)).await;
        return Err(Refused {
            status,
            head,
            body: String::from_utf8_lossy(&body).to_string(),
        });
    }
    let protocol = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("x-stream-protocol-version")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    let (mut rd, wr) = tcp.into_split();
    let streams: Streams = Arc::default();
    let writer = Arc::new(tokio::sync::Mutex::new((wr, Codec::new())));
    let (s2, w2) = (streams.clone(), writer.clone());
    let reader = tokio::spawn(async move {
        let mut codec = Codec::new();
        let mut buf = BytesMut::new();
        loop {
            let frame = match codec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => match rd.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => continue,
                },
                Err(e) => panic!("client: bad frame from the server: {e}"),
            };
            match frame {
                Frame::Data {
                    stream_id,
                    flags,
                    data,
                } => {
                    let mut map = s2.lock().unwrap();
                    if let Some(tx) = map.get(&stream_id) {
                        if !data.is_empty() {
                            let _ = tx.send(data);
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        map.remove(&stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    s2.lock().unwrap().remove(&stream_id);
                }
                Frame::Ping { id } if id % 2 == 0 => {
                    let mut w = w2.lock().await;
                    let bytes = w.1.encode(&Frame::Ping { id }).unwrap();
                    let _ = w.0.write_all(&bytes).await;
                }
                _ => {}
            }
        }
        s2.lock().unwrap().clear();
    });
    Ok(SpdyConn {
        writer,
        streams,
        next_id: 1,
        reader,
        protocol,
    })
}

impl SpdyConn {
    async fn send(&self, f: Frame) {
        let mut w = self.writer.lock().await;
        let bytes = w.1.encode(&f).unwrap();
        let _ = w.0.write_all(&bytes).await;
    }

    /// Open a stream with these headers.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> ClientStream {
        let id = self.next_id;
        self.next_id += 2;
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.lock().unwrap().insert(id, tx);
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
        .await;
        ClientStream { id, rx }
    }

    pub async fn write(&self, id: u32, data: &[u8]) {
        self.send(Frame::Data {
            stream_id: id,
            flags: 0,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// Half-close our side of stream `id`.
    pub async fn finish(&self, id: u32) {
        self.send(Frame::Data {
            stream_id: id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await;
    }

    /// Drop the TCP connection without a goodbye, as a killed client does.
    pub async fn kill(self) {
        self.reader.abort();
        let mut w = self.writer.lock().await;
        let _ = w.0.shutdown().await;
    }
}

/// What an exec over SPDY produced.
#[derive(Debug)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error stream's content (v4: a JSON Status).
    pub error: Vec<u8>,
}

impl ExecResult {
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.error).unwrap_or_else(|e| {
            panic!(
                "error stream is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.error)
            )
        })
    }

    /// The exit code a v4 Status reports (0 for Success).
    pub fn exit_code(&self) -> i32 {
        let s = self.status();
        if s["status"] == "Success" {
            return 0;
        }
        assert_eq!(s["reason"], "NonZeroExitCode", "{s}");
        s["details"]["causes"][0]["message"]
            .as_str()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("no exit code in {s}"))
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).to_string()
    }
}

/// What to do on an exec/attach over SPDY.
#[derive(Default)]
pub struct ExecOpts<'a> {
    pub stdin: Option<&'a [u8]>,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    pub resize: Option<(u16, u16)>,
}

/// Run an exec (or attach) at `url` over SPDY with v4 and collect everything until the end.
pub async fn spdy_exec(url: &str, opts: ExecOpts<'_>) -> ExecResult {
    let mut c = spdy_connect(url, &["v4.channel.k8s.io", "v3.channel.k8s.io"])
        .await
        .unwrap_or_else(|r| panic!("upgrade refused: {r:?}"));
    assert_eq!(c.protocol, "v4.channel.k8s.io");
    let mut error = c.open(&[("streamtype", "error")]).await;
    if let Some((w, h)) = opts.resize {
        let resize = c.open(&[("streamtype", "resize")]).await;
        let msg = format!(r#"{{"Width":{w},"Height":{h}}}"#);
        c.write(resize.id, msg.as_bytes()).await;
    }
    if let Some(input) = opts.stdin {
        let stdin = c.open(&[("streamtype", "stdin")]).await;
        c.write(stdin.id, input).await;
        c.finish(stdin.id).await;
    }
    let mut stdout = match opts.stdout {
        true => Some(c.open(&[("streamtype", "stdout")]).await),
        false => None,
    };
    let mut stderr = match opts.stderr && !opts.tty {
        true => Some(c.open(&[("streamtype", "stderr")]).await),
        false => None,
    };
    let out = async {
        match &mut stdout {
            Some(s) => s.read_to_end().await,
            None => vec![],
        }
    };
    let err = async {
        match &mut stderr {
            Some(s) => s.read_to_end().await,
            None => vec![],
        }
    };
    let (stdout, stderr, error) = tokio::join!(out, err, error.read_to_end());
    ExecResult {
        stdout,
        stderr,
        error,
    }
}

pub type Ws = WebSocketStream<TcpStream>;

/// Upgrade `url` to WebSocket offering `protocols`; the chosen protocol comes back with it.
pub async fn ws_connect(url: &str, protocols: &[&str]) -> Result<(Ws, String), u16> {
    let (host, _) = split_url(url);
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.into_client_request().unwrap();
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().unwrap(),
        );
    }
    let tcp = TcpStream::connect(&host).await.expect("connect");
    match tokio_tungstenite::client_async(req, tcp).await {
        Ok((ws, resp)) => {
            let p = resp
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            Ok((ws, p))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

/// Everything a WebSocket exec sent, by channel, until the server closed.
pub async fn ws_collect(ws: &mut Ws) -> HashMap<u8, Vec<u8>> {
    use futures::StreamExt;
    let mut by_channel: HashMap<u8, Vec<u8>> = HashMap::new();
    let fut = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) if !b.is_empty() => {
                    by_channel
                        .entry(b[0])
                        .or_default()
                        .extend_from_slice(&b[1..]);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(TIMEOUT, fut)
        .await
        .expect("websocket exec ended in time");
    by_channel
}
