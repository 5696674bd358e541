//! Product events in, trigger deliveries out: `POST /events/{source}`
//! takes a signed event from a product site (Jira, Confluence, or
//! `kiln devsite`) and queues one delivery for every trigger module, of
//! every installation on that site, that subscribed to it and may see it.
//!
//! - **Sources.** `[events.sources.<name>]` in the settings file names a
//!   site, the environment variable holding the HMAC key it signs with
//!   (never the key itself), optionally its cloud id and the account its
//!   apps act as. The path names the source, so the key that checks a
//!   request is the one for the site it speaks for: a site cannot post
//!   events for another site's installations.
//! - **Authenticity.** `X-Kiln-Signature: sha256=<hex HMAC-SHA256(key,
//!   timestamp "." body)>` with the timestamp (Unix seconds) in
//!   `X-Kiln-Event-Timestamp`, as `kiln devsite` sends them. The tag is
//!   compared in constant time; a timestamp more than [`MAX_SKEW`] from
//!   this node's clock is refused, so a captured request is useless after
//!   five minutes. Refusals are counted ([`EventStats`]) and logged with
//!   the source and peer; the audit trail has no event for them.
//! - **Formats.** A source says which of two it speaks (`format`): `kiln`
//!   (the default, above) or `atlassian-webhook`, a Jira Cloud admin
//!   webhook registered with the source's key as its secret, signed and
//!   translated into Forge's event shape (`events/atlassian.rs`). Either
//!   way the event then takes the same replay check and routing below.
//! - **Replays.** Each event gets an id: the body's `deliveryId` when the
//!   source sends one, else the digest of the signed bytes (timestamp and
//!   body). A second request with an id this node saw within the window
//!   is refused with 409. Across nodes the jobs table's unique key on
//!   (installation, trigger, module, event id) drops the second copy, so a
//!   replay sent to another node queues nothing either. (A source that
//!   re-signs a retry with a new timestamp and sends no `deliveryId` makes
//!   a new event: delivery is at least once.)
//! - **Routing.** The installations of the event's product (`avi:jira*`
//!   and `avi:jsm-entity` → Jira, `avi:confluence` → Confluence) on the
//!   source's site whose *current* version has a `trigger` module listing
//!   the event type. The installation's *consented* scopes must cover the
//!   event's scopes as `kiln_policy::events` lists them (Forge's table);
//!   if they do not, nothing is delivered to that installation and the
//!   refusal is counted and logged. An event type missing from the table
//!   is delivered to nobody.
//! - **Filters.** `ignoreSelf` drops events whose actor (`atlassianId`) is
//!   the account the source's apps act as (`app_account_id`: the service
//!   account of the site's OAuth client, shared by every Kiln app on the
//!   site, so "self" means "any Kiln app" there). Without
//!   `app_account_id` Kiln cannot tell, and a module asking for
//!   `ignoreSelf` gets nothing, with an error logged. The delivered event
//!   carries `selfGenerated` the same way. `appIsLicensed` counts as met
//!   (Kiln has no licensing).
//!
//! Not supported, so such a module receives nothing and each event that
//! would have reached it is logged as an error and counted (never
//! delivered unfiltered, never dropped in silence): a filter `expression`
//! (Jira expressions), `payload` trimming, and `endpoint` (Forge Remote)
//! targets.
//!
//! The answer is 202 with `{"queued": n, "duplicates": d, "skipped": s}`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use kiln_crypto::Sha256;
use kiln_manifest::{EventFilter, Target, Trigger};
use kiln_store::{InstallationRecord, Millis, Store, StoreError, VersionRecord};
use kiln_types::{Product, SiteUrl};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::alerting::ConfigError;
use crate::runner::BoxFuture;
use crate::scheduler::Clock;

mod atlassian;

/// How far an event's timestamp may be from this node's clock.
pub const MAX_SKEW: Duration = Duration::from_secs(300);

/// Largest event body taken. Product events are a few kilobytes; this
/// bounds what one unauthenticated request makes the node buffer and hash.
pub const MAX_EVENT_BODY: usize = 1024 * 1024;

/// Event ids remembered for replay refusal; the oldest go first beyond
/// this, and the jobs table's unique key still drops what they let by.
pub const MAX_REMEMBERED_DELIVERIES: usize = 100_000;

