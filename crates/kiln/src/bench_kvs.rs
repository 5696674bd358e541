//! `kiln bench kvs`: what sealing costs the key-value store. The same
//! operations run through [`kiln_kvs::Kvs`] (validate, seal with AES-256-GCM,
//! store) and through a plaintext path that makes the same store calls in the
//! same transactions with the JSON unsealed, on the same backend, in one run.
//! The two alternate in blocks so that drift in the machine's speed falls on
//! both alike.
//!
//! The plaintext path is a baseline for measurement only: it lives here, not
//! in `kiln-kvs`, so no production code path can store a value unsealed.

use crate::output::say_raw;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use kiln_crypto::keys::EnvKeyProvider;
use kiln_kvs::{Kvs, SetOptions};
use kiln_store::{KvPut, Store};
use serde_json::{Value, json};

use crate::Failure;

/// Alternating blocks per measurement.
const BLOCKS: usize = 40;
/// Entries a prefix query matches; each query reads the first page of 10.
const PER_PREFIX: usize = 100;

enum StorePath {
    Sealed(Kvs),
    Plain(Store),
}

type R<T> = Result<T, String>;

impl StorePath {
    fn name(&self) -> &'static str {
        match self {
            StorePath::Sealed(_) => "encrypted",
            StorePath::Plain(_) => "plaintext",
        }
    }

    async fn set(&self, owner: &str, key: &str, value: &Value) -> R<()> {
        match self {
            StorePath::Sealed(kvs) => kvs.set(owner, key, value, SetOptions::default()).await.map(drop),
            StorePath::Plain(store) => plain_set(store, owner, key, value).await,
        }
        .map_err(|e| e.to_string())
    }

    async fn get(&self, owner: &str, key: &str) -> R<Option<Value>> {
        match self {
            StorePath::Sealed(kvs) => {
                kvs.get(owner, key).await.map(|e| e.map(|e| e.value)).map_err(|e| e.to_string())
            }
            StorePath::Plain(store) => plain_get(store, owner, key).await.map_err(|e| e.to_string()),
        }
    }

    async fn query(&self, owner: &str, prefix: &str) -> R<usize> {
        match self {
            StorePath::Sealed(kvs) => {
                kvs.query(owner, prefix, None, None).await.map(|p| p.results.len()).map_err(|e| e.to_string())
            }
            StorePath::Plain(store) => plain_query(store, owner, prefix).await.map_err(|e| e.to_string()),
        }
    }
}

/// `Kvs::set` without the seal: the same checks, lock, read and write.
async fn plain_set(store: &Store, owner: &str, key: &str, value: &Value) -> Result<(), kiln_kvs::KvsError> {
    kiln_kvs::check_key(key)?;
    let json = kiln_kvs::check_value(value)?;
    let now = kiln_store::now_millis();
    let mut tx = store.begin().await?;
    tx.kv_lock(owner, "kvs", key).await?;
    let _previous = tx.kv_get(owner, "kvs", key, now).await?;
    let put = KvPut { owner, namespace: "kvs", key, value: json.as_bytes(), key_id: 0, expires_at: None };
    tx.kv_put(put, now).await?;
    tx.commit().await?;
    Ok(())
}

/// `Kvs::get` without the open.
async fn plain_get(store: &Store, owner: &str, key: &str) -> Result<Option<Value>, kiln_kvs::KvsError> {
    kiln_kvs::check_key(key)?;
    let mut tx = store.begin_read().await?;
    let row = tx.kv_get(owner, "kvs", key, kiln_store::now_millis()).await?;
    tx.commit().await?;
    Ok(row.and_then(|r| serde_json::from_slice(&r.value).ok()))
}

/// `Kvs::query`'s first page without the opens.
async fn plain_query(store: &Store, owner: &str, prefix: &str) -> Result<usize, kiln_kvs::KvsError> {
    let mut tx = store.begin_read().await?;
    let mut rows = tx.kv_query(owner, "kvs", prefix, None, 11, kiln_store::now_millis()).await?;
    tx.commit().await?;
    rows.truncate(10);
    let values: Vec<Value> = rows.iter().filter_map(|r| serde_json::from_slice(&r.value).ok()).collect();
    Ok(values.len())
}

