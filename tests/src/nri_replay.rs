//! A runtime-side NRI peer that speaks exactly as the real containerd 2.3.4 of
//! `tests/captures/containerd-2.3.4/nri` did, message for message.
//!
//! [`Capture`] loads a captured connection (`*.raw.jsonl`: every `recv()` of the byte proxy;
//! `*.decoded.jsonl`: one line per ttRPC message). [`ReplayConn`] then sends the captured
//! requests on mux connection 1 with:
//! * the captured method, metadata and payload bytes; only the pod's network namespace path
//!   and `pid` are changed ([`adjust_payload`]) so that they point into the test's own
//!   namespaces;
//! * stream ids 1, 3, 5, ... on each connection, and `timeout_nano` as containerd computes
//!   it (what is left of a 2 s deadline when the request is written), or the captured value
//!   ([`Timeouts::Captured`], for the byte-level self-check);
//! * containerd's framing (one mux frame up to 4096 bytes, else `[4096, rest]`) written in
//!   the captured read boundaries: a message the proxy read in two `recv()`s (the 8-byte mux
//!   header, then the rest) is written in two `write()`s, one read in one is one write;
//! * containerd's handshake order: the RegisterPlugin answer (an empty Response: empty
//!   payload, no status field) first, then Configure.
//!
//! [`ReplayRuntime`] is the socket: [`ReplayRuntime::go_down`] is containerd stopping (the
//! connection is closed with no Shutdown call, the socket file stays but nobody listens, so
//! dials are refused with ECONNREFUSED, as the proxy saw) and [`ReplayRuntime::come_up`] is
//! containerd started again.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nri::pb;
use nri::proto::ttrpc::{KeyValue, Request, Response};
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::nri_peer::{
    GO_BUFFER, GoReader, PLUGIN_CONN, PLUGIN_SERVICE, PeerError, RUNTIME_CONN, RUNTIME_SERVICE,
    ttrpc_frame,
};
use crate::workspace_root;

/// The capture's directory.
pub fn capture_dir() -> PathBuf {
    workspace_root().join("tests/captures/containerd-2.3.4")
}

/// containerd's request timeout (`plugin_request_timeout = "2s"`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

// ------------------------------------------------------------------ the capture

/// One `recv()` of the capture proxy.
#[derive(Debug, Clone)]
pub struct RawRead {
    /// Line index `i` in the raw file.
    pub index: usize,
    /// The proxy connection.
    pub conn: u32,
    /// `runtime->plugin` (else `plugin->runtime`).
    pub to_plugin: bool,
    /// The bytes read.
    pub bytes: Vec<u8>,
}

/// One captured ttRPC message.
#[derive(Debug, Clone)]
pub struct CapturedMessage {
    /// The raw reads that carried it.
    pub raw_i: Vec<usize>,
    /// The proxy connection.
    pub conn: u32,
    /// `runtime->plugin` (else `plugin->runtime`).
    pub to_plugin: bool,
    /// The mux connection (1: Plugin service, 2: Runtime service).
    pub mux_conn: u32,
    /// The ttRPC stream id.
    pub stream_id: u32,
    /// The ttRPC message type (1 request, 2 response).
    pub kind: u8,
    /// The method of a request, empty for a response.
    pub method: String,
    /// A request's metadata.
    pub metadata: Vec<(String, String)>,
    /// A request's `timeout_nano`.
    pub timeout_nano: i64,
    /// The payload bytes, as captured.
    pub payload: Vec<u8>,
    /// The mux frame payload lengths.
    pub frame_lens: Vec<usize>,
}

/// One captured NRI connection file pair (`01-first-connection`, `02-after-restart`).
#[derive(Debug, Clone)]
pub struct Capture {
    /// Every raw read, in order.
    pub reads: Vec<RawRead>,
    /// Every ttRPC message, in order.
    pub messages: Vec<CapturedMessage>,
}

