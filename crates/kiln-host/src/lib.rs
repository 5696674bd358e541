//! `kiln-host`: the server's side of an invocation's host calls.
//!
//! The worker is assumed compromised: it holds no keys, tokens, database
//! handles or sockets, and everything it asks arrives here as a
//! capability name and JSON arguments. [`InvocationHost`] decides each
//! call against the invocation's [`InvocationGrants`] (which the server
//! builds from the installation's consented grants and the invocation's
//! context, never from anything the worker says), serves it through the
//! gateways, and writes every egress and product decision to the audit
//! trail before the app sees the answer: an answer whose record cannot be
//! written is replaced by an error.
//!
//! Capabilities:
//! - `fetch` → [`kiln_egress::Gateway`]: `{url, method, headers: [[k, v]],
//!   body: base64 | null}` → `{status, statusText, headers, body, url}`.
//!   The per-minute limit answers HTTP 429 with `FETCH_LIMIT_EXCEEDED`,
//!   as Forge does.
//! - `product.request` → [`kiln_product::ProductGateway`]: `{product,
//!   as: "app" | "user" | "none", accountId, path, method, headers, body}`
//!   → the same reply shape.
//! - `kvs.get`, `kvs.set`, `kvs.delete`, `kvs.query`, `kvs.batchGet`,
//!   `kvs.batchSet`, `kvs.batchDelete`, `kvs.getSecret`, `kvs.setSecret`,
//!   `kvs.deleteSecret` → [`kiln_kvs::Kvs`], always for the invocation's
//!   installation (see [`kvs`] for the contract). These are the app's own
//!   data and are not audited.
//! - `queue.push`, `queue.job.stats`, `queue.job.cancel` → `@forge/events`
//!   queues of the invocation's installation, stored as durable jobs (see
//!   [`queue`] for the contract). Not audited either: the events are the
//!   app's own data, delivered only to the app's own consumers.
//! - `webtrigger.getUrl`, `webtrigger.queryUrls`, `webtrigger.deleteUrl`
//!   → the invocation's installation's web trigger URLs (see
//!   [`webtrigger`] for the contract and Forge's limits).
//!
//! Host calls are answered one at a time, in the order the worker sends
//! them; `Promise.all` over several fetches runs them one after another.

#![forbid(unsafe_code)]

pub mod kvs;
pub mod queue;
pub mod webtrigger;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use kiln_audit::{Actor, Auditor, Context, EgressHop, Event, ProductCall};
use kiln_egress::{Budget, EgressRecord, FetchError, FetchRequest, Gateway};
use kiln_ipc::HostReply;
use kiln_manifest::EgressTarget;
use kiln_product::{Acting, Installation, Product, ProductGateway, ProductRecord, ProductRequest};
use kiln_sandbox::HostHandler;
use kiln_store::Store;
use kiln_types::Environment;
use serde_json::{Value, json};

/// What the server gives every invocation's host calls.
pub struct Host {
    runtime: tokio::runtime::Handle,
    store: Store,
    auditor: Auditor,
    egress: Arc<Gateway>,
    product: Option<Arc<ProductGateway>>,
    /// Where `kiln serve` is reached, for `webTrigger.getUrl`.
    public_url: Option<String>,
    kvs: Option<Arc<kiln_kvs::Kvs>>,
    decisions: DecisionCounts,
    /// Forge's per-minute limits on `webTrigger` calls, on this node.
    webtrigger_limits: webtrigger::UrlLimits,
}

/// How many egress and product decisions this host made, by outcome, for
/// the server's metrics. Counted as decided (each egress hop, each product
/// call), whether or not the audit record could then be written; reading
/// them changes nothing.
#[derive(Debug, Default)]
pub struct DecisionCounts {
    egress_allowed: std::sync::atomic::AtomicU64,
    egress_denied: std::sync::atomic::AtomicU64,
    product_allowed: std::sync::atomic::AtomicU64,
    product_refused: std::sync::atomic::AtomicU64,
}

impl DecisionCounts {
    fn egress_decided(&self, allowed: bool) {
        let counter = if allowed { &self.egress_allowed } else { &self.egress_denied };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn product_decided(&self, allowed: bool) {
        let counter = if allowed { &self.product_allowed } else { &self.product_refused };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Egress hops allowed and denied.
    pub fn egress(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.egress_allowed.load(Relaxed), self.egress_denied.load(Relaxed))
    }

    /// Product calls allowed and refused (scope, impersonation, shape).
    pub fn product(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.product_allowed.load(Relaxed), self.product_refused.load(Relaxed))
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("product", &self.product.is_some())
            .field("kvs", &self.kvs.is_some())
            .finish_non_exhaustive()
    }
}

