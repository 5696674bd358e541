//! The `queue.*` capabilities through the real host, on every backend, with
//! the worker's side played by the test (the worker is assumed hostile, so
//! every limit `@forge/events` checks is checked again here): pushes become
//! sealed job rows of the invocation's installation, Forge's limits and
//! error classes, the queue must have a consumer, the per-minute limit,
//! stats and cancel, one installation never reaching another's jobs, and
//! the 0.x/1.x push API for queues whose consumer is a `resolver`. Two tests
//! run app code in a jailed worker, so `@forge/events` and the host are
//! checked together.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::sync::Arc;

use common::{sealed_kvs as kvs, unused_egress as egress};
use kiln_host::queue::{self, MAX_EVENTS_PER_MINUTE, MAX_EVENTS_PER_PUSH};
use kiln_host::{Host, InvocationGrants};
use kiln_ipc::HostReply;
use kiln_sandbox::HostHandler;
use kiln_store::{InstallationRecord, JobKind, JobState, Store};
use serde_json::{Value, json};

const APP: &str = "ari:cloud:ecosystem::app/2d9e8f7a-6b5c-4d3e-8f1a-0b9c8d7e6f5a";

fn manifest() -> String {
    format!(
        "app:
  id: {APP}
  runtime:
    name: nodejs22.x
modules:
  consumer:
    - key: work
      queue: work-queue
      function: quick
    - key: long
      queue: long-queue
      function: slow
  function:
    - key: quick
      handler: index.run
    - key: slow
      handler: index.run
      timeoutSeconds: 300
permissions:
  scopes: []
"
    )
}

/// Two installations of the app, stored as `kiln install` stores them.
async fn installations(store: &Store) -> (InstallationRecord, InstallationRecord) {
    installations_of(store, &manifest()).await
}

async fn installations_of(store: &Store, source: &str) -> (InstallationRecord, InstallationRecord) {
    common::two_installations(store, source).await
}

fn grants(installation: Option<&InstallationRecord>) -> InvocationGrants {
    common::grants_for(APP, installation)
}

fn call(
    host: &Host,
    grants: &InvocationGrants,
    capability: &str,
    args: Value,
) -> Result<Value, (String, String)> {
    match host.invocation(grants).unwrap().handle(capability, args) {
        HostReply::Ok { value } => Ok(value),
        HostReply::Err { code, message } => Err((code, message)),
    }
}

fn code_of(result: Result<Value, (String, String)>) -> String {
    result.unwrap_err().0
}

#[test]
fn a_push_stores_sealed_events_for_the_invocations_installation() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, _) = rt.block_on(installations(&t.store));
        let kvs = kvs(&t.store);
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs.clone()),
        );
        let before = kiln_store::now_millis();
        let pushed = call(
            &host,
            &grants(Some(&a)),
            "queue.push",
            json!({"queue": "work-queue", "events": [
                {"body": {"ssn": "078-05-1120"}},
                {"body": {"n": 2}, "delayInSeconds": 30, "concurrency": {"key": "sync", "limit": 2}},
            ]}),
        )
        .unwrap();
        let job_id = pushed["jobId"].as_str().unwrap().to_owned();
        assert_eq!(job_id.len(), 36, "{}: a UUID", t.name);
        let rows =
            rt.block_on(async { t.store.begin_read().await.unwrap().jobs_of(a.id, &job_id).await.unwrap() });
        assert_eq!(rows.len(), 2, "{}", t.name);
        for row in &rows {
            assert_eq!(
                (row.kind, row.target.as_str(), row.state),
                (JobKind::Consumer, "work-queue", JobState::Pending)
            );
        }
        assert!(rows[0].run_at >= before && rows[0].run_at <= kiln_store::now_millis());
        assert!(rows[1].run_at >= before + 30_000 && rows[1].run_at <= kiln_store::now_millis() + 30_000);
        assert_eq!(rows[1].concurrency, Some(("sync".to_owned(), 2)));
        assert_ne!(rows[0].event_id, rows[1].event_id);
        assert!(!String::from_utf8_lossy(&rows[0].body).contains("078-05-1120"), "{}: sealed", t.name);
        let body = rt.block_on(queue::open_body(&kvs, &a, &rows[0])).unwrap();
        assert_eq!(body, json!({"ssn": "078-05-1120"}));

        let stats = call(
            &host,
            &grants(Some(&a)),
            "queue.job.stats",
            json!({"queue": "work-queue", "jobId": job_id}),
        );
        assert_eq!(stats.unwrap(), json!({"success": 0, "inProgress": 2, "failed": 0}));
        let cancelled = call(
            &host,
            &grants(Some(&a)),
            "queue.job.cancel",
            json!({"queue": "work-queue", "jobId": job_id}),
        );
        assert_eq!(cancelled.unwrap(), Value::Null);
        let stats = call(
            &host,
            &grants(Some(&a)),
            "queue.job.stats",
            json!({"queue": "work-queue", "jobId": job_id}),
        );
        assert_eq!(stats.unwrap(), json!({"success": 0, "inProgress": 0, "failed": 2}), "{}", t.name);
    }
}

