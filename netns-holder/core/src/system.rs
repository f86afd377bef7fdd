//! The seams to the kernel: the traits through which the planner's actions (and the
//! inspections of `check`/`reconcile`) reach network namespaces, processes, netlink and
//! sysctls.
//!
//! # Why asynchronous
//!
//! Every method returns `impl Future<Output = Result<T, SystemError>> + Send`. The real
//! netlink implementation is `rtnetlink`, which is asynchronous and runs on tokio; the API
//! server (tonic) is asynchronous too, and the manager serves many requests at once. With
//! `Send` futures a generic `PodManager<S>` can be driven from spawned tokio tasks without
//! `spawn_blocking` everywhere. Operations that are inherently thread-bound and blocking in
//! the real implementation (entering a namespace with `setns`, creating a bind mount from a
//! fresh `unshare`d thread, fork/exec of the pause) run on a dedicated thread there and
//! resolve the future through a oneshot channel; their cost is then hidden behind the same
//! interface. The in-memory fake (`fake::FakeSystem`, feature `fake`) yields once per call so
//! that concurrent callers genuinely interleave in tests.
//!
//! # Contract shared by all implementations
//!
//! * Deletions and stops are idempotent: an object that is already gone is not an error;
//!   they return `Ok(false)` instead of `Ok(true)`.
//! * Creations of things owned by one pod are exclusive (an existing object is
//!   [`SystemError::AlreadyExists`]); shared things (the bridge, its addresses, sysctls,
//!   loopback) are "ensure" operations, safe to call concurrently and repeatedly.
//! * `netns: Option<&Path>` means the host namespace when `None`, else the namespace bind
//!   mounted (or otherwise reachable) at that path.
//! * Every error names its object (path, interface, address, pid).
//!
//! # Notes for the real implementations
//!
//! * `create_netns`: create the mount point with `O_CREAT | O_EXCL` (that is the
//!   exclusivity), `unshare(CLONE_NEWNET)` on a throwaway thread, bind-mount
//!   `/proc/thread-self/ns/net` onto it; on failure remove the mount point again.
//! * `start_pause`: fork/exec the static pause binary with `argv[0]` =
//!   [`PodId::pause_argv0`], `setns` into the namespace before exec, a new session, no
//!   inherited fds; read the start time from field 22 of `/proc/<pid>/stat`. The daemon must
//!   not reap it as a child it waits for, so daemon restarts leave it running.
//! * `list_pauses`: scan `/proc/*/cmdline` for [`crate::names::PAUSE_ARGV0_PREFIX`] and
//!   parse the id with [`crate::names::pod_id_from_pause_argv0`].
//! * `ensure_bridge`: treat `EEXIST` from a concurrent creator as success, then re-read.
//! * `create_veth`: create the pair with the peer placed directly in the target namespace
//!   (`IFLA_NET_NS_FD`), so a crash never leaves the temporary name in the host namespace.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

use thiserror::Error;

use crate::datapath::Mac;
use crate::egress::EgressExempt;
use crate::firewall::{ConntrackFlush, FirewallTable, HostPortElement, Listener, ObservedTable};
use crate::kernel::{KernelEvent, LinkInfo, NetnsId, NodeNetwork, PauseProcess, RunningPause};
use crate::names::{IfName, PodId};
use crate::neigh::Thresholds;
use crate::ports::{Family, Protocol};

