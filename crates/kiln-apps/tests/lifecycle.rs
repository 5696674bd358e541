//! The life of an app on every storage backend: deploys decide major or
//! minor, minor versions roll out, major versions wait for consent, and a
//! rollback never grants what was not consented. Refused operations store
//! nothing.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::path::Path;

use kiln_apps::*;
use kiln_audit::testing::{AUDITOR, audit};
use kiln_manifest::{GrantChange, NoVariables};
use kiln_store::testing::each_backend;
use kiln_store::{EventKind, Store, VersionOrigin};
use kiln_types::{AppId, Environment, Product, SiteUrl, Version};

const APP: &str = "ari:cloud:ecosystem::app/5e0c3f6b-8c1d-4c55-9a43-2f1b7a0f9e21";

/// A small Jira app whose grants the test controls.
struct TestApp {
    dir: tempfile::TempDir,
}

impl TestApp {
    fn new() -> Self {
        let app = Self { dir: tempfile::tempdir().unwrap() };
        app.write_code("export const run = async () => ({ ok: true });\n");
        app.write_manifest(&["read:jira-work"], &["api.example.com"]);
        app
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn write_manifest(&self, scopes: &[&str], egress: &[&str]) {
        let scopes: String = scopes.iter().map(|s| format!("    - {s}\n")).collect();
        let egress: String = egress.iter().map(|s| format!("        - {s}\n")).collect();
        let manifest = format!(
            "app:\n  id: {APP}\n  runtime:\n    name: nodejs22.x\nmodules:\n  jira:issuePanel:\n    - key: panel\n      resource: main\n      resolver:\n        function: main\n      title: Panel\n  function:\n    - key: main\n      handler: index.run\nresources:\n  - key: main\n    path: static\npermissions:\n  scopes:\n{scopes}  external:\n    fetch:\n      backend:\n{egress}"
        );
        std::fs::write(self.path().join("manifest.yml"), manifest).unwrap();
    }

    fn write_code(&self, code: &str) {
        std::fs::create_dir_all(self.path().join("src")).unwrap();
        std::fs::write(self.path().join("src/index.ts"), code).unwrap();
    }
}

fn app_id() -> AppId {
    AppId::parse(APP).unwrap()
}

fn env() -> Environment {
    Environment::development()
}

fn site(s: &str) -> SiteUrl {
    SiteUrl::parse(s).unwrap()
}

async fn deploy_dir(store: &Store, dir: &Path) -> Result<DeployOutcome, AppError> {
    deploy(
        store,
        DeployRequest { app_dir: dir, environment: env(), dry_run: false, variables: &NoVariables },
        audit(),
    )
    .await
}

async fn counts(store: &Store) -> Vec<(&'static str, i64)> {
    store.begin().await.unwrap().row_counts().await.unwrap()
}

async fn installed_version(store: &Store, s: &str) -> Version {
    let mut tx = store.begin().await.unwrap();
    tx.installations(&app_id(), &env())
        .await
        .unwrap()
        .into_iter()
        .find(|i| i.site == site(s))
        .unwrap()
        .version
}

#[tokio::test]
async fn minor_deploys_roll_out_to_every_installation_on_that_major() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        let first = deploy_dir(store, app.path()).await.unwrap();
        assert_eq!(first.version, Version::FIRST, "{}", t.name);
        assert_eq!(first.origin, VersionOrigin::Initial);
        install(store, &app_id(), &env(), &site("a.example.net"), None, audit()).await.unwrap();
        let b = install(store, &app_id(), &env(), &site("b.example.net"), Some(Product::Jira), audit())
            .await
            .unwrap();
        assert_eq!(b.product, Product::Jira);

