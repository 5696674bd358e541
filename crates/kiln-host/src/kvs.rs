//! The `kvs.*` capabilities: an invocation's own key-value entries and
//! secrets in [`kiln_kvs::Kvs`], for `@forge/kvs` and the legacy `storage`
//! API of `@forge/api`.
//!
//! The owner of every entry is the installation the server granted the
//! invocation (`InvocationGrants::product.owner`); nothing the worker sends
//! names or changes it, so an app reaches its own installation's data and
//! nothing else. As in Forge, the installation must have consented to the
//! `storage:app` scope. These calls are not audited (neither served nor
//! refused): they read and write the app's own data and grant no privileged
//! access, which is what the audit trail is for.
//!
//! Contract (arguments → reply). An *entry* is `{key, value, createdAt,
//! updatedAt, expireTime}`: times are milliseconds since the epoch,
//! `expireTime` is `null` without a TTL. A *ttl* is `{value: integer,
//! unit: "SECONDS" | "MINUTES" | "HOURS" | "DAYS"}`. A *failure* is `{key,
//! code, message}`.
//! - `kvs.get {key}` → entry | `null`
//! - `kvs.set {key, value, ttl?, keyPolicy?: "OVERRIDE" | "FAIL_IF_EXISTS",
//!   returnValue?: "PREVIOUS" | "LATEST"}` → entry | `null` (an entry only
//!   with `returnValue`, and for `PREVIOUS` only if there was one)
//! - `kvs.delete {key}` → `null` (also when there was nothing to delete)
//! - `kvs.query {prefix?, cursor?, limit?}` → `{results: [entry],
//!   nextCursor: string | null}` (key order; `null` on the last page)
//! - `kvs.batchGet {keys: [key]}` → `{succeeded: [entry], failed: [failure],
//!   missing: [key]}`
//! - `kvs.batchSet {items: [{key, value, ttl?}]}` → `{succeeded: [key],
//!   failed: [failure]}`
//! - `kvs.batchDelete {keys: [key]}` → `{succeeded: [key], failed: [failure]}`
//! - `kvs.getSecret {key}` → the value | `null`
//! - `kvs.setSecret {key, value}` → `null`
//! - `kvs.deleteSecret {key}` → `null`
//!
//! Refusals carry Forge's codes as `kiln_kvs::ErrorCode` names them
//! (`INVALID_KEY`, `KEY_TOO_LONG`, `MAX_SIZE`, `MAX_DEPTH`, `INVALID_VALUE`,
//! `KEY_ALREADY_EXISTS`, `INVALID_TTL`, `INVALID_LIMIT`, `INVALID_CURSOR`,
//! `TOO_MANY_KEYS`, `DATA_CORRUPTED`, `STORAGE_ERROR`), plus `BAD_REQUEST`
//! for arguments of the wrong shape (the worker passes the app's values
//! through, as Forge's client sends them to its server),
//! `PERMISSION_DENIED` without the `storage:app` scope, and
//! `CAPABILITY_NOT_AVAILABLE` when this Kiln has no store.

use kiln_ipc::HostReply;
use kiln_kvs::{Batch, Entry, KeyPolicy, Kvs, KvsError, MAX_BATCH, ReturnValue, SetOptions, Ttl, TtlUnit};
use serde_json::{Map, Value, json};

use crate::{InvocationHost, err};

/// Forge's code for a request body its server cannot read.
const BAD_REQUEST: &str = "BAD_REQUEST";

/// The scope Forge requires for its key-value store.
const STORAGE_SCOPE: &str = "storage:app";

/// One KVS call, parsed from the worker's arguments.
#[derive(Debug)]
enum Call {
    Get { key: String },
    Set { key: String, value: Value, options: SetOptions },
    Delete { key: String },
    Query { prefix: String, cursor: Option<String>, limit: Option<u32> },
    BatchGet { keys: Vec<String> },
    BatchSet { items: Vec<(String, Value, Option<Ttl>)> },
    BatchDelete { keys: Vec<String> },
    GetSecret { key: String },
    SetSecret { key: String, value: Value },
    DeleteSecret { key: String },
}

