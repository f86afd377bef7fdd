//! The state journal: `<state_dir>/journal.jsonl`, an append-only file of JSON lines next to
//! the `state.json` snapshot, so that a save costs one small append and one `fdatasync`
//! however many pods there are.
//!
//! Each line is one record: the change from the previous durably saved state to the new one
//! (pods put or deleted, the IPAM cursors, owned namespace paths added or dropped, the peer
//! list when it changed), carrying a sequence number one above the previous record's. The
//! snapshot carries the sequence number of the last record it includes ([`State::seq`]).
//!
//! Loading reads the snapshot and replays the records whose sequence number is above the
//! snapshot's, in order and without gaps. A crash in the middle of an append leaves at most
//! one incomplete last line; that record was never acknowledged, so it is dropped
//! ([`DiscardedTail`]). Any other invalid line, or a gap in the sequence, is corruption
//! ([`StateError::CorruptJournal`], naming the line).
//!
//! A journal is only ever appended to after a complete line: a failed append is cut back off
//! the file, and if even that fails the journal is not used again until a full snapshot has
//! been written and a fresh, empty journal put in place of the old one. A snapshot always gets
//! a sequence number at least as high as any record in the journal it replaces, so a crash
//! between writing the snapshot and replacing the journal leaves records that replay skips.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use super::{PodRecord, State, StateError};
use crate::ipam::IpamCursors;
use crate::names::PodName;
use crate::peers::PeerRecord;

/// File name of the journal inside the state directory.
pub const JOURNAL_FILE_NAME: &str = "journal.jsonl";

/// The incomplete last journal line that a load dropped: a record whose append never
/// finished (a crash or a failed write), so its save was never acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscardedTail {
    /// The journal.
    pub path: PathBuf,
    /// The line number (1-based).
    pub line: usize,
    /// Its length in bytes (with the end of line, if any).
    pub bytes: usize,
    /// Why it is incomplete.
    pub reason: String,
}

impl fmt::Display for DiscardedTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "state journal {}: dropped the incomplete last record at line {} ({} bytes, never \
             acknowledged): {}",
            self.path.display(),
            self.line,
            self.bytes,
            self.reason
        )
    }
}

/// One journal line as read back.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    seq: u64,
    #[serde(default)]
    put: BTreeMap<PodName, PodRecord>,
    #[serde(default)]
    del: Vec<PodName>,
    #[serde(default)]
    ipam: Option<IpamCursors>,
    #[serde(default)]
    netns_add: Vec<PathBuf>,
    #[serde(default)]
    netns_del: Vec<PathBuf>,
    #[serde(default)]
    peers: Option<Vec<PeerRecord>>,
}

impl Record {
    fn apply(self, state: &mut State) {
        state.pods.extend(self.put);
        for name in &self.del {
            state.pods.remove(name);
        }
        if let Some(ipam) = self.ipam {
            state.ipam = ipam;
        }
        state.owned_netns.extend(self.netns_add);
        for path in &self.netns_del {
            state.owned_netns.remove(path);
        }
        if let Some(peers) = self.peers {
            state.peers = peers;
        }
        state.seq = self.seq;
    }
}

/// Pods serialized as a JSON object (name to record), like [`State::pods`].
struct Put<'a>(Vec<(&'a PodName, &'a PodRecord)>);

impl Serialize for Put<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().copied())
    }
}

/// The change from a saved state to a newer one, borrowing from the newer one; written as
/// one journal line (the same fields as [`Record`]).
#[derive(Serialize)]
pub(super) struct Delta<'a> {
    seq: u64,
    #[serde(skip_serializing_if = "put_is_empty")]
    put: Put<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    del: Vec<PodName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipam: Option<&'a IpamCursors>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    netns_add: Vec<&'a PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    netns_del: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peers: Option<&'a Vec<PeerRecord>>,
}

fn put_is_empty(put: &Put<'_>) -> bool {
    put.0.is_empty()
}

/// One key of an ordered walk over two sorted sequences.
enum Side<A, B> {
    /// Only in the old one.
    Old(A),
    /// In both.
    Both(A, B),
    /// Only in the new one.
    New(B),
}

