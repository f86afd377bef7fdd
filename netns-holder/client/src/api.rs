//! The gRPC API's glue: conversions between the library's types and the
//! `netns_holder.v1` protobuf messages ([`pb`]), and the mapping of library errors to gRPC
//! status codes.
//!
//! Server side, records, findings and reports become messages; client side, messages are
//! validated back into library types ([`pod_info`]), so a malformed answer is reported as a
//! [`ResponseError`] naming the field rather than printed as if it were fine.
//!
//! Status codes (the message is always the library's error text, which names the pod and
//! the object concerned):
//!
//! | error | code |
//! |---|---|
//! | malformed pod name, netns path, annotation, keep entry, port mapping, peer | `INVALID_ARGUMENT` |
//! | [`ManagerError::Ports`], [`ManagerError::PortAddress`], an invalid peer | `INVALID_ARGUMENT` |
//! | `GetPod` of a missing pod; [`ManagerError::NetnsNotFound`], [`ManagerError::NotFound`] | `NOT_FOUND` |
//! | [`ManagerError::Conflict`], [`ManagerError::IdCollision`], a peer CIDR routed elsewhere | `ALREADY_EXISTS` |
//! | [`ManagerError::NetnsInUse`], [`ManagerError::Unfinished`] | `FAILED_PRECONDITION` |
//! | [`ManagerError::PortInUse`], removing a configured peer, a foreign route in the way | `FAILED_PRECONDITION` |
//! | [`ManagerError::Ipam`] (pool exhausted) | `RESOURCE_EXHAUSTED` |
//! | kernel, state file, create/remove/release step failures | `INTERNAL` |
//! | caller is not root (see `server::PeerCheck`) | `PERMISSION_DENIED` |

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use thiserror::Error;
use tonic::{Code, Status};

use netns_holder_core::finding::Finding;
use netns_holder_core::manager::{
    GcReport, ManagerError, NodeFailure, PodInfo, ReconcileReport, ReloadReport,
};
use netns_holder_core::names::{IfName, NameError, PodId, PodName};
use netns_holder_core::peers::{Peer, PeerError, PeerRecord, PeerSource};
use netns_holder_core::ports::{self, PortMapping, Protocol};
use netns_holder_core::record::{Phase, PodRecord};
use netns_holder_core::system::SystemError;

/// The generated protobuf messages, client and server of `netns_holder.v1`.
pub use netns_holder_proto::api::v1 as pb;

/// A daemon answer that does not hold what the API promises, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResponseError {
    /// A required message field is absent.
    #[error("the daemon's {method} answer has no {field}")]
    Missing {
        /// The RPC.
        method: &'static str,
        /// The absent field.
        field: &'static str,
    },
    /// A field does not parse as its type.
    #[error("the daemon sent an invalid {field} {value:?}: {reason}")]
    Invalid {
        /// The field, e.g. `pod.ips`.
        field: &'static str,
        /// The value received.
        value: String,
        /// Why it is invalid.
        reason: String,
    },
}

