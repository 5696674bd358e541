//! What one invocation's fresh runtime costs in this process, without the
//! jail, the IPC or the server: prepare (runtime, context, natives, prelude,
//! the entry module evaluated), run a trivial handler, free.
//!
//! `cargo run --release -p kiln-js --example runtime_cost -- 3000` prints the
//! mean of each step. For a figure this VM's noise cannot move, count
//! instructions instead: run it under `valgrind --tool=callgrind` with two
//! call counts and divide the difference (docs/PERFORMANCE.md shows how).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use kiln_ipc::{HostReply, Import, Invocation, Limits, LogLevel, ModuleKind, Outcome, SourceModule};

/// A host that answers nothing: the handler makes no calls.
struct Silent;

impl kiln_js::Host for Silent {
    fn log(&mut self, _: LogLevel, _: String) {}
    fn call(&mut self, _: u64, _: String, _: serde_json::Value) {}
    fn wait(&mut self, _: Instant) -> Option<(u64, HostReply)> {
        None
    }
}

fn main() -> Result<(), String> {
    let calls: u32 = match std::env::args().nth(1) {
        Some(n) => n.parse().map_err(|e| format!("the call count {n:?} is not a number: {e}"))?,
        None => 1000,
    };
    // The same handler as `kiln bench invoke`'s trivial workload, or with
    // `logging` one that also writes a console line and sleeps on a timer,
    // as many real handlers do (to see what loading those on first use costs),
    // or with `intl` one that formats a number and a date and compares two
    // strings (what loading `kiln:intl` costs).
    let code = match std::env::args().nth(2).as_deref() {
        None => "exports.run = (payload) => ({ ok: true, n: payload.n });\n",
        Some("logging") => {
            "exports.run = async (payload) => { console.log('got', payload.n); await new Promise((r) => setTimeout(r, 0)); return { ok: true, n: payload.n }; };\n"
        }
        Some("intl") => {
            "exports.run = (payload) => ({ ok: true, n: payload.n.toLocaleString(), d: new Date(0).toLocaleDateString('en-US', { month: 'long' }), c: 'a'.localeCompare('B') });\n"
        }
        // One part of Intl each, to see what each costs on first use.
        Some("intl-number") => "exports.run = (payload) => ({ ok: true, n: payload.n.toLocaleString() });\n",
        Some("intl-date") => {
            "exports.run = (payload) => ({ ok: true, n: payload.n, d: new Date(0).toLocaleDateString('en-US', { month: 'long' }) });\n"
        }
        Some("intl-collator") => {
            "exports.run = (payload) => ({ ok: true, n: payload.n, c: 'a'.localeCompare('B') });\n"
        }
        Some(other) => {
            return Err(format!(
                "unknown handler {other:?}: leave it out, or say logging, intl, intl-number, intl-date or intl-collator"
            ));
        }
    };
    let sources = vec![SourceModule {
        id: "src/index.js".into(),
        kind: ModuleKind::CommonJs,
        code: code.into(),
        exports: vec!["run".into()],
        uses_require: false,
    }];
    let imports: BTreeMap<String, BTreeMap<String, Import>> = BTreeMap::new();
    let modules = kiln_js::compile(&sources, &imports).map_err(|e| e.to_string())?;
    let kinds = sources.iter().map(|s| (s.id.clone(), s.kind)).collect();
    let program =
        kiln_js::Program::load(kiln_ipc::Program { modules, kinds, imports }).map_err(|e| e.to_string())?;
    let invocation = Invocation {
        id: "runtime-cost".into(),
        module: "src/index.js".into(),
        export: "run".into(),
        payload: r#"{"n":1}"#.into(),
        context: "{}".into(),
        limits: Limits {
            memory_bytes: 128 << 20,
            stack_bytes: 512 << 10,
            deadline_ms: 25_000,
            max_log_lines: 100,
            max_log_bytes: 100_000,
            max_result_bytes: 5_000_000,
        },
        runtime: String::new(),
    };
    let (mut prepare, mut run, mut free) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..calls {
        let started = Instant::now();
        let prepared = kiln_js::Prepared::new(program, Some("src/index.js"));
        let prepared_at = Instant::now();
        let (outcome, spent) = prepared.run(&invocation, &mut Silent);
        let ran_at = Instant::now();
        drop(spent);
        free += ran_at.elapsed();
        prepare += prepared_at - started;
        run += ran_at - prepared_at;
        if !matches!(outcome, Outcome::Ok { .. }) {
            return Err(format!("the handler failed: {outcome:?}"));
        }
    }
    let mean = |total: Duration| total.as_secs_f64() * 1e6 / f64::from(calls.max(1));
    writeln!(
        std::io::stdout(),
        "{calls} calls: prepare {:.0} µs, run {:.0} µs, free {:.0} µs (means)",
        mean(prepare),
        mean(run),
        mean(free)
    )
    .map_err(|e| e.to_string())
}
