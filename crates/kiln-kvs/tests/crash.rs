//! A writer killed with SIGKILL at random points loses no acknowledged write
//! and leaves the store consistent, on every backend.
//!
//! The parent runs this test binary again as a child (`crash_child`, ignored
//! when run normally) that applies a deterministic stream of operations to a
//! shared store and prints `ack N` after operation N returns. The parent
//! kills it after a random number of acknowledgements and a random delay,
//! then checks every key against a model built from the acknowledged
//! operations. The one operation in flight at the kill may or may not have
//! landed (per key: batches are not atomic, as in Forge), and nothing else
//! may differ. Each round continues on the state the last one left.
//!
//! SIGKILL tests process-crash atomicity (the operating system still flushes
//! its page cache); power loss is SQLite's `synchronous=FULL` and
//! PostgreSQL's `synchronous_commit`, which this does not simulate.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "test code: a panic is a failed test, and the child reports on stdout"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use kiln_crypto::keys::EnvKeyProvider;
use kiln_kvs::{Kvs, SetOptions};
use kiln_store::testing::{each_backend, open_locator};
use serde_json::{Value, json};

const ROUNDS: usize = 25;
const KEYS: u64 = 40;
const BATCH: u64 = 5;
const OWNER: &str = "crash-owner";

fn provider() -> Arc<EnvKeyProvider> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Arc::new(EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap())
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[derive(Debug, Clone)]
enum Op {
    Set { key: u64, value: Value },
    Delete { key: u64 },
    BatchSet { first: u64, value: Value },
    SetSecret { key: u64, value: Value },
    RotateDataKey,
    Reencrypt,
}

/// Operation `n` of the stream `seed`: the child runs it, the parent
/// recomputes it.
fn plan(seed: u64, n: u64) -> Op {
    let r = splitmix(seed ^ n.wrapping_mul(0x1000_0000_01b3));
    let key = (r >> 8) % KEYS;
    // Values up to a few KiB, so some writes span several pages.
    let value = json!({ "op": n, "pad": "x".repeat(usize::try_from((r >> 20) % 3000).unwrap()) });
    match r % 100 {
        0..=64 => Op::Set { key, value },
        65..=79 => Op::Delete { key },
        80..=87 => Op::BatchSet { first: key, value },
        88..=94 => Op::SetSecret { key, value },
        95..=97 => Op::RotateDataKey,
        _ => Op::Reencrypt,
    }
}

fn key_name(k: u64) -> String {
    format!("item:{k:03}")
}

/// The keys an operation touches, with what each would hold after it, for
/// the entries and the secrets.
fn effects(op: &Op) -> Vec<(bool, u64, Option<Value>)> {
    match op {
        Op::Set { key, value } => vec![(false, *key, Some(value.clone()))],
        Op::Delete { key } => vec![(false, *key, None)],
        Op::BatchSet { first, value } => {
            (0..BATCH).map(|i| (false, (first + i) % KEYS, Some(value.clone()))).collect()
        }
        Op::SetSecret { key, value } => vec![(true, *key, Some(value.clone()))],
        Op::RotateDataKey | Op::Reencrypt => vec![],
    }
}

async fn run(kvs: &Kvs, op: &Op) {
    match op {
        Op::Set { key, value } => {
            kvs.set(OWNER, &key_name(*key), value, SetOptions::default()).await.unwrap();
        }
        Op::Delete { key } => kvs.delete(OWNER, &key_name(*key)).await.unwrap(),
        Op::BatchSet { first, value } => {
            let items: Vec<(String, Value)> =
                (0..BATCH).map(|i| (key_name((first + i) % KEYS), value.clone())).collect();
            let out = kvs.batch_set(OWNER, &items).await.unwrap();
            assert!(out.failed.is_empty(), "{:?}", out.failed);
        }
        Op::SetSecret { key, value } => kvs.set_secret(OWNER, &key_name(*key), value).await.unwrap(),
        Op::RotateDataKey => {
            kvs.rotate_data_key(OWNER, kiln_audit::testing::audit()).await.unwrap();
        }
        Op::Reencrypt => {
            kvs.reencrypt(OWNER, 10).await.unwrap();
        }
    }
}

