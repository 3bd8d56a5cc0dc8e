//! The daemon-side async client of the monitor's attach socket: the streaming server uses it for
//! CRI Attach, ReopenContainerLog uses it to reach the monitor, and StopContainer to have the
//! monitor signal the container's init. The wire protocol (frames,
//! kinds, where the socket is) is `ferrio_monitor::attach`, re-exported here.

use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

pub use ferrio_monitor::attach::*;

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

impl From<OversizedFrame> for AttachError {
    fn from(e: OversizedFrame) -> Self {
        AttachError::Protocol(e.to_string())
    }
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
    request(path, kind::REOPEN_LOG, &[]).await
}

/// Asks the monitor behind `path` to send `signal` to the container's init and waits for the
/// answer: `Ok` once kill(2) succeeded; [`AttachError::Refused`] when the monitor has no init to
/// signal (not created yet, already exited) or does not know the request (an older monitor).
pub async fn signal(path: &Path, signal: i32) -> Result<(), AttachError> {
    request(path, kind::SIGNAL, &encode_signal(signal)).await
}

/// One request on a connection of its own (no streams), and the monitor's `Ok` or `Error`.
async fn request(path: &Path, request: u8, payload: &[u8]) -> Result<(), AttachError> {
    let client = AttachClient::connect(path, AttachStreams::default()).await?;
    let (mut r, mut w) = client.split();
    w.send(request, payload).await?;
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
    fn stream_flags() {
        let s = AttachStreams {
            stdin: true,
            stdout: false,
            stderr: true,
        };
        assert_eq!(s.flags(), WANT_STDIN | WANT_STDERR);
    }
}
