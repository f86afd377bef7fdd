//! ttRPC frames (containerd/ttrpc protocol 1.2; PROTOCOL.md §1.1-§1.3): a 10-byte
//! big-endian header `[u32 body length][u32 stream id][u8 type][u8 flags]` followed by the
//! body.
//!
//! [`encode`] builds one frame and refuses bodies over [`MAX_BODY_LEN`] (the Go sender does
//! the same, locally, with RESOURCE_EXHAUSTED). [`FrameDecoder`] reassembles frames from a
//! byte stream delivered in arbitrary pieces. It is total: every byte sequence is either a
//! frame, an [`Decoded::Oversize`] notice (a header announcing more than 4 MiB, whose body is
//! then discarded without being buffered, so the connection survives it), or an incomplete
//! prefix. It never fails and never panics, whatever the input.

use thiserror::Error;

/// Length of a frame header.
pub const HEADER_LEN: usize = 10;

/// Largest body accepted or sent: 4 MiB (`4 << 20`), as in Go ttRPC.
pub const MAX_BODY_LEN: usize = 4 << 20;

/// Flag on a Request or Data frame: the sender will send no more data on this stream.
pub const FLAG_REMOTE_CLOSED: u8 = 0x01;
/// Flag on a Request frame: the client will stream data (non-unary call).
pub const FLAG_REMOTE_OPEN: u8 = 0x02;
/// Flag on a Data frame: the frame carries no payload.
pub const FLAG_NO_DATA: u8 = 0x04;

/// The type of a frame (header byte 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// 0x01: a `ttrpc.Request`; opens a stream.
    Request,
    /// 0x02: a `ttrpc.Response`; closes the stream.
    Response,
    /// 0x03: raw stream data (streaming calls; never used by NRI).
    Data,
    /// Any other value, kept so that it can be reported.
    Other(u8),
}

impl MessageType {
    /// The type for a header byte.
    pub fn from_byte(byte: u8) -> Self {
        match byte {
            1 => Self::Request,
            2 => Self::Response,
            3 => Self::Data,
            other => Self::Other(other),
        }
    }

    /// The header byte of this type.
    pub fn to_byte(self) -> u8 {
        match self {
            Self::Request => 1,
            Self::Response => 2,
            Self::Data => 3,
            Self::Other(other) => other,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the body (header excluded).
    pub length: u32,
    /// The stream id (odd for client-initiated streams).
    pub stream_id: u32,
    /// The frame type.
    pub kind: MessageType,
    /// Type-specific flags.
    pub flags: u8,
}

impl FrameHeader {
    /// Parses the 10 header bytes.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Self {
        Self {
            length: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            stream_id: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            kind: MessageType::from_byte(bytes[8]),
            flags: bytes[9],
        }
    }

    /// The 10 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0; HEADER_LEN];
        out[0..4].copy_from_slice(&self.length.to_be_bytes());
        out[4..8].copy_from_slice(&self.stream_id.to_be_bytes());
        out[8] = self.kind.to_byte();
        out[9] = self.flags;
        out
    }
}

/// A complete frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The stream id.
    pub stream_id: u32,
    /// The frame type.
    pub kind: MessageType,
    /// The flags.
    pub flags: u8,
    /// The body (a protobuf `Request` or `Response` for types 1 and 2).
    pub body: Vec<u8>,
}

/// A frame that cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    /// The body is larger than [`MAX_BODY_LEN`].
    #[error(
        "ttRPC message on stream {stream_id} is {length} bytes long, over the {MAX_BODY_LEN}-byte limit"
    )]
    Oversize {
        /// The stream the frame was for.
        stream_id: u32,
        /// The body length.
        length: usize,
    },
}

