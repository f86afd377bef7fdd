//! `make bench` part 5: load. 1000 pods with 2 host ports each on one node, created by 32
//! concurrent API clients (threads, each with its own connection), then removed the same
//! way, with a 33rd client reading (`GetPod`) all along.
//!
//! Checked (a failure ends the bench with an error): every operation succeeds; no address
//! and no host port is given twice; once all pods exist the state file matches the kernel
//! exactly (veths, bind mounts, pauses, nftables elements, allocations) and `check` finds no
//! drift; a sample of host ports answers; a `kill -9` and restart at full load reconciles
//! without a failure and without drift; after the removals nothing is left.
//!
//! Reported: the daemon's RSS and open descriptors (from /proc) before, with all pods and
//! after the removals; API latency p50/p99 of creates, removes and reads under that load;
//! the time of one `check` and of a restart at full load. Targets are printed, not asserted.
//! The daemon runs with a soft descriptor limit of 1024, systemd's default (which the unit
//! keeps). `BENCH_LOAD_PODS` (default 1000, at most 1000: one bridge takes 1024 ports),
//! `BENCH_LOAD_CLIENTS` (default 32) and `BENCH_LOAD_NOFILE` change that.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use netns_holder_client::client::Client;
use netns_holder_core::names::PodName;
use netns_holder_core::ports::{PortMapping, Protocol};
use nh_tests::bench::{Series, env_count, ms};
use nh_tests::invariants::assert_state_matches_kernel;
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, tcp_probe};
use nh_tests::{proc_status_field, unique_name};

const FIRST_HOST_PORT: u16 = 20000;

/// The daemon's resident memory (KiB), open descriptors and threads.
#[derive(Debug, Clone, Copy)]
struct Footprint {
    rss_kib: u64,
    fds: usize,
    threads: u64,
}

fn footprint(pid: u32) -> Result<Footprint> {
    let number = |field: &str| -> Result<u64> {
        proc_status_field(pid, field)
            .with_context(|| format!("daemon {field}"))?
            .split_whitespace()
            .next()
            .context("empty field")?
            .parse()
            .with_context(|| format!("daemon {field}"))
    };
    Ok(Footprint {
        rss_kib: number("VmRSS")?,
        fds: std::fs::read_dir(format!("/proc/{pid}/fd"))?.count(),
        threads: number("Threads")?,
    })
}

/// What one create answered.
struct Created {
    ips: Vec<IpAddr>,
}

/// Runs `op(i)` for i in 0..count on `clients` threads (each with its own runtime and
/// connection to `socket`); returns the latencies and every result.
fn run_clients<T: Send>(
    socket: &Path,
    count: usize,
    clients: usize,
    op: impl Fn(&mut Client, usize) -> std::pin::Pin<Box<dyn Future<Output = Result<T>> + '_>> + Sync,
) -> Result<(Series, Vec<(usize, T)>)> {
    let next = AtomicUsize::new(0);
    let samples = Mutex::new(Vec::with_capacity(count));
    let results = Mutex::new(Vec::with_capacity(count));
    let errors = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..clients {
            scope.spawn(|| {
                let run = async {
                    let mut client = Client::connect(socket).await?;
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= count {
                            return Ok::<(), anyhow::Error>(());
                        }
                        let started = Instant::now();
                        let result = op(&mut client, i).await;
                        let took = started.elapsed();
                        match result {
                            Ok(value) => {
                                samples.lock().unwrap_or_else(|e| e.into_inner()).push(took);
                                results
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push((i, value));
                            }
                            Err(e) => errors
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(format!("operation {i}: {e:#}")),
                        }
                    }
                };
                let outcome = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(run));
                if let Err(e) = outcome {
                    errors
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(format!("client: {e:#}"));
                }
            });
        }
    });
    let errors = errors.into_inner().unwrap_or_default();
    ensure!(
        errors.is_empty(),
        "{} of {count} operations failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    Ok((
        Series(samples.into_inner().unwrap_or_default()),
        results.into_inner().unwrap_or_default(),
    ))
}

/// Reads (`GetPod` of pods that exist) in a loop until `stop`; the latencies.
fn reader(socket: PathBuf, names: Vec<String>, stop: &AtomicBool) -> Result<Series> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let mut client = Client::connect(&socket).await?;
            let mut series = Series::default();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = PodName::new(names[i % names.len()].as_str())?;
                i += 1;
                let started = Instant::now();
                // A pod not created yet is NOT_FOUND: an answer all the same.
                if let Err(e) = client.get_pod(&name).await
                    && e.code().is_none()
                {
                    return Err(e.into());
                }
                series.0.push(started.elapsed());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(series)
        })
}

