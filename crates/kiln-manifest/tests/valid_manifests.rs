//! Manifests of the shapes real Forge apps use are accepted, and parse into
//! the grants and modules they declare.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::path::{Path, PathBuf};

use kiln_manifest::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn app_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![repo().join("examples/issue-triage")];
    let valid = repo().join("tests/fixtures/apps/valid");
    let mut fixtures: Vec<_> = std::fs::read_dir(valid)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join(MANIFEST_FILE).exists())
        .collect();
    fixtures.sort();
    dirs.extend(fixtures);
    dirs
}

#[test]
fn every_valid_fixture_and_example_is_accepted() {
    let mut failures = Vec::new();
    let dirs = app_dirs();
    for dir in &dirs {
        if let Err(e) = load(dir, &NoVariables) {
            failures.push(format!("{}: {e}", dir.display()));
        }
    }
    assert!(dirs.len() >= 11, "only {} valid apps", dirs.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_example_app_declares_what_its_readme_says() {
    let parsed = load(&repo().join("examples/issue-triage"), &NoVariables).unwrap();
    let m = parsed.manifest;
    assert_eq!(m.app.runtime.name, RuntimeName::Nodejs22);
    assert!(!m.modules.functions.is_empty());
    assert_eq!(m.modules.webtriggers.len(), 1);
    assert_eq!(m.modules.scheduled_triggers.len(), 1);
    assert_eq!(m.modules.triggers.len(), 1);
    assert_eq!(m.modules.consumers.len(), 1);
    assert!(m.modules.others.iter().any(|o| o.module_type == "jira:issuePanel"));
    let grants = Grants::of(&m);
    assert!(grants.scopes.keys().any(|s| s.as_str() == "storage:app"));
    assert!(!m.permissions.backend_egress().is_empty());
}

const HEAD: &str = "app:\n  id: ari:cloud:ecosystem::app/0b6a6f4e-1c55-4a7e-9d1e-1f2a3b4c5d6e\n  runtime:\n    name: nodejs24.x\n    memoryMB: 256\n";

fn parse(body: &str) -> Manifest {
    match parse_str("manifest.yml", &format!("{HEAD}{body}"), &NoVariables) {
        Ok(p) => p.manifest,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn egress_forms_normalise_to_targets() {
    let m = parse(
        r#"modules:
  function:
    - {key: main, handler: index.run}
  webtrigger:
    - {key: hook, function: main}
permissions:
  external:
    fetch:
      backend:
        - API.Example.com
        - '*.example.org'
        - https://hooks.slack.com/services/x
        - address: analytics.example.net
          category: analytics
          inScopeEUD: false
        - remote: backend
        - bücher.example
remotes:
  - key: backend
    baseUrl: https://remote.example.com
"#,
    );
    let targets: Vec<_> = m.permissions.backend_egress().iter().map(|e| e.target.to_string()).collect();
    assert_eq!(
        targets,
        [
            "api.example.com",
            "*.example.org",
            "hooks.slack.com",
            "analytics.example.net",
            "remote:backend",
            "xn--bcher-kva.example"
        ]
    );
    let analytics = &m.permissions.backend_egress()[3];
    assert!(analytics.analytics && !analytics.in_scope_eud);
}

#[test]
fn scopes_as_a_map_carry_impersonation() {
    let m = parse(
        r#"modules:
  function:
    - {key: main, handler: index.run}
  webtrigger:
    - {key: hook, function: main}
permissions:
  scopes:
    read:jira-work:
      allowImpersonation: true
    storage:app: {}
    write:jira-work:
"#,
    );
    let s: Vec<_> =
        m.permissions.scopes.iter().map(|(k, v)| (k.as_str().to_owned(), v.allow_impersonation)).collect();
    assert_eq!(
        s,
        [
            ("read:jira-work".to_owned(), true),
            ("storage:app".to_owned(), false),
            ("write:jira-work".to_owned(), false)
        ]
    );
}

#[test]
fn variables_interpolate_from_the_deployer_then_defaults() {
    let body = r#"environment:
  variables:
    - REMOTE_HOST
    - key: REGION
      default: eu
modules:
  function:
    - {key: main, handler: index.run}
  webtrigger:
    - {key: hook, function: main}
remotes:
  - key: backend
    baseUrl: https://${REMOTE_HOST}/${REGION}/${NOT_DECLARED}
"#;
    let vars = |name: &str| (name == "REMOTE_HOST").then(|| "svc.example.com".to_owned());
    let m = parse_str("manifest.yml", &format!("{HEAD}{body}"), &vars).unwrap().manifest;
    assert_eq!(m.remotes[0].base_urls["default"], "https://svc.example.com/eu/$%7BNOT_DECLARED%7D");
    let err = parse_str("manifest.yml", &format!("{HEAD}{body}"), &NoVariables).unwrap_err();
    assert!(err.errors().any(|d| d.code == Code::UndefinedVariable), "{err}");
}

#[test]
fn consumers_accept_the_function_and_the_older_resolver_form() {
    let m = parse(
        r#"modules:
  consumer:
    - {key: new-style, queue: jobs, function: worker}
    - key: old-style
      queue: legacy-jobs
      resolver:
        function: resolver
        method: process-job
  function:
    - {key: worker, handler: queue.run, timeoutSeconds: 900}
    - {key: resolver, handler: resolvers/index.handler}
"#,
    );
    assert_eq!(m.modules.consumers[0].target, ConsumerTarget::Function(ModuleKey::parse("worker").unwrap()));
    assert_eq!(
        m.modules.consumers[1].target,
        ConsumerTarget::Resolver {
            function: ModuleKey::parse("resolver").unwrap(),
            method: "process-job".into()
        }
    );
    assert_eq!(m.function("worker").unwrap().timeout_seconds, Some(900));
    assert_eq!(m.function("resolver").unwrap().handler.file, "resolvers/index");
}

#[test]
fn unknown_top_level_sections_forge_accepts_are_carried() {
    let m = parse(
        r#"modules:
  function:
    - {key: main, handler: index.run}
  webtrigger:
    - {key: hook, function: main}
translations:
  resources:
    - {key: en-US, path: locales/en-US.json}
  fallback:
    default: en-US
providers:
  auth:
    - key: google
      name: Google
      scopes: [profile]
"#,
    );
    assert!(m.carried.contains_key("translations"));
    assert!(m.providers.is_some());
}

#[test]
fn runtime_snapshots_is_accepted_either_way() {
    // circleci-for-jira sets it; Forge's default is true.
    for value in ["true", "false"] {
        let source = format!(
            "app:\n  id: ari:cloud:ecosystem::app/0b6a6f4e-1c55-4a7e-9d1e-1f2a3b4c5d6e\n  runtime:\n    name: nodejs22.x\n    snapshots: {value}\nmodules:\n  function:\n    - {{key: main, handler: index.run}}\n"
        );
        if let Err(e) = parse_str("manifest.yml", &source, &NoVariables) {
            panic!("snapshots: {value} refused: {e}");
        }
    }
}