/// Walks two sequences sorted by key per `cmp` (the keys serve only to pair the items up).
fn merge<K, A, B>(
    old: impl Iterator<Item = (K, A)>,
    new: impl Iterator<Item = (K, B)>,
    cmp: impl Fn(&K, &K) -> std::cmp::Ordering,
    mut each: impl FnMut(Side<A, B>),
) {
    use std::cmp::Ordering;
    let mut old = old.peekable();
    let mut new = new.peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => return,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((o, _)), Some((n, _))) => cmp(o, n),
        };
        let side = match order {
            Ordering::Less => Side::Old(old.next().expect("peeked").1),
            Ordering::Greater => Side::New(new.next().expect("peeked").1),
            Ordering::Equal => {
                let a = old.next().expect("peeked").1;
                Side::Both(a, new.next().expect("peeked").1)
            }
        };
        each(side);
    }
}

impl<'a> Delta<'a> {
    /// What changed from `base` to `new`; the record gets sequence number `base.seq + 1`.
    /// One ordered walk over each collection, comparing records only where names match.
    pub(super) fn between(base: &State, new: &'a State) -> Self {
        let mut put = Vec::new();
        let mut del = Vec::new();
        merge(
            base.pods
                .iter()
                .map(|(name, record)| (name, (name, record))),
            new.pods.iter().map(|(name, record)| (name, (name, record))),
            |a, b| a.cmp(b),
            |side| match side {
                Side::Old((name, _)) => del.push(name.clone()),
                Side::Both((_, old), (name, record)) => {
                    if old != record {
                        put.push((name, record));
                    }
                }
                Side::New(entry) => put.push(entry),
            },
        );
        let mut netns_add = Vec::new();
        let mut netns_del = Vec::new();
        merge(
            base.owned_netns.iter().map(|p| (p, p)),
            new.owned_netns.iter().map(|p| (p, p)),
            // Equal bytes first: `Path`'s order parses components, and nearly every pair is
            // equal.
            |a, b| {
                if a.as_os_str() == b.as_os_str() {
                    std::cmp::Ordering::Equal
                } else {
                    a.cmp(b)
                }
            },
            |side| match side {
                Side::Old(path) => netns_del.push(path.clone()),
                Side::Both(..) => {}
                Side::New(path) => netns_add.push(path),
            },
        );
        Self {
            seq: base.seq + 1,
            put: Put(put),
            del,
            ipam: (base.ipam != new.ipam).then_some(&new.ipam),
            netns_add,
            netns_del,
            peers: (base.peers != new.peers).then_some(&new.peers),
        }
    }

    /// Whether nothing changed.
    pub(super) fn is_empty(&self) -> bool {
        self.put.0.is_empty()
            && self.del.is_empty()
            && self.ipam.is_none()
            && self.netns_add.is_empty()
            && self.netns_del.is_empty()
            && self.peers.is_none()
    }

    /// The journal line: compact JSON and an end of line.
    pub(super) fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("state is always serializable");
        line.push(b'\n');
        line
    }

    /// Applies the change to `base` (the state it was computed from), which then equals the
    /// newer state.
    pub(super) fn apply_to(&self, base: &mut State) {
        for (name, record) in &self.put.0 {
            base.pods.insert((*name).clone(), (*record).clone());
        }
        for name in &self.del {
            base.pods.remove(name);
        }
        if let Some(ipam) = self.ipam {
            base.ipam = ipam.clone();
        }
        for path in &self.netns_add {
            base.owned_netns.insert((*path).clone());
        }
        for path in &self.netns_del {
            base.owned_netns.remove(path);
        }
        if let Some(peers) = self.peers {
            base.peers.clone_from(peers);
        }
        base.seq = self.seq;
    }
}

/// What a replay found.
#[derive(Debug, Default)]
pub(super) struct Replayed {
    /// Complete records in the journal (replayed or skipped).
    pub records: usize,
    /// Records applied on top of the snapshot.
    pub applied: usize,
    /// The incomplete last line, dropped.
    pub discarded: Option<DiscardedTail>,
}

