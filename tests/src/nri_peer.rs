//! A runtime-side NRI peer: what containerd 2.3 does on its end of an NRI plugin socket,
//! written independently of `cri-hook` (it shares only the protobuf messages), so that the
//! plugin is tested against the protocol rather than against itself. See
//! `shared/nri/PROTOCOL.md`; section numbers below refer to it.
//!
//! What it does, as containerd does it:
//! * listens on an NRI socket ([`NriRuntime`]) or takes an already connected stream (the
//!   launched-plugin socketpair, [`PluginConn::from_stream`]);
//! * serves `nri.pkg.api.v1alpha1.Runtime` on mux connection 2: RegisterPlugin (validating
//!   name and index, refusing with status 2 UNKNOWN and leaving the socket open, §10.1) and
//!   UpdateContainers; OK answers carry **no status field** (§10.1);
//! * on registration sends Configure on connection 1 **before** answering RegisterPlugin
//!   (the race of §3.3, the harsher order: the capture of containerd 2.3.4 shows the answer
//!   first, which [`crate::nri_replay`] reproduces), with containerd 2.3.4's values (§10.1),
//!   and checks the event mask;
//! * calls the Plugin service on connection 1 with stream ids 1, 3, 5, ... and
//!   `timeout_nano` set from a 2 s deadline; a call not answered in time closes the
//!   connection (§10.4); a split Synchronize shares one deadline and requires `more` to be
//!   echoed without updates (§3.6);
//! * dedicated pod RPCs answered UNIMPLEMENTED are re-sent as StateChange and the connection
//!   switches to StateChange for good; UNIMPLEMENTED to StateChange is a violation (§10.2);
//! * frames what it sends like containerd: one frame up to 4096 bytes, else `[4096, rest]`
//!   (§10.3);
//! * reads what the plugin sends through a model of the Go reader (a mux `Read` hands over
//!   one whole frame and fails with ENOMEM if the buffer is smaller; ttRPC reads through a
//!   4096-byte `bufio.Reader`, §2.4): a frame the real reader would reject is recorded as a
//!   violation and handled as containerd does (connection 1: the plugin is closed at once;
//!   connection 2: the Runtime service dies, the socket stays open, §10.3).
//!
//! Tests assert [`PluginConn::violations`] is empty.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nri::pb;
use nri::proto::ttrpc::{Request, Response};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The Plugin service name.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The Runtime service name.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";
/// Mux connection on which the runtime calls the plugin.
pub const PLUGIN_CONN: u32 = 1;
/// Mux connection on which the plugin calls the runtime.
pub const RUNTIME_CONN: u32 = 2;
/// The Go `bufio.Reader` size, and the largest frame containerd sends whole.
pub const GO_BUFFER: usize = 4096;
/// ttRPC's largest body.
pub const MAX_BODY: usize = 4 << 20;
/// Valid event mask of NRI >= v0.10 runtimes.
pub const VALID_EVENTS: i32 = 0x3FFF;

/// How the peer behaves; [`PeerOptions::default`] is containerd 2.3.4 with its defaults.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    /// The Configure request sent on registration.
    pub configure: pb::ConfigureRequest,
    /// Deadline of each call (and of a whole split Synchronize).
    pub request_timeout: Duration,
    /// Deadline from connection to RegisterPlugin.
    pub registration_timeout: Duration,
    /// Refuse every registration with this message.
    pub reject_registration: Option<String>,
}

impl Default for PeerOptions {
    fn default() -> Self {
        Self {
            configure: pb::ConfigureRequest {
                config: String::new(),
                runtime_name: "containerd".into(),
                runtime_version: "v2.3.4".into(),
                registration_timeout: 5000,
                request_timeout: 2000,
                nri_version: "v0.12.0".into(),
            },
            request_timeout: Duration::from_secs(2),
            registration_timeout: Duration::from_secs(5),
            reject_registration: None,
        }
    }
}

/// A failed call to the plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// The plugin answered an error status.
    Status {
        /// The gRPC code.
        code: i32,
        /// The message.
        message: String,
    },
    /// No answer within the request timeout (the peer then closed the connection).
    Timeout(Duration),
    /// The connection is closed.
    Closed(String),
    /// The plugin broke the protocol.
    Protocol(String),
}

