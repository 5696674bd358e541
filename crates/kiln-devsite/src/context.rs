//! Context tokens: what the product hands a UI module so that its resolver
//! calls to `kiln serve` carry a user and a place the server can trust.
//!
//! In Forge the product renders an app's UI inside its own page and the
//! bridge's `invoke()` reaches the app's resolver with a context the
//! platform vouches for (who is looking, on which site, at which issue or
//! page). Kiln's server is separate from the product, so the product signs
//! that context: a short-lived token the UI passes to
//! `POST /resolver/v1/{installation}` as a bearer token.
//!
//! - `GET /kiln/context-keys`: the site's public keys, a JWK set
//!   (`{"keys": [{"kty":"OKP","crv":"Ed25519","x":..,"kid":..}]}`), for
//!   `kiln serve`'s `[resolvers]` settings.
//! - `POST /kiln/context-token` with `{"installation": "<Kiln installation
//!   id>", "moduleKey": "...", "accountId"?, "issueKey"?, "pageId"?,
//!   "moduleType"?, "localId"?, "ttlSeconds"?}`: a token for that person,
//!   installation and module. The person is the one an
//!   `Authorization: Bearer <access token>` of this site names, or else
//!   `accountId`, which must be a seeded person (not an app's service
//!   account). That second form is this site's trust model, the same as
//!   `/authorize?login_as=`: it listens on loopback only and serves one
//!   developer or test. The extension context (`issue` and `project`, or
//!   `content` and `space`) is filled in by the site from its own data,
//!   and only for an issue the person may browse, as Jira renders a panel
//!   only on an issue its viewer can see.
//!
//! Tokens are compact JWS signed with Ed25519 (`kiln_crypto::jws`) by a key
//! made when the site starts and never written anywhere: a restarted site
//! publishes a new key. The claims:
//!
//! ```json
//! { "iss": "https://127.0.0.1:8444", "aud": "<installation id>",
//!   "sub": "<accountId>", "iat": 1700000000, "exp": 1700000300, "jti": "...",
//!   "context": { "cloudId": "...", "siteUrl": "https://kiln-dev.atlassian.net",
//!                "moduleKey": "...", "localId": "...", "accountType": "licensed",
//!                "extension": { "type": "jira:issuePanel", "issue": {...}, "project": {...} } } }
//! ```

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::reply;
use crate::gate::bearer;
use crate::site::{Site, lock};
use crate::time;

/// The longest a token may live (and the default): the server refuses
/// longer ones, so a token that leaks from a browser is soon useless.
pub const MAX_TTL_SECONDS: u64 = 300;

/// Longest `localId` accepted (Forge's are UUID-like).
const MAX_LOCAL_ID_LEN: usize = 255;

pub(crate) fn routes() -> Router<Arc<Site>> {
    Router::new().route("/kiln/context-keys", get(keys)).route("/kiln/context-token", post(token))
}

/// What a UI asks a token for. Unknown fields are refused, so a typo does
/// not silently give a token without the context it meant to carry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ContextRequest {
    /// The Kiln installation the token is for (its audience).
    pub installation: String,
    pub module_key: String,
    /// The person, when the request carries no access token of this site.
    pub account_id: Option<String>,
    /// A Jira issue the module is shown on.
    pub issue_key: Option<String>,
    /// A Confluence page the module is shown on.
    pub page_id: Option<String>,
    /// The module's type, for `extension.type` [default: `jira:issuePanel`
    /// with an issue, `confluence:contentBylineItem` with a page, else
    /// `jira:globalPage`].
    pub module_type: Option<String>,
    /// The module instance [default: a random one].
    pub local_id: Option<String>,
    /// At most [`MAX_TTL_SECONDS`] (the default).
    pub ttl_seconds: Option<u64>,
}

/// Why no token was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error("{0}")]
    Invalid(String),
    #[error("no such person on this site, or an app's service account: {0}")]
    UnknownPerson(String),
    #[error("the access token is not one this site issued, or it has expired")]
    BadAccessToken,
    #[error("no such issue, or {0} may not browse it")]
    NoIssue(String),
    #[error("no such page")]
    NoPage,
    #[error("the system random number generator failed")]
    Random,
}

