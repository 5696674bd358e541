//! `kiln bench invoke`: warm invocation latency and throughput through the
//! jailed sandbox, beside Node.js running the same handlers (a fresh
//! `node:vm` context per invocation, and a fresh process per invocation), in
//! the same run on the same machine.

use crate::output::say_raw;
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

/// How many blocks the back-to-back measurements are cut into. Kiln with
/// one worker, Kiln with two and node:vm take turns block by block, so a
/// change in the machine's speed during the run (this kind of VM's moves a
/// lot) falls on all of them alike instead of on whichever ran last.
const BLOCKS: usize = 10;

/// How the measured sandbox is set up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setup {
    /// Workers without namespaces (for machines that cannot create them).
    pub(crate) insecure_skip_namespaces: bool,
    /// Every invocation in a forked process, as `kiln serve
    /// --process-per-invocation` runs them.
    pub(crate) process_per_invocation: bool,
    /// Forking workers' code off huge pages (`kiln serve --no-huge-pages`).
    pub(crate) no_huge_pages: bool,
}

pub(crate) fn invoke(iterations: usize, setup: Setup, only: Option<&str>) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let mut report = String::new();
    let node = Command::new("node").arg("--version").output().ok().filter(|o| o.status.success());
    let node_version = node.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let rows: Vec<Workload> =
        workloads().into_iter().filter(|w| only.is_none_or(|o| w.name.contains(o))).collect();
    if rows.is_empty() {
        return Err(fail(format!(
            "no workload's name contains {:?}: they are {:?}",
            only.unwrap_or_default(),
            workloads().iter().map(|w| w.name).collect::<Vec<_>>()
        )));
    }
    let _ = writeln_out(
        &mut report,
        &format!(
            "kiln bench invoke: {iterations} warm invocations per case, in {BLOCKS} alternating blocks; jail {}{}{}; node {}\n",
            if setup.insecure_skip_namespaces {
                "WITHOUT namespaces (insecure)"
            } else {
                "on (namespaces, seccomp, Landlock, rlimits)"
            },
            if setup.process_per_invocation { "; a process forked for every invocation" } else { "" },
            if setup.no_huge_pages { "; forking workers' code off huge pages" } else { "" },
            node_version.as_deref().unwrap_or("not found")
        ),
    );
    let _ = writeln_out(
        &mut report,
        "| workload | runtime | p50 (µs) | p99 (µs) | invocations/s | throughput vs node:vm | CPU per call (µs) |\n|---|---|---|---|---|---|---|",
    );
    for w in &rows {
        let dir = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
        write_app(dir.path(), &w.code).map_err(|e| fail(e.to_string()))?;
        let mut one = KilnCase::new(dir.path(), 1, 1, None, setup)?;
        let mut two = KilnCase::new(dir.path(), 2, 2, None, setup)?;
        let mut vm = match &node_version {
            Some(_) => Some(NodeVm::start(dir.path())?),
            None => None,
        };
        let per_block = (iterations / BLOCKS).max(2);
        for _ in 0..BLOCKS {
            one.block(per_block)?;
            if let Some(vm) = vm.as_mut() {
                vm.block(per_block)?;
            }
            two.block(per_block)?;
        }
        let label = |case: &KilnCase, what: &str| format!("kiln ({}), {what}", case.serving);
        let labels = [label(&one, "1 worker, 1 client"), label(&two, "2 workers, 2 clients")];
        let (one, two) = (one.finish(), two.finish());
        let vm = vm.map(NodeVm::finish).transpose()?;
        let mut paced = KilnCase::new(dir.path(), 1, 1, Some(Duration::from_millis(10)), setup)?;
        paced.block(iterations.min(500))?;
        let paced_label = label(&paced, "1 worker, one call every 10 ms (latency only)");
        let paced = paced.finish();
        let process = match &node_version {
            Some(_) => Some(node_process(dir.path(), 40)?),
            None => None,
        };
        let ratio = |s: &Stats| {
            vm.as_ref().map_or("-".to_owned(), |v| format!("{:.1}×", s.per_second / v.0.per_second))
        };
        // The ratio over the whole run, then the spread of the ratios of
        // blocks that ran one after the other (drift in the machine's speed
        // moves those least).
        let block_ratio = |(s, _, rates): &(Stats, Option<f64>, Vec<f64>)| match &vm {
            Some(v) => match block_ratios(rates, &v.2) {
                Some(r) => format!("{} (blocks {:.1}–{:.1}, median {:.1})", ratio(s), r.min, r.max, r.median),
                None => ratio(s),
            },
            None => "-".to_owned(),
        };
        let line = |label: &str, (s, cpu): &(Stats, Option<f64>), r: String| {
            let cpu = cpu.map_or("-".to_owned(), |us| format!("{us:.0}"));
            format!(
                "| {} | {label} | {:.0} | {:.0} | {:.0} | {r} | {cpu} |",
                w.name, s.p50_us, s.p99_us, s.per_second
            )
        };
        let short = |(s, cpu, _): &(Stats, Option<f64>, Vec<f64>)| (*s, *cpu);
        let [one_label, two_label] = &labels;
        let _ = writeln_out(&mut report, &line(one_label, &short(&one), block_ratio(&one)));
        let _ = writeln_out(&mut report, &line(two_label, &short(&two), block_ratio(&two)));
        let _ = writeln_out(&mut report, &line(&paced_label, &short(&paced), "-".into()));
        if let Some(v) = &vm {
            let _ = writeln_out(&mut report, &line("node:vm, fresh context each", &short(v), "1.0×".into()));
        }
        if let Some(p) = process {
            let _ = writeln_out(&mut report, &line("node, fresh process each", &(p, None), ratio(&p)));
        }
    }
    say_raw!("{report}");
    let _ = std::io::stdout().flush();
    Ok(())
}

