//! Checking the trail: every record against its MAC and its predecessor,
//! every checkpoint against its signature and the record it vouches for,
//! and the checkpoint file against the database.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kiln_store::{CheckpointRow, Store};

use crate::checkpoint;
use crate::{AuditError, Auditor};

/// Records read per query.
const PAGE: u32 = 1000;

/// One thing wrong, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The record it concerns, if one.
    pub seq: Option<i64>,
    /// The checkpoint file line it concerns, if one.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.seq, self.line) {
            (Some(seq), Some(line)) => {
                write!(f, "record {seq} (checkpoint file line {line}): {}", self.message)
            }
            (Some(seq), None) => write!(f, "record {seq}: {}", self.message),
            (None, Some(line)) => write!(f, "checkpoint file line {line}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

/// What verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub records: u64,
    /// The highest seq in the trail.
    pub head: Option<i64>,
    pub checkpoints: usize,
    pub file_checkpoints: usize,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, seq: Option<i64>, line: Option<usize>, message: impl Into<String>) {
        self.problems.push(Problem { seq, line, message: message.into() });
    }
}

pub(crate) async fn run(auditor: &Auditor, store: &Store, file: Option<&Path>) -> Result<Report, AuditError> {
    let mut report = Report::default();
    // Read the file first, then the database's checkpoints, then the
    // records: whatever is appended meanwhile then only adds records no
    // checkpoint read here refers to.
    let file_entries = match file {
        Some(path) => Some(checkpoint::read_file(path)?),
        None => None,
    };
    let mut tx = store.begin_read().await?;
    let db_checkpoints: BTreeMap<i64, CheckpointRow> =
        tx.audit_checkpoints().await?.into_iter().map(|c| (c.seq, c)).collect();
    report.checkpoints = db_checkpoints.len();

    // The MACs of the records any checkpoint names.
    let mut wanted: BTreeSet<i64> = db_checkpoints.keys().copied().collect();
    if let Some(entries) = &file_entries {
        wanted.extend(entries.iter().filter_map(|(_, e)| e.as_ref().ok().map(|c| c.seq)));
    }
    let mut macs: BTreeMap<i64, Vec<u8>> = BTreeMap::new();

    let mut expected = 1i64;
    let mut prev: Option<Vec<u8>> = Some(Vec::new());
    let mut after = 0i64;
    loop {
        let rows = tx.audit_records(after, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for row in rows {
            report.records += 1;
            if row.seq != expected {
                let gap = if row.seq == expected + 1 {
                    format!("record {expected} is missing (deleted)")
                } else {
                    format!("records {expected} to {} are missing (deleted)", row.seq - 1)
                };
                report.problem(
                    Some(row.seq),
                    None,
                    format!("{gap}; this record cannot be checked against it"),
                );
                prev = None;
            }
            if row.key_id != auditor.key_id() {
                report.problem(
                    Some(row.seq),
                    None,
                    format!("chained with audit key {}, not this key ({})", row.key_id, auditor.key_id()),
                );
            } else if let Some(p) = &prev
                && !auditor.record_mac_matches(p, &row)
            {
                report.problem(
                    Some(row.seq),
                    None,
                    "does not match its MAC: it was edited, inserted, or moved from elsewhere in the trail",
                );
            }
            if wanted.contains(&row.seq) {
                macs.insert(row.seq, row.mac.clone());
            }
            expected = row.seq + 1;
            prev = Some(row.mac);
            report.head = Some(row.seq);
        }
    }
    tx.commit().await?;
    let head = report.head.unwrap_or(0);

    for (seq, c) in &db_checkpoints {
        let signed = checkpoint::message(c.seq, &c.mac, c.at, &c.key_id);
        if c.key_id != auditor.key_id() || !auditor.key().verify(&signed, &c.signature) {
            report.problem(Some(*seq), None, "its checkpoint in the database has an invalid signature");
        }
        match macs.get(seq) {
            None if *seq > head => report.problem(
                Some(*seq),
                None,
                format!(
                    "a checkpoint vouches for it but the trail ends at record {head}: records were cut off"
                ),
            ),
            None => report.problem(Some(*seq), None, "a checkpoint vouches for it but it is missing"),
            Some(mac) if *mac != c.mac => report.problem(
                Some(*seq),
                None,
                "differs from what its checkpoint in the database vouches for",
            ),
            Some(_) => {}
        }
    }

    if let Some(entries) = file_entries {
        check_file(auditor, &mut report, entries, &db_checkpoints, &macs, head);
    }
    Ok(report)
}

fn check_file(
    auditor: &Auditor,
    report: &mut Report,
    entries: Vec<checkpoint::FileLine>,
    db: &BTreeMap<i64, CheckpointRow>,
    macs: &BTreeMap<i64, Vec<u8>>,
    head: i64,
) {
    let mut seen = BTreeSet::new();
    let mut last_seq = 0i64;
    for (line, entry) in entries {
        let c = match entry {
            Ok(c) => c,
            Err(e) => {
                report.problem(None, Some(line), format!("not a checkpoint: {e}"));
                continue;
            }
        };
        report.file_checkpoints += 1;
        let (Some(mac), Ok(signature)) = (unhex(&c.mac), STANDARD.decode(&c.signature)) else {
            report.problem(Some(c.seq), Some(line), "its MAC or signature is not well formed");
            continue;
        };
        let signed = checkpoint::message(c.seq, &mac, c.at, &c.key_id);
        if c.key_id != auditor.key_id() || !auditor.key().verify(&signed, &signature) {
            report.problem(
                Some(c.seq),
                Some(line),
                "the checkpoint's signature is invalid (the line was edited)",
            );
            continue;
        }
        if c.seq <= last_seq {
            report.problem(Some(c.seq), Some(line), "checkpoints in the file are out of order");
        }
        last_seq = last_seq.max(c.seq);
        seen.insert(c.seq);
        match macs.get(&c.seq) {
            None if c.seq > head => report.problem(
                Some(c.seq),
                Some(line),
                format!("vouched for by the file, but the trail ends at record {head}: records were cut off"),
            ),
            None => report.problem(Some(c.seq), Some(line), "vouched for by the file, but missing"),
            Some(m) if *m != mac => report.problem(
                Some(c.seq),
                Some(line),
                "differs from what the checkpoint file vouches for: the trail was rewritten",
            ),
            Some(_) => {}
        }
        match db.get(&c.seq) {
            None => report.problem(
                Some(c.seq),
                Some(line),
                "its checkpoint is in the file but not in the database (deleted)",
            ),
            Some(row) if row.mac != mac || row.signature != signature => report.problem(
                Some(c.seq),
                Some(line),
                "its checkpoint in the database differs from the file's",
            ),
            Some(_) => {}
        }
    }
    for seq in db.keys().filter(|s| !seen.contains(s)) {
        report.problem(
            Some(*seq),
            None,
            "its checkpoint is in the database but not in the checkpoint file (the file was cut or edited, or writing it failed)",
        );
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 254, 255])), Some(vec![0, 1, 254, 255]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
