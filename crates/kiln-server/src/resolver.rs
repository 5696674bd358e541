//! Resolver calls from a UI module: `POST /resolver/v1/{installation}`.
//!
//! In Forge, a Custom UI or UI Kit module calls its backend with the
//! bridge's `invoke(functionKey, payload)`; the platform runs the function
//! the module's `resolver.function` names, with a context it vouches for:
//! who is looking (`accountId`), on which site (`cloudId`), at which module
//! instance (`localId`, `moduleKey`) and where (`extension`: the issue,
//! project, page...). Kiln's server is not the product that renders the
//! UI, so the product signs that context into a short-lived **context
//! token** (the dev site's `POST /kiln/context-token`), and the UI sends it
//! here as `Authorization: Bearer <token>` with the body
//! `{"call": {"functionKey": "...", "payload": {...}}, "extensionContext": {...}?}`.
//!
//! **Why the path names the installation and not the function.** The
//! bridge names a resolver *definition* (`functionKey`, a key inside the
//! app's `Resolver`), never a function module: the module is fixed by the
//! UI module that rendered, and the token names that module. So the
//! function that runs is the installed version's `resolver.function` of the
//! token's `moduleKey`, and a browser cannot steer a call to another
//! module's function (or to a web trigger's or consumer's) by editing a
//! URL. The installation is in the path as well as in the token's `aud` so
//! a request can be routed and logged before its token is read, and a
//! token for one installation is refused on another's path (403).
//!
//! **Checks, in order** (each refusal has one status and one public
//! message; the reason goes to the log only):
//! 1. A bearer token that verifies: compact JWS, EdDSA only, a key from the
//!    configured key set, the configured issuer (`iss`), a subject, not
//!    expired, issued no later than now, living at most
//!    [`MAX_TOKEN_LIFETIME_SECS`]. Otherwise **401**.
//! 2. Its audience is the installation in the path, that installation
//!    exists, its site is the token's `siteUrl`, and its installed version
//!    has a UI module `moduleKey` whose `resolver.function` is a function
//!    of the manifest. Otherwise **403** (404 for an installation id that
//!    is not one).
//! 3. The body is `{call: {functionKey, payload?}, extensionContext?}`
//!    within [`MAX_BODY`]. Otherwise **400**.
//!
//! Then the function runs through the [`Runner`](crate::runner::Runner)
//! as a user call (25 s), with `asUser()` acting for the token's `sub` —
//! never for anything the body says. The function receives Forge's
//! resolver request: `{call: {functionKey, payload}, context}` where
//! `context` is the token's (`accountId`, `accountType`, `cloudId`,
//! `siteUrl`, `localId`, `moduleKey`, `environmentType`, `extension`) and
//! `extension` is the UI's `extensionContext` with the token's extension
//! laid over it, so the UI can add detail but cannot move the call to
//! another issue or project. The platform context carries
//! `principal.accountId`, which `@forge/resolver` prefers over anything
//! in the request.
//!
//! **Answers:** the function's result as JSON (200); an app exception or
//! a sandbox fault is a 500 that shows nothing of it (a fault is in the
//! audit trail); a fault that could not be recorded is a 503. A function
//! that threw after an `asUser()` call for the token's user was refused
//! because that user has not consented (Kiln's own gateway saw the
//! refusal; the app's error is not read) is a 403
//! `{"message", "error": "NEEDS_USER_CONSENT", "consentUrl"}`: the link
//! starts the user's OAuth consent ([`crate::consent`]) for that user
//! only (`consentUrl` is null when the product site has no consent flow,
//! as on Data Center). `POST /resolver/v1/{installation}/consent`, with the
//! same token and no body, answers `{"consentUrl"}` up front.
//!
//! **Settings** (`[resolvers]` in `kiln serve --config`; unknown keys are
//! errors):
//!
//! ```toml
//! [resolvers]
//! issuer = "https://127.0.0.1:8444"            # the tokens' `iss`
//! jwks_file = "/etc/kiln/context-keys.json"    # the issuer's public keys, a JWK set
//! ```
//!
//! The key set is re-read (at most every [`KEY_RELOAD_INTERVAL`]) when a
//! token names a key it does not hold, so an issuer can rotate keys (and a
//! restarted dev site publish a new one) without restarting the server.
//! Without `[resolvers]` every call answers 503.
//!
//! **Why Ed25519 and not a shared HMAC secret.** The server only verifies:
//! it holds public keys, so nothing in its configuration or memory can
//! mint a token for a user, and one issuer can serve several Kiln nodes
//! without handing each a secret. A token is a bearer credential for its
//! lifetime (at most five minutes); `jti` is not tracked, as in Forge,
//! whose context tokens are reusable until they expire.
//!
//! Not done here: rate limiting (the web triggers' per-installation
//! limiter is per node; resolvers are behind a signed-in user), `jobId`
//! (resolver calls from queue consumers go through the consumer path), and
//! Forge Remote resolvers (`resolver.endpoint` answers 501).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_crypto::jws::{Ed25519PublicKey, JwkSet, JwsError};
use kiln_manifest::Target;
use kiln_sandbox::Caller;
use kiln_store::{InstallationRecord, Store, VersionRecord};
use kiln_types::{InstallationId, SiteUrl};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::alerting::ConfigError;
use crate::consent::Consent;
use crate::runner::{AUDIT_FAILED, Call, Execute, NEEDS_USER_CONSENT};

/// Largest request body a resolver call takes (the payload a UI sends).
pub const MAX_BODY: usize = 1024 * 1024;

