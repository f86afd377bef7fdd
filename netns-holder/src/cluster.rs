//! Cluster mode in the daemon (see `netns_holder_core::cluster` for the pure part and
//! docs/cluster.md for the design).
//!
//! * [`prepare`], before the pod manager opens: settles this node's subnet. The one in
//!   `cluster.json` (state dir) is used at once, so a restart serves with it even while etcd
//!   is unreachable; without one, the node takes a free subnet in etcd first.
//! * [`run`], a task for the daemon's life: keeps the lease alive, re-claims the subnet after
//!   an outage (refusing new pods, loudly, if another node took it meanwhile), lists and
//!   watches the other nodes' subnets and hands the peers to the manager
//!   (`PodManager::set_cluster_peers`). A peer whose address is not on a directly connected
//!   network is reported (status, log) and not routed.
//! * [`ClusterShared`]: what `status` shows.

pub mod etcd;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use slog::{Logger, error, info, warn};
use thiserror::Error;

use crate::cluster_core::{
    Claim, ClusterBackend, ClusterConfig, ClusterPeer, ClusterState, ClusterStateError,
    ClusterStatus, STATE_FILE_NAME, SubnetRecord, on_link, peers_from,
};
use crate::config::{Config, ConfigError};
use crate::kernel::NodeNetworkKind;
use crate::manager::PodManager;
use crate::system::{Netlink, System};
use etcd::{EtcdBackend, EtcdError, WatchChange};

/// How long the loop waits before trying etcd again after a failure.
pub const RETRY: Duration = Duration::from_millis(500);

