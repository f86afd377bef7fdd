//! Golden tests of the generated nftables text (`tests/golden/*.nft`) over a matrix of
//! configurations and port mappings, plus the element, check and JSON parsing logic.
//!
//! `UPDATE_GOLDEN=1 cargo test -p netns-holder-core --lib firewall` rewrites the files; review the
//! diff before committing it.

use std::net::IpAddr;
use std::path::PathBuf;

use super::*;
use crate::egress::EgressExempt;
use crate::ports::parse_publish_all;

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.nft"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the generated text (UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}

fn base_v4() -> FirewallBase {
    FirewallBase {
        bridge: IfName::new("nh0").unwrap(),
        pod_cidr_v4: "10.244.0.0/24".parse().unwrap(),
        pod_cidr_v6: None,
        masquerade: true,
        datapath: Default::default(),
    }
}

fn base_dual() -> FirewallBase {
    FirewallBase {
        bridge: IfName::new("br-pods").unwrap(),
        pod_cidr_v4: "10.88.0.0/16".parse().unwrap(),
        pod_cidr_v6: Some("fd00:88::/64".parse().unwrap()),
        masquerade: true,
        datapath: Default::default(),
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn elements(specs: &[&str], pod: &[&str]) -> Vec<HostPortElement> {
    elements_for(&parse_publish_all(specs).unwrap(), &ips(pod)).unwrap()
}

/// Every kind of mapping, on a dual-stack pod.
const MATRIX: &[&str] = &[
    "8080:80",
    "0.0.0.0:5353:53/udp",
    "[::]:9999:9999/sctp",
    "192.168.50.1:8443:443",
    "[fd99::1]:8443:443",
    "127.0.0.1:6000:6000/udp",
    "7000-7002:8000-8002/udp",
];

#[test]
fn base_tables() {
    golden("base_v4", &render_base(&base_v4()));
    golden("base_dual", &render_base(&base_dual()));
    golden(
        "base_dual_no_masquerade",
        &render_base(&FirewallBase {
            masquerade: false,
            datapath: Default::default(),
            ..base_dual()
        }),
    );
}

#[test]
fn egress_rules_come_after_the_host_port_masquerade_and_name_no_interface() {
    let text = render_base(&base_dual());
    let postrouting = text
        .split("chain postrouting {")
        .nth(1)
        .and_then(|rest| rest.split('}').next())
        .unwrap();
    let hostport = postrouting.find("jump hostport_masquerade").unwrap();
    let egress = postrouting.find("jump egress").unwrap();
    assert!(hostport < egress, "{postrouting}");
    let chain = text.split("chain egress {").nth(1).unwrap();
    assert!(
        !chain.contains("iifname") && !chain.contains("oifname"),
        "{chain}"
    );
    assert!(chain.contains("ip saddr 10.88.0.0/16 ip daddr != @egress_exempt_v4 masquerade"));
    assert!(chain.contains("ip6 saddr fd00:88::/64 ip6 daddr != @egress_exempt_v6 masquerade"));
    let off = render_base(&FirewallBase {
        masquerade: false,
        datapath: Default::default(),
        ..base_dual()
    });
    assert!(
        !off.contains("jump egress") && !off.contains("chain egress"),
        "{off}"
    );
    // The sets exist either way, so peers can be synced into them.
    assert!(off.contains("set egress_exempt_v4 {") && off.contains("set egress_exempt_v6 {"));
}

#[test]
fn pod_transactions() {
    let v4_only = elements(&["8080:80", "192.168.50.1:8443:443/tcp"], &["10.244.0.2"]);
    golden("add_v4_pod", &render_add(&v4_only));
    golden("delete_v4_pod", &render_delete(&v4_only));
    let dual = elements(MATRIX, &["10.88.0.5", "fd00:88::5"]);
    golden("add_dual_pod", &render_add(&dual));
    golden("delete_dual_pod", &render_delete(&dual));
}

#[test]
fn replace_transactions() {
    golden(
        "replace_empty_v4",
        &render_replace(&FirewallTable {
            base: base_v4(),
            elements: Vec::new(),
            egress_exempt: EgressExempt::new(base_v4().pod_cidrs()),
        }),
    );
    let mut all = elements(MATRIX, &["10.88.0.5", "fd00:88::5"]);
    all.extend(elements(&["8081:80", "53:53/udp"], &["10.88.0.6"]));
    golden(
        "replace_dual",
        &render_replace(&FirewallTable {
            base: base_dual(),
            elements: all,
            egress_exempt: EgressExempt::new(base_dual().pod_cidrs().into_iter().chain([
                "10.89.0.0/16".parse().unwrap(),
                "fd00:89::/64".parse().unwrap(),
            ])),
        }),
    );
}

#[test]
fn elements_follow_the_pod_families() {
    let e = elements(&["8080:80"], &["10.0.0.2", "fd00::2"]);
    assert_eq!(
        e.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "tcp . 8080 : 10.0.0.2 . 80 in hostport_any_v4",
            "tcp . 8080 : fd00::2 . 80 in hostport_any_v6"
        ]
    );
    let e = elements(&["8080:80"], &["10.0.0.2"]);
    assert_eq!(e.len(), 1);
    let e = elements(
        &["0.0.0.0:1:2", "[::]:3:4", "10.1.1.1:5:6"],
        &["10.0.0.2", "fd00::2"],
    );
    assert_eq!(
        e.iter().map(|e| e.map).collect::<Vec<_>>(),
        [HostPortMap::AnyV4, HostPortMap::AnyV6, HostPortMap::V4]
    );
    assert_eq!(e[2].key_text(), "10.1.1.1 . tcp . 5");
    let err = elements_for(
        &parse_publish_all(&["[fd00::1]:80:80"]).unwrap(),
        &ips(&["10.0.0.2"]),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "host port tcp [fd00::1]:80 -> 80: the pod has no ipv6 address to forward it to"
    );
    let err = elements_for(&parse_publish_all(&["80:80"]).unwrap(), &[]).unwrap_err();
    assert!(err.to_string().contains("no address"), "{err}");
}

#[test]
fn conntrack_flushes_only_for_udp() {
    assert!(conntrack_flushes(&elements(&["80:80", "81:81/sctp"], &["10.0.0.2"])).is_empty());
    let f = conntrack_flushes(&elements(
        &["53:53/udp", "54:54/udp", "80:80"],
        &["10.0.0.2", "fd00::2"],
    ));
    assert_eq!(
        f.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "udp entries from pod address 10.0.0.2",
            "udp entries from pod address fd00::2",
            "ipv4 udp entries to port 53",
            "ipv4 udp entries to port 54",
            "ipv6 udp entries to port 53",
            "ipv6 udp entries to port 54",
        ]
    );
}

