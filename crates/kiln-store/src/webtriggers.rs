//! Web trigger URLs: which installation and module a URL's secret opens.
//! Rows hold the SHA-256 of the secret only, and the name the secret is
//! sealed under in the installation's token namespace; what a URL may do
//! is `kiln-apps`' and the server's to decide. An installation may have
//! several URLs for one module (apps make and delete their own); the
//! oldest is the one shown by default. Also the two installation lookups
//! the server's request paths use: by row id (a web trigger's row) and by
//! public id (a resolver call's path).

use crate::{InstallationRecord, Millis, RawInstallation, StoreError, Tx, TxInner, on_conn};

/// Who made a web trigger URL. Recorded for operators; nothing is decided
/// by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebtriggerCreator {
    /// Kiln, on first ask (`kiln webtrigger`, `getUrl` without forceCreate).
    Platform,
    /// The app, with `getUrl(key, true)`.
    App,
}

impl WebtriggerCreator {
    pub fn as_str(self) -> &'static str {
        match self {
            WebtriggerCreator::Platform => "platform",
            WebtriggerCreator::App => "app",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "platform" => Some(WebtriggerCreator::Platform),
            "app" => Some(WebtriggerCreator::App),
            _ => None,
        }
    }
}

/// One web trigger URL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebtriggerRow {
    pub id: i64,
    pub installation_id: i64,
    pub module_key: String,
    /// The name its secret is sealed under in the installation's token
    /// namespace.
    pub secret_name: String,
    pub created_by: WebtriggerCreator,
    pub created_at: Millis,
}

/// A URL to record.
#[derive(Debug, Clone, Copy)]
pub struct NewWebtrigger<'a> {
    pub installation_id: i64,
    pub module_key: &'a str,
    /// SHA-256 of the URL's secret part.
    pub token_hash: &'a [u8],
    pub secret_name: &'a str,
    pub created_by: WebtriggerCreator,
}

const COLUMNS: &str = "id, installation_id, module_key, secret_name, created_by, created_at";

type RawRow = (i64, i64, String, String, String, i64);

fn into_row(raw: RawRow) -> Result<WebtriggerRow, StoreError> {
    let (id, installation_id, module_key, secret_name, created_by, created_at) = raw;
    let created_by = WebtriggerCreator::parse(&created_by).ok_or_else(|| {
        StoreError::corrupt(format!("web trigger URL {id}"), format!("created_by {created_by:?}"))
    })?;
    if secret_name.is_empty() {
        return Err(StoreError::corrupt(format!("web trigger URL {id}"), "no secret name"));
    }
    Ok(WebtriggerRow { id, installation_id, module_key, secret_name, created_by, created_at })
}

