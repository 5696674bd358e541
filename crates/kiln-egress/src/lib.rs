//! `kiln-egress`: the egress gateway that serves an app's `fetch`, inside
//! the server (the worker only asks).
//!
//! Before anything is resolved, the app's headers are parsed: a name that
//! is not an HTTP token, or a value holding CR, LF, NUL or another control
//! character, refuses the request ([`FetchError::Header`]), so nothing can
//! be smuggled into it.
//!
//! Then each request, and each redirect hop as if it were new:
//! 1. the URL is checked by name against the installation's consented
//!    `permissions.external.fetch.backend` (`kiln_policy::egress`);
//! 2. the name is resolved once, through the [`Resolve`] seam, and the
//!    whole request is refused if **any** address is non-public
//!    (`kiln_policy::addr`);
//! 3. the gateway opens the connection through the [`Dial`] seam, which is
//!    handed an address it checked (at the checked port) and never a name,
//!    so DNS rebinding cannot switch it;
//! 4. TLS is verified (rustls through `kiln-crypto`); no environment
//!    proxies are read.
//!
//! Production uses [`SystemResolver`] and [`SystemDialer`]. Tests replace
//! both: the SSRF suite (`tests/ssrf.rs`) dials through a dialer that
//! reaches only the upstreams it starts on loopback and records any other
//! attempt, so a bypass shows as a failed case and never as traffic.
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

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{HeaderName, HeaderValue};
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
        // Asked as an absolute name, so the system's search domains cannot
        // turn an unresolvable granted name into an internal one.
        let absolute = if host.ends_with('.') { host.to_owned() } else { format!("{host}.") };
        Box::pin(async move { Ok(tokio::net::lookup_host((absolute.as_str(), port)).await?.collect()) })
    }
}

/// A fixed table of names to addresses and no DNS at all: for tests and
/// `kiln dev` runs that point an app's declared hosts at servers they
/// start on loopback. A name not in the table does not resolve. The
/// gateway still checks every address it returns (loopback needs
/// `insecure_allow_loopback` as well). An entry may name a port: the
/// gateway connects to the URL's port, so [`InsecureStaticResolver::dialer`]
/// moves connections for that address to the named port (each address may
/// carry one port; give hosts their own loopback address, 127.0.0.2...).
#[derive(Debug, Clone, Default)]
pub struct InsecureStaticResolver {
    table: std::collections::BTreeMap<String, IpAddr>,
    ports: std::collections::BTreeMap<IpAddr, u16>,
}

impl InsecureStaticResolver {
    /// From `host=ip` or `host=ip:port` entries, as the command line gives them.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut out = InsecureStaticResolver::default();
        for entry in entries {
            let (host, target) = entry.split_once('=').ok_or_else(|| {
                format!("{entry:?} is not host=address[:port] (e.g. api.example.com=127.0.0.1:9443)")
            })?;
            let target = target.trim();
            let (ip, port) = match target.parse::<SocketAddr>() {
                Ok(sa) => (sa.ip(), Some(sa.port())),
                Err(_) => (
                    target
                        .parse::<IpAddr>()
                        .map_err(|_| format!("{target:?} in {entry:?} is not an address"))?,
                    None,
                ),
            };
            if let Some(port) = port
                && let Some(other) = out.ports.insert(ip, port)
                && other != port
            {
                return Err(format!(
                    "{ip} is given two ports ({other} and {port}); give each host its own loopback address"
                ));
            }
            out.table.insert(host.trim().trim_end_matches('.').to_ascii_lowercase(), ip);
        }
        Ok(out)
    }

    /// Connections to a table address go to the port its entry named.
    pub fn dialer(&self) -> InsecurePortDialer {
        InsecurePortDialer { ports: self.ports.clone() }
    }
}

impl Resolve for InsecureStaticResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>
    {
        let found = self.table.get(&host.trim_end_matches('.').to_ascii_lowercase()).copied();
        Box::pin(async move {
            match found {
                Some(ip) => Ok(vec![SocketAddr::new(ip, port)]),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} is not in the static host table (--insecure-egress-resolve)"),
                )),
            }
        })
    }
}

