//! The pod manager: the operations the daemon's API serves (`create`, `attach`, `remove`,
//! `release_pod_ports`, `get`, `list`, `check`, `repair`, `gc`, `status`) and the start-up
//! `reconcile`.
//!
//! # Crash model
//!
//! A pod's record, with its IP allocations, is saved in phase `Creating` before the kernel
//! is touched and switched to `Ready` afterwards; teardown saves `Removing` first. So after
//! a crash, [`PodManager::reconcile`] knows what each leftover is: `Creating` and `Removing`
//! records are torn down completely (the caller of `create` was never answered), `Ready`
//! records whose namespace still exists get their missing pieces re-created (a namespace whose
//! bind mount someone removed while the pod's pause still holds it is mounted again from the
//! pause first), `Ready` records whose namespace is gone are removed, and everything of ours
//! that belongs to no record (host veths with our name shape, pause processes tagged
//! `netns-holder-pause:<id>`, namespace bind mounts in the ownership journal) is removed. IP
//! allocations are always rebuilt from the records, so they cannot leak.
//!
//! # Concurrency
//!
//! * A per-pod-name async mutex serializes operations on the same pod.
//! * A short `std::sync::Mutex` guards the in-memory state and IPAM; it is held only for
//!   bookkeeping and the state save (one journal record of what changed, appended,
//!   whatever the number of pods), never across kernel work, so creates of
//!   different pods run their kernel steps concurrently while allocation stays race-free.
//! * A tokio `RwLock` "barrier": single-pod operations take it shared; the whole-node
//!   operations (`check`, `repair`/`reconcile`, `gc`) take it exclusively, so they never see
//!   or sweep a half-created pod of a request still in flight.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use slog::{Logger, info, warn};

use ipnet::IpNet;

use crate::config::Config;
use crate::datapath::Datapath;
use crate::firewall::FirewallBase;
use crate::ipam::Ipam;
use crate::names::{PodId, PodName};
use crate::peers::{self, Peer, PeerRecord};
use crate::plan::NodeInputs;
use crate::record::{NetnsOwnership, Phase, PodRecord};
use crate::state::{State, StateError, StateStore};
use crate::system::System;

/// MTU used when the configuration sets none and the host has no default route.
pub const FALLBACK_MTU: u32 = 1500;

/// Whether a teardown may go ahead when its `Removing` phase cannot be saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SavePolicy {
    /// A removal a caller asked for (`remove`, `gc`): if it cannot be recorded, nothing is
    /// touched, so the caller is never told "failed" about a pod that is half gone or gone
    /// in the kernel while the state file still has it.
    Required,
    /// Cleanup of a pod the state file already says must not exist (an unfinished create or
    /// remove, a create whose caller is told it failed, a pod whose namespace is gone): it
    /// goes ahead regardless.
    BestEffort,
}

/// State and IPAM, guarded together.
struct Inner {
    state: State,
    ipam: Ipam,
    /// What admission looks up in the records, by key (derived from `state.pods`).
    index: PodIndex,
}

impl Inner {
    /// Inserts (or replaces) the record of a pod, keeping the index in step.
    fn insert_pod(&mut self, record: PodRecord) {
        if let Some(old) = self.state.pods.insert(record.name.clone(), record.clone()) {
            self.index.remove(&old);
        }
        self.index.insert(&record);
    }

    /// Removes the record of pod `name`, keeping the index in step.
    fn remove_pod(&mut self, name: &PodName) -> Option<PodRecord> {
        let removed = self.state.pods.remove(name);
        if let Some(record) = &removed {
            self.index.remove(record);
        }
        removed
    }
}

/// The records admission would otherwise walk, by key: every pod's id, and the namespace
/// paths of attached pods (a namespace we create is `netns_dir/<pod name>`, found by name).
/// At 3800 pods the walk cost 0.5 ms per create on the test guest, a cache miss per record.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PodIndex {
    ids: HashMap<PodId, PodName>,
    attached: HashMap<PathBuf, PodName>,
}

impl PodIndex {
    /// The index of `state`'s records.
    pub(super) fn of(state: &State) -> Self {
        let mut index = Self::default();
        for record in state.pods.values() {
            index.insert(record);
        }
        index
    }

    fn insert(&mut self, record: &PodRecord) {
        self.ids.insert(record.id, record.name.clone());
        if record.ownership == NetnsOwnership::Attached {
            self.attached
                .insert(record.netns.clone(), record.name.clone());
        }
    }

    fn remove(&mut self, record: &PodRecord) {
        if self.ids.get(&record.id) == Some(&record.name) {
            self.ids.remove(&record.id);
        }
        if self.attached.get(&record.netns) == Some(&record.name) {
            self.attached.remove(&record.netns);
        }
    }

    /// The pod whose id is `id`, if any.
    pub(super) fn id_holder(&self, id: &PodId) -> Option<&PodName> {
        self.ids.get(id)
    }

