//! The planner: pure functions that turn a pod record (the desired state) and, for
//! `check`/`repair`, an observation of the kernel into ordered lists of [`Action`]s.
//!
//! * [`plan_create`]: the create (or attach) steps, each paired with the action that undoes
//!   it. Steps on shared objects (bridge, forwarding, loopback) and steps whose effect dies
//!   with an earlier step's object (addresses and routes die with the veth) have no undo.
//! * [`plan_remove`]: teardown in the reverse order of creation. Addresses and routes need no
//!   steps: they vanish with the veth.
//! * [`check_pod`]/[`check_bridge`]: drift findings from an [`Observed`] snapshot.
//! * [`plan_repair`]: the actions that bring an existing pod back to its record.
//!
//! Nothing here touches the kernel, so all of it is unit-tested with exact expected lists.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::action::{Action, Step};
use crate::datapath::{self, Datapath, Mac};
use crate::finding::{Finding, Problem};
use crate::firewall::{self, FirewallBase, HostPortElement};
use crate::kernel::{LinkInfo, PauseProcess};
use crate::names::{IfName, PodName};
use crate::ports::Family;
use crate::record::{Phase, PodRecord};

/// Node-wide inputs of the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInputs {
    /// The node bridge (unused on the routed datapath).
    pub bridge: IfName,
    /// The gateway addresses on the bridge (IPv4 first) with prefix lengths (on the routed
    /// datapath: the node's own addresses as /32 and /128, on `lo`).
    pub bridge_addresses: Vec<IpNet>,
    /// What the nftables table depends on.
    pub firewall: FirewallBase,
    /// The node's datapath.
    pub datapath: Datapath,
}

impl NodeInputs {
    /// The host link that carries the node's pod-CIDR addresses: the bridge, or `lo` on the
    /// routed datapath.
    pub fn node_link(&self) -> IfName {
        match self.datapath {
            Datapath::Bridge => self.bridge.clone(),
            Datapath::Routed => IfName::new("lo").expect("lo is a valid interface name"),
        }
    }
    /// The node's own address of `family_of`'s family (the source of node-to-pod traffic
    /// on the routed datapath).
    fn node_address(&self, family_of: IpAddr) -> Option<IpAddr> {
        self.bridge_addresses
            .iter()
            .map(IpNet::addr)
            .find(|a| a.is_ipv4() == family_of.is_ipv4())
    }

    fn dual_stack(&self) -> bool {
        self.bridge_addresses
            .iter()
            .any(|a| matches!(a, IpNet::V6(_)))
    }

    fn ensure_actions(&self) -> [Action; 2] {
        [
            match self.datapath {
                Datapath::Bridge => Action::EnsureBridge {
                    bridge: self.bridge.clone(),
                    addresses: self.bridge_addresses.clone(),
                },
                Datapath::Routed => Action::EnsureNodeAddresses {
                    link: self.node_link(),
                    addresses: self.bridge_addresses.clone(),
                },
            },
            Action::EnableForwarding {
                ipv6: self.dual_stack(),
            },
        ]
    }
}

/// The MAC address of the pod end on the routed datapath (derived from its IPv4 address;
/// `None` without one, or on the bridge datapath: the kernel picks one).
fn routed_pod_mac(record: &PodRecord) -> Option<Mac> {
    if record.datapath != Datapath::Routed {
        return None;
    }
    record.ips.iter().find_map(|a| match a.addr() {
        IpAddr::V4(v4) => Some(datapath::pod_mac(v4)),
        IpAddr::V6(_) => None,
    })
}

/// The routed datapath's per-pod node state: the host route to each pod address on the host
/// veth and the permanent neighbour entry for it (the pod's MAC). Idempotent (replace).
fn routed_host_actions(record: &PodRecord, node: &NodeInputs) -> Vec<Action> {
    let mut out = Vec::new();
    for address in &record.ips {
        let host = IpNet::from(address.addr());
        if let Some(source) = node.node_address(address.addr()) {
            out.push(Action::AddHostRoute {
                link: record.host_veth.clone(),
                address: host,
                source,
            });
        }
        if let Some(mac) = routed_pod_mac(record) {
            out.push(Action::AddNeighbour {
                netns: None,
                link: record.host_veth.clone(),
                address: address.addr(),
                mac,
            });
        }
    }
    out
}

