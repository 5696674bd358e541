//! `kiln-js`: the JavaScript engine inside a worker.
//!
//! [`compile`] turns an app's bundled sources into QuickJS bytecode (this runs
//! inside a jailed worker of the same app); [`Program::load`] takes that
//! bytecode for the worker's lifetime; [`run`] executes one function call in a
//! **fresh runtime and context** with a memory limit, a stack limit and an
//! interrupt handler tied to the deadline, and returns a structured
//! [`Outcome`]. Nothing survives from one call to the next: every runtime is
//! dropped when its call ends.
//!
//! The engine asks the outside world for things only through [`Host`]
//! (console lines, host calls and their replies); in a worker that is the IPC
//! channel, and the server decides every call.
//!
//! This crate trusts nothing it runs, but it is not the security boundary:
//! the process jail is. Engine bugs are expected to crash the worker; the
//! server replaces it.

#![forbid(unsafe_code)]

mod compile;
mod convert;
mod natives;
mod text;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kiln_ipc::{
    CompiledModule, ErrorCode, HostReply, Import, Invocation, InvocationError, LogLevel, ModuleKind, Outcome,
};
use rquickjs::context::intrinsic;
use rquickjs::loader::bundle::Bundle;
use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object, Persistent, Promise, Runtime, Value,
};

pub use compile::{CompileError, compile};

/// Name of Kiln's prelude module (console, timers, URL, ...).
const PRELUDE: &str = "kiln:prelude";

/// Kiln's own modules, compiled in every worker from this source. Each is
/// evaluated only when first imported (the prelude's lazy globals, an app's
/// `import`/`require`), so a module listed here costs a fresh runtime nothing.
const KILN_MODULES: [(&str, &str); 41] = [
    (PRELUDE, include_str!("../js/prelude.js")),
    ("kiln:format", include_str!("../js/lazy/format.js")),
    ("kiln:host", include_str!("../js/lazy/host.js")),
    ("kiln:natives", include_str!("../js/lazy/natives.js")),
    ("kiln:text", include_str!("../js/lazy/text.js")),
    ("kiln:url", include_str!("../js/lazy/url.js")),
    ("kiln:clone", include_str!("../js/lazy/clone.js")),
    ("kiln:crypto", include_str!("../js/lazy/crypto.js")),
    ("kiln:fetch", include_str!("../js/lazy/fetch.js")),
    ("kiln:abort", include_str!("../js/lazy/abort.js")),
    ("kiln:uncaught", include_str!("../js/lazy/uncaught.js")),
    ("kiln:base64", include_str!("../js/lazy/base64.js")),
    ("kiln:intl", include_str!("../js/lazy/intl.js")),
    ("kiln:intl-base", include_str!("../js/lazy/intl-base.js")),
    ("kiln:intl-number", include_str!("../js/lazy/intl-number.js")),
    ("kiln:intl-date", include_str!("../js/lazy/intl-date.js")),
    ("kiln:intl-collator", include_str!("../js/lazy/intl-collator.js")),
    ("kiln:intl-tables", include_str!("../js/lazy/intl-tables.js")),
    ("builtin:kiln:unsupported", include_str!("../js/builtins/unsupported.js")),
    ("builtin:@forge/api", include_str!("../js/builtins/forge-api.js")),
    ("builtin:@forge/kvs", include_str!("../js/builtins/forge-kvs.js")),
    ("builtin:@forge/resolver", include_str!("../js/builtins/forge-resolver.js")),
    ("builtin:@forge/events", include_str!("../js/builtins/forge-events.js")),
    ("builtin:@forge/metrics", include_str!("../js/builtins/forge-metrics.js")),
    ("builtin:node-fetch", include_str!("../js/builtins/node-fetch.js")),
    // Node's built-in modules that a sandbox can offer; the bundler names
    // them all `node:<name>`, however the app spelled the import.
    ("builtin:node:buffer", include_str!("../js/node/buffer.js")),
    ("builtin:node:crypto", include_str!("../js/node/crypto.js")),
    ("builtin:node:util", include_str!("../js/node/util.js")),
    ("builtin:node:util/types", include_str!("../js/node/util_types.js")),
    ("builtin:node:events", include_str!("../js/node/events.js")),
    ("builtin:node:url", include_str!("../js/node/url.js")),
    ("builtin:node:querystring", include_str!("../js/node/querystring.js")),
    ("builtin:node:path", include_str!("../js/node/path.js")),
    ("builtin:node:path/posix", include_str!("../js/node/path_posix.js")),
    ("builtin:node:assert", include_str!("../js/node/assert.js")),
    ("builtin:node:assert/strict", include_str!("../js/node/assert_strict.js")),
    ("builtin:node:string_decoder", include_str!("../js/node/string_decoder.js")),
    ("builtin:node:timers", include_str!("../js/node/timers.js")),
    ("builtin:node:timers/promises", include_str!("../js/node/timers_promises.js")),
    ("builtin:node:process", include_str!("../js/node/process.js")),
    ("builtin:node:stream", include_str!("../js/node/stream.js")),
];

