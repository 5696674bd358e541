//! Rows of the audit trail and its checkpoints. This layer stores and reads
//! them; chaining, signing and verifying are `kiln-audit`'s.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{Millis, StoreError, Tx, TxInner, col, on_conn};

/// One audit record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub source: Option<String>,
    pub details: String,
    pub key_id: String,
    pub mac: Vec<u8>,
}

/// One signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRow {
    pub seq: i64,
    pub mac: Vec<u8>,
    pub at: Millis,
    pub key_id: String,
    pub signature: Vec<u8>,
}

fn audit_row<'r, R>(r: &'r R) -> Result<AuditRow, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(AuditRow {
        seq: col(r, "seq")?,
        at: col(r, "at")?,
        actor: col(r, "actor")?,
        action: col(r, "action")?,
        target: col(r, "target")?,
        outcome: col(r, "outcome")?,
        source: col(r, "source")?,
        details: col(r, "details")?,
        key_id: col(r, "key_id")?,
        mac: col(r, "mac")?,
    })
}

/// A checkpoint row as a tuple: seq, mac, at, key id, signature.
type CheckpointTuple = (i64, Vec<u8>, i64, String, Vec<u8>);

fn checkpoint_row((seq, mac, at, key_id, signature): CheckpointTuple) -> CheckpointRow {
    CheckpointRow { seq, mac, at, key_id, signature }
}

/// A fixed advisory-lock key for appends to the audit trail.
const AUDIT_LOCK: i64 = 0x6b69_6c6e_6175_6474; // "kilnaudt"

impl Tx {
    /// Hold off every other appender until this transaction ends, so seq
    /// numbers and the chain stay linear across nodes. SQLite's IMMEDIATE
    /// transaction already holds the database's write lock.
    pub async fn audit_lock(&mut self) -> Result<(), StoreError> {
        match &mut self.inner {
            TxInner::Sqlite(_) => Ok(()),
            TxInner::Postgres(t) => {
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(AUDIT_LOCK).execute(&mut **t).await?;
                Ok(())
            }
        }
    }

    /// The last record's seq and MAC, if there is one.
    pub async fn audit_head(&mut self) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        let row: Option<(i64, Vec<u8>)> = on_conn!(self, |c| {
            sqlx::query_as("SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_optional(c).await
        })?;
        Ok(row)
    }

