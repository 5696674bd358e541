//! `kiln-sandbox`: run an app's functions in pools of jailed workers.
//!
//! - [`Sandbox::program`] compiles a bundle to bytecode in a fresh jailed
//!   worker and caches the result per app and bundle digest. Bytecode only
//!   ever flows from a worker of an app to workers of the same app.
//! - [`Sandbox::invoke`] takes a worker from the app's pool (bounded; callers
//!   wait when it is busy), sends the invocation, answers the worker's host
//!   calls through a [`HostHandler`] (the server decides each one), and
//!   enforces the wall-clock deadline itself, because the engine's interrupt
//!   handler does not run while JavaScript awaits the host. A worker that
//!   times out, crashes, breaks the protocol or has served its quota is
//!   killed and replaced; the invocation fails with a structured error.
//! - [`worker::worker_main`] is the other side: the process the pool starts.
//!
//! Every message from a worker is treated as hostile: bounded in size and
//! count, strictly typed, and never trusted beyond its shape.

#![forbid(unsafe_code)]

pub mod worker;

/// Every frame payload the server sends to or receives from a worker, for
/// tests that search the worker's whole view of an invocation (say, for a
/// token that must never reach it).
#[cfg(feature = "testing")]
pub mod tap {
    use std::sync::Mutex;

    static FRAMES: Mutex<Option<Vec<Vec<u8>>>> = Mutex::new(None);

    /// Start keeping frames (dropping any kept before).
    pub fn start() {
        *FRAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Vec::new());
    }

    /// Stop, and hand over what was kept.
    pub fn take() -> Vec<Vec<u8>> {
        FRAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take().unwrap_or_default()
    }

    pub(crate) fn record(payload: Result<Vec<u8>, serde_json::Error>) {
        let mut frames = FRAMES.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let (Some(frames), Ok(payload)) = (frames.as_mut(), payload) {
            frames.push(payload);
        }
    }
}

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kiln_bundle::Bundle;
use kiln_crypto::Sha256;
use kiln_ipc::{
    ErrorCode, FromWorker, HostReply, Invocation, InvocationError, JailReport, Limits, LogLevel,
    MAX_FRAME_BYTES, MAX_PROGRAM_FRAME_BYTES, Outcome, Program, SourceModule, ToWorker, read_frame,
    write_frame,
};
use kiln_jail::{NamespacePolicy, ProcessLimits, WorkerSpec};

pub use kiln_jail::NamespacePolicy as Namespaces;

/// How long a worker may take to start and report ready.
pub const WORKER_START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long compiling an app may take.
pub const COMPILE_TIMEOUT: Duration = Duration::from_secs(120);

/// Extra time the server allows past an invocation's deadline before it
/// kills the worker (the worker normally reports `TIME_OUT` itself).
pub const DEADLINE_GRACE: Duration = Duration::from_millis(500);

/// Longest a single frame may take to arrive once it has started. A worker
/// that sends half a frame and stalls is killed.
pub const FRAME_STALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Forge's log limit per invocation; also enforced here, since the worker's
/// own accounting cannot be trusted.
pub const MAX_LOG_LINES: u32 = 100;
pub const MAX_LOG_BYTES: u32 = 200 * 1024;

/// Host calls one invocation may make.
pub const MAX_HOST_CALLS: u32 = 1_000;

/// The JavaScript stack per invocation.
pub const STACK_BYTES: u64 = 1024 * 1024;

/// Operator settings.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The executable started as a worker (the `kiln` binary) and its
    /// arguments (`__worker`).
    pub worker_executable: PathBuf,
    pub worker_args: Vec<OsString>,
    pub namespaces: NamespacePolicy,
    /// Cap on any function's `memoryMB`.
    pub max_memory_mb: u32,
    /// Workers per app.
    pub pool_size: usize,
    /// A worker is replaced after this many invocations.
    pub recycle_after: u32,
    /// Let workers write to the server's stderr (development only).
    pub inherit_stderr: bool,
    /// Without [`SandboxConfig::reset_instead_of_fork`]: programs with at
    /// least this many bytes of bytecode run every invocation in a process
    /// forked from a prepared template (reading the bytecode and running
    /// the top level once per worker); smaller ones in a fresh runtime the
    /// worker prepares ahead, which costs less than a fork for them. 0
    /// always forks; `usize::MAX` never does.
    pub fork_above_bytes: usize,
    /// Workers that fork per invocation put their code on transparent huge
    /// pages (`kiln_jail::WorkerSpec::huge_pages`): each keeps a private
    /// copy of the executable's code and read-only data (about 24 MB for
    /// `kiln`), and a forked call takes about 10% less CPU than with the
    /// code left in the shared file mapping (docs/PERFORMANCE.md).
    pub huge_pages: bool,
    /// Every program runs each invocation from one prepared runtime in the
    /// worker itself, which puts all of its writable memory back as it was
    /// after each (`kiln_jail::Snapshot`), instead of in a process forked
    /// per invocation or a fresh runtime per invocation (as
    /// [`SandboxConfig::fork_above_bytes`] chooses without this). A fork
    /// also starts every invocation in a new process, at about twice the
    /// CPU for a large program; a fresh runtime costs about a third more
    /// for a trivial one (docs/PERFORMANCE.md). `kiln serve
    /// --process-per-invocation` turns this off.
    pub reset_instead_of_fork: bool,
}

