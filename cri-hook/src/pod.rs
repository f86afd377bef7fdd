//! What a runtime's pod sandbox means for netns-holder.
//!
//! # Daemon pod names
//!
//! Each sandbox becomes the daemon pod `<namespace>_<name>_<sandbox-id[..12]>`: the
//! Kubernetes namespace and pod name, then the first 12 characters of the CRI sandbox id
//! (the prefix `crictl pods` shows). Every character outside `[A-Za-z0-9.-]` becomes `-`, a
//! `.` that would start a part or follow another `.` becomes `-`, an empty part is `-`, and
//! the namespace is cut to 63 bytes and the name to what keeps the whole within 253, so the
//! result is always a valid [`PodName`] and `_` only ever separates the three parts. It is
//! deterministic (the same sandbox always maps to the same name, across restarts) and
//! unique (sandbox ids are). The sandbox id is used rather than the pod UID because
//! Kubernetes re-creates a dead sandbox for the same pod, with the same UID and a new
//! network namespace, while the old sandbox is only stopped, not yet removed: names keyed by
//! the UID would collide. The UID is kept in an annotation.
//!
//! # Annotations on daemon pods
//!
//! Pods this plugin creates carry [`OWNER_ANNOTATION`]`=`[`OWNER_NRI`], the full sandbox id,
//! `<namespace>/<name>` and the UID (see [`daemon_annotations`]). Only pods marked this way
//! are ever removed by reconciliation, and a removal for a sandbox only touches the daemon
//! pod whose sandbox-id annotation matches; pods made by hand are never touched. (One NRI
//! runtime per daemon is assumed: two runtimes sharing a daemon would collect each other's
//! pods.)
//!
//! # Pod options
//!
//! Pod annotations under [`ANNOTATION_PREFIX`] (`netns-holder.io/`) are options:
//!
//! | annotation | value | effect |
//! |---|---|---|
//! | `netns-holder.io/skip` | `true` or `false` | `true`: leave this pod's network alone |
//! | `netns-holder.io/name` | a pod name | use it as the daemon pod name instead of the derived one |
//! | `netns-holder.io/ports` | host ports, e.g. `8080:80/tcp,[::]:8443:443` | publish them (see below) |
//!
//! Any other key under the prefix, or a malformed value, is an error naming the annotation
//! and the problem: RunPodSandbox then fails with INVALID_ARGUMENT (so a typo never goes
//! unnoticed). Every problem of a pod is reported at once.
//!
//! ## Host ports
//!
//! `netns-holder.io/ports` is a comma-separated list of specs in the syntax of
//! `netns-holder pod create --publish` (parsed by the same code,
//! [`netns_holder_core::ports::parse_publish_all`]): `[HOSTIP:]HOSTPORT:PORT[/tcp|udp|sctp]`, a
//! range `HOSTPORT-HOSTPORT:PORT-PORT`, an IPv6 `HOSTIP` in brackets (`[::]` is every IPv6
//! address, `0.0.0.0` every IPv4 one, no `HOSTIP` every address of each family the pod
//! has); the protocol defaults to `tcp`. Spaces around the commas are allowed; an empty
//! value publishes nothing. Two specs claiming the same host port are an error.
//!
//! RunPodSandbox publishes the ports with the pod; StopPodSandbox withdraws them (the
//! daemon's `ReleasePodPorts`), so a stopped pod receives nothing and another pod may take
//! them; RemovePodSandbox tears the pod down. The NRI `PodSandbox` message carries no CRI
//! port mappings (not in any NRI version, see PROTOCOL.md §5.3), so this annotation is the
//! only source of host ports on the NRI path; the CRI `hostPort`s of a Kubernetes pod reach
//! netns-holder through the CNI entry's `portMappings` instead. When the CNI entry wired the
//! sandbox first, its pod (and its ports) is kept: the annotation may then be absent or
//! name the same ports; other ports fail RunPodSandbox naming both lists.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use netns_holder_core::names::{self, MAX_POD_NAME_LEN, NameError, PodName};
use netns_holder_core::ports::{self, PortMapping, PortSpecError};
use nri::pb;
use thiserror::Error;

