//! The dev site end to end over HTTPS on loopback: Atlassian's OAuth flows,
//! scope checks on every Cloud call, Jira and Confluence as the seeded
//! people may use them, the Data Center prefixes, and signed events.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kiln_devsite::{
    ALICE, BOB, CAROL, DevSite, DevSiteConfig, EventSink, KILN_APP, Seed, Via, start, verify_signature,
};
use kiln_http::{HttpsClient, Method, Reply};
use serde_json::{Value, json};

const CLIENT_ID: &str = "kiln-dev-client";
const CLIENT_SECRET: &str = "kiln-dev-client-secret";
const REDIRECT: &str = "https://localhost/oauth/callback";
const ALL_SCOPES: &str = "read:jira-work write:jira-work read:jira-user read:permission:jira read:page:confluence \
                          write:page:confluence read:space:confluence read:confluence-content.summary offline_access";

struct Fixture {
    site: DevSite,
    client: HttpsClient,
}

async fn fixture(events: Option<EventSink>) -> Fixture {
    let identity = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let tls = kiln_crypto::tls::server_config(&identity).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = start(listener, tls, DevSiteConfig { seed: Seed::example(), events }).await.unwrap();
    assert_eq!(site.base_url(), format!("https://127.0.0.1:{}", site.addr().port()));
    let roots = kiln_crypto::tls::client_config(&identity.cert_pem).unwrap();
    let client = HttpsClient::new(&site.addr().to_string(), "127.0.0.1", roots);
    Fixture { site, client }
}

/// Tokens from `/oauth/token`.
#[derive(Debug)]
struct Tokens {
    access: String,
    refresh: Option<String>,
}

impl Tokens {
    fn from(reply: &Reply) -> Tokens {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let v = reply.json();
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["expires_in"], 3600);
        Tokens {
            access: v["access_token"].as_str().unwrap().to_owned(),
            refresh: v["refresh_token"].as_str().map(str::to_owned),
        }
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

impl Fixture {
    fn jira(&self, rest: &str) -> String {
        format!("/ex/jira/{}/rest/api/3{rest}", self.site.cloud_id())
    }

    fn jira2(&self, rest: &str) -> String {
        format!("/ex/jira/{}/rest/api/2{rest}", self.site.cloud_id())
    }

    fn wiki(&self, rest: &str) -> String {
        format!("/ex/confluence/{}/wiki/api/v2{rest}", self.site.cloud_id())
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("accept", "application/json")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        let body = body.map(|b| b.to_string());
        self.client.send(method, path, &headers, body.as_deref().map(str::as_bytes)).await.unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn token_form(&self, pairs: &[(&str, &str)]) -> Reply {
        let body = query(pairs);
        self.client
            .send(
                Method::POST,
                "/oauth/token",
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(body.as_bytes()),
            )
            .await
            .unwrap()
    }

    async fn token_json(&self, body: Value) -> Reply {
        self.call(Method::POST, "/oauth/token", None, Some(body)).await
    }

    /// `/authorize` with `extra` parameters; the reply is not followed.
    async fn authorize(&self, scope: &str, extra: &[(&str, &str)]) -> Reply {
        let mut pairs = vec![
            ("audience", "api.atlassian.com"),
            ("client_id", CLIENT_ID),
            ("scope", scope),
            ("redirect_uri", REDIRECT),
            ("state", "s-123"),
            ("response_type", "code"),
            ("prompt", "consent"),
        ];
        pairs.extend_from_slice(extra);
        self.client.send(Method::GET, &format!("/authorize?{}", query(&pairs)), &[], None).await.unwrap()
    }

    /// A code for `account` with `scope`.
    async fn code(&self, account: &str, scope: &str) -> String {
        let reply = self.authorize(scope, &[("login_as", account)]).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
        let location = url::Url::parse(reply.headers["location"].to_str().unwrap()).unwrap();
        assert!(location.as_str().starts_with(REDIRECT), "{location}");
        let q: HashMap<String, String> = location.query_pairs().into_owned().collect();
        assert_eq!(q["state"], "s-123");
        q["code"].clone()
    }

    async fn exchange(&self, code: &str) -> Reply {
        self.token_json(json!({
            "grant_type": "authorization_code",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "code": code,
            "redirect_uri": REDIRECT,
        }))
        .await
    }

    /// An access token for `account` with `scope`.
    async fn user_token(&self, account: &str, scope: &str) -> Tokens {
        let code = self.code(account, scope).await;
        Tokens::from(&self.exchange(&code).await)
    }

    async fn app_token(&self) -> String {
        let reply = self
            .token_form(&[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
            ])
            .await;
        Tokens::from(&reply).access
    }

    async fn refresh(&self, refresh: &str) -> Reply {
        self.token_form(&[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
            ("refresh_token", refresh),
        ])
        .await
    }

    async fn create_issue(&self, token: &str, summary: &str) -> Value {
        let reply = self
            .call(
                Method::POST,
                &self.jira("/issue"),
                Some(token),
                Some(json!({ "fields": {
                    "project": { "key": "KILN" },
                    "summary": summary,
                    "issuetype": { "name": "Task" },
                }})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        reply.json()
    }
}

fn keys(v: &Value) -> Vec<String> {
    v["issues"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect()
}

// ----------------------------------------------------------------- OAuth

#[tokio::test]
async fn the_authorization_code_flow_works_end_to_end() {
    let f = fixture(None).await;

    // Without login_as: a consent page listing the people, not the app.
    let page = f.authorize(ALL_SCOPES, &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    assert!(html.contains("Alice Admin") && html.contains("Bob Builder"), "{html}");
    assert!(!html.contains("Kiln app"), "the service account cannot sign in");
    assert!(html.contains(r#"name="login_as" value="557058:alice""#), "{html}");

    // The page's form posts back to /authorize with login_as.
    let form = query(&[
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("scope", ALL_SCOPES),
        ("state", "s-123"),
        ("response_type", "code"),
        ("login_as", ALICE),
    ]);
    let posted = f
        .client
        .send(
            Method::POST,
            "/authorize",
            &[("content-type", "application/x-www-form-urlencoded")],
            Some(form.as_bytes()),
        )
        .await
        .unwrap();
    assert_eq!(posted.status, StatusCode::FOUND);
    assert!(posted.headers["location"].to_str().unwrap().contains("code="));

    let code = f.code(ALICE, ALL_SCOPES).await;
    let reply = f.exchange(&code).await;
    let scope = reply.json()["scope"].as_str().unwrap().to_owned();
    assert!(scope.contains("read:jira-work") && scope.contains("offline_access"), "{scope}");
    let tokens = Tokens::from(&reply);
    assert!(tokens.refresh.is_some(), "offline_access was granted");

    let me = f.get("/me", &tokens.access).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.json()["account_id"], ALICE);
    assert_eq!(me.json()["email"], "alice@example.com");

    let resources = f.get("/oauth/token/accessible-resources", &tokens.access).await;
    assert_eq!(resources.status, StatusCode::OK);
    let r = &resources.json()[0];
    assert_eq!(r["id"], f.site.cloud_id());
    assert_eq!(r["url"], "https://kiln-dev.atlassian.net");
    assert_eq!(r["name"], "kiln-dev");
    assert!(r["scopes"].as_array().unwrap().contains(&json!("write:jira-work")));
    assert_eq!(r["avatarUrl"], "");

    let myself = f.get(&f.jira("/myself"), &tokens.access).await;
    assert_eq!(myself.status, StatusCode::OK);
    assert_eq!(myself.json()["accountId"], ALICE);
    let seen = f.site.requests();
    let last = seen.last().unwrap();
    assert_eq!((last.via, last.account_id.as_deref(), last.status), (Via::OAuth, Some(ALICE), 200));
    assert_eq!(last.path, f.jira("/myself"));
    assert!(seen.iter().any(|r| r.path == "/oauth/token" && r.via == Via::Anonymous));
    assert_eq!(f.site.token_requests()["authorization_code"], 1);

    // Without offline_access there is no refresh token.
    let tokens = f.user_token(BOB, "read:jira-work").await;
    assert!(tokens.refresh.is_none());
}

#[tokio::test]
async fn an_authorization_code_is_single_use() {
    let f = fixture(None).await;
    let code = f.code(ALICE, "read:jira-work").await;
    let first = Tokens::from(&f.exchange(&code).await);
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &first.access).await.status, StatusCode::OK);
    let again = f.exchange(&code).await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);
    assert_eq!(again.json()["error"], "invalid_grant");
    // What the first exchange granted is revoked once the code is replayed.
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &first.access).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.exchange("kdc_not-a-code").await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_unregistered_redirect_uri_is_refused_without_redirecting() {
    let f = fixture(None).await;
    for redirect in ["https://evil.example/callback", "https://localhost/oauth/callback/extra", ""] {
        let query = query(&[
            ("client_id", CLIENT_ID),
            ("scope", "read:jira-work"),
            ("redirect_uri", redirect),
            ("response_type", "code"),
            ("login_as", ALICE),
        ]);
        let reply = f.client.send(Method::GET, &format!("/authorize?{query}"), &[], None).await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{redirect}");
        assert!(reply.headers.get("location").is_none(), "{redirect} was redirected to");
        assert_eq!(reply.json()["error"], "invalid_request");
    }
    // An unknown client is refused the same way.
    let unknown =
        f.client.send(Method::GET, "/authorize?client_id=nobody&redirect_uri=x", &[], None).await.unwrap();
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);

    // With a registered redirect_uri, errors are sent back to it.
    let too_much = f.authorize("read:jira-work manage:jira-configuration", &[("login_as", ALICE)]).await;
    assert_eq!(too_much.status, StatusCode::FOUND);
    let location = too_much.headers["location"].to_str().unwrap();
    assert!(location.starts_with(REDIRECT) && location.contains("error=invalid_scope"), "{location}");
    assert!(location.contains("state=s-123"));
    let q = query(&[
        ("client_id", CLIENT_ID),
        ("scope", "read:jira-work"),
        ("redirect_uri", REDIRECT),
        ("response_type", "token"),
    ]);
    let reply = f.client.send(Method::GET, &format!("/authorize?{q}"), &[], None).await.unwrap();
    assert!(reply.headers["location"].to_str().unwrap().contains("error=unsupported_response_type"));

    // A code is bound to the redirect_uri it was issued for.
    let code = f.code(ALICE, "read:jira-work").await;
    let reply = f
        .token_json(json!({
            "grant_type": "authorization_code", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET,
            "code": code, "redirect_uri": "https://127.0.0.1/oauth/callback",
        }))
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_the_family() {
    let f = fixture(None).await;
    let first = f.user_token(ALICE, "read:jira-work offline_access").await;
    let old_refresh = first.refresh.clone().unwrap();

    let second = Tokens::from(&f.refresh(&old_refresh).await);
    let new_refresh = second.refresh.clone().unwrap();
    assert_ne!(second.access, first.access);
    assert_ne!(new_refresh, old_refresh, "refresh tokens rotate");
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &second.access).await.status, StatusCode::OK);

    // The rotated-out token is refused, and its whole family is revoked.
    let reuse = f.refresh(&old_refresh).await;
    assert_eq!(reuse.status, StatusCode::FORBIDDEN);
    assert_eq!(reuse.json()["error"], "invalid_grant");
    assert!(reuse.json()["error_description"].as_str().unwrap().contains("revoked"));
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &second.access).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &first.access).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.refresh(&new_refresh).await.status, StatusCode::FORBIDDEN);

    // Another consent's tokens are untouched.
    let other = f.user_token(BOB, "read:jira-work offline_access").await;
    assert_eq!(f.refresh(&other.refresh.unwrap()).await.status, StatusCode::OK);
    assert_eq!(f.site.token_requests()["refresh_token"], 4);
}

