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
use super::codec::{
    self, EncodeError, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, OpenMessage, Writer,
};
use super::thread::{self, NsFd};
use crate::egress::{self, EgressExempt};
use crate::firewall::{self, FirewallTable, HostPortElement, ObservedTable};
use crate::system::SystemError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFPROTO_INET: u8 = 1;
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

/// A batch of nfnetlink messages, written with the [`codec::Writer`], and the sequence
/// number of each element message.
#[derive(Default)]
pub(crate) struct Batch {
    writer: Writer,
    /// Sequence number of each element message, with its element's index.
    seqs: Vec<(u32, usize)>,
    next_seq: u32,
}

impl Batch {
    /// Starts a message with its `struct nfgenmsg` (family, version `NFNETLINK_V0`, res_id
    /// in big endian); returns it with its sequence number.
    fn message(&mut self, kind: u16, flags: u16, family: u8, res_id: u16) -> (OpenMessage, u32) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let message = self.writer.begin_message(kind, flags, seq);
        let [res_hi, res_lo] = res_id.to_be_bytes();
        self.writer.push(&[family, 0, res_hi, res_lo]);
        (message, seq)
    }

    /// A batch delimiter (`NFNL_MSG_BATCH_BEGIN` or `_END`), a message of its own.
    fn delimiter(&mut self, kind: u16) -> Result<(), EncodeError> {
        let (message, _) = self.message(kind, NLM_F_REQUEST, 0, NFNL_SUBSYS_NFTABLES);
        self.writer.end_message(message)
    }

    /// The message that adds (`add`) or deletes `element`, asking for an acknowledgement if
    /// it is the `last`; returns its sequence number.
    fn element(
        &mut self,
        element: &HostPortElement,
        add: bool,
        last: bool,
    ) -> Result<u32, EncodeError> {
        let (kind, mut flags) = if add {
            (
                NFT_MSG_NEWSETELEM,
                NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL,
            )
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST)
        };
        if last {
            flags |= NLM_F_ACK;
        }
        let (message, seq) =
            self.message((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, NFPROTO_INET, 0);
        let w = &mut self.writer;
        w.attr_str(NFTA_SET_ELEM_LIST_TABLE, firewall::TABLE_NAME)?;
        w.attr_str(NFTA_SET_ELEM_LIST_SET, element.map.name())?;
        let list = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
        let item = w.nest(NFTA_LIST_ELEM);
        let key = w.nest(NFTA_SET_ELEM_KEY);
        w.attr(NFTA_DATA_VALUE, &key_bytes(element))?;
        w.end_nest(key)?;
        if add {
            let data = w.nest(NFTA_SET_ELEM_DATA);
            w.attr(NFTA_DATA_VALUE, &value_bytes(element))?;
            w.end_nest(data)?;
        }
        w.end_nest(item)?;
        w.end_nest(list)?;
        w.end_message(message)?;
        Ok(seq)
    }

    /// The batch that adds (`add`) or deletes `elements`, one message each; only the last
    /// asks for an acknowledgement. Additions are exclusive (`NLM_F_EXCL`).
    pub(crate) fn elements(elements: &[HostPortElement], add: bool) -> Result<Self, EncodeError> {
        let mut b = Batch {
            next_seq: 1,
            ..Batch::default()
        };
        b.delimiter(NFNL_MSG_BATCH_BEGIN)?;
        for (index, element) in elements.iter().enumerate() {
            let seq = b.element(element, add, index + 1 == elements.len())?;
            b.seqs.push((seq, index));
        }
        b.delimiter(NFNL_MSG_BATCH_END)?;
        Ok(b)
    }

    /// The encoded batch.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.writer.bytes()
    }
}

