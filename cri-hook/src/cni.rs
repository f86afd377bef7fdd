//! The CNI entry: `cri-hook` run as a CNI plugin (spec 1.1; it answers 0.3.0 to 1.1.0).
//!
//! The runtime executes the plugin with `CNI_COMMAND` (and the other `CNI_*` variables) in
//! the environment and the network configuration on stdin; `main.rs` dispatches here
//! whenever `CNI_COMMAND` is set, so the binary can be installed as
//! `/opt/cni/bin/netns-holder` (a symlink to `cri-hook`). Every command becomes calls of the
//! netns-holder daemon's API; no networking is done here.
//!
//! | command | what it does |
//! |---|---|
//! | `ADD` | `AttachPod` of `CNI_NETNS` under the pod name (below), marked as ours, publishing `runtimeConfig.portMappings`; prints the `Result`. Idempotent: the same ADD again returns the same pod |
//! | `DEL` | removes the daemon pod of this container if it is ours, with its host ports; missing pod, missing netns: success |
//! | `CHECK` | the pod exists, is ours, has the namespace `CNI_NETNS`, `prevResult`'s addresses and every one of the configuration's `portMappings` (published, not released; the NRI plugin may have added annotation ports), and the daemon's `Check` finds no drift on it (its host port elements included) |
//! | `STATUS` | succeeds when the daemon answers `Status` |
//! | `GC` | removes every pod of this network that is ours and not in `cni.dev/valid-attachments` |
//! | `VERSION` | prints the supported versions |
//!
//! # Configuration
//!
//! ```json
//! {"cniVersion": "1.1.0", "name": "pods", "type": "netns-holder",
//!  "daemonSocket": "/run/netns-holder/api.sock", "daemonTimeoutMs": 10000,
//!  "capabilities": {"portMappings": true}}
//! ```
//!
//! `type` is required (code 7 without it), as are `cniVersion` and `name`. `daemonSocket`
//! and `daemonTimeoutMs` (the bound of the whole conversation with the daemon) are optional;
//! the defaults are shown. Addresses, bridge and MTU are the daemon's, not the
//! configuration's. A `prevResult` given to ADD (a plugin before us in the chain) is not
//! passed on: this plugin creates the pod interface and reports only what it made.
//!
//! # Host ports
//!
//! With the `portMappings` capability the runtime passes the CRI `hostPort`s as
//! `runtimeConfig.portMappings`, entries as the reference `portmap` plugin reads them:
//! `{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "10.0.0.1"}`.
//! containerd sends Go field names instead, `{"HostPort":18081,"ContainerPort":8080,
//! "Protocol":"tcp","HostIP":""}`; the keys are matched as Go's `encoding/json` matches
//! them, in any casing, a later duplicate winning ([`wire::port_mapping`] has the rule).
//! `protocol` defaults to `tcp` (`udp`, `sctp`; any case), `hostIP` absent or empty means
//! every node address (in each family the pod has; `0.0.0.0` / `::` one family only, as
//! for `netns-holder pod create --publish`). ADD publishes them with the pod in one daemon
//! call (the daemon's nftables maps, no `portmap` plugin needed in the chain); DEL removes
//! them with the pod. A malformed entry is code 7 naming its index, the entry and the
//! problem, checked before the daemon is called, so nothing is left behind; a port another
//! pod (or a socket on the node) holds is code 102 naming the holder. `portMappings` are
//! only read by ADD and CHECK: a DEL never fails on them.
//!
//! # How containerd calls it
//!
//! What containerd 2.3.4 (go-cni 1.1.13, libcni 1.3.0) sent, recorded in
//! `tests/captures/containerd-2.3.4/` and replayed by `tests/tests/cni_replay.rs`:
//!
//! - stdin is the conflist entry with `cniVersion` and `name` added, compact, keys sorted;
//!   `runtimeConfig` is present only when the pod has port mappings, and comes again on DEL;
//! - per pod **one ADD and two DELs**: ADD at RunPodSandbox; DEL at StopPodSandbox with
//!   `prevResult` and the real `CNI_NETNS`; DEL again at RemovePodSandbox with
//!   `CNI_NETNS=""` and no `prevResult`, which must succeed as a no-op. A failed ADD is
//!   followed at once by a DEL with the same `CNI_NETNS` and no `prevResult` (its failure
//!   is only logged), and no later DEL comes;
//! - `CNI_ARGS` holds `IgnoreUnknown=1`, `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
//!   `K8S_POD_INFRA_CONTAINER_ID`, `K8S_POD_UID` in an order that changes between calls;
//! - **STATUS only when a CRI client calls Status** (kubelet does every few seconds; an idle
//!   containerd sends none), with `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME` and
//!   `CNI_ARGS` set and empty; a failing STATUS makes the node's `NetworkReady` false with
//!   our `msg`;
//! - **no CHECK, no GC and no VERSION** ever; a containerd restart sends nothing, and a later
//!   stop still sends DEL with `prevResult` (libcni's cache survives the restart).
//!
//! An error's `msg` reaches the CRI client verbatim (`plugin type="netns-holder" failed
//! (add): <msg>`).
//!
//! # Pod names and ownership
//!
//! With `K8S_POD_NAMESPACE` and `K8S_POD_NAME` in `CNI_ARGS` (kubelet's runtimes pass them,
//! and `CNI_CONTAINERID` is then the CRI sandbox id) the daemon pod gets the same name the
//! NRI plugin derives for that sandbox ([`crate::pod::derived_name`]:
//! `<namespace>_<name>_<sandbox id[..12]>`); otherwise the name is `CNI_CONTAINERID` itself.
//! The pod carries the annotations [`OWNER_ANNOTATION`]`=`[`OWNER_CNI`], [`NETWORK_ANNOTATION`],
//! [`CONTAINER_ANNOTATION`] and [`IFNAME_ANNOTATION`]; DEL and GC only ever remove pods marked
//! as ours (for DEL: of this container), so pods made by hand, by the NRI plugin or by the
//! OCI hook are never touched. Only `CNI_IFNAME=eth0` can be added (the daemon names the pod
//! interface `eth0`); DEL of another interface name has nothing to do and succeeds.
//!
//! # Errors
//!
//! Errors are the CNI error object on stdout (`{"cniVersion","code","msg","details"}`) and
//! exit status 1; the message is also written to stderr as one line. Its `cniVersion` is
//! the configuration's whenever that can be read, even if other fields are invalid (wrong
//! types, invalid UTF-8, truncated JSON; see [`wire::answer_version`]), else the newest we
//! support. Codes:
//!
//! | code | meaning |
//! |---|---|
//! | 1 | the configuration's `cniVersion` is not supported |
//! | 3 | CHECK: no pod for this container; ADD: the namespace does not exist |
//! | 4 | a `CNI_*` variable is missing or invalid (named) |
//! | 5 | stdin could not be read |
//! | 6 | the configuration or `prevResult` cannot be decoded |
//! | 7 | invalid configuration (no name or type, a malformed `portMappings` entry, GC without `cni.dev/valid-attachments`) |
//! | 11 | the daemon did not answer in time, or is shutting down: try again later |
//! | 50 | the daemon is not reachable (STATUS: the plugin is not available) |
//! | 100 | the daemon refused or failed the request (its message is passed on) |
//! | 101 | the pod address pool is exhausted |
//! | 102 | a pod of that name or namespace exists with other parameters, or a host port is taken (the holder named) |
//! | 103 | CHECK: the pod network differs from what ADD set up |
//! | 104 | the daemon's answer is malformed |

