//! `kiln bench invoke`: warm invocation latency and throughput through the
//! jailed sandbox, beside Node.js running the same handlers (a fresh
//! `node:vm` context per invocation, and a fresh process per invocation), in
//! the same run on the same machine.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kiln_sandbox::{Caller, InvokeRequest, NoCapabilities, Sandbox, SandboxConfig};

use crate::Failure;

/// One workload: a CommonJS handler module both runtimes load unchanged.
struct Workload {
    name: &'static str,
    code: String,
}

fn workloads() -> Vec<Workload> {
    let trivial = "exports.run = (payload) => ({ ok: true, n: payload.n });\n".to_owned();
    // About 200 KB of source: a lookup table and many small functions, of
    // which the handler uses a few, as a real bundle's dependencies are.
    let mut big = String::from("const table = [\n");
    for i in 0..1500 {
        big.push_str(&format!(
            "  {{ id: {i}, key: 'KEY-{i}', label: 'label number {i}', weight: {} }},\n",
            i % 17
        ));
    }
    big.push_str("];\n");
    for i in 0..1200 {
        big.push_str(&format!(
            "function helper{i}(x) {{ const t = table[{m}]; return x + t.weight * {i} - t.id + '{i}'.length; }}\n",
            m = i % 1500
        ));
    }
    big.push_str("exports.run = (payload) => ({ ok: true, n: helper7(payload.n) + helper1100(1), label: table[42].label });\n");
    vec![Workload { name: "trivial handler", code: trivial }, Workload { name: "200 KB bundle", code: big }]
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Stats {
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) per_second: f64,
}

pub(crate) fn stats(mut samples: Vec<Duration>, wall: Duration) -> Stats {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Stats { p50_us: at(0.5), p99_us: at(0.99), per_second: samples.len() as f64 / wall.as_secs_f64() }
}

pub(crate) fn invoke(iterations: usize, insecure_skip_namespaces: bool) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let mut report = String::new();
    let node = Command::new("node").arg("--version").output().ok().filter(|o| o.status.success());
    let node_version = node.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let rows = workloads();
    let _ = writeln_out(
        &mut report,
        &format!(
            "kiln bench invoke: {iterations} warm invocations per case; jail {}; node {}\n",
            if insecure_skip_namespaces {
                "WITHOUT namespaces (insecure)"
            } else {
                "on (namespaces, seccomp, Landlock, rlimits)"
            },
            node_version.as_deref().unwrap_or("not found")
        ),
    );
    let _ = writeln_out(
        &mut report,
        "| workload | runtime | p50 (µs) | p99 (µs) | invocations/s | throughput vs node:vm |\n|---|---|---|---|---|---|",
    );
    for w in &rows {
        let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
        write_app(dir.path(), &w.code).map_err(|e| fail(e.to_string()))?;
        let one = kiln_run(dir.path(), iterations, 1, 1, None, insecure_skip_namespaces)?;
        let two = kiln_run(dir.path(), iterations, 2, 2, None, insecure_skip_namespaces)?;
        let paced = kiln_run(
            dir.path(),
            iterations.min(500),
            1,
            1,
            Some(Duration::from_millis(10)),
            insecure_skip_namespaces,
        )?;
        let (vm, process) = match &node_version {
            Some(_) => (node_vm(dir.path(), iterations)?, Some(node_process(dir.path(), 40)?)),
            None => (None, None),
        };
        let ratio = |s: &Stats| vm.map_or("-".to_owned(), |v| format!("{:.1}×", s.per_second / v.per_second));
        let line = |label: &str, s: &Stats, r: String| {
            format!(
                "| {} | {label} | {:.0} | {:.0} | {:.0} | {r} |",
                w.name, s.p50_us, s.p99_us, s.per_second
            )
        };
        let _ = writeln_out(&mut report, &line("kiln, 1 worker, 1 client", &one, ratio(&one)));
        let _ = writeln_out(&mut report, &line("kiln, 2 workers, 2 clients", &two, ratio(&two)));
        let _ = writeln_out(
            &mut report,
            &line("kiln, 1 worker, one call every 10 ms (latency only)", &paced, "-".into()),
        );
        if let Some(v) = vm {
            let _ = writeln_out(&mut report, &line("node:vm, fresh context each", &v, "1.0×".into()));
        }
        if let Some(p) = process {
            let _ = writeln_out(&mut report, &line("node, fresh process each", &p, ratio(&p)));
        }
    }
    print!("{report}");
    let _ = std::io::stdout().flush();
    Ok(())
}

fn writeln_out(out: &mut String, line: &str) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(out, "{line}")
}

fn write_app(dir: &Path, code: &str) -> std::io::Result<()> {
    std::fs::write(
        dir.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/be4c4000-0000-4000-8000-000000000001\n  runtime:\n    name: nodejs22.x\n    memoryMB: 128\nmodules:\n  webtrigger:\n    - key: hook\n      function: main\n  function:\n    - key: main\n      handler: index.run\n",
    )?;
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/index.js"), code)
}

