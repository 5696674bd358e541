//! Web triggers: each installation's web trigger module gets an unguessable
//! URL, `/x1/<secret>`, and a request to it runs the module's function in
//! the sandbox with Forge's request and response shapes.
//!
//! - **URLs.** The secret is 32 random bytes (base64url). The database holds
//!   only its SHA-256 (`webtriggers`); the secret itself is sealed in the
//!   installation's token namespace so the URL can be shown again. A URL
//!   opens the module of the installation it was made for, whatever version
//!   that installation runs; a module a later version dropped answers 404.
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
//! Not built yet (#8): the HMAC shared-secret authentication modules can
//! declare (such a module answers 501 rather than running unauthenticated),
//! and dynamic URLs made and deleted by the app.

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

pub use kiln_host::webtrigger::{WebtriggerError, owner, token};

/// What serving web triggers needs. The worker never sees any of it.
pub struct Webtriggers {
    pub runner: Arc<Runner>,
    limiter: Limiter,
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
        return answer(
            StatusCode::NOT_IMPLEMENTED,
            "this web trigger asks for shared-secret authentication, which Kiln does not check yet; it is not run",
        );
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
