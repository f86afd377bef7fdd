//! The real [`Processes::reap_exited_child_pauses`]: it names exactly the pauses of this
//! process that exited (and reaps them), says so when another kind of child's exit hides the
//! rest, and is complete again once that child is reaped by its own waiter.
//!
//! A test binary of its own with one test: the call asks the kernel about every child of
//! the process, so no other test's children may share it.
//!
//! Needs root (it prints a loud `SKIPPED` line otherwise) and the pause binary:
//! `cargo build -p pause --profile pause` (or set `NH_PAUSE_BINARY`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{pause_binary, proc_state};
use netns_holder::linux::LinuxSystem;
use netns_holder_core::kernel::PauseProcess;
use netns_holder_core::names::PodName;
use netns_holder_core::system::{Namespaces, Processes, ReapedPauses};
use nix::mount::{MntFlags, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use slog::{Logger, o};

/// Waits (at most 5 s) until `pid` has exited and is waiting to be reaped.
fn await_zombie(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_state(pid) != Some('Z') {
        assert!(
            Instant::now() < deadline,
            "process {pid} did not become a zombie within 5 s (state {:?})",
            proc_state(pid)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the pauses still alive and unmounts the namespace and its directory, whatever the
/// test did.
struct Cleanup {
    pauses: Vec<PauseProcess>,
    netns: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.pauses {
            // Only a process that is still ours: the test reaps the ones it kills, so the
            // pid of one of those may belong to someone else by now.
            if proc_state(p.pid).is_some() {
                let pid = Pid::from_raw(p.pid as i32);
                let _ = kill(pid, Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
            }
        }
        let _ = umount2(&self.netns, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.netns);
        // The directory's own bind mount (made shared by create_netns).
        if let Some(dir) = self.netns.parent() {
            for _ in 0..4 {
                if umount2(dir, MntFlags::MNT_DETACH).is_err() {
                    break;
                }
            }
        }
    }
}

#[test]
fn exited_child_pauses_are_named_reaped_and_a_foreign_exit_is_reported() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "\n*** SKIPPED exited_child_pauses_are_named_reaped_and_a_foreign_exit_is_reported: \
             needs root (a network namespace, bind mounts) ***\n"
        );
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("nh-pause-reap")
        .tempdir()
        .expect("tempdir");
    let netns = tmp.path().join("netns/reap");
    let pause_binary = pause_binary();
    // A throwaway node namespace for this thread: the system captures it as the node's.
    std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let sys =
                LinuxSystem::with_pause_binary(pause_binary, Logger::root(slog::Discard, o!()))
                    .expect("LinuxSystem");
            let mut cleanup = Cleanup {
                pauses: Vec::new(),
                netns: netns.clone(),
            };
            sys.create_netns(&netns).await.expect("create netns");
            let mut pauses = Vec::new();
            for name in ["first", "second", "third", "fourth"] {
                let id = PodName::new(name).unwrap().id();
                let pause = sys.start_pause(&id, &netns).await.expect("start pause");
                cleanup.pauses.push(pause);
                pauses.push(pause);
            }
            let reap = || sys.reap_exited_child_pauses();
            let complete = |exited: Vec<PauseProcess>| ReapedPauses {
                exited,
                complete: true,
            };

            // Nothing exited.
            assert_eq!(reap().await.unwrap(), complete(vec![]));

            // Two die: both named once, reaped (gone from /proc), the others untouched.
            for p in &pauses[..2] {
                kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL).unwrap();
                await_zombie(p.pid);
            }
            let mut found = reap().await.unwrap();
            found.exited.sort();
            let mut want = pauses[..2].to_vec();
            want.sort();
            assert_eq!(found, complete(want));
            for p in &pauses[..2] {
                assert_eq!(proc_state(p.pid), None, "pause {} was not reaped", p.pid);
            }
            assert_eq!(reap().await.unwrap(), complete(vec![]));
            assert!(sys.pause_alive(&pauses[2]).await.unwrap());

            // A helper program's exit (its own waiter reaps it) next to two pauses' exits:
            // while the helper waits, the answer says it is incomplete (whether a pause comes
            // before the helper depends on which thread started which), never reaps the
            // helper, and names each pause at most once; once the helper is reaped, the
            // rest come.
            kill(Pid::from_raw(pauses[2].pid as i32), Signal::SIGKILL).unwrap();
            await_zombie(pauses[2].pid);
            let mut helper = Command::new("true").spawn().expect("spawn true");
            await_zombie(helper.id());
            kill(Pid::from_raw(pauses[3].pid as i32), Signal::SIGKILL).unwrap();
            await_zombie(pauses[3].pid);
            let mut named = Vec::new();
            for _ in 0..2 {
                let found = reap().await.unwrap();
                assert!(!found.complete, "a helper's exit was in the way: {found:?}");
                named.extend(found.exited);
            }
            assert_eq!(proc_state(helper.id()), Some('Z'), "the helper was reaped");
            assert!(helper.wait().expect("wait for true").success());
            let rest = reap().await.unwrap();
            assert!(rest.complete, "{rest:?}");
            named.extend(rest.exited);
            named.sort();
            let mut want = pauses[2..].to_vec();
            want.sort();
            assert_eq!(named, want, "each exited pause named exactly once");
            for p in &pauses[2..] {
                assert_eq!(proc_state(p.pid), None, "pause {} was not reaped", p.pid);
            }
            assert_eq!(reap().await.unwrap(), complete(vec![]));
            drop(cleanup);
        });
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
}