fn hex(s: &str) -> Result<Vec<u8>> {
    ensure!(s.len() % 2 == 0, "odd hex length {}", s.len());
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).with_context(|| format!("hex at {i}")))
        .collect()
}

impl Capture {
    /// Loads `nri/<name>.{raw,decoded}.jsonl`.
    pub fn load(name: &str) -> Result<Self> {
        let dir = capture_dir().join("nri");
        let read_lines = |suffix: &str| -> Result<Vec<Value>> {
            let path = dir.join(format!("{name}.{suffix}.jsonl"));
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .lines()
                .map(|l| serde_json::from_str(l).with_context(|| format!("{}", path.display())))
                .collect()
        };
        let mut reads = Vec::new();
        for line in read_lines("raw")? {
            let Some(h) = line["hex"].as_str() else {
                continue;
            };
            reads.push(RawRead {
                index: line["i"].as_u64().context("raw i")? as usize,
                conn: line["conn"].as_u64().context("raw conn")? as u32,
                to_plugin: line["dir"] == "runtime->plugin",
                bytes: hex(h)?,
            });
        }
        let mut messages = Vec::new();
        for line in read_lines("decoded")? {
            if line["kind"] != "ttrpc" {
                continue;
            }
            let ttrpc = &line["ttrpc"];
            messages.push(CapturedMessage {
                raw_i: line["raw_i"]
                    .as_array()
                    .context("raw_i")?
                    .iter()
                    .filter_map(|v| v.as_u64().map(|v| v as usize))
                    .collect(),
                conn: line["conn"].as_u64().context("conn")? as u32,
                to_plugin: line["dir"] == "runtime->plugin",
                mux_conn: line["mux_conn"].as_u64().context("mux_conn")? as u32,
                stream_id: ttrpc["stream_id"].as_u64().context("stream_id")? as u32,
                kind: ttrpc["type"].as_u64().context("type")? as u8,
                method: line["method"].as_str().unwrap_or_default().to_string(),
                metadata: line["metadata"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|kv| {
                        (
                            kv["key"].as_str().unwrap_or_default().to_string(),
                            kv["value"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect(),
                timeout_nano: line["timeout_nano"].as_i64().unwrap_or(0),
                payload: hex(line["payload_hex"].as_str().context("payload_hex")?)?,
                frame_lens: line["mux_frame_payload_lens"]
                    .as_array()
                    .context("frame lens")?
                    .iter()
                    .filter_map(|v| v.as_u64().map(|v| v as usize))
                    .collect(),
            });
        }
        Ok(Self { reads, messages })
    }

    /// Every byte of one proxy connection and direction, reads concatenated.
    pub fn raw_bytes(&self, conn: u32, to_plugin: bool) -> Vec<u8> {
        self.raw_reads(conn, to_plugin).concat()
    }

    /// The reads of one proxy connection and direction.
    pub fn raw_reads(&self, conn: u32, to_plugin: bool) -> Vec<Vec<u8>> {
        self.reads
            .iter()
            .filter(|r| r.conn == conn && r.to_plugin == to_plugin)
            .map(|r| r.bytes.clone())
            .collect()
    }

    /// The lengths of the reads that carried `message`.
    pub fn read_lens(&self, message: &CapturedMessage) -> Vec<usize> {
        message
            .raw_i
            .iter()
            .filter_map(|i| self.reads.iter().find(|r| r.index == *i))
            .map(|r| r.bytes.len())
            .collect()
    }

    /// The runtime's requests to the plugin (mux connection 1) on `conn`, in order.
    pub fn calls(&self, conn: u32) -> Vec<CapturedCall> {
        self.messages
            .iter()
            .filter(|m| m.conn == conn && m.to_plugin && m.mux_conn == PLUGIN_CONN && m.kind == 1)
            .map(|m| CapturedCall {
                message: m.clone(),
                cuts: cuts(&m.frame_lens, &self.read_lens(m)),
            })
            .collect()
    }

    /// The runtime's RegisterPlugin answer on `conn` and its write boundaries.
    pub fn register_reply(&self, conn: u32) -> Result<CapturedCall> {
        let m = self
            .messages
            .iter()
            .find(|m| m.conn == conn && m.to_plugin && m.mux_conn == RUNTIME_CONN)
            .context("no RegisterPlugin answer in the capture")?;
        Ok(CapturedCall {
            message: m.clone(),
            cuts: cuts(&m.frame_lens, &self.read_lens(m)),
        })
    }

    /// The plugin's RegisterPlugin request on `conn`, decoded.
    pub fn registration(&self, conn: u32) -> Result<pb::RegisterPluginRequest> {
        let m = self
            .messages
            .iter()
            .find(|m| m.conn == conn && !m.to_plugin && m.method == "RegisterPlugin")
            .context("no RegisterPlugin in the capture")?;
        Ok(pb::RegisterPluginRequest::decode(m.payload.as_slice())?)
    }

    /// The plugin's answer to Configure on `conn`, decoded.
    pub fn configure_reply(&self, conn: u32) -> Result<pb::ConfigureResponse> {
        let configure = self
            .messages
            .iter()
            .find(|m| m.conn == conn && m.method == "Configure")
            .context("no Configure in the capture")?;
        let m = self
            .messages
            .iter()
            .find(|m| {
                m.conn == conn
                    && !m.to_plugin
                    && m.mux_conn == PLUGIN_CONN
                    && m.stream_id == configure.stream_id
            })
            .context("no Configure answer in the capture")?;
        Ok(pb::ConfigureResponse::decode(m.payload.as_slice())?)
    }
}

/// Where a captured read ended inside a framed message, in terms of its frames, so the
/// boundary survives a payload whose length was adjusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// After the 8-byte mux header of frame `n`.
    AfterHeader(usize),
    /// After the whole of frame `n`.
    AfterFrame(usize),
    /// `offset` bytes into the payload of frame `n` (not seen in the capture).
    InPayload(usize, usize),
}

/// The cuts between captured reads of one message framed as `frame_lens`.
fn cuts(frame_lens: &[usize], read_lens: &[usize]) -> Vec<Cut> {
    let mut out = Vec::new();
    let mut at = 0;
    for len in read_lens.iter().take(read_lens.len().saturating_sub(1)) {
        at += len;
        let mut start = 0;
        for (n, frame) in frame_lens.iter().enumerate() {
            let end = start + 8 + frame;
            if at <= end {
                out.push(match at - start {
                    8 => Cut::AfterHeader(n),
                    x if x == 8 + frame => Cut::AfterFrame(n),
                    x => Cut::InPayload(n, x.saturating_sub(8)),
                });
                break;
            }
            start = end;
        }
    }
    out
}

/// One captured runtime message and how its bytes were split between reads.
#[derive(Debug, Clone)]
pub struct CapturedCall {
    /// The captured message.
    pub message: CapturedMessage,
    /// The read boundaries inside it.
    pub cuts: Vec<Cut>,
}

impl CapturedCall {
    /// The method.
    pub fn method(&self) -> &str {
        &self.message.method
    }

    /// The id of the pod of a pod event (field 1 of the request's pod).
    pub fn pod_id(&self) -> Option<String> {
        pb::RunPodSandboxRequest::decode(self.message.payload.as_slice())
            .ok()?
            .pod
            .map(|p| p.id)
    }
}

/// Frames `message` as containerd does (one frame up to 4096 bytes, else `[4096, rest]`),
/// split into writes at `cuts`.
pub fn framed_writes(mux_conn: u32, message: &[u8], cuts: &[Cut]) -> Vec<Vec<u8>> {
    let parts: Vec<&[u8]> = if message.len() <= GO_BUFFER {
        vec![message]
    } else {
        vec![&message[..GO_BUFFER], &message[GO_BUFFER..]]
    };
    let mut bytes = Vec::new();
    let mut offsets = Vec::new();
    for (n, part) in parts.iter().enumerate() {
        let start = bytes.len();
        bytes.extend_from_slice(&mux_conn.to_be_bytes());
        bytes.extend_from_slice(&(part.len() as u32).to_be_bytes());
        bytes.extend_from_slice(part);
        offsets.push((n, start, bytes.len()));
    }
    let mut at: Vec<usize> = cuts
        .iter()
        .filter_map(|cut| {
            let (n, inner) = match *cut {
                Cut::AfterHeader(n) => (n, Some(8)),
                Cut::AfterFrame(n) => (n, None),
                Cut::InPayload(n, x) => (n, Some(8 + x)),
            };
            let &(_, start, end) = offsets.get(n)?;
            Some(inner.map_or(end, |i| (start + i).min(end)))
        })
        .filter(|&x| x > 0 && x < bytes.len())
        .collect();
    at.sort_unstable();
    at.dedup();
    let mut writes = Vec::new();
    let mut prev = 0;
    for x in at.into_iter().chain([bytes.len()]) {
        writes.push(bytes[prev..x].to_vec());
        prev = x;
    }
    writes
}

/// The ttRPC Request body containerd sends for `message` with `payload` and `timeout_nano`.
pub fn request_body(message: &CapturedMessage, payload: Vec<u8>, timeout_nano: i64) -> Vec<u8> {
    Request {
        service: PLUGIN_SERVICE.into(),
        method: message.method.clone(),
        payload,
        timeout_nano,
        metadata: message
            .metadata
            .iter()
            .map(|(key, value)| KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
    }
    .encode_to_vec()
}

// ------------------------------------------------------------------ payload adjustment

/// Where a captured pod's namespaces are in the test: its network namespace path and the
/// pid standing in for its pause process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPaths {
    /// The network namespace path (`linux.namespaces[type=network].path`).
    pub netns: String,
    /// The pause pid (`pid`), where the capture has one.
    pub pid: u32,
}

/// Per captured pod id, the paths to put in its place.
pub type Adjustments = HashMap<String, PodPaths>;

fn varint(buf: &mut &[u8]) -> Result<u64> {
    prost::encoding::decode_varint(buf).context("bad varint")
}

/// One wire-format field: its number, wire type, and the raw bytes of the whole field (tag
/// included) and of its value (for length-delimited fields, the content).
struct Field<'a> {
    number: u64,
    wire: u8,
    raw: &'a [u8],
    value: &'a [u8],
}

fn fields(mut buf: &[u8]) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let start = buf;
        let tag = varint(&mut buf)?;
        let (number, wire) = (tag >> 3, (tag & 7) as u8);
        let value = match wire {
            0 => {
                let before = buf;
                varint(&mut buf)?;
                &before[..before.len() - buf.len()]
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                ensure!(buf.len() >= n, "truncated fixed field {number}");
                let (v, rest) = buf.split_at(n);
                buf = rest;
                v
            }
            2 => {
                let len = varint(&mut buf)? as usize;
                ensure!(buf.len() >= len, "truncated field {number}");
                let (v, rest) = buf.split_at(len);
                buf = rest;
                v
            }
            _ => bail!("unsupported wire type {wire} (field {number})"),
        };
        let raw = &start[..start.len() - buf.len()];
        out.push(Field {
            number,
            wire,
            raw,
            value,
        });
    }
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, number: u64, content: &[u8]) {
    prost::encoding::encode_varint((number << 3) | 2, out);
    prost::encoding::encode_varint(content.len() as u64, out);
    out.extend_from_slice(content);
}

