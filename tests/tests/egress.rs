//! Egress masquerade on the real kernel: pods reach an "outside host" that has no route to
//! any pod CIDR, which sees the node's address; everything inside the cluster keeps its
//! addresses.
//!
//! The layout, all in throwaway namespaces joined by veths (private ranges only inside
//! them; nothing leaves the machine):
//!
//! ```text
//!   outside host (192.168.81.2, fd81::2; no route to any pod CIDR)
//!      | x0
//!   node A (pods 10.244.41.0/24, fd00:10:244:41::/64) --u0-- node B (10.244.43.0/24, ...:43::/64)
//!      | d0
//!   dc host (192.168.82.2 and 192.168.83.1, fd82::2; routes back to A's pods via A)
//! ```
//!
//! Node A exempts the dc host's 192.168.83.0/24 (and fd83::/64) with
//! `no_masquerade_cidrs`. The dc host routes A's pod CIDRs back to A, as a data centre
//! network that knows the pod ranges would, so an un-NATed connection from a pod succeeds
//! there and shows the pod's own address.
//!
//! Covered: pod -> outside (v4 and v6) seen as node A's address; pod -> pod on the same node
//! and across nodes (both ways, both families) with the pod's address; node -> own pod and
//! node -> pod on the other node with the node's address; pod -> another node's own address
//! masqueraded behind its node; pod -> exempt destination with
//! the pod's address; a peer added at run time through the API exempted at once and
//! un-exempted when removed; a set element deleted behind the daemon's back reported by
//! `check`, observable as NAT, and restored by `check --repair`; `masquerade = false`
//! turns it off (the outside host, given a route back, sees the pod's address); a host
//! port still reached from the outside with the client's address.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::Value;

use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, tcp_probe};
use nh_tests::require_root;

const A_UNDERLAY: &str = "192.168.80.1";
const B_UNDERLAY: &str = "192.168.80.2";
const A_UNDERLAY6: &str = "fd80::1";
const B_UNDERLAY6: &str = "fd80::2";
const A_OUTSIDE_SIDE: &str = "192.168.81.1";
const A_OUTSIDE_SIDE6: &str = "fd81::1";
const OUTSIDE: &str = "192.168.81.2";
const OUTSIDE6: &str = "fd81::2";
const A_DC_SIDE: &str = "192.168.82.1";
const A_DC_SIDE6: &str = "fd82::1";
const DC_LINK: &str = "192.168.82.2";
const DC_LINK6: &str = "fd82::2";
/// The dc host's exempt service address (on its loopback), and its network.
const DC: &str = "192.168.83.1";
const DC6: &str = "fd83::1";
const DC_NET: &str = "192.168.83.0/24";
const DC_NET6: &str = "fd83::/64";
/// Not adjacent, so the exemption sets keep them as two elements.
const A_CIDR: &str = "10.244.41.0/24";
const B_CIDR: &str = "10.244.43.0/24";
const A_CIDR6: &str = "fd00:10:244:41::/64";
const B_CIDR6: &str = "fd00:10:244:43::/64";

struct Net {
    // Dropped in this order: daemons (pods) first, then the namespaces.
    a: Daemon,
    b: Daemon,
    node_a: Node,
    node_b: Node,
    outside: Node,
    dc: Node,
}

