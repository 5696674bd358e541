//! Invocations fork from one prepared runtime per worker (the template), or
//! run in place in two processes the template forks that take turns: either
//! way they must start from the same state every time and share nothing,
//! not even the sequence of Math.random, and a worker's processes end with
//! it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::{MODES, app, app_id, invoke, ok, sandbox_with};
use serde_json::json;

#[test]
fn every_invocation_draws_its_own_random_numbers() {
    for (mode, fork_above_bytes) in MODES {
        random_numbers_differ(mode, &sandbox_with(fork_above_bytes));
    }
}

fn random_numbers_differ(mode: &str, sandbox: &kiln_sandbox::Sandbox) {
    let app = app(
        "export function run() { return { r: [Math.random(), Math.random()], uuid: crypto.randomUUID() }; }\n",
    );
    let (mut numbers, mut uuids) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    for n in 0..20 {
        // Some calls back to back, some after a gap (see the next test).
        std::thread::sleep(std::time::Duration::from_millis(if n % 3 == 0 { 5 } else { 0 }));
        let out = ok(invoke(sandbox, &app_id(1), &app, json!({})).unwrap());
        for r in out["r"].as_array().unwrap() {
            let r = r.as_f64().unwrap();
            assert!((0.0..1.0).contains(&r), "{r}");
            assert!(numbers.insert(r.to_bits()), "{mode}: Math.random repeated {r} across invocations");
        }
        let uuid = out["uuid"].as_str().unwrap().to_owned();
        assert!(uuids.insert(uuid.clone()), "{mode}: randomUUID repeated {uuid} across invocations");
    }
    let named = common::app("export function run() { return [Math.random.name, typeof Math.random()]; }\n");
    assert_eq!(ok(invoke(sandbox, &app_id(2), &named, json!({})).unwrap()), json!(["random", "number"]));
}

#[test]
fn module_state_and_globals_start_fresh_in_every_invocation() {
    for (mode, fork_above_bytes) in MODES {
        state_starts_fresh(mode, &sandbox_with(fork_above_bytes));
    }
}

fn state_starts_fresh(mode: &str, sandbox: &kiln_sandbox::Sandbox) {
    let app = app(
        "let calls = 0;\nconst loadedAt = Date.now();\nexport function run() {\n  calls += 1;\n  globalThis.leak = (globalThis.leak || 0) + 1;\n  Object.prototype.polluted = true;\n  return { calls, leak: globalThis.leak, loadedAt };\n}\n",
    );
    let first = ok(invoke(sandbox, &app_id(1), &app, json!({})).unwrap());
    assert_eq!(first["calls"], 1);
    // Forked, back to back, a call runs on the template's state; after a
    // gap, on a runtime the waiting child prepared itself. In place, calls
    // alternate between two processes. All start fresh.
    for gap in [0, 0, 0, 5, 5, 0, 5] {
        std::thread::sleep(std::time::Duration::from_millis(gap));
        let again = ok(invoke(sandbox, &app_id(1), &app, json!({})).unwrap());
        assert_eq!(again["calls"], 1, "{mode}: module state carried over (gap {gap} ms): {again}");
        assert_eq!(again["leak"], 1, "{mode}: a global carried over (gap {gap} ms): {again}");
    }
}

#[test]
fn a_crash_inside_an_invocation_is_reported_and_the_app_keeps_serving() {
    let app = app(
        "export function run(p) { if (p.boom) { const a = []; a.length = 2 ** 32 - 1; a.fill(1); } return 'fine'; }\n",
    );
    for (mode, fork_above_bytes) in MODES {
        let sandbox = sandbox_with(fork_above_bytes);
        assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!("fine"), "{mode}");
        let out = invoke(&sandbox, &app_id(1), &app, json!({ "boom": true })).unwrap();
        assert!(matches!(out, kiln_ipc::Outcome::Err(_)), "{mode}: {out:?}");
        for _ in 0..3 {
            assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!("fine"), "{mode}");
        }
    }
}

/// Processes named `kiln-worker` and their parents, from /proc.
fn worker_processes() -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if comm == "kiln-worker" {
            found.push((pid, ppid));
        }
    }
    found
}

#[test]
fn a_workers_children_end_with_it() {
    for (mode, fork_above_bytes) in MODES {
        children_end_with_the_worker(mode, sandbox_with(fork_above_bytes));
    }
}

