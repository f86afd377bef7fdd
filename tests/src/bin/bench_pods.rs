//! `make bench` part 2: per-pod create and remove latency of the netns-holder daemon, side by
//! side in the same run with the CNI reference plugins from Debian's
//! `containernetworking-plugins` (`loopback` + `bridge` with `host-local` IPAM, invoked per
//! the CNI spec), each in its own throwaway node network namespace.
//!
//! The daemon is driven through its gRPC API (the library client); the CNI plugins are
//! exec'd from a thread that entered the CNI node's namespace, as a runtime would. The CNI
//! side is timed on wiring only (its pod namespace is made before the clock starts), while
//! our create also makes the namespace and starts the pause: the comparison favours CNI.
//!
//! Both datapaths of ours run in the same process, one after the other, each on its own
//! node: `bridge` and `routed` (issue 14). Figures: medians and p99 over windows of the run
//! (the first 10 pods, pods 91-110, the last 10), overall, the ratios CNI/routed and
//! bridge/routed, the growth last-10/first-10, and the daemon's RSS and open fds at the
//! full pod count. `BENCH_PODS` (default 1000) sets the count.
//!
//! Then the routed scale run: `BENCH_SCALE_PODS` (default 4000) pods on one node (a /20),
//! created and removed, with every pod pinged once from the node and once from another pod
//! (each ping waits at most 1 s), the create growth last-10/first-10, RSS and fds. The
//! bridge datapath cannot hold that many (a bridge has at most 1023 ports).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use netns_holder_client::client::Client;
use netns_holder_core::names::PodName;
use nh_tests::bench::{NetnsCleanup, Series, cni_exec, enter_netns, ms};
use nh_tests::node::{Daemon, DaemonOptions, Node};
use nh_tests::{ScratchDir, proc_status_field, run_ok, unique_name};

/// What one run of ours measured.
struct Ours {
    creates: Series,
    removes: Series,
    rss_kib: u64,
    fds: usize,
    /// Pods that did not answer a ping from the node, and from another pod (`reach` only).
    unreachable: Option<(usize, usize)>,
}

