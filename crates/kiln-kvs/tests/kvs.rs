//! Forge KVS semantics on every backend, and what a database copy does (not)
//! reveal, on SQLite.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use kiln_audit::Event;
use kiln_audit::testing::audit;
use kiln_crypto::keys::{EnvKeyProvider, FileKeyProvider};
use kiln_kvs::*;
use kiln_store::testing::each_backend;
use serde_json::json;

fn provider() -> Arc<EnvKeyProvider> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
    Arc::new(EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap())
}

struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new() -> (Self, Clock) {
        let t = Arc::new(AtomicI64::new(1_800_000_000_000));
        let c = t.clone();
        (TestClock(t), Arc::new(move || c.load(Ordering::SeqCst)))
    }
    fn advance_secs(&self, s: i64) {
        self.0.fetch_add(s * 1000, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn get_set_delete_policies_and_return_values() {
    for t in each_backend().await.unwrap() {
        let kvs = Kvs::new(t.store.clone(), provider());
        assert_eq!(kvs.get("inst-a", "missing").await.unwrap(), None);
        kvs.set("inst-a", "user:1", &json!({"name": "Ada", "tags": [1, 2]}), SetOptions::default())
            .await
            .unwrap();
        assert_eq!(
            kvs.get("inst-a", "user:1").await.unwrap().unwrap().value,
            json!({"name": "Ada", "tags": [1, 2]}),
            "{}",
            t.name
        );
        // Other owners see nothing, whatever key they ask for.
        assert_eq!(kvs.get("inst-b", "user:1").await.unwrap(), None);
        assert!(kvs.query("inst-b", "", None, None).await.unwrap().results.is_empty());

        let fail = SetOptions { key_policy: KeyPolicy::FailIfExists, ..SetOptions::default() };
        let err = kvs.set("inst-a", "user:1", &json!(1), fail).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::KeyAlreadyExists);
        assert!(kvs.set("inst-a", "user:2", &json!(2), fail).await.is_ok());

        let previous = SetOptions { return_value: Some(ReturnValue::Previous), ..SetOptions::default() };
        let prev = kvs.set("inst-a", "user:2", &json!(3), previous).await.unwrap().unwrap();
        assert_eq!(prev.value, json!(2));
        let latest = SetOptions { return_value: Some(ReturnValue::Latest), ..SetOptions::default() };
        assert_eq!(kvs.set("inst-a", "user:2", &json!(4), latest).await.unwrap().unwrap().value, json!(4));

        kvs.delete("inst-a", "user:2").await.unwrap();
        assert_eq!(kvs.get("inst-a", "user:2").await.unwrap(), None);
        kvs.delete("inst-a", "never-existed").await.unwrap();
    }
}

#[tokio::test]
async fn expired_entries_are_invisible_at_once_and_swept() {
    for t in each_backend().await.unwrap() {
        let (clock, c) = TestClock::new();
        let kvs = Kvs::with_clock(t.store.clone(), provider(), c);
        let ttl =
            SetOptions { ttl: Some(Ttl { value: 10, unit: TtlUnit::Seconds }), ..SetOptions::default() };
        kvs.set("o", "session", &json!("x"), ttl).await.unwrap();
        kvs.set("o", "sessions-forever", &json!("y"), SetOptions::default()).await.unwrap();
        let entry = kvs.get("o", "session").await.unwrap().unwrap();
        assert_eq!(entry.expire_time, Some(1_800_000_010_000));
        clock.advance_secs(10);
        assert_eq!(kvs.get("o", "session").await.unwrap(), None, "{}", t.name);
        let page = kvs.query("o", "session", None, None).await.unwrap();
        assert_eq!(page.results.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["sessions-forever"]);
        assert_eq!(kvs.sweep(100).await.unwrap(), 1);
        // FAIL_IF_EXISTS treats an expired key as absent.
        let fail = SetOptions { key_policy: KeyPolicy::FailIfExists, ..SetOptions::default() };
        assert!(kvs.set("o", "session", &json!("again"), fail).await.is_ok());
    }
}

#[tokio::test]
async fn queries_page_by_prefix_in_a_stable_order_and_never_list_secrets() {
    for t in each_backend().await.unwrap() {
        let kvs = Kvs::new(t.store.clone(), provider());
        for i in 0..25 {
            kvs.set("o", &format!("item:{i:03}"), &json!(i), SetOptions::default()).await.unwrap();
        }
        kvs.set("o", "other", &json!("no"), SetOptions::default()).await.unwrap();
        kvs.set("o", "ITEM:upper", &json!("no"), SetOptions::default()).await.unwrap();
        kvs.set_secret("o", "item:secret", &json!("hidden")).await.unwrap();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = kvs.query("o", "item:", cursor.as_deref(), Some(10)).await.unwrap();
            seen.extend(page.results.iter().map(|e| e.key.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).map(|i| format!("item:{i:03}")).collect();
        assert_eq!(seen, want, "{}", t.name);
        assert_eq!(kvs.query("o", "", None, None).await.unwrap().results.len(), 10);
        assert_eq!(kvs.get_secret("o", "item:secret").await.unwrap(), Some(json!("hidden")));
        assert_eq!(kvs.get("o", "item:secret").await.unwrap(), None, "a secret is not a plain entry");
        kvs.delete_secret("o", "item:secret").await.unwrap();
        assert_eq!(kvs.get_secret("o", "item:secret").await.unwrap(), None);
    }
}

#[tokio::test]
async fn every_limit_has_its_error_code() {
    for t in each_backend().await.unwrap() {
        let kvs = Kvs::new(t.store.clone(), provider());
        let set = |k: String, v: serde_json::Value| {
            let kvs = &kvs;
            async move { kvs.set("o", &k, &v, SetOptions::default()).await.map(drop) }
        };
        let code = |r: Result<(), KvsError>| r.unwrap_err().code;
        assert_eq!(code(set(String::new(), json!(1)).await), ErrorCode::InvalidKey);
        assert_eq!(code(set("   ".into(), json!(1)).await), ErrorCode::InvalidKey);
        assert_eq!(code(set("bad/key".into(), json!(1)).await), ErrorCode::InvalidKey);
        assert_eq!(code(set("emoji-😀".into(), json!(1)).await), ErrorCode::InvalidKey);
        assert_eq!(code(set("k".repeat(501), json!(1)).await), ErrorCode::KeyTooLong);
        assert!(set("k".repeat(500), json!(1)).await.is_ok());
        assert!(set("with spaces:and-#_.".into(), json!(1)).await.is_ok());
        assert_eq!(code(set("n".into(), json!(null)).await), ErrorCode::InvalidValue);
        assert_eq!(code(set("big".into(), json!("x".repeat(240 * 1024))).await), ErrorCode::MaxSize);
        assert!(set("fits".into(), json!("x".repeat(240 * 1024 - 2))).await.is_ok());
        let mut deep = json!(1);
        for _ in 0..32 {
            deep = json!([deep]);
        }
        assert_eq!(code(set("deep".into(), deep).await), ErrorCode::MaxDepth);
        let mut ok_deep = json!(1);
        for _ in 0..31 {
            ok_deep = json!([ok_deep]);
        }
        assert!(set("deep-ok".into(), ok_deep).await.is_ok());
        for ttl in [Ttl { value: 0, unit: TtlUnit::Seconds }, Ttl { value: 366, unit: TtlUnit::Days }] {
            let opts = SetOptions { ttl: Some(ttl), ..SetOptions::default() };
            assert_eq!(kvs.set("o", "t", &json!(1), opts).await.unwrap_err().code, ErrorCode::InvalidTtl);
        }
        assert_eq!(kvs.query("o", "", None, Some(0)).await.unwrap_err().code, ErrorCode::InvalidLimit);
        assert_eq!(kvs.query("o", "", None, Some(101)).await.unwrap_err().code, ErrorCode::InvalidLimit);
        assert_eq!(kvs.query("o", "", Some("%%%"), None).await.unwrap_err().code, ErrorCode::InvalidCursor);
        let many: Vec<String> = (0..26).map(|i| format!("k{i}")).collect();
        assert_eq!(kvs.batch_get("o", &many).await.unwrap_err().code, ErrorCode::TooManyKeys);
        let batch = kvs
            .batch_set(
                "o",
                &[("good".into(), json!(1)), ("bad key/".into(), json!(2)), ("nul".into(), json!(null))],
            )
            .await
            .unwrap();
        assert_eq!(batch.succeeded, ["good"]);
        let failed: Vec<(&str, ErrorCode)> = batch.failed.iter().map(|(k, e)| (k.as_str(), e.code)).collect();
        assert_eq!(
            failed,
            [("bad key/", ErrorCode::InvalidKey), ("nul", ErrorCode::InvalidValue)],
            "{}",
            t.name
        );
    }
}

/// Everything Kiln keeps for the app on disk, as raw bytes.
fn variable_event() -> Event {
    Event::variable_set("app", "development", "API_KEY", true)
}

fn raw_database(dir: &std::path::Path) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn canaries_are_nowhere_in_the_raw_database_files() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = kiln_store::Store::open_data_dir(&data).await.unwrap();
    let kvs = Kvs::new(store.clone(), provider());
    let canaries =
        ["CANARY-VALUE-7f3a9c", "CANARY-SECRET-41b2e8", "CANARY-VARIABLE-0d5e", "CANARY-TOKEN-9a7c"];
    kvs.set("inst", "plain", &json!({"note": canaries[0]}), SetOptions::default()).await.unwrap();
    kvs.set_secret("inst", "api-token", &json!(canaries[1])).await.unwrap();
    kvs.set_variable("variables:app:development", "API_KEY", canaries[2], true, audit(), variable_event())
        .await
        .unwrap();
    kvs.set_token("inst", "oauth:access", canaries[3], None).await.unwrap();
    // And a control: a canary written in clear would be found.
    kvs.set("inst", "CANARY-KEY-IN-CLEAR", &json!(1), SetOptions::default()).await.unwrap();
    store.close().await;
    let raw = raw_database(&data);
    for c in canaries {
        assert!(!contains(&raw, c.as_bytes()), "{c} found in the database files");
    }
    assert!(
        contains(&raw, b"CANARY-KEY-IN-CLEAR"),
        "the search must be able to find clear text (keys are stored in clear)"
    );
}

#[tokio::test]
async fn swapped_edited_truncated_or_moved_ciphertext_fails_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = kiln_store::Store::open_data_dir(&data).await.unwrap();
    let kvs = Kvs::new(store.clone(), provider());
    kvs.set("inst-a", "a", &json!("value a"), SetOptions::default()).await.unwrap();
    kvs.set("inst-a", "b", &json!("value b"), SetOptions::default()).await.unwrap();
    kvs.set("inst-b", "a", &json!("value of b"), SetOptions::default()).await.unwrap();
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join(kiln_store::DATABASE_FILE).display()))
            .await
            .unwrap();
    let exec = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).execute(&pool).await.unwrap() }
    };
    // Swap the values of two keys of one installation.
    exec("UPDATE kv_entries SET value = (SELECT value FROM kv_entries WHERE owner = 'inst-a' AND key = 'b') WHERE owner = 'inst-a' AND key = 'a'").await;
    assert_eq!(kvs.get("inst-a", "a").await.unwrap_err().code, ErrorCode::DataCorrupted);
    // Copy a value into another installation's row.
    exec("UPDATE kv_entries SET value = (SELECT value FROM kv_entries WHERE owner = 'inst-a' AND key = 'b') WHERE owner = 'inst-b' AND key = 'a'").await;
    assert_eq!(kvs.get("inst-b", "a").await.unwrap_err().code, ErrorCode::DataCorrupted);
    // Truncate one, edit a byte of another.
    kvs.set("inst-a", "c", &json!("value c"), SetOptions::default()).await.unwrap();
    exec("UPDATE kv_entries SET value = substr(value, 1, length(value) - 1) WHERE owner = 'inst-a' AND key = 'b'").await;
    assert_eq!(kvs.get("inst-a", "b").await.unwrap_err().code, ErrorCode::DataCorrupted);
    exec("UPDATE kv_entries SET value = CAST(replace(CAST(value AS TEXT), 'x', 'y') AS BLOB) || x'00' WHERE owner = 'inst-a' AND key = 'c'").await;
    assert_eq!(kvs.get("inst-a", "c").await.unwrap_err().code, ErrorCode::DataCorrupted);
    pool.close().await;
}