#[tokio::test]
async fn client_credentials_act_as_the_service_account() {
    let f = fixture(None).await;
    let reply = f
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ])
        .await;
    assert!(reply.json().get("refresh_token").is_none());
    assert!(!reply.json()["scope"].as_str().unwrap().contains("offline_access"));
    let app = Tokens::from(&reply).access;
    let myself = f.get(&f.jira("/myself"), &app).await;
    assert_eq!(myself.json()["accountId"], KILN_APP);
    assert_eq!(myself.json()["accountType"], "app");

    let user = f.user_token(BOB, "read:jira-work").await.access;
    f.get(&f.jira("/issue/KILN-1"), &user).await;
    f.get(&f.jira("/issue/KILN-1"), &app).await;
    let calls: Vec<_> = f.site.requests().into_iter().filter(|r| r.path.ends_with("/issue/KILN-1")).collect();
    assert_eq!(calls[0].account_id.as_deref(), Some(BOB), "asUser");
    assert_eq!(calls[1].account_id.as_deref(), Some(KILN_APP), "asApp");
    assert_eq!(f.site.token_requests()["client_credentials"], 1);
}

#[tokio::test]
async fn a_bad_client_secret_or_grant_type_is_refused() {
    let f = fixture(None).await;
    let reply = f
        .token_form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", "wrong"),
        ])
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["error"], "access_denied");
    let code = f.code(ALICE, "read:jira-work").await;
    let reply = f
        .token_json(json!({
            "grant_type": "authorization_code", "client_id": CLIENT_ID, "client_secret": "wrong",
            "code": code, "redirect_uri": REDIRECT,
        }))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // The code was not spent by the failed attempt.
    assert_eq!(f.exchange(&code).await.status, StatusCode::OK);
    let reply = f.token_json(json!({ "grant_type": "password", "client_id": CLIENT_ID })).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "unsupported_grant_type");
    assert_eq!(f.site.token_requests()["unsupported"], 1);
}

#[tokio::test]
async fn an_expired_access_token_is_refused_until_refreshed() {
    let f = fixture(None).await;
    let tokens = f.user_token(ALICE, "read:jira-work offline_access").await;
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &tokens.access).await.status, StatusCode::OK);
    f.site.expire_access_tokens();
    let reply = f.get(&f.jira("/issue/KILN-1"), &tokens.access).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.json()["code"], 401);
    assert_eq!(f.get("/me", &tokens.access).await.status, StatusCode::UNAUTHORIZED);
    let fresh = Tokens::from(&f.refresh(&tokens.refresh.unwrap()).await);
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &fresh.access).await.status, StatusCode::OK);
}

// ----------------------------------------------------------------- scopes

