//! The fuzz targets shared by `fuzz_parsers.rs` (proptest) and `fuzz_corpus.rs` (replay of
//! `tests/fuzz-corpus/` at the workspace root): one check function per parser that reads
//! outside input, the case-count and time bounds, the corpus loader and a byte mutator.
//!
//! Every check feeds one input to the parser and asserts what must hold whatever the input:
//! nothing panics, an accepted value satisfies the parser's rules (and round-trips where a
//! round trip exists), and a refusal names the offending input. It returns the verdict, so
//! the corpus can also pin `ok-*` files as accepted and `bad-*` files as refused.
//!
//! These targets live in `cri-hook` because it sees both crates' parsers and has proptest.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser as _;
use cri_hook::cni::{self, Env, NetConf, wire};
use cri_hook::oci_hook::{self, Stage};
use cri_hook::pod::{self, ANNOTATION_PREFIX, KNOWN_OPTIONS, PodTarget};
use netns_holder::cli::{self, Cli};
use netns_holder_client::api;
use netns_holder_core::config::{Config, ConfigError};
use netns_holder_core::names::{IfName, MAX_POD_NAME_LEN, PodId, PodName};
use netns_holder_core::ports::{self, PortSpecError};
use nri::pb;
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

/// What a parser made of one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The input was accepted.
    Accepted,
    /// The input was refused with this message.
    Refused(String),
}

/// Result of one check: the verdict, or the violated property.
pub type Checked = Result<Verdict, TestCaseError>;

// ------------------------------------------------------------------ bounds

/// Cases per target: `FUZZ_CASES`, else `PROPTEST_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    ["FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|var| std::env::var(var).ok()?.trim().parse().ok())
        .unwrap_or(default)
}

/// Time bound per target: `FUZZ_SECONDS`, if set.
pub fn time_bound() -> Option<Duration> {
    std::env::var("FUZZ_SECONDS")
        .ok()?
        .trim()
        .parse()
        .ok()
        .map(Duration::from_secs)
}

/// Cases per runner; a time bound is checked between rounds.
const ROUND: u32 = 256;

/// Runs `test` on `cases(default)` values of `strategy` (fresh random seeds per round of
/// [`ROUND`]), stopping early once `FUZZ_SECONDS` have passed. A failure panics with the
/// shrunk input; add it to the corpus once fixed.
pub fn fuzz<S>(name: &str, default: u32, strategy: S, test: impl Fn(S::Value) -> Checked)
where
    S: Strategy,
    S::Value: Debug,
{
    let total = cases(default);
    let started = Instant::now();
    let deadline = time_bound().map(|bound| started + bound);
    let mut done = 0;
    while done < total {
        let round = (total - done).min(ROUND);
        let mut runner = TestRunner::new(RunnerConfig {
            cases: round,
            failure_persistence: None,
            ..RunnerConfig::default()
        });
        if let Err(e) = runner.run(&strategy, |value| test(value).map(|_| ())) {
            panic!("fuzz target {name} failed after {done} cases: {e}");
        }
        done += round;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    eprintln!(
        "fuzz {name}: {done} cases in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

// ------------------------------------------------------------------ corpus

/// `tests/fuzz-corpus/` at the workspace root.
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cri-hook has a parent")
        .join("tests")
        .join("fuzz-corpus")
}

/// The files of one target's corpus, `(file name, bytes)`, sorted by name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_root().join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            (
                path.file_name()
                    .expect("a file name")
                    .to_string_lossy()
                    .into_owned(),
                std::fs::read(&path).expect("readable corpus file"),
            )
        })
        .collect();
    files.sort();
    files
}

/// Every corpus file of `target`, as seeds for [`mutated`].
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    corpus(target).into_iter().map(|(_, bytes)| bytes).collect()
}

