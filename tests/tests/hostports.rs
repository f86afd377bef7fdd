//! Host ports end to end: a real daemon in a throwaway node namespace, an outside client in
//! a second namespace joined to the node by an underlay veth, pods with `--publish`, and
//! real TCP and UDP traffic (echo servers report the source address they see).
//!
//! Covered: from the client to a node address (source preserved); from the node itself to
//! 127.0.0.1, to its underlay address and to the bridge address; hairpin (a pod to its own
//! host port) and another local pod to it; a `host_ip`-bound mapping answering only on that
//! address; IPv6; conflicts with another pod and with a listening socket on the node (refused,
//! nothing changes); removing a pod removes exactly its elements; `nft flush ruleset`
//! followed by `check`, `reload` and a daemon restart; UDP conntrack entries flushed on
//! create and on remove.
//!
//! Addresses are private ranges inside the throwaway namespaces only; nothing leaves the
//! machine. Every object is uniquely named and removed on drop, also on failure.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, UdpClient, tcp_probe};
use nh_tests::require_root;

/// The underlay between node and client: node .1, client .2.
const NODE_IP: &str = "192.168.71.1";
const CLIENT_IP: &str = "192.168.71.2";
const NODE_IP6: &str = "fd71::1";
const CLIENT_IP6: &str = "fd71::2";

/// A node with a daemon and an outside client on the underlay.
struct Site {
    daemon: Daemon,
    client: Node,
    node: Node,
}

impl Site {
    fn new(v4_cidr: &str, v6_cidr: Option<&str>) -> Result<Self> {
        let node = Node::new()?;
        let client = Node::new()?;
        node.veth_to(
            &client,
            ("u0", &[&format!("{NODE_IP}/24"), &format!("{NODE_IP6}/64")]),
            (
                "u0",
                &[&format!("{CLIENT_IP}/24"), &format!("{CLIENT_IP6}/64")],
            ),
        )?;
        let daemon = Daemon::start(
            &node,
            DaemonOptions {
                pod_cidr_v4: v4_cidr.into(),
                pod_cidr_v6: v6_cidr.map(Into::into),
                ..DaemonOptions::default()
            },
        )?;
        Ok(Self {
            daemon,
            client,
            node,
        })
    }

    fn create(&self, name: &str, publish: &[&str]) -> Result<Pod> {
        let mut extra = Vec::new();
        for p in publish {
            extra.extend(["--publish", p]);
        }
        Pod::from_json(&self.daemon.create_pod(name, &extra)?)
    }

