//! What the engine's in-process tests share: a fake host that records what an
//! app logs and asks for, a builder for an app's modules, and one invocation
//! under fixed limits.

#![allow(dead_code, reason = "each test file uses part of this")]

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use kiln_ipc::{
    HostReply, Import, Invocation, InvocationError, Limits, LogLevel, ModuleKind, Outcome, SourceModule,
};
use kiln_js::{Host, Program, compile, run};
use serde_json::Value;

/// The module a test app's entry point is in.
pub(crate) const INDEX: &str = "src/index.js";

/// How a fake host answers a host call, from its capability and arguments.
pub(crate) type Responder = Box<dyn FnMut(&str, &Value) -> HostReply>;

/// Records every log line and host call, and answers each call with its
/// responder; without one it never answers, so a call waits out the deadline.
pub(crate) struct FakeHost {
    pub(crate) logs: Vec<(LogLevel, String)>,
    pub(crate) calls: Vec<(String, Value)>,
    queued: VecDeque<(u64, String, Value)>,
    respond: Option<Responder>,
}

impl FakeHost {
    pub(crate) fn answering(respond: Responder) -> Self {
        FakeHost { logs: Vec::new(), calls: Vec::new(), queued: VecDeque::new(), respond: Some(respond) }
    }

    pub(crate) fn silent() -> Self {
        FakeHost { logs: Vec::new(), calls: Vec::new(), queued: VecDeque::new(), respond: None }
    }
}

impl Host for FakeHost {
    fn log(&mut self, level: LogLevel, text: String) {
        self.logs.push((level, text));
    }
    fn call(&mut self, call: u64, capability: String, args: Value) {
        self.calls.push((capability.clone(), args.clone()));
        if self.respond.is_some() {
            self.queued.push_back((call, capability, args));
        }
    }
    fn wait(&mut self, until: Instant) -> Option<(u64, HostReply)> {
        match (self.queued.pop_front(), self.respond.as_mut()) {
            (Some((id, capability, args)), Some(respond)) => Some((id, respond(&capability, &args))),
            _ => {
                std::thread::sleep(until.saturating_duration_since(Instant::now()));
                None
            }
        }
    }
}

/// An app's modules and what each imports, loaded as one program.
pub(crate) struct App {
    sources: Vec<SourceModule>,
    imports: BTreeMap<String, BTreeMap<String, Import>>,
}

impl App {
    pub(crate) fn new() -> Self {
        App { sources: Vec::new(), imports: BTreeMap::new() }
    }

    pub(crate) fn esm(mut self, id: &str, code: &str) -> Self {
        let uses_require = code.contains("require(");
        self.sources.push(SourceModule {
            id: id.into(),
            kind: ModuleKind::Esm,
            code: code.into(),
            exports: vec![],
            uses_require,
        });
        self
    }

    pub(crate) fn cjs(mut self, id: &str, code: &str, exports: &[&str]) -> Self {
        self.sources.push(SourceModule {
            id: id.into(),
            kind: ModuleKind::CommonJs,
            code: code.into(),
            exports: exports.iter().map(|s| (*s).to_owned()).collect(),
            uses_require: false,
        });
        self
    }

    pub(crate) fn json(mut self, id: &str, code: &str) -> Self {
        self.sources.push(SourceModule {
            id: id.into(),
            kind: ModuleKind::Json,
            code: code.into(),
            exports: vec![],
            uses_require: false,
        });
        self
    }

    /// `from` imports `spec` as the module `to`, or as a built-in when `to`
    /// is `builtin:<name>`.
    pub(crate) fn import(mut self, from: &str, spec: &str, to: &str) -> Self {
        let target = if to.starts_with("builtin:") {
            Import::Builtin(to.trim_start_matches("builtin:").into())
        } else {
            Import::Module(to.into())
        };
        self.imports.entry(from.into()).or_default().insert(spec.into(), target);
        self
    }

    pub(crate) fn load(self) -> &'static Program {
        let modules = compile(&self.sources, &self.imports).unwrap();
        let kinds = self.sources.iter().map(|s| (s.id.clone(), s.kind)).collect();
        Program::load(kiln_ipc::Program { modules, kinds, imports: self.imports }).unwrap()
    }
}

/// An app of one ES module, `src/index.js`, that may import each of
/// `builtins` by its own name.
pub(crate) fn index_importing(code: &str, builtins: &[&str]) -> &'static Program {
    builtins
        .iter()
        .fold(App::new().esm(INDEX, code), |app, name| app.import(INDEX, name, &format!("builtin:{name}")))
        .load()
}

pub(crate) fn limits() -> Limits {
    Limits {
        memory_bytes: 64 << 20,
        stack_bytes: 512 << 10,
        deadline_ms: 5_000,
        max_log_lines: 100,
        max_log_bytes: 200 << 10,
        max_result_bytes: 5 << 20,
    }
}

/// A call of `module`'s `export` with `payload` and `context` as JSON text.
pub(crate) fn invocation(
    module: &str,
    export: &str,
    payload: &str,
    context: &str,
    limits: Limits,
) -> Invocation {
    Invocation {
        id: "test".into(),
        module: module.into(),
        export: export.into(),
        payload: payload.into(),
        context: context.into(),
        runtime: String::new(),
        limits,
    }
}

/// Call `src/index.js`'s `export` with `payload` and `context` under
/// [`limits`], and return the outcome and the host.
pub(crate) fn run_index(
    program: &'static Program,
    export: &str,
    payload: &Value,
    context: &Value,
    mut host: FakeHost,
) -> (Outcome, FakeHost) {
    let invocation = invocation(INDEX, export, &payload.to_string(), &context.to_string(), limits());
    let outcome = run(program, &invocation, &mut host);
    (outcome, host)
}

pub(crate) fn ok(outcome: Outcome) -> Value {
    match outcome {
        Outcome::Ok { result } => serde_json::from_str(&result).unwrap(),
        Outcome::Err(e) => panic!("expected success, got {e:?}"),
    }
}

pub(crate) fn err(outcome: Outcome) -> InvocationError {
    match outcome {
        Outcome::Err(e) => e,
        Outcome::Ok { result } => panic!("expected an error, got {result}"),
    }
}
