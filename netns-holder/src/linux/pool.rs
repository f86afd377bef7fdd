//! Network namespaces made ahead of the creates that take them (`netns_pool` in the config).
//!
//! Making a pod's network namespace is the largest part of a create: `unshare(CLONE_NEWNET)`
//! has the kernel set up every per-namespace subsystem and register a loopback under RTNL
//! (about 0.45 ms on the 2-core test guest), and bringing that loopback up adds `127.0.0.1`,
//! `::1` and their routes (0.15 ms). The pool does both beforehand, on a thread of its own at
//! the lowest CPU priority (nice 19). It makes one only while no create or attach is running
//! (the manager tells it: [`NetnsPool::creates_in_flight`]), so a burst of creates never
//! shares the CPU or RTNL with it; between sequential creates it refills what they took. A
//! create takes a pooled namespace and only bind-mounts it at the pod's path
//! ([`super::netns::mount_made`]); when the pool is empty, it makes one as before.
//!
//! Each pooled namespace also gets the pod's veth pair, made ahead the same way and adopted
//! by the create's veth step ([`super::pool_veth`]); on the bridge datapath its host end
//! joins the node bridge ahead too ([`pool_veth::PoolBridge`]).
//!
//! A pooled namespace is held only by this process's descriptors and mounted nowhere: when
//! the daemon ends or crashes, the kernel frees it, with its veth pair, so the pool leaves
//! nothing that `check`, reconcile or gc would have to know about (but see
//! [`super::pool_veth`] for the one window a create has). Each one holds about 190 KiB of
//! kernel memory for the namespace and 90 KiB for its pair, and two descriptors (the
//! namespace, and the netlink socket made inside it that becomes the pod's connection).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns, unshare};
use rtnetlink::sys::Socket;
use slog::{Logger, debug, info, warn};

use super::netns::{self, NetnsKey};
use super::pool_veth::{self, PooledVeth, VethSpec};
use crate::names::IfName;
use crate::system::SystemError;

/// How long the filler waits before trying again after failing to make a namespace.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How often a full pool's filler checks whether the pool is still in use.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How long a namespace reserved for a create ([`NetnsPool::reserve`]) waits for the create's
/// namespace step before it is dropped: a create that never got there (it failed first, or
/// stalls) must not hold a namespace and a pair for ever. A create that comes later takes
/// another namespace, or makes its own, and renames the pair's host end as before.
const RESERVATION_TTL: Duration = Duration::from_secs(60);

/// A namespace from the pool, its loopback up.
pub(crate) struct Pooled {
    /// The namespace: the only reference to it until it is mounted.
    pub(crate) ns: OwnedFd,
    /// Its identity, the key of its pod connection.
    pub(crate) key: NetnsKey,
    /// The netlink socket made inside it.
    pub(crate) socket: Socket,
    /// The pod's veth pair made in it, if the pool makes them and this one was made.
    pub(crate) veth: Option<PooledVeth>,
}

/// The pool: see the module documentation.
pub(crate) struct NetnsPool {
    /// How many namespaces the filler keeps ready: the configured size, lowered at start to
    /// the pods the node's address pools hold.
    target: AtomicUsize,
    /// Where the filler returns after making each namespace.
    node: Arc<OwnedFd>,
    state: Mutex<State>,
    /// Signalled when a namespace was taken or when no create is running any more.
    changed: Condvar,
    started: Once,
    /// Namespaces handed out whose loopback nobody has set since the pool brought it up
    /// ([`NetnsPool::take_fresh`]).
    fresh: Mutex<HashSet<NetnsKey>>,
    /// What the pool's veth pairs look like (set when the pool starts).
    veth_spec: OnceLock<VethSpec>,
    /// The pairs of namespaces handed out, until the create's veth step takes them.
    veths: Mutex<HashMap<NetnsKey, PooledVeth>>,
    /// Namespaces taken out of `ready` for the create of the pod at the path, whose record
    /// names their pair's host end ([`NetnsPool::reserve`]), with when.
    reserved: Mutex<HashMap<PathBuf, (Pooled, Instant)>>,
    log: Logger,
}

/// More fresh keys than this means they are not being taken: forget them all (the only cost
/// is a loopback set up once more).
const FRESH_MAX: usize = 4096;

struct State {
    ready: Vec<Pooled>,
    /// Creates and attaches running now.
    creates: usize,
}

