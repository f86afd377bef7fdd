//! API tests: the real tonic server ([`server::run_daemon`]) over `fake::FakeSystem` on a
//! temporary socket, driven through the real client code ([`cli::run`], which the binary
//! uses) and through the binary itself (`CARGO_BIN_EXE_netns-holder-fake`, the test-only build of the same `main`), as a client and as
//! a daemon (`serve --fake`, available in test builds only).
//!
//! Nothing here needs root except the tests marked so (unprivileged peers via `setpriv`,
//! `exec` into a real namespace made by `unshare`); they are skipped when not root.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use slog::{Drain, Logger, o};
use tonic::Code;

use netns_holder::cli::{self, Cli, CliError, Command, Outcome};
use netns_holder::server;
use netns_holder_client::api::pb;
use netns_holder_client::client::{Client, ClientError};
use netns_holder_core::config::Config;
use netns_holder_core::fake::FakeSystem;
use netns_holder_core::manager::PodInfo;
use netns_holder_core::names::PodName;

/// The test-only build of the binary (only ever built with `fake`): `target/debug/netns-holder`
/// is rewritten by any production build of the package, which may run meanwhile.
const BIN: &str = env!("CARGO_BIN_EXE_netns-holder-fake");

// ---------------------------------------------------------------- log capture

/// A drain keeping every record as `message key=value ...`.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

struct KvText<'a>(&'a mut String);

impl slog::Serializer for KvText<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl Drain for Captured {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut line = record.msg().to_string();
        let _ = slog::KV::serialize(&record.kv(), record, &mut KvText(&mut line));
        let _ = slog::KV::serialize(values, record, &mut KvText(&mut line));
        self.0.lock().unwrap().push(line);
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- the daemon under test

struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    fake: FakeSystem,
    logs: Captured,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), server::DaemonError>>>,
}

fn test_config(dir: &Path) -> Config {
    Config {
        socket: dir.join("run/api.sock"),
        state_dir: dir.join("state"),
        netns_dir: dir.join("netns"),
        ..Config::default()
    }
}

