//! Churn under `kill -9`: 16 concurrent clients (threads, each with its own API client) do
//! 500 create/remove operations on pods with a host port each, while the daemon is
//! SIGKILLed at random every 0.2–1 s and restarted right away. A client that loses its
//! connection (or cannot connect) reconnects and retries the same operation, as a real
//! caller would: create and remove are idempotent.
//!
//! Each client owns its pod names, so it knows what must be true of them:
//! * a remove's first attempt on a pod it was told exists must remove it (`removed: true`):
//!   a pod the caller was told exists is never lost in between;
//! * at the end the daemon's pods are exactly the names whose last answer was "created".
//!
//! After every restart `check` reports no drift (reconcile finished what the kill cut
//! short). At the end: `check` reports no drift, the state file matches the kernel exactly (records
//! ⇔ veths ⇔ bind mounts ⇔ pauses ⇔ nftables elements ⇔ allocations), every pod works, and
//! `gc` leaves nothing. The seed is printed; `CHAOS_SEED=N` replays a run's choices.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use netns_holder_client::client::{Client, ClientError};
use netns_holder_core::names::PodName;
use netns_holder_core::ports::{PortMapping, Protocol};
use nh_tests::invariants::{
    Pod, assert_node_matches, assert_nothing_left, assert_pod_works, check_no_drift, inspect,
    on_node,
};
use nh_tests::node::{Daemon, DaemonOptions};
use nh_tests::{require_root, unique_name};

const CLIENTS: usize = 16;
const OPERATIONS: usize = 500;
/// Pod names per client (so about 8 × 16 pods live at a time, at most 128).
const NAMES_PER_CLIENT: usize = 8;
/// No single operation (with its retries) may take longer than this.
const OPERATION_DEADLINE: Duration = Duration::from_secs(30);

/// A tiny deterministic generator (xorshift64*), seeded per client.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        })
}

/// Whether an error means "the daemon went away" (retry) rather than a real refusal: no
/// connection, or a gRPC status of CANCELLED (1), UNKNOWN (2) or UNAVAILABLE (14), which is
/// what a request cut off by the daemon's death gets (the daemon itself never answers them).
fn transient(error: &ClientError) -> bool {
    match error {
        ClientError::Connect { .. } => true,
        ClientError::Rpc { .. } => matches!(error.code().map(|c| c as i32), Some(1 | 2 | 14)),
    }
}

/// What a client knows about one of its pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Absent,
    Exists,
}

#[derive(Default)]
struct Tally {
    creates: AtomicUsize,
    removes: AtomicUsize,
    retries: AtomicUsize,
}

