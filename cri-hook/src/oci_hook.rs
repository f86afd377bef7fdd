//! The OCI hook: `cri-hook oci createRuntime|poststop|auto`, for runc, crun and podman.
//!
//! The runtime runs the hook with the container's OCI state (`oci_spec::runtime::State`) on
//! stdin. Every action is a call of the netns-holder daemon's API; no networking is done here.
//!
//! * `createRuntime` (the container's namespaces exist, its process has not started): the
//!   container's network namespace is `/proc/<state.pid>/ns/net`. If the daemon pod (name
//!   below) exists and is in that very namespace, there is nothing to do (a second
//!   container joining a pod, or a repeated hook). Otherwise the namespace is attached as a
//!   pod (`AttachPod`; loopback, `eth0`, addresses, default route), marked with
//!   [`OWNER_ANNOTATION`]`=`[`OWNER_OCI_HOOK`] and [`CONTAINER_ANNOTATION`]`=<container id>`.
//! * `poststop`: the pod is removed if, and only if, this hook made it for this container
//!   (both annotations match). A missing pod is success, and so is a pod made by someone
//!   else (by hand, by the CNI entry, by the NRI plugin, or for another container): it is
//!   left alone.
//! * `auto` picks the stage from `state.status` (`creating`/`created`: createRuntime;
//!   `stopped`: poststop), for a podman `hooks.d` file that registers one command for both
//!   stages (see `cri-hook/hooks.d/netns-holder.json`).
//!
//! # Pod name and options
//!
//! The container's annotations under `netns-holder.io/` are the pod options shared with the
//! NRI plugin ([`crate::pod::parse_options`]): `netns-holder.io/name=NAME` names the daemon
//! pod (default: the container id), `netns-holder.io/skip=true` makes the hook do nothing,
//! `netns-holder.io/ports=8080:80,...` publishes host ports with the pod (gone at poststop).
//! Any other key under the prefix, or a malformed value, fails the hook with an error naming
//! the annotation.
//!
//! # Safety checks
//!
//! The hook only ever wires the namespace of the process the state names, and only when it
//! is a namespace of its own:
//!
//! * the state must carry a pid whose `/proc/<pid>/ns/net` can be opened;
//! * that namespace must not be the hook's own nor PID 1's (a container sharing the host's
//!   network would otherwise get `eth0` and a default route in the host);
//! * an existing pod of the chosen name must be in exactly that namespace (compared by
//!   device and inode), else the hook refuses: naming somebody else's pod in an annotation
//!   never joins, rewires or (at poststop) removes it;
//! * the process's start time is read before and after `AttachPod`; if the pid was reused
//!   in between, the pod just made is removed again and the hook fails.
//!
//! Every daemon conversation is bounded (`--timeout-ms`, default 5000): a daemon that is
//! not running fails at once ("cannot connect to netns-holder at PATH"), one that hangs
//! fails after the bound. Errors are one line on stderr and exit status 1, which makes the
//! runtime fail the container's creation.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use netns_holder_client::api::{self, pb};
use netns_holder_client::client::{Client, ClientError};
use netns_holder_core::names::{NameError, PodName, escaped, quoted};
use oci_spec::runtime::{ContainerState, State};
use thiserror::Error;

use crate::pod::{AnnotationProblem, OWNER_ANNOTATION, PodOptions, parse_options};

/// Value of [`OWNER_ANNOTATION`] on daemon pods made by the OCI hook.
pub const OWNER_OCI_HOOK: &str = "oci-hook";
/// Daemon pod annotation: the id of the container whose hook made the pod.
pub const CONTAINER_ANNOTATION: &str = "netns-holder.io/container-id";
/// Default bound of the daemon conversation, in milliseconds.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;

/// The hook stage to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stage {
    /// Wire the container's network namespace as a pod.
    #[value(name = "createRuntime", alias = "create-runtime")]
    CreateRuntime,
    /// Remove the pod this hook made for the container.
    #[value(name = "poststop")]
    Poststop,
    /// Pick the stage from the state's `status`.
    #[value(name = "auto")]
    Auto,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::CreateRuntime => "createRuntime",
            Self::Poststop => "poststop",
            Self::Auto => "auto",
        })
    }
}

/// Arguments of `cri-hook oci`.
#[derive(Debug, Clone, clap::Args)]
pub struct OciArgs {
    /// The hook stage: createRuntime, poststop, or auto (from the state's status).
    pub stage: Stage,
    /// The netns-holder daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = netns_holder_core::config::DEFAULT_SOCKET)]
    pub daemon_socket: PathBuf,
    /// Bound of the whole conversation with the daemon, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_TIMEOUT_MS)]
    pub timeout_ms: u64,
}