/// Waits until the daemon at `socket` answers `Status`.
async fn wait_ready(socket: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = Client::connect(socket).await
            && c.status().await.is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "daemon at {} not ready",
            socket.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Daemon {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path());
        let socket = config.socket.clone();
        let fake = FakeSystem::new();
        let logs = Captured::default();
        let log = Logger::root(logs.clone().fuse(), o!());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run_daemon(
            config,
            fake.clone(),
            async {
                let _ = stopped.await;
            },
            log,
        ));
        wait_ready(&socket).await;
        Self {
            dir,
            socket,
            fake,
            logs,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Runs a client command line (without the program name) through [`cli::run`].
    async fn run(&self, args: &[&str]) -> Result<Outcome, CliError> {
        let argv = ["netns-holder", "--socket", self.socket.to_str().unwrap()]
            .into_iter()
            .chain(args.iter().copied());
        let cli = Cli::try_parse_from(argv).expect("valid command line");
        let Command::Client(command) = cli.command else {
            panic!("not a client command: {args:?}")
        };
        cli::run(&self.socket, command, &Logger::root(slog::Discard, o!())).await
    }

    /// Runs a command that must print; returns (stdout, exit code).
    async fn print(&self, args: &[&str]) -> (String, u8) {
        match self.run(args).await {
            Ok(Outcome::Print { stdout, code }) => (stdout, code),
            other => panic!("{args:?}: {other:?}"),
        }
    }

    /// Runs a command that must print JSON and exit 0.
    async fn json(&self, args: &[&str]) -> Value {
        let (stdout, code) = self.print(args).await;
        assert_eq!(code, 0, "{args:?}: {stdout}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
    }

    /// Runs a command that must fail with a gRPC status; returns it with the error text.
    async fn status_error(&self, args: &[&str]) -> (Code, String) {
        match self.run(args).await {
            Err(e @ CliError::Client(ClientError::Rpc { .. })) => {
                assert_eq!(e.exit_code(), 1);
                let CliError::Client(ClientError::Rpc { status, .. }) = &e else {
                    unreachable!()
                };
                (status.code(), e.to_string())
            }
            other => panic!("{args:?}: expected a status error, got {other:?}"),
        }
    }

    async fn client(&self) -> Client {
        Client::connect(&self.socket).await.unwrap()
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
        assert!(!self.socket.exists(), "socket file removed at shutdown");
    }
}

const POD_KEYS: [&str; 10] = [
    "name",
    "id",
    "netns",
    "pause_pid",
    "ips",
    "gateways",
    "interface",
    "host_veth",
    "ports",
    "ports_released",
];

fn keys(v: &Value) -> BTreeSet<&str> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect()
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

// ---------------------------------------------------------------- in-process client

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_prints_the_pod_with_exact_keys() {
    let d = Daemon::start().await;
    let pod = d.json(&["pod", "create", "web"]).await;
    assert_eq!(keys(&pod), POD_KEYS.into_iter().collect());
    let name = PodName::new("web").unwrap();
    assert_eq!(pod["name"], "web");
    assert_eq!(pod["id"], name.id().as_str());
    assert_eq!(
        pod["netns"],
        d.dir.path().join("netns/web").display().to_string()
    );
    assert!(pod["pause_pid"].is_u64(), "{pod}");
    assert_eq!(pod["ips"], serde_json::json!(["10.222.0.2/16"]));
    assert_eq!(pod["gateways"], serde_json::json!(["10.222.0.1"]));
    assert_eq!(pod["interface"], "eth0");
    assert_eq!(pod["host_veth"], name.id().host_veth_name().as_str());
    assert_eq!(pod["ports"], serde_json::json!([]));
    assert_eq!(pod["ports_released"], false);
    // The same shape as the library's PodInfo (which denies unknown fields).
    let info: PodInfo = serde_json::from_value(pod).unwrap();
    assert_eq!(info.name, name);

    let bare = d.json(&["pod", "create", "bare", "--no-pause"]).await;
    assert_eq!(keys(&bare), POD_KEYS.into_iter().collect());
    assert!(bare["pause_pid"].is_null(), "{bare}");
    assert_eq!(bare["ips"], serde_json::json!(["10.222.0.3/16"]));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_is_idempotent_and_conflicts_are_already_exists() {
    let d = Daemon::start().await;
    let first = d
        .json(&["pod", "create", "web", "--annotation", "team=a"])
        .await;
    let again = d
        .json(&["pod", "create", "web", "--annotation", "team=a"])
        .await;
    assert_eq!(first, again);

    let (code, text) = d
        .status_error(&["pod", "create", "web", "--no-pause"])
        .await;
    assert_eq!(code, Code::AlreadyExists);
    assert!(text.contains("pod web already exists"), "{text}");
    assert!(text.contains("no_pause"), "{text}");

    let (code, text) = d
        .status_error(&["pod", "create", "web", "--annotation", "team=b"])
        .await;
    assert_eq!(code, Code::AlreadyExists);
    assert!(text.contains("annotations"), "{text}");

    // The annotations are kept and served over the API.
    let mut client = d.client().await;
    let pod = client
        .get_pod(&PodName::new("web").unwrap())
        .await
        .unwrap()
        .pod
        .unwrap();
    assert_eq!(pod.annotations["team"], "a");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_rejected_on_both_sides() {
    let d = Daemon::start().await;
    // Client side: before connecting, naming the input.
    for (bad, why) in [("a/b", "'/'"), ("..x", "starts with '.'"), ("", "empty")] {
        match d.run(&["pod", "create", bad]).await {
            Err(e @ CliError::Name(_)) => {
                assert!(e.to_string().contains(why), "{bad}: {e}");
                assert_eq!(e.exit_code(), 1);
            }
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let err = d.run(&["gc", "--keep", "x y"]).await.unwrap_err();
    assert!(err.to_string().contains("\"x y\""), "{err}");
    let err = d
        .run(&["pod", "create", "ok", "--annotation", "novalue"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"novalue\""), "{err}");

    // Server side: INVALID_ARGUMENT naming the name, whatever the client sends.
    let mut client = d.client().await;
    for bad in ["a/b", ".hidden", "a b"] {
        let status = client
            .raw()
            .create_pod(pb::CreatePodRequest {
                name: bad.to_string(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains(&format!("{bad:?}")),
            "{bad}: {}",
            status.message()
        );
    }
    for request in [
        pb::AttachPodRequest {
            name: "a".to_string(),
            netns: "relative/ns".to_string(),
            ..Default::default()
        },
        pb::AttachPodRequest {
            name: "a".to_string(),
            netns: String::new(),
            ..Default::default()
        },
    ] {
        let status = client.raw().attach_pod(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("netns"), "{}", status.message());
    }
    let status = client
        .raw()
        .gc(pb::GcRequest {
            keep: vec!["a/b".to_string()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        d.logs
            .lines()
            .iter()
            .any(|l| l.contains("API call rejected")),
        "{:?}",
        d.logs.lines()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_twice_then_inspect_is_not_found() {
    let d = Daemon::start().await;
    d.json(&["pod", "create", "web"]).await;
    let removed = d.json(&["pod", "rm", "web"]).await;
    assert_eq!(removed, serde_json::json!({"name": "web", "removed": true}));
    // Already gone: still exit 0, removed = false.
    let again = d.json(&["pod", "rm", "web"]).await;
    assert_eq!(again, serde_json::json!({"name": "web", "removed": false}));

    let (code, text) = d.status_error(&["pod", "inspect", "web"]).await;
    assert_eq!(code, Code::NotFound);
    assert_eq!(text, "pod web not found");
    let (code, _) = d.status_error(&["exec", "web", "--", "true"]).await;
    assert_eq!(code, Code::NotFound);
    assert!(d.fake.snapshot().mounts.is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_ports_frees_them_is_idempotent_and_unknown_pods_are_not_found() {
    let d = Daemon::start().await;
    let web = d
        .json(&[
            "pod",
            "create",
            "web",
            "--publish",
            "8080:80",
            "-p",
            "53:53/udp",
        ])
        .await;
    assert_eq!(web["ports_released"], false);
    let (code, text) = d
        .status_error(&["pod", "create", "db", "--publish", "8080:8080"])
        .await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(text.contains("taken by pod web"), "{text}");
    assert_eq!(d.fake.firewall_elements().unwrap().len(), 2);

    let released = d.json(&["pod", "release-ports", "web"]).await;
    assert_eq!(
        released,
        serde_json::json!({"name": "web", "released": true})
    );
    assert_eq!(d.fake.firewall_elements().unwrap(), vec![]);
    let again = d.json(&["pod", "release-ports", "web"]).await;
    assert_eq!(again, serde_json::json!({"name": "web", "released": false}));
    let inspected = d.json(&["pod", "inspect", "web"]).await;
    assert_eq!(inspected["ports_released"], true);
    assert_eq!(inspected["ports"], web["ports"], "the parameters stay");
    // Creating it again with the same ports is idempotent and publishes nothing.
    let same = d
        .json(&[
            "pod",
            "create",
            "web",
            "-p",
            "53:53/udp",
            "--publish",
            "8080:80",
        ])
        .await;
    assert_eq!(same, inspected);
    assert_eq!(d.fake.firewall_elements().unwrap(), vec![]);
    // The port is free for another pod now.
    d.json(&["pod", "create", "db", "--publish", "8080:8080"])
        .await;
    assert_eq!(d.fake.firewall_elements().unwrap().len(), 1);
    let status = d.client().await.status().await.unwrap();
    assert_eq!(status.host_ports, 1, "released ports are not counted");

    let (code, text) = d.status_error(&["pod", "release-ports", "ghost"]).await;
    assert_eq!(code, Code::NotFound);
    assert_eq!(text, "pod ghost not found");
    let mut client = d.client().await;
    let answer = client
        .release_pod_ports(&PodName::new("db").unwrap())
        .await
        .unwrap();
    assert_eq!((answer.name.as_str(), answer.released), ("db", true));
    let status = client
        .raw()
        .release_pod_ports(pb::ReleasePodPortsRequest { name: "a/b".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("\"a/b\""), "{}", status.message());
    assert!(d.fake.firewall_elements().unwrap().is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_inspect_and_attach() {
    let d = Daemon::start().await;
    let (table, code) = d.print(&["pod", "ls"]).await;
    assert_eq!(code, 0);
    assert_eq!(table.lines().count(), 1, "header only: {table}");
    assert_eq!(
        d.json(&["pod", "ls", "--json"]).await,
        serde_json::json!([])
    );

    let web = d.json(&["pod", "create", "web"]).await;
    let bare = d.json(&["pod", "create", "bare", "--no-pause"]).await;
    let foreign = Path::new("/run/netns/foreign");
    d.fake.add_foreign_netns(foreign);
    let attached = d
        .json(&["pod", "attach", "ext", "--netns", "/run/netns/foreign"])
        .await;
    assert_eq!(keys(&attached), POD_KEYS.into_iter().collect());
    assert_eq!(attached["netns"], "/run/netns/foreign");
    assert!(attached["pause_pid"].is_null());

    let (code, text) = d
        .status_error(&["pod", "attach", "gone", "--netns", "/run/netns/none"])
        .await;
    assert_eq!(code, Code::NotFound);
    assert!(text.contains("/run/netns/none"), "{text}");
    let (code, text) = d
        .status_error(&["pod", "attach", "twice", "--netns", "/run/netns/foreign"])
        .await;
    assert_eq!(code, Code::FailedPrecondition);
    assert!(text.contains("already used by pod ext"), "{text}");

    let list = d.json(&["pod", "ls", "--json"]).await;
    assert_eq!(list, serde_json::json!([bare, attached, web]), "by name");
    assert_eq!(d.json(&["pod", "inspect", "web"]).await, web);

    let (table, _) = d.print(&["pod", "ls"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert!(
        lines[1].starts_with("bare ") && lines[1].contains(" - "),
        "{table}"
    );
    assert!(
        lines[3].starts_with("web ") && lines[3].contains("10.222.0.2/16"),
        "{table}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_keeps_by_name_or_id() {
    let d = Daemon::start().await;
    for pod in ["a", "b", "c"] {
        d.json(&["pod", "create", pod]).await;
    }
    let c_id = PodName::new("c").unwrap().id().to_string();
    let report = d.json(&["gc", "--keep", "b", "--keep", &c_id]).await;
    assert_eq!(
        report,
        serde_json::json!({"removed": ["a"], "kept": ["b", "c"], "failures": []})
    );
    let names: Vec<Value> = d
        .json(&["pod", "ls", "--json"])
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].clone())
        .collect();
    assert_eq!(names, ["b", "c"]);
    let report = d.json(&["gc"]).await;
    assert_eq!(report["removed"], serde_json::json!(["b", "c"]));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_counts_and_pools() {
    let d = Daemon::start().await;
    d.json(&["pod", "create", "web"]).await;
    let status = d.json(&["status"]).await;
    assert_eq!(
        keys(&status),
        [
            "version",
            "socket",
            "pods",
            "ready",
            "unfinished",
            "bridge",
            "pools",
            "state_file",
            "host_ports",
            "peers",
            "masquerade",
            "datapath",
            "egress_exempt",
            "neighbour_tables",
            "netns_pool"
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(status["masquerade"], true);
    // The fake kernel has no namespace pool.
    assert_eq!(
        status["netns_pool"],
        serde_json::json!({"ready": 0, "size": 0})
    );
    assert_eq!(status["datapath"], "bridge");
    assert_eq!(
        status["egress_exempt"],
        serde_json::json!(["10.222.0.0/16"])
    );
    // The fake kernel starts with the kernel's default thresholds and lets them be raised.
    let v4 = &status["neighbour_tables"]["tables"][0];
    assert_eq!(status["neighbour_tables"]["capacity"], 65533, "{status}");
    assert_eq!(v4["outcome"], "raised", "{status}");
    assert_eq!(v4["previous"]["gc_thresh3"], 1024, "{status}");
    assert_eq!(v4["current"]["gc_thresh3"], 65533 * 4 + 1024, "{status}");
    assert!(v4["pod_limit"].is_null(), "{status}");
    assert_eq!(status["host_ports"], 0);
    assert_eq!(status["peers"], serde_json::json!([]));
    assert_eq!(status["pods"], 1);
    assert_eq!(status["ready"], 1);
    assert_eq!(status["unfinished"], 0);
    assert_eq!(status["bridge"], "nh0");
    assert_eq!(status["socket"], d.socket.display().to_string());
    assert_eq!(
        status["pools"],
        serde_json::json!([{"cidr": "10.222.0.0/16", "allocated": 1, "capacity": 65533}])
    );
    assert_eq!(
        status["state_file"],
        d.dir.path().join("state/state.json").display().to_string()
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_drift_and_repair_fixes_it() {
    let d = Daemon::start().await;
    let pod = d.json(&["pod", "create", "web"]).await;
    assert_eq!(
        d.json(&["check"]).await,
        serde_json::json!({"drift": false, "findings": []})
    );

    let veth = pod["host_veth"].as_str().unwrap();
    d.fake.delete_link_externally(None, veth);
    let (stdout, code) = d.print(&["check"]).await;
    assert_eq!(code, 1, "drift without --repair exits 1: {stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["drift"], true);
    let findings = report["findings"].as_array().unwrap();
    assert!(
        findings.iter().any(|f| f["pod"] == "web"
            && f["object"].as_str().unwrap().contains(veth)
            && f["problem"] == "missing"),
        "{report}"
    );
    for f in findings {
        assert_eq!(
            keys(f),
            ["pod", "object", "problem", "message", "details"]
                .into_iter()
                .collect()
        );
    }

    let (stdout, code) = d.print(&["check", "--repair"]).await;
    assert_eq!(code, 0, "{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["remaining"], serde_json::json!([]), "{report}");
    assert!(
        report["repair"]["repaired"]["web"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        "{report}"
    );
    assert!(d.fake.peek_link(None, veth).is_some(), "veth re-created");
    assert_eq!(d.json(&["check"]).await["drift"], false);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_a_daemon_restart() {
    let d = Daemon::start().await;
    let pod = d.json(&["pod", "create", "web"]).await;
    let Daemon { dir, fake, .. } = &d;
    let (dir_path, fake) = (dir.path().to_path_buf(), fake.clone());
    let socket = d.socket.clone();
    // Stop without tearing anything down.
    let mut d = d;
    d.stop.take().unwrap().send(()).unwrap();
    d.task.take().unwrap().await.unwrap().unwrap();
    assert!(!socket.exists());
    assert_eq!(fake.snapshot().processes.len(), 1, "the pause survives");

    // A new daemon on the same state and (fake) kernel finds the pod as it was.
    let logs = Captured::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run_daemon(
        test_config(&dir_path),
        fake.clone(),
        async {
            let _ = stopped.await;
        },
        Logger::root(logs.clone().fuse(), o!()),
    ));
    wait_ready(&socket).await;
    let mut client = Client::connect(&socket).await.unwrap();
    let again = client
        .get_pod(&PodName::new("web").unwrap())
        .await
        .unwrap()
        .pod
        .unwrap();
    assert_eq!(
        Some(again.pause_pid.unwrap() as u64),
        pod["pause_pid"].as_u64()
    );
    assert!(
        logs.lines().iter().any(|l| l.starts_with("reconcile done")),
        "{:?}",
        logs.lines()
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_is_private_and_a_second_daemon_is_refused() {
    let d = Daemon::start().await;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&d.socket), 0o600);
    assert_eq!(mode(d.socket.parent().unwrap()), 0o700);
    let err = server::ApiSocket::bind(&d.socket, &Logger::root(slog::Discard, o!())).unwrap_err();
    assert!(err.to_string().contains("already listening"), "{err}");
    assert!(d.socket.exists(), "the live socket is left alone");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_daemon_is_a_clear_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let cli = Cli::try_parse_from(["nh", "status"]).unwrap();
    let Command::Client(command) = cli.command else {
        panic!()
    };
    let err = cli::run(&socket, command, &Logger::root(slog::Discard, o!()))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot connect to netns-holder at {}: ",
            socket.display()
        )),
        "{text}"
    );
    assert!(text.contains("No such file or directory"), "{text}");
}

// ---------------------------------------------------------------- the binary as a client

fn cli_bin(socket: &Path, args: &[&str]) -> Process {
    let mut p = Process::new(BIN);
    p.arg("--socket").arg(socket).args(args);
    p
}

fn output(mut p: Process) -> Output {
    p.stdin(Stdio::null()).output().expect("run netns-holder")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_prints_json_and_errors() {
    let d = Daemon::start().await;
    let socket = d.socket.clone();
    let out = tokio::task::spawn_blocking(move || {
        let create = output(cli_bin(&socket, &["pod", "create", "web"]));
        let missing = output(cli_bin(&socket, &["pod", "inspect", "ghost"]));
        let bad = output(cli_bin(&socket, &["pod", "create", "a/b"]));
        let rm = output(cli_bin(&socket, &["pod", "rm", "ghost"]));
        let usage = output(cli_bin(&socket, &["pod", "frobnicate"]));
        (create, missing, bad, rm, usage)
    })
    .await
    .unwrap();
    let (create, missing, bad, rm, usage) = out;

    assert!(create.status.success(), "{}", text(&create.stderr));
    let stdout = text(&create.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let pod: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(keys(&pod), POD_KEYS.into_iter().collect());

    assert_eq!(missing.status.code(), Some(1));
    assert_eq!(text(&missing.stderr), "error: pod ghost not found\n");
    assert!(missing.stdout.is_empty());

    assert_eq!(bad.status.code(), Some(1));
    let stderr = text(&bad.stderr);
    assert!(stderr.starts_with("error: pod name \"a/b\""), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    assert!(rm.status.success());
    assert_eq!(text(&rm.stdout), "{\"name\":\"ghost\",\"removed\":false}\n");

    assert_eq!(usage.status.code(), Some(2));
    d.stop().await;
}

#[test]
fn binary_without_daemon_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let out = output(cli_bin(&socket, &["pod", "ls"]));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(
        stderr,
        format!(
            "error: cannot connect to netns-holder at {}: No such file or directory (os error 2)\n",
            socket.display()
        )
    );
}

/// Runs the CLI binary as uid/gid 65534 with no supplementary groups.
fn as_nobody(socket: &Path, args: &[&str]) -> Output {
    let mut p = Process::new("setpriv");
    p.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        BIN,
    ])
    .arg("--socket")
    .arg(socket)
    .args(args);
    output(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_callers_are_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to switch to an unprivileged user");
        return;
    }
    let d = Daemon::start().await;
    let socket = d.socket.clone();

    // With the socket as the daemon makes it (0600 in a 0700 directory), the kernel
    // already refuses the connection.
    let s = socket.clone();
    let out = tokio::task::spawn_blocking(move || as_nobody(&s, &["status"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: cannot connect to netns-holder at {}: Permission denied",
            socket.display()
        )),
        "{stderr}"
    );

    // Loosen the modes: SO_PEERCRED still refuses, with PERMISSION_DENIED and a log line.
    for p in [d.dir.path(), socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let s = socket.clone();
    let out = tokio::task::spawn_blocking(move || as_nobody(&s, &["pod", "create", "web"]))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: permission denied: the netns-holder API is for root only; caller uid 65534"
        ),
        "{stderr}"
    );
    assert!(d.fake.snapshot().mounts.is_empty(), "nothing was created");
    let lines = d.logs.lines();
    assert!(
        lines.iter().any(
            |l| l.starts_with("refused API call from non-root peer") && l.contains("uid=65534")
        ),
        "{lines:?}"
    );

    // A request without peer credentials (not over a unix socket) is refused too.
    let mut check = server::PeerCheck::new(Logger::root(slog::Discard, o!()));
    let status =
        tonic::service::Interceptor::call(&mut check, tonic::Request::new(())).unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_pod_namespace_and_passes_the_status_through() {
    if !is_root() {
        eprintln!("skipped: needs root to create and enter a network namespace");
        return;
    }
    let d = Daemon::start().await;
    // A real, empty network namespace held by a sleeping process; the fake kernel is told
    // it exists so that `attach` accepts it.
    let mut holder = Process::new("unshare")
        .args(["--net", "sleep", "600"])
        .spawn()
        .unwrap();
    let netns = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&netns).ok() == std::fs::read_link("/proc/self/ns/net").ok() {
        assert!(
            Instant::now() < deadline,
            "unshare did not enter a new netns"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.fake.add_foreign_netns(&netns);
    d.json(&["pod", "attach", "real", "--netns", netns.to_str().unwrap()])
        .await;

    let socket = d.socket.clone();
    let (dev, status, missing) = tokio::task::spawn_blocking(move || {
        let dev = output(cli_bin(
            &socket,
            &["exec", "real", "--", "cat", "/proc/net/dev"],
        ));
        let status = output(cli_bin(
            &socket,
            &["exec", "real", "--", "sh", "-c", "exit 7"],
        ));
        let missing = output(cli_bin(
            &socket,
            &["exec", "real", "--", "/nonexistent/cmd"],
        ));
        (dev, status, missing)
    })
    .await
    .unwrap();
    let _ = holder.kill();
    let _ = holder.wait();

    assert!(dev.status.success(), "{}", text(&dev.stderr));
    let interfaces: Vec<String> = text(&dev.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_string()))
        .collect();
    assert_eq!(interfaces, ["lo"], "only the new namespace's loopback");
    assert_eq!(status.status.code(), Some(7));
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        text(&missing.stderr).starts_with("error: cannot run \"/nonexistent/cmd\" in pod real"),
        "{}",
        text(&missing.stderr)
    );
    d.stop().await;
}

// ---------------------------------------------------------------- the binary as the daemon

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let c = test_config(dir);
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "socket = {:?}\nstate_dir = {:?}\nnetns_dir = {:?}\n{extra}",
            c.socket, c.state_dir, c.netns_dir
        ),
    )
    .unwrap();
    path
}

#[test]
fn serve_with_a_bad_config_names_the_key_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "mtu = 5\n");
    let out = output({
        let mut p = Process::new(BIN);
        p.args(["serve", "--config"]).arg(&config);
        p
    });
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("error: config key `mtu` = \"5\" is invalid: must be between 68 and 65535"),
        "{stderr}"
    );
    assert!(!test_config(dir.path()).socket.exists(), "not started");

    let missing = output({
        let mut p = Process::new(BIN);
        p.args(["serve", "--config", "/nonexistent/netns-holder.toml"]);
        p
    });
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent/netns-holder.toml"));
}

/// Starts `serve --fake` with a config in `dir`; stderr goes to `dir/daemon-N.log`.
fn spawn_fake_daemon(dir: &Path, n: u32) -> std::process::Child {
    let config = write_config(dir, "");
    let log = std::fs::File::create(dir.join(format!("daemon-{n}.log"))).unwrap();
    Process::new(BIN)
        .args(["serve", "--fake", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until the daemon process `daemon` answers `Status` on `socket`; if it exits first or
/// is not ready in 20 s, fails saying which, with its log (`log`) and how long it had run.
async fn wait_ready_process(socket: &Path, daemon: &mut std::process::Child, log: &Path) {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = Client::connect(socket).await
            && c.status().await.is_ok()
        {
            return;
        }
        let exited = daemon.try_wait().unwrap();
        if exited.is_some() || Instant::now() >= deadline {
            panic!(
                "daemon pid {} at {} not ready after {:?}: {}; its log:\n{}",
                daemon.id(),
                socket.display(),
                started.elapsed(),
                exited.map_or("still running".to_string(), |s| format!("exited: {s}")),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_binary_runs_refuses_a_second_instance_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = test_config(dir.path()).socket;
    let mut daemon = spawn_fake_daemon(dir.path(), 1);
    wait_ready_process(&socket, &mut daemon, &dir.path().join("daemon-1.log")).await;

    let s = socket.clone();
    let create =
        tokio::task::spawn_blocking(move || output(cli_bin(&s, &["pod", "create", "web"])))
            .await
            .unwrap();
    assert!(create.status.success(), "{}", text(&create.stderr));

    // A second daemon on the same socket refuses to start and leaves the first alone.
    let second = spawn_fake_daemon(dir.path(), 2);
    let second = tokio::task::spawn_blocking(move || second.wait_with_output().unwrap())
        .await
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    let log2 = std::fs::read_to_string(dir.path().join("daemon-2.log")).unwrap();
    assert!(log2.contains("already listening"), "{log2}");
    let mut client = Client::connect(&socket).await.unwrap();
    assert_eq!(client.status().await.unwrap().ready, 1);
    drop(client);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || daemon.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "socket removed on SIGTERM");
    let log1 = std::fs::read_to_string(dir.path().join("daemon-1.log")).unwrap();
    for needle in [
        "reconcile done",
        "serving API",
        "shutting down",
        "signal: SIGTERM",
        "API stopped",
    ] {
        assert!(log1.contains(needle), "{needle:?} missing from\n{log1}");
    }
}

#[test]
fn example_config_is_valid_and_shows_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("netns-holder.example.toml");
    assert_eq!(Config::load(&path).unwrap(), Config::default());
}

// ---------------------------------------------------------------- host ports, peers, reload

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_lists_ports_and_refuses_taken_ones() {
    let d = Daemon::start().await;
    let pod = d
        .json(&[
            "pod",
            "create",
            "web",
            "--publish",
            "8080:80",
            "-p",
            "10.0.0.1:5353-5354:53-54/udp",
        ])
        .await;
    assert_eq!(keys(&pod), POD_KEYS.into_iter().collect());
    assert_eq!(
        pod["ports"],
        serde_json::json!([
            {"host_ip": null, "host_port": 8080, "container_port": 80, "protocol": "tcp"},
            {"host_ip": "10.0.0.1", "host_port": 5353, "container_port": 53, "protocol": "udp"},
            {"host_ip": "10.0.0.1", "host_port": 5354, "container_port": 54, "protocol": "udp"},
        ])
    );
    let listed = d.json(&["pod", "ls", "--json"]).await;
    assert_eq!(listed[0]["ports"], pod["ports"]);
    assert_eq!(d.json(&["pod", "inspect", "web"]).await, pod);

    let (code, message) = d
        .status_error(&["pod", "create", "db", "--publish", "8080:8080"])
        .await;
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(
        message,
        "pod db: host port tcp 8080 -> 8080 is already taken by pod web (tcp 8080 -> 80)"
    );
    assert!(
        d.json(&["pod", "ls", "--json"])
            .await
            .as_array()
            .unwrap()
            .len()
            == 1
    );

    // Bad specs are refused before the daemon is contacted, naming the spec.
    for (spec, part) in [
        ("0:80", "host port \"0\""),
        (
            "80-81:90",
            "the host range has 2 port(s) but the container range has 1",
        ),
        ("80:80/icmp", "protocol \"icmp\""),
        ("fd00::1:80:80", "brackets"),
    ] {
        match d.run(&["pod", "create", "x", "--publish", spec]).await {
            Err(e @ CliError::Publish(_)) => {
                assert!(e.to_string().contains(part), "{spec}: {e}");
                assert!(e.to_string().contains(spec), "{spec}: {e}");
            }
            other => panic!("{spec}: {other:?}"),
        }
    }
    // ... and by the daemon for raw API callers.
    let mut client = d.client().await;
    let err = client
        .raw()
        .create_pod(pb::CreatePodRequest {
            name: "raw".into(),
            ports: vec![pb::PortMapping {
                protocol: 9,
                host_ip: String::new(),
                host_port: 1,
                container_port: 1,
            }],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("protocol 9"), "{}", err.message());

    let status = d.json(&["status"]).await;
    assert_eq!(status["host_ports"], 3);
    d.json(&["pod", "rm", "web"]).await;
    let pod = d
        .json(&["pod", "create", "db", "--publish", "8080:8080"])
        .await;
    assert_eq!(pod["ports"][0]["host_port"], 8080);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_through_the_cli() {
    let d = Daemon::start().await;
    let added = d
        .json(&["peer", "add", "10.89.0.0/16", "192.168.50.2"])
        .await;
    assert_eq!(
        added,
        serde_json::json!({
            "peer": {"pod_cidr": "10.89.0.0/16", "via": "192.168.50.2", "source": "api"},
            "added": true
        })
    );
    let again = d
        .json(&["peer", "add", "10.89.0.0/16", "192.168.50.2"])
        .await;
    assert_eq!(again["added"], false);
    let (code, message) = d
        .status_error(&["peer", "add", "10.89.0.0/16", "192.168.50.3"])
        .await;
    assert_eq!(code, Code::AlreadyExists);
    assert!(
        message.contains("10.89.0.0/16 via 192.168.50.2 already exists"),
        "{message}"
    );
    let (code, _) = d
        .status_error(&["peer", "add", "10.222.0.0/24", "192.168.50.3"])
        .await;
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(
        d.json(&["peer", "ls"]).await,
        serde_json::json!([{"pod_cidr": "10.89.0.0/16", "via": "192.168.50.2", "source": "api"}])
    );
    assert_eq!(
        d.json(&["status"]).await["peers"].as_array().unwrap().len(),
        1
    );
    assert_eq!(
        d.fake.peer_route_list(),
        [(
            "10.89.0.0/16".parse().unwrap(),
            "192.168.50.2".parse().unwrap()
        )]
    );
    // A deleted route is drift that `check --repair` fixes.
    d.fake.delete_route_externally(
        "10.89.0.0/16".parse().unwrap(),
        "192.168.50.2".parse().unwrap(),
    );
    let (out, code) = d.print(&["check", "--repair"]).await;
    assert_eq!(code, 0, "{out}");
    let out: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        out["findings"][0]["object"],
        "route 10.89.0.0/16 via 192.168.50.2"
    );
    assert_eq!(out["findings"][0]["problem"], "missing");
    assert_eq!(
        out["repair"]["node_actions"],
        serde_json::json!(["add route 10.89.0.0/16 via 192.168.50.2"])
    );
    assert_eq!(d.fake.peer_route_list().len(), 1);
    let removed = d.json(&["peer", "rm", "10.89.0.0/16"]).await;
    assert_eq!(
        removed,
        serde_json::json!({"pod_cidr": "10.89.0.0/16", "removed": true})
    );
    assert!(d.fake.peer_route_list().is_empty());
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_recreates_a_flushed_table() {
    let d = Daemon::start().await;
    d.json(&["pod", "create", "web", "-p", "8080:80"]).await;
    d.fake.flush_ruleset_externally();
    let (out, code) = d.print(&["check"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nftables table inet netns_holder"), "{out}");
    let reload = d.json(&["reload"]).await;
    assert_eq!(reload["host_port_elements"], 1);
    assert_eq!(reload["failures"], serde_json::json!([]));
    assert_eq!(d.fake.firewall_elements().unwrap().len(), 1);
    let (out, code) = d.print(&["check"]).await;
    assert_eq!(code, 0, "{out}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_nri_event_accepts_the_plugins_events_only() {
    let d = Daemon::start().await;
    let mut client = d.client().await;
    client
        .report_nri_event("run_pod_sandbox", true, 0.003)
        .await
        .unwrap();
    let err = client
        .report_nri_event("update_container", true, 0.003)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    assert!(err.to_string().contains("\"update_container\""), "{err}");
    let err = client
        .report_nri_event("synchronize", false, -1.0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::InvalidArgument), "{err}");
    d.stop().await;
}
