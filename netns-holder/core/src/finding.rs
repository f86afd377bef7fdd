//! [`Finding`]: one drift between the records and the kernel, with its [`Problem`], as
//! reported by `check` (produced by the planners' checks and the manager).

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::names::{IfName, PodName};
use crate::record::Phase;

/// The kind of drift found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "problem")]
pub enum Problem {
    /// The object does not exist.
    Missing,
    /// The pause process is not running (or its pid now belongs to another process).
    NotRunning,
    /// The pod should have a pause process but none is recorded.
    NotRecorded,
    /// The link is not attached to the expected bridge.
    NotAttached {
        /// The expected bridge.
        expected: IfName,
        /// The actual master, if any.
        actual: Option<IfName>,
    },
    /// The link is administratively down.
    Down,
    /// The link's MTU differs from the record.
    MtuMismatch {
        /// Recorded MTU.
        expected: u32,
        /// Actual MTU.
        actual: u32,
    },
    /// An address is missing from the link.
    AddressMissing {
        /// The address.
        address: IpNet,
    },
    /// A default route is missing.
    RouteMissing {
        /// Its gateway.
        gateway: IpAddr,
    },
    /// The node's host route to a pod address is missing (routed datapath).
    HostRouteMissing {
        /// The pod address.
        address: IpNet,
    },
    /// A permanent neighbour entry is missing (routed datapath).
    NeighbourMissing {
        /// The neighbour's address.
        address: IpAddr,
    },
    /// The record is not `Ready` (a create or remove did not finish).
    Unfinished {
        /// The phase.
        phase: Phase,
    },
    /// The object is ours but belongs to no pod record.
    Orphan,
    /// The object sits in a place we own (our nftables table) but we did not put it there.
    Foreign,
    /// The route is ours but belongs to no peer.
    NoPeer,
    /// The path names another namespace than the one the pod was wired in (a reused pid):
    /// the pod's own namespace is gone.
    Replaced,
    /// The object could not be inspected.
    CheckFailed {
        /// The error.
        error: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::NotRunning => f.write_str("not running"),
            Self::NotRecorded => f.write_str("no pause process recorded"),
            Self::NotAttached {
                expected,
                actual: Some(a),
            } => write!(f, "attached to {a}, expected {expected}"),
            Self::NotAttached {
                expected,
                actual: None,
            } => write!(f, "not attached, expected bridge {expected}"),
            Self::Down => f.write_str("down"),
            Self::MtuMismatch { expected, actual } => {
                write!(f, "mtu {actual}, expected {expected}")
            }
            Self::AddressMissing { address } => write!(f, "address {address} missing"),
            Self::RouteMissing { gateway } => write!(f, "default route via {gateway} missing"),
            Self::HostRouteMissing { address } => write!(f, "host route to {address} missing"),
            Self::NeighbourMissing { address } => {
                write!(f, "permanent neighbour entry for {address} missing")
            }
            Self::Unfinished { phase } => write!(f, "record stuck in phase {phase:?}"),
            Self::Orphan => f.write_str("belongs to no pod"),
            Self::Foreign => f.write_str("foreign (not put there by netns-holder)"),
            Self::NoPeer => f.write_str("belongs to no peer"),
            Self::Replaced => {
                f.write_str("names another namespace than the pod's, whose own namespace is gone")
            }
            Self::CheckFailed { error } => write!(f, "cannot be inspected: {error}"),
        }
    }
}

/// One drift between the records and the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The pod concerned (`None` for node-level objects and orphans).
    pub pod: Option<PodName>,
    /// The object, e.g. `link nh0123456789ab` or `netns /run/netns/web`.
    pub object: String,
    /// What is wrong.
    #[serde(flatten)]
    pub problem: Problem,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.pod {
            Some(pod) => write!(f, "pod {pod}: {}: {}", self.object, self.problem),
            None => write!(f, "{}: {}", self.object, self.problem),
        }
    }
}
