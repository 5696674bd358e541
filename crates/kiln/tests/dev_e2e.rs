//! `kiln dev` end to end on the example app (examples/issue-triage): the
//! dev site and the server on loopback, the app deployed and installed,
//! and every module type driven from outside, with results checked
//! through the dev site:
//!
//! - **web trigger**: `GET` with the app's bearer variable answers the
//!   label counters; without it 401;
//! - **trigger from a dev-site event**: a person creates an issue on the
//!   dev site → the signed `avi:jira:created:issue` event → the trigger
//!   pushes a queue event → the consumer reads the issue and labels it;
//! - **queue consumer with a retry**: the dev site fails the consumer's
//!   first label update (an injected 503), the consumer throws, the queue
//!   retries it, and the label arrives;
//! - **scheduled trigger with a test clock**: moving the clock a day runs
//!   the nightly digest once, which posts the counters to the app's
//!   reporting service (a loopback server standing in for
//!   api.example.com, reached through the egress gateway's test table);
//! - **resolver call**: a context token from the dev site, a call to the
//!   panel's `retriage` resolver, whose queue push labels nothing new;
//! - **redeploy on change**: a code-only change under the app directory is
//!   deployed as a minor version and rolled out by itself; a change that
//!   does not build leaves the running version serving; a new scope makes
//!   a major version, upgraded on the dev site with the new permission
//!   shown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{KillOnDrop, copy_app, free_port, repo};
use kiln_http::{HttpsClient, Method, Reply};
use serde_json::{Value, json};

const ALICE: &str = "557058:alice";
const TOKEN: &str = "e2e-webhook-token";

/// `kiln dev`'s stderr, read on a thread: every line, in order.
struct Output {
    lines: Arc<Mutex<Vec<String>>>,
}