/// Stack given to a compile run; compiling is recursive over the syntax tree.
const COMPILE_STACK_BYTES: usize = 1024 * 1024;

/// Most timers alive at once in one invocation. Stops a timer flood from
/// growing the schedule without bound.
pub const MAX_TIMERS: usize = 10_000;

/// Most host calls awaiting a reply at once in one invocation.
pub const MAX_PENDING_HOST_CALLS: usize = 64;

/// What the engine needs from outside while a call runs.
pub trait Host {
    /// A console line, already within the invocation's log limits.
    fn log(&mut self, level: LogLevel, text: String);
    /// Ask the host for something; the reply comes back through [`Host::wait`].
    fn call(&mut self, call: u64, capability: String, args: serde_json::Value);
    /// Wait for the next host reply, or until `until`.
    fn wait(&mut self, until: Instant) -> Option<(u64, HostReply)>;
    /// True once the host can no longer deliver anything (its channel
    /// failed); the invocation is then abandoned.
    fn broken(&self) -> bool {
        false
    }
}

/// Do the engine's one-time, process-wide initialisation now (a worker calls
/// this before it locks itself down).
pub fn warm_up() {
    if let Ok(runtime) = Runtime::new()
        && let Ok(context) = Context::full(&runtime)
    {
        context.with(|ctx| {
            // Local-time Date methods (`getHours`, `toString`, ...) ask the C
            // library for the time zone, which reads it from a file the
            // first time; after lockdown that read is a forbidden system
            // call that kills the worker. Asking once here caches the zone
            // for the process and every child forked from it.
            let _ = ctx.eval::<(), _>("void new Date(0).getTimezoneOffset()");
        });
    }
}

/// A worker's program: compiled modules (the app's and Kiln's prelude) and
/// how they link.
#[derive(Debug)]
pub struct Program {
    /// Engine module name → bytecode. Leaked: a worker serves one program for
    /// its whole life, and the engine's bundle loader needs `'static` data.
    modules: &'static [(&'static str, &'static [u8])],
    links: Links,
    /// `process.env`, as JSON: the app's variables, fixed for the worker's life.
    env: String,
}

/// How modules link: each module's kind and what each specifier loads.
#[derive(Debug, Clone, Default)]
pub(crate) struct Links {
    kinds: HashMap<String, ModuleKind>,
    imports: BTreeMap<String, BTreeMap<String, Import>>,
}

impl Links {
    pub(crate) fn new(
        kinds: impl IntoIterator<Item = (String, ModuleKind)>,
        imports: BTreeMap<String, BTreeMap<String, Import>>,
    ) -> Self {
        Links { kinds: kinds.into_iter().collect(), imports }
    }

    /// The engine name of what `specifier`, imported from module `from`, loads.
    fn resolve(&self, from: &str, specifier: &str) -> Result<Target, String> {
        let importer = from.strip_prefix("cjs:").unwrap_or(from);
        match self.imports.get(importer).and_then(|m| m.get(specifier)) {
            Some(Import::Module(id)) => self.target(id),
            Some(Import::Builtin(name)) => Ok(Target::builtin(name)),
            None => Err(format!(
                "'{specifier}' was not bundled with {importer}: only imports written as string literals are bundled, and only optional dependencies that are installed"
            )),
        }
    }

    fn target(&self, id: &str) -> Result<Target, String> {
        match self.kinds.get(id) {
            Some(kind) => Ok(Target { kind: *kind, id: id.to_owned(), name: id.to_owned() }),
            None => Err(format!("module '{id}' is not part of this app's bundle")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("Kiln's own modules failed to compile: {0}")]
    Prelude(String),
}

impl Program {
    /// Take a compiled program for the rest of this process's life.
    ///
    /// The bytecode must come from [`compile`] run by a worker of the same
    /// app (loading bytecode is as powerful as running native code inside
    /// the engine, which is why it never comes from outside and why a
    /// worker only ever loads its own app's).
    pub fn load(program: kiln_ipc::Program) -> Result<&'static Program, LoadError> {
        Program::load_with_env(program, &BTreeMap::new())
    }

    /// [`Program::load`], with the app's variables as `process.env`.
    pub fn load_with_env(
        program: kiln_ipc::Program,
        env: &BTreeMap<String, String>,
    ) -> Result<&'static Program, LoadError> {
        let env = serde_json::to_string(env).map_err(|e| LoadError::Prelude(e.to_string()))?;
        let ours = compile::compile_trusted(&KILN_MODULES).map_err(|e| LoadError::Prelude(e.to_string()))?;
        let mut table: Vec<(&'static str, &'static [u8])> =
            Vec::with_capacity(program.modules.len() + ours.len());
        for CompiledModule { name, code } in ours.into_iter().chain(program.modules) {
            table.push((Box::leak(name.into_boxed_str()), Box::leak(code.into_boxed_slice())));
        }
        let program = Program {
            modules: Box::leak(table.into_boxed_slice()),
            links: Links::new(program.kinds, program.imports),
            env,
        };
        Ok(Box::leak(Box::new(program)))
    }
}

