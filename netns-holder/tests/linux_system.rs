//! Privileged end-to-end tests of [`LinuxSystem`] driven through [`PodManager`].
//!
//! Every test runs in its own throwaway *node* network namespace (a thread `unshare`s one;
//! the test body then runs on a tokio runtime built on a thread that `setns`'d into it, so
//! its workers are there too) with its own `netns_dir` and state directory in a temporary
//! directory. The machine's real network is never touched. A guard cleans up on every exit,
//! panics included: it kills the pauses tagged with the node namespace, unmounts the pod
//! namespaces and the directory's own bind mount, and the node namespace disappears with
//! its last descriptor.
//!
//! Needs root (they print a loud `SKIPPED` line otherwise), `ip`, `ping` and `nsenter` (the
//! *tests* exec those; the implementation never does), and the pause binary:
//! `cargo build -p pause --profile pause` (or set `NH_PAUSE_BINARY`).
//!
//! Run: `cargo test -p netns-holder --test linux_system -- --test-threads=4`.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{pause_binary, proc_state};
use ipnet::IpNet;
use netns_holder::linux::{LinuxSystem, PAUSE_NODE_ENV};
use netns_holder_core::config::Config;
use netns_holder_core::egress::EgressExempt;
use netns_holder_core::finding::Problem;
use netns_holder_core::firewall::{
    self, FirewallBase, FirewallTable, HostPortElement, HostPortMap,
};
use netns_holder_core::kernel::PauseProcess;
use netns_holder_core::manager::{CreateRequest, PodInfo, PodManager};
use netns_holder_core::names::{IfName, PodName};
use netns_holder_core::ports::{PortMapping, Protocol};
use netns_holder_core::system::{
    Firewall, Namespaces, Netlink, Processes, Sysctl, SystemError, VethPair,
};
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::Mode;
use nix::sys::statfs::{NSFS_MAGIC, statfs};
use nix::unistd::Pid;
use slog::{Logger, o};

// ------------------------------------------------------------------ environment

/// Returns early (with a loud line) unless running as root.
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            // The test harness names each test's thread after the test.
            eprintln!(
                "\n*** SKIPPED {}: needs root (network namespaces, bind mounts, netlink) ***\n",
                std::thread::current().name().unwrap_or(module_path!())
            );
            return;
        }
    };
}

fn logger() -> Logger {
    if std::env::var_os("NH_TEST_LOG").is_some() {
        use slog::Drain;
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build().fuse();
        Logger::root(drain, o!())
    } else {
        Logger::root(slog::Discard, o!())
    }
}

/// A throwaway node namespace plus a configuration whose directories are in a temp dir.
#[derive(Clone)]
struct Ctx {
    node: Arc<OwnedFd>,
    node_inode: u64,
    config: Config,
}

/// Owns the temp dir and cleans up everything a test may leave behind.
struct Env {
    ctx: Ctx,
    _tmp: tempfile::TempDir,
}

