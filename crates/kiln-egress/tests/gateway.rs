//! The egress gateway against HTTPS upstreams this test starts on loopback
//! (reached through the `insecure_allow_loopback` setting; a resolver the
//! test controls maps names to addresses, and a dialer that reaches only
//! loopback opens the connections).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use common::LoopbackOnly;
use kiln_egress::*;
use kiln_manifest::EgressTarget;

/// Names to addresses; a name maps to loopback at the asked port unless given.
struct FakeDns(HashMap<String, Vec<IpAddr>>);

impl Resolve for FakeDns {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>>
    {
        Box::pin(async move {
            let ips = self.0.get(host).cloned().ok_or_else(|| std::io::Error::other("NXDOMAIN"))?;
            Ok(ips.into_iter().map(|ip| SocketAddr::new(ip, port)).collect())
        })
    }
}

const NAMES: [&str; 3] = ["api.example.com", "other.example.com", "private.example.com"];

async fn echo(headers: HeaderMap) -> impl IntoResponse {
    let names: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
    axum::Json(serde_json::json!({ "headers": names }))
}

/// An upstream on one of Forge's allowed ports, with a certificate for the test names.
async fn upstream(
    cert: &kiln_crypto::tls::Identity,
    other_port: u16,
) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let other = format!("https://other.example.com:{other_port}/echo");
    let app = axum::Router::new()
        .route("/hello", get(|| async { ([("x-up", "1")], "hi") }))
        .route("/echo", any(echo))
        .route("/redirect-same", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/echo")]) }))
        .route(
            "/redirect-other",
            get(move || async move { (StatusCode::FOUND, [(header::LOCATION, other)]) }),
        )
        .route(
            "/redirect-private",
            get(|| async {
                (StatusCode::FOUND, [(header::LOCATION, "https://private.example.com:8060/echo")])
            }),
        )
        .route("/loop", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/loop")]) }))
        .route("/see-other", any(|| async { (StatusCode::SEE_OTHER, [(header::LOCATION, "/echo")]) }))
        .route("/big", get(|| async { "x".repeat(5000) }));
    let tls = kiln_crypto::tls::server_config(cert).unwrap();
    for port in [8444u16, 7990, 8089, 8090, 8085, 8060, 8443, 8080] {
        if let Ok(listener) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(kiln_server::serve(listener, tls, app, async {
                let _ = stopped.await;
            }));
            return (port, stop);
        }
    }
    panic!("none of Forge's ports is free on loopback");
}

fn gateway(
    cert: &kiln_crypto::tls::Identity,
    dialer: &Arc<LoopbackOnly>,
    extra: &[(&str, &str)],
    tune: impl FnOnce(&mut Config),
) -> Gateway {
    let mut dns: HashMap<String, Vec<IpAddr>> =
        NAMES.iter().map(|n| ((*n).to_owned(), vec!["127.0.0.1".parse().unwrap()])).collect();
    dns.insert("private.example.com".into(), vec!["10.0.0.7".parse().unwrap()]);
    for (name, ip) in extra {
        dns.entry((*name).to_owned()).or_default().push(ip.parse().unwrap());
    }
    let mut config = Config::new(cert.cert_pem.clone());
    config.insecure_allow_loopback = true;
    tune(&mut config);
    Gateway::new(config, Arc::new(FakeDns(dns)), dialer.clone()).unwrap()
}

fn req(url: &str) -> FetchRequest {
    FetchRequest { method: "GET".into(), url: url.into(), headers: vec![], body: vec![] }
}

fn granted(hosts: &[&str]) -> Vec<EgressTarget> {
    hosts.iter().map(|h| EgressTarget::Host((*h).to_owned())).collect()
}

