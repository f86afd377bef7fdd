//! The command line: argument definitions ([`Cli`]) and the client commands, which talk to
//! the daemon through [`crate::client`] and produce what the binary prints.
//!
//! ```text
//! netns-holder [--socket PATH] [-v] serve [--config FILE]
//! netns-holder [--socket PATH] pod create NAME [--no-pause] [--annotation K=V]... [--publish SPEC]...
//! netns-holder [--socket PATH] pod attach NAME --netns PATH [--annotation K=V]... [--publish SPEC]...
//! netns-holder [--socket PATH] pod rm NAME
//! netns-holder [--socket PATH] pod release-ports NAME
//! netns-holder [--socket PATH] pod publish NAME --publish SPEC...
//! netns-holder [--socket PATH] pod ls [--json]
//! netns-holder [--socket PATH] pod inspect NAME
//! netns-holder [--socket PATH] pod spec NAME [--rootfs DIR] [--out DIR] [--force] -- CMD [ARG]...
//! netns-holder [--socket PATH] exec NAME -- CMD [ARG]...
//! netns-holder [--socket PATH] check [--repair]
//! netns-holder [--socket PATH] gc [--keep NAME]...
//! netns-holder [--socket PATH] status
//! netns-holder [--socket PATH] reload
//! netns-holder [--socket PATH] peer add POD_CIDR VIA
//! netns-holder [--socket PATH] peer rm POD_CIDR
//! netns-holder [--socket PATH] peer ls
//! ```
//!
//! `--publish [HOSTIP:]HOSTPORT:PORT[/tcp|udp|sctp]` (or a range
//! `HOSTPORT-HOSTPORT:PORT-PORT`; an IPv6 `HOSTIP` in brackets) publishes a host port; see
//! [`crate::ports`].
//!
//! Results go to stdout as one line of JSON (`pod ls` without `--json` prints a table);
//! errors are for the binary to print as one `error: ...` line on stderr. Names and
//! annotations are validated here before the daemon is contacted.
//!
//! Pods are printed as `{"name","id","netns","pause_pid","ips","gateways","interface",
//! "host_veth","ports","ports_released"}` (the [`PodInfo`] serialization; `pause_pid` is
//! `null` without a pause process, `ips` in CIDR form, `ports` a list of `{"host_ip",
//! "host_port","container_port","protocol"}` with `host_ip` `null` for every address, empty
//! when none; `ports_released` is `true` once `pod release-ports` withdrew them).
//!
//! `pod publish NAME -p SPEC...` publishes further host ports of an existing pod (mappings
//! it has are skipped; a stopped pod's released ports stay released) and prints the pod.
//!
//! `pod release-ports NAME` withdraws a pod's host ports (frees them for other pods) and
//! prints `{"name","released"}`; `released` is `false` when there was nothing left to
//! release. A pod that does not exist is an error (exit 1).
//!
//! Exit status: 0 on success; 1 on errors, on drift that `check` found and did not repair,
//! and on `gc`/`check --repair` failures; 2 on usage errors (clap); `exec` passes the
//! command's status through (126 if it cannot be run, 127 if it is not found).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;
use slog::{Logger, debug};
use thiserror::Error;

use crate::api::{self, ResponseError, pb};
use crate::client::{Client, ClientError};
use crate::config::DEFAULT_SOCKET;
use crate::manager::PodInfo;
use crate::names::{NameError, PodName};
use crate::peers::Peer;
use crate::ports::{self, PortSpecError};

/// Default configuration file of the daemon (the systemd unit passes it explicitly).
pub const DEFAULT_CONFIG: &str = "/etc/netns-holder/config.toml";

