//! Scheduled triggers, product events and lifecycle events, each against
//! the real store on every backend, with a recording executor and a
//! recording queue standing in for the sandbox and the jobs table. The
//! event router runs as a real HTTPS server on loopback and is sent
//! events signed the way `kiln devsite` signs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use kiln_crypto::Sha256;
use kiln_manifest::{Grants, NoVariables};
use kiln_server::events::{Enqueue, EventFormat, EventRouter, EventSource, EventsConfig, TriggerDelivery};
use kiln_server::lifecycle::{LifecyclePoller, Settings as LifecycleSettings};
use kiln_server::runner::{BoxFuture, Call, Execute, Failure};
use kiln_server::scheduler::{self, Clock, Scheduler, Settings, SystemClock, TestClock};
use kiln_server::{HttpsClient, Reply};
use kiln_store::testing::{TestStore, each_backend, open_locator};
use kiln_store::{EventKind, InstallationRecord, NewVersion, Store, VersionOrigin};
use kiln_types::{Environment, Product, SiteUrl, Version};
use serde_json::{Value, json};

const SITE: &str = "https://acme.example.net";
const CLOUD_ID: &str = "7e57c10d-0000-4000-8000-00000000c10d";
const SECRET: &[u8] = b"an events key of 32 bytes, test!";
const APP_ACCOUNT: &str = "557058:kiln-app";
const HOUR: i64 = 3_600_000;

/// An app with every kind of module these tests route to.
fn manifest(app: &str, scopes: &[&str]) -> String {
    let scopes: String = scopes.iter().map(|s| format!("\n    - {s}")).collect();
    let scopes = if scopes.is_empty() { " []".to_owned() } else { scopes };
    format!(
        "
app:
  id: ari:cloud:ecosystem::app/{app}
  runtime:
    name: nodejs22.x
modules:
  trigger:
    - key: on-issue
      function: main
      events:
        - avi:jira:created:issue
        - avi:jira:updated:issue
    - key: not-mine
      function: main
      events:
        - avi:jira:created:issue
      filter:
        ignoreSelf: true
    - key: bugs-only
      function: main
      events:
        - avi:jira:created:issue
      filter:
        expression: event.issue.fields.issuetype.name == 'Bug'
    - key: on-page
      function: main
      events:
        - avi:confluence:created:page
    - key: lifecycle
      function: main
      events:
        - avi:forge:installed:app
        - avi:forge:upgraded:app
  scheduledTrigger:
    - key: hourly
      function: main
      interval: hour
    - key: daily
      function: main
      interval: day
  function:
    - key: main
      handler: index.run
      timeoutSeconds: 120
permissions:
  scopes:{scopes}
"
    )
}

/// Store version `major.minor` of `source`'s app (if new) and return its row id.
async fn version(store: &Store, source: &str, v: Version) -> (i64, kiln_manifest::Manifest) {
    version_in(store, source, v, &Environment::development()).await
}

async fn version_in(
    store: &Store,
    source: &str,
    v: Version,
    env: &Environment,
) -> (i64, kiln_manifest::Manifest) {
    let env = env.clone();
    let manifest = kiln_manifest::parse_str("manifest.yml", source, &NoVariables).unwrap().manifest;
    let grants = Grants::of(&manifest);
    let mut tx = store.begin().await.unwrap();
    let app = tx.ensure_app(&manifest.app.id).await.unwrap();
    let hash = Sha256::of(source.as_bytes());
    tx.put_bundle(&hash, source.as_bytes()).await.unwrap();
    let existing = tx.versions(&manifest.app.id, &env).await.unwrap().into_iter().find(|r| r.version == v);
    let id = match existing {
        Some(r) => r.id,
        None => tx
            .insert_version(NewVersion {
                app_id: app,
                environment: &env,
                version: v,
                manifest_source: source,
                manifest: &manifest,
                grants: &grants,
                origin: &VersionOrigin::Initial,
                bundle: hash,
            })
            .await
            .unwrap(),
    };
    tx.commit().await.unwrap();
    (id, manifest)
}

/// Install version 1.0 of `app` on `site` (Jira) with `consented` scopes
/// (which may be less than the version asks for).
async fn install(
    store: &Store,
    app: &str,
    site: &str,
    scopes: &[&str],
    consented: &[&str],
) -> InstallationRecord {
    install_in(store, app, site, scopes, consented, &Environment::development()).await
}

async fn install_in(
    store: &Store,
    app: &str,
    site: &str,
    scopes: &[&str],
    consented: &[&str],
    env: &Environment,
) -> InstallationRecord {
    let source = manifest(app, scopes);
    let (version_id, manifest) = version_in(store, &source, Version::FIRST, env).await;
    let consent_manifest =
        kiln_manifest::parse_str("manifest.yml", &self::manifest(app, consented), &NoVariables)
            .unwrap()
            .manifest;
    let mut tx = store.begin().await.unwrap();
    let app_row = tx.ensure_app(&manifest.app.id).await.unwrap();
    let site = SiteUrl::parse(site).unwrap();
    let id = tx
        .insert_installation(app_row, env, &site, Product::Jira, version_id, &Grants::of(&consent_manifest))
        .await
        .unwrap();
    tx.record_event(id, EventKind::Installed, None, version_id, &json!({})).await.unwrap();
    let record = tx.installation_by_id(id).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    record
}

// ------------------------------------------------------------ fakes

/// Records every call and answers `null`.
#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
}

impl Execute for Recorder {
    fn execute(&self, call: Call) -> BoxFuture<'_, Result<Value, Failure>> {
        self.calls.lock().unwrap().push(call);
        Box::pin(async { Ok(Value::Null) })
    }
}

impl Recorder {
    fn runs(&self) -> Vec<(i64, String)> {
        self.calls.lock().unwrap().iter().map(|c| (c.installation.id, c.module_key.clone())).collect()
    }
}

/// Records deliveries; a second delivery with the same installation,
/// module and event id is dropped, as the jobs table's unique key does.
#[derive(Default)]
struct Queue {
    deliveries: Mutex<Vec<(i64, String, String, Value)>>,
    broken: std::sync::atomic::AtomicBool,
}

impl Enqueue for Queue {
    fn enqueue<'a>(&'a self, d: TriggerDelivery<'a>) -> BoxFuture<'a, Result<bool, String>> {
        let result = if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
            Err("the jobs table is gone".to_owned())
        } else {
            let mut list = self.deliveries.lock().unwrap();
            let dup = list
                .iter()
                .any(|(i, m, e, _)| *i == d.installation.id && m == d.module_key && e == d.event_id);
            if !dup {
                list.push((
                    d.installation.id,
                    d.module_key.to_owned(),
                    d.event_id.to_owned(),
                    d.body.clone(),
                ));
            }
            Ok(!dup)
        };
        Box::pin(async move { result })
    }
}

impl Queue {
    fn modules(&self) -> Vec<(i64, String)> {
        self.deliveries.lock().unwrap().iter().map(|(i, m, _, _)| (*i, m.clone())).collect()
    }
}

