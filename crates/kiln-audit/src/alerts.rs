//! Alert rules over the audit trail.
//!
//! [`evaluate`] reads the records the rules have not seen (a cursor in the
//! database, locked so that one node evaluates at a time), applies every
//! rule to each, and raises alerts deduplicated by rule and key: a repeat
//! within the window is folded into the open alert (its count and last
//! record), not raised again. Delivery (webhook) is the server's; an alert
//! records each attempt.

use kiln_store::{AlertRow, AuditCount, AuditRow, Millis, Store};

use crate::AuditError;

const MINUTE: Millis = 60_000;

/// "At least `threshold` within `window`."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub threshold: i64,
    pub window: Millis,
}

/// Hours in which privileged changes are expected, in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkingHours {
    /// First hour inside (0–23) and first hour after (1–24).
    pub start_hour: u32,
    pub end_hour: u32,
    /// Whether Saturday and Sunday are working days.
    pub weekends: bool,
}

impl WorkingHours {
    fn contains(&self, at: Millis) -> bool {
        let secs = at.div_euclid(1000);
        let hour = u32::try_from(secs.rem_euclid(86_400) / 3600).unwrap_or(0);
        // 1970-01-01 was a Thursday: day 0 → Thursday.
        let weekday = (secs.div_euclid(86_400) + 3).rem_euclid(7); // 0 = Monday
        let working_day = self.weekends || weekday < 5;
        working_day && hour >= self.start_hour && hour < self.end_hour
    }
}

/// Which rules run, and their limits. `None` turns a rule off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRules {
    /// Failed sign-ins for one account.
    pub failed_logins: Option<Threshold>,
    /// A sign-in from an address the operator has not signed in from before.
    pub new_address: bool,
    /// Privileged changes outside these hours.
    pub working_hours: Option<WorkingHours>,
    /// Egress denials or product scope refusals, per kind.
    pub denial_spike: Option<Threshold>,
    /// A verification that found problems.
    pub verify_failure: bool,
    /// A repeat within this long of the last occurrence is the same alert.
    pub dedup_window: Millis,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            failed_logins: Some(Threshold { threshold: 5, window: 15 * MINUTE }),
            new_address: true,
            working_hours: Some(WorkingHours { start_hour: 7, end_hour: 20, weekends: false }),
            denial_spike: Some(Threshold { threshold: 20, window: 5 * MINUTE }),
            verify_failure: true,
            dedup_window: 60 * MINUTE,
        }
    }
}

/// Actions that change what runs or who can act.
const PRIVILEGED: [&str; 16] = [
    "operator.created",
    "operator.disabled",
    "operator.password_changed",
    "operator.mfa_changed",
    "operator.role_changed",
    "token.created",
    "app.deploy",
    "app.install",
    "app.upgrade",
    "app.consent",
    "app.rollback",
    "variable.set",
    "variable.unset",
    "keys.rotate",
    "config.changed",
    "audit.export",
];

/// One rule firing on one record.
struct Hit {
    rule: &'static str,
    key: String,
    message: String,
}

/// Records like `r` (same action; same target if given) within the
/// threshold's window up to and including `r`.
async fn recent(
    tx: &mut kiln_store::Tx,
    r: &AuditRow,
    target: Option<&str>,
    t: Threshold,
) -> Result<i64, AuditError> {
    let q = AuditCount {
        action: &r.action,
        target,
        source: None,
        success_only: false,
        since: r.at - t.window,
        before_seq: r.seq + 1,
    };
    Ok(tx.audit_count(q).await?)
}

