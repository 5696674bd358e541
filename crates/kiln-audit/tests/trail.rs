//! The audit trail on every backend: appended in the action's transaction,
//! and every kind of tampering with the tables or the checkpoint file found
//! and located by verification.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::path::{Path, PathBuf};

use kiln_audit::{Auditor, Context, Event, Report};
use kiln_crypto::audit::AuditKey;
use kiln_store::testing::{TestStore, each_backend};

fn auditor() -> Auditor {
    Auditor::new(AuditKey::from_secret("a1", &[5; 32]).unwrap())
}

/// SQL straight at the tables, as an attacker with the database would.
struct Raw<'a>(&'a TestStore);

async fn raw(t: &TestStore) -> Raw<'_> {
    Raw(t)
}

impl Raw<'_> {
    async fn exec(&self, sql: &str) {
        self.0.exec_raw(sql).await.unwrap();
    }
}

/// A trail of `n` records, checkpointed after each, in a fresh store.
async fn trail(t: &TestStore, file: &Path, n: usize) -> Auditor {
    let auditor = auditor();
    let ctx = Context::cli("alice");
    for i in 0..n {
        let event = Event::deploy(
            "ari:cloud:ecosystem::app/a",
            "development",
            &format!("{}.0.0", i + 1),
            None,
            "initial",
            "sha256:00",
        );
        auditor.record(&t.store, &ctx, event).await.unwrap();
        auditor.checkpoint(&t.store, file).await.unwrap();
    }
    auditor
}

fn problems(report: &Report) -> String {
    report.problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// Verification must fail, and some problem must name `seq` and say `words`.
fn caught(report: &Report, seq: i64, words: &str, what: &str) {
    assert!(!report.is_intact(), "{what}: not detected");
    assert!(
        report.problems.iter().any(|p| p.seq == Some(seq) && p.message.contains(words)),
        "{what}: no problem at record {seq} saying {words:?}:\n{}",
        problems(report)
    );
}

async fn fresh(name: &str) -> Vec<(TestStore, tempfile::TempDir, PathBuf)> {
    let mut out = Vec::new();
    for t in each_backend().await.unwrap() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{name}.jsonl"));
        out.push((t, dir, file));
    }
    out
}

#[tokio::test]
async fn an_untouched_trail_verifies_and_a_changed_key_does_not() {
    for (t, _dir, file) in fresh("intact").await {
        let auditor = trail(&t, &file, 5).await;
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        assert!(report.is_intact(), "{}: {}", t.name, problems(&report));
        assert_eq!(
            (report.records, report.head, report.checkpoints, report.file_checkpoints),
            (5, Some(5), 5, 5)
        );
        // Checkpointing an already checkpointed head adds nothing.
        assert!(auditor.checkpoint(&t.store, &file).await.unwrap().is_none());

        let other = Auditor::new(AuditKey::from_secret("a1", &[6; 32]).unwrap());
        let report = other.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 1, "MAC", "another key");
    }
}

#[tokio::test]
async fn edited_deleted_reordered_inserted_and_appended_records_are_found() {
    for (t, _dir, file) in fresh("records").await {
        let auditor = trail(&t, &file, 6).await;
        let db = raw(&t).await;
        db.exec("UPDATE audit_log SET target = 'app:someone-else/development' WHERE seq = 2").await;
        caught(&auditor.verify(&t.store, Some(&file)).await.unwrap(), 2, "MAC", "edited");
    }
    for (t, _dir, file) in fresh("delete").await {
        let auditor = trail(&t, &file, 6).await;
        let db = raw(&t).await;
        db.exec("DELETE FROM audit_log WHERE seq = 3").await;
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 4, "record 3 is missing", "deleted");
        caught(&report, 3, "missing", "deleted (its checkpoint)");
    }
    for (t, _dir, file) in fresh("reorder").await {
        let auditor = trail(&t, &file, 6).await;
        let db = raw(&t).await;
        db.exec("UPDATE audit_log SET seq = 100 WHERE seq = 2").await;
        db.exec("UPDATE audit_log SET seq = 2 WHERE seq = 4").await;
        db.exec("UPDATE audit_log SET seq = 4 WHERE seq = 100").await;
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 2, "MAC", "reordered");
        caught(&report, 4, "MAC", "reordered");
    }
    for (t, _dir, file) in fresh("insert").await {
        let auditor = trail(&t, &file, 6).await;
        let db = raw(&t).await;
        // Make room after record 3 and put a forged record there.
        for seq in (4..=6).rev() {
            db.exec(&format!("UPDATE audit_log SET seq = {} WHERE seq = {seq}", seq + 1)).await;
        }
        db.exec(
            "INSERT INTO audit_log (seq, at, actor, action, target, outcome, source, details, key_id, mac)
             SELECT 4, at, 'cli:mallory', 'app.rollback', target, 'success', NULL, '{}', key_id, mac
             FROM audit_log WHERE seq = 3",
        )
        .await;
        caught(&auditor.verify(&t.store, Some(&file)).await.unwrap(), 4, "MAC", "inserted");
    }
    for (t, _dir, file) in fresh("append").await {
        let auditor = trail(&t, &file, 3).await;
        let db = raw(&t).await;
        db.exec(
            "INSERT INTO audit_log (seq, at, actor, action, target, outcome, source, details, key_id, mac)
             SELECT 4, at, actor, action, target, outcome, source, details, key_id, mac FROM audit_log WHERE seq = 3",
        )
        .await;
        caught(&auditor.verify(&t.store, Some(&file)).await.unwrap(), 4, "MAC", "forged tail");
    }
}

