//! Names: validated pod names, the deterministic pod id derived from them, and the kernel
//! interface names (host veth end, temporary pod end) derived from the id.
//!
//! Everything here is pure. A [`PodName`] is what API callers choose; it becomes a file name
//! in `netns_dir`, so it is validated like one. A [`PodId`] is the first 16 hex characters of
//! the SHA-256 of the name: short enough to derive interface names (15-byte kernel limit)
//! and to tag pause processes, stable across restarts without any stored counter.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// Longest pod name accepted (the DNS subdomain limit Kubernetes uses for names).
pub const MAX_POD_NAME_LEN: usize = 253;
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
pub const MAX_IFNAME_LEN: usize = 15;
/// Prefix of every host-side veth this daemon creates.
pub const HOST_VETH_PREFIX: &str = "nh";
/// Prefix of the pod-side veth end while it still has its temporary name.
pub const TEMP_PEER_PREFIX: &str = "nhp";
/// Name of the pod's interface inside its namespace.
pub const POD_IFNAME: &str = "eth0";
/// Number of hex characters of the pod id used in interface names.
const IFNAME_ID_CHARS: usize = 12;

/// Why a pod or interface name was rejected. Every variant names the offending value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The pod name is the empty string.
    #[error("pod name is empty")]
    EmptyPodName,
    /// The pod name is longer than [`MAX_POD_NAME_LEN`] bytes.
    #[error(
        "pod name {} is {len} bytes long; at most {MAX_POD_NAME_LEN} are allowed",
        quoted(name)
    )]
    PodNameTooLong {
        /// The rejected name (possibly long).
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// The pod name contains a character that cannot appear in it.
    #[error("pod name {} contains {what}, which is not allowed", quoted(name))]
    PodNameBadChar {
        /// The rejected name.
        name: String,
        /// A description of the offending character, e.g. `'/'`.
        what: String,
    },
    /// The pod name starts with `.` (hidden file, `.` and `..`).
    #[error("pod name {} starts with '.', which is not allowed", quoted(name))]
    PodNameLeadingDot {
        /// The rejected name.
        name: String,
    },
    /// The pod name contains `..`.
    #[error("pod name {} contains \"..\", which is not allowed", quoted(name))]
    PodNameDotDot {
        /// The rejected name.
        name: String,
    },
    /// A pod id is not 16 lowercase hex characters.
    #[error("pod id {} is not 16 lowercase hex characters", quoted(id))]
    BadPodId {
        /// The rejected id.
        id: String,
    },
    /// An interface name is not acceptable to the kernel.
    #[error("interface name {} is invalid: {reason}", quoted(name))]
    BadIfName {
        /// The rejected interface name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
}

/// A validated pod name: 1..=253 bytes, printable, no `/`, no `..`, not starting with `.`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodName(String);

/// How much of an over-long name an error message shows.
const ERROR_PREVIEW_CHARS: usize = 64;

/// `text` in double quotes, escaped for an error message or a log line so that an operator
/// sees exactly what was sent: like `{:?}` (`\n`, `\u{1b}`, `\"`, ...), and in addition every
/// invisible or direction-changing character (see [`PodName::new`]) as `\u{...}`, also those
/// that `{:?}` leaves raw (e.g. U+3164, a Hangul filler). A text longer than
/// [`QUOTED_MAX_CHARS`] characters shows its start followed by `...` after the quotes.
pub fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(4 * QUOTED_MAX_CHARS) + 2);
    out.push('"');
    let mut chars = text.chars();
    for c in chars.by_ref().take(QUOTED_MAX_CHARS) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => push_escaped(&mut out, c),
        }
    }
    out.push('"');
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// `text` (e.g. a library's error message that may echo input) with the characters an
/// operator could not see escaped as [`quoted`] does (controls, invisible and
/// direction-changing characters), without quotes and without shortening it; quotes and
/// backslashes stay as they are.
pub fn escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

