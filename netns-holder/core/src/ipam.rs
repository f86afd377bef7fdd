//! IP address management: one pool per address family, carved out of the configured pod
//! CIDRs.
//!
//! In every pool the network address (offset 0), the gateway (offset 1, the first host
//! address, which lives on the node bridge) and the last address (the IPv4 broadcast; kept
//! out of IPv6 pools too, for one uniform rule) are never handed out. Allocation is
//! round-robin: a cursor remembers the last address handed out and the next allocation
//! continues after it, wrapping at the end, so a just-released address is not reused at
//! once (a stale ARP/neighbour entry or conntrack flow then points nowhere rather than at
//! a new pod). The cursors are persisted with the state; the allocations themselves are
//! rebuilt from the pod records with [`Ipam::restore`].
//!
//! Every operation is O(number of allocations) at worst, never O(pool size), so /64 IPv6
//! pools are fine.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::names::PodId;

/// An IPAM failure; every variant names the address or CIDR concerned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IpamError {
    /// Every usable address of the pool is allocated.
    #[error("pod CIDR {cidr} is exhausted: all {capacity} pod addresses are allocated")]
    Exhausted {
        /// The pool's CIDR.
        cidr: IpNet,
        /// How many pod addresses the pool has.
        capacity: u128,
    },
    /// An address to restore is outside the pool.
    #[error("address {addr} is not in pod CIDR {cidr}")]
    NotInPool {
        /// The address.
        addr: IpAddr,
        /// The pool's CIDR.
        cidr: IpNet,
    },
    /// No pool is configured for the address's family.
    #[error("address {addr}: no pod CIDR is configured for its address family")]
    NoPool {
        /// The address.
        addr: IpAddr,
    },
    /// An address to restore is the network, gateway or broadcast address.
    #[error("address {addr} is the {what} address of pod CIDR {cidr} and cannot belong to a pod")]
    Reserved {
        /// The address.
        addr: IpAddr,
        /// The pool's CIDR.
        cidr: IpNet,
        /// `network`, `gateway` or `broadcast`.
        what: &'static str,
    },
    /// An address to restore is already allocated to another pod.
    #[error("address {addr} is already allocated to pod {owner}")]
    InUse {
        /// The address.
        addr: IpAddr,
        /// Its current owner.
        owner: PodId,
    },
    /// The pod already holds a different address of the same family.
    #[error("pod {owner} already holds {existing}, cannot also take {requested}")]
    OwnerHasAddress {
        /// The pod.
        owner: PodId,
        /// The address it holds.
        existing: IpAddr,
        /// The address that was to be restored.
        requested: IpAddr,
    },
}

/// One address family's pool.
#[derive(Debug, Clone)]
pub struct Pool {
    cidr: IpNet,
    /// The network address as an integer.
    base: u128,
    /// The offset of the last address of the CIDR (the broadcast address for IPv4).
    last: u128,
    /// Offset of the address handed out most recently.
    cursor: Option<u128>,
    by_offset: BTreeMap<u128, PodId>,
    by_owner: BTreeMap<PodId, u128>,
}

/// Offset of the gateway address in every pool.
const GATEWAY_OFFSET: u128 = 1;
/// First offset that can be handed to a pod.
const FIRST_POD_OFFSET: u128 = 2;

