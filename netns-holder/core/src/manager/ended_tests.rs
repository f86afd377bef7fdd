//! Tests of the pods that end without a runtime event (kernel events), of publishing more
//! host ports on an existing pod, and of `attach` leaving a namespace another plugin wired,
//! against the in-memory [`FakeSystem`] (whose kernel emits the events the real one does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use slog::{Logger, o};

use super::*;
use crate::fake::FakeSystem;
use crate::kernel::KernelEvent;
use crate::ports::PortMapping;
use crate::system::KernelEvents;

fn name(s: &str) -> PodName {
    PodName::new(s).unwrap()
}

fn ports(specs: &[&str]) -> Vec<PortMapping> {
    crate::ports::parse_publish_all(specs).unwrap()
}

struct Env {
    _dir: tempfile::TempDir,
    fake: FakeSystem,
    manager: PodManager<FakeSystem>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            state_dir: dir.path().join("state"),
            pod_cidr_v4: "10.88.0.0/16".parse().unwrap(),
            ..Config::default()
        };
        let fake = FakeSystem::new();
        fake.install_table(crate::firewall::FirewallBase {
            bridge: config.bridge.clone(),
            pod_cidr_v4: config.pod_cidr_v4,
            pod_cidr_v6: config.pod_cidr_v6,
            masquerade: config.masquerade,
            datapath: Default::default(),
        });
        let manager =
            PodManager::open(config, fake.clone(), Logger::root(slog::Discard, o!())).unwrap();
        Self {
            _dir: dir,
            fake,
            manager,
        }
    }

    /// Attaches pod `pod` to a new foreign namespace at /var/run/netns/<pod>, publishing
    /// `specs`.
    async fn attach(&self, pod: &str, specs: &[&str]) -> PathBuf {
        let path = Path::new("/var/run/netns").join(pod);
        self.fake.add_foreign_netns(&path);
        self.manager
            .attach(AttachRequest {
                name: name(pod),
                netns: path.clone(),
                annotations: BTreeMap::new(),
                ports: ports(specs),
            })
            .await
            .unwrap();
        path
    }

    fn elements(&self) -> usize {
        self.fake.firewall_elements().unwrap().len()
    }
}

/// Everything the subscription delivered so far.
fn drain(events: &mut tokio::sync::mpsc::UnboundedReceiver<KernelEvent>) -> Vec<KernelEvent> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn an_unmounted_namespace_loses_its_host_ports_and_a_destroyed_one_its_pod() {
    let env = Env::new();
    let mut events = env.fake.subscribe().await.unwrap();
    let path = env.attach("web", &["18080:80"]).await;
    env.attach("other", &["18081:80"]).await;
    assert_eq!(env.elements(), 2);
    drain(&mut events);

    // The runtime unmounts the namespace; the sandbox's processes still hold it.
    let holder = env.fake.unmount_netns_keeping_it_alive(&path);
    let batch = drain(&mut events);
    assert_eq!(batch, [KernelEvent::MountsChanged]);
    let report = env.manager.handle_kernel_events(&batch).await;
    assert_eq!(report.ports_withdrawn, [name("web")], "{report:?}");
    assert!(
        report.removed.is_empty() && report.failures.is_empty(),
        "{report:?}"
    );
    let web = env.manager.get(&name("web")).unwrap();
    assert!(web.ports_released);
    assert_eq!(
        env.elements(),
        1,
        "only the other pod's port stays published"
    );
    // The port is free for another pod now.
    env.attach("newcomer", &["18080:80"]).await;

    // Its last process exits: the namespace dies, its veth with it.
    env.fake.kill(holder);
    let batch = drain(&mut events);
    assert!(
        batch.contains(&KernelEvent::LinkRemoved(web.host_veth.to_string())),
        "{batch:?}"
    );
    let report = env.manager.handle_kernel_events(&batch).await;
    assert_eq!(report.removed, [name("web")], "{report:?}");
    assert!(env.manager.get(&name("web")).is_none());
    assert!(env.manager.get(&name("other")).is_some());
    assert!(env.manager.get(&name("newcomer")).is_some());
    assert_eq!(env.elements(), 2);

    // Nothing left to do: the same events again change nothing.
    let report = env.manager.handle_kernel_events(&batch).await;
    assert!(report.is_empty(), "{report:?}");
}

#[tokio::test]
async fn a_namespace_destroyed_at_once_removes_the_pod_and_frees_its_address() {
    let env = Env::new();
    let mut events = env.fake.subscribe().await.unwrap();
    let path = env.attach("web", &["18080:80"]).await;
    let allocated = || -> usize { env.manager.status().pools.iter().map(|p| p.allocated).sum() };
    assert_eq!(allocated(), 1);
    drain(&mut events);
    env.fake.remove_netns_externally(&path);
    let batch = drain(&mut events);
    let report = env.manager.handle_kernel_events(&batch).await;
    assert_eq!(report.removed, [name("web")], "{report:?}");
    assert_eq!(env.elements(), 0);
    assert_eq!(allocated(), 0, "its address is free again");
    assert!(env.manager.records().is_empty());
    let on_disk = crate::state::StateStore::new(&env.manager.config().state_dir)
        .load()
        .unwrap();
    assert!(on_disk.pods.is_empty(), "{on_disk:?}");
}

