//! `pause`: the process that holds a pod's namespaces open.
//!
//! It blocks every signal, makes itself a child subreaper (a no-op as PID 1, where the kernel
//! already reparents orphans to it), and then sleeps in `rt_sigtimedwait` for exactly three
//! signals: SIGCHLD reaps every exited child, SIGINT and SIGTERM end it with status 0. Every
//! other catchable signal stays blocked and pending, so it can neither end nor wake the pause.
//! While idle it makes no system calls at all.
//!
//! `#![no_std]` and `#![no_main]`: no libc, no std, our own `_start` and syscall layer, so the
//! stripped binary is a few hundred bytes of code and the resident set is a handful of pages.

#![no_std]
#![no_main]

mod sys;

use sys::{SIGCHLD, SIGINT, SIGTERM, SignalSet};

/// `pause <version>` for `-v` / `--version`.
const VERSION_LINE: &[u8] = concat!("pause ", env!("CARGO_PKG_VERSION"), "\n").as_bytes();
/// The one-line usage printed for any argument we do not know.
const USAGE_LINE: &[u8] = b"usage: pause [-v|--version]\n";
/// Exit status for a usage error, as BSD `sysexits`/GNU tools use for bad arguments.
const EXIT_USAGE: i32 = 2;

/// Called by the per-architecture `_start` with the kernel's argc/argv.
///
/// # Safety
/// `argv` must point at `argc` valid pointers to NUL-terminated strings, as the kernel
/// lays them out on the initial stack.
unsafe extern "C" fn start(argc: usize, argv: *const *const u8) -> ! {
    if argc <= 1 {
        hold()
    }
    if argc == 2 {
        // SAFETY: argc == 2, so argv[1] exists and is a NUL-terminated string (caller contract).
        let arg = unsafe { *argv.add(1) };
        // SAFETY: `arg` is a NUL-terminated string from the kernel.
        if unsafe { c_str_eq(arg, b"-v") || c_str_eq(arg, b"--version") } {
            sys::write_all(sys::STDOUT, VERSION_LINE);
            sys::exit(0)
        }
    }
    sys::write_all(sys::STDERR, USAGE_LINE);
    sys::exit(EXIT_USAGE)
}

/// Whether the NUL-terminated string at `c_str` equals `expected` exactly.
///
/// # Safety
/// `c_str` must point at a NUL-terminated string.
unsafe fn c_str_eq(c_str: *const u8, expected: &[u8]) -> bool {
    for (offset, want) in expected.iter().enumerate() {
        // SAFETY: every byte before the first mismatch or NUL is inside the string; we stop
        // at the first byte that differs from `expected`, and `expected` has no NUL.
        if unsafe { *c_str.add(offset) } != *want {
            return false;
        }
    }
    // SAFETY: all bytes up to `expected.len()` matched non-NUL bytes, so this one is in bounds.
    unsafe { *c_str.add(expected.len()) == 0 }
}

/// Hold the namespaces: block all signals, then wait for the three we act on, forever.
fn hold() -> ! {
    sys::set_blocked_signals(&SignalSet::ALL);
    // As PID 1 this changes nothing; otherwise orphans of our descendants come to us to reap.
    sys::set_child_subreaper();
    // Children may have exited before we started (exec after fork); their SIGCHLD is gone.
    reap_exited_children();
    let awaited = SignalSet::EMPTY.with(SIGCHLD).with(SIGINT).with(SIGTERM);
    loop {
        match sys::wait_for_signal(&awaited) {
            SIGINT | SIGTERM => sys::exit(0),
            // SIGCHLD, or an interruption (e.g. SIGSTOP/SIGCONT): reaping is always safe.
            _ => reap_exited_children(),
        }
    }
}

/// Reap every child that has exited; SIGCHLD coalesces, so one signal may stand for many.
fn reap_exited_children() {
    while sys::reap_one_exited_child() {}
}

#[panic_handler]
fn on_panic(_: &core::panic::PanicInfo) -> ! {
    // Nothing above can panic (no indexing, no arithmetic overflow); exit loudly just in case.
    sys::exit(127)
}

/// The precompiled `core` is built for unwinding and its unwind tables name this symbol;
/// with `panic = "abort"` nothing ever unwinds, so it is never called, only linked.
#[unsafe(no_mangle)]
extern "C" fn rust_eh_personality() {}
