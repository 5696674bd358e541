//! A store per backend, for tests in this and other crates.
//!
//! SQLite always runs. PostgreSQL runs when `KILN_TEST_POSTGRES_URL` names a
//! server (CI sets it to the one on 127.0.0.1:5432); each store gets its own
//! fresh schema so tests never see each other's rows. When the variable is
//! unset the PostgreSQL case is skipped with a message, unless
//! `KILN_REQUIRE_POSTGRES=1` says a missing database is a failure.

use crate::{Store, StoreError};

/// Environment variable naming the PostgreSQL server tests may use.
pub const POSTGRES_URL_VAR: &str = "KILN_TEST_POSTGRES_URL";
/// Set to `1` to make a missing PostgreSQL a test failure (CI does).
pub const REQUIRE_POSTGRES_VAR: &str = "KILN_REQUIRE_POSTGRES";

/// A store and whatever keeps it alive (the SQLite directory).
#[derive(Debug)]
pub struct TestStore {
    pub name: &'static str,
    pub store: Store,
    /// Where the store lives, for [`open_locator`] in another process.
    pub locator: String,
    _dir: Option<tempfile::TempDir>,
}

/// Open the store a [`TestStore::locator`] names: `sqlite:<data dir>` or
/// `postgres:<schema>:<url>`. Crash tests use it to share a store with a
/// child process.
pub async fn open_locator(locator: &str) -> Result<Store, StoreError> {
    if let Some(dir) = locator.strip_prefix("sqlite:") {
        return Store::open_data_dir(std::path::Path::new(dir)).await;
    }
    match locator.strip_prefix("postgres:").and_then(|rest| rest.split_once(':')) {
        Some((schema, url)) => Store::open_postgres(url, Some(schema)).await,
        None => Err(StoreError::Conflict(format!("not a test store locator: {locator:?}"))),
    }
}

impl TestStore {
    /// [`exec_raw`] on this store.
    pub async fn exec_raw(&self, sql: &str) -> Result<u64, StoreError> {
        exec_raw(&self.locator, sql).await
    }
}

/// Run `sql` straight at the tables of the store a locator names, bypassing
/// Kiln, as someone with a copy of (or access to) the database would: for
/// tests that tamper with rows or take a table away.
pub async fn exec_raw(locator: &str, sql: &str) -> Result<u64, StoreError> {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    if let Some(dir) = locator.strip_prefix("sqlite:") {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(std::path::Path::new(dir).join(crate::DATABASE_FILE))
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = sqlx::SqlitePool::connect_with(options).await?;
        let done = sqlx::query(sql).execute(&pool).await?.rows_affected();
        pool.close().await;
        return Ok(done);
    }
    let Some((schema, url)) = locator.strip_prefix("postgres:").and_then(|r| r.split_once(':')) else {
        return Err(StoreError::Conflict(format!("not a test store locator: {locator:?}")));
    };
    let options = std::str::FromStr::from_str(url)
        .map(|o: sqlx::postgres::PgConnectOptions| o.options([("search_path", schema)]))?;
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect_with(options).await?;
    let done = sqlx::query(sql).execute(&pool).await?.rows_affected();
    pool.close().await;
    Ok(done)
}

/// One store on each available backend.
pub async fn each_backend() -> Result<Vec<TestStore>, StoreError> {
    let dir =
        tempfile::tempdir().map_err(|source| StoreError::DataDir { path: std::env::temp_dir(), source })?;
    let data = dir.path().join("data");
    let sqlite = Store::open_data_dir(&data).await?;
    let locator = format!("sqlite:{}", data.display());
    let mut out = vec![TestStore { name: "sqlite", store: sqlite, locator, _dir: Some(dir) }];
    if let Some(url) = postgres_url("PostgreSQL backend")? {
        let schema = fresh_schema(&url).await?;
        let store = Store::open_postgres(&url, Some(&schema)).await?;
        let locator = format!("postgres:{schema}:{url}");
        out.push(TestStore { name: "postgres", store, locator, _dir: None });
    }
    Ok(out)
}

/// The PostgreSQL server named by `KILN_TEST_POSTGRES_URL`. Unset: `None`,
/// with a note that `what` was skipped — or an error when
/// `KILN_REQUIRE_POSTGRES=1` says a missing database is a failure.
pub fn postgres_url(what: &str) -> Result<Option<String>, StoreError> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Ok(Some(url)),
        _ if std::env::var(REQUIRE_POSTGRES_VAR).is_ok_and(|v| v == "1") => {
            Err(StoreError::Conflict(format!(
                "{REQUIRE_POSTGRES_VAR}=1 but {POSTGRES_URL_VAR} is not set: the PostgreSQL tests cannot run"
            )))
        }
        _ => {
            #[expect(clippy::print_stderr, reason = "the skip must be visible in test output")]
            {
                eprintln!(
                    "note: {what} skipped; set {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/test to run it"
                );
            }
            Ok(None)
        }
    }
}

/// A new schema name for one test on the server at `url` (not created
/// yet: [`Store::open_postgres`] does that): lowercase, random, and
/// carrying its creation time, so that schemas earlier runs left behind
/// (dropped here once they are an hour old) are told apart from live ones.
/// Drop it with [`Store::drop_postgres_schema`] when done.
pub async fn fresh_schema(url: &str) -> Result<String, StoreError> {
    let now = crate::now_millis() / 1000;
    drop_stale_schemas(url, now).await?;
    Ok(format!("kiln_test_{now}_{}", uuid::Uuid::new_v4().simple()))
}

/// Schemas older than this were left by earlier test runs and are dropped.
const STALE_SCHEMA_SECS: i64 = 3600;

/// Drop the schemas earlier test runs left behind, so a shared test
/// database does not grow without bound. Schema names carry their creation
/// time; only those well past any test's lifetime are touched.
async fn drop_stale_schemas(url: &str, now: i64) -> Result<(), StoreError> {
    let pool = sqlx::PgPool::connect(url).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE 'kiln\\_test\\_%'",
    )
    .fetch_all(&pool)
    .await?;
    for name in names {
        let created = name.split('_').nth(2).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        let plain = name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if plain && now - created > STALE_SCHEMA_SECS {
            // Another test process may drop the same schema at the same time.
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {name} CASCADE")))
                .execute(&pool)
                .await;
        }
    }
    pool.close().await;
    Ok(())
}
