//! NRI's two framings, pure: the multiplexer's (one socket carrying several logical connections) and ttrpc's
//! (requests and responses on one logical connection). No I/O here, so both are unit-tested byte for byte.
//!
//! Multiplexer frame: `conn id: u32 BE | payload length: u32 BE | payload`. A logical connection is a byte
//! stream: a receiver concatenates the payloads of one id and must not assume a frame holds whole messages.
//! Frames we send carry at most [`MAX_MUX_FRAME`] bytes of payload, because the Go side reads each frame with a
//! single `Read` into a buffer of its bufio reader's size (4096 bytes) and fails on a larger frame.
//!
//! ttrpc message: `length: u32 BE | stream id: u32 BE | type: u8 | flags: u8 | payload`, the payload a protobuf
//! `ttrpc.Request` or `ttrpc.Response`. A client numbers its streams with odd ids.

use bytes::{Buf, BufMut, BytesMut};

/// The logical connection on which the plugin serves its `Plugin` service (the runtime is the client).
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// The logical connection on which the runtime serves its `Runtime` service (the plugin is the client).
pub const RUNTIME_SERVICE_CONN: u32 = 2;

pub const MUX_HEADER_LEN: usize = 8;
/// Largest payload of one multiplexer frame we write (see the module doc).
pub const MAX_MUX_FRAME: usize = 4096;
/// Largest payload a multiplexer frame may announce: one whole ttrpc message.
pub const MAX_MUX_PAYLOAD: usize = TTRPC_HEADER_LEN + MAX_TTRPC_MESSAGE;

pub const TTRPC_HEADER_LEN: usize = 10;
/// ttrpc's limit on one message's payload.
pub const MAX_TTRPC_MESSAGE: usize = 4 << 20;

/// The kind of a ttrpc message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Request,
    Response,
    Data,
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            MessageType::Request => 1,
            MessageType::Response => 2,
            MessageType::Data => 3,
        }
    }

    fn from_code(code: u8) -> Option<MessageType> {
        match code {
            1 => Some(MessageType::Request),
            2 => Some(MessageType::Response),
            3 => Some(MessageType::Data),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("multiplexer frame of {0} bytes exceeds the limit")]
    MuxFrameTooLarge(usize),
    #[error("ttrpc message of {0} bytes exceeds the limit")]
    MessageTooLarge(usize),
    #[error("unknown ttrpc message type {0}")]
    UnknownType(u8),
}

/// One ttrpc message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub stream_id: u32,
    pub kind: MessageType,
    pub flags: u8,
    pub payload: Vec<u8>,
}

/// `payload` of logical connection `conn` as multiplexer frames, split so no frame exceeds [`MAX_MUX_FRAME`].
pub fn mux_frames(conn: u32, payload: &[u8]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(payload.len() + MUX_HEADER_LEN * (payload.len() / MAX_MUX_FRAME + 1));
    for chunk in payload.chunks(MAX_MUX_FRAME) {
        out.put_u32(conn);
        out.put_u32(chunk.len() as u32);
        out.extend_from_slice(chunk);
    }
    out
}

/// The connection id and payload length of a multiplexer frame header.
pub fn mux_header(header: [u8; MUX_HEADER_LEN]) -> Result<(u32, usize), FrameError> {
    let conn = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_MUX_PAYLOAD {
        return Err(FrameError::MuxFrameTooLarge(len));
    }
    Ok((conn, len))
}

/// `message` in ttrpc's framing.
pub fn encode_message(message: &Message) -> Result<Vec<u8>, FrameError> {
    if message.payload.len() > MAX_TTRPC_MESSAGE {
        return Err(FrameError::MessageTooLarge(message.payload.len()));
    }
    let mut out = Vec::with_capacity(TTRPC_HEADER_LEN + message.payload.len());
    out.put_u32(message.payload.len() as u32);
    out.put_u32(message.stream_id);
    out.put_u8(message.kind.code());
    out.put_u8(message.flags);
    out.extend_from_slice(&message.payload);
    Ok(out)
}

