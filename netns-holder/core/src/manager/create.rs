//! `create` and `attach`: both `ensure` a pod, after the pure admission checks.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use slog::{error, info, warn};

use super::{
    AttachRequest, CreateRequest, FALLBACK_MTU, ManagerError, PodIndex, PodInfo, PodManager,
    SavePolicy,
};
use crate::datapath::{self, Datapath};
use crate::executor;
use crate::firewall;
use crate::ipam::Ipam;
use crate::kernel::NetnsId;
use crate::names::{IfName, PodName};
use crate::plan;
use crate::ports::{self, PortMapping, Protocol};
use crate::record::{NetnsOwnership, Phase, PodRecord};
use crate::state::State;
use crate::system::System;

/// Whether an existing ready record matches the requested parameters.
pub(super) fn compare(
    existing: &PodRecord,
    netns: &Path,
    ownership: &NetnsOwnership,
    annotations: &BTreeMap<String, String>,
    ports: &[PortMapping],
) -> Result<(), ManagerError> {
    let describe = |o: &NetnsOwnership| match o {
        NetnsOwnership::Owned { pause: true } => "created with a pause process",
        NetnsOwnership::Owned { pause: false } => "created without a pause process (no_pause)",
        NetnsOwnership::Attached => "attached to an existing netns",
    };
    let reason = if existing.ownership != *ownership {
        Some(format!(
            "it was {}, the request is for one {}",
            describe(&existing.ownership),
            describe(ownership)
        ))
    } else if existing.netns != netns {
        Some(format!(
            "its netns is {}, the request names {}",
            existing.netns.display(),
            netns.display()
        ))
    } else if existing.annotations != *annotations {
        Some(format!(
            "its annotations are {:?}, the request has {:?}",
            existing.annotations, annotations
        ))
    } else if ports::canonical(&existing.ports) != ports::canonical(ports) {
        let list = |p: &[PortMapping]| {
            if p.is_empty() {
                "none".to_string()
            } else {
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        Some(format!(
            "its host ports are [{}], the request has [{}]",
            list(&existing.ports),
            list(ports)
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ManagerError::Conflict {
            name: existing.name.clone(),
            reason,
        }),
        None => Ok(()),
    }
}

impl<S: System> PodManager<S> {
    /// Creates pod `name` (namespace, pause unless `no_pause`, wiring), or returns it if it
    /// already exists with the same parameters.
    pub async fn create(&self, request: CreateRequest) -> Result<PodInfo, ManagerError> {
        let name = request.name;
        let netns = self.config.netns_path(&name);
        let ownership = NetnsOwnership::Owned {
            pause: !request.no_pause,
        };
        self.ensure(name, netns, ownership, request.annotations, request.ports)
            .await
    }

    /// Wires the existing namespace at `request.netns` as pod `request.name` (no namespace
    /// creation, no pause; `remove` will not delete the namespace).
    pub async fn attach(&self, request: AttachRequest) -> Result<PodInfo, ManagerError> {
        self.ensure(
            request.name,
            request.netns,
            NetnsOwnership::Attached,
            request.annotations,
            request.ports,
        )
        .await
    }

    /// Refuses `ports` if a socket on the node holds one of them (checked in the node
    /// namespace, before anything is recorded).
    pub(super) async fn check_listeners(
        &self,
        name: &PodName,
        ports: &[PortMapping],
    ) -> Result<(), ManagerError> {
        if ports.is_empty() {
            return Ok(());
        }
        let mut wanted: Vec<(Protocol, u16)> =
            ports.iter().map(|p| (p.protocol, p.host_port)).collect();
        wanted.sort();
        wanted.dedup();
        let listeners =
            self.system
                .listeners(&wanted)
                .await
                .map_err(|source| ManagerError::System {
                    name: name.clone(),
                    source,
                })?;
        for mapping in ports {
            if let Some(l) = listeners
                .iter()
                .find(|l| mapping.overlaps_socket(l.protocol, l.address, l.port))
            {
                return Err(ManagerError::PortInUse {
                    name: name.clone(),
                    mapping: *mapping,
                    holder: format!("{l} in the node network namespace"),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn ensure(
        &self,
        name: PodName,
        netns: PathBuf,
        ownership: NetnsOwnership,
        annotations: BTreeMap<String, String>,
        ports: Vec<PortMapping>,
    ) -> Result<PodInfo, ManagerError> {
        let started = std::time::Instant::now();
        let _in_flight = super::CreateInFlight::new(self);
        let _shared = self.barrier.read().await;
        let _pod = self.pod_locks.lock(&name).await;
        ports::validate(&ports).map_err(|source| ManagerError::Ports {
            name: name.clone(),
            source,
        })?;
        if let Some(reason) = self.cluster_conflict()
            && self.record(&name).is_none()
        {
            return Err(ManagerError::ClusterConflict { name, reason });
        }

        // The identity of an attached namespace, so a path that later names another one
        // (`/proc/<pid>/ns/net` of a reused pid) is never taken for the pod's.
        let netns_id = if ownership == NetnsOwnership::Attached {
            self.system
                .netns_id(&netns)
                .await
                .map_err(|source| ManagerError::System {
                    name: name.clone(),
                    source,
                })?
        } else {
            None
        };
        if let Some(existing) = self.record(&name) {
            let replaced = existing.netns == netns
                && netns_id.is_some()
                && existing.netns_id.is_some()
                && existing.netns_id != netns_id;
            if existing.phase == Phase::Ready && !replaced {
                return compare(&existing, &netns, &ownership, &annotations, &ports)
                    .map(|()| PodInfo::from(&existing));
            }
            if replaced {
                info!(self.log, "the pod's namespace is gone and its path names another one now; wiring that one";
                    "pod" => %name, "netns" => %netns.display());
            }
            // A leftover of a create/remove that could not finish (or of a namespace that is
            // gone): clear it first.
            let failures = self.teardown(&existing, SavePolicy::BestEffort).await;
            if !failures.is_empty() {
                return Err(ManagerError::Unfinished { name, failures });
            }
        }
        if ownership == NetnsOwnership::Attached && netns_id.is_none() {
            return Err(ManagerError::NetnsNotFound { name, path: netns });
        }
        if ownership == NetnsOwnership::Attached {
            self.refuse_wired_elsewhere(&name, &netns).await?;
        }
        let mtu = match self.config.mtu {
            Some(m) => m,
            None => self
                .system
                .default_route_mtu()
                .await
                .map_err(|source| ManagerError::System {
                    name: name.clone(),
                    source,
                })?
                .unwrap_or(FALLBACK_MTU),
        };
        self.check_listeners(&name, &ports).await?;

        // Allocate and journal the record before touching the kernel.
        let id = name.id();
        let record = {
            let mut inner = self.inner();
            let inner = &mut *inner;
            self.admit_neighbours(&name, inner.state.pods.len())?;
            // Under the state lock, so two concurrent creates cannot both take a port.
            let inner = &mut *inner;
            let mut record = admit(
                &inner.state,
                &inner.index,
                &mut inner.ipam,
                |other| self.holds_ports(other),
                Admission {
                    name: name.clone(),
                    netns: netns.clone(),
                    ownership,
                    annotations,
                    ports,
                    mtu,
                    netns_id,
                    datapath: self.config.datapath,
                },
            )?;
            let owned = record.netns_owned();
            // A namespace made ahead, whose veth pair's host end the pod keeps under its
            // pool name: the create then renames nothing.
            if let Some(link) = owned
                .then(|| self.system.reserve_pooled_link(&netns))
                .flatten()
            {
                record.host_veth = link;
            }
            inner.insert_pod(record.clone());
            if owned {
                inner.state.owned_netns.insert(netns.clone());
            }
            if let Err(e) = self.save_pod(inner, &name) {
                inner.remove_pod(&name);
                inner.ipam.release(&id);
                if owned {
                    inner.state.owned_netns.remove(&netns);
                    self.system.release_pooled_link(&netns);
                }
                return Err(e.into());
            }
            record
        };
        info!(self.log, "creating pod"; "pod" => %name, "netns" => %netns.display(), "ips" => ?record.ips);

        let steps = plan::plan_create(&record, &self.node);
        match executor::apply_plan(&self.system, &steps, &self.log).await {
            Ok(applied) => {
                let ready = {
                    let mut inner = self.inner();
                    let Some(r) = inner.state.pods.get_mut(&name) else {
                        unreachable!("the record of {name} is held by its pod lock")
                    };
                    r.pause = applied.pause;
                    r.phase = Phase::Ready;
                    let ready = r.clone();
                    self.save_pod(&mut inner, &name).map(|()| ready)
                };
                match ready {
                    Ok(ready) => {
                        info!(self.log, "pod ready"; "us" => started.elapsed().as_micros(), "pod" => %name, "pause" => ?ready.pause.map(|p| p.pid));
                        Ok(PodInfo::from(&ready))
                    }
                    Err(e) => {
                        // The caller will be told it failed, so it must not exist.
                        error!(self.log, "cannot record ready pod, tearing it down"; "pod" => %name, "error" => %e);
                        let mut record = record;
                        record.pause = applied.pause;
                        self.teardown(&record, SavePolicy::BestEffort).await;
                        Err(e.into())
                    }
                }
            }
            Err(source) => {
                if record.netns_owned() {
                    self.system.release_pooled_link(&netns);
                }
                if source.rolled_back() {
                    let mut inner = self.inner();
                    inner.remove_pod(&name);
                    inner.ipam.release(&id);
                    if record.netns_owned() {
                        inner.state.owned_netns.remove(&netns);
                    }
                    if let Err(e) = self.save_pod(&mut inner, &name) {
                        // The on-disk record stays `Creating`; reconcile rolls it back (a no-op).
                        warn!(self.log, "cannot save after rollback"; "pod" => %name, "error" => %e);
                    }
                } else {
                    error!(self.log, "rollback incomplete; record kept for repair"; "pod" => %name);
                }
                Err(ManagerError::Create {
                    name,
                    source: Box::new(source),
                })
            }
        }
    }
}

/// A new pod as `ensure` asks to admit it: its create parameters and what `ensure` learnt
/// from the kernel (the MTU, an attached namespace's identity).
#[derive(Debug)]
pub(super) struct Admission {
    /// The pod.
    pub(super) name: PodName,
    /// Its namespace path.
    pub(super) netns: PathBuf,
    /// Created or attached.
    pub(super) ownership: NetnsOwnership,
    /// Caller annotations.
    pub(super) annotations: BTreeMap<String, String>,
    /// Host ports (validated).
    pub(super) ports: Vec<PortMapping>,
    /// The pod interface's MTU.
    pub(super) mtu: u32,
    /// The identity of an attached namespace.
    pub(super) netns_id: Option<NetnsId>,
    /// The node's datapath.
    pub(super) datapath: Datapath,
}

/// The pure admission checks of a new pod against the records in `state`, and its
/// `Creating` record: its id collides with no other pod's, its namespace path is no other
/// pod's, none of its host ports overlaps one of a pod that holds its ports (`holds_ports`),
/// `ipam` has addresses for it and each host port fits them. Nothing is kept allocated in
/// `ipam` when it is refused; the caller inserts and saves the record.
pub(super) fn admit(
    state: &State,
    index: &PodIndex,
    ipam: &mut Ipam,
    holds_ports: impl Fn(&PodRecord) -> bool,
    request: Admission,
) -> Result<PodRecord, ManagerError> {
    let Admission {
        name,
        netns,
        ownership,
        annotations,
        ports,
        mtu,
        netns_id,
        datapath,
    } = request;
    let id = name.id();
    // Lookups by key, not a walk of every record (see `PodIndex`); debug builds (every test)
    // check the index against the records.
    debug_assert_eq!(
        *index,
        PodIndex::of(state),
        "the pod index drifted from the records"
    );
    if let Some(other) = index.id_holder(&id) {
        return Err(ManagerError::IdCollision {
            name,
            id,
            other: other.clone(),
        });
    }
    // An attached namespace may sit anywhere `attach` allows, our netns dir included; one we
    // created is `netns_dir/<its pod's name>`, so only the pod named like the path's file can
    // hold it among those.
    let owned_holder = || {
        netns
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| PodName::new(f.to_string()).ok())
            .and_then(|n| state.pods.get(&n))
            .filter(|other| other.ownership != NetnsOwnership::Attached && other.netns == netns)
            .map(|other| other.name.clone())
    };
    if let Some(other) = index.attached_at(&netns).cloned().or_else(owned_holder) {
        return Err(ManagerError::NetnsInUse {
            name,
            path: netns,
            other,
        });
    }
    // Only a pod with host ports walks the records: the walk touches every record's memory
    // (0.15 ms per create at 3900 pods, in `perf`), and a pod without ports takes none.
    let others = if ports.is_empty() {
        None
    } else {
        Some(state.pods.values())
    };
    for other in others
        .into_iter()
        .flatten()
        .filter(|other| holds_ports(other))
    {
        for mapping in &ports {
            if let Some(theirs) = other.ports.iter().find(|o| mapping.overlaps(o)) {
                return Err(ManagerError::PortInUse {
                    name,
                    mapping: *mapping,
                    holder: format!("pod {} ({theirs})", other.name),
                });
            }
        }
    }
    let ips = ipam.allocate(&id).map_err(|source| ManagerError::Ipam {
        name: name.clone(),
        source,
    })?;
    let addresses: Vec<IpAddr> = ips.iter().map(IpNet::addr).collect();
    if let Err(source) = firewall::elements_for(&ports, &addresses) {
        ipam.release(&id);
        return Err(ManagerError::PortAddress { name, source });
    }
    let (ips, gateways) = match datapath {
        Datapath::Bridge => {
            let gateways = ipam
                .gateways()
                .iter()
                .map(IpNet::addr)
                .filter(|g| ips.iter().any(|a| a.contains(g)))
                .collect();
            (ips, gateways)
        }
        // Host addresses and the link-local on-link gateways.
        Datapath::Routed => (
            ips.iter()
                .map(|a| IpNet::from(a.addr()))
                .collect::<Vec<_>>(),
            ips.iter()
                .map(|a| datapath::gateway_for(a.addr()))
                .collect(),
        ),
    };
    Ok(PodRecord {
        host_veth: id.host_veth_name(),
        id,
        name,
        netns,
        ownership,
        pause: None,
        ips,
        gateways,
        interface: IfName::pod_interface(),
        annotations,
        phase: Phase::Creating,
        mtu,
        ports,
        ports_released: false,
        netns_id,
        datapath,
    })
}

#[cfg(test)]
mod tests {
    //! [`admit`] on plain records and a plain IPAM: no kernel, no fake.

    use super::*;
    use crate::ports::Protocol;

    fn name(s: &str) -> PodName {
        PodName::new(s).unwrap()
    }

    fn ipam() -> Ipam {
        Ipam::new("10.88.0.0/16".parse().unwrap(), None)
    }

    fn request(pod: &str, ports: Vec<PortMapping>) -> Admission {
        Admission {
            name: name(pod),
            netns: PathBuf::from("/run/netns").join(pod),
            ownership: NetnsOwnership::Owned { pause: true },
            annotations: BTreeMap::new(),
            ports,
            mtu: 1450,
            netns_id: None,
            datapath: Datapath::Bridge,
        }
    }

    #[test]
    fn a_routed_pod_gets_host_addresses_and_the_link_local_gateways() {
        let state = State::default();
        let mut ipam = Ipam::new(
            "10.88.0.0/16".parse().unwrap(),
            Some("fd00::/64".parse().unwrap()),
        );
        let record = admit(
            &state,
            &PodIndex::of(&state),
            &mut ipam,
            |_| true,
            Admission {
                datapath: Datapath::Routed,
                ..request("web", vec![])
            },
        )
        .unwrap();
        assert_eq!(record.datapath, Datapath::Routed);
        assert_eq!(
            record.ips,
            vec![
                "10.88.0.2/32".parse::<IpNet>().unwrap(),
                "fd00::2/128".parse().unwrap()
            ]
        );
        assert_eq!(
            record.gateways,
            vec![
                "169.254.1.1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    /// A state holding the admitted record of each `(pod, ports)`.
    fn state_with(ipam: &mut Ipam, pods: &[(&str, Vec<PortMapping>)]) -> State {
        let mut state = State::default();
        for (pod, ports) in pods {
            let record = admit(
                &state,
                &PodIndex::of(&state),
                ipam,
                |_| true,
                request(pod, ports.clone()),
            )
            .unwrap();
            state.pods.insert(record.name.clone(), record);
        }
        state
    }

    /// The index admission uses follows the records through inserts, replacements and
    /// removes (debug builds also check it on every admission).
    #[test]
    fn the_pod_index_follows_the_records() {
        let mut ipam = ipam();
        let state = state_with(&mut ipam, &[("db", vec![]), ("web", vec![])]);
        let mut inner = super::super::Inner {
            index: PodIndex::of(&state),
            state,
            ipam,
        };
        let foreign = PathBuf::from("/var/run/netns/cni-1");
        let mut ctr = inner.state.pods[&name("db")].clone();
        ctr.name = name("ctr");
        ctr.id = name("ctr").id();
        ctr.ownership = NetnsOwnership::Attached;
        ctr.netns = foreign.clone();
        inner.insert_pod(ctr.clone());
        assert_eq!(inner.index, PodIndex::of(&inner.state));
        assert_eq!(inner.index.id_holder(&ctr.id), Some(&name("ctr")));
        assert_eq!(inner.index.attached_at(&foreign), Some(&name("ctr")));
        assert_eq!(inner.index.id_holder(&name("db").id()), Some(&name("db")));

        // Replaced by a record of another namespace: the old path is free.
        let moved = PathBuf::from("/var/run/netns/cni-2");
        inner.insert_pod(PodRecord {
            netns: moved.clone(),
            ..ctr.clone()
        });
        assert_eq!(inner.index, PodIndex::of(&inner.state));
        assert_eq!(inner.index.attached_at(&foreign), None);
        assert_eq!(inner.index.attached_at(&moved), Some(&name("ctr")));

        assert!(inner.remove_pod(&name("ctr")).is_some());
        assert!(inner.remove_pod(&name("ctr")).is_none());
        assert_eq!(inner.index, PodIndex::of(&inner.state));
        assert_eq!(inner.index.id_holder(&ctr.id), None);
        assert_eq!(inner.index.attached_at(&moved), None);
        // An owned pod's namespace is not in the attached index.
        assert_eq!(
            inner
                .index
                .attached_at(&inner.state.pods[&name("web")].netns),
            None
        );
    }

    #[test]
    fn an_admitted_pod_gets_a_creating_record_with_addresses_and_gateways() {
        let mut ipam = ipam();
        let ports = vec![PortMapping::new(8080, 80, Protocol::Tcp)];
        let record = admit(
            &State::default(),
            &PodIndex::default(),
            &mut ipam,
            |_| true,
            request("web", ports.clone()),
        )
        .unwrap();
        assert_eq!(record.name, name("web"));
        assert_eq!(record.id, name("web").id());
        assert_eq!(record.host_veth, name("web").id().host_veth_name());
        assert_eq!(record.interface, IfName::pod_interface());
        assert_eq!(record.phase, Phase::Creating);
        assert_eq!(record.pause, None);
        assert_eq!(record.mtu, 1450);
        assert_eq!(record.ports, ports);
        assert_eq!(record.ips.len(), 1);
        assert!(record.ips[0].addr().to_string().starts_with("10.88."));
        assert_eq!(
            record.gateways,
            vec!["10.88.0.1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(ipam.usage()[0].allocated, 1);
    }

    #[test]
    fn an_id_taken_by_another_record_is_refused_without_allocating() {
        let mut ipam = ipam();
        let mut state = state_with(&mut ipam, &[("other", vec![])]);
        // Two names with the same id cannot be found by hand; a record carrying the id of
        // `web` stands in for one.
        let mut other = state.pods.remove(&name("other")).unwrap();
        other.id = name("web").id();
        state.pods.insert(other.name.clone(), other);
        let e = admit(
            &state,
            &PodIndex::of(&state),
            &mut ipam,
            |_| true,
            request("web", vec![]),
        )
        .unwrap_err();
        assert!(
            matches!(&e, ManagerError::IdCollision { other, .. } if *other == name("other")),
            "{e}"
        );
        assert_eq!(ipam.usage()[0].allocated, 1);
    }

    #[test]
    fn a_namespace_path_of_another_pod_is_refused() {
        let mut ipam = ipam();
        let state = state_with(&mut ipam, &[("db", vec![])]);
        let mut web = request("web", vec![]);
        web.netns = PathBuf::from("/run/netns/db");
        let e = admit(&state, &PodIndex::of(&state), &mut ipam, |_| true, web).unwrap_err();
        assert!(
            matches!(&e, ManagerError::NetnsInUse { other, .. } if *other == name("db")),
            "{e}"
        );
    }

    #[test]
    fn a_host_port_held_by_another_pod_is_refused_unless_it_released_them() {
        let mut ipam = ipam();
        let port = PortMapping::new(8080, 80, Protocol::Tcp);
        let state = state_with(&mut ipam, &[("db", vec![port])]);
        let other_port = PortMapping::new(8080, 8080, Protocol::Tcp);
        let e = admit(
            &state,
            &PodIndex::of(&state),
            &mut ipam,
            |_| true,
            request("web", vec![other_port]),
        )
        .unwrap_err();
        assert!(matches!(&e, ManagerError::PortInUse { .. }), "{e}");
        assert!(e.to_string().contains("pod db"), "{e}");
        // The same port over UDP is another port.
        let udp = PortMapping::new(8080, 80, Protocol::Udp);
        admit(
            &state,
            &PodIndex::of(&state),
            &mut ipam,
            |_| true,
            request("web", vec![udp]),
        )
        .unwrap();
        // A pod that does not hold its ports (released) does not block them.
        admit(
            &state,
            &PodIndex::of(&state),
            &mut ipam,
            |_| false,
            request("api", vec![other_port]),
        )
        .unwrap();
    }

    #[test]
    fn an_exhausted_pool_and_a_port_the_addresses_cannot_carry_are_refused_releasing_them() {
        let mut small = Ipam::new("10.9.0.0/30".parse().unwrap(), None);
        let state = state_with(&mut small, &[("a", vec![])]);
        let e = admit(
            &state,
            &PodIndex::of(&state),
            &mut small,
            |_| true,
            request("b", vec![]),
        )
        .unwrap_err();
        assert!(matches!(&e, ManagerError::Ipam { .. }), "{e}");

        let mut ipam = ipam();
        let v6_port = PortMapping::new(8080, 80, Protocol::Tcp).on("fd00::1".parse().unwrap());
        let e = admit(
            &State::default(),
            &PodIndex::default(),
            &mut ipam,
            |_| true,
            request("web", vec![v6_port]),
        )
        .unwrap_err();
        assert!(matches!(&e, ManagerError::PortAddress { .. }), "{e}");
        assert_eq!(ipam.usage()[0].allocated, 0);
    }
}
