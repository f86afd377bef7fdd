//! End-to-end tests of the daemon's metrics listener (`metrics_address`), inside a throwaway
//! node network namespace ([`nh_tests::node`]); every HTTP request goes to 127.0.0.1 inside
//! that namespace, from a thread that entered it, so nothing leaves the machine.
//!
//! * the values of `/metrics` are exact after pods are created and removed (pods, host
//!   ports, operations, IPAM allocation and capacity), and `promtool check metrics` accepts
//!   the output;
//! * `/healthz` is 200, `/readyz` 503 while the start-up reconcile of many pods runs, then 200;
//! * a port in use stops the daemon at start with an error naming `metrics_address`;
//! * the NRI plugin's events reach the daemon's metrics
//!   (`netns_holder_nri_events_total{event,result}`), errors included;
//! * a real Prometheus server (Debian's `prometheus`), started in the node namespace with its
//!   own config and storage in a scratch dir and scraping every second, reports the target up
//!   and `netns_holder_pods` equal to the pods created, queried through its HTTP API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nh_tests::node::{Daemon, DaemonOptions, Node, in_netns_thread};
use nh_tests::nri_harness::{Env, PodNetns, run_async, sandbox_id};
use nh_tests::nri_peer::pod_sandbox;
use nh_tests::{ChildGuard, ScratchDir, require_root, wait_until};
use nri::pb;

/// Where the daemon serves its metrics inside the node namespace (a fresh namespace: free).
const METRICS: &str = "127.0.0.1:9644";
/// Where the test's Prometheus listens inside the node namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";

/// The daemons' pool of namespaces made ahead (not the default, so the gauge shows the
/// config's value).
const NETNS_POOL: u32 = 3;

fn options() -> DaemonOptions {
    DaemonOptions {
        extra_config: format!("metrics_address = \"{METRICS}\"\nnetns_pool = {NETNS_POOL}\n"),
        ..DaemonOptions::default()
    }
}

/// An HTTP/1.1 GET of `path` at `address` from inside `netns`: (status, body).
fn get(netns: &Path, address: &str, path: &str) -> Result<(u16, String)> {
    let address: SocketAddr = address.parse()?;
    let path = path.to_string();
    in_netns_thread(netns, move || {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("no end of headers in {response:?}"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        ensure!(!chunked, "unexpected chunked response: {head}");
        Ok((status, body.to_string()))
    })
}

/// The value of the sample `series` (name and labels exactly as written) in `text`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn assert_sample(text: &str, series: &str, expected: f64) {
    assert_eq!(sample(text, series), Some(expected), "{series} in\n{text}");
}

