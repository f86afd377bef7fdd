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
//! Figures: medians and p99 over windows of the run (the first 10 pods, pods 91-110, the last
//! 10), overall, the ratio CNI/ours, the growth last-10/first-10, and the daemon's RSS at the
//! full pod count. `BENCH_PODS` (default 1000) sets the count.

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

/// Ours: create then remove `count` pods through the API; returns (create, remove, rss KiB).
fn bench_ours(count: usize) -> Result<(Series, Series, u64)> {
    let node = Node::new()?;
    // The machine's neighbour tables hold this many pods only when raised (a daemon in a
    // node namespace cannot raise them and refuses pods beyond them); put back after.
    let _tables = nh_tests::neighbour::RaisedTables::for_pod_cidr("10.244.0.0/20", false)?;
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.244.0.0/20".into(),
            ..DaemonOptions::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let names: Vec<PodName> = (0..count)
        .map(|i| PodName::new(format!("bench-{i}")).context("pod name"))
        .collect::<Result<_>>()?;
    let (creates, removes, rss) = runtime.block_on(async {
        let mut client = Client::connect(daemon.socket()).await?;
        let mut creates = Vec::with_capacity(count);
        for name in &names {
            let start = Instant::now();
            client.create_pod(name, false, BTreeMap::new()).await?;
            creates.push(start.elapsed());
        }
        let pid = daemon.pid().context("daemon pid")?;
        let rss = proc_status_field(pid, "VmRSS")
            .context("daemon VmRSS")?
            .trim_end_matches(" kB")
            .trim()
            .parse::<u64>()?;
        let mut removes = Vec::with_capacity(count);
        for name in &names {
            let start = Instant::now();
            let removed = client.remove_pod(name).await?;
            removes.push(start.elapsed());
            ensure!(removed.removed, "pod {name} was not removed");
        }
        anyhow::Ok((creates, removes, rss))
    })?;
    drop(daemon);
    Ok((Series(creates), Series(removes), rss))
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

fn print_row(label: &str, ours: (Duration, Duration), cni: (Duration, Duration)) {
    println!(
        "{label:<30} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>9.1}x",
        ms(ours.0),
        ms(ours.1),
        ms(cni.0),
        ms(cni.1),
        ms(cni.0) / ms(ours.0)
    );
}

fn main() -> Result<()> {
    ensure!(
        nh_tests::is_root(),
        "bench_pods needs root (network namespaces)"
    );
    let count: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    ensure!(count >= 10, "BENCH_PODS must be at least 10");
    eprintln!("bench_pods: {count} pods through netns-holder, then through the CNI chain...");
    let (our_creates, our_removes, rss_kib) = bench_ours(count)?;
    let (cni_adds, cni_dels) = bench_cni(count)?;

    println!("\nper-pod latency, {count} pods in one node (ms; medians, p99; ratio = CNI/ours)");
    println!(
        "{:<30} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "", "ours med", "ours p99", "CNI med", "CNI p99", "ratio"
    );
    let windows: [(&str, std::ops::Range<usize>); 3] = [
        ("first 10", 0..10),
        ("pods 91-110", 90..110),
        ("last 10", count - 10..count),
    ];
    for (label, range) in windows.iter().cloned() {
        if range.end <= count {
            print_row(
                &format!("create, {label}"),
                our_creates.stats(range.clone()),
                cni_adds.stats(range),
            );
        }
    }
    print_row("create, all", our_creates.all(), cni_adds.all());
    for (label, range) in windows.iter().cloned() {
        if range.end <= count {
            print_row(
                &format!("remove, {label}"),
                our_removes.stats(range.clone()),
                cni_dels.stats(range),
            );
        }
    }
    print_row("remove, all", our_removes.all(), cni_dels.all());

    let growth = ms(our_creates.stats(count - 10..count).0) / ms(our_creates.stats(0..10).0);
    let speedup = ms(cni_adds.all().0) / ms(our_creates.all().0);
    println!(
        "\ndaemon VmRSS with {count} pods: {:.1} MiB",
        rss_kib as f64 / 1024.0
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: create median <= 5 ms: {}; remove median <= 3 ms: {}; >= 10x faster than CNI: {} ({speedup:.1}x); \
         last 10 within 1.25x of first 10: {} ({growth:.2}x); RSS <= 30 MiB: {}",
        verdict(ms(our_creates.all().0) <= 5.0),
        verdict(ms(our_removes.all().0) <= 3.0),
        verdict(speedup >= 10.0),
        verdict(growth <= 1.25),
        verdict(rss_kib <= 30 * 1024),
    );
    Ok(())
}
