//! A worker gets its channel however the server's descriptors fall. The
//! channel goes to fd 3 in the worker; when the server's own number for
//! the worker's end already is 3 (a server started with standard input
//! closed, or another thread closing fd 3 while the pair is made), there is
//! nothing to move, and the end's close-on-exec flag must still be cleared.
//!
//! Alone in its test binary: it rearranges this process's descriptors.

#![allow(clippy::unwrap_used, clippy::panic, reason = "test code: a panic is a failed test")]

use std::io::Read;
use std::path::PathBuf;

use kiln_jail::{NamespacePolicy, ProcessLimits, WorkerSpec, spawn};

/// Whether `fd` is open in this process.
fn open(fd: i32) -> bool {
    // SAFETY: fcntl(F_GETFD) only queries a descriptor.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Move `fd` out of the way (to a number of 100 or more), if it is open.
fn vacate(fd: i32) -> Option<i32> {
    if !open(fd) {
        return None;
    }
    // SAFETY: duplicates and closes a descriptor this process holds; the
    // copy is put back by `restore` before the test ends.
    unsafe {
        let moved = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
        assert!(moved >= 100, "cannot move fd {fd}");
        libc::close(fd);
        Some(moved)
    }
}

fn restore(fd: i32, moved: Option<i32>) {
    if let Some(moved) = moved {
        // SAFETY: puts the descriptor moved by `vacate` back in its place.
        unsafe {
            libc::dup2(moved, fd);
            libc::close(moved);
        }
    }
}

#[test]
fn a_worker_gets_its_channel_when_the_servers_end_of_it_was_fd_3() {
    // Free fd 0 and fd 3, and check nothing between them is free: the pair
    // of sockets made next is then (0, 3), the worker's end at 3.
    let stdin = vacate(0);
    let three = vacate(3);
    assert!(open(1) && open(2), "standard output and error are open");
    let spec = WorkerSpec {
        executable: PathBuf::from(env!("CARGO_BIN_EXE_kiln-jail-malicious")),
        args: vec!["report".into()],
        limits: ProcessLimits { address_space_bytes: 1 << 30, cpu_seconds: 10 },
        namespaces: NamespacePolicy::Require,
        inherit_stderr: false,
        huge_pages: false,
        snapshots: false,
    };
    let spawned = spawn(&spec);
    let made_at_3 = open(3);
    let outcome = spawned.map(|mut spawned| {
        let mut report = String::new();
        let _ = spawned.channel.read_to_string(&mut report);
        (report, spawned.child.wait())
    });
    // The server's end (fd 0) and the worker's (3, closed in this process
    // once the worker has it) are dropped by now; put the others back.
    restore(3, three);
    restore(0, stdin);
    let (report, status) = outcome.unwrap();
    assert!(!made_at_3, "something else holds fd 3: the worker's end was not made there");
    assert!(status.unwrap().success(), "the worker did not run: {report:?}");
    assert!(report.lines().any(|l| l.starts_with("fds=")), "no report from the worker: {report:?}");
}
