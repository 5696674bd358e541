//! A hostile worker. With an action as its argument it locks itself down
//! exactly as a Kiln worker does, then attempts the action. If the jail works,
//! the kernel kills it with SIGSYS before the attempt returns; exit status 0
//! ("escaped") or 3 ("refused politely") mean the allow-list let it through.
//!
//! With `report`, it does not lock down; it writes what it can see of its
//! jail (user ids, network interfaces, open descriptors, environment,
//! limits) to the IPC channel for the tests to check.

#![allow(clippy::print_stderr, reason = "a test program reports on stderr")]

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let action = std::env::args().nth(1).unwrap_or_default();
    if action == "report" {
        return report();
    }
    if action == "no-userns-probe" {
        return no_userns_probe();
    }
    if action == "linger" {
        // Stay alive (unjailed, doing nothing) until killed: for tests of
        // how long a worker lives.
        std::thread::sleep(std::time::Duration::from_secs(60));
        return ExitCode::SUCCESS;
    }
    if action == "snapshot" {
        return snapshot();
    }
    if action == "template" {
        return template(&std::env::args().nth(2).unwrap_or_default());
    }
    if let Err(e) = kiln_jail::lockdown() {
        eprintln!("lockdown failed: {e}");
        return ExitCode::from(2);
    }
    let result = attempt(&action);
    eprintln!("{action}: returned {result}");
    if result >= 0 { ExitCode::SUCCESS } else { ExitCode::from(3) }
}

/// Try one thing a compromised engine might. Returns the call's result.
fn attempt(action: &str) -> i64 {
    let path = c"/etc/passwd";
    // SAFETY: each arm makes one system call with valid pointers to static
    // data or stack values; this program exists to make forbidden calls.
    unsafe {
        match action {
            "allowed" => {
                // What a worker legitimately does after lockdown.
                let mut buf = [0u8; 16];
                let r = libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0);
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
                let v = vec![0u8; 10 * 1024 * 1024];
                std::hint::black_box(&v);
                drop(v);
                r as i64
            }
            "open" => libc::open(path.as_ptr(), libc::O_RDONLY) as i64,
            "openat" => libc::openat(libc::AT_FDCWD, path.as_ptr(), libc::O_RDONLY) as i64,
            "socket" => libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) as i64,
            "unix-socket" => libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) as i64,
            "exec" => {
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                let envp = [std::ptr::null()];
                libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) as i64
            }
            "fork" => libc::syscall(libc::SYS_fork),
            "libc-fork" => {
                let pid = libc::fork();
                if pid == 0 {
                    libc::_exit(0);
                }
                pid as i64
            }
            "clone" => libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0),
            "clone-thread" => libc::syscall(
                libc::SYS_clone,
                libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND | libc::SIGCHLD,
                0,
                0,
                0,
                0,
            ),
            "clone-newuser" => {
                libc::syscall(libc::SYS_clone, libc::CLONE_NEWUSER | libc::SIGCHLD, 0, 0, 0, 0)
            }
            "clone3" => {
                let mut args = [0u64; 11];
                args[4] = libc::SIGCHLD as u64; // exit_signal
                libc::syscall(libc::SYS_clone3, args.as_mut_ptr(), std::mem::size_of_val(&args))
            }
            "prctl-dumpable" => libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) as i64,
            "ptrace" => libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0),
            "io_uring" => {
                let mut params = [0u8; 120];
                libc::syscall(libc::SYS_io_uring_setup, 1, params.as_mut_ptr())
            }
            "kill" => libc::kill(libc::getppid(), 0) as i64,
            "write-file-fd" => libc::write(1, b"x".as_ptr().cast(), 1) as i64,
            "mount" => {
                libc::mount(c"none".as_ptr(), c"/tmp".as_ptr(), c"tmpfs".as_ptr(), 0, std::ptr::null()) as i64
            }
            "unshare" => libc::unshare(libc::CLONE_NEWUSER) as i64,
            // Executable memory: a fresh mapping, or the heap made so.
            "mmap-exec" => libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            ) as i64,
            "mprotect-exec" => {
                let page = Box::leak(Box::new([0u8; 8192]));
                let aligned = (page.as_mut_ptr() as usize + 4095) & !4095;
                libc::mprotect(aligned as *mut libc::c_void, 4096, libc::PROT_READ | libc::PROT_EXEC) as i64
            }
            // What a template may do and its invocation processes may not.
            "wait4" => libc::wait4(-1, std::ptr::null_mut(), libc::WNOHANG, std::ptr::null_mut()) as i64,
            // Look at the channel without taking what is there (a process
            // lingering after its invocation, watching frames meant for the
            // next one); and the plain read every worker makes.
            "recv-peek" => {
                let mut buf = [0u8; 1];
                libc::recv(3, buf.as_mut_ptr().cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) as i64
            }
            "recv-plain" => {
                let mut buf = [0u8; 1];
                libc::recv(3, buf.as_mut_ptr().cast(), 1, 0) as i64
            }
            // What a template needs to take each child's channel from the
            // server, and a look at the channel without taking.
            "recvmsg-channel" | "recvmsg-peek" => {
                let flags = if action == "recvmsg-channel" {
                    libc::MSG_CMSG_CLOEXEC
                } else {
                    libc::MSG_CMSG_CLOEXEC | libc::MSG_PEEK | libc::MSG_DONTWAIT
                };
                let mut msg: libc::msghdr = std::mem::zeroed();
                let mut buf = [0u8; 1];
                let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 1 };
                msg.msg_iov = &raw mut iov;
                msg.msg_iovlen = 1;
                libc::recvmsg(3, &raw mut msg, flags) as i64
            }
            "socketpair-unix" => {
                let mut fds = [0 as libc::c_int; 2];
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) as i64
            }
            "sendmsg-channel" => {
                let msg: libc::msghdr = std::mem::zeroed();
                libc::sendmsg(3, &raw const msg, libc::MSG_DONTWAIT) as i64
            }
            // Onto the channel's number (what a child does with its own
            // channel), and anywhere else.
            "dup3-onto-channel" => libc::dup3(2, 3, libc::O_CLOEXEC) as i64,
            "dup3-elsewhere" => libc::dup3(3, 9, libc::O_CLOEXEC) as i64,
            "close" => libc::close(9) as i64,
            "getppid" => libc::getppid() as i64,
            "set-robust-list" => libc::syscall(libc::SYS_set_robust_list, std::ptr::null::<u8>(), 0),
            "prctl-pdeathsig" => libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) as i64,
            "prctl-no-new-privs" => libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as i64,
            "seccomp-filter" => {
                // An empty program: the call is refused before it is read.
                libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, std::ptr::null::<u8>())
            }
            _ => {
                eprintln!("unknown action {action:?}");
                -1
            }
        }
    }
}

