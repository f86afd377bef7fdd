//! What the kernel is observed to hold, as plain data: a pause process identity
//! ([`PauseProcess`]), a link ([`LinkInfo`]), a namespace identity ([`NetnsId`]), the node
//! namespace's own addresses and routes ([`NodeNetwork`], checked against the pod CIDRs by
//! [`check_pod_cidrs`]) and the [`KernelEvent`]s the daemon watches. The traits of
//! [`crate::system`] return these; the planners and the manager read them.

use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::{IfName, PodId};

/// A process identity that survives pid reuse: the pid plus its start time (field 22 of
/// `/proc/<pid>/stat`, in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PauseProcess {
    /// The process id.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
}

impl fmt::Display for PauseProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (start time {})", self.pid, self.start_time)
    }
}

/// A pause process found running, with the pod id from its `argv[0]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningPause {
    /// The pod id from `netns-holder-pause:<id>`.
    pub id: PodId,
    /// The process.
    pub process: PauseProcess,
}

/// What `check` needs to know about one link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkInfo {
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
    /// The master device (bridge), if enslaved.
    pub master: Option<IfName>,
    /// Addresses configured on it (with prefix length).
    pub addresses: Vec<IpNet>,
}

/// What a [`NodeNetwork`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeNetworkKind {
    /// An address configured on an interface (with its prefix length).
    Address,
    /// A route (its destination), in any table but the kernel's `local` one; `ours` when it
    /// carries [`crate::peers::ROUTE_PROTOCOL`] (a peer route this daemon installed).
    Route {
        /// Installed by this daemon.
        ours: bool,
    },
}

/// An address or a route of the node network namespace (see
/// [`crate::system::Netlink::node_networks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeNetwork {
    /// The address with its prefix length, or the route's destination.
    pub network: IpNet,
    /// The interface it is on (the route's output interface), if any.
    pub interface: Option<String>,
    /// Address or route.
    pub kind: NodeNetworkKind,
}

impl fmt::Display for NodeNetwork {
    /// `the address 10.77.0.1/16 on eth1`, `the route 10.0.0.0/8 dev eth0`,
    /// `the route 10.9.0.0/16 (no interface)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let interface = self.interface.as_deref().map(crate::names::quoted);
        match (self.kind, interface) {
            (NodeNetworkKind::Address, Some(i)) => write!(f, "the address {} on {i}", self.network),
            (NodeNetworkKind::Address, None) => write!(f, "the address {}", self.network),
            (NodeNetworkKind::Route { .. }, Some(i)) => {
                write!(f, "the route {} dev {i}", self.network)
            }
            (NodeNetworkKind::Route { .. }, None) => {
                write!(f, "the route {} (no interface)", self.network)
            }
        }
    }
}

/// A pod CIDR that overlaps an address or a route of the node that is not ours: pods would
/// get addresses the node already reaches elsewhere (or uses itself).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "{key} {cidr} overlaps {conflict} in the node network namespace; choose a pod CIDR \
     outside the node's own networks"
)]
pub struct PodCidrOverlap {
    /// The configuration key (`pod_cidr_v4`, `pod_cidr_v6`).
    pub key: &'static str,
    /// The pod CIDR.
    pub cidr: IpNet,
    /// The first address or route it overlaps.
    pub conflict: NodeNetwork,
}

/// Whether two networks share an address.
fn networks_overlap(a: IpNet, b: IpNet) -> bool {
    let (a, b) = (a.trunc(), b.trunc());
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks each pod CIDR (`(config key, CIDR)`) against the node's `networks`. Ours are
/// fine: addresses and routes on our `bridge` (its gateway addresses and their prefix
/// routes) and peer routes we installed; so are default routes (`0.0.0.0/0`, `::/0`),
/// which every pod CIDR is "inside". Anything else sharing an address with a pod CIDR is
/// refused, naming the CIDR, the address or route and its interface.
pub fn check_pod_cidrs(
    cidrs: &[(&'static str, IpNet)],
    bridge: &IfName,
    networks: &[NodeNetwork],
) -> Result<(), PodCidrOverlap> {
    for &(key, cidr) in cidrs {
        let conflict = networks.iter().find(|n| {
            n.network.prefix_len() > 0
                && n.interface.as_deref() != Some(bridge.as_str())
                && n.kind != (NodeNetworkKind::Route { ours: true })
                && networks_overlap(n.network, cidr)
        });
        if let Some(conflict) = conflict {
            return Err(PodCidrOverlap {
                key,
                cidr,
                conflict: conflict.clone(),
            });
        }
    }
    Ok(())
}

/// The identity of a network namespace: device and inode of its nsfs file (what `stat`
/// shows for `/proc/<pid>/ns/net` or a bind mount of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsId {
    /// `st_dev` of the nsfs file.
    pub dev: u64,
    /// `st_ino`: the namespace's inode number.
    pub ino: u64,
}

impl std::fmt::Display for NetnsId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "net:[{}] (dev {})", self.ino, self.dev)
    }
}