impl Tx {
    /// The URL whose secret hashes to `token_hash`.
    pub async fn webtrigger_by_hash(
        &mut self,
        token_hash: &[u8],
    ) -> Result<Option<WebtriggerRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM webtriggers WHERE token_hash = $1");
        let row: Option<RawRow> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(token_hash).fetch_optional(c).await
        })?;
        row.map(into_row).transpose()
    }

    /// The installation's URLs, oldest first: every module's, or
    /// `module_key`'s only.
    pub async fn webtriggers_of(
        &mut self,
        installation_id: i64,
        module_key: Option<&str>,
    ) -> Result<Vec<WebtriggerRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webtriggers
             WHERE installation_id = $1 AND ($2 IS NULL OR module_key = $2) ORDER BY id"
        );
        let rows: Vec<RawRow> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(installation_id)
                .bind(module_key)
                .fetch_all(c)
                .await
        })?;
        rows.into_iter().map(into_row).collect()
    }

    /// The installation's oldest URL for the module: the one shown when no
    /// new one is asked for.
    pub async fn webtrigger_oldest(
        &mut self,
        installation_id: i64,
        module_key: &str,
    ) -> Result<Option<WebtriggerRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webtriggers
             WHERE installation_id = $1 AND module_key = $2 ORDER BY id LIMIT 1"
        );
        let row: Option<RawRow> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(installation_id)
                .bind(module_key)
                .fetch_optional(c)
                .await
        })?;
        row.map(into_row).transpose()
    }

    /// How many URLs the installation has, all modules together.
    pub async fn webtrigger_count(&mut self, installation_id: i64) -> Result<u64, StoreError> {
        let n: i64 = on_conn!(self, |c| {
            sqlx::query_scalar("SELECT COUNT(*) FROM webtriggers WHERE installation_id = $1")
                .bind(installation_id)
                .fetch_one(c)
                .await
        })?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Serialise changes to one installation's URLs until the transaction
    /// ends, so that "make the first URL unless there is one" and "make one
    /// unless the installation is at its cap" hold across nodes. SQLite's
    /// write transactions already exclude each other (they begin
    /// IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock.
    pub async fn lock_webtriggers(&mut self, installation_id: i64) -> Result<(), StoreError> {
        if let TxInner::Postgres(t) = &mut self.inner {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("webtriggers/{installation_id}"))
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    }

    /// Whether the installation has a URL for the module.
    pub async fn webtrigger_exists(
        &mut self,
        installation_id: i64,
        module_key: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.webtrigger_oldest(installation_id, module_key).await?.is_some())
    }

    /// Record a new URL; its row id.
    pub async fn webtrigger_insert(
        &mut self,
        new: &NewWebtrigger<'_>,
        now: Millis,
    ) -> Result<i64, StoreError> {
        Ok(on_conn!(self, |c| {
            sqlx::query_scalar(
                "INSERT INTO webtriggers (installation_id, module_key, token_hash, secret_name, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(new.installation_id)
            .bind(new.module_key)
            .bind(new.token_hash)
            .bind(new.secret_name)
            .bind(new.created_by.as_str())
            .bind(now)
            .fetch_one(c)
            .await
        })?)
    }

    /// Forget one URL of the installation; true if it had it. The
    /// installation is part of the condition, so a row id from elsewhere
    /// deletes nothing.
    pub async fn webtrigger_delete_one(&mut self, installation_id: i64, id: i64) -> Result<bool, StoreError> {
        let deleted = on_conn!(self, |c| {
            sqlx::query("DELETE FROM webtriggers WHERE installation_id = $1 AND id = $2")
                .bind(installation_id)
                .bind(id)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(deleted > 0)
    }

    /// Forget every URL the installation has for the module; true if there
    /// was one.
    pub async fn webtrigger_delete(
        &mut self,
        installation_id: i64,
        module_key: &str,
    ) -> Result<bool, StoreError> {
        let deleted = on_conn!(self, |c| {
            sqlx::query("DELETE FROM webtriggers WHERE installation_id = $1 AND module_key = $2")
                .bind(installation_id)
                .bind(module_key)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(deleted > 0)
    }

    /// One installation, by its row id.
    pub async fn installation_by_id(&mut self, id: i64) -> Result<Option<InstallationRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM installations i
             JOIN apps a ON a.id = i.app_id JOIN versions v ON v.id = i.version_id
             WHERE i.id = $1",
            crate::INSTALLATION_COLUMNS
        );
        let raw = on_conn!(self, |c| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await?;
            row.as_ref().map(RawInstallation::from_row).transpose()
        })?;
        raw.map(RawInstallation::into_record).transpose()
    }

    /// One installation, by the id it is known by outside (resolver calls
    /// name it in their path and their context token's audience).
    pub async fn installation_by_public_id(
        &mut self,
        public_id: &str,
    ) -> Result<Option<InstallationRecord>, StoreError> {
        let sql = format!(
            "SELECT {} FROM installations i
             JOIN apps a ON a.id = i.app_id JOIN versions v ON v.id = i.version_id
             WHERE i.public_id = $1",
            crate::INSTALLATION_COLUMNS
        );
        let raw = on_conn!(self, |c| {
            let row =
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(public_id).fetch_optional(c).await?;
            row.as_ref().map(RawInstallation::from_row).transpose()
        })?;
        raw.map(RawInstallation::into_record).transpose()
    }
}
