//! Scheduled trigger runs and the lifecycle cursor, on every backend: one
//! node wins a slot, an expired lease is taken over (a bounded number of
//! times), a finished run is never claimed again.

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
use kiln_store::{EventKind, NewVersion, RunClaim, RunSlot, Store, VersionOrigin};
use kiln_types::{AppId, Environment, Product, SiteUrl, Version};

const MANIFEST: &str = "
app:
  id: ari:cloud:ecosystem::app/5c0ffee0-0000-4000-8000-000000000001
  runtime:
    name: nodejs22.x
modules:
  scheduledTrigger:
    - key: hourly
      function: main
      interval: hour
  function:
    - key: main
      handler: index.run
permissions:
  scopes: []
";

/// An app with one version installed on `site`; the installation's row id.
async fn installed(store: &Store, site: &str) -> i64 {
    let manifest = kiln_manifest::parse_str("manifest.yml", MANIFEST, &NoVariables).unwrap().manifest;
    let grants = Grants::of(&manifest);
    let env = Environment::development();
    let mut tx = store.begin().await.unwrap();
    let app = tx.ensure_app(&manifest.app.id).await.unwrap();
    let hash = Sha256::of(b"bundle");
    tx.put_bundle(&hash, b"bundle").await.unwrap();
    let version = match tx.latest_version(&manifest.app.id, &env).await.unwrap() {
        Some(v) => v.id,
        None => tx
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
            .unwrap(),
    };
    let site = SiteUrl::parse(site).unwrap();
    let id = tx.insert_installation(app, &env, &site, Product::Jira, version, &grants).await.unwrap();
    tx.record_event(id, EventKind::Installed, None, version, &serde_json::json!({})).await.unwrap();
    tx.commit().await.unwrap();
    id
}

fn slot(installation_id: i64, at: i64) -> RunSlot<'static> {
    RunSlot { installation_id, module_key: "hourly", slot: at }
}

async fn claim(store: &Store, run: RunSlot<'_>, node: &str, now: i64, lease: i64) -> RunClaim {
    let mut tx = store.begin().await.unwrap();
    let c = tx.claim_scheduled_run(run, node, now, now + lease, 3).await.unwrap();
    tx.commit().await.unwrap();
    c
}

async fn finish(store: &Store, run: RunSlot<'_>, node: &str, now: i64, outcome: &str) -> bool {
    let mut tx = store.begin().await.unwrap();
    let done = tx.finish_scheduled_run(run, node, now, outcome).await.unwrap();
    tx.commit().await.unwrap();
    done
}

