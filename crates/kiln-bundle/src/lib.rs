//! `kiln-bundle`: an app's sources turned into one content-addressed bundle.
//!
//! [`build`] starts from the file of every handler the manifest names,
//! compiles TypeScript and JSX away, follows every static `import`,
//! `export ... from`, `import()` and `require()` Node-style (relative files,
//! `node_modules`, `package.json` `exports` and `main`), and records for each
//! module exactly which module each specifier loads. Every `@forge/*` import
//! resolves to Kiln's own built-in module whatever `node_modules` holds, and
//! Node's built-in modules resolve to Kiln's built-ins as well. A handler
//! whose file, module or export is missing is an error that names it.
//!
//! The bundle is plain data: compiling it to bytecode happens inside the
//! sandbox, and running it is not this crate's business. Nothing here
//! executes app code.

#![forbid(unsafe_code)]

mod analyze;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Component, Path, PathBuf};

use kiln_crypto::Sha256;
use kiln_manifest::Manifest;
use oxc_resolver::{ResolveError, ResolveOptions, Resolver};
use serde::{Deserialize, Serialize};

/// Module kinds and import targets are the sandbox's own vocabulary: the
/// bundle hands them to the worker as they are.
pub use kiln_ipc::{Import, ModuleKind};

/// Largest bundle, counting the source of every module: Forge's app size limit.
pub const MAX_BUNDLE_BYTES: u64 = 100 * 1024 * 1024;

/// Most modules in one bundle. Bounds deploy time and the size of the module
/// table the sandbox loads; Forge caps resource bundles at 5,000 files too.
pub const MAX_BUNDLE_FILES: usize = 5_000;

/// The bundle encoding version, bumped when the layout changes.
pub const BUNDLE_FORMAT: u32 = 1;

/// Extensions tried, in order, for an extensionless handler file or import.
pub const SOURCE_EXTENSIONS: [&str; 8] = [".ts", ".tsx", ".js", ".jsx", ".mjs", ".cjs", ".mts", ".cts"];

/// The `@forge/*` packages Kiln provides today. Others resolve to built-in
/// placeholders that fail loudly at run time, and deploy warns about them.
pub const FORGE_MODULES: [&str; 5] =
    ["@forge/api", "@forge/kvs", "@forge/resolver", "@forge/events", "@forge/metrics"];

/// Node's built-in module names (without the `node:` prefix).
const NODE_BUILTINS: [&str; 57] = [
    "assert",
    "assert/strict",
    "async_hooks",
    "buffer",
    "child_process",
    "cluster",
    "console",
    "constants",
    "crypto",
    "dgram",
    "diagnostics_channel",
    "dns",
    "dns/promises",
    "domain",
    "events",
    "fs",
    "fs/promises",
    "http",
    "http2",
    "https",
    "inspector",
    "module",
    "net",
    "os",
    "path",
    "path/posix",
    "path/win32",
    "perf_hooks",
    "process",
    "punycode",
    "querystring",
    "readline",
    "readline/promises",
    "repl",
    "stream",
    "stream/consumers",
    "stream/promises",
    "stream/web",
    "string_decoder",
    "sys",
    "timers",
    "timers/promises",
    "tls",
    "trace_events",
    "tty",
    "url",
    "util",
    "util/types",
    "v8",
    "vm",
    "wasi",
    "worker_threads",
    "zlib",
    "test",
    "sqlite",
    "sea",
    "inspector/promises",
];

/// A deployable bundle: every module the app's handlers can reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub format: u32,
    /// Module id (path relative to the app directory, `/`-separated) → module.
    pub modules: BTreeMap<String, Module>,
    /// Function module key → where its handler lives.
    pub entries: BTreeMap<String, Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    pub kind: ModuleKind,
    /// JavaScript source (TypeScript and JSX already compiled), or JSON text.
    pub code: String,
    /// Every static specifier the module loads → what it loads.
    pub imports: BTreeMap<String, Import>,
    /// CommonJS modules: the export names static analysis found, so ES
    /// modules can import them by name. Empty for other kinds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<String>,
    /// ES modules that call `require()` (as bundlers allow): the sandbox gives
    /// them a `require` bound to their own imports.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub uses_require: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub module: String,
    pub export: String,
}

/// A bundle and the digest of its canonical encoding, which names it.
#[derive(Debug, Clone)]
pub struct Built {
    pub bundle: Bundle,
    pub encoded: Vec<u8>,
    pub hash: Sha256,
    /// Total bytes of module source.
    pub source_bytes: u64,
    pub warnings: Vec<String>,
}

