//! Daemon configuration: the TOML file, its defaults and its validation.
//!
//! The file is parsed into a raw, all-optional form first (unknown keys are rejected), then
//! every value is validated and turned into its typed form, so that each error names the
//! key, the offending value and the reason instead of a generic parse failure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use thiserror::Error;

use crate::cluster::{ClusterConfig, ClusterConfigError, RawCluster};
use crate::datapath::Datapath;
use crate::names::IfName;
use crate::peers::{self, Peer};

/// Default API socket path.
pub const DEFAULT_SOCKET: &str = "/run/netns-holder/api.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/netns-holder";
/// Default directory of network namespace bind mounts.
pub const DEFAULT_NETNS_DIR: &str = "/run/netns";
/// Network namespaces made ahead of creates when the file does not set `netns_pool` (see
/// [`Config::netns_pool`]): enough for a burst of 100 creates (a node's worth of pods
/// restarting at once) to take none of its namespaces' and veth pairs' making, at about
/// 35 MiB of kernel memory (docs/datapath.md, stops 26 and 27).
pub const DEFAULT_NETNS_POOL: u32 = 128;
/// Largest `netns_pool`: each pooled namespace holds about 280 KiB of kernel memory and two
/// descriptors of the daemon.
pub const MAX_NETNS_POOL: u32 = 1024;
/// Default node bridge name.
pub const DEFAULT_BRIDGE: &str = "nh0";
/// Default IPv4 pod CIDR: one that no common runtime or cluster network claims by default
/// (see [`COMMON_DEFAULT_NETWORKS`]), so the daemon starts on a node that has podman,
/// CRI-O, docker or a Kubernetes CNI configured.
pub const DEFAULT_POD_CIDR_V4: &str = "10.222.0.0/16";

/// Networks other tools use by default, which [`DEFAULT_POD_CIDR_V4`] must not overlap
/// (the daemon refuses to start when its pod CIDR overlaps a node address or route).
pub const COMMON_DEFAULT_NETWORKS: [(&str, &str); 10] = [
    ("podman's default network", "10.88.0.0/16"),
    (
        "podman's networks made with `podman network create`",
        "10.89.0.0/16",
    ),
    ("CRI-O's default bridge", "10.85.0.0/16"),
    ("docker's default bridge and user networks", "172.16.0.0/12"),
    ("flannel, kind and kubeadm examples", "10.244.0.0/16"),
    ("k3s pods and services", "10.42.0.0/15"),
    ("Calico's default pool", "192.168.0.0/16"),
    ("kubeadm's service CIDR", "10.96.0.0/12"),
    ("Weave Net", "10.32.0.0/12"),
    ("kubespray's pods and services", "10.233.0.0/16"),
];
/// Default path of the static pause binary.
pub const DEFAULT_PAUSE_BINARY: &str = "/usr/libexec/netns-holder/pause";
/// Smallest accepted MTU (the IPv4 minimum).
pub const MIN_MTU: u32 = 68;
/// Largest accepted MTU.
pub const MAX_MTU: u32 = 65535;
/// Longest accepted IPv4 prefix: a /30 still has one pod address besides network,
/// gateway and broadcast.
pub const MAX_PREFIX_V4: u8 = 30;
/// Longest accepted IPv6 prefix, by the same rule as [`MAX_PREFIX_V4`].
pub const MAX_PREFIX_V6: u8 = 126;

