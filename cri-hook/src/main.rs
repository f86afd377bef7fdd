//! `cri-hook`: the runtime adapters of netns-holder, as one binary.
//!
//! ```text
//! cri-hook [-v] nri [--nri-socket PATH] [--daemon-socket PATH]
//!                   [--plugin-name NAME] [--plugin-index NN] [--daemon-timeout-ms MS]
//! cri-hook oci createRuntime|poststop|auto [--daemon-socket PATH] [--timeout-ms MS]
//! CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION ... cri-hook   (CNI plugin; see cri_hook::cni)
//! ```
//!
//! `nri` runs the NRI plugin until SIGTERM or SIGINT (see [`cri_hook::run`]). Started by the
//! runtime as a pre-installed plugin (`/opt/nri/plugins/NN-name`, exec'd without arguments
//! and with only `NRI_PLUGIN_SOCKET`, `NRI_PLUGIN_NAME` and `NRI_PLUGIN_IDX` in its
//! environment), the binary runs `nri` with the defaults when no subcommand is given and
//! `NRI_PLUGIN_SOCKET` is set, so the plugin file can be a symlink to `cri-hook`.
//!
//! Identity precedence (as the Go stub): `NRI_PLUGIN_NAME`/`NRI_PLUGIN_IDX`, then
//! `--plugin-name`/`--plugin-index`, then an executable named `NN-name`, then
//! `netns-holder` and `10`.
//!
//! This file only builds the one root logger (stderr), parses the command line and runs the
//! library on a tokio runtime. Logs go to stderr; a launched plugin has no stderr (it is
//! the null device), so wrap it (`exec cri-hook nri 2>>/var/log/...`) to keep its logs.
//! Exit status: 0 after a shutdown signal (or when the runtime closes an inherited
//! socket), 1 on errors, 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use slog::{Drain, Logger, info, o};

use cri_hook::network::DaemonNetwork;
use cri_hook::nri;
use cri_hook::plugin::Plugin;
use cri_hook::run::{self, Backoff, Identity, Transport};

/// Default plugin name.
const DEFAULT_NAME: &str = "netns-holder";
/// Default plugin index.
const DEFAULT_INDEX: &str = "10";

/// `cri-hook`: runtime adapters that call the netns-holder daemon.
#[derive(Debug, Parser)]
#[command(name = "cri-hook", version, about, propagate_version = true)]
struct Cli {
    /// Log debug messages (to stderr).
    #[arg(long, short, global = true)]
    verbose: bool,
    /// What to run.
    #[command(subcommand)]
    command: Option<Command>,
}

/// The adapters.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the NRI plugin (containerd, CRI-O): pod sandboxes get their network from the
    /// daemon at RunPodSandbox and lose it at RemovePodSandbox.
    Nri(NriArgs),
    /// Run as an OCI hook (createRuntime, poststop, or auto) with the OCI state on stdin; see
    /// `cri_hook::oci_hook`.
    Oci(cri_hook::oci_hook::OciArgs),
}

/// Arguments of `nri`.
#[derive(Debug, Args)]
struct NriArgs {
    /// The runtime's NRI socket (ignored when NRI_PLUGIN_SOCKET names an inherited fd).
    #[arg(long, value_name = "PATH", default_value = nri::DEFAULT_SOCKET)]
    nri_socket: PathBuf,
    /// The netns-holder daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = netns_holder::config::DEFAULT_SOCKET)]
    daemon_socket: PathBuf,
    /// Plugin name (NRI_PLUGIN_NAME wins) [default: from an NN-name executable, else
    /// netns-holder].
    #[arg(long, value_name = "NAME")]
    plugin_name: Option<String>,
    /// Plugin index, two digits (NRI_PLUGIN_IDX wins) [default: from an NN-name executable,
    /// else 10].
    #[arg(long, value_name = "NN")]
    plugin_index: Option<String>,
    /// Bound of each daemon call in milliseconds; keep it well under the runtime's request
    /// timeout (2000 ms by default).
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    daemon_timeout_ms: u64,
}

/// Builds the one root logger: human-readable lines on stderr, written by a background
/// thread (the returned guard flushes it when dropped).
fn root_logger(verbose: bool) -> (Logger, slog_async::AsyncGuard) {
    let decorator = slog_term::PlainDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let level = if verbose {
        slog::Level::Debug
    } else {
        slog::Level::Info
    };
    let drain = slog::LevelFilter::new(drain, level).fuse();
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(4096)
        .build_with_guard();
    (Logger::root(drain.fuse(), o!("adapter" => "nri")), guard)
}