impl Bundle {
    /// The canonical encoding: JSON with sorted maps, so equal bundles encode
    /// to equal bytes and therefore equal digests.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decode stored bytes, checking them against the digest they were stored
    /// under: a bundle that does not match its name is refused, never run.
    pub fn decode(bytes: &[u8], expected: &Sha256) -> Result<Bundle, BundleError> {
        let actual = Sha256::of(bytes);
        if actual != *expected {
            return Err(BundleError::Corrupt { expected: *expected, actual });
        }
        let bundle: Bundle =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Undecodable(e.to_string()))?;
        if bundle.format != BUNDLE_FORMAT {
            return Err(BundleError::Undecodable(format!("unknown bundle format {}", bundle.format)));
        }
        Ok(bundle)
    }
}

/// Why an app could not be bundled.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "function '{function}' (handler {handler}): no file for src/{file}; tried {tried}\n  hint: create the file, or fix the handler in manifest.yml (handler is file.export, resolved under src/)"
    )]
    HandlerFileMissing { function: String, handler: String, file: String, tried: String },
    #[error(
        "function '{function}' (handler {handler}): {module} does not export '{export}'{exports}\n  hint: export it, e.g. 'export const {export} = async (payload, context) => ...', or fix the handler in manifest.yml"
    )]
    ExportMissing { function: String, handler: String, module: String, export: String, exports: String },
    #[error("{importer}:{line}: cannot resolve '{specifier}': {reason}\n  hint: {hint}")]
    Unresolved { importer: String, line: u32, specifier: String, reason: String, hint: String },
    #[error("{module}:{line}:{column}: {message}")]
    Syntax { module: String, line: u32, column: u32, message: String },
    #[error("{module}: {reason}")]
    Unsupported { module: String, reason: String },
    #[error("{module}: not valid JSON: {message}")]
    Json { module: String, message: String },
    #[error(
        "the bundle exceeds {MAX_BUNDLE_BYTES} bytes of source (reached at {module})\n  hint: remove unused dependencies; only modules the handlers import are bundled"
    )]
    TooLarge { module: String },
    #[error("the bundle exceeds {MAX_BUNDLE_FILES} modules\n  hint: remove unused dependencies")]
    TooManyFiles,
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored bundle does not match its digest (expected {expected}, found {actual})")]
    Corrupt { expected: Sha256, actual: Sha256 },
    #[error("stored bundle cannot be decoded: {0}")]
    Undecodable(String),
}

/// Bundle the app in `app_dir` for `manifest`.
pub fn build(app_dir: &Path, manifest: &Manifest) -> Result<Built, BundleError> {
    let root = app_dir
        .canonicalize()
        .map_err(|source| BundleError::Io { path: app_dir.display().to_string(), source })?;
    let mut b = Bundler::new(&root);
    let mut entries = BTreeMap::new();
    for function in &manifest.modules.functions {
        let handler = &function.handler;
        let path = b.handler_file(&function.key.to_string(), &handler.to_string(), &handler.file)?;
        let id = b.module_id(&path);
        b.enqueue(path);
        entries.insert(function.key.to_string(), Entry { module: id, export: handler.export.clone() });
    }
    b.drain()?;
    b.export_imported_names();
    for (function, entry) in &entries {
        let handler = manifest.function(function).map(|f| f.handler.to_string()).unwrap_or_default();
        b.check_export(function, &handler, entry)?;
    }
    let bundle = Bundle { format: BUNDLE_FORMAT, modules: b.modules, entries };
    let encoded = bundle.encode();
    let hash = Sha256::of(&encoded);
    Ok(Built { bundle, encoded, hash, source_bytes: b.bytes, warnings: b.warnings.into_iter().collect() })
}

struct Bundler<'r> {
    root: &'r Path,
    import_resolver: Resolver,
    require_resolver: Resolver,
    queue: VecDeque<PathBuf>,
    seen: BTreeSet<PathBuf>,
    modules: BTreeMap<String, Module>,
    /// Export facts per module id, for handler and re-export checks.
    exports: HashMap<String, analyze::Exports>,
    /// Per module id, the names it imports by name from each specifier.
    imported: HashMap<String, BTreeMap<String, BTreeSet<String>>>,
    bytes: u64,
    warnings: BTreeSet<String>,
}

