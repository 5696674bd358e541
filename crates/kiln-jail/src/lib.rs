//! `kiln-jail`: worker processes that run app code, jailed.
//!
//! The jail is applied in two halves, each one readable function:
//!
//! - [`spawn`] (server side) starts the worker executable with the IPC socket
//!   as fd 3 and, in the child before `exec`, applies in order: every other
//!   inherited descriptor closed, new user + network + mount + IPC + UTS
//!   namespaces (the network namespace has only a loopback, down), resource
//!   limits (address space, open files, processes, file size, core dumps),
//!   `PR_SET_NO_NEW_PRIVS`, and death with the parent. The environment is
//!   emptied by the command itself.
//! - [`lockdown`] (worker side, after the engine is initialised and before
//!   any app input is read) makes the process undumpable, applies Landlock
//!   with no file-system or network rights where the kernel supports it, and
//!   installs the seccomp allow-list in [`seccomp`]: anything else kills the
//!   process.
//!
//! This is the only Kiln crate allowed `unsafe`; every block says why it is
//! sound. Nothing here knows about JavaScript or apps.

mod huge_code;
pub mod seccomp;
mod snapshot;

pub use huge_code::{HugeCode, move_code_to_huge_pages};
pub use snapshot::{
    COPY_BACK_LIMIT_BYTES, MAPS_FD, PAGEMAP_FD, Restored, SNAPSHOT_FD, SNAPSHOT_HALF_BYTES, Snapshot,
    keep_heap_contiguous, open_own_maps, snapshots_requested,
};

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use kiln_ipc::JailReport;

/// The worker finds its IPC channel here.
pub const IPC_FD: RawFd = 3;

/// A template's children pass a turn through a pipe at these descriptors
/// (see [`turn_pipe`]); the allow-list lets them read the one
/// and write the other, and nothing else.
pub const TURN_READ_FD: RawFd = 4;
pub const TURN_WRITE_FD: RawFd = 5;

/// Open files a worker may hold. It needs the channel and the standard
/// streams; the bound stops descriptor exhaustion if seccomp were bypassed.
pub const MAX_OPEN_FILES: u64 = 16;

/// How the jail treats a machine without unprivileged user namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespacePolicy {
    /// Refuse to start workers without namespaces (the default).
    Require,
    /// Start workers without namespaces; seccomp, Landlock and rlimits still
    /// apply. Operators choose this only knowingly, and it is logged at
    /// every start.
    InsecureSkipNamespaces,
}

/// Limits applied to a worker process before it runs anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessLimits {
    /// `RLIMIT_AS`: the engine's own memory limit is lower; this is the
    /// backstop if the engine's accounting is bypassed.
    pub address_space_bytes: u64,
    /// `RLIMIT_CPU` in seconds: a backstop against a worker spinning outside
    /// the engine's interrupt checks; the server's wall clock acts first.
    pub cpu_seconds: u64,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub executable: PathBuf,
    pub args: Vec<OsString>,
    pub limits: ProcessLimits,
    pub namespaces: NamespacePolicy,
    /// Forward the worker's stderr to the server's (for diagnostics in
    /// development); otherwise it has none.
    pub inherit_stderr: bool,
    /// Have glibc's malloc ask for transparent huge pages
    /// (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, then the one variable in
    /// the worker's environment), and have the worker move its code onto
    /// them ([`move_code_to_huge_pages`]). For a worker that forks a child
    /// per invocation: each fork copies, and each exit drops, one
    /// page-table entry per 2 MB of the code instead of a child faulting it
    /// in 4 KB at a time. (The malloc setting measured faster too, but the
    /// template's heap, smaller than two huge pages and not aligned to
    /// one, does not end up on them; docs/PERFORMANCE.md.) Not for workers
    /// that allocate and free runtimes in place, which the malloc setting
    /// slowed. No effect where the kernel's THP mode is `never`.
    pub huge_pages: bool,
    /// Give the worker a memory file to keep snapshots of itself in
    /// ([`Snapshot`]), at [`SNAPSHOT_FD`]: for a worker that serves every
    /// invocation from one prepared state and puts its memory back after
    /// each. Made here because the worker cannot size a file (its
    /// file-size limit is 0). Also turns off glibc's restartable sequences
    /// ([`SNAPSHOT_TUNABLE`]).
    pub snapshots: bool,
}

