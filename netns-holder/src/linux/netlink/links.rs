//! Links: the bridge, the routed datapath's node addresses, veth pairs, bridge ports, names, MTU, state, deletion, and reading a
//! link back.
//!
//! Links are looked up by name at each call; no index is kept between calls. Node-side
//! deletions are batched through a device group ([`DELETE_GROUP`]); pod-side ones are single
//! deletions.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::Ordering;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth};
use slog::info;

use super::addresses::{add_addr, address_net};
use super::{Dumps, errno, in_netns, in_netns_conn, nl_err, node_handle};
use crate::datapath::Mac;
use crate::kernel::LinkInfo;
use crate::linux::conn::Conn;
use crate::linux::netns::open_netns;
use crate::linux::{LinuxSystem, link_object};
use crate::names::IfName;
use crate::system::{SystemError, VethPair};

// ------------------------------------------------------------------ reading link messages

/// The link's name (`IFLA_IFNAME`).
pub(super) fn attr_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// The link's MTU (`IFLA_MTU`).
pub(super) fn attr_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(v) => Some(*v),
        _ => None,
    })
}

/// The index of the link's master (`IFLA_MASTER`), if it has one.
fn attr_controller(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(v) if *v != 0 => Some(*v),
        _ => None,
    })
}

/// Whether the link is a bridge (`IFLA_INFO_KIND` "bridge").
fn is_bridge(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// The link named `name`, if any.
pub(super) async fn link_by_name(
    h: &Handle,
    name: &str,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_collect::<Vec<_>>()
        .await
    {
        Ok(links) => Ok(links.into_iter().next()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The link with index `index`, if any.
pub(super) async fn link_by_index(
    h: &Handle,
    index: u32,
) -> Result<Option<LinkMessage>, rtnetlink::Error> {
    match h
        .link()
        .get()
        .match_index(index)
        .execute()
        .try_collect::<Vec<_>>()
        .await
    {
        Ok(links) => Ok(links.into_iter().next()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The index of the node link `link` (named in errors as `object`), or
/// [`SystemError::NotFound`], by `SIOCGIFINDEX` on the node connection's socket
/// ([`ioctl_index`]).
pub(super) async fn node_index(
    sys: &LinuxSystem,
    link: &str,
    object: &str,
) -> Result<u32, SystemError> {
    link_index(&crate::linux::conn::node(sys).await?, link, object)
}

/// The index of `link` (named in errors as `object`) in the namespace of `conn`, or
/// [`SystemError::NotFound`] ([`ioctl_index`] on its socket).
pub(super) fn link_index(conn: &Conn, link: &str, object: &str) -> Result<u32, SystemError> {
    ioctl_index(conn.ioctl.as_fd(), link, object)
}

/// The index of `link` (named in errors as `object`) in the namespace of the socket `fd`,
/// or [`SystemError::NotFound`], by `SIOCGIFINDEX`: a name lookup under RCU. `RTM_GETLINK`
/// would have the kernel write the whole link, and for a host veth find the id of its peer's
/// namespace by walking the ids of every namespace the node's links lead to
/// (`__peernet2id`), one per pod: it grew with the pods.
pub(crate) fn ioctl_index(
    fd: BorrowedFd<'_>,
    link: &str,
    object: &str,
) -> Result<u32, SystemError> {
    let request = link_ioctl(fd, link, object, libc::SIOCGIFINDEX, "SIOCGIFINDEX")?;
    // SAFETY: SIOCGIFINDEX succeeded, so the union holds the index.
    let index = unsafe { request.ifr_ifru.ifru_ifindex };
    u32::try_from(index).map_err(|_| SystemError::other(object, format!("index {index}")))
}

/// Whether `link` (named in errors as `object`) in the namespace of the socket `fd` is
/// administratively up, by `SIOCGIFFLAGS` (like [`ioctl_index`], no netlink round trip).
fn ioctl_is_up(fd: BorrowedFd<'_>, link: &str, object: &str) -> Result<bool, SystemError> {
    let request = link_ioctl(fd, link, object, libc::SIOCGIFFLAGS, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    Ok(i32::from(flags) & libc::IFF_UP != 0)
}

/// Sets `link` (named in errors as `object`) administratively up in the namespace of the
/// socket `fd` by `SIOCGIFFLAGS` and `SIOCSIFFLAGS`: the same `dev_change_flags` as
/// `RTM_SETLINK`, without a reply to read (the namespace pool's `lo`).
pub(crate) fn ioctl_set_up(
    fd: BorrowedFd<'_>,
    link: &str,
    object: &str,
) -> Result<(), SystemError> {
    let mut request = link_ioctl(fd, link, object, libc::SIOCGIFFLAGS, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    // IFF_UP is 1: it fits the short of the request.
    let up = libc::c_short::try_from(libc::IFF_UP).unwrap_or(1);
    request.ifr_ifru.ifru_flags = flags | up;
    ifreq_ioctl(fd, libc::SIOCSIFFLAGS, &mut request)
        .map_err(|e| SystemError::io(format!("{object}: SIOCSIFFLAGS"), e))
}

/// Runs the reading ioctl `code` (`SIOCGIF*`, named `what` in errors) for `link` on the
/// socket `fd` and returns the filled request; [`SystemError::NotFound`] if there is no
/// such link.
fn link_ioctl(
    fd: BorrowedFd<'_>,
    link: &str,
    object: &str,
    code: libc::Ioctl,
    what: &str,
) -> Result<libc::ifreq, SystemError> {
    let not_found = || SystemError::NotFound {
        object: object.to_string(),
    };
    // SAFETY: ifreq is plain data (a name and a union of integers and addresses); all
    // zeroes is a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    // Room for the terminating NUL.
    if link.len() >= request.ifr_name.len() || link.as_bytes().contains(&0) {
        return Err(not_found());
    }
    for (to, from) in request.ifr_name.iter_mut().zip(link.as_bytes()) {
        *to = libc::c_char::from_ne_bytes([*from]);
    }
    match ifreq_ioctl(fd, code, &mut request) {
        Ok(()) => Ok(request),
        Err(error) if error.raw_os_error() == Some(libc::ENODEV) => Err(not_found()),
        Err(error) => Err(SystemError::io(format!("{object}: {what}"), error)),
    }
}

/// The interface ioctl `code` on the socket `fd` with `request`, whose name is set.
fn ifreq_ioctl(
    fd: BorrowedFd<'_>,
    code: libc::Ioctl,
    request: &mut libc::ifreq,
) -> std::io::Result<()> {
    // SAFETY: the SIOC*IF* requests used here read the NUL-terminated name (and, to set,
    // the flags) from the ifreq we own and pass by pointer, and the reading ones write
    // their answer into it; `fd` is open for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), code, std::ptr::from_mut(request)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// ------------------------------------------------------------------ changing links

/// Sets `link` (index) administratively up.
pub(super) async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
}

/// A locally administered, unicast, random MAC address.
fn random_mac() -> Vec<u8> {
    let mut mac = [0u8; 6];
    // SAFETY: `mac` is a valid writable buffer of the length passed; getrandom writes at
    // most that many bytes into it.
    let n = unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    if usize::try_from(n) != Ok(mac.len()) {
        // No entropy source: fall back to the clock and pid (uniqueness on one node is all
        // that matters here).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let seed = nanos ^ (u128::from(std::process::id()) << 64);
        mac.copy_from_slice(&seed.to_le_bytes()[..6]);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac.to_vec()
}

/// Creates the bridge `name` in the node namespace if it does not exist (with a random
/// fixed MAC, up), or checks that the existing link is a bridge; then makes sure it carries
/// every address of `gateways` and is up. Another creator winning the race is fine.
///
/// Every bridge create runs this. A bridge once verified is known by name and index (see
/// [`bridge_index`]); until then one create at a time verifies it, so that a burst of
/// creates on a new node does not send every create's `RTM_NEWLINK` (to hear EEXIST) and
/// `RTM_GETLINK` through the RTNL queue: the first verifies, the rest find it known.
pub(crate) async fn ensure_bridge(
    sys: &LinuxSystem,
    name: &IfName,
    gateways: &[IpNet],
) -> Result<(), SystemError> {
    let object = format!("bridge {name}");
    let conn = crate::linux::conn::node(sys).await?;
    let index = match verified_bridge_index(sys, &conn, name) {
        Some(index) => index,
        None => {
            let _one_at_a_time = sys.bridge_verification.lock().await;
            match verified_bridge_index(sys, &conn, name) {
                Some(index) => index,
                None => create_or_verify_bridge(sys, &conn.handle, name, &object).await?,
            }
        }
    };
    let up = ioctl_is_up(conn.ioctl.as_fd(), name.as_str(), &object)?;
    add_addresses_and_up(&conn.handle, index, up, &object, gateways).await
}

/// Creates the bridge `name` (named `object` in errors) unless a link of that name exists,
/// checks that the link is a bridge, and keeps it as verified; returns its index.
async fn create_or_verify_bridge(
    sys: &LinuxSystem,
    h: &Handle,
    name: &IfName,
    object: &str,
) -> Result<u32, SystemError> {
    // A fixed MAC: without one the bridge takes the lowest MAC of its ports and changes it
    // as pods come and go, which leaves stale gateway neighbour entries in the pods.
    let create = LinkMessageBuilder::<LinkBridge>::new(name.as_str())
        .address(random_mac())
        .up()
        .build();
    match h.link().add(create).execute().await {
        Ok(()) => info!(sys.log, "bridge created"; "bridge" => %name),
        // Someone (an earlier run, another program) made it first: check it below.
        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(nl_err(object, e)),
    }
    let link = link_by_name(h, name.as_str())
        .await
        .map_err(|e| nl_err(object, e))?
        .ok_or_else(|| SystemError::NotFound {
            object: object.to_string(),
        })?;
    if !is_bridge(&link) {
        return Err(SystemError::other(
            link_object(None, name.as_str()),
            "exists and is not a bridge",
        ));
    }
    remember_bridge(sys, name, link.header.index);
    Ok(link.header.index)
}

/// Puts every address of `addresses` on the node link with index `index` (named `object`
/// in errors) and sets it up unless it is (`up`).
async fn add_addresses_and_up(
    h: &Handle,
    index: u32,
    up: bool,
    object: &str,
    addresses: &[IpNet],
) -> Result<(), SystemError> {
    for address in addresses {
        add_addr(h, index, *address)
            .await
            .map_err(|e| nl_err(format!("address {address} on {object}"), e))?;
    }
    if !up {
        set_up(h, index).await.map_err(|e| nl_err(object, e))?;
    }
    Ok(())
}

/// Makes the existing node link `link` (`lo` on the routed datapath) carry every address
/// of `addresses` and be up. Runs on every routed create: its index and state come from
/// ioctls on the node connection's socket instead of an `RTM_GETLINK` round trip.
pub(crate) async fn ensure_node_addresses(
    sys: &LinuxSystem,
    link: &IfName,
    addresses: &[IpNet],
) -> Result<(), SystemError> {
    let conn = crate::linux::conn::node(sys).await?;
    let object = link_object(None, link.as_str());
    let index = link_index(&conn, link.as_str(), &object)?;
    let up = ioctl_is_up(conn.ioctl.as_fd(), link.as_str(), &object)?;
    add_addresses_and_up(&conn.handle, index, up, &object, addresses).await
}

/// Creates the veth pair `host` (node namespace) and `peer` (created directly inside
/// `netns`), both with `mtu`, one queue each way and the given MAC addresses (random where
/// `None`). `AlreadyExists` names the end that exists.
pub(crate) async fn create_veth(sys: &LinuxSystem, pair: VethPair<'_>) -> Result<(), SystemError> {
    let (host, peer, netns, mtu) = (pair.host, pair.peer, pair.netns, pair.mtu);
    let object = format!("veth {host} <-> {peer} in {} (mtu {mtu})", netns.display());
    let ns = open_netns(netns)?;
    if let Ok(key) = crate::linux::netns::fd_key(&ns, netns)
        && let Some(pooled) = sys.netns_pool.take_veth(key)
        && adopt_pooled(sys, &pair, pooled).await?
    {
        return Ok(());
    }
    let h = node_handle(sys).await?;
    let master_index = match pair.master {
        Some(bridge) => Some(bridge_index(sys, bridge).await?),
        None => None,
    };
    // The pod end is made directly in the pod namespace (see `veth_message`).
    let build = |host_index: Option<u32>| {
        veth_message(VethEnds {
            name: host.as_str(),
            mac: pair.host_mac,
            index: host_index,
            // The kernel makes the host end the bridge's port before it answers, and
            // unregisters the pair again if that fails: no pair is left behind without it.
            master: master_index,
            peer: peer.as_str(),
            peer_mac: pair.peer_mac,
            peer_netns: ns.as_raw_fd(),
            mtu,
        })
    };
    let mut result = h.link().add(build(None)).execute().await;
    if master_index.is_some()
        && result
            .as_ref()
            .is_err_and(|e| errno(e) == Some(libc::EXFULL))
        && free_pooled_ports(sys, &h).await
    {
        result = h.link().add(build(None)).execute().await;
    }
    if result.is_ok()
        && let Some(taken) = same_index_both_ends(sys, &pair).await
    {
        // See `same_index_both_ends`: made again with the host end's index two past the
        // one both ends had (the pod end's, which the kernel hands out one by one too, then
        // goes one past it). Once per node at most: only the first link of a bare node
        // namespace, or an attached namespace's link index matching, can meet this.
        info!(sys.log, "veth ends with the same index: made again"; "veth" => &object, "index" => taken);
        let _ = h.link().del(taken).execute().await;
        result = h
            .link()
            .add(build(Some(taken.saturating_add(2))))
            .execute()
            .await;
        if result
            .as_ref()
            .is_err_and(|e| errno(e) == Some(libc::EBUSY))
        {
            result = h.link().add(build(None)).execute().await;
        }
    }
    drop(ns);
    match result {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            // Say which end exists.
            let host_exists = matches!(link_by_name(&h, host.as_str()).await, Ok(Some(_)));
            Err(SystemError::AlreadyExists {
                object: if host_exists {
                    link_object(None, host.as_str())
                } else {
                    link_object(Some(netns), peer.as_str())
                },
            })
        }
        Err(e) if errno(&e) == Some(libc::EXFULL) => Err(bridge_full(&pair)),
        Err(e) => Err(nl_err(object, e)),
    }
}

/// The two ends of a veth create request ([`veth_message`]): the link made in the
/// namespace of the socket that sends it, and its peer, made in `peer_netns`.
pub(crate) struct VethEnds<'a> {
    /// The first end's name.
    pub(crate) name: &'a str,
    /// Its MAC address (`None`: random).
    pub(crate) mac: Option<Mac>,
    /// Its index (`None`: the kernel's next).
    pub(crate) index: Option<u32>,
    /// The bridge it joins, by index.
    pub(crate) master: Option<u32>,
    /// The peer's name.
    pub(crate) peer: &'a str,
    /// The peer's MAC address (`None`: random).
    pub(crate) peer_mac: Option<Mac>,
    /// The namespace the peer is made in.
    pub(crate) peer_netns: std::os::fd::RawFd,
    /// Both ends' MTU.
    pub(crate) mtu: u32,
}

/// The `RTM_NEWLINK` that makes the veth pair `ends`, both with one queue each way, asked for
/// explicitly: without these attributes the kernel makes one queue per CPU and then cuts each
/// end down to one, and every cut waits for an (expedited) RCU grace period while holding the
/// RTNL lock that all pod creates share. The peer is made directly in its namespace
/// (`IFLA_NET_NS_FD` inside the peer message): a crash can never leave it behind elsewhere.
pub(crate) fn veth_message(ends: VethEnds<'_>) -> LinkMessage {
    let mut peer_message = LinkMessageBuilder::<LinkUnspec>::new()
        .name(ends.peer)
        .mtu(ends.mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .setns_by_fd(ends.peer_netns);
    if let Some(mac) = ends.peer_mac {
        peer_message = peer_message.address(mac.0.to_vec());
    }
    let mut message = LinkVeth::new(ends.name, ends.peer)
        .mtu(ends.mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1));
    if let Some(index) = ends.index {
        message = message.index(index);
    }
    if let Some(mac) = ends.mac {
        message = message.address(mac.0.to_vec());
    }
    if let Some(index) = ends.master {
        message = message.controller(index);
    }
    message
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message.build())))
        .build()
}

/// The index of both ends of the new pair `pair` if they have the same one (each in its own
/// namespace), `None` otherwise or if either cannot be read (two ioctls, no RTNL).
///
/// The kernel's link watcher applies a veth's carrier change at once only if its index
/// differs from its peer's (`linkwatch_urgent_event`: `ifindex != iflink`); otherwise it
/// waits for its next unhurried run, up to a second later. Until then the link has no
/// queue discipline attached and drops every packet it is given: a pod right after its
/// create would not answer for up to a second (seen here: 997 ms median from "up" to
/// `IFF_RUNNING` for such a pair, 0.03 ms for others). A pod end is index 2 in a namespace
/// of its own, so the host end meets it only as the first link of a bare node namespace
/// (tests, the demo; a real node has its own interfaces first).
async fn same_index_both_ends(sys: &LinuxSystem, pair: &VethPair<'_>) -> Option<u32> {
    let node = crate::linux::conn::node(sys).await.ok()?;
    let host = ioctl_index(node.ioctl.as_fd(), pair.host.as_str(), "").ok()?;
    let pod = crate::linux::conn::pod(sys, pair.netns).await.ok()?;
    let peer = ioctl_index(pod.ioctl.as_fd(), pair.peer.as_str(), "").ok()?;
    (host == peer).then_some(host)
}

/// Makes the pair that the pool left in the pod's namespace ([`crate::linux::pool_veth`])
/// the pair `pair` asks for: the pod end's MAC (and MTU; and up where the pool says so),
/// then, where they differ from the pool's, the host end's name, MTU, bridge and up in one
/// request; a full bridge has the pool's ports taken off it first. `Ok(false)`: the pooled
/// pair does not fit `pair` or is gone; it was deleted if it was there, and the caller
/// makes a new pair. On an error the pooled pair is deleted too, so a failed create leaves
/// no pair behind, as a failed `RTM_NEWLINK` would not.
async fn adopt_pooled(
    sys: &LinuxSystem,
    pair: &VethPair<'_>,
    pooled: crate::linux::pool_veth::PooledVeth,
) -> Result<bool, SystemError> {
    let node = crate::linux::conn::node(sys).await?;
    let pool_object = link_object(None, &pooled.host);
    // The pool's name must still lead to the pool's link: nothing renamed or remade it.
    if ioctl_index(node.ioctl.as_fd(), &pooled.host, &pool_object).ok() != Some(pooled.host_index) {
        return Ok(false);
    }
    if pooled.peer != pair.peer.as_str() || pooled.host_mac != pair.host_mac {
        discard_pooled(&node, &pooled).await;
        return Ok(false);
    }
    let (host, mtu) = (pair.host, pair.mtu);
    let object = format!(
        "veth {host} <-> {} in {} (mtu {mtu}), adopted from the pool ({})",
        pair.peer,
        pair.netns.display(),
        pooled.host
    );
    let adopted = async {
        let master_index = match pair.master {
            Some(bridge) => Some(bridge_index(sys, bridge).await?),
            None => None,
        };
        // The pod end first: a crash after it leaves the pair under the name the pod's
        // `Creating` record gives (reconcile tears it down) or under a pool name no record
        // gives (the next start deletes it); a crash after the rename leaves what a new pair
        // would.
        if pair.peer_mac.is_some() || mtu != pooled.mtu {
            let pod = crate::linux::conn::pod(sys, pair.netns).await?;
            let mut message = LinkUnspec::new_with_index(pooled.peer_index);
            if let Some(mac) = pair.peer_mac {
                message = message.address(mac.0.to_vec());
            }
            if mtu != pooled.mtu {
                message = message.mtu(mtu);
            }
            // As the host end below: the plan's "up" of the pod end then sends nothing.
            if pooled.pod_end_up {
                message = message.up();
            }
            pod.handle
                .link()
                .set(message.build())
                .execute()
                .await
                .map_err(|e| nl_err(format!("{object}: the pod end"), e))?;
        }
        // The host end keeps its pool name when the pod's record gives it (the create
        // reserved this pair), is up already (the pool brought it up) and a port of the
        // bridge if there is one: then there is nothing to send. Otherwise one request
        // renames it, brings it up (the kernel renames before it applies the flags: the
        // pool set its IPv6 as this node's host veths need it, so nothing has to happen
        // before; the plan's "up" then finds it up and sends nothing, `link_up`), and sets
        // its MTU and bridge.
        let rename = pooled.host != host.as_str();
        let join = master_index.is_some() && master_index != pooled.port_of;
        if !rename && !join && pooled.host_up && mtu == pooled.mtu {
            return Ok(true);
        }
        let mut message = LinkUnspec::new_with_index(pooled.host_index).up();
        if rename {
            message = message.name(host.as_str());
        }
        if mtu != pooled.mtu {
            message = message.mtu(mtu);
        }
        if let Some(index) = master_index.filter(|_| join) {
            message = message.controller(index);
        }
        let message = message.build();
        let mut result = node.handle.link().set(message.clone()).execute().await;
        if master_index.is_some()
            && result
                .as_ref()
                .is_err_and(|e| errno(e) == Some(libc::EXFULL))
            && free_pooled_ports(sys, &node.handle).await
        {
            result = node.handle.link().set(message).execute().await;
        }
        match result {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(SystemError::AlreadyExists {
                object: link_object(None, host.as_str()),
            }),
            // Deleted under us (with its pod end): a new pair, then.
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) if errno(&e) == Some(libc::EXFULL) => Err(bridge_full(pair)),
            Err(e) => Err(nl_err(&object, e)),
        }
    }
    .await;
    if !matches!(adopted, Ok(true)) {
        discard_pooled(&node, &pooled).await;
    }
    adopted
}

/// The error for a bridge that refused `pair`'s host end (EXFULL): it has the kernel's
/// maximum of ports.
fn bridge_full(pair: &VethPair<'_>) -> SystemError {
    let bridge = pair.master.map_or("?", |b| b.as_str());
    SystemError::other(
        format!("bridge {bridge} (joining {})", pair.host),
        "has the kernel's maximum of 1023 ports (BR_MAX_PORTS); the routed datapath has no such limit",
    )
}

/// After a full bridge refused a port: takes the pool's ready host ends off the bridge
/// (see `pool_veth::PoolBridge`). True if one was, so the refused request is worth sending
/// again.
async fn free_pooled_ports(sys: &LinuxSystem, h: &Handle) -> bool {
    let mut freed = 0usize;
    for index in sys.netns_pool.leave_full_bridge() {
        let message = LinkUnspec::new_with_index(index).nocontroller().build();
        if h.link().set(message).execute().await.is_ok() {
            freed += 1;
        }
    }
    if freed > 0 {
        info!(sys.log, "the bridge is full: pooled veths taken off it, for pods"; "ports" => freed);
    }
    freed > 0
}

/// Deletes the pooled pair `pooled` (both ends go), best effort: a pair left over is deleted
/// with its namespace, or at the next start.
async fn discard_pooled(node: &Conn, pooled: &crate::linux::pool_veth::PooledVeth) {
    let _ = node.handle.link().del(pooled.host_index).execute().await;
}

/// Stops the kernel from giving the host veth `host` an IPv6 link-local address when it
/// comes up (`addrgenmode none`; `Action::NoLinkLocal`, for routed pods with IPv6, whose
/// neighbour entries are permanent, so there is no neighbour discovery to answer). Each
/// link-local costs the kernel an IPv6 route insert and a walk of the whole IPv6 FIB under
/// RTNL, which grew with every pod. Only possible once the link exists (the kernel refuses it
/// in the create request); where IPv6 is off for new links (EAFNOSUPPORT), there is nothing
/// to stop.
pub(crate) async fn no_link_local(sys: &LinuxSystem, host: &IfName) -> Result<(), SystemError> {
    // A host end adopted from the pool has it already (a read, no RTNL).
    if crate::linux::sysctl::has_no_link_local(sys, host).await {
        return Ok(());
    }
    let h = node_handle(sys).await?;
    let message = LinkUnspec::new_with_name(host.as_str())
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]))
        .build();
    match h.link().set(message).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EAFNOSUPPORT) => Ok(()),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Err(SystemError::NotFound {
            object: link_object(None, host.as_str()),
        }),
        Err(e) => Err(nl_err(
            format!("{}: addrgenmode none", link_object(None, host.as_str())),
            e,
        )),
    }
}

