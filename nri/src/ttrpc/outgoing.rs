//! The outgoing side shared by the ttRPC halves and the connection that carries them: the
//! queue of whole messages the connection's single writer task frames and sends
//! ([`Outgoing`], [`WriterQueue`]), and the connection's close state ([`CloseSignal`]).
//!
//! The ttRPC client and server only queue messages and watch the close state; the
//! connection ([`crate::conn`]) owns the writer task at the other end of the queue. This
//! file sits below both, so neither reaches into the other.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

/// One whole ttRPC message (header and body) to send on a logical connection.
#[derive(Debug)]
pub struct Outgoing {
    /// The logical connection id.
    pub conn: u32,
    /// The encoded ttRPC frame.
    pub message: Vec<u8>,
}

/// The sending side of the writer task's queue.
pub type WriterQueue = mpsc::UnboundedSender<Outgoing>;

/// The connection's close state, shared by its tasks, servers and clients: `None` while
/// open, then the reason it closed.
#[derive(Debug, Clone)]
pub struct CloseSignal {
    tx: Arc<watch::Sender<Option<String>>>,
}

impl CloseSignal {
    /// An open connection's signal.
    pub(crate) fn new() -> Self {
        Self {
            tx: Arc::new(watch::Sender::new(None)),
        }
    }

    /// Marks the connection closed with `reason` (the first reason wins).
    pub fn close(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.tx.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(reason);
                true
            } else {
                false
            }
        });
    }

    /// The reason, if closed.
    pub fn reason(&self) -> Option<String> {
        self.tx.borrow().clone()
    }

    /// Resolves with the reason once the connection is closed.
    pub async fn wait(&self) -> String {
        let mut rx = self.tx.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            // The sender lives in `self`, so this cannot happen; treat it as closed.
            Err(_) => "connection state dropped".to_string(),
        }
    }
}
