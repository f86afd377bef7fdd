//! OCI bundles and runc/crun containers for the end-to-end tests.
//!
//! * [`ContainerSpec`] describes one container process (arguments, user, root filesystem,
//!   namespaces to create or join) and renders the OCI `config.json`.
//! * [`Bundle`] is a bundle directory: `config.json` plus (by default) a `rootfs/` beside it.
//! * [`Runtime`] picks runc or crun; [`Runner`] is a runtime bound to a private `--root`
//!   state directory, so tests only ever see (and clean up) their own containers.
//! * [`Container`] is a guard for one container: dropping it sends SIGKILL and runs
//!   `delete --force`, even when the test panics half way.
//!
//! Configs never set `process.rlimits`, `process.oomScoreAdj` nor `linux.resources`: root in
//! the test VMs lacks `CAP_SYS_RESOURCE`, so raising a limit (or crun's `RLIMIT_MEMLOCK` for
//! its eBPF device filter) fails.
//!
//! crun refuses hybrid cgroup hosts (v1 controllers plus cgroup2 at
//! `/sys/fs/cgroup/unified`). On such a host [`Runtime::Crun`] runs every crun command
//! inside a private mount namespace where `/sys/fs/cgroup` is replaced by a pure cgroup2
//! mount; the host's mounts are not changed. The container state under `--root` lives on
//! the ordinary file system, so every command of the lifecycle sees the same state.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use crate::{ChildGuard, ScratchDir, run_ok, unique_name, wait_until};

/// How long a runtime may take to create a container and write its pid file.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `PATH` every container process gets.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities `runc spec` grants by default (bounding, effective and permitted sets).
pub const DEFAULT_CAPABILITIES: &[&str] = &["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

/// A Linux namespace kind, as named in an OCI config and under `/proc/<pid>/ns/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Namespace {
    /// PID namespace.
    Pid,
    /// Network namespace.
    Network,
    /// System V IPC and POSIX message queue namespace.
    Ipc,
    /// Hostname and NIS domain name namespace.
    Uts,
    /// Mount namespace.
    Mount,
    /// User namespace.
    User,
    /// Cgroup namespace.
    Cgroup,
}

impl Namespace {
    /// The namespaces a pod sandbox (the pause container) creates: pid, network, ipc, uts, mount.
    pub const POD: [Namespace; 5] = [
        Namespace::Pid,
        Namespace::Network,
        Namespace::Ipc,
        Namespace::Uts,
        Namespace::Mount,
    ];

    /// The `linux.namespaces[].type` value: `pid`, `network`, `ipc`, `uts`, `mount`, ...
    pub fn oci_type(self) -> &'static str {
        match self {
            Namespace::Pid => "pid",
            Namespace::Network => "network",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
            Namespace::Mount => "mount",
            Namespace::User => "user",
            Namespace::Cgroup => "cgroup",
        }
    }

    /// The file name under `/proc/<pid>/ns/`: `pid`, `net`, `ipc`, `uts`, `mnt`, ...
    pub fn proc_name(self) -> &'static str {
        match self {
            Namespace::Pid => "pid",
            Namespace::Network => "net",
            Namespace::Ipc => "ipc",
            Namespace::Uts => "uts",
            Namespace::Mount => "mnt",
            Namespace::User => "user",
            Namespace::Cgroup => "cgroup",
        }
    }

    /// `/proc/<pid>/ns/<proc_name>`: the path a container config joins.
    pub fn path_of(self, pid: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/ns/{}", self.proc_name()))
    }

    /// The namespace identity of `pid`, e.g. `net:[4026532181]` (the `readlink` of
    /// [`Namespace::path_of`]); two processes share the namespace exactly when these match.
    pub fn id_of(self, pid: u32) -> Result<String> {
        let path = self.path_of(pid);
        let link =
            std::fs::read_link(&path).with_context(|| format!("readlink {}", path.display()))?;
        Ok(link.to_string_lossy().into_owned())
    }

    /// The namespace identity of the calling process (`/proc/self/ns/<proc_name>`).
    pub fn id_of_self(self) -> Result<String> {
        let path = format!("/proc/self/ns/{}", self.proc_name());
        let link = std::fs::read_link(&path).with_context(|| format!("readlink {path}"))?;
        Ok(link.to_string_lossy().into_owned())
    }
}