/// Attaches `link` (node namespace) to the bridge `master`. `NotFound` if either is
/// missing; an error if `master` is not a bridge.
pub(crate) async fn set_master(
    sys: &LinuxSystem,
    link: &IfName,
    master: &IfName,
) -> Result<(), SystemError> {
    let h = node_handle(sys).await?;
    let master_index = bridge_index(sys, master).await?;
    let object = link_object(None, link.as_str());
    let index = node_index(sys, link.as_str(), &object).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(master_index)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl_err(format!("{object}: attaching to bridge {master}"), e))
}

/// The index of the node namespace's bridge `master`: [`SystemError::NotFound`] if there is
/// no such link, an error naming it if it is not a bridge (a bond or VRF would take the
/// port as well, so the kind is checked rather than left to the kernel).
///
/// Every bridge create asks this (and [`ensure_bridge`] before it), so the answer is kept:
/// once `master` was seen to be a bridge, a `SIOCGIFINDEX` that still finds the same index
/// under its name (a lookup under RCU) stands for it. Indexes are not handed out again soon
/// after a link goes, so a link deleted and made again under the name, bridge or not, has
/// another index and is looked at in full. An `RTM_GETLINK` of the bridge, by contrast, has
/// the kernel write all of its attributes, and the `RTM_NEWLINK` that `ensure_bridge` tries
/// first takes RTNL only to be told the bridge exists: each a wait in the RTNL queue that a
/// burst of creates shares.
async fn bridge_index(sys: &LinuxSystem, master: &IfName) -> Result<u32, SystemError> {
    let conn = crate::linux::conn::node(sys).await?;
    if let Some(index) = verified_bridge_index(sys, &conn, master) {
        return Ok(index);
    }
    let bridge = format!("bridge {master}");
    let master_link = link_by_name(&conn.handle, master.as_str())
        .await
        .map_err(|e| nl_err(&bridge, e))?
        .ok_or_else(|| SystemError::NotFound {
            object: bridge.clone(),
        })?;
    if !is_bridge(&master_link) {
        return Err(SystemError::other(
            link_object(None, master.as_str()),
            "is not a bridge",
        ));
    }
    remember_bridge(sys, master, master_link.header.index);
    Ok(master_link.header.index)
}