/// A kernel-side failure, naming the object it concerns (e.g. `netns /run/netns/web`,
/// `link nh0123456789ab`, `address 10.88.0.2/16 on eth0 in /run/netns/web`).
#[derive(Debug, Error)]
pub enum SystemError {
    /// An object that must be created exclusively already exists.
    #[error("{object}: already exists")]
    AlreadyExists {
        /// The object.
        object: String,
    },
    /// An object that must exist for the operation is missing.
    #[error("{object}: not found")]
    NotFound {
        /// The object.
        object: String,
    },
    /// An operating system error.
    #[error("{object}: {source}")]
    Io {
        /// The object.
        object: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure (e.g. a netlink error message).
    #[error("{object}: {message}")]
    Other {
        /// The object.
        object: String,
        /// What went wrong.
        message: String,
    },
}

impl SystemError {
    /// An [`SystemError::Io`] for `object`.
    pub fn io(object: impl fmt::Display, source: std::io::Error) -> Self {
        Self::Io {
            object: object.to_string(),
            source,
        }
    }

    /// An [`SystemError::Other`] for `object`.
    pub fn other(object: impl fmt::Display, message: impl Into<String>) -> Self {
        Self::Other {
            object: object.to_string(),
            message: message.into(),
        }
    }

    /// The object the error is about.
    pub fn object(&self) -> &str {
        match self {
            Self::AlreadyExists { object }
            | Self::NotFound { object }
            | Self::Io { object, .. }
            | Self::Other { object, .. } => object,
        }
    }
}

/// The state of the pool of network namespaces made ahead ([`Namespaces::netns_pool_state`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetnsPoolState {
    /// Namespaces ready to be taken.
    pub ready: usize,
    /// How many the pool keeps ready (`netns_pool`).
    pub size: usize,
}

/// Network namespace bind mounts.
pub trait Namespaces: Send + Sync {
    /// Whether `attach` may wire the namespace at `path` (the rules of
    /// [`crate::netns_path`]; `netns_dir` is the daemon's own directory).
    fn check_attach_path(
        &self,
        path: &Path,
        netns_dir: &Path,
    ) -> Result<(), crate::netns_path::NetnsPathError>;

    /// Creates a new network namespace and bind-mounts it at `path` (exclusively: an
    /// existing file there is [`SystemError::AlreadyExists`]).
    fn create_netns(&self, path: &Path) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// The network namespaces made ahead of creates (`netns_pool`): how many are ready now,
    /// and how many the pool keeps. Both 0 where there is no pool.
    fn netns_pool_state(&self) -> NetnsPoolState {
        NetnsPoolState::default()
    }

    /// Starts making namespaces ahead of creates (`netns_pool`) for the node's final
    /// `config`, after clearing what an earlier daemon's pool left behind except the host
    /// veths in `pod_links` (the records' names). The daemon calls it once it owns the node
    /// (its API socket bound) and has loaded its state, before reconcile. Nothing by default.
    fn start_netns_pool(
        &self,
        config: &crate::config::Config,
        pod_links: &std::collections::HashSet<IfName>,
    ) -> impl Future<Output = ()> + Send {
        let _ = (config, pod_links);
        async {}
    }

    /// Sets a namespace made ahead (`netns_pool`) aside for the create of the pod whose
    /// namespace will be at `netns`, and returns the name of the host end of the veth pair
    /// in it: the pod's host veth then keeps that name, and the create's steps take that
    /// namespace and pair ([`Namespaces::create_netns`], [`Netlink::create_veth`]) without
    /// renaming anything. `None` (the default, and with no pool or none ready): the pod's
    /// host veth is named from its id ([`crate::names::PodId::host_veth_name`]).
    fn reserve_pooled_link(&self, netns: &Path) -> Option<IfName> {
        let _ = netns;
        None
    }

    /// Gives up what [`Namespaces::reserve_pooled_link`] set aside for `netns`, if the
    /// create did not take it (it failed before its namespace step). Nothing by default.
    fn release_pooled_link(&self, netns: &Path) {
        let _ = netns;
    }

    /// How many creates and attaches are running, as the manager counts them, told at each
    /// change: a hint for work in the background that would compete with them for the CPU
    /// and RTNL, such as making namespaces ahead ([`crate::config::Config::netns_pool`]).
    /// Nothing by default.
    fn creates_in_flight(&self, count: usize) {
        let _ = count;
    }

