//! Persistent state: one record per pod plus the IPAM cursors, the owned namespace mounts
//! and the peers, stored in `<state_dir>`: a snapshot, `state.json`, and a write-ahead
//! journal next to it, `journal.jsonl` (see the `journal` module).
//!
//! A save appends one line to the journal (only what changed since the last save; not
//! synced, see the `journal` module for why), so its cost does not grow with the number of
//! pods; the snapshot is rewritten crash-safely (temporary file, fsync, rename, fsync of the
//! directory) only when the journal reaches its bound, when it cannot be appended to
//! safely, and once at daemon start ([`StateStore::recover`]) to fold the journal in. After
//! a crash of the daemon the state is the snapshot plus every acknowledged record, never a
//! torn mix.
//!
//! The record is the daemon's journal of intent: a pod's record (with its IP allocations) is
//! saved in phase [`Phase::Creating`](crate::record::Phase::Creating) before the kernel is touched, switched to
//! [`Phase::Ready`](crate::record::Phase::Ready) when everything is in place, and to [`Phase::Removing`](crate::record::Phase::Removing) before teardown
//! starts. Reconcile on start reads the phase to decide what a crash left behind.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ipam::IpamCursors;
use crate::names::PodName;
use crate::peers::PeerRecord;
use crate::record::PodRecord;

mod journal;

pub use journal::{DiscardedTail, JOURNAL_FILE_NAME};

/// File name of the state file (the snapshot) inside the state directory.
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
    /// A journal line other than the last is not a valid record, or the records do not follow
    /// the snapshot (a gap or a step back in their sequence numbers).
    #[error("state journal {path} is corrupt at line {line}: {reason}")]
    CorruptJournal {
        /// The journal.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// What is wrong with it.
        reason: String,
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

/// The whole persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// Format version ([`STATE_VERSION`]).
    pub version: u32,
    /// Sequence number of the last journal record this state includes (0: none; absent in
    /// files written before the journal). Kept by [`StateStore`]: loads set it, saves ignore
    /// the value they are given.
    #[serde(default)]
    pub seq: u64,
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
            seq: 0,
            pods: BTreeMap::new(),
            ipam: IpamCursors::default(),
            owned_netns: BTreeSet::new(),
            peers: Vec::new(),
        }
    }
}

/// What [`StateStore::recover`] found and did.
#[derive(Debug)]
pub struct Recovered {
    /// The state: the snapshot with the journal replayed on top.
    pub state: State,
    /// How many journal records were replayed on top of the snapshot.
    pub replayed: usize,
    /// The incomplete last journal record that was dropped, if any (to be logged).
    pub discarded: Option<DiscardedTail>,
    /// Why the journal could not be folded into a new snapshot, if it could not (to be
    /// logged; the state was loaded all the same and the next save writes a snapshot).
    pub compaction_error: Option<StateError>,
}

/// Journal bounds: beyond either, the next save writes a snapshot and empties the journal.
#[derive(Debug, Clone, Copy)]
struct Limits {
    records: usize,
    bytes: u64,
}

/// Default bound on journal records between snapshots.
const MAX_JOURNAL_RECORDS: usize = 4096;
/// Default bound on the journal size between snapshots.
const MAX_JOURNAL_BYTES: u64 = 8 << 20;

/// Where the journal stands, as this store last left it.
#[derive(Debug, Clone, Copy, Default)]
struct Position {
    /// Length of the journal, which ends right after its last record.
    len: u64,
    /// Records in it.
    records: usize,
}

/// What a store remembers between saves.
#[derive(Debug, Default)]
struct Writer {
    /// The state as last saved (or recovered), with its `seq`; `None` until this store has
    /// loaded it through [`StateStore::recover`] or saved a snapshot. Durable whenever
    /// `journal` is `Some`.
    base: Option<State>,
    /// The journal, when it may be appended to; `None` forces the next save (even of an
    /// unchanged state) to write a snapshot and a fresh journal.
    journal: Option<Position>,
    /// The last save failed: the state may differ from `base` in more than the pod a
    /// [`StateStore::save_pod`] names.
    unsaved: bool,
}

/// Loads and saves [`State`] in a directory: the snapshot `state.json` plus the journal
/// `journal.jsonl`. Clones share the same writer; one process at a time may save into a
/// directory, while others may [`load`](StateStore::load) it.
#[derive(Clone)]
pub struct StateStore {
    dir: PathBuf,
    path: PathBuf,
    journal_path: PathBuf,
    limits: Limits,
    writer: Arc<Mutex<Writer>>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .field("journal_path", &self.journal_path)
            .finish_non_exhaustive()
    }
}

