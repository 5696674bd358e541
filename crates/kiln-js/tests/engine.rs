//! The engine in-process (no jail): module linking, results, errors, limits,
//! timers, host calls, and isolation between invocations.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::{App, FakeHost, err, invocation, ok};
use kiln_ipc::{ErrorCode, HostReply, Limits, LogLevel, ModuleKind, Outcome, SourceModule};
use kiln_js::{Program, compile, run};

/// Answers the `echo` capability with its arguments and refuses any other.
fn echo_or_unknown(capability: &str, args: &serde_json::Value) -> HostReply {
    match capability {
        "echo" => HostReply::Ok { value: args.clone() },
        _ => HostReply::Err { code: "UNKNOWN_CAPABILITY".into(), message: format!("no {capability}") },
    }
}

/// The shared limits with a shorter deadline, so the tests that hit it end sooner.
fn limits() -> Limits {
    Limits { deadline_ms: 2_000, ..common::limits() }
}

fn invoke_with(
    program: &'static Program,
    module: &str,
    export: &str,
    payload: &str,
    limits: Limits,
) -> (Outcome, FakeHost) {
    let mut host = FakeHost::answering(Box::new(echo_or_unknown));
    let inv = invocation(module, export, payload, r#"{"installContext":"ari:cloud:jira::site/1"}"#, limits);
    let outcome = run(program, &inv, &mut host);
    (outcome, host)
}

fn invoke(program: &'static Program, module: &str, export: &str) -> Outcome {
    invoke_with(program, module, export, "{}", limits()).0
}

#[test]
fn a_handler_gets_payload_and_context_and_returns_json() {
    let p = App::new()
        .esm("src/index.js", "export function run(payload, context) { return { got: payload.n + 1, site: context.installContext }; }")
        .load();
    let (outcome, _) = invoke_with(p, "src/index.js", "run", r#"{"n": 41}"#, limits());
    assert_eq!(ok(outcome), serde_json::json!({"got": 42, "site": "ari:cloud:jira::site/1"}));
}

#[test]
fn async_handlers_timers_and_microtasks_are_awaited() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"export async function run() {
                 const order = [];
                 queueMicrotask(() => order.push('micro'));
                 await new Promise((r) => setTimeout(() => { order.push('timer'); r(); }, 20));
                 let ticks = 0;
                 await new Promise((r) => { const id = setInterval(() => { if (++ticks === 3) { clearInterval(id); r(); } }, 1); });
                 return { order, ticks };
               }"#,
        )
        .load();
    assert_eq!(
        ok(invoke(p, "src/index.js", "run")),
        serde_json::json!({"order": ["micro", "timer"], "ticks": 3})
    );
}