#[tokio::test]
async fn a_token_without_the_routes_scope_gets_401_scope_does_not_match() {
    let f = fixture(None).await;
    let read = f.user_token(ALICE, "read:jira-work").await.access;
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &read).await.status, StatusCode::OK);
    let create = f
        .call(
            Method::POST,
            &f.jira("/issue"),
            Some(&read),
            Some(json!({ "fields": { "project": { "key": "KILN" }, "summary": "x", "issuetype": { "name": "Task" } } })),
        )
        .await;
    assert_eq!(create.status, StatusCode::UNAUTHORIZED);
    assert_eq!(create.json(), json!({ "code": 401, "message": "Unauthorized; scope does not match" }));
    assert!(f.site.issue("KILN-3").is_none(), "nothing was created");
    let refused = f.site.requests().pop().unwrap();
    assert_eq!((refused.account_id.as_deref(), refused.status), (Some(ALICE), 401));

    // Confluence scopes are separate.
    let pages = f.get(&f.wiki("/pages/1001"), &read).await;
    assert_eq!(pages.json()["message"], "Unauthorized; scope does not match");
    let wiki = f.user_token(ALICE, "read:page:confluence").await.access;
    assert_eq!(f.get(&f.wiki("/pages/1001"), &wiki).await.status, StatusCode::OK);
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &wiki).await.status, StatusCode::UNAUTHORIZED);

    // v2 is checked with v3's scopes.
    assert_eq!(f.get(&f.jira2("/issue/KILN-1"), &read).await.status, StatusCode::OK);

    // No token, a made-up token, another cloud id.
    assert_eq!(
        f.call(Method::GET, &f.jira("/issue/KILN-1"), None, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), "kda_made-up").await.status, StatusCode::UNAUTHORIZED);
    let other_cloud =
        f.get("/ex/jira/00000000-0000-0000-0000-000000000000/rest/api/3/issue/KILN-1", &read).await;
    assert_eq!(other_cloud.status, StatusCode::NOT_FOUND);
    // A route the scope table does not know is refused like a scope mismatch.
    assert_eq!(f.get(&f.jira("/nonsense"), &read).await.status, StatusCode::UNAUTHORIZED);
}

// ---------------------------------------------------------------- DevOps

fn build(pipeline: &str, number: i64, sequence: i64, state: &str) -> Value {
    json!({
        "schemaVersion": "1.0", "pipelineId": pipeline, "buildNumber": number,
        "updateSequenceNumber": sequence, "displayName": format!("{pipeline} #{number}"),
        "url": "https://ci.example.com/job/1", "state": state,
        "lastUpdated": "2024-05-01T10:00:00.000Z", "issueKeys": ["KILN-1", "NOPE-9"],
    })
}

#[tokio::test]
async fn builds_and_deployments_are_accepted_stored_gated_and_deleted_by_property() {
    let f = fixture(None).await;
    let app = f.app_token().await;
    let rest = |tail: &str| format!("/ex/jira/{}/rest{tail}", f.site.cloud_id());

    let submitted = f
        .call(
            Method::POST,
            &rest("/builds/0.1/bulk"),
            Some(&app),
            Some(json!({
                "builds": [build("main", 7, 2, "successful"), { "pipelineId": "broken" }],
                "properties": { "cloudId": "c-1", "jenkinsServerUuid": "u-1" },
            })),
        )
        .await;
    assert_eq!(submitted.status, StatusCode::ACCEPTED, "{}", submitted.text());
    assert_eq!(
        submitted.json(),
        json!({
            "acceptedBuilds": [{ "pipelineId": "main", "buildNumber": 7 }],
            "rejectedBuilds": [{ "key": { "pipelineId": "broken", "buildNumber": 0 }, "errors": [
                { "message": "'buildNumber' is required and must be an integer." },
                { "message": "'updateSequenceNumber' is required and must be an integer." },
                { "message": "'displayName' is required and must be a non-empty string." },
                { "message": "'url' is required and must be a non-empty string." },
                { "message": "'state' is required and must be a non-empty string." },
                { "message": "'lastUpdated' is required and must be a non-empty string." },
            ]}],
            "unknownIssueKeys": ["NOPE-9"],
        })
    );
    // An older update is accepted and ignored, as in Jira.
    let older = json!({ "builds": [build("main", 7, 1, "failed")], "properties": { "cloudId": "c-1" } });
    f.call(Method::POST, &rest("/builds/0.1/bulk"), Some(&app), Some(older)).await;
    let stored = f.site.builds();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data["state"], "successful");
    assert_eq!(stored[0].properties["jenkinsServerUuid"], "u-1");
    let got = f.get(&rest("/builds/0.1/pipelines/main/builds/7"), &app).await;
    assert_eq!(got.json(), build("main", 7, 2, "successful"));
    assert_eq!(f.get(&rest("/builds/0.1/pipelines/main/builds/8"), &app).await.status, StatusCode::NOT_FOUND);

    let deployment = json!({
        "deploymentSequenceNumber": 3, "updateSequenceNumber": 1, "displayName": "Deploy 3",
        "url": "https://ci.example.com/job/1", "description": "to staging",
        "lastUpdated": "2024-05-01T10:05:00.000Z", "state": "successful", "issueKeys": ["KILN-2"],
        "pipeline": { "id": "main", "displayName": "main", "url": "https://ci.example.com/job" },
        "environment": { "id": "stg", "displayName": "staging", "type": "staging" },
    });
    let deployed = f
        .call(
            Method::POST,
            &rest("/deployments/0.1/bulk"),
            Some(&app),
            Some(json!({ "deployments": [deployment], "properties": { "cloudId": "c-1" } })),
        )
        .await;
    assert_eq!(deployed.status, StatusCode::ACCEPTED);
    assert_eq!(
        deployed.json(),
        json!({
            "acceptedDeployments": [{ "pipelineId": "main", "environmentId": "stg", "deploymentSequenceNumber": 3 }],
            "rejectedDeployments": [],
            "unknownIssueKeys": [],
        })
    );
    let gate = f
        .get(&rest("/deployments/0.1/pipelines/main/environments/stg/deployments/3/gating-status"), &app)
        .await;
    assert_eq!(
        gate.json(),
        json!({
            "deploymentSequenceNumber": 3, "pipelineId": "main", "environmentId": "stg",
            "updatedTimestamp": "2024-05-01T10:05:00.000Z", "gatingStatus": "allowed", "details": [],
        })
    );
    assert_eq!(f.site.deployments().len(), 1);

    // Bulk deletes need a property and match all of those given.
    let none = f.call(Method::DELETE, &rest("/builds/0.1/bulkByProperties"), Some(&app), None).await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    let other = rest("/builds/0.1/bulkByProperties?cloudId=c-1&jenkinsServerUuid=u-2");
    assert_eq!(f.call(Method::DELETE, &other, Some(&app), None).await.status, StatusCode::ACCEPTED);
    assert_eq!(f.site.builds().len(), 1);
    let mine = rest("/builds/0.1/bulkByProperties?jenkinsServerUuid=u-1");
    assert_eq!(f.call(Method::DELETE, &mine, Some(&app), None).await.status, StatusCode::ACCEPTED);
    assert!(f.site.builds().is_empty());
    let deployments = rest("/deployments/0.1/bulkByProperties?cloudId=c-1");
    assert_eq!(f.call(Method::DELETE, &deployments, Some(&app), None).await.status, StatusCode::ACCEPTED);
    assert!(f.site.deployments().is_empty());

    // Without the DevOps scopes the gate refuses, as Atlassian does.
    let user = f.user_token(ALICE, "read:jira-work write:jira-work").await.access;
    let refused = f
        .call(
            Method::POST,
            &rest("/builds/0.1/bulk"),
            Some(&user),
            Some(json!({ "builds": [build("x", 1, 1, "failed")] })),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json()["message"], "Unauthorized; scope does not match");
    assert!(f.site.builds().is_empty());
}