/// The open file descriptors of `pid`.
fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Pings each of `targets` once from `netns` (at most 1 s each, 64 at a time); returns the
/// targets that did not answer.
fn ping_all(netns: &std::path::Path, targets: &[String]) -> Result<Vec<String>> {
    let mut failed = Vec::new();
    for chunk in targets.chunks(64) {
        let children = chunk
            .iter()
            .map(|ip| {
                nh_tests::node::in_netns(netns, &["ping", "-c", "1", "-W", "1", "-q", ip])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .map(|child| (ip, child))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        for (ip, mut child) in children {
            if !child.wait()?.success() {
                failed.push(ip.clone());
            }
        }
    }
    Ok(failed)
}

/// Ours: create then remove `count` pods through the API on the `datapath`; with `reach`,
/// every pod is pinged from the node and from the first pod before the removes.
fn bench_ours(count: usize, datapath: &str, reach: bool) -> Result<Ours> {
    let node = Node::new()?;
    // The machine's neighbour tables hold this many pods only when raised (a daemon in a
    // node namespace cannot raise them and refuses pods beyond them); put back after.
    let _tables = nh_tests::neighbour::RaisedTables::for_pod_cidr("10.244.0.0/20", false)?;
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.244.0.0/20".into(),
            extra_config: format!("datapath = \"{datapath}\"\n"),
            ..DaemonOptions::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let names: Vec<PodName> = (0..count)
        .map(|i| PodName::new(format!("bench-{i}")).context("pod name"))
        .collect::<Result<_>>()?;
    let node_path = node.netns_path();
    let (creates, removes, rss, fds, unreachable) = runtime.block_on(async {
        let mut client = Client::connect(daemon.socket()).await?;
        let mut creates = Vec::with_capacity(count);
        let mut pods: Vec<(String, String)> = Vec::with_capacity(count);
        for name in &names {
            let start = Instant::now();
            let created = client.create_pod(name, false, BTreeMap::new()).await?;
            creates.push(start.elapsed());
            let pod = created.pod.context("create answered no pod")?;
            let ip = pod.ips.first().context("a pod without addresses")?;
            let ip = ip.split('/').next().unwrap_or_default().to_string();
            pods.push((pod.netns, ip));
        }
        let pid = daemon.pid().context("daemon pid")?;
        let rss = proc_status_field(pid, "VmRSS")
            .context("daemon VmRSS")?
            .trim_end_matches(" kB")
            .trim()
            .parse::<u64>()?;
        let fds = open_fds(pid)?;
        let unreachable = if reach {
            let ips: Vec<String> = pods.iter().map(|(_, ip)| ip.clone()).collect();
            let from_node = ping_all(&node_path, &ips)?;
            let from_pod = ping_all(std::path::Path::new(&pods[0].0), &ips[1..])?;
            for (from, failed) in [("the node", &from_node), ("the first pod", &from_pod)] {
                if !failed.is_empty() {
                    eprintln!(
                        "  {} pod(s) did not answer {from} within 1 s, e.g. {:?}",
                        failed.len(),
                        &failed[..failed.len().min(5)]
                    );
                }
            }
            Some((from_node.len(), from_pod.len()))
        } else {
            None
        };
        let mut removes = Vec::with_capacity(count);
        for name in &names {
            let start = Instant::now();
            let removed = client.remove_pod(name).await?;
            removes.push(start.elapsed());
            ensure!(removed.removed, "pod {name} was not removed");
        }
        anyhow::Ok((creates, removes, rss, fds, unreachable))
    })?;
    drop(daemon);
    Ok(Ours {
        creates: Series(creates),
        removes: Series(removes),
        rss_kib: rss,
        fds,
        unreachable,
    })
}

/// `count` creates at once through the API (one connection each) on the `datapath`, on a
/// fresh node; returns each create's latency (then removes them, untimed).
fn bench_concurrent(count: usize, datapath: &str) -> Result<Series> {
    let node = Node::new()?;
    let _tables = nh_tests::neighbour::RaisedTables::for_pod_cidr("10.244.0.0/20", false)?;
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.244.0.0/20".into(),
            extra_config: format!("datapath = \"{datapath}\"\n"),
            ..DaemonOptions::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let socket = daemon.socket();
    let latencies = runtime.block_on(async {
        let mut clients = Vec::with_capacity(count);
        for _ in 0..count {
            clients.push(Client::connect(socket.clone()).await?);
        }
        let tasks: Vec<_> = clients
            .into_iter()
            .enumerate()
            .map(|(i, mut client)| {
                tokio::spawn(async move {
                    let name = PodName::new(format!("burst-{i}"))?;
                    let start = Instant::now();
                    client.create_pod(&name, false, BTreeMap::new()).await?;
                    anyhow::Ok(start.elapsed())
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(count);
        for task in tasks {
            latencies.push(task.await??);
        }
        let mut client = Client::connect(socket.clone()).await?;
        for i in 0..count {
            client
                .remove_pod(&PodName::new(format!("burst-{i}"))?)
                .await?;
        }
        anyhow::Ok(latencies)
    })?;
    drop(daemon);
    Ok(Series(latencies))
}

/// The CNI reference chain: loopback ADD + bridge ADD (host-local), then DEL both.
fn bench_cni(count: usize) -> Result<(Series, Series)> {
    let node = Node::new()?;
    let scratch = ScratchDir::new("cni")?;
    let bridge_config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "nhbench",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.245.0.0/20"}]],
            "dataDir": scratch.path().join("ipam"),
        },
    })
    .to_string();
    let loopback_config =
        serde_json::json!({"cniVersion": "1.0.0", "name": "nhbench-lo", "type": "loopback"})
            .to_string();
    let netns_names: Vec<String> = (0..count).map(|_| unique_name("nhc")).collect();
    let node_path = node.netns_path();
    // Pod namespaces are made (untimed) and removed by the CNI driver thread's guard.
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<(Series, Series)> {
                enter_netns(&node_path)?;
                let mut made = NetnsCleanup(Vec::new());
                let mut adds = Vec::with_capacity(count);
                for name in &netns_names {
                    run_ok(Command::new("ip").args(["netns", "add", name]))?;
                    made.0.push(name.clone());
                    let netns = PathBuf::from("/run/netns").join(name);
                    let start = Instant::now();
                    cni_exec("loopback", "ADD", name, &netns, &loopback_config)?;
                    cni_exec("bridge", "ADD", name, &netns, &bridge_config)?;
                    adds.push(start.elapsed());
                }
                let mut dels = Vec::with_capacity(count);
                for name in &netns_names {
                    let netns = PathBuf::from("/run/netns").join(name);
                    let start = Instant::now();
                    cni_exec("bridge", "DEL", name, &netns, &bridge_config)?;
                    cni_exec("loopback", "DEL", name, &netns, &loopback_config)?;
                    dels.push(start.elapsed());
                }
                Ok((Series(adds), Series(dels)))
            })
            .join()
            .map_err(|_| anyhow::anyhow!("CNI driver thread panicked"))?
    });
    drop(node);
    result
}

fn print_row(
    label: &str,
    routed: (Duration, Duration),
    bridge: (Duration, Duration),
    cni: (Duration, Duration),
) {
    println!(
        "{label:<22} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1}x {:>8.2}x",
        ms(routed.0),
        ms(routed.1),
        ms(bridge.0),
        ms(bridge.1),
        ms(cni.0),
        ms(cni.1),
        ms(cni.0) / ms(routed.0),
        ms(bridge.0) / ms(routed.0),
    );
}

