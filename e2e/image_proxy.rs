//! A tiny HTTP/1.1 server on loopback for the image tests, written on raw tokio sockets: a
//! mirror that accepts and never answers, one that answers 404 to everything, and a proxy in
//! front of a real docker-registry that can demand bearer tokens (with its own token endpoint),
//! slow blob bodies down, and count what it was asked for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Credentials the token endpoint accepts and the token it hands out.
#[derive(Clone)]
pub struct TokenAuth {
    pub username: String,
    pub password: String,
    /// An OAuth2 refresh token accepted by a POST with grant_type=refresh_token.
    pub refresh_token: String,
    /// The bearer token the registry side accepts.
    pub token: String,
}

#[derive(Clone)]
pub enum Mode {
    /// Accept connections and never send a byte.
    Stall,
    /// 404 with a registry error body for every request.
    NotFound,
    /// Forward to the registry at `backend` (host:port).
    Proxy {
        backend: String,
        auth: Option<TokenAuth>,
        /// Sleep this long after each 16 KiB of a blob body.
        throttle: Option<Duration>,
    },
}

/// What the server saw.
#[derive(Default)]
pub struct Seen {
    /// Request lines (`GET /v2/...`), in order.
    pub requests: Mutex<Vec<String>>,
    /// Query strings of token requests (and the form body of POSTs), `:` and `/` decoded.
    pub token_requests: Mutex<Vec<String>>,
    /// Blob body bytes sent so far.
    pub blob_bytes: AtomicU64,
    inflight: AtomicUsize,
    /// Most layer-sized blob bodies being sent at the same time.
    pub max_inflight: AtomicUsize,
}

impl Seen {
    /// How many requests' lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(needle))
            .count()
    }
}