// ------------------------------------------------------------ scheduled triggers

/// The first due time of `module` (interval `every`) at or after the
/// installation was made.
fn first_due(inst: &InstallationRecord, module: &str, every: i64) -> i64 {
    let offset = scheduler::offset_ms(inst, module, every);
    let (_, due) = scheduler::latest_due(inst.created_at, every, offset);
    if due < inst.created_at { due + every } else { due }
}

fn node(executor: &Arc<Recorder>, store: Store, clock: &Arc<TestClock>, name: &str) -> Arc<Scheduler> {
    let executor: Arc<dyn Execute> = executor.clone();
    let clock: Arc<dyn Clock> = clock.clone();
    let mut settings = Settings::new(name);
    settings.cloud_ids.insert(SiteUrl::parse(SITE).unwrap(), CLOUD_ID.to_owned());
    Arc::new(Scheduler::new(executor, store, clock, settings))
}

#[tokio::test]
async fn a_scheduled_trigger_fires_once_per_slot_with_forges_payload() {
    for t in each_backend().await.unwrap() {
        let inst = install(&t.store, "00000000-0000-4000-8000-00000000a001", SITE, &[], &[]).await;
        let clock = Arc::new(TestClock::new(inst.created_at));
        let rec = Arc::new(Recorder::default());
        let s = node(&rec, t.store.clone(), &clock, "node-a");
        let due = first_due(&inst, "hourly", HOUR);

        clock.set(due - 1);
        let before = s.run_due().await.unwrap();
        assert!(before.ran.iter().all(|(_, m, _)| m != "hourly"), "{}: not due yet: {before:?}", t.name);
        clock.set(due);
        let ran = s.run_due().await.unwrap().ran;
        assert_eq!(ran.iter().filter(|(_, m, _)| m == "hourly").count(), 1, "{}: {ran:?}", t.name);
        // Later in the same slot: nothing more.
        clock.set(due + HOUR / 2);
        assert!(s.run_due().await.unwrap().ran.iter().all(|(_, m, _)| m != "hourly"));
        // The next slot.
        clock.set(due + HOUR);
        assert_eq!(s.run_due().await.unwrap().ran.iter().filter(|(_, m, _)| m == "hourly").count(), 1);

        let calls = rec.calls.lock().unwrap();
        let call = calls.iter().find(|c| c.module_key == "hourly").unwrap();
        assert_eq!(call.function, "main");
        assert_eq!(call.kind, "scheduledTrigger");
        assert_eq!(call.account_id, None, "no user principal");
        assert_eq!(call.caller, kiln_sandbox::Caller::Background { timeout_seconds: Some(120) });
        assert_eq!(call.payload["context"], json!({ "cloudId": CLOUD_ID, "moduleKey": "hourly" }));
        assert!(call.payload["contextToken"].is_string());
        assert!(call.context.is_empty(), "the runner adds installContext; nothing else");
    }
}

#[tokio::test]
async fn two_schedulers_on_one_store_fire_each_slot_once() {
    for t in each_backend().await.unwrap() {
        let inst = install(&t.store, "00000000-0000-4000-8000-00000000a002", SITE, &[], &[]).await;
        // The second node has its own connections to the same database.
        let other = open_locator(&t.locator).await.unwrap();
        let clock = Arc::new(TestClock::new(inst.created_at));
        let rec = Arc::new(Recorder::default());
        let a = node(&rec, t.store.clone(), &clock, "node-a");
        let b = node(&rec, other, &clock, "node-b");
        let due = first_due(&inst, "hourly", HOUR);
        for slot in 0..4 {
            clock.set(due + slot * HOUR + 1_000);
            let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
            let (ra, rb) = (ra.unwrap(), rb.unwrap());
            let hourly = |r: &scheduler::TickReport| r.ran.iter().filter(|(_, m, _)| m == "hourly").count();
            assert_eq!(hourly(&ra) + hourly(&rb), 1, "{} slot {slot}: {ra:?} {rb:?}", t.name);
        }
        let hourly = rec.runs().iter().filter(|(i, m)| *i == inst.id && m == "hourly").count();
        assert_eq!(hourly, 4, "{}", t.name);
    }
}

#[tokio::test]
async fn runs_missed_while_down_fire_once_for_the_latest_slot() {
    for t in each_backend().await.unwrap() {
        let inst = install(&t.store, "00000000-0000-4000-8000-00000000a003", SITE, &[], &[]).await;
        let clock = Arc::new(TestClock::new(inst.created_at));
        let rec = Arc::new(Recorder::default());
        let s = node(&rec, t.store.clone(), &clock, "node-a");
        let due = first_due(&inst, "hourly", HOUR);
        // Down for ten hours.
        clock.set(due + 10 * HOUR + 5);
        let ran: Vec<_> =
            s.run_due().await.unwrap().ran.into_iter().filter(|(_, m, _)| m == "hourly").collect();
        assert_eq!(ran.len(), 1, "{}: one run, not a burst: {ran:?}", t.name);
        let (slot_start, _) =
            scheduler::latest_due(due + 10 * HOUR + 5, HOUR, scheduler::offset_ms(&inst, "hourly", HOUR));
        assert_eq!(ran[0].2, slot_start, "the latest slot");
        // A node that restarts (no memory of the run) does not run it again.
        let fresh = node(&rec, t.store.clone(), &clock, "node-b");
        assert!(fresh.run_due().await.unwrap().ran.iter().all(|(_, m, _)| m != "hourly"));
    }
}

#[tokio::test]
async fn a_run_left_by_a_dead_node_is_run_again_after_its_lease() {
    for t in each_backend().await.unwrap() {
        let inst = install(&t.store, "00000000-0000-4000-8000-00000000a004", SITE, &[], &[]).await;
        let every = HOUR;
        let due = first_due(&inst, "hourly", every);
        let (slot, _) = scheduler::latest_due(due, every, scheduler::offset_ms(&inst, "hourly", every));
        // node-x claimed the slot and died.
        let mut tx = t.store.begin().await.unwrap();
        let run = kiln_store::RunSlot { installation_id: inst.id, module_key: "hourly", slot };
        tx.claim_scheduled_run(run, "node-x", due, due + 60_000, scheduler::MAX_ATTEMPTS).await.unwrap();
        tx.commit().await.unwrap();

        let clock = Arc::new(TestClock::new(due + 1_000));
        let rec = Arc::new(Recorder::default());
        let s = node(&rec, t.store.clone(), &clock, "node-a");
        assert!(
            s.run_due().await.unwrap().ran.iter().all(|(_, m, _)| m != "hourly"),
            "{}: lease live",
            t.name
        );
        clock.set(due + 61_000);
        let ran = s.run_due().await.unwrap().ran;
        assert_eq!(
            ran.iter().filter(|(_, m, _)| m == "hourly").count(),
            1,
            "{}: taken over: {ran:?}",
            t.name
        );
    }
}

