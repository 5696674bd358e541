//! `kiln-audit`: the tamper-evident record of every privileged or
//! security-relevant action.
//!
//! - **A closed set of events.** [`Action`] lists every kind; an [`Event`]
//!   is built only by this crate's constructors, which take identifiers and
//!   metadata, never values: keys, secrets, tokens and payloads cannot be put
//!   into a record. Where a value must be matched later, a constructor
//!   stores a keyed hash of it ([`Auditor::fingerprint`]).
//! - **In the action's transaction.** [`Auditor::append`] writes into the
//!   caller's transaction: if the record cannot be written, the action
//!   rolls back with it.
//! - **Chained under a key outside the database.** Each record carries an
//!   HMAC-SHA256 over its fields and the previous record's MAC, keyed by the
//!   audit key (`kiln_crypto::audit`), so nobody without that key can edit,
//!   insert, reorder or append a record that verifies.
//! - **Signed checkpoints.** [`Auditor::checkpoint`] signs the chain's head
//!   (Ed25519) into the database and appends it to a file outside it, so a
//!   truncated trail, or one rewritten by someone who has the key but not
//!   the file, is caught by [`Auditor::verify`].

#![forbid(unsafe_code)]

pub mod alerts;
mod checkpoint;
mod event;
mod export;
mod verify;

use std::path::Path;
use std::sync::Arc;

use kiln_crypto::audit::AuditKey;
use kiln_store::{AuditRow, Millis, Store, StoreError, Tx};

pub use checkpoint::Checkpoint;
pub use event::{Action, Actor, Context, EgressHop, Event, Outcome, ProductCall};
pub use export::{ExportFormat, export_line};
pub use verify::{Problem, Report};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit trail cannot be written or read: {0}")]
    Store(#[from] StoreError),
    #[error("the audit checkpoint file {path}: {message}")]
    CheckpointFile { path: String, message: String },
    #[error("the audit trail is inconsistent: {0}")]
    Corrupt(String),
}

/// Who is acting, and the auditor that records it: what an audited
/// operation takes.
#[derive(Debug, Clone, Copy)]
pub struct Audit<'a> {
    pub auditor: &'a Auditor,
    pub ctx: &'a Context,
}

impl Audit<'_> {
    /// [`Auditor::append`] with this context.
    pub async fn append(&self, tx: &mut Tx, event: Event) -> Result<i64, AuditError> {
        self.auditor.append(tx, self.ctx, event).await
    }

    /// [`Auditor::record`] with this context.
    pub async fn record(&self, store: &Store, event: Event) -> Result<i64, AuditError> {
        self.auditor.record(store, self.ctx, event).await
    }
}

/// Domain separation for the record MAC.
const RECORD_DOMAIN: &[u8] = b"kiln audit record v1";

/// Writes, checkpoints and verifies the trail with one audit key.
#[derive(Debug, Clone)]
pub struct Auditor {
    key: Arc<AuditKey>,
}

impl Auditor {
    pub fn new(key: AuditKey) -> Self {
        Auditor { key: Arc::new(key) }
    }

    /// Append `event`, done by `ctx`, inside the caller's transaction. The
    /// record exists only if that transaction commits.
    pub async fn append(&self, tx: &mut Tx, ctx: &Context, event: Event) -> Result<i64, AuditError> {
        self.append_at(tx, ctx, event, kiln_store::now_millis()).await
    }

    async fn append_at(
        &self,
        tx: &mut Tx,
        ctx: &Context,
        event: Event,
        at: Millis,
    ) -> Result<i64, AuditError> {
        let seqs = self.append_all_at(tx, ctx, vec![event], at).await?;
        seqs.first().copied().ok_or_else(|| AuditError::Corrupt("an append wrote no record".into()))
    }

    /// Append `events`, in order, under one lock and one head read: for
    /// events that come in bursts (a gateway's decisions during one
    /// invocation), so that they cost the trail's lock once, not per event.
    pub async fn append_all(
        &self,
        tx: &mut Tx,
        ctx: &Context,
        events: Vec<Event>,
    ) -> Result<Vec<i64>, AuditError> {
        self.append_all_at(tx, ctx, events, kiln_store::now_millis()).await
    }

