//! The durable jobs worker on every backend, with a recording fake in place
//! of the sandbox: Forge's event shapes for consumers (v2 and the 1.x
//! resolver form) and triggers, `InvocationError` retries carrying their
//! retry context, exponential backoff after a throw and giving up after
//! Forge's retry limit, oversized retry data refused, an event whose node
//! died delivered again, the per-installation cap, two workers on one store
//! delivering each event once, shutdown waiting for work in flight, and
//! bodies that are sealed and open only in their own row.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_audit::testing::audit;
use kiln_crypto::keys::EnvKeyProvider;
use kiln_kvs::Kvs;
use kiln_manifest::NoVariables;
use kiln_sandbox::Caller;
use kiln_server::jobs::{self, JobKind, JobSettings};
use kiln_server::runner::{BoxFuture, Call, Execute, Failure};
use kiln_store::testing::{TestStore, each_backend};
use kiln_store::{Claim, InstallationRecord, JobRow, JobState, Store};
use kiln_types::{AppId, Environment, Product, SiteUrl};
use serde_json::{Value, json};
use tokio::sync::watch;

const APP: &str = "ari:cloud:ecosystem::app/6a0f3c1e-2b4d-4e8f-9a7b-1c2d3e4f5a6b";

fn manifest() -> String {
    format!(
        "app:
  id: {APP}
  runtime:
    name: nodejs22.x
modules:
  consumer:
    - key: work-consumer
      queue: work-queue
      function: worker
    - key: legacy-consumer
      queue: legacy-queue
      resolver:
        function: resolver-fn
        method: event-listener
  trigger:
    - key: on-issue
      function: worker
      events:
        - avi:jira:created:issue
  function:
    - key: worker
      handler: index.run
      timeoutSeconds: 120
    - key: resolver-fn
      handler: index.handler
permissions:
  scopes:
    - read:jira-work
"
    )
}

fn provider() -> Arc<EnvKeyProvider> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([4u8; 32]);
    Arc::new(EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap())
}

