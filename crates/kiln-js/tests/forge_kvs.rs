//! `@forge/kvs` and the legacy `storage` API of `@forge/api`, against a fake
//! host that records every host call and answers it: the exact `kvs.*`
//! arguments of each method and option, Forge's result shapes, each refusal
//! code as Forge's error, the query builders, and what Kiln does not support
//! failing loudly before anything is sent.

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

/// Load `code` as the app's only module (importing @forge/kvs and
/// @forge/api), call its `run` export, and return its result and the host
/// calls it made.
fn run_ok(code: &str, respond: Responder) -> (Value, Vec<(String, Value)>) {
    let program = index_importing(code, &["@forge/kvs", "@forge/api"]);
    let (outcome, host) = run_index(program, "run", &json!({}), &json!({}), FakeHost::answering(respond));
    (ok(outcome), host.calls)
}

/// The reply an empty store gives each capability.
fn empty(capability: &str, _args: &Value) -> HostReply {
    let value = match capability {
        "kvs.query" => json!({"results": [], "nextCursor": null}),
        "kvs.batchGet" => json!({"succeeded": [], "failed": [], "missing": []}),
        "kvs.batchSet" | "kvs.batchDelete" => json!({"succeeded": [], "failed": []}),
        _ => Value::Null,
    };
    HostReply::Ok { value }
}

/// 2027-01-13T08:00:00.250Z, as the host sends times.
const CREATED_MS: i64 = 1_799_827_200_250;
const UPDATED_MS: i64 = CREATED_MS + 60_000;
const EXPIRES_MS: i64 = CREATED_MS + 3_600_000;

fn entry(key: &str, value: Value, expires: bool) -> Value {
    json!({"key": key, "value": value, "createdAt": CREATED_MS, "updatedAt": UPDATED_MS,
           "expireTime": if expires { json!(EXPIRES_MS) } else { Value::Null }})
}

#[test]
fn each_method_and_option_sends_the_documented_host_call() {
    let code = r#"import kvs, { WhereConditions, MetadataField } from '@forge/kvs';
export const run = async () => {
  await kvs.get('a');
  await kvs.get('a', { metadataFields: [MetadataField.CREATED_AT] });
  await kvs.set('a', { n: 1, when: new Date(0), skip: undefined, f() {} });
  await kvs.set('b', 'x', { ttl: { value: 5, unit: 'MINUTES' } });
  await kvs.set('c', 1, { keyPolicy: 'FAIL_IF_EXISTS' });
  await kvs.set('d', true, { keyPolicy: 'OVERRIDE', returnValue: 'PREVIOUS', returnMetadataFields: [MetadataField.UPDATED_AT] });
  await kvs.set('e', [1], { ttl: { value: 1, unit: 'DAYS' }, keyPolicy: 'OVERRIDE', returnValue: 'LATEST' });
  await kvs.delete('a');
  await kvs.query().getMany();
  await kvs.query().where('key', WhereConditions.beginsWith('user:')).cursor('abc').limit(50).getMany();
  await kvs.query({ metadataFields: [MetadataField.EXPIRE_TIME] }).where('key', WhereConditions.beginsWith(42)).getOne();
  await kvs.batchGet([{ key: 'a' }, { key: 'b', options: { metadataFields: [MetadataField.CREATED_AT] } }]);
  await kvs.batchSet([{ key: 'a', value: 1 }, { key: 'b', value: { x: 2 }, options: { ttl: { value: 10, unit: 'SECONDS' } } }]);
  await kvs.batchDelete([{ key: 'a' }, { key: 'b' }]);
  await kvs.getSecret('s');
  await kvs.setSecret('s', { token: 't' });
  await kvs.setSecret('s', 'v', { keyPolicy: 'OVERRIDE' });
  await kvs.deleteSecret('s');
  return 'done';
};"#;
    let (v, calls) = run_ok(code, Box::new(empty));
    assert_eq!(v, "done");
    let expected = vec![
        ("kvs.get", json!({"key": "a"})),
        ("kvs.get", json!({"key": "a"})),
        ("kvs.set", json!({"key": "a", "value": {"n": 1, "when": "1970-01-01T00:00:00.000Z"}})),
        ("kvs.set", json!({"key": "b", "value": "x", "ttl": {"value": 5, "unit": "MINUTES"}})),
        ("kvs.set", json!({"key": "c", "value": 1, "keyPolicy": "FAIL_IF_EXISTS"})),
        ("kvs.set", json!({"key": "d", "value": true, "keyPolicy": "OVERRIDE", "returnValue": "PREVIOUS"})),
        (
            "kvs.set",
            json!({"key": "e", "value": [1], "ttl": {"value": 1, "unit": "DAYS"}, "keyPolicy": "OVERRIDE", "returnValue": "LATEST"}),
        ),
        ("kvs.delete", json!({"key": "a"})),
        ("kvs.query", json!({"prefix": ""})),
        ("kvs.query", json!({"prefix": "user:", "cursor": "abc", "limit": 50})),
        ("kvs.query", json!({"prefix": "42", "limit": 1})),
        ("kvs.batchGet", json!({"keys": ["a", "b"]})),
        (
            "kvs.batchSet",
            json!({"items": [{"key": "a", "value": 1}, {"key": "b", "value": {"x": 2}, "ttl": {"value": 10, "unit": "SECONDS"}}]}),
        ),
        ("kvs.batchDelete", json!({"keys": ["a", "b"]})),
        ("kvs.getSecret", json!({"key": "s"})),
        ("kvs.setSecret", json!({"key": "s", "value": {"token": "t"}})),
        ("kvs.setSecret", json!({"key": "s", "value": "v"})),
        ("kvs.deleteSecret", json!({"key": "s"})),
    ];
    let got: Vec<(&str, Value)> = calls.iter().map(|(c, a)| (c.as_str(), a.clone())).collect();
    assert_eq!(got, expected);
}

