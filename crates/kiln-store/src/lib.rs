//! `kiln-store`: Kiln's state over SQLite (one node, the default) or
//! PostgreSQL (several nodes), behind one API and one schema.
//!
//! Everything happens in a [`Tx`]: callers open one, read and write, and
//! commit, so a deploy, its bundle, its version row and the roll-out it
//! causes land together or not at all. Migrations run when a store opens.
//!
//! This crate stores and reads back; it decides nothing. Whether a version is
//! major, whether a rollback may happen, who may see what: all of that lives
//! above it (`kiln-apps`). App data (the key-value store and secrets) and
//! encryption arrive with the storage work and will live here too.

#![forbid(unsafe_code)]

mod audit;
mod jobs;
mod kv;
mod operators;
mod schedule;
mod schema;
mod webtriggers;

pub use audit::{AlertRow, AuditCount, AuditRow, CheckpointRow};
pub use jobs::{Claim, JobKind, JobRow, JobState, JobStats, MAX_CLAIM_SCAN, MAX_JOB_ERROR_CHARS, NewJob};
pub use kv::{DataKeyRow, KvPut, KvRow};
pub use operators::{NewOperator, OperatorRow, SessionRow, TokenRow};
pub use schedule::{MAX_OUTCOME_LEN, RunClaim, RunSlot};
pub use webtriggers::{NewWebtrigger, WebtriggerCreator, WebtriggerRow};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use kiln_crypto::Sha256;
use kiln_manifest::{Grants, Manifest, VersionChange};
use kiln_types::{AppId, Environment, InstallationId, Product, SiteUrl, Version};
use schema::{Dialect, MIGRATIONS};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ColumnIndex, Decode, Postgres, Row, Sqlite, Type};

/// The SQLite database file inside the data directory.
pub const DATABASE_FILE: &str = "kiln.db";

/// How long a writer waits for another writer before giving up. Deploys are
/// short; a longer wait means something is stuck and should be reported.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the database schema is at version {found}, newer than this Kiln understands ({known}); upgrade Kiln before using this database"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("stored {what} is unreadable: {detail}")]
    Corrupt { what: String, detail: String },
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    fn corrupt(what: impl Into<String>, detail: impl ToString) -> Self {
        StoreError::Corrupt { what: what.into(), detail: detail.to_string() }
    }
}

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_millis() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// An open store.
#[derive(Debug, Clone)]
pub struct Store {
    db: Db,
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

impl Store {
    /// Open (creating if needed) the SQLite database in `data_dir`, which is
    /// created with owner-only permissions.
    pub async fn open_data_dir(data_dir: &Path) -> Result<Store, StoreError> {
        prepare_data_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        create_private_file(&path)?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is acknowledged only once it is on disk.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(options).await?;
        let store = Store { db: Db::Sqlite(pool) };
        store.migrate().await?;
        Ok(store)
    }

    /// A private, empty store that lives as long as this value: for dry runs
    /// that must not create a data directory, and for tests.
    pub async fn open_in_memory() -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new().in_memory(true).foreign_keys(true);
        // One connection: each in-memory connection is its own database.
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
        let store = Store { db: Db::Sqlite(pool) };
        store.migrate().await?;
        Ok(store)
    }

