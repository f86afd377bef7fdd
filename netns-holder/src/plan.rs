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
use crate::finding::{Finding, Problem};
use crate::firewall::{self, FirewallBase, HostPortElement};
use crate::kernel::{LinkInfo, PauseProcess};
use crate::names::{IfName, PodName};
use crate::ports::Family;
use crate::record::{Phase, PodRecord};

/// Node-wide inputs of the planner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The node bridge.
    pub bridge: IfName,
    /// The gateway addresses on the bridge (IPv4 first) with prefix lengths.
    pub bridge_addresses: Vec<IpNet>,
    /// What the nftables table depends on.
    pub firewall: FirewallBase,
}

impl NodeNetwork {
    fn dual_stack(&self) -> bool {
        self.bridge_addresses
            .iter()
            .any(|a| matches!(a, IpNet::V6(_)))
    }

    fn ensure_actions(&self) -> [Action; 2] {
        [
            Action::EnsureBridge {
                bridge: self.bridge.clone(),
                addresses: self.bridge_addresses.clone(),
            },
            Action::EnableForwarding {
                ipv6: self.dual_stack(),
            },
        ]
    }
}

/// The veth wiring steps of `record`, from creating the pair to the default routes.
fn wiring_steps(record: &PodRecord, node: &NodeNetwork) -> Vec<Step> {
    let netns = record.netns.clone();
    let host = record.host_veth.clone();
    let temp = record.id.temp_peer_name();
    let iface = record.interface.clone();
    let mut steps = vec![
        Step::new(
            Action::CreateVeth {
                host: host.clone(),
                peer: temp.clone(),
                netns: netns.clone(),
                mtu: record.mtu,
            },
            Action::DeleteLink {
                netns: None,
                link: host.clone(),
            },
        ),
        Step::plain(Action::SetMaster {
            link: host.clone(),
            master: node.bridge.clone(),
        }),
    ];
    if !record.ports.is_empty() {
        steps.push(Step::plain(Action::SetHairpin { link: host.clone() }));
    }
    steps.extend([
        Step::plain(Action::LinkUp {
            netns: None,
            link: host,
        }),
        Step::plain(Action::RenameLink {
            netns: netns.clone(),
            from: temp,
            to: iface.clone(),
        }),
    ]);
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
        steps.push(Step::plain(Action::AddDefaultRoute {
            netns: netns.clone(),
            link: iface.clone(),
            gateway: *gateway,
        }));
    }
    steps
}

