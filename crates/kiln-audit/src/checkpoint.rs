//! Signed checkpoints: "the record with this seq had this MAC", signed with
//! the audit key, kept in the database and appended to a file outside it.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln_store::{CheckpointRow, Store};
use serde::{Deserialize, Serialize};

use crate::{AuditError, Auditor, hex};

const CHECKPOINT_DOMAIN: &[u8] = b"kiln audit checkpoint v1";

/// A checkpoint as the file holds it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: i64,
    /// The record's MAC, hex.
    pub mac: String,
    pub at: i64,
    pub key_id: String,
    /// Ed25519 over the other fields, base64.
    pub signature: String,
}

impl Checkpoint {
    pub(crate) fn from_row(row: &CheckpointRow) -> Self {
        Checkpoint {
            seq: row.seq,
            mac: hex(&row.mac),
            at: row.at,
            key_id: row.key_id.clone(),
            signature: STANDARD.encode(&row.signature),
        }
    }
}

/// What a checkpoint signs.
pub(crate) fn message(seq: i64, mac: &[u8], at: i64, key_id: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [CHECKPOINT_DOMAIN, &seq.to_be_bytes(), mac, &at.to_be_bytes(), key_id.as_bytes()] {
        out.extend_from_slice(&(part.len() as u64).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

pub(crate) async fn write(
    auditor: &Auditor,
    store: &Store,
    file: &Path,
) -> Result<Option<Checkpoint>, AuditError> {
    let mut tx = store.begin().await?;
    tx.audit_lock().await?;
    let Some((seq, mac)) = tx.audit_head().await? else { return Ok(None) };
    if tx.audit_last_checkpoint().await?.is_some_and(|c| c.seq >= seq) {
        return Ok(None);
    }
    let at = kiln_store::now_millis();
    let key_id = auditor.key_id().to_owned();
    let signature = auditor.key().sign(&message(seq, &mac, at, &key_id));
    let row = CheckpointRow { seq, mac, at, key_id, signature };
    tx.audit_checkpoint_insert(&row).await?;
    tx.commit().await?;
    // After the commit: a checkpoint the file lacks is what verify reports
    // if this append fails, which is the truth.
    let checkpoint = Checkpoint::from_row(&row);
    append_line(file, &checkpoint)?;
    Ok(Some(checkpoint))
}

fn append_line(path: &Path, checkpoint: &Checkpoint) -> Result<(), AuditError> {
    let fail = |message: String| AuditError::CheckpointFile { path: path.display().to_string(), message };
    let line = serde_json::to_string(checkpoint).map_err(|e| fail(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path).map_err(|e| fail(e.to_string()))?;
    f.write_all(format!("{line}\n").as_bytes()).map_err(|e| fail(e.to_string()))?;
    f.sync_all().map_err(|e| fail(e.to_string()))
}

/// A checkpoint file line: its number, and the checkpoint or why it is not one.
pub(crate) type FileLine = (usize, Result<Checkpoint, String>);

/// The file's checkpoints with their line numbers; a line that does not
/// parse is returned as an error message for that line.
pub(crate) fn read_file(path: &Path) -> Result<Vec<FileLine>, AuditError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(AuditError::CheckpointFile {
                path: path.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| (n + 1, serde_json::from_str::<Checkpoint>(l).map_err(|e| e.to_string())))
        .collect())
}
