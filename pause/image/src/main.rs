//! `pause-image`: builds the pause OCI image layout and `oci-archive` from the static pause
//! binary, reproducibly and without any container tooling.
//!
//! ```text
//! pause-image --pause target/pause/pause --layout target/image/layout \
//!             --archive target/image/pause.oci.tar [--name REF] [--arch ARCH]
//! ```
//!
//! On success it prints one JSON line:
//! `{"layout":...,"archive":...,"manifest_digest":...,"index_digest":...,"config_digest":...,
//! "layer_digest":...,"diff_id":...}`.
//!
//! `manifest_digest` is the linux/<arch> image manifest, which is also the digest a registry
//! reports after `skopeo copy oci-archive:... docker://...` (the layer is already gzipped, so
//! the push keeps every blob as it is); `index_digest` is the nested image index that
//! `index.json` points to (see `pause_image::image` for the layout shape); `layer_digest` is
//! the gzip layer blob and `diff_id` the uncompressed tar inside it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use pause_image::{BuildOptions, OciImage, arch, image::default_ref_name};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Builds the pause OCI image layout and oci-archive, reproducibly"
)]
struct Cli {
    /// The static pause binary to put at /pause.
    #[arg(long, value_name = "PATH")]
    pause: PathBuf,
    /// Directory to write the OCI image layout to (replaced if it already holds a layout).
    #[arg(long, value_name = "DIR")]
    layout: PathBuf,
    /// File to write the oci-archive (a tar of the layout) to.
    #[arg(long, value_name = "FILE")]
    archive: PathBuf,
    /// Image reference stored as org.opencontainers.image.ref.name
    /// [default: localhost/netns-holder/pause:<version>].
    #[arg(long, value_name = "REF")]
    name: Option<String>,
    /// Architecture (Go name such as amd64/arm64, or x86_64/aarch64)
    /// [default: from the pause binary's ELF header].
    #[arg(long, value_name = "ARCH")]
    arch: Option<String>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let pause = std::fs::read(&cli.pause)
        .with_context(|| format!("reading the pause binary {}", cli.pause.display()))?;
    if pause.is_empty() {
        bail!("the pause binary {} is empty", cli.pause.display());
    }
    let detected = arch::from_elf(&pause);
    let arch = match &cli.arch {
        Some(given) => {
            let arch = arch::normalize(given).context("--arch")?;
            if let Ok(detected) = detected
                && detected != arch
            {
                eprintln!(
                    "pause-image: warning: {} is an {detected} binary but --arch says {arch}",
                    cli.pause.display()
                );
            }
            arch
        }
        None => detected.with_context(|| format!("architecture of {}", cli.pause.display()))?,
    };
    let options = BuildOptions {
        pause,
        arch: arch.to_string(),
        ref_name: cli.name.clone().unwrap_or_else(default_ref_name),
    };
    let image = OciImage::build(&options).context("building the image")?;
    image
        .write_layout(&cli.layout)
        .with_context(|| format!("writing the OCI layout {}", cli.layout.display()))?;
    image
        .write_archive(&cli.archive)
        .with_context(|| format!("writing the oci-archive {}", cli.archive.display()))?;

    let report = serde_json::json!({
        "layout": absolute(&cli.layout),
        "archive": absolute(&cli.archive),
        "manifest_digest": image.manifest_digest(),
        "index_digest": image.index_digest(),
        "config_digest": image.config_digest(),
        "layer_digest": image.layer_digest(),
        "diff_id": image.diff_id(),
    });
    println!("{report}");
    Ok(())
}

/// The canonical path when it resolves, else the path as given.
fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
