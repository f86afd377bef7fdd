//! Host ports in nftables, as pure data and text: the daemon's one table, the map elements
//! of each pod, the transactions that change them, and the comparison of an observed table
//! with the records (for `check`).
//!
//! Nothing here touches the kernel; [`crate::system::Firewall`] applies what is built here.
//! The generated text is golden-tested (`tests/golden/*.nft`), and a privileged test checks
//! that `nft -t list table inet netns_holder` prints [`render_base`] back verbatim.
//!
//! # The table
//!
//! One table, `inet netns_holder`, owned by the daemon. Its chains and rules never change
//! while the daemon runs (they depend only on the configuration), so they are created once,
//! at start or on `reload`, in one transaction that atomically replaces the whole table.
//! Per-pod changes only add or delete elements of four maps, keyed on
//! (node address, protocol, port) or, for a port published on every address, (protocol,
//! port), each mapping to (pod address, pod port):
//!
//! | map | key | value |
//! |---|---|---|
//! | `hostport_v4` | `ipv4_addr . inet_proto . inet_service` | `ipv4_addr . inet_service` |
//! | `hostport_any_v4` | `inet_proto . inet_service` | `ipv4_addr . inet_service` |
//! | `hostport_v6` | `ipv6_addr . inet_proto . inet_service` | `ipv6_addr . inet_service` |
//! | `hostport_any_v6` | `inet_proto . inet_service` | `ipv6_addr . inet_service` |
//!
//! They are hash maps: the per-packet lookup (done once per new connection, in the NAT
//! chains) and each element update cost the same with 1 or 10 000 published ports.
//!
//! The rules (see [`render_base`] for the text):
//! * `prerouting` and `output` (NAT, dstnat priority): traffic to a local address
//!   (`fib daddr type local`) goes through `hostports`, which looks the connection up in the
//!   address-specific map, then in the wildcard map of its family, DNATs it to the pod and
//!   marks the connection with [`HOSTPORT_CT_MARK`]. `output` makes the node itself reach
//!   its host ports, on 127.0.0.1 too (IPv6 `::1` cannot be forwarded and is excluded).
//! * `postrouting` (NAT, srcnat): marked connections are masqueraded when their source is
//!   127.0.0.0/8 (the node via localhost; with `route_localnet` on the bridge) or an address
//!   of this node's own pod CIDRs (a pod reaching a host port of this node: its own, the
//!   hairpin case, or another local pod's, whose reply would otherwise go straight back over
//!   the bridge and miss the reverse NAT). Nothing else is masqueraded: traffic from other
//!   hosts or from other nodes' pods keeps its source address, and pod-to-pod traffic
//!   (local or across nodes) never meets a NAT rule at all.
//! * `postrouting` then jumps to `egress` (unless `masquerade = false`): a packet from an
//!   address of this node's pod CIDRs to a destination outside the interval set
//!   `egress_exempt_v4`/`_v6` (the cluster's pod networks, see [`crate::egress`]) is
//!   masqueraded behind the node's address. A host port connection was already masqueraded
//!   (or deliberately not) in `hostport_masquerade`, whose `masquerade` ends the chain, so
//!   nothing is NATed twice; the rule names no interface, so it holds for any datapath.
//! * `guard` (filter, raw priority): drops packets from the pods' bridge to 127.0.0.0/8,
//!   which `route_localnet` would otherwise let pods send to the node's localhost services.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::datapath::Datapath;
use crate::egress::{self, EgressExempt};
use crate::finding::{Finding, Problem};
use crate::names::{IfName, PodName};
use crate::ports::{Family, PortMapping, Protocol};

/// The table's family.
pub const TABLE_FAMILY: &str = "inet";
/// The table's name.
pub const TABLE_NAME: &str = "netns_holder";
/// The conntrack mark bit set on connections DNATed to a host port.
pub const HOSTPORT_CT_MARK: u32 = 0x2000_0000;
/// The table's comment.
pub const TABLE_COMMENT: &str =
    "netns-holder host ports; managed by the daemon, restored by netns-holder reload";

/// `inet netns_holder`, for messages.
pub fn table_object() -> String {
    format!("nftables table {TABLE_FAMILY} {TABLE_NAME}")
}

