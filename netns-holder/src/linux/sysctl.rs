//! Per-namespace sysctls under `/proc/sys/net`, and the machine-wide neighbour table
//! thresholds.
//!
//! The files under `/proc/sys/net` show the namespace of the thread that *opens* them, so
//! every read and write happens on a thread in the right namespace: a throwaway thread that
//! entered a pod's first, and for the node namespace the calling runtime thread or one of
//! tokio's blocking pool, which are in it already ([`in_node`]; a thread per call cost
//! ~0.1 ms, several per create).
//!
//! The neighbour tables' `gc_thresh1/2/3` are global (see [`crate::neigh`]): their files
//! exist only in the initial namespace's `/proc/sys`, so they are written from the node
//! namespace only when it is the initial one, and read with `ip ntable show`
//! (`RTM_GETNEIGHTBL`), which shows them from any namespace.

use std::io::ErrorKind;
use std::path::Path;

use super::netns::open_netns;
use super::thread::{self, NsFd};
use super::{LinuxSystem, link_object};
use crate::names::IfName;
use crate::neigh::{self, Thresholds};
use crate::ports::Family;
use crate::system::SystemError;

/// Sets the sysctl file `file` to `value` unless it already has it. `netns` names the
/// namespace in errors.
fn ensure_value(file: &str, value: &str, netns: &str) -> Result<(), SystemError> {
    let object = || format!("sysctl {file} in {netns}");
    match super::procfs::read_text(file) {
        Ok(current) if current.trim() == value => return Ok(()),
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(SystemError::NotFound { object: object() });
        }
        Err(e) => return Err(SystemError::io(object(), e)),
    }
    set_value(file, value, netns)
}

/// Writes `value` to the sysctl file `file` (opened for writing only: no create or truncate
/// on a `/proc` file). `netns` names the namespace in errors.
fn set_value(file: &str, value: &str, netns: &str) -> Result<(), SystemError> {
    let object = || format!("sysctl {file} in {netns}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(file)
        .and_then(|mut f| std::io::Write::write_all(&mut f, value.as_bytes()))
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => SystemError::NotFound { object: object() },
            _ => SystemError::io(object(), e),
        })
}

/// Runs `job` on the calling thread if it is in the node namespace, otherwise on a thread of
/// the blocking pool in the node namespace. The daemon captured that namespace from its own
/// at start, so its threads are in it; one that is not (nothing moves pool threads, but the
/// pool is not ours alone) is moved into it first, which is where every pool thread belongs.
async fn in_node<T, F>(sys: &LinuxSystem, object: String, job: F) -> Result<T, SystemError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SystemError> + Send + 'static,
{
    // A runtime thread in the node namespace runs it inline: these files live in memory,
    // so reading and writing them does not block.
    if super::netns::current_key().is_ok_and(|key| key.ino == sys.node_inode) {
        return job();
    }
    let node = sys.node.clone();
    let node_inode = sys.node_inode;
    let task_object = object.clone();
    tokio::task::spawn_blocking(move || {
        if super::netns::current_key()?.ino != node_inode {
            nix::sched::setns(&*node, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                SystemError::io(
                    format!("{task_object}: entering the node namespace"),
                    e.into(),
                )
            })?;
        }
        job()
    })
    .await
    .map_err(|e| SystemError::other(object, format!("sysctl task failed: {e}")))?
}

/// `net.ipv4.ip_forward = 1` (and `net.ipv6.conf.all.forwarding = 1` if `ipv6`) in the node
/// namespace.
pub(crate) async fn enable_forwarding(sys: &LinuxSystem, ipv6: bool) -> Result<(), SystemError> {
    in_node(sys, "forwarding sysctls".to_string(), move || {
        ensure_value("/proc/sys/net/ipv4/ip_forward", "1", "the node namespace")?;
        if ipv6 {
            ensure_value(
                "/proc/sys/net/ipv6/conf/all/forwarding",
                "1",
                "the node namespace",
            )?;
        }
        Ok(())
    })
    .await
}

/// `net.ipv6.conf.<link>.disable_ipv6 = 1` in the node namespace. Nothing to do where IPv6
/// is off altogether (no `/proc/sys/net/ipv6`).
///
/// Read first: a host end adopted from the namespace pool has it set already
/// ([`super::pool_veth`]), and the write is dear under load: it waits for RTNL by restarting
/// itself until the lock is free (`rtnl_net_trylock` in `addrconf_disable_ipv6`), while the
/// read takes no lock.
pub(crate) async fn disable_ipv6(sys: &LinuxSystem, link: &IfName) -> Result<(), SystemError> {
    let file = format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6");
    let object = link_object(None, link.as_str());
    in_node(sys, object.clone(), move || {
        ensure_value(&file, "1", "the node namespace").or_else(|e| ipv6_not_found(e, object))
    })
    .await
}

/// `NotFound` for a host link's IPv6 sysctl: nothing to do where IPv6 is off altogether,
/// otherwise the link is missing (the per-link directory exists exactly while it does).
fn ipv6_not_found(error: SystemError, object: String) -> Result<(), SystemError> {
    match error {
        SystemError::NotFound { .. } if !Path::new("/proc/sys/net/ipv6/conf").exists() => Ok(()),
        SystemError::NotFound { .. } => Err(SystemError::NotFound { object }),
        e => Err(e),
    }
}