impl Env {
    fn new(v6: Option<&str>, mtu: Option<u32>) -> Self {
        let node = std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
            open(
                "/proc/thread-self/ns/net",
                OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .expect("open own netns")
        })
        .join()
        .expect("node namespace thread");
        let node_inode = nix::sys::stat::fstat(&node).expect("fstat").st_ino;
        let tmp = tempfile::Builder::new()
            .prefix("nh-linux-test")
            .tempdir()
            .expect("tempdir");
        let config = Config {
            socket: tmp.path().join("api.sock"),
            state_dir: tmp.path().join("state"),
            netns_dir: tmp.path().join("netns"),
            pod_cidr_v6: v6.map(|c| c.parse().expect("v6 cidr")),
            mtu,
            pause_binary: pause_binary(),
            ..Config::default()
        };
        Self {
            ctx: Ctx {
                node: Arc::new(node),
                node_inode,
                config,
            },
            _tmp: tmp,
        }
    }

    /// Runs `body` on a 2-worker tokio runtime whose threads are in the node namespace.
    fn run<F, Fut>(&self, body: F)
    where
        F: FnOnce(Ctx) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let ctx = self.ctx.clone();
        on_node_thread(&self.ctx.node, move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(body(ctx));
        });
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Pauses started in this node namespace (our children: kill and reap).
        for pid in tagged_pauses(self.ctx.node_inode) {
            let pid = Pid::from_raw(pid as i32);
            let _ = kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        let dir = &self.ctx.config.netns_dir;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let _ = umount2(&entry.path(), MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(entry.path());
            }
        }
        // The directory's own bind mount (made shared by create_netns).
        for _ in 0..4 {
            if umount2(dir, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

/// Runs `f` on a fresh thread inside the node namespace; re-raises its panic.
fn on_node_thread<T: Send + 'static>(
    node: &Arc<OwnedFd>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let node = node.clone();
    std::thread::spawn(move || {
        setns(&*node, CloneFlags::CLONE_NEWNET).expect("setns into node namespace");
        f()
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Runs `f` on a fresh thread inside the namespace bind-mounted at `path`.
fn on_pod_thread<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let fd = open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).expect("open netns");
    std::thread::spawn(move || {
        setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns into pod namespace");
        f()
    })
}

/// Pids whose environment carries `PAUSE_NODE_ENV=<inode>` (zombies included).
fn tagged_pauses(inode: u64) -> Vec<u32> {
    let tag = format!("{PAUSE_NODE_ENV}={inode}");
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(env) = std::fs::read(format!("/proc/{pid}/environ"))
            && env.split(|b| *b == 0).any(|v| v == tag.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

// ------------------------------------------------------------------ command helpers

fn output(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `args` inside the pod namespace at `netns` (via nsenter).
fn in_pod(netns: &Path, args: &[&str]) -> (bool, String) {
    output(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .args(args),
    )
}

/// Runs `args` inside the node namespace.
fn in_node(node: &Arc<OwnedFd>, args: &[&str]) -> (bool, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    on_node_thread(node, move || {
        output(Command::new(&args[0]).args(&args[1..]))
    })
}

/// `ping -c1 -W1`, up to 3 attempts (the first packet also resolves the neighbour).
fn ping_ok(run: impl Fn(&[&str]) -> (bool, String), ip: IpAddr) -> Result<(), String> {
    let ip = ip.to_string();
    let mut last = String::new();
    for _ in 0..3 {
        let (ok, text) = run(&["ping", "-c1", "-W1", &ip]);
        if ok {
            return Ok(());
        }
        last = text;
    }
    Err(last)
}

/// Connects from pod `a` to a listener in pod `b` on `b_ip`; returns (client's local
/// address as the client sees it, peer address as the server sees it).
fn tcp_exchange(a: &Path, b: &Path, b_ip: IpAddr) -> (IpAddr, IpAddr) {
    let (tx, rx) = std::sync::mpsc::channel();
    let server = on_pod_thread(b, move || {
        let listener = TcpListener::bind((b_ip, 0)).expect("bind in pod b");
        tx.send(listener.local_addr().expect("local addr").port())
            .expect("send port");
        listener.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match listener.accept() {
                Ok((_stream, peer)) => return peer.ip(),
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("accept in pod b: {e}"),
            }
        }
    });
    let port = rx.recv().expect("port from pod b");
    let client = on_pod_thread(a, move || {
        let stream =
            TcpStream::connect_timeout(&SocketAddr::new(b_ip, port), Duration::from_secs(5))
                .expect("connect from pod a");
        stream.local_addr().expect("local addr").ip()
    });
    let local = client.join().expect("client thread");
    let peer = server.join().expect("server thread");
    (local, peer)
}

fn pod(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

fn ifname(name: &str) -> IfName {
    IfName::new(name).unwrap()
}

fn is_nsfs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

// ------------------------------------------------------------------ assertions

/// Everything that must hold for a ready pod, checked with `ip` and /proc (not with the
/// code under test).
fn assert_pod_wired(ctx: &Ctx, info: &PodInfo, mtu: u32) {
    let netns = &info.netns;
    assert!(
        is_nsfs(netns),
        "{} is not an nsfs bind mount",
        netns.display()
    );
    // The pause lives in exactly that namespace.
    let pid = info.pause_pid.expect("pause pid");
    let pause_ns = std::fs::metadata(format!("/proc/{pid}/ns/net")).expect("pause ns");
    let mount = std::fs::metadata(netns).expect("netns mount");
    assert_eq!(
        (pause_ns.dev(), pause_ns.ino()),
        (mount.dev(), mount.ino()),
        "pause {pid} is not in {}",
        netns.display()
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap();
    assert_eq!(argv0, info.id.pause_argv0().as_bytes());
    assert_ne!(proc_state(pid), Some('Z'));
    // It holds /dev/null on 0-2 and no descriptor of the daemon's (it is spawned sharing
    // the daemon's descriptor table, then takes an empty one of its own).
    let mut fds: Vec<(u32, PathBuf)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("pause fds")
        .map(|e| {
            let e = e.expect("fd entry");
            let fd = e.file_name().to_str().unwrap().parse().unwrap();
            (fd, std::fs::read_link(e.path()).expect("fd link"))
        })
        .collect();
    fds.sort();
    let dev_null = PathBuf::from("/dev/null");
    assert_eq!(
        fds,
        vec![(0, dev_null.clone()), (1, dev_null.clone()), (2, dev_null)],
        "pause {pid}'s descriptors"
    );

    // Both veth ends were made with one queue each way (no queue cut under RTNL).
    let (ok, details) = in_pod(netns, &["ip", "-d", "link", "show", "dev", "eth0"]);
    assert!(
        ok && details.contains("numtxqueues 1 numrxqueues 1"),
        "{details}"
    );
    let (ok, details) = in_node(
        &ctx.node,
        &["ip", "-d", "link", "show", "dev", info.host_veth.as_str()],
    );
    assert!(
        ok && details.contains("numtxqueues 1 numrxqueues 1"),
        "{details}"
    );

    let (ok, addrs) = in_pod(netns, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(ok, "{addrs}");
    for ip in &info.ips {
        let family = if ip.addr().is_ipv4() {
            "inet "
        } else {
            "inet6 "
        };
        let line = addrs
            .lines()
            .find(|l| l.contains(&format!("{family}{ip} ")))
            .unwrap_or_else(|| panic!("{ip} missing on eth0: {addrs}"));
        // Usable at once: never tentative (DAD off / IFA_F_NODAD).
        assert!(!line.contains("tentative"), "tentative address: {line}");
    }
    let (_, link) = in_pod(netns, &["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains("state UP"), "eth0 not up: {link}");
    assert!(link.contains(&format!("mtu {mtu} ")), "eth0 mtu: {link}");

    let (_, lo) = in_pod(netns, &["ip", "-o", "addr", "show", "dev", "lo"]);
    assert!(lo.contains("inet 127.0.0.1/8"), "lo: {lo}");
    let (_, lo_link) = in_pod(netns, &["ip", "-o", "link", "show", "dev", "lo"]);
    assert!(lo_link.contains(",UP"), "lo not up: {lo_link}");

    for gateway in &info.gateways {
        let family = if gateway.is_ipv4() { "-4" } else { "-6" };
        let (_, routes) = in_pod(netns, &["ip", family, "route", "show", "default"]);
        assert!(
            routes.contains(&format!("default via {gateway} dev eth0")),
            "default route via {gateway}: {routes}"
        );
    }

    let host = info.host_veth.as_str();
    let (ok, host_link) = in_node(&ctx.node, &["ip", "-o", "link", "show", "dev", host]);
    assert!(ok, "{host_link}");
    let bridge = ctx.config.bridge.as_str();
    assert!(
        host_link.contains(&format!("master {bridge} ")),
        "{host} not on {bridge}: {host_link}"
    );
    assert!(host_link.contains(",UP"), "{host} not up: {host_link}");
    assert!(
        host_link.contains(&format!("mtu {mtu} ")),
        "{host} mtu: {host_link}"
    );
}

/// Nothing of a removed pod is left.
fn assert_pod_gone(ctx: &Ctx, info: &PodInfo) {
    assert!(
        !info.netns.exists(),
        "{} still exists",
        info.netns.display()
    );
    if let Some(pid) = info.pause_pid {
        assert_eq!(proc_state(pid), None, "pause {pid} still exists (reaped?)");
    }
    let (ok, _) = in_node(
        &ctx.node,
        &["ip", "link", "show", "dev", info.host_veth.as_str()],
    );
    assert!(!ok, "{} still exists", info.host_veth);
}

/// Host links whose names start with `nh`, other than the bridge.
fn node_pod_links(ctx: &Ctx) -> Vec<String> {
    let list = || {
        let (ok, text) = in_node(&ctx.node, &["ip", "-o", "link", "show"]);
        assert!(ok, "{text}");
        text.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| n.starts_with("nh") && n != ctx.config.bridge.as_str())
            .collect::<Vec<_>>()
    };
    // A removed pod's host veth is retired (renamed `nhx...`) and deleted by the kernel with
    // its namespace or by the daemon's next deletion batch: it must be gone within 5 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let links = list();
        let retired = links
            .iter()
            .filter(|n| n.starts_with(netns_holder_core::names::RETIRED_VETH_PREFIX))
            .count();
        if retired == 0 {
            return links;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "retired host veths still in the node after 5 s: {links:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn manager(ctx: &Ctx) -> PodManager<LinuxSystem> {
    let system = LinuxSystem::new(&ctx.config, logger()).expect("LinuxSystem::new");
    assert_eq!(system.node_netns_inode(), ctx.node_inode);
    PodManager::open(ctx.config.clone(), system, logger()).expect("PodManager::open")
}

/// Two pods: wiring, pod <-> pod ping and TCP, node -> pod ping, check, restart + reconcile,
/// remove. `v6` selects the dual-stack variant and the address family of the traffic.
async fn two_pods(ctx: Ctx, v6: bool, mtu: u32) {
    let mgr = manager(&ctx);
    let report = mgr.reconcile().await;
    assert!(report.failures.is_empty(), "{report:?}");

    let started = Instant::now();
    let a = mgr
        .create(CreateRequest::new(pod("pod-a")))
        .await
        .expect("create a");
    let first = started.elapsed();
    let b = mgr
        .create(CreateRequest::new(pod("pod-b")))
        .await
        .expect("create b");
    eprintln!(
        "create latency: first pod {:?} (bridge included), second {:?}",
        first,
        started.elapsed() - first
    );
    assert_eq!(a.ips.len(), if v6 { 2 } else { 1 });
    assert_pod_wired(&ctx, &a, mtu);
    assert_pod_wired(&ctx, &b, mtu);
    let findings = mgr.check().await;
    assert!(findings.is_empty(), "{findings:?}");

    let pick = |info: &PodInfo| {
        info.ips
            .iter()
            .map(|n| n.addr())
            .find(|ip| ip.is_ipv6() == v6)
            .expect("address of the family")
    };
    let (a_ip, b_ip) = (pick(&a), pick(&b));
    ping_ok(|args| in_pod(&a.netns, args), b_ip).expect("ping a -> b");
    ping_ok(|args| in_pod(&b.netns, args), a_ip).expect("ping b -> a");
    let (local, peer) = tcp_exchange(&a.netns, &b.netns, b_ip);
    assert_eq!(local, a_ip, "client source address");
    assert_eq!(peer, a_ip, "server sees the sender's pod IP");
    ping_ok(|args| in_node(&ctx.node, args), a_ip).expect("ping node -> a");
    ping_ok(|args| in_node(&ctx.node, args), b_ip).expect("ping node -> b");

    // A daemon restart: a new system and manager on the same state find everything intact.
    drop(mgr);
    let mgr = manager(&ctx);
    let report = mgr.reconcile().await;
    assert!(report.failures.is_empty(), "{report:?}");
    assert!(report.repaired.is_empty(), "{report:?}");
    assert!(report.orphans_removed.is_empty(), "{report:?}");
    assert!(report.removed_dead.is_empty(), "{report:?}");
    assert_eq!(mgr.get(&pod("pod-a")), Some(a.clone()));
    assert_pod_wired(&ctx, &a, mtu);

    assert!(mgr.remove(&pod("pod-a")).await.expect("remove a"));
    assert!(mgr.remove(&pod("pod-b")).await.expect("remove b"));
    assert!(!mgr.remove(&pod("pod-a")).await.expect("remove a again"));
    assert_pod_gone(&ctx, &a);
    assert_pod_gone(&ctx, &b);
    assert_eq!(node_pod_links(&ctx), Vec::<String>::new());
    assert_eq!(mgr.system().list_pauses().await.unwrap(), vec![]);
    assert_eq!(
        mgr.system()
            .list_netns(&ctx.config.netns_dir)
            .await
            .unwrap(),
        Vec::<PathBuf>::new()
    );
    assert!(mgr.check().await.is_empty());
}

// ------------------------------------------------------------------ tests

#[test]
fn two_pods_ipv4() {
    require_root!();
    // No MTU configured and no default route in the node namespace: the 1500 fallback.
    Env::new(None, None).run(|ctx| two_pods(ctx, false, 1500));
}

#[test]
fn two_pods_dual_stack_over_ipv6() {
    require_root!();
    Env::new(Some("fd3c:9a1e:42b7::/64"), Some(1400)).run(|ctx| two_pods(ctx, true, 1400));
}

#[test]
fn fifty_concurrent_pods() {
    require_root!();
    Env::new(Some("fd3c:9a1e:42b8::/64"), None).run(|ctx| async move {
        const N: usize = 50;
        let mgr = Arc::new(manager(&ctx));
        mgr.reconcile().await;
        // Warm up (bridge, node netlink connection) so the batch measures pods only.
        let warm = Instant::now();
        mgr.create(CreateRequest::new(pod("warm")))
            .await
            .expect("create warm");
        eprintln!("first create (bridge included): {:?}", warm.elapsed());

        let started = Instant::now();
        let tasks: Vec<_> = (0..N)
            .map(|i| {
                let mgr = mgr.clone();
                tokio::spawn(
                    async move { mgr.create(CreateRequest::new(pod(&format!("p{i}")))).await },
                )
            })
            .collect();
        let mut pods = Vec::new();
        for task in tasks {
            pods.push(task.await.expect("task").expect("create"));
        }
        let elapsed = started.elapsed();
        eprintln!(
            "{N} concurrent creates: {elapsed:?} total, {:?} per pod",
            elapsed / N as u32
        );

        let ips: BTreeSet<IpAddr> = pods
            .iter()
            .flat_map(|p| p.ips.iter().map(|n| n.addr()))
            .collect();
        assert_eq!(ips.len(), 2 * N, "distinct addresses");
        let pids: BTreeSet<u32> = pods.iter().map(|p| p.pause_pid.unwrap()).collect();
        assert_eq!(pids.len(), N);
        assert_eq!(mgr.system().list_pauses().await.unwrap().len(), N + 1);
        assert!(mgr.check().await.is_empty());
        for info in [&pods[0], &pods[N / 2], &pods[N - 1]] {
            assert_pod_wired(&ctx, info, 1500);
        }
        for ip in &pods[N - 1].ips {
            ping_ok(|args| in_pod(&pods[0].netns, args), ip.addr()).expect("ping first -> last");
        }

        // Concurrent removes delete their host veths in batches (one device group); links
        // that are not being deleted must survive them.
        let (made, out) = in_node(
            &ctx.node,
            &[
                "ip", "link", "add", "keep0", "type", "veth", "peer", "name", "keep1",
            ],
        );
        assert!(made, "{out}");
        let started = Instant::now();
        let tasks: Vec<_> = pods
            .iter()
            .map(|p| {
                let mgr = mgr.clone();
                let name = p.name.clone();
                tokio::spawn(async move { mgr.remove(&name).await })
            })
            .collect();
        for task in tasks {
            assert!(task.await.expect("task").expect("remove"));
        }
        eprintln!("{N} concurrent removes: {:?}", started.elapsed());
        let (listed, links) = in_node(&ctx.node, &["ip", "-o", "link", "show"]);
        assert!(
            listed && links.contains("keep0") && links.contains("keep1"),
            "{links}"
        );
        assert!(mgr.remove(&pod("warm")).await.unwrap());
        for info in &pods {
            assert_pod_gone(&ctx, info);
        }
        assert_eq!(node_pod_links(&ctx), Vec::<String>::new());
        assert_eq!(mgr.system().list_pauses().await.unwrap(), vec![]);
        assert_eq!(std::fs::read_dir(&ctx.config.netns_dir).unwrap().count(), 0);
        assert!(mgr.list().is_empty());
    });
}

#[test]
fn killed_pause_is_reported_and_restarted_in_the_same_netns() {
    require_root!();
    Env::new(None, None).run(|ctx| async move {
        let mgr = manager(&ctx);
        mgr.reconcile().await;
        let info = mgr
            .create(CreateRequest::new(pod("victim")))
            .await
            .expect("create");
        let old = info.pause_pid.unwrap();
        kill(Pid::from_raw(old as i32), Signal::SIGKILL).expect("kill -9");
        // Our child: it stays a zombie until reaped.
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_state(old) != Some('Z') && proc_state(old).is_some() {
            assert!(Instant::now() < deadline, "pause {old} did not die");
            std::thread::sleep(Duration::from_millis(5));
        }

        let findings = mgr.check().await;
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].pod, Some(pod("victim")));
        assert_eq!(findings[0].problem, Problem::NotRunning);
        assert!(
            findings[0].object.contains(&old.to_string()),
            "{findings:?}"
        );
        // The zombie was reaped by the liveness check.
        assert_eq!(proc_state(old), None);

        let report = mgr.repair().await;
        assert!(report.failures.is_empty(), "{report:?}");
        assert!(report.repaired.contains_key(&pod("victim")), "{report:?}");
        let repaired = mgr.get(&pod("victim")).expect("still there");
        let new = repaired.pause_pid.expect("new pause");
        assert_ne!(new, old);
        assert_pod_wired(&ctx, &repaired, 1500);
        assert!(mgr.check().await.is_empty());
        // The namespace held its wiring throughout: still reachable from the node.
        ping_ok(|args| in_node(&ctx.node, args), repaired.ips[0].addr()).expect("ping node -> pod");
        assert!(mgr.remove(&pod("victim")).await.unwrap());
        assert_pod_gone(&ctx, &repaired);
    });
}

#[test]
fn system_primitives() {
    require_root!();
    Env::new(None, None).run(|ctx| async move {
        let sys = Arc::new(LinuxSystem::new(&ctx.config, logger()).expect("new"));
        let dir = ctx.config.netns_dir.clone();
        let a = dir.join("a");

        // Namespaces: exclusive create, existence, listing, idempotent delete.
        assert!(!sys.netns_exists(&a).await.unwrap());
        assert_eq!(sys.list_netns(&dir).await.unwrap(), Vec::<PathBuf>::new());
        sys.create_netns(&a).await.expect("create a");
        assert!(matches!(
            sys.create_netns(&a).await,
            Err(SystemError::AlreadyExists { .. })
        ));
        assert!(sys.netns_exists(&a).await.unwrap());
        std::fs::write(dir.join("plain-file"), b"").unwrap();
        assert!(!sys.netns_exists(&dir.join("plain-file")).await.unwrap());
        assert!(matches!(
            sys.create_netns(&dir.join("plain-file")).await,
            Err(SystemError::AlreadyExists { .. })
        ));
        assert_eq!(sys.list_netns(&dir).await.unwrap(), vec![a.clone()]);
        assert!(sys.delete_netns(&a).await.unwrap());
        assert!(!sys.delete_netns(&a).await.unwrap());
        assert!(!a.exists());
        assert!(sys.delete_netns(&dir.join("plain-file")).await.unwrap());

        // A link missing in a pod namespace: NotFound, naming it (indexes come from
        // SIOCGIFINDEX on the namespace's netlink socket).
        let b = dir.join("b");
        sys.create_netns(&b).await.expect("create b");
        let err = sys
            .add_address(&b, &ifname("eth9"), "10.1.2.3/32".parse().unwrap())
            .await
            .unwrap_err();
        assert!(matches!(err, SystemError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("eth9"), "{err}");
        assert!(sys.delete_netns(&b).await.unwrap());

        // Errors name their object.
        let missing = dir.join("missing");
        let err = sys.loopback_up(&missing).await.unwrap_err();
        assert!(matches!(err, SystemError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        assert!(
            !sys.delete_link(Some(&missing), &ifname("eth0"))
                .await
                .unwrap()
        );

        // Bridge: concurrent ensures, then a link of another kind under the name.
        let bridge = ifname("nhtest0");
        let gateways = [
            "10.99.0.1/24".parse().unwrap(),
            "fd3c:9a1e:42b9::1/64".parse().unwrap(),
        ];
        let ensures: Vec<_> = (0..8)
            .map(|_| {
                let sys = sys.clone();
                let bridge = bridge.clone();
                tokio::spawn(async move { sys.ensure_bridge(&bridge, &gateways).await })
            })
            .collect();
        for e in ensures {
            e.await.unwrap().expect("ensure_bridge");
        }
        let info = sys.link_info(None, &bridge).await.unwrap().expect("bridge");
        assert!(info.up);
        for g in gateways {
            assert!(info.addresses.contains(&g), "{info:?}");
        }
        // The bridge keeps its MAC when a port with a lower one joins (it was set explicitly),
        // so pods never see the gateway's MAC change.
        let mac = |ctx: &Ctx| {
            let (ok, text) = in_node(&ctx.node, &["ip", "-o", "link", "show", "nhtest0"]);
            assert!(ok, "{text}");
            let mac = text.split("link/ether ").nth(1).expect("link/ether");
            mac.split_whitespace().next().unwrap().to_string()
        };
        let before = mac(&ctx);
        for args in [
            &[
                "ip",
                "link",
                "add",
                "nhlow",
                "address",
                "02:00:00:00:00:01",
                "type",
                "veth",
                "peer",
                "name",
                "nhlow1",
            ][..],
            &["ip", "link", "set", "nhlow1", "up"],
        ] {
            let (ok, text) = in_node(&ctx.node, args);
            assert!(ok, "{args:?}: {text}");
        }
        sys.set_master(&ifname("nhlow"), &bridge)
            .await
            .expect("set_master");
        sys.link_up(None, &ifname("nhlow")).await.expect("link_up");
        // A link that is not there: NotFound, naming it (link_up names the link in its
        // request instead of looking its index up).
        let missing = sys.link_up(None, &ifname("nhnotthere0")).await.unwrap_err();
        assert!(matches!(missing, SystemError::NotFound { .. }), "{missing}");
        assert!(missing.to_string().contains("nhnotthere0"), "{missing}");
        let port = sys
            .link_info(None, &ifname("nhlow"))
            .await
            .unwrap()
            .expect("port");
        assert_eq!(port.master, Some(bridge.clone()));
        assert!(port.up);
        assert_eq!(mac(&ctx), before, "bridge MAC changed");
        assert!(sys.delete_link(None, &ifname("nhlow")).await.unwrap());

        let (ok, text) = in_node(
            &ctx.node,
            &[
                "ip", "link", "add", "nhother", "type", "veth", "peer", "name", "nhother1",
            ],
        );
        assert!(ok, "{text}");
        let err = sys
            .ensure_bridge(&ifname("nhother"), &[])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("nhother"), "{err}");
        assert!(err.to_string().contains("not a bridge"), "{err}");
        assert_eq!(
            sys.list_links(None, "nh").await.unwrap(),
            vec![ifname("nhother"), ifname("nhother1"), ifname("nhtest0")]
        );
        assert!(sys.delete_link(None, &ifname("nhother")).await.unwrap());
        // The peer went with it.
        assert!(!sys.delete_link(None, &ifname("nhother1")).await.unwrap());

        // Default route MTU: none, then the MTU of the default route's link.
        assert_eq!(sys.default_route_mtu().await.unwrap(), None);
        for args in [
            &[
                "ip", "link", "add", "uplink", "mtu", "1234", "type", "veth", "peer", "name",
                "uplink1",
            ][..],
            &["ip", "link", "set", "uplink", "up"],
            &["ip", "link", "set", "uplink1", "up"],
            &["ip", "addr", "add", "192.0.2.2/24", "dev", "uplink"],
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "192.0.2.1",
                "dev",
                "uplink",
            ],
        ] {
            let (ok, text) = in_node(&ctx.node, args);
            assert!(ok, "{args:?}: {text}");
        }
        assert_eq!(sys.default_route_mtu().await.unwrap(), Some(1234));
        // A second default route with a higher metric is not the one the node uses.
        for args in [
            &[
                "ip", "link", "add", "uplink2", "mtu", "1400", "type", "veth", "peer", "name",
                "uplink3",
            ][..],
            &["ip", "link", "set", "uplink2", "up"],
            &["ip", "link", "set", "uplink3", "up"],
            &["ip", "addr", "add", "198.51.100.2/24", "dev", "uplink2"],
            &[
                "ip",
                "route",
                "add",
                "default",
                "via",
                "198.51.100.1",
                "dev",
                "uplink2",
                "metric",
                "100",
            ],
        ] {
            let (ok, text) = in_node(&ctx.node, args);
            assert!(ok, "{args:?}: {text}");
        }
        assert_eq!(sys.default_route_mtu().await.unwrap(), Some(1234));
        let (ok, text) = in_node(
            &ctx.node,
            &["ip", "route", "del", "default", "via", "192.0.2.1"],
        );
        assert!(ok, "{text}");
        assert_eq!(sys.default_route_mtu().await.unwrap(), Some(1400));

        // Veth: exclusive on the host end.
        sys.create_netns(&a).await.expect("create a");
        let host = ifname("nhveth0");
        sys.create_veth(VethPair::new(&host, &ifname("nhp0"), &a, 1300))
            .await
            .expect("veth");
        let err = sys
            .create_veth(VethPair::new(&host, &ifname("nhp1"), &a, 1300))
            .await
            .unwrap_err();
        assert!(matches!(err, SystemError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("nhveth0"), "{err}");
        let peer = sys
            .link_info(Some(&a), &ifname("nhp0"))
            .await
            .unwrap()
            .expect("peer");
        assert_eq!(peer.mtu, 1300);
        assert!(
            sys.link_info(None, &ifname("nhp0"))
                .await
                .unwrap()
                .is_none()
        );

        // A bridge port made in the create request: the host end is the bridge's port from
        // its first moment. A master that is missing or not a bridge fails the request
        // (naming it) and leaves neither end behind.
        let bridge = ifname("nhtest0");
        let port_host = ifname("nhveth4");
        sys.create_veth(VethPair {
            master: Some(&bridge),
            ..VethPair::new(&port_host, &ifname("nhp4"), &a, 1300)
        })
        .await
        .expect("veth on the bridge");
        let port = sys
            .link_info(None, &port_host)
            .await
            .unwrap()
            .expect("port");
        assert_eq!(port.master, Some(bridge.clone()));
        let (ok, text) = in_node(&ctx.node, &["ip", "-o", "link", "show", "nhveth4"]);
        assert!(ok && text.contains("master nhtest0"), "{text}");
        assert!(sys.delete_link(None, &port_host).await.unwrap());
        for (master, what) in [(ifname("nhnobridge0"), "nhnobridge0"), (ifname("lo"), "lo")] {
            let err = sys
                .create_veth(VethPair {
                    master: Some(&master),
                    ..VethPair::new(&ifname("nhveth3"), &ifname("nhp3"), &a, 1300)
                })
                .await
                .unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
            assert!(
                sys.link_info(None, &ifname("nhveth3"))
                    .await
                    .unwrap()
                    .is_none(),
                "no host end left after {err}"
            );
            assert!(
                sys.link_info(Some(&a), &ifname("nhp3"))
                    .await
                    .unwrap()
                    .is_none(),
                "no pod end left after {err}"
            );
        }

        // IPv6 off on a node link, written without a read first: set, and set again.
        let v6_off_host = ifname("nhveth6");
        sys.create_veth(VethPair::new(&v6_off_host, &ifname("nhr6"), &a, 1300))
            .await
            .expect("veth for disable_ipv6");
        let disabled = || {
            in_node(
                &ctx.node,
                &[
                    "cat",
                    &format!("/proc/sys/net/ipv6/conf/{v6_off_host}/disable_ipv6"),
                ],
            )
        };
        assert_eq!(disabled(), (true, "0\n".to_string()));
        for _ in 0..2 {
            sys.disable_ipv6(&v6_off_host).await.unwrap();
            assert_eq!(disabled(), (true, "1\n".to_string()));
        }
        let missing = sys
            .disable_ipv6(&ifname("nhnosuchlink0"))
            .await
            .unwrap_err();
        assert!(matches!(missing, SystemError::NotFound { .. }), "{missing}");
        assert!(missing.to_string().contains("nhnosuchlink0"), "{missing}");
        assert!(sys.delete_link(None, &v6_off_host).await.unwrap());

        // Routed datapath primitives: fixed MACs on both ends, permanent neighbours on both
        // sides, a host route with our protocol and source, node addresses on lo.
        let routed_host = ifname("nhveth1");
        let pod_mac = netns_holder_core::datapath::pod_mac("10.99.0.2".parse().unwrap());
        let host_mac = netns_holder_core::datapath::HOST_VETH_MAC;
        sys.create_veth(VethPair {
            host_mac: Some(host_mac),
            peer_mac: Some(pod_mac),
            ..VethPair::new(&routed_host, &ifname("nhr0"), &a, 1300)
        })
        .await
        .expect("routed veth");
        let (ok, text) = in_node(&ctx.node, &["ip", "link", "show", "nhveth1"]);
        assert!(ok && text.contains("ee:ee:ee:ee:ee:ee"), "{text}");
        let (ok, text) = in_pod(&a, &["ip", "link", "show", "nhr0"]);
        assert!(ok && text.contains("0a:58:0a:63:00:02"), "{text}");
        let lo = ifname("lo");
        let node_v4: IpNet = "10.99.0.1/32".parse().unwrap();
        let node_v6: IpNet = "fd00:99::1/128".parse().unwrap();
        // Down first: ensuring the node addresses also brings the link up (its state read
        // by ioctl); a link that is not there is named.
        let (ok, text) = in_node(&ctx.node, &["ip", "link", "set", "lo", "down"]);
        assert!(ok, "{text}");
        assert!(!sys.link_info(None, &lo).await.unwrap().expect("lo").up);
        let missing = sys
            .ensure_node_addresses(&ifname("nhnolink0"), &[node_v4])
            .await
            .unwrap_err();
        assert!(matches!(missing, SystemError::NotFound { .. }), "{missing}");
        assert!(missing.to_string().contains("nhnolink0"), "{missing}");
        for _ in 0..2 {
            sys.ensure_node_addresses(&lo, &[node_v4, node_v6])
                .await
                .expect("node addresses on lo, twice");
        }
        let lo_info = sys.link_info(None, &lo).await.unwrap().expect("lo");
        assert!(lo_info.up);
        assert!(lo_info.addresses.contains(&node_v4), "{lo_info:?}");
        assert!(lo_info.addresses.contains(&node_v6), "{lo_info:?}");
        sys.link_up(None, &routed_host).await.unwrap();
        let pod_v4: IpNet = "10.99.0.2/32".parse().unwrap();
        let pod_v6: IpNet = "fd00:99::2/128".parse().unwrap();
        assert!(sys.host_routes(&routed_host).await.unwrap().is_empty());
        for _ in 0..2 {
            sys.add_host_route(&routed_host, pod_v4, node_v4.addr())
                .await
                .expect("v4 host route (and replaced)");
            sys.add_host_route(&routed_host, pod_v6, node_v6.addr())
                .await
                .expect("v6 host route (and replaced)");
            sys.add_neighbour(None, &routed_host, pod_v4.addr(), pod_mac)
                .await
                .expect("v4 neighbour (and replaced)");
            sys.add_neighbour(None, &routed_host, pod_v6.addr(), pod_mac)
                .await
                .expect("v6 neighbour (and replaced)");
        }
        let mut routes = sys.host_routes(&routed_host).await.unwrap();
        routes.sort();
        assert_eq!(routes, vec![pod_v4, pod_v6]);
        let (ok, text) = in_node(&ctx.node, &["ip", "route", "show", "10.99.0.2"]);
        assert!(
            ok && text.contains("proto 79") && text.contains("src 10.99.0.1"),
            "{text}"
        );
        let mut neighbours = sys.permanent_neighbours(None, &routed_host).await.unwrap();
        neighbours.sort();
        assert_eq!(neighbours, vec![pod_v4.addr(), pod_v6.addr()]);
        sys.add_neighbour(
            Some(&a),
            &ifname("nhr0"),
            "169.254.1.1".parse().unwrap(),
            host_mac,
        )
        .await
        .expect("gateway neighbour in the pod");
        assert_eq!(
            sys.permanent_neighbours(Some(&a), &ifname("nhr0"))
                .await
                .unwrap(),
            vec!["169.254.1.1".parse::<IpAddr>().unwrap()]
        );
        // Retiring: both names are free at once (a new pair takes them), the retired pod
        // end is down, both retired ends are gone soon after (background batch), and a
        // missing link or namespace is no error.
        let retired_host = ifname("nhveth2");
        let retired_pod = ifname("nhr1");
        sys.create_veth(VethPair::new(&retired_host, &retired_pod, &a, 1300))
            .await
            .expect("veth to retire");
        sys.link_up(Some(&a), &retired_pod).await.unwrap();
        assert!(sys.retire_link(Some(&a), &retired_pod).await.unwrap());
        assert!(
            sys.link_info(Some(&a), &retired_pod)
                .await
                .unwrap()
                .is_none(),
            "the pod end's name is free after retire_link returns"
        );
        let renamed = sys.list_links(Some(&a), "nhx").await.unwrap();
        assert_eq!(renamed.len(), 1, "{renamed:?}");
        assert!(
            !sys.link_info(Some(&a), &renamed[0])
                .await
                .unwrap()
                .expect("the retired pod end")
                .up,
            "a retired pod end is down"
        );
        assert!(sys.retire_link(None, &retired_host).await.unwrap());
        assert!(
            sys.link_info(None, &retired_host).await.unwrap().is_none(),
            "the name is free after retire_link returns"
        );
        sys.create_veth(VethPair::new(&retired_host, &retired_pod, &a, 1300))
            .await
            .expect("the same names again");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !sys.list_links(None, "nhx").await.unwrap().is_empty()
            || !sys.list_links(Some(&a), "nhx").await.unwrap().is_empty()
        {
            assert!(Instant::now() < deadline, "a retired link is still there");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(sys.delete_link(None, &retired_host).await.unwrap());
        assert!(!sys.retire_link(None, &retired_host).await.unwrap());
        assert!(!sys.retire_link(Some(&a), &retired_pod).await.unwrap());
        assert!(
            !sys.retire_link(Some(Path::new("/run/netns/nh-no-such-netns")), &retired_pod)
                .await
                .unwrap()
        );
        // Routes and neighbours die with the link; a missing link has none.
        assert!(sys.delete_link(None, &routed_host).await.unwrap());
        assert!(sys.host_routes(&routed_host).await.unwrap().is_empty());
        // Node links are found by name with SIOCGIFINDEX: a missing one is NotFound, named.
        let missing = sys
            .add_host_route(&routed_host, pod_v4, node_v4.addr())
            .await
            .unwrap_err();
        assert!(matches!(missing, SystemError::NotFound { .. }), "{missing}");
        assert!(
            missing.to_string().contains(routed_host.as_str()),
            "{missing}"
        );
        assert!(
            sys.permanent_neighbours(None, &routed_host)
                .await
                .unwrap()
                .is_empty()
        );

        // Pause identity: a wrong start time is not ours to stop.
        let id = pod("prim").id();
        let pause = sys.start_pause(&id, &a).await.expect("start pause");
        assert!(sys.pause_alive(&pause).await.unwrap());
        let impostor = PauseProcess {
            pid: pause.pid,
            start_time: pause.start_time + 1,
        };
        assert!(!sys.pause_alive(&impostor).await.unwrap());
        assert!(!sys.stop_pause(&impostor).await.unwrap());
        assert!(sys.pause_alive(&pause).await.unwrap());
        let listed = sys.list_pauses().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].id, listed[0].process), (id, pause));
        assert!(sys.stop_pause(&pause).await.unwrap());
        assert!(!sys.stop_pause(&pause).await.unwrap());
        assert!(!sys.pause_alive(&pause).await.unwrap());
        assert_eq!(proc_state(pause.pid), None, "stopped pause was reaped");
        assert!(sys.list_pauses().await.unwrap().is_empty());

        // A missing pause binary is an error naming it.
        let mut broken = ctx.config.clone();
        broken.pause_binary = PathBuf::from("/nonexistent/pause");
        let broken = LinuxSystem::new(&broken, logger()).unwrap();
        let err = broken.start_pause(&pod("x").id(), &a).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pause"), "{err}");

        assert!(sys.delete_link(None, &host).await.unwrap());
        assert!(sys.delete_netns(&a).await.unwrap());
    });
}

// ------------------------------------------------------------------ host ports, peers

fn elem(map: HostPortMap, host: Option<&str>, port: u16, pod: &str) -> HostPortElement {
    HostPortElement {
        map,
        host_ip: host.map(|h| h.parse().unwrap()),
        protocol: Protocol::Tcp,
        host_port: port,
        pod_ip: pod.parse().unwrap(),
        pod_port: 80,
    }
}

fn sorted(mut v: Vec<HostPortElement>) -> Vec<HostPortElement> {
    v.sort();
    v
}

/// The table through the real kernel: `nft -f` replace, netlink element batches (atomic,
/// exclusive, idempotent deletes), `nft list` read back exactly as rendered.
#[test]
fn nftables_table_and_element_batches() {
    require_root!();
    Env::new(None, None).run(|ctx| async move {
        let sys = LinuxSystem::new(&ctx.config, logger()).expect("LinuxSystem::new");
        let base = FirewallBase {
            bridge: IfName::new("nh0").unwrap(),
            pod_cidr_v4: "10.88.0.0/16".parse().unwrap(),
            pod_cidr_v6: Some("fd00:88::/64".parse().unwrap()),
            masquerade: true,
            datapath: Default::default(),
        };
        let exempt = EgressExempt::new(
            ["10.88.0.0/16", "10.89.0.0/24", "192.0.2.7/32", "fd00:88::/64"]
                .map(|c| c.parse::<ipnet::IpNet>().unwrap()),
        );
        assert_eq!(sys.inspect_table().await.unwrap(), None);
        assert!(matches!(
            sys.sync_egress_exempt(&exempt).await,
            Err(SystemError::NotFound { .. })
        ));
        assert!(matches!(
            sys.add_elements(&[elem(HostPortMap::AnyV4, None, 1, "10.88.0.2")])
                .await,
            Err(SystemError::NotFound { .. })
        ));
        assert_eq!(
            sys.delete_elements(&[elem(HostPortMap::AnyV4, None, 1, "10.88.0.2")])
                .await
                .unwrap(),
            0
        );
        let first = vec![
            elem(HostPortMap::AnyV4, None, 8080, "10.88.0.2"),
            elem(HostPortMap::V6, Some("fd99::1"), 8443, "fd00:88::2"),
        ];
        sys.replace_table(&FirewallTable {
            base: base.clone(),
            elements: first.clone(),
            egress_exempt: exempt.clone(),
        })
        .await
        .expect("replace");
        let seen = sys.inspect_table().await.unwrap().expect("table");
        assert_eq!(seen.lines, firewall::expected_lines(&base));
        assert_eq!(sorted(seen.elements.clone()), sorted(first.clone()));
        assert!(seen.unparsed.is_empty(), "{:?}", seen.unparsed);
        assert_eq!(seen.egress_exempt, exempt);
        assert!(
            firewall::check_table(&base, &[(pod("a"), first.clone())], &exempt, Some(&seen))
                .is_empty()
        );

        // The egress sets change on their own, in one transaction; the maps stay.
        let fewer = EgressExempt::new(
            ["10.88.0.0/16", "10.90.0.0/24", "fd00:99::/64", "fd00:88::/64"]
                .map(|c| c.parse::<ipnet::IpNet>().unwrap()),
        );
        sys.sync_egress_exempt(&fewer).await.expect("sync egress");
        let seen = sys.inspect_table().await.unwrap().expect("table");
        assert_eq!(seen.egress_exempt, fewer);
        assert_eq!(sorted(seen.elements.clone()), sorted(first.clone()));
        let drift: Vec<String> =
            firewall::check_table(&base, &[(pod("a"), first.clone())], &exempt, Some(&seen))
                .iter()
                .map(ToString::to_string)
                .collect();
        assert_eq!(
            drift,
            [
                "element { 10.89.0.0/24 } of set egress_exempt_v4: missing",
                "element { 192.0.2.7/32 } of set egress_exempt_v4: missing",
                "element { 10.90.0.0/24 } of set egress_exempt_v4: foreign (not put there by netns-holder)",
                "element { fd00:99::/64 } of set egress_exempt_v6: foreign (not put there by netns-holder)",
            ]
        );

        // Netlink batches: every key kind, then an exclusive clash fails the whole batch.
        let second = vec![
            elem(HostPortMap::V4, Some("192.168.1.1"), 9000, "10.88.0.3"),
            elem(HostPortMap::AnyV6, None, 9000, "fd00:88::3"),
            HostPortElement {
                protocol: Protocol::Udp,
                ..elem(HostPortMap::AnyV4, None, 9000, "10.88.0.3")
            },
            HostPortElement {
                protocol: Protocol::Sctp,
                ..elem(HostPortMap::AnyV4, None, 9001, "10.88.0.3")
            },
        ];
        sys.add_elements(&second).await.expect("add");
        let all: Vec<HostPortElement> = first.iter().chain(&second).copied().collect();
        let seen = sys.inspect_table().await.unwrap().unwrap();
        assert_eq!(sorted(seen.elements), sorted(all.clone()));
        let clash = [
            elem(HostPortMap::AnyV4, None, 7777, "10.88.0.4"),
            elem(HostPortMap::AnyV4, None, 8080, "10.88.0.4"),
        ];
        let err = sys.add_elements(&clash).await.unwrap_err();
        assert!(matches!(err, SystemError::AlreadyExists { .. }), "{err}");
        assert!(
            err.to_string().contains("tcp . 8080 : 10.88.0.4 . 80"),
            "{err}"
        );
        let seen = sys.inspect_table().await.unwrap().unwrap();
        assert_eq!(sorted(seen.elements), sorted(all.clone()), "all or nothing");

        // Deleting: present and missing mixed; only ours by key.
        let n = sys
            .delete_elements(&[second[0], clash[0], second[1]])
            .await
            .expect("delete");
        assert_eq!(n, 2);
        let seen = sys.inspect_table().await.unwrap().unwrap();
        assert_eq!(
            sorted(seen.elements),
            sorted(vec![first[0], first[1], second[2], second[3]])
        );

        // The per-pod path's cost, printed (not asserted): one element added and deleted
        // through netlink, with 1 and with 10 000 elements in the map.
        for size in [1u16, 10_000] {
            let filler: Vec<HostPortElement> = (0..size)
                .map(|i| elem(HostPortMap::AnyV4, None, 20_000 + i, "10.88.0.9"))
                .collect();
            sys.replace_table(&FirewallTable {
                base: base.clone(),
                elements: filler,
                egress_exempt: exempt.clone(),
            })
            .await
            .expect("replace with filler");
            let one = [elem(HostPortMap::V4, Some("10.0.0.1"), 1, "10.88.0.9")];
            let mut adds = Vec::new();
            let mut deletes = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                sys.add_elements(&one).await.expect("add");
                adds.push(t.elapsed());
                let t = Instant::now();
                assert_eq!(sys.delete_elements(&one).await.expect("delete"), 1);
                deletes.push(t.elapsed());
            }
            adds.sort();
            deletes.sort();
            eprintln!(
                "netlink element batch with {size} element(s) in the map: add median {:?}, delete median {:?}",
                adds[100], deletes[100]
            );
        }

        // Replacing again swaps everything in one go; a flushed ruleset reads as no table.
        sys.replace_table(&FirewallTable {
            base: base.clone(),
            elements: vec![],
            egress_exempt: EgressExempt::default(),
        })
        .await
        .expect("replace again");
        assert!(
            sys.inspect_table()
                .await
                .unwrap()
                .unwrap()
                .elements
                .is_empty()
        );
        let (ok, out) = in_node(&ctx.node, &["nft", "flush", "ruleset"]);
        assert!(ok, "{out}");
        assert_eq!(sys.inspect_table().await.unwrap(), None);
    });
}

/// Sockets of the node namespace holding a port are found, with their process.
#[test]
fn node_listeners_are_found_with_their_owner() {
    require_root!();
    Env::new(None, None).run(|ctx| async move {
        let sys = LinuxSystem::new(&ctx.config, logger()).expect("LinuxSystem::new");
        let (tcp, udp) = on_node_thread(&ctx.node, || {
            (
                TcpListener::bind("0.0.0.0:0").expect("tcp"),
                std::net::UdpSocket::bind("[::]:0").expect("udp"),
            )
        });
        let tport = tcp.local_addr().unwrap().port();
        let uport = udp.local_addr().unwrap().port();
        let found = sys
            .listeners(&[
                (Protocol::Tcp, tport),
                (Protocol::Udp, uport),
                (Protocol::Tcp, 1),
            ])
            .await
            .expect("listeners");
        assert_eq!(found.len(), 2, "{found:?}");
        let me = format!("pid {} (", std::process::id());
        for l in &found {
            assert!(l.owner.as_deref().unwrap_or("").starts_with(&me), "{l}");
        }
        assert!(
            found[0]
                .to_string()
                .starts_with(&format!("a listening TCP socket on 0.0.0.0:{tport} of pid"))
        );
        let mapping = PortMapping::new(tport, 80, Protocol::Tcp);
        assert!(mapping.overlaps_socket(found[0].protocol, found[0].address, found[0].port));
        drop((tcp, udp));
        // A child that another test of this binary forks at that moment holds a copy of the
        // socket until it execs (close-on-exec), so the socket may outlive the drop briefly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let left = sys.listeners(&[(Protocol::Tcp, tport)]).await.unwrap();
            if left.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still listed 2 s after being closed: {left:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
}

/// Peer routes carry our protocol; foreign routes are neither listed nor replaced; hairpin
/// and route_localnet reach the kernel.
#[test]
fn peer_routes_hairpin_and_route_localnet() {
    require_root!();
    Env::new(None, None).run(|ctx| async move {
        let sys = LinuxSystem::new(&ctx.config, logger()).expect("LinuxSystem::new");
        for cmd in [
            &[
                "ip", "link", "add", "u0", "type", "veth", "peer", "name", "u1",
            ][..],
            &["ip", "addr", "add", "192.168.77.1/24", "dev", "u0"],
            &["ip", "link", "set", "u0", "up"],
            &["ip", "link", "set", "u1", "up"],
            &["ip", "route", "add", "10.95.0.0/16", "via", "192.168.77.9"],
        ] {
            let (ok, out) = in_node(&ctx.node, cmd);
            assert!(ok, "{cmd:?}: {out}");
        }
        let cidr = "10.89.0.0/16".parse().unwrap();
        let via: IpAddr = "192.168.77.2".parse().unwrap();
        sys.add_route(cidr, via).await.expect("add route");
        sys.add_route(cidr, via).await.expect("idempotent");
        assert_eq!(sys.peer_routes().await.unwrap(), [(cidr, via)]);
        let (_, shown) = in_node(&ctx.node, &["ip", "route", "show", "proto", "78"]);
        assert!(
            shown.contains("10.89.0.0/16 via 192.168.77.2 dev u0"),
            "{shown}"
        );
        let err = sys
            .add_route("10.95.0.0/16".parse().unwrap(), via)
            .await
            .unwrap_err();
        assert!(matches!(err, SystemError::AlreadyExists { .. }), "{err}");
        assert!(err.to_string().contains("(not ours)"), "{err}");
        assert!(sys.delete_route(cidr, via).await.unwrap());
        assert!(!sys.delete_route(cidr, via).await.unwrap());
        // A foreign route of the same destination and gateway is not ours to delete (the
        // delete names our protocol, which the kernel matches).
        let foreign_via: IpAddr = "192.168.77.9".parse().unwrap();
        assert!(
            !sys.delete_route("10.95.0.0/16".parse().unwrap(), foreign_via)
                .await
                .unwrap()
        );
        assert!(sys.peer_routes().await.unwrap().is_empty());
        let (_, shown) = in_node(&ctx.node, &["ip", "route"]);
        assert!(
            shown.contains("10.95.0.0/16"),
            "foreign route kept: {shown}"
        );

        let bridge = IfName::new("nh0").unwrap();
        sys.ensure_bridge(&bridge, &["10.88.0.1/16".parse().unwrap()])
            .await
            .unwrap();
        sys.enable_route_localnet(&bridge).await.unwrap();
        let (_, value) = in_node(
            &ctx.node,
            &["sysctl", "-n", "net.ipv4.conf.nh0.route_localnet"],
        );
        assert_eq!(value.trim(), "1");
        for cmd in [
            &[
                "ip", "link", "add", "hp0", "type", "veth", "peer", "name", "hp1",
            ][..],
            &["ip", "link", "set", "hp0", "master", "nh0"],
        ] {
            let (ok, out) = in_node(&ctx.node, cmd);
            assert!(ok, "{cmd:?}: {out}");
        }
        sys.set_hairpin(&IfName::new("hp0").unwrap()).await.unwrap();
        let (_, shown) = in_node(&ctx.node, &["bridge", "-d", "link", "show", "dev", "hp0"]);
        assert!(shown.contains("hairpin on"), "{shown}");
    });
}

/// Waits (at most 5 s) until the pool of `sys` holds `ready` namespaces.
async fn pool_reaches(sys: &LinuxSystem, ready: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while sys.netns_pool_ready() != ready {
        assert!(
            Instant::now() < deadline,
            "the namespace pool holds {} namespaces after 5 s, expected {ready}",
            sys.netns_pool_ready()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `ip -j link show` inside `netns`: the links' names and whether each is up.
fn links_up(netns: &Path) -> Vec<(String, bool)> {
    let (ok, text) = in_pod(netns, &["ip", "-j", "link", "show"]);
    assert!(ok, "ip link show in {}: {text}", netns.display());
    let links: serde_json::Value = serde_json::from_str(&text).expect("ip -j link show JSON");
    links
        .as_array()
        .expect("a list of links")
        .iter()
        .map(|l| {
            let up = l["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == "UP"));
            (l["ifname"].as_str().unwrap_or_default().to_string(), up)
        })
        .collect()
}

#[test]
fn the_netns_pool_hands_out_namespaces_with_loopback_up_and_refills_between_creates() {
    require_root!();
    let mut env = Env::new(None, None);
    env.ctx.config.netns_pool = 2;
    env.run(|ctx| async move {
        let sys = LinuxSystem::new(&ctx.config, logger()).expect("new");
        let dir = ctx.config.netns_dir.clone();
        sys.start_netns_pool(&ctx.config, &Default::default()).await;
        pool_reaches(&sys, 2).await;
        // Pooled namespaces are mounted nowhere: nothing for check, gc or a crash to leave.
        assert_eq!(sys.list_netns(&dir).await.unwrap(), Vec::<PathBuf>::new());

        // While a create runs the pool hands out but does not refill.
        sys.creates_in_flight(1);
        let a = dir.join("a");
        sys.create_netns(&a).await.expect("create a from the pool");
        assert_eq!(sys.netns_pool_ready(), 1);
        // With the pod end of a pooled veth pair, down until the pod's steps.
        assert_eq!(
            links_up(&a),
            vec![("lo".to_string(), true), ("eth0".to_string(), false)]
        );
        // Its netlink connection (the socket made in the pool) works in that namespace.
        sys.add_address(&a, &ifname("lo"), "10.77.0.1/32".parse().unwrap())
            .await
            .expect("address on lo of a");
        let (ok, text) = in_pod(&a, &["ip", "-4", "-o", "addr", "show", "dev", "lo"]);
        assert!(ok && text.contains("10.77.0.1/32"), "{text}");

        let b = dir.join("b");
        sys.create_netns(&b).await.expect("create b from the pool");
        // Empty now: a create makes its own namespace, as without a pool.
        let c = dir.join("c");
        sys.create_netns(&c)
            .await
            .expect("create c without the pool");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sys.netns_pool_ready(), 0, "refilled while a create ran");
        for path in [&a, &b, &c] {
            assert!(sys.netns_exists(path).await.unwrap());
        }
        // A namespace made by the create itself has its loopback down until the pod's step.
        assert_eq!(links_up(&c), vec![("lo".to_string(), false)]);
        sys.loopback_up(&c).await.expect("lo up in c");
        assert_eq!(links_up(&c), vec![("lo".to_string(), true)]);
        // A pooled one's first "bring loopback up" has nothing to do; a later one does.
        sys.loopback_up(&a).await.expect("lo up in a (pooled)");
        let (ok, text) = in_pod(&a, &["ip", "link", "set", "lo", "down"]);
        assert!(ok, "{text}");
        sys.loopback_up(&a).await.expect("lo up in a again");
        assert_eq!(links_up(&a)[0], ("lo".to_string(), true));
        let keys: BTreeSet<u64> = [&a, &b, &c]
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().ino())
            .collect();
        assert_eq!(keys.len(), 3, "three different namespaces");

        // Once no create runs, it refills; a path taken is refused and the namespace the
        // create took is freed, not mounted.
        sys.creates_in_flight(0);
        pool_reaches(&sys, 2).await;
        assert!(matches!(
            sys.create_netns(&a).await,
            Err(SystemError::AlreadyExists { .. })
        ));
        let mut listed = sys.list_netns(&dir).await.unwrap();
        listed.sort();
        assert_eq!(listed, vec![a.clone(), b.clone(), c.clone()]);
        for path in [&a, &b, &c] {
            assert!(sys.delete_netns(path).await.unwrap());
        }
    });
}

#[test]
fn the_netns_pool_never_holds_more_namespaces_than_the_pod_cidrs_have_pods() {
    require_root!();
    // Dual-stack: the smaller pool (IPv6 here) bounds the pods, as every pod takes one of each.
    let mut env = Env::new(Some("fd00:77::/125"), None);
    env.ctx.config.pod_cidr_v4 = "10.77.0.0/24".parse().unwrap();
    env.ctx.config.netns_pool = 16;
    env.run(|ctx| async move {
        let capacity =
            netns_holder_core::ipam::Ipam::new(ctx.config.pod_cidr_v4, ctx.config.pod_cidr_v6)
                .usage()
                .iter()
                .map(|p| usize::try_from(p.capacity).unwrap())
                .min()
                .unwrap();
        assert!(
            (1..16).contains(&capacity),
            "the test needs a pod capacity below the configured pool, got {capacity}"
        );
        let sys = LinuxSystem::new(&ctx.config, logger()).expect("new");
        assert_eq!(
            sys.netns_pool_state().size,
            16,
            "configured size before start"
        );
        sys.start_netns_pool(&ctx.config, &Default::default()).await;
        assert_eq!(sys.netns_pool_state().size, capacity);
        pool_reaches(&sys, capacity).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            sys.netns_pool_ready(),
            capacity,
            "made more than the pods it could serve"
        );
        assert_eq!(pool_links(&sys).await.len(), capacity);
    });
}

/// Names of the node's links under the pool's prefix (`nhv`), adopted ones included.
async fn pool_links(sys: &LinuxSystem) -> Vec<IfName> {
    sys.list_links(None, "nhv").await.expect("list pool links")
}

/// The node's pool links once there are `count` of them (at most 5 s: a pair dropped with
/// its namespace goes in the background).
async fn pool_links_reach(sys: &LinuxSystem, count: usize) -> Vec<IfName> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let links = pool_links(sys).await;
        if links.len() == count {
            return links;
        }
        assert!(
            Instant::now() < deadline,
            "pool links: {links:?}, expected {count}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ip -o link show <link>` in `netns` (the node's if `None`).
fn link_line(ctx: &Ctx, netns: Option<&Path>, link: &str) -> String {
    let args = ["ip", "-o", "link", "show", link];
    let (ok, text) = match netns {
        Some(netns) => in_pod(netns, &args),
        None => in_node(&ctx.node, &args),
    };
    assert!(ok, "ip link show {link}: {text}");
    text
}

#[test]
fn pooled_veth_pairs_are_adopted_by_a_fitting_create_and_never_left_behind() {
    require_root!();
    let mut env = Env::new(None, Some(1400));
    env.ctx.config.netns_pool = 2;
    env.ctx.config.datapath = netns_holder_core::datapath::Datapath::Routed;
    env.run(|ctx| async move {
        use netns_holder_core::datapath::{HOST_VETH_MAC, Mac};
        let sys = LinuxSystem::new(&ctx.config, logger()).expect("new");
        let dir = ctx.config.netns_dir.clone();
        sys.start_netns_pool(&ctx.config, &Default::default()).await;
        pool_reaches(&sys, 2).await;
        // A pair per pooled namespace, host ends up under the pool prefix: never a host veth
        // name made from a pod id, so nothing that looks for links of no pod (gc, check)
        // takes them for one. (The first pair of this bare node namespace had index 2 at
        // both ends and went with its namespace, which the kernel frees in the background:
        // give it a moment.)
        pool_links_reach(&sys, 2).await;
        let pooled = pool_links(&sys).await;
        assert!(
            pooled
                .iter()
                .all(|l| !netns_holder_core::names::is_host_veth_name(l.as_str())),
            "{pooled:?}"
        );
        for link in &pooled {
            let line = link_line(&ctx, None, link.as_str());
            assert!(
                line.contains(",UP") && line.contains("NO-CARRIER"),
                "{line}"
            );
        }

        // A fitting create adopts the pair: its host end gets the pod's name, MAC and
        // IPv6 setting, its pod end the pod's MAC; both the node's MTU.
        sys.creates_in_flight(1);
        let a = dir.join("a");
        sys.create_netns(&a).await.expect("create a from the pool");
        let host = ifname("nh00000000000a");
        let pod_mac = Mac([0x02, 0, 0, 0, 0, 0x0a]);
        sys.create_veth(VethPair {
            host_mac: Some(HOST_VETH_MAC),
            peer_mac: Some(pod_mac),
            ..VethPair::new(&host, &ifname("eth0"), &a, 1400)
        })
        .await
        .expect("veth of a, adopted");
        assert_eq!(pool_links(&sys).await.len(), 1, "one adopted, one pooled");
        let host_line = link_line(&ctx, None, host.as_str());
        assert!(
            host_line.contains("mtu 1400") && host_line.contains("ee:ee:ee:ee:ee:ee"),
            "{host_line}"
        );
        let pod_line = link_line(&ctx, Some(&a), "eth0");
        assert!(
            pod_line.contains("mtu 1400") && pod_line.contains("02:00:00:00:00:0a"),
            "{pod_line}"
        );
        // The pod end is the host end's peer.
        let host_index = sys
            .list_links(None, "nh")
            .await
            .unwrap()
            .contains(&host)
            .then(|| host_line.split(':').next().unwrap().trim().to_string())
            .expect("host end listed");
        assert!(
            pod_line.contains(&format!("eth0@if{host_index}")),
            "{pod_line}"
        );
        let (ok, v6) = in_node(
            &ctx.node,
            &["cat", "/proc/sys/net/ipv6/conf/nh00000000000a/disable_ipv6"],
        );
        assert!(ok && v6.trim() == "1", "{v6}");
        sys.disable_ipv6(&host)
            .await
            .expect("already off: nothing to do");
        // The adopted pair carries traffic.
        sys.add_address(&a, &ifname("eth0"), "10.78.0.2/32".parse().unwrap())
            .await
            .unwrap();
        sys.link_up(Some(&a), &ifname("eth0")).await.unwrap();
        sys.link_up(None, &host).await.unwrap();
        for args in [
            ["ip", "addr", "add", "10.78.0.1/32", "dev", "nh00000000000a"],
            [
                "ip",
                "route",
                "add",
                "10.78.0.2/32",
                "dev",
                "nh00000000000a",
            ],
        ] {
            let (ok, text) = in_node(&ctx.node, &args);
            assert!(ok, "{args:?}: {text}");
        }
        let (ok, text) = in_pod(
            &a,
            &[
                "ip", "route", "add", "default", "dev", "eth0", "scope", "link",
            ],
        );
        assert!(ok, "{text}");
        let (ok, text) = in_node(&ctx.node, &["ping", "-c1", "-W2", "10.78.0.2"]);
        assert!(ok, "ping the adopted pod end: {text}");

        // A create that does not fit (another pod end name) deletes the pooled pair and
        // makes its own: no second link in the pod, none left under the pool name.
        let b = dir.join("b");
        sys.create_netns(&b).await.expect("create b from the pool");
        sys.create_veth(VethPair {
            host_mac: Some(HOST_VETH_MAC),
            ..VethPair::new(&ifname("nh00000000000b"), &ifname("eth1"), &b, 1400)
        })
        .await
        .expect("veth of b, made");
        let names: Vec<String> = links_up(&b).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["lo".to_string(), "eth1".to_string()]);
        assert!(pool_links(&sys).await.is_empty());

        // A create that died after mounting a pooled namespace, before its veth step, left
        // the pair. The next start deletes it (the pod end with it) before anything else,
        // and the pod's veth step then makes a new pair.
        sys.creates_in_flight(0);
        pool_reaches(&sys, 2).await;
        sys.creates_in_flight(1);
        let c = dir.join("c");
        sys.create_netns(&c).await.expect("create c from the pool");
        assert_eq!(links_up(&c).len(), 2, "lo and the pooled pod end");
        let restarted = LinuxSystem::new(&ctx.config, logger()).expect("new, again");
        restarted
            .start_netns_pool(&ctx.config, &Default::default())
            .await;
        assert_eq!(links_up(&c), vec![("lo".to_string(), true)]);
        drop(restarted);
        let c_host = ifname("nh00000000000c");
        sys.create_veth(VethPair {
            host_mac: Some(HOST_VETH_MAC),
            ..VethPair::new(&c_host, &ifname("eth0"), &c, 1400)
        })
        .await
        .expect("veth of c, made after its pooled pair was deleted");
        assert!(link_line(&ctx, Some(&c), "eth0").contains("mtu 1400"));

        // A create that reserved a pooled namespace when it was admitted keeps the pair's
        // host end under its pool name (its record names it so): the same link, no rename,
        // up already; only the pod end gets the pod's MAC.
        sys.creates_in_flight(0);
        pool_reaches(&sys, 2).await;
        sys.creates_in_flight(1);
        let d = dir.join("d");
        let d_host = sys
            .reserve_pooled_link(&d)
            .expect("a pooled pair reserved for d");
        assert!(
            netns_holder_core::names::is_pooled_veth_name(d_host.as_str()),
            "{d_host}"
        );
        let reserved_line = link_line(&ctx, None, d_host.as_str());
        sys.create_netns(&d)
            .await
            .expect("create d from its reservation");
        sys.create_veth(VethPair {
            host_mac: Some(HOST_VETH_MAC),
            peer_mac: Some(Mac([0x02, 0, 0, 0, 0, 0x0d])),
            ..VethPair::new(&d_host, &ifname("eth0"), &d, 1400)
        })
        .await
        .expect("veth of d, adopted under its pool name");
        let d_line = link_line(&ctx, None, d_host.as_str());
        assert_eq!(
            d_line.split(':').next(),
            reserved_line.split(':').next(),
            "the same link: {d_line}"
        );
        assert!(
            d_line.contains(",UP") && d_line.contains("mtu 1400"),
            "{d_line}"
        );
        let d_pod = link_line(&ctx, Some(&d), "eth0");
        assert!(d_pod.contains("02:00:00:00:00:0d"), "{d_pod}");
        // A reservation a create gave up goes with its namespace; another reservation for
        // the same path replaces the first.
        let e = dir.join("e");
        let given_up = sys.reserve_pooled_link(&e).expect("a second reservation");
        sys.release_pooled_link(&e);
        for _ in 0..500 {
            if !pool_links(&sys).await.contains(&given_up) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !pool_links(&sys).await.contains(&given_up),
            "{given_up} left"
        );
        // A restart keeps the pool-named host veths that records name (`d`'s) and deletes
        // the others, and those of the earlier prefix (`npv`).
        sys.creates_in_flight(0);
        pool_reaches(&sys, 2).await;
        let (ok, text) = in_node(
            &ctx.node,
            &[
                "ip",
                "link",
                "add",
                "npv0a1b2c000001",
                "type",
                "veth",
                "peer",
                "name",
                "nhtestpeer1",
            ],
        );
        assert!(ok, "an old pool-named pair: {text}");
        let restarted = LinuxSystem::new(&ctx.config, logger()).expect("new, a third time");
        restarted
            .start_netns_pool(&ctx.config, &[d_host.clone()].into_iter().collect())
            .await;
        assert_eq!(pool_links(&restarted).await, vec![d_host.clone()]);
        assert!(
            restarted.list_links(None, "npv").await.unwrap().is_empty()
                && restarted
                    .list_links(None, "nhtestpeer")
                    .await
                    .unwrap()
                    .is_empty(),
            "the earlier prefix's pair is left"
        );
        drop(restarted);

        // A removed pod's pool-named host veth is retired under its own name (no pod takes
        // it again) and goes with the deletion batch.
        let before: Vec<IfName> = sys.list_links(None, "nhx").await.unwrap();
        assert!(sys.retire_link(None, &d_host).await.unwrap());
        assert_eq!(
            sys.list_links(None, "nhx").await.unwrap(),
            before,
            "renamed"
        );
        for _ in 0..500 {
            if !pool_links(&sys).await.contains(&d_host) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!pool_links(&sys).await.contains(&d_host), "{d_host} left");
        for link in [&host, &ifname("nh00000000000b"), &c_host] {
            assert!(sys.delete_link(None, link).await.unwrap());
        }
        for path in [&a, &b, &c, &d] {
            assert!(sys.delete_netns(path).await.unwrap());
        }
    });
}

/// Names of the ports of `bridge` in the test's node namespace.
fn bridge_ports(ctx: &Ctx, bridge: &str) -> Vec<String> {
    let (ok, text) = in_node(&ctx.node, &["ip", "-j", "link", "show", "master", bridge]);
    assert!(ok, "ip link show master {bridge}: {text}");
    let links: serde_json::Value = serde_json::from_str(&text).expect("ip -j link JSON");
    links
        .as_array()
        .expect("a list of links")
        .iter()
        .map(|l| l["ifname"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A create's first two steps for the pod `name` on `bridge`: its namespace `dir/<name>`
/// (from the pool if it has one) and its veth, host end `nh0000000000<name>`.
async fn bridge_pod(
    sys: &LinuxSystem,
    dir: &Path,
    bridge: &IfName,
    name: &str,
) -> (PathBuf, IfName, Result<(), SystemError>) {
    let netns = dir.join(name);
    sys.create_netns(&netns)
        .await
        .expect("create the pod's netns");
    let host = ifname(&format!("nh0000000000{name}"));
    let veth = sys
        .create_veth(VethPair {
            master: Some(bridge),
            ..VethPair::new(&host, &ifname("eth0"), &netns, 1500)
        })
        .await;
    (netns, host, veth)
}

#[test]
fn pooled_host_ends_join_the_bridge_ahead_and_leave_it_for_pods_when_it_is_full() {
    require_root!();
    let mut env = Env::new(None, None);
    env.ctx.config.netns_pool = 2;
    env.ctx.config.datapath = netns_holder_core::datapath::Datapath::Bridge;
    env.run(|ctx| async move {
        let sys = LinuxSystem::new(&ctx.config, logger()).expect("new");
        let dir = ctx.config.netns_dir.clone();
        let bridge = ctx.config.bridge.clone();
        // The bridge is made at start, with its gateway address, before any create.
        sys.start_netns_pool(&ctx.config, &Default::default()).await;
        let (ok, text) = in_node(
            &ctx.node,
            &["ip", "-o", "addr", "show", "dev", bridge.as_str()],
        );
        assert!(
            ok && text.contains("10.222.0.1/"),
            "bridge at start: {text}"
        );
        pool_reaches(&sys, 2).await;
        let pooled = pool_links_reach(&sys, 2).await;
        let mut ports = bridge_ports(&ctx, bridge.as_str());
        ports.sort();
        let mut expected: Vec<String> = pooled.iter().map(|l| l.to_string()).collect();
        expected.sort();
        assert_eq!(
            ports, expected,
            "the pooled host ends are the bridge's ports"
        );

        // A create adopts one: its host end stays a port under the pod's name.
        sys.creates_in_flight(1);
        let (a, a_host, veth) = bridge_pod(&sys, &dir, &bridge, "a0").await;
        veth.expect("veth of a, adopted");
        assert!(bridge_ports(&ctx, bridge.as_str()).contains(&a_host.to_string()));

        // Fill the bridge to the kernel's 1023 ports with veths: the pod, the pooled
        // port and 1021 others.
        let taken = bridge_ports(&ctx, bridge.as_str()).len();
        assert_eq!(taken, 2);
        let batch = dir.parent().unwrap().join("ports.batch");
        let lines: String = (0..1023 - taken)
            .map(|i| format!("link add hxd{i} master {bridge} type veth peer name hxe{i}\n"))
            .collect();
        std::fs::write(&batch, lines).unwrap();
        let (ok, text) = in_node(&ctx.node, &["ip", "-batch", batch.to_str().unwrap()]);
        assert!(ok, "ip -batch: {text}");
        assert_eq!(bridge_ports(&ctx, bridge.as_str()).len(), 1023);

        // The pool refills; its new pair cannot join the full bridge (and the pool stops
        // trying), so it sits above the one that did.
        sys.creates_in_flight(0);
        pool_reaches(&sys, 2).await;
        pool_links_reach(&sys, 2).await;
        sys.creates_in_flight(1);
        // A create takes that one: its port is refused (EXFULL) until the pooled port that
        // did join is taken off the bridge for it.
        let (b, b_host, veth) = bridge_pod(&sys, &dir, &bridge, "b0").await;
        veth.expect("veth of b, a port of the full bridge in place of a pooled one");
        let ports = bridge_ports(&ctx, bridge.as_str());
        assert_eq!(ports.len(), 1023);
        assert!(ports.contains(&b_host.to_string()) && ports.contains(&a_host.to_string()));
        assert!(
            !ports.iter().any(|p| p.starts_with("nhv")),
            "no pooled port left on the full bridge: {ports:?}"
        );

        // A port freed: the next create takes the last pooled pair, which joins then.
        let (ok, text) = in_node(&ctx.node, &["ip", "link", "del", "hxd0"]);
        assert!(ok, "{text}");
        let (c, c_host, veth) = bridge_pod(&sys, &dir, &bridge, "c0").await;
        veth.expect("veth of c");
        assert!(bridge_ports(&ctx, bridge.as_str()).contains(&c_host.to_string()));

        // Full again, nothing pooled left: a create's own pair is refused with an error
        // that names the bridge and its limit, and leaves nothing behind.
        let (d, d_host, veth) = bridge_pod(&sys, &dir, &bridge, "d0").await;
        let refused = veth.expect_err("a 1024th port");
        let message = refused.to_string();
        assert!(
            message.contains(&format!("bridge {bridge}")) && message.contains("1023 ports"),
            "{message}"
        );
        assert!(!sys.list_links(None, "nh").await.unwrap().contains(&d_host));
        assert_eq!(links_up(&d), vec![("lo".to_string(), false)]);
        assert!(sys.delete_netns(&d).await.unwrap());

        for link in [&a_host, &b_host, &c_host] {
            assert!(sys.delete_link(None, link).await.unwrap());
        }
        for path in [&a, &b, &c] {
            assert!(sys.delete_netns(path).await.unwrap());
        }
    });
}

/// `(index, IFF_RUNNING)` of `link` in `netns` (the node's if `None`), from `ip -j link`.
fn index_and_running(ctx: &Ctx, netns: Option<&Path>, link: &str) -> (u64, bool) {
    let args = ["ip", "-j", "link", "show", link];
    let (ok, text) = match netns {
        Some(netns) => in_pod(netns, &args),
        None => in_node(&ctx.node, &args),
    };
    assert!(ok, "ip -j link show {link}: {text}");
    let links: serde_json::Value = serde_json::from_str(&text).expect("ip -j link show JSON");
    let link = &links[0];
    let running = link["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == "LOWER_UP"))
        && link["operstate"] == "UP";
    (link["ifindex"].as_u64().expect("ifindex"), running)
}

#[test]
fn veth_ends_never_share_an_index_so_they_pass_packets_as_soon_as_they_are_up() {
    require_root!();
    // A bare node namespace (only lo): the first host veth would get index 2, as the pod
    // end in its own namespace does, and the kernel would bring such a pair up only at its
    // link watcher's next unhurried run, up to a second later.
    for pool in [0u32, 2] {
        let mut env = Env::new(None, Some(1400));
        env.ctx.config.netns_pool = pool;
        env.ctx.config.datapath = netns_holder_core::datapath::Datapath::Routed;
        env.run(move |ctx| async move {
            let sys = LinuxSystem::new(&ctx.config, logger()).expect("new");
            sys.start_netns_pool(&ctx.config, &Default::default()).await;
            pool_reaches(&sys, pool as usize).await;
            let a = ctx.config.netns_dir.join("a");
            sys.create_netns(&a).await.expect("create a");
            let host = ifname("nh0000000000aa");
            sys.create_veth(VethPair::new(&host, &ifname("eth0"), &a, 1400))
                .await
                .expect("veth of a");
            let (host_index, _) = index_and_running(&ctx, None, host.as_str());
            let (pod_index, _) = index_and_running(&ctx, Some(&a), "eth0");
            assert_ne!(
                host_index, pod_index,
                "pool {pool}: both ends have index {pod_index}"
            );
            sys.link_up(Some(&a), &ifname("eth0")).await.unwrap();
            sys.link_up(None, &host).await.unwrap();
            // Running (carrier applied, queue discipline attached) well within the link
            // watcher's second.
            let deadline = Instant::now() + Duration::from_millis(300);
            while !(index_and_running(&ctx, None, host.as_str()).1
                && index_and_running(&ctx, Some(&a), "eth0").1)
            {
                assert!(
                    Instant::now() < deadline,
                    "pool {pool}: the pair is not running 300 ms after it was set up"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(sys.delete_link(None, &host).await.unwrap());
            assert!(sys.delete_netns(&a).await.unwrap());
        });
    }
}