impl Output {
    fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(start.elapsed() < timeout, "kiln dev never printed {needle:?}:\n{}", self.all());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn all(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

struct Dev {
    app: PathBuf,
    out: Output,
    process: KillOnDrop,
    server: HttpsClient,
    devsite: HttpsClient,
    cloud_id: String,
    webhook_path: String,
    installation: String,
    rt: tokio::runtime::Runtime,
}

fn client(ca: &str, base_port: u16) -> HttpsClient {
    HttpsClient::new(
        &format!("127.0.0.1:{base_port}"),
        "127.0.0.1",
        kiln_crypto::tls::client_config(ca).unwrap(),
    )
}

impl Dev {
    fn call(
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

    fn jira(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
        let bearer = format!("Bearer {token}");
        let full = format!("/ex/jira/{}/rest/api/3{path}", self.cloud_id);
        self.call(&self.devsite, method, &full, &[("authorization", &bearer)], body)
    }

    /// A person's access token through the dev site's consent shortcut.
    fn user_token(&self, account: &str) -> String {
        let seed = kiln_devsite::Seed::example();
        let client = &seed.oauth_clients[0];
        let redirect = &client.redirect_uris[0];
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("audience", "api.atlassian.com")
            .append_pair("client_id", &client.client_id)
            .append_pair("scope", "read:jira-work write:jira-work")
            .append_pair("redirect_uri", redirect)
            .append_pair("state", "e2e")
            .append_pair("response_type", "code")
            .append_pair("prompt", "consent")
            .append_pair("login_as", account)
            .finish();
        let reply = self.call(&self.devsite, Method::GET, &format!("/authorize?{query}"), &[], None);
        let location = reply.headers.get("location").unwrap_or_else(|| panic!("{}", reply.text()));
        let location = url::Url::parse(location.to_str().unwrap()).unwrap();
        let code = location.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned();
        let token = self.call(
            &self.devsite,
            Method::POST,
            "/oauth/token",
            &[],
            Some(json!({
                "grant_type": "authorization_code", "client_id": client.client_id,
                "client_secret": client.client_secret, "code": code, "redirect_uri": redirect,
            })),
        );
        token.json()["access_token"].as_str().unwrap_or_else(|| panic!("{}", token.text())).to_owned()
    }

    /// Poll `check` until it gives a value, or fail with `what` and the log.
    fn eventually<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "{what} did not happen within {timeout:?}:\n{}",
                self.out.all()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn labels(&self, token: &str, key: &str) -> Vec<String> {
        let issue = self.jira(token, Method::GET, &format!("/issue/{key}?fields=labels"), None);
        issue.json()["fields"]["labels"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    }

    fn counts(&self) -> Value {
        let bearer = format!("Bearer {TOKEN}");
        let reply =
            self.call(&self.server, Method::GET, &self.webhook_path, &[("authorization", &bearer)], None);
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
        reply.json()["counts"].clone()
    }
}

/// The reporting service the digest posts to: HTTPS for api.example.com,
/// on loopback; remembers each body.
fn reporting_service(rt: &tokio::runtime::Runtime, dir: &Path) -> (u16, PathBuf, Arc<Mutex<Vec<Value>>>) {
    let identity = kiln_crypto::tls::self_signed(&["api.example.com"]).unwrap();
    let ca = dir.join("reporting-ca.pem");
    std::fs::write(&ca, &identity.cert_pem).unwrap();
    let tls = kiln_crypto::tls::server_config(&identity).unwrap();
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let record = seen.clone();
    let router = axum::Router::new().route(
        "/v1/triage-digests",
        axum::routing::post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                record.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                axum::http::StatusCode::CREATED
            }
        }),
    );
    rt.spawn(kiln_http::serve(listener, tls, router, std::future::pending::<()>()));
    (port, ca, seen)
}

fn start(work: &Path) -> (Dev, Arc<Mutex<Vec<Value>>>) {
    let app = work.join("issue-triage");
    copy_app(&repo().join("examples/issue-triage"), &app);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (report_port, report_ca, reports) = reporting_service(&rt, work);
    let (server_port, devsite_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(&app)
        .args(["dev", "--listen", &format!("127.0.0.1:{server_port}")])
        .args(["--devsite-listen", &format!("127.0.0.1:{devsite_port}")])
        .args(["--insecure-test-clock", "--retry-seconds", "1", "--insecure-egress-loopback"])
        .args(["--insecure-egress-resolve", &format!("api.example.com=127.0.0.1:{report_port}")])
        .arg("--egress-ca")
        .arg(&report_ca)
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
    let out = Output { lines };
    let webhook = out.wait_for("web trigger triage-webhook: ", Duration::from_secs(120));
    let url = webhook.split_whitespace().last().unwrap().to_owned();
    let webhook_path = url.split_once(&format!("127.0.0.1:{server_port}")).unwrap().1.to_owned();
    let installation = out.wait_for("installation:", Duration::from_secs(5));
    let installation = installation.split_whitespace().nth(1).unwrap().to_owned();
    let cloud = out.wait_for("(cloud id ", Duration::from_secs(5));
    let cloud_id = cloud.rsplit("(cloud id ").next().unwrap().trim_end_matches(')').to_owned();
    let ca = std::fs::read_to_string(app.join(".kiln/tls/cert.pem")).unwrap();
    let dev = Dev {
        server: client(&ca, server_port),
        devsite: client(&ca, devsite_port),
        app,
        out,
        process,
        cloud_id,
        webhook_path,
        installation,
        rt,
    };
    (dev, reports)
}

#[test]
fn kiln_dev_drives_the_example_app_through_every_module_type() {
    let work = tempfile::tempdir().unwrap();
    let (dev, reports) = start(work.path());
    let long = Duration::from_secs(60);

    // The web trigger's bearer token is an app variable, set as a developer would.
    let set = Command::new(env!("CARGO_BIN_EXE_kiln"))
        .current_dir(&dev.app)
        .args(["--data-dir", ".kiln", "variables", "set", "TRIAGE_WEBHOOK_TOKEN", TOKEN, "--app", "."])
        .env_remove("KILN_DATABASE_URL")
        .output()
        .unwrap();
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));

    // Web trigger: refused without the token, the counters with it.
    let refused = dev.call(&dev.server, Method::GET, &dev.webhook_path, &[], None);
    assert_eq!(refused.status.as_u16(), 401, "{}", refused.text());
    assert_eq!(dev.counts()["triage-outage"], 0);

    // Trigger from a dev-site event, then the queue consumer with a retry:
    // the consumer's first label update fails on the dev site.
    let injected = dev.call(
        &dev.devsite,
        Method::POST,
        "/kiln/faults",
        &[],
        Some(json!({"method": "PUT", "pathContains": "/rest/api/3/issue/", "status": 503, "times": 1})),
    );
    assert_eq!(injected.status.as_u16(), 201, "{}", injected.text());
    let alice = dev.user_token(ALICE);
    let created = dev.jira(
        &alice,
        Method::POST,
        "/issue",
        Some(json!({"fields": {
            "project": {"key": "KILN"}, "issuetype": {"name": "Bug"},
            "summary": "Checkout is down: outage in the EU region",
        }})),
    );
    assert_eq!(created.status.as_u16(), 201, "{}", created.text());
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let issue_id = created.json()["id"].as_str().unwrap().to_owned();
    let labels = dev.eventually("the consumer labelling the new issue", long, || {
        let labels = dev.labels(&alice, &key);
        labels.contains(&"triage-outage".to_owned()).then_some(labels)
    });
    assert_eq!(labels, ["triage-outage"]);
    // The label came from the retry: the first attempt met the injected 503
    // (the only PUT to an issue the test makes is the consumer's), and said so.
    dev.out.wait_for("labelling issue", Duration::from_secs(5));
    assert_eq!(dev.counts()["triage-outage"], 1, "the counter moves once, for the delivery that succeeded");

