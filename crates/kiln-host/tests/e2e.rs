//! End to end: a function in a jailed worker calls the dev site through the
//! product gateway and a declared external host (a loopback server with a
//! test certificate) through the egress gateway, and is refused for an
//! undeclared host and for a route its scopes do not cover. Every IPC frame
//! of the run is searched for the tokens the gateway used; every decision is
//! in the audit trail, and the trail verifies.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use kiln_devsite::{DevSiteConfig, KILN_APP, Seed, Via};
use kiln_egress::{Dial, Resolve};
use kiln_host::{Host, InvocationGrants};
use kiln_manifest::{EgressTarget, Scope, ScopeGrant};
use kiln_product::{CloudSite, Endpoint, Installation, OAuthClient, ProductGateway, Site};
use serde_json::{Value, json};

mod common;

const OWNER: &str = "installation:e2e";
const DECLARED: &str = "api.example.com";

/// `api.example.com` is loopback; every other name does not exist.
struct Names;

impl Resolve for Names {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move {
            match host {
                DECLARED => Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))]),
                _ => Err(std::io::Error::other("NXDOMAIN")),
            }
        })
    }
}

/// Sends loopback dials to the test upstream (it cannot bind Forge's
/// ports), and refuses and remembers anything else.
struct ToUpstream {
    port: u16,
    elsewhere: Mutex<Vec<SocketAddr>>,
}

impl Dial for ToUpstream {
    fn dial<'a>(
        &'a self,
        addr: SocketAddr,
    ) -> Pin<Box<dyn std::future::Future<Output = std::io::Result<tokio::net::TcpStream>> + Send + 'a>> {
        Box::pin(async move {
            if !addr.ip().is_loopback() {
                self.elsewhere.lock().unwrap().push(addr);
                return Err(std::io::Error::other("the test dials loopback only"));
            }
            tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await
        })
    }
}

const APP: &str = r#"
import api, { route, fetch } from '@forge/api';

const attempt = async (f) => {
  try { return { ok: await f() }; } catch (e) { return { class: e.constructor.name, name: e.name, message: e.message }; }
};

export async function run(payload) {
  const issue = await api.asApp().requestJira(route`/rest/api/3/issue/${payload.key}`);
  const external = await fetch(`https://api.example.com:8444/hello`, { headers: { 'x-probe': 'yes' } });
  const undeclared = await attempt(() => fetch('https://undeclared.example.net/steal'));
  const unscoped = await attempt(() => api.asApp().requestJira(route`/rest/api/3/myself`));
  const noUser = await attempt(() => api.asUser().requestJira(route`/rest/api/3/issue/KILN-1`));
  return {
    issue: { status: issue.status, key: (await issue.json()).key },
    external: { status: external.status, body: await external.json() },
    undeclared, unscoped, noUser,
  };
}
"#;

const MANIFEST: &str = "app:\n  id: ari:cloud:ecosystem::app/00000000-0000-4000-8000-0000000000e2\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: main\n  function:\n    - key: main\n      handler: index.run\npermissions:\n  scopes:\n    - read:jira-work\n  external:\n    fetch:\n      backend:\n        - api.example.com\n";