/// The child: apply operations from `KILN_CRASH_START` on, acknowledging
/// each, until killed.
#[tokio::test]
#[ignore = "the child process of acknowledged_writes_survive_sigkill_at_random_points"]
async fn crash_child() {
    let Ok(locator) = std::env::var("KILN_CRASH_STORE") else { return };
    let seed: u64 = std::env::var("KILN_CRASH_SEED").unwrap().parse().unwrap();
    let start: u64 = std::env::var("KILN_CRASH_START").unwrap().parse().unwrap();
    let kvs = Kvs::new(open_locator(&locator).await.unwrap(), provider());
    let mut out = std::io::stdout();
    for n in start.. {
        run(&kvs, &plan(seed, n)).await;
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

type Model = BTreeMap<(bool, u64), Value>;

#[tokio::test]
async fn acknowledged_writes_survive_sigkill_at_random_points() {
    let mut seed_bytes = [0u8; 8];
    kiln_crypto::fill_random(&mut seed_bytes).unwrap();
    let seed = std::env::var("KILN_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| u64::from_le_bytes(seed_bytes));
    eprintln!("crash test seed {seed} (set KILN_CRASH_SEED to replay)");
    for t in each_backend().await.unwrap() {
        let mut model = Model::new();
        let mut next = 0u64;
        let mut landed_in_flight = 0;
        for round in 0..ROUNDS {
            let r = splitmix(seed ^ (round as u64) << 32);
            let kill_after = r % 40;
            let delay = Duration::from_micros((r >> 16) % 4000);
            let (acked, status, stderr) =
                run_child(&child_locator(&t.locator), seed, next, kill_after, delay);
            let ctx = format!("{} seed {seed} round {round}", t.name);
            wait_for_server_side_end(&t.locator, &ctx).await;
            assert!(
                status.is_none() || status == Some(9),
                "{ctx}: the child failed before it was killed (status {status:?}):\n{stderr}"
            );
            for n in next..next + acked {
                for (secret, key, value) in effects(&plan(seed, n)) {
                    set_model(&mut model, secret, key, value);
                }
            }
            let in_flight = next + acked;
            landed_in_flight += check(&t.store, &mut model, &plan(seed, in_flight), &ctx).await;
            next = in_flight + 1;
        }
        eprintln!(
            "{}: {ROUNDS} kills, {next} operations, in-flight write seen landed {landed_in_flight} times",
            t.name
        );
    }
}

/// The child's locator: on PostgreSQL its connections carry a name, so the
/// parent can tell when the server has finished with them.
fn child_locator(locator: &str) -> String {
    if !locator.starts_with("postgres:") {
        return locator.to_owned();
    }
    let sep = if locator.contains('?') { '&' } else { '?' };
    format!("{locator}{sep}application_name={CHILD_APP}")
}

const CHILD_APP: &str = "kiln-crash-child";

/// A killed client's last statement can still run to its commit on the
/// PostgreSQL server after the process is gone. Wait until the server has
/// no backend left for the child before comparing, or that late commit
/// lands between the checks' reads.
async fn wait_for_server_side_end(locator: &str, ctx: &str) {
    if !locator.starts_with("postgres:") {
        return;
    }
    // The control: the probe counts rows (our own backend is one).
    let own = open_exec(locator, "SELECT 1 FROM pg_stat_activity WHERE pid = pg_backend_pid()").await;
    assert_eq!(own, 1, "{ctx}: the backend probe does not count rows");
    let sql = format!("SELECT 1 FROM pg_stat_activity WHERE application_name = '{CHILD_APP}'");
    for _ in 0..200 {
        if open_exec(locator, &sql).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{ctx}: the killed child's PostgreSQL backends did not end within 10 s");
}

async fn open_exec(locator: &str, sql: &str) -> u64 {
    kiln_store::testing::exec_raw(locator, sql).await.unwrap()
}

fn set_model(model: &mut Model, secret: bool, key: u64, value: Option<Value>) {
    match value {
        Some(v) => {
            model.insert((secret, key), v);
        }
        None => {
            model.remove(&(secret, key));
        }
    }
}

/// Run the child from operation `start`; kill it after `kill_after`
/// acknowledgements and `delay`. Returns how many operations it
/// acknowledged, its signal (None if it was killed) and its stderr.
fn run_child(
    locator: &str,
    seed: u64,
    start: u64,
    kill_after: u64,
    delay: Duration,
) -> (u64, Option<i32>, String) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("KILN_CRASH_STORE", locator)
        .env("KILN_CRASH_SEED", seed.to_string())
        .env("KILN_CRASH_START", start.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // libtest prints "test crash_child ... " before the first ack.
            if let Some((_, n)) = line.rsplit_once("ack ")
                && tx.send(n.parse::<u64>().unwrap()).is_err()
            {
                break;
            }
        }
    });
    let mut all = Vec::new();
    while (all.len() as u64) < kill_after {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(n) => all.push(n),
            Err(_) => break, // the child stopped early: its status says why
        }
    }
    std::thread::sleep(delay);
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    reader.join().unwrap();
    all.extend(rx.try_iter());
    assert!(all.iter().enumerate().all(|(i, n)| *n == start + i as u64), "acks out of order: {all:?}");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    use std::os::unix::process::ExitStatusExt;
    let code = if status.signal() == Some(9) { None } else { status.code().or(status.signal()) };
    (all.len() as u64, code, stderr)
}