/// Longest `deliveryId` taken from a body.
pub const MAX_DELIVERY_ID_LEN: usize = 128;

/// Longest event type name (as the manifest allows).
const MAX_EVENT_TYPE_LEN: usize = kiln_manifest::MAX_EVENT_TYPE_LEN;

/// The shortest HMAC key a source may use.
pub const MIN_SECRET_LEN: usize = 16;

// ------------------------------------------------------------ settings

/// `[events]` in the settings file:
///
/// ```toml
/// [events.sources.devsite]              # POST /events/devsite
/// site = "https://127.0.0.1:8443"       # the site installations name
/// secret_env = "KILN_EVENTS_SECRET"     # the variable holding the HMAC key
/// cloud_id = "..."                      # optional: the body's context.cloudId must match
/// app_account_id = "557058:kiln-app"    # optional: who "self" is for ignoreSelf
/// format = "kiln"                       # or "atlassian-webhook" (Jira Cloud's own webhooks)
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    #[serde(default)]
    pub sources: BTreeMap<String, SourceSection>,
}

/// One `[events.sources.<name>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSection {
    pub site: String,
    pub secret_env: String,
    pub cloud_id: Option<String>,
    pub app_account_id: Option<String>,
    /// Absent means `kiln`, so settings files written before there was a
    /// choice keep meaning what they meant.
    #[serde(default)]
    pub format: EventFormat,
}

/// How a source signs and shapes its events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventFormat {
    /// Forge-shaped events signed with `X-Kiln-Signature` over timestamp
    /// and body, as `kiln devsite` sends them.
    #[default]
    Kiln,
    /// Jira Cloud webhooks (`webhookEvent`, `X-Hub-Signature` over the
    /// body), translated into Forge's events (`events/atlassian.rs`).
    AtlassianWebhook,
}

/// The sources, checked, with their keys read from the environment.
#[derive(Debug, Clone, Default)]
pub struct EventsConfig {
    sources: BTreeMap<String, EventSource>,
}

/// A site allowed to post events.
#[derive(Clone)]
pub struct EventSource {
    pub name: String,
    pub site: SiteUrl,
    pub cloud_id: Option<String>,
    /// The account Kiln's apps act as on this site, for `ignoreSelf`.
    pub app_account_id: Option<String>,
    pub format: EventFormat,
    secret: Arc<Vec<u8>>,
}

impl std::fmt::Debug for EventSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSource")
            .field("name", &self.name)
            .field("site", &self.site)
            .field("cloud_id", &self.cloud_id)
            .field("app_account_id", &self.app_account_id)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl EventSource {
    /// A source signing with `secret` (at least [`MIN_SECRET_LEN`] bytes).
    pub fn new(
        name: &str,
        site: SiteUrl,
        secret: &[u8],
        cloud_id: Option<String>,
        app_account_id: Option<String>,
    ) -> Result<EventSource, String> {
        let plain = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !plain {
            return Err(format!("events source name {name:?} must be 1 to 64 of a-z, 0-9, - and _"));
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!("events.sources.{name}: the key must hold at least {MIN_SECRET_LEN} bytes"));
        }
        if cloud_id.as_deref().is_some_and(str::is_empty)
            || app_account_id.as_deref().is_some_and(str::is_empty)
        {
            return Err(format!(
                "events.sources.{name}: cloud_id and app_account_id must not be empty when set"
            ));
        }
        Ok(EventSource {
            name: name.to_owned(),
            site,
            cloud_id,
            app_account_id,
            format: EventFormat::Kiln,
            secret: Arc::new(secret.to_vec()),
        })
    }

    /// The same source speaking `format` (a new source speaks `kiln`).
    #[must_use]
    pub fn with_format(mut self, format: EventFormat) -> EventSource {
        self.format = format;
        self
    }
}

impl EventsConfig {
    pub fn new(sources: impl IntoIterator<Item = EventSource>) -> Self {
        EventsConfig { sources: sources.into_iter().map(|s| (s.name.clone(), s)).collect() }
    }