/// Answers with entries as the real host would for a few known keys.
fn stocked(capability: &str, args: &Value) -> HostReply {
    let key = args["key"].as_str().unwrap_or_default();
    let value = match (capability, key) {
        ("kvs.get", "missing") | ("kvs.getSecret", "missing") => Value::Null,
        ("kvs.get", _) => entry(key, json!({"name": "Ada"}), key == "ttl"),
        ("kvs.set", _) if args.get("returnValue") == Some(&json!("PREVIOUS")) && key == "new" => Value::Null,
        ("kvs.set", _) if args.get("returnValue").is_some() => entry(key, args["value"].clone(), true),
        ("kvs.set", _) => entry(key, args["value"].clone(), false),
        ("kvs.getSecret", _) => json!("s3cret"),
        ("kvs.query", _) => json!({
            "results": [entry("user:1", json!(1), false), entry("user:2", json!(2), true)],
            "nextCursor": if args.get("cursor").is_some() { Value::Null } else { json!("dXNlcjoy") },
        }),
        ("kvs.batchGet", _) => json!({
            "succeeded": [entry("a", json!("A"), true), entry("c", json!("C"), false)],
            "failed": [{"key": "bad key!", "code": "INVALID_KEY", "message": "keys use letters..."}],
            "missing": ["b"],
        }),
        ("kvs.batchSet", _) => json!({
            "succeeded": ["a"],
            "failed": [{"key": "big", "code": "MAX_SIZE", "message": "values are at most 245760 bytes as JSON"}],
        }),
        ("kvs.batchDelete", _) => json!({"succeeded": ["a", "b"], "failed": []}),
        _ => Value::Null,
    };
    HostReply::Ok { value }
}

