//! The WebSocket side: channel-prefixed messages for exec/attach, and a byte-stream adapter for
//! SPDY tunnelled over WebSocket (`SPDY/3.1+portforward.k8s.io`).

use super::remotecommand::{self, ResizeDecoder, Version};
use super::{Backend, CommandRequest, Kind, StreamIo};
use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Exec/attach protocols over WebSocket, most preferred first.
pub const COMMAND_PROTOCOLS: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "v3.base64.channel.k8s.io",
    "v2.base64.channel.k8s.io",
    "base64.channel.k8s.io",
];

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5: `[255, channel]` closes that channel (stdin EOF).
pub const CLOSE: u8 = 255;

/// A close with status 1000: Go's client reads a close without a status (1005) as an error.
pub fn normal_close() -> Message {
    Message::Close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Traffic either way on a WebSocket, for the idle timeout (output alone keeps it alive).
#[derive(Clone)]
pub struct Idle {
    last: Arc<std::sync::Mutex<tokio::time::Instant>>,
    timeout: Option<std::time::Duration>,
}

impl Idle {
    pub fn new(timeout: Option<std::time::Duration>) -> Idle {
        Idle {
            last: Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())),
            timeout,
        }
    }

    pub fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = tokio::time::Instant::now();
    }

    /// Resolves once nothing moved for the timeout; never without one.
    pub async fn expired(&self) {
        let Some(t) = self.timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = *self.last.lock().unwrap_or_else(|p| p.into_inner());
            let left = t.saturating_sub(last.elapsed());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left).await;
        }
    }

    /// The next message, or `None` at the end, on an error or once idle.
    pub async fn next<St>(&self, source: &mut St) -> Option<Message>
    where
        St: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
    {
        tokio::select! {
            m = source.next() => {
                self.touch();
                m.and_then(Result::ok)
            }
            _ = self.expired() => None,
        }
    }
}

/// How channel messages are written: raw binary, or base64 text with an ASCII channel digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Binary,
    Base64,
}

impl Encoding {
    pub fn of(protocol: &str) -> Encoding {
        if protocol.contains("base64.") {
            Encoding::Base64
        } else {
            Encoding::Binary
        }
    }

    pub fn encode(self, channel: u8, data: &[u8]) -> Message {
        match self {
            Encoding::Binary => {
                let mut v = Vec::with_capacity(data.len() + 1);
                v.push(channel);
                v.extend_from_slice(data);
                Message::Binary(v.into())
            }
            Encoding::Base64 => {
                let mut s = String::with_capacity(data.len() * 4 / 3 + 4);
                s.push((b'0' + channel) as char);
                base64::engine::general_purpose::STANDARD.encode_string(data, &mut s);
                Message::Text(s.into())
            }
        }
    }

    /// The channel and payload of a received message; `None` for control or malformed ones.
    pub fn decode(self, msg: &Message) -> Option<(u8, Vec<u8>)> {
        match (self, msg) {
            (Encoding::Binary, Message::Binary(b)) if !b.is_empty() => {
                Some((b[0], b[1..].to_vec()))
            }
            (Encoding::Base64, Message::Text(t)) if !t.is_empty() => {
                let ch = t.as_bytes()[0].wrapping_sub(b'0');
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&t.as_bytes()[1..])
                    .ok()?;
                Some((ch, data))
            }
            _ => None,
        }
    }
}

