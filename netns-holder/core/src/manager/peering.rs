//! Peers: adding and removing routes to other nodes' pod CIDRs, and keeping the egress
//! exemptions (see [`crate::egress`]) in step with them.
//!
//! Every change of the peer list, whatever its source (configuration at start, the API, a
//! cluster backend), ends in [`PodManager::peers_changed`], the one place that brings the
//! node's datapath state derived from the peer list (today the egress exemption sets) in
//! line with it. Routes are per peer and handled by the caller; at start and on repair,
//! [`PodManager::repair`] covers both.

use ipnet::IpNet;
use slog::{info, warn};

use super::{ManagerError, PodManager};
use crate::action::Action;
use crate::egress::{self, EgressExempt};
use crate::executor;
use crate::peers::{self, Peer, PeerError, PeerRecord, PeerSource};
use crate::system::System;

impl<S: System> PodManager<S> {
    /// The peers, by CIDR.
    pub fn peers(&self) -> Vec<PeerRecord> {
        self.inner().state.peers.clone()
    }

    /// The destinations pods reach without masquerade: this node's pod CIDRs, every peer's
    /// (of any source) and [`crate::config::Config::egress_extra_exempt`].
    pub fn egress_exempt(&self) -> EgressExempt {
        egress::exempt_cidrs(
            &self.config.pod_cidrs(),
            self.peers().iter().map(|p| p.pod_cidr),
            &self.config.egress_extra_exempt(),
        )
    }

    /// Brings what derives from the peer list in line with it after a change: the egress
    /// exemption sets are set to [`PodManager::egress_exempt`] in one transaction (the host
    /// port maps and the rules are not touched). Call it with the peer lock held, after the
    /// state holds the new list. A failure names the table; `check` reports the drift and
    /// `check --repair` fixes it.
    pub(super) async fn peers_changed(&self) -> Result<(), ManagerError> {
        let action = Action::SyncEgressExempt {
            exempt: self.egress_exempt(),
        };
        executor::run_action(&self.system, &action)
            .await
            .map_err(|source| ManagerError::EgressExempt {
                action: action.to_string(),
                source,
            })?;
        info!(self.log, "egress exemptions updated"; "exempt" => %self.egress_exempt());
        Ok(())
    }

    /// Adds a peer and its route. Idempotent for an identical peer (`Ok(false)`); a peer of
    /// the same CIDR with another address is refused.
    pub async fn add_peer(&self, peer: Peer) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _peers = self.peer_lock.lock().await;
        let existing = self.peers();
        if let Some(same) = existing.iter().find(|p| p.pod_cidr == peer.pod_cidr) {
            if same.via == peer.via {
                return Ok(false);
            }
            return Err(PeerError::Exists {
                existing: same.peer(),
                requested: peer,
            }
            .into());
        }
        let others: Vec<Peer> = existing.iter().map(PeerRecord::peer).collect();
        peers::validate(&peer, &self.config.pod_cidrs(), &others)?;
        // Journal first: after a crash, reconcile adds the route.
        {
            let mut inner = self.inner();
            inner.state.peers.push(PeerRecord {
                pod_cidr: peer.pod_cidr,
                via: peer.via,
                source: PeerSource::Api,
            });
            inner.state.peers.sort();
            if let Err(e) = self.save(&mut inner) {
                inner.state.peers.retain(|p| p.pod_cidr != peer.pod_cidr);
                return Err(e.into());
            }
        }
        if let Err(source) = self.system.add_route(peer.pod_cidr, peer.via).await {
            let mut inner = self.inner();
            inner.state.peers.retain(|p| p.pod_cidr != peer.pod_cidr);
            if let Err(e) = self.save(&mut inner) {
                warn!(self.log, "cannot save after a failed peer add"; "peer" => %peer, "error" => %e);
            }
            return Err(ManagerError::PeerRoute { peer, source });
        }
        info!(self.log, "peer added"; "peer" => %peer);
        self.peers_changed().await?;
        Ok(true)
    }

    /// Removes an API-added peer and its route; `Ok(false)` if there is no such peer.
    pub async fn remove_peer(&self, pod_cidr: IpNet) -> Result<bool, ManagerError> {
        let _shared = self.barrier.read().await;
        let _peers = self.peer_lock.lock().await;
        let Some(record) = self.peers().into_iter().find(|p| p.pod_cidr == pod_cidr) else {
            return Ok(false);
        };
        match record.source {
            PeerSource::Config => {
                return Err(PeerError::FromConfig {
                    peer: record.peer(),
                }
                .into());
            }
            PeerSource::Etcd => {
                return Err(PeerError::FromCluster {
                    peer: record.peer(),
                }
                .into());
            }
            PeerSource::Api => {}
        }
        // Forget first: after a crash, reconcile removes the route of no peer.
        {
            let mut inner = self.inner();
            inner.state.peers.retain(|p| p.pod_cidr != pod_cidr);
            if let Err(e) = self.save(&mut inner) {
                inner.state.peers.push(record);
                inner.state.peers.sort();
                return Err(e.into());
            }
        }
        self.system
            .delete_route(record.pod_cidr, record.via)
            .await
            .map_err(|source| ManagerError::PeerRoute {
                peer: record.peer(),
                source,
            })?;
        info!(self.log, "peer removed"; "peer" => %record.peer());
        self.peers_changed().await?;
        Ok(true)
    }
}

