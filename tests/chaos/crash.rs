//! Crash at every step: the test-only daemon aborts right after step K of a create (or a
//! remove) of a pod with a pause and one host port (and of an attach to a namespace someone
//! else made, which must never be deleted), for K = 0, 1, 2, ... until the plan has
//! no step K any more (the operation then succeeds, which ends the sweep). After each crash
//! the daemon is restarted unarmed, and its reconcile must leave the pod either fully
//! working (pause alive and holding the namespace, addresses as reported, ping, the host
//! port answering, `check` clean) or fully gone (no veth, bind mount, pause, nftables
//! element, address allocation or record). Pods the caller was told exist (a bystander
//! made before the sweep, and every survivor) must outlive every later crash and still work.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use nh_tests::invariants::{
    Pod, addresses, assert_node_matches, assert_nothing_left, assert_pod_works,
    assert_state_matches_kernel, check_no_drift, inspect, on_node, ping, pod_id_of,
};
use nh_tests::node::{Daemon, Echo, Node, Proto, in_netns, mounts_under, pause_processes};
use nh_tests::nri_harness::PodNetns;
use nh_tests::{require_root, run_ok, unique_name};

use crate::common::{expect_crash, fault_options, host_port_answers, restart_with_fault};

/// Whether `path` is a mount point (a bind-mounted namespace).
fn is_mounted(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

/// A create plan with a pause and one host port has at least this many steps (v4).
const MIN_CREATE_STEPS: u16 = 12;
/// A remove plan of such a pod has at least this many steps.
const MIN_REMOVE_STEPS: u16 = 3;
/// An attach plan (no namespace, no pause) with one host port has at least this many steps.
const MIN_ATTACH_STEPS: u16 = 10;

/// A pod that must keep working, with the echo server behind its host port.
struct Live {
    pod: Pod,
    port: u16,
    _echo: Echo,
}

impl Live {
    fn new(pod: Pod, port: u16) -> Result<Self> {
        let echo = Echo::start(&pod.netns, Proto::Tcp, 80)?;
        Ok(Self {
            pod,
            port,
            _echo: echo,
        })
    }
}

/// `pod create NAME --publish PORT:80` → the pod.
fn create_published(daemon: &Daemon, name: &str, port: u16) -> Result<Pod> {
    Pod::from_json(&daemon.create_pod(name, &["--publish", &format!("{port}:80")])?)
}

/// Every live pod works (pause, addresses, ping, host port) and the node holds exactly
/// them: no drift, and the state file matches the kernel object by object.
fn all_work(node: &Node, daemon: &Daemon, live: &[Live]) -> Result<()> {
    for l in live {
        assert_pod_works(node, &l.pod)?;
        host_port_answers(node, l.port)?;
    }
    let pods: Vec<Pod> = live.iter().map(|l| l.pod.clone()).collect();
    assert_node_matches(node, daemon, &pods)
}

/// Nothing of pod `name` is left anywhere on the machine (its pause is found by its id).
fn nothing_of(node: &Node, name: &str) -> Result<()> {
    let id = pod_id_of(name)?;
    let pauses: Vec<(u32, String)> = pause_processes()
        .into_iter()
        .filter(|(_, i)| *i == id)
        .collect();
    ensure!(
        pauses.is_empty(),
        "pod {name} is gone, its pause is not: {pauses:?}"
    );
    let veth = format!("nh{}", &id[..12]);
    ensure!(
        !node.links()?.contains(&veth),
        "pod {name} is gone, its host veth {veth} is not"
    );
    Ok(())
}

fn create_sweep(test: &str, dual_stack: bool) -> Result<()> {
    on_node(test, fault_options(dual_stack), |node, daemon| {
        let started = Instant::now();
        // Names unique to this run: pause processes are looked up by pod id machine-wide.
        let prefix = unique_name("cr");
        let bystander = create_published(daemon, &format!("{prefix}-bystander"), 19999)?;
        let mut live = vec![Live::new(bystander, 19999)?];
        let mut outcomes = Vec::new();
        let mut k: u16 = 0;
        loop {
            let spec = format!("crash-after-step:create:{k}");
            restart_with_fault(daemon, Some(&spec))?;
            let name = format!("{prefix}-create-{k}");
            let port = 20000 + k;
            let out = daemon.cli(&["pod", "create", &name, "--publish", &format!("{port}:80")])?;
            if out.status.success() {
                // No step K: every step has been crashed after.
                ensure!(
                    k >= MIN_CREATE_STEPS,
                    "the create plan ended after {k} steps; expected at least {MIN_CREATE_STEPS}"
                );
                let pod = Pod::from_json(&serde_json::from_slice(&out.stdout)?)?;
                live.push(Live::new(pod, port)?);
                all_work(node, daemon, &live)?;
                break;
            }
            expect_crash(daemon, &spec)?;
            restart_with_fault(daemon, None)?;
            let outcome = match inspect(daemon, &name)? {
                Some(pod) => {
                    live.push(Live::new(pod, port)?);
                    "complete"
                }
                None => {
                    nothing_of(node, &name)?;
                    "absent"
                }
            };
            all_work(node, daemon, &live)
                .with_context(|| format!("after a crash on {spec} ({name} {outcome})"))?;
            outcomes.push(format!("{k}:{outcome}"));
            k += 1;
        }
        eprintln!(
            "  create plan ({}): crashed after each of its {k} fault points (0..={}), outcomes \
             {outcomes:?}; {} pod(s) live and working; {:.1?}",
            if dual_stack { "dual-stack" } else { "IPv4" },
            k - 1,
            live.len(),
            started.elapsed()
        );
        let pods: Vec<Pod> = live.iter().map(|l| l.pod.clone()).collect();
        let gc = daemon.cli_json(&["gc"])?;
        ensure!(
            gc["removed"].as_array().map(Vec::len) == Some(pods.len()),
            "gc removed {}, expected {}",
            gc["removed"],
            pods.len()
        );
        assert_nothing_left(node, daemon, &pods)
    })
}

fn remove_sweep(test: &str, dual_stack: bool) -> Result<()> {
    on_node(test, fault_options(dual_stack), |node, daemon| {
        let started = Instant::now();
        // Names unique to this run: pause processes are looked up by pod id machine-wide.
        let prefix = unique_name("cr");
        let bystander = create_published(daemon, &format!("{prefix}-bystander"), 19999)?;
        let live = vec![Live::new(bystander, 19999)?];
        let mut removed = Vec::new();
        let mut k: u16 = 0;
        loop {
            // The daemon runs unarmed here: the pod's create is answered, so it exists.
            let name = format!("{prefix}-remove-{k}");
            let port = 21000 + k;
            let pod = create_published(daemon, &name, port)?;
            let victim = Live::new(pod.clone(), port)?;
            host_port_answers(node, port)?;
            drop(victim);
            let spec = format!("crash-after-step:remove:{k}");
            restart_with_fault(daemon, Some(&spec))?;
            let out = daemon.cli(&["pod", "rm", &name])?;
            removed.push(pod);
            if out.status.success() {
                ensure!(
                    k >= MIN_REMOVE_STEPS,
                    "the remove plan ended after {k} steps; expected at least {MIN_REMOVE_STEPS}"
                );
                restart_with_fault(daemon, None)?;
                nothing_of(node, &name)?;
                all_work(node, daemon, &live)?;
                break;
            }
            expect_crash(daemon, &spec)?;
            restart_with_fault(daemon, None)?;
            // The removal was journaled before the crash: reconcile finishes it.
            ensure!(
                inspect(daemon, &name)?.is_none(),
                "pod {name} survived a crash on {spec} after its removal was journaled"
            );
            nothing_of(node, &name)?;
            all_work(node, daemon, &live)
                .with_context(|| format!("after a crash on {spec} ({name})"))?;
            k += 1;
        }
        eprintln!(
            "  remove plan ({}): crashed after each of its {k} fault points (0..={}); every \
             pod gone after the restart, the bystander working; {:.1?}",
            if dual_stack { "dual-stack" } else { "IPv4" },
            k - 1,
            started.elapsed()
        );
        let pods: Vec<Pod> = live.iter().map(|l| l.pod.clone()).collect();
        drop(live);
        daemon.cli_json(&["gc"])?;
        removed.extend(pods);
        assert_nothing_left(node, daemon, &removed)
    })
}

/// An attached pod works: `eth0` in its (foreign) namespace carries exactly the reported
/// addresses, the node reaches them, and its host port answers.
fn attached_works(node: &Node, pod: &Pod, port: u16) -> Result<()> {
    let seen = addresses(&pod.netns, "eth0")?;
    let reported: BTreeSet<(IpAddr, u8)> = pod.ips.iter().copied().collect();
    ensure!(
        seen == reported,
        "pod {}: eth0 has {seen:?}, the API reported {reported:?}",
        pod.name
    );
    for (ip, _) in &pod.ips {
        ping(&node.netns_path(), *ip)?;
    }
    let _echo = Echo::start(&pod.netns, Proto::Tcp, 80)?;
    host_port_answers(node, port)
}

/// The links inside the namespace at `netns` (`ip -j link show`), once no retired veth end
/// is left there.
fn links_in(netns: &Path) -> Result<Vec<String>> {
    nh_tests::settled_links(&netns.display().to_string(), || {
        nh_tests::link_names(&run_ok(&mut in_netns(
            netns,
            &["ip", "-j", "link", "show"],
        ))?)
    })
}

/// Attach (the NRI/CNI/OCI-hook path: a namespace someone else made, no pause): a crash
/// after every step leaves the pod fully wired or gone, and the foreign namespace is never
/// deleted, only emptied of what we put in it.
#[test]
fn crash_after_every_step_of_attach_ipv4() -> Result<()> {
    if !require_root("crash_after_every_step_of_attach_ipv4") {
        return Ok(());
    }
    on_node(
        "crash_after_every_step_of_attach_ipv4",
        fault_options(false),
        |node, daemon| {
            let started = Instant::now();
            let prefix = unique_name("at");
            let mut namespaces = Vec::new();
            let mut live: Vec<(Pod, u16)> = Vec::new();
            let mut outcomes = Vec::new();
            let mut k: u16 = 0;
            loop {
                let netns = PodNetns::new()?;
                let path = netns.path();
                namespaces.push(netns);
                let spec = format!("crash-after-step:create:{k}");
                restart_with_fault(daemon, Some(&spec))?;
                let name = format!("{prefix}-attach-{k}");
                let port = 22000 + k;
                let out = daemon.cli(&[
                    "pod",
                    "attach",
                    &name,
                    "--netns",
                    &path.display().to_string(),
                    "--publish",
                    &format!("{port}:80"),
                ])?;
                if out.status.success() {
                    ensure!(
                        k >= MIN_ATTACH_STEPS,
                        "the attach plan ended after {k} steps; expected at least \
                         {MIN_ATTACH_STEPS}"
                    );
                    let pod = Pod::from_json(&serde_json::from_slice(&out.stdout)?)?;
                    attached_works(node, &pod, port)?;
                    live.push((pod, port));
                    break;
                }
                expect_crash(daemon, &spec)?;
                restart_with_fault(daemon, None)?;
                let outcome = match inspect(daemon, &name)? {
                    Some(pod) => {
                        live.push((pod, port));
                        "complete"
                    }
                    None => {
                        nothing_of(node, &name)?;
                        ensure!(
                            links_in(&path)? == ["lo"],
                            "after a crash on {spec}, {} holds {:?}: our leftovers",
                            path.display(),
                            links_in(&path)?
                        );
                        "absent"
                    }
                };
                ensure!(
                    is_mounted(&path),
                    "the foreign namespace {} was deleted after a crash on {spec}",
                    path.display()
                );
                for (pod, port) in &live {
                    attached_works(node, pod, *port)?;
                }
                check_no_drift(daemon)?;
                let records = assert_state_matches_kernel(node, daemon)?;
                ensure!(
                    records.len() == live.len(),
                    "{} records, {} live pods",
                    records.len(),
                    live.len()
                );
                outcomes.push(format!("{k}:{outcome}"));
                k += 1;
            }
            eprintln!(
                "  attach plan (IPv4): crashed after each of its {k} fault points (0..={}), \
                 outcomes {outcomes:?}; {:.1?}",
                k - 1,
                started.elapsed()
            );
            let gc = daemon.cli_json(&["gc"])?;
            ensure!(
                gc["removed"].as_array().map(Vec::len) == Some(live.len()),
                "gc removed {}, expected {}",
                gc["removed"],
                live.len()
            );
            for netns in &namespaces {
                ensure!(
                    is_mounted(&netns.path()) && links_in(&netns.path())? == ["lo"],
                    "{} not left as it was found",
                    netns.path().display()
                );
            }
            check_no_drift(daemon)?;
            ensure!(
                assert_state_matches_kernel(node, daemon)?.is_empty(),
                "records left"
            );
            Ok(())
        },
    )
}

#[test]
fn crash_after_every_step_of_create_ipv4() -> Result<()> {
    if !require_root("crash_after_every_step_of_create_ipv4") {
        return Ok(());
    }
    create_sweep("crash_after_every_step_of_create_ipv4", false)
}

#[test]
fn crash_after_every_step_of_remove_ipv4() -> Result<()> {
    if !require_root("crash_after_every_step_of_remove_ipv4") {
        return Ok(());
    }
    remove_sweep("crash_after_every_step_of_remove_ipv4", false)
}

#[test]
fn crash_after_every_step_of_create_dual_stack() -> Result<()> {
    if !require_root("crash_after_every_step_of_create_dual_stack") {
        return Ok(());
    }
    create_sweep("crash_after_every_step_of_create_dual_stack", true)
}

#[test]
fn crash_after_every_step_of_remove_dual_stack() -> Result<()> {
    if !require_root("crash_after_every_step_of_remove_dual_stack") {
        return Ok(());
    }
    remove_sweep("crash_after_every_step_of_remove_dual_stack", true)
}