/// Replays the journal `bytes` (read from `path`) on top of `state`, the snapshot: records
/// at or below `state.seq` are skipped, the others must follow it without gaps.
pub(super) fn replay(path: &Path, bytes: &[u8], state: &mut State) -> Result<Replayed, StateError> {
    let corrupt = |line: usize, reason: String| StateError::CorruptJournal {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut out = Replayed::default();
    let mut previous: Option<u64> = None;
    let mut rest = bytes;
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (text, complete, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(i) => (&rest[..i], true, &rest[i + 1..]),
            None => (rest, false, &rest[rest.len()..]),
        };
        let last = next.is_empty();
        let parsed = if complete {
            serde_json::from_slice::<Record>(text).map_err(|e| {
                // Cut short (or zeros where the data never reached the disk) versus a
                // well-formed line that is not a record, which no torn append produces.
                let torn = matches!(
                    e.classify(),
                    serde_json::error::Category::Syntax | serde_json::error::Category::Eof
                );
                (e.to_string(), torn)
            })
        } else {
            Err(("no end of line: the append was cut short".to_string(), true))
        };
        let record = match parsed {
            Ok(record) => record,
            Err((reason, true)) if last => {
                out.discarded = Some(DiscardedTail {
                    path: path.to_path_buf(),
                    line: number,
                    bytes: text.len() + usize::from(complete),
                    reason,
                });
                break;
            }
            Err((reason, _)) if last => return Err(corrupt(number, reason)),
            Err((reason, _)) => {
                return Err(corrupt(
                    number,
                    format!("{reason} (and valid lines follow, so it is not a torn append)"),
                ));
            }
        };
        if let Some(previous) = previous
            && record.seq <= previous
        {
            return Err(corrupt(
                number,
                format!("seq {} does not follow seq {previous}", record.seq),
            ));
        }
        previous = Some(record.seq);
        out.records += 1;
        if record.seq > state.seq {
            if record.seq != state.seq + 1 {
                return Err(corrupt(
                    number,
                    format!(
                        "seq {} after seq {}: the records in between are missing",
                        record.seq, state.seq
                    ),
                ));
            }
            record.apply(state);
            out.applied += 1;
        }
        rest = next;
    }
    Ok(out)
}

/// The highest sequence number in a snapshot or journal, read leniently (whatever parses):
/// a snapshot written without knowing the current state must be numbered above it.
pub(super) fn highest_seq(snapshot: Option<&[u8]>, journal: Option<&[u8]>) -> u64 {
    #[derive(Deserialize)]
    struct Seq {
        #[serde(default)]
        seq: u64,
    }
    let seq = |bytes: &[u8]| serde_json::from_slice::<Seq>(bytes).map_or(0, |s| s.seq);
    let lines = journal
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .map(seq)
        .max()
        .unwrap_or(0);
    lines.max(snapshot.map_or(0, seq))
}

/// How an append went.
pub(super) enum Append {
    /// The line is in the journal and synced.
    Done,
    /// The journal is not as this writer left it (gone, or its length differs); nothing
    /// was written.
    Stale,
    /// The append failed; the journal is as before if `usable`, otherwise it may end in a
    /// partial line and must not be appended to again.
    Failed {
        /// The failure, naming the journal.
        error: StateError,
        /// Whether the journal is still known to end after its last complete record.
        usable: bool,
    },
}

