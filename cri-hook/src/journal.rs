//! A slog drain that writes to systemd-journald over its native protocol (systemd's
//! "Native Journal Protocol" document), without libsystemd.
//!
//! Each record is one datagram to the journal socket ([`DEFAULT_SOCKET`]) holding
//! `KEY=value\n` assignments: `MESSAGE`, `PRIORITY` (syslog numbers), `SYSLOG_IDENTIFIER`,
//! `CODE_FILE`, `CODE_LINE`, `CODE_MODULE`, then every slog key-value (the record's, then
//! the logger's) under its key in upper case (see [`field_name`]). A value containing a
//! newline uses the binary form: `KEY\n`, its length as a little-endian u64, the bytes,
//! `\n`. A record too large for one datagram (`EMSGSIZE`) is sent, as the protocol asks,
//! as an empty datagram carrying a sealed memfd that holds the same bytes.
//!
//! Sending never fails the caller: a record journald cannot take (journald stopped, its
//! socket gone, a send blocked for over a second) is dropped, as logging must not stop
//! the plugin.

use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use slog::{Drain, KV, Level, Never, OwnedKVList, Record};

/// journald's native protocol socket.
pub const DEFAULT_SOCKET: &str = "/run/systemd/journal/socket";

/// Fields the drain sets itself; a slog key mapping to one of them gets a `KV_` prefix.
const RESERVED: &[&str] = &[
    "MESSAGE",
    "PRIORITY",
    "SYSLOG_IDENTIFIER",
    "CODE_FILE",
    "CODE_LINE",
    "CODE_MODULE",
];

/// journald's limit on field name length.
const MAX_NAME: usize = 64;

/// A drain writing each record as one journal entry.
#[derive(Debug)]
pub struct JournalDrain {
    /// Unbound and unconnected: every record is sent to `path` by name, so a restarted
    /// journald (a new socket at the same path) keeps receiving.
    socket: UnixDatagram,
    /// The journal socket.
    path: PathBuf,
    /// `SYSLOG_IDENTIFIER`.
    identifier: String,
}

impl JournalDrain {
    /// A drain sending to the journal socket at `path` (normally [`DEFAULT_SOCKET`]),
    /// entries tagged `SYSLOG_IDENTIFIER=identifier`. Nothing is sent yet; whether
    /// journald listens shows only when records are sent.
    pub fn new(path: &Path, identifier: &str) -> io::Result<Self> {
        let socket = UnixDatagram::unbound()?;
        // A wedged journald must not hold the logging thread for long.
        socket.set_write_timeout(Some(Duration::from_secs(1)))?;
        Ok(Self {
            socket,
            path: path.to_path_buf(),
            identifier: identifier.to_string(),
        })
    }

    /// The entry for `record`: the datagram payload.
    pub fn encode(&self, record: &Record, values: &OwnedKVList) -> Vec<u8> {
        let mut buf = Vec::with_capacity(256);
        put(&mut buf, "MESSAGE", record.msg().to_string().as_bytes());
        put(
            &mut buf,
            "PRIORITY",
            priority(record.level()).to_string().as_bytes(),
        );
        put(&mut buf, "SYSLOG_IDENTIFIER", self.identifier.as_bytes());
        put(&mut buf, "CODE_FILE", record.file().as_bytes());
        put(&mut buf, "CODE_LINE", record.line().to_string().as_bytes());
        put(&mut buf, "CODE_MODULE", record.module().as_bytes());
        let mut fields = Fields(&mut buf);
        // Serializing into memory cannot fail (Fields never returns an error).
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        buf
    }

    /// Sends one entry: as a datagram, or through a memfd when it is too large for one.
    fn send(&self, entry: &[u8]) -> io::Result<()> {
        match self.socket.send_to(entry, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => self.send_memfd(entry),
            Err(e) => Err(e),
        }
    }

    /// Writes `entry` to a sealed memfd and sends the fd alone (an empty datagram).
    fn send_memfd(&self, entry: &[u8]) -> io::Result<()> {
        let memfd = sealed_memfd(entry)?;
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(Duration::from_secs(1)))?;
        socket.connect(&self.path)?;
        send_fd(&socket, &memfd)
    }
}

impl Drain for JournalDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), Never> {
        // Dropped on failure: see the module documentation.
        let _ = self.send(&self.encode(record, values));
        Ok(())
    }
}

/// The syslog priority of a slog level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Critical => 2,
        Level::Error => 3,
        Level::Warning => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The journal field name of a slog key: ASCII letters upper-cased, digits kept, any
