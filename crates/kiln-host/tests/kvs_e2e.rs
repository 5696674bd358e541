//! End to end: app code in a jailed worker uses `@forge/kvs` and the legacy
//! `storage` API through the real host and the real encrypted store, on
//! every backend: set, get and delete with Forge's options and errors,
//! paging with cursors, TTLs that expire, batches, secrets; two
//! installations of the app that cannot see each other's keys, whatever
//! owner the worker claims; the gateway's OAuth tokens out of reach; and no
//! store at all without the `storage:app` scope.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use kiln_host::{Host, InvocationGrants};
use kiln_product::Installation;
use kiln_sandbox::Sandbox;
use serde_json::{Value, json};

mod common;

const MANIFEST: &str = "app:\n  id: ari:cloud:ecosystem::app/00000000-0000-4000-8000-00000000c0de\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: main\n  function:\n    - key: main\n      handler: index.run\npermissions:\n  scopes:\n    - storage:app\n";

const APP: &str = r#"
import kvs, { WhereConditions, MetadataField } from '@forge/kvs';
import { storage, startsWith } from '@forge/api';

const attempt = async (f) => {
  try { return { ok: (await f()) ?? null }; } catch (e) { return { class: e.constructor.name, code: e.code ?? null, message: e.message }; }
};

// Every key under `prefix`, a page of `limit` at a time.
async function pages(prefix, limit) {
  const sizes = [];
  const keys = [];
  let cursor;
  do {
    const page = await kvs.query().where('key', WhereConditions.beginsWith(prefix)).cursor(cursor).limit(limit).getMany();
    sizes.push(page.results.length);
    keys.push(...page.results.map((r) => r.key));
    cursor = page.nextCursor;
  } while (cursor);
  return { sizes, keys };
}

// The legacy loop that stops on an empty page.
async function legacyPages(prefix, limit) {
  const sizes = [];
  let cursor;
  for (let i = 0; i < 10; i++) {
    const page = await storage.query().where('key', startsWith(prefix)).limit(limit).cursor(cursor).getMany();
    sizes.push(page.results.length);
    if (page.results.length === 0) break;
    cursor = page.nextCursor;
  }
  return sizes;
}

async function fill() {
  const out = {};
  await kvs.set('user:1', { name: 'Ada' });
  out.get = await kvs.get('user:1');
  out.meta = await kvs.get('user:1', { metadataFields: [MetadataField.CREATED_AT, MetadataField.UPDATED_AT, MetadataField.EXPIRE_TIME] });
  out.missing = (await kvs.get('nobody')) === undefined;
  out.failIfExists = await attempt(() => kvs.set('user:1', 'x', { keyPolicy: 'FAIL_IF_EXISTS' }));
  out.created = await attempt(() => kvs.set('user:new', 'fresh', { keyPolicy: 'FAIL_IF_EXISTS' }));
  out.previous = await kvs.set('user:1', { name: 'Ada', v: 2 }, { keyPolicy: 'OVERRIDE', returnValue: 'PREVIOUS' });
  out.latest = await kvs.set('user:1', { name: 'Ada', v: 3 }, { keyPolicy: 'OVERRIDE', returnValue: 'LATEST' });
  await kvs.set('session', 'short-lived', { ttl: { value: 1, unit: 'HOURS' } });
  out.session = await kvs.get('session', { metadataFields: [MetadataField.EXPIRE_TIME] });
  out.badTtl = await attempt(() => kvs.set('x', 1, { ttl: { value: 400, unit: 'DAYS' } }));
  out.badKey = await attempt(() => kvs.set('bad/key', 1));
  out.longKey = await attempt(() => kvs.get('k'.repeat(501)));
  out.nullValue = await attempt(() => kvs.set('x', null));
  out.deep = await attempt(() => kvs.set('x', JSON.parse('['.repeat(40) + ']'.repeat(40))));

  const items = [];
  for (let i = 1; i <= 12; i++) items.push({ key: `item:${String(i).padStart(2, '0')}`, value: i });
  items.push({ key: 'item:ttl', value: 'gone soon', options: { ttl: { value: 30, unit: 'MINUTES' } } });
  items.push({ key: 'bad/key', value: 1 });
  out.batchSet = await kvs.batchSet(items);
  out.batchGet = await kvs.batchGet([{ key: 'item:01' }, { key: 'item:99' }, { key: 'item:ttl', options: { metadataFields: [MetadataField.EXPIRE_TIME] } }]);
  out.tooMany = await attempt(() => kvs.batchGet(Array.from({ length: 26 }, (_, i) => ({ key: `k${i}` }))));

  out.pages = await pages('item:', 5);
  out.one = await kvs.query().where('key', WhereConditions.beginsWith('item:')).getOne();
  out.badCursor = await attempt(() => kvs.query().cursor('not a cursor!').getMany());
  out.badLimit = await attempt(() => kvs.query().limit(101).getMany());

  await kvs.delete('user:new');
  out.deleted = (await kvs.get('user:new')) === undefined;
  out.deleteMissing = await attempt(() => kvs.delete('never-was'));
  out.batchDelete = await kvs.batchDelete([{ key: 'item:11' }, { key: 'item:12' }]);
  out.afterDelete = (await pages('item:', 100)).keys.length;

  await kvs.setSecret('api-token', { token: 'abc' });
  out.secret = await kvs.getSecret('api-token');
  out.secretIsNoEntry = (await kvs.get('api-token')) === undefined;
  out.secretsNotListed = (await kvs.query().where('key', WhereConditions.beginsWith('api-')).getMany()).results.length;

  out.legacyGet = await storage.get('user:1');
  await storage.set('legacy:1', 'L');
  out.legacyViaKvs = await kvs.get('legacy:1');
  out.legacyPages = await legacyPages('item:', 4);
  out.legacySecret = await storage.getSecret('api-token');
  out.legacyError = await attempt(() => storage.set('bad/key', 1));

  // The gateway's OAuth tokens share the owner but not the namespace.
  out.token = [(await kvs.get('oauth:app:access')) ?? null, (await kvs.getSecret('oauth:app:access')) ?? null,
               (await storage.get('oauth:app:access')) ?? null];

  // The worker cannot pick whose data it reads: an owner it sends is ignored.
  out.forgedOwner = await __kilnModules.hostCall('kvs.get', { key: 'user:1', owner: 'installation:kvs-b' });
  return out;
}

