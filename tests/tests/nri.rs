//! End-to-end tests of `cri-hook nri`, the real binary, between a runtime-side NRI peer
//! ([`nh_tests::nri_peer`], containerd's behaviour per shared/nri/PROTOCOL.md) and a real
//! netns-holder daemon in a throwaway node network namespace ([`nh_tests::node`]).
//!
//! * registration by dialing the runtime socket, and on an inherited fd 3 with only the
//!   three NRI environment variables (as a launched plugin), Configure's event mask,
//!   UNIMPLEMENTED for methods not served, a clean exit on SIGTERM;
//! * a split, large Synchronize that garbage-collects a stale `owner=nri` pod, keeps a
//!   manual pod and ensures a listed one;
//! * RunPodSandbox (dedicated and StateChange) → a pod the node can ping; Stop keeps it;
//!   Remove leaves no veth and no daemon pod;
//! * a malformed annotation fails the pod with INVALID_ARGUMENT naming it;
//! * a pod another CNI wired (eth0 in its namespace) starts and is left alone; asking for
//!   host ports on it fails the pod with FAILED_PRECONDITION naming the annotation;
//! * host ports from `netns-holder.io/ports`: RunPodSandbox publishes them (the node port
//!   reaches the pod), StopPodSandbox releases them (the port no longer answers, another
//!   pod takes it, a Synchronize does not bring them back), RemovePodSandbox leaves
//!   nothing; a Stop of a sandbox never wired succeeds; a malformed value fails the pod
//!   naming the annotation;
//! * messages of 20 KiB and more both ways, checked against the Go reader model;
//! * a runtime restart: the plugin reconnects and registers again;
//! * an absent or hanging daemon: a clear error well inside the 2 s budget.
//!
//! Each test checks the peer saw no protocol violation. Pod network namespaces are made
//! with `ip netns add` under unique names and deleted by guards.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, tcp_probe};
use nh_tests::nri_harness::{
    Env, PluginProcess, PodNetns, WAIT, cri_hook_binary, daemon_name, run_async, sandbox_id,
};
use nh_tests::nri_peer::{NriRuntime, PeerError, PeerOptions, PluginConn, container, pod_sandbox};
use nh_tests::{ScratchDir, require_root, unique_name};
use nri::pb;
use prost::Message;

// ------------------------------------------------------------------------------- helpers
// (The harness, Env and the plugin process, is shared: `nh_tests::nri_harness`.)

