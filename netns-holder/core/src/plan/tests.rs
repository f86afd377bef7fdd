//! Tests of [`super`]: exact expected plans, findings and repairs for each case.

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
        datapath: Default::default(),
    }
}

fn node(dual: bool) -> NodeInputs {
    let mut bridge_addresses = vec!["10.88.0.1/16".parse().unwrap()];
    if dual {
        bridge_addresses.push("fd00::1/64".parse().unwrap());
    }
    NodeInputs {
        bridge: IfName::new("nh0").unwrap(),
        bridge_addresses,
        firewall: FirewallBase {
            bridge: IfName::new("nh0").unwrap(),
            pod_cidr_v4: "10.88.0.0/16".parse().unwrap(),
            pod_cidr_v6: dual.then(|| "fd00::/64".parse().unwrap()),
            masquerade: true,
            datapath: Default::default(),
        },
        datapath: Default::default(),
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
                "create veth {h} <-> eth0 in /run/netns/web (mtu 1450) on bridge nh0 [undo: delete link {h} in the host namespace]"
            ),
            format!("disable IPv6 on link {h} in the host namespace"),
            format!("set link {h} up in the host namespace"),
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
    let expected = vec![
        Step::new(
            Action::CreateNetns { path: ns.clone() },
            Action::DeleteNetns { path: ns.clone() },
        ),
        // The rest of the wiring needs only the namespace, not the pause.
        Step::alongside(
            Action::StartPause {
                id,
                netns: ns.clone(),
            },
            Action::StopPause { id, process: None },
        ),
        Step::plain(Action::LoopbackUp { netns: ns.clone() }),
        Step::plain(Action::EnsureBridge {
            bridge: IfName::new("nh0").unwrap(),
            addresses: vec![
                "10.88.0.1/16".parse().unwrap(),
                "fd00::1/64".parse().unwrap(),
            ],
        }),
        Step::plain(Action::EnableForwarding { ipv6: true }),
        Step::new(
            Action::CreateVeth {
                host: host.clone(),
                peer: eth0.clone(),
                netns: ns.clone(),
                mtu: 1450,
                host_mac: None,
                peer_mac: None,
                master: Some(IfName::new("nh0").unwrap()),
            },
            Action::DeleteLink {
                netns: None,
                link: host.clone(),
            },
        ),
        Step::plain(Action::DisableIpv6 { link: host.clone() }),
        Step::plain(Action::LinkUp {
            netns: None,
            link: host.clone(),
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
    assert_eq!(steps.len(), 10);
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
    let ns = "/var/run/netns/cni-1234";
    assert_eq!(
        text(&plan_create(&r, &node(false))),
        vec![
            format!("bring loopback up in {ns}"),
            "ensure bridge nh0 with 10.88.0.1/16".to_string(),
            "enable IPv4 forwarding".to_string(),
            format!(
                "create veth {h} <-> eth0 in {ns} (mtu 1450) on bridge nh0 [undo: delete link {h} in the host namespace]"
            ),
            format!("disable IPv6 on link {h} in the host namespace"),
            format!("set link {h} up in the host namespace"),
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
            Action::RetireLink {
                netns: None,
                link: id.host_veth_name()
            },
            Action::StopPause {
                id,
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
        vec![
            Action::RetireLink {
                netns: Some(r.netns.clone()),
                link: IfName::pod_interface()
            },
            Action::RetireLink {
                netns: None,
                link: web_id().host_veth_name()
            }
        ]
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
        host_routes: vec![],
        host_neighbours: vec![],
        pod_neighbours: vec![],
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
            "pod web: routes in /run/netns/web: default route via 10.88.0.1 missing".to_string(),
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

/// A routed node (dual-stack when `dual`): node addresses /32 and /128.
fn routed_node(dual: bool) -> NodeInputs {
    let mut n = node(dual);
    n.datapath = Datapath::Routed;
    n.firewall.datapath = Datapath::Routed;
    n.bridge_addresses = n
        .bridge_addresses
        .iter()
        .map(|a| IpNet::from(a.addr()))
        .collect();
    n
}

/// A routed record: host addresses and the link-local gateways.
fn routed_record(dual: bool, ports: bool) -> PodRecord {
    let mut r = ready(dual);
    r.datapath = Datapath::Routed;
    r.ips = r.ips.iter().map(|a| IpNet::from(a.addr())).collect();
    r.gateways = r
        .ips
        .iter()
        .map(|a| crate::datapath::gateway_for(a.addr()))
        .collect();
    if ports {
        r.ports = vec![crate::ports::PortMapping::new(
            8080,
            80,
            crate::ports::Protocol::Tcp,
        )];
    }
    r
}

#[test]
fn create_routed_dual_stack() {
    let r = routed_record(true, true);
    let id = web_id();
    let h = id.host_veth_name();
    let all = text(&plan_create(&r, &routed_node(true)));
    // After the pause and loopback: node addresses on lo, no bridge, no master, no hairpin;
    // permanent neighbours for the gateways before the on-link default routes; host routes
    // from the node address and neighbours for the pod last; route_localnet on the host veth.
    assert_eq!(
        all[3..].to_vec(),
        vec![
            "ensure node addresses on lo: 10.88.0.1/32 fd00::1/128".to_string(),
            "enable IPv4 and IPv6 forwarding".to_string(),
            format!(
                "create veth {h} <-> eth0 in /run/netns/web (mtu 1450) [undo: delete link {h} in the host namespace]"
            ),
            format!("no IPv6 link-local on link {h} in the host namespace"),
            format!("set link {h} up in the host namespace"),
            "disable IPv6 DAD on link eth0 in /run/netns/web".to_string(),
            "add address 10.88.0.2/32 to link eth0 in /run/netns/web".to_string(),
            "add address fd00::2/128 to link eth0 in /run/netns/web".to_string(),
            "set link eth0 up in /run/netns/web".to_string(),
            "add permanent neighbour 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 in /run/netns/web".to_string(),
            "add default route via 169.254.1.1 dev eth0 in /run/netns/web".to_string(),
            "add permanent neighbour fe80::1 lladdr ee:ee:ee:ee:ee:ee dev eth0 in /run/netns/web".to_string(),
            "add default route via fe80::1 dev eth0 in /run/netns/web".to_string(),
            format!("add host route 10.88.0.2/32 dev {h} src 10.88.0.1"),
            format!("add permanent neighbour 10.88.0.2 lladdr 0a:58:0a:58:00:02 dev {h} in the host namespace"),
            format!("add host route fd00::2/128 dev {h} src fd00::1"),
            format!("add permanent neighbour fd00::2 lladdr 0a:58:0a:58:00:02 dev {h} in the host namespace"),
            format!("enable route_localnet on {h}"),
            "publish 2 host port element(s) of pod web in nftables table inet netns_holder \
             [undo: withdraw 2 host port element(s) of pod web from nftables table inet \
             netns_holder]"
                .to_string(),
        ]
    );
    // Without IPv6 the host veth has no IPv6 at all (a bridge port never has).
    let v4_only = text(&plan_create(
        &routed_record(false, false),
        &routed_node(false),
    ));
    let up = v4_only
        .iter()
        .position(|s| *s == format!("set link {h} up in the host namespace"))
        .expect("host veth up");
    assert_eq!(
        v4_only[up - 1],
        format!("disable IPv6 on link {h} in the host namespace")
    );
    assert!(
        !v4_only.iter().any(|s| s.contains("link-local")),
        "{v4_only:?}"
    );
    // The veth gets the fixed host MAC and the pod's derived one.
    let veth = plan_create(&r, &routed_node(true))
        .into_iter()
        .find(|s| matches!(s.action, Action::CreateVeth { .. }))
        .unwrap();
    assert!(matches!(
        veth.action,
        Action::CreateVeth {
            host_mac: Some(crate::datapath::HOST_VETH_MAC),
            peer_mac: Some(m),
            master: None,
            ..
        } if m.to_string() == "0a:58:0a:58:00:02"
    ));
}

#[test]
fn routed_checks_and_repairs_host_routes_and_neighbours() {
    let r = routed_record(false, false);
    let node = routed_node(false);
    let h = r.host_veth.clone();
    let mut healthy = healthy(&r);
    healthy.host_veth.as_mut().unwrap().master = None;
    healthy.host_routes = vec!["10.88.0.2/32".parse().unwrap()];
    healthy.host_neighbours = vec!["10.88.0.2".parse().unwrap()];
    healthy.pod_neighbours = vec!["169.254.1.1".parse().unwrap()];
    assert_eq!(check_pod(&r, &node, &healthy), vec![]);
    assert_eq!(plan_repair(&r, &node, &healthy), Repair::Nothing);

    let mut drifted = healthy.clone();
    drifted.host_routes.clear();
    drifted.pod_neighbours.clear();
    let found: Vec<String> = check_pod(&r, &node, &drifted)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        vec![
            format!("pod web: link {h}: host route to 10.88.0.2/32 missing"),
            "pod web: link eth0 in /run/netns/web: permanent neighbour entry for 169.254.1.1 missing"
                .to_string(),
        ]
    );
    let Repair::Actions(actions) = plan_repair(&r, &node, &drifted) else {
        panic!("a repair");
    };
    let actions: Vec<String> = actions.iter().map(ToString::to_string).collect();
    assert_eq!(
        actions,
        vec![
            "add permanent neighbour 169.254.1.1 lladdr ee:ee:ee:ee:ee:ee dev eth0 in /run/netns/web"
                .to_string(),
            format!("add host route 10.88.0.2/32 dev {h} src 10.88.0.1"),
            format!(
                "add permanent neighbour 10.88.0.2 lladdr 0a:58:0a:58:00:02 dev {h} in the host namespace"
            ),
        ]
    );
    // A routed host veth has no master: one on a bridge is not what check looks for, and
    // repair never attaches it.
    let mut bridged = healthy.clone();
    bridged.host_veth.as_mut().unwrap().master = None;
    assert_eq!(plan_repair(&r, &node, &bridged), Repair::Nothing);
    // The node addresses live on lo.
    assert_eq!(node.node_link().as_str(), "lo");
    let lo = LinkInfo {
        up: true,
        mtu: 65536,
        master: None,
        addresses: vec!["127.0.0.1/8".parse().unwrap()],
    };
    let found = check_bridge(&node, Some(&lo));
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].to_string(),
        "link lo: address 10.88.0.1/32 missing"
    );
}

#[test]
fn removal_retires_veths_on_either_datapath_and_an_attached_pod_end_too() {
    let r = routed_record(false, false);
    let h = r.host_veth.clone();
    for record in [r.clone(), ready(false)] {
        assert_eq!(record.host_veth, h);
        let owned = text(
            &plan_remove(&record, &[])
                .into_iter()
                .map(Step::plain)
                .collect::<Vec<_>>(),
        );
        assert_eq!(
            owned[0],
            format!("retire link {h} (the kernel deletes it with the pod's namespace)"),
            "{:?}",
            record.datapath
        );
        assert_eq!(owned.last().unwrap(), "delete netns /run/netns/web");
    }
    assert_eq!(ready(false).datapath, Datapath::Bridge);
    // Attached: the pod end is renamed out of the way first (a pod attached to that
    // namespace next must find eth0 free), then the host end; the namespace is not ours.
    let mut attached = r.clone();
    attached.ownership = NetnsOwnership::Attached;
    attached.netns = PathBuf::from("/var/run/netns/cni-1234");
    attached.pause = None;
    let actions = plan_remove(&attached, &[]);
    assert_eq!(
        actions,
        vec![
            Action::RetireLink {
                netns: Some(attached.netns.clone()),
                link: IfName::pod_interface(),
            },
            Action::RetireLink {
                netns: None,
                link: h
            },
        ]
    );
    assert_eq!(
        actions[0].to_string(),
        "retire link eth0 in /var/run/netns/cni-1234 (it goes with its host end)"
    );
}