#[test]
fn commonjs_esm_and_json_modules_link_both_ways() {
    let p = App::new()
        .esm(
            "src/index.js",
            "import helper, { twice } from './helper';\nimport data from './data.json';\nexport const run = () => ({ a: helper.name, b: twice(2), c: data.items.length, d: require('./esm').value });",
        )
        .cjs("src/helper.js", "const x = require('./inner');\nexports.name = 'helper:' + x;\nexports.twice = (n) => n * 2;", &["name", "twice"])
        .cjs("src/inner.js", "module.exports = 'inner';", &[])
        .json("src/data.json", r#"{"items": [1, 2, 3]}"#)
        .esm("src/esm.js", "export const value = 'from-esm';")
        .import("src/index.js", "./helper", "src/helper.js")
        .import("src/index.js", "./data.json", "src/data.json")
        .import("src/index.js", "./esm", "src/esm.js")
        .import("src/helper.js", "./inner", "src/inner.js")
        .load();
    assert_eq!(
        ok(invoke(p, "src/index.js", "run")),
        serde_json::json!({"a": "helper:inner", "b": 4, "c": 3, "d": "from-esm"})
    );
}

#[test]
fn a_commonjs_entry_exports_its_handler() {
    let p =
        App::new().cjs("src/legacy.js", "exports.run = async (p) => ({ legacy: true, p });", &["run"]).load();
    assert_eq!(ok(invoke(p, "src/legacy.js", "run")), serde_json::json!({"legacy": true, "p": {}}));
}

#[test]
fn thrown_errors_carry_message_and_stack() {
    let p = App::new()
        .esm(
            "src/index.js",
            "function inner() { throw new TypeError('bad input'); }\nexport const run = () => inner();",
        )
        .load();
    let e = err(invoke(p, "src/index.js", "run"));
    assert_eq!(e.code, ErrorCode::FunctionError);
    assert_eq!(e.message, "TypeError: bad input");
    assert!(e.stack.as_deref().unwrap_or_default().contains("inner"), "{e:?}");
}

#[test]
fn huge_error_messages_and_stacks_are_cut_to_size() {
    // The stack comes from V8's formatting hook, which QuickJS also calls.
    let p = App::new()
        .esm(
            "src/index.js",
            "export const run = () => {\n  Error.prepareStackTrace = () => 's'.repeat(1 << 22);\n  throw new Error('m'.repeat(1 << 20));\n};",
        )
        .load();
    let e = err(invoke(p, "src/index.js", "run"));
    assert_eq!(e.code, ErrorCode::FunctionError);
    // 8 KB of message and 16 KB of stack, each marked as cut.
    assert!(e.message.starts_with("Error: mmm") && e.message.ends_with('…'), "{}", &e.message[..40]);
    assert_eq!(e.message.len(), 8 * 1024 + '…'.len_utf8());
    let stack = e.stack.unwrap_or_default();
    assert!(stack.starts_with("sss") && stack.ends_with('…'));
    assert_eq!(stack.len(), 16 * 1024 + '…'.len_utf8());
}

#[test]
fn an_infinite_loop_times_out() {
    let p = App::new().esm("src/index.js", "export const run = () => { for (;;) {} };").load();
    let mut l = limits();
    l.deadline_ms = 200;
    let started = Instant::now();
    let (outcome, _) = invoke_with(p, "src/index.js", "run", "{}", l);
    assert_eq!(err(outcome).code, ErrorCode::TimeOut);
    assert!(started.elapsed().as_millis() < 2_000);
}

#[test]
fn a_memory_bomb_is_out_of_memory() {
    let p = App::new()
        .esm(
            "src/index.js",
            "export const run = () => { const a = []; for (;;) a.push(new Array(100000).fill(1)); };",
        )
        .load();
    let e = err(invoke(p, "src/index.js", "run"));
    assert_eq!(e.code, ErrorCode::FunctionOutOfMemory, "{e:?}");
}

#[test]
fn deep_recursion_is_a_function_error() {
    let p = App::new()
        .esm("src/index.js", "const f = (n) => f(n + 1) + 1;\nexport const run = () => f(0);")
        .load();
    let e = err(invoke(p, "src/index.js", "run"));
    assert_eq!(e.code, ErrorCode::FunctionError, "{e:?}");
    assert!(e.message.contains("stack"), "{e:?}");
}

#[test]
fn results_that_are_not_plain_data_are_refused_with_the_path() {
    let p = App::new()
        .esm(
            "src/index.js",
            "export const cycle = () => { const a = { b: {} }; a.b.a = a; return a; };\n\
             export const fn = () => ({ list: [1, () => 2] });\n\
             export const big = () => 'x'.repeat(6 * 1024 * 1024);\n\
             export const date = () => ({ at: new Date(0), skip: undefined });\n\
             export const tojson = () => ({ toJSON() { return 'no'; }, v: 1 });",
        )
        .load();
    let e = err(invoke(p, "src/index.js", "cycle"));
    assert!(e.message.contains("cycle at result.b.a"), "{e:?}");
    let e = err(invoke(p, "src/index.js", "fn"));
    assert!(e.message.contains("a function at result.list[1]"), "{e:?}");
    let e = err(invoke(p, "src/index.js", "big"));
    assert!(e.message.contains("larger than"), "{e:?}");
    assert_eq!(ok(invoke(p, "src/index.js", "date")), serde_json::json!({"at": "1970-01-01T00:00:00.000Z"}));
    // structured clone: toJSON is not called; the method itself is refused.
    let e = err(invoke(p, "src/index.js", "tojson"));
    assert!(e.message.contains("a function at result.toJSON"), "{e:?}");
}

#[test]
fn forbidden_node_modules_fail_with_the_alternative() {
    let p = App::new()
        .esm("src/index.js", "export const run = () => require('fs').readFileSync('/etc/passwd');")
        .import("src/index.js", "fs", "builtin:node:fs")
        .load();
    let e = err(invoke(p, "src/index.js", "run"));
    assert!(e.message.contains("Kiln does not provide the 'node:fs' module"), "{e:?}");
    assert!(e.message.contains("@forge/kvs"), "{e:?}");
}

#[test]
fn nothing_survives_from_one_invocation_to_the_next() {
    let p = App::new()
        .esm(
            "src/index.js",
            "let counter = 0;\nexport const run = () => { counter++; globalThis.leak = (globalThis.leak || 0) + 1; Object.prototype.polluted = true; return { counter, leak: globalThis.leak }; };\n\
             export const check = () => ({ polluted: ({}).polluted === true, leak: typeof globalThis.leak });",
        )
        .load();
    assert_eq!(ok(invoke(p, "src/index.js", "run")), serde_json::json!({"counter": 1, "leak": 1}));
    assert_eq!(ok(invoke(p, "src/index.js", "run")), serde_json::json!({"counter": 1, "leak": 1}));
    assert_eq!(
        ok(invoke(p, "src/index.js", "check")),
        serde_json::json!({"polluted": false, "leak": "undefined"})
    );
}

#[test]
fn host_calls_round_trip_and_unknown_capabilities_reject() {
    let p = App::new()
        .esm(
            "src/index.js",
            "export const run = async () => {\n\
               const echoed = await __kilnModules.hostCall('echo', { a: 1 });\n\
               let failure = null;\n\
               try { await __kilnModules.hostCall('nope', {}); } catch (e) { failure = e.code; }\n\
               return { echoed, failure };\n\
             };",
        )
        .load();
    assert_eq!(
        ok(invoke(p, "src/index.js", "run")),
        serde_json::json!({"echoed": {"a": 1}, "failure": "UNKNOWN_CAPABILITY"})
    );
}

#[test]
fn console_lines_are_captured_and_bounded() {
    let p = App::new()
        .esm("src/index.js", "export const run = () => { console.log('hello %s', 'kiln', { a: [1, 2] }); for (let i = 0; i < 500; i++) console.error('spam', i); return 1; };")
        .load();
    let (outcome, host) = invoke_with(p, "src/index.js", "run", "{}", limits());
    ok(outcome);
    assert_eq!(host.logs[0], (LogLevel::Info, "hello kiln { a: [ 1, 2 ] }".to_owned()));
    assert_eq!(host.logs.len(), 101, "100 lines plus the notice");
    assert!(host.logs[100].1.contains("401 further lines were dropped"), "{:?}", host.logs[100]);
}

#[test]
fn web_globals_work() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"export const run = () => {
                const u = new URL('/rest/api/3/issue?x=1&y=a+b', 'https://example.atlassian.net');
                u.searchParams.append('z', 'c d');
                const bytes = new TextEncoder().encode('héllo €');
                return {
                  href: u.href, host: u.host, y: u.searchParams.get('y'),
                  bytes: bytes.length, text: new TextDecoder().decode(bytes),
                  b64: btoa('kiln'), clone: structuredClone({ d: [1, { e: 2 }] }),
                  uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(crypto.randomUUID()),
                  random: crypto.getRandomValues(new Uint8Array(8)).length,
                  perf: typeof performance.now() === 'number' && performance.now() >= 0,
                  dom: new DOMException('m', 'AbortError').name,
                };
              };"#,
        )
        .load();
    assert_eq!(
        ok(invoke(p, "src/index.js", "run")),
        serde_json::json!({
            "href": "https://example.atlassian.net/rest/api/3/issue?x=1&y=a+b&z=c+d",
            "host": "example.atlassian.net",
            "y": "a b",
            "bytes": 10,
            "text": "héllo €",
            "b64": "a2lsbg==",
            "clone": {"d": [1, {"e": 2}]},
            "uuid": true,
            "random": 8,
            "perf": true,
            "dom": "AbortError"
        })
    );
}