/// The parser's message, which may echo a piece of the input (`unknown variant ...`): its
/// control and invisible characters escaped, and at most about 300 characters of it (the
/// start and the position at the end).
fn parse_error(e: &serde_json::Error) -> String {
    let text = escaped(&e.to_string());
    let count = text.chars().count();
    if count <= 300 {
        return text;
    }
    let start: String = text.chars().take(200).collect();
    let end: String = text.chars().skip(count - 80).collect();
    format!("{start}...{end}")
}

/// Why the hook failed; every variant names the container (and the pod, when there is one).
/// Texts from the state (the container id, the daemon's namespace path) are shown quoted
/// with their control and invisible characters escaped ([`quoted`]).
#[derive(Debug, Error)]
pub enum HookError {
    /// stdin could not be read.
    #[error("cannot read the OCI state from stdin: {0}")]
    ReadState(#[source] std::io::Error),
    /// stdin is not an OCI state.
    #[error("the OCI state on stdin is invalid: {}", parse_error(.0))]
    ParseState(#[source] serde_json::Error),
    /// The state has no container id.
    #[error("the OCI state on stdin has no container id")]
    NoId,
    /// `auto` met a status that belongs to neither stage.
    #[error(
        "container {}: status {status} is neither createRuntime's (creating, created) nor poststop's (stopped)",
        quoted(container)
    )]
    UnknownStage {
        /// The container id.
        container: String,
        /// Its status.
        status: ContainerState,
    },
    /// Option annotations are malformed.
    #[error("container {}: {}", quoted(container), problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Options {
        /// The container id.
        container: String,
        /// Every problem.
        problems: Vec<AnnotationProblem>,
    },
    /// The container id cannot be a pod name (and no `netns-holder.io/name` was given).
    #[error(
        "container {}: its id cannot name a pod (set netns-holder.io/name): {source}",
        quoted(container)
    )]
    PodName {
        /// The container id.
        container: String,
        /// Why.
        #[source]
        source: NameError,
    },
    /// The state has no pid (createRuntime needs the container's process).
    #[error(
        "container {}: the OCI state (status {status}) has no pid",
        quoted(container)
    )]
    NoPid {
        /// The container id.
        container: String,
        /// Its status.
        status: ContainerState,
    },
    /// The container's network namespace cannot be opened.
    #[error("container {}: cannot open {}: {source}", quoted(container), path.display())]
    Netns {
        /// The container id.
        container: String,
        /// `/proc/<pid>/ns/net`.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The container shares the host's (or the hook's) network namespace.
    #[error(
        "container {}: pid {pid} is in the host network namespace ({}); refusing to wire it",
        quoted(container),
        which
    )]
    HostNetns {
        /// The container id.
        container: String,
        /// The container's pid.
        pid: i32,
        /// Whose namespace it is ("the hook's own", "PID 1's").
        which: &'static str,
    },
    /// The named pod exists in another network namespace.
    #[error(
        "container {}: pod {pod} exists with network namespace {}, which is not the container's (pid {pid}); refusing to wire or join it",
        quoted(container),
        quoted(netns)
    )]
    ForeignPod {
        /// The container id.
        container: String,
        /// The pod.
        pod: PodName,
        /// The pod's namespace path.
        netns: String,
        /// The container's pid.
        pid: i32,
    },
    /// The pid stopped being the container's process while the pod was being attached.
    #[error(
        "container {}: pid {pid} exited or was reused while pod {pod} was being attached; the pod was removed again",
        quoted(container)
    )]
    PidChanged {
        /// The container id.
        container: String,
        /// The pid.
        pid: i32,
        /// The pod.
        pod: PodName,
    },
    /// A daemon call failed.
    #[error("container {}: pod {pod}: {source}", quoted(container))]
    Daemon {
        /// The container id.
        container: String,
        /// The pod.
        pod: PodName,
        /// The client error (names the socket, or is the daemon's message).
        #[source]
        source: ClientError,
    },
    /// The daemon's answer is malformed.
    #[error("container {}: pod {pod}: {source}", quoted(container))]
    Answer {
        /// The container id.
        container: String,
        /// The pod.
        pod: PodName,
        /// What is wrong.
        #[source]
        source: api::ResponseError,
    },
    /// The daemon did not answer in time.
    #[error("container {}: pod {pod}: netns-holder at {} did not answer within {after:?}", quoted(container), socket.display())]
    Timeout {
        /// The container id.
        container: String,
        /// The pod.
        pod: PodName,
        /// The daemon's socket.
        socket: PathBuf,
        /// The bound.
        after: Duration,
    },
}