pub mod wire;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use netns_holder_client::api::{self, pb};
use netns_holder_client::client::{Client, ClientError};
use netns_holder_core::manager::PodInfo;
use netns_holder_core::names::PodName;
use netns_holder_core::ports::{self, PortMapping};
use serde_json::Value;

pub use wire::{CniError, Command, Env, NetConf, code};

use crate::pod::OWNER_ANNOTATION;

/// Value of [`OWNER_ANNOTATION`] on daemon pods made by the CNI entry.
pub const OWNER_CNI: &str = "cni";
/// Daemon pod annotation: the CNI network name.
pub const NETWORK_ANNOTATION: &str = "netns-holder.io/cni-network";
/// Daemon pod annotation: `CNI_CONTAINERID`.
pub const CONTAINER_ANNOTATION: &str = "netns-holder.io/cni-container-id";
/// Daemon pod annotation: `CNI_IFNAME`.
pub const IFNAME_ANNOTATION: &str = "netns-holder.io/cni-ifname";

/// Default bound of the whole conversation with the daemon.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon pod name for this invocation (see the module documentation).
pub fn pod_name(env: &Env) -> Result<PodName, CniError> {
    let id = env.require_container_id()?;
    match (
        env.args.get("K8S_POD_NAMESPACE"),
        env.args.get("K8S_POD_NAME"),
    ) {
        (Some(namespace), Some(name)) => {
            let sandbox = nri::pb::PodSandbox {
                id: id.to_string(),
                name: name.clone(),
                namespace: namespace.clone(),
                ..Default::default()
            };
            crate::pod::derived_name(&sandbox)
                .map_err(|e| CniError::new(code::INVALID_ENV, e.to_string()))
        }
        _ => PodName::new(id).map_err(|e| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_CONTAINERID cannot name a pod: {e}"),
            )
        }),
    }
}