/// How a worker serves its program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Serving {
    /// A fresh runtime per invocation, prepared ahead, in the worker's
    /// children, which take turns.
    InPlace,
    /// A process forked per invocation from a prepared template.
    Forked,
    /// One prepared runtime, the worker's memory put back after each
    /// invocation.
    Reset,
}

impl Serving {
    fn for_program(config: &SandboxConfig, bytes: usize) -> Serving {
        if config.reset_instead_of_fork {
            Serving::Reset
        } else if bytes < config.fork_above_bytes {
            Serving::InPlace
        } else {
            Serving::Forked
        }
    }
}

/// [`SandboxConfig::fork_above_bytes`] by default: where a fresh runtime
/// starts to cost more than a fork (measured by `kiln bench invoke`; see
/// docs/PERFORMANCE.md).
pub const FORK_ABOVE_BYTES: usize = 48 * 1024;

impl SandboxConfig {
    /// Defaults for workers that are this very executable with `__worker`.
    pub fn for_current_exe() -> Result<Self, SandboxError> {
        let exe = std::env::current_exe()
            .map_err(|e| SandboxError::Platform(format!("cannot find the kiln executable: {e}")))?;
        Ok(SandboxConfig {
            worker_executable: exe,
            worker_args: vec!["__worker".into()],
            namespaces: NamespacePolicy::Require,
            max_memory_mb: 1024,
            pool_size: 2,
            recycle_after: 1_000,
            inherit_stderr: false,
            fork_above_bytes: FORK_ABOVE_BYTES,
            huge_pages: true,
            reset_instead_of_fork: true,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Jail(#[from] kiln_jail::JailError),
    #[error("{module}: {message}")]
    Compile { module: String, message: String },
    #[error("{0}")]
    Platform(String),
    /// The payload and context together exceed what an invocation may carry
    /// (Forge's 5 MB); the function was not run.
    #[error("the {what} is {bytes} bytes; an invocation carries at most {limit} bytes (5 MB)")]
    TooLarge { what: &'static str, bytes: usize, limit: usize },
}

/// What kind of caller an invocation has; it sets the default deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A user in the product (resolvers, UI): 25 s.
    User,
    /// A web trigger: 55 s.
    WebTrigger,
    /// A product event, scheduled trigger or queue consumer: 55 s, or the
    /// function's `timeoutSeconds` (at most 900).
    Background { timeout_seconds: Option<u32> },
}

impl Caller {
    pub fn deadline(self) -> Duration {
        match self {
            Caller::User => Duration::from_secs(25),
            Caller::WebTrigger => Duration::from_secs(55),
            Caller::Background { timeout_seconds } => {
                Duration::from_secs(u64::from(timeout_seconds.unwrap_or(55).clamp(1, 900)))
            }
        }
    }
}

/// One function call to make.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    pub function: String,
    pub payload: serde_json::Value,
    pub context: serde_json::Value,
    pub caller: Caller,
    pub memory_mb: u32,
    /// Overrides the caller's deadline (tests and benchmarks).
    pub deadline: Option<Duration>,
    /// The app's variables, `process.env`. Workers are pooled per set of
    /// variables, so a change reaches invocations through new workers.
    pub env: BTreeMap<String, String>,
    /// What `getAppContext()` and `permissions` report (see
    /// `kiln_host::InvocationGrants::runtime`); `Null` for none.
    pub runtime: serde_json::Value,
}

/// How an invocation went.
#[derive(Debug, Clone)]
pub struct InvokeResult {
    pub outcome: Outcome,
    pub logs: Vec<(LogLevel, String)>,
    pub duration: Duration,
}

/// The server's side of host calls: every call a worker makes is decided
/// here, against the invocation's grants.
pub trait HostHandler {
    fn handle(&mut self, capability: &str, args: serde_json::Value) -> HostReply;
}

/// Grants no capability at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCapabilities;

impl HostHandler for NoCapabilities {
    fn handle(&mut self, capability: &str, _args: serde_json::Value) -> HostReply {
        HostReply::Err {
            code: "CAPABILITY_NOT_AVAILABLE".into(),
            message: format!("the host offers no '{capability}' capability to this invocation"),
        }
    }
}

/// The worker pools of every app this process runs.
#[derive(Debug)]
pub struct Sandbox {
    config: SandboxConfig,
    programs: Mutex<HashMap<(String, Sha256), Arc<Program>>>,
    pools: Mutex<HashMap<(String, Sha256, Sha256), Arc<Pool>>>,
}

impl Sandbox {
    /// A sandbox; with [`NamespacePolicy::Require`] this checks at once that
    /// jailed workers can start here, and refuses to run otherwise.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        if config.namespaces == NamespacePolicy::Require {
            kiln_jail::probe_namespaces()?;
        }
        Ok(Sandbox { config, programs: Mutex::new(HashMap::new()), pools: Mutex::new(HashMap::new()) })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The pools' workers now, for the server's metrics. Read-only: it
    /// takes each pool's lock only long enough to count.
    pub fn pool_stats(&self) -> PoolStats {
        // Copy the pool list first so no pool's lock is taken under the map's.
        let pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        let mut stats = PoolStats { pools: pools.len(), ..PoolStats::default() };
        for pool in pools {
            let state = lock(&pool.idle);
            stats.workers += state.live;
            stats.idle += state.idle.len();
            for worker in &state.idle {
                if worker.forked {
                    stats.idle_forked += 1;
                } else if worker.jail.as_ref().is_some_and(|j| j.memory_reset) {
                    stats.idle_reset += 1;
                }
            }
        }
        stats
    }

    /// What each idle worker reported of its jail when it started (for
    /// diagnostics and tests: a worker's report proves nothing).
    pub fn jail_reports(&self) -> Vec<JailReport> {
        let pools: Vec<Arc<Pool>> = lock(&self.pools).values().cloned().collect();
        pools
            .iter()
            .flat_map(|pool| lock(&pool.idle).idle.iter().filter_map(|w| w.jail.clone()).collect::<Vec<_>>())
            .collect()
    }

    /// The app's compiled program, compiling it in a fresh jailed worker the
    /// first time.
    pub fn program(&self, app: &str, hash: &Sha256, bundle: &Bundle) -> Result<Arc<Program>, SandboxError> {
        let key = (app.to_owned(), *hash);
        if let Some(p) = lock(&self.programs).get(&key) {
            return Ok(p.clone());
        }
        let compiled = self.compile(bundle)?;
        let program = Arc::new(compiled);
        lock(&self.programs).insert(key, program.clone());
        Ok(program)
    }

    /// Cache `program` for `app` as if its compile worker had produced it.
    /// Tests use this to play a compromised compiler handing back forged
    /// bytecode; nothing else can put bytecode into the sandbox.
    #[cfg(feature = "testing")]
    pub fn insert_program(&self, app: &str, hash: &Sha256, program: Program) {
        lock(&self.programs).insert((app.to_owned(), *hash), Arc::new(program));
    }

    fn compile(&self, bundle: &Bundle) -> Result<Program, SandboxError> {
        let modules: Vec<SourceModule> = bundle
            .modules
            .iter()
            .map(|(id, m)| SourceModule {
                id: id.clone(),
                kind: m.kind,
                code: m.code.clone(),
                exports: m.exports.clone(),
                uses_require: m.uses_require,
            })
            .collect();
        let imports = imports_of(bundle);
        let kinds = bundle.modules.iter().map(|(id, m)| (id.clone(), m.kind)).collect();
        let mut worker = self.start_worker(512, Serving::InPlace)?;
        let deadline = Instant::now() + COMPILE_TIMEOUT;
        worker.send(&ToWorker::Compile { modules, imports: imports.clone() })?;
        let reply = worker.receive(deadline, MAX_PROGRAM_FRAME_BYTES);
        let _ = worker.send(&ToWorker::Shutdown {});
        worker.kill();
        match reply {
            Ok(FromWorker::Compiled { modules }) => Ok(Program { modules, kinds, imports }),
            Ok(FromWorker::CompileFailed { module, message }) => {
                Err(SandboxError::Compile { module, message })
            }
            Ok(FromWorker::InvocationDied { code, signal }) => Err(SandboxError::Platform(format!(
                "the compile worker failed: {}",
                death_reason("the compiler", signal, code)
            ))),
            Ok(_) => Err(SandboxError::Platform("the compile worker answered out of turn".into())),
            Err(e) => Err(SandboxError::Platform(format!("the compile worker failed: {}", e.message))),
        }
    }

    /// Run `request` for the app whose bundle is `bundle` (digest `hash`).
    pub fn invoke(
        &self,
        app: &str,
        hash: &Sha256,
        bundle: &Bundle,
        request: &InvokeRequest,
        host: &mut dyn HostHandler,
    ) -> Result<InvokeResult, SandboxError> {
        let Some(entry) = bundle.entries.get(&request.function) else {
            return Err(SandboxError::Platform(format!("the app has no function '{}'", request.function)));
        };
        let payload = request.payload.to_string();
        let context = request.context.to_string();
        let limit = kiln_ipc::MAX_PAYLOAD_BYTES;
        for (what, text) in [("payload", &payload), ("context", &context)] {
            if text.len() > limit {
                return Err(SandboxError::TooLarge { what, bytes: text.len(), limit });
            }
        }
        let memory_mb = request.memory_mb.clamp(16, self.config.max_memory_mb);
        let pool = self.pool(app, hash, bundle, memory_mb, &request.env)?;
        let deadline_in = request.deadline.unwrap_or_else(|| request.caller.deadline());
        let invocation = Invocation {
            id: random_id(),
            module: entry.module.clone(),
            export: entry.export.clone(),
            payload,
            context,
            runtime: if request.runtime.is_null() { String::new() } else { request.runtime.to_string() },
            limits: Limits {
                memory_bytes: u64::from(memory_mb) << 20,
                stack_bytes: STACK_BYTES,
                deadline_ms: u64::try_from(deadline_in.as_millis()).unwrap_or(u64::MAX),
                max_log_lines: MAX_LOG_LINES,
                max_log_bytes: MAX_LOG_BYTES,
                max_result_bytes: u32::try_from(kiln_ipc::MAX_PAYLOAD_BYTES).unwrap_or(u32::MAX),
            },
        };
        Ok(pool.invoke(self, &invocation, deadline_in, host))
    }

    fn pool(
        &self,
        app: &str,
        hash: &Sha256,
        bundle: &Bundle,
        memory_mb: u32,
        env: &BTreeMap<String, String>,
    ) -> Result<Arc<Pool>, SandboxError> {
        let env_json = serde_json::to_vec(env).map_err(|e| SandboxError::Platform(e.to_string()))?;
        let key = (app.to_owned(), *hash, Sha256::of(&env_json));
        if let Some(pool) = lock(&self.pools).get(&key) {
            return Ok(pool.clone());
        }
        let program = self.program(app, hash, bundle)?;
        let pool = Arc::new(Pool {
            program,
            env: env.clone(),
            memory_mb,
            idle: Mutex::new(PoolState { idle: Vec::new(), live: 0 }),
            available: Condvar::new(),
            size: self.config.pool_size.max(1),
        });
        // Pre-start the pool so the first invocations find warm workers.
        for _ in 0..pool.size {
            let worker = pool.start(self)?;
            let mut state = lock(&pool.idle);
            state.live += 1;
            state.idle.push(worker);
        }
        lock(&self.pools).entry(key).or_insert(pool.clone());
        Ok(pool)
    }

    /// Start a jailed worker that will serve as `serving` says.
    fn start_worker(&self, memory_mb: u32, serving: Serving) -> Result<Worker, SandboxError> {
        let spec = worker_spec(&self.config, memory_mb, serving);
        let spawned = kiln_jail::spawn(&spec)?;
        // A worker that stops reading cannot hold the server's thread either.
        spawned
            .channel
            .set_read_timeout(Some(FRAME_STALL_TIMEOUT))
            .and_then(|()| spawned.channel.set_write_timeout(Some(FRAME_STALL_TIMEOUT)))
            .map_err(|e| SandboxError::Platform(format!("cannot configure the worker channel: {e}")))?;
        let mut worker = Worker {
            child: spawned.child,
            channel: spawned.channel,
            served: 0,
            jail: None,
            forked: false,
            sender: None,
            standbys: std::collections::VecDeque::new(),
        };
        match worker.receive(Instant::now() + WORKER_START_TIMEOUT, MAX_FRAME_BYTES) {
            Ok(FromWorker::Ready { protocol, jail }) if protocol == kiln_ipc::PROTOCOL_VERSION => {
                if !jail.seccomp || (self.config.namespaces == NamespacePolicy::Require && !jail.namespaces) {
                    worker.kill();
                    return Err(SandboxError::Platform(format!(
                        "the worker is not jailed as required: {jail:?}"
                    )));
                }
                worker.jail = Some(jail);
                Ok(worker)
            }
            Ok(other) => {
                worker.kill();
                Err(SandboxError::Platform(format!("the worker did not start properly: {other:?}")))
            }
            Err(e) => {
                worker.kill();
                Err(SandboxError::Platform(format!("the worker did not start: {}", e.message)))
            }
        }
    }
}

/// Workers over every pool: those that exist (idle or busy) and those idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pools (one per app, bundle and set of variables).
    pub pools: usize,
    pub workers: usize,
    pub idle: usize,
    /// Idle workers that put their memory back after each invocation.
    pub idle_reset: usize,
    /// Idle workers that fork a process per invocation.
    pub idle_forked: usize,
}

impl PoolStats {
    /// Workers running an invocation (or starting for one) now.
    pub fn busy(&self) -> usize {
        self.workers.saturating_sub(self.idle)
    }