/// Byte strings that often matter to parsers, spliced in by [`mutated`].
const TOKENS: &[&[u8]] = &[
    b"\0",
    b"..",
    b"/",
    b"../",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"\x1b[31m",
    "\u{202e}".as_bytes(),
    "\u{200b}".as_bytes(),
    "\u{a0}".as_bytes(),
    b"\xff\xfe",
    b"\xc3",
    b"\"",
    b"\\",
    b"'",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b";",
    b"=",
    b",",
    b"-",
    b"#",
    b"0",
    b"-1",
    b"65535",
    b"65536",
    b"4294967295",
    b"4294967296",
    b"18446744073709551616",
    b"1e999",
    b"null",
    b"true",
    b"[[[[[[[[[[[[[[[[",
    b"::",
    b"::ffff:",
    b"/0",
    b"/32",
    b"/128",
    b"netns-holder.io/",
];

/// One edit of a seed.
#[derive(Debug, Clone)]
pub enum Edit {
    /// Flip one bit at a position.
    Flip(usize, u8),
    /// Overwrite one byte.
    Set(usize, u8),
    /// Insert one byte.
    Insert(usize, u8),
    /// Remove up to `n` bytes.
    Remove(usize, usize),
    /// Insert a [`TOKENS`] entry.
    Token(usize, usize),
    /// Repeat a slice `n` times in place.
    Repeat(usize, usize, usize),
    /// Cut everything after a position.
    Truncate(usize),
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let at = |p: usize, extra: usize| p % (data.len() + extra).max(1);
        match *edit {
            Edit::Flip(p, bit) if !data.is_empty() => {
                let i = at(p, 0);
                data[i] ^= 1 << (bit % 8);
            }
            Edit::Set(p, b) if !data.is_empty() => {
                let i = at(p, 0);
                data[i] = b;
            }
            Edit::Insert(p, b) => {
                let i = at(p, 1);
                data.insert(i, b);
            }
            Edit::Remove(p, n) if !data.is_empty() => {
                let i = at(p, 0);
                let end = (i + n % 16 + 1).min(data.len());
                data.drain(i..end);
            }
            Edit::Token(p, t) => {
                let i = at(p, 1);
                let token = TOKENS[t % TOKENS.len()];
                data.splice(i..i, token.iter().copied());
            }
            Edit::Repeat(p, n, times) if !data.is_empty() => {
                let i = at(p, 0);
                let end = (i + n % 32 + 1).min(data.len());
                let piece = data[i..end].to_vec();
                for _ in 0..times % 64 {
                    data.splice(end..end, piece.iter().copied());
                }
            }
            Edit::Truncate(p) => {
                let i = at(p, 1);
                data.truncate(i);
            }
            _ => {}
        }
    }
    data
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Flip(p, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        1 => (any::<usize>(), any::<usize>()).prop_map(|(p, n)| Edit::Remove(p, n)),
        3 => (any::<usize>(), any::<usize>()).prop_map(|(p, t)| Edit::Token(p, t)),
        1 => (any::<usize>(), any::<usize>(), any::<usize>())
            .prop_map(|(p, n, t)| Edit::Repeat(p, n, t)),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ]
}

/// A seed picked from `seeds` with 0 to 8 random edits.
pub fn mutated(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    assert!(!seeds.is_empty(), "no seeds");
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit(), 0..8),
    )
        .prop_map(|(seed, edits)| apply(seed, &edits))
        .boxed()
}

/// Raw bytes: mostly mutated seeds, some pure noise.
pub fn bytes_like(target: &str) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        4 => mutated(seeds(target)),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ]
    .boxed()
}

/// Text: mutated seeds made UTF-8 (lossily), arbitrary strings, and strings of the
/// characters parsers care about.
pub fn text_like(target: &str) -> BoxedStrategy<String> {
    prop_oneof![
        4 => mutated(seeds(target)).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        1 => any::<String>(),
        2 => "[a-z0-9.:/\\[\\]_=;, \\-\\x00-\\x1f\\x7f\u{a0}\u{200b}\u{202e}]{0,80}",
    ]
    .boxed()
}

