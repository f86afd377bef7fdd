//! End-to-end tests of the real daemon: `netns-holder serve` inside a throwaway node network
//! namespace ([`nh_tests::node`]), driven through its CLI as an operator or an adapter would.
//!
//! The Kubernetes network model:
//! * pod to pod on one node, IPv4 and IPv6: ping both ways; TCP where the receiver sees the
//!   sender's pod IP (no NAT), the sender's socket is bound to that same IP, and each pod's
//!   own `eth0` carries exactly the addresses the API reported;
//! * node to pod (ping, and TCP that arrives from the bridge address) and pod to node (ping
//!   of the gateway, which is the node bridge's address and the pod's default route);
//! * two runc app containers joined to one pod's namespace by its bind-mount path reach
//!   each other on localhost and both see `eth0` with the pod IP.
//!
//! Lifecycle:
//! * 200 pods created, then removed, leave no host veth, no address allocation, no bind
//!   mount and no pause process;
//! * `kill -9` of the daemon at swept points of a create, then a restart: every pod is
//!   either fully working or completely gone (and never gone if its create was answered);
//! * 50 concurrent creates get 50 distinct, working addresses, and `gc` removes them all;
//! * a dead pause is restarted at once, whether it is the daemon's child or was adopted
//!   after a daemon restart;
//! * a pod CIDR overlapping an address or a route of the node stops the daemon at start,
//!   naming both, before it makes anything.
//!
//! Every test runs its own node and daemon and uses unique pod names; the guards remove
//! everything even when an assertion fails, and a failure prints the daemon's log.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nh_tests::invariants::{
    Family, Pod, addresses, assert_node_matches, assert_nothing_left, assert_pod_works,
    check_no_drift, create, inspect, netns_id, on_node, ping, pod_id_of, remove,
};
use nh_tests::node::{
    Daemon, DaemonOptions, Node, in_netns, in_netns_thread, mounts_under, netns_holder_binary,
    pause_processes,
};
use nh_tests::oci::{Bundle, ContainerSpec, Namespace, Runner, Runtime};
use nh_tests::{ChildGuard, ScratchDir, busybox_rootfs, require_root, run_ok, unique_name};
use serde_json::Value;

/// The IPv6 pod CIDR of the dual-stack tests (a ULA: never routed off the machine).
const POD_CIDR_V6: &str = "fd00:10:244::/64";

/// How long a TCP connect or read may take between pods of one node.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long an app container may take to finish its work.
const CONTAINER_TIMEOUT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------- helpers
// (Pods, invariants and the node checks are shared: `nh_tests::invariants`.)

fn dual_stack() -> DaemonOptions {
    DaemonOptions {
        pod_cidr_v6: Some(POD_CIDR_V6.into()),
        ..DaemonOptions::default()
    }
}

/// The gateway of the default route of `family` in the namespace at `netns`.
fn default_gateway(netns: &Path, family: Family) -> Result<IpAddr> {
    let out = run_ok(&mut in_netns(
        netns,
        &["ip", family.ping_flag(), "-j", "route", "show", "default"],
    ))?;
    let routes: Value = serde_json::from_slice(&out.stdout).context("ip -j route")?;
    routes
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["gateway"].as_str())
        .with_context(|| format!("no {family:?} default route with a gateway: {routes}"))?
        .parse()
        .context("gateway")
}

/// What one TCP connection looked like from both ends.
#[derive(Debug)]
struct TcpSeen {
    /// The client socket's own address.
    client_local: IpAddr,
    /// The peer address the server's accepted socket reports.
    server_peer: IpAddr,
    /// The server socket's own address.
    server_local: IpAddr,
}

/// Connects from the namespace at `from` to `to_ip` on a listener in the namespace at
/// `to`, sends a token, and reports the addresses both ends see.
fn tcp(from: &Path, to: &Path, to_ip: IpAddr) -> Result<TcpSeen> {
    let listener = in_netns_thread(to, || {
        TcpListener::bind(SocketAddr::new(to_ip, 0))
            .with_context(|| format!("binding a listener to {to_ip} in {}", to.display()))
    })?;
    let target = SocketAddr::new(to_ip, listener.local_addr()?.port());
    let token = format!("token from {}", from.display());
    let client = in_netns_thread(from, || {
        let mut stream = TcpStream::connect_timeout(&target, TCP_TIMEOUT)
            .with_context(|| format!("connecting to {target} from {}", from.display()))?;
        stream.write_all(token.as_bytes())?;
        stream.shutdown(Shutdown::Write)?;
        Ok(stream)
    })?;
    // The handshake is complete (the connection waits in the backlog): accept it.
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + TCP_TIMEOUT;
    let (mut conn, peer) = loop {
        match listener.accept() {
            Ok(accepted) => break accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => bail!("accepting on {target}: {e}"),
        }
    };
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(TCP_TIMEOUT))?;
    let mut received = String::new();
    conn.read_to_string(&mut received)?;
    ensure!(
        received == token,
        "the listener on {target} received {received:?}, not {token:?}"
    );
    Ok(TcpSeen {
        client_local: client.local_addr()?.ip(),
        server_peer: peer.ip(),
        server_local: conn.local_addr()?.ip(),
    })
}

// ------------------------------------------------------------------------------- the model

