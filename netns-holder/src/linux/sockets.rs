//! The node facts host ports depend on, outside nftables:
//!
//! * [`listeners`]: sockets of the node namespace that hold a port (TCP listeners, bound
//!   unconnected UDP sockets), from `NETLINK_SOCK_DIAG` dumps on a socket created by a
//!   thread in the node namespace. The TCP dump asks for `LISTEN` sockets only, so the kernel
//!   walks just the listening hash, whereas reading `/proc/net/tcp` walks the whole
//!   established hash of the machine (shared by every namespace): 2.3 ms per `read` call
//!   here, 15 ms per create. Owners are found only when there is a match (a scan of
//!   `/proc/*/fd` for the socket's inode), i.e. only on the error path.
//! * [`flush_conntrack`]: deletes UDP conntrack entries with the `conntrack` tool (run in the
//!   node namespace). Only pods with UDP ports pay for it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::sys::{Socket, protocols::NETLINK_SOCK_DIAG};

use super::LinuxSystem;
use super::codec::{self, EncodeError, NLM_F_DUMP, NLM_F_REQUEST, Writer};
use super::nft::{run_in_node, tool};
use super::thread::NsFd;
use crate::firewall::{ConntrackFlush, Listener};
use crate::ports::{Family, Protocol};
use crate::system::SystemError;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// TCP state `LISTEN`.
const TCP_LISTEN: u8 = 10;
/// The "state" of a bound, unconnected UDP socket (`TCP_CLOSE`).
const UDP_UNCONNECTED: u8 = 7;
/// Size of `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;

/// One socket of a sock_diag dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiagSocket {
    pub(crate) state: u8,
    pub(crate) address: IpAddr,
    pub(crate) port: u16,
    pub(crate) remote_port: u16,
    pub(crate) inode: u32,
}

/// The `SOCK_DIAG_BY_FAMILY` dump request (`struct inet_diag_req_v2`) for sockets of
/// `family`/`protocol` in `state`.
pub(crate) fn diag_request(
    family: u8,
    protocol: u8,
    state: u8,
    seq: u32,
) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::default();
    let message = w.begin_message(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq);
    // sdiag_family, sdiag_protocol, idiag_ext, pad; idiag_states (a bit per state).
    w.push(&[family, protocol, 0, 0]);
    w.push(&(1u32 << state).to_ne_bytes());
    w.push(&[0u8; 48]); // struct inet_diag_sockid: no filter
    w.end_message(message)?;
    Ok(w.into_bytes())
}

/// The socket an `inet_diag_msg` describes, if `body` holds one.
fn diag_socket(body: &[u8]) -> Option<DiagSocket> {
    if body.len() < DIAG_MSG_LEN {
        return None;
    }
    // idiag_family, idiag_state, idiag_timer, idiag_retrans, then struct inet_diag_sockid:
    // source and destination ports (big endian), source and destination addresses (16
    // bytes each), interface, cookie; then expires, rqueue, wqueue, uid, inode.
    let address = match body.first()? {
        2 => IpAddr::V4(Ipv4Addr::from(codec::bytes_at::<4>(body, 8)?)),
        _ => IpAddr::V6(Ipv6Addr::from(codec::bytes_at::<16>(body, 8)?)),
    };
    Some(DiagSocket {
        state: *body.get(1)?,
        port: codec::u16_be(body, 4)?,
        remote_port: codec::u16_be(body, 6)?,
        address,
        inode: codec::u32_ne(body, 68)?,
    })
}

/// Parses the `inet_diag_msg`s of one receive buffer; `Ok(true)` once the dump is done,
/// `Err(errno)` for an error reply. A malformed message ends the walk of this buffer.
pub(crate) fn parse_diag(buf: &[u8], out: &mut Vec<DiagSocket>) -> Result<bool, i32> {
    for message in codec::messages(buf).map_while(Result::ok) {
        if message.is_done() {
            return Ok(true);
        }
        match message.errno() {
            Some(0) | None => {}
            Some(errno) => return Err(errno),
        }
        if message.header.kind == SOCK_DIAG_BY_FAMILY
            && let Some(socket) = diag_socket(message.payload)
        {
            out.push(socket);
        }
    }
    Ok(false)
}