/// What the hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `netns-holder.io/skip=true`: nothing.
    Skipped,
    /// The pod was attached (new).
    Attached(PodName),
    /// The pod already existed in the container's namespace.
    AlreadyWired(PodName),
    /// The pod was removed.
    Removed(PodName),
    /// poststop: there was no pod of that name.
    NoPod(PodName),
    /// poststop: the pod was not made by this hook for this container; left alone.
    NotOurs(PodName),
}

/// The stage, the pod name and the options of one hook run (pure; from the state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The stage to run (never [`Stage::Auto`]).
    pub stage: Stage,
    /// The container id.
    pub container: String,
    /// The daemon pod name.
    pub pod: PodName,
    /// The options from the annotations.
    pub options: PodOptions,
}

/// Works out what to do for `state` at `stage`.
pub fn plan(stage: Stage, state: &State) -> Result<Plan, HookError> {
    let container = state.id().clone();
    if container.is_empty() {
        return Err(HookError::NoId);
    }
    let stage = match (stage, state.status()) {
        (Stage::Auto, ContainerState::Creating | ContainerState::Created) => Stage::CreateRuntime,
        (Stage::Auto, ContainerState::Stopped) => Stage::Poststop,
        (Stage::Auto, status) => {
            return Err(HookError::UnknownStage {
                container,
                status: *status,
            });
        }
        (stage, _) => stage,
    };
    let annotations: BTreeMap<String, String> = state
        .annotations()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let options = parse_options(&annotations).map_err(|problems| HookError::Options {
        container: container.clone(),
        problems,
    })?;
    let pod = match &options.name {
        Some(name) => name.clone(),
        None => PodName::new(container.clone()).map_err(|source| HookError::PodName {
            container: container.clone(),
            source,
        })?,
    };
    Ok(Plan {
        stage,
        container,
        pod,
        options,
    })
}

/// The annotations of a daemon pod this hook makes for `container`.
pub fn pod_annotations(container: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNER_ANNOTATION.to_string(), OWNER_OCI_HOOK.to_string()),
        (CONTAINER_ANNOTATION.to_string(), container.to_string()),
    ])
}

/// Whether a daemon pod's annotations say this hook made it for `container`.
pub fn made_for(annotations: &BTreeMap<String, String>, container: &str) -> bool {
    annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(OWNER_OCI_HOOK)
        && annotations.get(CONTAINER_ANNOTATION).map(String::as_str) == Some(container)
}

/// The identity of a namespace file: device and inode.
fn ns_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Field 22 of `/proc/<pid>/stat` (start time in clock ticks since boot).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `comm` (field 2) may hold spaces and ')'; the fields after the last ')' start at 3.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The container's process, pinned by pid and start time, and its network namespace.
struct Target {
    pid: i32,
    start: Option<u64>,
    netns: PathBuf,
    identity: (u64, u64),
}

impl Target {
    /// Finds the container's namespace and checks that it is not the host's.
    fn of(plan: &Plan, state: &State) -> Result<Self, HookError> {
        let pid = state
            .pid()
            .filter(|pid| *pid > 0)
            .ok_or_else(|| HookError::NoPid {
                container: plan.container.clone(),
                status: *state.status(),
            })?;
        let start = start_time(pid);
        let netns = PathBuf::from(format!("/proc/{pid}/ns/net"));
        let identity = ns_identity(&netns).map_err(|source| HookError::Netns {
            container: plan.container.clone(),
            path: netns.clone(),
            source,
        })?;
        for (path, which) in [
            ("/proc/self/ns/net", "the hook's own"),
            ("/proc/1/ns/net", "PID 1's"),
        ] {
            if ns_identity(Path::new(path)).is_ok_and(|host| host == identity) {
                return Err(HookError::HostNetns {
                    container: plan.container.clone(),
                    pid,
                    which,
                });
            }
        }
        Ok(Self {
            pid,
            start,
            netns,
            identity,
        })
    }

    /// Whether the pid is still the same process in the same namespace.
    fn unchanged(&self) -> bool {
        start_time(self.pid) == self.start
            && ns_identity(&self.netns).is_ok_and(|id| id == self.identity)
    }
}

/// One hook run against the daemon.
struct Run<'a> {
    plan: &'a Plan,
    client: Client,
}