// ------------------------------------------------------------------ Jira

#[tokio::test]
async fn issues_are_created_read_edited_with_a_changelog_and_deleted() {
    let f = fixture(None).await;
    let token = f.user_token(ALICE, ALL_SCOPES).await.access;
    let created = f
        .call(
            Method::POST,
            &f.jira("/issue"),
            Some(&token),
            Some(json!({ "fields": {
                "project": { "id": "10000" },
                "summary": "Emulate Jira",
                "issuetype": { "name": "Bug" },
                "description": { "type": "doc", "version": 1, "content": [
                    { "type": "paragraph", "content": [{ "type": "text", "text": "In ADF." }] }
                ]},
                "labels": ["dev"],
            }})),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    assert_eq!(created.json()["key"], "KILN-3");
    let id = created.json()["id"].as_str().unwrap().to_owned();

    let v3 = f.get(&f.jira(&format!("/issue/{id}")), &token).await.json();
    assert_eq!(v3["key"], "KILN-3");
    assert_eq!(v3["fields"]["summary"], "Emulate Jira");
    assert_eq!(v3["fields"]["description"]["type"], "doc");
    assert_eq!(v3["fields"]["status"]["name"], "To Do");
    assert_eq!(v3["fields"]["issuetype"]["name"], "Bug");
    assert_eq!(v3["fields"]["reporter"]["accountId"], ALICE);
    assert_eq!(v3["fields"]["project"]["key"], "KILN");
    assert!(v3["fields"]["created"].as_str().unwrap().ends_with("+0000"));
    let v2 = f.get(&f.jira2("/issue/KILN-3"), &token).await.json();
    assert_eq!(v2["fields"]["description"], "In ADF.", "v2 speaks plain text");
    let some = f.get(&f.jira("/issue/KILN-3?fields=summary,status"), &token).await.json();
    assert_eq!(some["fields"].as_object().unwrap().len(), 2);

    // A string description through v3 is accepted and served as ADF.
    let edit = f
        .call(
            Method::PUT,
            &f.jira("/issue/KILN-3"),
            Some(&token),
            Some(json!({ "fields": { "summary": "Emulate Jira well", "description": "Plain now." } })),
        )
        .await;
    assert_eq!(edit.status, StatusCode::NO_CONTENT, "{}", edit.text());
    let after = f.get(&f.jira("/issue/KILN-3?expand=changelog"), &token).await.json();
    assert_eq!(after["fields"]["summary"], "Emulate Jira well");
    assert_eq!(after["fields"]["description"]["content"][0]["content"][0]["text"], "Plain now.");
    let items = &after["changelog"]["histories"][0]["items"];
    assert_eq!(items[0]["field"], "summary");
    assert_eq!(items[0]["fromString"], "Emulate Jira");
    assert_eq!(items[0]["toString"], "Emulate Jira well");
    assert_eq!(items[1]["field"], "description");
    assert_eq!(items[1]["fromString"], "In ADF.");
    assert_eq!(f.site.issue("KILN-3").unwrap()["changelog"]["total"], 1);

    // Jira's `update` verbs on labels: add (once), remove, set; other fields' verbs are refused.
    let issue3 = f.jira("/issue/KILN-3");
    let labels =
        |ops: Value| f.call(Method::PUT, &issue3, Some(&token), Some(json!({ "update": { "labels": ops } })));
    let added = labels(json!([{ "add": "a" }, { "add": "b" }, { "add": "a" }])).await;
    assert_eq!(added.status, StatusCode::NO_CONTENT, "{}", added.text());
    assert_eq!(f.site.issue("KILN-3").unwrap()["fields"]["labels"], json!(["dev", "a", "b"]));
    assert_eq!(labels(json!([{ "remove": "a" }])).await.status, StatusCode::NO_CONTENT);
    assert_eq!(f.site.issue("KILN-3").unwrap()["fields"]["labels"], json!(["dev", "b"]));
    assert_eq!(labels(json!([{ "set": ["x", "y"] }])).await.status, StatusCode::NO_CONTENT);
    assert_eq!(f.site.issue("KILN-3").unwrap()["fields"]["labels"], json!(["x", "y"]));
    assert_eq!(labels(json!([{ "add": "has space" }])).await.status, StatusCode::BAD_REQUEST);
    let other = f
        .call(
            Method::PUT,
            &f.jira("/issue/KILN-3"),
            Some(&token),
            Some(json!({ "update": { "summary": [{ "set": "s" }] } })),
        )
        .await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
    assert!(other.json()["errors"]["summary"].as_str().unwrap().contains("labels only"), "{}", other.text());

    // Errors in Jira's shape.
    let unknown = f
        .call(
            Method::PUT,
            &f.jira("/issue/KILN-3"),
            Some(&token),
            Some(json!({ "fields": { "priority": "High" } })),
        )
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert!(unknown.json()["errors"]["priority"].as_str().unwrap().contains("cannot be set"));
    assert!(unknown.json()["errorMessages"].is_array());
    let missing = f
        .call(
            Method::POST,
            &f.jira("/issue"),
            Some(&token),
            Some(json!({ "fields": { "project": { "key": "KILN" } } })),
        )
        .await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["errors"]["summary"], "You must specify a summary of the issue.");
    assert!(missing.json()["errors"]["issuetype"].is_string());

    let deleted = f.call(Method::DELETE, &f.jira("/issue/KILN-3"), Some(&token), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = f.get(&f.jira("/issue/KILN-3"), &token).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert_eq!(
        gone.json()["errorMessages"][0],
        "Issue does not exist or you do not have permission to see it."
    );
    assert!(f.site.issue("KILN-3").is_none());
    // Keys are not reused.
    assert_eq!(f.create_issue(&token, "Next").await["key"], "KILN-4");
}

#[tokio::test]
async fn transitions_move_an_issue_through_the_workflow() {
    let f = fixture(None).await;
    let token = f.user_token(BOB, ALL_SCOPES).await.access;
    let list = f.get(&f.jira("/issue/KILN-1/transitions"), &token).await.json();
    let names: Vec<&str> =
        list["transitions"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["In Progress", "Done"], "not the status it is in");
    let moved = f
        .call(
            Method::POST,
            &f.jira("/issue/KILN-1/transitions"),
            Some(&token),
            Some(json!({ "transition": { "id": "31" } })),
        )
        .await;
    assert_eq!(moved.status, StatusCode::NO_CONTENT, "{}", moved.text());
    let issue = f.site.issue("KILN-1").unwrap();
    assert_eq!(issue["fields"]["status"]["name"], "Done");
    assert_eq!(issue["fields"]["status"]["statusCategory"]["key"], "done");
    let item = &issue["changelog"]["histories"][0]["items"][0];
    assert_eq!(
        (item["field"].as_str(), item["fromString"].as_str(), item["toString"].as_str()),
        (Some("status"), Some("To Do"), Some("Done"))
    );
    let same = f
        .call(
            Method::POST,
            &f.jira("/issue/KILN-1/transitions"),
            Some(&token),
            Some(json!({ "transition": { "id": 31 } })),
        )
        .await;
    assert_eq!(same.status, StatusCode::BAD_REQUEST);
    assert_eq!(same.json()["errorMessages"][0], "Transition id '31' is not valid for this issue.");
    let none =
        f.call(Method::POST, &f.jira("/issue/KILN-1/transitions"), Some(&token), Some(json!({}))).await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn comments_are_added_and_listed() {
    let f = fixture(None).await;
    let token = f.user_token(BOB, ALL_SCOPES).await.access;
    let added = f
        .call(
            Method::POST,
            &f.jira("/issue/KILN-2/comment"),
            Some(&token),
            Some(json!({ "body": "Looks good." })),
        )
        .await;
    assert_eq!(added.status, StatusCode::CREATED, "{}", added.text());
    assert_eq!(added.json()["author"]["accountId"], BOB);
    assert_eq!(added.json()["body"]["type"], "doc", "v3 answers in ADF");
    let v2 = f
        .call(
            Method::POST,
            &f.jira2("/issue/KILN-2/comment"),
            Some(&token),
            Some(json!({ "body": "Second." })),
        )
        .await;
    assert_eq!(v2.json()["body"], "Second.");
    let list = f.get(&f.jira2("/issue/KILN-2/comment"), &token).await.json();
    assert_eq!(list["total"], 2);
    assert_eq!(list["comments"][0]["body"], "Looks good.");
    let paged = f.get(&f.jira2("/issue/KILN-2/comment?startAt=1&maxResults=1"), &token).await.json();
    assert_eq!(paged["comments"].as_array().unwrap().len(), 1);
    assert_eq!(paged["comments"][0]["body"], "Second.");
    let empty = f
        .call(Method::POST, &f.jira("/issue/KILN-2/comment"), Some(&token), Some(json!({ "body": "  " })))
        .await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);
    assert_eq!(empty.json()["errors"]["comment"], "Comment body can not be empty!");
}

#[tokio::test]
async fn search_understands_the_jql_subset_and_refuses_the_rest() {
    let f = fixture(None).await;
    let token = f.user_token(ALICE, ALL_SCOPES).await.access;
    f.create_issue(&token, "Third").await; // KILN-3, created last

    let search = |jql: &str| format!("/search?{}", query(&[("jql", jql)]));
    let asc = f.get(&f.jira(&search("project = KILN ORDER BY created ASC")), &token).await.json();
    assert_eq!(keys(&asc), ["KILN-1", "KILN-2", "KILN-3"]);
    assert_eq!(asc["total"], 3);
    let desc = f.get(&f.jira(&search("project = kiln order by created desc")), &token).await.json();
    assert_eq!(keys(&desc), ["KILN-3", "KILN-2", "KILN-1"]);
    let quoted = f.get(&f.jira(&search(r#"status = "In Progress""#)), &token).await.json();
    assert_eq!(keys(&quoted), ["KILN-2"]);
    let bare = f.get(&f.jira(&search("project = KILN AND status = Done")), &token).await.json();
    assert_eq!(bare["total"], 0);
    let by_key = f.get(&f.jira(&search("key = SEC-1")), &token).await.json();
    assert_eq!(keys(&by_key), ["SEC-1"]);
    let page = f
        .get(
            &f.jira(&format!(
                "{}&startAt=1&maxResults=1&fields=summary",
                search("project = KILN ORDER BY created ASC")
            )),
            &token,
        )
        .await
        .json();
    assert_eq!(keys(&page), ["KILN-2"]);
    assert_eq!(
        (page["startAt"].as_u64(), page["maxResults"].as_u64(), page["total"].as_u64()),
        (Some(1), Some(1), Some(3))
    );
    assert_eq!(page["issues"][0]["fields"].as_object().unwrap().keys().collect::<Vec<_>>(), ["summary"]);

    let posted = f
        .call(
            Method::POST,
            &f.jira("/search"),
            Some(&token),
            Some(json!({ "jql": "project = KILN ORDER BY created ASC", "maxResults": 2, "fields": ["status"] })),
        )
        .await
        .json();
    assert_eq!(keys(&posted), ["KILN-1", "KILN-2"]);
    assert_eq!(posted["issues"][0]["fields"]["status"]["name"], "To Do");

    // The enhanced search pages with tokens and returns ids unless asked.
    let first = f
        .call(
            Method::POST,
            &f.jira("/search/jql"),
            Some(&token),
            Some(json!({ "jql": "project = KILN ORDER BY created ASC", "maxResults": 2 })),
        )
        .await
        .json();
    assert_eq!(first["issues"].as_array().unwrap().len(), 2);
    assert!(first["issues"][0].get("key").is_none(), "ids only by default");
    assert_eq!(first["isLast"], false);
    let next = first["nextPageToken"].as_str().unwrap();
    let rest = f
        .get(
            &f.jira(&format!(
                "/search/jql?{}",
                query(&[
                    ("jql", "project = KILN ORDER BY created ASC"),
                    ("nextPageToken", next),
                    ("fields", "summary")
                ])
            )),
            &token,
        )
        .await
        .json();
    assert_eq!(keys(&rest), ["KILN-3"]);
    assert_eq!(rest["isLast"], true);
    assert!(rest.get("nextPageToken").is_none());
    let unbounded = f.get(&f.jira("/search/jql?jql=ORDER%20BY%20created"), &token).await;
    assert_eq!(unbounded.status, StatusCode::BAD_REQUEST);

    for (jql, part) in [
        ("project = KILN OR project = SEC", "'OR'"),
        ("assignee = currentUser()", "'assignee'"),
        ("project = KILN ORDER BY updated DESC", "ORDER BY updated"),
        ("summary ~ gateway", "'summary'"),
    ] {
        let reply = f.get(&f.jira(&search(jql)), &token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{jql}");
        let message = reply.json()["errorMessages"][0].as_str().unwrap().to_owned();
        assert!(message.contains(part), "{jql}: {message}");
    }
    let nope = f.get(&f.jira(&search("project = NOPE")), &token).await;
    assert_eq!(nope.json()["errorMessages"][0], "The value 'NOPE' does not exist for the field 'project'.");
}

#[tokio::test]
async fn project_permissions_are_enforced_for_the_acting_user() {
    let f = fixture(None).await;
    let bob = f.user_token(BOB, ALL_SCOPES).await.access;
    let carol = f.user_token(CAROL, ALL_SCOPES).await.access;
    let app = f.app_token().await;

    // Bob cannot see SEC: its issue is a 404 and search refuses the project.
    assert_eq!(f.get(&f.jira("/issue/SEC-1"), &bob).await.status, StatusCode::NOT_FOUND);
    assert_eq!(f.get(&f.jira("/project/SEC"), &bob).await.status, StatusCode::NOT_FOUND);
    let projects = f.get(&f.jira("/project"), &bob).await.json();
    assert_eq!(projects.as_array().unwrap().len(), 1);
    let all = f.get(&f.jira("/search?jql=key%20%3D%20SEC-1"), &bob).await;
    assert_eq!(all.status, StatusCode::BAD_REQUEST);
    let everything = f.get(&f.jira("/search"), &bob).await.json();
    assert!(keys(&everything).iter().all(|k| k.starts_with("KILN-")), "{everything}");

    // Bob may not delete; Carol may only browse.
    let delete = f.call(Method::DELETE, &f.jira("/issue/KILN-1"), Some(&bob), None).await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN);
    let edit = f
        .call(
            Method::PUT,
            &f.jira("/issue/KILN-1"),
            Some(&carol),
            Some(json!({ "fields": { "summary": "x" } })),
        )
        .await;
    assert_eq!(edit.status, StatusCode::FORBIDDEN);
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), &carol).await.status, StatusCode::OK);
    let comment = f
        .call(Method::POST, &f.jira("/issue/KILN-1/comment"), Some(&carol), Some(json!({ "body": "hi" })))
        .await;
    assert_eq!(comment.status, StatusCode::FORBIDDEN);
    assert_eq!(f.get(&f.jira("/issue/KILN-1/transitions"), &carol).await.json()["transitions"], json!([]));

    let mine = f
        .get(
            &f.jira("/mypermissions?permissions=BROWSE_PROJECTS,EDIT_ISSUES,DELETE_ISSUES&projectKey=KILN"),
            &bob,
        )
        .await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.text());
    let p = &mine.json()["permissions"];
    assert_eq!(p["BROWSE_PROJECTS"]["havePermission"], true);
    assert_eq!(p["EDIT_ISSUES"]["havePermission"], true);
    assert_eq!(p["DELETE_ISSUES"]["havePermission"], false);
    assert_eq!(p["EDIT_ISSUES"]["type"], "PROJECT");
    let on_issue =
        f.get(&f.jira("/mypermissions?permissions=EDIT_ISSUES&issueKey=KILN-1"), &carol).await.json();
    assert_eq!(on_issue["permissions"]["EDIT_ISSUES"]["havePermission"], false);
    assert_eq!(
        f.get(&f.jira("/mypermissions?permissions=BROWSE_PROJECTS&projectKey=SEC"), &bob).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(f.get(&f.jira("/mypermissions"), &bob).await.status, StatusCode::BAD_REQUEST);
    let admin = f.get(&f.jira("/mypermissions?permissions=ADMINISTER"), &bob).await.json();
    assert_eq!(admin["permissions"]["ADMINISTER"]["havePermission"], false);

    // asApp checks what a user may do.
    let check = f
        .call(
            Method::POST,
            &f.jira("/permissions/check"),
            Some(&app),
            Some(json!({
                "accountId": BOB,
                "globalPermissions": ["ADMINISTER"],
                "projectPermissions": [
                    { "permissions": ["EDIT_ISSUES", "DELETE_ISSUES"], "projects": [10000, 10001], "issues": [10000, 10002] }
                ],
            })),
        )
        .await;
    assert_eq!(check.status, StatusCode::OK, "{}", check.text());
    let c = check.json();
    assert_eq!(c["globalPermissions"], json!([]));
    assert_eq!(
        c["projectPermissions"][0],
        json!({ "permission": "EDIT_ISSUES", "projects": [10000], "issues": [10000] })
    );
    assert_eq!(
        c["projectPermissions"][1],
        json!({ "permission": "DELETE_ISSUES", "projects": [], "issues": [] })
    );
    // A user may check only themself.
    let other = f
        .call(
            Method::POST,
            &f.jira("/permissions/check"),
            Some(&bob),
            Some(json!({ "accountId": ALICE, "globalPermissions": ["ADMINISTER"] })),
        )
        .await;
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    let own = f
        .call(Method::POST, &f.jira("/permissions/check"), Some(&bob), Some(json!({ "projectPermissions": [{ "permissions": ["BROWSE_PROJECTS"], "projects": [10000, 10001] }] })))
        .await;
    assert_eq!(own.json()["projectPermissions"][0]["projects"], json!([10000]));

    // Users and fields.
    let user = f.get(&f.jira(&format!("/user?{}", query(&[("accountId", CAROL)]))), &bob).await.json();
    assert_eq!(user["displayName"], "Carol Reader");
    assert_eq!(f.get(&f.jira("/user?accountId=nobody"), &bob).await.status, StatusCode::NOT_FOUND);
    let found = f.get(&f.jira("/users/search?query=builder"), &bob).await.json();
    assert_eq!(found[0]["accountId"], BOB);
    let fields = f.get(&f.jira("/field"), &bob).await.json();
    assert!(fields.as_array().unwrap().iter().any(|x| x["id"] == "summary"));
    let search = f.get(&f.jira("/project/search?query=kil"), &bob).await.json();
    assert_eq!(search["values"][0]["key"], "KILN");
    let project = f.get(&f.jira("/project/10000"), &bob).await.json();
    assert_eq!(project["issueTypes"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn personal_access_tokens_work_on_the_data_center_prefixes_only() {
    let f = fixture(None).await;
    let issue = f.get("/jira/rest/api/2/issue/KILN-1", "dev-pat-bob").await;
    assert_eq!(issue.status, StatusCode::OK, "{}", issue.text());
    assert_eq!(issue.json()["fields"]["description"], "Set up the dev site, seeded.");
    let seen = f.site.requests().pop().unwrap();
    assert_eq!((seen.via, seen.account_id.as_deref()), (Via::Pat, Some(BOB)));
    assert_eq!(f.get("/jira/rest/api/2/issue/SEC-1", "dev-pat-bob").await.status, StatusCode::NOT_FOUND);
    let created = f
        .call(
            Method::POST,
            "/jira/rest/api/2/issue",
            Some("dev-pat-bob"),
            Some(json!({ "fields": { "project": { "key": "KILN" }, "summary": "From DC", "issuetype": { "name": "Task" } } })),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let info = f.get("/jira/rest/api/2/serverInfo", "dev-pat-alice").await.json();
    assert_eq!(info["deploymentType"], "Server");
    let page = f.get("/confluence/rest/api/content/1001?expand=body.storage", "dev-pat-alice").await;
    assert_eq!(page.json()["body"]["storage"]["value"], "<p>Welcome to the dev site.</p>");
    // v1 content listing: pages of a space, paged by start and limit; other types are empty.
    let listed =
        f.get("/confluence/rest/api/content?type=page&spaceKey=DEV&limit=1", "dev-pat-alice").await.json();
    assert_eq!((listed["size"].as_u64(), listed["limit"].as_u64()), (Some(1), Some(1)), "{listed}");
    assert_eq!(listed["results"][0]["title"], "Development home");
    let next = f.get("/confluence/rest/api/content?spaceKey=DEV&start=1", "dev-pat-alice").await.json();
    assert_eq!(next["results"][0]["title"], "Runbook", "{next}");
    let blogs = f.get("/confluence/rest/api/content?type=blogpost", "dev-pat-alice").await.json();
    assert_eq!(blogs["size"], 0);

    let bad = f.get("/jira/rest/api/2/issue/KILN-1", "dev-pat-mallory").await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(bad.json()["errorMessages"].is_array());
    assert_eq!(f.get("/confluence/rest/api/content/1001", "nope").await.status, StatusCode::UNAUTHORIZED);
    // Neither kind of token works on the other's prefix.
    let oauth = f.user_token(ALICE, ALL_SCOPES).await.access;
    assert_eq!(f.get("/jira/rest/api/2/issue/KILN-1", &oauth).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(f.get(&f.jira("/issue/KILN-1"), "dev-pat-alice").await.status, StatusCode::UNAUTHORIZED);
}

// ------------------------------------------------------------ Confluence

#[tokio::test]
async fn confluence_pages_are_created_read_and_updated_with_version_checks() {
    let f = fixture(None).await;
    let token = f.user_token(BOB, ALL_SCOPES).await.access;
    let spaces = f.get(&f.wiki("/spaces"), &token).await.json();
    let keys: Vec<&str> =
        spaces["results"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert_eq!(keys, ["DEV", "TEAM"]);
    assert_eq!(spaces["results"][0]["homepageId"], "1001");
    let dev = f.get(&f.wiki("/spaces?keys=DEV"), &token).await.json();
    assert_eq!(dev["results"].as_array().unwrap().len(), 1);

    let created = f
        .call(
            Method::POST,
            &f.wiki("/pages"),
            Some(&token),
            Some(json!({
                "spaceId": "65537", "status": "current", "title": "Design notes", "parentId": "1001",
                "body": { "representation": "storage", "value": "<p>v1</p>" },
            })),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.text());
    let page = created.json();
    let id = page["id"].as_str().unwrap().to_owned();
    assert_eq!(page["version"]["number"], 1);
    assert_eq!(page["authorId"], BOB);
    assert!(page["createdAt"].as_str().unwrap().ends_with('Z'));

    let got = f.get(&f.wiki(&format!("/pages/{id}?body-format=storage")), &token).await.json();
    assert_eq!(got["body"]["storage"]["value"], "<p>v1</p>");
    assert_eq!(got["parentId"], "1001");
    let bare = f.get(&f.wiki(&format!("/pages/{id}")), &token).await.json();
    assert_eq!(bare["body"], json!({}));

    let update = |number: u64, text: &str| {
        json!({
            "id": id, "status": "current", "title": "Design notes",
            "body": { "representation": "storage", "value": text },
            "version": { "number": number, "message": "edit" },
        })
    };
    let ok = f
        .call(Method::PUT, &f.wiki(&format!("/pages/{id}")), Some(&token), Some(update(2, "<p>v2</p>")))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json()["version"]["number"], 2);
    let stale = f
        .call(Method::PUT, &f.wiki(&format!("/pages/{id}")), Some(&token), Some(update(2, "<p>lost</p>")))
        .await;
    assert_eq!(stale.status, StatusCode::CONFLICT);
    assert_eq!(stale.json()["errors"][0]["status"], 409);
    let skip = f
        .call(Method::PUT, &f.wiki(&format!("/pages/{id}")), Some(&token), Some(update(9, "<p>x</p>")))
        .await;
    assert_eq!(skip.status, StatusCode::CONFLICT);
    assert_eq!(f.site.page(&id).unwrap()["body"]["storage"]["value"], "<p>v2</p>");

    let duplicate = f
        .call(
            Method::POST,
            &f.wiki("/pages"),
            Some(&token),
            Some(json!({ "spaceId": 65537, "title": "Runbook" })),
        )
        .await;
    assert_eq!(duplicate.status, StatusCode::BAD_REQUEST);
    assert_eq!(f.get(&f.wiki("/pages/999999"), &token).await.status, StatusCode::NOT_FOUND);

    let children = f.get(&f.wiki("/pages/1001/children"), &token).await.json();
    let titles: Vec<&str> =
        children["results"].as_array().unwrap().iter().map(|c| c["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Runbook", "Design notes"]);
    let in_space = f.get(&f.wiki("/pages?space-id=65537&body-format=storage"), &token).await.json();
    assert_eq!(in_space["results"].as_array().unwrap().len(), 3);
    let in_team = f.get(&f.wiki("/pages?space-id=65538"), &token).await.json();
    assert_eq!(in_team["results"], json!([]));

    let v1 = f
        .get(
            &format!(
                "/ex/confluence/{}/wiki/rest/api/content/{id}?expand=body.storage,version",
                f.site.cloud_id()
            ),
            &token,
        )
        .await;
    assert_eq!(v1.status, StatusCode::OK, "{}", v1.text());
    let v1 = v1.json();
    assert_eq!(v1["type"], "page");
    assert_eq!(v1["version"]["number"], 2);
    assert_eq!(v1["body"]["storage"]["value"], "<p>v2</p>");
    assert_eq!(v1["space"]["key"], "DEV");
    let missing =
        f.get(&format!("/ex/confluence/{}/wiki/rest/api/content/424242", f.site.cloud_id()), &token).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["statusCode"], 404);
}

// ---------------------------------------------------------------- events

const EVENT_SECRET: &[u8] = b"an event secret of some length";

type Received = Arc<Mutex<Vec<(String, String, String)>>>;

/// An HTTPS receiver on loopback keeping (timestamp, signature, body).
async fn receiver() -> (String, String, Received, tokio::sync::oneshot::Sender<()>) {
    let got: Received = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/events",
        post(move |headers: HeaderMap, body: String| {
            let keep = keep.clone();
            async move {
                let header = |name: &str| {
                    headers.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
                };
                keep.lock().unwrap().push((
                    header("x-kiln-event-timestamp"),
                    header("x-kiln-signature"),
                    body,
                ));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let identity = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let tls = kiln_crypto::tls::server_config(&identity).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(kiln_http::serve(listener, tls, app, async {
        let _ = stopped.await;
    }));
    (format!("https://127.0.0.1:{port}/events"), identity.cert_pem, got, stop)
}

#[tokio::test]
async fn changes_are_posted_as_signed_events() {
    let (url, roots_pem, got, _stop) = receiver().await;
    let f = fixture(Some(EventSink { url, secret: EVENT_SECRET.to_vec(), roots_pem })).await;
    let token = f.user_token(BOB, ALL_SCOPES).await.access;

    let key = f.create_issue(&token, "Evented").await["key"].as_str().unwrap().to_owned();
    let path = f.jira(&format!("/issue/{key}"));
    f.call(Method::PUT, &path, Some(&token), Some(json!({ "fields": { "summary": "Evented twice" } }))).await;
    f.call(Method::POST, &format!("{path}/comment"), Some(&token), Some(json!({ "body": "noted" }))).await;
    let page = f
        .call(
            Method::POST,
            &f.wiki("/pages"),
            Some(&token),
            Some(json!({ "spaceId": "65538", "title": "Events" })),
        )
        .await
        .json();
    let update =
        json!({ "id": page["id"], "title": "Events!", "status": "current", "version": { "number": 2 } });
    f.call(
        Method::PUT,
        &f.wiki(&format!("/pages/{}", page["id"].as_str().unwrap())),
        Some(&token),
        Some(update),
    )
    .await;
    let alice = f.user_token(ALICE, ALL_SCOPES).await.access;
    assert_eq!(f.call(Method::DELETE, &path, Some(&alice), None).await.status, StatusCode::NO_CONTENT);

    let deliveries = f.site.wait_for_deliveries(6, Duration::from_secs(20)).await;
    let types: Vec<&str> = deliveries.iter().map(|d| d.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "avi:jira:created:issue",
            "avi:jira:updated:issue",
            "avi:jira:commented:issue",
            "avi:confluence:created:page",
            "avi:confluence:updated:page",
            "avi:jira:deleted:issue",
        ]
    );
    assert!(deliveries.iter().all(|d| d.status == Some(204) && d.attempts == 1), "{deliveries:?}");

    let received = got.lock().unwrap().clone();
    assert_eq!(received.len(), 6);
    for (timestamp, signature, body) in &received {
        assert!(verify_signature(EVENT_SECRET, timestamp, body.as_bytes(), signature), "{body}");
        let tampered = body.replacen("Evented", "Eventex", 1);
        if tampered != *body {
            assert!(!verify_signature(EVENT_SECRET, timestamp, tampered.as_bytes(), signature));
        }
        assert!(!verify_signature(b"another secret, also long", timestamp, body.as_bytes(), signature));
    }
    let bodies: Vec<Value> = received.iter().map(|(_, _, b)| serde_json::from_str(b).unwrap()).collect();
    assert_eq!(bodies[0]["eventType"], "avi:jira:created:issue");
    assert_eq!(bodies[0]["atlassianId"], BOB);
    assert_eq!(bodies[0]["issue"]["key"], key.as_str());
    assert_eq!(bodies[0]["context"]["cloudId"], f.site.cloud_id());
    let item = &bodies[1]["changelog"]["items"][0];
    assert_eq!(
        (item["field"].as_str(), item["fromString"].as_str(), item["toString"].as_str()),
        (Some("summary"), Some("Evented"), Some("Evented twice"))
    );
    assert_eq!(bodies[2]["comment"]["author"]["accountId"], BOB);
    assert_eq!(bodies[3]["content"]["title"], "Events");
    assert_eq!(bodies[4]["content"]["version"]["number"], 2);
    assert_eq!(bodies[5]["atlassianId"], ALICE);
    assert_eq!(bodies[5]["issue"]["fields"]["summary"], "Evented twice");
}

#[tokio::test]
async fn an_unusable_seed_or_sink_stops_the_site_from_starting() {
    let identity = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let tls = kiln_crypto::tls::server_config(&identity).unwrap();
    let mut seed = Seed::example();
    seed.issues[0].key = "NOPE-1".into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = start(listener, tls.clone(), DevSiteConfig { seed, events: None }).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("NOPE"), "{err}");
    let sink = EventSink {
        url: "http://127.0.0.1/x".into(),
        secret: EVENT_SECRET.to_vec(),
        roots_pem: identity.cert_pem,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err =
        start(listener, tls, DevSiteConfig { seed: Seed::example(), events: Some(sink) }).await.unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");

    // The example round-trips through JSON, and unknown keys are refused.
    let text = serde_json::to_string(&Seed::example()).unwrap();
    assert_eq!(Seed::from_json(&text).unwrap(), Seed::example());
    let mut v: Value = serde_json::from_str(&text).unwrap();
    v["surprise"] = json!(true);
    assert!(Seed::from_json(&v.to_string()).is_err());
}

// ------------------------------------------------------ context tokens

fn claims_of(token: &str, keys: &kiln_crypto::jws::JwkSet) -> Value {
    let keys = kiln_crypto::jws::Ed25519PublicKey::from_jwk_set(keys).unwrap();
    serde_json::from_slice(&kiln_crypto::jws::verify(token, &keys).unwrap().claims).unwrap()
}

#[tokio::test]
async fn context_tokens_are_signed_for_a_person_an_installation_and_a_place_they_may_see() {
    let f = fixture(None).await;
    let published = f.call(Method::GET, "/kiln/context-keys", None, None).await;
    assert_eq!(published.status, StatusCode::OK, "{}", published.text());
    let keys: kiln_crypto::jws::JwkSet = serde_json::from_value(published.json()).unwrap();
    assert_eq!(keys, f.site.context_keys());
    assert_eq!(keys.keys[0].crv, "Ed25519");

    // By accountId (the site's loopback trust model), on an issue Bob may browse.
    let ask = |body: Value, token: Option<String>| {
        let f = &f;
        async move { f.call(Method::POST, "/kiln/context-token", token.as_deref(), Some(body)).await }
    };
    let reply = ask(
        json!({ "installation": "inst-1", "moduleKey": "panel", "accountId": BOB, "issueKey": "KILN-2", "localId": "l-1" }),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let claims = claims_of(reply.json()["token"].as_str().unwrap(), &keys);
    assert_eq!(claims["sub"], BOB);
    assert_eq!(claims["aud"], "inst-1");
    assert_eq!(claims["iss"], f.site.base_url());
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 300);
    assert_eq!(reply.json()["expiresAt"], claims["exp"]);
    let context = &claims["context"];
    assert_eq!(context["cloudId"], f.site.cloud_id());
    assert_eq!(context["siteUrl"], "https://kiln-dev.atlassian.net");
    assert_eq!(context["moduleKey"], "panel");
    assert_eq!(context["localId"], "l-1");
    assert_eq!(context["extension"]["type"], "jira:issuePanel");
    assert_eq!(context["extension"]["issue"]["key"], "KILN-2");
    assert_eq!(context["extension"]["project"]["key"], "KILN");

    // By an access token of this site: its person, whatever else is said.
    let alice = f.user_token(ALICE, "read:jira-work").await.access;
    let reply =
        ask(json!({ "installation": "inst-1", "moduleKey": "panel", "ttlSeconds": 60 }), Some(alice.clone()))
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let claims = claims_of(reply.json()["token"].as_str().unwrap(), &keys);
    assert_eq!(claims["sub"], ALICE);
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);
    assert_eq!(claims["context"]["extension"], json!({ "type": "jira:globalPage" }));
    let differs = ask(json!({ "installation": "i", "moduleKey": "m", "accountId": BOB }), Some(alice)).await;
    assert_eq!(differs.status, StatusCode::BAD_REQUEST, "{}", differs.text());

    // Refusals: a place the person may not see, an app's service account,
    // a stranger, a forged access token, too long a life, an unknown field.
    let cases = [
        (
            json!({ "installation": "i", "moduleKey": "m", "accountId": CAROL, "issueKey": "SEC-1" }),
            None,
            404,
        ),
        (json!({ "installation": "i", "moduleKey": "m", "accountId": KILN_APP }), None, 400),
        (json!({ "installation": "i", "moduleKey": "m", "accountId": "nobody" }), None, 400),
        (json!({ "installation": "i", "moduleKey": "m" }), Some("forged".to_owned()), 401),
        (json!({ "installation": "i", "moduleKey": "m", "accountId": BOB, "ttlSeconds": 301 }), None, 400),
        (json!({ "installation": "i", "moduleKey": "m", "accountId": BOB, "admin": true }), None, 400),
        (json!({ "installation": "i", "moduleKey": "no spaces", "accountId": BOB }), None, 400),
        (json!({ "installation": "", "moduleKey": "m", "accountId": BOB }), None, 400),
    ];
    for (body, token, status) in cases {
        let reply = ask(body.clone(), token).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {}", reply.text());
        assert!(reply.json().get("token").is_none());
    }

    // A page's extension names its space; the in-process issuer matches the route.
    let token = f
        .site
        .context_token(&kiln_devsite::ContextRequest {
            installation: "inst-2".into(),
            module_key: "byline".into(),
            account_id: Some(CAROL.into()),
            page_id: Some("1001".into()),
            ..Default::default()
        })
        .unwrap();
    let claims = claims_of(&token, &keys);
    assert_eq!(claims["context"]["extension"]["type"], "confluence:contentBylineItem");
    assert_eq!(claims["context"]["extension"]["content"]["id"], "1001");
    assert!(claims["context"]["extension"]["space"]["key"].is_string(), "{claims}");
}