fn addr_to_u128(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Pool {
    /// A pool over `cidr`, which must leave at least one pod address (IPv4 up to /30,
    /// IPv6 up to /126; [`crate::config::Config::validate`] enforces this).
    pub fn new(cidr: IpNet) -> Self {
        let cidr = cidr.trunc();
        let last = match cidr {
            IpNet::V4(n) => {
                u128::from(u32::MAX.checked_shr(u32::from(n.prefix_len())).unwrap_or(0))
            }
            IpNet::V6(n) => u128::MAX
                .checked_shr(u32::from(n.prefix_len()))
                .unwrap_or(0),
        };
        Self {
            base: addr_to_u128(cidr.network()),
            cidr,
            last,
            cursor: None,
            by_offset: BTreeMap::new(),
            by_owner: BTreeMap::new(),
        }
    }

    /// The pool's CIDR.
    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    /// Number of addresses that can be handed to pods.
    pub fn capacity(&self) -> u128 {
        self.last.saturating_sub(FIRST_POD_OFFSET)
    }

    /// Number of addresses currently allocated.
    pub fn allocated(&self) -> usize {
        self.by_offset.len()
    }

    fn addr_at(&self, offset: u128) -> IpAddr {
        match self.cidr {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from((self.base + offset) as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(self.base + offset)),
        }
    }

    fn net_at(&self, offset: u128) -> IpNet {
        let prefix = self.cidr.prefix_len();
        match self.addr_at(offset) {
            IpAddr::V4(a) => {
                IpNet::V4(Ipv4Net::new(a, prefix).expect("prefix taken from a valid net"))
            }
            IpAddr::V6(a) => {
                IpNet::V6(Ipv6Net::new(a, prefix).expect("prefix taken from a valid net"))
            }
        }
    }

    /// The gateway address (the first host address) with the pool's prefix length; it is
    /// configured on the node bridge.
    pub fn gateway(&self) -> IpNet {
        self.net_at(GATEWAY_OFFSET)
    }

    /// Offset of `addr` in the pool, checking that a pod may hold it.
    fn pod_offset(&self, addr: IpAddr) -> Result<u128, IpamError> {
        if !self.cidr.contains(&addr) {
            return Err(IpamError::NotInPool {
                addr,
                cidr: self.cidr,
            });
        }
        let offset = addr_to_u128(addr) - self.base;
        let what = match offset {
            0 => Some("network"),
            GATEWAY_OFFSET => Some("gateway"),
            o if o == self.last => Some("broadcast"),
            _ => None,
        };
        match what {
            Some(what) => Err(IpamError::Reserved {
                addr,
                cidr: self.cidr,
                what,
            }),
            None => Ok(offset),
        }
    }

    /// Hands out the next free address after the cursor to `owner`, or returns the one it
    /// already holds.
    pub fn allocate(&mut self, owner: &PodId) -> Result<IpNet, IpamError> {
        if let Some(&offset) = self.by_owner.get(owner) {
            return Ok(self.net_at(offset));
        }
        let capacity = self.capacity();
        if self.by_offset.len() as u128 >= capacity {
            return Err(IpamError::Exhausted {
                cidr: self.cidr,
                capacity,
            });
        }
        let last_pod = self.last - 1;
        let mut offset = match self.cursor {
            Some(c) if c < last_pod && c >= FIRST_POD_OFFSET => c + 1,
            _ => FIRST_POD_OFFSET,
        };
        // At most `allocated + 1` probes: there is a free offset among any that many
        // consecutive (wrapping) pod offsets.
        while self.by_offset.contains_key(&offset) {
            offset = if offset >= last_pod {
                FIRST_POD_OFFSET
            } else {
                offset + 1
            };
        }
        self.by_offset.insert(offset, *owner);
        self.by_owner.insert(*owner, offset);
        self.cursor = Some(offset);
        Ok(self.net_at(offset))
    }

    /// Releases the address held by `owner`, if any, and returns it.
    pub fn release(&mut self, owner: &PodId) -> Option<IpAddr> {
        let offset = self.by_owner.remove(owner)?;
        self.by_offset.remove(&offset);
        Some(self.addr_at(offset))
    }

    /// Marks `addr` as held by `owner` (rebuilding allocations from records). Restoring the
    /// address the owner already holds is a no-op. The cursor is not moved.
    pub fn restore(&mut self, owner: &PodId, addr: IpAddr) -> Result<(), IpamError> {
        let offset = self.pod_offset(addr)?;
        match (self.by_offset.get(&offset), self.by_owner.get(owner)) {
            (Some(current), _) if current == owner => Ok(()),
            (Some(current), _) => Err(IpamError::InUse {
                addr,
                owner: *current,
            }),
            (None, Some(&existing)) => Err(IpamError::OwnerHasAddress {
                owner: *owner,
                existing: self.addr_at(existing),
                requested: addr,
            }),
            (None, None) => {
                self.by_offset.insert(offset, *owner);
                self.by_owner.insert(*owner, offset);
                Ok(())
            }
        }
    }

    /// The owner of `addr`, if it is allocated.
    pub fn owner_of(&self, addr: IpAddr) -> Option<&PodId> {
        if !self.cidr.contains(&addr) {
            return None;
        }
        self.by_offset.get(&(addr_to_u128(addr) - self.base))
    }

    /// The address handed out most recently (the cursor).
    pub fn cursor(&self) -> Option<IpAddr> {
        self.cursor.map(|o| self.addr_at(o))
    }

    /// Sets the cursor (from persisted state). An address outside the pool's pod range is
    /// ignored, so a changed CIDR simply restarts at the beginning.
    pub fn set_cursor(&mut self, cursor: Option<IpAddr>) {
        self.cursor = cursor.and_then(|a| self.pod_offset(a).ok());
    }
}

/// The persisted round-robin cursors, one per family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpamCursors {
    /// Last IPv4 address handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4: Option<IpAddr>,
    /// Last IPv6 address handed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6: Option<IpAddr>,
}

