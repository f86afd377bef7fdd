//! Which namespace paths `attach` accepts.
//!
//! A caller of `attach` names an existing network namespace for the daemon to wire. Only
//! three kinds of path are accepted: a namespace bind-mounted directly in the daemon's
//! `netns_dir`; one in the system's `/run/netns` (where iproute2, containerd, CRI-O and podman
//! put theirs); or a process's own namespace link, `/proc/<pid>/ns/net` (also `self`,
//! `thread-self` and `/proc/<pid>/task/<tid>/ns/net`), which the kernel itself resolves.
//! The path must not itself be a symlink, and its directory, with every symlink resolved,
//! must be one of those directories. So `/run/netns/x -> /some/where` and
//! `/tmp/link-to-run-netns/x` are refused. Whether the file really is a network namespace is
//! checked separately (nsfs, type net).

use std::path::{Component, Path, PathBuf};

use thiserror::Error;

/// The system directory where other tools bind-mount named network namespaces.
pub const SYSTEM_NETNS_DIR: &str = "/run/netns";

/// `attach` was given a path outside the accepted places.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("netns path {} is not accepted: {reason}", shown(path))]
pub struct NetnsPathError {
    /// The path as given.
    pub path: PathBuf,
    /// Why it is refused.
    pub reason: String,
}

/// The path as an error shows it: control characters escaped, at most 256 characters.
fn shown(path: &Path) -> String {
    let text: String = path.to_string_lossy().escape_debug().collect();
    match text.char_indices().nth(256) {
        Some((cut, _)) => format!("{}... ({} bytes)", &text[..cut], path.as_os_str().len()),
        None => text,
    }
}

