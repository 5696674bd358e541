//! `@forge/api` egress and product requests, against a fake host that
//! records every host call and answers it: Forge's `route` rules, the exact
//! host-call arguments of `fetch`, `requestJira` and `requestConfluence`, the
//! Response object, and how each refusal code becomes Forge's error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use base64::Engine;
use common::{FakeHost, Responder, index_importing, ok, run_index};
use kiln_ipc::HostReply;
use serde_json::{Value, json};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A 200 reply whose JSON body is the request's own arguments.
fn echo(capability: &str, args: &Value) -> HostReply {
    let url = match capability {
        "fetch" => args["url"].as_str().unwrap_or_default().to_owned(),
        _ => format!("https://site.example.net{}", args["path"].as_str().unwrap_or_default()),
    };
    HostReply::Ok {
        value: json!({
            "status": 200,
            "statusText": "OK",
            "headers": [["Content-Type", "application/json"]],
            "body": b64(args.to_string().as_bytes()),
            "url": url,
        }),
    }
}

/// Load `code` as the app's only module (importing @forge/api), call its
/// `run` export with `payload`, expect success, and return its result and the
/// host calls made.
fn run_ok(code: &str, payload: Value, respond: Responder) -> (Value, Vec<(String, Value)>) {
    let program = index_importing(code, &["@forge/api"]);
    let (outcome, host) = run_index(program, "run", &payload, &json!({}), FakeHost::answering(respond));
    (ok(outcome), host.calls)
}

const PATH_MANIPULATION: &str = "Error: Disallowing path manipulation attempt. For more information see: https://go.atlassian.com/product-fetch-api-route";

const ROUTE_REQUIRED: &str = "Error: You must create your route using the 'route' export from '@forge/api'.\nSee https://go.atlassian.com/forge-fetch-route for more information.";

#[test]
fn route_refuses_path_values_that_could_leave_the_endpoint() {
    let bad = [
        "a/b", "/", "a\\b", "\\", "a?b", "?", "a#b", "#", "..", "a..b", "../admin", ".%2e", "%2e.", "%2e%2e",
        ".%2E", "%2E.", "%2E%2e", // Forge's list misses these two; Kiln refuses them too.
        "%2e%2E", "%2E%2E", "x%2E%2Ey",
    ];
    let good = ["PROJ-1", "a.b", ".", "%2e", "%2F", "a%5Cb", "%3F", "%23", "x y", "ä"];
    let code = r#"import { route } from '@forge/api';
const attempt = (v) => { try { return route`/rest/api/3/issue/${v}/comment`.value; } catch (e) { return `${e.name}: ${e.message}`; } };
export const run = ({ bad, good }) => ({ bad: bad.map(attempt), good: good.map(attempt), number: attempt(42) });"#;
    let (v, calls) = run_ok(code, json!({ "bad": bad, "good": good }), Box::new(echo));
    assert!(calls.is_empty());
    for (value, result) in bad.iter().zip(v["bad"].as_array().unwrap()) {
        assert_eq!(result, PATH_MANIPULATION, "path value {value:?}");
    }
    let expected: Vec<String> = good.iter().map(|g| format!("/rest/api/3/issue/{g}/comment")).collect();
    assert_eq!(v["good"], json!(expected));
    assert_eq!(v["number"], "/rest/api/3/issue/42/comment");
}

#[test]
fn route_encodes_query_values_and_interpolates_params_and_nested_routes() {
    let code = r#"import { route } from '@forge/api';
export const run = () => ({
  query: route`/rest/api/3/search?jql=${'project = "A&B"'}&maxResults=${50}`.value,
  slashInQuery: route`/rest/api/3/search?next=${'/a/../b?c#d'}`.value,
  afterHash: route`/wiki/x#${'a/b'}`.value,
  params: route`/rest/api/3/search?${new URLSearchParams({ jql: 'a b', fields: 'x,y' })}`.value,
  paramsInPath: route`/rest/api/3/${new URLSearchParams({ a: 'b' })}`.value,
  nestedInPath: route`/rest/api/3/${route`issue/${'K-1'}`}/comment`.value,
  nestedInQuery: route`/rest/api/3/search?back=${route`/a/b`}`.value,
  noValues: route`/rest/api/3/myself`.value,
  unicode: route`/rest/api/3/search?q=${'é €'}`.value,
});"#;
    let (v, _) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(
        v,
        json!({
            "query": "/rest/api/3/search?jql=project%20%3D%20%22A%26B%22&maxResults=50",
            "slashInQuery": "/rest/api/3/search?next=%2Fa%2F..%2Fb%3Fc%23d",
            "afterHash": "/wiki/x#a%2Fb",
            "params": "/rest/api/3/search?jql=a+b&fields=x%2Cy",
            "paramsInPath": "/rest/api/3/a=b",
            "nestedInPath": "/rest/api/3/issue/K-1/comment",
            "nestedInQuery": "/rest/api/3/search?back=%2Fa%2Fb",
            "noValues": "/rest/api/3/myself",
            "unicode": "/rest/api/3/search?q=%C3%A9%20%E2%82%AC",
        })
    );
}

