//! The CNI wire formats (spec 1.1 and the older versions we answer): the environment
//! (`CNI_*` variables), the network configuration on stdin, the `Result` and the error
//! object on stdout.
//!
//! Everything here is pure: parsing and rendering, no daemon calls.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use netns_holder_core::ports;
use serde::Deserialize;
use serde_json::{Value, json};

/// The newest CNI spec version this plugin implements.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Every CNI spec version this plugin answers, oldest first (what `VERSION` reports).
pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The only interface name inside the pod this plugin can create (the daemon names the pod
/// end of the veth `eth0`).
pub const POD_IFNAME: &str = netns_holder_core::names::POD_IFNAME;

/// Well-known CNI error codes, and ours (50 and up; see the [`super`] documentation).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration (the message names it).
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// The container is unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid or missing environment variables (the message names them).
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure (e.g. reading stdin).
    pub const IO: u32 = 5;
    /// Content could not be decoded (e.g. the configuration is not JSON).
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (a transient condition: the daemon timed out or is busy).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The daemon is not reachable; the plugin cannot serve ADD (also STATUS's "not
    /// available").
    pub const DAEMON_UNREACHABLE: u32 = 50;
    /// The daemon refused or failed the request (its message is passed on).
    pub const DAEMON_FAILED: u32 = 100;
    /// The pod address pool is exhausted.
    pub const POOL_EXHAUSTED: u32 = 101;
    /// A daemon pod already exists for this name or namespace with other parameters.
    pub const CONFLICT: u32 = 102;
    /// CHECK found the pod network different from what ADD set up.
    pub const CHECK_FAILED: u32 = 103;
    /// The daemon's answer is malformed.
    pub const BAD_ANSWER: u32 = 104;
}

/// A CNI error: printed as `{"cniVersion","code","msg","details"}` on stdout, exit status 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    /// The error code (see [`code`]).
    pub code: u32,
    /// One line naming the problem.
    pub msg: String,
    /// More context (may be empty).
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`, no details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds details.
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON object printed on stdout, for spec version `version`.
    pub fn to_json(&self, version: &str) -> Value {
        let mut error = json!({
            "cniVersion": version,
            "code": self.code,
            "msg": self.msg,
        });
        if !self.details.is_empty() {
            error["details"] = json!(self.details);
        }
        error
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Add the container to the network.
    Add,
    /// Remove the container from the network.
    Del,
    /// Check the container's network.
    Check,
    /// Report whether the plugin can serve ADD.
    Status,
    /// Remove stale attachments.
    Gc,
    /// Report the supported versions.
    Version,
}

impl Command {
    /// Parses a `CNI_COMMAND` value.
    pub fn parse(value: &str) -> Result<Self, CniError> {
        match value {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "STATUS" => Ok(Self::Status),
            "GC" => Ok(Self::Gc),
            "VERSION" => Ok(Self::Version),
            other => Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
            )),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Status => "STATUS",
            Self::Gc => "GC",
            Self::Version => "VERSION",
        })
    }
}

/// The `CNI_*` environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`.
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`, split into `KEY=VALUE` pairs.
    pub args: BTreeMap<String, String>,
}

impl Env {
    /// Reads the environment through `var` (a lookup of one variable; empty counts as unset).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let get = |key: &str| var(key).filter(|v| !v.is_empty());
        let command = get("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?;
        let command = Command::parse(&command)?;
        let netns = get("CNI_NETNS").map(PathBuf::from);
        if let Some(path) = &netns
            && !path.is_absolute()
        {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS={:?} is not an absolute path", path.display()),
            ));
        }
        Ok(Self {
            command,
            container_id: get("CNI_CONTAINERID"),
            netns,
            ifname: get("CNI_IFNAME"),
            args: parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?,
        })
    }

    /// `CNI_CONTAINERID`, which `command` requires.
    pub fn require_container_id(&self) -> Result<&str, CniError> {
        self.container_id.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID is not set (required for {})", self.command),
            )
        })
    }

    /// `CNI_IFNAME`, which `command` requires.
    pub fn require_ifname(&self) -> Result<&str, CniError> {
        self.ifname.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_IFNAME is not set (required for {})", self.command),
            )
        })
    }

    /// `CNI_NETNS`, which `command` requires.
    pub fn require_netns(&self) -> Result<&std::path::Path, CniError> {
        self.netns.as_deref().ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS is not set (required for {})", self.command),
            )
        })
    }
}

/// Parses `CNI_ARGS`: `KEY=VALUE` pairs separated by `;` (empty pairs skipped).
pub fn parse_cni_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS entry {pair:?} is not KEY=VALUE"),
            ));
        };
        args.insert(key.to_string(), value.to_string());
    }
    Ok(args)
}

/// Most characters of a `portMappings` entry quoted in an error.
const MAX_ENTRY_SHOWN: usize = 200;

/// `text` cut after [`MAX_ENTRY_SHOWN`] characters, for an error.
fn shorten(text: String) -> String {
    if text.chars().count() > MAX_ENTRY_SHOWN {
        let cut: String = text.chars().take(MAX_ENTRY_SHOWN).collect();
        format!("{cut}...")
    } else {
        text
    }
}

/// The text of a JSON value for an error (shortened; JSON escapes every control character).
fn entry_text(entry: &Value) -> String {
    shorten(entry.to_string())
}

/// One entry of `runtimeConfig.portMappings` as it was sent. An object keeps its members
/// in document order and with duplicate keys, because Go's decoder, whose behaviour
/// [`port_mapping`] reproduces, walks them in that order (a [`Value`] would sort them and
/// keep one member per exact key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireEntry {
    /// A JSON object: its members in document order.
    Object(Vec<(String, Value)>),
    /// Anything else (not a valid entry).
    Other(Value),
}

impl WireEntry {
    /// The entry as JSON text, members in document order, for an error (shortened).
    pub fn text(&self) -> String {
        match self {
            Self::Object(members) => {
                let members: Vec<String> = members
                    .iter()
                    .map(|(key, value)| format!("{}:{value}", Value::from(key.as_str())))
                    .collect();
                shorten(format!("{{{}}}", members.join(",")))
            }
            Self::Other(value) => entry_text(value),
        }
    }
}

/// An object's members in document order (duplicates kept).
struct OrderedMembers(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedMembers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> serde::de::Visitor<'de> for Members {
            type Value = OrderedMembers;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedMembers, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, Value>()? {
                    members.push(member);
                }
                Ok(OrderedMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

impl<'de> Deserialize<'de> for WireEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Untagged: serde buffers the entry with its object members in order; whatever is
        // not an object is kept as a plain value (refused later, naming it).
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Object(OrderedMembers),
            Other(Value),
        }
        Ok(match Either::deserialize(deserializer)? {
            Either::Object(OrderedMembers(members)) => Self::Object(members),
            Either::Other(value) => Self::Other(value),
        })
    }
}

/// `runtimeConfig.portMappings` as it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum WirePortMappings {
    /// A list: the entries, each checked by [`port_mapping`].
    List(Vec<WireEntry>),
    /// Anything else (not a list: refused by [`NetConf::port_mappings`]).
    Other(Value),
}

/// The fields of a `portMappings` entry: the JSON names of the reference `portmap` plugin's
/// `PortMapEntry` (`hostPort`, `containerPort`, `protocol`, `hostIP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortField {
    HostPort,
    ContainerPort,
    Protocol,
    HostIp,
}

impl PortField {
    const ALL: [Self; 4] = [
        Self::HostPort,
        Self::ContainerPort,
        Self::Protocol,
        Self::HostIp,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::HostPort => "hostPort",
            Self::ContainerPort => "containerPort",
            Self::Protocol => "protocol",
            Self::HostIp => "hostIP",
        }
    }

    /// The field a member key sets, matched as Go's `encoding/json` does (see
    /// [`port_mapping`]): the exact name first, else the name under Go's case folding.
    fn for_key(key: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == key)
            .or_else(|| Self::ALL.into_iter().find(|f| go_fold_eq(key, f.name())))
    }
}

