//! Cluster mode: nodes lease their pod subnets from a shared store and learn each other.
//!
//! With a `[cluster]` section in the configuration, a node does not have its pod CIDR and its
//! peers typed in: it takes a free `node_prefix_v4` subnet of `cluster_cidr_v4` (and the
//! IPv6 subnet of the same index of `cluster_cidr_v6`, dual-stack) in the cluster's store,
//! bound to a lease it keeps alive, and every other node's subnet becomes a peer (a host-gw
//! route via that node's address).
//!
//! Everything here is pure: the `[cluster]` configuration, the carving of subnets, the key
//! layout and records in the store, the claim decisions, the peers a set of records gives,
//! and the node's cluster state file (`cluster.json`, so a restart asks for the same subnet
//! and keeps serving with it while the store is unreachable). The store itself is reached
//! through a [`ClusterBackend`]; the etcd one lives in the daemon crate (`cluster::etcd`).
//!
//! # Key layout (etcd)
//!
//! One key per leased subnet, attached to the holder's lease:
//! `/netns-holder/subnets/v4/10.100.3.0-24` → `{"node":"node-a","address":"192.0.2.1",
//! "pod_cidr_v6":"fd00:100:0:3::/64","address_v6":null}`. A node takes a subnet in one
//! transaction (`version(key) == 0` → put with its lease), so two nodes never hold one.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::peers::Peer;

/// The prefix of every key netns-holder writes in the store.
pub const KEY_PREFIX: &str = "/netns-holder/";
/// The prefix of the subnet keys (IPv4 subnet of each node; the IPv6 one is in the record).
pub const SUBNETS_PREFIX: &str = "/netns-holder/subnets/v4/";
/// The node's cluster state file, in `state_dir`.
pub const STATE_FILE_NAME: &str = "cluster.json";
/// Default `lease_ttl_seconds`.
pub const DEFAULT_LEASE_TTL_SECONDS: u64 = 30;
/// Shortest accepted lease TTL (etcd's own minimum is about 1.5 s with its defaults).
pub const MIN_LEASE_TTL_SECONDS: u64 = 2;
/// Longest accepted lease TTL (a day).
pub const MAX_LEASE_TTL_SECONDS: u64 = 86_400;
/// Default `node_prefix_v4`.
pub const DEFAULT_NODE_PREFIX_V4: u8 = 24;
/// Default `node_prefix_v6`.
pub const DEFAULT_NODE_PREFIX_V6: u8 = 64;

/// The store a cluster runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// etcd v3 (`etcd_endpoints`).
    Etcd,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Etcd => "etcd",
        })
    }
}

/// The validated `[cluster]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The store (`backend`).
    pub backend: BackendKind,
    /// etcd client URLs (`etcd_endpoints`), `http://` or `https://`.
    pub etcd_endpoints: Vec<String>,
    /// CA certificate (PEM) that signs the etcd members' certificates (`etcd_ca`).
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd (`etcd_cert`).
    pub etcd_cert: Option<PathBuf>,
    /// Its private key (PEM) (`etcd_key`).
    pub etcd_key: Option<PathBuf>,
    /// Node subnets are carved from here (`cluster_cidr_v4`).
    pub cluster_cidr_v4: Ipv4Net,
    /// Prefix length of a node's IPv4 subnet (`node_prefix_v4`).
    pub node_prefix_v4: u8,
    /// Dual-stack: node IPv6 subnets are carved from here (`cluster_cidr_v6`).
    pub cluster_cidr_v6: Option<Ipv6Net>,
    /// Prefix length of a node's IPv6 subnet (`node_prefix_v6`).
    pub node_prefix_v6: u8,
    /// This node's name (`node_name`); `None`: the hostname.
    pub node_name: Option<String>,
    /// This node's address, the other nodes' gateway to its pods (`node_address`); `None`:
    /// the address of the interface of the default route.
    pub node_address: Option<IpAddr>,
    /// How long a silent node keeps its subnet (`lease_ttl_seconds`).
    pub lease_ttl_seconds: u64,
}