impl Host {
    /// `runtime` drives the gateways and the store: the handler blocks on
    /// it from the thread running the invocation, which must not be one of
    /// its workers. Without `product` or `kvs`, those capabilities answer
    /// that this Kiln does not offer them.
    pub fn new(
        runtime: tokio::runtime::Handle,
        store: Store,
        auditor: Auditor,
        egress: Arc<Gateway>,
        product: Option<Arc<ProductGateway>>,
        kvs: Option<Arc<kiln_kvs::Kvs>>,
    ) -> Self {
        let decisions = DecisionCounts::default();
        let webtrigger_limits = webtrigger::UrlLimits::default();
        Host { runtime, store, auditor, egress, product, kvs, public_url: None, decisions, webtrigger_limits }
    }

    /// Where the server is reached (`https://host[:port]`), so app code can
    /// ask for its web trigger URLs.
    pub fn with_public_url(mut self, url: &str) -> Self {
        self.public_url = Some(url.trim_end_matches('/').to_owned());
        self
    }

    /// The decisions made so far, by outcome.
    pub fn decisions(&self) -> &DecisionCounts {
        &self.decisions
    }

    /// The product gateway, when this Kiln has a product site: the server's
    /// consent routes complete users' OAuth consent through the same
    /// gateway, so the tokens land where `asUser()` looks for them.
    pub fn product(&self) -> Option<&Arc<ProductGateway>> {
        self.product.as_ref()
    }

    /// A handler for one invocation; refused for a production
    /// installation while the egress gateway may reach loopback (a test
    /// setting).
    pub fn invocation<'a>(&'a self, grants: &'a InvocationGrants) -> Result<InvocationHost<'a>, HostError> {
        if grants.environment.is_production() && self.egress.config().insecure_allow_loopback {
            return Err(HostError::InsecureInProduction);
        }
        Ok(InvocationHost {
            host: self,
            grants,
            budget: Budget::new(self.egress.config()),
            ctx: Context { actor: Actor::App(grants.app.clone()), source: None },
            needs_user_consent: false,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(
        "the egress gateway runs with insecure_allow_loopback, a setting for tests; \
         Kiln refuses to run a production installation's code with it"
    )]
    InsecureInProduction,
}

/// What one invocation may do: decided by the server.
#[derive(Debug, Clone)]
pub struct InvocationGrants {
    pub app: String,
    /// The installation's id, for the audit trail.
    pub installation: String,
    /// The installation's row, when there is one (`kiln invoke` has none):
    /// what `webTrigger.getUrl` makes URLs for.
    pub installation_row: Option<i64>,
    /// The installation's environment: production refuses insecure settings.
    pub environment: Environment,
    /// The consented `permissions.external.fetch.backend`.
    pub egress: Vec<EgressTarget>,
    /// The consented scopes, and the installation's owner in the key-value
    /// store: its tokens, and the app's own entries and secrets.
    pub product: Installation,
    /// The user in session, if the invocation has one (a resolver called
    /// from the UI); none for web triggers, triggers and consumers.
    pub user: Option<String>,
}

/// Where an invocation comes from, for [`runtime_description`].
#[derive(Debug, Clone, Copy)]
pub struct RuntimeSource<'a> {
    /// The app's id, an ARI (`ari:cloud:ecosystem::app/<uuid>`).
    pub app: &'a str,
    /// The version the installation runs, when there is one.
    pub version: Option<&'a str>,
    pub environment: &'a Environment,
    pub installation: &'a str,
    pub module_key: &'a str,
    /// The installation's consented grants.
    pub grants: &'a kiln_manifest::Grants,
    /// The user in session, if any (`authorize()` checks their permissions).
    pub account_id: Option<&'a str>,
}

/// What the app's `getAppContext()` and `permissions` see, sent with each
/// invocation: ARIs, the module, and the consented scopes and egress.
/// Never a token, a secret or another installation's data.
pub fn runtime_description(source: &RuntimeSource<'_>) -> Value {
    use kiln_manifest::ExternalKind;
    let app_uuid = source.app.rsplit('/').next().unwrap_or(source.app);
    let environment = source.environment.to_string();
    let mut external = serde_json::Map::new();
    let mut fetch = serde_json::Map::new();
    for (kind, entries) in &source.grants.egress {
        let list: Vec<String> = entries.iter().map(|e| e.target.to_string()).collect();
        match kind {
            ExternalKind::FetchBackend => drop(fetch.insert("backend".into(), json!(list))),
            ExternalKind::FetchClient => drop(fetch.insert("client".into(), json!(list))),
            other => {
                let name = other.manifest_path().rsplit('.').next().unwrap_or_default();
                external.insert(name.to_owned(), json!(list));
            }
        }
    }
    if !fetch.is_empty() {
        external.insert("fetch".into(), Value::Object(fetch));
    }
    let scopes: Vec<&str> = source.grants.scopes.keys().map(|s| s.as_str()).collect();
    json!({
        "appContext": {
            "appAri": source.app,
            "appVersion": source.version,
            "environmentAri": format!("ari:cloud:ecosystem::environment/{app_uuid}/{environment}"),
            "environmentType": environment.to_ascii_uppercase(),
            "installationAri": format!("ari:cloud:ecosystem::installation/{}", source.installation),
            "moduleKey": source.module_key,
            "license": null,
        },
        "permissions": { "scopes": scopes, "external": external },
        "aaid": source.account_id,
    })
}

/// Serves one invocation's host calls.
pub struct InvocationHost<'a> {
    host: &'a Host,
    grants: &'a InvocationGrants,
    budget: Budget,
    ctx: Context,
    needs_user_consent: bool,
}

