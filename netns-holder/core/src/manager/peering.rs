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
        if record.source == PeerSource::Config {
            return Err(PeerError::FromConfig {
                peer: record.peer(),
            }
            .into());
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