/// `linux` (LinuxPodSandbox): the network entry of `namespaces` (field 5) gets `netns`.
fn adjust_linux(linux: &[u8], netns: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(linux.len());
    for f in fields(linux)? {
        if f.number == 5 && f.wire == 2 {
            // Decoded with prost, path replaced, re-encoded: LinuxNamespace has two string
            // fields, which prost encodes exactly as Go does (field order, no defaults).
            let mut ns = pb::LinuxNamespace::decode(f.value)?;
            if ns.r#type == "network" {
                ns.path = netns.to_string();
                put_len(&mut out, 5, &ns.encode_to_vec());
                continue;
            }
        }
        out.extend_from_slice(f.raw);
    }
    Ok(out)
}

/// One PodSandbox: `linux.namespaces` network path and `pid` (field 9) replaced when the
/// pod's id is in `adjust`; every other byte stays as captured.
fn adjust_pod(pod: &[u8], adjust: &Adjustments) -> Result<Vec<u8>> {
    let fields = fields(pod)?;
    let id = fields
        .iter()
        .find(|f| f.number == 1 && f.wire == 2)
        .map(|f| String::from_utf8_lossy(f.value).into_owned())
        .unwrap_or_default();
    let Some(paths) = adjust.get(&id) else {
        return Ok(pod.to_vec());
    };
    let mut out = Vec::with_capacity(pod.len());
    for f in fields {
        match (f.number, f.wire) {
            (8, 2) => put_len(&mut out, 8, &adjust_linux(f.value, &paths.netns)?),
            (9, 0) => {
                prost::encoding::encode_varint(9 << 3, &mut out);
                prost::encoding::encode_varint(u64::from(paths.pid), &mut out);
            }
            _ => out.extend_from_slice(f.raw),
        }
    }
    Ok(out)
}