/// A configuration problem. Every variant names the file or key concerned.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not valid TOML or has unknown keys or wrongly typed values.
    #[error("cannot parse config {origin}: {source}")]
    Parse {
        /// Where the text came from (a path or `<string>`).
        origin: String,
        /// The TOML error, which carries the location.
        #[source]
        source: toml::de::Error,
    },
    /// A value is well-formed TOML but not acceptable.
    #[error("config key `{key}` = {value:?} is invalid: {reason}")]
    Invalid {
        /// The key, e.g. `pod_cidr_v4`.
        key: &'static str,
        /// The offending value as written.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The `[cluster]` section is not acceptable (the error names `cluster.<key>`).
    #[error(transparent)]
    Cluster(#[from] ClusterConfigError),
}

/// The validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Path of the gRPC API unix socket.
    pub socket: PathBuf,
    /// Directory of the persistent state file.
    pub state_dir: PathBuf,
    /// Directory where network namespaces are bind-mounted (`<netns_dir>/<pod name>`).
    pub netns_dir: PathBuf,
    /// Name of the node bridge that host veth ends are attached to.
    pub bridge: IfName,
    /// IPv4 pod CIDR (required).
    pub pod_cidr_v4: Ipv4Net,
    /// IPv6 pod CIDR (optional; dual-stack when set).
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// Pod interface MTU; `None` means: use the MTU of the default-route interface.
    pub mtu: Option<u32>,
    /// Path of the static pause binary.
    pub pause_binary: PathBuf,
    /// Peer nodes whose pod CIDRs are routed via their address (see [`crate::peers`]).
    pub peers: Vec<Peer>,
    /// Address (`IP:PORT`) of the HTTP listener serving `/metrics`, `/healthz` and `/readyz`;
    /// `None` (the default) serves none.
    pub metrics_address: Option<SocketAddr>,
    /// Whether pods' traffic to destinations outside the cluster's pod networks is
    /// masqueraded behind the node's address (`masquerade`, default `true`; see
    /// [`crate::egress`]).
    pub masquerade: bool,
    /// More destinations pods reach without masquerade (`no_masquerade_cidrs`), besides the
    /// pod CIDRs of this node and its peers.
    pub no_masquerade_cidrs: Vec<IpNet>,
    /// Cluster mode (`[cluster]`, see [`crate::cluster`]): the pod CIDRs are leased from the
    /// cluster's store and the peers learnt from it. `pod_cidr_v4`/`pod_cidr_v6` then hold
    /// the node's subnet: the first of the cluster CIDR until the daemon has its lease.
    pub cluster: Option<ClusterConfig>,
    /// How pods are wired to the node (`datapath`, `"bridge"` or `"routed"`; see
    /// [`crate::datapath`]). Without the key it holds `bridge` until
    /// [`Config::resolve_datapath`] has run, which the daemon does at start.
    pub datapath: Datapath,
    /// Whether the file set `datapath`.
    pub datapath_set: bool,
    /// How many network namespaces the daemon keeps made ahead of the creates that take them
    /// (`netns_pool`, default [`DEFAULT_NETNS_POOL`], `0` for none), each with the pod's veth
    /// pair in it: making them is the largest part of a create, and each pooled one holds
    /// about 280 KiB of kernel memory (the pair about 90 of it) and two descriptors
    /// (docs/datapath.md). The daemon keeps no more than its pod CIDRs have pods for.
    /// Attached namespaces (made by a runtime) never use it.
    pub netns_pool: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: PathBuf::from(DEFAULT_SOCKET),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            netns_dir: PathBuf::from(DEFAULT_NETNS_DIR),
            bridge: IfName::new(DEFAULT_BRIDGE).expect("default bridge name is valid"),
            pod_cidr_v4: DEFAULT_POD_CIDR_V4
                .parse()
                .expect("default v4 CIDR is valid"),
            pod_cidr_v6: None,
            mtu: None,
            pause_binary: PathBuf::from(DEFAULT_PAUSE_BINARY),
            peers: Vec::new(),
            metrics_address: None,
            masquerade: true,
            no_masquerade_cidrs: Vec::new(),
            cluster: None,
            datapath: Datapath::Bridge,
            datapath_set: false,
            netns_pool: DEFAULT_NETNS_POOL,
        }
    }
}

impl Config {
    /// The datapath of a daemon whose config does not set `datapath`: the one its pods were
    /// created with (`recorded`, the datapath of any pod record; a datapath never changes
    /// under running pods, and records older than the key mean `bridge`), and `routed` on a
    /// node without pods (it scales past the bridge's 1023 ports, removes pods 20x faster and
    /// needs no ARP: docs/datapath.md). A datapath the file sets is kept. Returns the
    /// datapath.
    pub fn resolve_datapath(&mut self, recorded: Option<Datapath>) -> Datapath {
        if !self.datapath_set {
            self.datapath = recorded.unwrap_or(Datapath::Routed);
        }
        self.datapath
    }
}

/// The error for a `netns_pool` outside `0..=MAX_NETNS_POOL`.
fn netns_pool_out_of_range(n: i64) -> ConfigError {
    invalid(
        "netns_pool",
        n.to_string(),
        format!("must be between 0 and {MAX_NETNS_POOL}"),
    )
}

/// The file as written: every key optional, unknown keys rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    socket: Option<String>,
    state_dir: Option<String>,
    netns_dir: Option<String>,
    bridge: Option<String>,
    pod_cidr_v4: Option<String>,
    pod_cidr_v6: Option<String>,
    mtu: Option<i64>,
    pause_binary: Option<String>,
    peers: Option<Vec<RawPeer>>,
    metrics_address: Option<String>,
    masquerade: Option<bool>,
    no_masquerade_cidrs: Option<Vec<String>>,
    cluster: Option<RawCluster>,
    datapath: Option<String>,
    netns_pool: Option<i64>,
}

/// One `peers` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    pod_cidr: String,
    via: String,
}

