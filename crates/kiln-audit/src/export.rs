//! Records as lines for a SIEM: Kiln's own JSON, or OCSF 1.3 events.

use kiln_store::AuditRow;
use serde_json::{Value, json};

use crate::hex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per record, with every field and the MAC.
    Jsonl,
    /// One OCSF event per record: Authentication (3002) for sign-ins,
    /// API Activity (6003) for everything else.
    Ocsf,
}

impl ExportFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Ocsf => "ocsf",
        }
    }
}

/// One record as one line (no newline).
pub fn export_line(row: &AuditRow, format: ExportFormat) -> String {
    let details: Value = serde_json::from_str(&row.details).unwrap_or(Value::Null);
    match format {
        ExportFormat::Jsonl => json!({
            "seq": row.seq,
            "at": row.at,
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "outcome": row.outcome,
            "source": row.source,
            "details": details,
            "keyId": row.key_id,
            "mac": hex(&row.mac),
        })
        .to_string(),
        ExportFormat::Ocsf => ocsf(row, details).to_string(),
    }
}

fn ocsf(row: &AuditRow, details: Value) -> Value {
    let (class_uid, category_uid, activity_id) = match row.action.as_str() {
        "operator.login" | "operator.login_failed" => (3002, 3, 1),
        "operator.logout" => (3002, 3, 2),
        "app.deploy" | "app.install" | "token.created" | "operator.created" => (6003, 6, 1),
        "audit.export" | "audit.verify" => (6003, 6, 2),
        "app.upgrade"
        | "app.rollback"
        | "app.consent"
        | "user.consent"
        | "variable.set"
        | "keys.rotate"
        | "config.changed"
        | "operator.mfa_changed"
        | "operator.role_changed" => (6003, 6, 3),
        "variable.unset" | "token.revoked" | "operator.disabled" => (6003, 6, 4),
        _ => (6003, 6, 99),
    };
    let success = row.outcome == "success";
    let mut event = json!({
        "class_uid": class_uid,
        "category_uid": category_uid,
        "activity_id": activity_id,
        "type_uid": class_uid * 100 + activity_id,
        "time": row.at,
        "severity_id": if success { 1 } else { 3 },
        "status_id": if success { 1 } else { 2 },
        "status": if success { "Success" } else { "Failure" },
        "status_detail": row.outcome,
        "actor": { "user": { "name": row.actor } },
        "api": { "operation": row.action },
        "resources": [ { "name": row.target } ],
        "metadata": {
            "version": "1.3.0",
            "uid": row.seq.to_string(),
            "log_name": "kiln-audit",
            "product": { "name": "Kiln", "vendor_name": "Kiln" },
        },
        "unmapped": { "details": details, "mac": hex(&row.mac), "key_id": row.key_id },
    });
    if let (Some(source), Value::Object(map)) = (&row.source, &mut event) {
        map.insert("src_endpoint".into(), json!({ "ip": source }));
    }
    event
}