/// Pod to pod (ping both ways, TCP both ways without NAT), node to pod, pod to node, with
/// the addresses of `family`.
fn pod_network(node: &Node, daemon: &Daemon, family: Family) -> Result<()> {
    let a = create(daemon, &unique_name("pa"))?;
    let b = create(daemon, &unique_name("pb"))?;
    let (ip_a, ip_b) = (a.ip(family)?, b.ip(family)?);
    ensure!(ip_a != ip_b, "both pods got {ip_a}");

    // Each pod's own view of its addresses is what the API reported.
    for pod in [&a, &b] {
        let seen = addresses(&pod.netns, "eth0")?;
        let reported: BTreeSet<(IpAddr, u8)> = pod.ips.iter().copied().collect();
        ensure!(
            seen == reported,
            "pod {}: eth0 has {seen:?}, the API reported {reported:?}",
            pod.name
        );
    }

    // Pod to pod, both ways.
    ping(&a.netns, ip_b).context("pod A to pod B")?;
    ping(&b.netns, ip_a).context("pod B to pod A")?;
    for (from, to) in [(&a, &b), (&b, &a)] {
        let (from_ip, to_ip) = (from.ip(family)?, to.ip(family)?);
        let seen = tcp(&from.netns, &to.netns, to_ip)?;
        ensure!(
            seen.server_peer == from_ip,
            "pod {} saw the connection from pod {} come from {}, not from its pod IP {from_ip} (NAT?)",
            to.name,
            from.name,
            seen.server_peer
        );
        ensure!(
            seen.client_local == from_ip,
            "pod {} connected from {}, not from its pod IP {from_ip}",
            from.name,
            seen.client_local
        );
        ensure!(
            seen.server_local == to_ip,
            "pod {} accepted on {}, not on its pod IP {to_ip}",
            to.name,
            seen.server_local
        );
        eprintln!(
            "  {family:?} TCP {} ({}) -> {} ({}): the receiver sees the peer {}",
            from.name, seen.client_local, to.name, seen.server_local, seen.server_peer
        );
    }

    // Node and pods: the gateway is the bridge's address on the node (routed: the link-local
    // gateway, while the node's own pod-CIDR address sits on `lo`) and the pods' default
    // route; the node reaches the pods from that address, the pods reach the node on it.
    let routed = nh_tests::node::routed();
    let node_link = if routed { "lo" } else { daemon.bridge() };
    let node_addresses: BTreeSet<IpAddr> = addresses(&node.netns_path(), node_link)?
        .into_iter()
        .map(|(ip, _)| ip)
        .filter(|ip| !ip.is_loopback())
        .collect();
    for pod in [&a, &b] {
        let ip = pod.ip(family)?;
        let gateway = pod.gateway(family)?;
        let node_address = if routed {
            let link_local: IpAddr = match family {
                Family::V4 => "169.254.1.1".parse()?,
                Family::V6 => "fe80::1".parse()?,
            };
            ensure!(
                gateway == link_local,
                "pod {}: gateway {gateway}, expected the routed datapath's {link_local}",
                pod.name
            );
            *node_addresses
                .iter()
                .find(|a| a.is_ipv4() == ip.is_ipv4())
                .with_context(|| {
                    format!("no node address of the pod's family on lo: {node_addresses:?}")
                })?
        } else {
            ensure!(
                node_addresses.contains(&gateway),
                "pod {}: gateway {gateway} is not an address of bridge {} ({node_addresses:?})",
                pod.name,
                daemon.bridge()
            );
            gateway
        };
        let route = default_gateway(&pod.netns, family)?;
        ensure!(
            route == gateway,
            "pod {}: default route via {route}, the API reported gateway {gateway}",
            pod.name
        );
        ping(&node.netns_path(), ip).with_context(|| format!("node to pod {}", pod.name))?;
        ping(&pod.netns, node_address).with_context(|| format!("pod {} to node", pod.name))?;
        let seen = tcp(&node.netns_path(), &pod.netns, ip)?;
        ensure!(
            seen.server_peer == node_address && seen.client_local == node_address,
            "node to pod {}: the node connected from {} and the pod saw {}, expected the \
             node address {node_address} on both ends",
            pod.name,
            seen.client_local,
            seen.server_peer
        );
    }

    remove(daemon, &a.name)?;
    remove(daemon, &b.name)?;
    assert_nothing_left(node, daemon, &[a, b])
}

#[test]
fn pod_network_ipv4() -> Result<()> {
    if !require_root("pod_network_ipv4") {
        return Ok(());
    }
    on_node(
        "pod_network_ipv4",
        DaemonOptions::default(),
        |node, daemon| pod_network(node, daemon, Family::V4),
    )
}

#[test]
fn pod_network_ipv6() -> Result<()> {
    if !require_root("pod_network_ipv6") {
        return Ok(());
    }
    on_node("pod_network_ipv6", dual_stack(), |node, daemon| {
        pod_network(node, daemon, Family::V6)
    })
}

/// The node invariants tell an adopted pool pair that no pod names (a leak: its pod end is
/// up, so its host end has a carrier) from the pool's own pairs (pod ends down), although
/// both carry a pool name.
#[test]
fn the_node_invariants_catch_a_pool_named_pair_that_no_pod_names() -> Result<()> {
    let test = "the_node_invariants_catch_a_pool_named_pair_that_no_pod_names";
    if !require_root(test) {
        return Ok(());
    }
    on_node(test, DaemonOptions::default(), |node, daemon| {
        let pod = create(daemon, &unique_name("leak"))?;
        assert_node_matches(node, daemon, std::slice::from_ref(&pod))?;
        // A pool-shaped name of no daemon's pool (salt and counter all f), its peer in the
        // pod's namespace, both ends up: what an adopted pair left behind looks like.
        let leaked = "nhvffffffffffff";
        ensure!(nh_tests::invariants::is_pool_link(leaked));
        let pid = pod.pause_pid.context("the pod has no pause")?.to_string();
        node.run(&[
            "ip", "link", "add", leaked, "type", "veth", "peer", "name", "leak0", "netns", &pid,
        ])?;
        let checked = (|| -> Result<()> {
            node.run(&["ip", "link", "set", leaked, "up"])?;
            run_ok(&mut in_netns(
                &pod.netns,
                &["ip", "link", "set", "leak0", "up"],
            ))?;
            ensure!(
                nh_tests::wait_until(Duration::from_secs(5), || {
                    node.link_states()
                        .is_ok_and(|links| links.iter().any(|l| l.name == leaked && l.carrier))
                }),
                "{leaked} never got a carrier"
            );
            let error = match assert_node_matches(node, daemon, std::slice::from_ref(&pod)) {
                Ok(()) => bail!("the invariants took {leaked}, up with a carrier, for the pool's"),
                Err(e) => format!("{e:#}"),
            };
            ensure!(
                error.contains("pool-named host veths with carrier") && error.contains(leaked),
                "the invariants failed for another reason: {error}"
            );
            // Without a carrier (its pod end down), it is one of the pool's own pairs.
            run_ok(&mut in_netns(
                &pod.netns,
                &["ip", "link", "set", "leak0", "down"],
            ))?;
            assert_node_matches(node, daemon, std::slice::from_ref(&pod))
        })();
        node.run(&["ip", "link", "del", leaked])?;
        checked?;
        remove(daemon, &pod.name)?;
        assert_nothing_left(node, daemon, &[pod])
    })
}