#[test]
fn kiln_globals_are_defined_as_node_defines_them() {
    // Data globals are writable, configurable and not enumerable; lazy ones
    // are accessors until first use, and an assignment before any read wins.
    let p = App::new()
        .esm(
            "src/index.js",
            r#"export const run = () => {
                const d = (name) => {
                  const x = Object.getOwnPropertyDescriptor(globalThis, name);
                  return [typeof x.get === 'function' ? 'lazy' : typeof x.value, x.writable ?? null, x.configurable, x.enumerable];
                };
                const shapes = {};
                for (const n of ['console', 'setTimeout', 'clearInterval', 'global', 'atob', 'URL', 'fetch', 'Buffer']) shapes[n] = d(n);
                globalThis.fetch = 'mine';
                URL = 'also mine';
                return {
                  shapes,
                  fetch, url: globalThis.URL, after: d('URL'),
                  enumerable: Object.keys(globalThis).filter((k) => k in shapes),
                  native: typeof __kiln,
                  logged: (console.log('%s and %d', 'a', 2), 'yes'),
                };
              };"#,
        )
        .load();
    let (outcome, host) = invoke_with(p, "src/index.js", "run", "{}", limits());
    assert_eq!(
        ok(outcome),
        serde_json::json!({
            "shapes": {
                "console": ["object", true, true, false],
                "setTimeout": ["function", true, true, false],
                "clearInterval": ["function", true, true, false],
                "global": ["object", true, true, false],
                "atob": ["lazy", null, true, false],
                "URL": ["lazy", null, true, false],
                "fetch": ["lazy", null, true, false],
                "Buffer": ["lazy", null, true, false],
            },
            "fetch": "mine",
            "url": "also mine",
            "after": ["string", true, true, false],
            "enumerable": [],
            "native": "undefined",
            "logged": "yes",
        })
    );
    assert_eq!(host.logs, vec![(LogLevel::Info, "a and 2".to_owned())]);
}