fn status_of(result: Result<(), PeerError>) -> Result<(i32, String)> {
    match result {
        Err(PeerError::Status { code, message }) => Ok((code, message)),
        other => bail!("expected an error status, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------- tests

#[test]
fn nri_registers_by_dialing_and_stops_on_sigterm() -> Result<()> {
    if !require_root("nri_registers_by_dialing_and_stops_on_sigterm") {
        return Ok(());
    }
    run_async(async {
        let node = Node::new()?;
        let daemon = Daemon::start(&node, DaemonOptions::default())?;
        let scratch = ScratchDir::new("nri")?;
        let socket = scratch.path().join("nri.sock");
        let runtime = NriRuntime::bind(&socket, PeerOptions::default())?;
        let mut plugin = PluginProcess::dial(&socket, &daemon.socket(), &scratch)?;
        let conn = runtime.accept(WAIT).await?;
        let handshake = conn.handshake().await?;
        assert_eq!(handshake.registration.plugin_name, "netns-holder");
        assert_eq!(handshake.registration.plugin_idx, "10");
        assert!(!handshake.registration.nri_version.is_empty());
        assert_eq!(handshake.events, 0x7, "RUN|STOP|REMOVE_POD_SANDBOX");
        let reply = conn.synchronize(vec![], vec![]).await?;
        assert!(!reply.more && reply.update.is_empty());
        for method in ["PostCreateContainer", "CreateContainer", "NoSuchMethod"] {
            let err = conn.call_raw(method, vec![]).await.unwrap_err();
            assert_eq!(err.code(), Some(12), "{method}: {err}");
        }
        let status = plugin.terminate()?;
        assert!(status.success(), "exit {status}; log:\n{}", plugin.log());
        assert!(plugin.log().contains("SIGTERM"), "{}", plugin.log());
        assert!(conn.violations().is_empty(), "{:?}", conn.violations());
        Ok(())
    })
}

/// Spawns `cri-hook ARGS` as the runtime launches a plugin: its end of a socketpair as
/// fd 3, only the three NRI variables, no stdin/stdout.
fn launch_on_fd3(
    args: &[&std::ffi::OsStr],
    name: &str,
    index: &str,
    scratch: &ScratchDir,
) -> Result<(PluginProcess, tokio::net::UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let fd = theirs.as_raw_fd();
    let mut command = Command::new(cri_hook_binary());
    command
        .args(args)
        .env_clear()
        .env("NRI_PLUGIN_NAME", name)
        .env("NRI_PLUGIN_IDX", index)
        .env("NRI_PLUGIN_SOCKET", "3")
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl) are made;
    // `fd` stays open in the parent until after spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 onto itself keeps CLOEXEC: clear it explicitly.
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let plugin = PluginProcess::spawn(&mut command, scratch)?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    Ok((plugin, tokio::net::UnixStream::from_std(ours)?))
}

#[test]
fn nri_registers_on_inherited_fd3() -> Result<()> {
    if !require_root("nri_registers_on_inherited_fd3") {
        return Ok(());
    }
    run_async(async {
        let scratch = ScratchDir::new("nri")?;
        // Exactly as launched: no arguments at all.
        let (mut plugin, stream) = launch_on_fd3(&[], "netns-holder", "05", &scratch)?;
        let conn = PluginConn::from_stream(stream, PeerOptions::default());
        let handshake = conn.handshake().await.with_context(|| plugin.log())?;
        assert_eq!(handshake.registration.plugin_name, "netns-holder");
        assert_eq!(handshake.registration.plugin_idx, "05");
        assert_eq!(handshake.events, 0x7);
        // The runtime going away ends a launched plugin, successfully.
        conn.close("runtime stopped").await;
        let status = plugin.child.wait_timeout(WAIT)?;
        assert!(status.success(), "exit {status}; log:\n{}", plugin.log());
        assert!(conn.violations().is_empty(), "{:?}", conn.violations());

        // With the daemon socket given, a pod comes up through fd 3 too.
        let node = Node::new()?;
        let daemon = Daemon::start(&node, DaemonOptions::default())?;
        let socket = daemon.socket();
        let args = [
            std::ffi::OsStr::new("nri"),
            std::ffi::OsStr::new("--daemon-socket"),
            socket.as_os_str(),
        ];
        let (plugin, stream) = launch_on_fd3(&args, "netns-holder-fd", "42", &scratch)?;
        let conn = PluginConn::from_stream(stream, PeerOptions::default());
        let handshake = conn.handshake().await.with_context(|| plugin.log())?;
        assert_eq!(handshake.registration.plugin_name, "netns-holder-fd");
        conn.synchronize(vec![], vec![]).await?;
        let netns = PodNetns::new()?;
        let pod = pod_sandbox("default", "fd3", &sandbox_id(), Some(&netns.path()), &[]);
        conn.run_pod_sandbox(&pod)
            .await
            .with_context(|| plugin.log())?;
        let json = daemon.cli_json(&["pod", "inspect", &daemon_name(&pod)])?;
        let ip = json["ips"][0].as_str().context("pod ip")?.to_string();
        node.run(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            ip.split('/').next().unwrap_or(&ip),
        ])?;
        conn.remove_pod_sandbox(&pod).await?;
        assert!(conn.violations().is_empty(), "{:?}", conn.violations());
        Ok(())
    })
}

#[test]
fn nri_run_stop_remove_pod_sandbox() -> Result<()> {
    if !require_root("nri_run_stop_remove_pod_sandbox") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        env.conn.synchronize(vec![], vec![]).await?;
        let netns = PodNetns::new()?;
        let pod = pod_sandbox("default", "web", &sandbox_id(), Some(&netns.path()), &[]);
        let name = daemon_name(&pod);

        env.conn
            .run_pod_sandbox(&pod)
            .await
            .with_context(|| env.plugin.log())?;
        let wired = env
            .daemon_pod(&name)
            .await?
            .context("no daemon pod after RunPodSandbox")?;
        assert_eq!(wired.netns, netns.path().display().to_string());
        assert_eq!(wired.annotations["netns-holder.io/owner"], "nri");
        assert_eq!(wired.annotations["netns-holder.io/sandbox-id"], pod.id);
        assert_eq!(wired.annotations["netns-holder.io/pod"], "default/web");
        env.ping(&wired.ips[0])?;
        // Idempotent.
        env.conn.run_pod_sandbox(&pod).await?;
        assert_eq!(
            env.daemon_pod(&name).await?.map(|p| p.ips),
            Some(wired.ips.clone())
        );
        // Stop keeps the network (it only releases host ports, of which this pod has none).
        env.conn.stop_pod_sandbox(&pod).await?;
        env.ping(&wired.ips[0])?;
        // Remove tears it all down.
        env.conn.remove_pod_sandbox(&pod).await?;
        assert!(env.daemon_pod(&name).await?.is_none());
        assert!(
            !env.node.links()?.contains(&wired.host_veth),
            "host veth left"
        );
        assert_eq!(netns.links()?, ["lo"], "pod side left");

        // The same through StateChange (NRI < v0.12 runtimes, and the fallback).
        let other = PodNetns::new()?;
        let pod = pod_sandbox("team-a", "db", &sandbox_id(), Some(&other.path()), &[]);
        env.conn
            .state_change(pb::Event::RunPodSandbox, &pod)
            .await?;
        let wired = env
            .daemon_pod(&daemon_name(&pod))
            .await?
            .context("StateChange run")?;
        env.ping(&wired.ips[0])?;
        env.conn
            .state_change(pb::Event::StopPodSandbox, &pod)
            .await?;
        env.conn
            .state_change(pb::Event::RemovePodSandbox, &pod)
            .await?;
        assert!(env.daemon_pod(&daemon_name(&pod)).await?.is_none());
        assert!(!env.node.links()?.contains(&wired.host_veth));

        // A host-network pod (no network namespace) is nothing to do.
        let host = pod_sandbox("kube-system", "agent", &sandbox_id(), None, &[]);
        env.conn.run_pod_sandbox(&host).await?;
        assert!(env.daemon_pod(&daemon_name(&host)).await?.is_none());
        env.no_violations()
    })
}