    /// `pod create` that must fail; returns stderr.
    fn create_fails(&self, name: &str, publish: &[&str]) -> Result<String> {
        let mut args = vec!["pod", "create", name];
        for p in publish {
            args.extend(["--publish", p]);
        }
        let out = self.daemon.cli(&args)?;
        ensure!(
            !out.status.success(),
            "pod create {name} {publish:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The elements of our maps, as nft prints them (`KEY : VALUE`), sorted.
    fn elements(&self) -> Result<Vec<String>> {
        let out = self
            .node
            .stdout(&["nft", "-j", "list", "table", "inet", "netns_holder"])?;
        let json: Value = serde_json::from_str(&out)?;
        let mut found = Vec::new();
        for item in json["nftables"].as_array().into_iter().flatten() {
            for elem in item["map"]["elem"].as_array().into_iter().flatten() {
                found.push(elem.to_string());
            }
        }
        found.sort();
        Ok(found)
    }

    fn node_netns(&self) -> PathBuf {
        self.node.netns_path()
    }
}

struct Pod {
    netns: PathBuf,
    ips: Vec<IpAddr>,
}

impl Pod {
    fn from_json(v: &Value) -> Result<Self> {
        Ok(Self {
            netns: PathBuf::from(v["netns"].as_str().context("netns")?),
            ips: v["ips"]
                .as_array()
                .context("ips")?
                .iter()
                .map(|c| {
                    let text = c.as_str().context("ip")?;
                    Ok(text.split('/').next().unwrap_or(text).parse()?)
                })
                .collect::<Result<_>>()?,
        })
    }

    fn v4(&self) -> IpAddr {
        *self.ips.iter().find(|ip| ip.is_ipv4()).expect("v4")
    }

    fn v6(&self) -> IpAddr {
        *self.ips.iter().find(|ip| ip.is_ipv6()).expect("v6")
    }
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP probe that must be refused or time out.
fn tcp_fails(netns: &std::path::Path, to: SocketAddr) -> Result<()> {
    match tcp_probe(netns, to) {
        Err(_) => Ok(()),
        Ok(peer) => anyhow::bail!("{to} answered from {} (peer {peer})", netns.display()),
    }
}

#[test]
fn host_ports_reach_the_pod_from_the_client_the_node_and_the_pods() -> Result<()> {
    if !require_root("host_ports_reach_the_pod_from_the_client_the_node_and_the_pods") {
        return Ok(());
    }
    let site = Site::new("10.244.10.0/24", Some("fd00:10:244:a::/64"))?;
    let gateway = ip("10.244.10.1");
    let web = site.create("web", &["8080:80", "5353:53/udp", "192.168.71.1:9090:80"])?;
    let _tcp = Echo::start(&web.netns, Proto::Tcp, 80)?;
    let _udp = Echo::start(&web.netns, Proto::Udp, 53)?;
    let client = site.client.netns_path();
    let node = site.node_netns();

    // From another host: the source address is preserved.
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8080))?, ip(CLIENT_IP));
    assert_eq!(tcp_probe(&client, at(NODE_IP6, 8080))?, ip(CLIENT_IP6));
    let udp = UdpClient::new(&client, false)?;
    assert_eq!(
        udp.probe(at(NODE_IP, 5353), Duration::from_secs(5))?,
        ip(CLIENT_IP)
    );
    assert_eq!(
        udp.probe(at(NODE_IP6, 5353), Duration::from_secs(5))?,
        ip(CLIENT_IP6)
    );

    // From the node itself: localhost (masqueraded to the bridge address), its underlay
    // address and the bridge address (both keep the node's own source).
    assert_eq!(tcp_probe(&node, at("127.0.0.1", 8080))?, gateway);
    assert_eq!(tcp_probe(&node, at(NODE_IP, 8080))?, ip(NODE_IP));
    assert_eq!(tcp_probe(&node, at("10.244.10.1", 8080))?, gateway);
    assert_eq!(tcp_probe(&node, at(NODE_IP6, 8080))?, ip(NODE_IP6));
    let udp_node = UdpClient::new(&node, true)?;
    assert_eq!(
        udp_node.probe(at("127.0.0.1", 5353), Duration::from_secs(5))?,
        gateway
    );

    // Hairpin: the pod reaches itself through the node (masqueraded, else it would see a
    // packet from its own address); another pod of this node too.
    assert_eq!(tcp_probe(&web.netns, at(NODE_IP, 8080))?, gateway);
    assert_eq!(tcp_probe(&web.netns, at("10.244.10.1", 8080))?, gateway);
    assert_eq!(
        tcp_probe(&web.netns, at(NODE_IP6, 8080))?,
        ip("fd00:10:244:a::1")
    );
    let other = site.create("other", &[])?;
    assert_eq!(tcp_probe(&other.netns, at(NODE_IP, 8080))?, gateway);
    // Pod to pod directly: no NAT at all.
    assert_eq!(
        tcp_probe(&other.netns, SocketAddr::new(web.v4(), 80))?,
        other.v4()
    );
    assert_eq!(
        tcp_probe(&other.netns, SocketAddr::new(web.v6(), 80))?,
        other.v6()
    );

