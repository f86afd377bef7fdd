//! Out-of-band changes to the [`FakeSystem`]: someone else touching the kernel (unmounting
//! a namespace, killing a pause, deleting a link, flushing the nftables table...), and the
//! inspection of host ports and peer routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::{FakeConntrack, FakeLink, FakeProcess, FakeSystem, FakeTable, HOST, Kind};
use crate::egress::EgressExempt;
use crate::firewall::{FirewallBase, HostPortElement, Listener};
use crate::kernel::{LinkInfo, PauseProcess};
use crate::names::{IfName, PodId};
use crate::neigh::Thresholds;

impl FakeSystem {
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
            neighbours: Default::default(),
            host_routes: Default::default(),
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

    /// Puts an exited child that is not a pause in the way of
    /// [`Processes::reap_exited_child_pauses`] (`true`: it names no exit and says it is
    /// incomplete, as the real one does while a helper program's zombie waits for its own
    /// waiter), or takes it away.
    pub fn set_foreign_zombie(&self, present: bool) {
        self.lock().foreign_zombie = present;
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
                id: *id,
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
            neighbours: Default::default(),
            host_routes: Default::default(),
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

    /// The elements in the table, `None` if there is no table.
    pub fn firewall_elements(&self) -> Option<Vec<HostPortElement>> {
        let m = self.lock();
        m.table
            .as_ref()
            .map(|t| t.elements.values().copied().collect())
    }

    /// Installs an empty table for `base`, as a daemon start would have (a node without
    /// peers or `no_masquerade_cidrs`: the egress sets hold its own pod CIDRs).
    pub fn install_table(&self, base: FirewallBase) {
        let egress_exempt = EgressExempt::new(base.pod_cidrs());
        self.lock().table = Some(FakeTable {
            base,
            elements: BTreeMap::new(),
            extra_lines: Vec::new(),
            removed_lines: Vec::new(),
            egress_exempt,
        });
    }

    /// The elements of the egress exemption sets, `None` if there is no table.
    pub fn egress_exempt(&self) -> Option<EgressExempt> {
        self.lock().table.as_ref().map(|t| t.egress_exempt.clone())
    }

    /// Makes the egress exemption sets hold `exempt` behind the daemon's back (nothing if
    /// there is no table).
    pub fn set_egress_exempt_externally(&self, exempt: EgressExempt) {
        if let Some(t) = self.lock().table.as_mut() {
            t.egress_exempt = exempt;
        }
    }

    /// Sets the neighbour tables' thresholds (IPv4, IPv6) as the machine has them, and
    /// whether the daemon may write them (`read_only`: why not).
    pub fn set_neighbour_tables(&self, v4: Thresholds, v6: Thresholds, read_only: Option<&str>) {
        let mut m = self.lock();
        m.neigh = (v4, v6);
        m.neigh_read_only = read_only.map(str::to_string);
    }

    /// The neighbour tables' thresholds (IPv4, IPv6).
    pub fn neighbour_tables(&self) -> (Thresholds, Thresholds) {
        self.lock().neigh
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
