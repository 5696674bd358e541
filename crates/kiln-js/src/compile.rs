//! Sources to bytecode, inside the worker.
//!
//! Every module becomes an ES module for the engine:
//! - an ES module is compiled as is (prefixed, on its first line, with a
//!   `require` bound to its own imports when it calls `require()`);
//! - a CommonJS module becomes two engine modules: `cjs:<id>`, whose default
//!   export is the module body wrapped in Node's
//!   `(exports, require, module, __filename, __dirname)` function, and `<id>`,
//!   a facade that runs it through the prelude's module cache and re-exports
//!   its statically known names for ES importers;
//! - a JSON module becomes `export default JSON.parse("...")`.
//!
//! Compiled modules run in strict mode (every engine module is an ES module):
//! CommonJS code that depends on sloppy mode fails here, at deploy, with the
//! engine's message.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use kiln_ipc::{CompiledModule, Import, ModuleKind, SourceModule};
use rquickjs::loader::{ImportAttributes, Loader, Resolver};
use rquickjs::{CatchResultExt, CaughtError, Context, Module, Runtime, WriteOptions};

use crate::{Links, resolve_engine_name};

/// Memory one compile run may use.
const COMPILE_MEMORY_BYTES: usize = 512 * 1024 * 1024;

/// How long compiling a whole app may take.
const COMPILE_DEADLINE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{module}: {message}")]
    Module { module: String, message: String },
    #[error("the engine failed: {0}")]
    Engine(String),
}

/// Compile an app's modules to bytecode.
///
/// The engine resolves and loads a module's imports while compiling it, so
/// compiling runs with a loader that declares each dependency (from the same
/// sources) as it is asked for; built-ins compile against empty stand-ins,
/// since only their names matter until link time.
pub fn compile(
    sources: &[SourceModule],
    imports: &BTreeMap<String, BTreeMap<String, Import>>,
) -> Result<Vec<CompiledModule>, CompileError> {
    let engine = |e: rquickjs::Error| CompileError::Engine(e.to_string());
    let runtime = Runtime::new().map_err(engine)?;
    runtime.set_memory_limit(COMPILE_MEMORY_BYTES);
    runtime.set_max_stack_size(super::COMPILE_STACK_BYTES);
    let deadline = Instant::now() + COMPILE_DEADLINE;
    runtime.set_interrupt_handler(Some(Box::new(move || Instant::now() >= deadline)));

    let mut pending: BTreeMap<String, (String, String)> = BTreeMap::new();
    for source in sources {
        for (name, code) in engine_modules(source) {
            pending.insert(name, (source.id.clone(), code));
        }
    }
    let links = Links::new(sources.iter().map(|s| (s.id.clone(), s.kind)), imports.clone());
    compile_modules(runtime, pending, links)
}

/// Compile Kiln's own modules (the prelude, the built-ins) to bytecode.
pub(crate) fn compile_trusted(modules: &[(&str, &str)]) -> Result<Vec<CompiledModule>, CompileError> {
    let runtime = Runtime::new().map_err(|e| CompileError::Engine(e.to_string()))?;
    runtime.set_max_stack_size(super::COMPILE_STACK_BYTES);
    let pending = modules
        .iter()
        .map(|(name, code)| ((*name).to_owned(), ((*name).to_owned(), (*code).to_owned())))
        .collect();
    compile_modules(runtime, pending, Links::default())
}

/// Compile engine modules (name → (bundle id, source)) in `runtime`.
fn compile_modules(
    runtime: Runtime,
    pending: BTreeMap<String, (String, String)>,
    links: Links,
) -> Result<Vec<CompiledModule>, CompileError> {
    let engine = |e: rquickjs::Error| CompileError::Engine(e.to_string());
    let shared = Rc::new(RefCell::new(Compiling { pending, done: Vec::new(), failure: None }));
    runtime.set_loader(CompileResolver { links, shared: shared.clone() }, CompileLoader(shared.clone()));
    let context = Context::full(&runtime).map_err(engine)?;
    context.with(|ctx| {
        loop {
            let next = shared.borrow().pending.keys().next().cloned();
            let Some(name) = next else { break };
            let result = load_one(&ctx, &shared, &name);
            if let Some(failure) = shared.borrow_mut().failure.take() {
                return Err(failure);
            }
            if let Err(message) = result {
                let module =
                    shared.borrow().pending.get(&name).map_or_else(|| name.clone(), |(id, _)| id.clone());
                return Err(CompileError::Module { module, message });
            }
        }
        Ok(())
    })?;
    let done = std::mem::take(&mut shared.borrow_mut().done);
    Ok(done)
}

