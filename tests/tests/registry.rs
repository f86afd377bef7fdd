//! The pause image keeps its digests through a real registry: `skopeo copy` of the
//! `oci-archive` that `pause-image` writes into Debian's `docker-registry` stores the very
//! manifest, config and layer blobs `pause-image` built (the layer is already gzipped, so
//! nothing gets recompressed on the way), and pulling it back gives the same bytes.
//!
//! The registry runs with its own config and storage in a scratch directory, listening on
//! 127.0.0.1 inside a throwaway network namespace made by the test; skopeo runs in that
//! namespace too, with a private policy, auth file, runtime and temporary directory, so
//! nothing under `/run` or `/etc/containers` has to exist. The registry is read back both
//! through skopeo and through its HTTP API (from a thread that entered the namespace).
//!
//! It runs the built `pause-image` binary (`target/debug/pause-image`, or `$PAUSE_IMAGE_BIN`)
//! on the shipped pause binary (`target/pause/pause`, or `$PAUSE_BIN`).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nh_tests::node::{in_netns, in_netns_thread};
use nh_tests::{ChildGuard, ScratchDir, pause_binary, require_root, run_ok, target_dir};
use serde_json::Value;

/// The registry's port inside its own namespace (nothing else listens there).
const PORT: u16 = 5000;

/// The repository the image is pushed to.
const REPO: &str = "netns-holder/pause";

/// Manifest media types the HTTP reads accept (without them the registry would offer a
/// schema 1 conversion).
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

/// The `pause-image` builder binary (as in tests/tests/image.rs).
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

/// A network namespace made with `ip netns add`, with `lo` up; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Result<Self> {
        let name = nh_tests::unique_name("nhr");
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        run_ok(Command::new("ip").args(["-n", &netns.name, "link", "set", "lo", "up"]))?;
        Ok(netns)
    }

    /// The bind mount `ip netns add` made.
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// `docker-registry serve` in its namespace, storing under the scratch directory.
/// Drop kills the registry (by the pid we started) before the namespace is deleted.
struct Registry {
    process: ChildGuard,
    log: PathBuf,
    netns: Netns,
}

