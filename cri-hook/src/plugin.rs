//! The NRI Plugin service: what netns-holder does for each runtime call.
//!
//! | call | what happens |
//! |---|---|
//! | Configure | records the runtime's request timeout; subscribes to RUN, STOP and REMOVE_POD_SANDBOX (mask 0x7) |
//! | Synchronize | parts with `more = true` are collected and answered `more = true`, no updates; the last part triggers [`Plugin::reconcile`] and is answered `more = false` (§3.6) |
//! | RunPodSandbox, StateChange(RUN_POD_SANDBOX) | [`Plugin::run_pod`]: ensure the pod network with the host ports of `netns-holder.io/ports` (attach, idempotent) |
//! | StopPodSandbox, StateChange(STOP_POD_SANDBOX) | [`Plugin::stop_pod`]: release the pod's host ports (`ReleasePodPorts`); a pod never wired is fine |
//! | RemovePodSandbox, StateChange(REMOVE_POD_SANDBOX) | [`Plugin::remove_pod`]: full teardown (remove) |
//! | StateChange, other events | OK (never UNIMPLEMENTED: §10.2) |
//! | Shutdown | OK |
//! | anything else | UNIMPLEMENTED (12) |
//!
//! Timing: every answer is due by three quarters of the time the runtime gives (its
//! `timeout_nano`, else the request timeout from Configure, 2 s by default), and daemon
//! calls are bounded by that and by their own timeout, so a slow or absent daemon becomes a
//! clear error status instead of a dropped plugin. A reconciliation that is not done by
//! then is answered anyway and finishes in the background (containerd blocks pod events
//! while it synchronizes a plugin, so nothing is missed; a per-pod lock and a record of the
//! events seen meanwhile keep the background work from undoing a newer event).
//!
//! Errors: a malformed sandbox (options, namespace path) is INVALID_ARGUMENT naming the
//! pod, the annotation and the problem; an unreachable or timed-out daemon is UNAVAILABLE;
//! a daemon error keeps the daemon's code (except UNIMPLEMENTED and DEADLINE_EXCEEDED,
//! which would mean something else to the runtime, §10.2, and become INTERNAL and
//! UNAVAILABLE). The runtime fails RunPodSandbox on any of them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use netns_holder_core::names::PodName;
use nri::api::{self, PLUGIN_SERVICE, method, pb};
use nri::ttrpc::server::{Reply, RequestContext, Service, decode_request, unimplemented};
use nri::ttrpc::{Code, Status};
use prost::Message;
use slog::{Logger, debug, error, info, warn};
use tokio::sync::{OwnedMutexGuard, Semaphore};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::network::{NetworkError, PodNetwork, Wiring};
use crate::pod::{self, PodError, PodTarget, SANDBOX_ANNOTATION};

/// The events this plugin subscribes to: pod run, stop and remove (mask 0x7, valid on
/// every runtime version, §4.2).
pub const SUBSCRIBED: [pb::Event; 3] = [
    pb::Event::RunPodSandbox,
    pb::Event::StopPodSandbox,
    pb::Event::RemovePodSandbox,
];

/// Daemon calls a reconciliation runs at once.
const RECONCILE_CONCURRENCY: usize = 8;

/// The plugin: its pod network and the per-pod bookkeeping shared by every connection.
pub struct Plugin<N> {
    net: Arc<N>,
    log: Logger,
    tracker: Arc<Tracker>,
    /// Bound of one daemon call made by background work (reconciliation).
    call_timeout: Duration,
}

/// What a reconciliation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Pods ensured (existing or newly wired).
    pub ensured: Vec<String>,
    /// Stale pods removed.
    pub removed: Vec<String>,
    /// Sandboxes left alone (skip option, no network namespace) and why.
    pub ignored: Vec<String>,
    /// Everything that failed.
    pub failures: Vec<String>,
}

impl<N: PodNetwork> Plugin<N> {
    /// A plugin driving `net`; `call_timeout` bounds the daemon calls of background work.
    pub fn new(net: N, call_timeout: Duration, log: Logger) -> Arc<Self> {
        Arc::new(Self {
            net: Arc::new(net),
            log,
            tracker: Arc::new(Tracker::default()),
            call_timeout,
        })
    }

