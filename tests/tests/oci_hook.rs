//! The OCI hook (`cri-hook oci`) and the bundle generator (`netns-holder pod spec`), with real
//! runtimes and a real daemon in a throwaway node ([`nh_tests::node`]).
//!
//! * runc runs the pause image's root file system (only our pause at `/pause`) with the hook
//!   in its config (`hooks.createRuntime` and `hooks.poststop` running the test's
//!   `cri-hook` against the test daemon) and the `netns-holder.io/name` annotation: once the
//!   container runs, the pod exists in the container's own network namespace (created by
//!   runc in the host, wired by the daemon in the node), `eth0` there carries the pod IP and
//!   the node pings it; after the container is deleted the pod and its host veth are gone.
//! * podman (runtime runc, `--network none`) with our `hooks.d` file, rewritten to the test's
//!   binary and socket and passed with `--hooks-dir`, does the same for a container carrying
//!   the annotation.
//! * a hook whose annotation names somebody else's pod is refused, and the runtime fails the
//!   container; that pod is untouched.
//! * `netns-holder pod spec` writes a config with which runc runs a busybox app inside a pod
//!   made with `pod create`: it sees `eth0` with the pod's address.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nh_tests::node::{Daemon, DaemonOptions, Node, netns_holder_binary};
use nh_tests::oci::{Bundle, ContainerSpec, Namespace, Runner, Runtime};
use nh_tests::{
    ScratchDir, busybox_rootfs, pause_binary, require_root, run_ok, target_dir, unique_name,
    wait_sleeping, wait_until,
};
use serde_json::{Value, json};

/// How long a container may take to finish.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The annotation naming the daemon pod (shared with the NRI plugin).
const NAME_ANNOTATION: &str = "netns-holder.io/name";

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

/// The OCI `hooks` object running our hook at createRuntime and poststop.
fn hooks(socket: &Path) -> Value {
    let hook = |stage: &str| {
        json!({
            "path": cri_hook_binary(),
            "args": ["cri-hook", "oci", stage, "--daemon-socket", socket],
            "timeout": 10,
        })
    };
    json!({
        "createRuntime": [hook("createRuntime")],
        "poststop": [hook("poststop")],
    })
}

/// A bundle whose root holds only our pause at `/pause`, as the pause image's layer does.
fn pause_bundle(dir: &Path) -> Result<Bundle> {
    let bundle = Bundle::create(dir)?;
    std::fs::copy(pause_binary(), bundle.rootfs().join("pause")).context("copying the pause")?;
    Ok(bundle)
}

/// The pause container's config: read-only root, uid/gid 65535, no capabilities, new pod
/// namespaces, our hooks and the pod annotation.
fn pause_config(socket: &Path, pod: &str) -> Value {
    let mut config = ContainerSpec::new(["/pause"])
        .user(65535, 65535)
        .readonly_root(true)
        .capabilities(Vec::<String>::new())
        .to_json();
    config["hooks"] = hooks(socket);
    config["annotations"] = json!({ NAME_ANNOTATION: pod });
    config
}

/// `pod inspect NAME`, or `None` if there is no such pod.
fn inspect(daemon: &Daemon, pod: &str) -> Result<Option<Value>> {
    let out = daemon.cli(&["pod", "inspect", pod])?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(stderr.contains("not found"), "pod inspect {pod}: {stderr}");
        return Ok(None);
    }
    Ok(Some(serde_json::from_slice(&out.stdout)?))
}

/// The pod's first address without its prefix length.
fn first_ip(pod: &Value) -> Result<(String, String)> {
    let cidr = pod["ips"][0]
        .as_str()
        .context("pod has no ips")?
        .to_string();
    let ip = cidr.split('/').next().unwrap_or_default().to_string();
    Ok((cidr, ip))
}

/// Checks that `pod` is wired into the network namespace of `pid`: the daemon's netns is
/// that namespace, `eth0` there has the pod address, and the node pings it.
fn check_wired(node: &Node, daemon: &Daemon, pod: &str, pid: u32) -> Result<Value> {
    let info =
        inspect(daemon, pod)?.with_context(|| format!("no pod {pod} after createRuntime"))?;
    let netns = PathBuf::from(info["netns"].as_str().context("no netns")?);
    let theirs =
        std::fs::read_link(&netns).with_context(|| format!("readlink {}", netns.display()))?;
    let container = Namespace::Network.id_of(pid)?;
    ensure!(
        theirs.to_string_lossy() == container,
        "pod {pod} is in {}, the container (pid {pid}) in {container}",
        theirs.display()
    );
    ensure!(
        container != Namespace::Network.id_of_self()?,
        "the container shares the test's network namespace"
    );
    let (cidr, ip) = first_ip(&info)?;
    let addrs = run_ok(
        Command::new("nsenter")
            .arg("-t")
            .arg(pid.to_string())
            .args(["-n", "ip", "-o", "addr", "show", "eth0"]),
    )?;
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    ensure!(
        addrs.contains(&cidr),
        "eth0 in the container lacks {cidr}: {addrs}"
    );
    node.run(&["ping", "-c", "1", "-W", "2", &ip])
        .with_context(|| format!("the node cannot ping pod {pod} at {ip}"))?;
    eprintln!("pod {pod}: {cidr} in {container}, pingable from the node");
    Ok(info)
}

