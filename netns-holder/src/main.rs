//! `netns-holder`: the node daemon (`serve`) and its command-line client.
//!
//! This file only builds the root logger (stderr), parses the command line, runs the
//! daemon or a client command on a tokio runtime, prints results (stdout) and errors (one
//! `error: ...` line on stderr), and performs `exec` after the runtime is gone. See
//! [`netns_holder::cli`] for the commands and [`netns_holder::server`] for the daemon.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use slog::{Drain, Logger, info, o};

use ipnet::IpNet;
use netns_holder::cli::{self, Cli, ClientCommand, Command, Outcome, ServeArgs};
use netns_holder_core::config::Config;
use netns_holder_core::datapath::Datapath;
use netns_holder_core::ipam::Ipam;
use netns_holder_core::kernel::check_pod_cidrs as check_pod_cidrs_against;
use netns_holder_core::system::Netlink;

/// Builds the one root logger: human-readable lines on stderr. The daemon's are written by
/// a background thread (the returned guard flushes it when dropped), so no request waits on
/// stderr; a client command, which logs a line or two and exits, writes them itself rather
/// than start a thread per invocation. The level filter comes before the background
/// thread's channel: a record below the level is dropped where it is made, instead of
/// being copied into the channel and waking that thread (a create makes about fifteen debug
/// records, and each wake-up is an inter-processor interrupt here).
fn root_logger(verbose: bool, background: bool) -> (Logger, Option<slog_async::AsyncGuard>) {
    // Buffered, and flushed by the formatter at the end of each record: one write(2) per
    // record instead of one per field and separator (about 20 per record: 42 system calls
    // per create at the info level, on a CPU that a burst of creates needs).
    let decorator =
        slog_term::PlainDecorator::new(std::io::BufWriter::with_capacity(8192, std::io::stderr()));
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    let level = if verbose {
        slog::Level::Debug
    } else {
        slog::Level::Info
    };
    if !background {
        let drain = slog::LevelFilter::new(drain, level).fuse();
        return (
            Logger::root(std::sync::Mutex::new(drain).fuse(), o!()),
            None,
        );
    }
    let (drain, guard) = slog_async::Async::new(drain)
        .chan_size(4096)
        .build_with_guard();
    (
        Logger::root(slog::LevelFilter::new(drain, level).fuse(), o!()),
        Some(guard),
    )
}