    /// The pod network.
    pub fn network(&self) -> &N {
        &self.net
    }

    /// A Plugin service for one runtime connection.
    pub fn service(self: &Arc<Self>) -> Arc<PluginService<N>> {
        Arc::new(PluginService {
            plugin: self.clone(),
            state: Arc::new(ConnState {
                request_timeout: Mutex::new(api::REQUEST_TIMEOUT),
                sync: Mutex::new(None),
                background: Mutex::new(Vec::new()),
            }),
        })
    }

    /// RunPodSandbox: ensures the pod's network, answering by `answer_by`.
    pub async fn run_pod(&self, pod: &pb::PodSandbox, answer_by: Instant) -> Result<(), Status> {
        let target = PodTarget::of(pod).map_err(|e| pod_status(&e))?;
        let log = self.log.new(slog::o!("pod" => target.display.clone(),
            "sandbox" => target.sandbox_id.clone(), "name" => target.name.to_string()));
        if target.options.skip {
            info!(log, "RunPodSandbox: skipped ({} is true)", pod::OPTION_SKIP);
            return Ok(());
        }
        let Some(netns) = target.netns.as_deref() else {
            info!(
                log,
                "RunPodSandbox: no network namespace (host network): nothing to do"
            );
            return Ok(());
        };
        let _guard = self.tracker.lock(&target.name, answer_by).await?;
        match self
            .net
            .ensure(
                &target.name,
                netns,
                target.annotations.clone(),
                &target.options.ports,
                answer_by,
            )
            .await
        {
            Ok(Wiring::Ours(wired)) => {
                self.tracker.touch(&target.name, Touch::Ensured);
                info!(log, "RunPodSandbox: pod network ready";
                    "netns" => %netns.display(), "ips" => wired.ips.join(","),
                    "host_ports" => target.options.ports.len());
                Ok(())
            }
            Ok(Wiring::WiredElsewhere { links }) => {
                match wired_elsewhere_error(&target, netns, &links) {
                    None => {
                        info!(log, "RunPodSandbox: the pod's network belongs to another network plugin; left alone";
                        "netns" => %netns.display(), "links" => links.join(","));
                        Ok(())
                    }
                    Some(message) => {
                        error!(log, "RunPodSandbox: annotation asks for something on a pod another network plugin wired"; "error" => &message);
                        Err(Status::new(Code::FailedPrecondition, message))
                    }
                }
            }
            Err(e) => {
                error!(log, "RunPodSandbox: cannot ensure the pod network"; "error" => %e);
                Err(network_status(&target.display, &target.name, &e))
            }
        }
    }

    /// StopPodSandbox. The runtime sends it after stopping the pod's containers and before
    /// its own network teardown; the pod network stays until RemovePodSandbox, but its host
    /// ports are released (the daemon's `ReleasePodPorts`): a stopped pod receives nothing
    /// on them and another pod may take them. Only a daemon pod this plugin made for this
    /// very sandbox is touched (as for RemovePodSandbox); a sandbox that was never wired
    /// (skipped, host network, unknown) succeeds. Releasing is idempotent, and a later
    /// Synchronize does not publish the ports again.
    pub async fn stop_pod(&self, pod: &pb::PodSandbox, answer_by: Instant) -> Result<(), Status> {
        let name = lenient_name(pod).map_err(|e| pod_status(&e))?;
        let display = pod::display_name(pod);
        let log = self.log.new(
            slog::o!("pod" => display.clone(), "sandbox" => pod.id.clone(), "name" => name.to_string()),
        );
        let _guard = self.tracker.lock(&name, answer_by).await?;
        let existing = self
            .net
            .get(&name, answer_by)
            .await
            .map_err(|e| network_status(&display, &name, &e))?;
        let Some(existing) = existing else {
            debug!(
                log,
                "StopPodSandbox: no such daemon pod, nothing to release"
            );
            return Ok(());
        };
        if !ours(&existing.annotations, &pod.id)
            && !crate::cni::owned_by_cni(&existing.annotations, Some(&pod.id))
        {
            debug!(log, "StopPodSandbox: the daemon pod of this name is not ours; left alone";
                "annotations" => ?existing.annotations);
            return Ok(());
        }
        match self.net.release_ports(&name, answer_by).await {
            Ok(released) => {
                info!(log, "StopPodSandbox: host ports released"; "released" => released);
                Ok(())
            }
            Err(e) => {
                error!(log, "StopPodSandbox: cannot release the host ports"; "error" => %e);
                Err(network_status(&display, &name, &e))
            }
        }
    }