#[test]
fn metrics_are_exact_after_creates_and_removes_and_promtool_accepts_them() -> Result<()> {
    if !require_root("metrics_are_exact_after_creates_and_removes_and_promtool_accepts_them") {
        return Ok(());
    }
    let node = Node::new()?;
    let daemon = Daemon::start(&node, options())?;
    let netns = node.netns_path();
    assert_eq!(get(&netns, METRICS, "/healthz")?.0, 200);
    assert_eq!(get(&netns, METRICS, "/readyz")?.0, 200);
    assert_eq!(get(&netns, METRICS, "/nope")?.0, 404);

    daemon.create_pod("m-a", &["--publish", "8080:80"])?;
    daemon.create_pod("m-b", &[])?;
    daemon.create_pod("m-c", &[])?;
    daemon.remove_pod("m-b")?;
    let (status, text) = get(&netns, METRICS, "/metrics")?;
    assert_eq!(status, 200, "{text}");
    assert_sample(&text, "netns_holder_pods", 2.0);
    assert_sample(&text, "netns_holder_host_ports", 1.0);
    let op = |operation: &str, result: &str| {
        format!("netns_holder_operations_total{{operation=\"{operation}\",result=\"{result}\"}}")
    };
    assert_sample(&text, &op("create", "ok"), 3.0);
    assert_sample(&text, &op("create", "error"), 0.0);
    assert_sample(&text, &op("remove", "ok"), 1.0);
    assert_sample(&text, &op("reconcile", "ok"), 1.0);
    assert_sample(&text, &op("gc", "ok"), 0.0);
    assert_sample(
        &text,
        "netns_holder_operation_duration_seconds_count{operation=\"create\"}",
        3.0,
    );
    assert_sample(
        &text,
        "netns_holder_operation_duration_seconds_bucket{le=\"+Inf\",operation=\"create\"}",
        3.0,
    );
    assert_sample(&text, "netns_holder_peers{source=\"config\"}", 0.0);
    assert_sample(&text, "netns_holder_peers{source=\"api\"}", 0.0);
    assert_sample(&text, "netns_holder_pause_restarts_total", 0.0);
    // The pool is as configured, and refilled once the creates are done.
    assert_sample(&text, "netns_holder_netns_pool_size", f64::from(NETNS_POOL));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = get(&netns, METRICS, "/metrics")?;
        let ready = sample(&text, "netns_holder_netns_pool_ready").context("pool ready")?;
        if ready == f64::from(NETNS_POOL) {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the pool holds {ready} of {NETNS_POOL} after 10 s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The IPAM values are the ones `status` reports; so is the pool (full again above).
    let status = daemon.cli_json(&["status"])?;
    assert_eq!(
        status["netns_pool"],
        serde_json::json!({"ready": NETNS_POOL, "size": NETNS_POOL}),
        "{status}"
    );
    let pool = &status["pools"][0];
    assert_eq!(pool["allocated"], 2, "{status}");
    assert_sample(
        &text,
        "netns_holder_ipam_addresses_allocated{family=\"ipv4\"}",
        2.0,
    );
    assert_sample(
        &text,
        "netns_holder_ipam_addresses_capacity{family=\"ipv4\"}",
        pool["capacity"].as_f64().context("capacity")?,
    );
    let journal = std::fs::metadata(daemon.state_dir().join("journal.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(journal > 0, "the creates were journalled");
    let journal_metric = sample(&text, "netns_holder_state_journal_bytes").context("journal")?;
    assert_eq!(journal_metric, journal as f64, "{text}");

    // A failed create is counted as an error; gc and check are counted and reported.
    let taken = daemon.cli(&["pod", "create", "m-d", "--publish", "8080:8080"])?;
    assert!(!taken.status.success(), "host port 8080 is taken by m-a");
    daemon.cli_json(&["gc", "--keep", "m-a", "--keep", "m-c"])?;
    let (_, text) = get(&netns, METRICS, "/metrics")?;
    assert_sample(&text, &op("create", "error"), 1.0);
    assert_sample(&text, &op("gc", "ok"), 1.0);
    assert_sample(&text, "netns_holder_pods", 2.0);

    let checked = promtool_check(&text)?;
    eprintln!("promtool check metrics: {checked}");
    daemon.remove_pod("m-a")?;
    daemon.remove_pod("m-c")?;
    let (_, text) = get(&netns, METRICS, "/metrics")?;
    assert_sample(&text, "netns_holder_pods", 0.0);
    assert_sample(&text, "netns_holder_host_ports", 0.0);
    assert_sample(
        &text,
        "netns_holder_ipam_addresses_allocated{family=\"ipv4\"}",
        0.0,
    );
    assert_sample(&text, &op("remove", "ok"), 3.0);
    Ok(())
}

/// Runs `promtool check metrics` on `text`: its output, or an error with it.
fn promtool_check(text: &str) -> Result<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running promtool (Debian package prometheus; `make deps`)")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "promtool check metrics failed ({}): {said}\non\n{text}",
        out.status
    );
    Ok(said)
}

#[test]
fn readyz_is_503_during_the_start_up_reconcile_then_200() -> Result<()> {
    if !require_root("readyz_is_503_during_the_start_up_reconcile_then_200") {
        return Ok(());
    }
    const PODS: usize = 40;
    let node = Node::new()?;
    let mut daemon = Daemon::start(&node, options())?;
    for i in 0..PODS {
        daemon.create_pod(&format!("r-{i}"), &[])?;
    }
    daemon.stop()?;
    let netns = node.netns_path();
    // Poll /readyz from the node namespace while the daemon starts and reconciles.
    let done = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|scope| -> Result<Vec<u16>> {
        let poller = scope.spawn(|| {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok((status, _)) = get(&netns, METRICS, "/readyz") {
                    if seen.last() != Some(&status) {
                        seen.push(status);
                    }
                    if status == 200 {
                        break;
                    }
                } else if done.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        let spawned = daemon.spawn();
        done.store(true, std::sync::atomic::Ordering::Release);
        let seen = poller
            .join()
            .map_err(|_| anyhow::anyhow!("poller panicked"))?;
        spawned?;
        Ok(seen)
    })?;
    eprintln!("/readyz answers during the start with {PODS} pods: {seen:?}");
    assert_eq!(
        seen,
        vec![503, 200],
        "503 while reconciling, then 200; log:\n{}",
        daemon.log()
    );
    let (_, text) = get(&netns, METRICS, "/metrics")?;
    assert_sample(&text, "netns_holder_pods", PODS as f64);
    assert_sample(
        &text,
        "netns_holder_operations_total{operation=\"reconcile\",result=\"ok\"}",
        1.0,
    );
    for i in 0..PODS {
        daemon.remove_pod(&format!("r-{i}"))?;
    }
    Ok(())
}

#[test]
fn a_metrics_port_in_use_stops_the_start_naming_the_key() -> Result<()> {
    if !require_root("a_metrics_port_in_use_stops_the_start_naming_the_key") {
        return Ok(());
    }
    let node = Node::new()?;
    let address: SocketAddr = METRICS.parse()?;
    let _taken = in_netns_thread(&node.netns_path(), move || Ok(TcpListener::bind(address)?))?;
    let Err(error) = Daemon::start(&node, options()) else {
        bail!("the daemon started although {METRICS} is taken");
    };
    let error = format!("{error:#}");
    assert!(
        error.contains(&format!("cannot listen on metrics_address {METRICS}"))
            && error.contains("in use"),
        "{error}"
    );
    Ok(())
}

/// A Prometheus server in the node namespace, killed by its pid when dropped (and its
/// storage removed with the scratch dir).
struct Prometheus {
    _process: ChildGuard,
    _scratch: ScratchDir,
    log: PathBuf,
}

impl Prometheus {
    fn start(node: &Node, target: &str) -> Result<Self> {
        let scratch = ScratchDir::new("nhprom")?;
        let config = scratch.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: netns-holder\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )?;
        let log = scratch.path().join("prometheus.log");
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", node.netns_path().display()))
            .arg("--")
            .arg("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                scratch.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        // nsenter execs prometheus in place: the guard's pid is the server's.
        let process = ChildGuard::spawn(&mut command)?;
        Ok(Self {
            _process: process,
            _scratch: scratch,
            log,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of the instant query `query` (the first series), if it has one.
    fn query(&self, netns: &Path, query: &str) -> Result<Option<String>> {
        let (status, body) = get(netns, PROMETHEUS, &format!("/api/v1/query?query={query}"))?;
        ensure!(status == 200, "query {query}: {status} {body}");
        let json: serde_json::Value = serde_json::from_str(&body)?;
        Ok(json["data"]["result"][0]["value"][1]
            .as_str()
            .map(str::to_string))
    }
}

#[test]
fn a_real_prometheus_scrapes_the_daemon() -> Result<()> {
    if !require_root("a_real_prometheus_scrapes_the_daemon") {
        return Ok(());
    }
    let node = Node::new()?;
    let daemon = Daemon::start(&node, options())?;
    for name in ["p-a", "p-b", "p-c"] {
        daemon.create_pod(name, &[])?;
    }
    let prometheus = Prometheus::start(&node, METRICS)?;
    let netns = node.netns_path();
    let mut last = (None, None);
    let scraped = wait_until(Duration::from_secs(60), || {
        let up = prometheus
            .query(&netns, "up%7Bjob%3D%22netns-holder%22%7D")
            .ok()
            .flatten();
        let pods = prometheus.query(&netns, "netns_holder_pods").ok().flatten();
        last = (up, pods);
        last.0.as_deref() == Some("1") && last.1.as_deref() == Some("3")
    });
    ensure!(
        scraped,
        "Prometheus did not report up=1 and netns_holder_pods=3 (last: {last:?}); log:\n{}",
        prometheus.log()
    );
    daemon.remove_pod("p-b")?;
    let scraped = wait_until(Duration::from_secs(30), || {
        prometheus.query(&netns, "netns_holder_pods").ok().flatten() == Some("2".into())
    });
    ensure!(scraped, "netns_holder_pods did not drop to 2 in Prometheus");
    for name in ["p-a", "p-c"] {
        daemon.remove_pod(name)?;
    }
    Ok(())
}

#[test]
fn the_nri_plugins_events_are_counted_by_the_daemon() -> Result<()> {
    if !require_root("the_nri_plugins_events_are_counted_by_the_daemon") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start_with(options()).await?;
        env.conn.synchronize(vec![], vec![]).await?;
        let netns = PodNetns::new()?;
        let pod = pod_sandbox("default", "web", &sandbox_id(), Some(&netns.path()), &[]);
        env.conn.run_pod_sandbox(&pod).await?;
        env.conn.stop_pod_sandbox(&pod).await?;
        env.conn.remove_pod_sandbox(&pod).await?;
        // Through StateChange, too.
        let other = PodNetns::new()?;
        let pod = pod_sandbox("default", "db", &sandbox_id(), Some(&other.path()), &[]);
        env.conn
            .state_change(pb::Event::RunPodSandbox, &pod)
            .await?;
        env.conn
            .state_change(pb::Event::RemovePodSandbox, &pod)
            .await?;
        // A pod the plugin refuses is an error.
        let bad = pod_sandbox(
            "default",
            "bad",
            &sandbox_id(),
            Some(&netns.path()),
            &[("netns-holder.io/skip", "sometimes")],
        );
        ensure!(env.conn.run_pod_sandbox(&bad).await.is_err());

        let event = |event: &str, result: &str| {
            format!("netns_holder_nri_events_total{{event=\"{event}\",result=\"{result}\"}}")
        };
        let expected = [
            (event("synchronize", "ok"), 1.0),
            (event("run_pod_sandbox", "ok"), 2.0),
            (event("run_pod_sandbox", "error"), 1.0),
            (event("stop_pod_sandbox", "ok"), 1.0),
            (event("remove_pod_sandbox", "ok"), 2.0),
            (event("remove_pod_sandbox", "error"), 0.0),
            (
                "netns_holder_nri_event_duration_seconds_count{event=\"run_pod_sandbox\"}"
                    .to_string(),
                3.0,
            ),
        ];
        let netns_path = env.node.netns_path();
        // The plugin reports in the background: wait for the counts to arrive.
        let mut text = String::new();
        let arrived = wait_until(Duration::from_secs(10), || {
            text = get(&netns_path, METRICS, "/metrics")
                .map(|(_, t)| t)
                .unwrap_or_default();
            expected
                .iter()
                .all(|(series, value)| sample(&text, series) == Some(*value))
        });
        ensure!(
            arrived,
            "NRI event counts {expected:?} not in\n{text}\nplugin log:\n{}",
            env.plugin.log()
        );
        env.no_violations()
    })
}
