//! `check`, `repair`/`reconcile` and `reload`: observing the kernel, comparing it with the
//! records, and bringing it back in line (pods, orphans, the nftables table, peer routes).

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use slog::{info, warn};

use super::{NodeFailure, PodManager, ReconcileReport, ReloadReport, SavePolicy, rebuild_ipam};
use crate::action::Action;
use crate::datapath::Datapath;
use crate::executor;
use crate::finding::{Finding, Problem};
use crate::firewall::{self, FirewallTable, HostPortElement, ObservedTable};
use crate::names::{HOST_VETH_PREFIX, PodName, is_host_veth_name};
use crate::peers;
use crate::plan::{self, Observed, Repair};
use crate::ports::Family;
use crate::record::{Phase, PodRecord};
use crate::system::{System, SystemError};

impl<S: System> PodManager<S> {
    /// Every record's host port elements, by pod.
    pub(super) fn all_elements(&self) -> Vec<(PodName, Vec<HostPortElement>)> {
        self.inner()
            .state
            .pods
            .values()
            .map(|r| (r.name.clone(), plan::record_elements(r)))
            .collect()
    }

    /// The whole nftables table the records call for.
    pub(super) fn firewall_table(&self) -> FirewallTable {
        FirewallTable {
            base: self.node.firewall.clone(),
            elements: self
                .all_elements()
                .into_iter()
                .flat_map(|(_, e)| e)
                .collect(),
            egress_exempt: self.egress_exempt(),
        }
    }

    /// Findings about the node-level objects host ports and peers depend on: our nftables
    /// table and the peer routes.
    pub(super) async fn node_findings(&self) -> Vec<Finding> {
        let mut findings = Vec::new();
        match self.system.inspect_table().await {
            Ok(observed) => findings.extend(firewall::check_table(
                &self.node.firewall,
                &self.all_elements(),
                &self.egress_exempt(),
                observed.as_ref(),
            )),
            Err(e) => findings.push(Finding {
                pod: None,
                object: firewall::table_object(),
                problem: Problem::CheckFailed {
                    error: e.to_string(),
                },
            }),
        }
        let peers = self.peers();
        match self.system.peer_routes().await {
            Ok(observed) => findings.extend(peers::check_routes(&peers, &observed)),
            Err(e) => findings.push(Finding {
                pod: None,
                object: "peer routes".to_string(),
                problem: Problem::CheckFailed {
                    error: e.to_string(),
                },
            }),
        }
        findings
    }

    /// Brings the nftables table and the peer routes in line with the records: the table is
    /// replaced if it drifted (or always, with `force`), only the egress exemption sets are
    /// synced when they alone drifted, routes are added and removed. Runs under the
    /// exclusive barrier (callers hold it).
    pub(super) async fn repair_node(
        &self,
        force: bool,
        report: &mut ReconcileReport,
    ) -> (usize, usize) {
        let mut actions = Vec::new();
        let table = self.firewall_table();
        let elements = table.elements.len();
        let (replace, sync_exempt) = if force {
            (true, false)
        } else {
            match self.system.inspect_table().await {
                Ok(None) => (true, false),
                Ok(Some(observed)) => {
                    // The rest of the table checked against observed sets equal to the
                    // wanted ones: whatever drift remains is not in the sets.
                    let rest = ObservedTable {
                        egress_exempt: table.egress_exempt.clone(),
                        ..observed.clone()
                    };
                    let rest_drift = !firewall::check_table(
                        &self.node.firewall,
                        &self.all_elements(),
                        &table.egress_exempt,
                        Some(&rest),
                    )
                    .is_empty();
                    let sets_drift = observed.egress_exempt != table.egress_exempt;
                    (rest_drift, sets_drift && !rest_drift)
                }
                Err(e) => {
                    warn!(self.log, "cannot inspect the nftables table; replacing it"; "error" => %e);
                    (true, false)
                }
            }
        };
        if replace {
            actions.push(Action::ReplaceFirewall { table });
        } else if sync_exempt {
            actions.push(Action::SyncEgressExempt {
                exempt: table.egress_exempt,
            });
        }
        let peers = self.peers();
        match self.system.peer_routes().await {
            Ok(observed) => actions.extend(peers::plan_routes(&peers, &observed)),
            Err(e) => report.failures.push(NodeFailure {
                pod: None,
                error: format!("listing peer routes: {e}"),
            }),
        }
        let result = executor::apply_best_effort(&self.system, &actions, &self.log).await;
        report
            .node_actions
            .extend(result.done.iter().map(ToString::to_string));
        report.failed(None, &result.failures);
        (elements, peers.len())
    }

