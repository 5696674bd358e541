//! `kiln bench gateways`: the latency each gateway adds to a request,
//! against a direct HTTPS client making the same request to the same
//! loopback server in the same run.
//!
//! - egress: `kiln_egress::Gateway::fetch` (grant check, resolution and
//!   address check, connect to the checked address, verified TLS) beside
//!   `kiln_http::HttpsClient` fetching the same URL from the same server;
//! - product: `kiln_product::ProductGateway::request` as the app (route
//!   and scope check, the sealed app token read from the KVS, verified TLS)
//!   beside the same client calling the dev site with a token it holds.
//!
//! Both sides open a new TLS connection per request (neither pools), and
//! they alternate in blocks so drift in the machine's speed falls on both.
//! Everything runs on loopback; the egress gateway reaches it through its
//! `insecure_allow_loopback` test setting and a resolver that maps one name.

use crate::output::say_raw;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_egress::{Budget, Dial, FetchRequest, Gateway, Resolve};
use kiln_http::{HttpsClient, Method};
use kiln_manifest::{EgressTarget, Scope, ScopeGrant};
use kiln_product::{
    Acting, CloudSite, Endpoint, Installation, OAuthClient, Product, ProductGateway, ProductRequest, Site,
};

use crate::Failure;
use crate::bench::stats;

const NAME: &str = "bench.kiln.test";
const BLOCK: usize = 50;

/// `NAME` is loopback.
struct OneName;

impl Resolve for OneName {
    fn resolve<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]) })
    }
}

/// The upstream cannot bind Forge's port 443; dial its real port.
struct ToPort(u16);

impl Dial for ToPort {
    fn dial<'a>(
        &'a self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'a>> {
        Box::pin(async move {
            if !addr.ip().is_loopback() {
                return Err(std::io::Error::other("the benchmark dials loopback only"));
            }
            tokio::net::TcpStream::connect(("127.0.0.1", self.0)).await
        })
    }
}

fn fail(m: impl std::fmt::Display) -> Failure {
    Failure { code: 1, message: m.to_string() }
}

/// Time `requests` calls of each side, alternating blocks of [`BLOCK`].
async fn race<D, G, FD, FG>(
    requests: usize,
    mut direct: D,
    mut gateway: G,
) -> Result<[Vec<Duration>; 2], Failure>
where
    D: FnMut() -> FD,
    G: FnMut() -> FG,
    FD: std::future::Future<Output = Result<(), String>>,
    FG: std::future::Future<Output = Result<(), String>>,
{
    // Warm both (first connections, the gateway's first token).
    for _ in 0..10 {
        direct().await.map_err(fail)?;
        gateway().await.map_err(fail)?;
    }
    let mut out = [Vec::with_capacity(requests), Vec::with_capacity(requests)];
    while out[1].len() < requests {
        for _ in 0..BLOCK {
            let t = Instant::now();
            direct().await.map_err(fail)?;
            out[0].push(t.elapsed());
        }
        for _ in 0..BLOCK {
            let t = Instant::now();
            gateway().await.map_err(fail)?;
            out[1].push(t.elapsed());
        }
    }
    Ok(out)
}

