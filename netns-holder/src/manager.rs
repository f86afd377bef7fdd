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
//!   bookkeeping and the state save (one journal record of what changed, appended and
//!   fdatasynced, whatever the number of pods), never across kernel work, so creates of
//!   different pods run their kernel steps concurrently while allocation stays race-free.
//! * A tokio `RwLock` "barrier": single-pod operations take it shared; the whole-node
//!   operations (`check`, `repair`/`reconcile`, `gc`) take it exclusively, so they never see
//!   or sweep a half-created pod of a request still in flight.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use slog::{Logger, error, info, warn};
use thiserror::Error;

use crate::action::Action;
use crate::config::{Config, ConfigError};
use crate::executor::{self, ExecError, StepFailure};
use crate::finding::{Finding, Problem};
use crate::firewall::{self, ElementError, FirewallBase, FirewallTable, HostPortElement};
use crate::ipam::{Ipam, IpamError, PoolUsage};
use crate::kernel::PauseProcess;
use crate::names::{HOST_VETH_PREFIX, IfName, PodId, PodName, is_host_veth_name};
use crate::peers::{self, Peer, PeerError, PeerRecord, PeerSource};
use crate::plan::{self, NodeNetwork, Observed, Repair};
use crate::ports::{self, Family, PortMapping, PortSpecError, Protocol};
use crate::record::{NetnsOwnership, Phase, PodRecord};
use crate::state::{State, StateError, StateStore};
use crate::system::{System, SystemError};

/// MTU used when the configuration sets none and the host has no default route.
pub const FALLBACK_MTU: u32 = 1500;

/// One failure while tearing a pod down.
#[derive(Debug, Error)]
pub enum RemoveFailure {
    /// A teardown action failed.
    #[error("{0}")]
    Step(StepFailure),
    /// The pause processes could not be listed.
    #[error("listing pause processes: {0}")]
    ListPauses(SystemError),
    /// The state could not be saved.
    #[error("{0}")]
    State(StateError),
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A manager failure; every variant names the pod and the object concerned.
#[derive(Debug, Error)]
pub enum ManagerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state file could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// The loaded state contradicts itself.
    #[error("state: pod {name}: {reason}")]
    InconsistentState {
        /// The pod.
        name: String,
        /// What is inconsistent.
        reason: String,
    },
    /// No address could be allocated.
    #[error("pod {name}: {source}")]
    Ipam {
        /// The pod.
        name: PodName,
        /// The IPAM error (naming the CIDR).
        #[source]
        source: IpamError,
    },
    /// The pod exists with different parameters.
    #[error("pod {name} already exists with different parameters: {reason}")]
    Conflict {
        /// The pod.
        name: PodName,
        /// What differs.
        reason: String,
    },
    /// Two pod names hash to the same id (practically impossible, but checked).
    #[error("pod {name}: its id {id} is already used by pod {other}")]
    IdCollision {
        /// The new pod.
        name: PodName,
        /// The id.
        id: PodId,
        /// The pod holding it.
        other: PodName,
    },
    /// `attach` was given a path that is not a network namespace.
    #[error("pod {name}: netns {} does not exist or is not a network namespace", path.display())]
    NetnsNotFound {
        /// The pod.
        name: PodName,
        /// The path.
        path: PathBuf,
    },
    /// The namespace path already belongs to another pod.
    #[error("pod {name}: netns {} is already used by pod {other}", path.display())]
    NetnsInUse {
        /// The pod.
        name: PodName,
        /// The path.
        path: PathBuf,
        /// The pod using it.
        other: PodName,
    },
    /// A kernel query needed before planning failed.
    #[error("pod {name}: {source}")]
    System {
        /// The pod.
        name: PodName,
        /// The error (naming its object).
        #[source]
        source: SystemError,
    },
    /// A create step failed (the error names the step and object, and the rollback result).
    #[error("creating pod {name}: {source}")]
    Create {
        /// The pod.
        name: PodName,
        /// The failed plan (boxed: it carries the failed and undo actions).
        #[source]
        source: Box<ExecError>,
    },
    /// Teardown left things behind; every failure is listed.
    #[error("removing pod {name}: {} failure(s): {}", failures.len(), join(failures))]
    Remove {
        /// The pod.
        name: PodName,
        /// Every failure.
        failures: Vec<RemoveFailure>,
    },
    /// The requested host ports are invalid (the error names the mapping).
    #[error("pod {name}: {source}")]
    Ports {
        /// The pod.
        name: PodName,
        /// What is wrong.
        #[source]
        source: PortSpecError,
    },
    /// A host port cannot be forwarded to the pod (no address of its family).
    #[error("pod {name}: {source}")]
    PortAddress {
        /// The pod.
        name: PodName,
        /// What is wrong.
        #[source]
        source: ElementError,
    },
    /// The pod does not exist (or is not ready).
    #[error("pod {name} not found")]
    NotFound {
        /// The pod.
        name: PodName,
    },
    /// Withdrawing a pod's host ports failed part-way; its record already says they are
    /// released, so `repair` removes what is left.
    #[error("releasing the host ports of pod {name}: {}", join(failures))]
    Release {
        /// The pod.
        name: PodName,
        /// Every failed step (naming its object).
        failures: Vec<StepFailure>,
    },
    /// A host port is already published by another pod or held by a socket on the node.
    #[error("pod {name}: host port {mapping} is already taken by {holder}")]
    PortInUse {
        /// The pod.
        name: PodName,
        /// The requested mapping.
        mapping: PortMapping,
        /// Who holds it: `pod NAME (MAPPING)` or a socket on the node, with its process.
        holder: String,
    },
    /// A peer was refused (the error names it).
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// A peer's route could not be installed or removed.
    #[error("peer {peer}: {source}")]
    PeerRoute {
        /// The peer.
        peer: Peer,
        /// The error (naming the route).
        #[source]
        source: SystemError,
    },
    /// `attach` found the namespace wired by someone else (another network plugin): links
    /// other than `lo` are in it. Nothing was changed.
    #[error(
        "pod {name}: netns {} is already wired by another network plugin (it has {}); not touching it",
        path.display(),
        links.join(", ")
    )]
    WiredElsewhere {
        /// The pod.
        name: PodName,
        /// The namespace.
        path: PathBuf,
        /// The links found in it (besides `lo`).
        links: Vec<String>,
    },
    /// Publishing more host ports of a pod failed part-way; the record was put back and
    /// what was added withdrawn.
    #[error("publishing host ports of pod {name}: {}", join(failures))]
    Publish {
        /// The pod.
        name: PodName,
        /// Every failed step (naming its object).
        failures: Vec<StepFailure>,
    },
    /// The pod has an unfinished earlier create or remove that could not be cleaned up.
    #[error(
        "pod {name}: an earlier unfinished create/remove could not be cleaned up: {}",
        join(failures)
    )]
    Unfinished {
        /// The pod.
        name: PodName,
        /// Every failure of the cleanup.
        failures: Vec<RemoveFailure>,
    },
}

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
    /// Host-side veth.
    pub host_veth: IfName,
    /// The host ports the pod was created with (empty when none); published unless
    /// `ports_released`.
    pub ports: Vec<PortMapping>,
    /// The ports were withdrawn ([`PodManager::release_pod_ports`]).
    #[serde(default)]
    pub ports_released: bool,
}

