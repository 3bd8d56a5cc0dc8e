//! A SPDY/3.1 session over one upgraded connection: a reader task that turns frames into streams
//! and data, a writer task that owns the write half and the header compressor, and flow control.
//!
//! Every SYN_STREAM the peer opens is answered with a SYN_REPLY at once and handed out as an
//! [`IncomingStream`]. Received data is acknowledged with WINDOW_UPDATE as it is handed on.
//!
//! Send-side flow control is enforced only once the peer shows it takes part (it sent a
//! WINDOW_UPDATE or an initial-window SETTING): Go's spdystream, which kubectl and the API
//! server use, speaks SPDY/3 framing and never sends WINDOW_UPDATE, so holding it to the 64 KiB
//! initial window would stall every stream after 64 KiB.

use super::spdy::{self, Codec, Frame, Headers};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

/// Largest DATA frame this side sends.
const MAX_DATA_FRAME: usize = 32 * 1024;

enum Out {
    Frame(Frame),
    Close,
}

/// A stream the peer opened.
pub struct IncomingStream {
    pub id: u32,
    pub headers: Headers,
    /// The peer's data; ends at its FIN or RST_STREAM.
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

impl IncomingStream {
    pub fn header(&self, name: &str) -> Option<&str> {
        spdy::header(&self.headers, name)
    }
}

/// The sending half of one stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    flow: Arc<Flow>,
}

