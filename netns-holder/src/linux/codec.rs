//! The netlink wire format, without I/O: walking the messages of a receive buffer and the
//! attributes of a message, and writing requests.
//!
//! Three protocols of the Linux layer are spoken by hand rather than through rtnetlink:
//! nftables set elements over `NETLINK_NETFILTER` ([`super::nft`]), socket dumps over
//! `NETLINK_SOCK_DIAG` ([`super::sockets`]) and `RTM_DELLINK` notifications
//! ([`super::events`]). They share this codec, as rtnetlink separates its codec
//! (`netlink-packet-*`) from its I/O: the files of those protocols own their sockets and the
//! meaning of their messages; this module only knows the framing, and has no `unsafe`, no
//! system calls and no panics on any input.
//!
//! # The framing (`linux/netlink.h`)
//!
//! A receive buffer holds messages back to back, each a 16-byte `struct nlmsghdr` (length of
//! header and payload, type, flags, sequence number, port id; native byte order) followed by
//! its payload, the next message starting at the length rounded up to 4 bytes. A payload is
//! a fixed family header (`struct ifinfomsg`, `struct nfgenmsg`, ...) followed by attributes,
//! each a 4-byte `struct nlattr` (length of header and value as 16 bits, type) and its value,
//! again 4-byte aligned. An attribute whose type carries [`NLA_F_NESTED`] holds attributes.
//! `NLMSG_ERROR` carries a negated errno (0: an acknowledgement), `NLMSG_DONE` ends a dump.
//!
//! # Hostile input
//!
//! Lengths come from the kernel, but are checked as if they did not: a declared length
//! shorter than its header, or running past the buffer, ends the walk with a
//! [`DecodeError`]; a missing final padding is not an error. Every offset is computed with
//! checked or saturating arithmetic, and every conversion of a length is checked.

use thiserror::Error;