impl ContextError {
    fn status(&self) -> StatusCode {
        match self {
            ContextError::Invalid(_) | ContextError::UnknownPerson(_) => StatusCode::BAD_REQUEST,
            ContextError::BadAccessToken => StatusCode::UNAUTHORIZED,
            ContextError::NoIssue(_) | ContextError::NoPage => StatusCode::NOT_FOUND,
            ContextError::Random => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

async fn keys(State(site): State<Arc<Site>>) -> Response {
    reply(StatusCode::OK, json!(key_set(&site)))
}

pub(crate) fn key_set(site: &Site) -> kiln_crypto::jws::JwkSet {
    kiln_crypto::jws::JwkSet { keys: vec![site.context_key.public_key().to_jwk()] }
}

async fn token(State(site): State<Arc<Site>>, headers: HeaderMap, body: Bytes) -> Response {
    let refuse =
        |e: ContextError| reply(e.status(), json!({ "code": e.status().as_u16(), "message": e.to_string() }));
    let request: ContextRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return refuse(ContextError::Invalid(format!("the request body: {e}"))),
    };
    let signed_in = match bearer(&headers) {
        Some(access) => match lock(&site.tokens).access(access) {
            Some(grant) => Some(grant.account_id),
            None => return refuse(ContextError::BadAccessToken),
        },
        None if headers.contains_key(axum::http::header::AUTHORIZATION) => {
            return refuse(ContextError::BadAccessToken);
        }
        None => None,
    };
    match issue(&site, &request, signed_in.as_deref()) {
        Ok((token, expires)) => reply(StatusCode::OK, json!({ "token": token, "expiresAt": expires })),
        Err(e) => refuse(e),
    }
}

/// A signed token for `request`; `signed_in` is the person an access token
/// named, which wins over (and must agree with) `accountId`.
pub(crate) fn issue(
    site: &Site,
    request: &ContextRequest,
    signed_in: Option<&str>,
) -> Result<(String, u64), ContextError> {
    let account = match (signed_in, request.account_id.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err(ContextError::Invalid("accountId differs from the access token's person".into()));
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(ContextError::Invalid("name the person: an access token or accountId".into()));
        }
    };
    let user = site
        .dir
        .user(account)
        .filter(|u| !u.is_app)
        .ok_or_else(|| ContextError::UnknownPerson(account.chars().take(128).collect()))?;
    let installation = request.installation.trim();
    if installation.is_empty() || installation.len() > 128 {
        return Err(ContextError::Invalid("installation must be 1 to 128 characters".into()));
    }
    if valid_module_key(&request.module_key).is_none() {
        return Err(ContextError::Invalid("moduleKey must be 1 to 255 letters, digits, '_' or '-'".into()));
    }
    let ttl = request.ttl_seconds.unwrap_or(MAX_TTL_SECONDS);
    if ttl == 0 || ttl > MAX_TTL_SECONDS {
        return Err(ContextError::Invalid(format!("ttlSeconds must be 1 to {MAX_TTL_SECONDS}")));
    }
    let local_id = match &request.local_id {
        Some(l) if l.is_empty() || l.len() > MAX_LOCAL_ID_LEN => {
            return Err(ContextError::Invalid("localId must be 1 to 255 characters".into()));
        }
        Some(l) => l.clone(),
        None => random_id()?,
    };
    let extension = extension(site, request, user)?;
    let now = time::now_secs();
    let claims = json!({
        "iss": site.base_url,
        "aud": installation,
        "sub": user.account_id,
        "iat": now,
        "exp": now + ttl,
        "jti": random_id()?,
        "context": {
            "cloudId": site.dir.cloud_id,
            "siteUrl": format!("https://{}", site.dir.site_host),
            "moduleKey": request.module_key,
            "localId": local_id,
            "accountType": "licensed",
            "extension": extension,
        },
    });
    Ok((site.context_key.sign(claims.to_string().as_bytes()), now + ttl))
}

/// The module's place, from the site's own data.
fn extension(site: &Site, request: &ContextRequest, user: &crate::site::User) -> Result<Value, ContextError> {
    match (&request.issue_key, &request.page_id) {
        (Some(_), Some(_)) => Err(ContextError::Invalid("name an issue or a page, not both".into())),
        (Some(key), None) => {
            let content = lock(&site.content);
            let no_issue = || ContextError::NoIssue(user.account_id.clone());
            let issue = content.issue(key).ok_or_else(no_issue)?;
            let project = site.dir.project_by_id(&issue.project_id).ok_or_else(no_issue)?;
            if !user.can_browse(project) {
                return Err(no_issue());
            }
            let kind = request.module_type.clone().unwrap_or_else(|| "jira:issuePanel".into());
            Ok(json!({
                "type": kind,
                "issue": { "id": issue.id.to_string(), "key": issue.key, "type": issue.issue_type },
                "project": { "id": project.id, "key": project.key, "type": "software" },
            }))
        }
        (None, Some(id)) => {
            let content = lock(&site.content);
            let page =
                id.parse::<u64>().ok().and_then(|id| content.pages.get(&id)).ok_or(ContextError::NoPage)?;
            let space = site.dir.space(page.space_id).ok_or(ContextError::NoPage)?;
            let kind = request.module_type.clone().unwrap_or_else(|| "confluence:contentBylineItem".into());
            Ok(json!({
                "type": kind,
                "content": { "id": page.id.to_string(), "type": "page" },
                "space": { "id": space.id.to_string(), "key": space.key },
            }))
        }
        (None, None) => {
            Ok(json!({ "type": request.module_type.clone().unwrap_or_else(|| "jira:globalPage".into()) }))
        }
    }
}

/// Forge's module key rule (letters, digits, `_`, `-`; 1 to 255).
fn valid_module_key(key: &str) -> Option<&str> {
    (!key.is_empty()
        && key.len() <= 255
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
    .then_some(key)
}

/// 16 random bytes, hex.
fn random_id() -> Result<String, ContextError> {
    let mut raw = [0u8; 16];
    kiln_crypto::fill_random(&mut raw).map_err(|_| ContextError::Random)?;
    Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
}