    /// Re-creates the nftables table from the records in one transaction (whatever it holds
    /// now) and brings the peer routes in line: what the daemon does at start, on demand
    /// (e.g. after `nft flush ruleset`).
    pub async fn reload(&self) -> ReloadReport {
        let _exclusive = self.barrier.write().await;
        let mut report = ReconcileReport::default();
        let (elements, routes) = self.repair_node(true, &mut report).await;
        info!(self.log, "reloaded"; "host_port_elements" => elements, "peer_routes" => routes,
            "failures" => report.failures.len());
        ReloadReport {
            host_port_elements: elements,
            peer_routes: routes,
            actions: report.node_actions,
            failures: report.failures,
        }
    }

    pub(super) async fn observe(&self, record: &PodRecord) -> Result<Observed, SystemError> {
        let (netns_exists, netns_replaced) = match record.netns_id {
            Some(wired) => match self.system.netns_id(&record.netns).await? {
                Some(now) if now == wired => (true, false),
                Some(_) => (false, true),
                None => (false, false),
            },
            None => (self.system.netns_exists(&record.netns).await?, false),
        };
        if !netns_exists {
            // Only the bind mount may be gone: a live pause of ours still holds the namespace.
            let pause_alive = match &record.pause {
                Some(p) if record.netns_owned() => Some(self.system.pause_alive(p).await?),
                _ => None,
            };
            return Ok(Observed {
                pause_alive,
                netns_replaced,
                ..Observed::default()
            });
        }
        let pause_alive = match &record.pause {
            Some(p) => Some(self.system.pause_alive(p).await?),
            None => None,
        };
        let host_veth = self.system.link_info(None, &record.host_veth).await?;
        let pod_interface = self
            .system
            .link_info(Some(&record.netns), &record.interface)
            .await?;
        let (mut host_routes, mut host_neighbours, mut pod_neighbours) = Default::default();
        if record.datapath == Datapath::Routed {
            if host_veth.is_some() {
                host_routes = self.system.host_routes(&record.host_veth).await?;
                host_neighbours = self
                    .system
                    .permanent_neighbours(None, &record.host_veth)
                    .await?;
            }
            if pod_interface.is_some() {
                pod_neighbours = self
                    .system
                    .permanent_neighbours(Some(&record.netns), &record.interface)
                    .await?;
            }
        }
        Ok(Observed {
            netns_exists,
            netns_replaced,
            pause_alive,
            host_veth,
            pod_interface,
            default_routes: self.system.default_routes(&record.netns).await?,
            host_routes,
            host_neighbours,
            pod_neighbours,
        })
    }

    /// Orphans: our objects that no record accounts for.
    pub(super) async fn orphans(&self, failures: &mut Vec<NodeFailure>) -> Vec<Action> {
        let (veths, pauses, journal, ids) = {
            let inner = self.inner();
            let pods = inner.state.pods.values();
            (
                pods.clone()
                    .map(|r| r.host_veth.clone())
                    .collect::<BTreeSet<_>>(),
                pods.clone()
                    .filter_map(|r| r.pause)
                    .collect::<BTreeSet<_>>(),
                inner.state.owned_netns.clone(),
                pods.filter(|r| r.pause.is_none())
                    .map(|r| r.id)
                    .collect::<BTreeSet<_>>(),
            )
        };
        let mut actions = Vec::new();
        match self.system.list_links(None, HOST_VETH_PREFIX).await {
            Ok(links) => actions.extend(
                links
                    .into_iter()
                    .filter(|l| {
                        is_host_veth_name(l.as_str())
                            && *l != self.config.bridge
                            && !veths.contains(l)
                    })
                    .map(|link| Action::DeleteLink { netns: None, link }),
            ),
            Err(e) => failures.push(NodeFailure {
                pod: None,
                error: format!("listing host links: {e}"),
            }),
        }
        match self.system.list_pauses().await {
            Ok(list) => actions.extend(
                list.into_iter()
                    // A pause of a record without a recorded pause is a leftover of that
                    // record's create; it is an orphan too.
                    .filter(|p| !pauses.contains(&p.process) || ids.contains(&p.id))
                    .map(|p| Action::StopPause {
                        id: p.id,
                        process: Some(p.process),
                    }),
            ),
            Err(e) => failures.push(NodeFailure {
                pod: None,
                error: format!("listing pause processes: {e}"),
            }),
        }
        let recorded: BTreeSet<PathBuf> = self
            .inner()
            .state
            .pods
            .values()
            .map(|r| r.netns.clone())
            .collect();
        let stale: Vec<&PathBuf> = journal.iter().filter(|p| !recorded.contains(*p)).collect();
        if !stale.is_empty() {
            match self.system.list_netns(&self.config.netns_dir).await {
                Ok(mounted) => actions.extend(
                    stale
                        .into_iter()
                        .filter(|p| mounted.contains(p))
                        .map(|p| Action::DeleteNetns { path: p.clone() }),
                ),
                Err(e) => failures.push(NodeFailure {
                    pod: None,
                    error: format!("listing netns in {}: {e}", self.config.netns_dir.display()),
                }),
            }
        }
        actions
    }

