//! Links, addresses and routes over rtnetlink, in the node namespace or inside a pod's.
//!
//! Every operation gets its connection from [`super::conn`]: the node connection, or a
//! (briefly cached) connection whose socket was created inside the pod namespace.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};
use slog::{debug, info};

use super::conn;

use super::netns::open_netns;
use super::{LinuxSystem, link_object};
use crate::kernel::{LinkInfo, NodeNetwork, NodeNetworkKind};
use crate::names::IfName;
use crate::peers::ROUTE_PROTOCOL;
use crate::system::SystemError;

// ------------------------------------------------------------------ connections

/// Whether an operation issues netlink dump requests (see [`in_netns`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dumps {
    No,
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
    let conn = match netns {
        None => conn::node(sys).await?,
        Some(path) => conn::pod(sys, path).await?,
    };
    let _dump = match dumps {
        Dumps::Yes => Some(conn.dumps.lock().await),
        Dumps::No => None,
    };
    op(conn.handle.clone()).await
}

/// The node handle, for operations that never dump.
async fn node_handle(sys: &LinuxSystem) -> Result<Handle, SystemError> {
    Ok(conn::node(sys).await?.handle)
}

// ------------------------------------------------------------------ errors and parsing

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

fn attr_name(m: &LinkMessage) -> Option<&str> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn attr_mtu(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(v) => Some(*v),
        _ => None,
    })
}

fn attr_controller(m: &LinkMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(v) if *v != 0 => Some(*v),
        _ => None,
    })
}

fn is_bridge(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Bridge))),
        _ => false,
    })
}