#[test]
fn one_installation_never_reaches_another_installations_jobs() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, b) = rt.block_on(installations(&t.store));
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs(&t.store)),
        );
        let pushed = call(
            &host,
            &grants(Some(&a)),
            "queue.push",
            json!({"queue": "work-queue", "events": [{"body": {}}]}),
        )
        .unwrap();
        let job = json!({"queue": "work-queue", "jobId": pushed["jobId"]});
        // The worker cannot name another installation: the grants decide.
        let forged =
            json!({"queue": "work-queue", "jobId": pushed["jobId"], "installation": a.id, "owner": "x"});
        for (capability, args) in
            [("queue.job.stats", &job), ("queue.job.cancel", &job), ("queue.job.stats", &forged)]
        {
            let (code, message) = call(&host, &grants(Some(&b)), capability, args.clone()).unwrap_err();
            assert_eq!(code, "JobDoesNotExistError", "{}: {capability}", t.name);
            assert!(message.starts_with("The job "), "{message}");
        }
        // Nor the same job under another queue.
        let other = json!({"queue": "long-queue", "jobId": pushed["jobId"]});
        assert_eq!(code_of(call(&host, &grants(Some(&a)), "queue.job.stats", other)), "JobDoesNotExistError");
        let stats = call(&host, &grants(Some(&a)), "queue.job.stats", job).unwrap();
        assert_eq!(
            stats["inProgress"], 1,
            "{}: still there, not cancelled by the other installation",
            t.name
        );
    }
}

/// The worker is hostile: whatever @forge/events checks in the worker is
/// checked again by the host, with the same error classes.
#[test]
fn the_host_checks_forges_limits_again() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, _) = rt.block_on(installations(&t.store));
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs(&t.store)),
        );
        let g = grants(Some(&a));
        let push = |queue: &str, events: Value| {
            call(&host, &g, "queue.push", json!({"queue": queue, "events": events}))
        };
        let one = |event: Value| push("work-queue", json!([event]));
        let many: Vec<Value> = (0..=MAX_EVENTS_PER_PUSH).map(|i| json!({"body": {"i": i}})).collect();
        assert_eq!(code_of(push("work-queue", json!(many))), "TooManyEventsError", "{}", t.name);
        assert_eq!(code_of(push("work-queue", json!([]))), "NoEventsToPushError");
        assert_eq!(code_of(push("work-queue", json!({"body": {}}))), "INVALID_HOST_CALL");
        assert_eq!(code_of(one(json!("hello"))), "InvalidPayloadError");
        assert_eq!(code_of(one(json!({"body": [1]}))), "InvalidPayloadError");
        assert_eq!(code_of(one(json!({"payload": {}}))), "InvalidPayloadError");
        for delay in [json!(901), json!(-1), json!("5"), json!(true)] {
            assert_eq!(
                code_of(one(json!({"body": {}, "delayInSeconds": delay}))),
                "InvalidPushSettingsError"
            );
        }
        for concurrency in
            [json!({"key": "", "limit": 1}), json!({"key": "k", "limit": 0}), json!({"key": "k"}), json!(5)]
        {
            assert_eq!(
                code_of(one(json!({"body": {}, "concurrency": concurrency}))),
                "InvalidPushSettingsError"
            );
        }
        let big = "x".repeat(queue::MAX_PUSH_BYTES);
        assert_eq!(code_of(one(json!({"body": {"s": big}}))), "PayloadTooBigError");
        // A consumer running longer than 55 s takes events of at most 100 KB.
        let event = json!({"body": {"s": "x".repeat(queue::MAX_LONG_RUNNING_EVENT_BYTES)}});
        assert_eq!(code_of(push("long-queue", json!([event.clone()]))), "PayloadTooBigError");
        assert!(
            push("work-queue", json!([event])).is_ok(),
            "{}: 100 KB is fine for a short consumer",
            t.name
        );

        for bad in ["", "has space", "x/y", &"q".repeat(37)] {
            assert_eq!(code_of(push(bad, json!([{"body": {}}]))), "InvalidQueueNameError", "{bad:?}");
        }
        let (code, message) = push("nobody-listens", json!([{"body": {}}])).unwrap_err();
        assert_eq!(code, "InvalidQueueNameError");
        assert!(message.ends_with("the queues with consumers are: long-queue, work-queue"), "{message}");
        let empty = call(&host, &g, "queue.job.stats", json!({"queue": "work-queue", "jobId": ""}));
        assert_eq!(code_of(empty), "JobDoesNotExistError");

        // Nothing refused was stored.
        let stored = rt.block_on(async {
            t.store.begin_read().await.unwrap().jobs_created_since(a.id, JobKind::Consumer, 0).await.unwrap()
        });
        assert_eq!(stored, 1, "{}", t.name);
    }
}