    /// Read `[events]` from the settings file at `path`; `None` without
    /// one. A source whose key variable is unset or short is an error:
    /// the server must not start believing it receives events it refuses.
    pub fn load(path: &Path) -> Result<Option<EventsConfig>, ConfigError> {
        let fail = |message: String| ConfigError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        EventsConfig::parse(&text, &|name: &str| std::env::var(name).ok()).map_err(fail)
    }

    /// Only `[events]` is read here, its keys checked; `env` looks up
    /// the key variables.
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<EventsConfig>, String> {
        let mut file: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let Some(section) = file.remove("events") else { return Ok(None) };
        let section =
            EventsSection::deserialize(section).map_err(|e| format!("[events]: {}", e.message()))?;
        let mut sources = Vec::new();
        for (name, s) in section.sources {
            let site = SiteUrl::parse(&s.site).map_err(|e| format!("events.sources.{name}.site: {e}"))?;
            let secret = env(&s.secret_env).ok_or_else(|| {
                format!("events.sources.{name}.secret_env names {}, which is not set", s.secret_env)
            })?;
            let source = EventSource::new(&name, site, secret.as_bytes(), s.cloud_id, s.app_account_id)?;
            sources.push(source.with_format(s.format));
        }
        Ok(Some(EventsConfig::new(sources)))
    }

    pub fn source(&self, name: &str) -> Option<&EventSource> {
        self.sources.get(name)
    }

    /// Each source's site and cloud id, for the scheduler's and the
    /// lifecycle poller's `context.cloudId`.
    pub fn cloud_ids(&self) -> BTreeMap<SiteUrl, String> {
        self.sources.values().filter_map(|s| Some((s.site.clone(), s.cloud_id.clone()?))).collect()
    }
}

// ------------------------------------------------------------ the queue seam

/// One delivery to queue: the event `body` for the trigger module
/// `module_key` of `installation`.
#[derive(Debug, Clone, Copy)]
pub struct TriggerDelivery<'a> {
    pub installation: &'a InstallationRecord,
    pub module_key: &'a str,
    /// Unique per installation and module: a second delivery of the same
    /// id is dropped.
    pub event_id: &'a str,
    pub body: &'a Value,
    pub run_at: Millis,
}

/// Where deliveries go: the durable jobs table in the server
/// ([`JobsQueue`]), a recording fake in tests.
pub trait Enqueue: Send + Sync {
    /// `Ok(false)` when the event was already queued for that module.
    fn enqueue<'a>(&'a self, delivery: TriggerDelivery<'a>) -> BoxFuture<'a, Result<bool, String>>;
}

/// The server's queue: each delivery becomes a `trigger` row in the jobs
/// table ([`crate::jobs::enqueue`]), its body sealed under the
/// installation's data key; the jobs worker calls the module's function
/// with the body as the event.
pub struct JobsQueue {
    store: Store,
    kvs: Arc<kiln_kvs::Kvs>,
}

impl std::fmt::Debug for JobsQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsQueue").finish_non_exhaustive()
    }
}

impl JobsQueue {
    pub fn new(store: Store, kvs: Arc<kiln_kvs::Kvs>) -> Self {
        JobsQueue { store, kvs }
    }
}

impl Enqueue for JobsQueue {
    fn enqueue<'a>(&'a self, d: TriggerDelivery<'a>) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            // Derived, not random: the same delivery always gets the same
            // job id, whichever node queues it.
            let job =
                Sha256::of(format!("{}\n{}\n{}", d.installation.id, d.module_key, d.event_id).as_bytes());
            let job_id = format!("trigger-{}", job.short());
            crate::jobs::enqueue(
                &self.store,
                &self.kvs,
                d.installation,
                crate::jobs::JobKind::Trigger,
                d.module_key,
                &job_id,
                d.event_id,
                d.body,
                d.run_at,
            )
            .await
            .map_err(|e| e.to_string())
        })
    }
}

// ------------------------------------------------------------ counters

