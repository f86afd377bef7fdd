//! A pod attached to a runtime's namespace ends without the runtime saying so (containerd
//! sends no NRI Stop/Remove for sandboxes that existed before it restarted): the daemon sees
//! it from kernel events alone, with no API call, no Synchronize and no repair.
//!
//! * The runtime unmounts the sandbox namespace while the sandbox still holds it: within 5 s
//!   the pod's host port is withdrawn (a client is refused at once instead of reaching a
//!   stopped pod, and another pod may take the port).
//! * The namespace is destroyed (its last holder gone): within 5 s the pod is removed, its
//!   address freed, and `check` finds nothing.
//! * Both at once, as when containerd stops a sandbox: the published port does not stay a
//!   black hole (connections timing out) but is refused within 5 s.
//!
//! Real daemon in a throwaway node namespace, an outside client on an underlay veth, real
//! TCP. Private addresses inside the test's own namespaces only; everything removed on drop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, tcp_probe};
use nh_tests::{require_root, run_ok, wait_until};

const NODE_IP: &str = "192.168.73.1";
const CLIENT_IP: &str = "192.168.73.2";
const HOST_PORT: u16 = 18085;
const POD_PORT: u16 = 8080;
/// What the issue allows for noticing an ended pod.
const NOTICE_WITHIN: Duration = Duration::from_secs(5);

struct Site {
    daemon: Daemon,
    client: Node,
    _node: Node,
}

impl Site {
    fn new() -> Result<Self> {
        let node = Node::new()?;
        let client = Node::new()?;
        node.veth_to(
            &client,
            ("u0", &[&format!("{NODE_IP}/24")]),
            ("u0", &[&format!("{CLIENT_IP}/24")]),
        )?;
        let daemon = Daemon::start(
            &node,
            DaemonOptions {
                pod_cidr_v4: "10.73.0.0/24".into(),
                ..DaemonOptions::default()
            },
        )?;
        Ok(Self {
            daemon,
            client,
            _node: node,
        })
    }