/// The annotations of the daemon pod made for `container_id`/`ifname` on `network`.
pub fn pod_annotations(
    network: &str,
    container_id: &str,
    ifname: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (OWNER_ANNOTATION.to_string(), OWNER_CNI.to_string()),
        (NETWORK_ANNOTATION.to_string(), network.to_string()),
        (CONTAINER_ANNOTATION.to_string(), container_id.to_string()),
        (IFNAME_ANNOTATION.to_string(), ifname.to_string()),
    ])
}

/// Whether a daemon pod's annotations mark it as made by the CNI entry (for `container_id`,
/// if given).
pub fn owned_by_cni(annotations: &BTreeMap<String, String>, container_id: Option<&str>) -> bool {
    annotations.get(OWNER_ANNOTATION).map(String::as_str) == Some(OWNER_CNI)
        && container_id
            .is_none_or(|id| annotations.get(CONTAINER_ANNOTATION).map(String::as_str) == Some(id))
}

/// The CNI pods of `network` that GC removes: ours, on that network, and not in `valid`.
pub fn gc_victims<'p>(
    pods: &'p [pb::Pod],
    network: &str,
    valid: &[wire::Attachment],
) -> Vec<&'p pb::Pod> {
    pods.iter()
        .filter(|pod| owned_by_cni(&pod.annotations, None))
        .filter(|pod| pod.annotations.get(NETWORK_ANNOTATION).map(String::as_str) == Some(network))
        .filter(|pod| {
            let id = pod
                .annotations
                .get(CONTAINER_ANNOTATION)
                .map(String::as_str);
            let ifname = pod.annotations.get(IFNAME_ANNOTATION).map(String::as_str);
            !valid
                .iter()
                .any(|a| Some(a.container_id.as_str()) == id && Some(a.ifname.as_str()) == ifname)
        })
        .collect()
}

/// The CNI error for a failed daemon call.
fn daemon_error(error: ClientError) -> CniError {
    use tonic::Code;
    let message = error.to_string();
    let code = match &error {
        ClientError::Connect { .. } => code::DAEMON_UNREACHABLE,
        ClientError::Rpc { status, .. } => match status.code() {
            Code::NotFound => code::UNKNOWN_CONTAINER,
            Code::ResourceExhausted => code::POOL_EXHAUSTED,
            Code::AlreadyExists | Code::FailedPrecondition => code::CONFLICT,
            Code::Unavailable | Code::DeadlineExceeded => code::TRY_AGAIN_LATER,
            _ => code::DAEMON_FAILED,
        },
    };
    CniError::new(code, message)
}

fn bad_answer(error: api::ResponseError) -> CniError {
    CniError::new(code::BAD_ANSWER, error.to_string())
}

/// The daemon connection of one invocation.
struct Daemon {
    client: Client,
}

impl Daemon {
    async fn connect(socket: &Path) -> Result<Self, CniError> {
        Ok(Self {
            client: Client::connect(socket).await.map_err(daemon_error)?,
        })
    }

