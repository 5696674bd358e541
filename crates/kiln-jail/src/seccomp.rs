//! The worker's system-call allow-list: reviewed data, one line per call.
//!
//! Anything not listed kills the whole process (`SECCOMP_RET_KILL_PROCESS`):
//! a compromised engine cannot open files, create sockets, start programs or
//! processes, trace, or use io_uring. Calls that take a file descriptor are
//! limited to the IPC channel (fd 3) and stderr (fd 2) where they can be.
//!
//! When a new legitimate need appears (an engine upgrade allocating
//! differently, say), add it here with its reason, and run the malicious
//! program tests: they prove the forbidden calls still kill.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};

use crate::{IPC_FD, JailError};

/// How a listed call may be used.
enum Use {
    /// Any arguments.
    Any,
    /// Only on these file descriptors (first argument).
    OnFds(&'static [u64]),
}

/// The allow-list. Each entry: the call, how it may be used, and why.
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[(libc::c_long, Use, &str)] = &[
    // The IPC channel: frames in and out, and stderr for a last message.
    (libc::SYS_read, Use::OnFds(&[IPC_FD as u64]), "read frames from the server"),
    (libc::SYS_recvfrom, Use::OnFds(&[IPC_FD as u64]), "std reads sockets with recv"),
    (libc::SYS_write, Use::OnFds(&[IPC_FD as u64, 2]), "write frames; stderr for a fatal message"),
    (libc::SYS_sendto, Use::OnFds(&[IPC_FD as u64]), "std may write sockets with send"),
    (libc::SYS_poll, Use::Any, "wait for a host reply with a timeout"),
    (libc::SYS_ppoll, Use::Any, "as poll, on newer libc"),
    // Memory: the engine's heap, through malloc.
    (libc::SYS_brk, Use::Any, "grow the heap"),
    (libc::SYS_mmap, Use::Any, "large allocations and malloc arenas"),
    (libc::SYS_munmap, Use::Any, "free them"),
    (libc::SYS_mremap, Use::Any, "realloc of large blocks"),
    (libc::SYS_madvise, Use::Any, "malloc returns memory to the kernel"),
    (libc::SYS_mprotect, Use::Any, "malloc arena setup"),
    // Time: deadlines, timers, Date and performance.now().
    (libc::SYS_clock_gettime, Use::Any, "clocks (when the vDSO falls back)"),
    (libc::SYS_gettimeofday, Use::Any, "Date.now (when the vDSO falls back)"),
    (libc::SYS_clock_nanosleep, Use::Any, "sleep until the next timer"),
    (libc::SYS_nanosleep, Use::Any, "sleep until the next timer"),
    // Randomness: crypto.getRandomValues / randomUUID.
    (libc::SYS_getrandom, Use::Any, "the kernel's CSPRNG"),
    // Locks inside the standard library (the worker is single-threaded, but
    // std's once-cells and mutexes still use futex on contention paths).
    (libc::SYS_futex, Use::Any, "std synchronisation"),
    (libc::SYS_sched_yield, Use::Any, "spin-lock back-off"),
    // Leaving.
    (libc::SYS_exit, Use::Any, "thread exit"),
    (libc::SYS_exit_group, Use::Any, "process exit"),
    (libc::SYS_rt_sigreturn, Use::Any, "return from a signal handler"),
    (libc::SYS_sigaltstack, Use::Any, "std tears down the main thread's signal stack at exit"),
];

/// The calls the malicious-program tests prove are killed (a sample of the
/// dangerous ones; everything unlisted is killed the same way).
pub const FORBIDDEN_EXAMPLES: &[&str] =
    &["socket", "connect", "openat", "execve", "ptrace", "io_uring_setup", "clone", "fork", "kill"];

/// Build the filter program.
pub(crate) fn program() -> Result<BpfProgram, JailError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| JailError::Seccomp(e.to_string()))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (call, usage, _why) in ALLOWED {
        let entry = match usage {
            Use::Any => Vec::new(),
            Use::OnFds(fds) => fds
                .iter()
                .map(|fd| {
                    SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *fd)
                        .and_then(|c| SeccompRule::new(vec![c]))
                        .map_err(|e| JailError::Seccomp(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        rules.insert(*call, entry);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch)
        .map_err(|e| JailError::Seccomp(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.to_string()))
}

/// Install the filter on this process. Irreversible.
pub(crate) fn install() -> Result<(), JailError> {
    let program = program()?;
    seccompiler::apply_filter(&program).map_err(|e| JailError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_builds_and_names_no_dangerous_call() {
        assert!(program().is_ok());
        for dangerous in [
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_open,
            libc::SYS_openat,
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_io_uring_setup,
            libc::SYS_clone,
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_kill,
            libc::SYS_tgkill,
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_process_vm_readv,
            libc::SYS_prctl,
        ] {
            assert!(
                !ALLOWED.iter().any(|(c, _, _)| *c == dangerous),
                "syscall {dangerous} must not be allowed"
            );
        }
    }

    #[test]
    fn every_entry_says_why() {
        assert!(ALLOWED.iter().all(|(_, _, why)| !why.is_empty()));
    }
}
