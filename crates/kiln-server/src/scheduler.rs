//! Scheduled triggers: each installation's `scheduledTrigger` modules run
//! once per interval, on whichever node claims the run first.
//!
//! - **Slots.** An interval (`fiveMinute`, `hour`, `day`, `week`) is cut
//!   into slots aligned on the Unix epoch. Each (installation, module) pair
//!   has a stable offset inside the interval, from SHA-256 of the
//!   installation's public id and the module key, so one site's runs are
//!   spread over the interval (as Forge spreads them) and every node
//!   computes the same due time. A slot's run is due at slot start plus
//!   offset.
//! - **Once across nodes.** A due run is claimed in `scheduled_runs` (one
//!   row per installation, module and slot; the insert that succeeds holds
//!   a lease). The lease outlasts the function's deadline, so a live run is
//!   never taken over; a node that dies mid-run leaves a lease that runs
//!   out, and another node runs the slot again (at most
//!   [`MAX_ATTEMPTS`] times in all). So, as in Forge, a run may happen
//!   twice, but only when a node died during it.
//! - **Missed runs.** Only the latest slot whose due time has passed is
//!   ever considered. After downtime (every node stopped, or the store
//!   unreachable) each module runs once, for the latest missed slot, and
//!   then keeps its schedule: never a burst of the runs that were missed.
//!   Slots that came due before the installation existed are not missed
//!   runs. A run whose function fails is not retried (Forge does not
//!   retry scheduled triggers either); its outcome is recorded.
//! - **The call.** Forge's shape: no user (no `principal`), payload
//!   `{context: {cloudId, moduleKey}, contextToken}` (`cloudId` when the
//!   operator's settings name the site's cloud id; `contextToken` an opaque
//!   value with no meaning to the app), the function's `timeoutSeconds` as
//!   its deadline. The return value is ignored.
//! - **Time.** Read from a [`Clock`]: the system clock in production; a
//!   [`TestClock`] in tests and, only with `insecure_test_clock = true` in
//!   `[scheduler]`, in `kiln serve`, where [`insecure_test_clock_router`]
//!   lets a loopback client move it. While it is on, production
//!   installations' scheduled triggers do not run at all.
//!
//! Not supported (each is logged when met, never silently skipped):
//! `endpoint` targets (Forge Remote) are not invoked. The `appIsLicensed`
//! filter is treated as met: Kiln has no licensing, so every installation
//! counts as licensed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use kiln_crypto::Sha256;
use kiln_manifest::{ScheduledTrigger, Target};
use kiln_store::{InstallationRecord, Millis, RunClaim, RunSlot, Store, VersionRecord};
use kiln_types::SiteUrl;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::alerting::ConfigError;
use crate::runner::{self, Call, Execute};

/// Times a run is started in all before it is given up: the first run and
/// two takeovers after its node died. A function that kills its node every
/// time must not take the cluster down one node at a time.
pub const MAX_ATTEMPTS: i64 = 3;

/// What a lease adds to the function's own deadline, so a run still going
/// is never taken over by another node.
pub const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Finished runs are kept this long (past the longest interval, a week, so
/// the latest run of every module stays visible), then pruned.
pub const RETAIN_FINISHED: Duration = Duration::from_secs(8 * 24 * 3600);

/// How often a node prunes finished runs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Most runs a node has going at once; more due runs wait for the next
/// tick (and may be claimed by another node meanwhile).
pub const DEFAULT_MAX_CONCURRENT: usize = 16;

/// Largest step `POST /_kiln/test/clock` takes at once.
pub const MAX_TEST_CLOCK_STEP_SECONDS: i64 = 31 * 24 * 3600;

/// Where the scheduler reads the time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        kiln_store::now_millis()
    }
}

/// A clock that stands still until told to move: tests, and `kiln serve`
/// with `insecure_test_clock` on.
#[derive(Debug)]
pub struct TestClock {
    now: AtomicI64,
}