    /// Compares the kernel with the records and reports every drift: per pod (namespace,
    /// pause, host veth, pod interface, addresses, routes, unfinished records), the bridge,
    /// and orphaned objects of ours.
    pub async fn check(&self) -> Vec<Finding> {
        let _exclusive = self.barrier.write().await;
        let records = self.records();
        let mut findings = Vec::new();
        if !records.is_empty() {
            match self.system.link_info(None, &self.node.node_link()).await {
                Ok(bridge) => findings.extend(plan::check_bridge(&self.node, bridge.as_ref())),
                Err(e) => findings.push(Finding {
                    pod: None,
                    object: format!("link {}", self.node.node_link()),
                    problem: Problem::CheckFailed {
                        error: e.to_string(),
                    },
                }),
            }
        }
        for record in &records {
            match self.observe(record).await {
                Ok(observed) => findings.extend(plan::check_pod(record, &self.node, &observed)),
                Err(e) => findings.push(Finding {
                    pod: Some(record.name.clone()),
                    object: e.object().to_string(),
                    problem: Problem::CheckFailed {
                        error: e.to_string(),
                    },
                }),
            }
        }
        let mut failures = Vec::new();
        for action in self.orphans(&mut failures).await {
            let object = match &action {
                Action::DeleteLink { link, .. } => format!("link {link}"),
                Action::StopPause {
                    id,
                    process: Some(p),
                } => format!("pause {p} of pod id {id}"),
                Action::DeleteNetns { path } => format!("netns {}", path.display()),
                other => other.to_string(),
            };
            findings.push(Finding {
                pod: None,
                object,
                problem: Problem::Orphan,
            });
        }
        for f in failures {
            findings.push(Finding {
                pod: f.pod,
                object: "node".to_string(),
                problem: Problem::CheckFailed { error: f.error },
            });
        }
        findings.extend(self.node_findings().await);
        findings
    }

    /// Runs at daemon start, before serving: finishes what a crash interrupted (see the
    /// module documentation). Same as [`PodManager::repair`].
    pub async fn reconcile(&self) -> ReconcileReport {
        self.repair().await
    }

