//! [`LinuxSystem`]: the real implementation of the [`crate::system`] traits on Linux.
//!
//! # The node network namespace
//!
//! The daemon runs inside a *node* network namespace: the host's in production, a throwaway
//! one in tests and the demo. [`LinuxSystem::new`] opens `/proc/thread-self/ns/net` of the
//! constructing thread and keeps that file descriptor. Everything "on the node side" (the
//! bridge, the host ends of the veths, forwarding sysctls, the default-route MTU) is then done
//! relative to that descriptor, never relative to whatever namespace the calling thread
//! (a tokio worker) happens to be in:
//!
//! * node netlink goes through one cached rtnetlink connection whose socket was created on a
//!   short-lived thread that had `setns`'d into the node namespace (a netlink socket stays
//!   bound to the namespace it was created in);
//! * node sysctls are written from a short-lived thread `setns`'d into the node namespace
//!   (files under `/proc/sys/net` belong to the namespace of the *opening* thread).
//!
//! # Pod network namespaces
//!
//! Work "inside the pod namespace at `P`" opens `P`, creates a netlink socket on a
//! short-lived thread that `setns`'d into it, and drives an rtnetlink connection over that
//! socket. The connection is cached by the namespace's identity (nsfs device and inode) and
//! dropped after a second without use, or at once when the namespace is deleted through
//! [`Namespaces::delete_netns`] (a socket pins its namespace); a create's half a dozen
//! pod-side calls share one socket. Sysctls inside a pod (`accept_dad`) are written from a
//! throwaway thread that entered it. Nothing here ever `setns`es a thread that is not its
//! own throwaway thread, and nothing ever execs `ip`.
//!
//! Namespace creation follows iproute2: the directory is made a shared mount (bind-mounted
//! onto itself first if it is not a mount point), the mount point file is created with
//! `O_CREAT | O_EXCL` (that is the exclusivity), and a fresh thread `unshare(CLONE_NEWNET)`s
//! and bind-mounts its `/proc/thread-self/ns/net` there.
//!
//! # Pause processes
//!
//! The pause is spawned with `std::process::Command` from a dedicated thread (fork/exec;
//! `setns` into the pod namespace and `setsid` in `pre_exec`, both raw async-signal-safe
//! system calls), with `argv[0]` = [`PodId::pause_argv0`], an empty environment except
//! [`PAUSE_NODE_ENV`], cwd `/`, stdio on `/dev/null` and every inherited descriptor
//! close-on-exec. It is a direct child of the daemon in its own session: the daemon reaps it
//! itself when it stops it or finds it dead; after a daemon restart, the old pauses have been
//! re-parented to init (or the nearest subreaper), which reaps them (the reasoning is in the
//! `pause` submodule). Stopping pins the identity with a pidfd and re-checks the start time
//! (field 22 of `/proc/<pid>/stat`) before signalling, so a reused pid is never signalled:
//! SIGTERM, a short grace period, then SIGKILL.
//!
//! Each pause carries the node namespace's inode in its environment ([`PAUSE_NODE_ENV`]), and
//! [`Processes::list_pauses`] reports only the pauses of *this* node namespace, so several
//! daemons (or parallel tests), each in its own node namespace on one host, never sweep each
//! other's pauses as orphans.
//!
//! # IPv6 duplicate address detection
//!
//! Two layers, both cheap: [`crate::system::Sysctl::disable_dad`] writes
//! `net.ipv6.conf.<link>.accept_dad = 0` inside the pod namespace (which also makes the
//! link-local address usable at once), and every IPv6 address is added with `IFA_F_NODAD`,
//! so an address is never tentative, also when added by a repair or on the bridge.
//!
//! # The bridge
//!
//! Created with an explicit random (locally administered) MAC address: otherwise the kernel
//! gives it the lowest MAC of its ports, changing as pods come and go, and pods keep stale
//! neighbour entries for their gateway. `EEXIST` from a concurrent creator is success; the
//! existing link must be a bridge.

