//! The executor: runs planned [`Action`]s through the [`System`] traits.
//!
//! Two modes:
//! * [`apply_plan`] (create/attach): all or nothing. When step K fails, the undo actions of
//!   steps K-1..1 run in reverse order; the error names the failed step, its object and
//!   every undo that failed too (each undo is attempted even if an earlier one failed).
//! * [`apply_best_effort`] (remove, repair, reconcile): every action is attempted in order,
//!   failures are collected and returned together.

use std::fmt;

use slog::{Logger, debug, warn};
use thiserror::Error;

use crate::plan::{Action, Step};
use crate::system::{PauseProcess, System, SystemError};

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
        } => system
            .create_veth(host, peer, netns, *mtu)
            .await
            .map(|()| Outcome::Done),
        Action::DeleteLink { netns, link } => {
            system.delete_link(netns.as_deref(), link).await.map(done)
        }
        Action::SetMaster { link, master } => system
            .set_master(link, master)
            .await
            .map(|()| Outcome::Done),
        Action::LinkUp { netns, link } => system
            .link_up(netns.as_deref(), link)
            .await
            .map(|()| Outcome::Done),
        Action::RenameLink { netns, from, to } => system
            .rename_link(netns, from, to)
            .await
            .map(|()| Outcome::Done),
        Action::SetMtu { netns, link, mtu } => system
            .set_mtu(netns.as_deref(), link, *mtu)
            .await
            .map(|()| Outcome::Done),
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
            id: id.clone(),
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

/// Applies `steps` in order; on failure undoes the completed steps in reverse order.
pub async fn apply_plan<S: System>(
    system: &S,
    steps: &[Step],
    log: &Logger,
) -> Result<Applied, ExecError> {
    let mut undo_log: Vec<Action> = Vec::new();
    let mut applied = Applied::default();
    for (index, step) in steps.iter().enumerate() {
        debug!(log, "applying"; "step" => index + 1, "action" => %step.action);
        match run_action(system, &step.action).await {
            Ok(outcome) => {
                if let Outcome::Started(p) = outcome {
                    applied.pause = Some(p);
                }
                if let Some(undo) = &step.undo {
                    undo_log.push(bind_undo(undo, outcome));
                }
            }
            Err(source) => {
                warn!(log, "step failed, rolling back"; "step" => index + 1, "action" => %step.action, "error" => %source);
                let mut undo_failures = Vec::new();
                for undo in undo_log.into_iter().rev() {
                    debug!(log, "undoing"; "action" => %undo);
                    if let Err(error) = run_action(system, &undo).await {
                        warn!(log, "undo failed"; "action" => %undo, "error" => %error);
                        undo_failures.push(StepFailure {
                            action: undo,
                            error,
                        });
                    }
                }
                return Err(ExecError::StepFailed {
                    step: index + 1,
                    action: step.action.clone(),
                    source,
                    undo_failures,
                });
            }
        }
    }
    Ok(applied)
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
    let mut result = BestEffort::default();
    for action in actions {
        debug!(log, "applying"; "action" => %action);
        match run_action(system, action).await {
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
