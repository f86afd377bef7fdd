//! `cri-hook`: the runtime adapters of netns-holder, as one binary.
//!
//! ```text
//! cri-hook [-v] nri [--nri-socket PATH] [--daemon-socket PATH] [--log-file PATH|-]
//!                   [--plugin-name NAME] [--plugin-index NN] [--daemon-timeout-ms MS]
//! cri-hook oci createRuntime|poststop|auto [--daemon-socket PATH] [--timeout-ms MS]
//! CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION ... cri-hook   (CNI plugin; see cri_hook::cni)
//! ```
//!
//! `nri` runs the NRI plugin until SIGTERM or SIGINT (see [`nri::run`]). Started by the
//! runtime as a pre-installed plugin (`/opt/nri/plugins/NN-name`, exec'd without arguments
//! and with only `NRI_PLUGIN_SOCKET`, `NRI_PLUGIN_NAME` and `NRI_PLUGIN_IDX` in its
//! environment), the binary runs `nri` with the defaults when no subcommand is given and
//! `NRI_PLUGIN_SOCKET` is set, so the plugin file can be a symlink to `cri-hook`.
//!
//! Identity precedence (as the Go stub): `NRI_PLUGIN_NAME`/`NRI_PLUGIN_IDX`, then
//! `--plugin-name`/`--plugin-index`, then an executable named `NN-name`, then
//! `netns-holder` and `10`.
//!
//! This file only builds the one root logger, parses the command line and runs the
//! library on a tokio runtime. Where `nri` logs (see [`LOG_HELP`]): `--log-file`, else
//! `NETNS_HOLDER_NRI_LOG`, else stderr when it is a terminal or a file, pipe or socket
//! someone set up; a plugin whose stderr is the null device (as containerd starts
//! pre-installed plugins) or the journal's stream logs to journald natively
//! ([`journal`]) when `/run/systemd/journal/socket` exists, else to
//! `/var/log/netns-holder-nri.log`.
//! Exit status: 0 after a shutdown signal (or when the runtime closes an inherited
//! socket), 1 on errors, 2 on usage errors.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use slog::{Drain, Logger, info, o};

mod journal;

use cri_hook::network::DaemonNetwork;
use cri_hook::plugin::Plugin;
use nri::api;
use nri::run::{self, Backoff, Identity, Transport};

/// Default plugin name.
const DEFAULT_NAME: &str = "netns-holder";
/// Default plugin index.
const DEFAULT_INDEX: &str = "10";
/// Environment variable naming the log file of `nri` (`-`: stderr).
const ENV_LOG: &str = "NETNS_HOLDER_NRI_LOG";
/// The log file of a plugin whose stderr goes nowhere, when journald is not running.
const DEFAULT_LOG_FILE: &str = "/var/log/netns-holder-nri.log";
/// `SYSLOG_IDENTIFIER` of the journal entries.
const JOURNAL_IDENTIFIER: &str = "netns-holder-nri";

/// Where `nri` logs: the help text of the subcommand (keep in step with [`log_target`]).
const LOG_HELP: &str = "\
Logging (first match wins):
  1. --log-file PATH: append to PATH (created 0640); `-` means stderr.
  2. NETNS_HOLDER_NRI_LOG=PATH: the same.
  3. stderr is a terminal, or a file, pipe or socket the caller set up (e.g. 2>>FILE):
     stderr.
  4. stderr is /dev/null or closed (how containerd starts /opt/nri/plugins/NN-name), or
     is systemd's journal stream ($JOURNAL_STREAM): journald's native protocol
     (SYSLOG_IDENTIFIER=netns-holder-nri, slog keys as upper-case fields) when
     /run/systemd/journal/socket exists; otherwise append to
     /var/log/netns-holder-nri.log (created 0640), or stderr if that cannot be opened.
-v adds debug messages, wherever the logs go.";

