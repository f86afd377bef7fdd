//! A throwaway "node": a network namespace of its own, and a netns-holder daemon serving from
//! inside it with its own state dir, netns dir and socket.
//!
//! The daemon is started with `nsenter --net=<node>`, which switches only the network
//! namespace: the pod bind mounts it makes stay visible to the test (which `ip netns exec`,
//! with its private mount namespace, would hide). Everything the daemon creates in the kernel
//! lives in the node namespace except the pod bind mounts and the pause processes, which
//! [`Daemon`]'s drop removes, so a failing test leaks nothing.

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

/// A network namespace standing in for a node, deleted on drop.
pub struct Node {
    name: String,
}

impl Node {
    /// Creates `ip netns` namespace `nhn<unique>` with loopback up.
    pub fn new() -> Result<Self> {
        let name = unique_name("nhn");
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let node = Self { name };
        node.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(node)
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
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
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
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            pod_cidr_v4: "10.244.0.0/24".into(),
            pod_cidr_v6: None,
            bridge: "nh0".into(),
            env: Vec::new(),
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
             pod_cidr_v4 = \"{}\"\npause_binary = \"{}\"\n",
            dir.join("api.sock").display(),
            dir.join("state").display(),
            dir.join("netns").display(),
            options.bridge,
            options.pod_cidr_v4,
            crate::pause_binary().display(),
        );
        if let Some(v6) = &options.pod_cidr_v6 {
            config.push_str(&format!("pod_cidr_v6 = \"{v6}\"\n"));
        }
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
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
            .arg(netns_holder_binary())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .envs(self.options.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // nsenter execs the daemon in place (no --fork), so the guard's pid is the daemon's.
        self.process = Some(ChildGuard::spawn(&mut command)?);
        let ready = wait_until(Duration::from_secs(15), || {
            self.exited().is_some() || self.cli(&["status"]).is_ok_and(|o| o.status.success())
        });
        if let Some(status) = self.exited() {
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
        // argv[0] tag, so a recycled pid is never hit) and bind mounts under our netns dir.
        for pid in self.recorded_pause_pids() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.starts_with(b"netns-holder-pause:") {
                // SAFETY: plain kill of a pause our daemon started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if let Ok(entries) = std::fs::read_dir(self.netns_dir()) {
            for entry in entries.flatten() {
                let _ = nix_umount(&entry.path());
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
