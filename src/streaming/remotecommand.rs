//! Exec and attach streams: Kubernetes' remote command protocols.
//!
//! Over SPDY (`v4.channel.k8s.io` .. `channel.k8s.io`) the client opens one stream per channel,
//! named by its `streamtype` header (`error`, `stdin`, `stdout`, `stderr`, `resize`). Over
//! WebSocket (`v5.channel.k8s.io` .. `channel.k8s.io`, and the `base64.` variants) every message
//! starts with its channel number (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; v5 adds
//! 255 = close a channel). v4 and v5 end with a JSON `Status` on the error channel carrying the
//! exit code; older versions send only an error text.

use super::session::{IncomingStream, Session};
use super::{Backend, CommandRequest, Kind, Outcome, StreamIo, TermSize, STREAM_CREATION_TIMEOUT};
use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Protocols over SPDY, most preferred first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V1,
    V2,
    V3,
    V4,
    V5,
}

impl Version {
    /// The version of a protocol name (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`).
    pub fn of(protocol: &str) -> Option<Version> {
        let p = protocol.replace("base64.", "");
        Some(match p.as_str() {
            "v5.channel.k8s.io" => Version::V5,
            "v4.channel.k8s.io" => Version::V4,
            "v3.channel.k8s.io" => Version::V3,
            "v2.channel.k8s.io" => Version::V2,
            "channel.k8s.io" | "" => Version::V1,
            _ => return None,
        })
    }
}

/// What the error channel carries at the end, for `version`. `None`: nothing (success before v4).
pub fn status_message(version: Version, outcome: &Outcome) -> Option<Vec<u8>> {
    if version >= Version::V4 {
        let v = match outcome {
            Outcome::Exited(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(msg) => serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": msg,
                "reason": "InternalError",
                "code": 500,
            }),
        };
        return Some(v.to_string().into_bytes());
    }
    match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes(),
        ),
        Outcome::Failed(msg) => Some(msg.clone().into_bytes()),
    }
}

/// Parses consecutive JSON sizes out of a resize stream's bytes (they may arrive split).
#[derive(Default)]
pub struct ResizeDecoder {
    buf: Vec<u8>,
}

impl ResizeDecoder {
    pub fn push(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
        loop {
            match it.next() {
                Some(Ok(s)) => {
                    sizes.push(s);
                    consumed = it.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    // Garbage: drop what we have so one bad message cannot wedge the stream.
                    consumed = self.buf.len();
                    break;
                }
                None => {
                    consumed = self.buf.len();
                    break;
                }
            }
        }
        self.buf.drain(..consumed);
        sizes
    }
}

/// Run the command through `backend`, ending it when `gone` resolves first.
pub async fn run(
    backend: &Arc<dyn Backend>,
    kind: Kind,
    req: CommandRequest,
    io: StreamIo,
    gone: impl std::future::Future<Output = ()>,
) -> Option<Outcome> {
    let fut = match kind {
        Kind::Attach => backend.attach(req, io),
        _ => backend.exec(req, io),
    };
    tokio::select! {
        o = fut => Some(o),
        _ = gone => None,
    }
}