/// Everything about one container process that the tests vary; renders `config.json`.
///
/// Defaults: uid/gid 0, writable root at `rootfs` (relative to the bundle), `PATH` only in
/// the environment, cwd `/`, the [`DEFAULT_CAPABILITIES`], `noNewPrivileges`, new
/// [`Namespace::POD`] namespaces, the usual `/proc`, `/dev`, `/sys` mounts, no terminal.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    gid: u32,
    rootfs: PathBuf,
    readonly_root: bool,
    hostname: Option<String>,
    capabilities: Vec<String>,
    namespaces: Vec<(Namespace, Option<PathBuf>)>,
}

impl ContainerSpec {
    /// A spec running `args` (`args[0]` is the executable inside the root file system).
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            args: args.into_iter().map(Into::into).collect(),
            env: vec![DEFAULT_PATH.to_string()],
            cwd: "/".to_string(),
            uid: 0,
            gid: 0,
            rootfs: PathBuf::from("rootfs"),
            readonly_root: false,
            hostname: None,
            capabilities: DEFAULT_CAPABILITIES.iter().map(|c| c.to_string()).collect(),
            namespaces: Namespace::POD.iter().map(|&ns| (ns, None)).collect(),
        }
    }

    /// Runs the process as `uid`:`gid`.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// The root file system: absolute, or relative to the bundle directory.
    pub fn rootfs(mut self, path: impl Into<PathBuf>) -> Self {
        self.rootfs = path.into();
        self
    }

    /// Mounts the root file system read-only.
    pub fn readonly_root(mut self, readonly: bool) -> Self {
        self.readonly_root = readonly;
        self
    }

    /// Adds `KEY=value` to the environment.
    pub fn env(mut self, key_value: impl Into<String>) -> Self {
        self.env.push(key_value.into());
        self
    }

    /// The working directory inside the container (default `/`).
    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = cwd.into();
        self
    }

    /// Sets the hostname; only valid with a new UTS namespace (runtimes refuse otherwise).
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Replaces the capability set (bounding, effective, permitted; never ambient).
    pub fn capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.capabilities = capabilities.into_iter().map(Into::into).collect();
        self
    }

    /// Gives the container a new namespace of kind `ns` (replacing any join of that kind).
    pub fn new_namespace(self, ns: Namespace) -> Self {
        self.set_namespace(ns, None)
    }

    /// Makes the container join the namespace at `path`, e.g. `/proc/<pid>/ns/net`.
    pub fn join_namespace(self, ns: Namespace, path: impl Into<PathBuf>) -> Self {
        self.set_namespace(ns, Some(path.into()))
    }

    /// Joins the namespaces `namespaces` of process `pid` (e.g. a pod's pause) by path.
    pub fn join_namespaces_of(mut self, pid: u32, namespaces: &[Namespace]) -> Self {
        for &ns in namespaces {
            self = self.join_namespace(ns, ns.path_of(pid));
        }
        self
    }

    /// Leaves the container in the runtime's (host) namespace of kind `ns`.
    pub fn host_namespace(mut self, ns: Namespace) -> Self {
        self.namespaces.retain(|(kind, _)| *kind != ns);
        self
    }

    fn set_namespace(mut self, ns: Namespace, path: Option<PathBuf>) -> Self {
        match self.namespaces.iter_mut().find(|(kind, _)| *kind == ns) {
            Some(entry) => entry.1 = path,
            None => self.namespaces.push((ns, path)),
        }
        self
    }

    /// The process arguments.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The configured root file system path (absolute, or relative to the bundle).
    pub fn rootfs_path(&self) -> &Path {
        &self.rootfs
    }

    /// The OCI runtime config (`config.json`) for this spec, to write or to adjust first.
    pub fn to_json(&self) -> Value {
        let namespaces: Vec<Value> = self
            .namespaces
            .iter()
            .map(|(ns, path)| match path {
                Some(path) => json!({ "type": ns.oci_type(), "path": path }),
                None => json!({ "type": ns.oci_type() }),
            })
            .collect();
        let mut config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": self.uid, "gid": self.gid },
                "args": self.args,
                "env": self.env,
                "cwd": self.cwd,
                "capabilities": {
                    "bounding": self.capabilities,
                    "effective": self.capabilities,
                    "permitted": self.capabilities,
                },
                "noNewPrivileges": true,
            },
            "root": { "path": self.rootfs, "readonly": self.readonly_root },
            "mounts": default_mounts(),
            "linux": {
                "namespaces": namespaces,
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
                ],
            },
        });
        if let Some(hostname) = &self.hostname {
            config["hostname"] = json!(hostname);
        }
        config
    }
}