/// What a test runs against: a store, its key store, two installations
/// of the app, and a clock the test moves.
struct Fixture {
    t: TestStore,
    kvs: Arc<Kvs>,
    a: InstallationRecord,
    b: InstallationRecord,
    clock: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(t: TestStore) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest.yml"), manifest()).unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::write(
            dir.path().join("src/index.js"),
            "export const run = async () => ({});\nexport const handler = async () => ({});\n",
        )
        .unwrap();
        let env = Environment::development();
        let request = kiln_apps::DeployRequest {
            app_dir: dir.path(),
            environment: env.clone(),
            dry_run: false,
            variables: &NoVariables,
        };
        kiln_apps::deploy(&t.store, request, audit()).await.unwrap();
        let app = AppId::parse(APP).unwrap();
        for site in ["https://a.atlassian.net", "https://b.atlassian.net"] {
            let site = SiteUrl::parse(site).unwrap();
            kiln_apps::install(&t.store, &app, &env, &site, Some(Product::Jira), audit()).await.unwrap();
        }
        let mut installations = t.store.begin_read().await.unwrap().installations(&app, &env).await.unwrap();
        let b = installations.pop().unwrap();
        let a = installations.pop().unwrap();
        let kvs = Arc::new(Kvs::new(t.store.clone(), provider()));
        Fixture { t, kvs, a, b, clock: Arc::new(AtomicI64::new(kiln_store::now_millis())), _dir: dir }
    }

    fn store(&self) -> &Store {
        &self.t.store
    }

    fn now(&self) -> i64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn advance(&self, by: Duration) {
        self.clock.fetch_add(i64::try_from(by.as_millis()).unwrap(), Ordering::SeqCst);
    }

    fn settings(&self, node: &str) -> JobSettings {
        let clock = self.clock.clone();
        JobSettings {
            poll_interval: Duration::from_millis(5),
            jitter: false,
            backoff_base: Duration::from_secs(10),
            backoff_max: Duration::from_secs(900),
            clock: Arc::new(move || clock.load(Ordering::SeqCst)),
            ..JobSettings::new(node)
        }
    }

    async fn push(
        &self,
        installation: &InstallationRecord,
        queue: &str,
        job: &str,
        event: &str,
        body: Value,
    ) -> bool {
        jobs::enqueue(
            self.store(),
            &self.kvs,
            installation,
            JobKind::Consumer,
            queue,
            job,
            event,
            &body,
            self.now(),
        )
        .await
        .unwrap()
    }

    async fn row(
        &self,
        installation: &InstallationRecord,
        kind: JobKind,
        target: &str,
        event: &str,
    ) -> JobRow {
        let mut tx = self.store().begin_read().await.unwrap();
        tx.job_by_event(installation.id, kind, target, event).await.unwrap().unwrap()
    }

    /// Wait until the event is in `state` (at most 10 s).
    async fn until_state(
        &self,
        installation: &InstallationRecord,
        kind: JobKind,
        target: &str,
        event: &str,
        state: JobState,
    ) -> JobRow {
        self.until(installation, kind, target, event, |r| r.state == state).await
    }

    /// Wait until the event's row satisfies `done` (at most 10 s).
    async fn until(
        &self,
        installation: &InstallationRecord,
        kind: JobKind,
        target: &str,
        event: &str,
        done: impl Fn(&JobRow) -> bool,
    ) -> JobRow {
        for _ in 0..2000 {
            let row = self.row(installation, kind, target, event).await;
            if done(&row) {
                return row;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "{}: event {event} never got there: {:?}",
            self.t.name,
            self.row(installation, kind, target, event).await
        );
    }

    fn spawn(&self, fake: &Arc<Fake>, node: &str) -> Worker {
        self.spawn_with(fake, self.settings(node))
    }

    fn spawn_with(&self, fake: &Arc<Fake>, settings: JobSettings) -> Worker {
        let (stop, shutdown) = watch::channel(false);
        let executor: Arc<dyn Execute> = fake.clone();
        let handle = jobs::spawn(executor, self.store().clone(), self.kvs.clone(), settings, shutdown);
        Worker { stop, handle }
    }
}

struct Worker {
    stop: watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl Worker {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.handle).await.unwrap().unwrap();
    }
}

type Respond = Box<dyn Fn(&Call, usize) -> Result<Value, Failure> + Send + Sync>;

/// Stands in for the sandbox: records each call, answers with `respond`
/// (given the call and how many came before it), after `delay`.
struct Fake {
    calls: Mutex<Vec<Call>>,
    respond: Respond,
    delay: Duration,
    running: Mutex<HashMap<i64, usize>>,
    most_running: Mutex<HashMap<i64, usize>>,
    total: AtomicUsize,
}

impl Fake {
    fn new(respond: Respond) -> Arc<Fake> {
        Fake::slow(Duration::ZERO, respond)
    }

    fn slow(delay: Duration, respond: Respond) -> Arc<Fake> {
        Arc::new(Fake {
            calls: Mutex::new(Vec::new()),
            respond,
            delay,
            running: Mutex::new(HashMap::new()),
            most_running: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
        })
    }