/// Usage of one pool, for status reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PoolUsage {
    /// The pool's CIDR.
    pub cidr: IpNet,
    /// Addresses allocated.
    pub allocated: usize,
    /// Addresses that can be handed to pods.
    pub capacity: u128,
}

/// The address manager: an IPv4 pool and an optional IPv6 pool. Every pod gets exactly one
/// address from each configured pool.
#[derive(Debug, Clone)]
pub struct Ipam {
    v4: Pool,
    v6: Option<Pool>,
}

impl Ipam {
    /// An empty manager over the configured CIDRs.
    pub fn new(v4: Ipv4Net, v6: Option<Ipv6Net>) -> Self {
        Self {
            v4: Pool::new(IpNet::V4(v4)),
            v6: v6.map(|n| Pool::new(IpNet::V6(n))),
        }
    }

    fn pools(&self) -> impl Iterator<Item = &Pool> {
        std::iter::once(&self.v4).chain(self.v6.as_ref())
    }

    fn pool_for(&mut self, addr: IpAddr) -> Result<&mut Pool, IpamError> {
        match addr {
            IpAddr::V4(_) => Ok(&mut self.v4),
            IpAddr::V6(_) => self.v6.as_mut().ok_or(IpamError::NoPool { addr }),
        }
    }

    /// Allocates one address per configured family to `owner` (IPv4 first). All or nothing:
    /// if the IPv6 pool is exhausted the IPv4 address is released again.
    pub fn allocate(&mut self, owner: &PodId) -> Result<Vec<IpNet>, IpamError> {
        let v4_had = self.v4.by_owner.contains_key(owner);
        let v4 = self.v4.allocate(owner)?;
        let mut out = vec![v4];
        if let Some(v6) = self.v6.as_mut() {
            match v6.allocate(owner) {
                Ok(a) => out.push(a),
                Err(e) => {
                    if !v4_had {
                        self.v4.release(owner);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// Releases every address of `owner` and returns them.
    pub fn release(&mut self, owner: &PodId) -> Vec<IpAddr> {
        let mut out: Vec<IpAddr> = self.v4.release(owner).into_iter().collect();
        if let Some(v6) = self.v6.as_mut() {
            out.extend(v6.release(owner));
        }
        out
    }

    /// Marks `addrs` as held by `owner`; all or nothing.
    pub fn restore(&mut self, owner: &PodId, addrs: &[IpNet]) -> Result<(), IpamError> {
        let backup = self.clone();
        for net in addrs {
            if let Err(e) = self
                .pool_for(net.addr())
                .and_then(|p| p.restore(owner, net.addr()))
            {
                *self = backup;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Whether `addr` is allocated to some pod.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.owner_of(addr).is_some()
    }

    /// The owner of `addr`, if allocated.
    pub fn owner_of(&self, addr: IpAddr) -> Option<&PodId> {
        self.pools().find_map(|p| p.owner_of(addr))
    }

    /// The gateway addresses (IPv4 first) with their prefix lengths, as configured on the
    /// node bridge.
    pub fn gateways(&self) -> Vec<IpNet> {
        self.pools().map(Pool::gateway).collect()
    }

    /// The current cursors, for persisting.
    pub fn cursors(&self) -> IpamCursors {
        IpamCursors {
            v4: self.v4.cursor(),
            v6: self.v6.as_ref().and_then(Pool::cursor),
        }
    }

    /// Restores persisted cursors.
    pub fn set_cursors(&mut self, cursors: &IpamCursors) {
        self.v4.set_cursor(cursors.v4);
        if let Some(v6) = self.v6.as_mut() {
            v6.set_cursor(cursors.v6);
        }
    }

    /// Usage of every pool (IPv4 first).
    pub fn usage(&self) -> Vec<PoolUsage> {
        self.pools()
            .map(|p| PoolUsage {
                cidr: p.cidr(),
                allocated: p.allocated(),
                capacity: p.capacity(),
            })
            .collect()
    }

    /// Whether an IPv6 pool is configured.
    pub fn dual_stack(&self) -> bool {
        self.v6.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::names::PodName;

    fn id(n: usize) -> PodId {
        PodName::new(format!("pod-{n}")).unwrap().id()
    }

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn first_allocations_skip_network_and_gateway() {
        let mut ipam = Ipam::new(v4("10.88.0.0/16"), None);
        assert_eq!(ipam.gateways(), vec![net("10.88.0.1/16")]);
        assert_eq!(ipam.allocate(&id(1)).unwrap(), vec![net("10.88.0.2/16")]);
        assert_eq!(ipam.allocate(&id(2)).unwrap(), vec![net("10.88.0.3/16")]);
        assert!(ipam.contains(ip("10.88.0.2")));
        assert!(!ipam.contains(ip("10.88.0.4")));
        assert_eq!(ipam.owner_of(ip("10.88.0.3")), Some(&id(2)));
    }

    #[test]
    fn allocate_is_idempotent_per_owner() {
        let mut ipam = Ipam::new(v4("10.88.0.0/16"), Some(v6("fd00::/64")));
        let a = ipam.allocate(&id(1)).unwrap();
        assert_eq!(ipam.allocate(&id(1)).unwrap(), a);
        assert_eq!(a, vec![net("10.88.0.2/16"), net("fd00::2/64")]);
    }

    #[test]
    fn slash_30_has_exactly_one_pod_address() {
        let mut ipam = Ipam::new(v4("192.168.5.0/30"), None);
        assert_eq!(ipam.usage()[0].capacity, 1);
        assert_eq!(ipam.allocate(&id(1)).unwrap(), vec![net("192.168.5.2/30")]);
        let err = ipam.allocate(&id(2)).unwrap_err();
        assert_eq!(
            err,
            IpamError::Exhausted {
                cidr: net("192.168.5.0/30"),
                capacity: 1
            }
        );
        assert!(err.to_string().contains("192.168.5.0/30"), "{err}");
        // Released, it is handed out again (it is the only one).
        ipam.release(&id(1));
        assert_eq!(ipam.allocate(&id(2)).unwrap(), vec![net("192.168.5.2/30")]);
    }

    #[test]
    fn slash_126_has_exactly_one_pod_address() {
        let mut ipam = Ipam::new(v4("10.0.0.0/24"), Some(v6("fd00:1::/126")));
        assert_eq!(
            ipam.gateways(),
            vec![net("10.0.0.1/24"), net("fd00:1::1/126")]
        );
        assert_eq!(
            ipam.allocate(&id(1)).unwrap(),
            vec![net("10.0.0.2/24"), net("fd00:1::2/126")]
        );
        let err = ipam.allocate(&id(2)).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { capacity: 1, .. }));
        assert!(err.to_string().contains("fd00:1::/126"), "{err}");
        // All or nothing: the v4 address taken for pod 2 was given back.
        assert!(!ipam.contains(ip("10.0.0.3")));
        assert_eq!(ipam.usage()[0].allocated, 1);
    }

    #[test]
    fn never_network_gateway_or_broadcast() {
        let mut ipam = Ipam::new(v4("10.1.2.0/29"), None);
        let mut got = BTreeSet::new();
        for n in 0..5 {
            got.insert(ipam.allocate(&id(n)).unwrap()[0].addr());
        }
        let expected: BTreeSet<IpAddr> = (2..=6).map(|h| ip(&format!("10.1.2.{h}"))).collect();
        assert_eq!(got, expected);
        assert!(matches!(
            ipam.allocate(&id(9)),
            Err(IpamError::Exhausted { capacity: 5, .. })
        ));
    }

    #[test]
    fn round_robin_does_not_reuse_just_freed_address() {
        let mut ipam = Ipam::new(v4("10.1.2.0/29"), None); // pod addresses .2 ..= .6
        assert_eq!(ipam.allocate(&id(1)).unwrap()[0].addr(), ip("10.1.2.2"));
        assert_eq!(ipam.allocate(&id(2)).unwrap()[0].addr(), ip("10.1.2.3"));
        ipam.release(&id(1));
        // .2 is free but the cursor moves on.
        assert_eq!(ipam.allocate(&id(3)).unwrap()[0].addr(), ip("10.1.2.4"));
        ipam.release(&id(3));
        assert_eq!(ipam.allocate(&id(4)).unwrap()[0].addr(), ip("10.1.2.5"));
        assert_eq!(ipam.allocate(&id(5)).unwrap()[0].addr(), ip("10.1.2.6"));
        // Wraps to the beginning, skipping the network and gateway, then skips .3 (in use).
        assert_eq!(ipam.allocate(&id(6)).unwrap()[0].addr(), ip("10.1.2.2"));
        assert_eq!(ipam.allocate(&id(7)).unwrap()[0].addr(), ip("10.1.2.4"));
        assert!(matches!(
            ipam.allocate(&id(8)),
            Err(IpamError::Exhausted { .. })
        ));
    }

    #[test]
    fn cursor_survives_persistence() {
        let mut a = Ipam::new(v4("10.1.2.0/24"), Some(v6("fd00::/120")));
        a.allocate(&id(1)).unwrap();
        a.allocate(&id(2)).unwrap();
        a.release(&id(2));
        let cursors = a.cursors();
        assert_eq!(cursors.v4, Some(ip("10.1.2.3")));
        assert_eq!(cursors.v6, Some(ip("fd00::3")));
        let json = serde_json::to_string(&cursors).unwrap();
        let mut b = Ipam::new(v4("10.1.2.0/24"), Some(v6("fd00::/120")));
        b.set_cursors(&serde_json::from_str(&json).unwrap());
        b.restore(&id(1), &[net("10.1.2.2/24"), net("fd00::2/120")])
            .unwrap();
        assert_eq!(
            b.allocate(&id(3)).unwrap(),
            vec![net("10.1.2.4/24"), net("fd00::4/120")]
        );
    }

    #[test]
    fn cursor_outside_pool_is_ignored() {
        let mut ipam = Ipam::new(v4("10.1.2.0/24"), None);
        ipam.set_cursors(&IpamCursors {
            v4: Some(ip("192.168.0.9")),
            v6: None,
        });
        assert_eq!(ipam.allocate(&id(1)).unwrap()[0].addr(), ip("10.1.2.2"));
    }

    #[test]
    fn restore_checks() {
        let mut ipam = Ipam::new(v4("10.1.2.0/24"), None);
        ipam.restore(&id(1), &[net("10.1.2.7/24")]).unwrap();
        ipam.restore(&id(1), &[net("10.1.2.7/24")]).unwrap(); // idempotent
        assert!(ipam.contains(ip("10.1.2.7")));
        assert_eq!(
            ipam.restore(&id(2), &[net("10.1.2.7/24")]),
            Err(IpamError::InUse {
                addr: ip("10.1.2.7"),
                owner: id(1)
            })
        );
        assert!(matches!(
            ipam.restore(&id(1), &[net("10.1.2.8/24")]),
            Err(IpamError::OwnerHasAddress { .. })
        ));
        assert!(matches!(
            ipam.restore(&id(3), &[net("10.9.0.2/24")]),
            Err(IpamError::NotInPool { .. })
        ));
        for (a, what) in [
            ("10.1.2.0/24", "network"),
            ("10.1.2.1/24", "gateway"),
            ("10.1.2.255/24", "broadcast"),
        ] {
            let err = ipam.restore(&id(3), &[net(a)]).unwrap_err();
            assert!(
                matches!(err, IpamError::Reserved { what: w, .. } if w == what),
                "{a}: {err}"
            );
        }
        assert!(matches!(
            ipam.restore(&id(3), &[net("fd00::5/64")]),
            Err(IpamError::NoPool { .. })
        ));
        // Restored addresses are skipped by allocation.
        let mut ipam = Ipam::new(v4("10.1.2.0/29"), None);
        ipam.restore(&id(1), &[net("10.1.2.2/29")]).unwrap();
        assert_eq!(ipam.allocate(&id(2)).unwrap()[0].addr(), ip("10.1.2.3"));
    }

    #[test]
    fn restore_is_all_or_nothing() {
        let mut ipam = Ipam::new(v4("10.1.2.0/24"), Some(v6("fd00::/64")));
        assert!(
            ipam.restore(&id(1), &[net("10.1.2.9/24"), net("fd01::5/64")])
                .is_err()
        );
        assert!(!ipam.contains(ip("10.1.2.9")));
    }

    #[test]
    fn release_returns_addresses() {
        let mut ipam = Ipam::new(v4("10.1.2.0/24"), Some(v6("fd00::/64")));
        ipam.allocate(&id(1)).unwrap();
        assert_eq!(ipam.release(&id(1)), vec![ip("10.1.2.2"), ip("fd00::2")]);
        assert_eq!(ipam.release(&id(1)), Vec::<IpAddr>::new());
    }

    #[test]
    fn huge_v6_pool_and_v4_slash_0_edges() {
        let mut ipam = Ipam::new(v4("0.0.0.0/0"), Some(v6("::/0")));
        assert_eq!(ipam.usage()[0].capacity, (1u128 << 32) - 3);
        assert_eq!(ipam.usage()[1].capacity, u128::MAX - 2);
        let a = ipam.allocate(&id(1)).unwrap();
        assert_eq!(a, vec![net("0.0.0.2/0"), net("::2/0")]);
        ipam.set_cursors(&IpamCursors {
            v4: Some(ip("255.255.255.254")),
            v6: Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")),
        });
        assert_eq!(
            ipam.allocate(&id(2)).unwrap(),
            vec![net("0.0.0.3/0"), net("::3/0")]
        );
    }

    #[test]
    fn many_distinct() {
        let mut ipam = Ipam::new(v4("10.0.0.0/22"), Some(v6("fd00::/64")));
        let mut seen = BTreeSet::new();
        for n in 0..1021 {
            for a in ipam.allocate(&id(n)).unwrap() {
                assert!(seen.insert(a.addr()), "duplicate {a}");
            }
        }
        assert!(matches!(
            ipam.allocate(&id(5000)),
            Err(IpamError::Exhausted { .. })
        ));
    }
}
