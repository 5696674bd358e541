//! `@forge/events` queues against a fake host that records every host call:
//! the exact `queue.*` arguments each form sends, the limits every version
//! of `@forge/events` checks alike (refused before anything is sent), what
//! the server decides by the queue's consumer form (2.x+ events or 0.x/1.x
//! payloads), and each refusal the server answers with arriving as the
//! class Forge throws.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::{FakeHost, Responder, index_importing, ok, run_index};
use kiln_ipc::HostReply;
use serde_json::{Value, json};

/// Run `code`'s `run` export (it may import @forge/events) against a host
/// answering with `respond`; its result and the host calls made.
fn run_ok(code: &str, respond: Responder) -> (Value, Vec<(String, Value)>) {
    let program = index_importing(code, &["@forge/events"]);
    let (outcome, host) = run_index(program, "run", &json!({}), &json!({}), FakeHost::answering(respond));
    (ok(outcome), host.calls)
}

/// Answers as the server does for a queue that exists.
fn server(capability: &str, _args: &Value) -> HostReply {
    let value = match capability {
        "queue.push" => json!({"jobId": "3f1e0c52-5a7b-4f4e-9d2e-0a1b2c3d4e5f"}),
        "queue.job.stats" => json!({"success": 2, "inProgress": 1, "failed": 0}),
        _ => Value::Null,
    };
    HostReply::Ok { value }
}

/// How a promise settled: its value, or the error's class and message.
const OUTCOME: &str = r"
const outcome = (p) => p.then(
  (v) => ({ ok: v === undefined ? null : v }),
  (e) => ({ error: e.constructor.name, message: e.message, isError: e instanceof Error,
            errorCode: e.errorCode === undefined ? null : e.errorCode }),
);
";

#[test]
fn each_form_sends_the_documented_host_call() {
    let code = format!(
        r"import {{ Queue }} from '@forge/events';
{OUTCOME}
export const run = async () => {{
  const queue = new Queue({{ key: 'work-queue' }});
  const results = [];
  results.push(await queue.push({{ body: {{ n: 1 }} }}));
  results.push(await queue.push([
    {{ body: {{ when: new Date(0), skip: undefined, f() {{}} }}, delayInSeconds: 30 }},
    {{ body: {{}}, delayInSeconds: 0, concurrency: {{ key: 'sync', limit: 2 }} }},
  ]));
  results.push(await queue.push({{ body: {{ last: true }}, delayInSeconds: 900, extra: 'sent as it is' }}));
  const job = queue.getJob('job-7');
  results.push(await job.getStats());
  results.push(await outcome(job.cancel()));
  results.push(await queue.getStats('job-8'));
  results.push(await outcome(queue.cancel('job-9')));
  return results;
}};"
    );
    let (v, calls) = run_ok(&code, Box::new(server));
    let job = json!({"jobId": "3f1e0c52-5a7b-4f4e-9d2e-0a1b2c3d4e5f"});
    let stats = json!({"success": 2, "inProgress": 1, "failed": 0});
    assert_eq!(v, json!([job, job, job, stats, {"ok": null}, stats, {"ok": null}]));
    let expected = vec![
        ("queue.push", json!({"queue": "work-queue", "events": [{"body": {"n": 1}}]})),
        (
            "queue.push",
            json!({"queue": "work-queue", "events": [
                {"body": {"when": "1970-01-01T00:00:00.000Z"}, "delayInSeconds": 30},
                {"body": {}, "delayInSeconds": 0, "concurrency": {"key": "sync", "limit": 2}},
            ]}),
        ),
        (
            "queue.push",
            json!({"queue": "work-queue", "events": [
                {"body": {"last": true}, "delayInSeconds": 900, "extra": "sent as it is"},
            ]}),
        ),
        ("queue.job.stats", json!({"queue": "work-queue", "jobId": "job-7"})),
        ("queue.job.cancel", json!({"queue": "work-queue", "jobId": "job-7"})),
        ("queue.job.stats", json!({"queue": "work-queue", "jobId": "job-8"})),
        ("queue.job.cancel", json!({"queue": "work-queue", "jobId": "job-9"})),
    ];
    let got: Vec<(&str, Value)> = calls.iter().map(|(c, a)| (c.as_str(), a.clone())).collect();
    assert_eq!(got, expected);
}