/// `cri-hook`: runtime adapters that call the netns-holder daemon.
#[derive(Debug, Parser)]
#[command(name = "cri-hook", version, about, propagate_version = true)]
struct Cli {
    /// Log debug messages too.
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
#[command(after_help = LOG_HELP)]
struct NriArgs {
    /// The runtime's NRI socket (ignored when NRI_PLUGIN_SOCKET names an inherited fd).
    #[arg(long, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    nri_socket: PathBuf,
    /// The netns-holder daemon's API socket.
    #[arg(long, value_name = "PATH", default_value = netns_holder_core::config::DEFAULT_SOCKET)]
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
    /// Append the logs to this file (`-`: stderr) [default: see "Logging" below].
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// journald's native socket (for tests).
    #[arg(long, value_name = "PATH", hide = true, default_value = journal::DEFAULT_SOCKET)]
    journal_socket: PathBuf,
}

/// Where the logs of `nri` go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum LogTarget {
    /// Standard error, as human-readable lines.
    Stderr,
    /// A file, appended, as human-readable lines.
    File(PathBuf),
    /// journald's native protocol on this socket.
    Journal(PathBuf),
}

/// What standard error is, as far as choosing a log target goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StderrKind {
    /// A terminal.
    Terminal,
    /// The null device, or not open: nobody reads it.
    Nowhere,
    /// systemd's journal stream ($JOURNAL_STREAM names its device and inode).
    JournalStream,
    /// A file, pipe or socket someone set up.
    Other,
}

/// Looks at fd 2.
fn stderr_kind() -> StderrKind {
    use std::io::IsTerminal as _;
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
    let stderr = std::io::stderr();
    if stderr.is_terminal() {
        return StderrKind::Terminal;
    }
    // Duplicating fails when fd 2 is closed.
    let Ok(meta) = stderr
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
    else {
        return StderrKind::Nowhere;
    };
    let null_rdev = std::fs::metadata("/dev/null").map_or(libc::makedev(1, 3), |m| m.rdev());
    if meta.file_type().is_char_device() && meta.rdev() == null_rdev {
        return StderrKind::Nowhere;
    }
    let journal_stream = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (dev, ino) = v.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    });
    if journal_stream == Some((meta.dev(), meta.ino())) {
        return StderrKind::JournalStream;
    }
    StderrKind::Other
}

/// The log target (the precedence is [`LOG_HELP`]'s).
fn log_target(
    flag: Option<&std::path::Path>,
    env: Option<std::ffi::OsString>,
    stderr: StderrKind,
    journal_socket: &std::path::Path,
) -> LogTarget {
    let named = flag
        .map(PathBuf::from)
        .or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from));
    if let Some(path) = named {
        return if path.as_os_str() == "-" {
            LogTarget::Stderr
        } else {
            LogTarget::File(path)
        };
    }
    match stderr {
        StderrKind::Terminal | StderrKind::Other => LogTarget::Stderr,
        StderrKind::Nowhere | StderrKind::JournalStream => {
            if journal_socket.exists() {
                LogTarget::Journal(journal_socket.to_path_buf())
            } else if stderr == StderrKind::JournalStream {
                LogTarget::Stderr
            } else {
                LogTarget::File(PathBuf::from(DEFAULT_LOG_FILE))
            }
        }
    }
}

