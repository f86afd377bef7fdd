//! Manager tests against the in-memory [`FakeSystem`]: create/remove, idempotence and
//! conflicts, rollback at every step, crash at every step followed by reconcile, drift
//! checks and repair, gc, orphan sweeping, persistence and concurrency.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use slog::{Logger, o};

use super::*;
use crate::fake::FakeSystem;
use crate::finding::{Finding, Problem};
use crate::names::IfName;
use crate::ports::{PortMapping, Protocol};
use crate::state::StateStore;

fn logger() -> Logger {
    Logger::root(slog::Discard, o!())
}

fn name(s: &str) -> PodName {
    PodName::new(s).unwrap()
}

fn netns(s: &str) -> PathBuf {
    Path::new("/run/netns").join(s)
}

fn ports(specs: &[&str]) -> Vec<PortMapping> {
    crate::ports::parse_publish_all(specs).unwrap()
}

struct Env {
    dir: tempfile::TempDir,
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
        fake.install_table(crate::firewall::FirewallBase {
            bridge: config.bridge.clone(),
            pod_cidr_v4: config.pod_cidr_v4,
            pod_cidr_v6: config.pod_cidr_v6,
            masquerade: config.masquerade,
            datapath: Default::default(),
        });
        Self { dir, fake, config }
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

/// Every state save fails while this lives, as on a full or read-only disk: a directory
/// where the journal is appended to, and one where a snapshot's temporary file goes.
struct SavesBlocked {
    journal: PathBuf,
    tmp: PathBuf,
}

impl SavesBlocked {
    fn new(env: &Env) -> Self {
        let journal = env.config.state_dir.join(crate::state::JOURNAL_FILE_NAME);
        let tmp = env.config.state_dir.join("state.json.tmp");
        std::fs::remove_file(&journal).unwrap();
        std::fs::create_dir(&journal).unwrap();
        std::fs::create_dir(&tmp).unwrap();
        Self { journal, tmp }
    }

