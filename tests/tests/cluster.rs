//! Cluster mode on a real etcd (Debian's etcd-server): nodes lease their pod subnets and
//! find each other.
//!
//! The layout, all in throwaway namespaces on one underlay bridge (a hub namespace of its
//! own; private ranges only inside them, nothing leaves the machine):
//!
//! ```text
//!   etcd m0 .1   m1 .2   m3 .3         outside host .200 (no route to any pod CIDR)
//!        \        |        /                  |
//!   ------------- ul0 (hub namespace, .254) -------------
//!        /        |        \
//!   node-a .11  node-b .12  node-c .13   (netns-holder daemons in cluster mode)
//! ```
//!
//! Covered: distinct subnets; pod-to-pod across nodes with the source kept; pod -> outside
//! seen as the node's address; a node killed with kill -9 loses its routes on the others
//! within TTL + 2 s and gets its subnet back when it returns; one etcd member killed: nothing
//! changes; all members down: the node keeps serving (old pods, new pods from its subnet),
//! says `connected: false`, converges when they return; a subnet taken by another node
//! while a node was away refuses new pods with an error naming both; 50 nodes taking
//! subnets at once get 50 distinct ones (64-subnet cluster: then full, clearly); TLS with
//! client certificates, and a wrong client certificate (or CA) refused clearly; a peer whose
//! address is on no connected network reported, not routed; dual-stack nodes.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use netns_holder_core::cluster::{ClusterBackend, SubnetRecord};
use nh_tests::etcd::{EtcdCluster, TlsFiles, Underlay, block_on_in, cluster_config};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, tcp_probe};
use nh_tests::{require_root, wait_until};

const TTL: u64 = 3;
const OUTSIDE_HOST: u8 = 200;

fn cluster_body(etcd: &EtcdCluster, node: &str, address: &str, extra: &str) -> String {
    format!(
        "backend = \"etcd\"\n{}cluster_cidr_v4 = \"10.100.0.0/16\"\nnode_prefix_v4 = 24\n\
         node_name = \"{node}\"\nnode_address = \"{address}\"\nlease_ttl_seconds = {TTL}\n{extra}",
        etcd.endpoints_line()
    )
}

fn start_node(node: &Node, etcd: &EtcdCluster, name: &str, address: &str) -> Result<Daemon> {
    Daemon::start(
        node,
        DaemonOptions {
            cluster: Some(cluster_body(etcd, name, address, "")),
            ..DaemonOptions::default()
        },
    )
}

fn status(d: &Daemon) -> Result<Value> {
    d.cli_json(&["status"])
}

fn subnet(d: &Daemon) -> Result<String> {
    Ok(status(d)?["cluster"]["pod_cidr_v4"]
        .as_str()
        .context("no cluster.pod_cidr_v4")?
        .to_string())
}

/// The etcd peers in `status`, as `node pod_cidr via`.
fn etcd_peers(d: &Daemon) -> Result<BTreeSet<String>> {
    Ok(status(d)?["peers"]
        .as_array()
        .context("peers")?
        .iter()
        .filter(|p| p["source"] == "etcd")
        .map(|p| {
            format!(
                "{} {} {}",
                p["node"].as_str().unwrap_or("?"),
                p["pod_cidr"].as_str().unwrap_or("?"),
                p["via"].as_str().unwrap_or("?")
            )
        })
        .collect())
}

/// Our routes (proto 78) in a node namespace, as `CIDR via ADDR`.
fn routes(node: &Node) -> Result<BTreeSet<String>> {
    let out = node.stdout(&["ip", "-4", "route", "show", "proto", "78"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let cidr = w.next()?;
            let via = w.nth(1)?;
            Some(format!("{cidr} via {via}"))
        })
        .collect())
}

fn pod_ip(v: &Value) -> Result<IpAddr> {
    v["ips"]
        .as_array()
        .context("ips")?
        .iter()
        .filter_map(|c| c.as_str()?.split('/').next()?.parse().ok())
        .find(IpAddr::is_ipv4)
        .context("no v4 address")
}

fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let mut last = None;
    let ok = wait_until(timeout, || match check() {
        Ok(v) => v,
        Err(e) => {
            last = Some(e.to_string());
            false
        }
    });
    ensure!(ok, "{what}: not within {timeout:?} (last error: {last:?})");
    Ok(())
}