impl Run<'_> {
    fn daemon_error(&self, source: ClientError) -> HookError {
        HookError::Daemon {
            container: self.plan.container.clone(),
            pod: self.plan.pod.clone(),
            source,
        }
    }

    async fn get(&mut self) -> Result<Option<pb::Pod>, HookError> {
        match self.client.get_pod(&self.plan.pod).await {
            Ok(answer) => answer.pod.map(Some).ok_or_else(|| HookError::Answer {
                container: self.plan.container.clone(),
                pod: self.plan.pod.clone(),
                source: api::ResponseError::Missing {
                    method: "GetPod",
                    field: "pod",
                },
            }),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(None),
            Err(e) => Err(self.daemon_error(e)),
        }
    }

    async fn remove(&mut self) -> Result<bool, HookError> {
        match self.client.remove_pod(&self.plan.pod).await {
            Ok(answer) => Ok(answer.removed),
            Err(e) => Err(self.daemon_error(e)),
        }
    }

    async fn create_runtime(&mut self, target: &Target) -> Result<Outcome, HookError> {
        let plan = self.plan;
        if let Some(existing) = self.get().await? {
            match ns_identity(Path::new(&existing.netns)) {
                Ok(id) if id == target.identity => {
                    return Ok(Outcome::AlreadyWired(plan.pod.clone()));
                }
                // A pod this hook made for an earlier run of this container, whose process
                // is gone: replace it.
                Err(_) if made_for(&existing.annotations, &plan.container) => {
                    self.remove().await?;
                }
                _ => {
                    return Err(HookError::ForeignPod {
                        container: plan.container.clone(),
                        pod: plan.pod.clone(),
                        netns: existing.netns,
                        pid: target.pid,
                    });
                }
            }
        }
        let attached = self
            .client
            .attach_pod_with_ports(
                &plan.pod,
                &target.netns,
                pod_annotations(&plan.container),
                &plan.options.ports,
            )
            .await;
        if let Err(e) = attached {
            return Err(self.daemon_error(e));
        }
        if !target.unchanged() {
            self.remove().await?;
            return Err(HookError::PidChanged {
                container: plan.container.clone(),
                pid: target.pid,
                pod: plan.pod.clone(),
            });
        }
        Ok(Outcome::Attached(plan.pod.clone()))
    }

    async fn poststop(&mut self) -> Result<Outcome, HookError> {
        let pod = self.plan.pod.clone();
        match self.get().await? {
            None => Ok(Outcome::NoPod(pod)),
            Some(existing) if made_for(&existing.annotations, &self.plan.container) => {
                self.remove().await?;
                Ok(Outcome::Removed(pod))
            }
            Some(_) => Ok(Outcome::NotOurs(pod)),
        }
    }
}

/// Runs the hook for `state` (already read from stdin).
pub async fn run(args: &OciArgs, state: &State) -> Result<Outcome, HookError> {
    let plan = plan(args.stage, state)?;
    if plan.options.skip {
        return Ok(Outcome::Skipped);
    }
    // The namespace checks come first: they need no daemon.
    let target = match plan.stage {
        Stage::CreateRuntime => Some(Target::of(&plan, state)?),
        _ => None,
    };
    let timeout = Duration::from_millis(args.timeout_ms);
    let work = async {
        let client = Client::connect(&args.daemon_socket)
            .await
            .map_err(|source| HookError::Daemon {
                container: plan.container.clone(),
                pod: plan.pod.clone(),
                source,
            })?;
        let mut run = Run {
            plan: &plan,
            client,
        };
        match &target {
            Some(target) => run.create_runtime(target).await,
            None => run.poststop().await,
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(HookError::Timeout {
                container: plan.container.clone(),
                pod: plan.pod.clone(),
                socket: args.daemon_socket.clone(),
                after: timeout,
            })
        })
}