// Firecracker's cast lints: a size or count converted with `as` can silently truncate, wrap
// or lose its sign; here every such conversion is checked (`try_from`) and says what it was.
#![deny(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

mod codec;
mod conn;
mod events;
mod netlink;
mod netns;
pub mod nft;
mod pause;
mod pool;
mod pool_veth;
mod procfs;
mod sockets;
mod sysctl;
mod thread;

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use slog::{Logger, info, o, warn};

use crate::config::Config;
use crate::datapath::Mac;
use crate::firewall::{ConntrackFlush, FirewallTable, HostPortElement, Listener, ObservedTable};
use crate::kernel::NetnsId;
use crate::kernel::{KernelEvent, LinkInfo, NodeNetwork, PauseProcess, RunningPause};
use crate::names::{IfName, PodId};
use crate::ports::Protocol;
use crate::system::{
    Firewall, KernelEvents, Namespaces, Netlink, PauseExit, Processes, ReapedPauses, Sysctl,
    SystemError, VethPair,
};

pub use pause::PAUSE_NODE_ENV;

/// The real kernel: network namespaces, rtnetlink, pause processes and sysctls.
///
/// Construct it on a thread that is in the node network namespace (see the
/// [module documentation](self)); every method must then be called from inside a tokio
/// runtime with the IO driver enabled (rtnetlink sockets are registered with it). The
/// node connection's task lives on the runtime of the first netlink call, so one
/// `LinuxSystem` belongs to one runtime.
pub struct LinuxSystem {
    /// Path of the static pause binary.
    pause_binary: PathBuf,
    /// The node network namespace, captured at construction.
    node: Arc<OwnedFd>,
    /// Inode of the node network namespace (tags our pause processes).
    node_inode: u64,
    /// The node-side rtnetlink connection, opened on first use.
    node_netlink: tokio::sync::OnceCell<conn::Conn>,
    /// Recently used pod-side rtnetlink connections.
    pods: conn::PodConns,
    /// The threads that enter pod namespaces and make new ones.
    ns_workers: Arc<thread::NsWorkers>,
    /// The node's nfnetlink socket (host port elements), opened on first use.
    nf_socket: tokio::sync::OnceCell<nft::NfSocket>,
    /// The pauses this process started, and the exit watches on the others.
    pauses: Arc<pause::Pauses>,
    /// Held while one batch of node-side link deletions runs (see
    /// [`netlink::links::DELETE_GROUP`]).
    link_deletions: Arc<tokio::sync::Mutex<()>>,
    /// A background batch deleting retired host veths is scheduled (see
    /// `retire_link` in `netlink/links.rs`).
    retired_batch_pending: Arc<std::sync::atomic::AtomicBool>,
    /// The node bridge last seen to be a bridge: its name and index (see
    /// `netlink::links::bridge_index`). Shared with the pool, whose host ends join it.
    verified_bridge: Arc<std::sync::Mutex<Option<(IfName, u32)>>>,
    /// Held while one create verifies the node bridge (`netlink::links::ensure_bridge`).
    bridge_verification: tokio::sync::Mutex<()>,
    /// Network namespaces made ahead of creates (`netns_pool`).
    netns_pool: Arc<pool::NetnsPool>,
    log: Logger,
}

impl fmt::Debug for LinuxSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinuxSystem")
            .field("pause_binary", &self.pause_binary)
            .field("node_inode", &self.node_inode)
            .finish_non_exhaustive()
    }
}

impl LinuxSystem {
    /// Captures the calling thread's network namespace as the node namespace and takes the
    /// pause binary path from `config.pause_binary`. Touches nothing else; the node
    /// netlink connection is opened on first use.
    /// The pool of `config.netns_pool` namespaces made ahead of creates starts with
    /// `start_netns_pool` ([`Namespaces`]).
    pub fn new(config: &Config, log: Logger) -> Result<Self, SystemError> {
        let mut system = Self::with_pause_binary(config.pause_binary.clone(), log)?;
        system.netns_pool = Arc::new(pool::NetnsPool::new(
            config.netns_pool as usize,
            system.node.clone(),
            system.log.new(o!("component" => "netns-pool")),
        ));
        Ok(system)
    }