/// containerd runs CNI before RunPodSandbox reaches NRI: when our CNI entry already wired the
/// sandbox, RunPodSandbox must succeed on that same pod instead of conflicting with it.
#[test]
fn nri_run_pod_sandbox_already_wired_by_the_cni_entry() -> Result<()> {
    if !require_root("nri_run_pod_sandbox_already_wired_by_the_cni_entry") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        env.conn.synchronize(vec![], vec![]).await?;
        let netns = PodNetns::new()?;
        let pod = pod_sandbox(
            "default",
            "cnifirst",
            &sandbox_id(),
            Some(&netns.path()),
            &[],
        );
        let name = daemon_name(&pod);

        let config = serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "nhtest",
            "type": "netns-holder",
            "daemonSocket": env.daemon.socket(),
        });
        let mut cni = Command::new(cri_hook_binary())
            .env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", &pod.id)
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!(
                    "K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    pod.namespace, pod.name
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        cni.stdin
            .take()
            .context("stdin")?
            .write_all(config.to_string().as_bytes())?;
        let added = cni.wait_with_output()?;
        ensure!(
            added.status.success(),
            "CNI ADD failed: {}{}",
            String::from_utf8_lossy(&added.stdout),
            String::from_utf8_lossy(&added.stderr)
        );
        let by_cni = env
            .daemon_pod(&name)
            .await?
            .context("CNI ADD made no pod of that name")?;
        ensure!(
            by_cni
                .annotations
                .get("netns-holder.io/owner")
                .map(String::as_str)
                == Some("cni")
        );

        env.conn
            .run_pod_sandbox(&pod)
            .await
            .with_context(|| env.plugin.log())?;
        let after = env
            .daemon_pod(&name)
            .await?
            .context("pod gone after RunPodSandbox")?;
        ensure!(
            after.ips == by_cni.ips,
            "RunPodSandbox rewired the pod: {:?} -> {:?}",
            by_cni.ips,
            after.ips
        );
        ensure!(
            after.host_veth == by_cni.host_veth,
            "a second veth was made"
        );
        env.ping(&after.ips[0])?;
        Ok(())
    })
}