    fn ok() -> Arc<Fake> {
        Fake::new(Box::new(|_, _| Ok(json!({}))))
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    async fn until_calls(&self, n: usize) -> Vec<Call> {
        for _ in 0..2000 {
            if self.total.load(Ordering::SeqCst) >= n {
                return self.calls();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!(
            "expected {n} calls, got {:?}",
            self.calls().iter().map(|c| c.payload.clone()).collect::<Vec<_>>()
        );
    }
}

impl Execute for Fake {
    fn execute(&self, call: Call) -> BoxFuture<'_, Result<Value, Failure>> {
        Box::pin(async move {
            let installation = call.installation.id;
            let n = {
                let mut calls = self.calls.lock().unwrap();
                calls.push(call.clone());
                calls.len() - 1
            };
            {
                let mut running = self.running.lock().unwrap();
                let now = running.entry(installation).or_default();
                *now += 1;
                let mut most = self.most_running.lock().unwrap();
                let top = most.entry(installation).or_default();
                *top = (*top).max(*now);
            }
            tokio::time::sleep(self.delay).await;
            let answer = (self.respond)(&call, n);
            *self.running.lock().unwrap().get_mut(&installation).unwrap() -= 1;
            self.total.fetch_add(1, Ordering::SeqCst);
            answer
        })
    }
}

fn thrown() -> Failure {
    Failure { code: "FUNCTION_ERROR".into(), message: "Error: customer 4711 not found".into() }
}

#[tokio::test]
async fn a_consumer_gets_forges_event_once_and_the_job_is_done() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        assert!(f.push(&f.a, "work-queue", "job-1", "ev-1", json!({"issue": "KILN-1"})).await);
        // The same event again is dropped.
        assert!(!f.push(&f.a, "work-queue", "job-2", "ev-1", json!({"issue": "other"})).await);
        let fake = Fake::ok();
        let worker = f.spawn(&fake, "node-a");
        let row = f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-1", JobState::Done).await;
        worker.stop().await;
        let calls = fake.calls();
        assert_eq!(calls.len(), 1, "{}", f.t.name);
        let call = &calls[0];
        assert_eq!(call.function, "worker");
        assert_eq!(call.module_key, "work-consumer");
        assert_eq!(call.kind, "consumer");
        assert_eq!(call.installation.id, f.a.id);
        assert_eq!(call.account_id, None);
        assert!(
            matches!(call.caller, Caller::Background { timeout_seconds: Some(120) }),
            "{:?}",
            call.caller
        );
        assert_eq!(
            call.payload,
            json!({"body": {"issue": "KILN-1"}, "queueName": "work-queue", "jobId": "job-1", "eventId": "ev-1"})
        );
        assert_eq!(row.attempts, 0);
        assert!(row.body.is_empty(), "a finished event keeps no body");
    }
}

#[tokio::test]
async fn an_invocation_error_retries_after_retry_after_with_the_retry_context() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "work-queue", "job-1", "ev-1", json!({"page": 1})).await;
        let fake = Fake::new(Box::new(|_, n| {
            Ok(if n == 0 {
                // `new InvocationError({...})` as @forge/events returns it.
                json!({"_retry": true, "retryOptions": {
                    "retryAfter": 120, "retryReason": "FUNCTION_UPSTREAM_RATE_LIMITED", "retryData": {"page": 2}}})
            } else {
                json!({"done": true})
            })
        }));
        let started = f.now();
        let worker = f.spawn(&fake, "node-a");
        let row = f
            .until(&f.a, JobKind::Consumer, "work-queue", "ev-1", |r| {
                r.state == JobState::Pending && r.attempts == 1
            })
            .await;
        assert_eq!(row.run_at, started + 120_000, "{}: retryAfter is honoured", f.t.name);
        assert_eq!(row.last_error.as_deref(), Some("RETRY_REQUESTED: the function asked for a retry"));
        let sealed = row.retry.clone().unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("page"), "the retry data is sealed");

        // Not before retryAfter.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(fake.calls().len(), 1);
        f.advance(Duration::from_secs(120));
        f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-1", JobState::Done).await;
        worker.stop().await;
        let calls = fake.calls();
        assert_eq!(calls.len(), 2);
        let context = &calls[1].payload["retryContext"];
        assert_eq!(context["retryCount"], 1, "{}", f.t.name);
        assert_eq!(context["retryReason"], "FUNCTION_UPSTREAM_RATE_LIMITED");
        assert_eq!(context["retryData"], json!({"page": 2}));
        assert!(context["retentionWindow"]["startTime"].as_str().unwrap().ends_with('Z'));
        let remaining = context["retentionWindow"]["remainingTimeMs"].as_i64().unwrap();
        assert!(remaining > 0 && remaining <= 24 * 3600 * 1000, "{remaining}");
        assert_eq!(calls[1].payload["body"], json!({"page": 1}));
        assert!(calls[0].payload.get("retryContext").is_none());
    }
}

