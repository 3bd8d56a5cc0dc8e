//! One plugin connection: a unix stream multiplexed into NRI's two logical connections, with a ttrpc client on
//! one and a ttrpc server on the other. The runtime calls the plugin on [`PLUGIN_SERVICE_CONN`] and serves it
//! on [`RUNTIME_SERVICE_CONN`]; a plugin (the test plugin) does the opposite, so both sides share this code.
//!
//! One reader task owns the read half: it routes responses to the calls waiting for them and hands requests to
//! the receiver returned by [`Connection::new`]. When the peer goes away every waiting call fails with
//! [`CallError::Closed`] and the receiver ends.

use super::ttrpc_proto;
use super::wire::{self, Message, MessageReader, MessageType};
use prost::Message as _;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

pub use super::wire::{PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};

/// gRPC's code for a method the server does not implement, as ttrpc reports it.
pub const CODE_UNIMPLEMENTED: i32 = 12;
/// gRPC's code for a failure inside the called method.
pub const CODE_UNKNOWN: i32 = 2;

#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection closed")]
    Closed,
    /// The peer answered with an error status.
    #[error("{message}")]
    Status { code: i32, message: String },
    #[error("cannot decode the answer: {0}")]
    Decode(String),
    #[error("cannot write to the connection: {0}")]
    Write(String),
}

impl CallError {
    /// Whether the connection is unusable after this error (NRI then drops the plugin).
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            CallError::Timeout(_) | CallError::Closed | CallError::Write(_) | CallError::Decode(_)
        )
    }
}

/// A request the peer sent on our server connection.
#[derive(Debug)]
pub struct IncomingRequest {
    pub stream_id: u32,
    pub service: String,
    pub method: String,
    pub payload: Vec<u8>,
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<Vec<u8>, CallError>>>>>;

pub struct Connection {
    /// Held across a write so the frames of two messages never interleave on the socket.
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_stream: AtomicU32,
    client_conn: u32,
    server_conn: u32,
    closed: watch::Receiver<bool>,
}

impl Connection {
    /// Multiplex `stream`: we call the peer on `client_conn` and serve it on `server_conn`.
    pub fn new(
        stream: UnixStream,
        client_conn: u32,
        server_conn: u32,
    ) -> (Arc<Connection>, mpsc::Receiver<IncomingRequest>) {
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (requests_tx, requests_rx) = mpsc::channel(64);
        let (closed_tx, closed_rx) = watch::channel(false);
        tokio::spawn(read_loop(
            read,
            pending.clone(),
            requests_tx,
            closed_tx,
            client_conn,
            server_conn,
        ));
        let conn = Arc::new(Connection {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_stream: AtomicU32::new(1),
            client_conn,
            server_conn,
            closed: closed_rx,
        });
        (conn, requests_rx)
    }

