//! More host ports for a pod that exists, and the check that keeps `attach` off a namespace
//! another network plugin wired.
//!
//! On containerd a pod's network comes from a CNI plugin (our CNI entry, with the CRI host
//! ports), and the NRI plugin adds what CNI cannot: the host ports of the
//! `netns-holder.io/ports` annotation. [`PodManager::publish_pod_ports`] adds them to the
//! pod the CNI entry made, with the same rules as at create (taken ports, node sockets,
//! families), and a mapping that clashes with one the pod already has is refused naming both.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use slog::{info, warn};

use super::{ManagerError, PodInfo, PodManager};
use crate::action::Action;
use crate::executor;
use crate::firewall;
use crate::names::PodName;
use crate::plan;
use crate::ports::{self, PortMapping};
use crate::record::Phase;
use crate::system::System;

/// What [`PodManager::publish_pod_ports`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedPorts {
    /// The pod, with every host port it has now.
    pub pod: PodInfo,
    /// The mappings published now (those the pod had already are not counted; none when
    /// its ports were released).
    pub added: Vec<PortMapping>,
}

impl<S: System> PodManager<S> {
    /// Publishes `ports` as further host ports of the ready pod `name` (what the NRI plugin
    /// calls for the annotation ports of a pod whose network the CNI entry made).
    /// Idempotent: mappings the pod has already are skipped. Refused, with nothing changed:
    /// a mapping overlapping another of the pod's own (naming both), one another pod or a
    /// node socket holds ([`ManagerError::PortInUse`]), one whose family the pod has no
    /// address of. A pod whose ports were released (its sandbox stopped) gets none: they
    /// stay released. The record is saved before the map elements are added, so a crash in
    /// between leaves elements that `repair` adds; a failed add puts the record back.
    pub async fn publish_pod_ports(
        &self,
        name: &PodName,
        ports: Vec<PortMapping>,
    ) -> Result<PublishedPorts, ManagerError> {
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(name).await;
        let record = match self.record(name) {
            Some(r) if r.phase == Phase::Ready => r,
            _ => return Err(ManagerError::NotFound { name: name.clone() }),
        };
        ports::validate(&ports).map_err(|source| ManagerError::Ports {
            name: name.clone(),
            source,
        })?;
        let unchanged = |record| PublishedPorts {
            pod: PodInfo::from(record),
            added: Vec::new(),
        };
        if record.ports_released {
            info!(self.log, "host ports not published: the pod's ports are released (its sandbox stopped)";
                "pod" => %name, "requested" => ports.len());
            return Ok(unchanged(&record));
        }
        let mut added: Vec<PortMapping> = Vec::new();
        for mapping in &ports {
            if record.ports.contains(mapping) || added.contains(mapping) {
                continue;
            }
            if let Some(own) = record.ports.iter().find(|own| mapping.overlaps(own)) {
                return Err(ManagerError::PortInUse {
                    name: name.clone(),
                    mapping: *mapping,
                    holder: format!("pod {name} itself ({own})"),
                });
            }
            added.push(*mapping);
        }
        if added.is_empty() {
            return Ok(unchanged(&record));
        }
        let mut all = record.ports.clone();
        all.extend(added.iter().copied());
        ports::validate(&all).map_err(|source| ManagerError::Ports {
            name: name.clone(),
            source,
        })?;
        self.check_listeners(name, &added).await?;
        let addresses: Vec<IpAddr> = record.ips.iter().map(IpNet::addr).collect();
        let elements = firewall::elements_for(&added, &addresses).map_err(|source| {
            ManagerError::PortAddress {
                name: name.clone(),
                source,
            }
        })?;
        let published = {
            let mut inner = self.inner();
            for other in inner
                .state
                .pods
                .values()
                .filter(|other| other.name != *name && self.holds_ports(other))
            {
                for mapping in &added {
                    if let Some(theirs) = other.ports.iter().find(|o| mapping.overlaps(o)) {
                        return Err(ManagerError::PortInUse {
                            name: name.clone(),
                            mapping: *mapping,
                            holder: format!("pod {} ({theirs})", other.name),
                        });
                    }
                }
            }
            let Some(r) = inner.state.pods.get_mut(name) else {
                unreachable!("the record of {name} is held by its pod lock")
            };
            r.ports = all;
            let published = r.clone();
            if let Err(e) = self.save(&mut inner) {
                if let Some(r) = inner.state.pods.get_mut(name) {
                    r.ports = record.ports.clone();
                }
                return Err(e.into());
            }
            published
        };
        let add = plan::plan_publish(&published, &self.node, &elements);
        let result = executor::apply_best_effort(&self.system, &add, &self.log).await;
        if !result.failures.is_empty() {
            let undo = [Action::RemoveHostPorts {
                pod: name.clone(),
                elements,
            }];
            executor::apply_best_effort(&self.system, &undo, &self.log).await;
            let mut inner = self.inner();
            if let Some(r) = inner.state.pods.get_mut(name) {
                r.ports = record.ports.clone();
            }
            if let Err(e) = self.save(&mut inner) {
                warn!(self.log, "cannot save the pod's ports after a failed publish; repair withdraws the extra ones";
                    "pod" => %name, "error" => %e);
            }
            return Err(ManagerError::Publish {
                name: name.clone(),
                failures: result.failures,
            });
        }
        info!(self.log, "host ports published"; "pod" => %name, "added" => added.len(),
            "ports" => published.ports.len());
        Ok(PublishedPorts {
            pod: PodInfo::from(&published),
            added,
        })
    }

    /// Refuses to attach the namespace at `netns` when it holds links besides `lo`: another
    /// network plugin (bridge, Calico, ...) wired it, and ours would clash with its `eth0`.
    /// Only for a namespace no pod of ours holds (the caller checks its own records first).
    pub(super) async fn refuse_wired_elsewhere(
        &self,
        name: &PodName,
        netns: &Path,
    ) -> Result<(), ManagerError> {
        if self.inner().state.pods.values().any(|r| r.netns == netns) {
            // Ours: `NetnsInUse` (another pod) or the pod's own leftover, handled elsewhere.
            return Ok(());
        }
        let links = self
            .system
            .list_links(Some(netns), "")
            .await
            .map_err(|source| ManagerError::System {
                name: name.clone(),
                source,
            })?;
        let links: Vec<String> = links
            .into_iter()
            .map(|l| l.to_string())
            .filter(|l| l != "lo")
            .collect();
        if links.is_empty() {
            return Ok(());
        }
        Err(ManagerError::WiredElsewhere {
            name: name.clone(),
            path: netns.to_path_buf(),
            links,
        })
    }
}