/// What happened to the events a node received, for metrics.
#[derive(Debug, Default)]
pub struct EventStats {
    pub accepted: AtomicU64,
    pub unknown_source: AtomicU64,
    pub bad_signature: AtomicU64,
    pub stale: AtomicU64,
    pub replayed: AtomicU64,
    pub malformed: AtomicU64,
    /// Deliveries queued.
    pub queued: AtomicU64,
    /// Deliveries the jobs table already had.
    pub duplicates: AtomicU64,
    /// Installations skipped because their consent lacks the event's scopes.
    pub scope_refused: AtomicU64,
    /// Events no installation may receive: not in the scope table.
    pub unmapped: AtomicU64,
    /// Modules skipped for a filter or target Kiln does not support.
    pub unsupported: AtomicU64,
    /// Modules skipped by `ignoreSelf`.
    pub ignored_self: AtomicU64,
    /// Requests answered 503 (the store or the queue failed).
    pub failed: AtomicU64,
    /// Authentic Atlassian webhooks of a kind Kiln has no Forge event for:
    /// answered 202 (so Jira does not retry them), nothing queued.
    pub untranslated: AtomicU64,
}

impl EventStats {
    /// `(outcome, count)` for each counter.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("accepted", get(&self.accepted)),
            ("unknown_source", get(&self.unknown_source)),
            ("bad_signature", get(&self.bad_signature)),
            ("stale", get(&self.stale)),
            ("replayed", get(&self.replayed)),
            ("malformed", get(&self.malformed)),
            ("queued", get(&self.queued)),
            ("duplicate", get(&self.duplicates)),
            ("scope_refused", get(&self.scope_refused)),
            ("unmapped", get(&self.unmapped)),
            ("unsupported", get(&self.unsupported)),
            ("ignored_self", get(&self.ignored_self)),
            ("failed", get(&self.failed)),
            ("untranslated", get(&self.untranslated)),
        ]
    }

    /// The Prometheus text exposition of [`EventStats::snapshot`].
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP kiln_product_events_total Product events received and trigger deliveries, by outcome."
        );
        let _ = writeln!(out, "# TYPE kiln_product_events_total counter");
        for (outcome, n) in self.snapshot() {
            let _ = writeln!(out, "kiln_product_events_total{{outcome=\"{outcome}\"}} {n}");
        }
        out
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

// ------------------------------------------------------------ the router

/// What receiving events needs.
pub struct EventRouter {
    store: Store,
    config: EventsConfig,
    queue: Arc<dyn Enqueue>,
    clock: Arc<dyn Clock>,
    seen: Mutex<Seen>,
    versions: VersionCache,
    pub stats: Arc<EventStats>,
}

impl std::fmt::Debug for EventRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRouter").field("config", &self.config).finish_non_exhaustive()
    }
}

impl EventRouter {
    /// `clock` judges timestamps: the system clock in `kiln serve`, even
    /// with the scheduler's test clock on (sources sign with real time).
    pub fn new(store: Store, config: EventsConfig, queue: Arc<dyn Enqueue>, clock: Arc<dyn Clock>) -> Self {
        EventRouter {
            store,
            config,
            queue,
            clock,
            seen: Mutex::default(),
            versions: VersionCache::default(),
            stats: Arc::default(),
        }
    }
}

/// `POST /events/{source}`, with its body limit. Merge it into the
/// server's router; it needs no admin authentication (the signature is
/// the authentication).
pub fn router(state: Arc<EventRouter>) -> Router {
    Router::new()
        .route("/events/{source}", axum::routing::post(receive))
        .layer(DefaultBodyLimit::max(MAX_EVENT_BODY))
        .with_state(state)
}

/// One fixed status and public message per refusal; the detail goes to
/// the log only.
fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn refuse(status: StatusCode, message: &str) -> Response {
    reply(status, json!({ "error": message }))
}

