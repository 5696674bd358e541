//! `kiln serve` as an operator runs it: JSON log lines on standard error,
//! Prometheus metrics on a loopback listener, and a graceful drain on
//! SIGTERM that lets in-flight work finish before the process exits 0.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Kiln, code, text};
use kiln_http::{HttpsClient, Method};
use serde_json::Value;

/// An app with a quick web trigger and one that takes `slow_ms`.
fn app(slow_ms: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000f3\n  runtime:\n    name: nodejs22.x\n\
         modules:\n  webtrigger:\n    - key: hook\n      function: hook-fn\n    - key: slow-hook\n      function: slow-fn\n\
         \x20 function:\n    - key: hook-fn\n      handler: index.hook\n    - key: slow-fn\n      handler: index.slow\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::write(
        p.join("src/index.js"),
        format!(
            "export const hook = (req) => ({{ statusCode: 200, body: `got ${{req.body.length}} bytes` }});\n\
             export async function slow() {{\n  await new Promise((r) => setTimeout(r, {slow_ms}));\n  \
             return {{ statusCode: 200, body: 'finished' }};\n}}\n"
        ),
    )
    .unwrap();
    dir
}

/// A running `kiln serve` whose every stderr line is kept.
struct Server {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    base: String,
    metrics: String,
    client: HttpsClient,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The word after `marker` in a logged message.
fn word_after(lines: &[String], marker: &str) -> Option<String> {
    lines.iter().find_map(|l| {
        let record: Value = serde_json::from_str(l).ok()?;
        let message = record["fields"]["message"].as_str()?;
        let at = message.find(marker)?;
        Some(message[at + marker.len()..].split_whitespace().next()?.to_owned())
    })
}

fn start(kiln: &Kiln, extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--data-dir")
        .arg(kiln.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(extra)
        .env_remove("KILN_KEK")
        .env_remove("KILN_AUDIT_KEY")
        .env_remove("KILN_LOG")
        .env("USER", "tester")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            sink.lock().unwrap().push(line.unwrap());
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let base = loop {
        if let Some(base) = word_after(&lines.lock().unwrap(), "Kiln admin API on ") {
            break base;
        }
        assert!(Instant::now() < deadline, "kiln serve did not start: {:?}", lines.lock().unwrap());
        assert!(child.try_wait().unwrap().is_none(), "kiln serve exited: {:?}", lines.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    };
    let metrics = word_after(&lines.lock().unwrap(), "Metrics on http://").unwrap();
    let metrics = metrics.trim_end_matches("/metrics").to_owned();
    let ca = std::fs::read_to_string(kiln.data_dir().join("tls/cert.pem")).unwrap();
    let addr = base.strip_prefix("https://").unwrap();
    let client = HttpsClient::new(addr, "127.0.0.1", kiln_crypto::tls::client_config(&ca).unwrap());
    Server { child, lines, base, metrics, client }
}

impl Server {
    /// A plain HTTP GET on the metrics listener: status and body.
    fn scrape(&self, path: &str) -> (u16, String) {
        let mut tcp = std::net::TcpStream::connect(&self.metrics).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(tcp, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
        let mut raw = String::new();
        tcp.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_owned())
    }

    /// Wait until `/metrics` shows `line`.
    fn wait_for_metric(&self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, body) = self.scrape("/metrics");
            if body.lines().any(|l| l == line) {
                return body;
            }
            assert!(Instant::now() < deadline, "no {line:?} in:\n{body}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every line, parsed: each must be one JSON object.
    fn records(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kiln serve did not exit: {:?}", self.lines());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn terminate(&self) {
        let out = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

/// The app deployed and installed, and the URLs of its two web triggers.
fn installed(kiln: &Kiln, app: &tempfile::TempDir, base: &str) -> (String, String) {
    let dir = app.path().to_str().unwrap();
    let url = |module: &str| {
        let url = kiln.ok(&[
            "webtrigger",
            module,
            "--site",
            "https://a.atlassian.net",
            "--app",
            dir,
            "--base-url",
            base,
        ]);
        url.trim().strip_prefix(base).unwrap().to_owned()
    };
    (url("hook"), url("slow-hook"))
}

fn deploy(kiln: &Kiln, app: &tempfile::TempDir) {
    let dir = app.path().to_str().unwrap();
    kiln.ok(&["deploy", dir]);
    kiln.ok(&["install", "--site", "https://a.atlassian.net", "--product", "jira", "--app", dir]);
}

#[test]
fn metrics_count_invocations_and_logs_are_json_lines_without_payloads() {
    let kiln = Kiln::new();
    let app = app(10);
    deploy(&kiln, &app);
    let server = start(&kiln, &[]);
    let (hook, _) = installed(&kiln, &app, &server.base);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let canary = "payload-canary-5d1e";
    let reply = rt.block_on(server.client.send(Method::POST, &hook, &[], Some(canary.as_bytes()))).unwrap();
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "got 19 bytes"));
    let missing = rt.block_on(server.client.send(Method::GET, "/no/such/route", &[], None)).unwrap();
    assert_eq!(missing.status.as_u16(), 404);

    let body = server.wait_for_metric("kiln_invocations_total{kind=\"webtrigger\",outcome=\"ok\"} 1");
    for expected in [
        "kiln_invocations_in_flight 0",
        "kiln_invocation_duration_seconds_count{kind=\"webtrigger\"} 1",
        "kiln_http_requests_total{class=\"4xx\"} 1",
        "kiln_webtrigger_rate_limited_total 0",
        "kiln_egress_decisions_total{outcome=\"denied\"} 0",
        "kiln_product_decisions_total{outcome=\"denied\"} 0",
        "kiln_sandbox_pools 1",
        "kiln_draining 0",
        "# TYPE kiln_invocations_total counter",
    ] {
        assert!(body.lines().any(|l| l == expected), "no {expected:?} in:\n{body}");
    }
    assert!(body.lines().any(|l| l.starts_with("kiln_http_requests_total{class=\"2xx\"} ")), "{body}");
    assert!(body.lines().any(|l| l.starts_with("kiln_sandbox_workers{state=\"idle\"} ")), "{body}");
    assert_eq!(server.scrape("/readyz"), (200, "ready".to_owned()));

    // Every line is one JSON object with a time, a level, a target and a message.
    let records = server.records();
    assert!(records.len() >= 4, "{records:?}");
    for r in &records {
        assert!(r["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{r}");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&r["level"].as_str().unwrap()), "{r}");
        assert!(r["target"].is_string(), "{r}");
        assert!(r["fields"]["message"].is_string(), "{r}");
    }
    // The invocation's line names what ran and how it ended, and nothing it was given.
    let invocation = records.iter().find(|r| r["target"] == "kiln::invocation").unwrap();
    let f = &invocation["fields"];
    assert_eq!(f["kind"], "webtrigger");
    assert_eq!(f["function"], "hook-fn");
    assert_eq!(f["outcome"], "ok");
    assert_eq!(f["app"], "ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000f3");
    assert!(f["installation"].is_string() && f["duration_ms"].is_u64(), "{invocation}");
    let secret = hook.rsplit('/').next().unwrap();
    for line in server.lines() {
        assert!(!line.contains(canary), "a payload was logged: {line}");
        assert!(!line.contains(secret), "a web trigger secret was logged: {line}");
    }
}

#[test]
fn sigterm_lets_the_request_in_flight_finish_and_exits_0() {
    let kiln = Kiln::new();
    let app = app(2_000);
    deploy(&kiln, &app);
    let mut server = start(&kiln, &["--drain-seconds", "20"]);
    let (_, slow) = installed(&kiln, &app, &server.base);
    let client = server.client.clone();
    let in_flight = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(client.send(Method::GET, &slow, &[], None)).unwrap()
    });
    server.wait_for_metric("kiln_invocations_in_flight 1");
    server.terminate();

    // Draining: not ready, no new connections, the metrics listener still up.
    let body = server.wait_for_metric("kiln_draining 1");
    assert!(body.lines().any(|l| l == "kiln_invocations_in_flight 1"), "{body}");
    assert_eq!(server.scrape("/readyz"), (503, "draining".to_owned()));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(
        rt.block_on(server.client.send(Method::GET, "/healthz", &[], None)).is_err(),
        "the listener is closed"
    );

    let reply = in_flight.join().unwrap();
    assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "finished"));
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{:?}", server.lines());
    let records = server.records();
    let messages: Vec<&str> = records.iter().filter_map(|r| r["fields"]["message"].as_str()).collect();
    for expected in ["draining", "drained: every in-flight request and invocation finished", "stopped"] {
        assert!(messages.contains(&expected), "no {expected:?} in {messages:?}");
    }
    let slow_call = records.iter().find(|r| r["fields"]["function"] == "slow-fn").unwrap();
    assert_eq!(slow_call["fields"]["outcome"], "ok");
    assert!(slow_call["fields"]["duration_ms"].as_u64().unwrap() >= 1_900, "{slow_call}");
}

