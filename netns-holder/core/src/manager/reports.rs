//! What the manager's operations take and answer: requests, [`PodInfo`], the reports of
//! `reconcile`/`repair`, `reload` and `gc`, and the daemon [`DaemonStatus`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ipam::PoolUsage;
use crate::names::{IfName, PodId, PodName};
use crate::peers::PeerRecord;
use crate::ports::PortMapping;
use crate::record::PodRecord;

/// What `create` returns, and what the CLI prints as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodInfo {
    /// The pod name.
    pub name: PodName,
    /// The pod id.
    pub id: PodId,
    /// The network namespace path.
    pub netns: PathBuf,
    /// The pause process id, `null` if there is none.
    pub pause_pid: Option<u32>,
    /// Addresses in CIDR notation (IPv4 first).
    pub ips: Vec<IpNet>,
    /// Default gateways.
    pub gateways: Vec<IpAddr>,
    /// Interface inside the pod (`eth0`).
    pub interface: IfName,
    /// Host-side veth (its id's name, or the pool name of the pair it adopted).
    pub host_veth: IfName,
    /// The host ports the pod was created with (empty when none); published unless
    /// `ports_released`.
    pub ports: Vec<PortMapping>,
    /// The ports were withdrawn ([`super::PodManager::release_pod_ports`]).
    #[serde(default)]
    pub ports_released: bool,
}

impl From<&PodRecord> for PodInfo {
    fn from(r: &PodRecord) -> Self {
        Self {
            name: r.name.clone(),
            id: r.id,
            netns: r.netns.clone(),
            pause_pid: r.pause.map(|p| p.pid),
            ips: r.ips.clone(),
            gateways: r.gateways.clone(),
            interface: r.interface.clone(),
            host_veth: r.host_veth.clone(),
            ports: r.ports.clone(),
            ports_released: r.ports_released,
        }
    }
}

/// Parameters of `create`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    /// The pod name.
    pub name: PodName,
    /// Do not start a pause process (the namespace is held by its bind mount only).
    pub no_pause: bool,
    /// Caller annotations (part of the parameters compared for idempotence).
    pub annotations: BTreeMap<String, String>,
    /// Host ports to publish (part of the parameters compared for idempotence).
    pub ports: Vec<PortMapping>,
}

impl CreateRequest {
    /// A request for `name` with a pause process, no annotations and no host ports.
    pub fn new(name: PodName) -> Self {
        Self {
            name,
            no_pause: false,
            annotations: BTreeMap::new(),
            ports: Vec::new(),
        }
    }
}

/// Parameters of `attach`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    /// The pod name.
    pub name: PodName,
    /// The existing namespace to wire.
    pub netns: PathBuf,
    /// Caller annotations.
    pub annotations: BTreeMap<String, String>,
    /// Host ports to publish.
    pub ports: Vec<PortMapping>,
}

/// A problem met by a whole-node operation, naming pod/object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFailure {
    /// The pod, if the failure concerns one.
    pub pod: Option<PodName>,
    /// The error, naming the object.
    pub error: String,
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pod {
            Some(p) => write!(f, "pod {p}: {}", self.error),
            None => f.write_str(&self.error),
        }
    }
}

/// What `reconcile`/`repair` did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReconcileReport {
    /// `Creating` records rolled back completely.
    pub rolled_back: Vec<PodName>,
    /// `Removing` records whose teardown was finished.
    pub finished_removal: Vec<PodName>,
    /// `Ready` pods whose namespace was gone, removed.
    pub removed_dead: Vec<PodName>,
    /// `Ready` pods that had pieces re-created, with the actions that did something.
    pub repaired: BTreeMap<PodName, Vec<String>>,
    /// Orphaned objects removed (host veths, pause processes, namespace mounts).
    pub orphans_removed: Vec<String>,
    /// Node-level actions that did something (the nftables table replaced, peer routes
    /// added or removed, the bridge rebuilt).
    pub node_actions: Vec<String>,
    /// Everything that failed.
    pub failures: Vec<NodeFailure>,
}

/// What `reload` did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct ReloadReport {
    /// Host port elements installed with the table.
    pub host_port_elements: usize,
    /// Peer routes in place afterwards.
    pub peer_routes: usize,
    /// The actions that did something.
    pub actions: Vec<String>,
    /// Everything that failed.
    pub failures: Vec<NodeFailure>,
}

/// What `gc` did.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct GcReport {
    /// Pods removed.
    pub removed: Vec<PodName>,
    /// Pods kept.
    pub kept: Vec<PodName>,
    /// Pods whose removal failed.
    pub failures: Vec<NodeFailure>,
}

/// Daemon status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DaemonStatus {
    /// Number of pod records.
    pub pods: usize,
    /// Of which `Ready`.
    pub ready: usize,
    /// Of which `Creating` or `Removing`.
    pub unfinished: usize,
    /// The node bridge.
    pub bridge: IfName,
    /// Address pool usage (IPv4 first).
    pub pools: Vec<PoolUsage>,
    /// The state file.
    pub state_file: PathBuf,
    /// Peers (routes to other nodes' pod CIDRs), by CIDR.
    pub peers: Vec<PeerRecord>,
    /// Host ports published (mappings, over every pod).
    pub host_ports: usize,
    /// Whether egress masquerade is on.
    pub masquerade: bool,
    /// How pods are wired (config `datapath`).
    pub datapath: crate::datapath::Datapath,
    /// The destinations pods reach without masquerade (see [`crate::egress`]).
    pub egress_exempt: Vec<ipnet::IpNet>,
    /// The neighbour table sizing done at start, if it was.
    pub neighbour_tables: Option<crate::neigh::NeighbourReport>,
    /// The network namespaces made ahead of creates.
    pub netns_pool: crate::system::NetnsPoolState,
}
