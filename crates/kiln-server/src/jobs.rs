//! Durable jobs: the worker that delivers queued events — `@forge/events`
//! pushes to their consumer modules, product events to trigger modules —
//! from the `jobs` table, at least once, across every node sharing the
//! store.
//!
//! - **Enqueue.** [`enqueue`] stores one event for an installation, its
//!   body sealed under the installation's data key and bound to the row
//!   (`kiln_host::queue`; `queue.push` from app code takes the same path).
//!   An event id the installation already has for that kind and target is
//!   dropped, so a redelivered product event runs once.
//! - **Claims and leases.** Each node polls for due rows and claims up to
//!   its free slots with a lease ([`JobSettings::lease`]) that it renews
//!   while the call runs. A node that dies leaves leases that run out; the
//!   rows are claimed again and the lost delivery counts as a failed
//!   attempt. At most [`JobSettings::per_installation`] of one
//!   installation's events run at once across all nodes (and at most a
//!   push's `concurrency.limit` per concurrency key), so one busy
//!   installation cannot take every slot.
//! - **The call.** The installation and the version it runs *now* are
//!   loaded for each delivery. A consumer event goes to the consumer module
//!   whose `queue` is the job's target: a `function` consumer gets Forge's
//!   v2 event `{body, queueName, jobId, eventId, retryContext?}`; a
//!   `resolver` consumer (the 1.x form) gets the resolver request
//!   `{call: {functionKey: method, payload: body (+ retryContext), jobId},
//!   context: {}}`. A trigger event goes to the trigger module named by the
//!   target with the stored event as its payload (plus `retryContext` on a
//!   retry). No user is in session; the deadline is the function's
//!   `timeoutSeconds`.
//! - **Outcome.** A result is success, except Forge's retry answer
//!   `{_retry: true, retryOptions: {retryAfter, retryReason, retryData}}`
//!   (`new InvocationError(...)`, or a `QueueResponse` after `retry()`):
//!   the event runs again after `retryAfter` seconds (1 to 900; without it,
//!   the backoff below) and the next delivery's `retryContext` carries the
//!   reason and data (sealed in the meantime; `retryData` at most 4 KB).
//!   A thrown error, a time-out, running out of memory or a platform fault
//!   retries with exponential backoff ([`JobSettings::backoff_base`]
//!   doubling up to [`JobSettings::backoff_max`]). After
//!   [`FORGE_MAX_RETRIES`] retries the event is given up (`failed`, with
//!   the last error recorded). What the worker itself finds wrong — the
//!   installation or module is gone, the target is a Forge Remote endpoint,
//!   the body does not open — fails the event at once, loudly.
//! - **What is kept.** `last_error` holds failure codes and Kiln's own
//!   messages, never the app's exception text (it may hold customer data).
//!   A finished event keeps no body. Pending events older than
//!   [`JobSettings::retention`] are given up; finished rows are purged
//!   after the same window.
//! - **Shutdown.** When the shutdown signal turns true the worker stops
//!   claiming and waits for the events it is delivering (renewing their
//!   leases meanwhile), then returns. It drops its receiver of the signal
//!   once it has stopped claiming, so the sender's `closed()` says when no
//!   further event can be claimed.
//!
//! Not supported, failing loudly when met: consumers and triggers served by
//! a Forge Remote `endpoint` (the event fails with a message saying so).
//! Forge's extension of the retention window for platform errors is not
//! modelled: every event gets [`JobSettings::retention`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kiln_kvs::Kvs;
use kiln_manifest::{ConsumerTarget, Target};
use kiln_store::{Claim, InstallationRecord, JobRow, Millis, Store, VersionRecord};
use serde_json::{Map, Value, json};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::runner::{self, Call, Execute, Failure};

pub use kiln_host::queue::{JobsError, MAX_RETRY_DATA_BYTES};
pub use kiln_store::JobKind;

