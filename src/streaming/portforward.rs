//! Port forwarding (`portforward.k8s.io`): connect to `localhost:<port>` inside the pod's network
//! namespace and copy bytes both ways.
//!
//! Over SPDY each forwarded connection is a pair of streams (`streamtype: data` and `error`)
//! sharing a `requestid` header; many connections share one session. Over WebSocket the ports
//! come with the request and port *i* uses channels `2i` (data) and `2i+1` (error), each starting
//! with the port number as two little-endian bytes.
//!
//! Dialing never changes the namespace of a tokio thread: a fresh std thread enters the pod's
//! network namespace, connects, and hands the connected socket back; the thread then ends, so no
//! thread is ever left in a pod's namespace.

use super::session::{IncomingStream, Session};
use super::websocket::Encoding;
use super::{Backend, PodNetwork, PortForwardRequest, StreamError};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];
pub const WS_PROTOCOLS: &[&str] = &[
    "portforward.k8s.io",
    "base64.portforward.k8s.io",
    TUNNEL_PROTOCOL,
];
/// SPDY/3.1 frames carried in WebSocket binary messages (kubectl 1.31+ port-forward).
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// Connect to `localhost:port` in `netns` (the caller's own namespace when `None`).
pub async fn dial(netns: Option<PathBuf>, port: u16) -> Result<TcpStream, StreamError> {
    let err = |source| StreamError::Dial { port, source };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("ferrio-netns-dial".into())
        .spawn(move || {
            let _ = tx.send(dial_blocking(netns, port));
        })
        .map_err(err)?;
    let std_stream = rx
        .await
        .map_err(|_| err(io::Error::other("dial thread ended without an answer")))?
        .map_err(err)?;
    TcpStream::from_std(std_stream).map_err(err)
}

/// Runs on a thread of its own that ends right after: it may enter another namespace.
fn dial_blocking(netns: Option<PathBuf>, port: u16) -> io::Result<std::net::TcpStream> {
    if let Some(path) = netns {
        let f = std::fs::File::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| io::Error::other(format!("setns {}: {e}", path.display())))?;
    }
    let timeout = std::time::Duration::from_secs(10);
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let s = match std::net::TcpStream::connect_timeout(&v4, timeout) {
        Ok(s) => s,
        Err(e4) => {
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e4)?
        }
    };
    s.set_nonblocking(true)?;
    Ok(s)
}

fn request_id(s: &IncomingStream) -> String {
    if let Some(id) = s.header("requestid") {
        return id.to_string();
    }
    // Old clients send no request id; their pairs open back to back (error, then data).
    if s.header("streamtype") == Some("data") {
        s.id.saturating_sub(2).to_string()
    } else {
        s.id.to_string()
    }
}

/// Port-forward over a SPDY session: any number of connections, each a pair of streams.
pub async fn serve_spdy(
    session: Session,
    mut incoming: mpsc::Receiver<IncomingStream>,
    req: PortForwardRequest,
    net: PodNetwork,
) {
    let mut pending: HashMap<String, (Option<IncomingStream>, Option<IncomingStream>)> =
        HashMap::new();
    let mut tasks = Vec::new();
    while let Some(s) = incoming.recv().await {
        let port = s.header("port").and_then(|p| p.parse::<u16>().ok());
        let Some(port) = port.filter(|p| req.ports.is_empty() || req.ports.contains(p)) else {
            let msg = format!(
                "port {:?} is not one this request may forward",
                s.header("port").unwrap_or("")
            );
            let _ = s.writer.write(msg.as_bytes()).await;
            let _ = s.writer.reset(super::spdy::RST_REFUSED_STREAM).await;
            continue;
        };
        let id = request_id(&s);
        let entry = pending.entry(id.clone()).or_default();
        match s.header("streamtype") {
            Some("data") => entry.0 = Some(s),
            Some("error") => entry.1 = Some(s),
            _ => {
                let _ = s.writer.reset(super::spdy::RST_PROTOCOL_ERROR).await;
                continue;
            }
        }
        let complete = entry.0.is_some() && entry.1.is_some();
        if let Some((Some(data), Some(error))) = complete.then(|| pending.remove(&id)).flatten() {
            tasks.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
            tasks.push(tokio::spawn(forward_pair(
                data,
                error,
                port,
                net.netns.clone(),
            )));
        }
    }
    for t in tasks {
        t.abort();
    }
    session.close().await;
}

