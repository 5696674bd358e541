//! `kiln-egress`: the egress gateway that serves an app's `fetch`, inside
//! the server (the worker only asks).
//!
//! Each request, and each redirect hop as if it were new:
//! 1. the URL is checked by name against the installation's consented
//!    `permissions.external.fetch.backend` (`kiln_policy::egress`);
//! 2. the name is resolved, and the whole request is refused if **any**
//!    address is non-public (`kiln_policy::addr`);
//! 3. the gateway connects to an address it checked — never resolving
//!    again — so DNS rebinding cannot switch it;
//! 4. TLS is verified (rustls through `kiln-crypto`); no environment
//!    proxies are read.
//!
//! Bounds: request and response size, connect and total timeouts, at most
//! five redirects (credentials and cookies dropped when the origin
//! changes), concurrent requests and 100 requests per invocation-minute
//! (then `FETCH_LIMIT_EXCEEDED`, as Forge answers).
//!
//! Every decision is returned as an [`EgressRecord`] (never bodies or
//! header values) for the caller to put in the audit trail.
//!
//! Not built yet (the worker host call that invokes this, and the audit
//! writes of its records, come with the Forge API issue): see #6/#7.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use kiln_manifest::EgressTarget;
use kiln_policy::addr::non_public;
use kiln_policy::egress::{Destination, Refused};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Limits, and the test-only loosening.
#[derive(Debug, Clone)]
pub struct Config {
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub connect_timeout: Duration,
    pub total_timeout: Duration,
    pub max_redirects: usize,
    pub per_minute: usize,
    pub concurrent: usize,
    /// PEM roots to trust (the system bundle in production).
    pub roots_pem: String,
    /// Let requests reach loopback addresses. For tests against upstreams
    /// they start on loopback only; refused in production mode by the
    /// server, and logged at every use.
    pub insecure_allow_loopback: bool,
}

impl Config {
    pub fn new(roots_pem: String) -> Self {
        Config {
            max_request_bytes: 5 * 1024 * 1024,
            max_response_bytes: 5 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            total_timeout: Duration::from_secs(20),
            max_redirects: 5,
            per_minute: 100,
            concurrent: 10,
            roots_pem,
            insecure_allow_loopback: false,
        }
    }
}

/// Name resolution, replaceable in tests.
pub trait Resolve: Send + Sync {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The system resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>
    {
        Box::pin(async move { Ok(tokio::net::lookup_host((host, port)).await?.collect()) })
    }
}

/// A request from the app.
#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The response the app sees.
#[derive(Debug, Clone)]
pub struct FetchResponse {
    pub status: u16,
    pub status_text: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The URL that answered, after redirects.
    pub url: String,
}

/// Why a fetch failed. The `code` is what the app's error carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// `ExternalEndpointNotAllowedError`.
    #[error("{0}")]
    NotAllowed(Refused),
    #[error("{host} resolves to {addr}, a {why} address apps may not reach")]
    NonPublic { host: String, addr: IpAddr, why: &'static str },
    #[error("{host} does not resolve: {message}")]
    Resolve { host: String, message: String },
    /// Forge's `FETCH_LIMIT_EXCEEDED` (HTTP 429).
    #[error("FETCH_LIMIT_EXCEEDED: more than {0} requests in a minute")]
    RateLimited(usize),
    #[error("the request body is larger than {0} bytes")]
    RequestTooLarge(usize),
    #[error("the response body is larger than {0} bytes")]
    ResponseTooLarge(usize),
    #[error("more than {0} redirects")]
    TooManyRedirects(usize),
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("cannot connect to {host}: {message}")]
    Connect { host: String, message: String },
    #[error("{0:?} is not an HTTP method apps may use")]
    Method(String),
}

impl FetchError {
    /// The error class or code the app sees.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::NotAllowed(_) | FetchError::NonPublic { .. } => "ExternalEndpointNotAllowedError",
            FetchError::RateLimited(_) => "FETCH_LIMIT_EXCEEDED",
            _ => "ProxyRequestError",
        }
    }
}

/// One decision, for the audit trail: what, where, and how it ended;
/// never a body or a header's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRecord {
    pub method: String,
    pub host: String,
    pub port: u16,
    pub address: Option<IpAddr>,
    pub allowed: bool,
    pub status: Option<u16>,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub reason: Option<String>,
}

