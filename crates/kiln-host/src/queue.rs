//! `@forge/events` queues: the `queue.*` capabilities, and the sealed rows
//! every durable job is made of (queue events and product events alike).
//!
//! A pushed event becomes a row of `kiln-store`'s `jobs` table for the
//! invocation's installation, its body sealed under the installation's data
//! key and bound to the row's identity (kind, target, job id, event id), so
//! a body copied to another row or installation does not open.
//! `kiln-server`'s jobs worker delivers the rows; this module only stores
//! them, answers stats and cancels, and opens what the worker needs.
//!
//! Contract (arguments → reply), always for the invocation's installation
//! (never one the worker names):
//! - `queue.push {queue, events: [...], delayInSeconds?}`. The queue must be
//!   one a consumer module of the installed version listens on, and that
//!   module's form says which `@forge/events` push API the app uses
//!   (`@forge/events` in the worker serves both and cannot tell):
//!   - a `function` consumer is the 2.x+ form: each event is `{body:
//!     object, delayInSeconds?: 0..=900, concurrency?: {key, limit}}` (other
//!     keys are ignored, and so is a top-level `delayInSeconds`: 2.x+ has no
//!     push settings) → `{jobId}`;
//!   - a `resolver` consumer is the 0.x/1.x form (Forge's upgrade guide to
//!     2.0: "Forge resolvers are no longer used", the consumer requires a
//!     function): each event is a payload, any JSON value, stored as the
//!     body the resolver gets as its `payload`; the top-level
//!     `delayInSeconds` (1.x's push settings, 0..=900) delays them all →
//!     `{jobId, form: "1.x"}`.
//! - `queue.job.stats {queue, jobId}` → `{success, inProgress, failed}`
//! - `queue.job.cancel {queue, jobId}` → `null` (events not yet started are
//!   cancelled; running ones finish)
//!
//! Refusals carry the name of the `@forge/events` error class the app
//! sees as their code: `InvalidQueueNameError` (a bad name, or a queue no
//! consumer listens on; the message names the known queues),
//! `NoEventsToPushError`, `TooManyEventsError` (more than
//! [`MAX_EVENTS_PER_PUSH`]), `PayloadTooBigError` (more than
//! [`MAX_PUSH_BYTES`] together, or [`MAX_LONG_RUNNING_EVENT_BYTES`] for one
//! event of a consumer running longer than 55 s), `InvalidPayloadError`,
//! `InvalidPushSettingsError`, `RateLimitError` (more than
//! [`MAX_EVENTS_PER_MINUTE`]), `JobDoesNotExistError`; `INVALID_HOST_CALL`
//! for arguments of the wrong shape, `CAPABILITY_NOT_AVAILABLE` for an
//! invocation without an installation (`kiln invoke`) or a Kiln without a
//! key store, and `InternalServerError` when the store fails.
//!
//! Not enforced (yet): Forge's cyclic invocation limit (1,000 pushes
//! descending from one invocation, `InvocationLimitReachedError`). The
//! per-minute limit bounds what a push loop can store meanwhile.

use kiln_ipc::HostReply;
use kiln_kvs::Kvs;
use kiln_manifest::ConsumerTarget;
use kiln_store::{InstallationRecord, JobKind, JobRow, Millis, NewJob, Store, StoreError};
use serde_json::{Value, json};

use crate::{BAD_CALL, InvocationHost, err};

/// Most events in one push, as in Forge.
pub const MAX_EVENTS_PER_PUSH: usize = 50;
/// Largest push (its events as JSON), as in Forge: 200 KB.
pub const MAX_PUSH_BYTES: usize = 200 * 1024;
/// Largest single event for a consumer whose function may run longer than
/// [`LONG_RUNNING_AFTER_SECONDS`], as in Forge: 100 KB.
pub const MAX_LONG_RUNNING_EVENT_BYTES: usize = 100 * 1024;
/// A consumer function with a longer `timeoutSeconds` is long-running.
pub const LONG_RUNNING_AFTER_SECONDS: u32 = 55;
/// Longest delay a push may ask for, as in Forge: 15 minutes.
pub const MAX_DELAY_SECONDS: f64 = 900.0;
/// Events an installation may push per minute, as in Forge. Stops an app
/// (or a compromised worker) from filling the database with events.
pub const MAX_EVENTS_PER_MINUTE: u64 = 500;
/// Largest `retryData` a consumer may ask to get back, as in Forge: 4 KB.
pub const MAX_RETRY_DATA_BYTES: usize = 4 * 1024;
/// Largest body of any job (product events included): Forge's invocation
/// payload limit, 5 MB.
pub const MAX_JOB_BODY_BYTES: usize = 5 * 1024 * 1024;
/// Longest target, job id, event id or concurrency key a job may have.
pub const MAX_ID_CHARS: usize = 255;
/// Longest queue name, as in Forge.
pub const MAX_QUEUE_CHARS: usize = 36;

