//! Pieces the benchmark binaries share: latency series and their statistics, and driving
//! the CNI reference plugins per the spec from a thread inside a node namespace.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";

/// Latencies in the order they were measured.
#[derive(Clone, Default)]
pub struct Series(pub Vec<Duration>);

impl Series {
    /// Median and p99 of the samples in `range` (clamped to the samples there are).
    pub fn stats(&self, range: std::ops::Range<usize>) -> (Duration, Duration) {
        let end = range.end.min(self.0.len());
        let mut window: Vec<Duration> = self.0[range.start.min(end)..end].to_vec();
        window.sort();
        if window.is_empty() {
            return (Duration::ZERO, Duration::ZERO);
        }
        let median = window[window.len() / 2];
        let p99 = window[((window.len() * 99).div_ceil(100)).saturating_sub(1)];
        (median, p99)
    }

    /// Median and p99 of every sample.
    pub fn all(&self) -> (Duration, Duration) {
        self.stats(0..self.0.len())
    }

    /// Median of every sample.
    pub fn median(&self) -> Duration {
        self.all().0
    }

    /// The `p`th percentile (nearest rank) of every sample.
    pub fn percentile(&self, p: usize) -> Duration {
        let mut sorted = self.0.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        sorted[((sorted.len() * p).div_ceil(100)).saturating_sub(1)]
    }
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A count from the environment (`BENCH_PODS=100`), or `default`.
pub fn env_count(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one CNI plugin per the spec (config on stdin, parameters in the environment);
/// returns its stdout (the result JSON).
pub fn cni_exec(
    plugin: &str,
    command: &str,
    id: &str,
    netns: &Path,
    config: &str,
) -> Result<String> {
    let mut child = Command::new(Path::new(CNI_BIN_DIR).join(plugin))
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env(
            "CNI_IFNAME",
            if plugin == "loopback" { "lo" } else { "eth0" },
        )
        .env("CNI_PATH", CNI_BIN_DIR)
        // portmap runs iptables from PATH.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("exec {plugin} (apt-get install containernetworking-plugins)"))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(config.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{plugin} {command} for {id}: {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `n` TCP connects from `client` to `to` (after a few unmeasured ones), each from a fresh
/// socket: the connect time is the SYN -> SYN-ACK round trip through the host port's DNAT.
pub fn connect_latency(client: &Path, to: SocketAddr, n: usize) -> Result<Series> {
    crate::node::in_netns_thread(client, move || {
        let mut samples = Vec::with_capacity(n);
        for i in 0..n + 10 {
            let start = Instant::now();
            let stream = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))
                .with_context(|| format!("connect to {to}"))?;
            let took = start.elapsed();
            drop(stream);
            if i >= 10 {
                samples.push(took);
            }
        }
        Ok(Series(samples))
    })
}

/// Enters `netns` on this thread only (children spawned from it start there).
pub fn enter_netns(netns: &Path) -> Result<()> {
    let file = std::fs::File::open(netns).with_context(|| format!("open {}", netns.display()))?;
    // SAFETY: a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(
        rc == 0,
        "setns {}: {}",
        netns.display(),
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Deletes the `ip netns` namespaces it lists on drop.
pub struct NetnsCleanup(pub Vec<String>);

impl Drop for NetnsCleanup {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// The machine's CPU time so far as (busy, total) jiffies, from `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle + iowait
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// A snapshot of the machine's CPU time (`/proc/stat`, in clock ticks) and of one process's
/// run time (every thread's, from `/proc/PID/task/*/schedstat`, in nanoseconds).
pub struct CpuSnapshot {
    machine: Option<(u64, u64)>,
    process: Option<Duration>,
}

impl CpuSnapshot {
    /// Now, for the process `pid` (if given).
    pub fn take(pid: Option<u32>) -> Self {
        Self {
            machine: cpu_jiffies(),
            process: pid.and_then(process_run_time),
        }
    }

    /// Since `earlier`: the share of the machine's CPU time that was busy (0..=1; clock-tick
    /// resolution, so rough over short spans) and the process's run time.
    pub fn since(&self, earlier: &Self) -> (Option<f64>, Option<Duration>) {
        let busy = match (earlier.machine, self.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some(b1.saturating_sub(b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let run = match (earlier.process, self.process) {
            (Some(r0), Some(r1)) => Some(r1.saturating_sub(r0)),
            _ => None,
        };
        (busy, run)
    }
}

/// The `top` processes that used the most CPU over the next `span` (every thread's run
/// time), busiest first, as (pid, name, CPU time); processes that start or end within the
/// span are left out. What else on the machine competes with a run for its CPUs.
pub fn busiest_processes(span: Duration, top: usize) -> Vec<(u32, String, Duration)> {
    let snapshot = || -> std::collections::HashMap<u32, Duration> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Default::default();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, process_run_time(pid)?)))
            .collect()
    };
    let before = snapshot();
    std::thread::sleep(span);
    let after = snapshot();
    let mut used: Vec<(u32, String, Duration)> = after
        .into_iter()
        .filter_map(|(pid, run)| {
            let used = run.checked_sub(*before.get(&pid)?)?;
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            Some((pid, name.trim().to_string(), used))
        })
        .collect();
    used.sort_by_key(|u| std::cmp::Reverse(u.2));
    used.truncate(top);
    used
}

/// The run time so far of every thread of process `pid` (threads that ended are not
/// counted).
fn process_run_time(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat"))
            && let Some(ns) = stat
                .split_whitespace()
                .next()
                .and_then(|f| f.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(Duration::from_nanos(total))
}

/// Network namespaces the kernel holds, live or not torn down yet: the active objects of the
/// `net_namespace` slab cache in `/proc/slabinfo`. `None` where the cache is not listed on
/// its own (merged with another, or no slabinfo). Approximate: the slab allocator counts
/// objects freed into a CPU's current slab as active.
pub fn net_namespaces_allocated() -> Option<u64> {
    let slabinfo = std::fs::read_to_string("/proc/slabinfo").ok()?;
    slabinfo.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        (fields.next() == Some("net_namespace"))
            .then(|| fields.next()?.parse().ok())
            .flatten()
    })
}

/// Waits (at most `limit`) until the kernel has freed the network namespaces that earlier
/// phases left it to tear down: until [`net_namespaces_allocated`] is at most `baseline` +
/// 16 (the slab's counting slack). The kernel defers that teardown, seconds at times, and then
/// unregisters every device of the batch under RTNL, which a phase running meanwhile would
/// wait for. Returns how long it waited, whether it got there, and the last count (`None`:
/// no count to wait on).
pub fn wait_namespaces_freed(baseline: u64, limit: Duration) -> (Duration, bool, Option<u64>) {
    let start = std::time::Instant::now();
    loop {
        let Some(now) = net_namespaces_allocated() else {
            return (start.elapsed(), false, None);
        };
        if now <= baseline + 16 {
            return (start.elapsed(), true, Some(now));
        }
        if start.elapsed() >= limit {
            return (start.elapsed(), false, Some(now));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the machine's CPUs are at least 90% idle over half a second (the kernel still
/// tearing down an earlier phase's namespaces, for instance, would otherwise weigh on the
/// next one), at most `limit`; returns how long it waited and whether it got there.
pub fn wait_quiet(limit: Duration) -> (Duration, bool) {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let Some((busy0, total0)) = cpu_jiffies() else {
            return (start.elapsed(), false);
        };
        std::thread::sleep(Duration::from_millis(500));
        let Some((busy1, total1)) = cpu_jiffies() else {
            return (start.elapsed(), false);
        };
        let total = total1.saturating_sub(total0).max(1);
        if busy1.saturating_sub(busy0) * 10 <= total {
            return (start.elapsed(), true);
        }
    }
    (start.elapsed(), false)
}

/// How an ELF executable is linked, read from its header and program headers: whether the
/// dynamic loader runs (`PT_INTERP`) and whether it is position-independent (`ET_DYN`).
pub fn elf_linkage(path: &Path) -> Result<String> {
    const ET_EXEC: u16 = 2;
    const ET_DYN: u16 = 3;
    const PT_INTERP: u32 = 3;
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let u16_at = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    ensure!(
        bytes.starts_with(b"\x7fELF\x02\x01"),
        "{} is not a little-endian 64-bit ELF file",
        path.display()
    );
    let malformed = || anyhow::anyhow!("{}: truncated ELF header", path.display());
    let kind = u16_at(16).ok_or_else(malformed)?;
    let phoff = usize::try_from(u64_at(32).ok_or_else(malformed)?)?;
    let phentsize = usize::from(u16_at(54).ok_or_else(malformed)?);
    let phnum = usize::from(u16_at(56).ok_or_else(malformed)?);
    let mut interpreter = false;
    for i in 0..phnum {
        let kind = u32_at(phoff + i * phentsize).ok_or_else(malformed)?;
        interpreter |= kind == PT_INTERP;
    }
    let linkage = match (kind, interpreter) {
        (ET_EXEC, false) => "static, position-dependent",
        (ET_DYN, false) => "static PIE",
        (ET_EXEC, true) => "dynamic, position-dependent",
        (ET_DYN, true) => "dynamic PIE",
        _ => bail!("{}: ELF type {kind} is not an executable", path.display()),
    };
    Ok(linkage.to_string())
}

/// The median wall time of `runs` execs of `program` with no arguments, waited for: what
/// starting any process costs on this machine, the floor under every CLI call.
pub fn exec_floor(program: &Path, runs: usize) -> Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        let status = Command::new(program)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", program.display()))?;
        times.push(start.elapsed());
        ensure!(status.success(), "{} failed: {status}", program.display());
    }
    Ok(Series(times).median())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_processes_finds_a_process_that_spins() {
        let mut spinner = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh");
        let busiest = busiest_processes(Duration::from_millis(600), 5);
        spinner.kill().expect("kill the spinner");
        spinner.wait().expect("reap the spinner");
        let found = busiest.iter().find(|(pid, ..)| *pid == spinner.id());
        let (_, name, used) = found.unwrap_or_else(|| panic!("spinner not among {busiest:?}"));
        assert_eq!(name, "sh");
        assert!(*used >= Duration::from_millis(100), "{busiest:?}");
        assert!(busiest.windows(2).all(|w| w[0].2 >= w[1].2), "{busiest:?}");
    }

    #[test]
    fn elf_linkage_tells_static_from_dynamic() {
        // cargo links test binaries as dynamic PIEs; the pause (make test builds it first)
        // is static and position-dependent.
        let this = std::env::current_exe().unwrap();
        assert_eq!(elf_linkage(&this).unwrap(), "dynamic PIE");
        let pause = crate::target_dir().join("pause").join("pause");
        if pause.is_file() {
            assert_eq!(elf_linkage(&pause).unwrap(), "static, position-dependent");
        }
        let text = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        let error = elf_linkage(&text).unwrap_err().to_string();
        assert!(error.contains("not a little-endian 64-bit ELF"), "{error}");
    }
}