#[tokio::test]
async fn rotation_keeps_every_value_readable() {
    for t in each_backend().await.unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("kiln.keys");
        let (mut file, _) = FileKeyProvider::open_or_create(&key_file).unwrap();
        let kvs = Kvs::new(t.store.clone(), Arc::new(FileKeyProvider::open(&key_file).unwrap()));
        for i in 0..30 {
            kvs.set("o", &format!("k{i}"), &json!({"i": i}), SetOptions::default()).await.unwrap();
        }
        kvs.set_secret("o", "s", &json!("secret")).await.unwrap();

        // A new key-encryption key: rewrap, then the old key can go.
        let new_kek = file.rotate().unwrap();
        let rotated = Kvs::new(t.store.clone(), Arc::new(FileKeyProvider::open(&key_file).unwrap()));
        assert_eq!(rotated.rewrap_all(audit()).await.unwrap(), 1, "{}", t.name);
        let text = std::fs::read_to_string(&key_file).unwrap();
        let only_new: String =
            text.lines().filter(|l| !l.starts_with("key k1 ")).map(|l| format!("{l}\n")).collect();
        std::fs::write(&key_file, only_new).unwrap();
        let without_old = Kvs::new(t.store.clone(), Arc::new(FileKeyProvider::open(&key_file).unwrap()));
        assert_eq!(without_old.get("o", "k7").await.unwrap().unwrap().value, json!({"i": 7}));
        assert_eq!(new_kek, "k2");

        // A new data key: new writes use it, re-encryption moves the rest
        // over in resumable batches.
        assert_eq!(without_old.rotate_data_key("o", audit()).await.unwrap(), 2);
        let mut moved = 0;
        loop {
            let n = without_old.reencrypt("o", 7).await.unwrap();
            if n == 0 {
                break;
            }
            moved += n;
        }
        assert_eq!(moved, 31, "{}", t.name);
        for i in 0..30 {
            assert_eq!(without_old.get("o", &format!("k{i}")).await.unwrap().unwrap().value, json!({"i": i}));
        }
        assert_eq!(without_old.get_secret("o", "s").await.unwrap(), Some(json!("secret")));
    }
}

