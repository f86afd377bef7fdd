//! The daemon's Prometheus metrics and its health endpoints.
//!
//! [`Metrics`] owns the registry (built with the `prometheus-client` crate) and the handles
//! of every metric. Operations are recorded where the daemon calls the manager (the API
//! service, the start-up reconcile, the pause watcher): a counter increment is one atomic
//! add on a handle resolved once at start; a duration is one histogram observation (the
//! histogram's own short lock inside `prometheus-client`, never held across I/O).
//!
//! The gauges that describe the state (pods, host ports, peers, IPAM, the journal's size)
//! are read at scrape time from the manager through the [`Snapshot`] source installed with
//! [`Metrics::set_source`]: one short lock of the manager's state, released before the
//! text is encoded, and the text is complete before the HTTP response is written.
//!
//! [`MetricsListener`] is the HTTP/1 listener on `metrics_address`: `/metrics` (OpenMetrics
//! when the scraper accepts it, as Prometheus does, else the Prometheus text format 0.0.4),
//! `/healthz` (200 while the daemon runs: from when its API socket is bound until shutdown,
//! also during the start-up reconcile, so a long reconcile is not taken for a hung daemon)
//! and `/readyz` (503 until the start-up reconcile has finished, then 200).

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use slog::{Logger, debug, info};
use std::sync::atomic::AtomicU64;
use thiserror::Error;

/// The operations counted and timed, as their `operation` label.
pub const OPERATIONS: [Operation; 7] = [
    Operation::Create,
    Operation::Attach,
    Operation::Remove,
    Operation::ReleasePorts,
    Operation::Repair,
    Operation::Gc,
    Operation::Reconcile,
];

/// The NRI events the plugin reports, as their `event` label (a fixed set: a caller cannot
/// grow the label space).
pub const NRI_EVENTS: [&str; 4] = [
    "run_pod_sandbox",
    "stop_pod_sandbox",
    "remove_pod_sandbox",
    "synchronize",
];

/// A new metric of type `M`, registered as `name` with `help`; the handle that updates it.
fn registered<M>(registry: &mut Registry, name: &str, help: &str) -> M
where
    M: prometheus_client::registry::Metric + Clone + Default,
{
    let metric = M::default();
    registry.register(name, help, metric.clone());
    metric
}

/// Upper bounds (seconds) of the operation duration buckets: 100 µs to 10 s.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The Content-Type of `/metrics` for a scraper that accepts OpenMetrics (Prometheus does),
/// the format `prometheus-client` writes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Content-Type of `/metrics` for every other client: the Prometheus text format 0.0.4.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A manager operation, as counted in `netns_holder_operations_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// `CreatePod`.
    Create,
    /// `AttachPod`.
    Attach,
    /// `RemovePod`.
    Remove,
    /// `ReleasePodPorts`.
    ReleasePorts,
    /// `Repair`.
    Repair,
    /// `Gc`.
    Gc,
    /// The start-up reconcile.
    Reconcile,
}

