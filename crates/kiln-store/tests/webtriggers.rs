//! Web trigger URL rows, on every backend: several URLs per installation
//! and module (schema v9), oldest first, deletes scoped to the
//! installation, and a database from before v9 keeping its URLs with the
//! secret names they were sealed under.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use kiln_crypto::Sha256;
use kiln_manifest::{Grants, NoVariables};
use kiln_store::testing::each_backend;
use kiln_store::{NewVersion, NewWebtrigger, Store, VersionOrigin, WebtriggerCreator};
use kiln_types::{AppId, Environment, Product, SiteUrl, Version};

const MANIFEST: &str = "
app:
  id: ari:cloud:ecosystem::app/5c0ffee0-0000-4000-8000-0000000000a9
  runtime:
    name: nodejs22.x
modules:
  webtrigger:
    - key: hook
      function: main
    - key: other
      function: main
  function:
    - key: main
      handler: index.run
permissions:
  scopes: []
";

/// Two installations of one app; their row ids.
async fn installations(store: &Store) -> (i64, i64) {
    let manifest = kiln_manifest::parse_str("manifest.yml", MANIFEST, &NoVariables).unwrap().manifest;
    let grants = Grants::of(&manifest);
    let env = Environment::development();
    let app_id = AppId::parse("ari:cloud:ecosystem::app/5c0ffee0-0000-4000-8000-0000000000a9").unwrap();
    let mut tx = store.begin().await.unwrap();
    let app = tx.ensure_app(&app_id).await.unwrap();
    let hash = Sha256::of(b"bundle");
    tx.put_bundle(&hash, b"bundle").await.unwrap();
    let version = tx
        .insert_version(NewVersion {
            app_id: app,
            environment: &env,
            version: Version { major: 1, minor: 0 },
            manifest_source: MANIFEST,
            manifest: &manifest,
            grants: &grants,
            origin: &VersionOrigin::Initial,
            bundle: hash,
        })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for site in ["https://a.example.net", "https://b.example.net"] {
        let site = SiteUrl::parse(site).unwrap();
        ids.push(tx.insert_installation(app, &env, &site, Product::Jira, version, &grants).await.unwrap());
    }
    tx.commit().await.unwrap();
    (ids[0], ids[1])
}