impl PeerError {
    /// The status code, for [`PeerError::Status`].
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl fmt::Display for PeerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Status { code, message } => write!(f, "plugin answered status {code}: {message}"),
            Self::Timeout(after) => write!(f, "plugin did not answer within {after:?}"),
            Self::Closed(why) => write!(f, "connection closed: {why}"),
            Self::Protocol(what) => write!(f, "protocol violation: {what}"),
        }
    }
}

impl std::error::Error for PeerError {}

/// A fake runtime NRI socket; the socket file is removed on drop.
pub struct NriRuntime {
    listener: UnixListener,
    path: PathBuf,
    options: PeerOptions,
}

impl NriRuntime {
    /// Listens on `path` (a stale file is removed first, as containerd does).
    pub fn bind(path: &Path, options: PeerOptions) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        Ok(Self {
            listener: UnixListener::bind(path)?,
            path: path.to_path_buf(),
            options,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the next plugin connection within `timeout`.
    pub async fn accept(&self, timeout: Duration) -> Result<PluginConn, PeerError> {
        match tokio::time::timeout(timeout, self.listener.accept()).await {
            Ok(Ok((stream, _))) => Ok(PluginConn::from_stream(stream, self.options.clone())),
            Ok(Err(e)) => Err(PeerError::Closed(format!("accept: {e}"))),
            Err(_) => Err(PeerError::Timeout(timeout)),
        }
    }
}

impl Drop for NriRuntime {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The outcome of the handshake: what the plugin registered as and subscribed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The RegisterPlugin request.
    pub registration: pb::RegisterPluginRequest,
    /// The event mask answered to Configure.
    pub events: i32,
}

type Pending = HashMap<u32, oneshot::Sender<Result<Response, PeerError>>>;

struct Shared {
    options: PeerOptions,
    writer: tokio::sync::Mutex<Option<OwnedWriteHalf>>,
    /// The next stream id on connection 1 (taken and written under the writer lock).
    next_stream: Mutex<u32>,
    pending: Mutex<Pending>,
    violations: Mutex<Vec<String>>,
    closed: Mutex<Option<String>>,
    state_change_mode: AtomicBool,
    /// Every UpdateContainers request received.
    updates: Mutex<Vec<pb::UpdateContainersRequest>>,
    /// Sizes of every mux frame received, per connection.
    frames: Mutex<Vec<(u32, usize)>>,
}

/// One plugin connection, from the runtime's side.
pub struct PluginConn {
    shared: Arc<Shared>,
    handshakes: tokio::sync::Mutex<mpsc::UnboundedReceiver<Result<Handshake, PeerError>>>,
    reader: JoinHandle<()>,
    accepted: Instant,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PluginConn {
    /// Runs the runtime side on an already connected stream.
    pub fn from_stream(stream: UnixStream, options: PeerOptions) -> Self {
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            options,
            writer: tokio::sync::Mutex::new(Some(write)),
            next_stream: Mutex::new(1),
            pending: Mutex::new(HashMap::new()),
            violations: Mutex::new(Vec::new()),
            closed: Mutex::new(None),
            state_change_mode: AtomicBool::new(false),
            updates: Mutex::new(Vec::new()),
            frames: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(read, shared.clone(), tx));
        Self {
            shared,
            handshakes: tokio::sync::Mutex::new(rx),
            reader,
            accepted: Instant::now(),
        }
    }

    /// Waits for RegisterPlugin (within the registration timeout from the connection) and
    /// the answer to the Configure it triggers.
    pub async fn handshake(&self) -> Result<Handshake, PeerError> {
        let deadline = self.accepted
            + self.shared.options.registration_timeout
            + self.shared.options.request_timeout;
        let mut rx = self.handshakes.lock().await;
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(result)) => result,
            Ok(None) => Err(PeerError::Closed(self.close_reason().unwrap_or_default())),
            Err(_) => {
                self.close("registration timeout").await;
                Err(PeerError::Timeout(self.shared.options.registration_timeout))
            }
        }
    }

