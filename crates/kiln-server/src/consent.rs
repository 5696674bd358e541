//! A user's own OAuth 2.0 consent for `asUser()`: the authorization-code
//! flow between a person, this server and the product site's
//! authorization server, ending with that person's tokens sealed where the
//! product gateway looks for them.
//!
//! In Forge, an app's `asUser()` call for someone who has not let the app
//! act for them fails with `NeedsAuthenticationError`, and the product's UI
//! offers a consent prompt; after consent the call works. Kiln's server is
//! not the product's UI, so it offers the pieces a UI needs:
//!
//! 1. **A consent link, minted only for a user the product vouched for.** A
//!    resolver call (`POST /resolver/v1/{installation}`, with the product's
//!    context token) whose function failed after an `asUser()` call was
//!    refused for want of consent answers 403 with
//!    `{"error": "NEEDS_USER_CONSENT", "consentUrl": ...}`; a UI may also
//!    ask for the link up front (`POST /resolver/v1/{installation}/consent`,
//!    same token). The link is `<public url>/oauth/consent?ticket=<t>`,
//!    where `t` names the installation and the token's user (`sub`) and
//!    expires after [`TICKET_SECONDS`].
//! 2. **`GET /oauth/consent?ticket=<t>`**: the browser follows the link.
//!    The server makes a `state` bound to (installation, account, expiry,
//!    a one-time nonce, this browser) and answers 302 to the site's
//!    `/authorize` with the app's client id, the installation's consented
//!    product scopes (and `offline_access`) and that state, setting a
//!    cookie that holds the browser's half of the binding.
//! 3. **`GET /oauth/callback?code=...&state=...`**: the site sends the
//!    browser back. The state must open, be unexpired, come with its
//!    cookie, and not have been used (the nonce is spent, across nodes, in
//!    the shared store). The code is exchanged at the site's token endpoint
//!    and the person who signed in (`/me`) must be the account the state
//!    names: a code from anyone else's consent (swapped or injected) is
//!    refused and nothing is kept. The tokens go into the installation's
//!    `token` namespace (`kiln_host::webtrigger::owner`), exactly where
//!    `asUser()` reads them; the consent is recorded (`user.consent`, actor
//!    `user:<account>`, never a code or a token) and a small page says so.
//!
//! **Why a ticket, and not the context token, in the link.** A context token
//! is a bearer credential for resolver calls; in a URL it would reach
//! browser history, proxy logs and `Referer` headers. The ticket only lets
//! its holder *start* a consent for one account, which completes only if
//! that very person signs in at the site, so a leaked link gives nothing.
//!
//! **Why sealed, not just signed.** Tickets and states are JSON sealed with
//! AES-256-GCM under the data key of the owner [`OWNER`]
//! (`Kvs::seal_blob`), with the purpose as associated data: they cannot be
//! forged or altered, a ticket does not open as a state (or the reverse),
//! the account id they carry is not readable in the URL, and every node
//! sharing the database opens what another node made, with no new key to
//! distribute.
//!
//! **Why a cookie.** The state alone says which account the flow is for;
//! the cookie ties the flow to the browser that started it (RFC 6749
//! §10.12), so a callback URL carried to another browser does nothing. It
//! is `Secure; HttpOnly; SameSite=Lax` (the site's redirect back is a
//! top-level GET, which Lax allows), scoped to the callback's path, named
//! per flow so two consents in one browser do not collide, and cleared
//! when the flow ends.
//!
//! **No PKCE.** The dev site does not implement it, and Atlassian's 3LO
//! gives confidential clients a client secret instead; the code is useless
//! without that secret, and the account check above defeats the code
//! injection PKCE is for.
//!
//! Only a Cloud product site (`[product] kind = "cloud"`, or the dev site
//! under `kiln dev`) has this flow; Data Center uses personal access tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use kiln_audit::{Actor, Auditor, Context, Event};
use kiln_kvs::{ErrorCode, KeyPolicy, Kvs, SetOptions, Ttl, TtlUnit};
use kiln_product::{ProductError, ProductGateway};
use kiln_store::{InstallationRecord, Store};
use kiln_types::InstallationId;
use serde::{Deserialize, Serialize};