fn io_error(path: &Path, op: &'static str, source: std::io::Error) -> StateError {
    StateError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Appends `line` to the journal at `path`, whose valid length is `len`, and fdatasyncs it.
/// The file is opened for this append only (so the state directory can be remounted
/// read-only between saves). A failed write or sync is cut back off.
pub(super) fn append(path: &Path, len: u64, line: &[u8]) -> Append {
    let mut file = match OpenOptions::new().append(true).open(path) {
        Ok(file) => file,
        // The journal vanished: nothing to append to, a snapshot must start a new one.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Append::Stale,
        Err(e) => {
            // Nothing was written.
            let error = io_error(path, "open", e);
            return Append::Failed {
                error,
                usable: true,
            };
        }
    };
    match file.metadata() {
        Ok(meta) if meta.len() == len => {}
        Ok(_) => return Append::Stale,
        Err(e) => {
            let error = io_error(path, "stat", e);
            return Append::Failed {
                error,
                usable: true,
            };
        }
    }
    let result = fault::check("journal write", Some((&mut file, line)))
        .and_then(|()| file.write_all(line))
        .map_err(|e| io_error(path, "write", e))
        .and_then(|()| {
            fault::check("journal fdatasync", None)
                .and_then(|()| file.sync_data())
                .map_err(|e| io_error(path, "fdatasync", e))
        });
    match result {
        Ok(()) => Append::Done,
        Err(error) => {
            let usable = fault::check("journal truncate", None)
                .and_then(|()| file.set_len(len))
                .and_then(|()| file.sync_data())
                .is_ok();
            Append::Failed { error, usable }
        }
    }
}

/// Puts a fresh, empty journal in place of the one at `path` (an empty temporary file renamed
/// over it, then the directory synced). Readers still holding the old file keep reading it
/// whole.
pub(super) fn reset(dir: &Path, path: &Path) -> Result<(), StateError> {
    let tmp = dir.join(format!("{JOURNAL_FILE_NAME}.tmp"));
    fault::check("journal reset", None).map_err(|e| io_error(&tmp, "create", e))?;
    File::create(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(&tmp, "create", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, "rename", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "fsync directory", e))
}

/// Failure injection for the unit tests: a thread arms named points (`journal write`,
/// `journal fdatasync`, `journal truncate`, `journal reset`) to fail once each. Compiled to
/// nothing outside tests.
mod fault {
    #[cfg(test)]
    use std::cell::RefCell;
    use std::fs::File;

    #[cfg(test)]
    thread_local! {
        static ARMED: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes the next pass through `point` on this thread fail.
    #[cfg(test)]
    pub(crate) fn arm(point: &'static str) {
        ARMED.with(|a| a.borrow_mut().push(point));
    }

    /// Fails if `point` is armed (disarming it). An armed `journal write` first writes half
    /// of the line, as a write cut short by a full disk would.
    #[cfg(test)]
    pub(super) fn check(point: &str, write: Option<(&mut File, &[u8])>) -> std::io::Result<()> {
        let armed = ARMED.with(|a| {
            let mut armed = a.borrow_mut();
            let found = armed.iter().position(|p| *p == point);
            found.map(|i| armed.remove(i)).is_some()
        });
        if !armed {
            return Ok(());
        }
        if let Some((file, line)) = write {
            use std::io::Write as _;
            file.write_all(&line[..line.len() / 2])?;
        }
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub(super) fn check(_point: &str, _write: Option<(&mut File, &[u8])>) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::record::Phase;
    use crate::state::{STATE_FILE_NAME, StateStore};

    /// A record built from JSON, so fields added later with defaults need no change here.
    fn record(name: &str, pid: u32) -> PodRecord {
        let name = PodName::new(name).unwrap();
        let id = name.id();
        serde_json::from_value(serde_json::json!({
            "name": name,
            "id": id,
            "netns": format!("/run/netns/{name}"),
            "ownership": {"kind": "owned", "pause": true},
            "pause": {"pid": pid, "start_time": 987654},
            "ips": ["10.88.0.2/16"],
            "gateways": ["10.88.0.1"],
            "interface": "eth0",
            "host_veth": id.host_veth_name(),
            "annotations": {"k8s.pod": "default/web"},
            "phase": "ready",
            "mtu": 1500,
        }))
        .unwrap()
    }

    fn add(state: &mut State, name: &str, pid: u32) {
        let r = record(name, pid);
        state.owned_netns.insert(r.netns.clone());
        state.pods.insert(r.name.clone(), r);
    }

    fn journal(store: &StateStore) -> Vec<u8> {
        std::fs::read(store.journal_path()).unwrap_or_default()
    }

    fn lines(store: &StateStore) -> usize {
        journal(store).iter().filter(|&&b| b == b'\n').count()
    }

    /// The loaded state equals `state` (whose `seq` the store keeps).
    fn assert_loads(store: &StateStore, state: &State) {
        let loaded = store.load().unwrap();
        let mut expected = state.clone();
        expected.seq = loaded.seq;
        assert_eq!(loaded, expected);
    }

    #[test]
    fn round_trip_appends_one_line_per_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        add(&mut state, "web", 1);
        store.save(&state).unwrap(); // no journal yet: the first save is a snapshot
        let snapshot = std::fs::read(store.path()).unwrap();
        assert_eq!(lines(&store), 0);
        for (i, n) in ["db", "cache", "queue"].into_iter().enumerate() {
            add(&mut state, n, 10 + i as u32);
            state.ipam.v4 = Some(format!("10.88.0.{}", 3 + i).parse().unwrap());
            store.save(&state).unwrap();
            assert_eq!(lines(&store), i + 1);
            assert_loads(&store, &state);
        }
        // Changes of one record, deletes, cursors and peers.
        state
            .pods
            .get_mut(&PodName::new("web").unwrap())
            .unwrap()
            .phase = Phase::Removing;
        store.save(&state).unwrap();
        state.pods.remove(&PodName::new("db").unwrap());
        state.owned_netns.remove(Path::new("/run/netns/db"));
        state.peers.push(PeerRecord {
            pod_cidr: "10.99.0.0/16".parse().unwrap(),
            via: "192.0.2.9".parse().unwrap(),
            source: crate::peers::PeerSource::Api,
        });
        store.save(&state).unwrap();
        assert_eq!(lines(&store), 5);
        assert_loads(&store, &state);
        // An unchanged state writes nothing; the snapshot was never rewritten.
        store.save(&state).unwrap();
        assert_eq!(lines(&store), 5);
        assert_eq!(std::fs::read(store.path()).unwrap(), snapshot);
        // The deleted pod is one short line naming it.
        let text = String::from_utf8(journal(&store)).unwrap();
        let last = text.lines().last().unwrap();
        assert!(last.contains("\"del\":[\"db\"]"), "{last}");
        assert!(!last.contains("\"put\""), "{last}");
        assert_eq!(store.load().unwrap().seq, 6);
    }

    #[test]
    fn a_restarted_store_replays_then_compacts_into_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::default();
        {
            let store = StateStore::new(dir.path());
            assert_eq!(store.recover().unwrap().state, State::default());
            for n in ["a", "b", "c"] {
                add(&mut state, n, 7);
                store.save(&state).unwrap();
            }
            assert_eq!(lines(&store), 2);
        }
        let store = StateStore::new(dir.path());
        // A plain load only reads.
        assert_loads(&store, &state);
        assert_eq!(lines(&store), 2);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.replayed, 2);
        assert!(recovered.discarded.is_none());
        assert!(recovered.compaction_error.is_none());
        assert_eq!(recovered.state.seq, 3);
        // The journal is folded into the snapshot and empty; saves go on appending.
        assert_eq!(journal(&store), b"");
        let snapshot: State =
            serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(snapshot, recovered.state);
        add(&mut state, "d", 7);
        store.save(&state).unwrap();
        assert_eq!(lines(&store), 1);
        assert_loads(&store, &state);
        assert_eq!(store.load().unwrap().seq, 4);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        add(&mut state, "a", 1);
        store.save(&state).unwrap();
        add(&mut state, "b", 1);
        store.save(&state).unwrap();
        let acknowledged = state.clone();
        add(&mut state, "c", 1);
        store.save(&state).unwrap();
        // Cut the last record short, as a crash in the middle of its append would.
        let bytes = journal(&store);
        let cut = bytes.len() - 20;
        std::fs::write(store.journal_path(), &bytes[..cut]).unwrap();
        drop(store);

        let store = StateStore::new(dir.path());
        assert_loads(&store, &acknowledged);
        let recovered = store.recover().unwrap();
        let tail = recovered.discarded.expect("the torn line is reported");
        assert_eq!(tail.line, 2);
        assert_eq!(tail.path, store.journal_path());
        assert!(tail.to_string().contains("line 2"), "{tail}");
        assert_eq!(recovered.replayed, 1);
        // Compaction left a clean journal: appending after it is safe.
        assert_eq!(journal(&store), b"");
        store.save(&state).unwrap();
        drop(store);
        let store = StateStore::new(dir.path());
        let again = store.recover().unwrap();
        assert!(again.discarded.is_none());
        let mut expected = state.clone();
        expected.seq = again.state.seq;
        assert_eq!(again.state, expected);

        // Zeros where the data never reached the disk count as torn too, end of line or not.
        let mut bytes = journal(&store);
        bytes.extend_from_slice(&[0; 40]);
        std::fs::write(store.journal_path(), &bytes).unwrap();
        assert!(store.recover().unwrap().discarded.is_some());
        std::fs::write(store.journal_path(), b"{\"seq\":9,\"put\":{\"x\"\n").unwrap();
        assert!(store.recover().unwrap().discarded.is_some());
    }

    #[test]
    fn an_invalid_line_followed_by_valid_ones_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        store.save(&state).unwrap();
        for n in ["a", "b", "c"] {
            add(&mut state, n, 1);
            store.save(&state).unwrap();
        }
        let text = String::from_utf8(journal(&store)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let garbage = format!("{}\n{{\"seq\":2,\"put\n{}\n", lines[0], lines[2]);
        std::fs::write(store.journal_path(), garbage).unwrap();
        let err = store.load().unwrap_err();
        assert!(
            matches!(err, StateError::CorruptJournal { line: 2, .. }),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&store.journal_path().display().to_string()),
            "{msg}"
        );
        assert!(msg.contains("line 2"), "{msg}");
        // recover refuses it too, and writes nothing.
        let before = std::fs::read(store.path()).unwrap();
        assert!(matches!(
            store.recover(),
            Err(StateError::CorruptJournal { line: 2, .. })
        ));
        assert_eq!(std::fs::read(store.path()).unwrap(), before);

        // A gap in the sequence, a sequence going backwards, and a well-formed last line that
        // is no record are corruption as well.
        let gap = format!("{}\n{}\n", lines[0], lines[2]);
        std::fs::write(store.journal_path(), gap).unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
        let backwards = format!("{}\n{}\n{}\n", lines[0], lines[1], lines[0]);
        std::fs::write(store.journal_path(), backwards).unwrap();
        let err = store.load().unwrap_err();
        assert!(err.to_string().contains("does not follow"), "{err}");
        let alien = format!("{}\n{{\"seq\":3,\"bogus\":1}}\n", lines[0]);
        std::fs::write(store.journal_path(), alien).unwrap();
        let err = store.load().unwrap_err();
        assert!(
            matches!(err, StateError::CorruptJournal { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_crash_between_snapshot_and_journal_reset_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        store.save(&state).unwrap();
        for n in ["a", "b", "c"] {
            add(&mut state, n, 1);
            store.save(&state).unwrap();
        }
        let old_journal = journal(&store);
        assert_eq!(lines(&store), 3);
        drop(store);
        // Compaction writes the snapshot, then "crashes" before the journal is replaced.
        let store = StateStore::new(dir.path());
        fault::arm("journal reset");
        let recovered = store.recover().unwrap();
        let err = recovered.compaction_error.expect("the reset failed");
        assert!(err.to_string().contains("journal.jsonl.tmp"), "{err}");
        assert_eq!(journal(&store), old_journal, "old records still there");
        let snapshot: State =
            serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(snapshot.seq, 4, "the first snapshot is 1, then 3 records");
        // Every record is at or below the snapshot's seq: replay skips them all.
        assert_loads(&store, &state);
        drop(store);
        let store = StateStore::new(dir.path());
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.replayed, 0);
        assert_eq!(recovered.state, snapshot);
        assert_eq!(journal(&store), b"");

        // The same holds for a snapshot written by a store that never loaded (no known seq):
        // it is numbered above every record on disk.
        add(&mut state, "d", 1);
        store.save(&state).unwrap();
        add(&mut state, "e", 1);
        store.save(&state).unwrap();
        let fresh = StateStore::new(dir.path());
        fault::arm("journal reset");
        add(&mut state, "f", 1);
        fresh.save(&state).unwrap();
        assert_eq!(lines(&fresh), 2, "old records left by the failed reset");
        assert_loads(&fresh, &state);
        assert_eq!(fresh.load().unwrap().seq, 7, "above records 5 and 6");
    }

    #[test]
    fn without_a_usable_journal_even_an_unchanged_state_is_snapshotted() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        store.save(&state).unwrap();
        add(&mut state, "a", 1);
        store.save(&state).unwrap();
        // A snapshot whose journal reset fails (the save itself succeeds: the snapshot holds
        // the state) leaves no journal to append to.
        let fresh = StateStore::new(dir.path());
        fault::arm("journal reset");
        fresh.save(&state).unwrap();
        let first: State = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(first.seq, 3);
        assert_eq!(lines(&fresh), 1, "the old journal stays");
        // Nothing changed, but what is on disk is not known to be synced: snapshot again.
        fresh.save(&state).unwrap();
        let second: State = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(second.seq, 4);
        assert_eq!(journal(&fresh), b"");
        // From then on an unchanged state writes nothing.
        fresh.save(&state).unwrap();
        assert_eq!(journal(&fresh), b"");
        assert_eq!(fresh.load().unwrap().seq, 4);
        assert_loads(&fresh, &state);
    }

    #[test]
    fn a_failed_append_is_cut_back_and_the_journal_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        add(&mut state, "a", 1);
        store.save(&state).unwrap();
        add(&mut state, "b", 1);
        store.save(&state).unwrap();
        let saved = state.clone();
        let before = journal(&store);

        let snapshot = std::fs::read(store.path()).unwrap();
        add(&mut state, "c", 1);
        for point in ["journal write", "journal fdatasync"] {
            fault::arm(point);
            let err = store.save(&state).unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&store.journal_path().display().to_string()),
                "{msg}"
            );
            assert!(msg.contains("No space left on device"), "{msg}");
            assert_eq!(
                journal(&store),
                before,
                "{point}: the append is cut back off"
            );
            assert_loads(&store, &saved);
        }
        // Still usable: the next save appends (no snapshot).
        store.save(&state).unwrap();
        assert_eq!(std::fs::read(store.path()).unwrap(), snapshot);
        assert_eq!(lines(&store), 2);
        assert_loads(&store, &state);
    }

    #[test]
    fn a_failed_append_that_cannot_be_cut_back_makes_the_next_save_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        add(&mut state, "a", 1);
        store.save(&state).unwrap();
        add(&mut state, "b", 1);
        store.save(&state).unwrap();
        let saved = state.clone();

        add(&mut state, "c", 1);
        fault::arm("journal write");
        fault::arm("journal truncate");
        let err = store.save(&state).unwrap_err();
        assert!(
            err.to_string()
                .contains(&store.journal_path().display().to_string()),
            "{err}"
        );
        // Half a line is left at the end. Were the daemon to crash now, it is dropped.
        let bytes = journal(&store);
        assert_ne!(bytes.last(), Some(&b'\n'));
        let reader = StateStore::new(dir.path());
        assert_loads(&reader, &saved);

        // The next save does not append after the garbage: full snapshot, fresh journal.
        add(&mut state, "d", 1);
        store.save(&state).unwrap();
        assert_eq!(journal(&store), b"");
        let snapshot: State =
            serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        let mut expected = state.clone();
        expected.seq = snapshot.seq;
        assert_eq!(snapshot, expected);
        assert_eq!(snapshot.seq, 3, "above the seq of the failed record");
        // And then appends again.
        add(&mut state, "e", 1);
        store.save(&state).unwrap();
        assert_eq!(lines(&store), 1);
        assert_loads(&store, &state);
        let recovered = StateStore::new(dir.path()).recover().unwrap();
        assert!(recovered.discarded.is_none());
        assert_eq!(recovered.replayed, 1);
    }

    #[test]
    fn a_journal_changed_behind_the_store_is_not_appended_to() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        store.save(&state).unwrap();
        add(&mut state, "a", 1);
        store.save(&state).unwrap();
        // Someone appends garbage; the store notices the length and snapshots instead.
        let mut bytes = journal(&store);
        bytes.extend_from_slice(b"garbage");
        std::fs::write(store.journal_path(), &bytes).unwrap();
        add(&mut state, "b", 1);
        store.save(&state).unwrap();
        assert_eq!(journal(&store), b"");
        assert_loads(&store, &state);
        // A journal deleted behind the store: a snapshot and a new journal.
        add(&mut state, "c", 1);
        store.save(&state).unwrap();
        assert_eq!(lines(&store), 1);
        std::fs::remove_file(store.journal_path()).unwrap();
        add(&mut state, "d", 1);
        store.save(&state).unwrap();
        assert_eq!(journal(&store), b"");
        assert_loads(&store, &state);
        // One that cannot be opened (a directory in its place): the save fails naming it,
        // and nothing else is written.
        std::fs::remove_file(store.journal_path()).unwrap();
        std::fs::create_dir(store.journal_path()).unwrap();
        let snapshot = std::fs::read(store.path()).unwrap();
        add(&mut state, "e", 1);
        let err = store.save(&state).unwrap_err();
        assert!(
            err.to_string()
                .contains(&store.journal_path().display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read(store.path()).unwrap(), snapshot);
    }

    #[test]
    fn compaction_when_the_journal_reaches_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path()).with_journal_limits(3, 1 << 20);
        let mut state = State::default();
        store.save(&state).unwrap();
        for (i, n) in ["a", "b", "c"].into_iter().enumerate() {
            add(&mut state, n, 1);
            store.save(&state).unwrap();
            assert_eq!(lines(&store), i + 1);
        }
        // The fourth change is written as a snapshot, and the journal starts over.
        add(&mut state, "d", 1);
        store.save(&state).unwrap();
        assert_eq!(journal(&store), b"");
        let snapshot: State =
            serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
        assert_eq!(
            snapshot.seq, 5,
            "the first snapshot is 1, then 3 records, then this one"
        );
        assert_eq!(snapshot.pods.len(), 4);
        add(&mut state, "e", 1);
        store.save(&state).unwrap();
        assert_eq!(lines(&store), 1);
        assert_loads(&store, &state);
        assert_eq!(store.load().unwrap().seq, 6);

        // The byte bound as well.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path()).with_journal_limits(1000, 600);
        let mut state = State::default();
        store.save(&state).unwrap();
        let mut compacted = false;
        for i in 0..10 {
            add(&mut state, &format!("p{i}"), 1);
            store.save(&state).unwrap();
            let len = journal(&store).len();
            assert!(len < 600 + 1000, "journal of {len} bytes");
            compacted |= len == 0;
        }
        assert!(compacted);
        assert_loads(&store, &state);
    }

    #[test]
    fn an_old_snapshot_without_seq_loads_and_gets_a_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::default();
        add(&mut state, "web", 1);
        // The format before the journal: no seq, pretty JSON, no journal file.
        let mut old = serde_json::to_value(&state).unwrap();
        old.as_object_mut().unwrap().remove("seq");
        std::fs::write(
            dir.path().join(STATE_FILE_NAME),
            serde_json::to_vec_pretty(&old).unwrap(),
        )
        .unwrap();
        let store = StateStore::new(dir.path());
        assert_eq!(store.load().unwrap(), state);
        let recovered = store.recover().unwrap();
        assert_eq!(recovered.state, state);
        assert!(!store.journal_path().exists(), "nothing to compact");
        // The first change writes a snapshot (and the journal); the next ones append.
        add(&mut state, "db", 1);
        store.save(&state).unwrap();
        assert_eq!(journal(&store), b"");
        add(&mut state, "cache", 1);
        store.save(&state).unwrap();
        assert_eq!(lines(&store), 1);
        assert_loads(&store, &state);
    }

    #[test]
    fn highest_seq_reads_whatever_parses() {
        assert_eq!(highest_seq(None, None), 0);
        assert_eq!(
            highest_seq(
                Some(b"{\"version\":1,\"seq\":4}"),
                Some(b"{\"seq\":5}\n{\"seq\":6}\n{\"seq\":7,\"pu")
            ),
            6
        );
        assert_eq!(highest_seq(Some(b"{\"seq\":9}"), Some(b"{\"seq\":5}\n")), 9);
    }

    #[test]
    fn at_a_thousand_pods_the_diff_is_cheap_and_the_record_small() {
        // The diff walks the pods once and serializes only the change: its cost at 1000 pods
        // stays far below a millisecond (about 30 us in a release build), and the line does
        // not grow with the pod count.
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path());
        let mut state = State::default();
        for i in 0..1000 {
            add(&mut state, &format!("pod-{i}"), i);
        }
        store.save(&state).unwrap();
        let base = store.load().unwrap();
        let mut next = state.clone();
        add(&mut next, "one-more", 5);
        let start = Instant::now();
        let rounds = 100;
        for _ in 0..rounds {
            let delta = Delta::between(&base, &next);
            assert!(!delta.is_empty());
            std::hint::black_box(delta.line());
        }
        let per_diff = start.elapsed() / rounds;
        let line = Delta::between(&base, &next).line();
        assert!(line.len() < 1024, "{} bytes", line.len());
        eprintln!(
            "diff + serialize at 1000 pods: {per_diff:?}, {} bytes",
            line.len()
        );
        // Generous for debug builds on a loaded machine; release is ~100x below.
        assert!(per_diff.as_millis() < 20, "{per_diff:?}");
        store.save(&next).unwrap();
        assert_eq!(lines(&store), 1);
    }
}