impl From<&PodRecord> for PodInfo {
    fn from(r: &PodRecord) -> Self {
        Self {
            name: r.name.clone(),
            id: r.id.clone(),
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
pub struct Status {
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
}

/// Whether a teardown may go ahead when its `Removing` phase cannot be saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Journal {
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
}

/// Per-key async mutexes whose entries disappear when unused.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<PodName, Arc<tokio::sync::Mutex<()>>>>,
}

struct KeyGuard<'a> {
    locks: &'a KeyedLocks,
    name: PodName,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    /// Whether somebody holds or awaits the lock of `name`.
    fn busy(&self, name: &PodName) -> bool {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
    }

    async fn lock(&self, name: &PodName) -> KeyGuard<'_> {
        let mutex = {
            let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(name.clone()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        KeyGuard {
            locks: self,
            name: name.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.locks.map.lock().unwrap_or_else(|e| e.into_inner());
        // Every waiter cloned the Arc under this map lock, so a count of 1 (the map's own)
        // means nobody holds or awaits this mutex.
        if map
            .get(&self.name)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.name);
        }
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
    node: NodeNetwork,
    inner: Mutex<Inner>,
    pod_locks: KeyedLocks,
    barrier: tokio::sync::RwLock<()>,
    /// Serializes peer changes.
    peer_lock: tokio::sync::Mutex<()>,
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
        let ipam = rebuild_ipam(&config, &state, &log);
        let node = NodeNetwork {
            bridge: config.bridge.clone(),
            bridge_addresses: ipam.gateways(),
            firewall: FirewallBase {
                bridge: config.bridge.clone(),
                pod_cidr_v4: config.pod_cidr_v4,
                pod_cidr_v6: config.pod_cidr_v6,
            },
        };
        let mut state = state;
        let merged = peers::merge_config(&state.peers, &config.peers);
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
            inner: Mutex::new(Inner { state, ipam }),
            pod_locks: KeyedLocks::default(),
            barrier: tokio::sync::RwLock::new(()),
            peer_lock: tokio::sync::Mutex::new(()),
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

    fn record(&self, name: &PodName) -> Option<PodRecord> {
        self.inner().state.pods.get(name).cloned()
    }

    // ---------------------------------------------------------------- create / attach

    /// Creates pod `name` (namespace, pause unless `no_pause`, wiring), or returns it if it
    /// already exists with the same parameters.
    pub async fn create(&self, request: CreateRequest) -> Result<PodInfo, ManagerError> {
        let name = request.name;
        let netns = self.config.netns_path(&name);
        let ownership = NetnsOwnership::Owned {
            pause: !request.no_pause,
        };
        self.ensure(name, netns, ownership, request.annotations, request.ports)
            .await
    }

    /// Wires the existing namespace at `request.netns` as pod `request.name` (no namespace
    /// creation, no pause; `remove` will not delete the namespace).
    pub async fn attach(&self, request: AttachRequest) -> Result<PodInfo, ManagerError> {
        self.ensure(
            request.name,
            request.netns,
            NetnsOwnership::Attached,
            request.annotations,
            request.ports,
        )
        .await
    }

    /// Refuses `ports` if a socket on the node holds one of them (checked in the node
    /// namespace, before anything is recorded).
    async fn check_listeners(
        &self,
        name: &PodName,
        ports: &[PortMapping],
    ) -> Result<(), ManagerError> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<(Protocol, u16)> =
            ports.iter().map(|p| (p.protocol, p.host_port)).collect();
        wanted.sort();
        wanted.dedup();
        let listeners =
            self.system
                .listeners(&wanted)
                .await
                .map_err(|source| ManagerError::System {
                    name: name.clone(),
                    source,
                })?;
        for mapping in ports {
            if let Some(l) = listeners
                .iter()
                .find(|l| mapping.overlaps_socket(l.protocol, l.address, l.port))
            {
                return Err(ManagerError::PortInUse {
                    name: name.clone(),
                    mapping: *mapping,
                    holder: format!("{l} in the node network namespace"),
                });
            }
        }
        Ok(())
    }

