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