/// Prefix of the pod annotations read as options.
pub const ANNOTATION_PREFIX: &str = "netns-holder.io/";
/// Option: `true` leaves the pod alone.
pub const OPTION_SKIP: &str = "netns-holder.io/skip";
/// Option: the daemon pod name to use.
pub const OPTION_NAME: &str = "netns-holder.io/name";
/// Option: host ports to publish (comma-separated `--publish` specs).
pub const OPTION_PORTS: &str = "netns-holder.io/ports";
/// Every known option.
pub const KNOWN_OPTIONS: [&str; 3] = [OPTION_NAME, OPTION_PORTS, OPTION_SKIP];

/// Daemon pod annotation marking pods this plugin manages.
pub const OWNER_ANNOTATION: &str = "netns-holder.io/owner";
/// Value of [`OWNER_ANNOTATION`] for the NRI plugin.
pub const OWNER_NRI: &str = "nri";
/// Daemon pod annotation: the full CRI sandbox id.
pub const SANDBOX_ANNOTATION: &str = "netns-holder.io/sandbox-id";
/// Daemon pod annotation: `<namespace>/<name>` of the Kubernetes pod.
pub const POD_ANNOTATION: &str = "netns-holder.io/pod";
/// Daemon pod annotation: the Kubernetes pod UID.
pub const UID_ANNOTATION: &str = "netns-holder.io/uid";

/// Characters of the sandbox id kept in the derived name.
pub const SANDBOX_ID_CHARS: usize = 12;
/// Longest namespace part of a derived name (a Kubernetes namespace is a DNS label).
const MAX_NAMESPACE_PART: usize = 63;
/// At most this many annotation problems are listed in one error.
const MAX_PROBLEMS_LISTED: usize = 1000;
/// Annotation values are quoted in errors up to this many characters.
const MAX_VALUE_SHOWN: usize = 64;

/// One malformed option annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationProblem {
    /// The annotation key.
    pub key: String,
    /// What is wrong, including the offending value.
    pub problem: String,
}

impl fmt::Display for AnnotationProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "annotation {}: {}",
            names::quoted(&self.key),
            self.problem
        )
    }
}

/// A sandbox that cannot be handled, naming it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PodError {
    /// The sandbox has no id.
    #[error("pod sandbox {pod} has no id")]
    NoId {
        /// `<namespace>/<name>`.
        pod: String,
    },
    /// Option annotations are malformed.
    #[error("pod sandbox {pod} ({sandbox}): {}", problem_list(.problems))]
    Options {
        /// `<namespace>/<name>`.
        pod: String,
        /// The sandbox id.
        sandbox: String,
        /// Every problem found.
        problems: Vec<AnnotationProblem>,
    },
    /// The network namespace path is not absolute.
    #[error("pod sandbox {pod} ({sandbox}): network namespace path {path:?} is not absolute")]
    RelativeNetns {
        /// `<namespace>/<name>`.
        pod: String,
        /// The sandbox id.
        sandbox: String,
        /// The path given.
        path: String,
    },
    /// The derived name is not a valid pod name (cannot happen; kept for safety).
    #[error("pod sandbox {pod} ({sandbox}): cannot derive a daemon pod name: {source}")]
    Name {
        /// `<namespace>/<name>`.
        pod: String,
        /// The sandbox id.
        sandbox: String,
        /// Why.
        source: NameError,
    },
}

fn problem_list(problems: &[AnnotationProblem]) -> String {
    let count = problems.len();
    let mut text = format!(
        "{count} malformed {ANNOTATION_PREFIX} annotation{}: ",
        if count == 1 { "" } else { "s" }
    );
    for (i, problem) in problems.iter().take(MAX_PROBLEMS_LISTED).enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        text.push_str(&problem.to_string());
    }
    if count > MAX_PROBLEMS_LISTED {
        text.push_str(&format!("; and {} more", count - MAX_PROBLEMS_LISTED));
    }
    text
}

/// The options a pod's annotations set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOptions {
    /// Leave the pod alone.
    pub skip: bool,
    /// Daemon pod name override.
    pub name: Option<PodName>,
    /// Host ports to publish ([`OPTION_PORTS`]; empty when none).
    pub ports: Vec<PortMapping>,
}

/// Parses the value of [`OPTION_PORTS`]: comma-separated `--publish` specs (see the module
/// documentation); an empty value is no ports.
pub fn parse_ports(value: &str) -> Result<Vec<PortMapping>, PortSpecError> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let specs: Vec<&str> = value.split(',').map(str::trim).collect();
    ports::parse_publish_all(&specs)
}