/// The spread of per-block throughput ratios.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

/// Kiln's calls per second over node:vm's, block by block (block `i` of
/// each ran one after the other), with the smallest, median and largest.
/// `None` when the runs have no blocks in common, a rate is not finite or
/// one of node:vm's is not positive.
fn block_ratios(kiln: &[f64], node: &[f64]) -> Option<Spread> {
    let mut ratios: Vec<f64> = kiln
        .iter()
        .zip(node)
        .map(|(k, n)| (*n > 0.0 && k.is_finite() && n.is_finite()).then(|| k / n))
        .collect::<Option<_>>()?;
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_by(f64::total_cmp);
    let mid = ratios.len() / 2;
    let upper = *ratios.get(mid)?;
    let median = if ratios.len().is_multiple_of(2) { (ratios.get(mid - 1)? + upper) / 2.0 } else { upper };
    Some(Spread { min: *ratios.first()?, median, max: *ratios.last()? })
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

/// The machine's CPU time so far, from the first line of /proc/stat: time
/// busy and time in all (busy, idle, waiting, stolen), in clock ticks, and
/// how many CPUs there are. `None` where /proc/stat cannot be read.
fn machine_cpu() -> Option<(u64, u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let mut lines = text.lines();
    let fields: Vec<u64> =
        lines.next()?.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum();
    let all = fields.iter().take(8).sum();
    let cpus = lines.filter(|l| l.starts_with("cpu")).count() as u64;
    Some((busy, all, cpus))
}

/// CPU time the whole machine spent between two [`machine_cpu`] readings
/// over `wall`, in microseconds. The whole machine, not just Kiln's
/// processes: a forked or standby process is counted whether or not it has
/// been reaped, and nothing Kiln does on another core is missed (anything
/// else running is counted too, so run on a quiet machine).
fn cpu_used(before: Option<(u64, u64, u64)>, after: Option<(u64, u64, u64)>, wall: Duration) -> Option<f64> {
    let ((busy0, all0, cpus), (busy1, all1, _)) = (before?, after?);
    let share = (busy1.checked_sub(busy0)? as f64) / (all1.checked_sub(all0)?.max(1) as f64);
    Some(share * cpus as f64 * wall.as_secs_f64() * 1e6)
}

/// One Kiln configuration under measurement: a sandbox with `workers`
/// workers, called from `clients` threads; with `pace`, each client waits
/// that long between calls (requests arriving with gaps, as in production,
/// rather than back to back). Samples, wall time and CPU time add up over
/// its blocks.
struct KilnCase {
    sandbox: Sandbox,
    app: String,
    built: kiln_bundle::Built,
    clients: usize,
    pace: Option<Duration>,
    samples: Vec<Duration>,
    wall: Duration,
    /// Calls per second in each block, in order.
    block_rates: Vec<f64>,
    /// Machine CPU time over the blocks, in microseconds (`None` once a
    /// reading failed).
    cpu_us: Option<f64>,
    /// How the workers served, as they said after the warm-up.
    serving: String,
}

impl KilnCase {
    fn new(
        dir: &Path,
        workers: usize,
        clients: usize,
        pace: Option<Duration>,
        setup: Setup,
    ) -> Result<Self, Failure> {
        let fail = |m: String| Failure { code: 1, message: m };
        let manifest =
            kiln_manifest::load(dir, &kiln_manifest::NoVariables).map_err(|e| fail(e.to_string()))?.manifest;
        let built = kiln_bundle::build(dir, &manifest).map_err(|e| fail(e.to_string()))?;
        let mut config = SandboxConfig::for_current_exe().map_err(|e| fail(e.to_string()))?;
        config.pool_size = workers;
        config.recycle_after = u32::MAX;
        if setup.insecure_skip_namespaces {
            config.namespaces = kiln_sandbox::Namespaces::InsecureSkipNamespaces;
        }
        if setup.process_per_invocation {
            config.fork_above_bytes = 0;
            config.reset_instead_of_fork = false;
        }
        config.huge_pages = !setup.no_huge_pages;
        let sandbox = Sandbox::new(config).map_err(|e| fail(e.to_string()))?;
        let mut case = KilnCase {
            sandbox,
            app: manifest.app.id.to_string(),
            built,
            clients,
            pace: None,
            samples: Vec::new(),
            wall: Duration::ZERO,
            block_rates: Vec::new(),
            cpu_us: Some(0.0),
            serving: String::new(),
        };
        // Warm up (compile, start the workers, fill caches), unmeasured.
        case.block(200)?;
        case.serving = serving(&case.sandbox.pool_stats());
        case.samples.clear();
        case.wall = Duration::ZERO;
        case.block_rates.clear();
        case.cpu_us = Some(0.0);
        case.pace = pace;
        Ok(case)
    }

    fn call(&self, n: usize) -> Result<Duration, String> {
        if let Some(gap) = self.pace {
            std::thread::sleep(gap);
        }
        let request = InvokeRequest {
            function: "main".into(),
            payload: serde_json::json!({ "n": n }),
            context: serde_json::json!({}),
            caller: Caller::WebTrigger,
            memory_mb: 128,
            deadline: None,
            env: Default::default(),
            runtime: serde_json::Value::Null,
        };
        let started = Instant::now();
        let result = self
            .sandbox
            .invoke(&self.app, &self.built.hash, &self.built.bundle, &request, &mut NoCapabilities)
            .map_err(|e| e.to_string())?;
        match result.outcome {
            kiln_ipc::Outcome::Ok { .. } => Ok(started.elapsed()),
            kiln_ipc::Outcome::Err(e) => Err(format!("benchmark invocation failed: {e:?}")),
        }
    }

    /// `calls` more calls, split between the clients.
    fn block(&mut self, calls: usize) -> Result<(), Failure> {
        let per_client = (calls / self.clients).max(1);
        let cpu_before = machine_cpu();
        let started = Instant::now();
        let this = &*self;
        let samples: Result<Vec<Vec<Duration>>, String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..this.clients)
                .map(|_| s.spawn(|| (0..per_client).map(|n| this.call(n)).collect::<Result<Vec<_>, _>>()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err("a client thread panicked".into())))
                .collect()
        });
        let wall = started.elapsed();
        let cpu = cpu_used(cpu_before, machine_cpu(), wall);
        self.cpu_us = self.cpu_us.zip(cpu).map(|(a, b)| a + b);
        self.wall += wall;
        let samples = samples.map_err(|m| Failure { code: 1, message: m })?;
        let calls: usize = samples.iter().map(Vec::len).sum();
        self.block_rates.push(calls as f64 / wall.as_secs_f64().max(1e-9));
        self.samples.extend(samples.into_iter().flatten());
        Ok(())
    }

    /// The statistics, the CPU time per call and each block's calls per
    /// second.
    fn finish(self) -> (Stats, Option<f64>, Vec<f64>) {
        let calls = self.samples.len().max(1) as f64;
        let cpu = self.cpu_us.map(|us| us / calls);
        (stats(self.samples, self.wall), cpu, self.block_rates)
    }
}

