//! The monitor side of the attach socket (protocol in [`crate::attach`]): accepting clients,
//! decoding their frames into [`Action`]s for the event loop (stdin, resize, log reopen, signal),
//! answering requests, fanning output out to them.
//!
//! Everything is non-blocking and driven by the monitor's single `poll(2)` loop: the loop asks
//! for the fds to watch ([`AttachServer::poll_fds`]), then hands back readiness. A client that
//! stops reading is dropped once [`CLIENT_BACKLOG`] bytes wait for it; the container never blocks
//! on a client.

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{send, MsgFlags};

use crate::attach::{
    decode_signal, encode_frame, kind, FrameDecoder, CLIENT_BACKLOG, VERSION, WANT_STDERR,
    WANT_STDIN, WANT_STDOUT,
};
use crate::log::Stream;

/// What a client asked the monitor to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Bytes for the container's stdin.
    Stdin(Vec<u8>),
    /// A client with stdin is done with it (stdin close, or it went away).
    StdinDone,
    /// Resize the terminal: columns, rows.
    Resize(u16, u16),
    /// Reopen the log; answer client `usize` with [`AttachServer::reply`].
    ReopenLog(usize),
    /// Send `signal` to the container's init; answer `client` with [`AttachServer::reply`].
    Signal { client: usize, signal: i32 },
}

struct Client {
    sock: UnixStream,
    decoder: FrameDecoder,
    out: Vec<u8>,
    /// Stream flags from the hello; `None` until it came.
    flags: Option<u8>,
    /// This client's stdin ended (reported once).
    stdin_done: bool,
    /// To be dropped at the next sweep.
    dead: bool,
}

/// The listening socket and its clients.
pub struct AttachServer {
    listener: UnixListener,
    clients: Vec<Client>,
    buf: Vec<u8>,
}