impl std::fmt::Debug for InvocationHost<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvocationHost").field("app", &self.grants.app).finish_non_exhaustive()
    }
}

fn err(code: &str, message: impl Into<String>) -> HostReply {
    HostReply::Err { code: code.to_owned(), message: message.into() }
}

const BAD_CALL: &str = "INVALID_HOST_CALL";

/// The reply shape both gateways answer with.
fn response(
    status: u16,
    status_text: &str,
    headers: &[(String, String)],
    body: &[u8],
    url: &str,
) -> HostReply {
    let headers: Vec<[&str; 2]> = headers.iter().map(|(k, v)| [k.as_str(), v.as_str()]).collect();
    HostReply::Ok {
        value: json!({
            "status": status,
            "statusText": status_text,
            "headers": headers,
            "body": B64.encode(body),
            "url": url,
        }),
    }
}

/// The arguments both capabilities share: method, headers and body.
struct Message {
    method: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn string<'v>(args: &'v Value, name: &str) -> Result<&'v str, HostReply> {
    args.get(name).and_then(Value::as_str).ok_or_else(|| err(BAD_CALL, format!("'{name}' must be a string")))
}

fn message(args: &Value) -> Result<Message, HostReply> {
    let method = string(args, "method")?.to_owned();
    let headers = match args.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(pairs)) => pairs
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => Ok((k.clone(), v.clone())),
                _ => Err(err(BAD_CALL, "'headers' must be a list of [name, value] strings")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err(BAD_CALL, "'headers' must be a list of [name, value] strings")),
    };
    let body = match args.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(b)) => B64.decode(b).map_err(|_| err(BAD_CALL, "'body' is not base64"))?,
        Some(_) => return Err(err(BAD_CALL, "'body' must be base64 text or null")),
    };
    Ok(Message { method, headers, body })
}