    /// A runtime's sandbox: an `ip netns` namespace, attached as pod `name` with the host
    /// port, and a server in it on the pod port (whose socket holds the namespace, as a
    /// sandbox's processes do).
    fn sandbox(&self, name: &str) -> Result<(Node, Echo)> {
        let sandbox = Node::new()?;
        let netns = sandbox.netns_path();
        let out = self.daemon.cli(&[
            "pod",
            "attach",
            name,
            "--netns",
            netns.to_str().context("netns path")?,
            "--publish",
            &format!("{HOST_PORT}:{POD_PORT}/tcp"),
        ])?;
        ensure!(
            out.status.success(),
            "attach failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let echo = Echo::start(&netns, Proto::Tcp, POD_PORT)?;
        Ok((sandbox, echo))
    }

    fn node_port(&self) -> SocketAddr {
        SocketAddr::new(NODE_IP.parse().unwrap(), HOST_PORT)
    }

    fn pod(&self, name: &str) -> Result<Option<Value>> {
        let pods = self.daemon.cli_json(&["pod", "ls", "--json"])?;
        Ok(pods
            .as_array()
            .context("pod ls is a list")?
            .iter()
            .find(|p| p["name"] == name)
            .cloned())
    }

    /// Whether a connection from the client to the node port is refused at once (no
    /// listener, no forwarding) rather than answered or left to time out.
    fn refused(&self) -> bool {
        let started = Instant::now();
        match tcp_probe(&self.client.netns_path(), self.node_port()) {
            Ok(_) => false,
            Err(e) => {
                let refused = e.chain().any(|cause| {
                    cause
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
                });
                refused && started.elapsed() < Duration::from_secs(1)
            }
        }
    }

    fn no_drift(&self) -> Result<()> {
        let check = self.daemon.cli_json(&["check"])?;
        ensure!(check["drift"] == false, "check after the cleanup: {check}");
        Ok(())
    }
}

#[test]
fn an_unmounted_sandbox_loses_its_host_port_and_a_destroyed_one_its_pod() -> Result<()> {
    if !require_root("an_unmounted_sandbox_loses_its_host_port_and_a_destroyed_one_its_pod") {
        return Ok(());
    }
    let site = Site::new()?;
    let (sandbox, echo) = site.sandbox("sb")?;
    let seen = tcp_probe(&site.client.netns_path(), site.node_port())?;
    ensure!(seen.to_string() == CLIENT_IP, "source kept: {seen}");

    // The runtime unmounts the namespace; the sandbox (our server) still holds it.
    run_ok(std::process::Command::new("ip").args(["netns", "del", sandbox.name()]))?;
    let started = Instant::now();
    ensure!(
        wait_until(NOTICE_WITHIN, || {
            site.pod("sb")
                .ok()
                .flatten()
                .is_some_and(|p| p["ports_released"] == true)
        }),
        "host port not withdrawn within {NOTICE_WITHIN:?}; daemon log:\n{}",
        site.daemon.log()
    );
    eprintln!(
        "host port withdrawn {:?} after the unmount",
        started.elapsed()
    );
    ensure!(site.refused(), "the withdrawn port still answers or hangs");
    // The port is free for another pod.
    let other = Node::new()?;
    let out = site.daemon.cli(&[
        "pod",
        "attach",
        "other",
        "--netns",
        other.netns_path().to_str().unwrap(),
        "--publish",
        &format!("{HOST_PORT}:{POD_PORT}/tcp"),
    ])?;
    ensure!(
        out.status.success(),
        "the freed port was refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    site.daemon.cli_json(&["pod", "rm", "other"])?;

    // The sandbox's last holder goes: the namespace is destroyed, and the pod with it.
    drop(echo);
    let started = Instant::now();
    ensure!(
        wait_until(NOTICE_WITHIN, || site.pod("sb").ok().flatten().is_none()),
        "pod not removed within {NOTICE_WITHIN:?} of its namespace's end; daemon log:\n{}",
        site.daemon.log()
    );
    eprintln!(
        "pod removed {:?} after its namespace ended",
        started.elapsed()
    );
    let status = site.daemon.cli_json(&["status"])?;
    ensure!(
        status["pods"] == 0 && status["host_ports"] == 0,
        "status: {status}"
    );
    site.no_drift()?;
    ensure!(
        site.daemon
            .log()
            .contains("without a word from the runtime"),
        "the daemon says what it did"
    );
    drop(sandbox);
    Ok(())
}

#[test]
fn a_stopped_sandbox_leaves_no_black_hole() -> Result<()> {
    if !require_root("a_stopped_sandbox_leaves_no_black_hole") {
        return Ok(());
    }
    let site = Site::new()?;
    let (sandbox, echo) = site.sandbox("stopped")?;
    tcp_probe(&site.client.netns_path(), site.node_port())?;
    // containerd's StopPodSandbox after a restart: the sandbox killed, the namespace
    // unmounted, and no word to any plugin.
    drop(echo);
    run_ok(std::process::Command::new("ip").args(["netns", "del", sandbox.name()]))?;
    let started = Instant::now();
    ensure!(
        wait_until(NOTICE_WITHIN, || site
            .pod("stopped")
            .ok()
            .flatten()
            .is_none()),
        "pod not removed {NOTICE_WITHIN:?} after its sandbox stopped; daemon log:\n{}",
        site.daemon.log()
    );
    eprintln!("pod removed {:?} after the stop", started.elapsed());
    // With the pod's namespace gone, a port still forwarded to its address would time out
    // (nobody answers ARP for it): refused at once means the forwarding is gone.
    ensure!(site.refused(), "the node port is a black hole");
    let status = site.daemon.cli_json(&["status"])?;
    ensure!(status["host_ports"] == 0, "status: {status}");
    site.no_drift()?;
    Ok(())
}
