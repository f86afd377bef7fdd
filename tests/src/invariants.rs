//! Invariants of a node, shared by the end-to-end tests, the chaos suite and the
//! benchmarks: pods as the CLI prints them, "this pod works", "the node holds exactly these
//! pods and nothing else", and "the state file matches the kernel exactly".
//!
//! The kernel side is always read with independent tools (`ip -j`, `nft -j`, `/proc`,
//! `/proc/self/mountinfo`), never through the daemon; the daemon side is its CLI and its
//! state file.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use netns_holder_core::record::{Phase, PodRecord};
use netns_holder_core::state::{State, StateStore};
use serde_json::Value;

use crate::node::{
    Daemon, DaemonOptions, Node, in_netns, mounts_under, pause_alive, pause_processes,
};
use crate::oci::Namespace;
use crate::run_ok;

/// An address family of the pod network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    /// `-4` or `-6`.
    pub fn ping_flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }
}

/// A pod as the API prints it (`pod create`, `pod inspect`).
#[derive(Debug, Clone)]
pub struct Pod {
    /// The pod name.
    pub name: String,
    /// The pod id.
    pub id: String,
    /// The network namespace path.
    pub netns: PathBuf,
    /// The pause process, if any.
    pub pause_pid: Option<u32>,
    /// Addresses with their prefix lengths, as in the API's CIDR strings.
    pub ips: Vec<(IpAddr, u8)>,
    /// Default gateways.
    pub gateways: Vec<IpAddr>,
    /// The host-side veth.
    pub host_veth: String,
}

impl Pod {
    /// Parses the pod JSON the CLI prints.
    pub fn from_json(value: &Value) -> Result<Self> {
        let text = |key: &str| -> Result<String> {
            value[key]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("no string {key:?} in pod JSON {value}"))
        };
        let list = |key: &str| -> Result<Vec<String>> {
            value[key]
                .as_array()
                .with_context(|| format!("no array {key:?} in pod JSON {value}"))?
                .iter()
                .map(|v| v.as_str().map(str::to_string).context("not a string"))
                .collect()
        };
        let ips = list("ips")?
            .iter()
            .map(|cidr| {
                let (ip, prefix) = cidr
                    .split_once('/')
                    .with_context(|| format!("pod IP {cidr:?} is not in CIDR form"))?;
                Ok((ip.parse()?, prefix.parse()?))
            })
            .collect::<Result<_>>()?;
        let gateways = list("gateways")?
            .iter()
            .map(|g| g.parse().with_context(|| format!("gateway {g:?}")))
            .collect::<Result<_>>()?;
        Ok(Self {
            name: text("name")?,
            id: text("id")?,
            netns: PathBuf::from(text("netns")?),
            pause_pid: value["pause_pid"].as_u64().map(|p| p as u32),
            ips,
            gateways,
            host_veth: text("host_veth")?,
        })
    }

    /// The pod's address of `family`.
    pub fn ip(&self, family: Family) -> Result<IpAddr> {
        self.ips
            .iter()
            .map(|(ip, _)| *ip)
            .find(|ip| Family::of(ip) == family)
            .with_context(|| {
                format!(
                    "pod {} has no {family:?} address: {:?}",
                    self.name, self.ips
                )
            })
    }

    /// The pod's gateway of `family`.
    pub fn gateway(&self, family: Family) -> Result<IpAddr> {
        self.gateways
            .iter()
            .copied()
            .find(|ip| Family::of(ip) == family)
            .with_context(|| {
                format!(
                    "pod {} has no {family:?} gateway: {:?}",
                    self.name, self.gateways
                )
            })
    }
}

/// Starts a node and a daemon in it, runs `body`, and prints the daemon's log if it fails.
/// Whether `link` has the name of the host end of one of the namespace pool's veth pairs
/// (`nhv` and 12 hex digits). A pod that adopted a pooled pair keeps that name for its host
/// veth, so a pool-named link is a pod's if a pod's record or `pod ls` names it, else the
/// pool's.
pub fn is_pool_link(link: &str) -> bool {
    netns_holder_core::names::is_pooled_veth_name(link)
}