/// The index of `bridge` if it was seen to be a bridge under that index and its name still
/// leads to that index (see [`bridge_index`]); `None` means look at it in full.
fn verified_bridge_index(sys: &LinuxSystem, conn: &Conn, bridge: &IfName) -> Option<u32> {
    let known = match &*sys
        .verified_bridge
        .lock()
        .unwrap_or_else(|e| e.into_inner())
    {
        Some((name, index)) if name == bridge => *index,
        _ => return None,
    };
    let object = link_object(None, bridge.as_str());
    (ioctl_index(conn.ioctl.as_fd(), bridge.as_str(), &object).ok()? == known).then_some(known)
}

/// Keeps `bridge` with `index` as seen to be a bridge (see [`bridge_index`]).
fn remember_bridge(sys: &LinuxSystem, bridge: &IfName, index: u32) {
    *sys.verified_bridge
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some((bridge.clone(), index));
}

/// Sets `link` (in `netns`, or the node namespace) administratively up, naming it in the
/// request (`IFLA_IFNAME`, no index): one request instead of a lookup and a change. A
/// lookup of a host veth is not free: the kernel writes the whole link, with the id of its
/// peer's namespace, which it finds by walking the ids of every namespace the node's links
/// lead to (`__peernet2id`), one per pod.
pub(crate) async fn link_up(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
) -> Result<(), SystemError> {
    let object = link_object(netns, link.as_str());
    in_netns_conn(sys, netns, Dumps::No, async |conn: Conn| {
        // The ends of a pair adopted from the pool came up at adoption (`adopt_pooled`):
        // one RTNL request fewer per end and create.
        if ioctl_is_up(conn.ioctl.as_fd(), link.as_str(), &object).unwrap_or(false) {
            return Ok(());
        }
        match conn
            .handle
            .link()
            .set(LinkUnspec::new_with_name(link.as_str()).up().build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => Err(SystemError::NotFound {
                object: object.clone(),
            }),
            Err(e) => Err(nl_err(&object, e)),
        }
    })
    .await
}