    /// Protocol violations seen so far.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.violations).clone()
    }

    /// UpdateContainers requests received.
    pub fn updates(&self) -> Vec<pb::UpdateContainersRequest> {
        lock(&self.shared.updates).clone()
    }

    /// Sizes of the mux frames received so far, per connection.
    pub fn frames(&self) -> Vec<(u32, usize)> {
        lock(&self.shared.frames).clone()
    }

    /// Why the connection closed, if it did.
    pub fn close_reason(&self) -> Option<String> {
        lock(&self.shared.closed).clone()
    }

    /// Whether pod events now go through StateChange (after an UNIMPLEMENTED fallback).
    pub fn in_state_change_mode(&self) -> bool {
        self.shared.state_change_mode.load(Ordering::SeqCst)
    }

    /// Closes the connection (as containerd does when it stops or drops the plugin).
    pub async fn close(&self, reason: &str) {
        close(&self.shared, reason).await;
        self.reader.abort();
    }

    /// Calls a Plugin method with its own request-timeout deadline.
    pub async fn call_raw(&self, method: &str, payload: Vec<u8>) -> Result<Vec<u8>, PeerError> {
        let deadline = Instant::now() + self.shared.options.request_timeout;
        call(&self.shared, method, payload, deadline).await
    }

    async fn call_msg<Req: Message, Resp: Message + Default>(
        &self,
        method: &str,
        request: &Req,
        deadline: Instant,
    ) -> Result<Resp, PeerError> {
        let payload = call(&self.shared, method, request.encode_to_vec(), deadline).await?;
        Resp::decode(payload.as_slice())
            .map_err(|e| self.violation(format!("{method} reply does not decode: {e}")))
    }

    fn violation(&self, what: String) -> PeerError {
        lock(&self.shared.violations).push(what.clone());
        PeerError::Protocol(what)
    }

    /// Synchronize in one message (`more = false`).
    pub async fn synchronize(
        &self,
        pods: Vec<pb::PodSandbox>,
        containers: Vec<pb::Container>,
    ) -> Result<pb::SynchronizeResponse, PeerError> {
        let mut replies = self.synchronize_split(vec![(pods, containers)]).await?;
        Ok(replies.remove(0))
    }

    /// A split Synchronize: every part but the last has `more = true`; all parts share one
    /// request-timeout deadline, and every `more` part must be answered `more = true` with
    /// no updates, the last `more = false` (§3.6).
    pub async fn synchronize_split(
        &self,
        parts: Vec<(Vec<pb::PodSandbox>, Vec<pb::Container>)>,
    ) -> Result<Vec<pb::SynchronizeResponse>, PeerError> {
        let deadline = Instant::now() + self.shared.options.request_timeout;
        let count = parts.len();
        let mut replies = Vec::new();
        for (i, (pods, containers)) in parts.into_iter().enumerate() {
            let more = i + 1 < count;
            let reply: pb::SynchronizeResponse = self
                .call_msg(
                    "Synchronize",
                    &pb::SynchronizeRequest {
                        pods,
                        containers,
                        more,
                    },
                    deadline,
                )
                .await?;
            if more && (!reply.more || !reply.update.is_empty()) {
                let e = self.violation(
                    "plugin does not handle split sync requests (more part not echoed)".into(),
                );
                self.close("split sync not handled").await;
                return Err(e);
            }
            if !more && reply.more {
                return Err(self.violation("final Synchronize part answered more = true".into()));
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    /// RunPodSandbox as NRI v0.12 sends it (with the StateChange fallback).
    pub async fn run_pod_sandbox(&self, pod: &pb::PodSandbox) -> Result<(), PeerError> {
        self.pod_event(pb::Event::RunPodSandbox, pod).await
    }

    /// StopPodSandbox.
    pub async fn stop_pod_sandbox(&self, pod: &pb::PodSandbox) -> Result<(), PeerError> {
        self.pod_event(pb::Event::StopPodSandbox, pod).await
    }

    /// RemovePodSandbox.
    pub async fn remove_pod_sandbox(&self, pod: &pb::PodSandbox) -> Result<(), PeerError> {
        self.pod_event(pb::Event::RemovePodSandbox, pod).await
    }

    /// A pod event: the dedicated RPC, or StateChange once the plugin has answered
    /// UNIMPLEMENTED to a dedicated one (§10.2).
    pub async fn pod_event(&self, event: pb::Event, pod: &pb::PodSandbox) -> Result<(), PeerError> {
        let deadline = Instant::now() + self.shared.options.request_timeout;
        if !self.in_state_change_mode() {
            let payload = pb::RunPodSandboxRequest {
                pod: Some(pod.clone()),
            }
            .encode_to_vec();
            let method = match event {
                pb::Event::RunPodSandbox => "RunPodSandbox",
                pb::Event::StopPodSandbox => "StopPodSandbox",
                _ => "RemovePodSandbox",
            };
            match call(&self.shared, method, payload, deadline).await {
                Err(PeerError::Status { code: 12, .. }) => {
                    self.shared.state_change_mode.store(true, Ordering::SeqCst);
                }
                other => return other.map(|_| ()),
            }
        }
        self.state_change(event, pod).await
    }

    /// StateChange for a pod event; UNIMPLEMENTED is a violation (§10.2).
    pub async fn state_change(
        &self,
        event: pb::Event,
        pod: &pb::PodSandbox,
    ) -> Result<(), PeerError> {
        let deadline = Instant::now() + self.shared.options.request_timeout;
        let request = pb::StateChangeEvent {
            event: event as i32,
            pod: Some(pod.clone()),
            container: None,
        };
        match self
            .call_msg::<_, pb::Empty>("StateChange", &request, deadline)
            .await
        {
            Err(PeerError::Status { code: 12, message }) => Err(self.violation(format!(
                "StateChange answered UNIMPLEMENTED ({message}): the pod fails and every later event arrives twice"
            ))),
            other => other.map(|_| ()),
        }
    }
}

impl Drop for PluginConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Closes the connection: fails pending calls, drops the write half (the reader, aborted
/// by the owner, drops the read half).
async fn close(shared: &Shared, reason: &str) {
    lock(&shared.closed).get_or_insert_with(|| reason.to_string());
    if let Some(mut write) = shared.writer.lock().await.take() {
        let _ = write.shutdown().await;
    }
    for (_, tx) in lock(&shared.pending).drain() {
        let _ = tx.send(Err(PeerError::Closed(reason.to_string())));
    }
}

/// Frames a ttRPC message as containerd does: whole up to 4096 bytes, else [4096, rest].
pub fn containerd_frames(conn: u32, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut push = |part: &[u8]| {
        out.extend_from_slice(&conn.to_be_bytes());
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    };
    if message.len() <= GO_BUFFER {
        push(message);
    } else {
        push(&message[..GO_BUFFER]);
        push(&message[GO_BUFFER..]);
    }
    out
}

/// A ttRPC frame: `[u32 len][u32 stream][u8 type][u8 flags]` + body.
pub fn ttrpc_frame(stream: u32, kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&stream.to_be_bytes());
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(body);
    out
}

async fn write_message(shared: &Shared, conn: u32, message: &[u8]) -> Result<(), PeerError> {
    let mut writer = shared.writer.lock().await;
    let Some(write) = writer.as_mut() else {
        return Err(PeerError::Closed(
            lock(&shared.closed).clone().unwrap_or_default(),
        ));
    };
    write
        .write_all(&containerd_frames(conn, message))
        .await
        .map_err(|e| PeerError::Closed(format!("write: {e}")))
}

/// Sends a Plugin request on connection 1; returns its stream id and the answer channel.
async fn start_call(
    shared: &Shared,
    method: &str,
    payload: Vec<u8>,
    deadline: Instant,
) -> Result<(u32, oneshot::Receiver<Result<Response, PeerError>>), PeerError> {
    let mut writer = shared.writer.lock().await;
    let Some(write) = writer.as_mut() else {
        return Err(PeerError::Closed(
            lock(&shared.closed).clone().unwrap_or_default(),
        ));
    };
    let stream_id = {
        let mut next = lock(&shared.next_stream);
        let id = *next;
        *next += 2;
        id
    };
    // As the Go client: the remaining time to the deadline, computed when sending.
    let timeout_nano = deadline
        .saturating_duration_since(Instant::now())
        .as_nanos() as i64;
    let body = Request {
        service: PLUGIN_SERVICE.into(),
        method: method.into(),
        payload,
        timeout_nano,
        metadata: Vec::new(),
    }
    .encode_to_vec();
    if body.len() > MAX_BODY {
        return Err(PeerError::Status {
            code: 8,
            message: format!("message length {} exceeds maximum message size", body.len()),
        });
    }
    let (tx, rx) = oneshot::channel();
    lock(&shared.pending).insert(stream_id, tx);
    write
        .write_all(&containerd_frames(
            PLUGIN_CONN,
            &ttrpc_frame(stream_id, 1, 0, &body),
        ))
        .await
        .map_err(|e| PeerError::Closed(format!("write: {e}")))?;
    Ok((stream_id, rx))
}

async fn finish_call(
    shared: &Shared,
    method: &str,
    stream_id: u32,
    rx: oneshot::Receiver<Result<Response, PeerError>>,
    deadline: Instant,
) -> Result<Vec<u8>, PeerError> {
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(Ok(response))) => match response.status {
            Some(status) if status.code != 0 => Err(PeerError::Status {
                code: status.code,
                message: status.message,
            }),
            _ => Ok(response.payload),
        },
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(PeerError::Closed("answer dropped".into())),
        Err(_) => {
            lock(&shared.pending).remove(&stream_id);
            // containerd closes a plugin that misses the deadline (§10.4).
            close(shared, &format!("{method}: context deadline exceeded")).await;
            Err(PeerError::Timeout(shared.options.request_timeout))
        }
    }
}

