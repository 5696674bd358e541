//! Liveness and readiness, for load balancers and orchestrators. Public
//! (they say nothing but whether this node can serve) and cheap.
//!
//! - `GET /healthz`: the process answers.
//! - `GET /readyz`: the database answers a read within two seconds; 503
//!   otherwise, so a balancer stops sending traffic to a node that cannot
//!   serve it.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use kiln_store::Store;

/// How long readiness waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(store: Store) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" })).route("/readyz", get(ready)).with_state(store)
}

async fn ready(State(store): State<Store>) -> (StatusCode, &'static str) {
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
        assert_eq!(ready(State(store.clone())).await.0, StatusCode::OK);
        store.close().await;
        assert_eq!(ready(State(store)).await.0, StatusCode::SERVICE_UNAVAILABLE);
    }
}