/// Retries an event gets after its first delivery, as in Forge: five
/// deliveries in all.
pub const FORGE_MAX_RETRIES: u32 = 4;
/// Longest `retryAfter` Forge honours, in seconds (15 minutes).
pub const MAX_RETRY_AFTER_SECONDS: f64 = 900.0;
/// Shortest `retryAfter`, in seconds, as `@forge/events` clamps it.
pub const MIN_RETRY_AFTER_SECONDS: f64 = 1.0;
/// How long an event is kept, as in Forge: a day.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Longest `retryReason` kept, in characters: it comes from the app.
pub const MAX_RETRY_REASON_CHARS: usize = 256;
/// Rows one purge round deletes at most, so housekeeping never holds the
/// write lock for long.
const PURGE_BATCH: u32 = 1000;
/// Purge batches one housekeeping round runs at most.
const PURGE_ROUNDS: u32 = 10;

/// Store one event for `installation`: its `body` sealed under the
/// installation's data key, due at `run_at`. `Ok(false)` when the
/// installation already had `event_id` for this kind and target (the
/// event is dropped). For a trigger, `target` is the trigger module's key;
/// for a consumer, the queue's name.
#[allow(clippy::too_many_arguments, reason = "the signature other engineers code against")]
pub async fn enqueue(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    kind: JobKind,
    target: &str,
    job_id: &str,
    event_id: &str,
    body: &serde_json::Value,
    run_at: Millis,
) -> Result<bool, JobsError> {
    let event = kiln_host::queue::QueuedEvent {
        event_id: event_id.to_owned(),
        body: body.clone(),
        run_at,
        concurrency: None,
    };
    let inserted =
        kiln_host::queue::enqueue_events(store, kvs, installation, kind, target, job_id, &[event], None)
            .await?;
    Ok(inserted.first().copied().unwrap_or(false))
}

/// Where the worker reads the time: milliseconds since the Unix epoch.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// How a node delivers jobs.
#[derive(Clone)]
pub struct JobSettings {
    /// Names this node in leases; unique per running process
    /// ([`node_id`] makes one).
    pub node: String,
    /// How often the node looks for due events when it has free slots.
    pub poll_interval: Duration,
    /// How long a claim holds an event; renewed every third of it while
    /// the call runs, so it need not cover the function's deadline.
    pub lease: Duration,
    /// Events this node delivers at once.
    pub max_in_flight: usize,
    /// One installation's events running at once, across every node.
    pub per_installation: u32,
    /// Retries after the first delivery before an event is given up.
    pub max_retries: u32,
    /// The first retry's wait after a failure; it doubles with each retry.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Spread each backoff wait by ±20 %, so failures that happened
    /// together do not retry together.
    pub jitter: bool,
    /// How long events (pending or finished) are kept.
    pub retention: Duration,
    /// How often the node gives up expired events and purges old ones.
    pub housekeeping_interval: Duration,
    pub clock: Clock,
}

impl std::fmt::Debug for JobSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobSettings")
            .field("node", &self.node)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .field("max_in_flight", &self.max_in_flight)
            .field("per_installation", &self.per_installation)
            .field("max_retries", &self.max_retries)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("jitter", &self.jitter)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl JobSettings {
    /// Forge's limits and Kiln's defaults for a node named `node`.
    pub fn new(node: impl Into<String>) -> Self {
        JobSettings {
            node: node.into(),
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            max_in_flight: 8,
            per_installation: 4,
            max_retries: FORGE_MAX_RETRIES,
            backoff_base: Duration::from_secs(30),
            backoff_max: Duration::from_secs(900),
            jitter: true,
            retention: DEFAULT_RETENTION,
            housekeeping_interval: Duration::from_secs(60),
            clock: Arc::new(kiln_store::now_millis),
        }
    }
}

