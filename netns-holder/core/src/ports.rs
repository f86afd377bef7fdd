//! Host ports: the [`PortMapping`] type (a node port forwarded to a pod port), the parser of
//! the `--publish` syntax, validation of a pod's list, and the overlap rules that decide
//! whether two mappings (or a mapping and a listening socket) claim the same host port.
//!
//! Everything here is pure.
//!
//! # `--publish` syntax
//!
//! ```text
//! [HOSTIP:]HOSTPORT:PORT[/PROTO]
//! [HOSTIP:]HOSTPORT-HOSTPORT:PORT-PORT[/PROTO]      (a range; both sides the same length)
//! ```
//!
//! `PROTO` is `tcp` (the default), `udp` or `sctp`. An IPv6 `HOSTIP` is written in
//! brackets: `[fd00::1]:8080:80/udp`. Without `HOSTIP` the port is published on every
//! address of the node in each address family the pod has; `0.0.0.0` means every IPv4
//! address only, `::` every IPv6 address only; any other address publishes the port on that
//! one address only.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The most host ports one pod may publish (a range counts each port). Each port is a map
/// element per address family, so this bounds one transaction.
pub const MAX_PORTS_PER_POD: usize = 4096;

/// A transport protocol a host port can be published for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP (the default).
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The lowercase name (`tcp`, `udp`, `sctp`), as nftables and the JSON output spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    /// The IP protocol number (6, 17, 132).
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = PortSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "sctp" => Ok(Self::Sctp),
            other => Err(PortSpecError::BadProtocol {
                spec: String::new(),
                protocol: other.to_string(),
            }),
        }
    }
}

/// One published host port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The node address the port is published on; `None` for every address (see the
    /// module documentation for `0.0.0.0` and `::`).
    pub host_ip: Option<IpAddr>,
    /// The node port (1..=65535).
    pub host_port: u16,
    /// The pod port it forwards to (1..=65535).
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// `ipv4` or `ipv6`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }
}

impl PortMapping {
    /// A mapping on every node address.
    pub fn new(host_port: u16, container_port: u16, protocol: Protocol) -> Self {
        Self {
            host_ip: None,
            host_port,
            container_port,
            protocol,
        }
    }

    /// The same mapping bound to `ip`.
    pub fn on(self, ip: IpAddr) -> Self {
        Self {
            host_ip: Some(ip),
            ..self
        }
    }

    /// Whether the mapping covers `family` at all (`None` covers both).
    pub fn covers_family(&self, family: Family) -> bool {
        self.host_ip.is_none_or(|ip| Family::of(ip) == family)
    }

    /// The one node address this mapping is bound to, if it is not a wildcard of some kind.
    pub fn bound_address(&self) -> Option<IpAddr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }

    /// Whether traffic to `ip` (of its family) on this mapping's port is claimed by it.
    fn claims_address(&self, ip: IpAddr) -> bool {
        match self.host_ip {
            None => true,
            Some(h) if h.is_unspecified() => Family::of(h) == Family::of(ip),
            Some(h) => h == ip,
        }
    }

    /// Whether `self` and `other` claim at least one common (address, protocol, port).
    pub fn overlaps(&self, other: &PortMapping) -> bool {
        if self.protocol != other.protocol || self.host_port != other.host_port {
            return false;
        }
        match (self.host_ip, other.host_ip) {
            (None, _) | (_, None) => true,
            (Some(a), Some(b)) if Family::of(a) != Family::of(b) => false,
            (Some(a), Some(b)) => a.is_unspecified() || b.is_unspecified() || a == b,
        }
    }

    /// Whether a socket bound to `address`:`port` (`address` unspecified for a wildcard
    /// bind) would receive traffic this mapping claims, or the other way round. An IPv6
    /// wildcard socket is assumed to be dual-stack (no `IPV6_V6ONLY`), as is the default,
    /// so it also conflicts with IPv4 mappings.
    pub fn overlaps_socket(&self, protocol: Protocol, address: IpAddr, port: u16) -> bool {
        if self.protocol != protocol || self.host_port != port {
            return false;
        }
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
            v4 => v4,
        };
        if address.is_unspecified() {
            return match address {
                IpAddr::V4(_) => self.covers_family(Family::V4),
                // Dual-stack wildcard: every mapping on this port.
                IpAddr::V6(_) => true,
            };
        }
        self.claims_address(address)
    }
}