#[test]
fn a_missing_export_and_a_never_settling_promise_are_reported() {
    let p = App::new()
        .esm(
            "src/index.js",
            "export const notAFunction = 1;\nexport const hang = () => new Promise(() => {});",
        )
        .load();
    let e = err(invoke(p, "src/index.js", "notAFunction"));
    assert!(e.message.contains("is not a function"), "{e:?}");
    let e = err(invoke(p, "src/index.js", "hang"));
    assert!(e.message.contains("can never settle"), "{e:?}");
}

#[test]
fn syntax_errors_fail_at_compile_time_with_the_module_named() {
    let sources = vec![SourceModule {
        id: "src/bad.js".into(),
        kind: ModuleKind::Esm,
        code: "export const x = ;".into(),
        exports: vec![],
        uses_require: false,
    }];
    let e = compile(&sources, &BTreeMap::new()).unwrap_err().to_string();
    assert!(e.starts_with("src/bad.js: "), "{e}");
}

#[test]
fn forge_modules_link_resolver_works_and_the_rest_says_it_is_unsupported() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"import Resolver from '@forge/resolver';
import api, { route } from '@forge/api';
import { kvs } from '@forge/kvs';
const resolver = new Resolver();
resolver.define('hello', ({ payload, context }) => ({ hi: payload.name, site: context.installContext, account: context.accountId ?? null }));
export const handler = resolver.getDefinitions();
export const useApi = async () => { try { await api.asApp().requestBitbucket(route`/2.0/user`); } catch (e) { return { name: e.name, message: e.message }; } };
export const useKvs = async () => { kvs.entity('employee'); };"#,
        )
        .import("src/index.js", "@forge/resolver", "builtin:@forge/resolver")
        .import("src/index.js", "@forge/api", "builtin:@forge/api")
        .import("src/index.js", "@forge/kvs", "builtin:@forge/kvs")
        .load();
    let payload =
        r#"{"call": {"functionKey": "hello", "payload": {"name": "kiln"}}, "context": {"accountId": "a-1"}}"#;
    let (outcome, _) = invoke_with(p, "src/index.js", "handler", payload, limits());
    // The user comes from the platform's context, never the request's (which
    // a browser writes): this invocation's platform context names none.
    assert_eq!(
        ok(outcome),
        serde_json::json!({"hi": "kiln", "site": "ari:cloud:jira::site/1", "account": null})
    );
    let v = ok(invoke(p, "src/index.js", "useApi"));
    assert_eq!(v["name"], "NotSupportedError");
    assert_eq!(v["message"], "@forge/api asApp().requestBitbucket is not supported by Kiln yet");
    let e = err(invoke(p, "src/index.js", "useKvs"));
    assert_eq!(
        e.message,
        "NotSupportedError: @forge/kvs kvs.entity (the entity store) is not supported by Kiln yet"
    );
}