/// Why a job could not be stored or read back.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the installation's key store failed: {0}")]
    Kvs(#[from] kiln_kvs::KvsError),
    #[error("{0}")]
    Invalid(String),
    #[error("the installation pushed more than {MAX_EVENTS_PER_MINUTE} events in the last minute")]
    RateLimited,
    #[error("a stored job is unreadable: {0}")]
    Corrupt(String),
}

/// One event to store.
#[derive(Debug, Clone)]
pub struct QueuedEvent {
    pub event_id: String,
    pub body: Value,
    pub run_at: Millis,
    /// At most `limit` of the installation's events with `key` at once.
    pub concurrency: Option<(String, u32)>,
}

/// What a job's body is sealed for: the row's identity. JSON, so no two
/// identities encode alike whatever their parts contain.
fn body_purpose(kind: JobKind, target: &str, job_id: &str, event_id: &str) -> String {
    json!(["jobs.body", kind.as_str(), target, job_id, event_id]).to_string()
}

/// What a job's retry context is sealed for.
fn retry_purpose(kind: JobKind, target: &str, job_id: &str, event_id: &str) -> String {
    json!(["jobs.retry", kind.as_str(), target, job_id, event_id]).to_string()
}

fn check_id(what: &str, value: &str) -> Result<(), JobsError> {
    if value.is_empty() || value.chars().count() > MAX_ID_CHARS {
        return Err(JobsError::Invalid(format!("a job's {what} is 1 to {MAX_ID_CHARS} characters")));
    }
    Ok(())
}

/// Store `events` for `installation` in one transaction (all or none),
/// each body sealed under the installation's data key. Returns, per event,
/// whether it was new (false: the installation already had that event for
/// this kind and target, and it was dropped). With `per_minute`, refuses
/// the whole push if the installation's events of this kind in the last
/// minute would pass it.
#[allow(clippy::too_many_arguments, reason = "the parts of a job's identity, each its own value")]
pub async fn enqueue_events(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    kind: JobKind,
    target: &str,
    job_id: &str,
    events: &[QueuedEvent],
    per_minute: Option<u64>,
) -> Result<Vec<bool>, JobsError> {
    check_id("target", target)?;
    check_id("job id", job_id)?;
    let owner = crate::webtrigger::owner(installation);
    let mut sealed = Vec::with_capacity(events.len());
    for event in events {
        check_id("event id", &event.event_id)?;
        if let Some((key, limit)) = &event.concurrency {
            check_id("concurrency key", key)?;
            if *limit == 0 {
                return Err(JobsError::Invalid("a concurrency limit is at least 1".into()));
            }
        }
        let bytes = serde_json::to_vec(&event.body).map_err(|e| JobsError::Invalid(e.to_string()))?;
        if bytes.len() > MAX_JOB_BODY_BYTES {
            return Err(JobsError::Invalid(format!("a job's body is at most {MAX_JOB_BODY_BYTES} bytes")));
        }
        let purpose = body_purpose(kind, target, job_id, &event.event_id);
        sealed.push(kvs.seal_blob(&owner, &purpose, &bytes).await?);
    }
    let now = kiln_store::now_millis();
    let mut tx = store.begin().await?;
    if let Some(limit) = per_minute {
        let recent = tx.jobs_created_since(installation.id, kind, now - 60_000).await?;
        if recent.saturating_add(u64::try_from(events.len()).unwrap_or(u64::MAX)) > limit {
            return Err(JobsError::RateLimited);
        }
    }
    let mut inserted = Vec::with_capacity(events.len());
    for (event, body) in events.iter().zip(&sealed) {
        let new = NewJob {
            installation_id: installation.id,
            kind,
            target,
            job_id,
            event_id: &event.event_id,
            body,
            concurrency: event.concurrency.as_ref().map(|(k, l)| (k.as_str(), *l)),
            run_at: event.run_at,
        };
        inserted.push(tx.job_insert(&new, now).await?);
    }
    tx.commit().await?;
    Ok(inserted)
}