    async fn ensure(
        &self,
        name: PodName,
        netns: PathBuf,
        ownership: NetnsOwnership,
        annotations: BTreeMap<String, String>,
        ports: Vec<PortMapping>,
    ) -> Result<PodInfo, ManagerError> {
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(&name).await;
        ports::validate(&ports).map_err(|source| ManagerError::Ports {
            name: name.clone(),
            source,
        })?;

        // The identity of an attached namespace, so a path that later names another one
        // (`/proc/<pid>/ns/net` of a reused pid) is never taken for the pod's.
        let netns_id = if ownership == NetnsOwnership::Attached {
            self.system
                .netns_id(&netns)
                .await
                .map_err(|source| ManagerError::System {
                    name: name.clone(),
                    source,
                })?
        } else {
            None
        };
        if let Some(existing) = self.record(&name) {
            let replaced = existing.netns == netns
                && netns_id.is_some()
                && existing.netns_id.is_some()
                && existing.netns_id != netns_id;
            if existing.phase == Phase::Ready && !replaced {
                return compare(&existing, &netns, &ownership, &annotations, &ports)
                    .map(|()| PodInfo::from(&existing));
            }
            if replaced {
                info!(self.log, "the pod's namespace is gone and its path names another one now; wiring that one";
                    "pod" => %name, "netns" => %netns.display());
            }
            // A leftover of a create/remove that could not finish (or of a namespace that is
            // gone): clear it first.
            let failures = self.teardown(&existing, Journal::BestEffort).await;
            if !failures.is_empty() {
                return Err(ManagerError::Unfinished { name, failures });
            }
        }
        if ownership == NetnsOwnership::Attached && netns_id.is_none() {
            return Err(ManagerError::NetnsNotFound { name, path: netns });
        }
        if ownership == NetnsOwnership::Attached {
            self.refuse_wired_elsewhere(&name, &netns).await?;
        }
        let mtu = match self.config.mtu {
            Some(m) => m,
            None => self
                .system
                .default_route_mtu()
                .await
                .map_err(|source| ManagerError::System {
                    name: name.clone(),
                    source,
                })?
                .unwrap_or(FALLBACK_MTU),
        };
        self.check_listeners(&name, &ports).await?;

        // Allocate and journal the record before touching the kernel.
        let id = name.id();
        let record = {
            let mut inner = self.inner();
            if let Some(other) = inner.state.pods.values().find(|r| r.id == id) {
                return Err(ManagerError::IdCollision {
                    name,
                    id,
                    other: other.name.clone(),
                });
            }
            if let Some(other) = inner.state.pods.values().find(|r| r.netns == netns) {
                return Err(ManagerError::NetnsInUse {
                    name,
                    path: netns,
                    other: other.name.clone(),
                });
            }
            // Under the state lock, so two concurrent creates cannot both take a port.
            for other in inner
                .state
                .pods
                .values()
                .filter(|other| self.holds_ports(other))
            {
                for mapping in &ports {
                    if let Some(theirs) = other.ports.iter().find(|o| mapping.overlaps(o)) {
                        return Err(ManagerError::PortInUse {
                            name,
                            mapping: *mapping,
                            holder: format!("pod {} ({theirs})", other.name),
                        });
                    }
                }
            }
            let ips = inner
                .ipam
                .allocate(&id)
                .map_err(|source| ManagerError::Ipam {
                    name: name.clone(),
                    source,
                })?;
            let addresses: Vec<IpAddr> = ips.iter().map(IpNet::addr).collect();
            if let Err(source) = firewall::elements_for(&ports, &addresses) {
                inner.ipam.release(&id);
                return Err(ManagerError::PortAddress { name, source });
            }
            let gateways = inner
                .ipam
                .gateways()
                .iter()
                .map(IpNet::addr)
                .filter(|g| ips.iter().any(|a| a.contains(g)))
                .collect();
            let record = PodRecord {
                host_veth: id.host_veth_name(),
                id: id.clone(),
                name: name.clone(),
                netns: netns.clone(),
                ownership,
                pause: None,
                ips,
                gateways,
                interface: IfName::pod_interface(),
                annotations,
                phase: Phase::Creating,
                mtu,
                ports,
                ports_released: false,
                netns_id,
            };
            inner.state.pods.insert(name.clone(), record.clone());
            let owned = record.netns_owned();
            if owned {
                inner.state.owned_netns.insert(netns.clone());
            }
            if let Err(e) = self.save(&mut inner) {
                inner.state.pods.remove(&name);
                inner.ipam.release(&id);
                if owned {
                    inner.state.owned_netns.remove(&netns);
                }
                return Err(e.into());
            }
            record
        };
        info!(self.log, "creating pod"; "pod" => %name, "netns" => %netns.display(), "ips" => ?record.ips);

        let steps = plan::plan_create(&record, &self.node);
        match executor::apply_plan(&self.system, &steps, &self.log).await {
            Ok(applied) => {
                let ready = {
                    let mut inner = self.inner();
                    let Some(r) = inner.state.pods.get_mut(&name) else {
                        unreachable!("the record of {name} is held by its pod lock")
                    };
                    r.pause = applied.pause;
                    r.phase = Phase::Ready;
                    let ready = r.clone();
                    self.save(&mut inner).map(|()| ready)
                };
                match ready {
                    Ok(ready) => {
                        info!(self.log, "pod ready"; "pod" => %name, "pause" => ?ready.pause.map(|p| p.pid));
                        Ok(PodInfo::from(&ready))
                    }
                    Err(e) => {
                        // The caller will be told it failed, so it must not exist.
                        error!(self.log, "cannot record ready pod, tearing it down"; "pod" => %name, "error" => %e);
                        let mut record = record;
                        record.pause = applied.pause;
                        self.teardown(&record, Journal::BestEffort).await;
                        Err(e.into())
                    }
                }
            }
            Err(source) => {
                if source.rolled_back() {
                    let mut inner = self.inner();
                    inner.state.pods.remove(&name);
                    inner.ipam.release(&id);
                    if record.netns_owned() {
                        inner.state.owned_netns.remove(&netns);
                    }
                    if let Err(e) = self.save(&mut inner) {
                        // The on-disk record stays `Creating`; reconcile rolls it back (a no-op).
                        warn!(self.log, "cannot save after rollback"; "pod" => %name, "error" => %e);
                    }
                } else {
                    error!(self.log, "rollback incomplete; record kept for repair"; "pod" => %name);
                }
                Err(ManagerError::Create {
                    name,
                    source: Box::new(source),
                })
            }
        }
    }

    // ---------------------------------------------------------------- remove

    /// Tears a pod down: journal `Removing`, then host veth, pause(s), namespace (if ours),
    /// continuing past failures. On full success the record and its addresses are released;
    /// otherwise the record stays `Removing` (addresses held) so a retry or reconcile can
    /// finish. With [`Journal::Required`], a `Removing` that cannot be saved stops it before
    /// the kernel is touched.
    async fn teardown(&self, record: &PodRecord, journal: Journal) -> Vec<RemoveFailure> {
        let mut failures = Vec::new();
        {
            let mut inner = self.inner();
            if let Some(r) = inner.state.pods.get_mut(&record.name)
                && r.phase != Phase::Removing
            {
                let previous = r.phase;
                r.phase = Phase::Removing;
                if let Err(e) = self.save(&mut inner) {
                    if journal == Journal::Required {
                        // Nothing is touched: the pod keeps working, the state file keeps
                        // matching the kernel, and the caller learns why.
                        if let Some(r) = inner.state.pods.get_mut(&record.name) {
                            r.phase = previous;
                        }
                        warn!(self.log, "cannot journal removal; pod left as it is"; "pod" => %record.name, "error" => %e);
                        return vec![RemoveFailure::State(e)];
                    }
                    warn!(self.log, "cannot journal removal"; "pod" => %record.name, "error" => %e);
                }
            }
        }
        // A pause that is not in the record can only exist after a crash between starting it
        // and recording it (create or repair cut short). Ready records with their pause
        // recorded skip the /proc scan, whose cost grows with every process on the node.
        let may_have_unrecorded_pause =
            record.phase != Phase::Ready || (record.wants_pause() && record.pause.is_none());
        let listed = if may_have_unrecorded_pause {
            self.system.list_pauses().await
        } else {
            Ok(Vec::new())
        };
        let extra: Vec<PauseProcess> = match listed {
            Ok(list) => list
                .into_iter()
                .filter(|p| p.id == record.id)
                .map(|p| p.process)
                .collect(),
            Err(e) => {
                failures.push(RemoveFailure::ListPauses(e));
                Vec::new()
            }
        };
        let actions = plan::plan_remove(record, &extra);
        let result = executor::apply_teardown(&self.system, &actions, &self.log).await;
        failures.extend(result.failures.into_iter().map(RemoveFailure::Step));
        let mut inner = self.inner();
        if failures.is_empty() {
            inner.state.pods.remove(&record.name);
            inner.ipam.release(&record.id);
            if record.netns_owned() {
                inner.state.owned_netns.remove(&record.netns);
            }
            if let Err(e) = self.save(&mut inner) {
                failures.push(RemoveFailure::State(e));
            }
            info!(self.log, "pod removed"; "pod" => %record.name);
        } else {
            warn!(self.log, "pod removal incomplete"; "pod" => %record.name, "failures" => failures.len());
        }
        failures
    }