/// One of the four host port maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostPortMap {
    /// IPv4, keyed by node address.
    V4,
    /// IPv4, every node address.
    AnyV4,
    /// IPv6, keyed by node address.
    V6,
    /// IPv6, every node address.
    AnyV6,
}

impl HostPortMap {
    /// Every map, in table order.
    pub const ALL: [Self; 4] = [Self::V4, Self::AnyV4, Self::V6, Self::AnyV6];

    /// The map's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "hostport_v4",
            Self::AnyV4 => "hostport_any_v4",
            Self::V6 => "hostport_v6",
            Self::AnyV6 => "hostport_any_v6",
        }
    }

    /// The map named `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The address family of its values.
    pub fn family(self) -> Family {
        match self {
            Self::V4 | Self::AnyV4 => Family::V4,
            Self::V6 | Self::AnyV6 => Family::V6,
        }
    }

    /// Whether its keys carry a node address.
    pub fn keyed_by_address(self) -> bool {
        matches!(self, Self::V4 | Self::V6)
    }

    fn type_line(self) -> &'static str {
        match self {
            Self::V4 => "ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
            Self::AnyV4 => "inet_proto . inet_service : ipv4_addr . inet_service",
            Self::V6 => "ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service",
            Self::AnyV6 => "inet_proto . inet_service : ipv6_addr . inet_service",
        }
    }
}

/// One element of a host port map: (node address or every address, protocol, port) →
/// (pod address, pod port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostPortElement {
    /// The map it belongs in.
    pub map: HostPortMap,
    /// The node address (only for the address-keyed maps).
    pub host_ip: Option<IpAddr>,
    /// The protocol.
    pub protocol: Protocol,
    /// The node port.
    pub host_port: u16,
    /// The pod address (of the map's family).
    pub pod_ip: IpAddr,
    /// The pod port.
    pub pod_port: u16,
}

impl HostPortElement {
    /// The key as nft writes it: `10.0.0.1 . tcp . 8080` or `tcp . 8080`.
    pub fn key_text(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip} . {} . {}", self.protocol, self.host_port),
            None => format!("{} . {}", self.protocol, self.host_port),
        }
    }

    /// The element as nft writes it: `KEY : POD_IP . POD_PORT`.
    pub fn text(&self) -> String {
        format!("{} : {} . {}", self.key_text(), self.pod_ip, self.pod_port)
    }

    /// The element's key: what makes it unique in its map.
    pub fn key(&self) -> (HostPortMap, Option<IpAddr>, Protocol, u16) {
        (self.map, self.host_ip, self.protocol, self.host_port)
    }

    /// `element { ... } of map hostport_v4`, naming it in findings and errors.
    pub fn object(&self) -> String {
        format!("element {{ {} }} of map {}", self.text(), self.map.name())
    }
}

impl fmt::Display for HostPortElement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {}", self.text(), self.map.name())
    }
}

/// Why a pod's mappings cannot become map elements.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ElementError {
    /// A mapping is bound to an address of a family the pod has no address of.
    #[error("host port {mapping}: the pod has no {} address to forward it to", family.name())]
    NoPodAddress {
        /// The mapping.
        mapping: PortMapping,
        /// Its family.
        family: Family,
    },
    /// A mapping on every address, but the pod has no address at all.
    #[error("host port {mapping}: the pod has no address")]
    NoAddress {
        /// The mapping.
        mapping: PortMapping,
    },
}