        app.write_code("export const run = async () => ({ ok: 'still' });\n");
        let second = deploy_dir(store, app.path()).await.unwrap();
        assert_eq!(second.version.to_string(), "1.1.0", "{}", t.name);
        assert!(!second.origin.is_major());
        assert_eq!(second.rolled_out.len(), 2);
        assert!(second.pending.is_empty());
        assert_eq!(installed_version(store, "a.example.net").await.to_string(), "1.1.0");
        assert_eq!(installed_version(store, "b.example.net").await.to_string(), "1.1.0");

        // The roll-out is recorded per installation.
        let mut tx = store.begin().await.unwrap();
        let inst = tx.installations(&app_id(), &env()).await.unwrap().remove(0);
        let kinds: Vec<EventKind> = tx.events(inst.id).await.unwrap().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Installed, EventKind::AutoUpgraded], "{}", t.name);
    }
}

#[tokio::test]
async fn a_scope_change_makes_a_major_version_that_waits_for_consent() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        deploy_dir(store, app.path()).await.unwrap();
        install(store, &app_id(), &env(), &site("a.example.net"), None, audit()).await.unwrap();

        app.write_manifest(&["read:jira-work", "write:jira-work"], &["api.example.com"]);
        let major = deploy_dir(store, app.path()).await.unwrap();
        assert_eq!(major.version.to_string(), "2.0.0", "{}", t.name);
        let VersionOrigin::Change { change: kiln_manifest::VersionChange::Major(reasons) } = &major.origin
        else {
            panic!("expected major: {:?}", major.origin);
        };
        assert_eq!(reasons, &[GrantChange::ScopeAdded("write:jira-work".into())]);
        assert!(major.rolled_out.is_empty());
        assert_eq!(major.pending.len(), 1);
        assert_eq!(installed_version(store, "a.example.net").await, Version::FIRST);

        // A later minor of the new major still does not reach the site.
        app.write_code("export const run = async () => 2;\n");
        let minor = deploy_dir(store, app.path()).await.unwrap();
        assert_eq!(minor.version.to_string(), "2.1.0");
        assert!(minor.rolled_out.is_empty());
        assert_eq!(installed_version(store, "a.example.net").await, Version::FIRST);

        let plan = plan_upgrade(store, &app_id(), &env(), &site("a.example.net"), None).await.unwrap();
        assert_eq!(plan.to.to_string(), "2.1.0");
        assert_eq!(plan.needs_consent, [GrantChange::ScopeAdded("write:jira-work".into())]);

        let before = counts(store).await;
        let refused = upgrade(
            store,
            &app_id(),
            &env(),
            &site("a.example.net"),
            None,
            plan.to,
            Consent::NotGiven,
            audit(),
        )
        .await
        .unwrap_err();
        assert!(matches!(refused, AppError::ConsentRequired { .. }), "{refused}");
        assert_eq!(refused.exit_code(), 1);
        assert_eq!(counts(store).await, before, "a refused upgrade stores nothing");
        // Consent given for another version does not count.
        let wrong = Consent::AcceptedFor(Version { major: 2, minor: 0 });
        assert!(
            upgrade(store, &app_id(), &env(), &site("a.example.net"), None, plan.to, wrong, audit())
                .await
                .is_err()
        );

        let done = upgrade(
            store,
            &app_id(),
            &env(),
            &site("a.example.net"),
            None,
            plan.to,
            Consent::AcceptedFor(plan.to),
            audit(),
        )
        .await
        .unwrap();
        assert_eq!(done.to.to_string(), "2.1.0");
        assert_eq!(installed_version(store, "a.example.net").await.to_string(), "2.1.0", "{}", t.name);

        // Now on major 2, the next minor rolls out again.
        app.write_code("export const run = async () => 3;\n");
        let next = deploy_dir(store, app.path()).await.unwrap();
        assert_eq!(next.rolled_out.len(), 1);
        assert_eq!(installed_version(store, "a.example.net").await.to_string(), "2.2.0");
    }
}