#[test]
fn pause_runs_without_any_privilege() -> Result<()> {
    if !require_root("pause_runs_without_any_privilege") {
        return Ok(());
    }
    on_node(
        "pause_runs_without_any_privilege",
        DaemonOptions::default(),
        |node, daemon| {
            let pod = create(daemon, &unique_name("priv"))?;
            let pid = pod.pause_pid.context("the pod has no pause")?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            let field = |key: &str| -> Result<String> {
                status
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix(&format!("{key}:"))
                            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                    })
                    .with_context(|| format!("{key} missing from /proc/{pid}/status"))
            };
            ensure!(
                field("Uid")? == "65535 65535 65535 65535",
                "pause Uid: {}",
                field("Uid")?
            );
            ensure!(
                field("Gid")? == "65535 65535 65535 65535",
                "pause Gid: {}",
                field("Gid")?
            );
            ensure!(
                field("Groups")?.is_empty(),
                "pause supplementary groups: {}",
                field("Groups")?
            );
            for caps in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
                ensure!(
                    field(caps)? == "0000000000000000",
                    "pause {caps}: {}",
                    field(caps)?
                );
            }
            ensure!(
                field("NoNewPrivs")? == "1",
                "pause NoNewPrivs: {}",
                field("NoNewPrivs")?
            );
            // Unprivileged, it still holds the pod's namespace and the pod still works.
            ensure!(netns_id(&pod.netns)? == netns_id(Path::new(&format!("/proc/{pid}/ns/net")))?);
            assert_pod_works(node, &pod)?;
            remove(daemon, &pod.name)?;
            assert_nothing_left(node, daemon, &[pod])
        },
    )
}

#[test]
fn daemon_threads_keep_only_the_capabilities_they_need() -> Result<()> {
    if !require_root("daemon_threads_keep_only_the_capabilities_they_need") {
        return Ok(());
    }
    // NET_ADMIN (12), SYS_ADMIN (21), SYS_PTRACE (19), DAC_READ_SEARCH (2), KILL (5),
    // SETUID (7), SETGID (6).
    let expected = format!(
        "{:016x}",
        (1u64 << 12) | (1 << 21) | (1 << 19) | (1 << 2) | (1 << 5) | (1 << 7) | (1 << 6)
    );
    on_node(
        "daemon_threads_keep_only_the_capabilities_they_need",
        DaemonOptions::default(),
        |node, daemon| {
            // Exercise it first, so every worker thread exists and has done privileged work.
            let pod = create(daemon, &unique_name("caps"))?;
            assert_pod_works(node, &pod)?;
            let pid = daemon.pid().context("daemon not running")?;
            let mut threads = 0;
            for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
                let status = std::fs::read_to_string(task?.path().join("status"))?;
                let field = |key: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{key}:\t")))
                        .unwrap_or("?")
                        .to_string()
                };
                for (set, want) in [
                    ("CapEff", &expected),
                    ("CapPrm", &expected),
                    ("CapBnd", &expected),
                ] {
                    ensure!(
                        field(set) == *want,
                        "thread {}: {set} {} want {want}",
                        field("Pid"),
                        field(set)
                    );
                }
                for set in ["CapInh", "CapAmb"] {
                    ensure!(
                        field(set) == "0000000000000000",
                        "thread {}: {set} {}",
                        field("Pid"),
                        field(set)
                    );
                }
                threads += 1;
            }
            ensure!(
                threads > 1,
                "expected a multi-threaded daemon, saw {threads} thread(s)"
            );
            remove(daemon, &pod.name)?;
            assert_nothing_left(node, daemon, &[pod])
        },
    )
}

/// `ip netns del` and unmount of what the attach test made, even when it fails.
struct AttachFixture {
    netns_name: String,
    bind: std::path::PathBuf,
    sleeper: Option<ChildGuard>,
}

impl Drop for AttachFixture {
    fn drop(&mut self) {
        self.sleeper = None;
        let _ = Command::new("umount").arg(&self.bind).status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns_name])
            .status();
    }
}