/// Appends `c`, escaped if it is a control, invisible or direction-changing character (or
/// anything else `{:?}` escapes); quotes and backslashes are appended as they are.
fn push_escaped(out: &mut String, c: char) {
    match c {
        '"' | '\'' | '\\' => out.push(c),
        c if is_invisible(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        c => out.extend(c.escape_debug()),
    }
}

/// At most this many characters of a text are shown by [`quoted`].
pub const QUOTED_MAX_CHARS: usize = 256;

/// Unicode format characters that render as nothing or reorder text (zero-width spaces and
/// joiners, bidirectional overrides and isolates, the byte-order mark, tags...): a name made
/// with them looks like another name to whoever reads it.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFFB}'
        | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

impl PodName {
    /// Validates `name` as a pod name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::EmptyPodName);
        }
        if name.len() > MAX_POD_NAME_LEN {
            let len = name.len();
            // Only the start: echoing megabytes back would itself break the caller (gRPC
            // carries the message in a header) and flood logs.
            let name: String = name.chars().take(ERROR_PREVIEW_CHARS).collect::<String>() + "...";
            return Err(NameError::PodNameTooLong { name, len });
        }
        if let Some(c) = name
            .chars()
            .find(|c| *c == '/' || c.is_control() || c.is_whitespace() || is_invisible(*c))
        {
            let what = match c {
                '/' => "'/'".to_string(),
                c if c.is_control() => format!("the control character U+{:04X}", c as u32),
                c if c.is_whitespace() => format!("the whitespace character U+{:04X}", c as u32),
                c => format!(
                    "the invisible or direction-changing character U+{:04X}",
                    c as u32
                ),
            };
            return Err(NameError::PodNameBadChar { name, what });
        }
        if name.starts_with('.') {
            return Err(NameError::PodNameLeadingDot { name });
        }
        if name.contains("..") {
            return Err(NameError::PodNameDotDot { name });
        }
        Ok(Self(name))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The deterministic id of this pod.
    pub fn id(&self) -> PodId {
        PodId::of(self)
    }
}

impl TryFrom<String> for PodName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<PodName> for String {
    fn from(value: PodName) -> Self {
        value.0
    }
}

impl fmt::Display for PodName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a pod: the first 16 lowercase hex characters of SHA-256 of its name.
///
/// Held inline (16 ASCII bytes, no heap): admission compares a new pod's id with every
/// record's, and with the ids behind pointers that pass cost a cache miss per pod, which
/// showed as the daemon's own share of the growth of create times at thousands of pods.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PodId([u8; PodId::LEN]);

impl PodId {
    /// Number of hex characters in a pod id.
    pub const LEN: usize = 16;

    /// Derives the id of `name`.
    pub fn of(name: &PodName) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(name.as_str().as_bytes());
        let mut id = [0u8; Self::LEN];
        for (pair, byte) in id.chunks_exact_mut(2).zip(digest.iter()) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        Self(id)
    }

    /// Parses an id as printed by [`fmt::Display`] (e.g. from a pause process's argv).
    pub fn parse(id: &str) -> Result<Self, NameError> {
        match <[u8; Self::LEN]>::try_from(id.as_bytes()) {
            Ok(bytes)
                if bytes
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) =>
            {
                Ok(Self(bytes))
            }
            _ => Err(NameError::BadPodId { id: id.to_string() }),
        }
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever stored (`of`, `parse`).
        std::str::from_utf8(&self.0).expect("a pod id is ASCII hex")
    }

    /// The host-side veth name: `nh` + the first 12 hex characters of the id (14 bytes).
    pub fn host_veth_name(&self) -> IfName {
        IfName(format!(
            "{HOST_VETH_PREFIX}{}",
            &self.as_str()[..IFNAME_ID_CHARS]
        ))
    }

    /// The temporary name earlier versions gave the pod-side veth end inside the pod's
    /// namespace before renaming it to [`POD_IFNAME`] (now it is created under its final
    /// name): `nhp` + the first 12 hex characters of the id (15 bytes). Repair still deletes
    /// a leftover of that name.
    pub fn temp_peer_name(&self) -> IfName {
        IfName(format!(
            "{TEMP_PEER_PREFIX}{}",
            &self.as_str()[..IFNAME_ID_CHARS]
        ))
    }

    /// The `argv[0]` of the pause process holding this pod: `netns-holder-pause:<id>`.
    pub fn pause_argv0(&self) -> String {
        format!("{PAUSE_ARGV0_PREFIX}{}", self.as_str())
    }
}