/// Whether Go's `encoding/json` folds `key` and the ASCII field name `name` to the same
/// string (`foldName` in `encoding/json/fold.go`, the same as `bytes.EqualFold`): ASCII
/// letters fold to upper case, and a non-ASCII character folds to the smallest character
/// of its Unicode simple case-folding set. The only non-ASCII characters whose set holds an
/// ASCII letter are U+017F (LATIN SMALL LETTER LONG S, set {S, s, U+017F}) and U+212A
/// (KELVIN SIGN, set {K, k, U+212A}), so Go matches `hoſtPort` to `hostPort`, and every other
/// non-ASCII character makes the key match none of these ASCII names.
fn go_fold_eq(key: &str, name: &str) -> bool {
    fn fold(c: char) -> Option<char> {
        match c {
            '\u{017F}' => Some('S'),
            '\u{212A}' => Some('K'),
            c if c.is_ascii() => Some(c.to_ascii_uppercase()),
            _ => None,
        }
    }
    key.chars().count() == name.chars().count()
        && key
            .chars()
            .zip(name.chars())
            .all(|(k, n)| fold(k).is_some_and(|k| Some(k) == fold(n)))
}

/// Parses one entry of `runtimeConfig.portMappings` (the `portMappings` capability):
/// `{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "10.0.0.1"}`.
/// `protocol` is `tcp` (the default, also for `""`), `udp` or `sctp`, in any case;
/// `hostIP` absent or `""` publishes on every node address (as the daemon's empty host IP);
/// other keys are ignored. A bad entry is code 7 naming its index, the entry and the
/// problem.
///
/// # Keys are matched as Go's `encoding/json` matches them
///
/// containerd (go-cni) marshals its `PortMapping` struct, which has no JSON tags, so the
/// keys arrive as Go field names: `{"HostPort":18081,"ContainerPort":8080,"Protocol":"tcp",
/// "HostIP":""}` (captured from containerd 2.3.4). The reference `portmap` plugin reads them
/// into a struct tagged `hostPort`, `containerPort`, `protocol` and `hostIP`, and Go's
/// decoder matches an object key to a struct field case-insensitively. So do we, member by
/// member in document order, exactly as Go's decoder walks an object:
/// - a key selects the field whose name it equals, else the field whose name it equals
///   under Go's case folding (`go_fold_eq`: any casing, `HOSTPORT`, `hostport`,
///   `HoStPoRt`, and the two non-ASCII runes that fold to ASCII letters); a key that selects
///   no field is ignored;
/// - the member's value is checked against the field's type (a port is a JSON integer, the
///   protocol and the host IP strings): Go fails the whole decode on a mistyped member, so
///   a mistyped member is an error here too, even if a later one would override it;
/// - `null` leaves the field as it was (Go's decoder does not touch a non-pointer field for
///   `null`), so `null` alone counts as absent;
/// - **duplicates**: when several members select the same field (`hostPort` and
///   `HostPort`, or the same key twice), the **last** non-`null` one in document order wins,
///   as in Go, where each later member overwrites the field. We accept such an entry rather
///   than refuse it, because the Go plugins a runtime might use instead accept it too.
///
/// The range of a port (1 to 65535) and the host IP are then checked on the winning values,
/// as the `portmap` plugin checks the decoded struct.
pub fn port_mapping(index: usize, entry: &WireEntry) -> Result<ports::PortMapping, CniError> {
    let bad = |problem: String| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "runtimeConfig.portMappings[{index}] {}: {problem}",
                entry.text()
            ),
        )
    };
    let WireEntry::Object(members) = entry else {
        return Err(bad("not an object".to_string()));
    };
    // Per field: the key that set it last (as sent, for the messages) and its value.
    let mut set: [Option<(&str, &Value)>; 4] = [None; 4];
    let not_a_port = |key: &str, value: &Value| {
        bad(format!(
            "{key} {value} is not a port number between 1 and 65535"
        ))
    };
    for (key, value) in members {
        let Some(field) = PortField::for_key(key) else {
            continue;
        };
        match (field, value) {
            (_, Value::Null) => continue,
            (PortField::HostPort | PortField::ContainerPort, Value::Number(n))
                if n.is_i64() || n.is_u64() => {}
            (PortField::HostPort | PortField::ContainerPort, _) => {
                return Err(not_a_port(key, value));
            }
            (PortField::Protocol | PortField::HostIp, Value::String(_)) => {}
            (PortField::Protocol | PortField::HostIp, _) => {
                return Err(bad(format!("{key} {value} is not a string")));
            }
        }
        set[field as usize] = Some((key.as_str(), value));
    }
    let port = |field: PortField| -> Result<u32, CniError> {
        let (key, value) =
            set[field as usize].ok_or_else(|| bad(format!("{} is missing", field.name())))?;
        value
            .as_u64()
            .filter(|n| (1..=65535).contains(n))
            .map(|n| n as u32)
            .ok_or_else(|| not_a_port(key, value))
    };
    let host_port = port(PortField::HostPort)?;
    let container_port = port(PortField::ContainerPort)?;
    let text = |field: PortField| {
        set[field as usize]
            .and_then(|(key, value)| Some((key, value.as_str()?)))
            .unwrap_or((field.name(), ""))
    };
    let protocol = match text(PortField::Protocol) {
        (_, "") => ports::Protocol::Tcp,
        (key, p) => p
            .to_ascii_lowercase()
            .parse()
            .map_err(|_| bad(format!("{key} {p:?} is not tcp, udp or sctp")))?,
    };
    let (_, host_ip) = text(PortField::HostIp);
    ports::from_parts(host_ip, host_port, container_port, protocol).map_err(|e| bad(e.to_string()))
}