    pub async fn audit_insert(&mut self, row: &AuditRow) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO audit_log (seq, at, actor, action, target, outcome, source, details, key_id, mac)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(row.seq)
            .bind(row.at)
            .bind(&row.actor)
            .bind(&row.action)
            .bind(&row.target)
            .bind(&row.outcome)
            .bind(&row.source)
            .bind(&row.details)
            .bind(&row.key_id)
            .bind(&row.mac)
            .execute(c)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Records after `after` (a seq), in order, at most `limit`.
    pub async fn audit_records(&mut self, after: i64, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let rows = on_conn!(self, |c| {
            let rows = sqlx::query(
                "SELECT seq, at, actor, action, target, outcome, source, details, key_id, mac FROM audit_log
                 WHERE seq > $1 ORDER BY seq LIMIT $2",
            )
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(c)
            .await?;
            rows.iter().map(audit_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }

    /// The last `limit` records, oldest first.
    pub async fn audit_tail(&mut self, limit: u32) -> Result<Vec<AuditRow>, StoreError> {
        let mut rows = on_conn!(self, |c| {
            let rows = sqlx::query(
                "SELECT seq, at, actor, action, target, outcome, source, details, key_id, mac FROM audit_log
                 ORDER BY seq DESC LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(c)
            .await?;
            rows.iter().map(audit_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        rows.reverse();
        Ok(rows)
    }

    pub async fn audit_checkpoint_insert(&mut self, row: &CheckpointRow) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO audit_checkpoints (seq, mac, at, key_id, signature) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (seq) DO NOTHING",
            )
            .bind(row.seq)
            .bind(&row.mac)
            .bind(row.at)
            .bind(&row.key_id)
            .bind(&row.signature)
            .execute(c)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// The checkpoint with the highest seq, if any.
    pub async fn audit_last_checkpoint(&mut self) -> Result<Option<CheckpointRow>, StoreError> {
        let row: Option<CheckpointTuple> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT seq, mac, at, key_id, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            )
            .fetch_optional(c)
            .await
        })?;
        Ok(row.map(checkpoint_row))
    }

    /// Every checkpoint, in seq order.
    pub async fn audit_checkpoints(&mut self) -> Result<Vec<CheckpointRow>, StoreError> {
        let rows: Vec<CheckpointTuple> = on_conn!(self, |c| {
            sqlx::query_as("SELECT seq, mac, at, key_id, signature FROM audit_checkpoints ORDER BY seq")
                .fetch_all(c)
                .await
        })?;
        Ok(rows.into_iter().map(checkpoint_row).collect())
    }
}

/// One alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    pub id: i64,
    pub rule: String,
    pub dedup_key: String,
    pub message: String,
    pub first_seq: i64,
    pub last_seq: i64,
    pub count: i64,
    pub first_at: Millis,
    pub last_at: Millis,
    pub delivered_at: Option<Millis>,
    pub attempts: i64,
    pub last_error: Option<String>,
}

type AlertTuple = (i64, String, String, String, i64, i64, i64, i64, i64, Option<i64>, i64, Option<String>);

const ALERT_COLUMNS: &str = "id, rule, dedup_key, message, first_seq, last_seq, count, first_at, last_at, delivered_at, attempts, last_error";

fn alert_row(t: AlertTuple) -> AlertRow {
    let (
        id,
        rule,
        dedup_key,
        message,
        first_seq,
        last_seq,
        count,
        first_at,
        last_at,
        delivered_at,
        attempts,
        last_error,
    ) = t;
    AlertRow {
        id,
        rule,
        dedup_key,
        message,
        first_seq,
        last_seq,
        count,
        first_at,
        last_at,
        delivered_at,
        attempts,
        last_error,
    }
}

/// What [`Tx::audit_count`] counts.
#[derive(Debug, Clone, Copy)]
pub struct AuditCount<'a> {
    pub action: &'a str,
    /// Only records with this target, if given.
    pub target: Option<&'a str>,
    /// Only records from this source address, if given.
    pub source: Option<&'a str>,
    /// Only successful records, if true.
    pub success_only: bool,
    /// Records at or after this time.
    pub since: Millis,
    /// Records before this seq.
    pub before_seq: i64,
}

impl Tx {
    /// How many records match `q`: for alert rules that count.
    pub async fn audit_count(&mut self, q: AuditCount<'_>) -> Result<i64, StoreError> {
        let n: i64 = on_conn!(self, |c| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM audit_log
                 WHERE action = $1 AND ($2 IS NULL OR target = $2) AND ($3 IS NULL OR source = $3)
                   AND (NOT $4 OR outcome = 'success') AND at >= $5 AND seq < $6",
            )
            .bind(q.action)
            .bind(q.target)
            .bind(q.source)
            .bind(q.success_only)
            .bind(q.since)
            .bind(q.before_seq)
            .fetch_one(c)
            .await
        })?;
        Ok(n)
    }

    /// The seq the alert rules have read up to; locks it (PostgreSQL) so
    /// that one node evaluates at a time.
    pub async fn alert_cursor(&mut self) -> Result<i64, StoreError> {
        let seq: i64 = match &mut self.inner {
            TxInner::Sqlite(t) => {
                sqlx::query_scalar("SELECT seq FROM alert_cursor WHERE id = 1").fetch_one(&mut **t).await?
            }
            TxInner::Postgres(t) => {
                sqlx::query_scalar("SELECT seq FROM alert_cursor WHERE id = 1 FOR UPDATE")
                    .fetch_one(&mut **t)
                    .await?
            }
        };
        Ok(seq)
    }

    pub async fn alert_cursor_set(&mut self, seq: i64) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE alert_cursor SET seq = $1 WHERE id = 1").bind(seq).execute(c).await.map(drop)
        })?;
        Ok(())
    }

    /// The latest alert for (rule, key) whose last occurrence is at or
    /// after `since`: the one a repeat is folded into.
    pub async fn alert_open(
        &mut self,
        rule: &str,
        key: &str,
        since: Millis,
    ) -> Result<Option<AlertRow>, StoreError> {
        let sql = format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE rule = $1 AND dedup_key = $2 AND last_at >= $3
             ORDER BY id DESC LIMIT 1"
        );
        let row: Option<AlertTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(rule)
                .bind(key)
                .bind(since)
                .fetch_optional(c)
                .await
        })?;
        Ok(row.map(alert_row))
    }

    pub async fn alert_insert(
        &mut self,
        rule: &str,
        key: &str,
        message: &str,
        seq: i64,
        at: Millis,
    ) -> Result<i64, StoreError> {
        let id: i64 = on_conn!(self, |c| {
            sqlx::query_scalar(
                "INSERT INTO alerts (rule, dedup_key, message, first_seq, last_seq, count, first_at, last_at,
                                     delivered_at, attempts, last_error)
                 VALUES ($1, $2, $3, $4, $4, 1, $5, $5, NULL, 0, NULL) RETURNING id",
            )
            .bind(rule)
            .bind(key)
            .bind(message)
            .bind(seq)
            .bind(at)
            .fetch_one(c)
            .await
        })?;
        Ok(id)
    }

    /// Fold another occurrence into alert `id`.
    pub async fn alert_bump(&mut self, id: i64, seq: i64, at: Millis) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE alerts SET count = count + 1, last_seq = $2, last_at = $3 WHERE id = $1")
                .bind(id)
                .bind(seq)
                .bind(at)
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Record a delivery attempt: delivered, or the error.
    pub async fn alert_delivery(
        &mut self,
        id: i64,
        delivered_at: Option<Millis>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query(
                "UPDATE alerts SET attempts = attempts + 1, delivered_at = COALESCE($2, delivered_at), last_error = $3
                 WHERE id = $1",
            )
            .bind(id)
            .bind(delivered_at)
            .bind(error)
            .execute(c)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// The newest alerts first, at most `limit`.
    pub async fn alerts(&mut self, limit: u32) -> Result<Vec<AlertRow>, StoreError> {
        let sql = format!("SELECT {ALERT_COLUMNS} FROM alerts ORDER BY id DESC LIMIT $1");
        let rows: Vec<AlertTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(i64::from(limit)).fetch_all(c).await
        })?;
        Ok(rows.into_iter().map(alert_row).collect())
    }
}