#[tokio::test]
async fn a_truncated_trail_is_found_through_the_checkpoint_file() {
    for (t, _dir, file) in fresh("truncate").await {
        let auditor = trail(&t, &file, 6).await;
        let db = raw(&t).await;
        // The attacker cuts the last two records and their checkpoints: the
        // database alone is self-consistent again.
        db.exec("DELETE FROM audit_log WHERE seq > 4").await;
        db.exec("DELETE FROM audit_checkpoints WHERE seq > 4").await;
        let alone = auditor.verify(&t.store, None).await.unwrap();
        assert!(alone.is_intact(), "{}: the database alone cannot tell: {}", t.name, problems(&alone));
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 6, "cut off", "truncated");
        caught(&report, 5, "cut off", "truncated");
    }
}

#[tokio::test]
async fn a_trail_rewritten_with_the_key_is_found_through_the_checkpoint_file() {
    for (t, _dir, file) in fresh("rewrite").await {
        let auditor = trail(&t, &file, 4).await;
        // Someone with the audit key but not the file rebuilds the trail with
        // an edited record 2: every MAC and database checkpoint checks out.
        let db = raw(&t).await;
        db.exec("DELETE FROM audit_log").await;
        db.exec("DELETE FROM audit_checkpoints").await;
        let ctx = Context::cli("alice");
        for i in 0..4 {
            let version = if i == 1 { "9.9.9".to_owned() } else { format!("{}.0.0", i + 1) };
            let event = Event::deploy(
                "ari:cloud:ecosystem::app/a",
                "development",
                &version,
                None,
                "initial",
                "sha256:00",
            );
            auditor.record(&t.store, &ctx, event).await.unwrap();
        }
        let elsewhere = tempfile::tempdir().unwrap();
        auditor.checkpoint(&t.store, &elsewhere.path().join("other.jsonl")).await.unwrap();
        assert!(auditor.verify(&t.store, None).await.unwrap().is_intact());
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 2, "rewritten", "rewritten with the key");
    }
}

#[tokio::test]
async fn tampering_with_checkpoints_in_the_file_or_the_database_is_found() {
    for (t, _dir, file) in fresh("cp-edit").await {
        let auditor = trail(&t, &file, 3).await;
        let text = std::fs::read_to_string(&file).unwrap();
        let edited: Vec<String> = text
            .lines()
            .enumerate()
            .map(|(i, l)| if i == 1 { l.replacen("\"at\":", "\"at\":1", 1) } else { l.to_owned() })
            .collect();
        std::fs::write(&file, edited.join("\n") + "\n").unwrap();
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 2, "signature", "edited file line");
    }
    for (t, _dir, file) in fresh("cp-delete-line").await {
        let auditor = trail(&t, &file, 3).await;
        let text = std::fs::read_to_string(&file).unwrap();
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains("\"seq\":2,")).collect();
        std::fs::write(&file, kept.join("\n") + "\n").unwrap();
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 2, "not in the checkpoint file", "deleted file line");
    }
    for (t, _dir, file) in fresh("cp-garbage").await {
        let auditor = trail(&t, &file, 2).await;
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("this is not json\n");
        std::fs::write(&file, text).unwrap();
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        assert!(report.problems.iter().any(|p| p.line == Some(3)), "{}", problems(&report));
    }
    for (t, _dir, file) in fresh("cp-db").await {
        let auditor = trail(&t, &file, 3).await;
        let db = raw(&t).await;
        db.exec("DELETE FROM audit_checkpoints WHERE seq = 2").await;
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 2, "not in the database", "deleted database checkpoint");
    }
    for (t, _dir, file) in fresh("cp-db-sig").await {
        let auditor = trail(&t, &file, 3).await;
        let db = raw(&t).await;
        db.exec("UPDATE audit_checkpoints SET at = at + 1 WHERE seq = 3").await;
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        caught(&report, 3, "invalid signature", "edited database checkpoint");
    }
}

