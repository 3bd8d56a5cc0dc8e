//! The monitor's attach socket: the wire protocol both ends share. The monitor's side is
//! [`crate::attach_server`]; the daemon's async client lives in the daemon (`ferrio::monitor::attach`).
//!
//! # Where
//!
//! Every container's monitor listens on a `SOCK_STREAM` unix socket at [`socket_path`]`(bundle)`
//! (`<bundle>/attach`) for as long as the container lives. Paths under a runroot can be longer than
//! `sun_path` (108 bytes), so both ends go through `/proc/self/fd/<dir fd>/attach`
//! (the daemon's client and [`crate::attach_server::bind_long`] do this).
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
//! | `0x06` | `Signal` | 4 bytes: signal number i32 BE; send it to the container's init with kill(2); answered by `Ok` or `Error` |
//!
//! `Hello` must come first. Monitor -> client:
//!
//! | kind | name | payload |
//! |---|---|---|
//! | `0x81` | `Stdout` | output of the container (with a tty: the terminal's output) |
//! | `0x82` | `Stderr` | error output of the container (never with a tty) |
//! | `0x83` | `Exit` | 4 bytes: exit code i32 BE; the container exited, the monitor closes the connection after it |
//! | `0x84` | `Ok` | empty: the last `ReopenLog` or `Signal` was done |
//! | `0x85` | `Error` | UTF-8 message: the last request failed (or the hello was refused, or the frame kind is unknown: then the connection closes) |
//!
//! `Signal` is how StopContainer delivers the stop signal without a runtime process: the init
//! is the monitor's own child (the monitor is a child subreaper), so until the monitor reaps it
//! its pid cannot be reused, and kill(2) by pid reaches exactly that process. The monitor
//! answers `Error` when there is no such process: the runtime's create has not finished, or the
//! init was already reaped. A monitor that predates the request answers `Error` (unknown frame
//! kind) too; either way the daemon falls back to `<runtime> kill`.
//!
//! Output is fanned out to every connected client that asked for that stream, from the moment it
//! connected (no replay: the log file has the past). A client that does not read falls behind
//! by at most [`CLIENT_BACKLOG`] bytes; beyond that the monitor drops it rather than block the
//! container. Several clients may write stdin; their frames are interleaved whole.

use std::path::{Path, PathBuf};

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
    pub const SIGNAL: u8 = 0x06;
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

/// The payload of a `Signal` frame.
pub fn encode_signal(signal: i32) -> [u8; 4] {
    signal.to_be_bytes()
}

/// The signal number of a `Signal` frame's payload; `None` when it is not 4 bytes.
pub fn decode_signal(payload: &[u8]) -> Option<i32> {
    let b: [u8; 4] = payload.try_into().ok()?;
    Some(i32::from_be_bytes(b))
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// A frame header announced more than [`MAX_FRAME`] payload bytes: the peer does not speak this
/// protocol, and the connection ends.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("frame of {0} bytes exceeds {MAX_FRAME}")]
pub struct OversizedFrame(pub usize);

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
    pub fn next_frame(&mut self) -> Result<Option<Frame>, OversizedFrame> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_FRAME {
            return Err(OversizedFrame(len));
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
    fn a_signal_request_round_trips() {
        let mut out = Vec::new();
        for sig in [libc::SIGTERM, libc::SIGKILL, libc::SIGRTMIN() + 3] {
            encode_frame(&mut out, kind::SIGNAL, &encode_signal(sig));
        }
        let mut d = FrameDecoder::default();
        d.push(&out);
        for sig in [libc::SIGTERM, libc::SIGKILL, libc::SIGRTMIN() + 3] {
            let f = d.next_frame().unwrap().unwrap();
            assert_eq!(f.kind, kind::SIGNAL);
            assert_eq!(decode_signal(&f.payload), Some(sig));
        }
        assert_eq!(d.pending(), 0);
        assert_eq!(decode_signal(&[0, 0, 15]), None);
        assert_eq!(decode_signal(&[0, 0, 0, 15, 0]), None);
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut d = FrameDecoder::default();
        d.push(&[kind::STDIN, 0xff, 0xff, 0xff, 0xff]);
        assert!(d.next_frame().is_err());
    }
}