#[test]
fn attach_accepts_only_pod_namespaces_in_their_places() -> Result<()> {
    if !require_root("attach_accepts_only_pod_namespaces_in_their_places") {
        return Ok(());
    }
    on_node(
        "attach_accepts_only_pod_namespaces_in_their_places",
        DaemonOptions::default(),
        |node, daemon| {
            let scratch = ScratchDir::new("att")?;
            let mut fixture = AttachFixture {
                netns_name: unique_name("nha"),
                bind: scratch.path().join("elsewhere"),
                sleeper: None,
            };
            run_ok(Command::new("ip").args(["netns", "add", &fixture.netns_name]))?;
            let system_path = std::path::PathBuf::from("/run/netns").join(&fixture.netns_name);
            // The same real namespace, bind-mounted outside the accepted directories.
            std::fs::write(&fixture.bind, b"")?;
            run_ok(
                Command::new("mount")
                    .arg("--bind")
                    .arg(&system_path)
                    .arg(&fixture.bind),
            )?;
            // A symlink inside the daemon's own netns dir.
            std::fs::create_dir_all(daemon.netns_dir())?;
            let link = daemon.netns_dir().join("sneaky");
            std::os::unix::fs::symlink(&system_path, &link)?;
            let daemon_pid = daemon.pid().context("daemon pid")?;
            let refusals = [
                (fixture.bind.clone(), "not in"),
                (link.clone(), "symlink"),
                (
                    std::path::PathBuf::from(format!("/proc/{daemon_pid}/ns/net")),
                    "the daemon's own",
                ),
                (std::path::PathBuf::from("/proc/self/ns/net"), "symlink"),
            ];
            // The namespace pool fills by itself meanwhile, and attaches never take from it.
            let status_but_pool = || -> Result<Value> {
                let mut status = daemon.cli_json(&["status"])?;
                if let Some(fields) = status.as_object_mut() {
                    fields.remove("netns_pool");
                }
                Ok(status)
            };
            let before = status_but_pool()?;
            for (path, why) in &refusals {
                let out = daemon.cli(&[
                    "pod",
                    "attach",
                    "refused",
                    "--netns",
                    &path.display().to_string(),
                ])?;
                let stderr = String::from_utf8_lossy(&out.stderr);
                ensure!(
                    !out.status.success(),
                    "attach of {} was accepted",
                    path.display()
                );
                ensure!(
                    stderr.contains(why) && stderr.contains(&path.display().to_string()),
                    "attach of {}: want an error naming it and saying {why:?}, got {stderr}",
                    path.display()
                );
            }
            ensure!(
                status_but_pool()? == before,
                "a refused attach changed the daemon's state"
            );
            ensure!(
                node.links()?.iter().all(|l| !l.starts_with("nh")
                    || l.as_str() == daemon.bridge()
                    || nh_tests::invariants::is_pool_link(l)),
                "a refused attach left a link"
            );
            std::fs::remove_file(&link)?;

            // Accepted: a namespace in /run/netns, and a process's own namespace link.
            let named = daemon.cli_json(&[
                "pod",
                "attach",
                "named",
                "--netns",
                &system_path.display().to_string(),
            ])?;
            ensure!(
                named["netns"] == system_path.display().to_string(),
                "{named}"
            );
            // The name now stands for a new namespace: the pod's own is gone, and the new one
            // is a stranger that check must not inspect and repair must not wire.
            run_ok(Command::new("ip").args(["netns", "del", &fixture.netns_name]))?;
            run_ok(Command::new("ip").args(["netns", "add", &fixture.netns_name]))?;
            let out = daemon.cli(&["check"])?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            ensure!(
                !out.status.success() && stdout.contains("names another namespace"),
                "check of a replaced namespace: {} {stdout}",
                out.status
            );
            let repaired = daemon.cli_json(&["check", "--repair"])?;
            ensure!(
                repaired["repair"]["removed_dead"] == serde_json::json!(["named"]),
                "{repaired}"
            );
            let inside = String::from_utf8_lossy(
                &run_ok(Command::new("ip").args(["-n", &fixture.netns_name, "-o", "link"]))?.stdout,
            )
            .into_owned();
            ensure!(
                inside.lines().count() == 1 && inside.contains("lo:"),
                "repair touched the new namespace: {inside}"
            );
            let named = daemon.cli_json(&[
                "pod",
                "attach",
                "named",
                "--netns",
                &system_path.display().to_string(),
            ])?;
            ensure!(
                named["netns"] == system_path.display().to_string(),
                "{named}"
            );
            remove(daemon, "named")?;
            fixture.sleeper = Some(ChildGuard::spawn(
                Command::new("unshare").args(["--net", "sleep", "60"]),
            )?);
            let pid = fixture.sleeper.as_ref().map(ChildGuard::pid).unwrap_or(0);
            let proc_path = format!("/proc/{pid}/ns/net");
            ensure!(
                nh_tests::wait_until(Duration::from_secs(5), || netns_id(Path::new(&proc_path))
                    .ok()
                    .zip(netns_id(Path::new("/proc/self/ns/net")).ok())
                    .is_some_and(|(a, b)| a != b)),
                "unshare --net never entered its namespace"
            );
            let by_pid = daemon.cli_json(&["pod", "attach", "bypid", "--netns", &proc_path])?;
            ensure!(
                by_pid["ips"].as_array().is_some_and(|ips| !ips.is_empty()),
                "{by_pid}"
            );
            remove(daemon, "bypid")?;
            check_no_drift(daemon)
        },
    )
}