    /// Connect to PostgreSQL at `url`; `schema`, when given, is created if
    /// missing and used for every table (tests use one schema each).
    pub async fn open_postgres(url: &str, schema: Option<&str>) -> Result<Store, StoreError> {
        let mut options = PgConnectOptions::from_str(url)?;
        if let Some(schema) = schema {
            if !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
                return Err(StoreError::Conflict(format!(
                    "schema name {schema:?} is not a plain identifier"
                )));
            }
            // `IF NOT EXISTS` does not make concurrent creations safe on
            // PostgreSQL: nodes starting at once on a new schema would fail
            // on pg_namespace's unique index. The migrations' lock makes
            // them take turns; the later ones find the schema there.
            let setup = sqlx::PgPool::connect_with(options.clone()).await?;
            let mut tx = setup.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(MIGRATION_LOCK).execute(&mut *tx).await?;
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS {schema}")))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            setup.close().await;
            options = options.options([("search_path", schema)]);
        }
        // A write is acknowledged only once durable, whatever the server's default.
        options = options.options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new().max_connections(8).connect_with(options).await?;
        let store = Store { db: Db::Postgres(pool) };
        store.migrate().await?;
        Ok(store)
    }

    /// Drop a schema [`Store::open_postgres`] made (benchmarks clean up
    /// after themselves with it). Everything in it is gone.
    pub async fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), StoreError> {
        if !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(StoreError::Conflict(format!("schema name {schema:?} is not a plain identifier")));
        }
        let pool = sqlx::PgPool::connect_with(PgConnectOptions::from_str(url)?).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {schema} CASCADE")))
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub async fn begin(&self) -> Result<Tx, StoreError> {
        Ok(match &self.db {
            // IMMEDIATE takes the write lock up front: a deferred transaction
            // that reads and then writes fails outright (not after waiting)
            // when another writer committed in between.
            Db::Sqlite(pool) => Tx { inner: TxInner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?) },
            Db::Postgres(pool) => Tx { inner: TxInner::Postgres(pool.begin().await?) },
        })
    }

    /// A transaction for reads only. On SQLite it takes no write lock, so
    /// readers run beside the writer (WAL) and see a consistent snapshot; a
    /// write inside it may fail with "database is locked".
    pub async fn begin_read(&self) -> Result<Tx, StoreError> {
        Ok(match &self.db {
            Db::Sqlite(pool) => Tx { inner: TxInner::Sqlite(pool.begin().await?) },
            Db::Postgres(pool) => Tx { inner: TxInner::Postgres(pool.begin().await?) },
        })
    }

    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite(pool) => pool.close().await,
            Db::Postgres(pool) => pool.close().await,
        }
    }

    /// Bring the schema up to date, one transaction per migration. Several
    /// processes may start at once: PostgreSQL serialises them with an
    /// advisory lock, SQLite with its write lock.
    async fn migrate(&self) -> Result<(), StoreError> {
        let known = MIGRATIONS.last().map_or(0, |m| m.version);
        let dialect = match self.db {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        };
        let mut tx = self.begin().await?;
        if dialect == Dialect::Postgres {
            on_conn!(tx, |c| sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(MIGRATION_LOCK)
                .execute(c)
                .await
                .map(drop))?;
        }
        on_conn!(tx, |c| {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS kiln_schema (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            .execute(c).await.map(drop)
        })?;
        let current: Option<i64> =
            on_conn!(tx, |c| sqlx::query_scalar("SELECT MAX(version) FROM kiln_schema").fetch_one(c).await)?;
        let current = current.unwrap_or(0);
        if current > known {
            return Err(StoreError::SchemaTooNew { found: current, known });
        }
        for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
            for statement in migration.statements {
                let sql = dialect.render(statement);
                on_conn!(tx, |c| sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).execute(c).await.map(drop))?;
            }
            on_conn!(tx, |c| {
                sqlx::query("INSERT INTO kiln_schema (version, name, applied_at) VALUES ($1, $2, $3)")
                    .bind(migration.version)
                    .bind(migration.name)
                    .bind(now_millis())
                    .execute(c)
                    .await
                    .map(drop)
            })?;
        }
        tx.commit().await
    }
}

/// The PostgreSQL advisory lock (transaction-scoped) under which a schema
/// is created and migrated, so that nodes starting at once take turns.
const MIGRATION_LOCK: i64 = 7_311_975;

fn prepare_data_dir(dir: &Path) -> Result<(), StoreError> {
    let err = |source| StoreError::DataDir { path: dir.to_path_buf(), source };
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir).map_err(err)?;
    }
    Ok(())
}

/// Create the database file owner-readable only, before SQLite creates it
/// with the process umask.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    if path.exists() {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::DataDir { path: path.to_path_buf(), source }),
    }
}

/// A transaction. Dropped without [`Tx::commit`], it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: TxInner,
}

#[derive(Debug)]
enum TxInner {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// Run `$body` with `$c` bound to the transaction's connection, once per
/// backend: the SQL is shared, the driver types are not.
macro_rules! on_conn {
    ($tx:expr, |$c:ident| $body:expr) => {
        match &mut $tx.inner {
            TxInner::Sqlite(t) => {
                let $c = &mut **t;
                $body
            }
            TxInner::Postgres(t) => {
                let $c = &mut **t;
                $body
            }
        }
    };
}
pub(crate) use on_conn;

/// Read a column; shared by both backends' row types.
pub(crate) fn col<'r, R, T>(row: &'r R, name: &'static str) -> Result<T, sqlx::Error>
where
    R: Row,
    &'static str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(name)
}

