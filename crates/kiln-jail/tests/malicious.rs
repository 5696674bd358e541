//! The malicious program proves the jail: after lockdown, each forbidden
//! system call kills the process with SIGSYS, while what a worker needs still
//! works; and a spawned worker sees new namespaces, no network, no inherited
//! descriptors, no environment and tight limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;

use kiln_jail::{NamespacePolicy, ProcessLimits, WorkerSpec, spawn};

fn malicious() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln-jail-malicious"))
}

fn run(action: &str) -> std::process::ExitStatus {
    Command::new(malicious()).arg(action).output().unwrap().status
}

#[test]
fn every_forbidden_call_kills_the_process() {
    for action in [
        "open",
        "openat",
        "socket",
        "unix-socket",
        "exec",
        "fork",
        "clone",
        "ptrace",
        "io_uring",
        "kill",
        "write-file-fd",
        "mount",
        "unshare",
        "mmap-exec",
        "mprotect-exec",
        "recv-peek",
    ] {
        let status = run(action);
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{action}: expected death by SIGSYS, got {status:?}");
    }
    // The read a worker makes on its channel (fd 3, absent here: the call
    // fails with EBADF instead of blocking) is not killed.
    let status = run("recv-plain");
    assert_eq!(status.signal(), None, "a plain recv was killed: {status:?}");
}

#[test]
fn what_a_worker_needs_still_works_after_lockdown() {
    let status = run("allowed");
    assert!(status.success(), "{status:?}");
}

/// How the tests start the malicious program as a worker.
fn spec(action: &str, inherit_stderr: bool, huge_pages: bool) -> WorkerSpec {
    WorkerSpec {
        executable: malicious(),
        args: vec![action.into()],
        limits: ProcessLimits { address_space_bytes: 1 << 30, cpu_seconds: 10 },
        namespaces: NamespacePolicy::Require,
        inherit_stderr,
        huge_pages,
        snapshots: action == "snapshot",
    }
}

#[test]
fn a_spawned_worker_is_in_new_namespaces_with_nothing_inherited() {
    // Leave a descriptor open in this process that a careless spawn would leak.
    let leaked = std::fs::File::open("/proc/self/status").unwrap();
    let spec = spec("report", true, false);
    let mut spawned = match spawn(&spec) {
        Ok(s) => s,
        Err(e) => panic!("this machine must support unprivileged namespaces for the jail tests: {e}"),
    };
    let mut report = String::new();
    spawned.channel.read_to_string(&mut report).unwrap();
    let status = spawned.child.wait().unwrap();
    assert!(status.success(), "{status:?}\n{report}");
    let field = |name: &str| {
        report
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} missing: {report}"))
            .to_owned()
    };
    // An unmapped user namespace: the worker is nobody, with no map to root.
    assert_eq!(field("uid_map"), "", "{report}");
    assert_eq!(field("interfaces"), "lo", "{report}");
    // 0-2 (null streams), 3 (the channel), and the directory being listed.
    let fds: Vec<u32> = field("fds").split(',').map(|f| f.parse().unwrap()).collect();
    assert!(fds.iter().all(|fd| *fd <= 4), "leaked descriptors: {fds:?}");
    assert_eq!(field("env"), "0");
    assert_eq!(field("nofile"), kiln_jail::MAX_OPEN_FILES.to_string());
    assert_eq!(field("fsize"), "0");
    assert_eq!(field("core"), "0");
    assert_eq!(field("no_new_privs"), "1");
    // Batch scheduling: a woken worker does not preempt the server.
    assert_eq!(field("policy"), libc::SCHED_BATCH.to_string());
    drop(leaked);
}

#[test]
fn a_worker_asked_for_huge_pages_gets_the_one_setting_and_nothing_else() {
    let spec = spec("report", true, true);
    let mut spawned = spawn(&spec).unwrap();
    let mut report = String::new();
    spawned.channel.read_to_string(&mut report).unwrap();
    assert!(spawned.child.wait().unwrap().success(), "{report}");
    assert!(report.lines().any(|l| l == "env=1"), "{report}");
    let tunables = format!("tunables={}", kiln_jail::HUGE_PAGES_TUNABLE);
    assert!(report.lines().any(|l| l == tunables), "{report}");
}

