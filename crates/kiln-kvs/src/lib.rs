//! `kiln-kvs`: Forge's key-value store (`@forge/kvs`, legacy `storage`) and
//! secrets, per installation, sealed at rest.
//!
//! Every operation names an *owner* (an installation) and sees only that
//! owner's entries: there is no API that takes a key without an owner.
//! Values are JSON (anything but `null`), sealed with the owner's data key
//! (AES-256-GCM, bound to owner, namespace and key; see
//! `kiln_crypto::envelope`); keys are stored in clear so that prefix queries
//! page in a stable order. Forge's limits and error codes apply: keys of at
//! most 500 characters matching `^(?!\s+$)[a-zA-Z0-9:._\s-#]+$`, values up to
//! 240 KiB and 31 levels deep, TTL up to a year, pages of at most 100,
//! batches of at most 25 keys.
//!
//! Key rotation lives here too: [`Kvs::rewrap_all`] after a new
//! key-encryption key, [`Kvs::rotate_data_key`] and [`Kvs::reencrypt`] for
//! data keys (resumable: re-run until it reports nothing left).

#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kiln_audit::{Audit, AuditError, Event};
use kiln_crypto::envelope::{Binding, CryptoError, DataKey, KeyProvider, Namespace};
use kiln_store::{KvPut, Millis, Store, StoreError, Tx};
use serde_json::Value;

/// Longest key, in characters.
pub const MAX_KEY_CHARS: usize = 500;
/// Largest value, as JSON text.
pub const MAX_VALUE_BYTES: usize = 240 * 1024;
/// Deepest nesting of objects and arrays in a value.
pub const MAX_VALUE_DEPTH: usize = 31;
/// Longest TTL: one year.
pub const MAX_TTL_SECONDS: u64 = 365 * 24 * 3600;
/// Page size when a query gives none, and the largest allowed.
pub const DEFAULT_PAGE: u32 = 10;
pub const MAX_PAGE: u32 = 100;
/// Most keys in one batch operation.
pub const MAX_BATCH: usize = 25;

/// Forge-style error codes an app sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidKey,
    KeyTooLong,
    MaxSize,
    MaxDepth,
    InvalidValue,
    KeyAlreadyExists,
    InvalidTtl,
    InvalidLimit,
    InvalidCursor,
    TooManyKeys,
    /// A stored value failed to open: tampered with, or moved.
    DataCorrupted,
    /// The store or key provider failed.
    StorageError,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidKey => "INVALID_KEY",
            ErrorCode::KeyTooLong => "KEY_TOO_LONG",
            ErrorCode::MaxSize => "MAX_SIZE",
            ErrorCode::MaxDepth => "MAX_DEPTH",
            ErrorCode::InvalidValue => "INVALID_VALUE",
            ErrorCode::KeyAlreadyExists => "KEY_ALREADY_EXISTS",
            ErrorCode::InvalidTtl => "INVALID_TTL",
            ErrorCode::InvalidLimit => "INVALID_LIMIT",
            ErrorCode::InvalidCursor => "INVALID_CURSOR",
            ErrorCode::TooManyKeys => "TOO_MANY_KEYS",
            ErrorCode::DataCorrupted => "DATA_CORRUPTED",
            ErrorCode::StorageError => "STORAGE_ERROR",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation failed: the code an app can branch on, and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct KvsError {
    pub code: ErrorCode,
    pub message: String,
}

impl KvsError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        KvsError { code, message: message.into() }
    }
}

impl From<StoreError> for KvsError {
    fn from(e: StoreError) -> Self {
        KvsError::new(ErrorCode::StorageError, e.to_string())
    }
}

impl From<AuditError> for KvsError {
    fn from(e: AuditError) -> Self {
        KvsError::new(ErrorCode::StorageError, e.to_string())
    }
}

