//! Replays every CNI call a real containerd 2.3.4 made to the plugin `netns-holder`
//! (`tests/captures/containerd-2.3.4/cni/*.json`, see that README's "CNI file fields" and
//! "Facts for plugin authors") against the real `cri-hook` binary and a real daemon in a
//! throwaway node namespace, in captured order.
//!
//! Each call gets exactly the captured stdin bytes and `CNI_*` environment, `argv[0]` and
//! working directory. Only what must point into the test's world is adjusted:
//! - `CNI_NETNS`: each captured `/var/run/netns/cni-<uuid>` becomes a namespace the test
//!   made (`ip netns add`), the same one for every call of that pod; an empty `CNI_NETNS`
//!   (the RemovePodSandbox DEL, STATUS) stays empty;
//! - `"daemonSocket":"/run/netns-holder/api.sock"` in stdin becomes the test daemon's
//!   socket (a byte replacement of that one member; everything else, `prevResult` and its
//!   captured addresses and sandbox paths included, is sent as captured).
//!
//! The non-`CNI_*` variables were captured by name only (`HOME`, `LD_LIBRARY_PATH`, `PATH`);
//! they get the values containerd had: `HOME=/root`, `PATH` as containerd was started with
//! its `opt` plugin's `/opt/containerd/bin` in front, `LD_LIBRARY_PATH=/opt/containerd/lib:`.
//!
//! What containerd needs, asserted per call:
//! - ADD answers a result in the captured `cniVersion` with `eth0` in the pod namespace and
//!   one IPv4 and one IPv6 address (the daemon has both CIDRs, as in the capture), really
//!   on `eth0`; the result has the captured result's shape;
//! - the two hostPort pods (files 08 and 12), which failed on the old parser because
//!   containerd sends Go field names (`HostPort`, ...), now succeed, and every mapping is
//!   published and reachable from the node namespace through the node port: a listener in
//!   the pod, a TCP connect or a UDP exchange from the node, on 127.0.0.1 and on the node
//!   address 192.0.2.2 (given to a link inside the node) for `HostIP: ""`, and on 192.0.2.2
//!   only for `HostIP: "192.0.2.2"`;
//! - DEL removes the pod (and only it) and closes its ports; the second DEL with an empty
//!   `CNI_NETNS` and no `prevResult` succeeds as a no-op;
//! - STATUS succeeds with the daemon up; with it stopped (the `nodaemon` cases) ADD, DEL
//!   and STATUS fail with exit 1 and the JSON error code 50 naming the socket;
//! - every other exit code is the captured one.
//!
//! The `loopback/` calls are containerd's own loopback plugin: not ours, not replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, UdpClient, tcp_probe};
// A pod namespace standing in for containerd's /var/run/netns/cni-<uuid>, deleted on drop.
use nh_tests::nri_harness::PodNetns as Netns;
use nh_tests::{require_root, run_ok, target_dir, unique_name, workspace_root};
use serde_json::{Value, json};

/// The captured daemon socket member of every stdin.
const CAPTURED_SOCKET_MEMBER: &str = r#""daemonSocket":"/run/netns-holder/api.sock""#;
/// The node address of the capture machine, which one mapping is bound to.
const NODE_ADDRESS: &str = "192.0.2.2";
/// The daemon's IPv4 pod CIDR in the capture.
const POD_CIDR_V4: &str = "10.244.88.0/24";
/// The daemon's IPv6 pod CIDR in the capture.
const POD_CIDR_V6: &str = "fd00:88::/64";

/// Whether `ip` is in the capture's pod CIDR of its family.
fn in_pod_cidr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[..3] == [10, 244, 88],
        IpAddr::V6(v6) => v6.segments()[..4] == [0xfd00, 0x88, 0, 0],
    }
}

