//! The gRPC status codes of the manager's errors ([`error_code`]), asserted where the
//! errors arise: manager operations against the in-memory `FakeSystem`. These tests lived in
//! the core's manager tests; the code mapping is the API's, so they live here now.

use slog::{Logger, o};

use netns_holder_client::api::error_code;
use netns_holder_core::config::Config;
use netns_holder_core::fake::FakeSystem;
use netns_holder_core::manager::{CreateRequest, ManagerError, PodManager};
use netns_holder_core::names::PodName;
use netns_holder_core::peers::Peer;
use netns_holder_core::ports::PortMapping;

fn logger() -> Logger {
    Logger::root(slog::Discard, o!())
}

fn name(s: &str) -> PodName {
    PodName::new(s).unwrap()
}

fn ports(specs: &[&str]) -> Vec<PortMapping> {
    netns_holder_core::ports::parse_publish_all(specs).unwrap()
}

fn allocated(m: &PodManager<FakeSystem>) -> usize {
    m.status().pools.iter().map(|p| p.allocated).sum()
}

fn with_ports(pod: &str, specs: &[&str]) -> CreateRequest {
    CreateRequest {
        ports: ports(specs),
        ..CreateRequest::new(name(pod))
    }
}

fn element_texts(env: &Env) -> Vec<String> {
    env.fake
        .firewall_elements()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

fn peer(cidr: &str, via: &str) -> Peer {
    Peer {
        pod_cidr: cidr.parse().unwrap(),
        via: via.parse().unwrap(),
    }
}

struct Env {
    /// Holds the state directory for the test's lifetime.
    _dir: tempfile::TempDir,
    fake: FakeSystem,
    config: Config,
}

impl Env {
    fn new(v4: &str, v6: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: dir.path().join("state"),
            pod_cidr_v4: v4.parse().unwrap(),
            pod_cidr_v6: v6.map(|v| v.parse().unwrap()),
            ..Config::default()
        };
        let fake = FakeSystem::new();
        // The table a daemon start creates.
        fake.install_table(netns_holder_core::firewall::FirewallBase {
            bridge: config.bridge.clone(),
            pod_cidr_v4: config.pod_cidr_v4,
            pod_cidr_v6: config.pod_cidr_v6,
            masquerade: config.masquerade,
            datapath: Default::default(),
        });
        Self {
            _dir: dir,
            fake,
            config,
        }
    }

    fn v4() -> Self {
        Self::new("10.88.0.0/16", None)
    }

    fn dual() -> Self {
        Self::new("10.88.0.0/16", Some("fd00:88::/64"))
    }

    fn manager(&self) -> PodManager<FakeSystem> {
        PodManager::open(self.config.clone(), self.fake.clone(), logger()).unwrap()
    }
}

#[tokio::test]
async fn a_port_of_another_pod_is_refused_and_nothing_changes() {
    let env = Env::dual();
    let m = env.manager();
    m.create(with_ports("db", &["10.0.0.1:8080:80"]))
        .await
        .unwrap();
    let before_elements = element_texts(&env);
    let before_links = env.fake.snapshot().host_links;
    for spec in ["8080:80", "10.0.0.1:8080:81", "0.0.0.0:8080:80"] {
        let err = m.create(with_ports("web", &[spec])).await.unwrap_err();
        assert!(
            matches!(err, ManagerError::PortInUse { .. }),
            "{spec}: {err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "pod web: host port {} is already taken by pod db (tcp 10.0.0.1:8080 -> 80)",
                ports(&[spec])[0]
            )
        );
        assert_eq!(error_code(&err), tonic::Code::FailedPrecondition);
    }
    // Other addresses, families and protocols are free.
    for spec in ["10.0.0.2:8080:80", "[::]:8080:80", "8080:80/udp"] {
        let pod = format!("ok-{}", spec.len());
        m.create(with_ports(&pod, &[spec])).await.unwrap();
        m.remove(&name(&pod)).await.unwrap();
    }
    assert_eq!(element_texts(&env), before_elements);
    assert_eq!(env.fake.snapshot().host_links, before_links);
    assert_eq!(m.records().len(), 1);
    assert_eq!(allocated(&m), 2);
    assert!(m.get(&name("web")).is_none());
}

#[tokio::test]
async fn peers_are_added_persisted_repaired_and_removed() {
    let env = Env::v4();
    let m = env.manager();
    let b = peer("10.89.0.0/16", "192.168.50.2");
    assert!(m.add_peer(b).await.unwrap());
    assert!(!m.add_peer(b).await.unwrap(), "idempotent");
    assert_eq!(env.fake.peer_route_list(), [(b.pod_cidr, b.via)]);
    let err = m
        .add_peer(peer("10.89.0.0/16", "192.168.50.3"))
        .await
        .unwrap_err();
    assert_eq!(error_code(&err), tonic::Code::AlreadyExists);
    for (bad, part) in [
        (
            peer("10.88.1.0/24", "192.168.50.3"),
            "overlaps this node's pod CIDR",
        ),
        (
            peer("10.89.1.0/24", "192.168.50.3"),
            "overlaps peer 10.89.0.0/16",
        ),
        (
            peer("10.90.0.0/16", "10.88.0.9"),
            "inside pod CIDR 10.88.0.0/16",
        ),
    ] {
        let err = m.add_peer(bad).await.unwrap_err();
        assert!(err.to_string().contains(part), "{err}");
        assert_eq!(error_code(&err), tonic::Code::InvalidArgument);
    }
    assert_eq!(m.peers().len(), 1);
    assert!(m.check().await.is_empty());

    // Persisted: a restarted daemon has it; a deleted route is reported and re-added.
    let m = env.manager();
    assert_eq!(m.peers().len(), 1);
    env.fake.delete_route_externally(b.pod_cidr, b.via);
    let found: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert_eq!(found, ["route 10.89.0.0/16 via 192.168.50.2: missing"]);
    let report = m.repair().await;
    assert_eq!(
        report.node_actions,
        ["add route 10.89.0.0/16 via 192.168.50.2"]
    );
    assert_eq!(env.fake.peer_route_list(), [(b.pod_cidr, b.via)]);

    // A route of ours that belongs to no peer goes on repair.
    let stale = peer("10.91.0.0/16", "192.168.50.9");
    env.fake
        .add_peer_route_externally(stale.pod_cidr, stale.via);
    assert_eq!(
        m.check()
            .await
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["route 10.91.0.0/16 via 192.168.50.9: belongs to no peer"]
    );
    m.repair().await;
    assert_eq!(env.fake.peer_route_list(), [(b.pod_cidr, b.via)]);

    assert!(m.remove_peer(b.pod_cidr).await.unwrap());
    assert!(!m.remove_peer(b.pod_cidr).await.unwrap());
    assert!(env.fake.peer_route_list().is_empty());
    assert!(env.manager().peers().is_empty());
}

