//! A throwaway "node": a network namespace of its own, and a netns-holder daemon serving from
//! inside it with its own state dir, netns dir and socket.
//!
//! The daemon is started with `nsenter --net=<node>`, which switches only the network
//! namespace: the pod bind mounts it makes stay visible to the test (which `ip netns exec`,
//! with its private mount namespace, would hide). Everything the daemon creates in the kernel
//! lives in the node namespace except the pod bind mounts and the pause processes, which
//! [`Daemon`]'s drop removes, so a failing test leaks nothing.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{ChildGuard, ScratchDir, run_ok, target_dir, unique_name, wait_until};

/// The netns-holder binary from the workspace build (`$NETNS_HOLDER_BIN` overrides).
pub fn netns_holder_binary() -> PathBuf {
    let path = std::env::var_os("NETNS_HOLDER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("netns-holder"));
    assert!(
        path.is_file(),
        "netns-holder binary {} not found: run `cargo build --workspace` (or set NETNS_HOLDER_BIN)",
        path.display()
    );
    path
}

/// The test-only daemon with its crash switch (`netns-holder-fault`, built with the
/// `fault-injection` feature by `cargo test --workspace`; `$NETNS_HOLDER_FAULT_BIN`
/// overrides).
pub fn fault_binary() -> PathBuf {
    let path = std::env::var_os("NETNS_HOLDER_FAULT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("netns-holder-fault"));
    assert!(
        path.is_file(),
        "test-only daemon {} not found: run `make test`, `cargo test --workspace`, or \
         `cargo build -p netns-holder --features fault-injection --bin netns-holder-fault` \
         (or set NETNS_HOLDER_FAULT_BIN)",
        path.display()
    );
    path
}

/// A network namespace standing in for a node, deleted on drop.
pub struct Node {
    name: String,
    /// Links the test made itself (underlays, dummies), not the daemon.
    test_links: std::sync::Mutex<Vec<String>>,
}

impl Node {
    /// Creates `ip netns` namespace `nhn<unique>` with loopback up.
    pub fn new() -> Result<Self> {
        let name = unique_name("nhn");
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let node = Self {
            name,
            test_links: std::sync::Mutex::new(Vec::new()),
        };
        node.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(node)
    }

    /// The links the test made in this node ([`Node::veth_to`], [`Node::add_underlay`]).
    pub fn test_links(&self) -> Vec<String> {
        self.test_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn record_test_link(&self, link: &str) {
        self.test_links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(link.to_string());
    }

    /// Adds a stand-in underlay link `name`, up, with `addresses` (`ADDR/PREFIX`), through
    /// which routes to other nodes can be installed: one end of a veth pair whose other end
    /// (`<name>p`, also up) stays in the node too (no `dummy` module needed).
    pub fn add_underlay(&self, name: &str, addresses: &[&str]) -> Result<()> {
        let peer = format!("{name}p");
        self.run(&[
            "ip", "link", "add", name, "type", "veth", "peer", "name", &peer,
        ])?;
        self.record_test_link(name);
        self.record_test_link(&peer);
        for address in addresses {
            self.run(&["ip", "addr", "add", address, "dev", name])?;
        }
        self.run(&["ip", "link", "set", &peer, "up"])?;
        self.run(&["ip", "link", "set", name, "up"])?;
        Ok(())
    }

    /// The namespace's `ip netns` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind-mount path.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// A command that runs `argv` inside the node's network namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns_path().display()))
            .arg("--")
            .args(argv);
        command
    }

    /// Runs `argv` inside the node; an error unless it exits 0.
    pub fn run(&self, argv: &[&str]) -> Result<Output> {
        run_ok(&mut self.command(argv))
    }

    /// The inode of the node's network namespace: what a daemon serving in it puts into the
    /// environment of its pause processes (`NETNS_HOLDER_NODE_NETNS=<inode>`).
    pub fn netns_inode(&self) -> Result<u64> {
        let path = self.netns_path();
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("stat {}", path.display()))?
            .ino())
    }

    /// Every link in the node, with its group and carrier ([`crate::LinkState`]).
    pub fn link_states(&self) -> Result<Vec<crate::LinkState>> {
        crate::link_states(&self.run(&["ip", "-j", "link", "show"])?)
    }

    /// The names of every link in the node (`lo`, the bridge, host veths, ...).
    pub fn links(&self) -> Result<Vec<String>> {
        crate::link_names(&self.run(&["ip", "-j", "link", "show"])?)
    }

    /// Live pause processes started by a daemon serving in this node, as `(pid, pod id)`:
    /// `argv[0]` is `netns-holder-pause:<id>` and the environment names this node's
    /// namespace. Zombies (exited, not yet reaped) are not listed.
    pub fn pause_processes(&self) -> Result<Vec<(u32, String)>> {
        let tag = format!("{PAUSE_NODE_ENV}={}", self.netns_inode()?);
        Ok(pause_processes()
            .into_iter()
            .filter(|(pid, _)| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == tag.as_bytes()))
            })
            .collect())
    }
}

