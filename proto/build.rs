//! Compiles the `.proto` files under `proto/` into Rust with `protox` (a pure-Rust protobuf
//! compiler, so no system `protoc` is needed) and `tonic-prost-build`.
//!
//! To add a package, put its files under `proto/`, list them in `PROTOS`, and include the
//! generated `<package>.rs` from `src/lib.rs`. (The NRI protos, the ttRPC envelope and
//! `google.rpc.Status` live in the `nri` crate.)

use std::path::Path;

/// Directory holding the `.proto` files; also the import root.
const INCLUDE: &str = "proto";

/// The files to compile, relative to [`INCLUDE`].
const PROTOS: &[&str] = &["netns_holder/v1/api.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={INCLUDE}");
    for proto in PROTOS {
        println!(
            "cargo:rerun-if-changed={}",
            Path::new(INCLUDE).join(proto).display()
        );
    }
    let fds = protox::compile(PROTOS, [INCLUDE])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps: deterministic output, and the library uses `BTreeMap` for annotations.
        .btree_map(".")
        .compile_fds(fds)?;
    Ok(())
}