/// The longest a context token may live, from `iat` to `exp`. A token is a
/// bearer credential for its life; the issuer is held to five minutes.
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 300;

/// Clock difference tolerated between the issuer and this server.
pub const CLOCK_SKEW_SECS: u64 = 30;

/// How often a token naming an unknown key may make the server re-read the
/// key set: often enough to follow a rotation, rarely enough that forged
/// tokens with random key ids cannot keep it reading files.
pub const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Longest `functionKey` (Forge's resolver keys are short identifiers).
const MAX_FUNCTION_KEY_LEN: usize = 255;

/// Longest account id, cloud id or local id a token may carry.
const MAX_ID_LEN: usize = 255;

/// The `[resolvers]` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolversSection {
    issuer: String,
    jwks_file: PathBuf,
}

/// The `[resolvers]` settings in the file at `path`: a verifier for the
/// issuer's tokens, or `None` when the file has no such section. Only this
/// section is read here; the other loaders refuse unknown sections.
pub fn load(path: &Path) -> Result<Option<TokenVerifier>, ConfigError> {
    let fail = |message: String| ConfigError { path: path.display().to_string(), message };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    let Some(section) = table.remove("resolvers") else { return Ok(None) };
    let section: ResolversSection = section.try_into().map_err(|e| fail(format!("[resolvers]: {e}")))?;
    let issuer = section.issuer.trim().to_owned();
    if issuer.is_empty() {
        return Err(fail("resolvers.issuer must name the tokens' issuer".into()));
    }
    let keys = read_keys(&section.jwks_file).map_err(|e| fail(format!("resolvers.jwks_file: {e}")))?;
    Ok(Some(TokenVerifier::with_key_file(issuer, keys, section.jwks_file)))
}

/// Largest key set file read.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

fn read_keys(path: &Path) -> Result<Vec<Ed25519PublicKey>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(format!("{} is larger than {MAX_KEY_FILE_BYTES} bytes", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{} is not a JWK set: {e}", path.display()))?;
    Ed25519PublicKey::from_jwk_set(&set).map_err(|e| format!("{}: {e}", path.display()))
}

/// Why a context token is refused. Never shown to the caller (they get
/// 401 and a fixed message); logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error(transparent)]
    Signature(#[from] JwsError),
    #[error("the claims are not what a context token holds: {0}")]
    Claims(String),
    #[error("the token was issued by {0:?}, not the configured issuer")]
    Issuer(String),
    #[error("the token expired")]
    Expired,
    #[error("the token is issued in the future")]
    NotYetValid,
    #[error("the token lives {0} s, longer than the {MAX_TOKEN_LIFETIME_SECS} s allowed")]
    TooLong(u64),
}

/// Verifies context tokens from one issuer.
#[derive(Debug)]
pub struct TokenVerifier {
    issuer: String,
    keys: RwLock<Arc<Vec<Ed25519PublicKey>>>,
    /// Where the keys came from, to re-read on an unknown key.
    key_file: Option<PathBuf>,
    last_reload: Mutex<Option<Instant>>,
}

impl TokenVerifier {
    /// A verifier with fixed keys.
    pub fn new(issuer: impl Into<String>, keys: Vec<Ed25519PublicKey>) -> Self {
        TokenVerifier {
            issuer: issuer.into(),
            keys: RwLock::new(Arc::new(keys)),
            key_file: None,
            last_reload: Mutex::new(None),
        }
    }

    fn with_key_file(issuer: String, keys: Vec<Ed25519PublicKey>, file: PathBuf) -> Self {
        TokenVerifier { key_file: Some(file), ..TokenVerifier::new(issuer, keys) }
    }

    /// Verify `token` now.
    pub fn verify(&self, token: &str) -> Result<ContextToken, TokenError> {
        self.verify_at(token, now_secs())
    }

    /// Verify `token` as of `now` (seconds since the epoch).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<ContextToken, TokenError> {
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let verified = match kiln_crypto::jws::verify(token, &keys) {
            Err(JwsError::UnknownKey(_)) if self.reload() => {
                let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
                kiln_crypto::jws::verify(token, &keys)?
            }
            other => other?,
        };
        let claims: Claims =
            serde_json::from_slice(&verified.claims).map_err(|e| TokenError::Claims(e.to_string()))?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer(claims.iss.chars().take(128).collect()));
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.iat > now + CLOCK_SKEW_SECS {
            return Err(TokenError::NotYetValid);
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if claims.exp < claims.iat || lifetime > MAX_TOKEN_LIFETIME_SECS {
            return Err(TokenError::TooLong(lifetime));
        }
        ContextToken::from_claims(claims)
    }

    /// Re-read the key file, if there is one and the last read was long
    /// enough ago; whether the keys may have changed.
    fn reload(&self) -> bool {
        let Some(file) = &self.key_file else { return false };
        {
            let mut last = self.last_reload.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.is_some_and(|at| at.elapsed() < KEY_RELOAD_INTERVAL) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match read_keys(file) {
            Ok(keys) => {
                *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
                tracing::info!(file = %file.display(), "re-read the context-token keys");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the context-token keys could not be re-read; keeping the old ones");
                false
            }
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A token's claims as the issuer writes them; unknown claims are ignored
/// (they mean nothing here), missing ones refuse the token.
#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    sub: String,
    iat: u64,
    exp: u64,
    context: ClaimsContext,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimsContext {
    cloud_id: String,
    site_url: String,
    module_key: String,
    local_id: Option<String>,
    account_type: Option<String>,
    #[serde(default)]
    extension: Map<String, Value>,
}

/// A context token that verified. Only [`TokenVerifier`] makes one, so a
/// handler holding one knows the signature, issuer and times were checked.
#[derive(Debug, Clone, PartialEq)]
#[expect(
    clippy::manual_non_exhaustive,
    reason = "the private field keeps construction to this module, where `#[non_exhaustive]` would allow the whole crate"
)]
pub struct ContextToken {
    /// The user (`sub`): whom `asUser()` acts for.
    pub account_id: String,
    /// The installation the token is for (`aud`).
    pub audience: String,
    pub cloud_id: String,
    pub site: SiteUrl,
    pub module_key: String,
    pub local_id: Option<String>,
    pub account_type: Option<String>,
    /// The product's view of where the module is: the issue, the page...
    pub extension: Map<String, Value>,
    pub expires_at: u64,
    _verified: (),
}

impl ContextToken {
    fn from_claims(c: Claims) -> Result<Self, TokenError> {
        let bad = |what: &str| TokenError::Claims(format!("{what} is empty or too long"));
        let sized = |s: &str| !s.is_empty() && s.len() <= MAX_ID_LEN;
        if !sized(&c.sub) {
            return Err(bad("sub"));
        }
        if !sized(&c.aud) {
            return Err(bad("aud"));
        }
        if !sized(&c.context.cloud_id) {
            return Err(bad("context.cloudId"));
        }
        if !sized(&c.context.module_key) {
            return Err(bad("context.moduleKey"));
        }
        if c.context.local_id.as_deref().is_some_and(|l| !sized(l)) {
            return Err(bad("context.localId"));
        }
        let site = SiteUrl::parse(&c.context.site_url).map_err(|e| TokenError::Claims(e.to_string()))?;
        Ok(ContextToken {
            account_id: c.sub,
            audience: c.aud,
            cloud_id: c.context.cloud_id,
            site,
            module_key: c.context.module_key,
            local_id: c.context.local_id,
            account_type: c.context.account_type,
            extension: c.context.extension,
            expires_at: c.exp,
            _verified: (),
        })
    }
}

/// What serving resolver calls needs.
pub struct Resolvers {
    store: Store,
    runner: Arc<dyn Execute>,
    tokens: Option<TokenVerifier>,
    /// The user consent flow, when the product site has one: where a call
    /// that needs the user's consent sends them.
    consent: Option<Arc<Consent>>,
}

impl std::fmt::Debug for Resolvers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolvers").field("configured", &self.tokens.is_some()).finish_non_exhaustive()
    }
}