#[test]
fn results_have_forges_shapes() {
    let code = r#"import kvs, { WhereConditions, MetadataField as M } from '@forge/kvs';
export const run = async () => {
  const all = [M.CREATED_AT, M.UPDATED_AT, M.EXPIRE_TIME];
  const q = kvs.query().where('key', WhereConditions.beginsWith('user:'));
  const first = await q.getMany();
  const last = await kvs.query({ metadataFields: all }).cursor(first.nextCursor).getMany();
  return {
    plain: await kvs.get('k'),
    missing: (await kvs.get('missing')) === undefined,
    missingWithOptions: (await kvs.get('missing', { metadataFields: all })) === undefined,
    emptyOptions: await kvs.get('k', {}),
    metadata: await kvs.get('ttl', { metadataFields: all }),
    noTtl: Object.entries(await kvs.get('k', { metadataFields: [M.EXPIRE_TIME] })),
    set: (await kvs.set('k', 1)) === undefined,
    setPolicy: (await kvs.set('k', 1, { keyPolicy: 'FAIL_IF_EXISTS' })) === undefined,
    latest: await kvs.set('k', 2, { keyPolicy: 'OVERRIDE', returnValue: 'LATEST', returnMetadataFields: [M.EXPIRE_TIME] }),
    previous: await kvs.set('k', 3, { keyPolicy: 'OVERRIDE', returnValue: 'PREVIOUS' }),
    noPrevious: (await kvs.set('new', 3, { keyPolicy: 'OVERRIDE', returnValue: 'PREVIOUS' })) === undefined,
    deleted: (await kvs.delete('k')) === undefined,
    first, last, lastHasCursorKey: 'nextCursor' in last,
    one: await kvs.query().getOne(),
    batchGet: await kvs.batchGet([{ key: 'a', options: { metadataFields: [M.EXPIRE_TIME] } }, { key: 'b' }, { key: 'bad key!' }, { key: 'c' }]),
    batchSet: await kvs.batchSet([{ key: 'a', value: 1 }, { key: 'big', value: 'x' }]),
    batchDelete: await kvs.batchDelete([{ key: 'a' }, { key: 'b' }]),
    secret: await kvs.getSecret('s'),
    secretWithOptions: await kvs.getSecret('s', {}),
    noSecret: (await kvs.getSecret('missing')) === undefined,
    setSecret: (await kvs.setSecret('s', 'v')) === undefined,
  };
};"#;
    let (v, _) = run_ok(code, Box::new(stocked));
    let created = CREATED_MS / 1000;
    let updated = UPDATED_MS / 1000;
    assert_eq!(
        v,
        json!({
            "plain": {"name": "Ada"},
            "missing": true,
            "missingWithOptions": true,
            "emptyOptions": {"key": "k", "value": {"name": "Ada"}},
            "metadata": {"key": "ttl", "value": {"name": "Ada"}, "createdAt": created, "updatedAt": updated,
                         "expireTime": "2027-01-13T09:00:00Z"},
            // Asked for and unset: present, undefined, as in Forge.
            "noTtl": [["key", "k"], ["value", {"name": "Ada"}], ["expireTime", null]],
            "set": true,
            "setPolicy": true,
            "latest": {"key": "k", "value": 2, "expireTime": "2027-01-13T09:00:00Z"},
            "previous": {"key": "k", "value": 3},
            "noPrevious": true,
            "deleted": true,
            "first": {"results": [{"key": "user:1", "value": 1}, {"key": "user:2", "value": 2}], "nextCursor": "dXNlcjoy"},
            "last": {"results": [
                {"key": "user:1", "value": 1, "createdAt": created, "updatedAt": updated},
                {"key": "user:2", "value": 2, "createdAt": created, "updatedAt": updated, "expireTime": "2027-01-13T09:00:00Z"},
            ]},
            "lastHasCursorKey": true,
            "one": {"key": "user:1", "value": 1},
            "batchGet": {
                "successfulKeys": [{"key": "a", "value": "A", "expireTime": "2027-01-13T09:00:00Z"}, {"key": "c", "value": "C"}],
                "failedKeys": [
                    {"key": "b", "error": {"code": "KEY_NOT_FOUND", "message": "Key does not exist"}},
                    {"key": "bad key!", "error": {"code": "INVALID_KEY", "message": "keys use letters..."}},
                ],
            },
            "batchSet": {
                "successfulKeys": [{"key": "a"}],
                "failedKeys": [{"key": "big", "error": {"code": "MAX_SIZE", "message": "values are at most 245760 bytes as JSON"}}],
            },
            "batchDelete": {"successfulKeys": [{"key": "a"}, {"key": "b"}], "failedKeys": []},
            "secret": "s3cret",
            "secretWithOptions": {"key": "s", "value": "s3cret"},
            "noSecret": true,
            "setSecret": true,
        })
    );
}

