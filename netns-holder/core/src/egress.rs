//! Egress masquerade: which destinations a pod reaches under its own address, as pure data.
//!
//! Traffic from a pod to a destination outside the cluster's pod networks leaves
//! masqueraded behind the node's address (the outside world has no route back to pod
//! CIDRs); traffic between pods (on this node and across nodes) and from nodes to pods
//! keeps its addresses, as the network model requires. "The cluster's pod networks" are the
//! *exempt* destinations, kept as two interval sets of the daemon's nftables table
//! ([`SET_V4`], [`SET_V6`]):
//!
//! * this node's own pod CIDR(s);
//! * every peer's pod CIDR, whatever its source (configuration, API, a cluster backend);
//! * the configured `no_masquerade_cidrs` (more destinations reached without NAT, as
//!   ip-masq-agent's `nonMasqueradeCIDRs`), and whatever else
//!   [`crate::config::Config::egress_extra_exempt`] adds (a cluster's `cluster_cidr_*`).
//!
//! The rule matching them (see [`crate::firewall::render_base`]) depends on the source only
//! (an address of this node's pod CIDRs) and on the sets, never on an interface: it works
//! the same for a bridge or a routed datapath. When peers come and go only the set elements
//! change, in one `nft` transaction ([`render_sync`]), without rebuilding the table or
//! touching the host port maps.
//!
//! The exempt list is kept normalized ([`EgressExempt::new`]: overlapping and adjacent
//! prefixes aggregated, sorted), because an nftables interval set refuses overlapping
//! elements, and so that two lists compare equal exactly when they cover the same
//! addresses.

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use crate::finding::{Finding, Problem};

/// The interval set of exempt IPv4 destinations.
pub const SET_V4: &str = "egress_exempt_v4";
/// The interval set of exempt IPv6 destinations.
pub const SET_V6: &str = "egress_exempt_v6";
/// The chain holding the egress masquerade rules (jumped to from `postrouting`).
pub const CHAIN: &str = "egress";

/// The destinations reached without masquerade, per family, normalized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EgressExempt {
    /// IPv4 destinations, aggregated and sorted.
    pub v4: Vec<Ipv4Net>,
    /// IPv6 destinations, aggregated and sorted.
    pub v6: Vec<Ipv6Net>,
}

impl EgressExempt {
    /// The normalized list covering exactly `cidrs` (host bits are dropped; overlapping and
    /// adjacent prefixes merge).
    pub fn new(cidrs: impl IntoIterator<Item = IpNet>) -> Self {
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for cidr in cidrs {
            match cidr.trunc() {
                IpNet::V4(n) => v4.push(n),
                IpNet::V6(n) => v6.push(n),
            }
        }
        Self {
            v4: Ipv4Net::aggregate(&v4),
            v6: Ipv6Net::aggregate(&v6),
        }
    }

    /// Every exempt prefix, IPv4 first.
    pub fn cidrs(&self) -> Vec<IpNet> {
        self.v4
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(self.v6.iter().map(|n| IpNet::V6(*n)))
            .collect()
    }

    /// Whether nothing is exempt.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

impl fmt::Display for EgressExempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cidrs = self.cidrs();
        if cidrs.is_empty() {
            return f.write_str("nothing");
        }
        let texts: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
        f.write_str(&texts.join(", "))
    }
}

/// The exempt destinations of a node: its own pod CIDRs (`own`), every peer's pod CIDR
/// (`peers`, of every source) and the `extra` ones (`no_masquerade_cidrs`, a cluster's
/// CIDRs). The one function the manager computes the sets with.
pub fn exempt_cidrs(
    own: &[IpNet],
    peers: impl IntoIterator<Item = IpNet>,
    extra: &[IpNet],
) -> EgressExempt {
    EgressExempt::new(
        own.iter()
            .copied()
            .chain(peers)
            .chain(extra.iter().copied()),
    )
}

/// The set declarations of the base table, as `nft -t list table` prints them.
pub(crate) fn render_sets(t: &mut String) {
    for (name, kind) in [(SET_V4, "ipv4_addr"), (SET_V6, "ipv6_addr")] {
        let _ = writeln!(t, "\tset {name} {{");
        let _ = writeln!(t, "\t\ttype {kind}");
        let _ = writeln!(t, "\t\tflags interval");
        let _ = writeln!(t, "\t}}\n");
    }
}