/// Ranges that can never carry pod addresses: a bridge or pod address there breaks the
/// node (loopback, "this network"), cannot be assigned (multicast, reserved/broadcast), or is
/// not routable between nodes (link-local).
const SPECIAL_PURPOSE: [(&str, &str); 8] = [
    ("0.0.0.0/8", "\"this network\" (0.0.0.0/8)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("240.0.0.0/4", "reserved and broadcast (240.0.0.0/4)"),
    ("::/127", "the unspecified and loopback addresses (::/127)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
];

/// Refuses a pod CIDR that overlaps a [`SPECIAL_PURPOSE`] range.
fn special_purpose(key: &'static str, cidr: IpNet) -> Result<(), ConfigError> {
    for (range, what) in SPECIAL_PURPOSE {
        let range: IpNet = range.parse().expect("valid special-purpose range");
        if range.contains(&cidr.network()) || cidr.contains(&range.network()) {
            return Err(invalid(key, cidr.to_string(), format!("overlaps {what}")));
        }
    }
    Ok(())
}

fn invalid(key: &'static str, value: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        reason: reason.into(),
    }
}

fn absolute_path(
    key: &'static str,
    value: Option<String>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_string());
    if value.is_empty() {
        return Err(invalid(key, value, "path is empty"));
    }
    if !Path::new(&value).is_absolute() {
        return Err(invalid(key, value, "path must be absolute"));
    }
    Ok(PathBuf::from(value))
}