    async fn append_all_at(
        &self,
        tx: &mut Tx,
        ctx: &Context,
        events: Vec<Event>,
        at: Millis,
    ) -> Result<Vec<i64>, AuditError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        tx.audit_lock().await?;
        let (mut seq, mut prev) = match tx.audit_head().await? {
            Some((seq, mac)) => (seq, mac),
            None => (0, Vec::new()),
        };
        let mut seqs = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let mut row = AuditRow {
                seq,
                at,
                actor: ctx.actor.to_string(),
                action: event.action.as_str().to_owned(),
                target: event.target,
                outcome: event.outcome.as_str().to_owned(),
                source: ctx.source.clone(),
                details: event.details.to_string(),
                key_id: self.key.id().to_owned(),
                mac: Vec::new(),
            };
            row.mac = self.record_mac(&prev, &row).to_vec();
            tx.audit_insert(&row).await?;
            prev = row.mac;
            seqs.push(seq);
        }
        Ok(seqs)
    }

    /// Append `event` in a transaction of its own: for events that are not
    /// part of a state change (a refused action, a sandbox fault, an export).
    pub async fn record(&self, store: &Store, ctx: &Context, event: Event) -> Result<i64, AuditError> {
        let mut tx = store.begin().await?;
        let seq = self.append(&mut tx, ctx, event).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Sign the chain's head into the database and append it to `file`
    /// (created 0600 if missing), unless the head is already checkpointed.
    pub async fn checkpoint(&self, store: &Store, file: &Path) -> Result<Option<Checkpoint>, AuditError> {
        checkpoint::write(self, store, file).await
    }

    /// Check every record, every checkpoint in the database, and (if given)
    /// the checkpoint file, and say where anything is wrong.
    pub async fn verify(&self, store: &Store, file: Option<&Path>) -> Result<Report, AuditError> {
        verify::run(self, store, file).await
    }

    /// A keyed hash of `value` (hex), for records that must let a value be
    /// matched later without revealing it.
    pub fn fingerprint(&self, value: &[u8]) -> String {
        let mac = self.key.mac(&[b"kiln audit fingerprint v1", value]);
        mac.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    pub fn key_id(&self) -> &str {
        self.key.id()
    }

    /// The hex public key checkpoints are signed with.
    pub fn public_key_hex(&self) -> String {
        self.key.public_key_hex()
    }

    fn record_parts<'a>(
        prev: &'a [u8],
        row: &'a AuditRow,
        seq: &'a [u8; 8],
        at: &'a [u8; 8],
    ) -> [&'a [u8]; 12] {
        let (has_source, source) = match &row.source {
            Some(s) => (&b"\x01"[..], s.as_bytes()),
            None => (&b"\x00"[..], &b""[..]),
        };
        [
            RECORD_DOMAIN,
            prev,
            seq,
            at,
            row.actor.as_bytes(),
            row.action.as_bytes(),
            row.target.as_bytes(),
            row.outcome.as_bytes(),
            has_source,
            source,
            row.details.as_bytes(),
            row.key_id.as_bytes(),
        ]
    }

    /// The chain MAC of `row` after a record whose MAC is `prev` (empty for
    /// the first record): what `append` stores and `verify` recomputes.
    pub fn record_mac(&self, prev: &[u8], row: &AuditRow) -> [u8; kiln_crypto::audit::MAC_LEN] {
        let (seq, at) = (row.seq.to_be_bytes(), row.at.to_be_bytes());
        self.key.mac(&Self::record_parts(prev, row, &seq, &at))
    }

    fn record_mac_matches(&self, prev: &[u8], row: &AuditRow) -> bool {
        let (seq, at) = (row.seq.to_be_bytes(), row.at.to_be_bytes());
        self.key.mac_matches(&Self::record_parts(prev, row, &seq, &at), &row.mac)
    }

    fn key(&self) -> &AuditKey {
        &self.key
    }
}

/// Hex of some bytes.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fixed test auditor, for other crates' tests (feature `testing`).
#[cfg(feature = "testing")]
#[allow(clippy::expect_used, reason = "test support: a fixed, valid secret")]
pub mod testing {
    use std::sync::LazyLock;

    use super::{Audit, Auditor, Context};
    use kiln_crypto::audit::AuditKey;

    /// The auditor behind [`audit`]: key id `t1`, a fixed secret.
    pub static AUDITOR: LazyLock<Auditor> = LazyLock::new(|| {
        Auditor::new(AuditKey::from_secret("t1", &[3; 32]).expect("a 32-byte secret makes a key"))
    });
    static CONTEXT: LazyLock<Context> = LazyLock::new(|| Context::cli("tester"));

    /// The CLI user `tester`, recording with [`AUDITOR`].
    pub fn audit() -> Audit<'static> {
        Audit { auditor: &AUDITOR, ctx: &CONTEXT }
    }
}
