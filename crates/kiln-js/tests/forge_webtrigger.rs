//! `@forge/api`'s `webTrigger` against a fake host that records each host
//! call and answers it: the arguments each form of `getUrl`, `queryUrls`
//! and `deleteUrl` sends (read as Forge's client reads them), what is
//! refused before any host call, and how the server's refusals become the
//! errors Forge's client throws.

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

const BASE: &str = "https://kiln.example.net/x1/";

fn run_ok(code: &str, respond: Responder) -> (Value, Vec<(String, Value)>) {
    let program = index_importing(code, &["@forge/api"]);
    let (outcome, host) = run_index(program, "run", &json!({}), &json!({}), FakeHost::answering(respond));
    (ok(outcome), host.calls)
}

/// A server with one URL per module, answering as `kiln-host` does.
fn server(capability: &str, args: &Value) -> HostReply {
    match capability {
        "webtrigger.getUrl" => {
            let module = args["moduleKey"].as_str().unwrap_or_default();
            let fresh = if args["forceCreate"] == json!(true) { "-new" } else { "" };
            HostReply::Ok { value: json!(format!("{BASE}{module}{fresh}")) }
        }
        "webtrigger.queryUrls" => {
            let all = [("hook", "hook"), ("hook", "hook-new"), ("other", "other")];
            let module = args["moduleKey"].as_str();
            let value: Vec<Value> = all
                .iter()
                .filter(|(m, _)| module.is_none_or(|k| k == *m))
                .map(|(m, id)| json!({"moduleKey": m, "url": format!("{BASE}{id}")}))
                .collect();
            HostReply::Ok { value: Value::Array(value) }
        }
        "webtrigger.deleteUrl" => HostReply::Ok { value: Value::Null },
        other => panic!("unexpected host call {other}"),
    }
}

const OUTCOME: &str = "const outcome = (p) => p.then((v) => v, (e) => `${e.name}: ${e.message}${e.code ? ` [${e.code}]` : ''}`);";

#[test]
fn each_form_sends_forges_arguments_for_the_invocations_installation() {
    let code = format!(
        r"import {{ webTrigger }} from '@forge/api';
{OUTCOME}
export const run = async () => ({{
  plain: await webTrigger.getUrl('hook'),
  forced: await webTrigger.getUrl('hook', true),
  notForced: await webTrigger.getUrl('hook', false),
  options: await webTrigger.getUrl('hook', {{ forceCreate: true }}),
  emptyOptions: await webTrigger.getUrl('hook', {{}}),
  nullOptions: await webTrigger.getUrl('hook', null),
  stringOption: await webTrigger.getUrl('hook', 'yes'),
  all: await webTrigger.queryUrls(),
  one: await webTrigger.queryUrls('hook'),
  emptyKey: await webTrigger.queryUrls(''),
  numberKey: await webTrigger.queryUrls(7),
  deleted: typeof (await webTrigger.deleteUrl('{BASE}abc_-DEF?x=1#y')),
  deletedPublic: typeof (await webTrigger.deleteUrl('https://x.webtrigger.atlassian.app/public/id-9/more')),
}});"
    );
    let (v, calls) = run_ok(&code, Box::new(server));
    assert_eq!(
        v,
        json!({
            "plain": format!("{BASE}hook"),
            "forced": format!("{BASE}hook-new"),
            "notForced": format!("{BASE}hook"),
            "options": format!("{BASE}hook-new"),
            "emptyOptions": format!("{BASE}hook"),
            "nullOptions": format!("{BASE}hook"),
            "stringOption": format!("{BASE}hook"),
            "all": [
                {"moduleKey": "hook", "url": format!("{BASE}hook")},
                {"moduleKey": "hook", "url": format!("{BASE}hook-new")},
                {"moduleKey": "other", "url": format!("{BASE}other")},
            ],
            "one": [
                {"moduleKey": "hook", "url": format!("{BASE}hook")},
                {"moduleKey": "hook", "url": format!("{BASE}hook-new")},
            ],
            "emptyKey": [
                {"moduleKey": "hook", "url": format!("{BASE}hook")},
                {"moduleKey": "hook", "url": format!("{BASE}hook-new")},
                {"moduleKey": "other", "url": format!("{BASE}other")},
            ],
            // Forge filters on a truthy key by strict equality: a number
            // matches no module.
            "numberKey": [],
            "deleted": "undefined",
            "deletedPublic": "undefined",
        })
    );
    let get =
        |force: bool| ("webtrigger.getUrl".to_owned(), json!({"moduleKey": "hook", "forceCreate": force}));
    let query = |key: Value| ("webtrigger.queryUrls".to_owned(), json!({ "moduleKey": key }));
    assert_eq!(
        calls,
        vec![
            get(false),
            get(true),
            get(false),
            get(true),
            get(false),
            get(false),
            get(false),
            query(Value::Null),
            query(json!("hook")),
            query(Value::Null),
            query(Value::Null),
            ("webtrigger.deleteUrl".to_owned(), json!({"id": "abc_-DEF"})),
            ("webtrigger.deleteUrl".to_owned(), json!({"id": "id-9"})),
        ]
    );
}

