//! `kiln bench audit`: what the tamper-evident audit trail costs. Each
//! measurement runs the audited path and a baseline that does the same
//! database work without the chain, on the same backend, in one run; the
//! two alternate in blocks (and swap which goes first every block) so that
//! drift in the machine's speed falls on both alike.
//!
//! - **Standalone append**: [`Auditor::record`] (its own transaction: lock,
//!   read the head, HMAC, insert, commit) beside the very same row inserted
//!   into a twin store's `audit_log` in its own transaction with no lock,
//!   no head read and no MAC.
//! - **Append inside an action's transaction**: `kv_put` and
//!   [`Auditor::append`] committed together, as `kiln variables set` does,
//!   beside `kv_put` alone.
//! - **Concurrent appends**: the standalone pair again from four tasks at
//!   once, which shows what the trail's single lock serialises.
//! - **Verification**: [`Auditor::verify`] over the whole trail (without
//!   and with a checkpoint file) beside reading the same records page by
//!   page without checking them.
//!
//! The unchained rows exist only in the baseline's own store (a second data
//! directory or schema), so the trail that is verified is a real one.

use crate::output::{say, say_raw};
use std::cell::Cell;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_audit::{Auditor, Context, Event};
use kiln_crypto::audit::AuditKey;
use kiln_store::{AuditRow, KvPut, Store};

use crate::Failure;

/// Alternating blocks per write measurement.
const BLOCKS: usize = 40;
/// Alternating passes over the whole trail per verification measurement.
const VERIFY_PASSES: usize = 15;
/// Records per page in the read-only baseline: what `verify` reads per query.
const PAGE: u32 = 1000;
/// Tasks in the concurrency measurement (`lanes` joins exactly this many).
const LANES: usize = 4;
/// Operations of each kind before measuring (connections, statement caches).
const WARM_UP: usize = 50;
/// Bytes an audited action stores: a variable's value, sealed.
const VALUE_BYTES: usize = 128;
/// A realistic app id, so records are as long as real ones.
const APP: &str = "ari:cloud:ecosystem::app/8d3c1e4a-52f7-4b0e-9a61-3f0c2b7d9e15";

type R<T> = Result<T, String>;

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(crate) async fn audit(records: usize, postgres: Option<String>) -> Result<(), Failure> {
    let fail = |m: String| Failure { code: 1, message: m };
    let records = records.max(BLOCKS);
    let dir = tempfile::tempdir().map_err(|e| fail(format!("cannot make a temporary directory: {e}")))?;
    let mut rows = Vec::new();
    let mut notes = Vec::new();

    let audited = Store::open_data_dir(&dir.path().join("audited")).await?;
    let baseline = Store::open_data_dir(&dir.path().join("baseline")).await?;
    eprintln!(
        "SQLite (WAL, synchronous=FULL) in {}: {records} operations per path and measurement…",
        dir.path().display()
    );
    let file = dir.path().join("sqlite-checkpoints.jsonl");
    let result = bench_backend("SQLite", &audited, &baseline, records, file).await;
    audited.close().await;
    baseline.close().await;
    let (r, note) = result.map_err(fail)?;
    rows.extend(r);
    notes.push(note);

    if let Some(url) = &postgres {
        let schema = format!("kiln_bench_audit_{}", kiln_store::now_millis());
        let baseline_schema = format!("{schema}_baseline");
        eprintln!("PostgreSQL (schemas {schema} and {baseline_schema}): the same…");
        let file = dir.path().join("postgres-checkpoints.jsonl");
        let result = bench_postgres(url, &schema, &baseline_schema, records, file).await;
        // Drop both schemas whatever happened, then report the first failure.
        let dropped = Store::drop_postgres_schema(url, &schema).await;
        let dropped_baseline = Store::drop_postgres_schema(url, &baseline_schema).await;
        let (r, note) = result.map_err(fail)?;
        dropped?;
        dropped_baseline?;
        rows.extend(r);
        notes.push(note);
    } else {
        eprintln!("PostgreSQL skipped: pass --postgres <url> to measure it too.");
    }

    let (mac_us, sign_us) = crypto_only().await.map_err(fail)?;
    say_raw!("{}", report(&rows, &notes));
    say!("\n| record MAC alone (µs) | checkpoint signature alone (µs) |\n|---|---|");
    say!("| {mac_us:.2} | {sign_us:.1} |");
    Ok(())
}