fn main() -> Result<()> {
    ensure!(
        nh_tests::is_root(),
        "bench_pods needs root (network namespaces)"
    );
    let count = nh_tests::bench::env_count("BENCH_PODS", 1000);
    ensure!(count >= 10, "BENCH_PODS must be at least 10");
    let scale = nh_tests::bench::env_count("BENCH_SCALE_PODS", 4000);
    ensure!(
        (20..=4093).contains(&scale),
        "BENCH_SCALE_PODS must be between 20 and 4093 (a /20)"
    );
    eprintln!(
        "bench_pods: {count} pods through netns-holder (routed, then bridge), then through the CNI chain..."
    );
    let routed = bench_ours(count, "routed", false)?;
    let bridge = bench_ours(count, "bridge", false)?;
    let (cni_adds, cni_dels) = bench_cni(count)?;

    println!(
        "\nper-pod latency through the API, {count} pods in one node (ms; medians, p99; ratios \
         CNI/routed and bridge/routed)"
    );
    println!(
        "{:<22} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "", "routed", "p99", "bridge", "p99", "CNI", "p99", "CNI/rt", "br/rt"
    );
    let windows: [(&str, std::ops::Range<usize>); 3] = [
        ("first 10", 0..10),
        ("pods 91-110", 90..110),
        ("last 10", count - 10..count),
    ];
    for (what, ours_r, ours_b, cni) in [
        ("create", &routed.creates, &bridge.creates, &cni_adds),
        ("remove", &routed.removes, &bridge.removes, &cni_dels),
    ] {
        for (label, range) in windows.iter().cloned() {
            if range.end <= count {
                print_row(
                    &format!("{what}, {label}"),
                    ours_r.stats(range.clone()),
                    ours_b.stats(range.clone()),
                    cni.stats(range),
                );
            }
        }
        print_row(
            &format!("{what}, all"),
            ours_r.all(),
            ours_b.all(),
            cni.all(),
        );
    }
    let growth = |s: &Series, n: usize| ms(s.stats(n - 10..n).0) / ms(s.stats(0..10).0);
    for (label, ours) in [("routed", &routed), ("bridge", &bridge)] {
        println!(
            "{label}: daemon VmRSS with {count} pods {:.1} MiB, {} open fds; create last 10 / first 10: {:.2}x",
            ours.rss_kib as f64 / 1024.0,
            ours.fds,
            growth(&ours.creates, count)
        );
    }

    eprintln!("bench_pods: 100 creates at once through the API, routed then bridge...");
    for datapath in ["routed", "bridge"] {
        let burst = bench_concurrent(100, datapath)?;
        println!(
            "{datapath}: 100 creates at once through the API: median {:.2} ms, p99 {:.2} ms \
             (target p99 <= 100 ms)",
            ms(burst.median()),
            ms(burst.percentile(99)),
        );
    }

    eprintln!(
        "bench_pods: routed scale run, {scale} pods, each pinged from the node and from a pod..."
    );
    let big = bench_ours(scale, "routed", true)?;
    let (from_node, from_pod) = big.unreachable.unwrap_or_default();
    println!(
        "\nrouted scale run, {scale} pods on a /20 (ms; medians, p99):\n\
         create all {:.2} / {:.2}, first 10 {:.2}, last 10 {:.2} ({:.2}x); remove all {:.2} / {:.2}\n\
         not answering a ping within 1 s: {from_node} from the node, {from_pod} from another pod\n\
         daemon VmRSS with {scale} pods {:.1} MiB, {} open fds",
        ms(big.creates.all().0),
        ms(big.creates.all().1),
        ms(big.creates.stats(0..10).0),
        ms(big.creates.stats(scale - 10..scale).0),
        growth(&big.creates, scale),
        ms(big.removes.all().0),
        ms(big.removes.all().1),
        big.rss_kib as f64 / 1024.0,
        big.fds,
    );

    let speedup = ms(cni_adds.all().0) / ms(routed.creates.all().0);
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets (routed): create median <= 3 ms: {}; remove median <= 5 ms: {}; >= 10x faster than CNI: {} ({speedup:.1}x); \
         last 10 within 1.25x of first 10 at {scale} pods: {} ({:.2}x); every pod answers: {}",
        verdict(ms(routed.creates.all().0) <= 3.0),
        verdict(ms(routed.removes.all().0) <= 5.0),
        verdict(speedup >= 10.0),
        verdict(growth(&big.creates, scale) <= 1.25),
        growth(&big.creates, scale),
        verdict(from_node == 0 && from_pod == 0),
    );
    Ok(())
}