fn shown(value: &str) -> String {
    if value.chars().count() > MAX_VALUE_SHOWN {
        let cut: String = value.chars().take(MAX_VALUE_SHOWN).collect();
        format!("{}...", names::quoted(&cut))
    } else {
        names::quoted(value)
    }
}

/// Parses the options from pod annotations (every problem is reported).
pub fn parse_options(
    annotations: &BTreeMap<String, String>,
) -> Result<PodOptions, Vec<AnnotationProblem>> {
    let mut options = PodOptions::default();
    let mut problems = Vec::new();
    for (key, value) in annotations.range(ANNOTATION_PREFIX.to_string()..) {
        if !key.starts_with(ANNOTATION_PREFIX) {
            break;
        }
        let problem = match key.as_str() {
            OPTION_SKIP => match value.as_str() {
                "true" => {
                    options.skip = true;
                    None
                }
                "false" => None,
                other => Some(format!("{} is not a boolean (true or false)", shown(other))),
            },
            OPTION_PORTS => match parse_ports(value) {
                Ok(ports) => {
                    options.ports = ports;
                    None
                }
                Err(e) => Some(e.to_string()),
            },
            OPTION_NAME => match PodName::new(value.clone()) {
                Ok(name) => {
                    options.name = Some(name);
                    None
                }
                Err(e) => Some(format!("{} is not a valid pod name: {e}", shown(value))),
            },
            _ => Some(format!(
                "unknown option (known: {})",
                KNOWN_OPTIONS.join(", ")
            )),
        };
        if let Some(problem) = problem {
            problems.push(AnnotationProblem {
                key: key.clone(),
                problem,
            });
        }
    }
    if problems.is_empty() {
        Ok(options)
    } else {
        Err(problems)
    }
}

/// `<namespace>/<name>` of a sandbox, for messages.
/// Control and invisible characters (the runtime passes on whatever the pod spec held)
/// are escaped, so an operator reads what was sent.
pub fn display_name(pod: &pb::PodSandbox) -> String {
    names::escaped(&format!("{}/{}", pod.namespace, pod.name))
}

/// Maps a part of a derived name to `[A-Za-z0-9.-]`, at most `max` bytes (see the module
/// documentation).
fn sanitize(part: &str, max: usize) -> String {
    let mut out = String::new();
    for c in part.chars() {
        if out.len() >= max {
            break;
        }
        let c = if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
            c
        } else {
            '-'
        };
        let c = if c == '.' && (out.is_empty() || out.ends_with('.')) {
            '-'
        } else {
            c
        };
        out.push(c);
    }
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// The derived daemon pod name of a sandbox (see the module documentation).
pub fn derived_name(pod: &pb::PodSandbox) -> Result<PodName, PodError> {
    if pod.id.is_empty() {
        return Err(PodError::NoId {
            pod: display_name(pod),
        });
    }
    let id = sanitize(&pod.id, SANDBOX_ID_CHARS);
    let namespace = sanitize(&pod.namespace, MAX_NAMESPACE_PART);
    let budget = MAX_POD_NAME_LEN - 2 - id.len() - namespace.len();
    let name = sanitize(&pod.name, budget);
    PodName::new(format!("{namespace}_{name}_{id}")).map_err(|source| PodError::Name {
        pod: display_name(pod),
        sandbox: names::escaped(&pod.id),
        source,
    })
}

/// The pod's network namespace path (`linux.namespaces[type=network].path`); `None` for a
/// host-network pod, a stopped one, or a runtime that does not report it.
pub fn network_namespace(pod: &pb::PodSandbox) -> Option<&str> {
    pod.linux
        .as_ref()?
        .namespaces
        .iter()
        .find(|ns| ns.r#type == "network")
        .map(|ns| ns.path.as_str())
        .filter(|path| !path.is_empty())
}

/// Everything the plugin needs to know about a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// The CRI sandbox id.
    pub sandbox_id: String,
    /// `<namespace>/<name>`, for messages.
    pub display: String,
    /// The daemon pod name.
    pub name: PodName,
    /// The options.
    pub options: PodOptions,
    /// The network namespace, if the pod has one.
    pub netns: Option<PathBuf>,
    /// The annotations the daemon pod gets.
    pub annotations: BTreeMap<String, String>,
}