/// The `[cluster]` section as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCluster {
    backend: Option<String>,
    etcd_endpoints: Option<Vec<String>>,
    etcd_ca: Option<String>,
    etcd_cert: Option<String>,
    etcd_key: Option<String>,
    cluster_cidr_v4: Option<String>,
    node_prefix_v4: Option<i64>,
    cluster_cidr_v6: Option<String>,
    node_prefix_v6: Option<i64>,
    node_name: Option<String>,
    node_address: Option<String>,
    lease_ttl_seconds: Option<i64>,
}

/// A problem with the `[cluster]` section: the key (`cluster.<key>`), the value, the reason.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("config key `cluster.{key}` = {value:?} is invalid: {reason}")]
pub struct ClusterConfigError {
    /// The key inside `[cluster]`.
    pub key: &'static str,
    /// The value as written.
    pub value: String,
    /// Why.
    pub reason: String,
}

fn bad(
    key: &'static str,
    value: impl Into<String>,
    reason: impl Into<String>,
) -> ClusterConfigError {
    ClusterConfigError {
        key,
        value: value.into(),
        reason: reason.into(),
    }
}

/// Checks a node name: 1 to 253 ASCII letters, digits, `-`, `_` or `.` (a hostname).
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("only ASCII letters, digits, '-', '_' and '.' are allowed".into());
    }
    Ok(())
}

impl RawCluster {
    /// Validates the section.
    pub(crate) fn validate(self) -> Result<ClusterConfig, ClusterConfigError> {
        let backend = match self.backend.as_deref() {
            Some("etcd") => BackendKind::Etcd,
            Some(other) => {
                return Err(bad(
                    "backend",
                    other,
                    "unknown backend; the one supported is \"etcd\" (see docs/cluster.md \
                     for the Kubernetes design)",
                ));
            }
            None => return Err(bad("backend", "", "missing; set backend = \"etcd\"")),
        };
        let etcd_endpoints = self.etcd_endpoints.unwrap_or_default();
        if etcd_endpoints.is_empty() {
            return Err(bad(
                "etcd_endpoints",
                "[]",
                "at least one endpoint is needed (e.g. \"https://10.0.0.5:2379\")",
            ));
        }
        let path = |key: &'static str, v: Option<String>| -> Result<Option<PathBuf>, _> {
            match v {
                None => Ok(None),
                Some(p) if Path::new(&p).is_absolute() => Ok(Some(PathBuf::from(p))),
                Some(p) => Err(bad(key, p, "path must be absolute")),
            }
        };
        let etcd_ca = path("etcd_ca", self.etcd_ca)?;
        let etcd_cert = path("etcd_cert", self.etcd_cert)?;
        let etcd_key = path("etcd_key", self.etcd_key)?;
        let cluster_cidr_v4: Ipv4Net = match self.cluster_cidr_v4.as_deref() {
            None => {
                return Err(bad(
                    "cluster_cidr_v4",
                    "",
                    "missing; node subnets are carved from it (e.g. \"10.100.0.0/16\")",
                ));
            }
            Some(v) => v
                .parse()
                .map_err(|_| bad("cluster_cidr_v4", v, "not an IPv4 CIDR (ADDRESS/PREFIX)"))?,
        };
        let cluster_cidr_v6: Option<Ipv6Net> = self
            .cluster_cidr_v6
            .as_deref()
            .map(|v| {
                v.parse()
                    .map_err(|_| bad("cluster_cidr_v6", v, "not an IPv6 CIDR (ADDRESS/PREFIX)"))
            })
            .transpose()?;
        let prefix = |key: &'static str, v: Option<i64>, default: u8| -> Result<u8, _> {
            match v {
                None => Ok(default),
                Some(p) => {
                    u8::try_from(p).map_err(|_| bad(key, p.to_string(), "not a prefix length"))
                }
            }
        };
        let node_prefix_v4 = prefix(
            "node_prefix_v4",
            self.node_prefix_v4,
            DEFAULT_NODE_PREFIX_V4,
        )?;
        let node_prefix_v6 = prefix(
            "node_prefix_v6",
            self.node_prefix_v6,
            DEFAULT_NODE_PREFIX_V6,
        )?;
        if self.node_prefix_v6.is_some() && cluster_cidr_v6.is_none() {
            return Err(bad(
                "node_prefix_v6",
                node_prefix_v6.to_string(),
                "set without cluster_cidr_v6",
            ));
        }
        let node_name = self.node_name;
        if let Some(name) = &node_name {
            validate_node_name(name).map_err(|reason| bad("node_name", name.as_str(), reason))?;
        }
        let node_address = self
            .node_address
            .as_deref()
            .map(|v| {
                v.parse::<IpAddr>()
                    .map_err(|_| bad("node_address", v, "not an IP address"))
            })
            .transpose()?;
        let lease_ttl_seconds = match self.lease_ttl_seconds {
            None => DEFAULT_LEASE_TTL_SECONDS,
            Some(t) => {
                u64::try_from(t).map_err(|_| bad("lease_ttl_seconds", t.to_string(), "negative"))?
            }
        };
        let config = ClusterConfig {
            backend,
            etcd_endpoints,
            etcd_ca,
            etcd_cert,
            etcd_key,
            cluster_cidr_v4,
            node_prefix_v4,
            cluster_cidr_v6,
            node_prefix_v6,
            node_name,
            node_address,
            lease_ttl_seconds,
        };
        config.validate()?;
        Ok(config)
    }
}

