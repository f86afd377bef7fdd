//! The CNI entry (`cri-hook` run with `CNI_COMMAND` set), driven as a runtime drives a
//! plugin of a conflist: the binary is executed with the `CNI_*` variables and the plugin's
//! configuration (the list's `name` and `cniVersion` injected, `runtimeConfig` for declared
//! capabilities) on stdin, against a real daemon in a throwaway node ([`nh_tests::node`]).
//!
//! * ADD wires a namespace made with `ip netns add`: the result's address is the one the
//!   daemon reports, `eth0`'s `sandbox` is `CNI_NETNS`, the gateway and default route are
//!   the bridge's, and the node pings the pod;
//! * CHECK with the ADD result as `prevResult` succeeds, and fails with code 3 after DEL;
//! * `runtimeConfig.portMappings` are host ports ([`cni_port_mappings`]): traffic to the
//!   node port reaches the pod, CHECK finds each of them on the pod, ADD again is idempotent, DEL closes the
//!   port and removes the rules (twice too); a malformed entry is code 7 naming it and a
//!   port of another pod code 102 naming the owner, both leaving nothing behind; the error
//!   object carries the configuration's `cniVersion`;
//! * GC removes our pods of the network missing from `cni.dev/valid-attachments` and keeps
//!   the valid ones and a pod made by hand;
//! * DEL twice, and DEL without `CNI_NETNS`, succeed; STATUS reports the daemon (code 50
//!   when it is not there); VERSION lists 1.1.0; errors are CNI error objects.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, bail, ensure};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, UdpClient, tcp_probe};
use nh_tests::{require_root, run_ok, target_dir, unique_name};
use serde_json::{Value, json};

/// The network name of the test conflist.
const NETWORK: &str = "nh-test-net";

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

/// A network namespace made with `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Self> {
        let name = unique_name("nhc");
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The conflist the tests use: one plugin, ours, with the `portMappings` capability.
fn conflist(socket: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": NETWORK,
        "plugins": [{
            "type": "netns-holder",
            "daemonSocket": socket,
            "capabilities": {"portMappings": true},
        }],
    })
}

/// The configuration a runtime passes to plugin `index` of `list` (spec section 3): the
/// plugin object with the list's `name` and `cniVersion`, `runtimeConfig` holding the
/// arguments of the capabilities the plugin declares, plus `extra` keys (`prevResult`, GC's
/// `cni.dev/valid-attachments`).
fn plugin_config(list: &Value, index: usize, runtime: &Value, extra: &[(&str, Value)]) -> Value {
    let mut conf = list["plugins"][index].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let mut runtime_config = serde_json::Map::new();
    if let Some(caps) = conf["capabilities"].as_object() {
        for (cap, enabled) in caps {
            if enabled == &json!(true) && !runtime[cap].is_null() {
                runtime_config.insert(cap.clone(), runtime[cap].clone());
            }
        }
    }
    if !runtime_config.is_empty() {
        conf["runtimeConfig"] = Value::Object(runtime_config);
    }
    for (key, value) in extra {
        conf[*key] = value.clone();
    }
    conf
}

/// One invocation of the plugin.
struct Call<'a> {
    command: &'a str,
    container_id: Option<&'a str>,
    netns: Option<&'a Path>,
    ifname: Option<&'a str>,
    args: Option<&'a str>,
    config: Value,
}

impl Call<'_> {
    fn run(&self) -> Result<Output> {
        let mut command = Command::new(cri_hook_binary());
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", self.command)
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(id) = self.container_id {
            command.env("CNI_CONTAINERID", id);
        }
        if let Some(netns) = self.netns {
            command.env("CNI_NETNS", netns);
        }
        if let Some(ifname) = self.ifname {
            command.env("CNI_IFNAME", ifname);
        }
        if let Some(args) = self.args {
            command.env("CNI_ARGS", args);
        }
        let mut child = command
            .spawn()
            .context("running cri-hook as a CNI plugin")?;
        child
            .stdin
            .take()
            .context("no stdin")?
            .write_all(self.config.to_string().as_bytes())
            // A plugin that refuses the call before reading its configuration (a bad
            // environment) may be gone already: its answer is what counts.
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        let output = child.wait_with_output()?;
        eprintln!(
            "CNI {} {:?}: {} stdout={} stderr={}",
            self.command,
            self.container_id,
            output.status,
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        Ok(output)
    }

    /// Runs and expects success; returns stdout parsed (`Null` when empty).
    fn ok(&self) -> Result<Value> {
        let output = self.run()?;
        ensure!(
            output.status.success(),
            "CNI {} failed with {}: {}",
            self.command,
            output.status,
            String::from_utf8_lossy(&output.stdout)
        );
        if output.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&output.stdout).context("CNI stdout is not JSON")
    }

    /// Runs and expects the CNI error object with `code`; returns it.
    fn fails(&self, code: u64) -> Result<Value> {
        let output = self.run()?;
        ensure!(
            !output.status.success(),
            "CNI {} succeeded, expected error code {code}",
            self.command
        );
        let error: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("CNI error on stdout is not JSON: {output:?}"))?;
        ensure!(
            error["code"] == json!(code),
            "CNI {} failed with {error}, expected code {code}",
            self.command
        );
        ensure!(
            error["msg"]
                .as_str()
                .is_some_and(|m| !m.is_empty() && !m.contains('\n')),
            "the error message is not one line: {error}"
        );
        ensure!(error["cniVersion"].is_string(), "no cniVersion in {error}");
        Ok(error)
    }
}

