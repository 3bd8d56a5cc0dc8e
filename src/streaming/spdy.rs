//! SPDY/3.1 framing: frames to and from bytes, and the zlib header-block codec.
//!
//! Pure code: no I/O, no tasks. [`super::session`] drives it over a connection. Only what
//! kubectl's and kubelet's SPDY streams use is modelled; unknown control frames are skipped as
//! the spec asks.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use std::sync::OnceLock;

pub const VERSION: u16 = 3;
/// Last frame of a stream in this direction (DATA, SYN_STREAM, SYN_REPLY, HEADERS).
pub const FLAG_FIN: u8 = 0x01;
/// SYN_STREAM: the receiver must not send on this stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

pub const TYPE_SYN_STREAM: u16 = 1;
pub const TYPE_SYN_REPLY: u16 = 2;
pub const TYPE_RST_STREAM: u16 = 3;
pub const TYPE_SETTINGS: u16 = 4;
pub const TYPE_PING: u16 = 6;
pub const TYPE_GOAWAY: u16 = 7;
pub const TYPE_HEADERS: u16 = 8;
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// RST_STREAM status codes used here.
pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;
pub const RST_FLOW_CONTROL_ERROR: u32 = 7;

/// SETTINGS id of the initial per-stream window.
pub const SETTINGS_INITIAL_WINDOW_SIZE: u32 = 7;
/// Window of every stream and of the session before any SETTINGS (SPDY/3.1).
pub const DEFAULT_WINDOW: i64 = 64 * 1024;

/// A header block larger than this (decompressed) is refused: a zlib bomb stops here.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Frames larger than this are refused before they are buffered.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// Header name/value pairs in the order sent; names are lowercase. A value holding several
/// values separates them with NUL, as SPDY does.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` (case-insensitive).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.split('\0').next().unwrap_or(""))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type this framer does not know; the spec says to ignore it.
    Unknown {
        frame_type: u16,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpdyError {
    #[error("spdy: unsupported version {0}")]
    Version(u16),
    #[error("spdy: frame of {len} bytes is larger than {MAX_FRAME_LEN}")]
    TooLarge { len: usize },
    #[error("spdy: malformed {what} frame")]
    Malformed { what: &'static str },
    #[error("spdy: header block: {0}")]
    HeaderBlock(String),
}

/// The SPDY/3 zlib dictionary (draft 3, section 2.6.10.1): each word with a 4-byte length, then
/// a tail of common values.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &str = "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(TAIL.as_bytes());
        d
    })
}

/// One direction's zlib stream for header blocks: a session compresses every block it sends
/// with one compressor and decompresses every block it receives with one decompressor.
pub struct Codec {
    compress: Compress,
    decompress: Decompress,
}

impl Default for Codec {
    fn default() -> Self {
        Codec::new()
    }
}

impl Codec {
    pub fn new() -> Codec {
        let mut compress = Compress::new(Compression::default(), true);
        // Setting the dictionary on a fresh deflate stream cannot fail.
        let _ = compress.set_dictionary(dictionary());
        Codec {
            compress,
            decompress: Decompress::new(true),
        }
    }

