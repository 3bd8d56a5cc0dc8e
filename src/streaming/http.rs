//! The HTTP/1.1 edge: `/{exec,attach,portforward}/<token>`, upgraded to SPDY/3.1 or WebSocket.
//!
//! An unknown, used or expired token is a 404. SPDY clients list their protocols in
//! `X-Stream-Protocol-Version` headers, WebSocket clients in `Sec-WebSocket-Protocol`; the first
//! one in the client's order that the server speaks wins, and no common protocol is a 403 that
//! lists what the server accepts (as Kubernetes' `httpstream.Handshake` does).

use super::session::Session;
use super::Tokens;
use super::{portforward, remotecommand, websocket};
use super::{Backend, Kind, Request};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
pub const ACCEPTED_HEADER: &str = "X-Accepted-Stream-Protocol-Versions";

pub struct Context {
    pub tokens: Tokens,
    pub backend: Arc<dyn Backend>,
    pub idle_timeout: Option<Duration>,
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cx: Arc<Context>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let cx = cx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_conn(tcp, peer, cx).await;
            };
            // The handshake gets a deadline so a silent client cannot hold a task for ever.
            match tokio::time::timeout(Duration::from_secs(30), tls.accept(tcp)).await {
                Ok(Ok(s)) => serve_conn(s, peer, cx).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "streaming: TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "streaming: TLS handshake timed out"),
            }
        });
    }
}

async fn serve_conn<IO>(io: IO, peer: std::net::SocketAddr, cx: Arc<Context>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let cx = cx.clone();
        async move { Ok::<_, Infallible>(handle(cx, req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "streaming connection ended");
    }
}

type Resp = Response<Full<Bytes>>;

fn plain(status: StatusCode, msg: &str) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(format!("{msg}\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    r
}

/// All values of `name`, split at commas.
fn list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The first of the client's protocols that the server speaks.
pub fn negotiate(client: &[String], server: &[&str]) -> Option<String> {
    client
        .iter()
        .find(|c| server.contains(&c.as_str()))
        .cloned()
}

fn upgrade_kind(headers: &HeaderMap) -> Option<String> {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.to_ascii_lowercase())
}

fn handle(cx: Arc<Context>, req: hyper::Request<Incoming>) -> Resp {
    let path = req.uri().path().trim_matches('/').to_string();
    let Some((kind, token)) = path.split_once('/') else {
        return plain(StatusCode::NOT_FOUND, "not found");
    };
    let kind = match kind {
        "exec" => Kind::Exec,
        "attach" => Kind::Attach,
        "portforward" => Kind::PortForward,
        _ => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let Some(request) = cx.tokens.take(token) else {
        return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    };
    if request.kind() != kind {
        return plain(StatusCode::NOT_FOUND, "unknown or expired streaming token");
    }
    let upgrade = upgrade_kind(req.headers());
    tracing::debug!(
        endpoint = kind.path(),
        upgrade = upgrade.as_deref().unwrap_or(""),
        "streaming request"
    );
    match upgrade.as_deref() {
        Some("websocket") => websocket_upgrade(cx, req, request),
        Some("spdy/3.1") => spdy_upgrade(cx, req, request),
        _ => plain(
            StatusCode::BAD_REQUEST,
            "this endpoint needs an upgrade to SPDY/3.1 or websocket",
        ),
    }
}

fn spdy_upgrade(cx: Arc<Context>, req: hyper::Request<Incoming>, request: Request) -> Resp {
    let server: &[&str] = match request.kind() {
        Kind::PortForward => portforward::SPDY_PROTOCOLS,
        _ => remotecommand::SPDY_PROTOCOLS,
    };
    let client = list(req.headers(), PROTOCOL_HEADER);
    // A client naming no protocol speaks the first one, unversioned.
    let chosen = if client.is_empty() {
        Some(match request.kind() {
            Kind::PortForward => "portforward.k8s.io".to_string(),
            _ => "channel.k8s.io".to_string(),
        })
    } else {
        negotiate(&client, server)
    };
    let Some(chosen) = chosen else {
        let mut r = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: no common protocol; the server speaks {}",
                server.join(", ")
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&server.join(", ")) {
            r.headers_mut().insert(ACCEPTED_HEADER, v);
        }
        return r;
    };
    let network = match &request {
        Request::PortForward(pf) => match portforward::network(&cx.backend, pf) {
            Ok(n) => Some(n),
            Err(e) => return plain(StatusCode::NOT_FOUND, &e.to_string()),
        },
        _ => None,
    };
    tracing::debug!(protocol = %chosen, "streaming upgrade");
    let on_upgrade = hyper::upgrade::on(req);
    let proto = chosen.clone();
    let kind = request.kind();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "spdy upgrade failed");
                return;
            }
        };
        let (session, incoming) = Session::start(TokioIo::new(upgraded), cx.idle_timeout);
        match request {
            Request::Exec(c) | Request::Attach(c) => {
                let version =
                    remotecommand::Version::of(&proto).unwrap_or(remotecommand::Version::V1);
                remotecommand::serve_spdy(session, incoming, version, kind, c, cx.backend.clone())
                    .await
            }
            Request::PortForward(pf) => {
                let net = network.unwrap_or(super::PodNetwork { netns: None });
                portforward::serve_spdy(session, incoming, pf, net).await
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&chosen) {
        h.insert(PROTOCOL_HEADER, v);
    }
    r
}