/// The routed datapath's gateway neighbour entry inside the pod for `gateway`.
fn routed_gateway_neighbour(record: &PodRecord, gateway: IpAddr) -> Action {
    Action::AddNeighbour {
        netns: Some(record.netns.clone()),
        link: record.interface.clone(),
        address: gateway,
        mac: datapath::HOST_VETH_MAC,
    }
}

/// The veth wiring steps of `record`, from creating the pair to the default routes (and,
/// routed, the node's host routes and neighbour entries).
fn wiring_steps(record: &PodRecord, node: &NodeInputs) -> Vec<Step> {
    let netns = record.netns.clone();
    let host = record.host_veth.clone();
    let iface = record.interface.clone();
    let routed = record.datapath == Datapath::Routed;
    // The pod end is created under its final name directly in the pod namespace: a rename
    // would cost an RCU grace period per pod under the RTNL lock that every create shares.
    let mut steps = vec![Step::new(
        Action::CreateVeth {
            host: host.clone(),
            peer: iface.clone(),
            netns: netns.clone(),
            mtu: record.mtu,
            host_mac: routed.then_some(datapath::HOST_VETH_MAC),
            peer_mac: routed_pod_mac(record),
            // The bridge port is made in the create request itself: one RTNL-serialised
            // request less per pod than a separate `SetMaster`.
            master: (!routed).then(|| node.bridge.clone()),
        },
        Action::DeleteLink {
            netns: None,
            link: host.clone(),
        },
    )];
    if !routed && !record.ports.is_empty() {
        steps.push(Step::plain(Action::SetHairpin { link: host.clone() }));
    }
    // Nothing IPv6 on a bridge port or for a pod without IPv6; a routed pod's IPv6 needs
    // the host veth's IPv6 but not its link-local address.
    if routed && record.ips.iter().any(|a| matches!(a, IpNet::V6(_))) {
        steps.push(Step::plain(Action::NoLinkLocal { link: host.clone() }));
    } else {
        steps.push(Step::plain(Action::DisableIpv6 { link: host.clone() }));
    }
    steps.push(Step::plain(Action::LinkUp {
        netns: None,
        link: host,
    }));
    if record.ips.iter().any(|a| matches!(a, IpNet::V6(_))) {
        steps.push(Step::plain(Action::DisableDad {
            netns: netns.clone(),
            link: iface.clone(),
        }));
    }
    for address in &record.ips {
        steps.push(Step::plain(Action::AddAddress {
            netns: netns.clone(),
            link: iface.clone(),
            address: *address,
        }));
    }
    steps.push(Step::plain(Action::LinkUp {
        netns: Some(netns.clone()),
        link: iface.clone(),
    }));
    for gateway in &record.gateways {
        if routed {
            steps.push(Step::plain(routed_gateway_neighbour(record, *gateway)));
        }
        steps.push(Step::plain(Action::AddDefaultRoute {
            netns: netns.clone(),
            link: iface.clone(),
            gateway: *gateway,
        }));
    }
    if routed {
        steps.extend(
            routed_host_actions(record, node)
                .into_iter()
                .map(Step::plain),
        );
        // The node reaching the pod's IPv4 host ports on 127.0.0.1: the DNATed packet leaves
        // by this host veth (part of the wiring, so a re-wired pod gets it back too).
        if record_elements(record)
            .iter()
            .any(|e| e.map.family() == Family::V4)
        {
            steps.push(Step::plain(Action::EnableRouteLocalnet {
                link: record.host_veth.clone(),
            }));
        }
    }
    steps
}

/// Where `route_localnet` goes for host ports reached on 127.0.0.1: the bridge, or on the
/// routed datapath the pod's host veth (the link the DNATed packet leaves by).
fn route_localnet_link(record: &PodRecord, node: &NodeInputs) -> IfName {
    match record.datapath {
        Datapath::Bridge => node.bridge.clone(),
        Datapath::Routed => record.host_veth.clone(),
    }
}

