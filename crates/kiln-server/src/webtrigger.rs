//! Web triggers: each installation's web trigger module gets an unguessable
//! URL, `/x1/<secret>`, and a request to it runs the module's function in
//! the sandbox with Forge's request and response shapes.
//!
//! - **URLs.** The secret is 32 random bytes (base64url). The database holds
//!   only its SHA-256 (`webtriggers`); the secret itself is sealed in the
//!   installation's token namespace so the URL can be shown again. A URL
//!   opens the module of the installation it was made for, whatever version
//!   that installation runs; a module a later version dropped answers 404.
//!   An installation may have several URLs for a module: the app makes and
//!   deletes its own (`webTrigger.getUrl` with forceCreate, `deleteUrl`,
//!   through `kiln-host`), and a deleted one answers 404.
//! - **Request.** `{method, path, headers: {name: [values]}, queryParameters:
//!   {name: [values]}, body}` (header names lower-case, the body as text, at
//!   most [`MAX_BODY`] bytes), and the platform's context as the second
//!   argument.
//! - **Response.** A dynamic module's function returns `{statusCode,
//!   headers: {name: [values] | value}, body}`; a static module's returns
//!   `{outputKey}`, naming one of the manifest's outputs. Anything else is a
//!   500 that says the function gave no response; a failed invocation is a
//!   500 that does not show the app's error (a sandbox fault — timeout,
//!   memory, a dead worker — goes to the audit trail).
//! - **What the function may do** is what the installation's admin
//!   consented to: its egress, its scopes, its storage, its variables, all
//!   through `kiln-host`, with every egress and product decision audited.
//!
//! - **Rate limit.** Per installation, [`DEFAULT_PER_MINUTE`] requests a
//!   minute unless the operator sets another; every answer carries
//!   `X-RateLimit-Limit`, `-Remaining` and `-Reset`, and one over the limit
//!   is a 429 with `Retry-After`. Counted per node.
//!
//! - **Signed requests.** A module with `authentication: hmacSharedSecret`
//!   runs only for requests signed with its installation's signing key
//!   (see [`Signed`]); the key is made by `kiln webtrigger MODULE
//!   --signing-secret` and kept sealed beside the URL's secret. Forge's own
//!   scheme for this option is not documented; this one is Kiln's.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use kiln_crypto::Sha256;
use kiln_manifest::{Target, WebTriggerAuth, WebTriggerResponse};
use kiln_sandbox::Caller;
use kiln_store::InstallationRecord;
use serde_json::{Value, json};

use crate::runner::{AUDIT_FAILED, Call, Runner};

/// Largest request body a web trigger takes.
pub const MAX_BODY: usize = 1024 * 1024;

pub use kiln_host::webtrigger::{WebtriggerError, owner, signing_secret, token};

/// What serving web triggers needs. The worker never sees any of it.
pub struct Webtriggers {
    pub runner: Arc<Runner>,
    limiter: Limiter,
    /// Signatures of `hmacSharedSecret` requests seen within the window.
    replay: Signed,
}

/// Requests an installation's web triggers take per minute unless the
/// operator says otherwise.
pub const DEFAULT_PER_MINUTE: u32 = 600;

/// Per-installation fixed one-minute windows. Counted per node: with
/// several nodes an installation gets up to this many per node.
#[derive(Debug)]
struct Limiter {
    per_minute: u32,
    windows: Mutex<HashMap<i64, (std::time::Instant, u32)>>,
}

/// One request's place in its installation's window.
struct Quota {
    allowed: bool,
    limit: u32,
    remaining: u32,
    reset_secs: u64,
}

impl Limiter {
    fn take(&self, installation: i64) -> Quota {
        let now = std::time::Instant::now();
        let window = std::time::Duration::from_secs(60);
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (start, count) = windows.entry(installation).or_insert((now, 0));
        if now.duration_since(*start) >= window {
            *start = now;
            *count = 0;
        }
        let allowed = *count < self.per_minute;
        if allowed {
            *count += 1;
        }
        let reset = window.saturating_sub(now.duration_since(*start));
        Quota {
            allowed,
            limit: self.per_minute,
            remaining: self.per_minute.saturating_sub(*count),
            reset_secs: reset.as_secs().max(1),
        }
    }
}

impl Quota {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (seconds) on every answer.
    fn stamp(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset_secs.to_string()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
    }
}

impl std::fmt::Debug for Webtriggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webtriggers").finish_non_exhaustive()
    }
}

impl Webtriggers {
    pub fn new(runner: Arc<Runner>) -> Self {
        Webtriggers {
            runner,
            limiter: Limiter { per_minute: DEFAULT_PER_MINUTE, windows: Mutex::new(HashMap::new()) },
            replay: Signed::default(),
        }
    }