impl TestClock {
    pub fn new(start: Millis) -> Self {
        TestClock { now: AtomicI64::new(start) }
    }

    /// Starting at the system clock's time.
    pub fn starting_now() -> Self {
        TestClock::new(kiln_store::now_millis())
    }

    /// Move forward (never back: slots already run would come due again).
    pub fn advance(&self, by: Duration) -> Millis {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.now.fetch_add(ms, Ordering::SeqCst).saturating_add(ms)
    }

    pub fn set(&self, at: Millis) {
        self.now.fetch_max(at, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }
}

/// How a node schedules.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Names this node in leases; unique per running process.
    pub node_id: String,
    /// The shortest lease a run gets; a run's lease is at least its
    /// function's deadline plus [`LEASE_MARGIN`].
    pub lease: Duration,
    /// How often the node looks for due runs.
    pub tick: Duration,
    pub max_concurrent: usize,
    /// How long a stopping node waits for its runs before it abandons
    /// them (their leases run out and another node runs them).
    pub drain: Duration,
    /// Each site's cloud id, for the payload's `context.cloudId`.
    pub cloud_ids: BTreeMap<SiteUrl, String>,
    /// The clock is the test clock: production installations' triggers
    /// are then not run at all (anyone on the host could make them run).
    pub insecure_test_clock: bool,
}

impl Settings {
    /// Defaults for a node called `node_id`.
    pub fn new(node_id: impl Into<String>) -> Self {
        Settings {
            node_id: node_id.into(),
            lease: Duration::from_secs(60),
            tick: Duration::from_secs(5),
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            drain: Duration::from_secs(30),
            cloud_ids: BTreeMap::new(),
            insecure_test_clock: false,
        }
    }
}

/// `[scheduler]` in the settings file (every key optional):
///
/// ```toml
/// [scheduler]
/// enabled = true                # false: this node runs no scheduled triggers
/// node_id = "kiln-a"            # default: host name, process id and a random suffix
/// lease_seconds = 60
/// tick_seconds = 5
/// max_concurrent = 16
/// insecure_test_clock = false   # true: time stands still until POST /_kiln/test/clock moves it
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerSection {
    pub enabled: Option<bool>,
    pub node_id: Option<String>,
    pub lease_seconds: Option<u64>,
    pub tick_seconds: Option<u64>,
    pub max_concurrent: Option<usize>,
    /// Never in production: anyone on this host can make scheduled runs
    /// happen by moving the clock.
    pub insecure_test_clock: Option<bool>,
}

/// What `[scheduler]` decides.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub enabled: bool,
    pub settings: Settings,
    /// Set when `insecure_test_clock` is on: the clock to give [`spawn`]
    /// and [`insecure_test_clock_router`].
    pub insecure_test_clock: Option<Arc<TestClock>>,
}

impl SchedulerConfig {
    /// The defaults, as with no `[scheduler]` section.
    pub fn defaults() -> Self {
        SchedulerConfig::from_section(SchedulerSection::default()).unwrap_or_else(|_| SchedulerConfig {
            enabled: true,
            settings: Settings::new(default_node_id()),
            insecure_test_clock: None,
        })
    }

    /// Read `[scheduler]` from the settings file at `path`.
    pub fn load(path: &Path) -> Result<SchedulerConfig, ConfigError> {
        let fail = |message: String| ConfigError { path: path.display().to_string(), message };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        SchedulerConfig::parse(&text).map_err(fail)
    }

    /// Only `[scheduler]` is read here, its keys checked; the file's other
    /// sections (and unknown top-level keys) are their loaders' to judge.
    pub fn parse(text: &str) -> Result<SchedulerConfig, String> {
        let mut file: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let section = match file.remove("scheduler") {
            Some(value) => {
                SchedulerSection::deserialize(value).map_err(|e| format!("[scheduler]: {}", e.message()))?
            }
            None => SchedulerSection::default(),
        };
        SchedulerConfig::from_section(section)
    }