/// Opens a log file for appending, creating it with mode 0640.
fn open_log_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// Builds the one root logger on `target`, written by a background thread (the returned
/// guard flushes it when dropped). An explicitly named file that cannot be opened is an
/// error; the default file falls back to stderr.
fn root_logger(
    verbose: bool,
    target: &LogTarget,
    explicit: bool,
) -> anyhow::Result<(Logger, slog_async::AsyncGuard)> {
    let level = if verbose {
        slog::Level::Debug
    } else {
        slog::Level::Info
    };
    let drain: Box<dyn Drain<Ok = (), Err = slog::Never> + Send> = match target {
        LogTarget::Journal(socket) => Box::new(
            journal::JournalDrain::new(socket, JOURNAL_IDENTIFIER)
                .with_context(|| format!("cannot open a socket for {}", socket.display()))?,
        ),
        LogTarget::File(path) => match open_log_file(path) {
            Ok(file) => {
                // One write per record (here and on stderr): FullFormat flushes after each.
                let decorator = slog_term::PlainDecorator::new(std::io::BufWriter::new(file));
                Box::new(slog_term::FullFormat::new(decorator).build().fuse())
            }
            Err(e) if explicit => {
                return Err(e).with_context(|| format!("cannot open log file {}", path.display()));
            }
            Err(_) => {
                let decorator =
                    slog_term::PlainDecorator::new(std::io::BufWriter::new(std::io::stderr()));
                Box::new(slog_term::FullFormat::new(decorator).build().fuse())
            }
        },
        LogTarget::Stderr => {
            let decorator =
                slog_term::PlainDecorator::new(std::io::BufWriter::new(std::io::stderr()));
            Box::new(slog_term::FullFormat::new(decorator).build().fuse())
        }
    };
    let drain = slog::LevelFilter::new(drain, level).fuse();
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(4096)
        .build_with_guard();
    Ok((Logger::root(drain.fuse(), o!("adapter" => "nri")), guard))
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
        None if std::env::var_os(api::ENV_PLUGIN_SOCKET).is_some() => {
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
    let env_log = std::env::var_os(ENV_LOG);
    let explicit = args.log_file.is_some() || env_log.as_ref().is_some_and(|v| !v.is_empty());
    let target = log_target(
        args.log_file.as_deref(),
        env_log,
        stderr_kind(),
        &args.journal_socket,
    );
    let (log, guard) = match root_logger(cli.verbose, &target, explicit) {
        Ok(logger) => logger,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    slog::debug!(log, "logging"; "target" => ?target);
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
    Ok(Identity::resolve(
        args.plugin_name.clone(),
        args.plugin_index.clone(),
        DEFAULT_NAME,
        DEFAULT_INDEX,
    )?)
}

/// Runs `nri` on a tokio runtime until a signal.
fn nri_main(args: NriArgs, log: Logger) -> anyhow::Result<()> {
    let identity = identity(&args)?;
    let transport = Transport::from_env(args.nri_socket.clone())?;
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
            || plugin.service(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn slog_keeps_debug_and_trace_at_compile_time() {
        // slog's default cap is Debug in debug builds and Info in release builds, where
        // `-v` then did nothing. With `max_level_trace` this returns Trace in this (debug)
        // build, where the default would be Debug; in a release build slog first checks
        // the `release_max_level_*` features, and `release_max_level_trace` makes that
        // Trace too (see the `slog_features_*` test of tests/log_target.rs).
        assert_eq!(slog::__slog_static_max_level(), slog::FilterLevel::Trace);
    }

    #[test]
    fn log_target_precedence() {
        let tmp = std::env::temp_dir();
        let present = tmp.as_path(); // exists: stands for a running journald
        let absent = Path::new("/nonexistent/journal/socket");
        let flag = Path::new("/tmp/flag.log");
        let env = || Some(std::ffi::OsString::from("/tmp/env.log"));
        let file = |p: &str| LogTarget::File(PathBuf::from(p));
        let journal = LogTarget::Journal(tmp.clone());
        use StderrKind::*;
        // 1. the flag wins over everything.
        for kind in [Terminal, Nowhere, JournalStream, Other] {
            assert_eq!(
                log_target(Some(flag), env(), kind, present),
                file("/tmp/flag.log")
            );
        }
        assert_eq!(
            log_target(Some(Path::new("-")), None, Nowhere, present),
            LogTarget::Stderr
        );
        // 2. then the environment (empty means unset).
        assert_eq!(
            log_target(None, env(), Nowhere, present),
            file("/tmp/env.log")
        );
        assert_eq!(
            log_target(None, Some("-".into()), Nowhere, present),
            LogTarget::Stderr
        );
        assert_eq!(log_target(None, Some("".into()), Nowhere, present), journal);
        // 3. a terminal or a redirection someone made.
        assert_eq!(log_target(None, None, Terminal, present), LogTarget::Stderr);
        assert_eq!(log_target(None, None, Other, present), LogTarget::Stderr);
        // 4. nobody reads stderr: journald, else the default file.
        assert_eq!(log_target(None, None, Nowhere, present), journal);
        assert_eq!(log_target(None, None, JournalStream, present), journal);
        assert_eq!(
            log_target(None, None, Nowhere, absent),
            file(DEFAULT_LOG_FILE)
        );
        assert_eq!(
            log_target(None, None, JournalStream, absent),
            LogTarget::Stderr
        );
    }

    #[test]
    fn the_help_documents_the_precedence() {
        let help = <Cli as clap::CommandFactory>::command()
            .find_subcommand_mut("nri")
            .unwrap()
            .render_long_help()
            .to_string();
        for needle in [
            "--log-file",
            "NETNS_HOLDER_NRI_LOG",
            "/run/systemd/journal/socket",
            DEFAULT_LOG_FILE,
        ] {
            assert!(help.contains(needle), "{needle} missing from:\n{help}");
        }
        assert!(
            !help.contains("--journal-socket"),
            "test-only flag is hidden"
        );
    }
}