/// Sets the MTU of `link` (in `netns`, or the node namespace).
pub(crate) async fn set_mtu(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
    mtu: u32,
) -> Result<(), SystemError> {
    let object = link_object(netns, link.as_str());
    in_netns_conn(sys, netns, Dumps::No, async |c: Conn| {
        let index = link_index(&c, link.as_str(), &object)?;
        c.handle
            .link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("{object}: setting mtu {mtu}"), e))
    })
    .await
}

/// Turns on hairpin mode on the bridge port `link` (node namespace), so a pod reaches
/// itself through its own host port.
pub(crate) async fn set_hairpin(sys: &LinuxSystem, link: &IfName) -> Result<(), SystemError> {
    let h = node_handle(sys).await?;
    let object = link_object(None, link.as_str());
    let index = node_index(sys, link.as_str(), &object).await?;
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(|e| nl_err(format!("{object}: setting hairpin mode"), e))
}

// ------------------------------------------------------------------ deleting links

/// Renames the node link `link` to `nhx` + 12 random hex characters (retried while taken;
/// a pooled pair's name, which no pod takes again, is kept), takes it off its bridge if it
/// is a port (an expedited RCU grace period, not the unregister's full ones) and marks it
/// for the deletion batch ([`DELETE_GROUP`]), all in one request. The unregister (two RCU grace periods under RTNL, about 20 ms) is left to a
/// background batch that starts [`RETIRED_BATCH_DELAY`] later and takes every link retired
/// by then: the caller waits for neither, and removes in a row share one unregister.
/// `Ok(false)` if it does not exist. A link left marked by a crash goes with the next
/// batch, or with its pod's namespace. With `netns`, the pod end `link` there is retired
/// instead ([`retire_pod_link`]).
pub(crate) async fn retire_link(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
) -> Result<bool, SystemError> {
    if let Some(netns) = netns {
        return retire_pod_link(sys, netns, link).await;
    }
    let object = link_object(None, link.as_str());
    let h = node_handle(sys).await?;
    let Some(found) = link_by_name(&h, link.as_str())
        .await
        .map_err(|e| nl_err(&object, e))?
    else {
        return Ok(false);
    };
    // A pool name is never a pod's name again (each pooled pair has its own): no new pod
    // collides with it, so it is retired under it, without the rename's re-registration of
    // its sysctl tables under RTNL.
    let keeps_name = crate::names::is_pooled_veth_name(link.as_str());
    for _ in 0..8 {
        let retired = match keeps_name {
            true => link.to_string(),
            false => retired_name(),
        };
        let mut message = LinkUnspec::new_with_index(found.header.index)
            .nocontroller()
            .link_group(DELETE_GROUP);
        if !keeps_name {
            message = message.name(retired.as_str());
        }
        match h.link().set(message.build()).execute().await {
            Ok(()) => {
                if sys.retired_batch_pending.swap(true, Ordering::AcqRel) {
                    // The scheduled batch takes this one along.
                    return Ok(true);
                }
                let (batch_lock, pending, h, log) = (
                    sys.link_deletions.clone(),
                    sys.retired_batch_pending.clone(),
                    h.clone(),
                    sys.log.clone(),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(RETIRED_BATCH_DELAY).await;
                    // From here on a retire schedules the next batch (this one may take its
                    // link along; the next then finds nothing, which is fine).
                    pending.store(false, Ordering::Release);
                    let _batch = batch_lock.lock().await;
                    let mut batch = h.link().del(0);
                    batch
                        .message_mut()
                        .attributes
                        .push(LinkAttribute::Group(DELETE_GROUP));
                    match batch.execute().await {
                        // Another batch took it along.
                        Ok(()) => {}
                        Err(e) if errno(&e) == Some(libc::ENODEV) => {}
                        Err(e) => slog::warn!(log, "deleting retired host veths failed";
                            "retired" => &retired, "error" => %e),
                    }
                });
                return Ok(true);
            }
            Err(e) if errno(&e) == Some(libc::EEXIST) => continue,
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(false),
            Err(e) => return Err(nl_err(format!("{object}: renaming to {retired}"), e)),
        }
    }
    Err(SystemError::other(
        object,
        "no free retired name after 8 tries",
    ))
}

