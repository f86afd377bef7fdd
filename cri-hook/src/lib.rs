//! `cri_hook`: the runtime adapters of netns-holder. They hold no networking logic: every
//! runtime event becomes a call to the netns-holder daemon's API
//! ([`netns_holder::client::Client`]).
//!
//! The NRI plugin's protocol stack, bottom up (the plugin itself follows):
//!
//! * [`ttrpc`]: ttRPC frames, statuses, a unary client and server (PROTOCOL.md §1).
//! * [`mux`]: the NRI connection multiplexer's framing, with the Go-compatible split rule
//!   for everything sent (§2.4) and a streaming decoder accepting any frame size.
//! * [`conn`]: one unix stream carrying several logical ttRPC connections, with one
//!   writer task and one reader task.

pub mod conn;
pub mod mux;
pub mod ttrpc;