/// `[jobs]` in the settings file (every key optional):
///
/// ```toml
/// [jobs]
/// enabled = true                # false: this node delivers no queued events
/// node_id = "kiln-a"            # default: kiln-<random>
/// max_in_flight = 8             # events this node delivers at once
/// per_installation = 4          # one installation's events at once, all nodes
/// backoff_base_seconds = 30     # first retry after a failure; doubles each time
/// retention_hours = 24
/// lease_seconds = 60            # how long a claim holds an event; renewed every third of it
/// poll_interval_ms = 1000       # how often the node looks for due events
/// ```
///
/// A short lease lets another node redeliver the events of a node that
/// died sooner, at the cost of a renewal write per event in flight every
/// third of it. Leases are renewed between polls, so the poll interval
/// may be at most a third of the lease.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSection {
    pub enabled: Option<bool>,
    pub node_id: Option<String>,
    pub max_in_flight: Option<usize>,
    pub per_installation: Option<u32>,
    pub backoff_base_seconds: Option<u64>,
    pub retention_hours: Option<u64>,
    pub lease_seconds: Option<u64>,
    pub poll_interval_ms: Option<u64>,
}

/// What `[jobs]` decides.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub enabled: bool,
    pub settings: JobSettings,
}

impl JobsConfig {
    /// As with no `[jobs]` section.
    pub fn defaults() -> Self {
        JobsConfig { enabled: true, settings: JobSettings::new(node_id()) }
    }

    /// Read `[jobs]` from the settings file at `path`.
    pub fn load(path: &std::path::Path) -> Result<JobsConfig, crate::alerting::ConfigError> {
        let fail =
            |message: String| crate::alerting::ConfigError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        JobsConfig::parse(&text).map_err(fail)
    }

    /// Only `[jobs]` is read here, its keys checked.
    pub fn parse(text: &str) -> Result<JobsConfig, String> {
        use serde::Deserialize as _;
        let mut file: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let s = match file.remove("jobs") {
            Some(v) => JobsSection::deserialize(v).map_err(|e| format!("[jobs]: {}", e.message()))?,
            None => JobsSection::default(),
        };
        let mut settings = JobSettings::new(s.node_id.clone().unwrap_or_else(node_id));
        if settings.node.is_empty() || settings.node.len() > 200 {
            return Err("jobs.node_id must be 1 to 200 characters".into());
        }
        if let Some(n) = s.max_in_flight {
            if !(1..=1024).contains(&n) {
                return Err("jobs.max_in_flight must be between 1 and 1024".into());
            }
            settings.max_in_flight = n;
        }
        if let Some(n) = s.per_installation {
            if !(1..=1024).contains(&n) {
                return Err("jobs.per_installation must be between 1 and 1024".into());
            }
            settings.per_installation = n;
        }
        if let Some(secs) = s.backoff_base_seconds {
            if !(1..=900).contains(&secs) {
                return Err("jobs.backoff_base_seconds must be between 1 and 900".into());
            }
            settings.backoff_base = Duration::from_secs(secs);
        }
        if let Some(hours) = s.retention_hours {
            if !(1..=24 * 30).contains(&hours) {
                return Err("jobs.retention_hours must be between 1 and 720".into());
            }
            settings.retention = Duration::from_secs(hours * 3600);
        }
        if let Some(secs) = s.lease_seconds {
            if !(2..=3600).contains(&secs) {
                return Err("jobs.lease_seconds must be between 2 and 3600".into());
            }
            settings.lease = Duration::from_secs(secs);
        }
        if let Some(ms) = s.poll_interval_ms {
            if !(10..=60_000).contains(&ms) {
                return Err("jobs.poll_interval_ms must be between 10 and 60000".into());
            }
            settings.poll_interval = Duration::from_millis(ms);
        }
        if settings.poll_interval.saturating_mul(3) > settings.lease {
            return Err(format!(
                "jobs.poll_interval_ms ({} ms) must be at most a third of the lease ({} s): leases are renewed \
                 between polls",
                settings.poll_interval.as_millis(),
                settings.lease.as_secs()
            ));
        }
        Ok(JobsConfig { enabled: s.enabled.unwrap_or(true), settings })
    }
}

/// A fresh node id: `kiln-<random>`, unique per process start.
pub fn node_id() -> String {
    format!("kiln-{}", kiln_host::queue::random_id())
}