    /// The attached pod whose namespace is at `path`, if any.
    pub(super) fn attached_at(&self, path: &Path) -> Option<&PodName> {
        self.attached.get(path)
    }
}

/// Rebuilds the IPAM from the records (and the persisted cursors).
fn rebuild_ipam(config: &Config, state: &State, log: &Logger) -> Ipam {
    let mut ipam = Ipam::new(config.pod_cidr_v4, config.pod_cidr_v6);
    ipam.set_cursors(&state.ipam);
    for record in state.pods.values() {
        if let Err(e) = ipam.restore(&record.id, &record.ips) {
            // E.g. the pod CIDR was changed: the pod keeps its addresses, which are outside
            // the new pool and so cannot collide with new allocations.
            warn!(log, "cannot restore IP allocation"; "pod" => %record.name, "error" => %e);
        }
    }
    ipam
}

/// The pod manager. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct PodManager<S: System> {
    config: Config,
    system: S,
    log: Logger,
    store: StateStore,
    node: NodeInputs,
    inner: Mutex<Inner>,
    pod_locks: KeyedLocks,
    barrier: tokio::sync::RwLock<()>,
    /// Serializes peer changes.
    peer_lock: tokio::sync::Mutex<()>,
    /// The neighbour table sizing done at start ([`PodManager::size_neighbour_tables`]).
    neighbour: Mutex<Option<crate::neigh::NeighbourReport>>,
    /// Cluster mode: why new pods are refused (this node's subnet is another node's now).
    cluster_conflict: Mutex<Option<String>>,
    /// Creates and attaches running now ([`CreateInFlight`]).
    creates_in_flight: std::sync::atomic::AtomicUsize,
}

/// One running create or attach, counted in [`PodManager`] and told to the system
/// ([`crate::system::Namespaces::creates_in_flight`]) while it lives.
struct CreateInFlight<'a, S: System> {
    manager: &'a PodManager<S>,
}

impl<'a, S: System> CreateInFlight<'a, S> {
    fn new(manager: &'a PodManager<S>) -> Self {
        let count = manager
            .creates_in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        manager.system.creates_in_flight(count);
        Self { manager }
    }
}

impl<S: System> Drop for CreateInFlight<'_, S> {
    fn drop(&mut self) {
        let count = self
            .manager
            .creates_in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            - 1;
        self.manager.system.creates_in_flight(count);
    }
}

