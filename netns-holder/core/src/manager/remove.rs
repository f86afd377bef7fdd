//! `remove`, `release_pod_ports`, `gc` and the teardown they share.

use std::collections::BTreeSet;

use slog::{info, warn};

use super::{GcReport, ManagerError, NodeFailure, PodManager, RemoveFailure, SavePolicy};
use crate::action::Action;
use crate::executor;
use crate::firewall;
use crate::kernel::PauseProcess;
use crate::names::PodName;
use crate::plan;
use crate::record::{Phase, PodRecord};
use crate::system::System;

impl<S: System> PodManager<S> {
    /// Tears a pod down: journal `Removing`, then host veth, pause(s), namespace (if ours),
    /// continuing past failures. On full success the record and its addresses are released;
    /// otherwise the record stays `Removing` (addresses held) so a retry or reconcile can
    /// finish. With [`SavePolicy::Required`], a `Removing` that cannot be saved stops it before
    /// the kernel is touched.
    pub(super) async fn teardown(
        &self,
        record: &PodRecord,
        save: SavePolicy,
    ) -> Vec<RemoveFailure> {
        let mut failures = Vec::new();
        {
            let mut inner = self.inner();
            if let Some(r) = inner.state.pods.get_mut(&record.name)
                && r.phase != Phase::Removing
            {
                let previous = r.phase;
                r.phase = Phase::Removing;
                if let Err(e) = self.save_pod(&mut inner, &record.name) {
                    if save == SavePolicy::Required {
                        // Nothing is touched: the pod keeps working, the state file keeps
                        // matching the kernel, and the caller learns why.
                        if let Some(r) = inner.state.pods.get_mut(&record.name) {
                            r.phase = previous;
                        }
                        warn!(self.log, "cannot journal removal; pod left as it is"; "pod" => %record.name, "error" => %e);
                        return vec![RemoveFailure::State(e)];
                    }
                    warn!(self.log, "cannot journal removal"; "pod" => %record.name, "error" => %e);
                }
            }
        }
        // A pause that is not in the record can only exist after a crash between starting it
        // and recording it (create or repair cut short). Ready records with their pause
        // recorded skip the /proc scan, whose cost grows with every process on the node.
        let may_have_unrecorded_pause =
            record.phase != Phase::Ready || (record.wants_pause() && record.pause.is_none());
        let listed = if may_have_unrecorded_pause {
            self.system.list_pauses().await
        } else {
            Ok(Vec::new())
        };
        let extra: Vec<PauseProcess> = match listed {
            Ok(list) => list
                .into_iter()
                .filter(|p| p.id == record.id)
                .map(|p| p.process)
                .collect(),
            Err(e) => {
                failures.push(RemoveFailure::ListPauses(e));
                Vec::new()
            }
        };
        let actions = plan::plan_remove(record, &extra);
        let result = executor::apply_teardown(&self.system, &actions, &self.log).await;
        failures.extend(result.failures.into_iter().map(RemoveFailure::Step));
        let mut inner = self.inner();
        if failures.is_empty() {
            inner.remove_pod(&record.name);
            inner.ipam.release(&record.id);
            if record.netns_owned() {
                inner.state.owned_netns.remove(&record.netns);
            }
            if let Err(e) = self.save_pod(&mut inner, &record.name) {
                failures.push(RemoveFailure::State(e));
            }
            info!(self.log, "pod removed"; "pod" => %record.name);
        } else {
            warn!(self.log, "pod removal incomplete"; "pod" => %record.name, "failures" => failures.len());
        }
        failures
    }