impl NetnsPool {
    /// A pool that keeps `target` namespaces ready once started; its filler returns to the
    /// node namespace `node` after making each.
    pub(crate) fn new(target: usize, node: Arc<OwnedFd>, log: Logger) -> Self {
        Self {
            target: AtomicUsize::new(target),
            node,
            state: Mutex::new(State {
                ready: Vec::with_capacity(target),
                creates: 0,
            }),
            changed: Condvar::new(),
            started: Once::new(),
            fresh: Mutex::new(HashSet::new()),
            veth_spec: OnceLock::new(),
            veths: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            log,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the filler thread (once; not at all for a pool of 0), making veth pairs as
    /// `spec` says with each namespace, and never more namespaces than `pod_capacity` (the
    /// pods the node's address pools hold: more could never be taken). It ends when the pool
    /// is dropped, or if it cannot get back to the node namespace.
    pub(crate) fn start(self: &Arc<Self>, spec: VethSpec, pod_capacity: usize) {
        let configured = self.target.fetch_min(pod_capacity, Ordering::Relaxed);
        if configured > pod_capacity {
            info!(self.log, "network namespace pool lowered to the node's pod capacity";
                "configured" => configured, "pod_capacity" => pod_capacity);
        }
        if self.target() == 0 {
            return;
        }
        let _ = self.veth_spec.set(spec);
        self.started.call_once(|| {
            let pool = Arc::downgrade(self);
            let spawned = std::thread::Builder::new()
                .name("nh-netns-pool".to_string())
                .spawn(move || fill(&pool));
            match spawned {
                Ok(_) => {
                    info!(self.log, "network namespace pool started"; "target" => self.target())
                }
                Err(e) => {
                    warn!(self.log, "network namespace pool not started: cannot spawn its thread";
                    "error" => %e)
                }
            }
        });
    }

    /// The namespace reserved for the pod at `path` if there is one ([`NetnsPool::reserve`]),
    /// else a ready one, if there is one; the filler makes the next once no create runs.
    pub(crate) fn take(&self, path: &Path) -> Option<Pooled> {
        if self.target() == 0 {
            return None;
        }
        if let Some((pooled, _)) = self.reservations().remove(path) {
            return Some(pooled);
        }
        let taken = self.lock().ready.pop();
        self.changed.notify_one();
        taken
    }

    /// Takes a ready namespace with a veth pair out of the pool for the create of the pod
    /// whose namespace will be at `path`, and returns the pair's host end name: the pod's
    /// record names its host veth so, and the create's veth step then has nothing to
    /// rename (a rename re-registers the link's sysctl tables under RTNL). The namespace
    /// step takes it ([`NetnsPool::take`]); [`NetnsPool::release`] or
    /// [`RESERVATION_TTL`] drops it if the create never gets there.
    pub(crate) fn reserve(&self, path: &Path) -> Option<IfName> {
        if self.target() == 0 {
            return None;
        }
        let pooled = {
            let mut state = self.lock();
            let at = state.ready.iter().rposition(|p| p.veth.is_some())?;
            state.ready.swap_remove(at)
        };
        self.changed.notify_one();
        let name = pooled
            .veth
            .as_ref()
            .and_then(|v| IfName::new(v.host.clone()).ok());
        let mut reserved = self.reservations();
        let now = Instant::now();
        reserved.retain(|_, (_, at)| now.duration_since(*at) < RESERVATION_TTL);
        // A reservation for the same path (a create that failed before its namespace
        // step, then again) is replaced: its namespace and pair go with it.
        reserved.insert(path.to_path_buf(), (pooled, now));
        name
    }

    /// Drops the namespace reserved for `path`, if any (its create ended without taking it):
    /// the kernel deletes it with its pair.
    pub(crate) fn release(&self, path: &Path) {
        let released = self.reservations().remove(path);
        drop(released);
    }

    fn reservations(&self) -> MutexGuard<'_, HashMap<PathBuf, (Pooled, Instant)>> {
        self.reserved.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many creates and attaches are running (from the manager): the filler waits
    /// while any is.
    pub(crate) fn creates_in_flight(&self, count: usize) {
        if self.target() == 0 {
            return;
        }
        self.lock().creates = count;
        if count == 0 {
            self.changed.notify_one();
        }
    }

    /// Records that the pooled namespace `key` was mounted for a pod, its loopback up as
    /// the pool left it, with the veth pair `veth` in it.
    pub(crate) fn handed_out(&self, key: NetnsKey, veth: Option<PooledVeth>) {
        let mut fresh = self.fresh.lock().unwrap_or_else(|e| e.into_inner());
        if fresh.len() >= FRESH_MAX {
            fresh.clear();
        }
        fresh.insert(key);
        drop(fresh);
        if let Some(veth) = veth {
            let mut veths = self.veths.lock().unwrap_or_else(|e| e.into_inner());
            // Pairs never taken went with their namespaces (a create failed before its veth
            // step): forgetting them costs nothing.
            if veths.len() >= FRESH_MAX {
                veths.clear();
            }
            veths.insert(key, veth);
        }
    }

    /// The veth pair the pool made in the namespace `key`, once.
    pub(crate) fn take_veth(&self, key: NetnsKey) -> Option<PooledVeth> {
        self.veths
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
    }

    /// Whether `key` is a namespace just handed out whose loopback is still as the pool left
    /// it (up, with 127.0.0.1/8 and ::1): true once, so only the pod's first "bring loopback
    /// up" step is spared the three requests.
    pub(crate) fn take_fresh(&self, key: NetnsKey) -> bool {
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
    }

    /// Forgets `key` (its namespace is being unmounted: the number may name another one
    /// later).
    pub(crate) fn forget(&self, key: NetnsKey) {
        self.fresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        self.take_veth(key);
    }

    /// A bridge full of ports refused one: stops joining pooled host ends to it and returns
    /// the indexes of the ready ones that joined it, which the caller takes off it (they are
    /// counted as taken off: at worst one stays a port until a create adopts it).
    pub(crate) fn leave_full_bridge(&self) -> Vec<u32> {
        if let Some(bridge) = self.veth_spec.get().and_then(|s| s.bridge.as_ref()) {
            bridge.full.store(true, Ordering::Relaxed);
        }
        // A pair counts as taken off once asked: its host end's index if it was a port.
        let take_port = |pooled: &mut Pooled| {
            let veth = pooled.veth.as_mut()?;
            veth.port_of.take().map(|_| veth.host_index)
        };
        let mut ports: Vec<u32> = self.lock().ready.iter_mut().filter_map(take_port).collect();
        ports.extend(
            self.reservations()
                .values_mut()
                .filter_map(|(pooled, _)| take_port(pooled)),
        );
        ports
    }

    /// How many namespaces are ready.
    pub(crate) fn ready(&self) -> usize {
        self.lock().ready.len()
    }

    /// How many namespaces the filler keeps ready.
    pub(crate) fn size(&self) -> usize {
        self.target()
    }

    fn target(&self) -> usize {
        self.target.load(Ordering::Relaxed)
    }
}

/// The filler thread: keeps the pool at its target while the pool lives.
fn fill(pool: &Weak<NetnsPool>) {
    lower_priority();
    if let Some(p) = pool.upgrade()
        && let Err(e) = setns(&*p.node, CloneFlags::CLONE_NEWNET)
    {
        warn!(p.log, "network namespace pool stopped: cannot enter the node namespace"; "error" => %e);
        return;
    }
    // The node-side socket for the pairs' host ends; without it, namespaces without pairs.
    let in_node = match Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE) {
        Ok(socket) => Some(socket),
        Err(e) => {
            if let Some(p) = pool.upgrade() {
                warn!(p.log, "network namespace pool: no veth pairs made ahead: cannot open a netlink socket"; "error" => %e);
            }
            None
        }
    };
    let mut warned = false;
    let mut again = 0u32;
    loop {
        let Some(p) = pool.upgrade() else { return };
        {
            let mut state = p.lock();
            while state.ready.len() >= p.target() || state.creates > 0 {
                state = p
                    .changed
                    .wait_timeout(state, IDLE_CHECK)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                // Only this thread holds the pool: it is being dropped.
                if Arc::strong_count(&p) == 1 {
                    return;
                }
            }
        }
        let pairs = p.veth_spec.get().zip(in_node.as_ref());
        match make(&p.node, pairs) {
            Ok((made, pair_error)) => {
                again = 0;
                if let Some(e) = pair_error
                    && !std::mem::replace(&mut warned, true)
                {
                    warn!(p.log, "network namespace pool: cannot make a veth pair ahead; pooling namespaces without (said once)";
                        "error" => %e);
                }
                let ready = {
                    let mut state = p.lock();
                    state.ready.push(made);
                    state.ready.len()
                };
                debug!(p.log, "network namespace pool: one made"; "ready" => ready);
            }
            // Made again at once (see `Made::Again`), unless it keeps happening.
            Err(Made::Again) => {
                again += 1;
                if again > 3 {
                    warn!(p.log, "network namespace pool: veth ends keep getting the same index; retrying later";
                        "retry_after_s" => RETRY_AFTER.as_secs());
                    again = 0;
                    drop(p);
                    std::thread::sleep(RETRY_AFTER);
                }
            }
            Err(Made::Failed(e)) => {
                warn!(p.log, "network namespace pool: cannot make a namespace; retrying later";
                    "error" => %e, "retry_after_s" => RETRY_AFTER.as_secs());
                drop(p);
                std::thread::sleep(RETRY_AFTER);
            }
            Err(Made::Stranded(e)) => {
                warn!(p.log, "network namespace pool stopped: cannot return to the node namespace";
                    "error" => %e);
                return;
            }
        }
    }
}

/// Puts the calling thread at nice 19, so that every other thread of the daemon wins the CPU
/// over it. Best effort: at worst the pool competes as an equal.
fn lower_priority() {
    // SAFETY: gettid has no preconditions.
    let Ok(tid) = libc::id_t::try_from(unsafe { libc::gettid() }) else {
        return;
    };
    // SAFETY: setpriority with PRIO_PROCESS and a thread id changes only that thread's nice
    // value; no memory is passed.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
}

/// Why [`make`] failed.
enum Made {
    /// No namespace made; the thread is back in the node namespace.
    Failed(SystemError),
    /// The thread could not return to the node namespace: it must never make another.
    Stranded(nix::Error),
    /// The pair's ends got the same index (each in its namespace): the kernel would bring
    /// it up only at its link watcher's next unhurried run, up to a second after its "up"
    /// (see `same_index_both_ends` in `netlink/links.rs`). Dropped with its namespace; the
    /// next one's host end has a later index, its pod end again index 2.
    Again,
}

/// Makes a namespace on the calling thread, brings its loopback up and opens a netlink
/// socket in it, makes the pod's veth pair in it if `pairs` gives the spec and a node-side
/// socket, and returns the thread to `node`. A pair that could not be made is not fatal:
/// the namespace is pooled without one and the error returned beside it.
fn make(
    node: &OwnedFd,
    pairs: Option<(&VethSpec, &Socket)>,
) -> Result<(Pooled, Option<SystemError>), Made> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|e| {
        Made::Failed(SystemError::io(
            "a pooled network namespace: unshare(CLONE_NEWNET)",
            e.into(),
        ))
    })?;
    let made = netns::open_current().and_then(|(ns, _)| {
        let object = "a pooled network namespace";
        let key = netns::fd_key(&ns, std::path::Path::new(object))?;
        let socket = super::conn::new_socket(object)?;
        super::netlink::ioctl_set_up(socket.as_fd(), "lo", &format!("{object}: lo"))?;
        Ok(Pooled {
            ns,
            key,
            socket,
            veth: None,
        })
    });
    // The pod end is made from inside the namespace, the host end sent to the node's.
    let pair = match (&made, pairs) {
        (Ok(_), Some((spec, _))) => Some(
            Socket::new(rtnetlink::sys::protocols::NETLINK_ROUTE)
                .map_err(|e| SystemError::io("a pooled veth pair: opening a netlink socket", e))
                .and_then(|in_pool| pool_veth::create_in_pool(spec, &in_pool, node.as_fd())),
        ),
        _ => None,
    };
    setns(node, CloneFlags::CLONE_NEWNET).map_err(Made::Stranded)?;
    let mut made = made.map_err(Made::Failed)?;
    let (Some(pair), Some((spec, in_node))) = (pair, pairs) else {
        return Ok((made, None));
    };
    let (host, peer_index) = match pair {
        Ok(made_pair) => made_pair,
        Err(e) => return Ok((made, Some(e))),
    };
    // A pair whose host end cannot be prepared goes with its namespace: dropped here.
    let host_index = pool_veth::prepare_host_end(spec, in_node, &host).map_err(Made::Failed)?;
    if host_index == peer_index {
        return Err(Made::Again);
    }
    let port_of = pool_veth::join_bridge(spec, in_node, &host, host_index);
    let host_up = pool_veth::bring_up_host_end(in_node, &host, host_index);
    made.veth = Some(PooledVeth {
        host,
        host_index,
        peer: spec.peer.clone(),
        peer_index,
        mtu: spec.mtu,
        host_mac: spec.host_mac,
        port_of,
        pod_end_up: spec.pod_end_up,
        host_up,
    });
    Ok((made, None))
}