impl StateStore {
    /// A store for `<dir>/state.json` and `<dir>/journal.jsonl`. Nothing is touched until
    /// [`StateStore::load`], [`StateStore::recover`] or [`StateStore::save`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            path: dir.join(STATE_FILE_NAME),
            journal_path: dir.join(JOURNAL_FILE_NAME),
            dir,
            limits: Limits {
                records: MAX_JOURNAL_RECORDS,
                bytes: MAX_JOURNAL_BYTES,
            },
            writer: Arc::default(),
        }
    }

    /// The same store with other journal bounds (tests).
    #[cfg(test)]
    fn with_journal_limits(mut self, records: usize, bytes: u64) -> Self {
        self.limits = Limits { records, bytes };
        self
    }

    /// Path of the state file (the snapshot).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of the journal.
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    fn io(&self, path: &Path, op: &'static str) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, op, source }
    }

    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `path`; `None` if it does not exist.
    fn read_file(&self, path: &Path) -> Result<Option<Vec<u8>>, StateError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io(path, "read")(e)),
        }
    }

    /// Reads the journal (first, so that a concurrent compaction can only make the snapshot
    /// newer than the journal read, never leave a gap) and the snapshot, and replays.
    fn read(&self) -> Result<(State, Option<Vec<u8>>, journal::Replayed), StateError> {
        let journal_bytes = self.read_file(&self.journal_path)?;
        let mut state = match self.read_file(&self.path)? {
            None => State::default(),
            Some(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
                    path: self.path.clone(),
                    source,
                })?
            }
        };
        if state.version != STATE_VERSION {
            return Err(StateError::Version {
                path: self.path.clone(),
                found: state.version,
            });
        }
        let replayed = journal::replay(
            &self.journal_path,
            journal_bytes.as_deref().unwrap_or_default(),
            &mut state,
        )?;
        Ok((state, journal_bytes, replayed))
    }

    /// Loads the state: the snapshot (a missing file or directory is the empty state) with
    /// the journal replayed on top; an incomplete last journal record is dropped. Only
    /// reads, so it may be used while a daemon saves into the directory. An unreadable,
    /// corrupt or too new file is an error naming the path.
    pub fn load(&self) -> Result<State, StateError> {
        self.read().map(|(state, _, _)| state)
    }

    /// The daemon's load at start: [`StateStore::load`], then, if the journal holds
    /// anything, a new snapshot of the result and a fresh, empty journal; saves through this
    /// store then append to it. A failed compaction is reported, not fatal.
    pub fn recover(&self) -> Result<Recovered, StateError> {
        let mut writer = self.writer();
        let (state, journal_bytes, replayed) = self.read()?;
        let mut compaction_error = None;
        writer.base = Some(state.clone());
        writer.journal = None;
        match journal_bytes {
            // No journal yet (a new directory, or a snapshot from before the journal): the
            // first save writes a snapshot and creates it.
            None => {}
            Some(bytes) if bytes.is_empty() => writer.journal = Some(Position::default()),
            Some(_) => {
                // Every record is at or below `state.seq`, and a dropped tail is replaced
                // along with the journal: numbering the snapshot `state.seq` is enough.
                compaction_error = match self.snapshot(&mut writer, &state, state.seq) {
                    Ok(reset_error) => reset_error,
                    Err(e) => Some(e),
                };
            }
        }
        Ok(Recovered {
            state,
            replayed: replayed.applied,
            discarded: replayed.discarded,
            compaction_error,
        })
    }

    /// Saves the state: one journal record with what changed since the last save, appended
    /// (nothing at all if nothing changed). A snapshot is written instead when this store
    /// has no journal to append to (first save, a failed append that could not be cut back,
    /// a journal changed behind its back) or the journal reached its bound.
    /// The `seq` of `state` is ignored. Creates the directory (mode 0700) if needed. Errors
    /// name the file that failed.
    pub fn save(&self, state: &State) -> Result<(), StateError> {
        self.save_with(state, None)
    }

    /// [`StateStore::save`] when nothing but pod `name` changed since the last save (its
    /// record, the IPAM cursors, its owned namespace path, the peers): the record is worked
    /// out from that pod alone, so a save costs the same at 4000 pods as at 10. After a
    /// failed save (whose change is still unsaved) it compares everything, as `save` does.
    /// Debug builds (every test) check it against that full comparison.
    pub fn save_pod(&self, state: &State, name: &PodName) -> Result<(), StateError> {
        self.save_with(state, Some(name))
    }

    fn save_with(&self, state: &State, only: Option<&PodName>) -> Result<(), StateError> {
        let mut writer = self.writer();
        let result = self.save_locked(&mut writer, state, only);
        writer.unsaved = result.is_err();
        result
    }

    fn save_locked(
        &self,
        writer: &mut Writer,
        state: &State,
        only: Option<&PodName>,
    ) -> Result<(), StateError> {
        let Some(base) = &writer.base else {
            // Nothing known of what is on disk: number the snapshot above all of it (the
            // journal's records must all end up at or below it).
            let snapshot = self.read_file(&self.path)?;
            let journal = self.read_file(&self.journal_path)?;
            let seq = journal::highest_seq(snapshot.as_deref(), journal.as_deref()) + 1;
            return self.snapshot(writer, state, seq).map(drop);
        };
        // Above any record a failed append may have left behind.
        let seq = base.seq + 1;
        let delta = match only {
            Some(name) if !writer.unsaved => {
                let delta = journal::Delta::for_pod(base, state, name);
                debug_assert_eq!(
                    String::from_utf8_lossy(&delta.line()),
                    String::from_utf8_lossy(&journal::Delta::between(base, state).line()),
                    "save_pod({name}): something besides that pod changed"
                );
                delta
            }
            _ => journal::Delta::between(base, state),
        };
        if base.version != state.version {
            // Records carry no version: a new one starts with a snapshot.
            return self.snapshot(writer, state, seq).map(drop);
        }
        let Some(position) = writer.journal else {
            // Also when nothing changed: the last snapshot may not have been synced.
            return self.snapshot(writer, state, seq).map(drop);
        };
        if delta.is_empty() {
            return Ok(());
        }
        if position.records >= self.limits.records || position.len >= self.limits.bytes {
            return self.snapshot(writer, state, seq).map(drop);
        }
        let line = delta.line();
        match journal::append(&self.journal_path, position.len, &line) {
            journal::Append::Done => {
                let base = writer.base.as_mut().expect("checked above");
                delta.apply_to(base);
                writer.journal = Some(Position {
                    len: position.len + line.len() as u64,
                    records: position.records + 1,
                });
                Ok(())
            }
            journal::Append::Stale => self.snapshot(writer, state, seq).map(drop),
            journal::Append::Failed { error, usable } => {
                if !usable {
                    writer.journal = None;
                }
                Err(error)
            }
        }
    }

    /// Writes `state` numbered `seq` as the snapshot (temporary file, fsync, rename, fsync of
    /// the directory), then puts a fresh, empty journal in place. Once the snapshot is in
    /// place the state is saved: a failure to replace the journal only leaves the journal
    /// unused until the next snapshot (its records are all at or below `seq`, so replay
    /// skips them) and is returned as `Ok(Some(error))`.
    fn snapshot(
        &self,
        writer: &mut Writer,
        state: &State,
        seq: u64,
    ) -> Result<Option<StateError>, StateError> {
        if !self.dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(&self.dir)
                .map_err(self.io(&self.dir, "create directory"))?;
        }
        let mut snapshot = state.clone();
        snapshot.seq = seq;
        let tmp = self.dir.join(format!("{STATE_FILE_NAME}.tmp"));
        let bytes = serde_json::to_vec_pretty(&snapshot).expect("state is always serializable");
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
        // From here the snapshot numbered `seq` may be what a load finds: no record may be
        // appended under that number, and the next save must be a snapshot again unless the
        // journal is reset below.
        writer.base = Some(snapshot);
        writer.journal = None;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(self.io(&self.dir, "fsync directory"))?;
        match journal::reset(&self.dir, &self.journal_path) {
            Ok(()) => {
                writer.journal = Some(Position::default());
                Ok(None)
            }
            Err(e) => Ok(Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::PauseProcess;
    use crate::names::IfName;
    use crate::record::{NetnsOwnership, Phase};

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
            netns_id: None,
            datapath: Default::default(),
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
        // The store numbers what it saves; the number given is ignored.
        state.seq = 1;
        assert_eq!(store.load().unwrap(), state);
        // Saving again goes to the journal and leaves no temporary file behind.
        state.pods.clear();
        store.save(&state).unwrap();
        state.seq = 2;
        assert_eq!(store.load().unwrap(), state);
        let mut names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                std::ffi::OsString::from(JOURNAL_FILE_NAME),
                std::ffi::OsString::from(STATE_FILE_NAME)
            ]
        );
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
