//! `cri_hook`: the runtime adapters of netns-holder. They hold no networking logic: every
//! runtime event becomes a call to the netns-holder daemon's API
//! ([`netns_holder_client::client::Client`]).
//!
//! Today this is the NRI plugin (`cri-hook nri`). It is built on the [`nri`] crate, which
//! knows nothing of netns-holder: ttRPC, the NRI multiplexer, the connection, the NRI protos
//! and constants, and the runner that dials (or takes the inherited fd 3), registers and
//! reconnects with backoff ([`nri::run`]). What is netns-holder's own, bottom up:
//!
//! * [`pod`]: what a pod sandbox means for netns-holder: the daemon pod name derived from
//!   it, its network namespace, and the `netns-holder.io/` annotation options (name, skip,
//!   host ports).
//! * [`network`]: the [`network::PodNetwork`] trait the plugin drives, and its real
//!   implementation over the daemon API with bounded call times.
//! * [`plugin`]: the NRI Plugin service (Configure, Synchronize with reconciliation, pod
//!   events: run wires the pod with its host ports, stop releases them, remove tears down),
//!   a ttRPC [`nri::ttrpc::Service`] that [`nri::run::run`] serves on each connection. It
//!   keeps its own service rather than [`nri::stub::Plugin`]: it answers within three
//!   quarters of each request's deadline, reconciles in the background past it, and keeps
//!   per-connection state, which the stub's simpler contract does not carry.
//!
//! Beside it, sharing [`pod`]'s annotation options and owner annotation:
//!
//! * [`oci_hook`]: `cri-hook oci createRuntime|poststop|auto`, the OCI hook for runc, crun
//!   and podman (`hooks.d/netns-holder.json`).
//! * [`cni`]: the CNI plugin entry (the binary run with `CNI_COMMAND` set), host ports from
//!   the `portMappings` capability included.

pub mod cni;
pub mod network;
pub mod oci_hook;
pub mod plugin;
pub mod pod;
