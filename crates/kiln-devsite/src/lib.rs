//! `kiln-devsite`: an emulated Jira and Confluence site, with Atlassian's
//! OAuth endpoints, for local development and tests — so that Kiln's
//! product gateway and the apps behind it can be exercised end to end
//! without a real Atlassian tenant.
//!
//! One HTTPS server ([`start`], over `kiln_http::serve`) speaks:
//!
//! - **OAuth 2.0 (3LO)** as auth.atlassian.com / api.atlassian.com do:
//!   `GET|POST /authorize` (exact redirect URIs; a consent page listing the
//!   seeded people, or the dev-only `login_as=<accountId>` to consent at
//!   once), `POST /oauth/token` (`authorization_code`, rotating
//!   `refresh_token` with reuse detection that revokes the whole grant,
//!   `client_credentials` for a client's service account),
//!   `GET /oauth/token/accessible-resources` and `GET /me`.
//! - **Cloud product APIs** under `/ex/jira/{cloudId}/rest/api/{3,2}` and
//!   `/ex/confluence/{cloudId}/wiki/{api/v2,rest/api}`, for access tokens
//!   this site issued, each call checked against
//!   `kiln_policy::product::check` (the route→scope table from Atlassian's
//!   OpenAPI documents): a token without the route's scopes gets
//!   `401 {"code":401,"message":"Unauthorized; scope does not match"}`.
//! - **Data Center APIs** under `/jira/rest/api/2` and `/confluence/rest/api`,
//!   for seeded personal access tokens, with no scopes.
//! - **Context tokens** for UI modules' resolver calls to `kiln serve`:
//!   `POST /kiln/context-token` signs (Ed25519) who is looking at which
//!   issue or page for which installation and module, for at most five
//!   minutes; `GET /kiln/context-keys` publishes the public key. See
//!   [`context`](crate::ContextRequest) for the shape and the trust model.
//!
//! The same handlers serve every prefix, and enforce the acting person's
//! project permissions from the [`Seed`] (an issue they cannot browse is a
//! 404). Changes can be posted as signed product events to an
//! [`EventSink`]; [`verify_signature`] is the receiving side's check.
//!
//! What it emulates, per API:
//! - Jira: create/get/edit (with changelog)/delete issues, transitions
//!   (global ones, from the seed's workflow), comments, search (`/search`
//!   and the enhanced `/search/jql`) with a small JQL subset — `project`,
//!   `status` and `key` equalities joined by `AND`, `ORDER BY created` —
//!   projects, system fields, users, `mypermissions`, `permissions/check`,
//!   `serverInfo`. Descriptions and comments as strings or ADF.
//! - Jira Software DevOps (Cloud prefix only, `/ex/jira/{cloudId}/rest`):
//!   builds and deployments — bulk submit, get and delete by key, bulk
//!   delete by properties, deployment gating status (always `allowed`);
//!   see [`DevSite::builds`] and [`DevSite::deployments`].
//! - Confluence: v2 pages (get, create, update with version checks,
//!   children, list by space) and spaces; v1 `content/{id}`. Storage format
//!   only.
//!
//! Two consequences of checking every Cloud call against the scope table:
//! a route the table does not know, or gives no OAuth scope (Jira's
//! `serverInfo`), is refused on the Cloud prefixes as a scope mismatch,
//! just as the gateway would refuse it (it works on the Data Center
//! prefix). `/me` accepts any live token; Atlassian also wants `read:me`.
//!
//! What it deliberately does not emulate: any other route (unknown routes
//! are 404s), JQL beyond the subset (refused
//! with a 400 naming the unsupported part), `update` operations on issue
//! edits, fields set during a transition (ignored), custom fields, issue
//! links, attachments, watchers, worklogs, sub-tasks, per-status
//! transitions, Confluence space permissions (everyone may read and write
//! every space), drafts, other body formats, cursors beyond the first page,
//! rate limiting, Connect/JWT authentication, webhooks in Atlassian's own
//! format (events are Kiln's signed shape), and persistence (all state is in
//! memory and gone at shutdown). The consent page has no CSRF protection:
//! it is for a developer's own machine and tests only.

