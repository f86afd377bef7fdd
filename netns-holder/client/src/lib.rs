//! `netns_holder_client`: the netns-holder API client and the conversions between the API's
//! protobuf messages and the core types, for the runtime adapters (`cri-hook`) and the CLI.
//!
//! It builds on `netns-holder-proto` and `netns-holder-core` only, so an adapter that talks to
//! the daemon compiles neither rtnetlink, caps nor clap.
//!
//! * [`api`]: the messages ([`api::pb`]), their conversions to and from core types, and the
//!   mapping of core errors to gRPC status codes.
//! * [`client`]: [`client::Client`], one method per RPC over the daemon's unix socket.

pub mod api;
pub mod client;
