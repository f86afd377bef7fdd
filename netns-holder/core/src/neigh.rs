//! Neighbour tables (ARP and NDP caches) sized for the node's pod capacity, as pure data.
//!
//! # Why
//!
//! Every pod puts entries into the kernel's neighbour tables: the node's entry for the
//! pod's address and the pod's entry for its gateway, per family, plus (IPv6) the pod's
//! link-local address and multicast entries for MLD and router solicitation. The kernel
//! refuses new entries once a table holds `gc_thresh3` of them (`neighbour table
//! overflow`): a pod whose entry cannot be made does not answer, although its link,
//! addresses and routes are all in place. With the defaults (128/512/1024) that happens at a
//! few hundred pods (issue 14: pods unreachable for seconds at 850 pods on one node).
//!
//! Counted on Linux 6.18 with the bridge datapath, dual-stack, after the node pinged every
//! pod and every pod its gateway (`ip neigh show nud all` in the node and each pod):
//!
//! | family | node namespace | pod namespace | unicast (must stay) |
//! |---|---|---|---|
//! | IPv4 (`arp_cache`) | pod address | gateway | 2 |
//! | IPv6 (`ndisc_cache`) | pod address, pod link-local, `ff02::16` and a solicited-node group on the host veth, the pod's solicited-node group on the bridge | gateway, `ff02::2`, `ff02::16` | 3 |
//!
//! That is [`V4_ENTRIES`] (2 in all, 2 unicast) and [`V6_ENTRIES`] (8 in all, 3 unicast).
//! Multicast and `NOARP` entries are the first a forced garbage collection removes, so
//! only the unicast ones must fit under `gc_thresh3`; the others decide how early the
//! forced collection starts (`gc_thresh2`).
//!
//! # Per namespace or global?
//!
//! Global, on this kernel (6.18) as on every kernel since network namespaces exist: the
//! tables (`arp_tbl`, `nd_tbl`) and their `gc_thresh1/2/3` are one per machine, shared by
//! every network namespace, and their entry counts include every namespace's entries.
//! `net.ipv{4,6}.neigh.default.gc_thresh*` exist only in the initial network namespace's
//! `/proc/sys` (in any other, `/proc/sys/net/ipv4/neigh/default` does not exist at all),
//! and `RTM_SETNEIGHTBL` with thresholds from another namespace fails with `ENOENT`; reading
//! them with `RTM_GETNEIGHTBL` (`ip ntable show`) works from any namespace.
//!
//! # What the daemon does
//!
//! At start it reads the thresholds and compares them with [`required`] for its capacity:
//! * enough already: nothing is written;
//! * too low, and its node namespace is the initial one (a real node): it raises each value
//!   that is too low ([`raise`]; a larger value the operator set is never lowered), logs
//!   and reports the previous and new values;
//! * too low, and it cannot raise them (a daemon confined to a network namespace of its own,
//!   as in the tests and the demo, which must not change the whole machine behind the
//!   operator's back; or a read-only `/proc/sys`): it changes nothing, and refuses every
//!   create beyond [`pod_limit`] pods with an error naming the limit, the sysctl and the
//!   value it needs.

use std::fmt;

use serde::Serialize;

use crate::ports::Family;

/// Neighbour entries one pod puts into a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PodEntries {
    /// Every entry, multicast and `NOARP` ones included.
    pub total: u64,
    /// The unicast ones, which the kernel's forced garbage collection cannot free while the
    /// pod is in use.
    pub unicast: u64,
}

/// Entries of one pod in the IPv4 table (`arp_cache`).
pub const V4_ENTRIES: PodEntries = PodEntries {
    total: 2,
    unicast: 2,
};
/// Entries of one (dual-stack) pod in the IPv6 table (`ndisc_cache`).
pub const V6_ENTRIES: PodEntries = PodEntries {
    total: 8,
    unicast: 3,
};
/// Room for the node's own neighbours besides the pods' (the kernel's default
/// `gc_thresh2`), added to the sized `gc_thresh2`.
pub const NODE_ROOM_THRESH2: u64 = 512;
/// The same for `gc_thresh3` (the kernel's default `gc_thresh3`).
pub const NODE_ROOM_THRESH3: u64 = 1024;
/// The largest value a threshold sysctl (a C `int`) holds.
pub const MAX_THRESH: u64 = i32::MAX as u64;

/// The entries of `family`'s table per pod.
pub fn entries(family: Family) -> PodEntries {
    match family {
        Family::V4 => V4_ENTRIES,
        Family::V6 => V6_ENTRIES,
    }
}

/// The sysctl directory of `family`'s defaults, e.g. `net.ipv4.neigh.default`.
pub fn sysctl_prefix(family: Family) -> &'static str {
    match family {
        Family::V4 => "net.ipv4.neigh.default",
        Family::V6 => "net.ipv6.neigh.default",
    }
}

/// The kernel's name of `family`'s table (as `ip ntable` shows it).
pub fn table_name(family: Family) -> &'static str {
    match family {
        Family::V4 => "arp_cache",
        Family::V6 => "ndisc_cache",
    }
}