/// The pod's addresses as the daemon reports them (`pod inspect`).
fn daemon_ips(daemon: &Daemon, pod: &str) -> Result<Vec<String>> {
    let pod = daemon.cli_json(&["pod", "inspect", pod])?;
    Ok(pod["ips"]
        .as_array()
        .context("no ips")?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// An invocation with `CNI_IFNAME=eth0` and no `CNI_ARGS`.
fn call<'a>(
    command: &'a str,
    container_id: Option<&'a str>,
    netns: Option<&'a Path>,
    config: &Value,
) -> Call<'a> {
    Call {
        command,
        container_id,
        netns,
        ifname: Some("eth0"),
        args: None,
        config: config.clone(),
    }
}

fn pod_exists(daemon: &Daemon, pod: &str) -> Result<bool> {
    Ok(daemon.cli(&["pod", "inspect", pod])?.status.success())
}

#[test]
fn cni_add_check_gc_del_status_version() {
    if !require_root("cni_add_check_gc_del_status_version") {
        return;
    }
    let node = Node::new().unwrap();
    let daemon = Daemon::start(&node, DaemonOptions::default()).unwrap();
    if let Err(e) = scenario(&node, &daemon) {
        panic!("{e:#}\ndaemon log:\n{}", daemon.log());
    }
}