    /// Idle workers that run invocations in place, a fresh runtime each:
    /// where a worker asked to reset could not take its snapshot.
    pub fn idle_in_place(&self) -> usize {
        self.idle.saturating_sub(self.idle_reset + self.idle_forked)
    }
}

/// One app's workers.
#[derive(Debug)]
struct Pool {
    program: Arc<Program>,
    env: BTreeMap<String, String>,
    memory_mb: u32,
    idle: Mutex<PoolState>,
    available: Condvar,
    size: usize,
}

#[derive(Debug)]
struct PoolState {
    idle: Vec<Worker>,
    /// Workers that exist, idle or busy.
    live: usize,
}

impl Pool {
    fn start(&self, sandbox: &Sandbox) -> Result<Worker, SandboxError> {
        let bytes: usize = self.program.modules.iter().map(|m| m.code.len()).sum();
        let serving = Serving::for_program(&sandbox.config, bytes);
        let fork = serving == Serving::Forked;
        let mut worker = sandbox.start_worker(self.memory_mb, serving)?;
        worker.forked = fork;
        worker.send(&ToWorker::Load {
            program: (*self.program).clone(),
            fork,
            reset: serving == Serving::Reset,
            env: self.env.clone(),
        })?;
        match worker.receive(Instant::now() + WORKER_START_TIMEOUT, MAX_FRAME_BYTES) {
            Ok(FromWorker::Loaded { memory_reset }) => {
                if let Some(jail) = worker.jail.as_mut() {
                    jail.memory_reset = memory_reset;
                }
                // A forked worker keeps two children ready.
                if fork {
                    worker.add_standby(None)?;
                    worker.add_standby(None)?;
                }
                Ok(worker)
            }
            Ok(other) => {
                worker.kill();
                Err(SandboxError::Platform(format!("the worker did not load the program: {other:?}")))
            }
            Err(e) => {
                worker.kill();
                Err(SandboxError::Platform(format!("the worker did not load the program: {}", e.message)))
            }
        }
    }

