//! Liveness and readiness, for load balancers and orchestrators. Public
//! (they say nothing but whether this node can serve) and cheap.
//!
//! - `GET /healthz`: the process answers.
//! - `GET /readyz`: the database answers a read within two seconds, and the
//!   node is not draining; 503 otherwise, so a balancer stops sending
//!   traffic to a node that cannot serve it or is about to stop.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kiln_store::Store;
use tokio::sync::watch;

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(Readiness { store, draining: None })
}

/// As [`router`], and `/readyz` answers 503 once `draining` holds `true`
/// (the server's shutdown signal), while `/healthz` still answers: the
/// process is alive and finishing what it has, but takes nothing new.
pub fn router_with_drain(store: Store, draining: watch::Receiver<bool>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(Readiness { store, draining: Some(draining) })
}

#[derive(Clone)]
struct Readiness {
    store: Store,
    draining: Option<watch::Receiver<bool>>,
}

async fn ready(State(readiness): State<Readiness>) -> (StatusCode, &'static str) {
    if readiness.draining.as_ref().is_some_and(|d| *d.borrow()) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining");
    }
    let store = readiness.store;
    let check = async {
        let mut tx = store.begin_read().await?;
        tx.audit_head().await
    };
    match tokio::time::timeout(READY_TIMEOUT, check).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "the database does not answer"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

    use super::*;

    #[tokio::test]
    async fn readiness_follows_the_database() {
        let store = Store::open_in_memory().await.unwrap();
        let readiness = |store: &Store| State(Readiness { store: store.clone(), draining: None });
        assert_eq!(ready(readiness(&store)).await.0, StatusCode::OK);
        store.close().await;
        assert_eq!(ready(readiness(&store)).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_draining_node_is_not_ready() {
        let store = Store::open_in_memory().await.unwrap();
        let (tx, rx) = watch::channel(false);
        let readiness = || State(Readiness { store: store.clone(), draining: Some(rx.clone()) });
        assert_eq!(ready(readiness()).await.0, StatusCode::OK);
        tx.send(true).unwrap();
        assert_eq!(ready(readiness()).await, (StatusCode::SERVICE_UNAVAILABLE, "draining"));
    }
}