fn observed(base: &FirewallBase, elements: &[HostPortElement]) -> ObservedTable {
    ObservedTable {
        lines: expected_lines(base),
        elements: elements.to_vec(),
        unparsed: Vec::new(),
        egress_exempt: EgressExempt::new(base.pod_cidrs()),
    }
}

fn pod(n: &str) -> PodName {
    PodName::new(n).unwrap()
}

#[test]
fn check_reports_missing_and_foreign() {
    let base = base_v4();
    let web = elements(&["8080:80"], &["10.244.0.2"]);
    let db = elements(&["5432:5432"], &["10.244.0.3"]);
    let pods = vec![(pod("web"), web.clone()), (pod("db"), db.clone())];
    let all: Vec<HostPortElement> = web.iter().chain(&db).copied().collect();
    let exempt = EgressExempt::new(base.pod_cidrs());
    assert!(check_table(&base, &pods, &exempt, Some(&observed(&base, &all))).is_empty());

    // The table is gone (nft flush ruleset).
    let f = check_table(&base, &pods, &exempt, None);
    assert_eq!(f.len(), 1);
    assert_eq!(
        f[0].to_string(),
        "nftables table inet netns_holder: missing"
    );

    // A rule deleted, a foreign rule added, an element missing, a foreign element.
    let mut o = observed(&base, &web);
    let guard = "iifname \"nh0\" ip daddr 127.0.0.0/8 drop";
    o.lines.retain(|l| l != guard);
    o.lines.insert(10, "tcp dport 22 accept".to_string());
    let stranger = HostPortElement {
        host_port: 9999,
        ..web[0]
    };
    o.elements.push(stranger);
    // And the egress set lost this node's own CIDR.
    o.egress_exempt = EgressExempt::default();
    let found: Vec<String> = check_table(&base, &pods, &exempt, Some(&o))
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        [
            format!("nftables table inet netns_holder: `{guard}`: missing"),
            "nftables table inet netns_holder: `tcp dport 22 accept`: foreign (not put there by netns-holder)".to_string(),
            "pod db: element { tcp . 5432 : 10.244.0.3 . 5432 } of map hostport_any_v4: missing".to_string(),
            "element { tcp . 9999 : 10.244.0.2 . 80 } of map hostport_any_v4: foreign (not put there by netns-holder)".to_string(),
            "element { 10.244.0.0/24 } of set egress_exempt_v4: missing".to_string(),
        ]
    );
}