/// jenkins-for-jira calls `internalMetrics.counter(name).incr()` on every
/// request and in its error handlers; without the module, importing it
/// failed the whole function. Kiln accepts the calls and sends them nowhere.
#[test]
fn forge_metrics_accepts_counters_gauges_and_timers_and_records_nothing() {
    let p = App::new()
        .cjs(
            "src/index.js",
            r#"const { internalMetrics } = require('@forge/metrics');
exports.run = () => {
  internalMetrics.counter('jenkins.request.failed').incr();
  internalMetrics.counter('c').incrBy(3);
  internalMetrics.counter('c').decr();
  internalMetrics.gauge('g').set(7);
  const stop = internalMetrics.timer('t').measure();
  stop.stop();
  const errors = [];
  try { stop.stop(); } catch (e) { errors.push(e.name); }
  try { internalMetrics.counter(''); } catch (e) { errors.push(e.name); }
  try { internalMetrics.gauge('g').set(NaN); } catch (e) { errors.push(e.name); }
  return { errors, name: internalMetrics.counter('n').name };
};"#,
            &["run"],
        )
        .import("src/index.js", "@forge/metrics", "builtin:@forge/metrics")
        .load();
    let (outcome, host) = invoke_with(p, "src/index.js", "run", "{}", limits());
    assert_eq!(
        ok(outcome),
        serde_json::json!({"errors": ["TimerDeadError", "TypeError", "TypeError"], "name": "n"})
    );
    assert!(host.logs.is_empty(), "{:?}", host.logs);
}

#[test]
fn base64_globals_follow_the_web_rules() {
    let p = App::new()
        .esm(
            "src/index.js",
            "export const run = () => { let bad = null; try { btoa('€'); } catch (e) { bad = e instanceof DOMException && e.name === 'InvalidCharacterError'; } try { atob('***'); } catch (e) { bad = bad && e.name === 'InvalidCharacterError' && e.message === 'atob was given text that is not base64'; } return { enc: btoa('hello\\u00ff'), dec: atob(' aGVs bG8= '), bad }; };",
        )
        .load();
    assert_eq!(
        ok(invoke(p, "src/index.js", "run")),
        serde_json::json!({"enc": "aGVsbG//", "dec": "hello", "bad": true})
    );
}

/// Unpaired surrogates (an emoji cut in half by `slice`) leave the runtime as
/// U+FFFD wherever a string crosses: results (values and property names),
/// console lines, error messages, thrown strings, host-call arguments, URLs.
/// Paired surrogates cross unchanged. Before, these threw obscure
/// conversion errors from `console.log`, lost error messages, and made the
/// worker write JSON the server refused as a protocol violation.
#[test]
fn unpaired_surrogates_cross_as_replacement_characters() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"const cut = '😀x'.slice(1);
export const result = () => ({ cut, whole: '😀', ['k' + cut]: '\ud800', list: ['a\udbff', '\udc00\ud800\udc00'] });
export const log = () => { console.log('half', '😀'.slice(0, 1)); console.error({ [cut]: cut }); return 'ok'; };
export const error = () => { throw new RangeError('bad ' + cut); };
export const thrown = () => { throw 'only ' + cut; };
export const host = async () => await __kilnModules.hostCall('echo', { [cut]: ['\ud83d', '😀'] });
export const url = () => new URL('https://example.com/a\ud800?q=\udc00').href;
export const b64 = () => { try { btoa('\ud800'); return 'encoded'; } catch (e) { return e.message; } };
"#,
        )
        .load();
    let r = "\u{fffd}";
    assert_eq!(
        ok(invoke(p, "src/index.js", "result")),
        serde_json::json!({ "cut": format!("{r}x"), "whole": "😀", format!("k{r}x"): r, "list": [format!("a{r}"), format!("{r}\u{10000}")] })
    );

    let (outcome, host) = invoke_with(p, "src/index.js", "log", "{}", limits());
    assert_eq!(ok(outcome), serde_json::json!("ok"));
    assert_eq!(host.logs[0], (LogLevel::Info, format!("half {r}")));
    // Inside an object a string is quoted, and the quoting escapes an
    // unpaired surrogate as Node's inspect does.
    assert_eq!(host.logs[1], (LogLevel::Error, r"{ '\ude00x': '\ude00x' }".to_owned()));

    let e = err(invoke(p, "src/index.js", "error"));
    assert_eq!(
        (e.code, e.message.as_str()),
        (ErrorCode::FunctionError, format!("RangeError: bad {r}x").as_str())
    );
    assert!(e.stack.unwrap_or_default().contains("src/index.js"));
    assert_eq!(err(invoke(p, "src/index.js", "thrown")).message, format!("uncaught \"only {r}x\""));

    let (outcome, host) = invoke_with(p, "src/index.js", "host", "{}", limits());
    let sent = serde_json::json!({ format!("{r}x"): [r, "😀"] });
    assert_eq!(ok(outcome), sent);
    assert_eq!(host.calls, vec![("echo".to_owned(), sent)]);

    assert_eq!(
        ok(invoke(p, "src/index.js", "url")),
        serde_json::json!("https://example.com/a%EF%BF%BD?q=%EF%BF%BD")
    );
    assert_eq!(
        ok(invoke(p, "src/index.js", "b64")),
        serde_json::json!("btoa takes only characters up to U+00FF")
    );
}

