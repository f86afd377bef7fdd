//! Routes: the default route inside a pod, the node's default-route MTU, and the peer
//! routes (other nodes' pod CIDRs) that the daemon adds to the node's main table.
//!
//! Peer routes are marked with our routing protocol number
//! ([`crate::peers::ROUTE_PROTOCOL`]); only routes with that mark are ever deleted or
//! reported as ours, so routes of the administrator or of another agent are left alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::links::{attr_mtu, link_by_index, link_index, node_index};
use super::{Dumps, errno, exists_ok, in_netns, in_netns_conn, nl_err, node_handle};
use crate::datapath::POD_ROUTE_PROTOCOL;
use crate::linux::conn::{self, Conn};
use crate::linux::{LinuxSystem, link_object};
use crate::names::IfName;
use crate::peers::ROUTE_PROTOCOL;
use crate::system::SystemError;

// ------------------------------------------------------------------ reading route messages

/// The route's table: `RTA_TABLE` if present (tables above 255 are only there), else
/// the header's.
pub(super) fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// Whether the route is a unicast default route (prefix length 0) of the main table.
fn is_main_default(r: &RouteMessage) -> bool {
    r.header.destination_prefix_length == 0
        && r.header.kind == RouteType::Unicast
        && route_table(r) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

/// The route's gateway (`RTA_GATEWAY`), if it has one.
pub(super) fn route_gateway(r: &RouteMessage) -> Option<IpAddr> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })
}

/// The route's output interface index (`RTA_OIF`), if it has one.
pub(super) fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// The route's destination (`RTA_DST` and the header's prefix length); `None` for a
/// default route, which carries no `RTA_DST`.
pub(super) fn route_destination(r: &RouteMessage) -> Option<IpNet> {
    let addr = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(IpAddr::V4(*ip)),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(IpAddr::V6(*ip)),
        _ => None,
    })?;
    IpNet::new(addr, r.header.destination_prefix_length).ok()
}

/// Every route of one family (all tables).
pub(super) async fn dump_routes(
    h: &Handle,
    v6: bool,
) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
    let filter = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    h.route().get(filter).execute().try_collect().await
}

// ------------------------------------------------------------------ pod default routes

