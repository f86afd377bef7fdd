//! [`FakeSystem`]: an in-memory model of the kernel objects the daemon touches, implementing
//! every [`crate::system`] trait without root.
//!
//! It models network namespaces (a namespace lives while it is bind-mounted or a process is
//! in it; when it dies its links die, and so do their veth peers elsewhere), links (bridges
//! and veth pairs with up/mtu/master/addresses), default routes, loopback, forwarding, DAD
//! and pause processes (pid + start time, so pid reuse is observable). It enforces the
//! kernel rules that matter for ordering: a link must be down to be renamed, a route needs
//! its link up with an address on the gateway's subnet, names are unique per namespace.
//!
//! Every call is recorded in order (`"create_netns /run/netns/web"`). Faults can be
//! injected: fail the N-th call ([`FakeSystem::fail_call`]), fail every call whose record
//! contains a string ([`FakeSystem::fail_on`]), or "crash" after N calls
//! ([`FakeSystem::crash_after`]): from then on every call fails, so nothing is undone,
//! until [`FakeSystem::revive`]; together with a fresh manager on the same state directory
//! this simulates a daemon crash at any point. Clones share the same model.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use crate::firewall::{
    self, ConntrackFlush, FirewallBase, FirewallTable, HostPortElement, HostPortMap, Listener,
    ObservedTable,
};
use crate::kernel::NetnsId;
use crate::kernel::{
    KernelEvent, LinkInfo, NodeNetwork, NodeNetworkKind, PauseProcess, RunningPause,
};
use crate::names::{IfName, PodId};
use crate::ports::{Family, Protocol};
use crate::system::{
    Firewall, KernelEvents, Namespaces, Netlink, PauseExit, Processes, Sysctl, SystemError,
};

const HOST: u64 = 0;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Bridge,
    Veth { peer_net: u64, peer: String },
}

#[derive(Debug, Clone)]
struct FakeLink {
    kind: Kind,
    up: bool,
    mtu: u32,
    master: Option<String>,
    addresses: BTreeSet<IpNet>,
}

#[derive(Debug, Clone, Default)]
struct Net {
    links: BTreeMap<String, FakeLink>,
    routes: BTreeSet<(String, IpAddr)>,
    loopback_up: bool,
    dad_off: BTreeSet<String>,
}

type ElementKey = (HostPortMap, Option<IpAddr>, Protocol, u16);

/// The nftables table of the node namespace.
#[derive(Debug, Clone)]
struct FakeTable {
    base: FirewallBase,
    elements: BTreeMap<ElementKey, HostPortElement>,
    /// Lines added by "someone else" (foreign rules).
    extra_lines: Vec<String>,
    /// Lines of the base removed by "someone else".
    removed_lines: Vec<String>,
}

/// One UDP conntrack entry: its family, reply source and original destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FakeConntrack {
    /// The reply source (the pod for a DNATed flow).
    pub reply_source: IpAddr,
    /// The original destination port.
    pub destination_port: u16,
}

#[derive(Debug, Clone)]
struct FakeProcess {
    id: PodId,
    start_time: u64,
    net: u64,
    /// Started by this "daemon process" ([`Processes::start_pause`]), not adopted.
    child: bool,
}

#[derive(Debug)]
struct Model {
    nets: BTreeMap<u64, Net>,
    next_net: u64,
    mounts: BTreeMap<PathBuf, u64>,
    processes: BTreeMap<u32, FakeProcess>,
    next_pid: u32,
    clock: u64,
    forwarding: (bool, bool),
    default_route_mtu: Option<u32>,
    calls: Vec<String>,
    fail_calls: BTreeSet<usize>,
    fail_matching: Vec<String>,
    crash_after: Option<usize>,
    crashed: bool,
    yield_each_call: bool,
    table: Option<FakeTable>,
    /// Our peer routes in the host namespace, (destination, gateway).
    peer_routes: BTreeSet<(IpNet, IpAddr)>,
    /// Destinations of routes in the host namespace that are not ours.
    foreign_routes: BTreeSet<IpNet>,
    hairpin: BTreeSet<String>,
    route_localnet: BTreeSet<String>,
    listeners: Vec<Listener>,
    conntrack: Vec<FakeConntrack>,
    /// Children that exited and are not reaped yet (as `waitpid` would find them).
    zombies: BTreeSet<PauseProcess>,
    /// Bumped whenever a process exits (wakes the exit watches).
    exits: tokio::sync::watch::Sender<u64>,
    /// Exit watches cannot be made (as when a daemon has no descriptor left).
    no_watches: bool,
    /// Subscribers of [`KernelEvents`].
    subscribers: Vec<tokio::sync::mpsc::UnboundedSender<KernelEvent>>,
    /// Processes of someone else (a sandbox's) that keep a namespace alive: pid -> namespace.
    holders: BTreeMap<u32, u64>,
}

impl Default for Model {
    fn default() -> Self {
        Self {
            nets: BTreeMap::from([(
                HOST,
                Net {
                    loopback_up: true,
                    ..Net::default()
                },
            )]),
            next_net: 1,
            mounts: BTreeMap::new(),
            processes: BTreeMap::new(),
            next_pid: 1000,
            clock: 1,
            forwarding: (false, false),
            default_route_mtu: Some(1500),
            calls: Vec::new(),
            fail_calls: BTreeSet::new(),
            fail_matching: Vec::new(),
            crash_after: None,
            crashed: false,
            yield_each_call: true,
            table: None,
            peer_routes: BTreeSet::new(),
            foreign_routes: BTreeSet::new(),
            hairpin: BTreeSet::new(),
            route_localnet: BTreeSet::new(),
            listeners: Vec::new(),
            conntrack: Vec::new(),
            zombies: BTreeSet::new(),
            exits: tokio::sync::watch::channel(0).0,
            no_watches: false,
            subscribers: Vec::new(),
            holders: BTreeMap::new(),
        }
    }
}