fn main() -> Result<()> {
    if !nh_tests::is_root() {
        eprintln!("*** SKIPPED bench_load: needs root (network namespaces, nftables). ***");
        return Ok(());
    }
    let pods = env_count("BENCH_LOAD_PODS", 1000);
    let clients = env_count("BENCH_LOAD_CLIENTS", 32);
    ensure!(
        (10..=1000).contains(&pods),
        "BENCH_LOAD_PODS must be between 10 and 1000 (one bridge takes 1024 ports)"
    );
    ensure!(clients >= 1, "BENCH_LOAD_CLIENTS must be at least 1");
    // The daemon inherits this: systemd's default soft limit, which the unit keeps.
    let nofile = env_count("BENCH_LOAD_NOFILE", 1024) as libc::rlim_t;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = nofile.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    eprintln!(
        "bench_load: {pods} pods with 2 host ports each, created and removed by {clients} \
         concurrent clients; the daemon's descriptor limit is {} (as systemd's default)...",
        limit.rlim_cur
    );
    let node = Node::new()?;
    // The machine's neighbour tables hold this many pods only when raised (a daemon in a
    // node namespace cannot raise them and refuses pods beyond them); put back after.
    let _tables = nh_tests::neighbour::RaisedTables::for_pod_cidr("10.248.0.0/21", false)?;
    let mut daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.248.0.0/21".into(),
            ..DaemonOptions::default()
        },
    )?;
    let result = bench(&node, &mut daemon, pods, clients);
    if let Err(e) = &result {
        eprintln!(
            "\n*** bench_load FAILED: {e:#}\n--- last daemon log lines ---\n{}",
            daemon
                .log()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    result
}

fn bench(node: &Node, daemon: &mut Daemon, pods: usize, clients: usize) -> Result<()> {
    let pid = daemon.pid().context("daemon not running")?;
    let socket = daemon.socket();
    let prefix = unique_name("ld");
    let names: Vec<String> = (0..pods).map(|i| format!("{prefix}-{i}")).collect();
    let ports = |i: usize| -> [PortMapping; 2] {
        let base = FIRST_HOST_PORT + 2 * i as u16;
        [
            PortMapping::new(base, 80, Protocol::Tcp),
            PortMapping::new(base + 1, 8080, Protocol::Tcp),
        ]
    };
    let before = footprint(pid)?;

    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (creates, created, reads) = std::thread::scope(|scope| -> Result<_> {
        let reading = {
            let socket = socket.clone();
            let names = names.clone();
            let stop = &stop;
            scope.spawn(move || reader(socket, names, stop))
        };
        let outcome = run_clients(&socket, pods, clients, |client, i| {
            let name = names[i].clone();
            let mappings = ports(i);
            Box::pin(async move {
                let pod = client
                    .create_pod_with_ports(
                        &PodName::new(name.as_str())?,
                        false,
                        BTreeMap::new(),
                        &mappings,
                    )
                    .await?
                    .pod
                    .context("no pod in the answer")?;
                let ips = pod
                    .ips
                    .iter()
                    .map(|c| {
                        c.split('/')
                            .next()
                            .unwrap_or(c)
                            .parse::<IpAddr>()
                            .map_err(|e| anyhow!("pod IP {c}: {e}"))
                    })
                    .collect::<Result<_>>()?;
                Ok(Created { ips })
            })
        });
        stop.store(true, Ordering::Relaxed);
        let reads = reading
            .join()
            .map_err(|_| anyhow!("the reader panicked"))??;
        let (creates, created) = outcome?;
        Ok((creates, created, reads))
    })?;
    let create_wall = started.elapsed();
    ensure!(
        created.len() == pods,
        "{} of {pods} creates answered",
        created.len()
    );

    // No address twice; the state file matches the kernel (ports included) exactly.
    let mut by_ip: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for (i, c) in &created {
        for ip in &c.ips {
            if let Some(other) = by_ip.insert(*ip, *i) {
                anyhow::bail!("address {ip} given to pods {other} and {i}");
            }
        }
    }
    let records = assert_state_matches_kernel(node, daemon)?;
    ensure!(
        records.len() == pods,
        "{} records for {pods} pods",
        records.len()
    );
    let published: BTreeSet<u16> = records
        .iter()
        .flat_map(|r| r.ports.iter().map(|p| p.host_port))
        .collect();
    ensure!(
        published.len() == 2 * pods,
        "{} distinct host ports for {pods} pods with 2 each",
        published.len()
    );
    let check_started = Instant::now();
    let check = daemon.cli_json(&["check"])?;
    let check_took = check_started.elapsed();
    ensure!(check["drift"] == false, "check reports drift: {check}");
    let full = footprint(pid)?;
    // A sample of host ports answers (first, middle, last pod).
    for i in [0, pods / 2, pods - 1] {
        let record = records
            .iter()
            .find(|r| r.name.as_str() == names[i])
            .context("record")?;
        let _echo = Echo::start(&record.netns, Proto::Tcp, 80)?;
        let to = SocketAddr::from(([127, 0, 0, 1], ports(i)[0].host_port));
        tcp_probe(&node.netns_path(), to)
            .with_context(|| format!("host port {} of pod {i}", to.port()))?;
    }

    // A crash at full load: kill -9, restart; the reconcile looks at every pod.
    daemon.kill9();
    let restart_started = Instant::now();
    daemon
        .spawn()
        .context("restarting the daemon at full load")?;
    let restart_took = restart_started.elapsed();
    let check = daemon.cli_json(&["check"])?;
    ensure!(
        check["drift"] == false,
        "check reports drift after the restart: {check}"
    );
    let reconcile_failures = daemon.log().matches("reconcile failure").count();
    ensure!(
        reconcile_failures == 0,
        "the reconcile at full load had {reconcile_failures} failure(s); log:\n{}",
        daemon.log()
    );
    assert_state_matches_kernel(node, daemon)?;
    let pid = daemon.pid().context("daemon not running")?;
    let restarted = footprint(pid)?;

    // Remove them all the same way.
    let started = Instant::now();
    let (removes, removed) = run_clients(&socket, pods, clients, |client, i| {
        let name = names[i].clone();
        Box::pin(async move {
            let answer = client.remove_pod(&PodName::new(name.as_str())?).await?;
            ensure!(answer.removed, "pod {name} was not there to remove");
            Ok(())
        })
    })?;
    let remove_wall = started.elapsed();
    ensure!(
        removed.len() == pods,
        "{} of {pods} removes answered",
        removed.len()
    );
    let records = assert_state_matches_kernel(node, daemon)?;
    ensure!(records.is_empty(), "{} records left", records.len());
    let after = footprint(pid)?;
    // Idle threads of the async runtime's blocking pool (namespace and process work of the
    // removes) exit after 10 s without work: look again once they could have.
    std::thread::sleep(std::time::Duration::from_secs(12));
    let idle = footprint(pid)?;

    println!(
        "\nload: {pods} pods with 2 host ports each on one node, {clients} concurrent clients \
         ({})",
        nh_tests::node::netns_holder_binary().display()
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>12}",
        "API latency (ms)", "p50", "p99", "max", "throughput"
    );
    let row = |label: &str, s: &Series, wall: Option<Duration>| {
        println!(
            "{label:<36} {:>9.2} {:>9.2} {:>9.2} {:>12}",
            ms(s.percentile(50)),
            ms(s.percentile(99)),
            ms(s.percentile(100)),
            wall.map_or_else(String::new, |w| format!(
                "{:.0}/s",
                s.0.len() as f64 / w.as_secs_f64()
            ))
        );
    };
    row("CreatePod (2 host ports)", &creates, Some(create_wall));
    row("RemovePod", &removes, Some(remove_wall));
    row("GetPod, during the creates", &reads, None);
    println!(
        "{:<36} {:>9.2}",
        format!("check at {pods} pods (one call)"),
        ms(check_took)
    );
    println!(
        "{:<36} {:>9.2}",
        format!("kill -9 + restart at {pods} pods (API up)"),
        ms(restart_took)
    );
    println!(
        "\n{:<36} {:>12} {:>9} {:>9}",
        "daemon footprint (/proc)", "VmRSS MiB", "fds", "threads"
    );
    for (label, f) in [
        ("before", before),
        (&*format!("with {pods} pods"), full),
        (&*format!("restarted with {pods} pods"), restarted),
        ("after removing them all", after),
        ("the same, 12 s later", idle),
    ] {
        println!(
            "{label:<36} {:>12.1} {:>9} {:>9}",
            f.rss_kib as f64 / 1024.0,
            f.fds,
            f.threads
        );
    }
    println!(
        "every operation succeeded; {} distinct addresses, {} distinct host ports; state file \
         = kernel; check clean",
        by_ip.len(),
        published.len()
    );

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let rss_growth = (full.rss_kib as f64 - before.rss_kib as f64) / 1024.0;
    let create_p99 = ms(creates.percentile(99));
    println!(
        "targets: create p99 <= 250 ms with {clients} clients: {} ({create_p99:.1} ms); read p99 \
         <= 50 ms under load: {} ({:.1} ms); RSS growth <= 64 MiB at {pods} pods: {} \
         ({rss_growth:.1} MiB); fds at {pods} pods (right after check) <= 200, whatever the pod \
         count: {} ({}); fds back within 8 of the start after removal: {} ({} -> {})",
        verdict(create_p99 <= 250.0),
        verdict(ms(reads.percentile(99)) <= 50.0),
        ms(reads.percentile(99)),
        verdict(rss_growth <= 64.0),
        verdict(full.fds <= 200),
        full.fds,
        verdict(after.fds <= before.fds + 8),
        before.fds,
        after.fds,
    );
    Ok(())
}