// ------------------------------------------------------------------ helpers

fn refused(message: impl ToString) -> Checked {
    Ok(Verdict::Refused(message.to_string()))
}

/// How much of an over-long input an error shows (netns_holder_core::names cuts pod names there,
/// so that a huge input is not echoed back whole).
const SHOWN_PREFIX_CHARS: usize = 64;

/// Checks that `message` names `what`, quoted as the errors print it (`Debug` quoting, or
/// `netns_holder_core::names::quoted`, which also escapes invisible characters such as U+3164),
/// or, for an input longer than the errors show, its first [`SHOWN_PREFIX_CHARS`] characters.
fn names(message: &str, what: &str) -> Result<(), TestCaseError> {
    let forms = |text: &str| [format!("{text:?}"), netns_holder_core::names::quoted(text)];
    let quoted = forms(what);
    let named = quoted.iter().any(|q| message.contains(q.as_str()));
    if what.chars().count() > SHOWN_PREFIX_CHARS {
        let prefix: String = what.chars().take(SHOWN_PREFIX_CHARS).collect();
        let shown = forms(&prefix).map(|q| q.trim_end_matches('"').to_string());
        prop_assert!(
            named || shown.iter().any(|s| message.contains(s.as_str())),
            "message {message:?} names neither {quoted:?} nor its start {shown:?}"
        );
        return Ok(());
    }
    prop_assert!(named, "message {message:?} does not name {quoted:?}");
    Ok(())
}

fn utf8(bytes: &[u8]) -> Result<&str, Checked> {
    std::str::from_utf8(bytes).map_err(|e| refused(format!("not UTF-8: {e}")))
}

// ------------------------------------------------------------------ pod names and ids

/// `PodName::new` (the API, the CLI and every adapter): an accepted name obeys every rule
/// and has a usable id and interface names; a refusal names the name.
pub fn check_pod_name(bytes: &[u8]) -> Checked {
    let text = match utf8(bytes) {
        Ok(t) => t,
        Err(verdict) => return verdict,
    };
    let server = api::request_name(text);
    match PodName::new(text) {
        Ok(name) => {
            prop_assert!(server.is_ok(), "the API refuses what PodName accepts");
            prop_assert!(!text.is_empty() && text.len() <= MAX_POD_NAME_LEN);
            prop_assert!(!text.starts_with('.') && !text.contains(".."));
            prop_assert!(
                !text
                    .chars()
                    .any(|c| c == '/' || c.is_control() || c.is_whitespace())
            );
            let id = name.id();
            prop_assert_eq!(id.as_str().len(), PodId::LEN);
            prop_assert_eq!(PodId::parse(id.as_str()), Ok(id));
            prop_assert!(IfName::new(id.host_veth_name().as_str()).is_ok());
            prop_assert!(IfName::new(id.temp_peer_name().as_str()).is_ok());
            let json = serde_json::to_string(&name).map_err(fail)?;
            let back: PodName = serde_json::from_str(&json).map_err(fail)?;
            prop_assert_eq!(back, name);
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(server.is_err(), "the API accepts what PodName refuses");
            if !text.is_empty() {
                names(&message, text)?;
            }
            prop_assert!(
                serde_json::from_str::<PodName>(&serde_json::to_string(text).map_err(fail)?)
                    .is_err()
            );
            refused(message)
        }
    }
}

/// `PodId::parse`: exactly 16 lowercase hex characters.
pub fn check_pod_id(text: &str) -> Checked {
    let hex = text.len() == PodId::LEN
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match PodId::parse(text) {
        Ok(id) => {
            prop_assert!(hex);
            prop_assert_eq!(id.as_str(), text);
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            prop_assert!(!hex);
            names(&e.to_string(), text)?;
            refused(e)
        }
    }
}

fn fail(e: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(e.to_string())
}

// ------------------------------------------------------------------ daemon config