#![forbid(unsafe_code)]

mod api;
mod confluence;
mod context;
mod devops;
mod events;
mod faults;
mod gate;
mod jira;
mod jql;
mod oauth;
mod seed;
mod site;
mod time;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware::{from_fn, from_fn_with_state};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub use context::{ContextError, ContextRequest, MAX_TTL_SECONDS};
pub use devops::DevopsEntity;
pub use events::{EventSinkError, sign, verify_signature};
pub use faults::Fault;
pub use seed::{
    ALICE, BOB, CAROL, KILN_APP, Permission, Seed, SeedClient, SeedError, SeedIssue, SeedPage, SeedPat,
    SeedProject, SeedSpace, SeedStatus, SeedTransition, SeedUser, StatusCategory,
};

use crate::site::{Site, lock};

/// The largest request body the site reads; larger ones get 413.
const MAX_BODY: usize = 1024 * 1024;

/// What a dev site starts with.
#[derive(Debug, Clone)]
pub struct DevSiteConfig {
    pub seed: Seed,
    /// Where product events go; none are sent without one.
    pub events: Option<EventSink>,
}

/// An HTTPS endpoint that receives signed product events.
#[derive(Clone)]
pub struct EventSink {
    /// `https://host:port/path`.
    pub url: String,
    /// The HMAC key (at least 16 bytes).
    pub secret: Vec<u8>,
    /// The roots the receiver's certificate must chain to.
    pub roots_pem: String,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").field("url", &self.url).finish_non_exhaustive()
    }
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// An OAuth access token this site issued.
    OAuth,
    /// A Data Center personal access token.
    Pat,
    /// None (the OAuth endpoints themselves, or a refused request).
    Anonymous,
}

/// A request the site received, for tests to inspect (asApp calls carry the
/// client's service account, asUser calls the consenting person).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub account_id: Option<String>,
    pub via: Via,
    pub status: u16,
}

/// One product event's delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub event_type: String,
    pub body: serde_json::Value,
    /// The receiver's last answer, if it answered.
    pub status: Option<u16>,
    pub attempts: u32,
    /// Why the last attempt failed to reach the receiver, if it did.
    pub error: Option<String>,
}

/// Why a site cannot start; [`start`] reports these as
/// `std::io::ErrorKind::InvalidInput`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DevSiteError {
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error(transparent)]
    EventSink(#[from] EventSinkError),
}

