//! The OCI (Go `GOARCH`) architecture name of the pause binary.
//!
//! The image must describe the binary it carries, not the machine that happens to run the
//! builder, so by default the architecture comes from the binary's ELF header (`e_machine`);
//! `--arch` overrides it.

use crate::{Error, Result};

/// `e_machine` values (from `<elf.h>`) and the Go architecture names they correspond to.
/// 64-bit little-endian only except where noted: the pause is built for these targets.
const ELF_MACHINES: &[(u16, u8, u8, &str)] = &[
    // (e_machine, EI_CLASS, EI_DATA, GOARCH); class 2 = 64-bit, data 1 = LE, 2 = BE.
    (62, 2, 1, "amd64"),    // EM_X86_64
    (183, 2, 1, "arm64"),   // EM_AARCH64
    (243, 2, 1, "riscv64"), // EM_RISCV
    (21, 2, 1, "ppc64le"),  // EM_PPC64, little-endian
    (22, 2, 2, "s390x"),    // EM_S390, 64-bit
    (258, 2, 1, "loong64"), // EM_LOONGARCH
    (3, 1, 1, "386"),       // EM_386
    (40, 1, 1, "arm"),      // EM_ARM, little-endian
];

/// The Go architecture name for an ELF binary, from its header.
///
/// Returns [`Error::Arch`] when `binary` is not ELF or is for a machine not in the table.
pub fn from_elf(binary: &[u8]) -> Result<&'static str> {
    if binary.len() < 20 || &binary[..4] != b"\x7fELF" {
        return Err(Error::Arch(
            "the pause binary is not an ELF file: cannot tell its architecture (pass --arch)"
                .into(),
        ));
    }
    let class = binary[4];
    let data = binary[5];
    let machine = match data {
        1 => u16::from_le_bytes([binary[18], binary[19]]),
        2 => u16::from_be_bytes([binary[18], binary[19]]),
        other => {
            return Err(Error::Arch(format!(
                "ELF header has unknown byte order {other}"
            )));
        }
    };
    ELF_MACHINES
        .iter()
        .find(|&&(m, c, d, _)| m == machine && c == class && d == data)
        .map(|&(.., arch)| arch)
        .ok_or_else(|| {
            Error::Arch(format!(
                "unknown ELF machine {machine} (class {class}, byte order {data}): pass --arch"
            ))
        })
}

/// Normalizes a user-supplied architecture: Rust/GNU names (`x86_64`, `aarch64`, ...) become
/// Go names (`amd64`, `arm64`, ...); Go names pass through.
///
/// Returns [`Error::Arch`] for names that are neither.
pub fn normalize(arch: &str) -> Result<&'static str> {
    let go = match arch {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "riscv64" | "riscv64gc" => "riscv64",
        "powerpc64le" | "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "loongarch64" | "loong64" => "loong64",
        "x86" | "i386" | "i686" | "386" => "386",
        "arm" => "arm",
        other => {
            return Err(Error::Arch(format!(
                "unknown architecture {other:?} (use a Go name such as amd64 or arm64)"
            )));
        }
    };
    Ok(go)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elf_header(class: u8, data: u8, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        let m = if data == 2 {
            machine.to_be_bytes()
        } else {
            machine.to_le_bytes()
        };
        h[18..20].copy_from_slice(&m);
        h
    }

    #[test]
    fn elf_machines_map_to_go_names() {
        assert_eq!(from_elf(&elf_header(2, 1, 62)).unwrap(), "amd64");
        assert_eq!(from_elf(&elf_header(2, 1, 183)).unwrap(), "arm64");
        assert_eq!(from_elf(&elf_header(2, 2, 22)).unwrap(), "s390x");
        assert!(from_elf(&elf_header(2, 1, 9999)).is_err());
        assert!(from_elf(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn rust_names_normalize_to_go_names() {
        assert_eq!(normalize("x86_64").unwrap(), "amd64");
        assert_eq!(normalize("aarch64").unwrap(), "arm64");
        assert_eq!(normalize("arm64").unwrap(), "arm64");
        assert!(normalize("vax").is_err());
    }
}