/// The captured payload of a pod event or Synchronize with the pods of `adjust` pointed at
/// the test's namespaces: their network namespace path and `pid` (when present: Stop and
/// Remove carry none) are replaced; every other byte stays as captured.
///
/// Why not a whole-message prost decode and re-encode: prost writes maps in key order (Go
/// writes them in random order, see the labels of any captured pod) and would drop any
/// field our proto lacks, so the result would not be the captured bytes. Instead the wire format is walked down to the two fields; the namespace entry
/// itself is decoded with prost, its path replaced and re-encoded, and the enclosing
/// lengths rewritten. Messages other than PodSandbox (field 1 of every pod request and of
/// SynchronizeRequest) are copied as they are.
pub fn adjust_payload(method: &str, payload: &[u8], adjust: &Adjustments) -> Result<Vec<u8>> {
    if !matches!(
        method,
        "RunPodSandbox"
            | "StopPodSandbox"
            | "RemovePodSandbox"
            | "UpdatePodSandbox"
            | "Synchronize"
    ) || adjust.is_empty()
    {
        return Ok(payload.to_vec());
    }
    let mut out = Vec::with_capacity(payload.len());
    for f in fields(payload)? {
        if f.number == 1 && f.wire == 2 {
            put_len(&mut out, 1, &adjust_pod(f.value, adjust)?);
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    Ok(out)
}

/// The captured paths of every pod in `capture` (id → network namespace path and pid, as
/// the first message naming the pod with both has them), to undo an adjustment.
pub fn captured_paths(capture: &Capture) -> Adjustments {
    let mut out = Adjustments::new();
    for m in &capture.messages {
        let pods = match m.method.as_str() {
            "Synchronize" => pb::SynchronizeRequest::decode(m.payload.as_slice())
                .map(|s| s.pods)
                .unwrap_or_default(),
            "RunPodSandbox" => pb::RunPodSandboxRequest::decode(m.payload.as_slice())
                .ok()
                .and_then(|r| r.pod)
                .into_iter()
                .collect(),
            _ => continue,
        };
        for pod in pods {
            let netns = pod
                .linux
                .iter()
                .flat_map(|l| &l.namespaces)
                .find(|n| n.r#type == "network")
                .map(|n| n.path.clone());
            if let Some(netns) = netns {
                out.entry(pod.id).or_insert(PodPaths {
                    netns,
                    pid: pod.pid,
                });
            }
        }
    }
    out
}

// ------------------------------------------------------------------ the connection

/// How `timeout_nano` is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeouts {
    /// As containerd: the time left to a 2 s deadline when the request is written.
    Deadline,
    /// The captured value, byte for byte (the self-check).
    Captured,
}

/// The plugin's registration, as received.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The RegisterPlugin request.
    pub request: pb::RegisterPluginRequest,
    /// The event mask answered to Configure.
    pub events: i32,
}

type Pending = HashMap<u32, oneshot::Sender<Response>>;

struct Shared {
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    pending: Mutex<Pending>,
    next_stream: Mutex<u32>,
    writes: Mutex<Vec<Vec<u8>>>,
    sent: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One plugin connection, replayed from the runtime's side.
pub struct ReplayConn {
    shared: Arc<Shared>,
    registrations: tokio::sync::Mutex<mpsc::UnboundedReceiver<(u32, Vec<u8>)>>,
    reader: JoinHandle<()>,
    timeouts: Timeouts,
}

impl ReplayConn {
    /// Replays on a connected stream.
    pub fn new(stream: UnixStream, timeouts: Timeouts) -> Self {
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(Some(write)),
            pending: Mutex::new(HashMap::new()),
            next_stream: Mutex::new(1),
            writes: Mutex::new(Vec::new()),
            sent: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(read, shared.clone(), tx));
        Self {
            shared,
            registrations: tokio::sync::Mutex::new(rx),
            reader,
            timeouts,
        }
    }

    /// Every write made so far, in order (runtime → plugin bytes).
    pub fn writes(&self) -> Vec<Vec<u8>> {
        lock(&self.shared.writes).clone()
    }

    /// The methods called so far, in order (`Configure`, `Synchronize`, ...).
    pub fn sent_methods(&self) -> Vec<String> {
        lock(&self.shared.sent).clone()
    }

    /// What the plugin did that containerd's reader would reject or not expect.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.violations).clone()
    }

    async fn write(&self, writes: Vec<Vec<u8>>) -> Result<(), PeerError> {
        let mut writer = self.shared.writer.lock().await;
        let w = writer
            .as_mut()
            .ok_or_else(|| PeerError::Closed("closed by the peer".into()))?;
        for chunk in writes {
            w.write_all(&chunk)
                .await
                .map_err(|e| PeerError::Closed(format!("write: {e}")))?;
            w.flush()
                .await
                .map_err(|e| PeerError::Closed(format!("flush: {e}")))?;
            lock(&self.shared.writes).push(chunk);
        }
        Ok(())
    }

    /// Waits for RegisterPlugin, answers it as containerd did (`reply`: empty payload, no
    /// status field, in the captured write boundaries), then sends `configure` and waits
    /// for its answer.
    pub async fn register(
        &self,
        reply: &CapturedCall,
        configure: &CapturedCall,
        timeout: Duration,
    ) -> Result<Registration> {
        let (stream, body) = {
            let mut rx = self.registrations.lock().await;
            tokio::time::timeout(timeout, rx.recv())
                .await
                .context("no RegisterPlugin in time")?
                .context("connection closed before RegisterPlugin")?
        };
        let request = Request::decode(body.as_slice()).context("RegisterPlugin request")?;
        let registration = pb::RegisterPluginRequest::decode(request.payload.as_slice())?;
        // An OK Response of containerd: empty payload, no status: an empty body.
        let answer = Response::default().encode_to_vec();
        self.write(framed_writes(
            RUNTIME_CONN,
            &ttrpc_frame(stream, 2, 0, &answer),
            &reply.cuts,
        ))
        .await?;
        let payload = self.call(configure, &Adjustments::new()).await?;
        let events = pb::ConfigureResponse::decode(payload.as_slice())?.events;
        Ok(Registration {
            request: registration,
            events,
        })
    }

    /// Sends one captured request (payload adjusted for `adjust`) with the next stream id,
    /// and waits for the answer (2 s, as containerd). An error status is
    /// [`PeerError::Status`].
    pub async fn call(&self, call: &CapturedCall, adjust: &Adjustments) -> Result<Vec<u8>> {
        let payload = adjust_payload(call.method(), &call.message.payload, adjust)?;
        Ok(self.call_payload(call, payload).await?)
    }

    async fn call_payload(
        &self,
        call: &CapturedCall,
        payload: Vec<u8>,
    ) -> Result<Vec<u8>, PeerError> {
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let (rx, stream) = {
            // Ids are taken and written under the writer lock, so they go out in order.
            let mut writer = self.shared.writer.lock().await;
            if writer.is_none() {
                return Err(PeerError::Closed("closed by the peer".into()));
            }
            let stream = {
                let mut next = lock(&self.shared.next_stream);
                let id = *next;
                *next += 2;
                id
            };
            let timeout_nano = match self.timeouts {
                Timeouts::Captured => call.message.timeout_nano,
                Timeouts::Deadline => deadline
                    .saturating_duration_since(Instant::now())
                    .as_nanos() as i64,
            };
            let body = request_body(&call.message, payload, timeout_nano);
            let (tx, rx) = oneshot::channel();
            lock(&self.shared.pending).insert(stream, tx);
            lock(&self.shared.sent).push(call.method().to_string());
            let w = writer
                .as_mut()
                .ok_or_else(|| PeerError::Closed("closed".into()))?;
            for chunk in framed_writes(PLUGIN_CONN, &ttrpc_frame(stream, 1, 0, &body), &call.cuts) {
                w.write_all(&chunk)
                    .await
                    .map_err(|e| PeerError::Closed(format!("write: {e}")))?;
                lock(&self.shared.writes).push(chunk);
            }
            (rx, stream)
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(response)) => match response.status {
                Some(status) if status.code != 0 => Err(PeerError::Status {
                    code: status.code,
                    message: status.message,
                }),
                _ => Ok(response.payload),
            },
            Ok(Err(_)) => Err(PeerError::Closed("connection closed".into())),
            Err(_) => {
                lock(&self.shared.pending).remove(&stream);
                // containerd closes a plugin that misses the deadline (§10.4).
                self.close().await;
                Err(PeerError::Timeout(REQUEST_TIMEOUT))
            }
        }
    }

    /// Closes the connection as containerd does when it stops: no Shutdown call, just EOF.
    pub async fn close(&self) {
        if let Some(mut w) = self.shared.writer.lock().await.take() {
            let _ = w.shutdown().await;
        }
        self.reader.abort();
        lock(&self.shared.pending).clear();
    }
}

