//! The monitor's attach socket: wire protocol (shared by both ends) and the daemon-side async
//! client [`AttachClient`] that the streaming server uses for CRI Attach and that
//! ReopenContainerLog uses to reach the monitor.
//!
//! # Where
//!
//! Every container's monitor listens on a `SOCK_STREAM` unix socket at [`socket_path`]`(bundle)`
//! (`<bundle>/attach`) for as long as the container lives. Paths under a runroot can be longer than
//! `sun_path` (108 bytes), so both ends go through `/proc/self/fd/<dir fd>/attach`
//! ([`connect`](AttachClient::connect) does this for you).
//!
//! # Frames
//!
//! Both directions carry frames: `kind: u8`, `len: u32` big-endian, then `len` payload bytes
//! (`len` <= [`MAX_FRAME`]). Unknown kinds are a protocol error (the monitor closes the
//! connection).
//!
//! Client -> monitor:
//!
//! | kind | name | payload |
//! |---|---|---|
//! | `0x01` | `Hello` | 2 bytes: version (`1`), stream flags (bit 0 stdin, bit 1 stdout, bit 2 stderr) |
//! | `0x02` | `Stdin` | bytes for the container's stdin (ignored unless the hello asked for stdin) |
//! | `0x03` | `CloseStdin` | empty: this client's stdin ended. Closes the container's stdin when it was created with `stdin_once`, else only this client stops writing |
//! | `0x04` | `Resize` | 4 bytes: width (columns) u16 BE, height (rows) u16 BE; ignored without a tty |
//! | `0x05` | `ReopenLog` | empty: reopen the CRI log at its path (kubelet renamed it); answered by `Ok` or `Error` |
//!
//! `Hello` must come first. Monitor -> client:
//!
//! | kind | name | payload |
//! |---|---|---|
//! | `0x81` | `Stdout` | output of the container (with a tty: the terminal's output) |
//! | `0x82` | `Stderr` | error output of the container (never with a tty) |
//! | `0x83` | `Exit` | 4 bytes: exit code i32 BE; the container exited, the monitor closes the connection after it |
//! | `0x84` | `Ok` | empty: the last `ReopenLog` was done |
//! | `0x85` | `Error` | UTF-8 message: the last request failed (or the hello was refused, then the connection closes) |
//!
//! Output is fanned out to every connected client that asked for that stream, from the moment it
//! connected (no replay: the log file has the past). A client that does not read falls behind
//! by at most [`CLIENT_BACKLOG`] bytes; beyond that the monitor drops it rather than block the
//! container. Several clients may write stdin; their frames are interleaved whole.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// Protocol version sent in `Hello`.
pub const VERSION: u8 = 1;
/// The largest payload of one frame.
pub const MAX_FRAME: usize = 32 * 1024;
/// How far a client may fall behind the output before the monitor drops it.
pub const CLIENT_BACKLOG: usize = 1024 * 1024;
/// The socket's file name inside the bundle.
pub const SOCKET_NAME: &str = "attach";

/// Frame kinds, client -> monitor.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const STDIN: u8 = 0x02;
    pub const CLOSE_STDIN: u8 = 0x03;
    pub const RESIZE: u8 = 0x04;
    pub const REOPEN_LOG: u8 = 0x05;
    /// Monitor -> client.
    pub const STDOUT: u8 = 0x81;
    pub const STDERR: u8 = 0x82;
    pub const EXIT: u8 = 0x83;
    pub const OK: u8 = 0x84;
    pub const ERROR: u8 = 0x85;
}

/// Hello flag bits.
pub const WANT_STDIN: u8 = 1;
pub const WANT_STDOUT: u8 = 2;
pub const WANT_STDERR: u8 = 4;

/// The attach socket of the container whose bundle is `bundle`.
pub fn socket_path(bundle: &Path) -> PathBuf {
    bundle.join(SOCKET_NAME)
}

