//! The NRI conversation a real containerd 2.3.4 had with `cri-hook nri`
//! (`tests/captures/containerd-2.3.4/nri`), replayed by [`nh_tests::nri_replay`]:
//!
//! * `replay_peer_is_byte_faithful` (no root, no plugin): the replay peer, answered by the
//!   captured plugin bytes, writes exactly the captured runtime→plugin bytes of proxy
//!   connection 1 and of the after-restart connection 7, in the captured read boundaries;
//! * `replay_adjusts_only_netns_path_and_pid`: the adjusted payloads differ from the capture
//!   only in the pods' network namespace path and pid, and undoing the adjustment gives the
//!   captured bytes back;
//! * `replay_containerd_life` (root): the real `cri-hook nri` and a real daemon through the
//!   captured life: registration, the `nri-ann`, `nri-plain`, `nri-rs1` and `nri-rs2` pods
//!   (each wired first by the CNI entry with the captured stdin, as containerd does before
//!   RunPodSandbox), containerd's restart (EOF, refused dials, a new connection: Register,
//!   Configure, Synchronize with the remaining pods) and the stops and removes after it,
//!   which send no NRI message at all.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, tcp_probe};
use nh_tests::nri_harness::{PluginProcess, PodNetns, WAIT, cri_hook_binary, run_async};
use nh_tests::nri_replay::{
    Adjustments, Capture, CapturedCall, PodPaths, ReplayConn, ReplayRuntime, Timeouts,
    adjust_payload, capture_dir, captured_paths,
};
use nh_tests::{ChildGuard, ScratchDir, proc_state, require_root};
use nri::pb;
use prost::Message;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FIRST: &str = "01-first-connection";
const AFTER_RESTART: &str = "02-after-restart";

// ------------------------------------------------------------------ byte-level self-check