    /// `GetPod`; `None` when there is no such pod.
    async fn get(&mut self, name: &PodName) -> Result<Option<pb::Pod>, CniError> {
        match self.client.get_pod(name).await {
            Ok(answer) => answer.pod.map(Some).ok_or_else(|| {
                bad_answer(api::ResponseError::Missing {
                    method: "GetPod",
                    field: "pod",
                })
            }),
            Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(None),
            Err(e) => Err(daemon_error(e)),
        }
    }

    async fn remove(&mut self, name: &PodName) -> Result<bool, CniError> {
        Ok(self
            .client
            .remove_pod(name)
            .await
            .map_err(daemon_error)?
            .removed)
    }
}

/// Runs one command; `Ok(Some(json))` is printed on stdout.
pub async fn run(env: &Env, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    if env.command == Command::Version {
        return Ok(Some(wire::version_info()));
    }
    let conf = NetConf::parse(stdin)?;
    let socket = conf
        .daemon_socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(netns_holder_core::config::DEFAULT_SOCKET));
    let timeout = conf
        .daemon_timeout_ms
        .map_or(DEFAULT_TIMEOUT, Duration::from_millis);
    let work = async {
        match env.command {
            Command::Add => add(env, &conf, &socket).await.map(Some),
            Command::Del => del(env, &socket).await.map(|()| None),
            Command::Check => check(env, &conf, &socket).await.map(|()| None),
            Command::Status => status(&socket).await.map(|()| None),
            Command::Gc => gc(&conf, &socket).await.map(|()| None),
            Command::Version => unreachable!("answered above"),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(CniError::new(
            if env.command == Command::Status {
                code::DAEMON_UNREACHABLE
            } else {
                code::TRY_AGAIN_LATER
            },
            format!(
                "netns-holder at {} did not answer {} within {timeout:?}",
                socket.display(),
                env.command
            ),
        )),
    }
}

async fn add(env: &Env, conf: &NetConf, socket: &Path) -> Result<Value, CniError> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let netns = env.require_netns()?;
    if ifname != wire::POD_IFNAME {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_IFNAME={ifname:?}: netns-holder can only create the pod interface {:?}",
                wire::POD_IFNAME
            ),
        ));
    }
    let ports = conf.port_mappings()?;
    let name = pod_name(env)?;
    let annotations = pod_annotations(&conf.name, container_id, ifname);
    let mut daemon = Daemon::connect(socket).await?;
    let answer = daemon
        .client
        .attach_pod_with_ports(&name, netns, annotations, &ports)
        .await
        .map_err(daemon_error)?;
    let pod = api::required_pod("AttachPod", answer.pod).map_err(bad_answer)?;
    Ok(wire::add_result(
        &conf.cni_version,
        &pod_network(&pod, netns),
    ))
}

fn pod_network(pod: &PodInfo, sandbox: &Path) -> wire::PodNetwork {
    wire::PodNetwork {
        host_veth: pod.host_veth.to_string(),
        interface: pod.interface.to_string(),
        sandbox: sandbox.to_path_buf(),
        ips: pod.ips.clone(),
        gateways: pod.gateways.clone(),
    }
}

