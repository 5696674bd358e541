//! What running public Forge apps unmodified showed Kiln's built-ins got
//! wrong (docs/COMPATIBILITY.md): names Forge's packages export that Kiln's
//! did not (an app importing one failed to link, whatever it called), and
//! where @forge/resolver and @forge/events differed from Forge's shapes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use common::{FakeHost, index_importing, ok, run_index};
use kiln_ipc::Outcome;
use serde_json::{Value, json};

/// Load `code` as `src/index.js` with every `@forge/*` built-in importable,
/// call `export` with `payload` and `context`, and return the outcome. These
/// apps make no host calls: the host answers none, and any call fails the test.
fn run_app(code: &str, export: &str, payload: Value, context: Value) -> Outcome {
    let program = index_importing(code, &["@forge/api", "@forge/resolver", "@forge/events"]);
    let (outcome, host) = run_index(program, export, &payload, &context, FakeHost::silent());
    assert!(host.calls.is_empty(), "no host call expected: {:?}", host.calls);
    outcome
}

const ECHO_RESOLVER: &str = r"
import Resolver from '@forge/resolver';
const resolver = new Resolver();
resolver.define('echo', ({ payload, context }) => ({ payload, context }));
resolver.define('nothing', () => undefined);
export const handler = resolver.getDefinitions();
";

/// deadline-guardian's `saveUserSettings` destructures its payload; a bridge
/// `invoke('fn')` without one reached it as `undefined` and threw. Forge
/// passes `{}`.
#[test]
fn a_resolver_call_without_a_payload_gets_an_empty_object() {
    let request = json!({"call": {"functionKey": "echo"}, "context": {}});
    let v = ok(run_app(ECHO_RESOLVER, "handler", request, json!({})));
    assert_eq!(v["payload"], json!({}));
}

/// The request's `context` comes from the caller (a browser, through the
/// bridge). Kiln used its `accountId` when the platform named no user, so a
/// caller could claim to be anyone; Forge, and now Kiln, take the user only
/// from the platform's context (`principal.accountId`, or `accountId` as
/// `kiln invoke --account-id` passes it).
#[test]
fn a_resolver_takes_the_user_from_the_platform_never_from_the_request() {
    let claimed = json!({
        "call": {"functionKey": "echo", "payload": {"n": 1}, "jobId": "job-1"},
        "context": {"accountId": "557058:mallory", "installContext": "ari:cloud:jira::site/evil", "cloudId": "c-1", "extension": {"type": "jira:issuePanel"}},
    });
    let v = ok(run_app(ECHO_RESOLVER, "handler", claimed.clone(), json!({})));
    assert_eq!(
        v,
        json!({"payload": {"n": 1}, "context": {"cloudId": "c-1", "extension": {"type": "jira:issuePanel"}, "jobId": "job-1"}})
    );

    let platform = json!({"installContext": "ari:cloud:jira::site/1", "principal": {"accountId": "557058:alice"}, "license": {"isActive": true}});
    let v = ok(run_app(ECHO_RESOLVER, "handler", claimed.clone(), platform));
    assert_eq!(
        v["context"],
        json!({
            "cloudId": "c-1", "extension": {"type": "jira:issuePanel"}, "jobId": "job-1",
            "installContext": "ari:cloud:jira::site/1", "accountId": "557058:alice", "license": {"isActive": true},
        })
    );

    let cli = json!({"installContext": "ari:cloud:jira::site/kiln-local", "accountId": "557058:bob"});
    let v = ok(run_app(ECHO_RESOLVER, "handler", claimed, cli));
    assert_eq!(v["context"]["accountId"], "557058:bob");
}

#[test]
fn resolver_definitions_fail_with_forges_messages() {
    let code = r"
import Resolver from '@forge/resolver';
const message = (f) => { try { f(); return null; } catch (e) { return e.message; } };
export const run = async () => {
  const r = new Resolver().define('a', () => 1);
  const handler = r.getDefinitions();
  let missing = null;
  try { await handler({ call: { functionKey: 'b' }, context: {} }); } catch (e) { missing = e.message; }
  return {
    notAFunction: message(() => r.define('x', 'nope')),
    duplicate: message(() => r.define('a', () => 2)),
    missing,
    nothing: await handler({ call: { functionKey: 'a' }, context: {} }),
  };
};
";
    assert_eq!(
        ok(run_app(code, "run", json!({}), json!({}))),
        json!({
            "notAFunction": "Resolver definition 'x' callback must be a 'function'. Received 'string'.",
            "duplicate": "Resolver definition 'a' already exists.",
            "missing": "Resolver has no definition for 'b'.",
            "nothing": 1,
        })
    );
}

