//! The kernel events of [`crate::system::KernelEvents`], from the kernel itself rather than
//! a poll of every pod:
//!
//! * mount table changes: `poll(2)` on `/proc/self/mountinfo` wakes with `POLLPRI` whenever
//!   a mount is added or removed in the daemon's mount namespace (where containerd's and
//!   CRI-O's `/var/run/netns/*` bind mounts propagate);
//! * link deletions in the node namespace: an rtnetlink socket made there and bound to the
//!   `RTNLGRP_LINK` multicast group receives every `RTM_DELLINK`, so a pod's host veth
//!   vanishing with its namespace is seen at once. A classic BPF filter on the socket
//!   ([`DELETIONS_ONLY`]) drops the group's other messages in the kernel: every create
//!   makes two or three link notifications (new link, up, carrier), which woke this thread
//!   for nothing.
//!
//! Each source runs on a dedicated thread blocked in `poll`/`recv` (no tokio task spins on
//! it) and ends when the receiver is dropped (at its next wake-up). A netlink socket that
//! overflowed (`ENOBUFS`: more deletions than its buffer holds) reports
//! [`KernelEvent::EventsLost`], so the daemon checks every attached pod once.

use std::fs::File;
use std::os::fd::AsRawFd;

use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use slog::{Logger, warn};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::LinuxSystem;
use super::codec;
use super::thread::{self, NsFd};
use crate::kernel::KernelEvent;
use crate::system::SystemError;

/// `RTMGRP_LINK`: the legacy group bit of `RTNLGRP_LINK` for `bind(2)`.
const RTMGRP_LINK: u32 = 1;
/// `RTM_DELLINK`.
const RTM_DELLINK: u16 = 17;
/// `IFLA_IFNAME`.
const IFLA_IFNAME: u16 = 3;
/// `sizeof(struct ifinfomsg)`.
const IFINFOMSG_LEN: usize = 16;
/// The link socket's filter: accept a message whose `nlmsg_type` (offset 4, host byte
/// order; the kernel sends one notification per datagram) is `RTM_DELLINK`, drop the rest.
/// Classic BPF loads half-words in network byte order, hence the constant's conversion.
const DELETIONS_ONLY: [libc::sock_filter; 4] = [
    // ldh [4]
    bpf(0x28, 0, 0, 4),
    // jeq #RTM_DELLINK, accept, drop
    bpf(
        0x15,
        0,
        1,
        u16::from_be_bytes(RTM_DELLINK.to_ne_bytes()) as u32, // widening
    ),
    // accept: ret #0xffffffff (the whole datagram)
    bpf(0x06, 0, 0, u32::MAX),
    // drop: ret #0
    bpf(0x06, 0, 0, 0),
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Receive buffer asked for the link socket: room for thousands of deletions at once (a
/// node removing many pods) before the kernel drops any.
const LINK_SOCKET_BUFFER: usize = 4 << 20;

/// Starts both watchers; see the module documentation.
pub(crate) async fn subscribe(
    sys: &LinuxSystem,
) -> Result<UnboundedReceiver<KernelEvent>, SystemError> {
    let (tx, rx) = unbounded_channel();
    watch_mounts(tx.clone(), sys.log.clone())?;
    let socket = thread::run(
        "link events in the node namespace",
        Some(NsFd::Shared(sys.node.clone())),
        link_socket,
    )
    .await?;
    let log = sys.log.clone();
    std::thread::Builder::new()
        .name("nh-link-events".into())
        .spawn(move || watch_links(&socket, &tx, &log))
        .map_err(|e| SystemError::io("link events thread", e))?;
    Ok(rx)
}

/// A rtnetlink socket in the calling thread's namespace, subscribed to link events.
fn link_socket() -> Result<Socket, SystemError> {
    let object = "link events socket";
    let mut socket =
        Socket::new(NETLINK_ROUTE).map_err(|e| SystemError::io(format!("{object}: opening"), e))?;
    socket
        .bind(&SocketAddr::new(0, RTMGRP_LINK))
        .map_err(|e| SystemError::io(format!("{object}: joining RTNLGRP_LINK"), e))?;
    attach_filter(&socket, &DELETIONS_ONLY)
        .map_err(|e| SystemError::io(format!("{object}: attaching its filter"), e))?;
    // A smaller buffer than asked only means an earlier EventsLost.
    let _ = socket.set_rx_buf_sz(LINK_SOCKET_BUFFER);
    Ok(socket)
}

/// Attaches the classic BPF program `program` to `socket` (`SO_ATTACH_FILTER`).
fn attach_filter(socket: &Socket, program: &[libc::sock_filter]) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?,
        // The kernel copies the program and never writes through this pointer.
        filter: program.as_ptr().cast_mut(),
    };
    // `fprog.filter` points at `program.len()` instructions that outlive the call; the
    // kernel copies them before returning.
    super::conn::set_socket_option(socket, libc::SO_ATTACH_FILTER, &fprog)
}