fn ns_name(netns: Option<&Path>) -> String {
    match netns {
        None => "host".to_string(),
        Some(p) => p.display().to_string(),
    }
}

impl Model {
    /// Tells every subscriber, as the kernel does (also of the daemon's own changes).
    fn emit(&mut self, event: KernelEvent) {
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }

    /// Removes the bind mount at `path` (if any), telling subscribers.
    fn unmount(&mut self, path: &Path) -> Option<u64> {
        let id = self.mounts.remove(path);
        if id.is_some() {
            self.emit(KernelEvent::MountsChanged);
        }
        id
    }

    fn net_id(&self, netns: Option<&Path>) -> Result<u64, SystemError> {
        match netns {
            None => Ok(HOST),
            Some(p) => self
                .mounts
                .get(p)
                .copied()
                .ok_or_else(|| SystemError::NotFound {
                    object: format!("netns {}", p.display()),
                }),
        }
    }

    fn net(&mut self, id: u64) -> &mut Net {
        self.nets
            .get_mut(&id)
            .expect("namespace ids in mounts and links are live")
    }

    fn link_mut(
        &mut self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> Result<&mut FakeLink, SystemError> {
        let id = self.net_id(netns)?;
        self.net(id)
            .links
            .get_mut(link.as_str())
            .ok_or_else(|| SystemError::NotFound {
                object: format!("link {link} in {}", ns_name(netns)),
            })
    }

    /// Removes a link and (for a veth) its peer, plus routes over them and bridge
    /// membership of ports (for a bridge).
    fn remove_link(&mut self, net: u64, name: &str) {
        let Some(link) = self.net(net).links.remove(name) else {
            return;
        };
        if net == HOST {
            self.hairpin.remove(name);
            self.route_localnet.remove(name);
            self.emit(KernelEvent::LinkRemoved(name.to_string()));
        }
        let n = self.net(net);
        n.routes.retain(|(dev, _)| dev != name);
        n.dad_off.remove(name);
        match link.kind {
            Kind::Veth { peer_net, peer } => {
                if self.nets.contains_key(&peer_net) {
                    let p = self.net(peer_net);
                    if p.links.remove(&peer).is_some() {
                        p.routes.retain(|(dev, _)| *dev != peer);
                        p.dad_off.remove(&peer);
                        if peer_net == HOST {
                            self.hairpin.remove(&peer);
                            self.route_localnet.remove(&peer);
                            self.emit(KernelEvent::LinkRemoved(peer));
                        }
                    }
                }
            }
            Kind::Bridge => {
                for l in self.net(net).links.values_mut() {
                    if l.master.as_deref() == Some(name) {
                        l.master = None;
                    }
                }
            }
        }
    }

    /// Destroys namespaces that are neither mounted nor inhabited.
    /// `pid` exits: a child of ours stays a zombie until reaped ([`Processes::stop_pause`]
    /// reaps at once, `reap` false), and exit watches wake.
    fn exit_process(&mut self, pid: u32, reap: bool) {
        self.holders.remove(&pid);
        if let Some(p) = self.processes.remove(&pid) {
            if p.child && !reap {
                self.zombies.insert(PauseProcess {
                    pid,
                    start_time: p.start_time,
                });
            }
            self.exits.send_modify(|n| *n += 1);
        }
        self.collect_namespaces();
    }

    fn collect_namespaces(&mut self) {
        let live: BTreeSet<u64> = self
            .mounts
            .values()
            .copied()
            .chain(self.processes.values().map(|p| p.net))
            .chain(self.holders.values().copied())
            .chain([HOST])
            .collect();
        let dead: Vec<u64> = self
            .nets
            .keys()
            .copied()
            .filter(|id| !live.contains(id))
            .collect();
        for id in dead {
            let names: Vec<String> = self.net(id).links.keys().cloned().collect();
            for name in names {
                self.remove_link(id, &name);
            }
            self.nets.remove(&id);
        }
    }

    fn new_net(&mut self) -> u64 {
        let id = self.next_net;
        self.next_net += 1;
        self.nets.insert(id, Net::default());
        id
    }
}

/// The in-memory, recording, fault-injecting kernel model. Cheap to clone; clones share
/// the model (so a "restarted daemon" sees the same kernel).
#[derive(Debug, Clone, Default)]
pub struct FakeSystem {
    model: Arc<Mutex<Model>>,
}

/// A summary of the model, for assertions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Bind-mounted namespaces.
    pub mounts: Vec<PathBuf>,
    /// Number of live namespaces other than the host's (mounted or inhabited).
    pub namespaces: usize,
    /// Link names in the host namespace.
    pub host_links: Vec<String>,
    /// Running pause processes.
    pub processes: Vec<RunningPause>,
}

