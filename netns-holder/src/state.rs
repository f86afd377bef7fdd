//! Persistent state: one record per pod plus the IPAM cursors, stored as JSON in
//! `<state_dir>/state.json` and saved crash-safely (temporary file, fsync, rename, fsync of
//! the directory), so after a crash the file is either the old or the new version, never a
//! torn mix.
//!
//! The record is the daemon's journal: a pod's record (with its IP allocations) is saved in
//! phase [`Phase::Creating`] before the kernel is touched, switched to [`Phase::Ready`]
//! when everything is in place, and to [`Phase::Removing`] before teardown starts. Reconcile
//! on start reads the phase to decide what a crash left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ipam::IpamCursors;
use crate::names::{IfName, PodId, PodName};
use crate::peers::PeerRecord;
use crate::ports::PortMapping;
use crate::system::PauseProcess;

/// File name of the state file inside the state directory.
pub const STATE_FILE_NAME: &str = "state.json";
/// Version of the on-disk format written by this code.
pub const STATE_VERSION: u32 = 1;

/// A state persistence failure, naming the file.
#[derive(Debug, Error)]
pub enum StateError {
    /// Reading, writing, syncing or renaming failed.
    #[error("state file {path}: {op} failed: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// What was being done (`read`, `write`, `fsync`, `rename`, ...).
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a valid state document.
    #[error("state file {path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The JSON error (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by a newer, incompatible version.
    #[error(
        "state file {path} has version {found}; this daemon understands version {STATE_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
}

/// Where a pod is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Record saved, kernel objects being created; the caller has not been answered.
    Creating,
    /// Everything is in place and the caller has (or will have) been told.
    Ready,
    /// Teardown has started (or failed part-way and must be finished).
    Removing,
}

/// How the pod's network namespace came to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NetnsOwnership {
    /// We created the bind mount (`create`); we delete it on remove.
    Owned {
        /// Whether a pause process holds the namespace.
        pause: bool,
    },
    /// Someone else created it (`attach`); we never delete it.
    Attached,
}

/// Everything recorded about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodRecord {
    /// The pod's name.
    pub name: PodName,
    /// Its id (derived from the name; stored for readability and checked on load).
    pub id: PodId,
    /// Path of the network namespace (bind mount or foreign path).
    pub netns: PathBuf,
    /// Whether we created the namespace, and whether with a pause process.
    pub ownership: NetnsOwnership,
    /// The running pause process, once started.
    #[serde(default)]
    pub pause: Option<PauseProcess>,
    /// The pod's addresses with the pod CIDR prefix length (IPv4 first).
    pub ips: Vec<IpNet>,
    /// Default gateways (the bridge addresses), same order as `ips`.
    pub gateways: Vec<IpAddr>,
    /// The interface name inside the pod (`eth0`).
    pub interface: IfName,
    /// The host-side veth name.
    pub host_veth: IfName,
    /// Free-form caller annotations, part of the create parameters.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// Life-cycle phase.
    pub phase: Phase,
    /// MTU of the pod interface (and its host end).
    pub mtu: u32,
    /// Published host ports, part of the create parameters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMapping>,
    /// The host ports were withdrawn (`ReleasePodPorts`, a runtime's StopPodSandbox): they
    /// are no longer published nor held against other pods, and nothing publishes them
    /// again. Saved before the elements are deleted, so a crash in between leaves elements
    /// that no record wants, which check reports and repair removes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ports_released: bool,
}

impl PodRecord {
    /// Whether we created the namespace (and so must delete it).
    pub fn netns_owned(&self) -> bool {
        matches!(self.ownership, NetnsOwnership::Owned { .. })
    }

    /// Whether the pod is supposed to have a pause process.
    pub fn wants_pause(&self) -> bool {
        matches!(self.ownership, NetnsOwnership::Owned { pause: true })
    }
}

/// The whole persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Pod records by name.
    #[serde(default)]
    pub pods: BTreeMap<PodName, PodRecord>,
    /// IPAM round-robin cursors.
    #[serde(default)]
    pub ipam: IpamCursors,
    /// Network namespace bind mounts created by us that may still exist. A path is added in
    /// the same save as the `Creating` record (before the mount is made) and dropped only
    /// after the mount is gone, so reconcile can remove our own mounts from a shared
    /// `netns_dir` (such as `/run/netns`) without ever touching foreign ones.
    #[serde(default)]
    pub owned_netns: BTreeSet<PathBuf>,
    /// Peer nodes whose pod CIDRs are routed via them, from the configuration and the API
    /// (by pod CIDR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerRecord>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            pods: BTreeMap::new(),
            ipam: IpamCursors::default(),
            owned_netns: BTreeSet::new(),
            peers: Vec::new(),
        }
    }
}

