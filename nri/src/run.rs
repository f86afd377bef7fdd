//! Running a plugin: getting the connection, registering, serving until the runtime goes
//! away, and starting over (PROTOCOL.md §3.1, §3.3, §3.10). The plugin is any ttRPC
//! [`Service`] for `nri.pkg.api.v1alpha1.Plugin`, made afresh for each connection by the
//! caller's factory (so per-connection state starts clean); [`crate::stub`] builds one from
//! a trait with a method per event.
//!
//! * [`Transport::Dial`] (an external plugin): connect to the runtime's socket; after a
//!   failure to connect, a failed registration or the loss of the connection (EOF when the
//!   runtime restarts), wait with exponential backoff (100 ms doubling to 5 s, reset after
//!   each successful registration) and do it all again: RegisterPlugin, then the runtime's
//!   Configure and Synchronize, whose reconciliation catches up with everything missed.
//! * [`Transport::Inherited`] (a plugin the runtime launched with `NRI_PLUGIN_SOCKET=3`):
//!   the inherited socket is the only one there will ever be, so when it closes the plugin
//!   ends (with success: the runtime is gone or dropped it, and a launched plugin is never
//!   restarted in place); a refused registration is an error.
//!
//! Each connection serves the Plugin service on logical connection 1 *before* sending
//! RegisterPlugin on connection 2, because the runtime's Configure may overtake the
//! RegisterPlugin answer (§3.3). A shutdown signal closes the connection and returns.

use std::future::Future;
use std::os::fd::{FromRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use slog::{Logger, error, info, warn};
use thiserror::Error;
use tokio::net::UnixStream;

use crate::api::{
    self, ENV_PLUGIN_IDX, ENV_PLUGIN_NAME, ENV_PLUGIN_SOCKET, IdentityError, PLUGIN_SERVICE_CONN,
    RUNTIME_SERVICE, RUNTIME_SERVICE_CONN, method, pb,
};
use crate::conn::ConnectionBuilder;
use crate::ttrpc::{CallError, Client, Service};

/// How the plugin reaches the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// Dial the runtime's NRI socket.
    Dial(PathBuf),
    /// Use an inherited, already connected socket (fd from `NRI_PLUGIN_SOCKET`).
    Inherited(RawFd),
}

impl Transport {
    /// The transport a plugin started by the runtime or by hand should use: the fd named by
    /// `NRI_PLUGIN_SOCKET` (surrounding blanks ignored) when it is set, else dialing
    /// `socket` (usually [`api::DEFAULT_SOCKET`]).
    pub fn from_env(socket: impl Into<PathBuf>) -> Result<Self, EnvError> {
        match std::env::var(ENV_PLUGIN_SOCKET) {
            Ok(value) => value
                .trim()
                .parse()
                .map(Transport::Inherited)
                .map_err(|source| EnvError::NotAnFd { value, source }),
            Err(std::env::VarError::NotPresent) => Ok(Transport::Dial(socket.into())),
            Err(e) => Err(EnvError::NotUnicode(e)),
        }
    }
}

/// An unusable `NRI_PLUGIN_SOCKET`.
#[derive(Debug, Error)]
pub enum EnvError {
    /// The value is not a number.
    #[error("{ENV_PLUGIN_SOCKET}={value:?} is not a file descriptor number")]
    NotAnFd {
        /// The value.
        value: String,
        /// Why it does not parse.
        source: std::num::ParseIntError,
    },
    /// The value is not valid unicode.
    #[error("{ENV_PLUGIN_SOCKET}: {0}")]
    NotUnicode(std::env::VarError),
}

/// The plugin's identity, sent in RegisterPlugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name.
    pub name: String,
    /// The two-digit index.
    pub index: String,
}

impl Identity {
    /// The identity with the Go stub's precedence: `NRI_PLUGIN_NAME`/`NRI_PLUGIN_IDX` (when
    /// set and not empty), then `name`/`index` (e.g. from the command line), then an
    /// executable named `NN-name` (how runtimes name pre-installed plugins), then
    /// `default_name`/`default_index`; checked with [`api::validate_name`] and
    /// [`api::validate_index`].
    pub fn resolve(
        name: Option<String>,
        index: Option<String>,
        default_name: &str,
        default_index: &str,
    ) -> Result<Self, IdentityError> {
        let from_file = std::env::args_os()
            .next()
            .map(PathBuf::from)
            .and_then(|p| p.file_name()?.to_str().map(str::to_string))
            .and_then(|base| api::parse_plugin_file_name(&base));
        let env = |key| std::env::var(key).ok().filter(|v: &String| !v.is_empty());
        let name = env(ENV_PLUGIN_NAME)
            .or(name)
            .or_else(|| from_file.as_ref().map(|(_, name)| name.clone()))
            .unwrap_or_else(|| default_name.to_string());
        let index = env(ENV_PLUGIN_IDX)
            .or(index)
            .or_else(|| from_file.as_ref().map(|(index, _)| index.clone()))
            .unwrap_or_else(|| default_index.to_string());
        api::validate_name(&name)?;
        api::validate_index(&index)?;
        Ok(Self { name, index })
    }
}

/// Backoff between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        }
    }
}

