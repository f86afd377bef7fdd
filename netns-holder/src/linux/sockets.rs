//! The node facts host ports depend on, outside nftables:
//!
//! * [`listeners`]: sockets of the node namespace that hold a port (TCP listeners, bound
//!   unconnected UDP sockets), read from `/proc/thread-self/net/{tcp,tcp6,udp,udp6}` by a
//!   thread that entered the node namespace (those files show the namespace of the reading
//!   thread). Their owners are found only when there is a match (a scan of `/proc/*/fd` for
//!   the socket's inode), i.e. only on the error path.
//! * [`flush_conntrack`]: deletes UDP conntrack entries with the `conntrack` tool (run in the
//!   node namespace). Only pods with UDP ports pay for it.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::LinuxSystem;
use super::nft::{run_in_node, tool};
use super::thread::{self, NsFd};
use crate::firewall::{ConntrackFlush, Listener};
use crate::ports::{Family, Protocol};
use crate::system::SystemError;

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: &str = "0A";
/// UDP "state" of a socket that is bound but not connected (`TCP_CLOSE`).
const UDP_UNCONNECTED: &str = "07";

/// One parsed line of `/proc/net/{tcp,udp}[6]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcSocket {
    pub(crate) address: IpAddr,
    pub(crate) port: u16,
    pub(crate) remote_port: u16,
    pub(crate) state: String,
    pub(crate) inode: u64,
}

/// Parses `ADDR:PORT` of `/proc/net/*`: the address is the in-memory bytes of each 32-bit
/// word in host order, printed as hex.
fn parse_endpoint(text: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words: Vec<u32> = (0..addr.len() / 8)
        .map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some((ip, port))
}

/// Parses a `/proc/net/{tcp,udp}[6]` table.
pub(crate) fn parse_proc_net(text: &str) -> Vec<ProcSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (address, port) = parse_endpoint(f.get(1)?)?;
            let (_, remote_port) = parse_endpoint(f.get(2)?)?;
            Some(ProcSocket {
                address,
                port,
                remote_port,
                state: f.get(3)?.to_string(),
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

/// The holder of a socket inode: `pid N (comm)`, scanning `/proc/*/fd`.
fn owner_of(inode: u64) -> Option<String> {
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
        let mut found: BTreeMap<(Protocol, u16, IpAddr), u64> = BTreeMap::new();
        for (file, protocol, state) in [
            ("tcp", Protocol::Tcp, TCP_LISTEN),
            ("tcp6", Protocol::Tcp, TCP_LISTEN),
            ("udp", Protocol::Udp, UDP_UNCONNECTED),
            ("udp6", Protocol::Udp, UDP_UNCONNECTED),
        ] {
            if !ports.iter().any(|(p, _)| *p == protocol) {
                continue;
            }
            let path = format!("/proc/thread-self/net/{file}");
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                // No IPv6 in the namespace.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(SystemError::io(path, e)),
            };
            for s in parse_proc_net(&text) {
                if s.state == state && s.remote_port == 0 && ports.contains(&(protocol, s.port)) {
                    found.insert((protocol, s.port, s.address), s.inode);
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

    #[test]
    fn proc_net_parses_v4_and_v6() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0
   1: 0200F40A:0050 0100F40A:D431 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
";
        let v = parse_proc_net(tcp);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].address, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(v[0].port, 8080);
        assert_eq!(v[0].state, "0A");
        assert_eq!(v[0].inode, 12345);
        assert_eq!(v[1].address, "10.244.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(v[1].remote_port, 0xd431);
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 0000FDFD000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 778 2 0000000000000000 0
";
        let v = parse_proc_net(tcp6);
        assert_eq!(v[0].address, "::".parse::<IpAddr>().unwrap());
        assert_eq!(v[0].port, 8080);
        assert_eq!(v[1].address, "fdfd::1".parse::<IpAddr>().unwrap());
        assert_eq!(v[1].port, 53);
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