impl Registry {
    fn start(dir: &Path) -> Result<Self> {
        let netns = Netns::new()?;
        let storage = dir.join("registry-storage");
        std::fs::create_dir_all(&storage)?;
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: info\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: 127.0.0.1:{PORT}\n",
                storage.display()
            ),
        )?;
        let log = dir.join("registry.log");
        let log_file = std::fs::File::create(&log)?;
        // nsenter execs the registry, so the pid we hold is the registry's own.
        let process = ChildGuard::spawn(
            in_netns(
                &netns.path(),
                &[
                    "docker-registry",
                    "serve",
                    config.to_str().context("utf-8")?,
                ],
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file),
        )?;
        let mut registry = Self {
            process,
            log,
            netns,
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    /// Waits (up to 20 s) until `GET /v2/` answers 200, failing at once if the registry exits.
    fn wait_ready(&mut self) -> Result<()> {
        for _ in 0..200 {
            if let Some(status) = self.process.0.as_mut().context("reaped")?.try_wait()? {
                bail!(
                    "docker-registry exited with {status}: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(answer) = self.get("/v2/")
                && answer.status == 200
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "docker-registry not ready on 127.0.0.1:{PORT} after 20 s: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }

    /// One HTTP/1.1 GET against the registry, from a thread inside its namespace.
    fn get(&self, path: &str) -> Result<HttpAnswer> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nAccept: {MANIFEST_ACCEPT}\r\n\
             Connection: close\r\n\r\n"
        );
        let raw = in_netns_thread(&self.netns.path(), move || {
            let mut stream = TcpStream::connect(("127.0.0.1", PORT))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw)?;
            Ok(raw)
        })?;
        HttpAnswer::parse(&raw).with_context(|| format!("GET {path}"))
    }

    /// Runs `skopeo` in the registry's namespace with the private settings of `env`.
    fn skopeo(&self, env: &SkopeoEnv, args: &[&str]) -> Result<Vec<u8>> {
        let mut argv = vec!["skopeo", "--policy", env.policy.to_str().context("utf-8")?];
        argv.extend_from_slice(args);
        let mut command = in_netns(&self.netns.path(), &argv);
        command
            .env("XDG_RUNTIME_DIR", &env.runtime_dir)
            .env("REGISTRY_AUTH_FILE", &env.auth_file)
            .env("TMPDIR", &env.tmp_dir)
            .stdin(Stdio::null());
        Ok(run_ok(&mut command)?.stdout)
    }

    /// `docker://` reference of `tag` in our repository.
    fn reference(tag: &str) -> String {
        format!("docker://127.0.0.1:{PORT}/{REPO}:{tag}")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Kill and reap the registry (pid we started) before the namespace goes.
        if let Some(mut child) = self.process.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `self.netns` is dropped after this, deleting the namespace.
    }
}

/// Where skopeo keeps its policy, auth file, runtime dir and big temporary files.
struct SkopeoEnv {
    policy: PathBuf,
    auth_file: PathBuf,
    runtime_dir: PathBuf,
    tmp_dir: PathBuf,
}

impl SkopeoEnv {
    fn new(dir: &Path) -> Result<Self> {
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        let runtime_dir = dir.join("xdg-runtime");
        let tmp_dir = dir.join("tmp");
        for d in [&runtime_dir, &tmp_dir] {
            std::fs::create_dir_all(d)?;
        }
        Ok(Self {
            policy,
            auth_file: dir.join("auth.json"),
            runtime_dir,
            tmp_dir,
        })
    }
}

/// A parsed HTTP/1.1 response (Content-Length bodies only, which is what the registry sends
/// for manifests and filesystem blobs).
struct HttpAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpAnswer {
    fn parse(raw: &[u8]) -> Result<Self> {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .context("no end of headers")?;
        let head = std::str::from_utf8(&raw[..split]).context("headers not UTF-8")?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().context("no status line")?;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .context("no status code")?
            .parse()
            .with_context(|| format!("status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let answer = Self {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        };
        if answer.header("transfer-encoding").is_some() {
            bail!("chunked answer not expected: {head}");
        }
        if let Some(length) = answer.header("content-length") {
            let length: usize = length.parse()?;
            if length != answer.body.len() {
                bail!(
                    "body of {} bytes, Content-Length {length}",
                    answer.body.len()
                );
            }
        }
        Ok(answer)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What `pause-image` printed.
struct Built {
    layout: PathBuf,
    archive: PathBuf,
    report: Value,
}

impl Built {
    fn digest(&self, key: &str) -> &str {
        self.report[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key} missing in {}", self.report))
    }

    /// The bytes of a blob of the local layout.
    fn blob(&self, digest: &str) -> Vec<u8> {
        blob_in(&self.layout, digest)
    }
}

/// The bytes of blob `digest` in the OCI layout `layout`.
fn blob_in(layout: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let path = layout.join("blobs/sha256").join(hex);
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// `sha256:<hex>` of `data`, computed by coreutils' `sha256sum` (independent of our code).
fn sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let out = String::from_utf8(output.stdout).unwrap();
    format!("sha256:{}", out.split_whitespace().next().unwrap())
}

fn build_image(dir: &Path) -> Built {
    let layout = dir.join("layout");
    let archive = dir.join("pause.oci.tar");
    let output = run_ok(
        Command::new(pause_image_bin())
            .arg("--pause")
            .arg(pause_binary())
            .arg("--layout")
            .arg(&layout)
            .arg("--archive")
            .arg(&archive),
    )
    .expect("pause-image");
    let report: Value = serde_json::from_slice(&output.stdout).expect("pause-image prints JSON");
    Built {
        layout,
        archive,
        report,
    }
}

#[test]
fn digests_survive_a_push_to_a_real_registry_and_back() {
    if !require_root("digests_survive_a_push_to_a_real_registry_and_back") {
        return;
    }
    let scratch = ScratchDir::new("reg").unwrap();
    let built = build_image(scratch.path());
    let manifest_digest = built.digest("manifest_digest").to_string();
    let index_digest = built.digest("index_digest").to_string();
    let config_digest = built.digest("config_digest").to_string();
    let layer_digest = built.digest("layer_digest").to_string();
    let diff_id = built.digest("diff_id").to_string();

    // What the local layout holds is what was printed.
    let local_manifest = built.blob(&manifest_digest);
    assert_eq!(sha256(&local_manifest), manifest_digest);
    let manifest: Value = serde_json::from_slice(&local_manifest).unwrap();
    assert_eq!(manifest["config"]["digest"], config_digest.as_str());
    assert_eq!(manifest["layers"][0]["digest"], layer_digest.as_str());
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let local_config = built.blob(&config_digest);
    let local_layer = built.blob(&layer_digest);
    assert_eq!(sha256(&local_config), config_digest);
    assert_eq!(sha256(&local_layer), layer_digest);
    let config: Value = serde_json::from_slice(&local_config).unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"],
        serde_json::json!([diff_id.as_str()])
    );

    let registry = Registry::start(scratch.path()).unwrap();
    let env = SkopeoEnv::new(scratch.path()).unwrap();
    let archive = format!("oci-archive:{}", built.archive.display());

    // Push the linux/<arch> image (what a node pulls), as the bug report did.
    let tagged = Registry::reference("test");
    registry
        .skopeo(
            &env,
            &["copy", "--dest-tls-verify=false", &archive, &tagged],
        )
        .unwrap();

    // skopeo's view: the raw manifest in the registry is our manifest, byte for byte.
    let raw = registry
        .skopeo(&env, &["inspect", "--raw", "--tls-verify=false", &tagged])
        .unwrap();
    assert_eq!(
        sha256(&raw),
        manifest_digest,
        "the registry holds another manifest: {}",
        String::from_utf8_lossy(&raw)
    );
    assert!(raw == local_manifest, "manifest bytes differ");
    let inspect: Value = serde_json::from_slice(
        &registry
            .skopeo(&env, &["inspect", "--tls-verify=false", &tagged])
            .unwrap(),
    )
    .unwrap();
    assert_eq!(inspect["Digest"], manifest_digest.as_str(), "{inspect}");
    assert_eq!(
        inspect["Layers"],
        serde_json::json!([layer_digest.as_str()]),
        "{inspect}"
    );

    // The registry's own view, over its HTTP API.
    let answer = registry.get(&format!("/v2/{REPO}/manifests/test")).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("docker-content-digest"),
        Some(manifest_digest.as_str())
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/vnd.oci.image.manifest.v1+json")
    );
    assert!(answer.body == local_manifest, "manifest bytes differ");
    for (digest, local) in [
        (&config_digest, &local_config),
        (&layer_digest, &local_layer),
    ] {
        let blob = registry.get(&format!("/v2/{REPO}/blobs/{digest}")).unwrap();
        assert_eq!(blob.status, 200, "blob {digest}");
        assert_eq!(blob.header("docker-content-digest"), Some(digest.as_str()));
        assert!(blob.body == *local, "registry blob {digest} differs");
    }
    // The manifest is also there under our digest.
    let by_digest = registry
        .get(&format!("/v2/{REPO}/manifests/{manifest_digest}"))
        .unwrap();
    assert_eq!(by_digest.status, 200);
    assert!(
        by_digest.body == local_manifest,
        "manifest by digest differs"
    );

    // Pull it back into a fresh layout: every blob is byte-identical to ours.
    let back = scratch.path().join("pulled");
    registry
        .skopeo(
            &env,
            &[
                "copy",
                "--src-tls-verify=false",
                &tagged,
                &format!("oci:{}:test", back.display()),
            ],
        )
        .unwrap();
    let index: Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], manifest_digest.as_str());
    for digest in [&manifest_digest, &config_digest, &layer_digest] {
        assert!(
            blob_in(&back, digest) == built.blob(digest),
            "pulled-back blob {digest} differs"
        );
    }
    let mut pulled: Vec<String> = std::fs::read_dir(back.join("blobs/sha256"))
        .unwrap()
        .map(|e| format!("sha256:{}", e.unwrap().file_name().to_string_lossy()))
        .collect();
    pulled.sort();
    let mut expected = vec![
        manifest_digest.clone(),
        config_digest.clone(),
        layer_digest.clone(),
    ];
    expected.sort();
    assert_eq!(pulled, expected, "the pulled-back layout holds other blobs");

    // With --all the nested per-platform index goes too, and keeps its digest.
    let all = Registry::reference("all");
    registry
        .skopeo(
            &env,
            &["copy", "--all", "--dest-tls-verify=false", &archive, &all],
        )
        .unwrap();
    let raw_index = registry
        .skopeo(&env, &["inspect", "--raw", "--tls-verify=false", &all])
        .unwrap();
    assert_eq!(sha256(&raw_index), index_digest);
    let answer = registry.get(&format!("/v2/{REPO}/manifests/all")).unwrap();
    assert_eq!(
        answer.header("docker-content-digest"),
        Some(index_digest.as_str())
    );
    assert!(
        answer.body == built.blob(&index_digest),
        "index bytes differ"
    );
}
