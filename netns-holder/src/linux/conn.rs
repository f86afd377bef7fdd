//! rtnetlink connections bound to a network namespace.
//!
//! A netlink socket belongs to the namespace of the thread that created it, for good. So
//! each socket is created on a throwaway thread that entered the wanted namespace first
//! ([`super::thread::run`]) and then wrapped into an rtnetlink connection driven by a tokio
//! task; requests can be sent from any thread afterwards.
//!
//! * The node connection is opened on first use and kept.
//! * Pod connections are cached by the namespace's identity (device and inode of its nsfs
//!   file; a cached socket pins its namespace, so the inode cannot be reused while the entry
//!   lives) and dropped after [`POD_IDLE`] without use, by a sweeper task that runs while the
//!   cache is not empty, or at once when the namespace is deleted through us
//!   ([`PodConns::evict`]). A create issues half a dozen pod-side calls within milliseconds;
//!   they share one socket instead of paying a thread and a socket each, while a namespace
//!   that someone else deletes is pinned by us for at most about [`POD_IDLE`] longer.
//! * At most [`POD_CACHE_MAX`] pod connections are cached; beyond that the least recently
//!   used one is dropped. Without the cap, `check` or the reconcile at start, which look at
//!   every pod within a second, kept one socket per pod open: with 1000 pods about 1000
//!   descriptors, at systemd's default soft limit of 1024.
//!
//! The kernel runs one dump per netlink socket at a time (a second one gets `EBUSY`), so
//! every connection carries a lock that dumping operations hold.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use rtnetlink::Handle;
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};
use slog::debug;

use super::LinuxSystem;
use super::netns::{self, NetnsKey};
use super::thread::NsFd;
use crate::system::SystemError;

/// How long an unused pod connection is kept.
pub(crate) const POD_IDLE: Duration = Duration::from_secs(1);

/// How many pod connections are cached at most (each is a socket and its duplicate for
/// ioctls, i.e. two descriptors): more than the pods being created or inspected at the same
/// time, far below descriptor limits.
pub(crate) const POD_CACHE_MAX: usize = 64;

/// A connection: its handle, its dump lock, and its socket for ioctls.
#[derive(Clone)]
pub(crate) struct Conn {
    /// Sends requests.
    pub(crate) handle: Handle,
    /// Held by operations that dump.
    pub(crate) dumps: Arc<tokio::sync::Mutex<()>>,
    /// A duplicate of the connection's socket, for `SIOCGIFINDEX` in its namespace (a link's
    /// index without a netlink round trip; see `netlink::links::index_in`).
    pub(crate) ioctl: Arc<OwnedFd>,
}

/// The receive buffer of every netlink socket. The kernel drops a reply that does not fit
/// (the reader sees `ENOBUFS`, and netlink-proto then waits for that reply for ever); the
/// default (`net.core.rmem_default`, about 208 KiB) fills when dozens of pods are wired at
/// once. Set with `SO_RCVBUFFORCE` (CAP_NET_ADMIN), so `net.core.rmem_max` does not cap it.
pub(crate) const RECEIVE_BUFFER: usize = 4 << 20;