/// `runtimeConfig`: the capability arguments the runtime passes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Host ports to publish, as sent: checked by [`NetConf::port_mappings`] (only for the
    /// commands that use them, so a DEL never fails on them).
    #[serde(default)]
    pub port_mappings: Option<WirePortMappings>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub struct Attachment {
    /// The container id of a still valid attachment.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Its interface name.
    pub ifname: String,
}

/// The network configuration on stdin (the fields this plugin reads; others are ignored).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The spec version of the configuration and of our answer.
    pub cni_version: String,
    /// The network name.
    pub name: String,
    /// The plugin type (the executable's name); required.
    #[serde(rename = "type", default)]
    pub plugin_type: Option<String>,
    /// The daemon's API socket; default `/run/netns-holder/api.sock`.
    #[serde(default)]
    pub daemon_socket: Option<PathBuf>,
    /// Bound of the whole daemon conversation, in milliseconds; default 10000.
    #[serde(default)]
    pub daemon_timeout_ms: Option<u64>,
    /// Capability arguments.
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// The previous result (CHECK, DEL, and chained ADD).
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments to keep.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// GC: the same list under the name an early 1.1 draft used (libcni sends both).
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
}

impl NetConf {
    /// Parses the configuration from stdin's bytes and checks the version and the name.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let conf: Self = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network configuration on stdin is not valid: {e}"),
            )
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported (supported: {})",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if conf.name.is_empty() {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "the network configuration has no name",
            ));
        }
        match conf.plugin_type.as_deref() {
            None => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "the network configuration has no type (the plugin's executable name, e.g. \"netns-holder\")",
                ));
            }
            Some("") => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "the network configuration's type is empty",
                ));
            }
            Some(_) => {}
        }
        if conf.daemon_timeout_ms == Some(0) {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                "daemonTimeoutMs must be positive",
            ));
        }
        Ok(conf)
    }

    /// The host ports of `runtimeConfig.portMappings` (none if absent or `null`), each
    /// entry checked ([`port_mapping`]), then the list as a whole (no two entries claiming
    /// the same host port, at most [`ports::MAX_PORTS_PER_POD`]); code 7 naming the entry.
    pub fn port_mappings(&self) -> Result<Vec<ports::PortMapping>, CniError> {
        let entries = match &self.runtime_config.port_mappings {
            None | Some(WirePortMappings::Other(Value::Null)) => return Ok(Vec::new()),
            Some(WirePortMappings::List(entries)) => entries,
            Some(WirePortMappings::Other(other)) => {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "runtimeConfig.portMappings {} is not a list",
                        entry_text(other)
                    ),
                ));
            }
        };
        let mappings = entries
            .iter()
            .enumerate()
            .map(|(i, entry)| port_mapping(i, entry))
            .collect::<Result<Vec<_>, _>>()?;
        ports::validate(&mappings).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("runtimeConfig.portMappings: {e}"),
            )
        })?;
        Ok(mappings)
    }

    /// GC's valid attachments (`cni.dev/valid-attachments`, else `cni.dev/attachments`).
    pub fn gc_attachments(&self) -> Option<&[Attachment]> {
        self.valid_attachments
            .as_deref()
            .or(self.attachments.as_deref())
    }
}

