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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_ipc::{
    CompiledModule, ErrorCode, HostReply, Import, Invocation, InvocationError, LogLevel, ModuleKind, Outcome,
};
use rquickjs::loader::bundle::Bundle;
use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::{
    CatchResultExt, CaughtError, Context, Ctx, Function, Module, Object, Promise, Runtime, Value,
};

pub use compile::{CompileError, compile};

/// Name of Kiln's prelude module (console, timers, URL, ...).
const PRELUDE: &str = "kiln:prelude";

/// Kiln's own modules, compiled in every worker from this source.
const KILN_MODULES: [(&str, &str); 6] = [
    (PRELUDE, include_str!("../js/prelude.js")),
    ("builtin:kiln:unsupported", include_str!("../js/builtins/unsupported.js")),
    ("builtin:@forge/api", include_str!("../js/builtins/forge-api.js")),
    ("builtin:@forge/kvs", include_str!("../js/builtins/forge-kvs.js")),
    ("builtin:@forge/resolver", include_str!("../js/builtins/forge-resolver.js")),
    ("builtin:@forge/events", include_str!("../js/builtins/forge-events.js")),
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
            let _ = ctx.eval::<(), _>("void 0");
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
                "'{specifier}' was not bundled with {importer}: only imports written as string literals are bundled"
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
        let ours = compile::compile_trusted(&KILN_MODULES).map_err(|e| LoadError::Prelude(e.to_string()))?;
        let mut table: Vec<(&'static str, &'static [u8])> =
            Vec::with_capacity(program.modules.len() + ours.len());
        for CompiledModule { name, code } in ours.into_iter().chain(program.modules) {
            table.push((Box::leak(name.into_boxed_str()), Box::leak(code.into_boxed_slice())));
        }
        let program = Program {
            modules: Box::leak(table.into_boxed_slice()),
            links: Links::new(program.kinds, program.imports),
        };
        Ok(Box::leak(Box::new(program)))
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
        "os" | "process" => Some("the host is not visible to app code; read variables from process.env"),
        _ => None,
    };
    match alternative {
        Some(why) => format!("Kiln does not provide the '{builtin}' module: {why}"),
        None => format!("Kiln does not provide the '{builtin}' module yet"),
    }
}

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
}

#[derive(Debug, Clone, Copy)]
struct Timer {
    id: u64,
    interval: Option<Duration>,
}

/// Run one invocation in a fresh runtime. Never panics on anything app code
/// does; engine faults surface as errors, or end the process.
pub fn run(program: &'static Program, invocation: &Invocation, host: &mut dyn Host) -> Outcome {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(invocation.limits.deadline_ms);
    let runtime = match Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return platform_error(format!("cannot create a runtime: {e}")),
    };
    runtime.set_memory_limit(usize::try_from(invocation.limits.memory_bytes).unwrap_or(usize::MAX));
    runtime.set_max_stack_size(usize::try_from(invocation.limits.stack_bytes).unwrap_or(256 * 1024));
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    runtime.set_interrupt_handler(Some(Box::new(move || {
        if Instant::now() >= deadline {
            flag.store(true, Ordering::Relaxed);
            true
        } else {
            false
        }
    })));
    runtime.set_loader(TableResolver(program), (Bundle(program.modules), BuiltinRefusal));
    let context = match Context::full(&runtime) {
        Ok(c) => c,
        Err(e) => return platform_error(format!("cannot create a context: {e}")),
    };
    let state = std::rc::Rc::new(std::cell::RefCell::new(Loop::default()));
    let outcome = context.with(|ctx| {
        let mut call =
            Call { ctx: ctx.clone(), state: state.clone(), invocation, deadline, interrupted: &interrupted };
        let outcome = call.run(program, host);
        call.flush(host);
        if call.state.borrow().logs_dropped > 0 {
            let dropped = call.state.borrow().logs_dropped;
            host.log(
                LogLevel::Warn,
                format!("[kiln] log limit reached: {dropped} further lines were dropped"),
            );
        }
        // Release the engine objects Rust still holds before the context goes.
        call.state.borrow_mut().installed = None;
        outcome
    });
    drop(context);
    drop(runtime);
    outcome
}

struct Call<'a, 'js> {
    ctx: Ctx<'js>,
    state: std::rc::Rc<std::cell::RefCell<Loop>>,
    invocation: &'a Invocation,
    deadline: Instant,
    interrupted: &'a AtomicBool,
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

    fn try_run(&mut self, program: &'static Program, host: &mut dyn Host) -> Result<String, Failure> {
        let ctx = self.ctx.clone();
        natives::install(&ctx, program, self.state.clone(), self.invocation.limits)
            .map_err(|e| self.engine_failure(e))?;
        natives::import_sync(&ctx, PRELUDE).catch(&ctx).map_err(|e| self.js_failure(e))?;
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
        let value = match returned.as_promise() {
            Some(promise) => self.settle(promise.clone(), host)?,
            None => returned,
        };
        // Drain jobs queued by the handler so their logs are not lost.
        self.drain();
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

    fn engine_failure(&self, e: rquickjs::Error) -> Failure {
        Failure::Outcome(InvocationError::new(ErrorCode::PlatformError, format!("engine setup failed: {e}")))
    }

    /// Turn a caught JavaScript error into a structured failure.
    fn js_failure(&self, error: CaughtError<'js>) -> Failure {
        if self.interrupted.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return self.timeout();
        }
        let (message, stack) = match &error {
            CaughtError::Exception(e) => {
                let name = e.as_object().get::<_, String>("name").unwrap_or_else(|_| "Error".into());
                let message = e.message().unwrap_or_default();
                (if message.is_empty() { name } else { format!("{name}: {message}") }, e.stack())
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
            CaughtError::Value(v) => (convert::describe(v), None),
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