    /// RemovePodSandbox: removes the daemon pod of this sandbox, if it is one this plugin
    /// made for this very sandbox (owner and sandbox-id annotations); any other pod of that
    /// name is left alone.
    pub async fn remove_pod(&self, pod: &pb::PodSandbox, answer_by: Instant) -> Result<(), Status> {
        let name = lenient_name(pod).map_err(|e| pod_status(&e))?;
        let display = pod::display_name(pod);
        let log = self.log.new(
            slog::o!("pod" => display.clone(), "sandbox" => pod.id.clone(), "name" => name.to_string()),
        );
        let _guard = self.tracker.lock(&name, answer_by).await?;
        let existing = self
            .net
            .get(&name, answer_by)
            .await
            .map_err(|e| network_status(&display, &name, &e))?;
        let Some(existing) = existing else {
            debug!(log, "RemovePodSandbox: no such daemon pod");
            self.tracker.touch(&name, Touch::Removed);
            return Ok(());
        };
        if !ours(&existing.annotations, &pod.id) {
            warn!(log, "RemovePodSandbox: the daemon pod of this name belongs to something else; left alone";
                "annotations" => ?existing.annotations);
            return Ok(());
        }
        match self.net.remove(&name, answer_by).await {
            Ok(removed) => {
                self.tracker.touch(&name, Touch::Removed);
                info!(log, "RemovePodSandbox: pod network removed"; "removed" => removed);
                Ok(())
            }
            Err(e) => {
                error!(log, "RemovePodSandbox: cannot remove the pod network"; "error" => %e);
                Err(network_status(&display, &name, &e))
            }
        }
    }

    /// Makes the daemon match the runtime's full list of sandboxes: every sandbox with a
    /// network namespace (and no skip option) is ensured; every daemon pod this plugin
    /// manages that no listed sandbox maps to is removed. Pods touched by events since the
    /// synchronization started are left as those events made them.
    pub async fn reconcile(self: Arc<Self>, pods: Vec<pb::PodSandbox>) -> ReconcileReport {
        let epoch = self.tracker.begin();
        self.reconcile_in(pods, epoch).await
    }