async fn call(
    shared: &Shared,
    method: &str,
    payload: Vec<u8>,
    deadline: Instant,
) -> Result<Vec<u8>, PeerError> {
    let (stream_id, rx) = start_call(shared, method, payload, deadline).await?;
    finish_call(shared, method, stream_id, rx, deadline).await
}

// ------------------------------------------------------------------ the Go reader model

/// The Go side's read path for one logical connection (§2.4): the mux hands over one whole
/// queued frame per `Read` and fails with ENOMEM if the destination is smaller; ttRPC reads
/// through a 4096-byte `bufio.Reader`, which reads straight into the destination only when
/// its buffer is empty and at least 4096 bytes are wanted, and otherwise fills its buffer
/// with one `Read` of 4096 bytes.
#[derive(Debug, Default)]
pub struct GoReader {
    frames: VecDeque<Vec<u8>>,
    buffered: VecDeque<u8>,
    header: Vec<u8>,
    body: Option<(usize, Vec<u8>)>,
}

/// A ttRPC message as read: the 10 header bytes and the body.
pub type GoMessage = ([u8; 10], Vec<u8>);

/// The Go reader's fatal error: a frame larger than the buffer it was read into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enomem {
    /// The frame size.
    pub frame: usize,
    /// The buffer size.
    pub buffer: usize,
}