/// The glibc setting [`WorkerSpec::huge_pages`] passes.
pub const HUGE_PAGES_TUNABLE: &str = "glibc.malloc.hugetlb=1";

/// The glibc setting [`WorkerSpec::snapshots`] passes: no restartable
/// sequences. With them, glibc registers an area in the thread's
/// thread-local storage where the kernel writes the CPU the thread runs on
/// whenever it moves; that storage is part of a snapshot, and the kernel
/// is then the one writer to it that a restore cannot order around.
/// Without them, only the process itself writes its kept memory.
pub const SNAPSHOT_TUNABLE: &str = "glibc.pthread.rseq=0";

/// The `GLIBC_TUNABLES` a worker gets, if any: the only variable in its
/// environment.
fn tunables(spec: &WorkerSpec) -> Option<String> {
    let asked = [(spec.huge_pages, HUGE_PAGES_TUNABLE), (spec.snapshots, SNAPSHOT_TUNABLE)];
    let set: Vec<&str> = asked.iter().filter(|(on, _)| *on).map(|(_, t)| *t).collect();
    (!set.is_empty()).then(|| set.join(":"))
}

/// Whether the server started this worker with [`WorkerSpec::huge_pages`]
/// (which also asks it to [`move_code_to_huge_pages`]).
pub fn huge_pages_requested() -> bool {
    std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.split(':').any(|t| t == HUGE_PAGES_TUNABLE))
}

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot create the IPC channel: {0}")]
    Channel(io::Error),
    #[error("cannot move the executable's code onto huge pages: {0}")]
    HugeCode(io::Error),
    #[error(
        "cannot start a jailed worker: {0}. Kiln runs app code only inside new user, network and mount namespaces; \
         enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, or \
         user.max_user_namespaces > 0), or, knowingly, set the insecure-skip-namespaces option"
    )]
    Spawn(io::Error),
    #[error("cannot lock the worker down: {0}")]
    Lockdown(io::Error),
    #[error("cannot build or install the seccomp filter: {0}")]
    Seccomp(String),
    #[error("cannot apply Landlock: {0}")]
    Landlock(String),
    #[error("the worker was started without its IPC channel on fd {IPC_FD}")]
    NoChannel,
    #[error("cannot keep a snapshot of the worker's memory: {0}")]
    Snapshot(String),
}

/// A started worker and the server's end of its channel.
#[derive(Debug)]
pub struct Spawned {
    pub child: Child,
    pub channel: UnixStream,
}

/// Start a jailed worker. See the crate documentation for the steps.
///
/// The worker is forked from one thread that lives as long as the
/// process, whatever thread calls this: `PR_SET_PDEATHSIG` (step 6) fires
/// when the *thread* that forked the child exits, not the process, and
/// callers' threads come and go (a tokio blocking thread ends after ten
/// idle seconds, and took its workers with it).
pub fn spawn(spec: &WorkerSpec) -> Result<Spawned, JailError> {
    type Reply = std::sync::mpsc::Sender<Result<Spawned, JailError>>;
    static SPAWNER: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<(WorkerSpec, Reply)>>> =
        std::sync::OnceLock::new();
    let unavailable = || JailError::Spawn(io::Error::other("the worker-spawning thread is gone"));
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<(WorkerSpec, Reply)>();
        // If the thread cannot start, every spawn says so (the receiver is gone).
        let _ = std::thread::Builder::new().name("kiln-jail-spawner".into()).spawn(move || {
            for (spec, reply) in rx {
                let _ = reply.send(spawn_here(&spec));
            }
        });
        std::sync::Mutex::new(tx)
    });
    let (reply, answer) = std::sync::mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send((spec.clone(), reply))
        .map_err(|_| unavailable())?;
    answer.recv().map_err(|_| unavailable())?
}

