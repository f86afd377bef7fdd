//! Compiles the `.proto` files under `proto/` into Rust with `protox` (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and `prost-build`: the NRI messages, the ttRPC
//! envelope and `google.rpc.Status`. Messages only: the services are ttRPC, served and
//! called by this crate's own [`ttrpc`](src/ttrpc) layer, so no service code is generated.
//!
//! To add a file, put it under `proto/`, list it in `PROTOS`, and include the generated
//! `<package>.rs` from `src/proto.rs`.

use std::path::Path;

/// Directory holding the `.proto` files; also the import root.
const INCLUDE: &str = "proto";

/// The files to compile, relative to [`INCLUDE`].
const PROTOS: &[&str] = &[
    "google/rpc/status.proto",
    "ttrpc/request.proto",
    "nri/pkg/api/v1alpha1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={INCLUDE}");
    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            Path::new(INCLUDE).join(proto).display()
        );
    }
    // google.protobuf.Any maps to prost-types (prost-build's default extern path).
    let fds = protox::compile(PROTOS, [INCLUDE])?;
    prost_build::Config::new()
        .btree_map(["."])
        .compile_fds(fds)?;
    Ok(())
}
