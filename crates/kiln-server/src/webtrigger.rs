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
use kiln_bundle::Bundle;
use kiln_crypto::Sha256;
use kiln_kvs::Kvs;
use kiln_manifest::{Manifest, Target, WebTriggerAuth, WebTriggerResponse};
use kiln_sandbox::{Caller, InvokeRequest, Sandbox};
use kiln_store::{InstallationRecord, Store};
use serde_json::{Value, json};

/// Largest request body a web trigger takes.
pub const MAX_BODY: usize = 1024 * 1024;

pub use kiln_host::webtrigger::{WebtriggerError, owner, token};

/// What serving web triggers needs. The worker never sees any of it.
pub struct Webtriggers {
    pub store: Store,
    pub kvs: Arc<Kvs>,
    pub sandbox: Arc<Sandbox>,
    pub host: Arc<kiln_host::Host>,
    /// Records sandbox faults.
    pub auditor: kiln_audit::Auditor,
    bundles: Mutex<HashMap<Sha256, Arc<Bundle>>>,
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
    pub fn new(
        store: Store,
        kvs: Arc<Kvs>,
        sandbox: Arc<Sandbox>,
        host: Arc<kiln_host::Host>,
        auditor: kiln_audit::Auditor,
    ) -> Self {
        Webtriggers {
            store,
            kvs,
            sandbox,
            host,
            auditor,
            bundles: Mutex::new(HashMap::new()),
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
    let Ok(bundle) = bundle(state, &version.bundle).await else {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "the app's code cannot be loaded now");
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
    let outcome =
        invoke(state, &installation, &version, manifest, function.as_str(), &module_key, request, bundle)
            .await;
    match (outcome, &module.response) {
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
        (Err((code, message)), _) => {
            // A fault of the sandbox (not an exception the app threw) goes to
            // the audit trail, as `kiln invoke` records it; the caller is
            // told only that the function failed.
            if code != "FUNCTION_ERROR" {
                let event = kiln_audit::Event::sandbox_fault(
                    &installation.app.to_string(),
                    function.as_str(),
                    &code,
                    &message,
                );
                if state.auditor.record(&state.store, &kiln_audit::Context::system(), event).await.is_err() {
                    return answer(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the web trigger's function failed and could not be recorded",
                    );
                }
            }
            answer(StatusCode::INTERNAL_SERVER_ERROR, "the web trigger's function failed")
        }
    }
}

type Found = (InstallationRecord, kiln_store::VersionRecord, String);

async fn find(state: &Webtriggers, token: &str) -> Result<Option<Found>, kiln_store::StoreError> {
    if token.len() != 43 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Ok(None);
    }
    let hash = Sha256::of(token.as_bytes());
    let mut tx = state.store.begin_read().await?;
    let Some(row) = tx.webtrigger_by_hash(hash.as_bytes()).await? else { return Ok(None) };
    let Some(installation) = tx.installation_by_id(row.installation_id).await? else { return Ok(None) };
    let Some(version) = tx.version_by_id(installation.version_id).await? else { return Ok(None) };
    Ok(Some((installation, version, row.module_key)))
}

async fn bundle(state: &Webtriggers, hash: &Sha256) -> Result<Arc<Bundle>, String> {
    if let Some(b) = state.bundles.lock().map_err(|e| e.to_string())?.get(hash) {
        return Ok(b.clone());
    }
    let bytes = state
        .store
        .begin_read()
        .await
        .map_err(|e| e.to_string())?
        .bundle(hash)
        .await
        .map_err(|e| e.to_string())?;
    let bytes = bytes.ok_or("the bundle is missing")?;
    let decoded = Arc::new(Bundle::decode(&bytes, hash).map_err(|e| e.to_string())?);
    state.bundles.lock().map_err(|e| e.to_string())?.insert(*hash, decoded.clone());
    Ok(decoded)
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

/// Run the function for `installation` with what its admin consented to.
#[allow(clippy::too_many_arguments, reason = "one invocation's parts")]
async fn invoke(
    state: &Arc<Webtriggers>,
    installation: &InstallationRecord,
    version: &kiln_store::VersionRecord,
    manifest: &Manifest,
    function: &str,
    module_key: &str,
    request: Value,
    bundle: Arc<Bundle>,
) -> Result<Value, (String, String)> {
    let platform = |m: String| ("PLATFORM_ERROR".to_owned(), m);
    let owner = owner(installation);
    let app = installation.app.to_string();
    let variables = state
        .kvs
        .variables(&format!("variables:{app}:{}", installation.environment), true)
        .await
        .map_err(|e| platform(e.to_string()))?;
    let env = variables.into_iter().filter_map(|v| Some((v.name, v.value?))).collect();
    let consent = &installation.consent;
    let grants = kiln_host::InvocationGrants {
        app: app.clone(),
        installation: installation.public_id.to_string(),
        installation_row: Some(installation.id),
        environment: installation.environment.clone(),
        egress: consent
            .egress
            .get(&kiln_manifest::ExternalKind::FetchBackend)
            .map(|entries| entries.iter().map(|e| e.target.clone()).collect())
            .unwrap_or_default(),
        product: kiln_product::Installation::new(&owner, &consent.scopes),
        user: None,
    };
    let version_text = version.version.to_string();
    let public_id = installation.public_id.to_string();
    let runtime = kiln_host::runtime_description(&kiln_host::RuntimeSource {
        app: &app,
        version: Some(&version_text),
        environment: &installation.environment,
        installation: &public_id,
        module_key,
        grants: consent,
        account_id: None,
    });
    let entry = manifest
        .function(function)
        .ok_or_else(|| platform("the module's function is not in the manifest".into()))?;
    let invoke = InvokeRequest {
        function: function.to_owned(),
        payload: request,
        context: json!({
            "installContext": format!("ari:cloud:{}::site/{}", installation.product, installation.site.to_string().trim_start_matches("https://")),
            "environmentType": installation.environment.to_string().to_ascii_uppercase(),
        }),
        caller: Caller::WebTrigger,
        memory_mb: entry.memory_mb.unwrap_or(manifest.app.runtime.memory_mb),
        deadline: None,
        env,
        runtime,
    };
    let state = state.clone();
    let hash = version.bundle;
    tokio::task::spawn_blocking(move || {
        let platform = |m: String| ("PLATFORM_ERROR".to_owned(), m);
        let mut handler = state.host.invocation(&grants).map_err(|e| platform(e.to_string()))?;
        let result = state
            .sandbox
            .invoke(&grants.app, &hash, &bundle, &invoke, &mut handler)
            .map_err(|e| platform(e.to_string()))?;
        match result.outcome {
            kiln_ipc::Outcome::Ok { result } => {
                serde_json::from_str(&result).map_err(|e| platform(e.to_string()))
            }
            kiln_ipc::Outcome::Err(e) => Err((e.code.as_str().to_owned(), e.message)),
        }
    })
    .await
    .map_err(|e| platform(e.to_string()))?
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