impl FakeSystem {
    /// A fresh model: only the host namespace, no links, no processes; the default-route
    /// interface has MTU 1500.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a call and applies fault injection; returns the locked model on success.
    async fn call(&self, record: String) -> Result<MutexGuard<'_, Model>, SystemError> {
        let yield_now = self.lock().yield_each_call;
        if yield_now {
            tokio::task::yield_now().await;
        }
        let mut m = self.lock();
        m.calls.push(record.clone());
        let n = m.calls.len();
        if m.crash_after.is_some_and(|limit| n > limit) {
            m.crashed = true;
        }
        if m.crashed {
            return Err(SystemError::other(
                record,
                format!("fake system crashed (call {n})"),
            ));
        }
        if m.fail_calls.remove(&n) || m.fail_matching.iter().any(|s| record.contains(s.as_str())) {
            return Err(SystemError::other(
                record,
                format!("injected failure (call {n})"),
            ));
        }
        Ok(m)
    }

    // ---- fault injection and introspection ----

    /// Every call made so far, in order (including failed ones).
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Number of calls made so far.
    pub fn call_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// Makes call number `n` (1-based, counting every call since the model was created)
    /// fail once.
    pub fn fail_call(&self, n: usize) {
        self.lock().fail_calls.insert(n);
    }

    /// Makes every call whose record contains `needle` fail (e.g. `"add_address"` or
    /// `"delete_link nh"`).
    pub fn fail_on(&self, needle: &str) {
        self.lock().fail_matching.push(needle.to_string());
    }

    /// Clears all injected failures (not a crash).
    pub fn clear_failures(&self) {
        let mut m = self.lock();
        m.fail_calls.clear();
        m.fail_matching.clear();
    }

    /// After call number `n` (counting every call since the model was created), every
    /// further call fails until [`FakeSystem::revive`], as if the daemon had died there.
    pub fn crash_after(&self, n: usize) {
        self.lock().crash_after = Some(n);
    }

    /// Ends a simulated crash: calls work again.
    pub fn revive(&self) {
        let mut m = self.lock();
        m.crash_after = None;
        m.crashed = false;
    }

    /// Whether a simulated crash is in effect.
    pub fn crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Whether each call yields to the async scheduler first (default `true`, so that
    /// concurrent callers interleave).
    pub fn set_yield(&self, yield_each_call: bool) {
        self.lock().yield_each_call = yield_each_call;
    }

    /// Sets what [`Netlink::default_route_mtu`] reports.
    pub fn set_default_route_mtu(&self, mtu: Option<u32>) {
        self.lock().default_route_mtu = mtu;
    }

    /// A summary of the model.
    pub fn snapshot(&self) -> Snapshot {
        let m = self.lock();
        Snapshot {
            mounts: m.mounts.keys().cloned().collect(),
            namespaces: m.nets.len() - 1,
            host_links: m.nets[&HOST].links.keys().cloned().collect(),
            processes: m
                .processes
                .iter()
                .map(|(pid, p)| RunningPause {
                    id: p.id.clone(),
                    process: PauseProcess {
                        pid: *pid,
                        start_time: p.start_time,
                    },
                })
                .collect(),
        }
    }

    /// Link names inside the namespace at `path` (`None` if it is not mounted).
    pub fn links_in(&self, path: &Path) -> Option<Vec<String>> {
        let m = self.lock();
        let id = m.mounts.get(path)?;
        Some(m.nets[id].links.keys().cloned().collect())
    }

    /// Default routes `(device, gateway)` inside the namespace at `path`.
    pub fn routes_in(&self, path: &Path) -> Vec<(String, IpAddr)> {
        let m = self.lock();
        m.mounts
            .get(path)
            .map(|id| m.nets[id].routes.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether loopback is up and DAD is off for `link` inside the namespace at `path`.
    pub fn loopback_and_dad(&self, path: &Path, link: &str) -> Option<(bool, bool)> {
        let m = self.lock();
        let net = &m.nets[m.mounts.get(path)?];
        Some((net.loopback_up, net.dad_off.contains(link)))
    }

    /// IP forwarding state (IPv4, IPv6).
    pub fn forwarding(&self) -> (bool, bool) {
        self.lock().forwarding
    }

    /// State of a link, without recording a call.
    pub fn peek_link(&self, netns: Option<&Path>, link: &str) -> Option<LinkInfo> {
        let m = self.lock();
        let id = m.net_id(netns).ok()?;
        m.nets[&id].links.get(link).map(|l| LinkInfo {
            up: l.up,
            mtu: l.mtu,
            master: l.master.clone().and_then(|n| IfName::new(n).ok()),
            addresses: l.addresses.iter().copied().collect(),
        })
    }

    // ---- out-of-band changes (someone else touching the kernel) ----

    /// Creates a namespace bind-mounted at `path` as another tool would (for `attach`).
    pub fn add_foreign_netns(&self, path: &Path) {
        let mut m = self.lock();
        let id = m.new_net();
        m.mounts.insert(path.to_path_buf(), id);
    }

    /// Makes `path` name a new, empty namespace behind the daemon's back, as
    /// `/proc/<pid>/ns/net` does when the pid's process died and the pid was reused: the old
    /// namespace goes away (with the pod end of its veth and so the host end too).
    pub fn replace_netns_externally(&self, path: &Path) {
        let mut m = self.lock();
        m.unmount(path);
        m.collect_namespaces();
        let id = m.new_net();
        m.mounts.insert(path.to_path_buf(), id);
    }

    /// Unmounts `path` behind the daemon's back.
    pub fn remove_netns_externally(&self, path: &Path) {
        let mut m = self.lock();
        m.unmount(path);
        m.collect_namespaces();
    }

    /// Unmounts `path` behind the daemon's back while `holder` (a process of the test)
    /// keeps the namespace alive, as a sandbox's processes do until the runtime kills them.
    /// Returns the holder's pid, for [`FakeSystem::kill`].
    pub fn unmount_netns_keeping_it_alive(&self, path: &Path) -> u32 {
        let mut m = self.lock();
        let net = *m.mounts.get(path).expect("a mounted namespace");
        let pid = m.next_pid;
        m.next_pid += 1;
        m.holders.insert(pid, net);
        m.unmount(path);
        pid
    }

    /// Wires the namespace at `netns` as another network plugin would: a veth pair with
    /// `pod_end` inside it and `host_end` in the node namespace.
    pub fn add_foreign_veth(&self, netns: &Path, pod_end: &str, host_end: &str) {
        let mut m = self.lock();
        let net = *m.mounts.get(netns).expect("a mounted namespace");
        let link = |peer_net: u64, peer: &str| FakeLink {
            kind: Kind::Veth {
                peer_net,
                peer: peer.to_string(),
            },
            up: true,
            mtu: 1500,
            master: None,
            addresses: BTreeSet::new(),
        };
        m.net(net)
            .links
            .insert(pod_end.to_string(), link(HOST, host_end));
        m.net(HOST)
            .links
            .insert(host_end.to_string(), link(net, pod_end));
    }

    /// Kills a process behind the daemon's back.
    pub fn kill(&self, pid: u32) {
        self.lock().exit_process(pid, false);
    }

    /// Simulates a restart of the daemon process: every running pause is re-parented away
    /// (adopted by the next daemon, no longer a child it can `waitpid` for), and exited
    /// children are reaped by init.
    pub fn adopt_pauses(&self) {
        let mut m = self.lock();
        for p in m.processes.values_mut() {
            p.child = false;
        }
        m.zombies.clear();
    }

    /// Makes [`Processes::watch_pause`] answer "no watch possible" (`true`), as a daemon
    /// out of descriptors would, or work again (`false`).
    pub fn set_watches_unavailable(&self, unavailable: bool) {
        self.lock().no_watches = unavailable;
    }

    /// How many recorded calls start with `prefix` (e.g. `"pause_alive "`: the `/proc` reads
    /// of the real system).
    pub fn calls_starting_with(&self, prefix: &str) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .count()
    }

    /// Starts a pause process tagged with `id` in `netns` behind the daemon's back.
    pub fn spawn_pause_externally(&self, id: &PodId, netns: &Path) -> PauseProcess {
        let mut m = self.lock();
        let net = m.mounts[netns];
        let pid = m.next_pid;
        m.next_pid += 1;
        m.clock += 1;
        let start_time = m.clock;
        m.processes.insert(
            pid,
            FakeProcess {
                id: id.clone(),
                start_time,
                net,
                child: false,
            },
        );
        PauseProcess { pid, start_time }
    }

    /// Deletes a link behind the daemon's back.
    pub fn delete_link_externally(&self, netns: Option<&Path>, link: &str) {
        let mut m = self.lock();
        if let Ok(id) = m.net_id(netns) {
            m.remove_link(id, link);
        }
    }

    /// Creates a veth pair behind the daemon's back (host end `host`, other end `peer` in
    /// the host namespace too).
    pub fn add_host_veth_externally(&self, host: &str, peer: &str) {
        let mut m = self.lock();
        let mk = |peer: &str| FakeLink {
            kind: Kind::Veth {
                peer_net: HOST,
                peer: peer.to_string(),
            },
            up: false,
            mtu: 1500,
            master: None,
            addresses: BTreeSet::new(),
        };
        m.net(HOST).links.insert(host.to_string(), mk(peer));
        m.net(HOST).links.insert(peer.to_string(), mk(host));
    }

    /// Changes a link behind the daemon's back.
    pub fn modify_link_externally(
        &self,
        netns: Option<&Path>,
        link: &str,
        f: impl FnOnce(&mut LinkInfo),
    ) {
        let mut m = self.lock();
        let Ok(id) = m.net_id(netns) else { return };
        let Some(l) = m.net(id).links.get_mut(link) else {
            return;
        };
        let mut info = LinkInfo {
            up: l.up,
            mtu: l.mtu,
            master: l.master.clone().and_then(|n| IfName::new(n).ok()),
            addresses: l.addresses.iter().copied().collect(),
        };
        f(&mut info);
        l.up = info.up;
        l.mtu = info.mtu;
        l.master = info.master.map(String::from);
        l.addresses = info.addresses.into_iter().collect();
        if !l.up {
            m.net(id).routes.retain(|(dev, _)| dev != link);
        }
    }

    // ---- host ports, peers (inspection and out-of-band changes) ----

    /// The elements in the table, `None` if there is no table.
    pub fn firewall_elements(&self) -> Option<Vec<HostPortElement>> {
        let m = self.lock();
        m.table
            .as_ref()
            .map(|t| t.elements.values().copied().collect())
    }

    /// Installs an empty table for `base`, as a daemon start would have.
    pub fn install_table(&self, base: FirewallBase) {
        self.lock().table = Some(FakeTable {
            base,
            elements: BTreeMap::new(),
            extra_lines: Vec::new(),
            removed_lines: Vec::new(),
        });
    }

    /// `nft flush ruleset` behind the daemon's back: the table is gone.
    pub fn flush_ruleset_externally(&self) {
        self.lock().table = None;
    }

    /// Adds a rule line to the table behind the daemon's back (nothing if there is none).
    pub fn add_foreign_rule_externally(&self, line: &str) {
        if let Some(t) = self.lock().table.as_mut() {
            t.extra_lines.push(line.to_string());
        }
    }

    /// Deletes a line of the base table behind the daemon's back.
    pub fn remove_rule_externally(&self, line: &str) {
        if let Some(t) = self.lock().table.as_mut() {
            t.removed_lines.push(line.to_string());
        }
    }

    /// Adds (or overwrites) an element behind the daemon's back.
    pub fn add_element_externally(&self, element: HostPortElement) {
        if let Some(t) = self.lock().table.as_mut() {
            t.elements.insert(element.key(), element);
        }
    }

    /// Deletes an element behind the daemon's back.
    pub fn delete_element_externally(&self, element: &HostPortElement) {
        if let Some(t) = self.lock().table.as_mut() {
            t.elements.remove(&element.key());
        }
    }

    /// Our peer routes, (destination, gateway).
    pub fn peer_route_list(&self) -> Vec<(IpNet, IpAddr)> {
        self.lock().peer_routes.iter().copied().collect()
    }

    /// Deletes one of our routes behind the daemon's back.
    pub fn delete_route_externally(&self, cidr: IpNet, via: IpAddr) {
        self.lock().peer_routes.remove(&(cidr, via));
    }

    /// Adds a route of ours behind the daemon's back (e.g. left by an earlier run).
    pub fn add_peer_route_externally(&self, cidr: IpNet, via: IpAddr) {
        self.lock().peer_routes.insert((cidr, via));
    }

    /// Adds a route to `cidr` that is not ours.
    pub fn add_foreign_route(&self, cidr: IpNet) {
        self.lock().foreign_routes.insert(cidr);
    }

    /// Whether hairpin mode is on for the host link `link`.
    pub fn hairpin(&self, link: &str) -> bool {
        self.lock().hairpin.contains(link)
    }

    /// Whether `route_localnet` is on for the host link `link`.
    pub fn route_localnet(&self, link: &str) -> bool {
        self.lock().route_localnet.contains(link)
    }

    /// Sets the sockets [`Firewall::listeners`] reports (filtered by port).
    pub fn set_listeners(&self, listeners: Vec<Listener>) {
        self.lock().listeners = listeners;
    }

    /// Adds UDP conntrack entries.
    pub fn add_conntrack(&self, entries: &[FakeConntrack]) {
        self.lock().conntrack.extend_from_slice(entries);
    }

    /// The UDP conntrack entries.
    pub fn conntrack(&self) -> Vec<FakeConntrack> {
        self.lock().conntrack.clone()
    }
}

impl KernelEvents for FakeSystem {
    async fn subscribe(
        &self,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<KernelEvent>, SystemError> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.lock().subscribers.push(tx);
        Ok(rx)
    }
}

impl Namespaces for FakeSystem {
    /// The lexical rules only: the fake's namespaces are not on the real filesystem.
    fn check_attach_path(
        &self,
        path: &Path,
        netns_dir: &Path,
    ) -> Result<(), crate::netns_path::NetnsPathError> {
        crate::netns_path::check_attach_path_lexically(path, netns_dir).map(|_| ())
    }

    async fn create_netns(&self, path: &Path) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("create_netns {}", path.display()))
            .await?;
        if m.mounts.contains_key(path) {
            return Err(SystemError::AlreadyExists {
                object: format!("netns {}", path.display()),
            });
        }
        let id = m.new_net();
        m.mounts.insert(path.to_path_buf(), id);
        Ok(())
    }

    async fn delete_netns(&self, path: &Path) -> Result<bool, SystemError> {
        let mut m = self
            .call(format!("delete_netns {}", path.display()))
            .await?;
        let existed = m.unmount(path).is_some();
        m.collect_namespaces();
        Ok(existed)
    }

    async fn netns_exists(&self, path: &Path) -> Result<bool, SystemError> {
        let m = self
            .call(format!("netns_exists {}", path.display()))
            .await?;
        Ok(m.mounts.contains_key(path))
    }

    async fn netns_id(&self, path: &Path) -> Result<Option<NetnsId>, SystemError> {
        let m = self.call(format!("netns_id {}", path.display())).await?;
        Ok(m.mounts.get(path).map(|&ino| NetnsId { dev: 4, ino }))
    }

    async fn list_netns(&self, dir: &Path) -> Result<Vec<PathBuf>, SystemError> {
        let m = self.call(format!("list_netns {}", dir.display())).await?;
        Ok(m.mounts
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    async fn restore_netns(&self, path: &Path, holder: &PauseProcess) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("restore_netns {} {}", path.display(), holder.pid))
            .await?;
        let net = m
            .processes
            .get(&holder.pid)
            .filter(|p| p.start_time == holder.start_time)
            .map(|p| p.net)
            .ok_or_else(|| SystemError::NotFound {
                object: format!("pause {holder}"),
            })?;
        if m.mounts.contains_key(path) {
            return Err(SystemError::AlreadyExists {
                object: format!("netns {}", path.display()),
            });
        }
        m.mounts.insert(path.to_path_buf(), net);
        Ok(())
    }
}

