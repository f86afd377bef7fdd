//! Behaviour of the static `pause` binary: idle, reaping, signals, command line, linkage.
//!
//! Run against the shipped binary (`make pause`); the PID-namespace cases use util-linux
//! `unshare`/`nsenter` so that the pause really is PID 1 of a fresh PID namespace.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use nh_tests::{
    ChildGuard, children_of, pause_binary, proc_state, proc_status_field, require_root, run_ok,
    wait_sleeping, wait_until,
};

/// Orphans each reaping test creates.
const ORPHANS: usize = 100;

/// Catchable signals whose default action would end, stop or core-dump a normal process.
const IGNORED_SIGNALS: &[(libc::c_int, &str)] = &[
    (libc::SIGHUP, "HUP"),
    (libc::SIGQUIT, "QUIT"),
    (libc::SIGUSR1, "USR1"),
    (libc::SIGUSR2, "USR2"),
    (libc::SIGPIPE, "PIPE"),
    (libc::SIGALRM, "ALRM"),
    (libc::SIGTSTP, "TSTP"),
    (libc::SIGTTIN, "TTIN"),
    (libc::SIGTTOU, "TTOU"),
    (libc::SIGXCPU, "XCPU"),
    (libc::SIGVTALRM, "VTALRM"),
    (libc::SIGPROF, "PROF"),
    (libc::SIGWINCH, "WINCH"),
    (libc::SIGCHLD, "CHLD"),
];

