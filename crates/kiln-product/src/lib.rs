//! `kiln-product`: the product gateway that serves an app's `requestJira`
//! and `requestConfluence`, inside the server (the worker only asks).
//!
//! Each call:
//! 1. is checked for shape: a path (never a URL) of printable characters,
//!    an HTTP method apps may use, header names and values without control
//!    characters, a bounded body;
//! 2. is matched by method and path against the route table generated from
//!    Atlassian's OpenAPI documents (`kiln_policy::product`), and passes if
//!    the installation's consented scopes hold any alternative the document
//!    lists. An unknown route is refused unless the operator set
//!    [`Config::dangerously_allow_unmapped_routes`];
//! 3. acting as a user without that user in session (`asUser(accountId)`
//!    from a web trigger, a trigger, a queue consumer) passes only if the
//!    scopes marked `allowImpersonation` alone satisfy the route;
//! 4. gets its token from the gateway, never from the app: [`tokens`] holds
//!    them sealed in the KVS token namespace (OAuth 2.0 for Atlassian
//!    Cloud with refresh-token rotation; personal access tokens for Data
//!    Center). The app's own `Authorization`, `Cookie` and hop-by-hop
//!    headers are dropped;
//! 5. is sent over verified TLS to the site's base URL (Cloud: the API
//!    gateway's `/ex/{product}/{cloudId}`), without following redirects,
//!    and the answer comes back bounded, `Set-Cookie` removed.
//!
//! Every call, allowed or refused, yields a [`ProductRecord`] (route
//! template, acting principal, status, sizes; never a body, a header value
//! or a token) for the caller to put in the audit trail.

#![forbid(unsafe_code)]

pub mod tokens;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kiln_http::{HttpsClient, Method, Reply};
use kiln_manifest::{Scope, ScopeGrant};
use kiln_policy::product::{ScopeRefusal, check};
use zeroize::Zeroizing;

pub use tokens::{Authorized, Tokens};

/// Limits, and the operator's loosening.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    /// Let calls to routes Atlassian's documents do not list reach the
    /// product with no scope check. The server logs this loudly at start
    /// and each such call is recorded as unmapped.
    pub dangerously_allow_unmapped_routes: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_request_bytes: 5 * 1024 * 1024,
            max_response_bytes: 5 * 1024 * 1024,
            dangerously_allow_unmapped_routes: false,
        }
    }
}

/// The two products an app may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Jira,
    Confluence,
}

impl Product {
    pub fn parse(name: &str) -> Option<Product> {
        match name {
            "jira" => Some(Product::Jira),
            "confluence" => Some(Product::Confluence),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Product::Jira => "jira",
            Product::Confluence => "confluence",
        }
    }

    /// Which product a route of the table belongs to.
    fn of_template(template: &str) -> Product {
        if template.starts_with("/wiki/") { Product::Confluence } else { Product::Jira }
    }
}

/// On whose behalf a call is made. The server decides this from the
/// invocation, not from what the worker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acting {
    /// The unauthenticated top-level `requestJira`: no token at all.
    Nobody,
    /// `asApp()`: the installation's app credentials.
    App,
    /// `asUser()` with the user in session.
    User(String),
    /// `asUser(accountId)` with no such user in session: only with scopes
    /// marked `allowImpersonation`.
    Impersonate(String),
}

impl Acting {
    pub fn as_str(&self) -> &'static str {
        match self {
            Acting::Nobody => "none",
            Acting::App => "app",
            Acting::User(_) => "user",
            Acting::Impersonate(_) => "impersonation",
        }
    }

    pub fn account_id(&self) -> Option<&str> {
        match self {
            Acting::User(a) | Acting::Impersonate(a) => Some(a),
            Acting::Nobody | Acting::App => None,
        }
    }
}

/// What one installation may do, from its consented grants, and where its
/// tokens live.
#[derive(Debug, Clone)]
pub struct Installation {
    /// The KVS owner its tokens are sealed under.
    pub owner: String,
    pub scopes: BTreeSet<String>,
    /// The consented scopes marked `allowImpersonation`.
    pub impersonable: BTreeSet<String>,
}