#[tokio::test]
async fn a_throw_backs_off_exponentially_and_is_given_up_after_forges_retry_limit() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "work-queue", "job-1", "ev-1", json!({})).await;
        let fake = Fake::new(Box::new(|_, _| Err(thrown())));
        let worker = f.spawn(&fake, "node-a");
        let mut waits = Vec::new();
        for retry in 1..=jobs::FORGE_MAX_RETRIES {
            let row = f
                .until(&f.a, JobKind::Consumer, "work-queue", "ev-1", |r| {
                    r.state == JobState::Pending && r.attempts == retry
                })
                .await;
            // Only the code is kept: the app's message may be customer data.
            assert_eq!(row.last_error.as_deref(), Some("FUNCTION_ERROR: the function threw an error"));
            waits.push((row.run_at - f.now()) / 1000);
            f.advance(Duration::from_millis(u64::try_from(row.run_at - f.now()).unwrap()));
        }
        assert_eq!(waits, [10, 20, 40, 80], "{}: the base, doubling", f.t.name);
        let row = f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-1", JobState::Failed).await;
        worker.stop().await;
        let calls = fake.calls();
        assert_eq!(calls.len(), 5, "{}: one delivery and Forge's four retries", f.t.name);
        assert_eq!(row.attempts, 5);
        let error = row.last_error.unwrap();
        assert!(error.contains("given up after 4 retries"), "{error}");
        assert!(!error.contains("4711"), "{error}");
        assert_eq!(calls[4].payload["retryContext"]["retryCount"], 4);
        assert_eq!(calls[4].payload["retryContext"]["retryReason"], "FUNCTION_ERROR");
        assert_eq!(calls[4].payload["retryContext"]["retryData"], Value::Null);
    }
}

#[tokio::test]
async fn a_time_out_retries_as_a_platform_error_and_a_retry_past_the_limit_is_refused() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "work-queue", "job-1", "ev-1", json!({})).await;
        let fake = Fake::new(Box::new(|_, n| {
            if n == 0 {
                Err(Failure { code: "TIME_OUT".into(), message: "the function ran past its deadline".into() })
            } else {
                Ok(json!({"_retry": true, "retryOptions": {"retryAfter": 5000}}))
            }
        }));
        let worker = f.spawn(&fake, "node-a");
        let mut last_run_at = 0;
        for retry in 1..=jobs::FORGE_MAX_RETRIES {
            let row = f
                .until(&f.a, JobKind::Consumer, "work-queue", "ev-1", |r| {
                    r.state == JobState::Pending && r.attempts == retry
                })
                .await;
            if retry == 1 {
                assert_eq!(row.last_error.as_deref(), Some("TIME_OUT: the function ran past its deadline"));
                assert_eq!(row.run_at - f.now(), 10_000, "backoff");
            } else {
                assert_eq!(row.run_at - f.now(), 900_000, "{}: retryAfter is capped at 900 s", f.t.name);
            }
            last_run_at = row.run_at;
            f.clock.store(row.run_at, Ordering::SeqCst);
        }
        assert!(last_run_at > 0);
        let row = f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-1", JobState::Failed).await;
        worker.stop().await;
        let calls = fake.calls();
        assert_eq!(calls.len(), 5);
        assert_eq!(calls[1].payload["retryContext"]["retryReason"], "FUNCTION_TIME_OUT", "{}", f.t.name);
        assert_eq!(calls[2].payload["retryContext"]["retryReason"], "FUNCTION_RETRY_REQUEST");
        assert!(row.last_error.unwrap().contains("Forge's limit"));
    }
}

#[tokio::test]
async fn retry_data_over_4_kb_fails_the_event_loudly() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "work-queue", "job-1", "ev-1", json!({})).await;
        let fake = Fake::new(Box::new(|_, _| {
            Ok(
                json!({"_retry": true, "retryOptions": {"retryAfter": 1, "retryData": {"blob": "x".repeat(5000)}}}),
            )
        }));
        let worker = f.spawn(&fake, "node-a");
        let row = f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-1", JobState::Failed).await;
        worker.stop().await;
        let error = row.last_error.unwrap();
        assert!(error.starts_with("RETRY_DATA_TOO_LARGE"), "{}: {error}", f.t.name);
        assert_eq!(fake.calls().len(), 1);
    }
}