impl Program {
    /// The ids of the app's modules, sorted: a stable numbering for them.
    pub fn module_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.links.kinds.keys().cloned().collect();
        ids.sort();
        ids
    }
}

/// A module as the prelude's `require` sees it.
#[derive(Debug, Clone)]
struct Target {
    kind: ModuleKind,
    id: String,
    /// The engine module name to import.
    name: String,
}

impl Target {
    fn builtin(name: &str) -> Self {
        Target { kind: ModuleKind::Esm, id: name.to_owned(), name: format!("builtin:{name}") }
    }

    fn kind_name(&self) -> &'static str {
        if self.name.starts_with("builtin:") {
            return "builtin";
        }
        match self.kind {
            ModuleKind::Esm => "esm",
            ModuleKind::CommonJs => "commonjs",
            ModuleKind::Json => "json",
        }
    }
}

/// Resolves imports through the bundle's import table, never the file system.
struct TableResolver(&'static Program);

impl Resolver for TableResolver {
    fn resolve<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        let program = self.0;
        resolve_engine_name(&program.links, base, name, |n| program.modules.iter().any(|(m, _)| *m == n))
    }
}

/// Resolve an import to an engine module name: through the import table
/// first; names the engine itself asks for (the prelude, an entry module, a
/// CommonJS wrapper, a built-in) are already engine names.
pub(crate) fn resolve_engine_name(
    links: &Links,
    base: &str,
    name: &str,
    is_engine_module: impl Fn(&str) -> bool,
) -> rquickjs::Result<String> {
    match links.resolve(base, name) {
        Ok(target) => Ok(target.name),
        Err(_) if name.starts_with("builtin:") || is_engine_module(name) => Ok(name.to_owned()),
        Err(message) => Err(rquickjs::Error::new_resolving_message(base, name, message)),
    }
}

/// Loads built-in modules Kiln does not provide (yet, or ever) as a clear error.
struct BuiltinRefusal;

impl Loader for BuiltinRefusal {
    fn load<'js>(
        &mut self,
        _ctx: &Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, rquickjs::module::Declared>> {
        let builtin = name.strip_prefix("builtin:").unwrap_or(name);
        Err(rquickjs::Error::new_loading_message(name, builtin_refusal(builtin)))
    }
}

/// Why a built-in module is not available, with Kiln's alternative.
fn builtin_refusal(builtin: &str) -> String {
    let bare = builtin.strip_prefix("node:").unwrap_or(builtin);
    let alternative = match bare.split('/').next().unwrap_or(bare) {
        "fs" => Some("app code has no file system; keep data with @forge/kvs"),
        "child_process" | "cluster" | "worker_threads" => Some("app code cannot start processes or threads"),
        "net" | "tls" | "dgram" | "dns" | "http" | "https" | "http2" => {
            Some("the sandbox has no network; reach declared hosts with fetch from @forge/api")
        }
        "vm" | "v8" | "inspector" | "repl" | "module" | "wasi" => Some("engine internals are not exposed"),
        "os" => Some("the host is not visible to app code; read variables from process.env"),
        _ => None,
    };
    match alternative {
        Some(why) => format!("Kiln does not provide the '{builtin}' module: {why}"),
        None => format!("Kiln does not provide the '{builtin}' module yet"),
    }
}

/// The engine's built-in objects each context starts with: everything
/// QuickJS offers except `performance` and `DOMException`, which the prelude
/// defines lazily (building them eagerly costs a fifth of a fresh context).
type Intrinsics = (
    intrinsic::Date,
    intrinsic::Eval,
    intrinsic::RegExpCompiler,
    intrinsic::RegExp,
    intrinsic::Json,
    intrinsic::Proxy,
    intrinsic::MapSet,
    intrinsic::TypedArrays,
    intrinsic::Promise,
    intrinsic::WeakRef,
);

/// State shared between the event loop and the native functions.
#[derive(Default)]
struct Loop {
    timers: BTreeMap<(Instant, u64), Timer>,
    next_timer: u64,
    live_timers: HashMap<u64, (Instant, u64)>,
    calls: Vec<(u64, String, serde_json::Value)>,
    next_call: u64,
    pending_calls: usize,
    logs: Vec<(LogLevel, String)>,
    log_lines: u32,
    log_bytes: u32,
    logs_dropped: u32,
    /// Functions the prelude registered for the engine.
    installed: Option<rquickjs::Persistent<Object<'static>>>,
    /// The invocation's limits and start, once it has started.
    limits: Option<kiln_ipc::Limits>,
    started: Option<Instant>,
    /// The invocation's runtime description (JSON), for `getAppContext()`.
    runtime: String,
    /// Math.random's xorshift128+ state.
    random: [u64; 2],
    /// Promises rejected with no handler attached, and their reasons, as
    /// the engine reports them; a handler attached later removes one. What
    /// is left when the invocation ends is logged, as Node reports it.
    unhandled: Vec<(Persistent<Value<'static>>, Persistent<Value<'static>>)>,
    /// Unhandled rejections past [`MAX_TRACKED_REJECTIONS`], only counted.
    unhandled_untracked: u32,
    /// The first exception nothing could catch (a microtask's, an event
    /// listener's), as the prelude described it: it ends the invocation.
    uncaught: Option<String>,
}