/// `netns-holder`: the node daemon (`serve`) and its command-line client.
#[derive(Debug, Parser)]
#[command(name = "netns-holder", version, about, propagate_version = true)]
pub struct Cli {
    /// Path of the daemon's API socket [default: /run/netns-holder/api.sock]. For `serve`,
    /// set `socket` in the config file instead.
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Log debug messages (to stderr).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The socket clients connect to: `--socket` or the default.
    pub fn client_socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
    }
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (logs to stderr; SIGTERM/SIGINT stop it, leaving
    /// pods running).
    Serve(ServeArgs),
    /// The client commands.
    #[command(flatten)]
    Client(ClientCommand),
}

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file; without it the built-in defaults are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Test builds only: serve an in-memory fake kernel instead of the real one.
    #[cfg(feature = "fake")]
    #[arg(long, hide = true)]
    pub fake: bool,
}

/// The commands that talk to a running daemon.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, attach, remove, list and inspect pods.
    #[command(subcommand)]
    Pod(PodCommand),
    /// Run a command inside a pod's network namespace; its exit status is passed through.
    Exec(ExecArgs),
    /// Compare the kernel with the daemon's records and print the drift as JSON; exit 1 if
    /// there is drift that was not repaired.
    Check {
        /// Repair the drift found (as the daemon does at start), then check again.
        #[arg(long)]
        repair: bool,
    },
    /// Remove every pod whose name or id is not given with --keep.
    Gc {
        /// A pod (name or id) to keep; may be repeated.
        #[arg(long, value_name = "NAME", num_args = 1..)]
        keep: Vec<String>,
    },
    /// Print the daemon's status as JSON.
    Status,
    /// Re-create the host port nftables table from the daemon's records (one transaction)
    /// and put the peer routes back in line, as at daemon start.
    Reload,
    /// Add, remove and list peer nodes (routes to their pod CIDRs).
    #[command(subcommand)]
    Peer(PeerCommand),
}

/// The `peer` subcommands.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Route a peer node's pod CIDR via its address (idempotent) and print the peer.
    Add {
        /// The peer's pod CIDR, e.g. 10.244.1.0/24.
        pod_cidr: String,
        /// The peer node's address, e.g. 192.168.50.2.
        via: String,
    },
    /// Remove a peer added with `peer add`, and its route.
    #[command(alias = "remove")]
    Rm {
        /// The peer's pod CIDR.
        pod_cidr: String,
    },
    /// List the peers as JSON.
    #[command(alias = "list")]
    Ls,
}

/// The `pod` subcommands.
#[derive(Debug, Subcommand)]
pub enum PodCommand {
    /// Create a pod (idempotent for identical parameters) and print it as JSON.
    Create {
        /// The pod name.
        name: String,
        /// Do not start a pause process; the namespace is held by its bind mount only.
        #[arg(long)]
        no_pause: bool,
        /// An annotation KEY=VALUE; may be repeated.
        #[arg(long = "annotation", value_name = "KEY=VALUE")]
        annotations: Vec<String>,
        /// Publish a host port: [HOSTIP:]HOSTPORT:PORT[/tcp|udp|sctp], or a range
        /// HOSTPORT-HOSTPORT:PORT-PORT; an IPv6 HOSTIP in brackets. May be repeated.
        #[arg(long = "publish", short = 'p', value_name = "SPEC")]
        publish: Vec<String>,
    },
    /// Wire an existing network namespace as a pod and print it as JSON.
    Attach {
        /// The pod name.
        name: String,
        /// The namespace, e.g. /proc/PID/ns/net or a bind mount under /run/netns.
        #[arg(long, value_name = "PATH")]
        netns: PathBuf,
        /// An annotation KEY=VALUE; may be repeated.
        #[arg(long = "annotation", value_name = "KEY=VALUE")]
        annotations: Vec<String>,
        /// Publish a host port (as for `pod create`). May be repeated.
        #[arg(long = "publish", short = 'p', value_name = "SPEC")]
        publish: Vec<String>,
    },
    /// Remove a pod; succeeds (with "removed": false) if it does not exist.
    #[command(alias = "remove")]
    Rm {
        /// The pod name.
        name: String,
    },
    /// Publish further host ports of an existing pod (those it has are skipped).
    Publish {
        /// The pod name.
        name: String,
        /// A host port to publish (as for `pod create`). At least one; may be repeated.
        #[arg(long = "publish", short = 'p', value_name = "SPEC", required = true)]
        publish: Vec<String>,
    },
    /// Withdraw a pod's host ports, freeing them for other pods (the pod stays wired).
    /// Idempotent; an error if the pod does not exist.
    ReleasePorts {
        /// The pod name.
        name: String,
    },
    /// List pods as a table, or as a JSON array with --json.
    #[command(alias = "list")]
    Ls {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a pod as JSON; exit 1 if it does not exist.
    Inspect {
        /// The pod name.
        name: String,
    },
    /// Write an OCI bundle config (config.json) for an app container that joins the pod's
    /// network namespace; print {"pod","netns","config"} as JSON.
    Spec(SpecArgs),
}

/// Arguments of `pod spec`.
#[derive(Debug, Args)]
pub struct SpecArgs {
    /// The pod name.
    pub name: String,
    /// The container's root file system: absolute, or relative to the bundle directory.
    #[arg(long, value_name = "DIR", default_value = "rootfs")]
    pub rootfs: PathBuf,
    /// The bundle directory to write config.json into (created if missing).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out: PathBuf,
    /// Replace an existing config.json.
    #[arg(long)]
    pub force: bool,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<String>,
}

/// Arguments of `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// The pod name.
    pub name: String,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "CMD"
    )]
    pub command: Vec<OsString>,
}

