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

use crate::{IPC_FD, JailError, MAPS_FD, PAGEMAP_FD, TURN_READ_FD, TURN_WRITE_FD};

/// How a listed call may be used.
enum Use {
    /// Any arguments.
    Any,
    /// Only on these file descriptors (first argument).
    OnFds(&'static [u64]),
    /// Only on these file descriptors, and with exactly this value as the
    /// argument at this index (the flags of `recvfrom` or `recvmsg`): in
    /// particular never `MSG_PEEK`.
    OnFdsWithArg(&'static [u64], u8, u64),
    /// Only with one of these values as the first argument (an operation
    /// code, or `clone`'s flags).
    FirstArgIn(&'static [u64]),
    /// Only with one of these values as the second argument (`dup3`'s
    /// target descriptor).
    SecondArgIn(&'static [u64]),
    /// Only without `PROT_EXEC` in the protection (third) argument: memory
    /// made after lockdown is never executable, so code injected into the
    /// engine has nowhere to run from (W^X, kept by the kernel).
    NeverExec,
}

/// The flags glibc's `fork()` passes to `clone`: a plain child process, no
/// shared memory, no threads, no new namespaces.
const FORK_FLAGS: u64 = (libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD) as u64;

/// What a template process (a worker that forks one process per invocation,
/// see `crate::fork_invocation`) may do beyond [`ALLOWED`]. Its children
/// install [`invocation_layer`] before they run anything, which kills every
/// one of these, so app code in an invocation can never use them.
#[cfg(target_arch = "x86_64")]
const TEMPLATE_EXTRA: &[(libc::c_long, Use, &str)] = &[
    (libc::SYS_clone, Use::FirstArgIn(&[FORK_FLAGS]), "fork one invocation process; glibc's fork flags only"),
    (libc::SYS_wait4, Use::Any, "reap the invocation process and learn how it ended"),
    (
        libc::SYS_recvmsg,
        Use::OnFdsWithArg(&[IPC_FD as u64], 2, libc::MSG_CMSG_CLOEXEC as u64),
        "take the channel the server made for the next child (SCM_RIGHTS); never MSG_PEEK",
    ),
    (
        libc::SYS_dup3,
        Use::SecondArgIn(&[IPC_FD as u64]),
        "the child puts its own channel where the worker's was, so it never holds the worker's",
    ),
    (libc::SYS_close, Use::Any, "drop the template's copies of a child's channel once handed out"),
    (
        libc::SYS_fcntl,
        Use::SecondArgIn(&[libc::F_GETFD as u64]),
        "std's debug builds check a descriptor is open before closing it; a query, nothing more",
    ),
    (libc::SYS_set_robust_list, Use::Any, "glibc resets the robust-futex list in a forked child"),
    (libc::SYS_getppid, Use::Any, "the child checks that the template is still its parent"),
    (
        libc::SYS_prctl,
        Use::FirstArgIn(&[libc::PR_SET_PDEATHSIG as u64, libc::PR_SET_NO_NEW_PRIVS as u64]),
        "the child dies with the template, then sets no_new_privs to install its filter",
    ),
    (
        libc::SYS_seccomp,
        Use::FirstArgIn(&[libc::SECCOMP_SET_MODE_FILTER as u64]),
        "the child installs ALLOWED alone",
    ),
];

/// Which allow-list a process runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// [`ALLOWED`]: what running an invocation needs, nothing more.
    Invocation,
    /// [`ALLOWED`] plus [`TEMPLATE_EXTRA`]: a process that forks invocations.
    Template,
}

/// The allow-list. Each entry: the call, how it may be used, and why.
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[(libc::c_long, Use, &str)] = &[
    // The IPC channel: frames in and out, and stderr for a last message.
    (
        libc::SYS_read,
        Use::OnFds(&[IPC_FD as u64, TURN_READ_FD as u64]),
        "read frames from the server; a forked child waits for its turn",
    ),
    (
        libc::SYS_recvfrom,
        Use::OnFdsWithArg(&[IPC_FD as u64], 3, 0),
        "std reads sockets with recv, flags 0: never MSG_PEEK, so a process cannot watch frames it leaves for another",
    ),
    (
        libc::SYS_write,
        Use::OnFds(&[IPC_FD as u64, 2, TURN_WRITE_FD as u64]),
        "write frames; stderr for a fatal message; a forked child passes the turn on",
    ),
    (libc::SYS_sendto, Use::OnFds(&[IPC_FD as u64]), "std may write sockets with send"),
    (
        libc::SYS_pread64,
        Use::OnFds(&[MAPS_FD as u64, PAGEMAP_FD as u64]),
        "a worker that snapshots itself reads its own /proc/self/maps and pagemap, opened before lockdown",
    ),
    (libc::SYS_poll, Use::Any, "wait for a host reply with a timeout"),
    (libc::SYS_ppoll, Use::Any, "as poll, on newer libc"),
    // Memory: the engine's heap, through malloc.
    (libc::SYS_brk, Use::Any, "grow the heap"),
    (libc::SYS_mmap, Use::NeverExec, "large allocations and malloc arenas; never executable"),
    (libc::SYS_munmap, Use::Any, "free them"),
    (libc::SYS_mremap, Use::Any, "realloc of large blocks (keeps the protection it had)"),
    (libc::SYS_madvise, Use::Any, "malloc returns memory to the kernel"),
    (libc::SYS_mprotect, Use::NeverExec, "malloc arena setup; never to executable"),
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

/// Build the filter program for `profile` (public so that
/// `examples/fork_cost.rs` can measure installing it).
pub fn program(profile: Profile) -> Result<BpfProgram, JailError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| JailError::Seccomp(e.to_string()))?;
    let extra: &[(libc::c_long, Use, &str)] = match profile {
        Profile::Invocation => &[],
        Profile::Template => TEMPLATE_EXTRA,
    };
    let first_arg_in = |values: &[u64], qword: bool| {
        values
            .iter()
            .map(|v| {
                let len = if qword { SeccompCmpArgLen::Qword } else { SeccompCmpArgLen::Dword };
                SeccompCondition::new(0, len, SeccompCmpOp::Eq, *v)
                    .and_then(|c| SeccompRule::new(vec![c]))
                    .map_err(|e| JailError::Seccomp(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let second_arg_in = |values: &[u64]| {
        values
            .iter()
            .map(|v| {
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *v)
                    .and_then(|c| SeccompRule::new(vec![c]))
                    .map_err(|e| JailError::Seccomp(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let with_arg = |fds: &[u64], index: u8, value: u64| {
        fds.iter()
            .map(|fd| {
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *fd)
                    .and_then(|on_fd| {
                        let arg =
                            SeccompCondition::new(index, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?;
                        SeccompRule::new(vec![on_fd, arg])
                    })
                    .map_err(|e| JailError::Seccomp(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let never_exec = || {
        // (prot & PROT_EXEC) == 0, over the whole 64-bit argument.
        SeccompCondition::new(2, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64), 0)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map(|rule| vec![rule])
            .map_err(|e| JailError::Seccomp(e.to_string()))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (call, usage, _why) in ALLOWED.iter().chain(extra) {
        let entry = match usage {
            Use::Any => Vec::new(),
            Use::OnFds(fds) => first_arg_in(fds, false)?,
            Use::OnFdsWithArg(fds, index, value) => with_arg(fds, *index, *value)?,
            Use::FirstArgIn(values) => first_arg_in(values, true)?,
            Use::SecondArgIn(values) => second_arg_in(values)?,
            Use::NeverExec => never_exec()?,
        };
        rules.insert(*call, entry);
    }
    let filter = SeccompFilter::new(rules, SeccompAction::KillProcess, SeccompAction::Allow, arch)
        .map_err(|e| JailError::Seccomp(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.to_string()))
}

/// The filter a template's child (or a template giving up forking) installs
/// on top of the template's: it kills every call in [`TEMPLATE_EXTRA`],
/// whatever its arguments, and passes everything else on to the template's
/// filter beneath, which kills whatever is outside [`ALLOWED`] and
/// [`TEMPLATE_EXTRA`]. The two lists share no call (a test checks), so the
/// stack allows exactly [`ALLOWED`], with the same arguments.
///
/// Why not install [`ALLOWED`] again: the kernel converts and compiles each
/// filter a process installs, and a forked child does so on every
/// invocation. Measured on a 2 vCPU VM, a fork and exit took about 200 µs,
/// 400 µs with the whole allow-list installed in the child and 300 µs with
/// this layer (35 instructions against the allow-list's 143 then).
///
/// This layer allows by default, so it must only ever go on top of the
/// template's filter: `crate::lockdown_template` hands it out only once
/// that filter is installed.
pub fn invocation_layer() -> Result<BpfProgram, JailError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| JailError::Seccomp(e.to_string()))?;
    // An empty rule list matches the call whatever its arguments.
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        TEMPLATE_EXTRA.iter().map(|(call, _usage, _why)| (*call, Vec::new())).collect();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::KillProcess, arch)
        .map_err(|e| JailError::Seccomp(e.to_string()))?;
    filter.try_into().map_err(|e: seccompiler::BackendError| JailError::Seccomp(e.to_string()))
}

/// Install the filter for `profile` on this process. Irreversible.
pub(crate) fn install(profile: Profile) -> Result<(), JailError> {
    let program = program(profile)?;
    seccompiler::apply_filter(&program).map_err(|e| JailError::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_adds_only_forking_and_restricts_each_addition() {
        assert!(program(Profile::Template).is_ok());
        for (call, usage, _) in TEMPLATE_EXTRA {
            let restricted =
                matches!(usage, Use::FirstArgIn(_) | Use::SecondArgIn(_) | Use::OnFdsWithArg(..));
            let harmless = [libc::SYS_wait4, libc::SYS_set_robust_list, libc::SYS_getppid, libc::SYS_close]
                .contains(call);
            assert!(restricted || harmless, "template call {call} must be restricted by its arguments");
        }
        for never in [
            libc::SYS_clone3,
            libc::SYS_fork,
            libc::SYS_vfork,
            libc::SYS_execve,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_kill,
            libc::SYS_ptrace,
            libc::SYS_socket,
            libc::SYS_socketpair,
            libc::SYS_connect,
            libc::SYS_sendmsg,
            libc::SYS_dup,
            libc::SYS_dup2,
        ] {
            assert!(!TEMPLATE_EXTRA.iter().any(|(c, _, _)| *c == never), "syscall {never} must not be added");
        }
    }

    #[test]
    fn the_allow_list_builds_and_names_no_dangerous_call() {
        assert!(program(Profile::Invocation).is_ok());
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
    fn the_invocation_layer_removes_exactly_the_template_extras() {
        // The layer kills TEMPLATE_EXTRA by call number alone: sound only
        // if no call is in both lists (else the layer would take from the
        // invocation a call ALLOWED gives it, or a test would hide that).
        for (extra, _, _) in TEMPLATE_EXTRA {
            assert!(!ALLOWED.iter().any(|(c, _, _)| c == extra), "syscall {extra} is in both lists");
        }
        let layer = invocation_layer().unwrap();
        let full = program(Profile::Invocation).unwrap();
        assert!(
            layer.len() < full.len() / 2,
            "layer {} instructions, allow-list {}",
            layer.len(),
            full.len()
        );
    }

    #[test]
    fn memory_is_never_made_executable() {
        for call in [libc::SYS_mmap, libc::SYS_mprotect] {
            let entry = ALLOWED.iter().find(|(c, _, _)| *c == call);
            assert!(matches!(entry, Some((_, Use::NeverExec, _))), "syscall {call} must refuse PROT_EXEC");
        }
        for never in
            [libc::SYS_pkey_mprotect, libc::SYS_remap_file_pages, libc::SYS_memfd_create, libc::SYS_shmat]
        {
            assert!(!ALLOWED.iter().chain(TEMPLATE_EXTRA).any(|(c, _, _)| *c == never), "syscall {never}");
        }
    }

    #[test]
    fn every_entry_says_why() {
        assert!(ALLOWED.iter().chain(TEMPLATE_EXTRA).all(|(_, _, why)| !why.is_empty()));
    }
}
