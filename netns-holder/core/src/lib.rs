//! `netns_holder_core`: the pure core of the netns-holder node daemon.
//!
//! The daemon creates, holds, wires and tears down pod network namespaces. This crate is
//! everything that can be decided without root: configuration, names, IP address
//! management, persistent state, planning, plan execution with rollback, and the pod
//! manager with its crash-recovery (reconcile) logic. The kernel is reached only through the
//! traits in [`system`]; the real implementations (rtnetlink, namespace threads, pause
//! processes) live in the daemon crate (`netns-holder`, `linux/`), and `fake::FakeSystem`
//! (feature `fake`) stands in for them in tests. The crate depends on none of nix,
//! rtnetlink, tonic, clap or caps, so the compiler holds it to that.
//!
//! Module map, bottom layer first; a module imports only from the layers below it (and
//! nothing here imports from a layer above it):
//! 1. vocabulary: [`datapath`] (bridge or routed, the routed gateways and MACs), [`names`] (`PodName`, `PodId`, `IfName`), [`ports`] (host port mappings and
//!    the `--publish` parser), [`netns_path`] (which paths `attach` may wire), [`spec`] (OCI
//!    `config.json` for app containers that join a pod, `pod spec`).
//! 2. plain data: [`kernel`] (what the kernel is observed to hold), [`record`] (`PodRecord`,
//!    the desired state), [`finding`] (drift), [`egress`] (the destinations pods reach
//!    without masquerade), [`firewall`] (the nftables table for host ports and egress, as
//!    data and text), [`action`] (`Action`, `Step`: kernel operations as data).
//! 3. planners, pure functions over that data, siblings: [`plan`] (create/remove/repair
//!    plans and pod checks), [`peers`] (routes to other nodes' pod CIDRs), [`ipam`]
//!    (per-family round-robin address pools), [`neigh`] (neighbour tables sized for the
//!    pod capacity).
//! 4. [`state`]: crash-safe persistence of the records (snapshot + write-ahead journal);
//!    [`system`]: the kernel traits and `SystemError`; [`config`]: `Config` from TOML,
//!    defaults and validation; [`cluster`]: cluster mode's pure part (subnet carving, the
//!    store's keys and records, the cluster state file, the `ClusterBackend` trait).
//! 5. [`executor`]: applies plans through the traits, rolling back on failure; `fake`: the
//!    in-memory kernel (feature `fake`).
//! 6. [`manager`]: `PodManager`, the operations the daemon serves.

pub mod action;
pub mod cluster;
pub mod config;
pub mod datapath;
pub mod egress;
pub mod executor;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod finding;
pub mod firewall;
pub mod ipam;
pub mod kernel;
pub mod manager;
pub mod names;
pub mod neigh;
pub mod netns_path;
pub mod peers;
pub mod plan;
pub mod ports;
pub mod record;
pub mod spec;
pub mod state;
pub mod system;
