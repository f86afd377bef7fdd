//! Outside interference: someone deletes a pod's host veth, flushes the node's nftables
//! ruleset (inside the throwaway node namespace only), deletes a peer route, kills a pause,
//! unmounts a pod's namespace (its pause still holding it), and unmounts another pod's
//! namespace and kills its pause (so that namespace is gone for good).
//!
//! With the daemon running, `check` reports each of them by object, and `check --repair`
//! restores what can be restored (the veth wiring, the table with every element, the route,
//! a new pause in the same namespace, the bind mount from the pause still holding the
//! namespace) and cleanly removes the pod whose namespace is gone (no veth, pause, mount,
//! element or address left). The same interference done while the daemon is down is
//! repaired by the reconcile at start. Afterwards the survivors work (ping, host ports) and
//! the state file matches the kernel exactly.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nh_tests::invariants::{
    Pod, assert_node_matches, assert_pod_works, check_no_drift, inspect, on_node,
};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, mounts_under, pause_alive};
use nh_tests::{require_root, run_ok, unique_name};
use serde_json::Value;

use crate::common::host_port_answers;

const PEER_CIDR: &str = "10.246.99.0/24";
const PEER_VIA: &str = "192.168.76.2";

fn options() -> DaemonOptions {
    DaemonOptions {
        pod_cidr_v4: "10.246.0.0/24".into(),
        peers: vec![(PEER_CIDR.into(), PEER_VIA.into())],
        ..DaemonOptions::default()
    }
}

/// The pods of one round, by role.
struct Victims {
    /// Its host veth is deleted; it publishes a host port (and so also shows the flushed
    /// table being restored).
    veth: Pod,
    /// Its pause is killed.
    pause: Pod,
    /// Its namespace is unmounted; its pause still holds it.
    unmounted: Pod,
    /// Its namespace is unmounted and its pause killed: gone for good.
    dead: Pod,
}

impl Victims {
    fn create(daemon: &Daemon, port: u16) -> Result<Self> {
        let prefix = unique_name("oi");
        let pod = |role: &str, extra: &[&str]| -> Result<Pod> {
            Pod::from_json(&daemon.create_pod(&format!("{prefix}-{role}"), extra)?)
        };
        Ok(Self {
            veth: pod("veth", &["--publish", &format!("{port}:80")])?,
            pause: pod("pause", &[])?,
            unmounted: pod("umount", &[])?,
            dead: pod("dead", &[])?,
        })
    }

    fn survivors(&self) -> Vec<&Pod> {
        vec![&self.veth, &self.pause, &self.unmounted]
    }
}

fn kill(pid: u32) -> Result<()> {
    // SAFETY: plain kill of a pause our daemon started for this test's pod (checked live by
    // its argv[0] tag just before).
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    ensure!(rc == 0, "kill {pid}: {}", std::io::Error::last_os_error());
    Ok(())
}

fn umount(path: &Path) -> Result<()> {
    run_ok(Command::new("umount").arg(path))?;
    ensure!(
        !mounts_under(path).iter().any(|m| m == path),
        "{} is still mounted",
        path.display()
    );
    Ok(())
}

/// Does all the damage.
fn interfere(node: &Node, v: &Victims) -> Result<()> {
    node.run(&["ip", "link", "del", &v.veth.host_veth])?;
    node.run(&["nft", "flush", "ruleset"])?;
    node.run(&["ip", "route", "del", PEER_CIDR, "via", PEER_VIA])?;
    for pod in [&v.pause, &v.dead] {
        let pid = pod.pause_pid.context("no pause")?;
        ensure!(
            pause_alive(pid, &pod.id),
            "pause {pid} of {} not alive",
            pod.name
        );
    }
    umount(&v.unmounted.netns)?;
    umount(&v.dead.netns)?;
    for pod in [&v.dead, &v.pause] {
        let pid = pod.pause_pid.context("no pause")?;
        kill(pid)?;
        // SIGKILL is delivered asynchronously: wait until it has died (or is a zombie).
        ensure!(
            nh_tests::wait_until(Duration::from_secs(5), || !pause_alive(pid, &pod.id)),
            "pause {pid} of {} survived SIGKILL",
            pod.name
        );
    }
    Ok(())
}

/// What `check` printed: its exit code, the findings as `(object, problem)`, the JSON.
type CheckOutput = (Option<i32>, Vec<(String, String)>, Value);

