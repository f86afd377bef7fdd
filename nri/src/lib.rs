//! `nri`: the NRI (Node Resource Interface) plugin side, in Rust, on tokio and prost. It knows
//! nothing of netns-holder: it is the protocol layer `cri-hook` builds its plugin on, and a
//! small stub anyone can write an NRI plugin with.
//!
//! The layers, bottom up (each imports only those above it in this list):
//!
//! * [`proto`]: the protobuf messages (NRI `nri.pkg.api.v1alpha1`, also as [`pb`]; the
//!   ttRPC envelope; `google.rpc.Status`), compiled by `build.rs` without a system `protoc`.
//! * [`ttrpc`]: ttRPC frames, statuses, the outgoing queue, a unary client and server
//!   (PROTOCOL.md §1).
//! * [`mux`]: the NRI connection multiplexer's framing, with the Go-compatible split rule
//!   for everything sent (§2.4) and a streaming decoder accepting any frame size.
//! * [`conn`]: one unix stream carrying several logical ttRPC connections, serving and
//!   calling services, with one writer task and one reader task.
//! * [`api`]: NRI constants and rules (services, connection ids, methods, events, identity).
//! * [`run`]: obtaining the connection (dial or inherited fd 3), registration, reconnection
//!   with backoff, shutdown, for any Plugin service.
//! * [`stub`]: a plugin as a trait with one method per event (default no-ops): the
//!   Configure/Synchronize/Shutdown handling and the event dispatch, run by [`run`].

pub mod api;
pub mod conn;
pub mod mux;
pub mod proto;
pub mod run;
pub mod stub;
pub mod ttrpc;

pub use api::pb;