/// structuredClone keeps an error's type (the standard ones by name, others
/// as Error) and message, as Node does; getRandomValues refuses float arrays
/// and oversized requests with the DOMExceptions the Web Crypto API names.
#[test]
fn structured_clone_of_errors_and_get_random_values_refusals_match_node() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"class Custom extends Error { constructor(m) { super(m); this.name = 'Custom'; } }
export const run = () => {
  const r = structuredClone(new RangeError('r'));
  const c = structuredClone(new Custom('c'));
  const t = structuredClone({ e: new TypeError('t') }).e;
  const refusal = (a) => { try { crypto.getRandomValues(a); return 'filled'; } catch (e) { return [e.name, e instanceof DOMException]; } };
  return {
    range: [r instanceof RangeError, r.name, r.message, typeof r.stack],
    custom: [c.constructor === Error, c.name, c.message],
    nested: [t instanceof TypeError, t.message],
    float: refusal(new Float64Array(2)),
    big: refusal(new Uint8Array(65537)),
    ints: refusal(new BigInt64Array(2)),
  };
};
"#,
        )
        .load();
    assert_eq!(
        ok(invoke(p, "src/index.js", "run")),
        serde_json::json!({
            "range": [true, "RangeError", "r", "string"],
            "custom": [true, "Error", "c"],
            "nested": [true, "t"],
            "float": ["TypeMismatchError", true],
            "big": ["QuotaExceededError", true],
            "ints": "filled",
        })
    );
}

/// Console lines show values as Node's console does: Maps and Sets with
/// their entries (they printed as `{}`), class instances with their class,
/// strings inside objects in Node's quotes, functions, classes, typed arrays
/// and regular expressions by kind. Objects deeper than four levels are cut.
#[test]
fn console_formats_values_as_node_does() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"export const run = () => {
  class Foo { constructor() { this.x = 1; } }
  const bare = Object.create(null); bare.a = 1;
  console.log(new Map([[1, 'a']]), new Set([1]), new Map());
  console.log({ s: "it's", t: 'plain', n: 'line\nbreak' }, { 'a-b': 1, ok: 2 });
  console.log(new Foo(), bare, [new Foo()]);
  console.log(() => 1, function named() {}, class A {}, async function g() {});
  console.log(new Uint8Array([1, 2]), /x/g, -0, { a: { b: { c: { d: { e: 1 } } } } });
  return 1;
};
"#,
        )
        .load();
    let (outcome, host) = invoke_with(p, "src/index.js", "run", "{}", limits());
    ok(outcome);
    let lines: Vec<&str> = host.logs.iter().map(|(_, line)| line.as_str()).collect();
    assert_eq!(
        lines,
        [
            "Map(1) { 1 => 'a' } Set(1) { 1 } Map(0) {}",
            r#"{ s: "it's", t: 'plain', n: 'line\nbreak' } { 'a-b': 1, ok: 2 }"#,
            "Foo { x: 1 } [Object: null prototype] { a: 1 } [ Foo { x: 1 } ]",
            "[Function (anonymous)] [Function: named] [class A] [AsyncFunction: g]",
            "Uint8Array(2) [ 1, 2 ] /x/g -0 { a: { b: { c: { d: [Object] } } } }",
        ]
    );
}

