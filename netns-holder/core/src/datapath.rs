//! The node's datapath: how pods are wired to the node ([`Datapath`]), and the fixed
//! addresses of the routed one.
//!
//! * `bridge`: every host veth is a port of the node bridge, which carries the gateway
//!   addresses; pods share one broadcast domain and reach each other through it.
//! * `routed`: host veths have no master. The node holds a /32 (and /128) route to each
//!   pod's address on its host veth (tagged [`POD_ROUTE_PROTOCOL`]) and a permanent
//!   neighbour entry for it ([`pod_mac`]); the pod holds a default route on-link via
//!   [`GATEWAY_V4`] / [`GATEWAY_V6`], both permanent neighbours at [`HOST_VETH_MAC`] (the
//!   MAC of every host veth), so no ARP or neighbour discovery happens on either side and
//!   no address of the pod CIDR is spent on gateways. The node's own pod-CIDR address (the
//!   pool's first host address, what the bridge carries on the bridge datapath) sits on a
//!   dummy device named like the bridge, so pods have a node address to talk to and
//!   addresses nobody holds are routed nowhere.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// How pods are wired to the node. `Default` is what a pod record without the field means
/// (records from before the key): the bridge. A config without the key is another matter:
/// see [`crate::config::Config::resolve_datapath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Datapath {
    /// Host veths are ports of the node bridge.
    #[default]
    Bridge,
    /// Host veths have no master; per-pod host routes (see the module docs).
    Routed,
}

impl Datapath {
    /// The config value: `bridge` or `routed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bridge => "bridge",
            Self::Routed => "routed",
        }
    }

    /// Parses a config value.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "bridge" => Some(Self::Bridge),
            "routed" => Some(Self::Routed),
            _ => None,
        }
    }

    /// Whether this is [`Datapath::Bridge`] (serde's skip test for records).
    pub fn is_bridge(&self) -> bool {
        *self == Self::Bridge
    }
}

impl fmt::Display for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The routing protocol number of the per-pod host routes (routed datapath), so that
/// `check` finds ours among the node's routes (`ip route show proto 79`). Distinct from the peer routes' [`crate::peers::ROUTE_PROTOCOL`].
pub const POD_ROUTE_PROTOCOL: u8 = 79;

/// The pods' IPv4 gateway on the routed datapath: link-local, on-link, never on the wire.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// The pods' IPv6 gateway on the routed datapath.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The MAC address of every host veth on the routed datapath (locally administered,
/// unicast); the pods' gateway neighbour entries point at it.
pub const HOST_VETH_MAC: Mac = Mac([0xee; 6]);

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The MAC address of a pod's interface on the routed datapath, derived from its IPv4
/// address as the CNI bridge plugin does (`0a:58:` and the four bytes), so the node's
/// permanent neighbour entry for the pod is known before the pod exists.
pub fn pod_mac(v4: Ipv4Addr) -> Mac {
    let o = v4.octets();
    Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// The gateway of `family_of` on the routed datapath (the family of the given address).
pub fn gateway_for(family_of: IpAddr) -> IpAddr {
    match family_of {
        IpAddr::V4(_) => IpAddr::V4(GATEWAY_V4),
        IpAddr::V6(_) => IpAddr::V6(GATEWAY_V6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_round_trip_and_others_are_refused() {
        for d in [Datapath::Bridge, Datapath::Routed] {
            assert_eq!(Datapath::parse(d.as_str()), Some(d));
        }
        assert_eq!(Datapath::parse("Routed"), None);
        assert_eq!(Datapath::parse(""), None);
        assert_eq!(Datapath::default(), Datapath::Bridge);
    }

    #[test]
    fn pod_macs_are_unicast_locally_administered_and_carry_the_address() {
        let mac = pod_mac(Ipv4Addr::new(10, 222, 3, 7));
        assert_eq!(mac.to_string(), "0a:58:0a:de:03:07");
        assert_eq!(mac.0[0] & 0x01, 0, "unicast");
        assert_eq!(mac.0[0] & 0x02, 0x02, "locally administered");
        assert_eq!(HOST_VETH_MAC.to_string(), "ee:ee:ee:ee:ee:ee");
        assert_eq!(HOST_VETH_MAC.0[0] & 0x03, 0x02);
        assert_eq!(
            gateway_for("fd00::5".parse().unwrap()).to_string(),
            "fe80::1"
        );
        assert_eq!(
            gateway_for("10.0.0.5".parse().unwrap()).to_string(),
            "169.254.1.1"
        );
    }
}