impl ClusterConfig {
    /// Re-checks the section (the same rules as the file).
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        let mut tls = false;
        for e in &self.etcd_endpoints {
            let rest = if let Some(rest) = e.strip_prefix("https://") {
                tls = true;
                rest
            } else if let Some(rest) = e.strip_prefix("http://") {
                rest
            } else {
                return Err(bad(
                    "etcd_endpoints",
                    e.as_str(),
                    "an endpoint is a URL starting with http:// or https://",
                ));
            };
            if rest.is_empty() || rest.contains('/') && !rest.ends_with('/') {
                return Err(bad(
                    "etcd_endpoints",
                    e.as_str(),
                    "expected SCHEME://HOST:PORT",
                ));
            }
        }
        if tls && self.etcd_ca.is_none() {
            return Err(bad(
                "etcd_ca",
                "",
                "an https:// endpoint needs the CA that signs the etcd members' certificates",
            ));
        }
        if !tls {
            for (key, v) in [
                ("etcd_ca", &self.etcd_ca),
                ("etcd_cert", &self.etcd_cert),
                ("etcd_key", &self.etcd_key),
            ] {
                if let Some(p) = v {
                    return Err(bad(
                        key,
                        p.display().to_string(),
                        "TLS settings need https:// endpoints",
                    ));
                }
            }
        }
        if self.etcd_cert.is_some() != self.etcd_key.is_some() {
            return Err(bad(
                if self.etcd_cert.is_some() {
                    "etcd_key"
                } else {
                    "etcd_cert"
                },
                "",
                "etcd_cert and etcd_key go together (a client certificate and its key)",
            ));
        }
        let v4 = self.cluster_cidr_v4;
        if v4.addr() != v4.network() {
            return Err(bad(
                "cluster_cidr_v4",
                v4.to_string(),
                format!("host bits are set; the network is {}", v4.trunc()),
            ));
        }
        if self.node_prefix_v4 < v4.prefix_len()
            || self.node_prefix_v4 > crate::config::MAX_PREFIX_V4
        {
            return Err(bad(
                "node_prefix_v4",
                self.node_prefix_v4.to_string(),
                format!(
                    "must be between the cluster CIDR's /{} and /{}",
                    v4.prefix_len(),
                    crate::config::MAX_PREFIX_V4
                ),
            ));
        }
        if let Some(v6) = self.cluster_cidr_v6 {
            if v6.addr() != v6.network() {
                return Err(bad(
                    "cluster_cidr_v6",
                    v6.to_string(),
                    format!("host bits are set; the network is {}", v6.trunc()),
                ));
            }
            if self.node_prefix_v6 < v6.prefix_len()
                || self.node_prefix_v6 > crate::config::MAX_PREFIX_V6
            {
                return Err(bad(
                    "node_prefix_v6",
                    self.node_prefix_v6.to_string(),
                    format!(
                        "must be between the cluster CIDR's /{} and /{}",
                        v6.prefix_len(),
                        crate::config::MAX_PREFIX_V6
                    ),
                ));
            }
        }
        if !(MIN_LEASE_TTL_SECONDS..=MAX_LEASE_TTL_SECONDS).contains(&self.lease_ttl_seconds) {
            return Err(bad(
                "lease_ttl_seconds",
                self.lease_ttl_seconds.to_string(),
                format!("must be between {MIN_LEASE_TTL_SECONDS} and {MAX_LEASE_TTL_SECONDS}"),
            ));
        }
        if let Some(name) = &self.node_name {
            validate_node_name(name).map_err(|reason| bad("node_name", name.as_str(), reason))?;
        }
        if let Some(a) = self.node_address
            && (a.is_unspecified() || a.is_loopback() || a.is_multicast())
        {
            return Err(bad(
                "node_address",
                a.to_string(),
                "must be a unicast address the other nodes reach this node at",
            ));
        }
        Ok(())
    }

    /// How many node subnets there are (IPv4; dual-stack: the smaller of both counts),
    /// capped at `u32::MAX`.
    pub fn slots(&self) -> u32 {
        let count = |bits: u32| -> u32 { if bits >= 32 { u32::MAX } else { 1u32 << bits } };
        let v4 = count(u32::from(
            self.node_prefix_v4 - self.cluster_cidr_v4.prefix_len(),
        ));
        match self.cluster_cidr_v6 {
            Some(v6) => v4.min(count(u32::from(self.node_prefix_v6 - v6.prefix_len()))),
            None => v4,
        }
    }

    /// The IPv4 subnet of slot `index`.
    pub fn subnet_v4(&self, index: u32) -> Option<Ipv4Net> {
        if index >= self.slots() {
            return None;
        }
        let shift = 32 - u32::from(self.node_prefix_v4);
        let base = u32::from(self.cluster_cidr_v4.network());
        let addr = base.checked_add(u32::try_from(u64::from(index) << shift).ok()?)?;
        Ipv4Net::new(Ipv4Addr::from(addr), self.node_prefix_v4).ok()
    }

    /// The IPv6 subnet of slot `index` (dual-stack only).
    pub fn subnet_v6(&self, index: u32) -> Option<Ipv6Net> {
        let v6 = self.cluster_cidr_v6?;
        if index >= self.slots() {
            return None;
        }
        let shift = 128 - u32::from(self.node_prefix_v6);
        let base = u128::from(v6.network());
        let offset = u128::from(index).checked_shl(shift)?;
        Ipv6Net::new(Ipv6Addr::from(base + offset), self.node_prefix_v6).ok()
    }

    /// The slot of an IPv4 node subnet, if it is one of this cluster's.
    pub fn index_of(&self, subnet: Ipv4Net) -> Option<u32> {
        if subnet.prefix_len() != self.node_prefix_v4
            || !self.cluster_cidr_v4.contains(&subnet.network())
            || subnet.addr() != subnet.network()
        {
            return None;
        }
        let shift = 32 - u32::from(self.node_prefix_v4);
        let offset = u32::from(subnet.network()) - u32::from(self.cluster_cidr_v4.network());
        let index = u32::try_from(u64::from(offset) >> shift).ok()?;
        (index < self.slots()).then_some(index)
    }

    /// The destinations every node exempts from masquerade: the cluster CIDRs.
    pub fn cluster_cidrs(&self) -> Vec<IpNet> {
        let mut out = vec![IpNet::V4(self.cluster_cidr_v4)];
        out.extend(self.cluster_cidr_v6.map(IpNet::V6));
        out
    }

    /// The first slot a node tries when it has no subnet yet: spread by its name (FNV-1a),
    /// so that many nodes starting at once rarely race for the same subnet.
    pub fn start_slot(&self, node: &str) -> u32 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for b in node.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        u32::try_from(hash % u64::from(self.slots().max(1))).unwrap_or(0)
    }

    /// The first free slot from `start` on (wrapping), skipping `taken`; `None` when every
    /// subnet is taken.
    pub fn free_slot(&self, start: u32, taken: &BTreeSet<Ipv4Net>) -> Option<u32> {
        let slots = self.slots();
        if slots == 0 {
            return None;
        }
        if u64::try_from(taken.len()).unwrap_or(u64::MAX) >= u64::from(slots) {
            return None;
        }
        let start = start % slots;
        (0..slots)
            .map(|i| ((u64::from(start) + u64::from(i)) % u64::from(slots)) as u32)
            .find(|&i| self.subnet_v4(i).is_some_and(|s| !taken.contains(&s)))
    }
}