impl Net {
    /// Node B always peers with A through its configuration. Node A peers with B through
    /// its configuration when `a_peers`, else not at all (the test adds it through the API).
    /// `a_extra` is appended to node A's configuration.
    fn new(a_peers: bool, a_extra: &str) -> Result<Self> {
        let node_a = Node::new()?;
        let node_b = Node::new()?;
        let outside = Node::new()?;
        let dc = Node::new()?;
        node_a.veth_to(
            &node_b,
            (
                "u0",
                &[&format!("{A_UNDERLAY}/24"), &format!("{A_UNDERLAY6}/64")],
            ),
            (
                "u0",
                &[&format!("{B_UNDERLAY}/24"), &format!("{B_UNDERLAY6}/64")],
            ),
        )?;
        node_a.veth_to(
            &outside,
            (
                "x0",
                &[
                    &format!("{A_OUTSIDE_SIDE}/24"),
                    &format!("{A_OUTSIDE_SIDE6}/64"),
                ],
            ),
            ("x0", &[&format!("{OUTSIDE}/24"), &format!("{OUTSIDE6}/64")]),
        )?;
        node_a.veth_to(
            &dc,
            (
                "d0",
                &[&format!("{A_DC_SIDE}/24"), &format!("{A_DC_SIDE6}/64")],
            ),
            ("d0", &[&format!("{DC_LINK}/24"), &format!("{DC_LINK6}/64")]),
        )?;
        // The dc host: its service address, and routes back to node A's pods.
        dc.run(&["ip", "addr", "add", &format!("{DC}/32"), "dev", "lo"])?;
        dc.run(&["ip", "addr", "add", &format!("{DC6}/128"), "dev", "lo"])?;
        dc.run(&["ip", "route", "add", A_CIDR, "via", A_DC_SIDE])?;
        dc.run(&["ip", "-6", "route", "add", A_CIDR6, "via", A_DC_SIDE6])?;
        node_a.run(&["ip", "route", "add", DC_NET, "via", DC_LINK])?;
        node_a.run(&["ip", "-6", "route", "add", DC_NET6, "via", DC_LINK6])?;
        let a_peer_list = if a_peers {
            vec![
                (B_CIDR.into(), B_UNDERLAY.into()),
                (B_CIDR6.into(), B_UNDERLAY6.into()),
            ]
        } else {
            Vec::new()
        };
        let a = Daemon::start(
            &node_a,
            DaemonOptions {
                pod_cidr_v4: A_CIDR.into(),
                pod_cidr_v6: Some(A_CIDR6.into()),
                peers: a_peer_list,
                extra_config: a_extra.to_string(),
                ..DaemonOptions::default()
            },
        )?;
        let b = Daemon::start(
            &node_b,
            DaemonOptions {
                pod_cidr_v4: B_CIDR.into(),
                pod_cidr_v6: Some(B_CIDR6.into()),
                peers: vec![
                    (A_CIDR.into(), A_UNDERLAY.into()),
                    (A_CIDR6.into(), A_UNDERLAY6.into()),
                ],
                ..DaemonOptions::default()
            },
        )?;
        Ok(Self {
            a,
            b,
            node_a,
            node_b,
            outside,
            dc,
        })
    }
}

struct Pod {
    netns: PathBuf,
    v4: IpAddr,
    v6: IpAddr,
    gateway: IpAddr,
}