/// `sizeof(struct nlmsghdr)`.
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `sizeof(struct nlattr)`.
pub(crate) const NLA_HDRLEN: usize = 4;
/// `NLMSG_ERROR`: an error reply, or an acknowledgement (errno 0).
pub(crate) const NLMSG_ERROR: u16 = 2;
/// `NLMSG_DONE`: the end of a dump.
pub(crate) const NLMSG_DONE: u16 = 3;
/// `NLM_F_REQUEST`: a request (every message we send).
pub(crate) const NLM_F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`: asks for an acknowledgement.
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_EXCL`: do not replace what exists.
pub(crate) const NLM_F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`: create what does not exist.
pub(crate) const NLM_F_CREATE: u16 = 0x400;
/// `NLM_F_DUMP` (`NLM_F_ROOT | NLM_F_MATCH`): every object, not one.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
/// `NLA_F_NESTED`: the attribute holds attributes.
pub(crate) const NLA_F_NESTED: u16 = 0x8000;
/// `NLA_F_NET_BYTEORDER`: the attribute's value is big endian.
pub(crate) const NLA_F_NET_BYTEORDER: u16 = 0x4000;
/// `NLA_TYPE_MASK`: the type of an attribute without its flags.
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

/// Netlink's 4-byte alignment (`NLMSG_ALIGN`, `NLA_ALIGN`); saturates instead of wrapping.
pub(crate) const fn align(len: usize) -> usize {
    len.saturating_add(3) & !3
}

/// A buffer that is not a well-formed sequence of messages or attributes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum DecodeError {
    /// Fewer bytes are left than the item's header takes.
    #[error("{item} at byte {at}: {available} bytes left, fewer than its {needed}-byte header")]
    ShortHeader {
        /// "netlink message" or "attribute".
        item: &'static str,
        /// Offset of the item in the walked buffer.
        at: usize,
        /// Size of the header.
        needed: usize,
        /// Bytes left at `at`.
        available: usize,
    },
    /// The declared length does not even cover the header.
    #[error("{item} at byte {at}: length {len} is shorter than its {header}-byte header")]
    LengthBelowHeader {
        /// "netlink message" or "attribute".
        item: &'static str,
        /// Offset of the item in the walked buffer.
        at: usize,
        /// The declared length.
        len: usize,
        /// Size of the header.
        header: usize,
    },
    /// The declared length runs past the end of the buffer.
    #[error("{item} at byte {at}: length {len} runs past the {available} bytes left")]
    Truncated {
        /// "netlink message" or "attribute".
        item: &'static str,
        /// Offset of the item in the walked buffer.
        at: usize,
        /// The declared length.
        len: usize,
        /// Bytes left at `at`.
        available: usize,
    },
}

/// A request that cannot be framed: a length beyond what its header can say.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum EncodeError {
    /// A message longer than its 32-bit `nlmsg_len`.
    #[error("netlink message of type {kind:#x}: {len} bytes do not fit its 32-bit length")]
    MessageTooLong {
        /// The message type.
        kind: u16,
        /// Its length in bytes.
        len: usize,
    },
    /// An attribute (or nest) longer than its 16-bit `nla_len`.
    #[error("netlink attribute of type {kind}: {len} bytes do not fit its 16-bit length")]
    AttributeTooLong {
        /// The attribute type, flags included.
        kind: u16,
        /// Its length in bytes.
        len: usize,
    },
}

// ------------------------------------------------------------------ reading

/// The `N` bytes at `at` in `bytes`, if they are there.
fn array<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    bytes.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The native-endian `u16` at `at`, if `bytes` holds it.
pub(crate) fn u16_ne(bytes: &[u8], at: usize) -> Option<u16> {
    array(bytes, at).map(u16::from_ne_bytes)
}

/// The big-endian (network order) `u16` at `at`, if `bytes` holds it.
pub(crate) fn u16_be(bytes: &[u8], at: usize) -> Option<u16> {
    array(bytes, at).map(u16::from_be_bytes)
}

/// The native-endian `u32` at `at`, if `bytes` holds it.
pub(crate) fn u32_ne(bytes: &[u8], at: usize) -> Option<u32> {
    array(bytes, at).map(u32::from_ne_bytes)
}

/// The native-endian `i32` at `at`, if `bytes` holds it.
pub(crate) fn i32_ne(bytes: &[u8], at: usize) -> Option<i32> {
    array(bytes, at).map(i32::from_ne_bytes)
}

/// The `N` bytes at `at` as an array (addresses), if `bytes` holds them.
pub(crate) fn bytes_at<const N: usize>(bytes: &[u8], at: usize) -> Option<[u8; N]> {
    array(bytes, at)
}

/// `struct nlmsghdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    /// `nlmsg_len`: header and payload, without the final padding.
    pub(crate) len: u32,
    /// `nlmsg_type`.
    pub(crate) kind: u16,
    /// `nlmsg_flags`.
    pub(crate) flags: u16,
    /// `nlmsg_seq`.
    pub(crate) seq: u32,
    /// `nlmsg_pid`: the sender's port id (0: the kernel).
    pub(crate) port: u32,
}

impl Header {
    /// The header at the start of `bytes`, if it holds [`NLMSG_HDRLEN`] bytes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        Some(Self {
            len: u32_ne(bytes, 0)?,
            kind: u16_ne(bytes, 4)?,
            flags: u16_ne(bytes, 6)?,
            seq: u32_ne(bytes, 8)?,
            port: u32_ne(bytes, 12)?,
        })
    }

    /// The 16 bytes of the header.
    pub(crate) fn encode(&self) -> [u8; NLMSG_HDRLEN] {
        let mut out = [0u8; NLMSG_HDRLEN];
        out[0..4].copy_from_slice(&self.len.to_ne_bytes());
        out[4..6].copy_from_slice(&self.kind.to_ne_bytes());
        out[6..8].copy_from_slice(&self.flags.to_ne_bytes());
        out[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        out[12..16].copy_from_slice(&self.port.to_ne_bytes());
        out
    }
}

