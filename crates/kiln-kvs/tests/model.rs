//! Random sequences of KVS operations give the same results on every backend
//! as a small in-memory model of Forge's semantics.
//!
//! The model ([`Model`]) is written from the rules stated in `kiln-kvs`'s
//! documentation, not from its code: owners are isolated, expired entries are
//! invisible, `FAIL_IF_EXISTS` fails only on a live entry, `created_at`
//! survives a replacement unless the old entry had expired, queries list by
//! prefix in bytewise key order and page with a cursor, secrets are never
//! listed, batches report per key, and every limit has its error code (only
//! the code is compared, not the message).
//!
//! Every operation runs on the model and on each backend in lockstep, with one
//! shared clock, and each result must equal the model's. Each case uses
//! owners no earlier case used, so the stores are opened once for the whole
//! run; because a case depends only on its own operations (times are relative
//! to the clock at its start), proptest's shrinking re-runs are as faithful
//! as the first run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use kiln_crypto::keys::EnvKeyProvider;
use kiln_kvs::{Clock, Entry, ErrorCode, KeyPolicy, Kvs, Page, ReturnValue, SetOptions, Ttl, TtlUnit};
use kiln_store::Millis;
use kiln_store::testing::each_backend;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

/// Cases per run unless `PROPTEST_CASES` says otherwise: about 10 s on two
/// cores with both backends.
const CASES: u32 = 64;
/// Longest operation sequence in one case.
const MAX_OPS: usize = 60;
/// Owners (installations) per case.
const OWNERS: usize = 3;
/// A query that pages on past this many pages is a failure, not a hang.
const MAX_PAGES: usize = 64;