async fn receive(
    State(state): State<Arc<EventRouter>>,
    UrlPath(source): UrlPath<String>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let peer = peer.map_or_else(|| "unknown".to_owned(), |Extension(ConnectInfo(a))| a.ip().to_string());
    let stats = state.stats.clone();
    let Some(source) = state.config.source(&source) else {
        bump(&stats.unknown_source);
        return refuse(StatusCode::NOT_FOUND, "no such event source");
    };
    let now = state.clock.now();
    let accepted = match source.format {
        EventFormat::Kiln => accept_kiln(source, &headers, &body, now),
        EventFormat::AtlassianWebhook => atlassian::accept(source, &headers, &body, now),
    };
    let (event, event_id, also_seen) = match accepted {
        Ok(Accepted::Event { event, event_id, also_seen }) => (event, event_id, also_seen),
        Ok(Accepted::Untranslated { webhook_event }) => {
            // 202, not an error: Jira retries what it sees fail, and a kind
            // Kiln cannot name is not going to become deliverable.
            bump(&stats.untranslated);
            tracing::warn!(
                source = %source.name,
                webhook_event,
                "Atlassian webhook not delivered: Kiln has no Forge event for its kind"
            );
            return reply(StatusCode::ACCEPTED, json!({ "queued": 0, "duplicates": 0, "skipped": 0 }));
        }
        Err(Rejected::Refused(refusal)) => {
            bump(match refusal {
                Refusal::Stale => &stats.stale,
                Refusal::Signature => &stats.bad_signature,
            });
            tracing::warn!(source = %source.name, peer = %peer, reason = refusal.as_str(), "product event refused");
            return refuse(StatusCode::UNAUTHORIZED, "the event's signature or timestamp is not valid");
        }
        Err(Rejected::Malformed(detail)) => {
            bump(&stats.malformed);
            tracing::warn!(source = %source.name, detail, "product event malformed");
            return refuse(StatusCode::BAD_REQUEST, "the event is not a product event Kiln can read");
        }
    };
    let replayed = {
        let mut seen = lock(&state.seen);
        seen.contains(&event_id, now) || also_seen.as_deref().is_some_and(|id| seen.contains(id, now))
    };
    if replayed {
        bump(&stats.replayed);
        tracing::warn!(source = %source.name, peer = %peer, "product event replayed within the window; refused");
        return refuse(StatusCode::CONFLICT, "this event was already received");
    }
    bump(&stats.accepted);
    match route(&state, source, &event, &event_id, now).await {
        Ok(outcome) => {
            let mut seen = lock(&state.seen);
            seen.insert(event_id, now);
            if let Some(id) = also_seen {
                seen.insert(id, now);
            }
            drop(seen);
            reply(
                StatusCode::ACCEPTED,
                json!({ "queued": outcome.queued, "duplicates": outcome.duplicates, "skipped": outcome.skipped }),
            )
        }
        Err(e) => {
            bump(&stats.failed);
            tracing::error!(source = %source.name, event = %event.event_type, error = %e, "product event could not be queued");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "the event could not be queued; send it again")
        }
    }
}

/// A request that passed its format's checks.
#[derive(Debug)]
enum Accepted {
    /// An event to route, queued under `event_id`; `also_seen` is one more
    /// id that marks a replay (an Atlassian webhook's identifier).
    Event { event: ProductEvent, event_id: String, also_seen: Option<String> },
    /// An authentic webhook of a kind that has no Forge event.
    Untranslated { webhook_event: String },
}

/// Why a request is not taken: 401 or 400.
#[derive(Debug)]
enum Rejected {
    Refused(Refusal),
    Malformed(String),
}

/// Kiln's own format: check, then read the body as a Forge event.
fn accept_kiln(
    source: &EventSource,
    headers: &HeaderMap,
    body: &[u8],
    now: Millis,
) -> Result<Accepted, Rejected> {
    let verified = verify(source, headers, body, now).map_err(Rejected::Refused)?;
    let event = ProductEvent::parse(&verified, body, source).map_err(Rejected::Malformed)?;
    let event_id = match &event.delivery_id {
        Some(id) => format!("delivery:{id}"),
        None => format!("sig:{}", verified.digest.hex()),
    };
    Ok(Accepted::Event { event, event_id, also_seen: None })
}

#[derive(Debug, Clone, Copy)]
enum Refusal {
    Stale,
    Signature,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Stale => "timestamp missing or outside the window",
            Refusal::Signature => "signature missing or wrong",
        }
    }
}

/// Proof that a request's signature checked out; only [`verify`] and
/// `atlassian::verify` make one.
struct Verified {
    /// SHA-256 of the signed bytes (Kiln's: timestamp "." body;
    /// Atlassian's: the body).
    digest: Sha256,
}

