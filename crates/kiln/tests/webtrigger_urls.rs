//! Dynamic web trigger URLs end to end: an app served by `kiln serve`
//! makes new URLs for one of its web triggers (`webTrigger.getUrl` with
//! forceCreate), lists them (`queryUrls`) and deletes one (`deleteUrl`),
//! all from its own function; the new URL runs the module, the deleted one
//! answers 404, and the default URL `kiln webtrigger` prints is untouched.

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
use kiln_http::{HttpsClient, Method};
use serde_json::json;

const MANIFEST: &str = "app:
  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000f7
  runtime:
    name: nodejs22.x
modules:
  webtrigger:
    - key: admin
      function: admin-fn
    - key: inbox
      function: inbox-fn
  function:
    - key: admin-fn
      handler: index.admin
    - key: inbox-fn
      handler: index.inbox
permissions:
  scopes: []
";

/// `admin` manages the URLs of `inbox`, which answers with what it got.
const SOURCE: &str = r"import { webTrigger } from '@forge/api';
const failure = (p) => p.then(() => 'no error', (e) => `${e.name}: ${e.message}`);
export async function admin(req) {
  if (req.path === '/rotate') {
    const made = [await webTrigger.getUrl('inbox', true), await webTrigger.getUrl('inbox', { forceCreate: true })];
    const listed = await webTrigger.queryUrls('inbox');
    await webTrigger.deleteUrl(made[0]);
    const after = await webTrigger.queryUrls();
    return { statusCode: 200, body: JSON.stringify({
      made,
      listed,
      after,
      deletedAgain: await failure(webTrigger.deleteUrl(made[0])),
      secretKey: await failure(webTrigger.getUrl('inbox', { secretKeyConfig: { key: 'k' } })),
      unknownModule: await failure(webTrigger.getUrl('nope', true)),
      defaultUrl: await webTrigger.getUrl('inbox'),
    }) };
  }
  return { statusCode: 404 };
}
export function inbox(req) {
  return { statusCode: 200, body: `inbox got ${req.body}` };
}
";

/// `kiln serve` on a free loopback port: its base URL and the process.
fn serve(kiln: &Kiln) -> (String, KillOnDrop) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kiln"));
    command
        .arg("--data-dir")
        .arg(kiln.data_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("KILN_KEK")
        .env_remove("KILN_AUDIT_KEY")
        .env("USER", "tester");
    let (addr, _, child) = listening(command, "kiln serve", "Kiln admin API on ", 0);
    (addr, child)
}

#[test]
fn an_app_makes_lists_and_deletes_its_own_web_trigger_urls() {
    let kiln = Kiln::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.yml"), MANIFEST).unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/index.js"), SOURCE).unwrap();
    let app = dir.path().to_str().unwrap();
    kiln.ok(&["deploy", app]);
    kiln.ok(&["install", "--site", "https://a.atlassian.net", "--product", "jira", "--app", app]);
    kiln.ok(&["install", "--site", "https://b.atlassian.net", "--product", "jira", "--app", app]);
    let (base, _server) = serve(&kiln);
    let url = |site: &str, module: &str| {
        kiln.ok(&["webtrigger", module, "--site", site, "--app", app, "--base-url", &base]).trim().to_owned()
    };
    let admin = url("https://a.atlassian.net", "admin");
    let inbox = url("https://a.atlassian.net", "inbox");
    let b_inbox = url("https://b.atlassian.net", "inbox");

    let addr = base.strip_prefix("https://").unwrap().to_owned();
    let ca = std::fs::read_to_string(kiln.data_dir().join("tls/cert.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = HttpsClient::new(&addr, "127.0.0.1", kiln_crypto::tls::client_config(&ca).unwrap());
    let call = |method: Method, url: &str, body: Option<&[u8]>| {
        let path = url.strip_prefix(&base).unwrap_or_else(|| panic!("{url} is not under {base}")).to_owned();
        rt.block_on(client.send(method, &path, &[], body)).unwrap()
    };

    let rotated = call(Method::POST, &format!("{admin}/rotate"), None);
    assert_eq!(rotated.status.as_u16(), 200, "{}", rotated.text());
    let v = rotated.json();
    let made: Vec<String> =
        v["made"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()).collect();
    let (deleted, kept) = (&made[0], &made[1]);
    assert!(
        deleted.starts_with(&format!("{base}/x1/")) && kept.starts_with(&format!("{base}/x1/")),
        "{made:?}"
    );
    assert!(deleted != kept && *deleted != inbox && *kept != inbox, "{made:?}");
    let entry = |u: &str| json!({"moduleKey": "inbox", "url": u});
    assert_eq!(v["listed"], json!([entry(&inbox), entry(deleted), entry(kept)]), "oldest first");
    assert_eq!(
        v["after"],
        json!([{"moduleKey": "admin", "url": admin}, entry(&inbox), entry(kept)]),
        "every module's URLs of this installation, and no other installation's"
    );
    assert_eq!(
        v["deletedAgain"],
        "Error: Internal error occurred: Failed to delete web trigger URL: \
         this installation has no web trigger URL with that ID"
    );
    assert!(
        v["secretKey"]
            .as_str()
            .unwrap()
            .starts_with("NotSupportedError: @forge/api webTrigger.getUrl with secretKeyConfig"),
        "{}",
        v["secretKey"]
    );
    assert!(
        v["unknownModule"].as_str().unwrap().starts_with(
            "Error: Internal error occurred: Failed to get web trigger URL: \
             ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000f7 has no web trigger module 'nope'"
        ),
        "{}",
        v["unknownModule"]
    );
    assert_eq!(v["defaultUrl"], json!(inbox), "the default URL stays what kiln webtrigger printed");

    // The new URL runs the module; the deleted one answers 404; the
    // default, and the other installation's URL, still serve.
    let served = call(Method::POST, kept, Some(b"hello"));
    assert_eq!((served.status.as_u16(), served.text().as_str()), (200, "inbox got hello"));
    let gone = call(Method::POST, deleted, Some(b"hello"));
    assert_eq!(gone.status.as_u16(), 404, "{}", gone.text());
    assert_eq!(call(Method::GET, &format!("{deleted}/sub"), None).status.as_u16(), 404);
    assert_eq!(call(Method::POST, &inbox, Some(b"x")).text(), "inbox got x");
    assert_eq!(call(Method::POST, &b_inbox, Some(b"y")).text(), "inbox got y");
    assert_eq!(url("https://a.atlassian.net", "inbox"), inbox);
}
