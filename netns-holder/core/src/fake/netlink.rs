//! [`Netlink`] of the [`FakeSystem`]: links, addresses, routes, with the kernel's ordering rules.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

use super::{FakeLink, FakeSystem, HOST, Kind, Model, ns_name};
use crate::datapath::Mac;
use crate::kernel::{LinkInfo, NodeNetwork, NodeNetworkKind};
use crate::names::IfName;
use crate::system::{Netlink, SystemError, VethPair};

impl Netlink for FakeSystem {
    async fn ensure_bridge(&self, name: &IfName, gateways: &[IpNet]) -> Result<(), SystemError> {
        let mut m = self.call(format!("ensure_bridge {name}")).await?;
        let host = m.net(HOST);
        let bridge = host
            .links
            .entry(name.to_string())
            .or_insert_with(|| FakeLink {
                kind: Kind::Bridge,
                up: false,
                mtu: 1500,
                master: None,
                addresses: BTreeSet::new(),
                neighbours: Default::default(),
                host_routes: Default::default(),
            });
        if bridge.kind != Kind::Bridge {
            return Err(SystemError::other(
                format!("link {name}"),
                "exists and is not a bridge",
            ));
        }
        bridge.up = true;
        bridge.addresses.extend(gateways.iter().copied());
        Ok(())
    }

    async fn ensure_node_addresses(
        &self,
        link: &IfName,
        addresses: &[IpNet],
    ) -> Result<(), SystemError> {
        let mut m = self.call(format!("ensure_node_addresses {link}")).await?;
        let host = m.net(HOST);
        // The host's loopback exists from the start in a real namespace.
        let l = host
            .links
            .entry(link.to_string())
            .or_insert_with(|| FakeLink {
                kind: Kind::Dummy,
                up: false,
                mtu: 65536,
                master: None,
                addresses: BTreeSet::new(),
                neighbours: Default::default(),
                host_routes: Default::default(),
            });
        l.up = true;
        l.addresses.extend(addresses.iter().copied());
        Ok(())
    }