/// The chain's cryptography alone, in memory, free of the database's
/// noise: HMAC-SHA256 over a real record's fields (what `append` computes
/// and `verify` recomputes per record), and the Ed25519 signature of one
/// checkpoint. Returns µs per MAC and per signature.
async fn crypto_only() -> R<(f64, f64)> {
    const MACS: u32 = 20_000;
    const SIGNATURES: u32 = 2_000;
    let key = AuditKey::from_secret("a1", &[7; 32]).map_err(text)?;
    let auditor = Auditor::new(AuditKey::from_secret("a1", &[7; 32]).map_err(text)?);
    let store = Store::open_in_memory().await.map_err(text)?;
    auditor.record(&store, &Context::cli("bench"), event()).await.map_err(text)?;
    let mut tx = store.begin_read().await.map_err(text)?;
    let row = tx.audit_tail(1).await.map_err(text)?.into_iter().next().ok_or("no record was written")?;
    tx.commit().await.map_err(text)?;
    store.close().await;
    // This first record's predecessor MAC is empty; later ones' are 32 bytes.
    if auditor.record_mac(&[], &row).as_slice() != row.mac.as_slice() {
        return Err("the record's MAC does not recompute".to_owned());
    }
    let (seq, at) = (row.seq.to_be_bytes(), row.at.to_be_bytes());
    let started = Instant::now();
    let mut mac = [0u8; kiln_crypto::audit::MAC_LEN];
    for _ in 0..MACS {
        mac = auditor.record_mac(&row.mac, &row);
    }
    let mac_took = started.elapsed();
    if mac == [0u8; kiln_crypto::audit::MAC_LEN] {
        return Err("the MAC came out all zeros".to_owned());
    }
    // Laid out as kiln-audit's checkpoint message: each part length-prefixed.
    let mut message = Vec::new();
    for part in [&b"kiln audit checkpoint v1"[..], &seq, &row.mac, &at, row.key_id.as_bytes()] {
        message.extend_from_slice(&(part.len() as u64).to_be_bytes());
        message.extend_from_slice(part);
    }
    let started = Instant::now();
    for _ in 0..SIGNATURES {
        if key.sign(&message).is_empty() {
            return Err("an empty signature".to_owned());
        }
    }
    let sign_took = started.elapsed();
    let us = |d: Duration, n: u32| d.as_secs_f64() * 1e6 / f64::from(n);
    Ok((us(mac_took, MACS), us(sign_took, SIGNATURES)))
}

async fn bench_postgres(
    url: &str,
    schema: &str,
    baseline_schema: &str,
    records: usize,
    file: PathBuf,
) -> R<(Vec<Row>, String)> {
    let audited = Store::open_postgres(url, Some(schema)).await.map_err(text)?;
    let baseline = match Store::open_postgres(url, Some(baseline_schema)).await {
        Ok(s) => s,
        Err(e) => {
            audited.close().await;
            return Err(e.to_string());
        }
    };
    let result = bench_backend("PostgreSQL", &audited, &baseline, records, file).await;
    audited.close().await;
    baseline.close().await;
    result
}

fn report(rows: &[Row], notes: &[String]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| backend | measurement | baseline | audited ops/s | baseline ops/s | audited ÷ baseline | audited µs/op | baseline µs/op | added µs/op |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let (a, b) = (row.audited.us_per_unit(), row.baseline.us_per_unit());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.1} | {:.1} | {:.1} |",
            row.backend,
            row.measurement,
            row.baseline_name,
            row.audited.per_second(),
            row.baseline.per_second(),
            b / a,
            a,
            b,
            a - b
        );
    }
    let _ = writeln!(
        out,
        "\nops/s and µs/op are medians over alternating blocks ({BLOCKS} per write measurement, \
         {VERIFY_PASSES} passes per verification); verification counts records, not calls. \
         audited ÷ baseline is the audited path's throughput as a fraction of the baseline's; \
         in the concurrent rows µs/op is wall time per operation across the {LANES} tasks (1 ÷ throughput), \
         not latency."
    );
    for note in notes {
        let _ = writeln!(out, "{note}");
    }
    out
}

/// One audited path beside its baseline.
struct Row {
    backend: &'static str,
    measurement: &'static str,
    baseline_name: &'static str,
    audited: Timing,
    baseline: Timing,
}

/// What one operation in a measurement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `Auditor::record`: a transaction of its own, chained.
    Record,
    /// The same row into the baseline store's trail: insert and commit,
    /// nothing else.
    InsertUnchained,
    /// `kv_put` and `Auditor::append` in one transaction.
    PutAndAppend,
    /// `kv_put` alone in one transaction.
    Put,
    /// `Auditor::verify` without a checkpoint file.
    Verify,
    /// `Auditor::verify` with the checkpoint file.
    VerifyWithFile,
    /// Every record read page by page, unchecked.
    ReadPages,
}