#[test]
fn an_installation_pushes_at_most_500_events_a_minute() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, b) = rt.block_on(installations(&t.store));
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs(&t.store)),
        );
        let fifty: Vec<Value> = (0..MAX_EVENTS_PER_PUSH).map(|i| json!({"body": {"i": i}})).collect();
        let pushes = MAX_EVENTS_PER_MINUTE / u64::try_from(MAX_EVENTS_PER_PUSH).unwrap();
        for _ in 0..pushes {
            call(&host, &grants(Some(&a)), "queue.push", json!({"queue": "work-queue", "events": fifty}))
                .unwrap();
        }
        let over = call(
            &host,
            &grants(Some(&a)),
            "queue.push",
            json!({"queue": "work-queue", "events": [{"body": {}}]}),
        );
        assert_eq!(
            over.unwrap_err(),
            ("RateLimitError".to_owned(), "Too many requests.".to_owned()),
            "{}",
            t.name
        );
        // The limit is per installation.
        call(
            &host,
            &grants(Some(&b)),
            "queue.push",
            json!({"queue": "work-queue", "events": [{"body": {}}]}),
        )
        .unwrap();
    }
}

#[test]
fn queues_need_an_installation_and_a_key_store() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stores = rt.block_on(kiln_store::testing::each_backend()).unwrap();
    let t = stores.first().unwrap();
    let (a, _) = rt.block_on(installations(&t.store));
    let args = json!({"queue": "work-queue", "events": [{"body": {}}]});
    let with_kvs = Host::new(
        rt.handle().clone(),
        t.store.clone(),
        kiln_audit::testing::AUDITOR.clone(),
        egress(),
        None,
        Some(kvs(&t.store)),
    );
    // `kiln invoke` runs without an installation.
    assert_eq!(
        code_of(call(&with_kvs, &grants(None), "queue.push", args.clone())),
        "CAPABILITY_NOT_AVAILABLE"
    );
    let without_kvs = Host::new(
        rt.handle().clone(),
        t.store.clone(),
        kiln_audit::testing::AUDITOR.clone(),
        egress(),
        None,
        None,
    );
    assert_eq!(
        code_of(call(&without_kvs, &grants(Some(&a)), "queue.push", args)),
        "CAPABILITY_NOT_AVAILABLE"
    );
    let unknown = call(&with_kvs, &grants(Some(&a)), "queue.drop", json!({"queue": "work-queue"}));
    assert_eq!(code_of(unknown), "CAPABILITY_NOT_AVAILABLE");
}

const E2E_MANIFEST: &str = "app:
  id: ari:cloud:ecosystem::app/2d9e8f7a-6b5c-4d3e-8f1a-0b9c8d7e6f5a
  runtime:
    name: nodejs22.x
modules:
  webtrigger:
    - key: hook
      function: main
  consumer:
    - key: work
      queue: work-queue
      function: main
  function:
    - key: main
      handler: index.main
permissions:
  scopes: []
";

const E2E_APP: &str = r"
import { Queue, InvalidQueueNameError, TooManyEventsError } from '@forge/events';
const name = (p) => p.then(() => 'resolved', (e) => e.constructor.name);
export async function main() {
  const queue = new Queue({ key: 'work-queue' });
  const { jobId } = await queue.push([{ body: { n: 1 } }, { body: { n: 2 }, delayInSeconds: 5 }]);
  const stats = await queue.getJob(jobId).getStats();
  const unknown = await name(new Queue({ key: 'nobody-listens' }).push({ body: {} }));
  const tooMany = await name(queue.push(Array.from({ length: 51 }, () => ({ body: {} }))));
  await queue.cancel(jobId);
  const after = await queue.getStats(jobId);
  return { jobId, stats, unknown, tooMany, after };
}
";

