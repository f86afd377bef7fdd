//! Peers: other nodes whose pod CIDRs this node routes to directly (host-gw style).
//!
//! A [`Peer`] is a pod CIDR and the peer node's address (`via`), reachable on a link of the
//! node. The daemon installs, in the node namespace's main table, one route per peer to its
//! pod CIDR via that address, tagged with its own routing protocol number
//! [`ROUTE_PROTOCOL`] so that it recognises its routes (to re-add a deleted one, and to
//! remove those of peers that were removed) without touching anybody else's. Pod-to-pod
//! traffic across nodes is then plain routing: no encapsulation and no NAT, so each pod sees
//! the other's own address.
//!
//! Peers come from the configuration (`peers = [{ pod_cidr = "...", via = "..." }]`, applied
//! at every start) and from the API (`AddPeer`/`RemovePeer`, persisted in the state). A
//! configured peer cannot be removed through the API (edit the configuration instead); one
//! that disappears from the configuration is removed at the next start.
//!
//! Everything here is pure: validation, and the drift and repair of the routes.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::action::Action;
use crate::finding::{Finding, Problem};

/// The routing protocol number (`rtm_protocol`) of the routes the daemon installs
/// (`ip route show proto 78`). Unassigned in iproute2's `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 78;

/// A peer node: its pod CIDR and the address it is reached at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's pod CIDR.
    pub pod_cidr: IpNet,
    /// The peer node's address (the route's gateway).
    pub via: IpAddr,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} via {}", self.pod_cidr, self.via)
    }
}

/// Where a peer comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerSource {
    /// The configuration file.
    Config,
    /// An `AddPeer` call.
    Api,
    /// The cluster's etcd (cluster mode, see [`crate::cluster`]).
    Etcd,
}

impl PeerSource {
    /// How `status` names it: `"static"` (configuration or API) or `"etcd"`.
    pub fn kind(self) -> &'static str {
        match self {
            PeerSource::Config | PeerSource::Api => "static",
            PeerSource::Etcd => "etcd",
        }
    }
}

/// A peer as stored in the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// The peer's pod CIDR.
    pub pod_cidr: IpNet,
    /// The peer node's address.
    pub via: IpAddr,
    /// Where it comes from.
    pub source: PeerSource,
}

impl PeerRecord {
    /// The peer.
    pub fn peer(&self) -> Peer {
        Peer {
            pod_cidr: self.pod_cidr,
            via: self.via,
        }
    }
}

/// Why a peer was refused; every variant names it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PeerError {
    /// The CIDR has host bits set.
    #[error("peer {peer}: pod CIDR {} has host bits set; the network is {}", peer.pod_cidr, peer.pod_cidr.trunc())]
    HostBits {
        /// The peer.
        peer: Peer,
    },
    /// The CIDR and the address are of different families.
    #[error("peer {peer}: the pod CIDR and the node address are of different address families")]
    FamilyMismatch {
        /// The peer.
        peer: Peer,
    },
    /// The address cannot be a gateway.
    #[error("peer {peer}: node address {} is {reason}", peer.via)]
    BadVia {
        /// The peer.
        peer: Peer,
        /// Why.
        reason: &'static str,
    },
    /// The CIDR overlaps this node's pod CIDR.
    #[error("peer {peer}: pod CIDR overlaps this node's pod CIDR {own}")]
    OverlapsOwn {
        /// The peer.
        peer: Peer,
        /// This node's CIDR.
        own: IpNet,
    },
    /// The CIDR overlaps another peer's.
    #[error("peer {peer}: pod CIDR overlaps peer {other}")]
    OverlapsPeer {
        /// The peer.
        peer: Peer,
        /// The other peer.
        other: Peer,
    },
    /// The address lies inside a pod CIDR.
    #[error("peer {peer}: node address is inside pod CIDR {cidr}")]
    ViaInPodCidr {
        /// The peer.
        peer: Peer,
        /// The CIDR.
        cidr: IpNet,
    },
    /// The peer exists with another address.
    #[error("peer {existing} already exists; remove it before adding {requested}")]
    Exists {
        /// The existing peer.
        existing: Peer,
        /// The one requested.
        requested: Peer,
    },
    /// The peer comes from the configuration file.
    #[error("peer {peer} comes from the configuration file; remove it there (and restart)")]
    FromConfig {
        /// The peer.
        peer: Peer,
    },
    /// The peer was learnt from the cluster.
    #[error("peer {peer} was learnt from the cluster; it goes when its node leaves the cluster")]
    FromCluster {
        /// The peer.
        peer: Peer,
    },
}