/// Runs `check`.
fn findings(daemon: &Daemon) -> Result<CheckOutput> {
    let out = daemon.cli(&["check"])?;
    let json: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "check output: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let list = json["findings"]
        .as_array()
        .context("no findings array")?
        .iter()
        .map(|f| {
            (
                f["object"].as_str().unwrap_or_default().to_string(),
                f["problem"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    Ok((out.status.code(), list, json))
}

fn reported(list: &[(String, String)], object: &str, problem: &str) -> bool {
    list.iter().any(|(o, p)| o == object && p == problem)
}

/// After the repair (by `check --repair` or by the reconcile at start): the survivors work,
/// the dead pod is gone without a trace, the table, its element and the route are back.
fn assert_repaired(node: &Node, daemon: &Daemon, v: &Victims, port: u16) -> Result<()> {
    let mut live = Vec::new();
    for old in v.survivors() {
        let pod = inspect(daemon, &old.name)?
            .with_context(|| format!("pod {} was removed; it should be repaired", old.name))?;
        assert_pod_works(node, &pod)?;
        ensure!(
            pod.ips == old.ips && pod.netns == old.netns,
            "pod {} changed identity: {old:?} -> {pod:?}",
            old.name
        );
        live.push(pod);
    }
    let unmounted = &live[2];
    ensure!(
        unmounted.pause_pid == v.unmounted.pause_pid,
        "pod {}: the pause holding the unmounted namespace was replaced ({:?} -> {:?})",
        unmounted.name,
        v.unmounted.pause_pid,
        unmounted.pause_pid
    );
    ensure!(
        live[1].pause_pid != v.pause.pause_pid,
        "pod {}: the killed pause was not replaced",
        v.pause.name
    );
    {
        let _echo = Echo::start(&live[0].netns, Proto::Tcp, 80)?;
        host_port_answers(node, port)?;
    }
    ensure!(
        inspect(daemon, &v.dead.name)?.is_none(),
        "pod {} lost its namespace and pause but still exists",
        v.dead.name
    );
    ensure!(
        !v.dead.netns.exists(),
        "the mount point {} of the dead pod is left",
        v.dead.netns.display()
    );
    let routes = node.stdout(&["ip", "route", "show", PEER_CIDR])?;
    ensure!(
        routes.contains(&format!("via {PEER_VIA}")),
        "peer route not restored: {routes:?}"
    );
    assert_node_matches(node, daemon, &live)
}

#[test]
fn outside_interference_is_reported_and_repaired_by_check_repair() -> Result<()> {
    if !require_root("outside_interference_is_reported_and_repaired_by_check_repair") {
        return Ok(());
    }
    on_node(
        "outside_interference_is_reported_and_repaired_by_check_repair",
        options(),
        |node, daemon| {
            node.add_underlay("u0", &["192.168.76.1/24"])?;
            // The peer route needs its gateway on a link: restart now that u0 exists.
            daemon.stop()?;
            daemon.spawn()?;
            let port = 18080;
            let v = Victims::create(daemon, port)?;
            check_no_drift(daemon)?;
            // Pauses adopted from an earlier daemon are not its children: a killed one is
            // found by the periodic check (every 10 s), not at once by SIGCHLD, so `check`
            // gets to see it (unless that check runs first, which is fine too).
            daemon.stop()?;
            daemon.spawn()?;
            interfere(node, &v)?;

            let (code, list, json) = findings(daemon)?;
            ensure!(code == Some(1), "check exited with {code:?}: {json}");
            let table = "nftables table inet netns_holder";
            let expected = [
                (format!("link {}", v.veth.host_veth), "missing"),
                (table.to_string(), "missing"),
                (format!("route {PEER_CIDR} via {PEER_VIA}"), "missing"),
                (format!("netns {}", v.unmounted.netns.display()), "missing"),
                (format!("netns {}", v.dead.netns.display()), "missing"),
            ];
            for (object, problem) in &expected {
                ensure!(
                    reported(&list, object, problem),
                    "check does not report {object}: {problem}; it reports {list:?}"
                );
            }
            let pause_object = format!(
                "pause pid {} (start time",
                v.pause.pause_pid.unwrap_or_default()
            );
            let pause_reported = list
                .iter()
                .any(|(o, p)| o.starts_with(&pause_object) && p == "not_running");
            if !pause_reported {
                // The periodic check beat us to it: the pause must have been replaced.
                let now = inspect(daemon, &v.pause.name)?.context("pause pod gone")?;
                if now.pause_pid == v.pause.pause_pid {
                    bail!("check does not report the killed pause {pause_object}: {list:?}");
                }
            }
            eprintln!("  check reported {} findings: {list:?}", list.len());

            let out = daemon.cli(&["check", "--repair"])?;
            let repair: Value = serde_json::from_slice(&out.stdout)?;
            ensure!(
                out.status.success() && repair["remaining"] == serde_json::json!([]),
                "check --repair left drift ({}): {repair}",
                out.status
            );
            let removed = repair["repair"]["removed_dead"].to_string();
            ensure!(
                removed.contains(&v.dead.name),
                "the dead pod is not reported removed: {repair}"
            );
            assert_repaired(node, daemon, &v, port)
        },
    )
}

#[test]
fn outside_interference_while_down_is_repaired_at_start() -> Result<()> {
    if !require_root("outside_interference_while_down_is_repaired_at_start") {
        return Ok(());
    }
    on_node(
        "outside_interference_while_down_is_repaired_at_start",
        options(),
        |node, daemon| {
            node.add_underlay("u0", &["192.168.76.1/24"])?;
            daemon.stop()?;
            daemon.spawn()?;
            let port = 18081;
            let v = Victims::create(daemon, port)?;
            check_no_drift(daemon)?;
            daemon.kill9();
            interfere(node, &v)?;
            // Let the dead pod's namespace die (it dies with its last reference).
            std::thread::sleep(Duration::from_millis(100));
            daemon.spawn()?;
            check_no_drift(daemon)?;
            assert_repaired(node, daemon, &v, port)
        },
    )
}