/// What one invocation has used: the minute's requests and the concurrency.
#[derive(Debug)]
pub struct Budget {
    started: std::sync::Mutex<Vec<Instant>>,
    concurrent: Semaphore,
    per_minute: usize,
}

impl Budget {
    pub fn new(config: &Config) -> Self {
        Budget {
            started: std::sync::Mutex::new(Vec::new()),
            concurrent: Semaphore::new(config.concurrent),
            per_minute: config.per_minute,
        }
    }

    fn take(&self) -> Result<(), FetchError> {
        let now = Instant::now();
        let mut started = self.started.lock().map_err(|_| FetchError::RateLimited(self.per_minute))?;
        started.retain(|t| now.duration_since(*t) < Duration::from_secs(60));
        if started.len() >= self.per_minute {
            return Err(FetchError::RateLimited(self.per_minute));
        }
        started.push(now);
        Ok(())
    }
}

/// The gateway.
pub struct Gateway {
    config: Config,
    resolver: Arc<dyn Resolve>,
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").field("config", &self.config.max_redirects).finish_non_exhaustive()
    }
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
/// Headers the gateway sets itself, or that would let the app smuggle.
const DROPPED: [&str; 8] = [
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
];
/// Headers that carry credentials: dropped when a redirect changes origin.
const CREDENTIALS: [&str; 3] = ["authorization", "cookie", "proxy-authorization"];

impl Gateway {
    pub fn new(
        config: Config,
        resolver: Arc<dyn Resolve>,
    ) -> Result<Gateway, kiln_crypto::envelope::CryptoError> {
        let tls = tokio_rustls::TlsConnector::from(kiln_crypto::tls::client_config(&config.roots_pem)?);
        Ok(Gateway { config, resolver, tls })
    }

    /// Serve one `fetch` for an installation that consented to `consented`.
    /// The records describe every hop, whatever the outcome.
    pub async fn fetch(
        &self,
        consented: &[EgressTarget],
        budget: &Budget,
        request: FetchRequest,
        records: &mut Vec<EgressRecord>,
    ) -> Result<FetchResponse, FetchError> {
        let method = request.method.to_ascii_uppercase();
        if !METHODS.contains(&method.as_str()) {
            return Err(FetchError::Method(request.method));
        }
        if request.body.len() > self.config.max_request_bytes {
            return Err(FetchError::RequestTooLarge(self.config.max_request_bytes));
        }
        budget.take()?;
        let _slot =
            budget.concurrent.acquire().await.map_err(|_| FetchError::Timeout("waiting for a slot"))?;
        let work = self.follow(consented, method, request, records);
        tokio::time::timeout(self.config.total_timeout, work)
            .await
            .map_err(|_| FetchError::Timeout("the request"))?
    }

    async fn follow(
        &self,
        consented: &[EgressTarget],
        mut method: String,
        request: FetchRequest,
        records: &mut Vec<EgressRecord>,
    ) -> Result<FetchResponse, FetchError> {
        let mut url = request.url.clone();
        let mut headers: Vec<(String, String)> = request
            .headers
            .into_iter()
            .filter(|(k, _)| !DROPPED.contains(&k.to_ascii_lowercase().as_str()))
            .collect();
        let mut body = request.body;
        let mut origin: Option<(String, u16)> = None;
        for hop in 0..=self.config.max_redirects {
            let dest = Destination::parse(&url).map_err(FetchError::NotAllowed)?;
            let mut record = EgressRecord {
                method: method.clone(),
                host: dest.host.clone(),
                port: dest.port,
                address: None,
                allowed: false,
                status: None,
                request_bytes: body.len(),
                response_bytes: 0,
                reason: None,
            };
            if let Some(o) = &origin
                && *o != (dest.host.clone(), dest.port)
            {
                headers.retain(|(k, _)| !CREDENTIALS.contains(&k.to_ascii_lowercase().as_str()));
            }
            origin = Some((dest.host.clone(), dest.port));
            let checked = match self.check(consented, &dest).await {
                Ok(addr) => addr,
                Err(e) => {
                    record.reason = Some(e.to_string());
                    records.push(record);
                    return Err(e);
                }
            };
            record.address = Some(checked.ip());
            record.allowed = true;
            let sent = self.send(&dest, checked, &method, &headers, &body).await;
            let (status, reason, res_headers, res_body) = match sent {
                Ok(r) => r,
                Err(e) => {
                    record.reason = Some(e.to_string());
                    records.push(record);
                    return Err(e);
                }
            };
            record.status = Some(status);
            record.response_bytes = res_body.len();
            records.push(record);
            let location = res_headers.iter().find(|(k, _)| k == "location").map(|(_, v)| v.clone());
            match (status, location) {
                (301 | 302 | 303 | 307 | 308, Some(location)) if hop < self.config.max_redirects => {
                    let next = url::Url::parse(&url).and_then(|base| base.join(&location)).map_err(|e| {
                        FetchError::NotAllowed(Refused::NotAUrl(location.clone(), e.to_string()))
                    })?;
                    if status == 303 || ((status == 301 || status == 302) && method == "POST") {
                        method = "GET".into();
                        body.clear();
                    }
                    url = next.to_string();
                }
                (301 | 302 | 303 | 307 | 308, Some(_)) => {
                    return Err(FetchError::TooManyRedirects(self.config.max_redirects));
                }
                _ => {
                    return Ok(FetchResponse {
                        status,
                        status_text: reason,
                        headers: res_headers,
                        body: res_body,
                        url,
                    });
                }
            }
        }
        Err(FetchError::TooManyRedirects(self.config.max_redirects))
    }