/// The key of a node subnet.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!(
        "{SUBNETS_PREFIX}{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The subnet a key names, if it is a well-formed subnet key.
pub fn parse_subnet_key(key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(SUBNETS_PREFIX)?;
    let (addr, prefix) = rest.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, prefix.parse().ok()?).ok()?;
    (net.addr() == net.network()).then_some(net)
}

/// The value of a subnet key: who holds it and how it is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetRecord {
    /// The holder's node name.
    pub node: String,
    /// The holder's address (the gateway to its IPv4 subnet; also to its IPv6 one when it is
    /// an IPv6 address).
    pub address: IpAddr,
    /// The holder's IPv6 subnet (dual-stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// The holder's IPv6 address, the gateway to its IPv6 subnet (dual-stack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_v6: Option<Ipv6Addr>,
}

impl SubnetRecord {
    /// The JSON stored in the key.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a subnet record serializes")
    }

    /// Parses a key's value; the error says what is wrong.
    pub fn from_json(value: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(value).map_err(|e| e.to_string())
    }
}

/// Who holds a subnet this node wants, as the store says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nobody: take it.
    Free,
    /// This node (a lease of an earlier run of it, not expired yet): take it over.
    Ours,
    /// Another node.
    TakenBy(String),
}

/// Decides on a subnet key's current value for node `me`.
pub fn claim(me: &str, existing: Option<&SubnetRecord>) -> Claim {
    match existing {
        None => Claim::Free,
        Some(r) if r.node == me => Claim::Ours,
        Some(r) => Claim::TakenBy(r.node.clone()),
    }
}