/// The link named `name`, if any.
async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
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
async fn link_by_index(h: &Handle, index: u32) -> Result<Option<LinkMessage>, rtnetlink::Error> {
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

/// The index of `link` (named in errors as `object`), or [`SystemError::NotFound`].
async fn require_index(h: &Handle, link: &str, object: &str) -> Result<u32, SystemError> {
    match link_by_name(h, link).await {
        Ok(Some(m)) => Ok(m.header.index),
        Ok(None) => Err(SystemError::NotFound {
            object: object.to_string(),
        }),
        Err(e) => Err(nl_err(object, e)),
    }
}

/// Adds `address` to the link `index` (`EEXIST` is fine). IPv6 addresses get
/// `IFA_F_NODAD`, so they are usable as soon as the link is up, never tentative.
async fn add_addr(h: &Handle, index: u32, address: IpNet) -> Result<(), rtnetlink::Error> {
    let mut request = h.address().add(index, address.addr(), address.prefix_len());
    if address.addr().is_ipv6() {
        let message = request.message_mut();
        message.header.flags |= AddressHeaderFlags::Nodad;
        message
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    exists_ok(request.execute().await)
}

/// The local address of an address message, with its prefix length.
fn address_net(m: &AddressMessage) -> Option<IpNet> {
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    IpNet::new(local.or(address)?, m.header.prefix_len).ok()
}

/// Sets `link` (index) administratively up.
async fn set_up(h: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
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
    if n != mac.len() as isize {
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

// ------------------------------------------------------------------ routes

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

fn is_main_default(r: &RouteMessage) -> bool {
    r.header.destination_prefix_length == 0
        && r.header.kind == RouteType::Unicast
        && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

fn route_gateway(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

fn route_priority(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

/// Every route of one family (all tables).
async fn dump_routes(h: &Handle, v6: bool) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    let filter = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    h.route().get(filter).execute().try_collect().await
}

// ------------------------------------------------------------------ the trait operations

pub(crate) async fn ensure_bridge(
    sys: &LinuxSystem,
    name: &IfName,
    gateways: &[IpNet],
) -> Result<(), SystemError> {
    let h = node_handle(sys).await?;
    let object = format!("bridge {name}");
    // A fixed MAC: without one the bridge takes the lowest MAC of its ports and changes it
    // as pods come and go, which leaves stale gateway neighbour entries in the pods.
    let create = LinkMessageBuilder::<LinkBridge>::new(name.as_str())
        .address(random_mac())
        .up()
        .build();
    match h.link().add(create).execute().await {
        Ok(()) => info!(sys.log, "bridge created"; "bridge" => %name),
        // Someone (a concurrent create, an earlier run) made it first: check it below.
        Err(e) if errno(&e) == Some(libc::EEXIST) => {}
        Err(e) => return Err(nl_err(&object, e)),
    }
    let link = link_by_name(&h, name.as_str())
        .await
        .map_err(|e| nl_err(&object, e))?
        .ok_or_else(|| SystemError::NotFound {
            object: object.clone(),
        })?;
    if !is_bridge(&link) {
        return Err(SystemError::other(
            link_object(None, name.as_str()),
            "exists and is not a bridge",
        ));
    }
    let index = link.header.index;
    for gateway in gateways {
        add_addr(&h, index, *gateway)
            .await
            .map_err(|e| nl_err(format!("address {gateway} on {object}"), e))?;
    }
    if !link.header.flags.contains(LinkFlags::Up) {
        set_up(&h, index).await.map_err(|e| nl_err(&object, e))?;
    }
    Ok(())
}

pub(crate) async fn create_veth(
    sys: &LinuxSystem,
    host: &IfName,
    peer: &IfName,
    netns: &Path,
    mtu: u32,
) -> Result<(), SystemError> {
    let object = format!("veth {host} <-> {peer} in {} (mtu {mtu})", netns.display());
    let ns = open_netns(netns)?;
    let h = node_handle(sys).await?;
    // The peer is created directly in the pod namespace (IFLA_NET_NS_FD inside the peer
    // message): a crash can never leave it behind in the node namespace.
    // One queue each way, asked for explicitly: without these attributes the kernel makes
    // one queue per CPU and then cuts each end down to one, and every cut waits for an
    // (expedited) RCU grace period while holding the RTNL lock that all pod creates share.
    let peer_message = LinkMessageBuilder::<LinkUnspec>::new()
        .name(peer.as_str())
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let message = LinkVeth::new(host.as_str(), peer.as_str())
        .mtu(mtu)
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_message)))
        .build();
    let result = h.link().add(message).execute().await;
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
        Err(e) => Err(nl_err(object, e)),
    }
}

pub(crate) async fn set_master(
    sys: &LinuxSystem,
    link: &IfName,
    master: &IfName,
) -> Result<(), SystemError> {
    let h = node_handle(sys).await?;
    let bridge = format!("bridge {master}");
    let master_link = link_by_name(&h, master.as_str())
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
    let object = link_object(None, link.as_str());
    let index = require_index(&h, link.as_str(), &object).await?;
    h.link()
        .set(
            LinkUnspec::new_with_index(index)
                .controller(master_link.header.index)
                .build(),
        )
        .execute()
        .await
        .map_err(|e| nl_err(format!("{object}: attaching to {bridge}"), e))
}

pub(crate) async fn link_up(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
) -> Result<(), SystemError> {
    let object = link_object(netns, link.as_str());
    in_netns(sys, netns, Dumps::No, async |h: Handle| {
        let index = require_index(&h, link.as_str(), &object).await?;
        set_up(&h, index).await.map_err(|e| nl_err(&object, e))
    })
    .await
}

pub(crate) async fn rename_link(
    sys: &LinuxSystem,
    netns: &Path,
    from: &IfName,
    to: &IfName,
) -> Result<(), SystemError> {
    let object = link_object(Some(netns), from.as_str());
    in_netns(sys, Some(netns), Dumps::No, async |h: Handle| {
        let index = require_index(&h, from.as_str(), &object).await?;
        match h
            .link()
            .set(LinkUnspec::new_with_index(index).name(to.as_str()).build())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if errno(&e) == Some(libc::EEXIST) => Err(SystemError::AlreadyExists {
                object: link_object(Some(netns), to.as_str()),
            }),
            Err(e) => Err(nl_err(format!("{object}: renaming to {to}"), e)),
        }
    })
    .await
}

pub(crate) async fn set_mtu(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
    mtu: u32,
) -> Result<(), SystemError> {
    let object = link_object(netns, link.as_str());
    in_netns(sys, netns, Dumps::No, async |h: Handle| {
        let index = require_index(&h, link.as_str(), &object).await?;
        h.link()
            .set(LinkUnspec::new_with_index(index).mtu(mtu).build())
            .execute()
            .await
            .map_err(|e| nl_err(format!("{object}: setting mtu {mtu}"), e))
    })
    .await
}

pub(crate) async fn add_address(
    sys: &LinuxSystem,
    netns: &Path,
    link: &IfName,
    address: IpNet,
) -> Result<(), SystemError> {
    let object = link_object(Some(netns), link.as_str());
    in_netns(sys, Some(netns), Dumps::No, async |h: Handle| {
        let index = require_index(&h, link.as_str(), &object).await?;
        add_addr(&h, index, address)
            .await
            .map_err(|e| nl_err(format!("address {address} on {object}"), e))
    })
    .await
}

pub(crate) async fn add_default_route(
    sys: &LinuxSystem,
    netns: &Path,
    link: &IfName,
    gateway: IpAddr,
) -> Result<(), SystemError> {
    let object = link_object(Some(netns), link.as_str());
    in_netns(sys, Some(netns), Dumps::No, async |h: Handle| {
        let index = require_index(&h, link.as_str(), &object).await?;
        let route = match gateway {
            IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
            IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .build(),
        };
        exists_ok(h.route().add(route).execute().await).map_err(|e| {
            nl_err(
                format!(
                    "default route via {gateway} dev {link} in {}",
                    netns.display()
                ),
                e,
            )
        })
    })
    .await
}

pub(crate) async fn loopback_up(sys: &LinuxSystem, netns: &Path) -> Result<(), SystemError> {
    let object = link_object(Some(netns), "lo");
    in_netns(sys, Some(netns), Dumps::No, async |h: Handle| {
        let index = require_index(&h, "lo", &object).await?;
        set_up(&h, index).await.map_err(|e| nl_err(&object, e))?;
        // The kernel adds both when lo goes up; adding them again is a no-op (EEXIST) unless
        // someone removed them.
        let v4: IpNet = IpNet::new(Ipv4Addr::LOCALHOST.into(), 8).expect("valid prefix");
        add_addr(&h, index, v4)
            .await
            .map_err(|e| nl_err(format!("address {v4} on {object}"), e))?;
        let v6: IpNet = IpNet::new(Ipv6Addr::LOCALHOST.into(), 128).expect("valid prefix");
        match add_addr(&h, index, v6).await {
            Ok(()) => Ok(()),
            // IPv6 is disabled in this namespace: there is no ::1 to have.
            Err(e) if matches!(errno(&e), Some(libc::EACCES | libc::EAFNOSUPPORT)) => {
                debug!(sys.log, "no IPv6 on loopback"; "netns" => %netns.display());
                Ok(())
            }
            Err(e) => Err(nl_err(format!("address {v6} on {object}"), e)),
        }
    })
    .await
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
pub(crate) const DELETE_GROUP: u32 = 0x6e68_646c;

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

pub(crate) async fn default_routes(
    sys: &LinuxSystem,
    netns: &Path,
) -> Result<Vec<IpAddr>, SystemError> {
    let object = format!("routes in {}", netns.display());
    in_netns(sys, Some(netns), Dumps::Yes, async |h: Handle| {
        let mut gateways = Vec::new();
        for v6 in [false, true] {
            let routes = dump_routes(&h, v6).await.map_err(|e| nl_err(&object, e))?;
            gateways.extend(
                routes
                    .iter()
                    .filter(|r| is_main_default(r))
                    .filter_map(route_gateway),
            );
        }
        Ok(gateways)
    })
    .await
}

pub(crate) async fn default_route_mtu(sys: &LinuxSystem) -> Result<Option<u32>, SystemError> {
    let object = "IPv4 default route in the node namespace";
    let node = conn::node(sys).await?;
    let h = node.handle.clone();
    let routes = {
        let _dump = node.dumps.lock().await;
        dump_routes(&h, false)
            .await
            .map_err(|e| nl_err(object, e))?
    };
    let best = routes
        .iter()
        .filter(|r| is_main_default(r))
        .filter_map(|r| route_oif(r).map(|oif| (route_priority(r), oif)))
        .min();
    let Some((_, oif)) = best else {
        return Ok(None);
    };
    let link = link_by_index(&h, oif)
        .await
        .map_err(|e| nl_err(format!("{object}: its link {oif}"), e))?;
    Ok(link.as_ref().and_then(attr_mtu))
}

// ------------------------------------------------------------------ hairpin and peer routes

pub(crate) async fn set_hairpin(sys: &LinuxSystem, link: &IfName) -> Result<(), SystemError> {
    let h = node_handle(sys).await?;
    let object = link_object(None, link.as_str());
    let index = require_index(&h, link.as_str(), &object).await?;
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(|e| nl_err(format!("{object}: setting hairpin mode"), e))
}

/// A route message for `cidr` via `via` with our protocol, in the main table.
fn peer_route_message(cidr: IpNet, via: IpAddr) -> Option<RouteMessage> {
    let protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    Some(match (cidr, via) {
        (IpNet::V4(net), IpAddr::V4(gw)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(gw)
            .protocol(protocol)
            .build(),
        (IpNet::V6(net), IpAddr::V6(gw)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .gateway(gw)
            .protocol(protocol)
            .build(),
        _ => return None,
    })
}

fn route_destination(r: &RouteMessage) -> Option<IpNet> {
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })?;
    IpNet::new(addr, r.header.destination_prefix_length).ok()
}

/// Every main-table route to `cidr` in the node namespace, with whether it is ours and its
/// gateway.
async fn routes_to(
    sys: &LinuxSystem,
    cidr: Option<IpNet>,
) -> Result<Vec<(IpNet, Option<IpAddr>, bool, RouteMessage)>, SystemError> {
    let object = "routes in the node namespace";
    let node = conn::node(sys).await?;
    let _dump = node.dumps.lock().await;
    let mut out = Vec::new();
    for v6 in [false, true] {
        if cidr.is_some_and(|c| c.addr().is_ipv6() != v6) {
            continue;
        }
        for r in dump_routes(&node.handle, v6)
            .await
            .map_err(|e| nl_err(object, e))?
        {
            if route_table(&r) != u32::from(RouteHeader::RT_TABLE_MAIN) {
                continue;
            }
            let Some(dst) = route_destination(&r) else {
                continue;
            };
            if cidr.is_some_and(|c| c != dst) {
                continue;
            }
            let ours = r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL);
            out.push((dst, route_gateway(&r), ours, r));
        }
    }
    Ok(out)
}

pub(crate) async fn add_route(
    sys: &LinuxSystem,
    cidr: IpNet,
    via: IpAddr,
) -> Result<(), SystemError> {
    let object = format!("route {cidr} via {via}");
    let message = peer_route_message(cidr, via)
        .ok_or_else(|| SystemError::other(&object, "address families differ"))?;
    let h = node_handle(sys).await?;
    match h.route().add(message).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(libc::EEXIST) => {
            let existing = routes_to(sys, Some(cidr)).await?;
            if existing
                .iter()
                .any(|(_, gw, ours, _)| *ours && *gw == Some(via))
            {
                return Ok(());
            }
            let described = existing
                .iter()
                .map(|(dst, gw, ours, _)| {
                    format!(
                        "{dst}{}{}",
                        gw.map(|g| format!(" via {g}")).unwrap_or_default(),
                        if *ours { " (ours)" } else { " (not ours)" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            Err(SystemError::AlreadyExists {
                object: format!("{object}: the node already routes {described}"),
            })
        }
        Err(e) => Err(nl_err(object, e)),
    }
}

pub(crate) async fn delete_route(
    sys: &LinuxSystem,
    cidr: IpNet,
    via: IpAddr,
) -> Result<bool, SystemError> {
    let object = format!("route {cidr} via {via}");
    let Some((_, _, _, message)) = routes_to(sys, Some(cidr))
        .await?
        .into_iter()
        .find(|(_, gw, ours, _)| *ours && *gw == Some(via))
    else {
        return Ok(false);
    };
    let h = node_handle(sys).await?;
    match h.route().del(message).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(nl_err(format!("{object}: delete"), e)),
    }
}

pub(crate) async fn peer_routes(sys: &LinuxSystem) -> Result<Vec<(IpNet, IpAddr)>, SystemError> {
    Ok(routes_to(sys, None)
        .await?
        .into_iter()
        .filter(|(_, _, ours, _)| *ours)
        .filter_map(|(dst, gw, _, _)| Some((dst, gw?)))
        .collect())
}

// ------------------------------------------------------------------ the node's networks

/// The kernel's `local` routing table (addresses of the namespace, broadcast entries).
const RT_TABLE_LOCAL: u32 = 255;

pub(crate) async fn node_networks(sys: &LinuxSystem) -> Result<Vec<NodeNetwork>, SystemError> {
    let object = "addresses and routes in the node namespace";
    in_netns(sys, None, Dumps::Yes, async |h: Handle| {
        let links = h
            .link()
            .get()
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| nl_err(object, e))?;
        let names: std::collections::HashMap<u32, String> = links
            .iter()
            .filter_map(|l| Some((l.header.index, attr_name(l)?.to_string())))
            .collect();
        let name = |index: u32| {
            Some(
                names
                    .get(&index)
                    .cloned()
                    .unwrap_or_else(|| format!("link {index}")),
            )
        };
        let mut out: Vec<NodeNetwork> = h
            .address()
            .get()
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| nl_err(object, e))?
            .iter()
            .filter_map(|m| {
                Some(NodeNetwork {
                    network: address_net(m)?,
                    interface: name(m.header.index),
                    kind: NodeNetworkKind::Address,
                })
            })
            .collect();
        for v6 in [false, true] {
            for r in dump_routes(&h, v6).await.map_err(|e| nl_err(object, e))? {
                // The local table mirrors the addresses (and adds broadcast entries).
                if route_table(&r) == RT_TABLE_LOCAL
                    || matches!(
                        r.header.kind,
                        RouteType::Local
                            | RouteType::Broadcast
                            | RouteType::Multicast
                            | RouteType::Anycast
                    )
                {
                    continue;
                }
                // A default route carries no destination attribute.
                let network = if r.header.destination_prefix_length == 0 {
                    let any = if v6 {
                        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    };
                    IpNet::new(any, 0).ok()
                } else {
                    route_destination(&r)
                };
                let Some(network) = network else {
                    continue;
                };
                out.push(NodeNetwork {
                    network,
                    interface: route_oif(&r).and_then(name),
                    kind: NodeNetworkKind::Route {
                        ours: r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL),
                    },
                });
            }
        }
        Ok(out)
    })
    .await
}