fn main() -> ExitCode {
    // Run by a container runtime as a CNI plugin (e.g. as /opt/cni/bin/netns-holder).
    if std::env::var_os("CNI_COMMAND").is_some() {
        return cri_hook::cni::main();
    }
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Nri(args)) => args,
        Some(Command::Oci(args)) => return cri_hook::oci_hook::main(args),
        None if std::env::var_os(nri::ENV_PLUGIN_SOCKET).is_some() => {
            // Launched by the runtime without arguments: `nri` with the defaults.
            match Cli::try_parse_from(["cri-hook", "nri"]) {
                Ok(Cli {
                    command: Some(Command::Nri(args)),
                    ..
                }) => args,
                _ => return ExitCode::from(2),
            }
        }
        None => {
            eprintln!("error: a subcommand is required (try `cri-hook nri --help`)");
            return ExitCode::from(2);
        }
    };
    let (log, guard) = root_logger(cli.verbose);
    let result = nri_main(args, log.clone());
    let code = match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            slog::error!(log, "NRI plugin failed"; "error" => format!("{e:#}"));
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(log);
    drop(guard);
    code
}

/// The plugin identity (see the module documentation for the precedence).
fn identity(args: &NriArgs) -> anyhow::Result<Identity> {
    let from_file = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name()?.to_str().map(str::to_string))
        .and_then(|base| nri::parse_plugin_file_name(&base));
    let env = |key| std::env::var(key).ok().filter(|v: &String| !v.is_empty());
    let name = env(nri::ENV_PLUGIN_NAME)
        .or_else(|| args.plugin_name.clone())
        .or_else(|| from_file.as_ref().map(|(_, name)| name.clone()))
        .unwrap_or_else(|| DEFAULT_NAME.to_string());
    let index = env(nri::ENV_PLUGIN_IDX)
        .or_else(|| args.plugin_index.clone())
        .or_else(|| from_file.as_ref().map(|(index, _)| index.clone()))
        .unwrap_or_else(|| DEFAULT_INDEX.to_string());
    nri::validate_name(&name)?;
    nri::validate_index(&index)?;
    Ok(Identity { name, index })
}

/// Runs `nri` on a tokio runtime until a signal.
fn nri_main(args: NriArgs, log: Logger) -> anyhow::Result<()> {
    let identity = identity(&args)?;
    let transport = match std::env::var(nri::ENV_PLUGIN_SOCKET) {
        Ok(value) => Transport::Inherited(value.trim().parse().with_context(|| {
            format!(
                "{}={value:?} is not a file descriptor number",
                nri::ENV_PLUGIN_SOCKET
            )
        })?),
        Err(std::env::VarError::NotPresent) => Transport::Dial(args.nri_socket.clone()),
        Err(e) => bail!("{}: {e}", nri::ENV_PLUGIN_SOCKET),
    };
    if args.daemon_timeout_ms == 0 {
        bail!("--daemon-timeout-ms must be positive");
    }
    info!(log, "starting";
        "version" => env!("CARGO_PKG_VERSION"),
        "plugin" => format!("{}-{}", identity.index, identity.name),
        "transport" => ?transport,
        "daemon_socket" => %args.daemon_socket.display(),
        "daemon_timeout_ms" => args.daemon_timeout_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal(log.clone())?;
        let timeout = Duration::from_millis(args.daemon_timeout_ms);
        let network = DaemonNetwork::new(&args.daemon_socket, timeout);
        let plugin: Arc<Plugin<DaemonNetwork>> = Plugin::new(network, timeout, log.clone());
        run::run(
            plugin,
            transport,
            identity,
            Backoff::default(),
            shutdown,
            log.clone(),
        )
        .await?;
        info!(log, "stopped");
        Ok(())
    })
}

/// Resolves when SIGTERM or SIGINT arrives. The handlers are installed by this call, so
/// signals arriving before the future is first polled are not lost.
fn shutdown_signal(log: Logger) -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot install a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot install a SIGINT handler")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(log, "shutting down"; "signal" => name);
    })
}