/// The environment variable naming the node namespace inode in every pause's environment.
pub const PAUSE_NODE_ENV: &str = "NETNS_HOLDER_NODE_NETNS";

/// The prefix of `argv[0]` of every pause a daemon starts; the pod id follows.
pub const PAUSE_ARGV0_PREFIX: &str = "netns-holder-pause:";

/// Every live (not zombie) process on the machine whose `argv[0]` is
/// `netns-holder-pause:<id>`, as `(pid, id)`, whichever daemon started it.
pub fn pause_processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let argv0 = cmdline.split(|b| *b == 0).next()?;
            let id = std::str::from_utf8(argv0)
                .ok()?
                .strip_prefix(PAUSE_ARGV0_PREFIX)?
                .to_string();
            (!matches!(crate::proc_state(pid), None | Some('Z' | 'X'))).then_some((pid, id))
        })
        .collect();
    found.sort();
    found
}

/// Whether `pid` is a live (not zombie) pause process of pod `id`.
pub fn pause_alive(pid: u32, id: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    argv0 == format!("{PAUSE_ARGV0_PREFIX}{id}").as_bytes()
        && !matches!(crate::proc_state(pid), None | Some('Z' | 'X'))
}

/// Mount points at or below `dir` in this process's mount namespace (from
/// `/proc/self/mountinfo`; octal escapes such as `\040` are decoded).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|path| path.starts_with(dir))
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Some(n) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs `f` on a new thread that first enters the network namespace at `netns`
/// (`setns(CLONE_NEWNET)`, which affects that thread only), and returns its result.
///
/// Sockets keep the namespace they were created in: a listener or a connected stream made
/// by `f` can be returned and used from any thread.
pub fn in_netns_thread<T, F>(netns: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Result<T> + Send,
{
    use std::os::fd::AsRawFd;
    let file =
        std::fs::File::open(netns).with_context(|| format!("opening netns {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns on a valid, open namespace descriptor; it changes only the
                // calling thread's network namespace, and this thread ends with `f`.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    bail!(
                        "setns({}): {}",
                        netns.display(),
                        std::io::Error::last_os_error()
                    );
                }
                drop(file);
                f()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", netns.display()))?
    })
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The datapath the test daemons run (`NH_TEST_DATAPATH`: `bridge`, the default, or
/// `routed`); `scripts/run-tests.sh` runs the daemon-level suites once with each. A config
/// whose `extra_config` names `datapath` itself keeps its own.
pub fn test_datapath() -> &'static str {
    static DATAPATH: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    DATAPATH.get_or_init(|| match std::env::var("NH_TEST_DATAPATH").as_deref() {
        Ok("routed") => "routed",
        Ok("bridge") | Ok("") | Err(_) => "bridge",
        Ok(other) => panic!("NH_TEST_DATAPATH={other:?}: expected \"bridge\" or \"routed\""),
    })
}

/// Whether the test daemons run the routed datapath (see [`test_datapath`]).
pub fn routed() -> bool {
    test_datapath() == "routed"
}

/// The node's own address in a pod CIDR: the first host address, which the bridge carries
/// as the pods' gateway (bridge datapath) or `lo` carries alone (routed), and the source of
/// the node's traffic to its pods.
pub fn node_pod_address(cidr: &str) -> std::net::IpAddr {
    let net: ipnet::IpNet = cidr.parse().expect("a pod CIDR");
    net.hosts()
        .find(|a| *a != net.network())
        .expect("a pod CIDR with host addresses")
}

