//! Operator accounts, their sessions and API tokens, and failed sign-ins.
//! This layer stores rows; what they mean (roles, lockout, expiry) is
//! `kiln-access`'s.

use crate::{Millis, StoreError, Tx, TxInner, on_conn};

/// One operator account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRow {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub mfa_enrolled: bool,
    pub mfa_last_step: Option<i64>,
    pub failed_logins: i64,
    pub locked_until: Option<Millis>,
    pub disabled_at: Option<Millis>,
    pub created_at: Millis,
}

type OperatorTuple = (i64, String, String, String, i64, Option<i64>, i64, Option<i64>, Option<i64>, i64);

const OPERATOR_COLUMNS: &str = "id, name, role, password_hash, mfa_enrolled, mfa_last_step, failed_logins, \
                                locked_until, disabled_at, created_at";

fn operator_row(t: OperatorTuple) -> OperatorRow {
    let (
        id,
        name,
        role,
        password_hash,
        mfa,
        mfa_last_step,
        failed_logins,
        locked_until,
        disabled_at,
        created_at,
    ) = t;
    OperatorRow {
        id,
        name,
        role,
        password_hash,
        mfa_enrolled: mfa != 0,
        mfa_last_step,
        failed_logins,
        locked_until,
        disabled_at,
        created_at,
    }
}

/// One session as stored (the client holds the secret; this is its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub token_hash: Vec<u8>,
    pub operator_id: i64,
    pub created_at: Millis,
    pub last_seen_at: Millis,
    pub revoked_at: Option<Millis>,
    pub source: Option<String>,
}

/// One API token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    pub id: i64,
    pub operator_id: i64,
    pub name: String,
    /// JSON array of scope names.
    pub scopes: String,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub revoked_at: Option<Millis>,
    pub last_used_at: Option<Millis>,
}

type TokenTuple = (i64, i64, String, String, i64, i64, Option<i64>, Option<i64>);

const TOKEN_COLUMNS: &str = "id, operator_id, name, scopes, created_at, expires_at, revoked_at, last_used_at";

fn token_row(
    (id, operator_id, name, scopes, created_at, expires_at, revoked_at, last_used_at): TokenTuple,
) -> TokenRow {
    TokenRow { id, operator_id, name, scopes, created_at, expires_at, revoked_at, last_used_at }
}

/// What a new operator starts with.
#[derive(Debug, Clone, Copy)]
pub struct NewOperator<'a> {
    pub name: &'a str,
    pub role: &'a str,
    pub password_hash: &'a str,
    pub mfa_enrolled: bool,
}

