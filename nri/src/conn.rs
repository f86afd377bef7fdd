//! A multiplexed connection over one unix stream: one reader task, one writer task, and per
//! logical connection either a ttRPC server ([`crate::ttrpc::server`]) or a ttRPC client
//! ([`crate::ttrpc::client::Client`]).
//!
//! * Writes: everything goes through the single writer task as whole ttRPC messages
//!   ([`Outgoing`]); the writer frames each one with [`crate::mux::frame_message`] (the §2.4
//!   rule) and writes frames whole, so frames of different messages never interleave.
//!   Messages queued together are written with one `write_all`.
//! * Reads: the reader task feeds a [`TrunkDecoder`] and hands requests to the servers
//!   (which spawn one task per request, so the reader never waits for a handler) and
//!   responses to the clients' pending calls.
//! * Closing: EOF or an error on either half, or [`Connection::close`], closes the whole
//!   connection; [`Connection::closed`] reports why. Pending client calls fail at once.

use std::collections::HashMap;
use std::sync::Arc;

use slog::{Logger, debug, o};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::mux::{TrunkDecoder, frame_message};
use crate::ttrpc::client::Client;
use crate::ttrpc::outgoing::{CloseSignal, Outgoing, WriterQueue};
use crate::ttrpc::server::{ServerConn, Service};

/// Sets up the logical connections of a [`Connection`] before it starts.
pub struct ConnectionBuilder {
    log: Logger,
    queue: WriterQueue,
    queue_rx: mpsc::UnboundedReceiver<Outgoing>,
    closed: CloseSignal,
    servers: HashMap<u32, HashMap<String, Arc<dyn Service>>>,
    clients: HashMap<u32, Client>,
}

impl ConnectionBuilder {
    /// A builder; `log` gets the connection's messages.
    pub fn new(log: Logger) -> Self {
        let (queue, queue_rx) = mpsc::unbounded_channel();
        Self {
            log,
            queue,
            queue_rx,
            closed: CloseSignal::new(),
            servers: HashMap::new(),
            clients: HashMap::new(),
        }
    }

    /// Serves `service` on logical connection `conn` (several services may share one).
    pub fn serve(mut self, conn: u32, service: Arc<dyn Service>) -> Self {
        self.servers
            .entry(conn)
            .or_default()
            .insert(service.name().to_string(), service);
        self
    }

    /// A ttRPC client on logical connection `conn` (stream ids 1, 3, 5, ...). Usable once
    /// the connection has started.
    pub fn client(&mut self, conn: u32) -> Client {
        self.clients
            .entry(conn)
            .or_insert_with(|| Client::new(conn, self.queue.clone(), self.closed.clone()))
            .clone()
    }

    /// Starts the reader and writer tasks on `stream`.
    pub fn start(self, stream: UnixStream) -> Connection {
        let (read, write) = stream.into_split();
        let conns: Vec<u32> = self
            .servers
            .keys()
            .chain(self.clients.keys())
            .copied()
            .collect();
        let mut routes = HashMap::new();
        for (conn, services) in self.servers {
            let log = self.log.new(o!("conn" => conn));
            routes.insert(
                conn,
                Route::Server(ServerConn::new(conn, services, self.queue.clone(), log)),
            );
        }
        for (conn, client) in self.clients {
            routes.insert(conn, Route::Client(client));
        }
        let writer = tokio::spawn(write_loop(write, self.queue_rx, self.closed.clone()));
        let reader = tokio::spawn(read_loop(
            read,
            TrunkDecoder::new(&conns),
            routes,
            self.closed.clone(),
            self.log.clone(),
        ));
        Connection {
            closed: self.closed,
            reader,
            writer,
        }
    }
}

/// Where the reader sends a logical connection's items.
enum Route {
    Server(ServerConn),
    Client(Client),
}

/// A running multiplexed connection; dropping it closes it.
pub struct Connection {
    closed: CloseSignal,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl Connection {
    /// Resolves with the reason once the connection has closed (EOF, an I/O error, or
    /// [`Connection::close`]).
    pub async fn closed(&self) -> String {
        self.closed.wait().await
    }

    /// Whether the connection is closed, and why.
    pub fn close_reason(&self) -> Option<String> {
        self.closed.reason()
    }

    /// Closes the connection: both tasks stop and the socket is closed.
    pub fn close(&self, reason: &str) {
        self.closed.close(reason);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.closed.close("connection dropped");
        self.reader.abort();
        self.writer.abort();
    }
}

/// Largest batch of queued frames written with one `write_all`.
const WRITE_BATCH: usize = 256 * 1024;

async fn write_loop(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    closed: CloseSignal,
) {
    let mut buf = Vec::new();
    loop {
        let next = tokio::select! {
            next = queue.recv() => next,
            _ = closed.wait() => None,
        };
        let Some(first) = next else { break };
        buf.clear();
        frame_message(first.conn, &first.message, &mut buf);
        while buf.len() < WRITE_BATCH {
            match queue.try_recv() {
                Ok(more) => {
                    frame_message(more.conn, &more.message, &mut buf);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = write.write_all(&buf).await {
            closed.close(format!("cannot write to the connection: {e}"));
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// Size of the reader's buffer.
const READ_BUFFER: usize = 64 * 1024;

async fn read_loop(
    mut read: OwnedReadHalf,
    mut decoder: TrunkDecoder,
    mut routes: HashMap<u32, Route>,
    closed: CloseSignal,
    log: Logger,
) {
    let mut buf = vec![0u8; READ_BUFFER];
    let mut items = Vec::new();
    loop {
        let n = tokio::select! {
            n = read.read(&mut buf) => n,
            _ = closed.wait() => return,
        };
        let n = match n {
            Ok(0) => {
                closed.close("end of file: the runtime closed the connection");
                return;
            }
            Ok(n) => n,
            Err(e) => {
                closed.close(format!("cannot read from the connection: {e}"));
                return;
            }
        };
        let dropped_before = decoder.dropped_bytes();
        decoder.feed(&buf[..n], &mut items);
        if decoder.dropped_bytes() != dropped_before {
            debug!(log, "dropped bytes for unopened connection ids";
                "total" => decoder.dropped_bytes());
        }
        for (conn, item) in items.drain(..) {
            match routes.get_mut(&conn) {
                Some(Route::Server(server)) => server.handle(item),
                Some(Route::Client(client)) => client.handle(item),
                None => {}
            }
        }
    }
}
