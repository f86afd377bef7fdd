//! The unary ttRPC server side of one logical connection.
//!
//! Requests are checked the way Go ttRPC checks them (PROTOCOL.md §1.5-§1.6), each answer
//! going to the request's stream id while the connection stays up:
//!
//! | request | answer |
//! |---|---|
//! | even stream id, or an id not above the last one seen | INVALID_ARGUMENT |
//! | body announced over 4 MiB (read and discarded) | RESOURCE_EXHAUSTED |
//! | body not a `ttrpc.Request` | INVALID_ARGUMENT |
//! | streaming (`remote-open` flag) | UNIMPLEMENTED |
//! | unknown service or method | UNIMPLEMENTED (12), never NOT_FOUND |
//! | handler still running at the `timeout_nano` deadline | DEADLINE_EXCEEDED |
//! | handler reply over 4 MiB | RESOURCE_EXHAUSTED |
//!
//! Every handler runs in its own task, so the reader is never blocked by one. Every Response
//! carries an explicit status (OK is the empty `google.rpc.Status`), as Go servers send.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::proto::ttrpc::{Request, Response};
use prost::Message;
use slog::{Logger, debug, warn};
use tokio::time::Instant;

use crate::ttrpc::frame::{self, Decoded, FLAG_REMOTE_OPEN, MAX_BODY_LEN, MessageType};
use crate::ttrpc::outgoing::{Outgoing, WriterQueue};
use crate::ttrpc::status::{Code, Status};

/// What a handler gets besides the payload.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The stream id of the request.
    pub stream_id: u32,
    /// When the caller gives up (`timeout_nano`), if it set a deadline.
    pub deadline: Option<Instant>,
    /// The request metadata, in order.
    pub metadata: Vec<(String, String)>,
}

/// A handler's eventual answer: the encoded response message, or an error status.
pub type Reply = Pin<Box<dyn Future<Output = Result<Vec<u8>, Status>> + Send>>;

/// A ttRPC service: a fully-qualified name and a method dispatcher.
pub trait Service: Send + Sync + 'static {
    /// The fully-qualified service name, e.g. `nri.pkg.api.v1alpha1.Plugin`.
    fn name(&self) -> &str;

    /// Handles `method` with the encoded request `payload`. Unknown methods must answer
    /// [`Status::unimplemented`] (see [`unimplemented`]).
    fn call(&self, method: &str, payload: Vec<u8>, ctx: RequestContext) -> Reply;
}

/// The answer for a method a service does not serve: UNIMPLEMENTED (12).
pub fn unimplemented(service: &str, method: &str) -> Reply {
    let status = Status::unimplemented(format!("{service}: method {method} not implemented"));
    Box::pin(async move { Err(status) })
}

/// Decodes a request message, INVALID_ARGUMENT naming the method if it does not parse.
pub fn decode_request<M: Message + Default>(method: &str, payload: &[u8]) -> Result<M, Status> {
    M::decode(payload)
        .map_err(|e| Status::invalid_argument(format!("cannot decode the {method} request: {e}")))
}

/// The server state of one logical connection (owned by the connection's reader task).
pub struct ServerConn {
    conn: u32,
    services: HashMap<String, Arc<dyn Service>>,
    queue: WriterQueue,
    last_stream_id: u32,
    log: Logger,
}

impl ServerConn {
    /// A server for `services` on logical connection `conn`, answering through `queue`.
    pub fn new(
        conn: u32,
        services: HashMap<String, Arc<dyn Service>>,
        queue: WriterQueue,
        log: Logger,
    ) -> Self {
        Self {
            conn,
            services,
            queue,
            last_stream_id: 0,
            log,
        }
    }

