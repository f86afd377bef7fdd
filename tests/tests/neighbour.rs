//! The kernel's neighbour tables sized for the node's pod capacity (issue 14, "found at 850
//! pods"), on the real kernel.
//!
//! The tables' thresholds are machine-wide (see `netns_holder_core::neigh`). So:
//! * a daemon confined to a throwaway node namespace (how every test runs it) reports them
//!   and what its capacity needs, changes nothing on the machine, and refuses creates beyond
//!   the pods the tables hold, naming the sysctl; the test checks that the machine's values
//!   are untouched;
//! * the raising path needs the initial namespace, which a test must not give a daemon (its
//!   bridge and routes would land on the machine's real network). It is tested one level
//!   down: the manager's sizing over the real `LinuxSystem` captured in the initial
//!   namespace, with a state directory of its own and no pod. It raises the global values
//!   (only raises) and the test restores each one it changed, unless someone else changed
//!   it meanwhile (then it is left alone: never lowered below another's setting).
//! * the benchmarks' guard (`nh_tests::neighbour::RaisedTables`) raises them for a run and
//!   puts them back.
//!
//! The three tests take a lock so that none sees another's change of the machine's values.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use netns_holder::linux::LinuxSystem;
use netns_holder_core::config::Config;
use netns_holder_core::manager::PodManager;
use netns_holder_core::neigh::{self, Outcome, Thresholds};
use netns_holder_core::ports::Family;
use nh_tests::node::{Daemon, DaemonOptions, Node};
use nh_tests::{ScratchDir, require_root};

/// The tests of this file read and change the machine's thresholds: one at a time.
static MACHINE_TABLES: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn machine_tables() -> std::sync::MutexGuard<'static, ()> {
    MACHINE_TABLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read_thresholds(family: Family) -> Result<Thresholds> {
    let dir = format!(
        "/proc/sys/{}",
        neigh::sysctl_prefix(family).replace('.', "/")
    );
    let value = |file: &str| -> Result<u64> {
        let path = Path::new(&dir).join(file);
        Ok(std::fs::read_to_string(&path)
            .with_context(|| format!("{}", path.display()))?
            .trim()
            .parse()?)
    };
    Ok(Thresholds {
        gc_thresh1: value("gc_thresh1")?,
        gc_thresh2: value("gc_thresh2")?,
        gc_thresh3: value("gc_thresh3")?,
    })
}

fn thresholds_json(t: &Thresholds) -> Value {
    serde_json::json!({
        "gc_thresh1": t.gc_thresh1, "gc_thresh2": t.gc_thresh2, "gc_thresh3": t.gc_thresh3
    })
}

#[test]
fn a_confined_daemon_reports_the_tables_changes_nothing_and_limits_pods() -> Result<()> {
    if !require_root("a_confined_daemon_reports_the_tables_changes_nothing_and_limits_pods") {
        return Ok(());
    }
    let _one_at_a_time = machine_tables();
    let before = read_thresholds(Family::V4)?;
    let node = Node::new()?;
    // A /22: 1021 pods, which need more than the kernel's defaults.
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.244.64.0/22".into(),
            ..DaemonOptions::default()
        },
    )?;
    let status = daemon.cli_json(&["status"])?;
    let tables = &status["neighbour_tables"];
    assert_eq!(tables["capacity"], 1021, "{status}");
    let v4 = &tables["tables"][0];
    assert_eq!(v4["family"], "ipv4", "{status}");
    assert_eq!(v4["previous"], thresholds_json(&before), "{status}");
    let required = neigh::required(1021, neigh::V4_ENTRIES, before);
    assert_eq!(v4["required"], thresholds_json(&required), "{status}");
    assert_eq!(
        tables["tables"].as_array().map(Vec::len),
        Some(1),
        "IPv4 only"
    );
    // The machine was not touched.
    assert_eq!(read_thresholds(Family::V4)?, before);
    assert_eq!(v4["current"], thresholds_json(&before), "{status}");

    if neigh::sufficient(before, required) {
        // Someone sized this machine's tables already: nothing to limit.
        assert_eq!(v4["outcome"], "sufficient", "{status}");
        assert!(v4["pod_limit"].is_null(), "{status}");
        eprintln!(
            "NOTE: the machine's neighbour tables ({before}) already hold 1021 pods; \
             the limit is not exercised in this run"
        );
        return Ok(());
    }
    assert_eq!(v4["outcome"], "not_raised", "{status}");
    assert!(
        v4["error"]
            .as_str()
            .is_some_and(|e| e.contains("not the initial one")),
        "{status}"
    );
    let limit = neigh::pod_limit(before, neigh::V4_ENTRIES);
    assert_eq!(v4["pod_limit"], limit, "{status}");
    ensure!(
        limit <= 1000,
        "the machine's gc_thresh3 {} allows {limit} pods: too many to create here",
        before.gc_thresh3
    );
    for i in 0..limit {
        daemon.create_pod(&format!("n{i}"), &["--no-pause"])?;
    }
    let out = daemon.cli(&["pod", "create", "one-too-many", "--no-pause"])?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for part in [
        "pod one-too-many: refused".to_string(),
        format!("ipv4 neighbour table holds entries for {limit} pods"),
        format!("net.ipv4.neigh.default.gc_thresh3 = {}", before.gc_thresh3),
        format!("net.ipv4.neigh.default.gc_thresh3={}", required.gc_thresh3),
    ] {
        assert!(stderr.contains(&part), "{part}: {stderr}");
    }
    let ls = daemon.cli_json(&["pod", "ls", "--json"])?;
    assert_eq!(
        ls.as_array().map(Vec::len),
        Some(limit as usize),
        "nothing of the refused pod"
    );
    Ok(())
}