    /// [`Plugin::reconcile`] within an epoch begun when the synchronization started.
    async fn reconcile_in(
        self: Arc<Self>,
        pods: Vec<pb::PodSandbox>,
        _epoch: EpochGuard,
    ) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let mut wanted: BTreeMap<PodName, PodTarget> = BTreeMap::new();
        for pod in &pods {
            match PodTarget::of(pod) {
                Ok(target) if target.options.skip => report
                    .ignored
                    .push(format!("{} ({}): skip option", target.display, target.name)),
                Ok(target) if target.netns.is_none() => report.ignored.push(format!(
                    "{} ({}): no network namespace",
                    target.display, target.name
                )),
                Ok(target) => {
                    wanted.insert(target.name.clone(), target);
                }
                Err(e) => report.failures.push(e.to_string()),
            }
        }
        let semaphore = Arc::new(Semaphore::new(RECONCILE_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        match self.net.list(Instant::now() + self.call_timeout).await {
            Ok(existing) => {
                for stale in existing
                    .into_iter()
                    .filter(|p| pod::owned_by_nri(&p.annotations) && !wanted.contains_key(&p.name))
                {
                    let plugin = self.clone();
                    let semaphore = semaphore.clone();
                    tasks.spawn(async move {
                        let _permit = semaphore.acquire_owned().await;
                        plugin.collect_stale(stale.name).await
                    });
                }
            }
            Err(e) => report.failures.push(format!(
                "cannot list the daemon's pods, nothing collected: {e}"
            )),
        }
        for (_, target) in wanted {
            let plugin = self.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                plugin.ensure_listed(target).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Outcome::Ensured(name)) => report.ensured.push(name),
                Ok(Outcome::Removed(name)) => report.removed.push(name),
                Ok(Outcome::Unchanged) => {}
                Ok(Outcome::Failed(message)) => report.failures.push(message),
                Err(e) => report.failures.push(format!("reconcile task failed: {e}")),
            }
        }
        report.ensured.sort();
        report.removed.sort();
        report
    }

    async fn collect_stale(&self, name: PodName) -> Outcome {
        let deadline = Instant::now() + self.call_timeout;
        let Ok(_guard) = self.tracker.lock(&name, deadline).await else {
            return Outcome::Failed(format!("pod {name}: busy, not collected"));
        };
        if self.tracker.touched(&name) == Some(Touch::Ensured) {
            return Outcome::Unchanged;
        }
        match self
            .net
            .remove(&name, Instant::now() + self.call_timeout)
            .await
        {
            Ok(_) => {
                self.tracker.touch(&name, Touch::Removed);
                info!(self.log, "reconcile: removed a pod the runtime no longer has"; "name" => %name);
                Outcome::Removed(name.to_string())
            }
            Err(e) => Outcome::Failed(format!("pod {name}: cannot remove: {e}")),
        }
    }

    async fn ensure_listed(&self, target: PodTarget) -> Outcome {
        let deadline = Instant::now() + self.call_timeout;
        let Ok(_guard) = self.tracker.lock(&target.name, deadline).await else {
            return Outcome::Failed(format!("pod {}: busy, not ensured", target.name));
        };
        if self.tracker.touched(&target.name) == Some(Touch::Removed) {
            return Outcome::Unchanged;
        }
        let Some(netns) = target.netns.as_deref() else {
            return Outcome::Unchanged;
        };
        match self
            .net
            .ensure(
                &target.name,
                netns,
                target.annotations.clone(),
                &target.options.ports,
                Instant::now() + self.call_timeout,
            )
            .await
        {
            Ok(Wiring::Ours(_)) => Outcome::Ensured(target.name.to_string()),
            Ok(Wiring::WiredElsewhere { links }) => {
                match wired_elsewhere_error(&target, netns, &links) {
                    None => Outcome::Unchanged,
                    Some(message) => Outcome::Failed(message),
                }
            }
            Err(e) => Outcome::Failed(format!(
                "pod {} ({}): cannot ensure: {e}",
                target.display, target.name
            )),
        }
    }
}

/// The result of one reconciliation step.
enum Outcome {
    Ensured(String),
    Removed(String),
    Unchanged,
    Failed(String),
}

/// The daemon pod name of a sandbox for a removal: the name option if it parses, else the
/// derived name (whose pod, if any, is only removed if its sandbox-id matches).
fn lenient_name(pod: &pb::PodSandbox) -> Result<PodName, PodError> {
    match pod::parse_options(&pod.annotations) {
        Ok(pod::PodOptions {
            name: Some(name), ..
        }) => Ok(name),
        _ => pod::derived_name(pod),
    }
}

/// Why a sandbox whose namespace another network plugin wired cannot be served as its
/// annotations ask (host ports, a pod name), naming the annotation; `None` when it asks
/// for nothing and is simply left alone.
fn wired_elsewhere_error(
    target: &PodTarget,
    netns: &std::path::Path,
    links: &[String],
) -> Option<String> {
    let (asked, what) = if !target.options.ports.is_empty() {
        let ports: Vec<String> = target
            .options
            .ports
            .iter()
            .map(ToString::to_string)
            .collect();
        (
            pod::OPTION_PORTS,
            format!("host ports {}", ports.join(", ")),
        )
    } else if let Some(name) = &target.options.name {
        (pod::OPTION_NAME, format!("the pod name {name}"))
    } else {
        return None;
    };
    Some(format!(
        "pod {}: annotation {asked} asks netns-holder for {what}, but another network plugin \
         wired the pod's network namespace {} (it has {}); netns-holder leaves such pods \
         alone: remove the annotation, or give the pod its network through netns-holder (its \
         CNI entry)",
        target.display,
        netns.display(),
        links.join(", ")
    ))
}

/// Whether daemon pod annotations say the pod was made by this plugin for `sandbox_id`.
fn ours(annotations: &BTreeMap<String, String>, sandbox_id: &str) -> bool {
    pod::owned_by_nri(annotations)
        && annotations.get(SANDBOX_ANNOTATION).map(String::as_str) == Some(sandbox_id)
}