/// Blocks in `recv` on `socket`, sending the names of deleted links, until the receiver
/// is gone.
fn watch_links(socket: &Socket, tx: &UnboundedSender<KernelEvent>, log: &Logger) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        let event = match socket.recv(&mut buf, 0) {
            Ok(_) => None,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Some(KernelEvent::EventsLost),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(log, "link events stopped: cannot read the netlink socket"; "error" => %e);
                let _ = tx.send(KernelEvent::EventsLost);
                return;
            }
        };
        let events = event.into_iter().chain(
            deleted_links(&buf)
                .into_iter()
                .map(KernelEvent::LinkRemoved),
        );
        for event in events {
            if tx.send(event).is_err() {
                return;
            }
        }
    }
}

/// Watches the mount table on a thread of its own, until the receiver is gone.
fn watch_mounts(tx: UnboundedSender<KernelEvent>, log: Logger) -> Result<(), SystemError> {
    let path = "/proc/self/mountinfo";
    let file = File::open(path).map_err(|e| SystemError::io(path, e))?;
    std::thread::Builder::new()
        .name("nh-mount-events".into())
        .spawn(move || {
            loop {
                let mut fd = libc::pollfd {
                    fd: file.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: `fd` is one valid pollfd that lives across the call, and the count
                // passed is 1; `file` keeps the descriptor open.
                let n = unsafe { libc::poll(&mut fd, 1, -1) };
                if n < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    warn!(log, "mount events stopped: poll failed"; "file" => path, "error" => %e);
                    let _ = tx.send(KernelEvent::EventsLost);
                    return;
                }
                if fd.revents & (libc::POLLPRI | libc::POLLERR) != 0
                    && tx.send(KernelEvent::MountsChanged).is_err()
                {
                    return;
                }
            }
        })
        .map_err(|e| SystemError::io("mount events thread", e))?;
    Ok(())
}

/// The names of the links deleted in one receive buffer of rtnetlink messages (other
/// messages, and malformed ones, are skipped; a malformed one ends the walk of the buffer).
pub(crate) fn deleted_links(buf: &[u8]) -> Vec<String> {
    codec::messages(buf)
        .map_while(Result::ok)
        .filter(|m| m.header.kind == RTM_DELLINK)
        .filter_map(|m| link_name(&m))
        .collect()
}

