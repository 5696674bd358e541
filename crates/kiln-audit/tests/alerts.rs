//! Alert rules over the trail, on every backend: each rule fires on what it
//! watches, stays quiet below its threshold, and repeats fold into one alert.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use kiln_audit::alerts::{AlertRules, Threshold, WorkingHours, evaluate, list};
use kiln_audit::{Auditor, Context, Event};
use kiln_crypto::audit::AuditKey;
use kiln_store::Store;
use kiln_store::testing::each_backend;

fn auditor() -> Auditor {
    Auditor::new(AuditKey::from_secret("a1", &[8; 32]).unwrap())
}

fn from(source: &str) -> Context {
    Context { source: Some(source.to_owned()), ..Context::cli("web") }
}

/// Only the rule under test, with hours that never include "now" when asked.
fn only(rule: &str) -> AlertRules {
    let off = AlertRules {
        failed_logins: None,
        new_address: false,
        working_hours: None,
        denial_spike: None,
        verify_failure: false,
        ..AlertRules::default()
    };
    match rule {
        "failed-logins" => {
            AlertRules { failed_logins: Some(Threshold { threshold: 3, window: 60_000 }), ..off }
        }
        "new-address" => AlertRules { new_address: true, ..off },
        "outside-hours" => AlertRules {
            working_hours: Some(WorkingHours { start_hour: 0, end_hour: 0, weekends: true }),
            ..off
        },
        "denial-spike" => {
            AlertRules { denial_spike: Some(Threshold { threshold: 4, window: 60_000 }), ..off }
        }
        "verify-failed" => AlertRules { verify_failure: true, ..off },
        other => panic!("{other}"),
    }
}

async fn rules_and_counts(store: &Store) -> Vec<(String, String, i64)> {
    let mut alerts: Vec<_> =
        list(store, 100).await.unwrap().into_iter().map(|a| (a.rule, a.dedup_key, a.count)).collect();
    alerts.sort();
    alerts
}

#[tokio::test]
async fn each_rule_fires_on_what_it_watches_and_repeats_fold() {
    for t in each_backend().await.unwrap() {
        let a = auditor();
        let store = &t.store;
        let ip = from("198.51.100.4");

        // Failed sign-ins: two are quiet, the third raises, more fold in.
        for _ in 0..2 {
            a.record(store, &ip, Event::login_failed("mallory", "bad credentials", false)).await.unwrap();
        }
        let rules = only("failed-logins");
        assert!(evaluate(store, &rules).await.unwrap().raised.is_empty(), "{}", t.name);
        for _ in 0..3 {
            a.record(store, &ip, Event::login_failed("mallory", "bad credentials", false)).await.unwrap();
        }
        a.record(store, &ip, Event::login_failed("other", "bad credentials", false)).await.unwrap();
        let e = evaluate(store, &rules).await.unwrap();
        assert_eq!((e.records, e.raised.len(), e.folded), (4, 1, 2), "{}", t.name);
        assert_eq!(rules_and_counts(store).await, [("failed-logins".into(), "operator:mallory".into(), 3)]);
        // Evaluated records are not evaluated again.
        assert_eq!(evaluate(store, &rules).await.unwrap().records, 0);

        // New address: the first sign-in ever is not news; a second place is.
        a.record(store, &from("10.0.0.1"), Event::login("olive", true, "s1")).await.unwrap();
        a.record(store, &from("10.0.0.1"), Event::login("olive", true, "s2")).await.unwrap();
        a.record(store, &from("203.0.113.9"), Event::login("olive", true, "s3")).await.unwrap();
        let e = evaluate(store, &only("new-address")).await.unwrap();
        assert_eq!(e.raised.len(), 1, "{}", t.name);

        // Privileged changes outside hours; sign-ins are not privileged changes.
        a.record(store, &ip, Event::variable_set("app", "production", "X", true)).await.unwrap();
        a.record(store, &ip, Event::login("olive", true, "s4")).await.unwrap();
        let e = evaluate(store, &only("outside-hours")).await.unwrap();
        assert_eq!(e.raised.len(), 1, "{}", t.name);

        // A spike of egress denials.
        for i in 0..3 {
            a.record(store, &ip, Event::egress_denied("app", "i1", &format!("h{i}.example"), "not declared"))
                .await
                .unwrap();
        }
        let spike = only("denial-spike");
        assert!(evaluate(store, &spike).await.unwrap().raised.is_empty(), "{}: three is no spike", t.name);
        a.record(store, &ip, Event::egress_denied("app", "i1", "h9.example", "not declared")).await.unwrap();
        assert_eq!(evaluate(store, &spike).await.unwrap().raised.len(), 1, "{}", t.name);

        // A failed verification; a clean one is quiet.
        a.record(store, &Context::cli("root"), Event::audit_verify(10, 0)).await.unwrap();
        a.record(store, &Context::cli("root"), Event::audit_verify(10, 2)).await.unwrap();
        assert_eq!(evaluate(store, &only("verify-failed")).await.unwrap().raised.len(), 1, "{}", t.name);

        let rules: Vec<String> = rules_and_counts(store).await.into_iter().map(|(r, _, _)| r).collect();
        assert_eq!(
            rules,
            ["denial-spike", "failed-logins", "new-address", "outside-hours", "verify-failed"],
            "{}",
            t.name
        );
    }
}