impl fmt::Display for PortMapping {
    /// `tcp 8080 -> 80`, `udp [fd00::1]:53 -> 5353`, `tcp 10.0.0.1:8080 -> 80`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.protocol)?;
        match self.host_ip {
            None => write!(f, "{}", self.host_port)?,
            Some(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.host_port)?,
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.host_port)?,
        }
        write!(f, " -> {}", self.container_port)
    }
}

/// Why a `--publish` spec or a pod's list of mappings was rejected. Every variant names the
/// spec (or mapping) and the offending part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PortSpecError {
    /// The spec does not have the `[HOSTIP:]HOSTPORT:PORT[/PROTO]` shape.
    #[error(
        "port spec {spec:?} is malformed: {reason} (expected [HOSTIP:]HOSTPORT:PORT[/tcp|udp|sctp])"
    )]
    Malformed {
        /// The spec.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A port is not a number in 1..=65535.
    #[error("port spec {spec:?}: {what} {value:?} is not a port number between 1 and 65535")]
    BadPort {
        /// The spec.
        spec: String,
        /// `host port` or `container port`.
        what: &'static str,
        /// The offending text.
        value: String,
    },
    /// A range runs backwards.
    #[error("port spec {spec:?}: {what} range {start}-{end} is reversed")]
    ReversedRange {
        /// The spec.
        spec: String,
        /// `host port` or `container port`.
        what: &'static str,
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
    /// The host and container ranges have different lengths.
    #[error(
        "port spec {spec:?}: the host range has {host} port(s) but the container range has {container}"
    )]
    RangeLengthMismatch {
        /// The spec.
        spec: String,
        /// Length of the host range.
        host: usize,
        /// Length of the container range.
        container: usize,
    },
    /// The protocol is not `tcp`, `udp` or `sctp`.
    #[error("port spec {spec:?}: protocol {protocol:?} is not tcp, udp or sctp")]
    BadProtocol {
        /// The spec.
        spec: String,
        /// The offending protocol.
        protocol: String,
    },
    /// The host IP is not an IP address (or an IPv6 address without brackets).
    #[error("port spec {spec:?}: host IP {ip:?} is {reason}")]
    BadHostIp {
        /// The spec.
        spec: String,
        /// The offending text.
        ip: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// Two mappings of one pod claim the same host port.
    #[error("host port {first} and {second} claim the same host port")]
    Duplicate {
        /// The first mapping.
        first: PortMapping,
        /// The one that overlaps it.
        second: PortMapping,
    },
    /// A port number of a mapping given as numbers (e.g. through the API) is out of range.
    #[error("{what} {value} is not a port number between 1 and 65535")]
    OutOfRange {
        /// `host port` or `container port`.
        what: &'static str,
        /// The value.
        value: u32,
    },
    /// Too many ports for one pod.
    #[error("{count} host ports requested; at most {MAX_PORTS_PER_POD} are allowed per pod")]
    TooMany {
        /// How many were requested.
        count: usize,
    },
}

fn malformed(spec: &str, reason: impl Into<String>) -> PortSpecError {
    PortSpecError::Malformed {
        spec: spec.to_string(),
        reason: reason.into(),
    }
}

