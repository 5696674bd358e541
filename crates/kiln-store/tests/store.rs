//! The store itself: migrations, file permissions, and refusing a database
//! written by a newer Kiln.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use kiln_crypto::Sha256;
use kiln_store::{DATABASE_FILE, Store, StoreError};

#[tokio::test]
async fn reopening_runs_no_migration_twice_and_keeps_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open_data_dir(&data).await.unwrap();
    let hash = Sha256::of(b"bundle");
    let mut tx = store.begin().await.unwrap();
    tx.put_bundle(&hash, b"bundle").await.unwrap();
    tx.put_bundle(&hash, b"bundle").await.unwrap();
    tx.commit().await.unwrap();
    store.close().await;

    let again = Store::open_data_dir(&data).await.unwrap();
    let mut tx = again.begin().await.unwrap();
    assert_eq!(tx.bundle(&hash).await.unwrap().as_deref(), Some(&b"bundle"[..]));
    let counts = tx.row_counts().await.unwrap();
    assert!(counts.contains(&("bundles", 1)), "{counts:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_and_database_are_private_to_their_owner() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested/data");
    Store::open_data_dir(&data).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(DATABASE_FILE)), 0o600);
}

#[tokio::test]
async fn a_database_from_a_newer_kiln_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open_data_dir(&data).await.unwrap();
    store.close().await;
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join(DATABASE_FILE).display())).await.unwrap();
    sqlx::query("INSERT INTO kiln_schema (version, name, applied_at) VALUES (999, 'future', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    match Store::open_data_dir(&data).await {
        Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// Several nodes starting at once on a new PostgreSQL schema all open it:
/// `CREATE SCHEMA IF NOT EXISTS` alone lets the losers of the race fail on
/// pg_namespace's unique index, so a node could not start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_starting_at_once_on_a_new_postgres_schema_all_open_it() {
    let Some(url) = kiln_store::testing::postgres_url("concurrent opening of a new schema").unwrap() else {
        return;
    };
    for _ in 0..5 {
        let schema = kiln_store::testing::fresh_schema(&url).await.unwrap();
        let opening: Vec<_> = (0..6)
            .map(|_| {
                let (url, schema) = (url.clone(), schema.clone());
                tokio::spawn(
                    async move { Store::open_postgres(&url, Some(&schema)).await.map(|s| s.backend()) },
                )
            })
            .collect();
        let mut failures = Vec::new();
        for opened in opening {
            if let Err(e) = opened.await.unwrap() {
                failures.push(e.to_string());
            }
        }
        Store::drop_postgres_schema(&url, &schema).await.unwrap();
        assert!(failures.is_empty(), "nodes that could not open the new schema: {failures:#?}");
    }
}
