//! The pod network operations the plugin needs ([`PodNetwork`]) and their real
//! implementation over the netns-holder daemon API ([`DaemonNetwork`]).
//!
//! Every daemon call, connection included, is bounded by a deadline the caller gives and
//! by the configured call timeout (1.5 s by default), whichever comes first, so that the
//! plugin answers the runtime well within its 2 s budget: a daemon that is not running is
//! reported at once ("cannot connect to netns-holder at PATH"), one that hangs after the
//! timeout, each as an error naming the socket and the call. The gRPC channel is kept
//! between calls and re-made after a connection failure.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use netns_holder_client::client::{Client, ClientError};
use netns_holder_core::names::PodName;
use netns_holder_core::ports::PortMapping;
use thiserror::Error;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A pod as the daemon reports it (what the plugin looks at).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPod {
    /// The pod name.
    pub name: PodName,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its addresses in CIDR form.
    pub ips: Vec<String>,
    /// The network namespace path.
    pub netns: String,
}

/// What [`PodNetwork::ensure`] found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wiring {
    /// The pod is ours: wired now, or already (by this plugin, or by our CNI entry for the
    /// same sandbox, whose CRI host ports the requested ones were added to).
    Ours(NetworkPod),
    /// Another network plugin wired the namespace (these links besides `lo` are in it);
    /// nothing was done.
    WiredElsewhere {
        /// The links found.
        links: Vec<String>,
    },
}