/// Exec or attach over a WebSocket.
pub async fn serve_command<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    kind: Kind,
    req: CommandRequest,
    backend: Arc<dyn Backend>,
    idle_timeout: Option<std::time::Duration>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let version = Version::of(protocol).unwrap_or(Version::V1);
    let enc = Encoding::of(protocol);
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    let idle = Idle::new(idle_timeout);
    let idle_w = idle.clone();
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || close {
                break;
            }
            idle_w.touch();
        }
        let _ = sink.close().await;
    });
    let (stdin_tx, stdin_rx) = mpsc::channel::<Bytes>(32);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let (gone_tx, gone_rx) = tokio::sync::oneshot::channel::<()>();
    let want_stdin = req.stdin;
    let reader = tokio::spawn(async move {
        let mut stdin_tx = want_stdin.then_some(stdin_tx);
        let mut resize = ResizeDecoder::default();
        while let Some(msg) = idle.next(&mut source).await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((ch, data)) = enc.decode(&msg) else {
                continue;
            };
            match ch {
                STDIN => {
                    if let Some(tx) = &stdin_tx {
                        if !data.is_empty() && tx.send(Bytes::from(data)).await.is_err() {
                            stdin_tx = None;
                        }
                    }
                }
                RESIZE => {
                    for s in resize.push(&data) {
                        let _ = resize_tx.send(s).await;
                    }
                }
                CLOSE if version >= Version::V5 && data.first() == Some(&STDIN) => {
                    stdin_tx = None;
                }
                _ => {}
            }
        }
        let _ = gone_tx.send(());
    });
    let (stdout, out_pump) = channel_pump(req.stdout, STDOUT, enc, &out_tx);
    let (stderr, err_pump) = channel_pump(req.stderr && !req.tty, STDERR, enc, &out_tx);
    let io = StreamIo {
        stdin: want_stdin.then_some(stdin_rx),
        stdout,
        stderr,
        resize: resize_rx,
        tty: req.tty,
    };
    let gone = async move {
        let _ = gone_rx.await;
    };
    if let Some(outcome) = remotecommand::run(&backend, kind, req, io, gone).await {
        for p in [out_pump, err_pump].into_iter().flatten() {
            let _ = p.await;
        }
        if let Some(msg) = remotecommand::status_message(version, &outcome) {
            let _ = out_tx.send(enc.encode(ERROR, &msg)).await;
        }
        let _ = out_tx.send(normal_close()).await;
    }
    drop(out_tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
    reader.abort();
}

fn channel_pump(
    wanted: bool,
    channel: u8,
    enc: Encoding,
    out: &mpsc::Sender<Message>,
) -> (
    Option<mpsc::Sender<Bytes>>,
    Option<tokio::task::JoinHandle<()>>,
) {
    if !wanted {
        return (None, None);
    }
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let out = out.clone();
    let task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if out.send(enc.encode(channel, &b)).await.is_err() {
                while rx.recv().await.is_some() {}
                return;
            }
        }
    });
    (Some(tx), Some(task))
}

/// The binary messages of a WebSocket as a byte stream, both ways (for SPDY over WebSocket).
pub fn byte_stream<S>(ws: WebSocketStream<S>) -> tokio::io::DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (mut far_rd, mut far_wr) = tokio::io::split(far);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if far_wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = far_wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match far_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    });
    near
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_expires_only_without_traffic() {
        use std::time::Duration;
        let idle = Idle::new(Some(Duration::from_millis(200)));
        let start = tokio::time::Instant::now();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            idle.touch();
        }
        idle.expired().await;
        assert!(
            start.elapsed() >= Duration::from_millis(450),
            "{:?}",
            start.elapsed()
        );
        let never = Idle::new(None);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), never.expired())
                .await
                .is_err()
        );
    }

    #[test]
    fn encodings_round_trip() {
        for enc in [Encoding::Binary, Encoding::Base64] {
            let m = enc.encode(STDERR, b"hello\x00\xff");
            assert_eq!(enc.decode(&m), Some((STDERR, b"hello\x00\xff".to_vec())));
        }
        assert_eq!(
            Encoding::Base64.encode(STDOUT, b"hi"),
            Message::Text("1aGk=".into())
        );
        assert_eq!(Encoding::of("v4.base64.channel.k8s.io"), Encoding::Base64);
        assert_eq!(Encoding::of("v5.channel.k8s.io"), Encoding::Binary);
        assert_eq!(
            Encoding::Binary.decode(&Message::Binary(Bytes::new())),
            None
        );
    }
}
