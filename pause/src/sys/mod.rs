//! The few Linux system calls `pause` makes, on top of a per-architecture raw syscall layer.
//!
//! Each architecture module provides `_start` (which calls `crate::start(argc, argv)`),
//! `syscall1`..`syscall4`, and the syscall numbers; everything here is architecture-neutral.
//! Adding an architecture means adding one such module (aarch64: `svc 0`, number in `x8`,
//! arguments in `x0`..`x5`, and its `asm-generic` syscall numbers).

#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
use x86_64 as arch;

#[cfg(not(target_arch = "x86_64"))]
compile_error!("pause: no syscall layer for this architecture yet (see src/sys/mod.rs)");

/// File descriptor 1.
pub const STDOUT: usize = 1;
/// File descriptor 2.
pub const STDERR: usize = 2;

/// SIGINT (same number on every Linux architecture).
pub const SIGINT: isize = 2;
/// SIGCHLD (17 on x86 and the asm-generic architectures).
pub const SIGCHLD: isize = 17;
/// SIGTERM.
pub const SIGTERM: isize = 15;

const SIG_SETMASK: usize = 2;
const PR_SET_CHILD_SUBREAPER: usize = 36;
const WNOHANG: usize = 1;
/// Also reap children that were created with a non-SIGCHLD exit signal (clone threads etc).
const WALL: usize = 0x4000_0000;
const EINTR: isize = 4;

/// The kernel's `sigset_t`: one bit per signal, signal N at bit N-1.
#[repr(transparent)]
pub struct SignalSet(u64);

impl SignalSet {
    /// No signals.
    pub const EMPTY: Self = Self(0);
    /// Every signal (the kernel silently leaves SIGKILL and SIGSTOP out of a block mask).
    pub const ALL: Self = Self(u64::MAX);

    /// This set plus `signal`.
    pub const fn with(self, signal: isize) -> Self {
        Self(self.0 | 1 << (signal - 1))
    }
}

/// Size of the kernel's `sigset_t`, which the `rt_sig*` calls insist on.
const SIGSET_SIZE: usize = core::mem::size_of::<SignalSet>();

/// Write all of `bytes` to `fd`, giving up silently on error (there is nobody to tell).
pub fn write_all(fd: usize, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: the pointer and length describe a live byte slice the kernel only reads.
        let written =
            unsafe { arch::syscall3(arch::SYS_WRITE, fd, bytes.as_ptr() as usize, bytes.len()) };
        if written == -EINTR {
            continue;
        }
        if written <= 0 {
            return;
        }
        bytes = bytes.get(written as usize..).unwrap_or(&[]);
    }
}

/// End the process (all threads) with `status`.
pub fn exit(status: i32) -> ! {
    // SAFETY: exit_group takes a plain integer and does not return.
    unsafe {
        arch::syscall1(arch::SYS_EXIT_GROUP, status as usize);
    }
    // exit_group cannot fail; this only satisfies the type checker without a panic path.
    #[allow(clippy::empty_loop)]
    loop {}
}

/// Replace the blocked-signal mask with `set`.
pub fn set_blocked_signals(set: &SignalSet) {
    // SAFETY: `set` is a valid sigset of SIGSET_SIZE bytes; the old-mask pointer is NULL.
    unsafe {
        arch::syscall4(
            arch::SYS_RT_SIGPROCMASK,
            SIG_SETMASK,
            set as *const SignalSet as usize,
            0,
            SIGSET_SIZE,
        );
    }
}

/// `prctl(PR_SET_CHILD_SUBREAPER, 1)`.
pub fn set_child_subreaper() {
    // SAFETY: plain integer arguments.
    unsafe {
        arch::syscall2(arch::SYS_PRCTL, PR_SET_CHILD_SUBREAPER, 1);
    }
}

/// Sleep until one of `set` (which must be blocked) is pending and take it; returns the
/// signal number, or a negative errno (EINTR after a stop/continue).
pub fn wait_for_signal(set: &SignalSet) -> isize {
    // SAFETY: `set` is a valid sigset; NULL siginfo and NULL timeout (wait forever) are allowed.
    unsafe {
        arch::syscall4(
            arch::SYS_RT_SIGTIMEDWAIT,
            set as *const SignalSet as usize,
            0,
            0,
            SIGSET_SIZE,
        )
    }
}

/// Reap one exited child without blocking; false when none is left to reap right now.
pub fn reap_one_exited_child() -> bool {
    // SAFETY: pid -1 (any child), NULL status and NULL rusage are all allowed.
    let pid = unsafe { arch::syscall4(arch::SYS_WAIT4, -1isize as usize, 0, WNOHANG | WALL, 0) };
    pid > 0 || pid == -EINTR
}