/// A node claimed the event and died: once its lease runs out another node
/// delivers it, and the lost delivery counts as a retry.
#[tokio::test]
async fn an_event_whose_node_died_is_delivered_again_with_its_retry_context() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "work-queue", "job-1", "ev-1", json!({"n": 1})).await;
        let mut tx = f.store().begin().await.unwrap();
        let claim = Claim {
            node: "dead-node",
            now: f.now(),
            lease_until: f.now() + 60_000,
            limit: 10,
            per_installation: 10,
        };
        assert_eq!(tx.jobs_claim(&claim).await.unwrap().len(), 1);
        tx.commit().await.unwrap();
        let fake = Fake::ok();
        let worker = f.spawn(&fake, "node-b");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(fake.calls().is_empty(), "{}: not while the lease lasts", f.t.name);
        f.advance(Duration::from_secs(60));
        let row = f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-1", JobState::Done).await;
        worker.stop().await;
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].payload["retryContext"]["retryCount"], 1, "{}", f.t.name);
        assert_eq!(calls[0].payload["retryContext"]["retryReason"], "FUNCTION_PLATFORM_UNKNOWN_ERROR");
        assert_eq!(row.attempts, 1);
    }
}

#[tokio::test]
async fn trigger_events_and_resolver_consumers_get_their_forge_shapes() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        let event = json!({"eventType": "avi:jira:created:issue", "issue": {"key": "KILN-7"}});
        let at = f.now();
        assert!(
            jobs::enqueue(
                f.store(),
                &f.kvs,
                &f.b,
                JobKind::Trigger,
                "on-issue",
                "delivery-1",
                "evt-1",
                &event,
                at
            )
            .await
            .unwrap()
        );
        f.push(&f.a, "legacy-queue", "job-9", "ev-9", json!({"pageData": "p"})).await;
        let fake = Fake::new(Box::new(|call, _| {
            if call.kind == "trigger" && call.payload.get("retryContext").is_none() {
                Err(thrown())
            } else {
                Ok(json!(null))
            }
        }));
        let worker = f.spawn(&fake, "node-a");
        f.until_state(&f.a, JobKind::Consumer, "legacy-queue", "ev-9", JobState::Done).await;
        let row = f
            .until(&f.b, JobKind::Trigger, "on-issue", "evt-1", |r| {
                r.state == JobState::Pending && r.attempts == 1
            })
            .await;
        f.clock.store(row.run_at, Ordering::SeqCst);
        f.until_state(&f.b, JobKind::Trigger, "on-issue", "evt-1", JobState::Done).await;
        worker.stop().await;
        let calls = fake.calls();
        let legacy = calls.iter().find(|c| c.module_key == "legacy-consumer").unwrap();
        assert_eq!(legacy.function, "resolver-fn", "{}", f.t.name);
        assert_eq!(
            legacy.payload,
            json!({"call": {"functionKey": "event-listener", "payload": {"pageData": "p"}, "jobId": "job-9"}, "context": {}})
        );
        assert!(matches!(legacy.caller, Caller::Background { timeout_seconds: None }));
        let triggers: Vec<&Call> = calls.iter().filter(|c| c.kind == "trigger").collect();
        assert_eq!(triggers.len(), 2);
        assert_eq!(triggers[0].module_key, "on-issue");
        assert_eq!(triggers[0].function, "worker");
        assert_eq!(triggers[0].installation.id, f.b.id);
        assert_eq!(triggers[0].payload, event);
        assert_eq!(triggers[1].payload["issue"], json!({"key": "KILN-7"}));
        assert_eq!(triggers[1].payload["retryContext"]["retryCount"], 1);
        assert_eq!(triggers[1].payload["retryContext"]["retryReason"], "FUNCTION_ERROR");
    }
}