fn scenario(node: &Node, daemon: &Daemon) -> Result<()> {
    let list = conflist(&daemon.socket());
    let no_runtime = json!({});
    let conf = plugin_config(&list, 0, &no_runtime, &[]);
    let netns_a = Netns::new()?;
    let netns_b = Netns::new()?;
    let id_a = format!("{:0>64}", unique_name("a"));
    let id_b = format!("{:0>64}", unique_name("b"));
    let args_a = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-a".to_string();
    let pod_a = format!("default_web-a_{}", &id_a[..12]);
    let (path_a, path_b) = (netns_a.path(), netns_b.path());
    let (id_a, id_b) = (id_a.as_str(), id_b.as_str());
    let never = format!("{:0>64}", "never");

    // VERSION.
    let version = call("VERSION", None, None, &json!({"cniVersion": "1.1.0"})).ok()?;
    ensure!(
        version["supportedVersions"]
            .as_array()
            .is_some_and(|v| v.contains(&json!("1.1.0")) && v.contains(&json!("0.4.0"))),
        "VERSION answered {version}"
    );

    // STATUS, with the daemon and without.
    call("STATUS", None, None, &conf).ok()?;
    let mut nowhere = conf.clone();
    nowhere["daemonSocket"] = json!("/nonexistent/netns-holder-test.sock");
    let error = call("STATUS", None, None, &nowhere).fails(50)?;
    ensure!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("/nonexistent/netns-holder-test.sock"),
        "the STATUS error does not name the socket: {error}"
    );

    // ADD A.
    let add_a = Call {
        args: Some(&args_a),
        ..call("ADD", Some(id_a), Some(&path_a), &conf)
    };
    let result = add_a.ok()?;
    eprintln!("ADD result: {result:#}");
    ensure!(result["cniVersion"] == "1.1.0", "{result}");
    let ips = daemon_ips(daemon, &pod_a)?;
    let address = result["ips"][0]["address"]
        .as_str()
        .context("no ips[0].address")?;
    ensure!(
        ips == [address],
        "the ADD result has {address}, the daemon reports {ips:?}"
    );
    ensure!(
        result["interfaces"][1]["name"] == "eth0"
            && result["interfaces"][1]["sandbox"] == json!(netns_a.path()),
        "interfaces: {}",
        result["interfaces"]
    );
    ensure!(result["ips"][0]["interface"] == 1, "{result}");
    let gateway = result["ips"][0]["gateway"].as_str().context("no gateway")?;
    ensure!(
        result["routes"] == json!([{"dst": "0.0.0.0/0", "gw": gateway}]),
        "routes: {}",
        result["routes"]
    );
    let ip = address.split('/').next().unwrap_or_default();
    let inside =
        run_ok(Command::new("ip").args(["-n", &netns_a.name, "-o", "addr", "show", "eth0"]))?;
    ensure!(
        String::from_utf8_lossy(&inside.stdout).contains(address),
        "eth0 in the pod lacks {address}: {}",
        String::from_utf8_lossy(&inside.stdout)
    );
    node.run(&["ping", "-c", "1", "-W", "2", ip])
        .context("the node cannot ping the pod")?;

    // ADD again (the runtime retried): the same pod, the same result.
    let again = add_a.ok()?;
    ensure!(again["ips"] == result["ips"], "{again} vs {result}");

    // CHECK with the ADD result.
    let mut check_conf = plugin_config(&list, 0, &no_runtime, &[("prevResult", result.clone())]);
    Call {
        args: Some(&args_a),
        ..call("CHECK", Some(id_a), Some(&path_a), &check_conf)
    }
    .ok()?;
    // CHECK of a wrong namespace fails with 103.
    Call {
        args: Some(&args_a),
        ..call("CHECK", Some(id_a), Some(&path_b), &check_conf)
    }
    .fails(103)?;

    // A configuration without a type is refused, naming the field.
    let mut typeless = conf.clone();
    typeless.as_object_mut().context("conf")?.remove("type");
    let error = call("ADD", Some(id_b), Some(&path_b), &typeless).fails(7)?;
    ensure!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("no type"),
        "{error}"
    );
    ensure!(!pod_exists(daemon, id_b)?, "a refused ADD left pod {id_b}");

    // Another interface name cannot be added.
    Call {
        ifname: Some("net1"),
        ..call("ADD", Some(id_b), Some(&path_b), &conf)
    }
    .fails(4)?;

    // ADD B (no Kubernetes arguments: the pod is named after the container id).
    let result_b = call("ADD", Some(id_b), Some(&path_b), &conf).ok()?;
    ensure!(pod_exists(daemon, id_b)?, "no pod {id_b} after ADD");
    ensure!(
        result_b["ips"][0]["address"] != result["ips"][0]["address"],
        "A and B got the same address"
    );

    // GC keeping only A: B goes, A and a pod made by hand stay.
    let by_hand = unique_name("hand");
    daemon.create_pod(&by_hand, &[])?;
    let gc_conf = plugin_config(
        &list,
        0,
        &no_runtime,
        &[(
            "cni.dev/valid-attachments",
            json!([{"containerID": id_a, "ifname": "eth0"}]),
        )],
    );
    call("GC", None, None, &gc_conf).ok()?;
    ensure!(!pod_exists(daemon, id_b)?, "GC left the stale pod {id_b}");
    ensure!(
        pod_exists(daemon, &pod_a)?,
        "GC removed the valid pod {pod_a}"
    );
    ensure!(
        pod_exists(daemon, &by_hand)?,
        "GC removed the pod {by_hand} made by hand"
    );
    // GC without the list is refused rather than collecting everything.
    call("GC", None, None, &conf).fails(7)?;
    ensure!(pod_exists(daemon, &pod_a)?, "a refused GC removed {pod_a}");

    // DEL A, twice; the namespace is left alone (it is the runtime's).
    let del_a = Call {
        args: Some(&args_a),
        ..call("DEL", Some(id_a), Some(&path_a), &check_conf)
    };
    del_a.ok()?;
    ensure!(
        !pod_exists(daemon, &pod_a)?,
        "pod {pod_a} is still there after DEL"
    );
    ensure!(
        netns_a.path().exists(),
        "DEL removed the runtime's namespace"
    );
    let links = node.links()?;
    for gone in [
        &result["interfaces"][0]["name"],
        &result_b["interfaces"][0]["name"],
    ] {
        let veth = gone.as_str().context("no host interface in a result")?;
        ensure!(
            !links.iter().any(|l| l == veth),
            "host veth {veth} is still in the node: {links:?}"
        );
    }
    del_a.ok()?;
    // DEL without CNI_NETNS (the namespace is already gone), and without prevResult.
    Call {
        netns: None,
        ..call("DEL", Some(id_a), None, &conf)
    }
    .ok()?;
    // DEL of a container that never was on the network.
    call("DEL", Some(&never), None, &conf).ok()?;

    // CHECK after DEL: the container is unknown.
    check_conf["prevResult"] = result;
    Call {
        args: Some(&args_a),
        ..call("CHECK", Some(id_a), Some(&path_a), &check_conf)
    }
    .fails(3)?;

    // Malformed input is a CNI error too.
    call(
        "ADD",
        Some(id_a),
        Some(&path_a),
        &json!({"cniVersion": "9.9.9", "name": "x"}),
    )
    .fails(1)?;
    Call {
        netns: None,
        ..call("ADD", Some(id_a), None, &conf)
    }
    .fails(4)?;

    daemon.remove_pod(&by_hand)?;
    if !pod_exists(daemon, &pod_a)? && !pod_exists(daemon, id_b)? {
        return Ok(());
    }
    bail!("pods left behind")
}