#[test]
fn random_operations_give_the_models_results_on_every_backend() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let backends = rt.block_on(each_backend()).unwrap();
    let clock = TestClock::new();
    let targets: Vec<(&str, Kvs)> = backends
        .iter()
        .map(|b| (b.name, Kvs::with_clock(b.store.clone(), provider(), clock.clock())))
        .collect();
    let next_case = AtomicU64::new(0);

    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES;
    }
    if std::env::var_os("PROPTEST_MAX_SHRINK_ITERS").is_none() {
        // A failing case stops at its first mismatch, so shrinking is cheap;
        // the default (4 × cases) often leaves dozens of irrelevant steps.
        config.max_shrink_iters = 4096;
    }
    // proptest prints the minimal failing sequence; turn it into a named
    // regression test rather than a seed file.
    config.failure_persistence = None;
    let mut runner = TestRunner::new(config);
    let result = runner.run(&vec(op(), 0..=MAX_OPS), |ops| {
        let case = next_case.fetch_add(1, Ordering::Relaxed);
        rt.block_on(run_case(&targets, &clock, case, &ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// Run `ops` on the model and every backend; fail at the first result that
/// differs, then compare every owner's full listing.
async fn run_case(
    backends: &[(&str, Kvs)],
    clock: &TestClock,
    case: u64,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let owners: Vec<String> = (0..OWNERS).map(|i| format!("case{case}-owner{i}")).collect();
    let mut model = Model::new(clock.clock());
    // Each target's latest interrupted query, for `Op::Resume`.
    let mut open_model = None;
    let mut open_backend = vec![None; backends.len()];
    for (index, op) in ops.iter().enumerate() {
        if let Op::Advance { secs } = op {
            clock.advance_secs(*secs);
            continue;
        }
        let want = run_op(&mut Target::Model(&mut model), &owners, &mut open_model, op).await;
        for ((name, kvs), open) in backends.iter().zip(&mut open_backend) {
            let got = run_op(&mut Target::Kvs(kvs), &owners, open, op).await;
            if got != want {
                return Err(TestCaseError::fail(mismatch(name, &format!("op #{index} {op:?}"), &got, &want)));
            }
        }
    }
    for owner in &owners {
        let want = pages(&mut Target::Model(&mut model), owner, "", None, Some(100), true).await;
        for (name, kvs) in backends {
            let got = pages(&mut Target::Kvs(kvs), owner, "", None, Some(100), true).await;
            if got.0 != want.0 {
                let what = format!("final listing of {owner} after {} ops", ops.len());
                return Err(TestCaseError::fail(mismatch(name, &what, &got.0, &want.0)));
            }
        }
    }
    Ok(())
}

// ------------------------------------------------------------ operations

/// One step of a case. Keys, prefixes and values are indexes into small
/// tables, so that they collide often and a failing sequence prints short.
#[derive(Debug, Clone)]
enum Op {
    Get {
        owner: usize,
        key: Key,
    },
    Set {
        owner: usize,
        key: Key,
        value: Val,
        ttl: Option<Ttl>,
        policy: KeyPolicy,
        ret: Option<ReturnValue>,
    },
    Delete {
        owner: usize,
        key: Key,
    },
    /// A query's first page (from `cursor`, if not a fresh start); with
    /// `to_end`, every following page too, else the cursor is kept for
    /// [`Op::Resume`] so that other operations run between pages.
    Query {
        owner: usize,
        prefix: Prefix,
        limit: Option<u32>,
        cursor: Option<&'static str>,
        to_end: bool,
    },
    /// The next page of the latest interrupted query, if any.
    Resume,
    GetSecret {
        owner: usize,
        key: Key,
    },
    SetSecret {
        owner: usize,
        key: Key,
        value: Val,
    },
    DeleteSecret {
        owner: usize,
        key: Key,
    },
    BatchGet {
        owner: usize,
        keys: Vec<Key>,
    },
    BatchSet {
        owner: usize,
        items: Vec<(Key, Val)>,
    },
    BatchDelete {
        owner: usize,
        keys: Vec<Key>,
    },
    Advance {
        secs: i64,
    },
    /// Deleting expired entries must change no visible result.
    Sweep {
        limit: u32,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (owner(), key(), val(), ttl(), policy(), ret()).prop_map(
            |(owner, key, value, ttl, policy, ret)| Op::Set { owner, key, value, ttl, policy, ret }
        ),
        4 => (owner(), key()).prop_map(|(owner, key)| Op::Get { owner, key }),
        2 => (owner(), key()).prop_map(|(owner, key)| Op::Delete { owner, key }),
        5 => (owner(), prefix(), limit(), bad_cursor(), any::<bool>()).prop_map(
            |(owner, prefix, limit, cursor, to_end)| Op::Query { owner, prefix, limit, cursor, to_end }
        ),
        3 => Just(Op::Resume),
        // Secrets mostly use the first keys, so that reads find them.
        1 => (owner(), secret_key()).prop_map(|(owner, key)| Op::GetSecret { owner, key }),
        1 => (owner(), secret_key(), val()).prop_map(|(owner, key, value)| Op::SetSecret { owner, key, value }),
        1 => (owner(), secret_key()).prop_map(|(owner, key)| Op::DeleteSecret { owner, key }),
        1 => (owner(), batch(key)).prop_map(|(owner, keys)| Op::BatchGet { owner, keys }),
        3 => (owner(), batch(|| (key(), val()))).prop_map(|(owner, items)| Op::BatchSet { owner, items }),
        1 => (owner(), batch(key)).prop_map(|(owner, keys)| Op::BatchDelete { owner, keys }),
        // Mostly short steps, so entries with a TTL live through a few ops;
        // the boundaries of the TTLs `ttl` gives are among them.
        3 => prop_oneof![
            4 => select(vec![1, 2, 9, 10, 59, 60]),
            1 => select(vec![3600, 86_400, 365 * 86_400, 366 * 86_400]),
        ]
        .prop_map(|secs| Op::Advance { secs }),
        1 => select(vec![1, 3, 1000]).prop_map(|limit| Op::Sweep { limit }),
    ]
}

/// The first owner most often, so that its entries pile up.
fn owner() -> impl Strategy<Value = usize> {
    prop_oneof![4 => Just(0), 1 => 1..OWNERS]
}

/// Mostly a few keys, sometimes the limit (25) or one past it.
fn batch<S: Strategy>(item: impl Fn() -> S) -> impl Strategy<Value = Vec<S::Value>> {
    prop_oneof![6 => vec(item(), 0..=8), 1 => vec(item(), 25..=26)]
}

fn ttl() -> impl Strategy<Value = Option<Ttl>> {
    use TtlUnit::*;
    let t = |value, unit| Ttl { value, unit };
    prop_oneof![
        6 => Just(None),
        3 => select(vec![
            t(1, Seconds), t(2, Seconds), t(10, Seconds), t(60, Seconds), t(1, Minutes),
            t(1, Hours), t(1, Days), t(8760, Hours), t(365, Days),
        ]).prop_map(Some),
        1 => select(vec![
            t(0, Seconds), t(0, Days), t(366, Days), t(8761, Hours), t(525_601, Minutes),
            t(u64::MAX, Seconds), t(u64::MAX / 2, Days),
        ]).prop_map(Some),
    ]
}

fn policy() -> impl Strategy<Value = KeyPolicy> {
    prop_oneof![2 => Just(KeyPolicy::Override), 1 => Just(KeyPolicy::FailIfExists)]
}

fn ret() -> impl Strategy<Value = Option<ReturnValue>> {
    prop_oneof![Just(None), Just(Some(ReturnValue::Previous)), Just(Some(ReturnValue::Latest))]
}

fn limit() -> impl Strategy<Value = Option<u32>> {
    prop_oneof![
        5 => select(vec![None, Some(1), Some(2), Some(2), Some(3), Some(100)]),
        1 => select(vec![Some(0), Some(101)]),
    ]
}

/// Cursors no page ever hands out.
fn bad_cursor() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        9 => Just(None),
        // Not base64; nothing; base64 of "a/b" (not a key); of 0xFF (not UTF-8).
        1 => select(vec!["%%%", "", "YS9i", "_w"]).prop_map(Some),
    ]
}

/// A key from [`Key::text`]'s table: the first six most often.
#[derive(Clone, Copy)]
struct Key(u8);

const KEYS: u8 = 20;

fn key() -> impl Strategy<Value = Key> {
    prop_oneof![4 => 0..6u8, 2 => 6..12u8, 1 => 12..KEYS].prop_map(Key)
}

fn secret_key() -> impl Strategy<Value = Key> {
    prop_oneof![4 => (0..3u8).prop_map(Key), 1 => key()]
}

impl Key {
    fn text(self) -> String {
        match self.0 {
            0 => "a".into(),
            1 => "b".into(),
            2 => "a:1".into(),
            3 => "a:2".into(),
            4 => "a b".into(),
            5 => "A".into(),
            // Leading space: allowed, the key is not only whitespace.
            6 => " a".into(),
            // NBSP and BOM are JavaScript whitespace; NBSP sorts after
            // every ASCII byte.
            7 => "a\u{a0}".into(),
            8 => "#_.-".into(),
            9 => "a\u{feff}".into(),
            10 => "k".repeat(500),
            // 500 characters, 1498 bytes: the limit counts characters.
            11 => format!("a{}", "\u{3000}".repeat(499)),
            // Invalid from here on.
            12 => String::new(),
            13 => "   ".into(),
            14 => "\u{3000}\t".into(),
            15 => "a/b".into(),
            16 => "é".into(),
            // NEL is Unicode whitespace but not JavaScript's `\s`.
            17 => "a\u{85}".into(),
            18 => "a\0".into(),
            _ => "k".repeat(501),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", abbreviate(&self.text()))
    }
}

/// A query prefix from [`Prefix::text`]'s table.
#[derive(Clone, Copy)]
struct Prefix(u8);

fn prefix() -> impl Strategy<Value = Prefix> {
    prop_oneof![3 => 0..2u8, 2 => 2..6u8, 1 => 6..12u8, 1 => 12..16u8].prop_map(Prefix)
}

impl Prefix {
    fn text(self) -> String {
        match self.0 {
            0 => String::new(),
            1 => "a".into(),
            2 => "a:".into(),
            3 => "A".into(),
            4 => "a ".into(),
            5 => "b".into(),
            6 => " ".into(),
            7 => "k".into(),
            8 => "#".into(),
            9 => "a\u{a0}".into(),
            10 => "a\u{3000}".into(),
            11 => "k".repeat(500),
            // Invalid from here on: no key begins with them.
            12 => "a/".into(),
            13 => "é".into(),
            14 => "a\u{85}".into(),
            _ => "k".repeat(501),
        }
    }
}

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", abbreviate(&self.text()))
    }
}

/// A value to store, built by [`Val::json`].
#[derive(Debug, Clone, Copy)]
enum Val {
    Int(i64),
    Str(&'static str),
    Bool(bool),
    Float,
    List,
    Object(i64),
    EmptyObject,
    /// Objects and arrays nested this deep (the limit is 31).
    Deep(usize),
    Null,
    /// Exactly the largest value (240 KiB as JSON), one byte over, and the
    /// same with a string whose JSON escapes double its length.
    Largest,
    TooLarge,
    LargestEscaped,
    TooLargeEscaped,
}

fn val() -> impl Strategy<Value = Val> {
    prop_oneof![
        12 => prop_oneof![
            (0..4i64).prop_map(Val::Int),
            select(vec!["x", "y", ""]).prop_map(Val::Str),
            any::<bool>().prop_map(Val::Bool),
            Just(Val::Float),
            Just(Val::List),
            (0..3i64).prop_map(Val::Object),
            Just(Val::EmptyObject),
        ],
        1 => select(vec![
            Val::Deep(31), Val::Deep(32), Val::Null, Val::Largest, Val::TooLarge,
            Val::LargestEscaped, Val::TooLargeEscaped,
        ]),
    ]
}

impl Val {
    fn json(self) -> Value {
        const MAX: usize = 240 * 1024;
        match self {
            Val::Int(i) => json!(i),
            Val::Str(s) => json!(s),
            Val::Bool(b) => json!(b),
            Val::Float => json!(0.1),
            Val::List => json!([1, "two", {"three": 3.5}]),
            Val::Object(i) => json!({"n": i, "tags": ["t"], "nested": {"ok": true}}),
            Val::EmptyObject => json!({}),
            Val::Deep(levels) => {
                let mut v = json!(1);
                for level in 0..levels {
                    v = if level % 2 == 0 { json!([v]) } else { json!({ "d": v }) };
                }
                v
            }
            Val::Null => Value::Null,
            Val::Largest => json!("x".repeat(MAX - 2)),
            Val::TooLarge => json!("x".repeat(MAX - 1)),
            // `"` is written `\"`: two bytes each, plus the two quotes.
            Val::LargestEscaped => json!("\"".repeat((MAX - 2) / 2)),
            Val::TooLargeEscaped => json!("\"".repeat((MAX - 2) / 2 + 1)),
        }
    }
}

// ------------------------------------------------------------ one op, any target

/// What an operation returned, in a form the model and a backend can both
/// give: error codes only, and for pages whether a cursor came back (cursors
/// are opaque).
#[derive(Debug, PartialEq)]
enum Outcome {
    Nothing,
    Entry(Code<Option<Entry>>),
    Done(Code<()>),
    Secret(Code<Option<Value>>),
    Pages(Vec<Code<(Vec<Entry>, bool)>>),
    Got(PerKey<Entry>),
    Keys(PerKey<String>),
}

type Code<T> = Result<T, ErrorCode>;

/// A batch's outcome: what succeeded, and the keys that failed with their
/// codes.
type PerKey<T> = Code<(Vec<T>, Vec<(String, ErrorCode)>)>;

/// A query stopped after a page that had a cursor.
#[derive(Debug, Clone)]
struct OpenQuery {
    owner: usize,
    prefix: String,
    limit: Option<u32>,
    cursor: String,
}

/// The same driver runs every op on the model and on each backend, so the
/// only difference between them is [`Target`]'s methods.
async fn run_op(t: &mut Target<'_>, owners: &[String], open: &mut Option<OpenQuery>, op: &Op) -> Outcome {
    match op {
        Op::Get { owner, key } => Outcome::Entry(t.get(&owners[*owner], &key.text()).await),
        Op::Set { owner, key, value, ttl, policy, ret } => {
            let options = SetOptions { ttl: *ttl, key_policy: *policy, return_value: *ret };
            Outcome::Entry(t.set(&owners[*owner], &key.text(), &value.json(), options).await)
        }
        Op::Delete { owner, key } => Outcome::Done(t.delete(&owners[*owner], &key.text()).await),
        Op::Query { owner, prefix, limit, cursor, to_end } => {
            let prefix = prefix.text();
            let (results, last) = pages(t, &owners[*owner], &prefix, *cursor, *limit, *to_end).await;
            if let Some(cursor) = last {
                *open = Some(OpenQuery { owner: *owner, prefix, limit: *limit, cursor });
            }
            Outcome::Pages(results)
        }
        Op::Resume => match open.take() {
            None => Outcome::Nothing,
            Some(q) => {
                let (results, last) =
                    pages(t, &owners[q.owner], &q.prefix, Some(&q.cursor), q.limit, false).await;
                *open = last.map(|cursor| OpenQuery { cursor, ..q });
                Outcome::Pages(results)
            }
        },
        Op::GetSecret { owner, key } => Outcome::Secret(t.get_secret(&owners[*owner], &key.text()).await),
        Op::SetSecret { owner, key, value } => {
            Outcome::Done(t.set_secret(&owners[*owner], &key.text(), &value.json()).await)
        }
        Op::DeleteSecret { owner, key } => Outcome::Done(t.delete_secret(&owners[*owner], &key.text()).await),
        Op::BatchGet { owner, keys } => {
            let keys: Vec<String> = keys.iter().map(|k| k.text()).collect();
            Outcome::Got(t.batch_get(&owners[*owner], &keys).await)
        }
        Op::BatchSet { owner, items } => {
            let items: Vec<(String, Value)> = items.iter().map(|(k, v)| (k.text(), v.json())).collect();
            Outcome::Keys(t.batch_set(&owners[*owner], &items).await)
        }
        Op::BatchDelete { owner, keys } => {
            let keys: Vec<String> = keys.iter().map(|k| k.text()).collect();
            Outcome::Keys(t.batch_delete(&owners[*owner], &keys).await)
        }
        Op::Sweep { limit } => Outcome::Done(t.sweep(*limit).await),
        Op::Advance { .. } => Outcome::Nothing,
    }
}

/// A query's first page and, with `to_end`, the rest; also the cursor the
/// last page returned, if it was not the end.
async fn pages(
    t: &mut Target<'_>,
    owner: &str,
    prefix: &str,
    cursor: Option<&str>,
    limit: Option<u32>,
    to_end: bool,
) -> (Vec<Code<(Vec<Entry>, bool)>>, Option<String>) {
    let mut out = Vec::new();
    let mut cursor = cursor.map(str::to_owned);
    loop {
        let next = match t.query(owner, prefix, cursor.as_deref(), limit).await {
            Ok(page) => {
                out.push(Ok((page.results, page.next_cursor.is_some())));
                page.next_cursor
            }
            Err(code) => {
                out.push(Err(code));
                None
            }
        };
        if next.is_none() || !to_end || out.len() >= MAX_PAGES {
            return (out, next);
        }
        cursor = next;
    }
}

enum Target<'a> {
    Model(&'a mut Model),
    Kvs(&'a Kvs),
}

impl Target<'_> {
    async fn get(&mut self, owner: &str, key: &str) -> Code<Option<Entry>> {
        match self {
            Target::Model(m) => m.get(owner, Space::Kvs, key),
            Target::Kvs(k) => k.get(owner, key).await.map_err(|e| e.code),
        }
    }

    async fn set(
        &mut self,
        owner: &str,
        key: &str,
        value: &Value,
        options: SetOptions,
    ) -> Code<Option<Entry>> {
        match self {
            Target::Model(m) => m.set(owner, Space::Kvs, key, value, options),
            Target::Kvs(k) => k.set(owner, key, value, options).await.map_err(|e| e.code),
        }
    }

    async fn delete(&mut self, owner: &str, key: &str) -> Code<()> {
        match self {
            Target::Model(m) => m.delete(owner, Space::Kvs, key),
            Target::Kvs(k) => k.delete(owner, key).await.map_err(|e| e.code),
        }
    }

    async fn query(
        &mut self,
        owner: &str,
        prefix: &str,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Code<Page> {
        match self {
            Target::Model(m) => m.query(owner, prefix, cursor, limit),
            Target::Kvs(k) => k.query(owner, prefix, cursor, limit).await.map_err(|e| e.code),
        }
    }

    async fn get_secret(&mut self, owner: &str, key: &str) -> Code<Option<Value>> {
        match self {
            Target::Model(m) => m.get(owner, Space::Secret, key).map(|e| e.map(|e| e.value)),
            Target::Kvs(k) => k.get_secret(owner, key).await.map_err(|e| e.code),
        }
    }

    async fn set_secret(&mut self, owner: &str, key: &str, value: &Value) -> Code<()> {
        match self {
            Target::Model(m) => m.set(owner, Space::Secret, key, value, SetOptions::default()).map(drop),
            Target::Kvs(k) => k.set_secret(owner, key, value).await.map_err(|e| e.code),
        }
    }

    async fn delete_secret(&mut self, owner: &str, key: &str) -> Code<()> {
        match self {
            Target::Model(m) => m.delete(owner, Space::Secret, key),
            Target::Kvs(k) => k.delete_secret(owner, key).await.map_err(|e| e.code),
        }
    }

    async fn batch_get(&mut self, owner: &str, keys: &[String]) -> PerKey<Entry> {
        match self {
            Target::Model(m) => m.batch_get(owner, keys),
            Target::Kvs(k) => {
                k.batch_get(owner, keys).await.map(|b| (b.succeeded, codes(b.failed))).map_err(|e| e.code)
            }
        }
    }

    async fn batch_set(&mut self, owner: &str, items: &[(String, Value)]) -> PerKey<String> {
        match self {
            Target::Model(m) => m.batch_set(owner, items),
            Target::Kvs(k) => {
                k.batch_set(owner, items).await.map(|b| (b.succeeded, codes(b.failed))).map_err(|e| e.code)
            }
        }
    }

    async fn batch_delete(&mut self, owner: &str, keys: &[String]) -> PerKey<String> {
        match self {
            Target::Model(m) => m.batch_delete(owner, keys),
            Target::Kvs(k) => {
                k.batch_delete(owner, keys).await.map(|b| (b.succeeded, codes(b.failed))).map_err(|e| e.code)
            }
        }
    }

    /// How many were swept is not compared: the stores are shared by every
    /// case, so it counts other cases' expired entries too.
    async fn sweep(&mut self, limit: u32) -> Code<()> {
        match self {
            Target::Model(_) => Ok(()),
            Target::Kvs(k) => k.sweep(limit).await.map(drop).map_err(|e| e.code),
        }
    }
}

fn codes(failed: Vec<(String, kiln_kvs::KvsError)>) -> Vec<(String, ErrorCode)> {
    failed.into_iter().map(|(k, e)| (k, e.code)).collect()
}

// ------------------------------------------------------------ the model

/// Forge's KVS as plain maps, one per owner and namespace.
struct Model {
    clock: Clock,
    spaces: BTreeMap<(String, Space), BTreeMap<String, Stored>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Space {
    Kvs,
    Secret,
}

#[derive(Debug, Clone)]
struct Stored {
    value: Value,
    expires_at: Option<Millis>,
    created_at: Millis,
    updated_at: Millis,
}

impl Stored {
    /// An entry is gone from the instant it expires.
    fn live(&self, now: Millis) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    fn entry(&self, key: &str) -> Entry {
        Entry {
            key: key.to_owned(),
            value: self.value.clone(),
            expire_time: self.expires_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// Model cursors start with a character no key has, so that a cursor the
/// model did not hand out is told apart.
const MODEL_CURSOR: char = '\u{1}';

impl Model {
    fn new(clock: Clock) -> Self {
        Model { clock, spaces: BTreeMap::new() }
    }

    fn now(&self) -> Millis {
        (self.clock)()
    }

    fn space(&self, owner: &str, space: Space) -> Option<&BTreeMap<String, Stored>> {
        self.spaces.get(&(owner.to_owned(), space))
    }

    fn live(&self, owner: &str, space: Space, key: &str) -> Option<Entry> {
        let now = self.now();
        self.space(owner, space)?.get(key).filter(|s| s.live(now)).map(|s| s.entry(key))
    }

    fn get(&self, owner: &str, space: Space, key: &str) -> Code<Option<Entry>> {
        model_check_key(key)?;
        Ok(self.live(owner, space, key))
    }

    fn set(
        &mut self,
        owner: &str,
        space: Space,
        key: &str,
        value: &Value,
        options: SetOptions,
    ) -> Code<Option<Entry>> {
        model_check_key(key)?;
        model_check_value(value)?;
        let ttl = options.ttl.map(ttl_millis).transpose()?;
        let now = self.now();
        let previous = self.live(owner, space, key);
        if options.key_policy == KeyPolicy::FailIfExists && previous.is_some() {
            return Err(ErrorCode::KeyAlreadyExists);
        }
        let stored = Stored {
            value: value.clone(),
            expires_at: ttl.map(|ms| now + ms),
            // An expired entry is as good as absent: the key is created anew.
            created_at: previous.as_ref().map_or(now, |p| p.created_at),
            updated_at: now,
        };
        let latest = stored.entry(key);
        self.spaces.entry((owner.to_owned(), space)).or_default().insert(key.to_owned(), stored);
        Ok(match options.return_value {
            None => None,
            Some(ReturnValue::Previous) => previous,
            Some(ReturnValue::Latest) => Some(latest),
        })
    }

    fn delete(&mut self, owner: &str, space: Space, key: &str) -> Code<()> {
        model_check_key(key)?;
        if let Some(entries) = self.spaces.get_mut(&(owner.to_owned(), space)) {
            entries.remove(key);
        }
        Ok(())
    }

    /// A cursor is a position in key order: the next page starts after the
    /// last key handed out, whatever changed in between.
    ///
    /// When several arguments are wrong, which code wins is not documented;
    /// the model checks limit, prefix, then cursor, as `set` checks key,
    /// value, then TTL.
    fn query(&self, owner: &str, prefix: &str, cursor: Option<&str>, limit: Option<u32>) -> Code<Page> {
        let limit = limit.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(ErrorCode::InvalidLimit);
        }
        // A prefix must be able to begin some valid key.
        if prefix.chars().count() > 500 || !prefix.chars().all(model_key_char) {
            return Err(ErrorCode::InvalidKey);
        }
        let after = match cursor {
            None => None,
            Some(c) => Some(c.strip_prefix(MODEL_CURSOR).ok_or(ErrorCode::InvalidCursor)?),
        };
        let now = self.now();
        let empty = BTreeMap::new();
        // `String`'s order is bytewise, as Forge's is.
        let mut matching =
            self.space(owner, Space::Kvs).unwrap_or(&empty).iter().filter(|(k, s)| {
                k.starts_with(prefix) && after.is_none_or(|a| k.as_str() > a) && s.live(now)
            });
        let results: Vec<Entry> = matching.by_ref().take(limit as usize).map(|(k, s)| s.entry(k)).collect();
        let more = matching.next().is_some();
        let next_cursor = match results.last() {
            Some(last) if more => Some(format!("{MODEL_CURSOR}{}", last.key)),
            _ => None,
        };
        Ok(Page { results, next_cursor })
    }

    fn batch_get(&self, owner: &str, keys: &[String]) -> PerKey<Entry> {
        model_check_batch(keys.len())?;
        let (mut found, mut failed) = (Vec::new(), Vec::new());
        for key in keys {
            match self.get(owner, Space::Kvs, key) {
                Ok(Some(entry)) => found.push(entry),
                Ok(None) => {}
                Err(code) => failed.push((key.clone(), code)),
            }
        }
        Ok((found, failed))
    }

    fn batch_set(&mut self, owner: &str, items: &[(String, Value)]) -> PerKey<String> {
        model_check_batch(items.len())?;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for (key, value) in items {
            match self.set(owner, Space::Kvs, key, value, SetOptions::default()) {
                Ok(_) => done.push(key.clone()),
                Err(code) => failed.push((key.clone(), code)),
            }
        }
        Ok((done, failed))
    }

    fn batch_delete(&mut self, owner: &str, keys: &[String]) -> PerKey<String> {
        model_check_batch(keys.len())?;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for key in keys {
            match self.delete(owner, Space::Kvs, key) {
                Ok(()) => done.push(key.clone()),
                Err(code) => failed.push((key.clone(), code)),
            }
        }
        Ok((done, failed))
    }
}

/// JavaScript's `\s`: the ECMAScript WhiteSpace (tab, VT, FF, ZWNBSP and
/// every `Zs` space) and LineTerminator (LF, CR, LS, PS) code points.
fn model_js_space(c: char) -> bool {
    const SPACES: &[char] = &[
        '\t', '\u{b}', '\u{c}', '\u{feff}', '\n', '\r', '\u{2028}', '\u{2029}', ' ', '\u{a0}', '\u{1680}',
        '\u{202f}', '\u{205f}', '\u{3000}',
    ];
    SPACES.contains(&c) || ('\u{2000}'..='\u{200a}').contains(&c)
}

/// Forge's key pattern, `[a-zA-Z0-9:._\s-#]`.
fn model_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ":._-#".contains(c) || model_js_space(c)
}

/// Too long is its own code; otherwise 1+ allowed characters, not all
/// whitespace. (Which code wins for a key both too long and malformed is
/// not documented; no generated key is both.)
fn model_check_key(key: &str) -> Code<()> {
    if key.chars().count() > 500 {
        return Err(ErrorCode::KeyTooLong);
    }
    if key.is_empty() || key.chars().all(model_js_space) || !key.chars().all(model_key_char) {
        return Err(ErrorCode::InvalidKey);
    }
    Ok(())
}

/// Not null, at most 31 levels of objects and arrays, at most 240 KiB as
/// JSON text, checked in that order.
fn model_check_value(value: &Value) -> Code<()> {
    fn levels(v: &Value) -> usize {
        match v {
            Value::Array(items) => 1 + items.iter().map(levels).max().unwrap_or(0),
            Value::Object(map) => 1 + map.values().map(levels).max().unwrap_or(0),
            _ => 0,
        }
    }
    if value.is_null() {
        return Err(ErrorCode::InvalidValue);
    }
    if levels(value) > 31 {
        return Err(ErrorCode::MaxDepth);
    }
    if serde_json::to_string(value).unwrap().len() > 240 * 1024 {
        return Err(ErrorCode::MaxSize);
    }
    Ok(())
}

/// Positive and at most a year (365 days), in milliseconds.
fn ttl_millis(ttl: Ttl) -> Code<Millis> {
    let per: u64 = match ttl.unit {
        TtlUnit::Seconds => 1,
        TtlUnit::Minutes => 60,
        TtlUnit::Hours => 60 * 60,
        TtlUnit::Days => 24 * 60 * 60,
    };
    match ttl.value.checked_mul(per) {
        Some(secs) if secs > 0 && secs <= 365 * 24 * 60 * 60 => Ok(Millis::try_from(secs * 1000).unwrap()),
        _ => Err(ErrorCode::InvalidTtl),
    }
}

fn model_check_batch(n: usize) -> Code<()> {
    if n > 25 { Err(ErrorCode::TooManyKeys) } else { Ok(()) }
}

// ------------------------------------------------------------ helpers

fn provider() -> Arc<EnvKeyProvider> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    Arc::new(EnvKeyProvider::from_value(&format!("k1:{key}")).unwrap())
}

/// One clock for the model and every backend; it only moves forward, so
/// later cases never see earlier ones' times.
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new() -> Self {
        TestClock(Arc::new(AtomicI64::new(1_800_000_000_000)))
    }

    fn clock(&self) -> Clock {
        let t = self.0.clone();
        Arc::new(move || t.load(Ordering::SeqCst))
    }

    fn advance_secs(&self, secs: i64) {
        self.0.fetch_add(secs * 1000, Ordering::SeqCst);
    }
}

/// The failure message: backend, operation, both results. Results holding
/// a 240 KiB value are cut down to the part around the first difference.
fn mismatch(backend: &str, what: &str, got: &impl fmt::Debug, want: &impl fmt::Debug) -> String {
    let (got, want) = (format!("{got:?}"), format!("{want:?}"));
    const WHOLE: usize = 4000;
    if got.len() <= WHOLE && want.len() <= WHOLE {
        return format!("{backend} differs from the model at {what}:\n  {backend}: {got}\n  model: {want}");
    }
    let at = got.bytes().zip(want.bytes()).take_while(|(a, b)| a == b).count();
    let window = |s: &str| {
        let start = s.floor_char_boundary(at.saturating_sub(300));
        let end = s.ceil_char_boundary((at + 300).min(s.len()));
        format!("…{}…", &s[start..end])
    };
    format!(
        "{backend} differs from the model at {what} (from byte {at} of the results):\n  {backend}: {}\n  model: {}",
        window(&got),
        window(&want)
    )
}

/// A key or prefix as Rust would write it, long runs shortened.
fn abbreviate(s: &str) -> String {
    let n = s.chars().count();
    match s.chars().last() {
        Some(last) if n > 20 => format!("{:?}+{last:?}×{}", s.chars().next().unwrap_or(last), n - 1),
        _ => format!("{s:?}"),
    }
}