/// How a case's (idle) workers served, as the sandbox counts them: a
/// worker that could not take a snapshot serves in place instead, and a row
/// must not pass that off as the default.
fn serving(stats: &kiln_sandbox::PoolStats) -> String {
    let (reset, forked, in_place) = (stats.idle_reset, stats.idle_forked, stats.idle_in_place());
    match stats.idle {
        0 => "no idle worker".to_owned(),
        n if reset == n => "reset".to_owned(),
        n if forked == n => "forked".to_owned(),
        n if in_place == n => "NOT reset: in place".to_owned(),
        _ => format!("NOT all reset: {reset} reset, {forked} forked, {in_place} in place"),
    }
}

/// Node.js with a fresh `node:vm` context per invocation; the script is
/// compiled once, as Kiln compiles bytecode once. One long-lived `node`
/// process runs a block of calls each time it reads a count on its input,
/// and answers with the block's samples, wall time and its own CPU time
/// (all its threads, `process.cpuUsage`).
struct NodeVm {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
    samples: Vec<Duration>,
    wall: Duration,
    block_rates: Vec<f64>,
    cpu_us: f64,
}

const NODE_VM_SCRIPT: &str = r#"
const vm = require('node:vm');
const fs = require('node:fs');
const readline = require('node:readline');
const code = fs.readFileSync(process.argv[2], 'utf8');
const script = new vm.Script(`(function (exports, module) {${code}\n})`);
function once(n) {
  const context = vm.createContext({});
  const fn = script.runInContext(context);
  const module = { exports: {} };
  fn(module.exports, module);
  return JSON.stringify(module.exports.run({ n }));
}
for (let i = 0; i < 200; i++) once(i);
process.stdout.write('ready\n');
readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const iterations = Number(line);
  const samples = [];
  const cpuStart = process.cpuUsage();
  const start = process.hrtime.bigint();
  for (let i = 0; i < iterations; i++) {
    const t = process.hrtime.bigint();
    once(i);
    samples.push(Number(process.hrtime.bigint() - t) / 1000);
  }
  const wall = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpuStart);
  process.stdout.write(JSON.stringify({ samples, wall, cpuUs: cpu.user + cpu.system }) + '\n');
});
"#;

