//! The NRI connection multiplexer's wire format (`pkg/net/multiplex`, PROTOCOL.md §2):
//! frames of `[u32 BE conn id][u32 BE payload length][payload]` on one unix stream (the
//! "trunk"), each payload an arbitrary slice of one logical connection's byte stream.
//!
//! * Sending: [`frame_message`] applies the Go-compatible framing rule of §2.4 (rule 1) to
//!   one whole ttRPC message: a message of at most [`GO_FRAME_LIMIT`] bytes is one frame;
//!   a bigger one is exactly two frames, the first [`GO_FRAME_LIMIT`] bytes (header and the
//!   first 4086 body bytes) and then all the rest. That is what containerd itself sends
//!   (§10.3) and what the Go reader, which reads each frame into a 4096-byte buffer unless
//!   it is reading a large body directly, accepts. Bytes of two messages never share a
//!   frame, so no frame that starts a message is over 4096 bytes.
//! * Receiving: [`MuxDecoder`] streams payload bytes out as they arrive, without buffering
//!   a frame, so it accepts frames of any size (Go sends up to 4 MiB + 10 bytes in one).
//!   [`TrunkDecoder`] routes them into one [`FrameDecoder`] per logical connection and
//!   silently drops bytes for connection ids nobody opened (including the reserved id 0).
//!   Both are total: no input makes them fail or panic.

use crate::ttrpc::frame::{Decoded, FrameDecoder};

/// Length of a mux frame header.
pub const MUX_HEADER_LEN: usize = 8;

/// The Go reader's buffer size (`bufio` default): the largest frame that may start a ttRPC
/// message (PROTOCOL.md §2.4, §10.3).
pub const GO_FRAME_LIMIT: usize = 4096;

/// The reserved connection id.
pub const RESERVED_CONN: u32 = 0;

/// Appends one mux frame (header and `payload`) to `out`. A payload over `u32::MAX` bytes
/// (never produced here: ttRPC messages are at most 4 MiB + 10) is split into several.
pub fn encode_frame(conn: u32, payload: &[u8], out: &mut Vec<u8>) {
    let mut chunks = payload.chunks(u32::MAX as usize).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&conn.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        return;
    }
    for chunk in chunks {
        out.extend_from_slice(&conn.to_be_bytes());
        // `chunks` bounds the length by u32::MAX.
        out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Appends the frames for one complete ttRPC message (header and body) to `out`, per the
/// framing rule in the module documentation. Returns the frame payload sizes.
pub fn frame_message(conn: u32, message: &[u8], out: &mut Vec<u8>) -> FrameSplit {
    if message.len() <= GO_FRAME_LIMIT {
        encode_frame(conn, message, out);
        FrameSplit::One(message.len())
    } else {
        let (first, rest) = message.split_at(GO_FRAME_LIMIT);
        encode_frame(conn, first, out);
        encode_frame(conn, rest, out);
        FrameSplit::Two(first.len(), rest.len())
    }
}

/// How [`frame_message`] split a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameSplit {
    /// One frame of this many payload bytes.
    One(usize),
    /// Two frames: the first [`GO_FRAME_LIMIT`] bytes, then the rest.
    Two(usize, usize),
}

/// Streams mux frame payloads out of trunk bytes (see the module documentation).
#[derive(Debug, Default)]
pub struct MuxDecoder {
    header: [u8; MUX_HEADER_LEN],
    have: usize,
    conn: u32,
    remaining: u32,
}

impl MuxDecoder {
    /// A decoder at a frame boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the decoder is at a frame boundary.
    pub fn is_idle(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Feeds trunk bytes; calls `sink(conn, bytes)` for every piece of payload, in order.
    /// Empty pieces are not reported.
    pub fn feed<'a>(&mut self, mut data: &'a [u8], mut sink: impl FnMut(u32, &'a [u8])) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let take = (self.remaining as usize).min(data.len());
                sink(self.conn, &data[..take]);
                // `take` <= `remaining`, a u32.
                self.remaining -= take as u32;
                data = &data[take..];
                continue;
            }
            let take = (MUX_HEADER_LEN - self.have).min(data.len());
            self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have == MUX_HEADER_LEN {
                let h = &self.header;
                self.conn = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                self.remaining = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                self.have = 0;
            }
        }
    }
}

/// Mux decoding plus ttRPC frame reassembly for a fixed set of logical connections.
#[derive(Debug)]
pub struct TrunkDecoder {
    mux: MuxDecoder,
    conns: Vec<(u32, FrameDecoder)>,
    dropped: u64,
}

