//! A small NRI plugin stub: implement [`Plugin`] (one method per event, each a no-op unless
//! overridden), then [`run()`] it. The stub does the rest, as the Go stub does:
//!
//! * registration: RegisterPlugin with the plugin's name and index ([`Identity`]), on a
//!   dialed socket or the fd the runtime passed (`NRI_PLUGIN_SOCKET`, [`Transport`]);
//! * Configure: hands the request to [`Plugin::configure`] and subscribes to
//!   [`Plugin::events`] (the mask is `1 << (event - 1)` per event, §4.2);
//! * Synchronize: collects the parts of a split request (`more = true` parts are answered
//!   `more = true` with no updates, §3.6), then calls [`Plugin::synchronize`] once with every
//!   pod and container;
//! * Shutdown: calls [`Plugin::shutdown`] and answers OK;
//! * events: RunPodSandbox, StopPodSandbox and RemovePodSandbox (and the same events sent
//!   as StateChange by runtimes before NRI v0.12) go to the pod methods; every other
//!   StateChange goes to [`Plugin::state_change`]; unknown methods are UNIMPLEMENTED;
//! * reconnection: after the runtime restarts, the stub dials again with exponential
//!   backoff and registers again; an inherited socket ends the plugin when it closes
//!   ([`crate::run`]).
//!
//! An error [`Status`] returned by a method is the answer to the runtime; for
//! RunPodSandbox it fails the pod's creation.
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use nri::pb;
//! use nri::run::{Backoff, Identity, Transport};
//! use nri::stub::{self, Plugin};
//! use nri::ttrpc::Status;
//!
//! /// Logs every pod the runtime starts.
//! struct PodLogger;
//!
//! impl Plugin for PodLogger {
//!     fn events(&self) -> Vec<pb::Event> {
//!         vec![pb::Event::RunPodSandbox]
//!     }
//!
//!     async fn run_pod_sandbox(&self, pod: pb::PodSandbox) -> Result<(), Status> {
//!         println!("pod {}/{} is starting", pod.namespace, pod.name);
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // NRI_PLUGIN_NAME/NRI_PLUGIN_IDX, an `NN-name` executable, else 90-pod-logger.
//!     let identity = Identity::resolve(None, None, "pod-logger", "90")?;
//!     // The fd in NRI_PLUGIN_SOCKET when the runtime started us, else its socket.
//!     let transport = Transport::from_env(nri::api::DEFAULT_SOCKET)?;
//!     let log = slog::Logger::root(slog::Discard, slog::o!());
//!     let shutdown = async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     };
//!     stub::run(Arc::new(PodLogger), transport, identity, Backoff::default(), shutdown, log)
//!         .await?;
//!     Ok(())
//! }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};

use prost::Message;
use slog::Logger;

use crate::api::{self, PLUGIN_SERVICE, method, pb};
use crate::run::{self, Backoff, Identity, RunError, Transport};
use crate::ttrpc::Status;
use crate::ttrpc::server::{Reply, RequestContext, Service, decode_request, unimplemented};

/// An NRI plugin: the events it subscribes to and a method per call it may get. Every
/// method but [`Plugin::events`] has a default that does nothing and succeeds.
///
/// The methods may run concurrently (the runtime may send events for different pods at
/// once), so a plugin keeps its state behind locks.
pub trait Plugin: Send + Sync + 'static {
    /// The events to subscribe to, answered to Configure. Runtimes send only these (and
    /// Synchronize and Shutdown, which need no subscription).
    fn events(&self) -> Vec<pb::Event>;

    /// Configure, the runtime's first call after registration: its name, version, NRI
    /// version, timeouts and the plugin's configuration text (`config`). An error refuses
    /// the configuration and the runtime drops the plugin.
    fn configure(&self, _request: &pb::ConfigureRequest) -> Result<(), Status> {
        Ok(())
    }

    /// Synchronize: every existing pod sandbox and container, once per connection after
    /// Configure (the parts of a split request already joined). Returns container updates.
    fn synchronize(
        &self,
        _pods: Vec<pb::PodSandbox>,
        _containers: Vec<pb::Container>,
    ) -> impl Future<Output = Result<Vec<pb::ContainerUpdate>, Status>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Shutdown: the runtime asks the plugin to stop (current runtimes never send it).
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// RunPodSandbox: a pod sandbox is being started.
    fn run_pod_sandbox(
        &self,
        _pod: pb::PodSandbox,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        async { Ok(()) }
    }

    /// StopPodSandbox: a pod sandbox is being stopped.
    fn stop_pod_sandbox(
        &self,
        _pod: pb::PodSandbox,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        async { Ok(()) }
    }

    /// RemovePodSandbox: a pod sandbox has been removed.
    fn remove_pod_sandbox(
        &self,
        _pod: pb::PodSandbox,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        async { Ok(()) }
    }

    /// StateChange for any other event (container lifecycle events, and every event a
    /// runtime without the dedicated call sends this way).
    fn state_change(
        &self,
        _event: pb::StateChangeEvent,
    ) -> impl Future<Output = Result<(), Status>> + Send {
        async { Ok(()) }
    }
}