async fn del(env: &Env, socket: &Path) -> Result<(), CniError> {
    let container_id = env.require_container_id()?;
    if env.ifname.as_deref().is_some_and(|i| i != wire::POD_IFNAME) {
        // ADD never succeeds for another interface name: nothing of ours to remove.
        return Ok(());
    }
    let mut daemon = Daemon::connect(socket).await?;
    // The derived name, and any pod marked for this container (should CNI_ARGS differ from
    // ADD's).
    let mut names: Vec<PodName> = pod_name(env).ok().into_iter().collect();
    let listed = daemon.client.list_pods().await.map_err(daemon_error)?.pods;
    for pod in listed {
        if owned_by_cni(&pod.annotations, Some(container_id)) {
            let name = PodName::new(pod.name.clone()).map_err(|e| {
                bad_answer(api::ResponseError::Invalid {
                    field: "pod.name",
                    value: pod.name.clone(),
                    reason: e.to_string(),
                })
            })?;
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    for name in names {
        match daemon.get(&name).await? {
            Some(pod) if owned_by_cni(&pod.annotations, Some(container_id)) => {
                daemon.remove(&name).await?;
            }
            // Gone already, or not ours (made by hand, by NRI or by the OCI hook).
            _ => {}
        }
    }
    Ok(())
}

async fn check(env: &Env, conf: &NetConf, socket: &Path) -> Result<(), CniError> {
    let container_id = env.require_container_id()?;
    let ifname = env.require_ifname()?;
    let netns = env.require_netns()?;
    let name = pod_name(env)?;
    let mut daemon = Daemon::connect(socket).await?;
    let pod = match daemon.get(&name).await? {
        Some(pod) if owned_by_cni(&pod.annotations, Some(container_id)) => pod,
        Some(_) => {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("pod {name} was not made by the CNI entry for container {container_id}"),
            ));
        }
        None => {
            return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!(
                    "container {container_id} ({ifname}) has no pod {name} on network {:?}",
                    conf.name
                ),
            ));
        }
    };
    let drift = |msg: String| CniError::new(code::CHECK_FAILED, format!("pod {name}: {msg}"));
    let info = api::pod_info(pod).map_err(bad_answer)?;
    let wanted = conf.port_mappings()?;
    // The pod may hold more: the NRI plugin publishes its annotation ports on top.
    let have = ports::canonical(&info.ports);
    if ports::canonical(&wanted).iter().any(|p| !have.contains(p)) {
        return Err(drift(format!(
            "its host ports are [{}], runtimeConfig.portMappings has [{}]",
            port_list(&info.ports),
            port_list(&wanted)
        )));
    }
    if info.ports_released && !wanted.is_empty() {
        return Err(drift(format!(
            "its host ports [{}] were released (ReleasePodPorts): they are no longer published",
            port_list(&info.ports)
        )));
    }
    if info.netns != netns {
        return Err(drift(format!(
            "its network namespace is {}, not CNI_NETNS {}",
            info.netns.display(),
            netns.display()
        )));
    }
    if let Some(prev) = &conf.prev_result {
        let mut expected = wire::prev_result_addresses(prev)?;
        let mut actual = info.ips.clone();
        expected.sort();
        actual.sort();
        if expected != actual {
            return Err(drift(format!(
                "its addresses are {actual:?}, prevResult has {expected:?}"
            )));
        }
    }
    let findings: Vec<String> = daemon
        .client
        .check()
        .await
        .map_err(daemon_error)?
        .findings
        .into_iter()
        .filter(|f| f.pod.as_deref() == Some(name.as_str()))
        .map(|f| format!("{}: {}", f.object, f.message))
        .collect();
    if !findings.is_empty() {
        return Err(drift(findings.join("; ")));
    }
    Ok(())
}

/// `tcp 8080 -> 80, udp 53 -> 5353`, or `none`.
fn port_list(ports: &[PortMapping]) -> String {
    if ports.is_empty() {
        return "none".to_string();
    }
    ports
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

async fn status(socket: &Path) -> Result<(), CniError> {
    let mut daemon = Daemon::connect(socket).await?;
    daemon
        .client
        .status()
        .await
        .map_err(|e| CniError::new(code::DAEMON_UNREACHABLE, daemon_error(e).msg))?;
    Ok(())
}

async fn gc(conf: &NetConf, socket: &Path) -> Result<(), CniError> {
    let valid = conf.gc_attachments().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (refusing to collect every pod of the network)",
        )
    })?;
    let mut daemon = Daemon::connect(socket).await?;
    let pods = daemon.client.list_pods().await.map_err(daemon_error)?.pods;
    let mut failures = Vec::new();
    for pod in gc_victims(&pods, &conf.name, valid) {
        let result = match PodName::new(pod.name.clone()) {
            Ok(name) => daemon.remove(&name).await.map(|_| ()),
            Err(e) => Err(CniError::new(code::BAD_ANSWER, e.to_string())),
        };
        if let Err(e) = result {
            failures.push(format!("pod {}: {}", pod.name, e.msg));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::DAEMON_FAILED,
            format!(
                "GC could not remove {} pod(s): {}",
                failures.len(),
                failures.join("; ")
            ),
        ))
    }
}