fn send(pid: u32, signal: libc::c_int) -> Result<()> {
    // SAFETY: kill has no memory preconditions; `pid` is a process this test started.
    let rc = unsafe { libc::kill(pid as libc::pid_t, signal) };
    ensure!(
        rc == 0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

fn context_switches(pid: u32) -> Result<u64> {
    let read = |field| -> Result<u64> {
        proc_status_field(pid, field)
            .with_context(|| format!("{field} of pid {pid}"))?
            .parse()
            .context(field)
    };
    Ok(read("voluntary_ctxt_switches")? + read("nonvoluntary_ctxt_switches")?)
}

/// A pause started directly by the test: not PID 1 of anything.
fn spawn_plain_pause() -> Result<ChildGuard> {
    let pause = ChildGuard::spawn(Command::new(pause_binary()).stdin(Stdio::null()))?;
    wait_sleeping(pause.pid())?;
    Ok(pause)
}

/// A pause that is PID 1 of a new PID namespace, started by `sh -c "<prefix> exec pause"`;
/// returns the `unshare` guard and the pause's pid as seen from here.
fn spawn_pid1_pause(shell_prefix: &str) -> Result<(ChildGuard, u32)> {
    let script = format!("{shell_prefix} exec {}", pause_binary().display());
    let unshare = ChildGuard::spawn(
        Command::new("unshare")
            // --kill-child: if the test fails and kills unshare, the PID-1 pause dies with it.
            .args(["--pid", "--fork", "--kill-child", "--", "sh", "-c", &script])
            .stdin(Stdio::null()),
    )?;
    let mut pause_pid = 0;
    let started = wait_until(Duration::from_secs(5), || {
        pause_pid = children_of(unshare.pid()).first().map(|c| c.0).unwrap_or(0);
        pause_pid != 0
            && std::fs::read_link(format!("/proc/{pause_pid}/exe"))
                .is_ok_and(|exe| exe == pause_binary())
    });
    ensure!(started, "the pause never started under unshare");
    wait_sleeping(pause_pid)?;
    Ok((unshare, pause_pid))
}

/// Shell snippet: after a short delay, start `ORPHANS` sleepers and exit, orphaning them.
fn orphan_maker() -> String {
    format!("(sleep 0.3; i=0; while [ $i -lt {ORPHANS} ]; do sleep 2 & i=$((i+1)); done) &")
}

/// The orphans must come to `reaper` (proving reparenting), then all exit and be reaped.
fn assert_orphans_reaped(reaper: u32) -> Result<()> {
    let mut most = 0;
    let adopted = wait_until(Duration::from_secs(10), || {
        most = most.max(children_of(reaper).len());
        most >= ORPHANS
    });
    ensure!(
        adopted,
        "only {most} of {ORPHANS} orphans were reparented to pid {reaper}"
    );
    let reaped = wait_until(Duration::from_secs(15), || children_of(reaper).is_empty());
    let left = children_of(reaper);
    let zombies = left.iter().filter(|c| c.1 == 'Z').count();
    ensure!(
        reaped,
        "{} children left under pid {reaper}, {zombies} of them zombies",
        left.len()
    );
    Ok(())
}

#[test]
fn idle_pause_makes_no_wakeups_for_3s() -> Result<()> {
    let pause = spawn_plain_pause()?;
    let before = context_switches(pause.pid())?;
    std::thread::sleep(Duration::from_secs(3));
    let after = context_switches(pause.pid())?;
    ensure!(
        before == after,
        "pause woke up {} times while idle",
        after - before
    );
    ensure!(
        proc_state(pause.pid()) == Some('S'),
        "pause is not sleeping"
    );
    Ok(())
}

#[test]
fn pause_as_pid1_reaps_every_orphan() -> Result<()> {
    if !require_root("pause_as_pid1_reaps_every_orphan") {
        return Ok(());
    }
    let (mut unshare, pause_pid) = spawn_pid1_pause(&orphan_maker())?;
    assert_orphans_reaped(pause_pid)?;
    send(pause_pid, libc::SIGTERM)?;
    let status = unshare.wait_timeout(Duration::from_secs(5))?;
    ensure!(
        status.code() == Some(0),
        "pause as PID 1 ended with {status} after SIGTERM"
    );
    Ok(())
}

#[test]
fn pause_not_pid1_is_a_subreaper_and_reaps_every_orphan() -> Result<()> {
    // The shell forks the orphan maker and then becomes the pause (same pid): the orphans'
    // nearest living ancestor is the pause, which only adopts them as a child subreaper.
    let script = format!("{} exec {}", orphan_maker(), pause_binary().display());
    let mut pause = ChildGuard::spawn(
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null()),
    )?;
    assert_orphans_reaped(pause.pid())?;
    send(pause.pid(), libc::SIGTERM)?;
    let status = pause.wait_timeout(Duration::from_secs(5))?;
    ensure!(status.code() == Some(0), "pause ended with {status}");
    Ok(())
}

#[test]
fn sigterm_and_sigint_from_the_parent_namespace_exit_0() -> Result<()> {
    for (signal, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT")] {
        let mut pause = spawn_plain_pause()?;
        send(pause.pid(), signal)?;
        let status = pause
            .wait_timeout(Duration::from_secs(2))
            .with_context(|| format!("after SIG{name}"))?;
        ensure!(
            status.code() == Some(0),
            "SIG{name}: pause ended with {status}, want exit 0"
        );
    }
    if !require_root("sigterm_and_sigint_from_the_parent_namespace_exit_0 (PID 1 part)") {
        return Ok(());
    }
    for (signal, name) in [(libc::SIGTERM, "TERM"), (libc::SIGINT, "INT")] {
        let (mut unshare, pause_pid) = spawn_pid1_pause("")?;
        send(pause_pid, signal)?;
        let status = unshare
            .wait_timeout(Duration::from_secs(2))
            .with_context(|| format!("after SIG{name}"))?;
        ensure!(
            status.code() == Some(0),
            "SIG{name} to PID 1: ended with {status}, want 0"
        );
    }
    Ok(())
}

#[test]
fn sigterm_and_sigint_from_inside_the_pid_namespace_exit_0() -> Result<()> {
    if !require_root("sigterm_and_sigint_from_inside_the_pid_namespace_exit_0") {
        return Ok(());
    }
    for name in ["TERM", "INT"] {
        let (mut unshare, pause_pid) = spawn_pid1_pause("")?;
        let kill_init = format!("kill -{name} 1");
        let target = pause_pid.to_string();
        // The sender lives inside the namespace, so when its PID 1 exits the kernel SIGKILLs
        // it too: its own status proves nothing, the pause's exit status below does.
        let _ = Command::new("nsenter")
            .args(["-t", &target, "-p", "--", "sh", "-c", &kill_init])
            .status()?;
        let status = unshare
            .wait_timeout(Duration::from_secs(2))
            .with_context(|| format!("after SIG{name} from inside"))?;
        ensure!(
            status.code() == Some(0),
            "SIG{name} from inside: ended with {status}, want 0"
        );
    }
    Ok(())
}

#[test]
fn other_catchable_signals_neither_end_nor_wake_the_pause() -> Result<()> {
    let mut pause = spawn_plain_pause()?;
    let before = context_switches(pause.pid())?;
    for &(signal, name) in IGNORED_SIGNALS {
        send(pause.pid(), signal)?;
        std::thread::sleep(Duration::from_millis(20));
        let state = proc_state(pause.pid());
        ensure!(
            state == Some('S'),
            "after SIG{name} the pause is in state {state:?}, want S"
        );
    }
    // SIGCHLD is awaited (it reaps), so it is the only one allowed to wake the pause.
    let wakeups = context_switches(pause.pid())? - before;
    ensure!(
        wakeups <= 1,
        "ignored signals woke the pause {wakeups} times"
    );
    send(pause.pid(), libc::SIGTERM)?;
    let status = pause.wait_timeout(Duration::from_secs(2))?;
    ensure!(status.code() == Some(0), "pause ended with {status}");

    if !require_root("other_catchable_signals_neither_end_nor_wake_the_pause (PID 1 part)") {
        return Ok(());
    }
    let (mut unshare, pause_pid) = spawn_pid1_pause("")?;
    let names: Vec<&str> = IGNORED_SIGNALS.iter().map(|s| s.1).collect();
    let script = names
        .iter()
        .map(|n| format!("kill -{n} 1"))
        .collect::<Vec<_>>()
        .join("; ");
    let target = pause_pid.to_string();
    run_ok(Command::new("nsenter").args(["-t", &target, "-p", "--", "sh", "-c", &script]))?;
    std::thread::sleep(Duration::from_millis(100));
    let state = proc_state(pause_pid);
    ensure!(
        state == Some('S'),
        "PID 1 pause in state {state:?} after {names:?} from inside"
    );
    send(pause_pid, libc::SIGTERM)?;
    let status = unshare.wait_timeout(Duration::from_secs(2))?;
    ensure!(status.code() == Some(0), "PID 1 pause ended with {status}");
    Ok(())
}

#[test]
fn version_flag_prints_version_and_exits_0() -> Result<()> {
    for flag in ["-v", "--version"] {
        let out = Command::new(pause_binary()).arg(flag).output()?;
        ensure!(out.status.code() == Some(0), "{flag}: {}", out.status);
        let want = format!("pause {}\n", env!("CARGO_PKG_VERSION"));
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(stdout == want, "{flag}: stdout {stdout:?}, want {want:?}");
        ensure!(out.stderr.is_empty(), "{flag}: unexpected stderr");
    }
    Ok(())
}

#[test]
fn unknown_arguments_print_one_usage_line_and_exit_2() -> Result<()> {
    let cases: [&[&str]; 7] = [
        &["--bogus"],
        &["-x"],
        &["-v", "extra"],
        &["version"],
        &[""],
        &["-vv"],
        &["--version="],
    ];
    for args in cases {
        let out = Command::new(pause_binary()).args(args).output()?;
        ensure!(out.status.code() == Some(2), "{args:?}: {}", out.status);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.starts_with("usage: pause") && stderr.lines().count() == 1,
            "{args:?}: stderr {stderr:?}"
        );
        ensure!(out.stdout.is_empty(), "{args:?}: unexpected stdout");
    }
    Ok(())
}

