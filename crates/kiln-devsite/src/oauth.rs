//! Atlassian's OAuth 2.0 (3LO) endpoints, as auth.atlassian.com and
//! api.atlassian.com speak them: `/authorize`, `/oauth/token`,
//! `/oauth/token/accessible-resources` and `/me`.
//!
//! Codes, access tokens and refresh tokens are random (`kiln_crypto`),
//! kept only as SHA-256 digests, and never logged. Refresh tokens rotate:
//! each use returns a new one, and presenting one that was already used
//! revokes every token descended from the same consent (its "family").

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use kiln_crypto::Sha256;
use serde_json::{Value, json};

use crate::api::{Params, reply};
use crate::gate::Caller;
use crate::site::{Client, Site, lock};
use crate::time;

/// Seconds an access token lives, as Atlassian's do.
pub(crate) const ACCESS_TOKEN_SECONDS: u64 = 3600;

/// Milliseconds an authorization code may wait to be exchanged.
const CODE_LIFETIME_MS: u64 = 10 * 60 * 1000;

/// Live codes, access tokens and refresh tokens each stop at this many, so
/// a client that loops on `/oauth/token` cannot exhaust memory.
const MAX_GRANTS: usize = 10_000;

/// The audience Atlassian's authorize endpoint expects.
const AUDIENCE: &str = "api.atlassian.com";

/// The grant types `/oauth/token` knows.
const GRANT_TYPES: [&str; 3] = ["authorization_code", "refresh_token", "client_credentials"];

pub(crate) fn routes() -> Router<Arc<Site>> {
    Router::new()
        .route("/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth/token", post(token))
        .route("/oauth/token/accessible-resources", get(accessible_resources))
        .route("/me", get(me))
}

/// Every grant the site has issued, by digest.
#[derive(Default)]
pub(crate) struct Tokens {
    codes: HashMap<Sha256, Code>,
    /// Codes already exchanged → the family they started.
    used_codes: HashMap<Sha256, u64>,
    access: HashMap<Sha256, Access>,
    refresh: HashMap<Sha256, Refresh>,
    revoked: HashSet<u64>,
    next_family: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("codes", &self.codes.len())
            .field("access", &self.access.len())
            .field("refresh", &self.refresh.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Code {
    client_id: String,
    redirect_uri: String,
    account_id: String,
    scopes: BTreeSet<String>,
    expires_at: u64,
}

#[derive(Debug)]
struct Access {
    account_id: String,
    scopes: BTreeSet<String>,
    expires_at: u64,
    family: Option<u64>,
}

#[derive(Debug)]
struct Refresh {
    client_id: String,
    account_id: String,
    scopes: BTreeSet<String>,
    family: u64,
    rotated: bool,
}

/// What a live access token grants.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub(crate) account_id: String,
    pub(crate) scopes: BTreeSet<String>,
}

impl Tokens {
    /// The grant of a live access token.
    pub(crate) fn access(&self, token: &str) -> Option<Grant> {
        let a = self.access.get(&Sha256::of(token.as_bytes()))?;
        let live = a.expires_at > time::now_millis() && !a.family.is_some_and(|f| self.revoked.contains(&f));
        live.then(|| Grant { account_id: a.account_id.clone(), scopes: a.scopes.clone() })
    }

    /// Make every access token issued so far expired.
    pub(crate) fn expire_all(&mut self) {
        for a in self.access.values_mut() {
            a.expires_at = 0;
        }
    }

    fn new_family(&mut self) -> u64 {
        self.next_family += 1;
        self.next_family
    }

    fn revoke_family(&mut self, family: u64) {
        self.revoked.insert(family);
        self.access.retain(|_, a| a.family != Some(family));
    }

    fn prune(&mut self, now: u64) {
        self.access.retain(|_, a| a.expires_at > now);
        self.codes.retain(|_, c| c.expires_at > now);
    }
}

/// An OAuth error response: `{"error","error_description"}`.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { status, error, description: description.into() }
    }

    fn invalid_grant(description: &str) -> OAuthError {
        OAuthError::new(StatusCode::FORBIDDEN, "invalid_grant", description)
    }

    fn random() -> OAuthError {
        OAuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The random number generator failed.",
        )
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        reply(self.status, json!({ "error": self.error, "error_description": self.description }))
    }
}

