//! The executor: runs planned [`Action`]s through the [`System`] traits.
//!
//! Two modes:
//! * [`apply_plan`] (create/attach): all or nothing. When step K fails, the undo actions of
//!   steps K-1..1 run in reverse order; the error names the failed step, its object and
//!   every undo that failed too (each undo is attempted even if an earlier one failed).
//! * [`apply_best_effort`] (remove, repair, reconcile): every action is attempted in order,
//!   failures are collected and returned together; [`apply_teardown`] is the same for a
//!   pod's removal plan.
//!
//! The [`fault`] module holds the test-only crash switch (feature `fault-injection`).

use std::fmt;

use slog::{Logger, debug, warn};
use thiserror::Error;

use crate::action::{Action, Step};
use crate::kernel::PauseProcess;
use crate::system::{System, SystemError, VethPair};

/// What a successful action produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The action took effect (or its target was already as wanted).
    Done,
    /// A pause process was started.
    Started(PauseProcess),
    /// A deletion or stop found nothing to delete.
    Absent,
}

/// An action that failed, with its error.
#[derive(Debug)]
pub struct StepFailure {
    /// The action.
    pub action: Action,
    /// Why it failed.
    pub error: SystemError,
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.action, self.error)
    }
}

/// Formats a list of failures as `; a; b` (empty for none).
pub(crate) fn join_failures(failures: &[StepFailure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn undo_summary(failures: &[StepFailure]) -> String {
    if failures.is_empty() {
        "; rolled back".to_string()
    } else {
        format!(
            "; rollback incomplete, {} undo step(s) failed: {}",
            failures.len(),
            join_failures(failures)
        )
    }
}

/// A failed plan.
#[derive(Debug, Error)]
pub enum ExecError {
    /// Step `step` (1-based) failed; completed steps were undone.
    #[error("step {step} ({action}) failed: {source}{}", undo_summary(.undo_failures))]
    StepFailed {
        /// 1-based index of the failed step.
        step: usize,
        /// The failed action.
        action: Action,
        /// Its error.
        #[source]
        source: SystemError,
        /// Undo actions that failed as well (empty when the rollback was complete).
        undo_failures: Vec<StepFailure>,
    },
}

impl ExecError {
    /// Whether everything done before the failure was undone.
    pub fn rolled_back(&self) -> bool {
        match self {
            Self::StepFailed { undo_failures, .. } => undo_failures.is_empty(),
        }
    }
}

/// Runs one action.
pub async fn run_action<S: System>(system: &S, action: &Action) -> Result<Outcome, SystemError> {
    let done = |gone: bool| if gone { Outcome::Done } else { Outcome::Absent };
    match action {
        Action::CreateNetns { path } => system.create_netns(path).await.map(|()| Outcome::Done),
        Action::DeleteNetns { path } => system.delete_netns(path).await.map(done),
        Action::RestoreNetns { path, pause } => system
            .restore_netns(path, pause)
            .await
            .map(|()| Outcome::Done),
        Action::StartPause { id, netns } => {
            system.start_pause(id, netns).await.map(Outcome::Started)
        }
        Action::StopPause {
            process: Some(p), ..
        } => system.stop_pause(p).await.map(done),
        Action::StopPause { id, process: None } => Err(SystemError::other(
            format!("pause of pod {id}"),
            "no process identity to stop",
        )),
        Action::LoopbackUp { netns } => system.loopback_up(netns).await.map(|()| Outcome::Done),
        Action::EnsureBridge { bridge, addresses } => system
            .ensure_bridge(bridge, addresses)
            .await
            .map(|()| Outcome::Done),
        Action::EnableForwarding { ipv6 } => system
            .enable_forwarding(*ipv6)
            .await
            .map(|()| Outcome::Done),
        Action::CreateVeth {
            host,
            peer,
            netns,
            mtu,
            host_mac,
            peer_mac,
            master,
        } => system
            .create_veth(VethPair {
                host,
                peer,
                netns,
                mtu: *mtu,
                host_mac: *host_mac,
                peer_mac: *peer_mac,
                master: master.as_ref(),
            })
            .await
            .map(|()| Outcome::Done),
        Action::EnsureNodeAddresses { link, addresses } => system
            .ensure_node_addresses(link, addresses)
            .await
            .map(|()| Outcome::Done),
        Action::AddNeighbour {
            netns,
            link,
            address,
            mac,
        } => system
            .add_neighbour(netns.as_deref(), link, *address, *mac)
            .await
            .map(|()| Outcome::Done),
        Action::AddHostRoute {
            link,
            address,
            source,
        } => system
            .add_host_route(link, *address, *source)
            .await
            .map(|()| Outcome::Done),
        Action::DeleteLink { netns, link } => {
            system.delete_link(netns.as_deref(), link).await.map(done)
        }
        Action::RetireLink { netns, link } => {
            system.retire_link(netns.as_deref(), link).await.map(done)
        }
        Action::SetMaster { link, master } => system
            .set_master(link, master)
            .await
            .map(|()| Outcome::Done),
        Action::LinkUp { netns, link } => system
            .link_up(netns.as_deref(), link)
            .await
            .map(|()| Outcome::Done),
        Action::SetMtu { netns, link, mtu } => system
            .set_mtu(netns.as_deref(), link, *mtu)
            .await
            .map(|()| Outcome::Done),
        Action::DisableIpv6 { link } => system.disable_ipv6(link).await.map(|()| Outcome::Done),
        Action::NoLinkLocal { link } => system.no_link_local(link).await.map(|()| Outcome::Done),
        Action::DisableDad { netns, link } => system
            .disable_dad(netns, link)
            .await
            .map(|()| Outcome::Done),
        Action::AddAddress {
            netns,
            link,
            address,
        } => system
            .add_address(netns, link, *address)
            .await
            .map(|()| Outcome::Done),
        Action::AddDefaultRoute {
            netns,
            link,
            gateway,
        } => system
            .add_default_route(netns, link, *gateway)
            .await
            .map(|()| Outcome::Done),
        Action::SetHairpin { link } => system.set_hairpin(link).await.map(|()| Outcome::Done),
        Action::EnableRouteLocalnet { link } => system
            .enable_route_localnet(link)
            .await
            .map(|()| Outcome::Done),
        Action::AddHostPorts { elements, .. } => {
            system.add_elements(elements).await.map(|()| Outcome::Done)
        }
        Action::RemoveHostPorts { elements, .. } => {
            system.delete_elements(elements).await.map(|n| done(n > 0))
        }
        Action::FlushConntrack { flushes, .. } => {
            system.flush_conntrack(flushes).await.map(|_| Outcome::Done)
        }
        Action::ReplaceFirewall { table } => {
            system.replace_table(table).await.map(|()| Outcome::Done)
        }
        Action::SyncEgressExempt { exempt } => system
            .sync_egress_exempt(exempt)
            .await
            .map(|()| Outcome::Done),
        Action::AddRoute { cidr, via } => {
            system.add_route(*cidr, *via).await.map(|()| Outcome::Done)
        }
        Action::DeleteRoute { cidr, via } => system.delete_route(*cidr, *via).await.map(done),
    }
}

/// Fills in the process identity of a `StopPause` undo from the outcome of its step.
fn bind_undo(undo: &Action, outcome: Outcome) -> Action {
    match (undo, outcome) {
        (Action::StopPause { id, process: None }, Outcome::Started(p)) => Action::StopPause {
            id: *id,
            process: Some(p),
        },
        _ => undo.clone(),
    }
}

/// The result of a fully applied plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The pause process started by the plan, if any.
    pub pause: Option<PauseProcess>,
}

/// What the steps run so far left: the undo of each (in plan order) and the pause started.
#[derive(Default)]
struct Done {
    undo_log: Vec<Action>,
    applied: Applied,
}

impl Done {
    fn record(&mut self, step: &Step, outcome: Outcome) {
        if let Outcome::Started(p) = outcome {
            self.applied.pause = Some(p);
        }
        if let Some(undo) = &step.undo {
            self.undo_log.push(bind_undo(undo, outcome));
        }
    }

    fn append(&mut self, later: Done) {
        self.undo_log.extend(later.undo_log);
        self.applied.pause = self.applied.pause.or(later.applied.pause);
    }
}

/// A step that failed: its 1-based index, the step and why.
struct Failed<'a> {
    step: usize,
    action: &'a Action,
    source: SystemError,
}

