//! Injected failures: `POST /kiln/faults {"method": "GET", "pathContains":
//! "/rest/api/3/issue/", "status": 503, "times": 1}` makes the next matching
//! API request (after authentication) answer that status, so a test can
//! watch an app's retry. The dev site is loopback-only and trusts its
//! caller, as for tokens.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use serde_json::json;

use crate::api::reply;
use crate::site::{Site, lock};

/// Faults waiting at once; more are refused (a test that needs more is
/// doing something else).
const MAX_FAULTS: usize = 64;

/// One injected failure.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    pub method: String,
    pub path_contains: String,
    pub status: u16,
    pub times: u32,
}

pub(crate) fn routes() -> Router<Arc<Site>> {
    Router::new().route("/kiln/faults", post(add))
}

async fn add(State(site): State<Arc<Site>>, body: axum::body::Bytes) -> Response {
    let fault: Fault = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return reply(StatusCode::BAD_REQUEST, json!({ "message": format!("not a fault: {e}") })),
    };
    match site.inject(fault) {
        Ok(()) => reply(StatusCode::CREATED, json!({ "ok": true })),
        Err(message) => reply(StatusCode::BAD_REQUEST, json!({ "message": message })),
    }
}

impl Site {
    pub(crate) fn inject(&self, fault: Fault) -> Result<(), String> {
        if StatusCode::from_u16(fault.status).is_err() || fault.status < 400 {
            return Err("status must be an HTTP error status (400-599)".into());
        }
        if fault.times == 0 || fault.path_contains.is_empty() {
            return Err("times must be at least 1 and pathContains not empty".into());
        }
        let mut faults = lock(&self.faults);
        if faults.len() >= MAX_FAULTS {
            return Err(format!("at most {MAX_FAULTS} faults wait at once"));
        }
        faults.push(fault);
        Ok(())
    }

    /// The status to answer instead, if a fault matches; used up once.
    pub(crate) fn take_fault(&self, method: &str, path: &str) -> Option<StatusCode> {
        let mut faults = lock(&self.faults);
        let i = faults
            .iter()
            .position(|f| f.method.eq_ignore_ascii_case(method) && path.contains(&f.path_contains))?;
        let fault = faults.get_mut(i)?;
        fault.times -= 1;
        let status = StatusCode::from_u16(fault.status).ok();
        if fault.times == 0 {
            faults.remove(i);
        }
        status
    }
}