/// A promise rejected with no handler (a fire-and-forget call that fails) is
/// reported in the invocation's log, as Node reports it, instead of
/// vanishing; one handled later, or the handler's own rejection (the
/// invocation's error), is not. A flood is reported as a count.
#[test]
fn unhandled_rejections_are_logged_and_handled_ones_are_not() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"const fail = async (why) => { throw new TypeError(why); };
export const forgotten = async () => {
  fail('forgotten');
  Promise.reject('a plain reason');
  const later = fail('caught later');
  await null;
  await later.catch(() => {});
  try { await fail('awaited'); } catch {}
  return 'done';
};
export const own = async () => { await null; throw new RangeError('mine'); };
export const flood = () => { for (let i = 0; i < 1000; i++) Promise.reject(i); return 'flooded'; };
"#,
        )
        .load();
    let (outcome, host) = invoke_with(p, "src/index.js", "forgotten", "{}", limits());
    assert_eq!(ok(outcome), serde_json::json!("done"));
    assert_eq!(host.logs.len(), 2, "{:?}", host.logs);
    assert_eq!(host.logs[0].0, LogLevel::Error);
    assert!(
        host.logs[0].1.starts_with("Unhandled promise rejection: TypeError: forgotten\n"),
        "{:?}",
        host.logs[0]
    );
    assert!(host.logs[0].1.contains("src/index.js"), "the stack names the app's line: {:?}", host.logs[0]);
    assert_eq!(host.logs[1], (LogLevel::Error, "Unhandled promise rejection: a plain reason".to_owned()));

    let (outcome, host) = invoke_with(p, "src/index.js", "own", "{}", limits());
    assert_eq!(err(outcome).message, "RangeError: mine");
    assert!(host.logs.is_empty(), "{:?}", host.logs);

    let (outcome, host) = invoke_with(p, "src/index.js", "flood", "{}", limits());
    assert_eq!(ok(outcome), serde_json::json!("flooded"));
    assert_eq!(host.logs.len(), 17, "{:?}", host.logs);
    assert_eq!(host.logs[16].1, "984 more unhandled promise rejections");
}

/// TextEncoder.encodeInto writes whole characters and says how many code
/// units it read (it reported the whole input read); TextDecoder knows
/// UTF-16 and windows-1252 (latin1, ascii) besides UTF-8, as Node does.
#[test]
fn text_encoding_matches_node() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"export const run = () => {
  const into = (s, n) => { const d = new Uint8Array(n); const r = new TextEncoder().encodeInto(s, d); return [r.read, r.written, Array.from(d)]; };
  const dec = (label, bytes, opts) => { try { const t = new TextDecoder(label, opts); return [t.encoding, t.decode(new Uint8Array(bytes))]; } catch (e) { return e.name; } };
  return {
    into: [into('héllo', 2), into('a😀b', 4), into('a😀b', 6), into('', 1)],
    utf16: dec('utf-16le', [0xff, 0xfe, 0x41, 0, 0x3d, 0xd8, 0, 0xde]),
    utf16be: dec('utf-16be', [0, 0x41, 0xd8]),
    utf16fatal: dec('utf-16', [0x41], { fatal: true }),
    latin1: dec('latin1', [0x41, 0xe9, 0x80, 0x9f]),
    ascii: dec(' ASCII ', [0x41]),
    unknown: dec('shift_jis', [0x41]),
  };
};
"#,
        )
        .load();
    assert_eq!(
        ok(invoke(p, "src/index.js", "run")),
        serde_json::json!({
            "into": [[1, 1, [0x68, 0]], [1, 1, [0x61, 0, 0, 0]], [4, 6, [0x61, 0xf0, 0x9f, 0x98, 0x80, 0x62]], [0, 0, [0]]],
            "utf16": ["utf-16le", "A😀"],
            "utf16be": ["utf-16be", "A\u{fffd}"],
            "utf16fatal": "TypeError",
            "latin1": ["windows-1252", "Aé€Ÿ"],
            "ascii": ["windows-1252", "A"],
            "unknown": "RangeError",
        })
    );
}

