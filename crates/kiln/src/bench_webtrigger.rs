//! `kiln bench webtrigger`: a load test with `wrk` against a web trigger
//! served by `kiln serve` over HTTPS, beside a Node.js `https` server
//! running the same handler, in the same run on the same machine; and with
//! `--soak-seconds`, a long run against Kiln alone that samples the
//! server's memory (its own and its workers') as it goes.
//!
//! Both servers run on loopback with the same self-signed certificate and
//! keep connections alive; `wrk` (Debian's package) drives each in turn
//! with the same threads, connections and duration. Kiln runs the handler
//! in its jailed sandbox, a fresh QuickJS runtime per request; Node runs
//! it in its one process, with nothing isolating one request from the
//! next. The rate limit is raised out of the way for the run.

use crate::output::say_raw;
use std::fmt::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Failure;

/// The handler both servers run, as a web trigger function.
const HANDLER: &str = r#"exports.run = async (request) => {
  const n = (request.queryParameters && request.queryParameters.n) ? request.queryParameters.n[0] : null;
  return {
    statusCode: 200,
    headers: { 'Content-Type': ['application/json'] },
    body: JSON.stringify({ ok: true, method: request.method, n }),
  };
};
"#;

const MANIFEST: &str = "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-00000000be11\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: run\n  function:\n    - key: run\n      handler: index.run\n";

/// Node's side: the same request shape Kiln builds, the same response mapping.
const NODE_SERVER: &str = r#"const https = require('node:https');
const fs = require('node:fs');
const handler = require('./src/index.js');
const [cert, key, port] = process.argv.slice(2);
https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, (req, res) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', async () => {
    const url = new URL(req.url, 'https://localhost');
    const headers = {};
    for (let i = 0; i < req.rawHeaders.length; i += 2) {
      const name = req.rawHeaders[i].toLowerCase();
      (headers[name] = headers[name] || []).push(req.rawHeaders[i + 1]);
    }
    const queryParameters = {};
    for (const [k, v] of url.searchParams) (queryParameters[k] = queryParameters[k] || []).push(v);
    try {
      const out = await handler.run({ method: req.method, path: url.pathname, headers, queryParameters,
        body: Buffer.concat(chunks).toString('utf8') }, {});
      for (const [name, values] of Object.entries(out.headers || {})) res.setHeader(name, values);
      res.writeHead(out.statusCode);
      res.end(out.body || '');
    } catch (e) {
      res.writeHead(500);
      res.end('{"message":"the function failed"}');
    }
  });
}).listen(Number(port), '127.0.0.1', () => process.stdout.write('listening\n'));
"#;

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What wrk reported.
#[derive(Debug, Default, Clone, Copy)]
struct WrkResult {
    requests_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

pub(crate) async fn webtrigger(
    seconds: u64,
    connections: u32,
    soak_seconds: Option<u64>,
) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let wrk_version = Command::new("wrk").arg("--version").output();
    if wrk_version.is_err() {
        return Err(fail("wrk is not installed (Debian: apt-get install wrk)".into()));
    }
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let work = tempfile::tempdir().map_err(|e| fail(e.to_string()))?;
    let (data, app) = (work.path().join("data"), work.path().join("app"));
    std::fs::create_dir_all(app.join("src")).map_err(|e| fail(e.to_string()))?;
    std::fs::write(app.join("manifest.yml"), MANIFEST).map_err(|e| fail(e.to_string()))?;
    std::fs::write(app.join("src/index.js"), HANDLER).map_err(|e| fail(e.to_string()))?;
    std::fs::write(app.join("server.js"), NODE_SERVER).map_err(|e| fail(e.to_string()))?;
    let kiln = |args: &[&str]| -> Result<String, Failure> {
        let out = Command::new(&exe)
            .args(args)
            .env("KILN_DATA_DIR", &data)
            .env_remove(crate::DATABASE_URL_ENV_VAR)
            .output()
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(format!("kiln {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let app_dir = app.display().to_string();
    kiln(&["deploy", &app_dir])?;
    kiln(&["install", "--site", "bench.atlassian.net", "--product", "jira", "--app", &app_dir])?;
    let kiln_port = free_port()?;
    let base = format!("https://127.0.0.1:{kiln_port}");
    let url = kiln(&[
        "webtrigger",
        "hook",
        "--site",
        "bench.atlassian.net",
        "--app",
        &app_dir,
        "--base-url",
        &base,
    ])?
    .trim()
    .to_owned();
    let server = Command::new(&exe)
        .args(["serve", "--listen", &format!("127.0.0.1:{kiln_port}"), "--webtrigger-rate", "100000000"])
        .env("KILN_DATA_DIR", &data)
        .env_remove(crate::DATABASE_URL_ENV_VAR)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("kiln serve: {e}")))?;
    let server = Killed(server);
    wait_for(kiln_port).await?;
    let node_port = free_port()?;
    let (cert, key) = (data.join("tls/cert.pem"), data.join("tls/key.pem"));
    let node = Command::new("node")
        .current_dir(&app)
        .args(["server.js", &cert.display().to_string(), &key.display().to_string(), &node_port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("node: {e}")))?;
    let _node = Killed(node);
    wait_for(node_port).await?;
    let node_url = format!("https://127.0.0.1:{node_port}/x1/bench");
    let node_version = Command::new("node")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let mut report = String::new();
    let _ = writeln!(
        report,
        "kiln bench webtrigger: wrk, 2 threads, {connections} connections, {seconds} s per run, HTTPS on loopback; node {node_version}\n"
    );
    // Warm both up (Kiln's pool starts its workers, Node's JIT compiles).
    wrk(&format!("{url}?n=1"), connections, 3)?;
    wrk(&format!("{node_url}?n=1"), connections, 3)?;
    let _ = writeln!(
        report,
        "| server | requests/s | p50 (ms) | p99 (ms) | requests | errors | throughput vs node |"
    );
    let _ = writeln!(report, "|---|---|---|---|---|---|---|");
    // Alternate, so drift in the machine's speed falls on both.
    let (mut k, mut n) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        k.push(wrk(&format!("{url}?n=1"), connections, seconds)?);
        n.push(wrk(&format!("{node_url}?n=1"), connections, seconds)?);
    }
    for (name, runs) in [("kiln serve (jailed sandbox)", &k), ("node https", &n)] {
        for r in runs.iter() {
            let ratio =
                r.requests_per_second / n.iter().map(|x| x.requests_per_second).sum::<f64>() * n.len() as f64;
            let _ = writeln!(
                report,
                "| {name} | {:.0} | {:.2} | {:.2} | {} | {} | {ratio:.2}× |",
                r.requests_per_second, r.p50_ms, r.p99_ms, r.requests, r.errors
            );
        }
    }
    say_raw!("{report}");
    if let Some(soak) = soak_seconds {
        soak_run(&url, connections, soak, server.0.id())?;
    }
    drop(work);
    Ok(())
}

