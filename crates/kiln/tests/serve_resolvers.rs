//! Resolver calls end to end: `kiln devsite` signs a context token for a
//! person looking at an issue, the UI sends it to `kiln serve`'s
//! `/resolver/v1/{installation}`, and the installation's resolver runs in
//! the sandbox as that person, with the token's context.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::process::Command;

use common::{KillOnDrop, Kiln, listening};
use kiln_http::{HttpsClient, Method, Reply};
use serde_json::{Value, json};

const BOB: &str = "557058:bob";
const CAROL: &str = "557058:carol";

/// A Jira app whose issue panel's resolver reports what it was given.
fn resolver_app() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(
        p.join("manifest.yml"),
        "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000f2\n  runtime:\n    name: nodejs22.x\n\
         modules:\n  jira:issuePanel:\n    - key: panel\n      resource: main\n      resolver:\n        function: resolver-fn\n      title: Panel\n\
         \x20 webtrigger:\n    - key: hook\n      function: hook-fn\n\
         \x20 function:\n    - key: resolver-fn\n      handler: index.handler\n    - key: hook-fn\n      handler: index.hook\n\
         resources:\n  - key: main\n    path: static\npermissions:\n  scopes:\n    - read:jira-work\n",
    )
    .unwrap();
    std::fs::create_dir_all(p.join("src")).unwrap();
    std::fs::create_dir_all(p.join("static")).unwrap();
    std::fs::write(p.join("static/index.html"), "<p>panel</p>\n").unwrap();
    std::fs::write(
        p.join("src/index.js"),
        r#"import Resolver from '@forge/resolver';
import { authorize } from '@forge/api';
const resolver = new Resolver();
resolver.define('whoami', ({ payload, context }) => {
  let userInSession = true;
  try { authorize(); } catch { userInSession = false; }
  return {
    payload,
    accountId: context.accountId,
    cloudId: context.cloudId,
    localId: context.localId,
    moduleKey: context.moduleKey,
    extension: context.extension,
    installContext: context.installContext,
    userInSession,
  };
});
resolver.define('fail', () => { throw new Error('secret detail'); });
export const handler = resolver.getDefinitions();
export const hook = () => ({ statusCode: 204 });
"#,
    )
    .unwrap();
    dir
}

/// The dev site, the app installed on its site, and `kiln serve` trusting
/// its context tokens.
struct Setup {
    kiln: Kiln,
    _app: tempfile::TempDir,
    _devsite: KillOnDrop,
    _server: KillOnDrop,
    devsite: HttpsClient,
    server: HttpsClient,
    installation: String,
    rt: tokio::runtime::Runtime,
}

fn client(kiln: &Kiln, base: &str) -> HttpsClient {
    let ca = std::fs::read_to_string(kiln.data_dir().join("tls/cert.pem")).unwrap();
    let addr = base.strip_prefix("https://").unwrap();
    HttpsClient::new(addr, "127.0.0.1", kiln_crypto::tls::client_config(&ca).unwrap())
}

fn setup() -> Setup {
    let kiln = Kiln::new();
    let app = resolver_app();
    let dir = app.path().to_str().unwrap();
    kiln.ok(&["deploy", dir]);
    let installed = kiln.ok(&[
        "install",
        "--site",
        "https://kiln-dev.atlassian.net",
        "--product",
        "jira",
        "--app",
        dir,
        "--format",
        "json",
    ]);
    let installation =
        serde_json::from_str::<Value>(&installed).unwrap()["installation"].as_str().unwrap().to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (site, _, devsite_process) = kiln.devsite(5);
    let devsite = client(&kiln, &site);
    // The dev site's public key, as an operator would save it for the server.
    let keys = rt.block_on(devsite.send(Method::GET, "/kiln/context-keys", &[], None)).unwrap();
    assert_eq!(keys.status.as_u16(), 200, "{}", keys.text());
    let keys_file = kiln.data.path().join("context-keys.json");
    std::fs::write(&keys_file, keys.text()).unwrap();
    let settings = kiln.data.path().join("kiln.toml");
    std::fs::write(&settings, format!("[resolvers]\nissuer = \"{site}\"\njwks_file = {:?}\n", keys_file))
        .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .arg("--data-dir")
        .arg(kiln.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0", "--config", settings.to_str().unwrap()])
        .env_remove("KILN_KEK")
        .env_remove("KILN_AUDIT_KEY")
        .env("USER", "tester");
    let (base, _, server_process) = listening(command, "kiln serve", "Kiln admin API on ", 0);
    let server = client(&kiln, &base);
    Setup {
        kiln,
        _app: app,
        _devsite: devsite_process,
        _server: server_process,
        devsite,
        server,
        installation,
        rt,
    }
}

impl Setup {
    /// A context token from the dev site (its loopback trust model: the
    /// person named by accountId).
    fn token(&self, request: Value) -> String {
        let body = request.to_string();
        let reply = self
            .rt
            .block_on(self.devsite.send(Method::POST, "/kiln/context-token", &[], Some(body.as_bytes())))
            .unwrap();
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
        reply.json()["token"].as_str().unwrap().to_owned()
    }

    fn call(&self, installation: &str, token: Option<&str>, body: &Value) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
        let body = body.to_string();
        let path = format!("/resolver/v1/{installation}");
        self.rt.block_on(self.server.send(Method::POST, &path, &headers, Some(body.as_bytes()))).unwrap()
    }
}

