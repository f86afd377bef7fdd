//! The NRI test harness shared by the NRI end-to-end tests and the chaos suite: the cri-hook
//! binary, sandbox ids and the daemon pod names the plugin derives, pod namespaces made with
//! `ip netns add`, the plugin process, and [`Env`] (node, daemon, runtime socket and a
//! registered plugin).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use netns_holder_client::client::Client;
use netns_holder_core::names::PodName;
use nri::pb;

use crate::node::{Daemon, DaemonOptions, Node};
use crate::nri_peer::{NriRuntime, PeerOptions, PluginConn};
use crate::{ChildGuard, ScratchDir, run_ok, target_dir, unique_name};

/// How long the harness waits for a plugin to connect.
pub const WAIT: Duration = Duration::from_secs(10);

/// The cri-hook binary from the workspace build (`$CRI_HOOK_BIN` overrides).
pub fn cri_hook_binary() -> PathBuf {
    let path = std::env::var_os("CRI_HOOK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("cri-hook"));
    assert!(
        path.is_file(),
        "cri-hook binary {} not found: run `cargo build --workspace` (or set CRI_HOOK_BIN)",
        path.display()
    );
    path
}

/// A 64-hex-character sandbox id, unique per call (its first 12 characters too).
pub fn sandbox_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    let name = unique_name("sb");
    (0..4)
        .map(|i| format!("{:016x}", state.hash_one((&name, i))))
        .collect()
}

/// The daemon pod name the plugin derives (`<namespace>_<name>_<id[..12]>`).
pub fn daemon_name(pod: &pb::PodSandbox) -> String {
    format!("{}_{}_{}", pod.namespace, pod.name, &pod.id[..12])
}

/// A pod network namespace made with `ip netns add`, deleted on drop.
pub struct PodNetns {
    /// The `ip netns` name.
    pub name: String,
}

impl PodNetns {
    /// Creates `ip netns` namespace `nhq<unique>`.
    pub fn new() -> Result<Self> {
        let name = unique_name("nhq");
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        Ok(Self { name })
    }

    /// Its bind-mount path.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Link names inside the namespace, once no retired pod end is left there (see
    /// [`crate::settled_links`]).
    pub fn links(&self) -> Result<Vec<String>> {
        crate::settled_links(&format!("namespace {}", self.name), || {
            crate::link_names(&run_ok(
                Command::new("ip").args(["-n", &self.name, "-j", "link", "show"]),
            )?)
        })
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A running `cri-hook nri`, SIGTERMed (then killed) on drop; its stderr goes to a log.
pub struct PluginProcess {
    /// The process.
    pub child: ChildGuard,
    log: PathBuf,
}

impl PluginProcess {
    /// Spawns `command` with its stderr in a log under `scratch`.
    pub fn spawn(command: &mut Command, scratch: &ScratchDir) -> Result<Self> {
        let log = scratch
            .path()
            .join(format!("{}.log", unique_name("plugin")));
        command
            .stderr(std::fs::File::create(&log)?)
            .stdout(Stdio::null());
        Ok(Self {
            child: ChildGuard::spawn(command)?,
            log,
        })
    }

    /// `cri-hook -v nri --nri-socket NRI --daemon-socket DAEMON`.
    pub fn dial(nri: &Path, daemon: &Path, scratch: &ScratchDir) -> Result<Self> {
        let mut command = Command::new(cri_hook_binary());
        command
            .args(["-v", "nri", "--nri-socket"])
            .arg(nri)
            .arg("--daemon-socket")
            .arg(daemon)
            .stdin(Stdio::null());
        Self::spawn(&mut command, scratch)
    }

    /// The plugin's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // SAFETY: plain kill of the child we started (still unreaped, so the pid is ours).
        unsafe { libc::kill(self.child.pid() as libc::pid_t, libc::SIGTERM) };
        self.child.wait_timeout(Duration::from_secs(5))
    }
}

impl Drop for PluginProcess {
    fn drop(&mut self) {
        if self.child.0.is_some() {
            let _ = self.terminate();
        }
    }
}

/// Node, daemon, fake runtime socket and a dialing plugin, registered and configured.
pub struct Env {
    /// The node.
    pub node: Node,
    /// Its daemon.
    pub daemon: Daemon,
    /// Scratch space (the runtime socket, plugin logs).
    pub scratch: ScratchDir,
    /// The runtime side's socket (`None` while "the runtime is down").
    pub runtime: Option<NriRuntime>,
    /// The plugin process.
    pub plugin: PluginProcess,
    /// The runtime side of the plugin's connection.
    pub conn: PluginConn,
}

impl Env {
    /// Node, daemon, runtime socket and a dialing plugin, registered and configured.
    pub async fn start() -> Result<Self> {
        Self::start_with(DaemonOptions::default()).await
    }

    /// [`Env::start`] with a daemon started with `options`.
    pub async fn start_with(options: DaemonOptions) -> Result<Self> {
        let node = Node::new()?;
        let daemon = Daemon::start(&node, options)?;
        let scratch = ScratchDir::new("nri")?;
        let socket = scratch.path().join("nri.sock");
        let runtime = NriRuntime::bind(&socket, PeerOptions::default())?;
        let plugin = PluginProcess::dial(&socket, &daemon.socket(), &scratch)?;
        let conn = runtime
            .accept(WAIT)
            .await
            .context("plugin did not connect")?;
        let handshake = conn.handshake().await.context("handshake")?;
        ensure!(handshake.events == 0x7, "events {:#x}", handshake.events);
        Ok(Self {
            node,
            daemon,
            scratch,
            runtime: Some(runtime),
            plugin,
            conn,
        })
    }

    /// A client of the daemon.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect(self.daemon.socket()).await?)
    }

    /// The daemon pod, if it exists.
    pub async fn daemon_pod(
        &self,
        name: &str,
    ) -> Result<Option<netns_holder_client::api::pb::Pod>> {
        let mut client = self.client().await?;
        match client.get_pod(&PodName::new(name)?).await {
            Ok(answer) => Ok(answer.pod),
            // 5 = NOT_FOUND.
            Err(e) if e.code().map(|c| c as i32) == Some(5) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Pings the address of `cidr` from the node.
    pub fn ping(&self, cidr: &str) -> Result<()> {
        let ip = cidr.split('/').next().unwrap_or(cidr);
        self.node
            .run(&["ping", "-c", "1", "-W", "2", ip])
            .with_context(|| format!("ping {ip} from the node"))?;
        Ok(())
    }

    /// The runtime side saw no protocol violation.
    pub fn no_violations(&self) -> Result<()> {
        let violations = self.conn.violations();
        ensure!(
            violations.is_empty(),
            "protocol violations: {violations:#?}\nplugin log:\n{}",
            self.plugin.log()
        );
        Ok(())
    }
}

/// Runs an async test body on a runtime of its own, printing the plugin log on failure is
/// up to the body.
pub fn run_async<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(f)
}