impl NodeVm {
    fn start(dir: &Path) -> Result<Self, Failure> {
        use std::io::BufRead as _;
        let fail = |m: String| Failure { code: 1, message: m };
        let path = dir.join("bench-vm.js");
        std::fs::write(&path, NODE_VM_SCRIPT).map_err(|e| fail(e.to_string()))?;
        let mut child = Command::new("node")
            .arg(&path)
            .arg(dir.join("src/index.js"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("cannot run node: {e}")))?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(fail("node's pipes are missing".into()));
        };
        let mut vm = NodeVm {
            child,
            input,
            output: std::io::BufReader::new(output),
            samples: Vec::new(),
            wall: Duration::ZERO,
            block_rates: Vec::new(),
            cpu_us: 0.0,
        };
        let mut line = String::new();
        vm.output.read_line(&mut line).map_err(|e| fail(e.to_string()))?;
        if line.trim() != "ready" {
            return Err(fail(format!("node did not start the benchmark: {:?}", line.trim())));
        }
        Ok(vm)
    }

    fn block(&mut self, calls: usize) -> Result<(), Failure> {
        use std::io::BufRead as _;
        let fail = |m: String| Failure { code: 1, message: m };
        writeln!(self.input, "{calls}").map_err(|e| fail(format!("node went away: {e}")))?;
        let mut line = String::new();
        self.output.read_line(&mut line).map_err(|e| fail(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| fail(format!("node answered {:?}: {e}", line.trim())))?;
        let samples = v
            .get("samples")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| fail("no samples".into()))?;
        self.samples
            .extend(samples.iter().filter_map(|s| s.as_f64()).map(|us| Duration::from_secs_f64(us / 1e6)));
        let wall = v.get("wall").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        self.block_rates.push(samples.len() as f64 / wall.max(1e-9));
        self.wall += Duration::from_secs_f64(wall);
        self.cpu_us += v.get("cpuUs").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
        Ok(())
    }

    fn finish(mut self) -> Result<(Stats, Option<f64>, Vec<f64>), Failure> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.samples.is_empty() {
            return Err(Failure { code: 1, message: "node ran no calls".into() });
        }
        let cpu = self.cpu_us / self.samples.len() as f64;
        Ok((
            stats(std::mem::take(&mut self.samples), self.wall),
            Some(cpu),
            std::mem::take(&mut self.block_rates),
        ))
    }
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