fn new_secret(prefix: &str) -> Result<String, OAuthError> {
    let mut bytes = [0u8; 32];
    kiln_crypto::fill_random(&mut bytes).map_err(|_| OAuthError::random())?;
    Ok(format!("{prefix}{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()))
}

async fn authorize_get(State(site): State<Arc<Site>>, RawQuery(query): RawQuery) -> Response {
    authorize(&site, &Params::parse(query.as_deref()))
}

async fn authorize_post(State(site): State<Arc<Site>>, body: Bytes) -> Response {
    authorize(&site, &Params::from_form(&body))
}

/// The authorize endpoint: checks the client, its exact redirect URI, the
/// response type, audience and scopes; then either shows the consent page
/// or, with the dev site's `login_as`, consents as that person at once.
fn authorize(site: &Site, p: &Params) -> Response {
    let Some(client) = p.get("client_id").and_then(|id| site.dir.client(id)) else {
        return OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "client_id names no client of this site.",
        )
        .into_response();
    };
    let redirect_uri = p.get("redirect_uri").unwrap_or_default();
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        // Never redirect to an address the client did not register.
        return OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri is not one the client registered; register it in the seed or fix the request.",
        )
        .into_response();
    }
    let state = p.get("state");
    let fail = |error: &str, description: &str| {
        redirect(
            redirect_uri,
            &[("error", Some(error)), ("error_description", Some(description)), ("state", state)],
        )
    };
    if p.get("response_type") != Some("code") {
        return fail("unsupported_response_type", "response_type must be code.");
    }
    if p.get("audience").is_some_and(|a| a != AUDIENCE) {
        return fail("invalid_request", "audience must be api.atlassian.com.");
    }
    let scopes: BTreeSet<String> =
        p.get("scope").unwrap_or_default().split_whitespace().map(str::to_owned).collect();
    if scopes.is_empty() {
        return fail("invalid_scope", "No scope was requested.");
    }
    let extra: Vec<&str> = scopes.difference(&client.scopes).map(String::as_str).collect();
    if !extra.is_empty() {
        return fail("invalid_scope", &format!("The client may not be granted: {}.", extra.join(", ")));
    }
    let Some(account) = p.get("login_as") else {
        return consent_page(site, client, &scopes, p);
    };
    let Some(user) = site.dir.user(account).filter(|u| !u.is_app) else {
        return OAuthError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "login_as names no person on this site.",
        )
        .into_response();
    };
    let code = match new_secret("kdc_") {
        Ok(code) => code,
        Err(e) => return e.into_response(),
    };
    {
        let mut tokens = lock(&site.tokens);
        tokens.prune(time::now_millis());
        if tokens.codes.len() >= MAX_GRANTS {
            return OAuthError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "Too many authorization codes are waiting.",
            )
            .into_response();
        }
        tokens.codes.insert(
            Sha256::of(code.as_bytes()),
            Code {
                client_id: client.client_id.clone(),
                redirect_uri: redirect_uri.to_owned(),
                account_id: user.account_id.clone(),
                scopes,
                expires_at: time::now_millis() + CODE_LIFETIME_MS,
            },
        );
    }
    redirect(redirect_uri, &[("code", Some(&code)), ("state", state)])
}