async function peek() {
  return {
    get: (await kvs.get('user:1')) ?? null,
    query: (await kvs.query().getMany()).results,
    secret: (await kvs.getSecret('api-token')) ?? null,
    legacy: (await storage.query().getMany()).results,
    batch: await kvs.batchGet([{ key: 'user:1' }, { key: 'item:01' }]),
    mine: await kvs.set('user:1', 'b-owns-this', { returnValue: 'LATEST' }),
    forgedOwner: await __kilnModules.hostCall('kvs.get', { key: 'session', owner: 'installation:kvs-a' }),
  };
}

async function recheck() {
  const out = {};
  out.get = await kvs.get('user:1');
  out.session = (await kvs.get('session')) ?? null;
  out.itemTtl = (await kvs.get('item:ttl')) ?? null;
  out.keys = (await pages('', 100)).keys;
  await kvs.deleteSecret('api-token');
  out.secretGone = (await kvs.getSecret('api-token')) ?? null;
  return out;
}

export async function run({ phase }) {
  switch (phase) {
    case 'fill': return fill();
    case 'peek': return peek();
    case 'recheck': return recheck();
  }
  throw new Error(`no phase ${phase}`);
}
"#;

const A: &str = "installation:kvs-a";
const B: &str = "installation:kvs-b";

/// 2027-01-13T08:00:00Z, where the test clock starts.
const START_MS: i64 = 1_799_827_200_000;

fn grants(app: &str, owner: &str, scopes: &[&str]) -> InvocationGrants {
    InvocationGrants {
        app: app.to_owned(),
        installation: owner.to_owned(),
        installation_row: None,
        environment: kiln_types::Environment::default(),
        egress: Vec::new(),
        product: Installation {
            owner: owner.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            impersonable: Default::default(),
        },
        user: None,
    }
}

fn invoke(
    sandbox: &Sandbox,
    host: &Host,
    built: &kiln_bundle::Built,
    grants: &InvocationGrants,
    phase: &str,
) -> Value {
    let request = common::web_trigger(json!({ "phase": phase }));
    let mut handler = host.invocation(grants).unwrap();
    let result = sandbox.invoke(&grants.app, &built.hash, &built.bundle, &request, &mut handler).unwrap();
    match result.outcome {
        kiln_ipc::Outcome::Ok { result } => serde_json::from_str(&result).unwrap(),
        kiln_ipc::Outcome::Err(e) => panic!("phase {phase} failed: {e:?}"),
    }
}

fn egress() -> Arc<kiln_egress::Gateway> {
    let cert = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let config = kiln_egress::Config::new(cert.cert_pem);
    let gateway = kiln_egress::Gateway::new(
        config,
        Arc::new(kiln_egress::SystemResolver),
        Arc::new(kiln_egress::SystemDialer),
    );
    Arc::new(gateway.unwrap())
}