/// Compare the store with the model, allowing each key the in-flight
/// operation touches to hold its new value instead. Updates the model to
/// what landed; returns how many keys showed the in-flight value.
async fn check(store: &kiln_store::Store, model: &mut Model, in_flight: &Op, ctx: &str) -> usize {
    let kvs = Kvs::new(store.clone(), provider());
    let maybe: BTreeMap<(bool, u64), Option<Value>> =
        effects(in_flight).into_iter().map(|(s, k, v)| ((s, k), v)).collect();
    let mut landed = 0;
    for secret in [false, true] {
        for key in 0..KEYS {
            let name = key_name(key);
            let actual = if secret {
                kvs.get_secret(OWNER, &name).await
            } else {
                kvs.get(OWNER, &name).await.map(|e| e.map(|e| e.value))
            }
            .unwrap_or_else(|e| panic!("{ctx}: {name} (secret: {secret}) does not open: {e}"));
            let expected = model.get(&(secret, key)).cloned();
            if actual == expected {
                continue;
            }
            match maybe.get(&(secret, key)) {
                Some(new) if *new == actual => {
                    landed += 1;
                    set_model(model, secret, key, actual);
                }
                _ => panic!(
                    "{ctx}: {name} (secret: {secret}) holds {} but the acknowledged writes say {} \
                     (in flight: {:.80})",
                    brief(actual.as_ref()),
                    brief(expected.as_ref()),
                    format!("{in_flight:?}")
                ),
            }
        }
    }
    // A query sees exactly the entries the gets saw, in order, never secrets.
    let mut listed = Vec::new();
    let mut cursor = None;
    loop {
        let page = kvs.query(OWNER, "item:", cursor.as_deref(), Some(100)).await.unwrap();
        listed.extend(page.results.into_iter().map(|e| (e.key, e.value)));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let expected: Vec<(String, Value)> = model
        .iter()
        .filter(|((secret, _), _)| !secret)
        .map(|((_, k), v)| (key_name(*k), v.clone()))
        .collect();
    assert!(
        listed == expected,
        "{ctx}: the query lists {} entries, the model {}",
        listed.len(),
        expected.len()
    );
    landed
}

fn brief(v: Option<&Value>) -> String {
    v.map_or_else(|| "nothing".to_owned(), |v| format!("op {}", v["op"]))
}