/// A failed pod network operation, naming the daemon and the call.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NetworkError {
    /// The daemon's socket cannot be connected to.
    #[error("netns-holder daemon unreachable: {message}")]
    Unreachable {
        /// The client's message (names the socket and the reason).
        message: String,
    },
    /// The daemon did not answer in time.
    #[error("netns-holder daemon at {} did not answer {method} within {after:?}", socket.display())]
    Timeout {
        /// The daemon's socket.
        socket: PathBuf,
        /// The call.
        method: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The daemon answered with an error.
    #[error("netns-holder {method} failed: {message}")]
    Rejected {
        /// The call.
        method: &'static str,
        /// The daemon's gRPC code.
        code: tonic::Code,
        /// The daemon's message (names the pod and the object).
        message: String,
    },
    /// The daemon's answer lacks something it must hold.
    #[error("netns-holder {method} answer is malformed: {message}")]
    BadAnswer {
        /// The call.
        method: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The pod network operations of the plugin; every call finishes by `deadline`.
pub trait PodNetwork: Send + Sync + 'static {
    /// Ensures the pod `name` is wired in the existing namespace `netns`, publishing
    /// `ports` (idempotent: an identical existing pod is returned unchanged, its ports not
    /// published again if they were released). A pod our CNI entry made for this namespace
    /// gets `ports` added to its own; a namespace another network plugin wired is left alone
    /// ([`Wiring::WiredElsewhere`]).
    fn ensure(
        &self,
        name: &PodName,
        netns: &Path,
        annotations: BTreeMap<String, String>,
        ports: &[PortMapping],
        deadline: Instant,
    ) -> impl Future<Output = Result<Wiring, NetworkError>> + Send;

    /// Withdraws the host ports of pod `name` (the daemon's `ReleasePodPorts`); `false` if
    /// there was nothing to release, the pod included.
    fn release_ports(
        &self,
        name: &PodName,
        deadline: Instant,
    ) -> impl Future<Output = Result<bool, NetworkError>> + Send;

    /// The pod `name`, if it exists.
    fn get(
        &self,
        name: &PodName,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<NetworkPod>, NetworkError>> + Send;

    /// Removes the pod `name`; `false` if there was none.
    fn remove(
        &self,
        name: &PodName,
        deadline: Instant,
    ) -> impl Future<Output = Result<bool, NetworkError>> + Send;

    /// Every pod.
    fn list(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<NetworkPod>, NetworkError>> + Send;

    /// Reports an NRI event the plugin handled (`run_pod_sandbox`, `stop_pod_sandbox`,
    /// `remove_pod_sandbox`, `synchronize`), whether it succeeded and how long it took, to
    /// the daemon's metrics. Best effort: failures are ignored (a daemon without metrics
    /// still counts them; an older one answers UNIMPLEMENTED). Does nothing by default.
    fn report_event(
        &self,
        event: &'static str,
        ok: bool,
        took: Duration,
    ) -> impl Future<Output = ()> + Send {
        let _ = (event, ok, took);
        async {}
    }
}

/// Default bound of one daemon call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(1500);

/// [`PodNetwork`] over the daemon API.
pub struct DaemonNetwork {
    socket: PathBuf,
    call_timeout: Duration,
    client: Mutex<Option<Client>>,
}

impl DaemonNetwork {
    /// A network backed by the daemon at `socket`; each call takes at most `call_timeout`.
    pub fn new(socket: impl Into<PathBuf>, call_timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            call_timeout,
            client: Mutex::new(None),
        }
    }

    /// The daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    async fn client(&self) -> Result<Client, ClientError> {
        let mut cached = self.client.lock().await;
        if let Some(client) = cached.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect(&self.socket).await?;
        *cached = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` on a client within the deadline, mapping errors.
    async fn run<T, F, Fut>(
        &self,
        method: &'static str,
        deadline: Instant,
        call: F,
    ) -> Result<T, NetworkError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let started = Instant::now();
        let deadline = deadline.min(started + self.call_timeout);
        let attempt = async {
            let client = self.client().await?;
            call(client).await
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let error = map_error(method, error);
                let broken = match &error {
                    NetworkError::Unreachable { .. } => true,
                    NetworkError::Rejected { code, .. } => matches!(
                        code,
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ),
                    _ => false,
                };
                if broken {
                    // The channel may be broken: make a new one next time.
                    *self.client.lock().await = None;
                }
                Err(error)
            }
            Err(_) => {
                *self.client.lock().await = None;
                Err(NetworkError::Timeout {
                    socket: self.socket.clone(),
                    method,
                    after: started.elapsed(),
                })
            }
        }
    }
}

fn map_error(method: &'static str, error: ClientError) -> NetworkError {
    match error {
        ClientError::Connect { .. } => NetworkError::Unreachable {
            message: error.to_string(),
        },
        ClientError::Rpc { status, .. } => NetworkError::Rejected {
            method,
            code: status.code(),
            message: if status.message().is_empty() {
                format!("{:?}", status.code())
            } else {
                status.message().to_string()
            },
        },
    }
}

fn network_pod(
    method: &'static str,
    pod: Option<netns_holder_client::api::pb::Pod>,
) -> Result<NetworkPod, NetworkError> {
    let pod = pod.ok_or_else(|| NetworkError::BadAnswer {
        method,
        message: "no pod".into(),
    })?;
    let name = PodName::new(pod.name).map_err(|e| NetworkError::BadAnswer {
        method,
        message: e.to_string(),
    })?;
    Ok(NetworkPod {
        name,
        annotations: pod.annotations,
        ips: pod.ips,
        netns: pod.netns,
    })
}

/// Whether two paths name the same network namespace (same nsfs device and inode, whatever
/// the path: a bind mount, `/proc/<pid>/ns/net`, a symlink).
fn same_namespace(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl PodNetwork for DaemonNetwork {
    async fn ensure(
        &self,
        name: &PodName,
        netns: &Path,
        annotations: BTreeMap<String, String>,
        ports: &[PortMapping],
        deadline: Instant,
    ) -> Result<Wiring, NetworkError> {
        let answer = self
            .run("AttachPod", deadline, |mut client| async move {
                match client
                    .attach_pod_unless_wired_elsewhere(name, netns, annotations, ports)
                    .await
                {
                    Ok(answer) if !answer.wired_elsewhere.is_empty() => {
                        Ok(Ok(Err(answer.wired_elsewhere)))
                    }
                    Ok(answer) => Ok(Ok(Ok(answer.pod))),
                    // The CNI entry wires the same sandbox under the same derived name (with its
                    // own owner annotations, hence the conflict). If that pod holds this very
                    // namespace, the sandbox's network is ours already, with the CNI entry's
                    // (CRI) host ports: the requested ones are published on top of them.
                    Err(conflict) if conflict.code() == Some(tonic::Code::AlreadyExists) => {
                        let existing = match client.get_pod(name).await?.pod {
                            Some(existing) if same_namespace(Path::new(&existing.netns), netns) => {
                                existing
                            }
                            _ => return Err(conflict),
                        };
                        if ports.is_empty() {
                            return Ok(Ok(Ok(Some(existing))));
                        }
                        match client.publish_pod_ports(name, ports).await {
                            Ok(published) => Ok(Ok(Ok(published.pod))),
                            Err(e) => Ok(Err(map_error("PublishPodPorts", e))),
                        }
                    }
                    Err(e) => Err(e),
                }
            })
            .await??;
        match answer {
            Ok(pod) => Ok(Wiring::Ours(network_pod("AttachPod", pod)?)),
            Err(links) => Ok(Wiring::WiredElsewhere { links }),
        }
    }

    async fn release_ports(&self, name: &PodName, deadline: Instant) -> Result<bool, NetworkError> {
        self.run("ReleasePodPorts", deadline, |mut client| async move {
            match client.release_pod_ports(name).await {
                Ok(answer) => Ok(answer.released),
                Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    async fn get(
        &self,
        name: &PodName,
        deadline: Instant,
    ) -> Result<Option<NetworkPod>, NetworkError> {
        let answer = self
            .run("GetPod", deadline, |mut client| async move {
                match client.get_pod(name).await {
                    Ok(answer) => Ok(Some(answer)),
                    Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        answer.map(|a| network_pod("GetPod", a.pod)).transpose()
    }

    async fn remove(&self, name: &PodName, deadline: Instant) -> Result<bool, NetworkError> {
        let answer = self
            .run("RemovePod", deadline, |mut client| async move {
                client.remove_pod(name).await
            })
            .await?;
        Ok(answer.removed)
    }

    async fn list(&self, deadline: Instant) -> Result<Vec<NetworkPod>, NetworkError> {
        let answer = self
            .run("ListPods", deadline, |mut client| async move {
                client.list_pods().await
            })
            .await?;
        answer
            .pods
            .into_iter()
            .map(|p| network_pod("ListPods", Some(p)))
            .collect()
    }

    async fn report_event(&self, event: &'static str, ok: bool, took: Duration) {
        let deadline = Instant::now() + self.call_timeout;
        let _ = self
            .run("ReportNriEvent", deadline, |mut client| async move {
                client.report_nri_event(event, ok, took.as_secs_f64()).await
            })
            .await;
    }
}
