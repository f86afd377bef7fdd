//! Two nodes, host-gw style: two node namespaces joined by an underlay veth, each running its
//! own daemon with its own pod CIDRs (IPv4 and IPv6) and the other node as a peer, plus a
//! third namespace as an outside client on node A's side.
//!
//! Covered: pod on A <-> pod on B both ways with the source address preserved (each side
//! sees the other's pod address, IPv4 and IPv6); node A <-> pod on B (node B exempts the
//! underlay from egress masquerade with `no_masquerade_cidrs`); host ports of node A
//! from the client and from a pod on node B (no masquerade: the pod on A sees the pod on B's
//! address); a peer route deleted behind the daemon's back reported by `check` and re-added
//! by `check --repair` and by a restart; peers added and removed at run time through the
//! CLI; a configured peer refused by `peer rm`.
//!
//! Private ranges, inside throwaway namespaces only; every object is removed on drop.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, UdpClient, tcp_probe};
use nh_tests::require_root;

const A_UNDERLAY: &str = "192.168.72.1";
const B_UNDERLAY: &str = "192.168.72.2";
const A_UNDERLAY6: &str = "fd72::1";
const B_UNDERLAY6: &str = "fd72::2";
const A_CIDR: &str = "10.244.21.0/24";
const B_CIDR: &str = "10.244.22.0/24";
const A_CIDR6: &str = "fd00:10:244:21::/64";
const B_CIDR6: &str = "fd00:10:244:22::/64";
/// The client, on its own link to node A.
const A_CLIENT_SIDE: &str = "192.168.73.1";
const CLIENT_IP: &str = "192.168.73.2";

struct Cluster {
    // Dropped in this order: daemons (pods) first, then the namespaces.
    a: Daemon,
    b: Daemon,
    node_a: Node,
    node_b: Node,
    client: Node,
}

impl Cluster {
    /// Both nodes peer with each other through the configuration, unless `b_peers` is
    /// false (node B then starts without peers).
    fn new(b_peers: bool) -> Result<Self> {
        let node_a = Node::new()?;
        let node_b = Node::new()?;
        let client = Node::new()?;
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
            &client,
            ("c0", &[&format!("{A_CLIENT_SIDE}/24")]),
            ("c0", &[&format!("{CLIENT_IP}/24")]),
        )?;
        // Node A forwards for the client (the daemon turns forwarding on with the first pod;
        // the client is not a pod, so say it here too).
        node_a.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let options = |v4: &str, v6: &str, peers: Vec<(String, String)>| DaemonOptions {
            pod_cidr_v4: v4.into(),
            pod_cidr_v6: Some(v6.into()),
            peers,
            ..DaemonOptions::default()
        };
        let a = Daemon::start(
            &node_a,
            options(
                A_CIDR,
                A_CIDR6,
                vec![
                    (B_CIDR.into(), B_UNDERLAY.into()),
                    (B_CIDR6.into(), B_UNDERLAY6.into()),
                ],
            ),
        )?;
        let b_peer_list = if b_peers {
            vec![
                (A_CIDR.into(), A_UNDERLAY.into()),
                (A_CIDR6.into(), A_UNDERLAY6.into()),
            ]
        } else {
            Vec::new()
        };
        // Node B exempts the underlay from egress masquerade (`no_masquerade_cidrs`), so its
        // pods reach node A's own address (and its host ports) with their own address;
        // without it they would be masqueraded behind node B's (see tests/tests/egress.rs).
        let b = Daemon::start(
            &node_b,
            DaemonOptions {
                extra_config: "no_masquerade_cidrs = [\"192.168.72.0/24\", \"fd72::/64\"]\n".into(),
                ..options(B_CIDR, B_CIDR6, b_peer_list)
            },
        )?;
        Ok(Self {
            a,
            b,
            node_a,
            node_b,
            client,
        })
    }
}

struct Pod {
    netns: PathBuf,
    v4: IpAddr,
    v6: IpAddr,
}

fn pod(daemon: &Daemon, name: &str, extra: &[&str]) -> Result<Pod> {
    let v = daemon.create_pod(name, extra)?;
    let ips: Vec<IpAddr> = v["ips"]
        .as_array()
        .context("ips")?
        .iter()
        .filter_map(|c| c.as_str()?.split('/').next()?.parse().ok())
        .collect();
    Ok(Pod {
        netns: PathBuf::from(v["netns"].as_str().context("netns")?),
        v4: *ips.iter().find(|i| i.is_ipv4()).context("no v4")?,
        v6: *ips.iter().find(|i| i.is_ipv6()).context("no v6")?,
    })
}