/// A stored job's body, opened: the event as it was pushed (or handed to
/// `kiln_server::jobs::enqueue`).
pub async fn open_body(
    kvs: &Kvs,
    installation: &InstallationRecord,
    row: &JobRow,
) -> Result<Value, JobsError> {
    let owner = crate::webtrigger::owner(installation);
    let purpose = body_purpose(row.kind, &row.target, &row.job_id, &row.event_id);
    let plain = kvs.open_blob(&owner, &purpose, &row.body).await?;
    serde_json::from_slice(&plain).map_err(|e| JobsError::Corrupt(format!("job {}: {e}", row.id)))
}

/// Seal the retry context (`{retryReason, retryData}`) the next delivery
/// of `row` carries.
pub async fn seal_retry(
    kvs: &Kvs,
    installation: &InstallationRecord,
    row: &JobRow,
    context: &Value,
) -> Result<Vec<u8>, JobsError> {
    let owner = crate::webtrigger::owner(installation);
    let purpose = retry_purpose(row.kind, &row.target, &row.job_id, &row.event_id);
    let bytes = serde_json::to_vec(context).map_err(|e| JobsError::Invalid(e.to_string()))?;
    Ok(kvs.seal_blob(&owner, &purpose, &bytes).await?)
}

/// The retry context a previous delivery of `row` asked for, if any.
pub async fn open_retry(
    kvs: &Kvs,
    installation: &InstallationRecord,
    row: &JobRow,
) -> Result<Option<Value>, JobsError> {
    let Some(sealed) = &row.retry else { return Ok(None) };
    let owner = crate::webtrigger::owner(installation);
    let purpose = retry_purpose(row.kind, &row.target, &row.job_id, &row.event_id);
    let plain = kvs.open_blob(&owner, &purpose, sealed).await?;
    serde_json::from_slice(&plain).map(Some).map_err(|e| JobsError::Corrupt(format!("job {}: {e}", row.id)))
}

/// A fresh random id (UUID v4 form) for a push or an event.
pub fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

// ---------------------------------------------------------------- capabilities

/// A refusal in `@forge/events` terms: the code is the error class.
fn refuse(class: &str, message: impl Into<String>) -> HostReply {
    err(class, message)
}

/// One event of a push, parsed and checked.
struct PushedEvent {
    body: Value,
    delay_seconds: f64,
    concurrency: Option<(String, u32)>,
}

impl InvocationHost<'_> {
    /// Serve a `queue.*` host call for the invocation's installation.
    pub(crate) fn queue(&self, capability: &str, args: &Value) -> HostReply {
        let (Some(kvs), Some(row)) = (self.host.kvs.as_deref(), self.grants.installation_row) else {
            return err(
                "CAPABILITY_NOT_AVAILABLE",
                "@forge/events queues exist for installations served by kiln serve; this invocation has none",
            );
        };
        let queue = match queue_name(args) {
            Ok(q) => q,
            Err(reply) => return reply,
        };
        let host = self.host;
        host.runtime.block_on(async {
            let loaded = async {
                let mut tx = host.store.begin_read().await?;
                let installation = tx.installation_by_id(row).await?;
                let version = match &installation {
                    Some(i) => tx.version_by_id(i.version_id).await?,
                    None => None,
                };
                tx.commit().await?;
                Ok::<_, StoreError>(installation.zip(version))
            };
            let (installation, version) = match loaded.await {
                Ok(Some(found)) => found,
                Ok(None) => return refuse("InternalServerError", "the installation is gone"),
                Err(e) => return refuse("InternalServerError", e.to_string()),
            };
            match capability {
                "queue.push" => push(&host.store, kvs, &installation, &version, queue, args).await,
                "queue.job.stats" | "queue.job.cancel" => {
                    let job_id = match args.get("jobId") {
                        Some(Value::String(j)) if !j.is_empty() && j.chars().count() <= MAX_ID_CHARS => j,
                        Some(Value::String(_)) | None | Some(Value::Null) => {
                            return refuse("JobDoesNotExistError", "jobId cannot be empty.");
                        }
                        Some(_) => return err(BAD_CALL, "'jobId' must be a string"),
                    };
                    job(&host.store, &installation, queue, job_id, capability == "queue.job.cancel").await
                }
                other => err("CAPABILITY_NOT_AVAILABLE", format!("the host offers no '{other}' capability")),
            }
        })
    }
}