/// The map elements of a pod with addresses `pod_ips` publishing `ports`, in the order of
/// `ports` (IPv4 before IPv6 for a mapping on every address).
pub fn elements_for(
    ports: &[PortMapping],
    pod_ips: &[IpAddr],
) -> Result<Vec<HostPortElement>, ElementError> {
    let pod_ip = |family: Family| pod_ips.iter().copied().find(|ip| Family::of(*ip) == family);
    let mut out = Vec::with_capacity(ports.len() * 2);
    for mapping in ports {
        let mut push = |map: HostPortMap, host_ip: Option<IpAddr>, pod_ip: IpAddr| {
            out.push(HostPortElement {
                map,
                host_ip,
                protocol: mapping.protocol,
                host_port: mapping.host_port,
                pod_ip,
                pod_port: mapping.container_port,
            })
        };
        match mapping.host_ip {
            None => {
                let mut any = false;
                for (family, map) in [
                    (Family::V4, HostPortMap::AnyV4),
                    (Family::V6, HostPortMap::AnyV6),
                ] {
                    if let Some(ip) = pod_ip(family) {
                        push(map, None, ip);
                        any = true;
                    }
                }
                if !any {
                    return Err(ElementError::NoAddress { mapping: *mapping });
                }
            }
            Some(host) => {
                let family = Family::of(host);
                let ip = pod_ip(family).ok_or(ElementError::NoPodAddress {
                    mapping: *mapping,
                    family,
                })?;
                let (map, key) = match (family, host.is_unspecified()) {
                    (Family::V4, true) => (HostPortMap::AnyV4, None),
                    (Family::V4, false) => (HostPortMap::V4, Some(host)),
                    (Family::V6, true) => (HostPortMap::AnyV6, None),
                    (Family::V6, false) => (HostPortMap::V6, Some(host)),
                };
                push(map, key, ip);
            }
        }
    }
    Ok(out)
}

/// What the base table depends on: the configuration's bridge, pod CIDRs and `masquerade`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirewallBase {
    /// The pods' bridge (the localhost guard's input interface).
    pub bridge: IfName,
    /// This node's IPv4 pod CIDR.
    pub pod_cidr_v4: Ipv4Net,
    /// This node's IPv6 pod CIDR, if dual-stack.
    pub pod_cidr_v6: Option<Ipv6Net>,
    /// Whether pods' traffic to non-exempt destinations is masqueraded (the `egress` chain).
    pub masquerade: bool,
    /// The datapath: pods' packets come in on the bridge, or (routed) on their host veths
    /// (`iifname "nh*"` in the localhost guard).
    pub datapath: Datapath,
}

impl FirewallBase {
    /// The `iifname` match of the pods' packets: the bridge, or the host veth prefix.
    fn pod_iifname(&self) -> String {
        match self.datapath {
            Datapath::Bridge => self.bridge.to_string(),
            Datapath::Routed => format!("{}*", crate::names::HOST_VETH_PREFIX),
        }
    }
}

impl FirewallBase {
    /// This node's pod CIDRs, IPv4 first.
    pub fn pod_cidrs(&self) -> Vec<ipnet::IpNet> {
        let mut out = vec![ipnet::IpNet::V4(self.pod_cidr_v4)];
        out.extend(self.pod_cidr_v6.map(ipnet::IpNet::V6));
        out
    }
}

/// The whole table: the base, every element and the egress exemptions, what `reload`
/// installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirewallTable {
    /// The base.
    pub base: FirewallBase,
    /// Every element of every pod.
    pub elements: Vec<HostPortElement>,
    /// The elements of the egress exemption sets.
    pub egress_exempt: EgressExempt,
}