/// Settings for a test daemon; the dirs and socket are always private to it.
#[derive(Clone, Debug)]
pub struct DaemonOptions {
    /// `pod_cidr_v4`.
    pub pod_cidr_v4: String,
    /// `pod_cidr_v6`, if any.
    pub pod_cidr_v6: Option<String>,
    /// `bridge`.
    pub bridge: String,
    /// Extra environment for the daemon (e.g. fault injection).
    pub env: Vec<(String, String)>,
    /// `peers`: (pod CIDR, node address) of other nodes, routed via that address.
    pub peers: Vec<(String, String)>,
    /// Further TOML lines appended to the config as they are.
    pub extra_config: String,
    /// The daemon binary, if not [`netns_holder_binary`] (e.g. [`fault_binary`]).
    pub binary: Option<PathBuf>,
    /// Cluster mode: the body of the `[cluster]` section (written last); `pod_cidr_v4`,
    /// `pod_cidr_v6` and `peers` are then not written.
    pub cluster: Option<String>,
    /// Mount a tmpfs on the netns dir before the daemon starts, as the default
    /// `/run/netns-holder/netns` is on a node (this machine's `/run` is not a tmpfs, and
    /// creating the mount points in a directory of a disk file system holds its lock for
    /// longer): for the benchmarks. Unmounted with the rest.
    pub netns_tmpfs: bool,
    /// Leave `datapath` out of the config (the daemon's default) instead of writing the
    /// suite's ([`test_datapath`]).
    pub datapath_unset: bool,
    /// Leave `netns_pool` out of the config (the daemon's default, 128) instead of writing
    /// the suites' [`TEST_NETNS_POOL`]: for the benchmarks.
    pub netns_pool_unset: bool,
}

/// The namespace pool of the suites' daemons (unless a test's `extra_config` names its
/// own): the suites start and kill hundreds of daemons, the crash suites one per step, and
/// with the daemon's default of 128 each start made up to 128 namespaces that its end then
/// had the kernel tear down, all of it under RTNL beside the tests' own pods (two routed
/// tests that ping a pod right after its create failed in one of four runs of the suite
/// with 128; not shown to be the cause). Eight, the default before stop 26, still runs
/// every create through the pool.
pub const TEST_NETNS_POOL: u32 = 8;

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            pod_cidr_v4: "10.244.0.0/24".into(),
            pod_cidr_v6: None,
            bridge: "nh0".into(),
            env: Vec::new(),
            peers: Vec::new(),
            extra_config: String::new(),
            binary: None,
            cluster: None,
            netns_tmpfs: false,
            datapath_unset: false,
            netns_pool_unset: false,
        }
    }
}

/// A netns-holder daemon serving inside a [`Node`]; on drop it removes every pod it made
/// (through the API while it runs, then directly: pause processes and bind mounts).
pub struct Daemon {
    scratch: ScratchDir,
    config_path: PathBuf,
    process: Option<ChildGuard>,
    node_netns: PathBuf,
    options: DaemonOptions,
}

impl Daemon {
    /// Writes a config into a fresh scratch dir and starts the daemon inside `node`.
    pub fn start(node: &Node, options: DaemonOptions) -> Result<Self> {
        let scratch = ScratchDir::new("nhd")?;
        let dir = scratch.path().to_path_buf();
        let mut config = format!(
            "socket = \"{}\"\nstate_dir = \"{}\"\nnetns_dir = \"{}\"\nbridge = \"{}\"\n\
             pause_binary = \"{}\"\n",
            dir.join("api.sock").display(),
            dir.join("state").display(),
            dir.join("netns").display(),
            options.bridge,
            crate::pause_binary().display(),
        );
        if options.cluster.is_none() {
            config.push_str(&format!("pod_cidr_v4 = \"{}\"\n", options.pod_cidr_v4));
        }
        if let Some(v6) = options
            .pod_cidr_v6
            .as_ref()
            .filter(|_| options.cluster.is_none())
        {
            config.push_str(&format!("pod_cidr_v6 = \"{v6}\"\n"));
        }
        if !options.peers.is_empty() && options.cluster.is_none() {
            let peers: Vec<String> = options
                .peers
                .iter()
                .map(|(cidr, via)| format!("{{ pod_cidr = \"{cidr}\", via = \"{via}\" }}"))
                .collect();
            config.push_str(&format!("peers = [{}]\n", peers.join(", ")));
        }
        if !options.extra_config.contains("datapath") && !options.datapath_unset {
            config.push_str(&format!("datapath = \"{}\"\n", test_datapath()));
        }
        if !options.extra_config.contains("netns_pool") && !options.netns_pool_unset {
            config.push_str(&format!("netns_pool = {TEST_NETNS_POOL}\n"));
        }
        config.push_str(&options.extra_config);
        if let Some(cluster) = &options.cluster {
            config.push_str("\n[cluster]\n");
            config.push_str(cluster);
        }
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        if options.netns_tmpfs {
            let netns = dir.join("netns");
            std::fs::create_dir_all(&netns)?;
            run_ok(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", "mode=0755,size=16m", "nhnetns"])
                    .arg(&netns),
            )?;
        }
        let mut daemon = Self {
            scratch,
            config_path,
            process: None,
            node_netns: node.netns_path(),
            options,
        };
        daemon.spawn()?;
        Ok(daemon)
    }