impl PodTarget {
    /// Reads a sandbox: options, name, namespace and daemon annotations.
    pub fn of(pod: &pb::PodSandbox) -> Result<Self, PodError> {
        let display = display_name(pod);
        let derived = derived_name(pod)?;
        let options = parse_options(&pod.annotations).map_err(|problems| PodError::Options {
            pod: display.clone(),
            sandbox: names::escaped(&pod.id),
            problems,
        })?;
        let netns = match network_namespace(pod) {
            None => None,
            Some(path) if path.starts_with('/') => Some(PathBuf::from(path)),
            Some(path) => {
                return Err(PodError::RelativeNetns {
                    pod: display,
                    sandbox: names::escaped(&pod.id),
                    path: path.to_string(),
                });
            }
        };
        Ok(Self {
            sandbox_id: pod.id.clone(),
            name: options.name.clone().unwrap_or(derived),
            annotations: daemon_annotations(pod),
            display,
            options,
            netns,
        })
    }
}

/// The annotations of the daemon pod for a sandbox. They are part of the parameters the
/// daemon compares for idempotence, so they depend only on the sandbox's identity.
pub fn daemon_annotations(pod: &pb::PodSandbox) -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNER_ANNOTATION.to_string(), OWNER_NRI.to_string()),
        (SANDBOX_ANNOTATION.to_string(), pod.id.clone()),
        (POD_ANNOTATION.to_string(), display_name(pod)),
        (UID_ANNOTATION.to_string(), pod.uid.clone()),
    ])
}

