//! `kiln-server`: what `kiln serve` runs. For now, the admin API over HTTPS.
//!
//! - **One route table.** [`ROUTES`] lists every route with the operation
//!   it performs; the router is built from it, and one middleware looks the
//!   matched route up there, authenticates the caller (session cookie or
//!   API token), asks `kiln_access` for a decision and records the request
//!   in the audit trail *before* the handler runs. A route that is not in
//!   the table does not exist; an operation that is not allowed never
//!   reaches a handler; a request that cannot be recorded is refused.
//! - **HTTPS only.** rustls via `kiln_crypto::tls` (TLS 1.2 and 1.3); every
//!   response carries HSTS and the standard security headers.
//! - **No customer data.** No handler returns app storage, secrets,
//!   credentials or variable values; the policy would refuse the operations
//!   that would, and the canary test drives every route as every role.

#![forbid(unsafe_code)]

pub mod alerting;
pub mod consent;
pub mod events;
pub mod health;
pub mod jobs;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod product_config;
pub mod resolver;
mod routes;
pub mod runner;
pub mod scheduler;
pub mod webtrigger;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_access::{Access, AccessError, Principal};
use kiln_audit::alerts::AlertRules;
use kiln_audit::{Auditor, Context, Event};
use kiln_kvs::Kvs;
use kiln_store::Store;

pub use kiln_http::{HttpsClient, Method, Reply, serve};
pub use routes::{ROUTES, Route};

/// Everything the admin API needs. The worker never sees any of it.
pub struct AdminState {
    pub store: Store,
    pub access: Access,
    /// App variables (write and list names only).
    pub kvs: Kvs,
    pub auditor: Auditor,
    /// Where checkpoints are appended; `kiln audit verify` reads it too.
    pub checkpoint_file: Option<PathBuf>,
    pub alert_rules: AlertRules,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState").field("checkpoint_file", &self.checkpoint_file).finish_non_exhaustive()
    }
}

/// A JSON error response.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        let status = match &e {
            AccessError::BadCredentials | AccessError::Unauthenticated => StatusCode::UNAUTHORIZED,
            AccessError::Locked | AccessError::Throttled => StatusCode::TOO_MANY_REQUESTS,
            AccessError::Forbidden(_) => StatusCode::FORBIDDEN,
            AccessError::Invalid(_) => StatusCode::BAD_REQUEST,
            AccessError::Conflict(_) => StatusCode::CONFLICT,
            AccessError::UnknownOperator(_) => StatusCode::NOT_FOUND,
            AccessError::Store(_)
            | AccessError::Audit(_)
            | AccessError::Sealed(_)
            | AccessError::Crypto(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// The caller's address, as the connection gave it.
fn source(req: &Request) -> String {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string())
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    let prefix = format!("{}=", kiln_access::COOKIE_NAME);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&prefix).map(str::to_owned))
}

async fn authenticate(state: &AdminState, headers: &HeaderMap) -> Result<Principal, AccessError> {
    if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let token = auth.strip_prefix("Bearer ").ok_or(AccessError::Unauthenticated)?;
        return state.access.token(token.trim()).await;
    }
    match session_cookie(headers) {
        Some(secret) => state.access.session(&secret).await,
        None => Err(AccessError::Unauthenticated),
    }
}

/// The one place every request is decided: find the route in [`ROUTES`],
/// authenticate, authorize, record, then run the handler with the
/// principal in its extensions.
async fn gate(State(state): State<Arc<AdminState>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let template = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let source = source(&req);
    let route = template.as_deref().and_then(|t| ROUTES.iter().find(|r| r.method == method && r.path == t));
    let Some(route) = route else {
        return ApiError::new(StatusCode::NOT_FOUND, "no such route").into_response();
    };
    let Some(op) = route.operation else {
        // Public (sign-in): the handler records its own outcome.
        req.extensions_mut().insert(Source(source));
        return next.run(req).await;
    };
    let decided = match authenticate(&state, req.headers()).await {
        Ok(principal) => match principal.require(op) {
            Ok(()) => Ok(principal),
            Err(e) => Err((Some(principal), e)),
        },
        Err(e) => Err((None, e)),
    };
    let (actor, outcome) = match &decided {
        Ok(p) => (p.name.clone(), None),
        Err((p, e)) => {
            (p.as_ref().map_or_else(|| "anonymous".to_owned(), |p| p.name.clone()), Some(e.to_string()))
        }
    };
    let ctx = Context { actor: kiln_audit::Actor::Operator(actor), source: Some(source.clone()) };
    let event = Event::admin_request(method.as_str(), route.path, &path, op.scope(), outcome.as_deref());
    if let Err(e) = state.auditor.record(&state.store, &ctx, event).await {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the request could not be recorded: {e}"),
        )
        .into_response();
    }
    match decided {
        Ok(principal) => {
            req.extensions_mut().insert(principal);
            req.extensions_mut().insert(Source(source));
            next.run(req).await
        }
        Err((_, e)) => ApiError::from(e).into_response(),
    }
}

/// The client's address, for handlers that record events.
#[derive(Debug, Clone)]
pub struct Source(pub String);

/// The admin API's router: [`ROUTES`], each behind [`gate`], with security
/// headers on every response (404s included).
pub fn router(state: Arc<AdminState>) -> Router {
    let mut router = Router::new();
    for route in &ROUTES {
        router = router.route(route.path, routes::method_router(route));
    }
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate))
        .layer(axum::middleware::from_fn(kiln_http::security_headers))
        .with_state(state)
}