/// Why the plugin stopped with an error.
#[derive(Debug, Error)]
pub enum RunError {
    /// The inherited fd is not an open socket.
    #[error("inherited NRI socket (fd {fd}) is not usable: {reason}")]
    Inherited {
        /// The fd.
        fd: RawFd,
        /// Why.
        reason: String,
    },
    /// The runtime refused the registration or did not answer it (inherited socket).
    #[error("NRI plugin {index}-{name} could not register: {source}")]
    Register {
        /// The plugin name.
        name: String,
        /// The plugin index.
        index: String,
        /// The call's failure.
        source: Box<CallError>,
    },
}

/// Turns an inherited fd into a tokio stream, after checking it is an open socket.
///
/// Must be called at most once per fd: the stream owns it from then on.
pub fn inherited_stream(fd: RawFd) -> Result<UnixStream, RunError> {
    let bad = |reason: String| RunError::Inherited { fd, reason };
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat only writes into `stat`, a valid out pointer; a closed or invalid fd
    // makes it fail with EBADF, which is reported.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        return Err(bad(std::io::Error::last_os_error().to_string()));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("it is not a socket".into()));
    }
    // SAFETY: the fd is open and a socket (checked above); it was inherited for this plugin
    // alone and, per this function's contract, is taken over only once, so the stream is its
    // sole owner and closes it.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(fd) };
    stream
        .set_nonblocking(true)
        .map_err(|e| bad(e.to_string()))?;
    UnixStream::from_std(stream).map_err(|e| bad(e.to_string()))
}

/// Sends RegisterPlugin and waits for the answer (registration timeout, 5 s).
pub async fn register(client: &Client, identity: &Identity) -> Result<(), CallError> {
    let request = pb::RegisterPluginRequest {
        plugin_name: identity.name.clone(),
        plugin_idx: identity.index.clone(),
        nri_version: api::NRI_VERSION.to_string(),
    };
    client
        .call::<_, pb::Empty>(
            RUNTIME_SERVICE,
            method::REGISTER_PLUGIN,
            &request,
            api::REGISTRATION_TIMEOUT,
        )
        .await
        .map(|_| ())
}

/// Runs the plugin until `shutdown` resolves (or, with an inherited socket, until the
/// runtime closes it). See the module documentation. `service` makes the Plugin service of
/// each new connection.
pub async fn run<S: Service>(
    mut service: impl FnMut() -> Arc<S>,
    transport: Transport,
    identity: Identity,
    backoff: Backoff,
    shutdown: impl Future<Output = ()>,
    log: Logger,
) -> Result<(), RunError> {
    tokio::pin!(shutdown);
    let mut inherited = match &transport {
        Transport::Inherited(fd) => Some(inherited_stream(*fd)?),
        Transport::Dial(_) => None,
    };
    let mut delay = backoff.initial;
    let mut failures = 0u32;
    loop {
        let stream = match &transport {
            Transport::Inherited(_) => match inherited.take() {
                Some(stream) => stream,
                None => return Ok(()),
            },
            Transport::Dial(path) => {
                let connected = tokio::select! {
                    _ = &mut shutdown => return Ok(()),
                    connected = UnixStream::connect(path) => connected,
                };
                match connected {
                    Ok(stream) => stream,
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_power_of_two() {
                            warn!(log, "cannot connect to the runtime's NRI socket; retrying";
                                "socket" => %path.display(), "error" => %e, "attempts" => failures);
                        }
                        if sleep_or_shutdown(&mut delay, backoff, &mut shutdown).await {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
        };
        let mut builder = ConnectionBuilder::new(log.clone());
        let client = builder.client(RUNTIME_SERVICE_CONN);
        let connection = builder.serve(PLUGIN_SERVICE_CONN, service()).start(stream);
        let registered = tokio::select! {
            _ = &mut shutdown => {
                connection.close("shutting down");
                return Ok(());
            }
            registered = register(&client, &identity) => registered,
        };
        match registered {
            Ok(()) => {
                info!(log, "registered with the runtime";
                    "plugin" => format!("{}-{}", identity.index, identity.name));
                failures = 0;
                delay = backoff.initial;
            }
            Err(source) => {
                error!(log, "registration failed; closing the connection"; "error" => %source);
                connection.close("registration failed");
                drop(connection);
                if matches!(transport, Transport::Inherited(_)) {
                    return Err(RunError::Register {
                        name: identity.name.clone(),
                        index: identity.index.clone(),
                        source: Box::new(source),
                    });
                }
                if sleep_or_shutdown(&mut delay, backoff, &mut shutdown).await {
                    return Ok(());
                }
                continue;
            }
        }
        let reason = tokio::select! {
            _ = &mut shutdown => {
                connection.close("shutting down");
                return Ok(());
            }
            reason = connection.closed() => reason,
        };
        drop(connection);
        if matches!(transport, Transport::Inherited(_)) {
            info!(log, "the runtime closed the inherited NRI connection; exiting"; "reason" => reason);
            return Ok(());
        }
        warn!(log, "lost the connection to the runtime; reconnecting"; "reason" => reason);
        if sleep_or_shutdown(&mut delay, backoff, &mut shutdown).await {
            return Ok(());
        }
    }
}

/// Sleeps `delay` (then doubles it up to the maximum); true if shutdown came first.
async fn sleep_or_shutdown(
    delay: &mut Duration,
    backoff: Backoff,
    shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    let wait = *delay;
    *delay = (*delay * 2).min(backoff.max);
    tokio::select! {
        _ = shutdown.as_mut() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}