/// 302 to `uri` with `pairs` added to its query.
fn redirect(uri: &str, pairs: &[(&str, Option<&str>)]) -> Response {
    let Ok(mut url) = url::Url::parse(uri) else {
        return OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", "redirect_uri is not a URL.")
            .into_response();
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in pairs {
            if let Some(v) = v {
                query.append_pair(k, v);
            }
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

/// A page listing the site's people, each a button that consents as them.
fn consent_page(site: &Site, client: &Client, scopes: &BTreeSet<String>, p: &Params) -> Response {
    let hidden: String =
        ["client_id", "redirect_uri", "scope", "state", "response_type", "audience", "prompt"]
            .iter()
            .filter_map(|name| p.get(name).map(|v| (name, v)))
            .map(|(name, v)| format!(r#"<input type="hidden" name="{name}" value="{}">"#, escape(v)))
            .collect();
    let people: String = site
        .dir
        .users
        .iter()
        .filter(|u| !u.is_app)
        .map(|u| {
            format!(
                r#"<form method="post" action="/authorize">{hidden}<input type="hidden" name="login_as" value="{}"><button type="submit">Continue as {} ({})</button></form>"#,
                escape(&u.account_id),
                escape(&u.display_name),
                escape(&u.email),
            )
        })
        .collect();
    let scope_list: String = scopes.iter().map(|s| format!("<li>{}</li>", escape(s))).collect();
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Kiln dev site: authorize</title></head><body>\
         <h1>{site}: authorize {client}</h1><p>This is an emulated Atlassian site for development. \
         The app asks for:</p><ul>{scope_list}</ul><p>Sign in as:</p>{people}</body></html>",
        site = escape(&site.dir.site_host),
        client = escape(&client.client_id),
    ))
    .into_response()
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".to_owned(),
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// The token endpoint: JSON or form bodies.
async fn token(State(site): State<Arc<Site>>, headers: HeaderMap, body: Bytes) -> Response {
    let params = match token_params(&headers, &body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let grant_type = params.get("grant_type").unwrap_or_default();
    let counted = if GRANT_TYPES.contains(&grant_type) { grant_type } else { "unsupported" };
    *lock(&site.log).token_requests.entry(counted.to_owned()).or_insert(0) += 1;
    match exchange(&site, &params) {
        Ok(v) => reply(StatusCode::OK, v),
        Err(e) => e.into_response(),
    }
}

fn token_params(headers: &HeaderMap, body: &[u8]) -> Result<Params, OAuthError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let bad = |d: &str| OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", d);
    if content_type.starts_with("application/json") {
        let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
            return Err(bad("The body is not a JSON object."));
        };
        Ok(Params::from_pairs(
            map.into_iter().filter_map(|(k, v)| crate::api::id_text(&v).map(|v| (k, v))).collect(),
        ))
    } else if content_type.starts_with("application/x-www-form-urlencoded") {
        Ok(Params::from_form(body))
    } else {
        Err(bad("Send the token request as application/json or application/x-www-form-urlencoded."))
    }
}

fn exchange(site: &Site, p: &Params) -> Result<Value, OAuthError> {
    let grant_type = p.get("grant_type").unwrap_or_default();
    if !GRANT_TYPES.contains(&grant_type) {
        return Err(OAuthError::new(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or client_credentials.",
        ));
    }
    let client = authenticate(site, p)?;
    let mut tokens = lock(&site.tokens);
    let now = time::now_millis();
    tokens.prune(now);
    let required = |name: &str| {
        p.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", format!("{name} is required."))
        })
    };
    match grant_type {
        "authorization_code" => {
            let digest = Sha256::of(required("code")?.as_bytes());
            let Some(code) = tokens.codes.remove(&digest) else {
                // A code used twice: revoke what the first use granted (RFC 6749 §4.1.2).
                if let Some(family) = tokens.used_codes.get(&digest).copied() {
                    tokens.revoke_family(family);
                }
                return Err(OAuthError::invalid_grant("Invalid authorization code."));
            };
            let family = tokens.new_family();
            if tokens.used_codes.len() < MAX_GRANTS {
                tokens.used_codes.insert(digest, family);
            }
            if code.client_id != client.client_id
                || p.get("redirect_uri") != Some(code.redirect_uri.as_str())
                || code.expires_at <= now
            {
                return Err(OAuthError::invalid_grant("Invalid authorization code."));
            }
            let offline = code.scopes.contains("offline_access");
            issue(&mut tokens, client, &code.account_id, code.scopes, Some(family), offline)
        }
        "refresh_token" => {
            let digest = Sha256::of(required("refresh_token")?.as_bytes());
            let unknown = || OAuthError::invalid_grant("Unknown or invalid refresh token.");
            let (family, rotated, account, scopes) = match tokens.refresh.get(&digest) {
                Some(r) if r.client_id == client.client_id => {
                    (r.family, r.rotated, r.account_id.clone(), r.scopes.clone())
                }
                _ => return Err(unknown()),
            };
            if tokens.revoked.contains(&family) {
                return Err(unknown());
            }
            if rotated {
                tokens.revoke_family(family);
                return Err(OAuthError::invalid_grant(
                    "This refresh token was already exchanged for a newer one, so every token of this grant \
                     is now revoked; authorize again.",
                ));
            }
            if let Some(r) = tokens.refresh.get_mut(&digest) {
                r.rotated = true;
            }
            issue(&mut tokens, client, &account, scopes, Some(family), true)
        }
        _ => {
            let Some(account) = &client.service_account else {
                return Err(OAuthError::new(
                    StatusCode::BAD_REQUEST,
                    "unauthorized_client",
                    "The client has no service account, so client_credentials is not available to it.",
                ));
            };
            let scopes = client.scopes.iter().filter(|s| *s != "offline_access").cloned().collect();
            issue(&mut tokens, client, account, scopes, None, false)
        }
    }
}

/// The client named in the request, if its secret matches.
fn authenticate<'a>(site: &'a Site, p: &Params) -> Result<&'a Client, OAuthError> {
    let denied = || OAuthError::new(StatusCode::UNAUTHORIZED, "access_denied", "Unauthorized");
    let client = p.get("client_id").and_then(|id| site.dir.client(id)).ok_or_else(denied)?;
    let secret = Sha256::of(p.get("client_secret").unwrap_or_default().as_bytes());
    if kiln_crypto::constant_time_eq(secret.as_bytes(), client.secret_digest.as_bytes()) {
        Ok(client)
    } else {
        Err(denied())
    }
}