/// A peer learnt from the cluster: another node's subnet and address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterPeer {
    /// The node's name.
    pub node: String,
    /// Its pod CIDR (one family).
    pub pod_cidr: IpNet,
    /// Its address of that family.
    pub via: IpAddr,
}

impl ClusterPeer {
    /// The peer (route).
    pub fn peer(&self) -> Peer {
        Peer {
            pod_cidr: self.pod_cidr,
            via: self.via,
        }
    }
}

/// What the records of the store make of the other nodes: the peers to route to, and
/// records that cannot be routed (why, by subnet). Records of `me` are not peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// Peers, ordered.
    pub peers: Vec<ClusterPeer>,
    /// Records that give no route: (what, why).
    pub ignored: Vec<(String, String)>,
}

/// The peers of the subnet records `records` (by IPv4 subnet), as node `me` sees them.
pub fn peers_from(
    config: &ClusterConfig,
    me: &str,
    records: &BTreeMap<Ipv4Net, SubnetRecord>,
) -> PeerSet {
    let mut set = PeerSet::default();
    for (subnet, r) in records {
        if r.node == me {
            continue;
        }
        if config.index_of(*subnet).is_none() {
            set.ignored.push((
                format!("subnet {subnet} of node {}", r.node),
                format!(
                    "not a /{} of the cluster CIDR {}",
                    config.node_prefix_v4, config.cluster_cidr_v4
                ),
            ));
            continue;
        }
        match r.address {
            IpAddr::V4(_) => set.peers.push(ClusterPeer {
                node: r.node.clone(),
                pod_cidr: IpNet::V4(*subnet),
                via: r.address,
            }),
            IpAddr::V6(_) => set.ignored.push((
                format!("subnet {subnet} of node {}", r.node),
                format!("its address {} is not IPv4", r.address),
            )),
        }
        if let (Some(v6), Some(_)) = (r.pod_cidr_v6, config.cluster_cidr_v6) {
            let via = r.address_v6.map(IpAddr::V6).or(match r.address {
                IpAddr::V6(a) => Some(IpAddr::V6(a)),
                IpAddr::V4(_) => None,
            });
            match via {
                Some(via) => set.peers.push(ClusterPeer {
                    node: r.node.clone(),
                    pod_cidr: IpNet::V6(v6),
                    via,
                }),
                None => set.ignored.push((
                    format!("subnet {v6} of node {}", r.node),
                    "the node published no IPv6 address".to_string(),
                )),
            }
        }
    }
    set.peers.sort();
    set
}