/// Reassembles ttrpc messages from the byte stream of one logical connection.
#[derive(Debug, Default)]
pub struct MessageReader {
    buf: BytesMut,
}

impl MessageReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, if the bytes pushed so far hold one.
    pub fn next_message(&mut self) -> Result<Option<Message>, FrameError> {
        if self.buf.len() < TTRPC_HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_TTRPC_MESSAGE {
            return Err(FrameError::MessageTooLarge(len));
        }
        let kind =
            MessageType::from_code(self.buf[8]).ok_or(FrameError::UnknownType(self.buf[8]))?;
        if self.buf.len() < TTRPC_HEADER_LEN + len {
            return Ok(None);
        }
        let mut header = self.buf.split_to(TTRPC_HEADER_LEN);
        header.advance(4);
        let stream_id = header.get_u32();
        header.advance(1);
        let flags = header.get_u8();
        let payload = self.buf.split_to(len).to_vec();
        Ok(Some(Message {
            stream_id,
            kind,
            flags,
            payload,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mux_frame_carries_conn_id_and_length_big_endian() {
        let frames = mux_frames(2, b"abc");
        assert_eq!(frames, [0, 0, 0, 2, 0, 0, 0, 3, b'a', b'b', b'c']);
        let header: [u8; 8] = frames[..8].try_into().unwrap();
        assert_eq!(mux_header(header).unwrap(), (2, 3));
    }

    #[test]
    fn mux_splits_large_payloads_into_bounded_frames() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let frames = mux_frames(1, &payload);
        let mut rest = &frames[..];
        let mut joined = Vec::new();
        let mut count = 0;
        while !rest.is_empty() {
            let (conn, len) = mux_header(rest[..8].try_into().unwrap()).unwrap();
            assert_eq!(conn, 1);
            assert!(len <= MAX_MUX_FRAME);
            joined.extend_from_slice(&rest[8..8 + len]);
            rest = &rest[8 + len..];
            count += 1;
        }
        assert_eq!(count, 3);
        assert_eq!(joined, payload);
    }

    #[test]
    fn mux_refuses_oversized_frame_header() {
        let mut header = [0u8; 8];
        header[4..].copy_from_slice(&((MAX_MUX_PAYLOAD + 1) as u32).to_be_bytes());
        assert_eq!(
            mux_header(header),
            Err(FrameError::MuxFrameTooLarge(MAX_MUX_PAYLOAD + 1))
        );
    }

    #[test]
    fn ttrpc_header_layout_matches_the_wire() {
        let bytes = encode_message(&Message {
            stream_id: 3,
            kind: MessageType::Response,
            flags: 0,
            payload: b"xy".to_vec(),
        })
        .unwrap();
        assert_eq!(bytes, [0, 0, 0, 2, 0, 0, 0, 3, 2, 0, b'x', b'y']);
    }

    #[test]
    fn reader_reassembles_messages_split_and_joined_arbitrarily() {
        let a = Message {
            stream_id: 1,
            kind: MessageType::Request,
            flags: 0,
            payload: vec![7; 5000],
        };
        let b = Message {
            stream_id: 3,
            kind: MessageType::Request,
            flags: 0,
            payload: Vec::new(),
        };
        let mut stream = encode_message(&a).unwrap();
        stream.extend(encode_message(&b).unwrap());
        let mut reader = MessageReader::default();
        let mut got = Vec::new();
        for piece in stream.chunks(7) {
            reader.push(piece);
            while let Some(m) = reader.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![a, b]);
        assert_eq!(reader.next_message().unwrap(), None);
    }

    #[test]
    fn reader_refuses_unknown_type_and_oversized_length() {
        let mut reader = MessageReader::default();
        reader.push(&[0, 0, 0, 0, 0, 0, 0, 1, 9, 0]);
        assert_eq!(reader.next_message(), Err(FrameError::UnknownType(9)));
        let mut reader = MessageReader::default();
        reader.push(&[0xff, 0, 0, 0, 0, 0, 0, 1, 1, 0]);
        assert!(matches!(
            reader.next_message(),
            Err(FrameError::MessageTooLarge(_))
        ));
    }
}