/// Serve a dev site over HTTPS on `listener` until the handle is shut down
/// or dropped.
pub async fn start(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    config: DevSiteConfig,
) -> std::io::Result<DevSite> {
    let invalid = |e: DevSiteError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
    let addr = listener.local_addr()?;
    let (dir, content) = site::build(&config.seed).map_err(|e| invalid(e.into()))?;
    let deliveries: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    // Made here and never written out: a restarted site has a new key, and
    // servers configured with the old one refuse its tokens.
    let context_key = kiln_crypto::jws::Ed25519Signer::generate()
        .map_err(|e| std::io::Error::other(format!("cannot make the context-token key: {e}")))?;
    let outbox = config
        .events
        .map(|sink| events::Outbox::start(sink, deliveries.clone()))
        .transpose()
        .map_err(|e| invalid(e.into()))?;
    let site = Arc::new(Site {
        dir,
        base_url: format!("https://{addr}"),
        content: Mutex::new(content),
        devops: Mutex::default(),
        tokens: Mutex::default(),
        log: Mutex::default(),
        outbox,
        deliveries,
        context_key,
        faults: Mutex::default(),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(kiln_http::serve(listener, tls, router(site.clone()), async {
        let _ = stopped.await;
    }));
    Ok(DevSite { addr, site, stop: Mutex::new(Some(stop)) })
}

/// Every API under its prefixes, behind the gate.
fn router(site: Arc<Site>) -> Router {
    let jira = jira::routes();
    let v1 = confluence::v1_routes();
    Router::new()
        .nest("/ex/jira/{cloud_id}/rest/api/3", jira.clone())
        .nest("/ex/jira/{cloud_id}/rest/api/2", jira.clone())
        .nest("/ex/jira/{cloud_id}/rest", devops::routes())
        .nest("/jira/rest/api/2", jira)
        .nest("/ex/confluence/{cloud_id}/wiki/api/v2", confluence::v2_routes())
        .nest("/ex/confluence/{cloud_id}/wiki/rest/api", v1.clone())
        .nest("/confluence/rest/api", v1)
        .merge(oauth::routes())
        .merge(context::routes())
        .merge(faults::routes())
        .fallback(|| async {
            api::reply(StatusCode::NOT_FOUND, json!({ "code": 404, "message": "Not Found" }))
        })
        .layer(from_fn_with_state(site.clone(), gate::gate))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(from_fn(kiln_http::security_headers))
        .with_state(site)
}

/// A running dev site. Dropping it shuts it down.
#[derive(Debug)]
pub struct DevSite {
    addr: SocketAddr,
    site: Arc<Site>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl DevSite {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.site.base_url
    }

    pub fn cloud_id(&self) -> &str {
        &self.site.dir.cloud_id
    }

    /// The site it emulates (`https://<seed site>`): what installations
    /// on it name, and what its context tokens and events say.
    pub fn site_url(&self) -> String {
        format!("https://{}", self.site.dir.site_host)
    }

    /// Stop accepting connections (idempotent; also done on drop).
    pub fn shutdown(&self) {
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
    }

    /// An issue as `GET /rest/api/3/issue/{key}?expand=changelog` shows it
    /// to someone who may see it.
    pub fn issue(&self, key: &str) -> Option<serde_json::Value> {
        let content = lock(&self.site.content);
        let issue = content.issue(key)?;
        let view = jira::View { adf: true, fields: jira::Fields::All, changelog: true };
        Some(jira::issue_json(&self.site.dir, issue, &view))
    }

    /// A page as `GET /wiki/api/v2/pages/{id}?body-format=storage` shows it.
    pub fn page(&self, id: &str) -> Option<serde_json::Value> {
        let content = lock(&self.site.content);
        let page = content.pages.get(&id.parse().ok()?)?;
        Some(confluence::page_json(&self.site.dir, page, true))
    }

    /// Builds the DevOps API holds, by pipeline id and build number.
    pub fn builds(&self) -> Vec<DevopsEntity> {
        lock(&self.site.devops).builds.values().cloned().collect()
    }

    /// Deployments the DevOps API holds, by pipeline, environment and
    /// deployment sequence number.
    pub fn deployments(&self) -> Vec<DevopsEntity> {
        lock(&self.site.devops).deployments.values().cloned().collect()
    }

    /// Requests received so far, oldest first.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.site.log).requests.iter().cloned().collect()
    }

    /// Events sent (or given up on) so far, in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.site.deliveries).clone()
    }

    /// Wait until at least `n` deliveries are recorded or `timeout` passes;
    /// returns them.
    pub async fn wait_for_deliveries(&self, n: usize, timeout: Duration) -> Vec<Delivery> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let got = self.deliveries();
            if got.len() >= n || tokio::time::Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The public keys that verify this site's context tokens, as
    /// `GET /kiln/context-keys` publishes them.
    pub fn context_keys(&self) -> kiln_crypto::jws::JwkSet {
        context::key_set(&self.site)
    }

    /// A context token as `POST /kiln/context-token` makes one for
    /// `request` (the person from `request.account_id`).
    pub fn context_token(&self, request: &ContextRequest) -> Result<String, ContextError> {
        context::issue(&self.site, request, None).map(|(token, _)| token)
    }

    /// Make every access token issued so far expired (to test refreshing).
    pub fn expire_access_tokens(&self) {
        lock(&self.site.tokens).expire_all();
    }

    /// `/oauth/token` requests by grant type (`authorization_code`,
    /// `refresh_token`, `client_credentials`, or `unsupported`).
    pub fn token_requests(&self) -> BTreeMap<String, usize> {
        oauth::counts(&self.site)
    }
}

impl Drop for DevSite {
    fn drop(&mut self) {
        self.shutdown();
    }
}