#[test]
fn a_drain_that_runs_out_of_time_stops_anyway_and_says_so() {
    let kiln = Kiln::new();
    let app = app(30_000);
    deploy(&kiln, &app);
    let mut server = start(&kiln, &["--drain-seconds", "1", "--log-format", "json"]);
    let (_, slow) = installed(&kiln, &app, &server.base);
    let client = server.client.clone();
    let _abandoned = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _ = rt.block_on(client.send(Method::GET, &slow, &[], None));
    });
    server.wait_for_metric("kiln_invocations_in_flight 1");
    let asked = Instant::now();
    server.terminate();
    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{:?}", server.lines());
    assert!(asked.elapsed() < Duration::from_secs(10), "the drain waited {:?}", asked.elapsed());
    let records = server.records();
    assert!(
        records.iter().any(|r| r["level"] == "WARN"
            && r["fields"]["message"] == "the drain did not finish; stopping with this work unfinished"),
        "{records:?}"
    );
}

#[test]
fn metrics_stay_on_loopback_unless_the_insecure_flag_says_otherwise() {
    let kiln = Kiln::new();
    let out = kiln.run(&["serve", "--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"]);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(text(&out).contains("--insecure-metrics-listen-any"), "{}", text(&out));
    let bad = kiln.run(&["serve", "--listen", "127.0.0.1:0", "--log-format", "yaml"]);
    assert_eq!(code(&bad), 2, "{}", text(&bad));
}

#[test]
fn text_logs_are_for_people() {
    let kiln = Kiln::new();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .arg("--data-dir")
        .arg(kiln.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "text"])
        .env_remove("KILN_KEK")
        .env_remove("KILN_AUDIT_KEY")
        .env("USER", "tester");
    let (base, _, _server) = common::listening(command, "kiln serve", "Kiln admin API on ", 0);
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
}