/// The queue's name, checked as Forge checks it.
fn queue_name(args: &Value) -> Result<&str, HostReply> {
    let invalid = || {
        refuse(
            "InvalidQueueNameError",
            "Queue names can only contain alphanumeric characters, dashes and underscores.",
        )
    };
    let Some(Value::String(name)) = args.get("queue") else { return Err(invalid()) };
    let valid = !name.is_empty()
        && name.len() <= MAX_QUEUE_CHARS
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid { Ok(name) } else { Err(invalid()) }
}

async fn push(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    version: &kiln_store::VersionRecord,
    queue: &str,
    args: &Value,
) -> HostReply {
    let manifest = &version.manifest;
    let Some(consumer) = manifest.modules.consumers.iter().find(|c| c.queue == queue) else {
        let mut known: Vec<&str> = manifest.modules.consumers.iter().map(|c| c.queue.as_str()).collect();
        known.sort_unstable();
        known.dedup();
        return refuse(
            "InvalidQueueNameError",
            format!(
                "no consumer module of this app listens on queue '{queue}', so its events would never run; \
                 the queues with consumers are: {}",
                if known.is_empty() { "none".to_owned() } else { known.join(", ") }
            ),
        );
    };
    let long_running = consumer
        .target
        .function()
        .and_then(|f| manifest.function(f.as_str()))
        .and_then(|f| f.timeout_seconds)
        .is_some_and(|t| t > LONG_RUNNING_AFTER_SECONDS);
    let legacy = matches!(consumer.target, ConsumerTarget::Resolver { .. });
    let parsed = if legacy { parse_legacy_push(args, long_running) } else { parse_push(args, long_running) };
    let parsed = match parsed {
        Ok(p) => p,
        Err(reply) => return reply,
    };
    let job_id = random_id();
    let now = kiln_store::now_millis();
    let events: Vec<QueuedEvent> = parsed
        .into_iter()
        .map(|e| QueuedEvent {
            event_id: random_id(),
            body: e.body,
            // Milliseconds of at most 900 s: the cast cannot overflow.
            run_at: now.saturating_add((e.delay_seconds * 1000.0).round() as i64),
            concurrency: e.concurrency,
        })
        .collect();
    match enqueue_events(
        store,
        kvs,
        installation,
        JobKind::Consumer,
        queue,
        &job_id,
        &events,
        Some(MAX_EVENTS_PER_MINUTE),
    )
    .await
    {
        Ok(_) if legacy => HostReply::Ok { value: json!({ "jobId": job_id, "form": "1.x" }) },
        Ok(_) => HostReply::Ok { value: json!({ "jobId": job_id }) },
        Err(JobsError::RateLimited) => refuse("RateLimitError", "Too many requests."),
        Err(e) => refuse("InternalServerError", e.to_string()),
    }
}

/// The pushed list, with the checks both push APIs make alike: at least
/// one event and at most [`MAX_EVENTS_PER_PUSH`].
fn pushed_list(args: &Value) -> Result<&Vec<Value>, HostReply> {
    let events = match args.get("events") {
        Some(Value::Array(events)) => events,
        _ => return Err(err(BAD_CALL, "'events' must be a list")),
    };
    if events.is_empty() {
        return Err(refuse("NoEventsToPushError", "No events pushed."));
    }
    if events.len() > MAX_EVENTS_PER_PUSH {
        return Err(refuse(
            "TooManyEventsError",
            format!("This push contains more than the {MAX_EVENTS_PER_PUSH} events allowed."),
        ));
    }
    Ok(events)
}

/// A push of more than [`MAX_PUSH_BYTES`] of JSON is refused.
fn check_push_size(events: &[Value]) -> Result<(), HostReply> {
    let size = serde_json::to_vec(events).map_or(usize::MAX, |b| b.len());
    if size > MAX_PUSH_BYTES {
        return Err(refuse(
            "PayloadTooBigError",
            format!("The maximum payload size is {}KB.", MAX_PUSH_BYTES / 1024),
        ));
    }
    Ok(())
}

/// An event of more than [`MAX_LONG_RUNNING_EVENT_BYTES`] of JSON (`size`)
/// is refused for a consumer that runs longer than
/// [`LONG_RUNNING_AFTER_SECONDS`].
fn check_long_running_event(size: usize) -> Result<(), HostReply> {
    if size > MAX_LONG_RUNNING_EVENT_BYTES {
        return Err(refuse(
            "PayloadTooBigError",
            format!(
                "The maximum size of one event is {}KB for a consumer whose function runs longer than \
                 {LONG_RUNNING_AFTER_SECONDS} seconds.",
                MAX_LONG_RUNNING_EVENT_BYTES / 1024
            ),
        ));
    }
    Ok(())
}