/// A fresh retired link name: [`crate::names::RETIRED_VETH_PREFIX`] + 12 random hex characters.
fn retired_name() -> String {
    let suffix: String = random_mac().iter().map(|b| format!("{b:02x}")).collect();
    format!("{}{suffix}", crate::names::RETIRED_VETH_PREFIX)
}

/// Renames the pod end `link` in `netns` (a namespace that is not ours to end) to a retired
/// name and sets it down, in one request, so that a pod attached there next finds its
/// interface name free; the pair goes when the host end's deletion batch deletes it. A
/// rename costs an expedited RCU grace period, a deletion here the unregister's full ones.
/// `Ok(false)` if the link or the namespace does not exist.
async fn retire_pod_link(
    sys: &LinuxSystem,
    netns: &Path,
    link: &IfName,
) -> Result<bool, SystemError> {
    let object = link_object(Some(netns), link.as_str());
    let result = in_netns_conn(sys, Some(netns), Dumps::No, async |c: Conn| {
        let index = match link_index(&c, link.as_str(), &object) {
            Ok(index) => index,
            Err(SystemError::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        for _ in 0..8 {
            let retired = retired_name();
            let rename = LinkUnspec::new_with_index(index)
                .name(retired.as_str())
                .down()
                .build();
            match c.handle.link().set(rename).execute().await {
                Ok(()) => return Ok(true),
                Err(e) if errno(&e) == Some(libc::EEXIST) => continue,
                Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(false),
                Err(e) => return Err(nl_err(format!("{object}: renaming to {retired}"), e)),
            }
        }
        Err(SystemError::other(
            &object,
            "no free retired name after 8 tries",
        ))
    })
    .await;
    match result {
        // No namespace, no link.
        Err(SystemError::NotFound { .. }) => Ok(false),
        other => other,
    }
}

/// The device group that node-side links are moved into right before they are deleted.
///
/// The kernel deletes a link with two RCU grace periods under the RTNL lock (about 20 ms
/// here), so one deletion after the other caps pod removal at about 40 per second, and
/// concurrent removes queue behind each other. Deleting a device *group* unregisters all its
/// members (and their veth peers) in one batch with one wait. So a deletion marks its link
/// with this group, then takes the batch lock; whoever holds it deletes every marked link at
/// once, and the others find theirs already gone. Only links this daemon is deleting are ever
/// in the group (its value spells "nhdl"); one left marked by a crash is deleted with the
/// next batch, which is what reconcile would do with it anyway.
pub(crate) const DELETE_GROUP: u32 = crate::names::DELETE_LINK_GROUP;

/// How long a background batch of retired host veths waits for more before it runs.
pub(crate) const RETIRED_BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

/// Deletes `link` in the node namespace in a batch with the other node-side deletions
/// running at the same time (see [`DELETE_GROUP`]).
async fn delete_node_link(sys: &LinuxSystem, link: &IfName) -> Result<bool, SystemError> {
    let object = link_object(None, link.as_str());
    let h = node_handle(sys).await?;
    let Some(found) = link_by_name(&h, link.as_str())
        .await
        .map_err(|e| nl_err(&object, e))?
    else {
        return Ok(false);
    };
    let index = found.header.index;
    let mark = LinkUnspec::new_with_index(index)
        .link_group(DELETE_GROUP)
        .build();
    match h.link().set(mark).execute().await {
        Ok(()) => {}
        Err(e) if errno(&e) == Some(libc::ENODEV) => return Ok(false),
        Err(e) => return Err(nl_err(format!("{object}: marking it for deletion"), e)),
    }
    let _batch = sys.link_deletions.lock().await;
    // A batch that ran while we waited took it along.
    if link_by_index(&h, index)
        .await
        .map_err(|e| nl_err(&object, e))?
        .is_none()
    {
        return Ok(true);
    }
    let mut batch = h.link().del(0);
    batch
        .message_mut()
        .attributes
        .push(LinkAttribute::Group(DELETE_GROUP));
    match batch.execute().await {
        Ok(()) => Ok(true),
        // Gone in between (e.g. with its veth peer).
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(true),
        Err(e) => Err(nl_err(
            format!("{object}: delete (device group {DELETE_GROUP:#x})"),
            e,
        )),
    }
}

/// Deletes `link` (in `netns`, or in the node namespace in a batch: see
/// [`DELETE_GROUP`]); `Ok(false)` if it (or the namespace) was not there.
pub(crate) async fn delete_link(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
) -> Result<bool, SystemError> {
    if netns.is_none() {
        return delete_node_link(sys, link).await;
    }
    let object = link_object(netns, link.as_str());
    let result = in_netns(sys, netns, Dumps::No, async |h: Handle| {
        let Some(found) = link_by_name(&h, link.as_str())
            .await
            .map_err(|e| nl_err(&object, e))?
        else {
            return Ok(false);
        };
        match h.link().del(found.header.index).execute().await {
            Ok(()) => Ok(true),
            // Gone in between (e.g. with its veth peer).
            Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(nl_err(format!("{object}: delete"), e)),
        }
    })
    .await;
    match result {
        // No namespace, no link.
        Err(SystemError::NotFound { .. }) if netns.is_some() => Ok(false),
        other => other,
    }
}

// ------------------------------------------------------------------ inspecting links

/// What the pod model checks of `link` (in `netns`, or the node namespace): up, MTU,
/// master and addresses; `None` if there is no such link.
pub(crate) async fn link_info(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
) -> Result<Option<LinkInfo>, SystemError> {
    let object = link_object(netns, link.as_str());
    in_netns(sys, netns, Dumps::Yes, async |h: Handle| {
        let Some(found) = link_by_name(&h, link.as_str())
            .await
            .map_err(|e| nl_err(&object, e))?
        else {
            return Ok(None);
        };
        let master = match attr_controller(&found) {
            None => None,
            Some(index) => link_by_index(&h, index)
                .await
                .map_err(|e| nl_err(format!("{object}: its master"), e))?
                .and_then(|m| attr_name(&m).and_then(|n| IfName::new(n).ok())),
        };
        let index = found.header.index;
        let addresses = h
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| nl_err(format!("{object}: addresses"), e))?
            .iter()
            .filter_map(address_net)
            .collect();
        Ok(Some(LinkInfo {
            up: found.header.flags.contains(LinkFlags::Up),
            mtu: attr_mtu(&found).unwrap_or(0),
            master,
            addresses,
        }))
    })
    .await
}

/// The links (in `netns`, or the node namespace) whose names start with `prefix`, sorted;
/// names that are not valid interface names are left out.
pub(crate) async fn list_links(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    prefix: &str,
) -> Result<Vec<IfName>, SystemError> {
    let object = match netns {
        None => "links in the node namespace".to_string(),
        Some(p) => format!("links in {}", p.display()),
    };
    in_netns(sys, netns, Dumps::Yes, async |h: Handle| {
        let links = h
            .link()
            .get()
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| nl_err(&object, e))?;
        let mut names: Vec<IfName> = links
            .iter()
            .filter_map(attr_name)
            .filter(|n| n.starts_with(prefix))
            .filter_map(|n| IfName::new(n).ok())
            .collect();
        names.sort();
        Ok(names)
    })
    .await
}
