//! Serves gRPC clients whatever `:authority` they send over the unix socket.
//!
//! Clients built on grpc-core (Python grpcio, C++, Ruby, ...) send the percent-encoded socket path as the
//! HTTP/2 `:authority` (`run%2Fferrio%2Fferrio.sock`); Java and Swift clients send the bare path. h2, under
//! hyper and tonic, refuses such a value while it decodes the request's headers and resets the stream with
//! PROTOCOL_ERROR before any service code runs, so no tower layer can help. On a unix socket the authority
//! means nothing to ferrio, so [`AuthorityFix`] rewrites it below h2, in the bytes the client sends: every
//! header block is decoded (HPACK, keeping the client's compression context), an authority h2 would refuse
//! becomes `localhost`, and the block is encoded again without compression context (literals that are
//! never indexed), so h2's decoder stays in step. Every other frame passes unchanged, and the server's
//! replies are never touched.

use bytes::{Buf, BufMut, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http;

/// The client connection preface of HTTP/2 with prior knowledge, as gRPC clients open a connection.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's floor); rewritten blocks are cut
/// into frames no larger.
const MAX_FRAME: usize = 16_384;
/// What an authority h2 refuses is replaced with.
const LOCAL_AUTHORITY: &[u8] = b"localhost";

enum Mode {
    /// Waiting for the first bytes: an HTTP/2 preface, or anything else.
    Preface,
    /// HTTP/2 frames, header blocks rewritten.
    Frames,
    /// Not HTTP/2 with prior knowledge: bytes pass unchanged, and the server answers what it makes of them.
    Passthrough,
}

/// A header block split over HEADERS and CONTINUATION frames, until its END_HEADERS.
struct PendingBlock {
    stream_id: u32,
    /// The HEADERS frame's END_STREAM and PRIORITY flags.
    flags: u8,
    /// Stream dependency and weight, when PRIORITY is set.
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// A client connection whose header blocks are rewritten on their way to the server, see the module doc.
pub struct AuthorityFix<S> {
    inner: S,
    mode: Mode,
    /// Bytes read from the client, not yet a whole frame.
    raw: BytesMut,
    /// Bytes for the server.
    ready: BytesMut,
    pending: Option<PendingBlock>,
    decoder: fluke_hpack::Decoder<'static>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> Self {
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::new(),
            ready: BytesMut::new(),
            pending: None,
            decoder: fluke_hpack::Decoder::new(),
            eof: false,
        }
    }

    /// Moves what `raw` holds of whole units (the preface, frames, header blocks) to `ready`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.raw.split();
                    self.ready.extend_from_slice(&all);
                    return Ok(());
                }
                Mode::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                    } else if n == PREFACE.len() {
                        let preface = self.raw.split_to(n);
                        self.ready.extend_from_slice(&preface);
                        self.mode = Mode::Frames;
                    } else {
                        return Ok(());
                    }
                }
                Mode::Frames => {
                    if self.raw.len() < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    let len = (usize::from(self.raw[0]) << 16)
                        | (usize::from(self.raw[1]) << 8)
                        | usize::from(self.raw[2]);
                    if self.raw.len() < FRAME_HEADER_LEN + len {
                        return Ok(());
                    }
                    let frame = self.raw.split_to(FRAME_HEADER_LEN + len);
                    self.frame(&frame)?;
                }
            }
        }
    }

    /// One whole frame from the client.
    fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let (kind, flags) = (frame[3], frame[4]);
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[FRAME_HEADER_LEN..];
        match kind {
            HEADERS => {
                if self.pending.is_some() {
                    return Err(protocol("HEADERS while a header block is open"));
                }
                let mut body = payload;
                let pad = if flags & PADDED != 0 {
                    let (&n, rest) = body
                        .split_first()
                        .ok_or_else(|| protocol("PADDED HEADERS without a pad length"))?;
                    body = rest;
                    usize::from(n)
                } else {
                    0
                };
                let priority = if flags & PRIORITY != 0 {
                    let p: [u8; 5] = body
                        .get(..5)
                        .and_then(|p| p.try_into().ok())
                        .ok_or_else(|| protocol("PRIORITY HEADERS too short"))?;
                    body = &body[5..];
                    Some(p)
                } else {
                    None
                };
                let block = body
                    .get(
                        ..body
                            .len()
                            .checked_sub(pad)
                            .ok_or_else(|| protocol("padding too long"))?,
                    )
                    .unwrap_or_default();
                self.pending = Some(PendingBlock {
                    stream_id,
                    flags: flags & (END_STREAM | PRIORITY),
                    priority,
                    block: block.to_vec(),
                });
            }
            CONTINUATION => match self.pending.as_mut() {
                Some(p) if p.stream_id == stream_id => p.block.extend_from_slice(payload),
                _ => return Err(protocol("CONTINUATION without its HEADERS")),
            },
            _ => {
                if self.pending.is_some() {
                    return Err(protocol("a frame inside a header block"));
                }
                self.ready.extend_from_slice(frame);
                return Ok(());
            }
        }
        if flags & END_HEADERS != 0 {
            if let Some(p) = self.pending.take() {
                self.rewrite(p)?;
            }
        }
        Ok(())
    }

    /// Decodes a whole header block, fixes its authority and writes it out as frames for the server.
    fn rewrite(&mut self, p: PendingBlock) -> io::Result<()> {
        let headers = self
            .decoder
            .decode(&p.block)
            .map_err(|e| protocol(&format!("undecodable header block: {e:?}")))?;
        let mut block = Vec::with_capacity(p.block.len() + 16);
        for (name, value) in &headers {
            let value: &[u8] = if name == b":authority" && !acceptable_authority(value) {
                LOCAL_AUTHORITY
            } else {
                value
            };
            encode_literal(name, value, &mut block);
        }
        let priority = p.priority.as_ref().map(|p| &p[..]).unwrap_or_default();
        let first_room = MAX_FRAME - priority.len();
        let (first, rest) = block.split_at(block.len().min(first_room));
        let chunks: Vec<&[u8]> = std::iter::once(first)
            .chain(rest.chunks(MAX_FRAME))
            .collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let (kind, mut flags, prefix) = if i == 0 {
                (HEADERS, p.flags, priority)
            } else {
                (CONTINUATION, 0, &[][..])
            };
            if last {
                flags |= END_HEADERS;
            }
            let len = prefix.len() + chunk.len();
            self.ready.put_uint(len as u64, 3);
            self.ready.put_u8(kind);
            self.ready.put_u8(flags);
            self.ready.put_u32(p.stream_id);
            self.ready.extend_from_slice(prefix);
            self.ready.extend_from_slice(chunk);
        }
        Ok(())
    }
}