struct Three {
    // Dropped first: the daemons (their pods), then etcd, then namespaces.
    daemons: Vec<Daemon>,
    etcd: EtcdCluster,
    nodes: Vec<Node>,
    addresses: Vec<String>,
    outside: Node,
    underlay: Underlay,
}

impl Three {
    fn new() -> Result<Self> {
        let underlay = Underlay::new("192.168.90")?;
        let etcd = EtcdCluster::start(&underlay, 3, 1, None)?;
        let outside = Node::new()?;
        underlay.attach(&outside, OUTSIDE_HOST)?;
        let mut nodes = Vec::new();
        let mut addresses = Vec::new();
        for i in 0..3u8 {
            let node = Node::new()?;
            addresses.push(underlay.attach(&node, 11 + i)?);
            nodes.push(node);
        }
        let mut daemons = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            daemons.push(start_node(
                node,
                &etcd,
                &format!("node-{i}"),
                &addresses[i],
            )?);
        }
        Ok(Self {
            daemons,
            etcd,
            nodes,
            addresses,
            outside,
            underlay,
        })
    }

    fn all_peered(&self) -> Result<()> {
        for (i, d) in self.daemons.iter().enumerate() {
            wait_for(
                &format!("node-{i} peers with the two others"),
                Duration::from_secs(10),
                || Ok(etcd_peers(d)?.len() == 2),
            )?;
        }
        Ok(())
    }
}

