//! Helpers shared by the privileged test binaries of this crate.

use std::path::{Path, PathBuf};

/// The pause binary: `NH_PAUSE_BINARY`, or the workspace's `target/pause/pause`.
pub fn pause_binary() -> PathBuf {
    let path = std::env::var_os("NH_PAUSE_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pause/pause"));
    assert!(
        path.is_file(),
        "pause binary {} missing: run `cargo build -p pause --profile pause` or set NH_PAUSE_BINARY",
        path.display()
    );
    path
}

/// The process state letter of `pid` (`Z` for a zombie), `None` once it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].trim_start().chars().next()
}