#[test]
fn pause_is_a_static_executable_without_interpreter() -> Result<()> {
    let elf = std::fs::read(pause_binary())?;
    ensure!(
        elf.len() > 64 && elf.starts_with(b"\x7fELF\x02\x01"),
        "not a 64-bit LE ELF"
    );
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u32_at = |o: usize| u32::from_le_bytes([elf[o], elf[o + 1], elf[o + 2], elf[o + 3]]);
    let e_type = u16_at(16);
    ensure!(
        e_type == 2,
        "e_type {e_type}: want ET_EXEC (2), a non-PIE executable"
    );
    let phoff = u64::from_le_bytes(elf[32..40].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    let mut loads = 0;
    for i in 0..phnum {
        let header = phoff + i * phentsize;
        let (p_type, p_flags) = (u32_at(header), u32_at(header + 4));
        ensure!(
            p_type != 3,
            "PT_INTERP present: the binary needs a dynamic loader"
        );
        ensure!(
            p_type != 2,
            "PT_DYNAMIC present: the binary is dynamically linked"
        );
        if p_type == 1 {
            loads += 1;
            ensure!(
                p_flags & 0b011 != 0b011,
                "a LOAD segment is writable and executable"
            );
        }
    }
    ensure!(loads > 0, "no LOAD segments");
    Ok(())
}