/// The `cri-hook` binary from the workspace build (`$CRI_HOOK_BIN` overrides).
fn cri_hook_binary() -> PathBuf {
    let path = std::env::var_os("CRI_HOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("cri-hook"));
    assert!(
        path.is_file(),
        "cri-hook binary {} not found: run `cargo build --workspace` (or set CRI_HOOK_BIN)",
        path.display()
    );
    path
}

fn captures_dir() -> PathBuf {
    workspace_root().join("tests/captures/containerd-2.3.4/cni")
}

/// One captured call.
struct Captured {
    file: String,
    seq: u64,
    case: String,
    command: String,
    env: BTreeMap<String, String>,
    argv0: String,
    cwd: String,
    stdin_raw: String,
    exit_code: i32,
    stdout: Value,
}

/// Every captured call of the plugin `netns-holder`, in captured order; checked against
/// `index.jsonl`, so none is missed.
fn load_captures() -> Result<Vec<Captured>> {
    let dir = captures_dir();
    let mut calls = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let data: Value = serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("parsing {}", path.display()))?;
        let text = |key: &str| -> Result<String> {
            data[key]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("{file}: no {key}"))
        };
        ensure!(
            data["plugin"] == "netns-holder",
            "{file}: plugin {}",
            data["plugin"]
        );
        let env = data["env"]
            .as_object()
            .with_context(|| format!("{file}: no env"))?
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_str().context("env value")?.to_string())))
            .collect::<Result<BTreeMap<_, _>>>()?;
        calls.push(Captured {
            seq: data["seq"]
                .as_u64()
                .with_context(|| format!("{file}: no seq"))?,
            case: text("case")?,
            command: text("command")?,
            argv0: data["argv"][0]
                .as_str()
                .with_context(|| format!("{file}: no argv"))?
                .to_string(),
            cwd: text("cwd")?,
            stdin_raw: text("stdin_raw")?,
            exit_code: data["exit_code"]
                .as_i64()
                .with_context(|| format!("{file}: no exit_code"))? as i32,
            stdout: data["stdout"].clone(),
            env,
            file,
        });
    }
    calls.sort_by_key(|c| c.seq);
    let index = std::fs::read_to_string(dir.join("index.jsonl"))?;
    let listed: Vec<String> = index
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|e| e["plugin"] == "netns-holder")
        .filter_map(|e| e["file"].as_str().map(str::to_string))
        .collect();
    let loaded: Vec<String> = calls.iter().map(|c| c.file.clone()).collect();
    ensure!(
        loaded == listed,
        "the capture files {loaded:?} are not index.jsonl's {listed:?}"
    );
    Ok(calls)
}

/// Runs `call` as containerd ran it, with `netns` for `CNI_NETNS` (empty if it was) and the
/// test daemon's `socket` in stdin.
fn replay(call: &Captured, netns: Option<&Path>, socket: &Path) -> Result<Output> {
    ensure!(
        call.stdin_raw.matches(CAPTURED_SOCKET_MEMBER).count() == 1,
        "{}: stdin lacks {CAPTURED_SOCKET_MEMBER}",
        call.file
    );
    let stdin = call.stdin_raw.replace(
        CAPTURED_SOCKET_MEMBER,
        &format!(r#""daemonSocket":{}"#, json!(socket)),
    );
    let mut command = Command::new(cri_hook_binary());
    command
        .arg0(&call.argv0)
        .current_dir(&call.cwd)
        .env_clear()
        .env("HOME", "/root")
        .env(
            "PATH",
            "/opt/containerd/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("LD_LIBRARY_PATH", "/opt/containerd/lib:")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in &call.env {
        if key == "CNI_NETNS" && !value.is_empty() {
            command.env(
                key,
                netns.context("no test namespace for a captured CNI_NETNS")?,
            );
        } else {
            command.env(key, value);
        }
    }
    let mut child = command
        .spawn()
        .context("running cri-hook as a CNI plugin")?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(stdin.as_bytes())
        // A plugin that answers before reading its configuration may be gone already.
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            }
        })?;
    let output = child.wait_with_output()?;
    eprintln!(
        "replay {} ({}): {} stdout={} stderr={}",
        call.file,
        call.case,
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(output)
}