impl Resolvers {
    /// `tokens` is `None` when the settings have no `[resolvers]`: every
    /// call then answers 503.
    pub fn new(store: Store, runner: Arc<dyn Execute>, tokens: Option<TokenVerifier>) -> Self {
        Resolvers { store, runner, tokens, consent: None }
    }

    /// Answer calls that need the user's consent with a link to give it.
    pub fn with_consent(mut self, consent: Option<Arc<Consent>>) -> Self {
        self.consent = consent;
        self
    }
}

/// `POST /resolver/v1/{installation}`, and
/// `POST /resolver/v1/{installation}/consent` (the token's user's consent link).
pub fn router(state: Arc<Resolvers>) -> Router {
    Router::new()
        .route("/resolver/v1/{installation}", axum::routing::post(call))
        .route("/resolver/v1/{installation}/consent", axum::routing::post(consent_link))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A refusal: a fixed status and public message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    NotConfigured,
    Unauthenticated,
    WrongInstallation,
    NoInstallation,
    NoResolver,
    RemoteResolver,
    BadRequest,
    Unavailable,
    Failed,
    NotRecorded,
    /// The function failed after an `asUser()` call that the user's
    /// missing consent refused; where they can give it, when this server
    /// has a consent flow.
    NeedsConsent(Option<String>),
    /// A consent link was asked for and this server has no consent flow.
    NoConsentFlow,
}

/// The `error` a needs-consent answer carries, for a UI to branch on.
pub const NEEDS_CONSENT_ERROR: &str = "NEEDS_USER_CONSENT";

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Refusal::NeedsConsent(url) => {
                // A fixed message and a link this server made: nothing of
                // the app's error. 403, not 401: the caller's token is good,
                // and a 401 would send a UI to fetch a new one.
                let body = json!({
                    "message": "the user has not allowed this app to act for them; send them to consentUrl",
                    "error": NEEDS_CONSENT_ERROR,
                    "consentUrl": url,
                });
                return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
            }
            Refusal::NoConsentFlow => {
                (StatusCode::NOT_FOUND, "this server's product site has no user consent flow")
            }
            Refusal::NotConfigured => {
                (StatusCode::SERVICE_UNAVAILABLE, "resolver calls are not configured on this server")
            }
            Refusal::Unauthenticated => (StatusCode::UNAUTHORIZED, "a valid context token is required"),
            Refusal::WrongInstallation => {
                (StatusCode::FORBIDDEN, "the context token does not allow this call on this installation")
            }
            Refusal::NoInstallation => (StatusCode::NOT_FOUND, "no such installation"),
            Refusal::NoResolver => {
                (StatusCode::FORBIDDEN, "the module has no resolver in the installed version")
            }
            Refusal::RemoteResolver => {
                (StatusCode::NOT_IMPLEMENTED, "resolvers served by a remote are not supported by Kiln")
            }
            Refusal::BadRequest => (
                StatusCode::BAD_REQUEST,
                "the body must be {\"call\": {\"functionKey\": \"...\", \"payload\": {...}}}",
            ),
            Refusal::Unavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "the installation cannot be looked up now")
            }
            Refusal::Failed => (StatusCode::INTERNAL_SERVER_ERROR, "the resolver function failed"),
            Refusal::NotRecorded => {
                (StatusCode::SERVICE_UNAVAILABLE, "the resolver function failed and could not be recorded")
            }
        };
        let mut res = (status, axum::Json(json!({ "message": message }))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            res.headers_mut()
                .insert(header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        res
    }
}

