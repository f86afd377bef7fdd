//! The pause image itself: one layer holding `/pause`, its config, a manifest, an index,
//! and the two on-disk forms (an OCI image layout directory and an `oci-archive` tar of it).
//!
//! Layout shape (a nested index, ready for more architectures):
//!
//! ```text
//! index.json                      image index, one descriptor, annotated with ref.name
//!   └─ blobs/sha256/<index>       image index: one manifest descriptor per platform
//!        └─ blobs/sha256/<manif>  image manifest (descriptor carries os/architecture)
//!             ├─ config           linux/<arch>, Entrypoint ["/pause"], User 65535:65535
//!             └─ layer            gzip of a tar holding only `pause` (0755, 0:0, mtime 0)
//! ```
//!
//! Adding an architecture means adding its manifest to the nested index; `index.json` and
//! its single reference name stay as they are. This shape was checked against the tools on
//! the target machines: skopeo 1.9.3 (`inspect`, `inspect --config`, `copy` from
//! `oci:DIR[:REF]` and `oci-archive:FILE`) and podman 4.3.1 (`load`, which picks the
//! manifest for the host platform and names the image after the `ref.name` annotation).
//!
//! The layer is gzip-compressed (`application/vnd.oci.image.layer.v1.tar+gzip`) with a fixed
//! header and level ([`tarball::gzip`]), so a push keeps it as it is: an uncompressed layer
//! gets compressed by the pushing tool (`skopeo copy ... docker://`), and the digests in the
//! registry then differ from ours. The config's `rootfs.diff_ids` holds the digest of the
//! uncompressed tar, the manifest the digest of the gzip bytes.
//!
//! All blobs are built in memory (the whole image is a few KiB) and serialized with
//! `serde_json`'s compact writer over `oci-spec` types whose field order is fixed, so the
//! output is a pure function of the pause binary, the architecture and the reference name.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndexBuilder, ImageManifestBuilder, MediaType, Os, PlatformBuilder, RootFsBuilder,
    SCHEMA_VERSION, Sha256Digest,
};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::tarball::{self, Entry};
use crate::{Error, Result};

/// The annotation naming the image in `index.json` (read by `podman load` and
/// `skopeo ... oci:DIR:REF`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// The user the pause runs as: the conventional unprivileged `65535:65535` (no passwd file
/// needed, since it is numeric).
pub const PAUSE_USER: &str = "65535:65535";

/// Where the pause binary sits in the image.
pub const PAUSE_PATH: &str = "/pause";

/// The reference name used when none is given: `localhost/netns-holder/pause:<version>`.
pub fn default_ref_name() -> String {
    format!("localhost/netns-holder/pause:{}", env!("CARGO_PKG_VERSION"))
}

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The contents of the static pause binary.
    pub pause: Vec<u8>,
    /// Go architecture name (`amd64`, `arm64`, ...) for the config and the platform.
    pub arch: String,
    /// The `org.opencontainers.image.ref.name` of the image in `index.json`.
    pub ref_name: String,
}

/// A built image: every file of the OCI layout, by path relative to the layout root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciImage {
    files: BTreeMap<String, Vec<u8>>,
    layer_digest: String,
    diff_id: String,
    config_digest: String,
    manifest_digest: String,
    index_digest: String,
}

/// A sha256 over `data` as `(hex, "sha256:" + hex)`.
fn sha256(data: &[u8]) -> (String, String) {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let digest = format!("sha256:{hex}");
    (hex, digest)
}

/// Compact JSON of an OCI object.
fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|source| Error::Json { what, source })
}

/// Maps an `oci-spec` builder error into [`Error::Spec`].
fn spec(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> Error {
    move |source| Error::Spec { what, source }
}

/// Accepts any reference without whitespace or control characters; the consumers
/// (`podman load`, `skopeo`) do the real parsing.
fn check_ref_name(name: &str) -> Result<()> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::RefName(name.to_string()));
    }
    Ok(())
}