/// The mounts of `runc spec`: `/proc`, a tmpfs `/dev` with pts, shm and mqueue, a read-only
/// `/sys` and `/sys/fs/cgroup`.
fn default_mounts() -> Value {
    json!([
        { "destination": "/proc", "type": "proc", "source": "proc" },
        { "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
          "options": ["nosuid", "strictatime", "mode=755", "size=65536k"] },
        { "destination": "/dev/pts", "type": "devpts", "source": "devpts",
          "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"] },
        { "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
          "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"] },
        { "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
          "options": ["nosuid", "noexec", "nodev"] },
        { "destination": "/sys", "type": "sysfs", "source": "sysfs",
          "options": ["nosuid", "noexec", "nodev", "ro"] },
        { "destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
          "options": ["nosuid", "noexec", "nodev", "relatime", "ro"] },
    ])
}

/// An OCI bundle directory: `config.json` and, by default, `rootfs/` beside it.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// Creates `dir` and an empty `dir/rootfs` (the default root file system).
    pub fn create(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("rootfs"))
            .with_context(|| format!("creating {}/rootfs", dir.display()))?;
        Ok(Self { dir })
    }

    /// The bundle directory (`--bundle`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `<dir>/rootfs`, the default root file system to fill.
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// `<dir>/config.json`.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// Writes `spec` as `config.json`.
    pub fn write_config(&self, spec: &ContainerSpec) -> Result<()> {
        self.write_config_json(&spec.to_json())
    }

    /// Writes an arbitrary (e.g. hand-adjusted) config as `config.json`.
    pub fn write_config_json(&self, config: &Value) -> Result<()> {
        let text = serde_json::to_string_pretty(config)?;
        std::fs::write(self.config_path(), text)
            .with_context(|| format!("writing {}", self.config_path().display()))
    }

    /// Reads `config.json` back.
    pub fn config(&self) -> Result<Value> {
        let text = std::fs::read_to_string(self.config_path())
            .with_context(|| format!("reading {}", self.config_path().display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// The OCI runtime that runs the containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `runc`.
    Runc,
    /// `crun`, wrapped in a private cgroup2-only mount namespace on hybrid-cgroup hosts.
    Crun,
}

impl Runtime {
    /// Both runtimes.
    pub const ALL: [Runtime; 2] = [Runtime::Runc, Runtime::Crun];

    /// The executable name: `runc` or `crun`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        }
    }

    /// Whether the runtime's executable runs (`<name> --version` exits 0).
    pub fn is_available(self) -> bool {
        Command::new(self.name())
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Whether this runtime needs the private cgroup2 mount namespace here: crun on a host
    /// whose `/sys/fs/cgroup` is not a pure cgroup2 mount.
    pub fn needs_cgroup2_namespace(self) -> bool {
        self == Runtime::Crun && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    }

    /// A command running this runtime with `--root <state_root>`; append the subcommand.
    ///
    /// For crun on a hybrid host this is `unshare --mount --propagation private sh -c
    /// 'umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec crun ...'`:
    /// the shell `exec`s crun, so the spawned pid, signals and exit status are crun's own.
    pub fn command(self, state_root: &Path) -> Command {
        let mut command = if self.needs_cgroup2_namespace() {
            let mut command = Command::new("unshare");
            command.args(["--mount", "--propagation", "private", "--", "sh", "-c"]);
            command.arg(
                "umount -l /sys/fs/cgroup && mount -t cgroup2 none /sys/fs/cgroup && exec \"$0\" \"$@\"",
            );
            command.arg(self.name());
            command
        } else {
            Command::new(self.name())
        };
        command.arg("--root").arg(state_root);
        command
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A runtime bound to a private, freshly created `--root` state directory.
///
/// Layout under `target/e2e/<unique>/`: `state/` (the runtime's `--root`) and
/// `containers/<id>/` (`pid`, `stdout`, `stderr` of each container). Dropping the runner
/// force-deletes any container still listed in its state directory and removes it all, so
/// [`Container`] guards must not outlive it (the borrow checker enforces this).
pub struct Runner {
    runtime: Runtime,
    scratch: ScratchDir,
}

impl Runner {
    /// A runner for `runtime` with a new, empty state directory.
    pub fn new(runtime: Runtime) -> Result<Self> {
        let scratch = ScratchDir::new(&format!("oci-{}-", runtime.name()))?;
        std::fs::create_dir_all(scratch.path().join("state"))?;
        std::fs::create_dir_all(scratch.path().join("containers"))?;
        Ok(Self { runtime, scratch })
    }

    /// The runtime.
    pub fn runtime(&self) -> Runtime {
        self.runtime
    }

    /// The `--root` state directory; holds one entry per existing container.
    pub fn state_root(&self) -> PathBuf {
        self.scratch.path().join("state")
    }

    /// A command running the runtime on this runner's state directory; append the subcommand.
    pub fn command(&self) -> Command {
        self.runtime.command(&self.state_root())
    }

    /// Ids of the containers the runtime lists in this runner's state directory.
    pub fn list(&self) -> Result<Vec<String>> {
        let output = run_ok(
            self.command()
                .args(["list", "--quiet"])
                .stdin(Stdio::null()),
        )?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Entries left in the state directory (a deleted container leaves none).
    pub fn state_entries(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(self.state_root())? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// A fresh container id: `nh-<name>-<unique>`.
    fn new_container(&self, name: &str, bundle: &Bundle) -> Result<Container<'_>> {
        let id = format!("nh-{name}-{}", unique_name(""));
        let files = self.scratch.path().join("containers").join(&id);
        std::fs::create_dir_all(&files)?;
        Ok(Container {
            runner: self,
            id,
            bundle: bundle.dir().to_path_buf(),
            files,
            child: None,
            stdin: None,
            removed: false,
        })
    }

    /// `run` in the foreground as a child of this process (the usual way: the runtime reaps
    /// the container and returns its exit status, see [`Container::wait`]).
    ///
    /// The container's stdin is a pipe (see [`Container::close_stdin`]); its stdout and stderr,
    /// and the runtime's own messages, go to files ([`Container::stdout`], [`Container::stderr`]).
    /// Returns once the process runs (the pid file is written).
    pub fn spawn(&self, name: &str, bundle: &Bundle) -> Result<Container<'_>> {
        let mut container = self.new_container(name, bundle)?;
        let mut command = self.command();
        command
            .arg("run")
            .arg("--bundle")
            .arg(bundle.dir())
            .arg("--pid-file")
            .arg(container.pid_file())
            .arg(&container.id)
            .stdin(Stdio::piped())
            .stdout(File::create(container.stdout_path())?)
            .stderr(File::create(container.stderr_path())?);
        let mut child = ChildGuard::spawn(&mut command)?;
        container.stdin = child.0.as_mut().and_then(|c| c.stdin.take());
        container.child = Some(child);
        container
            .pid()
            .with_context(|| format!("starting {} container {}", self.runtime, container.id))?;
        Ok(container)
    }

    /// Runs a container in the foreground to completion (stdin empty) within `timeout`;
    /// returns its exit status and output. The container is gone afterwards.
    pub fn run(&self, name: &str, bundle: &Bundle, timeout: Duration) -> Result<Finished> {
        let mut container = self.spawn(name, bundle)?;
        container.close_stdin();
        let status = container.wait(timeout)?;
        let finished = Finished {
            status,
            stdout: container.stdout()?,
            stderr: container.stderr()?,
        };
        container.delete()?;
        Ok(finished)
    }

    /// `create` (detached): the container's process exists, waiting for [`Container::start`].
    ///
    /// Its stdin is `/dev/null`, stdout and stderr go to files as with [`Runner::spawn`].
    /// Caveat: the runtime exits, so the container process is re-parented to the nearest
    /// child subreaper or PID 1, and it is that process's job to reap it. Where PID 1 does not
    /// reap orphans promptly (some test VMs), an exited detached container lingers as a zombie: prefer
    /// [`Runner::spawn`] unless the test needs the created-but-not-started state.
    pub fn create(&self, name: &str, bundle: &Bundle) -> Result<Container<'_>> {
        let mut container = self.new_container(name, bundle)?;
        let mut command = self.command();
        command
            .arg("create")
            .arg("--bundle")
            .arg(bundle.dir())
            .arg("--pid-file")
            .arg(container.pid_file())
            .arg(&container.id)
            .stdin(Stdio::null())
            .stdout(File::create(container.stdout_path())?)
            .stderr(File::create(container.stderr_path())?);
        // The container inherits stdout/stderr, so wait for the runtime, not for EOF.
        let mut child = ChildGuard::spawn(&mut command)?;
        let status = child.wait_timeout(START_TIMEOUT)?;
        if !status.success() {
            bail!(
                "{} create {} failed with {status}: {}",
                self.runtime,
                container.id,
                container.stderr().unwrap_or_default()
            );
        }
        container.pid()?;
        Ok(container)
    }
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("runtime", &self.runtime)
            .field("state_root", &self.state_root())
            .finish()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // Containers whose guard was leaked (or a runtime that died half way).
        if let Ok(entries) = self.state_entries() {
            for id in entries {
                let _ = self
                    .command()
                    .args(["kill", &id, "KILL"])
                    .stdin(Stdio::null())
                    .output();
                let _ = self
                    .command()
                    .args(["delete", "--force", &id])
                    .stdin(Stdio::null())
                    .output();
            }
        }
    }
}

/// A finished foreground container: see [`Runner::run`].
#[derive(Debug, Clone)]
pub struct Finished {
    /// The container process's exit status, as the runtime reported it.
    pub status: ExitStatus,
    /// Everything the container (and the runtime) wrote to stdout.
    pub stdout: String,
    /// Everything the container (and the runtime) wrote to stderr.
    pub stderr: String,
}

/// One container of a [`Runner`]. Dropping it sends SIGKILL and runs `delete --force`
/// (unless [`Container::delete`] already succeeded), then reaps a foreground runtime.
pub struct Container<'r> {
    runner: &'r Runner,
    id: String,
    bundle: PathBuf,
    files: PathBuf,
    child: Option<ChildGuard>,
    stdin: Option<std::process::ChildStdin>,
    removed: bool,
}

impl Container<'_> {
    /// The container id (unique across tests and runs).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bundle directory it was started from.
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// The runtime it runs under.
    pub fn runtime(&self) -> Runtime {
        self.runner.runtime
    }

    fn pid_file(&self) -> PathBuf {
        self.files.join("pid")
    }

    fn stdout_path(&self) -> PathBuf {
        self.files.join("stdout")
    }

    fn stderr_path(&self) -> PathBuf {
        self.files.join("stderr")
    }

    /// The container process's pid (in this process's PID namespace), from the pid file the
    /// runtime writes once the process exists; waits up to [`START_TIMEOUT`] for it.
    pub fn pid(&mut self) -> Result<u32> {
        let pid_file = self.pid_file();
        let read = || {
            std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        };
        let mut runtime_exited = None;
        let found = wait_until(START_TIMEOUT, || {
            if read().is_some() {
                return true;
            }
            // A foreground runtime that exits before writing the pid file failed.
            if let Some(Some(child)) = self.child.as_mut().map(|c| c.0.as_mut()) {
                if let Ok(Some(status)) = child.try_wait() {
                    runtime_exited = Some(status);
                    return true;
                }
            }
            false
        });
        if let Some(pid) = read() {
            return Ok(pid);
        }
        let stderr = self.stderr().unwrap_or_default();
        match runtime_exited {
            Some(status) => bail!(
                "{} exited with {status} before starting {}: {stderr}",
                self.runtime(),
                self.id
            ),
            None if !found => bail!(
                "no pid file for {} after {START_TIMEOUT:?}: {stderr}",
                self.id
            ),
            None => bail!("unreadable pid file {}", pid_file.display()),
        }
    }

    /// The runtime's `state` document (`status`, `pid`, `bundle`, ...).
    pub fn state(&self) -> Result<Value> {
        let output = run_ok(
            self.runner
                .command()
                .args(["state", &self.id])
                .stdin(Stdio::null()),
        )?;
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// The `status` from [`Container::state`]: `created`, `running`, `stopped`, ...
    pub fn status(&self) -> Result<String> {
        let state = self.state()?;
        state["status"]
            .as_str()
            .map(str::to_string)
            .context("no status in runtime state")
    }

    /// Whether the runtime still knows this container (its state directory entry exists).
    pub fn exists(&self) -> bool {
        self.runner.state_root().join(&self.id).exists()
    }

    /// `start`s a container made by [`Runner::create`].
    pub fn start(&self) -> Result<()> {
        run_ok(
            self.runner
                .command()
                .args(["start", &self.id])
                .stdin(Stdio::null()),
        )?;
        Ok(())
    }

    /// Sends `signal` (`TERM`, `KILL`, `9`, ...) to the container's process.
    pub fn kill(&self, signal: &str) -> Result<()> {
        run_ok(
            self.runner
                .command()
                .args(["kill", &self.id, signal])
                .stdin(Stdio::null()),
        )?;
        Ok(())
    }

    /// Closes the container's stdin pipe (foreground containers only): a process reading
    /// stdin sees end of file.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The container's stdin pipe (foreground containers only), to write to.
    pub fn stdin(&mut self) -> Option<&mut std::process::ChildStdin> {
        self.stdin.as_mut()
    }

    /// Waits up to `timeout` for a foreground container to end; its exit status is the
    /// container process's (128 + signal when a signal killed it).
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .context("wait: not a foreground (spawned) container")?;
        child
            .wait_timeout(timeout)
            .with_context(|| format!("waiting for container {}", self.id))
    }

    /// What the container (and the runtime) wrote to stdout so far.
    pub fn stdout(&self) -> Result<String> {
        std::fs::read_to_string(self.stdout_path()).context("reading container stdout")
    }

    /// What the container (and the runtime) wrote to stderr so far.
    pub fn stderr(&self) -> Result<String> {
        std::fs::read_to_string(self.stderr_path()).context("reading container stderr")
    }

    /// Deletes the container (`delete --force`, which kills a still-running process) if the
    /// runtime still knows it, then waits for a foreground runtime to exit. Afterwards the
    /// state directory holds no entry for it and the drop guard does nothing.
    pub fn delete(&mut self) -> Result<()> {
        if self.exists() {
            run_ok(
                self.runner
                    .command()
                    .args(["delete", "--force", &self.id])
                    .stdin(Stdio::null()),
            )?;
        }
        ensure!(
            !self.exists(),
            "{} still has state for {} after delete",
            self.runtime(),
            self.id
        );
        if let Some(child) = self.child.as_mut() {
            if child.0.is_some() {
                child.wait_timeout(START_TIMEOUT)?;
            }
        }
        self.removed = true;
        Ok(())
    }
}