/// Plays the captured plugin: writes each captured plugin→runtime read once the peer has
/// written every runtime→plugin byte captured before it; returns everything it read.
async fn captured_plugin(
    capture: Capture,
    conn: u32,
    mut stream: tokio::net::UnixStream,
) -> Result<Vec<u8>> {
    let total = capture.raw_bytes(conn, true).len();
    let mut got = Vec::new();
    let mut before = 0;
    let mut buf = vec![0u8; 65536];
    for read in capture.reads.iter().filter(|r| r.conn == conn) {
        if read.to_plugin {
            before += read.bytes.len();
            continue;
        }
        while got.len() < before {
            let n = stream.read(&mut buf).await?;
            ensure!(n > 0, "peer closed after {} of {before} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        stream.write_all(&read.bytes).await?;
    }
    while got.len() < total {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

/// Replays the runtime side of `conn` (with its own captured paths as the "adjustment", so
/// the splicing code runs) against the captured plugin; returns the peer's writes, what
/// the plugin side read, and the answers.
async fn replay_against_capture(
    capture: &Capture,
    conn: u32,
) -> Result<(Vec<Vec<u8>>, Vec<u8>, Vec<Result<Vec<u8>, String>>)> {
    let (ours, theirs) = tokio::net::UnixStream::pair()?;
    let plugin = tokio::spawn(captured_plugin(capture.clone(), conn, theirs));
    let peer = ReplayConn::new(ours, Timeouts::Captured);
    let calls = capture.calls(conn);
    let registration = peer
        .register(&capture.register_reply(conn)?, &calls[0], WAIT)
        .await?;
    ensure!(registration.request == capture.registration(conn)?);
    let original = captured_paths(capture);
    let mut answers = Vec::new();
    for call in &calls[1..] {
        answers.push(
            peer.call(call, &original)
                .await
                .map_err(|e| format!("{e:#}")),
        );
    }
    peer.close().await;
    let got = tokio::time::timeout(WAIT, plugin).await???;
    ensure!(peer.violations().is_empty(), "{:?}", peer.violations());
    Ok((peer.writes(), got, answers))
}

#[test]
fn replay_peer_is_byte_faithful() -> Result<()> {
    run_async(async {
        for (file, conn) in [(FIRST, 1), (AFTER_RESTART, 7)] {
            let capture = Capture::load(file)?;
            let (writes, got, answers) = replay_against_capture(&capture, conn).await?;
            let want = capture.raw_bytes(conn, true);
            assert!(!want.is_empty(), "{file}: nothing captured");
            if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{file} conn {conn}: byte {at} differs: peer {:02x?} vs capture {:02x?}",
                    &got[at..(at + 16).min(got.len())],
                    &want[at..(at + 16).min(want.len())]
                );
            }
            assert_eq!(got.len(), want.len(), "{file} conn {conn}: lengths");
            assert_eq!(
                writes.concat(),
                want,
                "{file} conn {conn}: the peer's writes"
            );
            // The captured read boundaries are the peer's write boundaries.
            let write_lens: Vec<usize> = writes.iter().map(Vec::len).collect();
            let read_lens: Vec<usize> =
                capture.raw_reads(conn, true).iter().map(Vec::len).collect();
            assert_eq!(
                write_lens, read_lens,
                "{file} conn {conn}: write boundaries"
            );
            // The only failed answer of the capture: nri-ann's RunPodSandbox, 6 ALREADY_EXISTS.
            let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
            if conn == 1 {
                assert_eq!(failed.len(), 1, "{answers:?}");
                assert!(failed[0].contains("status 6"), "{failed:?}");
            } else {
                assert!(failed.is_empty(), "{failed:?}");
            }
        }
        // The after-restart Synchronize is the one message split into [4096, 800].
        let capture = Capture::load(AFTER_RESTART)?;
        let sync = &capture.calls(7)[1];
        assert_eq!(sync.method(), "Synchronize");
        assert_eq!(sync.message.frame_lens, vec![4096, 800]);
        Ok(())
    })
}

fn network_path(pod: &pb::PodSandbox) -> Option<&str> {
    pod.linux
        .as_ref()?
        .namespaces
        .iter()
        .find(|n| n.r#type == "network")
        .map(|n| n.path.as_str())
}

fn pods_of(method: &str, payload: &[u8]) -> Result<Vec<pb::PodSandbox>> {
    Ok(match method {
        "Synchronize" => pb::SynchronizeRequest::decode(payload)?.pods,
        _ => pb::RunPodSandboxRequest::decode(payload)?
            .pod
            .into_iter()
            .collect(),
    })
}

#[test]
fn replay_adjusts_only_netns_path_and_pid() -> Result<()> {
    for (file, conn) in [(FIRST, 1), (AFTER_RESTART, 7)] {
        let capture = Capture::load(file)?;
        let original = captured_paths(&capture);
        let adjust: Adjustments = original
            .keys()
            .enumerate()
            .map(|(n, id)| {
                (
                    id.clone(),
                    PodPaths {
                        netns: format!("/run/netns/nhq-replay-{n}"),
                        pid: 4242 + n as u32,
                    },
                )
            })
            .collect();
        let mut adjusted_pods = 0;
        for call in capture.calls(conn) {
            let method = call.method();
            let payload = &call.message.payload;
            let adjusted = adjust_payload(method, payload, &adjust)?;
            // Undone, the captured bytes come back.
            assert_eq!(&adjust_payload(method, &adjusted, &original)?, payload);
            if !matches!(
                method,
                "RunPodSandbox" | "StopPodSandbox" | "RemovePodSandbox" | "Synchronize"
            ) {
                assert_eq!(&adjusted, payload, "{method}");
                continue;
            }
            let (before, after) = (pods_of(method, payload)?, pods_of(method, &adjusted)?);
            assert_eq!(before.len(), after.len());
            for (mut want, got) in before.into_iter().zip(after) {
                let paths = &adjust[&want.id];
                if let Some(ns) = want
                    .linux
                    .as_mut()
                    .into_iter()
                    .flat_map(|l| &mut l.namespaces)
                    .find(|n| n.r#type == "network")
                {
                    ns.path = paths.netns.clone();
                    assert_eq!(network_path(&got), Some(paths.netns.as_str()));
                }
                if want.pid != 0 {
                    want.pid = paths.pid;
                }
                // Everything else as captured (Stop and Remove keep carrying no pid, Remove
                // no network entry).
                assert_eq!(got, want, "{file} {method}");
                adjusted_pods += 1;
            }
            if method == "Synchronize" && !adjusted.is_empty() {
                // The containers (their field 21 `user` included) are untouched.
                let tail = &payload[payload.len() - 200..];
                assert!(adjusted.ends_with(tail));
                assert_ne!(&adjusted, payload);
            }
        }
        assert!(adjusted_pods >= 2, "{file}: {adjusted_pods} pods adjusted");
    }
    Ok(())
}

// ------------------------------------------------------------------ the captured life

/// Runs the CNI entry as containerd did in `cni/<file>.json`: the captured environment and
/// stdin, with `CNI_NETNS` (when set) pointing at `netns` and `daemonSocket` at ours.
fn cni(file: &str, netns: &Path, daemon_socket: &Path) -> Result<Output> {
    let path = capture_dir().join("cni").join(format!("{file}.json"));
    let call: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let mut stdin = call["stdin"].clone();
    stdin["daemonSocket"] = Value::String(daemon_socket.display().to_string());
    let mut command = Command::new(cri_hook_binary());
    command
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in call["env"].as_object().context("env")? {
        let mut value = value.as_str().unwrap_or_default().to_string();
        if key == "CNI_NETNS" && !value.is_empty() {
            value = netns.display().to_string();
        }
        command.env(key, value);
    }
    let mut child = command
        .spawn()
        .context("running cri-hook as a CNI plugin")?;
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.to_string().as_bytes())?;
    }
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "CNI {file} failed with {}: {} {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// A test pod: its network namespace and a process in it standing in for the pause.
struct Pod {
    netns: PodNetns,
    pause: ChildGuard,
}

impl Pod {
    fn new() -> Result<Self> {
        let netns = PodNetns::new()?;
        let pause = ChildGuard::spawn(
            Command::new("ip")
                .args(["netns", "exec", &netns.name, "sleep", "600"])
                .stdin(Stdio::null()),
        )?;
        Ok(Self { netns, pause })
    }

    fn paths(&self) -> PodPaths {
        PodPaths {
            netns: self.netns.path().display().to_string(),
            pid: self.pause.pid(),
        }
    }
}

/// The daemon pod whose name starts with `prefix` (the plugin derives
/// `<namespace>_<name>_<id prefix>`).
fn daemon_pod(daemon: &Daemon, prefix: &str) -> Result<Value> {
    let pods = daemon.cli_json(&["pod", "ls", "--json"])?;
    pods.as_array()
        .context("pod ls is a list")?
        .iter()
        .find(|p| p["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .cloned()
        .with_context(|| format!("no daemon pod {prefix}*: {pods}"))
}

fn find<'a>(calls: &'a [CapturedCall], method: &str, pod: &str) -> Result<&'a CapturedCall> {
    calls
        .iter()
        .find(|c| c.method() == method && c.pod_id().is_some_and(|id| id.starts_with(pod)))
        .with_context(|| format!("no captured {method} for {pod}"))
}

/// The plugin's count of refused dials, from its `attempts` log field.
fn refused_dials(log: &str) -> u32 {
    log.lines()
        .filter(|l| l.contains("cannot connect to the runtime's NRI socket"))
        .filter_map(|l| {
            let at = l.find("attempts")? + "attempts".len();
            l[at..]
                .trim_start_matches(|c: char| !c.is_ascii_digit())
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn replay_containerd_life() -> Result<()> {
    if !require_root("replay_containerd_life") {
        return Ok(());
    }
    run_async(async {
        let first = Capture::load(FIRST)?;
        let after = Capture::load(AFTER_RESTART)?;
        let calls = first.calls(1);
        let methods: Vec<&str> = calls.iter().map(CapturedCall::method).collect();
        assert_eq!(
            methods,
            [
                "Configure",
                "Synchronize",
                "RunPodSandbox",
                "StopPodSandbox",
                "RemovePodSandbox",
                "RunPodSandbox",
                "StopPodSandbox",
                "RemovePodSandbox",
                "RunPodSandbox",
                "RunPodSandbox"
            ]
        );

        let node = Node::new()?;
        let daemon = Daemon::start(&node, DaemonOptions::default())?;
        let daemon_socket = daemon.socket();
        let scratch = ScratchDir::new("nrir")?;
        let socket = scratch.path().join("nri.sock");
        let mut runtime = ReplayRuntime::bind(&socket)?;
        let plugin = PluginProcess::dial(&socket, &daemon_socket, &scratch)?;
        let log = || plugin.log();

        // Registration, Configure, the empty Synchronize.
        let conn = runtime.accept(WAIT, Timeouts::Deadline).await?;
        let registration = conn
            .register(&first.register_reply(1)?, &calls[0], WAIT)
            .await
            .with_context(log)?;
        let captured = first.registration(1)?;
        assert_eq!(registration.request.plugin_name, captured.plugin_name);
        assert_eq!(registration.request.plugin_idx, captured.plugin_idx);
        assert_eq!(registration.events, first.configure_reply(1)?.events);
        assert_eq!(registration.events, 0x7);
        conn.call(&calls[1], &Adjustments::new())
            .await
            .with_context(log)?;

        let mut pods: HashMap<&str, Pod> = HashMap::new();
        let mut adjust = Adjustments::new();
        for (name, id) in [
            ("nri-ann", "88eba6f50a8c"),
            ("nri-plain", "d4bb5e584568"),
            ("nri-rs1", "a982d6d72681"),
            ("nri-rs2", "88f0cf46f778"),
        ] {
            let pod = Pod::new()?;
            let full = find(&calls, "RunPodSandbox", id)?.pod_id().context("id")?;
            adjust.insert(full, pod.paths());
            pods.insert(name, pod);
        }
        let netns = |name: &str| pods[name].netns.path();

        // nri-ann (annotation netns-holder.io/ports "18082:8080/tcp"): CNI ADD first, then
        // RunPodSandbox; containerd answered the captured failure with Stop and Remove at once,
        // then the CNI DEL.
        cni("32-nri-ann-runp-ADD", &netns("nri-ann"), &daemon_socket)?;
        let ann_run = conn
            .call(find(&calls, "RunPodSandbox", "88eba6f50a8c")?, &adjust)
            .await;
        // The CNI entry made the pod (with no CRI host ports); the plugin publishes the
        // annotation's port on top of it, and the port reaches the pod from the node.
        ann_run.with_context(|| format!("nri-ann RunPodSandbox\n{}", log()))?;
        let ann = daemon_pod(&daemon, "default_nri-ann_")?;
        assert_eq!(
            ann["ports"],
            serde_json::json!([{"host_ip": null, "host_port": 18082, "container_port": 8080, "protocol": "tcp"}]),
            "{ann}"
        );
        let to = std::net::SocketAddr::from(([127, 0, 0, 1], 18082));
        {
            let _echo = Echo::start(&netns("nri-ann"), Proto::Tcp, 8080)?;
            let seen = tcp_probe(&node.netns_path(), to).with_context(|| {
                let show = |argv: &[&str]| {
                    node.run(argv)
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_else(|e| e.to_string())
                };
                format!(
                    "the annotation port does not reach the pod\n{}\ndaemon:\n{}\n{}\n{}\n{}",
                    log(),
                    daemon.log(),
                    show(&["nft", "list", "ruleset"]),
                    show(&["ip", "addr"]),
                    show(&["sysctl", "net.ipv4.conf.nh0.route_localnet"]),
                )
            })?;
            ensure!(seen.is_loopback() || seen.is_ipv4(), "{seen}");
        }
        // Stop releases it (the pod is the CNI entry's, for this very sandbox); Remove leaves
        // the CNI entry's pod to its DEL.
        conn.call(find(&calls, "StopPodSandbox", "88eba6f50a8c")?, &adjust)
            .await
            .with_context(|| format!("nri-ann StopPodSandbox\n{}", log()))?;
        let ann = daemon_pod(&daemon, "default_nri-ann_")?;
        assert_eq!(ann["ports_released"], true, "{ann}");
        conn.call(find(&calls, "RemovePodSandbox", "88eba6f50a8c")?, &adjust)
            .await
            .with_context(|| format!("nri-ann RemovePodSandbox\n{}", log()))?;
        daemon_pod(&daemon, "default_nri-ann_")?;
        cni("34-nri-ann-runp-DEL", &netns("nri-ann"), &daemon_socket)?;

        // nri-plain: ADD, Run; (the busybox container: no NRI message, not subscribed);
        // Stop before the stopp DEL; Remove after the rmp DEL.
        cni("35-nri-plain-runp-ADD", &netns("nri-plain"), &daemon_socket)?;
        for (method, after) in [
            ("RunPodSandbox", None),
            ("StopPodSandbox", Some("38-nri-plain-stopp-DEL")),
            ("RemovePodSandbox", None),
        ] {
            if method == "RemovePodSandbox" {
                cni("40-nri-plain-rmp-DEL", &netns("nri-plain"), &daemon_socket)?;
            }
            conn.call(find(&calls, method, "d4bb5e584568")?, &adjust)
                .await
                .with_context(|| format!("nri-plain {method}\n{}", log()))?;
            if let Some(file) = after {
                cni(file, &netns("nri-plain"), &daemon_socket)?;
            }
        }

        // nri-rs1 and nri-rs2: ADD, Run; they outlive the restart.
        for (name, id, add) in [
            ("nri-rs1", "a982d6d72681", "41-nri-rs1-runp-ADD"),
            ("nri-rs2", "88f0cf46f778", "43-nri-rs2-runp-ADD"),
        ] {
            cni(add, &netns(name), &daemon_socket)?;
            conn.call(find(&calls, "RunPodSandbox", id)?, &adjust)
                .await
                .with_context(|| format!("{name} RunPodSandbox\n{}", log()))?;
        }
        assert_eq!(conn.sent_methods(), methods, "connection 1 as captured");
        ensure!(conn.violations().is_empty(), "{:?}", conn.violations());

        // containerd stops: EOF with no Shutdown; dials are refused until it is back. The
        // capture saw 5 refused dials; the plugin logs its count at 1, 2, 4, ..., so the
        // runtime comes back once it has logged 4 (its next dial comes after a backoff).
        conn.close().await;
        runtime.go_down()?;
        let down = std::time::Instant::now();
        while refused_dials(&log()) < 4 {
            if down.elapsed() > Duration::from_secs(20) {
                bail!("the plugin did not dial 4 times in 20 s; log:\n{}", log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        runtime.come_up()?;

        // The new connection: Register, Configure, one Synchronize with both pods.
        let calls7 = after.calls(7);
        let methods7: Vec<&str> = calls7.iter().map(CapturedCall::method).collect();
        assert_eq!(methods7, ["Configure", "Synchronize"], "the capture");
        let conn7 = runtime
            .accept(WAIT, Timeouts::Deadline)
            .await
            .with_context(|| format!("no reconnection; log:\n{}", log()))?;
        let registration = conn7
            .register(&after.register_reply(7)?, &calls7[0], WAIT)
            .await
            .with_context(log)?;
        let captured = after.registration(7)?;
        assert_eq!(registration.request.plugin_name, captured.plugin_name);
        assert_eq!(registration.request.plugin_idx, captured.plugin_idx);
        assert_eq!(registration.events, after.configure_reply(7)?.events);
        let sync = conn7
            .call(&calls7[1], &adjust)
            .await
            .with_context(|| format!("after-restart Synchronize\n{}", log()))?;
        let sync = pb::SynchronizeResponse::decode(sync.as_slice())?;
        assert!(!sync.more, "{sync:?}");
        // The split Synchronize went out as containerd frames it: [4096, rest] in one write.
        let big = conn7
            .writes()
            .into_iter()
            .max_by_key(Vec::len)
            .unwrap_or_default();
        assert_eq!(
            &big[..8],
            &[0, 0, 0, 1, 0, 0, 0x10, 0],
            "first frame of 4096"
        );

        // stopp and rmp of both pods after the restart: CNI DELs only, no NRI message.
        for (name, del) in [
            ("nri-rs1", "46-nri-rs1-stopp-after-restart-DEL"),
            ("nri-rs1", "48-nri-rs1-rmp-after-restart-DEL"),
            ("nri-rs2", "50-nri-rs2-stopp-after-restart-DEL"),
            ("nri-rs2", "52-nri-rs2-rmp-after-restart-DEL"),
        ] {
            cni(del, &netns(name), &daemon_socket)?;
        }
        // The CNI DELs cleaned up the pods containerd never told the plugin about.
        let left = daemon.cli_json(&["pod", "ls", "--json"])?;
        assert_eq!(left, serde_json::json!([]), "pods left after the DELs");
        let status = daemon.cli_json(&["status"])?;
        assert_eq!(status["host_ports"], 0, "{status}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            conn7.sent_methods(),
            ["Configure", "Synchronize"],
            "no Stop/Remove for pods that existed before the restart"
        );
        let stopped_before: Vec<String> = conn
            .sent_methods()
            .into_iter()
            .filter(|m| m != "RunPodSandbox")
            .collect();
        assert_eq!(
            stopped_before
                .iter()
                .filter(|m| m.contains("PodSandbox"))
                .count(),
            4,
            "Stop/Remove only for nri-ann and nri-plain: {stopped_before:?}"
        );
        ensure!(conn7.violations().is_empty(), "{:?}", conn7.violations());
        assert!(log().contains("reconnecting"), "{}", log());
        eprintln!("plugin log:\n{}", log());
        assert!(
            proc_state(plugin.child.pid()).is_some_and(|s| s != 'Z'),
            "the plugin is still running; log:\n{}",
            log()
        );
        Ok(())
    })
}