#[tokio::test]
async fn egress_widening_is_major_and_narrowing_is_minor() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        deploy_dir(store, app.path()).await.unwrap();
        app.write_manifest(&["read:jira-work"], &["'*.example.com'"]);
        let wider = deploy_dir(store, app.path()).await.unwrap();
        assert!(wider.origin.is_major(), "{}", t.name);
        app.write_manifest(&["read:jira-work"], &["api.example.com"]);
        let narrower = deploy_dir(store, app.path()).await.unwrap();
        assert!(!narrower.origin.is_major(), "{}: {:?}", t.name, narrower.origin);
    }
}

#[tokio::test]
async fn rollback_never_grants_what_was_not_consented() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        // 1.0.0 reads and writes; 2.0.0 only reads.
        app.write_manifest(&["read:jira-work", "write:jira-work"], &["api.example.com"]);
        deploy_dir(store, app.path()).await.unwrap();
        app.write_manifest(&["read:jira-work"], &["api.example.com"]);
        assert!(deploy_dir(store, app.path()).await.unwrap().origin.is_major());

        // Installed on 2.0.0, the site consented to reading only.
        install(store, &app_id(), &env(), &site("c.example.net"), None, audit()).await.unwrap();
        let before = counts(store).await;
        let err =
            rollback(store, &app_id(), &env(), &site("c.example.net"), None, Some(Version::FIRST), audit())
                .await
                .unwrap_err();
        match &err {
            AppError::RollbackWouldWiden { changes, .. } => {
                assert_eq!(changes, &[GrantChange::ScopeAdded("write:jira-work".into())], "{}", t.name);
            }
            other => panic!("{}: {other}", t.name),
        }
        assert_eq!(err.exit_code(), 1);
        assert_eq!(counts(store).await, before);
        assert_eq!(installed_version(store, "c.example.net").await.to_string(), "2.0.0");

        // With no earlier version in its history there is nothing to return to.
        let none = rollback(store, &app_id(), &env(), &site("c.example.net"), None, None, audit())
            .await
            .unwrap_err();
        assert!(matches!(none, AppError::NothingToRollBack { .. }), "{none}");
    }
}

#[tokio::test]
async fn rollback_within_consent_returns_to_the_previous_version() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        deploy_dir(store, app.path()).await.unwrap();
        install(store, &app_id(), &env(), &site("d.example.net"), None, audit()).await.unwrap();
        app.write_code("export const run = async () => 'buggy';\n");
        deploy_dir(store, app.path()).await.unwrap();
        assert_eq!(installed_version(store, "d.example.net").await.to_string(), "1.1.0");

        let back =
            rollback(store, &app_id(), &env(), &site("d.example.net"), None, None, audit()).await.unwrap();
        assert_eq!(
            (back.from.to_string(), back.to.to_string()),
            ("1.1.0".into(), "1.0.0".into()),
            "{}",
            t.name
        );
        assert_eq!(installed_version(store, "d.example.net").await, Version::FIRST);

        // Forward again, then two rollbacks in a row step back twice.
        app.write_code("export const run = async () => 'fixed';\n");
        deploy_dir(store, app.path()).await.unwrap();
        assert_eq!(installed_version(store, "d.example.net").await.to_string(), "1.2.0");
        rollback(
            store,
            &app_id(),
            &env(),
            &site("d.example.net"),
            None,
            Some(Version { major: 1, minor: 1 }),
            audit(),
        )
        .await
        .unwrap();
        let again =
            rollback(store, &app_id(), &env(), &site("d.example.net"), None, None, audit()).await.unwrap();
        assert_eq!(again.to, Version::FIRST, "{}", t.name);

        // Rolling "back" to a newer version is refused.
        let newer = Version { major: 1, minor: 1 };
        let err = rollback(store, &app_id(), &env(), &site("d.example.net"), None, Some(newer), audit())
            .await
            .unwrap_err();
        assert!(matches!(err, AppError::NotEarlier { .. }), "{err}");
    }
}

