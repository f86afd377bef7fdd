//! End-to-end tests of the pause image builder (`pause-image`): the image is reproducible,
//! skopeo reads both the `oci-archive` and the OCI layout, and podman loads the archive and
//! runs the pause, which stops cleanly on SIGTERM.
//!
//! They run the built `pause-image` binary (`target/debug/pause-image`, or `$PAUSE_IMAGE_BIN`)
//! on the shipped pause binary (`target/pause/pause`, or `$PAUSE_BIN`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nh_tests::{ScratchDir, pause_binary, require_root, run_ok, target_dir, unique_name};
use serde_json::Value;

/// The `pause-image` builder binary.
fn pause_image_bin() -> PathBuf {
    let path = std::env::var_os("PAUSE_IMAGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug").join("pause-image"));
    assert!(
        path.is_file(),
        "pause-image binary {} not found: run `make build` (cargo build -p pause-image) \
         or set PAUSE_IMAGE_BIN",
        path.display()
    );
    path
}

/// What one run of the builder produced.
struct Built {
    layout: PathBuf,
    archive: PathBuf,
    manifest_digest: String,
    index_digest: String,
}

/// Runs `pause-image` into `dir` (layout at `dir/layout`, archive at `dir/pause.tar`).
fn build_image(dir: &Path, name: Option<&str>) -> Built {
    let layout = dir.join("layout");
    let archive = dir.join("pause.tar");
    let mut command = Command::new(pause_image_bin());
    command
        .arg("--pause")
        .arg(pause_binary())
        .arg("--layout")
        .arg(&layout);
    command.arg("--archive").arg(&archive);
    if let Some(name) = name {
        command.args(["--name", name]);
    }
    let output = run_ok(&mut command).expect("pause-image");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 stdout");
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line expected, got {stdout:?}"
    );
    let report: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    let field = |key: &str| {
        report[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {report}"))
            .to_string()
    };
    assert_eq!(Path::new(&field("layout")), layout.canonicalize().unwrap());
    assert_eq!(
        Path::new(&field("archive")),
        archive.canonicalize().unwrap()
    );
    let built = Built {
        layout,
        archive,
        manifest_digest: field("manifest_digest"),
        index_digest: field("index_digest"),
    };
    for digest in [&built.manifest_digest, &built.index_digest] {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        assert_eq!(hex.len(), 64, "{digest}");
        assert!(
            built.layout.join("blobs/sha256").join(hex).is_file(),
            "blob {digest} missing"
        );
    }
    built
}

/// Runs a command and parses its stdout as JSON.
fn json_of(command: &mut Command) -> Value {
    let output = run_ok(command).unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{command:?} printed no JSON ({e}): {output:?}"))
}

/// The OCI architecture this machine (and so the pause binary) has.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Asserts the image config fields skopeo reports.
fn assert_pause_config(config: &Value) {
    assert_eq!(config["os"], "linux", "{config}");
    assert_eq!(config["architecture"], host_arch(), "{config}");
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/pause"]),
        "{config}"
    );
    assert_eq!(config["config"]["User"], "65535:65535", "{config}");
    assert!(
        config.get("created").is_none(),
        "no timestamps expected: {config}"
    );
}

#[test]
fn image_is_reproducible() {
    if !require_root("image_is_reproducible") {
        return;
    }
    let (a, b) = (
        ScratchDir::new("imga").unwrap(),
        ScratchDir::new("imgb").unwrap(),
    );
    let first = build_image(a.path(), None);
    let second = build_image(b.path(), None);
    assert_eq!(first.manifest_digest, second.manifest_digest);
    assert_eq!(first.index_digest, second.index_digest);
    let archive = std::fs::read(&first.archive).unwrap();
    assert!(
        archive == std::fs::read(&second.archive).unwrap(),
        "archives differ"
    );
    assert_eq!(
        std::fs::read(first.layout.join("index.json")).unwrap(),
        std::fs::read(second.layout.join("index.json")).unwrap()
    );

    // Rebuilding over an existing layout gives the same result again.
    let third = build_image(a.path(), None);
    assert_eq!(third.manifest_digest, first.manifest_digest);
    assert!(
        std::fs::read(&third.archive).unwrap() == archive,
        "rebuilt archive differs"
    );
}

#[test]
fn skopeo_inspects_the_archive() {
    if !require_root("skopeo_inspects_the_archive") {
        return;
    }
    let scratch = ScratchDir::new("imgs").unwrap();
    let built = build_image(scratch.path(), None);
    let source = format!("oci-archive:{}", built.archive.display());

    let inspect = json_of(Command::new("skopeo").args(["inspect", &source]));
    assert_eq!(inspect["Os"], "linux", "{inspect}");
    assert_eq!(inspect["Architecture"], host_arch(), "{inspect}");
    assert_eq!(
        inspect["Layers"].as_array().map(Vec::len),
        Some(1),
        "{inspect}"
    );

    let config = json_of(Command::new("skopeo").args(["inspect", "--config", &source]));
    assert_pause_config(&config);
}