/// Start delivering jobs until `shutdown` turns true (or its sender is
/// dropped); the handle finishes once the events in flight are settled.
/// The worker drops `shutdown` as soon as it has stopped claiming, before
/// that settling: `watch::Sender::closed` resolves then.
pub fn spawn(
    executor: Arc<dyn Execute>,
    store: Store,
    kvs: Arc<Kvs>,
    settings: JobSettings,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let worker = Arc::new(Worker { executor, store, kvs, settings, in_flight: Mutex::new(HashSet::new()) });
    tokio::spawn(worker.run(shutdown))
}

struct Worker {
    executor: Arc<dyn Execute>,
    store: Store,
    kvs: Arc<Kvs>,
    settings: JobSettings,
    /// Rows this node is delivering, whose leases it renews.
    in_flight: Mutex<HashSet<i64>>,
}

/// What a delivery comes to.
#[derive(Debug)]
enum Decision {
    Done,
    /// Run again after `after`; `context` (`{retryReason, retryData?}`) is
    /// sealed for the next delivery's `retryContext`.
    Retry {
        after: Duration,
        error: String,
        context: Value,
    },
    Fail {
        error: String,
    },
}

impl Worker {
    fn now(&self) -> Millis {
        (self.settings.clock)()
    }

    fn lease_until(&self) -> Millis {
        self.now().saturating_add(millis(self.settings.lease))
    }

