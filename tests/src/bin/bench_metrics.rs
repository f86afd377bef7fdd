//! `make bench` part: pod create and remove latency with and without a Prometheus-style
//! scraper polling the daemon's `/metrics` every 100 ms, side by side in one run and on one
//! daemon (issue: metrics must never slow the hot path).
//!
//! One daemon with `metrics_address` in a throwaway node namespace. Rounds alternate quiet,
//! scraped, quiet, scraped: each creates then removes `BENCH_METRICS_PODS` pods (default 200)
//! through the API. The scraper is a thread inside the node namespace that GETs `/metrics`
//! (as a plain HTTP/1.1 client, reading the whole answer) every 100 ms and counts its
//! scrapes. Printed: medians and p99 of create and remove, quiet and scraped, and the ratio
//! scraped/quiet (1.00 is no difference).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use netns_holder_client::client::Client;
use netns_holder_core::names::PodName;
use nh_tests::bench::{Series, env_count, ms};
use nh_tests::node::{Daemon, DaemonOptions, Node, in_netns_thread};

/// Where the daemon serves its metrics, inside the node namespace only.
const METRICS: &str = "127.0.0.1:9644";
/// The scrape interval the issue asks for.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// One GET of /metrics; the body length.
fn scrape(address: SocketAddr) -> std::io::Result<usize> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(response.len())
}

/// A scraper thread in the node namespace, until dropped; counts successful scrapes.
struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(node: &Node) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), scrapes.clone());
        let address: SocketAddr = METRICS.parse()?;
        let netns = node.netns_path();
        let thread = std::thread::spawn(move || {
            // The thread enters the node namespace once and stays there.
            let entered = in_netns_thread(&netns, move || {
                while !flag.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    if scrape(address).is_ok_and(|n| n > 0) {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(SCRAPE_EVERY.saturating_sub(started.elapsed()));
                }
                Ok(())
            });
            if let Err(e) = entered {
                eprintln!("scraper stopped: {e:#}");
            }
        });
        Ok(Self {
            stop,
            scrapes,
            thread: Some(thread),
        })
    }

    fn scrapes(&self) -> usize {
        self.scrapes.load(Ordering::Relaxed)
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates then removes `names` through `client`; the latency of each call.
async fn round(client: &mut Client, names: &[PodName]) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut creates = Vec::with_capacity(names.len());
    for name in names {
        let start = Instant::now();
        client.create_pod(name, false, BTreeMap::new()).await?;
        creates.push(start.elapsed());
    }
    let mut removes = Vec::with_capacity(names.len());
    for name in names {
        let start = Instant::now();
        let removed = client.remove_pod(name).await?;
        removes.push(start.elapsed());
        ensure!(removed.removed, "pod {name} was not removed");
    }
    Ok((creates, removes))
}

fn line(what: &str, quiet: &Series, scraped: &Series) {
    println!(
        "  {what:<7} quiet median {:>7.3} ms p99 {:>7.3} ms | scraped median {:>7.3} ms p99 {:>7.3} ms | ratio scraped/quiet {:.2}",
        ms(quiet.median()),
        ms(quiet.percentile(99)),
        ms(scraped.median()),
        ms(scraped.percentile(99)),
        scraped.median().as_secs_f64() / quiet.median().as_secs_f64()
    );
}

fn main() -> Result<()> {
    if !nh_tests::is_root() {
        eprintln!("*** SKIPPED bench_metrics: needs root (network namespaces). ***");
        return Ok(());
    }
    let count = env_count("BENCH_METRICS_PODS", 200);
    let node = Node::new()?;
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.244.0.0/20".into(),
            extra_config: format!("metrics_address = \"{METRICS}\"\n"),
            ..DaemonOptions::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let names: Vec<PodName> = (0..count)
        .map(|i| PodName::new(format!("bench-{i}")).context("pod name"))
        .collect::<Result<_>>()?;
    let mut quiet = (Vec::new(), Vec::new());
    let mut scraped = (Vec::new(), Vec::new());
    let mut scrapes = 0;
    runtime.block_on(async {
        let mut client = Client::connect(daemon.socket()).await?;
        for with_scraper in [false, true, false, true] {
            let scraper = if with_scraper {
                Some(Scraper::start(&node)?)
            } else {
                None
            };
            let (creates, removes) = round(&mut client, &names).await?;
            let into = if with_scraper {
                &mut scraped
            } else {
                &mut quiet
            };
            into.0.extend(creates);
            into.1.extend(removes);
            if let Some(scraper) = scraper {
                scrapes += scraper.scrapes();
            }
        }
        anyhow::Ok(())
    })?;
    ensure!(
        scrapes > 0,
        "the scraper never got an answer from {METRICS}"
    );
    println!(
        "bench_metrics: {count} pods created and removed per round, 2 quiet and 2 scraped rounds \
         ({scrapes} scrapes of /metrics, every {SCRAPE_EVERY:?})"
    );
    let series = Series;
    let (qc, qr) = (series(quiet.0), series(quiet.1));
    let (sc, sr) = (series(scraped.0), series(scraped.1));
    line("create", &qc, &sc);
    line("remove", &qr, &sr);
    Ok(())
}
