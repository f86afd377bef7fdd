//! Protobuf definitions used by netns-holder, compiled at build time (see `build.rs`).
//!
//! * [`api`]: the netns-holder node daemon's gRPC API (`netns_holder.v1`), with its tonic
//!   client and server.
//!
//! Each protobuf package gets its own module here, named after the package, so further
//! packages slot in beside [`api`] without touching it. The NRI messages, the ttRPC envelope
//! and `google.rpc.Status` are not here: they belong to the `nri` crate.

/// The netns-holder daemon API, protobuf package `netns_holder.v1`
/// (`proto/netns_holder/v1/api.proto`).
pub mod api {
    /// Version 1 of the API: messages, the `NetnsHolder` service's tonic client
    /// ([`v1::netns_holder_client`]) and server ([`v1::netns_holder_server`]).
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod v1 {
        tonic::include_proto!("netns_holder.v1");
    }
}