fn children_end_with_the_worker(mode: &str, sandbox: kiln_sandbox::Sandbox) {
    let app = app("export function run() { return 1; }\n");
    for _ in 0..3 {
        assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!(1));
    }
    // The worker now has children: forked, the one waiting for the next
    // call (the standby); in place, the two that take turns.
    let ours = std::process::id();
    let is_worker_tree =
        |procs: &[(u32, u32)], ppid: u32| ppid == ours || procs.iter().any(|(p, _)| *p == ppid);
    // A standby is forked beside a call, so on a busy machine it may appear
    // a moment after the call's answer: wait for it rather than race it.
    let has_children =
        |procs: &[(u32, u32)]| procs.iter().any(|(_, ppid)| *ppid != ours && is_worker_tree(procs, *ppid));
    // A worker that resets serves in itself.
    let serves_from_children = mode != "reset";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut before = worker_processes();
    while serves_from_children && !has_children(&before) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        before = worker_processes();
    }
    assert_eq!(has_children(&before), serves_from_children, "{mode}: {before:?}");
    drop(sandbox);
    // Every process left must still belong to a live worker of this test
    // binary (other tests run beside this one); an orphaned standby would
    // have been handed to another parent.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let now = worker_processes();
        let orphans: Vec<_> = now.iter().filter(|(_, ppid)| !is_worker_tree(&now, *ppid)).collect();
        if orphans.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{mode}: children outlived their worker: {orphans:?}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Forge carries payloads up to 5 MB. One just under it reaches the handler
/// whole; one over it is refused before any worker sees it, saying why, and
/// the app goes on serving.
#[test]
fn payloads_up_to_5_mb_cross_and_larger_ones_are_refused() {
    let app = app("export function run(p) { return p.s.length; }\n");
    let sandbox = sandbox_with(0);
    let limit = kiln_ipc::MAX_PAYLOAD_BYTES;
    let fits = "x".repeat(limit - 16);
    assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({ "s": fits })).unwrap()), json!(limit - 16));
    let over = "x".repeat(limit);
    match invoke(&sandbox, &app_id(1), &app, json!({ "s": over })) {
        Err(kiln_sandbox::SandboxError::TooLarge { what: "payload", bytes, limit: l }) => {
            assert_eq!((bytes, l), (limit + 8, limit));
        }
        other => panic!("expected the payload to be refused, got {other:?}"),
    }
    assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({ "s": "ok" })).unwrap()), json!(2));
}

#[test]
fn workers_that_fork_run_their_code_on_huge_pages_unless_told_not_to() {
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let available = thp.contains("[always]") || thp.contains("[madvise]");
    let app = app("export function run() { return 'fine'; }\n");
    let on_huge_pages = |sandbox: &kiln_sandbox::Sandbox| -> Vec<bool> {
        assert_eq!(ok(invoke(sandbox, &app_id(1), &app, json!({})).unwrap()), json!("fine"));
        sandbox.jail_reports().iter().map(|r| r.code_on_huge_pages).collect()
    };
    for (mode, fork_above_bytes) in MODES {
        let reports = on_huge_pages(&sandbox_with(fork_above_bytes));
        assert!(!reports.is_empty(), "{mode}: no idle worker to ask");
        let expected = mode == "forked" && available;
        assert!(reports.iter().all(|moved| *moved == expected), "{mode}: {reports:?}, expected {expected}");
    }
    let told_not_to =
        kiln_sandbox::Sandbox::new(kiln_sandbox::SandboxConfig { huge_pages: false, ..common::config(0) })
            .unwrap();
    let reports = on_huge_pages(&told_not_to);
    assert!(!reports.is_empty() && reports.iter().all(|moved| !moved), "{reports:?}");
}

#[test]
fn workers_of_large_programs_put_their_memory_back_unless_told_to_fork() {
    let app = app(
        "let calls = 0;\nexport function run() { calls += 1; globalThis.seen = (globalThis.seen || 0) + 1; return [calls, globalThis.seen]; }\n",
    );
    for (mode, setting) in MODES {
        let sandbox = sandbox_with(setting);
        for _ in 0..5 {
            assert_eq!(ok(invoke(&sandbox, &app_id(1), &app, json!({})).unwrap()), json!([1, 1]), "{mode}");
        }
        let reports = sandbox.jail_reports();
        assert!(!reports.is_empty(), "{mode}: no idle worker to ask");
        let expected = mode == "reset";
        assert!(reports.iter().all(|r| r.memory_reset == expected), "{mode}: {reports:?}");
        // The metrics count the idle workers by how they serve.
        let stats = sandbox.pool_stats();
        let by_serving = (stats.idle_reset, stats.idle_forked, stats.idle_in_place());
        let expected = match mode {
            "reset" => (stats.idle, 0, 0),
            "forked" => (0, stats.idle, 0),
            _ => (0, 0, stats.idle),
        };
        assert!(stats.idle > 0, "{mode}: {stats:?}");
        assert_eq!(by_serving, expected, "{mode}: {stats:?}");
    }
}