/// The `cniVersion` of the error object for `stdin`: the configuration's, if it names a
/// supported one and can be read, whatever else is wrong with the configuration; else
/// [`CURRENT_VERSION`]. Read as [`NetConf::parse`] reads it (other fields skipped unchecked,
/// so invalid UTF-8 or a wrong type elsewhere does not matter), else from the JSON with
/// invalid UTF-8 replaced, else, for JSON that does not parse (e.g. truncated), from the
/// first top-level-looking `"cniVersion": "..."` in the text.
pub fn answer_version(stdin: &[u8]) -> String {
    #[derive(Deserialize)]
    struct VersionOnly {
        #[serde(rename = "cniVersion")]
        cni_version: Option<Value>,
    }
    let supported = |v: &str| SUPPORTED_VERSIONS.contains(&v);
    let from_value = |v: Option<Value>| match v {
        Some(Value::String(v)) if supported(&v) => Some(v),
        _ => None,
    };
    if let Ok(read) = serde_json::from_slice::<VersionOnly>(stdin) {
        // The version was read: supported or not, scanning further would not improve it.
        return from_value(read.cni_version).unwrap_or_else(|| CURRENT_VERSION.to_string());
    }
    let text = String::from_utf8_lossy(stdin);
    if let Ok(read) = serde_json::from_str::<VersionOnly>(&text) {
        return from_value(read.cni_version).unwrap_or_else(|| CURRENT_VERSION.to_string());
    }
    scan_version(&text)
        .filter(|v| supported(v))
        .map_or_else(|| CURRENT_VERSION.to_string(), str::to_string)
}

