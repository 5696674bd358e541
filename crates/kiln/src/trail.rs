//! The audit trail as the command line writes and reads it: where its key
//! comes from, who the actor is, where checkpoints go, and the `kiln audit`
//! subcommands.
//!
//! The audit key lives with the key-encryption keys, never in the database:
//! `KILN_AUDIT_KEY` (`ID:BASE64`) when the keys come from the environment,
//! else an `audit` line in the key file, added on first use. Checkpoints are
//! signed into the database and appended to `KILN_AUDIT_CHECKPOINT_FILE`
//! (default `audit-checkpoints.jsonl` in the data directory; point it at
//! append-only or off-host storage in production) after every command that
//! records something.

use crate::output::say;
use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_audit::{Audit, Auditor, Context, Event, ExportFormat};
use kiln_crypto::audit::{AUDIT_KEY_ENV_VAR, AuditKey};
use kiln_crypto::keys::{FileKeyProvider, KEK_ENV_VAR};
use kiln_store::Store;

use crate::{Failure, key_file, key_provider, usage};

/// Where checkpoints are appended, if not the default.
pub(crate) const CHECKPOINT_FILE_ENV_VAR: &str = "KILN_AUDIT_CHECKPOINT_FILE";

/// The auditor, who is acting, and where checkpoints go.
pub(crate) struct Trail {
    auditor: Auditor,
    ctx: Context,
    checkpoint_file: PathBuf,
}

fn crypto_fail(e: kiln_crypto::envelope::CryptoError) -> Failure {
    Failure { code: 1, message: e.to_string() }
}

fn audit_fail(e: kiln_audit::AuditError) -> Failure {
    Failure { code: 1, message: e.to_string() }
}

/// The operating-system user running the command.
pub(crate) fn cli_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned())
}

impl Trail {
    /// The trail of the store in `data_dir`, with its key from the
    /// environment or the key file (created, with a notice, if this is a
    /// new data directory).
    pub(crate) async fn open(data_dir: &Path, store: &Store) -> Result<Trail, Failure> {
        let head = store.begin_read().await?.audit_head().await?;
        let key = if let Ok(value) = std::env::var(AUDIT_KEY_ENV_VAR) {
            AuditKey::from_env_value(&value).map_err(crypto_fail)?
        } else if std::env::var_os(KEK_ENV_VAR).is_some() {
            return Err(usage(format!(
                "{KEK_ENV_VAR} is set, so keys come from the environment: set {AUDIT_KEY_ENV_VAR}=ID:BASE64 \
                 as well (for a new trail, e.g. a1:$(head -c 32 /dev/urandom | base64))"
            )));
        } else {
            key_provider(data_dir, store).await?;
            let path = key_file(data_dir);
            let file = FileKeyProvider::open(&path).map_err(crypto_fail)?;
            match file.existing_audit_key().map_err(crypto_fail)? {
                Some(key) => key,
                None if head.is_some() => {
                    return Err(Failure {
                        code: 1,
                        message: format!(
                            "the audit trail has records, but the key file {} holds no audit key\n  hint: \
                             restore the key file that was in use (or set {AUDIT_KEY_ENV_VAR}); nothing was \
                             changed",
                            path.display()
                        ),
                    });
                }
                None => {
                    let (key, _) = file.audit_key().map_err(crypto_fail)?;
                    key
                }
            }
        };
        Ok(Trail {
            auditor: Auditor::new(key),
            ctx: Context::cli(&cli_user()),
            checkpoint_file: checkpoint_file(data_dir),
        })
    }

    /// A trail that writes nowhere lasting: for dry runs over an in-memory
    /// store, which must not create a key file.
    pub(crate) fn ephemeral() -> Result<Trail, Failure> {
        let secret = AuditKey::new_secret().map_err(crypto_fail)?;
        Ok(Trail {
            auditor: Auditor::new(AuditKey::from_base64("dry-run", &secret).map_err(crypto_fail)?),
            ctx: Context::cli(&cli_user()),
            checkpoint_file: PathBuf::new(),
        })
    }

    pub(crate) fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    pub(crate) fn checkpoint_file(&self) -> &Path {
        &self.checkpoint_file
    }

    pub(crate) fn audit(&self) -> Audit<'_> {
        Audit { auditor: &self.auditor, ctx: &self.ctx }
    }

    /// Record an event that is not part of a state change.
    pub(crate) async fn record(&self, store: &Store, event: Event) -> Result<(), Failure> {
        self.audit().record(store, event).await.map(drop).map_err(audit_fail)
    }

    /// Sign the trail's head after a command. The command's own work is
    /// already committed; a checkpoint that cannot be written is a warning
    /// that says how to retry, not a failure of that work.
    pub(crate) async fn checkpoint(&self, store: &Store) {
        if let Err(e) = self.auditor.checkpoint(store, &self.checkpoint_file).await {
            crate::output::warning(&format!(
                "the audit checkpoint was not written: {e}\n  hint: run `kiln audit checkpoint`"
            ));
        }
    }
}

fn checkpoint_file(data_dir: &Path) -> PathBuf {
    std::env::var_os(CHECKPOINT_FILE_ENV_VAR)
        .filter(|p| !p.is_empty())
        .map_or_else(|| data_dir.join("audit-checkpoints.jsonl"), PathBuf::from)
}

