//! Shared helpers for the privileged end-to-end tests and the benchmarks.
//!
//! Every test creates its own uniquely named objects and removes them on drop, so tests can
//! run in parallel and a failing assertion does not leak containers, namespaces or processes.

pub mod bench;
pub mod etcd;
pub mod invariants;
pub mod neighbour;
pub mod node;
pub mod nri_harness;
pub mod nri_peer;
pub mod nri_replay;
pub mod oci;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Whether we run as root. Privileged tests call [`require_root`] first.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Returns false (and says so loudly on stderr) when not root; the caller then returns early.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    eprintln!(
        "\n*** SKIPPED {test}: needs root (real namespaces, runc, nftables). Run `make test` as root. ***\n"
    );
    false
}

/// A name no other test or run uses: `prefix` + pid + counter, at most 15 bytes when
/// `prefix` is at most 4 (fits an interface name).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id())
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Cargo's target directory for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The shipped pause binary (`make pause`), or `$PAUSE_BIN`.
pub fn pause_binary() -> PathBuf {
    let path = std::env::var_os("PAUSE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("pause").join("pause"));
    assert!(
        path.is_file(),
        "pause binary {} not found: run `make pause` (or set PAUSE_BIN)",
        path.display()
    );
    path
}

/// A scratch directory under the target dir, removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates `target/e2e/<unique>`.
    pub fn new(prefix: &str) -> Result<Self> {
        let path = target_dir().join("e2e").join(unique_name(prefix));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process that is SIGKILLed and reaped on drop unless already waited for.
pub struct ChildGuard(pub Option<Child>);

impl ChildGuard {
    /// Spawns `command`.
    pub fn spawn(command: &mut Command) -> Result<Self> {
        let child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        Ok(Self(Some(child)))
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Waits up to `timeout` for the child to exit; returns its status.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let child = self.0.as_mut().context("child already waited for")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                self.0 = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("pid {} still running after {timeout:?}", child.id());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `condition` every 5 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    condition()
}

/// The link names in the output of `ip -j link show`.
pub fn link_names(ip_json: &Output) -> Result<Vec<String>> {
    let links: serde_json::Value =
        serde_json::from_slice(&ip_json.stdout).context("ip -j link show")?;
    Ok(links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .collect())
}

/// A link as `ip -j link show` describes it, as far as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Its name.
    pub name: String,
    /// Its device group (`IFLA_GROUP`; 0 is `default`).
    pub group: u32,
    /// Whether it has a carrier (`LOWER_UP`): a veth end has one once both ends are up.
    pub carrier: bool,
}

impl LinkState {
    /// Whether a daemon is deleting it ([`netns_holder_core::names::DELETE_LINK_GROUP`]).
    pub fn being_deleted(&self) -> bool {
        self.group == netns_holder_core::names::DELETE_LINK_GROUP
    }
}

/// The links in the output of `ip -j link show`.
pub fn link_states(ip_json: &Output) -> Result<Vec<LinkState>> {
    let links: serde_json::Value =
        serde_json::from_slice(&ip_json.stdout).context("ip -j link show")?;
    links
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            let name = l["ifname"]
                .as_str()
                .with_context(|| format!("a link without a name in ip -j link show: {l}"))?
                .to_string();
            let group = match l["group"].as_str() {
                None | Some("default") => 0,
                Some(number) => number
                    .parse()
                    .with_context(|| format!("link {name}: group {number:?}"))?,
            };
            let carrier = l["flags"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f == "LOWER_UP");
            Ok(LinkState {
                name,
                group,
                carrier,
            })
        })
        .collect()
}

/// The links `list` returns once none of them is a retired veth end any more: a removed
/// pod's ends are renamed `nhx...` and deleted by the kernel with its namespace or by the
/// daemon's deletion batch, asynchronously, and must be gone within 5 s (an error naming
/// `place` and what is left if not).
pub fn settled_links(
    place: &str,
    list: impl FnMut() -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    wait_settled(place, "retired veth ends", list, |l| {
        l.starts_with(netns_holder_core::names::RETIRED_VETH_PREFIX)
    })
}

/// What `list` returns once nothing in it is `unsettled` any more, polled every 20 ms for at
/// most 5 s; an error naming `what` and `place` with the whole list if not.
pub fn wait_settled<T: std::fmt::Debug>(
    place: &str,
    what: &str,
    mut list: impl FnMut() -> Result<Vec<T>>,
    unsettled: impl Fn(&T) -> bool,
) -> Result<Vec<T>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let items = list()?;
        if !items.iter().any(&unsettled) {
            return Ok(items);
        }
        if Instant::now() >= deadline {
            bail!("{what} still in {place} after 5 s: {items:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` to completion; an error (with stdout and stderr) unless it exits 0.
pub fn run_ok(command: &mut Command) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed with {}:\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// One field of `/proc/<pid>/status`, e.g. `VmRSS` or `State`.
pub fn proc_status_field(pid: u32, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == field).then(|| value.trim().to_string())
    })
}

/// The process state letter (`S`, `R`, `Z`, ...) of `pid`.
pub fn proc_state(pid: u32) -> Option<char> {
    proc_status_field(pid, "State").and_then(|s| s.chars().next())
}

/// Pids of every process whose parent is `parent`, with their state letters.
pub fn children_of(parent: u32) -> Vec<(u32, char)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The command name may hold spaces and parentheses: fields start after the last ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let mut fields = rest.split(' ');
            let state = fields.next()?.chars().next()?;
            let ppid: u32 = fields.next()?.parse().ok()?;
            (ppid == parent).then_some((pid, state))
        })
        .collect()
}

/// Waits until `pid` sleeps (state `S`): the pause has reached its blocking wait.
pub fn wait_sleeping(pid: u32) -> Result<()> {
    if !wait_until(Duration::from_secs(5), || proc_state(pid) == Some('S')) {
        bail!(
            "pid {pid} did not reach the sleeping state (state {:?})",
            proc_state(pid)
        );
    }
    Ok(())
}

/// Debian's static busybox, which the test containers run.
pub const BUSYBOX: &str = "/bin/busybox";

/// Fills `rootfs` with a minimal busybox root: `/bin/busybox` plus `/bin/sh`.
pub fn busybox_rootfs(rootfs: &Path) -> Result<()> {
    let bin = rootfs.join("bin");
    std::fs::create_dir_all(&bin)?;
    std::fs::copy(BUSYBOX, bin.join("busybox"))
        .context("copying busybox (apt-get install busybox-static)")?;
    std::os::unix::fs::symlink("busybox", bin.join("sh"))?;
    Ok(())
}