impl Processes for FakeSystem {
    async fn start_pause(&self, id: &PodId, netns: &Path) -> Result<PauseProcess, SystemError> {
        let mut m = self
            .call(format!("start_pause {id} {}", netns.display()))
            .await?;
        let net = m.net_id(Some(netns))?;
        let pid = m.next_pid;
        m.next_pid += 1;
        m.clock += 1;
        let start_time = m.clock;
        m.processes.insert(
            pid,
            FakeProcess {
                id: id.clone(),
                start_time,
                net,
                child: true,
            },
        );
        Ok(PauseProcess { pid, start_time })
    }

    async fn stop_pause(&self, process: &PauseProcess) -> Result<bool, SystemError> {
        let mut m = self.call(format!("stop_pause {}", process.pid)).await?;
        let same = m
            .processes
            .get(&process.pid)
            .is_some_and(|p| p.start_time == process.start_time);
        if same {
            m.exit_process(process.pid, true);
        }
        m.zombies.remove(process);
        Ok(same)
    }

    async fn pause_alive(&self, process: &PauseProcess) -> Result<bool, SystemError> {
        let mut m = self.call(format!("pause_alive {}", process.pid)).await?;
        let alive = m
            .processes
            .get(&process.pid)
            .is_some_and(|p| p.start_time == process.start_time);
        if !alive {
            // The real system reaps a dead child it finds.
            m.zombies.remove(process);
        }
        Ok(alive)
    }