/// [`spawn`], on the calling thread.
fn spawn_here(spec: &WorkerSpec) -> Result<Spawned, JailError> {
    // The worker starts in "/", so a relative path would no longer resolve.
    let executable = std::fs::canonicalize(&spec.executable).map_err(JailError::Spawn)?;
    let (server_end, worker_end) = UnixStream::pair().map_err(JailError::Channel)?;
    // Before the worker exists, so that every byte it ever sends arrives
    // with its sender (see `recv_ancillary`).
    pass_credentials(&server_end).map_err(JailError::Channel)?;
    let worker_fd = worker_end.as_raw_fd();
    let limits = spec.limits;
    let namespaces = spec.namespaces;
    let snapshots = spec.snapshots;
    let mut command = Command::new(&executable);
    command
        .args(&spec.args)
        .env_clear()
        .envs(tunables(spec).map(|t| ("GLIBC_TUNABLES", t)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Forwarded through a pipe, never inherited: with RLIMIT_FSIZE = 0 a
        // worker writing to an inherited *file* would be killed (SIGXFSZ).
        .stderr(if spec.inherit_stderr { Stdio::piped() } else { Stdio::null() });
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes raw system calls
    // only (dup2, fcntl, close_range, memfd_create, ftruncate, close, unshare,
    // setrlimit, prctl, sched_setscheduler), allocates nothing,
    // takes no locks and touches no Rust state beyond the copied integers.
    unsafe {
        command.pre_exec(move || child_before_exec(worker_fd, limits, namespaces, snapshots));
    }
    let mut child = command.spawn().map_err(JailError::Spawn)?;
    drop(worker_end);
    if let Some(mut stderr) = child.stderr.take() {
        let pid = child.id();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let reader = std::io::BufReader::new(&mut stderr);
            for line in reader.lines().map_while(Result::ok) {
                let _ = writeln!(std::io::stderr(), "[worker {pid}] {line}");
            }
        });
    }
    Ok(Spawned { child, channel: server_end })
}

/// The child's half of [`spawn`], in order. Async-signal-safe.
fn child_before_exec(
    worker_fd: RawFd,
    limits: ProcessLimits,
    namespaces: NamespacePolicy,
    snapshots: bool,
) -> io::Result<()> {
    // 1. The channel becomes fd 3, open across exec: dup2 clears
    //    close-on-exec on the copy, but onto itself it does nothing at all,
    //    so an end that already is fd 3 (made while fd 0 was free, say) has
    //    the flag cleared by hand.
    if worker_fd == IPC_FD {
        // SAFETY: fcntl(F_SETFD) changes only the descriptor's flags.
        check(unsafe { libc::fcntl(IPC_FD, libc::F_SETFD, 0) })?;
    } else {
        // SAFETY: dup2 on descriptors this process owns; no memory is involved.
        check(unsafe { libc::dup2(worker_fd, IPC_FD) })?;
    }
    // 2. Every other inherited descriptor above the channel closes at exec.
    //    (Marked close-on-exec rather than closed now: the standard library
    //    reports a failed exec through a pipe of its own until then.)
    // SAFETY: close_range only changes descriptor flags; fds 0-3 are untouched.
    check_long(unsafe {
        libc::syscall(
            libc::SYS_close_range,
            (IPC_FD + 1) as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    })?;
    // 2b. The snapshot file, sized while the file-size limit allows it
    //     (sparse: it takes memory only as the worker writes to it).
    if snapshots {
        // SAFETY: memfd_create takes a static NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"kiln-snapshot".as_ptr(), 0) };
        check(fd)?;
        // SAFETY: ftruncate, dup2 and close on the descriptor just made.
        unsafe {
            check(libc::ftruncate(fd, (2 * SNAPSHOT_HALF_BYTES) as libc::off_t))?;
            if fd != SNAPSHOT_FD {
                check(libc::dup2(fd, SNAPSHOT_FD))?;
                check(libc::close(fd))?;
            }
        }
    }
    // 3. New namespaces: no network but a loopback that is down, private
    //    mounts, IPC and host name, and an unmapped user (no privileges
    //    outside).
    if namespaces == NamespacePolicy::Require {
        let flags = libc::CLONE_NEWUSER
            | libc::CLONE_NEWNET
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS;
        // SAFETY: unshare takes only flags; the forked child is single-threaded,
        // which CLONE_NEWUSER requires.
        check(unsafe { libc::unshare(flags) })?;
    }
    // 4. Resource limits.
    set_limit(libc::RLIMIT_AS, limits.address_space_bytes)?;
    set_limit(libc::RLIMIT_CPU, limits.cpu_seconds)?;
    set_limit(libc::RLIMIT_NOFILE, MAX_OPEN_FILES)?;
    // The worker and two forked invocation processes, the one serving and
    // the standby (counted per user namespace on current kernels; root is
    // exempt from this limit, which is one reason not to run Kiln as root).
    set_limit(libc::RLIMIT_NPROC, 3)?;
    set_limit(libc::RLIMIT_FSIZE, 0)?;
    set_limit(libc::RLIMIT_CORE, 0)?;
    // 5. No privilege gain through exec (setuid binaries, file capabilities).
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    // 6. Die with the server.
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) })?;
    // 7. Scheduled as batch work: a worker woken by a request does not
    //    preempt the server thread that sent it. Otherwise the server
    //    thread waits, runnable but off the CPU, while the worker answers
    //    and then goes on to free and prepare runtimes, and the answer sits
    //    unread in the meantime. Inherited by every process the worker
    //    forks; no privilege is needed to take a weaker policy.
    let batch = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads the struct we pass by reference and
    // keeps no pointer.
    check(unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &batch) })?;
    Ok(())
}

fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let limit = libc::rlimit { rlim_cur: value, rlim_max: value };
    // SAFETY: setrlimit reads the struct we pass by reference and keeps no pointer.
    check(unsafe { libc::setrlimit(resource, &limit) })
}

fn check(result: libc::c_int) -> io::Result<()> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn check_long(result: libc::c_long) -> io::Result<()> {
    if result < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// The worker's end of the channel, taken from fd 3.
pub fn inherited_channel() -> Result<UnixStream, JailError> {
    // SAFETY: fcntl(F_GETFD) only queries whether fd 3 is open.
    let open = unsafe { libc::fcntl(IPC_FD, libc::F_GETFD) } >= 0;
    if !open {
        return Err(JailError::NoChannel);
    }
    // SAFETY: fd 3 is open (checked above) and was placed there by `spawn`
    // for this process alone; nothing else in the process owns it, so taking
    // ownership cannot double-close or alias it.
    let owned = unsafe { OwnedFd::from_raw_fd(IPC_FD) };
    Ok(UnixStream::from(owned))
}

/// The pipe a template's children pass a turn through, placed at
/// [`TURN_READ_FD`] and [`TURN_WRITE_FD`] (the only descriptors besides the
/// channel the allow-list lets a worker use), both ends non-blocking so
/// that a process taking a turn byte another was waiting for cannot leave
/// it blocked. In place, the turn says which child reads the shared
/// channel; forked children each have a channel of their own and use it
/// only to learn that the child before them has answered. Call before
/// lockdown: afterwards creating it is a forbidden call. A child that
/// abuses the pipe can only confuse its own worker's protocol, which the
/// server answers by killing the worker, or its pacing.
pub fn turn_pipe() -> Result<(std::fs::File, std::fs::File), JailError> {
    let err = |e: io::Error| JailError::Spawn(e);
    for fd in [TURN_READ_FD, TURN_WRITE_FD] {
        // SAFETY: fcntl(F_GETFD) only queries whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            return Err(err(io::Error::other(format!("descriptor {fd} is already in use"))));
        }
    }
    let mut ends = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array, which lives on
    // this stack frame.
    check(unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }).map_err(err)?;
    // SAFETY: pipe2 just returned these descriptors; this function is their
    // only owner, so wrapping them cannot alias or double-close.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(ends[0]), OwnedFd::from_raw_fd(ends[1])) };
    let place = |owned: OwnedFd, at: RawFd| -> Result<std::fs::File, JailError> {
        if owned.as_raw_fd() == at {
            return Ok(std::fs::File::from(owned));
        }
        // SAFETY: dup3 onto a descriptor checked free above; O_CLOEXEC keeps
        // it out of anything exec'd (nothing is, after lockdown).
        check(unsafe { libc::dup3(owned.as_raw_fd(), at, libc::O_CLOEXEC) }).map_err(err)?;
        drop(owned);
        // SAFETY: dup3 made `at` a new descriptor owned by nothing else.
        Ok(std::fs::File::from(unsafe { OwnedFd::from_raw_fd(at) }))
    };
    Ok((place(read, TURN_READ_FD)?, place(write, TURN_WRITE_FD)?))
}

/// Lock this process down: undumpable, Landlock with no rights, then the
/// seccomp allow-list. Call once the engine is initialised and before any
/// app input is read. Irreversible.
pub fn lockdown() -> Result<JailReport, JailError> {
    lockdown_as(seccomp::Profile::Invocation)
}