#[tokio::test]
async fn concurrent_appends_stay_one_unbroken_chain() {
    for (t, _dir, file) in fresh("concurrent").await {
        let auditor = auditor();
        let mut tasks = Vec::new();
        for n in 0..8 {
            let (store, auditor) = (t.store.clone(), auditor.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..10 {
                    let event = Event::variable_set(
                        "ari:cloud:ecosystem::app/a",
                        "development",
                        &format!("V{n}_{i}"),
                        false,
                    );
                    auditor.record(&store, &Context::cli(&format!("user{n}")), event).await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        auditor.checkpoint(&t.store, &file).await.unwrap();
        let report = auditor.verify(&t.store, Some(&file)).await.unwrap();
        assert!(report.is_intact(), "{}: {}", t.name, problems(&report));
        assert_eq!(report.records, 80, "{}", t.name);
    }
}

#[tokio::test]
async fn a_record_that_cannot_be_written_takes_its_action_with_it() {
    for t in each_backend().await.unwrap() {
        let auditor = auditor();
        let db = raw(&t).await;
        // Take the audit table away: the transaction's own write must go too.
        db.exec("ALTER TABLE audit_log RENAME TO audit_log_gone").await;
        let mut tx = t.store.begin().await.unwrap();
        let put = kiln_store::KvPut {
            owner: "o",
            namespace: "kvs",
            key: "k",
            value: b"sealed",
            key_id: 1,
            expires_at: None,
        };
        tx.kv_put(put, 1).await.unwrap();
        let result =
            auditor.append(&mut tx, &Context::cli("alice"), Event::variable_unset("a", "e", "V")).await;
        assert!(result.is_err(), "{}", t.name);
        drop(tx); // the caller's `?` returns here: no commit
        db.exec("ALTER TABLE audit_log_gone RENAME TO audit_log").await;
        let mut tx = t.store.begin().await.unwrap();
        assert_eq!(tx.kv_get("o", "kvs", "k", 0).await.unwrap(), None, "{}", t.name);
        tx.commit().await.unwrap();
    }
}

#[tokio::test]
async fn fingerprints_match_equal_values_without_revealing_them() {
    let a = auditor();
    assert_eq!(a.fingerprint(b"secret-value"), a.fingerprint(b"secret-value"));
    assert_ne!(a.fingerprint(b"secret-value"), a.fingerprint(b"secret-valuf"));
    assert!(!a.fingerprint(b"secret-value").contains("secret"));
    let other = Auditor::new(AuditKey::from_secret("a2", &[9; 32]).unwrap());
    assert_ne!(a.fingerprint(b"secret-value"), other.fingerprint(b"secret-value"));
}

#[tokio::test]
async fn a_burst_appended_under_one_lock_is_one_chain_with_the_rest() {
    for t in each_backend().await.unwrap() {
        let a = auditor();
        let ctx = Context { source: Some("10.0.0.9".into()), ..Context::cli("gateway") };
        a.record(&t.store, &ctx, Event::variable_unset("app", "e", "A")).await.unwrap();
        let hops: Vec<Event> = (0..40u16)
            .map(|i| {
                let host = format!("h{i}.example.com");
                let hop = kiln_audit::EgressHop {
                    method: "GET",
                    host: &host,
                    port: 443,
                    address: Some("93.184.215.14"),
                    allowed: i % 3 != 0,
                    status: (i % 3 != 0).then_some(200),
                    request_bytes: 0,
                    response_bytes: usize::from(i),
                    reason: (i % 3 == 0).then_some("not declared"),
                    insecure: false,
                };
                Event::egress("app", "inst-1", &hop)
            })
            .collect();
        let mut tx = t.store.begin().await.unwrap();
        let seqs = a.append_all(&mut tx, &ctx, hops).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(seqs, (2..42).collect::<Vec<i64>>(), "{}", t.name);
        a.record(&t.store, &ctx, Event::variable_unset("app", "e", "B")).await.unwrap();
        let report = a.verify(&t.store, None).await.unwrap();
        assert!(report.is_intact() && report.records == 42, "{}: {}", t.name, problems(&report));

        let mut tx = t.store.begin().await.unwrap();
        let rows = tx.audit_records(1, 40).await.unwrap();
        let denied = rows.iter().filter(|r| r.action == "egress.denied" && r.outcome == "denied").count();
        let allowed = rows.iter().filter(|r| r.action == "egress.allowed" && r.outcome == "success").count();
        assert_eq!((denied, allowed), (14, 26), "{}", t.name);
        // An empty burst writes nothing.
        assert!(a.append_all(&mut tx, &ctx, Vec::new()).await.unwrap().is_empty());
    }
}