/// The three garbage collection thresholds of one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Thresholds {
    /// Below this many entries the collector leaves the table alone.
    pub gc_thresh1: u64,
    /// Above this many, a forced collection may run every 5 s.
    pub gc_thresh2: u64,
    /// The hard limit: no entry beyond it.
    pub gc_thresh3: u64,
}

impl fmt::Display for Thresholds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "gc_thresh1 {} gc_thresh2 {} gc_thresh3 {}",
            self.gc_thresh1, self.gc_thresh2, self.gc_thresh3
        )
    }
}

/// The thresholds a table needs for `pods` pods of `per_pod` entries each, given the
/// `current` ones: `gc_thresh2` holds every pod's entries plus room for the node's own
/// ([`NODE_ROOM_THRESH2`]), so no forced collection runs in normal operation;
/// `gc_thresh3` twice every pod's entries plus [`NODE_ROOM_THRESH3`], leaving room for pods
/// that talk to each other directly on the node (each such pair adds an entry that the
/// per-pod count leaves out) and for stale entries awaiting collection. `gc_thresh1` is not
/// the daemon's concern and stays as it is.
pub fn required(pods: u64, per_pod: PodEntries, current: Thresholds) -> Thresholds {
    let ours = pods.saturating_mul(per_pod.total);
    Thresholds {
        gc_thresh1: current.gc_thresh1,
        gc_thresh2: ours.saturating_add(NODE_ROOM_THRESH2).min(MAX_THRESH),
        gc_thresh3: ours
            .saturating_mul(2)
            .saturating_add(NODE_ROOM_THRESH3)
            .min(MAX_THRESH),
    }
}

/// The values to write: each the larger of `current` and `required`. Never lowers one.
pub fn raise(current: Thresholds, required: Thresholds) -> Thresholds {
    Thresholds {
        gc_thresh1: current.gc_thresh1.max(required.gc_thresh1),
        gc_thresh2: current.gc_thresh2.max(required.gc_thresh2),
        gc_thresh3: current.gc_thresh3.max(required.gc_thresh3),
    }
}

/// Whether `current` already meets `required`.
pub fn sufficient(current: Thresholds, required: Thresholds) -> bool {
    raise(current, required) == current
}

/// How many pods the table holds with `current` thresholds: pods whose unicast entries fit
/// under `gc_thresh3`.
pub fn pod_limit(current: Thresholds, per_pod: PodEntries) -> u64 {
    current.gc_thresh3 / per_pod.unicast.max(1)
}

/// What happened to one table at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The thresholds already sufficed; nothing was written.
    Sufficient,
    /// They were raised.
    Raised,
    /// They were too low and could not be raised; creates are limited.
    NotRaised,
}

/// One table's sizing, for the log and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableReport {
    /// The family.
    pub family: Family,
    /// The thresholds found at start.
    pub previous: Thresholds,
    /// The thresholds in force now.
    pub current: Thresholds,
    /// The thresholds the node's capacity calls for.
    pub required: Thresholds,
    /// What was done.
    pub outcome: Outcome,
    /// Why they could not be raised (with [`Outcome::NotRaised`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Pods this table holds now, when that limits creates: [`Outcome::NotRaised`] and
    /// fewer than the capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_limit: Option<u64>,
}

/// The sizing of every table the node uses, and the pod capacity it was done for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeighbourReport {
    /// Pods the node can hold (its IPv4 pool).
    pub capacity: u64,
    /// IPv4, then IPv6 (dual-stack only).
    pub tables: Vec<TableReport>,
}

impl NeighbourReport {
    /// The most pods creates may reach: the smallest limit of a table that could not be
    /// raised, `None` when no table limits them.
    pub fn pod_limit(&self) -> Option<(u64, &TableReport)> {
        self.tables
            .iter()
            .filter_map(|t| t.pod_limit.map(|l| (l, t)))
            .min_by_key(|(l, _)| *l)
    }
}

/// The refusal of a create beyond the limit, naming the table, the sysctl and the value it
/// needs.
pub fn limit_message(limit: u64, table: &TableReport) -> String {
    format!(
        "the kernel's {} neighbour table holds entries for {limit} pods of this node \
         ({}.gc_thresh3 = {}, {} entries per pod); more pods would be unreachable \
         (neighbour table overflow). Raise it in the initial network namespace, e.g. \
         `sysctl -w {}.gc_thresh2={} {}.gc_thresh3={}`, and restart the daemon{}",
        table.family.name(),
        sysctl_prefix(table.family),
        table.current.gc_thresh3,
        entries(table.family).unicast,
        sysctl_prefix(table.family),
        table.required.gc_thresh2,
        sysctl_prefix(table.family),
        table.required.gc_thresh3,
        table
            .error
            .as_ref()
            .map(|e| format!(" (the daemon could not: {e})"))
            .unwrap_or_default()
    )
}

