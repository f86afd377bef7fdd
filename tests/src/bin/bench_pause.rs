//! `make bench` part 1: footprint of our pause next to Debian's `catatonit -P`, measured
//! side by side in the same run: binary size, idle resident set, start-up time (spawn until
//! the process sleeps in its blocking call), `--version` round trip, and the number of system
//! calls from execve to the first blocking call (strace).
//!
//! Both run with an empty environment, as a container's pause does: the kernel copies the
//! environment onto the initial stack, so a large one would inflate either RSS.
//!
//! Targets from the foundation issue (goals, printed, not asserted): stripped binary
//! <= 4 KiB, idle VmRSS <= 16 KiB, <= 6 syscalls to the first blocking call.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nh_tests::{ChildGuard, ScratchDir, pause_binary, proc_status_field, wait_until};

/// Runs per timing figure; the median is reported.
const RUNS: usize = 200;

/// One pause implementation under test.
struct Subject {
    name: &'static str,
    program: PathBuf,
    hold_args: &'static [&'static str],
}

/// What we measured for one subject.
struct Figures {
    size: u64,
    rss_kib: u64,
    startup: Duration,
    version_round_trip: Duration,
    syscalls_to_block: usize,
    blocking_call: String,
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// The state letter from /proc/<pid>/stat, read without allocation-heavy parsing.
fn stat_state(pid: u32) -> Option<u8> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.iter().rposition(|&b| b == b')')?;
    stat.get(close + 2).copied()
}

