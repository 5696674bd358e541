//! The adversarial corpus (`tests/adversarial/*.js`) through jailed workers.
//!
//! For every hostile script: the outcome matches its `// expect:` line, the
//! server (this process) survives, and a canary function of the same app,
//! run next on the same pool, succeeds and sees nothing the hostile run
//! changed. Scripts expected to succeed run twice and must give the same
//! result (module state does not carry over).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_ipc::{ErrorCode, Outcome};
use kiln_sandbox::{Caller, InvokeRequest, NoCapabilities, Sandbox};

mod common;

// Every test runs in both execution modes: invocations forked from a
// prepared template, and fresh runtimes in the two processes a worker
// forks to serve in place.
use common::{MODES, sandbox_with};

const CANARY: &str = r#"
export function __canary() {
  return {
    objectProto: Object.keys(Object.prototype).length === 0 && ({}).isAdmin === undefined,
    arrayPush: [].push(1) === 1 && [].leak === undefined,
    globals: typeof globalThis.secret === 'undefined' && typeof globalThis.sharedCache === 'undefined' && typeof globalThis.seen === 'undefined',
    json: JSON.parse('{"a":1}').a === 1 && JSON.stringify({ b: 2 }) === '{"b":2}',
    promise: Promise.prototype.then.toString().includes('[native code]'),
    date: Date.now() > 1e12,
    kiln: typeof __kilnModules === 'object' && typeof __kilnModules.hostCall === 'function' && !('evil' in __kilnModules),
    extensible: Object.isExtensible(Object.prototype) && Object.isExtensible(Array.prototype),
    errors: Error.prepareStackTrace === undefined && Error.stackTraceLimit === 10
      && typeof new Error('x').stack === 'string',
    intl: (1234.5).toLocaleString() === '1,234.5' && 'a'.localeCompare('B') < 0
      && new Intl.NumberFormat('en-US', { style: 'percent' }).format(0.5) === '50%',
  };
}
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// An app: `src/index.js` holding `code` (`main` → `run`) and the canary
/// (`canary` → `__canary`).
struct App {
    dir: tempfile::TempDir,
    id: String,
    bundle: kiln_bundle::Built,
}

fn app(n: usize, code: &str) -> App {
    let dir = tempfile::tempdir().unwrap();
    let id = format!("ari:cloud:ecosystem::app/00000000-0000-4000-8000-{n:012}");
    let manifest = format!(
        "app:\n  id: {id}\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: main\n    - key: canary-hook\n      function: canary\n  function:\n    - key: main\n      handler: index.run\n    - key: canary\n      handler: canary.__canary\n"
    );
    std::fs::write(dir.path().join("manifest.yml"), manifest).unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/index.js"), code).unwrap();
    // The canary lives in its own module, so a hostile module that fails to
    // load cannot take it down with it.
    std::fs::write(dir.path().join("src/canary.js"), CANARY).unwrap();
    let parsed = kiln_manifest::load(dir.path(), &kiln_manifest::NoVariables).unwrap();
    let bundle = kiln_bundle::build(dir.path(), &parsed.manifest).unwrap();
    App { dir, id, bundle }
}

fn request(function: &str) -> InvokeRequest {
    InvokeRequest {
        function: function.into(),
        payload: serde_json::json!({}),
        context: serde_json::json!({ "installContext": "ari:cloud:jira::site/test" }),
        caller: Caller::WebTrigger,
        memory_mb: 32,
        deadline: Some(Duration::from_secs(1)),
        env: Default::default(),
        runtime: serde_json::Value::Null,
    }
}

fn invoke(sandbox: &Sandbox, app: &App, function: &str) -> Outcome {
    let _ = &app.dir;
    sandbox
        .invoke(&app.id, &app.bundle.hash, &app.bundle.bundle, &request(function), &mut NoCapabilities)
        .unwrap()
        .outcome
}

/// `expect:` line → (accepted outcomes, message substring or OK JSON).
enum Expect {
    Error(Vec<ErrorCode>, Option<String>),
    Ok(serde_json::Value),
}