    /// Removes pod `name`. Idempotent: a pod that does not exist is `Ok(false)`; missing
    /// pieces (namespace, link, pause) are not errors. Every failure is reported.
    pub async fn remove(&self, name: &PodName) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(name).await;
        let Some(record) = self.record(name) else {
            return Ok(false);
        };
        let failures = self.teardown(&record, Journal::Required).await;
        if failures.is_empty() {
            Ok(true)
        } else {
            Err(ManagerError::Remove {
                name: name.clone(),
                failures,
            })
        }
    }

    /// Whether the ports of `record` are held against other pods: unless they are released,
    /// and even then while an operation on that pod is in flight (a release between saving
    /// its record and deleting its elements, whose keys a new pod's elements would clash
    /// with). Called under the state lock.
    fn holds_ports(&self, record: &PodRecord) -> bool {
        !record.ports_released || self.pod_locks.busy(&record.name)
    }

    /// Withdraws the host ports of pod `name` and frees them for other pods; the pod stays
    /// wired otherwise (what a runtime's StopPodSandbox calls for). The record is saved
    /// released first, then the map elements are deleted and UDP conntrack entries flushed
    /// as `remove` does, so a crash in between leaves only elements no record wants, which
    /// `check` reports and `repair` (and the start-up reconcile) removes. Idempotent:
    /// `Ok(false)` when the pod has no ports or they were released already (their elements
    /// are not touched again: another pod may own those keys now). A later `create` or
    /// `attach` of the pod with the same ports returns it unchanged, without publishing them
    /// again. A pod that does not exist (or is not ready) is [`ManagerError::NotFound`].
    pub async fn release_pod_ports(&self, name: &PodName) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(name).await;
        let record = match self.record(name) {
            Some(r) if r.phase == Phase::Ready => r,
            _ => return Err(ManagerError::NotFound { name: name.clone() }),
        };
        self.release_ports_locked(&record).await
    }

    /// [`PodManager::release_pod_ports`] of the ready `record`, whose pod lock the caller
    /// holds (with the barrier shared).
    async fn release_ports_locked(&self, record: &PodRecord) -> Result<bool, ManagerError> {
        let name = &record.name;
        if record.ports.is_empty() || record.ports_released {
            return Ok(false);
        }
        let elements = plan::record_elements(&PodRecord {
            ports_released: false,
            ..record.clone()
        });
        {
            let mut inner = self.inner();
            if let Some(r) = inner.state.pods.get_mut(name) {
                r.ports_released = true;
            }
            if let Err(e) = self.save(&mut inner) {
                if let Some(r) = inner.state.pods.get_mut(name) {
                    r.ports_released = false;
                }
                return Err(e.into());
            }
        }
        let mut actions = vec![Action::RemoveHostPorts {
            pod: name.clone(),
            elements: elements.clone(),
        }];
        let flushes = firewall::conntrack_flushes(&elements);
        if !flushes.is_empty() {
            actions.push(Action::FlushConntrack {
                pod: name.clone(),
                flushes,
            });
        }
        let result = executor::apply_best_effort(&self.system, &actions, &self.log).await;
        if !result.failures.is_empty() {
            warn!(self.log, "host ports released in the record, but withdrawing them failed; repair removes them";
                "pod" => %name, "failures" => result.failures.len());
            return Err(ManagerError::Release {
                name: name.clone(),
                failures: result.failures,
            });
        }
        info!(self.log, "host ports released"; "pod" => %name, "ports" => record.ports.len());
        Ok(true)
    }

    // ---------------------------------------------------------------- queries

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

    /// Counts and pool usage.
    pub fn status(&self) -> Status {
        let inner = self.inner();
        let ready = inner
            .state
            .pods
            .values()
            .filter(|r| r.phase == Phase::Ready)
            .count();
        Status {
            pods: inner.state.pods.len(),
            ready,
            unfinished: inner.state.pods.len() - ready,
            bridge: self.config.bridge.clone(),
            pools: inner.ipam.usage(),
            state_file: self.store.path().to_path_buf(),
            peers: inner.state.peers.clone(),
            host_ports: inner
                .state
                .pods
                .values()
                .filter(|r| !r.ports_released)
                .map(|r| r.ports.len())
                .sum(),
        }
    }

    /// Every record's host port elements, by pod.
    fn all_elements(&self) -> Vec<(PodName, Vec<HostPortElement>)> {
        self.inner()
            .state
            .pods
            .values()
            .map(|r| (r.name.clone(), plan::record_elements(r)))
            .collect()
    }

    /// The whole nftables table the records call for.
    fn firewall_table(&self) -> FirewallTable {
        FirewallTable {
            base: self.node.firewall.clone(),
            elements: self
                .all_elements()
                .into_iter()
                .flat_map(|(_, e)| e)
                .collect(),
        }
    }

    /// The peers, by CIDR.
    pub fn peers(&self) -> Vec<PeerRecord> {
        self.inner().state.peers.clone()
    }

    /// Findings about the node-level objects host ports and peers depend on: our nftables
    /// table and the peer routes.
    async fn node_findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        match self.system.inspect_table().await {
            Ok(observed) => findings.extend(firewall::check_table(
                &self.node.firewall,
                &self.all_elements(),
                observed.as_ref(),
            )),
            Err(e) => findings.push(Finding {
                pod: None,
                object: firewall::table_object(),
                problem: Problem::CheckFailed {
                    error: e.to_string(),
                },
            }),
        }
        let peers = self.peers();
        match self.system.peer_routes().await {
            Ok(observed) => findings.extend(peers::check_routes(&peers, &observed)),
            Err(e) => findings.push(Finding {
                pod: None,
                object: "peer routes".to_string(),
                problem: Problem::CheckFailed {
                    error: e.to_string(),
                },
            }),
        }
        findings
    }

    /// Brings the nftables table and the peer routes in line with the records: the table is
    /// replaced if it drifted (or always, with `force`), routes are added and removed.
    /// Runs under the exclusive barrier (callers hold it).
    async fn repair_node(&self, force: bool, report: &mut ReconcileReport) -> (usize, usize) {
        let mut actions = Vec::new();
        let table = self.firewall_table();
        let elements = table.elements.len();
        let replace = force
            || match self.system.inspect_table().await {
                Ok(observed) => {
                    observed.is_none()
                        || !firewall::check_table(
                            &self.node.firewall,
                            &self.all_elements(),
                            observed.as_ref(),
                        )
                        .is_empty()
                }
                Err(e) => {
                    warn!(self.log, "cannot inspect the nftables table; replacing it"; "error" => %e);
                    true
                }
            };
        if replace {
            actions.push(Action::ReplaceFirewall { table });
        }
        let peers = self.peers();
        match self.system.peer_routes().await {
            Ok(observed) => actions.extend(peers::plan_routes(&peers, &observed)),
            Err(e) => report.failures.push(NodeFailure {
                pod: None,
                error: format!("listing peer routes: {e}"),
            }),
        }
        let result = executor::apply_best_effort(&self.system, &actions, &self.log).await;
        report
            .node_actions
            .extend(result.done.iter().map(ToString::to_string));
        report
            .failures
            .extend(result.failures.iter().map(|f| NodeFailure {
                pod: None,
                error: f.to_string(),
            }));
        (elements, peers.len())
    }

    /// Re-creates the nftables table from the records in one transaction (whatever it holds
    /// now) and brings the peer routes in line: what the daemon does at start, on demand
    /// (e.g. after `nft flush ruleset`).
    pub async fn reload(&self) -> ReloadReport {
        let _exclusive = self.barrier.write().await;
        let mut report = ReconcileReport::default();
        let (elements, routes) = self.repair_node(true, &mut report).await;
        info!(self.log, "reloaded"; "host_port_elements" => elements, "peer_routes" => routes,
            "failures" => report.failures.len());
        ReloadReport {
            host_port_elements: elements,
            peer_routes: routes,
            actions: report.node_actions,
            failures: report.failures,
        }
    }

    /// Adds a peer and its route. Idempotent for an identical peer (`Ok(false)`); a peer of
    /// the same CIDR with another address is refused.
    pub async fn add_peer(&self, peer: Peer) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _peers = self.peer_lock.lock().await;
        let existing = self.peers();
        if let Some(same) = existing.iter().find(|p| p.pod_cidr == peer.pod_cidr) {
            if same.via == peer.via {
                return Ok(false);
            }
            return Err(PeerError::Exists {
                existing: same.peer(),
                requested: peer,
            }
            .into());
        }
        let others: Vec<Peer> = existing.iter().map(PeerRecord::peer).collect();
        peers::validate(&peer, &self.config.pod_cidrs(), &others)?;
        // Journal first: after a crash, reconcile adds the route.
        {
            let mut inner = self.inner();
            inner.state.peers.push(PeerRecord {
                pod_cidr: peer.pod_cidr,
                via: peer.via,
                source: PeerSource::Api,
            });
            inner.state.peers.sort();
            if let Err(e) = self.save(&mut inner) {
                inner.state.peers.retain(|p| p.pod_cidr != peer.pod_cidr);
                return Err(e.into());
            }
        }
        if let Err(source) = self.system.add_route(peer.pod_cidr, peer.via).await {
            let mut inner = self.inner();
            inner.state.peers.retain(|p| p.pod_cidr != peer.pod_cidr);
            if let Err(e) = self.save(&mut inner) {
                warn!(self.log, "cannot save after a failed peer add"; "peer" => %peer, "error" => %e);
            }
            return Err(ManagerError::PeerRoute { peer, source });
        }
        info!(self.log, "peer added"; "peer" => %peer);
        Ok(true)
    }

    /// Removes an API-added peer and its route; `Ok(false)` if there is no such peer.
    pub async fn remove_peer(&self, pod_cidr: IpNet) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _peers = self.peer_lock.lock().await;
        let Some(record) = self.peers().into_iter().find(|p| p.pod_cidr == pod_cidr) else {
            return Ok(false);
        };
        if record.source == PeerSource::Config {
            return Err(PeerError::FromConfig {
                peer: record.peer(),
            }
            .into());
        }
        // Forget first: after a crash, reconcile removes the route of no peer.
        {
            let mut inner = self.inner();
            inner.state.peers.retain(|p| p.pod_cidr != pod_cidr);
            if let Err(e) = self.save(&mut inner) {
                inner.state.peers.push(record);
                inner.state.peers.sort();
                return Err(e.into());
            }
        }
        self.system
            .delete_route(record.pod_cidr, record.via)
            .await
            .map_err(|source| ManagerError::PeerRoute {
                peer: record.peer(),
                source,
            })?;
        info!(self.log, "peer removed"; "peer" => %record.peer());
        Ok(true)
    }

    async fn observe(&self, record: &PodRecord) -> Result<Observed, SystemError> {
        let (netns_exists, netns_replaced) = match record.netns_id {
            Some(wired) => match self.system.netns_id(&record.netns).await? {
                Some(now) if now == wired => (true, false),
                Some(_) => (false, true),
                None => (false, false),
            },
            None => (self.system.netns_exists(&record.netns).await?, false),
        };
        if !netns_exists {
            // Only the bind mount may be gone: a live pause of ours still holds the namespace.
            let pause_alive = match &record.pause {
                Some(p) if record.netns_owned() => Some(self.system.pause_alive(p).await?),
                _ => None,
            };
            return Ok(Observed {
                pause_alive,
                netns_replaced,
                ..Observed::default()
            });
        }
        let pause_alive = match &record.pause {
            Some(p) => Some(self.system.pause_alive(p).await?),
            None => None,
        };
        Ok(Observed {
            netns_exists,
            netns_replaced,
            pause_alive,
            host_veth: self.system.link_info(None, &record.host_veth).await?,
            pod_interface: self
                .system
                .link_info(Some(&record.netns), &record.interface)
                .await?,
            default_routes: self.system.default_routes(&record.netns).await?,
        })
    }

    /// Orphans: our objects that no record accounts for.
    async fn orphans(&self, failures: &mut Vec<NodeFailure>) -> Vec<Action> {
        let (veths, pauses, journal, ids) = {
            let inner = self.inner();
            let pods = inner.state.pods.values();
            (
                pods.clone()
                    .map(|r| r.host_veth.clone())
                    .collect::<BTreeSet<_>>(),
                pods.clone()
                    .filter_map(|r| r.pause)
                    .collect::<BTreeSet<_>>(),
                inner.state.owned_netns.clone(),
                pods.filter(|r| r.pause.is_none())
                    .map(|r| r.id.clone())
                    .collect::<BTreeSet<_>>(),
            )
        };
        let mut actions = Vec::new();
        match self.system.list_links(None, HOST_VETH_PREFIX).await {
            Ok(links) => actions.extend(
                links
                    .into_iter()
                    .filter(|l| {
                        is_host_veth_name(l.as_str())
                            && *l != self.config.bridge
                            && !veths.contains(l)
                    })
                    .map(|link| Action::DeleteLink { netns: None, link }),
            ),
            Err(e) => failures.push(NodeFailure {
                pod: None,
                error: format!("listing host links: {e}"),
            }),
        }
        match self.system.list_pauses().await {
            Ok(list) => actions.extend(
                list.into_iter()
                    // A pause of a record without a recorded pause is a leftover of that
                    // record's create; it is an orphan too.
                    .filter(|p| !pauses.contains(&p.process) || ids.contains(&p.id))
                    .map(|p| Action::StopPause {
                        id: p.id,
                        process: Some(p.process),
                    }),
            ),
            Err(e) => failures.push(NodeFailure {
                pod: None,
                error: format!("listing pause processes: {e}"),
            }),
        }
        let recorded: BTreeSet<PathBuf> = self
            .inner()
            .state
            .pods
            .values()
            .map(|r| r.netns.clone())
            .collect();
        let stale: Vec<&PathBuf> = journal.iter().filter(|p| !recorded.contains(*p)).collect();
        if !stale.is_empty() {
            match self.system.list_netns(&self.config.netns_dir).await {
                Ok(mounted) => actions.extend(
                    stale
                        .into_iter()
                        .filter(|p| mounted.contains(p))
                        .map(|p| Action::DeleteNetns { path: p.clone() }),
                ),
                Err(e) => failures.push(NodeFailure {
                    pod: None,
                    error: format!("listing netns in {}: {e}", self.config.netns_dir.display()),
                }),
            }
        }
        actions
    }

    /// Compares the kernel with the records and reports every drift: per pod (namespace,
    /// pause, host veth, pod interface, addresses, routes, unfinished records), the bridge,
    /// and orphaned objects of ours.
    pub async fn check(&self) -> Vec<Finding> {
        let _exclusive = self.barrier.write().await;
        let records = self.records();
        let mut findings = Vec::new();
        if !records.is_empty() {
            match self.system.link_info(None, &self.config.bridge).await {
                Ok(bridge) => findings.extend(plan::check_bridge(&self.node, bridge.as_ref())),
                Err(e) => findings.push(Finding {
                    pod: None,
                    object: format!("bridge {}", self.config.bridge),
                    problem: Problem::CheckFailed {
                        error: e.to_string(),
                    },
                }),
            }
        }
        for record in &records {
            match self.observe(record).await {
                Ok(observed) => findings.extend(plan::check_pod(record, &self.node, &observed)),
                Err(e) => findings.push(Finding {
                    pod: Some(record.name.clone()),
                    object: e.object().to_string(),
                    problem: Problem::CheckFailed {
                        error: e.to_string(),
                    },
                }),
            }
        }
        let mut failures = Vec::new();
        for action in self.orphans(&mut failures).await {
            let object = match &action {
                Action::DeleteLink { link, .. } => format!("link {link}"),
                Action::StopPause {
                    id,
                    process: Some(p),
                } => format!("pause {p} of pod id {id}"),
                Action::DeleteNetns { path } => format!("netns {}", path.display()),
                other => other.to_string(),
            };
            findings.push(Finding {
                pod: None,
                object,
                problem: Problem::Orphan,
            });
        }
        for f in failures {
            findings.push(Finding {
                pod: f.pod,
                object: "node".to_string(),
                problem: Problem::CheckFailed { error: f.error },
            });
        }
        findings.extend(self.node_findings().await);
        findings
    }

    /// Runs at daemon start, before serving: finishes what a crash interrupted (see the
    /// module documentation). Same as [`PodManager::repair`].
    pub async fn reconcile(&self) -> ReconcileReport {
        self.repair().await
    }

    /// Brings the kernel back in line with the records: unfinished records are torn down,
    /// dead pods removed, missing pieces of live pods re-created, orphans removed.
    pub async fn repair(&self) -> ReconcileReport {
        let _exclusive = self.barrier.write().await;
        let mut report = ReconcileReport::default();

        for record in self
            .records()
            .into_iter()
            .filter(|r| r.phase != Phase::Ready)
        {
            let failures = self.teardown(&record, Journal::BestEffort).await;
            if failures.is_empty() {
                if record.phase == Phase::Creating {
                    report.rolled_back.push(record.name.clone());
                } else {
                    report.finished_removal.push(record.name.clone());
                }
            }
            report.failures.extend(failures.iter().map(|f| NodeFailure {
                pod: Some(record.name.clone()),
                error: f.to_string(),
            }));
        }

        let ready: Vec<PodRecord> = self
            .records()
            .into_iter()
            .filter(|r| r.phase == Phase::Ready)
            .collect();
        if !ready.is_empty() {
            match self.system.link_info(None, &self.config.bridge).await {
                Ok(bridge) => {
                    let mut actions = plan::plan_bridge_repair(&self.node, bridge.as_ref());
                    let v4_ports = ready.iter().any(|r| {
                        plan::record_elements(r)
                            .iter()
                            .any(|e| e.map.family() == Family::V4)
                    });
                    if !actions.is_empty() && v4_ports {
                        actions.push(Action::EnableRouteLocalnet {
                            link: self.config.bridge.clone(),
                        });
                    }
                    let result =
                        executor::apply_best_effort(&self.system, &actions, &self.log).await;
                    report
                        .node_actions
                        .extend(result.done.iter().map(ToString::to_string));
                    report
                        .failures
                        .extend(result.failures.iter().map(|f| NodeFailure {
                            pod: None,
                            error: f.to_string(),
                        }));
                }
                Err(e) => report.failures.push(NodeFailure {
                    pod: None,
                    error: e.to_string(),
                }),
            }
        }
        for record in ready {
            let observed = match self.observe(&record).await {
                Ok(o) => o,
                Err(e) => {
                    report.failures.push(NodeFailure {
                        pod: Some(record.name.clone()),
                        error: e.to_string(),
                    });
                    continue;
                }
            };
            match plan::plan_repair(&record, &self.node, &observed) {
                Repair::Nothing => {}
                Repair::Remove => {
                    info!(self.log, "pod namespace is gone, removing pod"; "pod" => %record.name);
                    let failures = self.teardown(&record, Journal::BestEffort).await;
                    if failures.is_empty() {
                        report.removed_dead.push(record.name.clone());
                    }
                    report.failures.extend(failures.iter().map(|f| NodeFailure {
                        pod: Some(record.name.clone()),
                        error: f.to_string(),
                    }));
                }
                Repair::Actions(actions) => {
                    info!(self.log, "repairing pod"; "pod" => %record.name, "actions" => actions.len());
                    let mut result =
                        executor::apply_best_effort(&self.system, &actions, &self.log).await;
                    // The namespace is mounted again: now the rest of the pod can be seen
                    // (and repaired) too.
                    let restored = actions
                        .iter()
                        .any(|a| matches!(a, Action::RestoreNetns { .. }));
                    if restored && result.failures.is_empty() {
                        match self.observe(&record).await {
                            Ok(observed) => {
                                if let Repair::Actions(next) =
                                    plan::plan_repair(&record, &self.node, &observed)
                                {
                                    let again =
                                        executor::apply_best_effort(&self.system, &next, &self.log)
                                            .await;
                                    result.pause = again.pause.or(result.pause);
                                    result.done.extend(again.done);
                                    result.failures.extend(again.failures);
                                }
                            }
                            Err(e) => report.failures.push(NodeFailure {
                                pod: Some(record.name.clone()),
                                error: e.to_string(),
                            }),
                        }
                    }
                    if let Some(pause) = result.pause {
                        let mut inner = self.inner();
                        if let Some(r) = inner.state.pods.get_mut(&record.name) {
                            r.pause = Some(pause);
                        }
                        if let Err(e) = self.save(&mut inner) {
                            report.failures.push(NodeFailure {
                                pod: Some(record.name.clone()),
                                error: e.to_string(),
                            });
                        }
                    }
                    report.repaired.insert(
                        record.name.clone(),
                        result.done.iter().map(ToString::to_string).collect(),
                    );
                    report
                        .failures
                        .extend(result.failures.iter().map(|f| NodeFailure {
                            pod: Some(record.name.clone()),
                            error: f.to_string(),
                        }));
                }
            }
        }

        // Host port elements and peer routes, after dead pods are gone (their elements
        // are then no longer wanted).
        self.repair_node(false, &mut report).await;

        let mut failures = Vec::new();
        let orphans = self.orphans(&mut failures).await;
        report.failures.extend(failures);
        let result = executor::apply_best_effort(&self.system, &orphans, &self.log).await;
        report
            .orphans_removed
            .extend(result.done.iter().map(ToString::to_string));
        report
            .failures
            .extend(result.failures.iter().map(|f| NodeFailure {
                pod: None,
                error: f.to_string(),
            }));
        {
            let mut inner = self.inner();
            let mut changed = false;
            for action in &result.done {
                if let Action::DeleteNetns { path } = action {
                    changed |= inner.state.owned_netns.remove(path);
                }
            }
            // Mounts that were already gone are dropped from the journal too.
            let recorded: BTreeSet<PathBuf> =
                inner.state.pods.values().map(|r| r.netns.clone()).collect();
            let failed: BTreeSet<PathBuf> = result
                .failures
                .iter()
                .filter_map(|f| match &f.action {
                    Action::DeleteNetns { path } => Some(path.clone()),
                    _ => None,
                })
                .collect();
            let before = inner.state.owned_netns.len();
            inner
                .state
                .owned_netns
                .retain(|p| recorded.contains(p) || failed.contains(p));
            changed |= inner.state.owned_netns.len() != before;
            // Allocations are derived from the records; rebuilding drops any stray one.
            inner.ipam = rebuild_ipam(&self.config, &inner.state, &self.log);
            if changed && let Err(e) = self.save(&mut inner) {
                report.failures.push(NodeFailure {
                    pod: None,
                    error: e.to_string(),
                });
            }
        }
        info!(self.log, "reconciled";
            "rolled_back" => report.rolled_back.len(),
            "removed_dead" => report.removed_dead.len(),
            "repaired" => report.repaired.len(),
            "orphans_removed" => report.orphans_removed.len(),
            "node_actions" => report.node_actions.len(),
            "failures" => report.failures.len());
        report
    }

    /// Restarts, into the same namespace, the pause of every ready pod whose pause has died;
    /// returns those pods. Nothing else is repaired here (that is `check --repair`'s job): a
    /// pod whose pause died must not stay without a holder until someone looks.
    ///
    /// `wake` says where to look, so that nothing reads `/proc` for every pod:
    ///
    /// * [`PauseWake::Child`] (SIGCHLD): the pauses this daemon process started, each asked
    ///   with [`Processes::child_pause_exited`](crate::system::Processes::child_pause_exited)
    ///   (a non-blocking `waitpid`, no `/proc` read);
    /// * [`PauseWake::Exited`]: that one pause, whose exit watch fired (confirmed with one
    ///   [`Processes::pause_alive`](crate::system::Processes::pause_alive));
    /// * [`PauseWake::Tick`]: children as after SIGCHLD (a lost signal is caught here), pods
    ///   without a pause, and every pause adopted from an earlier daemon that is not watched
    ///   yet: an exit watch is put on it in `watches`
    ///   ([`Processes::watch_pause`](crate::system::Processes::watch_pause)); only when none
    ///   can be made is it polled with `pause_alive`. Watched pauses cost nothing.
    pub async fn restart_dead_pauses(
        &self,
        wake: PauseWake,
        watches: &mut PauseWatches,
    ) -> Vec<PodName> {
        let mut restarted = Vec::new();
        let candidates: Vec<PodRecord> = self
            .records()
            .into_iter()
            .filter(|r| r.phase == Phase::Ready && r.wants_pause())
            .collect();
        if wake == PauseWake::Tick {
            // Watches of pauses no pod holds any more are forgotten (their futures end when
            // those processes exit).
            let held: BTreeSet<PauseProcess> = candidates.iter().filter_map(|r| r.pause).collect();
            watches.watched.retain(|p| held.contains(p));
        }
        let mut dead = Vec::new();
        for record in candidates {
            let pause = match (wake, record.pause) {
                (PauseWake::Tick, None) => {
                    dead.push(record);
                    continue;
                }
                (_, None) => continue,
                (_, Some(pause)) => pause,
            };
            let died = match wake {
                PauseWake::Exited(exited) => {
                    if exited != pause {
                        continue;
                    }
                    watches.watched.remove(&pause);
                    !self.system.pause_alive(&pause).await.unwrap_or(true)
                }
                PauseWake::Child => {
                    matches!(self.system.child_pause_exited(&pause).await, Ok(Some(true)))
                }
                PauseWake::Tick if watches.watched.contains(&pause) => false,
                PauseWake::Tick => match self.system.child_pause_exited(&pause).await {
                    Ok(Some(exited)) => exited,
                    // Not our child: adopted from an earlier daemon.
                    Ok(None) | Err(_) => match self.system.watch_pause(&pause).await {
                        Ok(Some(exit)) => {
                            watches.watched.insert(pause);
                            watches.exits.push(Box::pin(async move {
                                exit.await;
                                pause
                            }));
                            false
                        }
                        Ok(None) | Err(_) => {
                            watches.polled += 1;
                            !self.system.pause_alive(&pause).await.unwrap_or(true)
                        }
                    },
                },
            };
            if died {
                dead.push(record);
            }
        }
        for record in dead {
            let _shared = self.barrier.read().await;
            let _pod = self.pod_locks.lock(&record.name).await;
            // Removed, replaced or repaired while we waited for the lock: not ours to touch.
            match self.record(&record.name) {
                Some(current) if current.phase == Phase::Ready && current.pause == record.pause => {
                }
                _ => continue,
            }
            let start = [Action::StartPause {
                id: record.id.clone(),
                netns: record.netns.clone(),
            }];
            let result = executor::apply_best_effort(&self.system, &start, &self.log).await;
            let Some(pause) = result.pause else {
                for failure in &result.failures {
                    warn!(self.log, "cannot restart the pause"; "pod" => %record.name, "error" => %failure);
                }
                continue;
            };
            let mut inner = self.inner();
            if let Some(r) = inner.state.pods.get_mut(&record.name) {
                r.pause = Some(pause);
            }
            if let Err(e) = self.save(&mut inner) {
                warn!(self.log, "cannot record the restarted pause"; "pod" => %record.name, "error" => %e);
            }
            info!(self.log, "pause died, restarted in the same namespace";
                "pod" => %record.name, "old" => ?record.pause.map(|p| p.pid), "new" => pause.pid);
            restarted.push(record.name.clone());
        }
        restarted
    }

    /// Removes every pod whose name or id is not in `keep`.
    pub async fn gc(&self, keep: &BTreeSet<String>) -> GcReport {
        let _exclusive = self.barrier.write().await;
        let mut report = GcReport::default();
        for record in self.records() {
            if keep.contains(record.name.as_str()) || keep.contains(record.id.as_str()) {
                report.kept.push(record.name.clone());
                continue;
            }
            let failures = self.teardown(&record, Journal::Required).await;
            if failures.is_empty() {
                report.removed.push(record.name.clone());
            } else {
                report.failures.push(NodeFailure {
                    pod: Some(record.name.clone()),
                    error: ManagerError::Remove {
                        name: record.name.clone(),
                        failures,
                    }
                    .to_string(),
                });
            }
        }
        report
    }

    /// The state file path.
    pub fn state_file(&self) -> &Path {
        self.store.path()
    }
}