/// What a stored version records about how it differs from its predecessor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum VersionOrigin {
    /// The first version of the app in this environment.
    Initial,
    /// A later version: minor (rolled out automatically) or major (why).
    Change { change: VersionChange },
}

impl VersionOrigin {
    pub fn is_major(&self) -> bool {
        matches!(self, VersionOrigin::Change { change: VersionChange::Major(_) })
    }
}

#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub id: i64,
    pub app: AppId,
    pub environment: Environment,
    pub version: Version,
    pub manifest: Manifest,
    pub grants: Grants,
    pub origin: VersionOrigin,
    pub bundle: Sha256,
    pub created_at: Millis,
}

/// A version about to be stored.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub app_id: i64,
    pub environment: &'a Environment,
    pub version: Version,
    pub manifest_source: &'a str,
    pub manifest: &'a Manifest,
    pub grants: &'a Grants,
    pub origin: &'a VersionOrigin,
    pub bundle: Sha256,
}

#[derive(Debug, Clone)]
pub struct InstallationRecord {
    pub id: i64,
    pub public_id: InstallationId,
    pub app: AppId,
    pub environment: Environment,
    pub site: SiteUrl,
    pub product: Product,
    pub version_id: i64,
    pub version: Version,
    /// The grants the site admin consented to. The installation may run any
    /// version whose grants this covers, and no other.
    pub consent: Grants,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Installed,
    AutoUpgraded,
    Upgraded,
    RolledBack,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Installed => "installed",
            EventKind::AutoUpgraded => "auto-upgraded",
            EventKind::Upgraded => "upgraded",
            EventKind::RolledBack => "rolled-back",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [EventKind::Installed, EventKind::AutoUpgraded, EventKind::Upgraded, EventKind::RolledBack]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone)]
pub struct EventRecord {
    pub id: i64,
    pub installation_id: i64,
    pub at: Millis,
    pub kind: EventKind,
    pub from_version_id: Option<i64>,
    pub to_version_id: i64,
    pub detail: serde_json::Value,
}

const VERSION_COLUMNS: &str = "v.id, a.app_ari, v.environment, v.major, v.minor, v.manifest, v.grants, v.change, v.bundle_hash, v.created_at";
const INSTALLATION_COLUMNS: &str = "i.id, i.public_id, a.app_ari, i.environment, i.site, i.product, i.version_id, v.major, v.minor, i.consented_grants, i.created_at, i.updated_at";

struct RawVersion {
    id: i64,
    app: String,
    environment: String,
    major: i64,
    minor: i64,
    manifest: String,
    grants: String,
    change: String,
    bundle: String,
    created_at: i64,
}

impl RawVersion {
    fn from_row<'r, R>(r: &'r R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        &'static str: ColumnIndex<R>,
        i64: Decode<'r, R::Database> + Type<R::Database>,
        String: Decode<'r, R::Database> + Type<R::Database>,
    {
        Ok(Self {
            id: col(r, "id")?,
            app: col(r, "app_ari")?,
            environment: col(r, "environment")?,
            major: col(r, "major")?,
            minor: col(r, "minor")?,
            manifest: col(r, "manifest")?,
            grants: col(r, "grants")?,
            change: col(r, "change")?,
            bundle: col(r, "bundle_hash")?,
            created_at: col(r, "created_at")?,
        })
    }

    fn into_record(self) -> Result<VersionRecord, StoreError> {
        let what = format!("version row {}", self.id);
        Ok(VersionRecord {
            id: self.id,
            app: AppId::parse(&self.app).map_err(|e| StoreError::corrupt(&what, e))?,
            environment: Environment::parse(&self.environment).map_err(|e| StoreError::corrupt(&what, e))?,
            version: version_of(self.major, self.minor)
                .ok_or_else(|| StoreError::corrupt(&what, "version"))?,
            manifest: serde_json::from_str(&self.manifest).map_err(|e| StoreError::corrupt(&what, e))?,
            grants: serde_json::from_str(&self.grants).map_err(|e| StoreError::corrupt(&what, e))?,
            origin: serde_json::from_str(&self.change).map_err(|e| StoreError::corrupt(&what, e))?,
            bundle: self.bundle.parse().map_err(|e| StoreError::corrupt(&what, e))?,
            created_at: self.created_at,
        })
    }
}