    /// How many network namespaces the pool holds ready.
    pub fn netns_pool_ready(&self) -> usize {
        self.netns_pool.ready()
    }

    /// Like [`LinuxSystem::new`], with only the pause binary path and no namespace pool.
    pub fn with_pause_binary(
        pause_binary: impl Into<PathBuf>,
        log: Logger,
    ) -> Result<Self, SystemError> {
        let pause_binary = pause_binary.into();
        nft::check_required_tools()?;
        let (node, node_inode) = netns::open_current()?;
        if !pause_binary.is_file() {
            warn!(log, "pause binary not found; starting pause processes will fail";
                "pause_binary" => %pause_binary.display());
        }
        let pauses = Arc::new(pause::Pauses::new());
        info!(log, "node network namespace captured"; "inode" => node_inode,
            "pause_exit_watches" => pauses.watch_budget());
        let node = Arc::new(node);
        let node_for_pool = node.clone();
        Ok(Self {
            pause_binary,
            ns_workers: Arc::new(thread::NsWorkers::new(node.clone(), node_inode)),
            node,
            node_inode,
            node_netlink: tokio::sync::OnceCell::new(),
            pods: conn::PodConns::default(),
            nf_socket: tokio::sync::OnceCell::new(),
            pauses,
            link_deletions: Arc::new(tokio::sync::Mutex::new(())),
            retired_batch_pending: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            verified_bridge: Arc::new(std::sync::Mutex::new(None)),
            bridge_verification: tokio::sync::Mutex::new(()),
            netns_pool: Arc::new(pool::NetnsPool::new(0, node_for_pool, log.clone())),
            log,
        })
    }

    /// Inode number of the node network namespace captured at construction (the value of
    /// [`PAUSE_NODE_ENV`] in the environment of the pause processes started by this system).
    pub fn node_netns_inode(&self) -> u64 {
        self.node_inode
    }

    /// The pause binary started by [`Processes::start_pause`].
    pub fn pause_binary(&self) -> &Path {
        &self.pause_binary
    }
}

/// `link <name>` in the node namespace, `link <name> in <path>` elsewhere.
pub(crate) fn link_object(netns: Option<&Path>, link: &str) -> String {
    match netns {
        None => format!("link {link}"),
        Some(p) => format!("link {link} in {}", p.display()),
    }
}

/// `netns <path>`.
pub(crate) fn netns_object(path: &Path) -> String {
    format!("netns {}", path.display())
}

impl KernelEvents for LinuxSystem {
    async fn subscribe(
        &self,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<KernelEvent>, SystemError> {
        events::subscribe(self).await
    }
}

impl Namespaces for LinuxSystem {
    fn check_attach_path(
        &self,
        path: &Path,
        netns_dir: &Path,
    ) -> Result<(), crate::netns_path::NetnsPathError> {
        crate::netns_path::check_attach_path(path, netns_dir)
    }

    async fn create_netns(&self, path: &Path) -> Result<(), SystemError> {
        conn::create_netns(self, path).await
    }