fn invalid(field: &'static str, value: &str, reason: impl ToString) -> ResponseError {
    ResponseError::Invalid {
        field,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

// ---------------------------------------------------------------- server side: messages

/// The message for a pod returned by `create`/`attach`, with the annotations it was
/// created with.
pub fn pod_message(info: &PodInfo, annotations: &BTreeMap<String, String>) -> pb::Pod {
    pb::Pod {
        name: info.name.to_string(),
        id: info.id.to_string(),
        netns: info.netns.display().to_string(),
        pause_pid: info.pause_pid,
        ips: info.ips.iter().map(ToString::to_string).collect(),
        gateways: info.gateways.iter().map(ToString::to_string).collect(),
        interface: info.interface.to_string(),
        host_veth: info.host_veth.to_string(),
        annotations: annotations.clone(),
        ports: info.ports.iter().map(port_message).collect(),
        ports_released: info.ports_released,
    }
}

/// The message for one host port.
pub fn port_message(p: &PortMapping) -> pb::PortMapping {
    pb::PortMapping {
        protocol: match p.protocol {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
            Protocol::Sctp => pb::Protocol::Sctp,
        } as i32,
        host_ip: p.host_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        host_port: u32::from(p.host_port),
        container_port: u32::from(p.container_port),
    }
}

/// A host port from its message (server and client side); the error says what is wrong.
pub fn port_mapping(m: &pb::PortMapping) -> Result<PortMapping, String> {
    let protocol = match pb::Protocol::try_from(m.protocol) {
        Ok(pb::Protocol::Tcp) => Protocol::Tcp,
        Ok(pb::Protocol::Udp) => Protocol::Udp,
        Ok(pb::Protocol::Sctp) => Protocol::Sctp,
        Err(_) => {
            return Err(format!(
                "protocol {} is not tcp (0), udp (1) or sctp (2)",
                m.protocol
            ));
        }
    };
    ports::from_parts(&m.host_ip, m.host_port, m.container_port, protocol)
        .map_err(|e| e.to_string())
}

/// The host ports of a create/attach request, validated as a list; `INVALID_ARGUMENT`
/// naming the mapping otherwise.
pub fn request_ports(messages: &[pb::PortMapping]) -> Result<Vec<PortMapping>, Status> {
    let ports = messages
        .iter()
        .map(|m| {
            port_mapping(m).map_err(|e| Status::invalid_argument(format!("port mapping: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    ports::validate(&ports).map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(ports)
}

/// The message for a peer.
pub fn peer_message(p: &PeerRecord) -> pb::Peer {
    pb::Peer {
        pod_cidr: p.pod_cidr.to_string(),
        via: p.via.to_string(),
        from_config: p.source == PeerSource::Config,
        source: p.source.kind().to_string(),
        node: String::new(),
    }
}

/// A peer from request fields; `INVALID_ARGUMENT` naming the field otherwise.
pub fn request_peer(pod_cidr: &str, via: &str) -> Result<Peer, Status> {
    let pod_cidr = pod_cidr.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "peer pod CIDR {pod_cidr:?} is not a CIDR (ADDRESS/PREFIX)"
        ))
    })?;
    let via = via.parse().map_err(|_| {
        Status::invalid_argument(format!("peer node address {via:?} is not an IP address"))
    })?;
    Ok(Peer { pod_cidr, via })
}

/// The peer of a message (client side), naming the bad field otherwise.
pub fn peer_record(p: &pb::Peer) -> Result<PeerRecord, ResponseError> {
    Ok(PeerRecord {
        pod_cidr: p
            .pod_cidr
            .parse()
            .map_err(|e| invalid("peer.pod_cidr", &p.pod_cidr, format!("not a CIDR: {e}")))?,
        via: p
            .via
            .parse()
            .map_err(|e| invalid("peer.via", &p.via, format!("not an address: {e}")))?,
        source: if p.from_config {
            PeerSource::Config
        } else if p.source == "etcd" {
            PeerSource::Etcd
        } else {
            PeerSource::Api
        },
    })
}

/// The message for a reload report.
pub fn reload_message(report: &ReloadReport) -> pb::ReloadResponse {
    pb::ReloadResponse {
        host_port_elements: report.host_port_elements as u64,
        peer_routes: report.peer_routes as u64,
        actions: report.actions.clone(),
        failures: report.failures.iter().map(failure_message).collect(),
    }
}

/// The message for a stored pod record (its annotations included).
pub fn record_message(record: &PodRecord) -> pb::Pod {
    pod_message(&PodInfo::from(record), &record.annotations)
}

/// The ready records, as messages, in name order.
pub fn ready_pods(records: &[PodRecord]) -> Vec<pb::Pod> {
    records
        .iter()
        .filter(|r| r.phase == Phase::Ready)
        .map(record_message)
        .collect()
}

/// The message for one drift finding. `details` holds the problem's parameters (e.g.
/// `expected`/`actual` for an MTU mismatch) as text.
pub fn finding_message(finding: &Finding) -> pb::Finding {
    let mut problem = String::new();
    let mut details = BTreeMap::new();
    if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&finding.problem) {
        for (key, value) in fields {
            match (key.as_str(), value) {
                ("problem", serde_json::Value::String(kind)) => problem = kind,
                (_, serde_json::Value::Null) => {}
                (_, serde_json::Value::String(text)) => {
                    details.insert(key, text);
                }
                (_, other) => {
                    details.insert(key, other.to_string());
                }
            }
        }
    }
    pb::Finding {
        pod: finding.pod.as_ref().map(ToString::to_string),
        object: finding.object.clone(),
        problem,
        message: finding.problem.to_string(),
        details,
    }
}

fn failure_message(failure: &NodeFailure) -> pb::NodeFailure {
    pb::NodeFailure {
        pod: failure.pod.as_ref().map(ToString::to_string),
        error: failure.error.clone(),
    }
}

fn names(pods: &[PodName]) -> Vec<String> {
    pods.iter().map(ToString::to_string).collect()
}

/// The message for a repair (or start-up reconcile) report.
pub fn repair_message(report: &ReconcileReport) -> pb::RepairResponse {
    pb::RepairResponse {
        rolled_back: names(&report.rolled_back),
        finished_removal: names(&report.finished_removal),
        removed_dead: names(&report.removed_dead),
        repaired: report
            .repaired
            .iter()
            .map(|(pod, actions)| pb::RepairedPod {
                pod: pod.to_string(),
                actions: actions.clone(),
            })
            .collect(),
        orphans_removed: report.orphans_removed.clone(),
        failures: report.failures.iter().map(failure_message).collect(),
        node_actions: report.node_actions.clone(),
    }
}

/// The message for a gc report.
pub fn gc_message(report: &GcReport) -> pb::GcResponse {
    pb::GcResponse {
        removed: names(&report.removed),
        kept: names(&report.kept),
        failures: report.failures.iter().map(failure_message).collect(),
    }
}

/// The message for the daemon status; `socket` is the API socket it serves on.
pub fn status_message(
    status: &netns_holder_core::manager::DaemonStatus,
    socket: &Path,
) -> pb::StatusResponse {
    pb::StatusResponse {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pods: status.pods as u64,
        ready: status.ready as u64,
        unfinished: status.unfinished as u64,
        bridge: status.bridge.to_string(),
        pools: status
            .pools
            .iter()
            .map(|p| pb::PoolUsage {
                cidr: p.cidr.to_string(),
                allocated: p.allocated as u64,
                capacity: p.capacity.to_string(),
            })
            .collect(),
        state_file: status.state_file.display().to_string(),
        socket: socket.display().to_string(),
        peers: status.peers.iter().map(peer_message).collect(),
        host_ports: status.host_ports as u64,
        masquerade: status.masquerade,
        datapath: status.datapath.to_string(),
        egress_exempt: status
            .egress_exempt
            .iter()
            .map(ToString::to_string)
            .collect(),
        neighbour_tables: status.neighbour_tables.as_ref().map(neighbour_message),
        cluster: None,
        netns_pool: Some(pb::NetnsPool {
            ready: status.netns_pool.ready as u64,
            size: status.netns_pool.size as u64,
        }),
    }
}

/// The `cluster` part of the status (cluster mode).
pub fn cluster_message(
    status: &netns_holder_core::cluster::ClusterStatus,
    unrouted: &[(netns_holder_core::cluster::ClusterPeer, String)],
) -> pb::ClusterStatus {
    pb::ClusterStatus {
        backend: status.backend.to_string(),
        node: status.node.clone(),
        pod_cidr_v4: status.pod_cidr_v4.to_string(),
        pod_cidr_v6: status
            .pod_cidr_v6
            .map(|n| n.to_string())
            .unwrap_or_default(),
        lease_ttl_seconds: status.lease_ttl_seconds,
        connected: status.connected,
        conflict: status.conflict.clone().unwrap_or_default(),
        unrouted: unrouted
            .iter()
            .map(|(p, why)| pb::UnroutedPeer {
                node: p.node.clone(),
                pod_cidr: p.pod_cidr.to_string(),
                via: p.via.to_string(),
                reason: why.clone(),
            })
            .collect(),
    }
}

/// The message for the neighbour table sizing.
pub fn neighbour_message(
    report: &netns_holder_core::neigh::NeighbourReport,
) -> pb::NeighbourTables {
    use netns_holder_core::neigh::{Outcome, Thresholds};
    let thresholds = |t: &Thresholds| pb::NeighbourThresholds {
        gc_thresh1: t.gc_thresh1,
        gc_thresh2: t.gc_thresh2,
        gc_thresh3: t.gc_thresh3,
    };
    pb::NeighbourTables {
        capacity: report.capacity,
        tables: report
            .tables
            .iter()
            .map(|t| pb::NeighbourTable {
                family: t.family.name().to_string(),
                previous: Some(thresholds(&t.previous)),
                current: Some(thresholds(&t.current)),
                required: Some(thresholds(&t.required)),
                outcome: match t.outcome {
                    Outcome::Sufficient => "sufficient",
                    Outcome::Raised => "raised",
                    Outcome::NotRaised => "not_raised",
                }
                .to_string(),
                error: t.error.clone().unwrap_or_default(),
                pod_limit: t.pod_limit,
            })
            .collect(),
    }
}

// ---------------------------------------------------------------- server side: requests

/// Parses a pod name from a request; a bad one is `INVALID_ARGUMENT` naming it.
pub fn request_name(name: &str) -> Result<PodName, Status> {
    PodName::new(name).map_err(|e| name_status(&e))
}

/// `INVALID_ARGUMENT` for a rejected name.
pub fn name_status(error: &NameError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// Parses the netns path of an attach request: non-empty and absolute (the daemon's
/// working directory means nothing to the caller).
pub fn request_netns(path: &str) -> Result<PathBuf, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument("netns path is empty"));
    }
    let path = PathBuf::from(path);
    if !path.is_absolute() {
        return Err(Status::invalid_argument(format!(
            "netns path {:?} is not absolute",
            path.display().to_string()
        )));
    }
    Ok(path)
}