/// Appends one frame to `out`. Payloads over [`MAX_FRAME`] are split into several frames of the
/// same kind (only data frames are ever that long).
pub fn encode_frame(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut chunks = payload.chunks(MAX_FRAME);
    let first = chunks.next().unwrap_or(&[]);
    for chunk in std::iter::once(first).chain(chunks) {
        out.push(kind);
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Accumulates bytes from a stream and cuts them into frames.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete frame, if one is buffered; an error for an oversized frame.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, AttachError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(AttachError::Protocol(format!(
                "frame of {len} bytes exceeds {MAX_FRAME}"
            )));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        if self.buf.is_empty() && self.buf.capacity() > 2 * MAX_FRAME {
            self.buf = Vec::new();
        }
        Ok(Some(Frame { kind, payload }))
    }

    /// Bytes buffered that are not a whole frame yet.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Errors of the attach client.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("attach socket {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("attach socket: {0}")]
    Io(#[from] io::Error),
    #[error("attach protocol: {0}")]
    Protocol(String),
    #[error("monitor refused: {0}")]
    Refused(String),
}

/// Which streams an attach client wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttachStreams {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl AttachStreams {
    fn flags(self) -> u8 {
        let bit = |on: bool, flag: u8| if on { flag } else { 0 };
        bit(self.stdin, WANT_STDIN) | bit(self.stdout, WANT_STDOUT) | bit(self.stderr, WANT_STDERR)
    }
}

/// What the monitor sends an attach client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The container exited with this code; no more events follow.
    Exit(i32),
}

/// Connects to a unix socket whose path may exceed `sun_path`, through `/proc/self/fd`.
pub async fn connect_long(path: &Path) -> io::Result<UnixStream> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixStream::connect(path).await;
    };
    if path.as_os_str().len() < 100 {
        return UnixStream::connect(path).await;
    }
    // The directory fd only has to live until connect returns.
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    UnixStream::connect(short).await
}

/// A daemon-side connection to a container's attach socket.
///
/// ```no_run
/// # async fn f(bundle: &std::path::Path) -> Result<(), ferrio::monitor::attach::AttachError> {
/// use ferrio::monitor::attach::{socket_path, AttachClient, AttachEvent, AttachStreams};
/// let streams = AttachStreams { stdin: true, stdout: true, stderr: true };
/// let (mut rx, mut tx) = AttachClient::connect(&socket_path(bundle), streams).await?.split();
/// tx.write_stdin(b"echo hi\n").await?;
/// tx.resize(80, 24).await?;
/// tx.close_stdin().await?;
/// while let Some(ev) = rx.next_event().await? {
///     match ev {
///         AttachEvent::Stdout(b) | AttachEvent::Stderr(b) => { let _ = b; }
///         AttachEvent::Exit(code) => { let _ = code; break }
///     }
/// }
/// # Ok(()) }
/// ```
pub struct AttachClient {
    reader: AttachReader,
    writer: AttachWriter,
}

/// The receiving half: output frames and the exit.
pub struct AttachReader {
    sock: OwnedReadHalf,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    done: bool,
}

/// The sending half: stdin, resize, stdin close.
pub struct AttachWriter {
    sock: OwnedWriteHalf,
    out: Vec<u8>,
}

impl AttachClient {
    /// Connects to the attach socket at `path` and says which streams this client wants.
    pub async fn connect(path: &Path, streams: AttachStreams) -> Result<AttachClient, AttachError> {
        let sock = connect_long(path)
            .await
            .map_err(|source| AttachError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let (r, w) = sock.into_split();
        let mut writer = AttachWriter {
            sock: w,
            out: Vec::new(),
        };
        writer
            .send(kind::HELLO, &[VERSION, streams.flags()])
            .await?;
        Ok(AttachClient {
            reader: AttachReader {
                sock: r,
                decoder: FrameDecoder::default(),
                buf: vec![0; 16 * 1024],
                done: false,
            },
            writer,
        })
    }

    /// The two halves, to read and write concurrently.
    pub fn split(self) -> (AttachReader, AttachWriter) {
        (self.reader, self.writer)
    }

    /// See [`AttachReader::next_event`].
    pub async fn next_event(&mut self) -> Result<Option<AttachEvent>, AttachError> {
        self.reader.next_event().await
    }

    /// See [`AttachWriter::write_stdin`].
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), AttachError> {
        self.writer.write_stdin(data).await
    }

    /// See [`AttachWriter::close_stdin`].
    pub async fn close_stdin(&mut self) -> Result<(), AttachError> {
        self.writer.close_stdin().await
    }

    /// See [`AttachWriter::resize`].
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<(), AttachError> {
        self.writer.resize(width, height).await
    }
}

