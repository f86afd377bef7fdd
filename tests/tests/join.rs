//! Joining the pod: app containers share the network namespace the pause container holds.
//!
//! For runc and for crun: start our pause from an otherwise empty, read-only root file system
//! as uid/gid 65535 in fresh pid/network/ipc/uts/mount namespaces; add a uniquely named veth
//! pair to its network namespace; start two busybox app containers that join that namespace by path
//! (`/proc/<pause pid>/ns/net`); check that they see the same interfaces and reach each other
//! over 127.0.0.1; then stop everything and check that nothing is left.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nh_tests::oci::{
    Bundle, ContainerSpec, Namespace, Runner, Runtime, leftover_cgroups, processes_in_namespace,
};
use nh_tests::{
    ScratchDir, busybox_rootfs, pause_binary, proc_status_field, require_root, run_ok, unique_name,
    wait_sleeping, wait_until,
};

/// The uid and gid the pause runs as (as the Kubernetes pause image does).
const PAUSE_ID: u32 = 65535;

/// The listener's port: any port works, the pod's network namespace is private to the test.
const PORT: u16 = 18080;

/// How long any single container may take to finish its work.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Marks the end of the interface list in app B's output.
const SEPARATOR: &str = "--- end of interfaces ---";

#[test]
fn join_runc() {
    if !require_root("join_runc") {
        return;
    }
    join_pod(Runtime::Runc).unwrap();
}

#[test]
fn join_crun() {
    if !require_root("join_crun") {
        return;
    }
    join_pod(Runtime::Crun).unwrap();
}