#[tokio::test]
async fn dry_runs_and_refused_deploys_store_nothing() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        let empty = counts(store).await;
        let dry = deploy(
            store,
            DeployRequest { app_dir: app.path(), environment: env(), dry_run: true, variables: &NoVariables },
            audit(),
        )
        .await
        .unwrap();
        assert!(!dry.stored);
        assert_eq!(dry.version, Version::FIRST);
        assert_eq!(counts(store).await, empty, "{}", t.name);

        deploy_dir(store, app.path()).await.unwrap();
        let after_first = counts(store).await;

        // A hostile manifest, a missing import and a missing export: each is
        // refused with the culprit named, and nothing changes.
        std::fs::write(app.path().join("manifest.yml"), "a: &a [*a]\n").unwrap();
        let err = deploy_dir(store, app.path()).await.unwrap_err();
        assert_eq!(err.exit_code(), 2, "{err}");

        app.write_manifest(&["read:jira-work"], &["api.example.com"]);
        app.write_code("import { helper } from './missing-helper';\nexport const run = helper;\n");
        let err = deploy_dir(store, app.path()).await.unwrap_err().to_string();
        assert!(err.contains("cannot resolve './missing-helper'"), "{err}");

        app.write_code("export const start = 1;\n");
        let err = deploy_dir(store, app.path()).await.unwrap_err().to_string();
        assert!(err.contains("src/index.ts does not export 'run'"), "{err}");

        assert_eq!(counts(store).await, after_first, "{}", t.name);
    }
}

#[tokio::test]
async fn installs_are_unique_per_site_and_product_and_need_a_deploy() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        let missing =
            install(store, &app_id(), &env(), &site("e.example.net"), None, audit()).await.unwrap_err();
        assert!(matches!(missing, AppError::NotDeployed { .. }), "{}: {missing}", t.name);
        deploy_dir(store, app.path()).await.unwrap();
        install(store, &app_id(), &env(), &site("e.example.net"), None, audit()).await.unwrap();
        let again = install(store, &app_id(), &env(), &site("https://E.example.net/"), None, audit())
            .await
            .unwrap_err();
        assert!(matches!(again, AppError::AlreadyInstalled { .. }), "{again}");
        // Another environment is a separate installation space.
        let staging = Environment::parse("staging").unwrap();
        let none =
            install(store, &app_id(), &staging, &site("e.example.net"), None, audit()).await.unwrap_err();
        assert!(matches!(none, AppError::NotDeployed { .. }));
    }
}

#[tokio::test]
async fn versions_list_installations_and_pending_upgrades() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        deploy_dir(store, app.path()).await.unwrap();
        install(store, &app_id(), &env(), &site("f.example.net"), None, audit()).await.unwrap();
        app.write_manifest(&["read:jira-work", "storage:app"], &["api.example.com"]);
        deploy_dir(store, app.path()).await.unwrap();
        let listing = versions(store, &app_id(), &env()).await.unwrap();
        let numbers: Vec<String> = listing.versions.iter().map(|v| v.version.to_string()).collect();
        assert_eq!(numbers, ["2.0.0", "1.0.0"], "{}", t.name);
        assert!(listing.versions[0].installations.is_empty());
        let on_first = &listing.versions[1].installations;
        assert_eq!(on_first.len(), 1);
        assert_eq!(on_first[0].pending.map(|v| v.to_string()), Some("2.0.0".into()));
    }
}

#[tokio::test]
async fn concurrent_deploys_each_get_their_own_version() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        deploy_dir(store, app.path()).await.unwrap();
        let runs = (0..6).map(|_| deploy_dir(store, app.path()));
        let outcomes: Vec<_> = futures_join_all(runs).await;
        let mut numbers: Vec<String> = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|e| panic!("{}: {e}", t.name)).version.to_string())
            .collect();
        numbers.sort();
        assert_eq!(numbers, ["1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0"], "{}", t.name);
    }
}

