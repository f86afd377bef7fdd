//! The crash switch is test-only: production builds provably lack it.
//!
//! * Feature resolution: for `cargo build --workspace` (what `make build` and `make install`
//!   run, `--release` does not change features) and for `make bench`'s package set, cargo
//!   resolves `netns-holder` without `fault-injection`; with dev-dependencies (test builds)
//!   it has it, so the check is not vacuous.
//! * The production binary `netns-holder` never arms the switch, even when compiled with the
//!   feature: with `NETNS_HOLDER_FAULT` set it says it ignores the variable, and a create
//!   that would crash the test-only binary at step 0 succeeds.
//! * The release binary of `make build`, when present and newer than the sources, holds
//!   none of the switch's code (its abort message is not in the file) and ignores the
//!   variable too.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use anyhow::{Context, Result, ensure};
use netns_holder_core::executor::fault;
use nh_tests::invariants::{assert_nothing_left, create, on_node, remove};
use nh_tests::node::DaemonOptions;
use nh_tests::{require_root, target_dir, unique_name, workspace_root};

/// The text every armed crash writes; only compiled with the feature.
const ABORT_MARKER: &[u8] = b"FAULT INJECTION: ";
const FEATURE_LINE: &str = "netns-holder feature \"fault-injection\"";

/// `cargo tree ... -e EDGES -i netns-holder` from the workspace root.
fn cargo_tree(packages: &[&str], edges: &str) -> Result<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root()).args([
        "tree",
        "--locked",
        "--offline",
        "-e",
        edges,
        "-i",
        "netns-holder",
    ]);
    if packages.is_empty() {
        command.arg("--workspace");
    }
    for p in packages {
        command.args(["-p", p]);
    }
    let out = command.output().context("running cargo tree")?;
    ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn production_builds_resolve_netns_holder_without_fault_injection() -> Result<()> {
    // `make build` / `make install`: cargo build --workspace --release.
    let build = cargo_tree(&[], "no-dev,features")?;
    ensure!(
        !build.contains(FEATURE_LINE),
        "cargo build --workspace would enable fault-injection:\n{build}"
    );
    // `make bench`: cargo build -p netns-holder -p cri-hook -p nh-tests --release.
    let bench = cargo_tree(&["netns-holder", "cri-hook", "nh-tests"], "no-dev,features")?;
    ensure!(
        !bench.contains(FEATURE_LINE),
        "make bench's build would enable fault-injection:\n{bench}"
    );
    // Test builds do enable it (through nh-tests' dev-dependency): the check sees features.
    let test = cargo_tree(&[], "features")?;
    ensure!(
        test.contains(FEATURE_LINE),
        "test builds do not enable fault-injection, so this check proves nothing:\n{test}"
    );
    eprintln!(
        "  cargo build --workspace and make bench resolve netns-holder without \
         fault-injection; test builds with it"
    );
    Ok(())
}

/// The newest modification time under `dir` (recursively).
fn newest(dir: &Path) -> Result<SystemTime> {
    let mut latest = std::fs::metadata(dir)?.modified()?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        let time = if meta.is_dir() {
            newest(&entry.path())?
        } else {
            meta.modified()?
        };
        latest = latest.max(time);
    }
    Ok(latest)
}

/// Runs `binary` as the daemon with the switch's variable set (it would crash the test-only
/// binary before the first step of a create) and checks that it ignores it.
fn ignores_the_variable(test: &str, binary: PathBuf) -> Result<()> {
    let options = DaemonOptions {
        binary: Some(binary.clone()),
        env: vec![(
            fault::ENV.to_string(),
            "crash-after-step:create:0".to_string(),
        )],
        ..DaemonOptions::default()
    };
    on_node(test, options, |node, daemon| {
        ensure!(
            daemon.log().contains("ignoring NETNS_HOLDER_FAULT"),
            "{} does not say it ignores {}; log:\n{}",
            binary.display(),
            fault::ENV,
            daemon.log()
        );
        let pod = create(daemon, &unique_name("nofault"))?;
        ensure!(
            daemon.pid().is_some() && !daemon.log().contains("FAULT INJECTION"),
            "{} acted on {}; log:\n{}",
            binary.display(),
            fault::ENV,
            daemon.log()
        );
        remove(daemon, &pod.name)?;
        assert_nothing_left(node, daemon, &[pod])
    })
}

#[test]
fn the_production_binary_ignores_the_fault_variable() -> Result<()> {
    if !require_root("the_production_binary_ignores_the_fault_variable") {
        return Ok(());
    }
    // The debug binary of this test build: compiled with the feature, never armed.
    ignores_the_variable(
        "the_production_binary_ignores_the_fault_variable (debug)",
        nh_tests::node::netns_holder_binary(),
    )?;

    let release = target_dir().join("release").join("netns-holder");
    let sources = newest(&workspace_root().join("netns-holder").join("src"))?;
    let fresh = std::fs::metadata(&release)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= sources);
    if !fresh {
        eprintln!(
            "\n*** SKIPPED the release-binary half of the_production_binary_ignores_the_fault_variable: \
             {} is missing or older than netns-holder/src (run `make build` first). ***\n",
            release.display()
        );
        return Ok(());
    }
    let bytes = std::fs::read(&release)?;
    ensure!(
        !bytes.windows(ABORT_MARKER.len()).any(|w| w == ABORT_MARKER),
        "{} contains the crash switch's code",
        release.display()
    );
    ignores_the_variable(
        "the_production_binary_ignores_the_fault_variable (release)",
        release.clone(),
    )?;
    eprintln!(
        "  {}: no crash switch in the binary, NETNS_HOLDER_FAULT ignored",
        release.display()
    );
    Ok(())
}