#[tokio::test]
async fn what_the_worker_cannot_deliver_fails_at_once_and_says_why() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "nobody-listens", "job-1", "ev-1", json!({})).await;
        let at = f.now();
        jobs::enqueue(f.store(), &f.kvs, &f.a, JobKind::Trigger, "no-such-module", "d", "e", &json!({}), at)
            .await
            .unwrap();
        let fake = Fake::ok();
        let worker = f.spawn(&fake, "node-a");
        let queue = f.until_state(&f.a, JobKind::Consumer, "nobody-listens", "ev-1", JobState::Failed).await;
        let trigger = f.until_state(&f.a, JobKind::Trigger, "no-such-module", "e", JobState::Failed).await;
        worker.stop().await;
        assert!(fake.calls().is_empty(), "{}", f.t.name);
        assert_eq!(
            queue.last_error.as_deref(),
            Some("version 1.0.0 of the app has no consumer module for queue 'nobody-listens'")
        );
        assert_eq!(
            trigger.last_error.as_deref(),
            Some("version 1.0.0 of the app has no trigger module 'no-such-module'")
        );
    }
}

/// A body is sealed under its installation's data key and opens only in
/// its own row: one moved to another row (by someone with write access to
/// the database) fails that event instead of running it.
#[tokio::test]
async fn bodies_are_sealed_and_open_only_in_their_own_row() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "work-queue", "job-1", "ev-secret", json!({"ssn": "078-05-1120"})).await;
        f.push(&f.a, "work-queue", "job-1", "ev-other", json!({"n": 2})).await;
        let row = f.row(&f.a, JobKind::Consumer, "work-queue", "ev-secret").await;
        assert!(!String::from_utf8_lossy(&row.body).contains("078-05-1120"), "{}", f.t.name);
        let moved = f
            .t
            .exec_raw(
                "UPDATE jobs SET body = (SELECT body FROM jobs WHERE event_id = 'ev-secret') WHERE event_id = 'ev-other'",
            )
            .await
            .unwrap();
        assert_eq!(moved, 1);
        let fake = Fake::ok();
        let worker = f.spawn(&fake, "node-a");
        let other = f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-other", JobState::Failed).await;
        f.until_state(&f.a, JobKind::Consumer, "work-queue", "ev-secret", JobState::Done).await;
        worker.stop().await;
        assert!(other.last_error.unwrap().contains("body cannot be opened"), "{}", f.t.name);
        let calls = fake.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].payload["eventId"], "ev-secret");
    }
}

#[tokio::test]
async fn one_installation_runs_at_most_its_cap_at_once() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        for i in 0..4 {
            f.push(&f.a, "work-queue", "job-a", &format!("a-{i}"), json!({})).await;
        }
        f.push(&f.b, "work-queue", "job-b", "b-0", json!({})).await;
        let fake = Fake::slow(Duration::from_millis(40), Box::new(|_, _| Ok(json!({}))));
        let settings = JobSettings { per_installation: 1, ..f.settings("node-a") };
        let worker = f.spawn_with(&fake, settings);
        fake.until_calls(5).await;
        worker.stop().await;
        let most = fake.most_running.lock().unwrap().clone();
        assert_eq!(most[&f.a.id], 1, "{}", f.t.name);
        assert_eq!(most[&f.b.id], 1);
        // The busy installation did not hold the other one back.
        let order: Vec<String> =
            fake.calls().iter().map(|c| c.payload["eventId"].as_str().unwrap().to_owned()).collect();
        let b_at = order.iter().position(|e| e == "b-0").unwrap();
        assert!(b_at <= 1, "{}: {order:?}", f.t.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_one_store_deliver_each_event_once() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        let mut expected = Vec::new();
        for i in 0..30 {
            let inst = if i % 2 == 0 { &f.a } else { &f.b };
            let event = format!("ev-{i}");
            f.push(inst, "work-queue", "job", &event, json!({"i": i})).await;
            expected.push(event);
        }
        let fake = Fake::slow(Duration::from_millis(3), Box::new(|_, _| Ok(json!({}))));
        let one = f.spawn(&fake, "node-1");
        let two = f.spawn(&fake, "node-2");
        fake.until_calls(30).await;
        // Time for a double delivery to show, had there been one.
        tokio::time::sleep(Duration::from_millis(100)).await;
        one.stop().await;
        two.stop().await;
        let mut delivered: Vec<String> =
            fake.calls().iter().map(|c| c.payload["eventId"].as_str().unwrap().to_owned()).collect();
        delivered.sort();
        expected.sort();
        assert_eq!(delivered, expected, "{}: each event once", f.t.name);
        for (i, event) in expected.iter().enumerate() {
            let inst =
                if event.trim_start_matches("ev-").parse::<usize>().unwrap() % 2 == 0 { &f.a } else { &f.b };
            let row = f.row(inst, JobKind::Consumer, "work-queue", event).await;
            assert_eq!(row.state, JobState::Done, "{} {i}", f.t.name);
        }
    }
}