/// Loads and saves [`State`] in a directory.
#[derive(Debug, Clone)]
pub struct StateStore {
    dir: PathBuf,
    path: PathBuf,
}

impl StateStore {
    /// A store for `<dir>/state.json`. Nothing is touched until [`StateStore::load`] or
    /// [`StateStore::save`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            path: dir.join(STATE_FILE_NAME),
            dir,
        }
    }

    /// Path of the state file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, op, source }
    }

    /// Loads the state. A missing file (or directory) is the empty state; an unreadable,
    /// corrupt or too new file is an error naming the path.
    pub fn load(&self) -> Result<State, StateError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(self.io(&self.path, "read")(e)),
        };
        let state: State =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                path: self.path.clone(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: state.version,
            });
        }
        Ok(state)
    }

    /// Saves the state crash-safely: write `state.json.tmp`, fsync it, rename it over
    /// `state.json`, fsync the directory. Creates the directory (mode 0700) if needed.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        if !self.dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(&self.dir)
                .map_err(self.io(&self.dir, "create directory"))?;
        }
        let tmp = self.dir.join(format!("{STATE_FILE_NAME}.tmp"));
        let bytes = serde_json::to_vec_pretty(state).expect("state is always serializable");
        {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .map_err(self.io(&tmp, "open"))?;
            file.write_all(&bytes).map_err(self.io(&tmp, "write"))?;
            file.write_all(b"\n").map_err(self.io(&tmp, "write"))?;
            file.sync_all().map_err(self.io(&tmp, "fsync"))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(self.io(&self.path, "rename"))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(&self.dir, "fsync directory"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> PodRecord {
        let name = PodName::new(name).unwrap();
        let id = name.id();
        PodRecord {
            netns: PathBuf::from("/run/netns").join(name.as_str()),
            host_veth: id.host_veth_name(),
            id,
            name,
            ownership: NetnsOwnership::Owned { pause: true },
            pause: Some(PauseProcess {
                pid: 4242,
                start_time: 987654,
            }),
            ips: vec![
                "10.88.0.2/16".parse().unwrap(),
                "fd00::2/64".parse().unwrap(),
            ],
            gateways: vec!["10.88.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            interface: IfName::pod_interface(),
            annotations: BTreeMap::from([("k8s.pod".to_string(), "default/web".to_string())]),
            phase: Phase::Ready,
            mtu: 1500,
            ports: vec![crate::ports::PortMapping::new(
                8080,
                80,
                crate::ports::Protocol::Udp,
            )],
            ports_released: false,
        }
    }

    #[test]
    fn missing_file_is_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("does/not/exist"));
        assert_eq!(store.load().unwrap(), State::default());
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path().join("state"));
        let mut state = State::default();
        for n in ["web", "db"] {
            let r = record(n);
            state.pods.insert(r.name.clone(), r);
        }
        state
            .pods
            .get_mut(&PodName::new("db").unwrap())
            .unwrap()
            .ownership = NetnsOwnership::Attached;
        state.ipam.v4 = Some("10.88.0.2".parse().unwrap());
        state.owned_netns.insert(PathBuf::from("/run/netns/web"));
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        // Saving again replaces atomically and leaves no temporary file behind.
        state.pods.clear();
        store.save(&state).unwrap();
        assert_eq!(store.load().unwrap(), state);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn corrupt_file_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{\"version\": 1, \"pods\": ").unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }));
        assert!(
            err.to_string()
                .contains(&store.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn invalid_record_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        let r = record("web");
        state.pods.insert(r.name.clone(), r);
        let text = serde_json::to_string(&state)
            .unwrap()
            .replace("\"name\":\"web\"", "\"name\":\"a/b\"");
        std::fs::write(store.path(), text).unwrap();
        let err = store.load().unwrap_err();
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn newer_version_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        std::fs::write(store.path(), b"{\"version\": 99}").unwrap();
        assert!(matches!(
            store.load(),
            Err(StateError::Version { found: 99, .. })
        ));
    }

    #[test]
    fn save_into_unwritable_location_names_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let store = StateStore::new(blocker.join("sub"));
        let err = store.save(&State::default()).unwrap_err();
        assert!(
            err.to_string().contains(&blocker.display().to_string()),
            "{err}"
        );
    }
}