impl fmt::Debug for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PodId").field(&self.as_str()).finish()
    }
}

/// Prefix of `argv[0]` of every pause process this daemon starts; the pod id follows.
pub const PAUSE_ARGV0_PREFIX: &str = "netns-holder-pause:";

/// Extracts the pod id from a pause process's `argv[0]`, if it is one of ours.
pub fn pod_id_from_pause_argv0(argv0: &str) -> Option<PodId> {
    argv0
        .strip_prefix(PAUSE_ARGV0_PREFIX)
        .and_then(|id| PodId::parse(id).ok())
}

/// Prefix of a retired veth end: a removed pod's host veth (and, in a namespace that is not
/// ours, its pod end) is renamed to `nhx` + 12 random hex characters (15 bytes, never a host
/// veth or pod interface name, so no new pod's name collides with it and `check` does not
/// look at it) and left to be deleted with the pod's namespace or the daemon's next
/// deletion batch.
pub const RETIRED_VETH_PREFIX: &str = "nhx";

/// The device group (`IFLA_GROUP`) a daemon puts the node-side links it is deleting in
/// (its value spells "nhdl"): one request deletes every link of the group, with one wait
/// for the kernel's unregister. Only links this daemon is deleting are ever in it.
pub const DELETE_LINK_GROUP: u32 = 0x6e68_646c;

/// Whether `name` has the exact shape of a host veth this daemon names from a pod id
/// (`nh` + 12 lowercase hex characters). The bridge `nh0` does not match, nor does a pooled
/// pair's host end ([`is_pooled_veth_name`]).
pub fn is_host_veth_name(name: &str) -> bool {
    is_prefix_and_id_hex(name, HOST_VETH_PREFIX)
}

/// Prefix of the host end of a veth pair made ahead by the namespace pool: `nhv` + 12 hex
/// characters (15 bytes). A pod that adopted the pair keeps the name for its host veth
/// ([`crate::record::PodRecord::host_veth`]); it is never a name made from a pod id.
pub const POOLED_VETH_PREFIX: &str = "nhv";

/// Whether `name` has the shape of a pooled pair's host end ([`POOLED_VETH_PREFIX`] + 12
/// lowercase hex characters), adopted by a pod or not.
pub fn is_pooled_veth_name(name: &str) -> bool {
    is_prefix_and_id_hex(name, POOLED_VETH_PREFIX)
}