impl GoReader {
    /// Queues one received mux frame's payload.
    pub fn push_frame(&mut self, payload: Vec<u8>) {
        self.frames.push_back(payload);
    }

    /// One `bufio.Reader.Read(p)` with `len(p) == want`; `None` if it would block.
    fn read(&mut self, want: usize) -> Result<Option<Vec<u8>>, Enomem> {
        if self.buffered.is_empty() {
            let Some(frame) = self.frames.pop_front() else {
                return Ok(None);
            };
            if want >= GO_BUFFER {
                if frame.len() > want {
                    return Err(Enomem {
                        frame: frame.len(),
                        buffer: want,
                    });
                }
                return Ok(Some(frame));
            }
            if frame.len() > GO_BUFFER {
                return Err(Enomem {
                    frame: frame.len(),
                    buffer: GO_BUFFER,
                });
            }
            self.buffered.extend(frame);
        }
        let n = want.min(self.buffered.len());
        Ok(Some(self.buffered.drain(..n).collect()))
    }

    /// The next whole ttRPC message if the queued frames complete one.
    pub fn next_message(&mut self) -> Result<Option<GoMessage>, Enomem> {
        loop {
            if self.header.len() < 10 {
                match self.read(10 - self.header.len())? {
                    Some(bytes) => self.header.extend(bytes),
                    None => return Ok(None),
                }
                continue;
            }
            let (length, body) = self.body.get_or_insert_with(|| {
                let h = &self.header;
                (
                    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize,
                    Vec::new(),
                )
            });
            let (length, have) = (*length, body.len());
            if have < length {
                match self.read(length - have)? {
                    Some(bytes) => {
                        if let Some((_, body)) = self.body.as_mut() {
                            body.extend(bytes);
                        }
                    }
                    None => return Ok(None),
                }
                continue;
            }
            let header: [u8; 10] = self.header[..10].try_into().unwrap_or([0; 10]);
            self.header.clear();
            let (_, body) = self.body.take().unwrap_or_default();
            return Ok(Some((header, body)));
        }
    }
}

