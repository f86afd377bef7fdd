//! Link `pause` as a fully static executable with no C runtime: our own `_start`, no libc,
//! no interpreter, no PIE relocations to apply at run time, and nothing the loader does not need.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let args = [
        // No crt1.o/crti.o: `_start` is ours (see src/sys).
        "-nostartfiles",
        // No libc, libgcc or libm.
        "-nostdlib",
        "-static",
        // rustc asks for PIE; a static non-PIE needs no self-relocation at start-up.
        "-no-pie",
        "-Wl,--gc-sections",
        "-Wl,--build-id=none",
        // Nothing is writable after start-up, so RELRO only costs a page-aligned segment.
        "-Wl,-z,norelro",
        // Do not pad code to its own page-aligned segment.
        "-Wl,-z,noseparate-code",
        "-Wl,-z,noexecstack",
        // One read+execute segment for headers, rodata and code: one resident page, not two.
        "-Wl,--no-rosegment",
    ];
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
