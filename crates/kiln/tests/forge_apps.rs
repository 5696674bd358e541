//! Real Forge apps' ways of using the platform, reproduced by small
//! fixtures and driven through `kiln invoke --devsite` against `kiln devsite`.
//!
//! `tests/fixtures/apps/jenkins-like` stands in for atlassian/jenkins-for-jira:
//! a resolver stores a CI server and its shared secret; the CI server's
//! web-trigger requests carry an HS256 JWT signed with that secret; the app
//! verifies it and forwards build and deployment events to Jira's DevOps APIs
//! (`/rest/builds/0.1/bulk`, `/rest/deployments/0.1/...`) with Forge's DevOps
//! scopes. It also leans on what blocked the real app: a TypeScript `enum`,
//! `@forge/metrics`, `node-fetch`, and a named import from a CommonJS module
//! whose exports static analysis cannot see.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{KillOnDrop, Kiln, repo};
use serde_json::{Value, json};

/// Run a command that must succeed; its stdout as JSON.
fn ok_json(kiln: &Kiln, args: &[&str]) -> Value {
    serde_json::from_str(&kiln.ok(args)).unwrap()
}

/// `kiln devsite` on a free loopback port: its base URL, its cloud id, the process.
fn devsite(kiln: &Kiln) -> (String, String, KillOnDrop) {
    let (base, printed, child) = kiln.devsite(1);
    let cloud = printed[0].trim().strip_prefix("cloud id:").unwrap().trim().to_owned();
    (base, cloud, child)
}