#[tokio::test]
async fn fail_if_exists_lets_exactly_one_of_many_racing_nodes_win() {
    for t in each_backend().await.unwrap() {
        // Separate Kvs values stand for separate Kiln nodes: no shared cache.
        let nodes: Vec<Arc<Kvs>> = (0..8).map(|_| Arc::new(Kvs::new(t.store.clone(), provider()))).collect();
        for round in 0..20 {
            let key = format!("lock:{round}");
            let racers: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, kvs)| {
                    let (kvs, key) = (kvs.clone(), key.clone());
                    tokio::spawn(async move {
                        let fail =
                            SetOptions { key_policy: KeyPolicy::FailIfExists, ..SetOptions::default() };
                        kvs.set("race", &key, &json!(i), fail).await
                    })
                })
                .collect();
            let mut won = 0;
            for r in racers {
                match r.await.unwrap() {
                    Ok(_) => won += 1,
                    Err(e) => assert_eq!(e.code, ErrorCode::KeyAlreadyExists, "{}: {e}", t.name),
                }
            }
            assert_eq!(won, 1, "{} round {round}: {won} nodes created the same key", t.name);
        }
    }
}

#[tokio::test]
async fn a_node_with_cached_keys_reads_values_sealed_after_another_node_rotated() {
    for t in each_backend().await.unwrap() {
        let a = Kvs::new(t.store.clone(), provider());
        let b = Kvs::new(t.store.clone(), provider());
        a.set("o", "before", &json!(1), SetOptions::default()).await.unwrap();
        assert_eq!(b.get("o", "before").await.unwrap().unwrap().value, json!(1)); // b caches key 1
        assert_eq!(a.rotate_data_key("o", audit()).await.unwrap(), 2);
        a.set("o", "after", &json!(2), SetOptions::default()).await.unwrap();
        assert_eq!(b.get("o", "after").await.unwrap().unwrap().value, json!(2), "{}", t.name);
        let page = b.query("o", "", None, None).await.unwrap();
        assert_eq!(page.results.len(), 2, "{}", t.name);
    }
}

