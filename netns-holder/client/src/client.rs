//! The client side of the API: a connection to the daemon's unix socket and one method
//! per RPC, returning the protobuf answers (see [`crate::api`] for turning them into
//! library types).
//!
//! The connection is a tonic channel whose connector opens a
//! [`tokio::net::UnixStream`] to the socket path (any path, not only UTF-8), made eagerly
//! so that a daemon that is not running is reported at once as
//! "cannot connect to netns-holder at PATH: ...".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use thiserror::Error;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use crate::api::{self, pb};
use netns_holder_core::names::PodName;
use netns_holder_core::peers::Peer;
use netns_holder_core::ports::PortMapping;

use pb::netns_holder_client::NetnsHolderClient;

/// A client-side failure.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The daemon's socket could not be connected to.
    #[error("cannot connect to netns-holder at {}: {reason}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// Why (the innermost error, e.g. "No such file or directory (os error 2)").
        reason: String,
    },
    /// The daemon answered with an error status; its message is shown verbatim.
    #[error("{}", rpc_message(.method, .status))]
    Rpc {
        /// The RPC, e.g. `CreatePod`.
        method: &'static str,
        /// The status.
        status: Status,
    },
}

fn rpc_message(method: &str, status: &Status) -> String {
    if status.message().is_empty() {
        format!("{method} failed: {:?}", status.code())
    } else {
        status.message().to_string()
    }
}

impl ClientError {
    /// The gRPC code of an [`ClientError::Rpc`]; `None` for connection failures.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc { status, .. } => Some(status.code()),
            Self::Connect { .. } => None,
        }
    }
}