    /// Removes pod `name`. Idempotent: a pod that does not exist is `Ok(false)`; missing
    /// pieces (namespace, link, pause) are not errors. Every failure is reported.
    pub async fn remove(&self, name: &PodName) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(name).await;
        let Some(record) = self.record(name) else {
            return Ok(false);
        };
        let failures = self.teardown(&record, SavePolicy::Required).await;
        if failures.is_empty() {
            Ok(true)
        } else {
            Err(ManagerError::Remove {
                name: name.clone(),
                failures,
            })
        }
    }

    /// Whether the ports of `record` are held against other pods: unless they are released,
    /// and even then while an operation on that pod is in flight (a release between saving
    /// its record and deleting its elements, whose keys a new pod's elements would clash
    /// with). Called under the state lock.
    pub(super) fn holds_ports(&self, record: &PodRecord) -> bool {
        !record.ports_released || self.pod_locks.busy(&record.name)
    }

    /// Withdraws the host ports of pod `name` and frees them for other pods; the pod stays
    /// wired otherwise (what a runtime's StopPodSandbox calls for). The record is saved
    /// released first, then the map elements are deleted and UDP conntrack entries flushed
    /// as `remove` does, so a crash in between leaves only elements no record wants, which
    /// `check` reports and `repair` (and the start-up reconcile) removes. Idempotent:
    /// `Ok(false)` when the pod has no ports or they were released already (their elements
    /// are not touched again: another pod may own those keys now). A later `create` or
    /// `attach` of the pod with the same ports returns it unchanged, without publishing them
    /// again. A pod that does not exist (or is not ready) is [`ManagerError::NotFound`].
    pub async fn release_pod_ports(&self, name: &PodName) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(name).await;
        let record = match self.record(name) {
            Some(r) if r.phase == Phase::Ready => r,
            _ => return Err(ManagerError::NotFound { name: name.clone() }),
        };
        self.release_ports_locked(&record).await
    }

    /// [`PodManager::release_pod_ports`] of the ready `record`, whose pod lock the caller
    /// holds (with the barrier shared).
    pub(super) async fn release_ports_locked(
        &self,
        record: &PodRecord,
    ) -> Result<bool, ManagerError> {
        let name = &record.name;
        if record.ports.is_empty() || record.ports_released {
            return Ok(false);
        }
        let elements = plan::record_elements(&PodRecord {
            ports_released: false,
            ..record.clone()
        });
        {
            let mut inner = self.inner();
            if let Some(r) = inner.state.pods.get_mut(name) {
                r.ports_released = true;
            }
            if let Err(e) = self.save(&mut inner) {
                if let Some(r) = inner.state.pods.get_mut(name) {
                    r.ports_released = false;
                }
                return Err(e.into());
            }
        }
        let mut actions = vec![Action::RemoveHostPorts {
            pod: name.clone(),
            elements: elements.clone(),
        }];
        let flushes = firewall::conntrack_flushes(&elements);
        if !flushes.is_empty() {
            actions.push(Action::FlushConntrack {
                pod: name.clone(),
                flushes,
            });
        }
        let result = executor::apply_best_effort(&self.system, &actions, &self.log).await;
        if !result.failures.is_empty() {
            warn!(self.log, "host ports released in the record, but withdrawing them failed; repair removes them";
                "pod" => %name, "failures" => result.failures.len());
            return Err(ManagerError::Release {
                name: name.clone(),
                failures: result.failures,
            });
        }
        info!(self.log, "host ports released"; "pod" => %name, "ports" => record.ports.len());
        Ok(true)
    }

    /// Removes every pod whose name or id is not in `keep`.
    pub async fn gc(&self, keep: &BTreeSet<String>) -> GcReport {
        let _exclusive = self.barrier.write().await;
        let mut report = GcReport::default();
        for record in self.records() {
            if keep.contains(record.name.as_str()) || keep.contains(record.id.as_str()) {
                report.kept.push(record.name.clone());
                continue;
            }
            let failures = self.teardown(&record, SavePolicy::Required).await;
            if failures.is_empty() {
                report.removed.push(record.name.clone());
            } else {
                report.failures.push(NodeFailure {
                    pod: Some(record.name.clone()),
                    error: ManagerError::Remove {
                        name: record.name.clone(),
                        failures,
                    }
                    .to_string(),
                });
            }
        }
        report
    }
}