    // The host_ip-bound mapping answers on that address only.
    assert_eq!(tcp_probe(&client, at(NODE_IP, 9090))?, ip(CLIENT_IP));
    tcp_fails(&node, at("127.0.0.1", 9090))?;
    tcp_fails(&node, at("10.244.10.1", 9090))?;
    tcp_fails(&client, at(NODE_IP6, 9090))?;

    // Pods cannot use route_localnet to reach the node's localhost.
    let node_local = Echo::start(&node, Proto::Tcp, 7777)?;
    tcp_fails(&web.netns, at("127.0.0.1", 7777))?;
    drop(node_local);

    let check = site.daemon.cli_json(&["check"])?;
    assert_eq!(check["drift"], false, "{check}");
    Ok(())
}

#[test]
fn conflicts_are_refused_and_removing_a_pod_removes_exactly_its_rules() -> Result<()> {
    if !require_root("conflicts_are_refused_and_removing_a_pod_removes_exactly_its_rules") {
        return Ok(());
    }
    let site = Site::new("10.244.11.0/24", None)?;
    let client = site.client.netns_path();
    let a = site.create("a", &["8080:80", "9000-9001:9000-9001/udp"])?;
    let b = site.create("b", &["8081:80"])?;
    let _ea = Echo::start(&a.netns, Proto::Tcp, 80)?;
    let _eb = Echo::start(&b.netns, Proto::Tcp, 80)?;
    let before = site.elements()?;
    assert_eq!(before.len(), 4, "{before:?}");

    // Taken by another pod: refused, naming the port and its owner.
    let err = site.create_fails("c", &["8080:8080"])?;
    assert!(
        err.contains("host port tcp 8080 -> 8080 is already taken by pod a (tcp 8080 -> 80)"),
        "{err}"
    );
    let err = site.create_fails("c", &["192.168.71.1:9001:53/udp"])?;
    assert!(
        err.contains("already taken by pod a (udp 9001 -> 9001)"),
        "{err}"
    );
    // Held by a listening socket on the node.
    let holder = in_node_listener(&site.node_netns(), 7070)?;
    let err = site.create_fails("c", &["7070:80"])?;
    assert!(
        err.contains(&format!(
            "host port tcp 7070 -> 80 is already taken by a listening TCP socket on 0.0.0.0:7070 of pid {} (",
            std::process::id()
        )),
        "{err}"
    );
    drop(holder);
    // Nothing changed for anybody.
    assert_eq!(site.elements()?, before);
    let pods = site.daemon.cli_json(&["pod", "ls", "--json"])?;
    assert_eq!(pods.as_array().map(Vec::len), Some(2), "{pods}");
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8080))?, ip(CLIENT_IP));
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8081))?, ip(CLIENT_IP));

    // Removing a takes exactly its elements; b keeps working; a's port is free again.
    site.daemon.remove_pod("a")?;
    let after = site.elements()?;
    assert_eq!(after.len(), 1, "{after:?}");
    assert!(after[0].contains("8081"), "{after:?}");
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8081))?, ip(CLIENT_IP));
    tcp_fails(&client, at(NODE_IP, 8080))?;
    let c = site.create("c", &["8080:81"])?;
    let _ec = Echo::start(&c.netns, Proto::Tcp, 81)?;
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8080))?, ip(CLIENT_IP));
    Ok(())
}

/// A TCP listener on 0.0.0.0:`port` in the node namespace, held by this process.
fn in_node_listener(node: &std::path::Path, port: u16) -> Result<std::net::TcpListener> {
    nh_tests::node::in_netns_thread(node, move || {
        Ok(std::net::TcpListener::bind(("0.0.0.0", port))?)
    })
}