#[tokio::test]
async fn a_run_is_leased_for_longer_than_its_function_may_take() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    let inst = install(&t.store, "00000000-0000-4000-8000-00000000a005", SITE, &[], &[]).await;
    let due = first_due(&inst, "hourly", HOUR);
    let clock = Arc::new(TestClock::new(due));
    let rec = Arc::new(Recorder::default());
    node(&rec, t.store.clone(), &clock, "node-a").run_due().await.unwrap();
    // The function may run 120 s: another node asking 130 s later must
    // not take the slot over (the default lease is only 60 s).
    clock.set(due + 130_000);
    let (slot, _) = scheduler::latest_due(due, HOUR, scheduler::offset_ms(&inst, "hourly", HOUR));
    let mut tx = t.store.begin().await.unwrap();
    let run = kiln_store::RunSlot { installation_id: inst.id, module_key: "hourly", slot };
    let claim = tx.claim_scheduled_run(run, "node-b", due + 130_000, due + 200_000, 3).await.unwrap();
    assert_eq!(
        claim,
        kiln_store::RunClaim::Finished,
        "it finished; and even unfinished its lease covers 150 s"
    );
}

#[tokio::test]
async fn the_spawned_scheduler_runs_due_slots_and_stops_on_shutdown() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    let inst = install(&t.store, "00000000-0000-4000-8000-00000000a006", SITE, &[], &[]).await;
    let due = first_due(&inst, "hourly", HOUR);
    let clock = Arc::new(TestClock::new(due));
    let rec = Arc::new(Recorder::default());
    let mut settings = Settings::new("node-a");
    settings.tick = Duration::from_millis(20);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let executor: Arc<dyn Execute> = rec.clone();
    let handle = scheduler::spawn(executor, t.store.clone(), clock.clone(), settings, stopped);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !rec.runs().iter().any(|(_, m)| m == "hourly") {
        assert!(tokio::time::Instant::now() < deadline, "the scheduler never ran the due slot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle).await.unwrap().unwrap();
}

#[tokio::test]
async fn with_the_insecure_test_clock_production_installations_never_run() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    let prod = Environment::parse("production").unwrap();
    let inst = install_in(&t.store, "00000000-0000-4000-8000-00000000a007", SITE, &[], &[], &prod).await;
    let dev = install(&t.store, "00000000-0000-4000-8000-00000000a008", SITE, &[], &[]).await;
    let config = scheduler::SchedulerConfig::parse("[scheduler]\ninsecure_test_clock = true\n").unwrap();
    let clock = config.insecure_test_clock.clone().unwrap();
    let rec = Arc::new(Recorder::default());
    let executor: Arc<dyn Execute> = rec.clone();
    let s = Arc::new(Scheduler::new(executor, t.store.clone(), config.clock(), config.settings.clone()));
    clock.set(first_due(&inst, "hourly", HOUR).max(first_due(&dev, "hourly", HOUR)) + 7 * 24 * HOUR);
    s.run_due().await.unwrap();
    let runs = rec.runs();
    assert!(runs.iter().any(|(i, _)| *i == dev.id), "{runs:?}");
    assert!(runs.iter().all(|(i, _)| *i != inst.id), "production: never with the test clock: {runs:?}");
}

// ------------------------------------------------------------ the test clock route

#[tokio::test]
async fn the_test_clock_route_is_off_unless_configured_and_loopback_only() {
    let clock = Arc::new(TestClock::new(1_000_000));
    let on = scheduler::insecure_test_clock_router(Some(clock.clone()));
    let off = scheduler::insecure_test_clock_router(None);
    let (on, _stop_on) = serve(on).await;
    let (off, _stop_off) = serve(off).await;
    let body = br#"{"advanceSeconds": 90}"#;
    let r = off.send(Method::POST, "/_kiln/test/clock", &[("content-type", "application/json")], Some(body));
    assert_eq!(r.await.unwrap().status, StatusCode::NOT_FOUND);
    let r = on.send(Method::POST, "/_kiln/test/clock", &[("content-type", "application/json")], Some(body));
    let r = r.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(serde_json::from_slice::<Value>(&r.body).unwrap(), json!({ "now": 1_090_000 }));
    assert_eq!(clock.now(), 1_090_000);
    for bad in [&br#"{"advanceSeconds": -5}"#[..], br#"{"seconds": 5}"#, b"5"] {
        let r = on.send(Method::POST, "/_kiln/test/clock", &[], Some(bad)).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(clock.now(), 1_090_000);
}

#[test]
fn the_insecure_test_clock_is_off_by_default_and_settings_are_checked() {
    let none = scheduler::SchedulerConfig::parse("").unwrap();
    assert!(none.enabled && none.insecure_test_clock.is_none());
    let on = scheduler::SchedulerConfig::parse(
        "[scheduler]\ninsecure_test_clock = true\nnode_id = \"n1\"\ntick_seconds = 1\n[product]\nkind = \"x\"\n",
    )
    .unwrap();
    assert!(on.insecure_test_clock.is_some());
    assert_eq!(on.settings.node_id, "n1");
    assert_eq!(on.settings.tick, Duration::from_secs(1));
    assert!(
        scheduler::SchedulerConfig::parse("[scheduler]\ntick = 1\n").is_err(),
        "unknown keys are refused"
    );
    assert!(scheduler::SchedulerConfig::parse("[scheduler]\nlease_seconds = 1\n").is_err());
}

// ------------------------------------------------------------ product events

async fn serve(router: axum::Router) -> (HttpsClient, tokio::sync::oneshot::Sender<()>) {
    let identity = kiln_crypto::tls::self_signed(&["localhost"]).unwrap();
    let tls = kiln_crypto::tls::server_config(&identity).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kiln_server::serve(listener, tls, router, async {
        let _ = stopped.await;
    }));
    let roots = kiln_crypto::tls::client_config(&identity.cert_pem).unwrap();
    (HttpsClient::new(&addr, "localhost", roots), stop)
}

struct Events {
    client: HttpsClient,
    queue: Arc<Queue>,
    state: Arc<EventRouter>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn events(t: &TestStore, app_account: Option<&str>) -> Events {
    let source = EventSource::new(
        "acme",
        SiteUrl::parse(SITE).unwrap(),
        SECRET,
        Some(CLOUD_ID.to_owned()),
        app_account.map(str::to_owned),
    )
    .unwrap();
    let queue = Arc::new(Queue::default());
    let q: Arc<dyn Enqueue> = queue.clone();
    let state =
        Arc::new(EventRouter::new(t.store.clone(), EventsConfig::new([source]), q, Arc::new(SystemClock)));
    let (client, stop) = serve(kiln_server::events::router(state.clone())).await;
    Events { client, queue, state, _stop: stop }
}

fn now_secs() -> i64 {
    kiln_store::now_millis() / 1000
}

/// A body as the dev site sends one.
fn issue_event(event_type: &str, actor: &str, key: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "eventType": event_type,
        "atlassianId": actor,
        "issue": { "id": "10001", "key": key, "fields": { "summary": "It broke" } },
        "context": { "cloudId": CLOUD_ID },
    }))
    .unwrap()
}