/// The elements of the daemon's host port maps in the node, as `nft -j` prints them.
fn port_elements(node: &Node) -> Result<Vec<String>> {
    let out = node.stdout(&["nft", "-j", "list", "table", "inet", "netns_holder"])?;
    let json: Value = serde_json::from_str(&out)?;
    let mut found = Vec::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for elem in item["map"]["elem"].as_array().into_iter().flatten() {
            found.push(elem.to_string());
        }
    }
    found.sort();
    Ok(found)
}

/// A TCP probe that must fail (refused or timed out).
fn tcp_closed(netns: &Path, to: std::net::SocketAddr) -> Result<()> {
    match tcp_probe(netns, to) {
        Err(_) => Ok(()),
        Ok(peer) => bail!("{to} still answers (peer {peer})"),
    }
}

/// `check` finds no drift.
fn no_drift(daemon: &Daemon) -> Result<()> {
    let check = daemon.cli_json(&["check"])?;
    ensure!(check["drift"] == json!(false), "check: {check}");
    Ok(())
}

#[test]
fn cni_port_mappings() {
    if !require_root("cni_port_mappings") {
        return;
    }
    let node = Node::new().unwrap();
    let daemon = Daemon::start(&node, DaemonOptions::default()).unwrap();
    if let Err(e) = port_scenario(&node, &daemon) {
        panic!("{e:#}\ndaemon log:\n{}", daemon.log());
    }
}