    /// Take an idle worker, start one if the pool has room, or wait.
    fn checkout(&self, sandbox: &Sandbox, until: Instant) -> Result<Worker, InvocationError> {
        let mut state = lock(&self.idle);
        loop {
            if let Some(mut worker) = state.idle.pop() {
                if worker.quiet() {
                    return Ok(worker);
                }
                // It spoke out of turn (a frame no invocation asked for,
                // which the next one would take as its own) or hung up.
                worker.kill();
                state.live -= 1;
                continue;
            }
            if state.live < self.size {
                state.live += 1;
                drop(state);
                return self.start(sandbox).map_err(|e| {
                    lock(&self.idle).live -= 1;
                    self.available.notify_one();
                    InvocationError::new(ErrorCode::PlatformError, format!("cannot start a worker: {e}"))
                });
            }
            let now = Instant::now();
            if now >= until {
                return Err(InvocationError::new(
                    ErrorCode::PlatformError,
                    format!("all {} workers of this app stayed busy until the deadline", self.size),
                ));
            }
            state = match self.available.wait_timeout(state, until - now) {
                Ok((s, _)) => s,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }

    fn checkin(&self, worker: Worker, healthy: bool, recycle_after: u32) {
        let mut state = lock(&self.idle);
        if healthy && worker.served < recycle_after {
            state.idle.push(worker);
        } else {
            let mut worker = worker;
            worker.kill();
            state.live -= 1;
        }
        drop(state);
        self.available.notify_one();
    }

    fn invoke(
        &self,
        sandbox: &Sandbox,
        invocation: &Invocation,
        deadline_in: Duration,
        host: &mut dyn HostHandler,
    ) -> InvokeResult {
        let started = Instant::now();
        let deadline = started + deadline_in;
        let mut logs = Vec::new();
        let mut worker = match self.checkout(sandbox, deadline) {
            Ok(w) => w,
            Err(e) => return InvokeResult { outcome: Outcome::Err(e), logs, duration: started.elapsed() },
        };
        worker.served += 1;
        let (outcome, healthy) = worker.run(invocation, deadline + DEADLINE_GRACE, host, &mut logs);
        self.checkin(worker, healthy, sandbox.config.recycle_after);
        InvokeResult { outcome, logs, duration: started.elapsed() }
    }
}

/// A running worker process and its channel.
#[derive(Debug)]
struct Worker {
    child: Child,
    /// The worker's own channel: start-up, loading, compiling, and in place
    /// every invocation; a forked worker's template announces its children
    /// and their deaths on it.
    channel: UnixStream,
    served: u32,
    jail: Option<JailReport>,
    /// Whether each invocation runs in a process forked for it alone, on a
    /// channel of its own.
    forked: bool,
    /// Who sent the last frame received on `channel`: a process id, from
    /// the kernel.
    sender: Option<i32>,
    /// A forked worker's standby processes: the server's ends of their own
    /// channels, oldest first. Each serves one invocation and is closed.
    standbys: std::collections::VecDeque<UnixStream>,
}

/// Reads a worker's channel and notes who sent what it read: a frame read
/// through it in pieces is one sender's only if every piece was
/// ([`kiln_jail::recv_ancillary`]). A worker never passes descriptors;
/// any that came are counted (and closed).
struct SenderReader<'a> {
    channel: &'a UnixStream,
    sender: Option<i32>,
    mixed: bool,
    passed: usize,
}

impl std::io::Read for SenderReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let received = kiln_jail::recv_ancillary(self.channel, buf)?;
        if received.read > 0 {
            // 0: no sender said (a child's own channel, where the server
            // does not ask).
            let sender = received.sender.unwrap_or(0);
            match self.sender {
                None => self.sender = Some(sender),
                Some(first) if first != sender => self.mixed = true,
                Some(_) => {}
            }
        }
        self.passed += usize::from(received.passed.is_some());
        Ok(received.read)
    }
}