impl<'r> Bundler<'r> {
    fn new(root: &'r Path) -> Self {
        let options = |conditions: &[&str]| ResolveOptions {
            extensions: SOURCE_EXTENSIONS
                .iter()
                .chain(&[".json", ".node"])
                .map(|s| (*s).to_owned())
                .collect(),
            // TypeScript written for Node's ESM imports './x.js' meaning './x.ts'.
            extension_alias: vec![
                (".js".into(), vec![".ts".into(), ".tsx".into(), ".js".into(), ".jsx".into()]),
                (".mjs".into(), vec![".mts".into(), ".mjs".into()]),
                (".cjs".into(), vec![".cts".into(), ".cjs".into()]),
            ],
            condition_names: conditions.iter().map(|s| (*s).to_owned()).collect(),
            main_fields: vec!["main".into()],
            builtin_modules: false,
            ..ResolveOptions::default()
        };
        Self {
            root,
            import_resolver: Resolver::new(options(&["node", "import", "default"])),
            require_resolver: Resolver::new(options(&["node", "require", "default"])),
            queue: VecDeque::new(),
            seen: BTreeSet::new(),
            modules: BTreeMap::new(),
            exports: HashMap::new(),
            imported: HashMap::new(),
            bytes: 0,
            warnings: BTreeSet::new(),
        }
    }

    /// The file a handler names: `src/<file>` with a source extension, or
    /// `src/<file>/index.<ext>`.
    fn handler_file(&self, function: &str, handler: &str, file: &str) -> Result<PathBuf, BundleError> {
        let base = self.root.join("src").join(file);
        let mut tried = Vec::new();
        let candidates = SOURCE_EXTENSIONS
            .iter()
            .map(|ext| PathBuf::from(format!("{}{ext}", base.display())))
            .chain(SOURCE_EXTENSIONS.iter().map(|ext| base.join(format!("index{ext}"))));
        for candidate in candidates {
            if candidate.is_file() {
                return candidate
                    .canonicalize()
                    .map_err(|source| BundleError::Io { path: candidate.display().to_string(), source });
            }
            tried.push(self.module_id(&candidate));
        }
        let shown: Vec<String> = tried.into_iter().take(SOURCE_EXTENSIONS.len()).collect();
        Err(BundleError::HandlerFileMissing {
            function: function.to_owned(),
            handler: handler.to_owned(),
            file: file.to_owned(),
            tried: format!("{} (and src/{file}/index.*)", shown.join(", ")),
        })
    }

    /// A module's id: its path relative to the app directory.
    fn module_id(&self, path: &Path) -> String {
        relative(self.root, path)
    }

    fn enqueue(&mut self, path: PathBuf) {
        if self.seen.insert(path.clone()) {
            self.queue.push_back(path);
        }
    }

    fn drain(&mut self) -> Result<(), BundleError> {
        while let Some(path) = self.queue.pop_front() {
            if self.modules.len() >= MAX_BUNDLE_FILES {
                return Err(BundleError::TooManyFiles);
            }
            self.add(&path)?;
        }
        Ok(())
    }