#[test]
fn three_nodes_on_a_three_member_etcd() -> Result<()> {
    if !require_root("three_nodes_on_a_three_member_etcd") {
        return Ok(());
    }
    let mut t = Three::new()?;
    // Distinct subnets, each connected.
    let subnets: Vec<String> = t.daemons.iter().map(subnet).collect::<Result<_>>()?;
    let distinct: BTreeSet<&String> = subnets.iter().collect();
    assert_eq!(distinct.len(), 3, "{subnets:?}");
    for (i, d) in t.daemons.iter().enumerate() {
        let s = status(d)?;
        assert_eq!(s["cluster"]["backend"], "etcd", "{s}");
        assert_eq!(s["cluster"]["node"], format!("node-{i}"), "{s}");
        assert_eq!(s["cluster"]["lease_ttl_seconds"], TTL, "{s}");
        assert!(
            s["cluster"]["pod_cidr_v4"]
                .as_str()
                .unwrap()
                .starts_with("10.100."),
            "{s}"
        );
        // The cluster CIDR is exempt from masquerade.
        let exempt: Vec<&str> = s["egress_exempt"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(exempt.contains(&"10.100.0.0/16"), "{s}");
    }
    t.all_peered()?;
    let a_peers = etcd_peers(&t.daemons[0])?;
    assert_eq!(
        a_peers,
        [1, 2]
            .iter()
            .map(|&i| format!("node-{i} {} {}", subnets[i], t.addresses[i]))
            .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        routes(&t.nodes[0])?,
        [1, 2]
            .iter()
            .map(|&i| format!("{} via {}", subnets[i], t.addresses[i]))
            .collect::<BTreeSet<_>>()
    );
    let s = status(&t.daemons[0])?;
    assert_eq!(s["cluster"]["connected"], true, "{s}");

    // Pods: across nodes with the source kept, and out (masqueraded behind the node).
    let pa = t.daemons[0].create_pod("pa", &[])?;
    let pb = t.daemons[1].create_pod("pb", &[])?;
    let pa_ip = pod_ip(&pa)?;
    let pb_ip = pod_ip(&pb)?;
    let pa_netns = PathBuf::from(pa["netns"].as_str().context("netns")?);
    let pb_netns = PathBuf::from(pb["netns"].as_str().context("netns")?);
    let _echo_b = Echo::start(&pb_netns, Proto::Tcp, 7001)?;
    let _echo_out = Echo::start(&t.outside.netns_path(), Proto::Tcp, 7002)?;
    let outside_addr: IpAddr = t.underlay.address(OUTSIDE_HOST).parse()?;
    assert_eq!(
        tcp_probe(&pa_netns, SocketAddr::new(pb_ip, 7001))?,
        pa_ip,
        "pod-to-pod keeps the source"
    );
    let a_addr: IpAddr = t.addresses[0].parse()?;
    assert_eq!(
        tcp_probe(&pa_netns, SocketAddr::new(outside_addr, 7002))?,
        a_addr,
        "egress behind the node"
    );

    // One etcd member killed: nothing changes (subnets, peers, traffic), still connected.
    t.etcd.kill(0);
    std::thread::sleep(Duration::from_secs(TTL + 2));
    for (i, d) in t.daemons.iter().enumerate() {
        wait_for(
            &format!("node-{i} connected after a member died"),
            Duration::from_secs(10),
            || Ok(status(d)?["cluster"]["connected"] == true),
        )?;
        assert_eq!(subnet(d)?, subnets[i]);
        assert_eq!(etcd_peers(d)?.len(), 2, "node-{i}");
    }
    assert_eq!(tcp_probe(&pa_netns, SocketAddr::new(pb_ip, 7001))?, pa_ip);
    t.etcd.restart(0)?;

    // kill -9 node-2: its routes go from the others within TTL + 2 s; back when it returns.
    t.daemons[2].kill9();
    let killed = Instant::now();
    let c_route = format!("{} via {}", subnets[2], t.addresses[2]);
    wait_for(
        "node-2's route gone on node-0 and node-1",
        Duration::from_secs(TTL + 2),
        || Ok(!routes(&t.nodes[0])?.contains(&c_route) && !routes(&t.nodes[1])?.contains(&c_route)),
    )?;
    eprintln!(
        "node-2's routes gone after {:?} (TTL {TTL} s)",
        killed.elapsed()
    );
    t.daemons[2].spawn()?;
    assert_eq!(
        subnet(&t.daemons[2])?,
        subnets[2],
        "node-2 gets its subnet back"
    );
    wait_for(
        "node-2's route back on node-0",
        Duration::from_secs(10),
        || Ok(routes(&t.nodes[0])?.contains(&c_route)),
    )?;

    // All members down: the node keeps serving and says so; new pods from its subnet.
    for i in 0..3 {
        t.etcd.kill(i);
    }
    wait_for(
        "node-0 reports connected: false",
        Duration::from_secs(10),
        || Ok(status(&t.daemons[0])?["cluster"]["connected"] == false),
    )?;
    assert_eq!(
        tcp_probe(&pa_netns, SocketAddr::new(pb_ip, 7001))?,
        pa_ip,
        "old routes keep working"
    );
    let pa2 = t.daemons[0].create_pod("pa2", &[])?;
    let pa2_ip = pod_ip(&pa2)?;
    let net: ipnet::Ipv4Net = subnets[0].parse()?;
    assert!(
        matches!(pa2_ip, IpAddr::V4(v4) if net.contains(&v4)),
        "{pa2_ip} in {net}"
    );
    assert_eq!(
        etcd_peers(&t.daemons[0])?.len(),
        2,
        "peers kept while etcd is down"
    );
    // A node restarted while etcd is down serves with its recorded subnet and peers.
    t.daemons[1].stop()?;
    t.daemons[1].spawn()?;
    assert_eq!(subnet(&t.daemons[1])?, subnets[1]);
    assert_eq!(status(&t.daemons[1])?["cluster"]["connected"], false);
    assert_eq!(etcd_peers(&t.daemons[1])?.len(), 2);
    for i in 0..3 {
        t.etcd.restart(i)?;
    }
    t.etcd.wait_ready(&t.underlay, Duration::from_secs(30))?;
    for (i, d) in t.daemons.iter().enumerate() {
        wait_for(
            &format!("node-{i} reconnected"),
            Duration::from_secs(20),
            || Ok(status(d)?["cluster"]["connected"] == true),
        )?;
        assert_eq!(subnet(d)?, subnets[i]);
    }
    t.all_peered()?;
    assert_eq!(tcp_probe(&pa_netns, SocketAddr::new(pb_ip, 7001))?, pa_ip);
    Ok(())
}

/// A node away longer than its lease whose subnet another node took meanwhile refuses new
/// pods, naming both nodes, and admits them again once the subnet is free.
#[test]
fn a_taken_subnet_refuses_new_pods() -> Result<()> {
    if !require_root("a_taken_subnet_refuses_new_pods") {
        return Ok(());
    }
    let underlay = Underlay::new("192.168.91")?;
    let etcd = EtcdCluster::start(&underlay, 1, 1, None)?;
    let node = Node::new()?;
    let address = underlay.attach(&node, 11)?;
    let mut d = start_node(&node, &etcd, "node-a", &address)?;
    let mine: ipnet::Ipv4Net = subnet(&d)?.parse()?;
    d.create_pod("p1", &[])?;
    d.kill9();
    // The lease expires: the key goes. An intruder takes the subnet.
    let body = cluster_body(&etcd, "intruder", "192.168.91.99", "");
    let config = cluster_config(&body)?;
    let hub = underlay.hub().netns_path();
    std::thread::sleep(Duration::from_secs(TTL + 1));
    let config2 = config.clone();
    let claim = block_on_in(&hub, move || async move {
        let (mut etcd, _) =
            netns_holder::cluster::etcd::EtcdBackend::connect(&config2, "intruder", 0).await?;
        let mut claim = None;
        for _ in 0..40 {
            etcd.grant(0, 60).await?;
            let record = SubnetRecord {
                node: "intruder".into(),
                address: "192.168.91.99".parse()?,
                pod_cidr_v6: None,
                address_v6: None,
            };
            let c = etcd.take_subnet(mine, &record).await?;
            if c == netns_holder_core::cluster::Claim::Free {
                claim = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(claim)
    })?;
    ensure!(claim.is_some(), "the intruder could not take {mine}");
    d.spawn()?;
    wait_for("the conflict reported", Duration::from_secs(10), || {
        Ok(status(&d)?["cluster"]["conflict"].is_string())
    })?;
    let s = status(&d)?;
    let conflict = s["cluster"]["conflict"].as_str().unwrap();
    assert!(
        conflict.contains("node-a")
            && conflict.contains("intruder")
            && conflict.contains(&mine.to_string()),
        "{conflict}"
    );
    let out = d.cli(&["pod", "create", "p2"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a new pod must be refused");
    assert!(err.contains("node-a") && err.contains("intruder"), "{err}");
    assert!(d.log().contains("CLUSTER SUBNET CONFLICT"), "{}", d.log());
    // The intruder leaves: the subnet is node-a's again, new pods are admitted. A node whose
    // address is on no network node-a is connected to joins: reported, not routed.
    let far: ipnet::Ipv4Net = "10.100.200.0/24".parse()?;
    block_on_in(&hub, move || async move {
        let (mut etcd, _) =
            netns_holder::cluster::etcd::EtcdBackend::connect(&config, "intruder", 0).await?;
        etcd.delete_subnet(mine).await?;
        etcd.grant(0, 60).await?;
        let record = SubnetRecord {
            node: "far".into(),
            address: "198.51.100.7".parse()?,
            pod_cidr_v6: None,
            address_v6: None,
        };
        etcd.put(far, &record).await?;
        Ok(())
    })?;
    wait_for(
        "the off-link peer reported",
        Duration::from_secs(10),
        || {
            Ok(status(&d)?["cluster"]["unrouted"]
                .as_array()
                .is_some_and(|u| !u.is_empty()))
        },
    )?;
    let s = status(&d)?;
    let unrouted = &s["cluster"]["unrouted"][0];
    assert_eq!(unrouted["node"], "far", "{s}");
    assert_eq!(unrouted["pod_cidr"], far.to_string(), "{s}");
    let reason = unrouted["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("not on a network directly connected"),
        "{s}"
    );
    assert!(
        !routes(&node)?
            .iter()
            .any(|r| r.starts_with(&far.to_string())),
        "an off-link peer is not routed"
    );
    assert!(d.log().contains("peer not routed"), "{}", d.log());
    wait_for("the conflict cleared", Duration::from_secs(10), || {
        Ok(status(&d)?["cluster"]["conflict"].is_null())
    })?;
    d.create_pod("p2", &[])?;
    Ok(())
}

/// 50 nodes starting at once (the daemon's own claim code, as 50 concurrent clients) get 50
/// distinct subnets of a 64-subnet cluster CIDR; then it fills up and says so.
#[test]
fn fifty_nodes_at_once_get_distinct_subnets() -> Result<()> {
    if !require_root("fifty_nodes_at_once_get_distinct_subnets") {
        return Ok(());
    }
    let underlay = Underlay::new("192.168.92")?;
    let etcd = EtcdCluster::start(&underlay, 3, 1, None)?;
    let body = format!(
        "backend = \"etcd\"\n{}cluster_cidr_v4 = \"10.100.0.0/18\"\nnode_prefix_v4 = 24\nlease_ttl_seconds = 30\n",
        etcd.endpoints_line()
    );
    let config = cluster_config(&body)?;
    let hub = underlay.hub().netns_path();
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let (taken, listed, full) = block_on_in(&hub, move || async move {
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let config = config.clone();
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let address: IpAddr = format!("192.168.93.{}", i + 1).parse().unwrap();
                netns_holder::cluster::take_new(
                    &config,
                    &format!("sim-{i}"),
                    address,
                    None,
                    i as usize,
                    &log,
                )
                .await
                .map(|(slot, backend, _)| (slot, backend))
            }));
            if i == 49 {
                // The first 50 at once; the rest right after.
                tokio::task::yield_now().await;
            }
        }
        let mut taken = Vec::new();
        let mut backends = Vec::new();
        for t in tasks {
            let (slot, backend) = t.await??;
            taken.push(slot);
            backends.push(backend);
        }
        let full = netns_holder::cluster::take_new(
            &config,
            "sim-65",
            "192.168.93.99".parse()?,
            None,
            0,
            &log,
        )
        .await
        .err()
        .map(|e| e.to_string());
        let (records, _) = backends[0].list().await?;
        Ok((taken, records, full))
    })?;
    let distinct: BTreeSet<u32> = taken.iter().copied().collect();
    assert_eq!(distinct.len(), 64, "{taken:?}");
    assert_eq!(listed.len(), 64);
    let nodes: BTreeSet<&String> = listed.values().map(|r| &r.node).collect();
    assert_eq!(nodes.len(), 64);
    let full = full.context("a 65th node must find the cluster full")?;
    assert!(
        full.contains("every /24 subnet of 10.100.0.0/18 is taken"),
        "{full}"
    );
    Ok(())
}

/// TLS with client certificates made by the test: a node with the right certificate gets a
/// subnet; one with a certificate of another CA is refused, and says so clearly.
#[test]
fn tls_with_client_certificates() -> Result<()> {
    if !require_root("tls_with_client_certificates") {
        return Ok(());
    }
    let underlay = Underlay::new("192.168.94")?;
    let tls = TlsFiles::new(&[underlay.address(1)])?;
    let etcd = EtcdCluster::start(&underlay, 1, 1, Some(&tls))?;
    assert!(etcd.endpoints()[0].starts_with("https://"));
    let node = Node::new()?;
    let address = underlay.attach(&node, 11)?;
    let good = cluster_body(&etcd, "node-a", &address, &tls.cluster_lines("client"));
    let mut d = Daemon::start(
        &node,
        DaemonOptions {
            cluster: Some(good.clone()),
            ..DaemonOptions::default()
        },
    )?;
    let s = status(&d)?;
    assert_eq!(s["cluster"]["connected"], true, "{s}");
    // The wrong certificate, straight through the client: a clear error.
    let hub = underlay.hub().netns_path();
    let wrong = cluster_config(&cluster_body(
        &etcd,
        "node-a",
        &address,
        &tls.cluster_lines("wrong"),
    ))?;
    let err = block_on_in(&hub, move || async move {
        Ok(
            netns_holder::cluster::etcd::EtcdBackend::connect(&wrong, "node-a", 0)
                .await
                .err()
                .map(|e| e.to_string()),
        )
    })?
    .context("a certificate of another CA must be refused")?;
    assert!(err.contains(&etcd.endpoints()[0]), "{err}");
    eprintln!("wrong client certificate: {err}");
    assert!(
        err.contains("refused the client certificate") && err.contains("wrong.pem"),
        "{err}"
    );
    // etcd's side of it.
    assert!(
        etcd.log(0).contains("rejected connection"),
        "{}",
        etcd.log(0)
    );
    // A client without a certificate at all is refused too.
    let none = cluster_config(&cluster_body(
        &etcd,
        "node-a",
        &address,
        &format!("etcd_ca = \"{}\"\n", tls.path("ca.pem").display()),
    ))?;
    let err = block_on_in(&hub, move || async move {
        Ok(
            netns_holder::cluster::etcd::EtcdBackend::connect(&none, "node-a", 0)
                .await
                .err()
                .map(|e| e.to_string()),
        )
    })?
    .context("a client without a certificate must be refused")?;
    assert!(err.contains("set etcd_cert and etcd_key"), "{err}");
    // A CA that does not sign the members' certificate: the node refuses the server.
    let lines = tls.cluster_lines("client").replace("ca.pem", "otherca.pem");
    let other_ca = cluster_config(&cluster_body(&etcd, "node-a", &address, &lines))?;
    let err = block_on_in(&hub, move || async move {
        Ok(
            netns_holder::cluster::etcd::EtcdBackend::connect(&other_ca, "node-a", 0)
                .await
                .err()
                .map(|e| e.to_string()),
        )
    })?
    .context("a server certificate of another CA must be refused")?;
    assert!(
        err.contains("not signed by etcd_ca") && err.contains("otherca.pem"),
        "{err}"
    );
    // The daemon with the wrong certificate: it serves with its recorded subnet, reports
    // connected: false and logs why.
    d.stop()?;
    let config = std::fs::read_to_string(d.config_path())?;
    std::fs::write(
        d.config_path(),
        config
            .replace("client.pem", "wrong.pem")
            .replace("client.key", "wrong.key"),
    )?;
    d.spawn()?;
    let s = status(&d)?;
    assert_eq!(s["cluster"]["connected"], false, "{s}");
    wait_for(
        "the daemon logs the refusal",
        Duration::from_secs(10),
        || Ok(d.log().contains("cluster: no etcd") && d.log().contains(&etcd.endpoints()[0])),
    )?;
    Ok(())
}

/// Dual-stack: each node also gets the IPv6 subnet of its slot, publishes its IPv6 address
/// (that of its default IPv6 route's interface), and pods reach each other over IPv6 with
/// their own addresses.
#[test]
fn dual_stack_nodes() -> Result<()> {
    if !require_root("dual_stack_nodes") {
        return Ok(());
    }
    let underlay = Underlay::new("192.168.96")?;
    let etcd = EtcdCluster::start(&underlay, 1, 1, None)?;
    let mut nodes = Vec::new();
    let mut daemons = Vec::new();
    for i in 0..2u8 {
        let node = Node::new()?;
        let address = underlay.attach(&node, 11 + i)?;
        node.run(&[
            "ip",
            "addr",
            "add",
            &format!("fd96::{}/64", 11 + i),
            "dev",
            "u0",
            "nodad",
        ])?;
        node.run(&["ip", "-6", "route", "add", "default", "dev", "u0"])?;
        let body = cluster_body(
            &etcd,
            &format!("node-{i}"),
            &address,
            "cluster_cidr_v6 = \"fd00:100::/56\"\nnode_prefix_v6 = 64\n",
        );
        daemons.push(Daemon::start(
            &node,
            DaemonOptions {
                cluster: Some(body),
                ..DaemonOptions::default()
            },
        )?);
        nodes.push(node);
    }
    let v6: Vec<String> = daemons
        .iter()
        .map(|d| {
            Ok(status(d)?["cluster"]["pod_cidr_v6"]
                .as_str()
                .context("pod_cidr_v6")?
                .to_string())
        })
        .collect::<Result<_>>()?;
    assert_ne!(v6[0], v6[1]);
    assert!(
        v6.iter()
            .all(|s| s.starts_with("fd00:100:0:") && s.ends_with("::/64")),
        "{v6:?}"
    );
    for (i, d) in daemons.iter().enumerate() {
        let other = 1 - i;
        let want = format!("node-{other} {} fd96::{}", v6[other], 11 + other);
        wait_for(
            &format!("node-{i} routes node-{other}'s IPv6 subnet"),
            Duration::from_secs(10),
            || Ok(etcd_peers(d)?.contains(&want)),
        )?;
    }
    let pa = daemons[0].create_pod("pa", &[])?;
    let pb = daemons[1].create_pod("pb", &[])?;
    let v6_of = |v: &Value| -> Result<IpAddr> {
        v["ips"]
            .as_array()
            .context("ips")?
            .iter()
            .filter_map(|c| c.as_str()?.split('/').next()?.parse().ok())
            .find(IpAddr::is_ipv6)
            .context("no v6 address")
    };
    let (pa6, pb6) = (v6_of(&pa)?, v6_of(&pb)?);
    let pb_netns = PathBuf::from(pb["netns"].as_str().context("netns")?);
    let pa_netns = PathBuf::from(pa["netns"].as_str().context("netns")?);
    let _echo = Echo::start(&pb_netns, Proto::Tcp, 7003)?;
    assert_eq!(
        tcp_probe(&pa_netns, SocketAddr::new(pb6, 7003))?,
        pa6,
        "IPv6 pod-to-pod keeps the source"
    );
    drop(daemons);
    drop(etcd);
    Ok(())
}
