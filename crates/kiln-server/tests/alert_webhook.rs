//! Alerts delivered to a webhook over HTTPS on loopback: signed, each alert
//! once, failures recorded and retried.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kiln_audit::alerts::{AlertRules, evaluate};
use kiln_audit::testing::AUDITOR;
use kiln_audit::{Context, Event};
use kiln_server::alerting::{Webhook, deliver_pending, signature};
use kiln_store::testing::each_backend;

const SECRET: &[u8] = b"a webhook secret of some length";

/// A receiver that answers `status` and keeps what it was sent.
async fn receiver(
    status: StatusCode,
) -> (String, String, Arc<Mutex<Vec<(String, String)>>>, tokio::sync::oneshot::Sender<()>) {
    let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/hooks/kiln",
        post(move |headers: HeaderMap, body: String| {
            let keep = keep.clone();
            async move {
                let sig = headers
                    .get("x-kiln-signature")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                keep.lock().unwrap().push((sig, body));
                status
            }
        }),
    );
    let identity = kiln_crypto::tls::self_signed(&["localhost"]).unwrap();
    let tls = kiln_crypto::tls::server_config(&identity).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kiln_server::serve(listener, tls, app, async {
        let _ = stopped.await;
    }));
    (format!("https://localhost:{port}/hooks/kiln"), identity.cert_pem, got, stop)
}

#[tokio::test]
async fn new_alerts_are_posted_signed_once_and_failures_are_retried() {
    let t = each_backend().await.unwrap().remove(0);
    let ip = Context { source: Some("198.51.100.4".into()), ..Context::cli("web") };
    for _ in 0..5 {
        AUDITOR
            .record(&t.store, &ip, Event::login_failed("mallory", "bad credentials", false))
            .await
            .unwrap();
    }
    let rules = AlertRules { working_hours: None, ..AlertRules::default() };
    assert_eq!(evaluate(&t.store, &rules).await.unwrap().raised.len(), 1);

    // A receiver that fails: the attempt is recorded, nothing is delivered.
    let (url, roots, got, _stop) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let hook = Webhook::new(&url, SECRET, roots).unwrap();
    assert_eq!(deliver_pending(&t.store, &hook).await.unwrap(), 0);
    assert_eq!(got.lock().unwrap().len(), 1);
    let mut tx = t.store.begin().await.unwrap();
    let alert = tx.alerts(10).await.unwrap().remove(0);
    drop(tx);
    assert_eq!((alert.attempts, alert.delivered_at), (1, None));
    assert!(alert.last_error.as_deref().unwrap().contains("500"), "{:?}", alert.last_error);

    // A working receiver gets it once, signed over the exact body.
    let (url, roots, got, _stop2) = receiver(StatusCode::NO_CONTENT).await;
    let hook = Webhook::new(&url, SECRET, roots).unwrap();
    assert_eq!(deliver_pending(&t.store, &hook).await.unwrap(), 1);
    assert_eq!(deliver_pending(&t.store, &hook).await.unwrap(), 0, "delivered once");
    let sent = got.lock().unwrap().clone();
    assert_eq!(sent.len(), 1);
    let (sig, body) = &sent[0];
    assert_eq!(sig, &signature(SECRET, body.as_bytes()));
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["rule"], "failed-logins");
    assert_eq!(json["key"], "operator:mallory");

    // A server whose certificate is not trusted is not sent anything.
    AUDITOR.record(&t.store, &Context::cli("root"), Event::audit_verify(3, 1)).await.unwrap();
    evaluate(&t.store, &rules).await.unwrap();
    let (url, _their_roots, got, _stop3) = receiver(StatusCode::NO_CONTENT).await;
    let other = kiln_crypto::tls::self_signed(&["localhost"]).unwrap().cert_pem;
    let hook = Webhook::new(&url, SECRET, other).unwrap();
    assert_eq!(deliver_pending(&t.store, &hook).await.unwrap(), 0);
    assert!(got.lock().unwrap().is_empty(), "an untrusted server received an alert");
    assert!(Webhook::new("http://localhost/x", SECRET, String::new()).is_err());
    assert!(Webhook::new("https://localhost/x", b"short", String::new()).is_err());
}