/// See [`InsecureStaticResolver::dialer`].
#[derive(Debug, Clone, Default)]
pub struct InsecurePortDialer {
    ports: std::collections::BTreeMap<IpAddr, u16>,
}

impl Dial for InsecurePortDialer {
    fn dial<'a>(
        &'a self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>> {
        let target = SocketAddr::new(addr.ip(), self.ports.get(&addr.ip()).copied().unwrap_or(addr.port()));
        Box::pin(async move { TcpStream::connect(target).await })
    }
}

/// Opening the TCP connection, replaceable in tests. It is handed the
/// address the gateway checked, never a name, so it cannot resolve again;
/// the gateway bounds it with `connect_timeout`.
pub trait Dial: Send + Sync {
    fn dial<'a>(
        &'a self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>>;
}

/// A plain TCP connection to the address: no proxy, no other address tried.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemDialer;

impl Dial for SystemDialer {
    fn dial<'a>(
        &'a self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send + 'a>> {
        Box::pin(TcpStream::connect(addr))
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
    /// A header that could smuggle a second request or header line.
    #[error(
        "the header {name:?} is refused: {why} (names are HTTP tokens; values may not hold CR, LF, NUL or other control characters)"
    )]
    Header { name: String, why: &'static str },
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
    /// The hop reached loopback only because of
    /// [`Config::insecure_allow_loopback`]: every such use is recorded.
    pub insecure: bool,
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
    dialer: Arc<dyn Dial>,
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
    /// A gateway that resolves names with `resolver` and opens connections
    /// with `dialer` ([`SystemResolver`] and [`SystemDialer`] in production).
    pub fn new(
        config: Config,
        resolver: Arc<dyn Resolve>,
        dialer: Arc<dyn Dial>,
    ) -> Result<Gateway, kiln_crypto::envelope::CryptoError> {
        let tls = tokio_rustls::TlsConnector::from(kiln_crypto::tls::client_config(&config.roots_pem)?);
        Ok(Gateway { config, resolver, dialer, tls })
    }

    /// The limits it applies (an invocation's [`Budget`] is built from them).
    pub fn config(&self) -> &Config {
        &self.config
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
        let headers = parse_headers(request.headers)?;
        budget.take()?;
        let _slot =
            budget.concurrent.acquire().await.map_err(|_| FetchError::Timeout("waiting for a slot"))?;
        let work = self.follow(consented, method, request.url, headers, request.body, records);
        tokio::time::timeout(self.config.total_timeout, work)
            .await
            .map_err(|_| FetchError::Timeout("the request"))?
    }

    async fn follow(
        &self,
        consented: &[EgressTarget],
        mut method: String,
        mut url: String,
        mut headers: Vec<(HeaderName, HeaderValue)>,
        mut body: Vec<u8>,
        records: &mut Vec<EgressRecord>,
    ) -> Result<FetchResponse, FetchError> {
        let mut origin: Option<(String, u16)> = None;
        for hop in 0..=self.config.max_redirects {
            let dest = match Destination::parse(&url) {
                Ok(dest) => dest,
                Err(refused) => {
                    records.push(refused_before_parsing(&method, &url, body.len(), &refused));
                    return Err(FetchError::NotAllowed(refused));
                }
            };
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
                insecure: false,
            };
            if let Some(o) = &origin
                && *o != (dest.host.clone(), dest.port)
            {
                headers.retain(|(k, _)| !CREDENTIALS.contains(&k.as_str()));
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
            record.insecure = self.config.insecure_allow_loopback && checked.ip().is_loopback();
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
                    let next = match url::Url::parse(&url).and_then(|base| base.join(&location)) {
                        Ok(next) => next,
                        Err(e) => {
                            let refused =
                                Refused::NotAUrl(location.chars().take(200).collect(), e.to_string());
                            records.push(refused_before_parsing(&method, &location, body.len(), &refused));
                            return Err(FetchError::NotAllowed(refused));
                        }
                    };
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

    /// The name check, then every resolved address; the address to use,
    /// at the port the URL named and the name check allowed.
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
            .map(|a| SocketAddr::new(a.ip(), dest.port))
            .ok_or_else(|| FetchError::Resolve { host: dest.host.clone(), message: "no addresses".into() })
    }

    #[allow(clippy::type_complexity, reason = "status, reason, headers, body")]
    async fn send(
        &self,
        dest: &Destination,
        addr: SocketAddr,
        method: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: &[u8],
    ) -> Result<(u16, String, Vec<(String, String)>, Vec<u8>), FetchError> {
        let connect_err = |m: String| FetchError::Connect { host: dest.host.clone(), message: m };
        let tcp = tokio::time::timeout(self.config.connect_timeout, self.dialer.dial(addr))
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
        // An IPv6 literal is bracketed in `Host`, as in a URL.
        let authority = if dest.ip_literal && dest.host.contains(':') {
            format!("[{}]", dest.host)
        } else {
            dest.host.clone()
        };
        let host_header = if dest.port == 443 { authority } else { format!("{authority}:{}", dest.port) };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&dest.path_and_query)
            .header("host", host_header)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| connect_err(e.to_string()))?;
        for (k, v) in headers {
            req.headers_mut().append(k.clone(), v.clone());
        }
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

/// The app's headers as the gateway will send them: each name an HTTP
/// token and each value free of CR, LF, NUL and other control characters,
/// so no header line or second request can be smuggled in; minus the
/// headers the gateway sets itself or that frame the message.
fn parse_headers(headers: Vec<(String, String)>) -> Result<Vec<(HeaderName, HeaderValue)>, FetchError> {
    let mut parsed = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let refused = |why| FetchError::Header { name: name.chars().take(100).collect(), why };
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| refused("its name is not an HTTP token"))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| refused("its value holds a control character such as CR, LF or NUL"))?;
        if !DROPPED.contains(&header.as_str()) {
            parsed.push((header, value));
        }
    }
    Ok(parsed)
}