/// Runs `step` (the `index`th, 0-based), logging how long it took.
async fn run_step<'a, S: System>(
    system: &S,
    step: &'a Step,
    index: usize,
    log: &Logger,
) -> Result<Outcome, Failed<'a>> {
    let started = std::time::Instant::now();
    let result = run_action(system, &step.action).await;
    debug!(log, "applied"; "step" => index + 1, "action" => %step.action,
        "us" => started.elapsed().as_micros(), "ok" => result.is_ok());
    match result {
        Ok(outcome) => {
            fault::after_step(fault::Plan::Create, index + 1, Some(&step.action));
            Ok(outcome)
        }
        Err(source) => {
            warn!(log, "step failed, rolling back"; "step" => index + 1, "action" => %step.action, "error" => %source);
            Err(Failed {
                step: index + 1,
                action: &step.action,
                source,
            })
        }
    }
}

/// Runs `steps` (the first being the `first`th of the plan, 0-based) in order, until one
/// fails; what they did goes into `done`.
async fn run_steps<'a, S: System>(
    system: &S,
    steps: &'a [Step],
    first: usize,
    done: &mut Done,
    log: &Logger,
) -> Result<(), Failed<'a>> {
    for (offset, step) in steps.iter().enumerate() {
        let outcome = run_step(system, step, first + offset, log).await?;
        done.record(step, outcome);
    }
    Ok(())
}