/// [`Batch::elements`], or the error that names the message or attribute that did not fit.
fn encode(elements: &[HostPortElement], add: bool) -> Result<Batch, SystemError> {
    Batch::elements(elements, add)
        .map_err(|e| SystemError::other(firewall::table_object(), e.to_string()))
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
    out.resize(codec::align(out.len()), 0);
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
    let size = libc::c_int::try_from(SOCKET_BUFFER).map_err(std::io::Error::other)?;
    let size_len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(std::io::Error::other)?;
    for option in [force, plain] {
        // SAFETY: setsockopt on our open socket with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                size_len,
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
        // A malformed message ends the walk of this buffer, as nothing after it can be framed.
        for message in codec::messages(&buf).map_while(Result::ok) {
            if let Some(errno) = message.errno() {
                on_error(message.header.seq, errno);
            }
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
    let batch = encode(elements, true)?;
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
        let batch = encode(&pending, false)?;
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

/// Sets the egress exemption sets with `nft -f -` ([`egress::render_sync`]: both flushed
/// and filled in one transaction). Not on any per-pod path: only when peers change.
pub(crate) async fn sync_egress_exempt(
    sys: &LinuxSystem,
    exempt: &EgressExempt,
) -> Result<(), SystemError> {
    let object = format!(
        "sets {} and {} of {}",
        egress::SET_V4,
        egress::SET_V6,
        firewall::table_object()
    );
    let out = run_in_node(
        sys,
        object.clone(),
        tool("nft"),
        vec!["-f".into(), "-".into()],
        Some(egress::render_sync(exempt)),
    )
    .await?;
    if !out.success {
        if out.stderr.contains("No such file or directory") {
            return Err(SystemError::NotFound { object });
        }
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
    let (elements, mut unparsed) = firewall::parse_elements_json(&value);
    let (egress_exempt, odd) = egress::parse_exempt_json(&value);
    unparsed.extend(odd);
    Ok(Some(ObservedTable {
        lines: firewall::listing_lines(&terse.stdout),
        elements,
        unparsed,
        egress_exempt,
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
        let batch = Batch::elements(&elements, true).unwrap();
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

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes of both batches as the hand-written encoder before the codec produced them
    /// (little-endian host), so moving onto [`codec::Writer`] changed nothing on the wire.
    #[test]
    #[cfg(target_endian = "little")]
    fn batches_are_byte_for_byte_what_they_were() {
        let elements = [
            element(HostPortMap::V4, Some("10.0.0.9"), "10.244.0.2"),
            HostPortElement {
                map: HostPortMap::AnyV6,
                host_ip: None,
                protocol: Protocol::Udp,
                host_port: 53,
                pod_ip: "fd00::2".parse().unwrap(),
                pod_port: 5353,
            },
        ];
        assert_eq!(
            hex(Batch::elements(&elements, true).unwrap().bytes()),
            "140000001000010001000000000000000000000a640000000c0a0106020000000000000001000000\
             110001006e65746e735f686f6c6465720000000010000200686f7374706f72745f7634002c000380\
             2800018014000180100001000a000009060000001f910000100002800c0001000af4000200500000\
             700000000c0a0506030000000000000001000000110001006e65746e735f686f6c64657200000000\
             14000200686f7374706f72745f616e795f7636003400038030000180100001800c00010011000000\
             003500001c00028018000100fd00000000000000000000000000000214e900001400000011000100\
             04000000000000000000000a"
        );
        assert_eq!(
            hex(Batch::elements(&elements, false).unwrap().bytes()),
            "140000001000010001000000000000000000000a540000000e0a0100020000000000000001000000\
             110001006e65746e735f686f6c6465720000000010000200686f7374706f72745f7634001c000380\
             1800018014000180100001000a000009060000001f910000540000000e0a05000300000000000000\
             01000000110001006e65746e735f686f6c6465720000000014000200686f7374706f72745f616e79\
             5f7636001800038014000180100001800c0001001100000000350000140000001100010004000000\
             000000000000000a"
        );
    }

    /// The replies the kernel sends to a batch, as `drain` reads them.
    #[test]
    fn error_replies_are_read_by_sequence_number() {
        let mut w = Writer::default();
        for (seq, code) in [(2, -libc::EEXIST), (3, 0)] {
            let m = w.begin_message(codec::NLMSG_ERROR, 0, seq);
            w.push(&code.to_ne_bytes());
            w.end_message(m).unwrap();
        }
        let replies: Vec<(u32, Option<i32>)> = codec::messages(w.bytes())
            .map(|m| m.map(|m| (m.header.seq, m.errno())))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(replies, [(2, Some(libc::EEXIST)), (3, Some(0))]);
    }
}