    fn from_section(s: SchedulerSection) -> Result<SchedulerConfig, String> {
        let mut settings = Settings::new(s.node_id.clone().unwrap_or_else(default_node_id));
        if settings.node_id.is_empty() || settings.node_id.len() > 200 {
            return Err("scheduler.node_id must be 1 to 200 characters".into());
        }
        if let Some(secs) = s.lease_seconds {
            if !(10..=3600).contains(&secs) {
                return Err("scheduler.lease_seconds must be between 10 and 3600".into());
            }
            settings.lease = Duration::from_secs(secs);
        }
        if let Some(secs) = s.tick_seconds {
            if !(1..=60).contains(&secs) {
                return Err("scheduler.tick_seconds must be between 1 and 60".into());
            }
            settings.tick = Duration::from_secs(secs);
        }
        if let Some(n) = s.max_concurrent {
            if !(1..=1024).contains(&n) {
                return Err("scheduler.max_concurrent must be between 1 and 1024".into());
            }
            settings.max_concurrent = n;
        }
        settings.insecure_test_clock = s.insecure_test_clock.unwrap_or(false);
        let insecure_test_clock = settings.insecure_test_clock.then(|| Arc::new(TestClock::starting_now()));
        Ok(SchedulerConfig { enabled: s.enabled.unwrap_or(true), settings, insecure_test_clock })
    }

    /// The clock [`spawn`] should read: the test clock when it is on.
    pub fn clock(&self) -> Arc<dyn Clock> {
        match &self.insecure_test_clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        }
    }
}

/// Host name, process id and a random suffix: distinct for every process,
/// readable in the `scheduled_runs` rows.
pub fn default_node_id() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "kiln".into());
    let mut random = [0u8; 4];
    // Without randomness the pid still tells processes on one host apart.
    let _ = kiln_crypto::fill_random(&mut random);
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{host}-{}-{suffix}", std::process::id())
}

/// Where an installation's module runs within each interval: a stable
/// offset in `[0, interval)`, the same on every node.
pub fn offset_ms(installation: &InstallationRecord, module_key: &str, interval_ms: i64) -> i64 {
    if interval_ms <= 0 {
        return 0;
    }
    let digest = Sha256::of(format!("{}\n{module_key}", installation.public_id.as_str()).as_bytes());
    let mut first = [0u8; 8];
    for (d, s) in first.iter_mut().zip(digest.as_bytes()) {
        *d = *s;
    }
    let n = u64::from_be_bytes(first) % interval_ms.unsigned_abs();
    i64::try_from(n).unwrap_or(0)
}

/// The latest slot of `interval_ms` with `offset` whose run is due at or
/// before `now`: `(slot start, due time)`.
pub fn latest_due(now: Millis, interval_ms: i64, offset: i64) -> (Millis, Millis) {
    let interval = interval_ms.max(1);
    let slot = (now - offset).div_euclid(interval) * interval;
    (slot, slot + offset)
}

/// Start scheduling on this node until `shutdown` turns true (or its
/// sender is dropped); then wait up to `settings.drain` for runs going.
pub fn spawn(
    executor: Arc<dyn Execute>,
    store: Store,
    clock: Arc<dyn Clock>,
    settings: Settings,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let scheduler = Arc::new(Scheduler::new(executor, store, clock, settings));
    tokio::spawn(async move {
        let mut runs = JoinSet::new();
        let mut last_prune: Option<Millis> = None;
        // An interval, not a sleep per pass: runs finishing often must not
        // keep pushing the next tick back.
        let mut ticker = tokio::time::interval(scheduler.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if *shutdown.borrow() {
                break;
            }
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = ticker.tick() => {
                    if let Err(e) = scheduler.start_due(&mut runs).await {
                        tracing::warn!(error = %e, "scheduled triggers: this tick could not run");
                    }
                    let now = scheduler.clock.now();
                    let prune_ms = i64::try_from(PRUNE_EVERY.as_millis()).unwrap_or(i64::MAX);
                    if last_prune.is_none_or(|t| now - t >= prune_ms) {
                        last_prune = Some(now);
                        if let Err(e) = scheduler.prune(now).await {
                            tracing::warn!(error = %e, "scheduled triggers: old runs could not be pruned");
                        }
                    }
                }
                Some(_) = runs.join_next(), if !runs.is_empty() => {}
            }
        }
        let drained = tokio::time::timeout(scheduler.settings.drain, async {
            while runs.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = runs.len(),
                "scheduled triggers: runs still going at shutdown were abandoned; their leases will run out and another node runs them again"
            );
            runs.abort_all();
        }
    })
}