/// App code in a jailed worker pushes, reads stats and cancels through
/// `@forge/events` and the real host; the events land sealed in the
/// installation's jobs.
#[test]
fn an_app_in_the_sandbox_pushes_reads_stats_and_cancels() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let sandbox = common::sandbox();
    let (_dir, _manifest, built) = common::app(E2E_MANIFEST, E2E_APP);
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, _) = rt.block_on(installations_of(&t.store, E2E_MANIFEST));
        let kvs = common::kvs(&t.store, Arc::new(kiln_store::now_millis));
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs.clone()),
        );
        let g = grants(Some(&a));
        let request = common::web_trigger(json!({}));
        let mut handler = host.invocation(&g).unwrap();
        let result = sandbox.invoke(APP, &built.hash, &built.bundle, &request, &mut handler).unwrap();
        let v: Value = match result.outcome {
            kiln_ipc::Outcome::Ok { result } => serde_json::from_str(&result).unwrap(),
            kiln_ipc::Outcome::Err(e) => panic!("{}: {e:?}", t.name),
        };
        assert_eq!(v["stats"], json!({"success": 0, "inProgress": 2, "failed": 0}), "{}: {v}", t.name);
        assert_eq!(v["unknown"], "InvalidQueueNameError");
        assert_eq!(v["tooMany"], "TooManyEventsError");
        assert_eq!(v["after"], json!({"success": 0, "inProgress": 0, "failed": 2}));
        let job_id = v["jobId"].as_str().unwrap();
        let rows =
            rt.block_on(async { t.store.begin_read().await.unwrap().jobs_of(a.id, job_id).await.unwrap() });
        assert_eq!(rows.len(), 2, "{}", t.name);
        assert!(rows.iter().all(|r| r.state == JobState::Cancelled && r.body.is_empty()));
    }
}

/// An app of the @forge/events 0.x/1.x days: its consumer is a `resolver`
/// (the form 2.x replaced with a function), and it pushes payloads.
const LEGACY_MANIFEST: &str = "app:
  id: ari:cloud:ecosystem::app/2d9e8f7a-6b5c-4d3e-8f1a-0b9c8d7e6f5a
  runtime:
    name: nodejs22.x
modules:
  webtrigger:
    - key: hook
      function: main
  consumer:
    - key: alerts-consumer
      queue: alerts-queue
      resolver:
        function: queue-fn
        method: event-listener
    - key: work
      queue: work-queue
      function: main
  function:
    - key: main
      handler: index.main
    - key: queue-fn
      handler: index.handler
permissions:
  scopes: []
";