/// Apps that install @forge/events 0.x or 1.x push payloads, not `{ body }`
/// events: `push(payload | payload[], { delayInSeconds }?)`, answered with
/// `'<queue>#<jobId>'`, whose `getJob(...).getStats()` and `.cancel()`
/// answer a response read with `.json()`. The payloads and the settings'
/// delay are sent as they are; the server, which knows the queue's consumer
/// is a `resolver` (the 1.x form), says so with `form: "1.x"`. (Wizard2 and
/// the todo-with-analytics sample failed on `push({ pageData, cloudId })`
/// with InvalidPayloadError before.)
#[test]
fn a_version_1_push_sends_its_payloads_and_answers_a_1x_job_id() {
    let code = format!(
        r"import {{ Queue }} from '@forge/events';
{OUTCOME}
export const run = async () => {{
  const queue = new Queue({{ key: 'alerts-queue' }});
  const one = await queue.push({{ pageData: 'p', cloudId: 'c' }});
  const many = await queue.push([{{ type: 'identify' }}, 'text', 7, {{ body: {{ kept: 'whole' }} }}], {{ delayInSeconds: 60 }});
  const job = queue.getJob(one);
  const stats = await job.getStats();
  const cancelled = await job.cancel();
  const viaQueue = await (await queue.getStats(many)).json();
  return {{
    one, many,
    stats: [stats.ok, stats.status, await stats.json()],
    cancelled: [cancelled.ok, cancelled.status],
    viaQueue,
    empty: await outcome(queue.getJob('alerts-queue#').getStats()),
    badQueue: await outcome(queue.getJob('has space#job-1').getStats()),
  }};
}};"
    );
    let respond = |capability: &str, _args: &Value| -> HostReply {
        let value = match capability {
            "queue.push" => json!({"jobId": "3f1e0c52-5a7b-4f4e-9d2e-0a1b2c3d4e5f", "form": "1.x"}),
            "queue.job.stats" => json!({"success": 1, "inProgress": 0, "failed": 0}),
            _ => Value::Null,
        };
        HostReply::Ok { value }
    };
    let (v, calls) = run_ok(&code, Box::new(respond));
    let id = "alerts-queue#3f1e0c52-5a7b-4f4e-9d2e-0a1b2c3d4e5f";
    let stats = json!({"success": 1, "inProgress": 0, "failed": 0});
    assert_eq!(
        v,
        json!({
            "one": id, "many": id,
            "stats": [true, 200, stats],
            "cancelled": [true, 204],
            "viaQueue": stats,
            "empty": {"error": "JobDoesNotExistError", "message": "jobId cannot be empty.", "isError": true, "errorCode": null},
            "badQueue": {"error": "InvalidQueueNameError", "isError": true, "errorCode": null,
                "message": "Queue names can only contain alphanumeric characters, dashes and underscores."},
        })
    );
    let job = json!({"queue": "alerts-queue", "jobId": "3f1e0c52-5a7b-4f4e-9d2e-0a1b2c3d4e5f"});
    let got: Vec<(&str, Value)> = calls.iter().map(|(c, a)| (c.as_str(), a.clone())).collect();
    assert_eq!(
        got,
        vec![
            ("queue.push", json!({"queue": "alerts-queue", "events": [{"pageData": "p", "cloudId": "c"}]})),
            (
                "queue.push",
                json!({"queue": "alerts-queue", "delayInSeconds": 60,
                       "events": [{"type": "identify"}, "text", 7, {"body": {"kept": "whole"}}]}),
            ),
            ("queue.job.stats", job.clone()),
            ("queue.job.cancel", job.clone()),
            ("queue.job.stats", job),
        ]
    );
}

