//! Pause watches: noticing pause processes that died, and restarting them.

use std::collections::BTreeSet;
use std::fmt;

use slog::{info, warn};

use super::PodManager;
use crate::action::Action;
use crate::executor;
use crate::kernel::PauseProcess;
use crate::names::PodName;
use crate::record::{Phase, PodRecord};
use crate::system::{ReapedPauses, System};

/// What woke the pause watcher; see [`PodManager::restart_dead_pauses`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseWake {
    /// SIGCHLD: a child of this daemon process (a pause it started) may have exited.
    Child,
    /// The periodic check (the daemon's `server::PAUSE_CHECK_INTERVAL`).
    Tick,
    /// The exit watch on this pause (adopted from an earlier daemon) fired.
    Exited(PauseProcess),
}

/// The exit watches on pauses that are not children of this daemon process, kept by the
/// pause watcher across calls of [`PodManager::restart_dead_pauses`].
#[derive(Default)]
pub struct PauseWatches {
    /// The pauses watched.
    watched: BTreeSet<PauseProcess>,
    /// One future per watch, resolving with its pause when that exits.
    exits: futures::stream::FuturesUnordered<
        std::pin::Pin<Box<dyn Future<Output = PauseProcess> + Send + 'static>>,
    >,
    /// How many liveness polls (one `/proc` read each) ticks have made since the start:
    /// only for adopted pauses no watch could be made for.
    polled: u64,
}

impl PauseWatches {
    /// No watches.
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves with the next watched pause that exits (never, while none is watched).
    pub async fn next_exit(&mut self) -> PauseProcess {
        use futures::StreamExt as _;
        match self.exits.next().await {
            Some(pause) => pause,
            None => std::future::pending().await,
        }
    }

    /// How many pauses are watched.
    pub fn watched(&self) -> usize {
        self.watched.len()
    }

    /// How many liveness polls ticks have made (pauses that could not be watched).
    pub fn polled(&self) -> u64 {
        self.polled
    }
}

impl fmt::Debug for PauseWatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PauseWatches")
            .field("watched", &self.watched)
            .field("polled", &self.polled)
            .finish_non_exhaustive()
    }
}

