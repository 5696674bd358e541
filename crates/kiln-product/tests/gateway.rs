//! The product gateway against the dev site on loopback, as Atlassian Cloud
//! (OAuth 2.0) and as Data Center (personal access tokens): scope checks,
//! `/rest/api/2` aliasing, granular alternatives, who each call acts for,
//! impersonation, the consent flow, refresh-token rotation, and tokens kept
//! sealed and out of every error.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::collections::BTreeMap;
use std::sync::Arc;

use kiln_devsite::{ALICE, BOB, DevSite, DevSiteConfig, KILN_APP, Seed, Via};
use kiln_http::{HttpsClient, Method};
use kiln_kvs::Kvs;
use kiln_manifest::{Scope, ScopeGrant};
use kiln_product::*;
use kiln_store::testing::each_backend;

const OWNER: &str = "installation:test";

struct Fixture {
    site: DevSite,
    cert: kiln_crypto::tls::Identity,
    kvs: Arc<Kvs>,
}

async fn devsite() -> (DevSite, kiln_crypto::tls::Identity) {
    let cert = kiln_crypto::tls::self_signed(&["127.0.0.1"]).unwrap();
    let tls = kiln_crypto::tls::server_config(&cert).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = kiln_devsite::start(listener, tls, DevSiteConfig { seed: Seed::example(), events: None })
        .await
        .unwrap();
    (site, cert)
}

fn kvs(store: &kiln_store::Store) -> Arc<Kvs> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let provider = kiln_crypto::keys::EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap();
    Arc::new(Kvs::new(store.clone(), Arc::new(provider)))
}

impl Fixture {
    fn endpoint(&self, path: &str) -> Endpoint {
        Endpoint::new(&format!("{}{path}", self.site.base_url()), &self.cert.cert_pem, 5 << 20).unwrap()
    }

    fn cloud(&self, config: Config) -> ProductGateway {
        let seed = Seed::example();
        let client = &seed.oauth_clients[0];
        let site = Site::Cloud(CloudSite {
            auth: self.endpoint(""),
            api: self.endpoint(""),
            cloud_id: self.site.cloud_id().to_owned(),
            client: OAuthClient {
                client_id: client.client_id.clone(),
                client_secret: client.client_secret.clone().into(),
                redirect_uri: client.redirect_uris[0].clone(),
            },
        });
        ProductGateway::new(config, site, self.kvs.clone())
    }

    fn data_center(&self) -> ProductGateway {
        let site = Site::DataCenter(DataCenterSite {
            jira: Some(self.endpoint("/jira")),
            confluence: Some(self.endpoint("/confluence")),
        });
        ProductGateway::new(Config::default(), site, self.kvs.clone())
    }

    /// Follow the consent URL as `user` would; the code the site sends back.
    async fn code(&self, gateway: &ProductGateway, user: &str, scopes: &[&str]) -> String {
        let url = gateway.tokens().authorization_url(scopes, "state-2").unwrap();
        let path = url.strip_prefix(self.site.base_url()).unwrap();
        let roots = kiln_crypto::tls::client_config(&self.cert.cert_pem).unwrap();
        let browser = HttpsClient::new(&self.site.addr().to_string(), "127.0.0.1", roots);
        let reply = browser.send(Method::GET, &format!("{path}&login_as={user}"), &[], None).await.unwrap();
        let location = reply.headers["location"].to_str().unwrap().to_owned();
        let back = url::Url::parse(&location).unwrap();
        back.query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
    }