/// Keys the config file knows.
pub const CONFIG_KEYS: [&str; 9] = [
    "socket",
    "state_dir",
    "netns_dir",
    "bridge",
    "pod_cidr_v4",
    "pod_cidr_v6",
    "mtu",
    "pause_binary",
    "peers",
];

/// `Config::from_toml_str`: an accepted config re-validates; an invalid value names a
/// known key.
pub fn check_config(bytes: &[u8]) -> Checked {
    let text = match utf8(bytes) {
        Ok(t) => t,
        Err(verdict) => return verdict,
    };
    match Config::from_toml_str(text, "<fuzz>") {
        Ok(config) => {
            prop_assert!(
                config.validate().is_ok(),
                "accepted config does not validate"
            );
            prop_assert!(config.pod_cidr_v4.prefix_len() <= 30);
            prop_assert!(config.pod_cidr_v6.is_none_or(|n| n.prefix_len() <= 126));
            prop_assert!(config.socket.is_absolute() && config.netns_dir.is_absolute());
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            let message = e.to_string();
            if let ConfigError::Invalid { key, .. } = &e {
                prop_assert!(CONFIG_KEYS.contains(key), "unknown key {key} in {message}");
                prop_assert!(message.contains(key), "{message}");
            }
            prop_assert!(
                message.contains("<fuzz>") || matches!(e, ConfigError::Invalid { .. }),
                "{message} names neither the origin nor a key"
            );
            refused(message)
        }
    }
}

// ------------------------------------------------------------------ port specs

/// `ports::parse_publish_all` (the CLI's `--publish`): accepted mappings have ports in
/// 1..=65535, survive the API's wire form unchanged and pass the server's checks; a
/// refusal names the spec (or the mapping, for overlaps).
pub fn check_publish(specs: &[String]) -> Checked {
    match ports::parse_publish_all(specs) {
        Ok(mappings) => {
            prop_assert!(mappings.len() <= ports::MAX_PORTS_PER_POD);
            let wire: Vec<_> = mappings.iter().map(api::port_message).collect();
            let back = api::request_ports(&wire).map_err(|s| fail(s.message()))?;
            prop_assert_eq!(&back, &mappings);
            for m in &mappings {
                prop_assert!(m.host_port >= 1 && m.container_port >= 1);
            }
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            let message = e.to_string();
            match &e {
                PortSpecError::Malformed { spec, .. }
                | PortSpecError::BadPort { spec, .. }
                | PortSpecError::ReversedRange { spec, .. }
                | PortSpecError::RangeLengthMismatch { spec, .. }
                | PortSpecError::BadProtocol { spec, .. }
                | PortSpecError::BadHostIp { spec, .. } => {
                    prop_assert!(specs.contains(spec), "{message} names no given spec");
                    names(&message, spec)?;
                }
                PortSpecError::Duplicate { first, second } => {
                    prop_assert!(first.overlaps(second));
                }
                PortSpecError::TooMany { count } => {
                    prop_assert!(*count > ports::MAX_PORTS_PER_POD);
                }
                PortSpecError::OutOfRange { .. } => {
                    prop_assert!(false, "the spec parser produced a port 0: {message}");
                }
            }
            refused(message)
        }
    }
}

/// The server side of host ports (`api::request_ports`): whatever numbers and strings
/// arrive, accepted mappings are in range and free of overlaps.
pub fn check_port_messages(messages: &[api::pb::PortMapping]) -> Checked {
    match api::request_ports(messages) {
        Ok(mappings) => {
            prop_assert_eq!(mappings.len(), messages.len());
            prop_assert!(ports::validate(&mappings).is_ok());
            for (m, raw) in mappings.iter().zip(messages) {
                prop_assert_eq!(u32::from(m.host_port), raw.host_port);
                prop_assert_eq!(u32::from(m.container_port), raw.container_port);
            }
            Ok(Verdict::Accepted)
        }
        Err(status) => {
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            refused(status.message())
        }
    }
}

