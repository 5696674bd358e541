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
