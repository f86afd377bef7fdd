//! The daemon's nftables table, applied two ways:
//!
//! * **Per-pod element changes** go through an in-process nfnetlink socket (created in the
//!   node namespace, kept open): one batch (`NFNL_MSG_BATCH_BEGIN` ... `BATCH_END`) of
//!   `NFT_MSG_NEWSETELEM` or `NFT_MSG_DELSETELEM` messages, one element per message, which the
//!   kernel commits atomically or not at all. This is the hot path of a pod create: about
//!   30 µs, flat in the number of elements, against ~2 ms for `nft -f -` (fork, exec, and
//!   nft fetching its cache of the ruleset on every run), which would have been half the
//!   budget of a whole pod create.
//! * **The whole table** (start, `reload`, repair) goes through `nft -f -`, with the text of
//!   [`firewall::render_replace`] on stdin, in one transaction. Rules are parsed and compiled
//!   to bytecode by nft; doing that by hand would be a large, fragile amount of code for
//!   something that happens once per daemon start.
//! * **Reading the table** (`check`) runs `nft -t list table` (rules, no elements) and
//!   `nft -j list table` (elements as JSON). Not on any per-pod path.
//!
//! The batch is processed synchronously inside `send`, so every error reply is already
//! queued when `send` returns; the socket is then drained without blocking. Only the last
//! message asks for an acknowledgement, which confirms that the batch was processed; every
//! failing message gets its own error reply (the kernel reports them all), whose sequence
//! number names the element.

use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use rtnetlink::sys::{Socket, protocols::NETLINK_NETFILTER};

use super::LinuxSystem;
use super::thread::{self, NsFd};
use crate::firewall::{self, FirewallTable, HostPortElement, ObservedTable};
use crate::system::SystemError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFPROTO_INET: u8 = 1;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
/// Socket buffer sizes: a batch for the largest pod (a range of 4096 ports, two families)
/// is under 1 MiB.
const SOCKET_BUFFER: usize = 4 << 20;

/// The nfnetlink socket of the node namespace, opened on first use.
pub(crate) type NfSocket = Arc<Mutex<Socket>>;

// ------------------------------------------------------------------ encoding

/// A netlink message buffer with nested attribute support.
#[derive(Default)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    /// Start offsets of open nests.
    nests: Vec<usize>,
    /// Sequence number of each element message, with its element's index.
    seqs: Vec<(u32, usize)>,
    next_seq: u32,
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

impl Batch {
    fn message(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> (usize, u32) {
        let start = self.buf.len();
        let seq = self.next_seq;
        self.next_seq += 1;
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in `end`
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        // struct nfgenmsg: family, version (NFNETLINK_V0), res_id (big endian).
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        (start, seq)
    }

    fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.buf.resize(self.buf.len() + align(len) - len, 0);
    }

    fn attr_str(&mut self, kind: u16, s: &str) {
        let mut payload = s.as_bytes().to_vec();
        payload.push(0);
        self.attr(kind, &payload);
    }

    fn nest(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    }

    fn unnest(&mut self) {
        let start = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    /// The batch that adds (`add`) or deletes `elements`, one message each; only the last
    /// asks for an acknowledgement. Additions are exclusive (`NLM_F_EXCL`).
    pub(crate) fn elements(elements: &[HostPortElement], add: bool) -> Self {
        let mut b = Batch {
            next_seq: 1,
            ..Batch::default()
        };
        let (begin, _) = b.message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.end(begin);
        for (index, element) in elements.iter().enumerate() {
            let (kind, mut flags) = if add {
                (
                    NFT_MSG_NEWSETELEM,
                    NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
                )
            } else {
                (NFT_MSG_DELSETELEM, NLM_F_REQUEST)
            };
            if index + 1 == elements.len() {
                flags |= NLM_F_ACK;
            }
            let (start, seq) =
                b.message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, NFPROTO_INET, 0);
            b.seqs.push((seq, index));
            b.attr_str(NFTA_SET_ELEM_LIST_TABLE, firewall::TABLE_NAME);
            b.attr_str(NFTA_SET_ELEM_LIST_SET, element.map.name());
            b.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            b.nest(NFTA_LIST_ELEM);
            b.nest(NFTA_SET_ELEM_KEY);
            b.attr(NFTA_DATA_VALUE, &key_bytes(element));
            b.unnest();
            if add {
                b.nest(NFTA_SET_ELEM_DATA);
                b.attr(NFTA_DATA_VALUE, &value_bytes(element));
                b.unnest();
            }
            b.unnest();
            b.unnest();
            b.end(start);
        }
        let (end, _) = b.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        b.end(end);
        b
    }