/// The key-value owner whose data key seals tickets and states, and under
/// which spent nonces are kept until their state would have expired.
pub const OWNER: &str = "kiln:oauth-consent";

/// How long a consent link stays good: long enough for a person to read
/// the prompt and click.
pub const TICKET_SECONDS: u64 = 600;

/// How long a person may spend at the site's consent screen.
pub const STATE_SECONDS: u64 = 600;

/// Longest ticket or state read; what this server makes is far shorter.
const MAX_PARAM_LEN: usize = 2048;

/// The associated data of each kind of sealed value.
const TICKET_PURPOSE: &str = "oauth-consent:ticket:v1";
const STATE_PURPOSE: &str = "oauth-consent:state:v1";

/// Cookie names are this and the first characters of the flow's nonce.
const COOKIE_PREFIX: &str = "kiln_consent_";

/// Where a consent goes: one installation, one account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ticket {
    /// The installation's public id.
    i: String,
    /// The account the product vouched for.
    a: String,
    /// Expiry, seconds since the epoch.
    e: u64,
}

/// A flow in progress: the ticket's installation and account, and what
/// makes it single-use and bound to one browser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowState {
    i: String,
    a: String,
    e: u64,
    /// The one-time nonce (hex), spent at the callback.
    n: String,
    /// SHA-256 (hex) of the browser's cookie value.
    b: String,
}

impl FlowState {
    pub fn installation(&self) -> &str {
        &self.i
    }

    pub fn account_id(&self) -> &str {
        &self.a
    }
}

/// Why a ticket or state is refused. Shown to nobody in detail: the browser
/// gets a fixed page, the log gets this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not a consent value this server made: malformed, altered or made for another purpose")]
    Invalid,
    #[error("the consent link or state expired")]
    Expired,
    #[error("the state was already used")]
    Replayed,
    #[error("the callback came from another browser than the one that started the consent")]
    OtherBrowser,
    #[error("the store failed: {0}")]
    Store(String),
}