/// The daemon pod the CNI entry makes for a call: `<namespace>_<name>_<id[..12]>`.
fn pod_name(call: &Captured) -> Result<String> {
    let args: BTreeMap<&str, &str> = call.env["CNI_ARGS"]
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let id = &call.env["CNI_CONTAINERID"];
    Ok(format!(
        "{}_{}_{}",
        args.get("K8S_POD_NAMESPACE")
            .context("no K8S_POD_NAMESPACE")?,
        args.get("K8S_POD_NAME").context("no K8S_POD_NAME")?,
        id.get(..12).context("short CNI_CONTAINERID")?
    ))
}

/// The daemon's pods, by name.
fn daemon_pods(daemon: &Daemon) -> Result<BTreeSet<String>> {
    let listed = daemon.cli_json(&["pod", "ls", "--json"])?;
    let pods = listed
        .as_array()
        .with_context(|| format!("pod ls --json: {listed}"))?;
    Ok(pods
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect())
}

/// The elements of the daemon's host port maps in the node.
fn port_elements(node: &Node) -> Result<Vec<String>> {
    let out = node.stdout(&["nft", "-j", "list", "table", "inet", "netns_holder"])?;
    let json: Value = serde_json::from_str(&out)?;
    let mut found = Vec::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for elem in item["map"]["elem"].as_array().into_iter().flatten() {
            found.push(elem.to_string());
        }
    }
    Ok(found)
}

/// A captured `runtimeConfig.portMappings` entry, read with Go's field names as containerd
/// sends them (the test depends on that spelling: it is what the fix is about).
#[derive(Debug, Clone)]
struct Mapping {
    host_port: u16,
    container_port: u16,
    protocol: String,
    host_ip: String,
}

impl Mapping {
    /// The protocol to probe (the capture has only `tcp` and `udp`).
    fn proto(&self) -> Result<Proto> {
        match self.protocol.as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => bail!("captured protocol {other:?}: the replay probes only tcp and udp"),
        }
    }
}

fn captured_mappings(call: &Captured) -> Result<Vec<Mapping>> {
    let stdin: Value = serde_json::from_str(&call.stdin_raw)?;
    let Some(entries) = stdin["runtimeConfig"]["portMappings"].as_array() else {
        return Ok(Vec::new());
    };
    entries
        .iter()
        .map(|e| {
            let port = |key: &str| {
                e[key]
                    .as_u64()
                    .and_then(|n| u16::try_from(n).ok())
                    .with_context(|| format!("{}: {key} in {e}", call.file))
            };
            Ok(Mapping {
                host_port: port("HostPort")?,
                container_port: port("ContainerPort")?,
                protocol: e["Protocol"].as_str().context("Protocol")?.to_string(),
                host_ip: e["HostIP"].as_str().context("HostIP")?.to_string(),
            })
        })
        .collect()
}

/// The node addresses a mapping must answer on, and those it must not.
fn node_targets(m: &Mapping) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let loopback: IpAddr = [127, 0, 0, 1].into();
    let node: IpAddr = NODE_ADDRESS.parse().expect("node address");
    if m.host_ip.is_empty() {
        (vec![loopback, node], vec![])
    } else {
        let ip: IpAddr = m.host_ip.parse().expect("captured host IP");
        (vec![ip], vec![loopback])
    }
}