#[cfg(test)]
mod tests {
    use super::{Spread, block_ratios, serving};

    #[test]
    fn block_ratios_pair_blocks_in_order_and_take_the_median() {
        // Block i of Kiln against block i of node:vm: 2.0, 1.0, 3.0.
        let spread = block_ratios(&[200.0, 100.0, 600.0], &[100.0, 100.0, 200.0]);
        assert_eq!(spread, Some(Spread { min: 1.0, median: 2.0, max: 3.0 }));
        // An even count takes the mean of the middle two.
        let spread = block_ratios(&[100.0, 400.0], &[100.0, 100.0]);
        assert_eq!(spread, Some(Spread { min: 1.0, median: 2.5, max: 4.0 }));
    }

    #[test]
    fn a_row_names_how_its_workers_served_and_never_passes_off_a_fallback() {
        let stats = |idle, idle_reset, idle_forked| kiln_sandbox::PoolStats {
            pools: 1,
            workers: idle,
            idle,
            idle_reset,
            idle_forked,
        };
        assert_eq!(serving(&stats(2, 2, 0)), "reset");
        assert_eq!(serving(&stats(1, 0, 1)), "forked");
        assert_eq!(serving(&stats(2, 0, 0)), "NOT reset: in place");
        assert_eq!(serving(&stats(2, 1, 0)), "NOT all reset: 1 reset, 0 forked, 1 in place");
        assert_eq!(serving(&stats(0, 0, 0)), "no idle worker");
    }

    #[test]
    fn block_ratios_refuse_empty_or_broken_runs() {
        assert_eq!(block_ratios(&[], &[]), None);
        assert_eq!(block_ratios(&[100.0], &[0.0]), None);
        assert_eq!(block_ratios(&[f64::NAN], &[100.0]), None);
        assert_eq!(block_ratios(&[f64::INFINITY], &[100.0]), None);
    }
}