#[test]
fn a_worker_asked_for_huge_pages_moves_its_code_onto_them_and_runs_on() {
    let field = |report: &str, name: &str| -> String {
        let prefix = format!("{name}=");
        report.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_default().to_owned()
    };
    let run = |huge_pages: bool| -> String {
        let mut spawned = spawn(&spec("report", true, huge_pages)).unwrap();
        let mut report = String::new();
        spawned.channel.read_to_string(&mut report).unwrap();
        assert!(spawned.child.wait().unwrap().success(), "{report}");
        report
    };
    // Not asked: the code stays in the executable's file mapping.
    let plain = run(false);
    assert_eq!(field(&plain, "moved"), "not asked", "{plain}");
    let exe = std::fs::canonicalize(malicious()).unwrap();
    assert_eq!(field(&plain, "code"), exe.display().to_string(), "{plain}");
    // Asked: moved into anonymous memory that asks for huge pages, and the
    // program ran on from there to write this report.
    let huge = run(true);
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.contains("[never]") || thp.is_empty() {
        assert!(field(&huge, "moved").starts_with("Ok(Skipped("), "{huge}");
        return;
    }
    assert!(field(&huge, "moved").starts_with("Ok(Moved { bytes: "), "{huge}");
    assert_eq!(field(&huge, "code"), "anonymous,huge", "{huge}");
}

#[test]
fn without_unprivileged_user_namespaces_workers_are_refused_with_the_reason() {
    let out = Command::new(malicious()).arg("no-userns-probe").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "the jail must refuse: {stderr}");
    for needed in [
        "cannot start a jailed worker",
        "Operation not permitted",
        "max_user_namespaces",
        "insecure-skip-namespaces",
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing from: {stderr}");
    }
}

fn template(what: &str) -> std::process::Output {
    Command::new(malicious()).args(["template", what]).output().unwrap()
}

#[test]
fn a_template_forks_invocation_processes_that_cannot_fork_or_escape() {
    // What an invocation needs still works in the forked child.
    let out = template("allowed");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // Everything forbidden to a worker is forbidden to the child, and so is
    // forking again and everything the template alone may do.
    for action in [
        "open",
        "openat",
        "socket",
        "exec",
        "fork",
        "clone",
        "clone3",
        "ptrace",
        "io_uring",
        "kill",
        "mount",
        "unshare",
        "prctl-dumpable",
        "mmap-exec",
        "mprotect-exec",
        // What the template alone may do, its own way of forking included.
        "libc-fork",
        "wait4",
        "getppid",
        "set-robust-list",
        "prctl-pdeathsig",
        "prctl-no-new-privs",
        "seccomp-filter",
        "recvmsg-channel",
        "dup3-onto-channel",
        "close",
    ] {
        let out = template(action);
        assert_eq!(
            out.status.code(),
            Some(10),
            "{action} in the invocation process must die by SIGSYS: {out:?}"
        );
    }
}

#[test]
fn a_template_itself_may_fork_only_plain_processes() {
    // Threads, new namespaces, clone3, raw fork and everything a worker may
    // not do still kill the template.
    for action in [
        "clone-thread",
        "clone-newuser",
        "clone3",
        "fork",
        "open",
        "socket",
        "exec",
        "ptrace",
        "prctl-dumpable",
    ] {
        let status =
            Command::new(malicious()).args(["template", &format!("self:{action}")]).status().unwrap();
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{action} in the template: expected SIGSYS, got {status:?}"
        );
    }
}

#[test]
fn a_template_may_take_channels_from_the_server_and_nothing_more() {
    // What giving each child the channel the server made for it takes (a
    // refusal by the kernel, exit 3, is fine: the call was allowed; the
    // test runs without a channel at fd 3)...
    for action in ["recvmsg-channel", "dup3-onto-channel", "close"] {
        let status =
            Command::new(malicious()).args(["template", &format!("self:{action}")]).status().unwrap();
        assert!(matches!(status.code(), Some(0 | 3)), "{action} in the template: {status:?}");
    }
    // ...and nothing more: no peeking, no sockets of its own, no sending
    // descriptors, no copying descriptors elsewhere.
    for action in ["recvmsg-peek", "socketpair-unix", "sendmsg-channel", "dup3-elsewhere"] {
        let status =
            Command::new(malicious()).args(["template", &format!("self:{action}")]).status().unwrap();
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{action} in the template: {status:?}");
    }
}