/// The string value of the first `"cniVersion"` key in `text` that is followed by `:` and
/// a plain string (no escapes), for configurations that are not valid JSON.
fn scan_version(text: &str) -> Option<&str> {
    const KEY: &str = "\"cniVersion\"";
    let at = text.find(KEY)?;
    let rest = text[at + KEY.len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find(['"', '\\'])?;
    (rest.as_bytes()[end] == b'"').then(|| &rest[..end])
}

/// The `VERSION` answer.
pub fn version_info() -> Value {
    json!({
        "cniVersion": CURRENT_VERSION,
        "supportedVersions": SUPPORTED_VERSIONS,
    })
}

/// What ADD reports about a pod (taken from the daemon's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The host end of the veth (in the node's network namespace).
    pub host_veth: String,
    /// The interface inside the pod (`eth0`).
    pub interface: String,
    /// The pod's network namespace (the `sandbox` of the pod interface).
    pub sandbox: PathBuf,
    /// The pod's addresses with their prefix lengths.
    pub ips: Vec<IpNet>,
    /// The default gateways (one per family).
    pub gateways: Vec<IpAddr>,
}

/// The ADD `Result` for `network` in spec version `version`: the host veth and the pod
/// interface, each pod address (on interface 1, with the gateway of its family) and a
/// default route per family through that gateway. Versions before 1.0.0 also get each
/// address's `version` (`"4"` or `"6"`).
pub fn add_result(version: &str, network: &PodNetwork) -> Value {
    let legacy = version.starts_with("0.");
    let gateway_of = |ip: &IpNet| {
        network
            .gateways
            .iter()
            .copied()
            .find(|g| g.is_ipv4() == ip.addr().is_ipv4())
    };
    let ips: Vec<Value> = network
        .ips
        .iter()
        .map(|ip| {
            let mut entry = json!({"address": ip.to_string(), "interface": 1});
            if let Some(gw) = gateway_of(ip) {
                entry["gateway"] = json!(gw.to_string());
            }
            if legacy {
                entry["version"] = json!(if ip.addr().is_ipv4() { "4" } else { "6" });
            }
            entry
        })
        .collect();
    let routes: Vec<Value> = network
        .gateways
        .iter()
        .map(|gw| {
            let dst = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
            json!({"dst": dst, "gw": gw.to_string()})
        })
        .collect();
    json!({
        "cniVersion": version,
        "interfaces": [
            {"name": network.host_veth},
            {"name": network.interface, "sandbox": network.sandbox},
        ],
        "ips": ips,
        "routes": routes,
        "dns": {},
    })
}

/// The addresses (`ips[].address`) of a previous result; `None` if it has none.
pub fn prev_result_addresses(prev: &Value) -> Result<Vec<IpNet>, CniError> {
    let Some(ips) = prev.get("ips").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    ips.iter()
        .map(|ip| {
            let text = ip.get("address").and_then(Value::as_str).ok_or_else(|| {
                CniError::new(
                    code::DECODE,
                    format!("prevResult.ips entry {ip} has no address"),
                )
            })?;
            text.parse::<IpNet>().map_err(|e| {
                CniError::new(
                    code::DECODE,
                    format!("prevResult address {text:?} is not a CIDR: {e}"),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