/// The limits every version of @forge/events checks alike, before anything
/// is sent: at least one event, at most 50, and at most 200 KB of JSON
/// (UTF-8 bytes) per push.
#[test]
fn pushes_over_forges_limits_are_refused_with_forges_errors_before_any_host_call() {
    let code = format!(
        r"import {{ Queue, TooManyEventsError, NoEventsToPushError, PayloadTooBigError }} from '@forge/events';
{OUTCOME}
export const run = async () => {{
  const queue = new Queue({{ key: 'work-queue' }});
  const many = Array.from({{ length: 51 }}, (_, i) => ({{ body: {{ i }} }}));
  // [{{'body':{{'s':'...'}}}}] as JSON is the string plus 19 bytes.
  const sized = (s) => ({{ body: {{ s }} }});
  const limit = 200 * 1024 - 19;
  const refused = {{
    tooMany: await outcome(queue.push(many)),
    none: await outcome(queue.push([])),
    tooBig: await outcome(queue.push(sized('x'.repeat(limit + 1)))),
    tooBigInUtf8: await outcome(queue.push(sized('\u00e9'.repeat(Math.floor(limit / 2) + 1)))),
    tooBigVersion1: await outcome(queue.push('x'.repeat(300 * 1024), {{ delayInSeconds: 5 }})),
  }};
  const classes = {{
    tooMany: (await queue.push(many).catch((e) => e)) instanceof TooManyEventsError,
    none: (await queue.push([]).catch((e) => e)) instanceof NoEventsToPushError,
    tooBig: (await queue.push(sized('x'.repeat(limit + 1))).catch((e) => e)) instanceof PayloadTooBigError,
  }};
  return {{ refused, classes }};
}};"
    );
    let (v, calls) = run_ok(&code, Box::new(server));
    assert!(calls.is_empty(), "nothing may be sent: {calls:?}");
    let refusal = |class: &str, message: &str| json!({"error": class, "message": message, "isError": true, "errorCode": null});
    let too_big = refusal("PayloadTooBigError", "The maximum payload size is 200KB.");
    assert_eq!(
        v["refused"],
        json!({
            "tooMany": refusal("TooManyEventsError", "This push contains more than the 50 events allowed."),
            "none": refusal("NoEventsToPushError", "No events pushed."),
            "tooBig": too_big,
            "tooBigInUtf8": too_big,
            "tooBigVersion1": too_big,
        })
    );
    assert_eq!(v["classes"], json!({"tooMany": true, "none": true, "tooBig": true}));
}

/// What only one version refuses (2.x+ wants `{ body: object }` events and
/// a delay of 0 to 900 s on each; 1.x takes any payload) is sent as it is:
/// the server knows the queue's consumer form, and its refusal arrives as
/// the class @forge/events 2.x+ throws for a `function` consumer's queue.
#[test]
fn what_one_version_refuses_is_decided_by_the_server_and_arrives_as_its_class() {
    let code = format!(
        r"import {{ Queue, InvalidPushSettingsError }} from '@forge/events';
{OUTCOME}
export const run = async () => {{
  const queue = new Queue({{ key: 'work-queue' }});
  return {{
    notAnObject: await outcome(queue.push('hello world')),
    version1Form: await outcome(queue.push({{ hello: 'world' }}, {{ delayInSeconds: 5 }})),
    tooLate: await outcome(queue.push({{ body: {{}}, delayInSeconds: 901 }})),
    tooLateClass: (await queue.push({{ body: {{}}, delayInSeconds: 901 }}).catch((e) => e)) instanceof InvalidPushSettingsError,
  }};
}};"
    );
    // A server whose queue has a `function` consumer (the 2.x+ form).
    let respond = |_capability: &str, args: &Value| -> HostReply {
        let event = &args["events"][0];
        let (code, message) = if !event.is_object() {
            ("InvalidPayloadError", "Event must be an object.")
        } else if !event["body"].is_object() {
            ("InvalidPayloadError", "Event body must be an object.")
        } else {
            ("InvalidPushSettingsError", "The delayInSeconds setting must be between 0 and 900.")
        };
        HostReply::Err { code: code.into(), message: message.into() }
    };
    let (v, calls) = run_ok(&code, Box::new(respond));
    let refusal = |class: &str, message: &str| json!({"error": class, "message": message, "isError": true, "errorCode": null});
    assert_eq!(
        v,
        json!({
            "notAnObject": refusal("InvalidPayloadError", "Event must be an object."),
            "version1Form": refusal("InvalidPayloadError", "Event body must be an object."),
            "tooLate": refusal("InvalidPushSettingsError", "The delayInSeconds setting must be between 0 and 900."),
            "tooLateClass": true,
        })
    );
    assert_eq!(calls[0].1, json!({"queue": "work-queue", "events": ["hello world"]}));
    assert_eq!(
        calls[1].1,
        json!({"queue": "work-queue", "events": [{"hello": "world"}], "delayInSeconds": 5})
    );
}

