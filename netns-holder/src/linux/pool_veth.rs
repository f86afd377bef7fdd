//! Veth pairs made ahead in the pool's namespaces ([`super::pool`]), and a create's adoption
//! of one.
//!
//! Creating a veth pair is the dearest request of a pod's create under RTNL: the kernel
//! registers two devices, their sysfs entries and their IPv4 and IPv6 sysctl tables (about
//! 0.4 ms on the 2-core test guest, against 0.15 ms for renaming a link). So the pool's
//! filler, after making a namespace, also makes the pod's end in it under its final name
//! (`eth0`) and the host end in the node namespace under a pool name ([`POOL_VETH_PREFIX`]),
//! with the host end's IPv6 set as every host veth of this node needs it, then up (the pod
//! end stays down, so it has no carrier). A create reserves a pooled namespace when it is
//! admitted and its record names the pair's host end as the pod's host veth
//! ([`super::pool::NetnsPool::reserve`]): no rename, which would re-register the link's
//! IPv4, IPv6 and neighbour sysctl tables under RTNL (12% of the daemon's CPU in a burst of
//! creates). The create's veth step adopts the pair: the pod end gets its MAC (and MTU, if
//! the node's changed; and comes up on a node without IPv6 pods) in one `RTM_SETLINK`; the
//! host end needs none unless its MTU or bridge differ, or the create got another pooled
//! pair than it reserved, which it then renames. On the bridge datapath the host end is a
//! port of the bridge already ([`PoolBridge`]). A pair that does not fit the create is
//! deleted and the create makes its own, as without a pool.
//!
//! Nothing here is left behind by a crash that reconcile would not repair: a pooled
//! namespace is held only by the daemon's descriptors, so the kernel deletes its pair with
//! it. A create that mounted a pooled namespace and died leaves its pair, under the name
//! its `Creating` record gives, which reconcile tears down; one that renamed another pool
//! pair and died leaves a pool-named host end that no record names. The daemon deletes
//! every pool-named link that no record names at start (`start_netns_pool` of
//! [`crate::system::Namespaces`]), before reconcile, so such a pod is re-wired as one whose
//! veth is missing.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use rtnetlink::LinkUnspec;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute};
use rtnetlink::sys::Socket;

use super::codec;
use crate::datapath::Mac;
use crate::names::IfName;
use crate::system::SystemError;

/// Prefix of the host ends of pooled veth pairs ([`crate::names::POOLED_VETH_PREFIX`]): a
/// create adopts the pair under this name (the pod's record names it), so it starts with
/// `nh` like every host veth (the routed datapath's firewall matches `nh*`), but it is never
/// a host veth name made from a pod id: gc and `check`, which look only at those for links
/// of no pod, never take a pooled pair for one. A pooled pair that no record names is
/// deleted at start ([`crate::system::Namespaces::start_netns_pool`]).
pub(crate) const POOL_VETH_PREFIX: &str = crate::names::POOLED_VETH_PREFIX;

/// The prefix of pooled host ends before they kept their name at adoption (up to stop 28):
/// still deleted at start, in case a daemon of that version left one.
pub(crate) const OLD_POOL_VETH_PREFIX: &str = "npv";

/// How the host end of a pod's veth treats IPv6 on this node (the plan's `DisableIpv6` or
/// `NoLinkLocal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostIpv6 {
    /// `disable_ipv6 = 1`: pods without IPv6, and every bridge port.
    Disabled,
    /// `addrgenmode none`: routed pods with IPv6 (no link-local address on the host end).
    NoLinkLocal,
}

/// What the pool's veth pairs look like, from the node's configuration.
#[derive(Debug)]
pub(crate) struct VethSpec {
    /// The pod end's name.
    pub(crate) peer: String,
    /// Both ends' MTU.
    pub(crate) mtu: u32,
    /// The host end's MAC address (`None`: random).
    pub(crate) host_mac: Option<Mac>,
    /// The host end's IPv6.
    pub(crate) host_ipv6: HostIpv6,
    /// The node bridge the host ends join ahead (the bridge datapath), if any.
    pub(crate) bridge: Option<PoolBridge>,
    /// Whether a create may bring the pod end up when it adopts the pair: pods without IPv6
    /// only, where nothing (no DAD setting) has to happen to the pod end before it is up.
    pub(crate) pod_end_up: bool,
    /// Random per daemon start (24 bits): a pair of an earlier daemon, or a pod's host veth
    /// adopted from it, holds a name this one wants only by a rare chance, and then that
    /// pair is not made (`EEXIST`) and the next one is.
    salt: u32,
    /// Numbers the pairs of this start.
    made: AtomicU32,
}

