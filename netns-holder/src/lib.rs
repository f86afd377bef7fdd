//! `netns_holder`: the node daemon and its CLI, on top of the pure core
//! (`netns-holder-core`) and the API crate (`netns-holder-client`).
//!
//! This crate holds what needs the real kernel, the network or a terminal:
//! * [`linux`]: the real [`system`] traits (rtnetlink, namespace threads, pause processes,
//!   nftables, sysctls, kernel events);
//! * [`cluster`]: cluster mode on etcd (subnet lease, peers learnt from the cluster);
//! * [`server`]: the gRPC server over the manager; [`metrics`]: the Prometheus metrics and
//!   the `/metrics`, `/healthz`, `/readyz` listener; [`cli`]: the command line (the daemon's
//!   `serve` and the client commands); [`privileges`]: dropping capabilities.
//!
//! The core's and the API crate's modules are brought in under their own names (`crate::names`,
//! `crate::manager`, `crate::api` ...), so the daemon's modules name them as before; they are
//! the same modules, defined in those crates.

pub mod cli;
pub mod cluster;
pub mod linux;
pub mod metrics;
pub mod privileges;
pub mod server;

pub(crate) use netns_holder_client::{api, client};
pub(crate) use netns_holder_core::cluster as cluster_core;
pub(crate) use netns_holder_core::{
    config, datapath, egress, finding, firewall, kernel, manager, names, neigh, netns_path, peers,
    ports, spec, state, system,
};