    // The app's own label update raised avi:jira:updated:issue, which
    // ignoreSelf keeps from the trigger: the counter stays at 1.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(dev.counts()["triage-outage"], 1);

    // Web trigger POST: a re-triage through the queue (the labels are there,
    // so nothing changes).
    let bearer = format!("Bearer {TOKEN}");
    let queued = dev.call(
        &dev.server,
        Method::POST,
        &dev.webhook_path,
        &[("authorization", &bearer)],
        Some(json!({ "issueId": issue_id })),
    );
    assert_eq!(queued.status.as_u16(), 202, "{}", queued.text());
    assert!(queued.json()["jobId"].as_str().is_some_and(|j| !j.is_empty()), "{}", queued.text());

    // Resolver call with a context token for Alice looking at the issue.
    let token = dev.call(
        &dev.devsite,
        Method::POST,
        "/kiln/context-token",
        &[],
        Some(json!({"installation": dev.installation, "moduleKey": "triage-panel", "accountId": ALICE, "issueKey": key})),
    );
    assert_eq!(token.status.as_u16(), 200, "{}", token.text());
    let context_token =
        token.json()["token"].as_str().unwrap_or_else(|| panic!("{}", token.text())).to_owned();
    let resolved = dev.call(
        &dev.server,
        Method::POST,
        &format!("/resolver/v1/{}", dev.installation),
        &[("authorization", &format!("Bearer {context_token}"))],
        Some(json!({"call": {"functionKey": "retriage", "payload": {}}})),
    );
    assert_eq!(resolved.status.as_u16(), 200, "{}", resolved.text());
    assert!(resolved.json()["jobId"].as_str().is_some(), "{}", resolved.text());

    // Scheduled trigger: nothing has run; a day on the test clock runs the
    // digest once, and it reaches the reporting service through egress.
    assert!(reports.lock().unwrap().is_empty());
    let moved = dev.call(
        &dev.server,
        Method::POST,
        "/_kiln/test/clock",
        &[],
        Some(json!({"advanceSeconds": 86_400})),
    );
    assert_eq!(moved.status.as_u16(), 200, "{}", moved.text());
    let digest = dev.eventually("the nightly digest", long, || reports.lock().unwrap().first().cloned());
    assert_eq!(digest["counts"]["triage-outage"], 1, "{digest}");
    assert_eq!(digest["total"], 1, "{digest}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(reports.lock().unwrap().len(), 1, "one run per slot");

    // Redeploy on change: a code-only change is a minor version, rolled out.
    let webtrigger = dev.app.join("src/webtrigger.ts");
    let code = std::fs::read_to_string(&webtrigger).unwrap();
    std::fs::write(&webtrigger, format!("{code}\n// a code-only change\n")).unwrap();
    dev.out.wait_for("Changed: src/webtrigger.ts", long);
    dev.out.wait_for("Deployed version 1.1.0", long);
    dev.out.wait_for("Rolled out to the dev site", long);
    assert_eq!(dev.counts()["triage-outage"], 1, "the new version serves the same storage");

    // A change that does not build is reported; the running version stays.
    std::fs::write(&webtrigger, format!("{code}\nexport const broken = ;\n")).unwrap();
    dev.out.wait_for("Not deployed; the running version stays", long);
    assert_eq!(dev.counts()["triage-outage"], 1, "1.1.0 still serves");
    std::fs::write(&webtrigger, &code).unwrap();
    dev.out.wait_for("Deployed version 1.2.0", long);

    // A new scope makes a major version: upgraded on the dev site, with the
    // new permission shown.
    let manifest = dev.app.join("manifest.yml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("    - storage:app\n", "    - storage:app\n    - read:jira-user\n"),
    )
    .unwrap();
    dev.out.wait_for("Deployed version 2.0.0", long);
    dev.out.wait_for("Upgraded the dev site from 1.2.0 to 2.0.0", long);
    assert!(dev.out.all().contains("read:jira-user"), "the new permission is shown:\n{}", dev.out.all());
    assert_eq!(dev.counts()["triage-outage"], 1, "2.0.0 serves the same storage");

    // Ctrl-C: the server drains and kiln dev exits cleanly.
    let mut process = dev.process;
    let pid = process.0.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "kiln dev did not stop:\n{}", dev.out.all());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "kiln dev exited with {status}:\n{}", dev.out.all());
}
