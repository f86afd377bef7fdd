//! The capabilities the daemon keeps after start, and dropping all the others.
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

#[cfg(test)]
mod tests {
    use super::*;

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