fn spawn_holding(subject: &Subject) -> Result<ChildGuard> {
    ChildGuard::spawn(
        Command::new(&subject.program)
            .args(subject.hold_args)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// Spawn, then busy-poll /proc until the process sleeps: the time it takes to be ready.
fn startup_once(subject: &Subject) -> Result<Duration> {
    let start = Instant::now();
    let child = spawn_holding(subject)?;
    let pid = child.pid();
    loop {
        if stat_state(pid) == Some(b'S') {
            return Ok(start.elapsed());
        }
        if start.elapsed() > Duration::from_secs(5) {
            bail!("{} never went to sleep", subject.name);
        }
        std::hint::spin_loop();
    }
}

fn version_round_trip(subject: &Subject) -> Result<Duration> {
    let start = Instant::now();
    let status = Command::new(&subject.program)
        .arg("--version")
        .env_clear()
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "{} --version: {status}", subject.name);
    Ok(start.elapsed())
}

fn idle_rss_kib(subject: &Subject) -> Result<u64> {
    let child = spawn_holding(subject)?;
    let pid = child.pid();
    ensure!(
        wait_until(Duration::from_secs(5), || stat_state(pid) == Some(b'S')),
        "not sleeping"
    );
    let rss = proc_status_field(pid, "VmRSS").context("VmRSS")?;
    rss.trim_end_matches(" kB")
        .trim()
        .parse()
        .context("parsing VmRSS")
}

/// Name of the x86_64 system call the process is blocked in, from /proc/<pid>/syscall.
fn blocking_syscall_name(pid: u32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/syscall"))?;
    let number: u32 = text
        .split_whitespace()
        .next()
        .context("empty syscall file")?
        .parse()?;
    Ok(match number {
        0 => "read",
        7 => "poll",
        34 => "pause",
        61 => "wait4",
        128 => "rt_sigtimedwait",
        230 => "clock_nanosleep",
        232 => "epoll_wait",
        281 => "epoll_pwait",
        other => bail!("unknown blocking syscall number {other}"),
    }
    .to_string())
}

/// Trace from execve until the process sleeps; count the calls up to the blocking one.
fn syscalls_to_block(subject: &Subject, scratch: &Path) -> Result<(usize, String)> {
    let trace = scratch.join(format!("{}.strace", subject.name));
    let mut strace = ChildGuard::spawn(
        Command::new("strace")
            .env_clear()
            .arg("-o")
            .arg(&trace)
            .arg(&subject.program)
            .args(subject.hold_args)
            .stdin(Stdio::null()),
    )?;
    let mut traced = 0;
    ensure!(
        wait_until(Duration::from_secs(5), || {
            traced = nh_tests::children_of(strace.pid())
                .first()
                .map(|c| c.0)
                .unwrap_or(0);
            traced != 0 && stat_state(traced) == Some(b'S') && blocking_syscall_name(traced).is_ok()
        }),
        "{} under strace never blocked",
        subject.name
    );
    let blocking = blocking_syscall_name(traced)?;
    // SAFETY: plain kill of the process we traced; it exits 0 on SIGTERM.
    unsafe { libc::kill(traced as libc::pid_t, libc::SIGTERM) };
    strace.wait_timeout(Duration::from_secs(5))?;
    let text = std::fs::read_to_string(&trace)?;
    let after_exec = text
        .lines()
        .skip_while(|l| !l.starts_with("execve("))
        .skip(1);
    let mut count = 0;
    for line in after_exec {
        count += 1;
        if line.starts_with(&format!("{blocking}(")) {
            return Ok((count, blocking));
        }
    }
    bail!(
        "{}: blocking call {blocking} not found in the trace",
        subject.name
    )
}

fn measure(subject: &Subject, scratch: &Path) -> Result<Figures> {
    let size = std::fs::metadata(&subject.program)?.len();
    let rss_kib = idle_rss_kib(subject)?;
    let startup = median(
        (0..RUNS)
            .map(|_| startup_once(subject))
            .collect::<Result<_>>()?,
    );
    let version = median(
        (0..RUNS)
            .map(|_| version_round_trip(subject))
            .collect::<Result<_>>()?,
    );
    let (syscalls, blocking_call) = syscalls_to_block(subject, scratch)?;
    Ok(Figures {
        size,
        rss_kib,
        startup,
        version_round_trip: version,
        syscalls_to_block: syscalls,
        blocking_call,
    })
}

fn ratio(ours: f64, theirs: f64) -> String {
    if ours == 0.0 {
        "-".into()
    } else {
        format!("{:.1}x smaller", theirs / ours)
    }
}

fn main() -> Result<()> {
    let scratch = ScratchDir::new("bench")?;
    let ours = Subject {
        name: "pause",
        program: pause_binary(),
        hold_args: &[],
    };
    let catatonit = Subject {
        name: "catatonit",
        program: PathBuf::from("/usr/bin/catatonit"),
        hold_args: &["-P"],
    };
    ensure!(
        catatonit.program.is_file(),
        "catatonit not installed (apt-get install catatonit)"
    );
    let a = measure(&ours, scratch.path())?;
    let b = measure(&catatonit, scratch.path())?;

    println!("pause footprint vs catatonit -P (same run; medians of {RUNS} runs for times)");
    println!(
        "{:<34} {:>14} {:>14} {:>16}",
        "", "pause (ours)", "catatonit -P", "ratio"
    );
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:<34} {:>14} {:>14} {:>16}",
        "binary size (bytes)",
        a.size,
        b.size,
        ratio(a.size as f64, b.size as f64)
    );
    println!(
        "{:<34} {:>14} {:>14} {:>16}",
        "idle VmRSS (KiB)",
        a.rss_kib,
        b.rss_kib,
        ratio(a.rss_kib as f64, b.rss_kib as f64)
    );
    println!(
        "{:<34} {:>14.1} {:>14.1} {:>16}",
        "start-up to blocked (us)",
        us(a.startup),
        us(b.startup),
        format!("{:.2}x faster", us(b.startup) / us(a.startup))
    );
    println!(
        "{:<34} {:>14.1} {:>14.1} {:>16}",
        "--version exec round trip (us)",
        us(a.version_round_trip),
        us(b.version_round_trip),
        format!(
            "{:.2}x faster",
            us(b.version_round_trip) / us(a.version_round_trip)
        )
    );
    println!(
        "{:<34} {:>14} {:>14} {:>16}",
        "syscalls execve..first block",
        a.syscalls_to_block,
        b.syscalls_to_block,
        ratio(a.syscalls_to_block as f64, b.syscalls_to_block as f64)
    );
    println!(
        "{:<34} {:>14} {:>14}",
        "blocking call", a.blocking_call, b.blocking_call
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: size <= 4096 B: {}; idle RSS <= 16 KiB: {}; <= 6 syscalls: {}",
        verdict(a.size <= 4096),
        verdict(a.rss_kib <= 16),
        verdict(a.syscalls_to_block <= 6)
    );
    Ok(())
}