/// Most unhandled rejections one invocation keeps for its report.
const MAX_TRACKED_REJECTIONS: usize = 16;

impl Loop {
    /// Keep a console line unless the invocation's limits are reached;
    /// lines past them are counted.
    fn push_log(&mut self, level: LogLevel, text: String) {
        let bytes = u32::try_from(text.len()).unwrap_or(u32::MAX);
        let (max_lines, max_bytes) = self.limits.map_or((0, 0), |l| (l.max_log_lines, l.max_log_bytes));
        if self.log_lines >= max_lines || self.log_bytes.saturating_add(bytes) > max_bytes {
            self.logs_dropped = self.logs_dropped.saturating_add(1);
            return;
        }
        self.log_lines += 1;
        self.log_bytes = self.log_bytes.saturating_add(bytes);
        self.logs.push((level, text));
    }

    /// The engine's report that `promise` was rejected with no handler
    /// (`handled` false) or got one after all (`handled` true).
    fn track_rejection<'js>(
        &mut self,
        ctx: &Ctx<'js>,
        promise: Value<'js>,
        reason: Value<'js>,
        handled: bool,
    ) {
        if handled {
            let found =
                self.unhandled.iter().position(|(p, _)| p.clone().restore(ctx).is_ok_and(|p| p == promise));
            if let Some(i) = found {
                self.unhandled.remove(i);
            }
        } else if self.unhandled.len() < MAX_TRACKED_REJECTIONS {
            self.unhandled.push((Persistent::save(ctx, promise), Persistent::save(ctx, reason)));
        } else {
            self.unhandled_untracked = self.unhandled_untracked.saturating_add(1);
        }
    }

    /// Drop every engine value Rust holds, before the context goes.
    fn release_engine_values(&mut self) {
        self.installed = None;
        self.unhandled.clear();
    }
    /// A fresh seed from the kernel for Math.random.
    fn reseed_random(&mut self) {
        let mut bytes = [0u8; 16];
        if kiln_crypto::fill_random(&mut bytes).is_err() {
            // The kernel's generator does not fail in practice; the clock
            // still gives each invocation its own sequence if it does.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            bytes = nanos.to_le_bytes();
        }
        let (a, b) = bytes.split_at(8);
        let word = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap_or([1; 8]));
        self.random = [word(a) | 1, word(b)];
    }

    /// The next Math.random value, in [0, 1).
    fn next_random(&mut self) -> f64 {
        let [mut s1, s0] = self.random;
        let result = s0.wrapping_add(s1);
        s1 ^= s1 << 23;
        self.random = [s0, s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26)];
        (result >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    id: u64,
    interval: Option<Duration>,
}

/// Run one invocation in a fresh runtime. Never panics on anything app code
/// does; engine faults surface as errors, or end the process.
pub fn run(program: &'static Program, invocation: &Invocation, host: &mut dyn Host) -> Outcome {
    let (outcome, spent) = Prepared::new(program, None).run(invocation, host);
    drop(spent);
    outcome
}

/// A fresh runtime and context with Kiln's prelude loaded, made before the
/// invocation it will serve is known, so that creating them is off the
/// critical path. Each one serves exactly one invocation ([`Prepared::run`]
/// consumes it); nothing an invocation does can reach the next one's.
pub struct Prepared {
    program: &'static Program,
    state: Rc<RefCell<Loop>>,
    /// Nanoseconds after `clock` at which the interrupt handler stops the
    /// engine; `u64::MAX` until an invocation starts.
    deadline_nanos: Arc<AtomicU64>,
    clock: Instant,
    interrupted: Arc<AtomicBool>,
    setup_error: Option<String>,
    // Declared last: dropped after everything above that refers to it.
    context: Option<Context>,
    runtime: Option<Runtime>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").field("setup_error", &self.setup_error).finish_non_exhaustive()
    }
}

