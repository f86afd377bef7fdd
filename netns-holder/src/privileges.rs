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