/// Issue an access token (and a refresh token in `family` if `with_refresh`).
fn issue(
    tokens: &mut Tokens,
    client: &Client,
    account_id: &str,
    scopes: BTreeSet<String>,
    family: Option<u64>,
    with_refresh: bool,
) -> Result<Value, OAuthError> {
    if tokens.access.len() >= MAX_GRANTS || tokens.refresh.len() >= MAX_GRANTS {
        return Err(OAuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The dev site holds too many tokens; restart it.",
        ));
    }
    let access = new_secret("kda_")?;
    let mut body = serde_json::Map::new();
    body.insert("access_token".into(), access.clone().into());
    body.insert("token_type".into(), "Bearer".into());
    body.insert("expires_in".into(), ACCESS_TOKEN_SECONDS.into());
    body.insert("scope".into(), scopes.iter().cloned().collect::<Vec<_>>().join(" ").into());
    let family = match (with_refresh, family) {
        (true, None) => Some(tokens.new_family()),
        (_, f) => f,
    };
    if with_refresh && let Some(family) = family {
        let refresh = new_secret("kdr_")?;
        tokens.refresh.insert(
            Sha256::of(refresh.as_bytes()),
            Refresh {
                client_id: client.client_id.clone(),
                account_id: account_id.to_owned(),
                scopes: scopes.clone(),
                family,
                rotated: false,
            },
        );
        body.insert("refresh_token".into(), refresh.into());
    }
    tokens.access.insert(
        Sha256::of(access.as_bytes()),
        Access {
            account_id: account_id.to_owned(),
            scopes,
            expires_at: time::now_millis() + ACCESS_TOKEN_SECONDS * 1000,
            family,
        },
    );
    Ok(Value::Object(body))
}

async fn accessible_resources(
    State(site): State<Arc<Site>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    reply(
        StatusCode::OK,
        json!([{
            "id": site.dir.cloud_id,
            "url": format!("https://{}", site.dir.site_host),
            "name": site.dir.site_name(),
            "scopes": caller.scopes,
            "avatarUrl": "",
        }]),
    )
}

async fn me(State(site): State<Arc<Site>>, Extension(caller): Extension<Caller>) -> Response {
    let Some(user) = site.dir.user(&caller.account_id) else {
        return reply(StatusCode::NOT_FOUND, json!({ "code": 404, "message": "Not Found" }));
    };
    reply(
        StatusCode::OK,
        json!({
            "account_id": user.account_id,
            "account_type": if user.is_app { "app" } else { "atlassian" },
            "account_status": "active",
            "name": user.display_name,
            "email": user.email,
        }),
    )
}

/// Grant types by how often `/oauth/token` was asked for each.
pub(crate) fn counts(site: &Site) -> BTreeMap<String, usize> {
    lock(&site.log).token_requests.clone()
}