/// Invoke `iterations` times from `clients` threads; with `pace`, one client
/// waits that long between calls (requests arriving with gaps, as in
/// production, rather than back to back).
fn kiln_run(
    dir: &Path,
    iterations: usize,
    workers: usize,
    clients: usize,
    pace: Option<Duration>,
    insecure: bool,
) -> Result<Stats, Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let manifest =
        kiln_manifest::load(dir, &kiln_manifest::NoVariables).map_err(|e| fail(e.to_string()))?.manifest;
    let built = kiln_bundle::build(dir, &manifest).map_err(|e| fail(e.to_string()))?;
    let mut config = SandboxConfig::for_current_exe().map_err(|e| fail(e.to_string()))?;
    config.pool_size = workers;
    config.recycle_after = u32::MAX;
    if insecure {
        config.namespaces = kiln_sandbox::Namespaces::InsecureSkipNamespaces;
    }
    let sandbox = Sandbox::new(config).map_err(|e| fail(e.to_string()))?;
    let app = manifest.app.id.to_string();
    let request = |n: usize| InvokeRequest {
        function: "main".into(),
        payload: serde_json::json!({ "n": n }),
        context: serde_json::json!({}),
        caller: Caller::WebTrigger,
        memory_mb: 128,
        deadline: None,
        env: Default::default(),
        runtime: serde_json::Value::Null,
    };
    let call = |n: usize| -> Result<Duration, String> {
        if let Some(gap) = pace {
            std::thread::sleep(gap);
        }
        let started = Instant::now();
        let result = sandbox
            .invoke(&app, &built.hash, &built.bundle, &request(n), &mut NoCapabilities)
            .map_err(|e| e.to_string())?;
        match result.outcome {
            kiln_ipc::Outcome::Ok { .. } => Ok(started.elapsed()),
            kiln_ipc::Outcome::Err(e) => Err(format!("benchmark invocation failed: {e:?}")),
        }
    };
    for n in 0..200 {
        call(n).map_err(fail)?;
    }
    let per_client = iterations / clients;
    let started = Instant::now();
    let samples: Result<Vec<Vec<Duration>>, String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| s.spawn(|| (0..per_client).map(&call).collect::<Result<Vec<_>, _>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("a client thread panicked".into())))
            .collect()
    });
    let wall = started.elapsed();
    Ok(stats(samples.map_err(fail)?.into_iter().flatten().collect(), wall))
}

/// Node.js with a fresh `node:vm` context per invocation; the script is
/// compiled once, as Kiln compiles bytecode once.
fn node_vm(dir: &Path, iterations: usize) -> Result<Option<Stats>, Failure> {
    let script = r#"
const vm = require('node:vm');
const fs = require('node:fs');
const code = fs.readFileSync(process.argv[2], 'utf8');
const iterations = Number(process.argv[3]);
const script = new vm.Script(`(function (exports, module) {${code}\n})`);
function once(n) {
  const context = vm.createContext({});
  const fn = script.runInContext(context);
  const module = { exports: {} };
  fn(module.exports, module);
  return JSON.stringify(module.exports.run({ n }));
}
for (let i = 0; i < 200; i++) once(i);
const samples = [];
const start = process.hrtime.bigint();
for (let i = 0; i < iterations; i++) {
  const t = process.hrtime.bigint();
  once(i);
  samples.push(Number(process.hrtime.bigint() - t) / 1000);
}
const wall = Number(process.hrtime.bigint() - start) / 1e9;
process.stdout.write(JSON.stringify({ samples, wall }));
"#;
    let path = dir.join("bench-vm.js");
    std::fs::write(&path, script).map_err(|e| Failure { code: 1, message: e.to_string() })?;
    let out = Command::new("node")
        .arg(&path)
        .arg(dir.join("src/index.js"))
        .arg(iterations.to_string())
        .output()
        .map_err(|e| Failure { code: 1, message: format!("cannot run node: {e}") })?;
    if !out.status.success() {
        return Err(Failure {
            code: 1,
            message: format!("node failed: {}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| Failure { code: 1, message: e.to_string() })?;
    let samples: Vec<Duration> = v
        .get("samples")
        .and_then(serde_json::Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_f64()).map(|us| Duration::from_secs_f64(us / 1e6)).collect())
        .unwrap_or_default();
    let wall = Duration::from_secs_f64(v.get("wall").and_then(serde_json::Value::as_f64).unwrap_or(1.0));
    Ok(Some(stats(samples, wall)))
}

/// Node.js started afresh for every invocation.
fn node_process(dir: &Path, iterations: usize) -> Result<Stats, Failure> {
    let once = "const m = require(process.argv[2]); process.stdout.write(JSON.stringify(m.run({ n: 1 })));";
    let path = dir.join("bench-once.js");
    std::fs::write(&path, once).map_err(|e| Failure { code: 1, message: e.to_string() })?;
    let mut samples = Vec::new();
    let started = Instant::now();
    for _ in 0..iterations {
        let t = Instant::now();
        let status = Command::new("node")
            .arg(&path)
            .arg(dir.join("src/index.js"))
            .output()
            .map_err(|e| Failure { code: 1, message: format!("cannot run node: {e}") })?;
        if !status.status.success() {
            return Err(Failure { code: 1, message: "node failed".into() });
        }
        samples.push(t.elapsed());
    }
    Ok(stats(samples, started.elapsed()))
}