fn store_err(e: kiln_kvs::KvsError) -> StateError {
    match e.code {
        ErrorCode::DataCorrupted => StateError::Invalid,
        _ => StateError::Store(e.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex(len: usize) -> Result<String, StateError> {
    let mut bytes = vec![0u8; len];
    kiln_crypto::fill_random(&mut bytes).map_err(|e| StateError::Store(e.to_string()))?;
    Ok(hex(&bytes))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn seal<T: Serialize>(kvs: &Kvs, purpose: &str, value: &T) -> Result<String, StateError> {
    let json = serde_json::to_vec(value).map_err(|e| StateError::Store(e.to_string()))?;
    let sealed = kvs.seal_blob(OWNER, purpose, &json).await.map_err(store_err)?;
    Ok(B64.encode(sealed))
}

async fn open<T: for<'de> Deserialize<'de>>(kvs: &Kvs, purpose: &str, text: &str) -> Result<T, StateError> {
    if text.is_empty() || text.len() > MAX_PARAM_LEN {
        return Err(StateError::Invalid);
    }
    let sealed = B64.decode(text).map_err(|_| StateError::Invalid)?;
    let json = kvs.open_blob(OWNER, purpose, &sealed).await.map_err(store_err)?;
    serde_json::from_slice(&json).map_err(|_| StateError::Invalid)
}

/// A consent ticket for `account` on `installation`, good until `now` +
/// [`TICKET_SECONDS`].
async fn make_ticket(kvs: &Kvs, installation: &str, account: &str, now: u64) -> Result<String, StateError> {
    let ticket = Ticket { i: installation.to_owned(), a: account.to_owned(), e: now + TICKET_SECONDS };
    seal(kvs, TICKET_PURPOSE, &ticket).await
}

async fn open_ticket(kvs: &Kvs, text: &str, now: u64) -> Result<Ticket, StateError> {
    let ticket: Ticket = open(kvs, TICKET_PURPOSE, text).await?;
    if ticket.e <= now {
        return Err(StateError::Expired);
    }
    Ok(ticket)
}

/// A state for `installation` and `account`, and the browser's cookie
/// value that goes with it.
pub async fn make_state(
    kvs: &Kvs,
    installation: &str,
    account: &str,
    now: u64,
) -> Result<(String, FlowState, String), StateError> {
    let browser = random_hex(32)?;
    let flow = FlowState {
        i: installation.to_owned(),
        a: account.to_owned(),
        e: now + STATE_SECONDS,
        n: random_hex(16)?,
        b: kiln_crypto::Sha256::of(browser.as_bytes()).hex(),
    };
    let state = seal(kvs, STATE_PURPOSE, &flow).await?;
    Ok((state, flow, browser))
}

/// Open a state, check its time and the browser's cookie value (which
/// `browser` finds for the flow), and spend its nonce: a state is accepted
/// once, on whichever node sees it first. A refused state is not spent, so
/// someone who only saw it (in a log, a `Referer`) cannot use it up.
pub async fn accept_state(
    kvs: &Kvs,
    text: &str,
    browser: impl FnOnce(&FlowState) -> Option<String>,
    now: u64,
) -> Result<FlowState, StateError> {
    let flow: FlowState = open(kvs, STATE_PURPOSE, text).await?;
    if flow.e <= now {
        return Err(StateError::Expired);
    }
    let Some(browser) = browser(&flow) else { return Err(StateError::OtherBrowser) };
    let digest = kiln_crypto::Sha256::of(browser.as_bytes()).hex();
    if !kiln_crypto::constant_time_eq(digest.as_bytes(), flow.b.as_bytes()) {
        return Err(StateError::OtherBrowser);
    }
    // Kept a minute past the state's own expiry, after which the state is
    // refused as expired anyway.
    let ttl = Ttl { value: flow.e.saturating_sub(now) + 60, unit: TtlUnit::Seconds };
    let options = SetOptions { ttl: Some(ttl), key_policy: KeyPolicy::FailIfExists, return_value: None };
    match kvs.set(OWNER, &format!("used:{}", flow.n), &serde_json::Value::Bool(true), options).await {
        Ok(_) => Ok(flow),
        Err(e) if e.code == ErrorCode::KeyAlreadyExists => Err(StateError::Replayed),
        Err(e) => Err(StateError::Store(e.to_string())),
    }
}

/// The cookie a flow's browser half travels in.
fn cookie_name(flow_nonce: &str) -> String {
    format!("{COOKIE_PREFIX}{}", flow_nonce.get(..16).unwrap_or(flow_nonce))
}

/// What the consent routes need.
pub struct Consent {
    store: Store,
    kvs: Arc<Kvs>,
    product: Arc<ProductGateway>,
    auditor: Auditor,
    /// Where this server is reached, for the links it mints.
    public_url: String,
    /// The path of the redirect URI: the cookie is scoped to it.
    callback_path: String,
}

impl std::fmt::Debug for Consent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consent").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

impl Consent {
    /// The consent flow through `product`, or `None` when there is no
    /// product site or it has no OAuth consent (Data Center). Warns when the
    /// redirect URI the site is given is not this server's callback.
    pub fn new(
        store: Store,
        kvs: Arc<Kvs>,
        product: Option<&Arc<ProductGateway>>,
        auditor: Auditor,
        public_url: &str,
    ) -> Option<Consent> {
        let product = product?;
        let redirect = product.tokens().redirect_uri()?;
        let public_url = public_url.trim_end_matches('/').to_owned();
        let here = format!("{public_url}/oauth/callback");
        if redirect != here {
            // Behind a proxy the two may differ and still meet; if they do
            // not, the site sends people somewhere that cannot finish the
            // flow, and the cookie set at the link's host does not reach it.
            tracing::warn!(
                redirect_uri = redirect,
                callback = %here,
                "the product's redirect_uri is not this server's consent callback; \
                 user consent completes only if it reaches /oauth/callback here, on the same host"
            );
        }
        let callback_path = url::Url::parse(redirect)
            .map(|u| u.path().to_owned())
            .unwrap_or_else(|_| "/oauth/callback".to_owned());
        Some(Consent { store, kvs, product: product.clone(), auditor, public_url, callback_path })
    }

    /// A link that sends `account` (whom the product vouched for) to
    /// consent for `installation`.
    pub async fn link(&self, installation: &str, account: &str) -> Result<String, StateError> {
        let ticket = make_ticket(&self.kvs, installation, account, now_secs()).await?;
        Ok(format!("{}/oauth/consent?ticket={ticket}", self.public_url))
    }

    async fn installation(&self, public_id: &str) -> Result<Option<InstallationRecord>, Page> {
        let Ok(id) = InstallationId::parse(public_id) else { return Ok(None) };
        let found = async {
            let mut tx = self.store.begin_read().await?;
            let found = tx.installation_by_public_id(id.as_str()).await?;
            tx.commit().await?;
            Ok::<_, kiln_store::StoreError>(found)
        };
        found.await.map_err(|e| {
            tracing::warn!(error = %e, "consent: the installation could not be looked up");
            Page::unavailable()
        })
    }

    /// `GET /oauth/consent?ticket=`: off to the site's consent screen.
    async fn start(&self, query: &Query) -> Result<Response, Page> {
        let ticket = open_ticket(&self.kvs, query.get("ticket").unwrap_or_default(), now_secs())
            .await
            .map_err(|e| {
                tracing::info!(reason = %e, "consent refused: a bad consent link");
                Page::bad_link(&e)
            })?;
        let installation = self.installation(&ticket.i).await?.ok_or_else(Page::no_installation)?;
        let scopes: Vec<&str> = installation
            .consent
            .scopes
            .keys()
            .map(|s| s.as_str())
            .filter(|s| !kiln_manifest::scopes::PLATFORM_SCOPES.contains(s))
            .collect();
        if scopes.is_empty() {
            return Err(Page::new(
                StatusCode::BAD_REQUEST,
                "Nothing to consent to",
                "This app asks for no product permissions, so it never acts for you.",
            ));
        }
        let (state, flow, browser) =
            make_state(&self.kvs, &ticket.i, &ticket.a, now_secs()).await.map_err(|e| {
                tracing::warn!(error = %e, "consent: no state could be made");
                Page::unavailable()
            })?;
        let location = self.product.tokens().authorization_url(&scopes, &state).map_err(|e| {
            tracing::warn!(error = %e, "consent: no authorization URL");
            Page::unavailable()
        })?;
        let cookie = format!(
            "{}={browser}; Path={}; Max-Age={STATE_SECONDS}; Secure; HttpOnly; SameSite=Lax",
            cookie_name(&flow.n),
            self.callback_path
        );
        let mut res = StatusCode::FOUND.into_response();
        let headers = res.headers_mut();
        headers.insert(header::LOCATION, HeaderValue::try_from(location).map_err(|_| Page::unavailable())?);
        headers.insert(header::SET_COOKIE, HeaderValue::try_from(cookie).map_err(|_| Page::unavailable())?);
        Ok(res)
    }

    /// `GET /oauth/callback?code=&state=` (or `error=`): keep the tokens.
    async fn finish(
        &self,
        query: &Query,
        headers: &HeaderMap,
        source: Option<String>,
    ) -> Result<Response, Page> {
        let text = query.get("state").unwrap_or_default();
        let browser = |flow: &FlowState| cookie(headers, &cookie_name(&flow.n));
        let flow = accept_state(&self.kvs, text, browser, now_secs()).await.map_err(|e| {
            tracing::info!(reason = %e, "consent refused at the callback");
            match e {
                StateError::Store(_) => Page::unavailable(),
                other => Page::bad_link(&other),
            }
        })?;
        let clear = format!(
            "{}=; Path={}; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
            cookie_name(&flow.n),
            self.callback_path
        );
        let installation = self.installation(&flow.i).await?.ok_or_else(Page::no_installation)?;
        let app = installation.app.to_string();
        let ctx = Context { actor: Actor::User(flow.a.clone()), source };
        let event = |scopes: &[String]| Event::user_consent(&app, &flow.i, &flow.a, scopes);
        if let Some(error) = query.get("error") {
            // The person declined, or the site refused: only the error code,
            // kept to OAuth's alphabet, is recorded.
            let code: String =
                error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
            self.record(&ctx, event(&[]).denied(&format!("the site answered {code}"))).await?;
            return Err(Page::new(
                StatusCode::FORBIDDEN,
                "Consent not given",
                "The site did not give this app your consent, so it cannot act for you. \
                 Go back to the app to try again.",
            )
            .clearing(clear));
        }
        let Some(code) = query.get("code").filter(|c| !c.is_empty()) else {
            return Err(Page::new(
                StatusCode::BAD_REQUEST,
                "No authorization code",
                "Start again from the app.",
            )
            .clearing(clear));
        };
        let owner = kiln_host::webtrigger::owner(&installation);
        let tokens = self.product.tokens();
        let done = match tokens.complete_authorization_as(&owner, code, &flow.a).await {
            Ok(done) => done,
            Err(e) => {
                tracing::info!(error = %e, installation = %flow.i, "consent could not be completed");
                let (event, page) = match &e {
                    ProductError::ConsentByAnotherAccount => (
                        event(&[]).denied(&e.to_string()),
                        Page::new(StatusCode::FORBIDDEN, "Signed in as someone else", &e.to_string()),
                    ),
                    _ => (
                        event(&[]).failed(&e.to_string()),
                        Page::new(
                            StatusCode::BAD_GATEWAY,
                            "Consent not completed",
                            "The site's answer could not be used; go back to the app and try again.",
                        ),
                    ),
                };
                self.record(&ctx, event).await?;
                return Err(page.clearing(clear));
            }
        };
        if let Err(page) = self.record(&ctx, event(&done.scopes)).await {
            // A consent the trail cannot show does not stand.
            if let Err(e) = tokens.forget_user(&owner, &flow.a).await {
                tracing::warn!(error = %e, "consent: unrecorded tokens could not be removed");
            }
            return Err(page);
        }
        tracing::info!(installation = %flow.i, "a user consented to asUser() calls");
        let text = format!(
            "The app {app} may now act for you on this site, with: {}. \
             You can close this window and go back to the app.",
            done.scopes.join(", ")
        );
        Ok(Page::new(StatusCode::OK, "Consent recorded", &text).clearing(clear).into_response())
    }

    /// Append `event`; a page saying so if the trail cannot take it.
    async fn record(&self, ctx: &Context, event: Event) -> Result<(), Page> {
        self.auditor.record(&self.store, ctx, event).await.map(drop).map_err(|e| {
            tracing::warn!(error = %e, "consent: the outcome could not be recorded");
            Page::unavailable()
        })
    }
}

/// The query string's pairs.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(req: &Request) -> Query {
        let raw = req.uri().query().unwrap_or_default();
        Query(url::form_urlencoded::parse(raw.as_bytes()).into_owned().take(16).collect())
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&prefix).map(str::to_owned))
}

/// A small HTML answer for the person at the browser.
#[derive(Debug)]
struct Page {
    status: StatusCode,
    title: String,
    text: String,
    clear_cookie: Option<String>,
}

impl Page {
    /// `text` is HTML-escaped here.
    fn new(status: StatusCode, title: &str, text: &str) -> Page {
        Page { status, title: escape(title), text: escape(text), clear_cookie: None }
    }

    fn clearing(mut self, cookie: String) -> Page {
        self.clear_cookie = Some(cookie);
        self
    }

    fn bad_link(e: &StateError) -> Page {
        let why = match e {
            StateError::Expired => "This consent link has expired.",
            StateError::Replayed => "This consent was already used.",
            StateError::OtherBrowser => "This consent was started in another browser.",
            StateError::Invalid | StateError::Store(_) => "This consent link is not valid.",
        };
        Page::new(
            StatusCode::BAD_REQUEST,
            "Consent link not valid",
            &format!("{why} Go back to the app to start again."),
        )
    }

    fn no_installation() -> Page {
        Page::new(StatusCode::NOT_FOUND, "No such installation", "The app is no longer installed here.")
    }

    fn unavailable() -> Page {
        Page::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again later",
            "Kiln cannot record a consent right now.",
        )
    }
}