/// Which channel of a worker a frame is read from or sent on.
#[derive(Clone, Copy)]
enum On<'a> {
    /// The worker's own.
    Worker,
    /// A forked child's, for its one invocation.
    Child(&'a UnixStream),
}

fn send_frame(mut channel: &UnixStream, message: &ToWorker) -> Result<(), SandboxError> {
    #[cfg(feature = "testing")]
    tap::record(serde_json::to_vec(message));
    write_frame(&mut channel, message)
        .map_err(|e| SandboxError::Platform(format!("cannot reach the worker: {e}")))
}

impl Worker {
    fn send(&mut self, message: &ToWorker) -> Result<(), SandboxError> {
        send_frame(&self.channel, message)
    }

    /// The next message on the worker's own channel, or why there is none
    /// (timed out, died, broke the protocol).
    fn receive(&mut self, until: Instant, limit: usize) -> Result<FromWorker, InvocationError> {
        self.receive_on(On::Worker, until, limit)
    }

    /// The next message on `on`, or why there is none.
    fn receive_on(
        &mut self,
        on: On<'_>,
        until: Instant,
        limit: usize,
    ) -> Result<FromWorker, InvocationError> {
        let channel = match on {
            On::Worker => &self.channel,
            On::Child(channel) => channel,
        };
        let remaining = until.saturating_duration_since(Instant::now());
        match kiln_jail::wait_readable(channel, remaining) {
            Ok(true) => {}
            Ok(false) => return Err(InvocationError::new(ErrorCode::TimeOut, "the deadline passed")),
            Err(e) => {
                return Err(InvocationError::new(ErrorCode::PlatformError, format!("worker channel: {e}")));
            }
        }
        let mut reader = SenderReader { channel, sender: None, mixed: false, passed: 0 };
        let message = read_frame(&mut reader, limit);
        let SenderReader { sender, mixed, passed, .. } = reader;
        if mixed || passed > 0 {
            self.kill();
            let why = if mixed { "one frame came from two processes" } else { "it passed a descriptor" };
            return Err(InvocationError::new(
                ErrorCode::PlatformError,
                format!("the worker broke the protocol: {why}"),
            ));
        }
        if matches!(on, On::Worker) {
            self.sender = sender;
        }
        #[cfg(feature = "testing")]
        if let Ok(m) = &message {
            tap::record(serde_json::to_vec(m));
        }
        let closed = |e: &kiln_ipc::IpcError| match e {
            kiln_ipc::IpcError::Closed => true,
            kiln_ipc::IpcError::Io(io) => {
                matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
            }
            _ => false,
        };
        message.map_err(|e| {
            if !closed(&e) {
                return InvocationError::new(
                    ErrorCode::PlatformError,
                    format!("the worker broke the protocol: {e}"),
                );
            }
            match on {
                On::Worker => self.death(),
                On::Child(_) => self.child_death(),
            }
        })
    }