/// Exec or attach over a SPDY session.
pub async fn serve_spdy(
    session: Session,
    mut incoming: mpsc::Receiver<IncomingStream>,
    version: Version,
    kind: Kind,
    req: CommandRequest,
    backend: Arc<dyn Backend>,
) {
    let want_stdin = req.stdin;
    let want_stdout = req.stdout;
    let want_stderr = req.stderr && !req.tty;
    let (mut error, mut stdin, mut stdout, mut stderr) = (None, None, None, None);
    let (resize_tx, resize_rx) = mpsc::channel(8);
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    let complete = |e: &Option<IncomingStream>,
                    i: &Option<IncomingStream>,
                    o: &Option<IncomingStream>,
                    r: &Option<IncomingStream>| {
        e.is_some()
            && (i.is_some() || !want_stdin)
            && (o.is_some() || !want_stdout)
            && (r.is_some() || !want_stderr)
    };
    while !complete(&error, &stdin, &stdout, &stderr) {
        let s = match tokio::time::timeout_at(deadline, incoming.recv()).await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(_) => {
                tracing::debug!("exec: client did not open its streams in time");
                session.close().await;
                return;
            }
        };
        match s.header("streamtype").unwrap_or("") {
            "error" => error = Some(s),
            "stdin" => stdin = Some(s),
            "stdout" => stdout = Some(s),
            "stderr" => stderr = Some(s),
            "resize" => pipe_resize(s, resize_tx.clone()),
            other => {
                tracing::debug!(streamtype = other, "exec: unexpected stream");
                let _ = s.writer.reset(super::spdy::RST_PROTOCOL_ERROR).await;
            }
        }
    }
    // Streams opened later (a resize stream) are still served.
    let late = tokio::spawn(async move {
        while let Some(s) = incoming.recv().await {
            if s.header("streamtype") == Some("resize") {
                pipe_resize(s, resize_tx.clone());
            } else {
                let _ = s.writer.reset(super::spdy::RST_PROTOCOL_ERROR).await;
            }
        }
    });
    let Some(error) = error else { return };
    let (out_tx, out_pump) = pump(stdout);
    let (err_tx, err_pump) = pump(stderr);
    let io = StreamIo {
        stdin: stdin.map(|s| s.data),
        stdout: out_tx,
        stderr: err_tx,
        resize: resize_rx,
        tty: req.tty,
    };
    let outcome = run(&backend, kind, req, io, session.closed()).await;
    if let Some(outcome) = outcome {
        // All output reaches the client before the status does.
        for p in [out_pump, err_pump].into_iter().flatten() {
            let _ = p.await;
        }
        if let Some(msg) = status_message(version, &outcome) {
            let _ = error.writer.write(&msg).await;
        }
        let _ = error.writer.finish().await;
    }
    late.abort();
    session.close().await;
}

/// A channel the backend writes to, and a task copying it to the stream (FIN at the end).
fn pump(
    stream: Option<IncomingStream>,
) -> (
    Option<mpsc::Sender<Bytes>>,
    Option<tokio::task::JoinHandle<()>>,
) {
    let Some(s) = stream else {
        return (None, None);
    };
    let (tx, mut rx) = mpsc::channel::<Bytes>(16);
    let task = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if s.writer.write(&b).await.is_err() {
                // The client is gone; keep draining so the process never blocks on output.
                while rx.recv().await.is_some() {}
                return;
            }
        }
        let _ = s.writer.finish().await;
    });
    (Some(tx), Some(task))
}

fn pipe_resize(mut s: IncomingStream, tx: mpsc::Sender<TermSize>) {
    tokio::spawn(async move {
        let mut dec = ResizeDecoder::default();
        while let Some(b) = s.data.recv().await {
            for size in dec.push(&b) {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(Version::of("v4.channel.k8s.io"), Some(Version::V4));
        assert_eq!(Version::of("v5.channel.k8s.io"), Some(Version::V5));
        assert_eq!(Version::of("v4.base64.channel.k8s.io"), Some(Version::V4));
        assert_eq!(Version::of("base64.channel.k8s.io"), Some(Version::V1));
        assert_eq!(Version::of("channel.k8s.io"), Some(Version::V1));
        assert_eq!(Version::of("portforward.k8s.io"), None);
    }

    #[test]
    fn statuses() {
        let ok = status_message(Version::V4, &Outcome::Exited(0)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&ok).unwrap();
        assert_eq!(v["status"], "Success");
        let bad = status_message(Version::V4, &Outcome::Exited(7)).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bad).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "7");
        assert_eq!(status_message(Version::V3, &Outcome::Exited(0)), None);
        let t = status_message(Version::V2, &Outcome::Exited(3)).unwrap();
        assert!(String::from_utf8(t).unwrap().contains("exit status 3"));
    }

    #[test]
    fn resize_decoder_handles_split_messages() {
        let mut d = ResizeDecoder::default();
        assert_eq!(d.push(br#"{"Width":80,"Hei"#), vec![]);
        assert_eq!(
            d.push(br#"ght":24}{"Width":100,"Height":50}"#),
            vec![
                TermSize {
                    width: 80,
                    height: 24
                },
                TermSize {
                    width: 100,
                    height: 50
                }
            ]
        );
        assert_eq!(d.push(b"garbage"), vec![]);
        assert_eq!(
            d.push(br#"{"Width":1,"Height":2}"#),
            vec![TermSize {
                width: 1,
                height: 2
            }]
        );
    }
}
