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
    ] {
        let status = run(action);
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{action}: expected death by SIGSYS, got {status:?}");
    }
}

#[test]
fn what_a_worker_needs_still_works_after_lockdown() {
    let status = run("allowed");
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_spawned_worker_is_in_new_namespaces_with_nothing_inherited() {
    // Leave a descriptor open in this process that a careless spawn would leak.
    let leaked = std::fs::File::open("/proc/self/status").unwrap();
    let spec = WorkerSpec {
        executable: malicious(),
        args: vec!["report".into()],
        limits: ProcessLimits { address_space_bytes: 1 << 30, cpu_seconds: 10 },
        namespaces: NamespacePolicy::Require,
        inherit_stderr: true,
    };
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
    drop(leaked);
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