    /// Follow the consent URL as `user` would, and hand the code back.
    async fn consent(&self, gateway: &ProductGateway, user: &str, scopes: &[&str]) -> Authorized {
        let url = gateway.tokens().authorization_url(scopes, "state-1").unwrap();
        let path = url.strip_prefix(self.site.base_url()).unwrap();
        let roots = kiln_crypto::tls::client_config(&self.cert.cert_pem).unwrap();
        let browser = HttpsClient::new(&self.site.addr().to_string(), "127.0.0.1", roots);
        let reply = browser.send(Method::GET, &format!("{path}&login_as={user}"), &[], None).await.unwrap();
        assert_eq!(reply.status.as_u16(), 302, "{}", reply.text());
        let location = reply.headers["location"].to_str().unwrap().to_owned();
        let back = url::Url::parse(&location).unwrap();
        let pairs: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
        assert_eq!(pairs["state"], "state-1");
        gateway.tokens().complete_authorization(OWNER, &pairs["code"]).await.unwrap()
    }
}

fn installation(scopes: &[(&str, bool)]) -> Installation {
    let scopes: BTreeMap<Scope, ScopeGrant> = scopes
        .iter()
        .map(|(s, imp)| (Scope::try_from((*s).to_owned()).unwrap(), ScopeGrant { allow_impersonation: *imp }))
        .collect();
    Installation::new(OWNER, &scopes)
}

fn call(product: Product, acting: Acting, method: &str, path: &str) -> ProductRequest {
    ProductRequest {
        product,
        acting,
        method: method.into(),
        path: path.into(),
        headers: vec![("accept".into(), "application/json".into())],
        body: Vec::new(),
    }
}

fn json(res: &ProductResponse) -> serde_json::Value {
    serde_json::from_slice(&res.body).unwrap()
}