fn pod(daemon: &Daemon, name: &str, extra: &[&str]) -> Result<Pod> {
    let v = daemon.create_pod(name, extra)?;
    let ips: Vec<IpAddr> = v["ips"]
        .as_array()
        .context("ips")?
        .iter()
        .filter_map(|c| c.as_str()?.split('/').next()?.parse().ok())
        .collect();
    let gateway = v["gateways"]
        .as_array()
        .context("gateways")?
        .iter()
        .filter_map(|g| g.as_str()?.parse::<IpAddr>().ok())
        .find(IpAddr::is_ipv4)
        .context("no v4 gateway")?;
    Ok(Pod {
        netns: PathBuf::from(v["netns"].as_str().context("netns")?),
        v4: *ips.iter().find(|i| i.is_ipv4()).context("no v4")?,
        v6: *ips.iter().find(|i| i.is_ipv6()).context("no v6")?,
        gateway,
    })
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The elements of one of node A's egress sets, as `nft` lists them.
fn set_text(node: &Node, set: &str) -> Result<String> {
    node.stdout(&["nft", "list", "set", "inet", "netns_holder", set])
}

#[test]
fn pods_reach_the_outside_masqueraded_and_the_cluster_without_nat() -> Result<()> {
    if !require_root("pods_reach_the_outside_masqueraded_and_the_cluster_without_nat") {
        return Ok(());
    }
    let n = Net::new(
        true,
        &format!("no_masquerade_cidrs = [\"{DC_NET}\", \"{DC_NET6}\"]\n"),
    )?;
    let pa = pod(&n.a, "pa", &["--publish", "8080:80"])?;
    let pa2 = pod(&n.a, "pa2", &[])?;
    let pb = pod(&n.b, "pb", &[])?;
    let _out = Echo::start(&n.outside.netns_path(), Proto::Tcp, 7000)?;
    let _dc = Echo::start(&n.dc.netns_path(), Proto::Tcp, 7000)?;
    let _ea = Echo::start(&pa.netns, Proto::Tcp, 80)?;
    let _eb = Echo::start(&pb.netns, Proto::Tcp, 80)?;

    // Out of the cluster: the outside host sees node A's address on that link.
    assert_eq!(
        tcp_probe(&pa.netns, at(ip(OUTSIDE), 7000))?,
        ip(A_OUTSIDE_SIDE)
    );
    assert_eq!(
        tcp_probe(&pa.netns, at(ip(OUTSIDE6), 7000))?,
        ip(A_OUTSIDE_SIDE6)
    );
    // An exempt destination sees the pod itself.
    assert_eq!(tcp_probe(&pa.netns, at(ip(DC), 7000))?, pa.v4);
    assert_eq!(tcp_probe(&pa.netns, at(ip(DC6), 7000))?, pa.v6);

    // Pod to pod: same node, and across nodes both ways, both families.
    assert_eq!(tcp_probe(&pa2.netns, at(pa.v4, 80))?, pa2.v4);
    assert_eq!(tcp_probe(&pa2.netns, at(pa.v6, 80))?, pa2.v6);
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, pa.v4);
    assert_eq!(tcp_probe(&pa.netns, at(pb.v6, 80))?, pa.v6);
    assert_eq!(tcp_probe(&pb.netns, at(pa.v4, 80))?, pb.v4);
    assert_eq!(tcp_probe(&pb.netns, at(pa.v6, 80))?, pb.v6);

    // Node to pod: its own pod (from the node's pod-CIDR address: the bridge gateway, or
    // routed the address on lo), and the other node's pod (from the underlay address).
    assert_eq!(
        tcp_probe(&n.node_a.netns_path(), at(pa.v4, 80))?,
        nh_tests::node::node_pod_address(A_CIDR)
    );
    if !nh_tests::node::routed() {
        assert_eq!(nh_tests::node::node_pod_address(A_CIDR), pa.gateway);
    }
    assert_eq!(
        tcp_probe(&n.node_a.netns_path(), at(pb.v4, 80))?,
        ip(A_UNDERLAY)
    );
    assert_eq!(
        tcp_probe(&n.node_a.netns_path(), at(pb.v6, 80))?,
        ip(A_UNDERLAY6)
    );

    // A node's own address is outside the pod networks: a pod on B reaching node A is
    // masqueraded behind node B.
    let _node_a = Echo::start(&n.node_a.netns_path(), Proto::Tcp, 7001)?;
    assert_eq!(
        tcp_probe(&pb.netns, at(ip(A_UNDERLAY), 7001))?,
        ip(B_UNDERLAY)
    );

    // A host port from the outside host: the pod sees the client, not the node.
    assert_eq!(
        tcp_probe(&n.outside.netns_path(), at(ip(A_OUTSIDE_SIDE), 8080))?,
        ip(OUTSIDE)
    );

    let check = n.a.cli_json(&["check"])?;
    assert_eq!(check["drift"], false, "{check}");
    let v4 = set_text(&n.node_a, "egress_exempt_v4")?;
    for cidr in [A_CIDR, B_CIDR, DC_NET] {
        assert!(v4.contains(cidr), "{cidr} not in {v4}");
    }

    // Someone deletes B's element: check names it, new connections to B's pods are
    // masqueraded meanwhile, and check --repair restores the element alone.
    n.node_a.run(&[
        "nft",
        "delete",
        "element",
        "inet",
        "netns_holder",
        "egress_exempt_v4",
        &format!("{{ {B_CIDR} }}"),
    ])?;
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, ip(A_UNDERLAY));
    let out = n.a.cli(&["check"])?;
    assert_eq!(out.status.code(), Some(1));
    let check: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        check["findings"][0]["object"],
        format!("element {{ {B_CIDR} }} of set egress_exempt_v4"),
        "{check}"
    );
    assert_eq!(check["findings"][0]["problem"], "missing", "{check}");
    let repaired = n.a.cli_json(&["check", "--repair"])?;
    let actions = repaired["repair"]["node_actions"].to_string();
    assert!(
        actions.contains("set the egress exemptions of nftables table inet netns_holder"),
        "{repaired}"
    );
    assert!(!actions.contains("replace"), "{repaired}");
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, pa.v4);
    Ok(())
}