/// The largest push Forge allows (50 events, exactly 200 KB) goes through.
#[test]
fn a_push_at_exactly_forges_limits_is_sent() {
    let code = r"import { Queue } from '@forge/events';
export const run = async () => {
  const queue = new Queue({ key: 'work-queue' });
  const limit = 200 * 1024 - 19;
  const exact = await queue.push({ body: { s: 'x'.repeat(limit) } });
  const exactUtf8 = await queue.push({ body: { s: '\u00e9'.repeat(Math.floor(limit / 2)) } });
  const fifty = await queue.push(Array.from({ length: 50 }, (_, i) => ({ body: { i }, delayInSeconds: 900 })));
  return [exact.jobId, exactUtf8.jobId, fifty.jobId].every((id) => typeof id === 'string');
};";
    let (v, calls) = run_ok(code, Box::new(server));
    assert_eq!(v, json!(true));
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[2].1["events"].as_array().unwrap().len(), 50);
}

/// What the server refuses arrives as the class Forge throws: its code names
/// the class. A code Forge has no class for is an InternalServerError
/// carrying it.
#[test]
fn server_refusals_arrive_as_forges_error_classes() {
    let code = format!(
        r"import {{ Queue, RateLimitError, JobDoesNotExistError, InvalidQueueNameError,
  InternalServerError }} from '@forge/events';
{OUTCOME}
export const run = async () => {{
  const queue = new Queue({{ key: 'work-queue' }});
  return {{
    rate: await outcome(queue.push({{ body: {{}} }})),
    unknownQueue: await outcome(new Queue({{ key: 'nobody-listens' }}).push({{ body: {{}} }})),
    missingJob: await outcome(queue.getJob('gone').getStats()),
    storeDown: await outcome(queue.getJob('x').cancel()),
    emptyJobId: await outcome(queue.getJob('').getStats()),
    classes: [
      (await queue.push({{ body: {{}} }}).catch((e) => e)) instanceof RateLimitError,
      (await queue.getJob('gone').cancel().catch((e) => e)) instanceof JobDoesNotExistError,
      (await new Queue({{ key: 'nobody-listens' }}).push({{ body: {{}} }}).catch((e) => e)) instanceof InvalidQueueNameError,
      (await queue.getJob('x').cancel().catch((e) => e)) instanceof InternalServerError,
    ],
  }};
}};"
    );
    let respond = |capability: &str, args: &Value| -> HostReply {
        let fail = |code: &str, message: &str| HostReply::Err { code: code.into(), message: message.into() };
        match (capability, args["queue"].as_str(), args["jobId"].as_str()) {
            ("queue.push", Some("nobody-listens"), _) => fail(
                "InvalidQueueNameError",
                "no consumer module of this app listens on queue 'nobody-listens'; the queues with consumers are: work-queue",
            ),
            ("queue.push", _, _) => fail("RateLimitError", "Too many requests."),
            (_, _, Some("gone")) => {
                fail("JobDoesNotExistError", "The job gone was not found for the queue work-queue.")
            }
            _ => fail("STORAGE_ERROR", "database is locked"),
        }
    };
    let (v, calls) = run_ok(&code, Box::new(respond));
    assert_eq!(
        v,
        json!({
            "rate": {"error": "RateLimitError", "message": "Too many requests.", "isError": true, "errorCode": null},
            "unknownQueue": {"error": "InvalidQueueNameError", "isError": true, "errorCode": null,
                "message": "no consumer module of this app listens on queue 'nobody-listens'; the queues with consumers are: work-queue"},
            "missingJob": {"error": "JobDoesNotExistError", "isError": true, "errorCode": null,
                "message": "The job gone was not found for the queue work-queue."},
            "storeDown": {"error": "InternalServerError", "message": "database is locked", "isError": true,
                "errorCode": "STORAGE_ERROR"},
            "emptyJobId": {"error": "JobDoesNotExistError", "message": "jobId cannot be empty.", "isError": true,
                "errorCode": null},
            "classes": [true, true, true, true],
        })
    );
    // The empty job id was refused before anything was sent.
    assert!(!calls.iter().any(|(_, a)| a["jobId"] == ""), "{calls:?}");
}