impl std::fmt::Debug for Container<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("runtime", &self.runner.runtime)
            .field("id", &self.id)
            .field("bundle", &self.bundle)
            .field("foreground", &self.child.is_some())
            .finish()
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        self.stdin = None;
        if !self.removed {
            let command = || self.runner.command();
            let _ = command()
                .args(["kill", &self.id, "KILL"])
                .stdin(Stdio::null())
                .output();
            let _ = command()
                .args(["delete", "--force", &self.id])
                .stdin(Stdio::null())
                .output();
        }
        // Give a foreground runtime the chance to clean up after its container before the
        // ChildGuard SIGKILLs it.
        if let Some(mut child) = self.child.take() {
            if child.0.is_some() {
                let _ = child.wait_timeout(Duration::from_secs(5));
            }
        }
    }
}

/// Cgroup directories named `name` (a container id) anywhere within three levels below
/// `/sys/fs/cgroup`: what a runtime leaves behind if it did not clean up.
pub fn leftover_cgroups(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if !kind.is_dir() {
                continue;
            }
            let path = entry.path();
            if entry.file_name() == name {
                found.push(path.clone());
            }
            if depth > 0 {
                walk(&path, name, depth - 1, found);
            }
        }
    }
    let mut found = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), name, 3, &mut found);
    found
}

/// Pids of the live processes whose namespace `ns` is `id` (as returned by
/// [`Namespace::id_of`]); empty once a pod's namespace has no member left. Zombies have no
/// namespaces any more and are not listed.
pub fn processes_in_namespace(ns: Namespace, id: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| ns.id_of(pid).is_ok_and(|other| other == id))
        .collect()
}