fn refuse(path: &Path, reason: impl Into<String>) -> NetnsPathError {
    NetnsPathError {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Whether `path` is, lexically, a process's network namespace link under `/proc`.
fn is_proc_netns_link(path: &Path) -> bool {
    let parts: Vec<&str> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let is_pid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match parts.as_slice() {
        // Not `self`/`thread-self`: resolved by the daemon, they would name its own namespace.
        ["proc", pid, "ns", "net"] => is_pid(pid),
        ["proc", pid, "task", tid, "ns", "net"] => is_pid(pid) && is_pid(tid),
        _ => false,
    }
}

/// The rules of the module documentation that need no filesystem: absolute, no `.` or `..`,
/// and (unless a `/proc/<pid>/ns/net` link) directly inside `netns_dir` or
/// [`SYSTEM_NETNS_DIR`] as written. Returns whether the path is a `/proc` link. The in-memory
/// fake system checks only these, so its tests never depend on what the machine's real
/// `/run/netns` holds.
pub fn check_attach_path_lexically(path: &Path, netns_dir: &Path) -> Result<bool, NetnsPathError> {
    check_attach_path_syntax(path)?;
    if is_proc_netns_link(path) {
        return Ok(true);
    }
    let parent = path
        .parent()
        .ok_or_else(|| refuse(path, "it has no directory"))?;
    if parent == netns_dir || parent == Path::new(SYSTEM_NETNS_DIR) {
        return Ok(false);
    }
    Err(refuse(
        path,
        format!(
            "it is in {}, not in {} or {SYSTEM_NETNS_DIR}, and not /proc/<pid>/ns/net",
            parent.display(),
            netns_dir.display()
        ),
    ))
}

fn check_attach_path_syntax(path: &Path) -> Result<(), NetnsPathError> {
    if !path.is_absolute() {
        return Err(refuse(path, "it is not absolute"));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(refuse(path, "it contains `.` or `..`"));
    }
    Ok(())
}

/// Checks `path` against the rules in the module documentation; `netns_dir` is the
/// daemon's own directory.
pub fn check_attach_path(path: &Path, netns_dir: &Path) -> Result<(), NetnsPathError> {
    check_attach_path_syntax(path)?;
    if is_proc_netns_link(path) {
        return refuse_node_namespace(path);
    }
    match std::fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_symlink() => {
            return Err(refuse(path, "it is a symlink"));
        }
        Ok(_) => {}
        // A missing namespace is reported by the existence check (NOT_FOUND); its place
        // still has to be right.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(refuse(path, format!("it cannot be read: {e}"))),
    }
    let parent = path
        .parent()
        .ok_or_else(|| refuse(path, "it has no directory"))?;
    let parent = parent
        .canonicalize()
        .map_err(|e| refuse(path, format!("its directory cannot be resolved: {e}")))?;
    let allowed: Vec<PathBuf> = [netns_dir, Path::new(SYSTEM_NETNS_DIR)]
        .iter()
        .filter_map(|dir| dir.canonicalize().ok())
        .collect();
    if allowed.contains(&parent) {
        return refuse_node_namespace(path);
    }
    Err(refuse(
        path,
        format!(
            "it is in {}, not in {} or {SYSTEM_NETNS_DIR}, and not /proc/<pid>/ns/net",
            parent.display(),
            netns_dir.display()
        ),
    ))
}

/// Refuses the namespace of the daemon itself (the node's) and of PID 1 (the host's): wiring
/// one of those as a pod would rename a link to `eth0` and replace the default route of the
/// node. Namespaces are compared by nsfs device and inode, whatever path names them.
fn refuse_node_namespace(path: &Path) -> Result<(), NetnsPathError> {
    use std::os::unix::fs::MetadataExt;
    // Missing: the existence check reports it.
    let Ok(target) = std::fs::metadata(path) else {
        return Ok(());
    };
    for (own, whose) in [
        ("/proc/thread-self/ns/net", "the daemon's own (the node's)"),
        ("/proc/1/ns/net", "PID 1's (the host's)"),
    ] {
        if let Ok(own) = std::fs::metadata(own)
            && own.dev() == target.dev()
            && own.ino() == target.ino()
        {
            return Err(refuse(path, format!("it is {whose} network namespace")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_links_are_recognised_lexically() {
        for ok in ["/proc/1/ns/net", "/proc/42/task/43/ns/net"] {
            assert!(is_proc_netns_link(Path::new(ok)), "{ok}");
        }
        for bad in [
            "/proc/1/ns/mnt",
            "/proc/self/ns/net",
            "/proc/thread-self/ns/net",
            "/proc/x1/ns/net",
            "/proc//ns/net",
            "/proc/self/task/1/ns/net",
            "/proc/1/ns/net/x",
            "/tmp/proc/1/ns/net",
        ] {
            assert!(!is_proc_netns_link(Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn the_lexical_check_needs_no_filesystem() {
        let netns_dir = Path::new("/nonexistent/netns-holder-test/netns");
        let ok = |p: &str| check_attach_path_lexically(Path::new(p), netns_dir);
        assert_eq!(ok("/nonexistent/netns-holder-test/netns/pod"), Ok(false));
        assert_eq!(ok("/run/netns/foreign"), Ok(false));
        assert_eq!(ok("/proc/42/ns/net"), Ok(true));
        for (bad, why) in [
            ("relative", "not absolute"),
            ("/run/netns/../x", "`..`"),
            ("/run/netns/sub/x", "not in"),
            ("/tmp/x", "not in"),
        ] {
            let err = ok(bad).unwrap_err();
            assert!(err.reason.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn paths_in_the_netns_dir_are_accepted_and_others_refused() {
        let dir = tempfile::tempdir().unwrap();
        let netns_dir = dir.path().join("netns");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir_all(&netns_dir).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(netns_dir.join("pod"), b"").unwrap();
        std::fs::write(elsewhere.join("pod"), b"").unwrap();
        std::os::unix::fs::symlink(elsewhere.join("pod"), netns_dir.join("link")).unwrap();
        std::os::unix::fs::symlink(&netns_dir, dir.path().join("dirlink")).unwrap();

        assert_eq!(
            check_attach_path(&netns_dir.join("pod"), &netns_dir),
            Ok(())
        );
        // A symlinked directory that resolves to the netns dir is the netns dir.
        assert_eq!(
            check_attach_path(&dir.path().join("dirlink/pod"), &netns_dir),
            Ok(())
        );

        let refused = |p: &Path, why: &str| {
            let err = check_attach_path(p, &netns_dir).unwrap_err();
            assert!(err.reason.contains(why), "{p:?}: {err}");
            assert!(err.to_string().contains(&p.display().to_string()), "{err}");
        };
        // Our own namespace is never a pod's, by whatever path.
        let own = PathBuf::from(format!("/proc/{}/ns/net", std::process::id()));
        refused(&own, "the daemon's own");
        refused(&elsewhere.join("pod"), "not in");
        refused(&netns_dir.join("link"), "symlink");
        // Missing, but in the right place: left to the existence check.
        assert_eq!(
            check_attach_path(&netns_dir.join("missing"), &netns_dir),
            Ok(())
        );
        refused(&elsewhere.join("missing"), "not in");
        refused(Path::new("relative/pod"), "not absolute");
        refused(&netns_dir.join("../elsewhere/pod"), "`..`");
        refused(Path::new("/etc/passwd"), "not in");
        refused(Path::new("/proc/1/ns/mnt"), "symlink");
    }
}