    async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tasks: JoinSet<()> = JoinSet::new();
        let renew_every = (self.settings.lease / 3).max(Duration::from_millis(10));
        let mut last_renew = tokio::time::Instant::now();
        let mut last_housekeeping: Option<tokio::time::Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            if last_housekeeping.is_none_or(|t| t.elapsed() >= self.settings.housekeeping_interval) {
                self.housekeeping().await;
                last_housekeeping = Some(tokio::time::Instant::now());
            }
            if last_renew.elapsed() >= renew_every {
                self.renew().await;
                last_renew = tokio::time::Instant::now();
            }
            let free = self.settings.max_in_flight.saturating_sub(tasks.len());
            // Housekeeping and renewing took time: a signal that came
            // meanwhile stops this round's claim too.
            if free > 0 && !*shutdown.borrow() {
                match self.claim(free).await {
                    Ok(rows) => {
                        for row in rows {
                            self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).insert(row.id);
                            let worker = self.clone();
                            tasks.spawn(async move { worker.deliver(row).await });
                        }
                    }
                    Err(e) => {
                        tracing::warn!(node = %self.settings.node, error = %e, "jobs: claiming due events failed")
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Stop claiming, and say so by letting go of the signal; settle
        // what is in flight, keeping it ours.
        drop(shutdown);
        while !tasks.is_empty() {
            tokio::select! {
                _ = tasks.join_next() => {}
                () = tokio::time::sleep(renew_every) => self.renew().await,
            }
        }
    }

    async fn claim(&self, free: usize) -> Result<Vec<JobRow>, kiln_store::StoreError> {
        let claim = Claim {
            node: &self.settings.node,
            now: self.now(),
            lease_until: self.lease_until(),
            limit: u32::try_from(free).unwrap_or(u32::MAX),
            per_installation: self.settings.per_installation.max(1),
        };
        let mut tx = self.store.begin().await?;
        let rows = tx.jobs_claim(&claim).await?;
        tx.commit().await?;
        Ok(rows)
    }

    /// Extend the leases of the events this node is delivering.
    async fn renew(&self) {
        let ids: Vec<i64> =
            self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect();
        if ids.is_empty() {
            return;
        }
        let until = self.lease_until();
        let renewed = async {
            let mut tx = self.store.begin().await?;
            let mut lost = Vec::new();
            for id in ids {
                if !tx.job_extend_lease(id, &self.settings.node, until).await? {
                    lost.push(id);
                }
            }
            tx.commit().await?;
            Ok::<_, kiln_store::StoreError>(lost)
        };
        match renewed.await {
            Ok(lost) if lost.is_empty() => {}
            Ok(lost) => tracing::warn!(
                node = %self.settings.node, jobs = ?lost,
                "jobs: leases lost while delivering (another node took the events; they may run twice)"
            ),
            Err(e) => tracing::warn!(node = %self.settings.node, error = %e, "jobs: renewing leases failed"),
        }
    }

    /// Give up pending events past the retention window; purge old
    /// finished rows.
    async fn housekeeping(&self) {
        let now = self.now();
        let cutoff = now.saturating_sub(millis(self.settings.retention));
        let expired = async {
            let mut tx = self.store.begin().await?;
            let n =
                tx.jobs_expire(cutoff, now, "not delivered within the retention window; given up").await?;
            tx.commit().await?;
            Ok::<_, kiln_store::StoreError>(n)
        };
        match expired.await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(events = n, "jobs: events given up after the retention window"),
            Err(e) => tracing::warn!(error = %e, "jobs: expiring old events failed"),
        }
        for _ in 0..PURGE_ROUNDS {
            let purged = async {
                let mut tx = self.store.begin().await?;
                let n = tx.jobs_purge(cutoff, PURGE_BATCH).await?;
                tx.commit().await?;
                Ok::<_, kiln_store::StoreError>(n)
            };
            match purged.await {
                Ok(n) if n < u64::from(PURGE_BATCH) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "jobs: purging finished events failed");
                    break;
                }
            }
        }
    }

    async fn deliver(self: Arc<Self>, row: JobRow) {
        let (decision, installation) = self.attempt(&row).await;
        self.settle(&row, decision, installation.as_ref()).await;
        self.in_flight.lock().unwrap_or_else(PoisonError::into_inner).remove(&row.id);
    }

    /// Run one delivery and decide what comes of it.
    async fn attempt(&self, row: &JobRow) -> (Decision, Option<InstallationRecord>) {
        if row.attempts > self.settings.max_retries {
            // Its earlier deliveries were all lost with their nodes.
            let error = format!(
                "given up after {} deliveries; the last: {}",
                row.attempts,
                row.last_error.as_deref().unwrap_or("unknown")
            );
            return (Decision::Fail { error }, None);
        }
        let loaded = async {
            let mut tx = self.store.begin_read().await?;
            let installation = tx.installation_by_id(row.installation_id).await?;
            let version = match &installation {
                Some(i) => tx.version_by_id(i.version_id).await?,
                None => None,
            };
            tx.commit().await?;
            Ok::<_, kiln_store::StoreError>(installation.zip(version))
        };
        let (installation, version) = match loaded.await {
            Ok(Some(found)) => found,
            Ok(None) => {
                let error = "the installation (or the version it runs) is gone".to_owned();
                return (Decision::Fail { error }, None);
            }
            Err(e) => {
                let failure = Failure::platform(format!("the installation cannot be loaded: {e}"));
                return (self.after_failure(row, &failure), None);
            }
        };
        let decision = match self.call(row, &installation, version).await {
            Ok(call) => self.run_call(row, call).await,
            Err(error) => Decision::Fail { error },
        };
        (decision, Some(installation))
    }

    /// The call a delivery makes, or why there is none (the event fails).
    async fn call(
        &self,
        row: &JobRow,
        installation: &InstallationRecord,
        version: VersionRecord,
    ) -> Result<Call, String> {
        let body = kiln_host::queue::open_body(&self.kvs, installation, row)
            .await
            .map_err(|e| format!("the event's body cannot be opened: {e}"))?;
        let retry_context = if row.attempts > 0 {
            let stored = kiln_host::queue::open_retry(&self.kvs, installation, row)
                .await
                .map_err(|e| format!("the event's retry context cannot be opened: {e}"))?;
            Some(self.retry_context(row, stored))
        } else {
            None
        };
        let manifest = &version.manifest;
        let (function, module_key, payload, kind) = match row.kind {
            JobKind::Consumer => {
                let consumer =
                    manifest.modules.consumers.iter().find(|c| c.queue == row.target).ok_or_else(|| {
                        format!(
                            "version {} of the app has no consumer module for queue '{}'",
                            installation.version, row.target
                        )
                    })?;
                match &consumer.target {
                    ConsumerTarget::Function(f) => {
                        let mut event = json!({
                            "body": body,
                            "queueName": row.target,
                            "jobId": row.job_id,
                            "eventId": row.event_id,
                        });
                        if let (Some(ctx), Some(map)) = (retry_context, event.as_object_mut()) {
                            map.insert("retryContext".into(), ctx);
                        }
                        (f.to_string(), consumer.key.to_string(), event, "consumer")
                    }
                    ConsumerTarget::Resolver { function, method } => {
                        // @forge/events 1.x: the resolver's request, the
                        // retry context inside the payload.
                        let payload = with_retry_context(body, retry_context);
                        let request = json!({
                            "call": { "functionKey": method, "payload": payload, "jobId": row.job_id },
                            "context": {},
                        });
                        (function.to_string(), consumer.key.to_string(), request, "consumer")
                    }
                    ConsumerTarget::Endpoint(e) => {
                        return Err(format!(
                            "the consumer module '{}' is served by the Forge Remote endpoint '{e}', which Kiln does \
                             not support",
                            consumer.key
                        ));
                    }
                }
            }
            JobKind::Trigger => {
                let trigger =
                    manifest.modules.triggers.iter().find(|t| t.key.as_str() == row.target).ok_or_else(
                        || {
                            format!(
                                "version {} of the app has no trigger module '{}'",
                                installation.version, row.target
                            )
                        },
                    )?;
                match &trigger.target {
                    Target::Function(f) => {
                        let payload = with_retry_context(body, retry_context);
                        (f.to_string(), trigger.key.to_string(), payload, "trigger")
                    }
                    Target::Endpoint(e) => {
                        return Err(format!(
                            "the trigger module '{}' is served by the Forge Remote endpoint '{e}', which Kiln does \
                             not support",
                            trigger.key
                        ));
                    }
                }
            }
        };
        if manifest.function(&function).is_none() {
            return Err(format!("the function '{function}' is not in version {}", installation.version));
        }
        Ok(Call {
            caller: runner::background(&version, &function),
            installation: installation.clone(),
            version,
            function,
            module_key,
            payload,
            context: Map::new(),
            account_id: None,
            kind,
        })
    }

    /// Forge's `retryContext`: how many retries came before, why the last
    /// delivery asked for one (or failed), its `retryData`, and how long
    /// the event has left.
    fn retry_context(&self, row: &JobRow, stored: Option<Value>) -> Value {
        let stored = stored.unwrap_or_else(|| json!({ "retryReason": "FUNCTION_PLATFORM_UNKNOWN_ERROR" }));
        let reason = stored.get("retryReason").cloned().unwrap_or(Value::Null);
        let data = stored.get("retryData").cloned().unwrap_or(Value::Null);
        let ends = row.created_at.saturating_add(millis(self.settings.retention));
        json!({
            "retryCount": row.attempts,
            "retryReason": reason,
            "retryData": data,
            "retentionWindow": {
                "startTime": iso8601(row.created_at),
                "remainingTimeMs": ends.saturating_sub(self.now()).max(0),
            },
        })
    }

    async fn run_call(&self, row: &JobRow, call: Call) -> Decision {
        let deadline = runner::outer_deadline(call.caller);
        let outcome = match tokio::time::timeout(deadline, self.executor.execute(call)).await {
            Ok(outcome) => outcome,
            Err(_) => Err(Failure {
                code: "TIME_OUT".into(),
                message: "the call did not finish within its deadline".into(),
            }),
        };
        match outcome {
            Ok(result) if result.get("_retry").and_then(Value::as_bool) == Some(true) => {
                self.after_retry_request(row, &result)
            }
            Ok(_) => Decision::Done,
            Err(failure) => self.after_failure(row, &failure),
        }
    }

    /// The function returned Forge's retry answer.
    fn after_retry_request(&self, row: &JobRow, result: &Value) -> Decision {
        let options = result.get("retryOptions");
        let retries = row.attempts.saturating_add(1);
        if retries > self.settings.max_retries {
            return Decision::Fail {
                error: format!(
                    "RETRY_REQUESTED: the function asked for another retry after {} retries, Forge's limit; given up",
                    row.attempts
                ),
            };
        }
        let reason = options
            .and_then(|o| o.get("retryReason"))
            .and_then(Value::as_str)
            .unwrap_or("FUNCTION_RETRY_REQUEST")
            .chars()
            .take(MAX_RETRY_REASON_CHARS)
            .collect::<String>();
        let mut context = json!({ "retryReason": reason });
        if let Some(data) = options.and_then(|o| o.get("retryData")).filter(|d| !d.is_null()) {
            let size = serde_json::to_vec(data).map_or(usize::MAX, |b| b.len());
            if size > MAX_RETRY_DATA_BYTES {
                return Decision::Fail {
                    error: format!(
                        "RETRY_DATA_TOO_LARGE: the function asked for a retry with {size} bytes of retryData; \
                         Forge allows {MAX_RETRY_DATA_BYTES}; given up"
                    ),
                };
            }
            if let Some(map) = context.as_object_mut() {
                map.insert("retryData".into(), data.clone());
            }
        }
        let after = match options.and_then(|o| o.get("retryAfter")).and_then(Value::as_f64) {
            Some(secs) => {
                Duration::from_secs_f64(secs.clamp(MIN_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS))
            }
            None => self.backoff(retries),
        };
        Decision::Retry { after, error: "RETRY_REQUESTED: the function asked for a retry".into(), context }
    }

    /// The delivery failed: retry with backoff, or give up.
    fn after_failure(&self, row: &JobRow, failure: &Failure) -> Decision {
        // The app's own exception text may carry customer data: only the
        // code is kept. Kiln's messages (time-outs, faults) are kept.
        let error = if failure.is_app_error() {
            format!("{}: the function threw an error", failure.code)
        } else {
            failure.to_string()
        };
        let retries = row.attempts.saturating_add(1);
        if retries > self.settings.max_retries {
            return Decision::Fail { error: format!("{error}; given up after {} retries", row.attempts) };
        }
        let reason = match failure.code.as_str() {
            "TIME_OUT" => "FUNCTION_TIME_OUT",
            "FUNCTION_OUT_OF_MEMORY" => "FUNCTION_OUT_OF_MEMORY",
            "FUNCTION_ERROR" => "FUNCTION_ERROR",
            _ => "FUNCTION_PLATFORM_UNKNOWN_ERROR",
        };
        Decision::Retry { after: self.backoff(retries), error, context: json!({ "retryReason": reason }) }
    }

    /// The wait before retry number `retry` (1-based): the base doubled
    /// per earlier retry, capped, spread by ±20 % with jitter on.
    fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(20);
        let wait = self.settings.backoff_base.saturating_mul(1 << doublings).min(self.settings.backoff_max);
        if !self.settings.jitter {
            return wait;
        }
        let mut byte = [0u8; 1];
        let spread = match kiln_crypto::fill_random(&mut byte) {
            Ok(()) => 0.8 + 0.4 * f64::from(u8::from_ne_bytes(byte)) / 255.0,
            Err(_) => 1.0,
        };
        wait.mul_f64(spread).min(self.settings.backoff_max)
    }

    /// Write what the delivery came to. A node that lost the event's lease
    /// writes nothing: the node that holds it now decides.
    async fn settle(&self, row: &JobRow, decision: Decision, installation: Option<&InstallationRecord>) {
        let node = &self.settings.node;
        let now = self.now();
        let sealed = match (&decision, installation) {
            (Decision::Retry { context, .. }, Some(installation)) => {
                match kiln_host::queue::seal_retry(&self.kvs, installation, row, context).await {
                    Ok(sealed) => Some(sealed),
                    Err(e) => {
                        // The retry still happens; its retryContext then
                        // says only that the platform failed.
                        tracing::warn!(job = row.id, error = %e, "jobs: a retry context could not be sealed");
                        None
                    }
                }
            }
            _ => None,
        };
        let written = async {
            let mut tx = self.store.begin().await?;
            let held = match &decision {
                Decision::Done => tx.job_complete(row.id, node, now).await?,
                Decision::Retry { after, error, .. } => {
                    let run_at = now.saturating_add(millis(*after));
                    tx.job_retry(row.id, node, run_at, error, sealed.as_deref()).await?
                }
                Decision::Fail { error } => tx.job_fail(row.id, node, now, error).await?,
            };
            tx.commit().await?;
            Ok::<_, kiln_store::StoreError>(held)
        };
        match written.await {
            Ok(true) => {
                if let Decision::Fail { error } = &decision {
                    tracing::warn!(
                        job = row.id, kind = %row.kind, target = %row.target, error = %error,
                        "jobs: event given up"
                    );
                }
            }
            Ok(false) => tracing::warn!(
                job = row.id, node = %node,
                "jobs: the event's lease was lost before its outcome was written; another node delivers it"
            ),
            // The lease runs out and another node delivers the event again.
            Err(e) => {
                tracing::warn!(job = row.id, error = %e, "jobs: the event's outcome could not be written")
            }
        }
    }
}