    /// Starts making network namespaces ahead of the creates that take them, with the pod's
    /// veth pair in each, on a thread of the lowest CPU priority, until the pool holds
    /// `netns_pool` of them (none for 0). Pooled namespaces are mounted nowhere and end with
    /// this process. `config` is the node's final one (datapath, IPv6, MTU), which the pairs
    /// are made for; the pool never holds more namespaces than its pod CIDRs have pods. On
    /// the bridge datapath it makes the node bridge first: the pairs' host ends join it ahead.
    ///
    /// First deletes the host ends of pooled pairs left by an earlier daemon
    /// ([`pool_veth::POOL_VETH_PREFIX`], and the older prefix) that no pod's record names
    /// (`pod_links`): the one a create that crashed before renaming another pool pair
    /// leaves in a pod's namespace; the others the kernel deletes with their namespaces.
    async fn start_netns_pool(&self, config: &Config, pod_links: &HashSet<IfName>) {
        // Also with no pool now: an earlier daemon may have had one.
        let mut listed = Vec::new();
        for prefix in [pool_veth::POOL_VETH_PREFIX, pool_veth::OLD_POOL_VETH_PREFIX] {
            match netlink::list_links(self, None, prefix).await {
                Ok(links) => listed.extend(links),
                Err(e) => {
                    warn!(self.log, "cannot list pooled veth pairs of an earlier run"; "prefix" => prefix, "error" => %e)
                }
            }
        }
        // The old prefix's names had the same shape; anything else under them is not ours.
        let leftovers = listed.into_iter().filter(|link| {
            let name = link.as_str();
            (crate::names::is_pooled_veth_name(name)
                || crate::names::is_prefix_and_id_hex(name, pool_veth::OLD_POOL_VETH_PREFIX))
                && !pod_links.contains(link)
        });
        for link in leftovers {
            match netlink::delete_link(self, None, &link).await {
                Ok(_) => {
                    info!(self.log, "deleted a pooled veth pair of an earlier run"; "link" => %link)
                }
                Err(e) => {
                    warn!(self.log, "cannot delete a pooled veth pair of an earlier run"; "link" => %link, "error" => %e)
                }
            }
        }
        if self.netns_pool.size() == 0 {
            return;
        }
        let routed = config.datapath == crate::datapath::Datapath::Routed;
        let mtu = match config.mtu {
            Some(mtu) => mtu,
            None => netlink::default_route_mtu(self)
                .await
                .ok()
                .flatten()
                .unwrap_or(1500),
        };
        let ipam = netns_holder_core::ipam::Ipam::new(config.pod_cidr_v4, config.pod_cidr_v6);
        // The pairs' host ends join the bridge ahead, so it is made now, as the node's first
        // create would (with its gateway addresses); if that fails, that create says why.
        let bridge = match routed {
            true => None,
            false => {
                if let Err(e) = netlink::ensure_bridge(self, &config.bridge, &ipam.gateways()).await
                {
                    warn!(self.log, "cannot make the node bridge at start; pooled veths join no bridge until a create makes it";
                        "bridge" => %config.bridge, "error" => %e);
                }
                Some(pool_veth::PoolBridge {
                    name: config.bridge.clone(),
                    known: self.verified_bridge.clone(),
                    full: std::sync::atomic::AtomicBool::new(false),
                })
            }
        };
        let spec = pool_veth::VethSpec::new(
            IfName::pod_interface().to_string(),
            mtu,
            routed.then_some(crate::datapath::HOST_VETH_MAC),
            match routed && config.pod_cidr_v6.is_some() {
                true => pool_veth::HostIpv6::NoLinkLocal,
                false => pool_veth::HostIpv6::Disabled,
            },
            bridge,
            config.pod_cidr_v6.is_none(),
        );
        let pod_capacity = ipam
            .usage()
            .iter()
            .map(|pool| usize::try_from(pool.capacity).unwrap_or(usize::MAX))
            .min()
            .unwrap_or(0);
        self.netns_pool.start(spec, pod_capacity);
    }

    fn netns_pool_state(&self) -> netns_holder_core::system::NetnsPoolState {
        netns_holder_core::system::NetnsPoolState {
            ready: self.netns_pool.ready(),
            size: self.netns_pool.size(),
        }
    }

    fn creates_in_flight(&self, count: usize) {
        self.netns_pool.creates_in_flight(count);
    }

    fn reserve_pooled_link(&self, netns: &Path) -> Option<IfName> {
        self.netns_pool.reserve(netns)
    }

    fn release_pooled_link(&self, netns: &Path) {
        self.netns_pool.release(netns);
    }

    async fn delete_netns(&self, path: &Path) -> Result<bool, SystemError> {
        // Our cached socket would keep the namespace alive after the unmount.
        if let Ok(Some(key)) = netns::key(path) {
            self.pods.evict(key);
            self.netns_pool.forget(key);
        }
        netns::delete(path).await
    }

    async fn netns_exists(&self, path: &Path) -> Result<bool, SystemError> {
        netns::exists(path)
    }