/// One message of a receive buffer: its header and its payload (the `len` bytes after the
/// header, without padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Message<'a> {
    /// The header.
    pub(crate) header: Header,
    /// The bytes after the header, up to the declared length.
    pub(crate) payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// For an `NLMSG_ERROR` message whose payload holds its error code: the errno it reports
    /// (positive; 0 for an acknowledgement). `None` for every other message.
    pub(crate) fn errno(&self) -> Option<i32> {
        if self.header.kind != NLMSG_ERROR {
            return None;
        }
        // The kernel sends -errno; a hostile i32::MIN stays what it is rather than overflow.
        i32_ne(self.payload, 0).map(i32::wrapping_neg)
    }

    /// Whether this is the `NLMSG_DONE` that ends a dump.
    pub(crate) fn is_done(&self) -> bool {
        self.header.kind == NLMSG_DONE
    }

    /// The attributes after a family header of `fixed` bytes (aligned up), or `None` if the
    /// payload is shorter than that header.
    pub(crate) fn attributes_after(&self, fixed: usize) -> Option<Attributes<'a>> {
        if self.payload.len() < fixed {
            return None;
        }
        // Between the header and its alignment there is no room for an attribute.
        Some(attributes(
            self.payload.get(align(fixed)..).unwrap_or_default(),
        ))
    }
}

/// Checks the item of `header` bytes at the start of `rest` (`at` bytes into the buffer)
/// whose declared length `len` reads: it must cover the header and stay inside `rest`.
fn checked_len(
    item: &'static str,
    rest: &[u8],
    at: usize,
    header: usize,
    len: Option<usize>,
) -> Result<usize, DecodeError> {
    if rest.len() < header {
        return Err(DecodeError::ShortHeader {
            item,
            at,
            needed: header,
            available: rest.len(),
        });
    }
    // Only unreadable if usize is narrower than the length field: treat as too long.
    let len = len.unwrap_or(usize::MAX);
    if len < header {
        return Err(DecodeError::LengthBelowHeader {
            item,
            at,
            len,
            header,
        });
    }
    if len > rest.len() {
        return Err(DecodeError::Truncated {
            item,
            at,
            len,
            available: rest.len(),
        });
    }
    Ok(len)
}

/// The messages of a receive buffer, in order (see [`Messages`]).
pub(crate) fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { buf, at: 0 }
}

/// Iterator over the messages of a buffer. A malformed message yields one [`DecodeError`]
/// and ends the walk (nothing after it can be framed); the end of the buffer ends it
/// quietly, also where the last message's padding is missing.
#[derive(Debug, Clone)]
pub(crate) struct Messages<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.at..).filter(|r| !r.is_empty())?;
        let at = self.at;
        let header = Header::decode(rest);
        let len = header.and_then(|h| usize::try_from(h.len).ok());
        match checked_len("netlink message", rest, at, NLMSG_HDRLEN, len) {
            Ok(len) => {
                self.at = at.saturating_add(align(len)).min(self.buf.len());
                Some(Ok(Message {
                    header: header?,
                    payload: rest.get(NLMSG_HDRLEN..len)?,
                }))
            }
            Err(e) => {
                self.at = self.buf.len();
                Some(Err(e))
            }
        }
    }
}

/// One attribute: its type (with flags) and its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attr<'a> {
    /// `nla_type`, flags included.
    pub(crate) raw_kind: u16,
    /// The value (`nla_len` minus the header, without padding).
    pub(crate) value: &'a [u8],
}

impl<'a> Attr<'a> {
    /// The type without the [`NLA_F_NESTED`] and [`NLA_F_NET_BYTEORDER`] flags.
    pub(crate) fn kind(&self) -> u16 {
        self.raw_kind & NLA_TYPE_MASK
    }

    /// The value as a C string: the bytes before the first NUL (all of them without one),
    /// if they are UTF-8.
    pub(crate) fn c_str(&self) -> Option<&'a str> {
        let bytes = self.value.split(|&b| b == 0).next().unwrap_or_default();
        std::str::from_utf8(bytes).ok()
    }
}

/// Nested attributes.
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "no reply read today is nested; kept so the codec walks what the protocols send"
    )
)]
impl<'a> Attr<'a> {
    /// Whether the sender marked the attribute as holding attributes.
    pub(crate) fn is_nested(&self) -> bool {
        self.raw_kind & NLA_F_NESTED != 0
    }

    /// The attributes inside this one (whether or not it is marked nested: older
    /// families do not mark their nests).
    pub(crate) fn nested(&self) -> Attributes<'a> {
        attributes(self.value)
    }
}

