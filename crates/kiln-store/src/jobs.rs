//! Durable jobs: events waiting to be delivered to an installation's
//! function — a queue's events for its consumer (`@forge/events`) and
//! product events for trigger modules — with leases, so that several nodes
//! sharing one database deliver each event at least once and none of them
//! twice at the same time.
//!
//! This layer stores sealed bodies and scheduling state; it never sees a
//! body in clear and decides no policy: how long a lease lasts, how many
//! retries an event gets, how long finished rows are kept and how many of
//! an installation's events may run at once are the caller's numbers.
//!
//! A row's life: `pending` (due at `run_at`) → claimed by a node
//! (`running`, with `lease_owner` and `lease_until`) → `done`, back to
//! `pending` for a retry (`attempts` + 1), or `failed`. A pending row may
//! be `cancelled`. A running row whose lease ran out (its node died or
//! stalled) is due again: the next claim takes it and counts the lost
//! delivery as an attempt. Finished rows keep no body and are purged after
//! the retention window.

use std::collections::HashMap;

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{Millis, StoreError, Tx, TxInner, col, on_conn};

/// Longest `last_error` kept, in characters: it is a diagnostic for the
/// operator, and the table must not grow with whatever a failure says.
pub const MAX_JOB_ERROR_CHARS: usize = 500;

/// Most rows one claim looks at, so a claim stays one short transaction
/// even with a long backlog of events of installations at their cap.
pub const MAX_CLAIM_SCAN: u32 = 500;

/// What a job delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// A queue's event for the consumer module of that queue (`target` is
    /// the queue's name).
    Consumer,
    /// A product or lifecycle event for a trigger module (`target` is the
    /// module's key).
    Trigger,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Consumer => "consumer",
            JobKind::Trigger => "trigger",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [JobKind::Consumer, JobKind::Trigger].into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [JobState::Pending, JobState::Running, JobState::Done, JobState::Failed, JobState::Cancelled]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// An event to store.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    pub installation_id: i64,
    pub kind: JobKind,
    pub target: &'a str,
    /// The push it belongs to (`Queue.push` returns it); stats and cancel
    /// go by it.
    pub job_id: &'a str,
    /// Unique per installation, kind and target: a second insert of the
    /// same event is dropped.
    pub event_id: &'a str,
    /// The sealed body.
    pub body: &'a [u8],
    /// At most `limit` of the installation's events with this key run at
    /// once.
    pub concurrency: Option<(&'a str, u32)>,
    pub run_at: Millis,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub id: i64,
    pub installation_id: i64,
    pub kind: JobKind,
    pub target: String,
    pub job_id: String,
    pub event_id: String,
    /// Sealed; empty once the job is finished.
    pub body: Vec<u8>,
    /// The sealed retry context the last delivery asked for, if any.
    pub retry: Option<Vec<u8>>,
    pub concurrency: Option<(String, u32)>,
    pub state: JobState,
    /// Deliveries that ended without success so far.
    pub attempts: u32,
    pub run_at: Millis,
    pub lease_owner: Option<String>,
    pub lease_until: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

/// One claim of due events by a node.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    /// The claiming node's id, written to `lease_owner`.
    pub node: &'a str,
    pub now: Millis,
    /// Until when the claimed rows are the node's.
    pub lease_until: Millis,
    /// Most rows to claim.
    pub limit: u32,
    /// Most of one installation's events running at once, across every
    /// node (rows with a live lease count).
    pub per_installation: u32,
}

/// Forge's `JobProgress.getStats()`: how a push's events stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JobStats {
    pub success: u64,
    /// Waiting or running.
    pub in_progress: u64,
    /// Given up on, or cancelled before they ran.
    pub failed: u64,
}

/// The lock key that makes claims take turns on PostgreSQL, so the
/// per-installation cap holds across nodes (two claims counting the same
/// running rows at once could each fill the cap).
const CLAIM_LOCK: &str = "kiln/jobs/claim";