/// One client: `ops` operations on its own names; returns the final knowledge per name.
async fn client_run(
    socket: PathBuf,
    names: Vec<(String, u16)>,
    ops: usize,
    mut rng: Rng,
    tally: Arc<Tally>,
) -> Result<BTreeMap<String, Known>> {
    let mut known: BTreeMap<String, Known> = names
        .iter()
        .map(|(n, _)| (n.clone(), Known::Absent))
        .collect();
    let mut client: Option<Client> = None;
    for _ in 0..ops {
        let (name, port) = &names[rng.below(names.len() as u64) as usize];
        let pod = PodName::new(name.as_str())?;
        let create = known[name] == Known::Absent;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            ensure!(
                started.elapsed() < OPERATION_DEADLINE,
                "{} of {name} did not get an answer within {OPERATION_DEADLINE:?}",
                if create { "create" } else { "remove" }
            );
            let c = match &mut client {
                Some(c) => c,
                None => match Client::connect(&socket).await {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            attempt += 1;
            let result = if create {
                c.create_pod_with_ports(
                    &pod,
                    false,
                    BTreeMap::new(),
                    &[PortMapping::new(*port, 80, Protocol::Tcp)],
                )
                .await
                .map(|_| true)
            } else {
                c.remove_pod(&pod).await.map(|r| r.removed)
            };
            match result {
                Ok(removed) => {
                    if create {
                        tally.creates.fetch_add(1, Ordering::Relaxed);
                        known.insert(name.clone(), Known::Exists);
                    } else {
                        tally.removes.fetch_add(1, Ordering::Relaxed);
                        ensure!(
                            removed || attempt > 1,
                            "pod {name} was created (and the caller told so), but the first \
                             attempt to remove it found no pod: it was lost"
                        );
                        known.insert(name.clone(), Known::Absent);
                    }
                    break;
                }
                Err(e) if transient(&e) => {
                    tally.retries.fetch_add(1, Ordering::Relaxed);
                    client = None;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => bail!(
                    "{} of {name} (attempt {attempt}) failed: {e}",
                    if create { "create" } else { "remove" }
                ),
            }
        }
    }
    Ok(known)
}

/// SIGKILLs and restarts the daemon every 0.2–1 s until `done`, checking for drift after
/// each restart; returns the kill count.
fn killer(daemon: &mut Daemon, done: &AtomicBool, mut rng: Rng) -> Result<usize> {
    let mut kills = 0;
    loop {
        let wait = Duration::from_millis(200 + rng.below(800));
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if done.load(Ordering::SeqCst) {
                return Ok(kills);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon.kill9();
        kills += 1;
        daemon
            .spawn()
            .with_context(|| format!("restarting the daemon after kill -9 #{kills}"))?;
        // Reconcile has finished every interrupted operation: no drift now (check waits
        // for the requests in flight, so it never sees one half done).
        check_no_drift(daemon).with_context(|| format!("right after kill -9 #{kills}"))?;
    }
}

#[test]
fn churn_with_kill9_keeps_every_invariant() -> Result<()> {
    if !require_root("churn_with_kill9_keeps_every_invariant") {
        return Ok(());
    }
    let options = DaemonOptions {
        pod_cidr_v4: "10.247.0.0/23".into(),
        ..DaemonOptions::default()
    };
    on_node(
        "churn_with_kill9_keeps_every_invariant",
        options,
        |node, daemon| {
            let seed = seed();
            eprintln!("  churn seed {seed} (CHAOS_SEED={seed} replays the choices)");
            let prefix = unique_name("ch");
            let socket = daemon.socket();
            let tally = Arc::new(Tally::default());
            let done = AtomicBool::new(false);
            let started = Instant::now();
            let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
            let mut finals: BTreeMap<String, Known> = BTreeMap::new();
            let kills = std::thread::scope(|scope| -> Result<usize> {
                let mut handles = Vec::new();
                for c in 0..CLIENTS {
                    let names: Vec<(String, u16)> = (0..NAMES_PER_CLIENT)
                        .map(|j| {
                            (
                                format!("{prefix}-{c}-{j}"),
                                20000 + (c * NAMES_PER_CLIENT + j) as u16,
                            )
                        })
                        .collect();
                    let ops = OPERATIONS / CLIENTS + usize::from(c < OPERATIONS % CLIENTS);
                    let socket = socket.clone();
                    let tally = tally.clone();
                    let rng = Rng(seed
                        .wrapping_add(c as u64 + 1)
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        | 1);
                    handles.push(scope.spawn(move || -> Result<BTreeMap<String, Known>> {
                        tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()?
                            .block_on(client_run(socket, names, ops, rng, tally))
                    }));
                }
                let killing = scope.spawn(|| killer(daemon, &done, Rng(seed | 1)));
                for (c, h) in handles.into_iter().enumerate() {
                    match h.join() {
                        Ok(Ok(known)) => finals.extend(known),
                        Ok(Err(e)) => failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(format!("client {c}: {e:#}")),
                        Err(_) => failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(format!("client {c} panicked")),
                    }
                }
                done.store(true, Ordering::SeqCst);
                killing
                    .join()
                    .map_err(|_| anyhow!("the killer thread panicked"))?
            })?;
            let elapsed = started.elapsed();
            let failures = failures.into_inner().unwrap_or_default();
            ensure!(failures.is_empty(), "clients failed: {failures:#?}");
            eprintln!(
                "  {OPERATIONS} operations ({} creates, {} removes, {} retries after lost \
             connections) by {CLIENTS} clients in {elapsed:.1?}, with {kills} kill -9",
                tally.creates.load(Ordering::Relaxed),
                tally.removes.load(Ordering::Relaxed),
                tally.retries.load(Ordering::Relaxed),
            );
            ensure!(
                kills >= 2,
                "only {kills} kill -9 during the churn; it ran too briefly"
            );

            // The daemon's pods are exactly those the clients were last told exist.
            let expected: BTreeSet<&str> = finals
                .iter()
                .filter(|(_, k)| **k == Known::Exists)
                .map(|(n, _)| n.as_str())
                .collect();
            let mut live: Vec<Pod> = Vec::new();
            for name in finals.keys() {
                if let Some(pod) = inspect(daemon, name)? {
                    live.push(pod);
                }
            }
            let actual: BTreeSet<&str> = live.iter().map(|p| p.name.as_str()).collect();
            ensure!(
                actual == expected,
                "the daemon has {} pods, the clients were told {}: extra {:?}, missing {:?}",
                actual.len(),
                expected.len(),
                actual.difference(&expected).collect::<Vec<_>>(),
                expected.difference(&actual).collect::<Vec<_>>()
            );
            // No drift, and the state file matches the kernel exactly.
            assert_node_matches(node, daemon, &live)?;
            for pod in &live {
                assert_pod_works(node, pod)?;
            }
            eprintln!("  {} pods live, all working; no drift", live.len());
            let gc = daemon.cli_json(&["gc"])?;
            ensure!(
                gc["removed"].as_array().map(Vec::len) == Some(live.len()),
                "gc removed {}, expected {}",
                gc["removed"],
                live.len()
            );
            assert_nothing_left(node, daemon, &live)
        },
    )
}