    /// (Re)starts the daemon process and waits until its API answers.
    pub fn spawn(&mut self) -> Result<()> {
        ensure!(self.process.is_none(), "daemon already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.node_netns.display()))
            .arg("--")
            .arg(
                self.options
                    .binary
                    .clone()
                    .unwrap_or_else(netns_holder_binary),
            )
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // nsenter execs the daemon in place (no --fork), so the guard's pid is the daemon's.
        self.process = Some(ChildGuard::spawn(&mut command)?);
        // `exited` reaps: keep the status it saw, a second call would not see it again.
        let mut exit = None;
        let ready = wait_until(Duration::from_secs(15), || {
            exit = exit.or_else(|| self.exited());
            exit.is_some() || self.cli(&["status"]).is_ok_and(|o| o.status.success())
        });
        if let Some(status) = exit {
            // Reaped: its pid is no longer ours to signal when the guard drops.
            if let Some(mut guard) = self.process.take() {
                guard.0 = None;
            }
            bail!("daemon exited with {status} at start; log:\n{}", self.log());
        }
        ensure!(
            ready,
            "daemon API not ready after 15 s; log:\n{}",
            self.log()
        );
        Ok(())
    }

    fn exited(&self) -> Option<std::process::ExitStatus> {
        let pid = self.pid()?;
        let mut status = 0;
        // SAFETY: WNOHANG wait on our own child; `status` is a valid out pointer.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if rc == pid as libc::pid_t {
            use std::os::unix::process::ExitStatusExt;
            return Some(std::process::ExitStatus::from_raw(status));
        }
        None
    }

    /// Replaces the daemon's extra environment for the next [`Daemon::spawn`] (e.g. to arm
    /// or disarm fault injection across a restart).
    pub fn set_env(&mut self, env: Vec<(String, String)>) {
        self.options.env = env;
    }

