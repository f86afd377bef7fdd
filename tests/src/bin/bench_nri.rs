//! `make bench` part: NRI RunPodSandbox latency through `cri-hook nri` and a real daemon.
//!
//! A runtime-side NRI peer ([`nh_tests::nri_peer`], containerd's behaviour) registers the
//! real `cri-hook nri` binary, then times each RunPodSandbox from the moment the request is
//! sent to the moment its reply is read: the plugin decodes it, calls the daemon
//! (AttachPod: veth, addresses, routes in the pod's namespace) and answers. Two loads:
//! one pod at a time, and 100 pods sent at once (concurrent requests on one connection).
//! A third load times pods one at a time while the 100 of the second load are still up.
//! Pod network namespaces are made beforehand with `ip netns add` and are not timed. For
//! scale, the same serial load is also timed calling the daemon's AttachPod directly (the
//! library client), which is the floor the plugin adds its overhead to.
//!
//! Prints one JSON object on stdout (`{"serial", "concurrent", "serial_with_running",
//! "direct_attach"}`, each with
//! `pods`, `median_ms`, `p99_ms`)
//! and a readable summary on stderr. `BENCH_NRI_SERIAL` (default 50) and
//! `BENCH_NRI_CONCURRENT` (default 100) set the pod counts; `CRI_HOOK_BIN` and
//! `NETNS_HOLDER_BIN` pick the binaries (release builds in `make bench`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use netns_holder_client::client::Client;
use netns_holder_core::names::PodName;
use nh_tests::node::{Daemon, DaemonOptions, Node};
use nh_tests::nri_peer::{NriRuntime, PeerOptions, PluginConn, pod_sandbox};
use nh_tests::{ChildGuard, ScratchDir, is_root, run_ok, target_dir, unique_name};
use serde_json::json;

/// The cri-hook binary: `$CRI_HOOK_BIN`, else the release build, else the debug build.
fn cri_hook_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("CRI_HOOK_BIN") {
        return PathBuf::from(path);
    }
    let release = target_dir().join("release").join("cri-hook");
    if release.is_file() {
        release
    } else {
        target_dir().join("debug").join("cri-hook")
    }
}

fn env_count(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Pod namespaces made with `ip netns add`, deleted on drop.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(count: usize) -> Result<Self> {
        let mut made = Self(Vec::with_capacity(count));
        for _ in 0..count {
            let name = unique_name("nhb");
            run_ok(Command::new("ip").args(["netns", "add", &name]))?;
            made.0.push(name);
        }
        Ok(made)
    }

    fn path(&self, i: usize) -> PathBuf {
        Path::new("/run/netns").join(&self.0[i])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn sandbox_id(round: &str, i: usize) -> String {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    (0..4)
        .map(|k| format!("{:016x}", state.hash_one((round, i, k))))
        .collect()
}

/// (median, p99) in milliseconds.
fn stats(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    let median = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99).div_ceil(100).saturating_sub(1)];
    (median.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3)
}

/// Pods of one round, with their namespaces; removed through the runtime by
/// [`Round::remove`].
struct Round {
    pods: Vec<nri::pb::PodSandbox>,
    _namespaces: Namespaces,
}

impl Round {
    fn new(round: &str, count: usize) -> Result<Self> {
        let namespaces = Namespaces::new(count)?;
        let pods = (0..count)
            .map(|i| {
                pod_sandbox(
                    "bench",
                    &format!("{round}-{i}"),
                    &sandbox_id(round, i),
                    Some(&namespaces.path(i)),
                    &[],
                )
            })
            .collect();
        Ok(Self {
            pods,
            _namespaces: namespaces,
        })
    }

    /// Times RunPodSandbox of every pod: one after the other, or all sent at once.
    async fn run(&self, conn: &Arc<PluginConn>, concurrent: bool) -> Result<Vec<Duration>> {
        let mut latencies = Vec::with_capacity(self.pods.len());
        if concurrent {
            let mut tasks = tokio::task::JoinSet::new();
            for pod in self.pods.clone() {
                let conn = conn.clone();
                tasks.spawn(async move {
                    let start = Instant::now();
                    conn.run_pod_sandbox(&pod).await.map(|()| start.elapsed())
                });
            }
            while let Some(done) = tasks.join_next().await {
                latencies.push(done?.context("RunPodSandbox")?);
            }
        } else {
            for pod in &self.pods {
                let start = Instant::now();
                conn.run_pod_sandbox(pod).await.context("RunPodSandbox")?;
                latencies.push(start.elapsed());
            }
        }
        Ok(latencies)
    }

    async fn remove(self, conn: &Arc<PluginConn>) -> Result<()> {
        for pod in &self.pods {
            conn.remove_pod_sandbox(pod)
                .await
                .context("RemovePodSandbox")?;
        }
        Ok(())
    }
}