    /// Saves work again (the next one writes a snapshot and a fresh journal).
    fn lift(self) {
        std::fs::remove_dir(&self.journal).unwrap();
        std::fs::remove_dir(&self.tmp).unwrap();
    }
}

fn allocated(m: &PodManager<FakeSystem>) -> usize {
    m.status().pools.iter().map(|p| p.allocated).sum()
}

/// Nothing of any pod is left: no mounts, namespaces, processes, veths, records or
/// allocations (the shared bridge may stay).
fn assert_clean(env: &Env, m: &PodManager<FakeSystem>) {
    let snap = env.fake.snapshot();
    assert!(snap.mounts.is_empty(), "mounts left: {:?}", snap.mounts);
    assert_eq!(snap.namespaces, 0, "namespaces left");
    assert!(
        snap.processes.is_empty(),
        "processes left: {:?}",
        snap.processes
    );
    assert!(
        snap.host_links.iter().all(|l| l == "nh0"),
        "links left: {:?}",
        snap.host_links
    );
    assert!(m.records().is_empty(), "records left: {:?}", m.records());
    assert_eq!(allocated(m), 0, "allocations left");
    let on_disk = StateStore::new(&env.config.state_dir).load().unwrap();
    assert!(
        on_disk.pods.is_empty() && on_disk.owned_netns.is_empty(),
        "state left: {on_disk:?}"
    );
}

/// The pod is complete in the kernel and recorded as ready.
async fn assert_complete(env: &Env, m: &PodManager<FakeSystem>, pod: &str) {
    let info = m
        .get(&name(pod))
        .unwrap_or_else(|| panic!("pod {pod} not ready"));
    let ns = info.netns.clone();
    let eth0 = env
        .fake
        .peek_link(Some(&ns), "eth0")
        .expect("eth0 in pod netns");
    assert!(eth0.up);
    for ip in &info.ips {
        assert!(eth0.addresses.contains(ip), "{ip} missing");
    }
    let host = env
        .fake
        .peek_link(None, info.host_veth.as_str())
        .expect("host veth");
    assert!(host.up);
    assert_eq!(host.master.as_ref().map(IfName::as_str), Some("nh0"));
    let routes: Vec<IpAddr> = env
        .fake
        .routes_in(&ns)
        .into_iter()
        .map(|(_, g)| g)
        .collect();
    assert_eq!(routes.len(), info.gateways.len());
    let findings: Vec<Finding> = m
        .check()
        .await
        .into_iter()
        .filter(|f| f.pod.as_ref() == Some(&name(pod)))
        .collect();
    assert!(findings.is_empty(), "{findings:?}");
}

#[tokio::test]
async fn create_and_remove_v4() {
    let env = Env::v4();
    let m = env.manager();
    let info = m.create(CreateRequest::new(name("web"))).await.unwrap();
    let id = name("web").id();
    assert_eq!(info.name, name("web"));
    assert_eq!(info.id, id);
    assert_eq!(info.netns, netns("web"));
    assert_eq!(info.ips, vec!["10.88.0.2/16".parse::<IpNet>().unwrap()]);
    assert_eq!(info.gateways, vec!["10.88.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(info.interface.as_str(), "eth0");
    assert_eq!(info.host_veth, id.host_veth_name());
    let pause = env.fake.snapshot().processes;
    assert_eq!(pause.len(), 1);
    assert_eq!(info.pause_pid, Some(pause[0].process.pid));
    assert_eq!(pause[0].id, id);
    assert_complete(&env, &m, "web").await;
    assert_eq!(
        env.fake.loopback_and_dad(&netns("web"), "eth0"),
        Some((true, false))
    );
    assert_eq!(env.fake.forwarding(), (true, false));
    let bridge = env.fake.peek_link(None, "nh0").unwrap();
    assert_eq!(
        bridge.addresses,
        vec!["10.88.0.1/16".parse::<IpNet>().unwrap()]
    );
    assert_eq!(
        env.fake
            .peek_link(None, id.host_veth_name().as_str())
            .unwrap()
            .mtu,
        1500
    );

    assert!(m.remove(&name("web")).await.unwrap());
    assert_clean(&env, &m);
    // Idempotent.
    assert!(!m.remove(&name("web")).await.unwrap());
}

#[tokio::test]
async fn a_pod_keeps_the_name_of_the_pooled_pair_it_reserved() {
    let env = Env::v4();
    env.fake
        .pool_links(&["nhv00000a000001", "nhv00000a000002", "nhv00000a000003"]);
    let m = env.manager();
    let web = m.create(CreateRequest::new(name("web"))).await.unwrap();
    assert_eq!(web.host_veth.as_str(), "nhv00000a000001");
    assert!(env.fake.peek_link(None, "nhv00000a000001").is_some());
    assert!(
        env.fake
            .peek_link(None, name("web").id().host_veth_name().as_str())
            .is_none()
    );
    assert_complete(&env, &m, "web").await;
    // The name is in the record: a restarted daemon checks and keeps that link.
    drop(m);
    let m = env.manager();
    let report = m.reconcile().await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_complete(&env, &m, "web").await;
    assert_eq!(m.records()[0].host_veth.as_str(), "nhv00000a000001");
    // An attached namespace is the runtime's: no pooled pair for it.
    let foreign = PathBuf::from("/var/run/netns/cni-1");
    env.fake.add_foreign_netns(&foreign);
    let info = m
        .attach(AttachRequest {
            name: name("other"),
            netns: foreign,
            annotations: BTreeMap::new(),
            ports: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(info.host_veth, name("other").id().host_veth_name());
    // A create that fails gives its reservation up; nothing of it is left.
    env.fake.fail_on("create_veth");
    m.create(CreateRequest::new(name("b"))).await.unwrap_err();
    assert_eq!(env.fake.released_pool_links(), vec![netns("b")]);
    assert!(env.fake.peek_link(None, "nhv00000a000002").is_none());
    assert!(m.remove(&name("web")).await.unwrap());
    assert!(m.remove(&name("other")).await.unwrap());
    assert!(env.fake.peek_link(None, "nhv00000a000001").is_none());
}

#[tokio::test]
async fn the_system_is_told_how_many_creates_run() {
    let env = Env::v4();
    let m = Arc::new(env.manager());
    m.create(CreateRequest::new(name("a"))).await.unwrap();
    assert_eq!(env.fake.creates_in_flight_told(), vec![1, 0]);
    // A create that fails and rolls back counts until it has.
    env.fake.fail_on("create_veth");
    m.create(CreateRequest::new(name("b"))).await.unwrap_err();
    assert_eq!(env.fake.creates_in_flight_told(), vec![1, 0, 1, 0]);
    // Concurrent creates add up, and the count returns to 0.
    let env = Env::v4();
    let fake = env.fake.clone();
    let m = Arc::new(env.manager());
    let creates: Vec<_> = ["c", "d", "e"]
        .into_iter()
        .map(|pod| {
            let m = m.clone();
            tokio::spawn(async move { m.create(CreateRequest::new(name(pod))).await })
        })
        .collect();
    for create in creates {
        create.await.unwrap().unwrap();
    }
    let told = fake.creates_in_flight_told();
    assert_eq!(told.iter().max(), Some(&3), "{told:?}");
    assert_eq!(told.last(), Some(&0), "{told:?}");
    assert_eq!(told.len(), 6, "{told:?}");
}

#[tokio::test]
async fn create_dual_stack() {
    let env = Env::dual();
    let m = env.manager();
    let info = m.create(CreateRequest::new(name("web"))).await.unwrap();
    assert_eq!(
        info.ips,
        vec![
            "10.88.0.2/16".parse::<IpNet>().unwrap(),
            "fd00:88::2/64".parse().unwrap()
        ]
    );
    assert_eq!(
        info.gateways,
        vec![
            "10.88.0.1".parse::<IpAddr>().unwrap(),
            "fd00:88::1".parse().unwrap()
        ]
    );
    assert_complete(&env, &m, "web").await;
    assert_eq!(
        env.fake.loopback_and_dad(&netns("web"), "eth0"),
        Some((true, true))
    );
    assert_eq!(env.fake.forwarding(), (true, true));
    m.remove(&name("web")).await.unwrap();
    assert_clean(&env, &m);
}

#[tokio::test]
async fn pod_info_json_has_exactly_the_documented_fields() {
    let env = Env::v4();
    let m = env.manager();
    let info = m
        .create(CreateRequest {
            no_pause: true,
            ..CreateRequest::new(name("abc"))
        })
        .await
        .unwrap();
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "abc",
            "id": "ba7816bf8f01cfea",
            "netns": "/run/netns/abc",
            "pause_pid": null,
            "ips": ["10.88.0.2/16"],
            "gateways": ["10.88.0.1"],
            "interface": "eth0",
            "host_veth": "nhba7816bf8f01",
            "ports": [],
            "ports_released": false,
        })
    );
    assert_eq!(serde_json::from_value::<PodInfo>(json).unwrap(), info);
}

#[tokio::test]
async fn mtu_from_config_or_default_route() {
    let env = Env::v4();
    env.fake.set_default_route_mtu(Some(9000));
    let m = env.manager();
    let info = m.create(CreateRequest::new(name("a"))).await.unwrap();
    assert_eq!(
        env.fake
            .peek_link(None, info.host_veth.as_str())
            .unwrap()
            .mtu,
        9000
    );
    env.fake.set_default_route_mtu(None);
    let info = m.create(CreateRequest::new(name("b"))).await.unwrap();
    assert_eq!(
        env.fake
            .peek_link(None, info.host_veth.as_str())
            .unwrap()
            .mtu,
        FALLBACK_MTU
    );
    let mut env2 = Env::v4();
    env2.config.mtu = Some(1380);
    let m2 = env2.manager();
    let info = m2.create(CreateRequest::new(name("c"))).await.unwrap();
    assert_eq!(
        env2.fake.peek_link(Some(&info.netns), "eth0").unwrap().mtu,
        1380
    );
    assert!(!env2.fake.calls().iter().any(|c| c == "default_route_mtu"));
}

#[tokio::test]
async fn create_is_idempotent_and_conflicts_are_reported() {
    let env = Env::v4();
    let m = env.manager();
    let annotations = BTreeMap::from([("k".to_string(), "v".to_string())]);
    let req = CreateRequest {
        annotations: annotations.clone(),
        ..CreateRequest::new(name("web"))
    };
    let first = m.create(req.clone()).await.unwrap();
    let calls = env.fake.call_count();
    assert_eq!(m.create(req.clone()).await.unwrap(), first);
    assert_eq!(
        env.fake.call_count(),
        calls,
        "an identical create touches nothing"
    );

    let err = m
        .create(CreateRequest {
            no_pause: true,
            ..req.clone()
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::Conflict { .. }), "{err}");
    assert!(
        err.to_string().contains("pod web") && err.to_string().contains("no_pause"),
        "{err}"
    );

    let err = m.create(CreateRequest::new(name("web"))).await.unwrap_err();
    assert!(err.to_string().contains("annotations"), "{err}");

    env.fake
        .add_foreign_netns(Path::new("/var/run/netns/other"));
    let err = m
        .attach(AttachRequest {
            name: name("web"),
            netns: "/var/run/netns/other".into(),
            annotations,
            ports: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("attached to an existing netns"),
        "{err}"
    );
    assert_eq!(m.list(), vec![first]);
}

#[tokio::test]
async fn no_pause_pod() {
    let env = Env::v4();
    let m = env.manager();
    let info = m
        .create(CreateRequest {
            no_pause: true,
            ..CreateRequest::new(name("np"))
        })
        .await
        .unwrap();
    assert_eq!(info.pause_pid, None);
    assert!(env.fake.snapshot().processes.is_empty());
    assert_complete(&env, &m, "np").await;
    m.remove(&name("np")).await.unwrap();
    assert_clean(&env, &m);
}

#[tokio::test]
async fn attach_wires_but_never_deletes_a_foreign_netns() {
    let env = Env::v4();
    let m = env.manager();
    let foreign = PathBuf::from("/var/run/netns/cni-1234");
    env.fake.add_foreign_netns(&foreign);
    let req = AttachRequest {
        name: name("ctr"),
        netns: foreign.clone(),
        annotations: BTreeMap::new(),
        ports: Vec::new(),
    };
    let info = m.attach(req.clone()).await.unwrap();
    assert_eq!(info.netns, foreign);
    assert_eq!(info.pause_pid, None);
    assert!(
        !env.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("create_netns") || c.starts_with("start_pause"))
    );
    assert_complete(&env, &m, "ctr").await;
    assert_eq!(m.attach(req).await.unwrap(), info);

    // The same namespace cannot be attached twice.
    let err = m
        .attach(AttachRequest {
            name: name("ctr2"),
            netns: foreign.clone(),
            annotations: BTreeMap::new(),
            ports: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::NetnsInUse { .. }), "{err}");

    assert!(m.remove(&name("ctr")).await.unwrap());
    assert!(
        !env.fake
            .calls()
            .iter()
            .any(|c| c.starts_with("delete_netns"))
    );
    assert_eq!(env.fake.snapshot().mounts, vec![foreign.clone()]);
    assert_eq!(env.fake.links_in(&foreign), Some(vec![]));
    assert!(m.records().is_empty());
    assert_eq!(allocated(&m), 0);
}

#[tokio::test]
async fn attach_to_missing_netns_fails_cleanly() {
    let env = Env::v4();
    let m = env.manager();
    let err = m
        .attach(AttachRequest {
            name: name("ctr"),
            netns: "/var/run/netns/nope".into(),
            annotations: BTreeMap::new(),
            ports: Vec::new(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::NetnsNotFound { .. }));
    assert!(
        err.to_string().contains("/var/run/netns/nope") && err.to_string().contains("ctr"),
        "{err}"
    );
    assert_clean(&env, &m);
}

#[tokio::test]
async fn existing_bind_mount_is_not_taken_over() {
    let env = Env::v4();
    env.fake.add_foreign_netns(&netns("web"));
    let m = env.manager();
    let err = m.create(CreateRequest::new(name("web"))).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("step 1 (create netns /run/netns/web)") && msg.contains("already exists"),
        "{msg}"
    );
    // The foreign mount is untouched, nothing of ours is left.
    assert_eq!(env.fake.snapshot().mounts, vec![netns("web")]);
    assert!(m.records().is_empty());
    assert_eq!(allocated(&m), 0);
}

#[tokio::test]
async fn ipam_exhaustion_touches_nothing() {
    let env = Env::new("10.9.0.0/30", None);
    let m = env.manager();
    m.create(CreateRequest::new(name("a"))).await.unwrap();
    let calls = env.fake.call_count();
    let err = m.create(CreateRequest::new(name("b"))).await.unwrap_err();
    assert!(matches!(err, ManagerError::Ipam { .. }));
    assert!(
        err.to_string().contains("10.9.0.0/30") && err.to_string().contains("pod b"),
        "{err}"
    );
    // Only the MTU query ran.
    assert_eq!(env.fake.calls()[calls..], ["default_route_mtu".to_string()]);
    assert_eq!(m.records().len(), 1);
}

/// Number of system calls one successful create makes, and their records.
async fn create_calls(env: &Env, create: &(dyn Fn() -> Request + Sync)) -> Vec<String> {
    let m = env.manager();
    let before = env.fake.call_count();
    run(&m, create()).await.unwrap();
    env.fake.calls()[before..].to_vec()
}

#[derive(Clone)]
enum Request {
    Create(CreateRequest),
    Attach(AttachRequest),
}

async fn run(m: &PodManager<FakeSystem>, r: Request) -> Result<PodInfo, ManagerError> {
    match r {
        Request::Create(c) => m.create(c).await,
        Request::Attach(a) => m.attach(a).await,
    }
}

/// A labelled way to set up an environment and the request to run in it.
type Scenario = (
    &'static str,
    Box<dyn Fn() -> Env>,
    Box<dyn Fn() -> Request + Sync>,
);

fn scenarios() -> Vec<Scenario> {
    let foreign = PathBuf::from("/var/run/netns/cni-1");
    vec![
        (
            "v4",
            Box::new(Env::v4),
            Box::new(|| Request::Create(CreateRequest::new(name("web")))),
        ),
        (
            "dual",
            Box::new(Env::dual),
            Box::new(|| Request::Create(CreateRequest::new(name("web")))),
        ),
        (
            "no_pause",
            Box::new(Env::dual),
            Box::new(|| {
                Request::Create(CreateRequest {
                    no_pause: true,
                    ..CreateRequest::new(name("web"))
                })
            }),
        ),
        (
            "ports",
            Box::new(Env::dual),
            Box::new(|| {
                Request::Create(CreateRequest {
                    ports: ports(&["8080:80", "53:5353/udp", "[::]:9443:443"]),
                    ..CreateRequest::new(name("web"))
                })
            }),
        ),
        (
            "attach",
            Box::new(move || {
                let env = Env::dual();
                env.fake
                    .add_foreign_netns(Path::new("/var/run/netns/cni-1"));
                env
            }),
            Box::new(move || {
                Request::Attach(AttachRequest {
                    name: name("web"),
                    netns: foreign.clone(),
                    annotations: BTreeMap::new(),
                    ports: Vec::new(),
                })
            }),
        ),
    ]
}

/// Nothing of pod "web" is in the kernel (foreign namespaces may stay, emptied).
fn assert_web_gone(env: &Env, m: &PodManager<FakeSystem>, label: &str) {
    let snap = env.fake.snapshot();
    let host_veth = name("web").id().host_veth_name();
    assert!(!snap.mounts.contains(&netns("web")), "{label}: netns left");
    assert!(
        snap.processes.is_empty(),
        "{label}: processes left {:?}",
        snap.processes
    );
    assert!(
        !snap.host_links.iter().any(|l| l == host_veth.as_str()),
        "{label}: host veth left"
    );
    assert_eq!(
        snap.namespaces,
        snap.mounts.len(),
        "{label}: unmounted namespace kept alive"
    );
    for mount in &snap.mounts {
        assert_eq!(
            env.fake.links_in(mount),
            Some(vec![]),
            "{label}: links left in {}",
            mount.display()
        );
    }
    assert!(m.records().is_empty(), "{label}: record left");
    assert_eq!(allocated(m), 0, "{label}: allocation left");
    assert_eq!(
        env.fake.firewall_elements(),
        Some(vec![]),
        "{label}: host port elements left"
    );
}

#[tokio::test]
async fn rollback_at_every_step_leaves_nothing() {
    for (label, make_env, request) in scenarios() {
        let steps = create_calls(&make_env(), request.as_ref()).await;
        assert!(steps.len() >= 10, "{label}: {steps:?}");
        for k in 1..=steps.len() {
            let env = make_env();
            let m = env.manager();
            let base = env.fake.call_count();
            env.fake.fail_call(base + k);
            let err = run(&m, request()).await.expect_err(&format!(
                "{label}: failing call {k} ({}) must fail",
                steps[k - 1]
            ));
            let msg = err.to_string();
            assert!(msg.contains("web"), "{label} step {k}: {msg}");
            if let ManagerError::Create { source, .. } = &err {
                assert!(source.rolled_back(), "{label} step {k}: {msg}");
                assert!(msg.contains("; rolled back"), "{label} step {k}: {msg}");
            }
            assert_web_gone(&env, &m, &format!("{label} step {k} ({})", steps[k - 1]));
            // A retry then succeeds.
            run(&m, request())
                .await
                .unwrap_or_else(|e| panic!("{label} step {k}: retry: {e}"));
            assert_complete(&env, &m, "web").await;
        }
    }
}

#[tokio::test]
async fn error_names_step_and_object() {
    let env = Env::dual();
    let m = env.manager();
    env.fake.fail_on("add_address fd00:88::2/64");
    let err = m.create(CreateRequest::new(name("web"))).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("creating pod web: step 11 (add address fd00:88::2/64 to link eth0 in /run/netns/web) failed:"),
        "{msg}"
    );
    assert!(msg.ends_with("; rolled back"), "{msg}");
}

#[tokio::test]
async fn crash_at_every_step_then_reconcile_is_all_or_nothing() {
    for (label, make_env, request) in scenarios() {
        let steps = create_calls(&make_env(), request.as_ref()).await;
        for k in 0..=steps.len() {
            let env = make_env();
            let base = env.fake.call_count();
            {
                let m = env.manager();
                env.fake.crash_after(base + k);
                let result = run(&m, request()).await;
                assert_eq!(
                    result.is_ok(),
                    k == steps.len(),
                    "{label} crash after {k}: {result:?}"
                );
            } // the daemon "dies"
            env.fake.revive();
            let m = env.manager();
            let report = m.reconcile().await;
            assert!(
                report.failures.is_empty(),
                "{label} crash after {k}: {report:?}"
            );
            let what = format!(
                "{label} crash after {k} ({})",
                if k == 0 { "-" } else { &steps[k - 1] }
            );
            if k == steps.len() {
                assert_complete(&env, &m, "web").await;
            } else {
                assert_web_gone(&env, &m, &what);
            }
            assert!(m.check().await.is_empty(), "{what}");
        }
    }
}

#[tokio::test]
async fn ready_record_written_but_creating_on_disk_is_rolled_back() {
    // Crash between the last kernel step and the Ready save: simulate by rewriting the phase.
    let env = Env::dual();
    {
        let m = env.manager();
        m.create(CreateRequest::new(name("web"))).await.unwrap();
    }
    let store = StateStore::new(&env.config.state_dir);
    let mut state = store.load().unwrap();
    state.pods.get_mut(&name("web")).unwrap().phase = Phase::Creating;
    store.save(&state).unwrap();
    let m = env.manager();
    let report = m.reconcile().await;
    assert_eq!(report.rolled_back, vec![name("web")]);
    assert_clean(&env, &m);
}

#[tokio::test]
async fn incomplete_rollback_keeps_the_record_until_cleaned() {
    let env = Env::v4();
    let m = env.manager();
    env.fake.fail_on("add_default_route");
    env.fake.fail_on("delete_link");
    let err = m.create(CreateRequest::new(name("web"))).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("rollback incomplete, 1 undo step(s) failed: delete link"),
        "{msg}"
    );
    let records = m.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].phase, Phase::Creating);
    assert_eq!(
        allocated(&m),
        1,
        "addresses stay held while kernel objects may use them"
    );
    assert!(m.get(&name("web")).is_none());
    let findings = m.check().await;
    assert!(
        findings.iter().any(|f| f.problem
            == Problem::Unfinished {
                phase: Phase::Creating
            }),
        "{findings:?}"
    );
    env.fake.clear_failures();
    // A new create first finishes the cleanup, then succeeds.
    m.create(CreateRequest::new(name("web"))).await.unwrap();
    assert_complete(&env, &m, "web").await;
    assert_eq!(allocated(&m), 1);
}

