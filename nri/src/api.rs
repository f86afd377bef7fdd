//! NRI protocol constants and rules (PROTOCOL.md §2.2, §3, §4): service names, logical
//! connection ids, method names, the event mask, timeouts, the environment of a launched
//! plugin and plugin identity checks.

use std::time::Duration;

use thiserror::Error;

pub use crate::proto::nri::v1alpha1 as pb;

/// The default socket external plugins dial.
pub const DEFAULT_SOCKET: &str = "/var/run/nri/nri.sock";

/// Logical connection 1: the runtime calls, the plugin serves [`PLUGIN_SERVICE`].
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// Logical connection 2: the plugin calls, the runtime serves [`RUNTIME_SERVICE`].
pub const RUNTIME_SERVICE_CONN: u32 = 2;

/// The service plugins serve.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";
/// The service runtimes serve.
pub const RUNTIME_SERVICE: &str = "nri.pkg.api.v1alpha1.Runtime";

/// The NRI version this plugin was written against (sent in RegisterPlugin; informational).
pub const NRI_VERSION: &str = "v0.12.2";

/// Default registration timeout (connect to RegisterPlugin answered).
pub const REGISTRATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Default per-request timeout of the runtime (Configure, the whole Synchronize, each
/// event); a runtime tells its own in ConfigureRequest.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Environment variable naming the inherited socket's fd (pre-installed plugins).
pub const ENV_PLUGIN_SOCKET: &str = "NRI_PLUGIN_SOCKET";
/// Environment variable with the plugin name given by the runtime.
pub const ENV_PLUGIN_NAME: &str = "NRI_PLUGIN_NAME";
/// Environment variable with the plugin index given by the runtime.
pub const ENV_PLUGIN_IDX: &str = "NRI_PLUGIN_IDX";

/// Method names on the wire.
pub mod method {
    /// Runtime: the plugin's first call.
    pub const REGISTER_PLUGIN: &str = "RegisterPlugin";
    /// Runtime: unsolicited container updates.
    pub const UPDATE_CONTAINERS: &str = "UpdateContainers";
    /// Plugin: handshake configuration.
    pub const CONFIGURE: &str = "Configure";
    /// Plugin: handshake state sync.
    pub const SYNCHRONIZE: &str = "Synchronize";
    /// Plugin: never called by current runtimes.
    pub const SHUTDOWN: &str = "Shutdown";
    /// Plugin: events for NRI < v0.12 and the fallback.
    pub const STATE_CHANGE: &str = "StateChange";
    /// Plugin: dedicated pod start event (v0.12).
    pub const RUN_POD_SANDBOX: &str = "RunPodSandbox";
    /// Plugin: dedicated pod stop event (v0.12).
    pub const STOP_POD_SANDBOX: &str = "StopPodSandbox";
    /// Plugin: dedicated pod removal event (v0.12).
    pub const REMOVE_POD_SANDBOX: &str = "RemovePodSandbox";
}

/// The subscription bit of `event`: `1 << (event - 1)` (never `1 << event`, §4.2).
/// `UNKNOWN` and out-of-range values have no bit.
pub fn event_bit(event: pb::Event) -> i32 {
    let value = event as i32;
    if (1..=14).contains(&value) {
        1 << (value - 1)
    } else {
        0
    }
}

/// The mask for `events`.
pub fn event_mask(events: &[pb::Event]) -> i32 {
    events.iter().fold(0, |mask, e| mask | event_bit(*e))
}

/// An invalid plugin name or index.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// The name is empty or has characters outside `[A-Za-z0-9_.+-]`.
    #[error(
        "NRI plugin name {0:?} is invalid: it must be non-empty and use only A-Z a-z 0-9 _ . + -"
    )]
    Name(String),
    /// The index is not exactly two ASCII digits.
    #[error("NRI plugin index {0:?} is invalid: it must be exactly two digits 0-9")]
    Index(String),
}

/// Checks a plugin name (§3.2).
pub fn validate_name(name: &str) -> Result<(), IdentityError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
    {
        Ok(())
    } else {
        Err(IdentityError::Name(name.to_string()))
    }
}

/// Checks a plugin index (§3.2).
pub fn validate_index(index: &str) -> Result<(), IdentityError> {
    if index.len() == 2 && index.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(IdentityError::Index(index.to_string()))
    }
}

/// Splits an executable base name of the form `NN-name` (how runtimes name pre-installed
/// plugins, §3.1) into index and name.
pub fn parse_plugin_file_name(base: &str) -> Option<(String, String)> {
    let (index, name) = base.split_once('-')?;
    (validate_index(index).is_ok() && validate_name(name).is_ok())
        .then(|| (index.to_string(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_is_one_shifted_by_event_minus_one() {
        assert_eq!(event_bit(pb::Event::RunPodSandbox), 0x1);
        assert_eq!(event_bit(pb::Event::StopPodSandbox), 0x2);
        assert_eq!(event_bit(pb::Event::RemovePodSandbox), 0x4);
        assert_eq!(event_bit(pb::Event::CreateContainer), 0x8);
        assert_eq!(event_bit(pb::Event::ValidateContainerAdjustment), 0x2000);
        assert_eq!(event_bit(pb::Event::Unknown), 0);
        assert_eq!(event_bit(pb::Event::Last), 0);
        // The pod events (netns-holder's subscription, `cri_hook::plugin::SUBSCRIBED`).
        let pod_events = [
            pb::Event::RunPodSandbox,
            pb::Event::StopPodSandbox,
            pb::Event::RemovePodSandbox,
        ];
        assert_eq!(event_mask(&pod_events), 0x7);
    }

    #[test]
    fn identity_rules() {
        assert!(validate_name("netns-holder").is_ok());
        assert!(validate_name("a_b.c+d-e9").is_ok());
        for bad in ["", "a b", "a/b", "é"] {
            assert_eq!(validate_name(bad), Err(IdentityError::Name(bad.into())));
        }
        assert!(validate_index("00").is_ok());
        assert!(validate_index("99").is_ok());
        for bad in ["", "1", "100", "a1", "１２"] {
            assert_eq!(validate_index(bad), Err(IdentityError::Index(bad.into())));
        }
        assert_eq!(
            parse_plugin_file_name("10-netns-holder"),
            Some(("10".into(), "netns-holder".into()))
        );
        assert_eq!(parse_plugin_file_name("cri-hook"), None);
        assert_eq!(parse_plugin_file_name("1-x"), None);
    }
}
