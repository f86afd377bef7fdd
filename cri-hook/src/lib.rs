//! `cri_hook`: the runtime adapters of netns-holder. They hold no networking logic: every
//! runtime event becomes a call to the netns-holder daemon's API
//! ([`netns_holder_client::client::Client`]).
//!
//! Today this is the NRI plugin (`cri-hook nri`). Its stack, bottom up:
//!
//! * [`ttrpc`]: ttRPC frames, statuses, a unary client and server (PROTOCOL.md §1).
//! * [`mux`]: the NRI connection multiplexer's framing, with the Go-compatible split rule
//!   for everything sent (§2.4) and a streaming decoder accepting any frame size.
//! * [`conn`]: one unix stream carrying several logical ttRPC connections, with one
//!   writer task and one reader task.
//! * [`nri`]: NRI constants (services, connection ids, events, identity rules).
//! * [`pod`]: what a pod sandbox means for netns-holder: the daemon pod name derived from
//!   it, its network namespace, and the `netns-holder.io/` annotation options (name, skip,
//!   host ports).
//! * [`network`]: the [`network::PodNetwork`] trait the plugin drives, and its real
//!   implementation over the daemon API with bounded call times.
//! * [`plugin`]: the NRI Plugin service (Configure, Synchronize with reconciliation, pod
//!   events: run wires the pod with its host ports, stop releases them, remove tears down).
//! * [`run`]: obtaining the connection (dial or inherited fd 3), registration, reconnection
//!   with backoff, shutdown.
//!
//! Beside it, sharing [`pod`]'s annotation options and owner annotation:
//!
//! * [`oci_hook`]: `cri-hook oci createRuntime|poststop|auto`, the OCI hook for runc, crun
//!   and podman (`hooks.d/netns-holder.json`).
//! * [`cni`]: the CNI plugin entry (the binary run with `CNI_COMMAND` set), host ports from
//!   the `portMappings` capability included.

pub mod cni;
pub mod conn;
pub mod mux;
pub mod network;
pub mod nri;
pub mod oci_hook;
pub mod plugin;
pub mod pod;
pub mod run;
pub mod ttrpc;