fn version_of(major: i64, minor: i64) -> Option<Version> {
    Some(Version { major: u32::try_from(major).ok()?, minor: u32::try_from(minor).ok()? })
}

struct RawInstallation {
    id: i64,
    public_id: String,
    app: String,
    environment: String,
    site: String,
    product: String,
    version_id: i64,
    major: i64,
    minor: i64,
    consent: String,
    created_at: i64,
    updated_at: i64,
}

impl RawInstallation {
    fn from_row<'r, R>(r: &'r R) -> Result<Self, sqlx::Error>
    where
        R: Row,
        &'static str: ColumnIndex<R>,
        i64: Decode<'r, R::Database> + Type<R::Database>,
        String: Decode<'r, R::Database> + Type<R::Database>,
    {
        Ok(Self {
            id: col(r, "id")?,
            public_id: col(r, "public_id")?,
            app: col(r, "app_ari")?,
            environment: col(r, "environment")?,
            site: col(r, "site")?,
            product: col(r, "product")?,
            version_id: col(r, "version_id")?,
            major: col(r, "major")?,
            minor: col(r, "minor")?,
            consent: col(r, "consented_grants")?,
            created_at: col(r, "created_at")?,
            updated_at: col(r, "updated_at")?,
        })
    }

    fn into_record(self) -> Result<InstallationRecord, StoreError> {
        let what = format!("installation row {}", self.id);
        Ok(InstallationRecord {
            id: self.id,
            public_id: InstallationId::parse(&self.public_id).map_err(|e| StoreError::corrupt(&what, e))?,
            app: AppId::parse(&self.app).map_err(|e| StoreError::corrupt(&what, e))?,
            environment: Environment::parse(&self.environment).map_err(|e| StoreError::corrupt(&what, e))?,
            site: SiteUrl::parse(&self.site).map_err(|e| StoreError::corrupt(&what, e))?,
            product: self.product.parse().map_err(|e| StoreError::corrupt(&what, e))?,
            version_id: self.version_id,
            version: version_of(self.major, self.minor)
                .ok_or_else(|| StoreError::corrupt(&what, "version"))?,
            consent: serde_json::from_str(&self.consent).map_err(|e| StoreError::corrupt(&what, e))?,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::corrupt("value to store", e))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Tx {
    pub async fn commit(self) -> Result<(), StoreError> {
        match self.inner {
            TxInner::Sqlite(t) => t.commit().await?,
            TxInner::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }

    /// Serialise lifecycle changes to one app: held until the transaction
    /// ends. SQLite write transactions already exclude each other (they begin
    /// IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock keyed
    /// by the app id, so concurrent deploys queue instead of colliding.
    pub async fn lock_app(&mut self, app: &AppId) -> Result<(), StoreError> {
        if let TxInner::Postgres(t) = &mut self.inner {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(app.as_str())
                .execute(&mut **t)
                .await?;
        }
        Ok(())
    }

    /// The row id of an app, if it was ever deployed.
    pub async fn app_row(&mut self, app: &AppId) -> Result<Option<i64>, StoreError> {
        Ok(on_conn!(self, |c| {
            sqlx::query_scalar("SELECT id FROM apps WHERE app_ari = $1")
                .bind(app.as_str())
                .fetch_optional(c)
                .await
        })?)
    }

    pub async fn ensure_app(&mut self, app: &AppId) -> Result<i64, StoreError> {
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO apps (app_ari, created_at) VALUES ($1, $2) ON CONFLICT (app_ari) DO NOTHING",
            )
            .bind(app.as_str())
            .bind(now_millis())
            .execute(c)
            .await
            .map(drop)
        })?;
        self.app_row(app).await?.ok_or_else(|| StoreError::corrupt("apps", "row vanished after insert"))
    }

    /// Store a bundle under its digest; storing the same bundle twice is a no-op.
    pub async fn put_bundle(&mut self, hash: &Sha256, body: &[u8]) -> Result<(), StoreError> {
        let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO bundles (hash, size, body, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (hash) DO NOTHING",
            )
            .bind(hash.to_string())
            .bind(size)
            .bind(body)
            .bind(now_millis())
            .execute(c).await.map(drop)
        })?;
        Ok(())
    }

    /// The stored bytes of a bundle. Callers verify them against the digest
    /// (`kiln_bundle::Bundle::decode`) before use.
    pub async fn bundle(&mut self, hash: &Sha256) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(on_conn!(self, |c| {
            sqlx::query_scalar("SELECT body FROM bundles WHERE hash = $1")
                .bind(hash.to_string())
                .fetch_optional(c)
                .await
        })?)
    }

    /// Every version of an app in an environment, oldest first.
    pub async fn versions(
        &mut self,
        app: &AppId,
        env: &Environment,
    ) -> Result<Vec<VersionRecord>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions v JOIN apps a ON a.id = v.app_id
             WHERE a.app_ari = $1 AND v.environment = $2 ORDER BY v.major, v.minor"
        );
        let raws = on_conn!(self, |c| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(app.as_str())
                .bind(env.as_str())
                .fetch_all(c)
                .await?;
            rows.iter().map(RawVersion::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        raws.into_iter().map(RawVersion::into_record).collect()
    }

    pub async fn latest_version(
        &mut self,
        app: &AppId,
        env: &Environment,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions v JOIN apps a ON a.id = v.app_id
             WHERE a.app_ari = $1 AND v.environment = $2 ORDER BY v.major DESC, v.minor DESC LIMIT 1"
        );
        let raw = on_conn!(self, |c| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(app.as_str())
                .bind(env.as_str())
                .fetch_optional(c)
                .await?;
            row.as_ref().map(RawVersion::from_row).transpose()
        })?;
        raw.map(RawVersion::into_record).transpose()
    }

    pub async fn version_by_id(&mut self, id: i64) -> Result<Option<VersionRecord>, StoreError> {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions v JOIN apps a ON a.id = v.app_id WHERE v.id = $1"
        );
        let raw = on_conn!(self, |c| {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(c).await?;
            row.as_ref().map(RawVersion::from_row).transpose()
        })?;
        raw.map(RawVersion::into_record).transpose()
    }

    /// Store a new version. Fails with [`StoreError::Conflict`] if another
    /// deploy stored the same version number first.
    pub async fn insert_version(&mut self, new: NewVersion<'_>) -> Result<i64, StoreError> {
        let manifest = to_json(new.manifest)?;
        let grants = to_json(new.grants)?;
        let origin = to_json(new.origin)?;
        let result: Result<i64, sqlx::Error> = on_conn!(self, |c| {
            sqlx::query_scalar(
                "INSERT INTO versions (app_id, environment, major, minor, manifest_source, manifest, grants, change, bundle_hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            )
            .bind(new.app_id)
            .bind(new.environment.as_str())
            .bind(i64::from(new.version.major))
            .bind(i64::from(new.version.minor))
            .bind(new.manifest_source)
            .bind(&manifest)
            .bind(&grants)
            .bind(&origin)
            .bind(new.bundle.to_string())
            .bind(now_millis())
            .fetch_one(c)
            .await
        });
        match result {
            Ok(id) => Ok(id),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "version {} of this app in {} was stored by another deploy at the same moment; deploy again",
                new.version, new.environment
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Every installation of an app in an environment, by site then product.
    pub async fn installations(
        &mut self,
        app: &AppId,
        env: &Environment,
    ) -> Result<Vec<InstallationRecord>, StoreError> {
        self.installations_where(
            "WHERE a.app_ari = $1 AND i.environment = $2 ORDER BY i.site, i.product",
            &[app.as_str(), env.as_str()],
        )
        .await
    }

    /// Installations with their app and version, selected and ordered by
    /// `tail` (a fixed `WHERE ... ORDER BY` of this crate's, never input)
    /// with `binds` as its text parameters.
    pub(crate) async fn installations_where(
        &mut self,
        tail: &'static str,
        binds: &[&str],
    ) -> Result<Vec<InstallationRecord>, StoreError> {
        let sql = format!(
            "SELECT {INSTALLATION_COLUMNS} FROM installations i
             JOIN apps a ON a.id = i.app_id JOIN versions v ON v.id = i.version_id {tail}"
        );
        let raws = on_conn!(self, |c| {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for value in binds {
                query = query.bind(*value);
            }
            let rows = query.fetch_all(c).await?;
            rows.iter().map(RawInstallation::from_row).collect::<Result<Vec<_>, sqlx::Error>>()
        })?;
        raws.into_iter().map(RawInstallation::into_record).collect()
    }

    pub async fn insert_installation(
        &mut self,
        app_id: i64,
        env: &Environment,
        site: &SiteUrl,
        product: Product,
        version_id: i64,
        consent: &Grants,
    ) -> Result<i64, StoreError> {
        let public_id = uuid::Uuid::new_v4().to_string();
        let consent = to_json(consent)?;
        let now = now_millis();
        let result: Result<i64, sqlx::Error> = on_conn!(self, |c| {
            sqlx::query_scalar(
                "INSERT INTO installations (public_id, app_id, environment, site, product, version_id, consented_grants, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
            )
            .bind(&public_id)
            .bind(app_id)
            .bind(env.as_str())
            .bind(site.as_str())
            .bind(product.as_str())
            .bind(version_id)
            .bind(&consent)
            .bind(now)
            .fetch_one(c)
            .await
        });
        match result {
            Ok(id) => Ok(id),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "the app is already installed on {site} ({product}) in {env}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Point an installation at another version, and replace its consent
    /// when the admin has just given a new one.
    pub async fn set_installation_version(
        &mut self,
        installation_id: i64,
        version_id: i64,
        consent: Option<&Grants>,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        match consent {
            Some(grants) => {
                let consent = to_json(grants)?;
                on_conn!(self, |c| {
                    sqlx::query(
                        "UPDATE installations SET version_id = $1, consented_grants = $2, updated_at = $3 WHERE id = $4",
                    )
                    .bind(version_id)
                    .bind(&consent)
                    .bind(now)
                    .bind(installation_id)
                    .execute(c).await.map(drop)
                })?;
            }
            None => {
                on_conn!(self, |c| {
                    sqlx::query("UPDATE installations SET version_id = $1, updated_at = $2 WHERE id = $3")
                        .bind(version_id)
                        .bind(now)
                        .bind(installation_id)
                        .execute(c)
                        .await
                        .map(drop)
                })?;
            }
        }
        Ok(())
    }

    pub async fn record_event(
        &mut self,
        installation_id: i64,
        kind: EventKind,
        from_version_id: Option<i64>,
        to_version_id: i64,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let detail = to_json(detail)?;
        on_conn!(self, |c| {
            sqlx::query(
                "INSERT INTO installation_events (installation_id, at, kind, from_version_id, to_version_id, detail)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(installation_id)
            .bind(now_millis())
            .bind(kind.as_str())
            .bind(from_version_id)
            .bind(to_version_id)
            .bind(&detail)
            .execute(c).await.map(drop)
        })?;
        Ok(())
    }

    /// An installation's history, oldest first.
    pub async fn events(&mut self, installation_id: i64) -> Result<Vec<EventRecord>, StoreError> {
        let rows: Vec<(i64, i64, String, Option<i64>, i64, String)> = on_conn!(self, |c| {
            sqlx::query_as(
                "SELECT id, at, kind, from_version_id, to_version_id, detail FROM installation_events
                 WHERE installation_id = $1 ORDER BY id",
            )
            .bind(installation_id)
            .fetch_all(c)
            .await
        })?;
        rows.into_iter()
            .map(|(id, at, kind, from, to, detail)| {
                let what = format!("installation event {id}");
                Ok(EventRecord {
                    id,
                    installation_id,
                    at,
                    kind: EventKind::parse(&kind).ok_or_else(|| StoreError::corrupt(&what, kind))?,
                    from_version_id: from,
                    to_version_id: to,
                    detail: serde_json::from_str(&detail).map_err(|e| StoreError::corrupt(&what, e))?,
                })
            })
            .collect()
    }

    /// Row counts of every table, for tests and diagnostics that check a
    /// refused operation stored nothing.
    pub async fn row_counts(&mut self) -> Result<Vec<(&'static str, i64)>, StoreError> {
        let mut out = Vec::new();
        for table in
            ["apps", "bundles", "versions", "installations", "installation_events", "data_keys", "kv_entries"]
        {
            let sql = format!("SELECT COUNT(*) FROM {table}");
            let n: i64 =
                on_conn!(self, |c| sqlx::query_scalar(sqlx::AssertSqlSafe(sql.as_str())).fetch_one(c).await)?;
            out.push((table, n));
        }
        Ok(out)
    }
}

#[cfg(feature = "testing")]
pub mod testing;