    /// Make the channel of a forked worker's next child and send the
    /// worker its end (`ToWorker::Standby`), keeping ours in line; with
    /// the module of the invocation just sent, for the worker to evaluate
    /// ahead.
    fn add_standby(&mut self, module: Option<&str>) -> Result<(), SandboxError> {
        let platform =
            |e: std::io::Error| SandboxError::Platform(format!("cannot give the worker a channel: {e}"));
        let (ours, theirs) = UnixStream::pair().map_err(platform)?;
        ours.set_read_timeout(Some(FRAME_STALL_TIMEOUT)).map_err(platform)?;
        // A child that stops reading cannot hold the server's thread.
        ours.set_write_timeout(Some(FRAME_STALL_TIMEOUT)).map_err(platform)?;
        let message = ToWorker::Standby { module: module.map(str::to_owned) };
        #[cfg(feature = "testing")]
        tap::record(serde_json::to_vec(&message));
        let mut frame = Vec::new();
        write_frame(&mut frame, &message).map_err(|e| platform(std::io::Error::other(e.to_string())))?;
        kiln_jail::send_channel(&self.channel, &frame, &theirs).map_err(platform)?;
        self.standbys.push_back(ours);
        Ok(())
    }

    /// Why a forked child's channel closed mid-invocation: the worker
    /// reports how the child ended on its own channel, then exits.
    fn child_death(&mut self) -> InvocationError {
        match self.receive(Instant::now() + Duration::from_secs(1), MAX_FRAME_BYTES) {
            Ok(FromWorker::InvocationDied { code, signal }) => {
                InvocationError::new(ErrorCode::PlatformError, death_reason("the invocation", signal, code))
            }
            Ok(other) => InvocationError::new(
                ErrorCode::PlatformError,
                format!("the worker broke the protocol: {} on its own channel", variant(&other)),
            ),
            Err(e) if e.code == ErrorCode::TimeOut => InvocationError::new(
                ErrorCode::PlatformError,
                "the invocation's process hung up without an answer",
            ),
            Err(e) => e,
        }
    }

    /// Every frame of one in-place invocation comes from one process. A
    /// process that writes into another's invocation is one that reads the
    /// shared channel out of turn (an engine exploit in one of the two
    /// children), so the worker is killed rather than trusted with the
    /// answer. (The same two processes take turns by design in place,
    /// docs/THREAT_MODEL.md; forked children each have a channel of their
    /// own, which no other process holds.)
    fn check_sender(&mut self, serving: &mut Option<i32>) -> Result<(), String> {
        let sender = self.sender.filter(|pid| *pid > 0).ok_or("a frame arrived without its sender")?;
        match *serving {
            Some(pid) if pid == sender => Ok(()),
            Some(pid) => Err(format!("process {sender} wrote into the invocation process {pid} serves")),
            None => {
                *serving = Some(sender);
                Ok(())
            }
        }
    }

    /// Whether an idle worker is silent, as it should be between
    /// invocations: nothing waiting on its channel and the channel open,
    /// and the same for each standby's own channel.
    fn quiet(&self) -> bool {
        silent(&self.channel) && self.standbys.iter().all(silent)
    }