/// The token the Jenkins plugin sends: HS256 over the claims jenkins-for-jira
/// checks (`iss`, `aud`, `iat`, `exp`) and the request as `request_body_json`.
fn jenkins_jwt(secret: &str, request: &Value) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let head = URL_SAFE_NO_PAD.encode(json!({ "alg": "HS256", "typ": "JWT" }).to_string());
    let claims = json!({
        "iss": "jenkins-plugin", "aud": ["jenkins-forge-app"], "iat": now - 1, "exp": now + 300,
        "request_body_json": request.to_string(),
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = kiln_crypto::hmac_sha256(secret.as_bytes(), format!("{head}.{claims}").as_bytes());
    format!("{head}.{claims}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Forge's web-trigger request shape.
fn webtrigger(uuid: &str, body: &str) -> String {
    json!({
        "method": "POST",
        "path": "/",
        "headers": { "content-type": ["application/json"] },
        "queryParameters": { "jenkins_server_uuid": [uuid] },
        "body": body,
    })
    .to_string()
}

#[test]
fn a_jenkins_like_app_sends_signed_build_and_deployment_events_to_jiras_devops_apis() {
    let kiln = Kiln::new();
    let app = repo().join("tests/fixtures/apps/jenkins-like");
    let app = app.to_str().unwrap();
    let (base, cloud, _site) = devsite(&kiln);
    let context = json!({ "installContext": format!("ari:cloud:jira::site/{cloud}") }).to_string();
    let uuid = "5a7e1c0e-1111-4222-8333-944445555666";
    let secret = "s3cr3t-jenkins-shared";
    let trigger = |request: &Value, key: &str| {
        let payload = webtrigger(uuid, &jenkins_jwt(key, request));
        ok_json(
            &kiln,
            &[
                "invoke",
                "handle-jenkins-request",
                app,
                "--devsite",
                &base,
                "--context",
                &context,
                "--payload",
                &payload,
            ],
        )
    };

    // The admin page's resolver call stores the server and its secret.
    let connect = json!({
        "call": { "functionKey": "connectJenkinsServer", "payload": { "uuid": uuid, "name": "ci", "secret": secret } },
        "context": {},
    })
    .to_string();
    assert_eq!(ok_json(&kiln, &["invoke", "resolver", app, "--payload", &connect]), json!(true));

    // A ping signed with another secret is refused by the app itself.
    let ping = json!({ "requestType": "ping" });
    let refused = trigger(&ping, "not-the-secret");
    assert_eq!(refused["statusCode"], 400);
    assert_eq!(refused["body"], "JWT verification failed");

    // A build event reaches the dev site's builds API, tagged with the app's properties.
    let build = json!({
        "requestType": "event", "eventType": "build", "pipelineName": "main", "status": "successful",
        "lastUpdated": "2024-05-01T10:00:00.000Z",
        "payload": { "builds": [{
            "schemaVersion": "1.0", "pipelineId": "main", "buildNumber": 7, "updateSequenceNumber": 1,
            "displayName": "main #7", "url": "https://ci.example.com/job/main/7", "state": "successful",
            "lastUpdated": "2024-05-01T10:00:00.000Z", "issueKeys": ["KILN-1"],
        }]},
    });
    let sent = trigger(&build, secret);
    assert_eq!(sent["statusCode"], 202, "{sent}");
    let jira: Value = serde_json::from_str(sent["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        jira,
        json!({
            "acceptedBuilds": [{ "pipelineId": "main", "buildNumber": 7 }],
            "rejectedBuilds": [],
            "unknownIssueKeys": [],
        })
    );

    // A deployment, then its gating status.
    let deployment = json!({
        "requestType": "event", "eventType": "deployment", "pipelineName": "main", "status": "successful",
        "payload": { "deployments": [{
            "deploymentSequenceNumber": 3, "updateSequenceNumber": 1, "displayName": "Deploy 3",
            "url": "https://ci.example.com/job/main/3", "description": "to staging",
            "lastUpdated": "2024-05-01T10:05:00.000Z", "state": "successful", "issueKeys": ["KILN-2"],
            "pipeline": { "id": "main", "displayName": "main", "url": "https://ci.example.com/job/main" },
            "environment": { "id": "stg", "displayName": "staging", "type": "staging" },
        }]},
    });
    let deployed = trigger(&deployment, secret);
    assert_eq!(deployed["statusCode"], 202, "{deployed}");
    let gating = json!({ "requestType": "gatingStatus", "pipelineId": "main", "environmentId": "stg", "deploymentId": "3" });
    let gate = trigger(&gating, secret);
    assert_eq!(gate["statusCode"], 200, "{gate}");
    let status: Value = serde_json::from_str(gate["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        status,
        json!({
            "deploymentSequenceNumber": 3, "pipelineId": "main", "environmentId": "stg",
            "updatedTimestamp": "2024-05-01T10:05:00.000Z", "gatingStatus": "allowed", "details": [],
        })
    );

    // The app's own state: the pipeline list it keeps with lodash-style uniq,
    // and node-fetch loaded (served by Kiln's fetch; nothing is fetched).
    let pong = trigger(&ping, secret);
    assert_eq!(pong["statusCode"], 200);
    assert_eq!(
        serde_json::from_str::<Value>(pong["body"].as_str().unwrap()).unwrap(),
        json!({ "success": true, "pipelines": ["main"], "fetch": "function" })
    );

    // Disconnecting deletes the server's builds by property (delete:build-info:jira).
    let disconnect =
        json!({ "call": { "functionKey": "disconnectJenkinsServer", "payload": { "uuid": uuid } }, "context": {} })
            .to_string();
    let status = ok_json(&kiln, &["invoke", "resolver", app, "--devsite", &base, "--payload", &disconnect]);
    assert_eq!(status, json!(202));

    // Each product call was decided and recorded by route template, as the app.
    let trail = String::from_utf8(kiln.run(&["audit", "tail", "-n", "20"]).stdout).unwrap();
    for route in [
        "/rest/builds/0.1/bulk",
        "/rest/deployments/0.1/bulk",
        "/rest/deployments/0.1/pipelines/{pipelineId}/environments/{environmentId}/deployments/{deploymentSequenceNumber}/gating-status",
        "/rest/builds/0.1/bulkByProperties",
    ] {
        assert!(trail.contains(&format!("\"route\":\"{route}\"")), "{route} missing from:\n{trail}");
    }
    assert!(!trail.contains("product.scope_refused"), "{trail}");
    assert_eq!(kiln.run(&["audit", "verify"]).status.code(), Some(0));
}