/// The status for a sandbox that cannot be handled.
fn pod_status(error: &PodError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// The status for a failed daemon call about pod `display` (daemon pod `name`).
pub fn network_status(display: &str, name: &PodName, error: &NetworkError) -> Status {
    let code = match error {
        NetworkError::Unreachable { .. } | NetworkError::Timeout { .. } => Code::Unavailable,
        NetworkError::BadAnswer { .. } => Code::Internal,
        NetworkError::Rejected { code, .. } => match Code::from_i32(*code as i32) {
            // 12 would make the runtime resend the event as StateChange (§10.2), 4 reads
            // as our own deadline, 0 is not an error.
            Code::Unimplemented | Code::Ok => Code::Internal,
            Code::DeadlineExceeded => Code::Unavailable,
            other => other,
        },
    };
    Status::new(
        code,
        format!("pod {display} (netns-holder pod {name}): {error}"),
    )
}

/// When to answer a request: three quarters of the time the runtime gives.
fn answer_deadline(ctx: &RequestContext, state: &ConnState) -> Instant {
    let now = Instant::now();
    let deadline = ctx
        .deadline
        .unwrap_or_else(|| now + *lock(&state.request_timeout));
    now + deadline.saturating_duration_since(now).mul_f64(0.75)
}

/// Per-connection state of the Plugin service.
struct ConnState {
    /// The runtime's request timeout (from Configure).
    request_timeout: Mutex<Duration>,
    /// Sandboxes of a split Synchronize collected so far.
    sync: Mutex<Option<(Vec<pb::PodSandbox>, EpochGuard)>>,
    /// Background reconciliations, stopped with the connection.
    background: Mutex<Vec<AbortHandle>>,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        for handle in lock(&self.background).drain(..) {
            handle.abort();
        }
    }
}

/// The `nri.pkg.api.v1alpha1.Plugin` service of one runtime connection.
pub struct PluginService<N> {
    plugin: Arc<Plugin<N>>,
    state: Arc<ConnState>,
}

impl<N: PodNetwork> Service for PluginService<N> {
    fn name(&self) -> &str {
        PLUGIN_SERVICE
    }

    fn call(&self, method: &str, payload: Vec<u8>, ctx: RequestContext) -> Reply {
        let plugin = self.plugin.clone();
        let state = self.state.clone();
        match method {
            method::CONFIGURE => Box::pin(async move {
                let request: pb::ConfigureRequest = decode_request(method::CONFIGURE, &payload)?;
                Ok(plugin.configure(&state, request).encode_to_vec())
            }),
            method::SYNCHRONIZE => Box::pin(async move {
                let request: pb::SynchronizeRequest =
                    decode_request(method::SYNCHRONIZE, &payload)?;
                let answer_by = answer_deadline(&ctx, &state);
                let started = Instant::now();
                let answer = plugin.synchronize(&state, request, answer_by).await;
                if !answer.more {
                    plugin.report("synchronize", started, true);
                }
                Ok(answer.encode_to_vec())
            }),
            method::SHUTDOWN => Box::pin(async move {
                info!(
                    plugin.log,
                    "the runtime asked the plugin to shut down (Shutdown)"
                );
                Ok(Vec::new())
            }),
            method::STATE_CHANGE => Box::pin(async move {
                let event: pb::StateChangeEvent = decode_request(method::STATE_CHANGE, &payload)?;
                let answer_by = answer_deadline(&ctx, &state);
                plugin.state_change(event, answer_by).await?;
                Ok(Vec::new())
            }),
            method::RUN_POD_SANDBOX => Box::pin(async move {
                let request: pb::RunPodSandboxRequest =
                    decode_request(method::RUN_POD_SANDBOX, &payload)?;
                let pod = required_pod(method::RUN_POD_SANDBOX, request.pod)?;
                let started = Instant::now();
                let done = plugin.run_pod(&pod, answer_deadline(&ctx, &state)).await;
                plugin.report("run_pod_sandbox", started, done.is_ok());
                done?;
                Ok(pb::RunPodSandboxResponse {}.encode_to_vec())
            }),
            method::STOP_POD_SANDBOX => Box::pin(async move {
                let request: pb::StopPodSandboxRequest =
                    decode_request(method::STOP_POD_SANDBOX, &payload)?;
                let pod = required_pod(method::STOP_POD_SANDBOX, request.pod)?;
                let started = Instant::now();
                let done = plugin.stop_pod(&pod, answer_deadline(&ctx, &state)).await;
                plugin.report("stop_pod_sandbox", started, done.is_ok());
                done?;
                Ok(pb::StopPodSandboxResponse {}.encode_to_vec())
            }),
            method::REMOVE_POD_SANDBOX => Box::pin(async move {
                let request: pb::RemovePodSandboxRequest =
                    decode_request(method::REMOVE_POD_SANDBOX, &payload)?;
                let pod = required_pod(method::REMOVE_POD_SANDBOX, request.pod)?;
                let started = Instant::now();
                let done = plugin.remove_pod(&pod, answer_deadline(&ctx, &state)).await;
                plugin.report("remove_pod_sandbox", started, done.is_ok());
                done?;
                Ok(pb::RemovePodSandboxResponse {}.encode_to_vec())
            }),
            other => unimplemented(PLUGIN_SERVICE, other),
        }
    }
}