fn whoami() -> Value {
    json!({
        "call": { "functionKey": "whoami", "payload": { "n": 1 } },
        "extensionContext": { "issue": { "key": "SEC-1" }, "renderContext": "dark", "accountId": "557058:alice" },
    })
}

#[test]
fn a_resolver_runs_as_the_tokens_person_with_the_products_context() {
    let s = setup();
    let token = s.token(json!({
        "installation": s.installation, "moduleKey": "panel", "accountId": BOB, "issueKey": "KILN-1", "localId": "l-7",
    }));
    let reply = s.call(&s.installation, Some(&token), &whoami());
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["payload"], json!({ "n": 1 }));
    assert_eq!(v["accountId"], BOB, "from the token, not the body: {v}");
    assert_eq!(v["userInSession"], true, "asUser() and authorize() act for the token's person: {v}");
    assert_eq!(v["cloudId"], "4f3c2a1b-0d9e-4c8b-a7f6-5e4d3c2b1a09");
    assert_eq!(v["localId"], "l-7");
    assert_eq!(v["moduleKey"], "panel");
    assert_eq!(v["installContext"], "ari:cloud:jira::site/kiln-dev.atlassian.net");
    // The UI's extension context adds detail; the product's wins where both speak.
    assert_eq!(v["extension"]["issue"]["key"], "KILN-1", "{v}");
    assert_eq!(v["extension"]["project"]["key"], "KILN");
    assert_eq!(v["extension"]["renderContext"], "dark");

    // An app exception is a 500 that shows none of it.
    let failed = s.call(&s.installation, Some(&token), &json!({ "call": { "functionKey": "fail" } }));
    assert_eq!(failed.status.as_u16(), 500, "{}", failed.text());
    assert!(!failed.text().contains("secret detail"), "{}", failed.text());

    // An app's exception is its own: not in the audit trail either.
    let tail = s.kiln.ok(&["audit", "tail", "-n", "20"]);
    assert!(!tail.contains("secret detail"), "{tail}");
}

#[test]
fn bad_expired_and_misdirected_tokens_are_refused() {
    let s = setup();
    let good = s.token(json!({ "installation": s.installation, "moduleKey": "panel", "accountId": CAROL }));
    assert_eq!(s.call(&s.installation, Some(&good), &whoami()).status.as_u16(), 200);

    // No token, a tampered one, and one the dev site never signed: 401.
    assert_eq!(s.call(&s.installation, None, &whoami()).status.as_u16(), 401);
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let claims = {
        use base64::Engine as _;
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut c: Value = serde_json::from_slice(&engine.decode(&parts[1]).unwrap()).unwrap();
        c["sub"] = json!(BOB);
        engine.encode(c.to_string())
    };
    parts[1] = claims;
    let tampered = parts.join(".");
    let reply = s.call(&s.installation, Some(&tampered), &whoami());
    assert_eq!(reply.status.as_u16(), 401, "{}", reply.text());
    assert!(reply.headers.contains_key("www-authenticate"));

    // A token that has expired.
    let short = s.token(
        json!({ "installation": s.installation, "moduleKey": "panel", "accountId": CAROL, "ttlSeconds": 1 }),
    );
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert_eq!(s.call(&s.installation, Some(&short), &whoami()).status.as_u16(), 401);

    // A token for another installation, on this one's path or its own: 403, 404.
    let other = "00000000-0000-4000-8000-0000000000aa";
    let elsewhere = s.token(json!({ "installation": other, "moduleKey": "panel", "accountId": CAROL }));
    assert_eq!(s.call(&s.installation, Some(&elsewhere), &whoami()).status.as_u16(), 403);
    assert_eq!(s.call(other, Some(&good), &whoami()).status.as_u16(), 403);
    assert_eq!(s.call(other, Some(&elsewhere), &whoami()).status.as_u16(), 404);
    // A module of the app with no resolver (the web trigger): 403, nothing runs.
    let hook = s.token(json!({ "installation": s.installation, "moduleKey": "hook", "accountId": CAROL }));
    assert_eq!(s.call(&s.installation, Some(&hook), &whoami()).status.as_u16(), 403);
}