/// The steps that create (or, for an attached namespace, wire) the pod of `record`.
pub fn plan_create(record: &PodRecord, node: &NodeInputs) -> Vec<Step> {
    let mut steps = Vec::new();
    if record.netns_owned() {
        steps.push(Step::new(
            Action::CreateNetns {
                path: record.netns.clone(),
            },
            Action::DeleteNetns {
                path: record.netns.clone(),
            },
        ));
    }
    if record.wants_pause() {
        // Nothing after it needs the pause, only the namespace: the wiring goes on while
        // the pause is exec'd (about a third of a millisecond).
        steps.push(Step::alongside(
            Action::StartPause {
                id: record.id,
                netns: record.netns.clone(),
            },
            Action::StopPause {
                id: record.id,
                process: None,
            },
        ));
    }
    steps.push(Step::plain(Action::LoopbackUp {
        netns: record.netns.clone(),
    }));
    steps.extend(node.ensure_actions().into_iter().map(Step::plain));
    steps.extend(wiring_steps(record, node));
    let elements = record_elements(record);
    if !elements.is_empty() {
        // Routed, the wiring set it on the host veth.
        if record.datapath == Datapath::Bridge
            && elements.iter().any(|e| e.map.family() == Family::V4)
        {
            steps.push(Step::plain(Action::EnableRouteLocalnet {
                link: node.bridge.clone(),
            }));
        }
        steps.push(Step::new(
            Action::AddHostPorts {
                pod: record.name.clone(),
                elements: elements.clone(),
            },
            Action::RemoveHostPorts {
                pod: record.name.clone(),
                elements: elements.clone(),
            },
        ));
        let flushes = firewall::conntrack_flushes(&elements);
        if !flushes.is_empty() {
            steps.push(Step::plain(Action::FlushConntrack {
                pod: record.name.clone(),
                flushes,
            }));
        }
    }
    steps
}

/// The actions that publish `elements` (further host ports of the ready pod of `record`):
/// hairpin on its host veth (a pod reaching its own host port; set at create only for pods
/// with ports), `route_localnet` on the bridge for IPv4 (the node reaching host ports on
/// 127.0.0.1), the map elements, and a flush of stale UDP conntrack entries, as a create
/// with those ports would do.
pub fn plan_publish(
    record: &PodRecord,
    node: &NodeInputs,
    elements: &[HostPortElement],
) -> Vec<Action> {
    let mut actions = Vec::new();
    if record.datapath == Datapath::Bridge {
        actions.push(Action::SetHairpin {
            link: record.host_veth.clone(),
        });
    }
    if elements.iter().any(|e| e.map.family() == Family::V4) {
        actions.push(Action::EnableRouteLocalnet {
            link: route_localnet_link(record, node),
        });
    }
    actions.push(Action::AddHostPorts {
        pod: record.name.clone(),
        elements: elements.to_vec(),
    });
    let flushes = firewall::conntrack_flushes(elements);
    if !flushes.is_empty() {
        actions.push(Action::FlushConntrack {
            pod: record.name.clone(),
            flushes,
        });
    }
    actions
}

/// The host port map elements of `record` (none without ports, and none once its ports
/// are released: they may belong to another pod by then). A record's ports were checked
/// against its addresses when it was created, so every mapping yields elements.
pub fn record_elements(record: &PodRecord) -> Vec<HostPortElement> {
    if record.ports_released {
        return Vec::new();
    }
    let ips: Vec<IpAddr> = record.ips.iter().map(IpNet::addr).collect();
    record
        .ports
        .iter()
        .flat_map(|p| firewall::elements_for(std::slice::from_ref(p), &ips).unwrap_or_default())
        .collect()
}