    /// Brings the kernel back in line with the records: unfinished records are torn down,
    /// dead pods removed, missing pieces of live pods re-created, orphans removed.
    pub async fn repair(&self) -> ReconcileReport {
        let _exclusive = self.barrier.write().await;
        let mut report = ReconcileReport::default();

        for record in self
            .records()
            .into_iter()
            .filter(|r| r.phase != Phase::Ready)
        {
            let failures = self.teardown(&record, SavePolicy::BestEffort).await;
            if failures.is_empty() {
                if record.phase == Phase::Creating {
                    report.rolled_back.push(record.name.clone());
                } else {
                    report.finished_removal.push(record.name.clone());
                }
            }
            report.failed(Some(&record.name), &failures);
        }

        let ready: Vec<PodRecord> = self
            .records()
            .into_iter()
            .filter(|r| r.phase == Phase::Ready)
            .collect();
        if !ready.is_empty() {
            match self.system.link_info(None, &self.node.node_link()).await {
                Ok(bridge) => {
                    let mut actions = plan::plan_bridge_repair(&self.node, bridge.as_ref());
                    let v4_ports = ready.iter().any(|r| {
                        plan::record_elements(r)
                            .iter()
                            .any(|e| e.map.family() == Family::V4)
                    });
                    if !actions.is_empty() && v4_ports && self.node.datapath == Datapath::Bridge {
                        actions.push(Action::EnableRouteLocalnet {
                            link: self.config.bridge.clone(),
                        });
                    }
                    let result =
                        executor::apply_best_effort(&self.system, &actions, &self.log).await;
                    report
                        .node_actions
                        .extend(result.done.iter().map(ToString::to_string));
                    report.failed(None, &result.failures);
                }
                Err(e) => report.failed(None, [e]),
            }
        }
        for record in ready {
            let observed = match self.observe(&record).await {
                Ok(o) => o,
                Err(e) => {
                    report.failed(Some(&record.name), [e]);
                    continue;
                }
            };
            match plan::plan_repair(&record, &self.node, &observed) {
                Repair::Nothing => {}
                Repair::Remove => {
                    info!(self.log, "pod namespace is gone, removing pod"; "pod" => %record.name);
                    let failures = self.teardown(&record, SavePolicy::BestEffort).await;
                    if failures.is_empty() {
                        report.removed_dead.push(record.name.clone());
                    }
                    report.failed(Some(&record.name), &failures);
                }
                Repair::Actions(actions) => {
                    info!(self.log, "repairing pod"; "pod" => %record.name, "actions" => actions.len());
                    let mut result =
                        executor::apply_best_effort(&self.system, &actions, &self.log).await;
                    // The namespace is mounted again: now the rest of the pod can be seen
                    // (and repaired) too.
                    let restored = actions
                        .iter()
                        .any(|a| matches!(a, Action::RestoreNetns { .. }));
                    if restored && result.failures.is_empty() {
                        match self.observe(&record).await {
                            Ok(observed) => {
                                if let Repair::Actions(next) =
                                    plan::plan_repair(&record, &self.node, &observed)
                                {
                                    let again =
                                        executor::apply_best_effort(&self.system, &next, &self.log)
                                            .await;
                                    result.pause = again.pause.or(result.pause);
                                    result.done.extend(again.done);
                                    result.failures.extend(again.failures);
                                }
                            }
                            Err(e) => report.failed(Some(&record.name), [e]),
                        }
                    }
                    if let Some(pause) = result.pause {
                        let mut inner = self.inner();
                        if let Some(r) = inner.state.pods.get_mut(&record.name) {
                            r.pause = Some(pause);
                        }
                        if let Err(e) = self.save(&mut inner) {
                            report.failed(Some(&record.name), [e]);
                        }
                    }
                    report.repaired.insert(
                        record.name.clone(),
                        result.done.iter().map(ToString::to_string).collect(),
                    );
                    report.failed(Some(&record.name), &result.failures);
                }
            }
        }

        // Host port elements and peer routes, after dead pods are gone (their elements
        // are then no longer wanted).
        self.repair_node(false, &mut report).await;

        let mut failures = Vec::new();
        let orphans = self.orphans(&mut failures).await;
        report.failures.extend(failures);
        let result = executor::apply_best_effort(&self.system, &orphans, &self.log).await;
        report
            .orphans_removed
            .extend(result.done.iter().map(ToString::to_string));
        report.failed(None, &result.failures);
        {
            let mut inner = self.inner();
            let mut changed = false;
            for action in &result.done {
                if let Action::DeleteNetns { path } = action {
                    changed |= inner.state.owned_netns.remove(path);
                }
            }
            // Mounts that were already gone are dropped from the journal too.
            let recorded: BTreeSet<PathBuf> =
                inner.state.pods.values().map(|r| r.netns.clone()).collect();
            let failed: BTreeSet<PathBuf> = result
                .failures
                .iter()
                .filter_map(|f| match &f.action {
                    Action::DeleteNetns { path } => Some(path.clone()),
                    _ => None,
                })
                .collect();
            let before = inner.state.owned_netns.len();
            inner
                .state
                .owned_netns
                .retain(|p| recorded.contains(p) || failed.contains(p));
            changed |= inner.state.owned_netns.len() != before;
            // Allocations are derived from the records; rebuilding drops any stray one.
            inner.ipam = rebuild_ipam(&self.config, &inner.state, &self.log);
            inner.index = super::PodIndex::of(&inner.state);
            if changed && let Err(e) = self.save(&mut inner) {
                report.failed(None, [e]);
            }
        }
        info!(self.log, "reconciled";
            "rolled_back" => report.rolled_back.len(),
            "removed_dead" => report.removed_dead.len(),
            "repaired" => report.repaired.len(),
            "orphans_removed" => report.orphans_removed.len(),
            "node_actions" => report.node_actions.len(),
            "failures" => report.failures.len());
        report
    }
}

impl ReconcileReport {
    /// Records `errors` as failures of `pod` (`None`: the node).
    fn failed<E: fmt::Display>(
        &mut self,
        pod: Option<&PodName>,
        errors: impl IntoIterator<Item = E>,
    ) {
        self.failures
            .extend(errors.into_iter().map(|e| NodeFailure {
                pod: pod.cloned(),
                error: e.to_string(),
            }));
    }
}