impl InvocationHost<'_> {
    /// Whether an `asUser()` call for the user in session was refused
    /// because that user has not consented (or their consent ended). The
    /// server decides this from its own gateway's answer, not from anything
    /// the app says, so a resolver that then fails can send the user to
    /// consent without showing them the app's error.
    pub fn needs_user_consent(&self) -> bool {
        self.needs_user_consent
    }

    fn fetch(&mut self, args: &Value) -> HostReply {
        let url = match string(args, "url") {
            Ok(u) => u.to_owned(),
            Err(reply) => return reply,
        };
        let m = match message(args) {
            Ok(m) => m,
            Err(reply) => return reply,
        };
        let request =
            FetchRequest { method: m.method.clone(), url: url.clone(), headers: m.headers, body: m.body };
        let host = self.host;
        let mut records = Vec::new();
        let result = host.runtime.block_on(host.egress.fetch(
            &self.grants.egress,
            &self.budget,
            request,
            &mut records,
        ));
        // A refusal before any hop (a malformed URL, the rate limit) is a
        // decision too.
        if records.is_empty()
            && let Err(e) = &result
        {
            records.push(EgressRecord {
                method: m.method.to_ascii_uppercase(),
                host: host_of(&url),
                port: 0,
                address: None,
                allowed: false,
                status: None,
                request_bytes: 0,
                response_bytes: 0,
                reason: Some(e.to_string()),
                insecure: false,
            });
        }
        for r in &records {
            host.decisions.egress_decided(r.allowed);
        }
        if let Err(reply) = self.record(records.iter().map(|r| self.egress_event(r)).collect()) {
            return reply;
        }
        match result {
            Ok(res) => response(res.status, &res.status_text, &res.headers, &res.body, &res.url),
            Err(FetchError::RateLimited(n)) => {
                let body = json!({
                    "code": "FETCH_LIMIT_EXCEEDED",
                    "message": format!("more than {n} fetch requests in a minute in this invocation"),
                });
                let headers = [("content-type".to_owned(), "application/json".to_owned())];
                response(429, "Too Many Requests", &headers, body.to_string().as_bytes(), &url)
            }
            Err(e) => err(e.code(), e.to_string()),
        }
    }

    fn egress_event(&self, r: &EgressRecord) -> Event {
        let address = r.address.map(|a| a.to_string());
        let hop = EgressHop {
            method: &r.method,
            host: &r.host,
            port: r.port,
            address: address.as_deref(),
            allowed: r.allowed,
            status: r.status,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            reason: r.reason.as_deref(),
            insecure: r.insecure,
        };
        Event::egress(&self.grants.app, &self.grants.installation, &hop)
    }

    fn product(&mut self, args: &Value) -> HostReply {
        let Some(gateway) = self.host.product.clone() else {
            return err(
                "RequestProductNotAllowedError",
                "this Kiln has no Jira or Confluence site configured",
            );
        };
        let product = match string(args, "product").map(Product::parse) {
            Ok(Some(p)) => p,
            Ok(None) => return err(BAD_CALL, "'product' must be \"jira\" or \"confluence\""),
            Err(reply) => return reply,
        };
        let account = match args.get("accountId") {
            None | Some(Value::Null) => None,
            Some(Value::String(a)) => Some(a.clone()),
            Some(_) => return err(BAD_CALL, "'accountId' must be a string or null"),
        };
        // Who the call acts for is decided here, from the invocation: the
        // worker can only say which kind it wants.
        let acting = match (string(args, "as"), account) {
            (Ok("none"), _) => Acting::Nobody,
            (Ok("app"), _) => Acting::App,
            (Ok("user"), None) => match &self.grants.user {
                Some(user) => Acting::User(user.clone()),
                None => {
                    return err(
                        "NeedsAuthenticationError",
                        "asUser() needs a user in session, and this invocation has none; \
                         use asApp() or asUser(accountId)",
                    );
                }
            },
            (Ok("user"), Some(a)) if self.grants.user.as_deref() == Some(a.as_str()) => Acting::User(a),
            (Ok("user"), Some(a)) => Acting::Impersonate(a),
            (Ok(_), _) => return err(BAD_CALL, "'as' must be \"app\", \"user\" or \"none\""),
            (Err(reply), _) => return reply,
        };
        let path = match string(args, "path") {
            Ok(p) => p.to_owned(),
            Err(reply) => return reply,
        };
        let m = match message(args) {
            Ok(m) => m,
            Err(reply) => return reply,
        };
        let for_session_user = matches!(acting, Acting::User(_));
        let request =
            ProductRequest { product, acting, method: m.method, path, headers: m.headers, body: m.body };
        let (result, record) = self.host.runtime.block_on(gateway.request(&self.grants.product, request));
        if for_session_user && matches!(result, Err(kiln_product::ProductError::NeedsAuthentication(_))) {
            self.needs_user_consent = true;
        }
        self.host.decisions.product_decided(record.refused.is_none());
        if let Err(reply) = self.record(vec![self.product_event(&record)]) {
            return reply;
        }
        match result {
            Ok(res) => response(res.status, &res.status_text, &res.headers, &res.body, ""),
            Err(e) => err(e.code(), e.to_string()),
        }
    }

    fn product_event(&self, r: &ProductRecord) -> Event {
        let call = ProductCall {
            product: r.product,
            method: &r.method,
            route: &r.route,
            acting: r.acting,
            account_id: r.account_id.as_deref(),
            status: r.status,
            request_bytes: r.request_bytes,
            response_bytes: r.response_bytes,
            refused: r.refused.as_deref(),
        };
        Event::product(&self.grants.app, &self.grants.installation, &call)
    }

    /// Write `events` in one transaction; if they cannot be written, the
    /// app gets an error instead of the answer.
    fn record(&self, events: Vec<Event>) -> Result<(), HostReply> {
        let host = self.host;
        let written = host.runtime.block_on(async {
            let mut tx = host.store.begin().await.map_err(|e| e.to_string())?;
            host.auditor.append_all(&mut tx, &self.ctx, events).await.map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())
        });
        written.map_err(|e| err("PLATFORM_ERROR", format!("the audit trail cannot record this call: {e}")))
    }
}

/// The host of a URL for a record, or the URL cut short when it has none.
fn host_of(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => u.host_str().unwrap_or_default().to_owned(),
        Err(_) => url.chars().take(200).collect(),
    }
}

impl HostHandler for InvocationHost<'_> {
    fn handle(&mut self, capability: &str, args: Value) -> HostReply {
        match capability {
            "fetch" => self.fetch(&args),
            "product.request" => self.product(&args),
            webtrigger if webtrigger.starts_with("webtrigger.") => self.webtrigger(webtrigger, &args),
            kvs if kvs.starts_with("kvs.") => self.kvs(kvs, &args),
            queue if queue.starts_with("queue.") => self.queue(queue, &args),
            other => err("CAPABILITY_NOT_AVAILABLE", format!("the host offers no '{other}' capability")),
        }
    }
}