    async fn child_pause_exited(
        &self,
        process: &PauseProcess,
    ) -> Result<Option<bool>, SystemError> {
        let mut m = self
            .call(format!("child_pause_exited {}", process.pid))
            .await?;
        if m.zombies.remove(process) {
            return Ok(Some(true));
        }
        Ok(m.processes
            .get(&process.pid)
            .filter(|p| p.child && p.start_time == process.start_time)
            .map(|_| false))
    }

    async fn watch_pause(&self, process: &PauseProcess) -> Result<Option<PauseExit>, SystemError> {
        let m = self.call(format!("watch_pause {}", process.pid)).await?;
        if m.no_watches {
            return Ok(None);
        }
        let mut exits = m.exits.subscribe();
        drop(m);
        let model = self.clone();
        let process = *process;
        Ok(Some(Box::pin(async move {
            loop {
                let alive = model
                    .lock()
                    .processes
                    .get(&process.pid)
                    .is_some_and(|p| p.start_time == process.start_time);
                if !alive || exits.changed().await.is_err() {
                    return;
                }
            }
        })))
    }

    async fn list_pauses(&self) -> Result<Vec<RunningPause>, SystemError> {
        let m = self.call("list_pauses".to_string()).await?;
        Ok(m.processes
            .iter()
            .map(|(pid, p)| RunningPause {
                id: p.id.clone(),
                process: PauseProcess {
                    pid: *pid,
                    start_time: p.start_time,
                },
            })
            .collect())
    }
}