/// What is left of a [`Prepared`] after its invocation: dropping it frees
/// the runtime. Callers drop it after answering, so teardown costs no
/// latency.
#[derive(Debug)]
pub struct Spent(#[expect(dead_code, reason = "held only to be dropped later")] Prepared);

/// Memory and stack allowed while the prelude loads, before an invocation
/// sets its own limits.
const PREPARE_MEMORY_BYTES: usize = 64 * 1024 * 1024;
const PREPARE_STACK_BYTES: usize = 1024 * 1024;

/// How long an app module's top-level code may run when it is loaded ahead
/// of an invocation. Past it, the runtime is thrown away and the module
/// loads inside the invocation instead, under the invocation's own deadline.
pub const PRELOAD_DEADLINE: Duration = Duration::from_millis(250);

/// Console limits while a module loads ahead of its invocation; its lines
/// count towards that invocation's limits.
const PRELOAD_LOG_LIMITS: kiln_ipc::Limits = kiln_ipc::Limits {
    memory_bytes: PREPARE_MEMORY_BYTES as u64,
    stack_bytes: PREPARE_STACK_BYTES as u64,
    deadline_ms: 0,
    max_log_lines: 100,
    max_log_bytes: 200 * 1024,
    max_result_bytes: 0,
};

impl Prepared {
    /// A fresh runtime with the prelude loaded and, if `preload` names an app
    /// module, that module evaluated too, as a serverless runtime evaluates
    /// modules before the first event arrives. If the module cannot load
    /// cleanly within [`PRELOAD_DEADLINE`] (it throws, awaits the host, runs
    /// too long or too large), the result is a fresh runtime without it.
    pub fn new(program: &'static Program, preload: Option<&str>) -> Prepared {
        Prepared::with_preload(program, preload).0
    }

    /// As [`Prepared::new`], also saying whether the module was preloaded
    /// (callers stop asking for modules that never preload cleanly).
    pub fn with_preload(program: &'static Program, preload: Option<&str>) -> (Prepared, bool) {
        let prepared = Prepared::base(program);
        let Some(module) = preload else { return (prepared, false) };
        if prepared.setup_error.is_some() || prepared.preload(module).is_err() {
            drop(prepared);
            return (Prepared::base(program), false);
        }
        (prepared, true)
    }

    /// A fresh runtime with the prelude and every module of `modules`
    /// evaluated, in order. Modules that cannot load cleanly (see
    /// [`Prepared::new`]) are left out, and returned so that callers stop
    /// asking for them.
    pub fn with_preloads(program: &'static Program, modules: &[String]) -> (Prepared, Vec<String>) {
        let mut failed: Vec<String> = Vec::new();
        loop {
            let prepared = Prepared::base(program);
            if prepared.setup_error.is_some() {
                return (prepared, failed);
            }
            let bad = modules.iter().filter(|m| !failed.contains(m)).find(|m| prepared.preload(m).is_err());
            match bad {
                None => return (prepared, failed),
                // The runtime ran part of a module: start again without it.
                Some(module) => failed.push(module.clone()),
            }
        }
    }

    fn preload(&self, module: &str) -> Result<(), ()> {
        let (Some(context), Some(_)) = (&self.context, &self.runtime) else { return Err(()) };
        let until = u64::try_from((self.clock.elapsed() + PRELOAD_DEADLINE).as_nanos()).unwrap_or(u64::MAX);
        self.deadline_nanos.store(until, Ordering::Relaxed);
        self.state.borrow_mut().limits = Some(PRELOAD_LOG_LIMITS);
        let loaded = context.with(|ctx| -> Result<(), ()> {
            let installed = self.state.borrow().installed.clone().ok_or(())?;
            let entry: Function = installed.restore(&ctx).and_then(|o| o.get("entry")).map_err(drop)?;
            entry.call::<_, Value>((module, "")).catch(&ctx).map_err(drop)?;
            // Top-level await still pending means the module waits on
            // something only the invocation can provide.
            if ctx.execute_pending_job() {
                return Err(());
            }
            Ok(())
        });
        let calls_made = !self.state.borrow().calls.is_empty();
        self.deadline_nanos.store(u64::MAX, Ordering::Relaxed);
        if self.interrupted.load(Ordering::Relaxed) || calls_made {
            return Err(());
        }
        loaded
    }

    fn base(program: &'static Program) -> Prepared {
        let clock = Instant::now();
        let deadline_nanos = Arc::new(AtomicU64::new(u64::MAX));
        let interrupted = Arc::new(AtomicBool::new(false));
        let state = Rc::new(RefCell::new(Loop::default()));
        state.borrow_mut().reseed_random();
        let mut prepared = Prepared {
            program,
            state,
            deadline_nanos: deadline_nanos.clone(),
            clock,
            interrupted: interrupted.clone(),
            setup_error: None,
            context: None,
            runtime: None,
        };
        let runtime = match Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                prepared.setup_error = Some(format!("cannot create a runtime: {e}"));
                return prepared;
            }
        };
        runtime.set_memory_limit(PREPARE_MEMORY_BYTES);
        runtime.set_max_stack_size(PREPARE_STACK_BYTES);
        runtime.set_interrupt_handler(Some(Box::new(move || {
            let now = u64::try_from(clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
            if now >= deadline_nanos.load(Ordering::Relaxed) {
                interrupted.store(true, Ordering::Relaxed);
                true
            } else {
                false
            }
        })));
        runtime.set_loader(TableResolver(program), (Bundle(program.modules), BuiltinRefusal));
        let tracked = prepared.state.clone();
        runtime.set_host_promise_rejection_tracker(Some(Box::new(move |ctx, promise, reason, handled| {
            // The engine reports from inside JavaScript; Rust code that holds
            // the state across a call into it would make this borrow fail,
            // and then the report is skipped rather than the worker stopped.
            if let Ok(mut state) = tracked.try_borrow_mut() {
                state.track_rejection(&ctx, promise, reason, handled);
            }
        })));
        let context = match Context::custom::<Intrinsics>(&runtime) {
            Ok(c) => c,
            Err(e) => {
                prepared.setup_error = Some(format!("cannot create a context: {e}"));
                prepared.runtime = Some(runtime);
                return prepared;
            }
        };
        let setup = context.with(|ctx| -> Result<(), String> {
            natives::install(&ctx, program, prepared.state.clone())
                .map_err(|e| format!("engine setup failed: {e}"))?;
            natives::import_sync(&ctx, PRELUDE)
                .catch(&ctx)
                .map(drop)
                .map_err(|e| format!("the prelude failed: {e}"))
        });
        prepared.setup_error = setup.err();
        prepared.context = Some(context);
        prepared.runtime = Some(runtime);
        prepared
    }

    /// Serve one invocation. The runtime's limits and deadline apply from
    /// here on.
    pub fn run(self, invocation: &Invocation, host: &mut dyn Host) -> (Outcome, Spent) {
        if let Some(error) = &self.setup_error {
            let outcome = platform_error(error.clone());
            return (outcome, Spent(self));
        }
        let (Some(runtime), Some(context)) = (&self.runtime, &self.context) else {
            return (platform_error("the runtime is missing".into()), Spent(self));
        };
        let start = Instant::now();
        let deadline = start + Duration::from_millis(invocation.limits.deadline_ms);
        let deadline_nanos =
            u64::try_from(deadline.saturating_duration_since(self.clock).as_nanos()).unwrap_or(u64::MAX);
        self.deadline_nanos.store(deadline_nanos, Ordering::Relaxed);
        runtime.set_memory_limit(usize::try_from(invocation.limits.memory_bytes).unwrap_or(usize::MAX));
        runtime.set_max_stack_size(usize::try_from(invocation.limits.stack_bytes).unwrap_or(256 * 1024));
        {
            let mut state = self.state.borrow_mut();
            state.limits = Some(invocation.limits);
            state.started = Some(start);
            state.runtime.clone_from(&invocation.runtime);
            // Invocations forked from one prepared runtime must not share
            // a sequence.
            state.reseed_random();
        }
        self.interrupted.store(false, Ordering::Relaxed);
        let program = self.program;
        let interrupted = self.interrupted.clone();
        let outcome = context.with(|ctx| {
            let mut call = Call {
                ctx: ctx.clone(),
                state: self.state.clone(),
                invocation,
                deadline,
                interrupted: &interrupted,
                returned: None,
            };
            let outcome = call.run(program, host);
            call.report_unhandled_rejections();
            call.flush(host);
            let dropped = call.state.borrow().logs_dropped;
            if dropped > 0 {
                host.log(
                    LogLevel::Warn,
                    format!("[kiln] log limit reached: {dropped} further lines were dropped"),
                );
            }
            // Release the engine objects Rust still holds before the context goes.
            call.state.borrow_mut().release_engine_values();
            drop(call);
            outcome
        });
        (outcome, Spent(self))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Nothing may record engine values while the runtime is torn down.
        if let Some(runtime) = &self.runtime {
            runtime.set_host_promise_rejection_tracker(None);
        }
        // The context holds references into the runtime: it goes first.
        self.state.borrow_mut().release_engine_values();
        drop(self.context.take());
        drop(self.runtime.take());
    }
}