#[tokio::test]
async fn a_failed_route_leaves_no_peer_behind() {
    let env = Env::v4();
    let m = env.manager();
    let b = peer("10.89.0.0/16", "192.168.50.2");
    env.fake.add_foreign_route(b.pod_cidr);
    let err = m.add_peer(b).await.unwrap_err();
    assert!(
        err.to_string().contains("route 10.89.0.0/16 (not ours)"),
        "{err}"
    );
    assert_eq!(error_code(&err), tonic::Code::FailedPrecondition);
    assert!(m.peers().is_empty());
    assert!(env.manager().peers().is_empty());
}

#[tokio::test]
async fn configured_peers_apply_at_start_and_cannot_be_removed_through_the_api() {
    let mut env = Env::v4();
    let api_peer = peer("10.90.0.0/16", "192.168.50.3");
    {
        let m = env.manager();
        m.add_peer(api_peer).await.unwrap();
    }
    let b = peer("10.89.0.0/16", "192.168.50.2");
    env.config.peers = vec![b];
    let m = env.manager();
    let report = m.reconcile().await;
    // The configured peer's CIDR joins the egress exemptions (aggregated with this node's
    // 10.88.0.0/16) and gets its route.
    assert_eq!(
        report.node_actions,
        [
            "set the egress exemptions of nftables table inet netns_holder to 10.88.0.0/15, 10.90.0.0/16",
            "add route 10.89.0.0/16 via 192.168.50.2"
        ]
    );
    assert_eq!(m.peers().len(), 2);
    let err = m.remove_peer(b.pod_cidr).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("comes from the configuration file"),
        "{err}"
    );
    assert_eq!(error_code(&err), tonic::Code::FailedPrecondition);
    // Dropped from the configuration: gone at the next start, route included.
    env.config.peers = Vec::new();
    let m = env.manager();
    let report = m.reconcile().await;
    assert_eq!(
        report.node_actions,
        [
            "set the egress exemptions of nftables table inet netns_holder to 10.88.0.0/16, 10.90.0.0/16",
            "delete route 10.89.0.0/16 via 192.168.50.2"
        ]
    );
    assert_eq!(
        m.peers().iter().map(|p| p.peer()).collect::<Vec<_>>(),
        [api_peer]
    );
}

// ---------------------------------------------------------------- release-ports

#[tokio::test]
async fn releasing_ports_of_an_unknown_pod_is_not_found() {
    let env = Env::v4();
    let m = env.manager();
    let err = m.release_pod_ports(&name("ghost")).await.unwrap_err();
    assert!(matches!(err, ManagerError::NotFound { .. }), "{err}");
    assert_eq!(err.to_string(), "pod ghost not found");
    assert_eq!(error_code(&err), tonic::Code::NotFound);
    assert!(m.records().is_empty());
}

#[tokio::test]
async fn a_crash_between_saving_the_release_and_the_firewall_is_repaired() {
    let env = Env::v4();
    let m = env.manager();
    m.create(with_ports("web", &["8080:80"])).await.unwrap();
    // The deletion fails (as if the daemon died right after saving): the record says
    // released, the element is still in the map.
    env.fake.fail_on("delete_elements");
    let err = m.release_pod_ports(&name("web")).await.unwrap_err();
    assert!(matches!(err, ManagerError::Release { .. }), "{err}");
    assert!(err.to_string().contains("pod web"), "{err}");
    assert_eq!(error_code(&err), tonic::Code::Internal);
    env.fake.clear_failures();
    assert_eq!(element_texts(&env).len(), 1);
    drop(m);

    let m = env.manager();
    assert!(m.get(&name("web")).unwrap().ports_released, "persisted");
    let found: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "element { tcp . 8080 : 10.88.0.2 . 80 } of map hostport_any_v4: foreign (not put there by netns-holder)"
        ]
    );
    let report = m.reconcile().await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(
        report.node_actions,
        ["replace nftables table inet netns_holder (0 host port element(s))"]
    );
    assert!(element_texts(&env).is_empty());
    assert!(m.check().await.is_empty());
    // The port is free for another pod, and releasing again is a no-op.
    m.create(with_ports("other", &["8080:80"])).await.unwrap();
    assert!(!m.release_pod_ports(&name("web")).await.unwrap());
    assert_eq!(element_texts(&env).len(), 1);
    assert!(m.check().await.is_empty());
}