/// `delayInSeconds`, absent or a number from 0 to 900.
fn delay(value: Option<&Value>) -> Result<f64, HostReply> {
    match value {
        None | Some(Value::Null) => Ok(0.0),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(d) if (0.0..=MAX_DELAY_SECONDS).contains(&d) => Ok(d),
            _ => Err(bad_delay()),
        },
        Some(_) => Err(bad_delay()),
    }
}

/// Check a 0.x/1.x push (`push(payload | payload[], settings?)`) as that
/// `@forge/events` does: any JSON payloads, at most 200 KB together, and
/// the settings' delay for all of them.
fn parse_legacy_push(args: &Value, long_running: bool) -> Result<Vec<PushedEvent>, HostReply> {
    let payloads = pushed_list(args)?;
    check_push_size(payloads)?;
    let delay_seconds = delay(args.get("delayInSeconds"))?;
    let mut out = Vec::with_capacity(payloads.len());
    for payload in payloads {
        if long_running {
            check_long_running_event(serde_json::to_vec(payload).map_or(usize::MAX, |b| b.len()))?;
        }
        out.push(PushedEvent { body: payload.clone(), delay_seconds, concurrency: None });
    }
    Ok(out)
}

/// Check a 2.x+ push as `@forge/events` does, and again here: the worker
/// may send anything.
fn parse_push(args: &Value, long_running: bool) -> Result<Vec<PushedEvent>, HostReply> {
    let events = pushed_list(args)?;
    let mut out = Vec::with_capacity(events.len());
    for event in events {
        let Value::Object(event) = event else {
            return Err(refuse("InvalidPayloadError", "Event must be an object."));
        };
        let body = match event.get("body") {
            Some(body @ Value::Object(_)) => body.clone(),
            _ => return Err(refuse("InvalidPayloadError", "Event body must be an object.")),
        };
        let delay_seconds = delay(event.get("delayInSeconds"))?;
        let concurrency = match event.get("concurrency") {
            None | Some(Value::Null) => None,
            Some(c) => Some(concurrency(c)?),
        };
        if long_running {
            check_long_running_event(serde_json::to_vec(event).map_or(usize::MAX, |b| b.len()))?;
        }
        out.push(PushedEvent { body, delay_seconds, concurrency });
    }
    check_push_size(events)?;
    Ok(out)
}

fn bad_delay() -> HostReply {
    refuse("InvalidPushSettingsError", "The delayInSeconds setting must be between 0 and 900.")
}

/// `{key, limit}`: a key of 1 to 255 characters and a whole limit of at
/// least 1.
fn concurrency(value: &Value) -> Result<(String, u32), HostReply> {
    let bad = || {
        refuse(
            "InvalidPushSettingsError",
            format!(
                "concurrency must be {{ key, limit }}: a key of 1 to {MAX_ID_CHARS} characters and a whole limit \
                 of at least 1"
            ),
        )
    };
    let key = value
        .get("key")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty() && k.chars().count() <= MAX_ID_CHARS);
    let limit =
        value.get("limit").and_then(Value::as_u64).and_then(|l| u32::try_from(l).ok()).filter(|l| *l >= 1);
    match (key, limit) {
        (Some(k), Some(l)) => Ok((k.to_owned(), l)),
        _ => Err(bad()),
    }
}

/// `JobProgress.getStats()` or `.cancel()`.
async fn job(
    store: &Store,
    installation: &InstallationRecord,
    queue: &str,
    job_id: &str,
    cancel: bool,
) -> HostReply {
    let result = async {
        // Stats only read: on SQLite a read transaction leaves the write
        // lock to the workers.
        let mut tx = if cancel { store.begin().await? } else { store.begin_read().await? };
        let stats = tx.job_stats(installation.id, JobKind::Consumer, queue, job_id).await?;
        if cancel && stats.is_some() {
            tx.jobs_cancel(installation.id, JobKind::Consumer, queue, job_id, kiln_store::now_millis())
                .await?;
        }
        tx.commit().await?;
        Ok::<_, StoreError>(stats)
    };
    match result.await {
        Ok(None) => {
            refuse("JobDoesNotExistError", format!("The job {job_id} was not found for the queue {queue}."))
        }
        Ok(Some(_)) if cancel => HostReply::Ok { value: Value::Null },
        Ok(Some(s)) => HostReply::Ok {
            value: json!({ "success": s.success, "inProgress": s.in_progress, "failed": s.failed }),
        },
        Err(e) => refuse("InternalServerError", e.to_string()),
    }
}
