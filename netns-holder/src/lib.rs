//! `netns_holder`: the pure core of the netns-holder node daemon.
//!
//! The daemon creates, holds, wires and tears down pod network namespaces. This library is
//! everything that can be decided without root: configuration, names, IP address
//! management, persistent state, planning, plan execution with rollback, and the pod
//! manager with its crash-recovery (reconcile) logic. The kernel is reached only through the
//! traits in [`system`]; the real implementations (rtnetlink, namespace threads, pause
//! processes) plug in there, and `fake::FakeSystem` (feature `fake`) stands in for them in tests.
//!
//! Module map:
//! * [`config`]: `Config` from TOML, defaults and validation.
//! * [`names`]: `PodName`, `PodId`, `IfName` and derived interface names.
//! * [`ipam`]: per-family round-robin address pools.
//! * [`state`]: `PodRecord`, `State`, crash-safe `StateStore`.
//! * [`system`]: the kernel traits and `SystemError`.
//! * [`plan`]: `Action`s, create/remove/repair plans and drift findings.
//! * [`executor`]: applies plans, rolling back on failure.
//! * [`manager`]: `PodManager`, the API the daemon serves.
//! * [`ports`]: host port mappings and the `--publish` parser.
//! * [`firewall`]: the nftables table for host ports, as data and text.
//! * [`peers`]: routes to other nodes' pod CIDRs.
//! * [`spec`]: OCI `config.json` for app containers that join a pod (`pod spec`).

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod executor;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod firewall;
pub mod ipam;
pub mod linux;
pub mod manager;
pub mod names;
pub mod netns_path;
pub mod peers;
pub mod plan;
pub mod ports;
pub mod privileges;
pub mod server;
pub mod spec;
pub mod state;
pub mod system;