fn port_scenario(node: &Node, daemon: &Daemon) -> Result<()> {
    let list = conflist(&daemon.socket());
    let mappings = json!({"portMappings": [
        {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 15353, "containerPort": 53, "protocol": "udp", "hostIP": ""},
    ]});
    let conf = plugin_config(&list, 0, &mappings, &[]);
    ensure!(
        conf["runtimeConfig"]["portMappings"][1]["hostPort"] == 15353,
        "{conf}"
    );
    let netns_a = Netns::new()?;
    let netns_b = Netns::new()?;
    let id_a = format!("{:0>64}", unique_name("pa"));
    let id_b = format!("{:0>64}", unique_name("pb"));
    let args_a = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=ports-a".to_string();
    let pod_a = format!("default_ports-a_{}", &id_a[..12]);
    let (path_a, path_b) = (netns_a.path(), netns_b.path());
    let node_ns = node.netns_path();
    let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));

    // ADD with port mappings: the node port reaches the pod.
    let add_a = Call {
        args: Some(&args_a),
        ..call("ADD", Some(&id_a), Some(&path_a), &conf)
    };
    let result = add_a.ok()?;
    let _tcp = Echo::start(&path_a, Proto::Tcp, 80)?;
    let _udp = Echo::start(&path_a, Proto::Udp, 53)?;
    let gateway: std::net::IpAddr = result["ips"][0]["gateway"]
        .as_str()
        .context("no gateway")?
        .parse()?;
    // The node's connection from 127.0.0.1 is masqueraded to its pod-CIDR address: the
    // bridge gateway, or routed the address on lo (the gateway is link-local then).
    let gateway = if nh_tests::node::routed() {
        ensure!(gateway.to_string() == "169.254.1.1", "{result}");
        nh_tests::node::node_pod_address(&DaemonOptions::default().pod_cidr_v4)
    } else {
        gateway
    };
    let seen = tcp_probe(&node_ns, local(18080))?;
    ensure!(
        seen == gateway,
        "the node port did not reach the pod (or came from {seen}, not {gateway})"
    );
    let udp = UdpClient::new(&node_ns, true)?;
    ensure!(udp.probe(local(15353), std::time::Duration::from_secs(5))? == gateway);
    let inspected = daemon.cli_json(&["pod", "inspect", &pod_a])?;
    ensure!(
        inspected["ports"].as_array().map(Vec::len) == Some(2),
        "{inspected}"
    );
    let elements = port_elements(node)?;
    ensure!(elements.len() == 2, "{elements:?}");
    no_drift(daemon)?;

    // CHECK with the result and the same mappings; CHECK with other mappings fails.
    let check_conf = plugin_config(&list, 0, &mappings, &[("prevResult", result.clone())]);
    let check_a = Call {
        args: Some(&args_a),
        ..call("CHECK", Some(&id_a), Some(&path_a), &check_conf)
    };
    check_a.ok()?;
    // Fewer is fine: the pod may hold more (the NRI plugin's annotation ports on top).
    let fewer = plugin_config(
        &list,
        0,
        &json!({"portMappings": [{"hostPort": 18080, "containerPort": 80}]}),
        &[("prevResult", result.clone())],
    );
    Call {
        args: Some(&args_a),
        ..call("CHECK", Some(&id_a), Some(&path_a), &fewer)
    }
    .ok()?;
    let other = plugin_config(
        &list,
        0,
        &json!({"portMappings": [{"hostPort": 18089, "containerPort": 80}]}),
        &[("prevResult", result.clone())],
    );
    let error = Call {
        args: Some(&args_a),
        ..call("CHECK", Some(&id_a), Some(&path_a), &other)
    }
    .fails(103)?;
    ensure!(
        error["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("udp 15353 -> 53"),
        "{error}"
    );

    // ADD again: the same pod, nothing added.
    let again = add_a.ok()?;
    ensure!(again["ips"] == result["ips"], "{again} vs {result}");
    ensure!(
        port_elements(node)? == elements,
        "ADD again changed the rules"
    );

    // A port of pod A for another container: code 102 naming the owner; nothing left.
    let taken = plugin_config(
        &list,
        0,
        &json!({"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}),
        &[],
    );
    let error = call("ADD", Some(&id_b), Some(&path_b), &taken).fails(102)?;
    let msg = error["msg"].as_str().unwrap_or_default();
    ensure!(
        msg.contains(&format!("already taken by pod {pod_a}")) && msg.contains("18080"),
        "{error}"
    );
    ensure!(!pod_exists(daemon, &id_b)?, "a refused ADD left pod {id_b}");
    ensure!(
        port_elements(node)? == elements,
        "a refused ADD changed the rules"
    );

    // Malformed entries: code 7 naming the entry, the configuration's cniVersion in the
    // error object, nothing left behind.
    for (bad, words) in [
        (
            json!([{"hostPort": 0, "containerPort": 80}]),
            vec!["portMappings[0]", "hostPort 0"],
        ),
        (
            json!([{"hostPort": 18090, "containerPort": 80}, {"hostPort": 18091, "containerPort": 80, "protocol": "icmp"}]),
            vec!["portMappings[1]", "\"icmp\""],
        ),
        (
            json!([{"hostPort": 18090, "containerPort": 80, "hostIP": "not-an-ip"}]),
            vec!["portMappings[0]", "\"not-an-ip\""],
        ),
        (json!({"hostPort": 18090}), vec!["is not a list"]),
    ] {
        let mut conf = plugin_config(&list, 0, &json!({"portMappings": bad}), &[]);
        conf["cniVersion"] = json!("0.4.0");
        let error = call("ADD", Some(&id_b), Some(&path_b), &conf).fails(7)?;
        let msg = error["msg"].as_str().unwrap_or_default();
        for word in words {
            ensure!(msg.contains(word), "{error} lacks {word}");
        }
        ensure!(error["cniVersion"] == "0.4.0", "{error}");
        ensure!(!pod_exists(daemon, &id_b)?, "a refused ADD left pod {id_b}");
        ensure!(
            port_elements(node)? == elements,
            "a refused ADD changed the rules"
        );
    }

    // DEL: the port is closed and the rules are gone; DEL twice is fine.
    let del_a = Call {
        args: Some(&args_a),
        ..call("DEL", Some(&id_a), Some(&path_a), &check_conf)
    };
    del_a.ok()?;
    ensure!(!pod_exists(daemon, &pod_a)?, "pod {pod_a} left after DEL");
    tcp_closed(&node_ns, local(18080))?;
    let left = port_elements(node)?;
    ensure!(left.is_empty(), "rules left after DEL: {left:?}");
    del_a.ok()?;
    no_drift(daemon)?;

    // The port is free now: B takes it.
    call("ADD", Some(&id_b), Some(&path_b), &taken).ok()?;
    let _tcp_b = Echo::start(&path_b, Proto::Tcp, 8080)?;
    ensure!(tcp_probe(&node_ns, local(18080))? == gateway);
    call("DEL", Some(&id_b), Some(&path_b), &taken).ok()?;
    ensure!(port_elements(node)?.is_empty(), "rules left after DEL of B");
    no_drift(daemon)
}