/// Parses a port number (1..=65535) for `what` of `spec`.
fn parse_port(spec: &str, what: &'static str, text: &str) -> Result<u16, PortSpecError> {
    let bad = || PortSpecError::BadPort {
        spec: spec.to_string(),
        what,
        value: text.to_string(),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u32>() {
        Ok(n @ 1..=65535) => Ok(n as u16),
        _ => Err(bad()),
    }
}

/// Parses `P` or `P-Q` into an inclusive range.
fn parse_range(spec: &str, what: &'static str, text: &str) -> Result<(u16, u16), PortSpecError> {
    match text.split_once('-') {
        None => {
            let p = parse_port(spec, what, text)?;
            Ok((p, p))
        }
        Some((a, b)) => {
            let start = parse_port(spec, what, a)?;
            let end = parse_port(spec, what, b)?;
            if end < start {
                return Err(PortSpecError::ReversedRange {
                    spec: spec.to_string(),
                    what,
                    start,
                    end,
                });
            }
            Ok((start, end))
        }
    }
}

/// Parses one `--publish` spec into its mappings (one per port of a range), in port order.
pub fn parse_publish(spec: &str) -> Result<Vec<PortMapping>, PortSpecError> {
    if spec.is_empty() {
        return Err(malformed(spec, "it is empty"));
    }
    if spec.chars().any(char::is_whitespace) {
        return Err(malformed(spec, "it contains whitespace"));
    }
    let (rest, protocol) = match spec.rsplit_once('/') {
        Some((rest, proto)) => {
            let protocol = proto.parse().map_err(|_| PortSpecError::BadProtocol {
                spec: spec.to_string(),
                protocol: proto.to_string(),
            })?;
            (rest, protocol)
        }
        None => (spec, Protocol::Tcp),
    };
    // An IPv6 host IP in brackets.
    let (host_ip_text, ports) = if let Some(after) = rest.strip_prefix('[') {
        let (ip, tail) = after
            .split_once(']')
            .ok_or_else(|| malformed(spec, "'[' without a closing ']'"))?;
        let tail = tail
            .strip_prefix(':')
            .ok_or_else(|| malformed(spec, "expected ':' after the bracketed host IP"))?;
        (Some((ip, true)), tail)
    } else {
        match rest.matches(':').count() {
            1 => (None, rest),
            2 => {
                let (ip, tail) = rest.split_once(':').expect("two colons");
                (Some((ip, false)), tail)
            }
            0 => {
                return Err(malformed(
                    spec,
                    "no ':' between host port and container port",
                ));
            }
            _ => {
                return Err(PortSpecError::BadHostIp {
                    spec: spec.to_string(),
                    ip: rest.rsplitn(3, ':').last().unwrap_or_default().to_string(),
                    reason: "not valid here: write an IPv6 host IP in brackets, e.g. [fd00::1]:8080:80",
                });
            }
        }
    };
    let host_ip = match host_ip_text {
        None => None,
        Some((text, bracketed)) => {
            let bad = |reason| PortSpecError::BadHostIp {
                spec: spec.to_string(),
                ip: text.to_string(),
                reason,
            };
            if text.is_empty() {
                return Err(bad("empty"));
            }
            let ip: IpAddr = text.parse().map_err(|_| bad("not an IP address"))?;
            match (ip, bracketed) {
                (IpAddr::V4(_), true) => return Err(bad("an IPv4 address in brackets")),
                (IpAddr::V6(_), false) => return Err(bad("an IPv6 address without brackets")),
                _ => {}
            }
            if let Some(reason) = host_ip_problem(ip) {
                return Err(bad(reason));
            }
            Some(ip)
        }
    };
    let (host, container) = ports
        .split_once(':')
        .ok_or_else(|| malformed(spec, "no ':' between host port and container port"))?;
    let (h0, h1) = parse_range(spec, "host port", host)?;
    let (c0, c1) = parse_range(spec, "container port", container)?;
    let (hlen, clen) = (usize::from(h1 - h0) + 1, usize::from(c1 - c0) + 1);
    if hlen != clen {
        return Err(PortSpecError::RangeLengthMismatch {
            spec: spec.to_string(),
            host: hlen,
            container: clen,
        });
    }
    if hlen > MAX_PORTS_PER_POD {
        return Err(PortSpecError::TooMany { count: hlen });
    }
    Ok((0..hlen)
        .map(|i| PortMapping {
            host_ip,
            host_port: h0 + i as u16,
            container_port: c0 + i as u16,
            protocol,
        })
        .collect())
}

/// Parses every `--publish` spec and validates the resulting list ([`validate`]).
pub fn parse_publish_all<S: AsRef<str>>(specs: &[S]) -> Result<Vec<PortMapping>, PortSpecError> {
    let mut out = Vec::new();
    for spec in specs {
        out.extend(parse_publish(spec.as_ref())?);
    }
    validate(&out)?;
    Ok(out)
}

/// Checks one pod's list: at most [`MAX_PORTS_PER_POD`], no two mappings claiming the same
/// host port. Ports are `u16`, so they are in range once they are `PortMapping`s, except 0.
pub fn validate(ports: &[PortMapping]) -> Result<(), PortSpecError> {
    if ports.len() > MAX_PORTS_PER_POD {
        return Err(PortSpecError::TooMany { count: ports.len() });
    }
    for p in ports {
        if p.host_port == 0 {
            return Err(PortSpecError::OutOfRange {
                what: "host port",
                value: 0,
            });
        }
        if p.container_port == 0 {
            return Err(PortSpecError::OutOfRange {
                what: "container port",
                value: 0,
            });
        }
    }
    // Same (protocol, host port) is the only way to overlap: sort and compare neighbours
    // within each group, O(n log n) even for a full range.
    let mut sorted: Vec<&PortMapping> = ports.iter().collect();
    sorted.sort_by_key(|p| (p.protocol, p.host_port));
    for (i, a) in sorted.iter().enumerate() {
        for b in sorted[i + 1..]
            .iter()
            .take_while(|b| (b.protocol, b.host_port) == (a.protocol, a.host_port))
        {
            if a.overlaps(b) {
                return Err(PortSpecError::Duplicate {
                    first: **a,
                    second: **b,
                });
            }
        }
    }
    Ok(())
}

/// Why `ip` cannot be the host IP of a mapping, `None` if it can. The one rule for both
/// ways in: `--publish` specs ([`parse_publish`]) and the API's mappings ([`from_parts`]).
///
/// Refused: multicast and the IPv4 broadcast address (no socket of the node is ever
/// addressed by them, so the mapping could never match) and IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`, also `::ffff:0.0.0.0`): IPv4 traffic never arrives under them, and
/// the mapping would neither be the IPv4 mapping it looks like nor an IPv6 wildcard.
pub fn host_ip_problem(ip: IpAddr) -> Option<&'static str> {
    match ip {
        ip if ip.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address (give the IPv4 address itself)")
        }
        _ => None,
    }
}

