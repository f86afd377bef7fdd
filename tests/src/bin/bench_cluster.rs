//! `make bench` part: cluster mode on a real etcd (Debian's etcd-server, one member in a
//! throwaway namespace on an underlay bridge) and one netns-holder node in cluster mode.
//!
//! * Lease to route: another node's subnet key is written (as a node starting would) and the
//!   time until the route to it is in the node's table is measured, `BENCH_CLUSTER_ROUNDS`
//!   (default 30) times; the time from the key's removal to the route's removal too.
//!   Target: median <= 1 s.
//! * 1000 peers: `BENCH_CLUSTER_PEERS` (default 1000) keys written directly under one
//!   lease (32 writes in flight); the time from the first write to every route installed,
//!   then from the lease's revocation (every key gone at once) to every route removed;
//!   3 rounds. Target: install <= 2 s. Side by side in the same run, the reference: the
//!   same routes added and deleted with `ip -batch` (iproute2) in a namespace of their own,
//!   which is the kernel's cost alone.
//!
//! Routes are watched in /proc/thread-self/net/route from a thread inside the node
//! namespace (every 1 ms); the writes to etcd go from the same thread (the node reaches the
//! member over the underlay).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use ipnet::Ipv4Net;
use netns_holder::cluster::etcd::EtcdBackend;
use netns_holder_core::cluster::{ClusterConfig, SubnetRecord};
use nh_tests::bench::{Series, env_count, ms};
use nh_tests::etcd::{EtcdCluster, Underlay, block_on_in, cluster_config};
use nh_tests::node::{Daemon, DaemonOptions, Node};
use nh_tests::{is_root, run_ok};

const CLUSTER_CIDR: &str = "10.112.0.0/12";
const PEER_NET: &str = "10.250.0.1/16";

/// IPv4 routes with a gateway in the calling thread's namespace whose destination is in
/// `within`.
fn gateway_routes(within: Ipv4Net) -> Result<BTreeSet<Ipv4Net>> {
    let text = std::fs::read_to_string("/proc/thread-self/net/route")?;
    let mut out = BTreeSet::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        // The kernel prints the address as it lies in memory (network order) read as a
        // native u32: its native bytes are the address.
        let hex = |s: &str| u32::from_str_radix(s, 16).map(|v| Ipv4Addr::from(v.to_ne_bytes()));
        let (Ok(dst), Ok(gw), Ok(mask)) = (hex(f[1]), hex(f[2]), hex(f[7])) else {
            continue;
        };
        if gw.is_unspecified() {
            continue;
        }
        let prefix = u32::from(mask).count_ones() as u8;
        if let Ok(net) = Ipv4Net::new(dst, prefix)
            && within.contains(&net.network())
        {
            out.insert(net);
        }
    }
    Ok(out)
}

/// Waits (polling every 1 ms, up to `timeout`) until `check` holds for the routes; async,
/// so the etcd client's connection keeps being driven meanwhile.
async fn wait_routes(
    within: Ipv4Net,
    timeout: Duration,
    mut check: impl FnMut(&BTreeSet<Ipv4Net>) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check(&gateway_routes(within)?) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "routes not as expected within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn record(node: String, i: u32) -> SubnetRecord {
    SubnetRecord {
        node,
        address: Ipv4Addr::new(10, 250, (2 + i / 250) as u8, (2 + i % 250) as u8).into(),
        pod_cidr_v6: None,
        address_v6: None,
    }
}

struct Results {
    lease_to_route: Series,
    removal_to_gone: Series,
    install_all: Series,
    writes: Series,
    remove_all: Series,
}

fn run_ours(
    config: ClusterConfig,
    node_netns: &Path,
    rounds: usize,
    peers: u32,
) -> Result<Results> {
    let within: Ipv4Net = CLUSTER_CIDR.parse()?;
    block_on_in(node_netns, move || async move {
        let (mut etcd, _) = EtcdBackend::connect(&config, "bench-writer", 0).await?;
        let mut results = Results {
            lease_to_route: Series::default(),
            removal_to_gone: Series::default(),
            install_all: Series::default(),
            writes: Series::default(),
            remove_all: Series::default(),
        };
        etcd.grant(0, 60).await?;
        for i in 0..rounds as u32 {
            let subnet = config.subnet_v4(3000 + i).context("slot")?;
            let start = Instant::now();
            etcd.put(subnet, &record(format!("sim-{i}"), i)).await?;
            wait_routes(within, Duration::from_secs(10), |r| r.contains(&subnet)).await?;
            results.lease_to_route.0.push(start.elapsed());
            let start = Instant::now();
            etcd.delete_subnet(subnet).await?;
            wait_routes(within, Duration::from_secs(10), |r| !r.contains(&subnet)).await?;
            results.removal_to_gone.0.push(start.elapsed());
        }
        etcd.revoke().await?;
        for _ in 0..3 {
            etcd.grant(0, 120).await?;
            let start = Instant::now();
            let writer = etcd.clone();
            let writes: Vec<Result<()>> = futures::stream::iter(0..peers)
                .map(|i| {
                    let mut w = writer.clone();
                    let subnet = config.subnet_v4(i).expect("slot");
                    async move {
                        w.put(subnet, &record(format!("peer-{i}"), i)).await?;
                        Ok(())
                    }
                })
                .buffer_unordered(32)
                .collect()
                .await;
            for w in writes {
                w?;
            }
            results.writes.0.push(start.elapsed());
            wait_routes(within, Duration::from_secs(60), |r| {
                r.len() >= peers as usize
            })
            .await?;
            results.install_all.0.push(start.elapsed());
            let start = Instant::now();
            etcd.revoke().await?;
            wait_routes(within, Duration::from_secs(60), BTreeSet::is_empty).await?;
            results.remove_all.0.push(start.elapsed());
        }
        Ok(results)
    })
}