fn value_of_size(n: usize, bytes: usize) -> Value {
    let body = "lorem ipsum dolor sit amet ".repeat(bytes / 27 + 1);
    json!({ "n": n, "status": "open", "body": &body[..bytes.saturating_sub(40)] })
}

#[derive(Default)]
struct Timing {
    samples: Vec<Duration>,
    wall: Duration,
}

impl Timing {
    fn per_second(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
    fn p50_us(&mut self) -> f64 {
        self.samples.sort();
        self.samples.get(self.samples.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    }
}

struct Row {
    backend: &'static str,
    op: &'static str,
    size: usize,
    sealed: Timing,
    plain: Timing,
}

/// Time `count` operations per path, alternating blocks between them.
async fn measure<'a, F, Fut>(paths: &'a [StorePath; 2], count: usize, mut op: F) -> R<(Timing, Timing)>
where
    F: FnMut(&'a StorePath, &'static str, usize) -> Fut,
    Fut: std::future::Future<Output = R<()>>,
{
    let mut timings = [Timing::default(), Timing::default()];
    let block = count.div_ceil(BLOCKS);
    for b in 0..BLOCKS {
        for (path, timing) in paths.iter().zip(timings.iter_mut()) {
            let owner = owner_of(path);
            let started = Instant::now();
            for i in b * block..((b + 1) * block).min(count) {
                let t = Instant::now();
                op(path, owner, i).await?;
                timing.samples.push(t.elapsed());
            }
            timing.wall += started.elapsed();
        }
    }
    let [sealed, plain] = timings;
    Ok((sealed, plain))
}

fn owner_of(path: &StorePath) -> &'static str {
    match path {
        StorePath::Sealed(_) => "bench-installation-sealed",
        StorePath::Plain(_) => "bench-installation-plain",
    }
}

fn key(i: usize) -> String {
    format!("issue:{i:06}")
}

/// A fixed shuffle of `0..n`, so both paths read the same keys in the same order.
fn order(n: usize) -> Vec<usize> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

async fn bench_backend(backend: &'static str, store: &Store, ops: usize) -> R<Vec<Row>> {
    let provider =
        EnvKeyProvider::from_value(&format!("bench:{}", bench_kek()?)).map_err(|e| e.to_string())?;
    let paths = [
        StorePath::Sealed(Kvs::new(store.clone(), std::sync::Arc::new(provider))),
        StorePath::Plain(store.clone()),
    ];
    let mut rows = Vec::new();
    for size in [128, 4096] {
        // Warm up both paths (connections, statement caches, the data key).
        for path in &paths {
            for i in 0..50 {
                path.set(owner_of(path), &format!("warm:{i}"), &value_of_size(i, size)).await?;
                path.get(owner_of(path), &format!("warm:{i}")).await?;
            }
        }
        let base = rows.len() * ops; // fresh keys for every size
        let (sealed, plain) = measure(&paths, ops, |path, owner, i| async move {
            path.set(owner, &key(base + i), &value_of_size(i, size)).await
        })
        .await?;
        rows.push(Row { backend, op: "set", size, sealed, plain });

        let shuffled = order(ops);
        let shuffled = &shuffled;
        let reads = ops * 5;
        let (sealed, plain) = measure(&paths, reads, |path, owner, i| async move {
            let k = key(base + shuffled.get(i % ops).copied().unwrap_or(0));
            match path.get(owner, &k).await? {
                Some(_) => Ok(()),
                None => Err(format!("{} lost {k}", path.name())),
            }
        })
        .await?;
        rows.push(Row { backend, op: "get", size, sealed, plain });

        let prefixes = ops / PER_PREFIX;
        let (sealed, plain) = measure(&paths, reads, |path, owner, i| async move {
            // "issue:0012" matches issue:001200..issue:001299.
            let prefix = format!(
                "issue:{:04}",
                (base / PER_PREFIX) + shuffled.get(i % ops).copied().unwrap_or(0) % prefixes.max(1)
            );
            match path.query(owner, &prefix).await? {
                10 => Ok(()),
                n => Err(format!("{} query {prefix} gave {n} results, not 10", path.name())),
            }
        })
        .await?;
        rows.push(Row { backend, op: "query (page of 10)", size, sealed, plain });
    }
    Ok(rows)
}