#[tokio::test]
async fn pods_of_our_own_namespaces_and_our_own_removals_are_left_to_the_api() {
    let env = Env::new();
    let mut events = env.fake.subscribe().await.unwrap();
    env.manager
        .create(CreateRequest {
            ports: ports(&["18090:80"]),
            ..CreateRequest::new(name("owned"))
        })
        .await
        .unwrap();
    env.attach("attached", &[]).await;
    drain(&mut events);
    // Our own remove deletes the veth and unmounts: the events that follow find nothing.
    env.manager.remove(&name("attached")).await.unwrap();
    let batch = drain(&mut events);
    assert!(!batch.is_empty());
    let report = env.manager.handle_kernel_events(&batch).await;
    assert!(report.is_empty(), "{report:?}");
    // A namespace we created and someone unmounted is repair's business (it restores the
    // mount from the pause), never a removal here.
    let owned = env.manager.get(&name("owned")).unwrap();
    env.fake.remove_netns_externally(&owned.netns);
    let batch = drain(&mut events);
    let report = env.manager.handle_kernel_events(&batch).await;
    assert!(report.is_empty(), "{report:?}");
    assert!(env.manager.get(&name("owned")).is_some());
    // Lost events make every attached pod be looked at; none has ended.
    env.attach("again", &["18091:80"]).await;
    let report = env
        .manager
        .handle_kernel_events(&[KernelEvent::EventsLost])
        .await;
    assert!(report.is_empty(), "{report:?}");
}

#[tokio::test]
async fn attach_leaves_a_namespace_another_plugin_wired_untouched() {
    let env = Env::new();
    let path = Path::new("/var/run/netns/cni-other");
    env.fake.add_foreign_netns(path);
    env.fake.add_foreign_veth(path, "eth0", "vethcalico1");
    let before = env.fake.snapshot();
    let err = env
        .manager
        .attach(AttachRequest {
            name: name("web"),
            netns: path.into(),
            annotations: BTreeMap::new(),
            ports: ports(&["18080:80"]),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::WiredElsewhere { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("/var/run/netns/cni-other")
            && text.contains("eth0")
            && text.contains("another network plugin"),
        "{text}"
    );
    assert_eq!(env.fake.snapshot(), before, "nothing touched");
    assert!(env.manager.records().is_empty());
    assert_eq!(env.elements(), 0);
}

#[tokio::test]
async fn published_ports_join_the_pods_own_and_conflicts_name_the_port() {
    let env = Env::new();
    env.attach("web", &["18080:8080"]).await;
    env.attach("db", &["15432:5432"]).await;
    let web = name("web");

    let added = env
        .manager
        .publish_pod_ports(&web, ports(&["18082:8080", "18080:8080"]))
        .await
        .unwrap();
    assert_eq!(
        added.added,
        ports(&["18082:8080"]),
        "the CRI port is not added twice"
    );
    assert_eq!(added.pod.ports, ports(&["18080:8080", "18082:8080"]));
    assert_eq!(env.elements(), 3);
    // Idempotent.
    let again = env
        .manager
        .publish_pod_ports(&web, ports(&["18082:8080"]))
        .await
        .unwrap();
    assert!(again.added.is_empty());
    assert_eq!(env.elements(), 3);

    // The same node port to another pod port of the same pod: refused naming both.
    let err = env
        .manager
        .publish_pod_ports(&web, ports(&["18080:9090"]))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("18080") && text.contains("pod web itself"),
        "{text}"
    );
    // Another pod's port: refused naming that pod; nothing changed.
    let err = env
        .manager
        .publish_pod_ports(&web, ports(&["15432:5432"]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pod db"), "{err}");
    assert_eq!(
        env.manager.get(&web).unwrap().ports,
        ports(&["18080:8080", "18082:8080"])
    );
    assert_eq!(env.elements(), 3);
    assert!(matches!(
        env.manager
            .publish_pod_ports(&name("nope"), ports(&["1:1"]))
            .await,
        Err(ManagerError::NotFound { .. })
    ));

    // A stopped pod (ports released) gets none back.
    assert!(env.manager.release_pod_ports(&web).await.unwrap());
    let after = env
        .manager
        .publish_pod_ports(&web, ports(&["18083:8080"]))
        .await
        .unwrap();
    assert!(after.added.is_empty());
    assert_eq!(env.elements(), 1, "only db's port");

    // The record survives a restart with every port.
    let state = crate::state::StateStore::new(&env.manager.config().state_dir)
        .load()
        .unwrap();
    assert_eq!(state.pods[&web].ports, ports(&["18080:8080", "18082:8080"]));
}