#[test]
fn a_function_reaches_the_dev_site_and_a_declared_host_and_nothing_else() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let cert = kiln_crypto::tls::self_signed(&["127.0.0.1", DECLARED]).unwrap();
    let tls = kiln_crypto::tls::server_config(&cert).unwrap();
    let stores = rt.block_on(kiln_store::testing::each_backend()).unwrap();
    let sandbox = common::sandbox();
    let (_dir, manifest, built) = common::app(MANIFEST, APP);
    let grants = kiln_manifest::Grants::of(&manifest);

    for t in stores {
        let (site, upstream) = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let site = kiln_devsite::start(
                listener,
                tls.clone(),
                DevSiteConfig { seed: Seed::example(), events: None },
            )
            .await
            .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let hello = axum::Router::new().route(
                "/hello",
                axum::routing::get(|headers: axum::http::HeaderMap| async move {
                    axum::Json(json!({ "hello": "world", "probe": headers.get("x-probe").is_some() }))
                }),
            );
            tokio::spawn(kiln_http::serve(listener, tls.clone(), hello, std::future::pending()));
            (site, port)
        });

        let kvs = common::kvs(&t.store, Arc::new(kiln_store::now_millis));
        let seed = Seed::example();
        let client = &seed.oauth_clients[0];
        let endpoint = || Endpoint::new(site.base_url(), &cert.cert_pem, 5 << 20).unwrap();
        let product = ProductGateway::new(
            kiln_product::Config::default(),
            Site::Cloud(CloudSite {
                auth: endpoint(),
                api: endpoint(),
                cloud_id: site.cloud_id().to_owned(),
                client: OAuthClient {
                    client_id: client.client_id.clone(),
                    client_secret: client.client_secret.clone().into(),
                    redirect_uri: client.redirect_uris[0].clone(),
                },
            }),
            kvs.clone(),
        );
        let mut config = kiln_egress::Config::new(cert.cert_pem.clone());
        config.insecure_allow_loopback = true;
        let dialer = Arc::new(ToUpstream { port: upstream, elsewhere: Mutex::new(Vec::new()) });
        let egress = kiln_egress::Gateway::new(config, Arc::new(Names), dialer.clone()).unwrap();
        let auditor = kiln_audit::testing::AUDITOR.clone();
        let host = Host::new(
            rt.handle().clone(),
            t.store.clone(),
            auditor.clone(),
            Arc::new(egress),
            Some(Arc::new(product)),
            Some(kvs.clone()),
        );
        let scopes: BTreeMap<Scope, ScopeGrant> = grants.scopes.clone();
        let invocation = InvocationGrants {
            app: manifest.app.id.to_string(),
            installation: "e2e".into(),
            installation_row: None,
            environment: kiln_types::Environment::default(),
            egress: vec![EgressTarget::Host(DECLARED.into())],
            product: Installation::new(OWNER, &scopes),
            user: None,
        };

        kiln_sandbox::tap::start();
        let request = common::web_trigger(json!({ "key": "KILN-1" }));
        // The loopback setting is for tests: a production installation is refused with it.
        let production = InvocationGrants {
            environment: kiln_types::Environment::parse("production").unwrap(),
            ..invocation.clone()
        };
        let refused = host.invocation(&production).unwrap_err();
        assert!(refused.to_string().contains("insecure_allow_loopback"), "{refused}");
        let mut handler = host.invocation(&invocation).unwrap();
        let app_id = manifest.app.id.to_string();
        let result = sandbox.invoke(&app_id, &built.hash, &built.bundle, &request, &mut handler).unwrap();
        let frames = kiln_sandbox::tap::take();
        let value: Value = match result.outcome {
            kiln_ipc::Outcome::Ok { result } => serde_json::from_str(&result).unwrap(),
            kiln_ipc::Outcome::Err(e) => panic!("{}: the invocation failed: {e:?}", t.name),
        };

        // The allowed calls went through, each to where it should.
        assert_eq!(value["issue"], json!({ "status": 200, "key": "KILN-1" }), "{}: {value}", t.name);
        assert_eq!(value["external"], json!({ "status": 200, "body": { "hello": "world", "probe": true } }));
        let seen = site.requests().into_iter().filter(|r| r.path.contains("/rest/api/")).collect::<Vec<_>>();
        assert_eq!(seen.len(), 1, "only the allowed product call reached the site: {seen:?}");
        assert_eq!((seen[0].via, seen[0].account_id.as_deref()), (Via::OAuth, Some(KILN_APP)));

        // The refusals reached the app as Forge's errors, naming what was refused.
        // Forge's names are codes; the classes say which refusal it was.
        assert_eq!(value["undeclared"]["class"], "ExternalEndpointNotAllowedError", "{value}");
        assert_eq!(value["undeclared"]["name"], "REQUEST_EGRESS_ALLOWLIST_ERR", "{value}");
        assert!(
            value["undeclared"]["message"].as_str().unwrap().contains("undeclared.example.net"),
            "{value}"
        );
        assert_eq!(value["unscoped"]["class"], "ProductEndpointNotAllowedError", "{value}");
        let unscoped = value["unscoped"]["message"].as_str().unwrap();
        assert!(unscoped.contains("/rest/api/3/myself") && unscoped.contains("read:jira-user"), "{unscoped}");
        assert_eq!(value["noUser"]["class"], "NeedsAuthenticationError", "{value}");
        assert_eq!(value["noUser"]["name"], "NEEDS_AUTHENTICATION_ERR", "{value}");
        assert!(dialer.elsewhere.lock().unwrap().is_empty(), "nothing was dialled off loopback");

        // No token, and not the client secret, in any frame the worker saw or sent.
        let token =
            rt.block_on(kvs.get_token(OWNER, "oauth:app:access")).unwrap().expect("the gateway's app token");
        assert!(frames.len() >= 8, "the tap saw the run: {} frames", frames.len());
        for secret in [token.as_str(), client.client_secret.as_str()] {
            for frame in &frames {
                assert!(
                    !frame.windows(secret.len()).any(|w| w == secret.as_bytes()),
                    "{}: a credential crossed into the worker",
                    t.name
                );
            }
        }

        // Every decision is in the trail, by the app, and the trail verifies.
        let rows = rt.block_on(async {
            let mut tx = t.store.begin().await.unwrap();
            tx.audit_tail(50).await.unwrap()
        });
        let actions: Vec<(&str, &str)> =
            rows.iter().map(|r| (r.action.as_str(), r.outcome.as_str())).collect();
        for expected in [
            ("product.request", "success"),
            ("egress.allowed", "success"),
            ("egress.denied", "denied"),
            ("product.scope_refused", "denied"),
        ] {
            assert!(actions.contains(&expected), "{}: {expected:?} missing from {actions:?}", t.name);
        }
        assert!(rows.iter().all(|r| r.actor == format!("app:{app_id}")));
        // The host's counts (for the server's metrics) agree with the trail.
        let count = |action: &str| u64::try_from(rows.iter().filter(|r| r.action == action).count()).unwrap();
        let (egress, product) = (host.decisions().egress(), host.decisions().product());
        assert_eq!(egress, (count("egress.allowed"), count("egress.denied")), "{}", t.name);
        assert_eq!(product, (count("product.request"), count("product.scope_refused")), "{}", t.name);
        assert_eq!((egress.1, product.1), (1, 1), "{}: one refusal of each", t.name);
        // Each use of the insecure loopback setting is on the record.
        let allowed: Vec<_> = rows.iter().filter(|r| r.action == "egress.allowed").collect();
        assert!(
            allowed.iter().all(|r| r.details.contains(r#""insecure":"insecure_allow_loopback""#)),
            "{allowed:?}"
        );
        for row in &rows {
            assert!(!row.details.contains(&token), "a token in the audit trail");
        }
        let report = rt.block_on(auditor.verify(&t.store, None)).unwrap();
        assert!(report.is_intact(), "{:?}", report.problems);
    }
}