/// Parses the table-wide thresholds of `table` (`arp_cache`, `ndisc_cache`) out of
/// `ip ntable show` output: the first `thresh1 N thresh2 N thresh3 N` line after the
/// table's own header (`inet arp_cache`), before any per-device block.
pub fn parse_ntable(text: &str, table: &str) -> Option<Thresholds> {
    let mut in_table = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [family, name] if family.starts_with("inet") => in_table = *name == table,
            ["dev", ..] if in_table => return None,
            _ if in_table && words.first() == Some(&"thresh1") => {
                let value = |key: &str| -> Option<u64> {
                    let i = words.iter().position(|w| *w == key)?;
                    words.get(i + 1)?.parse().ok()
                };
                return Some(Thresholds {
                    gc_thresh1: value("thresh1")?,
                    gc_thresh2: value("thresh2")?,
                    gc_thresh3: value("thresh3")?,
                });
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULTS: Thresholds = Thresholds {
        gc_thresh1: 128,
        gc_thresh2: 512,
        gc_thresh3: 1024,
    };

    #[test]
    fn required_covers_every_pod_with_room() {
        // A /24: 253 pods.
        let r = required(253, V4_ENTRIES, DEFAULTS);
        assert_eq!(
            r,
            Thresholds {
                gc_thresh1: 128,
                gc_thresh2: 253 * 2 + 512,
                gc_thresh3: 253 * 2 * 2 + 1024,
            }
        );
        let r6 = required(253, V6_ENTRIES, DEFAULTS);
        assert_eq!(r6.gc_thresh2, 253 * 8 + 512);
        assert_eq!(r6.gc_thresh3, 253 * 8 * 2 + 1024);
        // 850 pods (issue 14) need more than the defaults; a /16 stays within an int.
        assert!(!sufficient(DEFAULTS, required(850, V4_ENTRIES, DEFAULTS)));
        let huge = required(u64::MAX / 2, V6_ENTRIES, DEFAULTS);
        assert_eq!(huge.gc_thresh3, MAX_THRESH);
    }

    #[test]
    fn raising_never_lowers() {
        let operator = Thresholds {
            gc_thresh1: 1024,
            gc_thresh2: 100_000,
            gc_thresh3: 1_000,
        };
        let want = required(1021, V4_ENTRIES, operator);
        let new = raise(operator, want);
        assert_eq!(
            new,
            Thresholds {
                gc_thresh1: 1024,
                gc_thresh2: 100_000,
                gc_thresh3: 1021 * 4 + 1024,
            }
        );
        assert!(sufficient(new, want));
        assert!(sufficient(new, required(10, V4_ENTRIES, new)));
    }

    #[test]
    fn the_limit_counts_unicast_entries_under_thresh3() {
        assert_eq!(pod_limit(DEFAULTS, V4_ENTRIES), 512);
        assert_eq!(pod_limit(DEFAULTS, V6_ENTRIES), 341);
        let table = |family, limit| TableReport {
            family,
            previous: DEFAULTS,
            current: DEFAULTS,
            required: required(1021, entries(family), DEFAULTS),
            outcome: Outcome::NotRaised,
            error: Some("not the initial network namespace".into()),
            pod_limit: limit,
        };
        let report = NeighbourReport {
            capacity: 1021,
            tables: vec![table(Family::V4, Some(512)), table(Family::V6, Some(341))],
        };
        let (limit, t) = report.pod_limit().unwrap();
        assert_eq!((limit, t.family), (341, Family::V6));
        let text = limit_message(limit, t);
        for part in [
            "ipv6 neighbour table holds entries for 341 pods",
            "net.ipv6.neigh.default.gc_thresh3 = 1024",
            "sysctl -w net.ipv6.neigh.default.gc_thresh2=8680 net.ipv6.neigh.default.gc_thresh3=17360",
            "could not: not the initial network namespace",
        ] {
            assert!(text.contains(part), "{part}: {text}");
        }
        let fine = NeighbourReport {
            capacity: 1,
            tables: vec![table(Family::V4, None)],
        };
        assert_eq!(fine.pod_limit(), None);
    }

    #[test]
    fn parses_ip_ntable_output() {
        // `ip ntable show` (iproute2 6.1) in a non-initial namespace, trimmed.
        let text = "inet arp_cache \n    thresh1 128 thresh2 512 thresh3 1024 gc_int 30000 \n    \
                    refcnt 1 reachable 21728 base_reachable 30000 retrans 1000 \n\n\
                    inet arp_cache \n    dev lo \n    refcnt 1 reachable 40232 \n\n\
                    inet6 ndisc_cache \n    thresh1 256 thresh2 4096 thresh3 8192 gc_int 30000 \n\n\
                    inet6 ndisc_cache \n    dev lo \n";
        assert_eq!(parse_ntable(text, "arp_cache"), Some(DEFAULTS));
        assert_eq!(
            parse_ntable(text, "ndisc_cache"),
            Some(Thresholds {
                gc_thresh1: 256,
                gc_thresh2: 4096,
                gc_thresh3: 8192
            })
        );
        assert_eq!(parse_ntable(text, "other"), None);
        assert_eq!(
            parse_ntable("inet arp_cache \n    dev lo \n", "arp_cache"),
            None
        );
        assert_eq!(
            parse_ntable(
                "inet arp_cache \n thresh1 x thresh2 1 thresh3 2\n",
                "arp_cache"
            ),
            None
        );
    }
}