/// The node's links once the daemon's removals have settled ([`crate::wait_settled`]):
/// retired host veths (renamed `nhx` + 12 hex, or a pooled pair's host end under its own
/// name) and every link in the daemon's deletion group go with their pod's namespace or the
/// daemon's deletion batch, asynchronously, and are never counted as anything.
pub fn settled_node_links(node: &Node) -> Result<Vec<crate::LinkState>> {
    crate::wait_settled(
        "the node namespace",
        "links retired or being deleted",
        || node.link_states(),
        |l| {
            l.being_deleted()
                || l.name
                    .starts_with(netns_holder_core::names::RETIRED_VETH_PREFIX)
        },
    )
}

/// The node and daemon guards clean up either way.
pub fn on_node(
    test: &str,
    options: DaemonOptions,
    body: impl FnOnce(&Node, &mut Daemon) -> Result<()>,
) -> Result<()> {
    let node = Node::new()?;
    let mut daemon = Daemon::start(&node, options)?;
    let started = Instant::now();
    let result = body(&node, &mut daemon);
    match &result {
        Ok(()) => eprintln!("{test}: passed in {:.1?}", started.elapsed()),
        Err(e) => eprintln!(
            "\n*** {test} FAILED: {e:#}\n--- daemon log ---\n{}--- end of daemon log ---\n",
            daemon.log()
        ),
    }
    result
}

/// `pod create NAME` → the pod.
pub fn create(daemon: &Daemon, name: &str) -> Result<Pod> {
    Pod::from_json(&daemon.create_pod(name, &[])?)
}

/// `pod rm NAME`, which must report that it removed the pod.
pub fn remove(daemon: &Daemon, name: &str) -> Result<()> {
    let out = daemon.remove_pod(name)?;
    ensure!(
        out["removed"] == Value::Bool(true),
        "pod rm {name} did not remove it: {out}"
    );
    Ok(())
}

/// `pod inspect NAME`: the pod, or `None` if the daemon does not know it.
pub fn inspect(daemon: &Daemon, name: &str) -> Result<Option<Pod>> {
    let out = daemon.cli(&["pod", "inspect", name])?;
    if out.status.success() {
        let value: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("pod inspect {name}: stdout is not JSON"))?;
        return Pod::from_json(&value).map(Some);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        stderr.contains("not found"),
        "pod inspect {name} failed with {} for another reason than \"not found\": {stderr}",
        out.status
    );
    Ok(None)
}