async fn read_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    shared: Arc<Shared>,
    handshakes: mpsc::UnboundedSender<Result<Handshake, PeerError>>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut readers: HashMap<u32, GoReader> = HashMap::new();
    let mut runtime_service_dead = false;
    let mut last_plugin_stream = 0u32;
    loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                close(&shared, "EOF from the plugin").await;
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut offset = 0;
        while buf.len() - offset >= 8 {
            let conn = u32::from_be_bytes(buf[offset..offset + 4].try_into().unwrap_or([0; 4]));
            let len = u32::from_be_bytes(buf[offset + 4..offset + 8].try_into().unwrap_or([0; 4]))
                as usize;
            if buf.len() - offset - 8 < len {
                break;
            }
            let payload = buf[offset + 8..offset + 8 + len].to_vec();
            offset += 8 + len;
            lock(&shared.frames).push((conn, len));
            if conn != PLUGIN_CONN && conn != RUNTIME_CONN {
                continue;
            }
            if conn == RUNTIME_CONN && runtime_service_dead {
                continue;
            }
            let reader = readers.entry(conn).or_default();
            reader.push_frame(payload);
            loop {
                let message = match reader.next_message() {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(e) => {
                        lock(&shared.violations).push(format!(
                            "conn {conn}: cannot allocate memory: a {}-byte frame read into a {}-byte buffer (§2.4)",
                            e.frame, e.buffer
                        ));
                        if conn == PLUGIN_CONN {
                            close(&shared, "ttrpc: closed (ENOMEM on connection 1)").await;
                            return;
                        }
                        runtime_service_dead = true;
                        break;
                    }
                };
                let (header, body) = message;
                let stream = u32::from_be_bytes(header[4..8].try_into().unwrap_or([0; 4]));
                let (kind, flags) = (header[8], header[9]);
                if conn == PLUGIN_CONN {
                    on_plugin_response(&shared, stream, kind, flags, body);
                } else {
                    if stream % 2 == 0 || stream <= last_plugin_stream {
                        lock(&shared.violations)
                            .push(format!("conn 2: stream id {stream} not odd and rising"));
                    }
                    last_plugin_stream = stream;
                    on_plugin_request(&shared, stream, kind, flags, body, &handshakes).await;
                }
            }
            if conn == RUNTIME_CONN && runtime_service_dead {
                readers.remove(&RUNTIME_CONN);
            }
        }
        buf.drain(..offset);
    }
}

fn on_plugin_response(shared: &Shared, stream: u32, kind: u8, flags: u8, body: Vec<u8>) {
    if kind != 2 || flags != 0 {
        lock(&shared.violations).push(format!(
            "conn 1: stream {stream}: expected a Response with flags 0, got type {kind} flags {flags}"
        ));
        return;
    }
    let Some(tx) = lock(&shared.pending).remove(&stream) else {
        lock(&shared.violations).push(format!("conn 1: response for unknown stream {stream}"));
        return;
    };
    let answer = Response::decode(body.as_slice()).map_err(|e| {
        let what = format!("conn 1: stream {stream}: undecodable Response: {e}");
        lock(&shared.violations).push(what.clone());
        PeerError::Protocol(what)
    });
    let _ = tx.send(answer);
}

/// A Response body: no status at all when OK (containerd, §10.1).
fn response_body(status: Option<(i32, String)>, payload: Vec<u8>) -> Vec<u8> {
    Response {
        status: status.map(|(code, message)| nri::proto::google::rpc::Status {
            code,
            message,
            details: Vec::new(),
        }),
        payload,
    }
    .encode_to_vec()
}

fn valid_identity(r: &pb::RegisterPluginRequest) -> Result<(), String> {
    if r.plugin_idx.len() != 2 || !r.plugin_idx.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid plugin index {:?}", r.plugin_idx));
    }
    if r.plugin_name.is_empty()
        || !r
            .plugin_name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.+-".contains(&b))
    {
        return Err(format!("invalid plugin name {:?}", r.plugin_name));
    }
    Ok(())
}