/// Why a tick could not look for due runs.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("the store: {0}")]
    Store(#[from] kiln_store::StoreError),
}

/// One node's scheduler. [`spawn`] drives it; tests call
/// [`Scheduler::run_due`] with a [`TestClock`].
pub struct Scheduler {
    executor: Arc<dyn Execute>,
    store: Store,
    clock: Arc<dyn Clock>,
    settings: Settings,
    /// Versions never change once stored: decoded once per node.
    versions: Mutex<HashMap<i64, Arc<VersionRecord>>>,
    /// What this node already knows about a module's current slot, so a
    /// tick does not write to the store for every module every time.
    known: Mutex<HashMap<(i64, String), Known>>,
    /// Runs this node has going.
    running: Mutex<HashSet<(i64, String, Millis)>>,
    permits: Arc<Semaphore>,
    /// Modules already reported as unsupported, so the log says it once
    /// per node rather than every tick.
    reported: Mutex<HashSet<(i64, String)>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("settings", &self.settings).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy)]
enum Known {
    /// The slot finished (here or elsewhere).
    Finished(Millis),
    /// Another node holds the slot until then.
    Held(Millis, Millis),
}

/// A run that came due.
#[derive(Debug, Clone)]
struct Due {
    installation: InstallationRecord,
    version: Arc<VersionRecord>,
    module_key: String,
    function: String,
    slot: Millis,
}

/// What one pass found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// Runs this node claimed and ran, as (installation row, module, slot).
    pub ran: Vec<(i64, String, Millis)>,
    /// Due runs another node holds or already finished.
    pub skipped: usize,
}

impl Scheduler {
    pub fn new(executor: Arc<dyn Execute>, store: Store, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        let permits = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
        Scheduler {
            executor,
            store,
            clock,
            settings,
            versions: Mutex::default(),
            known: Mutex::default(),
            running: Mutex::default(),
            permits,
            reported: Mutex::default(),
        }
    }

    /// Claim and run every due run now, waiting for them all: one tick,
    /// for tests.
    pub async fn run_due(self: &Arc<Self>) -> Result<TickReport, SchedulerError> {
        let mut runs = JoinSet::new();
        let skipped = self.start_due(&mut runs).await?;
        let mut ran: Vec<(i64, String, Millis)> = runs.join_all().await.into_iter().flatten().collect();
        ran.sort();
        Ok(TickReport { ran, skipped })
    }