/// The actions that remove the pod of `record`, in reverse creation order: the host veth
/// (taking the pod end, its addresses and routes with it), the pause process(es), then the
/// namespace if we created it. `extra_pauses` are further pause processes found running for
/// this pod (e.g. started by a create that crashed before recording them).
pub fn plan_remove(record: &PodRecord, extra_pauses: &[PauseProcess]) -> Vec<Action> {
    let elements = record_elements(record);
    let mut actions = Vec::new();
    if !elements.is_empty() {
        actions.push(Action::RemoveHostPorts {
            pod: record.name.clone(),
            elements: elements.clone(),
        });
    }
    // No synchronous unregister (two RCU grace periods under RTNL): the host veth leaves the
    // bridge (if any) and is renamed out of the way in one request, and goes with the pod's
    // namespace or the next deletion batch. An attached namespace is not ours to end, so its
    // pod end is first renamed out of the way too (and set down): a pod attached to that
    // namespace at once must not find `eth0` taken.
    if !record.netns_owned() {
        actions.push(Action::RetireLink {
            netns: Some(record.netns.clone()),
            link: record.interface.clone(),
        });
    }
    actions.push(Action::RetireLink {
        netns: None,
        link: record.host_veth.clone(),
    });
    let mut pauses: Vec<PauseProcess> = record.pause.iter().copied().collect();
    for p in extra_pauses {
        if !pauses.contains(p) {
            pauses.push(*p);
        }
    }
    for p in pauses {
        actions.push(Action::StopPause {
            id: record.id,
            process: Some(p),
        });
    }
    if record.netns_owned() {
        actions.push(Action::DeleteNetns {
            path: record.netns.clone(),
        });
    }
    let flushes = firewall::conntrack_flushes(&elements);
    if !flushes.is_empty() {
        actions.push(Action::FlushConntrack {
            pod: record.name.clone(),
            flushes,
        });
    }
    actions
}

/// What the kernel looks like for one pod, gathered by the manager for [`check_pod`] and
/// [`plan_repair`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Whether the namespace exists (for an attached pod: the very namespace it was wired
    /// in, not whatever its path names now).
    pub netns_exists: bool,
    /// The path names another namespace than the one the pod was wired in (so the pod's
    /// own is gone; `netns_exists` is false then).
    pub netns_replaced: bool,
    /// Whether the recorded pause process is alive (`None` if none is recorded). Also
    /// looked at when the namespace's bind mount is gone (the pause may still hold it).
    pub pause_alive: Option<bool>,
    /// The host veth, if present.
    pub host_veth: Option<LinkInfo>,
    /// The pod interface inside the namespace, if present.
    pub pod_interface: Option<LinkInfo>,
    /// Default-route gateways inside the namespace.
    pub default_routes: Vec<IpAddr>,
    /// Routed datapath: destinations of our host routes on the host veth.
    pub host_routes: Vec<IpNet>,
    /// Routed datapath: addresses of the permanent neighbour entries on the host veth.
    pub host_neighbours: Vec<IpAddr>,
    /// Routed datapath: addresses of the permanent neighbour entries on the pod interface.
    pub pod_neighbours: Vec<IpAddr>,
}

fn link_findings(
    out: &mut Vec<Finding>,
    pod: &PodName,
    object: String,
    link: &LinkInfo,
    mtu: u32,
    master: Option<&IfName>,
) {
    let mut push = |problem| {
        out.push(Finding {
            pod: Some(pod.clone()),
            object: object.clone(),
            problem,
        })
    };
    if let Some(expected) = master
        && link.master.as_ref() != Some(expected)
    {
        push(Problem::NotAttached {
            expected: expected.clone(),
            actual: link.master.clone(),
        });
    }
    if !link.up {
        push(Problem::Down);
    }
    if link.mtu != mtu {
        push(Problem::MtuMismatch {
            expected: mtu,
            actual: link.mtu,
        });
    }
}