/// The CNI plugin's process: reads the environment and stdin, runs the command on a
/// single-threaded runtime, prints the result or the error object on stdout (the error also
/// as one line on stderr) and returns the exit status.
pub fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let env = Env::from_lookup(|key| std::env::var(key).ok());
    let read = match &env {
        // VERSION may be run with nothing on stdin; everything else needs the configuration.
        Ok(env) if env.command == Command::Version => Ok(()),
        _ => std::io::stdin().read_to_end(&mut stdin).map(|_| ()),
    };
    let version = wire::answer_version(&stdin);
    let outcome = match (env, read) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(CniError::new(
            code::IO,
            format!("cannot read the network configuration from stdin: {e}"),
        )),
        (Ok(env), Ok(())) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(run(&env, &stdin)),
            Err(e) => Err(CniError::new(
                code::IO,
                format!("cannot start the async runtime: {e}"),
            )),
        },
    };
    match outcome {
        Ok(Some(value)) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            println!("{}", e.to_json(&version));
            eprintln!("netns-holder CNI: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(args: &str) -> Env {
        Env::from_lookup(|k| match k {
            "CNI_COMMAND" => Some("ADD".into()),
            "CNI_CONTAINERID" => Some("3f2a9c1b7d4e5f60718293a4b5c6d7e8".into()),
            "CNI_ARGS" => Some(args.into()),
            _ => None,
        })
        .unwrap()
    }

    #[test]
    fn names_follow_the_nri_derivation_with_k8s_args() {
        let name = pod_name(&env("K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")).unwrap();
        assert_eq!(name.as_str(), "default_web-0_3f2a9c1b7d4e");
        let name = pod_name(&env("")).unwrap();
        assert_eq!(name.as_str(), "3f2a9c1b7d4e5f60718293a4b5c6d7e8");
    }

    fn pod(name: &str, annotations: BTreeMap<String, String>) -> pb::Pod {
        pb::Pod {
            name: name.into(),
            annotations,
            ..Default::default()
        }
    }

    #[test]
    fn gc_takes_only_our_stale_pods_of_this_network() {
        let pods = vec![
            pod("keep", pod_annotations("net", "a", "eth0")),
            pod("stale", pod_annotations("net", "b", "eth0")),
            pod("other-net", pod_annotations("other", "c", "eth0")),
            pod("by-hand", BTreeMap::new()),
            pod(
                "nri",
                BTreeMap::from([(OWNER_ANNOTATION.into(), "nri".into())]),
            ),
        ];
        let valid = [wire::Attachment {
            container_id: "a".into(),
            ifname: "eth0".into(),
        }];
        let victims: Vec<&str> = gc_victims(&pods, "net", &valid)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(victims, ["stale"]);
        assert!(owned_by_cni(&pods[0].annotations, Some("a")));
        assert!(!owned_by_cni(&pods[0].annotations, Some("b")));
        assert!(!owned_by_cni(&pods[3].annotations, None));
    }

    #[test]
    fn daemon_errors_map_to_codes() {
        let rpc = |code| ClientError::Rpc {
            method: "AttachPod",
            status: tonic::Status::new(code, "pod x: because"),
        };
        assert_eq!(
            daemon_error(rpc(tonic::Code::NotFound)).code,
            code::UNKNOWN_CONTAINER
        );
        assert_eq!(
            daemon_error(rpc(tonic::Code::ResourceExhausted)).code,
            code::POOL_EXHAUSTED
        );
        assert_eq!(
            daemon_error(rpc(tonic::Code::AlreadyExists)).code,
            code::CONFLICT
        );
        assert_eq!(
            daemon_error(rpc(tonic::Code::Internal)).code,
            code::DAEMON_FAILED
        );
        assert_eq!(
            daemon_error(rpc(tonic::Code::Internal)).msg,
            "pod x: because"
        );
        let connect = ClientError::Connect {
            path: PathBuf::from("/x.sock"),
            reason: "No such file or directory (os error 2)".into(),
        };
        let e = daemon_error(connect);
        assert_eq!(e.code, code::DAEMON_UNREACHABLE);
        assert!(e.msg.contains("/x.sock"), "{e}");
    }
}