    /// Claim each due run and start the ones this node won in `runs`; how
    /// many due runs were someone else's.
    async fn start_due(
        self: &Arc<Self>,
        runs: &mut JoinSet<Option<(i64, String, Millis)>>,
    ) -> Result<usize, SchedulerError> {
        let now = self.clock.now();
        let mut skipped = 0;
        for due in self.due(now).await? {
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                // Busy: the rest wait for the next tick.
                break;
            };
            let key = (due.installation.id, due.module_key.clone(), due.slot);
            if !lock(&self.running).insert(key.clone()) {
                continue;
            }
            let caller = runner::background(&due.version, &due.function);
            let lease = self.settings.lease.max(runner::outer_deadline(caller) + LEASE_MARGIN);
            let lease_until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX));
            let claim = self.claim(&due, now, lease_until).await;
            match claim {
                Ok(RunClaim::Claimed { attempt }) => {
                    let this = self.clone();
                    runs.spawn(async move {
                        this.execute(due, attempt).await;
                        lock(&this.running).remove(&key);
                        drop(permit);
                        Some(key)
                    });
                }
                other => {
                    lock(&self.running).remove(&key);
                    skipped += 1;
                    let (installation, module, slot) = key;
                    match other {
                        Ok(RunClaim::Finished) => {
                            lock(&self.known).insert((installation, module), Known::Finished(slot));
                        }
                        Ok(RunClaim::Held { lease_until }) => {
                            lock(&self.known).insert((installation, module), Known::Held(slot, lease_until));
                        }
                        Ok(RunClaim::Claimed { .. }) => {}
                        Err(e) => {
                            tracing::warn!(installation, module, error = %e, "scheduled trigger: the run could not be claimed");
                        }
                    }
                }
            }
        }
        Ok(skipped)
    }

    async fn claim(
        &self,
        due: &Due,
        now: Millis,
        lease_until: Millis,
    ) -> Result<RunClaim, kiln_store::StoreError> {
        let mut tx = self.store.begin().await?;
        let run =
            RunSlot { installation_id: due.installation.id, module_key: &due.module_key, slot: due.slot };
        let claim =
            tx.claim_scheduled_run(run, &self.settings.node_id, now, lease_until, MAX_ATTEMPTS).await?;
        tx.commit().await?;
        Ok(claim)
    }

    /// The runs due at `now` that this node does not already know are
    /// taken.
    async fn due(&self, now: Millis) -> Result<Vec<Due>, SchedulerError> {
        let mut tx = self.store.begin_read().await?;
        let installations = tx.all_installations().await?;
        let mut out = Vec::new();
        for installation in installations {
            if self.settings.insecure_test_clock && installation.environment.is_production() {
                if lock(&self.reported).insert((installation.id, String::new())) {
                    tracing::error!(
                        app = %installation.app,
                        installation = %installation.public_id,
                        "scheduled triggers NOT RUN for a production installation while insecure_test_clock is on"
                    );
                }
                continue;
            }
            let version = match self.version(&mut tx, installation.version_id).await? {
                Some(v) => v,
                None => continue,
            };
            for trigger in &version.manifest.modules.scheduled_triggers {
                let Some(function) = self.function_of(&installation, trigger) else { continue };
                let interval =
                    i64::try_from(trigger.interval.seconds()).unwrap_or(i64::MAX).saturating_mul(1000);
                let offset = offset_ms(&installation, trigger.key.as_str(), interval);
                let (slot, due_at) = latest_due(now, interval, offset);
                if due_at < installation.created_at {
                    continue;
                }
                let key = (installation.id, trigger.key.as_str().to_owned());
                let skip = match lock(&self.known).get(&key) {
                    Some(Known::Finished(s)) => *s == slot,
                    Some(Known::Held(s, until)) => *s == slot && now < *until,
                    None => false,
                };
                if skip {
                    continue;
                }
                out.push(Due {
                    installation: installation.clone(),
                    version: version.clone(),
                    module_key: key.1,
                    function,
                    slot,
                });
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// The function a trigger runs, or None (logged once) when Kiln cannot
    /// run its target.
    fn function_of(&self, installation: &InstallationRecord, trigger: &ScheduledTrigger) -> Option<String> {
        match &trigger.target {
            Target::Function(f) => Some(f.as_str().to_owned()),
            Target::Endpoint(endpoint) => {
                if lock(&self.reported).insert((installation.id, trigger.key.as_str().to_owned())) {
                    tracing::error!(
                        app = %installation.app,
                        installation = %installation.public_id,
                        module = %trigger.key,
                        endpoint = %endpoint,
                        "scheduled trigger NOT RUN: Kiln does not invoke Forge Remote endpoints yet"
                    );
                }
                None
            }
        }
    }

    async fn version(
        &self,
        tx: &mut kiln_store::Tx,
        id: i64,
    ) -> Result<Option<Arc<VersionRecord>>, kiln_store::StoreError> {
        if let Some(v) = lock(&self.versions).get(&id) {
            return Ok(Some(v.clone()));
        }
        let Some(v) = tx.version_by_id(id).await? else { return Ok(None) };
        let v = Arc::new(v);
        lock(&self.versions).insert(id, v.clone());
        Ok(Some(v))
    }

    /// Run a claimed slot and record how it ended.
    async fn execute(&self, due: Due, attempt: i64) {
        let Due { installation, version, module_key, function, slot } = due;
        let caller = runner::background(&version, &function);
        let mut context = serde_json::Map::new();
        context.insert("moduleKey".into(), json!(module_key));
        if let Some(cloud_id) = self.settings.cloud_ids.get(&installation.site) {
            context.insert("cloudId".into(), json!(cloud_id));
        }
        let token =
            Sha256::of(format!("{}\n{module_key}\n{slot}", installation.public_id.as_str()).as_bytes());
        let payload = json!({ "context": Value::Object(context), "contextToken": token.hex() });
        let call = Call {
            installation: installation.clone(),
            version: (*version).clone(),
            function,
            module_key: module_key.clone(),
            payload,
            context: serde_json::Map::new(),
            caller,
            account_id: None,
            kind: "scheduledTrigger",
        };
        let outcome =
            match tokio::time::timeout(runner::outer_deadline(caller), self.executor.execute(call)).await {
                Ok(Ok(_)) => "ok".to_owned(),
                Ok(Err(f)) => {
                    tracing::warn!(
                        app = %installation.app,
                        installation = %installation.public_id,
                        module = %module_key,
                        slot,
                        attempt,
                        code = %f.code,
                        "scheduled trigger failed"
                    );
                    f.code
                }
                Err(_) => "TIME_OUT".to_owned(),
            };
        let run = RunSlot { installation_id: installation.id, module_key: &module_key, slot };
        let finished = async {
            let mut tx = self.store.begin().await?;
            let done =
                tx.finish_scheduled_run(run, &self.settings.node_id, self.clock.now(), &outcome).await?;
            tx.commit().await?;
            Ok::<bool, kiln_store::StoreError>(done)
        }
        .await;
        match finished {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                installation = %installation.public_id,
                module = %module_key,
                slot,
                "scheduled trigger: the run outlived its lease and another node took it over"
            ),
            Err(e) => tracing::warn!(
                installation = %installation.public_id,
                module = %module_key,
                slot,
                error = %e,
                "scheduled trigger: the outcome could not be recorded; the run may happen again when its lease runs out"
            ),
        }
        lock(&self.known).insert((installation.id, module_key), Known::Finished(slot));
    }

    async fn prune(&self, now: Millis) -> Result<u64, kiln_store::StoreError> {
        let keep = i64::try_from(RETAIN_FINISHED.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.store.begin().await?;
        let n = tx.prune_scheduled_runs(now.saturating_sub(keep)).await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// Lock `m`, carrying on if a thread panicked while holding it (the maps
/// are caches and bookkeeping; the store decides what runs).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------ test clock

/// `POST /_kiln/test/clock` with `{"advanceSeconds": n}` (0 to
/// [`MAX_TEST_CLOCK_STEP_SECONDS`]) moves the scheduler's [`TestClock`]
/// forward and answers `{"now": <unix ms>}`.
///
/// Refused with 404 unless `insecure_test_clock` is on (`clock` is
/// `Some`), and with 403 unless the request comes from a loopback address.
/// Mount it only for end-to-end tests; the lead's `kiln serve` wiring
/// merges it only when the setting is on.
pub fn insecure_test_clock_router(clock: Option<Arc<TestClock>>) -> Router {
    Router::new().route("/_kiln/test/clock", axum::routing::post(advance_clock)).with_state(clock)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Advance {
    advance_seconds: i64,
}

async fn advance_clock(
    State(clock): State<Option<Arc<TestClock>>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: axum::body::Bytes,
) -> Response {
    let refuse =
        |status: StatusCode, message: &str| (status, Json(json!({ "error": message }))).into_response();
    let Some(clock) = clock else {
        return refuse(StatusCode::NOT_FOUND, "no such route");
    };
    let loopback = peer.is_some_and(|Extension(ConnectInfo(addr))| addr.ip().is_loopback());
    if !loopback {
        return refuse(StatusCode::FORBIDDEN, "the test clock answers loopback clients only");
    }
    let Ok(Advance { advance_seconds }) = serde_json::from_slice::<Advance>(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "expected {\"advanceSeconds\": <whole seconds>}");
    };
    if !(0..=MAX_TEST_CLOCK_STEP_SECONDS).contains(&advance_seconds) {
        return refuse(StatusCode::BAD_REQUEST, "advanceSeconds must be between 0 and 31 days");
    }
    let now = clock.advance(Duration::from_secs(advance_seconds.unsigned_abs()));
    tracing::warn!(now, advance_seconds, "insecure test clock moved");
    (StatusCode::OK, Json(json!({ "now": now }))).into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing, reason = "test code: a panic is a failed test")]

    use super::*;
    use kiln_types::{AppId, Environment, InstallationId, Product, Version};

    fn installation(public_id: &str) -> InstallationRecord {
        InstallationRecord {
            id: 1,
            public_id: InstallationId::parse(public_id).unwrap(),
            app: AppId::parse("ari:cloud:ecosystem::app/00000000-0000-4000-8000-000000000001").unwrap(),
            environment: Environment::development(),
            site: SiteUrl::parse("https://a.example.net").unwrap(),
            product: Product::Jira,
            version_id: 1,
            version: Version::FIRST,
            consent: kiln_manifest::Grants::default(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn offsets_are_stable_inside_the_interval_and_spread_over_it() {
        for interval in [300_000_i64, 3_600_000, 86_400_000, 604_800_000] {
            let mut seen = HashSet::new();
            for n in 0..200_u32 {
                let inst = installation(&format!("00000000-0000-4000-8000-{n:012}"));
                let offset = offset_ms(&inst, "hourly", interval);
                assert!((0..interval).contains(&offset), "{offset} outside {interval}");
                assert_eq!(offset, offset_ms(&inst, "hourly", interval), "stable");
                seen.insert(offset);
            }
            assert!(seen.len() > 190, "offsets spread: {} distinct of 200", seen.len());
        }
        let inst = installation("00000000-0000-4000-8000-000000000001");
        assert_ne!(offset_ms(&inst, "a", 3_600_000), offset_ms(&inst, "b", 3_600_000), "per module");
    }

    #[test]
    fn the_latest_due_slot_is_never_in_the_future_nor_an_interval_old() {
        for (now, interval, offset) in
            [(0, 10, 3), (2, 10, 3), (3, 10, 3), (12, 10, 3), (13, 10, 3), (1_000_007, 300, 299)]
        {
            let (slot, due) = latest_due(now, interval, offset);
            assert_eq!(slot % interval, 0);
            assert_eq!(due, slot + offset);
            assert!(due <= now && now < due + interval, "now {now}: due {due}");
        }
    }

    #[tokio::test]
    async fn the_test_clock_refuses_callers_that_are_not_on_loopback() {
        let clock = Arc::new(TestClock::new(0));
        let body = axum::body::Bytes::from_static(br#"{"advanceSeconds": 60}"#);
        let remote = Extension(ConnectInfo(SocketAddr::from(([192, 0, 2, 1], 4000))));
        let r = advance_clock(State(Some(clock.clone())), Some(remote), body.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = advance_clock(State(Some(clock.clone())), None, body.clone()).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "no peer address: refused");
        let local = Extension(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 4000))));
        let r = advance_clock(State(Some(clock.clone())), Some(local), body).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(clock.now(), 60_000);
    }
}