/// Compiler state the loader shares: sources not yet compiled, results.
struct Compiling {
    /// Engine name → (bundle module id, source).
    pending: BTreeMap<String, (String, String)>,
    done: Vec<CompiledModule>,
    /// The first error met inside the loader, reported with its module.
    failure: Option<CompileError>,
}

/// Declare `name` from its source and record its bytecode.
fn load_one<'js>(
    ctx: &rquickjs::Ctx<'js>,
    shared: &Rc<RefCell<Compiling>>,
    name: &str,
) -> Result<Module<'js, rquickjs::module::Declared>, String> {
    let Some((id, code)) = shared.borrow_mut().pending.remove(name) else {
        return Err(format!("module '{name}' is not in the bundle"));
    };
    let declared = Module::declare(ctx.clone(), name, code).catch(ctx).map_err(|e| describe(&e));
    let declared = match declared {
        Ok(m) => m,
        Err(message) => {
            let mut s = shared.borrow_mut();
            if s.failure.is_none() {
                s.failure = Some(CompileError::Module { module: id, message: message.clone() });
            }
            return Err(message);
        }
    };
    // Keep line information: stack traces should name app lines.
    let bytes = declared
        .write(WriteOptions { strip_source: true, ..WriteOptions::default() })
        .catch(ctx)
        .map_err(|e| describe(&e))?;
    shared.borrow_mut().done.push(CompiledModule { name: name.to_owned(), code: bytes });
    Ok(declared)
}

struct CompileResolver {
    links: Links,
    shared: Rc<RefCell<Compiling>>,
}

impl Resolver for CompileResolver {
    fn resolve<'js>(
        &mut self,
        _ctx: &rquickjs::Ctx<'js>,
        base: &str,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<String> {
        let shared = &self.shared;
        resolve_engine_name(&self.links, base, name, |n| {
            let s = shared.borrow();
            s.pending.contains_key(n) || s.done.iter().any(|m| m.name == n)
        })
    }
}

struct CompileLoader(Rc<RefCell<Compiling>>);

impl Loader for CompileLoader {
    fn load<'js>(
        &mut self,
        ctx: &rquickjs::Ctx<'js>,
        name: &str,
        _attributes: Option<ImportAttributes<'js>>,
    ) -> rquickjs::Result<Module<'js, rquickjs::module::Declared>> {
        let ours = self.0.borrow().pending.contains_key(name);
        if !ours && name.starts_with("builtin:") {
            // Built-ins are linked in the worker; an empty stand-in lets the
            // importer compile.
            return Module::declare(ctx.clone(), name, "");
        }
        load_one(ctx, &self.0, name).map_err(|message| rquickjs::Error::new_loading_message(name, message))
    }
}

fn describe(error: &CaughtError<'_>) -> String {
    match error {
        CaughtError::Exception(e) => {
            let message = e.message().unwrap_or_default();
            match e.stack() {
                Some(stack) if !stack.trim().is_empty() => format!("{message}\n{}", stack.trim_end()),
                _ => message,
            }
        }
        CaughtError::Value(v) => format!("{v:?}"),
        CaughtError::Error(e) => e.to_string(),
    }
}

/// The engine modules one bundled source becomes.
fn engine_modules(source: &SourceModule) -> Vec<(String, String)> {
    let id_literal = js_string(&source.id);
    match source.kind {
        ModuleKind::Esm if source.uses_require => vec![(
            source.id.clone(),
            // Same line as the module's first line, so line numbers hold.
            format!("const require = __kilnModules.makeRequire({id_literal}); {}", source.code),
        )],
        ModuleKind::Esm => vec![(source.id.clone(), source.code.clone())],
        ModuleKind::CommonJs => {
            let wrapper = format!(
                "export default function (exports, require, module, __filename, __dirname) {{{}\n}}",
                source.code
            );
            let mut facade = format!(
                "const m = __kilnModules.requireById({id_literal});\n\
                 export default (m !== null && typeof m === 'object' && m.__esModule && 'default' in m) ? m.default : m;\n"
            );
            let mut n = 0;
            for name in &source.exports {
                if name == "default" || !is_identifier_name(name) {
                    continue;
                }
                facade.push_str(&format!(
                    "const __k{n} = m == null ? undefined : m[{}];\nexport {{ __k{n} as {name} }};\n",
                    js_string(name)
                ));
                n += 1;
            }
            vec![(format!("cjs:{}", source.id), wrapper), (source.id.clone(), facade)]
        }
        ModuleKind::Json => {
            vec![(source.id.clone(), format!("export default JSON.parse({});", js_string(&source.code)))]
        }
    }
}

/// A JavaScript string literal for `s` (JSON string syntax is valid JS).
fn js_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn is_identifier_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}