async fn hits(tx: &mut kiln_store::Tx, rules: &AlertRules, r: &AuditRow) -> Result<Vec<Hit>, AuditError> {
    let mut out = Vec::new();
    let failed = r.outcome != "success";
    if let Some(t) = rules.failed_logins
        && r.action == "operator.login_failed"
    {
        let n = recent(tx, r, Some(&r.target), t).await?;
        if n >= t.threshold {
            out.push(Hit {
                rule: "failed-logins",
                key: r.target.clone(),
                message: format!("{n} failed sign-ins for {} within {} minutes", r.target, t.window / MINUTE),
            });
        }
    }
    if rules.new_address
        && r.action == "operator.login"
        && !failed
        && let Some(source) = &r.source
    {
        let earlier = AuditCount {
            action: "operator.login",
            target: Some(&r.target),
            source: None,
            success_only: true,
            since: 0,
            before_seq: r.seq,
        };
        let before_anywhere = tx.audit_count(earlier).await?;
        let before_here = tx.audit_count(AuditCount { source: Some(source), ..earlier }).await?;
        if before_anywhere > 0 && before_here == 0 {
            out.push(Hit {
                rule: "new-address",
                key: format!("{}@{source}", r.target),
                message: format!("{} signed in from {source}, an address not seen for them before", r.target),
            });
        }
    }
    if let Some(hours) = rules.working_hours
        && PRIVILEGED.contains(&r.action.as_str())
        && !hours.contains(r.at)
    {
        out.push(Hit {
            rule: "outside-hours",
            key: format!("{}:{}", r.actor, r.action),
            message: format!(
                "{} by {} on {} outside working hours ({:02}:00–{:02}:00 UTC{})",
                r.action,
                r.actor,
                r.target,
                hours.start_hour,
                hours.end_hour,
                if hours.weekends { "" } else { ", weekdays" }
            ),
        });
    }
    if let Some(t) = rules.denial_spike
        && (r.action == "egress.denied" || r.action == "product.scope_refused")
    {
        let n = recent(tx, r, None, t).await?;
        if n >= t.threshold {
            out.push(Hit {
                rule: "denial-spike",
                key: r.action.clone(),
                message: format!("{n} {} records within {} minutes", r.action, t.window / MINUTE),
            });
        }
    }
    if rules.verify_failure && r.action == "audit.verify" && failed {
        out.push(Hit {
            rule: "verify-failed",
            key: "audit".into(),
            message: format!("audit verification found problems: {}", r.details),
        });
    }
    Ok(out)
}

/// What one evaluation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub records: u64,
    /// Alerts raised (new) by this evaluation.
    pub raised: Vec<i64>,
    /// Open alerts that absorbed a repeat.
    pub folded: u64,
}

/// Run the rules over every record not yet evaluated.
pub async fn evaluate(store: &Store, rules: &AlertRules) -> Result<Evaluation, AuditError> {
    let mut result = Evaluation::default();
    loop {
        let mut tx = store.begin().await?;
        let cursor = tx.alert_cursor().await?;
        let rows = tx.audit_records(cursor, 500).await?;
        let Some(last) = rows.last().map(|r| r.seq) else { break };
        for r in &rows {
            result.records += 1;
            for hit in hits(&mut tx, rules, r).await? {
                match tx.alert_open(hit.rule, &hit.key, r.at - rules.dedup_window).await? {
                    Some(open) => {
                        tx.alert_bump(open.id, r.seq, r.at).await?;
                        result.folded += 1;
                    }
                    None => result
                        .raised
                        .push(tx.alert_insert(hit.rule, &hit.key, &hit.message, r.seq, r.at).await?),
                }
            }
        }
        tx.alert_cursor_set(last).await?;
        tx.commit().await?;
    }
    Ok(result)
}

/// The newest alerts first.
pub async fn list(store: &Store, limit: u32) -> Result<Vec<AlertRow>, AuditError> {
    let mut tx = store.begin_read().await?;
    let rows = tx.alerts(limit).await?;
    tx.commit().await?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn working_hours_know_the_hour_and_the_weekday() {
        let hours = WorkingHours { start_hour: 7, end_hour: 20, weekends: false };
        // 2026-11-27 was a Friday; 2026-11-28 a Saturday.
        let friday_noon = 1_795_780_800_000;
        assert!(hours.contains(friday_noon));
        assert!(!hours.contains(friday_noon + 9 * 3_600_000), "21:00");
        assert!(!hours.contains(friday_noon - 6 * 3_600_000), "06:00");
        assert!(hours.contains(friday_noon - 5 * 3_600_000), "07:00");
        assert!(!hours.contains(friday_noon + 24 * 3_600_000), "Saturday noon");
        assert!(WorkingHours { weekends: true, ..hours }.contains(friday_noon + 24 * 3_600_000));
    }
}