/// AbortController, AbortSignal, EventTarget and Event behave as in Node:
/// listeners run once each in order (`once`, `signal` and `onabort` too), a
/// throwing listener does not stop the others, the static signals work and
/// private state cannot be reached.
#[test]
fn abort_controller_and_event_target_work_as_in_node() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"export const run = async () => {
  const seen = [];
  const c = new AbortController();
  c.signal.onabort = () => seen.push('onabort');
  c.signal.addEventListener('abort', (e) => seen.push(['listener', e.type, e.target === c.signal]));
  c.signal.addEventListener('abort', () => seen.push('once'), { once: true });
  c.abort();
  c.abort('again');
  const reason = [c.signal.aborted, c.signal.reason.name, c.signal.reason instanceof DOMException];
  let thrown = null;
  try { c.signal.throwIfAborted(); } catch (e) { thrown = e.name; }
  const timed = AbortSignal.timeout(5);
  await new Promise((r) => timed.addEventListener('abort', r));
  const any = AbortSignal.any([new AbortController().signal, AbortSignal.abort('x')]);
  const t = new EventTarget();
  const unsubscribe = new AbortController();
  let count = 0;
  t.addEventListener('ping', () => count++, { signal: unsubscribe.signal });
  t.dispatchEvent(new Event('ping'));
  unsubscribe.abort();
  t.dispatchEvent(new Event('ping'));
  let illegal = null;
  try { new AbortSignal(); } catch (e) { illegal = e.name; }
  return { seen, reason, thrown, timed: timed.reason.name, any: any.reason, count, illegal,
           hidden: [typeof AbortSignal.signalAbort, typeof Event.dispatching] };
};
"#,
        )
        .load();
    let (outcome, host) = invoke_with(p, "src/index.js", "run", "{}", limits());
    assert_eq!(
        ok(outcome),
        serde_json::json!({
            "seen": ["onabort", ["listener", "abort", true], "once"],
            "reason": [true, "AbortError", true],
            "thrown": "AbortError",
            "timed": "TimeoutError",
            "any": "x",
            "count": 1,
            "illegal": "TypeError",
            "hidden": ["undefined", "undefined"],
        })
    );
    assert!(host.logs.is_empty(), "{:?}", host.logs);
}

/// An exception nothing can catch (thrown by a queueMicrotask or
/// process.nextTick callback, or by an event listener) ends the invocation
/// with FUNCTION_ERROR naming where it came from, as a timer callback's
/// does and as Node ends the process; the engine dropped it silently.
#[test]
fn uncaught_exceptions_in_microtasks_and_listeners_end_the_invocation() {
    let p = App::new()
        .esm(
            "src/index.js",
            r#"export const microtask = async () => { queueMicrotask(() => { throw new TypeError('in a microtask'); }); await null; return 'unreached'; };
export const tick = () => { process.nextTick(() => { throw new RangeError('in a tick'); }); return 'returned first'; };
export const listener = () => {
  const c = new AbortController();
  const ran = [];
  c.signal.addEventListener('abort', () => { throw new Error('listener failed'); });
  c.signal.addEventListener('abort', () => ran.push('second'));
  c.abort();
  return ran;
};
export const fine = () => new Promise((resolve) => queueMicrotask(() => resolve('ordered')));
export const notFunction = () => { try { queueMicrotask(1); } catch (e) { return e.name; } };
"#,
        )
        .load();
    let e = err(invoke(p, "src/index.js", "microtask"));
    assert_eq!(e.code, ErrorCode::FunctionError);
    assert!(
        e.message.starts_with("uncaught exception in a queueMicrotask callback: TypeError: in a microtask"),
        "{}",
        e.message
    );
    let e = err(invoke(p, "src/index.js", "tick"));
    assert!(
        e.message.starts_with("uncaught exception in a queueMicrotask callback: RangeError: in a tick"),
        "{}",
        e.message
    );
    let e = err(invoke(p, "src/index.js", "listener"));
    assert!(
        e.message.starts_with("uncaught exception in an 'abort' event listener: Error: listener failed"),
        "{}",
        e.message
    );
    assert_eq!(ok(invoke(p, "src/index.js", "fine")), serde_json::json!("ordered"));
    assert_eq!(ok(invoke(p, "src/index.js", "notFunction")), serde_json::json!("TypeError"));
}