/// Sealing and opening alone, in memory: the part of each operation's cost
/// that encryption is, free of the database's noise. Returns (seal µs, open
/// µs) per value of `size` bytes of JSON.
fn crypto_only(size: usize) -> R<(f64, f64)> {
    use kiln_crypto::envelope::{Binding, DataKey, Namespace};
    const N: u32 = 20_000;
    let (key, _raw) = DataKey::generate(1).map_err(|e| e.to_string())?;
    let json = serde_json::to_vec(&value_of_size(1, size)).map_err(|e| e.to_string())?;
    let binding = Binding { owner: "bench-installation", namespace: Namespace::Kvs, key: "issue:000001" };
    let started = Instant::now();
    let mut sealed = Vec::new();
    for _ in 0..N {
        sealed = key.seal(&binding, &json).map_err(|e| e.to_string())?;
    }
    let seal = started.elapsed();
    let started = Instant::now();
    for _ in 0..N {
        let plain = key.open(&binding, &sealed).map_err(|e| e.to_string())?;
        if plain.len() != json.len() {
            return Err("open gave back another length".to_owned());
        }
    }
    let open = started.elapsed();
    let us = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(N);
    Ok((us(seal), us(open)))
}

/// A key-encryption key for this run only.
fn bench_kek() -> R<String> {
    use base64::Engine;
    let mut raw = [0u8; 32];
    kiln_crypto::fill_random(&mut raw).map_err(|e| e.to_string())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(raw))
}

pub(crate) async fn kvs(ops: usize, postgres: Option<String>) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let ops = ops.div_ceil(PER_PREFIX).max(1) * PER_PREFIX;
    let dir = tempfile::tempdir().map_err(|e| fail(format!("cannot make a temporary directory: {e}")))?;
    let mut rows = Vec::new();

    let sqlite = Store::open_data_dir(&dir.path().join("data")).await?;
    eprintln!(
        "SQLite (WAL, synchronous=FULL) in {}: {ops} sets, {} gets and queries per path…",
        dir.path().display(),
        ops * 5
    );
    rows.extend(bench_backend("SQLite", &sqlite, ops).await.map_err(fail)?);
    sqlite.close().await;

    if let Some(url) = &postgres {
        let schema = format!("kiln_bench_{}", kiln_store::now_millis());
        let store = Store::open_postgres(url, Some(&schema)).await?;
        eprintln!("PostgreSQL (schema {schema}): the same…");
        let result = bench_backend("PostgreSQL", &store, ops).await;
        store.close().await;
        Store::drop_postgres_schema(url, &schema).await?;
        rows.extend(result.map_err(fail)?);
    } else {
        eprintln!("PostgreSQL skipped: pass --postgres <url> to measure it too.");
    }

    let mut out = String::new();
    let _ = writeln!(
        out,
        "| backend | operation | value | encrypted ops/s | plaintext ops/s | encrypted ÷ plaintext | p50 encrypted (µs) | p50 plaintext (µs) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for row in &mut rows {
        let ratio = row.sealed.per_second() / row.plain.per_second();
        let _ = writeln!(
            out,
            "| {} | {} | {} B | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
            row.backend,
            row.op,
            row.size,
            row.sealed.per_second(),
            row.plain.per_second(),
            ratio,
            row.sealed.p50_us(),
            row.plain.p50_us()
        );
    }
    let _ = writeln!(out, "\n| value | seal alone (µs) | open alone (µs) |\n|---|---|---|");
    for size in [128, 4096] {
        let (seal, open) = crypto_only(size).map_err(fail)?;
        let _ = writeln!(out, "| {size} B | {seal:.2} | {open:.2} |");
    }
    say_raw!("{out}");
    Ok(())
}