/// What woke the pause watcher; see [`PodManager::restart_dead_pauses`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseWake {
    /// SIGCHLD: a child of this daemon process (a pause it started) may have exited.
    Child,
    /// The periodic check ([`crate::server::PAUSE_CHECK_INTERVAL`]).
    Tick,
    /// The exit watch on this pause (adopted from an earlier daemon) fired.
    Exited(PauseProcess),
}

/// The exit watches on pauses that are not children of this daemon process, kept by the
/// pause watcher across calls of [`PodManager::restart_dead_pauses`].
#[derive(Default)]
pub struct PauseWatches {
    /// The pauses watched.
    watched: BTreeSet<PauseProcess>,
    /// One future per watch, resolving with its pause when that exits.
    exits: futures::stream::FuturesUnordered<
        std::pin::Pin<Box<dyn Future<Output = PauseProcess> + Send + 'static>>,
    >,
    /// How many liveness polls (one `/proc` read each) ticks have made since the start:
    /// only for adopted pauses no watch could be made for.
    polled: u64,
}

impl PauseWatches {
    /// No watches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves with the next watched pause that exits (never, while none is watched).
    pub async fn next_exit(&mut self) -> PauseProcess {
        use futures::StreamExt as _;
        match self.exits.next().await {
            Some(pause) => pause,
            None => std::future::pending().await,
        }
    }