    /// Requests each installation's web triggers take per minute (at least 1).
    pub fn with_rate_limit(mut self, per_minute: u32) -> Self {
        self.limiter.per_minute = per_minute.max(1);
        self
    }
}

/// `/x1/<secret>` and `/x1/<secret>/<path>`, any method.
pub fn router(state: Arc<Webtriggers>) -> Router {
    Router::new()
        .route("/x1/{token}", axum::routing::any(root))
        .route("/x1/{token}/{*rest}", axum::routing::any(nested))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn root(
    State(state): State<Arc<Webtriggers>>,
    Path(token): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(state, token, "/".into(), method, uri, headers, body).await
}

async fn nested(
    State(state): State<Arc<Webtriggers>>,
    Path((token, rest)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    serve(state, token, format!("/{rest}"), method, uri, headers, body).await
}

fn answer(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "message": message }))).into_response()
}

#[allow(clippy::too_many_arguments, reason = "the parts of one request, as axum hands them over")]
async fn serve(
    state: Arc<Webtriggers>,
    token: String,
    path: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let not_found = || answer(StatusCode::NOT_FOUND, "no such web trigger");
    let Ok(found) = find(&state, &token).await else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "the web trigger cannot be looked up now");
    };
    let Some((installation, version, module_key)) = found else { return not_found() };
    let quota = state.limiter.take(installation.id);
    let mut res = if quota.allowed {
        run(&state, installation, version, module_key, path, method, uri, headers, body).await
    } else {
        state.runner.metrics.webtrigger_rate_limited();
        let mut res = answer(
            StatusCode::TOO_MANY_REQUESTS,
            "this installation's web triggers are over their rate limit",
        );
        if let Ok(v) = HeaderValue::from_str(&quota.reset_secs.to_string()) {
            res.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
        }
        res
    };
    quota.stamp(res.headers_mut());
    res
}

#[allow(clippy::too_many_arguments, reason = "the parts of one request")]
async fn run(
    state: &Arc<Webtriggers>,
    installation: InstallationRecord,
    version: kiln_store::VersionRecord,
    module_key: String,
    path: String,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let not_found = || answer(StatusCode::NOT_FOUND, "no such web trigger");
    let manifest = &version.manifest;
    let Some(module) = manifest.modules.webtriggers.iter().find(|w| w.key.as_str() == module_key) else {
        return not_found();
    };
    if module.authentication == WebTriggerAuth::HmacSharedSecret {
        let secret = match kiln_host::webtrigger::existing_signing_secret(
            &state.runner.kvs,
            &installation,
            &module_key,
        )
        .await
        {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                return answer(
                    StatusCode::UNAUTHORIZED,
                    "this web trigger needs signed requests and has no signing key yet: \
                     'kiln webtrigger MODULE --signing-secret' makes one",
                );
            }
            Err(_) => {
                return answer(StatusCode::SERVICE_UNAVAILABLE, "the web trigger cannot be checked now");
            }
        };
        let target = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
        if let Err(why) =
            state.replay.check(secret.as_bytes(), &method, &target, &headers, &body, kiln_store::now_millis())
        {
            return answer(StatusCode::UNAUTHORIZED, why);
        }
    }
    let Target::Function(function) = &module.target else {
        return answer(
            StatusCode::NOT_IMPLEMENTED,
            "web triggers served by a remote are not supported by Kiln",
        );
    };
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return answer(StatusCode::BAD_REQUEST, "the request body is not UTF-8 text");
    };
    let request = json!({
        "method": method.as_str(),
        "path": path,
        "headers": multi_headers(&headers),
        "queryParameters": query_parameters(uri.query().unwrap_or_default()),
        "body": text,
    });
    let response = module.response.clone();
    let function = function.as_str().to_owned();
    let call = Call {
        installation,
        version,
        function,
        module_key,
        payload: request,
        context: serde_json::Map::new(),
        caller: Caller::WebTrigger,
        account_id: None,
        kind: "webtrigger",
    };
    let outcome = state.runner.run(call).await;
    match (outcome, &response) {
        (Ok(result), WebTriggerResponse::Dynamic) => dynamic(&result),
        (Ok(result), WebTriggerResponse::Static { outputs }) => {
            let key = result.get("outputKey").and_then(Value::as_str);
            match outputs.iter().find(|o| Some(o.key.as_str()) == key) {
                Some(o) => {
                    let status = StatusCode::from_u16(o.status_code).unwrap_or(StatusCode::OK);
                    let mut res = (status, o.body.clone().unwrap_or_default()).into_response();
                    if let Some(ct) = o.content_type.as_deref().and_then(|c| HeaderValue::from_str(c).ok()) {
                        res.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
                    }
                    res
                }
                None => answer(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the function named no output of this web trigger",
                ),
            }
        }
        (Err(f), _) if f.code == AUDIT_FAILED => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "the web trigger's function failed and could not be recorded",
        ),
        // The caller is told only that the function failed; a sandbox
        // fault is in the audit trail (the runner recorded it).
        (Err(_), _) => answer(StatusCode::INTERNAL_SERVER_ERROR, "the web trigger's function failed"),
    }
}