/// As [`lockdown`], for a *template*: a worker that runs each invocation in
/// a child forked from itself ([`fork_invocation`]), so every invocation
/// starts from the same prepared state and leaves nothing behind. The
/// template may additionally fork (plain `fork` only), reap, and let each
/// child restrict itself to the invocation allow-list; the child does so
/// before returning to any caller.
pub fn lockdown_template() -> Result<JailReport, JailError> {
    let layer = seccomp::invocation_layer()?;
    // Asked now: `getpid` is not on the allow-list.
    let pid = std::process::id();
    let report = lockdown_as(seccomp::Profile::Template)?;
    // Only now: the layer allows whatever it does not kill, so it is handed
    // out only to a process whose template filter is in place.
    let _ = TEMPLATE.set(Template { pid, layer });
    Ok(report)
}

/// What a template's children need after `fork`: who their parent is, and
/// the filter that takes the template's extra calls away
/// ([`seccomp::invocation_layer`]), built before lockdown.
struct Template {
    pid: u32,
    layer: seccompiler::BpfProgram,
}

static TEMPLATE: std::sync::OnceLock<Template> = std::sync::OnceLock::new();

/// Which side of [`fork_invocation`] this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// The new process: it dies with the template and runs under the
    /// invocation allow-list alone (no fork, no wait).
    Child,
    /// The template; the child's pid, for [`wait_child`].
    Parent(i32),
}

/// Fork an invocation process from this template (see
/// [`lockdown_template`]). In the child, before this returns: death with the
/// parent is armed, the parent is checked to be alive (else the child exits
/// at once), and the layer that leaves only the invocation allow-list is
/// installed on top of the template's filter. The process must be
/// single-threaded (workers are).
pub fn fork_invocation() -> Result<Forked, JailError> {
    fork_restricted(|| true)
}

/// As [`fork_invocation`], and give the child `channel` (one the server
/// made for it, from [`recv_ancillary`]) as its own: the child puts it at
/// [`IPC_FD`], which closes the worker's channel in it by the same call,
/// before it restricts itself. Whatever the child does, even living on
/// after its invocation, it can then reach only the invocation the server
/// sends on that channel, which the server closes once answered. The
/// template drops its copy once this returns.
pub fn fork_with_channel(channel: &UnixStream) -> Result<Forked, JailError> {
    fork_restricted(|| {
        // SAFETY: dup3 with two descriptors this process holds; IPC_FD is
        // owned by the worker's channel, which from now on reads and
        // writes the child's own socket under the same number.
        unsafe { libc::dup3(channel.as_raw_fd(), IPC_FD, libc::O_CLOEXEC) == IPC_FD }
    })
}

/// Fork, then in the child: arm death with the parent, check the parent is
/// the template, run `prepare` (still under the template's filter), and
/// install the invocation layer. A child for which any step fails exits.
fn fork_restricted(prepare: impl FnOnce() -> bool) -> Result<Forked, JailError> {
    let template = TEMPLATE
        .get()
        .ok_or_else(|| JailError::Lockdown(io::Error::other("not locked down as a template")))?;
    // SAFETY: the worker is single-threaded, so the child is a faithful copy
    // with no lock held by a vanished thread; glibc's fork resets its own
    // state (malloc, robust list) in the child.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(JailError::Spawn(io::Error::last_os_error())),
        0 => {
            // SAFETY: prctl with integer arguments only.
            let armed = unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } == 0;
            // SAFETY: getppid takes no arguments.
            let parent = unsafe { libc::getppid() };
            let orphaned = u32::try_from(parent).ok() != Some(template.pid);
            if !armed || orphaned || !prepare() || seccompiler::apply_filter(&template.layer).is_err() {
                exit_now(1);
            }
            Ok(Forked::Child)
        }
        child => Ok(Forked::Parent(child)),
    }
}

