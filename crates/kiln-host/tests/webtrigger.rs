//! The `webtrigger.*` capabilities through the real host, on every backend,
//! with the worker's side played by the test (the worker is assumed
//! hostile): the default URL stays put, `forceCreate` makes others, each
//! URL's secret is sealed under its own name and only its hash is stored,
//! deleting one erases its row and secret, one installation never lists or
//! deletes another's URLs, `secretKeyConfig` is refused, and Forge's
//! per-minute limits and Kiln's cap on URLs hold.

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
use kiln_crypto::Sha256;
use kiln_host::webtrigger::{
    MAX_CREATES_PER_MINUTE, MAX_DELETES_PER_MINUTE, MAX_QUERIES_PER_MINUTE, MAX_URLS_PER_INSTALLATION,
};
use kiln_host::{Host, InvocationGrants};
use kiln_ipc::HostReply;
use kiln_kvs::Kvs;
use kiln_sandbox::HostHandler;
use kiln_store::{InstallationRecord, NewWebtrigger, Store, WebtriggerCreator};
use serde_json::{Value, json};

const APP: &str = "ari:cloud:ecosystem::app/2d9e8f7a-6b5c-4d3e-8f1a-0b9c8d7e6fb0";
const PUBLIC: &str = "https://kiln.example.net";

fn manifest() -> String {
    format!(
        "app:
  id: {APP}
  runtime:
    name: nodejs22.x
modules:
  webtrigger:
    - key: hook
      function: main
    - key: other
      function: main
  function:
    - key: main
      handler: index.run
permissions:
  scopes: []
"
    )
}

/// Two installations of the app, stored as `kiln install` stores them.
async fn installations(store: &Store) -> (InstallationRecord, InstallationRecord) {
    common::two_installations(store, &manifest()).await
}

fn grants(installation: Option<&InstallationRecord>) -> InvocationGrants {
    common::grants_for(APP, installation)
}