/// A command-line failure. The binary prints it as `error: <message>`.
#[derive(Debug, Error)]
pub enum CliError {
    /// A pod name argument is invalid (the message names it).
    #[error(transparent)]
    Name(#[from] NameError),
    /// An `--annotation` argument is invalid.
    #[error("annotation {value:?} is invalid: {reason}")]
    Annotation {
        /// The argument.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A `--publish` argument is invalid (the message names it and the bad part).
    #[error(transparent)]
    Publish(#[from] PortSpecError),
    /// A peer argument is invalid.
    #[error("{what} {value:?} is not {expected}")]
    PeerArg {
        /// `pod CIDR` or `node address`.
        what: &'static str,
        /// The argument.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The `--netns` argument cannot be made absolute.
    #[error("netns path {:?}: {source}", path.display().to_string())]
    NetnsPath {
        /// The argument.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Talking to the daemon failed, or it answered with an error (shown verbatim).
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon's answer is malformed.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// `pod spec`: the bundle config could not be made or written.
    #[error(transparent)]
    Spec(#[from] crate::spec::SpecError),
    /// The output could not be encoded.
    #[error("cannot encode the output as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `exec`: the pod's namespace could not be entered.
    #[error("cannot enter the network namespace {} of pod {pod}: {source}", netns.display())]
    EnterNetns {
        /// The pod.
        pod: PodName,
        /// The namespace path.
        netns: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// `exec`: the command could not be run.
    #[error("cannot run {:?} in pod {pod}: {source}", command.to_string_lossy())]
    Exec {
        /// The pod.
        pod: PodName,
        /// The program.
        command: OsString,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl CliError {
    /// The exit status for this error: 127 for a command that does not exist, 126 for
    /// one that cannot be run, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => 127,
            Self::Exec { .. } => 126,
            _ => 1,
        }
    }
}

/// What a client command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Print `stdout` (without trailing newline) and exit with `code`.
    Print {
        /// The output.
        stdout: String,
        /// The exit status.
        code: u8,
    },
    /// Enter `netns` and replace the process with `command` (see [`exec_in_netns`]).
    Exec {
        /// The pod.
        pod: PodName,
        /// Its network namespace.
        netns: PathBuf,
        /// The command and its arguments (not empty).
        command: Vec<OsString>,
    },
}

impl Outcome {
    fn json(value: &impl Serialize, code: u8) -> Result<Self, CliError> {
        Ok(Self::Print {
            stdout: serde_json::to_string(value)?,
            code,
        })
    }
}

/// Parses `KEY=VALUE` annotations (split at the first `=`; keys non-empty and unique).
pub fn parse_annotations(args: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut out = BTreeMap::new();
    for arg in args {
        let bad = |reason| CliError::Annotation {
            value: arg.clone(),
            reason,
        };
        let (key, value) = arg
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        if key.is_empty() {
            return Err(bad("the key is empty"));
        }
        if out.insert(key.to_string(), value.to_string()).is_some() {
            return Err(bad("the key is given more than once"));
        }
    }
    Ok(out)
}

/// A finding as printed by `check`.
fn finding_json(f: &pb::Finding) -> serde_json::Value {
    json!({
        "pod": f.pod,
        "object": f.object,
        "problem": f.problem,
        "message": f.message,
        "details": f.details,
    })
}

fn failures_json(failures: &[pb::NodeFailure]) -> serde_json::Value {
    failures
        .iter()
        .map(|f| json!({"pod": f.pod, "error": f.error}))
        .collect()
}

/// A repair report as printed by `check --repair` (the library's `ReconcileReport` shape).
fn repair_json(r: &pb::RepairResponse) -> serde_json::Value {
    let repaired: BTreeMap<&str, &Vec<String>> = r
        .repaired
        .iter()
        .map(|p| (p.pod.as_str(), &p.actions))
        .collect();
    json!({
        "rolled_back": r.rolled_back,
        "finished_removal": r.finished_removal,
        "removed_dead": r.removed_dead,
        "repaired": repaired,
        "orphans_removed": r.orphans_removed,
        "node_actions": r.node_actions,
        "failures": failures_json(&r.failures),
    })
}

/// `status` output.
#[derive(Serialize)]
struct StatusView<'a> {
    version: &'a str,
    socket: &'a str,
    pods: u64,
    ready: u64,
    unfinished: u64,
    bridge: &'a str,
    pools: Vec<PoolView<'a>>,
    state_file: &'a str,
    host_ports: u64,
    peers: Vec<serde_json::Value>,
    masquerade: bool,
    datapath: &'a str,
    egress_exempt: &'a [String],
    neighbour_tables: Option<serde_json::Value>,
    netns_pool: Option<serde_json::Value>,
    /// Cluster mode only.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct PoolView<'a> {
    cidr: &'a str,
    allocated: u64,
    capacity: u128,
}

fn status_view(s: &pb::StatusResponse) -> Result<StatusView<'_>, ResponseError> {
    let pools = s
        .pools
        .iter()
        .map(|p| {
            let capacity = p.capacity.parse().map_err(|e: std::num::ParseIntError| {
                ResponseError::Invalid {
                    field: "status.pools.capacity",
                    value: p.capacity.clone(),
                    reason: e.to_string(),
                }
            })?;
            Ok(PoolView {
                cidr: &p.cidr,
                allocated: p.allocated,
                capacity,
            })
        })
        .collect::<Result<_, ResponseError>>()?;
    Ok(StatusView {
        version: &s.version,
        socket: &s.socket,
        pods: s.pods,
        ready: s.ready,
        unfinished: s.unfinished,
        bridge: &s.bridge,
        pools,
        state_file: &s.state_file,
        host_ports: s.host_ports,
        peers: s
            .peers
            .iter()
            .map(|p| {
                let record = api::peer_record(p)?;
                Ok(json!({
                    "pod_cidr": record.pod_cidr.to_string(),
                    "via": record.via.to_string(),
                    "source": record.source.kind(),
                    "node": (!p.node.is_empty()).then_some(&p.node),
                    "configured": record.source == crate::peers::PeerSource::Config,
                }))
            })
            .collect::<Result<_, ResponseError>>()?,
        masquerade: s.masquerade,
        datapath: &s.datapath,
        egress_exempt: &s.egress_exempt,
        neighbour_tables: s.neighbour_tables.as_ref().map(neighbour_json),
        netns_pool: s
            .netns_pool
            .as_ref()
            .map(|p| json!({"ready": p.ready, "size": p.size})),
        cluster: s.cluster.as_ref().map(|c| {
            json!({
                "backend": c.backend,
                "node": c.node,
                "pod_cidr_v4": c.pod_cidr_v4,
                "pod_cidr_v6": (!c.pod_cidr_v6.is_empty()).then_some(&c.pod_cidr_v6),
                "lease_ttl_seconds": c.lease_ttl_seconds,
                "connected": c.connected,
                "conflict": (!c.conflict.is_empty()).then_some(&c.conflict),
                "unrouted": c.unrouted.iter().map(|u| json!({
                    "node": u.node, "pod_cidr": u.pod_cidr, "via": u.via, "reason": u.reason,
                })).collect::<Vec<_>>(),
            })
        }),
    })
}

/// The neighbour table sizing as `status` prints it.
fn neighbour_json(n: &pb::NeighbourTables) -> serde_json::Value {
    let thresholds = |t: &Option<pb::NeighbourThresholds>| {
        t.as_ref().map(|t| {
            json!({"gc_thresh1": t.gc_thresh1, "gc_thresh2": t.gc_thresh2, "gc_thresh3": t.gc_thresh3})
        })
    };
    json!({
        "capacity": n.capacity,
        "tables": n.tables.iter().map(|t| json!({
            "family": t.family,
            "previous": thresholds(&t.previous),
            "current": thresholds(&t.current),
            "required": thresholds(&t.required),
            "outcome": t.outcome,
            "error": (!t.error.is_empty()).then_some(&t.error),
            "pod_limit": t.pod_limit,
        })).collect::<Vec<_>>(),
    })
}

/// Parses `peer add` arguments.
fn peer_args(pod_cidr: &str, via: &str) -> Result<Peer, CliError> {
    Ok(Peer {
        pod_cidr: pod_cidr.parse().map_err(|_| CliError::PeerArg {
            what: "pod CIDR",
            value: pod_cidr.to_string(),
            expected: "a CIDR (ADDRESS/PREFIX)",
        })?,
        via: via.parse().map_err(|_| CliError::PeerArg {
            what: "node address",
            value: via.to_string(),
            expected: "an IP address",
        })?,
    })
}

/// The `pod ls` table.
pub fn pod_table(pods: &[PodInfo]) -> String {
    let mut rows = vec![[
        "NAME".to_string(),
        "ID".to_string(),
        "IPS".to_string(),
        "PAUSE".to_string(),
        "NETNS".to_string(),
    ]];
    for p in pods {
        rows.push([
            p.name.to_string(),
            p.id.to_string(),
            p.ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
            p.pause_pid
                .map_or_else(|| "-".to_string(), |pid| pid.to_string()),
            p.netns.display().to_string(),
        ]);
    }
    let mut widths = [0usize; 5];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<w$}  "));
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs a client command against the daemon at `socket`. Arguments are validated before
/// connecting. `exec` does not run anything here: it returns [`Outcome::Exec`] for the
/// caller to carry out with [`exec_in_netns`] once its async runtime is gone.
pub async fn run(socket: &Path, command: ClientCommand, log: &Logger) -> Result<Outcome, CliError> {
    match command {
        ClientCommand::Pod(PodCommand::Create {
            name,
            no_pause,
            annotations,
            publish,
        }) => {
            let name = PodName::new(name)?;
            let annotations = parse_annotations(&annotations)?;
            let ports = ports::parse_publish_all(&publish)?;
            let mut client = connect(socket, log).await?;
            let r = client
                .create_pod_with_ports(&name, no_pause, annotations, &ports)
                .await?;
            Outcome::json(&api::required_pod("CreatePod", r.pod)?, 0)
        }
        ClientCommand::Pod(PodCommand::Attach {
            name,
            netns,
            annotations,
            publish,
        }) => {
            let name = PodName::new(name)?;
            let annotations = parse_annotations(&annotations)?;
            let ports = ports::parse_publish_all(&publish)?;
            let netns = std::path::absolute(&netns).map_err(|source| CliError::NetnsPath {
                path: netns.clone(),
                source,
            })?;
            let mut client = connect(socket, log).await?;
            let r = client
                .attach_pod_with_ports(&name, &netns, annotations, &ports)
                .await?;
            Outcome::json(&api::required_pod("AttachPod", r.pod)?, 0)
        }
        ClientCommand::Pod(PodCommand::Rm { name }) => {
            let name = PodName::new(name)?;
            let mut client = connect(socket, log).await?;
            let r = client.remove_pod(&name).await?;
            Outcome::json(&json!({"name": name.as_str(), "removed": r.removed}), 0)
        }
        ClientCommand::Pod(PodCommand::Publish { name, publish }) => {
            let name = PodName::new(name)?;
            let ports = ports::parse_publish_all(&publish)?;
            let mut client = connect(socket, log).await?;
            let r = client.publish_pod_ports(&name, &ports).await?;
            Outcome::json(&api::required_pod("PublishPodPorts", r.pod)?, 0)
        }
        ClientCommand::Pod(PodCommand::ReleasePorts { name }) => {
            let name = PodName::new(name)?;
            let mut client = connect(socket, log).await?;
            let r = client.release_pod_ports(&name).await?;
            Outcome::json(&json!({"name": name.as_str(), "released": r.released}), 0)
        }
        ClientCommand::Pod(PodCommand::Ls { json }) => {
            let mut client = connect(socket, log).await?;
            let pods = client
                .list_pods()
                .await?
                .pods
                .into_iter()
                .map(api::pod_info)
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                Outcome::json(&pods, 0)
            } else {
                Ok(Outcome::Print {
                    stdout: pod_table(&pods),
                    code: 0,
                })
            }
        }
        ClientCommand::Pod(PodCommand::Inspect { name }) => {
            let name = PodName::new(name)?;
            let mut client = connect(socket, log).await?;
            let r = client.get_pod(&name).await?;
            Outcome::json(&api::required_pod("GetPod", r.pod)?, 0)
        }
        ClientCommand::Pod(PodCommand::Spec(args)) => {
            let name = PodName::new(args.name)?;
            let mut client = connect(socket, log).await?;
            let pod = api::required_pod("GetPod", client.get_pod(&name).await?.pod)?;
            let spec = crate::spec::pod_spec(&crate::spec::PodSpecParams {
                pod: name.clone(),
                netns: pod.netns.clone(),
                rootfs: args.rootfs,
                args: args.command,
            })?;
            std::fs::create_dir_all(&args.out).map_err(|source| crate::spec::SpecError::Write {
                path: args.out.clone(),
                source,
            })?;
            let config = crate::spec::write_config(&name, &args.out, &spec, args.force)?;
            Outcome::json(
                &json!({"pod": name.as_str(), "netns": pod.netns, "config": config}),
                0,
            )
        }
        ClientCommand::Exec(ExecArgs { name, command }) => {
            let name = PodName::new(name)?;
            let mut client = connect(socket, log).await?;
            let pod = api::required_pod("GetPod", client.get_pod(&name).await?.pod)?;
            Ok(Outcome::Exec {
                pod: name,
                netns: pod.netns,
                command,
            })
        }
        ClientCommand::Check { repair } => {
            let mut client = connect(socket, log).await?;
            let before = client.check().await?.findings;
            let findings: Vec<_> = before.iter().map(finding_json).collect();
            if before.is_empty() {
                return Outcome::json(&json!({"drift": false, "findings": findings}), 0);
            }
            if !repair {
                return Outcome::json(&json!({"drift": true, "findings": findings}), 1);
            }
            let report = client.repair().await?;
            let after = client.check().await?.findings;
            let code = u8::from(!after.is_empty() || !report.failures.is_empty());
            Outcome::json(
                &json!({
                    "drift": true,
                    "findings": findings,
                    "repair": repair_json(&report),
                    "remaining": after.iter().map(finding_json).collect::<Vec<_>>(),
                }),
                code,
            )
        }
        ClientCommand::Gc { keep } => {
            for k in &keep {
                PodName::new(k.as_str())?;
            }
            let mut client = connect(socket, log).await?;
            let r = client.gc(keep).await?;
            let code = u8::from(!r.failures.is_empty());
            Outcome::json(
                &json!({
                    "removed": r.removed,
                    "kept": r.kept,
                    "failures": failures_json(&r.failures),
                }),
                code,
            )
        }
        ClientCommand::Status => {
            let mut client = connect(socket, log).await?;
            let status = client.status().await?;
            Outcome::json(&status_view(&status)?, 0)
        }
        ClientCommand::Reload => {
            let mut client = connect(socket, log).await?;
            let r = client.reload().await?;
            let code = u8::from(!r.failures.is_empty());
            Outcome::json(
                &json!({
                    "host_port_elements": r.host_port_elements,
                    "peer_routes": r.peer_routes,
                    "actions": r.actions,
                    "failures": failures_json(&r.failures),
                }),
                code,
            )
        }
        ClientCommand::Peer(PeerCommand::Add { pod_cidr, via }) => {
            let peer = peer_args(&pod_cidr, &via)?;
            let mut client = connect(socket, log).await?;
            let r = client.add_peer(&peer).await?;
            let record = api::peer_record(&r.peer.ok_or(ResponseError::Missing {
                method: "AddPeer",
                field: "peer",
            })?)?;
            Outcome::json(&json!({"peer": record, "added": r.added}), 0)
        }
        ClientCommand::Peer(PeerCommand::Rm { pod_cidr }) => {
            let cidr: ipnet::IpNet = pod_cidr.parse().map_err(|_| CliError::PeerArg {
                what: "pod CIDR",
                value: pod_cidr.clone(),
                expected: "a CIDR (ADDRESS/PREFIX)",
            })?;
            let mut client = connect(socket, log).await?;
            let r = client.remove_peer(&cidr).await?;
            Outcome::json(&json!({"pod_cidr": cidr, "removed": r.removed}), 0)
        }
        ClientCommand::Peer(PeerCommand::Ls) => {
            let mut client = connect(socket, log).await?;
            let peers = client
                .list_peers()
                .await?
                .peers
                .iter()
                .map(api::peer_record)
                .collect::<Result<Vec<_>, _>>()?;
            Outcome::json(&peers, 0)
        }
    }
}

async fn connect(socket: &Path, log: &Logger) -> Result<Client, ClientError> {
    debug!(log, "connecting"; "socket" => %socket.display());
    Client::connect(socket).await
}

/// Enters the network namespace at `netns` (`setns(CLONE_NEWNET)` on the calling thread)
/// and replaces the process with `command`. Returns only on failure.
///
/// Call it with no async runtime left running (other threads keep their namespace, but
/// they all vanish with `execve`). Needs `CAP_SYS_ADMIN`.
pub fn exec_in_netns(pod: &PodName, netns: &Path, command: &[OsString]) -> CliError {
    let enter = |source| CliError::EnterNetns {
        pod: pod.clone(),
        netns: netns.to_path_buf(),
        source,
    };
    let file = match File::open(netns) {
        Ok(f) => f,
        Err(e) => return enter(e),
    };
    if let Err(errno) = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET) {
        return enter(io::Error::from(errno));
    }
    drop(file);
    let Some((program, args)) = command.split_first() else {
        return CliError::Exec {
            pod: pod.clone(),
            command: OsString::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no command given"),
        };
    };
    let source = std::process::Command::new(program).args(args).exec();
    CliError::Exec {
        pod: pod.clone(),
        command: program.clone(),
        source,
    }
}

#[cfg(test)]
mod tests;