/// The egress rules for a node with pod CIDRs `pod_cidr_v4` and `pod_cidr_v6`: a pod's
/// packet to a destination outside the exempt set is masqueraded.
pub(crate) fn rules(pod_cidr_v4: Ipv4Net, pod_cidr_v6: Option<Ipv6Net>) -> Vec<String> {
    let mut out = vec![format!(
        "ip saddr {pod_cidr_v4} ip daddr != @{SET_V4} masquerade"
    )];
    if let Some(v6) = pod_cidr_v6 {
        out.push(format!("ip6 saddr {v6} ip6 daddr != @{SET_V6} masquerade"));
    }
    out
}

/// `add element` commands filling the sets with `exempt` (nothing for an empty family).
pub(crate) fn render_elements(exempt: &EgressExempt) -> String {
    let mut t = String::new();
    let family = crate::firewall::TABLE_FAMILY;
    let table = crate::firewall::TABLE_NAME;
    let v4: Vec<String> = exempt.v4.iter().map(ToString::to_string).collect();
    let v6: Vec<String> = exempt.v6.iter().map(ToString::to_string).collect();
    for (set, items) in [(SET_V4, v4), (SET_V6, v6)] {
        if !items.is_empty() {
            let _ = writeln!(
                t,
                "add element {family} {table} {set} {{ {} }}",
                items.join(", ")
            );
        }
    }
    t
}

/// The transaction that makes the two sets hold exactly `exempt`: both flushed and filled
/// again in one `nft -f` run, which the kernel applies atomically (no packet sees a set in
/// between), touching nothing else of the table.
pub fn render_sync(exempt: &EgressExempt) -> String {
    let family = crate::firewall::TABLE_FAMILY;
    let table = crate::firewall::TABLE_NAME;
    let mut t = String::new();
    for set in [SET_V4, SET_V6] {
        let _ = writeln!(t, "flush set {family} {table} {set}");
    }
    t.push_str(&render_elements(exempt));
    t
}

/// `element { 10.1.0.0/24 } of set egress_exempt_v4`, naming an element in findings.
pub fn element_object(cidr: IpNet) -> String {
    let set = if cidr.addr().is_ipv4() {
        SET_V4
    } else {
        SET_V6
    };
    format!("element {{ {cidr} }} of set {set}")
}

/// Drift of the sets: wanted prefixes missing, prefixes present that are not wanted.
pub fn check_exempt(expected: &EgressExempt, observed: &EgressExempt) -> Vec<Finding> {
    let want: BTreeSet<IpNet> = expected.cidrs().into_iter().collect();
    let have: BTreeSet<IpNet> = observed.cidrs().into_iter().collect();
    let finding = |cidr: &IpNet, problem| Finding {
        pod: None,
        object: element_object(*cidr),
        problem,
    };
    want.difference(&have)
        .map(|c| finding(c, Problem::Missing))
        .chain(have.difference(&want).map(|c| finding(c, Problem::Foreign)))
        .collect()
}

/// The elements of our two sets in `nft -j list table` output, and the text of anything in
/// them that is not a prefix of the set's family (reported as foreign by `check`). The
/// observed prefixes are kept as listed (not aggregated), so a split or extra element shows.
pub fn parse_exempt_json(json: &serde_json::Value) -> (EgressExempt, Vec<String>) {
    let mut out = EgressExempt::default();
    let mut unparsed = Vec::new();
    let items = json
        .get("nftables")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten();
    for item in items {
        let Some(set) = item.get("set") else { continue };
        let name = set.get("name").and_then(|n| n.as_str()).unwrap_or("");
        if name != SET_V4 && name != SET_V6 {
            continue;
        }
        for elem in set
            .get("elem")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
        {
            match (name, parse_prefix(elem)) {
                (SET_V4, Some(IpNet::V4(n))) => out.v4.push(n),
                (SET_V6, Some(IpNet::V6(n))) => out.v6.push(n),
                _ => unparsed.push(format!("element {elem} of set {name}")),
            }
        }
    }
    out.v4.sort();
    out.v6.sort();
    (out, unparsed)
}