    /// Waits up to `timeout` for the daemon to exit on its own (a deliberate crash) and
    /// returns its status; the daemon can then be [`Daemon::spawn`]ed again.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut process = self.process.take().context("daemon not running")?;
        match process.wait_timeout(timeout) {
            Ok(status) => Ok(status),
            Err(e) => {
                self.process = Some(process);
                Err(e)
            }
        }
    }

    /// The daemon's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::pid)
    }

    /// SIGKILLs the daemon (a crash); pods and pause processes stay.
    pub fn kill9(&mut self) {
        self.process = None;
    }

    /// SIGTERMs the daemon and waits for it to exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut process = self.process.take().context("daemon not running")?;
        // SAFETY: plain kill of the daemon we started.
        unsafe { libc::kill(process.pid() as libc::pid_t, libc::SIGTERM) };
        process.wait_timeout(Duration::from_secs(10))
    }

    /// The daemon's stderr log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.scratch.path().join("daemon.log")
    }

    /// The API socket.
    pub fn socket(&self) -> PathBuf {
        self.scratch.path().join("api.sock")
    }

    /// Where pod namespaces are bind-mounted.
    pub fn netns_dir(&self) -> PathBuf {
        self.scratch.path().join("netns")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.scratch.path().join("state")
    }

    /// The node bridge the daemon is configured with.
    pub fn bridge(&self) -> &str {
        &self.options.bridge
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Runs the CLI against this daemon (from the test's own netns: only the socket matters).
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        Command::new(netns_holder_binary())
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .output()
            .context("running the netns-holder CLI")
    }

    /// Runs the CLI and parses its stdout as JSON; an error unless it exits 0.
    pub fn cli_json(&self, args: &[&str]) -> Result<Value> {
        let out = self.cli(args)?;
        ensure!(
            out.status.success(),
            "netns-holder {args:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "stdout of {args:?} is not JSON: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `pod create NAME [extra...]` → the pod JSON.
    pub fn create_pod(&self, name: &str, extra: &[&str]) -> Result<Value> {
        let mut args = vec!["pod", "create", name];
        args.extend_from_slice(extra);
        self.cli_json(&args)
    }

    /// `pod rm NAME`.
    pub fn remove_pod(&self, name: &str) -> Result<Value> {
        self.cli_json(&["pod", "rm", name])
    }

    /// Pause pids recorded in the state file (for cleanup after a crash).
    fn recorded_pause_pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir(self.state_dir()) else {
            return Vec::new();
        };
        let mut pids = Vec::new();
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            collect_numbers_named(
                &serde_json::from_str(&text).unwrap_or(Value::Null),
                "pid",
                &mut pids,
            );
        }
        pids
    }
}

fn collect_numbers_named(value: &Value, key: &str, out: &mut Vec<u32>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == key {
                    if let Some(n) = v.as_u64() {
                        out.push(n as u32);
                    }
                }
                collect_numbers_named(v, key, out);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_numbers_named(v, key, out)),
        _ => {}
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.process.is_some() {
            let _ = self.cli(&["gc"]);
            let _ = self.stop();
        }
        // Whatever is left after a crash: pause processes of our pods (checked by their
        // argv[0] tag, so a recycled pid is never hit), including those started by a create
        // that a crash cut short before their pid was recorded (found by the node namespace
        // in their environment) ...
        let mut pids = self.recorded_pause_pids();
        let tag = std::fs::metadata(&self.node_netns)
            .ok()
            .map(|m| format!("{PAUSE_NODE_ENV}={}", m.ino()));
        for (pid, _) in pause_processes() {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if tag
                .as_ref()
                .is_some_and(|tag| environ.split(|b| *b == 0).any(|v| v == tag.as_bytes()))
            {
                pids.push(pid);
            }
        }
        for pid in pids {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(PAUSE_ARGV0_PREFIX.as_bytes()) {
                // SAFETY: plain kill of a pause our daemon started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        // ... bind mounts under our netns dir, then the netns dir itself, which the daemon
        // bind-mounts onto itself to make it a shared mount (else the scratch dir stays).
        if let Ok(entries) = std::fs::read_dir(self.netns_dir()) {
            for entry in entries.flatten() {
                let _ = nix_umount(&entry.path());
            }
        }
        // The daemon makes its netns dir a shared bind mount of itself; without this the
        // scratch dir cannot be removed and a mount leaks per test.
        let _ = nix_umount(&self.netns_dir());
        for _ in 0..8 {
            if mounts_under(&self.netns_dir()).is_empty() || nix_umount(&self.netns_dir()).is_err()
            {
                break;
            }
        }
    }
}

fn nix_umount(path: &Path) -> std::io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
    let rc = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `argv` inside the network namespace bind-mounted at `netns`.
pub fn in_netns(netns: &Path, argv: &[&str]) -> Command {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(argv);
    command
}

// ------------------------------------------------------------------ underlay and traffic

impl Node {
    /// Joins this namespace and `other` with a veth pair, `here` on this side and `there`
    /// on the other, both up with the given addresses (`ADDR/PREFIX`; IPv6 ones without
    /// duplicate address detection, so they are usable at once).
    pub fn veth_to(
        &self,
        other: &Node,
        here: (&str, &[&str]),
        there: (&str, &[&str]),
    ) -> Result<()> {
        self.run(&[
            "ip",
            "link",
            "add",
            here.0,
            "type",
            "veth",
            "peer",
            "name",
            there.0,
            "netns",
            other.name(),
        ])?;
        for (node, (link, addresses)) in [(self, here), (other, there)] {
            node.record_test_link(link);
            for address in addresses {
                let mut argv = vec!["ip", "addr", "add", address, "dev", link];
                if address.contains(':') {
                    argv.push("nodad");
                }
                node.run(&argv)?;
            }
            node.run(&["ip", "link", "set", link, "up"])?;
        }
        Ok(())
    }

