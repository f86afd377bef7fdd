//! The node's networks: every address of the node namespace and every route outside the
//! local table, so the daemon can refuse at start a pod CIDR that overlaps what the node
//! already uses (`check_pod_cidrs` in `main.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::route::{RouteProtocol, RouteType};

use super::addresses::address_net;
use super::links::attr_name;
use super::routes::{dump_routes, route_destination, route_oif, route_table};
use super::{Dumps, in_netns, nl_err};
use crate::datapath::POD_ROUTE_PROTOCOL;
use crate::kernel::{NodeNetwork, NodeNetworkKind};
use crate::linux::LinuxSystem;
use crate::peers::ROUTE_PROTOCOL;
use crate::system::SystemError;

// ------------------------------------------------------------------ the node's networks

/// The kernel's `local` routing table (addresses of the namespace, broadcast entries).
const RT_TABLE_LOCAL: u32 = 255;

/// The networks the node namespace already uses: the addresses of its links, and its
/// routes except those of the local table and local, broadcast, multicast and anycast ones;
/// each with its interface name and, for routes, whether it is ours.
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
                        ours: r.header.protocol == RouteProtocol::Other(ROUTE_PROTOCOL)
                            || r.header.protocol == RouteProtocol::Other(POD_ROUTE_PROTOCOL),
                    },
                });
            }
        }
        Ok(out)
    })
    .await
}