/// Whether `address` is on a network directly connected to this node (`connected`: the
/// node's addresses with their prefix lengths): only such a peer can be a gateway.
pub fn on_link(address: IpAddr, connected: &[IpNet]) -> bool {
    connected
        .iter()
        .any(|n| n.prefix_len() < n.max_prefix_len() && n.contains(&address) && n.addr() != address)
}

/// The node's cluster state file (`cluster.json` in `state_dir`): what it holds in the
/// cluster, so a restart asks for the same subnet and serves with it while the store is
/// unreachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterState {
    /// The node's name.
    pub node: String,
    /// Its IPv4 subnet.
    pub pod_cidr_v4: Ipv4Net,
    /// Its IPv6 subnet (dual-stack).
    #[serde(default)]
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// The peers last learnt (their node names are shown by `status` while the store is
    /// unreachable).
    #[serde(default)]
    pub peers: Vec<ClusterPeer>,
}

/// A cluster state file that cannot be read or written; names the file.
#[derive(Debug, Error)]
pub enum ClusterStateError {
    /// Reading or writing failed.
    #[error("cluster state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a cluster state.
    #[error("cluster state file {path} is not valid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl ClusterState {
    /// Loads the file; `Ok(None)` when there is none.
    pub fn load(path: &Path) -> Result<Option<Self>, ClusterStateError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| ClusterStateError::Invalid {
                        path: path.to_path_buf(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ClusterStateError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Saves the file atomically (a temporary file, fsynced, renamed over it).
    pub fn save(&self, path: &Path) -> Result<(), ClusterStateError> {
        let io = |source| ClusterStateError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        let text = serde_json::to_vec_pretty(self).expect("cluster state serializes");
        file.write_all(&text).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Whether the recorded subnet fits `config` (same cluster CIDR and prefix) and node.
    pub fn fits(&self, config: &ClusterConfig, node: &str) -> bool {
        self.node == node
            && config
                .index_of(self.pod_cidr_v4)
                .is_some_and(|i| config.subnet_v6(i) == self.pod_cidr_v6)
    }
}

/// What `status` reports of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// `"etcd"`.
    pub backend: BackendKind,
    /// This node's name.
    pub node: String,
    /// Its IPv4 subnet.
    pub pod_cidr_v4: Ipv4Net,
    /// Its IPv6 subnet.
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// The lease TTL.
    pub lease_ttl_seconds: u64,
    /// Whether the store answers now.
    pub connected: bool,
    /// Set when this node's subnet was taken by another node while it was cut off: new pods
    /// are refused (the message names both nodes).
    pub conflict: Option<String>,
}

/// The store, as the daemon's cluster loop uses it. The etcd implementation is the daemon's
/// `cluster::etcd::EtcdBackend`; a Kubernetes one (docs/cluster.md) would implement the same.
pub trait ClusterBackend: Send + Sync {
    /// The backend's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Takes `subnet` for `record.node` with the node's lease, atomically: succeeds only if
    /// nobody holds it or the record there is this node's (an earlier run's). Returns the
    /// holder when another node has it.
    fn take_subnet(
        &mut self,
        subnet: Ipv4Net,
        record: &SubnetRecord,
    ) -> impl Future<Output = Result<Claim, Self::Error>> + Send;

    /// Every subnet record, and the store revision they were read at.
    fn list(
        &mut self,
    ) -> impl Future<Output = Result<(BTreeMap<Ipv4Net, SubnetRecord>, i64), Self::Error>> + Send;
}

#[cfg(test)]
mod tests;
