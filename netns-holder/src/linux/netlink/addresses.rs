//! Addresses: a pod's address and the loopback addresses, added idempotently (`EEXIST` is
//! success). IPv6 addresses carry `IFA_F_NODAD` so they are never tentative.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::IpNet;
use rtnetlink::Handle;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use slog::debug;

use super::links::{link_index, set_up};
use super::{Dumps, errno, exists_ok, in_netns, in_netns_conn, nl_err};
use crate::linux::conn::Conn;
use crate::linux::{LinuxSystem, link_object};
use crate::names::IfName;
use crate::system::SystemError;

// ------------------------------------------------------------------ addresses

/// Adds `address` to the link `index` (`EEXIST` is fine). IPv6 addresses get
/// `IFA_F_NODAD`, so they are usable as soon as the link is up, never tentative.
pub(super) async fn add_addr(
    h: &Handle,
    index: u32,
    address: IpNet,
) -> Result<(), rtnetlink::Error> {
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
pub(super) fn address_net(m: &AddressMessage) -> Option<IpNet> {
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

/// Adds `address` to `link` inside `netns` (present already is fine; IPv6 without DAD).
pub(crate) async fn add_address(
    sys: &LinuxSystem,
    netns: &Path,
    link: &IfName,
    address: IpNet,
) -> Result<(), SystemError> {
    let object = link_object(Some(netns), link.as_str());
    in_netns_conn(sys, Some(netns), Dumps::No, async |c: Conn| {
        let index = link_index(&c, link.as_str(), &object)?;
        add_addr(&c.handle, index, address)
            .await
            .map_err(|e| nl_err(format!("address {address} on {object}"), e))
    })
    .await
}

/// The index of a namespace's loopback device, the same in every namespace.
const LOOPBACK_INDEX: u32 = 1;

/// Sets `lo` up inside `netns` and makes sure it has 127.0.0.1/8 and, where IPv6 is on,
/// ::1/128.
pub(crate) async fn loopback_up(sys: &LinuxSystem, netns: &Path) -> Result<(), SystemError> {
    let object = link_object(Some(netns), "lo");
    in_netns(sys, Some(netns), Dumps::No, async |h: Handle| {
        // Every namespace's loopback has index 1 (LOOPBACK_IFINDEX), so no lookup. The three
        // requests go out together on the one socket and the kernel answers them in order.
        let index = LOOPBACK_INDEX;
        // The kernel adds both when lo goes up; adding them again is a no-op (EEXIST) unless
        // someone removed them.
        let v4: IpNet = IpNet::new(Ipv4Addr::LOCALHOST.into(), 8).expect("valid prefix");
        let v6: IpNet = IpNet::new(Ipv6Addr::LOCALHOST.into(), 128).expect("valid prefix");
        let (up, with_v4, with_v6) = futures::join!(
            set_up(&h, index),
            add_addr(&h, index, v4),
            add_addr(&h, index, v6)
        );
        up.map_err(|e| nl_err(&object, e))?;
        with_v4.map_err(|e| nl_err(format!("address {v4} on {object}"), e))?;
        match with_v6 {
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