/// Send `frame` on `channel` with `passed` riding along (`SCM_RIGHTS`): how
/// the server hands a forked worker the channel of its next child. (The
/// server sends: descriptors in flight count against the sender's open
/// files limit, which for a worker is tiny.)
pub fn send_channel(channel: &UnixStream, frame: &[u8], passed: &UnixStream) -> io::Result<()> {
    let fd: libc::c_int = passed.as_raw_fd();
    let mut iov = libc::iovec { iov_base: frame.as_ptr().cast_mut().cast(), iov_len: frame.len() };
    // Room for one descriptor's control message (CMSG_SPACE of an int is 24
    // bytes on Linux), aligned as a cmsghdr must be.
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE computes a size from an integer.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    // SAFETY: the control buffer is larger than msg_controllen, so the first
    // header and its data (one int) lie inside it; sendmsg only reads the
    // frame (through iov) and the control buffer, both alive for the call,
    // and never writes through `iov_base`.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), fd);
        loop {
            let n = libc::sendmsg(channel.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL);
            if let Ok(n) = usize::try_from(n) {
                break n;
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    };
    // The descriptor went with the first byte; the rest of a frame cut short
    // follows as plain bytes.
    if let Some(rest) = frame.get(sent..)
        && !rest.is_empty()
    {
        io::Write::write_all(&mut &*channel, rest)?;
    }
    Ok(())
}

/// Give up a template's extra rights for good: restrict this process itself
/// to the invocation allow-list, as a forked child does. For workers
/// that run invocations in place.
pub fn restrict_to_invocation() -> Result<(), JailError> {
    let template = TEMPLATE
        .get()
        .ok_or_else(|| JailError::Lockdown(io::Error::other("not locked down as a template")))?;
    seccompiler::apply_filter(&template.layer).map_err(|e| JailError::Seccomp(e.to_string()))
}

/// How a forked invocation process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildExit {
    /// Its exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ChildExit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Wait for the invocation process `pid` to end.
pub fn wait_child(pid: i32) -> io::Result<ChildExit> {
    wait_for(pid)
}

/// Wait for any child of this process to end.
pub fn wait_any_child() -> io::Result<ChildExit> {
    wait_for(-1)
}

fn wait_for(pid: i32) -> io::Result<ChildExit> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes one int through the pointer, which lives
        // on this stack frame.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r > 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        ChildExit { code: None, signal: Some(libc::WTERMSIG(status)) }
    } else {
        ChildExit { code: Some(libc::WEXITSTATUS(status)), signal: None }
    })
}

/// End this process at once: no destructors, no buffered output, no atexit
/// handlers (a forked invocation process must not run the template's).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit ends the process; it never returns and touches no memory.
    unsafe { libc::_exit(code) }
}

fn lockdown_as(profile: seccomp::Profile) -> Result<JailReport, JailError> {
    // Read now: once Landlock and seccomp apply, /proc is out of reach.
    let namespaces = in_new_user_namespace();
    // No other process of the same user may attach to or read this one.
    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) }).map_err(JailError::Lockdown)?;
    // SAFETY: prctl with integer arguments only; idempotent if already set.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }).map_err(JailError::Lockdown)?;
    let landlock = landlock_no_rights()?;
    seccomp::install(profile)?;
    Ok(JailReport {
        namespaces,
        seccomp: true,
        landlock,
        no_new_privs: true,
        code_on_huge_pages: false,
        memory_reset: false,
    })
}

/// Deny every file-system and TCP right Landlock knows; report how much the
/// kernel enforced.
fn landlock_no_rights() -> Result<String, JailError> {
    use landlock::{ABI, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope};
    let abi = ABI::V6;
    let err = |e: landlock::RulesetError| JailError::Landlock(e.to_string());
    let status = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .map_err(err)?
        .handle_access(AccessNet::from_all(abi))
        .map_err(err)?
        .scope(Scope::from_all(abi))
        .map_err(err)?
        .create()
        .map_err(err)?
        .restrict_self()
        .map_err(err)?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => "enforced",
        RulesetStatus::PartiallyEnforced => "partially enforced",
        RulesetStatus::NotEnforced => "not supported by this kernel",
    }
    .to_owned())
}

/// Whether this process runs in a user namespace other than the initial one
/// (its uid map is not the identity map of the whole range).
pub fn in_new_user_namespace() -> bool {
    // Read before lockdown where it matters; after seccomp, opening files is
    // forbidden, so the answer is computed once, lazily, beforehand.
    *USER_NS.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .map(|m| !m.split_whitespace().eq(["0", "0", "4294967295"]))
            .unwrap_or(false)
    })
}

static USER_NS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Check that jailed workers can start on this machine: returns the reason
/// they cannot, for the operator.
pub fn probe_namespaces() -> Result<(), JailError> {
    let spec = WorkerSpec {
        executable: PathBuf::from("/bin/true"),
        args: Vec::new(),
        limits: ProcessLimits { address_space_bytes: 256 * 1024 * 1024, cpu_seconds: 5 },
        namespaces: NamespacePolicy::Require,
        inherit_stderr: false,
        huge_pages: false,
        snapshots: false,
    };
    let mut spawned = spawn(&spec)?;
    spawned.child.wait().map_err(JailError::Spawn)?;
    Ok(())
}