#[test]
fn nri_pod_wired_by_another_cni_starts_and_is_left_alone() -> Result<()> {
    if !require_root("nri_pod_wired_by_another_cni_starts_and_is_left_alone") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        env.conn.synchronize(vec![], vec![]).await?;
        // Another CNI (bridge, Calico, ...) wired the sandbox: eth0 in it, its host end in the
        // node namespace.
        let netns = PodNetns::new()?;
        let host_end = unique_name("vfor");
        env.node.run(&[
            "ip",
            "link",
            "add",
            &host_end,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &netns.name,
        ])?;
        let plain = pod_sandbox("default", "calico", &sandbox_id(), Some(&netns.path()), &[]);
        env.conn
            .run_pod_sandbox(&plain)
            .await
            .with_context(|| env.plugin.log())?;
        assert!(env.daemon_pod(&daemon_name(&plain)).await?.is_none());
        assert_eq!(netns.links()?, ["lo", "eth0"], "their wiring untouched");
        ensure!(
            env.node.links()?.contains(&host_end),
            "their host end untouched"
        );
        ensure!(
            env.plugin
                .log()
                .contains("belongs to another network plugin"),
            "one info line says so: {}",
            env.plugin.log()
        );
        env.conn.stop_pod_sandbox(&plain).await?;
        env.conn.remove_pod_sandbox(&plain).await?;

        // Asking us for host ports on such a pod is a clear error naming the annotation.
        let annotated = pod_sandbox(
            "default",
            "calico-ports",
            &sandbox_id(),
            Some(&netns.path()),
            &[("netns-holder.io/ports", "18086:8080/tcp")],
        );
        let (code, message) = status_of(env.conn.run_pod_sandbox(&annotated).await)?;
        assert_eq!(code, 9, "FAILED_PRECONDITION: {message}");
        for needle in ["netns-holder.io/ports", "another network plugin", "eth0"] {
            assert!(message.contains(needle), "{needle}: {message}");
        }
        assert!(env.daemon_pod(&daemon_name(&annotated)).await?.is_none());
        assert_eq!(netns.links()?, ["lo", "eth0"]);
        env.node.run(&["ip", "link", "del", &host_end])?;
        env.no_violations()
    })
}

#[test]
fn nri_split_synchronize_collects_stale_and_ensures_listed() -> Result<()> {
    if !require_root("nri_split_synchronize_collects_stale_and_ensures_listed") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        let stale = unique_name("stale");
        env.daemon
            .create_pod(&stale, &["--annotation", "netns-holder.io/owner=nri"])?;
        let manual = unique_name("manual");
        env.daemon.create_pod(&manual, &[])?;

        let netns = PodNetns::new()?;
        let listed = pod_sandbox("default", "listed", &sandbox_id(), Some(&netns.path()), &[]);
        // Many stopped pods (no network namespace, §10.5) and their containers: a big part.
        let stopped: Vec<pb::PodSandbox> = (0..120)
            .map(|i| pod_sandbox("default", &format!("stopped-{i}"), &sandbox_id(), None, &[]))
            .collect();
        let containers: Vec<pb::Container> = stopped
            .iter()
            .enumerate()
            .map(|(i, p)| container(p, i))
            .collect();
        let mut first = vec![listed.clone()];
        first.extend(stopped);
        let part = pb::SynchronizeRequest {
            pods: first.clone(),
            containers: containers.clone(),
            more: true,
        };
        assert!(part.encode_to_vec().len() >= 20 * 1024);
        let host = pod_sandbox("kube-system", "hostnet", &sandbox_id(), None, &[]);
        let replies = env
            .conn
            .synchronize_split(vec![
                (first, containers),
                (vec![host], vec![]),
                (vec![], vec![]),
            ])
            .await
            .with_context(|| env.plugin.log())?;
        assert_eq!(
            replies.iter().map(|r| r.more).collect::<Vec<_>>(),
            [true, true, false]
        );
        assert!(replies.iter().all(|r| r.update.is_empty()));

        assert!(
            env.daemon_pod(&stale).await?.is_none(),
            "stale nri pod not collected"
        );
        assert!(
            env.daemon_pod(&manual).await?.is_some(),
            "manual pod collected"
        );
        let wired = env
            .daemon_pod(&daemon_name(&listed))
            .await?
            .with_context(|| format!("listed pod not ensured; log:\n{}", env.plugin.log()))?;
        env.ping(&wired.ips[0])?;
        env.conn.remove_pod_sandbox(&listed).await?;
        env.no_violations()
    })
}