const JOB_COLUMNS: &str = "id, installation_id, kind, target, job_id, event_id, body, retry, concurrency_key, \
     concurrency_limit, state, attempts, run_at, lease_owner, lease_until, last_error, created_at, finished_at";

struct RawJob {
    id: i64,
    installation_id: i64,
    kind: String,
    target: String,
    job_id: String,
    event_id: String,
    body: Vec<u8>,
    retry: Option<Vec<u8>>,
    concurrency_key: Option<String>,
    concurrency_limit: Option<i64>,
    state: String,
    attempts: i64,
    run_at: i64,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    finished_at: Option<i64>,
}

impl RawJob {
    fn from_row<'r, R>(r: &'r R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        &'static str: ColumnIndex<R>,
        i64: Decode<'r, R::Database> + Type<R::Database>,
        Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
        String: Decode<'r, R::Database> + Type<R::Database>,
        Option<String>: Decode<'r, R::Database> + Type<R::Database>,
        Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
        Option<Vec<u8>>: Decode<'r, R::Database> + Type<R::Database>,
    {
        Ok(RawJob {
            id: col(r, "id")?,
            installation_id: col(r, "installation_id")?,
            kind: col(r, "kind")?,
            target: col(r, "target")?,
            job_id: col(r, "job_id")?,
            event_id: col(r, "event_id")?,
            body: col(r, "body")?,
            retry: col(r, "retry")?,
            concurrency_key: col(r, "concurrency_key")?,
            concurrency_limit: col(r, "concurrency_limit")?,
            state: col(r, "state")?,
            attempts: col(r, "attempts")?,
            run_at: col(r, "run_at")?,
            lease_owner: col(r, "lease_owner")?,
            lease_until: col(r, "lease_until")?,
            last_error: col(r, "last_error")?,
            created_at: col(r, "created_at")?,
            finished_at: col(r, "finished_at")?,
        })
    }

    fn into_record(self) -> Result<JobRow, StoreError> {
        let what = format!("job row {}", self.id);
        let concurrency = match (self.concurrency_key, self.concurrency_limit) {
            (Some(key), Some(limit)) => Some((
                key,
                u32::try_from(limit).map_err(|_| StoreError::corrupt(&what, "concurrency limit"))?,
            )),
            (None, None) => None,
            _ => return Err(StoreError::corrupt(&what, "concurrency key without limit")),
        };
        Ok(JobRow {
            id: self.id,
            installation_id: self.installation_id,
            kind: JobKind::parse(&self.kind).ok_or_else(|| StoreError::corrupt(&what, &self.kind))?,
            target: self.target,
            job_id: self.job_id,
            event_id: self.event_id,
            body: self.body,
            retry: self.retry,
            concurrency,
            state: JobState::parse(&self.state).ok_or_else(|| StoreError::corrupt(&what, &self.state))?,
            attempts: u32::try_from(self.attempts).map_err(|_| StoreError::corrupt(&what, "attempts"))?,
            run_at: self.run_at,
            lease_owner: self.lease_owner,
            lease_until: self.lease_until,
            last_error: self.last_error,
            created_at: self.created_at,
            finished_at: self.finished_at,
        })
    }
}

/// `error` cut to [`MAX_JOB_ERROR_CHARS`].
fn bounded(error: &str) -> String {
    error.chars().take(MAX_JOB_ERROR_CHARS).collect()
}

