//! Hostile input, table-driven, against the real daemon and the real adapters in a
//! throwaway node ([`nh_tests::node`]): every input is tried through the `netns-holder` CLI
//! and, where the CLI checks it first, also through the raw gRPC client
//! ([`netns_holder_client::client::Client::raw`]) so the daemon's own validation is proven; then
//! through `cri-hook oci`, the CNI entry and a live `cri-hook nri` fed raw ttRPC/mux bytes;
//! and finally as daemon configuration (each in a fresh node).
//!
//! For every case the suite asserts:
//! * no panic: the exit status is not 101, no signal (the release and dev profiles abort on
//!   panic: SIGABRT), no "panicked" on stderr, and the daemon and the NRI plugin still run;
//! * a clear refusal: the error names the offending input (the case's expected words);
//! * no state change: `pod ls --json`, `status`, the node's links, addresses, routes and
//!   nftables ruleset, the bind mounts under the daemon's directories, its netns dir, state
//!   files (for refused inputs) and pause processes are exactly what they were before the
//!   suite started;
//! * no raw control, invisible or direction-changing character in any message: they are
//!   shown escaped (`\u{202e}`), so an operator sees what was sent.
//!
//! Each case has a rule. `must refuse`: anything but a clean refusal fails the suite (there
//! are no "known gaps" any more: every input the suite tries is either refused clearly or
//! harmless). `no change`: acceptance is fine (e.g. an OCI poststop naming a pod the hook
//! did not make), but once the case's cleanup ran nothing may have changed.
//!
//! Host-network safety: an input that would wire the real host network namespace if a
//! check were missing (a pid in the host namespace for the OCI hook) is sent with a daemon
//! socket nobody listens on, so a missing check shows up as a "cannot connect" error
//! instead of touching the host. Inputs naming the node's own namespace use the real
//! daemon: at worst they change the throwaway node.
//!
//! `NH_HOSTILE_VERBOSE=1` prints every refusal's first line. The suite prints the GAP lines,
//! the number of cases per section and a summary:
//! `hostile inputs: N cases: R refused cleanly, C accepted without change, F failures`.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ::nri::pb as nri;
use ::nri::proto::ttrpc::{Request as TtrpcRequest, Response as TtrpcResponse};
use anyhow::{Context, Result, bail, ensure};
use netns_holder_client::api::pb;
use netns_holder_client::client::{Client, ClientError};
use nh_tests::node::{Daemon, DaemonOptions, Node, mounts_under, netns_holder_binary};
use nh_tests::nri_peer::{containerd_frames, ttrpc_frame};
use nh_tests::{ChildGuard, ScratchDir, require_root, run_ok, target_dir, unique_name, wait_until};
use prost::Message;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The baseline pod created by the CLI (with host ports).
const BASE: &str = "hx-base";
/// The baseline pod attached to a namespace of its own.
const ATTACHED: &str = "hx-attached";
/// Host ports of [`BASE`].
const BASE_PORTS: [&str; 2] = ["18080:80", "18081:81/udp"];
/// A socket path nobody listens on (for inputs that must never reach a daemon).
const NO_DAEMON: &str = "/nonexistent/netns-holder-hostile/api.sock";

// ------------------------------------------------------------------ binaries

/// The `cri-hook` binary from the workspace build (`$CRI_HOOK_BIN` overrides).
fn cri_hook_binary() -> PathBuf {
    let path = std::env::var_os("CRI_HOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("cri-hook"));
    assert!(
        path.is_file(),
        "cri-hook binary {} not found: run `cargo build --workspace` (or set CRI_HOOK_BIN)",
        path.display()
    );
    path
}

// ------------------------------------------------------------------ outcomes

/// How a case must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// A clean refusal; anything else fails the suite.
    Refuse,
    /// Acceptance is fine (by design), as long as nothing is left changed once the case's
    /// cleanup ran.
    NoChange,
}

/// What one attempt produced.
#[derive(Debug, Clone)]
struct Attempt {
    /// Whether the input was refused (an error exit, an error status).
    refused: bool,
    /// Evidence of a panic or crash, if any.
    crashed: Option<String>,
    /// The error text (stderr, the CNI error object, the status message).
    message: String,
    /// How to reproduce it.
    how: String,
}

impl Attempt {
    /// From a finished process.
    fn process(how: String, out: &Output) -> Self {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let crashed = match (out.status.code(), out.status.signal()) {
            (Some(101), _) => Some("exit status 101 (a Rust panic)".to_string()),
            (_, Some(sig)) => Some(format!("killed by signal {sig} (abort on panic?)")),
            _ if stderr.contains("panicked") => Some("\"panicked\" on stderr".to_string()),
            _ => None,
        };
        let mut message = stderr.trim_end().to_string();
        if !stdout.trim().is_empty() && !out.status.success() {
            message = format!("{message}\nstdout: {}", stdout.trim_end());
        }
        Self {
            refused: !out.status.success(),
            crashed,
            message,
            how: format!("{how}  => {}", out.status),
        }
    }

    /// From a gRPC call (the status wrapped as the client library does).
    fn rpc<T>(how: String, result: std::result::Result<T, ClientError>) -> Self {
        match result {
            Ok(_) => Self {
                refused: false,
                crashed: None,
                message: String::new(),
                how,
            },
            Err(e) => {
                let message = format!("{:?}: {e}", e.code());
                Self {
                    refused: true,
                    crashed: message
                        .contains("panicked")
                        .then(|| "\"panicked\" in the status".to_string()),
                    message,
                    how,
                }
            }
        }
    }
}

