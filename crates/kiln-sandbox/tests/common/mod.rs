//! What the sandbox's integration tests share: a jailed sandbox and a
//! one-function app built from a code string.

#![allow(dead_code, reason = "each test file uses part of this")]

use std::path::PathBuf;
use std::time::Duration;

use kiln_ipc::Outcome;
use kiln_sandbox::{Caller, InvokeRequest, NoCapabilities, Sandbox, SandboxConfig, SandboxError};

/// A jailed sandbox whose workers fork every invocation from a template.
pub(crate) fn sandbox() -> Sandbox {
    sandbox_with(0)
}

/// How a worker serves: programs of at least `fork_above_bytes` of
/// bytecode from a prepared runtime, in a process forked per invocation or
/// (`reset`) in the worker, which puts its memory back after each; smaller
/// ones in place. A bare number is a threshold with forking.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mode {
    pub(crate) fork_above_bytes: usize,
    pub(crate) reset: bool,
}

impl From<usize> for Mode {
    fn from(fork_above_bytes: usize) -> Mode {
        Mode { fork_above_bytes, reset: false }
    }
}

/// How a worker may serve a small app: (name, mode).
pub(crate) const MODES: [(&str, Mode); 3] = [
    ("forked", Mode { fork_above_bytes: 0, reset: false }),
    ("reset", Mode { fork_above_bytes: 0, reset: true }),
    ("in place", Mode { fork_above_bytes: usize::MAX, reset: false }),
];

/// A jailed sandbox whose workers serve as `mode` says.
pub(crate) fn sandbox_with(mode: impl Into<Mode>) -> Sandbox {
    Sandbox::new(config(mode)).expect("jailed workers must start on this machine")
}

/// The tests' sandbox settings: jailed `kiln-worker`s, one per app.
pub(crate) fn config(mode: impl Into<Mode>) -> SandboxConfig {
    let Mode { fork_above_bytes, reset } = mode.into();
    SandboxConfig {
        worker_executable: PathBuf::from(env!("CARGO_BIN_EXE_kiln-worker")),
        worker_args: Vec::new(),
        namespaces: kiln_sandbox::Namespaces::Require,
        max_memory_mb: 64,
        pool_size: 1,
        recycle_after: 1_000,
        inherit_stderr: false,
        fork_above_bytes,
        huge_pages: true,
        reset_instead_of_fork: reset,
    }
}

/// An app whose function `main` is `run` exported from `src/index.js`.
pub(crate) struct App {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) bundle: kiln_bundle::Built,
}

pub(crate) fn app(code: &str) -> App {
    let dir = tempfile::tempdir().unwrap();
    let manifest = "app:\n  id: ari:cloud:ecosystem::app/00000000-0000-4000-8000-000000000001\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: main\n  function:\n    - key: main\n      handler: index.run\n";
    std::fs::write(dir.path().join("manifest.yml"), manifest).unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/index.js"), code).unwrap();
    let parsed = kiln_manifest::load(dir.path(), &kiln_manifest::NoVariables).unwrap();
    let bundle = kiln_bundle::build(dir.path(), &parsed.manifest).unwrap();
    App { dir, bundle }
}

pub(crate) fn app_id(n: usize) -> String {
    format!("ari:cloud:ecosystem::app/00000000-0000-4000-8000-{n:012}")
}

pub(crate) fn invoke(
    sandbox: &Sandbox,
    id: &str,
    app: &App,
    payload: serde_json::Value,
) -> Result<Outcome, SandboxError> {
    let request = InvokeRequest {
        function: "main".into(),
        payload,
        context: serde_json::json!({}),
        caller: Caller::WebTrigger,
        memory_mb: 32,
        deadline: Some(Duration::from_secs(1)),
        env: Default::default(),
        runtime: serde_json::Value::Null,
    };
    sandbox.invoke(id, &app.bundle.hash, &app.bundle.bundle, &request, &mut NoCapabilities).map(|r| r.outcome)
}

/// The result of a successful invocation, as JSON.
pub(crate) fn ok(outcome: Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Ok { result } => serde_json::from_str(&result).unwrap(),
        Outcome::Err(e) => panic!("the invocation failed: {e:?}"),
    }
}
