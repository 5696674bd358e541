//! The server's own clock. A worker stuck in native code, where the
//! engine's interrupt handler never runs, must be killed at the hard
//! deadline and replaced, whichever way it serves. This is its own test
//! binary because it watches the frames the sandbox exchanges, and a test
//! running beside it would add to them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::{MODES, app, app_id, invoke, ok, sandbox_with};
use kiln_ipc::{ErrorCode, Outcome};
use serde_json::json;

/// Sixteen decimal conversions of a million-bit BigInt inside one
/// `Array.prototype.join`. QuickJS polls for interrupts between bytecode
/// instructions, not inside its native functions, and the conversion is
/// quadratic native code (about 2 s each on the 2-vCPU VMs Kiln is
/// developed on), so the engine cannot stop this at the deadline: only the
/// server can.
const STUCK: &str = "export function run(p) {\n  if (p.again) return 'served';\n  return Array(16).fill(2n ** 1000000n - 1n).join().length;\n}\n";

#[test]
fn a_worker_stuck_in_native_code_is_killed_at_the_hard_deadline_and_replaced() {
    for (mode, fork_above_bytes) in MODES {
        let sandbox = sandbox_with(fork_above_bytes);
        let stuck = app(STUCK);
        let id = app_id(9200);
        kiln_sandbox::tap::start();
        let outcome = invoke(&sandbox, &id, &stuck, json!({})).unwrap();
        let frames = kiln_sandbox::tap::take();
        match outcome {
            Outcome::Err(e) => assert_eq!(e.code, ErrorCode::TimeOut, "{mode}: {e:?}"),
            other => panic!("{mode}: {other:?}"),
        }
        let kinds: Vec<String> = frames
            .iter()
            .filter_map(|f| serde_json::from_slice::<serde_json::Value>(f).ok())
            .filter_map(|f| f["type"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(kinds.iter().filter(|k| *k == "invoke").count(), 1, "{mode}: {kinds:?}");
        // The worker never answered: the time-out is the server's, and the
        // worker was killed for it.
        assert!(!kinds.iter().any(|k| k == "done"), "{mode}: the worker answered itself: {kinds:?}");
        // The pool serves the next call, from a new worker.
        assert_eq!(
            ok(invoke(&sandbox, &id, &stuck, json!({ "again": true })).unwrap()),
            json!("served"),
            "{mode}"
        );
    }
}
