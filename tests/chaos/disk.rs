//! A full or read-only state directory: the daemon's `state_dir` is a small tmpfs mounted by
//! the test (unmounted at the end, also on failure). While it is full, and while it is
//! read-only, `pod create` and `pod rm` fail with an error naming the state journal (the
//! file a save appends to), and the kernel is left exactly as before: no veth, mount, pause
//! or nftables element of the pod that failed to be created, and the pod that failed to be
//! removed still fully working. The state (snapshot plus journal) keeps matching the kernel.
//! Once the disk recovers, both work again and `check` is clean.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use netns_holder_core::state::{JOURNAL_FILE_NAME, STATE_FILE_NAME};
use nh_tests::invariants::{
    Pod, assert_node_matches, assert_nothing_left, assert_pod_works, assert_state_matches_kernel,
    load_state, on_node, pod_id_of,
};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, pause_processes};
use nh_tests::{require_root, run_ok, unique_name};

use crate::common::host_port_answers;

/// A tmpfs mounted at a directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(path)?;
        run_ok(
            Command::new("mount")
                .args([
                    "-t",
                    "tmpfs",
                    "-o",
                    &format!("size={size},mode=0700"),
                    "nh-chaos-state",
                ])
                .arg(path),
        )?;
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    fn remount(&self, option: &str) -> Result<()> {
        run_ok(
            Command::new("mount")
                .args(["-o", &format!("remount,{option}")])
                .arg(&self.path),
        )?;
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Fills the file system holding `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) -> Result<PathBuf> {
    let filler = dir.join("filler");
    let mut file = std::fs::File::create(&filler)?;
    let chunk = vec![0u8; 4096];
    loop {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => return Err(e).context("filling the state dir"),
        }
    }
    // The last partial page, byte by byte.
    while file.write(&[0]).is_ok_and(|n| n == 1) {}
    let _ = file.sync_all();
    Ok(filler)
}

/// `pod create` of a new pod and `pod rm` of `keep` both fail naming the state journal and
/// saying `why`; the kernel and the state are exactly as before.
fn operations_fail_cleanly(
    node: &Node,
    daemon: &Daemon,
    keep: &Pod,
    keep_port: u16,
    why: &str,
) -> Result<()> {
    // Each save appends one record to the journal: that is the write the disk refuses.
    let state_file = daemon.state_dir().join(JOURNAL_FILE_NAME);
    let name = unique_name("nospace");
    let out = daemon.cli(&["pod", "create", &name, "--publish", "18090:80"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "pod create succeeded on a {why} state dir"
    );
    ensure!(
        stderr.contains(&state_file.display().to_string()) && stderr.contains(why),
        "the create error does not name {} and say {why:?}: {stderr}",
        state_file.display()
    );
    let id = pod_id_of(&name)?;
    ensure!(
        !node.links()?.contains(&format!("nh{}", &id[..12])),
        "a veth of the failed pod {name} is left"
    );
    ensure!(
        !daemon.netns_dir().join(&name).exists(),
        "a netns mount point of the failed pod {name} is left"
    );
    ensure!(
        pause_processes().iter().all(|(_, i)| *i != id),
        "a pause of the failed pod {name} is left"
    );

    let out = daemon.cli(&["pod", "rm", &keep.name])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success(),
        "pod rm succeeded on a {why} state dir (it cannot be recorded)"
    );
    ensure!(
        stderr.contains(&state_file.display().to_string()) && stderr.contains(why),
        "the remove error does not name {} and say {why:?}: {stderr}",
        state_file.display()
    );
    // Nothing changed: the pod works, the node and the (unwritable) state file agree.
    assert_pod_works(node, keep)?;
    host_port_answers(node, keep_port)?;
    assert_node_matches(node, daemon, std::slice::from_ref(keep))?;
    eprintln!(
        "  {why}: create and rm refused, naming {}",
        state_file.display()
    );
    Ok(())
}

#[test]
fn a_full_or_read_only_state_dir_fails_operations_cleanly() -> Result<()> {
    if !require_root("a_full_or_read_only_state_dir_fails_operations_cleanly") {
        return Ok(());
    }
    on_node(
        "a_full_or_read_only_state_dir_fails_operations_cleanly",
        DaemonOptions::default(),
        |node, daemon| {
            // Move the (tiny) state onto a 64 KiB tmpfs while the daemon is stopped.
            daemon.stop()?;
            let state_dir = daemon.state_dir();
            let saved: Vec<(&str, Vec<u8>)> = [STATE_FILE_NAME, JOURNAL_FILE_NAME]
                .into_iter()
                .filter_map(|f| Some((f, std::fs::read(state_dir.join(f)).ok()?)))
                .collect();
            let tmpfs = Tmpfs::mount(&state_dir, "64k")?;
            for (file, bytes) in saved {
                std::fs::write(state_dir.join(file), bytes)?;
            }
            daemon.spawn()?;

            let port = 18091;
            let keep = Pod::from_json(
                &daemon.create_pod(&unique_name("keep"), &["--publish", &format!("{port}:80")])?,
            )?;
            // A restart folds the journal into the snapshot and leaves it empty: it then
            // holds no partly used tmpfs page that a full disk would still let a record into,
            // so the next save needs a new page, deterministically.
            daemon.stop()?;
            daemon.spawn()?;
            let journal = std::fs::metadata(state_dir.join(JOURNAL_FILE_NAME))
                .context("the journal after a restart")?;
            ensure!(
                journal.len() == 0,
                "the journal holds {} bytes after a restart",
                journal.len()
            );
            let _echo = Echo::start(&keep.netns, Proto::Tcp, 80)?;
            host_port_answers(node, port)?;

            let filler = fill(&state_dir)?;
            operations_fail_cleanly(node, daemon, &keep, port, "No space left on device")?;
            std::fs::remove_file(&filler)?;

            tmpfs.remount("ro")?;
            operations_fail_cleanly(node, daemon, &keep, port, "Read-only file system")?;
            tmpfs.remount("rw")?;

            // Recovered: both operations work and everything matches.
            let other = Pod::from_json(&daemon.create_pod(&unique_name("after"), &[])?)?;
            assert_pod_works(node, &other)?;
            assert_node_matches(node, daemon, &[keep.clone(), other.clone()])?;
            for pod in [&keep, &other] {
                daemon.remove_pod(&pod.name)?;
            }
            assert_nothing_left(node, daemon, &[keep.clone(), other])?;
            ensure!(load_state(daemon)?.pods.is_empty(), "records left");
            assert_state_matches_kernel(node, daemon)?;
            // Back to the directory underneath, for the daemon's own cleanup.
            daemon.stop()?;
            drop(tmpfs);
            daemon.spawn()?;
            Ok(())
        },
    )
}