/// Run futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let handles: Vec<_> = futures.map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = handles.iter().map(|_| None).collect();
    let mut pending: Vec<_> = handles.into_iter().enumerate().collect();
    std::future::poll_fn(move |cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(out) => {
                results[*i] = Some(out);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(results.drain(..).map(|r| r.expect("every future finished")).collect())
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}

/// The actions (and outcomes) recorded after sequence number `after`.
async fn trail_after(store: &Store, after: i64) -> Vec<(String, String)> {
    let mut tx = store.begin().await.unwrap();
    let rows = tx.audit_records(after, 1000).await.unwrap();
    rows.into_iter().map(|r| (r.action, r.outcome)).collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(a, o)| ((*a).to_owned(), (*o).to_owned())).collect()
}

#[tokio::test]
async fn every_change_and_every_refusal_is_in_the_trail_in_order() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        deploy_dir(store, app.path()).await.unwrap();
        install(store, &app_id(), &env(), &site("a.example.net"), None, audit()).await.unwrap();
        app.write_code("export const run = async () => 2;\n");
        deploy_dir(store, app.path()).await.unwrap();
        app.write_manifest(&["read:jira-work", "write:jira-work"], &["api.example.com"]);
        deploy_dir(store, app.path()).await.unwrap();
        let to = Version { major: 2, minor: 0 };
        let site_a = site("a.example.net");
        upgrade(store, &app_id(), &env(), &site_a, None, to, Consent::NotGiven, audit()).await.unwrap_err();
        upgrade(store, &app_id(), &env(), &site_a, None, to, Consent::AcceptedFor(to), audit())
            .await
            .unwrap();
        rollback(store, &app_id(), &env(), &site_a, None, None, audit()).await.unwrap();
        std::fs::write(app.path().join("manifest.yml"), "modules: [\n").unwrap();
        deploy_dir(store, app.path()).await.unwrap_err();

        assert_eq!(
            trail_after(store, 0).await,
            pairs(&[
                ("app.deploy", "success"),
                ("app.install", "success"),
                ("app.consent", "success"),
                ("app.deploy", "success"),
                ("app.upgrade", "success"), // the automatic minor roll-out
                ("app.deploy", "success"),
                ("app.upgrade", "denied"),
                ("app.consent", "success"),
                ("app.upgrade", "success"),
                ("app.rollback", "success"),
                ("app.deploy", "failure"),
            ]),
            "{}",
            t.name
        );
        let report = AUDITOR.verify(store, None).await.unwrap();
        assert!(report.is_intact(), "{}: {:?}", t.name, report.problems);

        // No record holds the code or the manifest's values.
        let mut tx = store.begin().await.unwrap();
        for row in tx.audit_records(0, 1000).await.unwrap() {
            assert!(!row.details.contains("async () =>"), "{}: {}", t.name, row.details);
        }
    }
}

#[tokio::test]
async fn an_action_whose_record_cannot_be_written_does_not_happen() {
    for t in each_backend().await.unwrap() {
        let store = &t.store;
        let app = TestApp::new();
        deploy_dir(store, app.path()).await.unwrap();
        let before = counts(store).await;

        t.exec_raw("ALTER TABLE audit_log RENAME TO audit_log_gone").await.unwrap();
        app.write_code("export const run = async () => 'never stored';\n");
        let err = deploy_dir(store, app.path()).await.unwrap_err();
        assert!(matches!(err, AppError::Audit(_)), "{}: {err}", t.name);
        let refused =
            install(store, &app_id(), &env(), &site("a.example.net"), None, audit()).await.unwrap_err();
        assert!(matches!(refused, AppError::Audit(_)), "{}: {refused}", t.name);
        t.exec_raw("ALTER TABLE audit_log_gone RENAME TO audit_log").await.unwrap();

        assert_eq!(counts(store).await, before, "{}: nothing of either action was stored", t.name);
        assert_eq!(trail_after(store, 0).await, pairs(&[("app.deploy", "success")]), "{}", t.name);
    }
}