    /// Why the worker is gone, from its exit status.
    fn death(&mut self) -> InvocationError {
        let why = match self.child.wait() {
            Ok(s) => death_reason("the worker", s.signal(), s.code()),
            Err(e) => format!("the worker vanished: {e}"),
        };
        InvocationError::new(ErrorCode::PlatformError, why)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Run one invocation; returns the outcome and whether the worker may
    /// serve again.
    fn run(
        &mut self,
        invocation: &Invocation,
        hard_deadline: Instant,
        host: &mut dyn HostHandler,
        logs: &mut Vec<(LogLevel, String)>,
    ) -> (Outcome, bool) {
        // A forked worker's invocation goes to its oldest standby, on that
        // child's own channel, which is dropped (closed) when this returns.
        let standby = if self.forked {
            // A child speaks only when spoken to: a frame already waiting
            // would be taken for this invocation's.
            let next = self.standbys.pop_front();
            let why = match &next {
                None => Some("the worker has no standby"),
                Some(channel) if !silent(channel) => Some("a standby spoke before it was asked"),
                Some(_) => None,
            };
            if let Some(why) = why {
                self.kill();
                let message = format!("the sandbox killed the worker: {why}");
                return (Outcome::Err(InvocationError::new(ErrorCode::PlatformError, message)), false);
            }
            next
        } else {
            None
        };
        let on = standby.as_ref().map_or(On::Worker, On::Child);
        let sent = match on {
            On::Worker => self.send(&ToWorker::Invoke { invocation: invocation.clone() }),
            On::Child(channel) => send_frame(channel, &ToWorker::Invoke { invocation: invocation.clone() }),
        };
        if let Err(e) = sent {
            let mut err = match on {
                On::Worker => self.death(),
                On::Child(_) => self.child_death(),
            };
            self.kill();
            err.message = format!("{}: {err_message}", e, err_message = err.message);
            return (Outcome::Err(err), false);
        }
        // The worker forks the child after next while this one serves; one
        // it cannot be given (the server out of descriptors, say) ends it
        // after this invocation.
        let can_go_on = !self.forked || self.add_standby(Some(&invocation.module)).is_ok();
        let (mut log_lines, mut log_bytes, mut calls) = (0u32, 0usize, 0u32);
        let mut serving = None;
        loop {
            let message = match self.receive_on(on, hard_deadline, MAX_FRAME_BYTES) {
                Ok(message) => message,
                Err(e) if e.code == ErrorCode::TimeOut => {
                    self.kill();
                    let message =
                        format!("the function did not finish within {} ms", invocation.limits.deadline_ms);
                    return (Outcome::Err(InvocationError::new(ErrorCode::TimeOut, message)), false);
                }
                Err(e) => {
                    self.kill();
                    return (Outcome::Err(e), false);
                }
            };
            // In place, the worker reports a child's death itself; every
            // other frame must come from the process serving this
            // invocation.
            if matches!(on, On::Worker)
                && !matches!(message, FromWorker::InvocationDied { .. })
                && let Err(why) = self.check_sender(&mut serving)
            {
                self.kill();
                let message = format!("the sandbox killed the worker: {why}");
                return (Outcome::Err(InvocationError::new(ErrorCode::PlatformError, message)), false);
            }
            match message {
                FromWorker::Log { level, text } => {
                    log_lines += 1;
                    log_bytes += text.len();
                    // The worker bounds logs too; this holds if it lies.
                    if log_lines <= MAX_LOG_LINES + 1 && log_bytes <= MAX_LOG_BYTES as usize + 1024 {
                        logs.push((level, text));
                    }
                }
                FromWorker::HostCall { call, capability, args } => {
                    calls += 1;
                    let reply = if calls > MAX_HOST_CALLS {
                        HostReply::Err {
                            code: "TOO_MANY_CALLS".into(),
                            message: format!("an invocation may make at most {MAX_HOST_CALLS} host calls"),
                        }
                    } else {
                        host.handle(&capability, args)
                    };
                    let reply = ToWorker::HostReply { call, reply };
                    match on {
                        On::Worker => {
                            if self.send(&reply).is_err() {
                                return (Outcome::Err(self.death()), false);
                            }
                        }
                        // A child that answered while calls were in flight
                        // has exited and closed its channel: the answer is
                        // still there to read, and a child that died has
                        // its death read next.
                        On::Child(channel) => {
                            let _ = send_frame(channel, &reply);
                        }
                    }
                }
                FromWorker::Done { outcome } => {
                    let healthy = can_go_on
                        && match &outcome {
                            Outcome::Err(e) => e.code != ErrorCode::PlatformError,
                            Outcome::Ok { .. } => true,
                        };
                    let outcome = match outcome {
                        Outcome::Ok { result } if result.len() > kiln_ipc::MAX_PAYLOAD_BYTES => Outcome::Err(
                            InvocationError::new(ErrorCode::FunctionError, "the result is larger than 5 MB"),
                        ),
                        other => other,
                    };
                    return (outcome, healthy);
                }
                FromWorker::InvocationDied { code, signal } if matches!(on, On::Worker) => {
                    // The worker exits next; whatever the cause, replace it.
                    self.kill();
                    let why = death_reason("the invocation", signal, code);
                    return (Outcome::Err(InvocationError::new(ErrorCode::PlatformError, why)), false);
                }
                other => {
                    self.kill();
                    let message =
                        format!("the worker broke the protocol during an invocation: {}", variant(&other));
                    return (Outcome::Err(InvocationError::new(ErrorCode::PlatformError, message)), false);
                }
            }
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nothing waiting on `channel`, and its peer still there.
fn silent(channel: &UnixStream) -> bool {
    matches!(kiln_jail::wait_readable(channel, Duration::ZERO), Ok(false))
}

fn variant(m: &FromWorker) -> &'static str {
    match m {
        FromWorker::Ready { .. } => "ready",
        FromWorker::Compiled { .. } => "compiled",
        FromWorker::CompileFailed { .. } => "compileFailed",
        FromWorker::Loaded { .. } => "loaded",
        FromWorker::HostCall { .. } => "hostCall",
        FromWorker::Log { .. } => "log",
        FromWorker::Done { .. } => "done",
        FromWorker::InvocationDied { .. } => "invocationDied",
    }
}

/// How a process (`who`: the worker, or the process forked for an
/// invocation) ended, in words.
fn death_reason(who: &str, signal: Option<i32>, code: Option<i32>) -> String {
    match signal {
        Some(31) => format!("the sandbox killed {who}: it attempted a forbidden system call"),
        Some(9) => format!("{who} was killed"),
        Some(24) => format!("{who} exceeded its CPU time limit"),
        Some(sig @ (6 | 7 | 11)) => format!("the JavaScript engine crashed in {who} (signal {sig})"),
        Some(sig) => format!("{who} died from signal {sig}"),
        None => format!("{who} exited with status {}", code.unwrap_or(-1)),
    }
}

fn imports_of(
    bundle: &Bundle,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, kiln_ipc::Import>> {
    bundle.modules.iter().map(|(id, m)| (id.clone(), m.imports.clone())).collect()
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    let _ = kiln_crypto::fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The deadline a function gets, from the modules that use it: the lowest
/// applies when several do, as in Forge. `timeoutSeconds` counts only for
/// consumers and scheduled triggers.
pub fn caller_for(manifest: &kiln_manifest::Manifest, function: &str) -> Caller {
    let m = &manifest.modules;
    let refers =
        |t: &kiln_manifest::Target| matches!(t, kiln_manifest::Target::Function(k) if k.as_str() == function);
    let timeout = manifest.function(function).and_then(|f| f.timeout_seconds);
    let user = m.others.iter().any(|o| {
        o.resolver.as_ref().is_some_and(refers) || o.function.as_ref().is_some_and(|f| f.as_str() == function)
    });
    let web = m.webtriggers.iter().any(|w| refers(&w.target));
    let event = m.triggers.iter().any(|t| refers(&t.target));
    let long = m.scheduled_triggers.iter().any(|t| refers(&t.target))
        || m.consumers.iter().any(|c| c.target.function().is_some_and(|k| k.as_str() == function));
    if user {
        Caller::User
    } else if web || event || !long {
        Caller::WebTrigger
    } else {
        Caller::Background { timeout_seconds: timeout }
    }
}

/// How a worker that will serve as `serving` says is started: huge pages
/// pay only for one that forks per invocation, and a snapshot file is
/// only for one that puts its memory back.
fn worker_spec(config: &SandboxConfig, memory_mb: u32, serving: Serving) -> WorkerSpec {
    WorkerSpec {
        executable: config.worker_executable.clone(),
        args: config.worker_args.clone(),
        limits: ProcessLimits {
            // The engine's limit plus room for the executable, the
            // program's bytecode and the allocator.
            address_space_bytes: (u64::from(memory_mb) + 1024) << 20,
            cpu_seconds: 3_600,
        },
        namespaces: config.namespaces,
        inherit_stderr: config.inherit_stderr,
        huge_pages: serving == Serving::Forked && config.huge_pages,
        snapshots: serving == Serving::Reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(modules: &str) -> kiln_manifest::Manifest {
        let text = format!(
            "app:\n  id: ari:cloud:ecosystem::app/11111111-2222-4333-8444-555555555555\n  runtime:\n    name: nodejs22.x\nmodules:\n{modules}"
        );
        kiln_manifest::parse_str("manifest.yml", &text, &kiln_manifest::NoVariables)
            .map(|p| p.manifest)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn only_workers_that_fork_get_huge_pages_and_only_those_that_reset_a_snapshot_file() {
        let mut config = SandboxConfig::for_current_exe().unwrap_or_else(|e| panic!("{e}"));
        assert!(config.huge_pages, "on by default");
        assert!(worker_spec(&config, 128, Serving::Forked).huge_pages);
        assert!(!worker_spec(&config, 128, Serving::InPlace).huge_pages);
        assert!(!worker_spec(&config, 128, Serving::Reset).huge_pages);
        for serving in [Serving::InPlace, Serving::Forked, Serving::Reset] {
            assert_eq!(worker_spec(&config, 128, serving).snapshots, serving == Serving::Reset);
        }
        config.huge_pages = false;
        assert!(!worker_spec(&config, 128, Serving::Forked).huge_pages);
        assert_eq!(worker_spec(&config, 128, Serving::Forked).limits.address_space_bytes, (128 + 1024) << 20);
    }

    #[test]
    fn programs_reset_unless_told_to_fork_by_size() {
        let mut config = SandboxConfig::for_current_exe().unwrap_or_else(|e| panic!("{e}"));
        assert!(config.reset_instead_of_fork, "on by default");
        assert_eq!(Serving::for_program(&config, 0), Serving::Reset);
        assert_eq!(Serving::for_program(&config, FORK_ABOVE_BYTES), Serving::Reset);
        config.reset_instead_of_fork = false;
        assert_eq!(Serving::for_program(&config, FORK_ABOVE_BYTES - 1), Serving::InPlace);
        assert_eq!(Serving::for_program(&config, FORK_ABOVE_BYTES), Serving::Forked);
        config.fork_above_bytes = 0;
        assert_eq!(Serving::for_program(&config, 0), Serving::Forked);
    }

    #[test]
    fn deadlines_follow_the_modules_that_use_a_function() {
        let m = manifest(
            "  jira:issuePanel:\n    - {key: panel, resource: main, resolver: {function: ui}, title: P}\n  webtrigger:\n    - {key: hook, function: web}\n  trigger:\n    - {key: on, function: event, events: [avi:jira:created:issue]}\n  consumer:\n    - {key: c, queue: q, function: worker}\n  scheduledTrigger:\n    - {key: s, function: nightly, interval: day}\n  function:\n    - {key: ui, handler: index.ui}\n    - {key: web, handler: index.web, timeoutSeconds: 900}\n    - {key: event, handler: index.event, timeoutSeconds: 900}\n    - {key: worker, handler: index.worker, timeoutSeconds: 900}\n    - {key: nightly, handler: index.nightly}\nresources:\n  - {key: main, path: static}\n",
        );
        assert_eq!(caller_for(&m, "ui").deadline(), Duration::from_secs(25));
        assert_eq!(caller_for(&m, "web").deadline(), Duration::from_secs(55));
        assert_eq!(caller_for(&m, "event").deadline(), Duration::from_secs(55));
        assert_eq!(caller_for(&m, "worker").deadline(), Duration::from_secs(900));
        assert_eq!(caller_for(&m, "nightly").deadline(), Duration::from_secs(55));
    }
}