type Found = (InstallationRecord, kiln_store::VersionRecord, String);

async fn find(state: &Webtriggers, token: &str) -> Result<Option<Found>, kiln_store::StoreError> {
    if token.len() != 43 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Ok(None);
    }
    let hash = Sha256::of(token.as_bytes());
    let mut tx = state.runner.store.begin_read().await?;
    let Some(row) = tx.webtrigger_by_hash(hash.as_bytes()).await? else { return Ok(None) };
    let Some(installation) = tx.installation_by_id(row.installation_id).await? else { return Ok(None) };
    let Some(version) = tx.version_by_id(installation.version_id).await? else { return Ok(None) };
    Ok(Some((installation, version, row.module_key)))
}

fn multi_headers(headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            out.entry(name.as_str().to_owned()).or_default().push(v.to_owned());
        }
    }
    out
}

fn query_parameters(query: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        out.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    out
}

/// A dynamic web trigger's answer: `{statusCode, headers, body}`.
fn dynamic(result: &Value) -> Response {
    let Some(status) = result.get("statusCode").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok())
    else {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the web trigger's function returned no statusCode",
        );
    };
    let Ok(status) = StatusCode::from_u16(status) else {
        return answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the web trigger's function returned an invalid statusCode",
        );
    };
    let body = match result.get("body") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let mut res = (status, body).into_response();
    let out = res.headers_mut();
    out.remove(axum::http::header::CONTENT_TYPE);
    if let Some(Value::Object(headers)) = result.get("headers") {
        for (name, values) in headers {
            let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else { continue };
            if HOP_BY_HOP.contains(&name.as_str()) {
                continue;
            }
            let values: Vec<&str> = match values {
                Value::Array(vs) => vs.iter().filter_map(Value::as_str).collect(),
                Value::String(v) => vec![v.as_str()],
                _ => Vec::new(),
            };
            for v in values {
                if let Ok(v) = HeaderValue::from_str(v) {
                    out.append(name.clone(), v);
                }
            }
        }
    }
    res
}

/// Headers a function may not set: they frame the message.
const HOP_BY_HOP: [&str; 6] =
    ["connection", "content-length", "transfer-encoding", "upgrade", "te", "trailer"];

/// How far a signed request's timestamp may be from the server's clock.
const MAX_SKEW_MS: i64 = 5 * 60 * 1000;

/// Signatures remembered per node against replays; beyond this the oldest
/// go (an attacker flooding valid signatures needs the key anyway).
const MAX_REMEMBERED_SIGNATURES: usize = 100_000;

/// `hmacSharedSecret` web triggers: a request carries
/// `X-Kiln-Webtrigger-Timestamp: <unix seconds>` and
/// `X-Kiln-Webtrigger-Signature: sha256=<hex HMAC-SHA256(key, timestamp "."
/// method "." path-and-query "." body)>`, the key being the one
/// `kiln webtrigger MODULE --signing-secret` shows. A timestamp more than
/// five minutes off, a bad signature, or a signature already seen within
/// the window (on this node) is refused with 401 before the function runs.
#[derive(Debug, Default)]
struct Signed {
    seen: Mutex<SeenSignatures>,
}

/// Signatures seen, in arrival order (with when) and as a set.
type SeenSignatures = (std::collections::VecDeque<(i64, [u8; 32])>, std::collections::HashSet<[u8; 32]>);