/// Checks an ADD result against what containerd needs, and against the pod's namespace.
fn check_add_result(call: &Captured, result: &Value, netns: &Netns) -> Result<()> {
    let stdin: Value = serde_json::from_str(&call.stdin_raw)?;
    ensure!(
        result["cniVersion"] == stdin["cniVersion"],
        "{}: result version {} for configuration version {}",
        call.file,
        result["cniVersion"],
        stdin["cniVersion"]
    );
    let interfaces = result["interfaces"].as_array().context("no interfaces")?;
    let eth0 = interfaces
        .iter()
        .position(|i| i["name"] == "eth0")
        .with_context(|| format!("{}: no eth0 in {result}", call.file))?;
    ensure!(
        interfaces[eth0]["sandbox"] == json!(netns.path()),
        "{}: eth0's sandbox is {}, CNI_NETNS was {}",
        call.file,
        interfaces[eth0]["sandbox"],
        netns.path().display()
    );
    let mut families = Vec::new();
    let inside =
        run_ok(Command::new("ip").args(["-n", &netns.name, "-o", "addr", "show", "eth0"]))?;
    let inside = String::from_utf8_lossy(&inside.stdout);
    for ip in result["ips"].as_array().context("no ips")? {
        let address = ip["address"].as_str().context("no address")?;
        let addr: IpAddr = address
            .split_once('/')
            .and_then(|(addr, _)| addr.parse().ok())
            .with_context(|| format!("{}: address {address:?} is not a CIDR", call.file))?;
        ensure!(
            ip["interface"] == json!(eth0),
            "{}: {ip} is not on eth0 (interface {eth0})",
            call.file
        );
        ensure!(
            in_pod_cidr(addr),
            "{}: {address} is not in {POD_CIDR_V4} or {POD_CIDR_V6}",
            call.file
        );
        ensure!(
            inside.contains(&format!(" {address} ")),
            "{}: eth0 in the pod lacks {address}: {inside}",
            call.file
        );
        families.push(addr.is_ipv4());
    }
    families.sort();
    ensure!(
        families == [false, true],
        "{}: want one IPv4 and one IPv6 address: {result}",
        call.file
    );
    // The shape containerd got from the plugin in the capture, where ADD succeeded.
    if call.stdout.get("ips").is_some() {
        let keys = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect()
        };
        ensure!(
            keys(result) == keys(&call.stdout),
            "{}: {result} vs {}",
            call.file,
            call.stdout
        );
        for list in ["interfaces", "ips", "routes"] {
            ensure!(
                result[list].as_array().map(Vec::len) == call.stdout[list].as_array().map(Vec::len),
                "{}: {list} {} vs captured {}",
                call.file,
                result[list],
                call.stdout[list]
            );
        }
    }
    Ok(())
}

/// Every mapping is published by the daemon and reachable through the node port.
fn check_ports_open(
    node: &Node,
    daemon: &Daemon,
    call: &Captured,
    pod: &str,
    netns: &Netns,
) -> Result<()> {
    let mappings = captured_mappings(call)?;
    let inspected = daemon.cli_json(&["pod", "inspect", pod])?;
    let published: BTreeSet<(String, u64, u64, String)> = inspected["ports"]
        .as_array()
        .context("no ports")?
        .iter()
        .map(|p| {
            (
                p["host_ip"].as_str().unwrap_or_default().to_string(),
                p["host_port"].as_u64().unwrap_or_default(),
                p["container_port"].as_u64().unwrap_or_default(),
                p["protocol"]
                    .as_str()
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
            )
        })
        .collect();
    let wanted: BTreeSet<(String, u64, u64, String)> = mappings
        .iter()
        .map(|m| {
            (
                m.host_ip.clone(),
                u64::from(m.host_port),
                u64::from(m.container_port),
                m.protocol.clone(),
            )
        })
        .collect();
    ensure!(
        published == wanted,
        "{}: the daemon publishes {published:?}, containerd asked for {wanted:?}",
        call.file
    );
    ensure!(
        !port_elements(node)?.is_empty(),
        "{}: no host port elements in nftables",
        call.file
    );

    let node_ns = node.netns_path();
    let mut echoes = Vec::new();
    for m in &mappings {
        echoes.push(Echo::start(&netns.path(), m.proto()?, m.container_port)?);
    }
    for m in &mappings {
        let (open, closed) = node_targets(m);
        for ip in open {
            let to = SocketAddr::new(ip, m.host_port);
            let reached = match m.proto()? {
                Proto::Udp => UdpClient::new(&node_ns, true)?.probe(to, Duration::from_secs(5)),
                Proto::Tcp => tcp_probe(&node_ns, to),
            };
            reached.with_context(|| {
                format!(
                    "{}: {} {to} -> pod {}",
                    call.file, m.protocol, m.container_port
                )
            })?;
            eprintln!(
                "{}: {} {to} reaches the pod's port {}",
                call.file, m.protocol, m.container_port
            );
        }
        for ip in closed {
            let to = SocketAddr::new(ip, m.host_port);
            if let Ok(peer) = tcp_probe(&node_ns, to) {
                bail!(
                    "{}: {to} reaches the pod (peer {peer}), but the mapping is for {} only",
                    call.file,
                    m.host_ip
                );
            }
        }
    }
    Ok(())
}

