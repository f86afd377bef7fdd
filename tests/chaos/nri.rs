//! NRI misbehaviour, between the runtime-side peer ([`nh_tests::nri_peer`]) and the real
//! `cri-hook nri` and daemon:
//! * events twice: RunPodSandbox twice keeps one pod with the same address; RemovePodSandbox
//!   twice, and for a sandbox never seen, succeed;
//! * out of order: RemovePodSandbox before StopPodSandbox removes the pod, and the late Stop
//!   (twice) succeeds without bringing anything back;
//! * the daemon killed while a RunPodSandbox waits for it: the runtime gets an error, not a
//!   hang, and the retry after the restart wires the pod;
//! * the runtime disconnecting in the middle of a RunPodSandbox: the plugin reconnects and
//!   registers again, and the Synchronize that follows lists pods the daemon never saw (they
//!   are wired), lists the one cut off (it is wired), and misses a pod the daemon has from
//!   NRI (it is removed) — while a pod made by hand is kept.
//!
//! At the end the daemon's pods are exactly the runtime's plus the manual one, every one
//! answers ping, `check` is clean and the state file matches the kernel; no protocol
//! violation was seen.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nh_tests::invariants::{assert_state_matches_kernel, check_no_drift};
use nh_tests::nri_harness::{Env, PodNetns, WAIT, daemon_name, run_async, sandbox_id};
use nh_tests::nri_peer::pod_sandbox;
use nh_tests::{require_root, unique_name};
use nri::pb;

/// A sandbox with a namespace of its own.
struct Sandbox {
    pod: pb::PodSandbox,
    _netns: PodNetns,
}

impl Sandbox {
    fn new(name: &str) -> Result<Self> {
        let netns = PodNetns::new()?;
        let pod = pod_sandbox("chaos", name, &sandbox_id(), Some(&netns.path()), &[]);
        Ok(Self { pod, _netns: netns })
    }

    fn daemon_name(&self) -> String {
        daemon_name(&self.pod)
    }
}

/// The daemon's pod names.
async fn daemon_pods(env: &Env) -> Result<BTreeSet<String>> {
    let mut client = env.client().await?;
    Ok(client
        .list_pods()
        .await?
        .pods
        .into_iter()
        .map(|p| p.name)
        .collect())
}

#[test]
fn nri_events_twice_out_of_order_and_a_runtime_disconnect_mid_request() -> Result<()> {
    if !require_root("nri_events_twice_out_of_order_and_a_runtime_disconnect_mid_request") {
        return Ok(());
    }
    run_async(async {
        let mut env = Env::start().await?;
        let result = scenario(&mut env).await;
        if let Err(e) = &result {
            eprintln!(
                "\n*** NRI chaos FAILED: {e:#}\n--- plugin log ---\n{}\n--- daemon log ---\n{}",
                env.plugin.log(),
                env.daemon.log()
            );
        }
        result
    })
}