impl Installation {
    pub fn new(owner: &str, scopes: &BTreeMap<Scope, ScopeGrant>) -> Self {
        Installation {
            owner: owner.to_owned(),
            scopes: scopes.keys().map(|s| s.as_str().to_owned()).collect(),
            impersonable: scopes
                .iter()
                .filter(|(_, g)| g.allow_impersonation)
                .map(|(s, _)| s.as_str().to_owned())
                .collect(),
        }
    }
}

/// A call from the app.
#[derive(Debug, Clone)]
pub struct ProductRequest {
    pub product: Product,
    pub acting: Acting,
    pub method: String,
    /// The route's value: a path starting with `/`, with its query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the app sees.
#[derive(Debug, Clone)]
pub struct ProductResponse {
    pub status: u16,
    pub status_text: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why a call failed. [`ProductError::code`] is the error class the app's
/// JavaScript sees. No variant carries a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProductError {
    #[error("{0}")]
    Scope(ScopeRefusal),
    #[error("{template} is a {is} route; call it with request{}", capitalised(is))]
    WrongProduct { template: String, is: &'static str },
    #[error(
        "asUser(accountId) without that user in session may only use scopes marked allowImpersonation; \
         {method} {template} needs one of: {}, and none is marked so", alternatives.join(" or ")
    )]
    Impersonation { method: String, template: String, alternatives: Vec<String> },
    #[error("{0}")]
    NeedsAuthentication(String),
    /// A consent flow started for one account came back signed in as
    /// another; nothing was kept. (No account id: the message may be shown
    /// to whoever is at the browser.)
    #[error(
        "the consent was given by another account than the one that asked for it; \
         sign in to the site as the person using the app and start again"
    )]
    ConsentByAnotherAccount,
    #[error("{0}")]
    ProductNotAvailable(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Credentials(String),
    #[error("the {product} site did not answer: {message}")]
    Upstream { product: &'static str, message: String },
}

fn capitalised(product: &str) -> &'static str {
    if product == "confluence" { "Confluence" } else { "Jira" }
}

impl ProductError {
    pub fn code(&self) -> &'static str {
        match self {
            ProductError::Scope(_)
            | ProductError::WrongProduct { .. }
            | ProductError::Impersonation { .. } => "ProductEndpointNotAllowedError",
            ProductError::NeedsAuthentication(_) | ProductError::ConsentByAnotherAccount => {
                "NeedsAuthenticationError"
            }
            ProductError::ProductNotAvailable(_) => "RequestProductNotAllowedError",
            ProductError::BadRequest(_) | ProductError::Credentials(_) | ProductError::Upstream { .. } => {
                "ProxyRequestError"
            }
        }
    }
}

/// One decision, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductRecord {
    pub product: &'static str,
    pub method: String,
    /// The matched template; a refused or unmapped path, cut short.
    pub route: String,
    pub acting: &'static str,
    pub account_id: Option<String>,
    pub status: Option<u16>,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub refused: Option<String>,
}

/// One HTTPS base URL the gateway talks to, and a client for it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `https://host[:port]`.
    origin: String,
    /// The base URL's path, without a trailing `/` (often empty).
    prefix: String,
    client: HttpsClient,
}