impl<S: System> PodManager<S> {
    /// Restarts, into the same namespace, the pause of every ready pod whose pause has died;
    /// returns those pods. Nothing else is repaired here (that is `check --repair`'s job): a
    /// pod whose pause died must not stay without a holder until someone looks.
    ///
    /// `wake` says where to look, so that nothing reads `/proc` for every pod:
    ///
    /// * [`PauseWake::Child`] (SIGCHLD): the pauses this daemon process started that the
    ///   kernel reports exited
    ///   ([`Processes::reap_exited_child_pauses`](crate::system::Processes::reap_exited_child_pauses));
    ///   only when it cannot tell, each pause asked with
    ///   [`Processes::child_pause_exited`](crate::system::Processes::child_pause_exited)
    ///   (a non-blocking `waitpid`, no `/proc` read);
    /// * [`PauseWake::Exited`]: that one pause, whose exit watch fired (confirmed with one
    ///   [`Processes::pause_alive`](crate::system::Processes::pause_alive));
    /// * [`PauseWake::Tick`]: children as after SIGCHLD (a lost signal is caught here), pods
    ///   without a pause, and every pause adopted from an earlier daemon that is not watched
    ///   yet: an exit watch is put on it in `watches`
    ///   ([`Processes::watch_pause`](crate::system::Processes::watch_pause)); only when none
    ///   can be made is it polled with `pause_alive`. Watched pauses cost nothing.
    pub async fn restart_dead_pauses(
        &self,
        wake: PauseWake,
        watches: &mut PauseWatches,
    ) -> Vec<PodName> {
        let mut restarted = Vec::new();
        // After SIGCHLD the kernel names the children that exited: an exit then costs the
        // same at any pod count (no copy of every record, no `waitpid` per pod, which a
        // mass removal at 4000 pods paid once per pause: 7-28 ms each).
        let reaped = match wake {
            PauseWake::Child => self
                .system
                .reap_exited_child_pauses()
                .await
                .unwrap_or_default(),
            PauseWake::Tick | PauseWake::Exited(_) => ReapedPauses::default(),
        };
        if wake == PauseWake::Child && reaped.complete && reaped.exited.is_empty() {
            return restarted;
        }
        let exited: BTreeSet<PauseProcess> = reaped.exited.into_iter().collect();
        let only_exited = wake == PauseWake::Child && reaped.complete;
        let wanted = |r: &PodRecord| {
            r.phase == Phase::Ready
                && r.wants_pause()
                && (!only_exited || r.pause.is_some_and(|p| exited.contains(&p)))
        };
        let candidates: Vec<PodRecord> = self
            .inner()
            .state
            .pods
            .values()
            .filter(|r| wanted(r))
            .cloned()
            .collect();
        if wake == PauseWake::Tick {
            // Watches of pauses no pod holds any more are forgotten (their futures end when
            // those processes exit).
            let held: BTreeSet<PauseProcess> = candidates.iter().filter_map(|r| r.pause).collect();
            watches.watched.retain(|p| held.contains(p));
        }
        let mut dead = Vec::new();
        for record in candidates {
            let pause = match (wake, record.pause) {
                (PauseWake::Tick, None) => {
                    dead.push(record);
                    continue;
                }
                (_, None) => continue,
                (_, Some(pause)) => pause,
            };
            let died = match wake {
                PauseWake::Exited(exited) => {
                    if exited != pause {
                        continue;
                    }
                    watches.watched.remove(&pause);
                    !self.system.pause_alive(&pause).await.unwrap_or(true)
                }
                // Reaped above: it exited.
                PauseWake::Child if exited.contains(&pause) => true,
                PauseWake::Child if only_exited => false,
                PauseWake::Child => {
                    matches!(self.system.child_pause_exited(&pause).await, Ok(Some(true)))
                }
                PauseWake::Tick if watches.watched.contains(&pause) => false,
                PauseWake::Tick => match self.system.child_pause_exited(&pause).await {
                    Ok(Some(exited)) => exited,
                    // Not our child: adopted from an earlier daemon.
                    Ok(None) | Err(_) => match self.system.watch_pause(&pause).await {
                        Ok(Some(exit)) => {
                            watches.watched.insert(pause);
                            watches.exits.push(Box::pin(async move {
                                exit.await;
                                pause
                            }));
                            false
                        }
                        Ok(None) | Err(_) => {
                            watches.polled += 1;
                            !self.system.pause_alive(&pause).await.unwrap_or(true)
                        }
                    },
                },
            };
            if died {
                dead.push(record);
            }
        }
        for record in dead {
            let _shared = self.barrier.read().await;
            let _pod = self.pod_locks.lock(&record.name).await;
            // Removed, replaced or repaired while we waited for the lock: not ours to touch.
            match self.record(&record.name) {
                Some(current) if current.phase == Phase::Ready && current.pause == record.pause => {
                }
                _ => continue,
            }
            let start = [Action::StartPause {
                id: record.id,
                netns: record.netns.clone(),
            }];
            let result = executor::apply_best_effort(&self.system, &start, &self.log).await;
            let Some(pause) = result.pause else {
                for failure in &result.failures {
                    warn!(self.log, "cannot restart the pause"; "pod" => %record.name, "error" => %failure);
                }
                continue;
            };
            let mut inner = self.inner();
            if let Some(r) = inner.state.pods.get_mut(&record.name) {
                r.pause = Some(pause);
            }
            if let Err(e) = self.save(&mut inner) {
                warn!(self.log, "cannot record the restarted pause"; "pod" => %record.name, "error" => %e);
            }
            info!(self.log, "pause died, restarted in the same namespace";
                "pod" => %record.name, "old" => ?record.pause.map(|p| p.pid), "new" => pause.pid);
            restarted.push(record.name.clone());
        }
        restarted
    }
}