/// Run wrk against Kiln for `seconds`, sampling memory every 10 s.
fn soak_run(url: &str, connections: u32, seconds: u64, pid: u32) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let started = Instant::now();
    let child = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(format!("wrk: {e}")))?;
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(10).min(Duration::from_secs(seconds)));
        samples.push((started.elapsed().as_secs(), tree_rss_kib(pid)));
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let result = parse_wrk(&String::from_utf8_lossy(&out.stdout));
    let mut report = String::new();
    let _ = writeln!(
        report,
        "soak: {seconds} s against kiln serve: {:.0} requests/s, p99 {:.2} ms, {} requests, {} errors",
        result.requests_per_second, result.p99_ms, result.requests, result.errors
    );
    let _ = writeln!(report, "| elapsed (s) | server + workers RSS (MiB) |\n|---|---|");
    for (t, kib) in &samples {
        let _ = writeln!(report, "| {t} | {:.1} |", *kib as f64 / 1024.0);
    }
    if let (Some(first), Some(last)) = (samples.get(1).or(samples.first()), samples.last()) {
        let _ = writeln!(
            report,
            "memory from the second sample to the last: {:.1} → {:.1} MiB ({:+.1} %)",
            first.1 as f64 / 1024.0,
            last.1 as f64 / 1024.0,
            (last.1 as f64 - first.1 as f64) / (first.1.max(1) as f64) * 100.0
        );
    }
    say_raw!("{report}");
    Ok(())
}

/// Resident memory of `pid` and all its descendants (KiB), from /proc.
fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = 0;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{p}/status")) {
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else { continue };
        for task in tasks.flatten() {
            if let Ok(children) = std::fs::read_to_string(task.path().join("children")) {
                stack.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    total
}

fn wrk(url: &str, connections: u32, seconds: u64) -> Result<WrkResult, Failure> {
    let out = Command::new("wrk")
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", url])
        .output()
        .map_err(|e| Failure { code: 1, message: format!("wrk: {e}") })?;
    if !out.status.success() {
        return Err(Failure {
            code: 1,
            message: format!("wrk failed: {}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(parse_wrk(&String::from_utf8_lossy(&out.stdout)))
}

/// The figures from wrk's text report.
fn parse_wrk(text: &str) -> WrkResult {
    let mut r = WrkResult::default();
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            r.requests_per_second = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            r.p50_ms = millis(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            r.p99_ms = millis(v.trim());
        } else if line.contains("requests in") {
            r.requests = line.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            r.errors += v.trim().parse::<u64>().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            r.errors += v
                .split(',')
                .filter_map(|part| part.split_whitespace().nth(1))
                .filter_map(|n| n.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    r
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.01s`.
fn millis(v: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or(0.0);
    if let Some(us) = v.strip_suffix("us") {
        num(us) / 1000.0
    } else if let Some(ms) = v.strip_suffix("ms") {
        num(ms)
    } else if let Some(m) = v.strip_suffix('m') {
        num(m) * 60_000.0
    } else if let Some(s) = v.strip_suffix('s') {
        num(s) * 1000.0
    } else {
        num(v)
    }
}

fn free_port() -> Result<u16, Failure> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Failure { code: 1, message: e.to_string() })?;
    l.local_addr().map(|a| a.port()).map_err(|e| Failure { code: 1, message: e.to_string() })
}

async fn wait_for(port: u16) -> Result<(), Failure> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(Failure { code: 1, message: format!("nothing listens on 127.0.0.1:{port} after 10 s") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_reports_are_read() {
        let text = "Running 10s test @ https://127.0.0.1:1/x1/a\n  2 threads and 16 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.20ms  300.00us   9.00ms   80.00%\n  Latency Distribution\n     50%  812.00us\n     75%    1.30ms\n     90%    1.90ms\n     99%    3.50ms\n  120000 requests in 10.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 4\nRequests/sec:  12000.50\nTransfer/sec:      2.00MB\n";
        let r = parse_wrk(text);
        assert!((r.requests_per_second - 12000.5).abs() < 1e-6);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p99_ms - 3.5).abs() < 1e-9);
        assert_eq!(r.requests, 120_000);
        assert_eq!(r.errors, 7);
        assert!((millis("2.00s") - 2000.0).abs() < 1e-9);
    }
}