/// Every drift between `record` and `observed`.
pub fn check_pod(record: &PodRecord, node: &NodeInputs, observed: &Observed) -> Vec<Finding> {
    let pod = &record.name;
    let mut out = Vec::new();
    let finding = |object: String, problem| Finding {
        pod: Some(pod.clone()),
        object,
        problem,
    };
    if record.phase != Phase::Ready {
        out.push(finding(
            "record".to_string(),
            Problem::Unfinished {
                phase: record.phase,
            },
        ));
    }
    if !observed.netns_exists {
        out.push(finding(
            format!("netns {}", record.netns.display()),
            if observed.netns_replaced {
                Problem::Replaced
            } else {
                Problem::Missing
            },
        ));
        return out;
    }
    if record.wants_pause() {
        match (&record.pause, observed.pause_alive) {
            (None, _) => out.push(finding("pause".to_string(), Problem::NotRecorded)),
            (Some(p), Some(false) | None) => {
                out.push(finding(format!("pause {p}"), Problem::NotRunning))
            }
            (Some(_), Some(true)) => {}
        }
    }
    let host_object = format!("link {}", record.host_veth);
    match &observed.host_veth {
        None => out.push(finding(host_object, Problem::Missing)),
        Some(link) => {
            let master = (record.datapath == Datapath::Bridge).then_some(&node.bridge);
            link_findings(&mut out, pod, host_object.clone(), link, record.mtu, master);
            if record.datapath == Datapath::Routed {
                out.extend(
                    routed_host_drift(record, node, observed)
                        .into_iter()
                        .map(|problem| finding(host_object.clone(), problem)),
                );
            }
        }
    }
    let pod_object = format!("link {} in {}", record.interface, record.netns.display());
    match &observed.pod_interface {
        None => out.push(finding(pod_object, Problem::Missing)),
        Some(link) => {
            link_findings(&mut out, pod, pod_object.clone(), link, record.mtu, None);
            for address in &record.ips {
                if !link.addresses.contains(address) {
                    out.push(finding(
                        pod_object.clone(),
                        Problem::AddressMissing { address: *address },
                    ));
                }
            }
            for gateway in &record.gateways {
                if record.datapath == Datapath::Routed && !observed.pod_neighbours.contains(gateway)
                {
                    out.push(finding(
                        pod_object.clone(),
                        Problem::NeighbourMissing { address: *gateway },
                    ));
                }
                if !observed.default_routes.contains(gateway) {
                    out.push(finding(
                        format!("routes in {}", record.netns.display()),
                        Problem::RouteMissing { gateway: *gateway },
                    ));
                }
            }
        }
    }
    out
}

/// The routed datapath's missing node state of one pod: host routes and neighbour entries.
fn routed_host_drift(record: &PodRecord, node: &NodeInputs, observed: &Observed) -> Vec<Problem> {
    let mut out = Vec::new();
    for address in &record.ips {
        let host = IpNet::from(address.addr());
        if node.node_address(address.addr()).is_some() && !observed.host_routes.contains(&host) {
            out.push(Problem::HostRouteMissing { address: host });
        }
        if routed_pod_mac(record).is_some() && !observed.host_neighbours.contains(&address.addr()) {
            out.push(Problem::NeighbourMissing {
                address: address.addr(),
            });
        }
    }
    out
}

/// Drift of the node bridge (on the routed datapath: of the node addresses on `lo`).
pub fn check_bridge(node: &NodeInputs, bridge: Option<&LinkInfo>) -> Vec<Finding> {
    let object = match node.datapath {
        Datapath::Bridge => format!("bridge {}", node.bridge),
        Datapath::Routed => format!("link {}", node.node_link()),
    };
    let finding = |problem| Finding {
        pod: None,
        object: object.clone(),
        problem,
    };
    let Some(bridge) = bridge else {
        return vec![finding(Problem::Missing)];
    };
    let mut out = Vec::new();
    if !bridge.up {
        out.push(finding(Problem::Down));
    }
    for address in &node.bridge_addresses {
        if !bridge.addresses.contains(address) {
            out.push(finding(Problem::AddressMissing { address: *address }));
        }
    }
    out
}

/// The actions that repair the node bridge (empty if it is fine).
pub fn plan_bridge_repair(node: &NodeInputs, bridge: Option<&LinkInfo>) -> Vec<Action> {
    if check_bridge(node, bridge).is_empty() {
        Vec::new()
    } else {
        node.ensure_actions().to_vec()
    }
}

/// What to do about one `Ready` pod after looking at the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repair {
    /// Nothing is missing.
    Nothing,
    /// The namespace is gone: the pod is dead; remove whatever is left of it.
    Remove,
    /// Run these actions (best effort, in order).
    Actions(Vec<Action>),
}