    async fn netns_id(&self, path: &Path) -> Result<Option<NetnsId>, SystemError> {
        netns::identity(path)
    }

    async fn list_netns(&self, dir: &Path) -> Result<Vec<PathBuf>, SystemError> {
        netns::list(dir)
    }

    async fn restore_netns(&self, path: &Path, holder: &PauseProcess) -> Result<(), SystemError> {
        let path = path.to_path_buf();
        let holder = *holder;
        let object = netns_object(&path);
        tokio::task::spawn_blocking(move || {
            let ns = pause::netns_of(holder)?;
            netns::restore(&path, &ns)
        })
        .await
        .map_err(|e| SystemError::other(object, format!("restore task failed: {e}")))?
    }
}

impl Processes for LinuxSystem {
    async fn start_pause(&self, id: &PodId, netns: &Path) -> Result<PauseProcess, SystemError> {
        let started = pause::start(self, id, netns).await?;
        self.pauses.started(started);
        Ok(started)
    }

    async fn stop_pause(&self, process: &PauseProcess) -> Result<bool, SystemError> {
        let stopped = pause::stop(self, *process).await?;
        // Stopped and reaped, or already gone: no longer a child to wait for.
        self.pauses.gone(*process);
        Ok(stopped)
    }

    async fn pause_alive(&self, process: &PauseProcess) -> Result<bool, SystemError> {
        let alive = pause::alive(*process)?;
        if !alive {
            self.pauses.gone(*process);
        }
        Ok(alive)
    }

    async fn list_pauses(&self) -> Result<Vec<RunningPause>, SystemError> {
        pause::list(self.node_inode).await
    }

    async fn child_pause_exited(
        &self,
        process: &PauseProcess,
    ) -> Result<Option<bool>, SystemError> {
        Ok(pause::child_exited(&self.pauses, *process))
    }

    async fn reap_exited_child_pauses(&self) -> Result<ReapedPauses, SystemError> {
        Ok(pause::reap_exited_children(&self.pauses))
    }

    async fn watch_pause(&self, process: &PauseProcess) -> Result<Option<PauseExit>, SystemError> {
        pause::watch(&self.pauses, *process)
    }
}

/// The longest wait for the kernel's answer to one netlink operation. A reply the kernel
/// dropped (see [`conn::RECEIVE_BUFFER`]) would otherwise leave the request, and the pod
/// operation that made it, waiting for ever; generous, since a dump of thousands of routes on
/// a loaded node takes a while.
pub(crate) const NETLINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs the netlink operation `operation` on `object` for at most [`NETLINK_TIMEOUT`].
async fn bounded<T>(
    object: impl FnOnce() -> String,
    operation: impl Future<Output = Result<T, SystemError>>,
) -> Result<T, SystemError> {
    match tokio::time::timeout(NETLINK_TIMEOUT, operation).await {
        Ok(result) => result,
        Err(_) => Err(SystemError::other(
            object(),
            format!(
                "no answer from the kernel to a netlink request within {} s",
                NETLINK_TIMEOUT.as_secs()
            ),
        )),
    }
}

impl Netlink for LinuxSystem {
    async fn ensure_bridge(&self, name: &IfName, gateways: &[IpNet]) -> Result<(), SystemError> {
        bounded(
            || link_object(None, name.as_str()),
            netlink::ensure_bridge(self, name, gateways),
        )
        .await
    }

    async fn create_veth(&self, pair: VethPair<'_>) -> Result<(), SystemError> {
        bounded(
            || {
                format!(
                    "veth {} <-> {} in {}",
                    pair.host,
                    pair.peer,
                    pair.netns.display()
                )
            },
            netlink::create_veth(self, pair),
        )
        .await
    }

    async fn ensure_node_addresses(
        &self,
        link: &IfName,
        addresses: &[IpNet],
    ) -> Result<(), SystemError> {
        bounded(
            || link_object(None, link.as_str()),
            netlink::ensure_node_addresses(self, link, addresses),
        )
        .await
    }