/// The node bridge that pooled host ends join ahead, so that a create's adoption finds its
/// host end a port already: joining a bridge (`br_add_if`, with its sysfs entries) is
/// 115-182 µs under RTNL here, which a burst of bridge creates otherwise pays one after
/// another. A pooled port counts against the bridge's 1023 (`BR_MAX_PORTS`); the first
/// create refused for a full bridge takes them all off it ([`PoolBridge::full`]) and
/// tries again.
#[derive(Debug)]
pub(crate) struct PoolBridge {
    /// The bridge's name.
    pub(crate) name: IfName,
    /// The bridge last seen to be one, by name and index (the system's, shared).
    pub(crate) known: Arc<Mutex<Option<(IfName, u32)>>>,
    /// Set once a bridge full of ports refused one: no more pooled ports for this daemon.
    pub(crate) full: AtomicBool,
}

impl PoolBridge {
    /// The bridge's index if it is known to be the bridge `name` and the name still leads
    /// to that index (`in_node`: a socket in the node namespace, for the ioctl).
    fn index(&self, in_node: &Socket) -> Option<u32> {
        let known = match &*self.known.lock().unwrap_or_else(|e| e.into_inner()) {
            Some((name, index)) if *name == self.name => *index,
            _ => return None,
        };
        let object = format!("bridge {}", self.name);
        let current = super::netlink::ioctl_index(in_node.as_fd(), self.name.as_str(), &object);
        (current.ok()? == known).then_some(known)
    }
}

impl VethSpec {
    /// A spec for pairs of `mtu` whose pod end is `peer`, their host ends joining `bridge`,
    /// their pod ends brought up at adoption if `pod_end_up`.
    pub(crate) fn new(
        peer: String,
        mtu: u32,
        host_mac: Option<Mac>,
        host_ipv6: HostIpv6,
        bridge: Option<PoolBridge>,
        pod_end_up: bool,
    ) -> Self {
        let mut salt = [0u8; 4];
        // Without randomness the salt is the process id: names still differ between the
        // daemons of a machine, which is what matters.
        let salt = match getrandom_bytes(&mut salt) {
            true => u32::from_ne_bytes(salt),
            false => std::process::id(),
        };
        Self {
            peer,
            mtu,
            host_mac,
            host_ipv6,
            bridge,
            pod_end_up,
            salt,
            made: AtomicU32::new(0),
        }
    }

    /// The host end's name for the next pair: the prefix, the salt and a counter (6 hex
    /// digits each, 15 bytes).
    fn next_host_name(&self) -> String {
        let n = self.made.fetch_add(1, Ordering::Relaxed) & 0xff_ffff;
        format!("{POOL_VETH_PREFIX}{:06x}{n:06x}", self.salt & 0xff_ffff)
    }
}

/// Fills `buf` from the kernel's random source; false if it could not.
fn getrandom_bytes(buf: &mut [u8]) -> bool {
    // SAFETY: `buf` is ours and writable for its length; getrandom writes at most that.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    usize::try_from(n).is_ok_and(|n| n == buf.len())
}

/// A pair made ahead: the pod end down, the host end up if `host_up`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PooledVeth {
    /// The host end's name, in the node namespace: the pod's host veth name if a create
    /// reserved the pair ([`super::pool::NetnsPool::reserve`]).
    pub(crate) host: String,
    /// Its index.
    pub(crate) host_index: u32,
    /// The pod end's name, in the pooled namespace.
    pub(crate) peer: String,
    /// Its index there.
    pub(crate) peer_index: u32,
    /// Both ends' MTU.
    pub(crate) mtu: u32,
    /// The host end's MAC address, if it was set.
    pub(crate) host_mac: Option<Mac>,
    /// The bridge (by index) the host end joined ahead, if it did.
    pub(crate) port_of: Option<u32>,
    /// Whether the pod end may come up at adoption ([`VethSpec::pod_end_up`]).
    pub(crate) pod_end_up: bool,
    /// Whether the host end is up already ([`bring_up_host_end`]).
    pub(crate) host_up: bool,
}

