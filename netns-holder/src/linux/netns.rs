//! Network namespace bind mounts: create (exclusive), delete, inspect, list, and opening a
//! namespace file to enter it.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, fstat, stat};
use nix::sys::statfs::{NSFS_MAGIC, statfs};

use super::netns_object;
use crate::system::SystemError;

/// The calling thread's own network namespace.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// The identity of the calling thread's network namespace.
pub(crate) fn current_key() -> Result<NetnsKey, SystemError> {
    let st = stat(THREAD_NETNS)
        .map_err(|e| SystemError::io(format!("netns {THREAD_NETNS}"), e.into()))?;
    Ok(NetnsKey {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Opens the calling thread's network namespace; returns the descriptor and its inode.
pub(crate) fn open_current() -> Result<(OwnedFd, u64), SystemError> {
    let fd = open(
        THREAD_NETNS,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| SystemError::io(format!("netns {THREAD_NETNS}"), e.into()))?;
    let inode = fstat(fd.as_fd())
        .map_err(|e| SystemError::io(format!("netns {THREAD_NETNS}"), e.into()))?
        .st_ino;
    Ok((fd, inode))
}

/// The identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NetnsKey {
    /// `st_dev` (the nsfs superblock).
    pub(crate) dev: u64,
    /// `st_ino` (the namespace's inode number).
    pub(crate) ino: u64,
}

/// The identity of whatever is at `path` (`None` if nothing is). Only meaningful as a
/// namespace identity if `path` is one; a key of any other file never equals a namespace's,
/// as its device differs.
pub(crate) fn key(path: &Path) -> Result<Option<NetnsKey>, SystemError> {
    match stat(path) {
        Ok(st) => Ok(Some(NetnsKey {
            dev: st.st_dev,
            ino: st.st_ino,
        })),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(SystemError::io(netns_object(path), e.into())),
    }
}

/// The identity of the namespace open as `fd` (opened from `path`, which names it in errors).
pub(crate) fn fd_key(fd: &OwnedFd, path: &Path) -> Result<NetnsKey, SystemError> {
    let st = fstat(fd).map_err(|e| SystemError::io(netns_object(path), e.into()))?;
    Ok(NetnsKey {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// Whether the open descriptor `fd` is a network namespace (nsfs, type `CLONE_NEWNET`).
fn is_netns_fd(fd: &OwnedFd) -> Result<bool, Errno> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the namespace type of the
    // valid descriptor `fd`; it has no memory effects in this process.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if kind < 0 {
        return match Errno::last() {
            // Not an nsfs file.
            Errno::ENOTTY | Errno::EINVAL => Ok(false),
            e => Err(e),
        };
    }
    Ok(kind == libc::CLONE_NEWNET)
}

/// Opens the network namespace bind-mounted at `path`, for `setns` or `IFLA_NET_NS_FD`.
/// A missing path is [`SystemError::NotFound`]; a path that is not a network namespace is
/// [`SystemError::Other`].
pub(crate) fn open_netns(path: &Path) -> Result<OwnedFd, SystemError> {
    let object = || netns_object(path);
    match statfs(path) {
        Ok(s) if s.filesystem_type() == NSFS_MAGIC => {}
        Ok(_) => {
            return Err(SystemError::other(
                object(),
                "is not a namespace (not nsfs)",
            ));
        }
        Err(Errno::ENOENT) => return Err(SystemError::NotFound { object: object() }),
        Err(e) => return Err(SystemError::io(object(), e.into())),
    }
    let fd = match open(path, OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Err(SystemError::NotFound { object: object() }),
        Err(e) => return Err(SystemError::io(object(), e.into())),
    };
    match is_netns_fd(&fd) {
        Ok(true) => Ok(fd),
        Ok(false) => Err(SystemError::other(
            object(),
            "is a namespace but not a network namespace",
        )),
        Err(e) => Err(SystemError::io(object(), e.into())),
    }
}

/// Whether `path` exists and is a network namespace.
pub(crate) fn exists(path: &Path) -> Result<bool, SystemError> {
    match open_netns(path) {
        Ok(_) => Ok(true),
        Err(SystemError::NotFound { .. }) | Err(SystemError::Other { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The identity of the network namespace at `path` (`None` if `path` is not one), taken
/// from the opened namespace itself, so it is the one `path` named at that moment.
pub(crate) fn identity(path: &Path) -> Result<Option<crate::kernel::NetnsId>, SystemError> {
    match open_netns(path) {
        Ok(fd) => {
            let key = fd_key(&fd, path)?;
            Ok(Some(crate::kernel::NetnsId {
                dev: key.dev,
                ino: key.ino,
            }))
        }
        Err(SystemError::NotFound { .. }) | Err(SystemError::Other { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Network namespace bind mounts directly inside `dir`, sorted.
pub(crate) fn list(dir: &Path) -> Result<Vec<PathBuf>, SystemError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SystemError::io(format!("netns dir {}", dir.display()), e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry =
            entry.map_err(|e| SystemError::io(format!("netns dir {}", dir.display()), e))?;
        let path = entry.path();
        if exists(&path)? {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

/// Directories already made shared mount points by this process.
fn prepared_dirs() -> &'static Mutex<HashSet<PathBuf>> {
    static DIRS: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
    DIRS.get_or_init(Default::default)
}

/// Creates `dir` if needed and makes it a shared mount point, like iproute2 does for
/// `/run/netns`: namespace mounts made in it then propagate to other mount namespaces (e.g.
/// of container runtimes) that are slaves of it. Done once per directory per process.
fn prepare_dir(dir: &Path) -> Result<(), SystemError> {
    let object = || format!("netns dir {}", dir.display());
    let mut done = prepared_dirs().lock().unwrap_or_else(|e| e.into_inner());
    if done.contains(dir) {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| SystemError::io(object(), e))?;
    let mut bound = false;
    loop {
        match mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => break,
            // Not a mount point: bind-mount it onto itself, then make that shared.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(dir),
                    dir,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| {
                    SystemError::io(format!("{}: bind-mounting onto itself", object()), e.into())
                })?;
                bound = true;
            }
            Err(e) => {
                return Err(SystemError::io(
                    format!("{}: making it a shared mount", object()),
                    e.into(),
                ));
            }
        }
    }
    done.insert(dir.to_path_buf());
    Ok(())
}

/// Creates a network namespace bind-mounted at `path`, exclusively. Call it on a throwaway
/// thread: the thread is left inside the new namespace ([`super::conn::create_netns`]).
pub(crate) fn create_blocking(path: &Path) -> Result<(), SystemError> {
    new_mount_point(path)?;
    let made = unshare(CloneFlags::CLONE_NEWNET)
        .map_err(|e| {
            SystemError::io(
                format!("{}: unshare(CLONE_NEWNET)", netns_object(path)),
                e.into(),
            )
        })
        .and_then(|()| bind_new(THREAD_NETNS, path));
    if made.is_err() {
        // Best effort: the mount point is ours (we created it exclusively above).
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Bind-mounts `ns`, a network namespace this process made and mounted nowhere (from
/// [`super::pool`]), at `path`, exclusively, as [`create_blocking`] does with a new one
/// (blocking; any thread of this process).
pub(crate) fn mount_made(path: &Path, ns: &OwnedFd) -> Result<(), SystemError> {
    new_mount_point(path)?;
    let made = bind_new(&format!("/proc/self/fd/{}", ns.as_raw_fd()), path);
    if made.is_err() {
        // Best effort: the mount point is ours (we created it exclusively above).
        let _ = std::fs::remove_file(path);
    }
    made
}

/// Creates the mount point `path` exclusively, in a prepared directory: an existing file is
/// someone else's namespace.
fn new_mount_point(path: &Path) -> Result<(), SystemError> {
    let object = || netns_object(path);
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| SystemError::other(object(), "path has no parent directory"))?;
    prepare_dir(dir)?;
    match open(
        path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            drop(fd);
            Ok(())
        }
        Err(Errno::EEXIST) => Err(SystemError::AlreadyExists { object: object() }),
        Err(e) => Err(SystemError::io(
            format!("{}: creating the mount point", object()),
            e.into(),
        )),
    }
}

/// Bind-mounts the namespace file `source` at the mount point `path`.
fn bind_new(source: &str, path: &Path) -> Result<(), SystemError> {
    mount(
        Some(source),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| SystemError::io(format!("{}: bind mount", netns_object(path)), e.into()))
}

/// Bind-mounts the network namespace open as `ns` at `path` (blocking): the mount point
/// file is reused if it exists (an unmount leaves it behind) and created otherwise; a
/// namespace already mounted there is [`SystemError::AlreadyExists`].
pub(crate) fn restore(path: &Path, ns: &OwnedFd) -> Result<(), SystemError> {
    let object = || netns_object(path);
    match is_netns_fd(ns) {
        Ok(true) => {}
        Ok(false) => {
            return Err(SystemError::other(
                object(),
                "source is not a network namespace",
            ));
        }
        Err(e) => return Err(SystemError::io(object(), e.into())),
    }
    if exists(path)? {
        return Err(SystemError::AlreadyExists { object: object() });
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| SystemError::other(object(), "path has no parent directory"))?;
    prepare_dir(dir)?;
    match open(
        path,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => drop(fd),
        Err(e) => {
            return Err(SystemError::io(
                format!("{}: creating the mount point", object()),
                e.into(),
            ));
        }
    }
    let source = format!("/proc/self/fd/{}", ns.as_raw_fd());
    mount(
        Some(source.as_str()),
        path,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| SystemError::io(format!("{}: bind mount", object()), e.into()))
}

/// Unmounts and unlinks `path`; `false` if there was neither a mount nor a file.
pub(crate) async fn delete(path: &Path) -> Result<bool, SystemError> {
    let path = path.to_path_buf();
    let object = netns_object(&path);
    // umount waits for an RCU grace period: keep it off the runtime workers.
    tokio::task::spawn_blocking(move || delete_blocking(&path))
        .await
        .map_err(|e| SystemError::other(object, format!("delete task failed: {e}")))?
}

fn delete_blocking(path: &Path) -> Result<bool, SystemError> {
    let object = || netns_object(path);
    let mut unmounted = false;
    // Normally one mount; more if someone stacked mounts there. EINVAL: no (more) mount
    // (e.g. a crash between creating the file and mounting).
    for _ in 0..16 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => unmounted = true,
            Err(Errno::EINVAL) => break,
            Err(Errno::ENOENT) => return Ok(unmounted),
            Err(e) => return Err(SystemError::io(format!("{}: unmount", object()), e.into())),
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(unmounted),
        Err(e) => Err(SystemError::io(format!("{}: unlink", object()), e)),
    }
}
