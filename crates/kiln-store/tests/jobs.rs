//! Durable jobs on every backend: insert drops a redelivered event, claims
//! lease rows to one node at a time (two racing claimers never share a
//! row), an expired lease is claimable again and counts the lost delivery,
//! the per-installation and per-key caps hold, and retry, fail, cancel,
//! stats, expiry and purge do what the worker relies on.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::collections::HashSet;

use kiln_crypto::Sha256;
use kiln_manifest::{Grants, NoVariables};
use kiln_store::testing::each_backend;
use kiln_store::{Claim, JobKind, JobState, JobStats, NewJob, NewVersion, Store, VersionOrigin};
use kiln_types::{AppId, Environment, Product, SiteUrl, Version};

const APP: &str = "ari:cloud:ecosystem::app/0b6c2d57-3c4e-4b8e-9a4f-7d1e5c3b2a10";
const MANIFEST: &str = "app:\n  id: ari:cloud:ecosystem::app/0b6c2d57-3c4e-4b8e-9a4f-7d1e5c3b2a10\n  runtime:\n    name: nodejs22.x\nmodules:\n  consumer:\n    - key: work\n      queue: work-queue\n      function: main\n  function:\n    - key: main\n      handler: index.run\npermissions:\n  scopes: []\n";

const T0: i64 = 1_800_000_000_000;

/// Two installations of one app (on two sites), as rows the jobs refer to.
async fn installations(store: &Store) -> (i64, i64) {
    let manifest = kiln_manifest::parse_str("manifest.yml", MANIFEST, &NoVariables).unwrap().manifest;
    let grants = Grants::of(&manifest);
    let env = Environment::development();
    let mut tx = store.begin().await.unwrap();
    let app_row = tx.ensure_app(&AppId::parse(APP).unwrap()).await.unwrap();
    let hash = Sha256::of(b"bundle");
    tx.put_bundle(&hash, b"bundle").await.unwrap();
    let version = tx
        .insert_version(NewVersion {
            app_id: app_row,
            environment: &env,
            version: Version::FIRST,
            manifest_source: MANIFEST,
            manifest: &manifest,
            grants: &grants,
            origin: &VersionOrigin::Initial,
            bundle: hash,
        })
        .await
        .unwrap();
    let mut ids = Vec::new();
    for site in ["https://a.atlassian.net", "https://b.atlassian.net"] {
        let site = SiteUrl::parse(site).unwrap();
        ids.push(
            tx.insert_installation(app_row, &env, &site, Product::Jira, version, &grants).await.unwrap(),
        );
    }
    tx.commit().await.unwrap();
    (ids[0], ids[1])
}

fn job<'a>(installation: i64, job_id: &'a str, event_id: &'a str, run_at: i64) -> NewJob<'a> {
    NewJob {
        installation_id: installation,
        kind: JobKind::Consumer,
        target: "work-queue",
        job_id,
        event_id,
        body: b"sealed-body",
        concurrency: None,
        run_at,
    }
}

async fn insert(store: &Store, new: &NewJob<'_>) -> bool {
    let mut tx = store.begin().await.unwrap();
    let inserted = tx.job_insert(new, T0).await.unwrap();
    tx.commit().await.unwrap();
    inserted
}

fn claim<'a>(node: &'a str, now: i64, limit: u32, per_installation: u32) -> Claim<'a> {
    Claim { node, now, lease_until: now + 60_000, limit, per_installation }
}

async fn claim_now(store: &Store, c: &Claim<'_>) -> Vec<kiln_store::JobRow> {
    let mut tx = store.begin().await.unwrap();
    let rows = tx.jobs_claim(c).await.unwrap();
    tx.commit().await.unwrap();
    rows
}

