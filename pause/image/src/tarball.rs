//! A deterministic tar writer: every header is built explicitly (ustar, mtime 0, uid/gid 0,
//! no user or group names), so the bytes depend only on the entries' paths and contents.

use tar::{EntryType, Header};

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
}