/// `kiln audit verify`: every record, every checkpoint, and the file.
pub(crate) async fn verify(data_dir: &Path, store: &Store) -> Result<(), Failure> {
    let trail = Trail::open(data_dir, store).await?;
    let file = trail.checkpoint_file.exists().then_some(trail.checkpoint_file.as_path());
    let report = trail.auditor.verify(store, file).await.map_err(audit_fail)?;
    for problem in &report.problems {
        say!("PROBLEM {problem}");
    }
    let file_note = match file {
        Some(path) => format!("{} in {}", report.file_checkpoints, path.display()),
        None => format!("no checkpoint file at {}", trail.checkpoint_file.display()),
    };
    say!(
        "{} records (head {}), {} checkpoints in the database, {file_note}: {}",
        report.records,
        report.head.map_or_else(|| "none".to_owned(), |h| h.to_string()),
        report.checkpoints,
        if report.is_intact() { "intact".to_owned() } else { format!("{} problems", report.problems.len()) }
    );
    trail.record(store, Event::audit_verify(report.records, report.problems.len())).await?;
    // Never sign the head of a trail that failed: that would vouch for it.
    if report.is_intact() && file.is_some() {
        trail.checkpoint(store).await;
    }
    if file.is_none() && report.checkpoints > 0 {
        return Err(Failure {
            code: 1,
            message: format!(
                "the checkpoint file {} is missing but the database holds {} checkpoints",
                trail.checkpoint_file.display(),
                report.checkpoints
            ),
        });
    }
    if report.is_intact() {
        Ok(())
    } else {
        Err(Failure {
            code: 1,
            message: format!("the audit trail fails verification ({} problems)", report.problems.len()),
        })
    }
}

/// `kiln audit tail`: the last `n` records, oldest first.
pub(crate) async fn tail(store: &Store, n: u32, format: Option<ExportFormat>) -> Result<(), Failure> {
    let rows = store.begin_read().await?.audit_tail(n).await?;
    let mut out = std::io::stdout().lock();
    for row in &rows {
        let line = match format {
            Some(f) => kiln_audit::export_line(row, f),
            None => format!(
                "{:>6}  {}  {:<20} {:<8} {}  {}{}",
                row.seq,
                crate::output::utc(row.at),
                row.action,
                row.outcome,
                row.actor,
                row.target,
                if row.details == "{}" { String::new() } else { format!("  {}", row.details) }
            ),
        };
        writeln!(out, "{line}").map_err(|e| Failure { code: 1, message: format!("cannot write: {e}") })?;
    }
    Ok(())
}

/// `kiln audit export`: every record after `after`, to stdout or a file.
pub(crate) async fn export(
    data_dir: &Path,
    store: &Store,
    format: ExportFormat,
    after: i64,
    output: Option<&Path>,
) -> Result<(), Failure> {
    let trail = Trail::open(data_dir, store).await?;
    let write_fail =
        |e: std::io::Error| Failure { code: 1, message: format!("cannot write the export: {e}") };
    let mut sink: Box<dyn Write> = match output {
        Some(path) => Box::new(std::io::BufWriter::new(std::fs::File::create(path).map_err(write_fail)?)),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut cursor = after;
    let mut count = 0u64;
    loop {
        let rows = store.begin_read().await?.audit_records(cursor, 1000).await?;
        let Some(last) = rows.last() else { break };
        cursor = last.seq;
        for row in &rows {
            writeln!(sink, "{}", kiln_audit::export_line(row, format)).map_err(write_fail)?;
            count += 1;
        }
    }
    sink.flush().map_err(write_fail)?;
    drop(sink);
    trail.record(store, Event::audit_export(format.as_str(), after, count)).await?;
    trail.checkpoint(store).await;
    if let Some(path) = output {
        eprintln!("Exported {count} records to {}.", path.display());
    }
    Ok(())
}

/// `kiln audit checkpoint`: sign the head now.
pub(crate) async fn checkpoint(data_dir: &Path, store: &Store) -> Result<(), Failure> {
    let trail = Trail::open(data_dir, store).await?;
    match trail.auditor.checkpoint(store, &trail.checkpoint_file).await.map_err(audit_fail)? {
        Some(c) => say!(
            "Checkpoint at record {} written to the database and {}.",
            c.seq,
            trail.checkpoint_file.display()
        ),
        None => say!("The trail's head is already checkpointed (or the trail is empty)."),
    }
    Ok(())
}

/// `kiln audit alerts`: evaluate the rules over new records, then list.
pub(crate) async fn alerts(
    store: &Store,
    rules: &kiln_audit::alerts::AlertRules,
    limit: u32,
) -> Result<(), Failure> {
    let done = kiln_audit::alerts::evaluate(store, rules).await.map_err(audit_fail)?;
    if !done.raised.is_empty() {
        eprintln!("{} new alerts from {} records.", done.raised.len(), done.records);
    }
    let rows = kiln_audit::alerts::list(store, limit).await.map_err(audit_fail)?;
    if rows.is_empty() {
        say!("No alerts.");
    }
    for a in rows {
        say!(
            "#{:<4} {}  {:<14} x{:<4} records {}-{}  {}{}",
            a.id,
            crate::output::utc(a.last_at),
            a.rule,
            a.count,
            a.first_seq,
            a.last_seq,
            a.message,
            if a.delivered_at.is_some() { "  (delivered)" } else { "" }
        );
    }
    Ok(())
}