/// Binds a unix socket at `path`, which may be longer than `sun_path`, through the parent
/// directory's `/proc/self/fd` entry.
pub fn bind_long(path: &Path) -> io::Result<UnixListener> {
    let _ = std::fs::remove_file(path);
    if path.as_os_str().len() < 100 {
        return UnixListener::bind(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixListener::bind(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    UnixListener::bind(short)
}

impl AttachServer {
    /// Listens at `path` (replacing a stale socket file).
    pub fn bind(path: &Path) -> io::Result<AttachServer> {
        let listener = bind_long(path)?;
        listener.set_nonblocking(true)?;
        Ok(AttachServer {
            listener,
            clients: Vec::new(),
            buf: Vec::new(),
        })
    }

    /// The fds to poll: the listener, then one per client (in order), with the events wanted.
    /// `accept_input` false leaves clients' input unread (stdin backpressure).
    pub fn poll_fds(&self, accept_input: bool) -> Vec<PollFd<'_>> {
        let mut v = Vec::with_capacity(1 + self.clients.len());
        v.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
        for c in &self.clients {
            let mut ev = PollFlags::empty();
            if accept_input {
                ev |= PollFlags::POLLIN;
            }
            if !c.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            v.push(PollFd::new(c.sock.as_fd(), ev));
        }
        v
    }

    /// How many fds [`poll_fds`](Self::poll_fds) returns.
    pub fn fd_count(&self) -> usize {
        1 + self.clients.len()
    }

    /// Acts on readiness: `revents[0]` for the listener, then one per client. Returns what
    /// clients asked for.
    pub fn handle(&mut self, revents: &[PollFlags]) -> Vec<Action> {
        let mut actions = Vec::new();
        for (i, ev) in revents.iter().enumerate().skip(1) {
            let i = i - 1;
            if i >= self.clients.len() {
                break;
            }
            if ev.intersects(PollFlags::POLLOUT) {
                self.flush(i);
            }
            if ev.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
                self.read_client(i, &mut actions);
            }
        }
        if revents
            .first()
            .is_some_and(|e| e.intersects(PollFlags::POLLIN))
        {
            self.accept();
        }
        actions
    }

    fn accept(&mut self) {
        // Bounded: a flood of connections must not starve the container's output.
        for _ in 0..16 {
            match self.listener.accept() {
                Ok((sock, _)) => {
                    if sock.set_nonblocking(true).is_err() {
                        continue;
                    }
                    self.clients.push(Client {
                        sock,
                        decoder: FrameDecoder::default(),
                        out: Vec::new(),
                        flags: None,
                        stdin_done: false,
                        dead: false,
                    });
                }
                Err(_) => return,
            }
        }
    }

    fn read_client(&mut self, i: usize, actions: &mut Vec<Action>) {
        if self.buf.is_empty() {
            self.buf = vec![0; 16 * 1024];
        }
        let c = &mut self.clients[i];
        match c.sock.read(&mut self.buf) {
            Ok(0) => {
                c.dead = true;
            }
            Ok(n) => c.decoder.push(&self.buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => c.dead = true,
        }
        loop {
            let frame = match c.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => {
                    c.dead = true;
                    break;
                }
            };
            match (c.flags, frame.kind) {
                (None, kind::HELLO) => {
                    if frame.payload.first() != Some(&VERSION) || frame.payload.len() < 2 {
                        encode_frame(&mut c.out, kind::ERROR, b"unsupported attach version");
                        c.dead = true;
                        break;
                    }
                    c.flags = Some(frame.payload[1]);
                }
                (None, _) => {
                    encode_frame(&mut c.out, kind::ERROR, b"hello expected first");
                    c.dead = true;
                    break;
                }
                (Some(f), kind::STDIN) => {
                    if f & WANT_STDIN != 0 && !c.stdin_done {
                        actions.push(Action::Stdin(frame.payload));
                    }
                }
                (Some(f), kind::CLOSE_STDIN) => {
                    if f & WANT_STDIN != 0 && !c.stdin_done {
                        c.stdin_done = true;
                        actions.push(Action::StdinDone);
                    }
                }
                (Some(_), kind::RESIZE) => {
                    if let [a, b, c2, d, ..] = frame.payload[..] {
                        actions.push(Action::Resize(
                            u16::from_be_bytes([a, b]),
                            u16::from_be_bytes([c2, d]),
                        ));
                    }
                }
                (Some(_), kind::REOPEN_LOG) => actions.push(Action::ReopenLog(i)),
                (Some(_), kind::SIGNAL) => match decode_signal(&frame.payload) {
                    Some(signal) => actions.push(Action::Signal { client: i, signal }),
                    None => encode_frame(&mut c.out, kind::ERROR, b"malformed signal request"),
                },
                (Some(_), _) => {
                    encode_frame(&mut c.out, kind::ERROR, b"unknown frame kind");
                    c.dead = true;
                    break;
                }
            }
        }
        if c.dead && !c.stdin_done && c.flags.is_some_and(|f| f & WANT_STDIN != 0) {
            c.stdin_done = true;
            actions.push(Action::StdinDone);
        }
        self.flush(i);
    }

    /// Answers a request ([`Action::ReopenLog`], [`Action::Signal`]) of client `i`.
    pub fn reply(&mut self, i: usize, result: Result<(), String>) {
        if let Some(c) = self.clients.get_mut(i) {
            match result {
                Ok(()) => encode_frame(&mut c.out, kind::OK, &[]),
                Err(e) => encode_frame(&mut c.out, kind::ERROR, e.as_bytes()),
            }
            self.flush(i);
        }
    }

    /// Sends container output to every client that asked for `stream`.
    pub fn broadcast(&mut self, stream: Stream, data: &[u8]) {
        let (flag, k) = match stream {
            Stream::Stdout => (WANT_STDOUT, kind::STDOUT),
            Stream::Stderr => (WANT_STDERR, kind::STDERR),
        };
        for i in 0..self.clients.len() {
            let c = &mut self.clients[i];
            if c.dead || c.flags.is_none_or(|f| f & flag == 0) {
                continue;
            }
            encode_frame(&mut c.out, k, data);
            self.flush(i);
        }
    }

    /// Writes what is pending for client `i` without blocking; drops it when it fell too far
    /// behind or its socket broke.
    fn flush(&mut self, i: usize) {
        let c = &mut self.clients[i];
        while !c.out.is_empty() {
            // MSG_NOSIGNAL: a client that went away must not SIGPIPE the monitor.
            match send(c.sock.as_raw_fd(), &c.out, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => {
                    c.dead = true;
                    c.out = Vec::new();
                    return;
                }
            }
        }
        if c.out.len() > CLIENT_BACKLOG {
            c.dead = true;
        }
        if c.out.is_empty() && c.out.capacity() > 64 * 1024 {
            c.out = Vec::new();
        }
    }

    /// Drops clients marked dead (after their last frames were tried).
    pub fn sweep(&mut self) {
        self.clients.retain(|c| !c.dead);
    }

    /// The container exited: tells every client, gives them `grace` to take it, closes all.
    pub fn finish(&mut self, exit_code: i32, grace: Duration) {
        for i in 0..self.clients.len() {
            if self.clients[i].flags.is_some() && !self.clients[i].dead {
                encode_frame(
                    &mut self.clients[i].out,
                    kind::EXIT,
                    &exit_code.to_be_bytes(),
                );
                self.flush(i);
            }
        }
        let deadline = Instant::now() + grace;
        loop {
            self.clients.retain(|c| !c.dead && !c.out.is_empty());
            if self.clients.is_empty() {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ready: Vec<bool> = {
                let mut fds: Vec<PollFd<'_>> = self
                    .clients
                    .iter()
                    .map(|c| PollFd::new(c.sock.as_fd(), PollFlags::POLLOUT))
                    .collect();
                let t = PollTimeout::try_from(left.max(Duration::from_millis(1)))
                    .unwrap_or(PollTimeout::MAX);
                if poll(&mut fds, t).is_err() {
                    return;
                }
                fds.iter().map(|f| f.any().unwrap_or(false)).collect()
            };
            for (i, r) in ready.into_iter().enumerate() {
                if r {
                    self.flush(i);
                }
            }
        }
    }

    /// The listener's fd, for tests.
    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}