#[test]
fn a_template_that_gives_up_forking_cannot_fork_again() {
    // glibc's fork, exactly what a template may do, works before...
    let status = Command::new(malicious()).args(["template", "self:libc-fork"]).status().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    // ...and kills the process once it has restricted itself.
    for action in ["libc-fork", "allowed"] {
        let status =
            Command::new(malicious()).args(["template", &format!("restricted:{action}")]).status().unwrap();
        if action == "allowed" {
            assert_eq!(status.code(), Some(0), "{status:?}");
        } else {
            assert_eq!(status.signal(), Some(libc::SIGSYS), "{action}: {status:?}");
        }
    }
}

/// Regression: workers were killed when the thread that started them
/// ended (PR_SET_PDEATHSIG is per thread), which a server's short-lived
/// blocking threads do after ten idle seconds.
#[test]
fn a_worker_outlives_the_thread_that_asked_for_it() {
    let spec = spec("linger", false, false);
    let mut spawned = std::thread::spawn(move || spawn(&spec).unwrap()).join().unwrap();
    // The asking thread has ended; give a death signal time to arrive.
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(spawned.child.try_wait().unwrap().is_none(), "the worker died with the thread that started it");
    spawned.child.kill().unwrap();
    spawned.child.wait().unwrap();
}

/// Start `spec`, read everything it writes to its channel, and check it
/// exited cleanly.
fn report_of(spec: &WorkerSpec) -> String {
    let mut spawned = spawn(spec).unwrap();
    let mut report = String::new();
    spawned.channel.read_to_string(&mut report).unwrap();
    assert!(spawned.child.wait().unwrap().success(), "{report}");
    report
}

#[test]
fn a_worker_that_snapshots_itself_gets_its_memory_back_after_each_invocation() {
    let report = report_of(&spec("snapshot", true, false));
    // Every round starts from the state at the snapshot, although the one
    // before changed a static and bytes of a heap buffer, allocated, freed
    // and leaked blocks and grew the heap by 64 MB; after each restore not
    // one page of the kept memory differs from the snapshot, and nothing
    // is left on the stack; afterwards the heap is shrunk back. The third
    // round wrote all 8 MB of the buffer, more than a restore copies, so
    // every page is dropped instead; the rounds after it copy back again
    // (the pages it owned are gone).
    let rounds: Vec<&str> = report.lines().filter_map(|l| l.strip_prefix("round=")).collect();
    let round =
        |restored: &str| format!("counter:1,ends:aa,grew:true,restored:{restored},differing:0,stack_left:0");
    let expected: Vec<String> =
        ["copied", "copied", "dropped", "copied", "copied", "copied"].into_iter().map(round).collect();
    assert_eq!(rounds, expected, "{report}");
    assert!(report.lines().any(|l| l == "after=counter:1,ends:aa,brk_back:true"), "{report}");
}

#[test]
fn only_a_worker_asked_for_snapshots_gets_a_snapshot_file() {
    let has_snapshot_file = |spec: &WorkerSpec| {
        let report = report_of(spec);
        let fds = report.lines().find_map(|l| l.strip_prefix("fds=")).unwrap_or_default().to_owned();
        fds.split(',').any(|fd| fd == kiln_jail::SNAPSHOT_FD.to_string())
    };
    assert!(!has_snapshot_file(&spec("report", true, false)));
    let mut asked = spec("report", true, false);
    asked.snapshots = true;
    assert!(has_snapshot_file(&asked));
}

#[test]
fn a_worker_that_snapshots_itself_has_no_restartable_sequences_for_the_kernel_to_write() {
    // The kernel writes the CPU a thread moves to into the thread's
    // registered area, which lies in memory a snapshot keeps: a worker that
    // resets registers none, and gets that one setting and nothing else.
    let mut asked = spec("report", true, false);
    asked.snapshots = true;
    let report = report_of(&asked);
    assert!(report.lines().any(|l| l == "rseq_size=0"), "{report}");
    let tunables = format!("tunables={}", kiln_jail::SNAPSHOT_TUNABLE);
    assert!(report.lines().any(|l| l == tunables), "{report}");
    assert!(report.lines().any(|l| l == "env=1"), "{report}");
}
