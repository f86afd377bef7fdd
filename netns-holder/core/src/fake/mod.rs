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
//!
//! This module holds the model and [`FakeSystem`] itself; the trait implementations mirror
//! `linux/`: `events`, `netns`, `pause`, `netlink`, `sysctl`, `nft`; `faults` holds the
//! fault switches and introspection, `perturb` the out-of-band changes (someone else
//! touching the kernel).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;

use crate::datapath::Mac;
use crate::egress::EgressExempt;
use crate::firewall::{FirewallBase, HostPortElement, HostPortMap, Listener};
use crate::kernel::{KernelEvent, PauseProcess, RunningPause};
use crate::names::{IfName, PodId};
use crate::neigh::Thresholds;
use crate::ports::Protocol;
use crate::system::SystemError;

const HOST: u64 = 0;

/// The kernel's default neighbour table thresholds.
pub const KERNEL_DEFAULT_NEIGH: Thresholds = Thresholds {
    gc_thresh1: 128,
    gc_thresh2: 512,
    gc_thresh3: 1024,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Bridge,
    Dummy,
    Veth { peer_net: u64, peer: String },
}

#[derive(Debug, Clone)]
struct FakeLink {
    kind: Kind,
    up: bool,
    mtu: u32,
    master: Option<String>,
    addresses: BTreeSet<IpNet>,
    /// Permanent neighbour entries on the link.
    neighbours: BTreeMap<IpAddr, Mac>,
    /// Our host routes on the link (destination, preferred source): they die with it.
    host_routes: BTreeSet<(IpNet, IpAddr)>,
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
    /// The elements of the egress exemption sets.
    egress_exempt: EgressExempt,
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
    /// How many host links were retired (their names' suffix).
    retired: u64,
    route_localnet: BTreeSet<String>,
    listeners: Vec<Listener>,
    conntrack: Vec<FakeConntrack>,
    /// Children that exited and are not reaped yet (as `waitpid` would find them).
    zombies: BTreeSet<PauseProcess>,
    /// Bumped whenever a process exits (wakes the exit watches).
    exits: tokio::sync::watch::Sender<u64>,
    /// Exit watches cannot be made (as when a daemon has no descriptor left).
    no_watches: bool,
    /// An exited child that is not a pause hides the others from
    /// [`Processes::reap_exited_child_pauses`] (as a helper program's zombie would).
    foreign_zombie: bool,
    /// Subscribers of [`KernelEvents`].
    subscribers: Vec<tokio::sync::mpsc::UnboundedSender<KernelEvent>>,
    /// Processes of someone else (a sandbox's) that keep a namespace alive: pid -> namespace.
    holders: BTreeMap<u32, u64>,
    /// The neighbour tables' thresholds (IPv4, IPv6).
    neigh: (Thresholds, Thresholds),
    /// Why they cannot be written (as from a non-initial namespace), if so.
    neigh_read_only: Option<String>,
    /// Every count of running creates the manager told (not a call: no crash point).
    creates_in_flight: Vec<usize>,
    /// Host veth names of pooled pairs that `reserve_pooled_link` hands out, first first.
    pool_links: Vec<crate::names::IfName>,
    /// Namespace paths whose reservation the manager released, in order.
    released: Vec<PathBuf>,
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
            retired: 0,
            route_localnet: BTreeSet::new(),
            listeners: Vec::new(),
            conntrack: Vec::new(),
            zombies: BTreeSet::new(),
            exits: tokio::sync::watch::channel(0).0,
            no_watches: false,
            foreign_zombie: false,
            subscribers: Vec::new(),
            holders: BTreeMap::new(),
            neigh: (KERNEL_DEFAULT_NEIGH, KERNEL_DEFAULT_NEIGH),
            neigh_read_only: None,
            creates_in_flight: Vec::new(),
            pool_links: Vec::new(),
            released: Vec::new(),
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

    /// [`Model::net_id`], with a namespace that does not exist as `None`.
    fn existing_net_id(&self, netns: Option<&Path>) -> Result<Option<u64>, SystemError> {
        match self.net_id(netns) {
            Ok(id) => Ok(Some(id)),
            Err(SystemError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
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
            Kind::Dummy => {}
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

    /// Every count of running creates and attaches the manager told, in order
    /// ([`Namespaces::creates_in_flight`]).
    pub fn creates_in_flight_told(&self) -> Vec<usize> {
        self.lock().creates_in_flight.clone()
    }

    /// Makes `reserve_pooled_link` hand out `names`, one per reservation, as a namespace
    /// pool with that many pairs ready would (none by default: no pool).
    pub fn pool_links(&self, names: &[&str]) {
        self.lock().pool_links = names
            .iter()
            .map(|n| crate::names::IfName::new(*n).expect("a link name"))
            .collect();
    }

    /// Namespace paths whose reservation the manager released, in order.
    pub fn released_pool_links(&self) -> Vec<PathBuf> {
        self.lock().released.clone()
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
}

mod events;
mod faults;
mod netlink;
mod netns;
mod nft;
mod pause;
mod perturb;
mod sysctl;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::PodName;
    use crate::system::{Namespaces, Netlink, Processes, VethPair};

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
        f.create_veth(VethPair::new(&n("h"), &n("peer"), &p("/run/netns/a"), 1400))
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
    async fn a_veth_made_on_a_bridge_is_its_port_or_is_not_made() {
        let f = FakeSystem::new();
        let ns = p("/run/netns/a");
        f.create_netns(&ns).await.unwrap();
        let (bridge, host, eth0) = (n("br0"), n("h"), n("eth0"));
        let on_bridge = VethPair {
            master: Some(&bridge),
            ..VethPair::new(&host, &eth0, &ns, 1500)
        };
        let err = f.create_veth(on_bridge).await.unwrap_err();
        assert!(matches!(err, SystemError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("br0"), "{err}");
        assert!(f.snapshot().host_links.is_empty());
        f.ensure_bridge(&bridge, &[]).await.unwrap();
        f.create_veth(on_bridge).await.unwrap();
        let port = f.link_info(None, &n("h")).await.unwrap().unwrap();
        assert_eq!(port.master, Some(bridge.clone()));
    }

    #[tokio::test]
    async fn a_route_needs_address_and_up_and_dies_with_the_veth() {
        let f = FakeSystem::new();
        let ns = p("/run/netns/a");
        f.create_netns(&ns).await.unwrap();
        f.create_veth(VethPair::new(&n("h"), &n("eth0"), &ns, 1500))
            .await
            .unwrap();
        let gw: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(f.add_default_route(&ns, &n("eth0"), gw).await.is_err());
        f.add_address(&ns, &n("eth0"), "10.0.0.2/24".parse().unwrap())
            .await
            .unwrap();
        f.link_up(Some(&ns), &n("eth0")).await.unwrap();
        f.add_default_route(&ns, &n("eth0"), gw).await.unwrap();
        assert_eq!(f.routes_in(&ns), vec![("eth0".to_string(), gw)]);
        // Deleting the host end takes the peer with it.
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
