//! [`Processes`] of the [`FakeSystem`]: pause processes (pid + start time).

use std::path::Path;

use super::{FakeProcess, FakeSystem};
use crate::kernel::{PauseProcess, RunningPause};
use crate::names::PodId;
use crate::system::{PauseExit, Processes, ReapedPauses, SystemError};

impl Processes for FakeSystem {
    async fn start_pause(&self, id: &PodId, netns: &Path) -> Result<PauseProcess, SystemError> {
        let mut m = self
            .call(format!("start_pause {id} {}", netns.display()))
            .await?;
        let net = m.net_id(Some(netns))?;
        let pid = m.next_pid;
        m.next_pid += 1;
        m.clock += 1;
        let start_time = m.clock;
        m.processes.insert(
            pid,
            FakeProcess {
                id: *id,
                start_time,
                net,
                child: true,
            },
        );
        Ok(PauseProcess { pid, start_time })
    }

    async fn stop_pause(&self, process: &PauseProcess) -> Result<bool, SystemError> {
        let mut m = self.call(format!("stop_pause {}", process.pid)).await?;
        let same = m
            .processes
            .get(&process.pid)
            .is_some_and(|p| p.start_time == process.start_time);
        if same {
            m.exit_process(process.pid, true);
        }
        m.zombies.remove(process);
        Ok(same)
    }

    async fn pause_alive(&self, process: &PauseProcess) -> Result<bool, SystemError> {
        let mut m = self.call(format!("pause_alive {}", process.pid)).await?;
        let alive = m
            .processes
            .get(&process.pid)
            .is_some_and(|p| p.start_time == process.start_time);
        if !alive {
            // The real system reaps a dead child it finds.
            m.zombies.remove(process);
        }
        Ok(alive)
    }

    async fn child_pause_exited(
        &self,
        process: &PauseProcess,
    ) -> Result<Option<bool>, SystemError> {
        let mut m = self
            .call(format!("child_pause_exited {}", process.pid))
            .await?;
        if m.zombies.remove(process) {
            return Ok(Some(true));
        }
        Ok(m.processes
            .get(&process.pid)
            .filter(|p| p.child && p.start_time == process.start_time)
            .map(|_| false))
    }

    async fn reap_exited_child_pauses(&self) -> Result<ReapedPauses, SystemError> {
        let mut m = self.call("reap_exited_child_pauses".to_string()).await?;
        if m.foreign_zombie {
            // It came first and hides every exit behind it.
            return Ok(ReapedPauses::default());
        }
        Ok(ReapedPauses {
            exited: std::mem::take(&mut m.zombies).into_iter().collect(),
            complete: true,
        })
    }

    async fn watch_pause(&self, process: &PauseProcess) -> Result<Option<PauseExit>, SystemError> {
        let m = self.call(format!("watch_pause {}", process.pid)).await?;
        if m.no_watches {
            return Ok(None);
        }
        let mut exits = m.exits.subscribe();
        drop(m);
        let model = self.clone();
        let process = *process;
        Ok(Some(Box::pin(async move {
            loop {
                let alive = model
                    .lock()
                    .processes
                    .get(&process.pid)
                    .is_some_and(|p| p.start_time == process.start_time);
                if !alive || exits.changed().await.is_err() {
                    return;
                }
            }
        })))
    }

    async fn list_pauses(&self) -> Result<Vec<RunningPause>, SystemError> {
        let m = self.call("list_pauses".to_string()).await?;
        Ok(m.processes
            .iter()
            .map(|(pid, p)| RunningPause {
                id: p.id,
                process: PauseProcess {
                    pid: *pid,
                    start_time: p.start_time,
                },
            })
            .collect())
    }
}