/// A Forge error as the app's `attempt` reports it.
fn refused(code: &str) -> Value {
    json!({ "class": "ForgeKvsAPIError", "code": code })
}

fn class_and_code(v: &Value) -> Value {
    json!({ "class": v["class"], "code": v["code"] })
}

#[test]
fn apps_keep_entries_and_secrets_per_installation_through_the_real_host() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stores = rt.block_on(kiln_store::testing::each_backend()).unwrap();
    let sandbox = common::sandbox();
    let (_dir, manifest, built) = common::app(MANIFEST, APP);
    let app = manifest.app.id.to_string();

    for t in stores {
        let now = Arc::new(AtomicI64::new(START_MS));
        let clock = now.clone();
        let kvs = common::kvs(&t.store, Arc::new(move || clock.load(Ordering::SeqCst)));
        let auditor = kiln_audit::testing::AUDITOR.clone();
        let host =
            Host::new(rt.handle().clone(), t.store.clone(), auditor, egress(), None, Some(kvs.clone()));
        let a = grants(&app, A, &["storage:app"]);
        let b = grants(&app, B, &["storage:app"]);
        let name = t.name;

        rt.block_on(kvs.set_token(A, "oauth:app:access", "canary-token", None)).unwrap();
        let v = invoke(&sandbox, &host, &built, &a, "fill");
        let created = START_MS / 1000;
        assert_eq!(v["get"], json!({"name": "Ada"}), "{name}: {v}");
        assert_eq!(
            v["meta"],
            json!({"key": "user:1", "value": {"name": "Ada"}, "createdAt": created, "updatedAt": created}),
            "{name}: asked-for but unset expireTime is undefined, so absent in JSON"
        );
        assert_eq!(v["missing"], true);
        assert_eq!(class_and_code(&v["failIfExists"]), refused("KEY_ALREADY_EXISTS"), "{name}: {v}");
        assert_eq!(v["created"], json!({"ok": null}));
        assert_eq!(v["previous"], json!({"key": "user:1", "value": {"name": "Ada"}}));
        assert_eq!(v["latest"], json!({"key": "user:1", "value": {"name": "Ada", "v": 3}}));
        assert_eq!(
            v["session"],
            json!({"key": "session", "value": "short-lived", "expireTime": "2027-01-13T09:00:00Z"})
        );
        assert_eq!(class_and_code(&v["badTtl"]), refused("INVALID_TTL"));
        assert_eq!(class_and_code(&v["badKey"]), refused("INVALID_KEY"));
        assert_eq!(class_and_code(&v["longKey"]), refused("KEY_TOO_LONG"));
        assert_eq!(class_and_code(&v["nullValue"]), refused("INVALID_VALUE"));
        assert_eq!(class_and_code(&v["deep"]), refused("MAX_DEPTH"));

        let mut set_keys: Vec<Value> = (1..=12).map(|i| json!({"key": format!("item:{i:02}")})).collect();
        set_keys.push(json!({"key": "item:ttl"}));
        assert_eq!(v["batchSet"]["successfulKeys"], json!(set_keys), "{name}: {v}");
        assert_eq!(v["batchSet"]["failedKeys"][0]["key"], "bad/key");
        assert_eq!(v["batchSet"]["failedKeys"][0]["error"]["code"], "INVALID_KEY");
        assert_eq!(
            v["batchGet"],
            json!({
                "successfulKeys": [
                    {"key": "item:01", "value": 1},
                    {"key": "item:ttl", "value": "gone soon", "expireTime": "2027-01-13T08:30:00Z"},
                ],
                "failedKeys": [{"key": "item:99", "error": {"code": "KEY_NOT_FOUND", "message": "Key does not exist"}}],
            }),
            "{name}"
        );
        assert_eq!(class_and_code(&v["tooMany"]), refused("TOO_MANY_KEYS"));

        let mut item_keys: Vec<String> = (1..=12).map(|i| format!("item:{i:02}")).collect();
        item_keys.push("item:ttl".into());
        assert_eq!(v["pages"], json!({"sizes": [5, 5, 3], "keys": item_keys}), "{name}");
        assert_eq!(v["one"], json!({"key": "item:01", "value": 1}));
        assert_eq!(class_and_code(&v["badCursor"]), refused("INVALID_CURSOR"));
        assert_eq!(class_and_code(&v["badLimit"]), refused("INVALID_LIMIT"));

        assert_eq!(v["deleted"], true);
        assert_eq!(v["deleteMissing"], json!({"ok": null}));
        assert_eq!(
            v["batchDelete"],
            json!({"successfulKeys": [{"key": "item:11"}, {"key": "item:12"}], "failedKeys": []})
        );
        assert_eq!(v["afterDelete"], 11);

        assert_eq!(v["secret"], json!({"token": "abc"}));
        assert_eq!(v["secretIsNoEntry"], true);
        assert_eq!(v["secretsNotListed"], 0);

        assert_eq!(v["legacyGet"], json!({"name": "Ada", "v": 3}));
        assert_eq!(v["legacyViaKvs"], "L");
        // 11 items in pages of 4, and the old API's empty page after the last.
        assert_eq!(v["legacyPages"], json!([4, 4, 3, 0]), "{name}");
        assert_eq!(v["legacySecret"], json!({"token": "abc"}));
        assert_eq!(
            json!({"class": v["legacyError"]["class"], "code": v["legacyError"]["code"]}),
            json!({"class": "APIError", "code": "INVALID_KEY"})
        );
        assert_eq!(v["token"], json!([null, null, null]), "{name}: app code read the gateway's token");
        assert_eq!(v["forgedOwner"]["value"], json!({"name": "Ada", "v": 3}), "{name}: {v}");

        // Another installation of the same app sees none of it.
        let v = invoke(&sandbox, &host, &built, &b, "peek");
        assert_eq!(v["get"], Value::Null, "{name}: {v}");
        assert_eq!(v["query"], json!([]));
        assert_eq!(v["secret"], Value::Null);
        assert_eq!(v["legacy"], json!([]));
        assert_eq!(v["batch"]["successfulKeys"], json!([]));
        assert_eq!(v["mine"], json!({"key": "user:1", "value": "b-owns-this"}));
        assert_eq!(v["forgedOwner"], Value::Null, "{name}: the owner the worker sent was ignored");

        // Two hours on, A's entries are its own still, and the TTLs are up.
        now.fetch_add(2 * 3_600_000, Ordering::SeqCst);
        let v = invoke(&sandbox, &host, &built, &a, "recheck");
        assert_eq!(v["get"], json!({"name": "Ada", "v": 3}), "{name}: {v}");
        assert_eq!(v["session"], Value::Null);
        assert_eq!(v["itemTtl"], Value::Null);
        let mut keys: Vec<String> = (1..=10).map(|i| format!("item:{i:02}")).collect();
        keys.extend(["legacy:1".into(), "user:1".into()]);
        assert_eq!(v["keys"], json!(keys), "{name}");
        assert_eq!(v["secretGone"], Value::Null);

        // What the store holds agrees: B's write did not touch A's entry.
        let a_entry = rt.block_on(kvs.get(A, "user:1")).unwrap().unwrap();
        let b_entry = rt.block_on(kvs.get(B, "user:1")).unwrap().unwrap();
        assert_eq!((a_entry.value, b_entry.value), (json!({"name": "Ada", "v": 3}), json!("b-owns-this")));
    }
}

