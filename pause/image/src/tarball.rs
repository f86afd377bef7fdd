//! A deterministic tar writer: every header is built explicitly (ustar, mtime 0, uid/gid 0,
//! no user or group names), so the bytes depend only on the entries' paths and contents;
//! and a deterministic gzip for the layer (see [`gzip`]).

use std::io::Write as _;

use flate2::{Compression, GzBuilder};
use tar::{EntryType, Header};

/// The gzip header's OS byte: 255, "unknown", as Go's `compress/gzip` writes it, so the
/// bytes do not depend on the building host.
pub const GZIP_OS_UNKNOWN: u8 = 255;

/// The fixed deflate level of the layer (9, best): part of what makes the bytes reproducible.
pub const GZIP_LEVEL: u32 = 9;

/// One entry of a deterministic tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry<'a> {
    /// A directory; the path should end in `/`.
    Dir {
        /// Path inside the archive.
        path: &'a str,
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Path inside the archive.
        path: &'a str,
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: &'a [u8],
    },
}

/// Writes `entries`, in the given order, as a complete ustar archive (with the two trailing
/// zero blocks) and returns its bytes.
///
/// Paths must fit the 100-byte ustar name field; ours are at most 77 bytes
/// (`blobs/sha256/` + 64 hex digits).
pub fn build(entries: &[Entry<'_>]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (path, mode, data, kind): (&str, u32, &[u8], EntryType) = match *entry {
            Entry::Dir { path, mode } => (path, mode, &[], EntryType::Directory),
            Entry::File { path, mode, data } => (path, mode, data, EntryType::Regular),
        };
        let mut header = Header::new_ustar();
        header.set_path(path)?;
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, data)?;
    }
    builder.into_inner()
}

/// Compresses `data` as a single gzip member whose bytes depend only on `data` (and on the
/// deflate implementation pinned in `Cargo.lock`): header mtime 0, no file name, no comment,
/// no extra field, OS byte [`GZIP_OS_UNKNOWN`], level [`GZIP_LEVEL`].
///
/// Registries and `skopeo copy` keep an already gzip-compressed layer as it is, whereas an
/// uncompressed one gets compressed on push by whatever the pushing tool does, which changes
/// the layer digest and so the manifest digest.
pub fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    // GzBuilder writes exactly the fields set here; the defaults would be the same, but the
    // reproducibility must not rest on defaults.
    let mut encoder = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    encoder.write_all(data)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_deterministic_and_clean() {
        let entries = [
            Entry::Dir {
                path: "d/",
                mode: 0o755,
            },
            Entry::File {
                path: "d/f",
                mode: 0o644,
                data: b"hello",
            },
        ];
        let a = build(&entries).unwrap();
        let b = build(&entries).unwrap();
        assert_eq!(a, b);
        // 2 headers + 1 data block + 2 end blocks.
        assert_eq!(a.len(), 5 * 512);

        let mut archive = tar::Archive::new(&a[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let h = entry.header();
            assert_eq!(h.mtime().unwrap(), 0);
            assert_eq!(h.uid().unwrap(), 0);
            assert_eq!(h.gid().unwrap(), 0);
            assert_eq!(h.username().unwrap(), Some(""));
            assert_eq!(h.groupname().unwrap(), Some(""));
            seen.push((
                entry.path().unwrap().display().to_string(),
                h.mode().unwrap(),
            ));
        }
        assert_eq!(
            seen,
            [("d/".to_string(), 0o755), ("d/f".to_string(), 0o644)]
        );
    }

    #[test]
    fn gzip_header_is_fixed_and_round_trips() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let a = gzip(&data).unwrap();
        assert_eq!(a, gzip(&data).unwrap(), "two compressions differ");
        // ID1 ID2 CM=deflate FLG=none (no name, comment, extra, hcrc), MTIME 0,
        // XFL 2 (slowest, best compression), OS 255.
        assert_eq!(a[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, GZIP_OS_UNKNOWN]);
        assert!(a.len() < data.len(), "not compressed: {} bytes", a.len());
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&a[..]), &mut back).unwrap();
        assert_eq!(back, data);
        // The trailer: CRC-32 and the uncompressed length, little-endian.
        let n = a.len();
        assert_eq!(a[n - 4..], (data.len() as u32).to_le_bytes());
    }
}