/// Undoes what `done` did, in reverse order, and makes the error for `failed`.
async fn roll_back<S: System>(
    system: &S,
    done: Done,
    failed: Failed<'_>,
    log: &Logger,
) -> ExecError {
    let mut undo_failures = Vec::new();
    for undo in done.undo_log.into_iter().rev() {
        debug!(log, "undoing"; "action" => %undo);
        if let Err(error) = run_action(system, &undo).await {
            warn!(log, "undo failed"; "action" => %undo, "error" => %error);
            undo_failures.push(StepFailure {
                action: undo,
                error,
            });
        }
    }
    ExecError::StepFailed {
        step: failed.step,
        action: failed.action.clone(),
        source: failed.source,
        undo_failures,
    }
}

/// Applies `steps` in order; on failure undoes the completed steps in reverse order.
///
/// The first step marked [`Step::alongside`] is started, and the steps after it run while
/// it does. The plan ends (or rolls back) only once both have finished; its undo keeps its
/// place in the order, and a failure of either rolls back everything, the earlier step's
/// error being the one reported.
pub async fn apply_plan<S: System>(
    system: &S,
    steps: &[Step],
    log: &Logger,
) -> Result<Applied, ExecError> {
    fault::after_step(fault::Plan::Create, 0, None);
    let (before, from_alongside) = steps.split_at(
        steps
            .iter()
            .position(|s| s.alongside)
            .unwrap_or(steps.len()),
    );
    let mut done = Done::default();
    if let Err(failed) = run_steps(system, before, 0, &mut done, log).await {
        return Err(roll_back(system, done, failed, log).await);
    }
    if let Some((side, rest)) = from_alongside.split_first() {
        let mut rest_done = Done::default();
        let (side_result, rest_result) = futures::future::join(
            run_step(system, side, before.len(), log),
            run_steps(system, rest, before.len() + 1, &mut rest_done, log),
        )
        .await;
        let side_failed = match side_result {
            Ok(outcome) => {
                done.record(side, outcome);
                None
            }
            Err(failed) => Some(failed),
        };
        done.append(rest_done);
        if let Some(failed) = side_failed.or(rest_result.err()) {
            return Err(roll_back(system, done, failed, log).await);
        }
    }
    Ok(done.applied)
}

/// The result of a best-effort run.
#[derive(Debug, Default)]
pub struct BestEffort {
    /// The pause process started, if a `StartPause` succeeded.
    pub pause: Option<PauseProcess>,
    /// Actions that did something (not `Absent`).
    pub done: Vec<Action>,
    /// Actions that failed.
    pub failures: Vec<StepFailure>,
}

/// Attempts every action in order, collecting failures.
pub async fn apply_best_effort<S: System>(
    system: &S,
    actions: &[Action],
    log: &Logger,
) -> BestEffort {
    best_effort(system, actions, log, None).await
}

/// [`apply_best_effort`] for the removal plan of one pod (the fault switch counts its
/// steps as `remove`).
pub async fn apply_teardown<S: System>(system: &S, actions: &[Action], log: &Logger) -> BestEffort {
    best_effort(system, actions, log, Some(fault::Plan::Remove)).await
}