/// The most annotation bytes (keys plus values) a pod may carry, as Kubernetes allows: they
/// are stored in the state file and returned by every read.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;

/// Validates annotation keys (non-empty) and the annotations' total size of a request.
pub fn request_annotations(
    annotations: BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Status> {
    if annotations.contains_key("") {
        return Err(Status::invalid_argument("annotation key is empty"));
    }
    let size: usize = annotations.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ANNOTATIONS_BYTES {
        return Err(Status::invalid_argument(format!(
            "annotations are {size} bytes in all; at most {MAX_ANNOTATIONS_BYTES} are allowed"
        )));
    }
    Ok(annotations)
}

/// The gRPC code for a manager error (see the module documentation).
pub fn error_code(error: &ManagerError) -> Code {
    match error {
        ManagerError::Conflict { .. } | ManagerError::IdCollision { .. } => Code::AlreadyExists,
        ManagerError::NetnsNotFound { .. } | ManagerError::NotFound { .. } => Code::NotFound,
        ManagerError::NetnsInUse { .. }
        | ManagerError::Unfinished { .. }
        | ManagerError::WiredElsewhere { .. } => Code::FailedPrecondition,
        ManagerError::Ipam { .. } | ManagerError::NeighbourLimit { .. } => Code::ResourceExhausted,
        ManagerError::Ports { .. } | ManagerError::PortAddress { .. } => Code::InvalidArgument,
        ManagerError::PortInUse { .. }
        | ManagerError::ClusterConflict { .. }
        | ManagerError::DatapathChanged { .. } => Code::FailedPrecondition,
        ManagerError::Peer(PeerError::Exists { .. }) => Code::AlreadyExists,
        ManagerError::Peer(PeerError::FromConfig { .. } | PeerError::FromCluster { .. }) => {
            Code::FailedPrecondition
        }
        ManagerError::Peer(_) => Code::InvalidArgument,
        ManagerError::PeerRoute {
            source: SystemError::AlreadyExists { .. },
            ..
        } => Code::FailedPrecondition,
        ManagerError::PeerRoute { .. } | ManagerError::EgressExempt { .. } => Code::Internal,
        ManagerError::Config(_)
        | ManagerError::State(_)
        | ManagerError::InconsistentState { .. }
        | ManagerError::System { .. }
        | ManagerError::Create { .. }
        | ManagerError::Remove { .. }
        | ManagerError::Release { .. }
        | ManagerError::Publish { .. } => Code::Internal,
    }
}

/// The gRPC status for a manager error: [`error_code`] with the error's text.
pub fn error_status(error: &ManagerError) -> Status {
    Status::new(error_code(error), error.to_string())
}

/// `NOT_FOUND` for a pod that does not exist.
pub fn pod_not_found(name: &PodName) -> Status {
    Status::not_found(format!("pod {name} not found"))
}

// ---------------------------------------------------------------- client side

/// Validates a pod message back into a [`PodInfo`] (annotations are not part of it).
pub fn pod_info(pod: pb::Pod) -> Result<PodInfo, ResponseError> {
    let name = PodName::new(pod.name.clone()).map_err(|e| invalid("pod.name", &pod.name, e))?;
    let id = PodId::parse(&pod.id).map_err(|e| invalid("pod.id", &pod.id, e))?;
    let ips = pod
        .ips
        .iter()
        .map(|ip| {
            ip.parse::<IpNet>()
                .map_err(|e| invalid("pod.ips", ip, format!("not a CIDR: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let gateways = pod
        .gateways
        .iter()
        .map(|gw| {
            gw.parse::<IpAddr>()
                .map_err(|e| invalid("pod.gateways", gw, format!("not an address: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let interface = IfName::new(pod.interface.clone())
        .map_err(|e| invalid("pod.interface", &pod.interface, e))?;
    let host_veth = IfName::new(pod.host_veth.clone())
        .map_err(|e| invalid("pod.host_veth", &pod.host_veth, e))?;
    if pod.netns.is_empty() {
        return Err(invalid("pod.netns", &pod.netns, "empty"));
    }
    let ports = pod
        .ports
        .iter()
        .map(|m| port_mapping(m).map_err(|e| invalid("pod.ports", &format!("{m:?}"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PodInfo {
        name,
        id,
        netns: PathBuf::from(pod.netns),
        pause_pid: pod.pause_pid,
        ips,
        gateways,
        interface,
        host_veth,
        ports,
        ports_released: pod.ports_released,
    })
}

/// The pod of a `CreatePod`/`AttachPod`/`GetPod` answer, which must be present.
pub fn required_pod(method: &'static str, pod: Option<pb::Pod>) -> Result<PodInfo, ResponseError> {
    pod_info(pod.ok_or(ResponseError::Missing {
        method,
        field: "pod",
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations_are_bounded_in_size() {
        let mut big = BTreeMap::new();
        big.insert("k".to_string(), "v".repeat(MAX_ANNOTATIONS_BYTES));
        let err = request_annotations(big).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains("at most 262144"),
            "{}",
            err.message()
        );
        let mut fits = BTreeMap::new();
        fits.insert("k".to_string(), "v".repeat(MAX_ANNOTATIONS_BYTES - 1));
        assert!(request_annotations(fits).is_ok());
    }
    use netns_holder_core::finding::Problem;

    fn sample_info() -> PodInfo {
        let name = PodName::new("web").unwrap();
        PodInfo {
            id: name.id(),
            host_veth: name.id().host_veth_name(),
            name,
            netns: PathBuf::from("/run/netns/web"),
            pause_pid: Some(42),
            ips: vec![
                "10.88.0.2/16".parse().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            gateways: vec!["10.88.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            interface: IfName::pod_interface(),
            ports: vec![
                PortMapping::new(8080, 80, Protocol::Tcp),
                PortMapping::new(53, 5353, Protocol::Udp).on("fd00::9".parse().unwrap()),
                PortMapping::new(9, 9, Protocol::Sctp).on("0.0.0.0".parse().unwrap()),
            ],
            ports_released: true,
        }
    }

    #[test]
    fn pod_round_trips() {
        let info = sample_info();
        let annotations = BTreeMap::from([("k".to_string(), "v".to_string())]);
        let message = pod_message(&info, &annotations);
        assert_eq!(message.ips, ["10.88.0.2/16", "fd00::2/64"]);
        assert_eq!(message.ports[1].host_ip, "fd00::9");
        assert_eq!(message.ports[1].protocol, pb::Protocol::Udp as i32);
        assert_eq!(message.ports[0].host_ip, "");
        assert_eq!(message.annotations, annotations);
        assert_eq!(pod_info(message).unwrap(), info);
    }

    #[test]
    fn malformed_pod_is_named() {
        let mut message = pod_message(&sample_info(), &BTreeMap::new());
        message.ips.push("10.88.0.3".to_string());
        let err = pod_info(message).unwrap_err();
        assert!(err.to_string().contains("pod.ips"), "{err}");
        assert!(err.to_string().contains("10.88.0.3"), "{err}");
        let err = required_pod("GetPod", None).unwrap_err();
        assert_eq!(err.to_string(), "the daemon's GetPod answer has no pod");
    }

    #[test]
    fn finding_details() {
        let finding = Finding {
            pod: Some(PodName::new("web").unwrap()),
            object: "link eth0".to_string(),
            problem: Problem::MtuMismatch {
                expected: 1500,
                actual: 1400,
            },
        };
        let message = finding_message(&finding);
        assert_eq!(message.pod.as_deref(), Some("web"));
        assert_eq!(message.problem, "mtu_mismatch");
        assert_eq!(message.message, "mtu 1400, expected 1500");
        assert_eq!(message.details["expected"], "1500");
        assert_eq!(message.details["actual"], "1400");
        let orphan = finding_message(&Finding {
            pod: None,
            object: "link nh0123456789ab".to_string(),
            problem: Problem::Orphan,
        });
        assert_eq!(orphan.problem, "orphan");
        assert!(orphan.details.is_empty());
    }

    #[test]
    fn request_validation() {
        let err = request_name("a/b").unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("\"a/b\""), "{}", err.message());
        assert_eq!(request_netns("").unwrap_err().code(), Code::InvalidArgument);
        assert!(
            request_netns("rel/ns")
                .unwrap_err()
                .message()
                .contains("not absolute")
        );
        assert_eq!(
            request_netns("/proc/1/ns/net").unwrap(),
            Path::new("/proc/1/ns/net")
        );
    }

    #[test]
    fn error_codes() {
        let name = PodName::new("web").unwrap();
        let conflict = ManagerError::Conflict {
            name: name.clone(),
            reason: "differs".to_string(),
        };
        assert_eq!(error_code(&conflict), Code::AlreadyExists);
        let status = error_status(&conflict);
        assert_eq!(status.message(), conflict.to_string());
        let missing = ManagerError::NetnsNotFound {
            name: name.clone(),
            path: PathBuf::from("/proc/9/ns/net"),
        };
        assert_eq!(error_code(&missing), Code::NotFound);
        let in_use = ManagerError::NetnsInUse {
            name: name.clone(),
            path: PathBuf::from("/run/netns/x"),
            other: PodName::new("x").unwrap(),
        };
        assert_eq!(error_code(&in_use), Code::FailedPrecondition);
        assert_eq!(pod_not_found(&name).code(), Code::NotFound);
        let unknown = ManagerError::NotFound { name: name.clone() };
        assert_eq!(error_code(&unknown), Code::NotFound);
        assert_eq!(
            error_status(&unknown).message(),
            pod_not_found(&name).message()
        );
        assert_eq!(pod_not_found(&name).message(), "pod web not found");
    }

    #[test]
    fn port_requests_are_checked() {
        let ok = pb::PortMapping {
            protocol: pb::Protocol::Udp as i32,
            host_ip: String::new(),
            host_port: 53,
            container_port: 5353,
        };
        assert_eq!(
            request_ports(std::slice::from_ref(&ok)).unwrap(),
            [PortMapping::new(53, 5353, Protocol::Udp)]
        );
        for (bad, part) in [
            (
                pb::PortMapping {
                    host_port: 0,
                    ..ok.clone()
                },
                "host port 0",
            ),
            (
                pb::PortMapping {
                    container_port: 70000,
                    ..ok.clone()
                },
                "container port 70000",
            ),
            (
                pb::PortMapping {
                    protocol: 7,
                    ..ok.clone()
                },
                "protocol 7",
            ),
            (
                pb::PortMapping {
                    host_ip: "x".into(),
                    ..ok.clone()
                },
                "\"x\"",
            ),
        ] {
            let status = request_ports(&[bad]).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(part), "{}", status.message());
        }
        let dup = request_ports(&[ok.clone(), ok]).unwrap_err();
        assert!(
            dup.message().contains("claim the same host port"),
            "{}",
            dup.message()
        );
    }

    #[test]
    fn peers_round_trip() {
        let peer = request_peer("10.244.1.0/24", "192.168.50.2").unwrap();
        let record = PeerRecord {
            pod_cidr: peer.pod_cidr,
            via: peer.via,
            source: PeerSource::Config,
        };
        assert_eq!(peer_record(&peer_message(&record)).unwrap(), record);
        assert_eq!(
            request_peer("10.244.1.0", "1.2.3.4").unwrap_err().code(),
            Code::InvalidArgument
        );
        assert!(
            request_peer("10.244.1.0/24", "b")
                .unwrap_err()
                .message()
                .contains("\"b\"")
        );
    }
}
