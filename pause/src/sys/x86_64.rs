//! x86_64: the process entry point and raw `syscall` instruction wrappers.

use core::arch::{asm, global_asm};

pub const SYS_WRITE: usize = 1;
pub const SYS_RT_SIGPROCMASK: usize = 14;
pub const SYS_WAIT4: usize = 61;
pub const SYS_RT_SIGTIMEDWAIT: usize = 128;
pub const SYS_PRCTL: usize = 157;
pub const SYS_EXIT_GROUP: usize = 231;

// The kernel enters here with argc at [rsp] and argv right above it. Clear the frame pointer
// (end of the call chain), align the stack as the SysV ABI requires, and call into Rust.
global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, [rsp]",
    "lea rsi, [rsp + 8]",
    "and rsp, -16",
    "call {start}",
    "ud2",
    start = sym crate::start,
);

/// One-argument system call.
///
/// # Safety
/// The arguments must be valid for system call `number`.
pub unsafe fn syscall1(number: usize, a1: usize) -> isize {
    // SAFETY: forwarded to the caller; `syscall` clobbers rcx and r11 only.
    unsafe { syscall4(number, a1, 0, 0, 0) }
}

/// Two-argument system call.
///
/// # Safety
/// The arguments must be valid for system call `number`.
pub unsafe fn syscall2(number: usize, a1: usize, a2: usize) -> isize {
    // SAFETY: forwarded to the caller.
    unsafe { syscall4(number, a1, a2, 0, 0) }
}

/// Three-argument system call.
///
/// # Safety
/// The arguments must be valid for system call `number`.
pub unsafe fn syscall3(number: usize, a1: usize, a2: usize, a3: usize) -> isize {
    // SAFETY: forwarded to the caller.
    unsafe { syscall4(number, a1, a2, a3, 0) }
}

/// Four-argument system call; returns the raw result (negative errno on failure).
///
/// # Safety
/// The arguments must be valid for system call `number`.
pub unsafe fn syscall4(number: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let result: isize;
    // SAFETY: the Linux x86_64 syscall ABI: number in rax, arguments in rdi, rsi, rdx, r10;
    // result in rax; rcx and r11 are clobbered. Memory validity is the caller's contract.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") number as isize => result,
            in("rdi") a1,
            in("rsi") a2,
            in("rdx") a3,
            in("r10") a4,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result
}
