//! `netns_holder`: the pure core of the netns-holder node daemon.
//!
//! The daemon creates, holds, wires and tears down pod network namespaces. This library is
//! everything that can be decided without root: configuration, names, IP address
//! management, persistent state, planning, plan execution with rollback, and the pod
//! manager with its crash-recovery (reconcile) logic. The kernel is reached only through the
//! traits in [`system`]; the real implementations (rtnetlink, namespace threads, pause
//! processes) plug in there, and `fake::FakeSystem` (feature `fake`) stands in for them in tests.
//!
//! Module map, bottom layer first; a module imports only from the layers below it:
//! * vocabulary: [`names`] (`PodName`, `PodId`, `IfName`), [`ports`] (host port mappings and
//!   the `--publish` parser), [`netns_path`], [`spec`] (OCI `config.json` for app containers
//!   that join a pod, `pod spec`).
//! * plain data: [`kernel`] (what the kernel is observed to hold), [`record`] (`PodRecord`,
//!   the desired state), [`finding`] (drift), [`firewall`] (the nftables table for host
//!   ports, as data and text), [`action`] (`Action`, `Step`: kernel operations as data).
//! * planners, pure functions over that data: [`plan`] (create/remove/repair plans and pod
//!   checks), [`peers`] (routes to other nodes' pod CIDRs), [`ipam`] (per-family
//!   round-robin address pools).
//! * [`state`]: crash-safe persistence of the records; [`system`]: the kernel traits and
//!   `SystemError`; [`config`]: `Config` from TOML, defaults and validation.
//! * [`executor`]: applies plans, rolling back on failure.
//! * [`manager`]: `PodManager`, the API the daemon serves.
//! * the daemon: [`api`], [`client`], [`server`], [`cli`], [`linux`], [`privileges`].

pub mod action;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod executor;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod finding;
pub mod firewall;
pub mod ipam;
pub mod kernel;
pub mod linux;
pub mod manager;
pub mod names;
pub mod netns_path;
pub mod peers;
pub mod plan;
pub mod ports;
pub mod privileges;
pub mod record;
pub mod server;
pub mod spec;
pub mod state;
pub mod system;