/// Puts a threshold file back to `value` if it still holds `ours` (what the test set).
struct Restore {
    family: Family,
    previous: Thresholds,
    ours: Thresholds,
}

impl Drop for Restore {
    fn drop(&mut self) {
        let dir = format!(
            "/proc/sys/{}",
            neigh::sysctl_prefix(self.family).replace('.', "/")
        );
        // Lowest first, so gc_thresh1 <= gc_thresh2 <= gc_thresh3 holds at every step.
        for (file, previous, ours) in [
            ("gc_thresh1", self.previous.gc_thresh1, self.ours.gc_thresh1),
            ("gc_thresh2", self.previous.gc_thresh2, self.ours.gc_thresh2),
            ("gc_thresh3", self.previous.gc_thresh3, self.ours.gc_thresh3),
        ] {
            let path = Path::new(&dir).join(file);
            let now = std::fs::read_to_string(&path)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if previous != ours && now == Some(ours) {
                if let Err(e) = std::fs::write(&path, previous.to_string()) {
                    eprintln!("restoring {}: {e}", path.display());
                }
            }
        }
    }
}

#[test]
fn in_the_initial_namespace_the_tables_are_raised_never_lowered() -> Result<()> {
    if !require_root("in_the_initial_namespace_the_tables_are_raised_never_lowered") {
        return Ok(());
    }
    let _one_at_a_time = machine_tables();
    let before_v4 = read_thresholds(Family::V4)?;
    let before_v6 = read_thresholds(Family::V6)?;
    let scratch = ScratchDir::new("nhneigh")?;
    // A /17 (32765 pods) dual-stack: beyond the kernel's defaults by far; if this machine
    // is sized beyond even that, a /12 is (a sysctl holds up to 2^31 - 1).
    let mut pod_cidr_v4 = "10.128.0.0/17";
    if neigh::sufficient(
        before_v4,
        neigh::required(32765, neigh::V4_ENTRIES, before_v4),
    ) {
        pod_cidr_v4 = "10.128.0.0/12";
    }
    let config = Config {
        state_dir: scratch.path().join("state"),
        netns_dir: scratch.path().join("netns"),
        socket: scratch.path().join("api.sock"),
        pod_cidr_v4: pod_cidr_v4.parse()?,
        pod_cidr_v6: Some("fd00:10:128::/64".parse()?),
        pause_binary: nh_tests::pause_binary(),
        ..Config::default()
    };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    // Captured on this thread: the test process's namespace, the initial one.
    let system = LinuxSystem::new(&config, log.clone())?;
    let manager = PodManager::open(config, system, log)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(manager.size_neighbour_tables());
    let capacity = report.capacity;
    let mut restores = Vec::new();
    for table in &report.tables {
        restores.push(Restore {
            family: table.family,
            previous: table.previous,
            ours: table.current,
        });
    }
    assert_eq!(report.tables.len(), 2, "{report:?}");
    for (table, before) in report.tables.iter().zip([before_v4, before_v6]) {
        let family = table.family;
        let required = neigh::required(capacity, neigh::entries(family), before);
        assert_eq!(table.previous, before, "{family:?}");
        assert_eq!(table.required, required, "{family:?}");
        assert_eq!(table.outcome, Outcome::Raised, "{report:?}");
        assert_eq!(table.pod_limit, None);
        // Each value is the larger of the machine's and the required one: raised where
        // needed, never lowered (gc_thresh1 is required at the machine's own value).
        assert_eq!(table.current, neigh::raise(before, required), "{family:?}");
        assert!(table.current.gc_thresh3 > before.gc_thresh3, "{report:?}");
        assert_eq!(table.current.gc_thresh1, before.gc_thresh1);
        assert_eq!(read_thresholds(family)?, table.current, "{family:?}");
    }
    // Sizing again finds them sufficient and writes nothing.
    let again = runtime.block_on(manager.size_neighbour_tables());
    assert!(
        again
            .tables
            .iter()
            .all(|t| t.outcome == Outcome::Sufficient && t.current == t.previous),
        "{again:?}"
    );
    drop(restores);
    assert_eq!(read_thresholds(Family::V4)?, before_v4, "restored");
    assert_eq!(read_thresholds(Family::V6)?, before_v6, "restored");
    Ok(())
}

/// The benchmarks' guard raises the tables for a run and puts them back.
#[test]
fn a_benchmarks_raised_tables_are_put_back() -> Result<()> {
    if !require_root("a_benchmarks_raised_tables_are_put_back") {
        return Ok(());
    }
    let _one_at_a_time = machine_tables();
    let before = read_thresholds(Family::V4)?;
    let want = neigh::raise(before, neigh::required(4093, neigh::V4_ENTRIES, before));
    {
        let _raised = nh_tests::neighbour::RaisedTables::for_pod_cidr("10.244.0.0/20", false)?;
        assert_eq!(read_thresholds(Family::V4)?, want);
    }
    assert_eq!(read_thresholds(Family::V4)?, before);
    assert!(nh_tests::neighbour::RaisedTables::for_pod_cidr("10.244.0.0", false).is_err());
    Ok(())
}
