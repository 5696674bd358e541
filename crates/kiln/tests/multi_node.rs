//! Two `kiln serve` nodes on one PostgreSQL schema (issue 8): every queue
//! message and every scheduled run is handled once, and a node killed in
//! the middle of its work loses nothing that was acknowledged.
//!
//! A small app, deployed and installed with the command line against the
//! shared schema, records what it handles in its own storage:
//!
//! - the `push` web trigger pushes the events it is given to the `work`
//!   queue and answers 202 with the push's `jobId`: the acknowledgement;
//! - the `work` consumer writes `start:<id>:<attempt>:<unique>` when a
//!   delivery begins, sleeps as long as the event asks (a timer), then
//!   writes `done:<id>:<attempt>:<unique>`; `attempt` is the delivery's
//!   `retryContext.retryCount` (0 on the first);
//! - the `tick` scheduled trigger (`fiveMinute`) writes
//!   `run:<contextToken>:<unique>`; the token names the installation,
//!   module and slot, so each run says which slot it was for;
//! - the `read` web trigger lists those keys.
//!
//! Both nodes run the jobs worker and the scheduler with a short poll and
//! lease (`[jobs]`) and each its own insecure test clock (`[scheduler]`),
//! moved through `POST /_kiln/test/clock`. The test shows:
//!
//! 1. forty events pushed through both nodes are each handled exactly once,
//!    and both nodes took part (each node's JSON invocation log lines of
//!    kind `consumer`; they add up to forty);
//! 2. with both clocks moved into a slot, the scheduled trigger runs once
//!    for that slot, and once more for the next slot;
//! 3. a node killed with SIGKILL while it runs a slow consumer call loses
//!    no acknowledged event: the survivor delivers the events the dead
//!    node held once their leases run out. At least once: each event the
//!    dead node was delivering at its death runs at most twice, every
//!    other event exactly once; the slow one was started twice and
//!    finished once, by its second delivery.
//!
//! Needs PostgreSQL (`KILN_TEST_POSTGRES_URL`); without it the test says so
//! and passes, unless `KILN_REQUIRE_POSTGRES=1`. Talks to loopback only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Kiln;
use kiln_http::{HttpsClient, Method, Reply};
use kiln_store::{InstallationRecord, JobState, Store};
use serde_json::{Value, json};

const SITE: &str = "https://multi-node.atlassian.net";
/// The jobs lease: how long the survivor waits for a dead node's events.
const LEASE_SECONDS: u64 = 3;
/// How long an ordinary event's delivery takes: long enough that one node
/// (at most four deliveries at once) cannot take every event of a push
/// before the other node's next poll.
const WORK_MS: u64 = 200;
/// How long the slow event's delivery takes: the node is killed in it.
const SLOW_MS: u64 = 4000;
const FIVE_MINUTES_MS: i64 = 300_000;
/// Deadline for anything the test waits for (never a performance bound).
const LONG: Duration = Duration::from_secs(45);

// ------------------------------------------------------------------ the app