/// Runs `plugin` until `shutdown` resolves (or, with an inherited socket, until the runtime
/// closes it), registering as `identity` and reconnecting with `backoff` (see
/// [`crate::run::run()`]).
pub async fn run<P: Plugin>(
    plugin: Arc<P>,
    transport: Transport,
    identity: Identity,
    backoff: Backoff,
    shutdown: impl Future<Output = ()>,
    log: Logger,
) -> Result<(), RunError> {
    run::run(
        || service(plugin.clone()),
        transport,
        identity,
        backoff,
        shutdown,
        log,
    )
    .await
}

/// The Plugin service of one runtime connection, for serving `plugin` on a connection
/// built by hand ([`crate::conn::ConnectionBuilder`]); [`run()`] makes one per connection.
pub fn service<P: Plugin>(plugin: Arc<P>) -> Arc<StubService<P>> {
    Arc::new(StubService {
        plugin,
        sync: Arc::new(Mutex::new(None)),
    })
}

/// Parts of a split Synchronize collected so far.
type SyncParts = Option<(Vec<pb::PodSandbox>, Vec<pb::Container>)>;

/// The `nri.pkg.api.v1alpha1.Plugin` service of one runtime connection, calling a
/// [`Plugin`].
pub struct StubService<P> {
    plugin: Arc<P>,
    sync: Arc<Mutex<SyncParts>>,
}

impl<P: Plugin> Service for StubService<P> {
    fn name(&self) -> &str {
        PLUGIN_SERVICE
    }

    fn call(&self, method: &str, payload: Vec<u8>, _ctx: RequestContext) -> Reply {
        let plugin = self.plugin.clone();
        match method {
            method::CONFIGURE => Box::pin(async move {
                let request: pb::ConfigureRequest = decode_request(method::CONFIGURE, &payload)?;
                plugin.configure(&request)?;
                let events = api::event_mask(&plugin.events());
                Ok(pb::ConfigureResponse { events }.encode_to_vec())
            }),
            method::SYNCHRONIZE => {
                let sync = self.sync.clone();
                Box::pin(async move {
                    let request: pb::SynchronizeRequest =
                        decode_request(method::SYNCHRONIZE, &payload)?;
                    let (pods, containers) = {
                        let mut parts = sync
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        let (pods, containers) = parts.get_or_insert_with(Default::default);
                        pods.extend(request.pods);
                        containers.extend(request.containers);
                        if request.more {
                            return Ok(pb::SynchronizeResponse {
                                update: Vec::new(),
                                more: true,
                            }
                            .encode_to_vec());
                        }
                        parts.take().unwrap_or_default()
                    };
                    let update = plugin.synchronize(pods, containers).await?;
                    Ok(pb::SynchronizeResponse {
                        update,
                        more: false,
                    }
                    .encode_to_vec())
                })
            }
            method::SHUTDOWN => Box::pin(async move {
                plugin.shutdown().await;
                Ok(pb::Empty {}.encode_to_vec())
            }),
            method::STATE_CHANGE => Box::pin(async move {
                let event: pb::StateChangeEvent = decode_request(method::STATE_CHANGE, &payload)?;
                let kind = pb::Event::try_from(event.event).unwrap_or(pb::Event::Unknown);
                match kind {
                    pb::Event::RunPodSandbox => {
                        let pod = required_pod(method::STATE_CHANGE, event.pod)?;
                        plugin.run_pod_sandbox(pod).await?;
                    }
                    pb::Event::StopPodSandbox => {
                        let pod = required_pod(method::STATE_CHANGE, event.pod)?;
                        plugin.stop_pod_sandbox(pod).await?;
                    }
                    pb::Event::RemovePodSandbox => {
                        let pod = required_pod(method::STATE_CHANGE, event.pod)?;
                        plugin.remove_pod_sandbox(pod).await?;
                    }
                    _ => plugin.state_change(event).await?,
                }
                Ok(pb::Empty {}.encode_to_vec())
            }),
            method::RUN_POD_SANDBOX => Box::pin(async move {
                let request: pb::RunPodSandboxRequest =
                    decode_request(method::RUN_POD_SANDBOX, &payload)?;
                let pod = required_pod(method::RUN_POD_SANDBOX, request.pod)?;
                plugin.run_pod_sandbox(pod).await?;
                Ok(pb::RunPodSandboxResponse {}.encode_to_vec())
            }),
            method::STOP_POD_SANDBOX => Box::pin(async move {
                let request: pb::StopPodSandboxRequest =
                    decode_request(method::STOP_POD_SANDBOX, &payload)?;
                let pod = required_pod(method::STOP_POD_SANDBOX, request.pod)?;
                plugin.stop_pod_sandbox(pod).await?;
                Ok(pb::StopPodSandboxResponse {}.encode_to_vec())
            }),
            method::REMOVE_POD_SANDBOX => Box::pin(async move {
                let request: pb::RemovePodSandboxRequest =
                    decode_request(method::REMOVE_POD_SANDBOX, &payload)?;
                let pod = required_pod(method::REMOVE_POD_SANDBOX, request.pod)?;
                plugin.remove_pod_sandbox(pod).await?;
                Ok(pb::RemovePodSandboxResponse {}.encode_to_vec())
            }),
            other => unimplemented(PLUGIN_SERVICE, other),
        }
    }
}

/// The request's pod, or INVALID_ARGUMENT naming the method.
fn required_pod(method: &str, pod: Option<pb::PodSandbox>) -> Result<pb::PodSandbox, Status> {
    pod.ok_or_else(|| Status::invalid_argument(format!("{method} request has no pod")))
}