fn required_pod(method: &str, pod: Option<pb::PodSandbox>) -> Result<pb::PodSandbox, Status> {
    pod.ok_or_else(|| Status::invalid_argument(format!("{method} request has no pod")))
}

impl<N: PodNetwork> Plugin<N> {
    fn configure(&self, state: &ConnState, request: pb::ConfigureRequest) -> pb::ConfigureResponse {
        if request.request_timeout > 0 {
            *lock(&state.request_timeout) =
                Duration::from_millis(request.request_timeout.unsigned_abs());
        }
        let events = api::event_mask(&SUBSCRIBED);
        info!(self.log, "configured by the runtime";
            "runtime" => &request.runtime_name, "version" => &request.runtime_version,
            "nri_version" => &request.nri_version,
            "registration_timeout_ms" => request.registration_timeout,
            "request_timeout_ms" => request.request_timeout,
            "events" => format!("{events:#x}"));
        if !request.config.is_empty() {
            warn!(self.log, "ignoring the plugin configuration the runtime passed (netns-holder takes its settings from its command line)";
                "bytes" => request.config.len());
        }
        pb::ConfigureResponse { events }
    }

    async fn synchronize(
        self: &Arc<Self>,
        state: &ConnState,
        request: pb::SynchronizeRequest,
        answer_by: Instant,
    ) -> pb::SynchronizeResponse {
        let (pods, epoch) = {
            let mut sync = lock(&state.sync);
            let (collected, _) = sync.get_or_insert_with(|| (Vec::new(), self.tracker.begin()));
            collected.extend(request.pods);
            if request.more {
                debug!(self.log, "Synchronize: part received, more to come";
                    "pods_so_far" => collected.len(), "containers" => request.containers.len());
                return pb::SynchronizeResponse {
                    update: Vec::new(),
                    more: true,
                };
            }
            match sync.take() {
                Some(taken) => taken,
                None => (Vec::new(), self.tracker.begin()),
            }
        };
        info!(self.log, "Synchronize: reconciling"; "pods" => pods.len());
        let task = tokio::spawn(self.clone().reconcile_in(pods, epoch));
        lock(&state.background).push(task.abort_handle());
        match tokio::time::timeout_at(answer_by, task).await {
            Ok(Ok(report)) => log_report(&self.log, &report),
            Ok(Err(e)) => error!(self.log, "Synchronize: reconciliation failed"; "error" => %e),
            Err(_) => warn!(
                self.log,
                "Synchronize: reconciliation not finished in time; answering now, it goes on in the background"
            ),
        }
        pb::SynchronizeResponse {
            update: Vec::new(),
            more: false,
        }
    }