    /// Unmounts and unlinks `path`. Returns `false` if it did not exist. The namespace
    /// itself dies with its last user.
    fn delete_netns(&self, path: &Path) -> impl Future<Output = Result<bool, SystemError>> + Send;

    /// Whether `path` exists and is a network namespace.
    fn netns_exists(&self, path: &Path) -> impl Future<Output = Result<bool, SystemError>> + Send;

    /// The identity of the network namespace at `path` (`None` if `path` is not one).
    fn netns_id(
        &self,
        path: &Path,
    ) -> impl Future<Output = Result<Option<NetnsId>, SystemError>> + Send;

    /// Network namespace bind mounts directly inside `dir` (a missing `dir` is empty).
    fn list_netns(
        &self,
        dir: &Path,
    ) -> impl Future<Output = Result<Vec<PathBuf>, SystemError>> + Send;

    /// Bind-mounts at `path` again the network namespace that `holder` (a pod's pause) is
    /// in, after someone unmounted it: the namespace lives on as long as its pause holds
    /// it. Fails unless `holder` is still that same process (pid and start time); the empty
    /// mount point file an unmount leaves behind is reused, a missing one is created.
    fn restore_netns(
        &self,
        path: &Path,
        holder: &PauseProcess,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;
}

/// The pause processes that hold namespaces open.
pub trait Processes: Send + Sync {
    /// Starts the pause binary inside the namespace at `netns` with `argv[0]` set to
    /// [`PodId::pause_argv0`], detached from the daemon (it survives daemon restarts), and
    /// returns its identity.
    fn start_pause(
        &self,
        id: &PodId,
        netns: &Path,
    ) -> impl Future<Output = Result<PauseProcess, SystemError>> + Send;

    /// Stops `process` (SIGKILL is fine: pause holds no state) if it is still the same
    /// process (pid and start time match). Returns `false` if it was already gone.
    fn stop_pause(
        &self,
        process: &PauseProcess,
    ) -> impl Future<Output = Result<bool, SystemError>> + Send;

    /// Whether `process` is alive (and still the same process).
    fn pause_alive(
        &self,
        process: &PauseProcess,
    ) -> impl Future<Output = Result<bool, SystemError>> + Send;

    /// Every running pause process of ours (recognised by `argv[0]`).
    fn list_pauses(&self) -> impl Future<Output = Result<Vec<RunningPause>, SystemError>> + Send;

    /// Whether `process` has exited, if it is a child of this very daemon process (one it
    /// started with [`Processes::start_pause`]): answered without reading `/proc` (a
    /// targeted non-blocking `waitpid`, which also reaps it), so checking every child after
    /// a SIGCHLD is cheap. `None` if it is not a child of ours (adopted from an earlier
    /// daemon): watch it with [`Processes::watch_pause`] instead.
    fn child_pause_exited(
        &self,
        process: &PauseProcess,
    ) -> impl Future<Output = Result<Option<bool>, SystemError>> + Send;

    /// Reaps the pauses among this daemon process's children (started with
    /// [`Processes::start_pause`]) that have exited and names them: asked of the kernel for
    /// exited children only, so that a SIGCHLD costs in proportion to the exits, not to the
    /// pods. When [`ReapedPauses::complete`] is false, ask
    /// [`Processes::child_pause_exited`] for each pause as well.
    fn reap_exited_child_pauses(
        &self,
    ) -> impl Future<Output = Result<ReapedPauses, SystemError>> + Send;

    /// A watch on `process` that resolves once it has exited (at once if it is already gone
    /// or is not that process any more), without polling: a pidfd in the real system, which
    /// works for processes that are not our children. `None` when no watch can be made (no
    /// descriptor left, an old kernel): poll [`Processes::pause_alive`] then.
    fn watch_pause(
        &self,
        process: &PauseProcess,
    ) -> impl Future<Output = Result<Option<PauseExit>, SystemError>> + Send;
}

/// What [`Processes::reap_exited_child_pauses`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapedPauses {
    /// Pauses of ours that exited, now reaped.
    pub exited: Vec<PauseProcess>,
    /// Whether these are all the exits: `false` when another kind of child's exit (a helper
    /// program the daemon ran, reaped by its own waiter) hid those behind it.
    pub complete: bool,
}