/// The innermost message of an error chain (the transport wraps the OS error).
fn innermost(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// A connection to the daemon.
#[derive(Debug, Clone)]
pub struct Client {
    inner: NetnsHolderClient<Channel>,
    socket: PathBuf,
}

impl Client {
    /// Connects to the daemon's socket at `socket`.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(&path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        // The URI only supplies the HTTP/2 authority; the connector ignores it.
        let channel = Endpoint::from_static("http://netns-holder.sock")
            .connect_with_connector(connector)
            .await
            .map_err(|e| ClientError::Connect {
                path: socket.clone(),
                reason: innermost(&e),
            })?;
        Ok(Self {
            inner: NetnsHolderClient::new(channel),
            socket,
        })
    }

    /// The socket this client is connected to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The generated tonic client, for requests the typed methods do not cover (e.g.
    /// sending arguments this crate would refuse to build).
    pub fn raw(&mut self) -> &mut NetnsHolderClient<Channel> {
        &mut self.inner
    }

    /// `CreatePod` without host ports.
    pub async fn create_pod(
        &mut self,
        name: &PodName,
        no_pause: bool,
        annotations: BTreeMap<String, String>,
    ) -> Result<pb::CreatePodResponse, ClientError> {
        self.create_pod_with_ports(name, no_pause, annotations, &[])
            .await
    }

    /// `CreatePod` publishing `ports`.
    pub async fn create_pod_with_ports(
        &mut self,
        name: &PodName,
        no_pause: bool,
        annotations: BTreeMap<String, String>,
        ports: &[PortMapping],
    ) -> Result<pb::CreatePodResponse, ClientError> {
        let request = pb::CreatePodRequest {
            name: name.to_string(),
            no_pause,
            annotations,
            ports: ports.iter().map(api::port_message).collect(),
        };
        rpc("CreatePod", self.inner.create_pod(request).await)
    }

    /// `AttachPod` without host ports; `netns` must be absolute.
    pub async fn attach_pod(
        &mut self,
        name: &PodName,
        netns: &Path,
        annotations: BTreeMap<String, String>,
    ) -> Result<pb::AttachPodResponse, ClientError> {
        self.attach_pod_with_ports(name, netns, annotations, &[])
            .await
    }

    /// `AttachPod` publishing `ports`; `netns` must be absolute.
    pub async fn attach_pod_with_ports(
        &mut self,
        name: &PodName,
        netns: &Path,
        annotations: BTreeMap<String, String>,
        ports: &[PortMapping],
    ) -> Result<pb::AttachPodResponse, ClientError> {
        let request = pb::AttachPodRequest {
            name: name.to_string(),
            netns: netns.display().to_string(),
            annotations,
            ports: ports.iter().map(api::port_message).collect(),
            leave_wired_elsewhere: false,
        };
        rpc("AttachPod", self.inner.attach_pod(request).await)
    }

    /// `AttachPod` publishing `ports`, unless another network plugin wired the namespace:
    /// then nothing is done and the answer's `wired_elsewhere` names the links found.
    pub async fn attach_pod_unless_wired_elsewhere(
        &mut self,
        name: &PodName,
        netns: &Path,
        annotations: BTreeMap<String, String>,
        ports: &[PortMapping],
    ) -> Result<pb::AttachPodResponse, ClientError> {
        let request = pb::AttachPodRequest {
            name: name.to_string(),
            netns: netns.display().to_string(),
            annotations,
            ports: ports.iter().map(api::port_message).collect(),
            leave_wired_elsewhere: true,
        };
        rpc("AttachPod", self.inner.attach_pod(request).await)
    }

    /// `PublishPodPorts`: publishes `ports` besides the pod's own (NOT_FOUND if there is no
    /// such pod).
    pub async fn publish_pod_ports(
        &mut self,
        name: &PodName,
        ports: &[PortMapping],
    ) -> Result<pb::PublishPodPortsResponse, ClientError> {
        let request = pb::PublishPodPortsRequest {
            name: name.to_string(),
            ports: ports.iter().map(api::port_message).collect(),
        };
        rpc(
            "PublishPodPorts",
            self.inner.publish_pod_ports(request).await,
        )
    }

    /// `RemovePod`.
    pub async fn remove_pod(
        &mut self,
        name: &PodName,
    ) -> Result<pb::RemovePodResponse, ClientError> {
        let request = pb::RemovePodRequest {
            name: name.to_string(),
        };
        rpc("RemovePod", self.inner.remove_pod(request).await)
    }

    /// `ReleasePodPorts`: withdraws the pod's host ports (NOT_FOUND if there is no such pod).
    pub async fn release_pod_ports(
        &mut self,
        name: &PodName,
    ) -> Result<pb::ReleasePodPortsResponse, ClientError> {
        let request = pb::ReleasePodPortsRequest {
            name: name.to_string(),
        };
        rpc(
            "ReleasePodPorts",
            self.inner.release_pod_ports(request).await,
        )
    }

    /// `GetPod`.
    pub async fn get_pod(&mut self, name: &PodName) -> Result<pb::GetPodResponse, ClientError> {
        let request = pb::GetPodRequest {
            name: name.to_string(),
        };
        rpc("GetPod", self.inner.get_pod(request).await)
    }

    /// `ListPods`.
    pub async fn list_pods(&mut self) -> Result<pb::ListPodsResponse, ClientError> {
        rpc(
            "ListPods",
            self.inner.list_pods(pb::ListPodsRequest {}).await,
        )
    }

    /// `Check`.
    pub async fn check(&mut self) -> Result<pb::CheckResponse, ClientError> {
        rpc("Check", self.inner.check(pb::CheckRequest {}).await)
    }

    /// `Repair`.
    pub async fn repair(&mut self) -> Result<pb::RepairResponse, ClientError> {
        rpc("Repair", self.inner.repair(pb::RepairRequest {}).await)
    }

    /// `Gc`: removes every pod whose name or id is not in `keep`.
    pub async fn gc(&mut self, keep: Vec<String>) -> Result<pb::GcResponse, ClientError> {
        rpc("Gc", self.inner.gc(pb::GcRequest { keep }).await)
    }

    /// `Status`.
    pub async fn status(&mut self) -> Result<pb::StatusResponse, ClientError> {
        rpc("Status", self.inner.status(pb::StatusRequest {}).await)
    }

    /// `AddPeer`.
    pub async fn add_peer(&mut self, peer: &Peer) -> Result<pb::AddPeerResponse, ClientError> {
        let request = pb::AddPeerRequest {
            pod_cidr: peer.pod_cidr.to_string(),
            via: peer.via.to_string(),
        };
        rpc("AddPeer", self.inner.add_peer(request).await)
    }

    /// `RemovePeer`.
    pub async fn remove_peer(
        &mut self,
        pod_cidr: &ipnet::IpNet,
    ) -> Result<pb::RemovePeerResponse, ClientError> {
        let request = pb::RemovePeerRequest {
            pod_cidr: pod_cidr.to_string(),
        };
        rpc("RemovePeer", self.inner.remove_peer(request).await)
    }

    /// `ListPeers`.
    pub async fn list_peers(&mut self) -> Result<pb::ListPeersResponse, ClientError> {
        rpc(
            "ListPeers",
            self.inner.list_peers(pb::ListPeersRequest {}).await,
        )
    }

    /// `Reload`.
    pub async fn reload(&mut self) -> Result<pb::ReloadResponse, ClientError> {
        rpc("Reload", self.inner.reload(pb::ReloadRequest {}).await)
    }

    /// `ReportNriEvent`: counts an NRI event the plugin handled in the daemon's metrics.
    pub async fn report_nri_event(
        &mut self,
        event: &str,
        ok: bool,
        duration_seconds: f64,
    ) -> Result<(), ClientError> {
        let request = pb::ReportNriEventRequest {
            event: event.to_string(),
            ok,
            duration_seconds,
        };
        rpc("ReportNriEvent", self.inner.report_nri_event(request).await).map(|_| ())
    }
}

fn rpc<T>(
    method: &'static str,
    result: Result<tonic::Response<T>, Status>,
) -> Result<T, ClientError> {
    result
        .map(tonic::Response::into_inner)
        .map_err(|status| ClientError::Rpc { method, status })
}