/// `prefix` followed by exactly [`IFNAME_ID_CHARS`] lowercase hex characters: the shape of
/// every link name this daemon makes from an id or a counter.
pub fn is_prefix_and_id_hex(name: &str, prefix: &str) -> bool {
    name.len() == prefix.len() + IFNAME_ID_CHARS
        && name.starts_with(prefix)
        && name[prefix.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl fmt::Display for PodId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for PodId {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<PodId> for String {
    fn from(value: PodId) -> Self {
        value.as_str().to_string()
    }
}

/// A validated network interface name: 1..=15 bytes, no `/`, no whitespace or control
/// characters, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);

impl IfName {
    /// Validates `name` as an interface name.
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("empty")
        } else if name.len() > MAX_IFNAME_LEN {
            Some("longer than 15 bytes")
        } else if name.contains('/') {
            Some("contains '/'")
        } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("contains whitespace or a control character")
        } else if name == "." || name == ".." {
            Some("is '.' or '..'")
        } else if name.contains(':') {
            Some("contains ':'")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(NameError::BadIfName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The pod's interface name inside its namespace, [`POD_IFNAME`].
    pub fn pod_interface() -> Self {
        Self(POD_IFNAME.to_string())
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IfName {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<IfName> for String {
    fn from(value: IfName) -> Self {
        value.0
    }
}

impl fmt::Display for IfName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_refused_and_long_names_are_not_echoed_whole() {
        for bad in [
            "hx\u{202E}gnp.exe",
            "hx\u{200B}base",
            "a\u{FEFF}b",
            "a\u{2066}b",
        ] {
            let err = PodName::new(bad).unwrap_err().to_string();
            assert!(
                err.contains("invisible or direction-changing"),
                "{bad:?}: {err}"
            );
        }
        let err = PodName::new("x".repeat(1 << 20)).unwrap_err().to_string();
        assert!(err.len() < 300, "error is {} bytes", err.len());
        assert!(err.contains("1048576 bytes long"), "{err}");
        assert!(PodName::new("caf\u{e9}-web").is_ok());
    }

    #[test]
    fn quoted_escapes_what_an_operator_could_not_see() {
        assert_eq!(quoted("web-1"), "\"web-1\"");
        assert_eq!(quoted("it's \"x\""), r#""it's \"x\"""#);
        assert_eq!(quoted("a\nb\u{1b}[2J"), r#""a\nb\u{1b}[2J""#);
        assert_eq!(quoted("hx\u{202e}gnp.exe"), r#""hx\u{202e}gnp.exe""#);
        // `{:?}` leaves these raw; `quoted` does not.
        assert_eq!(format!("{:?}", "a\u{3164}b"), "\"a\u{3164}b\"");
        assert_eq!(quoted("a\u{3164}b"), r#""a\u{3164}b""#);
        assert_eq!(quoted("caf\u{e9}"), "\"caf\u{e9}\"");
        let long = quoted(&"x".repeat(QUOTED_MAX_CHARS + 1));
        assert_eq!(long, format!("\"{}\"...", "x".repeat(QUOTED_MAX_CHARS)));
        assert_eq!(
            quoted(&"x".repeat(QUOTED_MAX_CHARS)).len(),
            QUOTED_MAX_CHARS + 2
        );
        assert_eq!(
            escaped("unknown variant `a\u{1b}[31m\u{202e}\"'\\`"),
            r#"unknown variant `a\u{1b}[31m\u{202e}"'\`"#
        );
        for bad in ["hx\u{202e}gnp.exe", "a\u{3164}b", "a\u{7}b"] {
            let err = PodName::new(bad).unwrap_err().to_string();
            assert!(err.contains(&quoted(bad)), "{err}");
            assert!(!err.contains(bad), "{err} shows the raw name");
        }
    }

    #[test]
    fn valid_pod_names() {
        for name in ["a", "web-1", "ns_pod.abc", "é-ünicode", &"x".repeat(253)] {
            assert_eq!(PodName::new(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn empty_pod_name() {
        assert_eq!(PodName::new(""), Err(NameError::EmptyPodName));
    }

    #[test]
    fn too_long_pod_name_names_length() {
        let err = PodName::new("x".repeat(254)).unwrap_err();
        assert!(matches!(err, NameError::PodNameTooLong { len: 254, .. }));
        assert!(err.to_string().contains("254 bytes"));
    }

    #[test]
    fn slash_rejected_with_name_in_message() {
        let err = PodName::new("a/b").unwrap_err();
        assert!(matches!(err, NameError::PodNameBadChar { .. }));
        assert!(err.to_string().contains("\"a/b\""), "{err}");
        assert!(err.to_string().contains("'/'"), "{err}");
    }

    #[test]
    fn control_and_whitespace_rejected() {
        let err = PodName::new("a\u{7}b").unwrap_err();
        assert!(err.to_string().contains("U+0007"), "{err}");
        assert!(matches!(
            PodName::new("a b"),
            Err(NameError::PodNameBadChar { .. })
        ));
        assert!(matches!(
            PodName::new("a\nb"),
            Err(NameError::PodNameBadChar { .. })
        ));
    }

    #[test]
    fn dots_rejected() {
        assert!(matches!(
            PodName::new("."),
            Err(NameError::PodNameLeadingDot { .. })
        ));
        assert!(matches!(
            PodName::new(".."),
            Err(NameError::PodNameLeadingDot { .. })
        ));
        assert!(matches!(
            PodName::new(".hidden"),
            Err(NameError::PodNameLeadingDot { .. })
        ));
        assert!(matches!(
            PodName::new("a..b"),
            Err(NameError::PodNameDotDot { .. })
        ));
        assert!(PodName::new("a.b").is_ok());
    }

    #[test]
    fn pod_id_is_sha256_prefix() {
        let name = PodName::new("abc").unwrap();
        // sha256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(name.id().as_str(), "ba7816bf8f01cfea");
        assert_eq!(PodId::parse("ba7816bf8f01cfea").unwrap(), name.id());
    }

    #[test]
    fn pod_id_parse_rejects_garbage() {
        for bad in [
            "",
            "ba7816bf8f01cfe",
            "BA7816BF8F01CFEA",
            "ba7816bf8f01cfeg",
            "ba7816bf8f01cfeaa",
        ] {
            assert!(
                matches!(PodId::parse(bad), Err(NameError::BadPodId { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn derived_interface_names_fit_the_kernel_limit() {
        let id = PodName::new("abc").unwrap().id();
        let host = id.host_veth_name();
        let peer = id.temp_peer_name();
        assert_eq!(host.as_str(), "nhba7816bf8f01");
        assert_eq!(peer.as_str(), "nhpba7816bf8f01");
        assert!(host.as_str().len() <= MAX_IFNAME_LEN);
        assert!(peer.as_str().len() <= MAX_IFNAME_LEN);
        assert!(IfName::new(host.as_str()).is_ok());
        assert!(IfName::new(peer.as_str()).is_ok());
        assert!(is_host_veth_name(host.as_str()));
        assert!(!is_host_veth_name(peer.as_str()));
        assert!(!is_host_veth_name("nh0"));
        assert!(!is_host_veth_name("nhBA7816BF8F01"));
        assert!(is_pooled_veth_name("nhv0a1b2c000003"));
        assert!(!is_host_veth_name("nhv0a1b2c000003"));
        assert!(!is_pooled_veth_name(host.as_str()));
        assert!(!is_pooled_veth_name("nhv0A1B2C000003"));
        assert!(!is_pooled_veth_name("npv0a1b2c000003"));
        assert!(is_prefix_and_id_hex("npv0a1b2c000003", "npv"));
        assert!(!is_prefix_and_id_hex("npv0a1b2c00003", "npv"));
    }

    #[test]
    fn pause_argv0_round_trips() {
        let id = PodName::new("abc").unwrap().id();
        assert_eq!(id.pause_argv0(), "netns-holder-pause:ba7816bf8f01cfea");
        assert_eq!(pod_id_from_pause_argv0(&id.pause_argv0()), Some(id));
        assert_eq!(pod_id_from_pause_argv0("/usr/bin/pause"), None);
        assert_eq!(pod_id_from_pause_argv0("netns-holder-pause:xyz"), None);
    }

    #[test]
    fn ifname_validation() {
        assert!(IfName::new("nh0").is_ok());
        assert!(IfName::new("a".repeat(15)).is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("abcdefghijklmnop", "longer than 15"),
            ("a/b", "'/'"),
            ("a b", "whitespace"),
            ("..", "'.'"),
            ("a:b", "':'"),
        ] {
            let err = IfName::new(bad).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn serde_validates() {
        let ok: PodName = serde_json::from_str("\"web\"").unwrap();
        assert_eq!(ok.as_str(), "web");
        assert!(serde_json::from_str::<PodName>("\"a/b\"").is_err());
        assert!(serde_json::from_str::<IfName>("\"abcdefghijklmnop\"").is_err());
        assert!(serde_json::from_str::<PodId>("\"zz\"").is_err());
    }
}