/// Checks that `pod` and its host veth are gone.
fn check_gone(node: &Node, daemon: &Daemon, pod: &str, info: &Value) -> Result<()> {
    ensure!(
        inspect(daemon, pod)?.is_none(),
        "pod {pod} is still there after the container was deleted"
    );
    let veth = info["host_veth"].as_str().context("no host_veth")?;
    let links = node.links()?;
    ensure!(
        !links.iter().any(|l| l == veth),
        "host veth {veth} is still in the node: {links:?}"
    );
    Ok(())
}

fn with_log(daemon: &Daemon, result: Result<()>) {
    if let Err(e) = result {
        panic!("{e:#}\ndaemon log:\n{}", daemon.log());
    }
}

#[test]
fn oci_hook_runc() {
    if !require_root("oci_hook_runc") {
        return;
    }
    if !Runtime::Runc.is_available() {
        eprintln!("\n*** SKIPPED oci_hook_runc: `runc` is not installed. ***\n");
        return;
    }
    let node = Node::new().unwrap();
    let daemon = Daemon::start(&node, DaemonOptions::default()).unwrap();
    with_log(&daemon, runc_scenario(&node, &daemon));
}

fn runc_scenario(node: &Node, daemon: &Daemon) -> Result<()> {
    let scratch = ScratchDir::new("ocih")?;
    let runner = Runner::new(Runtime::Runc)?;
    let pod = unique_name("hook-");
    let bundle = pause_bundle(&scratch.path().join("pause"))?;
    bundle.write_config_json(&pause_config(&daemon.socket(), &pod))?;

    let mut pause = runner.spawn("hooked", &bundle)?;
    let pid = pause.pid()?;
    wait_sleeping(pid)?;
    let info = check_wired(node, daemon, &pod, pid)?;
    ensure!(
        info["netns"] == format!("/proc/{pid}/ns/net"),
        "the pod was attached as {}, not by the container's pid",
        info["netns"]
    );

    // A second container naming the same pod but in a namespace of its own is refused: its
    // runtime fails it, and the pod stays as it was.
    let intruder = pause_bundle(&scratch.path().join("intruder"))?;
    intruder.write_config_json(&pause_config(&daemon.socket(), &pod))?;
    let failed = runner.spawn("intruder", &intruder);
    let failure = match failed {
        Ok(mut c) => {
            let status = c.wait(TIMEOUT)?;
            format!("{status}: {}", c.stderr()?)
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        failure.contains("refusing"),
        "a container naming another's pod was not refused: {failure}"
    );
    eprintln!("the intruder was refused: {}", failure.trim());
    check_wired(node, daemon, &pod, pid)?;

    // SIGTERM ends the pause; `runc run` then deletes the container, running poststop.
    pause.kill("TERM")?;
    let status = pause.wait(TIMEOUT)?;
    ensure!(status.success(), "the pause exited with {status}");
    pause.delete()?;
    check_gone(node, daemon, &pod, &info)?;
    eprintln!("pod {pod} gone after runc deleted the container");
    Ok(())
}

/// Removes the podman container on drop, even when an assertion failed.
struct PodmanContainer(String);

impl Drop for PodmanContainer {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.0])
            .output();
    }
}