/// Kills the pod's pause with SIGKILL and waits until the daemon reports a new, live pause
/// holding the same namespace; returns it.
fn kill_pause_and_await_restart(daemon: &Daemon, pod: &Pod, within: Duration) -> Result<u32> {
    let old = pod.pause_pid.context("the pod has no pause")?;
    // SAFETY: plain kill of the pause our daemon started for this test's pod.
    let killed = unsafe { libc::kill(old as libc::pid_t, libc::SIGKILL) };
    ensure!(
        killed == 0,
        "kill {old}: {}",
        std::io::Error::last_os_error()
    );
    let deadline = Instant::now() + within;
    loop {
        if let Some(now) = inspect(daemon, &pod.name)?
            && let Some(new) = now.pause_pid
            && new != old
            && Path::new(&format!("/proc/{new}")).exists()
        {
            ensure!(
                netns_id(&pod.netns)? == netns_id(Path::new(&format!("/proc/{new}/ns/net")))?,
                "the restarted pause {new} is not in the pod's namespace"
            );
            return Ok(new);
        }
        ensure!(
            Instant::now() < deadline,
            "pause {old} of {} not restarted within {within:?}",
            pod.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_dead_pause_is_restarted_into_the_same_namespace() -> Result<()> {
    if !require_root("a_dead_pause_is_restarted_into_the_same_namespace") {
        return Ok(());
    }
    on_node(
        "a_dead_pause_is_restarted_into_the_same_namespace",
        DaemonOptions::default(),
        |node, daemon| {
            let mut pod = create(daemon, &unique_name("phoenix"))?;
            // Our own child: SIGCHLD makes the daemon restart it at once.
            pod.pause_pid = Some(kill_pause_and_await_restart(
                daemon,
                &pod,
                Duration::from_secs(3),
            )?);
            check_no_drift(daemon)?;
            assert_pod_works(node, &pod)?;
            // After a daemon restart the pause is no longer its child: its pidfd exit watch
            // makes the daemon restart it at once too (the 10 s periodic check would miss
            // this bound).
            daemon.stop()?;
            daemon.spawn()?;
            pod.pause_pid = Some(kill_pause_and_await_restart(
                daemon,
                &pod,
                Duration::from_secs(3),
            )?);
            // The restarted pause is this daemon's child again: SIGCHLD covers it.
            pod.pause_pid = Some(kill_pause_and_await_restart(
                daemon,
                &pod,
                Duration::from_secs(3),
            )?);
            check_no_drift(daemon)?;
            assert_pod_works(node, &pod)?;
            remove(daemon, &pod.name)?;
            assert_nothing_left(node, daemon, &[pod])
        },
    )
}

#[test]
fn a_pod_cidr_overlapping_the_nodes_networks_stops_the_daemon_at_start() -> Result<()> {
    if !require_root("a_pod_cidr_overlapping_the_nodes_networks_stops_the_daemon_at_start") {
        return Ok(());
    }
    let node = Node::new()?;
    node.add_underlay("nhu0", &["10.244.0.77/16", "fd00:99::5/64"])?;
    node.run(&["ip", "route", "add", "10.245.0.0/16", "dev", "nhu0"])?;
    node.run(&["ip", "route", "add", "default", "via", "10.244.0.1"])?;
    let links_before = node.links()?;
    let refused = [
        (
            DaemonOptions::default(),
            "pod_cidr_v4 10.244.0.0/24 overlaps the address 10.244.0.77/16 on \"nhu0\"",
        ),
        (
            DaemonOptions {
                pod_cidr_v4: "10.245.1.0/24".into(),
                ..DaemonOptions::default()
            },
            "pod_cidr_v4 10.245.1.0/24 overlaps the route 10.245.0.0/16 dev \"nhu0\"",
        ),
        (
            DaemonOptions {
                pod_cidr_v4: "10.246.0.0/24".into(),
                pod_cidr_v6: Some("fd00:99::/80".into()),
                ..DaemonOptions::default()
            },
            "pod_cidr_v6 fd00:99::/80 overlaps the address fd00:99::5/64 on \"nhu0\"",
        ),
    ];
    for (options, expected) in refused {
        let error = match Daemon::start(&node, options) {
            Ok(_) => bail!("the daemon started although {expected}"),
            Err(e) => format!("{e:#}"),
        };
        ensure!(
            error.contains(expected),
            "the refusal does not say {expected:?}:\n{error}"
        );
        let links = node.links()?;
        ensure!(
            links == links_before,
            "the daemon made links before refusing: {links_before:?} -> {links:?}"
        );
    }
    // Disjoint from every address and route of the node (the default route does not
    // count): the daemon starts and serves.
    let daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.246.0.0/24".into(),
            pod_cidr_v6: Some("fd00:98::/64".into()),
            ..DaemonOptions::default()
        },
    )?;
    let pod = create(&daemon, &unique_name("clear"))?;
    remove(&daemon, &pod.name)?;
    // A restart finds its own bridge (carrying addresses inside the pod CIDRs) and its
    // routes: ours, not an overlap.
    let mut daemon = daemon;
    daemon.stop()?;
    daemon.spawn()?;
    assert_nothing_left(&node, &daemon, &[pod])
}

/// The `inet` addresses in `busybox ip -o addr show` output, as `ip/prefix` strings.
fn busybox_inet(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next().map(str::to_string)
        })
        .collect()
}