impl StreamWriter {
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Send `data`, split into frames and within the flow-control windows.
    pub async fn write(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self
                .flow
                .reserve(self.id, data.len().min(MAX_DATA_FRAME))
                .await?;
            self.send(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: Bytes::copy_from_slice(&data[..n]),
            })
            .await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Half-close: no more data from this side.
    pub async fn finish(&self) -> io::Result<()> {
        self.send(Frame::Data {
            stream_id: self.id,
            flags: spdy::FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    pub async fn reset(&self, status: u32) -> io::Result<()> {
        self.send(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    async fn send(&self, f: Frame) -> io::Result<()> {
        self.out
            .send(Out::Frame(f))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }
}

/// When the connection last carried a frame either way, for the idle timeout: a stream that
/// only sends (`kubectl logs`-like output) is not idle.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.start
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Send windows: the session's and each stream's.
struct Flow {
    st: Mutex<FlowState>,
    notify: Notify,
}

struct FlowState {
    enabled: bool,
    initial: i64,
    session: i64,
    streams: HashMap<u32, i64>,
    reset: HashSet<u32>,
    dead: bool,
}

impl Flow {
    fn lock(&self) -> std::sync::MutexGuard<'_, FlowState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Up to `want` bytes the stream may send now; waits while a window is empty.
    async fn reserve(&self, id: u32, want: usize) -> io::Result<usize> {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if st.dead || st.reset.contains(&id) {
                    return Err(io::Error::from(io::ErrorKind::BrokenPipe));
                }
                if !st.enabled {
                    return Ok(want);
                }
                let initial = st.initial;
                let stream = *st.streams.entry(id).or_insert(initial);
                let w = stream.min(st.session);
                if w > 0 {
                    let n = (w as usize).min(want);
                    st.session -= n as i64;
                    if let Some(s) = st.streams.get_mut(&id) {
                        *s -= n as i64;
                    }
                    return Ok(n);
                }
            }
            notified.await;
        }
    }

    fn update(&self, f: impl FnOnce(&mut FlowState)) {
        f(&mut self.lock());
        self.notify.notify_waiters();
    }
}

/// One SPDY connection, server side.
pub struct Session {
    out: mpsc::Sender<Out>,
    flow: Arc<Flow>,
    closed: watch::Receiver<bool>,
    last_stream: Arc<AtomicU32>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Session {
    /// Start serving `io`; streams the peer opens come out of the returned receiver.
    pub fn start<IO>(
        io: IO,
        idle_timeout: Option<Duration>,
    ) -> (Session, mpsc::Receiver<IncomingStream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let (closed_tx, closed) = watch::channel(false);
        let closed_tx = Arc::new(closed_tx);
        let flow = Arc::new(Flow {
            st: Mutex::new(FlowState {
                enabled: false,
                initial: spdy::DEFAULT_WINDOW,
                session: spdy::DEFAULT_WINDOW,
                streams: HashMap::new(),
                reset: HashSet::new(),
                dead: false,
            }),
            notify: Notify::new(),
        });
        let (accept_tx, accept_rx) = mpsc::channel(16);
        let last_stream = Arc::new(AtomicU32::new(0));
        let activity = Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        });
        let writer = tokio::spawn(write_loop(
            wr,
            out_rx,
            closed_tx.clone(),
            flow.clone(),
            activity.clone(),
        ));
        let reader = tokio::spawn(read_loop(ReadCtx {
            rd,
            out: out_tx.clone(),
            flow: flow.clone(),
            closed_tx,
            accept: accept_tx,
            last_stream: last_stream.clone(),
            idle_timeout,
            activity,
        }));
        (
            Session {
                out: out_tx,
                flow,
                closed,
                last_stream,
                reader,
                writer,
            },
            accept_rx,
        )
    }

    /// Resolves once the connection is gone (peer hung up, GOAWAY, error, idle timeout).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closed.clone();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Say GOAWAY, flush everything queued and close the connection.
    pub async fn close(mut self) {
        let last = self.last_stream.load(Ordering::Relaxed);
        let _ = self
            .out
            .send(Out::Frame(Frame::GoAway {
                last_good_stream_id: last,
                status: 0,
            }))
            .await;
        let _ = self.out.send(Out::Close).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.writer).await;
        self.reader.abort();
        self.flow.update(|st| st.dead = true);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn write_loop<W: AsyncWrite>(
    wr: W,
    mut rx: mpsc::Receiver<Out>,
    closed: Arc<watch::Sender<bool>>,
    flow: Arc<Flow>,
    activity: Arc<Activity>,
) {
    tokio::pin!(wr);
    let mut codec = Codec::new();
    let fail = |e: String| {
        tracing::debug!(error = %e, "spdy: write failed");
    };
    while let Some(out) = rx.recv().await {
        match out {
            Out::Frame(f) => {
                let bytes = match codec.encode(&f) {
                    Ok(b) => b,
                    Err(e) => {
                        fail(e.to_string());
                        break;
                    }
                };
                if let Err(e) = wr.write_all(&bytes).await {
                    fail(e.to_string());
                    break;
                }
                activity.touch();
                if rx.is_empty() {
                    if let Err(e) = wr.flush().await {
                        fail(e.to_string());
                        break;
                    }
                }
            }
            Out::Close => {
                let _ = wr.flush().await;
                let _ = wr.shutdown().await;
                break;
            }
        }
    }
    flow.update(|st| st.dead = true);
    closed.send_replace(true);
}

struct ReadCtx<R> {
    rd: R,
    out: mpsc::Sender<Out>,
    flow: Arc<Flow>,
    closed_tx: Arc<watch::Sender<bool>>,
    accept: mpsc::Sender<IncomingStream>,
    last_stream: Arc<AtomicU32>,
    idle_timeout: Option<Duration>,
    activity: Arc<Activity>,
}

async fn read_loop<R: AsyncRead + Unpin>(mut cx: ReadCtx<R>) {
    if let Err(e) = read_frames(&mut cx).await {
        tracing::debug!(error = %e, "spdy: session ended");
    }
    cx.flow.update(|st| st.dead = true);
    cx.closed_tx.send_replace(true);
}

async fn read_frames<R: AsyncRead + Unpin>(cx: &mut ReadCtx<R>) -> io::Result<()> {
    let mut codec = Codec::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut streams: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut going_away = false;
    let send = |f: Frame| {
        let out = cx.out.clone();
        async move { out.send(Out::Frame(f)).await.is_ok() }
    };
    loop {
        let frame = loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Ok(None) => {}
                Err(e) => {
                    let _ = send(Frame::GoAway {
                        last_good_stream_id: cx.last_stream.load(Ordering::Relaxed),
                        status: 1,
                    })
                    .await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            let n = match cx.idle_timeout {
                Some(t) => loop {
                    let left = t.saturating_sub(cx.activity.idle_for());
                    if left.is_zero() {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout"));
                    }
                    // On a timeout, look again: the writer may have been busy meanwhile.
                    if let Ok(r) = tokio::time::timeout(left, cx.rd.read_buf(&mut buf)).await {
                        break r?;
                    }
                },
                None => cx.rd.read_buf(&mut buf).await?,
            };
            cx.activity.touch();
            if n == 0 {
                return Ok(());
            }
        };
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let last = cx.last_stream.load(Ordering::Relaxed);
                // Client streams are odd and increasing.
                if stream_id % 2 == 0 || stream_id <= last || going_away {
                    send(Frame::RstStream {
                        stream_id,
                        status: if going_away {
                            spdy::RST_REFUSED_STREAM
                        } else {
                            spdy::RST_PROTOCOL_ERROR
                        },
                    })
                    .await;
                    continue;
                }
                cx.last_stream.store(stream_id, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel(32);
                if flags & spdy::FLAG_FIN == 0 {
                    streams.insert(stream_id, tx);
                }
                send(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: vec![],
                })
                .await;
                let stream = IncomingStream {
                    id: stream_id,
                    headers,
                    data: rx,
                    writer: StreamWriter {
                        id: stream_id,
                        out: cx.out.clone(),
                        flow: cx.flow.clone(),
                    },
                };
                if cx.accept.send(stream).await.is_err() {
                    // Nobody takes streams any more: refuse it.
                    streams.remove(&stream_id);
                    send(Frame::RstStream {
                        stream_id,
                        status: spdy::RST_REFUSED_STREAM,
                    })
                    .await;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let len = data.len() as u32;
                if let Some(tx) = streams.get(&stream_id) {
                    if !data.is_empty() {
                        // A reader that went away just drops the data.
                        let _ = tx.send(data).await;
                    }
                } else if !data.is_empty() && flags & spdy::FLAG_FIN == 0 {
                    send(Frame::RstStream {
                        stream_id,
                        status: spdy::RST_PROTOCOL_ERROR,
                    })
                    .await;
                }
                if flags & spdy::FLAG_FIN != 0 {
                    streams.remove(&stream_id);
                }
                if len > 0 {
                    send(Frame::WindowUpdate {
                        stream_id: 0,
                        delta: len,
                    })
                    .await;
                    if streams.contains_key(&stream_id) {
                        send(Frame::WindowUpdate {
                            stream_id,
                            delta: len,
                        })
                        .await;
                    }
                }
            }
            Frame::RstStream { stream_id, .. } => {
                streams.remove(&stream_id);
                cx.flow.update(|st| {
                    st.reset.insert(stream_id);
                });
            }
            Frame::Settings { entries, .. } => {
                for e in entries {
                    if e.id == spdy::SETTINGS_INITIAL_WINDOW_SIZE {
                        let v = i64::from(e.value);
                        cx.flow.update(|st| {
                            let delta = v - st.initial;
                            st.initial = v;
                            st.enabled = true;
                            for w in st.streams.values_mut() {
                                *w += delta;
                            }
                        });
                    }
                }
            }
            Frame::Ping { id } => {
                // Echo the peer's pings (odd ids from a client); ours would be even.
                if id % 2 == 1 {
                    send(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => {
                going_away = true;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                cx.flow.update(|st| {
                    st.enabled = true;
                    if stream_id == 0 {
                        st.session += i64::from(delta);
                    } else {
                        let initial = st.initial;
                        *st.streams.entry(stream_id).or_insert(initial) += i64::from(delta);
                    }
                });
            }
            Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Unknown { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client end built from the framer, for driving a session in tests.
    struct Peer<S> {
        io: S,
        codec: Codec,
        buf: BytesMut,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
        async fn send(&mut self, f: Frame) {
            let b = self.codec.encode(&f).unwrap();
            self.io.write_all(&b).await.unwrap();
        }
        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
        /// Next frame that is not a WINDOW_UPDATE.
        async fn recv_skip_wu(&mut self) -> Option<Frame> {
            loop {
                match self.recv().await? {
                    Frame::WindowUpdate { .. } => continue,
                    f => return Some(f),
                }
            }
        }
    }

    fn syn(id: u32, t: &str) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), t.into())],
        }
    }

    #[tokio::test]
    async fn streams_data_fin_and_goaway() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (session, mut incoming) = Session::start(a, None);
        let mut peer = Peer {
            io: b,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        peer.send(syn(1, "stdin")).await;
        assert!(matches!(
            peer.recv().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        let mut s = incoming.recv().await.unwrap();
        assert_eq!(s.header("streamtype"), Some("stdin"));
        peer.send(Frame::Data {
            stream_id: 1,
            flags: spdy::FLAG_FIN,
            data: Bytes::from_static(b"abc"),
        })
        .await;
        assert_eq!(s.data.recv().await.unwrap(), Bytes::from_static(b"abc"));
        assert!(s.data.recv().await.is_none(), "FIN ends the data");
        // Data consumed is acknowledged on the session.
        assert!(matches!(
            peer.recv().await,
            Some(Frame::WindowUpdate {
                stream_id: 0,
                delta: 3
            })
        ));
        s.writer.write(b"out").await.unwrap();
        s.writer.finish().await.unwrap();
        assert_eq!(
            peer.recv_skip_wu().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"out")
            })
        );
        assert!(matches!(
            peer.recv_skip_wu().await,
            Some(Frame::Data {
                stream_id: 1,
                flags: spdy::FLAG_FIN,
                ..
            })
        ));
        // A ping from the client comes back.
        peer.send(Frame::Ping { id: 5 }).await;
        assert_eq!(peer.recv_skip_wu().await, Some(Frame::Ping { id: 5 }));
        // An even (server-side) stream id from the client is a protocol error.
        peer.send(syn(2, "stdout")).await;
        assert_eq!(
            peer.recv_skip_wu().await,
            Some(Frame::RstStream {
                stream_id: 2,
                status: spdy::RST_PROTOCOL_ERROR
            })
        );
        session.close().await;
        assert_eq!(
            peer.recv_skip_wu().await,
            Some(Frame::GoAway {
                last_good_stream_id: 1,
                status: 0
            })
        );
        assert_eq!(peer.recv().await, None);
    }

    #[tokio::test]
    async fn flow_control_once_the_peer_takes_part() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (session, mut incoming) = Session::start(a, None);
        let mut peer = Peer {
            io: b,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        // The peer announces a 10-byte initial stream window.
        peer.send(Frame::Settings {
            flags: 0,
            entries: vec![spdy::Setting {
                flags: 0,
                id: spdy::SETTINGS_INITIAL_WINDOW_SIZE,
                value: 10,
            }],
        })
        .await;
        peer.send(syn(1, "stdout")).await;
        let s = incoming.recv().await.unwrap();
        let w = s.writer.clone();
        let sender = tokio::spawn(async move { w.write(&[7u8; 25]).await });
        let mut got = Vec::new();
        let mut frames = 0;
        while got.len() < 25 {
            if let Frame::Data { data, .. } = peer.recv().await.unwrap() {
                assert!(data.len() <= 10, "window respected: {}", data.len());
                got.extend_from_slice(&data);
                frames += 1;
                peer.send(Frame::WindowUpdate {
                    stream_id: 1,
                    delta: data.len() as u32,
                })
                .await;
            }
        }
        assert!(frames >= 3);
        sender.await.unwrap().unwrap();
        drop(peer);
        session.closed().await;
        assert!(session.is_closed());
    }

    #[tokio::test]
    async fn idle_timeout_counts_traffic_both_ways() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (session, mut incoming) = Session::start(a, Some(Duration::from_secs(2)));
        let mut peer = Peer {
            io: b,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        peer.send(syn(1, "stdout")).await;
        let s = incoming.recv().await.unwrap();
        // Output only, for 1.5 idle periods (wide margins: CI machines are loaded): the session
        // stays up.
        let w = s.writer.clone();
        let drain = tokio::spawn(async move { while peer.recv().await.is_some() {} });
        for _ in 0..30 {
            w.write(b"tick").await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!session.is_closed(), "output keeps the session alive");
        // Then silence: closed after about the timeout.
        let start = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), session.closed())
            .await
            .expect("the idle session closes");
        assert!(start.elapsed() >= Duration::from_millis(1500));
        drain.abort();
    }

    #[tokio::test]
    async fn no_window_updates_means_no_limit() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (_session, mut incoming) = Session::start(a, None);
        let mut peer = Peer {
            io: b,
            codec: Codec::new(),
            buf: BytesMut::new(),
        };
        peer.send(syn(1, "stdout")).await;
        let s = incoming.recv().await.unwrap();
        // 200 KiB goes out although the peer never grants more than the initial 64 KiB.
        let w = s.writer.clone();
        tokio::spawn(async move { w.write(&vec![1u8; 200 * 1024]).await.unwrap() });
        let mut n = 0;
        while n < 200 * 1024 {
            if let Some(Frame::Data { data, .. }) = peer.recv().await {
                n += data.len();
            }
        }
    }
}
