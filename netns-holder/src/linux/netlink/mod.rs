//! Links, addresses and routes over rtnetlink, in the node namespace or inside a pod's: the
//! [`crate::system::Netlink`] operations of [`LinuxSystem`].
//!
//! These speak rtnetlink through the `rtnetlink` crate (its codec is `netlink-packet-route`),
//! unlike the hand-framed protocols of [`super::codec`]. Every operation gets its connection
//! from [`super::conn`]: the node connection, or a (briefly cached) connection whose socket
//! was created inside the pod namespace; operations that dump hold the connection's dump
//! lock, as the kernel runs one dump per socket at a time. Kernel errors become
//! [`SystemError`]s naming the object (`link X in P`, `route C via G`, ...).
//!
//! By concern:
//! * [`links`]: the bridge, veth pairs, bridge ports and hairpin, renames, MTU, up, batched
//!   deletion ([`links::DELETE_GROUP`]) and what a link looks like ([`link_info`],
//!   [`list_links`]);
//! * [`addresses`]: pod and loopback addresses (IPv6 ones without duplicate address
//!   detection);
//! * [`routes`]: a pod's default route, the node's default-route MTU, and the peer routes
//!   the daemon owns (marked with [`crate::peers::ROUTE_PROTOCOL`]);
//! * [`node_networks`](mod@node_networks): the addresses and routes the node already uses, for overlap checks.

use std::future::Future;
use std::path::Path;

use rtnetlink::Handle;

use super::LinuxSystem;
use super::conn;
use crate::system::SystemError;

mod addresses;
pub(super) mod links;
mod neighbours;
mod node_networks;
mod routes;

pub(crate) use addresses::{add_address, loopback_up};
pub(crate) use links::{
    VethEnds, create_veth, delete_link, ensure_bridge, ensure_node_addresses, ioctl_index,
    ioctl_set_up, link_info, link_up, list_links, no_link_local, retire_link, set_hairpin,
    set_master, set_mtu, veth_message,
};
pub(crate) use neighbours::{add_neighbour, permanent_neighbours};
pub(crate) use node_networks::node_networks;
pub(crate) use routes::{
    add_default_route, add_host_route, add_route, default_route_mtu, default_routes, delete_route,
    host_routes, peer_routes,
};

// ------------------------------------------------------------------ connections

/// Whether an operation issues netlink dump requests (see [`in_netns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dumps {
    /// Single requests only: the connection is shared freely.
    No,
    /// At least one dump: hold the connection's dump lock.
    Yes,
}

/// Runs `op` with a handle for `netns` (`None`: the node namespace). Operations that dump
/// hold the connection's dump lock (one dump per socket at a time).
async fn in_netns<T, F, Fut>(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    dumps: Dumps,
    op: F,
) -> Result<T, SystemError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T, SystemError>>,
{
    in_netns_conn(sys, netns, dumps, move |conn: conn::Conn| op(conn.handle)).await
}

/// [`in_netns`] with the whole connection, for operations that also look a link's index up
/// on its socket ([`links::ioctl_index`]).
async fn in_netns_conn<T, F, Fut>(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    dumps: Dumps,
    op: F,
) -> Result<T, SystemError>
where
    F: FnOnce(conn::Conn) -> Fut,
    Fut: Future<Output = Result<T, SystemError>>,
{
    let conn = match netns {
        None => conn::node(sys).await?,
        Some(path) => conn::pod(sys, path).await?,
    };
    let _dump = match dumps {
        Dumps::Yes => Some(conn.dumps.clone().lock_owned().await),
        Dumps::No => None,
    };
    op(conn).await
}

/// The node handle, for operations that never dump.
async fn node_handle(sys: &LinuxSystem) -> Result<Handle, SystemError> {
    Ok(conn::node(sys).await?.handle)
}

// ------------------------------------------------------------------ errors

/// The errno of a netlink error reply, if it is one.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io().raw_os_error(),
        _ => None,
    }
}

/// A [`SystemError`] for `object` from an rtnetlink error.
fn nl_err(object: impl std::fmt::Display, e: rtnetlink::Error) -> SystemError {
    match e {
        rtnetlink::Error::NetlinkError(m) => SystemError::io(object, m.to_io()),
        other => SystemError::other(object, other.to_string()),
    }
}

/// `Ok(())` for an `EEXIST` reply (the "ensure" operations).
fn exists_ok(result: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}