impl<S: System> PodManager<S> {
    /// Validates `config`, loads the state from its `state_dir` and rebuilds IPAM. Does not
    /// touch the kernel: call [`PodManager::reconcile`] before serving.
    pub fn open(config: Config, system: S, log: Logger) -> Result<Self, ManagerError> {
        config.validate()?;
        let store = StateStore::new(&config.state_dir);
        let recovered = store.recover()?;
        if let Some(tail) = &recovered.discarded {
            warn!(log, "dropped an unacknowledged state journal record"; "detail" => %tail);
        }
        if let Some(e) = &recovered.compaction_error {
            warn!(log, "cannot fold the state journal into a new snapshot"; "error" => %e);
        }
        let (state, replayed) = (recovered.state, recovered.replayed);
        for (name, record) in &state.pods {
            if record.name != *name || record.id != name.id() {
                return Err(ManagerError::InconsistentState {
                    name: name.to_string(),
                    reason: format!(
                        "record has name {} and id {}, expected id {}",
                        record.name,
                        record.id,
                        name.id()
                    ),
                });
            }
        }
        if let Some(record) = state.pods.values().find(|r| r.datapath != config.datapath) {
            return Err(ManagerError::DatapathChanged {
                configured: config.datapath,
                recorded: record.datapath,
                pod: record.name.clone(),
                pods: state.pods.len(),
            });
        }
        let ipam = rebuild_ipam(&config, &state, &log);
        let node = NodeInputs {
            bridge: config.bridge.clone(),
            bridge_addresses: match config.datapath {
                Datapath::Bridge => ipam.gateways(),
                // The node's own address of each pool, alone on `lo`.
                Datapath::Routed => ipam
                    .gateways()
                    .iter()
                    .map(|g| IpNet::from(g.addr()))
                    .collect(),
            },
            firewall: FirewallBase {
                bridge: config.bridge.clone(),
                pod_cidr_v4: config.pod_cidr_v4,
                pod_cidr_v6: config.pod_cidr_v6,
                masquerade: config.masquerade,
                datapath: config.datapath,
            },
            datapath: config.datapath,
        };
        let mut state = state;
        let mut merged = peers::merge_config(&state.peers, &config.peers);
        if config.cluster.is_none() {
            // Peers learnt from a cluster this node is no longer in.
            merged.retain(|p| p.source != peers::PeerSource::Etcd);
        }
        if merged != state.peers {
            // Configured peers apply at every start; stored API peers that now clash with
            // the configuration (or this node's CIDRs) are dropped, with a warning.
            let own = config.pod_cidrs();
            let mut kept: Vec<PeerRecord> = Vec::new();
            for record in merged {
                let others: Vec<Peer> = kept.iter().map(PeerRecord::peer).collect();
                match peers::validate(&record.peer(), &own, &others) {
                    Ok(()) => kept.push(record),
                    Err(e) => warn!(log, "dropping stored peer"; "error" => %e),
                }
            }
            state.peers = kept;
            store.save(&state)?;
        }
        info!(log, "state loaded"; "pods" => state.pods.len(), "peers" => state.peers.len(),
            "file" => %store.path().display(), "journal_records_replayed" => replayed);
        Ok(Self {
            config,
            system,
            log,
            store,
            node,
            inner: Mutex::new(Inner {
                index: PodIndex::of(&state),
                state,
                ipam,
            }),
            pod_locks: KeyedLocks::default(),
            barrier: tokio::sync::RwLock::new(()),
            peer_lock: tokio::sync::Mutex::new(()),
            neighbour: Mutex::new(None),
            cluster_conflict: Mutex::new(None),
            creates_in_flight: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The kernel interface.
    pub fn system(&self) -> &S {
        &self.system
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Saves the state (with the current IPAM cursors) while the lock is held.
    fn save(&self, inner: &mut Inner) -> Result<(), StateError> {
        inner.state.ipam = inner.ipam.cursors();
        self.store.save(&inner.state)
    }

    /// [`PodManager::save`] when only pod `name` changed (its record, addresses and owned
    /// namespace path): what creates and removes save, at a cost that does not grow with the
    /// pods on the node.
    fn save_pod(&self, inner: &mut Inner, name: &PodName) -> Result<(), StateError> {
        inner.state.ipam = inner.ipam.cursors();
        self.store.save_pod(&inner.state, name)
    }

    fn record(&self, name: &PodName) -> Option<PodRecord> {
        self.inner().state.pods.get(name).cloned()
    }

    /// The pod `name`, if it exists and is ready.
    pub fn get(&self, name: &PodName) -> Option<PodInfo> {
        self.record(name)
            .filter(|r| r.phase == Phase::Ready)
            .map(|r| PodInfo::from(&r))
    }

    /// Every ready pod, by name.
    pub fn list(&self) -> Vec<PodInfo> {
        self.inner()
            .state
            .pods
            .values()
            .filter(|r| r.phase == Phase::Ready)
            .map(PodInfo::from)
            .collect()
    }

    /// Every record, in any phase.
    pub fn records(&self) -> Vec<PodRecord> {
        self.inner().state.pods.values().cloned().collect()
    }

    /// Starts the system's pool of namespaces made ahead
    /// ([`crate::system::Namespaces::start_netns_pool`]) for this node's config, keeping the
    /// host veths that records name (pods adopted pooled pairs under their pool names).
    /// Call once the node is the daemon's, before [`PodManager::reconcile`].
    pub async fn start_netns_pool(&self) {
        let pod_links: std::collections::HashSet<crate::names::IfName> = self
            .inner()
            .state
            .pods
            .values()
            .map(|r| r.host_veth.clone())
            .collect();
        self.system.start_netns_pool(&self.config, &pod_links).await;
    }

    /// Counts and pool usage.
    pub fn status(&self) -> DaemonStatus {
        let inner = self.inner();
        let ready = inner
            .state
            .pods
            .values()
            .filter(|r| r.phase == Phase::Ready)
            .count();
        DaemonStatus {
            pods: inner.state.pods.len(),
            ready,
            unfinished: inner.state.pods.len() - ready,
            bridge: self.config.bridge.clone(),
            pools: inner.ipam.usage(),
            state_file: self.store.path().to_path_buf(),
            peers: inner.state.peers.clone(),
            neighbour_tables: self.neighbour_tables(),
            masquerade: self.config.masquerade,
            datapath: self.config.datapath,
            egress_exempt: crate::egress::exempt_cidrs(
                &self.config.pod_cidrs(),
                inner.state.peers.iter().map(|p| p.pod_cidr),
                &self.config.egress_extra_exempt(),
            )
            .cidrs(),
            host_ports: inner
                .state
                .pods
                .values()
                .filter(|r| !r.ports_released)
                .map(|r| r.ports.len())
                .sum(),
            netns_pool: self.system().netns_pool_state(),
        }
    }

    /// The state file path.
    pub fn state_file(&self) -> &Path {
        self.store.path()
    }
}

mod create;
mod ended;
#[cfg(test)]
mod ended_tests;
mod errors;
mod locks;
mod neighbours;
mod pauses;
mod peering;
mod publish;
mod remove;
mod repair;
mod reports;
#[cfg(test)]
mod tests;

use locks::KeyedLocks;

pub use ended::EndedReport;
pub use errors::{ManagerError, RemoveFailure};
pub use pauses::{PauseWake, PauseWatches};
pub use peering::ClusterPeersReport;
pub use publish::PublishedPorts;
pub use reports::{
    AttachRequest, CreateRequest, DaemonStatus, GcReport, NodeFailure, PodInfo, ReconcileReport,
    ReloadReport,
};
