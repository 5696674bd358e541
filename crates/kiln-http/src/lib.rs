//! `kiln-http`: the HTTPS plumbing every Kiln server and gateway shares.
//!
//! - [`serve`]: an axum router over rustls (through `kiln_crypto::tls`),
//!   HTTP/1.1, with handshake and header-read timeouts; each request
//!   carries the peer's address as `ConnectInfo<SocketAddr>`.
//!   [`serve_graceful`] does the same and, when told to stop, stops
//!   accepting and hands back a [`Draining`] that finishes when every
//!   request already received has been answered.
//! - [`security_headers`]: HSTS and the standard headers, for a router's
//!   outermost layer.
//! - [`HttpsClient`]: a small client that verifies the server against the
//!   roots it is given and reads a bounded response.
//!
//! Nothing here decides who may call what; the servers built on it do.

#![forbid(unsafe_code)]

mod client;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tokio::net::TcpListener;

pub use axum::http::Method;
pub use client::{HttpsClient, Reply};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serve `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let acceptor = acceptor.clone();
        let service = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        tokio::spawn(async move {
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper_util::service::TowerToHyperService::new(service);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service)
                .await;
        });
    }
}

/// Serve `router` over TLS on `listener` until `shutdown` resolves; then
/// close the listener (new connections are refused), tell every open
/// connection to finish the request it is serving and close (idle
/// keep-alive connections close at once), and return the connections
/// still open as a [`Draining`] to wait on, for as long as the caller
/// allows.
pub async fn serve_graceful(
    listener: TcpListener,
    tls: Arc<tokio_rustls::rustls::ServerConfig>,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<Draining> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    // Each connection holds a sender; `recv` answers `None` once all are gone.
    let (alive, done) = tokio::sync::mpsc::channel::<()>(1);
    let open = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let service = router.clone().layer(axum::Extension(ConnectInfo(peer)));
        let (alive, mut stopping) = (alive.clone(), stopping.clone());
        let counted = Counted::new(open.clone());
        tokio::spawn(async move {
            let _held = (alive, counted);
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await else {
                return;
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let service = hyper_util::service::TowerToHyperService::new(service);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stopping.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
    drop(listener);
    let _ = stop.send(true);
    Ok(Draining { done, open, _stop: stop })
}

/// The connections a stopped [`serve_graceful`] still has open.
#[derive(Debug)]
pub struct Draining {
    done: tokio::sync::mpsc::Receiver<()>,
    open: Arc<AtomicUsize>,
    /// Kept so that connections do not read a dropped sender as a stop.
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Draining {
    /// Connections not yet closed.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Wait until every connection has closed.
    pub async fn finished(&mut self) {
        while self.done.recv().await.is_some() {}
    }
}

/// One open connection, counted while it lives.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Counted(open)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// HSTS (one year, subdomains) and the standard security headers on every
/// response, 404s included: use as a router's outermost layer with
/// `axum::middleware::from_fn(security_headers)`.
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    for (name, value) in [
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, reason = "test code: a panic is a failed test")]

    use super::*;

    #[tokio::test]
    async fn a_graceful_stop_finishes_the_request_in_flight_and_refuses_new_connections() {
        let identity = kiln_crypto::tls::self_signed(&["localhost"]).unwrap();
        let tls = kiln_crypto::tls::server_config(&identity).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let router = Router::new().route(
            "/slow",
            axum::routing::get(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "done"
            }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_graceful(listener, tls, router, async {
            let _ = stopped.await;
        }));
        let client = HttpsClient::new(
            &addr,
            "localhost",
            kiln_crypto::tls::client_config(&identity.cert_pem).unwrap(),
        );
        let slow = tokio::spawn({
            let client = client.clone();
            async move { client.send(Method::GET, "/slow", &[], None).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.send(()).unwrap();
        let mut draining = server.await.unwrap().unwrap();
        assert_eq!(draining.open(), 1, "the slow request's connection is still open");
        assert!(client.send(Method::GET, "/slow", &[], None).await.is_err(), "the listener is closed");
        tokio::time::timeout(Duration::from_secs(5), draining.finished()).await.unwrap();
        assert_eq!(draining.open(), 0);
        let reply = slow.await.unwrap().unwrap();
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "done"));
    }
}