pub struct Server {
    pub port: u16,
    pub seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    pub async fn start(mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let task = tokio::spawn(async move {
            // Stalled sockets are kept here so they stay open (and silent) until the server goes.
            let mut held: Vec<TcpStream> = Vec::new();
            let client = reqwest::Client::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                match &mode {
                    Mode::Stall => held.push(sock),
                    _ => {
                        let (mode, seen, client) = (mode.clone(), s.clone(), client.clone());
                        tokio::spawn(async move {
                            let _ = serve(sock, &mode, &seen, &client, port).await;
                        });
                    }
                }
            }
        });
        Server { port, seen, task }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

struct Request {
    method: String,
    target: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_request(sock: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let target = first.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

async fn respond(
    sock: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    sock.write_all(head.as_bytes()).await?;
    sock.write_all(body).await?;
    sock.flush().await
}

fn json(v: serde_json::Value) -> (Vec<(&'static str, String)>, Vec<u8>) {
    (
        vec![("Content-Type", "application/json".to_string())],
        serde_json::to_vec(&v).unwrap(),
    )
}

/// The query parameter `key` of `q` (no percent-decoding beyond `%3A` and `%2F`, enough here).
fn param(q: &str, key: &str) -> Option<String> {
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.replace("%3A", ":").replace("%2F", "/"))
    })
}

async fn serve(
    mut sock: TcpStream,
    mode: &Mode,
    seen: &Seen,
    client: &reqwest::Client,
    port: u16,
) -> std::io::Result<()> {
    let Some(req) = read_request(&mut sock).await else {
        return Ok(());
    };
    seen.requests
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method, req.target));
    let (backend, auth, throttle) = match mode {
        Mode::Stall => unreachable!("stalled sockets are never served"),
        Mode::NotFound => {
            let (h, b) = json(
                serde_json::json!({"errors": [{"code": "NAME_UNKNOWN", "message": "nothing here"}]}),
            );
            return respond(&mut sock, "404 Not Found", &h, &b).await;
        }
        Mode::Proxy {
            backend,
            auth,
            throttle,
        } => (backend, auth, throttle),
    };
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    if let Some(auth) = auth {
        if path == "/token" {
            let form = String::from_utf8_lossy(&req.body).into_owned();
            seen.token_requests.lock().unwrap().push(
                format!("{} {query} {form}", req.method)
                    .replace("%3A", ":")
                    .replace("%2F", "/"),
            );
            let basic_ok = req
                .headers
                .get("authorization")
                .and_then(|h| h.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .is_some_and(|b| b == format!("{}:{}", auth.username, auth.password).as_bytes());
            let refresh_ok = req.method == "POST"
                && param(&form, "grant_type").as_deref() == Some("refresh_token")
                && param(&form, "refresh_token").as_deref() == Some(auth.refresh_token.as_str());
            if basic_ok || refresh_ok {
                let key = if refresh_ok { "access_token" } else { "token" };
                let (h, b) = json(serde_json::json!({ key: auth.token }));
                return respond(&mut sock, "200 OK", &h, &b).await;
            }
            let (h, b) = json(
                serde_json::json!({"errors": [{"code": "DENIED", "message": "bad credentials"}]}),
            );
            return respond(&mut sock, "401 Unauthorized", &h, &b).await;
        }
        let bearer = req
            .headers
            .get("authorization")
            .and_then(|h| h.strip_prefix("Bearer "));
        if bearer != Some(auth.token.as_str()) {
            let repo = path
                .strip_prefix("/v2/")
                .and_then(|p| {
                    p.rsplit_once("/manifests/")
                        .or_else(|| p.rsplit_once("/blobs/"))
                })
                .map(|(r, _)| r.to_string())
                .unwrap_or_default();
            let challenge = format!(
                "Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"ferrio-test\",scope=\"repository:{repo}:pull\""
            );
            let (mut h, b) = json(
                serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "token required"}]}),
            );
            h.push(("WWW-Authenticate", challenge));
            return respond(&mut sock, "401 Unauthorized", &h, &b).await;
        }
    }
    let mut fwd = client.get(format!("http://{backend}{}", req.target));
    if let Some(a) = req.headers.get("accept") {
        fwd = fwd.header("Accept", a);
    }
    let resp = match fwd.send().await {
        Ok(r) => r,
        Err(e) => {
            return respond(&mut sock, "502 Bad Gateway", &[], e.to_string().as_bytes()).await
        }
    };
    let status = resp.status();
    let mut headers = Vec::new();
    for k in ["content-type", "docker-content-digest"] {
        if let Some(v) = resp.headers().get(k).and_then(|v| v.to_str().ok()) {
            headers.push((k, v.to_string()));
        }
    }
    let body = resp.bytes().await.unwrap_or_default();
    let is_blob = path.contains("/blobs/");
    let status_line = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    if !(is_blob && status.is_success()) {
        return respond(&mut sock, &status_line, &headers, &body).await;
    }
    // Only layer-sized bodies count as downloads in flight (configs are a few hundred bytes).
    let layer = body.len() > 64 * 1024;
    if layer {
        let now = seen.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        seen.max_inflight.fetch_max(now, Ordering::SeqCst);
    }
    let mut counted = layer;
    let res = async {
        let mut head = format!(
            "HTTP/1.1 {status_line}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await?;
        let chunks: Vec<&[u8]> = body.chunks(16 * 1024).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            if i + 1 == chunks.len() && layer {
                // Out of flight before the client can have it all and ask for the next layer.
                seen.inflight.fetch_sub(1, Ordering::SeqCst);
                counted = false;
            }
            sock.write_all(chunk).await?;
            seen.blob_bytes
                .fetch_add(chunk.len() as u64, Ordering::SeqCst);
            if let (Some(t), false) = (throttle, i + 1 == chunks.len()) {
                tokio::time::sleep(*t).await;
            }
        }
        sock.flush().await
    }
    .await;
    if counted {
        seen.inflight.fetch_sub(1, Ordering::SeqCst);
    }
    res
}
