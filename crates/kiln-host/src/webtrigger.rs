//! Web trigger URLs: the secret part of an installation's URLs for its web
//! trigger modules, and the `webtrigger.*` capabilities (`@forge/api`'s
//! `webTrigger`). The database holds only each secret's SHA-256
//! (`webtriggers`); the secret itself is sealed in the installation's
//! token namespace under a name of its own (`webtrigger:<module>:<id>`;
//! URLs made before schema v9 use `webtrigger:<module>`), so a URL can be
//! shown again and deleting one erases only its secret. `kiln-server`
//! serves the URLs.
//!
//! An installation may have several URLs for a module. The oldest is its
//! *default*: what `kiln webtrigger` prints and `getUrl(key)` answers,
//! made on first ask; `getUrl(key, true)` makes another. Deleting the
//! default makes the next oldest the default.
//!
//! Contract (arguments → reply), always for the invocation's installation
//! (from its grants, never from the arguments):
//! - `webtrigger.getUrl {moduleKey, forceCreate?: bool}` → the URL
//!   (`<public url>/x1/<secret>`). `secretKeyConfig` is refused
//!   (`NOT_SUPPORTED`): Forge does not document what it does, and Kiln
//!   signs `hmacSharedSecret` requests with its own per-installation key.
//! - `webtrigger.queryUrls {moduleKey?: string | null}` → `[{moduleKey,
//!   url}]`, oldest first: the installation's URLs, or one module's.
//! - `webtrigger.deleteUrl {id}` (the secret part of the URL) → `null`;
//!   `WEBTRIGGER_URL_NOT_FOUND` unless the URL is this installation's.
//!
//! Limits, per installation and counted per node (with several nodes an
//! installation gets up to this many per node): Forge's 500 `getUrl` calls
//! a minute (its *create* operation, with or without forceCreate), 1,000
//! `queryUrls` (*get*) and 500 `deleteUrl`, refused with
//! `RATE_LIMIT_EXCEEDED` ("Too Many Requests.", the status text Forge's
//! client puts in its error); and Kiln's own cap of
//! [`MAX_URLS_PER_INSTALLATION`] URLs, which Forge does not have.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_crypto::Sha256;
use kiln_ipc::HostReply;
use kiln_kvs::Kvs;
use kiln_store::{InstallationRecord, NewWebtrigger, Store, WebtriggerCreator, WebtriggerRow};
use serde_json::{Value, json};

use crate::{BAD_CALL, InvocationHost, err};

/// Forge's limit on `getUrl` (creating a URL, or getting the existing
/// one), per installation and minute.
pub const MAX_CREATES_PER_MINUTE: u32 = 500;
/// Forge's limit on `queryUrls`, per installation and minute.
pub const MAX_QUERIES_PER_MINUTE: u32 = 1_000;
/// Forge's limit on `deleteUrl` (Forge counts it per URL; Kiln per
/// installation, which is stricter).
pub const MAX_DELETES_PER_MINUTE: u32 = 500;
/// Most URLs one installation may hold, every module together. Forge
/// documents no such cap; Kiln keeps one so that an app making URLs in a
/// loop cannot grow the database, and every `queryUrls`, without bound.
pub const MAX_URLS_PER_INSTALLATION: u64 = 1_000;

/// The KVS owner of an installation's storage, secrets and tokens.
pub fn owner(installation: &InstallationRecord) -> String {
    format!("installation:{}", installation.public_id)
}

#[derive(Debug, thiserror::Error)]
pub enum WebtriggerError {
    #[error(
        "{app} has no web trigger module '{module}' in the version {site} runs; its web triggers are: {known}"
    )]
    NoSuchModule { app: String, site: String, module: String, known: String },
    #[error(
        "the web trigger URL for '{0}' exists but its secret cannot be read; it may have been deleted \
         meanwhile (try again), or the secret was lost"
    )]
    SecretMissing(String),
    #[error(
        "this installation has {MAX_URLS_PER_INSTALLATION} web trigger URLs, as many as Kiln keeps for one \
         installation; delete some with webTrigger.deleteUrl"
    )]
    TooManyUrls,
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error("the token store failed: {0}")]
    Kvs(#[from] kiln_kvs::KvsError),
    #[error("{0}")]
    Crypto(String),
}