/// `IFLA_IFNAME` of a link message (an `ifinfomsg` and its attributes); `None` without
/// one, or if a malformed attribute comes before it.
fn link_name(message: &codec::Message<'_>) -> Option<String> {
    for attr in message.attributes_after(IFINFOMSG_LEN)? {
        let attr = attr.ok()?;
        if attr.kind() == IFLA_IFNAME {
            return attr.c_str().map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::codec::NLMSG_HDRLEN;
    use super::*;

    /// The filter on a real socket, in a namespace of its own: a link's creation and its
    /// coming up are dropped in the kernel, its deletion arrives, and nothing else is queued.
    #[test]
    fn the_link_socket_receives_deletions_only() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!(
                "\n*** SKIPPED the_link_socket_receives_deletions_only: needs root (a network namespace) ***\n"
            );
            return;
        }
        std::thread::spawn(|| {
            // This thread's own namespace, gone when it ends; `ip` inherits it.
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let socket = link_socket().expect("link socket");
            let ip = |args: &[&str]| {
                let status = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .expect("run ip");
                assert!(status.success(), "ip {args:?}: {status}");
            };
            ip(&[
                "link", "add", "nhfilt0", "type", "veth", "peer", "name", "nhfilt1",
            ]);
            ip(&["link", "set", "nhfilt0", "up"]);
            ip(&["link", "set", "nhfilt1", "up"]);
            // One deletion of each end, one datagram each.
            ip(&["link", "del", "nhfilt0"]);
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
            let mut deleted = Vec::new();
            for _ in 0..2 {
                buf.clear();
                socket.recv(&mut buf, 0).expect("recv");
                deleted.extend(deleted_links(&buf));
            }
            deleted.sort();
            assert_eq!(deleted, ["nhfilt0", "nhfilt1"]);
            buf.clear();
            let more = socket.recv(&mut buf, libc::MSG_DONTWAIT);
            assert!(
                more.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
                "nothing but the deletion should be queued: {more:?}, {} bytes",
                buf.len()
            );
        })
        .join()
        .expect("test thread");
    }

    /// One netlink message of `kind` holding an ifinfomsg and the attribute IFLA_IFNAME.
    fn link_message(kind: u16, name: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let value_len = name.len() + 1;
        attr.extend_from_slice(&u16::try_from(4 + value_len).unwrap().to_ne_bytes());
        attr.extend_from_slice(&IFLA_IFNAME.to_ne_bytes());
        attr.extend_from_slice(name.as_bytes());
        attr.push(0);
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        // IFLA_MTU before the name, as the kernel sends other attributes first.
        let mut mtu = Vec::new();
        mtu.extend_from_slice(&8u16.to_ne_bytes());
        mtu.extend_from_slice(&4u16.to_ne_bytes());
        mtu.extend_from_slice(&1500u32.to_ne_bytes());
        let len = NLMSG_HDRLEN + IFINFOMSG_LEN + mtu.len() + attr.len();
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(len).unwrap().to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]); // flags, seq, pid
        m.extend_from_slice(&[0u8; IFINFOMSG_LEN]);
        m.extend_from_slice(&mtu);
        m.extend_from_slice(&attr);
        m
    }

    #[test]
    fn deleted_link_names_are_read_from_a_buffer_of_several_messages() {
        let mut buf = link_message(RTM_DELLINK, "nh1234567890ab");
        buf.extend(link_message(16, "eth9")); // RTM_NEWLINK: not a deletion
        buf.extend(link_message(RTM_DELLINK, "veth0"));
        assert_eq!(deleted_links(&buf), ["nh1234567890ab", "veth0"]);
    }

    #[test]
    fn truncated_and_malformed_messages_are_skipped() {
        let whole = link_message(RTM_DELLINK, "nh1");
        assert!(deleted_links(&whole[..whole.len() - 1]).is_empty());
        assert!(deleted_links(&whole[..10]).is_empty());
        let mut bad_attr = whole.clone();
        // The first attribute claims more bytes than the message holds.
        let first_attr = NLMSG_HDRLEN + IFINFOMSG_LEN;
        bad_attr[first_attr..first_attr + 2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(deleted_links(&bad_attr).is_empty());
        assert!(deleted_links(&[]).is_empty());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// No receive buffer makes the parser panic.
        #[test]
        fn deleted_links_never_panics(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let names = deleted_links(&buf);
            proptest::prop_assert!(names.len() <= buf.len() / (NLMSG_HDRLEN + IFINFOMSG_LEN));
        }
    }
}
