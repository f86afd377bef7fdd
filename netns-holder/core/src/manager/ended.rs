//! Attached pods that ended without anyone telling the daemon.
//!
//! A runtime normally says when a sandbox stops (NRI StopPodSandbox, CNI DEL), but not
//! always: containerd sends no NRI Stop or Remove for sandboxes that existed before it
//! restarted. A pod we attached to such a sandbox would keep its host ports published as a
//! black hole (connections time out instead of being refused), its IP and its record. So the
//! daemon reacts to the kernel itself ([`crate::system::KernelEvents`], no per-pod poll):
//!
//! * the namespace no longer at the pod's path (the runtime unmounted it, or the
//!   `/proc/<pid>/ns/net` process is gone) while the pod's host veth lives: the namespace is
//!   still held by the sandbox's processes, so only its host ports are withdrawn (as
//!   `release_pod_ports` does);
//! * the host veth gone and the namespace no longer at its path: the namespace was
//!   destroyed (its veth went with it), so the pod is removed;
//! * the host veth gone while the namespace is still at its path: someone deleted our link;
//!   that is drift, which `check` reports and `repair` fixes, so it is only logged.
//!
//! Namespaces the daemon created (`CreatePod`) are its own to hold and are never touched
//! here: a bind mount someone removed is restored by `repair`.

use slog::{info, warn};

use super::{ManagerError, PodManager, SavePolicy};
use crate::kernel::KernelEvent;
use crate::names::PodName;
use crate::record::{Phase, PodRecord};
use crate::system::{System, SystemError};

/// What [`PodManager::handle_kernel_events`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndedReport {
    /// Pods whose namespace left its path: their host ports were withdrawn.
    pub ports_withdrawn: Vec<PodName>,
    /// Pods whose namespace was destroyed: removed.
    pub removed: Vec<PodName>,
    /// Everything that failed, naming the pod.
    pub failures: Vec<String>,
}

impl EndedReport {
    /// Whether nothing happened.
    pub fn is_empty(&self) -> bool {
        self.ports_withdrawn.is_empty() && self.removed.is_empty() && self.failures.is_empty()
    }
}

/// Where the attached pod's namespace stands.
enum NamespaceNow {
    /// Still the pod's, at its path.
    Present,
    /// Not at its path any more (unmounted, or the path names another namespace).
    Left,
}

impl<S: System> PodManager<S> {
    /// Looks at the attached pods a batch of kernel events may concern (see the module
    /// documentation): a deleted link concerns the pod of that host veth; a mount table
    /// change concerns the attached pods with published host ports (only they have
    /// anything to withdraw before their veth goes); lost events concern every attached pod.
    pub async fn handle_kernel_events(&self, events: &[KernelEvent]) -> EndedReport {
        let mounts = events
            .iter()
            .any(|e| matches!(e, KernelEvent::MountsChanged));
        let lost = events.iter().any(|e| matches!(e, KernelEvent::EventsLost));
        let links: std::collections::BTreeSet<&str> = events
            .iter()
            .filter_map(|e| match e {
                KernelEvent::LinkRemoved(name) => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let candidates: Vec<PodName> = self
            .inner()
            .state
            .pods
            .values()
            .filter(|r| r.phase == Phase::Ready && !r.netns_owned())
            .filter(|r| {
                lost || links.contains(r.host_veth.as_str())
                    || (mounts && !r.ports.is_empty() && !r.ports_released)
            })
            .map(|r| r.name.clone())
            .collect();
        let mut report = EndedReport::default();
        for name in candidates {
            if let Err(e) = self.check_attached_pod(&name, &mut report).await {
                report.failures.push(e.to_string());
            }
        }
        report
    }

    /// Checks one attached pod under its lock (a concurrent API call on it goes first, and
    /// the record is read again after).
    async fn check_attached_pod(
        &self,
        name: &PodName,
        report: &mut EndedReport,
    ) -> Result<(), ManagerError> {
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(name).await;
        let Some(record) = self
            .record(name)
            .filter(|r| r.phase == Phase::Ready && !r.netns_owned())
        else {
            return Ok(());
        };
        let system = |source: SystemError| ManagerError::System {
            name: name.clone(),
            source,
        };
        let namespace = self.namespace_now(&record).await.map_err(system)?;
        let veth_alive = self
            .system
            .link_info(None, &record.host_veth)
            .await
            .map_err(system)?
            .is_some();
        match (namespace, veth_alive) {
            (NamespaceNow::Present, true) => Ok(()),
            (NamespaceNow::Present, false) => {
                warn!(self.log, "the host veth of an attached pod was deleted while its namespace lives; check reports it, repair restores it";
                    "pod" => %name, "host_veth" => %record.host_veth, "netns" => %record.netns.display());
                Ok(())
            }
            (NamespaceNow::Left, true) => {
                if self.release_ports_locked(&record).await? {
                    info!(self.log, "the pod's namespace left its path without a word from the runtime; host ports withdrawn";
                        "pod" => %name, "netns" => %record.netns.display(), "ports" => record.ports.len());
                    report.ports_withdrawn.push(name.clone());
                }
                Ok(())
            }
            (NamespaceNow::Left, false) => {
                let failures = self.teardown(&record, SavePolicy::Required).await;
                if failures.is_empty() {
                    info!(self.log, "the pod's namespace is gone without a word from the runtime; pod removed";
                        "pod" => %name, "netns" => %record.netns.display());
                    report.removed.push(name.clone());
                    Ok(())
                } else {
                    Err(ManagerError::Remove {
                        name: name.clone(),
                        failures,
                    })
                }
            }
        }
    }

    /// Whether the namespace at the pod's path is still the one it was attached to (by nsfs
    /// identity; a record without one counts any namespace there as its own).
    async fn namespace_now(&self, record: &PodRecord) -> Result<NamespaceNow, SystemError> {
        let now = self.system.netns_id(&record.netns).await?;
        Ok(match (now, record.netns_id) {
            (Some(now), Some(then)) if now == then => NamespaceNow::Present,
            (Some(_), None) => NamespaceNow::Present,
            _ => NamespaceNow::Left,
        })
    }
}