/// Every value @forge/events 3 exports links, with Forge's shapes:
/// `InvocationErrorCode` values are `FUNCTION_*` (Kiln had other names, so
/// `InvocationErrorCode.FUNCTION_TIME_OUT` was undefined), and
/// `new InvocationError(...)` is the `{ _retry, retryOptions }` object the
/// platform reads from a consumer's result.
#[test]
fn forge_events_exports_every_name_with_forges_shapes() {
    let code = r"
import {
  Queue, JobProgress, QueueResponse, InvocationError, InvocationErrorCode, appEvents,
  InvalidQueueNameError, TooManyEventsError, PayloadTooBigError, NoEventsToPushError, RateLimitError,
  PartialSuccessError, InternalServerError, JobDoesNotExistError, InvalidPushSettingsError,
  InvocationLimitReachedError,
} from '@forge/events';
export const run = () => {
  const errors = [InvalidQueueNameError, TooManyEventsError, PayloadTooBigError, NoEventsToPushError,
    RateLimitError, PartialSuccessError, InternalServerError, JobDoesNotExistError, InvalidPushSettingsError,
    InvocationLimitReachedError].every((E) => new E('m') instanceof Error);
  const response = new QueueResponse();
  const before = response._retry;
  response.retry();
  let badKey = null;
  try { new Queue({ key: 'has space' }); } catch (e) { badKey = [e instanceof InvalidQueueNameError, e.message]; }
  const job = new Queue({ key: 'alerts-queue' }).getJob('job-1');
  return {
    errors,
    codes: Object.values(InvocationErrorCode),
    retry: new InvocationError({ retryAfter: 0, retryReason: InvocationErrorCode.FUNCTION_UPSTREAM_RATE_LIMITED, retryData: { n: 1 } }),
    retryDefault: new InvocationError(),
    response: [before, response._retry],
    badKey,
    job: [job instanceof JobProgress, job.id],
    publish: typeof appEvents.publish,
  };
};
";
    assert_eq!(
        ok(run_app(code, "run", json!({}), json!({}))),
        json!({
            "errors": true,
            "codes": [
                "FUNCTION_OUT_OF_MEMORY", "FUNCTION_TIME_OUT", "FUNCTION_PLATFORM_UNKNOWN_ERROR",
                "FUNCTION_PLATFORM_RATE_LIMITED", "FUNCTION_UPSTREAM_RATE_LIMITED", "FUNCTION_RETRY_REQUEST",
            ],
            "retry": {"_retry": true, "retryOptions": {"retryAfter": 1, "retryReason": "FUNCTION_UPSTREAM_RATE_LIMITED", "retryData": {"n": 1}}},
            "retryDefault": {"_retry": true, "retryOptions": {"retryAfter": 1, "retryReason": "FUNCTION_RETRY_REQUEST"}},
            "response": [false, true],
            "badKey": [true, "Queue names can only contain alphanumeric characters, dashes and underscores."],
            "job": [true, "job-1"],
            "publish": "function",
        })
    );
}

/// Forge's methods are async: what Kiln does not support yet (app events)
/// is a rejected promise (so `.catch()` sees it), not a synchronous throw.
/// Queues are supported: tests/forge_events.rs.
#[test]
fn unsupported_app_events_reject_with_not_supported_error() {
    let code = r"
import { appEvents } from '@forge/events';
const outcome = (p) => p.then(() => 'resolved', (e) => `${e.name}: ${e.message}`);
export const run = async () => [await outcome(appEvents.publish({ key: 'e' }))];
";
    assert_eq!(
        ok(run_app(code, "run", json!({}), json!({}))),
        json!(["NotSupportedError: @forge/events appEvents.publish is not supported by Kiln yet"])
    );
}