/// Refuse a module the installed version does not declare as a web trigger.
async fn check_module(
    store: &Store,
    installation: &InstallationRecord,
    module: &str,
) -> Result<(), WebtriggerError> {
    let mut tx = store.begin_read().await?;
    let version = tx.version_by_id(installation.version_id).await?;
    tx.commit().await?;
    let known: Vec<String> = version
        .as_ref()
        .map(|v| v.manifest.modules.webtriggers.iter().map(|w| w.key.to_string()).collect())
        .unwrap_or_default();
    if known.iter().any(|k| k == module) {
        return Ok(());
    }
    Err(WebtriggerError::NoSuchModule {
        app: installation.app.to_string(),
        site: installation.site.to_string(),
        module: module.to_owned(),
        known: if known.is_empty() { "none".into() } else { known.join(", ") },
    })
}

/// The secret of a stored URL.
async fn secret_of(
    kvs: &Kvs,
    installation: &InstallationRecord,
    row: &WebtriggerRow,
) -> Result<Option<String>, WebtriggerError> {
    Ok(kvs.get_token(&owner(installation), &row.secret_name).await?)
}

/// The secret part of the installation's default URL for web trigger
/// `module` (its oldest), made the first time it is asked for.
pub async fn token(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
) -> Result<String, WebtriggerError> {
    check_module(store, installation, module).await?;
    let mut tx = store.begin_read().await?;
    let oldest = tx.webtrigger_oldest(installation.id, module).await?;
    tx.commit().await?;
    match oldest {
        Some(row) => {
            secret_of(kvs, installation, &row).await?.ok_or(WebtriggerError::SecretMissing(module.into()))
        }
        None => make(store, kvs, installation, module, WebtriggerCreator::Platform).await,
    }
}

/// A new URL for web trigger `module` (`getUrl(key, true)`): its secret.
pub async fn create(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
) -> Result<String, WebtriggerError> {
    check_module(store, installation, module).await?;
    make(store, kvs, installation, module, WebtriggerCreator::App).await
}

/// Make a URL. The secret is sealed first, under a name no other URL
/// uses, so a row is never there without its secret; if the row is then
/// not written, the sealed secret opens nothing (no row hashes to it) and
/// is erased. For the default (`Platform`), a URL another node made
/// meanwhile wins, and is answered instead.
async fn make(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
    creator: WebtriggerCreator,
) -> Result<String, WebtriggerError> {
    let mut secret = [0u8; 32];
    kiln_crypto::fill_random(&mut secret).map_err(|e| WebtriggerError::Crypto(e.to_string()))?;
    let token = URL_SAFE_NO_PAD.encode(secret);
    let name = format!("webtrigger:{module}:{}", uuid::Uuid::new_v4().simple());
    let owner = owner(installation);
    kvs.set_token(&owner, &name, &token, None).await?;
    let recorded = async {
        let mut tx = store.begin().await?;
        tx.lock_webtriggers(installation.id).await?;
        if creator == WebtriggerCreator::Platform
            && let Some(row) = tx.webtrigger_oldest(installation.id, module).await?
        {
            return Ok(Some(row));
        }
        if tx.webtrigger_count(installation.id).await? >= MAX_URLS_PER_INSTALLATION {
            return Err(WebtriggerError::TooManyUrls);
        }
        let hash = Sha256::of(token.as_bytes());
        let new = NewWebtrigger {
            installation_id: installation.id,
            module_key: module,
            token_hash: hash.as_bytes(),
            secret_name: &name,
            created_by: creator,
        };
        tx.webtrigger_insert(&new, kiln_store::now_millis()).await?;
        tx.commit().await?;
        Ok(None)
    };
    match recorded.await {
        Ok(None) => Ok(token),
        Ok(Some(row)) => {
            // Another node's URL is the default; ours was never recorded,
            // so its secret opens nothing even if it cannot be erased now.
            drop(kvs.delete_token(&owner, &name).await);
            secret_of(kvs, installation, &row).await?.ok_or(WebtriggerError::SecretMissing(module.into()))
        }
        Err(e) => {
            // The error the app should see is the one above; a secret that
            // could not be erased here opens nothing.
            drop(kvs.delete_token(&owner, &name).await);
            Err(e)
        }
    }
}

/// One URL of an installation: its module and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSecret {
    pub module_key: String,
    pub token: String,
}

/// The installation's URLs, oldest first: every module's, or `module`'s.
/// A URL whose secret is gone (deleted between the two reads, or lost)
/// cannot be shown, and is left out.
pub async fn list(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: Option<&str>,
) -> Result<Vec<UrlSecret>, WebtriggerError> {
    let mut tx = store.begin_read().await?;
    let rows = tx.webtriggers_of(installation.id, module).await?;
    tx.commit().await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(token) = secret_of(kvs, installation, &row).await? {
            out.push(UrlSecret { module_key: row.module_key, token });
        }
    }
    Ok(out)
}