    /// Call `service`/`method` on the peer and decode its answer, failing after `timeout`.
    pub async fn call<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let envelope = ttrpc_proto::Request {
            service: service.to_string(),
            method: method.to_string(),
            payload: request.encode_to_vec(),
            timeout_nano: timeout.as_nanos().min(i64::MAX as u128) as i64,
            metadata: Vec::new(),
        }
        .encode_to_vec();
        let (tx, rx) = oneshot::channel();
        let stream_id = {
            // A ttrpc server refuses a stream id lower than one it has seen: ids are taken and written
            // under one lock, so they reach the socket in increasing order.
            let mut writer = self.writer.lock().await;
            let stream_id = self.next_stream.fetch_add(2, Ordering::Relaxed);
            lock(&self.pending).insert(stream_id, tx);
            // The reader fails every pending call when the peer leaves; a call registered after that
            // must not wait.
            if self.is_closed() {
                lock(&self.pending).remove(&stream_id);
                return Err(CallError::Closed);
            }
            let message = Message {
                stream_id,
                kind: MessageType::Request,
                flags: 0,
                payload: envelope,
            };
            if let Err(e) = write_message(&mut writer, self.client_conn, &message).await {
                lock(&self.pending).remove(&stream_id);
                return Err(e);
            }
            stream_id
        };
        let payload = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => answer?,
            Ok(Err(_)) => return Err(CallError::Closed),
            Err(_) => {
                lock(&self.pending).remove(&stream_id);
                return Err(CallError::Timeout(timeout));
            }
        };
        Resp::decode(payload.as_slice()).map_err(|e| CallError::Decode(e.to_string()))
    }

    /// Answer the request of `stream_id` with `result` (an encoded message, or a code and message).
    pub async fn respond(
        &self,
        stream_id: u32,
        result: Result<Vec<u8>, (i32, String)>,
    ) -> Result<(), CallError> {
        let envelope = match result {
            Ok(payload) => ttrpc_proto::Response {
                status: Some(ttrpc_proto::Status::default()),
                payload,
            },
            Err((code, message)) => ttrpc_proto::Response {
                status: Some(ttrpc_proto::Status {
                    code,
                    message,
                    details: Vec::new(),
                }),
                payload: Vec::new(),
            },
        };
        self.send(
            self.server_conn,
            Message {
                stream_id,
                kind: MessageType::Response,
                flags: 0,
                payload: envelope.encode_to_vec(),
            },
        )
        .await
    }

    /// Resolves once the peer has gone away.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Close our side: the peer sees end of file, waiting calls fail.
    pub async fn shutdown(&self) {
        let _ = self.writer.lock().await.shutdown().await;
    }

    async fn send(&self, conn: u32, message: Message) -> Result<(), CallError> {
        let mut writer = self.writer.lock().await;
        write_message(&mut writer, conn, &message).await
    }
}