#[test]
fn two_runc_containers_share_one_pod() -> Result<()> {
    if !require_root("two_runc_containers_share_one_pod") {
        return Ok(());
    }
    if !Runtime::Runc.is_available() {
        eprintln!("\n*** SKIPPED two_runc_containers_share_one_pod: runc is not installed. ***\n");
        return Ok(());
    }
    on_node(
        "two_runc_containers_share_one_pod",
        DaemonOptions::default(),
        |node, daemon| {
            let pod = create(daemon, &unique_name("app"))?;
            let (ip, prefix) = *pod
                .ips
                .iter()
                .find(|(ip, _)| ip.is_ipv4())
                .context("no IPv4")?;
            let pod_cidr = format!("{ip}/{prefix}");
            let pod_ns = netns_id(&pod.netns)?;

            let scratch = ScratchDir::new("apps")?;
            let rootfs = scratch.path().join("rootfs");
            busybox_rootfs(&rootfs)?;
            let runner = Runner::new(Runtime::Runc)?;
            // Both apps join the pod's namespace by the bind-mount path the API reported.
            let spec = |script: String| {
                ContainerSpec::new(["/bin/sh", "-c", script.as_str()])
                    .rootfs(&rootfs)
                    .readonly_root(true)
                    .join_namespace(Namespace::Network, &pod.netns)
            };
            let port: u16 = 18081;
            let token = format!("hello-from-{}", pod.name);

            // App A: prints its eth0, then serves the token once on 127.0.0.1 only.
            let server_bundle = Bundle::create(scratch.path().join("server"))?;
            server_bundle.write_config(&spec(format!(
                "busybox ip -o addr show eth0; \
                 exec busybox nc -l -p {port} 127.0.0.1 -e busybox echo {token}"
            )))?;
            let mut server = runner.spawn("server", &server_bundle)?;
            let server_pid = server.pid()?;
            let server_ns = Namespace::Network.id_of(server_pid)?;
            ensure!(
                server_ns == pod_ns,
                "app A is in {server_ns}, the pod's bind mount is {pod_ns}"
            );
            let listening = format!("0100007F:{port:04X} 00000000:0000 0A");
            ensure!(
                nh_tests::wait_until(CONTAINER_TIMEOUT, || {
                    std::fs::read_to_string(format!("/proc/{server_pid}/net/tcp"))
                        .is_ok_and(|t| t.contains(&listening))
                }),
                "app A does not listen on 127.0.0.1:{port}: {}",
                server.stderr().unwrap_or_default()
            );

            // App B: prints its eth0 and namespace, then fetches the token over localhost.
            let client_bundle = Bundle::create(scratch.path().join("client"))?;
            client_bundle.write_config(&spec(format!(
                "busybox ip -o addr show eth0; busybox readlink /proc/self/ns/net; \
                 echo ---; busybox nc -w 5 127.0.0.1 {port} </dev/null"
            )))?;
            let client = runner.run("client", &client_bundle, CONTAINER_TIMEOUT)?;
            ensure!(
                client.status.success(),
                "app B failed with {}: {}{}",
                client.status,
                client.stdout,
                client.stderr
            );
            let (head, answer) = client
                .stdout
                .split_once("---\n")
                .with_context(|| format!("app B output: {}", client.stdout))?;
            ensure!(
                answer.trim() == token,
                "app B got {answer:?} from 127.0.0.1:{port}, expected {token:?}"
            );
            ensure!(
                head.lines().any(|l| l.trim() == pod_ns),
                "app B is not in the pod's namespace {pod_ns}: {head}"
            );
            ensure!(
                busybox_inet(head) == [pod_cidr.clone()],
                "app B sees eth0 with {:?}, the pod IP is {pod_cidr}",
                busybox_inet(head)
            );

            // App A served its one connection and exits.
            let status = server.wait(CONTAINER_TIMEOUT)?;
            ensure!(status.success(), "app A exited with {status}");
            let server_out = server.stdout()?;
            ensure!(
                busybox_inet(&server_out) == [pod_cidr.clone()],
                "app A sees eth0 with {:?}, the pod IP is {pod_cidr}",
                busybox_inet(&server_out)
            );
            server.delete()?;
            eprintln!("  apps A and B in {pod_ns} both see eth0 {pod_cidr}; B got A's token");

            remove(daemon, &pod.name)?;
            assert_nothing_left(node, daemon, &[pod])
        },
    )
}

// ------------------------------------------------------------------------------- lifecycle

#[test]
fn create_and_remove_200_pods_leaves_nothing() -> Result<()> {
    if !require_root("create_and_remove_200_pods_leaves_nothing") {
        return Ok(());
    }
    on_node(
        "create_and_remove_200_pods_leaves_nothing",
        DaemonOptions::default(),
        |node, daemon| {
            const PODS: usize = 200;
            let prefix = unique_name("lc");
            let started = Instant::now();
            let mut pods = Vec::with_capacity(PODS);
            for i in 0..PODS {
                pods.push(create(daemon, &format!("{prefix}-{i}"))?);
            }
            let created = started.elapsed();
            let ips: BTreeSet<IpAddr> = pods.iter().map(|p| p.ips[0].0).collect();
            ensure!(
                ips.len() == PODS,
                "{PODS} pods got {} distinct IPs",
                ips.len()
            );
            assert_node_matches(node, daemon, &pods)?;
            for pod in [&pods[0], &pods[PODS / 2], &pods[PODS - 1]] {
                assert_pod_works(node, pod)?;
            }
            let removing = Instant::now();
            for pod in &pods {
                remove(daemon, &pod.name)?;
            }
            eprintln!(
                "  {PODS} pods: created in {created:.1?}, removed in {:.1?}",
                removing.elapsed()
            );
            assert_nothing_left(node, daemon, &pods)
        },
    )
}

#[test]
fn kill9_during_create_then_restart_is_all_or_nothing() -> Result<()> {
    if !require_root("kill9_during_create_then_restart_is_all_or_nothing") {
        return Ok(());
    }
    on_node(
        "kill9_during_create_then_restart_is_all_or_nothing",
        DaemonOptions::default(),
        |node, daemon| {
            // How long a whole create takes here, CLI start-up included.
            let mut samples = Vec::new();
            for _ in 0..5 {
                let name = unique_name("warm");
                let t = Instant::now();
                create(daemon, &name)?;
                samples.push(t.elapsed());
                remove(daemon, &name)?;
            }
            samples.sort();
            let full = samples[samples.len() / 2];
            // Kill points from "before the request arrives" to "after the answer".
            const STEPS: u32 = 40;
            let span = full * 2;
            let scratch = ScratchDir::new("crash")?;
            let (mut survived, mut vanished, mut answered_count) = (0, 0, 0);
            let mut live: Vec<Pod> = Vec::new();
            for step in 0..STEPS {
                let delay = span * step / STEPS;
                let name = unique_name("crash");
                let mut cli = ChildGuard::spawn(
                    Command::new(netns_holder_binary())
                        .arg("--socket")
                        .arg(daemon.socket())
                        .args(["pod", "create", &name])
                        .stdin(Stdio::null())
                        .stdout(File::create(scratch.path().join(format!("{name}.out")))?)
                        .stderr(File::create(scratch.path().join(format!("{name}.err")))?),
                )?;
                std::thread::sleep(delay);
                daemon.kill9();
                let answered = cli.wait_timeout(Duration::from_secs(10))?.success();
                answered_count += usize::from(answered);
                daemon
                    .spawn()
                    .with_context(|| format!("restarting the daemon after kill -9 ({name})"))?;
                let outcome = match inspect(daemon, &name)? {
                    Some(pod) => {
                        assert_pod_works(node, &pod).with_context(|| {
                            format!("pod {name} exists after the crash but does not work")
                        })?;
                        survived += 1;
                        live.push(pod);
                        "complete"
                    }
                    None => {
                        ensure!(
                            !answered,
                            "the create of {name} was answered before the kill, \
                             but the pod is gone after the restart"
                        );
                        let id = pod_id_of(&name)?;
                        let left: Vec<(u32, String)> = pause_processes()
                            .into_iter()
                            .filter(|(_, i)| *i == id)
                            .collect();
                        ensure!(
                            left.is_empty(),
                            "pod {name} is gone, its pause is not: {left:?}"
                        );
                        let veth = format!("nh{}", &id[..12]);
                        ensure!(
                            !node.links()?.contains(&veth),
                            "pod {name} is gone, its host veth {veth} is not"
                        );
                        let path = daemon.netns_dir().join(&name);
                        ensure!(
                            !path.exists() && !mounts_under(&path).contains(&path),
                            "pod {name} is gone, its netns {} is not",
                            path.display()
                        );
                        vanished += 1;
                        "absent"
                    }
                };
                // Whatever the outcome: exactly the surviving pods, nothing else, no drift,
                // and no address held by the vanished ones.
                assert_node_matches(node, daemon, &live)
                    .with_context(|| format!("after the kill at {delay:?} ({name})"))?;
                eprintln!(
                    "  kill -9 after {delay:>12.3?}: create answered {answered:<5} -> pod {outcome}"
                );
            }
            eprintln!(
                "  crash sweep over {STEPS} kill points, 0..{span:.1?} (a create takes {full:.1?}): \
                 {survived} complete, {vanished} absent; {answered_count} answered before the kill"
            );
            // The survivors still work after all the later crashes and restarts.
            for pod in &live {
                assert_pod_works(node, pod)?;
            }
            let gc = daemon.cli_json(&["gc"])?;
            ensure!(
                gc["removed"].as_array().map(Vec::len) == Some(live.len()),
                "gc removed {}, expected the {} survivors",
                gc["removed"],
                live.len()
            );
            assert_nothing_left(node, daemon, &live)
        },
    )
}