/// Sets the `SOL_SOCKET` option `option` of `socket` to `value` (`setsockopt(2)`).
pub(crate) fn set_socket_option<T>(
    socket: &Socket,
    option: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    let size = libc::socklen_t::try_from(std::mem::size_of::<T>())
        .map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live `T` and its size; the
    // kernel only reads (copies) the value during the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            std::ptr::from_ref(value).cast(),
            size,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Creates a raw rtnetlink socket in the calling thread's network namespace.
pub(super) fn new_socket(object: &str) -> Result<Socket, SystemError> {
    let socket = Socket::new(NETLINK_ROUTE)
        .map_err(|e| SystemError::io(format!("{object}: opening a netlink socket"), e))?;
    let size = libc::c_int::try_from(RECEIVE_BUFFER).unwrap_or(libc::c_int::MAX);
    let set = |option: libc::c_int| set_socket_option(&socket, option, &size);
    // Without CAP_NET_ADMIN, as much as `net.core.rmem_max` allows.
    set(libc::SO_RCVBUFFORCE)
        .or_else(|_| set(libc::SO_RCVBUF))
        .map_err(|e| {
            SystemError::io(
                format!("{object}: setting the receive buffer to {RECEIVE_BUFFER} bytes"),
                e,
            )
        })?;
    Ok(socket)
}

/// Wraps `socket` (created in whatever namespace) into a connection driven by a new task.
fn connect(socket: Socket, object: &str) -> Result<Conn, SystemError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(SystemError::other(
            object,
            "netlink needs to be driven from inside a tokio runtime",
        ));
    }
    // SAFETY: `socket` is open and outlives this borrow; the duplicate is ours.
    let ioctl = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) }
        .try_clone_to_owned()
        .map_err(|e| SystemError::io(format!("{object}: duplicating the socket"), e))?;
    // SAFETY: `socket` is an open netlink socket that we own; `into_raw_fd` gives up that
    // ownership, which passes to the TokioSocket (it closes the descriptor when dropped).
    let socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (connection, handle, _unsolicited) = rtnetlink::from_socket(socket);
    // The task ends (closing the socket) once every handle is dropped.
    tokio::spawn(connection);
    Ok(Conn {
        handle,
        dumps: Arc::default(),
        ioctl: Arc::new(ioctl),
    })
}

/// Opens a connection inside the namespace `enter`; `object` names it in errors.
async fn open_in(sys: &LinuxSystem, enter: NsFd, object: String) -> Result<Conn, SystemError> {
    let thread_object = object.clone();
    let socket = sys
        .ns_workers
        .run(&object, Some(enter), move || new_socket(&thread_object))
        .await?;
    connect(socket, &object)
}

/// The node connection, opened on first use.
pub(crate) async fn node(sys: &LinuxSystem) -> Result<Conn, SystemError> {
    sys.node_netlink
        .get_or_try_init(|| async {
            let conn = open_in(
                sys,
                NsFd::Shared(sys.node.clone()),
                "netlink in the node namespace".to_string(),
            )
            .await?;
            debug!(sys.log, "node netlink connection opened");
            Ok(conn)
        })
        .await
        .cloned()
}

/// Creates a network namespace bind-mounted at `path` ([`netns::create_blocking`], on a
/// namespace worker) and, in the same job while the worker is inside it, the namespace's
/// netlink connection, cached for the pod steps that follow (instead of a second job that
/// enters the namespace again). A socket that cannot be opened there is left to the first
/// pod step: the namespace exists either way, which is what the caller asked for.
///
/// A namespace made ahead by the pool ([`super::pool`]) is taken when there is one (the one
/// reserved for `path` first): only its bind mount is left to do, and its netlink socket
/// becomes the pod's connection.
pub(crate) async fn create_netns(sys: &LinuxSystem, path: &Path) -> Result<(), SystemError> {
    let target = path.to_path_buf();
    let object = super::netns_object(path);
    if let Some(pooled) = sys.netns_pool.take(path) {
        let super::pool::Pooled {
            ns,
            key,
            socket,
            veth,
        } = pooled;
        // On failure the namespace goes with `ns`, its only reference.
        sys.ns_workers
            .run(&object, None, move || netns::mount_made(&target, &ns))
            .await?;
        sys.netns_pool.handed_out(key, veth);
        if let Ok(conn) = connect(socket, &format!("netlink in {}", path.display())) {
            sys.pods.insert(key, conn);
        }
        return Ok(());
    }
    let socket = sys
        .ns_workers
        .run(&object, None, move || {
            netns::create_blocking(&target)?;
            Ok(netns::current_key()
                .and_then(|key| new_socket("netlink").map(|socket| (key, socket)))
                .ok())
        })
        .await?;
    if let Some((key, socket)) = socket
        && let Ok(conn) = connect(socket, &format!("netlink in {}", path.display()))
    {
        sys.pods.insert(key, conn);
    }
    Ok(())
}

/// A connection inside the namespace bind-mounted at `path`, cached.
pub(crate) async fn pod(sys: &LinuxSystem, path: &Path) -> Result<Conn, SystemError> {
    if let Some(conn) = netns::key(path)?.and_then(|key| sys.pods.get(key)) {
        return Ok(conn);
    }
    let fd = netns::open_netns(path)?;
    // The key of what was actually opened (the path may have changed since).
    let key = netns::fd_key(&fd, path)?;
    let conn = open_in(
        sys,
        NsFd::Owned(fd),
        format!("netlink in {}", path.display()),
    )
    .await?;
    Ok(sys.pods.insert(key, conn))
}