#[tokio::test]
async fn scopes_decide_and_the_app_never_chooses_its_credentials() {
    for t in each_backend().await.unwrap() {
        let (site, cert) = devsite().await;
        let f = Fixture { site, cert, kvs: kvs(&t.store) };
        let gateway = f.cloud(Config::default());
        let inst = installation(&[("read:jira-work", false)]);

        // Allowed, as the app: the site sees the app's service account.
        let (res, record) =
            gateway.request(&inst, call(Product::Jira, Acting::App, "GET", "/rest/api/3/issue/KILN-1")).await;
        let res = res.unwrap();
        assert_eq!(res.status, 200, "{}", t.name);
        assert_eq!(json(&res)["key"], "KILN-1");
        assert_eq!(record.route, "/rest/api/3/issue/{issueIdOrKey}");
        assert_eq!((record.acting, record.refused.as_deref()), ("app", None));
        let seen = f.site.requests().pop().unwrap();
        assert_eq!((seen.via, seen.account_id.as_deref()), (Via::OAuth, Some(KILN_APP)));

        // `/rest/api/2` is served with the same scopes, and reaches v2.
        let (res, _) =
            gateway.request(&inst, call(Product::Jira, Acting::App, "GET", "/rest/api/2/issue/KILN-2")).await;
        assert_eq!(res.unwrap().status, 200);
        assert!(f.site.requests().pop().unwrap().path.ends_with("/rest/api/2/issue/KILN-2"));

        // Missing scope: refused with the route and the scopes that would allow it; nothing sent.
        let before = f.site.requests().len();
        let mut create = call(Product::Jira, Acting::App, "POST", "/rest/api/3/issue");
        create.body =
            br#"{"fields":{"project":{"key":"KILN"},"summary":"x","issuetype":{"name":"Task"}}}"#.to_vec();
        let (res, record) = gateway.request(&inst, create).await;
        let e = res.unwrap_err();
        assert_eq!(e.code(), "ProductEndpointNotAllowedError");
        let msg = e.to_string();
        assert!(msg.contains("POST /rest/api/3/issue") && msg.contains("write:jira-work"), "{msg}");
        assert!(msg.contains("write:issue:jira"), "the granular alternative is named too: {msg}");
        assert_eq!(record.refused.as_deref(), Some(msg.as_str()));
        assert_eq!(f.site.requests().len(), before, "a refused call reaches nothing");

        // An unknown route is refused, and a route for the other product too.
        let (res, _) =
            gateway.request(&inst, call(Product::Jira, Acting::App, "GET", "/rest/api/3/kiln-nope")).await;
        assert_eq!(res.unwrap_err().code(), "ProductEndpointNotAllowedError");
        let (res, _) = gateway
            .request(&inst, call(Product::Confluence, Acting::App, "GET", "/rest/api/3/issue/KILN-1"))
            .await;
        assert!(res.unwrap_err().to_string().contains("requestJira"));
        let (res, _) = gateway.request(&inst, call(Product::Jira, Acting::App, "GET", "//evil/rest")).await;
        assert_eq!(res.unwrap_err().code(), "ProxyRequestError");

        // The app's own Authorization header is dropped: the gateway's token is used.
        let mut forged = call(Product::Jira, Acting::App, "GET", "/rest/api/3/issue/KILN-1");
        forged.headers.push(("Authorization".into(), "Bearer stolen".into()));
        forged.headers.push(("Cookie".into(), "session=x".into()));
        let (res, _) = gateway.request(&inst, forged).await;
        assert_eq!(res.unwrap().status, 200);
        assert_eq!(f.site.requests().pop().unwrap().account_id.as_deref(), Some(KILN_APP));

        // CRLF in a header value never leaves.
        let mut smuggle = call(Product::Jira, Acting::App, "GET", "/rest/api/3/issue/KILN-1");
        smuggle.headers.push(("x-a".into(), "1\r\nx-b: 2".into()));
        let (res, _) = gateway.request(&inst, smuggle).await;
        assert_eq!(res.unwrap_err().code(), "ProxyRequestError");

        // A granular-only consent satisfies the route's granular alternative.
        let granular = installation(&[("read:page:confluence", false)]);
        let (res, record) = gateway
            .request(&granular, call(Product::Confluence, Acting::App, "GET", "/wiki/api/v2/pages/1001"))
            .await;
        assert_eq!(res.unwrap().status, 200);
        assert_eq!(record.route, "/wiki/api/v2/pages/{id}");

        // Unmapped routes pass only with the loudly named setting.
        let loose = f.cloud(Config { dangerously_allow_unmapped_routes: true, ..Config::default() });
        let (res, record) =
            loose.request(&inst, call(Product::Jira, Acting::App, "GET", "/rest/api/3/kiln-nope")).await;
        // It reaches the site, which does its own scope check (and refuses).
        assert_eq!(res.unwrap().status, 401);
        assert_eq!(record.route, "unmapped:/rest/api/3/kiln-nope");
        assert!(f.site.requests().pop().unwrap().path.ends_with("/rest/api/3/kiln-nope"));

        // The access token is sealed: not in any error, not in the database file.
        let token = f.kvs.get_token(OWNER, "oauth:app:access").await.unwrap().expect("a cached app token");
        assert!(!msg.contains(&token));
        if let Some(dir) = t.locator.strip_prefix("sqlite:") {
            for entry in std::fs::read_dir(dir).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "token stored in clear");
            }
        }
    }
}