#[test]
fn a_peer_added_at_run_time_is_exempt_until_removed() -> Result<()> {
    if !require_root("a_peer_added_at_run_time_is_exempt_until_removed") {
        return Ok(());
    }
    let n = Net::new(false, "")?;
    let pa = pod(&n.a, "pa", &[])?;
    let pb = pod(&n.b, "pb", &[])?;
    let _eb = Echo::start(&pb.netns, Proto::Tcp, 80)?;
    assert!(!set_text(&n.node_a, "egress_exempt_v4")?.contains(B_CIDR));

    // Without the peer node A has no route to B's pods; with it (through the API) the set
    // holds B's CIDRs at once and pods across keep their addresses.
    assert!(tcp_probe(&pa.netns, at(pb.v4, 80)).is_err());
    n.a.cli_json(&["peer", "add", B_CIDR, B_UNDERLAY])?;
    n.a.cli_json(&["peer", "add", B_CIDR6, B_UNDERLAY6])?;
    assert!(set_text(&n.node_a, "egress_exempt_v4")?.contains(B_CIDR));
    assert!(set_text(&n.node_a, "egress_exempt_v6")?.contains(B_CIDR6));
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, pa.v4);
    assert_eq!(tcp_probe(&pa.netns, at(pb.v6, 80))?, pa.v6);
    let check = n.a.cli_json(&["check"])?;
    assert_eq!(check["drift"], false, "{check}");

    // Removed: the element goes with the route.
    n.a.cli_json(&["peer", "rm", B_CIDR])?;
    let v4 = set_text(&n.node_a, "egress_exempt_v4")?;
    assert!(!v4.contains(B_CIDR) && v4.contains(A_CIDR), "{v4}");
    assert!(set_text(&n.node_a, "egress_exempt_v6")?.contains(B_CIDR6));
    let check = n.a.cli_json(&["check"])?;
    assert_eq!(check["drift"], false, "{check}");
    Ok(())
}

#[test]
fn masquerade_false_leaves_pod_addresses_alone() -> Result<()> {
    if !require_root("masquerade_false_leaves_pod_addresses_alone") {
        return Ok(());
    }
    let n = Net::new(true, "masquerade = false\n")?;
    // This time the outside host can route back to A's pods, so an un-NATed connection
    // works and shows whose address it carries.
    n.outside
        .run(&["ip", "route", "add", A_CIDR, "via", A_OUTSIDE_SIDE])?;
    let pa = pod(&n.a, "pa", &[])?;
    let _out = Echo::start(&n.outside.netns_path(), Proto::Tcp, 7000)?;
    assert_eq!(tcp_probe(&pa.netns, at(ip(OUTSIDE), 7000))?, pa.v4);
    let table = n
        .node_a
        .stdout(&["nft", "list", "table", "inet", "netns_holder"])?;
    assert!(!table.contains("jump egress"), "{table}");
    let check = n.a.cli_json(&["check"])?;
    assert_eq!(check["drift"], false, "{check}");
    // Node B (default) does masquerade: its table has the egress chain.
    let table_b = n
        .node_b
        .stdout(&["nft", "list", "table", "inet", "netns_holder"])?;
    assert!(table_b.contains("jump egress"), "{table_b}");
    Ok(())
}