fn verify(source: &EventSource, headers: &HeaderMap, body: &[u8], now: Millis) -> Result<Verified, Refusal> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let timestamp = header("x-kiln-event-timestamp").ok_or(Refusal::Stale)?;
    if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::Stale);
    }
    let secs: i64 = timestamp.parse().map_err(|_| Refusal::Stale)?;
    let skew = i64::try_from(MAX_SKEW.as_millis()).unwrap_or(i64::MAX);
    if (secs.saturating_mul(1000) - now).abs() > skew {
        return Err(Refusal::Stale);
    }
    let tag = header("x-kiln-signature").and_then(|s| s.strip_prefix("sha256=")).ok_or(Refusal::Signature)?;
    let given = decode_hex(tag).ok_or(Refusal::Signature)?;
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'.');
    signed.extend_from_slice(body);
    let expected = kiln_crypto::hmac_sha256(&source.secret, &signed);
    if !kiln_crypto::constant_time_eq(&expected, &given) {
        return Err(Refusal::Signature);
    }
    Ok(Verified { digest: Sha256::of(&signed) })
}

pub(crate) fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes().chunks(2).map(|p| Some(digit(*p.first()?)? << 4 | digit(*p.get(1)?)?)).collect()
}

/// Event ids seen within the window, oldest first.
#[derive(Debug, Default)]
struct Seen {
    order: VecDeque<(Millis, String)>,
    ids: HashMap<String, Millis>,
}

impl Seen {
    fn contains(&mut self, id: &str, now: Millis) -> bool {
        self.expire(now);
        self.ids.contains_key(id)
    }

    fn insert(&mut self, id: String, now: Millis) {
        self.expire(now);
        while self.order.len() >= MAX_REMEMBERED_DELIVERIES {
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.insert(id.clone(), now).is_none() {
            self.order.push_back((now, id));
        }
    }

    /// Forget ids older than twice the skew: a request that old is
    /// refused for its timestamp anyway.
    fn expire(&mut self, now: Millis) {
        let window = i64::try_from(MAX_SKEW.as_millis()).unwrap_or(i64::MAX).saturating_mul(2);
        while let Some((at, _)) = self.order.front() {
            if now - *at <= window {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.ids.remove(&id);
            }
        }
    }
}

/// A verified request's body, read once.
#[derive(Debug, Clone)]
struct ProductEvent {
    event_type: String,
    product: Product,
    actor: Option<String>,
    delivery_id: Option<String>,
    body: serde_json::Map<String, Value>,
}

impl ProductEvent {
    /// Read only once [`verify`] passed: an unauthenticated body is never
    /// parsed (the JSON parser is not exposed to anyone without the key).
    fn parse(verified: &Verified, bytes: &[u8], source: &EventSource) -> Result<ProductEvent, String> {
        let Value::Object(body) = serde_json::from_slice::<Value>(bytes).map_err(|e| e.to_string())? else {
            return Err("the body is not a JSON object".into());
        };
        ProductEvent::from_body(verified, body, source)
    }

    /// The checks on a Forge-shaped body, whichever format it came in:
    /// a translated Atlassian webhook passes the same ones.
    fn from_body(
        _verified: &Verified,
        body: serde_json::Map<String, Value>,
        source: &EventSource,
    ) -> Result<ProductEvent, String> {
        let event_type = body.get("eventType").and_then(Value::as_str).ok_or("no eventType")?.to_owned();
        let well_formed = !event_type.is_empty()
            && event_type.len() <= MAX_EVENT_TYPE_LEN
            && event_type
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'));
        if !well_formed {
            return Err("eventType is not an event type".into());
        }
        if event_type.starts_with("avi:forge:") {
            return Err("lifecycle events come from Kiln itself, not from a product site".into());
        }
        let product = product_of(&event_type).ok_or("the event is not a Jira or Confluence event")?;
        if let Some(expected) = &source.cloud_id {
            let given = body.get("context").and_then(|c| c.get("cloudId")).and_then(Value::as_str);
            if given != Some(expected.as_str()) {
                return Err("context.cloudId is not the source's cloud id".into());
            }
        }
        let actor = match body.get("atlassianId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("atlassianId is not a string".into()),
        };
        let delivery_id = match body.get("deliveryId") {
            None => None,
            Some(Value::String(s))
                if !s.is_empty()
                    && s.len() <= MAX_DELIVERY_ID_LEN
                    && s.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                Some(s.clone())
            }
            Some(_) => return Err("deliveryId is not a short printable string".into()),
        };
        Ok(ProductEvent { event_type, product, actor, delivery_id, body })
    }
}