/// The steps that create (or, for an attached namespace, wire) the pod of `record`.
pub fn plan_create(record: &PodRecord, node: &NodeNetwork) -> Vec<Step> {
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
        steps.push(Step::new(
            Action::StartPause {
                id: record.id.clone(),
                netns: record.netns.clone(),
            },
            Action::StopPause {
                id: record.id.clone(),
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
        if elements.iter().any(|e| e.map.family() == Family::V4) {
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
    node: &NodeNetwork,
    elements: &[HostPortElement],
) -> Vec<Action> {
    let mut actions = vec![Action::SetHairpin {
        link: record.host_veth.clone(),
    }];
    if elements.iter().any(|e| e.map.family() == Family::V4) {
        actions.push(Action::EnableRouteLocalnet {
            link: node.bridge.clone(),
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
    actions.push(Action::DeleteLink {
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
            id: record.id.clone(),
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
pub fn check_pod(record: &PodRecord, node: &NodeNetwork, observed: &Observed) -> Vec<Finding> {
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
        Some(link) => link_findings(
            &mut out,
            pod,
            host_object,
            link,
            record.mtu,
            Some(&node.bridge),
        ),
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

/// Drift of the node bridge.
pub fn check_bridge(node: &NodeNetwork, bridge: Option<&LinkInfo>) -> Vec<Finding> {
    let object = format!("bridge {}", node.bridge);
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
pub fn plan_bridge_repair(node: &NodeNetwork, bridge: Option<&LinkInfo>) -> Vec<Action> {
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
pub fn plan_repair(record: &PodRecord, node: &NodeNetwork, observed: &Observed) -> Repair {
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
                id: record.id.clone(),
                process: Some(p),
            });
        }
        actions.push(Action::StartPause {
            id: record.id.clone(),
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
            if host.master.as_ref() != Some(&node.bridge) {
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
                if !observed.default_routes.contains(gateway) {
                    actions.push(Action::AddDefaultRoute {
                        netns: netns.clone(),
                        link: iface.clone(),
                        gateway: *gateway,
                    });
                }
            }
        }
        _ => {
            // One end is gone (or the pod end was never renamed): start the wiring over.
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
mod tests {
    use std::collections::BTreeMap;

    use std::path::PathBuf;

    use super::*;
    use crate::names::PodId;
    use crate::record::NetnsOwnership;

    fn record(name: &str, ownership: NetnsOwnership, dual: bool) -> PodRecord {
        let name = PodName::new(name).unwrap();
        let id = name.id();
        let mut ips = vec!["10.88.0.2/16".parse().unwrap()];
        let mut gateways = vec!["10.88.0.1".parse().unwrap()];
        if dual {
            ips.push("fd00::2/64".parse().unwrap());
            gateways.push("fd00::1".parse().unwrap());
        }
        PodRecord {
            netns: match ownership {
                NetnsOwnership::Attached => PathBuf::from("/var/run/netns/cni-1234"),
                _ => PathBuf::from("/run/netns").join(name.as_str()),
            },
            host_veth: id.host_veth_name(),
            id,
            name,
            ownership,
            pause: None,
            ips,
            gateways,
            interface: IfName::pod_interface(),
            annotations: BTreeMap::new(),
            phase: Phase::Creating,
            mtu: 1450,
            ports: Vec::new(),
            ports_released: false,
            netns_id: None,
        }
    }

    fn node(dual: bool) -> NodeNetwork {
        let mut bridge_addresses = vec!["10.88.0.1/16".parse().unwrap()];
        if dual {
            bridge_addresses.push("fd00::1/64".parse().unwrap());
        }
        NodeNetwork {
            bridge: IfName::new("nh0").unwrap(),
            bridge_addresses,
            firewall: FirewallBase {
                bridge: IfName::new("nh0").unwrap(),
                pod_cidr_v4: "10.88.0.0/16".parse().unwrap(),
                pod_cidr_v6: dual.then(|| "fd00::/64".parse().unwrap()),
            },
        }
    }

    fn text(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match &s.undo {
                Some(u) => format!("{} [undo: {u}]", s.action),
                None => s.action.to_string(),
            })
            .collect()
    }

    fn web_id() -> PodId {
        PodName::new("web").unwrap().id()
    }

    #[test]
    fn create_v4_only_with_pause() {
        let r = record("web", NetnsOwnership::Owned { pause: true }, false);
        let id = web_id();
        let h = id.host_veth_name();
        let t = id.temp_peer_name();
        assert_eq!(
            text(&plan_create(&r, &node(false))),
            vec![
                "create netns /run/netns/web [undo: delete netns /run/netns/web]".to_string(),
                format!(
                    "start pause for pod {id} in /run/netns/web [undo: stop the pause just started for pod {id}]"
                ),
                "bring loopback up in /run/netns/web".to_string(),
                "ensure bridge nh0 with 10.88.0.1/16".to_string(),
                "enable IPv4 forwarding".to_string(),
                format!(
                    "create veth {h} <-> {t} in /run/netns/web (mtu 1450) [undo: delete link {h} in the host namespace]"
                ),
                format!("attach link {h} to bridge nh0"),
                format!("set link {h} up in the host namespace"),
                format!("rename link {t} to eth0 in /run/netns/web"),
                "add address 10.88.0.2/16 to link eth0 in /run/netns/web".to_string(),
                "set link eth0 up in /run/netns/web".to_string(),
                "add default route via 10.88.0.1 dev eth0 in /run/netns/web".to_string(),
            ]
        );
    }

    #[test]
    fn create_dual_stack_structured() {
        let r = record("web", NetnsOwnership::Owned { pause: true }, true);
        let id = web_id();
        let ns = PathBuf::from("/run/netns/web");
        let eth0 = IfName::pod_interface();
        let host = id.host_veth_name();
        let temp = id.temp_peer_name();
        let expected = vec![
            Step {
                action: Action::CreateNetns { path: ns.clone() },
                undo: Some(Action::DeleteNetns { path: ns.clone() }),
            },
            Step {
                action: Action::StartPause {
                    id: id.clone(),
                    netns: ns.clone(),
                },
                undo: Some(Action::StopPause {
                    id: id.clone(),
                    process: None,
                }),
            },
            Step::plain(Action::LoopbackUp { netns: ns.clone() }),
            Step::plain(Action::EnsureBridge {
                bridge: IfName::new("nh0").unwrap(),
                addresses: vec![
                    "10.88.0.1/16".parse().unwrap(),
                    "fd00::1/64".parse().unwrap(),
                ],
            }),
            Step::plain(Action::EnableForwarding { ipv6: true }),
            Step {
                action: Action::CreateVeth {
                    host: host.clone(),
                    peer: temp.clone(),
                    netns: ns.clone(),
                    mtu: 1450,
                },
                undo: Some(Action::DeleteLink {
                    netns: None,
                    link: host.clone(),
                }),
            },
            Step::plain(Action::SetMaster {
                link: host.clone(),
                master: IfName::new("nh0").unwrap(),
            }),
            Step::plain(Action::LinkUp {
                netns: None,
                link: host.clone(),
            }),
            Step::plain(Action::RenameLink {
                netns: ns.clone(),
                from: temp,
                to: eth0.clone(),
            }),
            Step::plain(Action::DisableDad {
                netns: ns.clone(),
                link: eth0.clone(),
            }),
            Step::plain(Action::AddAddress {
                netns: ns.clone(),
                link: eth0.clone(),
                address: "10.88.0.2/16".parse().unwrap(),
            }),
            Step::plain(Action::AddAddress {
                netns: ns.clone(),
                link: eth0.clone(),
                address: "fd00::2/64".parse().unwrap(),
            }),
            Step::plain(Action::LinkUp {
                netns: Some(ns.clone()),
                link: eth0.clone(),
            }),
            Step::plain(Action::AddDefaultRoute {
                netns: ns.clone(),
                link: eth0.clone(),
                gateway: "10.88.0.1".parse().unwrap(),
            }),
            Step::plain(Action::AddDefaultRoute {
                netns: ns.clone(),
                link: eth0,
                gateway: "fd00::1".parse().unwrap(),
            }),
        ];
        assert_eq!(plan_create(&r, &node(true)), expected);
    }

    #[test]
    fn create_no_pause() {
        let r = record("web", NetnsOwnership::Owned { pause: false }, false);
        let steps = text(&plan_create(&r, &node(false)));
        assert_eq!(steps.len(), 11);
        assert_eq!(
            steps[0],
            "create netns /run/netns/web [undo: delete netns /run/netns/web]"
        );
        assert_eq!(steps[1], "bring loopback up in /run/netns/web");
        assert!(steps.iter().all(|s| !s.contains("pause")));
    }

    #[test]
    fn attach_creates_no_netns_and_no_pause() {
        let r = record("web", NetnsOwnership::Attached, false);
        let id = web_id();
        let h = id.host_veth_name();
        let t = id.temp_peer_name();
        let ns = "/var/run/netns/cni-1234";
        assert_eq!(
            text(&plan_create(&r, &node(false))),
            vec![
                format!("bring loopback up in {ns}"),
                "ensure bridge nh0 with 10.88.0.1/16".to_string(),
                "enable IPv4 forwarding".to_string(),
                format!(
                    "create veth {h} <-> {t} in {ns} (mtu 1450) [undo: delete link {h} in the host namespace]"
                ),
                format!("attach link {h} to bridge nh0"),
                format!("set link {h} up in the host namespace"),
                format!("rename link {t} to eth0 in {ns}"),
                format!("add address 10.88.0.2/16 to link eth0 in {ns}"),
                format!("set link eth0 up in {ns}"),
                format!("add default route via 10.88.0.1 dev eth0 in {ns}"),
            ]
        );
    }

    #[test]
    fn remove_owned_with_pause_reverse_order() {
        let mut r = record("web", NetnsOwnership::Owned { pause: true }, true);
        let p = PauseProcess {
            pid: 100,
            start_time: 5,
        };
        r.pause = Some(p);
        let extra = PauseProcess {
            pid: 200,
            start_time: 9,
        };
        let id = web_id();
        assert_eq!(
            plan_remove(&r, &[p, extra]),
            vec![
                Action::DeleteLink {
                    netns: None,
                    link: id.host_veth_name()
                },
                Action::StopPause {
                    id: id.clone(),
                    process: Some(p)
                },
                Action::StopPause {
                    id,
                    process: Some(extra)
                },
                Action::DeleteNetns {
                    path: PathBuf::from("/run/netns/web")
                },
            ]
        );
    }

    #[test]
    fn remove_attached_never_deletes_netns() {
        let r = record("web", NetnsOwnership::Attached, false);
        assert_eq!(
            plan_remove(&r, &[]),
            vec![Action::DeleteLink {
                netns: None,
                link: web_id().host_veth_name()
            }]
        );
    }

    fn healthy(r: &PodRecord) -> Observed {
        let link = LinkInfo {
            up: true,
            mtu: r.mtu,
            master: Some(IfName::new("nh0").unwrap()),
            addresses: vec![],
        };
        Observed {
            netns_exists: true,
            netns_replaced: false,
            pause_alive: r.pause.map(|_| true),
            host_veth: Some(link.clone()),
            pod_interface: Some(LinkInfo {
                master: None,
                addresses: r.ips.clone(),
                ..link
            }),
            default_routes: r.gateways.clone(),
        }
    }

    fn ready(dual: bool) -> PodRecord {
        let mut r = record("web", NetnsOwnership::Owned { pause: true }, dual);
        r.pause = Some(PauseProcess {
            pid: 100,
            start_time: 5,
        });
        r.phase = Phase::Ready;
        r
    }

    #[test]
    fn healthy_pod_has_no_findings_and_no_repair() {
        let r = ready(true);
        assert_eq!(check_pod(&r, &node(true), &healthy(&r)), vec![]);
        assert_eq!(plan_repair(&r, &node(true), &healthy(&r)), Repair::Nothing);
    }

    #[test]
    fn findings_name_pod_object_and_problem() {
        let r = ready(true);
        let mut o = healthy(&r);
        o.pause_alive = Some(false);
        o.host_veth.as_mut().unwrap().master = None;
        o.host_veth.as_mut().unwrap().up = false;
        o.pod_interface.as_mut().unwrap().addresses.truncate(1);
        o.pod_interface.as_mut().unwrap().mtu = 1500;
        o.default_routes.clear();
        let found: Vec<String> = check_pod(&r, &node(true), &o)
            .iter()
            .map(ToString::to_string)
            .collect();
        let h = web_id().host_veth_name();
        assert_eq!(
            found,
            vec![
                "pod web: pause pid 100 (start time 5): not running".to_string(),
                format!("pod web: link {h}: not attached, expected bridge nh0"),
                format!("pod web: link {h}: down"),
                "pod web: link eth0 in /run/netns/web: mtu 1500, expected 1450".to_string(),
                "pod web: link eth0 in /run/netns/web: address fd00::2/64 missing".to_string(),
                "pod web: routes in /run/netns/web: default route via 10.88.0.1 missing"
                    .to_string(),
                "pod web: routes in /run/netns/web: default route via fd00::1 missing".to_string(),
            ]
        );
        let Repair::Actions(actions) = plan_repair(&r, &node(true), &o) else {
            panic!("expected actions")
        };
        let ns = PathBuf::from("/run/netns/web");
        let eth0 = IfName::pod_interface();
        assert_eq!(
            actions,
            vec![
                Action::StopPause {
                    id: web_id(),
                    process: r.pause
                },
                Action::StartPause {
                    id: web_id(),
                    netns: ns.clone()
                },
                Action::SetMaster {
                    link: h.clone(),
                    master: IfName::new("nh0").unwrap()
                },
                Action::LinkUp {
                    netns: None,
                    link: h
                },
                Action::SetMtu {
                    netns: Some(ns.clone()),
                    link: eth0.clone(),
                    mtu: 1450
                },
                Action::DisableDad {
                    netns: ns.clone(),
                    link: eth0.clone()
                },
                Action::AddAddress {
                    netns: ns.clone(),
                    link: eth0.clone(),
                    address: "fd00::2/64".parse().unwrap()
                },
                Action::AddDefaultRoute {
                    netns: ns.clone(),
                    link: eth0.clone(),
                    gateway: "10.88.0.1".parse().unwrap()
                },
                Action::AddDefaultRoute {
                    netns: ns,
                    link: eth0,
                    gateway: "fd00::1".parse().unwrap()
                },
            ]
        );
    }

    #[test]
    fn missing_netns_means_remove() {
        let r = ready(false);
        let o = Observed {
            netns_exists: false,
            ..Observed::default()
        };
        let found = check_pod(&r, &node(false), &o);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].to_string(),
            "pod web: netns /run/netns/web: missing"
        );
        assert_eq!(plan_repair(&r, &node(false), &o), Repair::Remove);
    }

    #[test]
    fn missing_veth_rewires() {
        let r = ready(false);
        let mut o = healthy(&r);
        o.host_veth = None;
        o.pod_interface = None;
        o.default_routes.clear();
        let found: Vec<String> = check_pod(&r, &node(false), &o)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            vec![
                format!("pod web: link {}: missing", web_id().host_veth_name()),
                "pod web: link eth0 in /run/netns/web: missing".to_string(),
            ]
        );
        let Repair::Actions(actions) = plan_repair(&r, &node(false), &o) else {
            panic!()
        };
        let mut expected = vec![
            Action::DeleteLink {
                netns: None,
                link: web_id().host_veth_name(),
            },
            Action::DeleteLink {
                netns: Some(PathBuf::from("/run/netns/web")),
                link: web_id().temp_peer_name(),
            },
        ];
        expected.extend(
            plan_create(&r, &node(false))
                .into_iter()
                .skip(5)
                .map(|s| s.action),
        );
        assert_eq!(actions, expected);
    }

    #[test]
    fn unfinished_record_is_a_finding() {
        let mut r = ready(false);
        r.phase = Phase::Removing;
        let found = check_pod(&r, &node(false), &healthy(&r));
        assert_eq!(
            found[0].problem,
            Problem::Unfinished {
                phase: Phase::Removing
            }
        );
    }

    #[test]
    fn unmounted_netns_is_restored_from_its_live_pause_else_the_pod_is_removed() {
        let r = ready(false);
        let held = Observed {
            pause_alive: Some(true),
            ..Observed::default()
        };
        assert_eq!(
            plan_repair(&r, &node(false), &held),
            Repair::Actions(vec![Action::RestoreNetns {
                path: r.netns.clone(),
                pause: r.pause.unwrap(),
            }])
        );
        let gone = Observed {
            pause_alive: Some(false),
            ..Observed::default()
        };
        assert_eq!(plan_repair(&r, &node(false), &gone), Repair::Remove);
        // A namespace someone else made is never mounted by us.
        let mut attached = r.clone();
        attached.ownership = NetnsOwnership::Attached;
        assert_eq!(plan_repair(&attached, &node(false), &held), Repair::Remove);
    }

    #[test]
    fn bridge_checks() {
        let n = node(true);
        assert_eq!(check_bridge(&n, None)[0].to_string(), "bridge nh0: missing");
        let ok = LinkInfo {
            up: true,
            mtu: 1500,
            master: None,
            addresses: n.bridge_addresses.clone(),
        };
        assert!(check_bridge(&n, Some(&ok)).is_empty());
        assert!(plan_bridge_repair(&n, Some(&ok)).is_empty());
        let partial = LinkInfo {
            addresses: vec![n.bridge_addresses[0]],
            ..ok
        };
        assert_eq!(
            check_bridge(&n, Some(&partial))[0].to_string(),
            "bridge nh0: address fd00::1/64 missing"
        );
        assert_eq!(plan_bridge_repair(&n, Some(&partial)).len(), 2);
    }

    #[test]
    fn findings_serialize_flat() {
        let f = Finding {
            pod: Some(PodName::new("web").unwrap()),
            object: "link eth0".into(),
            problem: Problem::AddressMissing {
                address: "10.0.0.2/24".parse().unwrap(),
            },
        };
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"pod":"web","object":"link eth0","problem":"address_missing","address":"10.0.0.2/24"}"#
        );
    }
}