#[test]
fn nri_malformed_annotation_fails_the_pod() -> Result<()> {
    if !require_root("nri_malformed_annotation_fails_the_pod") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        env.conn.synchronize(vec![], vec![]).await?;
        let netns = PodNetns::new()?;
        let pod = pod_sandbox(
            "default",
            "bad",
            &sandbox_id(),
            Some(&netns.path()),
            &[("netns-holder.io/skip", "sometimes")],
        );
        let (code, message) = status_of(env.conn.run_pod_sandbox(&pod).await)?;
        assert_eq!(code, 3, "INVALID_ARGUMENT: {message}");
        assert!(message.contains("netns-holder.io/skip"), "{message}");
        assert!(
            message.contains("\"sometimes\" is not a boolean"),
            "{message}"
        );
        assert!(env.daemon_pod(&daemon_name(&pod)).await?.is_none());
        assert_eq!(netns.links()?, ["lo"]);
        env.no_violations()
    })
}

/// The elements of the daemon's host port maps in the node, as `nft -j` prints them.
fn port_elements(node: &Node) -> Result<Vec<String>> {
    let out = node.stdout(&["nft", "-j", "list", "table", "inet", "netns_holder"])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let mut found = Vec::new();
    for item in json["nftables"].as_array().into_iter().flatten() {
        for elem in item["map"]["elem"].as_array().into_iter().flatten() {
            found.push(elem.to_string());
        }
    }
    found.sort();
    Ok(found)
}

#[test]
fn nri_host_ports_published_at_run_released_at_stop() -> Result<()> {
    if !require_root("nri_host_ports_published_at_run_released_at_stop") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        env.conn.synchronize(vec![], vec![]).await?;
        let node = env.node.netns_path();
        let local = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let netns_a = PodNetns::new()?;
        let a = pod_sandbox(
            "default",
            "ports-a",
            &sandbox_id(),
            Some(&netns_a.path()),
            &[("netns-holder.io/ports", "18080:80/tcp, 15353:53/udp")],
        );
        let name_a = daemon_name(&a);

        // RunPodSandbox publishes the ports: the node port reaches the pod.
        env.conn
            .run_pod_sandbox(&a)
            .await
            .with_context(|| env.plugin.log())?;
        let wired = env
            .daemon_pod(&name_a)
            .await?
            .context("no daemon pod after RunPodSandbox")?;
        ensure!(wired.ports.len() == 2, "{wired:?}");
        ensure!(!wired.ports_released);
        let _echo_a = Echo::start(&netns_a.path(), Proto::Tcp, 80)?;
        tcp_probe(&node, local(18080)).context("the node port does not reach pod A")?;
        ensure!(port_elements(&env.node)?.len() == 2);
        // Idempotent.
        env.conn.run_pod_sandbox(&a).await?;

        // StopPodSandbox releases them: the port no longer answers; the pod stays wired.
        env.conn
            .stop_pod_sandbox(&a)
            .await
            .with_context(|| env.plugin.log())?;
        let stopped = env
            .daemon_pod(&name_a)
            .await?
            .context("pod A gone at Stop")?;
        ensure!(stopped.ports_released, "{stopped:?}");
        ensure!(
            port_elements(&env.node)?.is_empty(),
            "rules left after Stop"
        );
        if let Ok(peer) = tcp_probe(&node, local(18080)) {
            bail!("the released port still answers (peer {peer})");
        }
        env.ping(&wired.ips[0])?;
        env.conn.stop_pod_sandbox(&a).await?;

        // Another pod (through StateChange) takes the port now.
        let netns_b = PodNetns::new()?;
        let b = pod_sandbox(
            "default",
            "ports-b",
            &sandbox_id(),
            Some(&netns_b.path()),
            &[("netns-holder.io/ports", "18080:8080")],
        );
        env.conn
            .state_change(pb::Event::RunPodSandbox, &b)
            .await
            .with_context(|| env.plugin.log())?;
        let _echo_b = Echo::start(&netns_b.path(), Proto::Tcp, 8080)?;
        tcp_probe(&node, local(18080)).context("the node port does not reach pod B")?;
        let rules_b = port_elements(&env.node)?;
        ensure!(rules_b.len() == 1, "{rules_b:?}");

        // A Synchronize listing both (e.g. after a plugin restart) neither publishes A's
        // ports again nor fails; nothing drifts.
        env.conn
            .synchronize(vec![a.clone(), b.clone()], vec![])
            .await?;
        ensure!(
            port_elements(&env.node)? == rules_b,
            "Synchronize changed the rules"
        );
        ensure!(
            env.daemon_pod(&name_a)
                .await?
                .is_some_and(|p| p.ports_released),
            "pod A after Synchronize"
        );
        let check = env.daemon.cli_json(&["check"])?;
        ensure!(check["drift"] == serde_json::json!(false), "check: {check}");
        ensure!(
            !env.plugin.log().contains("reconcile failure"),
            "{}",
            env.plugin.log()
        );

        // RemovePodSandbox of A: nothing of A left, B untouched.
        env.conn.remove_pod_sandbox(&a).await?;
        ensure!(env.daemon_pod(&name_a).await?.is_none());
        ensure!(
            !env.node.links()?.contains(&wired.host_veth),
            "host veth left"
        );
        ensure!(netns_a.links()? == ["lo"], "pod side left");
        ensure!(port_elements(&env.node)? == rules_b);
        tcp_probe(&node, local(18080)).context("pod B lost its port")?;

        // B through StateChange: Stop releases, Remove leaves nothing.
        env.conn.state_change(pb::Event::StopPodSandbox, &b).await?;
        ensure!(port_elements(&env.node)?.is_empty());
        env.conn
            .state_change(pb::Event::RemovePodSandbox, &b)
            .await?;
        ensure!(env.daemon_pod(&daemon_name(&b)).await?.is_none());

        // Stop of a sandbox that was never wired (skipped, unknown) succeeds.
        let never = pod_sandbox("default", "never", &sandbox_id(), None, &[]);
        env.conn.stop_pod_sandbox(&never).await?;
        let check = env.daemon.cli_json(&["check"])?;
        ensure!(check["drift"] == serde_json::json!(false), "check: {check}");
        env.no_violations()
    })
}

