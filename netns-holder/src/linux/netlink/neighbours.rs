//! Permanent neighbour entries of the routed datapath: the pod's gateway entries inside the
//! pod, and the node's entries for the pod's addresses on its host veth (no ARP or
//! neighbour discovery on either side, first packet included).

use std::net::IpAddr;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};

use super::links::link_index;
use super::{Dumps, in_netns_conn, nl_err};
use crate::datapath::Mac;
use crate::linux::conn::Conn;
use crate::linux::{LinuxSystem, link_object};
use crate::names::IfName;
use crate::system::SystemError;

/// Adds or replaces the permanent entry `address` -> `mac` on `link` (in `netns`, or the
/// node namespace).
pub(crate) async fn add_neighbour(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
    address: IpAddr,
    mac: Mac,
) -> Result<(), SystemError> {
    let object = link_object(netns, link.as_str());
    in_netns_conn(sys, netns, Dumps::No, async |c: Conn| {
        let index = link_index(&c, link.as_str(), &object)?;
        c.handle
            .neighbours()
            .add(index, address)
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| nl_err(format!("{object}: neighbour {address} lladdr {mac}"), e))
    })
    .await
}

/// The addresses of the permanent entries on `link` (in `netns`, or the node namespace);
/// none when the link is missing.
pub(crate) async fn permanent_neighbours(
    sys: &LinuxSystem,
    netns: Option<&Path>,
    link: &IfName,
) -> Result<Vec<IpAddr>, SystemError> {
    let object = link_object(netns, link.as_str());
    in_netns_conn(sys, netns, Dumps::Yes, async |c: Conn| {
        let index = match link_index(&c, link.as_str(), &object) {
            Ok(index) => index,
            Err(SystemError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        // The kernel filters the dump by NDA_IFINDEX: one link's entries, not the table's.
        let mut request = c.handle.neighbours().get();
        request
            .message_mut()
            .attributes
            .push(NeighbourAttribute::IfIndex(index));
        let entries = request
            .execute()
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| nl_err(format!("{object}: neighbours"), e))?;
        Ok(entries
            .iter()
            .filter(|n| n.header.ifindex == index && n.header.state == NeighbourState::Permanent)
            .filter_map(|n| {
                n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        Some(IpAddr::V6(*v6))
                    }
                    _ => None,
                })
            })
            .collect())
    })
    .await
}