/// The entry point (also of the test-only `netns-holder-fault`, which includes this file).
pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any other thread exists (capabilities are per thread): the logger thread and
    // the runtime's workers then start with only what the daemon needs.
    if matches!(cli.command, Command::Serve(_))
        && nix::unistd::geteuid().is_root()
        && let Err(e) = netns_holder::privileges::drop_privileges()
    {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let serving = matches!(cli.command, Command::Serve(_));
    let (log, guard) = root_logger(cli.verbose, serving);
    let socket = cli.socket.clone();
    let code = match cli.command {
        Command::Serve(args) => match serve(args, socket, log.clone()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                slog::error!(log, "daemon failed"; "error" => %e);
                drop(log);
                drop(guard);
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Client(command) => {
            let socket =
                socket.unwrap_or_else(|| PathBuf::from(netns_holder_core::config::DEFAULT_SOCKET));
            client(command, &socket, &log)
        }
    };
    drop(log);
    drop(guard);
    code
}

/// Runs a client command; `exec` replaces the process once the runtime has shut down.
fn client(command: ClientCommand, socket: &std::path::Path, log: &Logger) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cli::run(socket, command, log));
    // No runtime (and no runtime thread) may outlive this point: `exec` follows.
    drop(runtime);
    match outcome {
        Ok(Outcome::Print { stdout, code }) => {
            println!("{stdout}");
            ExitCode::from(code)
        }
        Ok(Outcome::Exec {
            pod,
            netns,
            command,
        }) => {
            let error = cli::exec_in_netns(&pod, &netns, &command);
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
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

/// Logs loudly that the test-only crash switch is armed (only `netns-holder-fault` arms it),
/// or that `NETNS_HOLDER_FAULT` is ignored by this binary.
fn report_fault_switch(log: &Logger) {
    use netns_holder_core::executor::fault;
    #[cfg(feature = "fault-injection")]
    if let Some(armed) = fault::armed() {
        slog::warn!(log, "FAULT INJECTION ARMED (test-only binary): the daemon will abort on purpose";
            "fault" => %armed);
        return;
    }
    if let Some(value) = std::env::var_os(fault::ENV) {
        slog::warn!(log, "ignoring NETNS_HOLDER_FAULT: this binary has no fault injection \
            (only the test-only netns-holder-fault has)"; "value" => ?value);
    }
}

/// Refuses to start (before anything is made or served) when a pod CIDR overlaps an address
/// or a route of the node namespace that is not ours; the error names the CIDR, the address
/// or route and its interface.
async fn check_pod_cidrs<S: Netlink>(config: &Config, system: &S) -> anyhow::Result<()> {
    let networks = system
        .node_networks()
        .await
        .context("cannot read the node's addresses and routes to check the pod CIDRs")?;
    let mut cidrs = vec![("pod_cidr_v4", IpNet::V4(config.pod_cidr_v4))];
    cidrs.extend(config.pod_cidr_v6.map(|v6| ("pod_cidr_v6", IpNet::V6(v6))));
    // The routed datapath's own node addresses (each pool's first host address, alone on
    // `lo`) are ours, as the bridge's gateway addresses are, and so is the /128 route the
    // kernel adds on `lo` for an IPv6 one.
    let own: Vec<IpNet> = match config.datapath {
        Datapath::Bridge => Vec::new(),
        Datapath::Routed => Ipam::new(config.pod_cidr_v4, config.pod_cidr_v6)
            .gateways()
            .iter()
            .map(|g| IpNet::from(g.addr()))
            .collect(),
    };
    let networks: Vec<_> = networks
        .into_iter()
        .filter(|n| !(n.interface.as_deref() == Some("lo") && own.contains(&n.network)))
        .collect();
    check_pod_cidrs_against(&cidrs, &config.bridge, &networks)?;
    Ok(())
}

/// `serve`: loads the configuration, then runs the daemon until a signal.
fn serve(args: ServeArgs, socket: Option<PathBuf>, log: Logger) -> anyhow::Result<()> {
    if socket.is_some() {
        anyhow::bail!("--socket does not apply to serve; set `socket` in the config file");
    }
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    // Without `datapath` in the config: the recorded pods' datapath, routed on a node with
    // none (read-only here; the manager loads the state again to serve it).
    if !config.datapath_set {
        let recorded = netns_holder_core::state::StateStore::new(&config.state_dir)
            .load()
            .with_context(|| {
                format!(
                    "cannot read the state in {} to choose the datapath (`datapath` is not set)",
                    config.state_dir.display()
                )
            })?
            .pods
            .values()
            .next()
            .map(|r| r.datapath);
        let datapath = config.resolve_datapath(recorded);
        info!(log, "datapath not set in the config";
            "datapath" => %datapath,
            "because" => if recorded.is_some() { "the pods on this node were created with it" } else { "no pods on this node: the default" });
    }
    info!(log, "starting";
        "version" => env!("CARGO_PKG_VERSION"),
        "config" => args.config.as_ref().map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string()),
        "socket" => %config.socket.display(),
        "state_dir" => %config.state_dir.display(),
        "netns_dir" => %config.netns_dir.display(),
        "bridge" => %config.bridge,
        "pod_cidr_v4" => %config.pod_cidr_v4,
        "pod_cidr_v6" => ?config.pod_cidr_v6.map(|n| n.to_string()));
    report_fault_switch(&log);
    let limit = match netns_holder::privileges::raise_open_file_limit() {
        Ok(limit) => {
            info!(log, "open file limit"; "nofile" => limit);
            limit
        }
        Err(e) => {
            slog::warn!(log, "cannot raise the open file limit"; "error" => %e);
            1024
        }
    };
    // Before the runtime's threads start: see `reserve_descriptor_table`.
    use netns_holder::privileges::{DESCRIPTOR_TABLE, reserve_descriptor_table};
    match reserve_descriptor_table(DESCRIPTOR_TABLE, limit) {
        Ok(size) => info!(log, "descriptor table reserved"; "entries" => size),
        Err(e) => slog::warn!(log, "cannot reserve the descriptor table"; "error" => %e),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = shutdown_signal(log.clone())?;
        #[cfg(feature = "fake")]
        if args.fake {
            slog::warn!(log, "serving a FAKE in-memory kernel (test builds only)");
            if config.cluster.is_some() {
                slog::warn!(log, "[cluster] is ignored with the fake kernel: no etcd, the first subnet of the cluster CIDR");
            }
            let system = netns_holder_core::fake::FakeSystem::new();
            return Ok(netns_holder::server::run_daemon(config, system, shutdown, log).await?);
        }
        // The real kernel. `block_on` runs this on the main thread, whose network namespace
        // LinuxSystem captures as the node's.
        let system = netns_holder::linux::LinuxSystem::new(&config, log.clone())?;
        let mut config = config;
        let mut shutdown = Box::pin(shutdown);
        // Cluster mode: the node's subnet first (the recorded one, or one taken in etcd).
        let cluster = match config.cluster.is_some() {
            true => tokio::select! {
                prepared = netns_holder::cluster::prepare(&mut config, &system, &log) => Some(prepared?),
                () = &mut shutdown => return Ok(()),
            },
            false => None,
        };
        check_pod_cidrs(&config, &system).await?;
        Ok(netns_holder::server::run_daemon_in_cluster(config, system, cluster, shutdown, log).await?)
    })
}

#[cfg(test)]
mod log_level_tests {
    #[test]
    fn slog_keeps_debug_and_trace_at_compile_time() {
        // slog caps levels at compile time: Debug in debug builds and Info in release
        // builds by default, so `-v` did nothing in release. The root Cargo.toml enables
        // `max_level_trace` (Trace here, where the default is Debug) and
        // `release_max_level_trace` (checked first by slog in release builds; the
        // resolved feature set is checked by cri-hook/tests/log_target.rs).
        assert_eq!(slog::__slog_static_max_level(), slog::FilterLevel::Trace);
    }
}