// ------------------------------------------------------------------ annotations

/// `cli::parse_annotations` (`--annotation KEY=VALUE`): accepted keys are non-empty and
/// unique and every value is what follows the first `=`; a refusal names the argument.
pub fn check_cli_annotations(args: &[String]) -> Checked {
    match cli::parse_annotations(args) {
        Ok(map) => {
            prop_assert_eq!(map.len(), args.len());
            for arg in args {
                let (k, v) = arg.split_once('=').ok_or_else(|| fail("no '='"))?;
                prop_assert!(!k.is_empty());
                prop_assert_eq!(map.get(k).map(String::as_str), Some(v));
            }
            prop_assert!(api::request_annotations(map).is_ok());
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(
                args.iter().any(|a| message.contains(&format!("{a:?}"))),
                "{message} names no argument"
            );
            refused(message)
        }
    }
}

/// `pod::parse_options` (the `netns-holder.io/` options of NRI sandboxes and OCI
/// containers): problems name prefixed keys only; accepted options come from known keys.
pub fn check_pod_options(annotations: &BTreeMap<String, String>) -> Checked {
    match pod::parse_options(annotations) {
        Ok(options) => {
            for key in annotations
                .keys()
                .filter(|k| k.starts_with(ANNOTATION_PREFIX))
            {
                prop_assert!(KNOWN_OPTIONS.contains(&key.as_str()), "{key} accepted");
            }
            if let Some(name) = &options.name {
                prop_assert!(PodName::new(name.as_str()).is_ok());
            }
            Ok(Verdict::Accepted)
        }
        Err(problems) => {
            prop_assert!(!problems.is_empty());
            for p in &problems {
                prop_assert!(p.key.starts_with(ANNOTATION_PREFIX), "{p}");
                prop_assert!(annotations.contains_key(&p.key), "{p}");
                // Named as the daemon names things: escaped, and shortened past
                // `names::QUOTED_MAX_CHARS` characters.
                let quoted = netns_holder_core::names::quoted(&p.key);
                prop_assert!(p.to_string().contains(&quoted), "{p} does not name the key");
                prop_assert!(
                    !p.to_string().chars().any(char::is_control),
                    "{p:?} shows a raw control character"
                );
            }
            refused(
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        }
    }
}

/// A sandbox as NRI delivers it, from the fields that come from outside.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxFields {
    /// CRI sandbox id.
    pub id: String,
    /// Pod name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod UID.
    pub uid: String,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The network namespace path, if any.
    pub netns: Option<String>,
}