async fn scenario(env: &mut Env) -> Result<()> {
    env.conn.synchronize(vec![], vec![]).await?;
    let manual = unique_name("manual");
    env.daemon.create_pod(&manual, &[])?;

    // Events twice.
    let a = Sandbox::new("a")?;
    env.conn.run_pod_sandbox(&a.pod).await?;
    let wired_a = env
        .daemon_pod(&a.daemon_name())
        .await?
        .context("a not wired")?;
    env.conn.run_pod_sandbox(&a.pod).await?;
    let again = env.daemon_pod(&a.daemon_name()).await?.context("a gone")?;
    ensure!(
        again.ips == wired_a.ips && again.host_veth == wired_a.host_veth,
        "a second RunPodSandbox rewired the pod"
    );

    // Remove before Stop, each twice; Remove of a sandbox never seen.
    let b = Sandbox::new("b")?;
    env.conn.run_pod_sandbox(&b.pod).await?;
    let wired_b = env
        .daemon_pod(&b.daemon_name())
        .await?
        .context("b not wired")?;
    env.conn.remove_pod_sandbox(&b.pod).await?;
    env.conn.remove_pod_sandbox(&b.pod).await?;
    env.conn.stop_pod_sandbox(&b.pod).await?;
    env.conn.stop_pod_sandbox(&b.pod).await?;
    ensure!(
        env.daemon_pod(&b.daemon_name()).await?.is_none(),
        "b came back after a late Stop"
    );
    ensure!(
        !env.node.links()?.contains(&wired_b.host_veth),
        "b's veth is left"
    );
    let ghost = Sandbox::new("ghost")?;
    env.conn.remove_pod_sandbox(&ghost.pod).await?;
    env.conn.stop_pod_sandbox(&ghost.pod).await?;

    // A pod from NRI that the runtime will have forgotten by the resync.
    let f = Sandbox::new("forgotten")?;
    env.conn.run_pod_sandbox(&f.pod).await?;
    ensure!(env.daemon_pod(&f.daemon_name()).await?.is_some());

    // The daemon dies while a RunPodSandbox waits for it: an error, then the retry works.
    let k = Sandbox::new("killed")?;
    env.daemon.kill9();
    let refused = tokio::time::timeout(WAIT, env.conn.run_pod_sandbox(&k.pod))
        .await
        .context("RunPodSandbox hung with the daemon down")?;
    ensure!(
        refused.is_err(),
        "RunPodSandbox succeeded with the daemon down"
    );
    env.daemon.spawn()?;
    env.conn.run_pod_sandbox(&k.pod).await?;

    // The runtime goes away in the middle of a RunPodSandbox: as soon as the plugin has
    // received it (its log shows one more RunPodSandbox request), before the answer.
    let c = Sandbox::new("cut")?;
    let runs = |log: &str| log.matches("method: RunPodSandbox").count();
    let before = runs(&env.plugin.log());
    let received = async {
        while runs(&env.plugin.log()) == before {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    let cut = tokio::select! {
        _ = env.conn.run_pod_sandbox(&c.pod) => false,
        _ = tokio::time::timeout(WAIT, received) => true,
    };
    env.conn.close("runtime connection lost").await;
    env.no_violations()?;
    let runtime = env.runtime.as_ref().context("no runtime socket")?;
    let conn = runtime
        .accept(WAIT)
        .await
        .with_context(|| format!("the plugin did not reconnect; log:\n{}", env.plugin.log()))?;
    conn.handshake().await?;
    env.conn = conn;

    // The resync: a, k and the cut-off c are listed, e is new to the daemon, f is missing.
    let e = Sandbox::new("new")?;
    env.conn
        .synchronize(
            vec![a.pod.clone(), k.pod.clone(), c.pod.clone(), e.pod.clone()],
            vec![],
        )
        .await?;
    let expected: BTreeSet<String> = [&a, &k, &c, &e]
        .iter()
        .map(|s| s.daemon_name())
        .chain([manual.clone()])
        .collect();
    let pods = daemon_pods(env).await?;
    ensure!(
        pods == expected,
        "after the resync the daemon has {pods:?}, expected {expected:?}"
    );
    for s in [&a, &k, &c, &e] {
        let wired = env
            .daemon_pod(&s.daemon_name())
            .await?
            .with_context(|| format!("{} not wired", s.daemon_name()))?;
        env.ping(&wired.ips[0])?;
    }
    let a_now = env.daemon_pod(&a.daemon_name()).await?.context("a")?;
    ensure!(a_now.ips == wired_a.ips, "a was rewired by the resync");
    check_no_drift(&env.daemon)?;
    assert_state_matches_kernel(&env.node, &env.daemon)?;
    eprintln!(
        "  NRI: duplicate and out-of-order events, a daemon kill and a runtime disconnect \
         ({}); after the resync the daemon has exactly {} pods",
        if cut {
            "mid-request"
        } else {
            "just after the answer"
        },
        pods.len()
    );

    for s in [&a, &k, &c, &e] {
        env.conn.remove_pod_sandbox(&s.pod).await?;
    }
    ensure!(
        daemon_pods(env).await? == BTreeSet::from([manual.clone()]),
        "pods left after removing every sandbox"
    );
    check_no_drift(&env.daemon)?;
    env.no_violations()
}
