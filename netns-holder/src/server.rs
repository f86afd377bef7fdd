//! The daemon side of the API: the tonic service over a [`PodManager`], the root-only
//! unix socket it listens on, the peer credential check, and [`run_daemon`], which wires
//! them together (socket, state, reconcile, serve, shutdown).
//!
//! Everything here is generic over [`System`], so the same code serves the real kernel
//! implementation in the daemon and `fake::FakeSystem` in tests.
//!
//! # The socket
//!
//! [`ApiSocket::bind`] creates the parent directory (mode 0700) if needed, refuses to start
//! if another daemon answers on the path, removes a stale socket file nobody listens on,
//! binds, and sets the socket's mode to 0600. The file is removed again when the
//! [`ApiSocket`] is dropped, i.e. on shutdown or when start-up fails after binding.
//!
//! # Who may call
//!
//! [`PeerCheck`] reads the caller's credentials (`SO_PEERCRED`, which tonic puts in each
//! request's extensions as [`UdsConnectInfo`]) and refuses every caller that is neither
//! root nor the daemon's own user with `PERMISSION_DENIED`, logging the refusal. The 0600
//! mode already keeps others out; the check holds even if the mode is loosened.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use slog::{Logger, debug, info, o, warn};
use thiserror::Error;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Interceptor;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::api::{self, pb};
use crate::config::Config;
use crate::manager::{
    AttachRequest, CreateRequest, ManagerError, PauseWake, PauseWatches, PodManager,
    ReconcileReport,
};
use crate::metrics::{Metrics, MetricsError, MetricsListener, Operation, Snapshot};
use crate::system::System;

use pb::netns_holder_server::{NetnsHolder, NetnsHolderServer};

/// Mode of the API socket file.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of the socket's parent directory when the daemon creates it.
pub const SOCKET_DIR_MODE: u32 = 0o700;

