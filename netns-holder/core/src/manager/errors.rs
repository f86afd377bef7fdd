//! The manager's errors: [`ManagerError`] and the [`RemoveFailure`]s of a teardown.

use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::config::ConfigError;
use crate::datapath::Datapath;
use crate::executor::{ExecError, StepFailure};
use crate::firewall::ElementError;
use crate::ipam::IpamError;
use crate::names::{PodId, PodName};
use crate::peers::{Peer, PeerError};
use crate::ports::{PortMapping, PortSpecError};
use crate::state::StateError;
use crate::system::SystemError;

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

pub(super) fn join<T: fmt::Display>(items: &[T]) -> String {
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
    /// The configured datapath differs from the one the existing pods were wired for.
    #[error(
        "config key `datapath` = \"{configured}\", but pod {pod} (one of {pods} pod(s) in the \
         state) was wired for the {recorded} datapath: a node's datapath never changes under \
         its pods; remove them first (netns-holder gc), or keep datapath = \"{recorded}\""
    )]
    DatapathChanged {
        /// The configuration's datapath.
        configured: Datapath,
        /// The datapath of the pod's record.
        recorded: Datapath,
        /// A pod wired for `recorded`.
        pod: PodName,
        /// How many pods the state holds.
        pods: usize,
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
    /// The peer list changed (the change is kept) but the egress exemption sets could not
    /// be brought in line; `check` reports it and `check --repair` fixes it.
    #[error("{action}: {source} (the peer change is kept; `check --repair` retries)")]
    EgressExempt {
        /// The action that failed, naming the table and the exemptions.
        action: String,
        /// The error.
        #[source]
        source: SystemError,
    },
    /// A kernel neighbour table holds no more pods of this node (it could not be raised at
    /// start); the reason names the table, the sysctl and the value it needs.
    #[error("pod {name}: refused: {reason}")]
    NeighbourLimit {
        /// The pod.
        name: PodName,
        /// The pods the table holds.
        limit: u64,
        /// Why, and what to raise.
        reason: String,
    },
    /// Cluster mode: this node's subnet was taken by another node while this one was cut
    /// off from the cluster; new pods are refused (the reason names both nodes).
    #[error("pod {name}: refused: {reason}")]
    ClusterConflict {
        /// The pod.
        name: PodName,
        /// Which subnet, which nodes.
        reason: String,
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