/// Adds the default route via `gateway` on `link` inside `netns` (present already is
/// fine).
pub(crate) async fn add_default_route(
    sys: &LinuxSystem,
    netns: &Path,
    link: &IfName,
    gateway: IpAddr,
) -> Result<(), SystemError> {
    let object = link_object(Some(netns), link.as_str());
    in_netns_conn(sys, Some(netns), Dumps::No, async |c: Conn| {
        let index = link_index(&c, link.as_str(), &object)?;
        let h = c.handle;
        let route = match gateway {
            // A link-local gateway (the routed datapath's 169.254.1.1, outside the pod's
            // /32) is on-link by definition.
            IpAddr::V4(gw) if gw.is_link_local() => RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(gw)
                .output_interface(index)
                .onlink()
                .build(),
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

/// The gateways of the main-table default routes inside `netns`, IPv4 first.
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

/// The destination whose route stands for "the way out of the node": an address of the
/// reserved 240.0.0.0/4 (class E), which no real network routes more specifically, so the
/// kernel's lookup lands on the default route the node would use.
const OUTSIDE_PROBE: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 1);

/// The MTU of the link of the IPv4 default route the node uses (the kernel's own route
/// lookup for [`OUTSIDE_PROBE`]: lowest metric, policy rules included), if there is one:
/// the MTU pods get when the configuration does not set one. One lookup and one link query,
/// whatever the number of routes: a dump of every route here made each create slower as
/// routed pods (one host route each) accumulated.
pub(crate) async fn default_route_mtu(sys: &LinuxSystem) -> Result<Option<u32>, SystemError> {
    let object = "IPv4 default route in the node namespace";
    let h = node_handle(sys).await?;
    let probe = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(OUTSIDE_PROBE, 32)
        .build();
    let found: Result<Vec<RouteMessage>, rtnetlink::Error> =
        h.route().get(probe).execute().try_collect().await;
    let routes = match found {
        Ok(routes) => routes,
        // No default route (ENETUNREACH) or one that rejects (EHOSTUNREACH, EACCES, EINVAL).
        Err(rtnetlink::Error::NetlinkError(e))
            if matches!(
                e.raw_code().abs(),
                libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EACCES | libc::EINVAL
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(nl_err(object, e)),
    };
    let Some(oif) = routes.iter().find_map(route_oif) else {
        return Ok(None);
    };
    let link = link_by_index(&h, oif)
        .await
        .map_err(|e| nl_err(format!("{object}: its link {oif}"), e))?;
    Ok(link.as_ref().and_then(attr_mtu))
}

// ------------------------------------------------------------------ host routes (routed)

/// Adds or replaces the route to the pod address `address` on the host veth `link`, with
/// preferred source `source`, tagged [`POD_ROUTE_PROTOCOL`] (main table, scope link).
pub(crate) async fn add_host_route(
    sys: &LinuxSystem,
    link: &IfName,
    address: IpNet,
    source: IpAddr,
) -> Result<(), SystemError> {
    let object = format!("host route {address} dev {link} src {source}");
    let h = node_handle(sys).await?;
    let index = node_index(sys, link.as_str(), &link_object(None, link.as_str())).await?;
    let protocol = RouteProtocol::Other(POD_ROUTE_PROTOCOL);
    let message = match (address, source) {
        (IpNet::V4(net), IpAddr::V4(src)) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .output_interface(index)
            .pref_source(src)
            .scope(RouteScope::Link)
            .protocol(protocol)
            .build(),
        (IpNet::V6(net), IpAddr::V6(src)) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(net.addr(), net.prefix_len())
            .output_interface(index)
            .pref_source(src)
            .protocol(protocol)
            .build(),
        _ => return Err(SystemError::other(&object, "address families differ")),
    };
    h.route()
        .add(message)
        .replace()
        .execute()
        .await
        .map_err(|e| nl_err(object, e))
}

/// The destinations of our host routes (tagged [`POD_ROUTE_PROTOCOL`]) on the host link
/// `link`; none when the link is missing.
pub(crate) async fn host_routes(
    sys: &LinuxSystem,
    link: &IfName,
) -> Result<Vec<IpNet>, SystemError> {
    let object = link_object(None, link.as_str());
    let node = conn::node(sys).await?;
    let h = node.handle.clone();
    let index = match node_index(sys, link.as_str(), &object).await {
        Ok(index) => index,
        Err(SystemError::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let _dump = node.dumps.lock().await;
    let mut out = Vec::new();
    for v6 in [false, true] {
        // Filtered by the kernel on the output interface (RTA_OIF with strict checking
        // is not asked for; the filter below is what counts).
        let mut filter = if v6 {
            RouteMessageBuilder::<Ipv6Addr>::new().build()
        } else {
            RouteMessageBuilder::<Ipv4Addr>::new().build()
        };
        filter.header.protocol = RouteProtocol::Other(POD_ROUTE_PROTOCOL);
        let routes: Vec<RouteMessage> = h
            .route()
            .get(filter)
            .execute()
            .try_collect()
            .await
            .map_err(|e| nl_err(format!("routes of {object}"), e))?;
        out.extend(
            routes
                .iter()
                .filter(|r| r.header.protocol == RouteProtocol::Other(POD_ROUTE_PROTOCOL))
                .filter(|r| route_oif(r) == Some(index))
                .filter_map(route_destination),
        );
    }
    Ok(out)
}

// ------------------------------------------------------------------ peer routes

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

/// Adds the peer route `cidr` via `via` (node namespace, main table, our protocol).
/// Present already as ours is fine; any other route to `cidr` is `AlreadyExists`, naming
/// what the node routes there.
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

/// Deletes our route `cidr` via `via` (node namespace); `Ok(false)` if there is none.
/// Routes that are not ours are never touched: the request names our protocol and the
/// gateway, which the kernel matches (IPv4 `fib_table_delete`, IPv6 `ip6_route_del`), so
/// no dump of the table is needed (one request per route, whatever the table's size: a
/// cluster node removes many peers at once).
pub(crate) async fn delete_route(
    sys: &LinuxSystem,
    cidr: IpNet,
    via: IpAddr,
) -> Result<bool, SystemError> {
    let object = format!("route {cidr} via {via}");
    let Some(message) = peer_route_message(cidr, via) else {
        return Ok(false);
    };
    let h = node_handle(sys).await?;
    match h.route().del(message).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(false),
        Err(e) => Err(nl_err(format!("{object}: delete"), e)),
    }
}

/// Every route of ours in the node's main table, with its gateway.
pub(crate) async fn peer_routes(sys: &LinuxSystem) -> Result<Vec<(IpNet, IpAddr)>, SystemError> {
    Ok(routes_to(sys, None)
        .await?
        .into_iter()
        .filter(|(_, _, ours, _)| *ours)
        .filter_map(|(dst, gw, _, _)| Some((dst, gw?)))
        .collect())
}