impl InvocationHost<'_> {
    /// Serve a `kvs.*` host call for the invocation's installation.
    pub(crate) fn kvs(&self, capability: &str, args: &Value) -> HostReply {
        let Some(kvs) = self.host.kvs.as_deref() else {
            return err("CAPABILITY_NOT_AVAILABLE", "this Kiln has no key-value store configured");
        };
        if !self.grants.product.scopes.contains(STORAGE_SCOPE) {
            return err(
                "PERMISSION_DENIED",
                format!(
                    "@forge/kvs and storage need the '{STORAGE_SCOPE}' scope, which this installation has not \
                     consented to; add it to permissions.scopes in manifest.yml and upgrade the installation"
                ),
            );
        }
        let call = match parse(capability, args) {
            Ok(call) => call,
            Err(reply) => return reply,
        };
        let owner = self.grants.product.owner.as_str();
        match self.host.runtime.block_on(serve(kvs, owner, call)) {
            Ok(value) => HostReply::Ok { value },
            Err(e) => err(e.code.as_str(), e.message),
        }
    }
}

async fn serve(kvs: &Kvs, owner: &str, call: Call) -> Result<Value, KvsError> {
    Ok(match call {
        Call::Get { key } => kvs.get(owner, &key).await?.as_ref().map_or(Value::Null, entry),
        Call::Set { key, value, options } => {
            kvs.set(owner, &key, &value, options).await?.as_ref().map_or(Value::Null, entry)
        }
        Call::Delete { key } => {
            kvs.delete(owner, &key).await?;
            Value::Null
        }
        Call::Query { prefix, cursor, limit } => {
            let page = kvs.query(owner, &prefix, cursor.as_deref(), limit).await?;
            json!({
                "results": page.results.iter().map(entry).collect::<Vec<_>>(),
                "nextCursor": page.next_cursor,
            })
        }
        Call::BatchGet { keys } => {
            let batch = kvs.batch_get(owner, &keys).await?;
            // Kiln's store leaves a missing key out; Forge reports it.
            let missing: Vec<&String> = keys
                .iter()
                .filter(|k| {
                    !batch.succeeded.iter().any(|e| &e.key == *k)
                        && !batch.failed.iter().any(|(f, _)| f == *k)
                })
                .collect();
            json!({
                "succeeded": batch.succeeded.iter().map(entry).collect::<Vec<_>>(),
                "failed": failures(&batch.failed),
                "missing": missing,
            })
        }
        Call::BatchSet { items } => {
            // Item by item, as `Kvs::batch_set` does, so that each item
            // keeps its own TTL.
            let mut out: Batch<String> = Batch { succeeded: Vec::new(), failed: Vec::new() };
            for (key, value, ttl) in items {
                let options = SetOptions { ttl, ..SetOptions::default() };
                match kvs.set(owner, &key, &value, options).await {
                    Ok(_) => out.succeeded.push(key),
                    Err(e) => out.failed.push((key, e)),
                }
            }
            json!({ "succeeded": out.succeeded, "failed": failures(&out.failed) })
        }
        Call::BatchDelete { keys } => {
            let batch = kvs.batch_delete(owner, &keys).await?;
            json!({ "succeeded": batch.succeeded, "failed": failures(&batch.failed) })
        }
        Call::GetSecret { key } => kvs.get_secret(owner, &key).await?.unwrap_or(Value::Null),
        Call::SetSecret { key, value } => {
            kvs.set_secret(owner, &key, &value).await?;
            Value::Null
        }
        Call::DeleteSecret { key } => {
            kvs.delete_secret(owner, &key).await?;
            Value::Null
        }
    })
}

fn entry(e: &Entry) -> Value {
    json!({
        "key": e.key,
        "value": e.value,
        "createdAt": e.created_at,
        "updatedAt": e.updated_at,
        "expireTime": e.expire_time,
    })
}

fn failures(failed: &[(String, KvsError)]) -> Vec<Value> {
    failed
        .iter()
        .map(|(key, e)| json!({ "key": key, "code": e.code.as_str(), "message": e.message }))
        .collect()
}

// ---------------------------------------------------------------- parsing

fn bad(message: impl Into<String>) -> HostReply {
    err(BAD_REQUEST, message)
}