impl Netlink for FakeSystem {
    async fn ensure_bridge(&self, name: &IfName, gateways: &[IpNet]) -> Result<(), SystemError> {
        let mut m = self.call(format!("ensure_bridge {name}")).await?;
        let host = m.net(HOST);
        let bridge = host
            .links
            .entry(name.to_string())
            .or_insert_with(|| FakeLink {
                kind: Kind::Bridge,
                up: false,
                mtu: 1500,
                master: None,
                addresses: BTreeSet::new(),
            });
        if bridge.kind != Kind::Bridge {
            return Err(SystemError::other(
                format!("link {name}"),
                "exists and is not a bridge",
            ));
        }
        bridge.up = true;
        bridge.addresses.extend(gateways.iter().copied());
        Ok(())
    }

    async fn create_veth(
        &self,
        host: &IfName,
        peer: &IfName,
        netns: &Path,
        mtu: u32,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("create_veth {host} {peer} {}", netns.display()))
            .await?;
        let pod_net = m.net_id(Some(netns))?;
        if m.net(HOST).links.contains_key(host.as_str()) {
            return Err(SystemError::AlreadyExists {
                object: format!("link {host}"),
            });
        }
        if m.net(pod_net).links.contains_key(peer.as_str()) {
            return Err(SystemError::AlreadyExists {
                object: format!("link {peer} in {}", netns.display()),
            });
        }
        let mk = |peer_net: u64, peer: &IfName| FakeLink {
            kind: Kind::Veth {
                peer_net,
                peer: peer.to_string(),
            },
            up: false,
            mtu,
            master: None,
            addresses: BTreeSet::new(),
        };
        let host_link = mk(pod_net, peer);
        let peer_link = mk(HOST, host);
        m.net(HOST).links.insert(host.to_string(), host_link);
        m.net(pod_net).links.insert(peer.to_string(), peer_link);
        Ok(())
    }

    async fn set_master(&self, link: &IfName, master: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("set_master {link} {master}")).await?;
        match m.net(HOST).links.get(master.as_str()) {
            Some(l) if l.kind == Kind::Bridge => {}
            Some(_) => {
                return Err(SystemError::other(
                    format!("link {master}"),
                    "is not a bridge",
                ));
            }
            None => {
                return Err(SystemError::NotFound {
                    object: format!("bridge {master}"),
                });
            }
        }
        m.link_mut(None, link)?.master = Some(master.to_string());
        Ok(())
    }

    async fn link_up(&self, netns: Option<&Path>, link: &IfName) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("link_up {link} {}", ns_name(netns)))
            .await?;
        m.link_mut(netns, link)?.up = true;
        Ok(())
    }

    async fn rename_link(
        &self,
        netns: &Path,
        from: &IfName,
        to: &IfName,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("rename_link {from} {to} {}", netns.display()))
            .await?;
        let id = m.net_id(Some(netns))?;
        let object = format!("link {from} in {}", netns.display());
        let net = m.net(id);
        if net.links.contains_key(to.as_str()) {
            return Err(SystemError::AlreadyExists {
                object: format!("link {to} in {}", netns.display()),
            });
        }
        let link = net.links.get(from.as_str()).ok_or(SystemError::NotFound {
            object: object.clone(),
        })?;
        if link.up {
            return Err(SystemError::other(
                object,
                "device or resource busy (link is up)",
            ));
        }
        let link = net.links.remove(from.as_str()).expect("checked above");
        let kind = link.kind.clone();
        net.links.insert(to.to_string(), link);
        if let Kind::Veth { peer_net, peer } = kind
            && let Some(Kind::Veth { peer: back, .. }) = m
                .nets
                .get_mut(&peer_net)
                .and_then(|n| n.links.get_mut(&peer))
                .map(|l| &mut l.kind)
        {
            *back = to.to_string();
        }
        Ok(())
    }

    async fn set_mtu(
        &self,
        netns: Option<&Path>,
        link: &IfName,
        mtu: u32,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("set_mtu {link} {mtu} {}", ns_name(netns)))
            .await?;
        m.link_mut(netns, link)?.mtu = mtu;
        Ok(())
    }

    async fn add_address(
        &self,
        netns: &Path,
        link: &IfName,
        address: IpNet,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("add_address {address} {link} {}", netns.display()))
            .await?;
        m.link_mut(Some(netns), link)?.addresses.insert(address);
        Ok(())
    }

    async fn add_default_route(
        &self,
        netns: &Path,
        link: &IfName,
        gateway: IpAddr,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!(
                "add_default_route {gateway} {link} {}",
                netns.display()
            ))
            .await?;
        let l = m.link_mut(Some(netns), link)?;
        if !l.up || !l.addresses.iter().any(|a| a.contains(&gateway)) {
            return Err(SystemError::other(
                format!(
                    "default route via {gateway} dev {link} in {}",
                    netns.display()
                ),
                "network is unreachable",
            ));
        }
        let id = m.net_id(Some(netns))?;
        m.net(id).routes.insert((link.to_string(), gateway));
        Ok(())
    }

    async fn loopback_up(&self, netns: &Path) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("loopback_up {}", netns.display()))
            .await?;
        let id = m.net_id(Some(netns))?;
        m.net(id).loopback_up = true;
        Ok(())
    }

    async fn delete_link(&self, netns: Option<&Path>, link: &IfName) -> Result<bool, SystemError> {
        let mut m = self
            .call(format!("delete_link {link} {}", ns_name(netns)))
            .await?;
        let id = match m.net_id(netns) {
            Ok(id) => id,
            Err(SystemError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let existed = m.net(id).links.contains_key(link.as_str());
        m.remove_link(id, link.as_str());
        Ok(existed)
    }

    async fn link_info(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> Result<Option<LinkInfo>, SystemError> {
        let m = self
            .call(format!("link_info {link} {}", ns_name(netns)))
            .await?;
        let id = m.net_id(netns)?;
        Ok(m.nets[&id].links.get(link.as_str()).map(|l| LinkInfo {
            up: l.up,
            mtu: l.mtu,
            master: l.master.clone().and_then(|n| IfName::new(n).ok()),
            addresses: l.addresses.iter().copied().collect(),
        }))
    }

    async fn list_links(
        &self,
        netns: Option<&Path>,
        prefix: &str,
    ) -> Result<Vec<IfName>, SystemError> {
        let m = self
            .call(format!("list_links {prefix} {}", ns_name(netns)))
            .await?;
        let id = m.net_id(netns)?;
        Ok(m.nets[&id]
            .links
            .keys()
            .filter(|n| n.starts_with(prefix))
            .filter_map(|n| IfName::new(n.clone()).ok())
            .collect())
    }

    async fn default_routes(&self, netns: &Path) -> Result<Vec<IpAddr>, SystemError> {
        let m = self
            .call(format!("default_routes {}", netns.display()))
            .await?;
        let id = m.net_id(Some(netns))?;
        Ok(m.nets[&id].routes.iter().map(|(_, gw)| *gw).collect())
    }

    async fn default_route_mtu(&self) -> Result<Option<u32>, SystemError> {
        let m = self.call("default_route_mtu".to_string()).await?;
        Ok(m.default_route_mtu)
    }

    async fn set_hairpin(&self, link: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("set_hairpin {link}")).await?;
        let l = m.link_mut(None, link)?;
        if l.master.is_none() {
            return Err(SystemError::other(
                format!("link {link}"),
                "is not a bridge port",
            ));
        }
        m.hairpin.insert(link.to_string());
        Ok(())
    }

    async fn add_route(&self, cidr: IpNet, via: IpAddr) -> Result<(), SystemError> {
        let mut m = self.call(format!("add_route {cidr} {via}")).await?;
        if m.foreign_routes.contains(&cidr) {
            return Err(SystemError::AlreadyExists {
                object: format!("route {cidr} (not ours)"),
            });
        }
        if let Some(other) = m.peer_routes.iter().find(|(c, v)| *c == cidr && *v != via) {
            return Err(SystemError::AlreadyExists {
                object: format!("route {} via {}", other.0, other.1),
            });
        }
        m.peer_routes.insert((cidr, via));
        Ok(())
    }

    async fn delete_route(&self, cidr: IpNet, via: IpAddr) -> Result<bool, SystemError> {
        let mut m = self.call(format!("delete_route {cidr} {via}")).await?;
        Ok(m.peer_routes.remove(&(cidr, via)))
    }

    async fn peer_routes(&self) -> Result<Vec<(IpNet, IpAddr)>, SystemError> {
        let m = self.call("peer_routes".to_string()).await?;
        Ok(m.peer_routes.iter().copied().collect())
    }

    async fn node_networks(&self) -> Result<Vec<NodeNetwork>, SystemError> {
        let m = self.call("node_networks".to_string()).await?;
        let host = &m.nets[&HOST];
        let addresses = host.links.iter().flat_map(|(name, link)| {
            link.addresses.iter().map(|a| NodeNetwork {
                network: *a,
                interface: Some(name.clone()),
                kind: NodeNetworkKind::Address,
            })
        });
        let peers = m.peer_routes.iter().map(|(cidr, _)| NodeNetwork {
            network: *cidr,
            interface: None,
            kind: NodeNetworkKind::Route { ours: true },
        });
        let foreign = m.foreign_routes.iter().map(|cidr| NodeNetwork {
            network: *cidr,
            interface: None,
            kind: NodeNetworkKind::Route { ours: false },
        });
        Ok(addresses.chain(peers).chain(foreign).collect())
    }
}

impl Sysctl for FakeSystem {
    async fn enable_forwarding(&self, ipv6: bool) -> Result<(), SystemError> {
        let mut m = self.call(format!("enable_forwarding ipv6={ipv6}")).await?;
        m.forwarding.0 = true;
        m.forwarding.1 |= ipv6;
        Ok(())
    }

    async fn disable_dad(&self, netns: &Path, link: &IfName) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("disable_dad {link} {}", netns.display()))
            .await?;
        m.link_mut(Some(netns), link)?;
        let id = m.net_id(Some(netns))?;
        m.net(id).dad_off.insert(link.to_string());
        Ok(())
    }

    async fn enable_route_localnet(&self, link: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("enable_route_localnet {link}")).await?;
        m.link_mut(None, link)?;
        m.route_localnet.insert(link.to_string());
        Ok(())
    }
}