#[tokio::test]
async fn shutdown_waits_for_the_event_in_flight_and_claims_no_more() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        f.push(&f.a, "work-queue", "job", "slow", json!({})).await;
        let fake = Fake::slow(Duration::from_millis(300), Box::new(|_, _| Ok(json!({}))));
        let worker = f.spawn(&fake, "node-a");
        // Wait until the slow event is running.
        f.until_state(&f.a, JobKind::Consumer, "work-queue", "slow", JobState::Running).await;
        worker.stop.send(true).unwrap();
        // The worker lets go of the signal once it claims no more; an
        // event pushed after that stays where it is.
        tokio::time::timeout(Duration::from_secs(10), worker.stop.closed()).await.unwrap();
        f.push(&f.a, "work-queue", "job", "after-stop", json!({})).await;
        tokio::time::timeout(Duration::from_secs(10), worker.handle).await.unwrap().unwrap();
        // By the time the worker has returned, its event is settled.
        let row = f.row(&f.a, JobKind::Consumer, "work-queue", "slow").await;
        assert_eq!(row.state, JobState::Done, "{}", f.t.name);
        assert_eq!(fake.total.load(Ordering::SeqCst), 1);
        let after = f.row(&f.a, JobKind::Consumer, "work-queue", "after-stop").await;
        assert_eq!(after.state, JobState::Pending, "{}: nothing claimed after shutdown", f.t.name);
    }
}

/// Pending events past the retention window are given up, and finished
/// ones older than it purged.
#[tokio::test]
async fn events_past_the_retention_window_are_given_up_and_purged() {
    for t in each_backend().await.unwrap() {
        let f = Fixture::new(t).await;
        // Due only after the window ends: it can never run in time.
        let late = f.now() + 25 * 3600 * 1000;
        jobs::enqueue(
            f.store(),
            &f.kvs,
            &f.a,
            JobKind::Consumer,
            "work-queue",
            "j",
            "late",
            &json!({}),
            late,
        )
        .await
        .unwrap();
        f.push(&f.a, "work-queue", "j", "quick", json!({})).await;
        let fake = Fake::ok();
        let settings =
            JobSettings { housekeeping_interval: Duration::from_millis(20), ..f.settings("node-a") };
        let worker = f.spawn_with(&fake, settings);
        f.until_state(&f.a, JobKind::Consumer, "work-queue", "quick", JobState::Done).await;
        f.advance(Duration::from_secs(24 * 3600 + 1));
        let late = f.until_state(&f.a, JobKind::Consumer, "work-queue", "late", JobState::Failed).await;
        assert!(late.last_error.unwrap().contains("retention window"), "{}", f.t.name);
        // The quick one finished more than a day (of the test clock) ago.
        for _ in 0..2000 {
            let mut tx = f.store().begin_read().await.unwrap();
            if tx.job_by_event(f.a.id, JobKind::Consumer, "work-queue", "quick").await.unwrap().is_none() {
                break;
            }
            drop(tx);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worker.stop().await;
        let mut tx = f.store().begin_read().await.unwrap();
        assert!(tx.job_by_event(f.a.id, JobKind::Consumer, "work-queue", "quick").await.unwrap().is_none());
        assert_eq!(fake.calls().len(), 1);
    }
}