/// Play a kernel without unprivileged user namespaces (`unshare` fails with
/// EPERM, as it does when `user.max_user_namespaces` is 0), then ask the jail
/// whether workers can start. Prints the jail's answer; exit 0 if it said
/// yes, 4 if it refused.
fn no_userns_probe() -> ExitCode {
    use std::collections::BTreeMap;

    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let Ok(arch) = TargetArch::try_from(std::env::consts::ARCH) else { return ExitCode::from(2) };
    let rules = BTreeMap::from([(libc::SYS_unshare, Vec::new())]);
    let filter =
        SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch);
    let program: Result<BpfProgram, _> = filter
        .map_err(|e| e.to_string())
        .and_then(|f| f.try_into().map_err(|e: seccompiler::BackendError| e.to_string()));
    if let Err(e) = program.and_then(|p| seccompiler::apply_filter(&p).map_err(|e| e.to_string())) {
        eprintln!("cannot simulate the kernel: {e}");
        return ExitCode::from(2);
    }
    match kiln_jail::probe_namespaces() {
        Ok(()) => {
            eprintln!("workers can start");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(4)
        }
    }
}

/// Lock down as a template, then either attempt `what` in the template
/// itself (`self:<action>`) or fork an invocation process that attempts it.
/// Exit status: the child's own status; 10 if the child died by SIGSYS; 20
/// plus the signal for any other death.
fn template(what: &str) -> ExitCode {
    if let Err(e) = kiln_jail::lockdown_template() {
        eprintln!("lockdown failed: {e}");
        return ExitCode::from(2);
    }
    if let Some(action) = what.strip_prefix("restricted:") {
        if let Err(e) = kiln_jail::restrict_to_invocation() {
            eprintln!("restrict failed: {e}");
            return ExitCode::from(2);
        }
        let result = attempt(action);
        eprintln!("restricted template {action}: returned {result}");
        return if result >= 0 { ExitCode::SUCCESS } else { ExitCode::from(3) };
    }
    if let Some(action) = what.strip_prefix("self:") {
        let result = attempt(action);
        eprintln!("template {action}: returned {result}");
        return if result >= 0 { ExitCode::SUCCESS } else { ExitCode::from(3) };
    }
    match kiln_jail::fork_invocation() {
        Ok(kiln_jail::Forked::Child) => {
            let result = attempt(what);
            kiln_jail::exit_now(if result >= 0 { 0 } else { 3 });
        }
        Ok(kiln_jail::Forked::Parent(pid)) => match kiln_jail::wait_child(pid) {
            Ok(exit) => match (exit.code, exit.signal) {
                (Some(code), _) => ExitCode::from(u8::try_from(code).unwrap_or(99)),
                (None, Some(libc::SIGSYS)) => ExitCode::from(10),
                (None, Some(sig)) => ExitCode::from(20 + u8::try_from(sig).unwrap_or(0)),
                (None, None) => ExitCode::from(98),
            },
            Err(e) => {
                eprintln!("wait failed: {e}");
                ExitCode::from(97)
            }
        },
        Err(e) => {
            eprintln!("fork failed: {e}");
            ExitCode::from(96)
        }
    }
}

