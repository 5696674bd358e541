//! The admin API over HTTPS on loopback: every route needs authentication
//! and gets an authorization decision from the policy; every route, driven
//! as every role by session and by token, answers as the policy says; and
//! no response carries customer data planted in storage beforehand.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::sync::Arc;

use axum::http::{Method, StatusCode};
use kiln_access::{Access, Credential, Role, Settings, authorize};
use kiln_audit::testing::{AUDITOR, audit};
use kiln_crypto::keys::EnvKeyProvider;
use kiln_kvs::{Kvs, SetOptions};
use kiln_server::{AdminState, HttpsClient, ROUTES, Reply};
use kiln_store::testing::{TestStore, each_backend};
use serde_json::json;

const APP: &str = "ari:cloud:ecosystem::app/5e0c3f6b-8c1d-4c55-9a43-2f1b7a0f9e21";
/// The app as the API's paths name it.
const APP_UUID: &str = "5e0c3f6b-8c1d-4c55-9a43-2f1b7a0f9e21";

/// Plaintext planted as customer data; no response may contain any of it.
const CANARIES: [&str; 6] = [
    "CANARY-KVS-3f9a1c",
    "CANARY-SECRET-b77e02",
    "CANARY-VARIABLE-PLAIN-5d1e",
    "CANARY-VARIABLE-ENC-a0c4",
    "CANARY-OAUTH-TOKEN-9e6b",
    "CANARY-INSTALL-SECRET-44f1",
];

fn provider() -> Arc<EnvKeyProvider> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([6u8; 32]);
    Arc::new(EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap())
}

struct Server {
    client: HttpsClient,
    access: Arc<Access>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(t: &TestStore) -> Server {
    let access = Access::new(t.store.clone(), Kvs::new(t.store.clone(), provider()), Settings::default());
    let state = Arc::new(AdminState {
        store: t.store.clone(),
        access: Access::new(t.store.clone(), Kvs::new(t.store.clone(), provider()), Settings::default()),
        kvs: Kvs::new(t.store.clone(), provider()),
        auditor: AUDITOR.clone(),
        checkpoint_file: None,
        alert_rules: kiln_audit::alerts::AlertRules::default(),
    });
    let identity = kiln_crypto::tls::self_signed(&["localhost"]).unwrap();
    let tls = kiln_crypto::tls::server_config(&identity).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kiln_server::serve(listener, tls, kiln_server::router(state), async {
        let _ = stopped.await;
    }));
    let roots = kiln_crypto::tls::client_config(&identity.cert_pem).unwrap();
    Server { client: HttpsClient::new(&addr, "localhost", roots), access: Arc::new(access), _stop: stop }
}

/// An authenticator's current code for an enrollment URI.
fn code(uri: &str) -> String {
    let secret = uri.split("secret=").nth(1).unwrap().split('&').next().unwrap();
    let secret = kiln_crypto::otp::base32_decode(secret).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    format!("{:06}", kiln_crypto::otp::code(&secret, kiln_crypto::otp::step_at(now)))
}

/// How a request authenticates.
#[derive(Clone)]
enum Auth {
    None,
    Cookie(String),
    Bearer(String),
}

impl Server {
    async fn call(&self, auth: &Auth, method: Method, path: &str, body: Option<serde_json::Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        let header;
        let headers: Vec<(&str, &str)> = match auth {
            Auth::None => vec![],
            Auth::Cookie(c) => {
                header = format!("{}={c}", kiln_access::COOKIE_NAME);
                vec![("cookie", header.as_str())]
            }
            Auth::Bearer(t) => {
                header = format!("Bearer {t}");
                vec![("authorization", header.as_str())]
            }
        };
        self.client.send(method, path, &headers, body.as_deref().map(str::as_bytes)).await.unwrap()
    }

