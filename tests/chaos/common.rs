//! What the chaos tests share: daemon options, the crash-then-restart dance around the
//! test-only `netns-holder-fault` daemon, and host port probes.

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use netns_holder_core::executor::fault;
use nh_tests::node::{Daemon, DaemonOptions, Node, fault_binary, tcp_probe};

/// The IPv6 pod CIDR of dual-stack runs (a ULA; inside throwaway namespaces only).
pub const POD_CIDR_V6: &str = "fd00:10:245::/64";

/// Options for a daemon running the test-only binary (unarmed until [`arm`]).
pub fn fault_options(dual_stack: bool) -> DaemonOptions {
    DaemonOptions {
        pod_cidr_v4: "10.245.0.0/24".into(),
        pod_cidr_v6: dual_stack.then(|| POD_CIDR_V6.into()),
        binary: Some(fault_binary()),
        ..DaemonOptions::default()
    }
}

/// Restarts `daemon` (SIGTERM, then spawn) with `spec` (e.g. `crash-after-step:create:3`)
/// armed, or unarmed with `None`.
pub fn restart_with_fault(daemon: &mut Daemon, spec: Option<&str>) -> Result<()> {
    if daemon.pid().is_some() {
        daemon.stop().context("stopping the daemon")?;
    }
    daemon.set_env(
        spec.map(|s| vec![(fault::ENV.to_string(), s.to_string())])
            .unwrap_or_default(),
    );
    let logged = daemon.log().len();
    daemon.spawn()?;
    if let Some(spec) = spec {
        // This start's lines only (the log is appended to across restarts).
        let log = daemon.log();
        let new = log.get(logged..).unwrap_or_default();
        let armed = format!("fault: {spec}");
        ensure!(
            new.lines()
                .any(|l| l.contains("FAULT INJECTION ARMED") && l.ends_with(&armed)),
            "the daemon did not report {spec} armed; log:\n{log}"
        );
    }
    Ok(())
}

/// Waits for the armed daemon to abort on `spec` (SIGABRT, the switch's line in its log).
pub fn expect_crash(daemon: &mut Daemon, spec: &str) -> Result<()> {
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .with_context(|| format!("the daemon did not crash on {spec}"))?;
    ensure!(
        status.signal() == Some(libc::SIGABRT),
        "the daemon exited with {status}, not SIGABRT, on {spec}"
    );
    let line = format!("FAULT INJECTION: {spec}: aborting");
    ensure!(
        daemon.log().contains(&line),
        "no {line:?} in the daemon log:\n{}",
        daemon.log()
    );
    Ok(())
}

/// The node reaches its host port `port` on 127.0.0.1 (DNATed to the pod's echo server).
pub fn host_port_answers(node: &Node, port: u16) -> Result<()> {
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    tcp_probe(&node.netns_path(), to)
        .with_context(|| format!("host port {port} does not answer on the node"))?;
    Ok(())
}