    /// The encoded batch.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A concatenation component: big-endian bytes padded to a 4-byte register boundary.
fn component(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    out.resize(align(out.len()), 0);
}

/// The key as the kernel stores it: `[address .] protocol . port`, each component padded to
/// 32 bits (as nft lays out concatenations in registers).
pub(crate) fn key_bytes(e: &HostPortElement) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    if let Some(ip) = e.host_ip {
        component(&mut out, &ip_bytes(ip));
    }
    component(&mut out, &[e.protocol.number()]);
    component(&mut out, &e.host_port.to_be_bytes());
    out
}

/// The value: `pod address . pod port`, padded likewise.
pub(crate) fn value_bytes(e: &HostPortElement) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    component(&mut out, &ip_bytes(e.pod_ip));
    component(&mut out, &e.pod_port.to_be_bytes());
    out
}

// ------------------------------------------------------------------ the socket

/// Opens the node's nfnetlink socket (once).
async fn socket(sys: &LinuxSystem) -> Result<NfSocket, SystemError> {
    sys.nf_socket
        .get_or_try_init(|| async {
            let object = "nfnetlink socket in the node namespace";
            let socket = thread::run(object, Some(NsFd::Shared(sys.node.clone())), move || {
                let mut socket =
                    Socket::new(NETLINK_NETFILTER).map_err(|e| SystemError::io(object, e))?;
                socket.bind_auto().map_err(|e| SystemError::io(object, e))?;
                // Best effort: the defaults (~200 KiB) suffice for every ordinary pod.
                let _ = set_buffer(&socket, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
                let _ = set_buffer(&socket, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
                Ok(socket)
            })
            .await?;
            Ok(Arc::new(Mutex::new(socket)))
        })
        .await
        .cloned()
}

fn set_buffer(socket: &Socket, force: libc::c_int, plain: libc::c_int) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let size = SOCKET_BUFFER as libc::c_int;
    for option in [force, plain] {
        // SAFETY: setsockopt on our open socket with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(std::io::Error::last_os_error())
}

/// The replies to a batch: errors by sequence number, and whether the final acknowledgement
/// arrived.
#[derive(Debug, Default)]
struct Replies {
    errors: Vec<(u32, i32)>,
    acked: bool,
}

/// Sends `batch` and collects its replies.
fn talk(socket: &Mutex<Socket>, batch: &Batch) -> Result<Replies, std::io::Error> {
    let socket = socket.lock().unwrap_or_else(|e| e.into_inner());
    // Drop anything stale (a reply to an earlier batch that failed half-way).
    drain(&socket, |_, _| {})?;
    let sent = socket.send(batch.bytes(), 0)?;
    if sent != batch.bytes().len() {
        return Err(std::io::Error::other(format!(
            "short netlink send: {sent} of {} bytes",
            batch.bytes().len()
        )));
    }
    let last_seq = batch.seqs.last().map(|(s, _)| *s);
    let mut replies = Replies::default();
    drain(&socket, |seq, errno| {
        if errno == 0 {
            replies.acked |= Some(seq) == last_seq;
        } else {
            replies.errors.push((seq, errno));
        }
    })?;
    Ok(replies)
}

/// Reads every queued message without blocking, calling `on_error(seq, errno)` for each
/// `NLMSG_ERROR` (errno 0 is an acknowledgement).
fn drain(socket: &Socket, mut on_error: impl FnMut(u32, i32)) -> Result<(), std::io::Error> {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        buf.clear();
        match socket.recv(&mut buf, libc::MSG_DONTWAIT) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let mut at = 0;
        while at + 16 <= buf.len() {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().expect("2 bytes"));
            let seq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().expect("4 bytes"));
            if len < 16 || at + len > buf.len() {
                break;
            }
            if kind == NLMSG_ERROR && len >= 20 {
                let code = i32::from_ne_bytes(buf[at + 16..at + 20].try_into().expect("4 bytes"));
                on_error(seq, -code);
            }
            at += align(len);
        }
    }
}

fn errno_error(errno: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(errno)
}