    /// The frame as bytes; header blocks go through this codec's compressor.
    pub fn encode(&mut self, frame: &Frame) -> Result<Vec<u8>, SpdyError> {
        let mut out = Vec::with_capacity(64);
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32((u32::from(*flags) << 24) | (data.len() as u32 & 0xff_ffff));
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let mut body = Vec::new();
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(associated_to & 0x7fff_ffff);
                body.put_u8((priority & 0x7) << 5);
                body.put_u8(0);
                body.extend(self.deflate(headers)?);
                control(&mut out, TYPE_SYN_STREAM, *flags, &body);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            } => {
                let mut body = Vec::new();
                body.put_u32(stream_id & 0x7fff_ffff);
                body.extend(self.deflate(headers)?);
                control(&mut out, TYPE_SYN_REPLY, *flags, &body);
            }
            Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let mut body = Vec::new();
                body.put_u32(stream_id & 0x7fff_ffff);
                body.extend(self.deflate(headers)?);
                control(&mut out, TYPE_HEADERS, *flags, &body);
            }
            Frame::RstStream { stream_id, status } => {
                let mut body = Vec::new();
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(*status);
                control(&mut out, TYPE_RST_STREAM, 0, &body);
            }
            Frame::Settings { flags, entries } => {
                let mut body = Vec::new();
                body.put_u32(entries.len() as u32);
                for e in entries {
                    body.put_u32((u32::from(e.flags) << 24) | (e.id & 0xff_ffff));
                    body.put_u32(e.value);
                }
                control(&mut out, TYPE_SETTINGS, *flags, &body);
            }
            Frame::Ping { id } => control(&mut out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut body = Vec::new();
                body.put_u32(last_good_stream_id & 0x7fff_ffff);
                body.put_u32(*status);
                control(&mut out, TYPE_GOAWAY, 0, &body);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut body = Vec::new();
                body.put_u32(stream_id & 0x7fff_ffff);
                body.put_u32(delta & 0x7fff_ffff);
                control(&mut out, TYPE_WINDOW_UPDATE, 0, &body);
            }
            Frame::Unknown { frame_type } => control(&mut out, *frame_type, 0, &[]),
        }
        Ok(out)
    }

    /// Takes one complete frame off the front of `buf`; `None` until a whole frame is there.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if len > MAX_FRAME_LEN {
            return Err(SpdyError::TooLarge { len });
        }
        if buf.len() < 8 + len {
            return Ok(None);
        }
        let first = buf.get_u32();
        let flags_len = buf.get_u32();
        let flags = (flags_len >> 24) as u8;
        let mut body = buf.split_to(len).freeze();
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                data: body,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let frame_type = (first & 0xffff) as u16;
        let need = |body: &Bytes, n: usize, what: &'static str| {
            if body.len() < n {
                Err(SpdyError::Malformed { what })
            } else {
                Ok(())
            }
        };
        let frame = match frame_type {
            TYPE_SYN_STREAM => {
                need(&body, 10, "SYN_STREAM")?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let associated_to = body.get_u32() & 0x7fff_ffff;
                let priority = body.get_u8() >> 5;
                let _slot = body.get_u8();
                let headers = self.inflate(&body)?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(&body, 4, "SYN_REPLY")?;
                let stream_id = body.get_u32() & 0x7fff_ffff;
                let headers = self.inflate(&body)?;
                if frame_type == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(&body, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    status: body.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(&body, 4, "SETTINGS")?;
                let n = body.get_u32() as usize;
                if body.len() != n.saturating_mul(8) {
                    return Err(SpdyError::Malformed { what: "SETTINGS" });
                }
                let entries = (0..n)
                    .map(|_| {
                        let fid = body.get_u32();
                        Setting {
                            flags: (fid >> 24) as u8,
                            id: fid & 0xff_ffff,
                            value: body.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(&body, 4, "PING")?;
                Frame::Ping { id: body.get_u32() }
            }
            TYPE_GOAWAY => {
                need(&body, 4, "GOAWAY")?;
                let last_good_stream_id = body.get_u32() & 0x7fff_ffff;
                // SPDY/2 peers send no status.
                let status = if body.len() >= 4 { body.get_u32() } else { 0 };
                Frame::GoAway {
                    last_good_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(&body, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: body.get_u32() & 0x7fff_ffff,
                    delta: body.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }

    fn deflate(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut plain = Vec::new();
        plain.put_u32(headers.len() as u32);
        for (n, v) in headers {
            plain.put_u32(n.len() as u32);
            plain.extend_from_slice(n.to_ascii_lowercase().as_bytes());
            plain.put_u32(v.len() as u32);
            plain.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut pos = 0;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(256);
            }
            let before = self.compress.total_in();
            self.compress
                .compress_vec(&plain[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
            pos += (self.compress.total_in() - before) as usize;
            // A sync flush is complete once all input is taken and output room is left over.
            if pos >= plain.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Headers, SpdyError> {
        let err = |m: &str| SpdyError::HeaderBlock(m.to_string());
        let mut plain = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0;
        loop {
            if plain.capacity() - plain.len() < 256 {
                plain.reserve(4096);
            }
            let (in0, out0) = (self.decompress.total_in(), self.decompress.total_out());
            match self
                .decompress
                .decompress_vec(&input[pos..], &mut plain, FlushDecompress::Sync)
            {
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.decompress
                        .set_dictionary(dictionary())
                        .map_err(|e| SpdyError::HeaderBlock(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::HeaderBlock(e.to_string())),
            }
            let took = (self.decompress.total_in() - in0) as usize;
            let made = self.decompress.total_out() - out0;
            pos += took;
            if plain.len() > MAX_HEADER_BLOCK {
                return Err(err("too large"));
            }
            if pos >= input.len() && plain.len() < plain.capacity() {
                break;
            }
            if took == 0 && made == 0 && plain.len() < plain.capacity() && pos >= input.len() {
                break;
            }
        }
        parse_block(&plain)
    }
}

fn control(out: &mut Vec<u8>, frame_type: u16, flags: u8, body: &[u8]) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(frame_type);
    out.put_u32((u32::from(flags) << 24) | (body.len() as u32 & 0xff_ffff));
    out.extend_from_slice(body);
}

fn parse_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::HeaderBlock("truncated name/value block".into());
    let take = |b: &mut &[u8]| -> Result<String, SpdyError> {
        if b.len() < 4 {
            return Err(bad());
        }
        let n = b.get_u32() as usize;
        if b.len() < n {
            return Err(bad());
        }
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        Ok(s)
    };
    if b.len() < 4 {
        return Err(bad());
    }
    let count = b.get_u32() as usize;
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        headers.push((name.to_ascii_lowercase(), value));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            frames.push(f);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        frames
    }

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
    }

    #[test]
    fn data_frame_by_hand() {
        // Data frame: C=0, stream 3, FLAG_FIN, length 5, "hello" (draft 3, 2.2.2).
        let bytes = [0, 0, 0, 3, 0x01, 0, 0, 5, b'h', b'e', b'l', b'l', b'o'];
        let mut c = Codec::new();
        let frames = decode_all(&mut c, &bytes);
        assert_eq!(
            frames,
            vec![Frame::Data {
                stream_id: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello")
            }]
        );
        assert_eq!(c.encode(&frames[0]).unwrap(), bytes);
    }

    #[test]
    fn control_frames_by_hand() {
        let mut bytes = Vec::new();
        // RST_STREAM stream 5 CANCEL
        bytes.extend([0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5]);
        // SETTINGS: 1 entry, flags 0, id 7 (initial window), value 0x20000
        bytes.extend([
            0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 7, 0, 2, 0, 0,
        ]);
        // PING id 1
        bytes.extend([0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]);
        // GOAWAY last good 7, status OK
        bytes.extend([0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 0]);
        // WINDOW_UPDATE stream 1 delta 1000
        bytes.extend([0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0x03, 0xe8]);
        // An unknown control type (CREDENTIAL, 10) is skipped.
        bytes.extend([0x80, 3, 0, 10, 0, 0, 0, 2, 0xaa, 0xbb]);
        let mut c = Codec::new();
        let frames = decode_all(&mut c, &bytes);
        assert_eq!(
            frames,
            vec![
                Frame::RstStream {
                    stream_id: 5,
                    status: RST_CANCEL
                },
                Frame::Settings {
                    flags: 0,
                    entries: vec![Setting {
                        flags: 0,
                        id: SETTINGS_INITIAL_WINDOW_SIZE,
                        value: 0x20000
                    }]
                },
                Frame::Ping { id: 1 },
                Frame::GoAway {
                    last_good_stream_id: 7,
                    status: 0
                },
                Frame::WindowUpdate {
                    stream_id: 1,
                    delta: 1000
                },
                Frame::Unknown { frame_type: 10 },
            ]
        );
        // Everything but the unknown frame encodes back to the same bytes.
        let mut enc = Vec::new();
        for f in &frames[..5] {
            enc.extend(c.encode(f).unwrap());
        }
        assert_eq!(enc, bytes[..bytes.len() - 10]);
    }

    /// A SYN_STREAM whose header block was compressed by an independent zlib with the
    /// dictionary (the reference implementation's way), decoded with our decompressor.
    #[test]
    fn syn_stream_with_dictionary_compressed_block() {
        let mut block = Vec::new();
        block.put_u32(2);
        for s in ["streamtype", "error", "port", "8080"] {
            block.put_u32(s.len() as u32);
            block.extend_from_slice(s.as_bytes());
        }
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(dictionary()).unwrap();
        let mut zout = Vec::with_capacity(256);
        z.compress_vec(&block, &mut zout, FlushCompress::Sync)
            .unwrap();
        // zlib header with FDICT set and the dictionary's adler32 follows (RFC 1950).
        assert_eq!(zout[1] & 0x20, 0x20, "FDICT flag");
        let mut frame = Vec::new();
        frame.extend([0x80, 3, 0, 1, FLAG_FIN]);
        let len = 10 + zout.len();
        frame.extend(&(len as u32).to_be_bytes()[1..]);
        frame.extend([0, 0, 0, 1, 0, 0, 0, 0, 0x60, 0]);
        frame.extend(&zout);
        let mut c = Codec::new();
        let frames = decode_all(&mut c, &frame);
        assert_eq!(
            frames,
            vec![Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 3,
                flags: FLAG_FIN,
                headers: vec![
                    ("streamtype".into(), "error".into()),
                    ("port".into(), "8080".into())
                ]
            }]
        );
    }

    #[test]
    fn header_blocks_share_one_zlib_stream_per_direction() {
        let mut tx = Codec::new();
        let mut rx = Codec::new();
        let mut wire = Vec::new();
        for id in [1u32, 3, 5] {
            wire.extend(
                tx.encode(&Frame::SynStream {
                    stream_id: id,
                    associated_to: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![
                        ("streamtype".into(), "stdout".into()),
                        ("x-multi".into(), "a\0b".into()),
                    ],
                })
                .unwrap(),
            );
            wire.extend(
                tx.encode(&Frame::SynReply {
                    stream_id: id,
                    flags: 0,
                    headers: vec![],
                })
                .unwrap(),
            );
        }
        // Fed a byte at a time: partial frames wait for the rest.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for b in wire {
            buf.put_u8(b);
            while let Some(f) = rx.decode(&mut buf).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 6);
        match &frames[4] {
            Frame::SynStream {
                stream_id, headers, ..
            } => {
                assert_eq!(*stream_id, 5);
                assert_eq!(header(headers, "StreamType"), Some("stdout"));
                assert_eq!(header(headers, "x-multi"), Some("a"));
            }
            f => panic!("unexpected {f:?}"),
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let mut c = Codec::new();
        // version 2
        let mut buf = BytesMut::from(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(c.decode(&mut buf), Err(SpdyError::Version(2)));
        // oversized
        let mut buf = BytesMut::from(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(SpdyError::TooLarge { .. })
        ));
        // truncated RST
        let mut buf = BytesMut::from(&[0x80, 3, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert!(matches!(
            c.decode(&mut buf),
            Err(SpdyError::Malformed { .. })
        ));
        // garbage header block
        let mut buf = BytesMut::from(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(matches!(c.decode(&mut buf), Err(SpdyError::HeaderBlock(_))));
    }
}