#[test]
fn secret_key_config_and_unparseable_urls_are_refused_before_any_host_call() {
    let code = format!(
        r"import {{ webTrigger }} from '@forge/api';
{OUTCOME}
export const run = async () => [
  await outcome(webTrigger.getUrl('hook', {{ secretKeyConfig: {{ key: 'k' }} }})),
  await outcome(webTrigger.getUrl('hook', {{ forceCreate: true, secretKeyConfig: {{ key: 'k', noExpiry: true }} }})),
  await outcome(webTrigger.deleteUrl('https://kiln.example.net/y1/abc')),
  await outcome(webTrigger.deleteUrl('https://kiln.example.net/x1/')),
  await outcome(webTrigger.deleteUrl(undefined).catch((e) => {{ throw new Error(e.constructor.name); }})),
  await outcome(webTrigger.deleteUrl(new URL('{BASE}abc')).catch((e) => {{ throw new Error(e.constructor.name); }})),
];"
    );
    let (v, calls) = run_ok(&code, Box::new(server));
    let not_supported = "NotSupportedError: @forge/api webTrigger.getUrl with secretKeyConfig (Kiln signs requests \
                         to hmacSharedSecret web triggers with its own per-installation key: 'kiln webtrigger \
                         MODULE --signing-secret') is not supported by Kiln yet [NOT_SUPPORTED]";
    assert_eq!(
        v,
        json!([
            not_supported,
            not_supported,
            "Error: Internal error occurred: Failed to parse web trigger URL for ID",
            "Error: Internal error occurred: Failed to parse web trigger URL for ID",
            // As in Forge, a URL that is not a string fails on `.match`.
            "Error: TypeError",
            "Error: TypeError",
        ])
    );
    assert!(calls.is_empty(), "{calls:?}");
}

#[test]
fn server_refusals_arrive_as_the_errors_forges_client_throws() {
    let refusals = [
        ("RATE_LIMIT_EXCEEDED", "Too Many Requests."),
        ("WEBTRIGGER_MODULE_NOT_FOUND", "the app has no web trigger module 'nope'"),
        ("WEBTRIGGER_URL_NOT_FOUND", "this installation has no web trigger URL with that ID"),
        ("WEBTRIGGER_URL_UNAVAILABLE", "web trigger URLs exist for installations served by kiln serve"),
        ("INVALID_HOST_CALL", "'forceCreate' must be true or false"),
    ];
    for (code, message) in refusals {
        let program = index_importing(
            &format!(
                r"import {{ webTrigger }} from '@forge/api';
{OUTCOME}
export const run = async () => [
  await outcome(webTrigger.getUrl('nope', {{ forceCreate: 'yes' }})),
  await outcome(webTrigger.queryUrls('hook')),
  await outcome(webTrigger.deleteUrl('{BASE}abc')),
];"
            ),
            &["@forge/api"],
        );
        let respond: Responder =
            Box::new(move |_, _| HostReply::Err { code: code.into(), message: message.into() });
        let (outcome, host) = run_index(program, "run", &json!({}), &json!({}), FakeHost::answering(respond));
        assert_eq!(
            ok(outcome),
            json!([
                format!("Error: Internal error occurred: Failed to get web trigger URL: {message} [{code}]"),
                format!("Error: Internal error occurred: Failed to get web trigger URLs: {message} [{code}]"),
                format!(
                    "Error: Internal error occurred: Failed to delete web trigger URL: {message} [{code}]"
                ),
            ]),
            "{code}"
        );
        // The option's value goes to the server as given: it decides.
        assert_eq!(host.calls[0].1, json!({"moduleKey": "nope", "forceCreate": "yes"}));
    }
}

#[test]
fn the_default_export_carries_the_same_web_trigger_api() {
    let code = r"import api, { webTrigger } from '@forge/api';
export const run = async () => ({ same: api.webTrigger === webTrigger, url: await api.webTrigger.getUrl('hook') });";
    let (v, _) = run_ok(code, Box::new(server));
    assert_eq!(v, json!({"same": true, "url": format!("{BASE}hook")}));
}