    async fn add_neighbour(
        &self,
        netns: Option<&Path>,
        link: &IfName,
        address: IpAddr,
        mac: Mac,
    ) -> Result<(), SystemError> {
        bounded(
            || {
                format!(
                    "neighbour {address} on {}",
                    link_object(netns, link.as_str())
                )
            },
            netlink::add_neighbour(self, netns, link, address, mac),
        )
        .await
    }

    async fn permanent_neighbours(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> Result<Vec<IpAddr>, SystemError> {
        bounded(
            || format!("neighbours on {}", link_object(netns, link.as_str())),
            netlink::permanent_neighbours(self, netns, link),
        )
        .await
    }

    async fn add_host_route(
        &self,
        link: &IfName,
        address: IpNet,
        source: IpAddr,
    ) -> Result<(), SystemError> {
        bounded(
            || format!("route {address} dev {link}"),
            netlink::add_host_route(self, link, address, source),
        )
        .await
    }

    async fn host_routes(&self, link: &IfName) -> Result<Vec<IpNet>, SystemError> {
        bounded(
            || format!("routes on {}", link_object(None, link.as_str())),
            netlink::host_routes(self, link),
        )
        .await
    }

    async fn set_master(&self, link: &IfName, master: &IfName) -> Result<(), SystemError> {
        bounded(
            || link_object(None, link.as_str()),
            netlink::set_master(self, link, master),
        )
        .await
    }

    async fn link_up(&self, netns: Option<&Path>, link: &IfName) -> Result<(), SystemError> {
        bounded(
            || link_object(netns, link.as_str()),
            netlink::link_up(self, netns, link),
        )
        .await
    }

    async fn set_mtu(
        &self,
        netns: Option<&Path>,
        link: &IfName,
        mtu: u32,
    ) -> Result<(), SystemError> {
        bounded(
            || link_object(netns, link.as_str()),
            netlink::set_mtu(self, netns, link, mtu),
        )
        .await
    }

    async fn add_address(
        &self,
        netns: &Path,
        link: &IfName,
        address: IpNet,
    ) -> Result<(), SystemError> {
        bounded(
            || {
                format!(
                    "address {address} on {}",
                    link_object(Some(netns), link.as_str())
                )
            },
            netlink::add_address(self, netns, link, address),
        )
        .await
    }

    async fn add_default_route(
        &self,
        netns: &Path,
        link: &IfName,
        gateway: IpAddr,
    ) -> Result<(), SystemError> {
        bounded(
            || format!("default route via {gateway} in {}", netns.display()),
            netlink::add_default_route(self, netns, link, gateway),
        )
        .await
    }

    async fn loopback_up(&self, netns: &Path) -> Result<(), SystemError> {
        // A namespace straight from the pool has its loopback up already.
        if let Ok(Some(key)) = netns::key(netns)
            && self.netns_pool.take_fresh(key)
        {
            return Ok(());
        }
        bounded(
            || format!("lo in {}", netns.display()),
            netlink::loopback_up(self, netns),
        )
        .await
    }

    async fn delete_link(&self, netns: Option<&Path>, link: &IfName) -> Result<bool, SystemError> {
        bounded(
            || link_object(netns, link.as_str()),
            netlink::delete_link(self, netns, link),
        )
        .await
    }

    async fn retire_link(&self, netns: Option<&Path>, link: &IfName) -> Result<bool, SystemError> {
        bounded(
            || link_object(netns, link.as_str()),
            netlink::retire_link(self, netns, link),
        )
        .await
    }

    async fn link_info(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> Result<Option<LinkInfo>, SystemError> {
        bounded(
            || link_object(netns, link.as_str()),
            netlink::link_info(self, netns, link),
        )
        .await
    }

    async fn list_links(
        &self,
        netns: Option<&Path>,
        prefix: &str,
    ) -> Result<Vec<IfName>, SystemError> {
        bounded(
            || {
                format!(
                    "links {prefix}* in {}",
                    netns.map_or("the node namespace".to_string(), |p| p
                        .display()
                        .to_string())
                )
            },
            netlink::list_links(self, netns, prefix),
        )
        .await
    }

    async fn default_routes(&self, netns: &Path) -> Result<Vec<IpAddr>, SystemError> {
        bounded(
            || format!("default routes in {}", netns.display()),
            netlink::default_routes(self, netns),
        )
        .await
    }

    async fn default_route_mtu(&self) -> Result<Option<u32>, SystemError> {
        bounded(
            || "the node's default route".to_string(),
            netlink::default_route_mtu(self),
        )
        .await
    }

    async fn no_link_local(&self, link: &IfName) -> Result<(), SystemError> {
        bounded(
            || link_object(None, link.as_str()),
            netlink::no_link_local(self, link),
        )
        .await
    }

    async fn set_hairpin(&self, link: &IfName) -> Result<(), SystemError> {
        bounded(
            || link_object(None, link.as_str()),
            netlink::set_hairpin(self, link),
        )
        .await
    }

    async fn add_route(&self, cidr: IpNet, via: IpAddr) -> Result<(), SystemError> {
        bounded(
            || format!("route {cidr} via {via}"),
            netlink::add_route(self, cidr, via),
        )
        .await
    }

    async fn delete_route(&self, cidr: IpNet, via: IpAddr) -> Result<bool, SystemError> {
        bounded(
            || format!("route {cidr} via {via}"),
            netlink::delete_route(self, cidr, via),
        )
        .await
    }

    async fn peer_routes(&self) -> Result<Vec<(IpNet, IpAddr)>, SystemError> {
        bounded(|| "the peer routes".to_string(), netlink::peer_routes(self)).await
    }

    async fn node_networks(&self) -> Result<Vec<NodeNetwork>, SystemError> {
        bounded(
            || "the node's addresses and routes".to_string(),
            netlink::node_networks(self),
        )
        .await
    }
}

impl Sysctl for LinuxSystem {
    async fn enable_forwarding(&self, ipv6: bool) -> Result<(), SystemError> {
        sysctl::enable_forwarding(self, ipv6).await
    }

    async fn disable_dad(&self, netns: &Path, link: &IfName) -> Result<(), SystemError> {
        sysctl::disable_dad(self, netns, link).await
    }

    async fn disable_ipv6(&self, link: &IfName) -> Result<(), SystemError> {
        sysctl::disable_ipv6(self, link).await
    }

    async fn enable_route_localnet(&self, link: &IfName) -> Result<(), SystemError> {
        sysctl::enable_route_localnet(self, link).await
    }

    async fn neighbour_thresholds(
        &self,
        family: crate::ports::Family,
    ) -> Result<crate::neigh::Thresholds, SystemError> {
        sysctl::neighbour_thresholds(self, family).await
    }

    async fn set_neighbour_thresholds(
        &self,
        family: crate::ports::Family,
        values: crate::neigh::Thresholds,
    ) -> Result<(), SystemError> {
        sysctl::set_neighbour_thresholds(self, family, values).await
    }
}

impl Firewall for LinuxSystem {
    async fn replace_table(&self, table: &FirewallTable) -> Result<(), SystemError> {
        nft::replace_table(self, table).await
    }

    async fn add_elements(&self, elements: &[HostPortElement]) -> Result<(), SystemError> {
        nft::add_elements(self, elements).await
    }

    async fn delete_elements(&self, elements: &[HostPortElement]) -> Result<usize, SystemError> {
        nft::delete_elements(self, elements).await
    }

    async fn sync_egress_exempt(
        &self,
        exempt: &crate::egress::EgressExempt,
    ) -> Result<(), SystemError> {
        nft::sync_egress_exempt(self, exempt).await
    }

    async fn inspect_table(&self) -> Result<Option<ObservedTable>, SystemError> {
        nft::inspect_table(self).await
    }

    async fn listeners(&self, ports: &[(Protocol, u16)]) -> Result<Vec<Listener>, SystemError> {
        sockets::listeners(self, ports).await
    }

    async fn flush_conntrack(&self, flushes: &[ConntrackFlush]) -> Result<u64, SystemError> {
        sockets::flush_conntrack(self, flushes).await
    }
}