/// Shows a possibly huge or binary argument in a reproducible, short form.
fn show_arg(arg: &OsStr) -> String {
    let bytes = arg.as_bytes();
    if bytes.len() > 120 {
        let first = bytes[0] as char;
        if bytes.iter().all(|b| *b == bytes[0]) {
            return format!(
                "\"$(head -c {} /dev/zero | tr '\\0' '{first}')\"",
                bytes.len()
            );
        }
        return format!(
            "<{} bytes starting {:?}>",
            bytes.len(),
            String::from_utf8_lossy(&bytes[..40])
        );
    }
    let plain = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./:=[]@,+%".contains(b));
    if plain && !bytes.is_empty() {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let mut out = String::from("$'");
    for b in bytes {
        match b {
            b'\'' => out.push_str("\\'"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(*b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('\'');
    out
}

fn show_args<S: AsRef<OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| show_arg(a.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first character in `text` an operator could not see or that would rearrange the
/// terminal line (C0/C1 controls other than newline and tab, bidi controls, zero-width
/// characters), if any: errors and logs must show such characters escaped.
fn raw_invisible(text: &str) -> Option<char> {
    text.chars().find(|&c| {
        (c.is_control() && c != '\n' && c != '\t')
            || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{feff}')
    })
}

fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!(
            "{}... ({} bytes)",
            text.chars().take(max).collect::<String>(),
            text.len()
        )
    }
}

// ------------------------------------------------------------------ state snapshots

/// Everything a hostile input must not change.
#[derive(Debug, Clone, PartialEq)]
struct Snapshot {
    pods: Value,
    status: Value,
    links: Vec<String>,
    addresses: Vec<String>,
    routes: Vec<String>,
    nft: String,
    mounts: Vec<PathBuf>,
    netns_dir: Vec<String>,
    /// The state files, the state file's IPAM cursors taken out (see `ipam`).
    state: Vec<(String, Value)>,
    /// The IPAM round-robin cursors: they move, legitimately, when a pod is made and removed.
    ipam: Value,
    pauses: Vec<(u32, String)>,
}

impl Snapshot {
    /// Names the fields that differ, with both values.
    fn diff(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! field {
            ($f:ident) => {
                if self.$f != other.$f {
                    out.push(format!(
                        "{}: before {} / after {}",
                        stringify!($f),
                        cut(&format!("{:?}", self.$f), 600),
                        cut(&format!("{:?}", other.$f), 600)
                    ));
                }
            };
        }
        field!(pods);
        field!(status);
        field!(links);
        field!(addresses);
        field!(routes);
        field!(nft);
        field!(mounts);
        field!(netns_dir);
        field!(state);
        field!(ipam);
        field!(pauses);
        out
    }
}

fn sorted_dir(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `(ifname, address/prefix)` of every address of the node, or every route (destination,
/// device, gateway), from `ip -j`.
fn ip_json(node: &Node, argv: &[&str], fields: &[&str]) -> Result<Vec<String>> {
    let out = node.run(argv)?;
    let value: Value = serde_json::from_slice(&out.stdout).context("ip -j output")?;
    let mut rows = Vec::new();
    for item in value.as_array().into_iter().flatten() {
        if let Some(infos) = item["addr_info"].as_array() {
            for info in infos {
                rows.push(format!(
                    "{} {}/{}",
                    item["ifname"].as_str().unwrap_or("?"),
                    info["local"].as_str().unwrap_or("?"),
                    info["prefixlen"]
                ));
            }
        } else {
            rows.push(
                fields
                    .iter()
                    .map(|f| item[*f].to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            );
        }
    }
    rows.sort();
    Ok(rows)
}

// ------------------------------------------------------------------ throwaway namespaces

/// A network namespace made with `ip netns add`, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Self> {
        let name = unique_name("nhx");
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A `sleep` running inside a namespace: a pid whose `/proc/<pid>/ns/net` is that namespace.
fn sleeper(netns: &Path) -> Result<ChildGuard> {
    ChildGuard::spawn(
        Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .args(["--", "sleep", "600"])
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    )
}

// ------------------------------------------------------------------ the suite

/// Counts and findings of the whole run.
#[derive(Default)]
struct Tally {
    ran: usize,
    refused: usize,
    unchanged: usize,
    failures: Vec<String>,
    sections: Vec<(String, usize)>,
}

struct Suite {
    node: Node,
    daemon: Daemon,
    rt: tokio::runtime::Runtime,
    client: Client,
    scratch: ScratchDir,
    /// The namespace of [`ATTACHED`].
    attached_netns: Netns,
    /// A namespace free for inputs that are (wrongly) accepted to wire.
    target_netns: Netns,
    /// A `sleep` in [`Suite::target_netns`].
    target_sleeper: ChildGuard,
    baseline: Snapshot,
    tally: Tally,
    section: String,
}

impl Suite {
    fn start() -> Result<Self> {
        let node = Node::new()?;
        let daemon = Daemon::start(&node, DaemonOptions::default())?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let client = rt.block_on(Client::connect(daemon.socket()))?;
        let scratch = ScratchDir::new("hx")?;
        let attached_netns = Netns::new()?;
        let target_netns = Netns::new()?;
        let target_sleeper = sleeper(&target_netns.path())?;
        let mut args = vec!["pod", "create", BASE];
        for p in BASE_PORTS {
            args.extend(["--publish", p]);
        }
        daemon.cli_json(&args)?;
        let attached = attached_netns.path();
        daemon.cli_json(&[
            "pod",
            "attach",
            ATTACHED,
            "--netns",
            attached.to_str().context("netns path")?,
        ])?;
        // Let link-local addresses and routes of the new links settle.
        std::thread::sleep(Duration::from_millis(300));
        let mut suite = Self {
            node,
            daemon,
            rt,
            client,
            scratch,
            attached_netns,
            target_netns,
            target_sleeper,
            baseline: Snapshot {
                pods: Value::Null,
                status: Value::Null,
                links: Vec::new(),
                addresses: Vec::new(),
                routes: Vec::new(),
                nft: String::new(),
                mounts: Vec::new(),
                netns_dir: Vec::new(),
                state: Vec::new(),
                ipam: Value::Null,
                pauses: Vec::new(),
            },
            tally: Tally::default(),
            section: String::new(),
        };
        suite.baseline = suite.snapshot()?;
        ensure!(
            suite.baseline.pods.as_array().map(Vec::len) == Some(2),
            "baseline pods: {}",
            suite.baseline.pods
        );
        ensure!(
            suite.baseline.status["host_ports"].as_u64() == Some(2),
            "baseline status: {}",
            suite.baseline.status
        );
        Ok(suite)
    }

    fn snapshot(&self) -> Result<Snapshot> {
        let pods = self.daemon.cli_json(&["pod", "ls", "--json"])?;
        let status = self.daemon.cli_json(&["status"])?;
        let mut links = self.node.links()?;
        links.sort();
        let addresses = ip_json(&self.node, &["ip", "-j", "addr", "show"], &[])?;
        let mut routes = ip_json(
            &self.node,
            &["ip", "-j", "-4", "route", "show", "table", "all"],
            &["dst", "dev", "gateway", "table"],
        )?;
        routes.extend(ip_json(
            &self.node,
            &["ip", "-j", "-6", "route", "show"],
            &["dst", "dev", "gateway"],
        )?);
        let nft = String::from_utf8_lossy(&self.node.run(&["nft", "list", "ruleset"])?.stdout)
            .into_owned();
        let dir = self
            .daemon
            .netns_dir()
            .parent()
            .context("daemon dir")?
            .to_path_buf();
        let mut mounts = mounts_under(&dir);
        mounts.extend(
            mounts_under(Path::new("/run/netns"))
                .into_iter()
                .filter(|m| {
                    let name = m.file_name().map(|n| n.to_string_lossy().into_owned());
                    name.is_some_and(|n| n.starts_with("hx"))
                }),
        );
        mounts.sort();
        let mut state = Vec::new();
        let mut ipam = Value::Null;
        for name in sorted_dir(&self.daemon.state_dir()) {
            let path = self.daemon.state_dir().join(&name);
            if path.is_file() {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let mut value = serde_json::from_str(&text).unwrap_or(Value::String(text));
                if let Some(cursors) = value.as_object_mut().and_then(|o| o.remove("ipam")) {
                    ipam = cursors;
                }
                state.push((name, value));
            }
        }
        Ok(Snapshot {
            pods,
            status,
            links,
            addresses,
            routes,
            nft,
            mounts,
            netns_dir: sorted_dir(&self.daemon.netns_dir()),
            state,
            ipam,
            pauses: self.node.pause_processes()?,
        })
    }

    fn begin(&mut self, section: &str) {
        self.section = section.to_string();
        self.tally.sections.push((section.to_string(), 0));
    }

    fn fail(&mut self, label: &str, attempt: &Attempt, why: String) {
        let text = format!(
            "[{}] {label}: {why}\n    how: {}\n    output: {}",
            self.section,
            attempt.how,
            cut(&attempt.message, 700)
        );
        eprintln!("FAIL {text}");
        self.tally.failures.push(text);
    }

    /// Judges one attempt: crash, clarity, acceptance by rule, then state. `cleanup` undoes
    /// an accepted input (e.g. removes the pod it made) before the state is compared.
    fn judge(
        &mut self,
        rule: Rule,
        label: &str,
        expect: &[&str],
        attempt: Attempt,
        cleanup: &[&[&str]],
    ) -> Result<()> {
        self.tally.ran += 1;
        if let Some(last) = self.tally.sections.last_mut() {
            last.1 += 1;
        }
        if let Some(crash) = &attempt.crashed {
            self.fail(label, &attempt, format!("crashed: {crash}"));
        }
        if let Some(raw) = raw_invisible(&attempt.message) {
            self.fail(
                label,
                &attempt,
                format!("the message carries the raw character {raw:?} instead of an escape"),
            );
        }
        if attempt.refused {
            // An expected word `a|b` is satisfied by either.
            let missing: Vec<&str> = expect
                .iter()
                .copied()
                .filter(|w| !w.split('|').any(|alt| attempt.message.contains(alt)))
                .collect();
            if missing.is_empty() {
                self.tally.refused += 1;
                if std::env::var_os("NH_HOSTILE_VERBOSE").is_some() {
                    eprintln!(
                        "refused [{}] {label}: {}",
                        self.section,
                        cut(attempt.message.lines().next().unwrap_or(""), 300)
                    );
                }
            } else {
                self.fail(
                    label,
                    &attempt,
                    format!("refused, but the message does not name {missing:?}"),
                );
            }
        } else {
            match rule {
                Rule::Refuse => self.fail(label, &attempt, "ACCEPTED".to_string()),
                Rule::NoChange => self.tally.unchanged += 1,
            }
            for args in cleanup {
                let out = self.daemon.cli(args)?;
                if !out.status.success() {
                    self.fail(
                        label,
                        &attempt,
                        format!(
                            "cleanup {args:?} failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        ),
                    );
                }
            }
        }
        self.check_state(label, &attempt, !attempt.refused)
    }

    /// The daemon still answers and nothing changed (a second look after 300 ms absorbs
    /// kernel bookkeeping still settling).
    fn check_state(&mut self, label: &str, attempt: &Attempt, accepted: bool) -> Result<()> {
        let now = match self.snapshot() {
            Ok(s) => s,
            Err(e) => {
                self.fail(
                    label,
                    attempt,
                    format!("the daemon no longer answers: {e:#}"),
                );
                bail!(
                    "daemon dead after [{}] {label}; log:\n{}",
                    self.section,
                    self.daemon.log()
                );
            }
        };
        if accepted {
            // A pod made and removed again moves the IPAM cursors, and may leave its create
            // and remove in the state files (a journal of changes): what they describe is
            // compared through the daemon (`pod ls`, `status`) and the kernel instead. A
            // refused input may not touch the state files at all.
            self.baseline.ipam = now.ipam.clone();
            self.baseline.state = now.state.clone();
        }
        if now != self.baseline {
            std::thread::sleep(Duration::from_millis(300));
            let again = self.snapshot()?;
            if again != self.baseline {
                let diff = self.baseline.diff(&again).join("\n      ");
                self.fail(label, attempt, format!("STATE CHANGED:\n      {diff}"));
                // Later cases are judged against what is there now, so one change is
                // reported once.
                self.baseline = again;
            }
        }
        Ok(())
    }

    // -------------------------------------------------------------- ways in

    fn cli(&self, args: &[OsString]) -> Result<Attempt> {
        let out = Command::new(netns_holder_binary())
            .arg("--socket")
            .arg(self.daemon.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running the CLI")?;
        Ok(Attempt::process(
            format!("netns-holder --socket $SOCK {}", show_args(args)),
            &out,
        ))
    }

    fn cli_case(
        &mut self,
        rule: Rule,
        label: &str,
        args: &[OsString],
        expect: &[&str],
        cleanup: &[&[&str]],
    ) -> Result<()> {
        let attempt = self.cli(args)?;
        self.judge(rule, label, expect, attempt, cleanup)
    }

    fn rpc_case<T>(
        &mut self,
        rule: Rule,
        label: &str,
        how: String,
        call: impl AsyncFnOnce(&mut Client) -> std::result::Result<T, ClientError>,
        expect: &[&str],
        cleanup: &[&[&str]],
    ) -> Result<()> {
        let mut client = self.client.clone();
        let result = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(30), call(&mut client)).await
        });
        let attempt = match result {
            Ok(result) => Attempt::rpc(how, result),
            Err(_) => Attempt {
                refused: false,
                crashed: Some("no answer within 30 s".into()),
                message: String::new(),
                how,
            },
        };
        self.judge(rule, label, expect, attempt, cleanup)
    }

    /// Keep list for a gc case: the baseline pods and `extra`.
    fn keep_with(extra: &str) -> Vec<String> {
        vec![BASE.to_string(), ATTACHED.to_string(), extra.to_string()]
    }

    // -------------------------------------------------------------- sections

    fn names(&mut self) -> Result<()> {
        self.begin("pod names");
        let big = |n: usize, c: char| c.to_string().repeat(n);
        // (label, name, expected words); a name with NUL or of 1 MiB cannot be an argv
        // entry (C strings, MAX_ARG_STRLEN) and goes through gRPC only.
        let cases: Vec<(&str, OsString, Vec<String>)> = vec![
            ("empty", "".into(), vec!["pod name is empty".into()]),
            (
                "300 bytes",
                big(300, 'x').into(),
                vec!["300 bytes".into(), big(40, 'x')],
            ),
            (
                "100 KiB",
                big(100 << 10, 'y').into(),
                vec!["102400 bytes".into()],
            ),
            (
                "traversal ../x",
                "../x".into(),
                vec!["\"../x\"".into(), "'/'".into()],
            ),
            (
                "slash a/b",
                "a/b".into(),
                vec!["\"a/b\"".into(), "'/'".into()],
            ),
            (
                "absolute /etc/passwd",
                "/etc/passwd".into(),
                vec!["\"/etc/passwd\"".into()],
            ),
            (
                "hidden .hidden",
                ".hidden".into(),
                vec!["\".hidden\"".into(), "'.'".into()],
            ),
            ("dot", ".".into(), vec!["\".\"".into()]),
            ("dot-dot", "..".into(), vec!["\"..\"".into()]),
            ("inner a..b", "a..b".into(), vec!["\"a..b\"".into()]),
            (
                "newline",
                "a\nb".into(),
                vec!["U+000A".into(), "a\\nb".into()],
            ),
            ("carriage return", "a\rb".into(), vec!["U+000D".into()]),
            ("tab", "a\tb".into(), vec!["U+0009".into()]),
            ("bell", "a\u{7}b".into(), vec!["U+0007".into()]),
            (
                "ANSI escape",
                "a\u{1b}[31mred".into(),
                vec!["U+001B".into()],
            ),
            ("DEL", "a\u{7f}b".into(), vec!["U+007F".into()]),
            ("C1 control NEL", "a\u{85}b".into(), vec!["U+0085".into()]),
            ("space", "a b".into(), vec!["U+0020".into()]),
            ("no-break space", "a\u{a0}b".into(), vec!["U+00A0".into()]),
            ("line separator", "a\u{2028}b".into(), vec!["U+2028".into()]),
            (
                "non-UTF-8",
                OsString::from_vec(b"a\xffb".to_vec()),
                vec!["UTF-8".into()],
            ),
        ];
        let target = self.target_netns.path().into_os_string();
        let out_dir = self.scratch.path().join("spec").into_os_string();
        for (label, name, expect) in &cases {
            let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
            let n = || name.clone();
            let s = |t: &str| OsString::from(t);
            let cleanup_name = name.to_string_lossy().into_owned();
            let rm: &[&str] = &["pod", "rm", &cleanup_name];
            let commands: Vec<(&str, Vec<OsString>)> = vec![
                ("pod create", vec![s("pod"), s("create"), n()]),
                (
                    "pod attach",
                    vec![s("pod"), s("attach"), n(), s("--netns"), target.clone()],
                ),
                ("pod rm", vec![s("pod"), s("rm"), n()]),
                ("pod inspect", vec![s("pod"), s("inspect"), n()]),
                (
                    "gc --keep",
                    vec![s("gc"), s("--keep"), s(BASE), s(ATTACHED), n()],
                ),
                ("exec", vec![s("exec"), n(), s("--"), s("true")]),
                (
                    "pod spec",
                    vec![
                        s("pod"),
                        s("spec"),
                        n(),
                        s("--out"),
                        out_dir.clone(),
                        s("--"),
                        s("true"),
                    ],
                ),
            ];
            for (what, args) in commands {
                self.cli_case(
                    Rule::Refuse,
                    &format!("CLI {what} with name {label}"),
                    &args,
                    &expect,
                    &[rm],
                )?;
            }
            if let Some(text) = name.to_str() {
                // The refusal shows only the start of a huge name, so it can be delivered.
                self.name_rpcs(Rule::Refuse, label, text, &expect)?;
            }
        }
        // Through gRPC only.
        let mib = big(1 << 20, 'm');
        self.name_rpcs(Rule::Refuse, "1 MiB", &mib, &["1048576 bytes"])?;
        self.name_rpcs(Rule::Refuse, "NUL", "a\0b", &["U+0000"])?;
        // Names that would render deceptively: refused, and the refusal shows the invisible
        // character escaped (never raw, which would hide it or reorder the terminal line).
        for (label, name, escaped, code) in [
            (
                "right-to-left override",
                "hx\u{202e}gnp.exe",
                "\"hx\\u{202e}gnp.exe\"",
                "U+202E",
            ),
            (
                "zero-width space",
                "hx\u{200b}base",
                "\"hx\\u{200b}base\"",
                "U+200B",
            ),
        ] {
            self.cli_case(
                Rule::Refuse,
                &format!("CLI pod create with name {label} (invisible/bidi characters)"),
                &["pod".into(), "create".into(), name.into()],
                &[escaped, code],
                &[&["pod", "rm", name]],
            )?;
            self.name_rpcs(Rule::Refuse, label, name, &[escaped, code])?;
        }
        Ok(())
    }

    fn name_rpcs(&mut self, rule: Rule, label: &str, name: &str, expect: &[&str]) -> Result<()> {
        let rm: &[&str] = &["pod", "rm", name];
        let shown = cut(&format!("{name:?}"), 60);
        let n = name.to_string();
        let target = self.target_netns.path().display().to_string();
        let (a, b, c, d, e) = (n.clone(), n.clone(), n.clone(), n.clone(), n);
        self.rpc_case(
            rule,
            &format!("gRPC CreatePod with name {label}"),
            format!("CreatePod {{ name: {shown} }}"),
            async move |c: &mut Client| {
                c.raw()
                    .create_pod(pb::CreatePodRequest {
                        name: a,
                        ..Default::default()
                    })
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: "raw",
                        status,
                    })
            },
            expect,
            &[rm],
        )?;
        self.rpc_case(
            rule,
            &format!("gRPC AttachPod with name {label}"),
            format!("AttachPod {{ name: {shown}, netns: {target} }}"),
            async move |c: &mut Client| {
                c.raw()
                    .attach_pod(pb::AttachPodRequest {
                        name: b,
                        netns: target,
                        ..Default::default()
                    })
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: "raw",
                        status,
                    })
            },
            expect,
            &[rm],
        )?;
        self.rpc_case(
            rule,
            &format!("gRPC RemovePod with name {label}"),
            format!("RemovePod {{ name: {shown} }}"),
            async move |cl: &mut Client| {
                cl.raw()
                    .remove_pod(pb::RemovePodRequest { name: c })
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: "raw",
                        status,
                    })
            },
            expect,
            &[],
        )?;
        self.rpc_case(
            rule,
            &format!("gRPC GetPod with name {label}"),
            format!("GetPod {{ name: {shown} }}"),
            async move |c: &mut Client| {
                c.raw()
                    .get_pod(pb::GetPodRequest { name: d })
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: "raw",
                        status,
                    })
            },
            expect,
            &[],
        )?;
        self.rpc_case(
            rule,
            &format!("gRPC Gc keeping the baseline and {label}"),
            format!("Gc {{ keep: [{BASE}, {ATTACHED}, {shown}] }}"),
            async move |c: &mut Client| {
                c.raw()
                    .gc(pb::GcRequest {
                        keep: Self::keep_with(&e),
                    })
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: "raw",
                        status,
                    })
            },
            expect,
            &[],
        )
    }

    fn netns_paths(&mut self) -> Result<()> {
        self.begin("netns paths for attach");
        let dir = self.scratch.path().join("netns-paths");
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("regular-file");
        std::fs::write(&file, "not a namespace")?;
        let fifo = dir.join("fifo");
        let c_fifo = std::ffi::CString::new(fifo.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::mkfifo(c_fifo.as_ptr(), 0o600) };
        ensure!(rc == 0, "mkfifo: {}", std::io::Error::last_os_error());
        let link = |name: &str, to: &Path| -> Result<PathBuf> {
            let path = dir.join(name);
            std::os::unix::fs::symlink(to, &path)?;
            Ok(path)
        };
        let dangling = link("dangling", &dir.join("nothing-here"))?;
        let to_passwd = link("to-passwd", Path::new("/etc/passwd"))?;
        let to_dir = link("to-dir", &dir)?;
        let loop_a = dir.join("loop-a");
        link("loop-b", &loop_a)?;
        link("loop-a", &dir.join("loop-b"))?;
        let to_target = link("to-target-netns", &self.target_netns.path())?;
        let sleeper = self.target_sleeper.pid();
        let node_netns = self.node.netns_path();
        let base_netns = self.daemon.netns_dir().join(BASE);
        let p = |p: &Path| p.display().to_string();
        // (rule, label, path, expected words)
        let cases: Vec<(Rule, &str, String, Vec<String>)> = vec![
            (Rule::Refuse, "regular file", p(&file), vec![p(&file)]),
            (
                Rule::Refuse,
                "/etc/passwd",
                "/etc/passwd".into(),
                vec!["/etc/passwd".into()],
            ),
            (Rule::Refuse, "a directory", p(&dir), vec![p(&dir)]),
            (
                Rule::Refuse,
                "/dev/null",
                "/dev/null".into(),
                vec!["/dev/null".into()],
            ),
            (
                Rule::Refuse,
                "a FIFO (open would block)",
                p(&fifo),
                vec![p(&fifo)],
            ),
            (
                Rule::Refuse,
                "the daemon's own API socket",
                p(&self.daemon.socket()),
                vec![p(&self.daemon.socket())],
            ),
            (
                Rule::Refuse,
                "a dangling symlink",
                p(&dangling),
                vec![p(&dangling)],
            ),
            (Rule::Refuse, "a symlink loop", p(&loop_a), vec![p(&loop_a)]),
            (
                Rule::Refuse,
                "a symlink to /etc/passwd",
                p(&to_passwd),
                vec![p(&to_passwd)],
            ),
            (
                Rule::Refuse,
                "a symlink to a directory",
                p(&to_dir),
                vec![p(&to_dir)],
            ),
            (
                Rule::Refuse,
                "a UTS namespace (/proc/<pid>/ns/uts)",
                format!("/proc/{sleeper}/ns/uts"),
                vec![format!("/proc/{sleeper}/ns/uts")],
            ),
            (
                Rule::Refuse,
                "/proc/<pid>/ns/net of no process",
                "/proc/2147483647/ns/net".into(),
                vec!["/proc/2147483647/ns/net".into()],
            ),
            (
                Rule::Refuse,
                "dot-dot to /etc/passwd",
                "/run/netns/../../etc/passwd".into(),
                vec!["/run/netns/../../etc/passwd".into()],
            ),
            (
                Rule::Refuse,
                "the baseline pod's namespace",
                p(&base_netns),
                vec![p(&base_netns), BASE.into()],
            ),
            (
                Rule::Refuse,
                "another attached pod's namespace",
                p(&self.attached_netns.path()),
                vec![p(&self.attached_netns.path()), ATTACHED.into()],
            ),
            (
                Rule::Refuse,
                "a missing entry of netns_dir",
                p(&self.daemon.netns_dir().join("hx-missing")),
                vec!["hx-missing".into()],
            ),
            (
                // Where runtimes keep sandbox namespaces: attaching one is the point.
                Rule::NoChange,
                "someone else's namespace in /run/netns (allowed: runtimes keep theirs there)",
                p(&self.target_netns.path()),
                vec![],
            ),
            // Refused since "attach accepts only pod namespaces in their places, never the
            // node's own" (c291cf3); accepted before.
            (
                Rule::Refuse,
                "a symlink to a real namespace outside netns_dir",
                p(&to_target),
                vec![p(&to_target)],
            ),
            (
                Rule::Refuse,
                "the daemon's own namespace via /proc/self/ns/net",
                "/proc/self/ns/net".into(),
                vec!["/proc/self/ns/net".into()],
            ),
            (
                Rule::Refuse,
                "the node's own namespace (the daemon's, as a bind mount)",
                p(&node_netns),
                vec![p(&node_netns)],
            ),
        ];
        for (i, (rule, label, path, expect)) in cases.into_iter().enumerate() {
            let name = format!("hx-attach-{i}");
            let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
            let rm: &[&str] = &["pod", "rm", &name];
            self.cli_case(
                rule,
                &format!("CLI pod attach --netns {label}"),
                &[
                    "pod".into(),
                    "attach".into(),
                    name.clone().into(),
                    "--netns".into(),
                    path.clone().into(),
                ],
                &expect,
                &[rm],
            )?;
            let name2 = format!("hx-attach-rpc-{i}");
            let rm2: &[&str] = &["pod", "rm", &name2];
            let how = format!("AttachPod {{ name: {name2}, netns: {path:?} }}");
            let n2 = name2.clone();
            self.rpc_case(
                rule,
                &format!("gRPC AttachPod netns {label}"),
                how,
                async move |c: &mut Client| {
                    c.raw()
                        .attach_pod(pb::AttachPodRequest {
                            name: n2,
                            netns: path,
                            ..Default::default()
                        })
                        .await
                        .map_err(|status| ClientError::Rpc {
                            method: "raw",
                            status,
                        })
                },
                &expect,
                &[rm2],
            )?;
        }
        // What only gRPC can carry, or what the CLI makes absolute first.
        let long = format!("/{}", "n".repeat(1 << 20));
        let long_cli = format!("/{}", "n".repeat(64 << 10));
        let rpc_only: Vec<(&str, String, Vec<&str>)> = vec![
            ("empty", String::new(), vec!["netns path is empty"]),
            (
                "relative",
                "netns/x".into(),
                vec!["\"netns/x\"", "not absolute"],
            ),
            ("with NUL", "/run/netns/a\0b".into(), vec!["/run/netns/a"]),
            ("1 MiB long", long, vec!["/nnnnnnnn"]),
        ];
        for (i, (label, path, expect)) in rpc_only.into_iter().enumerate() {
            let rule = Rule::Refuse;
            let name = format!("hx-attach-rpc-only-{i}");
            let rm: &[&str] = &["pod", "rm", &name];
            let how = format!(
                "AttachPod {{ name: {name}, netns: {} }}",
                cut(&format!("{path:?}"), 60)
            );
            let n = name.clone();
            self.rpc_case(
                rule,
                &format!("gRPC AttachPod netns {label}"),
                how,
                async move |c: &mut Client| {
                    c.raw()
                        .attach_pod(pb::AttachPodRequest {
                            name: n,
                            netns: path,
                            ..Default::default()
                        })
                        .await
                        .map_err(|status| ClientError::Rpc {
                            method: "raw",
                            status,
                        })
                },
                &expect,
                &[rm],
            )?;
        }
        let cwd = std::env::current_dir()?;
        for (label, path, expect) in [
            (
                "relative (made absolute by the CLI)",
                "netns/x".to_string(),
                vec![format!("{}/netns/x", cwd.display())],
            ),
            ("empty", String::new(), vec!["--netns".to_string()]),
            ("64 KiB long", long_cli, vec!["/nnnnnnnn".to_string()]),
        ] {
            let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
            let rule = Rule::Refuse;
            self.cli_case(
                rule,
                &format!("CLI pod attach --netns {label}"),
                &[
                    "pod".into(),
                    "attach".into(),
                    "hx-attach-cli".into(),
                    "--netns".into(),
                    path.into(),
                ],
                &expect,
                &[&["pod", "rm", "hx-attach-cli"]],
            )?;
        }
        Ok(())
    }

    fn ports(&mut self) -> Result<()> {
        self.begin("port specs");
        // (rule, spec list, expected words); the daemon is IPv4 only.
        let cli_cases: Vec<(Rule, Vec<&str>, Vec<&str>)> = vec![
            (Rule::Refuse, vec!["0:80"], vec!["\"0:80\"", "host port"]),
            (
                Rule::Refuse,
                vec!["80:0"],
                vec!["\"80:0\"", "container port"],
            ),
            (
                Rule::Refuse,
                vec!["65536:80"],
                vec!["\"65536:80\"", "65536"],
            ),
            (Rule::Refuse, vec!["80:65536"], vec!["\"80:65536\""]),
            (Rule::Refuse, vec!["-1:80"], vec!["\"-1:80\""]),
            (
                Rule::Refuse,
                vec!["99999999999999999999:80"],
                vec!["99999999999999999999"],
            ),
            (Rule::Refuse, vec!["+80:80"], vec!["\"+80:80\""]),
            (Rule::Refuse, vec!["８０:80"], vec!["８０"]),
            (
                Rule::Refuse,
                vec!["8080-8070:80-90"],
                vec!["8080-8070", "reversed"],
            ),
            (Rule::Refuse, vec!["80-90:90-80"], vec!["90-80", "reversed"]),
            (Rule::Refuse, vec!["80-81:80-82"], vec!["\"80-81:80-82\""]),
            (
                Rule::Refuse,
                vec!["1-65535:1-65535"],
                vec!["65535 host ports"],
            ),
            (
                Rule::Refuse,
                vec!["1-4096:1-4096", "5000:5000"],
                vec!["4097 host ports"],
            ),
            (
                Rule::Refuse,
                vec!["8080:80", "8080:81"],
                vec!["8080", "claim the same host port"],
            ),
            (
                Rule::Refuse,
                vec!["10.0.0.1:8080:80", "0.0.0.0:8080:81"],
                vec!["claim the same host port"],
            ),
            (Rule::Refuse, vec!["80:80/icmp"], vec!["\"icmp\""]),
            (Rule::Refuse, vec!["80:80/TCP"], vec!["\"TCP\""]),
            (Rule::Refuse, vec!["80:80/"], vec!["\"80:80/\""]),
            (Rule::Refuse, vec![""], vec!["\"\"", "empty"]),
            (Rule::Refuse, vec!["80"], vec!["\"80\""]),
            (Rule::Refuse, vec![" 80:80"], vec!["whitespace"]),
            (
                Rule::Refuse,
                vec!["fd00::1:80:80"],
                vec!["fd00::1", "brackets"],
            ),
            (
                Rule::Refuse,
                vec!["[1.2.3.4]:80:80"],
                vec!["1.2.3.4", "brackets"],
            ),
            (Rule::Refuse, vec!["[fd00::1:80:80"], vec!["'['"]),
            (Rule::Refuse, vec!["localhost:80:80"], vec!["\"localhost\""]),
            (
                Rule::Refuse,
                vec!["224.0.0.1:80:80"],
                vec!["224.0.0.1", "multicast"],
            ),
            (
                Rule::Refuse,
                vec!["255.255.255.255:80:80"],
                vec!["broadcast"],
            ),
            (
                Rule::Refuse,
                vec!["[ff02::1]:80:80"],
                vec!["ff02::1", "multicast"],
            ),
            // Mixed families: an IPv6 host address for a pod that has IPv4 only.
            (
                Rule::Refuse,
                vec!["[fd00::1]:8080:80"],
                vec!["fd00::1", "ipv6"],
            ),
            (Rule::Refuse, vec!["[::]:8080:80"], vec!["ipv6"]),
            (
                Rule::Refuse,
                vec!["[::ffff:10.0.0.1]:8080:80"],
                vec!["::ffff:10.0.0.1", "IPv4-mapped"],
            ),
            (
                Rule::Refuse,
                vec!["[fd00::1]:8080:80", "8081:81"],
                vec!["fd00::1"],
            ),
            // Host ports the baseline pod holds.
            (Rule::Refuse, vec!["18080:9999"], vec!["18080", BASE]),
            (
                Rule::Refuse,
                vec!["0.0.0.0:18080:9999"],
                vec!["18080", BASE],
            ),
            (Rule::Refuse, vec!["18081:9999/udp"], vec!["18081", BASE]),
        ];
        for (i, (rule, specs, expect)) in cli_cases.into_iter().enumerate() {
            let name = format!("hx-ports-{i}");
            let mut args: Vec<OsString> = vec!["pod".into(), "create".into(), name.clone().into()];
            for spec in &specs {
                args.push(format!("--publish={spec}").into());
            }
            self.cli_case(
                rule,
                &format!("CLI pod create --publish {specs:?}"),
                &args,
                &expect,
                &[&["pod", "rm", &name]],
            )?;
        }
        // The daemon's own checks of the wire form.
        let m =
            |host_ip: &str, host_port: u32, container_port: u32, protocol: i32| pb::PortMapping {
                protocol,
                host_ip: host_ip.into(),
                host_port,
                container_port,
            };
        let many: Vec<pb::PortMapping> = (1..=100_000u32)
            .map(|p| m("", p % 65535 + 1, 80, 0))
            .collect();
        let rpc_cases: Vec<(Rule, &str, Vec<pb::PortMapping>, Vec<&str>)> = vec![
            (
                Rule::Refuse,
                "host port 0",
                vec![m("", 0, 80, 0)],
                vec!["host port 0"],
            ),
            (
                Rule::Refuse,
                "host port 65536",
                vec![m("", 65536, 80, 0)],
                vec!["host port 65536"],
            ),
            (
                Rule::Refuse,
                "host port u32::MAX",
                vec![m("", u32::MAX, 80, 0)],
                vec!["4294967295"],
            ),
            (
                Rule::Refuse,
                "container port 0",
                vec![m("", 80, 0, 0)],
                vec!["container port 0"],
            ),
            (
                Rule::Refuse,
                "container port 70000",
                vec![m("", 80, 70000, 0)],
                vec!["70000"],
            ),
            (
                Rule::Refuse,
                "protocol 3",
                vec![m("", 80, 80, 3)],
                vec!["protocol 3"],
            ),
            (
                Rule::Refuse,
                "protocol -1",
                vec![m("", 80, 80, -1)],
                vec!["protocol -1"],
            ),
            (
                Rule::Refuse,
                "host IP garbage",
                vec![m("garbage", 80, 80, 0)],
                vec!["\"garbage\""],
            ),
            (
                Rule::Refuse,
                "host IP with NUL",
                vec![m("10.0.0.1\0", 80, 80, 0)],
                vec!["10.0.0.1"],
            ),
            (
                Rule::Refuse,
                "duplicate",
                vec![m("", 80, 80, 0), m("", 80, 81, 0)],
                vec!["claim the same host port"],
            ),
            (
                Rule::Refuse,
                "4097 mappings",
                (1..=4097).map(|p| m("", p, 80, 0)).collect(),
                vec!["4097 host ports"],
            ),
            (
                Rule::Refuse,
                "100000 mappings",
                many,
                vec!["100000 host ports"],
            ),
            (
                Rule::Refuse,
                "IPv6 host IP on an IPv4-only pod",
                vec![m("fd00::1", 80, 80, 0)],
                vec!["ipv6"],
            ),
            (
                Rule::Refuse,
                "a baseline host port",
                vec![m("", 18080, 80, 0)],
                vec!["18080", BASE],
            ),
            // The same host IP rule as the CLI's (`ports::host_ip_problem`), the mapping
            // and the address named.
            (
                Rule::Refuse,
                "multicast host IP",
                vec![m("224.0.0.1", 80, 80, 0)],
                vec!["\"224.0.0.1:80:80/tcp\"", "\"224.0.0.1\"", "multicast"],
            ),
            (
                Rule::Refuse,
                "IPv6 multicast host IP",
                vec![m("ff02::1", 80, 80, 0)],
                vec!["\"ff02::1:80:80/tcp\"", "multicast"],
            ),
            (
                Rule::Refuse,
                "broadcast host IP",
                vec![m("255.255.255.255", 80, 80, 0)],
                vec!["\"255.255.255.255:80:80/tcp\"", "broadcast"],
            ),
            (
                Rule::Refuse,
                "IPv4-mapped unspecified host IP ::ffff:0.0.0.0",
                vec![m("::ffff:0.0.0.0", 80, 80, 1)],
                vec!["\"::ffff:0.0.0.0:80:80/udp\"", "IPv4-mapped"],
            ),
            (
                Rule::Refuse,
                "IPv4-mapped host IP in brackets",
                vec![m("[::ffff:10.0.0.1]", 80, 80, 0)],
                vec!["\"[::ffff:10.0.0.1]\"", "IPv4-mapped"],
            ),
        ];
        for (i, (rule, label, ports, expect)) in rpc_cases.into_iter().enumerate() {
            let name = format!("hx-ports-rpc-{i}");
            let how = format!(
                "CreatePod {{ name: {name}, ports: {} }}",
                cut(&format!("{ports:?}"), 160)
            );
            let n = name.clone();
            self.rpc_case(
                rule,
                &format!("gRPC CreatePod ports: {label}"),
                how,
                async move |c: &mut Client| {
                    c.raw()
                        .create_pod(pb::CreatePodRequest {
                            name: n,
                            ports,
                            ..Default::default()
                        })
                        .await
                        .map_err(|status| ClientError::Rpc {
                            method: "raw",
                            status,
                        })
                },
                &expect,
                &[&["pod", "rm", &name]],
            )?;
        }
        Ok(())
    }

    fn annotations_and_peers(&mut self) -> Result<()> {
        self.begin("API annotations and peers");
        for (arg, expect) in [
            ("novalue", vec!["\"novalue\"", "KEY=VALUE"]),
            ("=v", vec!["\"=v\"", "key is empty"]),
        ] {
            self.cli_case(
                Rule::Refuse,
                &format!("CLI pod create --annotation {arg}"),
                &[
                    "pod".into(),
                    "create".into(),
                    "hx-ann".into(),
                    "--annotation".into(),
                    arg.into(),
                ],
                &expect,
                &[&["pod", "rm", "hx-ann"]],
            )?;
        }
        self.cli_case(
            Rule::Refuse,
            "CLI pod create with a duplicate annotation key",
            &[
                "pod".into(),
                "create".into(),
                "hx-ann".into(),
                "--annotation".into(),
                "k=1".into(),
                "--annotation".into(),
                "k=2".into(),
            ],
            &["\"k=2\"", "more than once"],
            &[&["pod", "rm", "hx-ann"]],
        )?;
        self.rpc_case(
            Rule::Refuse,
            "gRPC CreatePod with an empty annotation key",
            "CreatePod { name: hx-ann, annotations: {\"\": \"v\"} }".into(),
            async move |c: &mut Client| {
                c.raw()
                    .create_pod(pb::CreatePodRequest {
                        name: "hx-ann".into(),
                        annotations: BTreeMap::from([(String::new(), "v".into())]),
                        ..Default::default()
                    })
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: "raw",
                        status,
                    })
            },
            &["annotation key is empty"],
            &[&["pod", "rm", "hx-ann"]],
        )?;
        self.rpc_case(
            Rule::Refuse,
            "gRPC CreatePod with a 1 MiB annotation value",
            "CreatePod { name: hx-ann-big, annotations: {\"k\": <1 MiB>} }".into(),
            async move |c: &mut Client| {
                c.raw()
                    .create_pod(pb::CreatePodRequest {
                        name: "hx-ann-big".into(),
                        annotations: BTreeMap::from([("k".into(), "v".repeat(1 << 20))]),
                        ..Default::default()
                    })
                    .await
                    .map_err(|status| ClientError::Rpc {
                        method: "raw",
                        status,
                    })
            },
            &["1048577 bytes", "at most"],
            &[&["pod", "rm", "hx-ann-big"]],
        )?;
        // Peers: (pod CIDR, via, expected words).
        let peer_cases: Vec<(&str, &str, Vec<&str>)> = vec![
            ("garbage", "192.168.50.2", vec!["\"garbage\""]),
            ("10.99.0.0", "192.168.50.2", vec!["\"10.99.0.0\""]),
            ("10.99.0.0/24", "nodeb", vec!["\"nodeb\""]),
            ("10.99.0.5/24", "192.168.50.2", vec!["host bits"]),
            (
                "10.244.0.0/24",
                "192.168.50.2",
                vec!["overlaps this node's pod CIDR"],
            ),
            (
                "10.244.0.0/16",
                "192.168.50.2",
                vec!["overlaps this node's pod CIDR"],
            ),
            ("10.99.0.0/24", "10.244.0.7", vec!["inside pod CIDR"]),
            ("10.99.0.0/24", "10.99.0.7", vec!["inside pod CIDR"]),
            ("10.99.0.0/24", "127.0.0.1", vec!["loopback"]),
            ("10.99.0.0/24", "0.0.0.0", vec!["unspecified"]),
            ("10.99.0.0/24", "224.0.0.1", vec!["multicast"]),
            ("10.99.0.0/24", "255.255.255.255", vec!["broadcast"]),
            (
                "10.99.0.0/24",
                "fd00::2",
                vec!["different address families"],
            ),
        ];
        for (cidr, via, expect) in peer_cases {
            self.cli_case(
                Rule::Refuse,
                &format!("CLI peer add {cidr} {via}"),
                &["peer".into(), "add".into(), cidr.into(), via.into()],
                &expect,
                &[&["peer", "rm", cidr]],
            )?;
            let (c2, v2) = (cidr.to_string(), via.to_string());
            self.rpc_case(
                Rule::Refuse,
                &format!("gRPC AddPeer {cidr} via {via}"),
                format!("AddPeer {{ pod_cidr: {cidr:?}, via: {via:?} }}"),
                async move |c: &mut Client| {
                    c.raw()
                        .add_peer(pb::AddPeerRequest {
                            pod_cidr: c2,
                            via: v2,
                        })
                        .await
                        .map_err(|status| ClientError::Rpc {
                            method: "raw",
                            status,
                        })
                },
                &expect,
                &[&["peer", "rm", cidr]],
            )?;
        }
        self.cli_case(
            Rule::Refuse,
            "CLI peer rm garbage",
            &["peer".into(), "rm".into(), "garbage".into()],
            &["\"garbage\""],
            &[],
        )?;
        Ok(())
    }

    // -------------------------------------------------------------- OCI hook

    fn oci(&self, stage: &str, socket: &Path, stdin: &[u8], in_node: bool) -> Result<Attempt> {
        let mut command = if in_node {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", self.node.netns_path().display()))
                .arg("--")
                .arg(cri_hook_binary());
            c
        } else {
            Command::new(cri_hook_binary())
        };
        command
            .args(["oci", stage, "--timeout-ms", "5000", "--daemon-socket"])
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning cri-hook oci")?;
        let mut input = child.stdin.take().context("stdin")?;
        let data = stdin.to_vec();
        // The hook may stop reading early (it must not); write from a thread.
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        let shown = if stdin.len() > 200 {
            format!(
                "<{} bytes starting {:?}>",
                stdin.len(),
                String::from_utf8_lossy(&stdin[..60])
            )
        } else {
            format!("{:?}", String::from_utf8_lossy(stdin))
        };
        let prefix = if in_node {
            "nsenter --net=$NODE -- "
        } else {
            ""
        };
        Ok(Attempt::process(
            format!(
                "echo {shown} | {prefix}cri-hook oci {stage} --daemon-socket {}",
                socket.display()
            ),
            &out,
        ))
    }

    fn oci_hook(&mut self) -> Result<()> {
        self.begin("OCI state on the hook's stdin");
        let sock = self.daemon.socket();
        let dead = PathBuf::from(NO_DAEMON);
        let pid = self.target_sleeper.pid() as i64;
        let st = |id: &str, status: &str, pid: Option<i64>, annotations: Value| -> Vec<u8> {
            let mut v = json!({"ociVersion": "1.0.2", "id": id, "status": status, "bundle": "/b"});
            if let Some(pid) = pid {
                v["pid"] = json!(pid);
            }
            if !annotations.is_null() {
                v["annotations"] = annotations;
            }
            serde_json::to_vec(&v).expect("JSON")
        };
        let exited = {
            let mut child = Command::new("true").spawn()?;
            let pid = child.id();
            child.wait()?;
            pid as i64
        };
        let me = std::process::id() as i64;
        let daemon_pid = self.daemon.pid().context("daemon pid")? as i64;
        let mut huge = st("hx-oci-huge", "creating", Some(pid), Value::Null);
        huge.pop();
        huge.extend_from_slice(b",\"annotations\":{\"netns-holder.io/nmae\":\"");
        huge.extend(std::iter::repeat_n(b'a', 8 << 20));
        huge.extend_from_slice(b"\"}}");
        let mut spaces = vec![b' '; 16 << 20];
        spaces.push(b'{');
        // (rule, label, stage, socket, in node netns, stdin, expected words, pod to clean up)
        type OciCase = (
            Rule,
            &'static str,
            &'static str,
            PathBuf,
            bool,
            Vec<u8>,
            Vec<String>,
            String,
        );
        let s = |t: &str| t.to_string();
        let cases: Vec<OciCase> = vec![
            (
                Rule::Refuse,
                "empty stdin",
                "createRuntime",
                sock.clone(),
                false,
                vec![],
                vec![s("OCI state on stdin is invalid")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "not JSON",
                "createRuntime",
                sock.clone(),
                false,
                b"hello".to_vec(),
                vec![s("is invalid")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "a JSON array",
                "createRuntime",
                sock.clone(),
                false,
                b"[1,2]".to_vec(),
                vec![s("is invalid")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "truncated JSON",
                "createRuntime",
                sock.clone(),
                false,
                st("hx-oci", "creating", Some(pid), Value::Null)[..30].to_vec(),
                vec![s("is invalid")],
                s("hx-oci"),
            ),
            (
                Rule::Refuse,
                "100000 nested arrays",
                "createRuntime",
                sock.clone(),
                false,
                vec![b'['; 100_000],
                vec![s("is invalid")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "100000 nested arrays in an unknown field",
                "createRuntime",
                sock.clone(),
                false,
                [&b"{\"x\":"[..], &vec![b'['; 100_000]].concat(),
                vec![s("is invalid")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "16 MiB of spaces",
                "createRuntime",
                sock.clone(),
                false,
                spaces,
                vec![s("is invalid")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "8 MiB annotation under an unknown option",
                "createRuntime",
                sock.clone(),
                false,
                huge,
                vec![s("hx-oci-huge"), s("netns-holder.io/nmae")],
                s("hx-oci-huge"),
            ),
            (
                Rule::Refuse,
                "no pid",
                "createRuntime",
                sock.clone(),
                false,
                st("hx-oci-1", "creating", None, Value::Null),
                vec![s("hx-oci-1"), s("no pid")],
                s("hx-oci-1"),
            ),
            (
                Rule::Refuse,
                "pid 0",
                "createRuntime",
                sock.clone(),
                false,
                st("hx-oci-2", "creating", Some(0), Value::Null),
                vec![s("hx-oci-2"), s("no pid")],
                s("hx-oci-2"),
            ),
            (
                Rule::Refuse,
                "pid -1",
                "createRuntime",
                sock.clone(),
                false,
                st("hx-oci-3", "creating", Some(-1), Value::Null),
                vec![s("hx-oci-3"), s("no pid")],
                s("hx-oci-3"),
            ),
            (
                Rule::Refuse,
                "pid as a string",
                "createRuntime",
                sock.clone(),
                false,
                String::from_utf8(st("hx-oci-4", "creating", Some(4242), Value::Null))?
                    .replace("4242", "\"4242\"")
                    .into_bytes(),
                vec![s("is invalid")],
                s("hx-oci-4"),
            ),
            (
                Rule::Refuse,
                "pid 2^32",
                "createRuntime",
                sock.clone(),
                false,
                st("hx-oci-5", "creating", Some(1 << 32), Value::Null),
                vec![s("is invalid")],
                s("hx-oci-5"),
            ),
            (
                Rule::Refuse,
                "pid of no process",
                "createRuntime",
                sock.clone(),
                false,
                st("hx-oci-6", "creating", Some(2_147_483_647), Value::Null),
                vec![s("hx-oci-6"), s("/proc/2147483647/ns/net")],
                s("hx-oci-6"),
            ),
            (
                Rule::Refuse,
                "pid of an exited process (no daemon behind the socket)",
                "createRuntime",
                dead.clone(),
                false,
                st("hx-oci-7", "creating", Some(exited), Value::Null),
                vec![s("hx-oci-7"), format!("/proc/{exited}/ns/net")],
                s("hx-oci-7"),
            ),
            (
                Rule::Refuse,
                "pid 1 (host netns; no daemon behind the socket)",
                "createRuntime",
                dead.clone(),
                false,
                st("hx-oci-8", "creating", Some(1), Value::Null),
                vec![
                    s("hx-oci-8"),
                    s("host network namespace|cannot open /proc/1/ns/net"),
                ],
                s("hx-oci-8"),
            ),
            (
                Rule::Refuse,
                "the hook's own pid's namespace (host; no daemon behind the socket)",
                "createRuntime",
                dead.clone(),
                false,
                st("hx-oci-9", "creating", Some(me), Value::Null),
                vec![s("hx-oci-9"), s("host network namespace")],
                s("hx-oci-9"),
            ),
            (
                Rule::Refuse,
                "pid 2, a kernel thread (host netns; no daemon behind the socket)",
                "createRuntime",
                dead.clone(),
                false,
                st("hx-oci-10", "creating", Some(2), Value::Null),
                vec![s("hx-oci-10"), s("host network namespace")],
                s("hx-oci-10"),
            ),
            (
                Rule::Refuse,
                "the daemon's pid, hook in the node namespace",
                "createRuntime",
                sock.clone(),
                true,
                st("hx-oci-11", "creating", Some(daemon_pid), Value::Null),
                vec![s("hx-oci-11"), s("host network namespace")],
                s("hx-oci-11"),
            ),
            (
                Rule::Refuse,
                "no id",
                "createRuntime",
                sock.clone(),
                false,
                format!(
                    r#"{{"ociVersion":"1.0.2","status":"creating","pid":{pid},"bundle":"/b"}}"#
                )
                .into_bytes(),
                vec![s("no container id")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "id ../x",
                "createRuntime",
                sock.clone(),
                false,
                st("../x", "creating", Some(pid), Value::Null),
                vec![s("\"../x\""), s("cannot name a pod")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "id with a newline",
                "createRuntime",
                sock.clone(),
                false,
                st("hx\noci", "creating", Some(pid), Value::Null),
                vec![s("U+000A")],
                s("-"),
            ),
            // Control and invisible characters are shown escaped, never raw (the suite
            // fails any message carrying them raw).
            (
                Rule::Refuse,
                "id with a terminal escape sequence",
                "createRuntime",
                sock.clone(),
                false,
                st("hx\u{1b}[2Joci", "creating", Some(pid), Value::Null),
                vec![s(r#"container "hx\u{1b}[2Joci""#), s("U+001B")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "id with a right-to-left override",
                "createRuntime",
                sock.clone(),
                false,
                st("hx\u{202e}ico", "creating", Some(pid), Value::Null),
                vec![s(r#"container "hx\u{202e}ico""#), s("U+202E")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "skip annotation with a terminal escape sequence",
                "createRuntime",
                sock.clone(),
                false,
                st(
                    "hx-oci-esc",
                    "creating",
                    Some(pid),
                    json!({"netns-holder.io/skip": "yes\u{1b}]0;owned\u{7}"}),
                ),
                vec![s(r#""yes\u{1b}]0;owned\u{7}""#)],
                s("hx-oci-esc"),
            ),
            (
                Rule::Refuse,
                "status with a terminal escape sequence (a parse error echoing it)",
                "createRuntime",
                sock.clone(),
                false,
                br#"{"ociVersion":"1.0.2","id":"hx-oci-st","status":"run\u001b[2Jning","bundle":"/b"}"#
                    .to_vec(),
                vec![s("is invalid"), s(r"run\u{1b}[2Jning")],
                s("-"),
            ),
            (
                Rule::Refuse,
                "unknown option under the prefix",
                "createRuntime",
                sock.clone(),
                false,
                st(
                    "hx-oci-12",
                    "creating",
                    Some(pid),
                    json!({"netns-holder.io/nmae": "web"}),
                ),
                vec![
                    s("hx-oci-12"),
                    s("\"netns-holder.io/nmae\""),
                    s("unknown option"),
                ],
                s("hx-oci-12"),
            ),
            (
                Rule::Refuse,
                "skip=maybe",
                "createRuntime",
                sock.clone(),
                false,
                st(
                    "hx-oci-13",
                    "creating",
                    Some(pid),
                    json!({"netns-holder.io/skip": "maybe"}),
                ),
                vec![s("\"netns-holder.io/skip\""), s("\"maybe\"")],
                s("hx-oci-13"),
            ),
            (
                Rule::Refuse,
                "name=../x",
                "createRuntime",
                sock.clone(),
                false,
                st(
                    "hx-oci-14",
                    "creating",
                    Some(pid),
                    json!({"netns-holder.io/name": "../x"}),
                ),
                vec![s("\"netns-holder.io/name\""), s("\"../x\"")],
                s("hx-oci-14"),
            ),
            (
                Rule::Refuse,
                "name= (empty)",
                "createRuntime",
                sock.clone(),
                false,
                st(
                    "hx-oci-15",
                    "creating",
                    Some(pid),
                    json!({"netns-holder.io/name": ""}),
                ),
                vec![s("\"netns-holder.io/name\""), s("empty")],
                s("hx-oci-15"),
            ),
            (
                Rule::Refuse,
                "name of the baseline pod (someone else's)",
                "createRuntime",
                sock.clone(),
                false,
                st(
                    "hx-oci-16",
                    "creating",
                    Some(pid),
                    json!({"netns-holder.io/name": BASE}),
                ),
                vec![s("hx-oci-16"), s(BASE), s("refusing")],
                s(BASE),
            ),
            (
                Rule::Refuse,
                "auto with status running",
                "auto",
                sock.clone(),
                false,
                st("hx-oci-17", "running", Some(pid), Value::Null),
                vec![s("hx-oci-17"), s("running")],
                s("hx-oci-17"),
            ),
            (
                Rule::Refuse,
                "unknown status",
                "auto",
                sock.clone(),
                false,
                st("hx-oci-18", "exploded", Some(pid), Value::Null),
                vec![s("is invalid"), s("exploded")],
                s("hx-oci-18"),
            ),
            (
                Rule::Refuse,
                "unknown stage argument",
                "createruntime",
                sock.clone(),
                false,
                st("hx-oci-19", "creating", Some(pid), Value::Null),
                vec![s("createruntime")],
                s("hx-oci-19"),
            ),
            (
                Rule::NoChange,
                "poststop for the baseline pod (not made by the hook)",
                "poststop",
                sock.clone(),
                false,
                st(BASE, "stopped", None, Value::Null),
                vec![],
                s("-"),
            ),
            (
                Rule::NoChange,
                "poststop naming the baseline pod by annotation",
                "poststop",
                sock.clone(),
                false,
                st(
                    "hx-oci-20",
                    "stopped",
                    None,
                    json!({"netns-holder.io/name": BASE}),
                ),
                vec![],
                s("-"),
            ),
            (
                Rule::NoChange,
                "poststop for the attached pod",
                "auto",
                sock.clone(),
                false,
                st(ATTACHED, "stopped", None, Value::Null),
                vec![],
                s("-"),
            ),
        ];
        for (rule, label, stage, socket, in_node, stdin, expect, pod) in cases {
            let attempt = self.oci(stage, &socket, &stdin, in_node)?;
            let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
            let rm = ["pod", "rm", pod.as_str()];
            let cleanup: Vec<&[&str]> = if pod == "-" || pod == BASE {
                Vec::new()
            } else {
                vec![&rm]
            };
            self.judge(
                rule,
                &format!("cri-hook oci {stage}: {label}"),
                &expect,
                attempt,
                &cleanup,
            )?;
        }
        Ok(())
    }

    // -------------------------------------------------------------- CNI

    fn cni(&self, env: &[(&str, &str)], stdin: &[u8]) -> Result<Attempt> {
        let mut command = Command::new(cri_hook_binary());
        command
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().context("spawning the CNI entry")?;
        let mut input = child.stdin.take().context("stdin")?;
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output()?;
        let _ = writer.join();
        let mut attempt = Attempt::process(
            format!(
                "echo {} | env {} cri-hook",
                if stdin.len() > 200 {
                    format!(
                        "<{} bytes starting {:?}>",
                        stdin.len(),
                        String::from_utf8_lossy(&stdin[..60])
                    )
                } else {
                    format!("{:?}", String::from_utf8_lossy(stdin))
                },
                env.iter()
                    .map(|(k, v)| format!("{k}={}", show_arg(OsStr::new(v))))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            &out,
        );
        // The CNI error object is the answer: it must be one JSON object with code, msg and
        // the cniVersion (shown last, so cases can expect the version the error carries).
        if !out.status.success() {
            match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(v) if v["code"].is_u64() && v["msg"].is_string() => {
                    attempt.message = format!(
                        "CNI error {}: {} [cniVersion {}]",
                        v["code"],
                        v["msg"].as_str().unwrap_or(""),
                        v["cniVersion"].as_str().unwrap_or("missing")
                    );
                }
                _ => {
                    attempt.crashed.get_or_insert_with(|| {
                        format!(
                            "no CNI error object on stdout: {:?}",
                            cut(&String::from_utf8_lossy(&out.stdout), 200)
                        )
                    });
                }
            }
        }
        Ok(attempt)
    }

    fn cni_entry(&mut self) -> Result<()> {
        self.begin("CNI configurations and environment");
        let sock = self.daemon.socket().display().to_string();
        let target = self.target_netns.path().display().to_string();
        let conf = |extra: Value| -> Vec<u8> {
            let mut v = json!({"cniVersion": "1.1.0", "name": "hx-net", "type": "netns-holder", "daemonSocket": sock});
            if let Value::Object(map) = extra {
                for (k, val) in map {
                    if val.is_null() {
                        v.as_object_mut().expect("object").remove(&k);
                    } else {
                        v[k] = val;
                    }
                }
            }
            serde_json::to_vec(&v).expect("JSON")
        };
        let env_for = |id: &'static str| -> Vec<(&'static str, String)> {
            vec![
                ("CNI_COMMAND", "ADD".to_string()),
                ("CNI_CONTAINERID", id.to_string()),
                ("CNI_NETNS", target.clone()),
                ("CNI_IFNAME", "eth0".to_string()),
                ("CNI_PATH", "/opt/cni/bin".to_string()),
            ]
        };
        let mut huge = conf(json!({}));
        huge.pop();
        huge.extend_from_slice(b",\"pad\":\"");
        huge.extend(std::iter::repeat_n(b'p', 8 << 20));
        huge.extend_from_slice(b"\"}");
        let pm = |m: Value| conf(json!({"runtimeConfig": {"portMappings": m}}));
        // (rule, label, stdin, expected words)
        let config_cases: Vec<(Rule, &str, Vec<u8>, Vec<&str>)> = vec![
            (Rule::Refuse, "empty stdin", vec![], vec!["CNI error 6"]),
            (
                Rule::Refuse,
                "not JSON",
                b"{cniVersion: 1.1.0}".to_vec(),
                vec!["CNI error 6", "not valid"],
            ),
            (
                Rule::Refuse,
                "a JSON array",
                b"[]".to_vec(),
                vec!["CNI error 6"],
            ),
            (
                Rule::Refuse,
                "truncated",
                conf(json!({}))[..25].to_vec(),
                vec!["CNI error 6"],
            ),
            (
                Rule::Refuse,
                "100000 nested objects",
                b"{\"a\":".repeat(100_000),
                vec!["CNI error 6"],
            ),
            (
                Rule::Refuse,
                "8 MiB configuration with no name",
                {
                    let mut h = huge.clone();
                    let at = h
                        .windows(15)
                        .position(|w| w == b"\"name\":\"hx-net\"")
                        .expect("name");
                    h.splice(at..at + 15, b"\"nome\":\"hx-net\"".iter().copied());
                    h
                },
                vec!["CNI error", "name"],
            ),
            (
                Rule::Refuse,
                "cniVersion 2.0.0",
                conf(json!({"cniVersion": "2.0.0"})),
                vec!["CNI error 1", "\"2.0.0\""],
            ),
            (
                Rule::Refuse,
                "cniVersion empty",
                conf(json!({"cniVersion": ""})),
                vec!["CNI error 1", "\"\""],
            ),
            (
                Rule::Refuse,
                "cniVersion a number",
                conf(json!({"cniVersion": 1.1})),
                vec!["CNI error 6", "1.1"],
            ),
            (
                Rule::Refuse,
                "no cniVersion",
                conf(json!({"cniVersion": null})),
                vec!["CNI error 6", "cniVersion"],
            ),
            (
                Rule::Refuse,
                "no name",
                conf(json!({"name": null})),
                vec!["CNI error 6", "name"],
            ),
            (
                Rule::Refuse,
                "empty name",
                conf(json!({"name": ""})),
                vec!["CNI error 7", "no name"],
            ),
            (
                Rule::Refuse,
                "name a list",
                conf(json!({"name": ["hx-net"]})),
                vec!["CNI error 6"],
            ),
            (
                Rule::Refuse,
                "daemonTimeoutMs 0",
                conf(json!({"daemonTimeoutMs": 0})),
                vec!["CNI error 7", "daemonTimeoutMs"],
            ),
            (
                Rule::Refuse,
                "daemonTimeoutMs -1",
                conf(json!({"daemonTimeoutMs": -1})),
                vec!["CNI error 6"],
            ),
            (
                Rule::Refuse,
                "runtimeConfig a string",
                conf(json!({"runtimeConfig": "x"})),
                vec!["CNI error 6"],
            ),
            // portMappings: every entry checked before the daemon is called (code 7 naming
            // the entry), a port of another pod refused by the daemon (code 102 naming it).
            (
                Rule::Refuse,
                "portMappings an object",
                pm(json!({"a": 1})),
                vec![
                    "CNI error 7",
                    "runtimeConfig.portMappings {\"a\":1} is not a list",
                ],
            ),
            (
                Rule::Refuse,
                "hostPort a string",
                pm(json!([{"hostPort": "80", "containerPort": 80}])),
                vec!["CNI error 7", "portMappings[0]", "hostPort \"80\""],
            ),
            (
                Rule::Refuse,
                "hostPort -1",
                pm(json!([{"hostPort": -1, "containerPort": 80}])),
                vec!["CNI error 7", "portMappings[0]", "hostPort -1"],
            ),
            (
                Rule::Refuse,
                "hostPort 0",
                pm(json!([{"hostPort": 0, "containerPort": 80}])),
                vec!["CNI error 7", "portMappings[0]", "hostPort 0"],
            ),
            (
                Rule::Refuse,
                "hostPort 65536",
                pm(json!([{"hostPort": 65536, "containerPort": 80}])),
                vec!["CNI error 7", "portMappings[0]", "hostPort 65536"],
            ),
            (
                Rule::Refuse,
                "no containerPort",
                pm(json!([{"hostPort": 8080}])),
                vec!["CNI error 7", "portMappings[0]", "containerPort is missing"],
            ),
            (
                Rule::Refuse,
                "an entry that is not an object",
                pm(json!([{"hostPort": 8080, "containerPort": 80}, "8081:81"])),
                vec!["CNI error 7", "portMappings[1] \"8081:81\": not an object"],
            ),
            (
                Rule::Refuse,
                "protocol icmp",
                pm(json!([{"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}])),
                vec!["CNI error 7", "portMappings[0]", "protocol \"icmp\""],
            ),
            (
                Rule::Refuse,
                "hostIP garbage",
                pm(json!([{"hostPort": 8080, "containerPort": 80, "hostIP": "garbage"}])),
                vec!["CNI error 7", "portMappings[0]", "\"garbage\""],
            ),
            (
                Rule::Refuse,
                "two entries claiming one host port",
                pm(json!([
                    {"hostPort": 8080, "containerPort": 80},
                    {"hostPort": 8080, "containerPort": 81, "hostIP": "10.0.0.1"}
                ])),
                vec!["CNI error 7", "claim the same host port", "8080"],
            ),
            (
                Rule::Refuse,
                "4097 entries",
                pm(Value::Array(
                    (1..=4097u32)
                        .map(|p| json!({"hostPort": 20000 + p, "containerPort": 80}))
                        .collect(),
                )),
                vec!["CNI error 7", "4097 host ports"],
            ),
            (
                Rule::Refuse,
                "a baseline host port",
                pm(json!([{"hostPort": 18080, "containerPort": 80}])),
                vec!["CNI error 102", "18080", BASE],
            ),
            (
                Rule::Refuse,
                "no type",
                conf(json!({"type": null})),
                vec!["CNI error 7", "no type"],
            ),
            (
                Rule::Refuse,
                "empty type",
                conf(json!({"type": ""})),
                vec!["CNI error 7", "type is empty"],
            ),
            // The error object carries the configuration's cniVersion whatever else is wrong.
            (
                Rule::Refuse,
                "cniVersion 0.4.0 with a bad portMappings entry",
                conf(
                    json!({"cniVersion": "0.4.0", "runtimeConfig": {"portMappings": [{"hostPort": 0, "containerPort": 80}]}}),
                ),
                vec!["CNI error 7", "[cniVersion 0.4.0]"],
            ),
            (
                Rule::Refuse,
                "cniVersion 0.3.1, invalid UTF-8 in an ignored field, no name",
                {
                    let mut c = conf(json!({"cniVersion": "0.3.1", "name": null}));
                    c.pop();
                    c.extend_from_slice(b",\"junk\":\"\xff\xfe\"}");
                    c
                },
                vec!["CNI error 6", "name", "[cniVersion 0.3.1]"],
            ),
            (
                Rule::Refuse,
                "cniVersion 1.0.0, invalid UTF-8 in the name",
                {
                    let mut c = conf(json!({"cniVersion": "1.0.0", "name": null}));
                    c.pop();
                    c.extend_from_slice(b",\"name\":\"hx\xc3\x28\"}");
                    c
                },
                vec!["CNI error 6", "[cniVersion 1.0.0]"],
            ),
            (
                Rule::Refuse,
                "cniVersion 0.4.0, truncated",
                br#"{"cniVersion": "0.4.0", "name": "hx-net", "type": "netns-ho"#.to_vec(),
                vec!["CNI error 6", "[cniVersion 0.4.0]"],
            ),
            (
                Rule::Refuse,
                "cniVersion 9.9.9 (the error says the newest)",
                conf(json!({"cniVersion": "9.9.9"})),
                vec!["CNI error 1", "[cniVersion 1.1.0]"],
            ),
        ];
        for (i, (rule, label, stdin, expect)) in config_cases.into_iter().enumerate() {
            let id = format!("hx-cni-{i}");
            let env: Vec<(&str, String)> = env_for("x")
                .into_iter()
                .map(|(k, v)| {
                    if k == "CNI_CONTAINERID" {
                        (k, id.clone())
                    } else {
                        (k, v)
                    }
                })
                .collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let attempt = self.cni(&env, &stdin)?;
            self.judge(
                rule,
                &format!("CNI ADD config: {label}"),
                &expect,
                attempt,
                &[&["pod", "rm", &id]],
            )?;
        }
        let ok = conf(json!({}));
        let node_netns = self.node.netns_path().display().to_string();
        let dir = self.scratch.path().display().to_string();
        // (rule, label, env overrides, expected words, pod to clean up)
        type EnvCase<'a> = (
            Rule,
            &'a str,
            Vec<(&'a str, &'a str)>,
            Vec<&'a str>,
            &'a str,
        );
        let env_cases: Vec<EnvCase> = vec![
            (
                Rule::Refuse,
                "CNI_COMMAND bogus",
                vec![("CNI_COMMAND", "EXPLODE")],
                vec!["CNI error 4", "\"EXPLODE\""],
                "-",
            ),
            (
                Rule::Refuse,
                "CNI_CONTAINERID unset",
                vec![("CNI_CONTAINERID", "")],
                vec!["CNI error 4", "CNI_CONTAINERID"],
                "-",
            ),
            (
                Rule::Refuse,
                "CNI_CONTAINERID ../x",
                vec![("CNI_CONTAINERID", "../x")],
                vec!["CNI error 4", "\"../x\""],
                "-",
            ),
            (
                Rule::Refuse,
                "CNI_CONTAINERID with a newline",
                vec![("CNI_CONTAINERID", "hx\ncni")],
                vec!["CNI error 4", "U+000A"],
                "-",
            ),
            (
                Rule::Refuse,
                "CNI_NETNS relative",
                vec![("CNI_CONTAINERID", "hx-cni-e1"), ("CNI_NETNS", "netns/x")],
                vec!["CNI error 4", "netns/x"],
                "hx-cni-e1",
            ),
            (
                Rule::Refuse,
                "CNI_NETNS unset",
                vec![("CNI_CONTAINERID", "hx-cni-e2"), ("CNI_NETNS", "")],
                vec!["CNI error 4", "CNI_NETNS"],
                "hx-cni-e2",
            ),
            (
                Rule::Refuse,
                "CNI_NETNS /etc/passwd",
                vec![
                    ("CNI_CONTAINERID", "hx-cni-e3"),
                    ("CNI_NETNS", "/etc/passwd"),
                ],
                vec!["CNI error", "/etc/passwd"],
                "hx-cni-e3",
            ),
            (
                Rule::Refuse,
                "CNI_NETNS a directory",
                vec![("CNI_CONTAINERID", "hx-cni-e4"), ("CNI_NETNS", &dir)],
                vec!["CNI error", &dir],
                "hx-cni-e4",
            ),
            (
                Rule::Refuse,
                "CNI_NETNS of the baseline pod",
                vec![
                    ("CNI_CONTAINERID", "hx-cni-e5"),
                    ("CNI_NETNS", "BASE_NETNS"),
                ],
                vec!["CNI error", BASE],
                "hx-cni-e5",
            ),
            (
                Rule::Refuse,
                "CNI_IFNAME eth1",
                vec![("CNI_CONTAINERID", "hx-cni-e6"), ("CNI_IFNAME", "eth1")],
                vec!["CNI error 4", "eth1"],
                "hx-cni-e6",
            ),
            (
                Rule::Refuse,
                "CNI_IFNAME ../../x",
                vec![("CNI_CONTAINERID", "hx-cni-e7"), ("CNI_IFNAME", "../../x")],
                vec!["CNI error 4", "../../x"],
                "hx-cni-e7",
            ),
            (
                Rule::Refuse,
                "CNI_ARGS garbage",
                vec![("CNI_CONTAINERID", "hx-cni-e8"), ("CNI_ARGS", "garbage")],
                vec!["CNI error 4", "\"garbage\""],
                "hx-cni-e8",
            ),
            (
                Rule::Refuse,
                "K8S_POD_NAME names the baseline pod via the id",
                vec![("CNI_CONTAINERID", BASE)],
                vec!["CNI error", BASE],
                "-",
            ),
            (
                Rule::Refuse,
                "CNI_NETNS the node's own namespace",
                vec![("CNI_CONTAINERID", "hx-cni-e9"), ("CNI_NETNS", &node_netns)],
                vec!["CNI error", &node_netns],
                "hx-cni-e9",
            ),
            (
                Rule::NoChange,
                "DEL for the baseline pod's name",
                vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", BASE)],
                vec![],
                "-",
            ),
            (
                Rule::NoChange,
                "DEL for the attached pod's name",
                vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", ATTACHED)],
                vec![],
                "-",
            ),
            (
                Rule::Refuse,
                "GC without valid-attachments",
                vec![("CNI_COMMAND", "GC")],
                vec!["CNI error 7", "valid-attachments"],
                "-",
            ),
        ];
        let base_netns = self.daemon.netns_dir().join(BASE).display().to_string();
        for (rule, label, overrides, expect, pod) in env_cases {
            let mut env: BTreeMap<&str, String> = env_for("hx-cni-env").into_iter().collect();
            for (k, v) in overrides {
                let v = if v == "BASE_NETNS" {
                    base_netns.clone()
                } else {
                    v.to_string()
                };
                if v.is_empty() {
                    env.remove(k);
                } else {
                    env.insert(k, v);
                }
            }
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let attempt = self.cni(&env, &ok)?;
            let rm = ["pod", "rm", pod];
            let cleanup: Vec<&[&str]> = if pod == "-" { Vec::new() } else { vec![&rm] };
            self.judge(rule, &format!("CNI: {label}"), &expect, attempt, &cleanup)?;
        }
        let gc = conf(json!({"cni.dev/valid-attachments": []}));
        let attempt = self.cni(&[("CNI_COMMAND", "GC")], &gc)?;
        self.judge(
            Rule::NoChange,
            "CNI: GC with an empty valid-attachments list (hand-made pods stay)",
            &[],
            attempt,
            &[],
        )?;
        Ok(())
    }

    // -------------------------------------------------------------- NRI

    fn nri_plugin(&mut self) -> Result<()> {
        self.begin("NRI frames and sandboxes");
        let socket = self.scratch.path().join("nri.sock");
        let listener = self
            .rt
            .block_on(async { tokio::net::UnixListener::bind(&socket) })?;
        let log = self.scratch.path().join("plugin.log");
        let mut plugin = ChildGuard::spawn(
            Command::new(cri_hook_binary())
                .args([
                    "-v",
                    "nri",
                    "--plugin-name",
                    "hostile",
                    "--plugin-index",
                    "10",
                    "--nri-socket",
                ])
                .arg(&socket)
                .arg("--daemon-socket")
                .arg(self.daemon.socket())
                .env_remove("NRI_PLUGIN_SOCKET")
                .env_remove("NRI_PLUGIN_NAME")
                .env_remove("NRI_PLUGIN_IDX")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log)?),
        )?;
        let mut runtime = RawRuntime { listener };
        let result = self.nri_cases(&mut runtime, &plugin);
        let plugin_log = std::fs::read_to_string(&log).unwrap_or_default();
        if plugin_log.contains("panicked") {
            self.tally.failures.push(format!(
                "[NRI] the plugin's log shows a panic:\n{}",
                cut(&plugin_log, 3000)
            ));
        }
        // SAFETY: plain kill of the plugin we started (unreaped, so the pid is ours).
        unsafe { libc::kill(plugin.pid() as libc::pid_t, libc::SIGTERM) };
        let status = plugin.wait_timeout(Duration::from_secs(10))?;
        if !status.success() {
            self.tally.failures.push(format!(
                "[NRI] the plugin did not exit cleanly on SIGTERM after the hostile frames: {status}; log:\n{}",
                cut(&plugin_log, 3000)
            ));
        }
        result
    }

    fn nri_cases(&mut self, runtime: &mut RawRuntime, plugin: &ChildGuard) -> Result<()> {
        let alive = |what: &str| -> Result<()> {
            ensure!(
                nh_tests::proc_state(plugin.pid()).is_some_and(|s| s != 'Z'),
                "the NRI plugin is gone after {what}"
            );
            Ok(())
        };
        // ---- raw frames. `build` gets the next (odd, rising) stream id of the connection.
        struct Raw {
            label: &'static str,
            build: Box<dyn Fn(u32) -> Vec<u8>>,
            /// An answer on the stream id is due.
            answer: bool,
            /// The connection is unusable afterwards: close it, the plugin must reconnect.
            wedges: bool,
            expect: Vec<&'static str>,
        }
        fn request(method: &str, payload: Vec<u8>) -> Vec<u8> {
            TtrpcRequest {
                service: "nri.pkg.api.v1alpha1.Plugin".into(),
                method: method.into(),
                payload,
                timeout_nano: 2_000_000_000,
                metadata: Vec::new(),
            }
            .encode_to_vec()
        }
        fn frame_req(stream: u32, method: &str, payload: Vec<u8>) -> Vec<u8> {
            containerd_frames(1, &ttrpc_frame(stream, 1, 0, &request(method, payload)))
        }
        let raw = |label, answer, wedges, expect, build: Box<dyn Fn(u32) -> Vec<u8>>| Raw {
            label,
            build,
            answer,
            wedges,
            expect,
        };
        let raws = vec![
            raw(
                "a ttRPC request announcing 4 MiB + 1 (body sent)",
                true,
                false,
                vec!["exceeds the maximum message size"],
                Box::new(|id| {
                    let frame = ttrpc_frame(id, 1, 0, &vec![0u8; (4 << 20) + 1]);
                    frame
                        .chunks(4096)
                        .flat_map(|c| containerd_frames(1, c))
                        .collect()
                }),
            ),
            raw(
                "a ttRPC header announcing 4 GiB, then silence",
                false,
                true,
                vec![],
                Box::new(|id| {
                    containerd_frames(
                        1,
                        &[&u32::MAX.to_be_bytes()[..], &id.to_be_bytes()[..], &[1, 0]].concat(),
                    )
                }),
            ),
            raw(
                "a mux frame announcing 4 GiB, then silence",
                false,
                true,
                vec![],
                Box::new(|_| {
                    [&1u32.to_be_bytes()[..], &u32::MAX.to_be_bytes()[..], b"abc"].concat()
                }),
            ),
            raw(
                "a truncated mux header, then close",
                false,
                true,
                vec![],
                Box::new(|_| vec![0, 0, 0]),
            ),
            raw(
                "a truncated ttRPC header, then close",
                false,
                true,
                vec![],
                Box::new(|_| containerd_frames(1, &[0, 0, 0, 5, 0])),
            ),
            raw(
                "1000 zero-length mux frames",
                false,
                false,
                vec![],
                Box::new(|_| [0u8, 0, 0, 1, 0, 0, 0, 0].repeat(1000)),
            ),
            raw(
                "frames on the reserved and unknown connections",
                false,
                false,
                vec![],
                Box::new(|_| {
                    [
                        containerd_frames(0, b"junk"),
                        containerd_frames(7, b"junk"),
                        containerd_frames(u32::MAX, b"junk"),
                    ]
                    .concat()
                }),
            ),
            raw(
                "a request whose body is not protobuf",
                true,
                false,
                vec!["InvalidArgument"],
                Box::new(|id| containerd_frames(1, &ttrpc_frame(id, 1, 0, &[0xff; 64]))),
            ),
            raw(
                "a request with a non-UTF-8 service name",
                true,
                false,
                vec!["InvalidArgument"],
                Box::new(|id| {
                    let mut body = request("StateChange", Vec::new());
                    body[2] = 0xff; // the first byte of the service name
                    containerd_frames(1, &ttrpc_frame(id, 1, 0, &body))
                }),
            ),
            raw(
                "an unknown method",
                true,
                false,
                vec!["Unimplemented", "Explode"],
                Box::new(|id| frame_req(id, "Explode", Vec::new())),
            ),
            raw(
                "an even (server-side) stream id",
                true,
                false,
                vec!["InvalidArgument", "even"],
                Box::new(|id| frame_req(id, "StateChange", Vec::new())),
            ),
            raw(
                "a stream id below the last one",
                true,
                false,
                vec!["InvalidArgument", "not above"],
                Box::new(|id| frame_req(id, "StateChange", Vec::new())),
            ),
            raw(
                "a Data frame",
                false,
                false,
                vec![],
                Box::new(|id| containerd_frames(1, &ttrpc_frame(id, 3, 0, b"data"))),
            ),
            raw(
                "a frame of unknown type 9",
                false,
                false,
                vec![],
                Box::new(|id| containerd_frames(1, &ttrpc_frame(id, 9, 0, b"??"))),
            ),
            raw(
                "a Response frame sent to the server",
                false,
                false,
                vec![],
                Box::new(|id| containerd_frames(1, &ttrpc_frame(id, 2, 0, b""))),
            ),
            raw(
                "RunPodSandbox with a garbage payload",
                true,
                false,
                vec!["InvalidArgument"],
                Box::new(|id| frame_req(id, "RunPodSandbox", vec![0xff; 32])),
            ),
            raw(
                "a valid request split into 1-byte mux frames",
                true,
                false,
                vec![],
                Box::new(|id| {
                    ttrpc_frame(id, 1, 0, &request("StateChange", Vec::new()))
                        .iter()
                        .flat_map(|b| containerd_frames(1, &[*b]))
                        .collect()
                }),
            ),
        ];
        let mut session = self.rt.block_on(runtime.session())?;
        for raw in raws {
            let label = format!("NRI raw: {}", raw.label);
            let mut stream = session.next_stream();
            if raw.label.contains("even") {
                stream += 1;
            }
            if raw.label.contains("below the last") {
                stream = 1;
            }
            let bytes = (raw.build)(stream);
            let size = bytes.len();
            let outcome = self.rt.block_on(async {
                session.send(&bytes).await?;
                if raw.answer {
                    Ok::<_, anyhow::Error>(Some(
                        session.response(stream, Duration::from_secs(10)).await?,
                    ))
                } else {
                    Ok(None)
                }
            });
            let attempt = match outcome {
                Err(e) => Attempt {
                    refused: false,
                    crashed: Some(format!("no answer: {e:#}")),
                    message: String::new(),
                    how: label.clone(),
                },
                Ok(answer) => {
                    let mut message = match &answer {
                        Some((0, _)) => "answered OK".to_string(),
                        Some((code, m)) => format!("{}: {m}", code_name(*code)),
                        None => "ignored".to_string(),
                    };
                    let mut crashed = None;
                    if raw.wedges {
                        // The connection cannot be used any more: the runtime would close it.
                        drop(session);
                        session = self.rt.block_on(runtime.session())?;
                        message.push_str("; the plugin reconnected and registered again");
                    }
                    match self.rt.block_on(session.probe()) {
                        Ok(()) => message.push_str("; it still answers"),
                        Err(e) => crashed = Some(format!("no longer answers: {e:#}")),
                    }
                    Attempt {
                        refused: answer.as_ref().is_none_or(|(code, _)| *code != 0),
                        crashed,
                        message,
                        how: format!(
                            "{} ({size} bytes on the NRI socket, stream {stream})",
                            raw.label
                        ),
                    }
                }
            };
            alive(raw.label)?;
            let rule = if raw.answer && raw.expect.is_empty() {
                Rule::NoChange
            } else {
                Rule::Refuse
            };
            self.judge(rule, &label, &raw.expect, attempt, &[])?;
        }
        // ---- sandboxes through the plugin to the real daemon
        let target = self.target_netns.path();
        let base_netns = self.daemon.netns_dir().join(BASE);
        let dir = self.scratch.path().to_path_buf();
        let id = |n: u32| {
            format!(
                "{n:08x}{}",
                "5f60718293a4b5c6d7e8f90123456789abcdef0123456789abcd"
            )
        };
        let sb = |n: u32, netns: Option<&Path>, annotations: &[(&str, &str)]| {
            nh_tests::nri_peer::pod_sandbox(
                "hx",
                &format!("hx-nri-{n}"),
                &id(n),
                netns,
                annotations,
            )
        };
        let mut no_id = sb(1, Some(&target), &[]);
        no_id.id.clear();
        let mut relative = sb(2, Some(&target), &[]);
        if let Some(linux) = relative.linux.as_mut() {
            linux.namespaces.last_mut().expect("network").path = "netns/x".into();
        }
        let many: Vec<(String, String)> = (0..50_000)
            .map(|i| (format!("netns-holder.io/x{i}"), "1".into()))
            .collect();
        let many_refs: Vec<(&str, &str)> =
            many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let derived = |n: u32| format!("hx_hx-nri-{n}_{}", &id(n)[..12]);
        // (rule, method, label, sandbox, expected words, daemon pod to clean up)
        type SandboxCase = (
            Rule,
            &'static str,
            &'static str,
            nri::PodSandbox,
            Vec<String>,
            String,
        );
        let cases: Vec<SandboxCase> = vec![
            (
                Rule::Refuse,
                "RunPodSandbox",
                "netns /etc/passwd",
                sb(3, Some(Path::new("/etc/passwd")), &[]),
                vec!["/etc/passwd".into()],
                derived(3),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "netns a directory",
                sb(4, Some(&dir), &[]),
                vec![dir.display().to_string()],
                derived(4),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "netns of the baseline pod",
                sb(5, Some(&base_netns), &[]),
                vec![BASE.into()],
                derived(5),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "relative netns",
                relative,
                vec!["\"netns/x\"".into(), "not absolute".into()],
                derived(2),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "no sandbox id",
                no_id,
                vec!["has no id".into()],
                "-".into(),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "unknown option",
                sb(6, Some(&target), &[("netns-holder.io/nmae", "x")]),
                vec!["\"netns-holder.io/nmae\"".into(), "unknown option".into()],
                derived(6),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "skip=maybe",
                sb(7, Some(&target), &[("netns-holder.io/skip", "maybe")]),
                vec!["\"maybe\"".into()],
                derived(7),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "name=../x",
                sb(8, Some(&target), &[("netns-holder.io/name", "../x")]),
                vec!["\"../x\"".into()],
                "-".into(),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "name of the baseline pod",
                sb(9, Some(&target), &[("netns-holder.io/name", BASE)]),
                vec![BASE.into()],
                "-".into(),
            ),
            (
                Rule::Refuse,
                "RunPodSandbox",
                "50000 unknown options",
                sb(10, Some(&target), &many_refs),
                vec!["50000 malformed".into(), "and 49000 more".into()],
                derived(10),
            ),
            (
                Rule::NoChange,
                "RemovePodSandbox",
                "naming the baseline pod",
                sb(11, Some(&base_netns), &[("netns-holder.io/name", BASE)]),
                vec![],
                "-".into(),
            ),
            (
                Rule::NoChange,
                "StopPodSandbox",
                "naming the baseline pod",
                sb(12, Some(&base_netns), &[("netns-holder.io/name", BASE)]),
                vec![],
                "-".into(),
            ),
        ];
        for (rule, method, label, pod, expect, cleanup) in cases {
            let payload = match method {
                "RunPodSandbox" => nri::RunPodSandboxRequest { pod: Some(pod) }.encode_to_vec(),
                "RemovePodSandbox" => {
                    nri::RemovePodSandboxRequest { pod: Some(pod) }.encode_to_vec()
                }
                _ => nri::StopPodSandboxRequest { pod: Some(pod) }.encode_to_vec(),
            };
            let stream = session.next_stream();
            let answer = self.rt.block_on(async {
                session.send(&frame_req(stream, method, payload)).await?;
                session.response(stream, Duration::from_secs(10)).await
            });
            let attempt = match answer {
                Ok((code, message)) => Attempt {
                    refused: code != 0,
                    crashed: None,
                    message: format!("{}: {message}", code_name(code)),
                    how: format!("{method} {label}"),
                },
                Err(e) => Attempt {
                    refused: false,
                    crashed: Some(format!("no answer: {e:#}")),
                    message: String::new(),
                    how: format!("{method} {label}"),
                },
            };
            alive(label)?;
            let expect: Vec<&str> = expect.iter().map(String::as_str).collect();
            let rm = ["pod", "rm", cleanup.as_str()];
            let cleanup: Vec<&[&str]> = if cleanup == "-" {
                Vec::new()
            } else {
                vec![&rm]
            };
            self.judge(
                rule,
                &format!("NRI {method}: {label}"),
                &expect,
                attempt,
                &cleanup,
            )?;
        }
        // A Synchronize listing no pod at all: only pods the plugin made may be collected.
        let stream = session.next_stream();
        let answer = self.rt.block_on(async {
            let payload = nri::SynchronizeRequest::default().encode_to_vec();
            session
                .send(&frame_req(stream, "Synchronize", payload))
                .await?;
            session.response(stream, Duration::from_secs(10)).await
        });
        let attempt = match answer {
            Ok((code, message)) => Attempt {
                refused: code != 0,
                crashed: None,
                message: format!("{}: {message}", code_name(code)),
                how: "Synchronize {}".into(),
            },
            Err(e) => Attempt {
                refused: false,
                crashed: Some(format!("no answer: {e:#}")),
                message: String::new(),
                how: "Synchronize {}".into(),
            },
        };
        // Reconciliation may finish in the background.
        std::thread::sleep(Duration::from_millis(500));
        self.judge(
            Rule::NoChange,
            "NRI Synchronize with no pods (hand-made pods stay)",
            &[],
            attempt,
            &[],
        )?;
        Ok(())
    }

    // -------------------------------------------------------------- summary

    fn finish(self) -> Tally {
        self.tally
    }
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "Ok",
        1 => "Cancelled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        _ => "code?",
    }
}

// ------------------------------------------------------------------ a raw NRI runtime

/// The runtime end of the NRI socket at the byte level: accepts the plugin's connection,
/// answers its RegisterPlugin, and lets the test write anything.
struct RawRuntime {
    listener: tokio::net::UnixListener,
}

impl RawRuntime {
    /// The next plugin connection, registered.
    async fn session(&mut self) -> Result<RawSession> {
        let (stream, _) = tokio::time::timeout(Duration::from_secs(15), self.listener.accept())
            .await
            .context("the plugin did not connect within 15 s")??;
        let mut session = RawSession {
            stream,
            buf: Vec::new(),
            conns: BTreeMap::new(),
            frames: VecDeque::new(),
            next_stream: 1,
        };
        // RegisterPlugin arrives on connection 2; answer it OK (no status, as containerd).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (conn, stream_id, kind, body) = session.next_frame(deadline).await?;
            if conn == 2 && kind == 1 {
                let request = TtrpcRequest::decode(body.as_slice())?;
                ensure!(
                    request.method == "RegisterPlugin",
                    "first call {}",
                    request.method
                );
                let reply = TtrpcResponse {
                    status: None,
                    payload: Vec::new(),
                }
                .encode_to_vec();
                session
                    .send(&containerd_frames(2, &ttrpc_frame(stream_id, 2, 0, &reply)))
                    .await?;
                return Ok(session);
            }
        }
    }
}

/// One plugin connection.
struct RawSession {
    stream: tokio::net::UnixStream,
    buf: Vec<u8>,
    conns: BTreeMap<u32, Vec<u8>>,
    frames: VecDeque<(u32, u32, u8, Vec<u8>)>,
    next_stream: u32,
}

impl RawSession {
    /// The next client stream id: odd and rising, as the server requires.
    fn next_stream(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next ttRPC frame from the plugin: `(conn, stream, type, body)`.
    async fn next_frame(&mut self, deadline: Instant) -> Result<(u32, u32, u8, Vec<u8>)> {
        loop {
            if let Some(frame) = self.frames.pop_front() {
                return Ok(frame);
            }
            let mut chunk = [0u8; 65536];
            let remaining = deadline.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(remaining, self.stream.read(&mut chunk))
                .await
                .context("no frame in time")??;
            ensure!(n > 0, "the plugin closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            // Mux frames into per-connection byte streams, then ttRPC frames.
            while self.buf.len() >= 8 {
                let conn = u32::from_be_bytes(self.buf[0..4].try_into()?);
                let len = u32::from_be_bytes(self.buf[4..8].try_into()?) as usize;
                if self.buf.len() < 8 + len {
                    break;
                }
                let payload: Vec<u8> = self.buf.drain(..8 + len).skip(8).collect();
                let stream = self.conns.entry(conn).or_default();
                stream.extend(payload);
                while stream.len() >= 10 {
                    let blen = u32::from_be_bytes(stream[0..4].try_into()?) as usize;
                    if stream.len() < 10 + blen {
                        break;
                    }
                    let sid = u32::from_be_bytes(stream[4..8].try_into()?);
                    let kind = stream[8];
                    let body: Vec<u8> = stream.drain(..10 + blen).skip(10).collect();
                    self.frames.push_back((conn, sid, kind, body));
                }
            }
        }
    }

    /// The response on connection 1 for `stream`: `(status code, message)`.
    async fn response(&mut self, stream: u32, within: Duration) -> Result<(i32, String)> {
        let deadline = Instant::now() + within;
        loop {
            let (conn, sid, kind, body) = self.next_frame(deadline).await?;
            if conn == 1 && kind == 2 && sid == stream {
                let response = TtrpcResponse::decode(body.as_slice())?;
                return Ok(response
                    .status
                    .map(|s| (s.code, s.message))
                    .unwrap_or((0, String::new())));
            }
        }
    }

    /// A harmless request (StateChange of no event) that must be answered OK.
    async fn probe(&mut self) -> Result<()> {
        let stream = self.next_stream();
        let body = TtrpcRequest {
            service: "nri.pkg.api.v1alpha1.Plugin".into(),
            method: "StateChange".into(),
            payload: Vec::new(),
            timeout_nano: 2_000_000_000,
            metadata: Vec::new(),
        }
        .encode_to_vec();
        self.send(&containerd_frames(1, &ttrpc_frame(stream, 1, 0, &body)))
            .await?;
        let (code, message) = self.response(stream, Duration::from_secs(5)).await?;
        ensure!(code == 0, "probe answered {}: {message}", code_name(code));
        Ok(())
    }
}

// ------------------------------------------------------------------ configuration

/// One daemon configuration in a fresh node: refused at start (naming the key) or not.
fn config_case(
    tally: &mut Tally,
    rule: Rule,
    label: &str,
    lines: &str,
    expect: &[&str],
    dummy: Option<&str>,
) -> Result<()> {
    tally.ran += 1;
    if let Some(last) = tally.sections.last_mut() {
        last.1 += 1;
    }
    let node = Node::new()?;
    if let Some(address) = dummy {
        node.run(&[
            "ip", "link", "add", "hxv0", "type", "veth", "peer", "name", "hxv1",
        ])?;
        node.run(&["ip", "addr", "add", address, "dev", "hxv0"])?;
        node.run(&["ip", "link", "set", "hxv0", "up"])?;
    }
    let links_before = node.links()?;
    let scratch = ScratchDir::new("hxc")?;
    let dir = scratch.path();
    let mut keys: BTreeMap<&str, String> = BTreeMap::from([
        (
            "socket",
            format!("{:?}", dir.join("api.sock").display().to_string()),
        ),
        (
            "state_dir",
            format!("{:?}", dir.join("state").display().to_string()),
        ),
        (
            "netns_dir",
            format!("{:?}", dir.join("netns").display().to_string()),
        ),
        (
            "pause_binary",
            format!("{:?}", nh_tests::pause_binary().display().to_string()),
        ),
        ("pod_cidr_v4", "\"10.244.0.0/24\"".to_string()),
    ]);
    // A line of the case replaces the default of its key.
    for line in lines.lines() {
        if let Some((key, _)) = line.split_once('=') {
            keys.remove(key.trim());
        }
    }
    let mut text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    text.push_str(lines);
    let config = dir.join("config.toml");
    std::fs::write(&config, text.as_bytes())?;
    let log_path = dir.join("daemon.log");
    let mut daemon = ChildGuard::spawn(
        Command::new("nsenter")
            .arg(format!("--net={}", node.netns_path().display()))
            .arg("--")
            .arg(netns_holder_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path)?),
    )?;
    let socket = dir.join("api.sock");
    let mut exit = None;
    let serving = wait_until(Duration::from_secs(10), || {
        if let Some(child) = daemon.0.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                exit = Some(status);
                return true;
            }
        }
        socket.exists()
            && Command::new(netns_holder_binary())
                .arg("--socket")
                .arg(&socket)
                .arg("status")
                .output()
                .is_ok_and(|o| o.status.success())
    });
    if exit.is_some() {
        daemon.0 = None;
    }
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let how = format!(
        "netns-holder serve --config <file with: {}>",
        cut(&lines.replace('\n', "\\n"), 200)
    );
    let mut failures = Vec::new();
    match exit {
        Some(status) => {
            let attempt = Attempt::process(
                how.clone(),
                &Output {
                    status,
                    stdout: Vec::new(),
                    stderr: log.clone().into_bytes(),
                },
            );
            if let Some(crash) = attempt.crashed {
                failures.push(format!("crashed: {crash}"));
            }
            let missing: Vec<&&str> = expect.iter().filter(|w| !log.contains(**w)).collect();
            if !missing.is_empty() {
                failures.push(format!(
                    "refused, but the message does not name {missing:?}"
                ));
            } else {
                tally.refused += 1;
            }
            // Nothing made: no bridge, no state file, no mount.
            let links_after = node.links()?;
            if links_after != links_before {
                failures.push(format!(
                    "STATE CHANGED: links {links_before:?} -> {links_after:?}"
                ));
            }
            let state_files = [
                netns_holder_core::state::STATE_FILE_NAME,
                netns_holder_core::state::JOURNAL_FILE_NAME,
            ];
            if state_files
                .iter()
                .any(|f| dir.join("state").join(f).exists())
            {
                failures.push("STATE CHANGED: a state file was written".into());
            }
            let mounts = mounts_under(dir);
            if !mounts.is_empty() {
                failures.push(format!("STATE CHANGED: mounts {mounts:?}"));
            }
        }
        None => {
            let served = serving;
            // What the configuration leads to: one pod, then the node's addresses.
            let cli = |args: &[&str]| {
                Command::new(netns_holder_binary())
                    .arg("--socket")
                    .arg(&socket)
                    .args(args)
                    .output()
            };
            let probe = match cli(&["pod", "create", "hx-probe"]) {
                Ok(o) if o.status.success() => {
                    let pod: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
                    format!("a pod was created with ips {}", pod["ips"])
                }
                Ok(o) => format!(
                    "creating a pod failed: {}",
                    cut(String::from_utf8_lossy(&o.stderr).trim(), 200)
                ),
                Err(e) => format!("the CLI did not run: {e}"),
            };
            let addresses = node
                .run(&["ip", "-br", "addr"])
                .map(|o| String::from_utf8_lossy(&o.stdout).replace('\n', "; "))
                .unwrap_or_default();
            let _ = cli(&["pod", "rm", "hx-probe"]);
            // SAFETY: plain kill of the daemon we started (unreaped, so the pid is ours).
            unsafe { libc::kill(daemon.pid() as libc::pid_t, libc::SIGTERM) };
            let _ = daemon.wait_timeout(Duration::from_secs(10));
            for mount in mounts_under(dir).iter().rev() {
                if let Ok(c) = std::ffi::CString::new(mount.as_os_str().as_bytes()) {
                    // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
            let what = if served {
                "started and served"
            } else {
                "neither exited nor served within 10 s"
            };
            match rule {
                Rule::NoChange => tally.unchanged += 1,
                Rule::Refuse => failures.push(format!(
                    "ACCEPTED: the daemon {what}; {probe}; node addresses then: {addresses}"
                )),
            }
        }
    }
    for why in failures {
        let text = format!(
            "[daemon config] {label}: {why}\n    how: {how}\n    output: {}",
            cut(&log, 700)
        );
        eprintln!("FAIL {text}");
        tally.failures.push(text);
    }
    Ok(())
}

fn configs(tally: &mut Tally) -> Result<()> {
    tally.sections.push(("daemon config".into(), 0));
    let huge = format!("pod_cidr_v4 = \"{}\"\n", "A".repeat(1 << 20));
    // (rule, label, TOML lines, expected words, dummy address in the node)
    type ConfigCase = (
        Rule,
        &'static str,
        String,
        Vec<&'static str>,
        Option<&'static str>,
    );
    let cases: Vec<ConfigCase> = vec![
        (
            Rule::Refuse,
            "pod_cidr_v4 garbage",
            "pod_cidr_v4 = \"garbage\"\n".into(),
            vec!["pod_cidr_v4", "\"garbage\""],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 without prefix",
            "pod_cidr_v4 = \"10.88.0.0\"\n".into(),
            vec!["pod_cidr_v4", "not a CIDR"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 /31 (too small)",
            "pod_cidr_v4 = \"10.88.0.0/31\"\n".into(),
            vec!["pod_cidr_v4", "too small"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 /32 (too small)",
            "pod_cidr_v4 = \"10.88.0.1/32\"\n".into(),
            vec!["pod_cidr_v4", "too small"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 /33",
            "pod_cidr_v4 = \"10.88.0.0/33\"\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 host bits set",
            "pod_cidr_v4 = \"10.88.0.5/16\"\n".into(),
            vec!["pod_cidr_v4", "host bits", "10.88.0.0/16"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 an IPv6 network",
            "pod_cidr_v4 = \"fd00::/64\"\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 empty",
            "pod_cidr_v4 = \"\"\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 a number",
            "pod_cidr_v4 = 42\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 1 MiB of garbage",
            huge,
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v6 /127 (too small)",
            "pod_cidr_v6 = \"fd00::/127\"\n".into(),
            vec!["pod_cidr_v6", "too small"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v6 host bits set",
            "pod_cidr_v6 = \"fd00::1/64\"\n".into(),
            vec!["pod_cidr_v6", "host bits"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v6 an IPv4 network",
            "pod_cidr_v6 = \"10.0.0.0/8\"\n".into(),
            vec!["pod_cidr_v6"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v6 garbage",
            "pod_cidr_v6 = \"fd00::/xx\"\n".into(),
            vec!["pod_cidr_v6"],
            None,
        ),
        (
            Rule::Refuse,
            "mtu 0",
            "mtu = 0\n".into(),
            vec!["mtu", "between 68 and 65535"],
            None,
        ),
        (
            Rule::Refuse,
            "mtu 65536",
            "mtu = 65536\n".into(),
            vec!["mtu"],
            None,
        ),
        (
            Rule::Refuse,
            "mtu a string",
            "mtu = \"big\"\n".into(),
            vec!["mtu"],
            None,
        ),
        (
            Rule::Refuse,
            "bridge with shell/nft syntax",
            "bridge = \"nh0;flush\"\n".into(),
            vec!["bridge", "nh0;flush"],
            None,
        ),
        (
            Rule::Refuse,
            "bridge with a space",
            "bridge = \"nh 0\"\n".into(),
            vec!["bridge"],
            None,
        ),
        (
            Rule::Refuse,
            "bridge too long",
            "bridge = \"abcdefghijklmnop\"\n".into(),
            vec!["bridge", "longer than 15"],
            None,
        ),
        (
            Rule::Refuse,
            "bridge empty",
            "bridge = \"\"\n".into(),
            vec!["bridge", "empty"],
            None,
        ),
        (
            Rule::Refuse,
            "socket relative",
            "socket = \"api.sock\"\n".into(),
            vec!["socket", "absolute"],
            None,
        ),
        (
            Rule::Refuse,
            "netns_dir relative",
            "netns_dir = \"netns\"\n".into(),
            vec!["netns_dir", "absolute"],
            None,
        ),
        (
            Rule::Refuse,
            "state_dir empty",
            "state_dir = \"\"\n".into(),
            vec!["state_dir"],
            None,
        ),
        (
            Rule::Refuse,
            "unknown key",
            "brige = \"nh0\"\n".into(),
            vec!["brige"],
            None,
        ),
        (
            Rule::Refuse,
            "not TOML",
            "[[[\n".into(),
            vec!["cannot parse config"],
            None,
        ),
        (
            Rule::Refuse,
            "a NUL byte",
            "bridge = \"nh\0\"\n".into(),
            vec!["cannot parse config"],
            None,
        ),
        (
            Rule::Refuse,
            "peer overlapping the pod CIDR",
            "peers = [{ pod_cidr = \"10.244.0.0/16\", via = \"192.168.50.2\" }]\n".into(),
            vec!["peers", "overlaps"],
            None,
        ),
        (
            Rule::Refuse,
            "peer via garbage",
            "peers = [{ pod_cidr = \"10.99.0.0/24\", via = \"nodeb\" }]\n".into(),
            vec!["peers", "nodeb"],
            None,
        ),
        (
            Rule::Refuse,
            "peer via loopback",
            "peers = [{ pod_cidr = \"10.99.0.0/24\", via = \"127.0.0.1\" }]\n".into(),
            vec!["peers", "loopback"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 overlapping a network of the node",
            "pod_cidr_v4 = \"10.77.1.0/24\"\n".into(),
            vec![
                "pod_cidr_v4 10.77.1.0/24 overlaps",
                "the address 10.77.0.1/16 on \"hxv0\"",
            ],
            Some("10.77.0.1/16"),
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 equal to a network of the node",
            "pod_cidr_v4 = \"10.77.0.0/16\"\n".into(),
            vec![
                "pod_cidr_v4 10.77.0.0/16 overlaps",
                "the address 10.77.0.1/16 on \"hxv0\"",
            ],
            Some("10.77.0.1/16"),
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 containing an address of the node",
            "pod_cidr_v4 = \"10.0.0.0/8\"\n".into(),
            vec!["pod_cidr_v4 10.0.0.0/8 overlaps", "hxv0"],
            Some("10.77.0.1/16"),
        ),
        (
            Rule::Refuse,
            "pod_cidr_v6 overlapping a network of the node",
            "pod_cidr_v6 = \"fd77::/64\"\n".into(),
            vec!["pod_cidr_v6 fd77::/64 overlaps", "hxv0"],
            Some("fd77::1/48"),
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 0.0.0.0/0 (everything)",
            "pod_cidr_v4 = \"0.0.0.0/0\"\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 loopback 127.0.0.0/8",
            "pod_cidr_v4 = \"127.0.0.0/8\"\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 multicast 224.0.0.0/24",
            "pod_cidr_v4 = \"224.0.0.0/24\"\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v4 link-local 169.254.0.0/16",
            "pod_cidr_v4 = \"169.254.0.0/16\"\n".into(),
            vec!["pod_cidr_v4"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v6 link-local fe80::/64",
            "pod_cidr_v6 = \"fe80::/64\"\n".into(),
            vec!["pod_cidr_v6"],
            None,
        ),
        (
            Rule::Refuse,
            "pod_cidr_v6 multicast ff00::/64",
            "pod_cidr_v6 = \"ff00::/64\"\n".into(),
            vec!["pod_cidr_v6"],
            None,
        ),
        (
            Rule::Refuse,
            "bridge = lo (an existing non-bridge link)",
            "bridge = \"lo\"\n".into(),
            vec!["bridge", "lo"],
            None,
        ),
    ];
    for (rule, label, lines, expect, dummy) in cases {
        config_case(tally, rule, label, &lines, &expect, dummy)?;
    }
    Ok(())
}

// ------------------------------------------------------------------ the test

#[test]
fn hostile_inputs_are_refused_cleanly() -> Result<()> {
    if !require_root("hostile_inputs_are_refused_cleanly") {
        return Ok(());
    }
    let started = Instant::now();
    let mut suite = Suite::start()?;
    let run = (|| -> Result<()> {
        suite.names()?;
        suite.netns_paths()?;
        suite.ports()?;
        suite.annotations_and_peers()?;
        suite.oci_hook()?;
        suite.cni_entry()?;
        suite.nri_plugin()?;
        Ok(())
    })();
    let daemon_log = suite.daemon.log();
    let mut tally = suite.finish();
    run?;
    if daemon_log.contains("panicked") {
        tally.failures.push(format!(
            "the daemon's log shows a panic:\n{}",
            cut(&daemon_log, 3000)
        ));
    }
    configs(&mut tally)?;

    eprintln!();
    for (section, n) in &tally.sections {
        eprintln!("  {section}: {n} cases");
    }
    let summary = format!(
        "hostile inputs: {} cases: {} refused cleanly, {} accepted without change, {} failures",
        tally.ran,
        tally.refused,
        tally.unchanged,
        tally.failures.len()
    );
    println!("{summary} ({:.0} s)", started.elapsed().as_secs_f64());
    eprintln!("{summary}");
    ensure!(
        tally.failures.is_empty(),
        "{} hostile input(s) not refused cleanly:\n{}",
        tally.failures.len(),
        tally.failures.join("\n")
    );
    Ok(())
}
