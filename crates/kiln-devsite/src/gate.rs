//! The one door every request passes: it works out which API a path is
//! for, authenticates the caller the way that API does, checks an OAuth
//! token's scopes against the route, and records the request.
//!
//! - `/ex/{jira|confluence}/{cloudId}/...`: an OAuth access token this site
//!   issued, whose scopes satisfy `kiln_policy::product::check` for the path
//!   after the prefix; a wrong cloud id is a 404.
//! - `/jira/...`, `/confluence/...` (Data Center): a seeded personal access
//!   token; no scopes, only the user's permissions.
//! - `/me`, `/oauth/token/accessible-resources`: any live access token.
//! - everything else (`/authorize`, `/oauth/token`): anonymous.
//!
//! Handlers behind the first three receive the [`Caller`]; nothing else
//! makes one.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kiln_crypto::Sha256;
use serde_json::json;

use crate::api::{ApiError, reply};
use crate::site::{Site, lock};
use crate::{SeenRequest, Via};

/// A bearer token longer than this is refused unread: ours are far shorter.
const MAX_TOKEN_LEN: usize = 512;

/// Who is calling, as the door established it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    pub(crate) account_id: String,
    pub(crate) via: Via,
    /// Jira's v3 API: rich text is Atlassian Document Format.
    pub(crate) adf: bool,
    pub(crate) scopes: BTreeSet<String>,
}

/// Which API a path belongs to.
enum Door {
    Cloud { cloud_id: String, api_path: String },
    DataCenterJira,
    DataCenterConfluence,
    Bearer,
    Open,
}

fn door(path: &str) -> Door {
    if let Some(rest) = path.strip_prefix("/ex/") {
        let mut parts = rest.splitn(3, '/');
        let product = parts.next().unwrap_or_default();
        let cloud_id = parts.next().unwrap_or_default();
        let tail = parts.next().unwrap_or_default();
        if matches!(product, "jira" | "confluence") {
            return Door::Cloud { cloud_id: cloud_id.to_owned(), api_path: format!("/{tail}") };
        }
        return Door::Open;
    }
    if path.starts_with("/jira/") {
        Door::DataCenterJira
    } else if path.starts_with("/confluence/") {
        Door::DataCenterConfluence
    } else if path == "/me" || path == "/oauth/token/accessible-resources" {
        Door::Bearer
    } else {
        Door::Open
    }
}

/// The middleware.
pub(crate) async fn gate(State(site): State<Arc<Site>>, mut req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let (caller, response) = match admit(&site, &method, &path, req.headers()) {
        Ok(Some(caller)) => match site.take_fault(method.as_str(), &path) {
            Some(status) => (
                Some(caller),
                reply(
                    status,
                    json!({ "code": status.as_u16(), "message": "injected failure (POST /kiln/faults)" }),
                ),
            ),
            None => {
                req.extensions_mut().insert(caller.clone());
                (Some(caller), next.run(req).await)
            }
        },
        Ok(None) => (None, next.run(req).await),
        Err(refused) => *refused,
    };
    site.remember(SeenRequest {
        method: method.as_str().to_owned(),
        path,
        account_id: caller.as_ref().map(|c| c.account_id.clone()),
        via: caller.map_or(Via::Anonymous, |c| c.via),
        status: response.status().as_u16(),
    });
    response
}

type Refusal = Box<(Option<Caller>, Response)>;

fn admit(site: &Site, method: &Method, path: &str, headers: &HeaderMap) -> Result<Option<Caller>, Refusal> {
    let gateway = |status: StatusCode, message: &str| {
        reply(status, json!({ "code": status.as_u16(), "message": message }))
    };
    match door(path) {
        Door::Open => Ok(None),
        Door::Cloud { cloud_id, api_path } => {
            if cloud_id != site.dir.cloud_id {
                return Err(Box::new((None, gateway(StatusCode::NOT_FOUND, "Not Found"))));
            }
            let caller = oauth_caller(site, headers, api_path.starts_with("/rest/api/3/"))
                .ok_or_else(|| Box::new((None, gateway(StatusCode::UNAUTHORIZED, "Unauthorized"))))?;
            if kiln_policy::product::check(method.as_str(), &api_path, &caller.scopes).is_err() {
                let refusal = gateway(StatusCode::UNAUTHORIZED, "Unauthorized; scope does not match");
                return Err(Box::new((Some(caller), refusal)));
            }
            Ok(Some(caller))
        }
        Door::Bearer => oauth_caller(site, headers, false)
            .map(Some)
            .ok_or_else(|| Box::new((None, gateway(StatusCode::UNAUTHORIZED, "Unauthorized")))),
        Door::DataCenterJira | Door::DataCenterConfluence => {
            let account = bearer(headers)
                .and_then(|token| site.dir.pats.get(&Sha256::of(token.as_bytes())))
                .ok_or_else(|| {
                    let refusal = if path.starts_with("/jira/") {
                        ApiError::jira(
                            StatusCode::UNAUTHORIZED,
                            "You are not authenticated. Authentication required to perform this operation.",
                        )
                    } else {
                        ApiError::v1(StatusCode::UNAUTHORIZED, "This request requires authentication.")
                    };
                    Box::new((None, refusal.into_response()))
                })?;
            Ok(Some(Caller {
                account_id: account.clone(),
                via: Via::Pat,
                adf: false,
                scopes: BTreeSet::new(),
            }))
        }
    }
}

fn oauth_caller(site: &Site, headers: &HeaderMap, adf: bool) -> Option<Caller> {
    let token = bearer(headers)?;
    let grant = lock(&site.tokens).access(token)?;
    Some(Caller { account_id: grant.account_id, via: Via::OAuth, adf, scopes: grant.scopes })
}

/// The token of an `Authorization: Bearer <token>` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() && token.len() <= MAX_TOKEN_LEN)
        .then_some(token)
}
