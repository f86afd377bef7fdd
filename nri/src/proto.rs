//! The protobuf messages, compiled at build time from `nri/proto/` (see `build.rs`), one
//! module per protobuf package, nested as the package names are (the generated code refers
//! to other packages by relative paths):
//!
//! * [`nri::v1alpha1`]: NRI (`nri.pkg.api.v1alpha1`), also reachable as [`crate::pb`];
//! * [`ttrpc`]: the ttRPC envelope (`Request`, `Response`, `KeyValue`);
//! * [`google::rpc`]: `google.rpc.Status`, the ttRPC call status.
//!
//! Messages only: the services are ttRPC, served and called through [`crate::ttrpc`].

/// NRI (Node Resource Interface), protobuf package `nri.pkg.api.v1alpha1`
/// (`proto/nri/pkg/api/v1alpha1/api.proto`): the messages of the subset this crate speaks.
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