#[test]
fn a_flushed_ruleset_is_reported_and_restored_by_reload_and_by_a_restart() -> Result<()> {
    if !require_root("a_flushed_ruleset_is_reported_and_restored_by_reload_and_by_a_restart") {
        return Ok(());
    }
    let mut site = Site::new("10.244.12.0/24", None)?;
    let client = site.client.netns_path();
    let web = site.create("web", &["8080:80"])?;
    let _echo = Echo::start(&web.netns, Proto::Tcp, 80)?;
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8080))?, ip(CLIENT_IP));

    site.node.run(&["nft", "flush", "ruleset"])?;
    tcp_fails(&client, at(NODE_IP, 8080))?;
    let out = site.daemon.cli(&["check"])?;
    assert_eq!(out.status.code(), Some(1));
    let check: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        check["findings"][0]["object"],
        "nftables table inet netns_holder"
    );
    assert_eq!(check["findings"][0]["problem"], "missing");

    let reload = site.daemon.cli_json(&["reload"])?;
    assert_eq!(reload["host_port_elements"], 1, "{reload}");
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8080))?, ip(CLIENT_IP));
    assert_eq!(site.daemon.cli_json(&["check"])?["drift"], false);

    // A foreign rule in our table is reported and removed by `check --repair`.
    site.node.run(&[
        "nft",
        "add",
        "rule",
        "inet",
        "netns_holder",
        "hostports",
        "tcp",
        "dport",
        "22",
        "accept",
    ])?;
    let out = site.daemon.cli(&["check"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("tcp dport 22 accept"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let repaired = site.daemon.cli_json(&["check", "--repair"])?;
    assert_eq!(repaired["remaining"], serde_json::json!([]), "{repaired}");

    // Flushed while the daemon is down: a restart re-creates the table from the state.
    site.daemon.kill9();
    site.node.run(&["nft", "flush", "ruleset"])?;
    site.daemon.spawn()?;
    assert_eq!(site.elements()?.len(), 1);
    assert_eq!(tcp_probe(&client, at(NODE_IP, 8080))?, ip(CLIENT_IP));
    Ok(())
}

/// UDP conntrack entries of the host port and of the pod.
fn conntrack_entries(node: &Node, filter: &[&str]) -> Result<Vec<String>> {
    let mut argv = vec!["conntrack", "-L", "-p", "udp"];
    argv.extend_from_slice(filter);
    let out = node.command(&argv).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn udp_conntrack_entries_are_flushed_on_create_and_on_remove() -> Result<()> {
    if !require_root("udp_conntrack_entries_are_flushed_on_create_and_on_remove") {
        return Ok(());
    }
    let site = Site::new("10.244.13.0/24", None)?;
    let client = UdpClient::new(&site.client.netns_path(), true)?;
    let sport = client.port().to_string();

    // The client talks to the port before it is published: an entry to the node itself.
    client.send(at(NODE_IP, 5300))?;
    let wait = |filter: &[&str], want: bool| -> Result<Vec<String>> {
        let mut entries = Vec::new();
        for _ in 0..50 {
            entries = conntrack_entries(&site.node, filter)?;
            if entries.is_empty() != want {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(entries)
    };
    let stale = wait(
        &["--orig-port-dst", "5300", "--orig-port-src", &sport],
        true,
    )?;
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(stale[0].contains(&format!("dst={NODE_IP}")), "{stale:?}");
    assert!(!stale[0].contains("10.244.13."), "not NATed: {stale:?}");

    // Publishing flushes it, so the same flow (same source port) now reaches the pod.
    let dns = site.create("dns", &["5300:53/udp"])?;
    let _echo = Echo::start(&dns.netns, Proto::Udp, 53)?;
    let left = conntrack_entries(&site.node, &["--orig-port-dst", "5300"])?;
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(
        client.probe(at(NODE_IP, 5300), Duration::from_secs(5))?,
        ip(CLIENT_IP)
    );
    let pod_ip = dns.v4().to_string();
    let natted = conntrack_entries(&site.node, &["--reply-src", &pod_ip])?;
    assert_eq!(natted.len(), 1, "{natted:?}");

    // Removing the pod flushes the entries of its address.
    site.daemon.remove_pod("dns")?;
    let left = conntrack_entries(&site.node, &["--reply-src", &pod_ip])?;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}