/// Dumps the sockets of `family`/`protocol` in `state` (in the namespace `socket` was made in).
fn dump(socket: &Socket, family: u8, protocol: u8, state: u8) -> std::io::Result<Vec<DiagSocket>> {
    let request = diag_request(family, protocol, state, 1).map_err(std::io::Error::other)?;
    socket.send(&request, 0)?;
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        socket.recv(&mut buf, 0)?;
        match parse_diag(&buf, &mut out) {
            Ok(true) => return Ok(out),
            Ok(false) => {}
            // No IPv6 (or no UDP diag) in this kernel or namespace: nothing to report.
            Err(libc::EAFNOSUPPORT) | Err(libc::ENOENT) => return Ok(Vec::new()),
            Err(errno) => return Err(std::io::Error::from_raw_os_error(errno)),
        }
    }
}

/// The holder of a socket inode: `pid N (comm)`, scanning `/proc/*/fd`.
fn owner_of(inode: u32) -> Option<String> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                let comm = super::procfs::read_text(&format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                return Some(format!("pid {pid} ({comm})"));
            }
        }
    }
    None
}

/// A protocol or address family number as the byte a sock_diag request carries.
fn diag_byte(number: libc::c_int) -> Result<u8, SystemError> {
    u8::try_from(number).map_err(|_| {
        SystemError::other(
            "sock_diag request",
            format!("protocol or family {number} does not fit in a byte"),
        )
    })
}

/// Sockets of the node namespace that hold one of `ports`.
pub(crate) async fn listeners(
    sys: &LinuxSystem,
    ports: &[(Protocol, u16)],
) -> Result<Vec<Listener>, SystemError> {
    let ports = ports.to_vec();
    let object = "sockets in the node namespace";
    // On a namespace worker, not a thread of its own: a create with host ports asks this,
    // and a thread start and exit cost it 0.15 ms here.
    let node = Some(NsFd::Shared(sys.node.clone()));
    sys.ns_workers
        .run(object, node, move || {
            let socket = Socket::new(NETLINK_SOCK_DIAG)
                .map_err(|e| SystemError::io(format!("{object}: sock_diag socket"), e))?;
            let mut found: BTreeMap<(Protocol, u16, IpAddr), u32> = BTreeMap::new();
            for (protocol, number, state) in [
                (Protocol::Tcp, diag_byte(libc::IPPROTO_TCP)?, TCP_LISTEN),
                (
                    Protocol::Udp,
                    diag_byte(libc::IPPROTO_UDP)?,
                    UDP_UNCONNECTED,
                ),
            ] {
                if !ports.iter().any(|(p, _)| *p == protocol) {
                    continue;
                }
                for family in [diag_byte(libc::AF_INET)?, diag_byte(libc::AF_INET6)?] {
                    let sockets = dump(&socket, family, number, state)
                        .map_err(|e| SystemError::io(format!("{object}: {protocol} dump"), e))?;
                    for s in sockets {
                        if s.state == state
                            && s.remote_port == 0
                            && ports.contains(&(protocol, s.port))
                        {
                            found.insert((protocol, s.port, s.address), s.inode);
                        }
                    }
                }
            }
            Ok(found
                .into_iter()
                .map(|((protocol, port, address), inode)| Listener {
                    protocol,
                    address,
                    port,
                    owner: owner_of(inode),
                })
                .collect())
        })
        .await
}

/// `conntrack -D` arguments for one flush.
pub(crate) fn conntrack_args(flush: &ConntrackFlush) -> Vec<String> {
    let (family, filter) = match flush {
        ConntrackFlush::ReplySource { address } => (
            Family::of(*address),
            vec!["--reply-src".to_string(), address.to_string()],
        ),
        ConntrackFlush::DestinationPort { family, port } => (
            *family,
            vec!["--orig-port-dst".to_string(), port.to_string()],
        ),
    };
    let mut args: Vec<String> = ["-D", "-f", family.name(), "-p", "udp"]
        .map(String::from)
        .to_vec();
    args.extend(filter);
    args
}

/// The count of `conntrack -D`'s "N flow entries have been deleted." line.
pub(crate) fn deleted_count(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let rest = line.split("): ").last()?;
        let (n, tail) = rest.split_once(' ')?;
        tail.starts_with("flow entries have been deleted")
            .then(|| n.parse().ok())
            .flatten()
    })
}