/// other character `_`; leading underscores dropped (those fields are journald's own,
/// trusted ones); `KV_` prefixed when the result is empty, starts with a digit, or is a
/// field the drain sets itself; at most 64 characters.
pub fn field_name(key: &str) -> String {
    let mapped: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches('_');
    let mut name = if trimmed.is_empty()
        || trimmed.starts_with(|c: char| c.is_ascii_digit())
        || RESERVED.contains(&trimmed)
    {
        format!("KV_{trimmed}")
    } else {
        trimmed.to_string()
    };
    name.truncate(MAX_NAME);
    name
}

/// Appends one field, in the binary form when the value holds a newline.
fn put(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
        buf.extend_from_slice(value);
    } else {
        buf.push(b'=');
        buf.extend_from_slice(value);
    }
    buf.push(b'\n');
}

/// Serializes slog key-values as journal fields.
struct Fields<'a>(&'a mut Vec<u8>);

impl slog::Serializer for Fields<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments) -> slog::Result {
        let mut value = String::new();
        let _ = value.write_fmt(*val);
        put(self.0, &field_name(key), value.as_bytes());
        Ok(())
    }
}

/// A memfd holding `data`, sealed against any change (journald wants it sealed).
fn sealed_memfd(data: &[u8]) -> io::Result<OwnedFd> {
    // SAFETY: the name is a NUL-terminated literal; the flags are valid.
    let fd = unsafe {
        libc::memfd_create(
            c"netns-holder-journal".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a descriptor we own, with an int argument.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

/// Sends `fd` as SCM_RIGHTS in an otherwise empty datagram on the connected `socket`.
fn send_fd(socket: &UnixDatagram, fd: &OwnedFd) -> io::Result<()> {
    let raw: libc::c_int = fd.as_raw_fd();
    // u64 elements keep the buffer aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    assert!(space <= std::mem::size_of_val(&control));
    // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` writable, aligned bytes, so the first header
    // exists and its data area holds one c_int; everything lives until sendmsg returns.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), raw);
    }
    // SAFETY: `msg` is fully initialised above (no name, no iovec: an empty datagram).
    if unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::{Logger, info, o, warn};
    use std::io::{Read as _, Seek as _};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A temporary directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "cri-hook-journal-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A journal stand-in: a datagram socket bound in a temp dir.
    fn journal() -> (TempDir, PathBuf, UnixDatagram) {
        let dir = TempDir::new();
        let path = dir.0.join("socket");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, path, socket)
    }

    /// Parses an entry per the protocol, strictly: every byte must belong to a field.
    fn parse(mut data: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut fields = Vec::new();
        while !data.is_empty() {
            let end = data
                .iter()
                .position(|&b| b == b'=' || b == b'\n')
                .expect("a field name ends with = or a newline");
            let name = std::str::from_utf8(&data[..end]).unwrap().to_string();
            assert!(!name.is_empty(), "empty field name");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'),
                "field name {name:?}"
            );
            if data[end] == b'=' {
                let rest = &data[end + 1..];
                let nl = rest.iter().position(|&b| b == b'\n').expect("newline");
                fields.push((name, rest[..nl].to_vec()));
                data = &rest[nl + 1..];
            } else {
                let rest = &data[end + 1..];
                let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
                let value = rest[8..8 + len].to_vec();
                assert_eq!(
                    rest[8 + len],
                    b'\n',
                    "binary field {name} ends with a newline"
                );
                fields.push((name, value));
                data = &rest[8 + len + 1..];
            }
        }
        fields
    }

    fn get<'a>(fields: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
        fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    #[test]
    fn records_arrive_as_native_protocol_datagrams() {
        let (_dir, path, receiver) = journal();
        let drain = JournalDrain::new(&path, "netns-holder-nri").unwrap();
        let log = Logger::root(drain.fuse(), o!("adapter" => "nri"));
        let line = line!() + 1;
        info!(log, "pod wired"; "pod" => "default/web", "host-port" => 8080);
        warn!(log, "two\nlines"; "error" => "first\nsecond", "_private" => 1, "9lives" => "x",
            "message" => "not the message");

        let mut buf = vec![0u8; 65536];
        let n = receiver.recv(&mut buf).unwrap();
        let first = buf[..n].to_vec();
        // Byte for byte: the fixed fields, then the record's pairs, then the logger's.
        let mut expected = format!(
            "MESSAGE=pod wired\nPRIORITY=6\nSYSLOG_IDENTIFIER=netns-holder-nri\n\
             CODE_FILE={}\nCODE_LINE={line}\nCODE_MODULE={}\n",
            file!(),
            module_path!()
        );
        // slog serializes a record's pairs last to first.
        expected.push_str("HOST_PORT=8080\nPOD=default/web\nADAPTER=nri\n");
        assert_eq!(String::from_utf8_lossy(&first), expected);

        let n = receiver.recv(&mut buf).unwrap();
        let fields = parse(&buf[..n]);
        assert_eq!(get(&fields, "MESSAGE"), [b"two\nlines".as_slice()]);
        assert_eq!(get(&fields, "PRIORITY"), [b"4".as_slice()]);
        assert_eq!(get(&fields, "ERROR"), [b"first\nsecond".as_slice()]);
        assert_eq!(get(&fields, "PRIVATE"), [b"1".as_slice()]);
        assert_eq!(get(&fields, "KV_9LIVES"), [b"x".as_slice()]);
        assert_eq!(get(&fields, "KV_MESSAGE"), [b"not the message".as_slice()]);
        assert_eq!(get(&fields, "ADAPTER"), [b"nri".as_slice()]);
        // The binary form, exactly: name, newline, u64 LE length, bytes, newline.
        let mut binary = b"MESSAGE\n".to_vec();
        binary.extend_from_slice(&9u64.to_le_bytes());
        binary.extend_from_slice(b"two\nlines\n");
        assert!(buf[..n].starts_with(&binary), "{:?}", &buf[..n.min(40)]);
    }

    #[test]
    fn an_entry_too_large_for_a_datagram_goes_through_a_sealed_memfd() {
        let (_dir, path, receiver) = journal();
        let drain = JournalDrain::new(&path, "netns-holder-nri").unwrap();
        let log = Logger::root(drain.fuse(), o!());
        // Larger than any default AF_UNIX send buffer (net.core.wmem_max is 208 KiB by
        // default), so the plain send fails with EMSGSIZE.
        let big = "x".repeat(4 << 20);
        info!(log, "big"; "blob" => &big);

        let mut data = [0u8; 16];
        let mut control = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        // SAFETY: all-zero is a valid msghdr; the pointers set below outlive recvmsg.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: a valid socket and msghdr.
        let n = unsafe { libc::recvmsg(receiver.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        assert_eq!(n, 0, "the datagram itself is empty");
        // SAFETY: recvmsg filled the control buffer; the first header is checked below.
        let fd = unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null(), "a control message arrived");
            assert_eq!((*cmsg).cmsg_type, libc::SCM_RIGHTS);
            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>())
        };
        // SAFETY: SCM_RIGHTS gave us this descriptor.
        let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: F_GET_SEALS on a descriptor we own.
        let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
        let all = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
        assert_eq!(seals & all, all, "fully sealed");
        // The sender's writes moved the shared file offset (journald maps the file).
        file.rewind().unwrap();
        let mut entry = Vec::new();
        file.read_to_end(&mut entry).unwrap();
        let fields = parse(&entry);
        assert_eq!(get(&fields, "MESSAGE"), [b"big".as_slice()]);
        assert_eq!(get(&fields, "BLOB"), [big.as_bytes()]);
    }

    #[test]
    fn field_names_follow_journal_rules() {
        assert_eq!(field_name("pod"), "POD");
        assert_eq!(field_name("host-port"), "HOST_PORT");
        assert_eq!(field_name("daemon.socket"), "DAEMON_SOCKET");
        assert_eq!(field_name("__x"), "X");
        assert_eq!(field_name("_"), "KV_");
        assert_eq!(field_name("1st"), "KV_1ST");
        assert_eq!(field_name("priority"), "KV_PRIORITY");
        assert_eq!(field_name("é"), "KV_");
        assert_eq!(field_name(&"a".repeat(100)).len(), 64);
    }

    #[test]
    fn a_missing_journal_drops_records_without_failing() {
        let dir = TempDir::new();
        let drain = JournalDrain::new(&dir.0.join("none"), "netns-holder-nri").unwrap();
        let log = Logger::root(drain.fuse(), o!());
        // Must not panic (a fused drain panics on Err; this one never returns Err).
        info!(log, "nobody listens");
        assert!(
            drain_send_fails(&dir.0.join("none")),
            "sending to a missing socket fails"
        );
    }

    fn drain_send_fails(path: &Path) -> bool {
        JournalDrain::new(path, "x")
            .unwrap()
            .send(b"MESSAGE=x\n")
            .is_err()
    }
}
