//! Unit tests of the cluster module: carving, keys, claims, peers, the state file.

use super::*;

fn config(text: &str) -> Result<ClusterConfig, ClusterConfigError> {
    let raw: RawCluster = toml::from_str(text).expect("test TOML parses");
    raw.validate()
}

const BASE: &str = r#"
backend = "etcd"
etcd_endpoints = ["http://192.0.2.5:2379"]
cluster_cidr_v4 = "10.100.0.0/16"
"#;

fn base() -> ClusterConfig {
    config(BASE).unwrap()
}

#[test]
fn defaults_and_carving() {
    let c = base();
    assert_eq!(c.node_prefix_v4, 24);
    assert_eq!(c.lease_ttl_seconds, 30);
    assert_eq!(c.slots(), 256);
    assert_eq!(c.subnet_v4(0).unwrap().to_string(), "10.100.0.0/24");
    assert_eq!(c.subnet_v4(3).unwrap().to_string(), "10.100.3.0/24");
    assert_eq!(c.subnet_v4(255).unwrap().to_string(), "10.100.255.0/24");
    assert_eq!(c.subnet_v4(256), None);
    assert_eq!(c.index_of("10.100.7.0/24".parse().unwrap()), Some(7));
    assert_eq!(c.index_of("10.101.7.0/24".parse().unwrap()), None);
    assert_eq!(c.index_of("10.100.7.0/25".parse().unwrap()), None);
    assert_eq!(c.subnet_v6(0), None);
    assert_eq!(
        c.cluster_cidrs(),
        ["10.100.0.0/16".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn dual_stack_slots_pair_up() {
    let c = config(&format!(
        "{BASE}node_prefix_v4 = 26\ncluster_cidr_v6 = \"fd00:100::/60\"\nnode_prefix_v6 = 64\n"
    ))
    .unwrap();
    // 1024 IPv4 subnets but only 16 IPv6 ones: 16 slots.
    assert_eq!(c.slots(), 16);
    assert_eq!(c.subnet_v4(1).unwrap().to_string(), "10.100.0.64/26");
    assert_eq!(c.subnet_v6(1).unwrap().to_string(), "fd00:100:0:1::/64");
    assert_eq!(c.subnet_v6(15).unwrap().to_string(), "fd00:100:0:f::/64");
    assert_eq!(c.subnet_v6(16), None);
}

#[test]
fn free_slots_skip_taken_and_wrap() {
    let c = config(&format!("{BASE}node_prefix_v4 = 18\n")).unwrap();
    assert_eq!(c.slots(), 4);
    let taken: BTreeSet<Ipv4Net> = ["10.100.128.0/18", "10.100.192.0/18"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    assert_eq!(c.free_slot(2, &taken), Some(0));
    assert_eq!(c.free_slot(1, &taken), Some(1));
    let all: BTreeSet<Ipv4Net> = (0..4).map(|i| c.subnet_v4(i).unwrap()).collect();
    assert_eq!(c.free_slot(0, &all), None);
    assert!(c.start_slot("node-a") < 4);
    // The start slot spreads names.
    let big = base();
    let starts: BTreeSet<u32> = (0..50).map(|i| big.start_slot(&format!("n{i}"))).collect();
    assert!(starts.len() > 30, "{starts:?}");
}

#[test]
fn keys_round_trip_and_bad_keys_are_not_subnets() {
    let s: Ipv4Net = "10.100.3.0/24".parse().unwrap();
    assert_eq!(subnet_key(s), "/netns-holder/subnets/v4/10.100.3.0-24");
    assert_eq!(parse_subnet_key(&subnet_key(s)), Some(s));
    for bad in [
        "/netns-holder/subnets/v4/10.100.3.1-24",
        "/netns-holder/subnets/v4/10.100.3.0",
        "/netns-holder/subnets/v4/x-24",
        "/netns-holder/subnets/v4/10.100.3.0-33",
        "/other/10.100.3.0-24",
    ] {
        assert_eq!(parse_subnet_key(bad), None, "{bad}");
    }
}

#[test]
fn records_and_claims() {
    let r = SubnetRecord {
        node: "node-a".into(),
        address: "192.0.2.1".parse().unwrap(),
        pod_cidr_v6: Some("fd00:100:0:3::/64".parse().unwrap()),
        address_v6: None,
    };
    let json = r.to_json();
    assert_eq!(
        json,
        r#"{"node":"node-a","address":"192.0.2.1","pod_cidr_v6":"fd00:100:0:3::/64"}"#
    );
    assert_eq!(SubnetRecord::from_json(json.as_bytes()).unwrap(), r);
    assert!(SubnetRecord::from_json(b"{}").unwrap_err().contains("node"));
    assert_eq!(claim("node-a", None), Claim::Free);
    assert_eq!(claim("node-a", Some(&r)), Claim::Ours);
    assert_eq!(claim("node-b", Some(&r)), Claim::TakenBy("node-a".into()));
}

#[test]
fn peers_from_records() {
    let c = config(&format!("{BASE}cluster_cidr_v6 = \"fd00:100::/56\"\n")).unwrap();
    let rec = |node: &str, addr: &str, v6: Option<&str>, a6: Option<&str>| SubnetRecord {
        node: node.into(),
        address: addr.parse().unwrap(),
        pod_cidr_v6: v6.map(|v| v.parse().unwrap()),
        address_v6: a6.map(|v| v.parse().unwrap()),
    };
    let mut records = BTreeMap::new();
    records.insert(
        "10.100.0.0/24".parse().unwrap(),
        rec("me", "192.0.2.1", Some("fd00:100::/64"), None),
    );
    records.insert(
        "10.100.1.0/24".parse().unwrap(),
        rec(
            "b",
            "192.0.2.2",
            Some("fd00:100:0:1::/64"),
            Some("2001:db8::2"),
        ),
    );
    records.insert(
        "10.100.2.0/24".parse().unwrap(),
        rec("c", "192.0.2.3", Some("fd00:100:0:2::/64"), None),
    );
    records.insert(
        "10.200.0.0/24".parse().unwrap(),
        rec("d", "192.0.2.4", None, None),
    );
    let set = peers_from(&c, "me", &records);
    let shown: Vec<String> = set
        .peers
        .iter()
        .map(|p| format!("{} {}", p.node, p.peer()))
        .collect();
    assert_eq!(
        shown,
        [
            "b 10.100.1.0/24 via 192.0.2.2",
            "b fd00:100:0:1::/64 via 2001:db8::2",
            "c 10.100.2.0/24 via 192.0.2.3",
        ]
    );
    assert_eq!(set.ignored.len(), 2, "{:?}", set.ignored);
    assert!(
        set.ignored[0].1.contains("no IPv6 address"),
        "{:?}",
        set.ignored
    );
    assert!(
        set.ignored[1].1.contains("not a /24 of the cluster CIDR"),
        "{:?}",
        set.ignored
    );
}

#[test]
fn on_link_needs_a_connected_network() {
    let connected: Vec<IpNet> = vec![
        "192.0.2.1/24".parse().unwrap(),
        "10.9.9.9/32".parse().unwrap(),
    ];
    assert!(on_link("192.0.2.7".parse().unwrap(), &connected));
    assert!(!on_link("198.51.100.7".parse().unwrap(), &connected));
    // A /32 address connects nothing, and the node's own address is no gateway.
    assert!(!on_link("10.9.9.9".parse().unwrap(), &connected));
    assert!(!on_link("192.0.2.1".parse().unwrap(), &connected));
}

#[test]
fn state_file_round_trips_and_fits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join(STATE_FILE_NAME);
    assert_eq!(ClusterState::load(&path).unwrap(), None);
    let state = ClusterState {
        node: "node-a".into(),
        pod_cidr_v4: "10.100.3.0/24".parse().unwrap(),
        pod_cidr_v6: None,
        peers: vec![ClusterPeer {
            node: "b".into(),
            pod_cidr: "10.100.1.0/24".parse().unwrap(),
            via: "192.0.2.2".parse().unwrap(),
        }],
    };
    state.save(&path).unwrap();
    assert_eq!(ClusterState::load(&path).unwrap(), Some(state.clone()));
    assert!(state.fits(&base(), "node-a"));
    assert!(!state.fits(&base(), "node-b"));
    let other = config(&format!("{BASE}node_prefix_v4 = 25\n")).unwrap();
    assert!(!state.fits(&other, "node-a"));
    std::fs::write(&path, "{").unwrap();
    let err = ClusterState::load(&path).unwrap_err().to_string();
    assert!(
        err.contains(&path.display().to_string()) && err.contains("not valid"),
        "{err}"
    );
}

#[test]
fn bad_sections_name_the_key() {
    for (extra, key, part) in [
        ("backend = \"kubernetes\"\n", "backend", "unknown backend"),
        ("etcd_endpoints = []\n", "etcd_endpoints", "at least one"),
        (
            "etcd_endpoints = [\"192.0.2.5:2379\"]\n",
            "etcd_endpoints",
            "http:// or https://",
        ),
        (
            "etcd_endpoints = [\"https://192.0.2.5:2379\"]\n",
            "etcd_ca",
            "needs the CA",
        ),
        ("etcd_ca = \"/ca.pem\"\n", "etcd_ca", "need https://"),
        (
            "etcd_endpoints = [\"https://192.0.2.5:2379\"]\netcd_ca = \"/ca.pem\"\netcd_cert = \"/c.pem\"\n",
            "etcd_key",
            "go together",
        ),
        (
            "etcd_endpoints = [\"https://192.0.2.5:2379\"]\netcd_ca = \"ca.pem\"\n",
            "etcd_ca",
            "absolute",
        ),
        (
            "cluster_cidr_v4 = \"10.100.0.1/16\"\n",
            "cluster_cidr_v4",
            "host bits",
        ),
        (
            "cluster_cidr_v4 = \"fd00::/16\"\n",
            "cluster_cidr_v4",
            "not an IPv4 CIDR",
        ),
        (
            "node_prefix_v4 = 8\n",
            "node_prefix_v4",
            "between the cluster CIDR's /16 and /30",
        ),
        ("node_prefix_v4 = 31\n", "node_prefix_v4", "between"),
        (
            "node_prefix_v6 = 64\n",
            "node_prefix_v6",
            "without cluster_cidr_v6",
        ),
        (
            "cluster_cidr_v6 = \"fd00:100::/56\"\nnode_prefix_v6 = 48\n",
            "node_prefix_v6",
            "between",
        ),
        (
            "lease_ttl_seconds = 1\n",
            "lease_ttl_seconds",
            "between 2 and 86400",
        ),
        ("lease_ttl_seconds = -5\n", "lease_ttl_seconds", "negative"),
        ("node_name = \"a b\"\n", "node_name", "only ASCII"),
        (
            "node_address = \"node-a\"\n",
            "node_address",
            "not an IP address",
        ),
        ("node_address = \"127.0.0.1\"\n", "node_address", "unicast"),
    ] {
        // Later keys of the same name replace the base's.
        let mut text = String::new();
        for line in BASE.lines() {
            let name = line.split('=').next().unwrap_or("").trim();
            if name.is_empty() || !extra.contains(&format!("{name} =")) {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(extra);
        let err = config(&text).expect_err(extra);
        assert_eq!(err.key, key, "{extra}: {err}");
        assert!(err.reason.contains(part), "{extra}: {err}");
        assert!(
            err.to_string().contains(&format!("`cluster.{key}`")),
            "{err}"
        );
    }
    let err = config("etcd_endpoints = [\"http://a:1\"]\ncluster_cidr_v4 = \"10.1.0.0/16\"\n")
        .unwrap_err();
    assert_eq!(err.key, "backend");
}