struct Entry {
    conn: Conn,
    last_used: Instant,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<NetnsKey, Entry>,
    /// The sweeper task, while the cache is not empty (changed only under the lock). A task
    /// that ended with its runtime counts as finished, so a new one is started then.
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

/// The pod connection cache.
#[derive(Default)]
pub(crate) struct PodConns {
    inner: Arc<Mutex<Inner>>,
}

impl PodConns {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached connection for `key`, marked used.
    fn get(&self, key: NetnsKey) -> Option<Conn> {
        let mut inner = self.lock();
        let entry = inner.entries.get_mut(&key)?;
        entry.last_used = Instant::now();
        Some(entry.conn.clone())
    }

    /// Caches `conn` for `key` unless a concurrent caller did first; returns the cached one.
    /// Drops the least recently used entries beyond [`POD_CACHE_MAX`] (their users keep
    /// their clones; the socket closes with the last one).
    fn insert(&self, key: NetnsKey, conn: Conn) -> Conn {
        let mut inner = self.lock();
        let cached = inner
            .entries
            .entry(key)
            .or_insert(Entry {
                conn,
                last_used: Instant::now(),
            })
            .conn
            .clone();
        while inner.entries.len() > POD_CACHE_MAX {
            let Some(oldest) = inner
                .entries
                .iter()
                .filter(|(k, _)| **k != key)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        if inner.sweeper.as_ref().is_none_or(|t| t.is_finished()) {
            inner.sweeper = Some(tokio::spawn(sweep(Arc::downgrade(&self.inner))));
        }
        cached
    }

    /// Drops the connection for `key` (its namespace is going away).
    pub(crate) fn evict(&self, key: NetnsKey) {
        self.lock().entries.remove(&key);
    }

    /// Number of cached connections.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// Drops idle entries until the cache is empty (or gone).
async fn sweep(cache: Weak<Mutex<Inner>>) {
    loop {
        tokio::time::sleep(POD_IDLE / 2).await;
        let Some(cache) = cache.upgrade() else { return };
        let mut inner = cache.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .retain(|_, e| e.last_used.elapsed() < POD_IDLE);
        if inner.entries.is_empty() {
            inner.sweeper = None;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let (_connection, handle, _) = rtnetlink::new_connection().expect("netlink socket");
        Conn {
            handle,
            dumps: Arc::default(),
            ioctl: Arc::new(std::fs::File::open("/dev/null").expect("/dev/null").into()),
        }
    }

    #[tokio::test]
    async fn idle_entries_are_swept_and_first_insert_wins() {
        let cache = PodConns::default();
        let key = NetnsKey { dev: 1, ino: 2 };
        let first = cache.insert(key, conn());
        let second = cache.insert(key, conn());
        assert!(Arc::ptr_eq(&first.dumps, &second.dumps));
        assert!(cache.get(key).is_some());
        tokio::time::sleep(POD_IDLE * 2).await;
        assert_eq!(cache.len(), 0);
        assert!(cache.lock().sweeper.is_none());
        cache.insert(key, conn());
        cache.evict(key);
        assert!(cache.get(key).is_none());
    }

    #[tokio::test]
    async fn the_cache_keeps_at_most_its_cap_dropping_the_least_recently_used() {
        let cache = PodConns::default();
        let key = |ino: u64| NetnsKey { dev: 1, ino };
        for ino in 0..POD_CACHE_MAX as u64 {
            cache.insert(key(ino), conn());
            std::thread::sleep(Duration::from_millis(1));
        }
        // Key 0 is used again, so key 1 is now the least recently used.
        assert!(cache.get(key(0)).is_some());
        for ino in 1000..1010 {
            cache.insert(key(ino), conn());
            assert_eq!(cache.len(), POD_CACHE_MAX);
            assert!(cache.get(key(ino)).is_some(), "the newest entry stays");
        }
        assert!(cache.get(key(0)).is_some(), "a recently used entry stays");
        assert!(
            cache.get(key(1)).is_none(),
            "the least recently used went first"
        );
    }
}