/// The repair for a pod whose record is `Ready`: mount its namespace again from its live
/// pause if only the bind mount is gone (a namespace of ours whose pause died with it is
/// gone for good: the pod is removed), restart a dead pause, re-create the veth wiring if
/// either end is gone, else re-add what is missing piece by piece.
pub fn plan_repair(record: &PodRecord, node: &NodeInputs, observed: &Observed) -> Repair {
    if !observed.netns_exists {
        if let Some(pause) = record.pause
            && record.netns_owned()
            && observed.pause_alive == Some(true)
        {
            // Whatever else drifted shows once the namespace is back (the manager looks
            // again after this action).
            return Repair::Actions(vec![Action::RestoreNetns {
                path: record.netns.clone(),
                pause,
            }]);
        }
        return Repair::Remove;
    }
    let mut actions = Vec::new();
    if record.wants_pause() && observed.pause_alive != Some(true) {
        if let Some(p) = record.pause {
            // Dead already, or a stranger reusing the pid: stopping is a harmless no-op then.
            actions.push(Action::StopPause {
                id: record.id,
                process: Some(p),
            });
        }
        actions.push(Action::StartPause {
            id: record.id,
            netns: record.netns.clone(),
        });
    }
    let netns = record.netns.clone();
    let iface = record.interface.clone();
    match (&observed.host_veth, &observed.pod_interface) {
        (Some(host), Some(pod)) => {
            if host.mtu != record.mtu {
                actions.push(Action::SetMtu {
                    netns: None,
                    link: record.host_veth.clone(),
                    mtu: record.mtu,
                });
            }
            if record.datapath == Datapath::Bridge && host.master.as_ref() != Some(&node.bridge) {
                actions.push(Action::SetMaster {
                    link: record.host_veth.clone(),
                    master: node.bridge.clone(),
                });
                // A port leaving its bridge loses its hairpin mode.
                if !record.ports.is_empty() {
                    actions.push(Action::SetHairpin {
                        link: record.host_veth.clone(),
                    });
                }
            }
            if !host.up {
                actions.push(Action::LinkUp {
                    netns: None,
                    link: record.host_veth.clone(),
                });
            }
            if pod.mtu != record.mtu {
                actions.push(Action::SetMtu {
                    netns: Some(netns.clone()),
                    link: iface.clone(),
                    mtu: record.mtu,
                });
            }
            let missing: Vec<IpNet> = record
                .ips
                .iter()
                .filter(|a| !pod.addresses.contains(a))
                .copied()
                .collect();
            if missing.iter().any(|a| matches!(a, IpNet::V6(_))) {
                actions.push(Action::DisableDad {
                    netns: netns.clone(),
                    link: iface.clone(),
                });
            }
            for address in missing {
                actions.push(Action::AddAddress {
                    netns: netns.clone(),
                    link: iface.clone(),
                    address,
                });
            }
            if !pod.up {
                actions.push(Action::LinkUp {
                    netns: Some(netns.clone()),
                    link: iface.clone(),
                });
            }
            for gateway in &record.gateways {
                if record.datapath == Datapath::Routed && !observed.pod_neighbours.contains(gateway)
                {
                    actions.push(routed_gateway_neighbour(record, *gateway));
                }
                if !observed.default_routes.contains(gateway) {
                    actions.push(Action::AddDefaultRoute {
                        netns: netns.clone(),
                        link: iface.clone(),
                        gateway: *gateway,
                    });
                }
            }
            if record.datapath == Datapath::Routed
                && !routed_host_drift(record, node, observed).is_empty()
            {
                actions.extend(routed_host_actions(record, node));
            }
        }
        _ => {
            // One end is gone: start the wiring over (a pod end left under the temporary
            // name of earlier versions, which renamed it, goes too).
            actions.push(Action::DeleteLink {
                netns: None,
                link: record.host_veth.clone(),
            });
            actions.push(Action::DeleteLink {
                netns: Some(netns.clone()),
                link: record.id.temp_peer_name(),
            });
            actions.extend(wiring_steps(record, node).into_iter().map(|s| s.action));
        }
    }
    if actions.is_empty() {
        Repair::Nothing
    } else {
        Repair::Actions(actions)
    }
}

#[cfg(test)]
mod tests;