impl Firewall for FakeSystem {
    async fn replace_table(&self, table: &FirewallTable) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("replace_table {}", table.elements.len()))
            .await?;
        let mut elements = BTreeMap::new();
        for e in &table.elements {
            if elements.insert(e.key(), *e).is_some() {
                return Err(SystemError::AlreadyExists { object: e.object() });
            }
        }
        m.table = Some(FakeTable {
            base: table.base.clone(),
            elements,
            extra_lines: Vec::new(),
            removed_lines: Vec::new(),
        });
        Ok(())
    }

    async fn add_elements(&self, elements: &[HostPortElement]) -> Result<(), SystemError> {
        let texts: Vec<String> = elements.iter().map(ToString::to_string).collect();
        let mut m = self
            .call(format!("add_elements {}", texts.join(", ")))
            .await?;
        let Some(table) = m.table.as_mut() else {
            return Err(SystemError::NotFound {
                object: firewall::table_object(),
            });
        };
        let mut keys = BTreeSet::new();
        for e in elements {
            if table.elements.contains_key(&e.key()) || !keys.insert(e.key()) {
                return Err(SystemError::AlreadyExists { object: e.object() });
            }
        }
        for e in elements {
            table.elements.insert(e.key(), *e);
        }
        Ok(())
    }

    async fn delete_elements(&self, elements: &[HostPortElement]) -> Result<usize, SystemError> {
        let texts: Vec<String> = elements.iter().map(|e| e.key_text()).collect();
        let mut m = self
            .call(format!("delete_elements {}", texts.join(", ")))
            .await?;
        let Some(table) = m.table.as_mut() else {
            return Ok(0);
        };
        Ok(elements
            .iter()
            .filter(|e| table.elements.remove(&e.key()).is_some())
            .count())
    }

    async fn inspect_table(&self) -> Result<Option<ObservedTable>, SystemError> {
        let m = self.call("inspect_table".to_string()).await?;
        Ok(m.table.as_ref().map(|t| {
            let mut lines = firewall::expected_lines(&t.base);
            for removed in &t.removed_lines {
                if let Some(i) = lines.iter().position(|l| l == removed) {
                    lines.remove(i);
                }
            }
            lines.extend(t.extra_lines.iter().cloned());
            ObservedTable {
                lines,
                elements: t.elements.values().copied().collect(),
                unparsed: Vec::new(),
            }
        }))
    }

    async fn listeners(&self, ports: &[(Protocol, u16)]) -> Result<Vec<Listener>, SystemError> {
        let texts: Vec<String> = ports.iter().map(|(p, n)| format!("{p}/{n}")).collect();
        let m = self.call(format!("listeners {}", texts.join(","))).await?;
        Ok(m.listeners
            .iter()
            .filter(|l| ports.contains(&(l.protocol, l.port)))
            .cloned()
            .collect())
    }

    async fn flush_conntrack(&self, flushes: &[ConntrackFlush]) -> Result<u64, SystemError> {
        let texts: Vec<String> = flushes.iter().map(ToString::to_string).collect();
        let mut m = self
            .call(format!("flush_conntrack {}", texts.join(", ")))
            .await?;
        let before = m.conntrack.len();
        m.conntrack.retain(|entry| {
            !flushes.iter().any(|f| match f {
                ConntrackFlush::ReplySource { address } => entry.reply_source == *address,
                ConntrackFlush::DestinationPort { family, port } => {
                    entry.destination_port == *port && Family::of(entry.reply_source) == *family
                }
            })
        });
        Ok((before - m.conntrack.len()) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::PodName;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    fn n(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }

    #[tokio::test]
    async fn netns_lives_while_mounted_or_inhabited() {
        let f = FakeSystem::new();
        let id = PodName::new("a").unwrap().id();
        f.create_netns(&p("/run/netns/a")).await.unwrap();
        assert!(matches!(
            f.create_netns(&p("/run/netns/a")).await,
            Err(SystemError::AlreadyExists { .. })
        ));
        let pause = f.start_pause(&id, &p("/run/netns/a")).await.unwrap();
        f.create_veth(&n("h"), &n("peer"), &p("/run/netns/a"), 1400)
            .await
            .unwrap();
        assert!(f.delete_netns(&p("/run/netns/a")).await.unwrap());
        // Still inhabited by the pause: the namespace (and the veth) live on.
        assert_eq!(f.snapshot().namespaces, 1);
        assert_eq!(f.snapshot().host_links, vec!["h"]);
        assert!(f.stop_pause(&pause).await.unwrap());
        assert_eq!(f.snapshot(), Snapshot::default());
        assert!(!f.delete_netns(&p("/run/netns/a")).await.unwrap());
    }

    #[tokio::test]
    async fn rename_needs_link_down_and_route_needs_address_and_up() {
        let f = FakeSystem::new();
        let ns = p("/run/netns/a");
        f.create_netns(&ns).await.unwrap();
        f.create_veth(&n("h"), &n("tmp"), &ns, 1500).await.unwrap();
        f.link_up(Some(&ns), &n("tmp")).await.unwrap();
        assert!(f.rename_link(&ns, &n("tmp"), &n("eth0")).await.is_err());
        f.modify_link_externally(Some(&ns), "tmp", |l| l.up = false);
        f.rename_link(&ns, &n("tmp"), &n("eth0")).await.unwrap();
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(f.add_default_route(&ns, &n("eth0"), gw).await.is_err());
        f.add_address(&ns, &n("eth0"), "10.0.0.2/24".parse().unwrap())
            .await
            .unwrap();
        f.link_up(Some(&ns), &n("eth0")).await.unwrap();
        f.add_default_route(&ns, &n("eth0"), gw).await.unwrap();
        assert_eq!(f.routes_in(&ns), vec![("eth0".to_string(), gw)]);
        // Deleting the host end takes the renamed peer with it.
        assert!(f.delete_link(None, &n("h")).await.unwrap());
        assert_eq!(f.links_in(&ns), Some(vec![]));
        assert!(f.routes_in(&ns).is_empty());
    }

    #[tokio::test]
    async fn pid_reuse_is_detected() {
        let f = FakeSystem::new();
        let id = PodName::new("a").unwrap().id();
        f.create_netns(&p("/n/a")).await.unwrap();
        let pause = f.start_pause(&id, &p("/n/a")).await.unwrap();
        let impostor = PauseProcess {
            pid: pause.pid,
            start_time: pause.start_time + 1,
        };
        assert!(!f.pause_alive(&impostor).await.unwrap());
        assert!(!f.stop_pause(&impostor).await.unwrap());
        assert!(f.pause_alive(&pause).await.unwrap());
    }

    #[tokio::test]
    async fn faults_and_crash() {
        let f = FakeSystem::new();
        f.fail_call(2);
        f.create_netns(&p("/n/a")).await.unwrap();
        let err = f.create_netns(&p("/n/b")).await.unwrap_err();
        assert!(
            err.to_string().contains("injected failure (call 2)"),
            "{err}"
        );
        f.create_netns(&p("/n/b")).await.unwrap();
        f.fail_on("/n/c");
        assert!(f.create_netns(&p("/n/c")).await.is_err());
        f.clear_failures();
        f.crash_after(5);
        f.create_netns(&p("/n/c")).await.unwrap(); // call 5
        assert!(f.create_netns(&p("/n/d")).await.is_err());
        assert!(f.crashed());
        f.revive();
        f.create_netns(&p("/n/d")).await.unwrap();
        assert_eq!(f.calls()[0], "create_netns /n/a");
        assert_eq!(f.call_count(), 7);
    }
}