    /// Runs `argv` in the node and returns its stdout (an error unless it exits 0).
    pub fn stdout(&self, argv: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.run(argv)?.stdout).into_owned())
    }
}

/// A transport protocol for [`Echo`] and the probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A server inside a network namespace that answers every TCP connection or UDP datagram
/// with `peer <address>`: the source address it saw. Stops on drop.
pub struct Echo {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    /// Listens on `[::]:port` (dual-stack) in the namespace at `netns`.
    pub fn start(netns: &Path, proto: Proto, port: u16) -> Result<Self> {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = match proto {
            Proto::Tcp => {
                let listener = in_netns_thread(netns, move || {
                    Ok(std::net::TcpListener::bind(("::", port))?)
                })?;
                listener.set_nonblocking(true)?;
                std::thread::spawn(move || {
                    while !flag.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((mut stream, peer)) => {
                                let _ = writeln!(stream, "peer {}", peer.ip().to_canonical());
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(2)),
                        }
                    }
                })
            }
            Proto::Udp => {
                let socket =
                    in_netns_thread(netns, move || Ok(std::net::UdpSocket::bind(("::", port))?))?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                std::thread::spawn(move || {
                    let mut buf = [0u8; 512];
                    while !flag.load(Ordering::Relaxed) {
                        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                            let reply = format!("peer {}\n", peer.ip().to_canonical());
                            let _ = socket.send_to(reply.as_bytes(), peer);
                        }
                    }
                })
            }
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_peer(reply: &str) -> Result<std::net::IpAddr> {
    reply
        .trim()
        .strip_prefix("peer ")
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("unexpected echo reply {reply:?}"))
}

/// Connects over TCP from the namespace at `netns` to `to` and returns the source address
/// the [`Echo`] server saw.
pub fn tcp_probe(netns: &Path, to: std::net::SocketAddr) -> Result<std::net::IpAddr> {
    use std::io::Read;
    let mut stream = in_netns_thread(netns, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .with_context(|| format!("connecting to {to} from {}", netns.display()))
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .with_context(|| format!("reading from {to}"))?;
    parse_peer(&reply)
}

/// A UDP socket inside a namespace (its source port stays the same across probes, so the
/// probes share one conntrack entry).
pub struct UdpClient {
    socket: std::net::UdpSocket,
}

impl UdpClient {
    /// Binds `[::]:0` (or `0.0.0.0:0` with `v4`) in the namespace at `netns`.
    pub fn new(netns: &Path, v4: bool) -> Result<Self> {
        let socket = in_netns_thread(netns, move || {
            Ok(if v4 {
                std::net::UdpSocket::bind("0.0.0.0:0")?
            } else {
                std::net::UdpSocket::bind("[::]:0")?
            })
        })?;
        Ok(Self { socket })
    }

    /// The local port.
    pub fn port(&self) -> u16 {
        self.socket.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Sends one datagram to `to` without waiting for anything.
    pub fn send(&self, to: std::net::SocketAddr) -> Result<()> {
        self.socket.send_to(b"ping", to)?;
        Ok(())
    }

    /// Sends to `to` and waits up to `timeout` for the echo's reply (resending every
    /// 200 ms); returns the source address the server saw.
    pub fn probe(&self, to: std::net::SocketAddr, timeout: Duration) -> Result<std::net::IpAddr> {
        let deadline = std::time::Instant::now() + timeout;
        self.socket
            .set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf = [0u8; 512];
        loop {
            self.socket.send_to(b"ping", to)?;
            match self.socket.recv_from(&mut buf) {
                Ok((n, _)) => return parse_peer(&String::from_utf8_lossy(&buf[..n])),
                Err(e) if std::time::Instant::now() >= deadline => {
                    bail!("no UDP reply from {to} within {timeout:?}: {e}")
                }
                Err(_) => {}
            }
        }
    }
}