impl TrunkDecoder {
    /// A decoder that reassembles frames for the connection ids in `conns` (id 0, being
    /// reserved, is never opened).
    pub fn new(conns: &[u32]) -> Self {
        Self {
            mux: MuxDecoder::new(),
            conns: conns
                .iter()
                .filter(|c| **c != RESERVED_CONN)
                .map(|c| (*c, FrameDecoder::new()))
                .collect(),
            dropped: 0,
        }
    }

    /// Feeds trunk bytes and appends every completed `(conn, item)` to `out`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<(u32, Decoded)>) {
        let Self {
            mux,
            conns,
            dropped,
        } = self;
        let mut items = Vec::new();
        mux.feed(data, |conn, bytes| {
            match conns.iter_mut().find(|(id, _)| *id == conn) {
                Some((_, decoder)) => {
                    decoder.feed(bytes, &mut items);
                    out.extend(items.drain(..).map(|item| (conn, item)));
                }
                None => *dropped += bytes.len() as u64,
            }
        });
    }

    /// Payload bytes dropped because their connection id is not open.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// Whether no partial mux frame or ttRPC frame is buffered.
    pub fn is_idle(&self) -> bool {
        self.mux.is_idle() && self.conns.iter().all(|(_, d)| d.is_idle())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ttrpc::frame::{self, MessageType};

    fn frames_of(bytes: &[u8]) -> Vec<(u32, usize)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while rest.len() >= MUX_HEADER_LEN {
            let conn = u32::from_be_bytes(rest[0..4].try_into().unwrap());
            let len = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
            out.push((conn, len));
            rest = &rest[MUX_HEADER_LEN + len..];
        }
        assert!(rest.is_empty());
        out
    }

    #[test]
    fn small_message_is_one_frame() {
        let msg = frame::encode(1, MessageType::Request, 0, &[1; 4086]).unwrap();
        let mut out = Vec::new();
        assert_eq!(frame_message(2, &msg, &mut out), FrameSplit::One(4096));
        assert_eq!(frames_of(&out), vec![(2, 4096)]);
    }

    #[test]
    fn large_message_is_4096_then_rest() {
        let msg = frame::encode(1, MessageType::Response, 0, &[1; 20_000]).unwrap();
        let mut out = Vec::new();
        assert_eq!(
            frame_message(1, &msg, &mut out),
            FrameSplit::Two(4096, 15_914)
        );
        assert_eq!(frames_of(&out), vec![(1, 4096), (1, 15_914)]);
    }

    #[test]
    fn worked_example_register_plugin() {
        // PROTOCOL.md §1.7: mux header `00 00 00 02  00 00 00 4d`, then the ttRPC frame.
        let mut body = Vec::new();
        body.extend_from_slice(b"\x0a\x1cnri.pkg.api.v1alpha1.Runtime");
        body.extend_from_slice(b"\x12\x0eRegisterPlugin");
        body.extend_from_slice(b"\x1a\x0d\x0a\x07netshim\x12\x0210");
        body.extend_from_slice(&[0x20, 0x80, 0xe4, 0x97, 0xd0, 0x12]);
        let msg = frame::encode(1, MessageType::Request, 0, &body).unwrap();
        let mut out = Vec::new();
        frame_message(2, &msg, &mut out);
        assert_eq!(&out[..8], &[0, 0, 0, 2, 0, 0, 0, 0x4d]);
        assert_eq!(&out[8..18], &[0, 0, 0, 0x43, 0, 0, 0, 1, 1, 0]);
    }

    #[test]
    fn trunk_decoder_reassembles_and_drops_unknown_conns() {
        let a = frame::encode(1, MessageType::Request, 0, &[9; 10_000]).unwrap();
        let b = frame::encode(1, MessageType::Response, 0, b"x").unwrap();
        let mut trunk = Vec::new();
        frame_message(1, &a, &mut trunk);
        encode_frame(7, b"junk", &mut trunk);
        encode_frame(0, b"reserved", &mut trunk);
        // A message split over many tiny frames, interleaved with another conn.
        for chunk in b.chunks(3) {
            encode_frame(2, chunk, &mut trunk);
            encode_frame(7, b"z", &mut trunk);
        }
        let mut out = Vec::new();
        let mut decoder = TrunkDecoder::new(&[1, 2]);
        for chunk in trunk.chunks(5) {
            decoder.feed(chunk, &mut out);
        }
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], (1, Decoded::Frame(f)) if f.body.len() == 10_000));
        assert!(matches!(&out[1], (2, Decoded::Frame(f)) if f.body == b"x"));
        assert_eq!(decoder.dropped_bytes(), 4 + 8 + 4);
        assert!(decoder.is_idle());
    }
}