/// A change in the kernel that may mean a pod is over without anyone telling the daemon
/// (a runtime that restarted sends no Stop or Remove for the sandboxes it had).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelEvent {
    /// The daemon's mount table changed: a namespace bind mount may be gone.
    MountsChanged,
    /// A link of the node namespace was deleted: a pod's host veth goes when its namespace
    /// is destroyed (with the pod end).
    LinkRemoved(String),
    /// Events were lost (a watcher's buffer overflowed or it stopped): every attached pod
    /// must be looked at once.
    EventsLost,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn address(n: &str, on: &str) -> NodeNetwork {
        NodeNetwork {
            network: net(n),
            interface: Some(on.to_string()),
            kind: NodeNetworkKind::Address,
        }
    }

    fn route(n: &str, on: Option<&str>, ours: bool) -> NodeNetwork {
        NodeNetwork {
            network: net(n),
            interface: on.map(str::to_string),
            kind: NodeNetworkKind::Route { ours },
        }
    }

    #[test]
    fn pod_cidrs_overlapping_the_nodes_networks_are_refused_naming_both() {
        let bridge = IfName::new("nh0").unwrap();
        let node = vec![
            address("127.0.0.1/8", "lo"),
            address("192.168.1.10/24", "eth0"),
            address("fd00:1::10/64", "eth0"),
            route("0.0.0.0/0", Some("eth0"), false),
            route("::/0", Some("eth0"), false),
            route("192.168.1.0/24", Some("eth0"), false),
            route("10.200.0.0/16", None, false),
            // Ours: the bridge's gateway and prefix route, a peer route.
            address("10.244.0.1/24", "nh0"),
            route("10.244.0.0/24", Some("nh0"), false),
            route("10.245.0.0/24", Some("eth0"), true),
        ];
        let check = |key, cidr: &str| check_pod_cidrs(&[(key, net(cidr))], &bridge, &node);
        assert_eq!(check("pod_cidr_v4", "10.244.0.0/24"), Ok(()));
        assert_eq!(check("pod_cidr_v4", "10.99.0.0/16"), Ok(()));
        assert_eq!(check("pod_cidr_v6", "fd00:2::/64"), Ok(()));
        // Our peer route's range is not refused here (the config checks peers itself).
        assert_eq!(check("pod_cidr_v4", "10.245.0.0/16"), Ok(()));
        for (key, cidr, conflict) in [
            (
                "pod_cidr_v4",
                "192.168.1.0/24",
                "the address 192.168.1.10/24 on \"eth0\"",
            ),
            (
                "pod_cidr_v4",
                "192.168.1.128/25",
                "the address 192.168.1.10/24 on \"eth0\"",
            ),
            (
                "pod_cidr_v4",
                "192.168.0.0/16",
                "the address 192.168.1.10/24 on \"eth0\"",
            ),
            (
                "pod_cidr_v4",
                "10.200.5.0/24",
                "the route 10.200.0.0/16 (no interface)",
            ),
            (
                "pod_cidr_v6",
                "fd00:1::/80",
                "the address fd00:1::10/64 on \"eth0\"",
            ),
        ] {
            let e = check(key, cidr).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{key} {cidr} overlaps {conflict}")),
                "{e}"
            );
        }
        // A route on another interface than the bridge overlapping: refused.
        let mut node = node.clone();
        node.push(route("10.244.0.0/16", Some("eth1"), false));
        let e =
            check_pod_cidrs(&[("pod_cidr_v4", net("10.244.0.0/24"))], &bridge, &node).unwrap_err();
        assert_eq!(e.conflict.interface.as_deref(), Some("eth1"));
    }
}