fn join_pod(runtime: Runtime) -> Result<()> {
    if !runtime.is_available() {
        eprintln!("\n*** SKIPPED join_{runtime}: `{runtime}` is not installed. ***\n");
        return Ok(());
    }
    let scratch = ScratchDir::new("join")?;
    let runner = Runner::new(runtime)?;

    // 1. The pause: only /pause in its root, read-only, uid/gid 65535, new pod namespaces.
    let pause_bundle = Bundle::create(scratch.path().join("pause"))?;
    std::fs::copy(pause_binary(), pause_bundle.rootfs().join("pause"))
        .context("copying the pause")?;
    let entries: Vec<_> = std::fs::read_dir(pause_bundle.rootfs())?.collect::<Result<_, _>>()?;
    ensure!(
        entries.len() == 1,
        "the pause rootfs holds more than /pause: {entries:?}"
    );
    pause_bundle.write_config(
        &ContainerSpec::new(["/pause"])
            .user(PAUSE_ID, PAUSE_ID)
            .readonly_root(true)
            .capabilities(Vec::<String>::new()),
    )?;
    let mut pause = runner.spawn("pause", &pause_bundle)?;
    let pause_pid = pause.pid()?;
    wait_sleeping(pause_pid)?;
    for field in ["Uid", "Gid"] {
        let ids =
            proc_status_field(pause_pid, field).with_context(|| format!("{field} of the pause"))?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        ensure!(
            ids == ["65535"; 4],
            "pause {field} (real, effective, saved, fs) is {ids:?}, not 65535"
        );
    }
    let pod_netns = Namespace::Network.id_of(pause_pid)?;
    let own_netns = Namespace::Network.id_of_self()?;
    ensure!(
        pod_netns != own_netns,
        "the pause shares the test's network namespace {own_netns}"
    );
    eprintln!(
        "[{runtime}] pause pid {pause_pid} runs as 65535:65535 in {pod_netns} (test: {own_netns})"
    );

    // 2. Uniquely named interfaces in the pod's network namespace, and loopback up (runtimes
    //    bring `lo` up in a new network namespace, but the OCI spec does not say so). A veth
    //    pair with both ends in the pod: unlike `dummy`, veth is in every container kernel
    //    (this VM's kernel has no CONFIG_DUMMY), and nothing outside the pod is touched.
    let marker = unique_name("nhv");
    let peer = unique_name("nhp");
    let nsenter = |args: &[&str]| -> Result<String> {
        let output = run_ok(
            Command::new("nsenter")
                .arg("-t")
                .arg(pause_pid.to_string())
                .arg("-n")
                .args(args),
        )?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    };
    nsenter(&[
        "ip", "link", "add", &marker, "type", "veth", "peer", "name", &peer,
    ])?;
    nsenter(&["ip", "link", "set", "lo", "up"])?;

    // 3. Two busybox apps joined to the pod's network namespace by path, sharing one
    //    read-only root file system.
    let app_rootfs = scratch.path().join("app-rootfs");
    busybox_rootfs(&app_rootfs)?;
    let app_spec = |args: Vec<String>| {
        ContainerSpec::new(args)
            .rootfs(&app_rootfs)
            .readonly_root(true)
            .join_namespace(Namespace::Network, Namespace::Network.path_of(pause_pid))
    };
    let token = format!("token-{}", unique_name("join"));

    // App A: a persistent TCP server on 127.0.0.1:PORT that answers every connection with
    // the token (`-ll -e` forks the program per connection).
    let a_bundle = Bundle::create(scratch.path().join("app-a"))?;
    a_bundle.write_config(&app_spec(
        [
            "/bin/busybox",
            "nc",
            "-ll",
            "-p",
            &PORT.to_string(),
            "127.0.0.1",
            "-e",
            "/bin/busybox",
            "echo",
            &token,
        ]
        .map(String::from)
        .to_vec(),
    ))?;
    let mut app_a = runner.spawn("app-a", &a_bundle)?;
    let a_pid = app_a.pid()?;
    if !wait_until(TIMEOUT, || listening(pause_pid, PORT)) {
        bail!(
            "app A does not listen on 127.0.0.1:{PORT}: {}",
            app_a.stderr()?
        );
    }

    // App B: prints its interfaces, then what 127.0.0.1:PORT answers, then waits for its
    // stdin to close so that the test can inspect its namespaces while it is alive.
    let b_bundle = Bundle::create(scratch.path().join("app-b"))?;
    let script = format!(
        "set -e; busybox ip -o link; echo '{SEPARATOR}'; busybox nc -w 5 127.0.0.1 {PORT} </dev/null; read -r _ || true"
    );
    b_bundle.write_config(&app_spec(vec!["/bin/sh".into(), "-c".into(), script]))?;
    let mut app_b = runner.spawn("app-b", &b_bundle)?;
    let b_pid = app_b.pid()?;

    for (name, pid) in [("app A", a_pid), ("app B", b_pid)] {
        let netns = Namespace::Network.id_of(pid)?;
        ensure!(
            netns == pod_netns,
            "{name} is in {netns}, the pause in {pod_netns}"
        );
        ensure!(
            netns != own_netns,
            "{name} is in the test's own network namespace"
        );
    }
    // B has printed everything once its output holds the token; then let it finish.
    if !wait_until(TIMEOUT, || {
        app_b.stdout().is_ok_and(|out| out.contains(&token))
    }) {
        bail!(
            "app B did not receive the token:\nstdout: {}\nstderr: {}",
            app_b.stdout()?,
            app_b.stderr()?
        );
    }
    app_b.close_stdin();
    let b_status = app_b.wait(TIMEOUT)?;
    let b_out = app_b.stdout()?;
    ensure!(
        b_status.success(),
        "app B exited with {b_status}: {b_out}\n{}",
        app_b.stderr()?
    );
    app_b.delete()?;

    let (b_links, b_received) = b_out
        .split_once(SEPARATOR)
        .context("no separator in app B's output")?;
    let pod_links = nsenter(&[nh_tests::BUSYBOX, "ip", "-o", "link"])?;
    eprintln!("[{runtime}] pod interfaces:\n{pod_links}[{runtime}] app B saw:\n{b_out}");
    let b_names = interface_names(b_links);
    ensure!(
        b_names.contains(&marker) && b_names.contains(&peer),
        "app B does not see the pod's veth pair {marker}/{peer}: {b_links}"
    );
    ensure!(
        b_links.trim() == pod_links.trim(),
        "app B's interfaces differ from the pod's:\n{b_links}\nvs\n{pod_links}"
    );
    ensure!(
        b_received.trim() == token,
        "app B received {:?}, expected {token:?}",
        b_received.trim()
    );

    // 4. Stop everything. A busybox nc as PID 1 of its PID namespace ignores SIGTERM (no
    //    handler), so it is killed; the pause must end with status 0 on SIGTERM.
    app_a.kill("KILL")?;
    let a_status = app_a.wait(TIMEOUT)?;
    eprintln!("[{runtime}] app A ended with {a_status} after SIGKILL");
    app_a.delete()?;

    pause.kill("TERM")?;
    let pause_status = pause.wait(TIMEOUT)?;
    ensure!(
        pause_status.success(),
        "the pause exited with {pause_status} on SIGTERM, not 0"
    );
    pause.delete()?;
    eprintln!("[{runtime}] pause exited 0 on SIGTERM");

    let listed = runner.list()?;
    ensure!(
        listed.is_empty(),
        "{runtime} still lists containers {listed:?}"
    );
    let state = runner.state_entries()?;
    ensure!(state.is_empty(), "state directory still holds {state:?}");
    for (name, pid) in [("pause", pause_pid), ("app A", a_pid), ("app B", b_pid)] {
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "{name} (pid {pid}) is still there"
        );
    }
    let members = processes_in_namespace(Namespace::Network, &pod_netns);
    ensure!(
        members.is_empty(),
        "processes {members:?} are still in the pod network namespace"
    );
    for container in [&pause, &app_a, &app_b] {
        let cgroups = leftover_cgroups(container.id());
        ensure!(
            cgroups.is_empty(),
            "cgroups left for {}: {cgroups:?}",
            container.id()
        );
    }
    Ok(())
}

/// Whether a TCP socket listens on 127.0.0.1:`port` in the network namespace of `pid`.
fn listening(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
    })
}

/// Interface names from `ip -o link` output (`1: lo: <...> ...`, one interface a line).
fn interface_names(links: &str) -> Vec<String> {
    links
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| {
            name.trim()
                .split('@')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}