#[test]
fn elements_parse_from_nft_json() {
    // As printed by `nft -j list table inet netns_holder` (nft 1.0.6), trimmed.
    let json: serde_json::Value = serde_json::from_str(
        r#"{"nftables": [
          {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
          {"table": {"family": "inet", "name": "netns_holder", "handle": 1}},
          {"map": {"family": "inet", "name": "hostport_v4", "table": "netns_holder",
                   "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 2,
                   "map": "ipv4_addr . inet_service",
                   "elem": [[{"concat": ["10.0.0.1", "tcp", 8080]}, {"concat": ["10.244.0.2", 80]}]]}},
          {"map": {"family": "inet", "name": "hostport_any_v6", "table": "netns_holder",
                   "type": ["inet_proto", "inet_service"], "handle": 10,
                   "map": "ipv6_addr . inet_service",
                   "elem": [[{"concat": ["sctp", 80]}, {"concat": ["fd00:10:244::2", 8080]}],
                            [{"concat": ["icmp", 80]}, {"concat": ["fd00::2", 1]}]]}},
          {"map": {"family": "inet", "name": "hostport_any_v4", "table": "netns_holder",
                   "type": ["inet_proto", "inet_service"], "handle": 3,
                   "map": "ipv4_addr . inet_service"}},
          {"chain": {"family": "inet", "table": "netns_holder", "name": "guard", "handle": 5}}
        ]}"#,
    )
    .unwrap();
    let (elements, unparsed) = parse_elements_json(&json);
    assert_eq!(
        elements.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            "10.0.0.1 . tcp . 8080 : 10.244.0.2 . 80 in hostport_v4",
            "sctp . 80 : fd00:10:244::2 . 8080 in hostport_any_v6",
        ]
    );
    assert_eq!(unparsed.len(), 1, "{unparsed:?}");
    assert!(unparsed[0].contains("icmp"), "{unparsed:?}");
}

#[test]
fn the_routed_guard_matches_every_host_veth_instead_of_the_bridge() {
    let bridge = render_base(&base_v4());
    let routed = render_base(&FirewallBase {
        datapath: crate::datapath::Datapath::Routed,
        ..base_v4()
    });
    assert!(bridge.contains("\t\tiifname \"nh0\" ip daddr 127.0.0.0/8 drop\n"));
    assert!(routed.contains("\t\tiifname \"nh*\" ip daddr 127.0.0.0/8 drop\n"));
    // Nothing else differs.
    assert_eq!(routed.replace("iifname \"nh*\"", "iifname \"nh0\""), bridge);
}