#[tokio::test]
async fn remove_keeps_going_and_reports_every_failure() {
    let env = Env::v4();
    let m = env.manager();
    let info = m.create(CreateRequest::new(name("web"))).await.unwrap();
    env.fake.fail_on("retire_link");
    env.fake.fail_on("stop_pause");
    let err = m.remove(&name("web")).await.unwrap_err();
    let ManagerError::Remove { failures, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(failures.len(), 2, "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("removing pod web: 2 failure(s):"), "{msg}");
    assert!(
        msg.contains(&format!("retire link {}", info.host_veth)),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("stop pause pid {}", info.pause_pid.unwrap())),
        "{msg}"
    );
    // It went on to delete the netns mount despite the failures.
    assert!(
        env.fake
            .calls()
            .iter()
            .any(|c| c == "delete_netns /run/netns/web")
    );
    assert_eq!(m.records()[0].phase, Phase::Removing);
    assert!(m.get(&name("web")).is_none());
    env.fake.clear_failures();
    assert!(m.remove(&name("web")).await.unwrap());
    assert_clean(&env, &m);
}

#[tokio::test]
async fn remove_tolerates_missing_pieces() {
    let env = Env::v4();
    let m = env.manager();
    let info = m.create(CreateRequest::new(name("web"))).await.unwrap();
    env.fake.kill(info.pause_pid.unwrap());
    env.fake
        .delete_link_externally(None, info.host_veth.as_str());
    env.fake.remove_netns_externally(&info.netns);
    assert!(m.remove(&name("web")).await.unwrap());
    assert_clean(&env, &m);
}

#[tokio::test]
async fn a_removal_that_cannot_be_recorded_touches_nothing() {
    let env = Env::v4();
    let m = env.manager();
    let web = m.create(CreateRequest::new(name("web"))).await.unwrap();
    let blocked = SavesBlocked::new(&env);
    let err = m.remove(&name("web")).await.unwrap_err().to_string();
    assert!(
        err.starts_with("removing pod web: 1 failure(s): state file")
            && err.contains(&blocked.journal.display().to_string()),
        "{err}"
    );
    // Still all there, in memory, on disk and in the kernel.
    assert_eq!(m.get(&name("web")), Some(web.clone()));
    assert_complete(&env, &m, "web").await;
    let report = m.gc(&BTreeSet::new()).await;
    assert_eq!(report.failures.len(), 1, "{report:?}");
    assert_complete(&env, &m, "web").await;

    blocked.lift();
    assert!(m.remove(&name("web")).await.unwrap());
    assert_clean(&env, &m);
}

#[tokio::test]
async fn gc_keeps_only_the_keep_set() {
    let env = Env::v4();
    let m = env.manager();
    for n in ["a", "b", "c", "d"] {
        m.create(CreateRequest::new(name(n))).await.unwrap();
    }
    let keep: BTreeSet<String> = [
        "a".to_string(),
        name("c").id().to_string(),
        "unknown".to_string(),
    ]
    .into();
    let report = m.gc(&keep).await;
    assert_eq!(report.removed, vec![name("b"), name("d")]);
    assert_eq!(report.kept, vec![name("a"), name("c")]);
    assert!(report.failures.is_empty());
    assert_eq!(
        m.list()
            .iter()
            .map(|p| p.name.to_string())
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(env.fake.snapshot().mounts, vec![netns("a"), netns("c")]);
    assert_eq!(env.fake.snapshot().processes.len(), 2);
    assert_eq!(allocated(&m), 2);
    let report = m.gc(&BTreeSet::new()).await;
    assert_eq!(report.removed.len(), 2);
    assert_clean(&env, &m);
}

#[tokio::test]
async fn check_reports_drift_and_repair_fixes_it() {
    let env = Env::dual();
    let m = env.manager();
    let a = m.create(CreateRequest::new(name("a"))).await.unwrap();
    let b = m.create(CreateRequest::new(name("b"))).await.unwrap();
    let c = m.create(CreateRequest::new(name("c"))).await.unwrap();
    let d = m.create(CreateRequest::new(name("d"))).await.unwrap();
    let e = m.create(CreateRequest::new(name("e"))).await.unwrap();
    assert!(m.check().await.is_empty());

    env.fake.delete_link_externally(None, a.host_veth.as_str()); // veth gone
    env.fake.kill(b.pause_pid.unwrap()); // pause dead
    env.fake.remove_netns_externally(&c.netns); // netns unmounted (pause keeps it alive)
    env.fake.remove_netns_externally(&e.netns); // netns unmounted and ...
    env.fake.kill(e.pause_pid.unwrap()); // ... its pause dead: the namespace is gone
    env.fake
        .modify_link_externally(Some(&d.netns), "eth0", |l| {
            l.up = false;
            l.addresses.retain(|a| a.addr().is_ipv4());
        });
    let orphan_id = name("ghost").id();
    env.fake
        .add_host_veth_externally(orphan_id.host_veth_name().as_str(), "ghostpeer");

    let findings: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    let expect = [
        format!("pod a: link {}: missing", a.host_veth),
        "pod a: link eth0 in /run/netns/a: missing".to_string(),
        format!("pod b: pause pid {} ", b.pause_pid.unwrap()),
        "pod c: netns /run/netns/c: missing".to_string(),
        "pod e: netns /run/netns/e: missing".to_string(),
        "pod d: link eth0 in /run/netns/d: down".to_string(),
        "pod d: link eth0 in /run/netns/d: address fd00:88::5/64 missing".to_string(),
        "pod d: routes in /run/netns/d: default route via 10.88.0.1 missing".to_string(),
        format!("link {}: belongs to no pod", orphan_id.host_veth_name()),
    ];
    for e in &expect {
        assert!(
            findings.iter().any(|f| f.starts_with(e.as_str())),
            "missing {e:?} in {findings:#?}"
        );
    }
    assert_eq!(findings.len(), 10, "{findings:#?}"); // d also misses its v6 route

    let report = m.repair().await;
    assert!(report.failures.is_empty(), "{report:?}");
    // c's namespace is mounted again from its live pause; e's is gone for good.
    assert_eq!(report.removed_dead, vec![name("e")]);
    assert_eq!(
        report.repaired.keys().cloned().collect::<Vec<_>>(),
        vec![name("a"), name("b"), name("c"), name("d")]
    );
    assert_eq!(
        report.repaired[&name("c")],
        vec![format!(
            "restore netns /run/netns/c from pause pid {} (start time {})",
            c.pause_pid.unwrap(),
            env.fake
                .snapshot()
                .processes
                .iter()
                .find(|p| p.process.pid == c.pause_pid.unwrap())
                .unwrap()
                .process
                .start_time
        )]
    );
    assert_eq!(
        report.orphans_removed,
        vec![format!(
            "delete link {} in the host namespace",
            orphan_id.host_veth_name()
        )]
    );
    assert!(m.check().await.is_empty());
    for p in ["a", "b", "c", "d"] {
        assert_complete(&env, &m, p).await;
    }
    let b2 = m.get(&name("b")).unwrap();
    assert_ne!(b2.pause_pid, b.pause_pid, "pause restarted");
    assert_eq!(
        m.get(&name("c")).unwrap().pause_pid,
        c.pause_pid,
        "same pause"
    );
    assert!(m.get(&name("e")).is_none());
    assert_eq!(allocated(&m), 8); // 4 pods, 2 families
    // a, b (restarted), c (its namespace mounted again) and d run; e is gone.
    assert_eq!(env.fake.snapshot().processes.len(), 4);
    assert_eq!(env.fake.snapshot().namespaces, 4);
    // The restarted pause survives a daemon restart.
    let m2 = env.manager();
    assert_eq!(m2.get(&name("b")).unwrap().pause_pid, b2.pause_pid);
    assert!(m2.check().await.is_empty());
}

#[tokio::test]
async fn reconcile_sweeps_orphans_but_not_foreign_objects() {
    let env = Env::v4();
    let m = env.manager();
    m.create(CreateRequest::new(name("keep"))).await.unwrap();
    m.create(CreateRequest::new(name("lost"))).await.unwrap();
    // A stray pause for a pod we never had, a foreign netns in the shared directory, a
    // foreign link that merely starts with "nh".
    env.fake.add_foreign_netns(&netns("iproute2-made"));
    let stray = env
        .fake
        .spawn_pause_externally(&name("ghost").id(), &netns("iproute2-made"));
    env.fake.add_host_veth_externally("nhfoo", "nhbar");
    drop(m);
    // The record of "lost" disappears from the state file (e.g. hand-edited), but its
    // mount stays in the ownership journal.
    let store = StateStore::new(&env.config.state_dir);
    let mut state = store.load().unwrap();
    state.pods.remove(&name("lost"));
    store.save(&state).unwrap();

    let m = env.manager();
    let report = m.reconcile().await;
    assert!(report.failures.is_empty(), "{report:?}");
    let lost = name("lost").id();
    let mut removed = report.orphans_removed.clone();
    removed.sort();
    let mut expected = vec![
        format!(
            "delete link {} in the host namespace",
            lost.host_veth_name()
        ),
        "delete netns /run/netns/lost".to_string(),
        format!("stop pause {stray} of pod {}", name("ghost").id()),
    ];
    let lost_pause = removed
        .iter()
        .find(|r| r.contains(&format!("of pod {lost}")))
        .cloned()
        .expect("lost pause stopped");
    expected.push(lost_pause);
    expected.sort();
    assert_eq!(removed, expected);
    let snap = env.fake.snapshot();
    assert_eq!(snap.mounts, vec![netns("iproute2-made"), netns("keep")]);
    assert!(snap.host_links.contains(&"nhfoo".to_string()));
    assert_eq!(snap.processes.len(), 1);
    assert_complete(&env, &m, "keep").await;
    assert!(
        store
            .load()
            .unwrap()
            .owned_netns
            .iter()
            .eq([netns("keep")].iter())
    );
}

#[tokio::test]
async fn state_survives_restart_and_ipam_continues_round_robin() {
    let env = Env::v4();
    {
        let m = env.manager();
        m.create(CreateRequest::new(name("a"))).await.unwrap();
        m.create(CreateRequest::new(name("b"))).await.unwrap();
        m.remove(&name("b")).await.unwrap();
    }
    let m = env.manager();
    assert!(m.reconcile().await.failures.is_empty());
    assert_eq!(m.list().len(), 1);
    assert_eq!(allocated(&m), 1);
    let c = m.create(CreateRequest::new(name("c"))).await.unwrap();
    // .3 was b's: just freed, not reused.
    assert_eq!(c.ips, vec!["10.88.0.4/16".parse::<IpNet>().unwrap()]);
    let status = m.status();
    assert_eq!((status.pods, status.ready, status.unfinished), (2, 2, 0));
    assert_eq!(status.state_file, env.dir.path().join("state/state.json"));
}

#[tokio::test]
async fn corrupt_state_file_stops_the_manager() {
    let env = Env::v4();
    std::fs::create_dir_all(&env.config.state_dir).unwrap();
    std::fs::write(env.config.state_file(), "{not json").unwrap();
    let err = PodManager::open(env.config.clone(), env.fake.clone(), logger())
        .err()
        .unwrap();
    assert!(matches!(
        err,
        ManagerError::State(StateError::Corrupt { .. })
    ));
    assert!(err.to_string().contains("state.json"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_creates_get_distinct_addresses() {
    let env = Env::dual();
    let m = Arc::new(env.manager());
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let m = Arc::clone(&m);
            tokio::spawn(async move {
                m.create(CreateRequest::new(name(&format!("pod-{i}"))))
                    .await
            })
        })
        .collect();
    let mut ips = BTreeSet::new();
    for t in tasks {
        for ip in t.await.unwrap().unwrap().ips {
            assert!(ips.insert(ip.addr()), "duplicate {ip}");
        }
    }
    assert_eq!(ips.len(), 100);
    assert_eq!(m.list().len(), 50);
    assert!(m.check().await.is_empty());
    // The persisted state agrees.
    assert_eq!(
        StateStore::new(&env.config.state_dir)
            .load()
            .unwrap()
            .pods
            .len(),
        50
    );

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let m = Arc::clone(&m);
            tokio::spawn(async move { m.remove(&name(&format!("pod-{i}"))).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().unwrap());
    }
    assert_clean(&env, &m);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_make_one_pod() {
    let env = Env::v4();
    let m = Arc::new(env.manager());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let m = Arc::clone(&m);
            tokio::spawn(async move { m.create(CreateRequest::new(name("same"))).await })
        })
        .collect();
    let mut infos = Vec::new();
    for t in tasks {
        infos.push(t.await.unwrap().unwrap());
    }
    assert!(infos.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(env.fake.snapshot().processes.len(), 1);
    assert_eq!(allocated(&m), 1);
    assert!(
        m.pod_locks.map.lock().unwrap().is_empty(),
        "per-pod locks are cleaned up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_waits_for_in_flight_creates() {
    let env = Env::v4();
    let m = Arc::new(env.manager());
    let creates: Vec<_> = (0..10)
        .map(|i| {
            let m = Arc::clone(&m);
            tokio::spawn(async move { m.create(CreateRequest::new(name(&format!("p{i}")))).await })
        })
        .collect();
    let checker = {
        let m = Arc::clone(&m);
        tokio::spawn(async move { m.check().await })
    };
    // Whatever the interleaving, check never sees a half-made pod.
    let findings = checker.await.unwrap();
    assert!(findings.is_empty(), "{findings:?}");
    for t in creates {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn remove_after_crash_stops_the_unrecorded_pause() {
    let env = Env::v4();
    {
        let m = env.manager();
        // Crash right after the pause started: its pid was never recorded.
        let calls = create_calls(&Env::v4(), &|| {
            Request::Create(CreateRequest::new(name("web")))
        })
        .await;
        let k = calls
            .iter()
            .position(|c| c.starts_with("start_pause"))
            .unwrap()
            + 1;
        env.fake.crash_after(env.fake.call_count() + k);
        m.create(CreateRequest::new(name("web"))).await.unwrap_err();
    }
    env.fake.revive();
    assert_eq!(env.fake.snapshot().processes.len(), 1);
    let m = env.manager();
    assert_eq!(m.records()[0].pause, None);
    // No reconcile: an explicit remove alone must find and stop the pause.
    assert!(m.remove(&name("web")).await.unwrap());
    assert_clean(&env, &m);
}

#[tokio::test]
async fn crash_at_every_step_of_remove_then_reconcile_finishes_it() {
    for (label, make_env, request) in scenarios() {
        let probe = make_env();
        let m = probe.manager();
        run(&m, request()).await.unwrap();
        let before = probe.fake.call_count();
        m.remove(&name("web")).await.unwrap();
        let steps = probe.fake.calls()[before..].to_vec();
        for k in 0..steps.len() {
            let env = make_env();
            {
                let m = env.manager();
                run(&m, request()).await.unwrap();
                env.fake.crash_after(env.fake.call_count() + k);
                assert!(
                    m.remove(&name("web")).await.is_err(),
                    "{label} crash after {k}"
                );
            }
            env.fake.revive();
            let m = env.manager();
            // The caller was not answered, so the pod may not come back.
            assert!(m.get(&name("web")).is_none(), "{label} crash after {k}");
            let report = m.reconcile().await;
            assert!(
                report.failures.is_empty(),
                "{label} crash after {k}: {report:?}"
            );
            assert_eq!(
                report.finished_removal,
                vec![name("web")],
                "{label} crash after {k}"
            );
            assert_web_gone(&env, &m, &format!("{label} remove crash after {k}"));
        }
    }
}

#[tokio::test]
async fn deleted_bridge_is_reported_and_rebuilt_with_its_ports() {
    let env = Env::dual();
    let m = env.manager();
    let a = m.create(CreateRequest::new(name("a"))).await.unwrap();
    let b = m.create(CreateRequest::new(name("b"))).await.unwrap();
    env.fake.delete_link_externally(None, "nh0");
    let findings: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert_eq!(
        findings,
        vec![
            "bridge nh0: missing".to_string(),
            format!(
                "pod a: link {}: not attached, expected bridge nh0",
                a.host_veth
            ),
            format!(
                "pod b: link {}: not attached, expected bridge nh0",
                b.host_veth
            ),
        ]
    );
    let report = m.repair().await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(m.check().await.is_empty());
    let bridge = env.fake.peek_link(None, "nh0").unwrap();
    assert!(bridge.up);
    assert_eq!(
        bridge.addresses,
        vec![
            "10.88.0.1/16".parse::<IpNet>().unwrap(),
            "fd00:88::1/64".parse().unwrap()
        ]
    );
}

#[tokio::test]
async fn no_pods_means_no_bridge_is_created_by_reconcile() {
    let env = Env::v4();
    let m = env.manager();
    let report = m.reconcile().await;
    assert_eq!(report, ReconcileReport::default());
    assert!(env.fake.snapshot().host_links.is_empty());
    assert!(m.check().await.is_empty());
}

// ---------------------------------------------------------------- host ports

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

#[tokio::test]
async fn host_ports_are_published_and_removing_a_pod_removes_exactly_its_elements() {
    let env = Env::dual();
    let m = env.manager();
    let web = m
        .create(with_ports("web", &["8080:80", "10.0.0.1:8443:443/tcp"]))
        .await
        .unwrap();
    assert_eq!(web.ports, ports(&["8080:80", "10.0.0.1:8443:443"]));
    let db = m
        .create(with_ports("db", &["5432:5432", "8080:80/udp"]))
        .await
        .unwrap();
    let mut expected = vec![
        "10.0.0.1 . tcp . 8443 : 10.88.0.2 . 443 in hostport_v4",
        "tcp . 8080 : 10.88.0.2 . 80 in hostport_any_v4",
        "tcp . 5432 : 10.88.0.3 . 5432 in hostport_any_v4",
        "udp . 8080 : 10.88.0.3 . 80 in hostport_any_v4",
        "tcp . 8080 : fd00:88::2 . 80 in hostport_any_v6",
        "tcp . 5432 : fd00:88::3 . 5432 in hostport_any_v6",
        "udp . 8080 : fd00:88::3 . 80 in hostport_any_v6",
    ];
    let mut actual = element_texts(&env);
    expected.sort();
    actual.sort();
    assert_eq!(actual, expected);
    assert!(env.fake.hairpin(web.host_veth.as_str()));
    assert!(env.fake.hairpin(db.host_veth.as_str()));
    assert!(env.fake.route_localnet("nh0"));
    assert_complete(&env, &m, "web").await;
    assert_eq!(m.status().host_ports, 4);

    // Idempotent with the same ports in any order; different ports are a conflict.
    let again = m
        .create(with_ports("web", &["10.0.0.1:8443:443", "8080:80"]))
        .await
        .unwrap();
    assert_eq!(again, web);
    let err = m.create(with_ports("web", &["8080:80"])).await.unwrap_err();
    assert!(matches!(err, ManagerError::Conflict { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("its host ports are [tcp 8080 -> 80, tcp 10.0.0.1:8443 -> 443], the request has [tcp 8080 -> 80]"),
        "{err}"
    );

    m.remove(&name("web")).await.unwrap();
    let left: Vec<String> = element_texts(&env)
        .into_iter()
        .filter(|e| e.contains("10.88.0.2") || e.contains("fd00:88::2"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(element_texts(&env).len(), 4, "db's elements stay");
    assert!(m.check().await.is_empty());
    m.remove(&name("db")).await.unwrap();
    assert_eq!(env.fake.firewall_elements(), Some(vec![]));
    assert_clean(&env, &m);
}

#[tokio::test]
async fn a_port_held_by_a_socket_on_the_node_is_refused() {
    let env = Env::v4();
    let m = env.manager();
    env.fake.set_listeners(vec![crate::firewall::Listener {
        protocol: Protocol::Tcp,
        address: "::".parse().unwrap(),
        port: 8080,
        owner: Some("pid 42 (nginx)".to_string()),
    }]);
    let calls = env.fake.call_count();
    let err = m
        .create(with_ports("web", &["10.0.0.1:8080:80"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pod web: host port tcp 10.0.0.1:8080 -> 80 is already taken by a listening TCP socket \
         on [::]:8080 of pid 42 (nginx) in the node network namespace"
    );
    // Only the queries ran: nothing was recorded or created.
    assert_eq!(
        env.fake.calls()[calls..],
        [
            "default_route_mtu".to_string(),
            "listeners tcp/8080".to_string()
        ]
    );
    assert!(m.records().is_empty());
    // UDP on the same port is free.
    m.create(with_ports("web", &["8080:80/udp"])).await.unwrap();
}

#[tokio::test]
async fn ports_must_fit_the_pod_families_and_be_distinct() {
    let env = Env::v4();
    let m = env.manager();
    let err = m
        .create(with_ports("web", &["[fd00::1]:80:80"]))
        .await
        .unwrap_err();
    assert!(matches!(err, ManagerError::PortAddress { .. }), "{err}");
    assert!(err.to_string().contains("no ipv6 address"), "{err}");
    assert_eq!(allocated(&m), 0);
    let dup = CreateRequest {
        ports: vec![
            PortMapping::new(80, 80, Protocol::Tcp),
            PortMapping::new(80, 81, Protocol::Tcp),
        ],
        ..CreateRequest::new(name("web"))
    };
    let err = m.create(dup).await.unwrap_err();
    assert!(matches!(err, ManagerError::Ports { .. }), "{err}");
    assert!(m.records().is_empty());
}

#[tokio::test]
async fn rollback_when_the_firewall_step_fails() {
    let env = Env::v4();
    let m = env.manager();
    env.fake.fail_on("add_elements");
    let err = m.create(with_ports("web", &["8080:80"])).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("publish 1 host port element(s) of pod web"),
        "{msg}"
    );
    assert!(msg.ends_with("; rolled back"), "{msg}");
    assert_web_gone(&env, &m, "firewall failure");
    env.fake.clear_failures();
    // An element somebody else put in our map with the same key fails the transaction
    // and is left alone.
    let foreign = crate::firewall::HostPortElement {
        map: crate::firewall::HostPortMap::AnyV4,
        host_ip: None,
        protocol: Protocol::Tcp,
        host_port: 8080,
        pod_ip: "10.1.2.3".parse().unwrap(),
        pod_port: 1,
    };
    env.fake.add_element_externally(foreign);
    let err = m.create(with_ports("web", &["8080:80"])).await.unwrap_err();
    assert!(
        err.to_string().contains("element { tcp . 8080 : 10.88.0."),
        "{err}"
    );
    assert!(err.to_string().contains("already exists"), "{err}");
    assert_eq!(env.fake.firewall_elements(), Some(vec![foreign]));
    env.fake.delete_element_externally(&foreign);
    m.create(with_ports("web", &["8080:80"])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_cannot_both_take_a_port() {
    let env = Env::v4();
    let m = Arc::new(env.manager());
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let m = m.clone();
            tokio::spawn(async move { m.create(with_ports(&format!("p{i}"), &["8080:80"])).await })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(matches!(e, ManagerError::PortInUse { .. }), "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(env.fake.firewall_elements().unwrap().len(), 1);
}

#[tokio::test]
async fn udp_conntrack_is_flushed_on_create_and_remove() {
    use crate::fake::FakeConntrack;
    let env = Env::v4();
    let m = env.manager();
    let entry = |src: &str, port| FakeConntrack {
        reply_source: src.parse().unwrap(),
        destination_port: port,
    };
    // A client hammering the port before it is published; an unrelated flow.
    env.fake
        .add_conntrack(&[entry("10.9.9.9", 5353), entry("10.9.9.9", 9999)]);
    m.create(with_ports("dns", &["5353:53/udp", "8080:80"]))
        .await
        .unwrap();
    assert_eq!(env.fake.conntrack(), [entry("10.9.9.9", 9999)]);
    // Flows DNATed to the pod, then the pod goes.
    env.fake
        .add_conntrack(&[entry("10.88.0.2", 40000), entry("10.9.9.9", 5353)]);
    m.remove(&name("dns")).await.unwrap();
    assert_eq!(env.fake.conntrack(), [entry("10.9.9.9", 9999)]);
    // TCP-only pods do not touch conntrack.
    let calls = env.fake.call_count();
    m.create(with_ports("web", &["8081:80"])).await.unwrap();
    assert!(
        !env.fake.calls()[calls..]
            .iter()
            .any(|c| c.starts_with("flush_conntrack")),
        "{:?}",
        env.fake.calls()
    );
}

#[tokio::test]
async fn check_finds_firewall_drift_and_repair_or_reload_restores_it() {
    let env = Env::dual();
    let m = env.manager();
    m.create(with_ports("web", &["8080:80"])).await.unwrap();
    let web_elements = env.fake.firewall_elements().unwrap();
    env.fake.delete_element_externally(&web_elements[0]);
    env.fake
        .add_foreign_rule_externally("tcp dport 22 dnat ip to 10.9.9.9");
    env.fake
        .remove_rule_externally("iifname \"nh0\" ip daddr 127.0.0.0/8 drop");
    let found: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "nftables table inet netns_holder: `iifname \"nh0\" ip daddr 127.0.0.0/8 drop`: missing",
            "nftables table inet netns_holder: `tcp dport 22 dnat ip to 10.9.9.9`: foreign (not put there by netns-holder)",
            "pod web: element { tcp . 8080 : 10.88.0.2 . 80 } of map hostport_any_v4: missing",
        ]
    );
    let report = m.repair().await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(
        report.node_actions,
        ["replace nftables table inet netns_holder (2 host port element(s))"]
    );
    assert!(m.check().await.is_empty());

    // `nft flush ruleset`: reported, and a restarted daemon (reconcile) re-creates it.
    env.fake.flush_ruleset_externally();
    assert_eq!(
        m.check()
            .await
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["nftables table inet netns_holder: missing"]
    );
    let m = env.manager();
    m.reconcile().await;
    assert_eq!(env.fake.firewall_elements().unwrap().len(), 2);
    assert!(m.check().await.is_empty());

    // reload always replaces the table, drift or not.
    env.fake.flush_ruleset_externally();
    let reload = m.reload().await;
    assert_eq!(reload.host_port_elements, 2);
    assert!(reload.failures.is_empty());
    assert!(m.check().await.is_empty());
    let reload = m.reload().await;
    assert_eq!(reload.actions.len(), 1, "{reload:?}");
}

#[tokio::test]
async fn a_rebuilt_bridge_gets_route_localnet_and_its_ports_hairpin_back() {
    let env = Env::v4();
    let m = env.manager();
    let web = m.create(with_ports("web", &["8080:80"])).await.unwrap();
    env.fake.delete_link_externally(None, "nh0");
    assert!(!env.fake.route_localnet("nh0"));
    m.repair().await;
    assert!(env.fake.route_localnet("nh0"));
    assert!(env.fake.hairpin(web.host_veth.as_str()));
    assert!(m.check().await.is_empty());
}

// ---------------------------------------------------------------- peers

#[tokio::test]
async fn releasing_ports_withdraws_exactly_that_pods_elements_and_frees_them() {
    use crate::fake::FakeConntrack;
    let env = Env::dual();
    let m = env.manager();
    let web = m
        .create(with_ports("web", &["8080:80", "5353:53/udp"]))
        .await
        .unwrap();
    m.create(with_ports("db", &["5432:5432"])).await.unwrap();
    let db_elements: Vec<String> = element_texts(&env)
        .into_iter()
        .filter(|e| e.contains("5432"))
        .collect();
    assert_eq!(db_elements.len(), 2, "{db_elements:?}");
    env.fake.add_conntrack(&[FakeConntrack {
        reply_source: "10.88.0.2".parse().unwrap(),
        destination_port: 40000,
    }]);

    assert!(m.release_pod_ports(&name("web")).await.unwrap());
    // Only db's elements are left; web's UDP flows are flushed; web stays wired.
    assert_eq!(element_texts(&env), db_elements);
    assert!(env.fake.conntrack().is_empty());
    assert_complete(&env, &m, "web").await;
    let info = m.get(&name("web")).unwrap();
    assert!(info.ports_released);
    assert_eq!(info.ports, web.ports, "the create parameters are kept");
    assert_eq!(m.status().host_ports, 1);
    assert!(m.check().await.is_empty(), "{:?}", m.check().await);

    // Idempotent: nothing is touched the second time.
    let calls = env.fake.call_count();
    assert!(!m.release_pod_ports(&name("web")).await.unwrap());
    assert_eq!(env.fake.calls()[calls..], [] as [String; 0]);
    // A pod without ports has nothing to release.
    m.create(CreateRequest::new(name("plain"))).await.unwrap();
    assert!(!m.release_pod_ports(&name("plain")).await.unwrap());

    // The ports are free: another pod takes them.
    m.create(with_ports("web2", &["8080:80", "5353:53/udp"]))
        .await
        .unwrap();
    assert!(m.check().await.is_empty());
    // Ensuring web again with the same ports (e.g. a plugin's Synchronize) is idempotent,
    // publishes nothing and does not fail although web2 holds them now; other ports are
    // still a conflict.
    let calls = env.fake.call_count();
    let again = m
        .create(with_ports("web", &["5353:53/udp", "8080:80"]))
        .await
        .unwrap();
    assert!(again.ports_released);
    assert!(
        !env.fake.calls()[calls..]
            .iter()
            .any(|c| c.starts_with("add_elements")),
        "{:?}",
        &env.fake.calls()[calls..]
    );
    let err = m.create(with_ports("web", &["8080:80"])).await.unwrap_err();
    assert!(matches!(err, ManagerError::Conflict { .. }), "{err}");

    // A restarted daemon keeps it released and does not publish it again.
    let m = env.manager();
    let report = m.reconcile().await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.node_actions.is_empty(), "{report:?}");
    assert!(m.get(&name("web")).unwrap().ports_released);
    assert!(m.check().await.is_empty());
    // Removing the released pod leaves web2's elements (same keys) alone.
    let before = element_texts(&env);
    m.remove(&name("web")).await.unwrap();
    assert_eq!(element_texts(&env), before);
    assert!(m.check().await.is_empty());
}

#[tokio::test]
async fn a_release_that_cannot_be_saved_changes_nothing() {
    let env = Env::v4();
    let m = env.manager();
    m.create(with_ports("web", &["8080:80"])).await.unwrap();
    let blocked = SavesBlocked::new(&env);
    let err = m.release_pod_ports(&name("web")).await.unwrap_err();
    assert!(matches!(err, ManagerError::State(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&blocked.journal.display().to_string()),
        "{err}"
    );
    assert!(!m.get(&name("web")).unwrap().ports_released);
    assert_eq!(element_texts(&env).len(), 1);
    assert!(m.check().await.is_empty());
    // Still held: another pod cannot take the port.
    let err = m.create(with_ports("db", &["8080:80"])).await.unwrap_err();
    assert!(matches!(err, ManagerError::PortInUse { .. }), "{err}");
    blocked.lift();
    assert!(m.release_pod_ports(&name("web")).await.unwrap());
    assert!(element_texts(&env).is_empty());
}

/// `/proc/<pid>/ns/net` of a pid that died and was reused names another namespace: the pod
/// it was attached for is gone, and nothing may be checked, repaired or wired in the new
/// one on that pod's behalf.
#[tokio::test]
async fn an_attached_path_that_names_another_namespace_is_not_the_pod() {
    let env = Env::v4();
    let m = env.manager();
    let path = PathBuf::from("/proc/4242/ns/net");
    env.fake.add_foreign_netns(&path);
    let req = AttachRequest {
        name: name("ctr"),
        netns: path.clone(),
        annotations: BTreeMap::new(),
        ports: Vec::new(),
    };
    let first = m.attach(req.clone()).await.unwrap();
    let wired = m.records()[0]
        .netns_id
        .expect("attached namespace identity recorded");
    assert_complete(&env, &m, "ctr").await;

    env.fake.replace_netns_externally(&path);
    let findings: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert!(
        findings.contains(&format!(
            "pod ctr: netns {}: names another namespace than the pod's, whose own namespace is gone",
            path.display()
        )),
        "{findings:?}"
    );
    let report = m.repair().await;
    assert_eq!(report.removed_dead, vec![name("ctr")], "{report:?}");
    assert_eq!(
        env.fake.links_in(&path),
        Some(vec![]),
        "nothing made in the stranger"
    );
    assert!(m.records().is_empty());

    // Attaching again wires the namespace the path names now, under its own identity.
    let second = m.attach(req.clone()).await.unwrap();
    assert_eq!(second.name, first.name);
    assert_ne!(m.records()[0].netns_id, Some(wired));
    assert_complete(&env, &m, "ctr").await;

    // And an ensure that finds the path replaced (no repair in between) re-wires it too,
    // rather than answering with the dead pod.
    let before = m.records()[0].netns_id;
    env.fake.replace_netns_externally(&path);
    m.attach(req).await.unwrap();
    assert_ne!(m.records()[0].netns_id, before);
    assert_complete(&env, &m, "ctr").await;
    assert!(m.remove(&name("ctr")).await.unwrap());
    assert!(m.records().is_empty());
    assert_eq!(env.fake.snapshot().mounts, vec![path.clone()]);
    assert_eq!(env.fake.links_in(&path), Some(vec![]));
    assert!(
        env.fake.snapshot().host_links.iter().all(|l| l == "nh0"),
        "{:?}",
        env.fake.snapshot().host_links
    );
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn exempt_now(env: &Env) -> Vec<IpNet> {
    env.fake.egress_exempt().expect("a table").cidrs()
}

/// The egress sets follow the peer list through `peers_changed`, for API peers added and
/// removed, without replacing the table (host port elements stay as they are).
#[tokio::test]
async fn egress_exemptions_follow_the_peers() {
    let env = Env::dual();
    let m = env.manager();
    m.create(CreateRequest {
        ports: ports(&["8080:80"]),
        ..CreateRequest::new(name("web"))
    })
    .await
    .unwrap();
    assert_eq!(exempt_now(&env), nets(&["10.88.0.0/16", "fd00:88::/64"]));
    let elements = env.fake.firewall_elements().unwrap();
    let replaced = env.fake.calls_starting_with("replace_table");

    let b = crate::peers::Peer {
        pod_cidr: "10.89.0.0/16".parse().unwrap(),
        via: "192.168.50.2".parse().unwrap(),
    };
    let c = crate::peers::Peer {
        pod_cidr: "fd00:89::/64".parse().unwrap(),
        via: "fd99::2".parse().unwrap(),
    };
    assert!(m.add_peer(b).await.unwrap());
    assert!(m.add_peer(c).await.unwrap());
    // 10.88.0.0/16 and 10.89.0.0/16 aggregate.
    assert_eq!(
        exempt_now(&env),
        nets(&["10.88.0.0/15", "fd00:88::/64", "fd00:89::/64"])
    );
    assert_eq!(m.egress_exempt().cidrs(), exempt_now(&env));
    assert!(m.remove_peer(b.pod_cidr).await.unwrap());
    assert_eq!(
        exempt_now(&env),
        nets(&["10.88.0.0/16", "fd00:88::/64", "fd00:89::/64"])
    );
    assert_eq!(env.fake.calls_starting_with("replace_table"), replaced);
    assert_eq!(env.fake.firewall_elements().unwrap(), elements);
    assert!(m.check().await.is_empty(), "{:?}", m.check().await);
}

/// Set drift is reported by `check` and fixed by `repair` with a set sync alone; a failed
/// sync after a peer change keeps the peer, says so, and repair catches up.
#[tokio::test]
async fn egress_set_drift_is_checked_and_repaired() {
    let env = Env::v4();
    let m = env.manager();
    let b = crate::peers::Peer {
        pod_cidr: "10.89.0.0/16".parse().unwrap(),
        via: "192.168.50.2".parse().unwrap(),
    };
    env.fake.fail_on("sync_egress_exempt");
    let err = m.add_peer(b).await.unwrap_err();
    assert!(matches!(err, ManagerError::EgressExempt { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("egress exemptions of nftables table inet netns_holder")
            && text.contains("10.88.0.0/15")
            && text.contains("check --repair"),
        "{text}"
    );
    env.fake.clear_failures();
    assert_eq!(m.peers().len(), 1, "the peer change is kept");
    assert_eq!(env.fake.peer_route_list(), [(b.pod_cidr, b.via)]);
    let found: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "element { 10.88.0.0/15 } of set egress_exempt_v4: missing",
            "element { 10.88.0.0/16 } of set egress_exempt_v4: foreign (not put there by netns-holder)",
        ]
    );
    let replaced = env.fake.calls_starting_with("replace_table");
    let report = m.repair().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_eq!(
        report.node_actions,
        ["set the egress exemptions of nftables table inet netns_holder to 10.88.0.0/15"]
    );
    assert_eq!(env.fake.calls_starting_with("replace_table"), replaced);
    assert_eq!(exempt_now(&env), nets(&["10.88.0.0/15"]));
    assert!(m.check().await.is_empty());

    // Someone deletes the egress rule: the rule is reported, and repair replaces the table.
    let rule = "ip saddr 10.88.0.0/16 ip daddr != @egress_exempt_v4 masquerade";
    env.fake.remove_rule_externally(rule);
    let found: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [format!(
            "nftables table inet netns_holder: `{rule}`: missing"
        )]
    );
    let report = m.repair().await;
    assert_eq!(
        env.fake.calls_starting_with("replace_table"),
        replaced + 1,
        "{report:?}"
    );
    assert!(m.check().await.is_empty());
    assert_eq!(exempt_now(&env), nets(&["10.88.0.0/15"]));
}

/// Configured peers and `no_masquerade_cidrs` are exempt from the start (reconcile), and
/// `masquerade = false` leaves the egress chain out.
#[tokio::test]
async fn configured_exemptions_apply_at_start_and_masquerade_can_be_off() {
    let mut env = Env::dual();
    env.config.peers = vec![crate::peers::Peer {
        pod_cidr: "10.77.0.0/16".parse().unwrap(),
        via: "192.168.50.7".parse().unwrap(),
    }];
    env.config.no_masquerade_cidrs = nets(&["192.0.2.0/24", "fd00:99::/48"]);
    let m = env.manager();
    m.reconcile().await;
    assert_eq!(
        exempt_now(&env),
        nets(&[
            "10.77.0.0/16",
            "10.88.0.0/16",
            "192.0.2.0/24",
            "fd00:88::/64",
            "fd00:99::/48"
        ])
    );
    assert!(m.check().await.is_empty());

    env.config.masquerade = false;
    let m = env.manager();
    let found: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert!(
        found.iter().any(|f| f.contains("`jump egress`: foreign")),
        "{found:?}"
    );
    m.reconcile().await;
    assert!(m.check().await.is_empty());
    let lines = crate::firewall::expected_lines(&crate::firewall::FirewallBase {
        bridge: env.config.bridge.clone(),
        pod_cidr_v4: env.config.pod_cidr_v4,
        pod_cidr_v6: env.config.pod_cidr_v6,
        masquerade: false,
        datapath: Default::default(),
    });
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("masquerade") && l.contains("egress"))
    );
    // The sets stay filled: turning masquerade on again needs no peer to change.
    assert_eq!(exempt_now(&env).len(), 5);
}

const KERNEL_DEFAULTS: crate::neigh::Thresholds = crate::fake::KERNEL_DEFAULT_NEIGH;

/// Where the node may write them, the tables are raised for the capacity (never lowered),
/// and nothing limits creates.
#[tokio::test]
async fn neighbour_tables_are_raised_for_the_capacity() {
    use crate::neigh::{Outcome, Thresholds};
    let env = Env::dual();
    let operator = Thresholds {
        gc_thresh1: 4096,
        gc_thresh2: 300_000,
        gc_thresh3: 2048,
    };
    env.fake
        .set_neighbour_tables(operator, KERNEL_DEFAULTS, None);
    let m = env.manager();
    let report = m.size_neighbour_tables().await;
    assert_eq!(report.capacity, 65533);
    let [v4, v6] = report.tables.as_slice() else {
        panic!("{report:?}")
    };
    assert_eq!(v4.outcome, Outcome::Raised);
    assert_eq!(
        v4.current,
        Thresholds {
            gc_thresh1: 4096,
            gc_thresh2: 300_000,
            gc_thresh3: 65533 * 4 + 1024,
        }
    );
    assert_eq!(v6.previous, KERNEL_DEFAULTS);
    assert_eq!(v6.current.gc_thresh3, 65533 * 16 + 1024);
    assert_eq!(env.fake.neighbour_tables(), (v4.current, v6.current));
    assert_eq!(m.status().neighbour_tables, Some(report.clone()));
    m.create(CreateRequest::new(name("web"))).await.unwrap();
    // Sufficient now: a restart writes nothing.
    let m = env.manager();
    let writes = env.fake.calls_starting_with("set_neighbour_thresholds");
    let again = m.size_neighbour_tables().await;
    assert!(
        again
            .tables
            .iter()
            .all(|t| t.outcome == Outcome::Sufficient)
    );
    assert_eq!(
        env.fake.calls_starting_with("set_neighbour_thresholds"),
        writes
    );
}

/// Where they cannot be written, nothing changes and creates stop at what they hold, with
/// an error naming the sysctl.
#[tokio::test]
async fn unraisable_neighbour_tables_limit_creates() {
    use crate::neigh::{Outcome, Thresholds};
    let env = Env::new("10.88.0.0/24", None);
    let small = Thresholds {
        gc_thresh1: 2,
        gc_thresh2: 4,
        gc_thresh3: 6,
    };
    env.fake
        .set_neighbour_tables(small, KERNEL_DEFAULTS, Some("not the initial namespace"));
    let m = env.manager();
    // Before sizing nothing is limited (the daemon sizes before serving).
    let report = m.size_neighbour_tables().await;
    assert_eq!(report.tables.len(), 1, "IPv4 only");
    let t = &report.tables[0];
    assert_eq!(t.outcome, Outcome::NotRaised);
    assert_eq!(t.pod_limit, Some(3));
    assert_eq!(t.current, small);
    assert_eq!(env.fake.neighbour_tables().0, small);
    for pod in ["a", "b", "c"] {
        m.create(CreateRequest::new(name(pod))).await.unwrap();
    }
    let err = m.create(CreateRequest::new(name("d"))).await.unwrap_err();
    assert!(
        matches!(err, ManagerError::NeighbourLimit { limit: 3, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(
            "pod d: refused: the kernel's ipv4 neighbour table holds entries for 3 pods"
        ) && text.contains("net.ipv4.neigh.default.gc_thresh3 = 6")
            && text.contains("gc_thresh3=2036")
            && text.contains("not the initial namespace"),
        "{text}"
    );
    assert_eq!(m.list().len(), 3);
    // An existing pod is still answered (idempotent), and a removal makes room.
    m.create(CreateRequest::new(name("a"))).await.unwrap();
    assert!(m.remove(&name("a")).await.unwrap());
    m.create(CreateRequest::new(name("d"))).await.unwrap();

    // Tables that hold every pod's own entries but not the headroom: not raised, no limit.
    let env = Env::new("10.88.0.0/28", None);
    env.fake
        .set_neighbour_tables(KERNEL_DEFAULTS, KERNEL_DEFAULTS, Some("read only"));
    let report = env.manager().size_neighbour_tables().await;
    assert_eq!(report.capacity, 13);
    assert_eq!(report.tables[0].outcome, Outcome::NotRaised);
    assert_eq!(report.tables[0].pod_limit, None);
    assert_eq!(report.pod_limit().map(|(l, _)| l), None);
}

fn peer(cidr: &str, via: &str) -> crate::peers::Peer {
    crate::peers::Peer {
        pod_cidr: cidr.parse().unwrap(),
        via: via.parse().unwrap(),
    }
}

/// Cluster peers: a full set each time; routes follow (added, removed, moved), static peers
/// win over an overlapping cluster peer, the egress sets follow, and the list survives a
/// restart; RemovePeer refuses a cluster peer.
#[tokio::test]
async fn cluster_peers_follow_the_cluster_and_static_peers_win() {
    let env = Env::v4();
    let m = env.manager();
    let fixed = peer("10.90.0.0/24", "192.168.50.9");
    assert!(m.add_peer(fixed).await.unwrap());
    let b = peer("10.89.1.0/24", "192.168.50.2");
    let c = peer("10.89.2.0/24", "192.168.50.3");
    let clash = peer("10.90.0.0/25", "192.168.50.4");
    let own = peer("10.88.5.0/24", "192.168.50.5");
    let report = m.set_cluster_peers(&[b, c, clash, own]).await.unwrap();
    assert_eq!(report.added, [b, c]);
    assert!(report.removed.is_empty());
    let refused: Vec<String> = report
        .refused
        .iter()
        .map(|(p, why)| format!("{p}: {why}"))
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(
        refused[0].contains("overlaps peer 10.90.0.0/24"),
        "{refused:?}"
    );
    assert!(
        refused[1].contains("overlaps this node's pod CIDR"),
        "{refused:?}"
    );
    let mut routes = env.fake.peer_route_list();
    routes.sort();
    assert_eq!(
        routes,
        [
            (b.pod_cidr, b.via),
            (c.pod_cidr, c.via),
            (fixed.pod_cidr, fixed.via)
        ]
    );
    assert_eq!(
        exempt_now(&env),
        nets(&[
            "10.88.0.0/16",
            "10.89.1.0/24",
            "10.89.2.0/24",
            "10.90.0.0/24"
        ])
    );
    // The same set again: nothing to do.
    assert!(m.set_cluster_peers(&[b, c]).await.unwrap().added.is_empty());
    // c leaves, b moves to another address.
    let b2 = peer("10.89.1.0/24", "192.168.50.12");
    let report = m.set_cluster_peers(&[b2]).await.unwrap();
    assert_eq!(report.added, [b2]);
    assert_eq!(report.removed, [b, c]);
    let mut routes = env.fake.peer_route_list();
    routes.sort();
    assert_eq!(routes, [(b2.pod_cidr, b2.via), (fixed.pod_cidr, fixed.via)]);
    let err = m.remove_peer(b2.pod_cidr).await.unwrap_err().to_string();
    assert!(err.contains("learnt from the cluster"), "{err}");
    assert!(m.check().await.is_empty(), "{:?}", m.check().await);
    // A cluster peer's route deleted behind the daemon's back: check reports it, repair
    // puts it back, like a static peer's.
    env.fake.delete_route_externally(b2.pod_cidr, b2.via);
    let found: Vec<String> = m.check().await.iter().map(ToString::to_string).collect();
    assert_eq!(found, ["route 10.89.1.0/24 via 192.168.50.12: missing"]);
    let report = m.repair().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(m.check().await.is_empty(), "{:?}", m.check().await);
    let sources: Vec<&str> = m.peers().iter().map(|p| p.source.kind()).collect();
    assert_eq!(sources, ["etcd", "static"]);
    // A restart in cluster mode keeps them (routes stay while the store is unreachable) ...
    drop(m);
    let mut config = env.config.clone();
    config.pod_cidr_v4 = "10.88.0.0/24".parse().unwrap();
    config.cluster = Some(cluster_config());
    let m = PodManager::open(config, env.fake.clone(), logger()).unwrap();
    assert_eq!(m.peers().len(), 2);
    // ... and a start out of cluster mode drops them.
    drop(m);
    let m = env.manager();
    assert_eq!(
        m.peers().iter().map(|p| p.peer()).collect::<Vec<_>>(),
        [fixed]
    );
}

fn cluster_config() -> crate::cluster::ClusterConfig {
    let config = Config::from_toml_str(
        "[cluster]\nbackend = \"etcd\"\netcd_endpoints = [\"http://192.0.2.5:2379\"]\n\
         cluster_cidr_v4 = \"10.88.0.0/16\"\n",
        "<test>",
    )
    .unwrap();
    config.cluster.unwrap()
}

/// A route the kernel refuses leaves the peer out (reported); a subnet conflict refuses new
/// pods with the reason, but not an existing pod's idempotent create.
#[tokio::test]
async fn cluster_route_failures_and_conflicts() {
    let env = Env::v4();
    let m = env.manager();
    m.create(CreateRequest::new(name("old"))).await.unwrap();
    env.fake.fail_on("add_route");
    let b = peer("10.89.1.0/24", "192.168.50.2");
    let report = m.set_cluster_peers(&[b]).await.unwrap();
    assert!(report.added.is_empty());
    assert_eq!(report.refused.len(), 1);
    assert!(m.peers().is_empty());
    env.fake.clear_failures();
    assert_eq!(m.set_cluster_peers(&[b]).await.unwrap().added, [b]);

    let reason = "subnet 10.88.0.0/24 of node-a is held by node-b now".to_string();
    m.set_cluster_conflict(Some(reason.clone()));
    let err = m.create(CreateRequest::new(name("new"))).await.unwrap_err();
    assert!(matches!(err, ManagerError::ClusterConflict { .. }), "{err}");
    assert!(err.to_string().contains(&reason), "{err}");
    m.create(CreateRequest::new(name("old"))).await.unwrap();
    m.set_cluster_conflict(None);
    m.create(CreateRequest::new(name("new"))).await.unwrap();
}

#[tokio::test]
async fn routed_pods_are_checked_clean_and_a_changed_datapath_is_refused_while_pods_exist() {
    use crate::datapath::Datapath;
    let mut env = Env::dual();
    env.config.datapath = Datapath::Routed;
    // The table a routed daemon's start creates (its guard matches the host veths).
    env.fake.install_table(crate::firewall::FirewallBase {
        bridge: env.config.bridge.clone(),
        pod_cidr_v4: env.config.pod_cidr_v4,
        pod_cidr_v6: env.config.pod_cidr_v6,
        masquerade: env.config.masquerade,
        datapath: Datapath::Routed,
    });
    let m = env.manager();
    let info = m.create(CreateRequest::new(name("web"))).await.unwrap();
    assert_eq!(
        info.ips,
        vec![
            "10.88.0.2/32".parse::<ipnet::IpNet>().unwrap(),
            "fd00:88::2/128".parse().unwrap()
        ]
    );
    assert_eq!(
        info.gateways,
        vec![
            "169.254.1.1".parse::<std::net::IpAddr>().unwrap(),
            "fe80::1".parse().unwrap()
        ]
    );
    // The node's addresses on lo, the pod's host routes and neighbours: nothing drifts.
    assert_eq!(m.check().await, vec![]);
    drop(m);

    let bridge = Config {
        datapath: Datapath::Bridge,
        ..env.config.clone()
    };
    let err = PodManager::open(bridge.clone(), env.fake.clone(), logger())
        .err()
        .unwrap();
    assert!(matches!(err, ManagerError::DatapathChanged { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("`datapath` = \"bridge\"")
            && msg.contains("pod web")
            && msg.contains("routed datapath"),
        "{msg}"
    );
    // The same datapath opens; without pods, another one does too.
    let m = env.manager();
    assert!(m.remove(&name("web")).await.unwrap());
    drop(m);
    PodManager::open(bridge, env.fake.clone(), logger()).unwrap();
}