#[test]
fn the_query_builder_chains_on_itself_and_get_one_asks_for_one() {
    let code = r#"import kvs, { WhereConditions } from '@forge/kvs';
export const run = async () => {
  const q = kvs.query();
  const same = [q.where('key', WhereConditions.beginsWith('p')) === q, q.cursor('c') === q, q.limit(7) === q];
  await q.getMany();
  const one = await q.getOne();
  await q.getMany();
  const options = { limit: 3 };
  await kvs.query(options).where('key', WhereConditions.beginsWith('x')).getMany();
  return { same, one: one === undefined, options };
};"#;
    let (v, calls) = run_ok(code, Box::new(empty));
    assert_eq!(v, json!({"same": [true, true, true], "one": true, "options": {"limit": 3}}));
    let args: Vec<Value> = calls.into_iter().map(|(_, a)| a).collect();
    assert_eq!(
        args,
        vec![
            json!({"prefix": "p", "cursor": "c", "limit": 7}),
            json!({"prefix": "p", "cursor": "c", "limit": 1}),
            // getOne set the builder's limit, as Forge's does.
            json!({"prefix": "p", "cursor": "c", "limit": 1}),
            json!({"prefix": "x", "limit": 3}),
        ]
    );
}

const CODES: [&str; 15] = [
    "INVALID_KEY",
    "KEY_TOO_LONG",
    "MAX_SIZE",
    "MAX_DEPTH",
    "INVALID_VALUE",
    "KEY_ALREADY_EXISTS",
    "INVALID_TTL",
    "INVALID_LIMIT",
    "INVALID_CURSOR",
    "TOO_MANY_KEYS",
    "DATA_CORRUPTED",
    "STORAGE_ERROR",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
    "CAPABILITY_NOT_AVAILABLE",
];

/// Refuses every call with the code the key (or prefix) names.
fn refuse(_capability: &str, args: &Value) -> HostReply {
    let code = args
        .get("key")
        .or_else(|| args.get("prefix"))
        .or_else(|| args.get("keys").map(|k| &k[0]))
        .or_else(|| args.get("items").map(|i| &i[0]["key"]))
        .and_then(Value::as_str)
        .unwrap_or("UNNAMED")
        .to_owned();
    HostReply::Err { message: format!("refused: {code}"), code }
}

#[test]
fn each_refusal_is_a_forge_kvs_api_error_with_the_same_code() {
    let code = r#"import kvs, { ForgeKvsError, ForgeKvsAPIError, WhereConditions } from '@forge/kvs';
const describe = (e) => ({
  cls: e instanceof ForgeKvsAPIError ? 'ForgeKvsAPIError' : e instanceof ForgeKvsError ? 'ForgeKvsError' : e.constructor.name,
  isError: e instanceof Error, name: e.name, code: e.code, message: e.message, details: e.responseDetails,
  context: e.context, packageVersion: e.packageVersion,
});
const attempt = async (f) => { try { await f(); return 'no error'; } catch (e) { return describe(e); } };
const codes = CODES_JSON;
export const run = async () => ({
  byCode: await Promise.all(codes.map((c) => attempt(() => kvs.set(c, 1)))),
  paths: [
    (await attempt(() => kvs.get('INVALID_KEY'))).details.httpPath,
    (await attempt(() => kvs.delete('INVALID_KEY'))).details.httpPath,
    (await attempt(() => kvs.query().where('key', WhereConditions.beginsWith('INVALID_CURSOR')).getMany())).details.httpPath,
    (await attempt(() => kvs.batchGet([{ key: 'TOO_MANY_KEYS' }]))).details.httpPath,
    (await attempt(() => kvs.batchSet([{ key: 'TOO_MANY_KEYS', value: 1 }]))).details.httpPath,
    (await attempt(() => kvs.batchDelete([{ key: 'TOO_MANY_KEYS' }]))).details.httpPath,
    (await attempt(() => kvs.getSecret('INVALID_KEY'))).details.httpPath,
    (await attempt(() => kvs.setSecret('INVALID_KEY', 1))).details.httpPath,
    (await attempt(() => kvs.deleteSecret('INVALID_KEY'))).details.httpPath,
  ],
  constructed: describe(new ForgeKvsAPIError({ status: 429, statusText: 'Too Many Requests', extra: 1 },
    { code: 'RATE_LIMIT_EXCEEDED', message: 'slow down', context: { a: 1 }, retryAfter: 5 })),
  plain: describe(new ForgeKvsError('boom')),
  badFields: await attempt(() => kvs.get('k', { metadataFields: ['NOPE'] })),
});"#;
    let code = code.replace("CODES_JSON", &json!(CODES).to_string());
    let (v, calls) = run_ok(&code, Box::new(refuse));
    for (code, got) in CODES.iter().zip(v["byCode"].as_array().unwrap()) {
        let status = match *code {
            "KEY_ALREADY_EXISTS" => json!([409, "Conflict"]),
            "PERMISSION_DENIED" => json!([403, "Forbidden"]),
            "DATA_CORRUPTED" | "STORAGE_ERROR" | "CAPABILITY_NOT_AVAILABLE" => {
                json!([500, "Internal Server Error"])
            }
            _ => json!([400, "Bad Request"]),
        };
        let message = format!("refused: {code}");
        let body_length = json!({"code": code, "message": message}).to_string().len();
        assert_eq!(
            got,
            &json!({
                "cls": "ForgeKvsAPIError", "isError": true, "name": "ForgeKvsError", "code": code,
                "message": message, "context": {}, "packageVersion": "1.6.5",
                "details": {"status": status[0], "statusText": status[1], "traceId": null, "httpMethod": "POST",
                            "httpPath": "/api/v1/set", "responseBodyLength": body_length},
            }),
            "{code}"
        );
    }
    assert_eq!(
        v["paths"],
        json!([
            "/api/v1/get",
            "/api/v1/delete",
            "/api/v1/query",
            "/api/v1/batch/get",
            "/api/v1/batch/set",
            "/api/v1/batch/delete",
            "/api/v1/secret/get",
            "/api/v1/secret/set",
            "/api/v1/secret/delete",
        ])
    );
    assert_eq!(
        v["constructed"],
        json!({
            "cls": "ForgeKvsAPIError", "isError": true, "name": "ForgeKvsError", "code": "RATE_LIMIT_EXCEEDED",
            "message": "slow down", "context": {"a": 1, "retryAfter": 5}, "packageVersion": "1.6.5",
            "details": {"status": 429, "statusText": "Too Many Requests"},
        })
    );
    assert_eq!(
        v["plain"],
        json!({"cls": "ForgeKvsError", "isError": true, "name": "ForgeKvsError", "message": "boom", "packageVersion": "1.6.5"})
    );
    // An unknown metadata field is refused as Forge's store does, before any call.
    assert_eq!(v["badFields"]["code"], "BAD_REQUEST");
    assert_eq!(v["badFields"]["details"]["httpPath"], "/api/v1/get");
    assert_eq!(calls.len(), CODES.len() + 9, "{calls:?}");
}