/// The body a UI sends. Unknown fields are refused.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Body {
    call: BodyCall,
    #[serde(default)]
    extension_context: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BodyCall {
    function_key: String,
    #[serde(default)]
    payload: Option<Value>,
}

async fn call(
    State(state): State<Arc<Resolvers>>,
    UrlPath(installation): UrlPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serve(&state, &installation, &headers, &body).await {
        Ok(result) => (StatusCode::OK, axum::Json(result)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// `POST /resolver/v1/{installation}/consent`: `{"consentUrl": ...}` for
/// the token's user, so a UI can offer consent before a call needs it.
async fn consent_link(
    State(state): State<Arc<Resolvers>>,
    UrlPath(installation): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    let answer = async {
        let (context, installation, _) = authenticate(&state, &installation, &headers).await?;
        let consent = state.consent.as_ref().ok_or(Refusal::NoConsentFlow)?;
        consent.link(installation.public_id.as_str(), &context.account_id).await.map_err(|e| {
            tracing::warn!(error = %e, "no consent link could be made");
            Refusal::Unavailable
        })
    };
    match answer.await {
        Ok(url) => (StatusCode::OK, axum::Json(json!({ "consentUrl": url }))).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

/// Checks 1 and 2 of the module doc but the resolver function: a token
/// that verifies, for this installation, on its site.
async fn authenticate(
    state: &Resolvers,
    installation: &str,
    headers: &HeaderMap,
) -> Result<(ContextToken, InstallationRecord, VersionRecord), Refusal> {
    let Some(tokens) = &state.tokens else { return Err(Refusal::NotConfigured) };
    let token = bearer(headers).ok_or(Refusal::Unauthenticated)?;
    let context = tokens.verify(token).map_err(|e| {
        tracing::info!(reason = %e, "resolver call refused: bad context token");
        Refusal::Unauthenticated
    })?;
    if context.audience != installation {
        tracing::info!(installation, "resolver call refused: the token is for another installation");
        return Err(Refusal::WrongInstallation);
    }
    let Ok(public_id) = InstallationId::parse(installation) else { return Err(Refusal::NoInstallation) };
    let (installation, version) = find(&state.store, &public_id)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "resolver call: the installation could not be looked up");
            Refusal::Unavailable
        })?
        .ok_or(Refusal::NoInstallation)?;
    if installation.site != context.site {
        tracing::info!(installation = %public_id, "resolver call refused: the token is for another site");
        return Err(Refusal::WrongInstallation);
    }
    Ok((context, installation, version))
}

async fn serve(
    state: &Resolvers,
    installation: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, Refusal> {
    let (context, installation, version) = authenticate(state, installation, headers).await?;
    let function = resolver_function(&version, &context.module_key)?;
    let body: Body = serde_json::from_slice(body).map_err(|_| Refusal::BadRequest)?;
    let key = body.call.function_key;
    if key.is_empty() || key.len() > MAX_FUNCTION_KEY_LEN {
        return Err(Refusal::BadRequest);
    }
    let mut extension = body.extension_context;
    // The product's view wins: the UI may add detail, never move the call.
    extension.extend(context.extension.clone());
    let request = json!({
        "call": { "functionKey": key, "payload": body.call.payload.unwrap_or_else(|| json!({})) },
        "context": {
            "accountId": context.account_id,
            "accountType": context.account_type,
            "cloudId": context.cloud_id,
            "siteUrl": context.site.to_string(),
            "localId": context.local_id,
            "moduleKey": context.module_key,
            "environmentType": installation.environment.to_string().to_ascii_uppercase(),
            "extension": extension,
        },
    });
    let mut platform = Map::new();
    platform.insert("principal".into(), json!({ "accountId": context.account_id }));
    let public_id = installation.public_id.to_string();
    let call = Call {
        installation,
        version,
        function,
        module_key: context.module_key.clone(),
        payload: request,
        context: platform,
        caller: Caller::User,
        account_id: Some(context.account_id.clone()),
        kind: "resolver",
    };
    match state.runner.execute(call).await {
        Ok(result) => Ok(result),
        Err(f) if f.code == AUDIT_FAILED => Err(Refusal::NotRecorded),
        Err(f) if f.code == NEEDS_USER_CONSENT => {
            let url = match &state.consent {
                Some(consent) => match consent.link(&public_id, &context.account_id).await {
                    Ok(url) => Some(url),
                    Err(e) => {
                        tracing::warn!(error = %e, "no consent link could be made");
                        None
                    }
                },
                None => None,
            };
            Err(Refusal::NeedsConsent(url))
        }
        // The UI is told only that the function failed; a sandbox fault is
        // in the audit trail (the runner recorded it).
        Err(_) => Err(Refusal::Failed),
    }
}

/// The function module the installed version's UI module `module_key`
/// names as its resolver.
fn resolver_function(version: &VersionRecord, module_key: &str) -> Result<String, Refusal> {
    let manifest = &version.manifest;
    let module = manifest.modules.others.iter().find(|m| m.key.as_str() == module_key).ok_or_else(|| {
        tracing::info!(module_key, "resolver call refused: no such UI module in the installed version");
        Refusal::NoResolver
    })?;
    match &module.resolver {
        Some(Target::Function(f)) if manifest.function(f.as_str()).is_some() => Ok(f.as_str().to_owned()),
        Some(Target::Endpoint(_)) => Err(Refusal::RemoteResolver),
        _ => {
            tracing::info!(module_key, "resolver call refused: the module names no resolver function");
            Err(Refusal::NoResolver)
        }
    }
}

async fn find(
    store: &Store,
    public_id: &InstallationId,
) -> Result<Option<(InstallationRecord, VersionRecord)>, kiln_store::StoreError> {
    let mut tx = store.begin_read().await?;
    let Some(installation) = tx.installation_by_public_id(public_id.as_str()).await? else { return Ok(None) };
    let Some(version) = tx.version_by_id(installation.version_id).await? else { return Ok(None) };
    Ok(Some((installation, version)))
}

/// The token of an `Authorization: Bearer <token>` header, within the
/// longest token the verifier reads.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer")
        && !token.is_empty()
        && token.len() <= kiln_crypto::jws::MAX_TOKEN_LEN)
        .then_some(token)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing,
        reason = "test code: a panic is a failed test"
    )]

    use super::*;
    use crate::runner::{BoxFuture, Failure};
    use kiln_crypto::jws::Ed25519Signer;
    use kiln_http::{HttpsClient, Method};

    const ISSUER: &str = "https://127.0.0.1:8444";
    const SITE: &str = "https://kiln-dev.atlassian.net";

    /// Records each call and answers with what the test set.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Call>>,
        answer: Mutex<Option<Result<Value, Failure>>>,
    }

    impl Execute for Recorder {
        fn execute(&self, call: Call) -> BoxFuture<'_, Result<Value, Failure>> {
            self.calls.lock().unwrap().push(call);
            let answer = self.answer.lock().unwrap().clone().unwrap_or(Ok(json!({ "ok": true })));
            Box::pin(async move { answer })
        }
    }

    fn claims(aud: &str, sub: &str, iat: u64, exp: u64) -> Value {
        json!({
            "iss": ISSUER, "aud": aud, "sub": sub, "iat": iat, "exp": exp, "jti": "j1",
            "context": {
                "cloudId": "cloud-1", "siteUrl": SITE, "moduleKey": "panel", "localId": "local-1",
                "accountType": "licensed",
                "extension": { "type": "jira:issuePanel", "issue": { "key": "KILN-1" } },
            },
        })
    }

    fn sign(signer: &Ed25519Signer, claims: &Value) -> String {
        signer.sign(claims.to_string().as_bytes())
    }

    #[test]
    fn a_token_verifies_and_carries_its_user_audience_and_context() {
        let signer = Ed25519Signer::generate().unwrap();
        let verifier = TokenVerifier::new(ISSUER, vec![signer.public_key()]);
        let now = now_secs();
        let token =
            verifier.verify_at(&sign(&signer, &claims("inst", "alice", now, now + 300)), now).unwrap();
        assert_eq!(token.account_id, "alice");
        assert_eq!(token.audience, "inst");
        assert_eq!(token.site, SiteUrl::parse(SITE).unwrap());
        assert_eq!(token.module_key, "panel");
        assert_eq!(token.extension["issue"]["key"], "KILN-1");
    }

    #[test]
    fn expired_early_long_lived_foreign_and_tampered_tokens_are_refused() {
        let signer = Ed25519Signer::generate().unwrap();
        let verifier = TokenVerifier::new(ISSUER, vec![signer.public_key()]);
        let now = 1_800_000_000;
        let check = |c: &Value| verifier.verify_at(&sign(&signer, c), now);
        assert_eq!(check(&claims("i", "a", now - 400, now - 100)), Err(TokenError::Expired));
        assert_eq!(check(&claims("i", "a", now - 300, now)), Err(TokenError::Expired));
        assert_eq!(check(&claims("i", "a", now + 60, now + 120)), Err(TokenError::NotYetValid));
        assert_eq!(check(&claims("i", "a", now, now + 301)), Err(TokenError::TooLong(301)));
        let mut other = claims("i", "a", now, now + 60);
        other["iss"] = json!("https://evil.example");
        assert!(matches!(check(&other), Err(TokenError::Issuer(_))));
        let mut empty = claims("i", "", now, now + 60);
        assert!(matches!(check(&empty), Err(TokenError::Claims(_))));
        empty["sub"] = json!("a");
        empty["context"]["siteUrl"] = json!("http://plain.example");
        assert!(matches!(check(&empty), Err(TokenError::Claims(_))));
        // Claims swapped under a valid signature.
        let good = sign(&signer, &claims("i", "alice", now, now + 60));
        let parts: Vec<&str> = good.split('.').collect();
        let forged_claims = claims("i", "mallory", now, now + 60).to_string();
        use base64::Engine as _;
        let forged_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged_claims);
        let forged = format!("{}.{}.{}", parts[0], forged_b64, parts[2]);
        assert_eq!(verifier.verify_at(&forged, now), Err(TokenError::Signature(JwsError::BadSignature)));
        // Another issuer's key.
        let stranger = Ed25519Signer::generate().unwrap();
        let theirs = sign(&stranger, &claims("i", "alice", now, now + 60));
        assert!(matches!(
            verifier.verify_at(&theirs, now),
            Err(TokenError::Signature(JwsError::UnknownKey(_)))
        ));
    }

    #[test]
    fn a_rotated_key_file_is_re_read_for_an_unknown_key_at_most_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.json");
        let old = Ed25519Signer::generate().unwrap();
        let write = |s: &Ed25519Signer| {
            let set = JwkSet { keys: vec![s.public_key().to_jwk()] };
            std::fs::write(&file, serde_json::to_string(&set).unwrap()).unwrap();
        };
        write(&old);
        let settings = dir.path().join("kiln.toml");
        std::fs::write(&settings, format!("[resolvers]\nissuer = \"{ISSUER}\"\njwks_file = {:?}\n", file))
            .unwrap();
        let verifier = load(&settings).unwrap().unwrap();
        let now = now_secs();
        assert!(verifier.verify_at(&sign(&old, &claims("i", "a", now, now + 60)), now).is_ok());
        let new = Ed25519Signer::generate().unwrap();
        write(&new);
        assert!(verifier.verify_at(&sign(&new, &claims("i", "a", now, now + 60)), now).is_ok());
        // A second unknown key right away does not make it read again.
        let newer = Ed25519Signer::generate().unwrap();
        write(&newer);
        assert!(verifier.verify_at(&sign(&newer, &claims("i", "a", now, now + 60)), now).is_err());
    }

    #[test]
    fn settings_refuse_unknown_keys_and_unusable_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let settings = dir.path().join("kiln.toml");
        std::fs::write(&settings, "[alerts]\n").unwrap();
        assert!(load(&settings).unwrap().is_none());
        std::fs::write(&settings, "[resolvers]\nissuer = \"x\"\njwks_file = \"k\"\ncolour = \"red\"\n")
            .unwrap();
        assert!(load(&settings).unwrap_err().to_string().contains("colour"));
        std::fs::write(&settings, "[resolvers]\nissuer = \"x\"\njwks_file = \"/nonexistent/keys.json\"\n")
            .unwrap();
        assert!(load(&settings).unwrap_err().to_string().contains("jwks_file"));
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, r#"{"keys":[{"kty":"RSA","crv":"x","x":"AA","kid":"k"}]}"#).unwrap();
        std::fs::write(&settings, format!("[resolvers]\nissuer = \"x\"\njwks_file = {keys:?}\n")).unwrap();
        assert!(load(&settings).unwrap_err().to_string().contains("OKP"));
    }

    /// An installation of a Jira app with an issue panel whose resolver is
    /// `resolver-fn`, a web trigger, and a panel with no resolver.
    async fn installed(store: &Store) -> String {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.yml"),
            "app:\n  id: ari:cloud:ecosystem::app/7d1c2b3a-0000-4000-8000-0000000000f1\n  runtime:\n    name: nodejs22.x\n\
             modules:\n  jira:issuePanel:\n    - key: panel\n      resource: main\n      resolver:\n        function: resolver-fn\n      title: Panel\n\
             \x20   - key: bare\n      resource: main\n      title: Bare\n\
             \x20 webtrigger:\n    - key: hook\n      function: hook-fn\n\
             \x20 function:\n    - key: resolver-fn\n      handler: index.handler\n    - key: hook-fn\n      handler: index.hook\n\
             resources:\n  - key: main\n    path: static\n",
        )
        .unwrap();
        std::fs::create_dir_all(dir.path().join("src")).unwrap();
        std::fs::create_dir_all(dir.path().join("static")).unwrap();
        std::fs::write(
            dir.path().join("src/index.js"),
            "export const handler = () => 1;\nexport const hook = () => 2;\n",
        )
        .unwrap();
        let audit = kiln_audit::testing::audit();
        let env = kiln_types::Environment::development();
        let request = kiln_apps::DeployRequest {
            app_dir: dir.path(),
            environment: env.clone(),
            dry_run: false,
            variables: &kiln_manifest::NoVariables,
        };
        let deployed = kiln_apps::deploy(store, request, audit).await.unwrap();
        let site = SiteUrl::parse(SITE).unwrap();
        let outcome = kiln_apps::install(store, &deployed.app, &env, &site, None, audit).await.unwrap();
        outcome.installation.to_string()
    }

    /// The router behind a real HTTPS server on a loopback port.
    async fn start(resolvers: Resolvers) -> (HttpsClient, tokio::sync::oneshot::Sender<()>) {
        let identity = kiln_crypto::tls::self_signed(&["localhost"]).unwrap();
        let tls = kiln_crypto::tls::server_config(&identity).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(kiln_http::serve(listener, tls, router(Arc::new(resolvers)), async {
            let _ = stopped.await;
        }));
        let roots = kiln_crypto::tls::client_config(&identity.cert_pem).unwrap();
        (HttpsClient::new(&addr, "localhost", roots), stop)
    }

    struct Fixture {
        client: HttpsClient,
        _stop: tokio::sync::oneshot::Sender<()>,
        recorder: Arc<Recorder>,
        signer: Ed25519Signer,
        installation: String,
    }

    async fn fixture() -> Fixture {
        let store = Store::open_in_memory().await.unwrap();
        let installation = installed(&store).await;
        let signer = Ed25519Signer::generate().unwrap();
        let recorder = Arc::new(Recorder::default());
        let tokens = TokenVerifier::new(ISSUER, vec![signer.public_key()]);
        let runner: Arc<dyn Execute> = recorder.clone();
        let (client, stop) = start(Resolvers::new(store, runner, Some(tokens))).await;
        Fixture { client, _stop: stop, recorder, signer, installation }
    }

    impl Fixture {
        fn token(&self, edit: impl FnOnce(&mut Value)) -> String {
            let now = now_secs();
            let mut c = claims(&self.installation, "alice", now, now + 120);
            edit(&mut c);
            sign(&self.signer, &c)
        }

        async fn post(&self, installation: &str, token: Option<&str>, body: &Value) -> (StatusCode, Value) {
            let auth = token.map(|t| format!("Bearer {t}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let path = format!("/resolver/v1/{installation}");
            let body = body.to_string();
            let reply = self.client.send(Method::POST, &path, &headers, Some(body.as_bytes())).await.unwrap();
            (reply.status, reply.json())
        }
    }

    fn body() -> Value {
        json!({
            "call": { "functionKey": "getIssue", "payload": { "n": 1 } },
            "extensionContext": { "issue": { "key": "EVIL-9" }, "renderContext": "dark" },
        })
    }

    #[tokio::test]
    async fn a_resolver_call_runs_the_modules_resolver_as_the_tokens_user() {
        let f = fixture().await;
        let token = f.token(|_| {});
        let (status, answer) = f.post(&f.installation, Some(&token), &body()).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer, json!({ "ok": true }));
        let calls = f.recorder.calls.lock().unwrap();
        let call = &calls[0];
        assert_eq!(call.function, "resolver-fn");
        assert_eq!(call.module_key, "panel");
        assert_eq!(call.kind, "resolver");
        assert_eq!(call.caller, Caller::User);
        assert_eq!(call.account_id.as_deref(), Some("alice"));
        assert_eq!(call.context["principal"], json!({ "accountId": "alice" }));
        assert_eq!(call.payload["call"], json!({ "functionKey": "getIssue", "payload": { "n": 1 } }));
        let context = &call.payload["context"];
        assert_eq!(context["accountId"], "alice");
        assert_eq!(context["cloudId"], "cloud-1");
        assert_eq!(context["localId"], "local-1");
        assert_eq!(context["moduleKey"], "panel");
        assert_eq!(context["environmentType"], "DEVELOPMENT");
        // The UI adds detail; the token's extension wins where both speak.
        assert_eq!(context["extension"]["issue"]["key"], "KILN-1");
        assert_eq!(context["extension"]["renderContext"], "dark");
    }

    #[tokio::test]
    async fn the_account_comes_from_the_token_never_the_body() {
        let f = fixture().await;
        let token = f.token(|_| {});
        let mut sneaky = body();
        sneaky["call"]["payload"] = json!({ "accountId": "mallory" });
        sneaky["extensionContext"] = json!({ "accountId": "mallory" });
        let (status, _) = f.post(&f.installation, Some(&token), &sneaky).await;
        assert_eq!(status, StatusCode::OK);
        let call = f.recorder.calls.lock().unwrap()[0].clone();
        assert_eq!(call.account_id.as_deref(), Some("alice"));
        assert_eq!(call.payload["context"]["accountId"], "alice");
        // A top-level accountId in the body is an unknown field: refused.
        let mut top = body();
        top["accountId"] = json!("mallory");
        assert_eq!(f.post(&f.installation, Some(&token), &top).await.0, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn bad_tokens_are_401_and_wrong_places_are_403() {
        let f = fixture().await;
        let good = f.token(|_| {});
        let other_installation = "00000000-0000-4000-8000-000000000000";
        let cases: Vec<(String, Option<String>, StatusCode)> = vec![
            (f.installation.clone(), None, StatusCode::UNAUTHORIZED),
            (f.installation.clone(), Some("not-a-token".into()), StatusCode::UNAUTHORIZED),
            (
                f.installation.clone(),
                Some(f.token(|c| {
                    c["iat"] = json!(now_secs() - 400);
                    c["exp"] = json!(now_secs() - 100);
                })),
                StatusCode::UNAUTHORIZED,
            ),
            (
                f.installation.clone(),
                Some(sign(
                    &Ed25519Signer::generate().unwrap(),
                    &claims(&f.installation, "a", now_secs(), now_secs() + 60),
                )),
                StatusCode::UNAUTHORIZED,
            ),
            // A good token on another installation's path, or for another one.
            (other_installation.into(), Some(good.clone()), StatusCode::FORBIDDEN),
            (
                f.installation.clone(),
                Some(f.token(|c| c["aud"] = json!(other_installation))),
                StatusCode::FORBIDDEN,
            ),
            // Another site, a module without a resolver, a module that does not exist.
            (
                f.installation.clone(),
                Some(f.token(|c| c["context"]["siteUrl"] = json!("https://other.atlassian.net"))),
                StatusCode::FORBIDDEN,
            ),
            (
                f.installation.clone(),
                Some(f.token(|c| c["context"]["moduleKey"] = json!("bare"))),
                StatusCode::FORBIDDEN,
            ),
            (
                f.installation.clone(),
                Some(f.token(|c| c["context"]["moduleKey"] = json!("hook"))),
                StatusCode::FORBIDDEN,
            ),
            // An audience that is the path but no installation.
            (
                other_installation.into(),
                Some(f.token(|c| c["aud"] = json!(other_installation))),
                StatusCode::NOT_FOUND,
            ),
        ];
        for (path, token, expected) in cases {
            let (status, answer) = f.post(&path, token.as_deref(), &body()).await;
            assert_eq!(status, expected, "{path} {token:?}: {answer}");
            assert!(answer["message"].is_string(), "{answer}");
        }
        assert!(f.recorder.calls.lock().unwrap().is_empty(), "nothing ran");
        let (status, _) =
            f.post(&f.installation, Some(&good), &json!({ "call": { "functionKey": "" } })).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn failures_show_nothing_of_the_apps_error() {
        let f = fixture().await;
        let token = f.token(|_| {});
        *f.recorder.answer.lock().unwrap() =
            Some(Err(Failure { code: "FUNCTION_ERROR".into(), message: "secret detail".into() }));
        let (status, answer) = f.post(&f.installation, Some(&token), &body()).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!answer.to_string().contains("secret detail"), "{answer}");
        *f.recorder.answer.lock().unwrap() =
            Some(Err(Failure { code: AUDIT_FAILED.into(), message: "x".into() }));
        assert_eq!(f.post(&f.installation, Some(&token), &body()).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    /// A Cloud gateway whose site is never reached (minting a consent link
    /// only seals a ticket), and the key-value store it seals with.
    fn consent_for(store: &Store) -> (Arc<Consent>, Arc<kiln_kvs::Kvs>) {
        use base64::Engine as _;
        let key = base64::engine::general_purpose::STANDARD.encode([5u8; 32]);
        let provider = kiln_crypto::keys::EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap();
        let kvs = Arc::new(kiln_kvs::Kvs::new(store.clone(), Arc::new(provider)));
        let identity = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
        let endpoint =
            || kiln_product::Endpoint::new("https://127.0.0.1:1", &identity.cert_pem, 1024).unwrap();
        let site = kiln_product::Site::Cloud(kiln_product::CloudSite {
            auth: endpoint(),
            api: endpoint(),
            cloud_id: "cloud-1".into(),
            client: kiln_product::OAuthClient {
                client_id: "client".into(),
                client_secret: String::from("secret").into(),
                redirect_uri: "https://kiln.example/oauth/callback".into(),
            },
        });
        let gateway = Arc::new(kiln_product::ProductGateway::new(Default::default(), site, kvs.clone()));
        let auditor = kiln_audit::testing::AUDITOR.clone();
        let consent =
            Consent::new(store.clone(), kvs.clone(), Some(&gateway), auditor, "https://kiln.example/");
        (Arc::new(consent.unwrap()), kvs)
    }

    #[tokio::test]
    async fn a_call_that_needs_the_users_consent_answers_a_link_for_that_user_and_nothing_of_the_app() {
        let store = Store::open_in_memory().await.unwrap();
        let installation = installed(&store).await;
        let signer = Ed25519Signer::generate().unwrap();
        let recorder = Arc::new(Recorder::default());
        *recorder.answer.lock().unwrap() = Some(Err(Failure {
            code: NEEDS_USER_CONSENT.into(),
            message: "NeedsAuthenticationError: secret detail".into(),
        }));
        let runner: Arc<dyn Execute> = recorder.clone();
        let verifier = || TokenVerifier::new(ISSUER, vec![signer.public_key()]);
        let (consent, kvs) = consent_for(&store);
        let now = now_secs();
        let token = sign(&signer, &claims(&installation, "alice", now, now + 120));
        let auth = format!("Bearer {token}");
        let path = format!("/resolver/v1/{installation}");
        let body = body().to_string();

        // With a consent flow: 403, the error code and a link on this server.
        let resolvers = Resolvers::new(store.clone(), runner.clone(), Some(verifier()))
            .with_consent(Some(consent.clone()));
        let (client, _stop) = start(resolvers).await;
        let reply = client
            .send(Method::POST, &path, &[("authorization", &auth)], Some(body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        let answer = reply.json();
        assert_eq!(answer["error"], NEEDS_CONSENT_ERROR);
        let url = answer["consentUrl"].as_str().unwrap();
        assert!(url.starts_with("https://kiln.example/oauth/consent?ticket="), "{url}");
        assert!(!answer.to_string().contains("secret detail"), "{answer}");
        assert!(reply.headers.get(header::WWW_AUTHENTICATE).is_none(), "the token was good");
        // The link is for the token's user on this installation.
        let ticket = url.rsplit('=').next().unwrap();
        let opened = crate::consent::tests_support::open_ticket(&kvs, ticket).await.unwrap();
        assert_eq!(opened, (installation.clone(), "alice".to_owned()));

        // Asked up front, with the same token; refused without one.
        let asked = client
            .send(Method::POST, &format!("{path}/consent"), &[("authorization", &auth)], None)
            .await
            .unwrap();
        assert_eq!(asked.status, StatusCode::OK);
        assert!(asked.json()["consentUrl"].as_str().unwrap().contains("/oauth/consent?ticket="));
        let anonymous = client.send(Method::POST, &format!("{path}/consent"), &[], None).await.unwrap();
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

        // Without one (a Data Center site): the same answer, with no link.
        let (client, _stop) = start(Resolvers::new(store.clone(), runner, Some(verifier()))).await;
        let reply = client
            .send(Method::POST, &path, &[("authorization", &auth)], Some(body.as_bytes()))
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.json()["error"], NEEDS_CONSENT_ERROR);
        assert!(reply.json()["consentUrl"].is_null());
        let asked = client
            .send(Method::POST, &format!("{path}/consent"), &[("authorization", &auth)], None)
            .await
            .unwrap();
        assert_eq!(asked.status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn without_settings_every_call_is_503() {
        let store = Store::open_in_memory().await.unwrap();
        let runner: Arc<dyn Execute> = Arc::new(Recorder::default());
        let (client, _stop) = start(Resolvers::new(store, runner, None)).await;
        let reply = client.send(Method::POST, "/resolver/v1/x", &[], Some(b"{}")).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
}
