//! The capabilities the daemon keeps after start, and dropping all the others; the limits
//! and tables of open descriptors it sets up before its threads start.
//!
//! Capabilities are per thread and inherited by threads created later, so [`drop_privileges`]
//! must run while the process still has a single thread (before the logger thread and the
//! async runtime start). Everything outside [`DAEMON_CAPABILITIES`] leaves the bounding set
//! too, so no program the daemon executes (e.g. `nft`) can regain it, root or not.

use caps::{CapSet, Capability, CapsHashSet};
use thiserror::Error;

/// What the daemon needs, and why:
/// - `CAP_NET_ADMIN`: links, addresses, routes, nftables, conntrack, net sysctls;
/// - `CAP_SYS_ADMIN`: `unshare`/`setns` into pod namespaces, bind mounts and unmounts;
/// - `CAP_SYS_PTRACE`: reading `/proc/<pid>/{ns,environ}` of the unprivileged pauses;
/// - `CAP_DAC_READ_SEARCH`: reading a pause's `/proc/<pid>/environ` (its node tag), a file
///   owned by the pause's uid with mode 0400 (read-only bypass, not `CAP_DAC_OVERRIDE`);
/// - `CAP_KILL`: signalling the pauses, which run as another uid;
/// - `CAP_SETUID`, `CAP_SETGID`: starting each pause as 65535:65535 with no groups.
pub const DAEMON_CAPABILITIES: [Capability; 7] = [
    Capability::CAP_NET_ADMIN,
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_KILL,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// Dropping capabilities failed.
#[derive(Debug, Error)]
#[error("cannot drop capability set {set}: {source}")]
pub struct PrivilegeError {
    /// The capability set being changed (bounding, inheritable, ambient, permitted, ...).
    set: &'static str,
    /// What the kernel said.
    #[source]
    source: caps::errors::CapsError,
}

fn failed(set: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError { set, source }
}

/// Drops every capability outside [`DAEMON_CAPABILITIES`] from the calling thread's bounding,
/// inheritable, ambient, permitted and effective sets. Call it single-threaded (see the
/// module documentation). A no-op for capabilities the thread does not have.
pub fn drop_privileges() -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = DAEMON_CAPABILITIES.into_iter().collect();
    // The bounding set first: removing from it needs CAP_SETPCAP, which goes next.
    let bounding = caps::read(None, CapSet::Bounding).map_err(failed("bounding"))?;
    for cap in bounding.difference(&keep) {
        caps::drop(None, CapSet::Bounding, *cap).map_err(failed("bounding"))?;
    }
    caps::clear(None, CapSet::Ambient).map_err(failed("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(failed("inheritable"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(failed("permitted"))?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Effective, &kept).map_err(failed("effective"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(failed("permitted"))?;
    Ok(())
}

/// Raises the soft limit of open files to the hard limit (which needs no privilege) and
/// returns the limit now in force. The daemon holds one descriptor per adopted pause it
/// watches (a pidfd) besides its sockets, and the default soft limit (1024) would cap those
/// watches far below the number of pods a node can have. Failure keeps the old limit.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct behind the valid pointer it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct behind the valid pointer it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// How many descriptors the daemon's descriptor table holds from the start
/// ([`reserve_descriptor_table`]).
pub const DESCRIPTOR_TABLE: u64 = 4096;

/// Grows this process's descriptor table to hold `entries` descriptors (at most `limit`,
/// the open-file limit) now, and returns its size. The kernel starts a table at 64 entries
/// and doubles it when a descriptor does not fit; in a process with more than one thread,
/// each growth waits for an RCU grace period (`expand_fdtable`), and every thread that opens
/// a file or socket meanwhile waits with it. 100 creates at once took the daemon from 64
/// past 256 descriptors and stalled its threads there for tens of milliseconds in all
/// (`expand_files` in an off-CPU profile). Called before the runtime's threads start, the
/// one growth is cheap; a table never shrinks. It costs 8 bytes per entry.
pub fn reserve_descriptor_table(entries: u64, limit: u64) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    let highest = entries.min(limit).saturating_sub(1);
    let highest = libc::c_int::try_from(highest).unwrap_or(libc::c_int::MAX);
    let any = std::fs::File::open("/dev/null")?;
    // SAFETY: F_DUPFD_CLOEXEC duplicates the open descriptor `any` onto the lowest free
    // number at or above `highest`; the duplicate is closed at once below.
    let duplicate = unsafe { libc::fcntl(any.as_raw_fd(), libc::F_DUPFD_CLOEXEC, highest) };
    if duplicate < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `duplicate` is the descriptor just made, owned by nobody else.
    unsafe { libc::close(duplicate) };
    descriptor_table_size()
}

/// The size of this process's descriptor table (`FDSize` in `/proc/self/status`).
pub fn descriptor_table_size() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("FDSize:"))
        .and_then(|size| size.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no FDSize in /proc/self/status"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_table_is_grown_once_to_the_size_asked() {
        let limit = raise_open_file_limit().unwrap();
        let size = reserve_descriptor_table(DESCRIPTOR_TABLE, limit).unwrap();
        assert!(
            size >= DESCRIPTOR_TABLE.min(limit),
            "FDSize {size} after reserving {DESCRIPTOR_TABLE} (limit {limit})"
        );
        assert_eq!(descriptor_table_size().unwrap(), size);
        // Within the limit only: asking past it reserves what the limit allows.
        let capped = reserve_descriptor_table(u64::MAX, 64).unwrap();
        assert!(capped >= 64, "FDSize {capped}");
    }

    #[test]
    fn open_file_limit_is_raised_to_the_hard_limit() {
        let limit = raise_open_file_limit().unwrap();
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct behind the valid pointer it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert_eq!(limit, now.rlim_cur);
    }
}