    /// The name check, then every resolved address; the address to use.
    async fn check(&self, consented: &[EgressTarget], dest: &Destination) -> Result<SocketAddr, FetchError> {
        dest.allowed_by(consented).map_err(FetchError::NotAllowed)?;
        let addrs: Vec<SocketAddr> = if dest.ip_literal {
            let ip: IpAddr = dest.host.parse().map_err(|_| FetchError::Resolve {
                host: dest.host.clone(),
                message: "not an address".into(),
            })?;
            vec![SocketAddr::new(ip, dest.port)]
        } else {
            let lookup = self.resolver.resolve(&dest.host, dest.port);
            tokio::time::timeout(self.config.connect_timeout, lookup)
                .await
                .map_err(|_| FetchError::Timeout("name resolution"))?
                .map_err(|e| FetchError::Resolve { host: dest.host.clone(), message: e.to_string() })?
        };
        if addrs.is_empty() {
            return Err(FetchError::Resolve { host: dest.host.clone(), message: "no addresses".into() });
        }
        for a in &addrs {
            if let Some(why) = non_public(a.ip()) {
                let loopback_allowed = self.config.insecure_allow_loopback && a.ip().is_loopback();
                if !loopback_allowed {
                    return Err(FetchError::NonPublic {
                        host: dest.host.clone(),
                        addr: a.ip(),
                        why: why.as_str(),
                    });
                }
            }
        }
        addrs
            .first()
            .copied()
            .ok_or_else(|| FetchError::Resolve { host: dest.host.clone(), message: "no addresses".into() })
    }

    #[allow(clippy::type_complexity, reason = "status, reason, headers, body")]
    async fn send(
        &self,
        dest: &Destination,
        addr: SocketAddr,
        method: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(u16, String, Vec<(String, String)>, Vec<u8>), FetchError> {
        let connect_err = |m: String| FetchError::Connect { host: dest.host.clone(), message: m };
        let tcp = tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| FetchError::Timeout("connecting"))?
            .map_err(|e| connect_err(e.to_string()))?;
        let name = kiln_crypto::tls::server_name(&dest.host).map_err(|e| connect_err(e.to_string()))?;
        let tls = tokio::time::timeout(self.config.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| FetchError::Timeout("the TLS handshake"))?
            .map_err(|e| connect_err(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let host_header =
            if dest.port == 443 { dest.host.clone() } else { format!("{}:{}", dest.host, dest.port) };
        let mut req =
            hyper::Request::builder().method(method).uri(&dest.path_and_query).header("host", host_header);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req =
            req.body(Full::new(Bytes::copy_from_slice(body))).map_err(|e| connect_err(e.to_string()))?;
        let res = sender.send_request(req).await.map_err(|e| connect_err(e.to_string()))?;
        let (parts, res_body) = res.into_parts();
        let limit = self.config.max_response_bytes;
        let bytes = Limited::new(res_body, limit)
            .collect()
            .await
            .map_err(|_| FetchError::ResponseTooLarge(limit))?
            .to_bytes()
            .to_vec();
        driver.abort();
        let res_headers = parts
            .headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
            .collect();
        let reason = parts.status.canonical_reason().unwrap_or_default().to_owned();
        Ok((parts.status.as_u16(), reason, res_headers, bytes))
    }
}
