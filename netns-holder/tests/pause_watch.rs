//! The pause watcher's cost, measured on the recording [`FakeSystem`]: a tick reads no
//! pod's `/proc/<pid>/stat` (the fake's `pause_alive` calls) while the pauses are children
//! of this daemon process (SIGCHLD + `waitpid` cover them) or adopted ones under an exit
//! watch (a pidfd in the real system); only adopted pauses no watch can be made for are
//! polled; after a SIGCHLD the kernel names the pauses that exited, so nothing is asked per
//! pod. Dead pauses are still restarted, whichever way their death is learnt.

use slog::{Logger, o};

use netns_holder_core::config::Config;
use netns_holder_core::fake::FakeSystem;
use netns_holder_core::firewall::FirewallBase;
use netns_holder_core::kernel::PauseProcess;
use netns_holder_core::manager::{CreateRequest, PauseWake, PauseWatches, PodManager};
use netns_holder_core::names::PodName;

/// Pods made per test.
const PODS: usize = 50;

struct Env {
    _dir: tempfile::TempDir,
    fake: FakeSystem,
    config: Config,
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
        fake.install_table(FirewallBase {
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

    fn manager(&self) -> PodManager<FakeSystem> {
        PodManager::open(
            self.config.clone(),
            self.fake.clone(),
            Logger::root(slog::Discard, o!()),
        )
        .unwrap()
    }

    /// `/proc` reads so far (the real `pause_alive` reads `/proc/<pid>/stat`).
    fn stat_reads(&self) -> usize {
        self.fake.calls_starting_with("pause_alive ")
    }

    /// Per-pause questions so far (the real `child_pause_exited` is one `waitpid`).
    fn waitpids(&self) -> usize {
        self.fake.calls_starting_with("child_pause_exited ")
    }
}

/// A SIGCHLD with nothing dead restarts nothing.
async fn sigchld_restarts_nothing(manager: &PodManager<FakeSystem>, watches: &mut PauseWatches) {
    assert!(
        manager
            .restart_dead_pauses(PauseWake::Child, watches)
            .await
            .is_empty()
    );
}

async fn create_pods(manager: &PodManager<FakeSystem>) {
    for i in 0..PODS {
        let name = PodName::new(format!("pod-{i}")).unwrap();
        manager.create(CreateRequest::new(name)).await.unwrap();
    }
}

fn pause_of(manager: &PodManager<FakeSystem>, pod: &str) -> PauseProcess {
    let name = PodName::new(pod).unwrap();
    manager
        .records()
        .into_iter()
        .find(|r| r.name == name)
        .and_then(|r| r.pause)
        .unwrap()
}

#[tokio::test]
async fn ticks_read_no_stat_for_children_and_restart_a_dead_child() {
    let env = Env::new();
    let manager = env.manager();
    create_pods(&manager).await;
    let mut watches = PauseWatches::new();
    let before = env.stat_reads();
    for _ in 0..3 {
        assert!(
            manager
                .restart_dead_pauses(PauseWake::Tick, &mut watches)
                .await
                .is_empty()
        );
    }
    assert_eq!(
        env.stat_reads() - before,
        0,
        "3 ticks over {PODS} child pauses read /proc"
    );
    assert_eq!(watches.watched(), 0, "children need no exit watch");
    assert_eq!(env.waitpids(), 3 * PODS, "one waitpid per child per tick");
    // A child dies: SIGCHLD, the kernel names it (no waitpid per child), restarted; still
    // no /proc read but the restart's own.
    let waitpids = env.waitpids();
    let old = pause_of(&manager, "pod-7");
    env.fake.kill(old.pid);
    let restarted = manager
        .restart_dead_pauses(PauseWake::Child, &mut watches)
        .await;
    assert_eq!(restarted, vec![PodName::new("pod-7").unwrap()]);
    let new = pause_of(&manager, "pod-7");
    assert_ne!(new, old);
    assert_eq!(env.stat_reads() - before, 0);
    sigchld_restarts_nothing(&manager, &mut watches).await;
    assert_eq!(
        env.waitpids(),
        waitpids,
        "a SIGCHLD asked about each of {PODS} pauses"
    );
    assert_eq!(env.fake.calls_starting_with("reap_exited_child_pauses"), 2);
}

/// While another kind of child's exit hides the rest from the kernel's answer, a SIGCHLD
/// falls back to one `waitpid` per child pause, and a dead one is still restarted.
#[tokio::test]
async fn a_foreign_child_exit_falls_back_to_asking_each_pause() {
    let env = Env::new();
    let manager = env.manager();
    create_pods(&manager).await;
    let mut watches = PauseWatches::new();
    let old = pause_of(&manager, "pod-11");
    env.fake.kill(old.pid);
    env.fake.set_foreign_zombie(true);
    let waitpids = env.waitpids();
    let restarted = manager
        .restart_dead_pauses(PauseWake::Child, &mut watches)
        .await;
    assert_eq!(restarted, vec![PodName::new("pod-11").unwrap()]);
    assert_eq!(
        env.waitpids() - waitpids,
        PODS,
        "one waitpid per child pause"
    );
    // With the way clear again, a SIGCHLD with no pause exited asks nothing per pause.
    env.fake.set_foreign_zombie(false);
    let waitpids = env.waitpids();
    sigchld_restarts_nothing(&manager, &mut watches).await;
    assert_eq!(env.waitpids(), waitpids);
}

#[tokio::test]
async fn adopted_pauses_are_watched_not_polled_and_restarted_when_they_exit() {
    let env = Env::new();
    create_pods(&env.manager()).await;
    // A daemon restart: the pauses are no longer children of the daemon process.
    env.fake.adopt_pauses();
    let manager = env.manager();
    assert!(manager.reconcile().await.failures.is_empty());
    let mut watches = PauseWatches::new();
    let before = env.stat_reads();
    for _ in 0..3 {
        assert!(
            manager
                .restart_dead_pauses(PauseWake::Tick, &mut watches)
                .await
                .is_empty()
        );
    }
    assert_eq!(watches.watched(), PODS, "one exit watch per adopted pause");
    assert_eq!(
        env.fake.calls_starting_with("watch_pause "),
        PODS,
        "watches are made once, not per tick"
    );
    assert_eq!(env.stat_reads() - before, 0, "ticks read /proc");
    assert_eq!(watches.polled(), 0);
    // An adopted pause dies: its watch fires with exactly that pause.
    let old = pause_of(&manager, "pod-3");
    env.fake.kill(old.pid);
    let exited = tokio::time::timeout(std::time::Duration::from_secs(5), watches.next_exit())
        .await
        .expect("the exit watch fires");
    assert_eq!(exited, old);
    let restarted = manager
        .restart_dead_pauses(PauseWake::Exited(exited), &mut watches)
        .await;
    assert_eq!(restarted, vec![PodName::new("pod-3").unwrap()]);
    assert_eq!(watches.watched(), PODS - 1);
    // One /proc read: the confirmation of that one exit.
    assert_eq!(env.stat_reads() - before, 1);
    // The restarted pause is a child now: the next tick watches nothing new.
    manager
        .restart_dead_pauses(PauseWake::Tick, &mut watches)
        .await;
    assert_eq!(watches.watched(), PODS - 1);
    assert_eq!(env.fake.calls_starting_with("watch_pause "), PODS);
    assert_eq!(env.stat_reads() - before, 1);
}

#[tokio::test]
async fn without_exit_watches_only_adopted_pauses_are_polled() {
    let env = Env::new();
    create_pods(&env.manager()).await;
    env.fake.adopt_pauses();
    let manager = env.manager();
    manager.reconcile().await;
    // Ten more pods made by this daemon: its children.
    for i in 0..10 {
        let name = PodName::new(format!("child-{i}")).unwrap();
        manager.create(CreateRequest::new(name)).await.unwrap();
    }
    env.fake.set_watches_unavailable(true);
    let mut watches = PauseWatches::new();
    let before = env.stat_reads();
    manager
        .restart_dead_pauses(PauseWake::Tick, &mut watches)
        .await;
    assert_eq!(
        env.stat_reads() - before,
        PODS,
        "exactly the adopted pauses are polled"
    );
    assert_eq!(watches.polled(), PODS as u64);
    // A polled adopted pause that died is restarted by the tick.
    let old = pause_of(&manager, "pod-0");
    env.fake.kill(old.pid);
    let restarted = manager
        .restart_dead_pauses(PauseWake::Tick, &mut watches)
        .await;
    assert_eq!(restarted, vec![PodName::new("pod-0").unwrap()]);
}