fn host(rt: &tokio::runtime::Runtime, store: &Store, kvs: &Arc<Kvs>) -> Host {
    Host::new(
        rt.handle().clone(),
        store.clone(),
        kiln_audit::testing::AUDITOR.clone(),
        egress(),
        None,
        Some(kvs.clone()),
    )
    .with_public_url(&format!("{PUBLIC}/"))
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

fn get(host: &Host, g: &InvocationGrants, module: &str, force: bool) -> String {
    let url = call(host, g, "webtrigger.getUrl", json!({"moduleKey": module, "forceCreate": force})).unwrap();
    url.as_str().unwrap().to_owned()
}

fn query(host: &Host, g: &InvocationGrants, module: Option<&str>) -> Vec<(String, String)> {
    let urls = call(host, g, "webtrigger.queryUrls", json!({ "moduleKey": module })).unwrap();
    urls.as_array()
        .unwrap()
        .iter()
        .map(|u| (u["moduleKey"].as_str().unwrap().to_owned(), u["url"].as_str().unwrap().to_owned()))
        .collect()
}

fn id_of(url: &str) -> &str {
    url.strip_prefix(&format!("{PUBLIC}/x1/")).unwrap()
}

fn delete(host: &Host, g: &InvocationGrants, url: &str) -> Result<Value, (String, String)> {
    call(host, g, "webtrigger.deleteUrl", json!({ "id": id_of(url) }))
}

#[test]
fn urls_are_made_listed_and_deleted_for_the_invocations_installation() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, _) = rt.block_on(installations(&t.store));
        let kvs = kvs(&t.store);
        let host = host(&rt, &t.store, &kvs);
        let g = grants(Some(&a));

        let default = get(&host, &g, "hook", false);
        assert!(default.starts_with(&format!("{PUBLIC}/x1/")), "{default}");
        assert_eq!(id_of(&default).len(), 43);
        assert_eq!(get(&host, &g, "hook", false), default, "{}: the default stays put", t.name);
        let by_args = call(&host, &g, "webtrigger.getUrl", json!({"moduleKey": "hook"})).unwrap();
        assert_eq!(by_args, json!(default), "forceCreate may be left out");
        // What `kiln webtrigger` prints is the same URL.
        let printed = rt.block_on(kiln_host::webtrigger::token(&t.store, &kvs, &a, "hook")).unwrap();
        assert_eq!(printed, id_of(&default));

        let second = get(&host, &g, "hook", true);
        let third = get(&host, &g, "hook", true);
        let other = get(&host, &g, "other", false);
        assert_eq!(
            [&second, &third, &other].iter().collect::<std::collections::BTreeSet<_>>().len(),
            3,
            "each forceCreate makes a URL of its own"
        );
        assert_ne!(second, default);
        assert_eq!(get(&host, &g, "hook", false), default);
        let hook = |u: &String| ("hook".to_owned(), u.clone());
        assert_eq!(
            query(&host, &g, Some("hook")),
            [hook(&default), hook(&second), hook(&third)],
            "{}",
            t.name
        );
        assert_eq!(
            query(&host, &g, None),
            [hook(&default), hook(&second), hook(&third), ("other".to_owned(), other.clone())]
        );
        assert_eq!(query(&host, &g, Some("")), query(&host, &g, None), "an empty key filters nothing");
        assert!(query(&host, &g, Some("nope")).is_empty());

        // The database holds hashes and secret names only; each secret is
        // sealed under a name of its own.
        let rows = rt.block_on(async {
            t.store.begin_read().await.unwrap().webtriggers_of(a.id, Some("hook")).await.unwrap()
        });
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].created_by, WebtriggerCreator::Platform);
        assert_eq!(rows[1].created_by, WebtriggerCreator::App);
        let names: std::collections::BTreeSet<_> = rows.iter().map(|r| r.secret_name.clone()).collect();
        assert_eq!(names.len(), 3);
        assert!(names.iter().all(|n| n.starts_with("webtrigger:hook:")), "{names:?}");
        let owner = kiln_host::webtrigger::owner(&a);
        let sealed = rt.block_on(kvs.get_token(&owner, &rows[1].secret_name)).unwrap();
        assert_eq!(sealed.as_deref(), Some(id_of(&second)));

        // Deleting a URL forgets its row and erases its secret.
        assert_eq!(delete(&host, &g, &second).unwrap(), Value::Null);
        let gone = rt.block_on(async {
            t.store
                .begin_read()
                .await
                .unwrap()
                .webtrigger_by_hash(Sha256::of(id_of(&second).as_bytes()).as_bytes())
                .await
                .unwrap()
        });
        assert!(gone.is_none(), "{}", t.name);
        assert_eq!(rt.block_on(kvs.get_token(&owner, &rows[1].secret_name)).unwrap(), None);
        assert_eq!(query(&host, &g, Some("hook")), [hook(&default), hook(&third)]);
        let (code, message) = delete(&host, &g, &second).unwrap_err();
        assert_eq!(code, "WEBTRIGGER_URL_NOT_FOUND", "deleted once");
        assert_eq!(message, "this installation has no web trigger URL with that ID");

        // Deleting the default makes the next oldest the default.
        delete(&host, &g, &default).unwrap();
        assert_eq!(get(&host, &g, "hook", false), third, "{}", t.name);
        delete(&host, &g, &third).unwrap();
        let fresh = get(&host, &g, "hook", false);
        assert!(![&default, &second, &third].contains(&&fresh), "a new default once none is left");
        assert_eq!(query(&host, &g, Some("hook")), [hook(&fresh)]);
    }
}

#[test]
fn one_installation_never_lists_or_deletes_anothers_urls() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, b) = rt.block_on(installations(&t.store));
        let kvs = kvs(&t.store);
        let host = host(&rt, &t.store, &kvs);
        let (ga, gb) = (grants(Some(&a)), grants(Some(&b)));
        let a_default = get(&host, &ga, "hook", false);
        let a_extra = get(&host, &ga, "hook", true);
        let b_default = get(&host, &gb, "hook", false);
        assert_ne!(a_default, b_default, "{}: each installation its own URL", t.name);
        assert_eq!(query(&host, &gb, None), [("hook".to_owned(), b_default.clone())]);
        // Arguments naming another installation change nothing: the grants decide.
        let forged = call(
            &host,
            &gb,
            "webtrigger.queryUrls",
            json!({"moduleKey": null, "installation": a.id, "installationId": a.public_id.to_string()}),
        )
        .unwrap();
        assert_eq!(forged, json!([{"moduleKey": "hook", "url": b_default}]));
        for url in [&a_default, &a_extra] {
            let (code, message) = delete(&host, &gb, url).unwrap_err();
            assert_eq!(code, "WEBTRIGGER_URL_NOT_FOUND", "{}", t.name);
            assert_eq!(message, "this installation has no web trigger URL with that ID", "says no more");
        }
        let forged =
            call(&host, &gb, "webtrigger.deleteUrl", json!({"id": id_of(&a_extra), "installation": a.id}));
        assert_eq!(code_of(forged), "WEBTRIGGER_URL_NOT_FOUND");
        assert_eq!(
            query(&host, &ga, Some("hook")),
            [("hook".to_owned(), a_default.clone()), ("hook".to_owned(), a_extra.clone())],
            "{}: still there",
            t.name
        );
        // Nor a made-up or malformed ID.
        for id in ["", "x", &"A".repeat(43), &"=".repeat(43)] {
            let refused = call(&host, &gb, "webtrigger.deleteUrl", json!({ "id": id }));
            assert_eq!(code_of(refused), "WEBTRIGGER_URL_NOT_FOUND", "{id:?}");
        }
    }
}