fn overlap(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Checks `peer` on its own and against this node's pod CIDRs (`own`) and the other peers.
pub fn validate(peer: &Peer, own: &[IpNet], others: &[Peer]) -> Result<(), PeerError> {
    let peer = *peer;
    if peer.pod_cidr.addr() != peer.pod_cidr.network() {
        return Err(PeerError::HostBits { peer });
    }
    if peer.pod_cidr.addr().is_ipv4() != peer.via.is_ipv4() {
        return Err(PeerError::FamilyMismatch { peer });
    }
    let bad = |reason| Err(PeerError::BadVia { peer, reason });
    if peer.via.is_unspecified() {
        return bad("unspecified");
    }
    if peer.via.is_loopback() {
        return bad("a loopback address");
    }
    if peer.via.is_multicast() {
        return bad("a multicast address");
    }
    if let IpAddr::V4(v4) = peer.via
        && v4.is_broadcast()
    {
        return bad("the broadcast address");
    }
    for cidr in own {
        if overlap(*cidr, peer.pod_cidr) {
            return Err(PeerError::OverlapsOwn { peer, own: *cidr });
        }
        if cidr.contains(&peer.via) {
            return Err(PeerError::ViaInPodCidr { peer, cidr: *cidr });
        }
    }
    if peer.pod_cidr.contains(&peer.via) {
        return Err(PeerError::ViaInPodCidr {
            peer,
            cidr: peer.pod_cidr,
        });
    }
    for other in others.iter().filter(|o| o.pod_cidr != peer.pod_cidr) {
        if overlap(other.pod_cidr, peer.pod_cidr) {
            return Err(PeerError::OverlapsPeer {
                peer,
                other: *other,
            });
        }
        if other.pod_cidr.contains(&peer.via) {
            return Err(PeerError::ViaInPodCidr {
                peer,
                cidr: other.pod_cidr,
            });
        }
    }
    Ok(())
}

/// `route CIDR via ADDR`, naming a route in findings.
pub fn route_object(cidr: IpNet, via: IpAddr) -> String {
    format!("route {cidr} via {via}")
}

/// Drift of the peer routes: a peer's route missing (or via another address), and routes of
/// ours that belong to no peer. `observed` are our routes in the node namespace.
pub fn check_routes(peers: &[PeerRecord], observed: &[(IpNet, IpAddr)]) -> Vec<Finding> {
    let mut out = Vec::new();
    for p in peers {
        if !observed.contains(&(p.pod_cidr, p.via)) {
            out.push(Finding {
                pod: None,
                object: route_object(p.pod_cidr, p.via),
                problem: Problem::Missing,
            });
        }
    }
    for (cidr, via) in observed {
        if !peers.iter().any(|p| p.pod_cidr == *cidr && p.via == *via) {
            out.push(Finding {
                pod: None,
                object: route_object(*cidr, *via),
                problem: Problem::NoPeer,
            });
        }
    }
    out
}

/// The actions that bring our routes in line with `peers`: stale routes of ours deleted
/// first (a peer re-added with another address replaces its route), then missing ones added.
pub fn plan_routes(peers: &[PeerRecord], observed: &[(IpNet, IpAddr)]) -> Vec<Action> {
    let mut actions: Vec<Action> = observed
        .iter()
        .filter(|(cidr, via)| !peers.iter().any(|p| p.pod_cidr == *cidr && p.via == *via))
        .map(|(cidr, via)| Action::DeleteRoute {
            cidr: *cidr,
            via: *via,
        })
        .collect();
    actions.extend(
        peers
            .iter()
            .filter(|p| !observed.contains(&(p.pod_cidr, p.via)))
            .map(|p| Action::AddRoute {
                cidr: p.pod_cidr,
                via: p.via,
            }),
    );
    actions
}

/// Merges the configured peers into the stored ones: configured peers replace stored ones of
/// the same CIDR, stored configured peers that the configuration no longer has are dropped,
/// API and cluster peers stay unless a configured peer takes their CIDR. The result is
/// ordered by CIDR.
pub fn merge_config(stored: &[PeerRecord], configured: &[Peer]) -> Vec<PeerRecord> {
    let mut out: Vec<PeerRecord> = stored
        .iter()
        .filter(|r| r.source != PeerSource::Config)
        .filter(|r| !configured.iter().any(|c| c.pod_cidr == r.pod_cidr))
        .copied()
        .collect();
    out.extend(configured.iter().map(|c| PeerRecord {
        pod_cidr: c.pod_cidr,
        via: c.via,
        source: PeerSource::Config,
    }));
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(cidr: &str, via: &str) -> Peer {
        Peer {
            pod_cidr: cidr.parse().unwrap(),
            via: via.parse().unwrap(),
        }
    }

    fn own() -> Vec<IpNet> {
        vec![
            "10.244.0.0/24".parse().unwrap(),
            "fd00:a::/64".parse().unwrap(),
        ]
    }

    #[test]
    fn valid_peers() {
        validate(&peer("10.244.1.0/24", "192.168.50.2"), &own(), &[]).unwrap();
        validate(&peer("fd00:b::/64", "fd99::2"), &own(), &[]).unwrap();
        // Re-validating a peer against a list holding itself is fine.
        let p = peer("10.244.1.0/24", "192.168.50.2");
        validate(&p, &own(), &[p]).unwrap();
    }

    #[test]
    fn invalid_peers_name_the_peer() {
        let others = [peer("10.244.2.0/24", "192.168.50.3")];
        for (p, part) in [
            (peer("10.244.1.1/24", "192.168.50.2"), "host bits"),
            (
                peer("10.244.1.0/24", "fd99::2"),
                "different address families",
            ),
            (peer("10.244.1.0/24", "0.0.0.0"), "unspecified"),
            (peer("10.244.1.0/24", "127.0.0.1"), "loopback"),
            (peer("10.244.1.0/24", "224.0.0.1"), "multicast"),
            (peer("10.244.1.0/24", "255.255.255.255"), "broadcast"),
            (
                peer("10.244.0.0/16", "192.168.50.2"),
                "overlaps this node's pod CIDR 10.244.0.0/24",
            ),
            (
                peer("10.244.0.128/25", "192.168.50.2"),
                "overlaps this node's",
            ),
            (
                peer("10.244.1.0/24", "10.244.0.9"),
                "inside pod CIDR 10.244.0.0/24",
            ),
            (
                peer("10.244.1.0/24", "10.244.1.9"),
                "inside pod CIDR 10.244.1.0/24",
            ),
            (
                peer("10.244.1.0/24", "10.244.2.9"),
                "inside pod CIDR 10.244.2.0/24",
            ),
            (
                peer("10.244.2.0/23", "192.168.50.2"),
                "overlaps peer 10.244.2.0/24 via 192.168.50.3",
            ),
        ] {
            let e = validate(&p, &own(), &others)
                .expect_err(&p.to_string())
                .to_string();
            assert!(e.contains(part), "{p}: {e}");
            assert!(e.contains(&p.to_string()), "{p}: {e}");
        }
    }

    fn rec(cidr: &str, via: &str, source: PeerSource) -> PeerRecord {
        let p = peer(cidr, via);
        PeerRecord {
            pod_cidr: p.pod_cidr,
            via: p.via,
            source,
        }
    }

    #[test]
    fn routes_drift_and_repair() {
        let peers = [
            rec("10.244.1.0/24", "192.168.50.2", PeerSource::Config),
            rec("10.244.2.0/24", "192.168.50.3", PeerSource::Api),
        ];
        let r = |c: &str, v: &str| (c.parse::<IpNet>().unwrap(), v.parse::<IpAddr>().unwrap());
        let observed = [
            r("10.244.1.0/24", "192.168.50.2"),
            r("10.244.2.0/24", "192.168.50.9"),
            r("10.244.3.0/24", "192.168.50.4"),
        ];
        let found: Vec<String> = check_routes(&peers, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "route 10.244.2.0/24 via 192.168.50.3: missing",
                "route 10.244.2.0/24 via 192.168.50.9: belongs to no peer",
                "route 10.244.3.0/24 via 192.168.50.4: belongs to no peer",
            ]
        );
        let actions: Vec<String> = plan_routes(&peers, &observed)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            actions,
            [
                "delete route 10.244.2.0/24 via 192.168.50.9",
                "delete route 10.244.3.0/24 via 192.168.50.4",
                "add route 10.244.2.0/24 via 192.168.50.3",
            ]
        );
        assert!(plan_routes(&peers, &[observed[0], r("10.244.2.0/24", "192.168.50.3")]).is_empty());
    }

    #[test]
    fn config_peers_win_and_stale_config_peers_go() {
        let stored = [
            rec("10.244.1.0/24", "192.168.50.2", PeerSource::Config),
            rec("10.244.2.0/24", "192.168.50.3", PeerSource::Api),
            rec("10.244.3.0/24", "192.168.50.4", PeerSource::Api),
        ];
        let merged = merge_config(
            &stored,
            &[
                peer("10.244.3.0/24", "192.168.50.5"),
                peer("10.244.4.0/24", "192.168.50.6"),
            ],
        );
        assert_eq!(
            merged,
            [
                rec("10.244.2.0/24", "192.168.50.3", PeerSource::Api),
                rec("10.244.3.0/24", "192.168.50.5", PeerSource::Config),
                rec("10.244.4.0/24", "192.168.50.6", PeerSource::Config),
            ]
        );
    }
}
