//! Protobuf definitions used by netns-holder, compiled at build time (see `build.rs`).
//!
//! * [`api`]: the netns-holder node daemon's gRPC API (`netns_holder.v1`), with its tonic
//!   client and server.
//! * [`nri`]: NRI messages (`nri.pkg.api.v1alpha1`, as [`nri::v1alpha1`]), prost only.
//! * [`ttrpc`]: the ttRPC envelope (`Request`, `Response`, `KeyValue`), prost only.
//! * [`google::rpc`]: `google.rpc.Status`, the ttRPC call status.
//!
//! Each protobuf package gets its own module here, named after the package, so further
//! packages (NRI, the ttRPC envelope) slot in beside [`api`] without touching it.

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

/// NRI (Node Resource Interface), protobuf package `nri.pkg.api.v1alpha1`
/// (`proto/nri/pkg/api/v1alpha1/api.proto`): the messages of the subset netns-holder uses.
/// The services are ttRPC, served and called by `cri-hook` (no generated service code).
pub mod nri {
    /// The `nri.pkg.api.v1alpha1` messages.
    pub mod pkg {
        /// The `nri.pkg.api.v1alpha1` messages.
        pub mod api {
            /// The `nri.pkg.api.v1alpha1` messages.
            #[allow(missing_docs, clippy::all, clippy::pedantic)]
            pub mod v1alpha1 {
                include!(concat!(env!("OUT_DIR"), "/nri.pkg.api.v1alpha1.rs"));
            }
        }
    }
    pub use pkg::api::v1alpha1;
}

/// The ttRPC envelope, protobuf package `ttrpc` (`proto/ttrpc/request.proto`): `Request`,
/// `Response` and `KeyValue`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod ttrpc {
    include!(concat!(env!("OUT_DIR"), "/ttrpc.rs"));
}

/// Google's well-known RPC types used by ttRPC.
pub mod google {
    /// Protobuf package `google.rpc` (`proto/google/rpc/status.proto`): `Status`.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod rpc {
        include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
    }
}