fn parse(capability: &str, args: &Value) -> Result<Call, HostReply> {
    let args = args.as_object().ok_or_else(|| bad("the arguments must be an object"))?;
    Ok(match capability {
        "kvs.get" => Call::Get { key: key(args)? },
        "kvs.set" => Call::Set { key: key(args)?, value: value(args), options: set_options(args)? },
        "kvs.delete" => Call::Delete { key: key(args)? },
        "kvs.query" => Call::Query {
            prefix: match args.get("prefix") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(p)) => p.clone(),
                Some(_) => return Err(bad("'prefix' must be a string")),
            },
            cursor: match args.get("cursor") {
                None | Some(Value::Null) => None,
                Some(Value::String(c)) => Some(c.clone()),
                Some(_) => {
                    return Err(err("INVALID_CURSOR", "the cursor must be a string from a previous page"));
                }
            },
            limit: limit(args)?,
        },
        "kvs.batchGet" => Call::BatchGet { keys: keys(args)? },
        "kvs.batchSet" => Call::BatchSet {
            items: list(args, "items")?
                .iter()
                .map(|item| {
                    let item = item.as_object().ok_or_else(|| bad("each item must be an object"))?;
                    Ok((key(item)?, value(item), ttl(item)?))
                })
                .collect::<Result<_, HostReply>>()?,
        },
        "kvs.batchDelete" => Call::BatchDelete { keys: keys(args)? },
        "kvs.getSecret" => Call::GetSecret { key: key(args)? },
        "kvs.setSecret" => Call::SetSecret { key: key(args)?, value: value(args) },
        "kvs.deleteSecret" => Call::DeleteSecret { key: key(args)? },
        other => {
            return Err(err("CAPABILITY_NOT_AVAILABLE", format!("the host offers no '{other}' capability")));
        }
    })
}

fn key(args: &Map<String, Value>) -> Result<String, HostReply> {
    match args.get("key") {
        Some(Value::String(k)) => Ok(k.clone()),
        _ => Err(err("INVALID_KEY", "a key must be a string")),
    }
}

/// A missing value reads as `null`, which the store refuses with Forge's
/// `INVALID_VALUE`.
fn value(args: &Map<String, Value>) -> Value {
    args.get("value").cloned().unwrap_or(Value::Null)
}

/// A list of at most [`MAX_BATCH`] items: a longer one is refused before
/// any of it is parsed, so a worker cannot make the host walk a huge list.
fn list<'a>(args: &'a Map<String, Value>, name: &str) -> Result<&'a [Value], HostReply> {
    let items =
        args.get(name).and_then(Value::as_array).ok_or_else(|| bad(format!("'{name}' must be a list")))?;
    if items.len() > MAX_BATCH {
        return Err(err(
            "TOO_MANY_KEYS",
            format!("a batch holds at most {MAX_BATCH} keys, not {}", items.len()),
        ));
    }
    Ok(items)
}

fn keys(args: &Map<String, Value>) -> Result<Vec<String>, HostReply> {
    list(args, "keys")?
        .iter()
        .map(|k| k.as_str().map(str::to_owned).ok_or_else(|| err("INVALID_KEY", "a key must be a string")))
        .collect()
}

fn limit(args: &Map<String, Value>) -> Result<Option<u32>, HostReply> {
    match args.get("limit") {
        None | Some(Value::Null) => Ok(None),
        Some(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()).map(Some).ok_or_else(|| {
            err("INVALID_LIMIT", format!("limit must be a whole number from 1 to 100, not {n}"))
        }),
    }
}

fn ttl(args: &Map<String, Value>) -> Result<Option<Ttl>, HostReply> {
    let ttl = match args.get("ttl") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(ttl)) => ttl,
        Some(_) => return Err(err("INVALID_TTL", "a TTL must be {value, unit}")),
    };
    let value = ttl
        .get("value")
        .and_then(Value::as_u64)
        .ok_or_else(|| err("INVALID_TTL", "a TTL's value must be a whole number"))?;
    let unit = match ttl.get("unit").and_then(Value::as_str) {
        Some("SECONDS") => TtlUnit::Seconds,
        Some("MINUTES") => TtlUnit::Minutes,
        Some("HOURS") => TtlUnit::Hours,
        Some("DAYS") => TtlUnit::Days,
        _ => return Err(err("INVALID_TTL", "a TTL's unit must be SECONDS, MINUTES, HOURS or DAYS")),
    };
    Ok(Some(Ttl { value, unit }))
}

fn set_options(args: &Map<String, Value>) -> Result<SetOptions, HostReply> {
    let key_policy = match args.get("keyPolicy") {
        None | Some(Value::Null) => KeyPolicy::Override,
        Some(Value::String(p)) if p == "OVERRIDE" => KeyPolicy::Override,
        Some(Value::String(p)) if p == "FAIL_IF_EXISTS" => KeyPolicy::FailIfExists,
        Some(_) => return Err(bad("keyPolicy must be OVERRIDE or FAIL_IF_EXISTS")),
    };
    let return_value = match args.get("returnValue") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r == "PREVIOUS" => Some(ReturnValue::Previous),
        Some(Value::String(r)) if r == "LATEST" => Some(ReturnValue::Latest),
        Some(_) => return Err(bad("returnValue must be PREVIOUS or LATEST")),
    };
    Ok(SetOptions { ttl: ttl(args)?, key_policy, return_value })
}