/// Deletes the UDP entries of `flushes` in the node namespace.
pub(crate) async fn flush_conntrack(
    sys: &LinuxSystem,
    flushes: &[ConntrackFlush],
) -> Result<u64, SystemError> {
    let mut total = 0;
    for flush in flushes {
        let object = format!("conntrack {flush}");
        let out = run_in_node(
            sys,
            object.clone(),
            tool("conntrack"),
            conntrack_args(flush),
            None,
        )
        .await?;
        // conntrack exits 1 when nothing matched; the summary line tells success apart.
        match deleted_count(&out.stderr) {
            Some(n) => total += n,
            None => {
                return Err(SystemError::other(
                    object,
                    format!("conntrack -D failed: {}", out.stderr),
                ));
            }
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag_message(family: u8, state: u8, addr: &[u8], port: u16, inode: u32) -> Vec<u8> {
        let mut body = vec![family, state, 0, 0];
        body.extend_from_slice(&port.to_be_bytes());
        body.extend_from_slice(&0u16.to_be_bytes());
        let mut src = addr.to_vec();
        src.resize(16, 0);
        body.extend_from_slice(&src);
        body.extend_from_slice(&[0u8; 16 + 4 + 8 + 16]);
        body.extend_from_slice(&inode.to_ne_bytes());
        let mut m = Vec::new();
        m.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn diag_request_and_replies() {
        let r = diag_request(2, 6, TCP_LISTEN, 7).unwrap();
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 1 << 10);
        let mut buf = diag_message(2, TCP_LISTEN, &[127, 0, 0, 1], 8080, 12345);
        buf.extend(diag_message(
            10,
            UDP_UNCONNECTED,
            &"fdfd::1".parse::<Ipv6Addr>().unwrap().octets(),
            53,
            778,
        ));
        let mut out = Vec::new();
        assert_eq!(parse_diag(&buf, &mut out), Ok(false));
        assert_eq!(
            out,
            [
                DiagSocket {
                    state: TCP_LISTEN,
                    address: "127.0.0.1".parse().unwrap(),
                    port: 8080,
                    remote_port: 0,
                    inode: 12345
                },
                DiagSocket {
                    state: UDP_UNCONNECTED,
                    address: "fdfd::1".parse().unwrap(),
                    port: 53,
                    remote_port: 0,
                    inode: 778
                }
            ]
        );
        let mut done = vec![20, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_diag(&done, &mut out), Ok(true));
        done[4] = 2;
        done[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_diag(&done, &mut out), Err(libc::EPERM));
    }

    #[test]
    fn conntrack_command_lines() {
        assert_eq!(
            conntrack_args(&ConntrackFlush::ReplySource {
                address: "fd00::2".parse().unwrap()
            })
            .join(" "),
            "-D -f ipv6 -p udp --reply-src fd00::2"
        );
        assert_eq!(
            conntrack_args(&ConntrackFlush::DestinationPort {
                family: Family::V4,
                port: 5353
            })
            .join(" "),
            "-D -f ipv4 -p udp --orig-port-dst 5353"
        );
        assert_eq!(
            deleted_count("conntrack v1.4.7 (conntrack-tools): 3 flow entries have been deleted."),
            Some(3)
        );
        assert_eq!(
            deleted_count("conntrack v1.4.7 (conntrack-tools): Operation failed"),
            None
        );
    }

    /// The request as the hand-written encoder before the codec produced it (little-endian
    /// host).
    #[test]
    #[cfg(target_endian = "little")]
    fn diag_request_is_byte_for_byte_what_it_was() {
        let hex: String = diag_request(10, 17, UDP_UNCONNECTED, 3)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            format!(
                "480000001400010303000000000000000a110000800000{}",
                "0".repeat(98)
            )
        );
    }

    #[test]
    fn short_truncated_and_unknown_messages_are_skipped() {
        let whole = diag_message(2, TCP_LISTEN, &[127, 0, 0, 1], 80, 1);
        let mut out = Vec::new();
        assert_eq!(parse_diag(&whole[..whole.len() - 1], &mut out), Ok(false));
        assert_eq!(parse_diag(&whole[..40], &mut out), Ok(false));
        // A diag message whose body is shorter than an inet_diag_msg.
        let mut short = whole[..16 + 40].to_vec();
        short[0..4].copy_from_slice(&56u32.to_ne_bytes());
        assert_eq!(parse_diag(&short, &mut out), Ok(false));
        assert!(out.is_empty());
        // An acknowledgement is not an error; a hostile errno is one.
        let mut ack = vec![20, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_diag(&ack, &mut out), Ok(false));
        ack[16..20].copy_from_slice(&i32::MIN.to_ne_bytes());
        assert_eq!(parse_diag(&ack, &mut out), Err(i32::MIN));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// No receive buffer makes the parser panic.
        #[test]
        fn parse_diag_never_panics(buf in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let mut out = Vec::new();
            let _ = parse_diag(&buf, &mut out);
            proptest::prop_assert!(out.len() <= buf.len() / (16 + DIAG_MSG_LEN));
        }
    }
}