async fn best_effort<S: System>(
    system: &S,
    actions: &[Action],
    log: &Logger,
    plan: Option<fault::Plan>,
) -> BestEffort {
    let mut result = BestEffort::default();
    if let Some(plan) = plan {
        fault::after_step(plan, 0, None);
    }
    for (index, action) in actions.iter().enumerate() {
        let started = std::time::Instant::now();
        let outcome = run_action(system, action).await;
        debug!(log, "applied"; "action" => %action, "us" => started.elapsed().as_micros(),
            "ok" => outcome.is_ok());
        if let Some(plan) = plan {
            fault::after_step(plan, index + 1, Some(action));
        }
        match outcome {
            Ok(Outcome::Absent) => {}
            Ok(outcome) => {
                if let Outcome::Started(p) = outcome {
                    result.pause = Some(p);
                }
                result.done.push(action.clone());
            }
            Err(error) => {
                warn!(log, "action failed"; "action" => %action, "error" => %error);
                result.failures.push(StepFailure {
                    action: action.clone(),
                    error,
                });
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::fake::FakeSystem;
    use crate::names::{IfName, PodName};

    /// A namespace, a pause alongside, then loopback and a veth: the shape of a create.
    fn steps() -> Vec<Step> {
        let netns = PathBuf::from("/run/netns/web");
        let id = PodName::new("web").unwrap().id();
        let host = id.host_veth_name();
        vec![
            Step::new(
                Action::CreateNetns {
                    path: netns.clone(),
                },
                Action::DeleteNetns {
                    path: netns.clone(),
                },
            ),
            Step::alongside(
                Action::StartPause {
                    id,
                    netns: netns.clone(),
                },
                Action::StopPause { id, process: None },
            ),
            Step::plain(Action::LoopbackUp {
                netns: netns.clone(),
            }),
            Step::new(
                Action::CreateVeth {
                    host: host.clone(),
                    peer: IfName::pod_interface(),
                    netns,
                    mtu: 1500,
                    host_mac: None,
                    peer_mac: None,
                    master: None,
                },
                Action::DeleteLink {
                    netns: None,
                    link: host,
                },
            ),
        ]
    }

    fn log() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    fn position(calls: &[String], prefix: &str) -> usize {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} call in {calls:?}"))
    }

    #[tokio::test]
    async fn the_steps_after_an_alongside_one_run_and_it_counts() {
        let fake = FakeSystem::new();
        let applied = apply_plan(&fake, &steps(), &log()).await.unwrap();
        let snapshot = fake.snapshot();
        assert_eq!(snapshot.processes.len(), 1, "{snapshot:?}");
        assert_eq!(applied.pause, Some(snapshot.processes[0].process));
        assert_eq!(snapshot.host_links.len(), 1, "{snapshot:?}");
    }

    #[tokio::test]
    async fn the_wiring_goes_on_while_the_pause_fails_and_all_of_it_is_undone() {
        let fake = FakeSystem::new();
        fake.fail_on("start_pause");
        let err = apply_plan(&fake, &steps(), &log()).await.unwrap_err();
        assert!(err.rolled_back(), "{err}");
        let ExecError::StepFailed { step, action, .. } = &err;
        assert_eq!(*step, 2, "{err}");
        assert!(matches!(action, Action::StartPause { .. }), "{err}");
        let calls = fake.calls();
        // Run alongside, the steps after the pause did not wait for it (run in order, the
        // failure would have stopped the plan before them).
        let veth = position(&calls, "create_veth");
        assert!(position(&calls, "delete_link") > veth, "{calls:?}");
        assert!(position(&calls, "delete_netns") > veth, "{calls:?}");
        let snapshot = fake.snapshot();
        assert!(
            snapshot.host_links.is_empty() && snapshot.mounts.is_empty(),
            "{snapshot:?}"
        );
    }

    #[tokio::test]
    async fn a_later_failure_stops_the_pause_in_its_place_in_the_undo_order() {
        let fake = FakeSystem::new();
        fake.fail_on("create_veth");
        let err = apply_plan(&fake, &steps(), &log()).await.unwrap_err();
        assert!(err.rolled_back(), "{err}");
        let ExecError::StepFailed { step, .. } = &err;
        assert_eq!(*step, 4, "{err}");
        let calls = fake.calls();
        // Undone in reverse plan order: the pause (by the identity it started with)
        // before the namespace it holds.
        assert!(
            position(&calls, "stop_pause") < position(&calls, "delete_netns"),
            "{calls:?}"
        );
        let snapshot = fake.snapshot();
        assert!(
            snapshot.processes.is_empty() && snapshot.mounts.is_empty(),
            "{snapshot:?}"
        );
    }
}

/// The crash switch for the chaos tests: makes the daemon abort right after step K of the
/// next create or remove plan, like a `kill -9` at that point (no unwinding, no cleanup, no
/// state saved).
///
/// It exists only with the cargo feature `fault-injection`, which only the test crate
/// (`nh-tests`, as a dev-dependency) enables, and it is armed only by the test-only binary
/// `netns-holder-fault` (`required-features = ["fault-injection"]`), from
/// `NETNS_HOLDER_FAULT=crash-after-step:create:K` or `...:remove:K`. Production builds
/// (`make build`, `make install`, `cargo build --workspace --release`) compile neither that
/// binary nor any of this module except the no-op [`after_step`] and the variable's name,
/// which `netns-holder serve` uses to warn that it ignores the variable.
///
/// Steps count from 1 in plan order: for a create, the steps of [`crate::plan::plan_create`]
/// (`K = 0` is right after the `Creating` record is saved, before the kernel is touched);
/// for a remove, the actions of [`crate::plan::plan_remove`] (`K = 0` is right after the
/// `Removing` record is saved). A create step that fails does not count (its rollback
/// follows); a remove action counts whether it succeeded or not. A create step run
/// alongside the next ones (the pause) counts when it finishes, which may be after some of
/// them have.
pub mod fault {
    use crate::action::Action;

    /// The environment variable read by `netns-holder-fault`.
    pub const ENV: &str = "NETNS_HOLDER_FAULT";

    /// Which plan a fault point belongs to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Plan {
        /// The create (or attach) plan.
        Create,
        /// A pod's removal plan.
        Remove,
    }

    /// Called after step `step` of `plan` (0: before the first step); aborts the process
    /// if the armed fault says so. A no-op unless built with `fault-injection` and armed.
    #[inline]
    pub(crate) fn after_step(plan: Plan, step: usize, action: Option<&Action>) {
        #[cfg(feature = "fault-injection")]
        armed::hit(plan, step, action);
        #[cfg(not(feature = "fault-injection"))]
        let _ = (plan, step, action);
    }

    #[cfg(feature = "fault-injection")]
    pub use armed::{Fault, arm, armed, parse};

    #[cfg(feature = "fault-injection")]
    mod armed {
        use std::fmt;
        use std::io::Write as _;
        use std::sync::OnceLock;

        use super::Plan;
        use crate::action::Action;

        /// An armed fault: abort after step `step` of the first `plan` that reaches it.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Fault {
            /// The plan.
            pub plan: Plan,
            /// The step (0 = before the first one).
            pub step: usize,
        }

        impl fmt::Display for Fault {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let plan = match self.plan {
                    Plan::Create => "create",
                    Plan::Remove => "remove",
                };
                write!(f, "crash-after-step:{plan}:{}", self.step)
            }
        }

        static FAULT: OnceLock<Fault> = OnceLock::new();

        /// Parses `crash-after-step:create:K` or `crash-after-step:remove:K`.
        pub fn parse(spec: &str) -> Result<Fault, String> {
            let bad = || {
                format!(
                    "{}={spec:?}: expected crash-after-step:create:K or crash-after-step:remove:K",
                    super::ENV
                )
            };
            let mut parts = spec.trim().split(':');
            if parts.next() != Some("crash-after-step") {
                return Err(bad());
            }
            let plan = match parts.next() {
                Some("create") => Plan::Create,
                Some("remove") => Plan::Remove,
                _ => return Err(bad()),
            };
            let step = parts.next().and_then(|k| k.parse().ok()).ok_or_else(bad)?;
            if parts.next().is_some() {
                return Err(bad());
            }
            Ok(Fault { plan, step })
        }

        /// Arms `fault` for the rest of the process (only the first call counts).
        pub fn arm(fault: Fault) {
            let _ = FAULT.set(fault);
        }

        /// The armed fault, if any.
        pub fn armed() -> Option<Fault> {
            FAULT.get().copied()
        }

        pub(super) fn hit(plan: Plan, step: usize, action: Option<&Action>) {
            let Some(fault) = FAULT.get() else { return };
            if fault.plan != plan || fault.step != step {
                return;
            }
            // Straight to stderr (the logger's thread would not get to write it).
            let what = action.map_or_else(|| "before step 1".to_string(), |a| a.to_string());
            let _ = writeln!(
                std::io::stderr(),
                "FAULT INJECTION: {fault}: aborting after step {step} ({what})"
            );
            std::process::abort();
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            #[test]
            fn parses_specs() {
                assert_eq!(
                    parse("crash-after-step:create:3"),
                    Ok(Fault {
                        plan: Plan::Create,
                        step: 3
                    })
                );
                assert_eq!(
                    parse("crash-after-step:remove:0").map(|f| f.to_string()),
                    Ok("crash-after-step:remove:0".to_string())
                );
                for bad in [
                    "",
                    "crash-after-step",
                    "crash-after-step:create",
                    "crash-after-step:attach:1",
                    "crash-after-step:create:-1",
                    "crash-after-step:create:1:2",
                    "crash:create:1",
                ] {
                    let err = parse(bad).unwrap_err();
                    assert!(err.contains("NETNS_HOLDER_FAULT"), "{err}");
                }
            }
        }
    }
}
