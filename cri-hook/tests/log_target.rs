//! Where the real `cri-hook nri` binary logs when nobody reads its stderr (as containerd
//! starts a pre-installed plugin: stdin, stdout and stderr on /dev/null), and that the
//! build keeps debug records for `-v` (the slog features).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!("cri-hook-log-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child killed (by its pid) and reaped on drop if still running.
struct Plugin(Child);

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cri-hook` with every standard stream on /dev/null and no NRI or logging environment.
fn cri_hook(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cri-hook"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .env_remove("NRI_PLUGIN_SOCKET")
        .env_remove("NRI_PLUGIN_NAME")
        .env_remove("NRI_PLUGIN_IDX")
        .env_remove("NETNS_HOLDER_NRI_LOG")
        .env_remove("JOURNAL_STREAM")
        .env_remove("CNI_COMMAND");
    // SAFETY: umask is async-signal-safe and touches only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    cmd
}

/// Waits until `path` holds `needle`; its content.
fn wait_for(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{} never got {needle:?}; it holds:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nri_logs_to_the_log_file_when_stderr_goes_nowhere() {
    let dir = TempDir::new("file");
    let log = dir.0.join("nri.log");
    let absent = dir.0.join("absent.sock");
    let mut child = Plugin(
        cri_hook(&[
            "-v",
            "nri",
            "--nri-socket",
            absent.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ])
        .spawn()
        .unwrap(),
    );
    wait_for(&log, "cannot connect to the runtime's NRI socket");
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let killed = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(killed, 0);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exit after SIGTERM: {status}");
    let text = std::fs::read_to_string(&log).unwrap();
    for needle in [
        "DEBG logging", // -v works: the debug record of the log target
        "INFO starting",
        "WARN cannot connect to the runtime's NRI socket",
        "shutting down",
        "INFO stopped",
        absent.to_str().unwrap(), // key-values are in the lines
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "created 0640 (umask 022), got {mode:o}");

    // A second run appends (quick path: a bad inherited fd fails at once), without -v.
    let status = cri_hook(&["nri", "--log-file", log.to_str().unwrap()])
        .env("NRI_PLUGIN_SOCKET", "not-a-number")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(after.starts_with(&text), "the first run's lines are kept");
    let added = &after[text.len()..];
    assert!(
        added.contains("ERRO NRI plugin failed") && added.contains("not a file descriptor"),
        "second run:\n{added}"
    );
    assert!(
        !added.contains("DEBG"),
        "no debug lines without -v:\n{added}"
    );
}

#[test]
fn nri_log_file_from_the_environment() {
    let dir = TempDir::new("env");
    let log = dir.0.join("env.log");
    let status = cri_hook(&["nri"])
        .env("NRI_PLUGIN_SOCKET", "x")
        .env("NETNS_HOLDER_NRI_LOG", &log)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("NRI plugin failed"), "{text}");
}

#[test]
fn nri_logs_to_journald_when_stderr_goes_nowhere_and_journald_listens() {
    let dir = TempDir::new("journal");
    let socket = dir.0.join("journal.socket");
    let journal = UnixDatagram::bind(&socket).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // No --log-file and no NETNS_HOLDER_NRI_LOG: a pre-installed plugin's situation.
    let status = cri_hook(&["-v", "nri", "--journal-socket", socket.to_str().unwrap()])
        .env("NRI_PLUGIN_SOCKET", "not-a-number")
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    journal
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    while let Ok(n) = journal.recv(&mut buf) {
        entries.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let failed = entries
        .iter()
        .find(|e| e.starts_with("MESSAGE=NRI plugin failed\n"))
        .unwrap_or_else(|| panic!("no failure entry in {entries:#?}"));
    for field in [
        "\nPRIORITY=3\n",
        "\nSYSLOG_IDENTIFIER=netns-holder-nri\n",
        "\nADAPTER=nri\n",
        "\nERROR=NRI_PLUGIN_SOCKET=\"not-a-number\" is not a file descriptor number",
    ] {
        assert!(failed.contains(field), "{field:?} missing from {failed:?}");
    }
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with("MESSAGE=logging\nPRIORITY=7\n")),
        "-v: the debug entry is there: {entries:#?}"
    );
}

#[test]
fn slog_features_keep_trace_in_release_builds() {
    // What a release build gets cannot be observed from this (debug) build, so read the
    // feature set cargo resolves for slog: slog's __slog_static_max_level() returns, in a
    // release build, the first release_max_level_* feature of off/error/warn/info/debug/
    // trace, else the first max_level_*, else Info.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // This platform only: resolving every platform would want crates never downloaded.
    let triple = format!(
        "{}-unknown-linux-{}",
        std::env::consts::ARCH,
        if cfg!(target_env = "musl") {
            "musl"
        } else {
            "gnu"
        }
    );
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &triple, "--manifest-path"])
        .arg(&manifest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = meta["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_str().unwrap().contains("slog@2."))
        .expect("slog in the resolve graph");
    let features: Vec<&str> = node["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let release: Vec<&str> = features
        .iter()
        .copied()
        .filter(|f| f.starts_with("release_max_level_"))
        .collect();
    assert_eq!(
        release,
        ["release_max_level_trace"],
        "features: {features:?}"
    );
    let debug: Vec<&str> = features
        .iter()
        .copied()
        .filter(|f| f.starts_with("max_level_"))
        .collect();
    assert_eq!(debug, ["max_level_trace"], "features: {features:?}");
}