#[tokio::test]
async fn a_redelivered_event_is_dropped_and_the_same_id_elsewhere_is_not() {
    for t in each_backend().await.unwrap() {
        let (a, b) = installations(&t.store).await;
        assert!(insert(&t.store, &job(a, "job-1", "ev-1", T0)).await, "{}", t.name);
        assert!(!insert(&t.store, &job(a, "job-2", "ev-1", T0)).await, "{}: same event again", t.name);
        // Another installation, another kind or another target is another event.
        assert!(insert(&t.store, &job(b, "job-1", "ev-1", T0)).await);
        let trigger = NewJob { kind: JobKind::Trigger, target: "on-issue", ..job(a, "job-1", "ev-1", T0) };
        assert!(insert(&t.store, &trigger).await);
        let other_queue = NewJob { target: "other-queue", ..job(a, "job-1", "ev-1", T0) };
        assert!(insert(&t.store, &other_queue).await);

        let mut tx = t.store.begin_read().await.unwrap();
        let row = tx.job_by_event(a, JobKind::Consumer, "work-queue", "ev-1").await.unwrap().unwrap();
        assert_eq!(row.job_id, "job-1", "{}: the first insert stands", t.name);
        assert_eq!(row.state, JobState::Pending);
        assert_eq!(row.attempts, 0);
        assert_eq!(row.body, b"sealed-body");
        assert_eq!(tx.jobs_created_since(a, JobKind::Consumer, T0).await.unwrap(), 2);
        assert_eq!(tx.jobs_created_since(a, JobKind::Consumer, T0 + 1).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn claims_take_due_rows_oldest_first_and_lease_them() {
    for t in each_backend().await.unwrap() {
        let (a, _) = installations(&t.store).await;
        insert(&t.store, &job(a, "j", "late", T0 + 5_000)).await;
        insert(&t.store, &job(a, "j", "second", T0 + 1)).await;
        insert(&t.store, &job(a, "j", "first", T0)).await;
        let got = claim_now(&t.store, &claim("node-1", T0 + 10, 10, 10)).await;
        let ids: Vec<&str> = got.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids, ["first", "second"], "{}: not yet due stays", t.name);
        assert!(
            got.iter().all(|r| r.state == JobState::Running && r.lease_owner.as_deref() == Some("node-1"))
        );
        assert!(got.iter().all(|r| r.lease_until == Some(T0 + 10 + 60_000)));
        // Leased rows are nobody else's while the lease lasts.
        assert!(claim_now(&t.store, &claim("node-2", T0 + 20, 10, 10)).await.is_empty(), "{}", t.name);
        let mut tx = t.store.begin_read().await.unwrap();
        let stored = tx.job_by_event(a, JobKind::Consumer, "work-queue", "first").await.unwrap().unwrap();
        assert_eq!(stored.state, JobState::Running);
        assert_eq!(stored.lease_owner.as_deref(), Some("node-1"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_claimers_racing_never_get_the_same_row() {
    for t in each_backend().await.unwrap() {
        let (a, b) = installations(&t.store).await;
        let events: Vec<String> = (0..60).map(|i| format!("ev-{i}")).collect();
        for (i, e) in events.iter().enumerate() {
            let inst = if i % 2 == 0 { a } else { b };
            insert(&t.store, &job(inst, "j", e, T0)).await;
        }
        let mut tasks = Vec::new();
        for n in 0..4 {
            let store = t.store.clone();
            tasks.push(tokio::spawn(async move {
                let node = format!("node-{n}");
                let mut mine = Vec::new();
                for _ in 0..10 {
                    let c = Claim {
                        node: &node,
                        now: T0,
                        lease_until: T0 + 60_000,
                        limit: 3,
                        per_installation: 100,
                    };
                    let mut tx = store.begin().await.unwrap();
                    let rows = tx.jobs_claim(&c).await.unwrap();
                    tx.commit().await.unwrap();
                    mine.extend(rows.into_iter().map(|r| r.id));
                    tokio::task::yield_now().await;
                }
                mine
            }));
        }
        let mut seen = HashSet::new();
        let mut total = 0;
        for task in tasks {
            for id in task.await.unwrap() {
                total += 1;
                assert!(seen.insert(id), "{}: row {id} claimed twice", t.name);
            }
        }
        assert_eq!(total, 60, "{}: every row claimed once", t.name);
    }
}

#[tokio::test]
async fn an_expired_lease_is_claimable_again_and_counts_the_lost_delivery() {
    for t in each_backend().await.unwrap() {
        let (a, _) = installations(&t.store).await;
        insert(&t.store, &job(a, "j", "ev", T0)).await;
        let first = claim_now(&t.store, &claim("dead-node", T0, 1, 10)).await;
        assert_eq!(first.len(), 1);
        let lease_end = T0 + 60_000;
        assert!(claim_now(&t.store, &claim("node-2", lease_end - 1, 1, 10)).await.is_empty());
        let again = claim_now(&t.store, &claim("node-2", lease_end, 1, 10)).await;
        assert_eq!(again.len(), 1, "{}", t.name);
        assert_eq!(again[0].id, first[0].id);
        assert_eq!(again[0].attempts, 1, "{}: the lost delivery is an attempt", t.name);
        assert!(again[0].last_error.as_deref().unwrap().contains("lease ran out"));
        // The dead node's late answer changes nothing.
        let mut tx = t.store.begin().await.unwrap();
        assert!(!tx.job_complete(first[0].id, "dead-node", lease_end + 5).await.unwrap(), "{}", t.name);
        assert!(!tx.job_extend_lease(first[0].id, "dead-node", lease_end + 99_000).await.unwrap());
        assert!(tx.job_extend_lease(first[0].id, "node-2", lease_end + 99_000).await.unwrap());
        assert!(tx.job_complete(first[0].id, "node-2", lease_end + 5).await.unwrap());
        let row = tx.job_by_event(a, JobKind::Consumer, "work-queue", "ev").await.unwrap().unwrap();
        tx.commit().await.unwrap();
        assert_eq!(row.state, JobState::Done);
        assert_eq!(row.finished_at, Some(lease_end + 5));
        assert!(row.body.is_empty(), "{}: a finished job keeps no body", t.name);
        assert_eq!(row.lease_owner, None);
    }
}

#[tokio::test]
async fn the_per_installation_and_per_key_caps_hold_across_claims() {
    for t in each_backend().await.unwrap() {
        let (a, b) = installations(&t.store).await;
        for i in 0..5 {
            insert(&t.store, &job(a, "j", &format!("a-{i}"), T0)).await;
        }
        insert(&t.store, &job(b, "j", "b-0", T0 + 1)).await;
        // A busy installation does not hold up another one's events.
        let got = claim_now(&t.store, &claim("n1", T0 + 5, 10, 2)).await;
        let ids: Vec<&str> = got.iter().map(|r| r.event_id.as_str()).collect();
        assert_eq!(ids, ["a-0", "a-1", "b-0"], "{}", t.name);
        // Another node sees the running rows and keeps to the cap too.
        assert!(claim_now(&t.store, &claim("n2", T0 + 5, 10, 2)).await.is_empty(), "{}", t.name);
        let mut tx = t.store.begin().await.unwrap();
        assert!(tx.job_complete(got[0].id, "n1", T0 + 6).await.unwrap());
        tx.commit().await.unwrap();
        let next = claim_now(&t.store, &claim("n2", T0 + 7, 10, 2)).await;
        assert_eq!(next.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(), ["a-2"], "{}", t.name);

        // A concurrency key caps its own events below the installation's cap.
        for i in 0..3 {
            let event = format!("k-{i}");
            let keyed = NewJob { concurrency: Some(("sync", 1)), ..job(b, "k", &event, T0) };
            insert(&t.store, &keyed).await;
        }
        let keyed = claim_now(&t.store, &claim("n3", T0 + 8, 10, 10)).await;
        let keyed: Vec<&str> =
            keyed.iter().filter(|r| r.job_id == "k").map(|r| r.event_id.as_str()).collect();
        assert_eq!(keyed, ["k-0"], "{}", t.name);
    }
}

#[tokio::test]
async fn retry_fail_cancel_stats_expire_and_purge() {
    for t in each_backend().await.unwrap() {
        let (a, _) = installations(&t.store).await;
        for e in ["r", "f", "c1", "c2", "old"] {
            let run_at = if e.starts_with('c') { T0 + 100_000 } else { T0 };
            insert(&t.store, &job(a, "push-1", e, run_at)).await;
        }
        let got = claim_now(&t.store, &claim("n", T0, 3, 10)).await;
        let by = |e: &str| got.iter().find(|r| r.event_id == e).unwrap().id;
        let mut tx = t.store.begin().await.unwrap();
        assert!(
            tx.job_retry(by("r"), "n", T0 + 30_000, "FUNCTION_ERROR", Some(b"sealed-retry")).await.unwrap()
        );
        assert!(
            !tx.job_retry(by("r"), "n", T0 + 30_000, "twice", None).await.unwrap(),
            "not running any more"
        );
        assert!(tx.job_fail(by("f"), "n", T0 + 1, &"x".repeat(5_000)).await.unwrap());
        tx.commit().await.unwrap();

        let mut tx = t.store.begin().await.unwrap();
        let r = tx.job_by_event(a, JobKind::Consumer, "work-queue", "r").await.unwrap().unwrap();
        assert_eq!((r.state, r.attempts, r.run_at), (JobState::Pending, 1, T0 + 30_000), "{}", t.name);
        assert_eq!(r.retry.as_deref(), Some(&b"sealed-retry"[..]));
        assert_eq!(r.last_error.as_deref(), Some("FUNCTION_ERROR"));
        assert_eq!(r.lease_owner, None);
        let f = tx.job_by_event(a, JobKind::Consumer, "work-queue", "f").await.unwrap().unwrap();
        assert_eq!((f.state, f.attempts), (JobState::Failed, 1));
        assert_eq!(f.last_error.unwrap().chars().count(), kiln_store::MAX_JOB_ERROR_CHARS);
        assert!(f.body.is_empty());

        // Cancel takes the events that have not started; the running one
        // ("old") and the finished ones keep their state.
        assert_eq!(
            tx.jobs_cancel(a, JobKind::Consumer, "work-queue", "push-1", T0 + 2).await.unwrap(),
            3,
            "{}",
            t.name
        );
        assert_eq!(tx.jobs_cancel(a, JobKind::Consumer, "work-queue", "push-1", T0 + 2).await.unwrap(), 0);
        let stats = tx.job_stats(a, JobKind::Consumer, "work-queue", "push-1").await.unwrap().unwrap();
        assert_eq!(stats, JobStats { success: 0, in_progress: 1, failed: 4 }, "{}", t.name);
        assert_eq!(tx.job_stats(a, JobKind::Consumer, "work-queue", "no-such-push").await.unwrap(), None);
        // A push is its queue's: another queue (or kind) has no such job.
        assert_eq!(tx.job_stats(a, JobKind::Consumer, "other-queue", "push-1").await.unwrap(), None);
        assert_eq!(tx.job_stats(a, JobKind::Trigger, "work-queue", "push-1").await.unwrap(), None);
        assert_eq!(tx.jobs_cancel(a, JobKind::Consumer, "other-queue", "push-1", T0).await.unwrap(), 0);
        let old = got.iter().find(|r| r.event_id == "old").unwrap().id;
        assert!(tx.job_complete(old, "n", T0 + 3).await.unwrap());
        let stats = tx.job_stats(a, JobKind::Consumer, "work-queue", "push-1").await.unwrap().unwrap();
        assert_eq!(stats, JobStats { success: 1, in_progress: 0, failed: 4 });

        // Pending events past the retention window are given up on.
        tx.job_insert(&job(a, "push-2", "stale", T0), T0).await.unwrap();
        tx.job_insert(&job(a, "push-2", "fresh", T0), T0 + 50_000).await.unwrap();
        assert_eq!(tx.jobs_expire(T0 + 1, T0 + 60_000, "retention window passed").await.unwrap(), 1);
        let stale = tx.job_by_event(a, JobKind::Consumer, "work-queue", "stale").await.unwrap().unwrap();
        assert_eq!(stale.state, JobState::Failed);

        // Purge removes finished rows older than the cut, and only those.
        assert_eq!(tx.jobs_purge(T0 + 3, 100).await.unwrap(), 4, "{}", t.name);
        assert_eq!(tx.jobs_purge(T0 + 1_000_000, 1).await.unwrap(), 1, "the limit holds");
        assert_eq!(tx.jobs_purge(T0 + 1_000_000, 100).await.unwrap(), 1);
        let left: Vec<String> =
            tx.jobs_of(a, "push-2").await.unwrap().into_iter().map(|r| r.event_id).collect();
        assert_eq!(left, ["fresh"]);
        assert!(tx.jobs_of(a, "push-1").await.unwrap().is_empty());
        tx.commit().await.unwrap();
    }
}