async fn on_plugin_request(
    shared: &Arc<Shared>,
    stream: u32,
    kind: u8,
    flags: u8,
    body: Vec<u8>,
    handshakes: &mpsc::UnboundedSender<Result<Handshake, PeerError>>,
) {
    let reply = |status: Option<(i32, String)>, payload: Vec<u8>| {
        ttrpc_frame(stream, 2, 0, &response_body(status, payload))
    };
    if kind != 1 || flags != 0 {
        lock(&shared.violations).push(format!(
            "conn 2: stream {stream}: expected a unary Request, got type {kind} flags {flags}"
        ));
        return;
    }
    let request = match Request::decode(body.as_slice()) {
        Ok(r) => r,
        Err(e) => {
            lock(&shared.violations).push(format!("conn 2: undecodable Request: {e}"));
            let _ = write_message(
                shared,
                RUNTIME_CONN,
                &reply(Some((3, e.to_string())), vec![]),
            )
            .await;
            return;
        }
    };
    if request.service != RUNTIME_SERVICE {
        let _ = write_message(
            shared,
            RUNTIME_CONN,
            &reply(Some((12, format!("service {}", request.service))), vec![]),
        )
        .await;
        return;
    }
    match request.method.as_str() {
        "RegisterPlugin" => {
            let registration = match pb::RegisterPluginRequest::decode(request.payload.as_slice()) {
                Ok(r) => r,
                Err(e) => {
                    let _ = write_message(
                        shared,
                        RUNTIME_CONN,
                        &reply(Some((3, e.to_string())), vec![]),
                    )
                    .await;
                    return;
                }
            };
            let refusal = shared
                .options
                .reject_registration
                .clone()
                .map(Err)
                .unwrap_or_else(|| valid_identity(&registration));
            if let Err(why) = refusal {
                // §10.1: status 2, socket left open.
                let _ = write_message(shared, RUNTIME_CONN, &reply(Some((2, why.clone())), vec![]))
                    .await;
                let _ = handshakes.send(Err(PeerError::Status {
                    code: 2,
                    message: why,
                }));
                return;
            }
            // §3.3: Configure goes out before the RegisterPlugin answer.
            let deadline = Instant::now() + shared.options.request_timeout;
            let configure = shared.options.configure.encode_to_vec();
            let started = start_call(shared, "Configure", configure, deadline).await;
            let _ = write_message(shared, RUNTIME_CONN, &reply(None, vec![])).await;
            let shared = shared.clone();
            let handshakes = handshakes.clone();
            tokio::spawn(async move {
                let result = match started {
                    Ok((id, rx)) => finish_call(&shared, "Configure", id, rx, deadline).await,
                    Err(e) => Err(e),
                };
                let result = result.and_then(|payload| {
                    let answer = pb::ConfigureResponse::decode(payload.as_slice())
                        .map_err(|e| PeerError::Protocol(format!("ConfigureResponse: {e}")))?;
                    let events = if answer.events == 0 {
                        VALID_EVENTS
                    } else {
                        answer.events
                    };
                    if events & !VALID_EVENTS != 0 {
                        return Err(PeerError::Protocol(format!(
                            "invalid plugin events {:#x}",
                            answer.events
                        )));
                    }
                    Ok(Handshake {
                        registration,
                        events: answer.events,
                    })
                });
                if let Err(e) = &result {
                    lock(&shared.violations).push(format!("Configure: {e}"));
                    close(&shared, "Configure failed").await;
                }
                let _ = handshakes.send(result);
            });
        }
        "UpdateContainers" => {
            match pb::UpdateContainersRequest::decode(request.payload.as_slice()) {
                Ok(update) => lock(&shared.updates).push(update),
                Err(e) => lock(&shared.violations).push(format!("UpdateContainers: {e}")),
            }
            let answer = pb::UpdateContainersResponse::default().encode_to_vec();
            let _ = write_message(shared, RUNTIME_CONN, &reply(None, answer)).await;
        }
        other => {
            let _ = write_message(
                shared,
                RUNTIME_CONN,
                &reply(Some((12, format!("method {other}"))), vec![]),
            )
            .await;
        }
    }
}

// ------------------------------------------------------------------ sandboxes