/// A queue whose consumer is a `resolver` takes 1.x pushes: each payload
/// (any JSON value, a `{body}` object kept whole) is stored as the body the
/// resolver gets as `payload`, 1.x's settings delay them all, and the reply
/// says `form: "1.x"`. A `function` consumer's queue of the same app keeps
/// the 2.x+ rules and ignores a settings delay. Both keep Forge's limits.
/// (Wizard2, test-storage-failure-repro and the todo-with-analytics sample
/// push `{pageData, cloudId}`, `{key: 1}` and `[{type: 'identify', ...}]`
/// this way, and failed with InvalidPayloadError before.)
#[test]
fn a_resolver_consumers_queue_takes_version_1_payloads() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, _) = rt.block_on(installations_of(&t.store, LEGACY_MANIFEST));
        let kvs = kvs(&t.store);
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs.clone()),
        );
        let g = grants(Some(&a));
        let push = |queue: &str, args: Value| {
            let mut args = args;
            args["queue"] = json!(queue);
            call(&host, &g, "queue.push", args)
        };
        let payloads = json!([{"pageData": "p", "cloudId": "c"}, "text", 7, {"body": {"kept": "whole"}}]);
        let before = kiln_store::now_millis();
        let pushed = push("alerts-queue", json!({"events": payloads, "delayInSeconds": 60})).unwrap();
        assert_eq!(pushed["form"], "1.x", "{}: {pushed}", t.name);
        let job_id = pushed["jobId"].as_str().unwrap().to_owned();
        let rows =
            rt.block_on(async { t.store.begin_read().await.unwrap().jobs_of(a.id, &job_id).await.unwrap() });
        assert_eq!(rows.len(), 4, "{}", t.name);
        let mut bodies = Vec::new();
        for row in &rows {
            assert_eq!((row.kind, row.target.as_str()), (JobKind::Consumer, "alerts-queue"));
            assert!(row.run_at >= before + 60_000, "{}: the settings' delay", t.name);
            bodies.push(rt.block_on(queue::open_body(&kvs, &a, row)).unwrap());
        }
        bodies.sort_by_key(Value::to_string);
        let mut expected = payloads.as_array().unwrap().clone();
        expected.sort_by_key(Value::to_string);
        assert_eq!(bodies, expected, "{}: each payload as it was pushed", t.name);
        let stats = call(&host, &g, "queue.job.stats", json!({"queue": "alerts-queue", "jobId": job_id}));
        assert_eq!(stats.unwrap(), json!({"success": 0, "inProgress": 4, "failed": 0}));

        // 1.x's own refusals.
        let many: Vec<Value> = (0..=MAX_EVENTS_PER_PUSH).map(|i| json!(i)).collect();
        assert_eq!(code_of(push("alerts-queue", json!({"events": many}))), "TooManyEventsError");
        assert_eq!(code_of(push("alerts-queue", json!({"events": []}))), "NoEventsToPushError");
        let big = "x".repeat(queue::MAX_PUSH_BYTES);
        assert_eq!(code_of(push("alerts-queue", json!({"events": [big]}))), "PayloadTooBigError");
        for delay in [json!(901), json!(-1), json!("5")] {
            let refused = push("alerts-queue", json!({"events": [{"a": 1}], "delayInSeconds": delay}));
            assert_eq!(code_of(refused), "InvalidPushSettingsError", "{}", t.name);
        }

        // The function consumer's queue: 2.x+ events only; a settings delay
        // is not a 2.x+ argument and changes nothing.
        assert_eq!(
            code_of(push("work-queue", json!({"events": [{"pageData": "p"}]}))),
            "InvalidPayloadError",
            "{}",
            t.name
        );
        let v2 =
            push("work-queue", json!({"events": [{"body": {"n": 1}}], "delayInSeconds": "ignored"})).unwrap();
        assert!(v2.get("form").is_none(), "{}: {v2}", t.name);
        let rows = rt.block_on(async {
            t.store.begin_read().await.unwrap().jobs_of(a.id, v2["jobId"].as_str().unwrap()).await.unwrap()
        });
        assert_eq!(rt.block_on(queue::open_body(&kvs, &a, &rows[0])).unwrap(), json!({"n": 1}));
    }
}

const LEGACY_APP: &str = r"
import { Queue } from '@forge/events';
export async function main() {
  const queue = new Queue({ key: 'alerts-queue' });
  const id = await queue.push({ pageData: 'transcript', cloudId: 'site' });
  const response = await queue.getJob(id).getStats();
  return { id, stats: await response.json() };
}
export const handler = async () => ({});
";

/// A 1.x app in a jailed worker pushes a payload to its resolver
/// consumer's queue through the real host, gets the 1.x job id back, and
/// reads the job's stats the 1.x way.
#[test]
fn a_version_1_app_in_the_sandbox_pushes_payloads_to_its_resolver_consumer() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let sandbox = common::sandbox();
    let (_dir, _manifest, built) = common::app(LEGACY_MANIFEST, LEGACY_APP);
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, _) = rt.block_on(installations_of(&t.store, LEGACY_MANIFEST));
        let kvs = common::kvs(&t.store, Arc::new(kiln_store::now_millis));
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs.clone()),
        );
        let g = grants(Some(&a));
        let mut handler = host.invocation(&g).unwrap();
        let request = common::web_trigger(json!({}));
        let result = sandbox.invoke(APP, &built.hash, &built.bundle, &request, &mut handler).unwrap();
        let v: Value = match result.outcome {
            kiln_ipc::Outcome::Ok { result } => serde_json::from_str(&result).unwrap(),
            kiln_ipc::Outcome::Err(e) => panic!("{}: {e:?}", t.name),
        };
        let id = v["id"].as_str().unwrap();
        let job_id = id.strip_prefix("alerts-queue#").unwrap_or_else(|| panic!("{}: {v}", t.name));
        assert_eq!(v["stats"], json!({"success": 0, "inProgress": 1, "failed": 0}), "{}: {v}", t.name);
        let rows =
            rt.block_on(async { t.store.begin_read().await.unwrap().jobs_of(a.id, job_id).await.unwrap() });
        assert_eq!(rows.len(), 1, "{}", t.name);
        let body = rt.block_on(queue::open_body(&kvs, &a, &rows[0])).unwrap();
        assert_eq!(body, json!({"pageData": "transcript", "cloudId": "site"}));
    }
}
