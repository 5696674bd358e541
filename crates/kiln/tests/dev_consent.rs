//! A user's own consent for `asUser()`, end to end under `kiln dev` on the
//! example app (examples/issue-triage), whose issue panel resolver
//! `getTriage` reads the issue with `api.asUser().requestJira(...)`:
//!
//! 1. Alice opens the panel on SEC-1 (a context token from the dev site)
//!    before she has consented: the call answers 403
//!    `NEEDS_USER_CONSENT` with a `consentUrl` on the server, and shows
//!    nothing of the app's error;
//! 2. the link sends her browser to the dev site's `/authorize` with the
//!    app's client, the installation's product scopes and a state, and
//!    sets the flow's cookie;
//! 3. signing in there as Bob instead brings back a code the server refuses
//!    (the consent was for Alice), and keeps nothing for anyone;
//! 4. signing in as Alice (the dev site's `login_as` shortcut) brings back a
//!    code the server exchanges and keeps: "Consent recorded"; the same
//!    callback again, or without the cookie, is refused;
//! 5. `getTriage` now answers the triage of SEC-1;
//! 6. the audit trail holds both consents (one denied, one granted) as
//!    `user.consent` by `user:<Alice>`, and no code or token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{KillOnDrop, copy_app, free_port, repo};
use kiln_http::{HttpsClient, Method, Reply};
use serde_json::{Value, json};

const ALICE: &str = "557058:alice";
const BOB: &str = "557058:bob";