#[test]
fn refusals_and_urls_made_before_several_were_possible() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, _) = rt.block_on(installations(&t.store));
        let kvs = kvs(&t.store);
        let host = host(&rt, &t.store, &kvs);
        let g = grants(Some(&a));
        let getting = |args: Value| call(&host, &g, "webtrigger.getUrl", args);

        let (code, message) =
            getting(json!({"moduleKey": "hook", "secretKeyConfig": {"key": "k", "noExpiry": true}}))
                .unwrap_err();
        assert_eq!(code, "NOT_SUPPORTED", "{}", t.name);
        assert!(message.contains("kiln webtrigger MODULE --signing-secret"), "{message}");
        assert!(getting(json!({"moduleKey": "hook", "secretKeyConfig": null})).is_ok());
        let (code, message) = getting(json!({"moduleKey": "nope"})).unwrap_err();
        assert_eq!(code, "WEBTRIGGER_MODULE_NOT_FOUND");
        assert!(message.ends_with("its web triggers are: hook, other"), "{message}");
        assert_eq!(
            code_of(getting(json!({"moduleKey": "nope", "forceCreate": true}))),
            "WEBTRIGGER_MODULE_NOT_FOUND"
        );
        for bad in [json!({}), json!({"moduleKey": ""}), json!({"moduleKey": 7}), json!(null)] {
            assert_eq!(code_of(getting(bad.clone())), "INVALID_HOST_CALL", "{bad}");
        }
        assert_eq!(code_of(getting(json!({"moduleKey": "hook", "forceCreate": "yes"}))), "INVALID_HOST_CALL");
        assert_eq!(
            code_of(call(&host, &g, "webtrigger.queryUrls", json!({"moduleKey": 7}))),
            "INVALID_HOST_CALL"
        );
        assert_eq!(code_of(call(&host, &g, "webtrigger.deleteUrl", json!({}))), "INVALID_HOST_CALL");
        assert_eq!(code_of(call(&host, &g, "webtrigger.rotate", json!({}))), "CAPABILITY_NOT_AVAILABLE");
        // `kiln invoke` has no installation, and a host without a public URL serves none.
        let (code, message) =
            call(&host, &grants(None), "webtrigger.getUrl", json!({"moduleKey": "hook"})).unwrap_err();
        assert_eq!(code, "WEBTRIGGER_URL_UNAVAILABLE");
        assert!(message.contains("installations served by kiln serve"), "{message}");
        let bare = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            kiln_audit::testing::AUDITOR.clone(),
            egress(),
            None,
            Some(kvs.clone()),
        );
        assert_eq!(code_of(call(&bare, &g, "webtrigger.queryUrls", json!({}))), "WEBTRIGGER_URL_UNAVAILABLE");

        // A URL made before schema v9 has its secret under the module's
        // name: it is still the default, listed, and deleted with its secret.
        let owner = kiln_host::webtrigger::owner(&a);
        let legacy = "L".repeat(43);
        rt.block_on(async {
            let hash = Sha256::of(legacy.as_bytes());
            let mut tx = t.store.begin().await.unwrap();
            // Older than anything made here: ids grow.
            for row in tx.webtriggers_of(a.id, None).await.unwrap() {
                tx.webtrigger_delete_one(a.id, row.id).await.unwrap();
            }
            let new = NewWebtrigger {
                installation_id: a.id,
                module_key: "other",
                token_hash: hash.as_bytes(),
                secret_name: "webtrigger:other",
                created_by: WebtriggerCreator::Platform,
            };
            tx.webtrigger_insert(&new, 1).await.unwrap();
            tx.commit().await.unwrap();
            kvs.set_token(&owner, "webtrigger:other", &legacy, None).await.unwrap();
        });
        let legacy_url = format!("{PUBLIC}/x1/{legacy}");
        assert_eq!(get(&host, &g, "other", false), legacy_url, "{}", t.name);
        assert_eq!(query(&host, &g, Some("other")), [("other".to_owned(), legacy_url.clone())]);
        delete(&host, &g, &legacy_url).unwrap();
        assert_eq!(rt.block_on(kvs.get_token(&owner, "webtrigger:other")).unwrap(), None);
        assert_ne!(get(&host, &g, "other", false), legacy_url);
    }
}