impl Signed {
    fn check(
        &self,
        key: &[u8],
        method: &Method,
        target: &str,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
    ) -> Result<(), &'static str> {
        const UNSIGNED: &str = "this web trigger takes signed requests only \
             (X-Kiln-Webtrigger-Timestamp and X-Kiln-Webtrigger-Signature)";
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let timestamp = header("x-kiln-webtrigger-timestamp").ok_or(UNSIGNED)?;
        if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(UNSIGNED);
        }
        let secs: i64 = timestamp.parse().map_err(|_| UNSIGNED)?;
        if (secs.saturating_mul(1000) - now).abs() > MAX_SKEW_MS {
            return Err("the request's timestamp is more than five minutes from the server's clock");
        }
        let tag =
            header("x-kiln-webtrigger-signature").and_then(|s| s.strip_prefix("sha256=")).ok_or(UNSIGNED)?;
        let given = crate::events::decode_hex(tag).ok_or(UNSIGNED)?;
        let mut signed =
            Vec::with_capacity(timestamp.len() + method.as_str().len() + target.len() + body.len() + 3);
        for part in [timestamp.as_bytes(), method.as_str().as_bytes(), target.as_bytes()] {
            signed.extend_from_slice(part);
            signed.push(b'.');
        }
        signed.extend_from_slice(body);
        let expected = kiln_crypto::hmac_sha256(key, &signed);
        if !kiln_crypto::constant_time_eq(&expected, &given) {
            return Err("the request's signature is not valid for this web trigger");
        }
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (order, set) = &mut *seen;
        while let Some((at, sig)) = order.front().copied() {
            if now - at <= 2 * MAX_SKEW_MS && order.len() < MAX_REMEMBERED_SIGNATURES {
                break;
            }
            order.pop_front();
            set.remove(&sig);
        }
        if !set.insert(expected) {
            return Err("this signed request was already received");
        }
        order.push_back((now, expected));
        Ok(())
    }
}

#[cfg(test)]
mod signed_tests {
    use super::*;

    fn sign(key: &[u8], ts: &str, method: &str, target: &str, body: &[u8]) -> HeaderMap {
        let mut m = Vec::new();
        for part in [ts.as_bytes(), method.as_bytes(), target.as_bytes()] {
            m.extend_from_slice(part);
            m.push(b'.');
        }
        m.extend_from_slice(body);
        let tag: String = kiln_crypto::hmac_sha256(key, &m).iter().map(|b| format!("{b:02x}")).collect();
        let mut h = HeaderMap::new();
        h.insert("x-kiln-webtrigger-timestamp", HeaderValue::from_str(ts).unwrap());
        h.insert("x-kiln-webtrigger-signature", HeaderValue::from_str(&format!("sha256={tag}")).unwrap());
        h
    }

    #[test]
    fn signed_requests_pass_once_and_forged_stale_moved_or_unsigned_ones_do_not() {
        let key = b"0123456789abcdef0123456789abcdef";
        let now = 1_800_000_000_000_i64;
        let ts = (now / 1000).to_string();
        let signed = Signed::default();
        let h = sign(key, &ts, "POST", "/x1/abc?x=1", b"{}");
        assert_eq!(signed.check(key, &Method::POST, "/x1/abc?x=1", &h, b"{}", now), Ok(()));
        // The same request again is a replay.
        assert!(
            signed.check(key, &Method::POST, "/x1/abc?x=1", &h, b"{}", now).unwrap_err().contains("already")
        );
        // Another body, method or path under the same signature.
        let h2 = sign(key, &ts, "POST", "/x1/abc", b"{\"a\":1}");
        assert!(signed.check(key, &Method::POST, "/x1/abc", &h2, b"{\"a\":2}", now).is_err());
        assert!(signed.check(key, &Method::PUT, "/x1/abc", &h2, b"{\"a\":1}", now).is_err());
        assert!(signed.check(key, &Method::POST, "/x1/abd", &h2, b"{\"a\":1}", now).is_err());
        // Another key.
        let h3 = sign(b"another key, sixteen+ bytes", &ts, "GET", "/x1/abc", b"");
        assert!(signed.check(key, &Method::GET, "/x1/abc", &h3, b"", now).unwrap_err().contains("not valid"));
        // Stale, unsigned, malformed.
        let old = ((now - 6 * 60 * 1000) / 1000).to_string();
        let h4 = sign(key, &old, "GET", "/x1/abc", b"");
        assert!(
            signed.check(key, &Method::GET, "/x1/abc", &h4, b"", now).unwrap_err().contains("five minutes")
        );
        assert!(
            signed
                .check(key, &Method::GET, "/x1/abc", &HeaderMap::new(), b"", now)
                .unwrap_err()
                .contains("signed")
        );
        let mut h5 = sign(key, &ts, "GET", "/x1/abc", b"");
        h5.insert("x-kiln-webtrigger-signature", HeaderValue::from_static("sha256=zz"));
        assert!(signed.check(key, &Method::GET, "/x1/abc", &h5, b"", now).is_err());
        // A fresh, well-signed request still passes.
        let h6 = sign(key, &ts, "GET", "/x1/abc", b"");
        assert_eq!(signed.check(key, &Method::GET, "/x1/abc", &h6, b"", now), Ok(()));
    }
}
