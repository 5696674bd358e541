//! A small HTTPS client for Kiln's own use: tests that talk to the server
//! they started on loopback, alert webhooks, the product gateway. It verifies the
//! server against the roots it is given, speaks HTTP/1.1, and reads at most
//! a bounded response.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use tokio::net::TcpStream;

/// Largest response body read.
const MAX_BODY: usize = 16 * 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A response: status, headers and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Requests to one server (`host:port`), trusting only `roots`.
#[derive(Clone)]
pub struct HttpsClient {
    addr: String,
    host: String,
    tls: tokio_rustls::TlsConnector,
    max_body: usize,
}

impl std::fmt::Debug for HttpsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsClient").field("addr", &self.addr).field("host", &self.host).finish()
    }
}

impl HttpsClient {
    /// `addr` to connect to; `host` the name the certificate must carry.
    pub fn new(addr: &str, host: &str, roots: Arc<tokio_rustls::rustls::ClientConfig>) -> Self {
        HttpsClient {
            addr: addr.to_owned(),
            host: host.to_owned(),
            tls: tokio_rustls::TlsConnector::from(roots),
            max_body: MAX_BODY,
        }
    }

    /// Read at most `bytes` of any response body; a longer one is an error.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Send one request on a new connection.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Reply> {
        tokio::time::timeout(TIMEOUT, self.send_inner(method, path, headers, body))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "the request timed out"))?
    }

    async fn send_inner(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> std::io::Result<Reply> {
        let io_err = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
        let tcp = TcpStream::connect(&self.addr).await?;
        let name = kiln_crypto::tls::server_name(&self.host).map_err(|e| io_err(&e))?;
        let tls = self.tls.connect(name, tcp).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| io_err(&e))?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", &self.host);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = Bytes::copy_from_slice(body.unwrap_or_default());
        if body.is_some() && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(bytes)).map_err(|e| io_err(&e))?;
        let res = sender.send_request(req).await.map_err(|e| io_err(&e))?;
        let (parts, body) = res.into_parts();
        let body =
            Limited::new(body, self.max_body).collect().await.map_err(|e| io_err(&e))?.to_bytes().to_vec();
        driver.abort();
        Ok(Reply { status: parts.status, headers: parts.headers, body })
    }
}