#[test]
fn nri_malformed_ports_annotation_fails_the_pod() -> Result<()> {
    if !require_root("nri_malformed_ports_annotation_fails_the_pod") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        env.conn.synchronize(vec![], vec![]).await?;
        let netns = PodNetns::new()?;
        for (value, part) in [
            ("8080", "no ':' between host port and container port"),
            ("8080:80/icmp", "protocol \"icmp\""),
            ("8080:80,8080:81", "claim the same host port"),
        ] {
            let pod = pod_sandbox(
                "default",
                "badports",
                &sandbox_id(),
                Some(&netns.path()),
                &[("netns-holder.io/ports", value)],
            );
            let (code, message) = status_of(env.conn.run_pod_sandbox(&pod).await)?;
            ensure!(
                code == 3,
                "INVALID_ARGUMENT expected for {value}: {code} {message}"
            );
            ensure!(
                message.contains("annotation \"netns-holder.io/ports\""),
                "{message}"
            );
            ensure!(message.contains(part), "{value}: {message}");
            ensure!(message.contains("default/badports"), "{message}");
            ensure!(env.daemon_pod(&daemon_name(&pod)).await?.is_none());
        }
        ensure!(netns.links()? == ["lo"]);
        ensure!(port_elements(&env.node)?.is_empty());
        env.no_violations()
    })
}

#[test]
fn nri_large_messages_both_directions() -> Result<()> {
    if !require_root("nri_large_messages_both_directions") {
        return Ok(());
    }
    run_async(async {
        let env = Env::start().await?;
        // Runtime → plugin: a Synchronize of 300 pods and containers (containerd frames
        // it [4096, rest]).
        let pods: Vec<pb::PodSandbox> = (0..300)
            .map(|i| pod_sandbox("default", &format!("gone-{i}"), &sandbox_id(), None, &[]))
            .collect();
        let containers: Vec<pb::Container> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| container(p, i))
            .collect();
        let size = pb::SynchronizeRequest {
            pods: pods.clone(),
            containers: containers.clone(),
            more: false,
        }
        .encoded_len();
        assert!(size >= 100 * 1024, "{size}");
        env.conn.synchronize(pods, containers).await?;

        // Plugin → runtime: an error reply listing 400 malformed options (> 20 KiB), which
        // must reach containerd's reader intact (no ENOMEM: checked by the peer's model).
        let netns = PodNetns::new()?;
        let options: Vec<(String, String)> = (0..400)
            .map(|i| {
                (
                    format!("netns-holder.io/unknown-option-{i:05}"),
                    "x".to_string(),
                )
            })
            .collect();
        let refs: Vec<(&str, &str)> = options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let pod = pod_sandbox("default", "many", &sandbox_id(), Some(&netns.path()), &refs);
        let (code, message) = status_of(env.conn.run_pod_sandbox(&pod).await)?;
        assert_eq!(code, 3);
        assert!(message.len() >= 20 * 1024, "{}", message.len());
        assert!(message.contains("400 malformed"));
        let big_frames: Vec<usize> = env
            .conn
            .frames()
            .into_iter()
            .filter(|(conn, len)| *conn == 1 && *len > 4096)
            .map(|(_, len)| len)
            .collect();
        assert!(!big_frames.is_empty(), "the reply was sent [4096, rest]");
        // And the connection still works.
        let ok = PodNetns::new()?;
        let pod = pod_sandbox("default", "after", &sandbox_id(), Some(&ok.path()), &[]);
        env.conn.run_pod_sandbox(&pod).await?;
        env.conn.remove_pod_sandbox(&pod).await?;
        env.no_violations()
    })
}

