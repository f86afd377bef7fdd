//! The unary ttRPC client side of one logical connection.
//!
//! Stream ids are 1, 3, 5, ... (PROTOCOL.md §1.6); an id is taken and its request queued
//! to the writer under one lock, so ids reach the wire strictly increasing even with
//! concurrent callers (the Go server rejects a request whose id is not above the last).
//! Each call sends its timeout as `timeout_nano` and gives up locally when it passes. A
//! request over 4 MiB is refused locally with RESOURCE_EXHAUSTED, as the Go client does. A
//! Response without a status is OK.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::proto::ttrpc::{Request, Response};
use prost::Message;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::ttrpc::frame::{self, Decoded, MAX_BODY_LEN, MessageType};
use crate::ttrpc::outgoing::{CloseSignal, Outgoing, WriterQueue};
use crate::ttrpc::status::Status;

/// Why a call failed, naming the call.
#[derive(Debug, Error)]
#[error("ttRPC call {service}/{method}: {kind}")]
pub struct CallError {
    /// The service called.
    pub service: String,
    /// The method called.
    pub method: String,
    /// What went wrong.
    pub kind: CallErrorKind,
}

/// What went wrong with a call.
#[derive(Debug, Error)]
pub enum CallErrorKind {
    /// The server answered with an error status.
    #[error("the server answered {0}")]
    Status(Status),
    /// No answer before the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The connection closed before an answer.
    #[error("the connection is closed ({0})")]
    Closed(String),
    /// The request is over the 4 MiB limit (not sent).
    #[error(
        "the request is {0} bytes long, over the {MAX_BODY_LEN}-byte limit (RESOURCE_EXHAUSTED)"
    )]
    TooLarge(usize),
    /// The answer's payload is not the expected message.
    #[error("cannot decode the answer: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl CallError {
    /// The error status the server answered, if that is what failed.
    pub fn status(&self) -> Option<&Status> {
        match &self.kind {
            CallErrorKind::Status(status) => Some(status),
            _ => None,
        }
    }
}

type Pending = HashMap<u32, oneshot::Sender<Result<Response, Status>>>;

struct Inner {
    conn: u32,
    queue: WriterQueue,
    closed: CloseSignal,
    /// The next stream id; also the lock that orders ids on the wire.
    next_stream_id: Mutex<u32>,
    pending: Mutex<Pending>,
}

/// A ttRPC client; cheap to clone (clones share the connection and stream ids).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// A client sending on logical connection `conn` through `queue`.
    pub(crate) fn new(conn: u32, queue: WriterQueue, closed: CloseSignal) -> Self {
        Self {
            inner: Arc::new(Inner {
                conn,
                queue,
                closed,
                next_stream_id: Mutex::new(1),
                pending: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Calls `service`/`method` with an encoded request; returns the encoded answer.
    pub async fn call_raw(
        &self,
        service: &str,
        method: &str,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let error = |kind| CallError {
            service: service.to_string(),
            method: method.to_string(),
            kind,
        };
        if let Some(reason) = self.inner.closed.reason() {
            return Err(error(CallErrorKind::Closed(reason)));
        }
        let request = Request {
            service: service.to_string(),
            method: method.to_string(),
            payload,
            timeout_nano: i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX),
            metadata: Vec::new(),
        };
        let body = request.encode_to_vec();
        let (tx, rx) = oneshot::channel();
        let stream_id = {
            let mut next = lock(&self.inner.next_stream_id);
            let stream_id = *next;
            let message = frame::encode(stream_id, MessageType::Request, 0, &body)
                .map_err(|_| error(CallErrorKind::TooLarge(body.len())))?;
            lock(&self.inner.pending).insert(stream_id, tx);
            if self
                .inner
                .queue
                .send(Outgoing {
                    conn: self.inner.conn,
                    message,
                })
                .is_err()
            {
                lock(&self.inner.pending).remove(&stream_id);
                return Err(error(CallErrorKind::Closed("writer stopped".into())));
            }
            *next = next.wrapping_add(2);
            stream_id
        };
        let outcome = tokio::select! {
            // An answer that arrived before the connection closed is the answer: the reader
            // delivers it first and only then sees the end of the stream, and an unbiased
            // select would pick either at random when both are ready.
            biased;
            answer = tokio::time::timeout(timeout, rx) => answer,
            reason = self.inner.closed.wait() => {
                lock(&self.inner.pending).remove(&stream_id);
                return Err(error(CallErrorKind::Closed(reason)));
            }
        };
        match outcome {
            Err(_) => {
                lock(&self.inner.pending).remove(&stream_id);
                Err(error(CallErrorKind::Timeout(timeout)))
            }
            Ok(Err(_)) => Err(error(CallErrorKind::Closed("answer dropped".into()))),
            Ok(Ok(Err(status))) => Err(error(CallErrorKind::Status(status))),
            Ok(Ok(Ok(response))) => {
                let status = Status::from_proto(response.status.as_ref());
                if status.is_ok() {
                    Ok(response.payload)
                } else {
                    Err(error(CallErrorKind::Status(status)))
                }
            }
        }
    }

    /// Calls `service`/`method` with a request message and decodes the answer as `Resp`.
    pub async fn call<Req: Message, Resp: Message + Default>(
        &self,
        service: &str,
        method: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        let payload = self
            .call_raw(service, method, request.encode_to_vec(), timeout)
            .await?;
        Resp::decode(payload.as_slice()).map_err(|e| CallError {
            service: service.to_string(),
            method: method.to_string(),
            kind: CallErrorKind::Decode(e),
        })
    }

    /// Delivers a decoded item of this connection to the call waiting for it.
    pub(crate) fn handle(&self, item: Decoded) {
        let (stream_id, answer) = match item {
            Decoded::Frame(f) if f.kind == MessageType::Response => {
                let answer = Response::decode(f.body.as_slice()).map_err(|e| {
                    Status::internal(format!("cannot decode the ttRPC response: {e}"))
                });
                (f.stream_id, answer)
            }
            Decoded::Oversize {
                stream_id,
                kind: MessageType::Response,
                length,
            } => (
                stream_id,
                Err(Status::resource_exhausted(format!(
                    "response of {length} bytes exceeds the maximum message size of {MAX_BODY_LEN}"
                ))),
            ),
            // Requests or data on a client connection: nothing to do.
            _ => return,
        };
        if let Some(tx) = lock(&self.inner.pending).remove(&stream_id) {
            let _ = tx.send(answer);
        }
    }
}

/// Locks a mutex, ignoring poisoning (the protected maps stay consistent on panic).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