/// Have the kernel attach the sending process to everything that arrives
/// on `server_end` (`SO_PASSCRED`).
fn pass_credentials(server_end: &UnixStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt reads one int through the pointer, which lives on
    // this stack frame, and the length given is that int's.
    check(unsafe {
        libc::setsockopt(
            server_end.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PASSCRED,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

/// Read from a channel with what rode along: on the server's end of a
/// worker channel ([`Spawned::channel`]), which process sent the bytes
/// read: the process id the kernel attached, in the server's pid
/// namespace. The kernel never hands out bytes from two senders in one
/// read, and a worker cannot name another process as the sender (that
/// takes `CAP_SYS_ADMIN` over the server's pid namespace, and the
/// allow-list has no `sendmsg` to try with), so the server can tell which
/// of a worker's processes sent each frame. `None`: the bytes came without
/// a sender, which does not happen on a channel made by [`spawn`] (or the
/// read returned nothing). On a template's end, the descriptor the server
/// passed with a frame (flags `MSG_CMSG_CLOEXEC` only, as its allow-list
/// demands).
pub fn recv_ancillary(channel: &UnixStream, buf: &mut [u8]) -> io::Result<Received> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // Room for one credentials message (CMSG_SPACE of a ucred is 32 bytes
    // on Linux) and a few descriptors, aligned as a cmsghdr must be.
    // Descriptors that do not fit are closed by the kernel.
    let mut control = [0u64; 12];
    // SAFETY: msghdr is plain data for which all zeroes is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    let read = loop {
        // SAFETY: recvmsg writes at most `iov_len` bytes into `buf` and at
        // most `msg_controllen` bytes into `control`, both of which outlive
        // the call; descriptors a peer might pass would arrive close-on-exec.
        let n = unsafe { libc::recvmsg(channel.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        if let Ok(n) = usize::try_from(n) {
            break n;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    let mut sender = None;
    let mut passed: Option<OwnedFd> = None;
    // SAFETY: the CMSG_* functions walk the control buffer recvmsg filled,
    // within the length it reported in `msg_controllen`; each header they
    // return points into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let data = libc::CMSG_DATA(cmsg);
            let payload =
                (header.cmsg_len as usize).saturating_sub(data.offset_from(cmsg.cast::<u8>()) as usize);
            if header.cmsg_level == libc::SOL_SOCKET {
                if header.cmsg_type == libc::SCM_CREDENTIALS && payload >= std::mem::size_of::<libc::ucred>()
                {
                    let cred: libc::ucred = std::ptr::read_unaligned(data.cast());
                    sender = Some(cred.pid);
                } else if header.cmsg_type == libc::SCM_RIGHTS {
                    // The kernel installed these descriptors in this process
                    // for this call alone: each is owned here. The first is
                    // kept for the caller; any more are closed, so that none
                    // leaks into the server.
                    for i in 0..payload / std::mem::size_of::<libc::c_int>() {
                        let fd: libc::c_int = std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i));
                        let owned = OwnedFd::from_raw_fd(fd);
                        if passed.is_none() {
                            passed = Some(owned);
                        }
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
    }
    Ok(Received { read, sender: sender.filter(|_| read > 0), passed })
}

/// What one [`recv_ancillary`] brought.
#[derive(Debug)]
pub struct Received {
    /// Bytes read into the buffer.
    pub read: usize,
    /// The process that sent them, if the kernel said.
    pub sender: Option<i32>,
    /// A descriptor that rode with them (the server handing a template a
    /// child's channel).
    pub passed: Option<OwnedFd>,
}

/// Wait until `stream` has data to read (or its peer hung up), for at most
/// `timeout`. Returns whether it became readable.
pub fn wait_readable(stream: &impl AsFd, timeout: std::time::Duration) -> io::Result<bool> {
    let [ready] = wait_any([stream.as_fd()], Some(timeout))?;
    Ok(ready)
}

/// Wait until any of `fds` has data to read (or its peer hung up), for at
/// most `timeout` (without one, for as long as it takes). Returns which
/// became readable.
pub fn wait_any<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<std::time::Duration>,
) -> io::Result<[bool; N]> {
    let millis = timeout.map_or(-1, |t| libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX));
    let mut polled = fds.map(|fd| libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
    loop {
        // SAFETY: poll reads and writes exactly N pollfds, which live on
        // this stack frame for the duration of the call.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), N as libc::nfds_t, millis) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        return Ok(polled.map(|p| p.revents != 0));
    }
}