impl IntoResponse for Page {
    fn into_response(self) -> Response {
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body><h1>{t}</h1><p>{x}</p></body></html>",
            t = self.title,
            x = self.text
        );
        let mut res = (self.status, Html(body)).into_response();
        if let Some(cookie) = self.clear_cookie.and_then(|c| HeaderValue::try_from(c).ok()) {
            res.headers_mut().insert(header::SET_COOKIE, cookie);
        }
        res
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn source(req: &Request) -> Option<String> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string())
}

async fn start(State(consent): State<Arc<Consent>>, req: Request) -> Response {
    match consent.start(&Query::parse(&req)).await {
        Ok(res) => res,
        Err(page) => page.into_response(),
    }
}

async fn callback(State(consent): State<Arc<Consent>>, req: Request) -> Response {
    let from = source(&req);
    match consent.finish(&Query::parse(&req), req.headers(), from).await {
        Ok(res) => res,
        Err(page) => page.into_response(),
    }
}

/// `GET /oauth/consent` and `GET /oauth/callback`.
pub fn router(consent: Arc<Consent>) -> Router {
    Router::new()
        .route("/oauth/consent", axum::routing::get(start))
        .route("/oauth/callback", axum::routing::get(callback))
        .with_state(consent)
}

/// What other modules' tests may look at.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// The (installation, account) of a ticket, if it opens now.
    pub(crate) async fn open_ticket(kvs: &Kvs, ticket: &str) -> Result<(String, String), StateError> {
        super::open_ticket(kvs, ticket, now_secs()).await.map(|t| (t.i, t.a))
    }
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

    const INSTALLATION: &str = "0b5a0c38-5c2d-4d3e-9f5c-1a2b3c4d5e6f";
    const ALICE: &str = "557058:alice";

    async fn kvs() -> Kvs {
        let store = Store::open_in_memory().await.unwrap();
        let key = base64::engine::general_purpose::STANDARD.encode([9u8; 32]);
        let provider = kiln_crypto::keys::EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap();
        Kvs::new(store, Arc::new(provider))
    }

    /// A browser that holds `value` as its consent cookie.
    fn with(value: &str) -> impl FnOnce(&FlowState) -> Option<String> + use<> {
        let value = value.to_owned();
        move |_| Some(value)
    }

    /// A sealed value with one byte of its ciphertext changed, re-encoded.
    fn tampered(text: &str, at: usize) -> String {
        let mut bytes = B64.decode(text).unwrap();
        let i = at.min(bytes.len() - 1);
        bytes[i] ^= 0x01;
        B64.encode(bytes)
    }

    #[tokio::test]
    async fn a_state_is_accepted_once_in_its_browser_and_carries_its_installation_and_account() {
        let kvs = kvs().await;
        let now = 1_800_000_000;
        let (state, flow, browser) = make_state(&kvs, INSTALLATION, ALICE, now).await.unwrap();
        assert!(!state.contains(ALICE) && !state.contains("alice"), "the account is not readable: {state}");
        assert!(state.len() < 1024, "{}", state.len());
        let accepted = accept_state(&kvs, &state, with(&browser), now + 10).await.unwrap();
        assert_eq!(accepted, flow);
        assert_eq!((accepted.installation(), accepted.account_id()), (INSTALLATION, ALICE));
        // Replayed: the nonce is spent.
        assert_eq!(accept_state(&kvs, &state, with(&browser), now + 11).await, Err(StateError::Replayed));
    }

    #[tokio::test]
    async fn tampered_forged_and_cross_purpose_values_are_refused() {
        let kvs = kvs().await;
        let now = 1_800_000_000;
        let (state, _, browser) = make_state(&kvs, INSTALLATION, ALICE, now).await.unwrap();
        let len = B64.decode(&state).unwrap().len();
        for at in [0, 5, 20, len / 2, len - 1] {
            assert_eq!(
                accept_state(&kvs, &tampered(&state, at), with(&browser), now).await,
                Err(StateError::Invalid),
                "byte {at}"
            );
        }
        // Not base64, empty, too long, or JSON that was never sealed.
        for bad in ["%%%", "", &"A".repeat(MAX_PARAM_LEN + 4), &B64.encode(br#"{"i":"x","a":"mallory"}"#)] {
            assert_eq!(accept_state(&kvs, bad, with(&browser), now).await, Err(StateError::Invalid));
        }
        // A ticket does not open as a state, nor a state as a ticket.
        let ticket = make_ticket(&kvs, INSTALLATION, ALICE, now).await.unwrap();
        assert_eq!(accept_state(&kvs, &ticket, with(&browser), now).await, Err(StateError::Invalid));
        assert_eq!(open_ticket(&kvs, &state, now).await, Err(StateError::Invalid));
        // Another server's key (another database): refused.
        let elsewhere = self::kvs().await;
        assert_eq!(accept_state(&elsewhere, &state, with(&browser), now).await, Err(StateError::Invalid));
        // The untouched state still works: refusals spent nothing.
        assert!(accept_state(&kvs, &state, with(&browser), now).await.is_ok());
    }

    #[tokio::test]
    async fn expired_tickets_and_states_are_refused() {
        let kvs = kvs().await;
        let now = 1_800_000_000;
        let ticket = make_ticket(&kvs, INSTALLATION, ALICE, now).await.unwrap();
        assert_eq!(open_ticket(&kvs, &ticket, now + TICKET_SECONDS - 1).await.unwrap().a, ALICE);
        assert_eq!(open_ticket(&kvs, &ticket, now + TICKET_SECONDS).await, Err(StateError::Expired));
        let (state, _, browser) = make_state(&kvs, INSTALLATION, ALICE, now).await.unwrap();
        assert_eq!(
            accept_state(&kvs, &state, with(&browser), now + STATE_SECONDS).await,
            Err(StateError::Expired)
        );
        assert!(accept_state(&kvs, &state, with(&browser), now + STATE_SECONDS - 1).await.is_ok());
    }

    #[tokio::test]
    async fn a_state_without_its_browsers_cookie_is_refused_and_not_spent() {
        let kvs = kvs().await;
        let now = 1_800_000_000;
        let (state, _, browser) = make_state(&kvs, INSTALLATION, ALICE, now).await.unwrap();
        assert_eq!(accept_state(&kvs, &state, |_| None, now).await, Err(StateError::OtherBrowser));
        let (_, _, other) = make_state(&kvs, INSTALLATION, ALICE, now).await.unwrap();
        assert_eq!(accept_state(&kvs, &state, with(&other), now).await, Err(StateError::OtherBrowser));
        assert!(accept_state(&kvs, &state, with(&browser), now).await.is_ok());
    }

    #[test]
    fn cookies_are_found_by_name_and_pages_escape_what_they_show() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; kiln_consent_abc=xyz; b=2"));
        assert_eq!(cookie(&headers, "kiln_consent_abc").as_deref(), Some("xyz"));
        assert_eq!(cookie(&headers, "kiln_consent_ab"), None);
        assert_eq!(cookie_name("0123456789abcdef0123"), "kiln_consent_0123456789abcdef");
        let page = Page::new(StatusCode::OK, "<t>", "a \"b\" & <script>");
        assert_eq!(page.text, "a &quot;b&quot; &amp; &lt;script&gt;");
    }
}