/// What [`PodManager::set_cluster_peers`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterPeersReport {
    /// Routes added.
    pub added: Vec<Peer>,
    /// Routes removed.
    pub removed: Vec<Peer>,
    /// Cluster peers given no route, and why (a clash with this node's CIDRs or a static
    /// peer, or the kernel refused the route).
    pub refused: Vec<(Peer, String)>,
}

impl ClusterPeersReport {
    /// Whether nothing changed and nothing was refused.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.refused.is_empty()
    }
}

impl<S: System> PodManager<S> {
    /// Cluster mode: makes the peers learnt from the cluster exactly `peers` (a full set, as
    /// the cluster says now): routes of cluster peers that are gone are removed, new ones
    /// added, in one state save each way, then [`PodManager::peers_changed`] once. Static
    /// peers (configuration, API) are never touched and win over a cluster peer of an
    /// overlapping CIDR, which is refused (reported), as is one that clashes with this node's
    /// CIDRs. A route the kernel refuses is reported and left out of the peer list.
    pub async fn set_cluster_peers(
        &self,
        peers: &[Peer],
    ) -> Result<ClusterPeersReport, ManagerError> {
        let _shared = self.barrier.read().await;
        let _peers = self.peer_lock.lock().await;
        let mut report = ClusterPeersReport::default();
        let current = self.peers();
        let statics: Vec<PeerRecord> = current
            .iter()
            .filter(|p| p.source != PeerSource::Etcd)
            .copied()
            .collect();
        let old: std::collections::BTreeSet<Peer> = current
            .iter()
            .filter(|p| p.source == PeerSource::Etcd)
            .map(PeerRecord::peer)
            .collect();
        let own = self.config.pod_cidrs();
        let mut others: Vec<Peer> = statics.iter().map(PeerRecord::peer).collect();
        let mut accepted: std::collections::BTreeSet<Peer> = std::collections::BTreeSet::new();
        for peer in peers {
            if accepted.iter().any(|a| a.pod_cidr == peer.pod_cidr) {
                report
                    .refused
                    .push((*peer, "another node claims the same pod CIDR".to_string()));
                continue;
            }
            match peers::validate(peer, &own, &others) {
                Ok(()) => {
                    others.push(*peer);
                    accepted.insert(*peer);
                }
                Err(e) => report.refused.push((*peer, e.to_string())),
            }
        }
        let removed: Vec<Peer> = old.difference(&accepted).copied().collect();
        let added: Vec<Peer> = accepted.difference(&old).copied().collect();
        if removed.is_empty() && added.is_empty() {
            return Ok(report);
        }
        // Journal first (the whole new list): after a crash, reconcile brings the routes in
        // line with it.
        let desired = |accepted: &std::collections::BTreeSet<Peer>| {
            let mut list = statics.clone();
            list.extend(accepted.iter().map(|p| PeerRecord {
                pod_cidr: p.pod_cidr,
                via: p.via,
                source: PeerSource::Etcd,
            }));
            list.sort();
            list
        };
        {
            let mut inner = self.inner();
            let before = std::mem::replace(&mut inner.state.peers, desired(&accepted));
            if let Err(e) = self.save(&mut inner) {
                inner.state.peers = before;
                return Err(e.into());
            }
        }
        for peer in &removed {
            match self.system.delete_route(peer.pod_cidr, peer.via).await {
                Ok(_) => report.removed.push(*peer),
                // The peer is gone from the list: `check --repair` removes a route left over.
                Err(e) => {
                    warn!(self.log, "cannot remove the route of a cluster peer that left"; "peer" => %peer, "error" => %e);
                    report.removed.push(*peer);
                }
            }
        }
        let mut failed = Vec::new();
        for peer in &added {
            match self.system.add_route(peer.pod_cidr, peer.via).await {
                Ok(()) => report.added.push(*peer),
                Err(e) => {
                    failed.push(*peer);
                    report.refused.push((*peer, e.to_string()));
                }
            }
        }
        if !failed.is_empty() {
            for peer in &failed {
                accepted.remove(peer);
            }
            let mut inner = self.inner();
            inner.state.peers = desired(&accepted);
            if let Err(e) = self.save(&mut inner) {
                warn!(self.log, "cannot save after failed cluster peer routes"; "error" => %e);
            }
        }
        info!(self.log, "cluster peers updated"; "added" => report.added.len(),
            "removed" => report.removed.len(), "refused" => report.refused.len(),
            "cluster_peers" => accepted.len());
        self.peers_changed().await?;
        Ok(report)
    }

    /// Cluster mode: refuses new pods with `reason` (`Some`), or admits them again (`None`).
    pub fn set_cluster_conflict(&self, reason: Option<String>) {
        *self
            .cluster_conflict
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = reason;
    }

    /// Why new pods are refused in cluster mode, if they are.
    pub fn cluster_conflict(&self) -> Option<String> {
        self.cluster_conflict
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