impl OciImage {
    /// Builds the image in memory.
    ///
    /// See the module docs for the layout shape.
    pub fn build(options: &BuildOptions) -> Result<Self> {
        check_ref_name(&options.ref_name)?;
        let mut blobs = BTreeMap::new();
        let mut add_blob = |media_type: MediaType, data: Vec<u8>| -> Result<(String, Descriptor)> {
            let (hex, digest) = sha256(&data);
            let sha: Sha256Digest = hex.parse().map_err(spec("digest"))?;
            let descriptor = Descriptor::new(media_type, data.len() as u64, sha);
            blobs.insert(hex, data);
            Ok((digest, descriptor))
        };

        // The layer: a tar with the single file `pause`, gzipped. The config names the
        // uncompressed tar (diff_id), the manifest the compressed blob.
        let tar = tarball::build(&[Entry::File {
            path: "pause",
            mode: 0o755,
            data: &options.pause,
        }])
        .map_err(|source| Error::Tar {
            what: "layer",
            source,
        })?;
        let (_, diff_id) = sha256(&tar);
        let layer = tarball::gzip(&tar).map_err(|source| Error::Gzip {
            what: "layer",
            source,
        })?;
        let (layer_digest, layer_descriptor) = add_blob(MediaType::ImageLayerGzip, layer)?;

        let config = image_config(&options.arch, &diff_id)?;
        let (config_digest, config_descriptor) =
            add_blob(MediaType::ImageConfig, to_json("config", &config)?)?;

        let manifest = ImageManifestBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor)
            .layers(vec![layer_descriptor])
            .build()
            .map_err(spec("manifest"))?;
        let (manifest_digest, manifest_descriptor) =
            add_blob(MediaType::ImageManifest, to_json("manifest", &manifest)?)?;