/// `check`: must exit 0 and report no drift.
pub fn check_no_drift(daemon: &Daemon) -> Result<()> {
    let out = daemon.cli(&["check"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "check exited with {} (drift?): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let value: Value = serde_json::from_str(&stdout).context("check output is not JSON")?;
    ensure!(
        value["drift"] == Value::Bool(false),
        "check reports drift: {value}"
    );
    Ok(())
}

/// The pod id of `name`, computed as the daemon does (the first 16 hex characters of the
/// SHA-256 of the name), for pods whose create was never answered.
pub fn pod_id_of(name: &str) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(name.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "sha256sum failed");
    let text = String::from_utf8(out.stdout)?;
    Ok(text
        .get(..16)
        .context("short sha256sum output")?
        .to_string())
}

/// Pings `ip` once from the network namespace at `netns`.
pub fn ping(netns: &Path, ip: IpAddr) -> Result<()> {
    let ip_text = ip.to_string();
    run_ok(&mut in_netns(
        netns,
        &[
            "ping",
            Family::of(&ip).ping_flag(),
            "-c1",
            "-W2",
            ip_text.as_str(),
        ],
    ))
    .with_context(|| format!("ping {ip} from netns {}", netns.display()))?;
    Ok(())
}

/// The global addresses of `dev` in the namespace at `netns` (`ip -j addr show`).
pub fn addresses(netns: &Path, dev: &str) -> Result<BTreeSet<(IpAddr, u8)>> {
    let out = run_ok(&mut in_netns(
        netns,
        &["ip", "-j", "addr", "show", "dev", dev],
    ))?;
    let links: Value = serde_json::from_slice(&out.stdout).context("ip -j addr show")?;
    let mut found = BTreeSet::new();
    for link in links.as_array().into_iter().flatten() {
        for addr in link["addr_info"].as_array().into_iter().flatten() {
            if addr["scope"] != "global" {
                continue;
            }
            let ip: IpAddr = addr["local"]
                .as_str()
                .context("address without \"local\"")?
                .parse()?;
            let prefix = addr["prefixlen"].as_u64().context("no prefixlen")? as u8;
            found.insert((ip, prefix));
        }
    }
    Ok(found)
}

/// The network namespace identity (`net:[inode]`) of a bind-mounted namespace.
pub fn netns_id(path: &Path) -> Result<String> {
    let ino = std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino();
    Ok(format!("net:[{ino}]"))
}

/// A pod works: its pause is alive and holds the pod's namespace, `eth0` carries exactly
/// the API's addresses, and the node reaches every address.
pub fn assert_pod_works(node: &Node, pod: &Pod) -> Result<()> {
    let pid = pod
        .pause_pid
        .with_context(|| format!("pod {} has no pause", pod.name))?;
    ensure!(
        pause_alive(pid, &pod.id),
        "pod {}: pause {pid} is not a live netns-holder-pause:{}",
        pod.name,
        pod.id
    );
    let held = Namespace::Network.id_of(pid)?;
    ensure!(
        held == netns_id(&pod.netns)?,
        "pod {}: the pause holds {held}, the bind mount {} is {}",
        pod.name,
        pod.netns.display(),
        netns_id(&pod.netns)?
    );
    let seen = addresses(&pod.netns, "eth0")?;
    let reported: BTreeSet<(IpAddr, u8)> = pod.ips.iter().copied().collect();
    ensure!(
        seen == reported,
        "pod {}: eth0 has {seen:?}, the API reported {reported:?}",
        pod.name
    );
    for (ip, _) in &pod.ips {
        ping(&node.netns_path(), *ip).with_context(|| format!("node to pod {}", pod.name))?;
    }
    Ok(())
}

/// The node matches exactly the pods in `live`: no drift, the daemon's counts and address
/// allocations, host veths, namespace bind mounts and pause processes are those of `live`
/// and nothing else.
pub fn assert_node_matches(node: &Node, daemon: &Daemon, live: &[Pod]) -> Result<()> {
    check_no_drift(daemon)?;

    let status = daemon.cli_json(&["status"])?;
    for key in ["pods", "ready"] {
        ensure!(
            status[key].as_u64() == Some(live.len() as u64),
            "status {key} is {}, expected {}: {status}",
            status[key],
            live.len()
        );
    }
    ensure!(
        status["unfinished"].as_u64() == Some(0),
        "unfinished records: {status}"
    );
    for pool in status["pools"].as_array().into_iter().flatten() {
        ensure!(
            pool["allocated"].as_u64() == Some(live.len() as u64),
            "pool {} has {} addresses allocated, expected {}: {status}",
            pool["cidr"],
            pool["allocated"],
            live.len()
        );
    }

    let listed = daemon.cli_json(&["pod", "ls", "--json"])?;
    let listed: BTreeSet<&str> = listed
        .as_array()
        .context("pod ls --json is not an array")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let names: BTreeSet<&str> = live.iter().map(|p| p.name.as_str()).collect();
    ensure!(
        listed == names,
        "pod ls lists {listed:?}, expected {names:?}"
    );

    let own = node.test_links();
    let settled = settled_node_links(node)?;
    // The namespace pool's veth pairs (`nhv` + 12 hex) that no pod adopted are no pod's:
    // they wait for a create to adopt them and go with the daemon. Their pod ends are down
    // until a create adopts them, so they have no carrier: one that has is an adopted pair
    // that no pod names any more, left behind.
    let veths: BTreeSet<String> = live.iter().map(|p| p.host_veth.clone()).collect();
    let leaked_pool_pairs: Vec<&str> = settled
        .iter()
        .filter(|l| is_pool_link(&l.name) && !veths.contains(&l.name) && l.carrier)
        .map(|l| l.name.as_str())
        .collect();
    ensure!(
        leaked_pool_pairs.is_empty(),
        "pool-named host veths with carrier that no pod names (adopted, then left): \
         {leaked_pool_pairs:?}"
    );
    let links: BTreeSet<String> = settled
        .into_iter()
        .map(|l| l.name)
        .filter(|l| {
            l != "lo"
                && l != daemon.bridge()
                && !own.contains(l)
                && (!is_pool_link(l) || veths.contains(l))
        })
        .collect();
    ensure!(
        links == veths,
        "node links besides lo, {}, the pool's and the test's own {own:?}: {links:?}, expected \
         the host \
         veths {veths:?}",
        daemon.bridge()
    );

    let netns_dir = daemon.netns_dir();
    let mut entries = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(&netns_dir) {
        for entry in dir {
            entries.insert(netns_dir.join(entry?.file_name()));
        }
    }
    let mounts: BTreeSet<PathBuf> = mounts_under(&netns_dir)
        .into_iter()
        .filter(|m| *m != netns_dir)
        .collect();
    let paths: BTreeSet<PathBuf> = live.iter().map(|p| p.netns.clone()).collect();
    ensure!(
        entries == paths,
        "{} holds {entries:?}, expected {paths:?}",
        netns_dir.display()
    );
    ensure!(
        mounts == paths,
        "mounts under {}: {mounts:?}, expected {paths:?}",
        netns_dir.display()
    );

    let pauses: BTreeSet<(u32, String)> = node.pause_processes()?.into_iter().collect();
    let expected: BTreeSet<(u32, String)> = live
        .iter()
        .filter_map(|p| Some((p.pause_pid?, p.id.clone())))
        .collect();
    ensure!(
        pauses == expected,
        "pause processes of this node: {pauses:?}, expected {expected:?}"
    );

    let records = assert_state_matches_kernel(node, daemon)?;
    let recorded: BTreeSet<&str> = records.iter().map(|r| r.name.as_str()).collect();
    ensure!(
        recorded == names,
        "the state file records {recorded:?}, expected {names:?}"
    );
    Ok(())
}

/// Nothing of `removed` is left: besides [`assert_node_matches`] with no pods, none of
/// their recorded pause pids is alive and no pause on the machine carries their ids.
pub fn assert_nothing_left(node: &Node, daemon: &Daemon, removed: &[Pod]) -> Result<()> {
    assert_node_matches(node, daemon, &[])?;
    for pod in removed {
        if let Some(pid) = pod.pause_pid {
            ensure!(
                !pause_alive(pid, &pod.id),
                "pod {}: its pause {pid} is still alive",
                pod.name
            );
        }
    }
    let ids: BTreeSet<&str> = removed.iter().map(|p| p.id.as_str()).collect();
    let left: Vec<(u32, String)> = pause_processes()
        .into_iter()
        .filter(|(_, id)| ids.contains(id.as_str()))
        .collect();
    ensure!(left.is_empty(), "pause processes left: {left:?}");
    Ok(())
}

/// The daemon's state, read as the daemon reads it: the snapshot `state.json` with the
/// journal `journal.jsonl` replayed on top ([`StateStore::load`], which only reads, so it is
/// safe while the daemon runs).
pub fn load_state(daemon: &Daemon) -> Result<State> {
    StateStore::new(daemon.state_dir())
        .load()
        .with_context(|| format!("loading the state in {}", daemon.state_dir().display()))
}

/// The elements of the host port maps in the node's table `inet netns_holder`, as
/// `MAP KEY : VALUE` (the way nft writes them), from `nft -j`.
pub fn nft_elements(node: &Node) -> Result<BTreeSet<String>> {
    let out = node
        .stdout(&["nft", "-j", "list", "table", "inet", "netns_holder"])
        .context("listing our nftables table")?;
    let json: Value = serde_json::from_str(&out).context("nft -j output")?;
    let atom = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    };
    let concat = |v: &Value| -> String {
        match v["concat"].as_array() {
            Some(parts) => parts.iter().map(atom).collect::<Vec<_>>().join(" . "),
            None => atom(v),
        }
    };
    let mut found = BTreeSet::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        let map = &item["map"];
        let Some(name) = map["name"].as_str() else {
            continue;
        };
        for elem in map["elem"].as_array().into_iter().flatten() {
            let pair = elem
                .as_array()
                .context("a map element is not a [key, value] pair")?;
            ensure!(pair.len() == 2, "map element {elem}");
            found.insert(format!(
                "{name} {} : {}",
                concat(&pair[0]),
                concat(&pair[1])
            ));
        }
    }
    Ok(found)
}