async fn post(client: &HttpsClient, source: &str, body: &[u8], timestamp: i64, secret: &[u8]) -> Reply {
    let ts = timestamp.to_string();
    let signature = kiln_devsite::sign(secret, &ts, body);
    let headers = [
        ("content-type", "application/json"),
        ("x-kiln-event-timestamp", &ts),
        ("x-kiln-signature", &signature),
    ];
    client.send(Method::POST, &format!("/events/{source}"), &headers, Some(body)).await.unwrap()
}

fn answer(r: &Reply) -> Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[tokio::test]
async fn a_signed_event_is_queued_for_every_subscribed_module_whose_consent_covers_it() {
    for t in each_backend().await.unwrap() {
        let a = install(
            &t.store,
            "00000000-0000-4000-8000-00000000b001",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let b = install(
            &t.store,
            "00000000-0000-4000-8000-00000000b002",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        // Deployed with the scope, but the admin consented to less.
        let narrow = install(
            &t.store,
            "00000000-0000-4000-8000-00000000b003",
            SITE,
            &["read:jira-work"],
            &["read:jira-user"],
        )
        .await;
        // Another site's installation hears nothing.
        let elsewhere = install(
            &t.store,
            "00000000-0000-4000-8000-00000000b004",
            "https://other.example.net",
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let e = events(&t, Some(APP_ACCOUNT)).await;
        let body = issue_event("avi:jira:created:issue", "5b10ac8d82e05b22cc7d4ef5", "KAN-1");
        let r = post(&e.client, "acme", &body, now_secs(), SECRET).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}: {}", t.name, r.text());
        // on-issue and not-mine for a and b; bugs-only (expression) skipped.
        assert_eq!(answer(&r)["queued"], 4, "{}: {}", t.name, r.text());
        let got: BTreeSet<(i64, String)> = e.queue.modules().into_iter().collect();
        let want: BTreeSet<(i64, String)> = [
            (a.id, "on-issue".to_owned()),
            (a.id, "not-mine".to_owned()),
            (b.id, "on-issue".to_owned()),
            (b.id, "not-mine".to_owned()),
        ]
        .into();
        assert_eq!(got, want, "{}", t.name);
        assert!(got.iter().all(|(i, _)| *i != narrow.id && *i != elsewhere.id));
        let stats: std::collections::BTreeMap<_, _> = e.state.stats.snapshot().into_iter().collect();
        assert_eq!(stats["scope_refused"], 1, "the narrow installation");
        assert_eq!(stats["unsupported"], 2, "bugs-only, on a and b");

        // The delivered event is the site's, with Forge's extra fields.
        let delivered = e.queue.deliveries.lock().unwrap()[0].3.clone();
        assert_eq!(delivered["eventType"], "avi:jira:created:issue");
        assert_eq!(delivered["issue"]["key"], "KAN-1");
        assert_eq!(delivered["selfGenerated"], false);
        assert_eq!(delivered["context"]["cloudId"], CLOUD_ID);
        assert!(["on-issue", "not-mine"].contains(&delivered["context"]["moduleKey"].as_str().unwrap()));
    }
}

#[tokio::test]
async fn bad_signatures_stale_timestamps_and_unknown_sources_are_refused() {
    for t in each_backend().await.unwrap() {
        install(
            &t.store,
            "00000000-0000-4000-8000-00000000b011",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let e = events(&t, None).await;
        let body = issue_event("avi:jira:created:issue", "someone", "KAN-2");
        let now = now_secs();
        let wrong_key = post(&e.client, "acme", &body, now, b"not the key, but as long as it").await;
        assert_eq!(wrong_key.status, StatusCode::UNAUTHORIZED, "{}", t.name);
        assert_eq!(post(&e.client, "acme", &body, now - 301, SECRET).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&e.client, "acme", &body, now + 301, SECRET).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(post(&e.client, "nobody", &body, now, SECRET).await.status, StatusCode::NOT_FOUND);
        // Signed for one body, sent with another.
        let ts = now.to_string();
        let sig = kiln_devsite::sign(SECRET, &ts, &body);
        let other = issue_event("avi:jira:created:issue", "someone", "KAN-3");
        let headers = [("x-kiln-event-timestamp", ts.as_str()), ("x-kiln-signature", sig.as_str())];
        let r = e.client.send(Method::POST, "/events/acme", &headers, Some(&other)).await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        // No headers at all.
        let r = e.client.send(Method::POST, "/events/acme", &[], Some(&body)).await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(e.queue.modules().is_empty(), "{}: nothing refused was queued", t.name);
        let stats: std::collections::BTreeMap<_, _> = e.state.stats.snapshot().into_iter().collect();
        assert_eq!(
            (stats["bad_signature"], stats["stale"], stats["unknown_source"]),
            (2, 3, 1),
            "{}",
            t.name
        );

        // Timestamps within the window pass.
        let r = post(&e.client, "acme", &body, now - 200, SECRET).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    }
}

#[tokio::test]
async fn a_replayed_event_is_refused_and_a_repeated_delivery_id_queues_nothing_new() {
    for t in each_backend().await.unwrap() {
        install(
            &t.store,
            "00000000-0000-4000-8000-00000000b021",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let e = events(&t, None).await;
        let body = issue_event("avi:jira:updated:issue", "someone", "KAN-4");
        let now = now_secs();
        assert_eq!(post(&e.client, "acme", &body, now, SECRET).await.status, StatusCode::ACCEPTED);
        assert_eq!(
            post(&e.client, "acme", &body, now, SECRET).await.status,
            StatusCode::CONFLICT,
            "{}",
            t.name
        );
        assert_eq!(e.queue.modules().len(), 1);

        // A source that names its deliveries: the same id signed anew.
        let mut with_id: Value = serde_json::from_slice(&body).unwrap();
        with_id["deliveryId"] = json!("d-77");
        let with_id = serde_json::to_vec(&with_id).unwrap();
        assert_eq!(answer(&post(&e.client, "acme", &with_id, now, SECRET).await)["queued"], 1);
        assert_eq!(post(&e.client, "acme", &with_id, now + 1, SECRET).await.status, StatusCode::CONFLICT);
        // Another node (no memory of it) queues nothing new: the jobs key holds.
        let node2 = events(&t, None).await;
        let shared = Arc::new(EventRouter::new(
            t.store.clone(),
            EventsConfig::new([EventSource::new(
                "acme",
                SiteUrl::parse(SITE).unwrap(),
                SECRET,
                Some(CLOUD_ID.to_owned()),
                None,
            )
            .unwrap()]),
            e.queue.clone() as Arc<dyn Enqueue>,
            Arc::new(SystemClock),
        ));
        drop(node2);
        let (client2, _stop2) = serve(kiln_server::events::router(shared)).await;
        let r = post(&client2, "acme", &with_id, now + 2, SECRET).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        assert_eq!(answer(&r), json!({ "queued": 0, "duplicates": 1, "skipped": 0 }), "{}", t.name);
    }
}

#[tokio::test]
async fn ignore_self_drops_the_apps_own_changes_and_needs_to_know_the_app_account() {
    for t in each_backend().await.unwrap() {
        let a = install(
            &t.store,
            "00000000-0000-4000-8000-00000000b031",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let e = events(&t, Some(APP_ACCOUNT)).await;
        let mine = issue_event("avi:jira:created:issue", APP_ACCOUNT, "KAN-5");
        let r = post(&e.client, "acme", &mine, now_secs(), SECRET).await;
        assert_eq!(answer(&r)["queued"], 1, "{}: on-issue only: {}", t.name, r.text());
        assert_eq!(e.queue.modules(), vec![(a.id, "on-issue".to_owned())]);
        assert_eq!(e.queue.deliveries.lock().unwrap()[0].3["selfGenerated"], true);

        // A source that does not say which account is the app's: a module
        // asking for ignoreSelf gets nothing rather than everything.
        let blind = events(&t, None).await;
        let theirs = issue_event("avi:jira:created:issue", "5b10ac8d82e05b22cc7d4ef5", "KAN-6");
        let r = post(&blind.client, "acme", &theirs, now_secs(), SECRET).await;
        assert_eq!(answer(&r)["queued"], 1, "{}", r.text());
        assert_eq!(blind.queue.modules(), vec![(a.id, "on-issue".to_owned())]);
        let stats: std::collections::BTreeMap<_, _> = blind.state.stats.snapshot().into_iter().collect();
        assert_eq!(stats["unsupported"], 2, "not-mine (ignoreSelf unknowable) and bugs-only (expression)");
    }
}

#[tokio::test]
async fn events_of_another_product_another_cloud_or_no_known_scope_reach_nobody() {
    for t in each_backend().await.unwrap() {
        install(
            &t.store,
            "00000000-0000-4000-8000-00000000b041",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let e = events(&t, None).await;
        let now = now_secs();
        // Confluence events go to Confluence installations; these are Jira's.
        let page = serde_json::to_vec(&json!({
            "eventType": "avi:confluence:created:page", "atlassianId": "x",
            "content": { "id": "1" }, "context": { "cloudId": CLOUD_ID },
        }))
        .unwrap();
        assert_eq!(answer(&post(&e.client, "acme", &page, now, SECRET).await)["queued"], 0, "{}", t.name);
        // Signed by the right key but naming another cloud.
        let mut foreign: Value =
            serde_json::from_slice(&issue_event("avi:jira:created:issue", "x", "K-1")).unwrap();
        foreign["context"]["cloudId"] = json!("someone-else");
        let foreign = serde_json::to_vec(&foreign).unwrap();
        assert_eq!(post(&e.client, "acme", &foreign, now, SECRET).await.status, StatusCode::BAD_REQUEST);
        // A product may not announce Kiln's own lifecycle events.
        let forged = serde_json::to_vec(
            &json!({ "eventType": "avi:forge:installed:app", "context": { "cloudId": CLOUD_ID } }),
        )
        .unwrap();
        assert_eq!(post(&e.client, "acme", &forged, now, SECRET).await.status, StatusCode::BAD_REQUEST);
        assert_eq!(post(&e.client, "acme", b"not json", now, SECRET).await.status, StatusCode::BAD_REQUEST);
        assert!(e.queue.modules().is_empty());
    }
}

#[tokio::test]
async fn a_queue_failure_answers_503_so_the_source_sends_again() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    install(&t.store, "00000000-0000-4000-8000-00000000b051", SITE, &["read:jira-work"], &["read:jira-work"])
        .await;
    let e = events(&t, None).await;
    e.queue.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let body = issue_event("avi:jira:created:issue", "x", "KAN-9");
    let now = now_secs();
    assert_eq!(post(&e.client, "acme", &body, now, SECRET).await.status, StatusCode::SERVICE_UNAVAILABLE);
    e.queue.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    // Not remembered as seen: the same delivery sent again goes through.
    assert_eq!(post(&e.client, "acme", &body, now, SECRET).await.status, StatusCode::ACCEPTED);
}

#[test]
fn the_events_section_reads_keys_from_the_environment_only() {
    let text = "[events.sources.devsite]\nsite = \"https://127.0.0.1:9443\"\nsecret_env = \"EV_KEY\"\ncloud_id = \"c1\"\n";
    let env = |name: &str| (name == "EV_KEY").then(|| "0123456789abcdef0123".to_owned());
    let config = EventsConfig::parse(text, &env).unwrap().unwrap();
    let source = config.source("devsite").unwrap();
    assert_eq!(source.site.as_str(), "https://127.0.0.1:9443");
    assert_eq!(
        config.cloud_ids().into_iter().collect::<Vec<_>>(),
        vec![(source.site.clone(), "c1".to_owned())]
    );
    assert!(EventsConfig::parse("", &env).unwrap().is_none());
    let unset = EventsConfig::parse(text, &|_: &str| None).unwrap_err();
    assert!(unset.contains("EV_KEY"), "{unset}");
    let short = EventsConfig::parse(text, &|_: &str| Some("short".to_owned())).unwrap_err();
    assert!(short.contains("16 bytes"), "{short}");
    let typo = "[events.sources.devsite]\nsite = \"https://a.example\"\nsecret = \"inline\"\nsecret_env = \"EV_KEY\"\n";
    assert!(EventsConfig::parse(typo, &env).is_err(), "a secret in the file is an unknown key");
}

#[tokio::test]
async fn the_other_loaders_of_the_settings_file_accept_the_events_and_scheduler_sections() {
    let text = "[events.sources.devsite]\nsite = \"https://127.0.0.1:9443\"\nsecret_env = \"EV_KEY\"\n\n[scheduler]\ntick_seconds = 1\n";
    kiln_server::alerting::AlertConfig::parse(text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, text).unwrap();
    let store = Store::open_in_memory().await.unwrap();
    assert!(kiln_server::product_config::load(&path, kvs(&store)).unwrap().is_none());
    assert_eq!(scheduler::SchedulerConfig::load(&path).unwrap().settings.tick, Duration::from_secs(1));
}

// ------------------------------------------------------------ Atlassian webhooks

/// Two sources for one site: `acme` speaks Kiln's format, `jira` Jira
/// Cloud's webhooks.
async fn webhook_events(t: &TestStore) -> Events {
    let site = || SiteUrl::parse(SITE).unwrap();
    let kiln = EventSource::new("acme", site(), SECRET, Some(CLOUD_ID.to_owned()), None).unwrap();
    let jira =
        EventSource::new("jira", site(), SECRET, Some(CLOUD_ID.to_owned()), Some(APP_ACCOUNT.to_owned()))
            .unwrap()
            .with_format(EventFormat::AtlassianWebhook);
    let queue = Arc::new(Queue::default());
    let q: Arc<dyn Enqueue> = queue.clone();
    let state = Arc::new(EventRouter::new(
        t.store.clone(),
        EventsConfig::new([kiln, jira]),
        q,
        Arc::new(SystemClock),
    ));
    let (client, stop) = serve(kiln_server::events::router(state.clone())).await;
    Events { client, queue, state, _stop: stop }
}

/// A body as Jira Cloud sends one for `webhook_event` at `millis`.
fn webhook(webhook_event: &str, actor: &str, key: &str, millis: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "timestamp": millis,
        "webhookEvent": webhook_event,
        "issue_event_type_name": "issue_created",
        "user": { "accountId": actor, "displayName": "Someone" },
        "issue": {
            "id": "10001",
            "self": format!("{SITE}/rest/api/2/10001"),
            "key": key,
            "fields": { "summary": "It broke", "issuetype": { "name": "Task" } },
        },
    }))
    .unwrap()
}

/// `X-Hub-Signature` as Jira Cloud computes it: HMAC-SHA256 of the body.
fn hub_signature(secret: &[u8], body: &[u8]) -> String {
    let tag = kiln_crypto::hmac_sha256(secret, body);
    format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

async fn post_webhook(
    client: &HttpsClient,
    source: &str,
    body: &[u8],
    secret: &[u8],
    id: Option<&str>,
) -> Reply {
    let signature = hub_signature(secret, body);
    let mut headers = vec![("content-type", "application/json"), ("x-hub-signature", signature.as_str())];
    if let Some(id) = id {
        headers.push(("x-atlassian-webhook-identifier", id));
    }
    client.send(Method::POST, &format!("/events/{source}"), &headers, Some(body)).await.unwrap()
}

#[tokio::test]
async fn a_signed_atlassian_issue_created_webhook_is_queued_as_forges_created_issue() {
    for t in each_backend().await.unwrap() {
        let a = install(
            &t.store,
            "00000000-0000-4000-8000-00000000f001",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let e = webhook_events(&t).await;
        let body =
            webhook("jira:issue_created", "5b10ac8d82e05b22cc7d4ef5", "KAN-20", kiln_store::now_millis());
        let r = post_webhook(&e.client, "jira", &body, SECRET, Some("wh-1")).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}: {}", t.name, r.text());
        // on-issue and not-mine (not the app's account); bugs-only is unsupported.
        assert_eq!(answer(&r)["queued"], 2, "{}: {}", t.name, r.text());
        let got: BTreeSet<(i64, String)> = e.queue.modules().into_iter().collect();
        assert_eq!(got, [(a.id, "on-issue".to_owned()), (a.id, "not-mine".to_owned())].into(), "{}", t.name);
        let (_, module, event_id, delivered) = e.queue.deliveries.lock().unwrap()[0].clone();
        assert!(event_id.starts_with("hub:"), "the signed body names the event: {event_id}");
        assert_eq!(
            delivered,
            json!({
                "eventType": "avi:jira:created:issue",
                "issue": {
                    "id": "10001",
                    "key": "KAN-20",
                    "fields": { "summary": "It broke", "issuetype": { "name": "Task" } },
                },
                "atlassianId": "5b10ac8d82e05b22cc7d4ef5",
                "selfGenerated": false,
                "context": { "cloudId": CLOUD_ID, "moduleKey": module },
            }),
            "{}",
            t.name
        );

        // The same webhook again, or Jira's retry of it (same identifier), is a replay.
        assert_eq!(
            post_webhook(&e.client, "jira", &body, SECRET, Some("wh-1")).await.status,
            StatusCode::CONFLICT
        );
        let retry =
            webhook("jira:issue_created", "5b10ac8d82e05b22cc7d4ef5", "KAN-20", kiln_store::now_millis() + 1);
        assert_eq!(
            post_webhook(&e.client, "jira", &retry, SECRET, Some("wh-1")).await.status,
            StatusCode::CONFLICT
        );

        // An update carries its changelog; the app's own change is selfGenerated
        // (and not-mine, which has ignoreSelf, does not subscribe to updates anyway).
        let mut updated: Value = serde_json::from_slice(&webhook(
            "jira:issue_updated",
            APP_ACCOUNT,
            "KAN-20",
            kiln_store::now_millis(),
        ))
        .unwrap();
        let changelog = json!({ "id": "10100", "items": [{ "field": "summary", "fromString": "It broke", "toString": "It works" }] });
        updated["changelog"] = changelog.clone();
        let updated = serde_json::to_vec(&updated).unwrap();
        let r = post_webhook(&e.client, "jira", &updated, SECRET, None).await;
        assert_eq!(answer(&r)["queued"], 1, "{}: {}", t.name, r.text());
        let last = e.queue.deliveries.lock().unwrap().last().unwrap().3.clone();
        assert_eq!(last["eventType"], "avi:jira:updated:issue");
        assert_eq!(last["changelog"], changelog);
        assert_eq!(last["selfGenerated"], true);
    }
}

#[tokio::test]
async fn forged_stale_and_unknown_atlassian_webhooks_queue_nothing() {
    for t in each_backend().await.unwrap() {
        install(
            &t.store,
            "00000000-0000-4000-8000-00000000f002",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let e = webhook_events(&t).await;
        let now = kiln_store::now_millis();
        let body = webhook("jira:issue_created", "someone", "KAN-21", now);
        let wrong_key = post_webhook(&e.client, "jira", &body, b"not the key, but as long as it", None).await;
        assert_eq!(wrong_key.status, StatusCode::UNAUTHORIZED, "{}", t.name);
        // Signed for one body, sent with another.
        let sig = hub_signature(SECRET, &body);
        let other = webhook("jira:issue_created", "someone", "KAN-22", now);
        let headers = [("x-hub-signature", sig.as_str())];
        let r = e.client.send(Method::POST, "/events/jira", &headers, Some(&other)).await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        let r = e.client.send(Method::POST, "/events/jira", &[], Some(&body)).await.unwrap();
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "unsigned");
        // Correctly signed, but from outside the window (or with no time at all).
        for at in [now - 301_000, now + 301_000] {
            let stale = webhook("jira:issue_created", "someone", "KAN-23", at);
            assert_eq!(
                post_webhook(&e.client, "jira", &stale, SECRET, None).await.status,
                StatusCode::UNAUTHORIZED
            );
        }
        let mut timeless: Value = serde_json::from_slice(&body).unwrap();
        timeless.as_object_mut().unwrap().remove("timestamp");
        let timeless = serde_json::to_vec(&timeless).unwrap();
        assert_eq!(
            post_webhook(&e.client, "jira", &timeless, SECRET, None).await.status,
            StatusCode::UNAUTHORIZED
        );
        let stats: std::collections::BTreeMap<_, _> = e.state.stats.snapshot().into_iter().collect();
        assert_eq!((stats["bad_signature"], stats["stale"]), (3, 3), "{}", t.name);

        // Authentic, but of a kind Forge has no event for: 202 (Jira must
        // not retry it), nothing queued, counted.
        for kind in ["worklog_created", "comment_updated", "jira:something_new"] {
            let hook = webhook(kind, "someone", "KAN-24", now);
            let r = post_webhook(&e.client, "jira", &hook, SECRET, None).await;
            assert_eq!(r.status, StatusCode::ACCEPTED, "{}: {kind}: {}", t.name, r.text());
            assert_eq!(answer(&r), json!({ "queued": 0, "duplicates": 0, "skipped": 0 }));
        }
        assert!(e.queue.modules().is_empty(), "{}: nothing refused or unknown was queued", t.name);
        let stats: std::collections::BTreeMap<_, _> = e.state.stats.snapshot().into_iter().collect();
        assert_eq!(stats["untranslated"], 3, "{}", t.name);
    }
}

#[tokio::test]
async fn a_source_takes_only_its_own_format() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    install(&t.store, "00000000-0000-4000-8000-00000000f003", SITE, &["read:jira-work"], &["read:jira-work"])
        .await;
    let e = webhook_events(&t).await;
    // Jira's webhook, signed the Atlassian way with the right key, sent to
    // the Kiln-format source.
    let hook = webhook("jira:issue_created", "someone", "KAN-25", kiln_store::now_millis());
    assert_eq!(post_webhook(&e.client, "acme", &hook, SECRET, None).await.status, StatusCode::UNAUTHORIZED);
    // A Kiln-format event, signed Kiln's way, sent to the Atlassian source.
    let event = issue_event("avi:jira:created:issue", "someone", "KAN-26");
    assert_eq!(post(&e.client, "jira", &event, now_secs(), SECRET).await.status, StatusCode::UNAUTHORIZED);
    assert!(e.queue.modules().is_empty());
    // Each in its own format goes through.
    assert_eq!(post(&e.client, "acme", &event, now_secs(), SECRET).await.status, StatusCode::ACCEPTED);
    assert_eq!(post_webhook(&e.client, "jira", &hook, SECRET, None).await.status, StatusCode::ACCEPTED);
}

#[test]
fn the_events_section_reads_the_source_format() {
    let env = |name: &str| (name == "EV_KEY").then(|| "0123456789abcdef0123".to_owned());
    let source = |format: &str| {
        format!(
            "[events.sources.jira]\nsite = \"https://acme.atlassian.net\"\nsecret_env = \"EV_KEY\"\n{format}"
        )
    };
    let default = EventsConfig::parse(&source(""), &env).unwrap().unwrap();
    assert_eq!(
        default.source("jira").unwrap().format,
        EventFormat::Kiln,
        "existing settings keep their meaning"
    );
    let kiln = EventsConfig::parse(&source("format = \"kiln\"\n"), &env).unwrap().unwrap();
    assert_eq!(kiln.source("jira").unwrap().format, EventFormat::Kiln);
    let hooks = EventsConfig::parse(&source("format = \"atlassian-webhook\"\n"), &env).unwrap().unwrap();
    assert_eq!(hooks.source("jira").unwrap().format, EventFormat::AtlassianWebhook);
    for bad in
        ["format = \"github\"\n", "format = \"Atlassian-Webhook\"\n", "format = 1\n", "formats = \"kiln\"\n"]
    {
        assert!(EventsConfig::parse(&source(bad), &env).is_err(), "{bad}");
    }
}

// ------------------------------------------------------------ lifecycle events

#[tokio::test]
async fn installs_and_major_upgrades_reach_lifecycle_modules_once_across_nodes() {
    for t in each_backend().await.unwrap() {
        let app = "00000000-0000-4000-8000-00000000c001";
        let inst = install(&t.store, app, SITE, &[], &[]).await;
        let queue = Arc::new(Queue::default());
        let q: Arc<dyn Enqueue> = queue.clone();
        let mut settings = LifecycleSettings::default();
        settings.cloud_ids.insert(SiteUrl::parse(SITE).unwrap(), CLOUD_ID.to_owned());
        let a = LifecyclePoller::new(t.store.clone(), q.clone(), settings.clone());
        let b = LifecyclePoller::new(open_locator(&t.locator).await.unwrap(), q, settings);

        let (ra, rb) = tokio::join!(a.poll_once(1), b.poll_once(1));
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.queued + rb.queued, 1, "{}: {ra:?} {rb:?}", t.name);
        let (_, module, event_id, body) = queue.deliveries.lock().unwrap()[0].clone();
        assert_eq!(module, "lifecycle");
        assert!(event_id.starts_with("lifecycle:"));
        assert_eq!(
            body,
            json!({
                "eventType": "avi:forge:installed:app",
                "id": inst.public_id.as_str(),
                "app": { "id": app, "version": "1.0.0" },
                "environment": { "id": "development" },
                "context": { "moduleKey": "lifecycle", "cloudId": CLOUD_ID },
            })
        );

        // A minor roll-out sends nothing; a major upgrade sends upgraded:app.
        let source = manifest(app, &[]);
        let (minor, _) = version(&t.store, &source, Version { major: 1, minor: 1 }).await;
        let (major, _) = version(&t.store, &source, Version { major: 2, minor: 0 }).await;
        let mut tx = t.store.begin().await.unwrap();
        tx.record_event(inst.id, EventKind::AutoUpgraded, Some(inst.version_id), minor, &json!({}))
            .await
            .unwrap();
        tx.record_event(inst.id, EventKind::Upgraded, Some(minor), major, &json!({})).await.unwrap();
        tx.record_event(inst.id, EventKind::RolledBack, Some(major), minor, &json!({})).await.unwrap();
        tx.commit().await.unwrap();
        let report = a.poll_once(2).await.unwrap();
        assert_eq!((report.read, report.queued), (3, 1), "{}", t.name);
        let last = queue.deliveries.lock().unwrap().last().unwrap().3.clone();
        assert_eq!(last["eventType"], "avi:forge:upgraded:app");
        assert_eq!(last["app"]["version"], "2.0.0");
        // Nothing new: nothing queued, by either node.
        assert_eq!(a.poll_once(3).await.unwrap(), Default::default());
        assert_eq!(b.poll_once(3).await.unwrap(), Default::default());
        assert_eq!(queue.modules().len(), 2);
    }
}

#[tokio::test]
async fn a_lifecycle_poll_that_cannot_queue_leaves_the_event_for_the_next_one() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    install(&t.store, "00000000-0000-4000-8000-00000000c002", SITE, &[], &[]).await;
    let queue = Arc::new(Queue::default());
    let poller = LifecyclePoller::new(t.store.clone(), queue.clone(), LifecycleSettings::default());
    queue.broken.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(poller.poll_once(1).await.is_err());
    queue.broken.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(poller.poll_once(2).await.unwrap().queued, 1);
}