/// The floor: AttachPod straight to the daemon, one at a time, then RemovePod.
async fn direct_round(daemon: &Daemon, count: usize) -> Result<Vec<Duration>> {
    let namespaces = Namespaces::new(count)?;
    let mut client = Client::connect(daemon.socket()).await?;
    let mut latencies = Vec::with_capacity(count);
    let names: Vec<PodName> = (0..count)
        .map(|i| PodName::new(format!("direct-{i}")).context("pod name"))
        .collect::<Result<_>>()?;
    for (i, name) in names.iter().enumerate() {
        let start = Instant::now();
        client
            .attach_pod(name, &namespaces.path(i), Default::default())
            .await?;
        latencies.push(start.elapsed());
    }
    for name in &names {
        client.remove_pod(name).await?;
    }
    Ok(latencies)
}

fn main() -> Result<()> {
    if !is_root() {
        eprintln!("*** SKIPPED bench_nri: needs root (network namespaces). ***");
        return Ok(());
    }
    let serial = env_count("BENCH_NRI_SERIAL", 50);
    let concurrent = env_count("BENCH_NRI_CONCURRENT", 100);
    let node = Node::new()?;
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.244.0.0/20".into(),
            ..DaemonOptions::default()
        },
    )?;
    let scratch = ScratchDir::new("bnri")?;
    let socket = scratch.path().join("nri.sock");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let binary = cri_hook_binary();
    let (serial_samples, concurrent_samples, busy_samples, direct_samples) =
        runtime.block_on(async {
            let nri = NriRuntime::bind(&socket, PeerOptions::default())?;
            let log = std::fs::File::create(scratch.path().join("plugin.log"))?;
            let _plugin = ChildGuard::spawn(
                Command::new(&binary)
                    .args(["nri", "--nri-socket"])
                    .arg(&socket)
                    .arg("--daemon-socket")
                    .arg(daemon.socket())
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log),
            )?;
            let conn = Arc::new(nri.accept(Duration::from_secs(10)).await?);
            conn.handshake().await?;
            conn.synchronize(vec![], vec![]).await?;
            // Warm-up (first connection to the daemon, page cache).
            let warm = Round::new("warm", 3)?;
            warm.run(&conn, false).await?;
            warm.remove(&conn).await?;
            let round = Round::new("serial", serial)?;
            let serial_samples = round.run(&conn, false).await?;
            round.remove(&conn).await?;
            // All sent at once; these pods then stay up while the next round is timed.
            let crowd = Round::new("conc", concurrent)?;
            let concurrent_samples = crowd.run(&conn, true).await?;
            let round = Round::new("busy", serial)?;
            let busy_samples = round.run(&conn, false).await?;
            round.remove(&conn).await?;
            crowd.remove(&conn).await?;
            let direct_samples = direct_round(&daemon, serial).await?;
            let violations = conn.violations();
            ensure!(violations.is_empty(), "protocol violations: {violations:?}");
            Ok::<_, anyhow::Error>((
                serial_samples,
                concurrent_samples,
                busy_samples,
                direct_samples,
            ))
        })?;
    let (mut s, mut c, mut b, mut d) = (
        serial_samples,
        concurrent_samples,
        busy_samples,
        direct_samples,
    );
    let (s_median, s_p99) = stats(&mut s);
    let (c_median, c_p99) = stats(&mut c);
    let (b_median, b_p99) = stats(&mut b);
    let (d_median, d_p99) = stats(&mut d);
    eprintln!(
        "NRI RunPodSandbox, sent -> reply read ({}):",
        binary.display()
    );
    eprintln!("  1 at a time  ({serial:>3} pods): median {s_median:7.2} ms   p99 {s_p99:7.2} ms");
    eprintln!(
        "  all at once  ({concurrent:>3} pods): median {c_median:7.2} ms   p99 {c_p99:7.2} ms"
    );
    eprintln!(
        "  1 at a time with {concurrent} pods running ({serial:>3} pods): median {b_median:7.2} ms   p99 {b_p99:7.2} ms"
    );
    let verdict = |median: f64, p99: f64| {
        if median <= 10.0 && p99 <= 50.0 {
            "met"
        } else {
            "MISSED"
        }
    };
    eprintln!(
        "  target median <= 10 ms, p99 <= 50 ms: 1 pod {}; with {concurrent} pods running {}; {concurrent} sent at once {} \
         (those queue behind each other: the daemon wires pods in parallel, but the kernel's \
         RTNL lock serializes the netlink work)",
        verdict(s_median, s_p99),
        verdict(b_median, b_p99),
        verdict(c_median, c_p99),
    );
    eprintln!(
        "  direct AttachPod, no NRI, 1 at a time ({serial:>3} pods): median {d_median:7.2} ms   p99 {d_p99:7.2} ms"
    );
    println!(
        "{}",
        json!({
            "serial": {"pods": serial, "median_ms": s_median, "p99_ms": s_p99},
            "concurrent": {"pods": concurrent, "median_ms": c_median, "p99_ms": c_p99},
            "serial_with_running": {"pods": serial, "running": concurrent, "median_ms": b_median, "p99_ms": b_p99},
            "direct_attach": {"pods": serial, "median_ms": d_median, "p99_ms": d_p99},
        })
    );
    Ok(())
}