/// The stored event with `retryContext` added, when there is one and the
/// event is an object.
fn with_retry_context(body: Value, retry_context: Option<Value>) -> Value {
    match (body, retry_context) {
        (Value::Object(mut map), Some(ctx)) => {
            map.insert("retryContext".into(), ctx);
            Value::Object(map)
        }
        (body, _) => body,
    }
}

fn millis(d: Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch, as
/// JavaScript's `toISOString` writes it (proleptic Gregorian calendar).
pub fn iso8601(ms: Millis) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::iso8601;

    #[test]
    fn iso8601_writes_what_javascript_writes() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso8601(1_799_827_200_250), "2027-01-13T08:00:00.250Z");
        assert_eq!(iso8601(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59.999Z");
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn the_jobs_section_is_checked_and_other_sections_are_left_alone() {
        let c =
            JobsConfig::parse("[alerts]\nx = 1\n[jobs]\nbackoff_base_seconds = 2\nper_installation = 9\n")
                .unwrap();
        assert!(c.enabled);
        assert_eq!(c.settings.backoff_base, Duration::from_secs(2));
        assert_eq!(c.settings.per_installation, 9);
        assert!(
            JobsConfig::parse("[jobs]\nbackof_base_seconds = 2\n").unwrap_err().contains("unknown field")
        );
        assert!(
            JobsConfig::parse("[jobs]\nbackoff_base_seconds = 0\n")
                .unwrap_err()
                .contains("between 1 and 900")
        );
        assert!(!JobsConfig::parse("[jobs]\nenabled = false\n").unwrap().enabled);
        assert!(JobsConfig::parse("").unwrap().enabled);
    }

    #[test]
    fn the_lease_and_poll_interval_are_bounded_and_the_poll_fits_inside_the_lease() {
        let c = JobsConfig::parse("").unwrap();
        assert_eq!(c.settings.lease, Duration::from_secs(60));
        assert_eq!(c.settings.poll_interval, Duration::from_secs(1));
        let c = JobsConfig::parse("[jobs]\nlease_seconds = 3\npoll_interval_ms = 100\n").unwrap();
        assert_eq!(c.settings.lease, Duration::from_secs(3));
        assert_eq!(c.settings.poll_interval, Duration::from_millis(100));
        let c = JobsConfig::parse("[jobs]\nlease_seconds = 3600\npoll_interval_ms = 60000\n").unwrap();
        assert_eq!(c.settings.lease, Duration::from_secs(3600));
        for (text, says) in [
            ("lease_seconds = 1", "between 2 and 3600"),
            ("lease_seconds = 3601", "between 2 and 3600"),
            ("poll_interval_ms = 9", "between 10 and 60000"),
            ("poll_interval_ms = 60001", "between 10 and 60000"),
            // The default poll (1 s) does not fit three times in 2 s.
            ("lease_seconds = 2", "at most a third of the lease"),
            ("lease_seconds = 30\npoll_interval_ms = 10001", "at most a third of the lease"),
            ("lease_seconds = -1", "invalid value"),
        ] {
            let e = JobsConfig::parse(&format!("[jobs]\n{text}\n")).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
        assert!(JobsConfig::parse("[jobs]\nlease_seconds = 2\npoll_interval_ms = 500\n").is_ok());
    }
}