    /// Handles one decoded item of this connection.
    pub fn handle(&mut self, item: Decoded) {
        let frame = match item {
            Decoded::Oversize {
                stream_id,
                kind: MessageType::Request,
                length,
            } => {
                warn!(self.log, "oversized request discarded"; "stream" => stream_id, "length" => length);
                self.respond_status(
                    stream_id,
                    Status::resource_exhausted(format!(
                        "message length {length} exceeds the maximum message size of {MAX_BODY_LEN}"
                    )),
                );
                return;
            }
            Decoded::Oversize {
                stream_id,
                kind,
                length,
            } => {
                debug!(self.log, "oversized frame discarded";
                    "stream" => stream_id, "type" => ?kind, "length" => length);
                return;
            }
            Decoded::Frame(frame) => frame,
        };
        if frame.kind != MessageType::Request {
            debug!(self.log, "ignoring a non-request frame on a server connection";
                "stream" => frame.stream_id, "type" => ?frame.kind);
            return;
        }
        let stream_id = frame.stream_id;
        if stream_id % 2 == 0 {
            self.respond_status(
                stream_id,
                Status::invalid_argument(format!(
                    "stream id {stream_id} is even: client streams must be odd"
                )),
            );
            return;
        }
        if stream_id <= self.last_stream_id {
            self.respond_status(
                stream_id,
                Status::invalid_argument(format!(
                    "stream id {stream_id} is not above the last one, {}",
                    self.last_stream_id
                )),
            );
            return;
        }
        self.last_stream_id = stream_id;
        if frame.flags & FLAG_REMOTE_OPEN != 0 {
            self.respond_status(
                stream_id,
                Status::unimplemented("streaming calls are not supported"),
            );
            return;
        }
        let request = match Request::decode(frame.body.as_slice()) {
            Ok(request) => request,
            Err(e) => {
                self.respond_status(
                    stream_id,
                    Status::invalid_argument(format!("cannot decode the ttRPC request: {e}")),
                );
                return;
            }
        };
        let Some(service) = self.services.get(&request.service).cloned() else {
            self.respond_status(
                stream_id,
                Status::unimplemented(format!("service {} not implemented", request.service)),
            );
            return;
        };
        let deadline = u64::try_from(request.timeout_nano)
            .ok()
            .filter(|ns| *ns > 0)
            .map(|ns| Instant::now() + Duration::from_nanos(ns));
        let ctx = RequestContext {
            stream_id,
            deadline,
            metadata: request
                .metadata
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect(),
        };
        debug!(self.log, "request"; "stream" => stream_id, "method" => &request.method,
            "bytes" => request.payload.len());
        let reply = service.call(&request.method, request.payload, ctx);
        let queue = self.queue.clone();
        let conn = self.conn;
        let method = request.method;
        tokio::spawn(async move {
            let result = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, reply).await {
                    Ok(result) => result,
                    Err(_) => Err(Status::new(
                        Code::DeadlineExceeded,
                        format!("{method}: the caller's deadline passed before an answer"),
                    )),
                },
                None => reply.await,
            };
            let response = match result {
                Ok(payload) => Response {
                    status: Some(Status::ok().to_proto()),
                    payload,
                },
                Err(status) => Response {
                    status: Some(status.to_proto()),
                    payload: Vec::new(),
                },
            };
            send_response(&queue, conn, stream_id, &response);
        });
    }

    fn respond_status(&self, stream_id: u32, status: Status) {
        let response = Response {
            status: Some(status.to_proto()),
            payload: Vec::new(),
        };
        send_response(&self.queue, self.conn, stream_id, &response);
    }
}

/// Encodes and queues a Response; one over 4 MiB becomes RESOURCE_EXHAUSTED.
fn send_response(queue: &WriterQueue, conn: u32, stream_id: u32, response: &Response) {
    let body = response.encode_to_vec();
    let message = match frame::encode(stream_id, MessageType::Response, 0, &body) {
        Ok(message) => message,
        Err(e) => {
            let fallback = Response {
                status: Some(Status::resource_exhausted(e.to_string()).to_proto()),
                payload: Vec::new(),
            };
            match frame::encode(
                stream_id,
                MessageType::Response,
                0,
                &fallback.encode_to_vec(),
            ) {
                Ok(message) => message,
                // Cannot happen: the fallback is a few dozen bytes.
                Err(_) => return,
            }
        }
    };
    // A closed connection drops the answer, which nobody could receive anyway.
    let _ = queue.send(Outgoing { conn, message });
}