#[test]
fn routes_have_forges_shape_and_cannot_be_modified() {
    let code = r#"import { route, assumeTrustedRoute, routeFromAbsolute } from '@forge/api';
export const run = () => {
  const r = route`/rest/api/3/issue/${'K-1'}`;
  let modified;
  try { r.value = '/admin'; modified = 'allowed'; } catch (e) { modified = e.message; }
  return {
    json: JSON.stringify(r),
    keys: Object.keys(r),
    modified,
    after: r.value,
    trusted: assumeTrustedRoute('/a/../b?x=/#y').value,
    absolute: routeFromAbsolute('https://x.atlassian.net/rest/api/3/issue/K-1?expand=names#frag').value,
  };
};"#;
    let (v, _) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(
        v,
        json!({
            "json": "{\"value_\":\"/rest/api/3/issue/K-1\"}",
            "keys": ["value_"],
            "modified": "modification of a Route is not allowed",
            "after": "/rest/api/3/issue/K-1",
            "trusted": "/a/../b?x=/#y",
            "absolute": "/rest/api/3/issue/K-1?expand=names",
        })
    );
}

#[test]
fn product_requests_refuse_a_plain_string_at_once_and_send_nothing() {
    let code = r#"import api, { requestJira, requestConfluence } from '@forge/api';
const attempt = (f) => { try { f(); return 'no throw'; } catch (e) { return `${e.name}: ${e.message}`; } };
export const run = () => [
  attempt(() => api.asApp().requestJira('/rest/api/3/myself')),
  attempt(() => api.asApp().requestConfluence('/wiki/rest/api/space')),
  attempt(() => api.asUser().requestJira('/rest/api/3/myself')),
  attempt(() => api.asUser('acc-1').requestConfluence('/wiki/rest/api/space')),
  attempt(() => api.asApp().requestJira({ value: '/rest/api/3/myself', value_: '/rest/api/3/myself' })),
  attempt(() => requestJira('/rest/api/3/myself')),
  attempt(() => requestConfluence('/wiki/rest/api/space')),
];"#;
    let (v, calls) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(v, json!(vec![ROUTE_REQUIRED; 7]));
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn fetch_sends_the_documented_host_call_arguments() {
    let code = r#"import api, { fetch, route, Headers } from '@forge/api';
export const run = async () => {
  await fetch('https://api.example.com/v1/items?q=1#frag', {
    method: 'post', headers: { 'X-Trace': '  abc\t', 'Content-Type': 'application/json' }, body: JSON.stringify({ a: 1 }),
  });
  await api.fetch('https://api.example.com/plain');
  await globalThis.fetch('https://api.example.com/text', { method: 'PUT', body: 'héllo' });
  await fetch('https://api.example.com/form', { method: 'POST', body: new URLSearchParams({ a: '1 2', b: 'é' }) });
  await fetch('https://api.example.com/bytes', { method: 'POST', body: new Uint8Array([0, 1, 254, 255]) });
  await fetch('https://api.example.com/buffer', { method: 'patch', body: new Uint8Array([9, 8, 7, 6]).subarray(1, 3).buffer });
  await fetch('https://api.example.com/view', { method: 'POST', body: new Uint8Array([9, 8, 7, 6]).subarray(1, 3) });
  await fetch('https://api.example.com/pairs', { headers: [['Accept', 'a'], ['accept', 'b']] });
  const h = new Headers({ 'X-One': '1' });
  h.append('x-two', '2');
  await fetch('https://api.example.com/headers', { headers: h, method: 'delete' });
  await fetch(route`https://api.example.com/route/${'id'}`);
  await fetch(new URL('https://API.example.com:443/./a/../b'));
  return 'done';
};"#;
    let (v, calls) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(v, "done");
    let args: Vec<Value> = calls
        .iter()
        .map(|(capability, args)| {
            assert_eq!(capability, "fetch");
            args.clone()
        })
        .collect();
    let text = "text/plain;charset=UTF-8";
    assert_eq!(
        args,
        vec![
            json!({"url": "https://api.example.com/v1/items?q=1", "method": "POST",
                   "headers": [["x-trace", "abc"], ["content-type", "application/json"]], "body": b64(b"{\"a\":1}")}),
            json!({"url": "https://api.example.com/plain", "method": "GET", "headers": [], "body": null}),
            json!({"url": "https://api.example.com/text", "method": "PUT",
                   "headers": [["content-type", text]], "body": b64("héllo".as_bytes())}),
            json!({"url": "https://api.example.com/form", "method": "POST",
                   "headers": [["content-type", "application/x-www-form-urlencoded;charset=UTF-8"]],
                   "body": b64(b"a=1+2&b=%C3%A9")}),
            json!({"url": "https://api.example.com/bytes", "method": "POST", "headers": [], "body": b64(&[0, 1, 254, 255])}),
            json!({"url": "https://api.example.com/buffer", "method": "PATCH", "headers": [], "body": b64(&[9, 8, 7, 6])}),
            json!({"url": "https://api.example.com/view", "method": "POST", "headers": [], "body": b64(&[8, 7])}),
            json!({"url": "https://api.example.com/pairs", "method": "GET", "headers": [["accept", "a"], ["accept", "b"]], "body": null}),
            json!({"url": "https://api.example.com/headers", "method": "DELETE", "headers": [["x-one", "1"], ["x-two", "2"]], "body": null}),
            json!({"url": "https://api.example.com/route/id", "method": "GET", "headers": [], "body": null}),
            json!({"url": "https://api.example.com/b", "method": "GET", "headers": [], "body": null}),
        ]
    );
}

#[test]
fn requests_fetch_would_refuse_fail_before_any_host_call() {
    let code = r#"import { fetch, asApp, route } from '@forge/api';
const attempt = async (f) => { try { await f(); return 'sent'; } catch (e) { return `${e.name}: ${e.message}`; } };
export const run = async () => [
  await attempt(() => fetch('/relative')),
  await attempt(() => fetch('ftp://files.example.com/x')),
  await attempt(() => fetch('https://user:pw@api.example.com/')),
  await attempt(() => fetch('https://api.example.com/', { body: 'x' })),
  await attempt(() => fetch('https://api.example.com/', { method: 'HEAD', body: 'x' })),
  await attempt(() => fetch('https://api.example.com/', { method: 'CONNECT' })),
  await attempt(() => fetch('https://api.example.com/', { method: 'GE T' })),
  await attempt(() => fetch('https://api.example.com/', { headers: { 'X-A': 'a\r\nX-B: b' } })),
  await attempt(() => fetch('https://api.example.com/', { headers: { 'Bad Name': 'x' } })),
  await attempt(() => fetch('https://api.example.com/', { headers: [['only-name']] })),
  await attempt(() => asApp().requestJira(route`rest/api/3/myself`)),
  await attempt(() => asApp().requestJira(route`/rest/api/3/myself`, { body: '{}' })),
];"#;
    let (v, calls) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(
        v,
        json!([
            "TypeError: Failed to parse URL from /relative",
            "TypeError: fetch supports only http: and https: URLs, not ftp: (in ftp://files.example.com/x)",
            "TypeError: Request cannot be constructed from a URL that includes credentials: https://user:pw@api.example.com/",
            "TypeError: Request with GET/HEAD method cannot have body.",
            "TypeError: Request with GET/HEAD method cannot have body.",
            "TypeError: 'CONNECT' HTTP method is unsupported.",
            "TypeError: 'GE T' is not a valid HTTP method.",
            "TypeError: Headers: the value of 'x-a' is not a valid HTTP header value.",
            "TypeError: Headers: 'Bad Name' is not a valid HTTP header name.",
            "TypeError: Headers: each header must be a [name, value] pair",
            "Error: A product request path must start with '/': got 'rest/api/3/myself'. Write it as route`/rest/...`.",
            "TypeError: Request with GET/HEAD method cannot have body.",
        ])
    );
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn product_requests_send_the_documented_host_call_arguments() {
    let code = r#"import api, { route, asApp, asUser, requestConfluence } from '@forge/api';
export const run = async () => {
  const first = await asApp().requestJira(route`/rest/api/3/issue/${'K-1'}`, {
    method: 'put', headers: { Accept: 'application/json', 'Content-Type': 'application/json' }, body: '{"fields":{}}',
  });
  await api.asApp().requestConfluence(route`/wiki/rest/api/content?spaceKey=${'A B'}`);
  await asUser().requestJira(route`/rest/api/3/myself`);
  await asUser().requestConfluence(route`/wiki/rest/api/user/current`, { method: 'POST', body: 'x' });
  await asUser('5b10ac8d82e05b22cc7d4ef5').requestJira(route`/rest/api/3/myself`);
  await api.asUser('acc-2').requestConfluence(route`/wiki/rest/api/space`);
  await api.requestJira(route`/rest/api/3/serverInfo`);
  await requestConfluence(route`/wiki/rest/api/space/${'DOCS'}`, { method: 'DELETE' });
  return { url: first.url, echoed: (await first.json()).path };
};"#;
    let (v, calls) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(
        v,
        json!({"url": "https://site.example.net/rest/api/3/issue/K-1", "echoed": "/rest/api/3/issue/K-1"})
    );
    let expected = vec![
        json!({"product": "jira", "as": "app", "accountId": null, "path": "/rest/api/3/issue/K-1", "method": "PUT",
               "headers": [["accept", "application/json"], ["content-type", "application/json"]],
               "body": b64(b"{\"fields\":{}}")}),
        json!({"product": "confluence", "as": "app", "accountId": null, "path": "/wiki/rest/api/content?spaceKey=A%20B",
               "method": "GET", "headers": [], "body": null}),
        json!({"product": "jira", "as": "user", "accountId": null, "path": "/rest/api/3/myself", "method": "GET",
               "headers": [], "body": null}),
        json!({"product": "confluence", "as": "user", "accountId": null, "path": "/wiki/rest/api/user/current",
               "method": "POST", "headers": [["content-type", "text/plain;charset=UTF-8"]], "body": b64(b"x")}),
        json!({"product": "jira", "as": "user", "accountId": "5b10ac8d82e05b22cc7d4ef5", "path": "/rest/api/3/myself",
               "method": "GET", "headers": [], "body": null}),
        json!({"product": "confluence", "as": "user", "accountId": "acc-2", "path": "/wiki/rest/api/space",
               "method": "GET", "headers": [], "body": null}),
        // The top-level functions act for nobody, as in Forge.
        json!({"product": "jira", "as": "none", "accountId": null, "path": "/rest/api/3/serverInfo",
               "method": "GET", "headers": [], "body": null}),
        json!({"product": "confluence", "as": "none", "accountId": null, "path": "/wiki/rest/api/space/DOCS",
               "method": "DELETE", "headers": [], "body": null}),
    ];
    assert_eq!(calls.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>(), vec!["product.request"; 8]);
    assert_eq!(calls.into_iter().map(|(_, a)| a).collect::<Vec<_>>(), expected);
}

fn reply_with(status: u16, status_text: &str, headers: Value, body: &[u8]) -> Responder {
    let value = json!({
        "status": status,
        "statusText": status_text,
        "headers": headers,
        "body": b64(body),
        "url": "https://api.example.com/final",
    });
    Box::new(move |_, _| HostReply::Ok { value: value.clone() })
}

#[test]
fn the_response_reads_like_fetch() {
    let code = r#"import { fetch } from '@forge/api';
export const run = async () => {
  const r = await fetch('https://api.example.com/start');
  const seen = [];
  r.headers.forEach((value, name) => seen.push(`${name}=${value}`));
  const before = r.bodyUsed;
  const clone = r.clone();
  const body = await r.json();
  let again;
  try { await r.text(); again = 'read twice'; } catch (e) { again = `${e.name}: ${e.message}`; }
  let cloneAfter;
  try { r.clone(); cloneAfter = 'cloned'; } catch (e) { cloneAfter = `${e.name}: ${e.message}`; }
  return {
    ok: r.ok, status: r.status, statusText: r.statusText, url: r.url, redirected: r.redirected, type: r.type,
    contentType: r.headers.get('CONTENT-TYPE'), multi: r.headers.get('X-Multi'), missing: r.headers.get('x-none'),
    has: r.headers.has('Set-Cookie'), hasNot: r.headers.has('x-none'), cookies: r.headers.getSetCookie(),
    entries: [...r.headers], keys: [...r.headers.keys()], values: [...r.headers.values()],
    viaEntries: [...r.headers.entries()].length, seen,
    before, body, after: r.bodyUsed, again, cloneAfter, cloneText: await clone.text(),
  };
};"#;
    let headers = json!([
        ["Content-Type", "application/json"],
        ["Set-Cookie", "a=1"],
        ["X-Multi", "1"],
        ["set-cookie", "b=2, c"],
        ["x-multi", "2"]
    ]);
    let (v, _) = run_ok(code, json!({}), reply_with(201, "Created", headers, br#"{"ok":true,"n":[1,2]}"#));
    assert_eq!(
        v,
        json!({
            "ok": true, "status": 201, "statusText": "Created", "url": "https://api.example.com/final",
            "redirected": true, "type": "basic",
            "contentType": "application/json", "multi": "1, 2", "missing": null,
            "has": true, "hasNot": false, "cookies": ["a=1", "b=2, c"],
            "entries": [["content-type", "application/json"], ["set-cookie", "a=1"], ["set-cookie", "b=2, c"], ["x-multi", "1, 2"]],
            "keys": ["content-type", "set-cookie", "set-cookie", "x-multi"],
            "values": ["application/json", "a=1", "b=2, c", "1, 2"],
            "viaEntries": 4,
            "seen": ["content-type=application/json", "set-cookie=a=1", "set-cookie=b=2, c", "x-multi=1, 2"],
            "before": false, "body": {"ok": true, "n": [1, 2]}, "after": true,
            "again": "TypeError: Body is unusable: Body has already been read",
            "cloneAfter": "TypeError: Response.clone: Body has already been consumed.",
            "cloneText": "{\"ok\":true,\"n\":[1,2]}",
        })
    );
}

#[test]
fn binary_bodies_and_text_survive_the_host_call() {
    let code = r#"import { fetch } from '@forge/api';
export const run = async () => {
  const bytes = new Uint8Array(await (await fetch('https://api.example.com/a')).arrayBuffer());
  const text = await (await fetch('https://api.example.com/b')).text();
  return { bytes: [...bytes], text };
};"#;
    let body: Vec<u8> = vec![0xef, 0xbb, 0xbf, b'h', 0xc3, 0xa9, 0x00, 0xff];
    let (v, _) = run_ok(code, json!({}), reply_with(200, "OK", json!([]), &body));
    // text() strips the byte-order mark and replaces the invalid byte.
    assert_eq!(v, json!({"bytes": [0xef, 0xbb, 0xbf, 104, 0xc3, 0xa9, 0, 0xff], "text": "hé\u{0}\u{fffd}"}));
}

#[test]
fn the_fetch_rate_limit_is_a_429_response_not_an_error() {
    let code = r#"import { fetch } from '@forge/api';
export const run = async () => { const r = await fetch('https://api.example.com/'); return { ok: r.ok, status: r.status, body: await r.json() }; };"#;
    let body = br#"{"code":"FETCH_LIMIT_EXCEEDED","message":"too many requests"}"#;
    let (v, _) = run_ok(code, json!({}), reply_with(429, "Too Many Requests", json!([]), body));
    assert_eq!(
        v,
        json!({"ok": false, "status": 429, "body": {"code": "FETCH_LIMIT_EXCEEDED", "message": "too many requests"}})
    );
}

/// Refuses every call whose URL or path ends in `/<code>` with that code.
fn refuse_by_code(capability: &str, args: &Value) -> HostReply {
    let target = if capability == "fetch" { &args["url"] } else { &args["path"] };
    let code = target.as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
    if code == "empty" {
        return HostReply::Err { code: "ExternalEndpointNotAllowedError".into(), message: String::new() };
    }
    HostReply::Err { message: format!("refused: {code}"), code }
}

const DESCRIBE: &str = r#"const describe = (e) => ({
  name: e.name, message: e.message, status: e.status ?? null, code: e.code ?? null, errorCode: e.errorCode ?? null,
  serviceKey: e.serviceKey ?? null, cls: Object.keys(classes).find((k) => e instanceof classes[k]) ?? null,
});
const attempt = async (f) => { try { await f(); return 'no error'; } catch (e) { return describe(e); } };"#;

#[test]
fn fetch_refusals_become_forges_errors() {
    let code = format!(
        r#"import * as forge from '@forge/api';
const classes = {{ ExternalEndpointNotAllowedError: forge.ExternalEndpointNotAllowedError, ProxyRequestError: forge.ProxyRequestError }};
{DESCRIBE}
export const run = async () => [
  await attempt(() => forge.fetch('https://api.example.com/ExternalEndpointNotAllowedError')),
  await attempt(() => fetch('https://api.example.com/ExternalEndpointNotAllowedError')),
  await attempt(() => forge.fetch('https://api.example.com/empty')),
  await attempt(() => forge.fetch('https://api.example.com/ProxyRequestError')),
  await attempt(() => forge.fetch('https://api.example.com/EgressUnavailable')),
  await attempt(() => forge.fetch('https://api.example.com/ProductEndpointNotAllowedError')),
];"#
    );
    let (v, _) = run_ok(&code, json!({}), Box::new(refuse_by_code));
    let egress = |message: &str| {
        json!({"name": "REQUEST_EGRESS_ALLOWLIST_ERR", "message": message, "status": 403, "code": null,
               "errorCode": null, "serviceKey": null, "cls": "ExternalEndpointNotAllowedError"})
    };
    let plain = |code: &str| {
        json!({"name": "Error", "message": format!("refused: {code}"), "status": null, "code": code,
               "errorCode": null, "serviceKey": null, "cls": null})
    };
    assert_eq!(
        v,
        json!([
            egress("refused: ExternalEndpointNotAllowedError"),
            egress("refused: ExternalEndpointNotAllowedError"),
            egress("URL not included in the external fetch backend permissions: https://api.example.com/empty. Visit go.atlassian.com/forge-egress for more information."),
            {"name": "PROXY_ERR", "message": "refused: ProxyRequestError", "status": 502, "code": null,
             "errorCode": "PROXY_ERR", "serviceKey": null, "cls": "ProxyRequestError"},
            plain("EgressUnavailable"),
            plain("ProductEndpointNotAllowedError"),
        ])
    );
}

#[test]
fn product_refusals_become_forges_errors() {
    let code = format!(
        r#"import * as forge from '@forge/api';
const {{ route, asApp, asUser }} = forge;
const classes = {{
  ProductEndpointNotAllowedError: forge.ProductEndpointNotAllowedError, NeedsAuthenticationError: forge.NeedsAuthenticationError,
  RequestProductNotAllowedError: forge.RequestProductNotAllowedError, ProxyRequestError: forge.ProxyRequestError,
}};
{DESCRIBE}
export const run = async () => [
  await attempt(() => asApp().requestJira(route`/rest/api/3/ProductEndpointNotAllowedError`)),
  await attempt(() => asUser().requestJira(route`/rest/api/3/NeedsAuthenticationError`)),
  await attempt(() => asApp().requestConfluence(route`/wiki/RequestProductNotAllowedError`)),
  await attempt(() => asUser('a').requestConfluence(route`/wiki/ProxyRequestError`)),
  await attempt(() => asApp().requestJira(route`/rest/api/3/SomethingElse`)),
];"#
    );
    let (v, _) = run_ok(&code, json!({}), Box::new(refuse_by_code));
    let forge = |name: &str, message: &str, status: u16, cls: &str| {
        json!({"name": name, "message": message, "status": status, "code": null, "errorCode": null,
               "serviceKey": null, "cls": cls})
    };
    let mut needs_auth = forge(
        "NEEDS_AUTHENTICATION_ERR",
        "refused: NeedsAuthenticationError",
        401,
        "NeedsAuthenticationError",
    );
    needs_auth["serviceKey"] = json!("atlassian-token-service-key");
    let mut proxy = forge("PROXY_ERR", "refused: ProxyRequestError", 502, "ProxyRequestError");
    proxy["errorCode"] = json!("PROXY_ERR");
    assert_eq!(
        v,
        json!([
            forge("REQUEST_EGRESS_ALLOWLIST_ERR", "refused: ProductEndpointNotAllowedError", 403, "ProductEndpointNotAllowedError"),
            needs_auth,
            forge("REQUEST_EGRESS_ALLOWLIST_ERR", "refused: RequestProductNotAllowedError", 403, "RequestProductNotAllowedError"),
            proxy,
            {"name": "Error", "message": "refused: SomethingElse", "status": null, "code": "SomethingElse",
             "errorCode": null, "serviceKey": null, "cls": null},
        ])
    );
}

#[test]
fn a_forge_proxy_error_header_on_a_product_response_throws() {
    let code = format!(
        r#"import * as forge from '@forge/api';
const classes = {{ NeedsAuthenticationError: forge.NeedsAuthenticationError, ProxyRequestError: forge.ProxyRequestError }};
{DESCRIBE}
export const run = async () => [
  await attempt(() => forge.asUser().requestJira(forge.route`/rest/api/3/NEEDS_AUTHENTICATION_ERR`)),
  await attempt(() => forge.asApp().requestJira(forge.route`/rest/api/3/UPSTREAM_TIMEOUT`)),
];"#
    );
    let respond: Responder = Box::new(|_, args| {
        let reason =
            args["path"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
        HostReply::Ok {
            value: json!({"status": 504, "statusText": "", "headers": [["Forge-Proxy-Error", reason]], "body": "", "url": "https://site.example.net/"}),
        }
    });
    let (v, _) = run_ok(&code, json!({}), respond);
    assert_eq!(
        v,
        json!([
            {"name": "NEEDS_AUTHENTICATION_ERR", "message": "Authentication Required", "status": 401, "code": null,
             "errorCode": null, "serviceKey": "atlassian-token-service-key", "cls": "NeedsAuthenticationError"},
            {"name": "PROXY_ERR", "message": "Forge platform failed to process runtime HTTP request - 504 - UPSTREAM_TIMEOUT",
             "status": 504, "code": null, "errorCode": "UPSTREAM_TIMEOUT", "serviceKey": null, "cls": "ProxyRequestError"},
        ])
    );
}

#[test]
fn forge_error_constructors_keep_forges_messages_and_names() {
    let code = r#"import * as forge from '@forge/api';
const show = (e) => [e.name, e.message, e.status ?? null, e instanceof forge.HttpError, e instanceof Error];
export const run = () => ({
  external: show(new forge.ExternalEndpointNotAllowedError('https://evil.example/')),
  product: show(new forge.ProductEndpointNotAllowedError('/rest/admin')),
  requestProduct: show(new forge.RequestProductNotAllowedError('confluence', 'jira')),
  workspace: show(new forge.InvalidWorkspaceRequestedError('/x')),
  needsAuth: show(new forge.NeedsAuthenticationError('Authentication Required', 'svc', { isExpectedError: true })),
  proxy: show(new forge.ProxyRequestError(500, 'BOOM')),
  fetchError: show(new forge.FetchError('socket hang up')),
  expected: forge.isExpectedError(new forge.NeedsAuthenticationError('x', 'svc', { isExpectedError: true })),
  platform: forge.isForgePlatformError(new forge.ProxyRequestError(500, 'BOOM')),
  hosted: [forge.isHostedCodeError(forge.FUNCTION_ERR), forge.isHostedCodeError(new Error('x'))],
  notAllowed: new forge.ExternalEndpointNotAllowedError('u') instanceof forge.NotAllowedError,
});"#;
    let (v, _) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(
        v,
        json!({
            "external": ["REQUEST_EGRESS_ALLOWLIST_ERR", "URL not included in the external fetch backend permissions: https://evil.example/. Visit go.atlassian.com/forge-egress for more information.", 403, true, true],
            "product": ["REQUEST_EGRESS_ALLOWLIST_ERR", "URL not allowed: /rest/admin.", 403, true, true],
            "requestProduct": ["REQUEST_EGRESS_ALLOWLIST_ERR", "Request confluence is not allowed from jira context.", 403, true, true],
            "workspace": ["REQUEST_EGRESS_ALLOWLIST_ERR", "Invalid workspace requested in URL: /x.", 403, true, true],
            "needsAuth": ["NEEDS_AUTHENTICATION_ERR", "Authentication Required", 401, true, true],
            "proxy": ["PROXY_ERR", "Forge platform failed to process runtime HTTP request - 500 - BOOM", 500, true, true],
            "fetchError": ["FUNCTION_FETCH_ERR", "socket hang up", null, false, true],
            "expected": true,
            "platform": true,
            "hosted": [true, false],
            "notAllowed": true,
        })
    );
}

#[test]
fn headers_and_response_globals_work_without_forge() {
    let code = r#"export const run = async () => {
  const h = new Headers([['Accept', 'a']]);
  h.append('accept', 'b');
  h.set('X-Y', 'z');
  h.set('ACCEPT', 'c');
  const copy = new Headers(h);
  copy.delete('x-y');
  const r = new Response('hé', { status: 202, statusText: 'Accepted', headers: { 'X-A': '1' } });
  const j = Response.json({ a: 1 }, { status: 200 });
  const empty = new Response(null, { status: 204 });
  let badStatus;
  try { new Response('', { status: 600 }); } catch (e) { badStatus = e.name; }
  return {
    h: [...h], copy: [...copy], tag: Object.prototype.toString.call(h),
    r: [r.status, r.statusText, r.ok, r.headers.get('content-type'), r.url, await r.text(), r.bodyUsed],
    j: [j.headers.get('content-type'), await j.json()],
    empty: [await empty.text(), empty.bodyUsed, await empty.text()],
    badStatus, fetchType: typeof fetch,
  };
};"#;
    let (v, _) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(
        v,
        json!({
            "h": [["accept", "c"], ["x-y", "z"]],
            "copy": [["accept", "c"]],
            "tag": "[object Headers]",
            "r": [202, "Accepted", true, "text/plain;charset=UTF-8", "", "hé", true],
            "j": ["application/json", {"a": 1}],
            "empty": ["", false, ""],
            "badStatus": "RangeError",
            "fetchType": "function",
        })
    );
}

#[test]
fn a_malformed_reply_is_reported_as_a_kiln_bug() {
    let code = r#"import { fetch } from '@forge/api';
export const run = async () => { try { await fetch('https://api.example.com/'); return 'parsed'; } catch (e) { return `${e.name}: ${e.message}`; } };"#;
    let respond: Responder =
        Box::new(|_, _| HostReply::Ok { value: json!({"status": "200", "headers": [], "body": ""}) });
    let (v, _) = run_ok(code, json!({}), respond);
    assert_eq!(
        v,
        "TypeError: Kiln's server sent a malformed reply to a request (status 200); this is a bug in Kiln, not in the app"
    );
}

/// fetch takes an AbortSignal: one already aborted sends nothing, and an
/// abort while the request is out rejects at once with the signal's reason
/// (the reply that comes later is dropped, and nothing is left unhandled).
#[test]
fn fetch_is_aborted_by_its_signal() {
    let code = r#"import { fetch } from '@forge/api';
export const run = async () => {
  const name = async (p) => { try { await p; return 'resolved'; } catch (e) { return [e.name, e.message]; } };
  const before = await name(fetch('https://api.example.com/never', { signal: AbortSignal.abort() }));
  const controller = new AbortController();
  const inFlight = fetch('https://api.example.com/aborted', { signal: controller.signal });
  controller.abort(new Error('changed my mind'));
  const during = await name(inFlight);
  const kept = await (await fetch('https://api.example.com/kept', { signal: new AbortController().signal })).json();
  return { before, during, kept: kept.url };
};"#;
    let (result, calls) = run_ok(code, json!({}), Box::new(echo));
    assert_eq!(
        result,
        json!({
            "before": ["AbortError", "This operation was aborted"],
            "during": ["Error", "changed my mind"],
            "kept": "https://api.example.com/kept",
        })
    );
    let urls: Vec<&str> = calls.iter().map(|(_, args)| args["url"].as_str().unwrap_or_default()).collect();
    assert_eq!(urls, ["https://api.example.com/aborted", "https://api.example.com/kept"]);
}