#[tokio::test]
async fn two_nodes_claiming_the_same_slot_one_wins() {
    for t in each_backend().await.unwrap() {
        let id = installed(&t.store, "https://one.example.net").await;
        let run = slot(id, 3_600_000);
        // Both nodes race on their own connections.
        let (a, b) = tokio::join!(
            claim(&t.store, run, "node-a", 3_700_000, 60_000),
            claim(&t.store, run, "node-b", 3_700_000, 60_000)
        );
        let won = [a, b].iter().filter(|c| matches!(c, RunClaim::Claimed { attempt: 1 })).count();
        assert_eq!(won, 1, "{}: {a:?} {b:?}", t.name);
        assert!(
            [a, b].contains(&RunClaim::Held { lease_until: 3_760_000 }),
            "{}: the loser sees the winner's lease: {a:?} {b:?}",
            t.name
        );
        // Another slot is another run.
        assert_eq!(
            claim(&t.store, slot(id, 7_200_000), "node-b", 7_300_000, 60_000).await,
            RunClaim::Claimed { attempt: 1 }
        );
    }
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_the_old_holder_cannot_finish() {
    for t in each_backend().await.unwrap() {
        let id = installed(&t.store, "https://two.example.net").await;
        let run = slot(id, 0);
        assert_eq!(claim(&t.store, run, "node-a", 1_000, 10_000).await, RunClaim::Claimed { attempt: 1 });
        // Still leased: nobody else may run it.
        assert_eq!(
            claim(&t.store, run, "node-b", 5_000, 10_000).await,
            RunClaim::Held { lease_until: 11_000 }
        );
        // node-a died; its lease ran out.
        assert_eq!(claim(&t.store, run, "node-b", 12_000, 10_000).await, RunClaim::Claimed { attempt: 2 });
        assert!(
            !finish(&t.store, run, "node-a", 13_000, "ok").await,
            "{}: a lost lease finishes nothing",
            t.name
        );
        assert!(finish(&t.store, run, "node-b", 13_000, "ok").await);
        let mut tx = t.store.begin_read().await.unwrap();
        assert_eq!(tx.latest_finished_slots(id).await.unwrap(), vec![("hourly".to_owned(), 0)]);
    }
}

#[tokio::test]
async fn a_finished_run_is_never_claimed_again() {
    for t in each_backend().await.unwrap() {
        let id = installed(&t.store, "https://three.example.net").await;
        let run = slot(id, 3_600_000);
        assert_eq!(claim(&t.store, run, "node-a", 3_600_100, 10_000).await, RunClaim::Claimed { attempt: 1 });
        assert!(finish(&t.store, run, "node-a", 3_600_200, "FUNCTION_ERROR").await);
        assert!(!finish(&t.store, run, "node-a", 3_600_300, "ok").await, "finished once");
        for (node, now) in [("node-a", 3_600_400), ("node-b", 9_999_999_999)] {
            assert_eq!(claim(&t.store, run, node, now, 10_000).await, RunClaim::Finished, "{}", t.name);
        }
    }
}

#[tokio::test]
async fn a_run_whose_lease_keeps_running_out_is_abandoned() {
    for t in each_backend().await.unwrap() {
        let id = installed(&t.store, "https://four.example.net").await;
        let run = slot(id, 0);
        let mut now = 0;
        for attempt in 1..=3 {
            assert_eq!(claim(&t.store, run, "node", now, 10).await, RunClaim::Claimed { attempt });
            now += 11;
        }
        assert_eq!(claim(&t.store, run, "node", now, 10).await, RunClaim::Finished, "{}", t.name);
        let mut tx = t.store.begin_read().await.unwrap();
        assert_eq!(tx.latest_finished_slots(id).await.unwrap(), vec![("hourly".to_owned(), 0)]);
    }
}

#[tokio::test]
async fn pruning_drops_old_finished_runs_only() {
    for t in each_backend().await.unwrap() {
        let id = installed(&t.store, "https://five.example.net").await;
        claim(&t.store, slot(id, 0), "n", 0, 10).await;
        finish(&t.store, slot(id, 0), "n", 1, "ok").await;
        claim(&t.store, slot(id, 100), "n", 100, 1_000_000).await; // unfinished
        claim(&t.store, slot(id, 5_000), "n", 5_000, 10).await;
        finish(&t.store, slot(id, 5_000), "n", 5_001, "ok").await;
        let mut tx = t.store.begin().await.unwrap();
        assert_eq!(tx.prune_scheduled_runs(1_000).await.unwrap(), 1, "{}", t.name);
        tx.commit().await.unwrap();
        assert!(matches!(claim(&t.store, slot(id, 100), "m", 200, 10).await, RunClaim::Held { .. }));
        assert_eq!(claim(&t.store, slot(id, 5_000), "m", 6_000, 10).await, RunClaim::Finished);
    }
}

#[tokio::test]
async fn installations_by_site_and_events_after_a_cursor() {
    for t in each_backend().await.unwrap() {
        let a = installed(&t.store, "https://six.example.net").await;
        let b = installed(&t.store, "https://seven.example.net").await;
        let mut tx = t.store.begin().await.unwrap();
        let all: Vec<i64> = tx.all_installations().await.unwrap().iter().map(|i| i.id).collect();
        assert!(all.contains(&a) && all.contains(&b));
        let site = SiteUrl::parse("https://six.example.net").unwrap();
        let on_six = tx.installations_on_site(&site, Product::Jira).await.unwrap();
        assert_eq!(on_six.iter().map(|i| i.id).collect::<Vec<_>>(), vec![a], "{}", t.name);
        assert!(tx.installations_on_site(&site, Product::Confluence).await.unwrap().is_empty());
        let app = AppId::parse("ari:cloud:ecosystem::app/5c0ffee0-0000-4000-8000-000000000001").unwrap();
        assert_eq!(on_six[0].app, app);

        assert_eq!(tx.trigger_cursor("lifecycle").await.unwrap(), 0, "a fresh store starts at the beginning");
        let events = tx.installation_events_after(0, 100).await.unwrap();
        assert_eq!(events.iter().map(|e| e.installation_id).collect::<Vec<_>>(), vec![a, b]);
        assert!(events.iter().all(|e| e.kind == EventKind::Installed));
        let first = events[0].id;
        assert_eq!(tx.installation_events_after(first, 100).await.unwrap().len(), 1);
        assert_eq!(tx.installation_events_after(0, 1).await.unwrap().len(), 1, "limited");

        tx.advance_trigger_cursor("lifecycle", events[1].id).await.unwrap();
        tx.advance_trigger_cursor("lifecycle", first).await.unwrap();
        assert_eq!(tx.trigger_cursor("lifecycle").await.unwrap(), events[1].id, "never moves back");
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn the_lifecycle_cursor_starts_after_events_recorded_before_the_migration() {
    // A store whose installation events predate the cursor table: the
    // migration starts the cursor after them, so upgrading Kiln does not
    // deliver old installs as news.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = Store::open_data_dir(&data).await.unwrap();
    let id = installed(&store, "https://eight.example.net").await;
    store.close().await;
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", data.join(kiln_store::DATABASE_FILE).display()))
            .await
            .unwrap();
    for sql in [
        // Undo v9 (web trigger URLs) first, so that v8 and v9 run again.
        "DROP INDEX webtriggers_by_module",
        "ALTER TABLE webtriggers DROP COLUMN created_by",
        "ALTER TABLE webtriggers DROP COLUMN secret_name",
        "CREATE UNIQUE INDEX webtriggers_by_module ON webtriggers (installation_id, module_key)",
        "DELETE FROM kiln_schema WHERE version = 9",
        "DROP TABLE trigger_cursors",
        "DROP TABLE scheduled_runs",
        "DELETE FROM kiln_schema WHERE version = 8",
    ] {
        sqlx::query(sql).execute(&pool).await.unwrap();
    }
    pool.close().await;
    let store = Store::open_data_dir(&data).await.unwrap();
    let mut tx = store.begin_read().await.unwrap();
    let last = tx.events(id).await.unwrap().last().unwrap().id;
    assert_eq!(tx.trigger_cursor("lifecycle").await.unwrap(), last);
}