/// The stores and the auditor a backend's measurements share.
struct Bench<'a> {
    audited: &'a Store,
    /// Holds the unchained rows, so they never enter the audited trail.
    baseline: &'a Store,
    auditor: Auditor,
    ctx: Context,
    /// A real record, which the unchained baseline copies: the same row,
    /// the same size.
    template: AuditRow,
    /// The next seq in the baseline store's table.
    next_seq: Cell<i64>,
    checkpoint_file: PathBuf,
    value: Vec<u8>,
}

/// The event every audited path records: a variable set, as the CLI does.
fn event() -> Event {
    Event::variable_set(APP, "development", "API_TOKEN", true)
}

async fn bench_backend(
    backend: &'static str,
    audited: &Store,
    baseline: &Store,
    records: usize,
    checkpoint_file: PathBuf,
) -> R<(Vec<Row>, String)> {
    let key = AuditKey::from_secret("a1", &[7; 32]).map_err(text)?;
    let auditor = Auditor::new(key);
    let ctx = Context::cli("bench");
    // A first real record, for the baseline to copy.
    auditor.record(audited, &ctx, event()).await.map_err(text)?;
    let mut tx = audited.begin_read().await.map_err(text)?;
    let template = tx.audit_tail(1).await.map_err(text)?.into_iter().next();
    tx.commit().await.map_err(text)?;
    let template = template.ok_or("the first record was not written")?;
    let bench = Bench {
        audited,
        baseline,
        auditor,
        ctx,
        template,
        next_seq: Cell::new(1),
        checkpoint_file,
        value: vec![b'x'; VALUE_BYTES],
    };

    for op in [Op::Record, Op::InsertUnchained, Op::PutAndAppend, Op::Put] {
        for i in records..records + WARM_UP {
            bench.run(op, i).await?;
        }
    }

    let mut rows = Vec::new();
    let mut row = |measurement, baseline_name, [audited, baseline]: [Timing; 2]| {
        rows.push(Row { backend, measurement, baseline_name, audited, baseline });
    };
    let pair = [Op::Record, Op::InsertUnchained];
    row(
        "standalone append",
        "unchained insert, own transaction",
        bench.measure(pair, records, BLOCKS, Flow::Sequential).await?,
    );
    let pair = [Op::PutAndAppend, Op::Put];
    row(
        "append in an action's transaction",
        "kv_put alone",
        bench.measure(pair, records, BLOCKS, Flow::Sequential).await?,
    );
    let pair = [Op::Record, Op::InsertUnchained];
    row(
        "4 concurrent standalone appends",
        "4 concurrent unchained inserts",
        bench.measure(pair, records, BLOCKS, Flow::Concurrent).await?,
    );

    let started = Instant::now();
    let checkpoint = bench.auditor.checkpoint(audited, &bench.checkpoint_file).await;
    let checkpoint_us = started.elapsed().as_secs_f64() * 1e6;
    let trail = checkpoint.map_err(text)?.ok_or("no checkpoint was written")?.seq;

    let three = [Op::Verify, Op::VerifyWithFile, Op::ReadPages];
    let [verify, verify_file, read] =
        bench.measure(three, VERIFY_PASSES, VERIFY_PASSES, Flow::Sequential).await?;
    row("verify (per record)", "read pages, unchecked", [verify, read.clone()]);
    row("verify + checkpoint file (per record)", "read pages, unchecked", [verify_file, read]);

    let t = &bench.template;
    let record_bytes = 16
        + [&t.actor, &t.action, &t.target, &t.outcome, &t.details, &t.key_id]
            .iter()
            .map(|s| s.len())
            .sum::<usize>()
        + t.source.as_ref().map_or(0, String::len)
        + t.mac.len();
    let note = format!(
        "{backend}: records of {record_bytes} B; the trail verified intact at {trail} records; \
         one checkpoint signed and written in {checkpoint_us:.0} µs."
    );
    Ok((rows, note))
}

/// How a block's operations run.
#[derive(Debug, Clone, Copy)]
enum Flow {
    /// One after another.
    Sequential,
    /// Spread over [`LANES`] tasks at once.
    Concurrent,
}