#[tokio::test]
async fn the_gateway_checks_every_hop_by_name_and_address() {
    let cert = kiln_crypto::tls::self_signed(&NAMES).unwrap();
    let (other_port, _stop_other) = upstream(&cert, 1).await;
    let (port, _stop) = upstream(&cert, other_port).await;
    let base = format!("https://api.example.com:{port}");
    let dialer = LoopbackOnly::new();
    let gw = gateway(&cert, &dialer, &[], |_| {});
    let both = granted(&["api.example.com", "other.example.com"]);

    // Allowed: the response, and a record of the decision.
    let mut records = Vec::new();
    let budget = Budget::new(&Config::new(String::new()));
    let ok = gw.fetch(&both, &budget, req(&format!("{base}/hello")), &mut records).await.unwrap();
    assert_eq!((ok.status, ok.body.as_slice()), (200, &b"hi"[..]));
    assert!(ok.headers.iter().any(|(k, v)| k == "x-up" && v == "1"));
    assert_eq!(records.len(), 1);
    assert!(records[0].allowed && records[0].status == Some(200));
    assert_eq!(records[0].address, Some("127.0.0.1".parse().unwrap()));

    // Not declared: refused by name, never resolved or connected.
    let mut records = Vec::new();
    let err = gw
        .fetch(&granted(&["other.example.com"]), &budget, req(&format!("{base}/hello")), &mut records)
        .await;
    let err = err.unwrap_err();
    assert_eq!(err.code(), "ExternalEndpointNotAllowedError");
    assert!(err.to_string().contains("api.example.com"), "{err}");
    assert!(!records[0].allowed && records[0].address.is_none());

    // A name that resolves to any non-public address is refused whole, even
    // when another address is fine; `*` opens nothing more.
    let gw_mixed = gateway(&cert, &dialer, &[("api.example.com", "10.1.2.3")], |_| {});
    let err = gw_mixed.fetch(&[EgressTarget::Any], &budget, req(&format!("{base}/hello")), &mut vec![]).await;
    assert!(matches!(err, Err(FetchError::NonPublic { why: "private", .. })), "{err:?}");
    let strict = gateway(&cert, &dialer, &[], |c| c.insecure_allow_loopback = false);
    let err = strict.fetch(&both, &budget, req(&format!("{base}/hello")), &mut vec![]).await;
    assert!(matches!(err, Err(FetchError::NonPublic { why: "loopback", .. })), "{err:?}");

    // Redirects: followed and re-checked; credentials kept on the same
    // origin and dropped when it changes.
    let auth = |url: String| FetchRequest {
        method: "GET".into(),
        url,
        headers: vec![("Authorization".into(), "Bearer app-secret".into()), ("Cookie".into(), "a=b".into())],
        body: vec![],
    };
    let same = gw.fetch(&both, &budget, auth(format!("{base}/redirect-same")), &mut vec![]).await.unwrap();
    let seen = String::from_utf8(same.body).unwrap();
    assert!(seen.contains("authorization") && seen.contains("cookie"), "{seen}");
    let mut records = Vec::new();
    let other = gw.fetch(&both, &budget, auth(format!("{base}/redirect-other")), &mut records).await.unwrap();
    let seen = String::from_utf8(other.body).unwrap();
    assert!(
        !seen.contains("authorization") && !seen.contains("cookie"),
        "credentials crossed origins: {seen}"
    );
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].host, "other.example.com");
    // A redirect to an undeclared or private destination is refused.
    let err = gw
        .fetch(&granted(&["api.example.com"]), &budget, req(&format!("{base}/redirect-other")), &mut vec![])
        .await;
    assert!(matches!(err, Err(FetchError::NotAllowed(_))), "{err:?}");
    let all = granted(&["api.example.com", "private.example.com"]);
    let err = gw.fetch(&all, &budget, req(&format!("{base}/redirect-private")), &mut vec![]).await;
    assert!(matches!(err, Err(FetchError::NonPublic { .. })), "{err:?}");
    let mut records = Vec::new();
    let err = gw.fetch(&both, &budget, req(&format!("{base}/loop")), &mut records).await;
    assert!(matches!(err, Err(FetchError::TooManyRedirects(5))), "{err:?}");
    assert_eq!(records.len(), 6, "the first request and five redirects");
    // 303 turns a POST into a GET without its body.
    let post = FetchRequest {
        method: "POST".into(),
        url: format!("{base}/see-other"),
        headers: vec![],
        body: b"x".to_vec(),
    };
    let mut records = Vec::new();
    gw.fetch(&both, &budget, post, &mut records).await.unwrap();
    assert_eq!((records[1].method.as_str(), records[1].request_bytes), ("GET", 0));
    dialer.assert_stayed_on_loopback();
}

#[tokio::test]
async fn limits_hold() {
    let cert = kiln_crypto::tls::self_signed(&NAMES).unwrap();
    let (port, _stop) = upstream(&cert, 1).await;
    let base = format!("https://api.example.com:{port}");
    let api = granted(&["api.example.com"]);
    let dialer = LoopbackOnly::new();
    let gw = gateway(&cert, &dialer, &[], |c| {
        c.max_response_bytes = 1000;
        c.max_request_bytes = 10;
        c.per_minute = 3;
    });
    let mut tight = Config::new(String::new());
    tight.per_minute = 3;
    let budget = Budget::new(&tight);
    let err = gw.fetch(&api, &budget, req(&format!("{base}/big")), &mut vec![]).await;
    assert!(matches!(err, Err(FetchError::ResponseTooLarge(1000))), "{err:?}");
    let big = FetchRequest {
        method: "POST".into(),
        url: format!("{base}/echo"),
        headers: vec![],
        body: vec![0; 11],
    };
    assert!(matches!(gw.fetch(&api, &budget, big, &mut vec![]).await, Err(FetchError::RequestTooLarge(10))));
    gw.fetch(&api, &budget, req(&format!("{base}/hello")), &mut vec![]).await.unwrap();
    gw.fetch(&api, &budget, req(&format!("{base}/hello")), &mut vec![]).await.unwrap();
    let err = gw.fetch(&api, &budget, req(&format!("{base}/hello")), &mut vec![]).await.unwrap_err();
    assert_eq!(err.code(), "FETCH_LIMIT_EXCEEDED");

    let fresh = Budget::new(&Config::new(String::new()));
    for (url, want) in [
        (format!("http://api.example.com:{port}/hello"), "only https"),
        ("https://api.example.com:22/".to_owned(), "port 22"),
        ("https://user:pw@api.example.com/".to_owned(), "user name or password"),
    ] {
        let err = gw.fetch(&api, &fresh, req(&url), &mut vec![]).await.unwrap_err();
        assert!(err.to_string().contains(want), "{url}: {err}");
    }
    let trace =
        FetchRequest { method: "TRACE".into(), url: format!("{base}/hello"), headers: vec![], body: vec![] };
    assert!(matches!(gw.fetch(&api, &fresh, trace, &mut vec![]).await, Err(FetchError::Method(_))));
    // A server whose certificate is not trusted is not talked to.
    let other_cert = kiln_crypto::tls::self_signed(&NAMES).unwrap();
    let untrusting = gateway(&other_cert, &dialer, &[], |_| {});
    let err = untrusting.fetch(&api, &fresh, req(&format!("{base}/hello")), &mut vec![]).await.unwrap_err();
    assert!(err.to_string().contains("TLS"), "{err}");
    dialer.assert_stayed_on_loopback();
}