/// The first line of `kiln dev`'s stderr holding `needle`, waited for.
fn wait_for(lines: &Mutex<Vec<String>>, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(line) = lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        assert!(
            start.elapsed() < timeout,
            "kiln dev never printed {needle:?}:\n{}",
            lines.lock().unwrap().join("\n")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Dev {
    app: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
    _process: KillOnDrop,
    server: HttpsClient,
    server_port: u16,
    devsite: HttpsClient,
    devsite_port: u16,
    installation: String,
    rt: tokio::runtime::Runtime,
}

impl Dev {
    fn start(work: &Path) -> Dev {
        let app = work.join("issue-triage");
        copy_app(&repo().join("examples/issue-triage"), &app);
        let (server_port, devsite_port) = (free_port(), free_port());
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .current_dir(&app)
            .args(["dev", "--no-watch", "--listen", &format!("127.0.0.1:{server_port}")])
            .args(["--devsite-listen", &format!("127.0.0.1:{devsite_port}")])
            .env_remove("KILN_DATA_DIR")
            .env_remove("KILN_DATABASE_URL")
            .env("USER", "tester")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let process = KillOnDrop(child);
        let lines: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let printed = |needle: &str, timeout: Duration| wait_for(&lines, needle, timeout);
        let installation = printed("installation:", Duration::from_secs(120));
        let installation = installation.split_whitespace().nth(1).unwrap().to_owned();
        printed("Watching", Duration::from_secs(10));
        let ca = std::fs::read_to_string(app.join(".kiln/tls/cert.pem")).unwrap();
        let client = |port: u16| {
            let tls = kiln_crypto::tls::client_config(&ca).unwrap();
            HttpsClient::new(&format!("127.0.0.1:{port}"), "127.0.0.1", tls)
        };
        Dev {
            server: client(server_port),
            devsite: client(devsite_port),
            app,
            lines,
            _process: process,
            server_port,
            devsite_port,
            installation,
            rt,
        }
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn send(
        &self,
        c: &HttpsClient,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string());
        let mut h: Vec<(&str, &str)> = headers.to_vec();
        if body.is_some() {
            h.push(("content-type", "application/json"));
        }
        self.rt.block_on(c.send(method, path, &h, body.as_deref().map(str::as_bytes))).unwrap()
    }

    /// A context token for `account` looking at the panel on `issue`.
    fn context_token(&self, account: &str, issue: &str) -> String {
        let token = self.send(
            &self.devsite,
            Method::POST,
            "/kiln/context-token",
            &[],
            Some(json!({
                "installation": self.installation, "moduleKey": "triage-panel",
                "accountId": account, "issueKey": issue,
            })),
        );
        assert_eq!(token.status.as_u16(), 200, "{}", token.text());
        token.json()["token"].as_str().unwrap().to_owned()
    }

    fn get_triage(&self, context_token: &str) -> Reply {
        self.send(
            &self.server,
            Method::POST,
            &format!("/resolver/v1/{}", self.installation),
            &[("authorization", &format!("Bearer {context_token}"))],
            Some(json!({ "call": { "functionKey": "getTriage", "payload": {} } })),
        )
    }

    /// Follow a consent link as a browser: the server's redirect to the dev
    /// site, and the cookie it set.
    fn open_link(&self, consent_url: &str) -> (url::Url, String) {
        let path = consent_url.strip_prefix(&format!("https://127.0.0.1:{}", self.server_port)).unwrap();
        let reply = self.send(&self.server, Method::GET, path, &[], None);
        assert_eq!(reply.status.as_u16(), 302, "{}", reply.text());
        let location = url::Url::parse(reply.headers["location"].to_str().unwrap()).unwrap();
        let set_cookie = reply.headers["set-cookie"].to_str().unwrap().to_owned();
        for attribute in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/oauth/callback"] {
            assert!(set_cookie.contains(attribute), "{set_cookie}");
        }
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        assert!(cookie.starts_with("kiln_consent_"), "{cookie}");
        (location, cookie)
    }

    /// Sign in at the dev site's `/authorize` as `account` (its consent
    /// shortcut): the server's callback path it redirects to.
    fn authorize_as(&self, authorize: &url::Url, account: &str) -> String {
        let path = format!("{}?{}&login_as={account}", authorize.path(), authorize.query().unwrap());
        let reply = self.send(&self.devsite, Method::GET, &path, &[], None);
        assert_eq!(reply.status.as_u16(), 302, "{}", reply.text());
        let back = reply.headers["location"].to_str().unwrap().to_owned();
        let prefix = format!("https://127.0.0.1:{}/oauth/callback?", self.server_port);
        assert!(back.starts_with(&prefix), "{back}");
        back.strip_prefix(&format!("https://127.0.0.1:{}", self.server_port)).unwrap().to_owned()
    }

    fn callback(&self, path: &str, cookie: Option<&str>) -> Reply {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", *c)).collect();
        self.send(&self.server, Method::GET, path, &headers, None)
    }
}

#[test]
fn a_user_consents_through_the_server_and_as_user_calls_then_work() {
    let work = tempfile::tempdir().unwrap();
    let dev = Dev::start(work.path());

    // 1. Before consent: 403 with a consent link, nothing of the app's error.
    let token = dev.context_token(ALICE, "SEC-1");
    let refused = dev.get_triage(&token);
    assert_eq!(refused.status.as_u16(), 403, "{}", refused.text());
    let answer = refused.json();
    assert_eq!(answer["error"], "NEEDS_USER_CONSENT", "{answer}");
    let consent_url = answer["consentUrl"].as_str().unwrap().to_owned();
    assert!(
        consent_url.starts_with(&format!("https://127.0.0.1:{}/oauth/consent?ticket=", dev.server_port)),
        "{consent_url}"
    );
    let shown = answer.to_string();
    for leak in ["Authentication Required", "NeedsAuthenticationError", ALICE, "stack"] {
        assert!(!shown.contains(leak), "{leak} in {shown}");
    }
    // A UI may also ask for the link up front, with the same token.
    let asked = dev.send(
        &dev.server,
        Method::POST,
        &format!("/resolver/v1/{}/consent", dev.installation),
        &[("authorization", &format!("Bearer {token}"))],
        None,
    );
    assert_eq!(asked.status.as_u16(), 200, "{}", asked.text());
    assert!(asked.json()["consentUrl"].as_str().unwrap().contains("/oauth/consent?ticket="));
    let anonymous =
        dev.send(&dev.server, Method::POST, &format!("/resolver/v1/{}/consent", dev.installation), &[], None);
    assert_eq!(anonymous.status.as_u16(), 401, "{}", anonymous.text());

    // 2. The link: off to the dev site's /authorize for the app's client,
    // the installation's product scopes and offline_access.
    let (authorize, cookie) = dev.open_link(&consent_url);
    assert_eq!(authorize.port(), Some(dev.devsite_port), "{authorize}");
    assert_eq!(authorize.path(), "/authorize");
    let q: BTreeMap<String, String> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], "kiln-dev-client");
    assert_eq!(q["redirect_uri"], format!("https://127.0.0.1:{}/oauth/callback", dev.server_port));
    assert_eq!(q["response_type"], "code");
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    for scope in ["read:jira-work", "write:jira-work", "offline_access"] {
        assert!(scopes.contains(&scope), "{scopes:?}");
    }
    assert!(!scopes.contains(&"storage:app"), "platform scopes are not the site's: {scopes:?}");
    assert!(!q["state"].contains("alice"), "the state does not show the account: {}", q["state"]);

    // 3. Bob signs in instead: refused, and nothing is kept for anyone.
    let bobs = dev.authorize_as(&authorize, BOB);
    let wrong = dev.callback(&bobs, Some(&cookie));
    assert_eq!(wrong.status.as_u16(), 403, "{}", wrong.text());
    assert!(wrong.text().contains("Signed in as someone else"), "{}", wrong.text());
    assert_eq!(dev.get_triage(&token).status.as_u16(), 403);
    let bob_token = dev.context_token(BOB, "KILN-2");
    assert_eq!(dev.get_triage(&bob_token).status.as_u16(), 403, "Bob's code was not kept for Bob either");

    // 4. Alice signs in: consent recorded. The callback's state is single
    // use, and bound to the browser that started.
    let (authorize, cookie) = dev.open_link(&consent_url);
    let alices = dev.authorize_as(&authorize, ALICE);
    let without_cookie = dev.callback(&alices, None);
    assert_eq!(without_cookie.status.as_u16(), 400, "{}", without_cookie.text());
    let done = dev.callback(&alices, Some(&cookie));
    assert_eq!(done.status.as_u16(), 200, "{}", done.text());
    assert!(done.text().contains("Consent recorded"), "{}", done.text());
    assert!(done.headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"), "the cookie is cleared");
    let replayed = dev.callback(&alices, Some(&cookie));
    assert_eq!(replayed.status.as_u16(), 400, "{}", replayed.text());
    assert!(replayed.text().contains("already used"), "{}", replayed.text());

    // 5. asUser() now acts for Alice: the triage of SEC-1.
    let triaged = dev.get_triage(&dev.context_token(ALICE, "SEC-1"));
    assert_eq!(triaged.status.as_u16(), 200, "{}\n{}", triaged.text(), dev.all());
    let result = triaged.json();
    assert_eq!(result["issueKey"], "SEC-1", "{result}");
    assert_eq!(result["labels"], json!(["triage-security"]), "{result}");
    assert_eq!(result["priority"], "high", "{result}");
    // Bob has still not consented.
    assert_eq!(dev.get_triage(&bob_token).status.as_u16(), 403);

    // 6. The trail: Bob's code refused, Alice's consent kept, both by Alice;
    // no code, state or token.
    let export = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(&dev.app)
        .args(["--data-dir", ".kiln", "audit", "export"])
        .env_remove("KILN_DATABASE_URL")
        .env("USER", "tester")
        .output()
        .unwrap();
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let trail = String::from_utf8_lossy(&export.stdout).into_owned();
    let consents: Vec<Value> = trail
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["action"] == "user.consent")
        .collect();
    assert_eq!(consents.len(), 2, "{trail}");
    assert_eq!(consents[0]["outcome"], "denied");
    assert_eq!(consents[1]["outcome"], "success");
    for record in &consents {
        assert_eq!(record["actor"], format!("user:{ALICE}"));
        assert_eq!(record["target"], format!("installation:{}", dev.installation));
        assert_eq!(record["details"]["accountId"], ALICE);
    }
    assert!(consents[1]["details"]["scopes"].as_array().unwrap().contains(&json!("read:jira-work")));
    let code = url::Url::parse(&format!("https://x{alices}")).unwrap();
    let code: BTreeMap<String, String> = code.query_pairs().into_owned().collect();
    assert!(
        !trail.contains(&code["code"]) && !trail.contains(&code["state"]),
        "no code or state in the trail"
    );
    assert!(!trail.contains("kda_") && !trail.contains("kdr_"), "no token in the trail");
}