/// A mapping from numbers as the API carries them (`host_ip` empty for every address),
/// range-checked, its host IP checked by the same rule as a `--publish` spec's
/// ([`host_ip_problem`]). A bad host IP is a [`PortSpecError::BadHostIp`] whose `spec` is
/// the mapping written as a `--publish` spec, e.g. `"224.0.0.1:80:80/tcp"`.
pub fn from_parts(
    host_ip: &str,
    host_port: u32,
    container_port: u32,
    protocol: Protocol,
) -> Result<PortMapping, PortSpecError> {
    let port = |what, value: u32| match value {
        1..=65535 => Ok(value as u16),
        _ => Err(PortSpecError::OutOfRange { what, value }),
    };
    let host_port = port("host port", host_port)?;
    let container_port = port("container port", container_port)?;
    let host_ip = if host_ip.is_empty() {
        None
    } else {
        let text = host_ip
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(host_ip);
        let bad = |reason| PortSpecError::BadHostIp {
            spec: format!("{host_ip}:{host_port}:{container_port}/{protocol}"),
            ip: host_ip.to_string(),
            reason,
        };
        let ip = text
            .parse::<IpAddr>()
            .map_err(|_| bad("not an IP address"))?;
        if let Some(reason) = host_ip_problem(ip) {
            return Err(bad(reason));
        }
        Some(ip)
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

/// The mappings in a canonical order (for comparing two lists as sets).
pub fn canonical(ports: &[PortMapping]) -> Vec<PortMapping> {
    let mut v = ports.to_vec();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn one(spec: &str) -> PortMapping {
        let v = parse_publish(spec).unwrap();
        assert_eq!(v.len(), 1, "{spec}");
        v[0]
    }

    #[test]
    fn simple_forms() {
        assert_eq!(one("8080:80"), PortMapping::new(8080, 80, Protocol::Tcp));
        assert_eq!(
            one("8080:80/tcp"),
            PortMapping::new(8080, 80, Protocol::Tcp)
        );
        assert_eq!(
            one("53:5353/udp"),
            PortMapping::new(53, 5353, Protocol::Udp)
        );
        assert_eq!(one("9:9/sctp"), PortMapping::new(9, 9, Protocol::Sctp));
        assert_eq!(
            one("10.0.0.1:8080:80"),
            PortMapping::new(8080, 80, Protocol::Tcp).on(ip("10.0.0.1"))
        );
        assert_eq!(
            one("[fd00::1]:8080:80/udp"),
            PortMapping::new(8080, 80, Protocol::Udp).on(ip("fd00::1"))
        );
        assert_eq!(
            one("0.0.0.0:1:65535"),
            PortMapping::new(1, 65535, Protocol::Tcp).on(ip("0.0.0.0"))
        );
        assert_eq!(
            one("[::]:80:80"),
            PortMapping::new(80, 80, Protocol::Tcp).on(ip("::"))
        );
    }

    #[test]
    fn ranges_expand_in_order() {
        let v = parse_publish("10.0.0.1:8000-8002:9000-9002/udp").unwrap();
        assert_eq!(
            v,
            (0..3)
                .map(|i| PortMapping::new(8000 + i, 9000 + i, Protocol::Udp).on(ip("10.0.0.1")))
                .collect::<Vec<_>>()
        );
        assert_eq!(parse_publish("7-7:8-8").unwrap().len(), 1);
    }

    fn err(spec: &str) -> PortSpecError {
        parse_publish(spec).expect_err(spec)
    }

    #[test]
    fn errors_name_the_spec_and_the_part() {
        let cases: &[(&str, &str)] = &[
            ("0:80", "host port \"0\" is not a port number"),
            ("80:0", "container port \"0\" is not a port number"),
            ("65536:80", "host port \"65536\""),
            ("80:65536", "container port \"65536\""),
            ("99999999999:80", "host port \"99999999999\""),
            ("-1:80", "host port \"\""),
            ("+80:80", "host port \"+80\""),
            ("8081-8080:80-81", "host port range 8081-8080 is reversed"),
            ("80-81:91-90", "container port range 91-90 is reversed"),
            (
                "80-82:90-91",
                "the host range has 3 port(s) but the container range has 2",
            ),
            ("80:90/icmp", "protocol \"icmp\" is not tcp, udp or sctp"),
            ("80:90/TCP", "protocol \"TCP\""),
            ("80:90/", "protocol \"\""),
            (
                "10.0.0.300:80:90",
                "host IP \"10.0.0.300\" is not an IP address",
            ),
            ("host:80:90", "host IP \"host\" is not an IP address"),
            (":80:90", "host IP \"\" is empty"),
            ("fd00::1:80:90", "write an IPv6 host IP in brackets"),
            ("[10.0.0.1]:80:90", "an IPv4 address in brackets"),
            ("[fd00::1:80:90", "'[' without a closing ']'"),
            ("[fd00::1]80:90", "expected ':' after the bracketed host IP"),
            ("[zz::1]:80:90", "host IP \"zz::1\" is not an IP address"),
            ("224.0.0.1:80:90", "a multicast address"),
            ("255.255.255.255:80:90", "the broadcast address"),
            ("[ff02::1]:80:90", "a multicast address"),
            ("[::ffff:10.0.0.1]:80:90", "an IPv4-mapped IPv6 address"),
            ("8080", "no ':' between host port and container port"),
            ("", "it is empty"),
            ("80 :90", "whitespace"),
        ];
        for (spec, part) in cases {
            let e = err(spec).to_string();
            assert!(e.contains(part), "{spec}: {e}");
            assert!(e.contains(&format!("{spec:?}")), "{spec}: {e}");
        }
    }

    #[test]
    fn duplicates_are_rejected() {
        for specs in [
            &["8080:80", "8080:81"][..],
            &["8080:80", "10.0.0.1:8080:81"],
            &["0.0.0.0:8080:80", "10.0.0.1:8080:81"],
            &["[::]:8080:80", "[fd00::1]:8080:81"],
            &["10.0.0.1:8080:80", "10.0.0.1:8080:80"],
            &["8000-8010:9000-9010", "8005:1"],
        ] {
            let e = parse_publish_all(specs).expect_err(&format!("{specs:?}"));
            assert!(
                matches!(e, PortSpecError::Duplicate { .. }),
                "{specs:?}: {e}"
            );
            assert!(e.to_string().contains("claim the same host port"), "{e}");
        }
        // Different protocol, different address, or different families do not overlap.
        for specs in [
            &["8080:80", "8080:80/udp"][..],
            &["10.0.0.1:8080:80", "10.0.0.2:8080:80"],
            &["0.0.0.0:8080:80", "[::]:8080:80"],
            &["0.0.0.0:8080:80", "[fd00::1]:8080:80"],
            &["8080:80/sctp", "8081:80/sctp"],
        ] {
            parse_publish_all(specs).unwrap_or_else(|e| panic!("{specs:?}: {e}"));
        }
    }

    #[test]
    fn too_many_ports() {
        let e = err("1-5000:1-5000");
        assert!(matches!(e, PortSpecError::TooMany { count: 5000 }), "{e}");
        let e = parse_publish_all(&["1-3000:1-3000", "3001-6000:3001-6000"]).unwrap_err();
        assert!(matches!(e, PortSpecError::TooMany { count: 6000 }), "{e}");
    }

    #[test]
    fn overlap_rules() {
        let any = PortMapping::new(80, 1, Protocol::Tcp);
        let v4any = any.on(ip("0.0.0.0"));
        let v6any = any.on(ip("::"));
        let a = any.on(ip("10.0.0.1"));
        let b = any.on(ip("10.0.0.2"));
        let c = any.on(ip("fd00::1"));
        for (x, y, expected) in [
            (any, a, true),
            (any, c, true),
            (v4any, a, true),
            (a, v4any, true),
            (v4any, c, false),
            (c, v4any, false),
            (v6any, c, true),
            (v4any, v6any, false),
            (a, b, false),
            (a, a, true),
            (any, PortMapping::new(81, 1, Protocol::Tcp), false),
            (any, PortMapping::new(80, 1, Protocol::Udp), false),
        ] {
            assert_eq!(x.overlaps(&y), expected, "{x} vs {y}");
        }
    }

    #[test]
    fn socket_overlap_rules() {
        let tcp = Protocol::Tcp;
        let any = PortMapping::new(80, 1, tcp);
        let a = any.on(ip("10.0.0.1"));
        let c = any.on(ip("fd00::1"));
        assert!(any.overlaps_socket(tcp, ip("127.0.0.1"), 80));
        assert!(any.overlaps_socket(tcp, ip("0.0.0.0"), 80));
        assert!(!any.overlaps_socket(tcp, ip("0.0.0.0"), 81));
        assert!(!any.overlaps_socket(Protocol::Udp, ip("0.0.0.0"), 80));
        assert!(a.overlaps_socket(tcp, ip("0.0.0.0"), 80));
        assert!(a.overlaps_socket(tcp, ip("::"), 80), "dual-stack wildcard");
        assert!(
            a.overlaps_socket(tcp, ip("::ffff:10.0.0.1"), 80),
            "v4-mapped"
        );
        assert!(!a.overlaps_socket(tcp, ip("10.0.0.2"), 80));
        assert!(!a.overlaps_socket(tcp, ip("127.0.0.1"), 80));
        assert!(!c.overlaps_socket(tcp, ip("0.0.0.0"), 80));
        assert!(c.overlaps_socket(tcp, ip("fd00::1"), 80));
    }

    #[test]
    fn display_and_json() {
        assert_eq!(one("8080:80").to_string(), "tcp 8080 -> 80");
        assert_eq!(
            one("[fd00::1]:53:5353/udp").to_string(),
            "udp [fd00::1]:53 -> 5353"
        );
        assert_eq!(
            serde_json::to_string(&one("10.0.0.1:8080:80/sctp")).unwrap(),
            r#"{"host_ip":"10.0.0.1","host_port":8080,"container_port":80,"protocol":"sctp"}"#
        );
        assert_eq!(
            serde_json::to_string(&one("8080:80")).unwrap(),
            r#"{"host_ip":null,"host_port":8080,"container_port":80,"protocol":"tcp"}"#
        );
    }

    #[test]
    fn from_parts_checks_ranges() {
        assert_eq!(
            from_parts("", 8080, 80, Protocol::Udp).unwrap(),
            PortMapping::new(8080, 80, Protocol::Udp)
        );
        assert_eq!(
            from_parts("[fd00::1]", 1, 2, Protocol::Tcp)
                .unwrap()
                .host_ip,
            Some(ip("fd00::1"))
        );
        assert!(matches!(
            from_parts("", 0, 80, Protocol::Tcp),
            Err(PortSpecError::OutOfRange {
                what: "host port",
                ..
            })
        ));
        assert!(matches!(
            from_parts("", 80, 65536, Protocol::Tcp),
            Err(PortSpecError::OutOfRange {
                what: "container port",
                value: 65536
            })
        ));
        assert!(from_parts("nope", 80, 80, Protocol::Tcp).is_err());
    }

    /// The API path refuses what `--publish` refuses, and its error names the mapping and
    /// the address.
    #[test]
    fn from_parts_checks_the_host_ip_like_publish() {
        // (as the API carries it, as `--publish` writes it, why it is refused)
        let cases: &[(&str, &str, &str)] = &[
            ("224.0.0.1", "224.0.0.1", "a multicast address"),
            (
                "255.255.255.255",
                "255.255.255.255",
                "the broadcast address",
            ),
            ("ff02::1", "[ff02::1]", "a multicast address"),
            (
                "::ffff:10.0.0.1",
                "[::ffff:10.0.0.1]",
                "an IPv4-mapped IPv6 address",
            ),
            (
                "::ffff:0.0.0.0",
                "[::ffff:0.0.0.0]",
                "an IPv4-mapped IPv6 address",
            ),
        ];
        for (api, cli, reason) in cases {
            let e = from_parts(api, 8080, 80, Protocol::Udp)
                .expect_err(api)
                .to_string();
            assert!(e.contains(reason), "{api}: {e}");
            assert!(e.contains(&format!("{api:?}")), "{api}: {e}");
            assert!(e.contains(&format!("{api}:8080:80/udp")), "{api}: {e}");
            // The CLI spelling of the same address is refused for the same reason.
            let spec = format!("{cli}:8080:80/udp");
            let refused = err(&spec).to_string();
            assert!(refused.contains(reason), "{spec}: {refused}");
        }
        // Unspecified addresses of either family, link-local and ordinary ones stay fine.
        for ok in [
            "0.0.0.0",
            "::",
            "[::]",
            "169.254.1.1",
            "fe80::1",
            "10.0.0.1",
            "fd00::1",
        ] {
            assert!(from_parts(ok, 8080, 80, Protocol::Tcp).is_ok(), "{ok}");
        }
    }
}