/// The hook's process: reads the state from stdin, runs the stage on a single-threaded
/// runtime and returns the exit status; an error is one line on stderr.
pub fn main(args: OciArgs) -> ExitCode {
    let stage = args.stage;
    let result = (|| {
        let mut text = Vec::new();
        std::io::stdin()
            .read_to_end(&mut text)
            .map_err(HookError::ReadState)?;
        let state: State = serde_json::from_slice(&text).map_err(HookError::ParseState)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HookError::ReadState)?;
        runtime.block_on(run(&args, &state))
    })();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cri-hook oci {stage}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(json: serde_json::Value) -> State {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn plan_names_the_pod_from_the_annotation_or_the_id() {
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr1", "status": "creating", "pid": 42,
            "bundle": "/b", "annotations": {"netns-holder.io/name": "web", "other": "x"}
        }));
        let p = plan(Stage::Auto, &s).unwrap();
        assert_eq!(p.stage, Stage::CreateRuntime);
        assert_eq!(p.pod.as_str(), "web");
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr1", "status": "stopped", "bundle": "/b"
        }));
        let p = plan(Stage::Auto, &s).unwrap();
        assert_eq!(p.stage, Stage::Poststop);
        assert_eq!(p.pod.as_str(), "ctr1");
        assert!(!p.options.skip);
    }

    #[test]
    fn plan_refusals_name_the_container_and_annotation() {
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr1", "status": "created", "pid": 42, "bundle": "/b",
            "annotations": {"netns-holder.io/nmae": "web"}
        }));
        let err = plan(Stage::CreateRuntime, &s).unwrap_err();
        assert!(err.to_string().contains("ctr1"), "{err}");
        assert!(err.to_string().contains("netns-holder.io/nmae"), "{err}");
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr1", "status": "running", "pid": 42, "bundle": "/b"
        }));
        let err = plan(Stage::Auto, &s).unwrap_err();
        assert!(err.to_string().contains("running"), "{err}");
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "", "status": "created", "bundle": "/b"
        }));
        assert!(matches!(plan(Stage::Poststop, &s), Err(HookError::NoId)));
    }

    #[test]
    fn refusals_show_control_and_invisible_characters_escaped() {
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr\u{1b}[2J\u{202e}1", "status": "created",
            "bundle": "/b", "annotations": {"netns-holder.io/skip": "w\u{7}eb"}
        }));
        let text = plan(Stage::CreateRuntime, &s).unwrap_err().to_string();
        assert!(
            text.contains(r#"container "ctr\u{1b}[2J\u{202e}1""#),
            "{text}"
        );
        assert!(text.contains(r#""w\u{7}eb""#), "{text}");
        assert!(
            !text.contains(['\u{1b}', '\u{202e}', '\u{7}']),
            "{text:?} has raw characters"
        );
        // The id cannot name a pod: the container and the name error both escape it.
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr\u{200b}1", "status": "stopped", "bundle": "/b"
        }));
        let text = plan(Stage::Poststop, &s).unwrap_err().to_string();
        assert!(text.contains(r#""ctr\u{200b}1""#), "{text}");
        assert!(!text.contains('\u{200b}'), "{text:?} has the raw character");
        // A parse error that echoes a value escapes it and stays short.
        let bad = format!(
            r#"{{"ociVersion":"1.0.2","id":"c","status":"x\u001b[2J{}","bundle":"/b"}}"#,
            "y".repeat(100_000)
        );
        let e = serde_json::from_str::<State>(&bad).unwrap_err();
        let text = HookError::ParseState(e).to_string();
        assert!(text.contains(r"x\u{1b}[2J"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text:?} has the raw character");
        assert!(text.len() < 400, "{} bytes", text.len());
        assert!(text.contains("at line 1 column"), "{text}");
    }

    #[test]
    fn host_namespace_is_refused() {
        let me = std::process::id() as i32;
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr1", "status": "creating", "pid": me, "bundle": "/b"
        }));
        let p = plan(Stage::CreateRuntime, &s).unwrap();
        let err = Target::of(&p, &s).err().unwrap();
        assert!(matches!(err, HookError::HostNetns { .. }), "{err}");
        assert!(err.to_string().contains("refusing"), "{err}");
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr1", "status": "creating", "bundle": "/b"
        }));
        assert!(matches!(Target::of(&p, &s), Err(HookError::NoPid { .. })));
    }

    #[test]
    fn ownership() {
        let a = pod_annotations("ctr1");
        assert!(made_for(&a, "ctr1"));
        assert!(!made_for(&a, "ctr2"));
        assert!(!made_for(&BTreeMap::new(), "ctr1"));
    }

    #[tokio::test]
    async fn unreachable_daemon_is_one_clear_error() {
        let s = state(serde_json::json!({
            "ociVersion": "1.0.2", "id": "ctr1", "status": "stopped", "bundle": "/b"
        }));
        let args = OciArgs {
            stage: Stage::Poststop,
            daemon_socket: PathBuf::from("/nonexistent/nh-test.sock"),
            timeout_ms: 2000,
        };
        let err = run(&args, &s).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("ctr1"), "{text}");
        assert!(text.contains("/nonexistent/nh-test.sock"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }
}