impl Endpoint {
    /// `url` must be `https` with no user-info, query or fragment; the
    /// server is verified against `roots_pem`.
    pub fn new(url: &str, roots_pem: &str, max_response_bytes: usize) -> Result<Endpoint, ProductError> {
        let bad = |why: &str| ProductError::BadRequest(format!("the product base URL {url:?} {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(&format!("is not a URL: {e}")))?;
        if parsed.scheme() != "https" {
            return Err(bad("is not https"));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(bad("carries user-info"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("has a query or fragment"));
        }
        let host = parsed.host_str().ok_or_else(|| bad("has no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tls = kiln_crypto::tls::client_config(roots_pem).map_err(|e| bad(&e.to_string()))?;
        let addr = if bare.contains(':') { format!("[{bare}]:{port}") } else { format!("{bare}:{port}") };
        let client = HttpsClient::new(&addr, bare, tls).max_body(max_response_bytes);
        let origin = if port == 443 { format!("https://{host}") } else { format!("https://{host}:{port}") };
        Ok(Endpoint { origin, prefix: parsed.path().trim_end_matches('/').to_owned(), client })
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The full URL of `path` under this endpoint.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.origin, self.prefix, path)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Reply> {
        self.client.send(method, &format!("{}{}", self.prefix, path), headers, body).await
    }
}

/// An OAuth 2.0 client registered with Atlassian (or the dev site).
#[derive(Clone)]
pub struct OAuthClient {
    pub client_id: String,
    pub client_secret: Zeroizing<String>,
    pub redirect_uri: String,
}

impl std::fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthClient")
            .field("client_id", &self.client_id)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

/// Atlassian Cloud: OAuth 2.0 against the authorization server, calls
/// through the API gateway.
#[derive(Debug, Clone)]
pub struct CloudSite {
    /// `https://auth.atlassian.com` (authorize, token).
    pub auth: Endpoint,
    /// `https://api.atlassian.com` (`/ex/...`, accessible-resources, `/me`).
    pub api: Endpoint,
    pub cloud_id: String,
    pub client: OAuthClient,
}

/// Jira and Confluence Data Center: each at its own base URL, with
/// personal access tokens.
#[derive(Debug, Clone, Default)]
pub struct DataCenterSite {
    pub jira: Option<Endpoint>,
    pub confluence: Option<Endpoint>,
}

#[derive(Debug, Clone)]
pub enum Site {
    Cloud(CloudSite),
    DataCenter(DataCenterSite),
}

/// Methods apps may use.
const METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// Headers the gateway sets itself or never forwards: credentials, and
/// everything that frames the message.
const DROPPED: [&str; 13] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "forwarded",
];

const MAX_PATH: usize = 8 * 1024;

/// The gateway.
#[derive(Debug)]
pub struct ProductGateway {
    config: Config,
    site: Site,
    tokens: Tokens,
}

impl ProductGateway {
    pub fn new(config: Config, site: Site, kvs: Arc<kiln_kvs::Kvs>) -> Self {
        let tokens = Tokens::new(kvs, site.clone());
        ProductGateway { config, site, tokens }
    }

    /// The credentials side: consent flows and stored tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// Serve one call for `installation`. The record describes it whatever
    /// the outcome.
    pub async fn request(
        &self,
        installation: &Installation,
        request: ProductRequest,
    ) -> (Result<ProductResponse, ProductError>, ProductRecord) {
        let mut record = ProductRecord {
            product: request.product.as_str(),
            method: request.method.to_ascii_uppercase(),
            route: request.path.split('?').next().unwrap_or_default().chars().take(300).collect(),
            acting: request.acting.as_str(),
            account_id: request.acting.account_id().map(str::to_owned),
            status: None,
            request_bytes: request.body.len(),
            response_bytes: 0,
            refused: None,
        };
        let result = self.serve(installation, request, &mut record).await;
        match &result {
            Ok(res) => {
                record.status = Some(res.status);
                record.response_bytes = res.body.len();
            }
            Err(e) => record.refused = Some(e.to_string()),
        }
        (result, record)
    }

    async fn serve(
        &self,
        installation: &Installation,
        request: ProductRequest,
        record: &mut ProductRecord,
    ) -> Result<ProductResponse, ProductError> {
        let method = request.method.to_ascii_uppercase();
        check_shape(&method, &request, &self.config)?;
        let route = match check(&method, &request.path, &installation.scopes) {
            Ok(route) => {
                let is = Product::of_template(&route.template);
                if is != request.product {
                    return Err(ProductError::WrongProduct {
                        template: route.template.clone(),
                        is: is.as_str(),
                    });
                }
                record.route = route.template.clone();
                Some(route)
            }
            Err(ScopeRefusal::Unmapped { .. }) if self.config.dangerously_allow_unmapped_routes => {
                record.route = format!("unmapped:{}", record.route);
                None
            }
            Err(refusal) => return Err(ProductError::Scope(refusal)),
        };
        if let (Acting::Impersonate(_), Some(route)) = (&request.acting, route)
            && !route.alternatives.iter().any(|alt| alt.iter().all(|s| installation.impersonable.contains(s)))
        {
            return Err(ProductError::Impersonation {
                method,
                template: route.template.clone(),
                alternatives: route.alternatives.iter().map(|a| a.join(" + ")).collect(),
            });
        }
        let (endpoint, path) = self.target(request.product, &request.path)?;
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| ProductError::BadRequest(format!("{:?} is not an HTTP method", request.method)))?;
        let headers: Vec<(&str, &str)> = request
            .headers
            .iter()
            .filter(|(k, _)| !DROPPED.contains(&k.to_ascii_lowercase().as_str()))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let body = (!request.body.is_empty() || method != Method::GET).then_some(request.body.as_slice());
        let mut retried = false;
        loop {
            let token = self.tokens.token(installation, &request.acting).await?;
            let bearer = token.as_ref().map(|t| Zeroizing::new(format!("Bearer {}", t.as_str())));
            let mut with_auth = headers.clone();
            if let Some(b) = &bearer {
                with_auth.push(("authorization", b.as_str()));
            }
            let reply = endpoint.send(method.clone(), &path, &with_auth, body).await.map_err(|e| {
                ProductError::Upstream { product: request.product.as_str(), message: e.to_string() }
            })?;
            // An access token the site no longer takes: drop it and try once
            // more with a fresh one (an expiry the clock did not see).
            if reply.status.as_u16() == 401 && token.is_some() && !retried {
                retried = true;
                if self.tokens.forget_access(installation, &request.acting).await? {
                    continue;
                }
            }
            return Ok(ProductResponse {
                status: reply.status.as_u16(),
                status_text: reply.status.canonical_reason().unwrap_or_default().to_owned(),
                headers: reply
                    .headers
                    .iter()
                    .filter(|(k, _)| k.as_str() != "set-cookie")
                    .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
                    .collect(),
                body: reply.body,
            });
        }
    }

    /// Where a call goes: the endpoint and the path under it.
    fn target(&self, product: Product, path: &str) -> Result<(&Endpoint, String), ProductError> {
        match &self.site {
            Site::Cloud(cloud) => {
                Ok((&cloud.api, format!("/ex/{}/{}{}", product.as_str(), cloud.cloud_id, path)))
            }
            Site::DataCenter(dc) => {
                let missing = || {
                    ProductError::ProductNotAvailable(format!(
                        "this Kiln has no {} Data Center site configured",
                        capitalised(product.as_str())
                    ))
                };
                match product {
                    Product::Jira => {
                        let endpoint = dc.jira.as_ref().ok_or_else(missing)?;
                        // Data Center serves the v2 API only; its v3 is the same API.
                        let path = match path.strip_prefix("/rest/api/3/") {
                            Some(rest) => format!("/rest/api/2/{rest}"),
                            None => path.to_owned(),
                        };
                        Ok((endpoint, path))
                    }
                    Product::Confluence => {
                        let endpoint = dc.confluence.as_ref().ok_or_else(missing)?;
                        if path.starts_with("/wiki/api/v2/") {
                            return Err(ProductError::ProductNotAvailable(
                                "Confluence Data Center has no v2 REST API; use /wiki/rest/api/...".into(),
                            ));
                        }
                        let rest = path.strip_prefix("/wiki").unwrap_or(path);
                        Ok((endpoint, rest.to_owned()))
                    }
                }
            }
        }
    }
}

/// The shape checks every call passes before anything else.
fn check_shape(method: &str, request: &ProductRequest, config: &Config) -> Result<(), ProductError> {
    let bad = |m: String| Err(ProductError::BadRequest(m));
    if !METHODS.contains(&method) {
        return bad(format!("{:?} is not an HTTP method apps may use", request.method));
    }
    let path = &request.path;
    if !path.starts_with('/') || path.starts_with("//") {
        return bad("a product route is a path starting with a single '/', built with route`...`".into());
    }
    if path.len() > MAX_PATH {
        return bad(format!("the route is longer than {MAX_PATH} bytes"));
    }
    if path.chars().any(|c| c.is_control() || c == ' ') {
        return bad("the route contains spaces or control characters".into());
    }
    for (k, v) in &request.headers {
        let name_ok = !k.is_empty() && k.bytes().all(|b| b.is_ascii_graphic() && b != b':');
        if !name_ok {
            return bad(format!("{k:?} is not a valid header name"));
        }
        if v.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
            return bad(format!("the value of header {k} contains a line break or NUL"));
        }
    }
    if request.body.len() > config.max_request_bytes {
        return bad(format!("the request body is larger than {} bytes", config.max_request_bytes));
    }
    Ok(())
}