/// The attributes of `buf`, in order (see [`Attributes`]).
pub(crate) fn attributes(buf: &[u8]) -> Attributes<'_> {
    Attributes { buf, at: 0 }
}

/// Iterator over attributes; like [`Messages`], a malformed one yields one
/// [`DecodeError`] and ends the walk.
#[derive(Debug, Clone)]
pub(crate) struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<Attr<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.at..).filter(|r| !r.is_empty())?;
        let at = self.at;
        let len = u16_ne(rest, 0).map(usize::from);
        match checked_len("attribute", rest, at, NLA_HDRLEN, len) {
            Ok(len) => {
                self.at = at.saturating_add(align(len)).min(self.buf.len());
                Some(Ok(Attr {
                    raw_kind: u16_ne(rest, 2)?,
                    value: rest.get(NLA_HDRLEN..len)?,
                }))
            }
            Err(e) => {
                self.at = self.buf.len();
                Some(Err(e))
            }
        }
    }
}

// ------------------------------------------------------------------ writing

/// A message being written by a [`Writer`]; [`Writer::end_message`] fills in its length.
#[derive(Debug)]
#[must_use = "a message's length is only written by Writer::end_message"]
pub(crate) struct OpenMessage {
    start: usize,
    kind: u16,
}

/// A nest being written by a [`Writer`]; [`Writer::end_nest`] fills in its length.
#[derive(Debug)]
#[must_use = "a nest's length is only written by Writer::end_nest"]
pub(crate) struct OpenNest {
    start: usize,
    kind: u16,
}