/// The product whose installations an event type concerns.
fn product_of(event_type: &str) -> Option<Product> {
    let family = event_type.strip_prefix("avi:")?.split(':').next()?;
    match family {
        "jira" | "jira-software" | "jsm-entity" => Some(Product::Jira),
        "confluence" => Some(Product::Confluence),
        _ => None,
    }
}

/// What routing one event did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Routed {
    queued: u64,
    duplicates: u64,
    skipped: u64,
}

/// Why a route failed as a whole (the source should send again).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    #[error("the queue: {0}")]
    Queue(String),
}

async fn route(
    state: &EventRouter,
    source: &EventSource,
    event: &ProductEvent,
    event_id: &str,
    now: Millis,
) -> Result<Routed, RouteError> {
    let stats = &state.stats;
    let mut out = Routed::default();
    let installations = {
        let mut tx = state.store.begin_read().await?;
        let list = tx.installations_on_site(&source.site, event.product).await?;
        let mut with_versions = Vec::with_capacity(list.len());
        for installation in list {
            if let Some(version) = state.versions.get(&mut tx, installation.version_id).await? {
                with_versions.push((installation, version));
            }
        }
        tx.commit().await?;
        with_versions
    };
    let self_generated =
        source.app_account_id.as_deref().is_some_and(|me| event.actor.as_deref() == Some(me));
    let mut unmapped = false;
    for (installation, version) in installations {
        let modules = subscribers(&version, &event.event_type);
        if modules.is_empty() {
            continue;
        }
        let consented: BTreeSet<String> =
            installation.consent.scopes.keys().map(|s| s.as_str().to_owned()).collect();
        if let Err(refusal) = kiln_policy::events::check(&event.event_type, &consented) {
            out.skipped += u64::try_from(modules.len()).unwrap_or(u64::MAX);
            match refusal {
                kiln_policy::events::EventRefusal::Unmapped(_) => {
                    unmapped = true;
                }
                kiln_policy::events::EventRefusal::Missing { .. } => {
                    bump(&stats.scope_refused);
                    tracing::warn!(
                        app = %installation.app,
                        installation = %installation.public_id,
                        event = %event.event_type,
                        reason = %refusal,
                        "product event not delivered: the installation's consent does not cover it"
                    );
                }
            }
            continue;
        }
        for module in modules {
            match module.verdict(Some(source), event.actor.as_deref()) {
                Verdict::Deliver => {}
                Verdict::IgnoredSelf => {
                    bump(&stats.ignored_self);
                    out.skipped += 1;
                    continue;
                }
                Verdict::Unsupported(what) => {
                    bump(&stats.unsupported);
                    out.skipped += 1;
                    tracing::error!(
                        app = %installation.app,
                        installation = %installation.public_id,
                        module = %module.trigger.key,
                        event = %event.event_type,
                        unsupported = what,
                        "product event NOT DELIVERED to this trigger module: it uses something Kiln does not support"
                    );
                    continue;
                }
            }
            let mut body = event.body.clone();
            body.insert("selfGenerated".into(), json!(self_generated));
            let mut context = match body.remove("context") {
                Some(Value::Object(c)) => c,
                _ => serde_json::Map::new(),
            };
            context.insert("moduleKey".into(), json!(module.trigger.key.as_str()));
            body.insert("context".into(), Value::Object(context));
            let body = Value::Object(body);
            let delivery = TriggerDelivery {
                installation: &installation,
                module_key: module.trigger.key.as_str(),
                event_id,
                body: &body,
                run_at: now,
            };
            if state.queue.enqueue(delivery).await.map_err(RouteError::Queue)? {
                bump(&stats.queued);
                out.queued += 1;
            } else {
                bump(&stats.duplicates);
                out.duplicates += 1;
            }
        }
    }
    if unmapped {
        bump(&stats.unmapped);
        tracing::warn!(
            event = %event.event_type,
            "product event not delivered: Kiln's scope table does not list it, so no consent can cover it"
        );
    }
    Ok(out)
}

// ------------------------------------------------------------ shared with the lifecycle poller

/// A trigger module subscribed to an event, and the subscription's
/// filter and payload options (the event's own, else the module's).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Subscriber<'a> {
    pub(crate) trigger: &'a Trigger,
    filter: Option<&'a EventFilter>,
    payload: Option<&'a Value>,
}