async fn forward_pair(
    data: IncomingStream,
    error: IncomingStream,
    port: u16,
    netns: Option<PathBuf>,
) {
    let tcp = match dial(netns, port).await {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("error forwarding port {port}: {e}");
            tracing::debug!("{msg}");
            let _ = error.writer.write(msg.as_bytes()).await;
            let _ = error.writer.finish().await;
            let _ = data.writer.finish().await;
            return;
        }
    };
    let (mut rd, mut wr) = tcp.into_split();
    let IncomingStream {
        data: mut from_client,
        writer,
        ..
    } = data;
    let up = async {
        while let Some(b) = from_client.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if writer.write(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let msg = format!("error reading from port {port}: {e}");
                    let _ = error.writer.write(msg.as_bytes()).await;
                    break;
                }
            }
        }
        let _ = writer.finish().await;
    };
    // Done when the pod's side is: the client may never half-close (kubectl resets its
    // streams instead), while a client that does half-close still gets the whole answer.
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {}
        _ = &mut up => (&mut down).await,
    }
    let _ = error.writer.finish().await;
}

/// Port-forward over a WebSocket with channel-prefixed messages: one connection per port.
pub async fn serve_ws<S>(
    ws: WebSocketStream<S>,
    protocol: &str,
    ports: Vec<u16>,
    net: PodNetwork,
    idle_timeout: Option<std::time::Duration>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let enc = Encoding::of(protocol);
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    let idle = super::websocket::Idle::new(idle_timeout);
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
    let mut to_port: Vec<Option<mpsc::Sender<Bytes>>> = Vec::new();
    let mut tasks = Vec::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let (data_ch, err_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        for ch in [data_ch, err_ch] {
            let _ = out_tx.send(enc.encode(ch, &port.to_le_bytes())).await;
        }
        match dial(net.netns.clone(), port).await {
            Ok(tcp) => {
                let (tx, mut rx) = mpsc::channel::<Bytes>(32);
                to_port.push(Some(tx));
                let out = out_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let (mut rd, mut wr) = tcp.into_split();
                    let up = async {
                        while let Some(b) = rx.recv().await {
                            if wr.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        let _ = wr.shutdown().await;
                    };
                    let down = async {
                        let mut buf = vec![0u8; 32 * 1024];
                        loop {
                            match rd.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if out.send(enc.encode(data_ch, &buf[..n])).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    };
                    tokio::pin!(up, down);
                    tokio::select! {
                        _ = &mut down => {}
                        _ = &mut up => (&mut down).await,
                    }
                }));
            }
            Err(e) => {
                to_port.push(None);
                let msg = format!("error forwarding port {port}: {e}");
                let _ = out_tx.send(enc.encode(err_ch, msg.as_bytes())).await;
            }
        }
    }
    while let Some(msg) = idle.next(&mut source).await {
        if matches!(msg, Message::Close(_)) {
            break;
        }
        let Some((ch, data)) = enc.decode(&msg) else {
            continue;
        };
        if ch % 2 != 0 {
            continue;
        }
        let i = usize::from(ch / 2);
        if let Some(Some(tx)) = to_port.get(i) {
            if !data.is_empty() && tx.send(Bytes::from(data)).await.is_err() {
                to_port[i] = None;
            }
        }
    }
    drop(to_port);
    for t in tasks {
        t.abort();
    }
    let _ = out_tx.send(super::websocket::normal_close()).await;
    drop(out_tx);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), writer).await;
}

/// The `ports` query parameter (`ports=80,8080`), for WebSocket clients.
pub fn ports_from_query(query: Option<&str>) -> Vec<u16> {
    let Some(q) = query else { return vec![] };
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == "ports" || *k == "port")
        .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|p| p.trim().parse().ok())
        .collect()
}

/// Where a pod's port-forward dials, via the backend.
pub fn network(
    backend: &Arc<dyn Backend>,
    req: &PortForwardRequest,
) -> Result<PodNetwork, StreamError> {
    backend.pod_network(&req.pod_sandbox_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_ports() {
        assert_eq!(ports_from_query(Some("ports=80,8080")), vec![80, 8080]);
        assert_eq!(ports_from_query(Some("a=b&port=1&port=2")), vec![1, 2]);
        assert_eq!(ports_from_query(None), Vec::<u16>::new());
        assert_eq!(ports_from_query(Some("ports=x")), Vec::<u16>::new());
    }

    #[tokio::test]
    #[ignore = "needs root: network namespaces"]
    async fn dial_in_own_namespace_and_in_a_netns_file() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let accept = tokio::spawn(async move { l.accept().await.unwrap() });
        let mut c = dial(None, port).await.unwrap();
        let (mut s, _) = accept.await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"ping");
        // Our own netns through its /proc file: setns into the same namespace works.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let own = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        let accept = tokio::spawn(async move { l.accept().await.unwrap() });
        dial(Some(own), port).await.unwrap();
        accept.await.unwrap();
        // A missing namespace file is an error naming it.
        let e = dial(Some("/nonexistent/netns".into()), port)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }
}
