//! Helpers shared by the integration tests: a recording fake [`PodNetwork`] and a raw,
//! byte-level stand-in for the runtime end of the NRI socket.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use cri_hook::mux::GO_FRAME_LIMIT;
use cri_hook::network::{NetworkError, NetworkPod, PodNetwork, Wiring};
use cri_hook::ttrpc::frame::{self, Decoded, FrameDecoder, HEADER_LEN, MessageType};
use netns_holder_core::names::PodName;
use netns_holder_core::ports::PortMapping;
use netns_holder_proto::ttrpc::{Request, Response};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// A logger that drops everything.
pub fn discard_log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

/// An in-memory pod network that records calls.
#[derive(Default)]
pub struct FakeNetwork {
    pub pods: Mutex<BTreeMap<PodName, NetworkPod>>,
    pub calls: Mutex<Vec<String>>,
    /// Every call fails with this, if set.
    pub fail: Mutex<Option<NetworkError>>,
    /// Every call first sleeps this long.
    pub delay: Mutex<Duration>,
    /// Pods whose ports were released.
    pub released: Mutex<std::collections::BTreeSet<PodName>>,
    /// Namespaces another network plugin wired, with the links in them.
    pub wired_elsewhere: Mutex<BTreeMap<String, Vec<String>>>,
}

impl FakeNetwork {
    pub fn names(&self) -> Vec<String> {
        self.pods
            .lock()
            .unwrap()
            .keys()
            .map(|n| n.to_string())
            .collect()
    }

    pub fn insert(&self, name: &str, annotations: &[(&str, &str)]) {
        let name = PodName::new(name).unwrap();
        self.pods.lock().unwrap().insert(
            name.clone(),
            NetworkPod {
                name,
                annotations: annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ips: vec!["10.0.0.99/24".into()],
                netns: "/run/netns/manual".into(),
            },
        );
    }

    async fn enter(&self, call: String, deadline: Instant) -> Result<(), NetworkError> {
        self.calls.lock().unwrap().push(call);
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero()
            && tokio::time::timeout_at(deadline, tokio::time::sleep(delay))
                .await
                .is_err()
        {
            return Err(NetworkError::Timeout {
                socket: "/fake".into(),
                method: "Fake",
                after: delay,
            });
        }
        match self.fail.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl PodNetwork for FakeNetwork {
    async fn ensure(
        &self,
        name: &PodName,
        netns: &Path,
        annotations: BTreeMap<String, String>,
        ports: &[PortMapping],
        deadline: Instant,
    ) -> Result<Wiring, NetworkError> {
        let shown: Vec<String> = ports.iter().map(ToString::to_string).collect();
        let call = if shown.is_empty() {
            format!("ensure {name}")
        } else {
            format!("ensure {name} ports [{}]", shown.join(", "))
        };
        self.enter(call, deadline).await?;
        if let Some(links) = self
            .wired_elsewhere
            .lock()
            .unwrap()
            .get(&netns.display().to_string())
        {
            return Ok(Wiring::WiredElsewhere {
                links: links.clone(),
            });
        }
        let mut pods = self.pods.lock().unwrap();
        let n = pods.len();
        let pod = pods.entry(name.clone()).or_insert_with(|| NetworkPod {
            name: name.clone(),
            annotations: annotations.clone(),
            ips: vec![format!("10.0.0.{}/24", n + 2)],
            netns: netns.display().to_string(),
        });
        if pod.annotations != annotations || pod.netns != netns.display().to_string() {
            return Err(NetworkError::Rejected {
                method: "AttachPod",
                code: tonic::Code::AlreadyExists,
                message: format!("pod {name} exists with other parameters"),
            });
        }
        Ok(Wiring::Ours(pod.clone()))
    }

    async fn get(
        &self,
        name: &PodName,
        deadline: Instant,
    ) -> Result<Option<NetworkPod>, NetworkError> {
        self.enter(format!("get {name}"), deadline).await?;
        Ok(self.pods.lock().unwrap().get(name).cloned())
    }

    async fn release_ports(&self, name: &PodName, deadline: Instant) -> Result<bool, NetworkError> {
        self.enter(format!("release_ports {name}"), deadline)
            .await?;
        let pods = self.pods.lock().unwrap();
        Ok(pods.contains_key(name) && self.released.lock().unwrap().insert(name.clone()))
    }

    async fn remove(&self, name: &PodName, deadline: Instant) -> Result<bool, NetworkError> {
        self.enter(format!("remove {name}"), deadline).await?;
        Ok(self.pods.lock().unwrap().remove(name).is_some())
    }

    async fn list(&self, deadline: Instant) -> Result<Vec<NetworkPod>, NetworkError> {
        self.enter("list".into(), deadline).await?;
        Ok(self.pods.lock().unwrap().values().cloned().collect())
    }
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
        cri_hook::mux::frame_message(conn, message, &mut out);
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