#[tokio::test]
async fn users_consent_refresh_tokens_rotate_and_impersonation_needs_its_mark() {
    for t in each_backend().await.unwrap() {
        let (site, cert) = devsite().await;
        let f = Fixture { site, cert, kvs: kvs(&t.store) };
        let gateway = f.cloud(Config::default());
        let inst = installation(&[("read:jira-work", false), ("read:jira-user", true)]);

        // No consent yet: asUser needs authentication.
        let (res, _) = gateway
            .request(&inst, call(Product::Jira, Acting::User(BOB.into()), "GET", "/rest/api/3/issue/KILN-2"))
            .await;
        assert_eq!(res.unwrap_err().code(), "NeedsAuthenticationError", "{}", t.name);

        let done = f.consent(&gateway, BOB, &["read:jira-work", "read:jira-user"]).await;
        assert_eq!(done.account_id, BOB);
        assert!(done.cloud_ids.contains(&f.site.cloud_id().to_owned()));

        // asUser() in session acts as Bob.
        let (res, record) = gateway
            .request(&inst, call(Product::Jira, Acting::User(BOB.into()), "GET", "/rest/api/3/issue/KILN-2"))
            .await;
        assert_eq!(res.unwrap().status, 200);
        assert_eq!((record.acting, record.account_id.as_deref()), ("user", Some(BOB)));
        assert_eq!(f.site.requests().pop().unwrap().account_id.as_deref(), Some(BOB));

        // Offline impersonation: refused for a scope without allowImpersonation…
        let (res, _) = gateway
            .request(
                &inst,
                call(Product::Jira, Acting::Impersonate(BOB.into()), "GET", "/rest/api/3/issue/KILN-2"),
            )
            .await;
        let e = res.unwrap_err();
        assert_eq!(e.code(), "ProductEndpointNotAllowedError");
        assert!(e.to_string().contains("allowImpersonation"), "{e}");
        // …allowed for one with it.
        let (res, record) = gateway
            .request(&inst, call(Product::Jira, Acting::Impersonate(BOB.into()), "GET", "/rest/api/3/myself"))
            .await;
        let res = res.unwrap();
        assert_eq!(res.status, 200);
        assert_eq!(json(&res)["accountId"], BOB);
        assert_eq!(record.acting, "impersonation");

        // The site forgets every access token: the gateway refreshes, and the refresh token rotates.
        let refresh_before =
            f.kvs.get_token(OWNER, &format!("oauth:user:{BOB}:refresh")).await.unwrap().unwrap();
        f.site.expire_access_tokens();
        let (res, _) = gateway
            .request(&inst, call(Product::Jira, Acting::User(BOB.into()), "GET", "/rest/api/3/issue/KILN-2"))
            .await;
        assert_eq!(res.unwrap().status, 200);
        let refresh_after =
            f.kvs.get_token(OWNER, &format!("oauth:user:{BOB}:refresh")).await.unwrap().unwrap();
        assert_ne!(refresh_before, refresh_after, "a refresh stores the rotated token");
        assert_eq!(f.site.token_requests().get("refresh_token"), Some(&1));

        // The site revokes the family (the old refresh token presented again):
        // the gateway forgets the dead token and asks for consent.
        let roots = kiln_crypto::tls::client_config(&f.cert.cert_pem).unwrap();
        let thief = HttpsClient::new(&f.site.addr().to_string(), "127.0.0.1", roots);
        let body = serde_json::json!({
            "grant_type": "refresh_token", "client_id": "kiln-dev-client",
            "client_secret": "kiln-dev-client-secret", "refresh_token": refresh_before,
        });
        let reused =
            thief.send(Method::POST, "/oauth/token", &[], Some(body.to_string().as_bytes())).await.unwrap();
        assert_eq!(reused.status.as_u16(), 403);
        f.site.expire_access_tokens();
        let (res, _) = gateway
            .request(&inst, call(Product::Jira, Acting::User(BOB.into()), "GET", "/rest/api/3/issue/KILN-2"))
            .await;
        let e = res.unwrap_err();
        assert_eq!(e.code(), "NeedsAuthenticationError");
        assert!(!e.to_string().contains(&refresh_after));
        assert_eq!(f.kvs.get_token(OWNER, &format!("oauth:user:{BOB}:refresh")).await.unwrap(), None);
    }
}

