//! Tests of the write-ahead journal: append, replay, torn and foreign tails, bounds.

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
    let snapshot: State = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
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
    let snapshot: State = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
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
    fault::arm("journal write");
    let err = store.save(&state).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&store.journal_path().display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("No space left on device"), "{msg}");
    assert_eq!(journal(&store), before, "the append is cut back off");
    assert_loads(&store, &saved);

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
    let snapshot: State = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
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
    let snapshot: State = serde_json::from_slice(&std::fs::read(store.path()).unwrap()).unwrap();
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