pub(crate) enum Verdict {
    Deliver,
    IgnoredSelf,
    Unsupported(&'static str),
}

/// The trigger modules of `version` that list `event_type`, once each.
pub(crate) fn subscribers<'a>(version: &'a VersionRecord, event_type: &str) -> Vec<Subscriber<'a>> {
    version
        .manifest
        .modules
        .triggers
        .iter()
        .filter_map(|trigger| {
            let sub = trigger.events.iter().find(|s| s.event_type == event_type)?;
            Some(Subscriber {
                trigger,
                filter: sub.filter.as_ref().or(trigger.filter.as_ref()),
                payload: sub.payload.as_ref().or(trigger.payload.as_ref()),
            })
        })
        .collect()
}

impl Subscriber<'_> {
    /// Whether this module gets the event. `source` is `None` for Kiln's
    /// own lifecycle events, whose actor is never an app.
    pub(crate) fn verdict(&self, source: Option<&EventSource>, actor: Option<&str>) -> Verdict {
        if matches!(self.trigger.target, Target::Endpoint(_)) {
            return Verdict::Unsupported("an endpoint (Forge Remote) target");
        }
        if self.payload.is_some() {
            return Verdict::Unsupported("payload options (trimming the event)");
        }
        let Some(filter) = self.filter else { return Verdict::Deliver };
        if filter.expression.is_some() {
            return Verdict::Unsupported("a filter expression");
        }
        if filter.ignore_self == Some(true)
            && let Some(source) = source
        {
            let Some(me) = source.app_account_id.as_deref() else {
                return Verdict::Unsupported(
                    "ignoreSelf on a source without app_account_id (Kiln cannot tell)",
                );
            };
            if actor == Some(me) {
                return Verdict::IgnoredSelf;
            }
        }
        Verdict::Deliver
    }
}

/// Versions never change once stored: decoded once per node.
#[derive(Debug, Default)]
pub(crate) struct VersionCache {
    map: Mutex<HashMap<i64, Arc<VersionRecord>>>,
}

impl VersionCache {
    pub(crate) async fn get(
        &self,
        tx: &mut kiln_store::Tx,
        id: i64,
    ) -> Result<Option<Arc<VersionRecord>>, StoreError> {
        if let Some(v) = lock(&self.map).get(&id) {
            return Ok(Some(v.clone()));
        }
        let Some(v) = tx.version_by_id(id).await? else { return Ok(None) };
        let v = Arc::new(v);
        lock(&self.map).insert(id, v.clone());
        Ok(Some(v))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

    use super::*;

    #[test]
    fn event_types_map_to_the_product_whose_installations_hear_them() {
        assert_eq!(product_of("avi:jira:created:issue"), Some(Product::Jira));
        assert_eq!(product_of("avi:jira-software:started:sprint"), Some(Product::Jira));
        assert_eq!(product_of("avi:jsm-entity:created:portal"), Some(Product::Jira));
        assert_eq!(product_of("avi:confluence:created:page"), Some(Product::Confluence));
        assert_eq!(product_of("avi:bitbucket:push:repository"), None);
        assert_eq!(product_of("jira:created:issue"), None);
    }

    #[test]
    fn signature_hex_must_be_exactly_a_sha256_tag() {
        assert_eq!(decode_hex(&"ab".repeat(32)).unwrap(), vec![0xab; 32]);
        assert!(decode_hex(&"ab".repeat(31)).is_none());
        assert!(decode_hex(&"zz".repeat(32)).is_none());
        assert!(decode_hex(&"é".repeat(32)).is_none());
    }

    #[test]
    fn seen_ids_are_forgotten_after_the_window_and_bounded() {
        let mut seen = Seen::default();
        seen.insert("a".into(), 0);
        assert!(seen.contains("a", 600_000));
        assert!(!seen.contains("a", 600_001), "older than twice the skew");
        for n in 0..MAX_REMEMBERED_DELIVERIES + 5 {
            seen.insert(n.to_string(), 1);
        }
        assert_eq!(seen.ids.len(), MAX_REMEMBERED_DELIVERIES);
        assert!(!seen.contains("0", 1) && seen.contains("5", 1));
    }
}
