//! [`PodRecord`]: everything recorded about one pod (the desired state), with its life-cycle
//! [`Phase`] and its [`NetnsOwnership`]. Persisted by [`crate::state`], read by the planners.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::datapath::Datapath;

use crate::kernel::{NetnsId, PauseProcess};
use crate::names::{IfName, PodId, PodName};
use crate::ports::PortMapping;

/// Where a pod is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Record saved, kernel objects being created; the caller has not been answered.
    Creating,
    /// Everything is in place and the caller has (or will have) been told.
    Ready,
    /// Teardown has started (or failed part-way and must be finished).
    Removing,
}

/// How the pod's network namespace came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NetnsOwnership {
    /// We created the bind mount (`create`); we delete it on remove.
    Owned {
        /// Whether a pause process holds the namespace.
        pause: bool,
    },
    /// Someone else created it (`attach`); we never delete it.
    Attached,
}

/// Everything recorded about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    /// The pod's name.
    pub name: PodName,
    /// Its id (derived from the name; stored for readability and checked on load).
    pub id: PodId,
    /// Path of the network namespace (bind mount or foreign path).
    pub netns: PathBuf,
    /// Whether we created the namespace, and whether with a pause process.
    pub ownership: NetnsOwnership,
    /// The running pause process, once started.
    #[serde(default)]
    pub pause: Option<PauseProcess>,
    /// The pod's addresses (IPv4 first) with the pod CIDR prefix length (bridge datapath)
    /// or as /32 and /128 (routed).
    pub ips: Vec<IpNet>,
    /// Default gateways (the bridge addresses; on the routed datapath the link-local
    /// gateways of [`crate::datapath`]), same order as `ips`.
    pub gateways: Vec<IpAddr>,
    /// The interface name inside the pod (`eth0`).
    pub interface: IfName,
    /// The host-side veth name: [`crate::names::PodId::host_veth_name`], or the pool name
    /// of the veth pair made ahead that the create reserved
    /// ([`crate::system::Namespaces::reserve_pooled_link`]).
    pub host_veth: IfName,
    /// Free-form caller annotations, part of the create parameters.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Life-cycle phase.
    pub phase: Phase,
    /// MTU of the pod interface (and its host end).
    pub mtu: u32,
    /// Published host ports, part of the create parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// The host ports were withdrawn (`ReleasePodPorts`, a runtime's StopPodSandbox): they
    /// are no longer published nor held against other pods, and nothing publishes them
    /// again. Saved before the elements are deleted, so a crash in between leaves elements
    /// that no record wants, which check reports and repair removes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ports_released: bool,
    /// Identity of the attached namespace when it was wired. A path such as
    /// `/proc/<pid>/ns/net` can later name another namespace (the pid was reused): then
    /// the pod's own namespace is gone, and nothing must be done inside the new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<NetnsId>,
    /// The datapath the pod was wired for (records written before there was a choice are
    /// `bridge`). A node's datapath never changes under its pods: the daemon refuses to
    /// start with another one while any record holds this one.
    #[serde(default, skip_serializing_if = "Datapath::is_bridge")]
    pub datapath: Datapath,
}

impl PodRecord {
    /// Whether we created the namespace (and so must delete it).
    pub fn netns_owned(&self) -> bool {
        matches!(self.ownership, NetnsOwnership::Owned { .. })
    }

    /// Whether the pod is supposed to have a pause process.
    pub fn wants_pause(&self) -> bool {
        matches!(self.ownership, NetnsOwnership::Owned { pause: true })
    }
}