/// The base table (chains, rules, empty maps) exactly as `nft -t list table` prints it.
pub fn render_base(base: &FirewallBase) -> String {
    let mark = format!("0x{HOSTPORT_CT_MARK:08x}");
    let mut t = String::new();
    let _ = writeln!(t, "table {TABLE_FAMILY} {TABLE_NAME} {{");
    let _ = writeln!(t, "\tcomment \"{TABLE_COMMENT}\"");
    for map in HostPortMap::ALL {
        let _ = writeln!(t, "\tmap {} {{", map.name());
        let _ = writeln!(t, "\t\ttype {}", map.type_line());
        let _ = writeln!(t, "\t}}\n");
    }
    egress::render_sets(&mut t);
    let chain = |t: &mut String, name: &str, hook: &str, rules: &[String]| {
        let _ = writeln!(t, "\tchain {name} {{");
        if !hook.is_empty() {
            let _ = writeln!(t, "\t\t{hook}");
        }
        for rule in rules {
            let _ = writeln!(t, "\t\t{rule}");
        }
        let _ = writeln!(t, "\t}}");
    };
    chain(
        &mut t,
        "guard",
        "type filter hook prerouting priority raw; policy accept;",
        &[format!(
            "iifname \"{}\" ip daddr 127.0.0.0/8 drop",
            base.pod_iifname()
        )],
    );
    t.push('\n');
    chain(
        &mut t,
        "prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
        &["fib daddr type local jump hostports".to_string()],
    );
    t.push('\n');
    chain(
        &mut t,
        "output",
        "type nat hook output priority -100; policy accept;",
        &["fib daddr type local jump hostports".to_string()],
    );
    t.push('\n');
    let set_mark = format!("ct mark set ct mark | {mark}");
    chain(
        &mut t,
        "hostports",
        "",
        &[
            format!("ip daddr . meta l4proto . th dport @hostport_v4 {set_mark}"),
            "dnat ip to ip daddr . meta l4proto . th dport map @hostport_v4".to_string(),
            format!("meta nfproto ipv4 meta l4proto . th dport @hostport_any_v4 {set_mark}"),
            "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostport_any_v4".to_string(),
            format!("ip6 daddr . meta l4proto . th dport @hostport_v6 {set_mark}"),
            "dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostport_v6".to_string(),
            format!("ip6 daddr != ::1 meta l4proto . th dport @hostport_any_v6 {set_mark}"),
            "ip6 daddr != ::1 dnat ip6 to meta l4proto . th dport map @hostport_any_v6".to_string(),
        ],
    );
    t.push('\n');
    let mut postrouting = vec![format!(
        "ct mark & {mark} == {mark} jump hostport_masquerade"
    )];
    if base.masquerade {
        postrouting.push(format!("jump {}", egress::CHAIN));
    }
    chain(
        &mut t,
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
        &postrouting,
    );
    t.push('\n');
    let mut masquerade = vec![
        "ip saddr 127.0.0.0/8 masquerade".to_string(),
        format!("ip saddr {} masquerade", base.pod_cidr_v4),
    ];
    if let Some(v6) = base.pod_cidr_v6 {
        masquerade.push(format!("ip6 saddr {v6} masquerade"));
    }
    chain(&mut t, "hostport_masquerade", "", &masquerade);
    if base.masquerade {
        t.push('\n');
        chain(
            &mut t,
            egress::CHAIN,
            "",
            &egress::rules(base.pod_cidr_v4, base.pod_cidr_v6),
        );
    }
    t.push_str("}\n");
    t
}

/// `add element` (or `delete element`, keys only) commands for `elements`, one per map,
/// in map order.
fn element_commands(verb: &str, elements: &[HostPortElement], with_values: bool) -> String {
    let mut by_map: BTreeMap<HostPortMap, Vec<&HostPortElement>> = BTreeMap::new();
    for e in elements {
        by_map.entry(e.map).or_default().push(e);
    }
    let mut t = String::new();
    for (map, elements) in by_map {
        let items: Vec<String> = elements
            .iter()
            .map(|e| if with_values { e.text() } else { e.key_text() })
            .collect();
        let _ = writeln!(
            t,
            "{verb} element {TABLE_FAMILY} {TABLE_NAME} {} {{ {} }}",
            map.name(),
            items.join(", ")
        );
    }
    t
}

/// The transaction that publishes `elements` (one pod's create), as `nft -f` input. The
/// kernel applies it atomically: every element or none (an existing key fails it).
pub fn render_add(elements: &[HostPortElement]) -> String {
    element_commands("add", elements, true)
}

/// The transaction that withdraws `elements` (one pod's removal), as `nft -f` input.
pub fn render_delete(elements: &[HostPortElement]) -> String {
    element_commands("delete", elements, false)
}

/// The transaction that atomically replaces the whole table with `table` (start, `reload`,
/// repair): create it if missing, delete it, define it anew with every element. There is
/// no instant without the table, and nothing outside it is touched.
pub fn render_replace(table: &FirewallTable) -> String {
    let mut t =
        format!("table {TABLE_FAMILY} {TABLE_NAME}\ndelete table {TABLE_FAMILY} {TABLE_NAME}\n");
    t.push_str(&render_base(&table.base));
    t.push_str(&render_add(&table.elements));
    t.push_str(&egress::render_elements(&table.egress_exempt));
    t
}