/// A veth pair for [`Netlink::create_veth`]: `host` in the host namespace and `peer` made
/// directly in the namespace at `netns`, both with `mtu` and the given MAC addresses
/// (random where `None`); with `master`, the host end is made a port of that bridge in the
/// same request (`IFLA_MASTER`), which spares a second RTNL-serialised change per pod.
#[derive(Debug, Clone, Copy)]
pub struct VethPair<'a> {
    /// The host end.
    pub host: &'a IfName,
    /// The pod end, under its final name.
    pub peer: &'a IfName,
    /// The pod namespace.
    pub netns: &'a Path,
    /// MTU of both ends.
    pub mtu: u32,
    /// MAC address of the host end (`None`: random).
    pub host_mac: Option<Mac>,
    /// MAC address of the pod end (`None`: random).
    pub peer_mac: Option<Mac>,
    /// The bridge the host end joins as it is made (`None`: no master).
    pub master: Option<&'a IfName>,
}

impl<'a> VethPair<'a> {
    /// A pair with random MAC addresses and no master.
    pub fn new(host: &'a IfName, peer: &'a IfName, netns: &'a Path, mtu: u32) -> Self {
        Self {
            host,
            peer,
            netns,
            mtu,
            host_mac: None,
            peer_mac: None,
            master: None,
        }
    }
}

