//! The server knows which process sent each frame (the kernel says, with
//! `SO_PASSCRED`), and holds a worker to it: every frame of an invocation
//! from one process, and on a forked worker a process that has served no
//! earlier invocation. A fake worker (`kiln-fake-worker`, built with the
//! `testing` feature) plays the compromised processes that break the rules;
//! the real worker, in both modes, runs the whole corpus under them in
//! `adversarial.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::path::PathBuf;

use common::{App, app, app_id, invoke, ok, sandbox};
use kiln_ipc::{ErrorCode, Outcome};
use kiln_sandbox::{Sandbox, SandboxConfig};
use serde_json::json;

/// A jailed sandbox whose workers are the fake, acting out `mode`, serving
/// `app` (compiled by a real worker first: the fake compiles nothing).
fn fake(mode: &str, fork_above_bytes: usize, app: &App) -> Sandbox {
    let program = sandbox().program(&app_id(1), &app.bundle.hash, &app.bundle.bundle).unwrap();
    let fake = Sandbox::new(SandboxConfig {
        worker_executable: PathBuf::from(env!("CARGO_BIN_EXE_kiln-fake-worker")),
        worker_args: vec![mode.into()],
        ..common::config(fork_above_bytes)
    })
    .unwrap();
    fake.insert_program(&app_id(1), &app.bundle.hash, (*program).clone());
    fake
}

fn refused(outcome: Outcome, why: &str) {
    match outcome {
        Outcome::Err(e) => {
            assert_eq!(e.code, ErrorCode::PlatformError, "{e:?}");
            assert!(e.message.contains("the sandbox killed the worker") && e.message.contains(why), "{e:?}");
        }
        other => panic!("expected the worker to be killed for it ({why}), got {other:?}"),
    }
}

const FORKED: usize = 0;
const IN_PLACE: usize = usize::MAX;

#[test]
fn a_process_that_served_once_may_not_answer_again_on_a_forked_worker() {
    let app = app("export const run = () => 'real';\n");
    let sandbox = fake("answer-all", FORKED, &app);
    // The first answer is its own invocation's.
    assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!("served"));
    // The same process answering the next is one that outlived its
    // invocation: the worker is killed, and so on for every new worker.
    refused(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap(), "forked for an earlier invocation");
    assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!("served"));
    refused(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap(), "forked for an earlier invocation");
}

#[test]
fn in_place_the_same_process_may_serve_again() {
    let app = app("export const run = () => 'real';\n");
    let sandbox = fake("answer-all", IN_PLACE, &app);
    for _ in 0..3 {
        assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!("served"));
    }
}

#[test]
fn a_second_process_may_not_write_into_an_invocation() {
    let app = app("export const run = () => 'real';\n");
    for mode in [FORKED, IN_PLACE] {
        let sandbox = fake("split", mode, &app);
        refused(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap(), "wrote into the invocation");
    }
}

/// What the fake's `fork-each` worker answered: its own process id.
fn worker_pid(outcome: Outcome) -> u64 {
    ok(outcome).as_u64().expect("the fake answers with its process id")
}

#[test]
fn a_time_out_on_a_forked_worker_replaces_the_worker() {
    // A process that outlived its invocation can take a host reply meant
    // for a later one, which then times out in its engine and says so
    // itself; on a forked worker that is reason enough not to keep it.
    let app = app("export const run = () => 'real';\n");
    for (mode, replaced) in [(FORKED, true), (IN_PLACE, false)] {
        let sandbox = fake("fork-each", mode, &app);
        let before = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
        // An honest forked worker: a new process for every invocation.
        assert_eq!(worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), before);
        match invoke(&sandbox, &app_id(1), &app, json!({ "timeout": true })).unwrap() {
            Outcome::Err(e) => assert_eq!(e.code, ErrorCode::TimeOut, "{e:?}"),
            other => panic!("{other:?}"),
        }
        let after = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
        assert_eq!(after != before, replaced, "forked: {}, worker {before} then {after}", mode == FORKED);
    }
}

#[test]
fn a_worker_that_speaks_between_invocations_is_replaced_before_the_next() {
    // In place the second answer would pass every sender check (the same
    // process serves again by design); it is caught because an idle worker
    // must be silent.
    let app = app("export const run = () => 'real';\n");
    for mode in [FORKED, IN_PLACE] {
        let sandbox = fake("forge-ahead", mode, &app);
        for _ in 0..3 {
            assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!("served"));
        }
    }
}

#[test]
fn a_worker_that_died_while_idle_is_replaced_before_the_next_invocation() {
    // Its death is found when it is taken from the pool, so the next call is
    // served by a new worker instead of failing on a closed channel.
    let app = app("export const run = () => 'real';\n");
    for mode in [FORKED, IN_PLACE] {
        let sandbox = fake("answer-once", mode, &app);
        let mut last = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
        for _ in 0..2 {
            wait_until_dead(last);
            let next = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
            assert_ne!(next, last);
            last = next;
        }
    }
}

/// Until process `pid` has exited (a zombie not yet reaped counts).
fn wait_until_dead(pid: u64) {
    for _ in 0..1_000 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat) if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z')) => return,
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    panic!("process {pid} did not exit");
}