impl Operation {
    /// The `operation` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Attach => "attach",
            Self::Remove => "remove",
            Self::ReleasePorts => "release_ports",
            Self::Repair => "repair",
            Self::Gc => "gc",
            Self::Reconcile => "reconcile",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationResult {
    operation: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventResult {
    event: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

/// An NRI event report the daemon refuses, naming the event.
#[derive(Debug, Error, PartialEq)]
pub enum NriEventError {
    /// Not one of [`NRI_EVENTS`].
    #[error(
        "NRI event {event:?} is not reported; the events are run_pod_sandbox, stop_pod_sandbox, remove_pod_sandbox and synchronize"
    )]
    UnknownEvent {
        /// The event as sent.
        event: String,
    },
    /// A negative or non-finite duration.
    #[error(
        "NRI event {event}: duration {duration_seconds} s is not a finite, non-negative number"
    )]
    BadDuration {
        /// The event.
        event: String,
        /// The duration as sent.
        duration_seconds: f64,
    },
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabel {
    family: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// The state the gauges show, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Pods in the state (every phase).
    pub pods: i64,
    /// Host ports published (of pods whose ports are not released).
    pub host_ports: i64,
    /// Peers from the configuration file.
    pub peers_config: i64,
    /// Peers added through the API.
    pub peers_api: i64,
    /// Peers learnt from the cluster (cluster mode).
    pub peers_etcd: i64,
    /// Per family (`ipv4`, `ipv6`): addresses allocated and the pool's capacity.
    pub ipam: Vec<(&'static str, i64, f64)>,
    /// Size of the state journal in bytes (0 when there is none).
    pub journal_bytes: i64,
    /// Network namespaces made ahead and ready for creates.
    pub netns_pool_ready: i64,
    /// How many the pool keeps ready (`netns_pool`).
    pub netns_pool_size: i64,
}

type Source = Box<dyn Fn() -> Snapshot + Send + Sync>;

/// The registry and the handles of every metric (see the module documentation).
pub struct Metrics {
    registry: Registry,
    operations: Vec<[Counter; 2]>,
    durations: Vec<Histogram>,
    pods: Gauge,
    host_ports: Gauge,
    peers: Family<SourceLabel, Gauge>,
    ipam_allocated: Family<FamilyLabel, Gauge>,
    ipam_capacity: Family<FamilyLabel, Gauge<f64, AtomicU64>>,
    drift: Family<KindLabel, Gauge>,
    pause_restarts: Counter,
    journal_bytes: Gauge,
    netns_pool_ready: Gauge,
    netns_pool_size: Gauge,
    nri_events: Vec<[Counter; 2]>,
    nri_durations: Vec<Histogram>,
    source: OnceLock<Source>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `netns_holder_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("netns_holder");
        let operations_family: Family<OperationResult, Counter> = registered(
            &mut registry,
            "operations",
            "Manager operations by operation and result (ok or error)",
        );
        let durations_family = Family::<OperationLabel, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "operation_duration_seconds",
            "Duration of manager operations in seconds",
            durations_family.clone(),
        );
        let operations = OPERATIONS
            .iter()
            .map(|op| {
                ["ok", "error"].map(|result| {
                    operations_family
                        .get_or_create(&OperationResult {
                            operation: op.label(),
                            result,
                        })
                        .clone()
                })
            })
            .collect();
        let durations = OPERATIONS
            .iter()
            .map(|op| {
                durations_family
                    .get_or_create(&OperationLabel {
                        operation: op.label(),
                    })
                    .clone()
            })
            .collect();
        let [
            pods,
            host_ports,
            journal_bytes,
            netns_pool_ready,
            netns_pool_size,
        ] = [
            ("pods", "Pods in the state (every phase)"),
            ("host_ports", "Host ports published by pods"),
            ("state_journal_bytes", "Size of the state journal in bytes"),
            (
                "netns_pool_ready",
                "Network namespaces made ahead of creates and ready to be taken",
            ),
            (
                "netns_pool_size",
                "Network namespaces the pool keeps ready (netns_pool; 0 for none)",
            ),
        ]
        .map(|(name, help)| registered::<Gauge>(&mut registry, name, help));
        let peers: Family<SourceLabel, Gauge> = registered(
            &mut registry,
            "peers",
            "Peer nodes by source (config, api or etcd)",
        );
        let ipam_allocated: Family<FamilyLabel, Gauge> = registered(
            &mut registry,
            "ipam_addresses_allocated",
            "Pod addresses allocated, by family",
        );
        let ipam_capacity: Family<FamilyLabel, Gauge<f64, AtomicU64>> = registered(
            &mut registry,
            "ipam_addresses_capacity",
            "Pod addresses that can be allocated, by family",
        );
        let drift: Family<KindLabel, Gauge> = registered(
            &mut registry,
            "drift_findings",
            "Findings of the last check (by problem) or reconcile/repair (by what was done)",
        );
        let pause_restarts: Counter = registered(
            &mut registry,
            "pause_restarts",
            "Pause processes restarted after they died",
        );
        let nri_family: Family<EventResult, Counter> = registered(
            &mut registry,
            "nri_events",
            "NRI events handled by the plugin, by event and result (ok or error)",
        );
        let nri_durations_family = Family::<EventLabel, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "nri_event_duration_seconds",
            "Time the NRI plugin took to handle an event, in seconds",
            nri_durations_family.clone(),
        );
        let nri_events = NRI_EVENTS
            .iter()
            .map(|event| {
                ["ok", "error"].map(|result| {
                    nri_family
                        .get_or_create(&EventResult { event, result })
                        .clone()
                })
            })
            .collect();
        let nri_durations = NRI_EVENTS
            .iter()
            .map(|event| {
                nri_durations_family
                    .get_or_create(&EventLabel { event })
                    .clone()
            })
            .collect();
        Self {
            nri_events,
            nri_durations,
            registry,
            operations,
            durations,
            pods,
            host_ports,
            peers,
            ipam_allocated,
            ipam_capacity,
            drift,
            pause_restarts,
            journal_bytes,
            netns_pool_ready,
            netns_pool_size,
            source: OnceLock::new(),
            ready: AtomicBool::new(false),
        }
    }

    /// Installs where the gauges are read from at scrape time (once; later calls are
    /// ignored). Until then the gauges show 0.
    pub fn set_source(&self, source: impl Fn() -> Snapshot + Send + Sync + 'static) {
        let _ = self.source.set(Box::new(source));
    }

    /// Counts one operation that started at `start` and ended with `ok`.
    pub fn record(&self, operation: Operation, start: Instant, ok: bool) {
        let i = operation.index();
        self.durations[i].observe(start.elapsed().as_secs_f64());
        self.operations[i][usize::from(!ok)].inc();
    }

    /// Counts an NRI event the plugin reported (one of [`NRI_EVENTS`]).
    pub fn record_nri_event(
        &self,
        event: &str,
        ok: bool,
        duration_seconds: f64,
    ) -> Result<(), NriEventError> {
        let index = NRI_EVENTS.iter().position(|e| *e == event).ok_or_else(|| {
            NriEventError::UnknownEvent {
                event: event.to_string(),
            }
        })?;
        if !duration_seconds.is_finite() || duration_seconds < 0.0 {
            return Err(NriEventError::BadDuration {
                event: event.to_string(),
                duration_seconds,
            });
        }
        self.nri_durations[index].observe(duration_seconds);
        self.nri_events[index][usize::from(!ok)].inc();
        Ok(())
    }

    /// Counts pause processes restarted.
    pub fn pauses_restarted(&self, count: usize) {
        self.pause_restarts.inc_by(count as u64);
    }

    /// Replaces the drift findings with `kinds` (kind, count), from the last check,
    /// reconcile or repair.
    pub fn set_drift<'a>(&self, kinds: impl IntoIterator<Item = (&'a str, usize)>) {
        self.drift.clear();
        for (kind, count) in kinds {
            self.drift
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc_by(count as i64);
        }
    }

    /// Marks the start-up reconcile finished: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Whether the start-up reconcile has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Reads the state gauges from the source, then encodes everything as text.
    pub fn encode(&self) -> String {
        if let Some(source) = self.source.get() {
            let s = source();
            self.pods.set(s.pods);
            self.host_ports.set(s.host_ports);
            self.peers
                .get_or_create(&SourceLabel { source: "config" })
                .set(s.peers_config);
            self.peers
                .get_or_create(&SourceLabel { source: "api" })
                .set(s.peers_api);
            self.peers
                .get_or_create(&SourceLabel { source: "etcd" })
                .set(s.peers_etcd);
            for (family, allocated, capacity) in s.ipam {
                let label = FamilyLabel { family };
                self.ipam_allocated.get_or_create(&label).set(allocated);
                self.ipam_capacity.get_or_create(&label).set(capacity);
            }
            self.journal_bytes.set(s.journal_bytes);
            self.netns_pool_ready.set(s.netns_pool_ready);
            self.netns_pool_size.set(s.netns_pool_size);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics text from `prometheus-client`: the
/// same samples, with the `# HELP` and `# TYPE` lines of a counter naming its `_total`
/// samples (OpenMetrics names the family without the suffix, which the 0.0.4 parsers
/// such as `promtool check metrics` take for a different metric), and no `# UNIT` or
/// `# EOF` lines.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: Vec<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(&name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => text.push_str(&line),
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

/// Whether the client named OpenMetrics in its `Accept` header.
fn accepts_openmetrics<B>(request: &Request<B>) -> bool {
    request
        .headers()
        .get_all(hyper::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"))
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// A failure of the metrics listener, naming its address.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The address could not be bound (in use, not local, not permitted).
    #[error("cannot listen on metrics_address {address}: {source}")]
    Bind {
        /// The configured address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The bound HTTP listener of `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug)]
pub struct MetricsListener {
    listener: tokio::net::TcpListener,
    address: SocketAddr,
}

impl MetricsListener {
    /// Binds `address` (inside a tokio runtime); a port in use is an error naming it.
    pub async fn bind(address: SocketAddr, log: &Logger) -> Result<Self, MetricsError> {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|source| MetricsError::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { address, source })?;
        info!(log, "metrics listener bound"; "metrics_address" => %address);
        Ok(Self { listener, address })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until the task is aborted (the listener closes with it). Each connection
    /// is served by its own task.
    pub async fn serve(self, metrics: Arc<Metrics>, log: Logger) {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(log, "metrics accept failed"; "error" => %e);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, &request)) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await
                {
                    debug!(log, "metrics connection failed"; "peer" => %peer, "error" => %e);
                }
            });
        }
    }
}