#[tokio::test]
async fn re_encryption_never_overwrites_a_newer_write() {
    for t in each_backend().await.unwrap() {
        let kvs = Kvs::new(t.store.clone(), provider());
        kvs.set("o", "k", &json!("old"), SetOptions::default()).await.unwrap();
        let mut tx = t.store.begin().await.unwrap();
        let stale = tx.kv_get("o", "kvs", "k", 0).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        kvs.set("o", "k", &json!("new"), SetOptions::default()).await.unwrap();
        // Re-encryption that read the row before the write must not win.
        let mut tx = t.store.begin().await.unwrap();
        let replaced = tx.kv_reseal("o", "kvs", "k", &stale.value, &stale.value, 1).await.unwrap();
        tx.commit().await.unwrap();
        assert!(!replaced, "{}", t.name);
        assert_eq!(kvs.get("o", "k").await.unwrap().unwrap().value, json!("new"), "{}", t.name);
    }
}

#[tokio::test]
async fn canaries_are_nowhere_in_the_postgresql_tables() {
    for t in each_backend().await.unwrap() {
        let Some(rest) = t.locator.strip_prefix("postgres:") else { continue };
        let (schema, url) = rest.split_once(':').unwrap();
        let kvs = Kvs::new(t.store.clone(), provider());
        let canaries = [
            "CANARY-VALUE-pg-51c0",
            "CANARY-SECRET-pg-2e77",
            "CANARY-VARIABLE-pg-ab3",
            "CANARY-TOKEN-pg-c41",
        ];
        kvs.set("inst", "plain", &json!({"note": canaries[0]}), SetOptions::default()).await.unwrap();
        kvs.set_secret("inst", "api-token", &json!(canaries[1])).await.unwrap();
        kvs.set_variable(
            "variables:app:development",
            "API_KEY",
            canaries[2],
            true,
            audit(),
            variable_event(),
        )
        .await
        .unwrap();
        kvs.set_token("inst", "oauth:access", canaries[3], None).await.unwrap();
        kvs.set("inst", "CANARY-KEY-IN-CLEAR", &json!(1), SetOptions::default()).await.unwrap();

        // Every row of every table, as PostgreSQL prints it (bytea as hex),
        // and every bytea column decoded back to bytes.
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
        )
        .bind(schema)
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(tables.iter().any(|t| t == "kv_entries"), "{tables:?}");
        let mut dump = Vec::new();
        for table in &tables {
            let sql = format!("SELECT t::text FROM {schema}.{table} t");
            let rows: Vec<String> =
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await.unwrap();
            for row in rows {
                dump.extend(row.into_bytes());
            }
        }
        let sql = format!("SELECT value FROM {schema}.kv_entries");
        let values: Vec<Vec<u8>> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_all(&pool).await.unwrap();
        for v in values {
            dump.extend(v);
        }
        pool.close().await;
        for c in canaries {
            let hex: String = c.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(!contains(&dump, c.as_bytes()), "{c} found in a PostgreSQL table");
            assert!(!contains(&dump, hex.as_bytes()), "{c} found hex-encoded in a PostgreSQL table");
        }
        assert!(contains(&dump, b"CANARY-KEY-IN-CLEAR"), "the search must be able to find clear text");
    }
}