impl From<CryptoError> for KvsError {
    fn from(e: CryptoError) -> Self {
        match e {
            CryptoError::Authentication | CryptoError::Malformed | CryptoError::UnknownFormat(_) => {
                KvsError::new(ErrorCode::DataCorrupted, e.to_string())
            }
            other => KvsError::new(ErrorCode::StorageError, other.to_string()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TtlUnit {
    Seconds,
    Minutes,
    Hours,
    Days,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl {
    pub value: u64,
    pub unit: TtlUnit,
}

impl Ttl {
    fn seconds(self) -> Result<u64, KvsError> {
        let per = match self.unit {
            TtlUnit::Seconds => 1,
            TtlUnit::Minutes => 60,
            TtlUnit::Hours => 3600,
            TtlUnit::Days => 86_400,
        };
        let secs = self.value.saturating_mul(per);
        if self.value == 0 || secs > MAX_TTL_SECONDS {
            return Err(KvsError::new(ErrorCode::InvalidTtl, "a TTL must be positive and at most one year"));
        }
        Ok(secs)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPolicy {
    #[default]
    Override,
    FailIfExists,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnValue {
    Previous,
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetOptions {
    pub ttl: Option<Ttl>,
    pub key_policy: KeyPolicy,
    pub return_value: Option<ReturnValue>,
}

/// A stored entry as an app sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    pub expire_time: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub results: Vec<Entry>,
    /// Pass back to get the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// Per-key outcome of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    pub succeeded: Vec<T>,
    pub failed: Vec<(String, KvsError)>,
}

/// Longest app variable value.
pub const MAX_VARIABLE_BYTES: usize = 32 * 1024;

/// An app variable as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    /// `None` for encrypted variables unless revealed to the runtime.
    pub value: Option<String>,
    pub encrypted: bool,
}

/// Variable names as environment variables have them.
pub fn check_variable_name(name: &str) -> Result<(), KvsError> {
    let ok = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 255;
    if ok {
        Ok(())
    } else {
        Err(KvsError::new(
            ErrorCode::InvalidKey,
            format!("{name:?} is not a variable name (letters, digits and '_')"),
        ))
    }
}

/// Source of the current time, so tests can move it.
pub type Clock = Arc<dyn Fn() -> Millis + Send + Sync>;

/// The key-value store of every installation.
pub struct Kvs {
    store: Store,
    provider: Arc<dyn KeyProvider>,
    clock: Clock,
    keys: Mutex<HashMap<String, Arc<OwnerKeys>>>,
}

impl fmt::Debug for Kvs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kvs").field("provider", &self.provider).finish_non_exhaustive()
    }
}

/// An owner's data keys, unwrapped.
struct OwnerKeys {
    active: Arc<DataKey>,
    by_id: HashMap<u32, Arc<DataKey>>,
    loaded: Instant,
}

/// How long unwrapped data keys are trusted before they are read again, so
/// a data key rotated on another node is sealed with here soon after.
/// Reading a value sealed with a key not yet seen reloads at once.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);

/// The lock name (see `Tx::kv_lock`) that serialises changes to an owner's
/// data keys.
const DATA_KEY_LOCK: &str = "\u{1}data-keys";

const KVS: Namespace = Namespace::Kvs;
const SECRET: Namespace = Namespace::Secret;

impl Kvs {
    pub fn new(store: Store, provider: Arc<dyn KeyProvider>) -> Self {
        Kvs::with_clock(store, provider, Arc::new(kiln_store::now_millis))
    }

    pub fn with_clock(store: Store, provider: Arc<dyn KeyProvider>, clock: Clock) -> Self {
        Kvs { store, provider, clock, keys: Mutex::new(HashMap::new()) }
    }

    pub async fn get(&self, owner: &str, key: &str) -> Result<Option<Entry>, KvsError> {
        self.read(owner, KVS, key).await
    }

    pub async fn get_secret(&self, owner: &str, key: &str) -> Result<Option<Value>, KvsError> {
        Ok(self.read(owner, SECRET, key).await?.map(|e| e.value))
    }

    pub async fn set(
        &self,
        owner: &str,
        key: &str,
        value: &Value,
        options: SetOptions,
    ) -> Result<Option<Entry>, KvsError> {
        self.write(owner, KVS, key, value, options, None).await
    }

    pub async fn set_secret(&self, owner: &str, key: &str, value: &Value) -> Result<(), KvsError> {
        self.write(owner, SECRET, key, value, SetOptions::default(), None).await.map(drop)
    }

    pub async fn delete(&self, owner: &str, key: &str) -> Result<(), KvsError> {
        self.remove(owner, KVS, key, None).await
    }

    pub async fn delete_secret(&self, owner: &str, key: &str) -> Result<(), KvsError> {
        self.remove(owner, SECRET, key, None).await
    }

    /// Entries whose key begins with `prefix`, in key order, `limit` at a
    /// time (default 10, at most 100). Secrets are never listed.
    pub async fn query(
        &self,
        owner: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page, KvsError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(KvsError::new(
                ErrorCode::InvalidLimit,
                format!("limit must be 1 to {MAX_PAGE}, not {limit}"),
            ));
        }
        if prefix.chars().count() > MAX_KEY_CHARS || !prefix.chars().all(allowed_key_char) {
            return Err(KvsError::new(ErrorCode::InvalidKey, "the prefix is not part of a valid key"));
        }
        let after = cursor.map(decode_cursor).transpose()?;
        let now = (self.clock)();
        let mut tx = self.store.begin_read().await?;
        // One extra row says whether another page follows.
        let mut rows = tx.kv_query(owner, KVS.as_str(), prefix, after.as_deref(), limit + 1, now).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let keys =
            self.keys_opening(&mut tx, owner, rows.iter().map(|r| r.key_id).collect::<Vec<u32>>()).await?;
        tx.commit().await?;
        let mut results = Vec::with_capacity(rows.len());
        for row in rows {
            results.push(open_row(keys.as_deref(), owner, KVS, row)?);
        }
        let next_cursor = if more { results.last().map(|e| encode_cursor(&e.key)) } else { None };
        Ok(Page { results, next_cursor })
    }

    pub async fn batch_get(&self, owner: &str, keys: &[String]) -> Result<Batch<Entry>, KvsError> {
        check_batch(keys.len())?;
        let mut out = Batch { succeeded: Vec::new(), failed: Vec::new() };
        for key in keys {
            match self.read(owner, KVS, key).await {
                Ok(Some(entry)) => out.succeeded.push(entry),
                Ok(None) => {}
                Err(e) => out.failed.push((key.clone(), e)),
            }
        }
        Ok(out)
    }

    pub async fn batch_set(&self, owner: &str, items: &[(String, Value)]) -> Result<Batch<String>, KvsError> {
        check_batch(items.len())?;
        let mut out = Batch { succeeded: Vec::new(), failed: Vec::new() };
        for (key, value) in items {
            match self.write(owner, KVS, key, value, SetOptions::default(), None).await {
                Ok(_) => out.succeeded.push(key.clone()),
                Err(e) => out.failed.push((key.clone(), e)),
            }
        }
        Ok(out)
    }

    pub async fn batch_delete(&self, owner: &str, keys: &[String]) -> Result<Batch<String>, KvsError> {
        check_batch(keys.len())?;
        let mut out = Batch { succeeded: Vec::new(), failed: Vec::new() };
        for key in keys {
            match self.remove(owner, KVS, key, None).await {
                Ok(()) => out.succeeded.push(key.clone()),
                Err(e) => out.failed.push((key.clone(), e)),
            }
        }
        Ok(out)
    }

    /// Delete up to `limit` expired entries (they are already invisible).
    pub async fn sweep(&self, limit: u32) -> Result<u64, KvsError> {
        let mut tx = self.store.begin().await?;
        let n = tx.kv_sweep((self.clock)(), limit).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Rewrap every data key with the provider's current key-encryption key
    /// (after the provider rotated). Returns how many were rewrapped.
    pub async fn rewrap_all(&self, audit: Audit<'_>) -> Result<usize, KvsError> {
        let current = self.provider.current_kek();
        let mut tx = self.store.begin().await?;
        let mut n = 0;
        for (owner, row) in tx.all_data_keys().await? {
            if row.kek_id == current {
                continue;
            }
            let raw = self.provider.unwrap(&owner, row.key_id, &row.wrapped)?;
            let wrapped = self.provider.wrap(&owner, row.key_id, &raw)?;
            tx.rewrap_data_key(&owner, row.key_id, &wrapped, &current).await?;
            n += 1;
        }
        audit.append(&mut tx, Event::key_rotation("kek", Some(&current), n)).await?;
        tx.commit().await?;
        Ok(n)
    }

    /// Start sealing `owner`'s new values with a fresh data key. Existing
    /// values stay readable; [`Kvs::reencrypt`] moves them over.
    pub async fn rotate_data_key(&self, owner: &str, audit: Audit<'_>) -> Result<u32, KvsError> {
        let mut tx = self.store.begin().await?;
        tx.kv_lock(owner, DATA_KEY_LOCK, "").await?;
        let next = tx.data_keys(owner).await?.iter().map(|k| k.key_id).max().unwrap_or(0) + 1;
        let (_, raw) = DataKey::generate(next)?;
        let wrapped = self.provider.wrap(owner, next, &raw)?;
        tx.insert_data_key(owner, next, &wrapped, &self.provider.current_kek(), true).await?;
        audit.append(&mut tx, Event::key_rotation("data-key", Some(&format!("{owner}#{next}")), 1)).await?;
        tx.commit().await?;
        self.forget(owner);
        Ok(next)
    }

    /// Re-seal up to `batch` of `owner`'s values still sealed with an older
    /// data key. Each batch commits on its own, so a crash loses nothing and
    /// the next call continues. Returns how many were re-sealed (0: done).
    pub async fn reencrypt(&self, owner: &str, batch: u32) -> Result<usize, KvsError> {
        let mut tx = self.store.begin().await?;
        let Some(keys) = self.owner_keys(&mut tx, owner, false).await? else { return Ok(0) };
        let active = keys.active.clone();
        let rows = tx.kv_sealed_with_other_keys(owner, active.id(), batch).await?;
        let n = rows.len();
        for (namespace, row) in rows {
            let ns = match namespace.as_str() {
                "secret" => SECRET,
                "variable" => Namespace::Variable,
                "token" => Namespace::Token,
                _ => KVS,
            };
            let old = keys.by_id.get(&row.key_id).ok_or_else(|| {
                KvsError::new(ErrorCode::DataCorrupted, format!("no data key {}", row.key_id))
            })?;
            let binding = Binding { owner, namespace: ns, key: &row.key };
            let plain = old.open(&binding, &row.value)?;
            let sealed = active.seal(&binding, &plain)?;
            // A write that landed since the SELECT wins; it is already
            // sealed with the active key.
            tx.kv_reseal(owner, ns.as_str(), &row.key, &row.value, &sealed, active.id()).await?;
        }
        tx.commit().await?;
        Ok(n)
    }

    // ------------------------------------------------------------ variables

    /// Set an app variable (`process.env.NAME` for the app's functions) for
    /// `owner` (an app and environment). Every variable is sealed at rest;
    /// `encrypted` ones are also never shown back (`kiln variables list`
    /// masks them), as `forge variables set --encrypt` does.
    /// Set a variable; `event` (which must not hold the value) is recorded
    /// in the same transaction, so the change and its record stand or fall
    /// together.
    pub async fn set_variable(
        &self,
        owner: &str,
        name: &str,
        value: &str,
        encrypted: bool,
        audit: Audit<'_>,
        event: Event,
    ) -> Result<(), KvsError> {
        check_variable_name(name)?;
        if value.len() > MAX_VARIABLE_BYTES {
            return Err(KvsError::new(
                ErrorCode::MaxSize,
                format!("variables are at most {MAX_VARIABLE_BYTES} bytes"),
            ));
        }
        let stored = serde_json::json!({ "value": value, "encrypted": encrypted });
        let record = Some((audit, event));
        self.write(owner, Namespace::Variable, name, &stored, SetOptions::default(), record).await.map(drop)
    }

    /// Remove a variable; `event` is recorded in the same transaction.
    pub async fn unset_variable(
        &self,
        owner: &str,
        name: &str,
        audit: Audit<'_>,
        event: Event,
    ) -> Result<(), KvsError> {
        check_variable_name(name)?;
        self.remove(owner, Namespace::Variable, name, Some((audit, event))).await
    }

    /// Every variable of `owner`: name, value (`None` when encrypted, unless
    /// `reveal`, which only the function runtime asks for), and whether it
    /// is encrypted.
    pub async fn variables(&self, owner: &str, reveal: bool) -> Result<Vec<Variable>, KvsError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut tx = self.store.begin_read().await?;
            let rows = tx
                .kv_query(owner, Namespace::Variable.as_str(), "", after.as_deref(), MAX_PAGE, (self.clock)())
                .await?;
            let keys = self
                .keys_opening(&mut tx, owner, rows.iter().map(|r| r.key_id).collect::<Vec<u32>>())
                .await?;
            tx.commit().await?;
            let last = rows.last().map(|r| r.key.clone());
            for row in rows {
                let entry = open_row(keys.as_deref(), owner, Namespace::Variable, row)?;
                let encrypted = entry.value.get("encrypted").and_then(Value::as_bool).unwrap_or(true);
                let value = entry.value.get("value").and_then(Value::as_str).map(str::to_owned);
                out.push(Variable {
                    name: entry.key,
                    value: if encrypted && !reveal { None } else { value },
                    encrypted,
                });
            }
            match last {
                Some(k) => after = Some(k),
                None => return Ok(out),
            }
        }
    }

    // ------------------------------------------------------------ tokens

    /// Store an OAuth token (access or refresh) as `name` for `owner`,
    /// sealed under the `token` namespace: never listed by queries, never
    /// readable as a KVS entry or a secret. With `ttl`, it disappears when
    /// the token expires.
    pub async fn set_token(
        &self,
        owner: &str,
        name: &str,
        token: &str,
        ttl: Option<Ttl>,
    ) -> Result<(), KvsError> {
        let options = SetOptions { ttl, ..SetOptions::default() };
        self.write(owner, Namespace::Token, name, &Value::String(token.to_owned()), options, None)
            .await
            .map(drop)
    }

    pub async fn get_token(&self, owner: &str, name: &str) -> Result<Option<String>, KvsError> {
        match self.read(owner, Namespace::Token, name).await? {
            None => Ok(None),
            Some(Entry { value: Value::String(token), .. }) => Ok(Some(token)),
            Some(_) => Err(KvsError::new(ErrorCode::DataCorrupted, "a stored token is not a string")),
        }
    }

    pub async fn delete_token(&self, owner: &str, name: &str) -> Result<(), KvsError> {
        self.remove(owner, Namespace::Token, name, None).await
    }

    // ------------------------------------------------------------ blobs

    /// Seal `bytes` under `owner`'s active data key, for a row that lives
    /// outside the key-value store (a queued event's body). `purpose` is the
    /// associated data: it must name the exact row the bytes go to (table,
    /// and the row's identity), so a sealed body copied to another row,
    /// kind of row or installation does not open. The owner's first data
    /// key is made if it has none.
    ///
    /// Blobs are not re-sealed by [`Kvs::reencrypt`] (it walks the
    /// key-value rows only); they stay readable after a rotation because a
    /// data key, once made, is never deleted. Keep them short-lived.
    pub async fn seal_blob(&self, owner: &str, purpose: &str, bytes: &[u8]) -> Result<Vec<u8>, KvsError> {
        let keys = match self.fresh_cached(owner) {
            Some(keys) => keys,
            None => {
                let mut tx = self.store.begin().await?;
                let keys = self
                    .owner_keys(&mut tx, owner, true)
                    .await?
                    .ok_or_else(|| KvsError::new(ErrorCode::StorageError, "no data key"))?;
                tx.commit().await?;
                keys
            }
        };
        Ok(keys.active.seal(&Binding { owner, namespace: Namespace::Blob, key: purpose }, bytes)?)
    }

    /// Open what [`Kvs::seal_blob`] sealed for the same `owner` and
    /// `purpose`. Anything else — another row's body, altered bytes, a blob
    /// of another owner — is `DATA_CORRUPTED`.
    pub async fn open_blob(
        &self,
        owner: &str,
        purpose: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, KvsError> {
        let id = kiln_crypto::envelope::sealed_key_id(sealed)?;
        let keys = match self.fresh_cached(owner).filter(|k| k.by_id.contains_key(&id)) {
            Some(keys) => keys,
            None => {
                let mut tx = self.store.begin_read().await?;
                let keys = self.keys_opening(&mut tx, owner, [id]).await?;
                tx.commit().await?;
                keys.ok_or_else(|| {
                    KvsError::new(
                        ErrorCode::DataCorrupted,
                        "a sealed blob exists but its owner has no data key",
                    )
                })?
            }
        };
        let key = keys.by_id.get(&id).ok_or_else(|| {
            KvsError::new(ErrorCode::DataCorrupted, format!("blob sealed with unknown data key {id}"))
        })?;
        Ok(key.open(&Binding { owner, namespace: Namespace::Blob, key: purpose }, sealed)?)
    }

    /// The owner's keys if the cache holds them and they are not stale.
    fn fresh_cached(&self, owner: &str) -> Option<Arc<OwnerKeys>> {
        let cached = self.keys.lock().ok().and_then(|m| m.get(owner).cloned());
        cached.filter(|k| k.loaded.elapsed() < KEY_CACHE_TTL)
    }

    /// Every owner that has data keys (for rotating them all).
    pub async fn owners(&self) -> Result<Vec<String>, KvsError> {
        let mut tx = self.store.begin().await?;
        let mut owners: Vec<String> = tx.all_data_keys().await?.into_iter().map(|(o, _)| o).collect();
        tx.commit().await?;
        owners.dedup();
        Ok(owners)
    }

    // ------------------------------------------------------------ internals

    async fn read(&self, owner: &str, ns: Namespace, key: &str) -> Result<Option<Entry>, KvsError> {
        check_key(key)?;
        let mut tx = self.store.begin_read().await?;
        let row = tx.kv_get(owner, ns.as_str(), key, (self.clock)()).await?;
        let keys = match &row {
            Some(r) => self.keys_opening(&mut tx, owner, [r.key_id]).await?,
            None => None,
        };
        tx.commit().await?;
        row.map(|r| open_row(keys.as_deref(), owner, ns, r)).transpose()
    }

    async fn write(
        &self,
        owner: &str,
        ns: Namespace,
        key: &str,
        value: &Value,
        options: SetOptions,
        record: Option<(Audit<'_>, Event)>,
    ) -> Result<Option<Entry>, KvsError> {
        check_key(key)?;
        let json = check_value(value)?;
        let now = (self.clock)();
        let expires_at = match options.ttl {
            Some(ttl) => {
                let ms = i64::try_from(ttl.seconds()? * 1000).unwrap_or(i64::MAX);
                Some(now.saturating_add(ms))
            }
            None => None,
        };
        let mut tx = self.store.begin().await?;
        let keys = self
            .owner_keys(&mut tx, owner, true)
            .await?
            .ok_or_else(|| KvsError::new(ErrorCode::StorageError, "no data key"))?;
        tx.kv_lock(owner, ns.as_str(), key).await?;
        let previous = tx.kv_get(owner, ns.as_str(), key, now).await?;
        if options.key_policy == KeyPolicy::FailIfExists && previous.is_some() {
            return Err(KvsError::new(ErrorCode::KeyAlreadyExists, format!("key {key:?} already exists")));
        }
        let previous = previous.map(|r| open_row(Some(&keys), owner, ns, r)).transpose()?;
        let sealed = keys.active.seal(&Binding { owner, namespace: ns, key }, json.as_bytes())?;
        let put = KvPut {
            owner,
            namespace: ns.as_str(),
            key,
            value: &sealed,
            key_id: keys.active.id(),
            expires_at,
        };
        tx.kv_put(put, now).await?;
        if let Some((audit, event)) = record {
            audit.append(&mut tx, event).await?;
        }
        // Acknowledged only once the commit is durable.
        tx.commit().await?;
        Ok(match options.return_value {
            None => None,
            Some(ReturnValue::Previous) => previous,
            Some(ReturnValue::Latest) => Some(Entry {
                key: key.to_owned(),
                value: value.clone(),
                expire_time: expires_at,
                created_at: previous.as_ref().map_or(now, |p| p.created_at),
                updated_at: now,
            }),
        })
    }

    async fn remove(
        &self,
        owner: &str,
        ns: Namespace,
        key: &str,
        record: Option<(Audit<'_>, Event)>,
    ) -> Result<(), KvsError> {
        check_key(key)?;
        let mut tx = self.store.begin().await?;
        tx.kv_delete(owner, ns.as_str(), key, (self.clock)()).await?;
        if let Some((audit, event)) = record {
            audit.append(&mut tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    fn forget(&self, owner: &str) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.remove(owner);
        }
    }

    /// The owner's keys, reloaded if the cache lacks one of `ids` (a data
    /// key made on another node).
    async fn keys_opening(
        &self,
        tx: &mut Tx,
        owner: &str,
        ids: impl IntoIterator<Item = u32>,
    ) -> Result<Option<Arc<OwnerKeys>>, KvsError> {
        let keys = self.owner_keys(tx, owner, false).await?;
        let mut ids = ids.into_iter();
        match keys {
            Some(k) if ids.any(|id| !k.by_id.contains_key(&id)) => {
                self.load_owner_keys(tx, owner, false).await
            }
            other => Ok(other),
        }
    }

    /// The owner's keys, from the cache or the store; with `create`, make
    /// the first data key if the owner has none.
    async fn owner_keys(
        &self,
        tx: &mut Tx,
        owner: &str,
        create: bool,
    ) -> Result<Option<Arc<OwnerKeys>>, KvsError> {
        let cached = self.keys.lock().ok().and_then(|m| m.get(owner).cloned());
        if let Some(k) = cached.filter(|k| k.loaded.elapsed() < KEY_CACHE_TTL) {
            return Ok(Some(k));
        }
        self.load_owner_keys(tx, owner, create).await
    }

    /// The owner's keys from the store, bypassing the cache: another node
    /// may have rotated them.
    async fn load_owner_keys(
        &self,
        tx: &mut Tx,
        owner: &str,
        create: bool,
    ) -> Result<Option<Arc<OwnerKeys>>, KvsError> {
        let mut rows = tx.data_keys(owner).await?;
        if rows.is_empty() {
            if !create {
                return Ok(None);
            }
            // Two first writes for one owner (on two nodes) must not both
            // make key 1: the second waits, then finds the first's.
            tx.kv_lock(owner, DATA_KEY_LOCK, "").await?;
            rows = tx.data_keys(owner).await?;
            if rows.is_empty() {
                let (_, raw) = DataKey::generate(1)?;
                let wrapped = self.provider.wrap(owner, 1, &raw)?;
                tx.insert_data_key(owner, 1, &wrapped, &self.provider.current_kek(), true).await?;
                rows = tx.data_keys(owner).await?;
            }
        }
        let mut by_id = HashMap::new();
        let mut active = None;
        for row in rows {
            let raw = self.provider.unwrap(owner, row.key_id, &row.wrapped)?;
            let key = Arc::new(DataKey::from_bytes(row.key_id, &raw)?);
            if row.active {
                active = Some(key.clone());
            }
            by_id.insert(row.key_id, key);
        }
        let active = active
            .ok_or_else(|| KvsError::new(ErrorCode::StorageError, "the owner has no active data key"))?;
        let keys = Arc::new(OwnerKeys { active, by_id, loaded: Instant::now() });
        if let Ok(mut m) = self.keys.lock() {
            m.insert(owner.to_owned(), keys.clone());
        }
        Ok(Some(keys))
    }
}

fn open_row(
    keys: Option<&OwnerKeys>,
    owner: &str,
    ns: Namespace,
    row: kiln_store::KvRow,
) -> Result<Entry, KvsError> {
    let keys = keys.ok_or_else(|| {
        KvsError::new(ErrorCode::DataCorrupted, "a value exists but its owner has no data key")
    })?;
    let key = keys.by_id.get(&row.key_id).ok_or_else(|| {
        KvsError::new(ErrorCode::DataCorrupted, format!("value sealed with unknown data key {}", row.key_id))
    })?;
    if kiln_crypto::envelope::sealed_key_id(&row.value)? != row.key_id {
        return Err(KvsError::new(ErrorCode::DataCorrupted, "the stored value names another data key"));
    }
    let plain = key.open(&Binding { owner, namespace: ns, key: &row.key }, &row.value)?;
    let value: Value = serde_json::from_slice(&plain)
        .map_err(|e| KvsError::new(ErrorCode::DataCorrupted, format!("stored value is not JSON: {e}")))?;
    Ok(Entry {
        key: row.key,
        value,
        expire_time: row.expires_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// JavaScript's `\s`, which Forge's key pattern uses.
fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}' | '\u{feff}'
    )
}

fn allowed_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-' | '#') || is_js_space(c)
}

/// Forge's key rules: 1 to 500 characters of `[a-zA-Z0-9:._\s-#]`, not only
/// whitespace.
pub fn check_key(key: &str) -> Result<(), KvsError> {
    if key.chars().count() > MAX_KEY_CHARS {
        return Err(KvsError::new(
            ErrorCode::KeyTooLong,
            format!("keys are at most {MAX_KEY_CHARS} characters"),
        ));
    }
    if key.is_empty() || key.chars().all(is_js_space) || !key.chars().all(allowed_key_char) {
        return Err(KvsError::new(
            ErrorCode::InvalidKey,
            "keys use letters, digits, ':', '.', '_', '-', '#' and spaces, and are not only spaces",
        ));
    }
    Ok(())
}

/// Forge's value rules: JSON but not null, at most 240 KiB and 31 deep.
pub fn check_value(value: &Value) -> Result<String, KvsError> {
    if value.is_null() {
        return Err(KvsError::new(ErrorCode::InvalidValue, "null cannot be stored; delete the key instead"));
    }
    if depth(value) > MAX_VALUE_DEPTH {
        return Err(KvsError::new(
            ErrorCode::MaxDepth,
            format!("values nest at most {MAX_VALUE_DEPTH} levels"),
        ));
    }
    let json = value.to_string();
    if json.len() > MAX_VALUE_BYTES {
        return Err(KvsError::new(
            ErrorCode::MaxSize,
            format!("values are at most {MAX_VALUE_BYTES} bytes as JSON"),
        ));
    }
    Ok(json)
}

fn depth(value: &Value) -> usize {
    let mut max = 0;
    let mut todo = vec![(value, 0usize)];
    while let Some((v, d)) = todo.pop() {
        match v {
            Value::Array(items) => {
                max = max.max(d + 1);
                todo.extend(items.iter().map(|i| (i, d + 1)));
            }
            Value::Object(map) => {
                max = max.max(d + 1);
                todo.extend(map.values().map(|i| (i, d + 1)));
            }
            _ => {}
        }
    }
    max
}

fn check_batch(n: usize) -> Result<(), KvsError> {
    if n > MAX_BATCH {
        return Err(KvsError::new(
            ErrorCode::TooManyKeys,
            format!("a batch holds at most {MAX_BATCH} keys, not {n}"),
        ));
    }
    Ok(())
}

fn encode_cursor(key: &str) -> String {
    URL_SAFE_NO_PAD.encode(key.as_bytes())
}

fn decode_cursor(cursor: &str) -> Result<String, KvsError> {
    let bad = || KvsError::new(ErrorCode::InvalidCursor, "the cursor does not come from a previous page");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    check_key(&key).map_err(|_| bad())?;
    Ok(key)
}
