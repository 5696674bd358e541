//! Web trigger URLs: which installation and module a URL's secret opens.
//! Rows hold the SHA-256 of the secret only; what a URL may do is
//! `kiln-apps`' and the server's to decide. Also the two installation
//! lookups the server's request paths use: by row id (a web trigger's
//! row) and by public id (a resolver call's path).

use crate::{InstallationRecord, Millis, RawInstallation, StoreError, Tx, TxInner, on_conn};

/// One web trigger URL as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebtriggerRow {
    pub installation_id: i64,
    pub module_key: String,
    pub created_at: Millis,
}

impl Tx {
    /// The URL whose secret hashes to `token_hash`.
    pub async fn webtrigger_by_hash(
        &mut self,
        token_hash: &[u8],
    ) -> Result<Option<WebtriggerRow>, StoreError> {
        let row: Option<(i64, String, i64)> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT installation_id, module_key, created_at FROM webtriggers WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(c)
            .await
        })?;
        Ok(row.map(|(installation_id, module_key, created_at)| WebtriggerRow {
            installation_id,
            module_key,
            created_at,
        }))
    }

    /// Whether the installation already has a URL for the module.
    pub async fn webtrigger_exists(
        &mut self,
        installation_id: i64,
        module_key: &str,
    ) -> Result<bool, StoreError> {
        let n: i64 = on_conn!(self, |c| {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM webtriggers WHERE installation_id = $1 AND module_key = $2",
            )
            .bind(installation_id)
            .bind(module_key)
            .fetch_one(c)
            .await
        })?;
        Ok(n > 0)
    }

    /// Record a new URL; false if the installation already has one for the
    /// module (another node made it first).
    pub async fn webtrigger_insert(
        &mut self,
        installation_id: i64,
        module_key: &str,
        token_hash: &[u8],
        now: Millis,
    ) -> Result<bool, StoreError> {
        let inserted = on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO webtriggers (installation_id, module_key, token_hash, created_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (installation_id, module_key) DO NOTHING",
            )
            .bind(installation_id)
            .bind(module_key)
            .bind(token_hash)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(inserted == 1)
    }

    /// Forget the installation's URL for the module; true if there was one.
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