        // The per-platform index: one platform-tagged manifest descriptor per architecture.
        let platform = PlatformBuilder::default()
            .os(Os::Linux)
            .architecture(Arch::from(options.arch.as_str()))
            .build()
            .map_err(spec("platform"))?;
        let mut platform_manifest = manifest_descriptor;
        platform_manifest.set_platform(Some(platform));
        let platform_index = ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![platform_manifest])
            .build()
            .map_err(spec("image index"))?;
        let (index_digest, mut index_descriptor) = add_blob(
            MediaType::ImageIndex,
            to_json("image index", &platform_index)?,
        )?;

        // `index.json`: the layout's entry point, naming the nested index.
        index_descriptor.set_annotations(Some(HashMap::from([(
            REF_NAME_ANNOTATION.to_string(),
            options.ref_name.clone(),
        )])));
        let layout_index = ImageIndexBuilder::default()
            .schema_version(SCHEMA_VERSION)
            .media_type(MediaType::ImageIndex)
            .manifests(vec![index_descriptor])
            .build()
            .map_err(spec("index.json"))?;
        let index_json = to_json("index.json", &layout_index)?;

        let mut files: BTreeMap<String, Vec<u8>> = blobs
            .into_iter()
            .map(|(hex, data)| (format!("blobs/sha256/{hex}"), data))
            .collect();
        files.insert("index.json".into(), index_json);
        files.insert(
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        );
        Ok(Self {
            files,
            layer_digest,
            diff_id,
            config_digest,
            manifest_digest,
            index_digest,
        })
    }

    /// The files of the layout, by path relative to its root, in sorted order.
    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    /// The digest of the (gzip-compressed) layer blob (`sha256:...`), as the manifest lists it.
    pub fn layer_digest(&self) -> &str {
        &self.layer_digest
    }

    /// The digest of the uncompressed layer tar (`sha256:...`): the config's only
    /// `rootfs.diff_ids` entry.
    pub fn diff_id(&self) -> &str {
        &self.diff_id
    }

    /// The digest of the image config blob (`sha256:...`), which podman shows as the image ID.
    pub fn config_digest(&self) -> &str {
        &self.config_digest
    }

    /// The digest of the image manifest (`sha256:...`).
    pub fn manifest_digest(&self) -> &str {
        &self.manifest_digest
    }

    /// The digest of the nested image index (`sha256:...`): what a registry would store as the
    /// multi-architecture tag, and what `podman load` records as the image's digest.
    pub fn index_digest(&self) -> &str {
        &self.index_digest
    }

    /// The bytes of the blob with digest `sha256:<hex>`, if present.
    pub fn blob(&self, digest: &str) -> Option<&[u8]> {
        let hex = digest.strip_prefix("sha256:")?;
        self.files
            .get(&format!("blobs/sha256/{hex}"))
            .map(Vec::as_slice)
    }

    /// The `oci-archive`: a tar of the layout with sorted entries, directories (0755) before
    /// their contents, files 0644, all owned by 0:0 with mtime 0.
    pub fn archive(&self) -> Result<Vec<u8>> {
        let dirs: BTreeSet<String> = self
            .files
            .keys()
            .flat_map(|path| {
                path.match_indices('/')
                    .map(|(i, _)| path[..=i].to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut entries: Vec<(&str, Entry<'_>)> = dirs
            .iter()
            .map(|d| {
                (
                    d.as_str(),
                    Entry::Dir {
                        path: d,
                        mode: 0o755,
                    },
                )
            })
            .chain(self.files.iter().map(|(p, data)| {
                (
                    p.as_str(),
                    Entry::File {
                        path: p,
                        mode: 0o644,
                        data,
                    },
                )
            }))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        let entries: Vec<Entry<'_>> = entries.into_iter().map(|(_, e)| e).collect();
        tarball::build(&entries).map_err(|source| Error::Tar {
            what: "archive",
            source,
        })
    }

    /// Writes the OCI layout to `dir`, replacing a previous layout there.
    ///
    /// The layout is first written to a sibling temporary directory (removed again on failure)
    /// and then renamed into place, so `dir` never holds a half-written layout: readers see the
    /// old layout, briefly nothing, then the new one. An existing `dir` is only replaced when
    /// it is empty or holds an `oci-layout` file; anything else is [`Error::NotALayout`].
    pub fn write_layout(&self, dir: &Path) -> Result<()> {
        let tmp = sibling(dir, "tmp")?;
        let replace = match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() && !dir.join("oci-layout").is_file() {
                    return Err(Error::NotALayout(dir.to_path_buf()));
                }
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(source) => return Err(io("reading", dir, source)),
        };
        let result = self.write_files(&tmp).and_then(|()| {
            if replace {
                fs::remove_dir_all(dir).map_err(|e| io("removing", dir, e))?;
            }
            fs::rename(&tmp, dir).map_err(|e| io("renaming into place", dir, e))
        });
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result
    }

    /// Writes every file of the layout below `root`, which must not exist yet (a leftover
    /// from a crashed run with the same pid is removed first).
    fn write_files(&self, root: &Path) -> Result<()> {
        if root.exists() {
            fs::remove_dir_all(root).map_err(|e| io("removing", root, e))?;
        }
        for (path, data) in &self.files {
            let file = root.join(path);
            if let Some(parent) = file.parent() {
                fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
            }
            fs::write(&file, data).map_err(|e| io("writing", &file, e))?;
        }
        Ok(())
    }

    /// Writes the `oci-archive` to `file` (via a temporary sibling and a rename).
    pub fn write_archive(&self, file: &Path) -> Result<()> {
        let tmp = sibling(file, "tmp")?;
        let data = self.archive()?;
        let result = fs::write(&tmp, &data)
            .map_err(|e| io("writing", &tmp, e))
            .and_then(|()| fs::rename(&tmp, file).map_err(|e| io("renaming into place", file, e)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// The image config: linux/`arch`, entrypoint `/pause`, user `65535:65535`, one diff_id. No
/// `created`, no history, no environment: nothing that varies between builds.
fn image_config(arch: &str, diff_id: &str) -> Result<ImageConfiguration> {
    let config = ConfigBuilder::default()
        .entrypoint(vec![PAUSE_PATH.to_string()])
        .user(PAUSE_USER)
        .build()
        .map_err(spec("config"))?;
    let rootfs = RootFsBuilder::default()
        .typ("layers")
        .diff_ids(vec![diff_id.to_string()])
        .build()
        .map_err(spec("rootfs"))?;
    ImageConfigurationBuilder::default()
        .architecture(Arch::from(arch))
        .os(Os::Linux)
        .config(config)
        .rootfs(rootfs)
        .build()
        .map_err(spec("config"))
}

/// `dir/.name.suffix-<pid>`: a temporary path on the same file system as `path`.
fn sibling(path: &Path, suffix: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::NoFileName(path.to_path_buf()))?;
    let name = name.to_string_lossy();
    Ok(path.with_file_name(format!(".{name}.{suffix}-{}", std::process::id())))
}

/// Builds an [`Error::Io`].
fn io(op: &'static str, path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn options() -> BuildOptions {
        BuildOptions {
            pause: b"\x7fELF not really a pause".to_vec(),
            arch: "amd64".into(),
            ref_name: default_ref_name(),
        }
    }

    fn json(data: &[u8]) -> Value {
        serde_json::from_slice(data).unwrap()
    }

    #[test]
    fn two_builds_are_byte_identical() {
        let a = OciImage::build(&options()).unwrap();
        let b = OciImage::build(&options()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.archive().unwrap(), b.archive().unwrap());

        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for (image, dir) in [(&a, &da), (&b, &db)] {
            image.write_layout(&dir.path().join("layout")).unwrap();
            image.write_archive(&dir.path().join("pause.tar")).unwrap();
        }
        assert_eq!(
            fs::read(da.path().join("pause.tar")).unwrap(),
            fs::read(db.path().join("pause.tar")).unwrap()
        );
        for path in a.files().keys() {
            assert_eq!(
                fs::read(da.path().join("layout").join(path)).unwrap(),
                fs::read(db.path().join("layout").join(path)).unwrap(),
                "{path}"
            );
        }
    }

    #[test]
    fn different_input_changes_the_digest() {
        let a = OciImage::build(&options()).unwrap();
        let mut other = options();
        other.pause.push(0);
        assert_ne!(
            a.manifest_digest(),
            OciImage::build(&other).unwrap().manifest_digest()
        );
        other = options();
        other.arch = "arm64".into();
        assert_ne!(
            a.manifest_digest(),
            OciImage::build(&other).unwrap().manifest_digest()
        );
    }

    #[test]
    fn config_has_the_required_fields_and_nothing_variable() {
        let image = OciImage::build(&options()).unwrap();
        let config = json(image.blob(image.config_digest()).unwrap());
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/pause"])
        );
        assert_eq!(config["config"]["User"], "65535:65535");
        assert_eq!(config["rootfs"]["type"], "layers");
        // diff_ids name the uncompressed tar, not the gzip blob the manifest lists.
        let manifest = json(image.blob(image.manifest_digest()).unwrap());
        let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(layer_digest, image.layer_digest());
        let mut tar = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(image.blob(layer_digest).unwrap()),
            &mut tar,
        )
        .unwrap();
        assert_eq!(sha256(&tar).1, image.diff_id());
        assert_ne!(image.diff_id(), layer_digest);
        assert_eq!(
            config["rootfs"]["diff_ids"],
            serde_json::json!([image.diff_id()])
        );
        let object = config.as_object().unwrap();
        for key in ["created", "history", "author"] {
            assert!(!object.contains_key(key), "config has {key}: {config}");
        }
    }

    #[test]
    fn manifest_index_and_layer_are_wired_together() {
        let image = OciImage::build(&options()).unwrap();
        assert_eq!(
            image.files()["oci-layout"],
            br#"{"imageLayoutVersion":"1.0.0"}"#
        );

        let index = json(&image.files()["index.json"]);
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(
            index["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        let entries = index["manifests"].as_array().unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(
            entries[0]["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(entries[0]["digest"], image.index_digest());
        assert_eq!(
            entries[0]["annotations"][REF_NAME_ANNOTATION],
            default_ref_name()
        );

        let nested_bytes = image.blob(image.index_digest()).unwrap();
        assert_eq!(entries[0]["size"], nested_bytes.len());
        let nested = json(nested_bytes);
        assert_eq!(
            nested["mediaType"],
            "application/vnd.oci.image.index.v1+json"
        );
        let manifests = nested["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 1);
        let descriptor = &manifests[0];
        assert_eq!(
            descriptor["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(descriptor["digest"], image.manifest_digest());
        assert_eq!(
            descriptor["platform"],
            serde_json::json!({"architecture": "amd64", "os": "linux"})
        );
        assert!(descriptor.get("annotations").is_none());

        let manifest_bytes = image.blob(image.manifest_digest()).unwrap();
        assert_eq!(descriptor["size"], manifest_bytes.len());
        let manifest = json(manifest_bytes);
        assert_eq!(manifest["config"]["digest"], image.config_digest());
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1);
        assert_eq!(
            layers[0]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );

        // The layer is a gzip with a fixed header (mtime 0, no name, OS 255) of a tar
        // holding exactly `pause`, 0755, root-owned, mtime 0, with our bytes.
        let layer = image.blob(layers[0]["digest"].as_str().unwrap()).unwrap();
        assert_eq!(layers[0]["size"], layer.len());
        assert_eq!(layer[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer));
        let mut entries = archive.entries().unwrap();
        let mut entry = entries.next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().to_str(), Some("pause"));
        let h = entry.header().clone();
        assert_eq!(
            (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
            (0o755, 0, 0)
        );
        assert_eq!(h.mtime().unwrap(), 0);
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        assert_eq!(data, options().pause);
        assert!(entries.next().is_none());

        // Every blob is stored under its own digest.
        for (path, data) in image.files() {
            if let Some(hex) = path.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256(data).0, hex);
            }
        }
    }

    #[test]
    fn archive_is_the_sorted_layout() {
        let image = OciImage::build(&options()).unwrap();
        let archive = image.archive().unwrap();
        let mut tar = tar::Archive::new(&archive[..]);
        let mut names = Vec::new();
        for entry in tar.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            let is_dir = h.entry_type().is_dir();
            assert_eq!(h.mode().unwrap(), if is_dir { 0o755 } else { 0o644 });
            assert_eq!(
                (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
                (0, 0, 0)
            );
            names.push(String::from_utf8(entry.path_bytes().into_owned()).unwrap());
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(&names[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(names.len(), 2 + image.files().len());
    }

    #[test]
    fn write_layout_replaces_a_layout_but_not_other_directories() {
        let image = OciImage::build(&options()).unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let layout = scratch.path().join("layout");
        image.write_layout(&layout).unwrap();
        fs::write(layout.join("blobs/sha256/stale"), b"x").unwrap();
        image.write_layout(&layout).unwrap();
        assert!(!layout.join("blobs/sha256/stale").exists());

        let other = scratch.path().join("other");
        fs::create_dir(&other).unwrap();
        fs::write(other.join("precious"), b"x").unwrap();
        assert!(matches!(
            image.write_layout(&other),
            Err(Error::NotALayout(_))
        ));
        assert!(other.join("precious").exists());
        assert!(matches!(
            image.write_layout(Path::new("..")),
            Err(Error::NoFileName(_))
        ));
    }

    #[test]
    fn bad_ref_names_are_rejected() {
        let mut o = options();
        o.ref_name = "has space".into();
        assert!(matches!(OciImage::build(&o), Err(Error::RefName(_))));
    }
}
