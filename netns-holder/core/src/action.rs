//! [`Action`]: one kernel operation, as data, naming every object it touches; and [`Step`],
//! a create action paired with the action that undoes it. The planners ([`crate::plan`],
//! [`crate::peers`]) produce them, the executor runs them.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;

use crate::datapath::Mac;
use crate::egress::EgressExempt;
use crate::firewall::{self, ConntrackFlush, FirewallTable, HostPortElement};
use crate::kernel::PauseProcess;
use crate::names::{IfName, PodId, PodName};

/// One kernel operation, naming every object it touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// Create a network namespace bind-mounted at `path`.
    CreateNetns {
        /// The bind mount.
        path: PathBuf,
    },
    /// Unmount and unlink the namespace at `path`.
    DeleteNetns {
        /// The bind mount.
        path: PathBuf,
    },
    /// Bind-mount the namespace `pause` holds at `path` again (someone unmounted it).
    RestoreNetns {
        /// The bind mount.
        path: PathBuf,
        /// The pod's live pause, which is in that namespace.
        pause: PauseProcess,
    },
    /// Start the pause process for pod `id` inside `netns`.
    StartPause {
        /// The pod id (tagged into `argv[0]`).
        id: PodId,
        /// The namespace.
        netns: PathBuf,
    },
    /// Stop the pause process of pod `id`. `process: None` (only ever in an undo) means the
    /// process started by the step being undone; the executor fills it in.
    StopPause {
        /// The pod id.
        id: PodId,
        /// The process identity.
        process: Option<PauseProcess>,
    },
    /// Bring `lo` up with 127.0.0.1/8 and ::1 inside `netns`.
    LoopbackUp {
        /// The namespace.
        netns: PathBuf,
    },
    /// Ensure the node bridge exists, is up and has the gateway addresses.
    EnsureBridge {
        /// The bridge.
        bridge: IfName,
        /// Gateway addresses with the pod CIDR prefix lengths.
        addresses: Vec<IpNet>,
    },
    /// Ensure the host link `link` (`lo` on the routed datapath) is up and carries the
    /// node's own pod-CIDR addresses.
    EnsureNodeAddresses {
        /// The link.
        link: IfName,
        /// The node's addresses (/32 and /128).
        addresses: Vec<IpNet>,
    },
    /// Add (or replace) a permanent neighbour entry `address` -> `mac` on `link`
    /// (`netns: None` is the host namespace).
    AddNeighbour {
        /// The namespace, `None` for the host.
        netns: Option<PathBuf>,
        /// The link.
        link: IfName,
        /// The neighbour's address.
        address: IpAddr,
        /// Its MAC address.
        mac: Mac,
    },
    /// Add (or replace) the node's host route to a pod's `address` on its host veth `link`,
    /// with preferred source `source` (routed datapath; tagged
    /// [`crate::datapath::POD_ROUTE_PROTOCOL`]).
    AddHostRoute {
        /// The host veth.
        link: IfName,
        /// The pod's address (/32 or /128).
        address: IpNet,
        /// The node's own address of that family, the source of node-to-pod traffic.
        source: IpAddr,
    },
    /// Turn on IP forwarding (IPv4, and IPv6 if dual-stack).
    EnableForwarding {
        /// Whether IPv6 forwarding is wanted too.
        ipv6: bool,
    },
    /// Create the veth pair: `host` in the host namespace, `peer` inside `netns`.
    CreateVeth {
        /// Host end.
        host: IfName,
        /// Pod end (its final name: created directly inside `netns`).
        peer: IfName,
        /// The pod namespace.
        netns: PathBuf,
        /// MTU of both ends.
        mtu: u32,
        /// MAC address of the host end (`None`: the kernel picks a random one).
        host_mac: Option<Mac>,
        /// MAC address of the pod end (`None`: random).
        peer_mac: Option<Mac>,
        /// The bridge the host end joins in the same request (`None`: none, routed).
        master: Option<IfName>,
    },
    /// Delete a link (`netns: None` is the host namespace).
    DeleteLink {
        /// The namespace, `None` for the host.
        netns: Option<PathBuf>,
        /// The link.
        link: IfName,
    },
    /// Rename a veth end out of the way ([`crate::names::RETIRED_VETH_PREFIX`]) instead of
    /// a synchronous unregister under RTNL. The host end (`netns: None`) also leaves its
    /// bridge, if any, and joins the next deletion batch; the kernel deletes the pair then,
    /// or with the pod's namespace, whichever comes first. A pod end (in a namespace that is
    /// not ours to end) is also set down, and goes with its host end.
    RetireLink {
        /// The namespace of a pod end, `None` for the host end.
        netns: Option<PathBuf>,
        /// The veth end.
        link: IfName,
    },
    /// Attach a host link to the bridge.
    SetMaster {
        /// The link.
        link: IfName,
        /// The bridge.
        master: IfName,
    },
    /// Set a link up (`netns: None` is the host namespace).
    LinkUp {
        /// The namespace, `None` for the host.
        netns: Option<PathBuf>,
        /// The link.
        link: IfName,
    },
    /// Set a link's MTU (`netns: None` is the host namespace).
    SetMtu {
        /// The namespace, `None` for the host.
        netns: Option<PathBuf>,
        /// The link.
        link: IfName,
        /// The MTU.
        mtu: u32,
    },
    /// Turn IPv6 off on a host-side link (`disable_ipv6`, before it comes up): a host veth
    /// that carries no IPv6 for its pod (a bridge port, or a routed pod without IPv6
    /// addresses) would otherwise get an `ff00::/8` route of its own, and the kernel walks
    /// all of them, one per pod, on IPv6 route inserts and lookups.
    DisableIpv6 {
        /// The link (host namespace).
        link: IfName,
    },
    /// Give a host-side link no IPv6 link-local address (`addrgenmode none`, before it comes
    /// up): for the host veth of a routed pod with IPv6, which must keep IPv6 but needs no
    /// address (the pod's neighbour entries are permanent); each link-local costs a route
    /// insert and a walk of the node's IPv6 FIB under RTNL.
    NoLinkLocal {
        /// The link (host namespace).
        link: IfName,
    },
    /// Turn IPv6 duplicate address detection off on a link inside `netns`.
    DisableDad {
        /// The namespace.
        netns: PathBuf,
        /// The link.
        link: IfName,
    },
    /// Add an address to a link inside `netns`.
    AddAddress {
        /// The namespace.
        netns: PathBuf,
        /// The link.
        link: IfName,
        /// The address with prefix length.
        address: IpNet,
    },
    /// Add a default route via `gateway` over `link` inside `netns`.
    AddDefaultRoute {
        /// The namespace.
        netns: PathBuf,
        /// The link.
        link: IfName,
        /// The gateway.
        gateway: IpAddr,
    },
    /// Turn hairpin mode on for the bridge port `link` (a pod reaching its own host port
    /// through the node comes back out of the port it went in by, when the bridge runs the
    /// IP hooks itself, i.e. with `br_netfilter`).
    SetHairpin {
        /// The host veth (a port of the bridge).
        link: IfName,
    },
    /// Let `link` (the bridge) route 127.0.0.0/8 sources and destinations
    /// (`net.ipv4.conf.<link>.route_localnet = 1`), so the node reaches host ports on
    /// 127.0.0.1.
    EnableRouteLocalnet {
        /// The bridge.
        link: IfName,
    },
    /// Publish the host ports of `pod`: add its map elements in one atomic transaction.
    AddHostPorts {
        /// The pod.
        pod: PodName,
        /// Its elements.
        elements: Vec<HostPortElement>,
    },
    /// Withdraw the host ports of `pod`: delete its map elements (missing ones are fine).
    RemoveHostPorts {
        /// The pod.
        pod: PodName,
        /// Its elements.
        elements: Vec<HostPortElement>,
    },
    /// Delete UDP conntrack entries of `pod`'s addresses and host ports.
    FlushConntrack {
        /// The pod.
        pod: PodName,
        /// What to delete.
        flushes: Vec<ConntrackFlush>,
    },
    /// Replace the whole nftables table (base and every element) in one transaction.
    ReplaceFirewall {
        /// The table.
        table: FirewallTable,
    },
    /// Make the egress exemption sets hold exactly `exempt` (one transaction, nothing else
    /// of the table touched).
    SyncEgressExempt {
        /// The destinations reached without masquerade.
        exempt: EgressExempt,
    },
    /// Route `cidr` (a peer node's pod CIDR) via `via` in the node namespace.
    AddRoute {
        /// The destination.
        cidr: IpNet,
        /// The peer node's address.
        via: IpAddr,
    },
    /// Delete our route to `cidr` via `via` in the node namespace.
    DeleteRoute {
        /// The destination.
        cidr: IpNet,
        /// The gateway.
        via: IpAddr,
    },
}

