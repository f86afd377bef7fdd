//! Builds the pause container image as an OCI image layout and an `oci-archive` tarball.
//!
//! Everything is produced in memory by our own code (no docker, buildah or skopeo at build
//! time) and is byte-for-byte reproducible: no timestamps, host names, user names or paths
//! from the build environment end up in any blob, so the same pause binary always yields the
//! same digests.
//!
//! The pieces:
//! - [`arch`]: which OCI architecture the pause binary is for (read from its ELF header).
//! - [`tarball`]: a tiny deterministic ustar writer used for the layer and the archive, and
//!   the deterministic gzip of the layer.
//! - [`image`]: the layer, config, manifest and index blobs, and writing the layout and the
//!   archive to disk.

pub mod arch;
pub mod image;
pub mod tarball;

use std::path::PathBuf;

pub use image::{BuildOptions, OciImage};

/// Everything that can go wrong while building or writing the image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file or directory failed.
    #[error("{op} {}", path.display())]
    Io {
        /// What we were doing (`"reading"`, `"writing"`, ...).
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Building an in-memory tar stream failed.
    #[error("building the {what} tar")]
    Tar {
        /// Which tar (`"layer"` or `"archive"`).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Compressing a blob failed.
    #[error("gzip-compressing the {what}")]
    Gzip {
        /// Which blob (`"layer"`).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An OCI object could not be built.
    #[error("building the OCI {what}")]
    Spec {
        /// Which object (`"config"`, `"manifest"`, ...).
        what: &'static str,
        /// The underlying error.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// An OCI object could not be serialized to JSON.
    #[error("serializing the OCI {what}")]
    Json {
        /// Which object.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The architecture could not be determined or is not one we know.
    #[error("{0}")]
    Arch(String),
    /// The image reference name given for `org.opencontainers.image.ref.name` is unusable.
    #[error(
        "invalid image name {0:?}: must be non-empty and free of whitespace and control characters"
    )]
    RefName(String),
    /// An output path has no final name component (`.`, `..`, `/`), so it cannot be
    /// replaced atomically through a sibling temporary.
    #[error("{}: output paths must end in a file or directory name", .0.display())]
    NoFileName(PathBuf),
    /// The layout directory exists but does not look like an OCI layout we may replace.
    #[error(
        "refusing to replace {}: it exists, is not empty and holds no oci-layout file",
        .0.display()
    )]
    NotALayout(PathBuf),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