/// Makes a pair with the pod end in the namespace of the calling thread (which must be the
/// pooled namespace, `in_pool` a netlink socket opened there) and the host end in `node`.
/// Returns the host end's name and the pod end's index; the host end is not prepared yet
/// ([`prepare_host_end`], from the node namespace).
pub(crate) fn create_in_pool(
    spec: &VethSpec,
    in_pool: &Socket,
    node: BorrowedFd<'_>,
) -> Result<(String, u32), SystemError> {
    let host = spec.next_host_name();
    let object = format!("pooled veth {} <-> {host}", spec.peer);
    // The pod end is made here (the pool's namespace), the host end in the node's.
    let message = super::netlink::veth_message(super::netlink::VethEnds {
        name: &spec.peer,
        mac: None,
        index: None,
        master: None,
        peer: &host,
        peer_mac: spec.host_mac,
        peer_netns: node.as_raw_fd(),
        mtu: spec.mtu,
    });
    request(
        in_pool,
        RouteNetlinkMessage::NewLink(message),
        NLM_F_CREATE | NLM_F_EXCL,
        &object,
    )?;
    let peer_index = super::netlink::ioctl_index(
        in_pool.as_fd(),
        &spec.peer,
        &format!("{object}: the pod end"),
    )?;
    Ok((host, peer_index))
}

/// From the node namespace (`in_node` a netlink socket opened there): the index of the pool
/// pair's host end `host`, its IPv6 set as `spec` says.
pub(crate) fn prepare_host_end(
    spec: &VethSpec,
    in_node: &Socket,
    host: &str,
) -> Result<u32, SystemError> {
    let object = format!("pooled host veth {host}");
    let index = super::netlink::ioctl_index(in_node.as_fd(), host, &object)?;
    match spec.host_ipv6 {
        HostIpv6::Disabled => super::sysctl::disable_ipv6_here(host)?,
        HostIpv6::NoLinkLocal => {
            let message = LinkUnspec::new_with_index(index)
                .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
                    vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
                )]))
                .build();
            match request(in_node, RouteNetlinkMessage::SetLink(message), 0, &object) {
                Err(SystemError::Io { source, .. })
                    if source.raw_os_error() == Some(libc::EAFNOSUPPORT) => {}
                other => other?,
            }
        }
    }
    Ok(index)
}

/// From the node namespace (`in_node` a netlink socket opened there): makes the pool pair's
/// host end `host` (index `index`) a port of the spec's bridge if there is one, it is known,
/// and it has not been full. Returns the bridge's index if the host end joined it; failing
/// is not an error (the create's adoption joins it then), but a full bridge is remembered.
pub(crate) fn join_bridge(
    spec: &VethSpec,
    in_node: &Socket,
    host: &str,
    index: u32,
) -> Option<u32> {
    let bridge = spec.bridge.as_ref()?;
    if bridge.full.load(Ordering::Relaxed) {
        return None;
    }
    let bridge_index = bridge.index(in_node)?;
    let message = LinkUnspec::new_with_index(index)
        .controller(bridge_index)
        .build();
    let object = format!("pooled host veth {host}: joining bridge {}", bridge.name);
    match request(in_node, RouteNetlinkMessage::SetLink(message), 0, &object) {
        Ok(()) => Some(bridge_index),
        Err(SystemError::Io { source, .. }) if source.raw_os_error() == Some(libc::EXFULL) => {
            bridge.full.store(true, Ordering::Relaxed);
            None
        }
        Err(_) => None,
    }
}

/// From the node namespace (`in_node` a netlink socket opened there): brings the pool pair's
/// host end (index `index`) up, once its IPv6 is set and it joined the bridge, so a create
/// that keeps its name sends nothing for it. Without its peer up it has no carrier and
/// passes nothing. False if it could not: the create's adoption brings it up then.
pub(crate) fn bring_up_host_end(in_node: &Socket, host: &str, index: u32) -> bool {
    let message = LinkUnspec::new_with_index(index).up().build();
    let object = format!("pooled host veth {host}: up");
    request(in_node, RouteNetlinkMessage::SetLink(message), 0, &object).is_ok()
}

/// Sends `message` on the blocking netlink socket `socket` with `flags` besides
/// `NLM_F_REQUEST | NLM_F_ACK` and waits for its acknowledgement. An error reply becomes
/// [`SystemError::Io`] with its errno, naming `object`.
fn request(
    socket: &Socket,
    message: RouteNetlinkMessage,
    flags: u16,
    object: &str,
) -> Result<(), SystemError> {
    static SEQUENCE: AtomicU32 = AtomicU32::new(1);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut out = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut out);
    socket
        .send(&out, 0)
        .map_err(|e| SystemError::io(format!("{object}: sending the request"), e))?;
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(SystemError::io(format!("{object}: reading the answer"), e)),
        };
        for reply in codec::messages(buf.get(..n).unwrap_or_default()) {
            let reply = reply.map_err(|e| SystemError::other(object, format!("answer: {e}")))?;
            if reply.header.seq != sequence {
                continue;
            }
            match reply.errno() {
                Some(0) => return Ok(()),
                Some(errno) => {
                    return Err(SystemError::io(
                        object,
                        std::io::Error::from_raw_os_error(errno),
                    ));
                }
                None => {}
            }
        }
    }
}