impl AttachReader {
    /// The next event; `None` once the monitor closed the connection (after `Exit`, or when the
    /// container is gone).
    pub async fn next_event(&mut self) -> Result<Option<AttachEvent>, AttachError> {
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                match f.kind {
                    kind::STDOUT => return Ok(Some(AttachEvent::Stdout(f.payload))),
                    kind::STDERR => return Ok(Some(AttachEvent::Stderr(f.payload))),
                    kind::EXIT => {
                        let code = f
                            .payload
                            .get(..4)
                            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or_else(|| AttachError::Protocol("short exit frame".into()))?;
                        self.done = true;
                        return Ok(Some(AttachEvent::Exit(code)));
                    }
                    kind::OK => continue,
                    kind::ERROR => {
                        return Err(AttachError::Refused(
                            String::from_utf8_lossy(&f.payload).into_owned(),
                        ))
                    }
                    k => return Err(AttachError::Protocol(format!("unknown frame kind {k:#x}"))),
                }
            }
            if self.done {
                return Ok(None);
            }
            let n = self.sock.read(&mut self.buf).await?;
            if n == 0 {
                if self.decoder.pending() > 0 {
                    return Err(AttachError::Protocol("connection closed mid-frame".into()));
                }
                return Ok(None);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

impl AttachWriter {
    async fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), AttachError> {
        self.out.clear();
        encode_frame(&mut self.out, kind, payload);
        self.sock.write_all(&self.out).await?;
        Ok(())
    }

    /// Writes bytes to the container's stdin (the client must have asked for stdin).
    pub async fn write_stdin(&mut self, data: &[u8]) -> Result<(), AttachError> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(kind::STDIN, data).await
    }

    /// This client's stdin ended (closes the container's stdin if it is `stdin_once`).
    pub async fn close_stdin(&mut self) -> Result<(), AttachError> {
        self.send(kind::CLOSE_STDIN, &[]).await
    }

    /// Resizes the container's terminal to `width` columns and `height` rows.
    pub async fn resize(&mut self, width: u16, height: u16) -> Result<(), AttachError> {
        let mut p = [0u8; 4];
        p[..2].copy_from_slice(&width.to_be_bytes());
        p[2..].copy_from_slice(&height.to_be_bytes());
        self.send(kind::RESIZE, &p).await
    }

    /// Half-closes the connection; the monitor then drops this client (after it flushed).
    pub async fn shutdown(&mut self) -> Result<(), AttachError> {
        self.sock.shutdown().await?;
        Ok(())
    }
}

/// Asks the monitor behind `path` to reopen its log file (ReopenContainerLog) and waits for the
/// answer. Output read before the answer went to the old file, everything after to the new one.
pub async fn reopen_log(path: &Path) -> Result<(), AttachError> {
    let client = AttachClient::connect(path, AttachStreams::default()).await?;
    let (mut r, mut w) = client.split();
    w.send(kind::REOPEN_LOG, &[]).await?;
    loop {
        let n = r.sock.read(&mut r.buf).await?;
        if n == 0 {
            return Err(AttachError::Protocol(
                "monitor closed the connection before answering".into(),
            ));
        }
        r.decoder.push(&r.buf[..n]);
        while let Some(f) = r.decoder.next_frame()? {
            match f.kind {
                kind::OK => return Ok(()),
                kind::ERROR => {
                    return Err(AttachError::Refused(
                        String::from_utf8_lossy(&f.payload).into_owned(),
                    ))
                }
                kind::EXIT => return Err(AttachError::Refused("the container has exited".into())),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_decoder_in_any_chunking() {
        let mut out = Vec::new();
        encode_frame(&mut out, kind::HELLO, &[VERSION, WANT_STDOUT]);
        encode_frame(&mut out, kind::STDIN, b"hello");
        encode_frame(&mut out, kind::CLOSE_STDIN, &[]);
        let big = vec![7u8; MAX_FRAME + 10];
        encode_frame(&mut out, kind::STDOUT, &big);
        for chunk in [1usize, 3, 7, 4096] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for c in out.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got.len(), 5, "chunk {chunk}");
            assert_eq!(got[0].payload, vec![VERSION, WANT_STDOUT]);
            assert_eq!(got[1].payload, b"hello");
            assert_eq!((got[2].kind, got[2].payload.len()), (kind::CLOSE_STDIN, 0));
            assert_eq!(got[3].payload.len(), MAX_FRAME);
            assert_eq!((got[4].kind, got[4].payload.len()), (kind::STDOUT, 10));
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut d = FrameDecoder::default();
        d.push(&[kind::STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn stream_flags() {
        let s = AttachStreams {
            stdin: true,
            stdout: false,
            stderr: true,
        };
        assert_eq!(s.flags(), WANT_STDIN | WANT_STDERR);
    }
}