fn at(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn routes(node: &Node) -> Result<String> {
    let mut all = node.stdout(&["ip", "route", "show", "proto", "78"])?;
    all.push_str(&node.stdout(&["ip", "-6", "route", "show", "proto", "78"])?);
    Ok(all)
}

#[test]
fn pods_on_two_nodes_talk_without_nat_and_host_ports_work_across() -> Result<()> {
    if !require_root("pods_on_two_nodes_talk_without_nat_and_host_ports_work_across") {
        return Ok(());
    }
    let c = Cluster::new(true)?;
    let pa = pod(&c.a, "pa", &["--publish", "8080:80"])?;
    let pb = pod(&c.b, "pb", &[])?;
    let _ea = Echo::start(&pa.netns, Proto::Tcp, 80)?;
    let _eb = Echo::start(&pb.netns, Proto::Tcp, 80)?;
    let _ua = Echo::start(&pa.netns, Proto::Udp, 53)?;

    let shown = routes(&c.node_a)?;
    assert!(
        shown.contains(&format!("{B_CIDR} via {B_UNDERLAY} dev u0")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("{B_CIDR6} via {B_UNDERLAY6} dev u0")),
        "{shown}"
    );

    // Pod to pod across the nodes, both ways, both families: each sees the other's own
    // address.
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, pa.v4);
    assert_eq!(tcp_probe(&pb.netns, at(pa.v4, 80))?, pb.v4);
    assert_eq!(tcp_probe(&pa.netns, at(pb.v6, 80))?, pa.v6);
    assert_eq!(tcp_probe(&pb.netns, at(pa.v6, 80))?, pb.v6);
    let udp = UdpClient::new(&pb.netns, true)?;
    assert_eq!(udp.probe(at(pa.v4, 53), Duration::from_secs(5))?, pb.v4);

    // Node A to the pod on B (from node A's underlay address), and the pod on B to node A.
    assert_eq!(
        tcp_probe(&c.node_a.netns_path(), at(pb.v4, 80))?,
        ip(A_UNDERLAY)
    );
    assert_eq!(
        tcp_probe(&c.node_a.netns_path(), at(pb.v6, 80))?,
        ip(A_UNDERLAY6)
    );
    let _node_echo = Echo::start(&c.node_a.netns_path(), Proto::Tcp, 7000)?;
    assert_eq!(tcp_probe(&pb.netns, at(ip(A_UNDERLAY), 7000))?, pb.v4);

    // A host port of node A: from the outside client, and from the pod on node B (which is
    // not masqueraded: the pod on A sees the pod on B).
    assert_eq!(
        tcp_probe(&c.client.netns_path(), at(ip(A_CLIENT_SIDE), 8080))?,
        ip(CLIENT_IP)
    );
    assert_eq!(tcp_probe(&pb.netns, at(ip(A_UNDERLAY), 8080))?, pb.v4);

    for d in [&c.a, &c.b] {
        let check = d.cli_json(&["check"])?;
        assert_eq!(check["drift"], false, "{check}");
    }
    Ok(())
}

#[test]
fn peer_routes_are_repaired_added_and_removed() -> Result<()> {
    if !require_root("peer_routes_are_repaired_added_and_removed") {
        return Ok(());
    }
    let mut c = Cluster::new(false)?;
    let pa = pod(&c.a, "pa", &[])?;
    let pb = pod(&c.b, "pb", &[])?;
    let _eb = Echo::start(&pb.netns, Proto::Tcp, 80)?;
    // B has no route back to A's pods yet.
    assert!(tcp_probe(&pa.netns, at(pb.v4, 80)).is_err());

    // Peers at run time, through the CLI.
    let added = c.b.cli_json(&["peer", "add", A_CIDR, A_UNDERLAY])?;
    assert_eq!(added["added"], true, "{added}");
    assert_eq!(added["peer"]["source"], "api");
    c.b.cli_json(&["peer", "add", A_CIDR6, A_UNDERLAY6])?;
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, pa.v4);
    assert_eq!(tcp_probe(&pa.netns, at(pb.v6, 80))?, pa.v6);
    let listed = c.b.cli_json(&["peer", "ls"])?;
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    // Someone deletes the route on A: check reports it, check --repair puts it back.
    c.node_a.run(&["ip", "route", "del", B_CIDR])?;
    assert!(tcp_probe(&pa.netns, at(pb.v4, 80)).is_err());
    let out = c.a.cli(&["check"])?;
    assert_eq!(out.status.code(), Some(1));
    let check: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        check["findings"][0]["object"],
        format!("route {B_CIDR} via {B_UNDERLAY}"),
        "{check}"
    );
    assert_eq!(check["findings"][0]["problem"], "missing");
    let repaired = c.a.cli_json(&["check", "--repair"])?;
    assert_eq!(
        repaired["repair"]["node_actions"],
        serde_json::json!([format!("add route {B_CIDR} via {B_UNDERLAY}")]),
        "{repaired}"
    );
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, pa.v4);

    // And by a restart (reconcile), with the daemon down while the route went.
    c.a.kill9();
    c.node_a.run(&["ip", "route", "del", B_CIDR])?;
    c.a.spawn()?;
    assert_eq!(tcp_probe(&pa.netns, at(pb.v4, 80))?, pa.v4);

    // A configured peer cannot be removed through the API.
    let out = c.a.cli(&["peer", "rm", B_CIDR])?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("comes from the configuration file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Removing B's run-time peer removes its route (and only ours: the kernel's own
    // routes stay).
    let removed = c.b.cli_json(&["peer", "rm", A_CIDR])?;
    assert_eq!(removed["removed"], true);
    let shown = routes(&c.node_b)?;
    assert!(!shown.contains(A_CIDR), "{shown}");
    assert!(shown.contains(A_CIDR6), "{shown}");
    assert!(tcp_probe(&pa.netns, at(pb.v4, 80)).is_err());
    if nh_tests::node::routed() {
        // Routed: the host routes of B's pods (ours, proto 79) stay.
        let host_routes = c.node_b.stdout(&["ip", "route", "show", "proto", "79"])?;
        assert!(
            host_routes.contains("dev nh"),
            "the host routes stay: {host_routes}"
        );
    } else {
        assert!(
            c.node_b
                .stdout(&["ip", "route"])?
                .contains(&format!("{B_CIDR} dev nh0")),
            "the bridge route stays"
        );
    }
    // Persisted: B restarted keeps exactly the remaining peer.
    c.b.stop()?;
    c.b.spawn()?;
    let listed = c.b.cli_json(&["peer", "ls"])?;
    assert_eq!(
        listed,
        serde_json::json!([{"pod_cidr": A_CIDR6, "via": A_UNDERLAY6, "source": "api"}])
    );
    Ok(())
}