    async fn add_neighbour(
        &self,
        netns: Option<&Path>,
        link: &IfName,
        address: IpAddr,
        mac: Mac,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!(
                "add_neighbour {address} {mac} {link} {}",
                ns_name(netns)
            ))
            .await?;
        m.link_mut(netns, link)?.neighbours.insert(address, mac);
        Ok(())
    }

    async fn permanent_neighbours(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> Result<Vec<IpAddr>, SystemError> {
        let m = self
            .call(format!("permanent_neighbours {link} {}", ns_name(netns)))
            .await?;
        let id = m.net_id(netns)?;
        Ok(m.nets[&id]
            .links
            .get(link.as_str())
            .map(|l| l.neighbours.keys().copied().collect())
            .unwrap_or_default())
    }

    async fn add_host_route(
        &self,
        link: &IfName,
        address: IpNet,
        source: IpAddr,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("add_host_route {address} {link} {source}"))
            .await?;
        let l = m.link_mut(None, link)?;
        l.host_routes.retain(|(dst, _)| *dst != address);
        l.host_routes.insert((address, source));
        Ok(())
    }

    async fn host_routes(&self, link: &IfName) -> Result<Vec<IpNet>, SystemError> {
        let m = self.call(format!("host_routes {link}")).await?;
        Ok(m.nets[&HOST]
            .links
            .get(link.as_str())
            .map(|l| l.host_routes.iter().map(|(dst, _)| *dst).collect())
            .unwrap_or_default())
    }

    async fn create_veth(&self, pair: VethPair<'_>) -> Result<(), SystemError> {
        let VethPair {
            host,
            peer,
            netns,
            mtu,
            master,
            ..
        } = pair;
        let mut call = format!("create_veth {host} {peer} {}", netns.display());
        if let Some(bridge) = master {
            call.push_str(&format!(" master {bridge}"));
        }
        let mut m = self.call(call).await?;
        let pod_net = m.net_id(Some(netns))?;
        // As the kernel: a master that cannot take the port fails the whole request.
        if let Some(bridge) = master {
            check_bridge(&mut m, bridge)?;
        }
        if m.net(HOST).links.contains_key(host.as_str()) {
            return Err(SystemError::AlreadyExists {
                object: format!("link {host}"),
            });
        }
        if m.net(pod_net).links.contains_key(peer.as_str()) {
            return Err(SystemError::AlreadyExists {
                object: format!("link {peer} in {}", netns.display()),
            });
        }
        let mk = |peer_net: u64, peer: &IfName| FakeLink {
            kind: Kind::Veth {
                peer_net,
                peer: peer.to_string(),
            },
            up: false,
            mtu,
            master: None,
            addresses: BTreeSet::new(),
            neighbours: Default::default(),
            host_routes: Default::default(),
        };
        let mut host_link = mk(pod_net, peer);
        host_link.master = master.map(|b| b.to_string());
        let peer_link = mk(HOST, host);
        m.net(HOST).links.insert(host.to_string(), host_link);
        m.net(pod_net).links.insert(peer.to_string(), peer_link);
        Ok(())
    }

    async fn set_master(&self, link: &IfName, master: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("set_master {link} {master}")).await?;
        check_bridge(&mut m, master)?;
        m.link_mut(None, link)?.master = Some(master.to_string());
        Ok(())
    }

    async fn link_up(&self, netns: Option<&Path>, link: &IfName) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("link_up {link} {}", ns_name(netns)))
            .await?;
        m.link_mut(netns, link)?.up = true;
        Ok(())
    }

    async fn set_mtu(
        &self,
        netns: Option<&Path>,
        link: &IfName,
        mtu: u32,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("set_mtu {link} {mtu} {}", ns_name(netns)))
            .await?;
        m.link_mut(netns, link)?.mtu = mtu;
        Ok(())
    }

    async fn add_address(
        &self,
        netns: &Path,
        link: &IfName,
        address: IpNet,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("add_address {address} {link} {}", netns.display()))
            .await?;
        m.link_mut(Some(netns), link)?.addresses.insert(address);
        Ok(())
    }

    async fn add_default_route(
        &self,
        netns: &Path,
        link: &IfName,
        gateway: IpAddr,
    ) -> Result<(), SystemError> {
        let mut m = self
            .call(format!(
                "add_default_route {gateway} {link} {}",
                netns.display()
            ))
            .await?;
        let l = m.link_mut(Some(netns), link)?;
        // A link-local gateway (the routed datapath's) is on-link by definition.
        let on_link = l.addresses.iter().any(|a| a.contains(&gateway))
            || gateway == crate::datapath::gateway_for(gateway);
        if !l.up || !on_link {
            return Err(SystemError::other(
                format!(
                    "default route via {gateway} dev {link} in {}",
                    netns.display()
                ),
                "network is unreachable",
            ));
        }
        let id = m.net_id(Some(netns))?;
        m.net(id).routes.insert((link.to_string(), gateway));
        Ok(())
    }

    async fn loopback_up(&self, netns: &Path) -> Result<(), SystemError> {
        let mut m = self
            .call(format!("loopback_up {}", netns.display()))
            .await?;
        let id = m.net_id(Some(netns))?;
        m.net(id).loopback_up = true;
        Ok(())
    }

    async fn delete_link(&self, netns: Option<&Path>, link: &IfName) -> Result<bool, SystemError> {
        let mut m = self
            .call(format!("delete_link {link} {}", ns_name(netns)))
            .await?;
        let Some(id) = m.existing_net_id(netns)? else {
            return Ok(false);
        };
        let existed = m.net(id).links.contains_key(link.as_str());
        m.remove_link(id, link.as_str());
        Ok(existed)
    }

    async fn retire_link(&self, netns: Option<&Path>, link: &IfName) -> Result<bool, SystemError> {
        let mut m = self
            .call(format!("retire_link {link} {}", ns_name(netns)))
            .await?;
        let Some(net) = m.existing_net_id(netns)? else {
            return Ok(false);
        };
        let Some(mut found) = m.net(net).links.remove(link.as_str()) else {
            return Ok(false);
        };
        if net == HOST {
            // Off its bridge in the same request, as the kernel is asked to.
            found.master = None;
        } else {
            found.up = false;
        }
        m.retired += 1;
        let retired = format!("{}{:012x}", crate::names::RETIRED_VETH_PREFIX, m.retired);
        if let Kind::Veth { peer_net, peer } = found.kind.clone()
            && let Some(Kind::Veth { peer: back, .. }) = m
                .nets
                .get_mut(&peer_net)
                .and_then(|n| n.links.get_mut(&peer))
                .map(|l| &mut l.kind)
        {
            *back = retired.clone();
        }
        m.net(net).links.insert(retired.clone(), found);
        if net == HOST {
            // What the real system leaves to its deletion batch (or the pod namespace's end)
            // a moment later, the model does at once: the pair goes, under the retired
            // name, so the link event names it as the kernel's would.
            m.remove_link(HOST, &retired);
        }
        Ok(true)
    }

    async fn link_info(
        &self,
        netns: Option<&Path>,
        link: &IfName,
    ) -> Result<Option<LinkInfo>, SystemError> {
        let m = self
            .call(format!("link_info {link} {}", ns_name(netns)))
            .await?;
        let id = m.net_id(netns)?;
        Ok(m.nets[&id].links.get(link.as_str()).map(|l| LinkInfo {
            up: l.up,
            mtu: l.mtu,
            master: l.master.clone().and_then(|n| IfName::new(n).ok()),
            addresses: l.addresses.iter().copied().collect(),
        }))
    }

    async fn list_links(
        &self,
        netns: Option<&Path>,
        prefix: &str,
    ) -> Result<Vec<IfName>, SystemError> {
        let m = self
            .call(format!("list_links {prefix} {}", ns_name(netns)))
            .await?;
        let id = m.net_id(netns)?;
        Ok(m.nets[&id]
            .links
            .keys()
            .filter(|n| n.starts_with(prefix))
            .filter_map(|n| IfName::new(n.clone()).ok())
            .collect())
    }

    async fn default_routes(&self, netns: &Path) -> Result<Vec<IpAddr>, SystemError> {
        let m = self
            .call(format!("default_routes {}", netns.display()))
            .await?;
        let id = m.net_id(Some(netns))?;
        Ok(m.nets[&id].routes.iter().map(|(_, gw)| *gw).collect())
    }

    async fn default_route_mtu(&self) -> Result<Option<u32>, SystemError> {
        let m = self.call("default_route_mtu".to_string()).await?;
        Ok(m.default_route_mtu)
    }

    async fn no_link_local(&self, link: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("no_link_local {link}")).await?;
        m.link_mut(None, link)?;
        Ok(())
    }

    async fn set_hairpin(&self, link: &IfName) -> Result<(), SystemError> {
        let mut m = self.call(format!("set_hairpin {link}")).await?;
        let l = m.link_mut(None, link)?;
        if l.master.is_none() {
            return Err(SystemError::other(
                format!("link {link}"),
                "is not a bridge port",
            ));
        }
        m.hairpin.insert(link.to_string());
        Ok(())
    }

    async fn add_route(&self, cidr: IpNet, via: IpAddr) -> Result<(), SystemError> {
        let mut m = self.call(format!("add_route {cidr} {via}")).await?;
        if m.foreign_routes.contains(&cidr) {
            return Err(SystemError::AlreadyExists {
                object: format!("route {cidr} (not ours)"),
            });
        }
        if let Some(other) = m.peer_routes.iter().find(|(c, v)| *c == cidr && *v != via) {
            return Err(SystemError::AlreadyExists {
                object: format!("route {} via {}", other.0, other.1),
            });
        }
        m.peer_routes.insert((cidr, via));
        Ok(())
    }

    async fn delete_route(&self, cidr: IpNet, via: IpAddr) -> Result<bool, SystemError> {
        let mut m = self.call(format!("delete_route {cidr} {via}")).await?;
        Ok(m.peer_routes.remove(&(cidr, via)))
    }

    async fn peer_routes(&self) -> Result<Vec<(IpNet, IpAddr)>, SystemError> {
        let m = self.call("peer_routes".to_string()).await?;
        Ok(m.peer_routes.iter().copied().collect())
    }

    async fn node_networks(&self) -> Result<Vec<NodeNetwork>, SystemError> {
        let m = self.call("node_networks".to_string()).await?;
        let host = &m.nets[&HOST];
        let addresses = host.links.iter().flat_map(|(name, link)| {
            link.addresses.iter().map(|a| NodeNetwork {
                network: *a,
                interface: Some(name.clone()),
                kind: NodeNetworkKind::Address,
            })
        });
        let peers = m.peer_routes.iter().map(|(cidr, _)| NodeNetwork {
            network: *cidr,
            interface: None,
            kind: NodeNetworkKind::Route { ours: true },
        });
        let foreign = m.foreign_routes.iter().map(|cidr| NodeNetwork {
            network: *cidr,
            interface: None,
            kind: NodeNetworkKind::Route { ours: false },
        });
        Ok(addresses.chain(peers).chain(foreign).collect())
    }
}

/// `master` is a bridge of the host namespace, or the kernel's refusal of it as a master.
fn check_bridge(m: &mut Model, master: &IfName) -> Result<(), SystemError> {
    match m.net(HOST).links.get(master.as_str()) {
        Some(l) if l.kind == Kind::Bridge => Ok(()),
        Some(_) => Err(SystemError::other(
            format!("link {master}"),
            "is not a bridge",
        )),
        None => Err(SystemError::NotFound {
            object: format!("bridge {master}"),
        }),
    }
}