struct Call<'a, 'js> {
    ctx: Ctx<'js>,
    state: std::rc::Rc<std::cell::RefCell<Loop>>,
    invocation: &'a Invocation,
    deadline: Instant,
    interrupted: &'a AtomicBool,
    /// What the handler returned: its own rejection is the invocation's
    /// error, not an unhandled rejection.
    returned: Option<Value<'js>>,
}

/// How a JavaScript step failed.
enum Failure {
    Outcome(InvocationError),
}

impl<'js> Call<'_, 'js> {
    fn run(&mut self, program: &'static Program, host: &mut dyn Host) -> Outcome {
        match self.try_run(program, host) {
            Ok(result) => Outcome::Ok { result },
            Err(Failure::Outcome(e)) => Outcome::Err(e),
        }
    }

    fn try_run(&mut self, _program: &'static Program, host: &mut dyn Host) -> Result<String, Failure> {
        let ctx = self.ctx.clone();
        let entry: Function = self.installed("entry")?;
        let handler: Value = entry
            .call((self.invocation.module.as_str(), self.invocation.export.as_str()))
            .catch(&ctx)
            .map_err(|e| self.js_failure(e))?;
        let Some(handler) = handler.as_function().cloned() else {
            return Err(Failure::Outcome(InvocationError::new(
                ErrorCode::FunctionError,
                format!(
                    "export '{}' of {} is not a function (it is {})",
                    self.invocation.export,
                    self.invocation.module,
                    handler.type_name()
                ),
            )));
        };
        let payload =
            ctx.json_parse(self.invocation.payload.as_str()).catch(&ctx).map_err(|e| self.js_failure(e))?;
        let context =
            ctx.json_parse(self.invocation.context.as_str()).catch(&ctx).map_err(|e| self.js_failure(e))?;
        let returned: Value = handler.call((payload, context)).catch(&ctx).map_err(|e| self.js_failure(e))?;
        self.returned = Some(returned.clone());
        let value = match returned.as_promise() {
            Some(promise) => self.settle(promise.clone(), host)?,
            None => returned,
        };
        // Drain jobs queued by the handler so their logs are not lost.
        self.drain();
        self.check_uncaught()?;
        let max = self.invocation.limits.max_result_bytes as usize;
        convert::to_json(&ctx, &value, max).map_err(|e| match e {
            convert::ConvertError::Js(err) => self.js_failure(err),
            convert::ConvertError::Refused(message) => {
                Failure::Outcome(InvocationError::new(ErrorCode::FunctionError, message))
            }
        })
    }

    /// Drive the event loop until `promise` settles or the deadline passes.
    fn settle(&mut self, promise: Promise<'js>, host: &mut dyn Host) -> Result<Value<'js>, Failure> {
        let ctx = self.ctx.clone();
        loop {
            self.drain();
            self.flush(host);
            if self.interrupted.load(Ordering::Relaxed) {
                return Err(self.timeout());
            }
            self.check_uncaught()?;
            match promise.state() {
                rquickjs::promise::PromiseState::Resolved => {
                    return promise
                        .result::<Value>()
                        .unwrap_or(Ok(Value::new_undefined(ctx.clone())))
                        .catch(&ctx)
                        .map_err(|e| self.js_failure(e));
                }
                rquickjs::promise::PromiseState::Rejected => {
                    let error = promise.result::<Value>().map(|r| r.catch(&ctx));
                    return match error {
                        Some(Err(e)) => Err(self.js_failure(e)),
                        _ => Err(self.js_failure(CaughtError::Error(rquickjs::Error::Unknown))),
                    };
                }
                rquickjs::promise::PromiseState::Pending => {}
            }
            let now = Instant::now();
            if now >= self.deadline {
                return Err(self.timeout());
            }
            if self.fire_due_timers(now)? {
                continue;
            }
            let (next_timer, pending_calls) = {
                let state = self.state.borrow();
                (state.timers.keys().next().map(|(at, _)| *at), state.pending_calls)
            };
            let wake = next_timer.map_or(self.deadline, |t| t.min(self.deadline));
            if host.broken() {
                return Err(Failure::Outcome(InvocationError::new(
                    ErrorCode::PlatformError,
                    "the channel to the server failed",
                )));
            }
            if pending_calls > 0 {
                if let Some((call, reply)) = host.wait(wake) {
                    self.state.borrow_mut().pending_calls = pending_calls.saturating_sub(1);
                    self.deliver(call, reply)?;
                }
            } else if next_timer.is_some() {
                std::thread::sleep(wake.saturating_duration_since(Instant::now()));
            } else {
                return Err(Failure::Outcome(InvocationError::new(
                    ErrorCode::FunctionError,
                    "the handler returned a promise that can never settle: nothing (no timer, no host call) is left that could resolve it",
                )));
            }
        }
    }

    /// Fire every timer due at `now`; true if any fired.
    fn fire_due_timers(&mut self, now: Instant) -> Result<bool, Failure> {
        let mut fired = false;
        loop {
            let due = {
                let mut state = self.state.borrow_mut();
                let first = state.timers.keys().next().copied();
                match first {
                    Some(key) if key.0 <= now => {
                        let timer = state.timers.remove(&key);
                        if let Some(t) = timer {
                            match t.interval {
                                Some(every) => {
                                    let next = (now + every.max(Duration::from_millis(1)), key.1);
                                    state.timers.insert(next, t);
                                    state.live_timers.insert(t.id, next);
                                }
                                None => {
                                    state.live_timers.remove(&t.id);
                                }
                            }
                        }
                        timer
                    }
                    _ => None,
                }
            };
            let Some(timer) = due else { return Ok(fired) };
            fired = true;
            let fire: Function = self.installed("fireTimer")?;
            let result: rquickjs::Result<()> = fire.call((timer.id, timer.interval.is_some()));
            if let Err(e) = result.catch(&self.ctx) {
                let Failure::Outcome(mut err) = self.js_failure(e);
                if err.code == ErrorCode::FunctionError {
                    err.message = format!("uncaught exception in a timer callback: {}", err.message);
                }
                return Err(Failure::Outcome(err));
            }
            self.drain();
        }
    }

    fn deliver(&mut self, call: u64, reply: HostReply) -> Result<(), Failure> {
        let settle: Function = self.installed("settleCall")?;
        let result: rquickjs::Result<()> = match reply {
            HostReply::Ok { value } => settle.call((call, true, value.to_string(), "", "")),
            HostReply::Err { code, message } => settle.call((call, false, "null", code, message)),
        };
        result.catch(&self.ctx).map_err(|e| self.js_failure(e))
    }

    fn installed<T: rquickjs::FromJs<'js>>(&self, name: &str) -> Result<T, Failure> {
        let object = self.state.borrow().installed.clone();
        let Some(object) = object else {
            return Err(Failure::Outcome(InvocationError::new(
                ErrorCode::PlatformError,
                "the prelude did not install itself",
            )));
        };
        object.restore(&self.ctx).and_then(|o| o.get(name)).map_err(|e| {
            Failure::Outcome(InvocationError::new(
                ErrorCode::PlatformError,
                format!("prelude function {name}: {e}"),
            ))
        })
    }

    /// Run queued jobs (promise reactions, microtasks) until none is left
    /// or the deadline passes: a job that always queues another would
    /// otherwise keep this loop busy between interrupt checks.
    fn drain(&self) {
        let mut ran = 0u32;
        while self.ctx.execute_pending_job() {
            ran = ran.wrapping_add(1);
            if ran.is_multiple_of(256)
                && (Instant::now() >= self.deadline || self.interrupted.load(Ordering::Relaxed))
            {
                return;
            }
        }
    }

    /// Fail the invocation if JavaScript met an exception nothing could catch.
    fn check_uncaught(&self) -> Result<(), Failure> {
        if self.interrupted.load(Ordering::Relaxed) {
            return Err(self.timeout());
        }
        match self.state.borrow_mut().uncaught.take() {
            Some(message) => Err(Failure::Outcome(InvocationError::new(ErrorCode::FunctionError, message))),
            None => Ok(()),
        }
    }

    /// Log each promise that was rejected during the invocation and never
    /// got a handler, as Node reports one (where it also ends the process).
    fn report_unhandled_rejections(&mut self) {
        let (unhandled, untracked) = {
            let mut state = self.state.borrow_mut();
            (std::mem::take(&mut state.unhandled), std::mem::take(&mut state.unhandled_untracked))
        };
        for (promise, reason) in unhandled {
            let (Ok(promise), Ok(reason)) = (promise.restore(&self.ctx), reason.restore(&self.ctx)) else {
                continue;
            };
            if self.returned.as_ref() == Some(&promise) {
                continue;
            }
            let text = match reason.as_object().filter(|_| reason.is_error()) {
                Some(error) => {
                    let field = |key: &str| {
                        let value: Value = error.get(key).ok()?;
                        text::describe_value(&self.ctx, &value)
                    };
                    let name = field("name").unwrap_or_else(|| "Error".into());
                    let message = field("message").unwrap_or_default();
                    let stack = field("stack").unwrap_or_default();
                    format!("{name}: {message}\n{stack}").trim_end().to_owned()
                }
                None => text::describe_value(&self.ctx, &reason).unwrap_or_else(|| "undefined".into()),
            };
            self.state.borrow_mut().push_log(LogLevel::Error, format!("Unhandled promise rejection: {text}"));
        }
        if untracked > 0 {
            self.state
                .borrow_mut()
                .push_log(LogLevel::Error, format!("{untracked} more unhandled promise rejections"));
        }
    }

    /// Send queued console lines and host calls.
    fn flush(&mut self, host: &mut dyn Host) {
        let (logs, calls) = {
            let mut state = self.state.borrow_mut();
            (std::mem::take(&mut state.logs), std::mem::take(&mut state.calls))
        };
        for (level, text) in logs {
            host.log(level, text);
        }
        for (id, capability, args) in calls {
            host.call(id, capability, args);
        }
    }

    fn timeout(&self) -> Failure {
        Failure::Outcome(InvocationError::new(
            ErrorCode::TimeOut,
            format!("the function did not finish within {} ms", self.invocation.limits.deadline_ms),
        ))
    }

    /// Turn a caught JavaScript error into a structured failure.
    fn js_failure(&self, error: CaughtError<'js>) -> Failure {
        if self.interrupted.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return self.timeout();
        }
        let (message, stack) = match &error {
            CaughtError::Exception(e) => {
                let text = |key: &str| {
                    let value: Value = e.as_object().get(key).ok()?;
                    text::describe_value(&self.ctx, &value)
                };
                let name = text("name").unwrap_or_else(|| "Error".into());
                let message = text("message").unwrap_or_default();
                (if message.is_empty() { name } else { format!("{name}: {message}") }, text("stack"))
            }
            // When memory is exhausted so completely that the engine cannot
            // even build its "out of memory" error, what it throws is `null`
            // (refcounting frees the heap at once, so usage afterwards cannot
            // tell). App code rarely throws null; the report says both.
            CaughtError::Value(v) if v.is_null() || v.type_of() == rquickjs::Type::Uninitialized => {
                return Failure::Outcome(InvocationError::new(
                    ErrorCode::FunctionOutOfMemory,
                    format!(
                        "the function ran out of memory (limit {} MB), or threw null",
                        self.invocation.limits.memory_bytes / (1024 * 1024)
                    ),
                ));
            }
            CaughtError::Value(v) => (convert::describe(&self.ctx, v), None),
            CaughtError::Error(e) => (e.to_string(), None),
        };
        let out_of_memory = message.contains("out of memory");
        let code = if out_of_memory { ErrorCode::FunctionOutOfMemory } else { ErrorCode::FunctionError };
        let message = if out_of_memory {
            format!(
                "the function ran out of memory (limit {} MB): {message}",
                self.invocation.limits.memory_bytes / (1024 * 1024)
            )
        } else {
            message
        };
        Failure::Outcome(InvocationError {
            code,
            message: truncate(message, 8 * 1024),
            stack: stack.map(|s| truncate(s, 16 * 1024)),
        })
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn platform_error(message: String) -> Outcome {
    Outcome::Err(InvocationError::new(ErrorCode::PlatformError, message))
}