/// Nothing answers on the mappings' node ports any more.
fn check_ports_closed(node: &Node, call: &Captured, netns: Option<&Netns>) -> Result<()> {
    let mappings = captured_mappings(call)?;
    let elements = port_elements(node)?;
    ensure!(
        elements.is_empty(),
        "{}: host port elements left after DEL: {elements:?}",
        call.file
    );
    // Listeners in the pod namespace (if it still exists) that a leftover rule would reach.
    let mut echoes = Vec::new();
    if let Some(netns) = netns {
        for m in &mappings {
            echoes.push(Echo::start(&netns.path(), m.proto()?, m.container_port)?);
        }
    }
    let node_ns = node.netns_path();
    for m in &mappings {
        for ip in node_targets(m).0 {
            let to = SocketAddr::new(ip, m.host_port);
            let answered = match m.proto()? {
                Proto::Udp => UdpClient::new(&node_ns, true)?
                    .probe(to, Duration::from_millis(600))
                    .ok(),
                Proto::Tcp => tcp_probe(&node_ns, to).ok(),
            };
            if let Some(peer) = answered {
                bail!(
                    "{}: {} {to} still answers after DEL (peer {peer})",
                    call.file,
                    m.protocol
                );
            }
        }
    }
    Ok(())
}

#[test]
fn cni_replay_of_containerd_2_3_4() {
    if !require_root("cni_replay_of_containerd_2_3_4") {
        return;
    }
    let node = Node::new().unwrap();
    node.add_underlay(&unique_name("nhu"), &[&format!("{NODE_ADDRESS}/24")])
        .unwrap();
    let mut daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: POD_CIDR_V4.into(),
            pod_cidr_v6: Some(POD_CIDR_V6.into()),
            ..DaemonOptions::default()
        },
    )
    .unwrap();
    if let Err(e) = scenario(&node, &mut daemon) {
        panic!("{e:#}\ndaemon log:\n{}", daemon.log());
    }
}