/// Adds `elements` atomically.
pub(crate) async fn add_elements(
    sys: &LinuxSystem,
    elements: &[HostPortElement],
) -> Result<(), SystemError> {
    if elements.is_empty() {
        return Ok(());
    }
    let socket = socket(sys).await?;
    let batch = Batch::elements(elements, true);
    let replies =
        talk(&socket, &batch).map_err(|e| SystemError::io(firewall::table_object(), e))?;
    if let Some(&(seq, errno)) = replies.errors.first() {
        let element = batch
            .seqs
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, i)| elements[*i]);
        return Err(match (errno, element) {
            (libc::EEXIST, Some(e)) => SystemError::AlreadyExists { object: e.object() },
            (libc::ENOENT, Some(e)) => SystemError::NotFound {
                object: format!("{} (map {})", firewall::table_object(), e.map.name()),
            },
            (errno, Some(e)) => SystemError::io(e.object(), errno_error(errno)),
            (errno, None) => SystemError::io(firewall::table_object(), errno_error(errno)),
        });
    }
    if !replies.acked {
        return Err(SystemError::other(
            firewall::table_object(),
            "the kernel did not acknowledge the element batch",
        ));
    }
    Ok(())
}

/// Deletes `elements`; missing ones are skipped (a batch with a missing element is refused
/// whole, so it is sent again without the elements the kernel reported missing).
pub(crate) async fn delete_elements(
    sys: &LinuxSystem,
    elements: &[HostPortElement],
) -> Result<usize, SystemError> {
    let socket = socket(sys).await?;
    let mut pending: Vec<HostPortElement> = elements.to_vec();
    // Two rounds suffice: the first reports every missing element at once.
    for _ in 0..3 {
        if pending.is_empty() {
            return Ok(0);
        }
        let batch = Batch::elements(&pending, false);
        let replies =
            talk(&socket, &batch).map_err(|e| SystemError::io(firewall::table_object(), e))?;
        if replies.errors.is_empty() {
            if !replies.acked {
                return Err(SystemError::other(
                    firewall::table_object(),
                    "the kernel did not acknowledge the element batch",
                ));
            }
            return Ok(pending.len());
        }
        let mut missing = Vec::new();
        for (seq, errno) in &replies.errors {
            let index = batch.seqs.iter().find(|(s, _)| s == seq).map(|(_, i)| *i);
            match (*errno, index) {
                (libc::ENOENT, Some(i)) => missing.push(i),
                (errno, Some(i)) => {
                    return Err(SystemError::io(pending[i].object(), errno_error(errno)));
                }
                (errno, None) => {
                    return Err(SystemError::io(
                        firewall::table_object(),
                        errno_error(errno),
                    ));
                }
            }
        }
        pending = pending
            .iter()
            .enumerate()
            .filter(|(i, _)| !missing.contains(i))
            .map(|(_, e)| *e)
            .collect();
    }
    Err(SystemError::other(
        firewall::table_object(),
        "element deletion did not settle (the table is changing concurrently)",
    ))
}

// ------------------------------------------------------------------ the nft binary

/// The path of a system tool: the usual sbin and bin directories, else the bare name (PATH).
pub(crate) fn tool(name: &str) -> String {
    find_tool(name).map_or_else(|| name.to_string(), |p| p.to_string_lossy().into_owned())
}

