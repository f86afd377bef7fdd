//! OS threads for the work that changes a thread's network namespace or blocks.
//!
//! [`run`] gives each job a fresh thread that ends with the job. [`NsWorkers::run`] hands
//! network-namespace jobs (enter a pod's, or make a new one) to two long-lived threads that
//! go back to the node namespace after each job: a thread per job made every create pay
//! for two thread starts and exits, whose stack and signal-stack maps take the daemon's
//! memory-map lock for writing, which all its threads' page faults wait on (measured with
//! 100 creates at once). A worker that cannot get back to the node namespace ends, and is
//! never handed another job. Results come back through oneshot channels, so the async
//! caller never blocks a runtime worker.

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

/// Enters the network namespace `enter` (if given) on the calling thread, then runs `job`;
/// `object` names the thing worked on, for errors.
fn enter_and_run<T>(
    object: &str,
    enter: Option<&NsFd>,
    job: impl FnOnce() -> Result<T, SystemError>,
) -> Result<T, SystemError> {
    if let Some(fd) = enter {
        setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| {
            SystemError::io(
                format!("{object}: entering its network namespace"),
                e.into(),
            )
        })?;
    }
    job()
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
            // The receiver may be gone if the caller was cancelled; nothing to do then.
            let _ = tx.send(enter_and_run(&thread_object, enter.as_ref(), job));
        })
        .map_err(|e| SystemError::io(format!("{object}: spawning a thread"), e))?;
    rx.await
        .map_err(|_| SystemError::other(&object, "namespace worker thread died"))?
}

/// A job for an [`NsWorkers`] thread.
type Job = Box<dyn FnOnce() + Send>;

/// How many [`NsWorkers`] threads there are.
const NS_WORKERS: usize = 2;

/// Long-lived threads for jobs that change the network namespace of their thread; see the
/// module documentation.
pub(crate) struct NsWorkers {
    /// Where the workers return after each job.
    node: Arc<OwnedFd>,
    /// Its inode, to tell whether a worker is still in it.
    node_inode: u64,
    /// The job queue, once the workers are started; `None` after they all ended.
    queue: std::sync::Mutex<Option<std::sync::mpsc::Sender<Job>>>,
    /// Whether the workers were started.
    started: std::sync::Once,
}

impl NsWorkers {
    /// Workers that return to the node namespace `node` (inode `node_inode`); the threads
    /// start on first use.
    pub(crate) fn new(node: Arc<OwnedFd>, node_inode: u64) -> Self {
        Self {
            node,
            node_inode,
            queue: std::sync::Mutex::new(None),
            started: std::sync::Once::new(),
        }
    }

    fn start(&self) {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut started = 0;
        for _ in 0..NS_WORKERS {
            let rx = rx.clone();
            let node = self.node.clone();
            let node_inode = self.node_inode;
            let spawned = std::thread::Builder::new()
                .name("nh-ns-worker".to_string())
                .spawn(move || {
                    loop {
                        let next = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(job) = next else { return };
                        job();
                        let home = super::netns::current_key().is_ok_and(|k| k.ino == node_inode)
                            || setns(&*node, CloneFlags::CLONE_NEWNET).is_ok();
                        if !home {
                            return;
                        }
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        if started > 0 {
            *self.queue.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        }
    }

    /// Runs `job` on a worker, first entering the network namespace `enter` if given (the
    /// job may also `unshare` one), and resolves with its result; on a fresh thread as
    /// [`run`] does when no worker is left. `object` names the thing worked on, for errors.
    pub(crate) async fn run<T, F>(
        &self,
        object: impl fmt::Display,
        enter: Option<NsFd>,
        job: F,
    ) -> Result<T, SystemError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, SystemError> + Send + 'static,
    {
        self.started.call_once(|| self.start());
        let object = object.to_string();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread_object = object.clone();
        let work: Job = Box::new(move || {
            // The receiver may be gone if the caller was cancelled; nothing to do then.
            let _ = tx.send(enter_and_run(&thread_object, enter.as_ref(), job));
        });
        let refused = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            match queue.as_ref() {
                Some(q) => match q.send(work) {
                    Ok(()) => None,
                    Err(std::sync::mpsc::SendError(work)) => {
                        // Every worker ended.
                        *queue = None;
                        Some(work)
                    }
                },
                None => Some(work),
            }
        };
        if let Some(work) = refused {
            std::thread::Builder::new()
                .name("nh-ns".to_string())
                .spawn(work)
                .map_err(|e| SystemError::io(format!("{object}: spawning a thread"), e))?;
        }
        rx.await
            .map_err(|_| SystemError::other(&object, "namespace worker thread died"))?
    }
}