/// Encodes one frame: header and body, contiguous.
pub fn encode(
    stream_id: u32,
    kind: MessageType,
    flags: u8,
    body: &[u8],
) -> Result<Vec<u8>, FrameError> {
    if body.len() > MAX_BODY_LEN {
        return Err(FrameError::Oversize {
            stream_id,
            length: body.len(),
        });
    }
    let header = FrameHeader {
        // Cannot truncate: MAX_BODY_LEN < u32::MAX.
        length: body.len() as u32,
        stream_id,
        kind,
        flags,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// What the decoder produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete frame.
    Frame(Frame),
    /// A header announced a body over [`MAX_BODY_LEN`]; the body has been read and
    /// discarded. A server answers RESOURCE_EXHAUSTED on `stream_id`.
    Oversize {
        /// The stream id of the oversized frame.
        stream_id: u32,
        /// Its type.
        kind: MessageType,
        /// The announced body length.
        length: u32,
    },
}

/// Where the decoder is within the current frame.
#[derive(Debug)]
enum State {
    /// Collecting the header (`have` bytes so far).
    Header { buf: [u8; HEADER_LEN], have: usize },
    /// Collecting a body of `header.length` bytes.
    Body { header: FrameHeader, body: Vec<u8> },
    /// Skipping the body of an oversized frame.
    Discard { header: FrameHeader, remaining: u32 },
}

/// Reassembles ttRPC frames from a byte stream (see the module documentation).
#[derive(Debug)]
pub struct FrameDecoder {
    state: State,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// Initial body allocation cap: bodies grow as bytes arrive, so a header alone cannot make
/// the decoder reserve 4 MiB.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

impl FrameDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self {
            state: State::Header {
                buf: [0; HEADER_LEN],
                have: 0,
            },
        }
    }

    /// Whether the decoder is at a frame boundary (no partial frame buffered).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header { have: 0, .. })
    }

    /// Feeds `data` (any length, any split) and appends every completed item to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<Decoded>) {
        loop {
            match &mut self.state {
                State::Header { buf, have } => {
                    if data.is_empty() {
                        return;
                    }
                    let take = (HEADER_LEN - *have).min(data.len());
                    buf[*have..*have + take].copy_from_slice(&data[..take]);
                    *have += take;
                    data = &data[take..];
                    if *have < HEADER_LEN {
                        return;
                    }
                    let header = FrameHeader::parse(buf);
                    self.state = if header.length as usize > MAX_BODY_LEN {
                        State::Discard {
                            header,
                            remaining: header.length,
                        }
                    } else {
                        State::Body {
                            header,
                            body: Vec::with_capacity(
                                (header.length as usize).min(INITIAL_BODY_CAPACITY),
                            ),
                        }
                    };
                }
                State::Body { header, body } => {
                    let want = header.length as usize - body.len();
                    let take = want.min(data.len());
                    body.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if body.len() < header.length as usize {
                        return;
                    }
                    out.push(Decoded::Frame(Frame {
                        stream_id: header.stream_id,
                        kind: header.kind,
                        flags: header.flags,
                        body: std::mem::take(body),
                    }));
                    self.state = State::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    };
                }
                State::Discard { header, remaining } => {
                    let take = (*remaining as usize).min(data.len());
                    // `take` <= `remaining`, a u32.
                    *remaining -= take as u32;
                    data = &data[take..];
                    if *remaining > 0 {
                        return;
                    }
                    out.push(Decoded::Oversize {
                        stream_id: header.stream_id,
                        kind: header.kind,
                        length: header.length,
                    });
                    self.state = State::Header {
                        buf: [0; HEADER_LEN],
                        have: 0,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let header = FrameHeader {
            length: 67,
            stream_id: 1,
            kind: MessageType::Request,
            flags: 0,
        };
        let bytes = header.to_bytes();
        // PROTOCOL.md §1.7: `00 00 00 43  00 00 00 01  01  00`.
        assert_eq!(bytes, [0, 0, 0, 0x43, 0, 0, 0, 1, 1, 0]);
        assert_eq!(FrameHeader::parse(&bytes), header);
    }

    #[test]
    fn decodes_byte_by_byte_and_whole() {
        let mut stream = encode(1, MessageType::Request, 0, b"hello").unwrap();
        stream.extend(encode(3, MessageType::Response, 0, b"").unwrap());
        let mut whole = Vec::new();
        FrameDecoder::new().feed(&stream, &mut whole);
        let mut split = Vec::new();
        let mut decoder = FrameDecoder::new();
        for byte in &stream {
            decoder.feed(std::slice::from_ref(byte), &mut split);
        }
        assert_eq!(whole, split);
        assert_eq!(whole.len(), 2);
        assert!(decoder.is_idle());
        assert_eq!(
            whole[1],
            Decoded::Frame(Frame {
                stream_id: 3,
                kind: MessageType::Response,
                flags: 0,
                body: vec![],
            })
        );
    }

    #[test]
    fn exactly_four_mib_is_accepted() {
        let body = vec![7u8; MAX_BODY_LEN];
        let frame = encode(5, MessageType::Request, 0, &body).unwrap();
        let mut out = Vec::new();
        FrameDecoder::new().feed(&frame, &mut out);
        assert!(matches!(&out[..], [Decoded::Frame(f)] if f.body.len() == MAX_BODY_LEN));
    }

    #[test]
    fn oversize_is_discarded_and_the_stream_continues() {
        let length = MAX_BODY_LEN as u32 + 1;
        let mut stream = FrameHeader {
            length,
            stream_id: 7,
            kind: MessageType::Request,
            flags: 0,
        }
        .to_bytes()
        .to_vec();
        stream.extend(std::iter::repeat_n(0xAB, length as usize));
        stream.extend(encode(9, MessageType::Request, 0, b"next").unwrap());
        let mut out = Vec::new();
        let mut decoder = FrameDecoder::new();
        for chunk in stream.chunks(100_000) {
            decoder.feed(chunk, &mut out);
        }
        assert_eq!(
            out[0],
            Decoded::Oversize {
                stream_id: 7,
                kind: MessageType::Request,
                length
            }
        );
        assert!(matches!(&out[1], Decoded::Frame(f) if f.stream_id == 9 && f.body == b"next"));
    }

    #[test]
    fn encode_refuses_oversize() {
        let body = vec![0u8; MAX_BODY_LEN + 1];
        assert_eq!(
            encode(1, MessageType::Response, 0, &body),
            Err(FrameError::Oversize {
                stream_id: 1,
                length: MAX_BODY_LEN + 1
            })
        );
    }
}