fn write_app(dir: &Path) {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("manifest.yml"),
        "app:
  id: ari:cloud:ecosystem::app/5b0c6f4e-8d1a-4c2b-9e3f-00000000008a
  runtime:
    name: nodejs22.x
modules:
  webtrigger:
    - key: push
      function: push-fn
      response:
        type: dynamic
    - key: read
      function: read-fn
      response:
        type: dynamic
  consumer:
    - key: work-consumer
      queue: work
      function: work-fn
  scheduledTrigger:
    - key: tick
      function: tick-fn
      interval: fiveMinute
  function:
    - key: push-fn
      handler: index.push
    - key: read-fn
      handler: index.read
    - key: work-fn
      handler: index.work
      timeoutSeconds: 60
    - key: tick-fn
      handler: index.tick
permissions:
  scopes:
    - storage:app
",
    )
    .unwrap();
    std::fs::write(
        dir.join("src/index.js"),
        r"import { Queue } from '@forge/events';
import { kvs, WhereConditions } from '@forge/kvs';

const unique = () => `${Date.now()}-${Math.random().toString(36).slice(2)}`;
const answer = (statusCode, value) => ({
  statusCode,
  headers: { 'Content-Type': ['application/json'] },
  body: JSON.stringify(value),
});

// POST [{id, sleepMs}, ...]: one push of those events; 202 with its jobId.
export async function push(request) {
  const events = JSON.parse(request.body).map((body) => ({ body }));
  const { jobId } = await new Queue({ key: 'work' }).push(events);
  return answer(202, { jobId });
}

export async function work(event) {
  const { id, sleepMs } = event.body;
  const attempt = event.retryContext ? event.retryContext.retryCount : 0;
  const tag = `${id}:${attempt}:${unique()}`;
  await kvs.set(`start:${tag}`, 1);
  if (sleepMs > 0) await new Promise((resolve) => setTimeout(resolve, sleepMs));
  await kvs.set(`done:${tag}`, 1);
}

export async function tick(request) {
  await kvs.set(`run:${request.contextToken}:${unique()}`, 1);
}

async function keys(prefix) {
  const out = [];
  let cursor;
  do {
    const page = await kvs.query().where('key', WhereConditions.beginsWith(prefix)).limit(100).cursor(cursor).getMany();
    for (const entry of page.results) out.push(entry.key);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

export async function read() {
  return answer(200, { start: await keys('start:'), done: await keys('done:'), run: await keys('run:') });
}
",
    )
    .unwrap();
}

/// What the app recorded, as the `read` web trigger lists it.
#[derive(Debug, Default)]
struct Records {
    /// Per event id, the attempt of each delivery that began.
    start: BTreeMap<String, Vec<u32>>,
    /// Per event id, the attempt of each delivery that finished.
    done: BTreeMap<String, Vec<u32>>,
    /// Per context token (one per slot), the runs.
    run: BTreeMap<String, usize>,
}

impl Records {
    fn parse(reply: &Value) -> Records {
        let deliveries = |name: &str| {
            let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
            for key in reply[name].as_array().unwrap() {
                let parts: Vec<&str> = key.as_str().unwrap().split(':').collect();
                assert_eq!(parts.len(), 4, "{key}");
                out.entry(parts[1].to_owned()).or_default().push(parts[2].parse().unwrap());
            }
            out
        };
        let mut run = BTreeMap::new();
        for key in reply["run"].as_array().unwrap() {
            let token = key.as_str().unwrap().split(':').nth(1).unwrap().to_owned();
            *run.entry(token).or_default() += 1;
        }
        Records { start: deliveries("start"), done: deliveries("done"), run }
    }

    fn done(&self, id: &str) -> usize {
        self.done.get(id).map_or(0, Vec::len)
    }

    fn started(&self, id: &str) -> usize {
        self.start.get(id).map_or(0, Vec::len)
    }
}

// ------------------------------------------------------------- PostgreSQL

/// The test's schema, dropped when the test ends (the nodes, declared
/// after it, are killed first).
struct Schema {
    url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        if let Err(e) = rt.block_on(Store::drop_postgres_schema(&self.url, &self.name)) {
            #[expect(clippy::print_stderr, reason = "a schema left behind must be visible in test output")]
            {
                eprintln!("note: the test schema {} could not be dropped: {e}", self.name);
            }
        }
    }
}

// ------------------------------------------------------------------ a node

/// One `kiln serve` process, every stderr line kept.
struct Node {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    client: Option<HttpsClient>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each node's settings file: its own node id in leases, a short poll and
/// lease, the test clock ticking every second.
fn settings(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[scheduler]\nnode_id = \"{name}\"\ninsecure_test_clock = true\ntick_seconds = 1\n\n\
             [jobs]\nnode_id = \"{name}\"\npoll_interval_ms = 100\nlease_seconds = {LEASE_SECONDS}\n\
             max_in_flight = 4\nper_installation = 16\nbackoff_base_seconds = 1\n"
        ),
    )
    .unwrap();
    path
}