async fn insert(store: &Store, installation: i64, module: &str, secret: &str, by: WebtriggerCreator) -> i64 {
    let hash = Sha256::of(secret.as_bytes());
    let name = format!("webtrigger:{module}:{secret}");
    let new = NewWebtrigger {
        installation_id: installation,
        module_key: module,
        token_hash: hash.as_bytes(),
        secret_name: &name,
        created_by: by,
    };
    let mut tx = store.begin().await.unwrap();
    tx.lock_webtriggers(installation).await.unwrap();
    let id = tx.webtrigger_insert(&new, 1_000).await.unwrap();
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn an_installation_keeps_several_urls_per_module_and_deletes_only_its_own() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let (a, b) = installations(store).await;
        let first = insert(store, a, "hook", "s1", WebtriggerCreator::Platform).await;
        let second = insert(store, a, "hook", "s2", WebtriggerCreator::App).await;
        let third = insert(store, a, "hook", "s3", WebtriggerCreator::App).await;
        let other = insert(store, a, "other", "s4", WebtriggerCreator::Platform).await;
        let b_hook = insert(store, b, "hook", "s5", WebtriggerCreator::Platform).await;

        let mut tx = store.begin_read().await.unwrap();
        let ids = |rows: Vec<kiln_store::WebtriggerRow>| rows.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(tx.webtriggers_of(a, None).await.unwrap()),
            [first, second, third, other],
            "{}",
            t.name
        );
        assert_eq!(ids(tx.webtriggers_of(a, Some("hook")).await.unwrap()), [first, second, third]);
        assert_eq!(ids(tx.webtriggers_of(b, None).await.unwrap()), [b_hook]);
        assert_eq!(tx.webtrigger_oldest(a, "hook").await.unwrap().unwrap().id, first);
        assert_eq!(tx.webtrigger_count(a).await.unwrap(), 4);
        let row = tx.webtrigger_by_hash(Sha256::of(b"s2").as_bytes()).await.unwrap().unwrap();
        assert_eq!(
            (row.id, row.installation_id, row.module_key.as_str(), row.secret_name.as_str(), row.created_by),
            (second, a, "hook", "webtrigger:hook:s2", WebtriggerCreator::App)
        );
        assert_eq!(row.created_at, 1_000);
        tx.commit().await.unwrap();

        // A secret's hash opens one URL only.
        let mut tx = store.begin().await.unwrap();
        let hash = Sha256::of(b"s1");
        let again = NewWebtrigger {
            installation_id: b,
            module_key: "hook",
            token_hash: hash.as_bytes(),
            secret_name: "webtrigger:hook:dup",
            created_by: WebtriggerCreator::App,
        };
        assert!(tx.webtrigger_insert(&again, 2_000).await.is_err(), "{}", t.name);
        drop(tx);

        // Another installation's row id deletes nothing.
        let mut tx = store.begin().await.unwrap();
        assert!(!tx.webtrigger_delete_one(b, first).await.unwrap());
        assert!(tx.webtrigger_delete_one(a, first).await.unwrap());
        assert!(!tx.webtrigger_delete_one(a, first).await.unwrap(), "already gone");
        tx.commit().await.unwrap();
        let mut tx = store.begin_read().await.unwrap();
        assert!(tx.webtrigger_by_hash(Sha256::of(b"s1").as_bytes()).await.unwrap().is_none());
        assert_eq!(tx.webtrigger_oldest(a, "hook").await.unwrap().unwrap().id, second, "the next oldest");
        assert_eq!(ids(tx.webtriggers_of(b, None).await.unwrap()), [b_hook]);
        tx.commit().await.unwrap();

        let mut tx = store.begin().await.unwrap();
        assert!(tx.webtrigger_delete(a, "hook").await.unwrap());
        tx.commit().await.unwrap();
        let mut tx = store.begin_read().await.unwrap();
        assert_eq!(ids(tx.webtriggers_of(a, None).await.unwrap()), [other]);
        assert!(!tx.webtrigger_exists(a, "hook").await.unwrap());
        assert!(tx.webtrigger_exists(b, "hook").await.unwrap());
    }
}

#[tokio::test]
async fn urls_made_before_v9_keep_their_secret_names_and_may_get_siblings() {
    for t in each_backend().await.unwrap() {
        let (a, b) = installations(&t.store).await;
        insert(&t.store, a, "hook", "legacy-a", WebtriggerCreator::App).await;
        insert(&t.store, b, "other", "legacy-b", WebtriggerCreator::App).await;
        // Back to the v6 table: one URL per module, no names of its own.
        for sql in [
            "DROP INDEX webtriggers_by_module",
            "ALTER TABLE webtriggers DROP COLUMN created_by",
            "ALTER TABLE webtriggers DROP COLUMN secret_name",
            "CREATE UNIQUE INDEX webtriggers_by_module ON webtriggers (installation_id, module_key)",
            "DELETE FROM kiln_schema WHERE version = 9",
        ] {
            t.exec_raw(sql).await.unwrap();
        }
        let store = kiln_store::testing::open_locator(&t.locator).await.unwrap();
        let mut tx = store.begin_read().await.unwrap();
        let legacy = tx.webtrigger_by_hash(Sha256::of(b"legacy-a").as_bytes()).await.unwrap().unwrap();
        assert_eq!(
            (legacy.module_key.as_str(), legacy.secret_name.as_str(), legacy.created_by),
            ("hook", "webtrigger:hook", WebtriggerCreator::Platform),
            "{}",
            t.name
        );
        let other = tx.webtrigger_by_hash(Sha256::of(b"legacy-b").as_bytes()).await.unwrap().unwrap();
        assert_eq!(other.secret_name, "webtrigger:other");
        tx.commit().await.unwrap();
        let sibling = insert(&store, a, "hook", "new", WebtriggerCreator::App).await;
        let mut tx = store.begin_read().await.unwrap();
        let rows = tx.webtriggers_of(a, Some("hook")).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [legacy.id, sibling], "{}", t.name);
        assert_eq!(tx.webtrigger_oldest(a, "hook").await.unwrap().unwrap().id, legacy.id);
    }
}