impl Tx {
    pub async fn operator_insert(&mut self, new: NewOperator<'_>, now: Millis) -> Result<i64, StoreError> {
        let id: i64 = on_conn!(self, |c| {
            sqlx::query_scalar(
                "INSERT INTO operators (name, role, password_hash, mfa_enrolled, mfa_last_step, failed_logins,
                                        locked_until, disabled_at, created_at)
                 VALUES ($1, $2, $3, $4, NULL, 0, NULL, NULL, $5) RETURNING id",
            )
            .bind(new.name)
            .bind(new.role)
            .bind(new.password_hash)
            .bind(i64::from(new.mfa_enrolled))
            .bind(now)
            .fetch_one(c)
            .await
        })
        .map_err(|e| match e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict(format!("an operator named {:?} already exists", new.name))
            }
            other => other.into(),
        })?;
        Ok(id)
    }

    pub async fn operator_by_name(&mut self, name: &str) -> Result<Option<OperatorRow>, StoreError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE name = $1");
        let row: Option<OperatorTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(name).fetch_optional(c).await
        })?;
        Ok(row.map(operator_row))
    }

    pub async fn operator_by_id(&mut self, id: i64) -> Result<Option<OperatorRow>, StoreError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM operators WHERE id = $1");
        let row: Option<OperatorTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await
        })?;
        Ok(row.map(operator_row))
    }

    pub async fn operators(&mut self) -> Result<Vec<OperatorRow>, StoreError> {
        let sql = format!("SELECT {OPERATOR_COLUMNS} FROM operators ORDER BY name");
        let rows: Vec<OperatorTuple> =
            on_conn!(self, |c| sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(c).await)?;
        Ok(rows.into_iter().map(operator_row).collect())
    }

    /// Set one column of an operator that changes on its own: role,
    /// password hash, MFA enrollment, disabled time.
    pub async fn operator_set_role(&mut self, id: i64, role: &str) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE operators SET role = $2 WHERE id = $1")
                .bind(id)
                .bind(role)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn operator_set_password(&mut self, id: i64, password_hash: &str) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE operators SET password_hash = $2 WHERE id = $1")
                .bind(id)
                .bind(password_hash)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn operator_set_mfa(&mut self, id: i64, enrolled: bool) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE operators SET mfa_enrolled = $2, mfa_last_step = NULL WHERE id = $1")
                .bind(id)
                .bind(i64::from(enrolled))
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn operator_set_disabled(&mut self, id: i64, at: Option<Millis>) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE operators SET disabled_at = $2 WHERE id = $1")
                .bind(id)
                .bind(at)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Use the one-time-password step `step` if it is later than every step
    /// used before; false means it (or a later one) was already used. The
    /// check and the update are one statement, so two nodes cannot both
    /// accept the same code.
    pub async fn operator_use_mfa_step(&mut self, id: i64, step: i64) -> Result<bool, StoreError> {
        let done = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE operators SET mfa_last_step = $2
                 WHERE id = $1 AND (mfa_last_step IS NULL OR mfa_last_step < $2)",
            )
            .bind(id)
            .bind(step)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Count a failed sign-in; lock the account until `lock_until` if given.
    pub async fn operator_failed_login(
        &mut self,
        id: i64,
        lock_until: Option<Millis>,
    ) -> Result<i64, StoreError> {
        let n: i64 = on_conn!(self, |c| {
            sqlx::query_scalar(
                "UPDATE operators SET failed_logins = failed_logins + 1,
                        locked_until = COALESCE($2, locked_until)
                 WHERE id = $1 RETURNING failed_logins",
            )
            .bind(id)
            .bind(lock_until)
            .fetch_one(c)
            .await
        })?;
        Ok(n)
    }

    pub async fn operator_reset_failures(&mut self, id: i64) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE operators SET failed_logins = 0, locked_until = NULL WHERE id = $1")
                .bind(id)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn login_failure_insert(&mut self, source: &str, at: Millis) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("INSERT INTO login_failures (source, at) VALUES ($1, $2)")
                .bind(source)
                .bind(at)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Failed sign-ins from `source` since `since`; older rows are pruned.
    pub async fn login_failures_since(&mut self, source: &str, since: Millis) -> Result<i64, StoreError> {
        on_conn!(self, |c| {
            sqlx::query("DELETE FROM login_failures WHERE at < $1")
                .bind(since)
                .execute(&mut *c)
                .await
                .map(|r| r.rows_affected())
        })?;
        let n: i64 = on_conn!(self, |c| {
            sqlx::query_scalar("SELECT COUNT(*) FROM login_failures WHERE source = $1 AND at >= $2")
                .bind(source)
                .bind(since)
                .fetch_one(c)
                .await
        })?;
        Ok(n)
    }

    pub async fn session_insert(&mut self, row: &SessionRow) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO operator_sessions (token_hash, operator_id, created_at, last_seen_at, revoked_at, source)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&row.token_hash)
            .bind(row.operator_id)
            .bind(row.created_at)
            .bind(row.last_seen_at)
            .bind(row.revoked_at)
            .bind(&row.source)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    pub async fn session_get(&mut self, token_hash: &[u8]) -> Result<Option<SessionRow>, StoreError> {
        type T = (Vec<u8>, i64, i64, i64, Option<i64>, Option<String>);
        let row: Option<T> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT token_hash, operator_id, created_at, last_seen_at, revoked_at, source
                 FROM operator_sessions WHERE token_hash = $1",
            )
            .bind(token_hash)
            .fetch_optional(c)
            .await
        })?;
        Ok(row.map(|(token_hash, operator_id, created_at, last_seen_at, revoked_at, source)| SessionRow {
            token_hash,
            operator_id,
            created_at,
            last_seen_at,
            revoked_at,
            source,
        }))
    }

    pub async fn session_touch(&mut self, token_hash: &[u8], now: Millis) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE operator_sessions SET last_seen_at = $2 WHERE token_hash = $1")
                .bind(token_hash)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Revoke one session; false if it was not live.
    pub async fn session_revoke(&mut self, token_hash: &[u8], now: Millis) -> Result<bool, StoreError> {
        let done = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE operator_sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL",
            )
            .bind(token_hash)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Revoke every live session of an operator; how many there were.
    pub async fn sessions_revoke_all(&mut self, operator_id: i64, now: Millis) -> Result<u64, StoreError> {
        let done = on_conn!(self, |c| {
            sqlx::query(
                "UPDATE operator_sessions SET revoked_at = $2 WHERE operator_id = $1 AND revoked_at IS NULL",
            )
            .bind(operator_id)
            .bind(now)
            .execute(c)
            .await
            .map(|r| r.rows_affected())
        })?;
        Ok(done)
    }

    pub async fn token_insert(
        &mut self,
        token_hash: &[u8],
        operator_id: i64,
        name: &str,
        scopes: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<i64, StoreError> {
        let id: i64 = on_conn!(self, |c| {
            sqlx::query_scalar(
                "INSERT INTO api_tokens (token_hash, operator_id, name, scopes, created_at, expires_at, revoked_at,
                                         last_used_at)
                 VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL) RETURNING id",
            )
            .bind(token_hash)
            .bind(operator_id)
            .bind(name)
            .bind(scopes)
            .bind(now)
            .bind(expires_at)
            .fetch_one(c)
            .await
        })?;
        Ok(id)
    }

    pub async fn token_by_hash(&mut self, token_hash: &[u8]) -> Result<Option<TokenRow>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1");
        let row: Option<TokenTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(token_hash).fetch_optional(c).await
        })?;
        Ok(row.map(token_row))
    }

    pub async fn tokens_of(&mut self, operator_id: i64) -> Result<Vec<TokenRow>, StoreError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE operator_id = $1 ORDER BY id");
        let rows: Vec<TokenTuple> = on_conn!(self, |c| {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.as_str())).bind(operator_id).fetch_all(c).await
        })?;
        Ok(rows.into_iter().map(token_row).collect())
    }

    pub async fn token_touch(&mut self, id: i64, now: Millis) -> Result<(), StoreError> {
        on_conn!(self, |c| {
            sqlx::query("UPDATE api_tokens SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// Revoke a token; false if it was not live.
    pub async fn token_revoke(&mut self, id: i64, now: Millis) -> Result<bool, StoreError> {
        let done = on_conn!(self, |c| {
            sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(done == 1)
    }

    /// Revoke every live token of an operator; how many there were.
    pub async fn tokens_revoke_all(&mut self, operator_id: i64, now: Millis) -> Result<u64, StoreError> {
        let done = on_conn!(self, |c| {
            sqlx::query("UPDATE api_tokens SET revoked_at = $2 WHERE operator_id = $1 AND revoked_at IS NULL")
                .bind(operator_id)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected())
        })?;
        Ok(done)
    }
}