// ------------------------------------------------------------ the real jobs table

fn kvs(store: &Store) -> Arc<kiln_kvs::Kvs> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([4u8; 32]);
    let provider = Arc::new(kiln_crypto::keys::EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap());
    Arc::new(kiln_kvs::Kvs::new(store.clone(), provider))
}

#[tokio::test]
async fn product_and_lifecycle_events_land_in_the_jobs_table_once() {
    for t in each_backend().await.unwrap() {
        let a = install(
            &t.store,
            "00000000-0000-4000-8000-00000000d001",
            SITE,
            &["read:jira-work"],
            &["read:jira-work"],
        )
        .await;
        let jobs: Arc<dyn Enqueue> =
            Arc::new(kiln_server::events::JobsQueue::new(t.store.clone(), kvs(&t.store)));
        let config = || {
            EventsConfig::new([EventSource::new(
                "acme",
                SiteUrl::parse(SITE).unwrap(),
                SECRET,
                Some(CLOUD_ID.to_owned()),
                None,
            )
            .unwrap()])
        };
        let node_a =
            Arc::new(EventRouter::new(t.store.clone(), config(), jobs.clone(), Arc::new(SystemClock)));
        let other = open_locator(&t.locator).await.unwrap();
        let jobs_b: Arc<dyn Enqueue> =
            Arc::new(kiln_server::events::JobsQueue::new(other.clone(), kvs(&other)));
        let node_b = Arc::new(EventRouter::new(other, config(), jobs_b, Arc::new(SystemClock)));
        let (client_a, _stop_a) = serve(kiln_server::events::router(node_a)).await;
        let (client_b, _stop_b) = serve(kiln_server::events::router(node_b)).await;

        let mut body: Value =
            serde_json::from_slice(&issue_event("avi:jira:created:issue", "x", "KAN-10")).unwrap();
        body["deliveryId"] = json!("delivery-10");
        let body = serde_json::to_vec(&body).unwrap();
        let now = now_secs();
        let (ra, rb) = tokio::join!(
            post(&client_a, "acme", &body, now, SECRET),
            post(&client_b, "acme", &body, now, SECRET)
        );
        assert_eq!((ra.status, rb.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED), "{}", t.name);
        let queued = answer(&ra)["queued"].as_u64().unwrap() + answer(&rb)["queued"].as_u64().unwrap();
        assert_eq!(queued, 1, "{}: one of the two nodes queued it: {} {}", t.name, ra.text(), rb.text());
        let mut tx = t.store.begin_read().await.unwrap();
        let row = tx
            .job_by_event(a.id, kiln_store::JobKind::Trigger, "on-issue", "delivery:delivery-10")
            .await
            .unwrap()
            .unwrap();
        assert!(!row.body.windows(6).any(|w| w == b"KAN-10"), "the body is sealed");
        tx.commit().await.unwrap();

        let poller = LifecyclePoller::new(t.store.clone(), jobs.clone(), LifecycleSettings::default());
        assert_eq!(poller.poll_once(1).await.unwrap().queued, 1);
        // A second node whose cursor read lags (as if it polled at the same
        // moment) queues it again: the jobs table drops the copy.
        t.exec_raw("UPDATE trigger_cursors SET seen_id = 0 WHERE name = 'lifecycle'").await.unwrap();
        let again = poller.poll_once(2).await.unwrap();
        assert_eq!((again.queued, again.duplicates), (0, 1), "{}", t.name);
        let mut tx = t.store.begin_read().await.unwrap();
        let events = tx.events(a.id).await.unwrap();
        let installed = format!("lifecycle:{}", events[0].id);
        assert!(
            tx.job_by_event(a.id, kiln_store::JobKind::Trigger, "lifecycle", &installed)
                .await
                .unwrap()
                .is_some()
        );
    }
}