/// The elements the records call for, written as [`nft_elements`] reads them.
pub fn expected_elements(records: &[PodRecord]) -> BTreeSet<String> {
    records
        .iter()
        .flat_map(netns_holder_core::plan::record_elements)
        .map(|e| format!("{} {}", e.map.name(), e.text()))
        .collect()
}

/// The state file matches the kernel exactly, object by object: every record is `Ready`;
/// host veths ⇔ records; namespace bind mounts (and the ownership journal) ⇔ owned records;
/// live pause processes of this node ⇔ recorded pauses; elements of our nftables maps ⇔ the
/// records' host ports; no address and no host port is held twice; the daemon's address
/// pools count exactly the records. Returns the records.
pub fn assert_state_matches_kernel(node: &Node, daemon: &Daemon) -> Result<Vec<PodRecord>> {
    let state = load_state(daemon)?;
    let records: Vec<PodRecord> = state.pods.values().cloned().collect();
    let unfinished: Vec<String> = records
        .iter()
        .filter(|r| r.phase != Phase::Ready)
        .map(|r| format!("{} ({:?})", r.name, r.phase))
        .collect();
    ensure!(
        unfinished.is_empty(),
        "unfinished records in the state file: {unfinished:?}"
    );

    // Host veths named from a pod id, and pool-named ones that a record names (the pool's
    // own are no pod's).
    let recorded: BTreeSet<String> = records.iter().map(|r| r.host_veth.to_string()).collect();
    let veths: BTreeSet<String> = node
        .links()?
        .into_iter()
        .filter(|l| netns_holder_core::names::is_host_veth_name(l) || recorded.contains(l))
        .collect();
    ensure!(
        veths == recorded,
        "host veths {veths:?}, the state file records {recorded:?}"
    );

    let netns_dir = daemon.netns_dir();
    let mounts: BTreeSet<PathBuf> = mounts_under(&netns_dir)
        .into_iter()
        .filter(|m| *m != netns_dir)
        .collect();
    let owned: BTreeSet<PathBuf> = records
        .iter()
        .filter(|r| r.netns_owned())
        .map(|r| r.netns.clone())
        .collect();
    ensure!(
        mounts == owned,
        "mounts under {}: {mounts:?}, the state file records {owned:?}",
        netns_dir.display()
    );
    ensure!(
        state.owned_netns == owned,
        "the ownership journal holds {:?}, the owned pods are {owned:?}",
        state.owned_netns
    );

    let pauses: BTreeSet<(u32, String)> = node.pause_processes()?.into_iter().collect();
    let recorded: BTreeSet<(u32, String)> = records
        .iter()
        .filter_map(|r| Some((r.pause?.pid, r.id.to_string())))
        .collect();
    ensure!(
        pauses == recorded,
        "pause processes of this node {pauses:?}, the state file records {recorded:?}"
    );
    let missing: Vec<&str> = records
        .iter()
        .filter(|r| r.wants_pause() && r.pause.is_none())
        .map(|r| r.name.as_str())
        .collect();
    ensure!(
        missing.is_empty(),
        "pods without a recorded pause: {missing:?}"
    );

    let elements = nft_elements(node)?;
    let wanted = expected_elements(&records);
    ensure!(
        elements == wanted,
        "host port elements in the kernel {elements:?}, the state file calls for {wanted:?}"
    );

    let mut ips: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let mut ports: BTreeMap<String, &str> = BTreeMap::new();
    for record in &records {
        for ip in &record.ips {
            if let Some(other) = ips.insert(ip.addr(), record.name.as_str()) {
                anyhow::bail!("address {ip} is held by pods {other} and {}", record.name);
            }
        }
        for element in netns_holder_core::plan::record_elements(record) {
            let key = format!("{} {}", element.map.name(), element.key_text());
            if let Some(other) = ports.insert(key.clone(), record.name.as_str()) {
                anyhow::bail!(
                    "host port {key} is held by pods {other} and {}",
                    record.name
                );
            }
        }
    }
    let status = daemon.cli_json(&["status"])?;
    for pool in status["pools"].as_array().into_iter().flatten() {
        ensure!(
            pool["allocated"].as_u64() == Some(records.len() as u64),
            "pool {} has {} addresses allocated, the state file has {} pods: {status}",
            pool["cidr"],
            pool["allocated"],
            records.len()
        );
    }
    Ok(records)
}