impl Bench<'_> {
    /// Time `count` operations per path, in `blocks` alternating blocks;
    /// the path that goes first moves on by one every block.
    async fn measure<const K: usize>(
        &self,
        ops: [Op; K],
        count: usize,
        blocks: usize,
        flow: Flow,
    ) -> R<[Timing; K]> {
        let mut timings: [Timing; K] = std::array::from_fn(|_| Timing::default());
        for b in 0..blocks {
            let range = b * count / blocks..(b + 1) * count / blocks;
            for j in (0..K).map(|k| (k + b) % K) {
                let (Some(&op), Some(timing)) = (ops.get(j), timings.get_mut(j)) else { continue };
                let started = Instant::now();
                let units = match flow {
                    Flow::Sequential => self.sequential(op, range.clone()).await?,
                    Flow::Concurrent => self.lanes(op, range.clone()).await?,
                };
                timing.add(units, started.elapsed());
            }
        }
        Ok(timings)
    }

    async fn sequential(&self, op: Op, range: Range<usize>) -> R<u64> {
        let mut units = 0;
        for i in range {
            units += self.run(op, i).await?;
        }
        Ok(units)
    }

    /// `range` split over four tasks on this thread, each with its own
    /// connection: the database sees four clients.
    async fn lanes(&self, op: Op, range: Range<usize>) -> R<u64> {
        let lane = |l: usize| self.sequential_strided(op, range.clone(), l);
        let (a, b, c, d) = tokio::join!(lane(0), lane(1), lane(2), lane(3));
        Ok(a? + b? + c? + d?)
    }

    async fn sequential_strided(&self, op: Op, range: Range<usize>, lane: usize) -> R<u64> {
        let mut units = 0;
        for i in range.skip(lane).step_by(LANES) {
            units += self.run(op, i).await?;
        }
        Ok(units)
    }

    /// One operation; how many units it handled (1, or the records a pass
    /// over the trail read).
    async fn run(&self, op: Op, i: usize) -> R<u64> {
        match op {
            Op::Record => {
                self.auditor.record(self.audited, &self.ctx, event()).await.map_err(text)?;
                Ok(1)
            }
            Op::InsertUnchained => {
                let mut row = self.template.clone();
                row.seq = self.next_seq.get();
                self.next_seq.set(row.seq + 1);
                row.at = kiln_store::now_millis();
                let mut tx = self.baseline.begin().await.map_err(text)?;
                tx.audit_insert(&row).await.map_err(text)?;
                tx.commit().await.map_err(text)?;
                Ok(1)
            }
            Op::PutAndAppend | Op::Put => {
                let owner = if op == Op::Put { "bench-baseline" } else { "bench-audited" };
                let key = format!("var:{i:07}");
                let put = KvPut {
                    owner,
                    namespace: "kvs",
                    key: &key,
                    value: &self.value,
                    key_id: 0,
                    expires_at: None,
                };
                let mut tx = self.audited.begin().await.map_err(text)?;
                tx.kv_put(put, kiln_store::now_millis()).await.map_err(text)?;
                if op == Op::PutAndAppend {
                    self.auditor.append(&mut tx, &self.ctx, event()).await.map_err(text)?;
                }
                tx.commit().await.map_err(text)?;
                Ok(1)
            }
            Op::Verify | Op::VerifyWithFile => {
                let file = (op == Op::VerifyWithFile).then_some(self.checkpoint_file.as_path());
                self.verify(file).await
            }
            Op::ReadPages => {
                let mut tx = self.audited.begin_read().await.map_err(text)?;
                let (mut after, mut units) = (0, 0);
                loop {
                    let rows = tx.audit_records(after, PAGE).await.map_err(text)?;
                    let Some(last) = rows.last() else { break };
                    after = last.seq;
                    units += rows.len() as u64;
                }
                tx.commit().await.map_err(text)?;
                Ok(units)
            }
        }
    }

    /// A pass of `Auditor::verify`, which must find the trail intact: a
    /// benchmark of a check that failed would measure nothing.
    async fn verify(&self, file: Option<&Path>) -> R<u64> {
        let report = self.auditor.verify(self.audited, file).await.map_err(text)?;
        if let Some(problem) = report.problems.first() {
            return Err(format!("the benchmark's own trail does not verify: {problem}"));
        }
        if file.is_some() && report.file_checkpoints == 0 {
            return Err("verify read no checkpoint from the file".to_owned());
        }
        Ok(report.records)
    }
}

/// Per-unit times of a measurement's blocks.
#[derive(Debug, Clone, Default)]
struct Timing {
    /// µs per unit, one per block.
    blocks: Vec<f64>,
}

impl Timing {
    fn add(&mut self, units: u64, took: Duration) {
        if units > 0 {
            self.blocks.push(took.as_secs_f64() * 1e6 / units as f64);
        }
    }

    /// The median block's µs per unit.
    fn us_per_unit(&self) -> f64 {
        let mut sorted = self.blocks.clone();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }

    fn per_second(&self) -> f64 {
        1e6 / self.us_per_unit()
    }
}
