//! Sealed blobs (bytes kept outside the key-value store, such as a queued
//! event's body), on every backend: they open only for the owner and
//! purpose they were sealed for, tampering is detected, and a data key
//! rotation leaves them readable.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::sync::Arc;

use kiln_audit::testing::audit;
use kiln_crypto::keys::EnvKeyProvider;
use kiln_kvs::{ErrorCode, Kvs};
use kiln_store::testing::each_backend;

fn provider() -> Arc<EnvKeyProvider> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Arc::new(EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap())
}

#[tokio::test]
async fn a_blob_opens_only_for_its_owner_and_purpose() {
    for t in each_backend().await.unwrap() {
        let kvs = Kvs::new(t.store.clone(), provider());
        let sealed =
            kvs.seal_blob("installation:a", "[\"jobs.body\",\"q\",\"e1\"]", b"customer data").await.unwrap();
        assert!(!sealed.windows(8).any(|w| w == b"customer"), "{}: not in clear", t.name);
        let opened = kvs.open_blob("installation:a", "[\"jobs.body\",\"q\",\"e1\"]", &sealed).await.unwrap();
        assert_eq!(opened.as_slice(), b"customer data");

        // Another row, another owner, or altered bytes: corrupted, never
        // someone else's data. A fresh Kvs (no cached keys) agrees.
        let fresh = Kvs::new(t.store.clone(), provider());
        for kvs in [&kvs, &fresh] {
            let other_row = kvs.open_blob("installation:a", "[\"jobs.body\",\"q\",\"e2\"]", &sealed).await;
            assert_eq!(other_row.unwrap_err().code, ErrorCode::DataCorrupted, "{}", t.name);
            let other_owner = kvs.open_blob("installation:b", "[\"jobs.body\",\"q\",\"e1\"]", &sealed).await;
            assert_eq!(other_owner.unwrap_err().code, ErrorCode::DataCorrupted);
            let mut altered = sealed.clone();
            *altered.last_mut().unwrap() ^= 1;
            let altered = kvs.open_blob("installation:a", "[\"jobs.body\",\"q\",\"e1\"]", &altered).await;
            assert_eq!(altered.unwrap_err().code, ErrorCode::DataCorrupted);
            assert_eq!(
                kvs.open_blob("installation:a", "p", b"").await.unwrap_err().code,
                ErrorCode::DataCorrupted
            );
        }
        // A key-value entry's ciphertext is no blob, and the other way round.
        kvs.set("installation:a", "k", &serde_json::json!("v"), Default::default()).await.unwrap();
        let blob_as_value = kvs.open_blob("installation:a", "k", &sealed).await;
        assert_eq!(blob_as_value.unwrap_err().code, ErrorCode::DataCorrupted);
    }
}

#[tokio::test]
async fn blobs_stay_readable_after_a_data_key_rotation() {
    for t in each_backend().await.unwrap() {
        let kvs = Kvs::new(t.store.clone(), provider());
        let old = kvs.seal_blob("installation:a", "p", b"before").await.unwrap();
        kvs.rotate_data_key("installation:a", audit()).await.unwrap();
        let new = kvs.seal_blob("installation:a", "p", b"after").await.unwrap();
        assert_ne!(
            kiln_crypto::envelope::sealed_key_id(&old).unwrap(),
            kiln_crypto::envelope::sealed_key_id(&new).unwrap()
        );
        let fresh = Kvs::new(t.store.clone(), provider());
        assert_eq!(
            fresh.open_blob("installation:a", "p", &old).await.unwrap().as_slice(),
            b"before",
            "{}",
            t.name
        );
        assert_eq!(fresh.open_blob("installation:a", "p", &new).await.unwrap().as_slice(), b"after");
    }
}