impl SandboxFields {
    /// The protobuf sandbox.
    pub fn sandbox(&self) -> pb::PodSandbox {
        pb::PodSandbox {
            id: self.id.clone(),
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            uid: self.uid.clone(),
            annotations: self.annotations.clone().into_iter().collect(),
            linux: self.netns.as_ref().map(|path| pb::LinuxPodSandbox {
                namespaces: vec![pb::LinuxNamespace {
                    r#type: "network".into(),
                    path: path.clone(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// `PodTarget::of` on an NRI sandbox that went through protobuf: the derived name is always
/// a valid pod name of the documented shape, an accepted target's namespace is absolute,
/// and a refusal names the sandbox.
pub fn check_sandbox(fields: &SandboxFields) -> Checked {
    use prost::Message;
    let encoded = pb::RunPodSandboxRequest {
        pod: Some(fields.sandbox()),
    }
    .encode_to_vec();
    let decoded = pb::RunPodSandboxRequest::decode(encoded.as_slice()).map_err(fail)?;
    let sandbox = decoded.pod.ok_or_else(|| fail("pod lost in protobuf"))?;
    prop_assert_eq!(&sandbox, &fields.sandbox());
    match pod::derived_name(&sandbox) {
        Ok(name) => {
            prop_assert!(!sandbox.id.is_empty());
            prop_assert!(name.as_str().len() <= MAX_POD_NAME_LEN);
            prop_assert_eq!(name.as_str().matches('_').count(), 2);
            prop_assert_eq!(pod::derived_name(&sandbox).ok(), Some(name));
        }
        Err(e) => prop_assert!(sandbox.id.is_empty(), "derived_name refused: {e}"),
    }
    match PodTarget::of(&sandbox) {
        Ok(target) => {
            prop_assert!(target.netns.as_ref().is_none_or(|p| p.is_absolute()));
            prop_assert!(pod::owned_by_nri(&target.annotations));
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(message.contains(&pod::display_name(&sandbox)), "{message}");
            refused(message)
        }
    }
}

// ------------------------------------------------------------------ OCI state

/// The OCI hook's input: stdin parsed as `oci_spec` `State` (as `oci_hook::main` does), then
/// planned for every stage. A plan has a concrete stage and a valid pod name; a refusal
/// names the container when it has an id.
pub fn check_oci_state(bytes: &[u8]) -> Checked {
    let state: oci_spec::runtime::State = match serde_json::from_slice(bytes) {
        Ok(s) => s,
        Err(e) => return refused(format!("the OCI state on stdin is invalid: {e}")),
    };
    let mut verdict = Verdict::Accepted;
    for stage in [Stage::CreateRuntime, Stage::Poststop, Stage::Auto] {
        match oci_hook::plan(stage, &state) {
            Ok(plan) => {
                prop_assert!(plan.stage != Stage::Auto);
                prop_assert!(PodName::new(plan.pod.as_str()).is_ok());
                prop_assert_eq!(&plan.container, state.id());
            }
            Err(e) => {
                let message = e.to_string();
                if !state.id().is_empty() {
                    // Named quoted, its control and invisible characters escaped.
                    let shown = netns_holder_core::names::quoted(state.id());
                    prop_assert!(message.contains(&shown), "{message} does not name {shown}");
                }
                prop_assert!(
                    !message.chars().any(char::is_control),
                    "{message:?} carries a raw control character"
                );
                verdict = Verdict::Refused(message);
            }
        }
    }
    Ok(verdict)
}

// ------------------------------------------------------------------ CNI

/// `NetConf::parse` (stdin of the CNI entry), then its `portMappings`: an accepted
/// configuration has a supported version, a name and a type; a refusal carries a
/// documented code; the version used for the error object is always a supported one, the
/// configuration's whenever it was accepted.
pub fn check_cni_conf(bytes: &[u8]) -> Checked {
    let answer = wire::answer_version(bytes);
    prop_assert!(wire::SUPPORTED_VERSIONS.contains(&answer.as_str()));
    match NetConf::parse(bytes) {
        Ok(conf) => {
            prop_assert!(wire::SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
            prop_assert!(!conf.name.is_empty());
            prop_assert_ne!(conf.daemon_timeout_ms, Some(0));
            // Also when an ignored field holds invalid UTF-8, which serde_json skips unchecked
            // (corpus: cni-conf/invalid-utf8-in-ignored-field).
            prop_assert_eq!(&answer, &conf.cni_version);
            if let Some(prev) = &conf.prev_result {
                let _ = wire::prev_result_addresses(prev);
            }
            let _ = conf.gc_attachments();
            // The host ports (ADD and CHECK read them): a refusal is code 7 naming them.
            match conf.port_mappings() {
                Ok(mappings) => {
                    prop_assert!(mappings.len() <= netns_holder_core::ports::MAX_PORTS_PER_POD);
                    Ok(Verdict::Accepted)
                }
                Err(e) => {
                    prop_assert_eq!(e.code, wire::code::INVALID_CONFIG);
                    prop_assert!(e.msg.contains("runtimeConfig.portMappings"), "{e}");
                    let object = e.to_json(&answer);
                    prop_assert_eq!(object["cniVersion"].as_str(), Some(answer.as_str()));
                    refused(e)
                }
            }
        }
        Err(e) => {
            prop_assert!(
                [
                    wire::code::INCOMPATIBLE_VERSION,
                    wire::code::DECODE,
                    wire::code::INVALID_CONFIG
                ]
                .contains(&e.code),
                "code {} for {e}",
                e.code
            );
            let object = e.to_json(&answer);
            prop_assert_eq!(object["code"].as_u64(), Some(u64::from(e.code)));
            refused(e)
        }
    }
}

/// `parse_cni_args` (`CNI_ARGS`): accepted pairs round-trip; a refusal names the entry.
pub fn check_cni_args(text: &str) -> Checked {
    match wire::parse_cni_args(text) {
        Ok(args) => {
            for pair in text.split(';').filter(|p| !p.is_empty()) {
                let (k, _) = pair.split_once('=').ok_or_else(|| fail("no '='"))?;
                prop_assert!(args.contains_key(k));
            }
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            prop_assert_eq!(e.code, wire::code::INVALID_ENV);
            prop_assert!(e.msg.contains("CNI_ARGS"));
            refused(e)
        }
    }
}

/// The CNI environment as the plugin reads it, with the pod name derived from it.
pub fn check_cni_env(vars: &BTreeMap<String, String>) -> Checked {
    let env = match Env::from_lookup(|k| vars.get(k).cloned()) {
        Ok(env) => env,
        Err(e) => {
            prop_assert_eq!(e.code, wire::code::INVALID_ENV);
            return refused(e);
        }
    };
    prop_assert!(env.netns.as_ref().is_none_or(|p| p.is_absolute()));
    match cni::pod_name(&env) {
        Ok(name) => {
            prop_assert!(PodName::new(name.as_str()).is_ok());
            Ok(Verdict::Accepted)
        }
        Err(e) => {
            prop_assert_eq!(e.code, wire::code::INVALID_ENV);
            refused(e)
        }
    }
}

// ------------------------------------------------------------------ CLI and API requests

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// A socket path where no daemon listens.
const NO_DAEMON: &str = "/nonexistent/netns-holder-fuzz/api.sock";

/// The netns-holder command line: `Cli::try_parse_from`, then the client command's own
/// validation (run against a socket nobody listens on, so nothing is ever sent). A client
/// command ends in a refusal, a usage error, or "cannot connect", never anything else.
pub fn check_cli_argv(argv: &[String]) -> Checked {
    let mut full = vec!["netns-holder".to_string()];
    full.extend(argv.iter().cloned());
    let parsed = match Cli::try_parse_from(&full) {
        Ok(parsed) => parsed,
        Err(e) => return refused(e),
    };
    let command = match parsed.command {
        cli::Command::Client(command) => command,
        // `serve` would start a daemon: only the parse is fuzzed.
        cli::Command::Serve(_) => return Ok(Verdict::Accepted),
    };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    match runtime().block_on(cli::run(Path::new(NO_DAEMON), command, &log)) {
        Ok(outcome) => Err(fail(format!(
            "a client command succeeded without a daemon: {outcome:?}"
        ))),
        Err(e) => {
            let message = e.to_string();
            if message.contains(NO_DAEMON) {
                Ok(Verdict::Accepted)
            } else {
                refused(message)
            }
        }
    }
}

/// The daemon's request validators for netns paths and peers.
pub fn check_api_strings(netns: &str, cidr: &str, via: &str) -> Checked {
    if let Ok(path) = api::request_netns(netns) {
        prop_assert!(path.is_absolute() && !netns.is_empty());
    }
    match api::request_peer(cidr, via) {
        Ok(peer) => {
            prop_assert_eq!(
                peer.pod_cidr.to_string().parse::<ipnet::IpNet>().ok(),
                Some(peer.pod_cidr)
            );
            Ok(Verdict::Accepted)
        }
        Err(status) => {
            prop_assert_eq!(status.code(), tonic::Code::InvalidArgument);
            refused(status.message())
        }
    }
}