    /// How many pauses are watched.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// How many liveness polls ticks have made (pauses that could not be watched).
    pub fn polled(&self) -> u64 {
        self.polled
    }
}

impl fmt::Debug for PauseWatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PauseWatches")
            .field("watched", &self.watched)
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

/// Whether an existing ready record matches the requested parameters.
fn compare(
    existing: &PodRecord,
    netns: &Path,
    ownership: &NetnsOwnership,
    annotations: &BTreeMap<String, String>,
    ports: &[PortMapping],
) -> Result<(), ManagerError> {
    let describe = |o: &NetnsOwnership| match o {
        NetnsOwnership::Owned { pause: true } => "created with a pause process",
        NetnsOwnership::Owned { pause: false } => "created without a pause process (no_pause)",
        NetnsOwnership::Attached => "attached to an existing netns",
    };
    let reason = if existing.ownership != *ownership {
        Some(format!(
            "it was {}, the request is for one {}",
            describe(&existing.ownership),
            describe(ownership)
        ))
    } else if existing.netns != netns {
        Some(format!(
            "its netns is {}, the request names {}",
            existing.netns.display(),
            netns.display()
        ))
    } else if existing.annotations != *annotations {
        Some(format!(
            "its annotations are {:?}, the request has {:?}",
            existing.annotations, annotations
        ))
    } else if ports::canonical(&existing.ports) != ports::canonical(ports) {
        let list = |p: &[PortMapping]| {
            if p.is_empty() {
                "none".to_string()
            } else {
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        Some(format!(
            "its host ports are [{}], the request has [{}]",
            list(&existing.ports),
            list(ports)
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ManagerError::Conflict {
            name: existing.name.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

mod ended;
#[cfg(test)]
mod ended_tests;
mod publish;
#[cfg(test)]
mod tests;

pub use ended::EndedReport;
pub use publish::PublishedPorts;