/// circleci-for-jira imports `__requestAtlassianAsApp`; Kiln's @forge/api
/// lacked it, so every one of the app's functions failed to link
/// ("Could not find export"), even those that never call it. The same held
/// for the entity-store names @forge/api 2–7 export.
#[test]
fn forge_api_exports_every_name_forge_api_exports() {
    let code = r"
import api, {
  __fetchProduct, __requestAtlassianAsApp, __requestAtlassianAsUser, __getRuntime, createRequestStargateAsApp,
  asApp, asUser, authorize, fetch, invokeRemote, invokeService, requestBitbucket, requestConfluence, requestJira,
  webTrigger, privacy, ExternalEndpointNotAllowedError, FetchError, FUNCTION_ERR, HttpError,
  InvalidWorkspaceRequestedError, isExpectedError, isForgePlatformError, isHostedCodeError,
  NeedsAuthenticationError, NotAllowedError, ProductEndpointNotAllowedError, ProxyRequestError,
  RequestProductNotAllowedError, bindInvocationContext, getAppContext, assumeTrustedRoute, route,
  routeFromAbsolute, i18n, permissions,
  storage, startsWith, WhereConditions, FilterConditions, SortOrder, getRuntime, properties, store,
} from '@forge/api';
const refusal = (f) => { try { f(); return 'no error'; } catch (e) { return `${e.name}: ${e.message}`; } };
export const run = () => ({
  functions: [__fetchProduct, __requestAtlassianAsApp, __requestAtlassianAsUser, __getRuntime,
    createRequestStargateAsApp, getRuntime].map((f) => typeof f),
  stargate: createRequestStargateAsApp() === __requestAtlassianAsApp,
  atlassian: refusal(() => __requestAtlassianAsApp('/graphql')),
  properties: refusal(() => properties.onJiraIssue('KILN-1')),
  storeIsProperties: store === properties,
  where: [WhereConditions.beginsWith('a'), WhereConditions.between(['a', 'b']), WhereConditions.isLessThan(3)],
  filter: [FilterConditions.contains('x'), FilterConditions.exists(), FilterConditions.notEqualsTo(1)],
  sort: SortOrder,
  startsWith: startsWith('p'),
});
";
    assert_eq!(
        ok(run_app(code, "run", json!({}), json!({}))),
        json!({
            "functions": ["function", "function", "function", "function", "function", "function"],
            "stargate": true,
            "atlassian": "NotSupportedError: @forge/api __requestAtlassianAsApp is not supported by Kiln yet",
            "properties": "NotSupportedError: @forge/api properties.onJiraIssue (call the product's REST API instead) is not supported by Kiln yet",
            "storeIsProperties": true,
            "where": [
                {"condition": "BEGINS_WITH", "values": ["a"]},
                {"condition": "BETWEEN", "values": ["a", "b"]},
                {"condition": "LESS_THAN", "values": [3]},
            ],
            "filter": [
                {"condition": "CONTAINS", "values": ["x"]},
                {"condition": "EXISTS", "values": [true]},
                {"condition": "NOT_EQUAL_TO", "values": [1]},
            ],
            "sort": {"ASC": "ASC", "DESC": "DESC"},
            "startsWith": {"condition": "STARTS_WITH", "value": "p"},
        })
    );
}

/// circleci-for-jira's logger reads `global.requestId`, which Node (and so
/// Forge) defines; in Kiln every resolver failed with "global is not
/// defined". `setImmediate` is Node's global too.
#[test]
fn nodes_global_and_set_immediate_are_globals() {
    let code = r"
export const run = async () => {
  global.requestId = 'r-1';
  const order = [];
  await new Promise((resolve) => { setImmediate((a) => { order.push(a); resolve(); }, 'immediate'); order.push('sync'); });
  const id = setImmediate(() => order.push('cleared'));
  clearImmediate(id);
  await new Promise((resolve) => setTimeout(resolve, 5));
  return { same: global === globalThis, requestId: globalThis.requestId, order };
};
";
    assert_eq!(
        ok(run_app(code, "run", json!({}), json!({}))),
        json!({"same": true, "requestId": "r-1", "order": ["sync", "immediate"]})
    );
}