impl Drop for ReplayConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    shared: Arc<Shared>,
    registrations: mpsc::UnboundedSender<(u32, Vec<u8>)>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut readers: HashMap<u32, GoReader> = HashMap::new();
    loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                lock(&shared.pending).clear();
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut offset = 0;
        while buf.len() - offset >= 8 {
            let conn = u32::from_be_bytes([
                buf[offset],
                buf[offset + 1],
                buf[offset + 2],
                buf[offset + 3],
            ]);
            let len = u32::from_be_bytes([
                buf[offset + 4],
                buf[offset + 5],
                buf[offset + 6],
                buf[offset + 7],
            ]) as usize;
            if buf.len() - offset - 8 < len {
                break;
            }
            let payload = buf[offset + 8..offset + 8 + len].to_vec();
            offset += 8 + len;
            let reader = readers.entry(conn).or_default();
            reader.push_frame(payload);
            loop {
                let (header, body) = match reader.next_message() {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(e) => {
                        lock(&shared.violations).push(format!(
                            "conn {conn}: a {}-byte frame containerd's reader rejects ({} bytes)",
                            e.frame, e.buffer
                        ));
                        break;
                    }
                };
                let stream = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
                match (conn, header[8]) {
                    (PLUGIN_CONN, 2) => match Response::decode(body.as_slice()) {
                        Ok(response) => {
                            if let Some(tx) = lock(&shared.pending).remove(&stream) {
                                let _ = tx.send(response);
                            } else {
                                lock(&shared.violations)
                                    .push(format!("conn 1: answer to unknown stream {stream}"));
                            }
                        }
                        Err(e) => lock(&shared.violations)
                            .push(format!("conn 1: undecodable Response: {e}")),
                    },
                    (RUNTIME_CONN, 1) => {
                        let method = Request::decode(body.as_slice())
                            .map(|r| (r.service, r.method))
                            .unwrap_or_default();
                        if method != (RUNTIME_SERVICE.to_string(), "RegisterPlugin".to_string()) {
                            lock(&shared.violations).push(format!(
                                "conn 2: unexpected request {}/{}",
                                method.0, method.1
                            ));
                        }
                        let _ = registrations.send((stream, body));
                    }
                    (c, t) => lock(&shared.violations)
                        .push(format!("conn {c}: unexpected message type {t}")),
                }
            }
        }
        buf.drain(..offset);
    }
}