    /// Create an operator with `role` and sign them in over the API.
    async fn signed_in(&self, name: &str, role: Role) -> String {
        let account = self.access.add_operator(name, role, false, audit()).await.unwrap();
        let mut body = json!({ "name": name, "password": account.password.as_str() });
        if let Some(uri) = &account.totp_uri {
            body["code"] = json!(code(uri));
        }
        let reply = self.call(&Auth::None, Method::POST, "/api/v1/login", Some(body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let cookie = reply.headers.get("set-cookie").unwrap().to_str().unwrap().to_owned();
        assert!(cookie.ends_with("; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=43200"), "{cookie}");
        let value = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
        value.to_owned()
    }
}

/// A request for `route` that exercises its handler: concrete parameters
/// and a valid body, made unique by `tag`.
fn sample(route: &kiln_server::Route, tag: &str, own_token: i64) -> (String, Option<serde_json::Value>) {
    let path = route
        .path
        .replace("{app}", APP_UUID)
        .replace("{env}", "development")
        .replace("{id}", &own_token.to_string())
        .replace("{name}", if route.path.contains("variables") { "API_URL" } else { tag });
    let body = match (route.method.as_str(), route.path) {
        ("POST", "/api/v1/operators") => Some(json!({ "name": format!("{tag}-new"), "role": "support" })),
        ("PUT", p) if p.ends_with("/role") => Some(json!({ "role": "auditor" })),
        ("POST", "/api/v1/tokens") => Some(json!({ "name": "t", "scopes": ["self"], "days": 1 })),
        ("PUT", p) if p.contains("/variables/") => Some(json!({ "value": "https://example.com" })),
        _ => None,
    };
    (path, body)
}

async fn plant_canaries(t: &TestStore) {
    let kvs = Kvs::new(t.store.clone(), provider());
    let inst = "installation:1";
    kvs.set(inst, "settings", &json!({ "note": CANARIES[0] }), SetOptions::default()).await.unwrap();
    kvs.set_secret(inst, "api-key", &json!(CANARIES[1])).await.unwrap();
    let vars = format!("variables:{APP}:development");
    let set = |name: &'static str, value: &'static str, enc: bool| {
        let kvs = &kvs;
        let vars = vars.clone();
        async move {
            let event = kiln_audit::Event::variable_set(APP, "development", name, enc);
            kvs.set_variable(&vars, name, value, enc, audit(), event).await.unwrap();
        }
    };
    set("PLAIN_SETTING", CANARIES[2], false).await;
    set("API_SECRET", CANARIES[3], true).await;
    kvs.set_token(inst, "oauth:access", CANARIES[4], None).await.unwrap();
    kvs.set(inst, "install-secret", &json!(CANARIES[5]), SetOptions::default()).await.unwrap();
}

#[tokio::test]
async fn every_route_needs_authentication_and_a_policy_decision() {
    let t = each_backend().await.unwrap().remove(0);
    let server = start(&t).await;
    let public: Vec<&str> = ROUTES.iter().filter(|r| r.operation.is_none()).map(|r| r.path).collect();
    assert_eq!(public, ["/api/v1/login"], "only signing in is public");
    for route in &ROUTES {
        if route.operation.is_none() {
            continue;
        }
        let (path, body) = sample(route, "x", 1);
        for auth in [Auth::None, Auth::Cookie("forged".into()), Auth::Bearer("kiln_pat_forged".into())] {
            let reply = server.call(&auth, route.method.clone(), &path, body.clone()).await;
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{} {path}: {}", route.method, reply.text());
            assert_eq!(
                reply.headers.get("strict-transport-security").unwrap(),
                "max-age=31536000; includeSubDomains"
            );
        }
    }
    // Nothing answers outside the table.
    let reply = server.call(&Auth::None, Method::GET, "/api/v1/secrets", None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers.get("x-frame-options").unwrap(), "DENY");
    // Every request, refused ones included, is in the trail.
    let mut tx = t.store.begin().await.unwrap();
    let records = tx.audit_records(0, 10_000).await.unwrap();
    let refused = records.iter().filter(|r| r.action == "admin.request" && r.outcome == "denied").count();
    assert_eq!(refused, 3 * (ROUTES.len() - 1));
}

#[tokio::test]
async fn every_route_as_every_role_matches_the_policy_and_returns_no_customer_data() {
    for t in each_backend().await.unwrap() {
        plant_canaries(&t).await;
        let server = start(&t).await;
        let mut seen = String::new();
        let mut checked = 0;
        for role in Role::ALL {
            let name = format!("{}-op", role.as_str());
            let cookie = server.signed_in(&name, role).await;
            let principal = server.access.operator_principal(&name).await.unwrap();
            // A token with every scope the role has, and one the handler can revoke.
            let (_, admin_token) =
                server.access.create_token(&principal, "all", &["admin"], 86_400_000, audit()).await.unwrap();
            for (kind, auth) in
                [("session", Auth::Cookie(cookie.clone())), ("token", Auth::Bearer(admin_token.to_string()))]
            {
                // Logout ends the session: run it last.
                let mut order: Vec<&kiln_server::Route> =
                    ROUTES.iter().filter(|r| r.operation.is_some()).collect();
                order.sort_by_key(|r| r.path == "/api/v1/logout");
                for route in order {
                    let op = route.operation.unwrap();
                    let tag = format!("{}-{kind}-{}", role.as_str(), checked);
                    // Targets for the operator routes, and a token of their own to revoke.
                    server.access.add_operator(&tag, Role::Support, false, audit()).await.unwrap();
                    let (own, _) = server
                        .access
                        .create_token(&principal, "own", &["self"], 86_400_000, audit())
                        .await
                        .unwrap();
                    let (path, body) = sample(route, &tag, own);
                    let reply = server.call(&auth, route.method.clone(), &path, body).await;
                    seen.push_str(&format!("{:?}\n{}\n", reply.headers, reply.text()));
                    let credential = match kind {
                        "session" => Credential::Session,
                        _ => Credential::Token { scopes: vec!["admin".into()] },
                    };
                    let allowed = authorize(role, &credential, op).is_allowed();
                    let handler_refusal =
                        kind == "token" && path == "/api/v1/tokens" && route.method == Method::POST
                            || kind == "token" && path == "/api/v1/logout";
                    if !allowed {
                        assert_eq!(
                            reply.status,
                            StatusCode::FORBIDDEN,
                            "{role} {kind} {} {path}: {}",
                            route.method,
                            reply.text()
                        );
                    } else if handler_refusal {
                        // Tokens cannot mint tokens or end sessions; those are refused by the handler.
                        assert!(reply.status.is_client_error(), "{role} {kind} {path}: {}", reply.status);
                    } else {
                        assert!(
                            reply.status.is_success() || reply.status == StatusCode::NOT_FOUND,
                            "{role} {kind} {} {path}: {} {}",
                            route.method,
                            reply.status,
                            reply.text()
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, Role::ALL.len() * 2 * (ROUTES.len() - 1), "{}", t.name);
        for canary in CANARIES {
            assert!(!seen.contains(canary), "{}: {canary} appeared in a response", t.name);
        }
        // The control: the same responses do hold what is not secret.
        assert!(seen.contains("PLAIN_SETTING"), "{}: variable names are listed", t.name);
        assert!(seen.contains("variable.set"), "{}: the trail was read", t.name);
    }
}

#[tokio::test]
async fn a_session_signs_in_mints_a_scoped_token_and_signs_out() {
    let t = each_backend().await.unwrap().remove(0);
    let server = start(&t).await;
    let cookie = server.signed_in("dev", Role::Developer).await;
    let session = Auth::Cookie(cookie.clone());
    let me = server.call(&session, Method::GET, "/api/v1/me", None).await;
    assert_eq!(me.json()["role"], "developer");

    let wrong = server
        .call(&Auth::None, Method::POST, "/api/v1/login", Some(json!({ "name": "dev", "password": "nope" })))
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get("set-cookie").is_none());

    let created = server
        .call(
            &session,
            Method::POST,
            "/api/v1/tokens",
            Some(json!({ "name": "ci", "scopes": ["apps:read"], "days": 7 })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let secret = created.json()["secret"].as_str().unwrap().to_owned();
    let token = Auth::Bearer(secret.clone());
    let listed = server.call(&session, Method::GET, "/api/v1/tokens", None).await;
    assert!(!listed.text().contains(&secret), "a token's secret is shown once");
    let path = format!("/api/v1/apps/{APP_UUID}/development/variables");
    assert_eq!(server.call(&token, Method::GET, &path, None).await.status, StatusCode::OK);
    let put = format!("{path}/X");
    let refused = server.call(&token, Method::PUT, &put, Some(json!({ "value": "1" }))).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "apps:read does not write");
    assert_eq!(
        server.call(&session, Method::PUT, &put, Some(json!({ "value": "1" }))).await.status,
        StatusCode::NO_CONTENT
    );
    // Unknown fields and wrong content are refused, not ignored.
    let odd = server.call(&session, Method::PUT, &put, Some(json!({ "value": "1", "reveal": true }))).await;
    assert!(odd.status.is_client_error(), "{}", odd.status);

    let out = server.call(&session, Method::POST, "/api/v1/logout", None).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.headers.get("set-cookie").unwrap().to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(server.call(&session, Method::GET, "/api/v1/me", None).await.status, StatusCode::UNAUTHORIZED);
    // The token lives on until it expires or is revoked, within its scopes.
    assert_eq!(server.call(&token, Method::GET, &path, None).await.status, StatusCode::OK);
    assert_eq!(server.call(&token, Method::GET, "/api/v1/me", None).await.status, StatusCode::FORBIDDEN);
}