#[tokio::test]
async fn tokens_are_sealed_apart_and_never_listed() {
    for t in each_backend().await.unwrap() {
        let (clock, now) = TestClock::new();
        let kvs = Kvs::with_clock(t.store.clone(), provider(), now);
        let hour = Some(Ttl { value: 1, unit: TtlUnit::Hours });
        kvs.set_token("inst", "oauth:access", "at-123", hour).await.unwrap();
        kvs.set("inst", "oauth:note", &json!("visible"), SetOptions::default()).await.unwrap();
        assert_eq!(
            kvs.get_token("inst", "oauth:access").await.unwrap().as_deref(),
            Some("at-123"),
            "{}",
            t.name
        );
        // Not a KVS entry, not a secret, not listed, not another owner's.
        assert_eq!(kvs.get("inst", "oauth:access").await.unwrap(), None);
        assert_eq!(kvs.get_secret("inst", "oauth:access").await.unwrap(), None);
        let page = kvs.query("inst", "oauth:", None, None).await.unwrap();
        assert_eq!(page.results.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(), ["oauth:note"]);
        assert_eq!(kvs.get_token("other", "oauth:access").await.unwrap(), None);
        // It expires with its TTL, and can be deleted.
        clock.advance_secs(3601);
        assert_eq!(kvs.get_token("inst", "oauth:access").await.unwrap(), None, "{}", t.name);
        kvs.set_token("inst", "oauth:refresh", "rt-456", None).await.unwrap();
        kvs.delete_token("inst", "oauth:refresh").await.unwrap();
        assert_eq!(kvs.get_token("inst", "oauth:refresh").await.unwrap(), None);
    }
}