// ------------------------------------------------------------ with the dev site

#[tokio::test]
async fn an_issue_created_on_the_dev_site_reaches_the_subscribed_module() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    // Kiln's event endpoint, on loopback.
    let kiln_identity = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let kiln_port = listener.local_addr().unwrap().port();
    // The dev site, posting its events there.
    let site_identity = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let site_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sink = kiln_devsite::EventSink {
        url: format!("https://127.0.0.1:{kiln_port}/events/devsite"),
        secret: SECRET.to_vec(),
        roots_pem: kiln_identity.cert_pem.clone(),
    };
    let config = kiln_devsite::DevSiteConfig { seed: kiln_devsite::Seed::example(), events: Some(sink) };
    let tls = kiln_crypto::tls::server_config(&site_identity).unwrap();
    let site = kiln_devsite::start(site_listener, tls, config).await.unwrap();

    let inst = install(
        &t.store,
        "00000000-0000-4000-8000-00000000e001",
        site.base_url(),
        &["read:jira-work"],
        &["read:jira-work"],
    )
    .await;
    let source = EventSource::new(
        "devsite",
        SiteUrl::parse(site.base_url()).unwrap(),
        SECRET,
        Some(site.cloud_id().to_owned()),
        Some(kiln_devsite::KILN_APP.to_owned()),
    )
    .unwrap();
    let queue = Arc::new(Queue::default());
    let q: Arc<dyn Enqueue> = queue.clone();
    let state =
        Arc::new(EventRouter::new(t.store.clone(), EventsConfig::new([source]), q, Arc::new(SystemClock)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let kiln_tls = kiln_crypto::tls::server_config(&kiln_identity).unwrap();
    tokio::spawn(kiln_server::serve(listener, kiln_tls, kiln_server::events::router(state), async {
        let _ = stopped.await;
    }));

    // Bob creates an issue on the site (Data Center API, his token).
    let roots = kiln_crypto::tls::client_config(&site_identity.cert_pem).unwrap();
    let client = HttpsClient::new(&site.addr().to_string(), "127.0.0.1", roots);
    let issue = json!({ "fields": { "project": { "key": "KILN" }, "summary": "From the site", "issuetype": { "name": "Task" } } });
    let body = serde_json::to_vec(&issue).unwrap();
    let r = client
        .send(
            Method::POST,
            "/jira/rest/api/2/issue",
            &[("authorization", "Bearer dev-pat-bob"), ("content-type", "application/json")],
            Some(&body),
        )
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let key = answer(&r)["key"].as_str().unwrap().to_owned();

    let deliveries = site.wait_for_deliveries(1, Duration::from_secs(20)).await;
    assert_eq!(deliveries[0].status, Some(202), "{deliveries:?}");
    // on-issue, and not-mine (Bob is not the app).
    let got: BTreeSet<(i64, String)> = queue.modules().into_iter().collect();
    assert_eq!(got, [(inst.id, "on-issue".to_owned()), (inst.id, "not-mine".to_owned())].into());
    let body = queue.deliveries.lock().unwrap()[0].3.clone();
    assert_eq!(body["issue"]["key"], key.as_str());
    assert_eq!(body["atlassianId"], kiln_devsite::BOB);
    assert_eq!(body["context"]["cloudId"], site.cloud_id());
    let _ = stop.send(());
}
