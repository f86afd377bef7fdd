//! Small files under `/proc` (sysctls, a process's `stat`, `cmdline`, `environ`, `comm`),
//! read with plain `read` calls: `std::fs::read` and `read_to_string` first ask `statx` for
//! a size, which these files do not have (a path walk and a system call per read, several
//! per create).

use std::io::{ErrorKind, Read};

/// The bytes of the small `/proc` file `path`.
pub(crate) fn read_bytes(path: &str) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let mut bytes = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => return Ok(bytes),
            Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The text of the small `/proc` file `path`.
pub(crate) fn read_text(path: &str) -> std::io::Result<String> {
    String::from_utf8(read_bytes(path)?).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_longer_than_one_chunk_are_read_whole_and_missing_ones_are_not_found() {
        // /proc/self/status is over 1 KiB, more than one 512-byte read. Both reads are of the
        // calling thread's group, whose status only changes in its counters: compare lines
        // that stay.
        let ours = read_text("/proc/self/status").unwrap();
        let std = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(ours.len() > 512, "{ours}");
        assert_eq!(ours.lines().count(), std.lines().count());
        assert_eq!(ours.lines().next(), std.lines().next());
        // cmdline holds NUL bytes: the bytes as they are.
        let cmdline = read_bytes("/proc/self/cmdline").unwrap();
        assert_eq!(cmdline, std::fs::read("/proc/self/cmdline").unwrap());
        let missing = read_text("/proc/sys/net/nh-no-such-sysctl").unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }
}
