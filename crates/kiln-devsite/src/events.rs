//! Product events (`avi:jira:created:issue`, ...) posted to the configured
//! sink over HTTPS, signed, in the order they happened.
//!
//! One worker task per site sends them from a bounded queue; each event is
//! tried a few times. The signature is
//! `X-Kiln-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`
//! with the timestamp in `X-Kiln-Event-Timestamp`, so a receiver can refuse
//! both forged and replayed deliveries.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_http::{HttpsClient, Method};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::site::lock;
use crate::{Delivery, EventSink, time};

/// Events waiting to be sent; beyond this they are dropped (and recorded as
/// such) rather than held without bound while the receiver is down.
const MAX_QUEUED_EVENTS: usize = 256;

/// Tries per event.
const ATTEMPTS: u32 = 3;

/// Wait before the n-th retry: n times this.
const RETRY_DELAY: Duration = Duration::from_millis(200);

/// Deliveries [`crate::DevSite::deliveries`] remembers.
const MAX_REMEMBERED_DELIVERIES: usize = 10_000;

/// The secret must be at least this long.
const MIN_SECRET_LEN: usize = 16;

/// An event sink the site cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventSinkError {
    #[error("the event sink URL {0:?} is not an https URL with a host")]
    Url(String),
    #[error("the event sink secret must be at least {MIN_SECRET_LEN} bytes")]
    ShortSecret,
    #[error("the event sink's root certificates are not usable: {0}")]
    Roots(String),
}

/// The sending side: a bounded queue to the worker.
#[derive(Debug)]
pub(crate) struct Outbox {
    tx: mpsc::Sender<Pending>,
}

#[derive(Debug)]
struct Pending {
    event_type: &'static str,
    body: Value,
}

/// Where and how to send.
struct Target {
    client: HttpsClient,
    path: String,
    secret: Vec<u8>,
}

impl Outbox {
    /// Check `sink` and start the worker.
    pub(crate) fn start(
        sink: EventSink,
        deliveries: Arc<Mutex<Vec<Delivery>>>,
    ) -> Result<Outbox, EventSinkError> {
        let url = url::Url::parse(&sink.url).map_err(|_| EventSinkError::Url(sink.url.clone()))?;
        let host = url.host_str().map(|h| h.trim_matches(['[', ']']).to_owned());
        let (Some(host), "https") = (host, url.scheme()) else {
            return Err(EventSinkError::Url(sink.url.clone()));
        };
        if sink.secret.len() < MIN_SECRET_LEN {
            return Err(EventSinkError::ShortSecret);
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addr = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        let roots = kiln_crypto::tls::client_config(&sink.roots_pem)
            .map_err(|e| EventSinkError::Roots(e.to_string()))?;
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let target = Target { client: HttpsClient::new(&addr, &host, roots), path, secret: sink.secret };
        let (tx, rx) = mpsc::channel(MAX_QUEUED_EVENTS);
        tokio::spawn(run(rx, target, deliveries));
        Ok(Outbox { tx })
    }

    /// Queue an event; if the queue is full it is dropped and recorded.
    pub(crate) fn send(&self, event_type: &'static str, body: Value, deliveries: &Mutex<Vec<Delivery>>) {
        if let Err(e) = self.tx.try_send(Pending { event_type, body }) {
            let (mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p)) = e;
            record(
                deliveries,
                Delivery {
                    event_type: p.event_type.to_owned(),
                    body: p.body,
                    status: None,
                    attempts: 0,
                    error: Some("the event queue is full or closed; the event was dropped".to_owned()),
                },
            );
        }
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>, target: Target, deliveries: Arc<Mutex<Vec<Delivery>>>) {
    while let Some(event) = rx.recv().await {
        let body = event.body.to_string();
        let mut delivery = Delivery {
            event_type: event.event_type.to_owned(),
            body: event.body,
            status: None,
            attempts: 0,
            error: None,
        };
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(RETRY_DELAY * (attempt - 1)).await;
            }
            delivery.attempts = attempt;
            let timestamp = time::now_secs().to_string();
            let signature = sign(&target.secret, &timestamp, body.as_bytes());
            let headers = [
                ("content-type", "application/json"),
                ("x-kiln-event-timestamp", timestamp.as_str()),
                ("x-kiln-signature", signature.as_str()),
            ];
            match target.client.send(Method::POST, &target.path, &headers, Some(body.as_bytes())).await {
                Ok(reply) => {
                    delivery.status = Some(reply.status.as_u16());
                    delivery.error = None;
                    if reply.status.is_success() {
                        break;
                    }
                }
                Err(e) => delivery.error = Some(format!("cannot reach the event sink: {e}")),
            }
        }
        record(&deliveries, delivery);
    }
}

fn record(deliveries: &Mutex<Vec<Delivery>>, delivery: Delivery) {
    let mut list = lock(deliveries);
    if list.len() >= MAX_REMEMBERED_DELIVERIES {
        list.remove(0);
    }
    list.push(delivery);
}

/// The `X-Kiln-Signature` value for `body` sent at `timestamp` (Unix
/// seconds, as sent in `X-Kiln-Event-Timestamp`):
/// `sha256=<lowercase hex of HMAC-SHA256(secret, timestamp + "." + body)>`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    let tag = kiln_crypto::hmac_sha256(secret, &message);
    format!("sha256={}", tag.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Whether `header` (the `X-Kiln-Signature` value) signs `body` sent at
/// `timestamp` under `secret`; compared in constant time. The receiver
/// should also refuse timestamps too far from its own clock, which this
/// function does not judge.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    kiln_crypto::constant_time_eq(sign(secret, timestamp, body).as_bytes(), header.trim().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_timestamp_and_the_body() {
        let sig = sign(b"secret", "1700000000", b"{}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
        assert!(verify_signature(b"secret", "1700000000", b"{}", &sig));
        assert!(!verify_signature(b"secret", "1700000001", b"{}", &sig));
        assert!(!verify_signature(b"secret", "1700000000", b"{ }", &sig));
        assert!(!verify_signature(b"other", "1700000000", b"{}", &sig));
        assert!(!verify_signature(b"secret", "1700000000", b"{}", ""));
    }
}