/// A cluster mode failure at start; names what is wrong.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The node name or address cannot be found.
    #[error("cluster mode: {0}")]
    Node(String),
    /// The cluster state file.
    #[error(transparent)]
    State(#[from] ClusterStateError),
    /// etcd.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Every subnet of the cluster CIDR is taken.
    #[error("cluster mode: every /{prefix} subnet of {cidr} is taken ({slots} nodes)")]
    Full {
        /// The cluster CIDR.
        cidr: Ipv4Net,
        /// The node prefix.
        prefix: u8,
        /// How many subnets there are.
        slots: u32,
    },
    /// The configuration with the leased subnet.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// What the loop knows now, shown by `status`.
#[derive(Debug, Clone)]
struct Live {
    connected: bool,
    conflict: Option<String>,
    /// Every other node's peer as last learnt.
    peers: Vec<ClusterPeer>,
    /// Peers not routed, and why.
    unrouted: Vec<(ClusterPeer, String)>,
    /// The last etcd failure logged (each new one is logged once).
    last_error: Option<String>,
}

/// The cluster as `status` shows it; shared by the loop and the API.
pub struct ClusterShared {
    config: ClusterConfig,
    node: String,
    address: IpAddr,
    address_v6: Option<Ipv6Addr>,
    pod_cidr_v4: Ipv4Net,
    pod_cidr_v6: Option<Ipv6Net>,
    state_file: PathBuf,
    live: Mutex<Live>,
}

impl ClusterShared {
    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `cluster` object of `status`.
    pub fn status(&self) -> ClusterStatus {
        let live = self.live();
        ClusterStatus {
            backend: self.config.backend,
            node: self.node.clone(),
            pod_cidr_v4: self.pod_cidr_v4,
            pod_cidr_v6: self.pod_cidr_v6,
            lease_ttl_seconds: self.config.lease_ttl_seconds,
            connected: live.connected,
            conflict: live.conflict.clone(),
        }
    }

    /// The node holding `pod_cidr`, as last learnt.
    pub fn node_of(&self, pod_cidr: IpNet) -> Option<String> {
        self.live()
            .peers
            .iter()
            .find(|p| p.pod_cidr == pod_cidr)
            .map(|p| p.node.clone())
    }

    /// Peers not routed, and why.
    pub fn unrouted(&self) -> Vec<(ClusterPeer, String)> {
        self.live().unrouted.clone()
    }

    /// This node's record in the store.
    fn record(&self) -> SubnetRecord {
        SubnetRecord {
            node: self.node.clone(),
            address: self.address,
            pod_cidr_v6: self.pod_cidr_v6,
            address_v6: self.address_v6,
        }
    }

    fn save_state(&self, log: &Logger) {
        let state = ClusterState {
            node: self.node.clone(),
            pod_cidr_v4: self.pod_cidr_v4,
            pod_cidr_v6: self.pod_cidr_v6,
            peers: self.live().peers.clone(),
        };
        if let Err(e) = state.save(&self.state_file) {
            warn!(log, "cannot save the cluster state"; "error" => %e);
        }
    }
}

/// What [`prepare`] settled, for [`run`].
pub struct Prepared {
    shared: Arc<ClusterShared>,
    /// A client already connected (when the subnet was taken at start), with its lease.
    backend: Option<(EtcdBackend, usize)>,
}

impl Prepared {
    /// What `status` shows.
    pub fn shared(&self) -> Arc<ClusterShared> {
        self.shared.clone()
    }
}

/// This node's address: the configured one, or the first address of the interface that
/// carries the default route of `family_v6`'s family.
async fn default_address<N: Netlink>(system: &N, v6: bool) -> Result<Option<IpAddr>, ClusterError> {
    let networks = system
        .node_networks()
        .await
        .map_err(|e| ClusterError::Node(format!("cannot read the node's addresses: {e}")))?;
    let default: IpNet = if v6 { "::/0" } else { "0.0.0.0/0" }
        .parse()
        .expect("valid default route");
    let Some(interface) = networks
        .iter()
        .find(|n| n.network == default && matches!(n.kind, NodeNetworkKind::Route { .. }))
        .and_then(|n| n.interface.clone())
    else {
        return Ok(None);
    };
    Ok(networks
        .iter()
        .filter(|n| {
            n.kind == NodeNetworkKind::Address && n.interface.as_deref() == Some(&interface)
        })
        .map(|n| n.network.addr())
        .find(|a| a.is_ipv6() == v6 && !matches!(a, IpAddr::V6(v) if v.is_unicast_link_local())))
}

/// The node's directly connected networks (its addresses with their prefix lengths).
async fn connected_networks<N: Netlink>(system: &N) -> Option<Vec<IpNet>> {
    system.node_networks().await.ok().map(|networks| {
        networks
            .into_iter()
            .filter(|n| n.kind == NodeNetworkKind::Address)
            .map(|n| n.network)
            .collect()
    })
}

/// Settles this node's subnet before the manager opens and sets `config.pod_cidr_v4/_v6`
/// to it: the one in `cluster.json` if it fits the configuration, otherwise a free one
/// taken in etcd now (retrying every [`RETRY`] while no endpoint answers).
pub async fn prepare<N: Netlink>(
    config: &mut Config,
    system: &N,
    log: &Logger,
) -> Result<Prepared, ClusterError> {
    let cluster = config
        .cluster
        .clone()
        .ok_or_else(|| ClusterError::Node("no [cluster] section".into()))?;
    let node = match &cluster.node_name {
        Some(n) => n.clone(),
        None => {
            // The UTS namespace's hostname, as `hostname` prints it.
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map_err(|e| ClusterError::Node(format!("cannot read the hostname: {e}")))?;
            let host = host.trim().to_string();
            crate::cluster_core::validate_node_name(&host).map_err(|reason| {
                ClusterError::Node(format!(
                    "the hostname {host:?} cannot be the node name ({reason}); set cluster.node_name"
                ))
            })?;
            host
        }
    };
    let address = match cluster.node_address {
        Some(a) => a,
        None => default_address(system, false).await?.ok_or_else(|| {
            ClusterError::Node(
                "no IPv4 default route to take the node address from; set cluster.node_address"
                    .into(),
            )
        })?,
    };
    let address_v6 = if cluster.cluster_cidr_v6.is_some() {
        match default_address(system, true).await? {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        }
    } else {
        None
    };
    let state_file = config.state_dir.join(STATE_FILE_NAME);
    let recorded = ClusterState::load(&state_file)?;
    let mut peers = Vec::new();
    let mut backend = None;
    let index = match recorded.filter(|r| r.fits(&cluster, &node)) {
        Some(r) => {
            info!(log, "cluster: serving with the recorded subnet; it is claimed again in etcd in the background";
                "subnet" => %r.pod_cidr_v4, "file" => %state_file.display());
            peers = r.peers;
            cluster.index_of(r.pod_cidr_v4).expect("fits")
        }
        None => {
            let mut start = 0;
            loop {
                match take_new(&cluster, &node, address, address_v6, start, log).await {
                    Ok((index, b, at)) => {
                        backend = Some((b, at));
                        break index;
                    }
                    Err(e @ ClusterError::Full { .. }) => return Err(e),
                    Err(e) => {
                        warn!(log, "cluster: no subnet yet; retrying"; "error" => %e);
                        start += 1;
                        tokio::time::sleep(RETRY).await;
                    }
                }
            }
        }
    };
    config.set_cluster_subnet(index)?;
    let shared = Arc::new(ClusterShared {
        node,
        address,
        address_v6,
        pod_cidr_v4: config.pod_cidr_v4,
        pod_cidr_v6: config.pod_cidr_v6,
        state_file,
        live: Mutex::new(Live {
            connected: backend.is_some(),
            conflict: None,
            peers,
            unrouted: Vec::new(),
            last_error: None,
        }),
        config: cluster,
    });
    shared.save_state(log);
    info!(log, "cluster: node subnet"; "node" => &shared.node, "address" => %shared.address,
        "pod_cidr_v4" => %shared.pod_cidr_v4, "pod_cidr_v6" => ?shared.pod_cidr_v6.map(|n| n.to_string()));
    Ok(Prepared { shared, backend })
}

/// Connects (trying the endpoints from `start` on) and takes a free subnet for `node` (its
/// own, if the store still has one): the subnet's slot, the client (holding the node's lease)
/// and its endpoint's index. The tests run many of these at once.
pub async fn take_new(
    cluster: &ClusterConfig,
    node: &str,
    address: IpAddr,
    address_v6: Option<Ipv6Addr>,
    start: usize,
    log: &Logger,
) -> Result<(u32, EtcdBackend, usize), ClusterError> {
    let (mut etcd, at) = EtcdBackend::connect(cluster, node, start).await?;
    etcd.grant(0, cluster.lease_ttl_seconds).await?;
    let (records, _) = etcd.list().await?;
    let mut taken: BTreeSet<Ipv4Net> = records.keys().copied().collect();
    // This node's own subnet first (its state file was lost, its lease is still alive).
    let mine = records
        .iter()
        .find(|(s, r)| r.node == node && cluster.index_of(**s).is_some())
        .map(|(s, _)| *s);
    let mut next = match mine {
        Some(s) => cluster.index_of(s),
        None => cluster.free_slot(cluster.start_slot(node), &taken),
    };
    while let Some(index) = next {
        let subnet = cluster.subnet_v4(index).expect("slot in range");
        let record = SubnetRecord {
            node: node.to_string(),
            address,
            pod_cidr_v6: cluster.subnet_v6(index),
            address_v6,
        };
        match etcd.take_subnet(subnet, &record).await? {
            Claim::Free | Claim::Ours => {
                info!(log, "cluster: subnet taken"; "subnet" => %subnet, "endpoint" => etcd.endpoint());
                return Ok((index, etcd, at));
            }
            Claim::TakenBy(other) => {
                info!(log, "cluster: subnet taken by another node meanwhile; trying the next";
                    "subnet" => %subnet, "holder" => other);
                taken.insert(subnet);
                next = cluster.free_slot(index, &taken);
            }
        }
    }
    Err(ClusterError::Full {
        cidr: cluster.cluster_cidr_v4,
        prefix: cluster.node_prefix_v4,
        slots: cluster.slots(),
    })
}

/// The cluster loop, for the daemon's life: sessions on one etcd endpoint after another.
pub async fn run<S: System>(prepared: Prepared, manager: Arc<PodManager<S>>, log: Logger) {
    let shared = prepared.shared;
    let mut backend = prepared.backend;
    let mut lease = backend.as_ref().map_or(0, |(b, _)| b.lease_id());
    let mut next_endpoint = 0;
    // Apply the recorded peers at once (the store may be unreachable for long).
    if backend.is_none() {
        let peers = shared.live().peers.clone();
        apply_peers(&shared, &manager, peers, &log).await;
    }
    loop {
        let (mut etcd, at) = match backend.take() {
            Some(b) => b,
            None => match EtcdBackend::connect(&shared.config, &shared.node, next_endpoint).await {
                Ok(b) => b,
                Err(e) => {
                    set_connected(&shared, false, &log, Some(&e));
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        next_endpoint = at + 1;
        let outcome = session(&shared, &manager, &mut etcd, &mut lease, &log).await;
        if let Err(e) = outcome {
            set_connected(&shared, false, &log, Some(&e));
            tokio::time::sleep(RETRY).await;
        }
    }
}

fn set_connected(shared: &ClusterShared, connected: bool, log: &Logger, error: Option<&EtcdError>) {
    let mut live = shared.live();
    let text = error.map(ToString::to_string);
    if connected && !live.connected {
        info!(log, "cluster: connected to etcd");
        live.last_error = None;
    } else if !connected && (live.connected || live.last_error != text) {
        warn!(log, "cluster: no etcd; pods, routes and host ports keep working, new pods get addresses from this node's subnet";
            "error" => text.clone());
        live.last_error = text;
    } else if let Some(e) = text {
        slog::debug!(log, "cluster: etcd still unreachable"; "error" => e);
    }
    live.connected = connected;
}

/// One session on one endpoint: lease, claim, list, then keep-alive and watch until a
/// failure.
async fn session<S: System>(
    shared: &ClusterShared,
    manager: &PodManager<S>,
    etcd: &mut EtcdBackend,
    lease: &mut i64,
    log: &Logger,
) -> Result<(), EtcdError> {
    *lease = etcd.grant(*lease, shared.config.lease_ttl_seconds).await?;
    claim_own(shared, manager, etcd, log).await?;
    let (mut records, revision) = etcd.list().await?;
    let mut watch = etcd.watch(revision + 1).await?;
    set_connected(shared, true, log, None);
    let set = peers_from(&shared.config, &shared.node, &records);
    report_ignored(&set.ignored, log);
    apply_peers(shared, manager, set.peers, log).await;
    let (mut keeper, mut alive) = etcd.keep_alive().await?;
    let period = Duration::from_millis((shared.config.lease_ttl_seconds * 1000 / 3).max(300));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => etcd.renew(&mut keeper, &mut alive).await?,
            changes = etcd.changes(&mut watch) => {
                let changes = changes?;
                let mut own_touched = false;
                for change in changes {
                    match change {
                        WatchChange::Put(subnet, record) => {
                            own_touched |= subnet == shared.pod_cidr_v4 && record.node != shared.node;
                            records.insert(subnet, record);
                        }
                        WatchChange::Deleted(subnet) => {
                            own_touched |= subnet == shared.pod_cidr_v4;
                            records.remove(&subnet);
                        }
                        WatchChange::Unreadable(key, why) => {
                            warn!(log, "cluster: ignoring an unreadable key"; "key" => key, "reason" => why);
                        }
                    }
                }
                if own_touched || shared.live().conflict.is_some() {
                    claim_own(shared, manager, etcd, log).await?;
                }
                let set = peers_from(&shared.config, &shared.node, &records);
                report_ignored(&set.ignored, log);
                apply_peers(shared, manager, set.peers, log).await;
            }
        }
    }
}

fn report_ignored(ignored: &[(String, String)], log: &Logger) {
    for (what, why) in ignored {
        warn!(log, "cluster: not routed"; "what" => what, "reason" => why);
    }
}

/// Claims this node's subnet with the session's lease; a subnet another node holds now
/// refuses new pods (loudly) until it is free again.
async fn claim_own<S: System>(
    shared: &ClusterShared,
    manager: &PodManager<S>,
    etcd: &mut EtcdBackend,
    log: &Logger,
) -> Result<(), EtcdError> {
    match etcd
        .take_subnet(shared.pod_cidr_v4, &shared.record())
        .await?
    {
        Claim::Free | Claim::Ours => {
            if shared.live().conflict.take().is_some() {
                error!(log, "cluster: this node's subnet is its own again; new pods are admitted";
                    "subnet" => %shared.pod_cidr_v4);
                manager.set_cluster_conflict(None);
            }
        }
        Claim::TakenBy(other) => {
            let reason = format!(
                "cluster subnet conflict: this node ({}) holds pods in {} but node {other} took \
                 that subnet while this node's etcd lease was expired; new pods are refused \
                 until {other} releases it (or this node is drained and restarted with a \
                 fresh state)",
                shared.node, shared.pod_cidr_v4
            );
            error!(log, "CLUSTER SUBNET CONFLICT: refusing new pods"; "subnet" => %shared.pod_cidr_v4,
                "node" => &shared.node, "holder" => &other, "reason" => &reason);
            manager.set_cluster_conflict(Some(reason.clone()));
            shared.live().conflict = Some(reason);
        }
    }
    Ok(())
}

/// Hands the peers to the manager: those whose address is not on a directly connected
/// network are reported (status, log) and not routed.
async fn apply_peers<S: System>(
    shared: &ClusterShared,
    manager: &PodManager<S>,
    peers: Vec<ClusterPeer>,
    log: &Logger,
) {
    let connected = connected_networks(manager.system()).await;
    let mut routed = Vec::new();
    let mut unrouted = Vec::new();
    for p in &peers {
        match &connected {
            Some(nets) if !on_link(p.via, nets) => unrouted.push((
                p.clone(),
                format!(
                    "node address {} is not on a network directly connected to this node",
                    p.via
                ),
            )),
            _ => routed.push(p.peer()),
        }
    }
    match manager.set_cluster_peers(&routed).await {
        Ok(report) => {
            for (peer, why) in &report.refused {
                if let Some(p) = peers.iter().find(|p| p.peer() == *peer) {
                    unrouted.push((p.clone(), why.clone()));
                }
            }
            if !report.is_empty() {
                info!(log, "cluster: peers updated"; "added" => report.added.len(),
                    "removed" => report.removed.len(), "refused" => report.refused.len());
            }
        }
        Err(e) => {
            warn!(log, "cluster: cannot update the peers; check --repair fixes what is left"; "error" => %e)
        }
    }
    for (p, why) in &unrouted {
        let old = shared
            .live()
            .unrouted
            .iter()
            .any(|(q, w)| q == p && w == why);
        if !old {
            warn!(log, "cluster: peer not routed"; "node" => &p.node, "pod_cidr" => %p.pod_cidr,
                "via" => %p.via, "reason" => why);
        }
    }
    let changed = {
        let mut live = shared.live();
        let changed = live.peers != peers;
        live.peers = peers;
        live.unrouted = unrouted;
        changed
    };
    if changed {
        shared.save_state(log);
    }
}

/// The node names of cluster peers, by pod CIDR (for `status`).
pub fn nodes_by_cidr(shared: &ClusterShared) -> BTreeMap<IpNet, String> {
    shared
        .live()
        .peers
        .iter()
        .map(|p| (p.pod_cidr, p.node.clone()))
        .collect()
}