fn parse_expect(line: &str) -> Expect {
    let rest = line.strip_prefix("// expect: ").expect("first line must be // expect:");
    if let Some(json) = rest.strip_prefix("OK ") {
        return Expect::Ok(serde_json::from_str(json).expect("OK takes JSON"));
    }
    let (codes, text) = match rest.split_once(' ') {
        Some((codes, text)) => {
            (codes, Some(serde_json::from_str::<String>(text).expect("a quoted substring")))
        }
        None => (rest, None),
    };
    let codes = codes
        .split('|')
        .map(|c| match c {
            "TIME_OUT" => ErrorCode::TimeOut,
            "FUNCTION_OUT_OF_MEMORY" => ErrorCode::FunctionOutOfMemory,
            "FUNCTION_ERROR" => ErrorCode::FunctionError,
            "PLATFORM_ERROR" => ErrorCode::PlatformError,
            other => panic!("unknown code {other}"),
        })
        .collect();
    Expect::Error(codes, text)
}

fn canary_ok(outcome: Outcome) -> Result<(), String> {
    match outcome {
        Outcome::Ok { result } => {
            let v: serde_json::Value = serde_json::from_str(&result).unwrap();
            let failed: Vec<&str> = v
                .as_object()
                .unwrap()
                .iter()
                .filter(|(_, ok)| **ok != serde_json::json!(true))
                .map(|(k, _)| k.as_str())
                .collect();
            if failed.is_empty() { Ok(()) } else { Err(format!("canary saw leftovers: {failed:?} in {v}")) }
        }
        Outcome::Err(e) => Err(format!("canary failed: {e:?}")),
    }
}

#[test]
fn every_hostile_script_is_contained_and_the_next_invocation_is_clean() {
    for (mode, fork_above_bytes) in MODES {
        hostile_scripts_are_contained(mode, &sandbox_with(fork_above_bytes));
    }
}

fn hostile_scripts_are_contained(mode: &str, sandbox: &Sandbox) {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(repo().join("tests/adversarial"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "js"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 50, "the corpus must hold at least 50 scripts, has {}", paths.len());
    let mut failures = Vec::new();
    for (n, path) in paths.iter().enumerate() {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let code = std::fs::read_to_string(path).unwrap();
        let expect = parse_expect(code.lines().next().unwrap_or_default());
        let app = app(n, &code);
        let outcome = invoke(sandbox, &app, "main");
        let verdict = match (&expect, &outcome) {
            (Expect::Ok(want), Outcome::Ok { result }) => {
                let got: serde_json::Value = serde_json::from_str(result).unwrap();
                if &got != want {
                    Err(format!("result {got}, expected {want}"))
                } else {
                    // Again: module state and globals start fresh.
                    match invoke(sandbox, &app, "main") {
                        Outcome::Ok { result: again } if again == *result => Ok(()),
                        other => Err(format!("second run differs: {other:?}")),
                    }
                }
            }
            (Expect::Error(codes, text), Outcome::Err(e)) => {
                if !codes.contains(&e.code) {
                    Err(format!("got {} ({}), expected one of {codes:?}", e.code, e.message))
                } else if let Some(t) = text.as_ref().filter(|t| !e.message.contains(t.as_str())) {
                    Err(format!("message {:?} lacks {t:?}", e.message))
                } else {
                    Ok(())
                }
            }
            (_, other) => Err(format!("unexpected outcome {other:?}")),
        };
        let verdict = verdict.and_then(|()| canary_ok(invoke(sandbox, &app, "canary")));
        if let Err(why) = verdict {
            failures.push(format!("{name}: {why}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} scripts not contained ({mode}):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn two_tenants_cannot_read_each_others_state() {
    for (_, fork_above_bytes) in MODES {
        let sandbox = sandbox_with(fork_above_bytes);
        let writer = app(
            9001,
            "let stash = null;\nexport function run(payload) { stash = payload; globalThis.tenantSecret = 'A-secret'; Object.prototype.tenantA = 'A'; return 'stored'; }",
        );
        let reader = app(
            9002,
            "export function run() { return { global: typeof globalThis.tenantSecret, proto: ({}).tenantA === undefined ? 'clean' : 'leaked' }; }",
        );
        for _ in 0..3 {
            assert!(matches!(invoke(&sandbox, &writer, "main"), Outcome::Ok { .. }));
            match invoke(&sandbox, &reader, "main") {
                Outcome::Ok { result } => assert_eq!(result, r#"{"global":"undefined","proto":"clean"}"#),
                other => panic!("{other:?}"),
            }
        }
        assert!(canary_ok(invoke(&sandbox, &writer, "canary")).is_ok());
    }
}
