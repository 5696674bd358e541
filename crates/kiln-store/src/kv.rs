//! Rows of the key-value store and the data keys that seal them.
//!
//! This layer stores and reads sealed bytes; it never sees plaintext or key
//! material. Expired entries are invisible from the moment they expire and
//! are deleted by [`Tx::kv_sweep`].

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::{Millis, StoreError, Tx, TxInner, col, on_conn};

/// One stored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRow {
    pub key: String,
    pub value: Vec<u8>,
    pub key_id: u32,
    pub expires_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// An entry to write.
#[derive(Debug, Clone, Copy)]
pub struct KvPut<'a> {
    pub owner: &'a str,
    pub namespace: &'a str,
    pub key: &'a str,
    /// The sealed value.
    pub value: &'a [u8],
    /// The data key that sealed it.
    pub key_id: u32,
    pub expires_at: Option<Millis>,
}

/// A wrapped data key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyRow {
    pub key_id: u32,
    pub wrapped: Vec<u8>,
    pub kek_id: String,
    pub active: bool,
}

fn kv_row<'r, R>(r: &'r R) -> Result<KvRow, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(KvRow {
        key: col(r, "key")?,
        value: col(r, "value")?,
        key_id: u32::try_from(col::<R, i64>(r, "key_id")?).unwrap_or(u32::MAX),
        expires_at: col(r, "expires_at")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

impl Tx {
    /// Every data key of `owner`, oldest first.
    pub async fn data_keys(&mut self, owner: &str) -> Result<Vec<DataKeyRow>, StoreError> {
        let rows: Vec<(i64, Vec<u8>, String, bool)> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT key_id, wrapped, kek_id, active FROM data_keys WHERE owner = $1 ORDER BY key_id",
            )
            .bind(owner)
            .fetch_all(c)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(key_id, wrapped, kek_id, active)| DataKeyRow {
                key_id: u32::try_from(key_id).unwrap_or(u32::MAX),
                wrapped,
                kek_id,
                active,
            })
            .collect())
    }

    /// Store a new data key for `owner`; when `active`, it becomes the one
    /// new values are sealed with and the others stop being active.
    pub async fn insert_data_key(
        &mut self,
        owner: &str,
        key_id: u32,
        wrapped: &[u8],
        kek_id: &str,
        active: bool,
    ) -> Result<(), StoreError> {
        if active {
            on_conn!(self, |c| {
                sqlx::query("UPDATE data_keys SET active = FALSE WHERE owner = $1")
                    .bind(owner)
                    .execute(c)
                    .await
                    .map(drop)
            })?;
        }
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO data_keys (owner, key_id, wrapped, kek_id, active, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(owner)
            .bind(i64::from(key_id))
            .bind(wrapped)
            .bind(kek_id)
            .bind(active)
            .bind(crate::now_millis())
            .execute(c)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Replace a data key's wrapping (after a KEK rotation).
    pub async fn rewrap_data_key(
        &mut self,
        owner: &str,
        key_id: u32,
        wrapped: &[u8],
        kek_id: &str,
    ) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE data_keys SET wrapped = $1, kek_id = $2 WHERE owner = $3 AND key_id = $4")
                .bind(wrapped)
                .bind(kek_id)
                .bind(owner)
                .bind(i64::from(key_id))
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(())
    }

    /// Every owner with data keys, and every wrapped key: what a KEK
    /// rotation rewraps.
    pub async fn all_data_keys(&mut self) -> Result<Vec<(String, DataKeyRow)>, StoreError> {
        let rows: Vec<(String, i64, Vec<u8>, String, bool)> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT owner, key_id, wrapped, kek_id, active FROM data_keys ORDER BY owner, key_id",
            )
            .fetch_all(c)
            .await
        })?;
        Ok(rows
            .into_iter()
            .map(|(owner, key_id, wrapped, kek_id, active)| {
                (
                    owner,
                    DataKeyRow { key_id: u32::try_from(key_id).unwrap_or(u32::MAX), wrapped, kek_id, active },
                )
            })
            .collect())
    }

    /// The live entry at (`owner`, `namespace`, `key`), if any.
    pub async fn kv_get(
        &mut self,
        owner: &str,
        namespace: &str,
        key: &str,
        now: Millis,
    ) -> Result<Option<KvRow>, StoreError> {
        let row = on_conn!(self, |c| {
            let row = sqlx::query(
                "SELECT key, value, key_id, expires_at, created_at, updated_at FROM kv_entries
                 WHERE owner = $1 AND namespace = $2 AND key = $3 AND (expires_at IS NULL OR expires_at > $4)",
            )
            .bind(owner)
            .bind(namespace)
            .bind(key)
            .bind(now)
            .fetch_optional(c)
            .await?;
            row.as_ref().map(kv_row).transpose()
        })?;
        Ok(row)
    }

    /// Hold off every other writer of (`owner`, `namespace`, `key`) until
    /// this transaction ends, so a read-check-write (`FAIL_IF_EXISTS`, the
    /// previous value) is atomic. SQLite's IMMEDIATE transaction already
    /// holds the database's write lock; PostgreSQL takes an advisory lock on
    /// a hash of the key (a collision only serialises two unrelated writes).
    pub async fn kv_lock(&mut self, owner: &str, namespace: &str, key: &str) -> Result<(), StoreError> {
        match &mut self.inner {
            TxInner::Sqlite(_) => Ok(()),
            TxInner::Postgres(t) => {
                sqlx::query(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2 || '/' || $3, 0))",
                )
                .bind(owner)
                .bind(namespace)
                .bind(key)
                .execute(&mut **t)
                .await?;
                Ok(())
            }
        }
    }

    /// Insert or replace an entry. `created_at` survives replacement.
    pub async fn kv_put(&mut self, put: KvPut<'_>, now: Millis) -> Result<(), StoreError> {
        let KvPut { owner, namespace, key, value, key_id, expires_at } = put;
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO kv_entries (owner, namespace, key, value, key_id, expires_at, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                 ON CONFLICT (owner, namespace, key) DO UPDATE SET
                   value = excluded.value, key_id = excluded.key_id, expires_at = excluded.expires_at,
                   updated_at = excluded.updated_at,
                   created_at = CASE WHEN kv_entries.expires_at IS NOT NULL AND kv_entries.expires_at <= excluded.updated_at
                                     THEN excluded.created_at ELSE kv_entries.created_at END",
            )
            .bind(owner)
            .bind(namespace)
            .bind(key)
            .bind(value)
            .bind(i64::from(key_id))
            .bind(expires_at)
            .bind(now)
            .execute(c)
            .await
            .map(drop)
        })?;
        Ok(())
    }

    /// Replace an entry's sealed value with `new` (under data key
    /// `key_id`) only if it still holds `old`: re-encryption never
    /// overwrites a write that landed after it read the row. True if
    /// replaced.
    pub async fn kv_reseal(
        &mut self,
        owner: &str,
        namespace: &str,
        key: &str,
        old: &[u8],
        new: &[u8],
        key_id: u32,
    ) -> Result<bool, StoreError> {
        let n = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE kv_entries SET value = $5, key_id = $6
                 WHERE owner = $1 AND namespace = $2 AND key = $3 AND value = $4",
            )
            .bind(owner)
            .bind(namespace)
            .bind(key)
            .bind(old)
            .bind(new)
            .bind(i64::from(key_id))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n == 1)
    }

    /// Delete an entry; true if a live one existed.
    pub async fn kv_delete(
        &mut self,
        owner: &str,
        namespace: &str,
        key: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let live = self.kv_get(owner, namespace, key, now).await?.is_some();
        on_conn!(self, |c| {
            sqlx::query("DELETE FROM kv_entries WHERE owner = $1 AND namespace = $2 AND key = $3")
                .bind(owner)
                .bind(namespace)
                .bind(key)
                .execute(c)
                .await
                .map(drop)
        })?;
        Ok(live)
    }

    /// Live entries whose key starts with `prefix`, after `after`, in
    /// bytewise key order, at most `limit`.
    pub async fn kv_query(
        &mut self,
        owner: &str,
        namespace: &str,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
        now: Millis,
    ) -> Result<Vec<KvRow>, StoreError> {
        let after = after.unwrap_or("");
        let rows = on_conn!(self, |c| {
            let rows = sqlx::query(
                "SELECT key, value, key_id, expires_at, created_at, updated_at FROM kv_entries
                 WHERE owner = $1 AND namespace = $2 AND substr(key, 1, length($3)) = $3 AND key > $4
                   AND (expires_at IS NULL OR expires_at > $5)
                 ORDER BY key LIMIT $6",
            )
            .bind(owner)
            .bind(namespace)
            .bind(prefix)
            .bind(after)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(c)
            .await?;
            rows.iter().map(kv_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }

    /// Delete up to `limit` expired entries; returns how many.
    pub async fn kv_sweep(&mut self, now: Millis, limit: u32) -> Result<u64, StoreError> {
        let n = on_conn!(self, |c| {
            sqlx::query(
                "DELETE FROM kv_entries WHERE (owner, namespace, key) IN
                   (SELECT owner, namespace, key FROM kv_entries WHERE expires_at IS NOT NULL AND expires_at <= $1 LIMIT $2)",
            )
            .bind(now)
            .bind(i64::from(limit))
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(n)
    }

    /// Entries of `owner` sealed with data keys other than `key_id`, for
    /// re-encryption after a data key rotation.
    pub async fn kv_sealed_with_other_keys(
        &mut self,
        owner: &str,
        key_id: u32,
        limit: u32,
    ) -> Result<Vec<(String, KvRow)>, StoreError> {
        let rows = on_conn!(self, |c| {
            let rows = sqlx::query(
                "SELECT namespace, key, value, key_id, expires_at, created_at, updated_at FROM kv_entries
                 WHERE owner = $1 AND key_id <> $2 ORDER BY namespace, key LIMIT $3",
            )
            .bind(owner)
            .bind(i64::from(key_id))
            .bind(i64::from(limit))
            .fetch_all(c)
            .await?;
            rows.iter()
                .map(|r| Ok((col::<_, String>(r, "namespace")?, kv_row(r)?)))
                .collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        Ok(rows)
    }
}