#[test]
fn skopeo_inspects_the_layout() {
    if !require_root("skopeo_inspects_the_layout") {
        return;
    }
    let scratch = ScratchDir::new("imgl").unwrap();
    let name = format!("localhost/nh-test/pause:{}", unique_name("l"));
    let built = build_image(scratch.path(), Some(&name));
    let layout = built.layout.display().to_string();

    // Without a reference (the layout holds exactly one image) and by its ref.name.
    for source in [format!("oci:{layout}"), format!("oci:{layout}:{name}")] {
        let inspect = json_of(Command::new("skopeo").args(["inspect", &source]));
        // skopeo reports the digest of what the reference resolves to: the nested index.
        assert_eq!(
            inspect["Digest"],
            built.index_digest.as_str(),
            "{source}: {inspect}"
        );
        assert_eq!(inspect["Architecture"], host_arch(), "{source}: {inspect}");
        let config = json_of(Command::new("skopeo").args(["inspect", "--config", &source]));
        assert_pause_config(&config);
    }

    // The raw top-level object is the per-platform index pointing at our manifest.
    let raw =
        json_of(Command::new("skopeo").args(["inspect", "--raw", &format!("oci:{layout}:{name}")]));
    assert_eq!(
        raw["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{raw}"
    );
    assert_eq!(
        raw["manifests"][0]["digest"],
        built.manifest_digest.as_str(),
        "{raw}"
    );
    assert_eq!(raw["manifests"][0]["platform"]["os"], "linux", "{raw}");
    assert_eq!(
        raw["manifests"][0]["platform"]["architecture"],
        host_arch(),
        "{raw}"
    );

    // An unknown reference is refused (the name really is what selects the image).
    let missing = Command::new("skopeo")
        .args([
            "inspect",
            &format!("oci:{layout}:localhost/nh-test/absent:0"),
        ])
        .output()
        .unwrap();
    assert!(
        !missing.status.success(),
        "skopeo found a reference that is not there"
    );
}

/// Removes the test's container and image, even when an assertion failed.
struct PodmanCleanup {
    container: String,
    image: String,
}

impl Drop for PodmanCleanup {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "0", &self.container])
            .output();
        let _ = Command::new("podman")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

/// One field of `podman inspect` of a container, via a Go template.
fn podman_inspect(container: &str, format: &str) -> String {
    let output =
        run_ok(Command::new("podman").args(["inspect", "--format", format, container])).unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn podman_loads_and_runs_the_pause() {
    if !require_root("podman_loads_and_runs_the_pause") {
        return;
    }
    let scratch = ScratchDir::new("imgp").unwrap();
    let image = format!("localhost/nh-test/pause:{}", unique_name("p"));
    let container = unique_name("nh-pause-");
    let _cleanup = PodmanCleanup {
        container: container.clone(),
        image: image.clone(),
    };
    let built = build_image(scratch.path(), Some(&image));

    let load = run_ok(
        Command::new("podman")
            .arg("load")
            .arg("-i")
            .arg(&built.archive),
    )
    .unwrap();
    let load_out = String::from_utf8_lossy(&load.stdout);
    assert!(
        load_out
            .lines()
            .any(|l| l.trim() == format!("Loaded image: {image}")),
        "podman load named the image differently: {load_out}"
    );
    let loaded = run_ok(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{.Config.User}} {{.Config.Entrypoint}} {{.Os}}/{{.Architecture}}",
        &image,
    ]))
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&loaded.stdout).trim(),
        format!("65535:65535 [/pause] linux/{}", host_arch())
    );

    run_ok(Command::new("podman").args([
        "run",
        "-d",
        "--runtime",
        "runc",
        "--network",
        "none",
        // This machine's root lacks CAP_SYS_RESOURCE: podman must not try to raise limits.
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        "--name",
        &container,
        &image,
    ]))
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(podman_inspect(&container, "{{.State.Status}}"), "running");

    let started = Instant::now();
    run_ok(Command::new("podman").args(["stop", "-t", "10", &container])).unwrap();
    let took = started.elapsed();
    assert_eq!(podman_inspect(&container, "{{.State.Status}}"), "exited");
    // 0 means the pause exited on SIGTERM by itself; a SIGKILL after the timeout gives 137.
    assert_eq!(podman_inspect(&container, "{{.State.ExitCode}}"), "0");
    assert!(
        took < Duration::from_secs(5),
        "podman stop took {took:?}: SIGTERM was ignored?"
    );
}