/// The record of a hop refused before it had a [`Destination`] (a scheme,
/// user-info, port or URL the policy refuses), so that the trail holds
/// every refusal: host and port as far as the URL parser can read them.
fn refused_before_parsing(method: &str, url: &str, request_bytes: usize, refused: &Refused) -> EgressRecord {
    let parsed = url::Url::parse(url).ok();
    EgressRecord {
        method: method.to_owned(),
        host: parsed.as_ref().and_then(|u| u.host_str()).unwrap_or_default().to_owned(),
        port: parsed.as_ref().and_then(url::Url::port_or_known_default).unwrap_or(0),
        address: None,
        allowed: false,
        status: None,
        request_bytes,
        response_bytes: 0,
        reason: Some(refused.to_string()),
        insecure: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_static_table_resolves_only_its_names_and_moves_ports() {
        let r = InsecureStaticResolver::parse(&[
            "api.example.com=127.0.0.2:9443".to_owned(),
            "Other.Example.org.=127.0.0.3".to_owned(),
        ])
        .unwrap();
        let got = r.resolve("API.example.com.", 443).await.unwrap();
        assert_eq!(got, vec![SocketAddr::from(([127, 0, 0, 2], 443))]);
        assert_eq!(r.resolve("other.example.org", 443).await.unwrap()[0].ip(), IpAddr::from([127, 0, 0, 3]));
        let missing = r.resolve("not-there.example.com", 443).await.unwrap_err();
        assert!(missing.to_string().contains("static host table"), "{missing}");
        assert_eq!(r.dialer().ports.get(&IpAddr::from([127, 0, 0, 2])), Some(&9443));
    }

    #[test]
    fn one_address_cannot_carry_two_ports_and_garbage_is_named() {
        let two =
            InsecureStaticResolver::parse(&["a.com=127.0.0.1:1".to_owned(), "b.com=127.0.0.1:2".to_owned()]);
        assert!(two.unwrap_err().contains("two ports"));
        let bad = InsecureStaticResolver::parse(&["a.com".to_owned()]).unwrap_err();
        assert!(bad.contains("host=address"), "{bad}");
        let bad = InsecureStaticResolver::parse(&["a.com=nowhere".to_owned()]).unwrap_err();
        assert!(bad.contains("not an address"), "{bad}");
    }
}