fn websocket_upgrade(cx: Arc<Context>, req: hyper::Request<Incoming>, request: Request) -> Resp {
    let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    let server: &[&str] = match request.kind() {
        Kind::PortForward => portforward::WS_PROTOCOLS,
        _ => websocket::COMMAND_PROTOCOLS,
    };
    let client = list(req.headers(), "sec-websocket-protocol");
    let chosen = if client.is_empty() {
        Some(String::new())
    } else {
        negotiate(&client, server)
    };
    let Some(chosen) = chosen else {
        return plain(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: no common protocol; the server speaks {}",
                server.join(", ")
            ),
        );
    };
    let network = match &request {
        Request::PortForward(pf) => match portforward::network(&cx.backend, pf) {
            Ok(n) => Some(n),
            Err(e) => return plain(StatusCode::NOT_FOUND, &e.to_string()),
        },
        _ => None,
    };
    let query = req.uri().query().map(str::to_string);
    tracing::debug!(protocol = %chosen, "streaming upgrade");
    let on_upgrade = hyper::upgrade::on(req);
    let proto = chosen.clone();
    let kind = request.kind();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        match request {
            Request::Exec(c) | Request::Attach(c) => {
                websocket::serve_command(ws, &proto, kind, c, cx.backend.clone(), cx.idle_timeout)
                    .await
            }
            Request::PortForward(pf) => {
                let net = network.unwrap_or(super::PodNetwork { netns: None });
                if proto == portforward::TUNNEL_PROTOCOL {
                    let io = websocket::byte_stream(ws);
                    let (session, incoming) = Session::start(io, cx.idle_timeout);
                    portforward::serve_spdy(session, incoming, pf, net).await
                } else {
                    let ports = if pf.ports.is_empty() {
                        portforward::ports_from_query(query.as_deref())
                    } else {
                        pf.ports.clone()
                    };
                    portforward::serve_ws(ws, &proto, ports, net, cx.idle_timeout).await
                }
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    if !chosen.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&chosen) {
            h.insert("sec-websocket-protocol", v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_follows_the_clients_order() {
        let c = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            negotiate(
                &c(&["v4.channel.k8s.io", "v3.channel.k8s.io"]),
                remotecommand::SPDY_PROTOCOLS
            ),
            Some("v4.channel.k8s.io".into())
        );
        assert_eq!(
            negotiate(
                &c(&["v2.channel.k8s.io", "v4.channel.k8s.io"]),
                remotecommand::SPDY_PROTOCOLS
            ),
            Some("v2.channel.k8s.io".into())
        );
        assert_eq!(
            negotiate(&c(&["v9.channel.k8s.io"]), remotecommand::SPDY_PROTOCOLS),
            None
        );
        let mut h = HeaderMap::new();
        h.append(PROTOCOL_HEADER, HeaderValue::from_static("a, b"));
        h.append(PROTOCOL_HEADER, HeaderValue::from_static("c"));
        assert_eq!(list(&h, PROTOCOL_HEADER), vec!["a", "b", "c"]);
    }
}