/// Whether a daemon pod's annotations mark it as managed by this plugin.
pub fn owned_by_nri(annotations: &BTreeMap<String, String>) -> bool {
    annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(OWNER_NRI)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox(namespace: &str, name: &str, id: &str) -> pb::PodSandbox {
        pb::PodSandbox {
            id: id.into(),
            name: name.into(),
            namespace: namespace.into(),
            uid: "0b7c5a9e-1111-2222-3333-444455556666".into(),
            ..Default::default()
        }
    }

    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd";

    #[test]
    fn derived_name_shape() {
        let name = derived_name(&sandbox("default", "web-0", ID)).unwrap();
        assert_eq!(name.as_str(), "default_web-0_3f2a9c1b7d4e");
        // Deterministic.
        assert_eq!(
            derived_name(&sandbox("default", "web-0", ID)).unwrap(),
            name
        );
    }

    #[test]
    fn derived_name_is_always_valid() {
        for (ns, name, id) in [
            ("", "", "x"),
            ("..", "../etc", "a/b c"),
            (".hidden", "a..b", "..........."),
            ("ns", &"n".repeat(400), ID),
            (&"s".repeat(100), "é ü\n\t", "ID_WITH_UNDERSCORES"),
        ] {
            let derived = derived_name(&sandbox(ns, name, id)).unwrap();
            assert!(derived.as_str().len() <= MAX_POD_NAME_LEN, "{derived}");
            assert_eq!(derived.as_str().matches('_').count(), 2, "{derived}");
        }
        assert!(matches!(
            derived_name(&sandbox("ns", "n", "")),
            Err(PodError::NoId { .. })
        ));
    }

    #[test]
    fn sandboxes_of_one_pod_get_distinct_names() {
        let a = derived_name(&sandbox("default", "web", ID)).unwrap();
        let b = derived_name(&sandbox("default", "web", "99aa")).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn options_parse() {
        let mut annotations = BTreeMap::from([
            ("other.io/x".to_string(), "whatever".to_string()),
            (OPTION_SKIP.to_string(), "true".to_string()),
        ]);
        assert!(parse_options(&annotations).unwrap().skip);
        annotations.insert(OPTION_NAME.into(), "my-pod".into());
        assert_eq!(
            parse_options(&annotations).unwrap().name.unwrap().as_str(),
            "my-pod"
        );
    }

    #[test]
    fn malformed_options_name_the_annotation_and_problem() {
        let annotations = BTreeMap::from([
            (OPTION_SKIP.to_string(), "maybe".to_string()),
            (OPTION_NAME.to_string(), "a/b".to_string()),
            ("netns-holder.io/skp".to_string(), "true".to_string()),
        ]);
        let problems = parse_options(&annotations).unwrap_err();
        assert_eq!(problems.len(), 3);
        let mut pod = sandbox("default", "web", ID);
        pod.annotations = annotations;
        let err = PodTarget::of(&pod).unwrap_err().to_string();
        assert!(err.contains("default/web"), "{err}");
        assert!(err.contains("3 malformed"), "{err}");
        assert!(
            err.contains("annotation \"netns-holder.io/skip\": \"maybe\" is not a boolean"),
            "{err}"
        );
        assert!(
            err.contains("annotation \"netns-holder.io/name\": \"a/b\" is not a valid pod name"),
            "{err}"
        );
        assert!(
            err.contains("annotation \"netns-holder.io/skp\": unknown option"),
            "{err}"
        );
    }

    #[test]
    fn ports_option_uses_the_publish_syntax() {
        use netns_holder_core::ports::Protocol;
        let annotations = BTreeMap::from([(
            OPTION_PORTS.to_string(),
            "8080:80/tcp, [::]:8443:443,53:5353/udp,10.0.0.1:9000-9001:90-91".to_string(),
        )]);
        let options = parse_options(&annotations).unwrap();
        let any6: std::net::IpAddr = "::".parse().unwrap();
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            options.ports,
            [
                PortMapping::new(8080, 80, Protocol::Tcp),
                PortMapping::new(8443, 443, Protocol::Tcp).on(any6),
                PortMapping::new(53, 5353, Protocol::Udp),
                PortMapping::new(9000, 90, Protocol::Tcp).on(ip),
                PortMapping::new(9001, 91, Protocol::Tcp).on(ip),
            ]
        );
        assert_eq!(parse_ports("").unwrap(), []);
        assert_eq!(parse_ports(" ").unwrap(), []);
        assert!(parse_options(&BTreeMap::new()).unwrap().ports.is_empty());
    }

    #[test]
    fn malformed_ports_name_the_annotation_and_the_spec() {
        for (value, part) in [
            ("8080", "port spec \"8080\" is malformed"),
            ("8080:80/icmp", "protocol \"icmp\" is not tcp, udp or sctp"),
            ("8080:80,", "port spec \"\" is malformed: it is empty"),
            ("70000:80", "host port \"70000\""),
            ("8080:80,8080:81", "claim the same host port"),
            ("fd00::1:80:80", "write an IPv6 host IP in brackets"),
        ] {
            let mut pod = sandbox("default", "web", ID);
            pod.annotations.insert(OPTION_PORTS.into(), value.into());
            let err = PodTarget::of(&pod).unwrap_err().to_string();
            assert!(
                err.contains("annotation \"netns-holder.io/ports\": "),
                "{value}: {err}"
            );
            assert!(err.contains(part), "{value}: {err}");
            assert!(err.contains("default/web"), "{value}: {err}");
        }
    }

    #[test]
    fn errors_show_invisible_and_control_characters_escaped() {
        let mut pod = sandbox("default", "we\u{202e}b", "3f2a9c1b7d4e\n5f60");
        pod.annotations
            .insert(OPTION_SKIP.into(), "ye\u{3164}s\u{1b}[2J".into());
        let err = PodTarget::of(&pod).unwrap_err().to_string();
        for shown in [
            "we\\u{202e}b",
            "3f2a9c1b7d4e\\n5f60",
            "ye\\u{3164}s\\u{1b}[2J",
        ] {
            assert!(err.contains(shown), "want {shown} in {err}");
        }
        assert!(
            !err.chars()
                .any(|c| c.is_control() || matches!(c, '\u{202e}' | '\u{3164}')),
            "{err:?}"
        );
    }

    #[test]
    fn network_namespace_lookup() {
        let mut pod = sandbox("default", "web", ID);
        assert_eq!(network_namespace(&pod), None);
        pod.linux = Some(pb::LinuxPodSandbox {
            namespaces: vec![
                pb::LinuxNamespace {
                    r#type: "ipc".into(),
                    path: "/proc/1/ns/ipc".into(),
                },
                pb::LinuxNamespace {
                    r#type: "network".into(),
                    path: "/var/run/netns/cni-1".into(),
                },
            ],
            ..Default::default()
        });
        assert_eq!(network_namespace(&pod), Some("/var/run/netns/cni-1"));
        let target = PodTarget::of(&pod).unwrap();
        assert_eq!(target.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert!(owned_by_nri(&target.annotations));
        assert_eq!(target.annotations[SANDBOX_ANNOTATION], ID);
        assert_eq!(target.annotations[POD_ANNOTATION], "default/web");
        pod.linux.as_mut().unwrap().namespaces[1].path = "relative".into();
        assert!(matches!(
            PodTarget::of(&pod),
            Err(PodError::RelativeNetns { .. })
        ));
    }
}