/// The answer to one request; the body is complete before anything is written.
fn respond<B>(metrics: &Metrics, request: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    const TEXT: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".into(),
        );
    }
    match request.uri().path() {
        "/metrics" if accepts_openmetrics(request) => {
            reply(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.encode())
        }
        "/metrics" => reply(
            StatusCode::OK,
            TEXT_CONTENT_TYPE,
            to_text_format(&metrics.encode()),
        ),
        "/healthz" => reply(StatusCode::OK, TEXT, "ok\n".into()),
        "/readyz" if metrics.is_ready() => reply(StatusCode::OK, TEXT, "ready\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            "not ready: the start-up reconcile has not finished\n".into(),
        ),
        other => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            format!("{other} not found; try /metrics, /healthz or /readyz\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_counted_by_result_and_timed() {
        let m = Metrics::new();
        m.record(Operation::Create, Instant::now(), true);
        m.record(Operation::Create, Instant::now(), true);
        m.record(Operation::Remove, Instant::now(), false);
        m.pauses_restarted(3);
        m.set_drift([("missing", 2), ("orphan", 1)]);
        m.set_drift([("missing", 1)]);
        let text = m.encode();
        for line in [
            "netns_holder_operations_total{operation=\"create\",result=\"ok\"} 2",
            "netns_holder_operations_total{operation=\"remove\",result=\"error\"} 1",
            "netns_holder_operations_total{operation=\"gc\",result=\"ok\"} 0",
            "netns_holder_operation_duration_seconds_count{operation=\"create\"} 2",
            "netns_holder_operation_duration_seconds_bucket{le=\"0.0001\",operation=\"reconcile\"} 0",
            "netns_holder_operation_duration_seconds_bucket{le=\"10.0\",operation=\"reconcile\"} 0",
            "netns_holder_pause_restarts_total 3",
            "netns_holder_drift_findings{kind=\"missing\"} 1",
            "netns_holder_pods 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
        assert!(!text.contains("orphan"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn nri_events_are_counted_and_unknown_ones_refused() {
        let m = Metrics::new();
        m.record_nri_event("run_pod_sandbox", true, 0.002).unwrap();
        m.record_nri_event("stop_pod_sandbox", false, 0.5).unwrap();
        assert_eq!(
            m.record_nri_event("update_container", true, 0.1),
            Err(NriEventError::UnknownEvent {
                event: "update_container".into()
            })
        );
        assert!(m.record_nri_event("synchronize", true, -1.0).is_err());
        assert!(m.record_nri_event("synchronize", true, f64::NAN).is_err());
        let text = m.encode();
        for line in [
            "netns_holder_nri_events_total{event=\"run_pod_sandbox\",result=\"ok\"} 1",
            "netns_holder_nri_events_total{event=\"stop_pod_sandbox\",result=\"error\"} 1",
            "netns_holder_nri_events_total{event=\"synchronize\",result=\"ok\"} 0",
            "netns_holder_nri_event_duration_seconds_count{event=\"stop_pod_sandbox\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
    }

    #[test]
    fn the_gauges_come_from_the_source() {
        let m = Metrics::new();
        m.set_source(|| Snapshot {
            pods: 3,
            host_ports: 2,
            peers_config: 1,
            peers_api: 0,
            peers_etcd: 4,
            ipam: vec![("ipv4", 3, 65533.0), ("ipv6", 3, 1.8446744073709552e19)],
            journal_bytes: 1234,
            netns_pool_ready: 5,
            netns_pool_size: 8,
        });
        let text = m.encode();
        for line in [
            "netns_holder_pods 3",
            "netns_holder_host_ports 2",
            "netns_holder_peers{source=\"config\"} 1",
            "netns_holder_peers{source=\"api\"} 0",
            "netns_holder_peers{source=\"etcd\"} 4",
            "netns_holder_ipam_addresses_allocated{family=\"ipv4\"} 3",
            "netns_holder_ipam_addresses_capacity{family=\"ipv4\"} 65533.0",
            "netns_holder_state_journal_bytes 1234",
            "netns_holder_netns_pool_ready 5",
            "netns_holder_netns_pool_size 8",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing from\n{text}"
            );
        }
    }

    #[test]
    fn the_text_format_names_counters_with_their_suffix() {
        let m = Metrics::new();
        m.record(Operation::Gc, Instant::now(), true);
        let text = to_text_format(&m.encode());
        assert!(
            text.contains("# TYPE netns_holder_operations_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP netns_holder_pause_restarts_total "),
            "{text}"
        );
        assert!(text.contains("# TYPE netns_holder_pods gauge\n"), "{text}");
        assert!(
            text.contains("netns_holder_operations_total{operation=\"gc\",result=\"ok\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"), "{text}");
        let request = Request::get("/metrics")
            .header(
                hyper::header::ACCEPT,
                "application/openmetrics-text;version=1.0.0",
            )
            .body(())
            .unwrap();
        let response = respond(&m, &request);
        assert_eq!(
            response.headers()[hyper::header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
    }

    #[test]
    fn readyz_is_503_until_ready_and_unknown_paths_are_404() {
        let m = Metrics::new();
        let get = |path: &str| {
            let request = Request::get(path).body(()).unwrap();
            respond(&m, &request).status()
        };
        assert_eq!(get("/healthz"), StatusCode::OK);
        assert_eq!(get("/readyz"), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/nope"), StatusCode::NOT_FOUND);
        m.set_ready();
        assert_eq!(get("/readyz"), StatusCode::OK);
        assert_eq!(get("/metrics"), StatusCode::OK);
    }
}