impl Tx {
    /// Store an event; false (and nothing stored) if the installation
    /// already has this event for this kind and target.
    pub async fn job_insert(&mut self, job: &NewJob<'_>, now: Millis) -> Result<bool, StoreError> {
        let (key, limit) = match job.concurrency {
            Some((key, limit)) => (Some(key), Some(i64::from(limit))),
            None => (None, None),
        };
        let inserted = on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO jobs (installation_id, kind, target, job_id, event_id, body, retry, concurrency_key,
                    concurrency_limit, state, attempts, run_at, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, $7, $8, 'pending', 0, $9, $10)
                 ON CONFLICT (installation_id, kind, target, event_id) DO NOTHING",
            )
            .bind(job.installation_id)
            .bind(job.kind.as_str())
            .bind(job.target)
            .bind(job.job_id)
            .bind(job.event_id)
            .bind(job.body)
            .bind(key)
            .bind(limit)
            .bind(job.run_at)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(inserted == 1)
    }

    /// How many events of `kind` the installation has stored since
    /// `since` (for a per-minute limit on pushes).
    pub async fn jobs_created_since(
        &mut self,
        installation_id: i64,
        kind: JobKind,
        since: Millis,
    ) -> Result<u64, StoreError> {
        let n: i64 = on_conn!(self, |c| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM jobs WHERE installation_id = $1 AND kind = $2 AND created_at >= $3",
            )
            .bind(installation_id)
            .bind(kind.as_str())
            .bind(since)
            .fetch_one(c)
            .await
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Claim up to `claim.limit` due events for `claim.node`: pending rows
    /// whose `run_at` has come, and running rows whose lease ran out (their
    /// lost delivery counts as an attempt). Oldest first, skipping the
    /// events of installations (and concurrency keys) already at their cap.
    ///
    /// Call it in a write transaction ([`crate::Store::begin`]): on SQLite
    /// that holds the write lock, so the select and the update are one
    /// step no other node can come between; on PostgreSQL the rows are
    /// locked `FOR UPDATE SKIP LOCKED` and claims take turns on an
    /// advisory lock, so two nodes never claim the same row and the cap
    /// counts every node's running events.
    pub async fn jobs_claim(&mut self, claim: &Claim<'_>) -> Result<Vec<JobRow>, StoreError> {
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        let postgres = matches!(self.inner, TxInner::Postgres(_));
        if let TxInner::Postgres(t) = &mut self.inner {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(CLAIM_LOCK)
                .execute(&mut **t)
                .await?;
        }
        let scan = claim.limit.saturating_mul(4).clamp(64, MAX_CLAIM_SCAN);
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE (state = 'pending' AND run_at <= $1) OR (state = 'running' AND lease_until <= $1)
             ORDER BY run_at, id LIMIT $2{}",
            if postgres { " FOR UPDATE SKIP LOCKED" } else { "" }
        );
        let raws = on_conn!(self, |c| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(claim.now)
                .bind(i64::from(scan))
                .fetch_all(c)
                .await?;
            rows.iter().map(RawJob::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        let candidates = raws.into_iter().map(RawJob::into_record).collect::<Result<Vec<_>, _>>()?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let running: Vec<(i64, Option<String>, i64)> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT installation_id, concurrency_key, COUNT(*) FROM jobs
                 WHERE state = 'running' AND lease_until > $1 GROUP BY installation_id, concurrency_key",
            )
            .bind(claim.now)
            .fetch_all(c)
            .await
        })?;
        let mut per_installation: HashMap<i64, u64> = HashMap::new();
        let mut per_key: HashMap<(i64, String), u64> = HashMap::new();
        for (installation, key, n) in running {
            let n = u64::try_from(n).unwrap_or(0);
            *per_installation.entry(installation).or_default() += n;
            if let Some(key) = key {
                *per_key.entry((installation, key)).or_default() += n;
            }
        }
        let mut claimed = Vec::new();
        for mut job in candidates {
            if claimed.len() >= usize::try_from(claim.limit).unwrap_or(usize::MAX) {
                break;
            }
            let busy = per_installation.entry(job.installation_id).or_default();
            if *busy >= u64::from(claim.per_installation) {
                continue;
            }
            if let Some((key, limit)) = &job.concurrency {
                let used = per_key.entry((job.installation_id, key.clone())).or_default();
                if *used >= u64::from(*limit) {
                    continue;
                }
                *used += 1;
            }
            *busy += 1;
            let lost = job.state == JobState::Running;
            let lost_error = "the node delivering it stopped before it finished (its lease ran out)";
            on_conn!(self, |c| {
                sqlx::query(
                    "UPDATE jobs SET state = 'running', lease_owner = $2, lease_until = $3,
                        attempts = attempts + $4, last_error = CASE WHEN $4 = 1 THEN $5 ELSE last_error END
                     WHERE id = $1",
                )
                .bind(job.id)
                .bind(claim.node)
                .bind(claim.lease_until)
                .bind(i64::from(lost))
                .bind(lost_error)
                .execute(c)
                .await
                .map(drop)
            })?;
            if lost {
                job.attempts = job.attempts.saturating_add(1);
                job.last_error = Some(lost_error.to_owned());
            }
            job.state = JobState::Running;
            job.lease_owner = Some(claim.node.to_owned());
            job.lease_until = Some(claim.lease_until);
            claimed.push(job);
        }
        Ok(claimed)
    }

    /// Keep a running event the node's until `until`; false if the node no
    /// longer holds it (its lease ran out and another node took it).
    pub async fn job_extend_lease(&mut self, id: i64, node: &str, until: Millis) -> Result<bool, StoreError> {
        let n = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE jobs SET lease_until = $3 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            )
            .bind(id)
            .bind(node)
            .bind(until)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// The event was delivered. False if the node no longer held it (the
    /// row is left as it is: another node delivers it again).
    pub async fn job_complete(&mut self, id: i64, node: &str, now: Millis) -> Result<bool, StoreError> {
        self.job_finish(id, node, now, JobState::Done, None).await
    }

    /// Give up on the event: its delivery failed and no retry is left.
    pub async fn job_fail(
        &mut self,
        id: i64,
        node: &str,
        now: Millis,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.job_finish(id, node, now, JobState::Failed, Some(error)).await
    }

    async fn job_finish(
        &mut self,
        id: i64,
        node: &str,
        now: Millis,
        state: JobState,
        error: Option<&str>,
    ) -> Result<bool, StoreError> {
        let failed = i64::from(state == JobState::Failed);
        let error = error.map(bounded);
        let empty: &[u8] = &[];
        // The body and retry context are the app's data, and a finished
        // event needs neither: they go now, the row at the purge.
        let n = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE jobs SET state = $4, finished_at = $3, attempts = attempts + $5,
                    last_error = COALESCE($6, last_error), body = $7, retry = NULL,
                    lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            )
            .bind(id)
            .bind(node)
            .bind(now)
            .bind(state.as_str())
            .bind(failed)
            .bind(error)
            .bind(empty)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Deliver the event again at `run_at`: one more attempt counted, the
    /// failure kept for the operator, and `retry` (the sealed retry
    /// context the next delivery carries) replaced. False if the node no
    /// longer held it.
    pub async fn job_retry(
        &mut self,
        id: i64,
        node: &str,
        run_at: Millis,
        error: &str,
        retry: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        let error = bounded(error);
        let n = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE jobs SET state = 'pending', run_at = $3, attempts = attempts + 1, last_error = $4,
                    retry = $5, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            )
            .bind(id)
            .bind(node)
            .bind(run_at)
            .bind(&error)
            .bind(retry)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Cancel a push's events that have not started (running ones finish).
    /// Returns how many were cancelled.
    pub async fn jobs_cancel(
        &mut self,
        installation_id: i64,
        kind: JobKind,
        target: &str,
        job_id: &str,
        now: Millis,
    ) -> Result<u64, StoreError> {
        let empty: &[u8] = &[];
        Ok(on_conn!(self, |c| {
            sqlx::query(
                "UPDATE jobs SET state = 'cancelled', finished_at = $5, body = $6, retry = NULL
                 WHERE installation_id = $1 AND kind = $2 AND target = $3 AND job_id = $4 AND state = 'pending'",
            )
            .bind(installation_id)
            .bind(kind.as_str())
            .bind(target)
            .bind(job_id)
            .bind(now)
            .bind(empty)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?)
    }

    /// How a push's events stand; `None` if the installation has no such
    /// push for this kind and target (or its rows were purged).
    pub async fn job_stats(
        &mut self,
        installation_id: i64,
        kind: JobKind,
        target: &str,
        job_id: &str,
    ) -> Result<Option<JobStats>, StoreError> {
        let rows: Vec<(String, i64)> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT state, COUNT(*) FROM jobs
                 WHERE installation_id = $1 AND kind = $2 AND target = $3 AND job_id = $4 GROUP BY state",
            )
            .bind(installation_id)
            .bind(kind.as_str())
            .bind(target)
            .bind(job_id)
            .fetch_all(c)
            .await
        })?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut stats = JobStats::default();
        for (state, n) in rows {
            let n = u64::try_from(n).unwrap_or(0);
            match JobState::parse(&state) {
                Some(JobState::Done) => stats.success += n,
                Some(JobState::Pending | JobState::Running) => stats.in_progress += n,
                Some(JobState::Failed | JobState::Cancelled) => stats.failed += n,
                None => return Err(StoreError::corrupt("jobs", format!("unknown state {state:?}"))),
            }
        }
        Ok(Some(stats))
    }

    /// Give up on pending events stored before `created_before` (they
    /// outlived the retention window without being delivered). Running
    /// ones are left to their node. Returns how many.
    pub async fn jobs_expire(
        &mut self,
        created_before: Millis,
        now: Millis,
        error: &str,
    ) -> Result<u64, StoreError> {
        let empty: &[u8] = &[];
        let error = bounded(error);
        Ok(on_conn!(self, |c| {
            sqlx::query(
                "UPDATE jobs SET state = 'failed', finished_at = $2, last_error = $3, body = $4, retry = NULL
                 WHERE state = 'pending' AND created_at < $1",
            )
            .bind(created_before)
            .bind(now)
            .bind(&error)
            .bind(empty)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?)
    }

    /// Delete up to `limit` finished rows (done, failed, cancelled) that
    /// finished before `finished_before`. Returns how many.
    pub async fn jobs_purge(&mut self, finished_before: Millis, limit: u32) -> Result<u64, StoreError> {
        Ok(on_conn!(self, |c| {
            sqlx::query(
                "DELETE FROM jobs WHERE id IN (
                    SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < $1 LIMIT $2)",
            )
            .bind(finished_before)
            .bind(i64::from(limit))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?)
    }

    /// One event, by what makes it unique.
    pub async fn job_by_event(
        &mut self,
        installation_id: i64,
        kind: JobKind,
        target: &str,
        event_id: &str,
    ) -> Result<Option<JobRow>, StoreError> {
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs
             WHERE installation_id = $1 AND kind = $2 AND target = $3 AND event_id = $4"
        );
        let raw = on_conn!(self, |c| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(installation_id)
                .bind(kind.as_str())
                .bind(target)
                .bind(event_id)
                .fetch_optional(c)
                .await?;
            row.as_ref().map(RawJob::from_row).transpose()
        })?;
        raw.map(RawJob::into_record).transpose()
    }

    /// A push's events, in the order they were stored.
    pub async fn jobs_of(&mut self, installation_id: i64, job_id: &str) -> Result<Vec<JobRow>, StoreError> {
        let sql =
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE installation_id = $1 AND job_id = $2 ORDER BY id");
        let raws = on_conn!(self, |c| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(installation_id)
                .bind(job_id)
                .fetch_all(c)
                .await?;
            rows.iter().map(RawJob::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        raws.into_iter().map(RawJob::into_record).collect()
    }
}