#[test]
fn forges_per_minute_limits_hold_per_installation() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, b) = rt.block_on(installations(&t.store));
        let kvs = kvs(&t.store);
        let host = host(&rt, &t.store, &kvs);
        let (ga, gb) = (grants(Some(&a)), grants(Some(&b)));
        let url = get(&host, &ga, "hook", false);
        for _ in 1..MAX_CREATES_PER_MINUTE {
            assert_eq!(get(&host, &ga, "hook", false), url);
        }
        let (code, message) =
            call(&host, &ga, "webtrigger.getUrl", json!({"moduleKey": "hook", "forceCreate": true}))
                .unwrap_err();
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("RATE_LIMIT_EXCEEDED", "Too Many Requests."),
            "{}",
            t.name
        );
        assert_eq!(
            code_of(call(&host, &ga, "webtrigger.getUrl", json!({"moduleKey": "hook"}))),
            "RATE_LIMIT_EXCEEDED"
        );
        // The other installation, and the other operations, have limits of their own.
        let b_url = get(&host, &gb, "hook", false);
        for _ in 0..MAX_QUERIES_PER_MINUTE {
            assert_eq!(query(&host, &ga, None).len(), 1);
        }
        assert_eq!(code_of(call(&host, &ga, "webtrigger.queryUrls", json!({}))), "RATE_LIMIT_EXCEEDED");
        for _ in 0..MAX_DELETES_PER_MINUTE {
            assert_eq!(code_of(delete(&host, &ga, &b_url)), "WEBTRIGGER_URL_NOT_FOUND");
        }
        assert_eq!(
            code_of(delete(&host, &ga, &url)),
            "RATE_LIMIT_EXCEEDED",
            "refused before anything is done"
        );
        assert_eq!(query(&host, &gb, None).len(), 1);
        assert_eq!(query(&host, &gb, None).len(), 1);
        // A limit is per node: another node's host counts its own calls.
        let other_node = self::host(&rt, &t.store, &kvs);
        delete(&other_node, &ga, &url).unwrap();
        assert!(query(&other_node, &ga, None).is_empty(), "{}", t.name);
    }
}

#[test]
fn an_installation_holds_at_most_kilns_cap_of_urls() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for t in rt.block_on(kiln_store::testing::each_backend()).unwrap() {
        let (a, b) = rt.block_on(installations(&t.store));
        let kvs = kvs(&t.store);
        let host = host(&rt, &t.store, &kvs);
        let (ga, gb) = (grants(Some(&a)), grants(Some(&b)));
        // All but one of the cap, stored straight away.
        rt.block_on(async {
            let mut tx = t.store.begin().await.unwrap();
            for i in 1..MAX_URLS_PER_INSTALLATION {
                let hash = Sha256::of(format!("filler-{i}").as_bytes());
                let name = format!("webtrigger:hook:filler-{i}");
                let new = NewWebtrigger {
                    installation_id: a.id,
                    module_key: "hook",
                    token_hash: hash.as_bytes(),
                    secret_name: &name,
                    created_by: WebtriggerCreator::App,
                };
                tx.webtrigger_insert(&new, 1).await.unwrap();
            }
            tx.commit().await.unwrap();
        });
        let last = get(&host, &ga, "other", false);
        let (code, message) =
            call(&host, &ga, "webtrigger.getUrl", json!({"moduleKey": "other", "forceCreate": true}))
                .unwrap_err();
        assert_eq!(code, "WEBTRIGGER_URL_LIMIT", "{}", t.name);
        assert!(message.contains("delete some with webTrigger.deleteUrl"), "{message}");
        assert_eq!(get(&host, &ga, "other", false), last, "the default is still answered");
        get(&host, &gb, "hook", true);
        // The refused URL left no row.
        let sealed = rt.block_on(async {
            t.store.begin_read().await.unwrap().webtriggers_of(a.id, Some("other")).await.unwrap()
        });
        assert_eq!(sealed.len(), 1);
        delete(&host, &ga, &last).unwrap();
        get(&host, &ga, "other", true);
    }
}