#[test]
fn an_installation_without_the_storage_scope_is_refused_and_the_store_is_untouched() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stores = rt.block_on(kiln_store::testing::each_backend()).unwrap();
    let sandbox = common::sandbox();
    let source = r#"
import kvs from '@forge/kvs';
import { storage } from '@forge/api';
const attempt = async (f) => { try { await f(); return 'stored'; } catch (e) { return `${e.constructor.name} ${e.code}: ${e.message}`; } };
export const run = async () => [await attempt(() => kvs.set('k', 1)), await attempt(() => storage.get('k'))];
"#;
    let manifest = MANIFEST.replace("    - storage:app\n", "    - read:jira-work\n");
    let (_dir, manifest, built) = common::app(&manifest, source);
    for t in stores {
        let kvs = common::kvs(&t.store, Arc::new(kiln_store::now_millis));
        let auditor = kiln_audit::testing::AUDITOR.clone();
        let host =
            Host::new(rt.handle().clone(), t.store.clone(), auditor, egress(), None, Some(kvs.clone()));
        let g = grants(&manifest.app.id.to_string(), A, &["read:jira-work"]);
        let v = invoke(&sandbox, &host, &built, &g, "any");
        let why = "@forge/kvs and storage need the 'storage:app' scope, which this installation has not consented to; \
                   add it to permissions.scopes in manifest.yml and upgrade the installation";
        assert_eq!(
            v,
            json!([
                format!("ForgeKvsAPIError PERMISSION_DENIED: {why}"),
                format!("APIError PERMISSION_DENIED: {why}")
            ]),
            "{}",
            t.name
        );
        assert_eq!(rt.block_on(kvs.get(A, "k")).unwrap(), None);
    }
}