/// What `check` saw of the table.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedTable {
    /// The terse listing (`nft -t list table`: no elements), one entry per non-empty line,
    /// trimmed.
    pub lines: Vec<String>,
    /// The elements of our four maps.
    pub elements: Vec<HostPortElement>,
    /// Elements (or maps) that do not parse as ours, as text.
    pub unparsed: Vec<String>,
    /// The elements of the egress exemption sets, as listed.
    pub egress_exempt: EgressExempt,
}

fn significant_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// The significant lines of the base (what a listing must show).
pub fn expected_lines(base: &FirewallBase) -> Vec<String> {
    significant_lines(&render_base(base))
}

/// Parses a terse listing into [`ObservedTable::lines`].
pub fn listing_lines(listing: &str) -> Vec<String> {
    significant_lines(listing)
}

/// Drift between the table and the records: the table missing (the daemon creates it at
/// start, so a missing table is always drift, e.g. after `nft flush ruleset`), rules missing
/// or foreign, elements missing (per pod) or foreign, egress exemptions missing or foreign
/// (see [`egress::check_exempt`]). `pods` are the records' elements, `exempt` what the
/// egress sets must hold.
pub fn check_table(
    base: &FirewallBase,
    pods: &[(PodName, Vec<HostPortElement>)],
    exempt: &EgressExempt,
    observed: Option<&ObservedTable>,
) -> Vec<Finding> {
    let table = table_object();
    let Some(observed) = observed else {
        return vec![Finding {
            pod: None,
            object: table,
            problem: Problem::Missing,
        }];
    };
    let mut findings = Vec::new();
    // Multiset difference of the lines, both ways, reported in listing order.
    let expected = expected_lines(base);
    let mut balance: BTreeMap<&str, i64> = BTreeMap::new();
    for line in &expected {
        *balance.entry(line).or_default() += 1;
    }
    for line in &observed.lines {
        *balance.entry(line).or_default() -= 1;
    }
    let mut line_finding = |line: &str, problem| {
        findings.push(Finding {
            pod: None,
            object: format!("{table}: `{line}`"),
            problem,
        })
    };
    for line in &expected {
        if let Some(n) = balance.get_mut(line.as_str())
            && *n > 0
        {
            *n -= 1;
            line_finding(line, Problem::Missing);
        }
    }
    for line in &observed.lines {
        if let Some(n) = balance.get_mut(line.as_str())
            && *n < 0
        {
            *n += 1;
            line_finding(line, Problem::Foreign);
        }
    }
    let mut wanted: BTreeMap<HostPortElement, &PodName> = BTreeMap::new();
    for (pod, elements) in pods {
        for e in elements {
            wanted.insert(*e, pod);
        }
    }
    let present: std::collections::BTreeSet<&HostPortElement> = observed.elements.iter().collect();
    for (e, pod) in &wanted {
        if !present.contains(e) {
            findings.push(Finding {
                pod: Some((*pod).clone()),
                object: e.object(),
                problem: Problem::Missing,
            });
        }
    }
    for e in &observed.elements {
        if !wanted.contains_key(e) {
            findings.push(Finding {
                pod: None,
                object: e.object(),
                problem: Problem::Foreign,
            });
        }
    }
    for text in &observed.unparsed {
        findings.push(Finding {
            pod: None,
            object: format!("{table}: {text}"),
            problem: Problem::Foreign,
        });
    }
    findings.extend(egress::check_exempt(exempt, &observed.egress_exempt));
    findings
}

/// Parses the elements of our maps out of `nft -j list table inet netns_holder` output.
/// Returns the elements and the text of anything that is not a well-formed element of one of
/// our maps (reported as foreign by `check`).
pub fn parse_elements_json(json: &serde_json::Value) -> (Vec<HostPortElement>, Vec<String>) {
    let mut elements = Vec::new();
    let mut unparsed = Vec::new();
    let Some(items) = json.get("nftables").and_then(|v| v.as_array()) else {
        unparsed.push(format!("unreadable listing: {json}"));
        return (elements, unparsed);
    };
    for item in items {
        let Some(map) = item.get("map") else { continue };
        let name = map.get("name").and_then(|n| n.as_str()).unwrap_or("");
        let Some(kind) = HostPortMap::from_name(name) else {
            // Maps of other names are foreign objects; the line comparison reports them.
            continue;
        };
        for elem in map
            .get("elem")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            match parse_element(kind, elem) {
                Some(e) => elements.push(e),
                None => unparsed.push(format!("element {elem} of map {name}")),
            }
        }
    }
    (elements, unparsed)
}