#[tokio::test]
async fn a_consent_started_for_one_account_keeps_nothing_when_another_signs_in() {
    let t = each_backend().await.unwrap().into_iter().next().unwrap();
    let (site, cert) = devsite().await;
    let f = Fixture { site, cert, kvs: kvs(&t.store) };
    let gateway = f.cloud(Config::default());
    assert_eq!(
        gateway.tokens().redirect_uri(),
        Some(Seed::example().oauth_clients[0].redirect_uris[0].as_str())
    );
    let stored = |account: &str| {
        let kvs = f.kvs.clone();
        let name = format!("oauth:user:{account}:refresh");
        async move { kvs.get_token(OWNER, &name).await.unwrap() }
    };

    // Alice asked, Bob signed in: refused, and neither has tokens.
    let code = f.code(&gateway, BOB, &["read:jira-work"]).await;
    let e = gateway.tokens().complete_authorization_as(OWNER, &code, ALICE).await.unwrap_err();
    assert_eq!(e, ProductError::ConsentByAnotherAccount);
    assert_eq!(e.code(), "NeedsAuthenticationError");
    assert!(!e.to_string().contains(BOB) && !e.to_string().contains(ALICE), "{e}");
    assert_eq!(stored(BOB).await, None);
    assert_eq!(stored(ALICE).await, None);

    // Alice asked and Alice signed in: kept under Alice.
    let code = f.code(&gateway, ALICE, &["read:jira-work"]).await;
    let done = gateway.tokens().complete_authorization_as(OWNER, &code, ALICE).await.unwrap();
    assert_eq!(done.account_id, ALICE);
    assert!(stored(ALICE).await.is_some());
    assert_eq!(stored(BOB).await, None);

    // The Data Center gateway has no consent flow.
    assert_eq!(f.data_center().tokens().redirect_uri(), None);
}

#[tokio::test]
async fn data_center_uses_personal_access_tokens_and_the_v2_api() {
    let t = each_backend().await.unwrap().remove(0);
    let (site, cert) = devsite().await;
    let f = Fixture { site, cert, kvs: kvs(&t.store) };
    let gateway = f.data_center();
    let inst = installation(&[("read:jira-work", true), ("read:confluence-content.summary", false)]);

    // No app token set: a clear configuration error.
    let (res, _) =
        gateway.request(&inst, call(Product::Jira, Acting::App, "GET", "/rest/api/3/issue/KILN-1")).await;
    assert!(res.unwrap_err().to_string().contains("personal access token"));

    gateway.tokens().set_personal_access_token(OWNER, None, "dev-pat-alice").await.unwrap();
    let (res, _) =
        gateway.request(&inst, call(Product::Jira, Acting::App, "GET", "/rest/api/3/issue/KILN-1")).await;
    assert_eq!(res.unwrap().status, 200);
    let seen = f.site.requests().pop().unwrap();
    assert_eq!(seen.path, "/jira/rest/api/2/issue/KILN-1", "Data Center serves v2");
    assert_eq!((seen.via, seen.account_id.as_deref()), (Via::Pat, Some(ALICE)));

    // A user without a token of their own needs authentication; with one, acts as them.
    let (res, _) = gateway
        .request(&inst, call(Product::Jira, Acting::User(BOB.into()), "GET", "/rest/api/3/issue/KILN-2"))
        .await;
    assert_eq!(res.unwrap_err().code(), "NeedsAuthenticationError");
    gateway.tokens().set_personal_access_token(OWNER, Some(BOB), "dev-pat-bob").await.unwrap();
    let (res, _) = gateway
        .request(&inst, call(Product::Jira, Acting::User(BOB.into()), "GET", "/rest/api/3/issue/KILN-2"))
        .await;
    assert_eq!(res.unwrap().status, 200);
    assert_eq!(f.site.requests().pop().unwrap().account_id.as_deref(), Some(BOB));

    // Confluence v1 goes to the Confluence base URL; v2 does not exist there.
    let (res, _) = gateway
        .request(&inst, call(Product::Confluence, Acting::App, "GET", "/wiki/rest/api/content/1001"))
        .await;
    assert_eq!(res.unwrap().status, 200);
    assert_eq!(f.site.requests().pop().unwrap().path, "/confluence/rest/api/content/1001");
    let granted = installation(&[("read:page:confluence", false)]);
    let (res, _) = gateway
        .request(&granted, call(Product::Confluence, Acting::App, "GET", "/wiki/api/v2/pages/1001"))
        .await;
    assert_eq!(res.unwrap_err().code(), "RequestProductNotAllowedError");

    // Bad account ids and tokens are refused before they reach the store.
    assert!(gateway.tokens().set_personal_access_token(OWNER, Some("bob smith"), "x").await.is_err());
    assert!(gateway.tokens().set_personal_access_token(OWNER, None, "two words").await.is_err());
}