async fn write_message(
    writer: &mut OwnedWriteHalf,
    conn: u32,
    message: &Message,
) -> Result<(), CallError> {
    let bytes = wire::encode_message(message).map_err(|e| CallError::Write(e.to_string()))?;
    let frames = wire::mux_frames(conn, &bytes);
    writer
        .write_all(&frames)
        .await
        .map_err(|e| CallError::Write(e.to_string()))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    pending: Pending,
    requests: mpsc::Sender<IncomingRequest>,
    closed: watch::Sender<bool>,
    client_conn: u32,
    server_conn: u32,
) {
    let mut responses = MessageReader::default();
    let mut incoming = MessageReader::default();
    let outcome: Result<(), String> = async {
        loop {
            let mut header = [0u8; wire::MUX_HEADER_LEN];
            if read.read_exact(&mut header).await.is_err() {
                return Ok(());
            }
            let (conn, len) = wire::mux_header(header).map_err(|e| e.to_string())?;
            let mut payload = vec![0u8; len];
            read.read_exact(&mut payload)
                .await
                .map_err(|e| format!("truncated frame: {e}"))?;
            if conn == client_conn {
                responses.push(&payload);
                while let Some(m) = responses.next_message().map_err(|e| e.to_string())? {
                    if m.kind != MessageType::Response {
                        continue;
                    }
                    let answer = match ttrpc_proto::Response::decode(m.payload.as_slice()) {
                        Ok(r) => match r.status {
                            Some(s) if s.code != 0 => Err(CallError::Status {
                                code: s.code,
                                message: s.message,
                            }),
                            _ => Ok(r.payload),
                        },
                        Err(e) => Err(CallError::Decode(e.to_string())),
                    };
                    if let Some(tx) = lock(&pending).remove(&m.stream_id) {
                        let _ = tx.send(answer);
                    }
                }
            } else if conn == server_conn {
                incoming.push(&payload);
                while let Some(m) = incoming.next_message().map_err(|e| e.to_string())? {
                    if m.kind != MessageType::Request {
                        continue;
                    }
                    let r = ttrpc_proto::Request::decode(m.payload.as_slice())
                        .map_err(|e| format!("undecodable request: {e}"))?;
                    let request = IncomingRequest {
                        stream_id: m.stream_id,
                        service: r.service,
                        method: r.method,
                        payload: r.payload,
                    };
                    if requests.send(request).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "nri connection broken");
    }
    for (_, tx) in lock(&pending).drain() {
        let _ = tx.send(Err(CallError::Closed));
    }
    let _ = closed.send(true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nri::api;

    #[tokio::test]
    async fn call_and_respond_across_a_socketpair() {
        let (a, b) = UnixStream::pair().unwrap();
        let (runtime, _runtime_requests) =
            Connection::new(a, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN);
        let (plugin, mut plugin_requests) =
            Connection::new(b, RUNTIME_SERVICE_CONN, PLUGIN_SERVICE_CONN);
        let server = tokio::spawn(async move {
            let r = plugin_requests.recv().await.unwrap();
            assert_eq!(r.service, "nri.pkg.api.v1alpha1.Plugin");
            assert_eq!(r.method, "Configure");
            let req = api::ConfigureRequest::decode(r.payload.as_slice()).unwrap();
            assert_eq!(req.runtime_name, "ferrio");
            let rsp = api::ConfigureResponse { events: 5 };
            plugin
                .respond(r.stream_id, Ok(rsp.encode_to_vec()))
                .await
                .unwrap();
            let r = plugin_requests.recv().await.unwrap();
            plugin
                .respond(r.stream_id, Err((CODE_UNKNOWN, "nope".into())))
                .await
                .unwrap();
            plugin
        });
        let req = api::ConfigureRequest {
            runtime_name: "ferrio".into(),
            ..Default::default()
        };
        let rsp: api::ConfigureResponse = runtime
            .call(
                "nri.pkg.api.v1alpha1.Plugin",
                "Configure",
                &req,
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(rsp.events, 5);
        let err = runtime
            .call::<_, api::Empty>(
                "nri.pkg.api.v1alpha1.Plugin",
                "Shutdown",
                &api::Empty {},
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, CallError::Status { code: CODE_UNKNOWN, ref message } if message == "nope")
        );
        let plugin = server.await.unwrap();
        drop(plugin);
        let err = runtime
            .call::<_, api::Empty>(
                "nri.pkg.api.v1alpha1.Plugin",
                "Shutdown",
                &api::Empty {},
                Duration::from_secs(5),
            )
            .await
            .unwrap_err();
        assert!(err.is_fatal(), "{err:?}");
    }

    #[tokio::test]
    async fn concurrent_calls_reach_the_peer_in_stream_id_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (runtime, _rx) = Connection::new(a, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN);
        let (plugin, mut requests) = Connection::new(b, RUNTIME_SERVICE_CONN, PLUGIN_SERVICE_CONN);
        let server = tokio::spawn(async move {
            let mut ids = Vec::new();
            while ids.len() < 32 {
                let r = requests.recv().await.unwrap();
                ids.push(r.stream_id);
                plugin.respond(r.stream_id, Ok(Vec::new())).await.unwrap();
            }
            ids
        });
        let calls = (0..32).map(|_| {
            let runtime = runtime.clone();
            tokio::spawn(async move {
                runtime
                    .call::<_, api::Empty>("s", "m", &api::Empty {}, Duration::from_secs(5))
                    .await
            })
        });
        for c in futures::future::join_all(calls).await {
            c.unwrap().unwrap();
        }
        let ids = server.await.unwrap();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(
            ids.iter().all(|id| id % 2 == 1),
            "client streams are odd: {ids:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (a, _b) = UnixStream::pair().unwrap();
        let (runtime, _rx) = Connection::new(a, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN);
        let err = runtime
            .call::<_, api::Empty>("s", "m", &api::Empty {}, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, CallError::Timeout(_)));
    }
}