struct Ns<'a>(&'a Option<PathBuf>);

impl fmt::Display for Ns<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("the host namespace"),
            Some(p) => write!(f, "{}", p.display()),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CreateNetns { path } => write!(f, "create netns {}", path.display()),
            Self::DeleteNetns { path } => write!(f, "delete netns {}", path.display()),
            Self::RestoreNetns { path, pause } => {
                write!(f, "restore netns {} from pause {pause}", path.display())
            }
            Self::StartPause { id, netns } => {
                write!(f, "start pause for pod {id} in {}", netns.display())
            }
            Self::StopPause {
                id,
                process: Some(p),
            } => write!(f, "stop pause {p} of pod {id}"),
            Self::StopPause { id, process: None } => {
                write!(f, "stop the pause just started for pod {id}")
            }
            Self::LoopbackUp { netns } => write!(f, "bring loopback up in {}", netns.display()),
            Self::EnsureBridge { bridge, addresses } => {
                write!(f, "ensure bridge {bridge} with")?;
                for a in addresses {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Self::EnsureNodeAddresses { link, addresses } => {
                write!(f, "ensure node addresses on {link}:")?;
                for a in addresses {
                    write!(f, " {a}")?;
                }
                Ok(())
            }
            Self::AddNeighbour {
                netns,
                link,
                address,
                mac,
            } => write!(
                f,
                "add permanent neighbour {address} lladdr {mac} dev {link} in {}",
                Ns(netns)
            ),
            Self::AddHostRoute {
                link,
                address,
                source,
            } => write!(f, "add host route {address} dev {link} src {source}"),
            Self::EnableForwarding { ipv6: false } => f.write_str("enable IPv4 forwarding"),
            Self::EnableForwarding { ipv6: true } => f.write_str("enable IPv4 and IPv6 forwarding"),
            Self::CreateVeth {
                host,
                peer,
                netns,
                mtu,
                master,
                ..
            } => {
                write!(
                    f,
                    "create veth {host} <-> {peer} in {} (mtu {mtu})",
                    netns.display()
                )?;
                match master {
                    Some(bridge) => write!(f, " on bridge {bridge}"),
                    None => Ok(()),
                }
            }
            Self::DeleteLink { netns, link } => write!(f, "delete link {link} in {}", Ns(netns)),
            Self::RetireLink { netns: None, link } => write!(
                f,
                "retire link {link} (the kernel deletes it with the pod's namespace)"
            ),
            Self::RetireLink {
                netns: Some(netns),
                link,
            } => write!(
                f,
                "retire link {link} in {} (it goes with its host end)",
                netns.display()
            ),
            Self::SetMaster { link, master } => write!(f, "attach link {link} to bridge {master}"),
            Self::LinkUp { netns, link } => write!(f, "set link {link} up in {}", Ns(netns)),
            Self::SetMtu { netns, link, mtu } => {
                write!(f, "set mtu {mtu} on link {link} in {}", Ns(netns))
            }
            Self::DisableIpv6 { link } => {
                write!(f, "disable IPv6 on link {link} in the host namespace")
            }
            Self::NoLinkLocal { link } => {
                write!(f, "no IPv6 link-local on link {link} in the host namespace")
            }
            Self::DisableDad { netns, link } => {
                write!(f, "disable IPv6 DAD on link {link} in {}", netns.display())
            }
            Self::AddAddress {
                netns,
                link,
                address,
            } => {
                write!(
                    f,
                    "add address {address} to link {link} in {}",
                    netns.display()
                )
            }
            Self::AddDefaultRoute {
                netns,
                link,
                gateway,
            } => {
                write!(
                    f,
                    "add default route via {gateway} dev {link} in {}",
                    netns.display()
                )
            }
            Self::SetHairpin { link } => write!(f, "set hairpin mode on bridge port {link}"),
            Self::EnableRouteLocalnet { link } => {
                write!(f, "enable route_localnet on {link}")
            }
            Self::AddHostPorts { pod, elements } => write!(
                f,
                "publish {} host port element(s) of pod {pod} in {}",
                elements.len(),
                firewall::table_object()
            ),
            Self::RemoveHostPorts { pod, elements } => write!(
                f,
                "withdraw {} host port element(s) of pod {pod} from {}",
                elements.len(),
                firewall::table_object()
            ),
            Self::FlushConntrack { pod, flushes } => {
                write!(f, "flush conntrack of pod {pod}:")?;
                for (i, flush) in flushes.iter().enumerate() {
                    write!(f, "{} {flush}", if i == 0 { "" } else { "," })?;
                }
                Ok(())
            }
            Self::ReplaceFirewall { table } => write!(
                f,
                "replace {} ({} host port element(s))",
                firewall::table_object(),
                table.elements.len()
            ),
            Self::SyncEgressExempt { exempt } => write!(
                f,
                "set the egress exemptions of {} to {exempt}",
                firewall::table_object()
            ),
            Self::AddRoute { cidr, via } => write!(f, "add route {cidr} via {via}"),
            Self::DeleteRoute { cidr, via } => write!(f, "delete route {cidr} via {via}"),
        }
    }
}

/// A create step and the action that undoes it, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The forward action.
    pub action: Action,
    /// The compensating action, run (in reverse order) if a later step fails.
    pub undo: Option<Action>,
    /// Whether the steps after this one may run while it does: none of them needs what it
    /// makes. The plan still ends (or rolls back) only once it has finished.
    pub alongside: bool,
}

impl Step {
    /// A step undone by `undo`.
    pub(crate) fn new(action: Action, undo: Action) -> Self {
        Self {
            action,
            undo: Some(undo),
            alongside: false,
        }
    }

    /// A step undone by `undo`, that the steps after it may run alongside.
    pub(crate) fn alongside(action: Action, undo: Action) -> Self {
        Self {
            alongside: true,
            ..Self::new(action, undo)
        }
    }

    /// A step with no undo.
    pub(crate) fn plain(action: Action) -> Self {
        Self {
            action,
            undo: None,
            alongside: false,
        }
    }
}
