//! The machine's neighbour tables raised for a run that creates many pods, and put back.
//!
//! The tables' thresholds are machine-wide and a daemon confined to a node namespace cannot
//! raise them (see `netns_holder_core::neigh`): it refuses creates beyond what they hold.
//! A benchmark that creates a thousand pods raises them itself, from the initial namespace
//! (where the benchmark runs), for its run only: [`RaisedTables`] raises (never lowers) to
//! what a daemon with that pod CIDR needs, and on drop puts back each value it changed,
//! unless someone else changed it meanwhile (then it is left as it is).

use std::path::PathBuf;

use anyhow::{Context, Result};
use netns_holder_core::ipam::Ipam;
use netns_holder_core::neigh::{self, Thresholds};
use netns_holder_core::ports::Family;

/// Raised thresholds, restored on drop.
pub struct RaisedTables {
    changed: Vec<(PathBuf, u64, u64)>,
}

fn dir(family: Family) -> PathBuf {
    PathBuf::from(format!(
        "/proc/sys/{}",
        neigh::sysctl_prefix(family).replace('.', "/")
    ))
}

fn read(family: Family) -> Result<Thresholds> {
    let value = |file: &str| -> Result<u64> {
        let path = dir(family).join(file);
        std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .parse()
            .with_context(|| format!("parsing {}", path.display()))
    };
    Ok(Thresholds {
        gc_thresh1: value("gc_thresh1")?,
        gc_thresh2: value("gc_thresh2")?,
        gc_thresh3: value("gc_thresh3")?,
    })
}

impl RaisedTables {
    /// Raises the IPv4 table (and the IPv6 one if `dual_stack`) to what a daemon with pod
    /// CIDR `pod_cidr_v4` needs. Must run in the initial network namespace.
    pub fn for_pod_cidr(pod_cidr_v4: &str, dual_stack: bool) -> Result<Self> {
        let cidr: ipnet::Ipv4Net = pod_cidr_v4
            .parse()
            .with_context(|| format!("pod CIDR {pod_cidr_v4}"))?;
        // The daemon's own count: its IPv4 pool.
        let capacity = Ipam::new(cidr, None)
            .usage()
            .first()
            .map_or(0, |p| u64::try_from(p.capacity).unwrap_or(u64::MAX));
        let mut families = vec![Family::V4];
        if dual_stack {
            families.push(Family::V6);
        }
        let mut changed = Vec::new();
        for family in families {
            let now = read(family)?;
            let want = neigh::raise(now, neigh::required(capacity, neigh::entries(family), now));
            for (file, old, new) in [
                ("gc_thresh3", now.gc_thresh3, want.gc_thresh3),
                ("gc_thresh2", now.gc_thresh2, want.gc_thresh2),
            ] {
                if new > old {
                    let path = dir(family).join(file);
                    std::fs::write(&path, new.to_string())
                        .with_context(|| format!("raising {}", path.display()))?;
                    eprintln!("raised {} from {old} to {new} for this run", path.display());
                    changed.push((path, old, new));
                }
            }
        }
        Ok(Self { changed })
    }
}

impl Drop for RaisedTables {
    fn drop(&mut self) {
        // gc_thresh2 before gc_thresh3, the reverse of raising.
        for (path, old, ours) in self.changed.iter().rev() {
            let now = std::fs::read_to_string(path)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
            if now == Some(*ours) {
                if let Err(e) = std::fs::write(path, old.to_string()) {
                    eprintln!("restoring {}: {e}", path.display());
                }
            }
        }
    }
}