// ------------------------------------------------------------------ the socket

/// A unix socket bound but not listening: a dial is refused (ECONNREFUSED), as at a stopped
/// containerd's socket. The file is removed on drop.
struct RefusingSocket {
    fd: std::os::fd::OwnedFd,
    path: PathBuf,
}

impl RefusingSocket {
    fn bind(path: &Path) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        if bytes.len() >= addr.sun_path.len() {
            return Err(std::io::Error::other(format!(
                "socket path {} too long",
                path.display()
            )));
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        let _ = std::fs::remove_file(path);
        // SAFETY: `addr` is an initialized sockaddr_un and the length is its size.
        let rc = unsafe {
            libc::bind(
                raw,
                (&raw const addr).cast::<libc::sockaddr>(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self {
            fd,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for RefusingSocket {
    fn drop(&mut self) {
        let _ = &self.fd;
        let _ = std::fs::remove_file(&self.path);
    }
}

/// containerd's NRI socket: up (listening) or down (the file there, dials refused).
pub struct ReplayRuntime {
    path: PathBuf,
    listener: Option<UnixListener>,
    refusing: Option<RefusingSocket>,
}

impl ReplayRuntime {
    /// Listens on `path`.
    pub fn bind(path: &Path) -> Result<Self> {
        let _ = std::fs::remove_file(path);
        Ok(Self {
            path: path.to_path_buf(),
            listener: Some(
                UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?,
            ),
            refusing: None,
        })
    }

    /// Accepts the next connection within `timeout`.
    pub async fn accept(&self, timeout: Duration, timeouts: Timeouts) -> Result<ReplayConn> {
        let listener = self.listener.as_ref().context("the runtime is down")?;
        let (stream, _) = tokio::time::timeout(timeout, listener.accept())
            .await
            .context("no plugin connection in time")??;
        Ok(ReplayConn::new(stream, timeouts))
    }

    /// containerd stopped: nobody listens any more, dials are refused.
    pub fn go_down(&mut self) -> Result<()> {
        self.listener = None;
        self.refusing = Some(
            RefusingSocket::bind(&self.path)
                .with_context(|| format!("binding {} without listening", self.path.display()))?,
        );
        Ok(())
    }

    /// containerd started again: a fresh listening socket at the same path.
    pub fn come_up(&mut self) -> Result<()> {
        self.refusing = None;
        let _ = std::fs::remove_file(&self.path);
        self.listener = Some(
            UnixListener::bind(&self.path)
                .with_context(|| format!("binding {}", self.path.display()))?,
        );
        Ok(())
    }
}

impl Drop for ReplayRuntime {
    fn drop(&mut self) {
        self.listener = None;
        self.refusing = None;
        let _ = std::fs::remove_file(&self.path);
    }
}