fn cidr<N>(key: &'static str, value: &str, max_prefix: u8) -> Result<N, ConfigError>
where
    N: std::str::FromStr + Copy + std::fmt::Display + CidrParts,
{
    let net: N = value
        .parse()
        .map_err(|_| invalid(key, value, "not a CIDR (expected ADDRESS/PREFIX)"))?;
    if net.prefix() > max_prefix {
        return Err(invalid(
            key,
            value,
            format!(
                "prefix /{} is too small for pods; the longest allowed is /{max_prefix}",
                net.prefix()
            ),
        ));
    }
    if net.has_host_bits() {
        return Err(invalid(
            key,
            value,
            format!("host bits are set; the network is {}", net.truncated()),
        ));
    }
    Ok(net)
}

/// The bits of `Ipv4Net`/`Ipv6Net` that validation needs.
trait CidrParts: Sized {
    fn prefix(&self) -> u8;
    fn has_host_bits(&self) -> bool;
    fn truncated(&self) -> Self;
}

impl CidrParts for Ipv4Net {
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn has_host_bits(&self) -> bool {
        self.addr() != self.network()
    }
    fn truncated(&self) -> Self {
        self.trunc()
    }
}

impl CidrParts for Ipv6Net {
    fn prefix(&self) -> u8 {
        self.prefix_len()
    }
    fn has_host_bits(&self) -> bool {
        self.addr() != self.network()
    }
    fn truncated(&self) -> Self {
        self.trunc()
    }
}

impl Config {
    /// Parses and validates a TOML document; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            origin: origin.to_string(),
            source,
        })?;
        Self::from_raw(raw)
    }

    /// Reads, parses and validates the TOML file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string())
    }

    fn from_raw(mut raw: RawConfig) -> Result<Self, ConfigError> {
        let bridge_text = raw
            .bridge
            .take()
            .unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        let bridge = IfName::new(bridge_text.clone()).map_err(|e| match e {
            crate::names::NameError::BadIfName { reason, .. } => {
                invalid("bridge", bridge_text.clone(), reason)
            }
            other => invalid("bridge", bridge_text.clone(), other.to_string()),
        })?;
        let mtu = match raw.mtu {
            None => None,
            Some(m) if (i64::from(MIN_MTU)..=i64::from(MAX_MTU)).contains(&m) => Some(m as u32),
            Some(m) => {
                return Err(invalid(
                    "mtu",
                    m.to_string(),
                    format!("must be between {MIN_MTU} and {MAX_MTU}"),
                ));
            }
        };
        let netns_pool = match raw.netns_pool {
            None => DEFAULT_NETNS_POOL,
            Some(n) if (0..=i64::from(MAX_NETNS_POOL)).contains(&n) => n as u32,
            Some(n) => return Err(netns_pool_out_of_range(n)),
        };
        let cluster = raw.cluster.take().map(RawCluster::validate).transpose()?;
        if let Some(c) = &cluster {
            for (key, set) in [
                ("pod_cidr_v4", raw.pod_cidr_v4.is_some()),
                ("pod_cidr_v6", raw.pod_cidr_v6.is_some()),
                ("peers", raw.peers.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        match key {
                            "pod_cidr_v4" => raw.pod_cidr_v4.clone().unwrap_or_default(),
                            "pod_cidr_v6" => raw.pod_cidr_v6.clone().unwrap_or_default(),
                            _ => "[...]".to_string(),
                        },
                        "not set by hand in cluster mode ([cluster]): the node's subnet is \
                         leased from the cluster CIDR and the peers are learnt from the cluster",
                    ));
                }
            }
            // Until the daemon has its lease: the first subnet (replaced before anything is
            // made; see `cluster`).
            raw.pod_cidr_v4 = c.subnet_v4(0).map(|s| s.to_string());
            raw.pod_cidr_v6 = c.subnet_v6(0).map(|s| s.to_string());
        }
        let datapath = match raw.datapath.as_deref() {
            None => Datapath::Bridge,
            Some(text) => Datapath::parse(text).ok_or_else(|| {
                invalid(
                    "datapath",
                    text.to_string(),
                    "must be \"bridge\" or \"routed\"".to_string(),
                )
            })?,
        };
        let config = Self {
            cluster,
            datapath,
            netns_pool,
            datapath_set: raw.datapath.is_some(),
            socket: absolute_path("socket", raw.socket, DEFAULT_SOCKET)?,
            state_dir: absolute_path("state_dir", raw.state_dir, DEFAULT_STATE_DIR)?,
            netns_dir: absolute_path("netns_dir", raw.netns_dir, DEFAULT_NETNS_DIR)?,
            bridge,
            pod_cidr_v4: cidr(
                "pod_cidr_v4",
                raw.pod_cidr_v4.as_deref().unwrap_or(DEFAULT_POD_CIDR_V4),
                MAX_PREFIX_V4,
            )?,
            pod_cidr_v6: raw
                .pod_cidr_v6
                .as_deref()
                .map(|v| cidr("pod_cidr_v6", v, MAX_PREFIX_V6))
                .transpose()?,
            mtu,
            pause_binary: absolute_path("pause_binary", raw.pause_binary, DEFAULT_PAUSE_BINARY)?,
            peers: raw
                .peers
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let shown = format!("{{ pod_cidr = {:?}, via = {:?} }}", p.pod_cidr, p.via);
                    let pod_cidr = p.pod_cidr.parse().map_err(|_| {
                        invalid(
                            "peers",
                            shown.clone(),
                            "pod_cidr is not a CIDR (ADDRESS/PREFIX)",
                        )
                    })?;
                    let via = p
                        .via
                        .parse()
                        .map_err(|_| invalid("peers", shown.clone(), "via is not an IP address"))?;
                    Ok(Peer { pod_cidr, via })
                })
                .collect::<Result<_, ConfigError>>()?,
            metrics_address: raw
                .metrics_address
                .map(|v| {
                    v.parse().map_err(|_| {
                        invalid(
                            "metrics_address",
                            v.as_str(),
                            "not an IP:PORT socket address (e.g. \"127.0.0.1:9644\")",
                        )
                    })
                })
                .transpose()?,
            masquerade: raw.masquerade.unwrap_or(true),
            no_masquerade_cidrs: raw
                .no_masquerade_cidrs
                .unwrap_or_default()
                .iter()
                .map(|v| {
                    v.parse::<IpNet>().map_err(|_| {
                        invalid(
                            "no_masquerade_cidrs",
                            v.as_str(),
                            "not a CIDR (expected ADDRESS/PREFIX, e.g. \"192.0.2.0/24\")",
                        )
                    })
                })
                .collect::<Result<_, ConfigError>>()?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Re-checks a configuration built in code (the same rules as the file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.netns_pool > MAX_NETNS_POOL {
            return Err(netns_pool_out_of_range(i64::from(self.netns_pool)));
        }
        for (key, path) in [
            ("socket", &self.socket),
            ("state_dir", &self.state_dir),
            ("netns_dir", &self.netns_dir),
            ("pause_binary", &self.pause_binary),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key,
                    path.display().to_string(),
                    "path must be absolute",
                ));
            }
        }
        cidr::<Ipv4Net>("pod_cidr_v4", &self.pod_cidr_v4.to_string(), MAX_PREFIX_V4)?;
        special_purpose("pod_cidr_v4", IpNet::V4(self.pod_cidr_v4))?;
        if let Some(v6) = self.pod_cidr_v6 {
            cidr::<Ipv6Net>("pod_cidr_v6", &v6.to_string(), MAX_PREFIX_V6)?;
            special_purpose("pod_cidr_v6", IpNet::V6(v6))?;
        }
        if let Some(m) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&m)
        {
            return Err(invalid(
                "mtu",
                m.to_string(),
                format!("must be between {MIN_MTU} and {MAX_MTU}"),
            ));
        }
        // The bridge name appears in the nftables table, quoted.
        if !self
            .bridge
            .as_str()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(
                "bridge",
                self.bridge.to_string(),
                "only ASCII letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        if self.bridge.as_str() == "lo" {
            return Err(invalid(
                "bridge",
                "lo",
                "the loopback interface cannot be the pod bridge",
            ));
        }
        for net in &self.no_masquerade_cidrs {
            if net.addr() != net.network() {
                return Err(invalid(
                    "no_masquerade_cidrs",
                    net.to_string(),
                    format!("host bits are set; the network is {}", net.trunc()),
                ));
            }
            if net.prefix_len() == 0 {
                return Err(invalid(
                    "no_masquerade_cidrs",
                    net.to_string(),
                    "exempts every destination of its family; set `masquerade = false` instead",
                ));
            }
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
            let index = c.index_of(self.pod_cidr_v4).ok_or_else(|| {
                invalid(
                    "pod_cidr_v4",
                    self.pod_cidr_v4.to_string(),
                    format!(
                        "in cluster mode it must be a /{} of cluster_cidr_v4 {}",
                        c.node_prefix_v4, c.cluster_cidr_v4
                    ),
                )
            })?;
            if self.pod_cidr_v6 != c.subnet_v6(index) {
                return Err(invalid(
                    "pod_cidr_v6",
                    self.pod_cidr_v6.map(|v| v.to_string()).unwrap_or_default(),
                    format!(
                        "in cluster mode it must be the IPv6 subnet of the same slot as {}",
                        self.pod_cidr_v4
                    ),
                ));
            }
            if !self.peers.is_empty() {
                return Err(invalid(
                    "peers",
                    "[...]",
                    "not set by hand in cluster mode ([cluster])",
                ));
            }
        }
        let own = self.pod_cidrs();
        for (i, peer) in self.peers.iter().enumerate() {
            peers::validate(peer, &own, &self.peers[..i]).map_err(|e| {
                invalid(
                    "peers",
                    format!(
                        "{{ pod_cidr = \"{}\", via = \"{}\" }}",
                        peer.pod_cidr, peer.via
                    ),
                    e.to_string(),
                )
            })?;
            if self.peers[..i].iter().any(|p| p.pod_cidr == peer.pod_cidr) {
                return Err(invalid(
                    "peers",
                    peer.to_string(),
                    "this pod CIDR is listed twice",
                ));
            }
        }
        Ok(())
    }

    /// This node's pod CIDRs (IPv4 first).
    pub fn pod_cidrs(&self) -> Vec<ipnet::IpNet> {
        let mut out = vec![ipnet::IpNet::V4(self.pod_cidr_v4)];
        out.extend(self.pod_cidr_v6.map(ipnet::IpNet::V6));
        out
    }

    /// Destinations exempt from egress masquerade besides the pod CIDRs of this node and its
    /// peers (see [`crate::egress::exempt_cidrs`]): `no_masquerade_cidrs` and, in cluster
    /// mode, the cluster CIDRs (`cluster_cidr_v4`/`_v6`).
    pub fn egress_extra_exempt(&self) -> Vec<IpNet> {
        let mut out = self.no_masquerade_cidrs.clone();
        if let Some(c) = &self.cluster {
            out.extend(c.cluster_cidrs());
        }
        out
    }

    /// Sets the node's pod CIDRs to the subnet of cluster slot `index` (cluster mode).
    pub fn set_cluster_subnet(&mut self, index: u32) -> Result<(), ConfigError> {
        let c = self
            .cluster
            .as_ref()
            .ok_or_else(|| invalid("cluster", "", "not in cluster mode"))?;
        let v4 = c.subnet_v4(index).ok_or_else(|| {
            invalid(
                "pod_cidr_v4",
                index.to_string(),
                "no such slot of the cluster CIDR",
            )
        })?;
        self.pod_cidr_v4 = v4;
        self.pod_cidr_v6 = c.subnet_v6(index);
        self.validate()
    }

    /// Path of the state file inside [`Config::state_dir`].
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join(crate::state::STATE_FILE_NAME)
    }

    /// Bind-mount path of the network namespace of a pod created (not attached) by us.
    pub fn netns_path(&self, name: &crate::names::PodName) -> PathBuf {
        self.netns_dir.join(name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_purpose_pod_cidrs_and_a_loopback_bridge_are_refused() {
        for (key, value) in [
            ("pod_cidr_v4", "127.0.0.0/8"),
            ("pod_cidr_v4", "0.0.0.0/0"),
            ("pod_cidr_v4", "169.254.0.0/16"),
            ("pod_cidr_v4", "224.0.0.0/24"),
            ("pod_cidr_v4", "255.255.255.0/24"),
            ("pod_cidr_v6", "fe80::/64"),
            ("pod_cidr_v6", "ff00::/64"),
            ("pod_cidr_v6", "::/64"),
        ] {
            let toml = format!("{key} = \"{value}\"");
            match Config::from_toml_str(&toml, "<test>") {
                Err(ConfigError::Invalid { key: k, reason, .. }) => {
                    assert_eq!(k, key, "{value}");
                    assert!(reason.starts_with("overlaps"), "{value}: {reason}");
                }
                other => panic!("{key} = {value}: {other:?}"),
            }
        }
        assert!(Config::from_toml_str("pod_cidr_v4 = \"10.244.0.0/16\"", "<test>").is_ok());
        assert!(matches!(
            Config::from_toml_str("bridge = \"lo\"", "<test>"),
            Err(ConfigError::Invalid { key: "bridge", .. })
        ));
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "<test>")
    }

    #[test]
    fn netns_pool_defaults_and_range() {
        assert_eq!(parse("").unwrap().netns_pool, DEFAULT_NETNS_POOL);
        assert_eq!(parse("netns_pool = 0").unwrap().netns_pool, 0);
        assert_eq!(parse("netns_pool = 1024").unwrap().netns_pool, 1024);
        assert_invalid("netns_pool = 1025", "netns_pool", "between 0 and 1024");
        assert_invalid("netns_pool = -1", "netns_pool", "between 0 and 1024");
        let built = Config {
            netns_pool: 5000,
            ..Config::default()
        };
        assert!(matches!(
            built.validate(),
            Err(ConfigError::Invalid {
                key: "netns_pool",
                ..
            })
        ));
    }

    fn assert_invalid(text: &str, key: &str, reason_part: &str) {
        match parse(text) {
            Err(ConfigError::Invalid { key: k, reason, .. }) => {
                assert_eq!(k, key, "{text}");
                assert!(reason.contains(reason_part), "{text}: {reason}");
            }
            other => panic!("{text}: expected Invalid({key}), got {other:?}"),
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.socket, Path::new("/run/netns-holder/api.sock"));
        assert_eq!(c.state_dir, Path::new("/var/lib/netns-holder"));
        assert_eq!(c.netns_dir, Path::new("/run/netns"));
        assert_eq!(c.bridge.as_str(), "nh0");
        assert_eq!(c.pod_cidr_v4.to_string(), "10.222.0.0/16");
        assert_eq!(c.pod_cidr_v6, None);
        assert_eq!(c.mtu, None);
        assert_eq!(c.pause_binary, Path::new("/usr/libexec/netns-holder/pause"));
        assert_eq!(
            c.state_file(),
            Path::new("/var/lib/netns-holder/state.json")
        );
        c.validate().unwrap();
    }

    #[test]
    fn full_file() {
        let c = parse(
            r#"
            socket = "/run/x.sock"
            state_dir = "/tmp/s"
            netns_dir = "/tmp/n"
            bridge = "br-pods"
            pod_cidr_v4 = "192.168.7.0/24"
            pod_cidr_v6 = "fd00:88::/64"
            mtu = 1400
            pause_binary = "/opt/pause"
            "#,
        )
        .unwrap();
        assert_eq!(c.bridge.as_str(), "br-pods");
        assert_eq!(c.pod_cidr_v6.unwrap().to_string(), "fd00:88::/64");
        assert_eq!(c.mtu, Some(1400));
    }

    #[test]
    fn metrics_address_is_off_by_default_and_names_the_key_when_bad() {
        assert_eq!(parse("").unwrap().metrics_address, None);
        let c = parse("metrics_address = \"127.0.0.1:9644\"").unwrap();
        assert_eq!(c.metrics_address, Some("127.0.0.1:9644".parse().unwrap()));
        let c = parse("metrics_address = \"[::1]:9644\"").unwrap();
        assert_eq!(c.metrics_address, Some("[::1]:9644".parse().unwrap()));
        for bad in ["localhost:9644", "127.0.0.1", "127.0.0.1:99999", ""] {
            assert_invalid(
                &format!("metrics_address = \"{bad}\""),
                "metrics_address",
                "IP:PORT",
            );
        }
        let err = parse("metrics_address = \"127.0.0.1\"").unwrap_err();
        assert!(err.to_string().contains("`metrics_address`"), "{err}");
    }

    #[test]
    fn unknown_key_rejected() {
        let err = parse("brige = \"nh0\"").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }));
        assert!(err.to_string().contains("brige"), "{err}");
    }

    #[test]
    fn wrong_type_rejected() {
        let err = parse("mtu = \"big\"").unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }

    #[test]
    fn peers() {
        let c = parse(
            r#"
            pod_cidr_v4 = "10.244.0.0/24"
            peers = [
              { pod_cidr = "10.244.1.0/24", via = "192.168.50.2" },
              { pod_cidr = "fd00:b::/64", via = "fd99::2" },
            ]
            "#,
        )
        .unwrap();
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[0].to_string(), "10.244.1.0/24 via 192.168.50.2");
        assert_invalid(
            "peers = [{ pod_cidr = \"10.244.1.0\", via = \"192.168.50.2\" }]",
            "peers",
            "pod_cidr is not a CIDR",
        );
        assert_invalid(
            "peers = [{ pod_cidr = \"10.244.1.0/24\", via = \"nodeb\" }]",
            "peers",
            "via is not an IP address",
        );
        assert_invalid(
            "peers = [{ pod_cidr = \"10.222.0.0/24\", via = \"192.168.50.2\" }]",
            "peers",
            "overlaps this node's pod CIDR 10.222.0.0/16",
        );
        assert_invalid(
            "peers = [{ pod_cidr = \"10.99.0.0/24\", via = \"192.168.50.2\" }, \
             { pod_cidr = \"10.99.0.0/16\", via = \"192.168.50.3\" }]",
            "peers",
            "overlaps peer 10.99.0.0/24 via 192.168.50.2",
        );
        assert_invalid(
            "peers = [{ pod_cidr = \"10.99.0.0/24\", via = \"192.168.50.2\" }, \
             { pod_cidr = \"10.99.0.0/24\", via = \"192.168.50.3\" }]",
            "peers",
            "listed twice",
        );
        assert!(matches!(
            parse("peers = [{ pod_cidr = \"10.99.0.0/24\", via = \"1.2.3.4\", node = \"b\" }]"),
            Err(ConfigError::Parse { .. })
        ));
    }

    #[test]
    fn egress_keys() {
        let c = parse("").unwrap();
        assert!(c.masquerade);
        assert!(c.no_masquerade_cidrs.is_empty());
        let c = parse(
            r#"
            masquerade = false
            no_masquerade_cidrs = ["192.0.2.0/24", "fd00:99::/48", "198.51.100.7/32"]
            "#,
        )
        .unwrap();
        assert!(!c.masquerade);
        assert_eq!(
            c.egress_extra_exempt(),
            [
                "192.0.2.0/24".parse::<IpNet>().unwrap(),
                "fd00:99::/48".parse().unwrap(),
                "198.51.100.7/32".parse().unwrap(),
            ]
        );
        assert_invalid(
            "no_masquerade_cidrs = [\"192.0.2.0\"]",
            "no_masquerade_cidrs",
            "not a CIDR",
        );
        assert_invalid(
            "no_masquerade_cidrs = [\"192.0.2.1/24\"]",
            "no_masquerade_cidrs",
            "host bits are set; the network is 192.0.2.0/24",
        );
        assert_invalid(
            "no_masquerade_cidrs = [\"0.0.0.0/0\"]",
            "no_masquerade_cidrs",
            "masquerade = false",
        );
        assert!(matches!(
            parse("masquerade = \"yes\""),
            Err(ConfigError::Parse { .. })
        ));
        let err = parse("no_masquerade_cidrs = [\"x\"]")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`no_masquerade_cidrs`") && err.contains("\"x\""),
            "{err}"
        );
    }

    const CLUSTER: &str = r#"
        [cluster]
        backend = "etcd"
        etcd_endpoints = ["http://192.0.2.5:2379", "http://192.0.2.6:2379"]
        cluster_cidr_v4 = "10.100.0.0/16"
        node_prefix_v4 = 24
        cluster_cidr_v6 = "fd00:100::/56"
        node_name = "node-a"
        node_address = "192.0.2.1"
        lease_ttl_seconds = 5
    "#;

    #[test]
    fn cluster_section() {
        let mut c = parse(&format!(
            "no_masquerade_cidrs = [\"198.51.100.0/24\"]\n{CLUSTER}"
        ))
        .unwrap();
        let cluster = c.cluster.clone().unwrap();
        assert_eq!(cluster.etcd_endpoints.len(), 2);
        assert_eq!(cluster.node_name.as_deref(), Some("node-a"));
        assert_eq!(cluster.lease_ttl_seconds, 5);
        // The first slot until the lease is known.
        assert_eq!(c.pod_cidr_v4.to_string(), "10.100.0.0/24");
        assert_eq!(c.pod_cidr_v6.unwrap().to_string(), "fd00:100::/64");
        // The cluster CIDRs join the egress exemptions.
        let exempt: Vec<String> = c
            .egress_extra_exempt()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            exempt,
            ["198.51.100.0/24", "10.100.0.0/16", "fd00:100::/56"]
        );
        c.set_cluster_subnet(5).unwrap();
        assert_eq!(c.pod_cidr_v4.to_string(), "10.100.5.0/24");
        assert_eq!(c.pod_cidr_v6.unwrap().to_string(), "fd00:100:0:5::/64");
        assert!(c.set_cluster_subnet(256).is_err());
        c.pod_cidr_v4 = "10.222.0.0/24".parse().unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "pod_cidr_v4",
                ..
            })
        ));
        assert_eq!(parse("").unwrap().cluster, None);
    }

    #[test]
    fn cluster_mode_refuses_hand_set_cidrs_and_peers() {
        for (extra, key) in [
            ("pod_cidr_v4 = \"10.100.0.0/24\"\n", "pod_cidr_v4"),
            ("pod_cidr_v6 = \"fd00:1::/64\"\n", "pod_cidr_v6"),
            ("peers = []\n", "peers"),
        ] {
            assert_invalid(&format!("{extra}{CLUSTER}"), key, "cluster mode");
        }
        let err =
            parse(&CLUSTER.replace("lease_ttl_seconds = 5", "lease_ttl_seconds = 0")).unwrap_err();
        assert!(matches!(err, ConfigError::Cluster(_)), "{err}");
        assert!(
            err.to_string().contains("`cluster.lease_ttl_seconds`"),
            "{err}"
        );
        let err = parse(&format!("{CLUSTER}etcd_endpont = []\n")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("etcd_endpont"), "{err}");
    }

    #[test]
    fn bridge_name_must_be_plain() {
        assert_invalid("bridge = \"nh\\\"0\"", "bridge", "only ASCII letters");
        assert!(parse("bridge = \"br-pods.1_a\"").is_ok());
    }

    #[test]
    fn bad_cidrs() {
        assert_invalid("pod_cidr_v4 = \"10.88.0.0\"", "pod_cidr_v4", "not a CIDR");
        assert_invalid("pod_cidr_v4 = \"fd00::/64\"", "pod_cidr_v4", "not a CIDR");
        assert_invalid("pod_cidr_v4 = \"10.88.0.0/31\"", "pod_cidr_v4", "too small");
        assert_invalid("pod_cidr_v4 = \"10.88.0.0/32\"", "pod_cidr_v4", "too small");
        assert_invalid(
            "pod_cidr_v4 = \"10.88.0.5/16\"",
            "pod_cidr_v4",
            "10.88.0.0/16",
        );
        assert_invalid("pod_cidr_v6 = \"10.0.0.0/8\"", "pod_cidr_v6", "not a CIDR");
        assert_invalid("pod_cidr_v6 = \"fd00::/127\"", "pod_cidr_v6", "too small");
        assert_invalid("pod_cidr_v6 = \"fd00::1/64\"", "pod_cidr_v6", "host bits");
        assert!(parse("pod_cidr_v4 = \"10.0.0.0/30\"").is_ok());
        assert!(parse("pod_cidr_v6 = \"fd00::/126\"").is_ok());
    }

    #[test]
    fn error_message_names_key_and_value() {
        let err = parse("pod_cidr_v4 = \"10.88.0.0/31\"").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("pod_cidr_v4") && msg.contains("10.88.0.0/31"),
            "{msg}"
        );
    }

    #[test]
    fn an_unset_datapath_follows_the_records_and_is_routed_without_pods() {
        let mut unset = parse("").unwrap();
        assert!(!unset.datapath_set);
        assert_eq!(unset.clone().resolve_datapath(None), Datapath::Routed);
        assert_eq!(
            unset.clone().resolve_datapath(Some(Datapath::Bridge)),
            Datapath::Bridge
        );
        assert_eq!(
            unset.resolve_datapath(Some(Datapath::Routed)),
            Datapath::Routed
        );
        assert_eq!(unset.datapath, Datapath::Routed);
        // A datapath the file sets is kept (the manager refuses to start if pods differ).
        let mut set = parse("datapath = \"bridge\"").unwrap();
        assert!(set.datapath_set);
        assert_eq!(set.resolve_datapath(None), Datapath::Bridge);
        assert_eq!(
            set.resolve_datapath(Some(Datapath::Routed)),
            Datapath::Bridge
        );
    }

    #[test]
    fn datapath_is_bridge_or_routed() {
        assert_eq!(parse("").unwrap().datapath, Datapath::Bridge);
        assert_eq!(
            parse("datapath = \"routed\"").unwrap().datapath,
            Datapath::Routed
        );
        assert_eq!(
            parse("datapath = \"bridge\"").unwrap().datapath,
            Datapath::Bridge
        );
        assert_invalid("datapath = \"l3\"", "datapath", "\"bridge\" or \"routed\"");
    }

    #[test]
    fn bad_bridge_names() {
        assert_invalid("bridge = \"abcdefghijklmnop\"", "bridge", "longer than 15");
        assert_invalid("bridge = \"a/b\"", "bridge", "'/'");
        assert_invalid("bridge = \"a b\"", "bridge", "whitespace");
        assert_invalid("bridge = \"\"", "bridge", "empty");
    }

    #[test]
    fn mtu_range() {
        assert_invalid("mtu = 67", "mtu", "between 68 and 65535");
        assert_invalid("mtu = 65536", "mtu", "between 68 and 65535");
        assert_invalid("mtu = -1", "mtu", "between");
        assert_eq!(parse("mtu = 68").unwrap().mtu, Some(68));
        assert_eq!(parse("mtu = 65535").unwrap().mtu, Some(65535));
    }

    #[test]
    fn relative_paths_rejected() {
        assert_invalid("socket = \"api.sock\"", "socket", "absolute");
        assert_invalid("state_dir = \"var/lib\"", "state_dir", "absolute");
        assert_invalid("netns_dir = \"./netns\"", "netns_dir", "absolute");
        assert_invalid("pause_binary = \"pause\"", "pause_binary", "absolute");
        assert_invalid("state_dir = \"\"", "state_dir", "empty");
    }

    #[test]
    fn validate_checks_code_built_configs() {
        let mut c = Config {
            mtu: Some(10),
            ..Config::default()
        };
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid { key: "mtu", .. })
        ));
        c.mtu = None;
        c.state_dir = PathBuf::from("rel");
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Invalid {
                key: "state_dir",
                ..
            })
        ));
    }

    #[test]
    fn load_missing_file_names_path() {
        let err = Config::load(Path::new("/nonexistent/netns-holder.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/netns-holder.toml"),
            "{err}"
        );
    }

    #[test]
    fn the_default_pod_cidr_clashes_with_no_common_default() {
        let ours: ipnet::Ipv4Net = DEFAULT_POD_CIDR_V4.parse().unwrap();
        for (whose, cidr) in COMMON_DEFAULT_NETWORKS {
            let theirs: ipnet::Ipv4Net = cidr.parse().unwrap();
            assert!(
                !ours.contains(&theirs.network()) && !theirs.contains(&ours.network()),
                "{ours} overlaps {whose} {theirs}"
            );
        }
        assert_eq!(Config::default().pod_cidr_v4, ours);
    }
}
