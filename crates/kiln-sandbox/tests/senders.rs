//! What a compromised worker process can reach. In place, the server
//! knows which process sent each frame (the kernel says, with
//! `SO_PASSCRED`) and holds the worker to one process per invocation;
//! forked, each child has a channel of its own that the server closes once
//! it has answered, so a process that outlives its invocation reaches no
//! other. A fake worker (`kiln-fake-worker`, built with the `testing`
//! feature) plays the compromised processes; the real worker, in both
//! modes, runs the whole corpus under these rules in `adversarial.rs`.

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
fn a_forked_process_that_outlives_its_invocation_reaches_no_other() {
    // Each child answers, then keeps writing forged answers into its
    // channel: none reaches a later invocation, because the server closes
    // each child's channel once it has answered, and the next child finds
    // the one before it cut off.
    let app = app("export const run = () => 'real';\n");
    let sandbox = fake("linger", FORKED, &app);
    assert_eq!(
        ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()),
        json!({ "served": 0, "previousCutOff": null })
    );
    for n in 1..4 {
        assert_eq!(
            ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()),
            json!({ "served": n, "previousCutOff": true })
        );
    }
}

#[test]
fn a_forked_child_that_speaks_before_it_is_asked_is_not_believed() {
    // Its frame would be taken for the answer to the invocation it is then
    // sent; the server looks first (as it takes the worker from the pool)
    // and replaces the worker instead: the next call is served by the first
    // child of a new worker.
    let app = app("export const run = () => 'real';\n");
    let sandbox = fake("standby-speaks", FORKED, &app);
    let mut last = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
    for _ in 0..2 {
        let next = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
        assert_ne!(next, last);
        last = next;
    }
}

#[test]
fn the_server_names_the_module_a_forked_worker_evaluates_ahead() {
    // Not a child: its exit status no longer says anything but how it
    // ended. The server names each invocation's module with the channel it
    // sends next.
    let app = app("export const run = () => 'real';\n");
    let sandbox = fake("named-modules", FORKED, &app);
    // The first call's module may have been named before its child answers.
    ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
    let named = ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
    // The first call's module, and perhaps already the second's.
    let named = named.as_array().unwrap();
    assert!(!named.is_empty(), "the server named no module");
    assert!(
        named.iter().all(|m| m == &named[0] && m.as_str().is_some_and(|m| m.contains("index"))),
        "{named:?}"
    );
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
fn in_place_a_second_process_may_not_write_into_an_invocation() {
    let app = app("export const run = () => 'real';\n");
    let sandbox = fake("split", IN_PLACE, &app);
    refused(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap(), "wrote into the invocation");
}

/// What the fake's `fork-each` worker answered: its own process id.
fn worker_pid(outcome: Outcome) -> u64 {
    ok(outcome).as_u64().expect("the fake answers with its process id")
}

#[test]
fn a_time_out_the_function_reports_keeps_the_worker() {
    // Forked, a process that outlived its invocation can no longer take a
    // host reply meant for a later one (it holds no channel of that
    // invocation), so a time-out is the function's own, in either mode.
    let app = app("export const run = () => 'real';\n");
    for mode in [FORKED, IN_PLACE] {
        let sandbox = fake("fork-each", mode, &app);
        let before = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
        assert_eq!(worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), before);
        match invoke(&sandbox, &app_id(1), &app, json!({ "timeout": true })).unwrap() {
            Outcome::Err(e) => assert_eq!(e.code, ErrorCode::TimeOut, "{e:?}"),
            other => panic!("{other:?}"),
        }
        let after = worker_pid(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap());
        assert_eq!(after, before, "forked: {}", mode == FORKED);
    }
}

#[test]
fn in_place_a_worker_that_speaks_between_invocations_is_replaced_before_the_next() {
    // The second answer would pass every sender check (the same process
    // serves again by design); it is caught because an idle worker must be
    // silent.
    let app = app("export const run = () => 'real';\n");
    let sandbox = fake("forge-ahead", IN_PLACE, &app);
    for _ in 0..3 {
        assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!("served"));
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

/// Until process `pid` has exited (a zombie not yet reaped counts) and
/// every thread of it is gone: a thread still exiting may hold the
/// process's descriptors after the first has become a zombie.
fn wait_until_dead(pid: u64) {
    for _ in 0..1_000 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return,
            Ok(stat)
                if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z'))
                    && std::fs::read_dir(format!("/proc/{pid}/task"))
                        .is_ok_and(|tasks| tasks.count() <= 1) =>
            {
                return;
            }
            Ok(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    panic!("process {pid} did not exit");
}
