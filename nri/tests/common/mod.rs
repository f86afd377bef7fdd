//! Helpers shared by the integration tests: a raw, byte-level stand-in for the runtime end
//! of the NRI socket ([`RawPeer`]). `cri-hook`'s tests include this file too.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use nri::mux::GO_FRAME_LIMIT;
use nri::proto::ttrpc::{Request, Response};
use nri::ttrpc::frame::{self, Decoded, FrameDecoder, HEADER_LEN, MessageType};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// A logger that drops everything.
pub fn discard_log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// The runtime end of a connection, at the byte level: sends frames as containerd frames
/// them, parses whole mux frames and checks every message it receives against the §2.4
/// rule (a frame that starts a message is at most 4096 bytes; a message spans at most two
/// frames).
pub struct RawPeer {
    pub stream: UnixStream,
    buf: Vec<u8>,
    decoders: BTreeMap<u32, (FrameDecoder, usize)>,
    items: VecDeque<(u32, Decoded)>,
    /// Sizes of every mux frame received, per connection, in order.
    pub frames: Vec<(u32, usize)>,
}

impl RawPeer {
    pub fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
            decoders: BTreeMap::new(),
            items: VecDeque::new(),
            frames: Vec::new(),
        }
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Sends a ttRPC request framed as containerd frames messages.
    pub async fn request(
        &mut self,
        conn: u32,
        stream_id: u32,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) {
        let body = Request {
            service: service.into(),
            method: method.into(),
            payload,
            timeout_nano: timeout.as_nanos() as i64,
            metadata: vec![],
        }
        .encode_to_vec();
        let message = frame::encode(stream_id, MessageType::Request, 0, &body).unwrap();
        self.send_message(conn, &message).await;
    }

    /// Sends one ttRPC message as `[whole]` or `[4096, rest]`.
    pub async fn send_message(&mut self, conn: u32, message: &[u8]) {
        let mut out = Vec::new();
        nri::mux::frame_message(conn, message, &mut out);
        self.send_raw(&out).await;
    }

    /// The next decoded item, or None if nothing arrives within `timeout` or on EOF.
    pub async fn next_item(&mut self, timeout: Duration) -> Option<(u32, Decoded)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(item) = self.items.pop_front() {
                return Some(item);
            }
            let mut chunk = vec![0u8; 65536];
            let n = match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return None,
            };
            self.buf.extend_from_slice(&chunk[..n]);
            while self.buf.len() >= 8 {
                let conn = u32::from_be_bytes(self.buf[0..4].try_into().unwrap());
                let len = u32::from_be_bytes(self.buf[4..8].try_into().unwrap()) as usize;
                if self.buf.len() < 8 + len {
                    break;
                }
                let payload: Vec<u8> = self.buf[8..8 + len].to_vec();
                self.buf.drain(..8 + len);
                self.frames.push((conn, len));
                let (decoder, frames_in_message) = self
                    .decoders
                    .entry(conn)
                    .or_insert_with(|| (FrameDecoder::new(), 0));
                if decoder.is_idle() {
                    assert!(
                        len <= GO_FRAME_LIMIT,
                        "conn {conn}: a {len}-byte frame starts a message (the Go reader fails with ENOMEM)"
                    );
                    *frames_in_message = 0;
                }
                *frames_in_message += 1;
                assert!(
                    *frames_in_message <= 2,
                    "conn {conn}: a message spans more than two frames"
                );
                let mut out = Vec::new();
                decoder.feed(&payload, &mut out);
                if !out.is_empty() {
                    assert!(
                        decoder.is_idle(),
                        "conn {conn}: a frame holds the start of another message"
                    );
                }
                self.items.extend(out.into_iter().map(|d| (conn, d)));
            }
        }
    }

    /// Waits for the Response on `conn` with `stream_id` (other items are dropped).
    pub async fn response(&mut self, conn: u32, stream_id: u32) -> Response {
        loop {
            match self.next_item(Duration::from_secs(5)).await {
                Some((c, Decoded::Frame(f)))
                    if c == conn && f.stream_id == stream_id && f.kind == MessageType::Response =>
                {
                    return Response::decode(f.body.as_slice()).unwrap();
                }
                Some(_) => continue,
                None => panic!("no response on conn {conn} stream {stream_id}"),
            }
        }
    }
}

/// Length of a ttRPC header, re-exported for the tests.
pub const TTRPC_HEADER: usize = HEADER_LEN;