/// Where `name` is: the system directories first (a daemon's `PATH` may be minimal), then
/// `PATH`. `None` if it is nowhere.
pub(crate) fn find_tool(name: &str) -> Option<std::path::PathBuf> {
    let system = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(std::path::PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    system
        .into_iter()
        .chain(std::env::split_paths(&path))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The programs the daemon runs, with the Debian package that brings each.
pub(crate) const REQUIRED_TOOLS: [(&str, &str, &str); 2] = [
    ("nft", "nftables", "host ports and the pod firewall table"),
    (
        "conntrack",
        "conntrack",
        "flushing UDP flows of withdrawn host ports",
    ),
];

/// Refuses to go on when a program the daemon needs is missing, naming it and its package,
/// rather than failing later at the first host port with a confusing error.
pub(crate) fn check_required_tools() -> Result<(), SystemError> {
    let missing: Vec<String> = REQUIRED_TOOLS
        .iter()
        .filter(|(name, _, _)| find_tool(name).is_none())
        .map(|(name, package, why)| format!("{name} (Debian package {package}; needed for {why})"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(SystemError::other(
        "required programs",
        format!(
            "not found in /usr/sbin, /sbin, /usr/bin, /bin or PATH: {}",
            missing.join(", ")
        ),
    ))
}

/// Output of a tool run in the node namespace.
pub(crate) struct ToolOutput {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs `program args` with `stdin` in the node namespace (from a thread that entered it,
/// so the child starts there).
pub(crate) async fn run_in_node(
    sys: &LinuxSystem,
    object: String,
    program: String,
    args: Vec<String>,
    stdin: Option<String>,
) -> Result<ToolOutput, SystemError> {
    let thread_object = object.clone();
    thread::run(object, Some(NsFd::Shared(sys.node.clone())), move || {
        let mut child = Command::new(&program)
            .args(&args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SystemError::io(format!("{thread_object}: running {program}"), e))?;
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("piped stdin");
            pipe.write_all(text.as_bytes()).map_err(|e| {
                SystemError::io(format!("{thread_object}: writing to {program}"), e)
            })?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| SystemError::io(format!("{thread_object}: waiting for {program}"), e))?;
        Ok(ToolOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    })
    .await
}

/// Replaces the table with `nft -f -`.
pub(crate) async fn replace_table(
    sys: &LinuxSystem,
    table: &FirewallTable,
) -> Result<(), SystemError> {
    let object = firewall::table_object();
    let out = run_in_node(
        sys,
        object.clone(),
        tool("nft"),
        vec!["-f".into(), "-".into()],
        Some(firewall::render_replace(table)),
    )
    .await?;
    if !out.success {
        return Err(SystemError::other(
            object,
            format!("nft -f - failed: {}", out.stderr),
        ));
    }
    Ok(())
}

/// Lists the table (`None` if it does not exist).
pub(crate) async fn inspect_table(sys: &LinuxSystem) -> Result<Option<ObservedTable>, SystemError> {
    let object = firewall::table_object();
    let list = |json: bool| {
        let mut args = vec![if json { "-j" } else { "-t" }.to_string()];
        args.extend(
            [
                "list",
                "table",
                firewall::TABLE_FAMILY,
                firewall::TABLE_NAME,
            ]
            .map(String::from),
        );
        run_in_node(sys, object.clone(), tool("nft"), args, None)
    };
    let terse = list(false).await?;
    if !terse.success {
        if terse.stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(SystemError::other(
            object,
            format!("nft list table failed: {}", terse.stderr),
        ));
    }
    let json = list(true).await?;
    if !json.success {
        if json.stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(SystemError::other(
            object,
            format!("nft -j list table failed: {}", json.stderr),
        ));
    }
    let value: serde_json::Value = serde_json::from_str(&json.stdout)
        .map_err(|e| SystemError::other(&object, format!("nft -j output is not JSON: {e}")))?;
    let (elements, unparsed) = firewall::parse_elements_json(&value);
    Ok(Some(ObservedTable {
        lines: firewall::listing_lines(&terse.stdout),
        elements,
        unparsed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firewall::HostPortMap;
    use crate::ports::Protocol;

    fn element(map: HostPortMap, host: Option<&str>, pod: &str) -> HostPortElement {
        HostPortElement {
            map,
            host_ip: host.map(|h| h.parse().unwrap()),
            protocol: Protocol::Tcp,
            host_port: 8081,
            pod_ip: pod.parse().unwrap(),
            pod_port: 80,
        }
    }

    #[test]
    fn keys_and_values_match_nft_layout() {
        // As printed by `nft --debug=netlink add element inet t m { 10.0.0.9 . tcp . 8081 :
        // 10.244.0.2 . 80 }`: "0900000a 00000006 0000911f : 0200f40a 00005000" (each
        // 32-bit word shown little-endian).
        let e = element(HostPortMap::V4, Some("10.0.0.9"), "10.244.0.2");
        assert_eq!(key_bytes(&e), [10, 0, 0, 9, 6, 0, 0, 0, 0x1f, 0x91, 0, 0]);
        assert_eq!(value_bytes(&e), [10, 244, 0, 2, 0, 80, 0, 0]);
        let any = element(HostPortMap::AnyV6, None, "fd00::2");
        assert_eq!(key_bytes(&any), [6, 0, 0, 0, 0x1f, 0x91, 0, 0]);
        assert_eq!(value_bytes(&any).len(), 20);
    }

    #[test]
    fn batch_is_framed_and_only_the_last_message_asks_for_an_ack() {
        let elements = [
            element(HostPortMap::V4, Some("10.0.0.9"), "10.244.0.2"),
            element(HostPortMap::AnyV4, None, "10.244.0.2"),
        ];
        let batch = Batch::elements(&elements, true);
        let bytes = batch.bytes();
        let mut at = 0;
        let mut headers = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            let flags = u16::from_ne_bytes(bytes[at + 6..at + 8].try_into().unwrap());
            headers.push((kind, flags));
            assert_eq!(len % 4, 0);
            at += len;
        }
        assert_eq!(at, bytes.len());
        let new = (10 << 8) | 12;
        assert_eq!(
            headers,
            [
                (16, 1),
                (new, 1 | 0x400 | 0x200),
                (new, 1 | 0x400 | 0x200 | 4),
                (17, 1)
            ]
        );
        assert_eq!(batch.seqs, [(2, 0), (3, 1)]);
    }
}