/// Resolves when the watched pause has exited (see [`Processes::watch_pause`]); dropping it
/// ends the watch and frees what it holds.
pub type PauseExit = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Links, addresses and routes (rtnetlink in the real implementation).
pub trait Netlink: Send + Sync {
    /// Ensures the bridge `name` exists in the host namespace, is up and carries each of
    /// `gateways`. Safe against concurrent callers and an already existing bridge.
    fn ensure_bridge(
        &self,
        name: &IfName,
        gateways: &[IpNet],
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Creates the veth pair `pair` (see [`VethPair`]). Exclusive on its host end.
    fn create_veth(
        &self,
        pair: VethPair<'_>,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Ensures the existing host link `link` (`lo` on the routed datapath) is up and
    /// carries each of `addresses`. Safe against concurrent callers.
    fn ensure_node_addresses(
        &self,
        link: &IfName,
        addresses: &[IpNet],
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Adds or replaces the permanent neighbour entry `address` -> `mac` on `link` (in
    /// `netns`, or the host namespace).
    fn add_neighbour(
        &self,
        netns: Option<&Path>,
        link: &IfName,
        address: IpAddr,
        mac: Mac,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// The addresses of the permanent neighbour entries on `link` (in `netns`, or the host
    /// namespace); a missing link has none.
    fn permanent_neighbours(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> impl Future<Output = Result<Vec<IpAddr>, SystemError>> + Send;

    /// Adds or replaces the route to `address` on the host link `link` with preferred
    /// source `source`, tagged [`crate::datapath::POD_ROUTE_PROTOCOL`], main table.
    fn add_host_route(
        &self,
        link: &IfName,
        address: IpNet,
        source: IpAddr,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// The destinations of our host routes (tagged [`crate::datapath::POD_ROUTE_PROTOCOL`])
    /// on the host link `link`.
    fn host_routes(
        &self,
        link: &IfName,
    ) -> impl Future<Output = Result<Vec<IpNet>, SystemError>> + Send;

    /// Enslaves the host link `link` to the bridge `master`.
    fn set_master(
        &self,
        link: &IfName,
        master: &IfName,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Sets `link` administratively up.
    fn link_up(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Sets the MTU of `link`.
    fn set_mtu(
        &self,
        netns: Option<&Path>,
        link: &IfName,
        mtu: u32,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Adds `address` to `link` in the namespace at `netns` (an identical existing address
    /// is fine).
    fn add_address(
        &self,
        netns: &Path,
        link: &IfName,
        address: IpNet,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Adds a default route via `gateway` over `link` in the namespace at `netns` (an
    /// identical existing route is fine).
    fn add_default_route(
        &self,
        netns: &Path,
        link: &IfName,
        gateway: IpAddr,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Sets `lo` up with 127.0.0.1/8 and ::1/128 in the namespace at `netns`.
    fn loopback_up(&self, netns: &Path) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Deletes `link` (for a veth, both ends go). Returns `false` if it did not exist.
    fn delete_link(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> impl Future<Output = Result<bool, SystemError>> + Send;

    /// Renames `link` (in `netns`, or the host namespace) to a fresh
    /// [`crate::names::RETIRED_VETH_PREFIX`] name (random, retried until free). A host link
    /// also leaves its bridge, if any, and is deleted by a later batch; a pod-side link is
    /// set down. Returns `false` if it (or its namespace) did not exist.
    fn retire_link(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> impl Future<Output = Result<bool, SystemError>> + Send;

    /// State of `link`, or `None` if it does not exist.
    fn link_info(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> impl Future<Output = Result<Option<LinkInfo>, SystemError>> + Send;

    /// Names of links in the namespace whose names start with `prefix`.
    fn list_links(
        &self,
        netns: Option<&Path>,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<IfName>, SystemError>> + Send;

    /// Gateways of the default routes (IPv4 and IPv6) in the namespace at `netns`.
    fn default_routes(
        &self,
        netns: &Path,
    ) -> impl Future<Output = Result<Vec<IpAddr>, SystemError>> + Send;

    /// MTU of the interface carrying the host's IPv4 default route, if there is one (used
    /// when the configuration sets no MTU).
    fn default_route_mtu(&self) -> impl Future<Output = Result<Option<u32>, SystemError>> + Send;

    /// Sets `addrgenmode none` on `link` (host namespace), so it gets no IPv6 link-local
    /// address when it comes up; nothing to do where IPv6 is off.
    fn no_link_local(&self, link: &IfName) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Turns hairpin mode on for the bridge port `link` (host namespace).
    fn set_hairpin(&self, link: &IfName) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Adds a route to `cidr` via `via` in the node namespace's main table, tagged with
    /// [`crate::peers::ROUTE_PROTOCOL`]. An identical route of ours is fine; a route to
    /// `cidr` that is not ours is [`SystemError::AlreadyExists`].
    fn add_route(
        &self,
        cidr: IpNet,
        via: IpAddr,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Deletes our route to `cidr` via `via`. Returns `false` if there was none.
    fn delete_route(
        &self,
        cidr: IpNet,
        via: IpAddr,
    ) -> impl Future<Output = Result<bool, SystemError>> + Send;

    /// Our routes (tagged [`crate::peers::ROUTE_PROTOCOL`]) in the node namespace's main
    /// table, as (destination, gateway).
    fn peer_routes(&self)
    -> impl Future<Output = Result<Vec<(IpNet, IpAddr)>, SystemError>> + Send;

    /// Every address of the node namespace and every route in it (all tables but the
    /// kernel's `local` one, which only mirrors the addresses), for [`crate::kernel::check_pod_cidrs`].
    fn node_networks(&self) -> impl Future<Output = Result<Vec<NodeNetwork>, SystemError>> + Send;
}

/// Kernel parameters.
pub trait Sysctl: Send + Sync {
    /// Turns IP forwarding on in the host namespace (IPv4 and, if `ipv6`, IPv6).
    fn enable_forwarding(&self, ipv6: bool)
    -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Turns IPv6 duplicate address detection off for `link` in the namespace at `netns`
    /// (`net.ipv6.conf.<link>.accept_dad = 0`).
    fn disable_dad(
        &self,
        netns: &Path,
        link: &IfName,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// `net.ipv6.conf.<link>.disable_ipv6 = 1` in the host namespace.
    fn disable_ipv6(&self, link: &IfName) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// `net.ipv4.conf.<link>.route_localnet = 1` in the host namespace.
    fn enable_route_localnet(
        &self,
        link: &IfName,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// The garbage collection thresholds of `family`'s neighbour table (machine-wide; see
    /// [`crate::neigh`]), readable from any network namespace.
    fn neighbour_thresholds(
        &self,
        family: Family,
    ) -> impl Future<Output = Result<Thresholds, SystemError>> + Send;

    /// Writes `values` as `net.ipv{4,6}.neigh.default.gc_thresh1/2/3` from the node
    /// namespace. Only the initial network namespace has them: from any other this fails
    /// (naming why) and changes nothing.
    fn set_neighbour_thresholds(
        &self,
        family: Family,
        values: Thresholds,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;
}

/// The daemon's nftables table and the node facts host ports depend on. The text and the
/// elements are built by [`crate::firewall`]; implementations only apply and read them.
pub trait Firewall: Send + Sync {
    /// Replaces our table with `table` in one transaction (creating it if missing).
    fn replace_table(
        &self,
        table: &FirewallTable,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Adds `elements` in one transaction: all or none. An existing key (of anybody) fails
    /// it with [`SystemError::AlreadyExists`]; a missing table with
    /// [`SystemError::NotFound`].
    fn add_elements(
        &self,
        elements: &[HostPortElement],
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Deletes `elements` by key (in one transaction when they are all present); missing
    /// ones (or a missing table) are fine. Returns how many were deleted.
    fn delete_elements(
        &self,
        elements: &[HostPortElement],
    ) -> impl Future<Output = Result<usize, SystemError>> + Send;

    /// Makes the egress exemption sets hold exactly `exempt`, in one transaction that
    /// touches nothing else of the table (see [`crate::egress::render_sync`]). A missing
    /// table is [`SystemError::NotFound`].
    fn sync_egress_exempt(
        &self,
        exempt: &EgressExempt,
    ) -> impl Future<Output = Result<(), SystemError>> + Send;

    /// Our table as it is, `None` if it does not exist.
    fn inspect_table(
        &self,
    ) -> impl Future<Output = Result<Option<ObservedTable>, SystemError>> + Send;

    /// Sockets in the node namespace that hold one of `ports` (TCP listeners, bound
    /// unconnected UDP sockets), with their owners where they can be found.
    fn listeners(
        &self,
        ports: &[(Protocol, u16)],
    ) -> impl Future<Output = Result<Vec<Listener>, SystemError>> + Send;

    /// Deletes the UDP conntrack entries described by `flushes` in the node namespace.
    /// Returns how many were deleted.
    fn flush_conntrack(
        &self,
        flushes: &[ConntrackFlush],
    ) -> impl Future<Output = Result<u64, SystemError>> + Send;
}

/// The kernel events the daemon watches, instead of polling every pod.
pub trait KernelEvents: Send + Sync {
    /// Starts delivering [`KernelEvent`]s; they arrive on the returned channel for as long
    /// as it is open. Several events may be coalesced into one `MountsChanged`.
    fn subscribe(
        &self,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::UnboundedReceiver<KernelEvent>, SystemError>>
    + Send;
}

/// Everything the manager needs from the kernel. Implemented automatically for any type
/// that implements the six concern traits.
pub trait System:
    Namespaces + Processes + Netlink + Sysctl + Firewall + KernelEvents + Send + Sync + 'static
{
}

impl<T> System for T where
    T: Namespaces + Processes + Netlink + Sysctl + Firewall + KernelEvents + Send + Sync + 'static
{
}