/// The reference: the same routes with `ip -batch` in a namespace of its own.
fn run_reference(peers: u32, rounds: usize) -> Result<(Series, Series)> {
    let node = Node::new()?;
    node.add_underlay("u0", &[PEER_NET])?;
    let cidr: Ipv4Net = CLUSTER_CIDR.parse()?;
    let subnets: Vec<Ipv4Net> = cidr.subnets(24)?.take(peers as usize).collect();
    let batch = |verb: &str| -> String {
        subnets
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let via = record(String::new(), i as u32).address;
                format!("route {verb} {s} via {via} proto 78\n")
            })
            .collect()
    };
    let (add, del) = (batch("add"), batch("del"));
    let mut adds = Series::default();
    let mut dels = Series::default();
    for _ in 0..rounds {
        for (text, series) in [(&add, &mut adds), (&del, &mut dels)] {
            let start = Instant::now();
            let mut child = node
                .command(&["ip", "-batch", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()?;
            child
                .stdin
                .take()
                .context("stdin")?
                .write_all(text.as_bytes())?;
            ensure!(child.wait()?.success(), "ip -batch failed");
            series.0.push(start.elapsed());
        }
    }
    Ok((adds, dels))
}

fn main() -> Result<()> {
    if !is_root() {
        eprintln!("*** SKIPPED bench_cluster: needs root (network namespaces, etcd). ***");
        return Ok(());
    }
    let rounds = env_count("BENCH_CLUSTER_ROUNDS", 30);
    let peers = env_count("BENCH_CLUSTER_PEERS", 1000) as u32;
    let underlay = Underlay::new("192.168.95")?;
    let etcd = EtcdCluster::start(&underlay, 1, 1, None)?;
    let node = Node::new()?;
    let address = underlay.attach(&node, 11)?;
    run_ok(&mut node.command(&["ip", "addr", "add", PEER_NET, "dev", "u0"]))?;
    let body = format!(
        "backend = \"etcd\"\n{}cluster_cidr_v4 = \"{CLUSTER_CIDR}\"\nnode_prefix_v4 = 24\n\
         node_name = \"bench-node\"\nnode_address = \"{address}\"\nlease_ttl_seconds = 5\n",
        etcd.endpoints_line()
    );
    let config = cluster_config(&body)?;
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            cluster: Some(body),
            ..DaemonOptions::default()
        },
    )?;
    eprintln!("bench_cluster: {rounds} lease-to-route rounds, {peers} peers x 3 rounds");
    let ours = run_ours(config, &node.netns_path(), rounds, peers)?;
    let (ref_add, ref_del) = run_reference(peers, 3)?;
    drop(daemon);
    let (l50, l99) = ours.lease_to_route.all();
    let (r50, _) = ours.removal_to_gone.all();
    println!(
        "cluster: lease appears -> route installed on another node: median {:.1} ms, p99 {:.1} ms \
         ({} rounds; target <= 1000 ms: {})",
        ms(l50),
        ms(l99),
        rounds,
        if l50 <= Duration::from_secs(1) {
            "met"
        } else {
            "NOT MET"
        }
    );
    println!(
        "cluster: key removed -> route removed: median {:.1} ms",
        ms(r50)
    );
    let install = ours.install_all.median();
    println!(
        "cluster: {peers} peers, first key written -> every route installed: median {:.0} ms \
         (writing the keys alone: {:.0} ms; target <= 2000 ms: {}); \
         reference `ip -batch` adding the same routes: {:.1} ms (ratio {:.1}x)",
        ms(install),
        ms(ours.writes.median()),
        if install <= Duration::from_secs(2) {
            "met"
        } else {
            "NOT MET"
        },
        ms(ref_add.median()),
        install.as_secs_f64() / ref_add.median().as_secs_f64()
    );
    println!(
        "cluster: {peers} peers leave at once (lease revoked) -> every route removed: median \
         {:.0} ms; reference `ip -batch` deleting them: {:.1} ms (ratio {:.1}x)",
        ms(ours.remove_all.median()),
        ms(ref_del.median()),
        ours.remove_all.median().as_secs_f64() / ref_del.median().as_secs_f64()
    );
    Ok(())
}
