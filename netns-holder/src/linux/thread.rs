//! Short-lived OS threads for the work that changes a thread's namespaces or blocks.
//!
//! A thread that `setns`'d or `unshare`d is never handed back to anyone: each job gets a
//! fresh thread that ends with the job. The result comes back through a oneshot channel, so
//! the async caller never blocks a runtime worker.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use nix::sched::{CloneFlags, setns};

use crate::system::SystemError;

/// A network namespace to enter, by descriptor.
pub(crate) enum NsFd {
    /// A shared descriptor (the node namespace).
    Shared(Arc<OwnedFd>),
    /// A descriptor owned by this job (a pod namespace just opened).
    Owned(OwnedFd),
}

impl AsFd for NsFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Shared(fd) => fd.as_fd(),
            Self::Owned(fd) => fd.as_fd(),
        }
    }
}

/// Runs `job` on a new OS thread, first entering the network namespace `enter` if given,
/// and resolves with its result. `object` names the thing worked on, for errors.
pub(crate) async fn run<T, F>(
    object: impl fmt::Display,
    enter: Option<NsFd>,
    job: F,
) -> Result<T, SystemError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SystemError> + Send + 'static,
{
    let object = object.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread_object = object.clone();
    std::thread::Builder::new()
        .name("nh-ns".to_string())
        .spawn(move || {
            let result = match &enter {
                Some(fd) => setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
                    SystemError::io(
                        format!("{thread_object}: entering its network namespace"),
                        e.into(),
                    )
                }),
                None => Ok(()),
            }
            .and_then(|()| job());
            // The receiver may be gone if the caller was cancelled; nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|e| SystemError::io(format!("{object}: spawning a thread"), e))?;
    rx.await
        .map_err(|_| SystemError::other(&object, "namespace worker thread died"))?
}