/// [`disable_ipv6`] for `link` of the calling thread's namespace, written without reading
/// (the namespace pool's filler, for a host end it has just made).
pub(crate) fn disable_ipv6_here(link: &str) -> Result<(), SystemError> {
    let file = format!("/proc/sys/net/ipv6/conf/{link}/disable_ipv6");
    set_value(&file, "1", "the node namespace")
        .or_else(|e| ipv6_not_found(e, link_object(None, link)))
}

/// Whether the node link `link` has `addr_gen_mode` 1 (`none`) already (an adopted host end
/// from the pool; see [`super::netlink::no_link_local`]). False when it cannot be read.
pub(crate) async fn has_no_link_local(sys: &LinuxSystem, link: &IfName) -> bool {
    let file = format!("/proc/sys/net/ipv6/conf/{link}/addr_gen_mode");
    in_node(sys, link_object(None, link.as_str()), move || {
        Ok(super::procfs::read_text(&file).is_ok_and(|v| v.trim() == "1"))
    })
    .await
    .unwrap_or(false)
}

/// `net.ipv4.conf.<link>.route_localnet = 1` in the node namespace.
pub(crate) async fn enable_route_localnet(
    sys: &LinuxSystem,
    link: &IfName,
) -> Result<(), SystemError> {
    let file = format!("/proc/sys/net/ipv4/conf/{link}/route_localnet");
    let object = link_object(None, link.as_str());
    in_node(sys, object.clone(), move || {
        ensure_value(&file, "1", "the node namespace").map_err(|e| match e {
            // The per-link directory exists exactly while the link does.
            SystemError::NotFound { .. } => SystemError::NotFound { object },
            e => e,
        })
    })
    .await
}

/// `net.ipv6.conf.<link>.accept_dad = 0` inside the namespace at `netns`.
pub(crate) async fn disable_dad(
    sys: &LinuxSystem,
    netns: &Path,
    link: &IfName,
) -> Result<(), SystemError> {
    let fd = open_netns(netns)?;
    let where_ = netns.display().to_string();
    let file = format!("/proc/sys/net/ipv6/conf/{link}/accept_dad");
    let object = link_object(Some(netns), link.as_str());
    sys.ns_workers
        .run(object.clone(), Some(NsFd::Owned(fd)), move || {
            ensure_value(&file, "0", &where_).map_err(|e| match e {
                SystemError::NotFound { .. } if !Path::new("/proc/sys/net/ipv6/conf").exists() => {
                    SystemError::other(object, "IPv6 is disabled in its namespace")
                }
                // The per-link directory exists exactly while the link does.
                SystemError::NotFound { .. } => SystemError::NotFound { object },
                e => e,
            })
        })
        .await
}

/// The thresholds of `family`'s neighbour table, from `ip ntable show name <table>` run in
/// the node namespace.
pub(crate) async fn neighbour_thresholds(
    sys: &LinuxSystem,
    family: Family,
) -> Result<Thresholds, SystemError> {
    let table = neigh::table_name(family);
    let object = format!("neighbour table {table}");
    let out = super::nft::run_in_node(
        sys,
        object.clone(),
        super::nft::tool("ip"),
        ["ntable", "show", "name", table].map(String::from).to_vec(),
        None,
    )
    .await?;
    if !out.success {
        return Err(SystemError::other(
            object,
            format!("ip ntable show failed: {}", out.stderr),
        ));
    }
    neigh::parse_ntable(&out.stdout, table).ok_or_else(|| {
        SystemError::other(
            object,
            format!("no thresholds in `ip ntable show` output: {:?}", out.stdout),
        )
    })
}

/// Writes `values` to `net.ipv{4,6}.neigh.default.gc_thresh3`, `2` and `1` (in that order)
/// from the node namespace; fails, writing nothing, when it is not the initial namespace.
pub(crate) async fn set_neighbour_thresholds(
    sys: &LinuxSystem,
    family: Family,
    values: Thresholds,
) -> Result<(), SystemError> {
    let node = NsFd::Shared(sys.node.clone());
    let dir = format!(
        "/proc/sys/{}",
        neigh::sysctl_prefix(family).replace('.', "/")
    );
    let object = format!("{}.gc_thresh*", neigh::sysctl_prefix(family));
    thread::run(object.clone(), Some(node), move || {
        if !Path::new(&dir).join("gc_thresh3").exists() {
            return Err(SystemError::other(
                object,
                "the node network namespace is not the initial one: the neighbour tables \
                 are machine-wide and only the initial namespace may size them",
            ));
        }
        for (file, value) in [
            ("gc_thresh3", values.gc_thresh3),
            ("gc_thresh2", values.gc_thresh2),
            ("gc_thresh1", values.gc_thresh1),
        ] {
            ensure_value(
                &format!("{dir}/{file}"),
                &value.to_string(),
                "the node namespace",
            )?;
        }
        Ok(())
    })
    .await
}