/// Whether h2 takes `value` as an `:authority`.
fn acceptable_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A header as an HPACK "literal header field never indexed" with a literal name: no Huffman coding and
/// no change to the decoder's dynamic table.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x10);
    for s in [name, value] {
        encode_integer(s.len(), 7, out);
        out.extend_from_slice(s);
    }
}

/// HPACK integer with an `prefix`-bit prefix (RFC 7541 5.1); the prefix's high bits are left 0.
fn encode_integer(mut n: usize, prefix: u8, out: &mut Vec<u8>) {
    let max = (1usize << prefix) - 1;
    if n < max {
        out.push(n as u8);
        return;
    }
    out.push(max as u8);
    n -= max;
    while n >= 128 {
        out.push((n % 128 + 128) as u8);
        n /= 128;
    }
    out.push(n as u8);
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("http/2 from client: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // The client is gone: the server sees what was left, cut short as it came.
                this.eof = true;
                let rest = this.raw.split();
                this.ready.extend_from_slice(&rest);
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.process()?;
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream_id.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Runs `input` through the rewriter in pieces of `step` bytes.
    fn rewritten(input: &[u8], step: usize) -> Vec<u8> {
        let mut fix = AuthorityFix::new(());
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            fix.raw.extend_from_slice(piece);
            fix.process().unwrap();
            out.extend_from_slice(&fix.ready.split());
        }
        assert!(fix.raw.is_empty() && fix.pending.is_none());
        out
    }

    /// The frames of `bytes` after the preface: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert_eq!(&bytes[..PREFACE.len()], PREFACE);
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
            let sid = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], sid, bytes[9..9 + len].to_vec()));
            bytes = &bytes[9 + len..];
        }
        out
    }

    fn request_headers(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/runtime.v1.RuntimeService/Version".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
        ]
    }

    #[test]
    fn a_refused_authority_becomes_localhost_and_the_rest_is_kept() {
        // A client encoder with a dynamic table, as grpc-core's: the second request refers to entries
        // the first one added.
        let mut client = fluke_hpack::Encoder::new();
        let encode = |c: &mut fluke_hpack::Encoder, h: &[(&'static [u8], Vec<u8>)]| {
            c.encode(h.iter().map(|(n, v)| (*n, v.as_slice())))
        };
        let bad = request_headers(b"run%2Fferrio%2Fferrio.sock");
        let good = request_headers(b"localhost:1234");
        let first = encode(&mut client, &bad);
        let second = encode(&mut client, &bad);
        let third = encode(&mut client, &good);
        assert!(second.len() < first.len(), "the client indexes");

        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, b"\0\0\0\0\0")); // DATA
                                                                // Padded, with priority, and split over a CONTINUATION.
        let (a, b) = second.split_at(3);
        let mut payload = vec![2u8];
        payload.extend_from_slice(&[0, 0, 0, 1, 15]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));

        for step in [1, 7, input.len()] {
            let out = frames(&rewritten(&input, step));
            assert_eq!(out.len(), 5, "{out:?}");
            assert_eq!(out[0], (0x4, 0, 0, vec![]));
            assert_eq!(out[2], (0x0, END_STREAM, 1, b"\0\0\0\0\0".to_vec()));
            assert_eq!(out[3].0, HEADERS);
            assert_eq!(out[3].1, PRIORITY | END_STREAM | END_HEADERS);
            assert_eq!(&out[3].3[..5], &[0, 0, 0, 1, 15]);
            // The server's side of the compression context.
            let mut server = fluke_hpack::Decoder::new();
            let mut expect = |payload: &[u8], want: &[(&'static [u8], Vec<u8>)]| {
                let got = server.decode(payload).unwrap();
                let want: Vec<(Vec<u8>, Vec<u8>)> =
                    want.iter().map(|(n, v)| (n.to_vec(), v.clone())).collect();
                assert_eq!(got, want);
            };
            let fixed = request_headers(b"localhost");
            expect(&out[1].3, &fixed);
            expect(&out[3].3[5..], &fixed);
            expect(&out[4].3, &good);
        }
    }

    #[test]
    fn a_large_block_is_cut_into_frames_the_server_takes() {
        let mut client = fluke_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let headers: [(&[u8], &[u8]); 2] = [(b":authority", b"/run/ferrio.sock"), (b"x-big", &big)];
        let block = client.encode(headers.iter().copied());
        let mut input = PREFACE.to_vec();
        let (a, b) = block.split_at(MAX_FRAME);
        input.extend(frame(HEADERS, 0, 1, a));
        let (b, c) = b.split_at(MAX_FRAME);
        input.extend(frame(CONTINUATION, 0, 1, b));
        input.extend(frame(CONTINUATION, END_HEADERS, 1, c));
        let out = frames(&rewritten(&input, 4096));
        assert!(out.len() >= 3);
        let mut joined = Vec::new();
        for (i, (kind, flags, sid, payload)) in out.iter().enumerate() {
            assert!(payload.len() <= MAX_FRAME);
            assert_eq!(*sid, 1);
            assert_eq!(*kind, if i == 0 { HEADERS } else { CONTINUATION });
            assert_eq!(*flags & END_HEADERS != 0, i + 1 == out.len());
            joined.extend_from_slice(payload);
        }
        let got = fluke_hpack::Decoder::new().decode(&joined).unwrap();
        assert_eq!(got[0], (b":authority".to_vec(), b"localhost".to_vec()));
        assert_eq!(got[1].1, big);
    }

    #[test]
    fn other_protocols_pass_unchanged_and_bad_frames_are_refused() {
        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(rewritten(http1, 3), http1);

        let mut fix = AuthorityFix::new(());
        fix.raw.extend_from_slice(PREFACE);
        fix.raw.extend(frame(HEADERS, 0, 1, &[0x82]));
        fix.raw.extend(frame(0x0, 0, 1, b"x"));
        assert!(fix.process().is_err(), "DATA inside a header block");
    }

    #[test]
    fn integers_use_the_continuation_bytes_of_rfc_7541() {
        let enc = |n| {
            let mut v = Vec::new();
            encode_integer(n, 7, &mut v);
            v
        };
        assert_eq!(enc(10), [10]);
        assert_eq!(enc(126), [126]);
        assert_eq!(enc(127), [127, 0]);
        assert_eq!(enc(1337), [127, 186, 9]);
    }
}