pub(crate) async fn gateways(requests: usize) -> Result<(), Failure> {
    let cert = kiln_crypto::tls::self_signed(&["127.0.0.1", NAME]).map_err(fail)?;
    let tls = kiln_crypto::tls::server_config(&cert).map_err(fail)?;
    let roots = kiln_crypto::tls::client_config(&cert.cert_pem).map_err(fail)?;

    // The upstream: a small JSON answer, like a typical API call.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
    let upstream = listener.local_addr().map_err(fail)?;
    let hello = axum::Router::new().route(
        "/hello",
        axum::routing::get(|| async { axum::Json(serde_json::json!({ "hello": "world", "n": 42 })) }),
    );
    tokio::spawn(kiln_http::serve(listener, tls.clone(), hello, std::future::pending()));

    // Egress.
    let mut config = kiln_egress::Config::new(cert.cert_pem.clone());
    config.insecure_allow_loopback = true;
    config.per_minute = usize::MAX;
    let egress = Gateway::new(config, Arc::new(OneName), Arc::new(ToPort(upstream.port()))).map_err(fail)?;
    let budget = Budget::new(egress.config());
    let granted = [EgressTarget::Host(NAME.into())];
    let direct = HttpsClient::new(&upstream.to_string(), NAME, roots.clone());
    let egress_times = race(
        requests,
        || async {
            let r = direct.send(Method::GET, "/hello", &[], None).await.map_err(|e| e.to_string())?;
            if r.status.as_u16() != 200 {
                return Err(format!("direct: {}", r.status));
            }
            Ok(())
        },
        || async {
            let request = FetchRequest {
                method: "GET".into(),
                url: format!("https://{NAME}/hello"),
                headers: Vec::new(),
                body: Vec::new(),
            };
            let mut records = Vec::new();
            let r =
                egress.fetch(&granted, &budget, request, &mut records).await.map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("egress: {}", r.status));
            }
            Ok(())
        },
    )
    .await?;

    // Product, against the dev site.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(fail)?;
    let seed = kiln_devsite::Seed::example();
    let site =
        kiln_devsite::start(listener, tls, kiln_devsite::DevSiteConfig { seed: seed.clone(), events: None })
            .await
            .map_err(fail)?;
    let client = seed.oauth_clients.first().ok_or_else(|| fail("the example seed has no OAuth client"))?;
    let store = kiln_store::Store::open_in_memory().await.map_err(fail)?;
    let mut key = [0u8; 32];
    kiln_crypto::fill_random(&mut key).map_err(fail)?;
    let provider = {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(key);
        kiln_crypto::keys::EnvKeyProvider::from_value(&format!("k1:{encoded}")).map_err(fail)?
    };
    let kvs = Arc::new(kiln_kvs::Kvs::new(store, Arc::new(provider)));
    let endpoint = || Endpoint::new(site.base_url(), &cert.cert_pem, 5 << 20).map_err(fail);
    let redirect_uri = client.redirect_uris.first().cloned().unwrap_or_default();
    let product = ProductGateway::new(
        kiln_product::Config::default(),
        Site::Cloud(CloudSite {
            auth: endpoint()?,
            api: endpoint()?,
            cloud_id: site.cloud_id().to_owned(),
            client: OAuthClient {
                client_id: client.client_id.clone(),
                client_secret: client.client_secret.clone().into(),
                redirect_uri,
            },
        }),
        kvs,
    );
    let scopes: BTreeMap<Scope, ScopeGrant> =
        [(Scope::try_from("read:jira-work".to_owned()).map_err(fail)?, ScopeGrant::default())].into();
    let installation = Installation::new("installation:bench", &scopes);
    // The direct client's own token, from the same grant the gateway uses.
    let site_client = HttpsClient::new(&site.addr().to_string(), "127.0.0.1", roots);
    let grant = serde_json::json!({
        "grant_type": "client_credentials", "client_id": client.client_id, "client_secret": client.client_secret,
    });
    let granted = site_client
        .send(Method::POST, "/oauth/token", &[], Some(grant.to_string().as_bytes()))
        .await
        .map_err(fail)?
        .json();
    let bearer =
        format!("Bearer {}", granted.get("access_token").and_then(|t| t.as_str()).unwrap_or_default());
    let path = format!("/ex/jira/{}/rest/api/3/issue/KILN-1", site.cloud_id());
    let product_times = race(
        requests,
        || async {
            let headers = [("authorization", bearer.as_str()), ("accept", "application/json")];
            let r = site_client.send(Method::GET, &path, &headers, None).await.map_err(|e| e.to_string())?;
            if r.status.as_u16() != 200 {
                return Err(format!("direct: {}", r.status));
            }
            Ok(())
        },
        || async {
            let request = ProductRequest {
                product: Product::Jira,
                acting: Acting::App,
                method: "GET".into(),
                path: "/rest/api/3/issue/KILN-1".into(),
                headers: vec![("accept".into(), "application/json".into())],
                body: Vec::new(),
            };
            let (r, _) = product.request(&installation, request).await;
            let r = r.map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("product: {}", r.status));
            }
            Ok(())
        },
    )
    .await?;

    let mut out = format!(
        "Gateway latency, {requests} requests per path, new TLS connection per request, loopback\n\n\
         | path | direct p50 (µs) | gateway p50 (µs) | added p50 (µs) | direct p99 (µs) | gateway p99 (µs) | gateway ÷ direct (p50) |\n\
         |---|---|---|---|---|---|---|\n"
    );
    for (name, [direct, gateway]) in
        [("egress fetch", egress_times), ("product requestJira (asApp)", product_times)]
    {
        let (d, g) = (stats(direct, Duration::from_secs(1)), stats(gateway, Duration::from_secs(1)));
        let _ = writeln!(
            out,
            "| {name} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} |",
            d.p50_us,
            g.p50_us,
            g.p50_us - d.p50_us,
            d.p99_us,
            g.p99_us,
            g.p50_us / d.p50_us
        );
    }
    say_raw!("{out}");
    Ok(())
}