#[test]
fn fifty_concurrent_creates_then_gc() -> Result<()> {
    if !require_root("fifty_concurrent_creates_then_gc") {
        return Ok(());
    }
    on_node(
        "fifty_concurrent_creates_then_gc",
        DaemonOptions::default(),
        |node, daemon| {
            const PODS: usize = 50;
            let prefix = unique_name("cc");
            let names: Vec<String> = (0..PODS).map(|i| format!("{prefix}-{i}")).collect();
            let daemon_ref: &Daemon = daemon;
            let started = Instant::now();
            let results: Vec<Result<Pod>> = std::thread::scope(|scope| {
                let handles: Vec<_> = names
                    .iter()
                    .map(|name| scope.spawn(move || create(daemon_ref, name)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow!("a create thread panicked")))
                    })
                    .collect()
            });
            let elapsed = started.elapsed();
            let failed: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
                .collect();
            ensure!(
                failed.is_empty(),
                "{} of {PODS} concurrent creates failed: {failed:#?}",
                failed.len()
            );
            let pods: Vec<Pod> = results.into_iter().collect::<Result<_>>()?;
            let ips: BTreeSet<IpAddr> = pods.iter().map(|p| p.ips[0].0).collect();
            ensure!(
                ips.len() == PODS,
                "{PODS} concurrent creates got {} distinct IPs",
                ips.len()
            );
            for pod in &pods {
                assert_pod_works(node, pod)?;
            }
            assert_node_matches(node, daemon, &pods)?;
            let gc = daemon.cli_json(&["gc"])?;
            let removed: BTreeSet<&str> = gc["removed"]
                .as_array()
                .context("gc output")?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            ensure!(
                removed == names.iter().map(String::as_str).collect(),
                "gc removed {removed:?}, expected all {PODS} pods: {gc}"
            );
            eprintln!("  {PODS} concurrent creates took {elapsed:.1?}; gc removed them all");
            assert_nothing_left(node, daemon, &pods)
        },
    )
}

/// Routed datapath (whatever NH_TEST_DATAPATH says): the per-pod host routes and permanent
/// neighbour entries are state like any other. Deleted behind the daemon's back, `check`
/// names each one, `check --repair` puts them back, and the pod answers again.
#[test]
fn routed_host_routes_and_neighbours_are_checked_and_repaired() -> Result<()> {
    if !require_root("routed_host_routes_and_neighbours_are_checked_and_repaired") {
        return Ok(());
    }
    let options = DaemonOptions {
        pod_cidr_v6: Some(POD_CIDR_V6.into()),
        extra_config: "datapath = \"routed\"\n".into(),
        ..DaemonOptions::default()
    };
    on_node(
        "routed_host_routes_and_neighbours_are_checked_and_repaired",
        options,
        |node, daemon| {
            let pod = create(daemon, &unique_name("rt"))?;
            let v4 = pod.ip(Family::V4)?;
            let v6 = pod.ip(Family::V6)?;
            check_no_drift(daemon)?;
            let node_ns = node.netns_path();
            let shown = String::from_utf8_lossy(
                &run_ok(&mut in_netns(
                    &node_ns,
                    &["ip", "route", "show", "proto", "79"],
                ))?
                .stdout,
            )
            .to_string();
            ensure!(
                shown.contains(&format!("{v4} dev {}", pod.host_veth)),
                "no host route to {v4}: {shown}"
            );
            // Someone deletes the IPv4 and IPv6 host routes, the node's neighbour entry for
            // the pod and the pod's entry for its gateway.
            for argv in [
                vec!["ip", "route", "del", &format!("{v4}/32")],
                vec!["ip", "-6", "route", "del", &format!("{v6}/128")],
                vec!["ip", "neigh", "del", &v4.to_string(), "dev", &pod.host_veth],
            ] {
                let argv: Vec<&str> = argv.iter().map(|s| s.as_ref()).collect();
                run_ok(&mut in_netns(&node_ns, &argv))?;
            }
            run_ok(&mut in_netns(
                &pod.netns,
                &["ip", "neigh", "del", "169.254.1.1", "dev", "eth0"],
            ))?;
            ensure!(
                ping(&node_ns, v4).is_err(),
                "the pod still answers without its host route"
            );
            let out = daemon.cli(&["check"])?;
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            ensure!(!out.status.success(), "check found no drift: {stdout}");
            for needle in [
                format!("host route to {v4}/32 missing"),
                format!("host route to {v6}/128 missing"),
                format!("permanent neighbour entry for {v4} missing"),
                "permanent neighbour entry for 169.254.1.1 missing".to_string(),
            ] {
                ensure!(
                    stdout.contains(&needle),
                    "check does not say {needle:?}: {stdout}"
                );
            }
            daemon.cli_json(&["check", "--repair"])?;
            check_no_drift(daemon)?;
            ping(&node_ns, v4).context("node to pod after the repair")?;
            ping(&node_ns, v6).context("node to pod (IPv6) after the repair")?;
            remove(daemon, &pod.name)?;
            assert_nothing_left(node, daemon, &[pod])
        },
    )
}