/// A pod sandbox as containerd reports it at RunPodSandbox: namespaces from the pause
/// container's spec (network = `netns`, absent for host network), pid, IPs, labels and
/// annotations (CRI plus containerd's own).
pub fn pod_sandbox(
    namespace: &str,
    name: &str,
    id: &str,
    netns: Option<&Path>,
    annotations: &[(&str, &str)],
) -> pb::PodSandbox {
    let mut all_annotations: std::collections::BTreeMap<String, String> = [
        ("io.kubernetes.cri.container-type", "sandbox"),
        ("io.kubernetes.cri.sandbox-id", id),
        ("io.kubernetes.cri.sandbox-name", name),
        ("io.kubernetes.cri.sandbox-namespace", namespace),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    all_annotations.extend(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut namespaces = vec![
        pb::LinuxNamespace {
            r#type: "pid".into(),
            path: String::new(),
        },
        pb::LinuxNamespace {
            r#type: "ipc".into(),
            path: String::new(),
        },
        pb::LinuxNamespace {
            r#type: "uts".into(),
            path: String::new(),
        },
        pb::LinuxNamespace {
            r#type: "mount".into(),
            path: String::new(),
        },
    ];
    if let Some(netns) = netns {
        namespaces.push(pb::LinuxNamespace {
            r#type: "network".into(),
            path: netns.display().to_string(),
        });
    }
    pb::PodSandbox {
        id: id.into(),
        name: name.into(),
        uid: format!(
            "{:0>8}-0000-4000-8000-{:0>12}",
            &id[..8.min(id.len())],
            name.len()
        ),
        namespace: namespace.into(),
        labels: [
            ("io.kubernetes.pod.name".to_string(), name.to_string()),
            (
                "io.kubernetes.pod.namespace".to_string(),
                namespace.to_string(),
            ),
        ]
        .into_iter()
        .collect(),
        annotations: all_annotations,
        runtime_handler: String::new(),
        linux: Some(pb::LinuxPodSandbox {
            cgroup_parent: "/kubepods/besteffort".into(),
            cgroups_path: format!("kubepods-besteffort:cri-containerd:{id}"),
            namespaces,
            ..Default::default()
        }),
        pid: 4242,
        ips: Vec::new(),
    }
}

/// A running container of a sandbox, with containerd-like detail (for large syncs).
pub fn container(sandbox: &pb::PodSandbox, index: usize) -> pb::Container {
    pb::Container {
        id: format!("{:064x}", index + 0x1000),
        pod_sandbox_id: sandbox.id.clone(),
        name: format!("app-{index}"),
        state: pb::ContainerState::ContainerRunning as i32,
        labels: [(
            "io.kubernetes.container.name".to_string(),
            format!("app-{index}"),
        )]
        .into_iter()
        .collect(),
        annotations: [(
            "io.kubernetes.cri.container-type".to_string(),
            "container".to_string(),
        )]
        .into_iter()
        .collect(),
        args: vec!["/bin/sh".into(), "-c".into(), "sleep infinity".into()],
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            format!("HOSTNAME={}", sandbox.name),
            "KUBERNETES_SERVICE_HOST=10.96.0.1".into(),
        ],
        mounts: vec![pb::Mount {
            destination: "/etc/hosts".into(),
            r#type: "bind".into(),
            source: format!("/var/lib/kubelet/pods/{}/etc-hosts", sandbox.uid),
            options: vec!["rbind".into(), "rprivate".into(), "rw".into()],
        }],
        pid: 5000 + index as u32,
        created_at: 1_700_000_000_000_000_000,
        started_at: 1_700_000_000_100_000_000,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body_len: usize) -> Vec<u8> {
        ttrpc_frame(1, 2, 0, &vec![0xAB; body_len])
    }

    /// Runs frames through the model; Ok(number of messages) or the ENOMEM.
    fn feed(frames: Vec<Vec<u8>>) -> Result<usize, Enomem> {
        let mut reader = GoReader::default();
        let mut count = 0;
        for frame in frames {
            reader.push_frame(frame);
            while reader.next_message()?.is_some() {
                count += 1;
            }
        }
        Ok(count)
    }

    // PROTOCOL.md §2.4 table, for a 20 000-byte body.
    #[test]
    fn go_reader_model_matches_the_protocol_table() {
        let big = message(20_000);
        assert!(feed(vec![big.clone()]).is_err(), "one 20 010-byte frame");
        assert_eq!(feed(vec![big[..10].to_vec(), big[10..].to_vec()]), Ok(1));
        assert_eq!(
            feed(vec![big[..4096].to_vec(), big[4096..].to_vec()]),
            Ok(1)
        );
        assert_eq!(feed(big.chunks(4096).map(<[u8]>::to_vec).collect()), Ok(1));
        assert_eq!(feed(big.chunks(3).map(<[u8]>::to_vec).collect()), Ok(1));
        let small = message(100);
        assert_eq!(feed(vec![[small.clone(), small.clone()].concat()]), Ok(2));
        assert!(feed(vec![[small.clone(), big.clone()].concat()]).is_err());
        assert_eq!(feed(vec![message(4086)]), Ok(1), "exactly 4096 bytes");
        assert!(feed(vec![message(4087)]).is_err(), "4097 bytes");
    }

    #[test]
    fn containerd_framing_is_accepted_by_the_model() {
        for len in [0, 100, 4086, 4087, 12_000, 1 << 20] {
            let framed = containerd_frames(1, &message(len));
            let mut frames = Vec::new();
            let mut rest = framed.as_slice();
            while !rest.is_empty() {
                let n = u32::from_be_bytes(rest[4..8].try_into().unwrap()) as usize;
                frames.push(rest[8..8 + n].to_vec());
                rest = &rest[8 + n..];
            }
            assert!(frames.len() <= 2);
            assert_eq!(feed(frames), Ok(1), "{len}");
        }
    }
}