/// Describe the jail from inside, on the IPC channel. Asked for huge
/// pages, it first moves its code as a forking worker does, and reports
/// what that did and where its code now lives.
fn report() -> ExitCode {
    let moved = if kiln_jail::huge_pages_requested() {
        format!("{:?}", kiln_jail::move_code_to_huge_pages())
    } else {
        "not asked".to_owned()
    };
    let Ok(mut channel) = kiln_jail::inherited_channel() else {
        eprintln!("no channel");
        return ExitCode::from(2);
    };
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{e}>"));
    let fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let interfaces: Vec<String> = read("/proc/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|s| s.trim().to_owned()))
        .collect();
    let limit = |r| {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct passed by reference.
        unsafe { libc::getrlimit(r, &mut l) };
        l.rlim_cur
    };
    // SAFETY: prctl(PR_GET_NO_NEW_PRIVS) takes no pointers.
    let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
    // SAFETY: sched_getscheduler takes a pid only.
    let policy = unsafe { libc::sched_getscheduler(0) };
    unsafe extern "C" {
        /// glibc's: the size of the thread's registered restartable
        /// sequence area, 0 if none.
        static __rseq_size: u32;
    }
    // SAFETY: a read of a constant glibc (2.35 and later) sets at startup.
    let rseq_size = unsafe { __rseq_size };
    let text = format!(
        "rseq_size={rseq_size}\nuid_map={}\ninterfaces={}\nfds={}\nenv={}\ntunables={}\nnofile={}\nfsize={}\ncore={}\nno_new_privs={nnp}\npolicy={policy}\nmoved={moved}\ncode={}\n",
        read("/proc/self/uid_map").split_whitespace().collect::<Vec<_>>().join(" "),
        interfaces.join(","),
        fds.join(","),
        std::env::vars_os().count(),
        std::env::var("GLIBC_TUNABLES").unwrap_or_default(),
        limit(libc::RLIMIT_NOFILE),
        limit(libc::RLIMIT_FSIZE),
        limit(libc::RLIMIT_CORE),
        code_mapping(&read("/proc/self/smaps"), report as *const () as usize),
    );
    let _ = channel.write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// The mapping that holds `address`, from `/proc/self/smaps`: its file (or
/// `anonymous`), then `huge` if it asks for huge pages (`hg`).
fn code_mapping(smaps: &str, address: usize) -> String {
    let mut found: Option<String> = None;
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16))
        {
            if found.is_some() {
                break;
            }
            if (start..end).contains(&address) {
                found = Some(fields.nth(4).unwrap_or("anonymous").to_owned());
            }
        } else if let (Some(file), Some(flags)) = (&found, line.strip_prefix("VmFlags:")) {
            let huge = flags.split_whitespace().any(|f| f == "hg");
            return format!("{file}{}", if huge { ",huge" } else { "" });
        }
    }
    found.unwrap_or_else(|| "not found".to_owned())
}

/// Set by `snapshot` before it takes its snapshot; an invocation changes it.
static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A small deterministic generator for `snapshot`'s writes and blocks.
struct XorShift(u64);

impl XorShift {
    /// A number below `n` (0 for 0).
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % (n.max(1) as u64)) as usize
    }
}

fn program_break() -> usize {
    // SAFETY: brk(0) changes nothing and returns the current break.
    unsafe { libc::syscall(libc::SYS_brk, 0) as usize }
}