/// The `datapath` a config leaves out: routed on a node without pods; on a node with pods,
/// the one they were created with, so an upgraded node keeps its bridge pods.
#[test]
fn an_unset_datapath_is_routed_on_a_new_node_and_follows_the_pods_later() -> Result<()> {
    if !require_root("an_unset_datapath_is_routed_on_a_new_node_and_follows_the_pods_later") {
        return Ok(());
    }
    let datapath_of = |daemon: &Daemon| -> Result<String> {
        let status = daemon.cli_json(&["status"])?;
        Ok(status["datapath"].as_str().unwrap_or_default().to_string())
    };
    // A new node, no `datapath`: routed.
    let node = Node::new()?;
    let mut daemon = Daemon::start(
        &node,
        DaemonOptions {
            datapath_unset: true,
            ..DaemonOptions::default()
        },
    )?;
    ensure!(
        !std::fs::read_to_string(daemon.config_path())?.contains("datapath"),
        "the config sets datapath"
    );
    ensure!(
        datapath_of(&daemon)? == "routed",
        "a new node: {}",
        daemon.log()
    );
    let pod = daemon.create_pod(&unique_name("dp"), &[])?;
    ensure!(
        daemon.log().contains("no pods on this node: the default"),
        "the log does not say why: {}",
        daemon.log()
    );
    daemon.stop()?;
    daemon.spawn()?;
    ensure!(datapath_of(&daemon)? == "routed", "after a restart");
    daemon.remove_pod(pod["name"].as_str().context("pod name")?)?;
    drop(daemon);

    // A node whose pods were made on the bridge, whose config then loses the key (an
    // upgrade from before the key, or from when bridge was the default): still bridge.
    let node = Node::new()?;
    let mut daemon = Daemon::start(
        &node,
        DaemonOptions {
            extra_config: "datapath = \"bridge\"\n".into(),
            ..DaemonOptions::default()
        },
    )?;
    let name = unique_name("dp");
    daemon.create_pod(&name, &[])?;
    daemon.stop()?;
    let config = std::fs::read_to_string(daemon.config_path())?;
    std::fs::write(
        daemon.config_path(),
        config.replace("datapath = \"bridge\"\n", ""),
    )?;
    daemon.spawn()?;
    ensure!(
        datapath_of(&daemon)? == "bridge",
        "pods on the bridge, no key: {}",
        daemon.log()
    );
    ensure!(
        daemon
            .log()
            .contains("the pods on this node were created with it"),
        "the log does not say why: {}",
        daemon.log()
    );
    let pods = daemon.cli_json(&["pod", "ls", "--json"])?;
    ensure!(
        pods.as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == name.as_str())),
        "the pod is gone: {pods}"
    );
    check_no_drift(&daemon)?;
    daemon.remove_pod(&name)?;
    Ok(())
}

/// The links on `node` under the namespace pool's names (`nhv...`): its pairs' host ends, and the host veths of pods that adopted one.
fn pool_links(node: &Node) -> Result<Vec<String>> {
    Ok(node
        .links()?
        .into_iter()
        .filter(|l| nh_tests::invariants::is_pool_link(l))
        .collect())
}

#[test]
fn a_second_daemon_is_refused_before_it_touches_the_first_ones_pool() -> Result<()> {
    let test = "a_second_daemon_is_refused_before_it_touches_the_first_ones_pool";
    if !require_root(test) {
        return Ok(());
    }
    on_node(test, DaemonOptions::default(), |node, daemon| {
        let size = nh_tests::node::TEST_NETNS_POOL as usize;
        let full = nh_tests::wait_until(Duration::from_secs(10), || {
            pool_links(node).is_ok_and(|l| l.len() == size)
        });
        ensure!(
            full,
            "the pool did not make {size} pairs: {:?}",
            pool_links(node)?
        );
        let before = pool_links(node)?;
        // A second daemon on the same node and socket: it deletes the pool pairs of an
        // earlier run at start, so it must be refused before that.
        let second = node
            .command(&[
                netns_holder_binary().to_str().context("binary path")?,
                "serve",
            ])
            .arg("--config")
            .arg(daemon.config_path())
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&second.stderr);
        ensure!(
            !second.status.success() && stderr.contains("already listening"),
            "the second daemon was not refused as one: {}\n{stderr}",
            second.status
        );
        ensure!(
            pool_links(node)? == before,
            "the refused daemon touched the pool's pairs: {before:?} -> {:?}",
            pool_links(node)?
        );
        // The first daemon's creates still adopt them.
        let pod = create(daemon, &unique_name("adopt"))?;
        assert_pod_works(node, &pod)?;
        ensure!(
            !pool_links(node)?.is_empty() && pool_links(node)? != before,
            "the create took no pooled pair: {:?}",
            pool_links(node)?
        );
        remove(daemon, &pod.name)?;
        assert_nothing_left(node, daemon, &[])
    })
}