#[test]
fn nri_reconnects_after_runtime_restart() -> Result<()> {
    if !require_root("nri_reconnects_after_runtime_restart") {
        return Ok(());
    }
    run_async(async {
        let mut env = Env::start().await?;
        env.conn.synchronize(vec![], vec![]).await?;
        env.no_violations()?;
        // The runtime restarts: connection closed, socket gone, then back.
        let socket = env.scratch.path().join("nri.sock");
        env.conn.close("containerd restarting").await;
        env.runtime = None;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let runtime = NriRuntime::bind(&socket, PeerOptions::default())?;
        let started = Instant::now();
        let conn = runtime
            .accept(WAIT)
            .await
            .with_context(|| format!("no reconnection; log:\n{}", env.plugin.log()))?;
        let handshake = conn.handshake().await?;
        assert_eq!(handshake.registration.plugin_name, "netns-holder");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
        // Synchronize brings the daemon in line; events work again.
        conn.synchronize(vec![], vec![]).await?;
        let netns = PodNetns::new()?;
        let pod = pod_sandbox("default", "again", &sandbox_id(), Some(&netns.path()), &[]);
        conn.run_pod_sandbox(&pod).await?;
        let wired = env.daemon_pod(&daemon_name(&pod)).await?.context("pod")?;
        env.ping(&wired.ips[0])?;
        conn.remove_pod_sandbox(&pod).await?;
        assert!(conn.violations().is_empty(), "{:?}", conn.violations());
        assert!(
            env.plugin.log().contains("reconnecting"),
            "{}",
            env.plugin.log()
        );
        Ok(())
    })
}

#[test]
fn nri_absent_or_hanging_daemon_fails_fast() -> Result<()> {
    if !require_root("nri_absent_or_hanging_daemon_fails_fast") {
        return Ok(());
    }
    run_async(async {
        let scratch = ScratchDir::new("nri")?;
        // A "daemon" that accepts connections and never answers.
        let hanging = scratch.path().join("hanging.sock");
        let listener = std::os::unix::net::UnixListener::bind(&hanging)?;
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        let netns = PodNetns::new()?;
        for (daemon, min, max) in [
            (scratch.path().join("absent.sock"), 0, 1000),
            (hanging, 1300, 1950),
        ] {
            let socket = scratch.path().join(format!("{}.sock", unique_name("nri")));
            let runtime = NriRuntime::bind(&socket, PeerOptions::default())?;
            let plugin = PluginProcess::dial(&socket, &daemon, &scratch)?;
            let conn = runtime.accept(WAIT).await?;
            conn.handshake().await?;
            let pod = pod_sandbox("default", "web", &sandbox_id(), Some(&netns.path()), &[]);
            let started = Instant::now();
            let (code, message) =
                status_of(conn.run_pod_sandbox(&pod).await).with_context(|| plugin.log())?;
            let took = started.elapsed().as_millis();
            assert_eq!(code, 14, "UNAVAILABLE: {message}");
            assert!(message.contains(&daemon.display().to_string()), "{message}");
            assert!(
                (min..max).contains(&took),
                "answered after {took} ms ({message})"
            );
            assert!(conn.violations().is_empty(), "{:?}", conn.violations());
        }
        Ok(())
    })
}