/// Whether `token` has the shape of a URL secret (32 bytes, base64url).
pub fn well_formed(token: &str) -> bool {
    token.len() == 43 && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Delete the installation's URL whose secret is `token`, and the sealed
/// secret with it; false if the installation has no such URL (whether or
/// not another installation has).
pub async fn delete(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    token: &str,
) -> Result<bool, WebtriggerError> {
    if !well_formed(token) {
        return Ok(false);
    }
    let hash = Sha256::of(token.as_bytes());
    let mut tx = store.begin().await?;
    let row = match tx.webtrigger_by_hash(hash.as_bytes()).await? {
        Some(row) if row.installation_id == installation.id => row,
        _ => return Ok(false),
    };
    if !tx.webtrigger_delete_one(installation.id, row.id).await? {
        return Ok(false);
    }
    tx.commit().await?;
    // The row is gone, so the URL answers 404 from here on; the secret
    // only let the URL be shown again.
    kvs.delete_token(&owner(installation), &row.secret_name).await?;
    Ok(true)
}

fn signing_name(module: &str) -> String {
    format!("webtrigger-signing:{module}")
}

/// The key callers of a `hmacSharedSecret` web trigger sign requests with
/// (hex, 32 random bytes), made the first time it is asked for and sealed
/// in the installation's token namespace beside the URL's secret. One key
/// per module, whichever of its URLs is called. Kept apart from the URL so
/// that a URL seen in a log or a browser history does not let anyone sign.
/// If two callers make it at the same moment the later write wins; both
/// are answered with what was stored last.
pub async fn signing_secret(
    store: &Store,
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
) -> Result<String, WebtriggerError> {
    // The module must exist, and its URL too: a signing key alone opens nothing.
    token(store, kvs, installation, module).await?;
    let owner = owner(installation);
    if let Some(secret) = kvs.get_token(&owner, &signing_name(module)).await? {
        return Ok(secret);
    }
    let mut secret = [0u8; 32];
    kiln_crypto::fill_random(&mut secret).map_err(|e| WebtriggerError::Crypto(e.to_string()))?;
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    kvs.set_token(&owner, &signing_name(module), &hex, None).await?;
    kvs.get_token(&owner, &signing_name(module)).await?.ok_or(WebtriggerError::SecretMissing(module.into()))
}

/// The signing key of the installation's web trigger `module`, if one was
/// made; the server never makes one on a request's behalf.
pub async fn existing_signing_secret(
    kvs: &Kvs,
    installation: &InstallationRecord,
    module: &str,
) -> Result<Option<String>, WebtriggerError> {
    Ok(kvs.get_token(&owner(installation), &signing_name(module)).await?)
}

// ---------------------------------------------------------------- limits

/// Which of Forge's web trigger URL operations a call is, for its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UrlOperation {
    /// `getUrl`, with or without forceCreate.
    Create,
    /// `queryUrls`.
    Query,
    /// `deleteUrl`.
    Delete,
}

impl UrlOperation {
    pub fn per_minute(self) -> u32 {
        match self {
            UrlOperation::Create => MAX_CREATES_PER_MINUTE,
            UrlOperation::Query => MAX_QUERIES_PER_MINUTE,
            UrlOperation::Delete => MAX_DELETES_PER_MINUTE,
        }
    }
}

/// Fixed one-minute windows per installation and operation, in this
/// node's memory: a node counts only the calls it serves.
#[derive(Debug, Default)]
pub struct UrlLimits {
    windows: Mutex<HashMap<(i64, UrlOperation), (Instant, u32)>>,
}

impl UrlLimits {
    /// Count one call; false if the installation is over the operation's
    /// limit this minute (the refused call is not counted).
    pub fn take(&self, installation: i64, operation: UrlOperation) -> bool {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, count) = windows.entry((installation, operation)).or_insert((now, 0));
        if now.duration_since(*start) >= Duration::from_secs(60) {
            *start = now;
            *count = 0;
        }
        if *count >= operation.per_minute() {
            return false;
        }
        *count += 1;
        true
    }
}

// ---------------------------------------------------------------- capabilities

/// What one `webtrigger.*` call asks for, its arguments checked.
enum Ask {
    Get { module: String, force: bool },
    Query { module: Option<String> },
    Delete { token: String },
}