fn concat(value: &serde_json::Value) -> Option<&Vec<serde_json::Value>> {
    value.get("concat")?.as_array()
}

fn port(value: &serde_json::Value) -> Option<u16> {
    value.as_u64().and_then(|p| u16::try_from(p).ok())
}

fn protocol(value: &serde_json::Value) -> Option<Protocol> {
    match value.as_str()? {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        "sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn address(value: &serde_json::Value, family: Family) -> Option<IpAddr> {
    let ip: IpAddr = value.as_str()?.parse().ok()?;
    (Family::of(ip) == family).then_some(ip)
}

fn parse_element(map: HostPortMap, elem: &serde_json::Value) -> Option<HostPortElement> {
    let pair = elem.as_array()?;
    let [key, value] = pair.as_slice() else {
        return None;
    };
    let key = concat(key)?;
    let value = concat(value)?;
    let family = map.family();
    let (host_ip, protocol, host_port) = if map.keyed_by_address() {
        let [ip, proto, p] = key.as_slice() else {
            return None;
        };
        (Some(address(ip, family)?), protocol(proto)?, port(p)?)
    } else {
        let [proto, p] = key.as_slice() else {
            return None;
        };
        (None, protocol(proto)?, port(p)?)
    };
    let [pod_ip, pod_port] = value.as_slice() else {
        return None;
    };
    Some(HostPortElement {
        map,
        host_ip,
        protocol,
        host_port,
        pod_ip: address(pod_ip, family)?,
        pod_port: port(pod_port)?,
    })
}

/// A socket on the node that holds a port (a TCP listener or a bound, unconnected UDP
/// socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The protocol.
    pub protocol: Protocol,
    /// The bound address (unspecified for a wildcard bind).
    pub address: IpAddr,
    /// The port.
    pub port: u16,
    /// Who holds it, e.g. `pid 123 (nginx)`, if it could be found.
    pub owner: Option<String>,
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.protocol {
            Protocol::Tcp => "a listening TCP socket",
            Protocol::Udp => "a bound UDP socket",
            Protocol::Sctp => "a listening SCTP socket",
        };
        match self.address {
            IpAddr::V4(a) => write!(f, "{kind} on {a}:{}", self.port)?,
            IpAddr::V6(a) => write!(f, "{kind} on [{a}]:{}", self.port)?,
        }
        if let Some(owner) = &self.owner {
            write!(f, " of {owner}")?;
        }
        Ok(())
    }
}

/// UDP conntrack entries to delete so that the next datagram is NATed afresh: entries whose
/// reply comes from a pod address (flows to the pod, DNATed or not), and entries to a host
/// port (flows that reached the node itself before the port was published).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case", tag = "match")]
pub enum ConntrackFlush {
    /// UDP entries whose reply source is `address`.
    ReplySource {
        /// The pod address.
        address: IpAddr,
    },
    /// UDP entries of `family` whose original destination port is `port`.
    DestinationPort {
        /// The family.
        family: Family,
        /// The host port.
        port: u16,
    },
}

impl fmt::Display for ConntrackFlush {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReplySource { address } => write!(f, "udp entries from pod address {address}"),
            Self::DestinationPort { family, port } => {
                write!(f, "{} udp entries to port {port}", family.name())
            }
        }
    }
}

/// The conntrack flushes a pod with `elements` needs: nothing without UDP elements, else its
/// addresses and the UDP host ports, in each family concerned.
pub fn conntrack_flushes(elements: &[HostPortElement]) -> Vec<ConntrackFlush> {
    let mut out: Vec<ConntrackFlush> = Vec::new();
    for e in elements.iter().filter(|e| e.protocol == Protocol::Udp) {
        out.push(ConntrackFlush::ReplySource { address: e.pod_ip });
        out.push(ConntrackFlush::DestinationPort {
            family: e.map.family(),
            port: e.host_port,
        });
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests;
