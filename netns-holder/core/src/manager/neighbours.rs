//! Sizing the kernel's neighbour tables for the node's pod capacity at start, and the
//! admission limit when they cannot be sized (see [`crate::neigh`]).

use slog::{info, warn};

use super::{ManagerError, PodManager};
use crate::names::PodName;
use crate::neigh::{self, NeighbourReport, Outcome, TableReport};
use crate::ports::Family;
use crate::system::System;

impl<S: System> PodManager<S> {
    /// Reads the neighbour tables' thresholds and raises those below what the node's pod
    /// capacity (its IPv4 pool; IPv6 too when dual-stack) needs, never lowering one. Where
    /// that is impossible (the node namespace is not the initial one, `/proc/sys` is read
    /// only), nothing changes and creates are limited to the pods the table holds. Logs and
    /// keeps the result for `status`; call it once at start.
    pub async fn size_neighbour_tables(&self) -> NeighbourReport {
        let capacity = {
            let inner = self.inner();
            inner
                .ipam
                .usage()
                .first()
                .map_or(0, |p| u64::try_from(p.capacity).unwrap_or(u64::MAX))
        };
        let mut families = vec![Family::V4];
        if self.config.pod_cidr_v6.is_some() {
            families.push(Family::V6);
        }
        let mut tables = Vec::new();
        for family in families {
            let per_pod = neigh::entries(family);
            let previous = match self.system.neighbour_thresholds(family).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(self.log, "cannot read the neighbour table thresholds; pods are not limited by them";
                        "family" => family.name(), "error" => %e);
                    continue;
                }
            };
            let required = neigh::required(capacity, per_pod, previous);
            let mut table = TableReport {
                family,
                previous,
                current: previous,
                required,
                outcome: Outcome::Sufficient,
                error: None,
                pod_limit: None,
            };
            if !neigh::sufficient(previous, required) {
                let raised = neigh::raise(previous, required);
                match self.system.set_neighbour_thresholds(family, raised).await {
                    Ok(()) => {
                        table.current = raised;
                        table.outcome = Outcome::Raised;
                        info!(self.log, "neighbour table raised for the pod capacity";
                            "family" => family.name(), "pods" => capacity,
                            "previous" => %previous, "now" => %raised);
                    }
                    Err(e) => {
                        let limit = neigh::pod_limit(previous, per_pod);
                        table.outcome = Outcome::NotRaised;
                        table.error = Some(e.to_string());
                        if limit < capacity {
                            table.pod_limit = Some(limit);
                            warn!(self.log, "neighbour table too small for the pod capacity and not raised; creates are limited";
                                "family" => family.name(), "pods" => capacity, "limit" => limit,
                                "thresholds" => %previous, "required" => %required, "error" => %e);
                        } else {
                            // Every pod's own entries fit; only the headroom is missing.
                            info!(self.log, "neighbour table not raised, but it holds every pod";
                                "family" => family.name(), "pods" => capacity, "limit" => limit,
                                "thresholds" => %previous, "required" => %required, "error" => %e);
                        }
                    }
                }
            } else {
                info!(self.log, "neighbour table large enough for the pod capacity";
                    "family" => family.name(), "pods" => capacity, "thresholds" => %previous);
            }
            tables.push(table);
        }
        let report = NeighbourReport { capacity, tables };
        *self.neighbour.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
        report
    }

    /// The neighbour table sizing done at start, if it was.
    pub fn neighbour_tables(&self) -> Option<NeighbourReport> {
        self.neighbour
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refuses a new pod `name` when the node holds `pods` records and a neighbour table
    /// that could not be raised holds no more.
    pub(super) fn admit_neighbours(&self, name: &PodName, pods: usize) -> Result<(), ManagerError> {
        let guard = self.neighbour.lock().unwrap_or_else(|e| e.into_inner());
        let Some((limit, table)) = guard.as_ref().and_then(NeighbourReport::pod_limit) else {
            return Ok(());
        };
        if (pods as u64) < limit {
            return Ok(());
        }
        Err(ManagerError::NeighbourLimit {
            name: name.clone(),
            limit,
            reason: neigh::limit_message(limit, table),
        })
    }
}