/// Serve six "invocations" from a snapshot, as a worker that resets does
/// (locked down, under the invocation allow-list). Each changes a static,
/// bytes of a heap buffer it was handed (both ends, and 128 at
/// random; the third all of its 8 MB, more than a restore copies back),
/// allocates, frees and leaks blocks of random sizes and grows the heap by
/// 64 MB. Report on the channel what each saw on entry, how the restore
/// went, how many pages of the kept memory then differ from the snapshot,
/// and what is left on the stack and afterwards.
fn snapshot() -> ExitCode {
    let Ok(mut channel) = kiln_jail::inherited_channel() else {
        eprintln!("no channel");
        return ExitCode::from(2);
    };
    if !kiln_jail::snapshots_requested() {
        let _ = channel.write_all(b"no snapshot file\n");
        return ExitCode::from(2);
    }
    if let Err(e) = kiln_jail::keep_heap_contiguous().and_then(|()| kiln_jail::open_own_maps()) {
        let _ = channel.write_all(format!("setup failed: {e}\n").as_bytes());
        return ExitCode::from(2);
    }
    if let Err(e) = kiln_jail::lockdown() {
        let _ = channel.write_all(format!("lockdown failed: {e}\n").as_bytes());
        return ExitCode::from(2);
    }
    let kept: Vec<u8> = vec![b'a'; 2 * kiln_jail::COPY_BACK_LIMIT_BYTES];
    COUNTER.store(1, std::sync::atomic::Ordering::SeqCst);
    let snapshot = match kiln_jail::Snapshot::take(None) {
        Ok(s) => s,
        Err(e) => {
            let _ = channel.write_all(format!("take failed: {e}\n").as_bytes());
            return ExitCode::from(2);
        }
    };
    let at_snapshot = program_break();
    let ends = |v: &[u8]| (v.first().copied().unwrap_or(0) as char, v.last().copied().unwrap_or(0) as char);
    for round in 0..6u64 {
        let ((counter, (first, last), grew, marked), restored) =
            snapshot.run_then_restore(&kept, |mut copy| {
                // Something of this invocation's on its stack, for the check
                // that the restore clears it.
                let secret = std::hint::black_box([0x5au8; 4096]);
                let marked = secret.as_ptr() as usize;
                let seen = (COUNTER.load(std::sync::atomic::Ordering::SeqCst), ends(&copy));
                COUNTER.store(99, std::sync::atomic::Ordering::SeqCst);
                let mut random = XorShift(0x9e37_79b9_7f4a_7c15 ^ (round + 1));
                if round == 2 {
                    copy.fill(b'z');
                }
                for _ in 0..128 {
                    let at = random.below(copy.len());
                    if let Some(b) = copy.get_mut(at) {
                        *b = b'z';
                    }
                }
                if let Some((first, rest)) = copy.split_first_mut() {
                    *first = b'z';
                    if let Some(last) = rest.last_mut() {
                        *last = b'z';
                    }
                }
                let mut blocks: Vec<Vec<u8>> = Vec::new();
                for i in 0..200 {
                    blocks.push(vec![i as u8; 1 + random.below(64 << 10)]);
                    if random.below(3) == 0 {
                        drop(blocks.swap_remove(random.below(blocks.len())));
                    }
                }
                std::mem::forget(blocks);
                let big = vec![7u8; 64 << 20];
                std::hint::black_box(&big);
                let grew = program_break() >= at_snapshot + (64 << 20);
                std::mem::forget(big);
                (seen.0, seen.1, grew, marked)
            });
        // Before anything here writes to memory the snapshot kept.
        let differing = snapshot.pages_differing();
        // The invocation's stack is dead now, and must hold nothing of it.
        let left = (0..4096)
            .filter(|i| {
                // SAFETY: a read of the dead stack below this frame, which
                // stays mapped (zeroed in place, or dropped and read back as
                // zeroes); volatile, as nothing live is there.
                unsafe { std::ptr::read_volatile((marked + i) as *const u8) == 0x5a }
            })
            .count();
        let restored = match restored {
            kiln_jail::Restored::Copied(n) if n > 0 => "copied",
            kiln_jail::Restored::Copied(_) => "nothing",
            kiln_jail::Restored::Dropped => "dropped",
        };
        // Straight to the channel: anything kept in memory from here would
        // be undone by the next restore.
        let _ = channel.write_all(
            format!(
                "round=counter:{counter},ends:{first}{last},grew:{grew},restored:{restored},differing:{differing},stack_left:{left}\n"
            )
            .as_bytes(),
        );
    }
    let (first, last) = ends(&kept);
    let _ = channel.write_all(
        format!(
            "after=counter:{},ends:{first}{last},brk_back:{}\n",
            COUNTER.load(std::sync::atomic::Ordering::SeqCst),
            program_break() == at_snapshot
        )
        .as_bytes(),
    );
    // Without closing the channel: `close` is not on the allow-list.
    kiln_jail::exit_now(0)
}