fn parse(capability: &str, args: &Value) -> Result<Ask, HostReply> {
    match capability {
        "webtrigger.getUrl" => {
            let module = match args.get("moduleKey") {
                Some(Value::String(m)) if !m.is_empty() => m.clone(),
                _ => return Err(err(BAD_CALL, "'moduleKey' must be a web trigger module's key")),
            };
            let force = match args.get("forceCreate") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(err(BAD_CALL, "'forceCreate' must be true or false")),
            };
            if args.get("secretKeyConfig").is_some_and(|c| !c.is_null()) {
                return Err(err(
                    "NOT_SUPPORTED",
                    "webTrigger.getUrl with secretKeyConfig is not supported by Kiln: Kiln signs requests to \
                     hmacSharedSecret web triggers with its own per-installation key \
                     ('kiln webtrigger MODULE --signing-secret')",
                ));
            }
            Ok(Ask::Get { module, force })
        }
        "webtrigger.queryUrls" => match args.get("moduleKey") {
            None | Some(Value::Null) => Ok(Ask::Query { module: None }),
            Some(Value::String(m)) => Ok(Ask::Query { module: Some(m.clone()).filter(|m| !m.is_empty()) }),
            Some(_) => Err(err(BAD_CALL, "'moduleKey' must be a string or null")),
        },
        "webtrigger.deleteUrl" => match args.get("id") {
            Some(Value::String(id)) => Ok(Ask::Delete { token: id.clone() }),
            _ => Err(err(BAD_CALL, "'id' must be the web trigger URL's ID")),
        },
        other => Err(err("CAPABILITY_NOT_AVAILABLE", format!("the host offers no '{other}' capability"))),
    }
}

impl InvocationHost<'_> {
    /// Serve a `webtrigger.*` host call for the invocation's installation.
    pub(crate) fn webtrigger(&self, capability: &str, args: &Value) -> HostReply {
        let ask = match parse(capability, args) {
            Ok(ask) => ask,
            Err(reply) => return reply,
        };
        let host = self.host;
        let (Some(public), Some(row), Some(kvs)) =
            (&host.public_url, self.grants.installation_row, host.kvs.as_deref())
        else {
            return err(
                "WEBTRIGGER_URL_UNAVAILABLE",
                "web trigger URLs exist for installations served by kiln serve; this invocation has none",
            );
        };
        let operation = match ask {
            Ask::Get { .. } => UrlOperation::Create,
            Ask::Query { .. } => UrlOperation::Query,
            Ask::Delete { .. } => UrlOperation::Delete,
        };
        if !host.webtrigger_limits.take(row, operation) {
            return err("RATE_LIMIT_EXCEEDED", "Too Many Requests.");
        }
        let store = &host.store;
        let url = |token: &str| format!("{public}/x1/{token}");
        let answered = host.runtime.block_on(async {
            let mut tx = store.begin_read().await?;
            let installation = tx.installation_by_id(row).await?;
            tx.commit().await?;
            let Some(installation) = installation else {
                return Ok(err("PLATFORM_ERROR", "the installation is gone"));
            };
            Ok::<_, WebtriggerError>(match ask {
                Ask::Get { module, force: false } => HostReply::Ok {
                    value: Value::String(url(&token(store, kvs, &installation, &module).await?)),
                },
                Ask::Get { module, force: true } => HostReply::Ok {
                    value: Value::String(url(&create(store, kvs, &installation, &module).await?)),
                },
                Ask::Query { module } => {
                    let urls = list(store, kvs, &installation, module.as_deref()).await?;
                    let value: Vec<Value> = urls
                        .iter()
                        .map(|u| json!({ "moduleKey": u.module_key, "url": url(&u.token) }))
                        .collect();
                    HostReply::Ok { value: Value::Array(value) }
                }
                Ask::Delete { token } => {
                    if delete(store, kvs, &installation, &token).await? {
                        HostReply::Ok { value: Value::Null }
                    } else {
                        err(
                            "WEBTRIGGER_URL_NOT_FOUND",
                            "this installation has no web trigger URL with that ID",
                        )
                    }
                }
            })
        });
        match answered {
            Ok(reply) => reply,
            Err(e @ WebtriggerError::NoSuchModule { .. }) => {
                err("WEBTRIGGER_MODULE_NOT_FOUND", e.to_string())
            }
            Err(e @ WebtriggerError::TooManyUrls) => err("WEBTRIGGER_URL_LIMIT", e.to_string()),
            Err(e) => err("PLATFORM_ERROR", e.to_string()),
        }
    }
}
