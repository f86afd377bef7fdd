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
use super::nft::{run_in_node, tool};
use super::thread::{self, NsFd};
use crate::firewall::{ConntrackFlush, Listener};
use crate::ports::{Family, Protocol};
use crate::system::SystemError;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
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
pub(crate) fn diag_request(family: u8, protocol: u8, state: u8, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(72);
    m.extend_from_slice(&72u32.to_ne_bytes());
    m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, protocol, 0, 0]);
    m.extend_from_slice(&(1u32 << state).to_ne_bytes());
    m.extend_from_slice(&[0u8; 48]); // struct inet_diag_sockid: no filter
    m
}

/// Parses the `inet_diag_msg`s of one receive buffer; `Ok(true)` once the dump is done.
pub(crate) fn parse_diag(buf: &[u8], out: &mut Vec<DiagSocket>) -> Result<bool, i32> {
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
        if len < 16 || at + len > buf.len() {
            break;
        }
        let body = &buf[at + 16..at + len];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR if body.len() >= 4 => {
                let code = i32::from_ne_bytes(body[..4].try_into().expect("4 bytes"));
                if code != 0 {
                    return Err(-code);
                }
            }
            SOCK_DIAG_BY_FAMILY if body.len() >= DIAG_MSG_LEN => {
                let address = match body[0] {
                    2 => IpAddr::V4(Ipv4Addr::from(
                        <[u8; 4]>::try_from(&body[8..12]).expect("4 bytes"),
                    )),
                    _ => IpAddr::V6(Ipv6Addr::from(
                        <[u8; 16]>::try_from(&body[8..24]).expect("16 bytes"),
                    )),
                };
                out.push(DiagSocket {
                    state: body[1],
                    port: u16::from_be_bytes([body[4], body[5]]),
                    remote_port: u16::from_be_bytes([body[6], body[7]]),
                    address,
                    inode: u32::from_ne_bytes(body[68..72].try_into().expect("4 bytes")),
                });
            }
            _ => {}
        }
        at += (len + 3) & !3;
    }
    Ok(false)
}

/// Dumps the sockets of `family`/`protocol` in `state` (in the namespace `socket` was made in).
fn dump(socket: &Socket, family: u8, protocol: u8, state: u8) -> std::io::Result<Vec<DiagSocket>> {
    socket.send(&diag_request(family, protocol, state, 1), 0)?;
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
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .map(|c| c.trim().to_string())
                    .unwrap_or_default();
                return Some(format!("pid {pid} ({comm})"));
            }
        }
    }
    None
}

/// Sockets of the node namespace that hold one of `ports`.
pub(crate) async fn listeners(
    sys: &LinuxSystem,
    ports: &[(Protocol, u16)],
) -> Result<Vec<Listener>, SystemError> {
    let ports = ports.to_vec();
    let object = "sockets in the node namespace";
    thread::run(object, Some(NsFd::Shared(sys.node.clone())), move || {
        let socket = Socket::new(NETLINK_SOCK_DIAG)
            .map_err(|e| SystemError::io(format!("{object}: sock_diag socket"), e))?;
        let mut found: BTreeMap<(Protocol, u16, IpAddr), u32> = BTreeMap::new();
        for (protocol, number, state) in [
            (Protocol::Tcp, libc::IPPROTO_TCP as u8, TCP_LISTEN),
            (Protocol::Udp, libc::IPPROTO_UDP as u8, UDP_UNCONNECTED),
        ] {
            if !ports.iter().any(|(p, _)| *p == protocol) {
                continue;
            }
            for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
                let sockets = dump(&socket, family, number, state)
                    .map_err(|e| SystemError::io(format!("{object}: {protocol} dump"), e))?;
                for s in sockets {
                    if s.state == state && s.remote_port == 0 && ports.contains(&(protocol, s.port))
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
        m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(&body);
        m
    }

    #[test]
    fn diag_request_and_replies() {
        let r = diag_request(2, 6, TCP_LISTEN, 7);
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
}