impl Node {
    fn start(kiln: &Kiln, work: &Path, name: &'static str) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("--data-dir")
            .arg(kiln.data_dir())
            .args(["serve", "--listen", "127.0.0.1:0", "--webtrigger-rate", "100000", "--drain-seconds", "1"])
            .arg("--cert")
            .arg(work.join("cert.pem"))
            .arg("--key")
            .arg(work.join("key.pem"))
            .arg("--config")
            .arg(settings(work, name))
            .envs(kiln.env.iter().map(|(k, v)| (k, v)))
            .env_remove("KILN_DATA_DIR")
            .env_remove("KILN_KEK")
            .env_remove("KILN_KEY_FILE")
            .env_remove("KILN_AUDIT_KEY")
            .env_remove("KILN_AUDIT_CHECKPOINT_FILE")
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
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Node { name, child, lines, client: None }
    }

    /// Wait until the node listens; then talk to it with `ca` trusted.
    fn connect(&mut self, ca: &str) {
        let deadline = Instant::now() + LONG;
        let address = loop {
            let found = self.messages().into_iter().find_map(|m| {
                let at = m.find("Kiln admin API on https://")?;
                let rest = &m[at + "Kiln admin API on https://".len()..];
                Some(rest.split_whitespace().next()?.to_owned())
            });
            if let Some(address) = found {
                break address;
            }
            assert!(self.child.try_wait().unwrap().is_none(), "{} exited:\n{}", self.name, self.log());
            assert!(Instant::now() < deadline, "{} did not start:\n{}", self.name, self.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        self.client =
            Some(HttpsClient::new(&address, "127.0.0.1", kiln_crypto::tls::client_config(ca).unwrap()));
    }

    fn records(&self) -> Vec<Value> {
        self.lines.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    fn messages(&self) -> Vec<String> {
        self.records().iter().filter_map(|r| r["fields"]["message"].as_str().map(str::to_owned)).collect()
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Invocations of `kind` this node has logged (one line each, at its end).
    fn invocations(&self, kind: &str) -> usize {
        self.records()
            .iter()
            .filter(|r| r["target"] == "kiln::invocation" && r["fields"]["kind"] == kind)
            .count()
    }

    /// SIGKILL, and wait until the process is gone.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

// --------------------------------------------------------------- the test

struct Cluster {
    nodes: Vec<Node>,
    push_path: String,
    read_path: String,
    store: Store,
    installation: InstallationRecord,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn call(&self, node: usize, method: Method, path: &str, body: Option<Value>) -> Reply {
        let client = self.nodes[node].client.as_ref().unwrap();
        let body = body.map(|b| b.to_string());
        let headers: &[(&str, &str)] =
            if body.is_some() { &[("content-type", "application/json")] } else { &[] };
        self.rt
            .block_on(client.send(method, path, headers, body.as_deref().map(str::as_bytes)))
            .unwrap_or_else(|e| panic!("{} {path}: {e}", self.nodes[node].name))
    }

    /// Push events `(id, sleep ms)` in one push through `node`; the jobId
    /// it acknowledged them with.
    fn push(&self, node: usize, events: &[(String, u64)]) -> String {
        let body: Vec<Value> = events.iter().map(|(id, ms)| json!({ "id": id, "sleepMs": ms })).collect();
        let reply = self.call(node, Method::POST, &self.push_path, Some(Value::Array(body)));
        assert_eq!(reply.status.as_u16(), 202, "{}: {}", self.nodes[node].name, reply.text());
        reply.json()["jobId"].as_str().filter(|j| !j.is_empty()).unwrap().to_owned()
    }

    fn recorded(&self, node: usize) -> Records {
        let reply = self.call(node, Method::GET, &self.read_path, None);
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
        Records::parse(&reply.json())
    }

    /// Poll what the app recorded (through `node`) until `check` holds.
    fn wait_records(&self, node: usize, what: &str, check: impl Fn(&Records) -> bool) -> Records {
        let deadline = Instant::now() + LONG;
        loop {
            let records = self.recorded(node);
            if check(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not happen within {LONG:?}: {records:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- {}\n{}", n.name, n.log())).collect::<Vec<_>>().join("\n")
    }

    /// Move `node`'s test clock by `seconds`; its time now.
    fn advance(&self, node: usize, seconds: i64) -> i64 {
        let reply =
            self.call(node, Method::POST, "/_kiln/test/clock", Some(json!({ "advanceSeconds": seconds })));
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
        reply.json()["now"].as_i64().unwrap()
    }

    /// Move every node's clock to within a second after `target`.
    fn clocks_to(&self, target: i64) {
        for node in 0..self.nodes.len() {
            let now = self.advance(node, 0);
            let seconds = (target - now + 999).div_euclid(1000).max(0);
            let now = self.advance(node, seconds);
            assert!((target..target + 1000).contains(&now), "{}: {now} for {target}", self.nodes[node].name);
        }
    }

    /// The context token the `tick` run of `slot` gets.
    fn token(&self, slot: i64) -> String {
        let text = format!("{}\ntick\n{slot}", self.installation.public_id.as_str());
        kiln_crypto::Sha256::of(text.as_bytes()).hex()
    }

    /// The events of push `job_id`, in push order, as the store holds them.
    fn rows(&self, job_id: &str) -> Vec<kiln_store::JobRow> {
        self.rt.block_on(async {
            let mut tx = self.store.begin_read().await.unwrap();
            let rows = tx.jobs_of(self.installation.id, job_id).await.unwrap();
            tx.commit().await.unwrap();
            rows
        })
    }
}

fn ids(prefix: &str, range: std::ops::Range<usize>, sleep_ms: u64) -> Vec<(String, u64)> {
    range.map(|n| (format!("{prefix}-{n}"), sleep_ms)).collect()
}

#[test]
fn two_nodes_on_postgres_handle_each_message_and_slot_once_and_a_killed_node_loses_nothing() {
    let Some(url) =
        kiln_store::testing::postgres_url("the multi-node test (two kiln serve on PostgreSQL)").unwrap()
    else {
        return;
    };
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let schema =
        Schema { name: rt.block_on(kiln_store::testing::fresh_schema(&url)).unwrap(), url: url.clone() };

    // Deploy and install with the command line, against the shared schema.
    let kiln = Kiln::new().with_env("KILN_DATABASE_URL", &url).with_env("KILN_DATABASE_SCHEMA", &schema.name);
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app");
    write_app(&app);
    let dir = app.to_str().unwrap();
    kiln.ok(&["deploy", dir]);
    kiln.ok(&["install", "--site", SITE, "--product", "jira", "--app", dir]);
    let path_of = |module: &str| {
        let url =
            kiln.ok(&["webtrigger", module, "--site", SITE, "--app", dir, "--base-url", "https://nodes"]);
        url.trim().strip_prefix("https://nodes").unwrap().to_owned()
    };
    let (push_path, read_path) = (path_of("push"), path_of("read"));

    // Two nodes: one data directory (the key file), one database, one
    // certificate (given, so neither writes one), started at once.
    let identity = kiln_crypto::tls::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    std::fs::write(work.path().join("cert.pem"), &identity.cert_pem).unwrap();
    std::fs::write(work.path().join("key.pem"), identity.key_pem.as_bytes()).unwrap();
    let mut nodes =
        vec![Node::start(&kiln, work.path(), "node-a"), Node::start(&kiln, work.path(), "node-b")];
    for node in &mut nodes {
        node.connect(&identity.cert_pem);
    }
    let store = rt.block_on(Store::open_postgres(&url, Some(&schema.name))).unwrap();
    let installation = rt.block_on(async {
        let mut tx = store.begin_read().await.unwrap();
        let all = tx.all_installations().await.unwrap();
        tx.commit().await.unwrap();
        all
    });
    assert_eq!(installation.len(), 1);
    let cluster = Cluster { nodes, push_path, read_path, store, installation: installation[0].clone(), rt };
    eprintln!("multi-node: two nodes up after {:?}", started.elapsed());

    // 1. Forty events, pushed half through each node: each handled once,
    //    by both nodes between them.
    let (first, second) = (ids("m", 0..20, WORK_MS), ids("m", 20..40, WORK_MS));
    cluster.push(0, &first);
    cluster.push(1, &second);
    let all: Vec<String> = first.iter().chain(&second).map(|(id, _)| id.clone()).collect();
    cluster.wait_records(0, "every queued event handled", |r| all.iter().all(|id| r.done(id) > 0));
    let deadline = Instant::now() + LONG;
    while cluster.nodes.iter().map(|n| n.invocations("consumer")).sum::<usize>() < all.len() {
        assert!(Instant::now() < deadline, "consumer invocations not all logged:\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let records = cluster.recorded(1);
    for id in &all {
        assert_eq!(records.start.get(id), Some(&vec![0]), "{id}: one delivery, the first: {records:?}");
        assert_eq!(records.done.get(id), Some(&vec![0]), "{id}: handled once: {records:?}");
    }
    assert_eq!(records.done.len(), all.len(), "nothing else handled: {records:?}");
    let per_node: Vec<usize> = cluster.nodes.iter().map(|n| n.invocations("consumer")).collect();
    assert_eq!(per_node.iter().sum::<usize>(), all.len(), "one consumer invocation per event: {per_node:?}");
    assert!(per_node.iter().all(|&n| n > 0), "both nodes delivered events: {per_node:?}");
    eprintln!(
        "multi-node: 40 events handled once each, {per_node:?} per node, after {:?}",
        started.elapsed()
    );

    // 2. The scheduled trigger: both clocks moved into a slot, one run for
    //    it; moved into the next slot, one more. (A run at start-up, for a
    //    slot that came due between the install and the nodes' start, is
    //    left out: it is in `before`.)
    let before = cluster.recorded(0).run;
    assert!(before.values().all(|&n| n == 1), "{before:?}");
    let scheduled_before: usize = cluster.nodes.iter().map(|n| n.invocations("scheduledTrigger")).sum();
    let offset = kiln_server::scheduler::offset_ms(&cluster.installation, "tick", FIVE_MINUTES_MS);
    let now = (0..cluster.nodes.len()).map(|n| cluster.advance(n, 0)).max().unwrap();
    let (mut slot, _) = kiln_server::scheduler::latest_due(now, FIVE_MINUTES_MS, offset);
    for round in 1..=2 {
        slot += FIVE_MINUTES_MS;
        // Half a minute past the slot's due time on every node.
        cluster.clocks_to(slot + offset + 30_000);
        let token = cluster.token(slot);
        cluster
            .wait_records(0, &format!("the scheduled run for slot {slot}"), |r| r.run.contains_key(&token));
        // Both nodes tick every second: give each a few more ticks to run
        // the slot again, if it would.
        std::thread::sleep(Duration::from_secs(3));
        let runs = cluster.recorded(1).run;
        let new: BTreeMap<&String, &usize> = runs.iter().filter(|(t, _)| !before.contains_key(*t)).collect();
        assert_eq!(new.len(), round, "one slot a round: {new:?}");
        assert_eq!(runs.get(&token), Some(&1), "slot {slot} ran once: {runs:?}");
        let scheduled: usize = cluster.nodes.iter().map(|n| n.invocations("scheduledTrigger")).sum();
        assert_eq!(scheduled, scheduled_before + round, "scheduled invocations over both nodes");
    }
    eprintln!("multi-node: two slots ran once each, after {:?}", started.elapsed());

    // 3. A node killed in the middle of a slow delivery.
    let mut cluster = cluster;
    let mut pushes: Vec<(String, Vec<(String, u64)>)> = Vec::new();
    let slow = vec![("slow-0".to_owned(), SLOW_MS)];
    pushes.push((cluster.push(0, &slow), slow));
    for (node, events) in [(0, ids("k", 0..8, WORK_MS)), (1, ids("k", 8..16, WORK_MS))] {
        pushes.push((cluster.push(node, &events), events));
    }
    // Which node runs the slow event, once the app says it began.
    let deadline = Instant::now() + LONG;
    let victim = loop {
        let row = cluster.rows(&pushes[0].0).remove(0);
        if row.state == JobState::Running && cluster.recorded(0).started("slow-0") > 0 {
            let owner = row.lease_owner.unwrap();
            break cluster.nodes.iter().position(|n| n.name == owner).unwrap();
        }
        assert!(Instant::now() < deadline, "the slow event never started: {row:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    let survivor = 1 - victim;
    cluster.nodes[victim].kill();
    let killed_at = Instant::now();
    // What the dead node was delivering when it died: its rows still
    // running under its name (it can change nothing any more).
    let victim_name = cluster.nodes[victim].name;
    let mut in_flight = BTreeSet::new();
    for (job_id, events) in &pushes {
        let rows = cluster.rows(job_id);
        assert_eq!(rows.len(), events.len(), "{job_id}");
        for (row, (id, _)) in rows.iter().zip(events) {
            if row.state == JobState::Running && row.lease_owner.as_deref() == Some(victim_name) {
                in_flight.insert(id.clone());
            }
        }
    }
    assert!(in_flight.contains("slow-0"), "{in_flight:?}");
    assert_eq!(cluster.recorded(survivor).done("slow-0"), 0, "killed before the slow delivery finished");
    // More events, acknowledged by the survivor after the kill.
    let after = ids("k", 16..24, WORK_MS);
    pushes.push((cluster.push(survivor, &after), after));
    let acknowledged: Vec<String> =
        pushes.iter().flat_map(|(_, e)| e.iter().map(|(id, _)| id.clone())).collect();
    cluster.wait_records(survivor, "every acknowledged event handled after the kill", |r| {
        acknowledged.iter().all(|id| r.done(id) > 0)
    });
    eprintln!(
        "multi-node: {} killed with {} in flight; everything handled {:?} after the kill",
        victim_name,
        in_flight.len(),
        killed_at.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    let records = cluster.recorded(survivor);
    for id in &acknowledged {
        let done = records.done(id);
        if in_flight.contains(id) {
            assert!(
                (1..=2).contains(&done),
                "{id} was in flight on the dead node: {done} deliveries finished"
            );
        } else {
            assert_eq!(done, 1, "{id}: handled once: {records:?}");
            assert_eq!(records.started(id), 1, "{id}: delivered once: {records:?}");
        }
    }
    // The slow event: begun on the dead node, begun again on the survivor
    // as its second delivery (the lost one counted), finished there once.
    assert_eq!(records.start.get("slow-0"), Some(&vec![0, 1]), "{records:?}");
    assert_eq!(records.done.get("slow-0"), Some(&vec![1]), "{records:?}");
    for (job_id, _) in &pushes {
        for row in cluster.rows(job_id) {
            assert_eq!(row.state, JobState::Done, "{row:?}");
        }
    }
    let slow_row = cluster.rows(&pushes[0].0).remove(0);
    assert_eq!(slow_row.attempts, 1, "the lost delivery counts as an attempt: {slow_row:?}");

    let took = started.elapsed();
    eprintln!("multi-node: done in {took:?}");
    let Cluster { nodes, store, rt, .. } = cluster;
    drop(nodes);
    rt.block_on(store.close());
    drop(schema);
}