/// Writes netlink messages back to back into one buffer (a batch, or a single request).
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// Starts a message of `kind` with `flags` and sequence number `seq`, addressed to the
    /// kernel (port id 0); its length is written by [`Writer::end_message`].
    pub(crate) fn begin_message(&mut self, kind: u16, flags: u16, seq: u32) -> OpenMessage {
        let start = self.buf.len();
        let header = Header {
            len: 0,
            kind,
            flags,
            seq,
            port: 0,
        };
        self.buf.extend_from_slice(&header.encode());
        OpenMessage { start, kind }
    }

    /// Appends `bytes` (a family header) and pads them to the alignment.
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.pad();
    }

    /// Writes the length of `message`: everything written since it began.
    pub(crate) fn end_message(&mut self, message: OpenMessage) -> Result<(), EncodeError> {
        let len = self.buf.len().saturating_sub(message.start);
        let too_long = EncodeError::MessageTooLong {
            kind: message.kind,
            len,
        };
        let len = u32::try_from(len).map_err(|_| too_long)?;
        self.patch(message.start, &len.to_ne_bytes());
        Ok(())
    }

    /// Appends the attribute `kind` with `value`, padded.
    pub(crate) fn attr(&mut self, kind: u16, value: &[u8]) -> Result<(), EncodeError> {
        let len = NLA_HDRLEN.saturating_add(value.len());
        let len = u16::try_from(len).map_err(|_| EncodeError::AttributeTooLong { kind, len })?;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.pad();
        Ok(())
    }

    /// Appends the attribute `kind` with `s` and a terminating NUL (`NLA_NUL_STRING`).
    pub(crate) fn attr_str(&mut self, kind: u16, s: &str) -> Result<(), EncodeError> {
        let mut value = Vec::with_capacity(s.len().saturating_add(1));
        value.extend_from_slice(s.as_bytes());
        value.push(0);
        self.attr(kind, &value)
    }

    /// Starts a nest of type `kind` (marked [`NLA_F_NESTED`]); the attributes written until
    /// [`Writer::end_nest`] are inside it.
    pub(crate) fn nest(&mut self, kind: u16) -> OpenNest {
        let start = self.buf.len();
        let kind = kind | NLA_F_NESTED;
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        OpenNest { start, kind }
    }

    /// Writes the length of `nest`: everything written since it began.
    pub(crate) fn end_nest(&mut self, nest: OpenNest) -> Result<(), EncodeError> {
        let len = self.buf.len().saturating_sub(nest.start);
        let too_long = EncodeError::AttributeTooLong {
            kind: nest.kind,
            len,
        };
        let len = u16::try_from(len).map_err(|_| too_long)?;
        self.patch(nest.start, &len.to_ne_bytes());
        Ok(())
    }

    /// The bytes written so far.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The bytes written, taken.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    /// Zero bytes up to the alignment.
    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// Overwrites the bytes at `at` (a length field written earlier by this writer).
    fn patch(&mut self, at: usize, bytes: &[u8]) {
        if let Some(field) = at
            .checked_add(bytes.len())
            .and_then(|end| self.buf.get_mut(at..end))
        {
            field.copy_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A message of `kind` with `payload`, its length as given (`None`: the true one), padded.
    fn message(kind: u16, seq: u32, payload: &[u8], len: Option<u32>) -> Vec<u8> {
        let true_len = u32::try_from(NLMSG_HDRLEN + payload.len()).unwrap();
        let header = Header {
            len: len.unwrap_or(true_len),
            kind,
            flags: 0,
            seq,
            port: 0,
        };
        let mut out = header.encode().to_vec();
        out.extend_from_slice(payload);
        out.resize(align(out.len()), 0);
        out
    }

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.attr(kind, value).unwrap();
        w.into_bytes()
    }

    /// Type, sequence number and payload of each message walked, and the error that ended the
    /// walk, if any.
    type Walked = (Vec<(u16, u32, Vec<u8>)>, Option<DecodeError>);

    fn collect_messages(buf: &[u8]) -> Walked {
        let mut ok = Vec::new();
        for m in messages(buf) {
            match m {
                Ok(m) => ok.push((m.header.kind, m.header.seq, m.payload.to_vec())),
                Err(e) => return (ok, Some(e)),
            }
        }
        (ok, None)
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            len: 0x1234_5678,
            kind: 20,
            flags: NLM_F_REQUEST | NLM_F_DUMP,
            seq: 7,
            port: 99,
        };
        assert_eq!(Header::decode(&h.encode()), Some(h));
        assert_eq!(Header::decode(&h.encode()[..15]), None);
    }

    #[test]
    fn well_formed_messages_are_walked_in_order() {
        let mut buf = message(16, 1, &[1, 2, 3], None); // unaligned length, padded
        buf.extend(message(NLMSG_DONE, 2, &[0; 4], None));
        let (ok, err) = collect_messages(&buf);
        assert_eq!(err, None);
        assert_eq!(ok, [(16, 1, vec![1, 2, 3]), (NLMSG_DONE, 2, vec![0; 4])]);
        assert!(messages(&[]).next().is_none());
    }

    #[test]
    fn the_last_message_may_lack_its_padding() {
        let mut buf = message(16, 1, &[9], None);
        buf.truncate(NLMSG_HDRLEN + 1);
        let (ok, err) = collect_messages(&buf);
        assert_eq!((ok, err), (vec![(16, 1, vec![9])], None));
    }

    #[test]
    fn truncated_and_hostile_lengths_end_the_walk_with_an_error() {
        let whole = message(16, 1, &[0; 8], None);
        let (ok, err) = collect_messages(&whole[..whole.len() - 1]);
        assert!(ok.is_empty());
        assert_eq!(
            err,
            Some(DecodeError::Truncated {
                item: "netlink message",
                at: 0,
                len: 24,
                available: 23
            })
        );
        // A good message, then 10 stray bytes: the good one is kept.
        let mut buf = whole.clone();
        buf.extend_from_slice(&[0xff; 10]);
        let (ok, err) = collect_messages(&buf);
        assert_eq!(ok.len(), 1);
        assert_eq!(
            err,
            Some(DecodeError::ShortHeader {
                item: "netlink message",
                at: 24,
                needed: 16,
                available: 10
            })
        );
        // A length of 0 would loop forever without the check.
        let (ok, err) = collect_messages(&message(16, 1, &[], Some(0)));
        assert!(ok.is_empty());
        assert!(matches!(
            err,
            Some(DecodeError::LengthBelowHeader { len: 0, .. })
        ));
        let (_, err) = collect_messages(&message(16, 1, &[], Some(u32::MAX)));
        assert!(matches!(err, Some(DecodeError::Truncated { .. })));
        assert!(err.unwrap().to_string().contains("runs past"));
    }

    #[test]
    fn a_buffer_at_an_odd_address_is_read_the_same() {
        let buf = message(NLMSG_ERROR, 5, &(-libc::EEXIST).to_ne_bytes(), None);
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&buf);
        let m = messages(&shifted[1..]).next().unwrap().unwrap();
        assert_eq!((m.header.seq, m.errno()), (5, Some(libc::EEXIST)));
    }

    #[test]
    fn error_and_done_messages() {
        let ack = message(NLMSG_ERROR, 1, &0i32.to_ne_bytes(), None);
        let m = messages(&ack).next().unwrap().unwrap();
        assert_eq!(m.errno(), Some(0));
        assert!(!m.is_done());
        let hostile = message(NLMSG_ERROR, 1, &i32::MIN.to_ne_bytes(), None);
        assert_eq!(
            messages(&hostile).next().unwrap().unwrap().errno(),
            Some(i32::MIN)
        );
        let short = message(NLMSG_ERROR, 1, &[0, 0], None);
        assert_eq!(messages(&short).next().unwrap().unwrap().errno(), None);
        let other = message(16, 1, &0i32.to_ne_bytes(), None);
        assert_eq!(messages(&other).next().unwrap().unwrap().errno(), None);
        let done = message(NLMSG_DONE, 1, &[], None);
        assert!(messages(&done).next().unwrap().unwrap().is_done());
    }

    #[test]
    fn attributes_and_nests() {
        let mut w = Writer::default();
        w.attr_str(3, "veth0").unwrap();
        let outer = w.nest(7);
        w.attr(1, &[0xaa; 5]).unwrap();
        let inner = w.nest(2);
        w.attr(1, &42u32.to_ne_bytes()).unwrap();
        w.end_nest(inner).unwrap();
        w.end_nest(outer).unwrap();
        let bytes = w.into_bytes();
        assert_eq!(bytes.len() % 4, 0);
        let attrs: Vec<Attr<'_>> = attributes(&bytes).map(Result::unwrap).collect();
        assert_eq!(attrs.len(), 2);
        assert_eq!((attrs[0].kind(), attrs[0].c_str()), (3, Some("veth0")));
        assert!(!attrs[0].is_nested());
        assert_eq!((attrs[1].kind(), attrs[1].raw_kind), (7, 7 | NLA_F_NESTED));
        assert!(attrs[1].is_nested());
        let inside: Vec<Attr<'_>> = attrs[1].nested().map(Result::unwrap).collect();
        assert_eq!(inside[0].value, [0xaa; 5]);
        let deepest: Vec<Attr<'_>> = inside[1].nested().map(Result::unwrap).collect();
        assert_eq!(u32_ne(deepest[0].value, 0), Some(42));
    }

    #[test]
    fn malformed_attributes_end_the_walk_with_an_error() {
        let mut buf = attr(1, &[1, 2, 3, 4]);
        buf.extend(attr(2, &[5]));
        // The second claims 200 bytes.
        buf[8..10].copy_from_slice(&200u16.to_ne_bytes());
        let walked: Vec<_> = attributes(&buf).collect();
        assert_eq!(walked.len(), 2);
        assert!(walked[0].is_ok());
        assert_eq!(
            walked[1],
            Err(DecodeError::Truncated {
                item: "attribute",
                at: 8,
                len: 200,
                available: 8
            })
        );
        let mut zero = attr(1, &[]);
        zero[0..2].copy_from_slice(&0u16.to_ne_bytes());
        assert!(matches!(
            attributes(&zero).next(),
            Some(Err(DecodeError::LengthBelowHeader { len: 0, .. }))
        ));
        assert!(matches!(
            attributes(&[1, 0]).next(),
            Some(Err(DecodeError::ShortHeader { available: 2, .. }))
        ));
        // A name without NUL, and one that is not UTF-8.
        let name = attr(3, b"eth0");
        let a = attributes(&name).next().unwrap().unwrap();
        assert_eq!(a.c_str(), Some("eth0"));
        let bad = attr(3, &[0xff, 0xfe, 0]);
        assert_eq!(attributes(&bad).next().unwrap().unwrap().c_str(), None);
    }

    #[test]
    fn attributes_after_a_family_header() {
        let mut payload = vec![0u8; 16];
        payload.extend(attr(3, b"lo\0"));
        let buf = message(16, 1, &payload, None);
        let m = messages(&buf).next().unwrap().unwrap();
        let names: Vec<_> = m
            .attributes_after(16)
            .unwrap()
            .map(|a| a.unwrap().c_str())
            .collect();
        assert_eq!(names, [Some("lo")]);
        let short = message(16, 1, &[0; 8], None);
        let m = messages(&short).next().unwrap().unwrap();
        assert!(m.attributes_after(16).is_none());
        // A family header of an unaligned size is followed by aligned attributes.
        let exact = message(16, 1, &[0; 13], None);
        let m = messages(&exact).next().unwrap().unwrap();
        assert_eq!(m.attributes_after(13).unwrap().count(), 0);
    }

    #[test]
    fn writer_frames_messages_and_refuses_lengths_that_do_not_fit() {
        let mut w = Writer::default();
        let m = w.begin_message(20, NLM_F_REQUEST, 9);
        w.push(&[1, 2, 3]);
        w.attr(1, &[7]).unwrap();
        w.end_message(m).unwrap();
        let bytes = w.bytes().to_vec();
        let (ok, err) = collect_messages(&bytes);
        assert_eq!(err, None);
        let mut payload = vec![1, 2, 3, 0];
        payload.extend(attr(1, &[7]));
        assert_eq!(ok, [(20, 9, payload)]);

        let big = vec![0u8; usize::from(u16::MAX)];
        assert_eq!(
            w.attr(4, &big),
            Err(EncodeError::AttributeTooLong {
                kind: 4,
                len: 65539
            })
        );
        let nest = w.nest(5);
        w.push(&big);
        let err = w.end_nest(nest).unwrap_err();
        assert_eq!(
            err.to_string(),
            "netlink attribute of type 32773: 65540 bytes do not fit its 16-bit length"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No input makes the walkers panic or loop, and every walk makes progress.
        #[test]
        fn walking_arbitrary_bytes_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut count = 0;
            for m in messages(&buf) {
                count += 1;
                prop_assert!(count <= buf.len() / NLMSG_HDRLEN + 1);
                let Ok(m) = m else { continue };
                let _ = (m.errno(), m.is_done());
                for fixed in [0, 4, 16] {
                    for a in m.attributes_after(fixed).into_iter().flatten().flatten() {
                        let _ = (a.kind(), a.is_nested(), a.c_str());
                        for inner in a.nested().flatten() {
                            let _ = inner.nested().count();
                        }
                    }
                }
            }
            prop_assert!(attributes(&buf).count() <= buf.len() / NLA_HDRLEN + 1);
        }

        /// Whatever is written reads back the same.
        #[test]
        fn written_messages_read_back(
            items in proptest::collection::vec(
                (any::<u16>(), any::<u32>(), proptest::collection::vec(
                    (0u16..0x4000, proptest::collection::vec(any::<u8>(), 0..40)), 0..5)),
                0..5),
        ) {
            let mut w = Writer::default();
            for (kind, seq, attrs) in &items {
                let m = w.begin_message(*kind, NLM_F_REQUEST, *seq);
                for (a, value) in attrs {
                    w.attr(*a, value).unwrap();
                }
                w.end_message(m).unwrap();
            }
            let bytes = w.into_bytes();
            let read: Vec<Message<'_>> = messages(&bytes).map(Result::unwrap).collect();
            prop_assert_eq!(read.len(), items.len());
            for (m, (kind, seq, attrs)) in read.iter().zip(&items) {
                prop_assert_eq!((m.header.kind, m.header.seq), (*kind, *seq));
                let got: Vec<(u16, Vec<u8>)> = attributes(m.payload)
                    .map(|a| a.map(|a| (a.kind(), a.value.to_vec())))
                    .collect::<Result<_, _>>()
                    .unwrap();
                prop_assert_eq!(&got, attrs);
            }
        }
    }
}