/// `"192.0.2.7"` (a single address) or `{"prefix": {"addr": "10.1.0.0", "len": 24}}`.
fn parse_prefix(elem: &serde_json::Value) -> Option<IpNet> {
    if let Some(text) = elem.as_str() {
        let ip: std::net::IpAddr = text.parse().ok()?;
        return Some(IpNet::from(ip));
    }
    let prefix = elem.get("prefix")?;
    let addr: std::net::IpAddr = prefix.get("addr")?.as_str()?.parse().ok()?;
    let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
    let net = IpNet::new(addr, len).ok()?;
    (net.trunc() == net).then_some(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn exempt_is_own_plus_peers_plus_extra_aggregated() {
        let own = nets(&["10.244.0.0/24", "fd00:a::/64"]);
        let peers = nets(&["10.244.1.0/24", "10.244.3.0/24", "fd00:b::/64"]);
        let extra = nets(&["192.0.2.0/24", "192.0.2.128/25", "198.51.100.7/32"]);
        let e = exempt_cidrs(&own, peers, &extra);
        assert_eq!(
            e.to_string(),
            // 10.244.0.0/24 and .1.0/24 merge; 192.0.2.128/25 lies inside 192.0.2.0/24.
            "10.244.0.0/23, 10.244.3.0/24, 192.0.2.0/24, 198.51.100.7/32, fd00:a::/64, fd00:b::/64"
        );
        assert_eq!(
            exempt_cidrs(&own[..1], [], &[]).cidrs(),
            nets(&["10.244.0.0/24"])
        );
        // Host bits are dropped, duplicates vanish.
        let e = EgressExempt::new(nets(&["10.9.0.5/16", "10.9.0.0/16"]));
        assert_eq!(e.v4, ["10.9.0.0/16".parse::<Ipv4Net>().unwrap()]);
        assert_eq!(EgressExempt::default().to_string(), "nothing");
    }

    #[test]
    fn sync_flushes_and_fills_both_sets_in_one_transaction() {
        let e = EgressExempt::new(nets(&["10.244.0.0/24", "10.1.0.0/16", "fd00:a::/64"]));
        assert_eq!(
            render_sync(&e),
            "flush set inet netns_holder egress_exempt_v4\n\
             flush set inet netns_holder egress_exempt_v6\n\
             add element inet netns_holder egress_exempt_v4 { 10.1.0.0/16, 10.244.0.0/24 }\n\
             add element inet netns_holder egress_exempt_v6 { fd00:a::/64 }\n"
        );
        let v4_only = EgressExempt::new(nets(&["10.244.0.0/24"]));
        assert!(!render_sync(&v4_only).contains("add element inet netns_holder egress_exempt_v6"));
    }

    #[test]
    fn rules_match_source_and_set_only() {
        assert_eq!(
            rules(
                "10.244.0.0/24".parse().unwrap(),
                Some("fd00:a::/64".parse().unwrap())
            ),
            [
                "ip saddr 10.244.0.0/24 ip daddr != @egress_exempt_v4 masquerade",
                "ip6 saddr fd00:a::/64 ip6 daddr != @egress_exempt_v6 masquerade",
            ]
        );
        assert_eq!(rules("10.244.0.0/24".parse().unwrap(), None).len(), 1);
    }

    #[test]
    fn drift_names_missing_and_foreign_elements() {
        let want = EgressExempt::new(nets(&["10.244.0.0/24", "10.1.0.0/16", "fd00:a::/64"]));
        let have = EgressExempt {
            v4: vec![
                "10.244.0.0/24".parse().unwrap(),
                "10.7.0.0/16".parse().unwrap(),
            ],
            v6: vec!["fd00:a::/64".parse().unwrap()],
        };
        let found: Vec<String> = check_exempt(&want, &have)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "element { 10.1.0.0/16 } of set egress_exempt_v4: missing",
                "element { 10.7.0.0/16 } of set egress_exempt_v4: foreign (not put there by netns-holder)",
            ]
        );
        assert!(check_exempt(&want, &want).is_empty());
    }

    #[test]
    fn parses_the_sets_of_an_nft_listing() {
        // As `nft -j list table` (nftables 1.0.6) prints them.
        let json: serde_json::Value = serde_json::from_str(
            r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"set": {"family": "inet", "name": "egress_exempt_v4", "table": "netns_holder",
              "type": "ipv4_addr", "flags": ["interval"],
              "elem": [{"prefix": {"addr": "10.1.0.0", "len": 24}}, "192.0.2.7",
                       {"range": ["10.5.0.1", "10.5.0.9"]}]}},
            {"set": {"family": "inet", "name": "egress_exempt_v6", "table": "netns_holder",
              "type": "ipv6_addr", "flags": ["interval"],
              "elem": [{"prefix": {"addr": "fd00::", "len": 64}}]}},
            {"set": {"family": "inet", "name": "other", "elem": ["10.0.0.1"]}},
            {"map": {"family": "inet", "name": "hostport_v4"}}]}"#,
        )
        .unwrap();
        let (exempt, unparsed) = parse_exempt_json(&json);
        assert_eq!(
            exempt.cidrs(),
            nets(&["10.1.0.0/24", "192.0.2.7/32", "fd00::/64"])
        );
        assert_eq!(unparsed.len(), 1, "{unparsed:?}");
        assert!(unparsed[0].contains("range"), "{unparsed:?}");
        let (empty, none) = parse_exempt_json(&serde_json::json!({"nftables": []}));
        assert!(empty.is_empty() && none.is_empty());
    }
}