/// A failure to set up or serve the API socket, naming the path.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The socket's parent directory could not be created.
    #[error("cannot create socket directory {}: {source}", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Another process is serving on the socket path.
    #[error(
        "another netns-holder daemon is already listening on {}; refusing to start",
        path.display()
    )]
    AlreadyRunning {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket is in the way.
    #[error("{} exists and is not a unix socket; refusing to remove it", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// A stale socket file could not be inspected or removed.
    #[error("cannot remove stale socket {}: {source}", path.display())]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("cannot bind API socket {}: {source}", path.display())]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Setting the socket's mode failed.
    #[error("cannot set mode {SOCKET_MODE:o} on API socket {}: {source}", path.display())]
    Chmod {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("serving the API on {}: {source}", path.display())]
    Transport {
        /// The socket path.
        path: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

/// A failure of the daemon as a whole.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// The API socket could not be set up or served.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The state could not be loaded.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The metrics listener could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// The bound API socket. Dropping it removes the socket file.
#[derive(Debug)]
pub struct ApiSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ApiSocket {
    /// Prepares and binds the socket at `path` (see the module documentation). Does not
    /// need a tokio runtime.
    pub fn bind(path: &Path, log: &Logger) -> Result<Self, ServeError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(SOCKET_DIR_MODE)
                .create(dir)
                .map_err(|source| ServeError::CreateDir {
                    path: dir.to_path_buf(),
                    source,
                })?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
                Ok(_) => {
                    return Err(ServeError::AlreadyRunning {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) => {
                    info!(log, "removing stale API socket"; "socket" => %path.display(), "connect" => %e);
                    std::fs::remove_file(path).map_err(|source| ServeError::RemoveStale {
                        path: path.to_path_buf(),
                        source,
                    })?;
                }
            },
            Ok(_) => {
                return Err(ServeError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ServeError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let listener = UnixListener::bind(path).map_err(|source| ServeError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        // From here on, dropping `socket` removes the file.
        let socket = Self {
            path: path.to_path_buf(),
            listener: Some(listener),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
            |source| ServeError::Chmod {
                path: path.to_path_buf(),
                source,
            },
        )?;
        if let Some(l) = &socket.listener {
            l.set_nonblocking(true).map_err(|source| ServeError::Bind {
                path: path.to_path_buf(),
                source,
            })?;
        }
        info!(log, "API socket bound"; "socket" => %path.display());
        Ok(socket)
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        self.listener.take();
        // Only we can have bound this path since `bind`, so the file is ours.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Uid of root, always allowed to call.
const ROOT_UID: u32 = 0;

/// The interceptor that admits only root (and the daemon's own user) by `SO_PEERCRED`.
#[derive(Clone)]
pub struct PeerCheck {
    own_uid: u32,
    log: Logger,
}

impl PeerCheck {
    /// A check admitting root and the effective uid of this process.
    pub fn new(log: Logger) -> Self {
        Self {
            own_uid: nix::unistd::geteuid().as_raw(),
            log,
        }
    }
}

impl Interceptor for PeerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred);
        match cred {
            Some(c) if c.uid() == ROOT_UID || c.uid() == self.own_uid => Ok(request),
            Some(c) => {
                let pid = c
                    .pid()
                    .map_or_else(|| "unknown".to_string(), |p| p.to_string());
                warn!(self.log, "refused API call from non-root peer";
                    "uid" => c.uid(), "gid" => c.gid(), "pid" => &pid);
                Err(Status::permission_denied(format!(
                    "permission denied: the netns-holder API is for root only; \
                     caller uid {} (pid {pid}) is not allowed",
                    c.uid()
                )))
            }
            None => {
                warn!(self.log, "refused API call: peer credentials unavailable");
                Err(Status::permission_denied(
                    "permission denied: cannot determine the caller's credentials (SO_PEERCRED)",
                ))
            }
        }
    }
}

/// The `NetnsHolder` gRPC service over a [`PodManager`].
pub struct ApiService<S: System> {
    manager: Arc<PodManager<S>>,
    /// Cluster mode: what `status` shows of the cluster.
    cluster: Option<Arc<crate::cluster::ClusterShared>>,
    socket: PathBuf,
    metrics: Arc<Metrics>,
    log: Logger,
}

impl<S: System> ApiService<S> {
    /// A service over `manager`; `socket` is reported by `Status`; operations are
    /// counted in `metrics`.
    pub fn new(
        manager: Arc<PodManager<S>>,
        socket: PathBuf,
        metrics: Arc<Metrics>,
        log: Logger,
    ) -> Self {
        Self {
            manager,
            cluster: None,
            socket,
            metrics,
            log,
        }
    }

    /// Adds the cluster (cluster mode) to what `status` shows.
    pub fn with_cluster(mut self, cluster: Option<Arc<crate::cluster::ClusterShared>>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Logs a failed call and turns the error into its status.
    fn failed(&self, method: &'static str, error: &ManagerError) -> Status {
        let status = api::error_status(error);
        warn!(self.log, "API call failed"; "method" => method, "code" => ?status.code(), "error" => %error);
        status
    }

    /// Logs a rejected request.
    fn rejected(&self, method: &'static str, status: Status) -> Status {
        info!(self.log, "API call rejected"; "method" => method, "code" => ?status.code(), "error" => status.message());
        status
    }
}

#[tonic::async_trait]
impl<S: System> NetnsHolder for ApiService<S> {
    async fn create_pod(
        &self,
        request: Request<pb::CreatePodRequest>,
    ) -> Result<Response<pb::CreatePodResponse>, Status> {
        const METHOD: &str = "CreatePod";
        let r = request.into_inner();
        let name = api::request_name(&r.name).map_err(|s| self.rejected(METHOD, s))?;
        let annotations =
            api::request_annotations(r.annotations).map_err(|s| self.rejected(METHOD, s))?;
        let ports = api::request_ports(&r.ports).map_err(|s| self.rejected(METHOD, s))?;
        debug!(self.log, "API call"; "method" => METHOD, "pod" => %name, "ports" => ports.len());
        let start = Instant::now();
        let created = self
            .manager
            .create(CreateRequest {
                name,
                no_pause: r.no_pause,
                annotations: annotations.clone(),
                ports,
            })
            .await;
        self.metrics
            .record(Operation::Create, start, created.is_ok());
        let info = created.map_err(|e| self.failed(METHOD, &e))?;
        Ok(Response::new(pb::CreatePodResponse {
            pod: Some(api::pod_message(&info, &annotations)),
        }))
    }

    async fn attach_pod(
        &self,
        request: Request<pb::AttachPodRequest>,
    ) -> Result<Response<pb::AttachPodResponse>, Status> {
        const METHOD: &str = "AttachPod";
        let r = request.into_inner();
        let name = api::request_name(&r.name).map_err(|s| self.rejected(METHOD, s))?;
        let netns = api::request_netns(&r.netns).map_err(|s| self.rejected(METHOD, s))?;
        self.manager
            .system()
            .check_attach_path(&netns, &self.manager.config().netns_dir)
            .map_err(|e| self.rejected(METHOD, Status::invalid_argument(e.to_string())))?;
        let annotations =
            api::request_annotations(r.annotations).map_err(|s| self.rejected(METHOD, s))?;
        let ports = api::request_ports(&r.ports).map_err(|s| self.rejected(METHOD, s))?;
        debug!(self.log, "API call"; "method" => METHOD, "pod" => %name, "netns" => %netns.display());
        let start = Instant::now();
        let attached = self
            .manager
            .attach(AttachRequest {
                name: name.clone(),
                netns: netns.clone(),
                annotations: annotations.clone(),
                ports,
            })
            .await;
        let ok = attached.is_ok()
            || matches!(attached, Err(ManagerError::WiredElsewhere { .. }) if r.leave_wired_elsewhere);
        self.metrics.record(Operation::Attach, start, ok);
        match attached {
            Ok(info) => Ok(Response::new(pb::AttachPodResponse {
                pod: Some(api::pod_message(&info, &annotations)),
                wired_elsewhere: Vec::new(),
            })),
            Err(ManagerError::WiredElsewhere { links, .. }) if r.leave_wired_elsewhere => {
                info!(self.log, "namespace wired by another network plugin; left alone";
                    "method" => METHOD, "pod" => %name, "netns" => %netns.display(),
                    "links" => links.join(","));
                Ok(Response::new(pb::AttachPodResponse {
                    pod: None,
                    wired_elsewhere: links,
                }))
            }
            Err(e) => Err(self.failed(METHOD, &e)),
        }
    }

    async fn remove_pod(
        &self,
        request: Request<pb::RemovePodRequest>,
    ) -> Result<Response<pb::RemovePodResponse>, Status> {
        const METHOD: &str = "RemovePod";
        let name =
            api::request_name(&request.into_inner().name).map_err(|s| self.rejected(METHOD, s))?;
        debug!(self.log, "API call"; "method" => METHOD, "pod" => %name);
        let start = Instant::now();
        let removed = self.manager.remove(&name).await;
        self.metrics
            .record(Operation::Remove, start, removed.is_ok());
        let removed = removed.map_err(|e| self.failed(METHOD, &e))?;
        Ok(Response::new(pb::RemovePodResponse {
            name: name.to_string(),
            removed,
        }))
    }

    async fn release_pod_ports(
        &self,
        request: Request<pb::ReleasePodPortsRequest>,
    ) -> Result<Response<pb::ReleasePodPortsResponse>, Status> {
        const METHOD: &str = "ReleasePodPorts";
        let name =
            api::request_name(&request.into_inner().name).map_err(|s| self.rejected(METHOD, s))?;
        debug!(self.log, "API call"; "method" => METHOD, "pod" => %name);
        let start = Instant::now();
        let released = self.manager.release_pod_ports(&name).await;
        self.metrics
            .record(Operation::ReleasePorts, start, released.is_ok());
        let released = released.map_err(|e| self.failed(METHOD, &e))?;
        Ok(Response::new(pb::ReleasePodPortsResponse {
            name: name.to_string(),
            released,
        }))
    }

    async fn publish_pod_ports(
        &self,
        request: Request<pb::PublishPodPortsRequest>,
    ) -> Result<Response<pb::PublishPodPortsResponse>, Status> {
        const METHOD: &str = "PublishPodPorts";
        let r = request.into_inner();
        let name = api::request_name(&r.name).map_err(|s| self.rejected(METHOD, s))?;
        let ports = api::request_ports(&r.ports).map_err(|s| self.rejected(METHOD, s))?;
        debug!(self.log, "API call"; "method" => METHOD, "pod" => %name, "ports" => ports.len());
        let published = self
            .manager
            .publish_pod_ports(&name, ports)
            .await
            .map_err(|e| self.failed(METHOD, &e))?;
        let records = self.manager.records();
        let pod = api::ready_pods(&records)
            .into_iter()
            .find(|p| p.name == name.as_str());
        Ok(Response::new(pb::PublishPodPortsResponse {
            pod,
            added: published.added.iter().map(api::port_message).collect(),
        }))
    }

    async fn get_pod(
        &self,
        request: Request<pb::GetPodRequest>,
    ) -> Result<Response<pb::GetPodResponse>, Status> {
        const METHOD: &str = "GetPod";
        let name =
            api::request_name(&request.into_inner().name).map_err(|s| self.rejected(METHOD, s))?;
        let records = self.manager.records();
        let pod = api::ready_pods(&records)
            .into_iter()
            .find(|p| p.name == name.as_str())
            .ok_or_else(|| api::pod_not_found(&name))?;
        Ok(Response::new(pb::GetPodResponse { pod: Some(pod) }))
    }

    async fn list_pods(
        &self,
        _request: Request<pb::ListPodsRequest>,
    ) -> Result<Response<pb::ListPodsResponse>, Status> {
        Ok(Response::new(pb::ListPodsResponse {
            pods: api::ready_pods(&self.manager.records()),
        }))
    }

    async fn check(
        &self,
        _request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        let findings = self.manager.check().await;
        info!(self.log, "check"; "findings" => findings.len());
        let mut kinds = BTreeMap::<String, usize>::new();
        for finding in &findings {
            *kinds.entry(problem_kind(&finding.problem)).or_default() += 1;
        }
        self.metrics
            .set_drift(kinds.iter().map(|(k, n)| (k.as_str(), *n)));
        Ok(Response::new(pb::CheckResponse {
            findings: findings.iter().map(api::finding_message).collect(),
        }))
    }

    async fn repair(
        &self,
        _request: Request<pb::RepairRequest>,
    ) -> Result<Response<pb::RepairResponse>, Status> {
        let start = Instant::now();
        let report = self.manager.repair().await;
        self.metrics
            .record(Operation::Repair, start, report.failures.is_empty());
        self.metrics.set_drift(report_kinds(&report));
        log_report(&self.log, "repair", &report);
        Ok(Response::new(api::repair_message(&report)))
    }

    async fn gc(
        &self,
        request: Request<pb::GcRequest>,
    ) -> Result<Response<pb::GcResponse>, Status> {
        const METHOD: &str = "Gc";
        let mut keep = BTreeSet::new();
        for entry in request.into_inner().keep {
            // Names and ids alike are valid pod names; anything else cannot match a pod
            // and is most likely a mistake, which here would remove the pod it meant.
            let name = api::request_name(&entry).map_err(|s| self.rejected(METHOD, s))?;
            keep.insert(name.to_string());
        }
        let start = Instant::now();
        let report = self.manager.gc(&keep).await;
        self.metrics
            .record(Operation::Gc, start, report.failures.is_empty());
        info!(self.log, "gc"; "removed" => report.removed.len(), "kept" => report.kept.len(),
            "failures" => report.failures.len());
        for f in &report.failures {
            warn!(self.log, "gc failure"; "error" => %f);
        }
        Ok(Response::new(api::gc_message(&report)))
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let mut message = api::status_message(&self.manager.status(), &self.socket);
        if let Some(cluster) = &self.cluster {
            let nodes = crate::cluster::nodes_by_cidr(cluster);
            for peer in &mut message.peers {
                if peer.source == "etcd"
                    && let Ok(cidr) = peer.pod_cidr.parse()
                    && let Some(node) = nodes.get(&cidr)
                {
                    peer.node = node.clone();
                }
            }
            message.cluster = Some(api::cluster_message(&cluster.status(), &cluster.unrouted()));
        }
        Ok(Response::new(message))
    }

    async fn add_peer(
        &self,
        request: Request<pb::AddPeerRequest>,
    ) -> Result<Response<pb::AddPeerResponse>, Status> {
        const METHOD: &str = "AddPeer";
        let r = request.into_inner();
        let peer = api::request_peer(&r.pod_cidr, &r.via).map_err(|s| self.rejected(METHOD, s))?;
        let added = self
            .manager
            .add_peer(peer)
            .await
            .map_err(|e| self.failed(METHOD, &e))?;
        let record = self
            .manager
            .peers()
            .into_iter()
            .find(|p| p.pod_cidr == peer.pod_cidr)
            .ok_or_else(|| Status::internal(format!("peer {peer} vanished")))?;
        Ok(Response::new(pb::AddPeerResponse {
            peer: Some(api::peer_message(&record)),
            added,
        }))
    }

    async fn remove_peer(
        &self,
        request: Request<pb::RemovePeerRequest>,
    ) -> Result<Response<pb::RemovePeerResponse>, Status> {
        const METHOD: &str = "RemovePeer";
        let r = request.into_inner();
        let pod_cidr = r.pod_cidr.parse().map_err(|_| {
            self.rejected(
                METHOD,
                Status::invalid_argument(format!(
                    "peer pod CIDR {:?} is not a CIDR (ADDRESS/PREFIX)",
                    r.pod_cidr
                )),
            )
        })?;
        let removed = self
            .manager
            .remove_peer(pod_cidr)
            .await
            .map_err(|e| self.failed(METHOD, &e))?;
        Ok(Response::new(pb::RemovePeerResponse {
            pod_cidr: r.pod_cidr,
            removed,
        }))
    }

    async fn list_peers(
        &self,
        _request: Request<pb::ListPeersRequest>,
    ) -> Result<Response<pb::ListPeersResponse>, Status> {
        Ok(Response::new(pb::ListPeersResponse {
            peers: self.manager.peers().iter().map(api::peer_message).collect(),
        }))
    }

    async fn reload(
        &self,
        _request: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let report = self.manager.reload().await;
        info!(self.log, "reload"; "host_port_elements" => report.host_port_elements,
            "peer_routes" => report.peer_routes, "failures" => report.failures.len());
        for f in &report.failures {
            warn!(self.log, "reload failure"; "error" => %f);
        }
        Ok(Response::new(api::reload_message(&report)))
    }

    async fn report_nri_event(
        &self,
        request: Request<pb::ReportNriEventRequest>,
    ) -> Result<Response<pb::ReportNriEventResponse>, Status> {
        const METHOD: &str = "ReportNriEvent";
        let r = request.into_inner();
        self.metrics
            .record_nri_event(&r.event, r.ok, r.duration_seconds)
            .map_err(|e| self.rejected(METHOD, Status::invalid_argument(e.to_string())))?;
        Ok(Response::new(pb::ReportNriEventResponse {}))
    }
}

/// The `kind` label of a check finding: the problem's name as the API reports it
/// (`missing`, `orphan`, `route_missing` ...).
fn problem_kind(problem: &crate::finding::Problem) -> String {
    serde_json::to_value(problem)
        .ok()
        .and_then(|v| {
            v.get("problem")
                .and_then(|p| p.as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".to_string())
}

/// The drift a reconcile or repair found, by what it did about it.
fn report_kinds(report: &ReconcileReport) -> [(&'static str, usize); 7] {
    [
        ("rolled_back", report.rolled_back.len()),
        ("finished_removal", report.finished_removal.len()),
        ("removed_dead", report.removed_dead.len()),
        ("repaired", report.repaired.len()),
        ("orphan_removed", report.orphans_removed.len()),
        ("node_action", report.node_actions.len()),
        ("failure", report.failures.len()),
    ]
}

/// Logs what a reconcile or repair did: a summary, then every failure.
pub fn log_report(log: &Logger, what: &'static str, report: &ReconcileReport) {
    let repaired: BTreeMap<String, usize> = report
        .repaired
        .iter()
        .map(|(pod, actions)| (pod.to_string(), actions.len()))
        .collect();
    info!(log, "{} done", what;
        "rolled_back" => ?report.rolled_back.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "finished_removal" => ?report.finished_removal.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "removed_dead" => ?report.removed_dead.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "repaired" => ?repaired,
        "orphans_removed" => ?report.orphans_removed,
        "node_actions" => ?report.node_actions,
        "failures" => report.failures.len());
    for failure in &report.failures {
        warn!(log, "{} failure", what; "error" => %failure);
    }
}

/// Serves the API for `manager` on `socket` until `shutdown` resolves, then stops
/// accepting, lets in-flight calls finish and removes the socket file. Pods (and their
/// pause processes) are left as they are.
pub async fn serve<S: System>(
    manager: Arc<PodManager<S>>,
    cluster: Option<Arc<crate::cluster::ClusterShared>>,
    metrics: Arc<Metrics>,
    mut socket: ApiSocket,
    shutdown: impl Future<Output = ()>,
    log: Logger,
) -> Result<(), ServeError> {
    let path = socket.path().to_path_buf();
    let std_listener = socket
        .listener
        .take()
        .expect("an ApiSocket holds its listener until served");
    let listener =
        tokio::net::UnixListener::from_std(std_listener).map_err(|source| ServeError::Bind {
            path: path.clone(),
            source,
        })?;
    let service = ApiService::new(
        manager,
        path.clone(),
        metrics,
        log.new(o!("component" => "api")),
    )
    .with_cluster(cluster);
    let checked = NetnsHolderServer::with_interceptor(service, PeerCheck::new(log.clone()));
    info!(log, "serving API"; "socket" => %path.display());
    let result = tonic::transport::Server::builder()
        .add_service(checked)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    drop(socket);
    info!(log, "API stopped; pods and pause processes are left running"; "socket" => %path.display());
    result.map_err(|source| ServeError::Transport { path, source })
}

/// The daemon: binds the API socket (refusing to start if another daemon serves on it),
/// loads the state, reconciles the kernel with it, and serves until `shutdown` resolves.
///
/// Install the signal handlers that make up `shutdown` before calling this, so a signal
/// arriving during reconcile is not lost.
pub async fn run_daemon<S: System>(
    config: Config,
    system: S,
    shutdown: impl Future<Output = ()>,
    log: Logger,
) -> Result<(), DaemonError> {
    run_daemon_in_cluster(config, system, None, shutdown, log).await
}

/// [`run_daemon`], in cluster mode when `cluster` is given (see [`crate::cluster`]): its
/// loop runs from the end of the reconcile on, and `status` shows it. `config` holds the
/// node's subnet already ([`crate::cluster::prepare`]).
pub async fn run_daemon_in_cluster<S: System>(
    config: Config,
    system: S,
    cluster: Option<crate::cluster::Prepared>,
    shutdown: impl Future<Output = ()>,
    log: Logger,
) -> Result<(), DaemonError> {
    config.validate().map_err(ManagerError::from)?;
    // Bind first: if another daemon is running, it must not be disturbed by our reconcile.
    let socket = ApiSocket::bind(&config.socket, &log)?;
    let metrics = Arc::new(Metrics::new());
    // Bound before the state is loaded, so a port in use stops the start and `/readyz`
    // answers 503 during the reconcile.
    let listener = match config.metrics_address {
        Some(address) => {
            let listener = MetricsListener::bind(address, &log).await?;
            Some(tokio::spawn(listener.serve(
                metrics.clone(),
                log.new(o!("component" => "metrics")),
            )))
        }
        None => None,
    };
    // Dropping the handle does not end the task: abort it on every way out.
    let _stop_listener = AbortOnDrop(listener);
    let journal = config.state_dir.join(crate::state::JOURNAL_FILE_NAME);
    let manager = Arc::new(PodManager::open(config, system, log.clone())?);
    // Once the node is ours (the socket bound), with the final config (cluster mode's lease
    // taken) and the records loaded: the pool clears what an earlier daemon left that no
    // record names, before reconcile looks.
    manager.start_netns_pool().await;
    let source = manager.clone();
    metrics.set_source(move || snapshot(&source, &journal));
    // Before serving: creates are admitted against what the neighbour tables hold.
    manager.size_neighbour_tables().await;
    let start = Instant::now();
    let report = manager.reconcile().await;
    metrics.record(Operation::Reconcile, start, report.failures.is_empty());
    metrics.set_drift(report_kinds(&report));
    log_report(&log, "reconcile", &report);
    metrics.set_ready();
    let watcher = tokio::spawn(watch_pauses(
        manager.clone(),
        metrics.clone(),
        log.new(o!("component" => "pauses")),
    ));
    let events = tokio::spawn(watch_kernel_events(
        manager.clone(),
        log.new(o!("component" => "kernel-events")),
    ));
    let shared = cluster.as_ref().map(crate::cluster::Prepared::shared);
    let cluster_loop = cluster.map(|prepared| {
        tokio::spawn(crate::cluster::run(
            prepared,
            manager.clone(),
            log.new(o!("component" => "cluster")),
        ))
    });
    let _stop_cluster = AbortOnDrop(cluster_loop);
    let served = serve(manager, shared, metrics, socket, shutdown, log).await;
    watcher.abort();
    events.abort();
    served?;
    Ok(())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// The state gauges: counts from the manager (one short lock), and the journal's size.
fn snapshot<S: System>(manager: &PodManager<S>, journal: &Path) -> Snapshot {
    let status = manager.status();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let by_source = |source| status.peers.iter().filter(|p| p.source == source).count();
    let peers_config = by_source(crate::peers::PeerSource::Config);
    let peers_etcd = by_source(crate::peers::PeerSource::Etcd);
    let pool = status.netns_pool;
    Snapshot {
        pods: count(status.pods),
        host_ports: count(status.host_ports),
        peers_config: count(peers_config),
        peers_api: count(by_source(crate::peers::PeerSource::Api)),
        peers_etcd: count(peers_etcd),
        ipam: status
            .pools
            .iter()
            .map(|pool| {
                let family = match pool.cidr {
                    ipnet::IpNet::V4(_) => "ipv4",
                    ipnet::IpNet::V6(_) => "ipv6",
                };
                (family, count(pool.allocated), pool.capacity as f64)
            })
            .collect(),
        journal_bytes: std::fs::metadata(journal)
            .map(|m| i64::try_from(m.len()).unwrap_or(i64::MAX))
            .unwrap_or(0),
        netns_pool_ready: count(pool.ready),
        netns_pool_size: count(pool.size),
    }
}

/// How long a burst of kernel events is gathered before the attached pods are looked at
/// once for all of it (a runtime removing a sandbox changes several mounts at once).
pub const KERNEL_EVENT_COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Withdraws the host ports of attached pods whose namespace left its path, and removes
/// those whose namespace is gone, as the kernel reports it (see [`crate::manager`]'s
/// `ended` module): nothing depends on the runtime sending Stop or Remove.
async fn watch_kernel_events<S: System>(manager: Arc<PodManager<S>>, log: Logger) {
    let mut events = match manager.system().subscribe().await {
        Ok(events) => events,
        Err(e) => {
            warn!(log, "no kernel events: attached pods that end without a runtime event are found only by check/repair";
                "error" => %e);
            return;
        }
    };
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        tokio::time::sleep(KERNEL_EVENT_COALESCE).await;
        while let Ok(event) = events.try_recv() {
            batch.push(event);
        }
        let report = manager.handle_kernel_events(&batch).await;
        if !report.is_empty() {
            info!(log, "attached pods ended without a runtime event";
                "ports_withdrawn" => ?report.ports_withdrawn.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "removed" => ?report.removed.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "failures" => report.failures.len());
        }
        for failure in &report.failures {
            warn!(log, "cannot clean up after an attached pod that ended"; "error" => %failure);
        }
    }
}

/// How often the pause watcher looks at what SIGCHLD and the exit watches do not cover: a
/// lost SIGCHLD, pods without a pause, adopted pauses (started by an earlier daemon, so no
/// SIGCHLD reaches us when they die) that are not watched yet, and those no watch could be
/// made for.
pub const PAUSE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Restarts dead pauses: at once when one of ours exits (SIGCHLD, then a `waitpid` per
/// child), at once when an adopted pause exits (its pidfd watch), and every
/// [`PAUSE_CHECK_INTERVAL`] for the rest (see [`PodManager::restart_dead_pauses`]). No
/// `/proc` read per pod per tick: only adopted pauses that cannot be watched are polled.
async fn watch_pauses<S: System>(manager: Arc<PodManager<S>>, metrics: Arc<Metrics>, log: Logger) {
    let mut children = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(stream) => Some(stream),
        Err(e) => {
            warn!(log, "no SIGCHLD stream; dead pauses are found by the periodic check only"; "error" => %e);
            None
        }
    };
    let mut tick = tokio::time::interval(PAUSE_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watches = PauseWatches::new();
    loop {
        let wake = match children.as_mut() {
            Some(stream) => {
                tokio::select! {
                    _ = stream.recv() => PauseWake::Child,
                    _ = tick.tick() => PauseWake::Tick,
                    pause = watches.next_exit() => PauseWake::Exited(pause),
                }
            }
            None => {
                tokio::select! {
                    _ = tick.tick() => PauseWake::Tick,
                    pause = watches.next_exit() => PauseWake::Exited(pause),
                }
            }
        };
        let restarted = manager.restart_dead_pauses(wake, &mut watches).await;
        metrics.pauses_restarted(restarted.len());
        if !restarted.is_empty() {
            debug!(log, "pauses restarted"; "pods" => restarted.len(), "wake" => ?wake);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logger() -> Logger {
        Logger::root(slog::Discard, o!())
    }

    #[test]
    fn bind_creates_private_dir_and_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/api.sock");
        let socket = ApiSocket::bind(&path, &logger()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&path), SOCKET_MODE);
        assert_eq!(mode(&dir.path().join("sub")), SOCKET_DIR_MODE);
        // A second daemon is refused while the first listens.
        let err = ApiSocket::bind(&path, &logger()).unwrap_err();
        assert!(matches!(err, ServeError::AlreadyRunning { .. }), "{err}");
        assert!(err.to_string().contains(&path.display().to_string()));
        drop(socket);
        assert!(!path.exists(), "socket file removed on drop");
    }

    #[test]
    fn stale_socket_is_replaced_other_files_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        // A socket file nobody listens on.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let socket = ApiSocket::bind(&path, &logger()).unwrap();
        drop(socket);
        std::fs::write(&path, "not a socket").unwrap();
        let err = ApiSocket::bind(&path, &logger()).unwrap_err();
        assert!(matches!(err, ServeError::NotASocket { .. }), "{err}");
        assert!(path.exists(), "a regular file is never removed");
    }
}