fn scenario(node: &Node, daemon: &mut Daemon) -> Result<()> {
    let calls = load_captures()?;
    ensure!(calls.len() == 29, "{} captured calls", calls.len());
    // One test namespace per captured CNI_NETNS (one per pod).
    let mut namespaces: BTreeMap<String, Netns> = BTreeMap::new();
    let mut replayed = BTreeMap::<&str, usize>::new();
    let mut hostport_adds = 0;
    for call in &calls {
        // The daemon was stopped for the `nodaemon` cases of the capture, up otherwise.
        let down = call.case.starts_with("nodaemon");
        match (down, daemon.pid().is_some()) {
            (true, true) => {
                daemon.stop()?;
            }
            (false, false) => daemon.spawn()?,
            _ => {}
        }
        let captured_netns = &call.env["CNI_NETNS"];
        if !captured_netns.is_empty() && !namespaces.contains_key(captured_netns) {
            namespaces.insert(captured_netns.clone(), Netns::new()?);
        }
        let netns = namespaces.get(captured_netns.as_str());
        let pods_before = if down {
            BTreeSet::new()
        } else {
            daemon_pods(daemon)?
        };

        let output = replay(call, netns.map(|n| n.path()).as_deref(), &daemon.socket())?;
        let mappings = captured_mappings(call)?;
        // The two hostPort ADDs failed in the capture (the Go field names); they must succeed.
        let expected_exit = if call.command == "ADD" && !mappings.is_empty() {
            hostport_adds += 1;
            0
        } else {
            call.exit_code
        };
        let code = output.status.code();
        ensure!(
            code == Some(expected_exit),
            "{}: exit {:?}, expected {expected_exit}; stdout {}",
            call.file,
            code,
            String::from_utf8_lossy(&output.stdout)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        if expected_exit != 0 {
            // Only the daemon-down calls fail: the CNI error object, code 50, naming the socket.
            ensure!(down, "{}: an unexpected failure", call.file);
            let error: Value = serde_json::from_str(&stdout)
                .with_context(|| format!("{}: error on stdout is not JSON: {stdout}", call.file))?;
            ensure!(error["code"] == 50, "{}: {error}", call.file);
            ensure!(error["cniVersion"] == "1.1.0", "{}: {error}", call.file);
            let msg = error["msg"].as_str().unwrap_or_default();
            ensure!(
                msg.contains("cannot connect to netns-holder")
                    && msg.contains(&daemon.socket().display().to_string())
                    && !msg.contains('\n'),
                "{}: unclear message {msg:?}",
                call.file
            );
            *replayed.entry("daemon down").or_default() += 1;
            continue;
        }
        match call.command.as_str() {
            "STATUS" => {
                ensure!(
                    stdout.trim().is_empty(),
                    "{}: STATUS printed {stdout}",
                    call.file
                );
                *replayed.entry("STATUS").or_default() += 1;
            }
            "ADD" => {
                let netns = netns.context("ADD without CNI_NETNS")?;
                let result: Value = serde_json::from_str(&stdout)
                    .with_context(|| format!("{}: ADD result is not JSON: {stdout}", call.file))?;
                check_add_result(call, &result, netns)?;
                let pod = pod_name(call)?;
                let pods = daemon_pods(daemon)?;
                ensure!(
                    pods.contains(&pod),
                    "{}: no pod {pod} after ADD: {pods:?}",
                    call.file
                );
                if !mappings.is_empty() {
                    check_ports_open(node, daemon, call, &pod, netns)?;
                }
                *replayed.entry("ADD").or_default() += 1;
            }
            "DEL" => {
                ensure!(
                    stdout.trim().is_empty(),
                    "{}: DEL printed {stdout}",
                    call.file
                );
                let pod = pod_name(call)?;
                let pods = daemon_pods(daemon)?;
                ensure!(
                    !pods.contains(&pod),
                    "{}: pod {pod} left after DEL",
                    call.file
                );
                let others: BTreeSet<String> =
                    pods_before.into_iter().filter(|p| *p != pod).collect();
                ensure!(
                    others == pods,
                    "{}: DEL touched other pods: {others:?} before, {pods:?} after",
                    call.file
                );
                if !mappings.is_empty() {
                    check_ports_closed(node, call, netns)?;
                }
                let kind = if captured_netns.is_empty() {
                    "DEL without netns"
                } else {
                    "DEL"
                };
                *replayed.entry(kind).or_default() += 1;
            }
            other => bail!("{}: unexpected command {other}", call.file),
        }
    }
    eprintln!("replayed: {replayed:?}");
    // containerd's sequence, every part of it: 8 ADDs, each pod's DEL with its namespace
    // (stop, or the cleanup after a failed ADD), the 5 DELs at RemovePodSandbox without one,
    // 5 STATUS with the daemon up, and ADD, DEL and STATUS with it down.
    let expected = BTreeMap::from([
        ("ADD", 8),
        ("DEL", 8),
        ("DEL without netns", 5),
        ("STATUS", 5),
        ("daemon down", 3),
    ]);
    ensure!(
        replayed == expected,
        "replayed {replayed:?}, the capture has {expected:?}"
    );
    ensure!(
        hostport_adds == 2,
        "{hostport_adds} hostPort ADDs replayed, the capture has 2"
    );
    let left = daemon_pods(daemon)?;
    ensure!(left.is_empty(), "pods left after the replay: {left:?}");
    let elements = port_elements(node)?;
    ensure!(
        elements.is_empty(),
        "host port elements left after the replay: {elements:?}"
    );
    Ok(())
}