fn podman_available() -> bool {
    Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn oci_hook_podman() {
    if !require_root("oci_hook_podman") {
        return;
    }
    if !podman_available() || !Runtime::Runc.is_available() {
        eprintln!("\n*** SKIPPED oci_hook_podman: podman or runc is not installed. ***\n");
        return;
    }
    let node = Node::new().unwrap();
    let daemon = Daemon::start(&node, DaemonOptions::default()).unwrap();
    with_log(&daemon, podman_scenario(&node, &daemon));
}

fn podman_scenario(node: &Node, daemon: &Daemon) -> Result<()> {
    let scratch = ScratchDir::new("ocip")?;
    // Our hooks.d file, pointed at the test's binary and daemon.
    let shipped = nh_tests::workspace_root().join("cri-hook/hooks.d/netns-holder.json");
    let mut hook: Value = serde_json::from_str(&std::fs::read_to_string(&shipped)?)?;
    ensure!(
        hook["stages"] == json!(["createRuntime", "poststop"]),
        "{hook}"
    );
    hook["hook"]["path"] = json!(cri_hook_binary());
    hook["hook"]["args"] = json!([
        "cri-hook",
        "oci",
        "auto",
        "--daemon-socket",
        daemon.socket()
    ]);
    let hooks_dir = scratch.path().join("hooks.d");
    std::fs::create_dir_all(&hooks_dir)?;
    std::fs::write(hooks_dir.join("netns-holder.json"), hook.to_string())?;

    let rootfs = scratch.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(pause_binary(), rootfs.join("pause"))?;
    let pod = unique_name("podman-");
    let name = unique_name("nh-hook-");
    let container = PodmanContainer(name.clone());
    run_ok(
        Command::new("podman")
            .arg("--hooks-dir")
            .arg(&hooks_dir)
            .args(["run", "-d", "--runtime", "runc", "--network", "none"])
            // Root here lacks CAP_SYS_RESOURCE: podman must not try to raise limits.
            .args([
                "--ulimit",
                "nofile=1024:1024",
                "--ulimit",
                "nproc=1024:1024",
            ])
            .args(["--user", "65535:65535", "--name", &name])
            .arg("--annotation")
            .arg(format!("{NAME_ANNOTATION}={pod}"))
            .arg("--rootfs")
            .arg(&rootfs)
            .arg("/pause"),
    )?;
    let pid_out =
        run_ok(Command::new("podman").args(["inspect", "--format", "{{.State.Pid}}", &name]))?;
    let pid: u32 = String::from_utf8_lossy(&pid_out.stdout)
        .trim()
        .parse()
        .context("podman inspect gave no pid")?;
    wait_sleeping(pid)?;
    let info = check_wired(node, daemon, &pod, pid)?;

    run_ok(Command::new("podman").args(["rm", "-f", "-t", "10", &name]))?;
    drop(container);
    if !wait_until(Duration::from_secs(10), || {
        inspect(daemon, &pod).is_ok_and(|p| p.is_none())
    }) {
        bail!("pod {pod} is still there after podman rm");
    }
    check_gone(node, daemon, &pod, &info)?;
    eprintln!("pod {pod} gone after podman rm");
    Ok(())
}

#[test]
fn pod_spec_bundle_joins_the_pod() {
    if !require_root("pod_spec_bundle_joins_the_pod") {
        return;
    }
    if !Runtime::Runc.is_available() {
        eprintln!("\n*** SKIPPED pod_spec_bundle_joins_the_pod: `runc` is not installed. ***\n");
        return;
    }
    let node = Node::new().unwrap();
    let daemon = Daemon::start(&node, DaemonOptions::default()).unwrap();
    with_log(&daemon, pod_spec_scenario(&daemon));
}

fn pod_spec_scenario(daemon: &Daemon) -> Result<()> {
    let scratch = ScratchDir::new("spec")?;
    let runner = Runner::new(Runtime::Runc)?;
    let pod = unique_name("spec-");
    let created = daemon.create_pod(&pod, &[])?;
    let (cidr, _) = first_ip(&created)?;
    let rootfs = scratch.path().join("rootfs");
    busybox_rootfs(&rootfs)?;
    let bundle = Bundle::create(scratch.path().join("bundle"))?;
    let out = run_ok(
        Command::new(netns_holder_binary())
            .arg("--socket")
            .arg(daemon.socket())
            .args(["pod", "spec", &pod, "--rootfs"])
            .arg(&rootfs)
            .arg("--out")
            .arg(bundle.dir())
            .args(["--", "/bin/busybox", "ip", "-o", "addr", "show", "eth0"]),
    )?;
    let printed: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        printed["config"] == json!(bundle.config_path()),
        "pod spec printed {printed}"
    );
    let config = bundle.config()?;
    ensure!(
        config["process"].get("rlimits").is_none()
            && config["process"].get("oomScoreAdj").is_none(),
        "the config sets rlimits or oomScoreAdj: {}",
        config["process"]
    );
    let finished = runner.run("app", &bundle, TIMEOUT)?;
    ensure!(
        finished.status.success() && finished.stdout.contains(&cidr),
        "the app did not see eth0 with {cidr}: {finished:?}"
    );
    eprintln!("app in pod {pod} saw: {}", finished.stdout.trim());

    // Without --force an existing config.json is kept.
    let again = Command::new(netns_holder_binary())
        .arg("--socket")
        .arg(daemon.socket())
        .args(["pod", "spec", &pod, "--out"])
        .arg(bundle.dir())
        .args(["--", "/bin/true"])
        .output()?;
    ensure!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "pod spec overwrote config.json: {again:?}"
    );
    daemon.remove_pod(&pod)?;
    Ok(())
}