    fn add(&mut self, path: &Path) -> Result<(), BundleError> {
        let id = self.module_id(path);
        let io = |source| BundleError::Io { path: id.clone(), source };
        let meta = std::fs::metadata(path).map_err(io)?;
        self.bytes = self.bytes.saturating_add(meta.len());
        if self.bytes > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { module: id });
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default();
        if matches!(ext, "node" | "wasm" | "so" | "dylib" | "dll") {
            return Err(BundleError::Unsupported {
                module: id,
                reason: "native and WebAssembly modules cannot run in Kiln's sandbox; use a pure JavaScript package"
                    .into(),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let Ok(source) = String::from_utf8(bytes) else {
            return Err(BundleError::Unsupported { module: id, reason: "the file is not UTF-8 text".into() });
        };
        let source = source.strip_prefix('\u{feff}').map(str::to_owned).unwrap_or(source);
        if ext == "json" {
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&source) {
                return Err(BundleError::Json { module: id, message: e.to_string() });
            }
            let module = Module {
                kind: ModuleKind::Json,
                code: source,
                imports: BTreeMap::new(),
                exports: Vec::new(),
                uses_require: false,
            };
            self.modules.insert(id, module);
            return Ok(());
        }
        let analysis = analyze::analyze(path, &source).map_err(|e| BundleError::Syntax {
            module: id.clone(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?;
        let dir = path.parent().unwrap_or(self.root).to_path_buf();
        let mut imports = BTreeMap::new();
        for request in &analysis.requests {
            let Some(target) = self.resolve(&id, &dir, request)? else {
                continue;
            };
            if let Import::Module(target_id) = &target {
                let target_path = self.root.join(target_id);
                let canonical = normalize(&target_path);
                self.enqueue(canonical);
            }
            imports.insert(request.specifier.clone(), target);
        }
        let exports = match analysis.kind {
            ModuleKind::CommonJs => analysis.exports.names.iter().cloned().collect(),
            _ => Vec::new(),
        };
        let uses_require = analysis.kind == ModuleKind::Esm && analysis.calls_require;
        self.exports.insert(id.clone(), analysis.exports);
        self.imported.insert(id.clone(), analysis.imported);
        self.modules
            .insert(id, Module { kind: analysis.kind, code: analysis.code, imports, exports, uses_require });
        Ok(())
    }

    /// What a specifier loads; `None` for an optional dependency that is not
    /// installed, which stays out of the import table so that loading it
    /// fails at run time, where the package expects to catch that (as
    /// node-fetch does with `try { require('encoding') } catch {}`).
    fn resolve(
        &mut self,
        importer: &str,
        dir: &Path,
        request: &analyze::Request,
    ) -> Result<Option<Import>, BundleError> {
        let spec = request.specifier.as_str();
        if let Some(builtin) = self.builtin(importer, spec) {
            return Ok(Some(builtin));
        }
        let resolver = if request.via_require { &self.require_resolver } else { &self.import_resolver };
        let unresolved = |reason: String, hint: String| BundleError::Unresolved {
            importer: importer.to_owned(),
            line: request.line,
            specifier: spec.to_owned(),
            reason,
            hint,
        };
        match resolver.resolve(dir, spec) {
            Ok(resolution) => {
                let path = resolution.path().to_path_buf();
                Ok(Some(Import::Module(relative(self.root, &path))))
            }
            Err(ResolveError::NotFound(_)) => {
                let bare = !spec.starts_with('.') && !spec.starts_with('/');
                let (reason, hint) = if bare {
                    let package = package_name(spec);
                    if let Some(owner) = declares_optional(self.root, dir, &package) {
                        self.warnings.insert(format!(
                            "{importer}:{}: '{package}' is an optional dependency of {owner} and is not installed; loading it fails when the function runs",
                            request.line
                        ));
                        return Ok(None);
                    }
                    (
                        format!("package '{package}' is not in node_modules"),
                        format!("run 'npm install {package}' in the app directory, or remove the import"),
                    )
                } else {
                    (
                        "no such file".to_owned(),
                        format!(
                            "create it, or fix the path (tried {} and index files)",
                            SOURCE_EXTENSIONS.join(", ")
                        ),
                    )
                };
                Err(unresolved(reason, hint))
            }
            Err(other) => {
                Err(unresolved(other.to_string(), "fix the import or the package's package.json".into()))
            }
        }
    }

    /// A CommonJS module exports whatever its `module.exports` holds when it
    /// runs, which static analysis often cannot see (lodash assigns it inside
    /// a function). Each name an ES module imports from it by name becomes
    /// one of its facade's exports, read from `module.exports` at run time
    /// (`undefined` if absent), as TypeScript compiled to CommonJS reads
    /// `require('lodash').uniq`.
    fn export_imported_names(&mut self) {
        let mut wanted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (importer, by_specifier) in &self.imported {
            let Some(module) = self.modules.get(importer) else { continue };
            for (specifier, names) in by_specifier {
                if let Some(Import::Module(target)) = module.imports.get(specifier) {
                    wanted.entry(target.clone()).or_default().extend(names.iter().cloned());
                }
            }
        }
        for (target, names) in wanted {
            let Some(module) = self.modules.get_mut(&target) else { continue };
            if module.kind != ModuleKind::CommonJs {
                continue;
            }
            let mut all: BTreeSet<String> = module.exports.drain(..).collect();
            all.extend(names.into_iter().filter(|n| n != "default"));
            module.exports = all.into_iter().collect();
        }
    }

    /// `@forge/*` and Node built-ins never come from disk.
    fn builtin(&mut self, importer: &str, spec: &str) -> Option<Import> {
        if spec.starts_with("@forge/") {
            let package = package_name(spec);
            if !FORGE_MODULES.contains(&package.as_str()) {
                let what = if matches!(package.as_str(), "@forge/bridge" | "@forge/react") {
                    "is a front-end package and cannot be used in backend functions"
                } else {
                    "is not provided by Kiln yet; importing it fails when the function runs"
                };
                self.warnings.insert(format!("{importer}: '{package}' {what}"));
            }
            return Some(Import::Builtin(spec.to_owned()));
        }
        if spec == "node-fetch" {
            self.warnings.insert(format!(
                "{importer}: 'node-fetch' is served by Kiln's fetch (the egress gateway, to the hosts the manifest declares); the package itself is not bundled"
            ));
            return Some(Import::Builtin(spec.to_owned()));
        }
        let bare = spec.strip_prefix("node:").unwrap_or(spec);
        if spec.starts_with("node:") || NODE_BUILTINS.contains(&bare) {
            return Some(Import::Builtin(format!("node:{bare}")));
        }
        None
    }

    /// The handler's export exists, directly or through `export *`.
    fn check_export(&mut self, function: &str, handler: &str, entry: &Entry) -> Result<(), BundleError> {
        let mut found = BTreeSet::new();
        let mut opaque = false;
        let mut todo = vec![entry.module.clone()];
        let mut visited = BTreeSet::new();
        while let Some(id) = todo.pop() {
            if !visited.insert(id.clone()) {
                continue;
            }
            let Some(exports) = self.exports.get(&id) else {
                // A star re-export of a JSON or built-in module.
                opaque = true;
                continue;
            };
            found.extend(exports.names.iter().cloned());
            opaque |= exports.opaque;
            let imports = self.modules.get(&id).map(|m| &m.imports);
            for spec in &exports.star_from {
                match imports.and_then(|i| i.get(spec)) {
                    Some(Import::Module(target)) => todo.push(target.clone()),
                    _ => opaque = true,
                }
            }
        }
        if found.contains(&entry.export) {
            return Ok(());
        }
        if opaque {
            self.warnings.insert(format!(
                "function '{function}' (handler {handler}): cannot confirm that {} exports '{}' (its exports are computed at run time)",
                entry.module, entry.export
            ));
            return Ok(());
        }
        let exports = if found.is_empty() {
            " (it exports nothing)".to_owned()
        } else {
            format!(" (it exports: {})", found.into_iter().collect::<Vec<_>>().join(", "))
        };
        Err(BundleError::ExportMissing {
            function: function.to_owned(),
            handler: handler.to_owned(),
            module: entry.module.clone(),
            export: entry.export.clone(),
            exports,
        })
    }
}

/// The package that `dir` belongs to (its nearest `package.json`, not above
/// the app directory's parent, where an npm workspace hoists packages), if
/// that package declares `package` an optional dependency: in
/// `optionalDependencies`, or as a peer marked optional in
/// `peerDependenciesMeta`.
fn declares_optional(root: &Path, dir: &Path, package: &str) -> Option<String> {
    let limit = root.parent().unwrap_or(root);
    let mut at = Some(dir);
    while let Some(current) = at.filter(|d| d.starts_with(limit)) {
        let manifest = current.join("package.json");
        if manifest.is_file() {
            let text = std::fs::read_to_string(&manifest).ok()?;
            let json: serde_json::Value = serde_json::from_str(&text).ok()?;
            let optional = json.pointer("/optionalDependencies").and_then(|d| d.get(package)).is_some()
                || json
                    .pointer("/peerDependenciesMeta")
                    .and_then(|m| m.get(package))
                    .and_then(|m| m.get("optional"))
                    .and_then(serde_json::Value::as_bool)
                    == Some(true);
            let name = json.get("name").and_then(serde_json::Value::as_str).unwrap_or("the app");
            return optional.then(|| format!("'{name}'"));
        }
        at = current.parent();
    }
    None
}

/// `lodash/fp` → `lodash`, `@scope/pkg/sub` → `@scope/pkg`.
fn package_name(spec: &str) -> String {
    let mut parts = spec.split('/');
    match (parts.next(), parts.next()) {
        (Some(scope), Some(name)) if scope.starts_with('@') => format!("{scope}/{name}"),
        (Some(name), _) => name.to_owned(),
        _ => spec.to_owned(),
    }
}

/// `path` relative to `root`, `/`-separated; `..` segments when outside it
/// (an npm workspace hoists packages to a parent directory).
fn relative(root: &Path, path: &Path) -> String {
    let path = normalize(path);
    let root_parts: Vec<Component<'_>> = root.components().collect();
    let path_parts: Vec<Component<'_>> = path.components().collect();
    let common = root_parts.iter().zip(&path_parts).take_while(|(a, b)| a == b).count();
    let ups = root_parts.len().saturating_sub(common);
    let mut out: Vec<String> = std::iter::repeat_n("..".to_owned(), ups).collect();
    out.extend(path_parts.iter().skip(common).map(|c| c.as_os_str().to_string_lossy().into_owned()));
    out.join("/")
}

/// Remove `.` and resolve `..` lexically (paths here are already canonical
/// apart from joins the bundler made itself).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