#[test]
fn what_kiln_does_not_support_fails_loudly_and_sends_nothing() {
    let code = r#"import kvs, { Filter, WhereConditions, FilterConditions, NotSupportedError } from '@forge/kvs';
const attempt = async (f) => {
  try { await f(); return 'no error'; } catch (e) { return `${e instanceof NotSupportedError ? 'NotSupportedError' : e.name} ${e.code}: ${e.message}`; }
};
export const run = async () => [
  await attempt(() => kvs.entity('employee')),
  await attempt(() => kvs.transact()),
  await attempt(() => new Filter()),
  await attempt(() => kvs.query().where('key', WhereConditions.between('a', 'b')).getMany()),
  await attempt(() => kvs.query().where('value', WhereConditions.beginsWith('a')).getMany()),
  await attempt(() => kvs.query({ where: [{ property: 'key', ...FilterConditions.beginsWith('a') }, { property: 'key', ...FilterConditions.exists() }] }).getMany()),
  await attempt(() => kvs.batchSet([{ key: 'a', value: 1, entityName: 'employee' }])),
  await attempt(() => kvs.batchGet([{ key: 'a', entityName: 'employee' }])),
  await attempt(() => kvs.batchSet([{ key: 'a', value: 1, options: { keyPolicy: 'FAIL_IF_EXISTS' } }])),
  await attempt(() => kvs.setSecret('s', 'v', { ttl: { value: 1, unit: 'DAYS' } })),
  await attempt(() => kvs.setSecret('s', 'v', { keyPolicy: 'FAIL_IF_EXISTS' })),
  await attempt(() => kvs.setSecret('s', 'v', { keyPolicy: 'OVERRIDE', returnValue: 'LATEST' })),
  await attempt(() => kvs.getSecret('s', { metadataFields: ['CREATED_AT'] })),
];"#;
    let (v, calls) = run_ok(code, Box::new(empty));
    let not = |what: &str| format!("NotSupportedError NOT_SUPPORTED: {what} is not supported by Kiln yet");
    assert_eq!(
        v,
        json!([
            not("@forge/kvs kvs.entity (the entity store)"),
            not("@forge/kvs kvs.transact (transactions)"),
            not("@forge/kvs Filter (entity store filters)"),
            not("@forge/kvs query().where('key', BETWEEN) (Kiln serves WhereConditions.beginsWith)"),
            not("@forge/kvs query().where('value', ...) (KVS queries filter on 'key' only)"),
            not("@forge/kvs query with other than one where condition"),
            not("@forge/kvs batchSet with entityName 'employee' (the entity store)"),
            not("@forge/kvs batchGet with entityName 'employee' (the entity store)"),
            not("@forge/kvs batchSet with options.keyPolicy"),
            not("@forge/kvs kvs.setSecret with options.ttl"),
            not("@forge/kvs kvs.setSecret with keyPolicy 'FAIL_IF_EXISTS'"),
            not("@forge/kvs kvs.setSecret with options.returnValue"),
            not("@forge/kvs kvs.getSecret with metadataFields"),
        ])
    );
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn conditions_have_forges_shapes() {
    let code = r#"import { WhereConditions as W, FilterConditions as F, Sort, MetadataField, isOverrideAndReturnOptions } from '@forge/kvs';
export const run = () => ({
  w: [W.beginsWith('a'), W.between(1, 2), W.equalTo(true), W.greaterThan(1), W.greaterThanEqualTo(1), W.lessThan(1), W.lessThanEqualTo(1)],
  f: [F.contains('x'), F.notContains('x'), F.notEqualTo(1), F.exists(), F.notExists()],
  fKeys: Object.keys(F).sort(),
  sort: Sort, fields: MetadataField,
  ret: [isOverrideAndReturnOptions({ returnValue: 'LATEST' }), isOverrideAndReturnOptions({}), isOverrideAndReturnOptions(undefined)],
});"#;
    let (v, calls) = run_ok(code, Box::new(empty));
    assert!(calls.is_empty());
    assert_eq!(
        v,
        json!({
            "w": [
                {"condition": "BEGINS_WITH", "values": ["a"]}, {"condition": "BETWEEN", "values": [1, 2]},
                {"condition": "EQUAL_TO", "values": [true]}, {"condition": "GREATER_THAN", "values": [1]},
                {"condition": "GREATER_THAN_EQUAL_TO", "values": [1]}, {"condition": "LESS_THAN", "values": [1]},
                {"condition": "LESS_THAN_EQUAL_TO", "values": [1]},
            ],
            "f": [
                {"condition": "CONTAINS", "values": ["x"]}, {"condition": "NOT_CONTAINS", "values": ["x"]},
                {"condition": "NOT_EQUAL_TO", "values": [1]}, {"condition": "EXISTS", "values": [true]},
                {"condition": "NOT_EXISTS", "values": [true]},
            ],
            "fKeys": ["beginsWith", "between", "contains", "equalTo", "exists", "greaterThan", "greaterThanEqualTo",
                      "lessThan", "lessThanEqualTo", "notContains", "notEqualTo", "notExists"],
            "sort": {"ASC": "ASC", "DESC": "DESC"},
            "fields": {"CREATED_AT": "CREATED_AT", "UPDATED_AT": "UPDATED_AT", "EXPIRE_TIME": "EXPIRE_TIME"},
            "ret": [true, false, false],
        })
    );
}

// ---------------------------------------------------------------- legacy storage

#[test]
fn legacy_storage_sends_the_same_host_calls_with_the_old_shapes() {
    let code = r#"import { storage, startsWith } from '@forge/api';
export const run = async () => {
  const q = storage.query().where('key', startsWith('user:'));
  const first = await q.limit(2).getMany();
  const last = await q.cursor(first.nextCursor).getMany();
  const after = await q.cursor(last.nextCursor).getMany();
  return {
    condition: startsWith('p'),
    immutable: [q.limit(1) !== q, q.cursor('c') !== q, q.where('key', startsWith('x')) !== q],
    get: await storage.get('k'),
    missing: (await storage.get('missing')) === undefined,
    set: (await storage.set('k', { a: 1 })) === undefined,
    deleted: (await storage.delete('k')) === undefined,
    secret: await storage.getSecret('s'),
    noSecret: (await storage.getSecret('missing')) === undefined,
    setSecret: (await storage.setSecret('s', 'v')) === undefined,
    deleteSecret: (await storage.deleteSecret('s')) === undefined,
    first, last, after,
    one: await storage.query().getOne(),
    all: await storage.query().getMany(),
  };
};"#;
    let (v, calls) = run_ok(code, Box::new(stocked));
    assert_eq!(
        v,
        json!({
            "condition": {"condition": "STARTS_WITH", "value": "p"},
            "immutable": [true, true, true],
            "get": {"name": "Ada"},
            "missing": true,
            "set": true,
            "deleted": true,
            "secret": "s3cret",
            "noSecret": true,
            "setSecret": true,
            "deleteSecret": true,
            "first": {"results": [{"key": "user:1", "value": 1}, {"key": "user:2", "value": 2}], "nextCursor": "dXNlcjoy"},
            // The old API gave a cursor with every non-empty page...
            "last": {"results": [{"key": "user:1", "value": 1}, {"key": "user:2", "value": 2}], "nextCursor": "kiln:after-last-page"},
            // ...and an empty page without one after the last.
            "after": {"results": []},
            "one": {"key": "user:1", "value": 1},
            "all": {"results": [{"key": "user:1", "value": 1}, {"key": "user:2", "value": 2}], "nextCursor": "dXNlcjoy"},
        })
    );
    let expected = vec![
        ("kvs.query", json!({"prefix": "user:", "limit": 2})),
        ("kvs.query", json!({"prefix": "user:", "cursor": "dXNlcjoy"})),
        ("kvs.get", json!({"key": "k"})),
        ("kvs.get", json!({"key": "missing"})),
        ("kvs.set", json!({"key": "k", "value": {"a": 1}})),
        ("kvs.delete", json!({"key": "k"})),
        ("kvs.getSecret", json!({"key": "s"})),
        ("kvs.getSecret", json!({"key": "missing"})),
        ("kvs.setSecret", json!({"key": "s", "value": "v"})),
        ("kvs.deleteSecret", json!({"key": "s"})),
        ("kvs.query", json!({"prefix": "", "limit": 1})),
        ("kvs.query", json!({"prefix": ""})),
    ];
    let got: Vec<(&str, Value)> = calls.iter().map(|(c, a)| (c.as_str(), a.clone())).collect();
    assert_eq!(got, expected);
}

#[test]
fn legacy_storage_refusals_are_the_old_errors_and_the_rest_fails_loudly() {
    let code = r#"import { storage, NotSupportedError } from '@forge/api';
const attempt = async (f) => {
  try { await f(); return 'no error'; } catch (e) {
    return { cls: e.constructor.name, name: e.name, message: e.message, code: e.code ?? null, notSupported: e instanceof NotSupportedError };
  }
};
export const run = async () => [
  await attempt(() => storage.set('KEY_TOO_LONG', 1)),
  await attempt(() => storage.get('INVALID_KEY')),
  await attempt(() => storage.query().where('key', startsWithLike('STORAGE_ERROR')).getMany()),
  await attempt(() => storage.query().where('value', { condition: 'STARTS_WITH', value: 'a' }).getMany()),
  await attempt(() => storage.query().where('key', { condition: 'IN', value: ['a'] }).getMany()),
  await attempt(() => storage.entity('employee')),
];
function startsWithLike(value) { return { condition: 'STARTS_WITH', value }; }"#;
    let (v, calls) = run_ok(code, Box::new(refuse));
    let api = |code: &str| json!({"cls": "APIError", "name": "Error", "message": format!("refused: {code}"), "code": code, "notSupported": false});
    let not = |what: &str| {
        json!({"cls": "NotSupportedError", "name": "NotSupportedError", "message": format!("{what} is not supported by Kiln yet"),
               "code": "NOT_SUPPORTED", "notSupported": true})
    };
    assert_eq!(
        v,
        json!([
            api("KEY_TOO_LONG"),
            api("INVALID_KEY"),
            api("STORAGE_ERROR"),
            not("@forge/api storage.query().where('value', STARTS_WITH) (Kiln serves startsWith on 'key')"),
            not("@forge/api storage.query().where('key', IN) (Kiln serves startsWith on 'key')"),
            not("@forge/api storage.entity (the entity store)"),
        ])
    );
    assert_eq!(calls.len(), 3, "{calls:?}");
}