    async fn state_change(
        &self,
        event: pb::StateChangeEvent,
        answer_by: Instant,
    ) -> Result<(), Status> {
        let kind = pb::Event::try_from(event.event).unwrap_or(pb::Event::Unknown);
        let pod_event = matches!(
            kind,
            pb::Event::RunPodSandbox | pb::Event::StopPodSandbox | pb::Event::RemovePodSandbox
        );
        if !pod_event {
            debug!(self.log, "StateChange: event not handled"; "event" => event.event);
            return Ok(());
        }
        let pod = required_pod(method::STATE_CHANGE, event.pod)?;
        let started = Instant::now();
        let (name, done) = match kind {
            pb::Event::RunPodSandbox => ("run_pod_sandbox", self.run_pod(&pod, answer_by).await),
            pb::Event::StopPodSandbox => ("stop_pod_sandbox", self.stop_pod(&pod, answer_by).await),
            _ => ("remove_pod_sandbox", self.remove_pod(&pod, answer_by).await),
        };
        self.report(name, started, done.is_ok());
        done
    }

    /// Reports a handled event, its outcome and latency to the daemon's metrics from a
    /// task of its own: the runtime's answer never waits for it.
    fn report(&self, event: &'static str, started: Instant, ok: bool) {
        let net = self.net.clone();
        let took = started.elapsed();
        tokio::spawn(async move { net.report_event(event, ok, took).await });
    }
}

fn log_report(log: &Logger, report: &ReconcileReport) {
    info!(log, "Synchronize: reconciled";
        "ensured" => report.ensured.len(), "removed" => report.removed.join(","),
        "ignored" => report.ignored.len(), "failures" => report.failures.len());
    for failure in &report.failures {
        error!(log, "Synchronize: reconcile failure"; "error" => failure);
    }
}

// ------------------------------------------------------------------------ per-pod tracking

/// What an event did to a pod while a reconciliation ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Touch {
    Ensured,
    Removed,
}

/// Per-pod locks (daemon operations on one pod never overlap) and, while a reconciliation
/// runs, what events did meanwhile.
#[derive(Default)]
struct Tracker {
    state: Mutex<TrackerState>,
}

#[derive(Default)]
struct TrackerState {
    locks: HashMap<PodName, Arc<tokio::sync::Mutex<()>>>,
    /// Reconciliations running (touches are recorded only then).
    epochs: usize,
    touched: HashMap<PodName, Touch>,
}

/// Holds a pod's lock; drops the lock entry when nobody else wants it.
struct PodGuard {
    tracker: Arc<Tracker>,
    name: PodName,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for PodGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut state = lock(&self.tracker.state);
        if state
            .locks
            .get(&self.name)
            .is_some_and(|entry| Arc::strong_count(entry) == 1)
        {
            state.locks.remove(&self.name);
        }
    }
}

/// Ends a reconciliation epoch when dropped.
struct EpochGuard {
    tracker: Arc<Tracker>,
}

impl Drop for EpochGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.tracker.state);
        state.epochs = state.epochs.saturating_sub(1);
        if state.epochs == 0 {
            state.touched.clear();
        }
    }
}

impl Tracker {
    /// Locks pod `name`, waiting at most until `deadline`.
    async fn lock(self: &Arc<Self>, name: &PodName, deadline: Instant) -> Result<PodGuard, Status> {
        let mutex = lock(&self.state)
            .locks
            .entry(name.clone())
            .or_default()
            .clone();
        let mut guard = PodGuard {
            tracker: self.clone(),
            name: name.clone(),
            guard: None,
        };
        match tokio::time::timeout_at(deadline, mutex.lock_owned()).await {
            Ok(owned) => {
                guard.guard = Some(owned);
                Ok(guard)
            }
            Err(_) => Err(Status::new(
                Code::Unavailable,
                format!("netns-holder pod {name}: another operation on it is still running"),
            )),
        }
    }

    /// Starts a reconciliation epoch.
    fn begin(self: &Arc<Self>) -> EpochGuard {
        lock(&self.state).epochs += 1;
        EpochGuard {
            tracker: self.clone(),
        }
    }

    fn touch(&self, name: &PodName, touch: Touch) {
        let mut state = lock(&self.state);
        if state.epochs > 0 {
            state.touched.insert(name.clone(), touch);
        }
    }

    fn touched(&self, name: &PodName) -> Option<Touch> {
        lock(&self.state).touched.get(name).copied()
    }
}

/// Locks a std mutex, ignoring poisoning (the protected state stays consistent).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribes_to_the_pod_events() {
        assert_eq!(api::event_mask(&SUBSCRIBED), 0x7);
    }
}
