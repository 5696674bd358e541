//! The one function that turns a YAML node tree into a [`Manifest`].
//!
//! Every check Forge makes at deploy time that Kiln relies on happens here,
//! and every problem is collected (not only the first) with the place it was
//! found and a way to fix it.

use std::collections::{BTreeMap, HashMap};

use kiln_types::AppId;

use crate::diagnostic::{Code, Diagnostic, Pos, Severity};
use crate::model::*;
use crate::scopes;
use crate::yaml::{Key, Node, Value};

/// Most modules an app may declare (Forge's current quota).
pub const MAX_MODULES: usize = 150;
/// Longest string accepted where Forge sets no explicit bound.
pub(crate) const MAX_STRING_LEN: usize = 4096;
/// Longest egress entry, as in Forge.
pub const MAX_EGRESS_LEN: usize = 1000;
/// Longest handler string, as in Forge.
pub const MAX_HANDLER_LEN: usize = 1024;

const TOP_LEVEL_KEYS: [&str; 11] = [
    "app",
    "modules",
    "permissions",
    "remotes",
    "resources",
    "providers",
    "environment",
    "translations",
    "services",
    "connectModules",
    "overrides",
];

const MODULE_TYPES: &str = include_str!("../data/module-types.txt");

fn module_types() -> impl Iterator<Item = &'static str> {
    MODULE_TYPES.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// Build a manifest from a parsed YAML document.
pub(crate) fn manifest(root: &Node, diags: &mut Vec<Diagnostic>) -> Option<Manifest> {
    let mut cx = Cx { diags, module_keys: HashMap::new() };
    let top = cx.map(root, "")?;
    top.check_keys(&mut cx, &TOP_LEVEL_KEYS, Strictness::Error);

    let app = match top.get("app") {
        Some(node) => cx.app(node),
        None => {
            cx.error(
                Code::MissingKey,
                root.pos,
                "app",
                "the manifest has no 'app' section",
                "add 'app:' with 'id: ari:cloud:ecosystem::app/<uuid>' and 'runtime: {name: nodejs22.x}'",
            );
            None
        }
    };
    let remotes = top.get("remotes").map(|n| cx.remotes(n)).unwrap_or_default();
    let resources = top.get("resources").map(|n| cx.resources(n)).unwrap_or_default();
    let variables = top.get("environment").map(|n| cx.environment(n)).unwrap_or_default();
    let permissions = top.get("permissions").map(|n| cx.permissions(n, &remotes)).unwrap_or_default();
    let modules = match top.get("modules") {
        Some(node) => cx.modules(node, &remotes, &resources),
        None if top.get("connectModules").is_some() => Modules::default(),
        None => {
            cx.error(
                Code::MissingKey,
                root.pos,
                "modules",
                "the manifest has no 'modules' section",
                "declare at least one module, e.g. 'modules: {function: [{key: main, handler: index.run}]}'",
            );
            Modules::default()
        }
    };
    let providers = top.get("providers").map(|n| {
        cx.map(n, "providers");
        to_json(n)
    });
    let carried = ["translations", "services", "connectModules", "overrides"]
        .into_iter()
        .filter_map(|k| top.get(k).map(|n| (k.to_owned(), to_json(n))))
        .collect();

    let has_errors = cx.diags.iter().any(|d| d.severity == Severity::Error);
    match app {
        Some(app) if !has_errors => {
            Some(Manifest { app, modules, permissions, remotes, resources, variables, providers, carried })
        }
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// Forge's schema forbids other keys here.
    Error,
    /// Forge's schema allows other keys here; Kiln points them out.
    Warn,
}

struct Cx<'d> {
    diags: &'d mut Vec<Diagnostic>,
    /// Module key → where it was first declared, for uniqueness.
    module_keys: HashMap<String, (String, Pos)>,
}

/// A mapping being read, with the path that leads to it.
struct MapView<'n> {
    path: String,
    pos: Pos,
    entries: &'n [(Key, Node)],
}

impl<'n> MapView<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v)
    }

    fn child(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    fn check_keys(&self, cx: &mut Cx<'_>, allowed: &[&str], strictness: Strictness) {
        for (key, _) in self.entries {
            if allowed.contains(&key.name.as_str()) {
                continue;
            }
            let path = self.child(&key.name);
            let hint = match nearest(&key.name, allowed.iter().copied()) {
                Some(near) => format!("did you mean '{near}'? Allowed here: {}", allowed.join(", ")),
                None => format!("allowed here: {}", allowed.join(", ")),
            };
            let message = if self.path.is_empty() {
                format!("unknown top-level key '{}'", key.name)
            } else {
                format!("unknown key '{}' in {}", key.name, self.path)
            };
            match strictness {
                Strictness::Error => cx.error(Code::UnknownKey, key.pos, path, message, hint),
                Strictness::Warn => {
                    cx.warn(Code::UnknownKey, key.pos, path, format!("{message}; Kiln ignores it"), hint)
                }
            }
        }
    }
}

fn nearest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (word.len() / 3).clamp(1, 4);
    candidates
        .map(|c| (strsim::levenshtein(&word.to_lowercase(), &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Convert a node to JSON for sections Kiln carries without interpreting.
pub(crate) fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match &node.value {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
        Value::Str(s) => J::String(s.clone()),
        Value::Seq(items) => J::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => J::Object(entries.iter().map(|(k, v)| (k.name.clone(), to_json(v))).collect()),
    }
}

fn is_js_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

fn matches_key_pattern(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Cx<'_> {
    fn error(
        &mut self,
        code: Code,
        pos: Pos,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.diags.push(Diagnostic::error(code, pos, path, message, hint));
    }

    fn warn(
        &mut self,
        code: Code,
        pos: Pos,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.diags.push(Diagnostic::warning(code, pos, path, message, hint));
    }

    fn wrong_type(&mut self, node: &Node, path: &str, expected: &str) {
        let shown = if path.is_empty() { "the manifest" } else { path };
        self.error(
            Code::WrongType,
            node.pos,
            path,
            format!("{shown} must be {expected}, not {}", node.value.kind()),
            format!("write {shown} as {expected}"),
        );
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<MapView<'n>> {
        match &node.value {
            Value::Map(entries) => Some(MapView { path: path.to_owned(), pos: node.pos, entries }),
            _ => {
                self.wrong_type(node, path, "a mapping");
                None
            }
        }
    }

    fn seq<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n [Node]> {
        match &node.value {
            Value::Seq(items) => Some(items),
            _ => {
                self.wrong_type(node, path, "a list");
                None
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str, max: usize) -> Option<String> {
        match &node.value {
            Value::Str(s) if s.len() <= max => Some(s.clone()),
            Value::Str(s) => {
                self.error(
                    Code::TooLarge,
                    node.pos,
                    path,
                    format!("{path} is {} characters long; the limit is {max}", s.len()),
                    "shorten it",
                );
                None
            }
            _ => {
                self.wrong_type(node, path, "a string");
                None
            }
        }
    }

    fn opt_string(&mut self, map: &MapView<'_>, key: &str, max: usize) -> Option<String> {
        let node = map.get(key)?;
        self.string(node, &map.child(key), max)
    }

    fn req_string(&mut self, map: &MapView<'_>, key: &str, max: usize, hint: &str) -> Option<(String, Pos)> {
        match map.get(key) {
            Some(node) => self.string(node, &map.child(key), max).map(|s| (s, node.pos)),
            None => {
                self.error(
                    Code::MissingKey,
                    map.pos,
                    map.child(key),
                    format!("{} is missing '{key}'", describe(&map.path)),
                    hint,
                );
                None
            }
        }
    }

    fn opt_bool(&mut self, map: &MapView<'_>, key: &str) -> Option<bool> {
        let node = map.get(key)?;
        match node.value {
            Value::Bool(b) => Some(b),
            _ => {
                self.wrong_type(node, &map.child(key), "true or false");
                None
            }
        }
    }

    fn opt_int(&mut self, map: &MapView<'_>, key: &str, range: std::ops::RangeInclusive<i64>) -> Option<i64> {
        let node = map.get(key)?;
        let path = map.child(key);
        let value = match node.value {
            Value::Int(i) => i,
            Value::Float(f) if f.fract() == 0.0 && f.abs() < 1e15 => {
                #[expect(clippy::cast_possible_truncation, reason = "checked integral and in range above")]
                let i = f as i64;
                i
            }
            _ => {
                self.wrong_type(node, &path, "a whole number");
                return None;
            }
        };
        if range.contains(&value) {
            Some(value)
        } else {
            self.error(
                Code::InvalidValue,
                node.pos,
                &path,
                format!("{path} is {value}; it must be between {} and {}", range.start(), range.end()),
                format!("use a value from {} to {}", range.start(), range.end()),
            );
            None
        }
    }

    fn one_of<T: Copy>(&mut self, node: &Node, path: &str, options: &[(&str, T)]) -> Option<T> {
        let text = self.string(node, path, MAX_STRING_LEN)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == text) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = match nearest(&text, names.iter().copied()) {
            Some(near) => format!("did you mean '{near}'? Use one of: {}", names.join(", ")),
            None => format!("use one of: {}", names.join(", ")),
        };
        self.error(
            Code::InvalidValue,
            node.pos,
            path,
            format!("{path} is '{text}', which is not one of the accepted values"),
            hint,
        );
        None
    }

    // ---------------------------------------------------------------- app

    fn app(&mut self, node: &Node) -> Option<AppInfo> {
        let map = self.map(node, "app")?;
        map.check_keys(
            self,
            &[
                "id",
                "description",
                "runtime",
                "compatibility",
                "access",
                "licensing",
                "features",
                "connect",
                "storage",
                "package",
            ],
            Strictness::Error,
        );
        let id = self
            .req_string(&map, "id", MAX_STRING_LEN, "add 'id: ari:cloud:ecosystem::app/<uuid>' under app")
            .and_then(|(id, pos)| match AppId::parse(&id) {
                Ok(id) => Some(id),
                Err(_) => {
                    self.error(
                        Code::InvalidValue,
                        pos,
                        "app.id",
                        format!("app.id '{id}' is not a Forge app ARI"),
                        "use the form ari:cloud:ecosystem::app/<uuid>, where <uuid> uses letters, digits, '-', '_' or '.'",
                    );
                    None
                }
            });
        let description = self.opt_string(&map, "description", 1000);
        let runtime = match map.get("runtime") {
            Some(n) => self.runtime(n),
            None => {
                self.error(
                    Code::MissingKey,
                    map.pos,
                    "app.runtime",
                    "app is missing 'runtime'",
                    "add 'runtime: {name: nodejs22.x}' under app",
                );
                None
            }
        };
        let licensing_enabled = match map.get("licensing") {
            Some(n) => self.map(n, "app.licensing").and_then(|l| {
                l.check_keys(self, &["enabled", "editionsEnabled", "modes"], Strictness::Error);
                if l.get("enabled").is_none() {
                    self.error(
                        Code::MissingKey,
                        l.pos,
                        "app.licensing.enabled",
                        "app.licensing is missing 'enabled'",
                        "add 'enabled: true' or 'enabled: false'",
                    );
                }
                self.opt_bool(&l, "enabled")
            }),
            None => None,
        }
        .unwrap_or(false);
        let carried = ["compatibility", "access", "features", "connect", "storage", "package"]
            .into_iter()
            .filter_map(|k| map.get(k).map(|n| (k.to_owned(), to_json(n))))
            .collect();
        Some(AppInfo { id: id?, description, runtime: runtime?, licensing_enabled, carried })
    }

    fn runtime(&mut self, node: &Node) -> Option<Runtime> {
        let map = self.map(node, "app.runtime")?;
        map.check_keys(self, &["name", "architecture", "memoryMB", "snapshots"], Strictness::Error);
        let name = match map.get("name") {
            None => {
                self.error(
                    Code::MissingKey,
                    map.pos,
                    "app.runtime.name",
                    "app.runtime is missing 'name'",
                    "add 'name: nodejs22.x' under app.runtime",
                );
                None
            }
            Some(n) => {
                let text = self.string(n, "app.runtime.name", MAX_STRING_LEN)?;
                match RuntimeName::ALL.iter().find(|(s, _)| *s == text) {
                    Some((_, r)) => Some(*r),
                    None => {
                        let hint = if text == "sandbox" {
                            "the legacy 'sandbox' runtime was retired by Forge in 2025; use nodejs22.x"
                                .to_owned()
                        } else {
                            "use one of nodejs18.x, nodejs20.x, nodejs22.x, nodejs24.x".to_owned()
                        };
                        self.error(
                            Code::UnsupportedRuntime,
                            n.pos,
                            "app.runtime.name",
                            format!("runtime '{text}' is not supported"),
                            hint,
                        );
                        None
                    }
                }
            }
        };
        if let Some(n) = map.get("architecture") {
            self.one_of(n, "app.runtime.architecture", &[("x86_64", ()), ("arm64", ())]);
        }
        // Forge's `snapshots` (default true) runs a function's top level
        // once at deploy time and starts invocations from the result;
        // `false` runs it on every cold start. Kiln has no deploy-time
        // snapshot: a large program's top level runs once per worker and
        // every invocation starts from a copy of that state, a small one's
        // runs in every invocation's fresh runtime. Either way an app that
        // works under one setting works under Kiln, so the key is checked
        // and has nothing more to change.
        let _snapshots = self.opt_bool(&map, "snapshots");
        let memory = self.opt_int(
            &map,
            "memoryMB",
            i64::from(*MEMORY_MB_RANGE.start())..=i64::from(*MEMORY_MB_RANGE.end()),
        );
        Some(Runtime {
            name: name?,
            memory_mb: memory.and_then(|m| u32::try_from(m).ok()).unwrap_or(DEFAULT_MEMORY_MB),
        })
    }

    // ---------------------------------------------------------------- modules

    fn modules(&mut self, node: &Node, remotes: &[Remote], resources: &[Resource]) -> Modules {
        let mut modules = Modules::default();
        let Some(map) = self.map(node, "modules") else {
            return modules;
        };
        if map.entries.is_empty() {
            self.error(
                Code::MissingKey,
                node.pos,
                "modules",
                "modules is empty",
                "declare at least one module, e.g. a function",
            );
        }
        for (type_key, list) in map.entries {
            let module_type = type_key.name.as_str();
            let path = map.child(module_type);
            if !module_types().any(|t| t == module_type) {
                let hint = match nearest(module_type, module_types()) {
                    Some(near) => format!("did you mean '{near}'?"),
                    None => "see Forge's manifest reference for module types".to_owned(),
                };
                self.error(
                    Code::UnknownModuleType,
                    type_key.pos,
                    &path,
                    format!("unknown module type '{module_type}'"),
                    hint,
                );
                continue;
            }
            let Some(items) = self.seq(list, &path) else {
                continue;
            };
            if items.is_empty() {
                self.error(
                    Code::MissingKey,
                    list.pos,
                    &path,
                    format!("{path} is an empty list"),
                    "add a module or remove the empty list",
                );
            }
            for (i, item) in items.iter().enumerate() {
                let item_path = format!("{path}[{i}]");
                let Some(m) = self.map(item, &item_path) else {
                    continue;
                };
                let Some(key) = self.module_key(&m) else {
                    continue;
                };
                match module_type {
                    "function" => modules.functions.extend(self.function(&m, key)),
                    "webtrigger" => modules.webtriggers.extend(self.webtrigger(&m, key)),
                    "scheduledTrigger" => modules.scheduled_triggers.extend(self.scheduled_trigger(&m, key)),
                    "trigger" => modules.triggers.extend(self.trigger(&m, key)),
                    "consumer" => modules.consumers.extend(self.consumer(&m, key)),
                    "endpoint" => modules.endpoints.extend(self.endpoint(&m, key, item, remotes)),
                    _ => modules.others.extend(self.other_module(&m, key, module_type, item, resources)),
                }
            }
        }
        if modules.count() > MAX_MODULES {
            self.error(
                Code::TooMany,
                node.pos,
                "modules",
                format!("the app declares {} modules; the limit is {MAX_MODULES}", modules.count()),
                "split the app or merge modules that share a function",
            );
        }
        self.scheduled_trigger_limits(&map, &modules);
        self.references(&map, &modules);
        modules
    }

    fn module_key(&mut self, m: &MapView<'_>) -> Option<ModuleKey> {
        let (key, pos) =
            self.req_string(m, "key", MAX_MODULE_KEY_LEN, "give the module a unique 'key' such as 'main'")?;
        let path = m.child("key");
        let Some(parsed) = ModuleKey::parse(&key) else {
            self.error(
                Code::InvalidKey,
                pos,
                path,
                format!("module key '{key}' may only contain letters, digits, '-' and '_'"),
                format!("rename it, e.g. '{}'", sanitize_key(&key)),
            );
            return None;
        };
        if let Some((first_path, first_pos)) = self.module_keys.get(&key).cloned() {
            self.error(
                Code::DuplicateModuleKey,
                pos,
                path,
                format!("module key '{key}' is already used by {first_path} (line {})", first_pos.line),
                "module keys must be unique across the whole manifest; rename one of them",
            );
            // Keep parsing the module so references to the key do not also
            // report it as missing; the manifest is refused anyway.
            return Some(parsed);
        }
        self.module_keys.insert(key, (m.path.clone(), pos));
        Some(parsed)
    }

    fn function(&mut self, m: &MapView<'_>, key: ModuleKey) -> Option<FunctionModule> {
        m.check_keys(
            self,
            &[
                "key",
                "handler",
                "timeoutSeconds",
                "runtime",
                "providers",
                "cleanup",
                "outboundAuthContainerId",
                "functions",
            ],
            Strictness::Error,
        );
        let handler = self
            .req_string(
                m,
                "handler",
                MAX_HANDLER_LEN,
                "add 'handler: index.run' (file under src/, then the exported function)",
            )
            .and_then(|(h, pos)| self.handler(&h, pos, &m.child("handler")));
        let timeout_seconds = self
            .opt_int(m, "timeoutSeconds", 1..=i64::from(MAX_TIMEOUT_SECONDS))
            .and_then(|t| u32::try_from(t).ok());
        let memory_mb = match m.get("runtime") {
            Some(n) => self.map(n, &m.child("runtime")).and_then(|r| {
                r.check_keys(self, &["memoryMB"], Strictness::Error);
                self.opt_int(&r, "memoryMB", 128..=4096)
            }),
            None => None,
        }
        .and_then(|v| u32::try_from(v).ok());
        if let Some(n) = m.get("cleanup")
            && !matches!(n.value, Value::Bool(_))
        {
            self.wrong_type(n, &m.child("cleanup"), "true or false");
        }
        Some(FunctionModule {
            key,
            handler: handler?,
            timeout_seconds,
            memory_mb,
            providers: m.get("providers").map(to_json),
        })
    }

    fn handler(&mut self, handler: &str, pos: Pos, path: &str) -> Option<Handler> {
        let invalid = |cx: &mut Self, why: &str| {
            cx.error(
                Code::InvalidValue,
                pos,
                path,
                format!("handler '{handler}' {why}"),
                "write it as file.export, e.g. 'index.run' for the function 'run' exported by src/index.ts, or 'resolvers/index.handler'",
            );
            None
        };
        let Some((file, export)) = handler.rsplit_once('.') else {
            return invalid(self, "has no '.' between the file and the exported function");
        };
        if !is_js_identifier(export) {
            return invalid(self, &format!("names export '{export}', which is not a JavaScript identifier"));
        }
        let segments_ok = !file.is_empty()
            && file.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
            });
        if !segments_ok {
            return invalid(
                self,
                "does not name a file inside src/ (use '/' between folders; no '..', '\\' or absolute paths)",
            );
        }
        Some(Handler { file: file.to_owned(), export: export.to_owned() })
    }

    /// `function:` or `endpoint:`, exactly one.
    fn target(&mut self, m: &MapView<'_>) -> Option<Target> {
        let function = m.get("function");
        let endpoint = m.get("endpoint");
        match (function, endpoint) {
            (Some(_), Some(n)) => {
                self.error(
                    Code::InvalidValue,
                    n.pos,
                    m.child("endpoint"),
                    format!("{} has both 'function' and 'endpoint'", describe(&m.path)),
                    "keep one: 'function' runs a function module, 'endpoint' calls a Forge Remote",
                );
                None
            }
            (Some(n), None) => self.reference(n, &m.child("function")).map(Target::Function),
            (None, Some(n)) => self.reference(n, &m.child("endpoint")).map(Target::Endpoint),
            (None, None) => {
                self.error(
                    Code::MissingKey,
                    m.pos,
                    m.child("function"),
                    format!("{} is missing 'function'", describe(&m.path)),
                    "add 'function: <key of a function module>'",
                );
                None
            }
        }
    }

    fn reference(&mut self, node: &Node, path: &str) -> Option<ModuleKey> {
        let text = self.string(node, path, 255)?;
        match ModuleKey::parse(&text) {
            Some(k) => Some(k),
            None => {
                self.error(
                    Code::InvalidValue,
                    node.pos,
                    path,
                    format!("'{text}' is not a module key"),
                    "refer to a module by its key (letters, digits, '-' and '_')",
                );
                None
            }
        }
    }

    fn webtrigger(&mut self, m: &MapView<'_>, key: ModuleKey) -> Option<WebTrigger> {
        m.check_keys(
            self,
            &["key", "function", "endpoint", "response", "request", "urlFormat"],
            Strictness::Warn,
        );
        let target = self.target(m);
        let response = match m.get("response") {
            None => Some(WebTriggerResponse::Dynamic),
            Some(n) => self.webtrigger_response(n, &m.child("response")),
        };
        let authentication = match m.get("request") {
            None => Some(WebTriggerAuth::None),
            Some(n) => self.map(n, &m.child("request")).and_then(|r| {
                r.check_keys(self, &["authentication"], Strictness::Error);
                match r.get("authentication") {
                    None => Some(WebTriggerAuth::None),
                    Some(a) => self.one_of(
                        a,
                        &r.child("authentication"),
                        &[
                            ("hmacSharedSecret", WebTriggerAuth::HmacSharedSecret),
                            ("none", WebTriggerAuth::None),
                        ],
                    ),
                }
            }),
        };
        let url_format = match m.get("urlFormat") {
            None => None,
            Some(n) => Some(self.one_of(n, &m.child("urlFormat"), &[("v1", "v1"), ("v2", "v2")])?.to_owned()),
        };
        Some(WebTrigger {
            key,
            target: target?,
            response: response?,
            authentication: authentication?,
            url_format,
        })
    }

    fn webtrigger_response(&mut self, node: &Node, path: &str) -> Option<WebTriggerResponse> {
        let r = self.map(node, path)?;
        r.check_keys(self, &["type", "outputs"], Strictness::Error);
        let kind = match r.get("type") {
            Some(t) => self.one_of(t, &r.child("type"), &[("static", true), ("dynamic", false)])?,
            None => {
                self.error(
                    Code::MissingKey,
                    r.pos,
                    r.child("type"),
                    format!("{path} is missing 'type'"),
                    "add 'type: dynamic' (the function returns the response) or 'type: static' with outputs",
                );
                return None;
            }
        };
        let outputs = r.get("outputs");
        if !kind {
            if let Some(o) = outputs {
                self.error(
                    Code::InvalidValue,
                    o.pos,
                    r.child("outputs"),
                    "a dynamic web trigger response cannot declare outputs",
                    "remove 'outputs', or set 'type: static'",
                );
                return None;
            }
            return Some(WebTriggerResponse::Dynamic);
        }
        let Some(outputs) = outputs else {
            self.error(
                Code::MissingKey,
                r.pos,
                r.child("outputs"),
                "a static web trigger response needs 'outputs'",
                "add outputs: [{key: ok, statusCode: 200, contentType: text/plain, body: OK}]",
            );
            return None;
        };
        let items = self.seq(outputs, &r.child("outputs"))?;
        if items.is_empty() || items.len() > 20 {
            self.error(
                Code::TooMany,
                outputs.pos,
                r.child("outputs"),
                format!("a static response declares {} outputs; Forge allows 1 to 20", items.len()),
                "keep between 1 and 20 outputs",
            );
            return None;
        }
        let mut parsed = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{}.outputs[{i}]", path);
            let Some(o) = self.map(item, &p) else {
                continue;
            };
            o.check_keys(self, &["key", "statusCode", "body", "contentType"], Strictness::Error);
            let key = self.req_string(&o, "key", 255, "name the output, e.g. 'key: ok'");
            let status = match o.get("statusCode") {
                Some(_) => self.opt_int(&o, "statusCode", 100..=599),
                None => {
                    self.error(
                        Code::MissingKey,
                        o.pos,
                        o.child("statusCode"),
                        format!("{p} is missing 'statusCode'"),
                        "add 'statusCode: 200'",
                    );
                    None
                }
            };
            let body = self.opt_string(&o, "body", 1024);
            let content_type = self.opt_string(&o, "contentType", 255);
            if let (Some((key, _)), Some(status)) = (key, status) {
                parsed.push(StaticOutput {
                    key,
                    status_code: u16::try_from(status).unwrap_or(500),
                    body,
                    content_type,
                });
            }
        }
        Some(WebTriggerResponse::Static { outputs: parsed })
    }

    fn scheduled_trigger(&mut self, m: &MapView<'_>, key: ModuleKey) -> Option<ScheduledTrigger> {
        m.check_keys(self, &["key", "function", "endpoint", "interval", "filter"], Strictness::Error);
        let target = self.target(m);
        let interval = match m.get("interval") {
            Some(n) => self.one_of(n, &m.child("interval"), &Interval::ALL),
            None => {
                self.error(
                    Code::MissingKey,
                    m.pos,
                    m.child("interval"),
                    format!("{} is missing 'interval'", describe(&m.path)),
                    "add 'interval: hour' (fiveMinute, hour, day or week)",
                );
                None
            }
        };
        let app_is_licensed = match m.get("filter") {
            None => None,
            Some(n) => self.map(n, &m.child("filter")).and_then(|f| {
                f.check_keys(self, &["appIsLicensed"], Strictness::Error);
                self.opt_bool(&f, "appIsLicensed")
            }),
        };
        Some(ScheduledTrigger { key, target: target?, interval: interval?, app_is_licensed })
    }

    fn scheduled_trigger_limits(&mut self, map: &MapView<'_>, modules: &Modules) {
        let Some(list) = map.get("scheduledTrigger") else {
            return;
        };
        let Value::Seq(items) = &list.value else {
            return;
        };
        if modules.scheduled_triggers.len() > MAX_SCHEDULED_TRIGGERS {
            let pos = items.get(MAX_SCHEDULED_TRIGGERS).map_or(list.pos, |n| n.pos);
            self.error(
                Code::TooMany,
                pos,
                format!("modules.scheduledTrigger[{MAX_SCHEDULED_TRIGGERS}]"),
                format!(
                    "the app declares {} scheduled triggers; Forge allows at most {MAX_SCHEDULED_TRIGGERS}",
                    modules.scheduled_triggers.len()
                ),
                "merge triggers that share an interval into one function",
            );
        }
        let five: Vec<usize> = modules
            .scheduled_triggers
            .iter()
            .enumerate()
            .filter(|(_, t)| t.interval == Interval::FiveMinute)
            .map(|(i, _)| i)
            .collect();
        if let Some(&second) = five.get(1) {
            // Scheduled triggers are parsed in order, so index i is item i
            // unless an earlier item failed; point at the key either way.
            let key = modules.scheduled_triggers.get(second).map(|t| t.key.to_string()).unwrap_or_default();
            let pos = self.module_keys.get(&key).map_or(list.pos, |(_, p)| *p);
            self.error(
                Code::TooMany,
                pos,
                format!("modules.scheduledTrigger[{second}].interval"),
                format!("scheduled trigger '{key}' is a second fiveMinute trigger; Forge allows only one"),
                "run both jobs from one fiveMinute trigger, or use 'hour' for one of them",
            );
        }
    }

    fn trigger(&mut self, m: &MapView<'_>, key: ModuleKey) -> Option<Trigger> {
        m.check_keys(
            self,
            &["key", "function", "endpoint", "events", "filter", "payload"],
            Strictness::Error,
        );
        let target = self.target(m);
        let events = match m.get("events") {
            None => {
                self.error(
                    Code::MissingKey,
                    m.pos,
                    m.child("events"),
                    format!("{} is missing 'events'", describe(&m.path)),
                    "add 'events: [avi:jira:created:issue]'",
                );
                None
            }
            Some(n) => self.events(n, &m.child("events")),
        };
        let filter = match m.get("filter") {
            None => Some(None),
            Some(n) => self.event_filter(n, &m.child("filter")).map(Some),
        };
        let payload = m.get("payload").map(|n| {
            self.map(n, &m.child("payload"));
            to_json(n)
        });
        Some(Trigger { key, target: target?, events: events?, filter: filter?, payload })
    }

    fn events(&mut self, node: &Node, path: &str) -> Option<Vec<EventSubscription>> {
        let items = self.seq(node, path)?;
        if items.is_empty() {
            self.error(
                Code::MissingKey,
                node.pos,
                path,
                "a trigger must subscribe to at least one event",
                "add an event such as avi:jira:created:issue",
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            match &item.value {
                Value::Str(_) => match self.event_type(item, &p) {
                    Some(event_type) => {
                        out.push(EventSubscription { event_type, filter: None, payload: None })
                    }
                    None => ok = false,
                },
                Value::Map(_) => {
                    let Some(e) = self.map(item, &p) else {
                        continue;
                    };
                    e.check_keys(self, &["eventType", "filter", "payload"], Strictness::Error);
                    let event_type = match e.get("eventType") {
                        Some(n) => self.event_type(n, &e.child("eventType")),
                        None => {
                            self.error(
                                Code::MissingKey,
                                e.pos,
                                e.child("eventType"),
                                format!("{p} is missing 'eventType'"),
                                "add 'eventType: avi:jira:created:issue'",
                            );
                            None
                        }
                    };
                    let filter = match e.get("filter") {
                        Some(n) => self.event_filter(n, &e.child("filter")),
                        None => {
                            self.error(
                                Code::MissingKey,
                                e.pos,
                                e.child("filter"),
                                format!("{p} is missing 'filter'"),
                                "an event written as a mapping needs a filter; write the event as a plain string if it has none",
                            );
                            None
                        }
                    };
                    match (event_type, filter) {
                        (Some(event_type), Some(filter)) => out.push(EventSubscription {
                            event_type,
                            filter: Some(filter),
                            payload: e.get("payload").map(to_json),
                        }),
                        _ => ok = false,
                    }
                }
                _ => {
                    self.wrong_type(item, &p, "an event name or a mapping with eventType and filter");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn event_type(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.string(node, path, MAX_EVENT_TYPE_LEN)?;
        let ok = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.'));
        if ok {
            Some(text)
        } else {
            self.error(
                Code::InvalidValue,
                node.pos,
                path,
                format!("'{text}' is not an event name"),
                "event names look like avi:jira:created:issue",
            );
            None
        }
    }

    fn event_filter(&mut self, node: &Node, path: &str) -> Option<EventFilter> {
        let f = self.map(node, path)?;
        f.check_keys(self, &["ignoreSelf", "expression", "onError", "appIsLicensed"], Strictness::Error);
        let ignore_self = self.opt_bool(&f, "ignoreSelf");
        let expression = self.opt_string(&f, "expression", MAX_STRING_LEN);
        let app_is_licensed = self.opt_bool(&f, "appIsLicensed");
        let on_error = match f.get("onError") {
            Some(n) => self.one_of(n, &f.child("onError"), &OnError::ALL)?,
            None => OnError::IgnoreAndLog,
        };
        if f.get("ignoreSelf").is_none() && f.get("expression").is_none() && f.get("appIsLicensed").is_none()
        {
            self.error(
                Code::MissingKey,
                f.pos,
                path,
                "a trigger filter needs at least one of ignoreSelf, expression or appIsLicensed",
                "add 'ignoreSelf: true' to skip events the app caused itself",
            );
            return None;
        }
        Some(EventFilter { ignore_self, expression, on_error, app_is_licensed })
    }

    fn consumer(&mut self, m: &MapView<'_>, key: ModuleKey) -> Option<Consumer> {
        m.check_keys(
            self,
            &["key", "queue", "function", "resolver", "endpoint", "crossVersion"],
            Strictness::Error,
        );
        let queue = self
            .req_string(m, "queue", 1024, "add 'queue: <queue name>' naming the queue this consumer reads")
            .and_then(|(q, pos)| {
                if matches_key_pattern(&q) && q.len() <= MAX_QUEUE_NAME_LEN {
                    Some(q)
                } else {
                    self.error(
                        Code::InvalidKey,
                        pos,
                        m.child("queue"),
                        format!(
                            "queue name '{}' must be 1 to {MAX_QUEUE_NAME_LEN} letters, digits, '-' or '_'",
                            truncate(&q, 60)
                        ),
                        format!("rename the queue, e.g. '{}'", cut(&sanitize_key(&q), MAX_QUEUE_NAME_LEN)),
                    );
                    None
                }
            });
        let targets = ["function", "resolver", "endpoint"].into_iter().filter(|k| m.get(k).is_some()).count();
        let target = if targets != 1 {
            self.error(
                if targets == 0 { Code::MissingKey } else { Code::InvalidValue },
                m.pos,
                m.child("function"),
                format!("{} needs exactly one of 'function', 'resolver' or 'endpoint'", describe(&m.path)),
                "add 'function: <key of a function module>'",
            );
            None
        } else if let Some(n) = m.get("function") {
            self.reference(n, &m.child("function")).map(ConsumerTarget::Function)
        } else if let Some(n) = m.get("endpoint") {
            self.reference(n, &m.child("endpoint")).map(ConsumerTarget::Endpoint)
        } else {
            m.get("resolver").and_then(|n| self.consumer_resolver(n, &m.child("resolver")))
        };
        let cross_version = self.opt_bool(m, "crossVersion").unwrap_or(false);
        Some(Consumer { key, queue: queue?, target: target?, cross_version })
    }

    fn consumer_resolver(&mut self, node: &Node, path: &str) -> Option<ConsumerTarget> {
        let r = self.map(node, path)?;
        if r.get("workflow").is_some() {
            self.error(
                Code::InvalidValue,
                r.pos,
                r.child("workflow"),
                "workflow consumers are not supported by Kiln",
                "use 'function: <key>' for the consumer",
            );
            return None;
        }
        r.check_keys(self, &["function", "method"], Strictness::Error);
        let function = match r.get("function") {
            Some(n) => self.reference(n, &r.child("function")),
            None => {
                self.error(
                    Code::MissingKey,
                    r.pos,
                    r.child("function"),
                    format!("{path} is missing 'function'"),
                    "add 'function: <key of the resolver function>'",
                );
                None
            }
        };
        let method = self
            .req_string(&r, "method", 255, "add 'method: <name given to resolver.define>'")
            .and_then(|(method, pos)| {
                if matches_key_pattern(&method) {
                    Some(method)
                } else {
                    self.error(
                        Code::InvalidKey,
                        pos,
                        r.child("method"),
                        format!("resolver method '{method}' may only contain letters, digits, '-' and '_'"),
                        "use the name passed to resolver.define()",
                    );
                    None
                }
            });
        Some(ConsumerTarget::Resolver { function: function?, method: method? })
    }

    fn endpoint(
        &mut self,
        m: &MapView<'_>,
        key: ModuleKey,
        node: &Node,
        remotes: &[Remote],
    ) -> Option<Endpoint> {
        m.check_keys(self, &["key", "remote", "service", "route", "auth"], Strictness::Warn);
        let remote = self.opt_string(m, "remote", 255);
        let service = self.opt_string(m, "service", 25);
        match (&remote, &service) {
            (None, None) => {
                self.error(
                    Code::MissingKey,
                    m.pos,
                    m.child("remote"),
                    format!("{} needs 'remote' or 'service'", describe(&m.path)),
                    "add 'remote: <key of an entry in remotes>'",
                );
                return None;
            }
            (Some(r), _) if !remotes.iter().any(|x| &x.key == r) => {
                let pos = m.get("remote").map_or(m.pos, |n| n.pos);
                self.dangling(
                    pos,
                    &m.child("remote"),
                    "remote",
                    r,
                    "remotes",
                    remotes.iter().map(|x| x.key.as_str()),
                );
                return None;
            }
            _ => {}
        }
        Some(Endpoint { key, remote, service, raw: to_json(node) })
    }

    fn other_module(
        &mut self,
        m: &MapView<'_>,
        key: ModuleKey,
        module_type: &str,
        node: &Node,
        resources: &[Resource],
    ) -> Option<OtherModule> {
        if m.get("unlicensedAccess").is_some() {
            self.error(
                Code::UnknownKey,
                m.pos,
                m.child("unlicensedAccess"),
                "'unlicensedAccess' is not allowed on modules",
                "remove it",
            );
        }
        let resolver = match m.get("resolver") {
            None => None,
            Some(n) => {
                let r = self.map(n, &m.child("resolver"))?;
                r.check_keys(self, &["function", "endpoint"], Strictness::Error);
                Some(self.target(&r)?)
            }
        };
        let function = match m.get("function") {
            Some(n) if matches!(n.value, Value::Str(_)) => Some(self.reference(n, &m.child("function"))?),
            _ => None,
        };
        let resource = match m.get("resource") {
            None => None,
            Some(n) => {
                let text = self.string(n, &m.child("resource"), 47)?;
                let declared = text.split('/').next().unwrap_or_default();
                if !resources.iter().any(|r| r.key == declared) {
                    self.dangling(
                        n.pos,
                        &m.child("resource"),
                        "resource",
                        declared,
                        "resources",
                        resources.iter().map(|r| r.key.as_str()),
                    );
                    return None;
                }
                Some(text)
            }
        };
        Some(OtherModule {
            module_type: module_type.to_owned(),
            key,
            resolver,
            function,
            resource,
            raw: to_json(node),
        })
    }

    /// Every `function:` and `endpoint:` reference names a declared module.
    fn references(&mut self, map: &MapView<'_>, modules: &Modules) {
        let functions: Vec<&str> = modules.functions.iter().map(|f| f.key.as_str()).collect();
        let endpoints: Vec<&str> = modules.endpoints.iter().map(|e| e.key.as_str()).collect();
        let mut refs: Vec<(String, Target)> = Vec::new();
        for w in &modules.webtriggers {
            refs.push((w.key.to_string(), w.target.clone()));
        }
        for s in &modules.scheduled_triggers {
            refs.push((s.key.to_string(), s.target.clone()));
        }
        for t in &modules.triggers {
            refs.push((t.key.to_string(), t.target.clone()));
        }
        for c in &modules.consumers {
            let target = match &c.target {
                ConsumerTarget::Function(k) | ConsumerTarget::Resolver { function: k, .. } => {
                    Target::Function(k.clone())
                }
                ConsumerTarget::Endpoint(k) => Target::Endpoint(k.clone()),
            };
            refs.push((c.key.to_string(), target));
        }
        for o in &modules.others {
            if let Some(t) = &o.resolver {
                refs.push((o.key.to_string(), t.clone()));
            }
            if let Some(f) = &o.function {
                refs.push((o.key.to_string(), Target::Function(f.clone())));
            }
        }
        let mut used = std::collections::HashSet::new();
        for (owner, target) in refs {
            let (kind, key, declared, section) = match &target {
                Target::Function(k) => ("function", k, &functions, "modules.function"),
                Target::Endpoint(k) => ("endpoint", k, &endpoints, "modules.endpoint"),
            };
            used.insert(key.as_str().to_owned());
            if declared.contains(&key.as_str()) {
                continue;
            }
            let (path, pos) = self.reference_site(map, &owner, kind);
            self.dangling(pos, &path, kind, key.as_str(), section, declared.iter().copied());
        }
        for f in &modules.functions {
            if !used.contains(f.key.as_str()) {
                let pos = self.module_keys.get(f.key.as_str()).map_or(map.pos, |(_, p)| *p);
                self.warn(
                    Code::Advice,
                    pos,
                    "modules.function",
                    format!("function '{}' is not used by any module", f.key),
                    "remove it, or reference it from a trigger, web trigger, consumer or UI resolver",
                );
            }
        }
    }

    /// Where the reference from module `owner` is written, for messages.
    fn reference_site(&self, map: &MapView<'_>, owner: &str, kind: &str) -> (String, Pos) {
        for (type_key, list) in map.entries {
            let Value::Seq(items) = &list.value else {
                continue;
            };
            for (i, item) in items.iter().enumerate() {
                let Value::Map(entries) = &item.value else {
                    continue;
                };
                let is_owner =
                    entries.iter().any(|(k, v)| k.name == "key" && v.value == Value::Str(owner.to_owned()));
                if !is_owner {
                    continue;
                }
                let base = format!("modules.{}[{i}]", type_key.name);
                for (k, v) in entries {
                    if k.name == kind {
                        return (format!("{base}.{kind}"), v.pos);
                    }
                    if k.name == "resolver"
                        && let Value::Map(inner) = &v.value
                        && let Some((_, n)) = inner.iter().find(|(ik, _)| ik.name == kind)
                    {
                        return (format!("{base}.resolver.{kind}"), n.pos);
                    }
                }
                return (base, item.pos);
            }
        }
        ("modules".to_owned(), map.pos)
    }

    fn dangling<'a>(
        &mut self,
        pos: Pos,
        path: &str,
        kind: &str,
        name: &str,
        section: &str,
        declared: impl Iterator<Item = &'a str> + Clone,
    ) {
        let list: Vec<&str> = declared.clone().collect();
        let hint = match (nearest(name, declared), list.is_empty()) {
            (Some(near), _) => format!("did you mean '{near}'? Declared in {section}: {}", list.join(", ")),
            (None, true) => format!("declare it in {section} first"),
            (None, false) => format!("declared in {section}: {}", list.join(", ")),
        };
        self.error(
            Code::DanglingReference,
            pos,
            path,
            format!("{kind} '{name}' is not declared in {section}"),
            hint,
        );
    }

    // ------------------------------------------------------------ permissions

    fn permissions(&mut self, node: &Node, remotes: &[Remote]) -> Permissions {
        let mut p = Permissions::default();
        let Some(map) = self.map(node, "permissions") else {
            return p;
        };
        map.check_keys(self, &["scopes", "content", "external", "enforcement", "sandbox"], Strictness::Error);
        if let Some(n) = map.get("scopes") {
            p.scopes = self.scopes(n);
        }
        if let Some(n) = map.get("content")
            && let Some(c) = self.map(n, "permissions.content")
        {
            c.check_keys(self, &["scripts", "styles"], Strictness::Error);
            if let Some(s) = c.get("scripts") {
                p.content_scripts = self.csp_list(s, "permissions.content.scripts", true);
            }
            if let Some(s) = c.get("styles") {
                p.content_styles = self.csp_list(s, "permissions.content.styles", false);
            }
        }
        if let Some(n) = map.get("external") {
            self.external(n, remotes, &mut p);
        }
        if let Some(n) = map.get("enforcement") {
            p.app_managed_enforcement =
                self.one_of(n, "permissions.enforcement", &[("app-managed", true)]).unwrap_or(false);
        }
        if let Some(n) = map.get("sandbox")
            && let Some(items) = self.seq(n, "permissions.sandbox")
        {
            for (i, item) in items.iter().enumerate() {
                let path = format!("permissions.sandbox[{i}]");
                if let Some(v) = self.one_of(
                    item,
                    &path,
                    &[("allow-storage-access-by-user-activation", "allow-storage-access-by-user-activation")],
                ) {
                    p.sandbox.push(v.to_owned());
                }
            }
        }
        p
    }

    fn scopes(&mut self, node: &Node) -> BTreeMap<Scope, ScopeGrant> {
        let mut out = BTreeMap::new();
        let entries: Vec<(String, Pos, ScopeGrant)> = match &node.value {
            Value::Null => Vec::new(),
            Value::Seq(items) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let path = format!("permissions.scopes[{i}]");
                    self.string(item, &path, 255).map(|s| (s, item.pos, ScopeGrant::default()))
                })
                .collect(),
            Value::Map(entries) => entries
                .iter()
                .filter_map(|(k, v)| {
                    let path = format!("permissions.scopes.{}", k.name);
                    let grant = match &v.value {
                        Value::Null => Some(ScopeGrant::default()),
                        Value::Map(_) => self.map(v, &path).map(|g| {
                            g.check_keys(self, &["allowImpersonation"], Strictness::Error);
                            ScopeGrant {
                                allow_impersonation: self.opt_bool(&g, "allowImpersonation").unwrap_or(false),
                            }
                        }),
                        _ => {
                            self.wrong_type(v, &path, "a mapping such as {allowImpersonation: true}");
                            None
                        }
                    };
                    grant.map(|g| (k.name.clone(), k.pos, g))
                })
                .collect(),
            _ => {
                self.wrong_type(
                    node,
                    "permissions.scopes",
                    "a list of scopes (or a mapping of scope to options)",
                );
                Vec::new()
            }
        };
        for (scope, pos, grant) in entries {
            let path = "permissions.scopes";
            if scope.is_empty() || scope.chars().any(char::is_whitespace) {
                self.error(
                    Code::UnknownScope,
                    pos,
                    path,
                    format!("'{scope}' is not a scope name"),
                    "scope names have no spaces, e.g. read:jira-work",
                );
                continue;
            }
            if !scopes::is_known(&scope) {
                let near = scopes::nearest(&scope);
                let hint = if near.is_empty() {
                    "Kiln accepts the scopes named in Atlassian's Jira and Confluence API documents and Forge's platform scopes (storage:app, read:app-system-token, read:app-user-token, report:personal-data)".to_owned()
                } else {
                    format!(
                        "did you mean {}?",
                        near.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(" or ")
                    )
                };
                self.error(Code::UnknownScope, pos, path, format!("unknown scope '{scope}'"), hint);
                continue;
            }
            if out.insert(Scope::new_unchecked(&scope), grant).is_some() {
                self.warn(
                    Code::DuplicateKey,
                    pos,
                    path,
                    format!("scope '{scope}' is listed twice"),
                    "remove the repeated entry",
                );
            }
        }
        out
    }

    fn csp_list(&mut self, node: &Node, path: &str, scripts: bool) -> Vec<String> {
        let Some(items) = self.seq(node, path) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let Some(text) = self.string(item, &p, 128) else {
                continue;
            };
            let ok = if scripts {
                matches!(text.as_str(), "unsafe-inline" | "unsafe-hashes" | "unsafe-eval" | "blob:")
                    || is_csp_hash(&text)
            } else {
                text == "unsafe-inline"
            };
            if ok {
                out.push(text);
            } else {
                let allowed = if scripts {
                    "unsafe-inline, unsafe-hashes, unsafe-eval, blob: or a sha256-/sha384-/sha512- hash"
                } else {
                    "unsafe-inline"
                };
                self.error(
                    Code::InvalidValue,
                    item.pos,
                    &p,
                    format!("'{text}' is not a content security option"),
                    format!("use {allowed}"),
                );
            }
        }
        out
    }

    fn external(&mut self, node: &Node, remotes: &[Remote], p: &mut Permissions) {
        let Some(ext) = self.map(node, "permissions.external") else {
            return;
        };
        ext.check_keys(
            self,
            &[
                "fetch",
                "fonts",
                "frames",
                "navigation",
                "images",
                "media",
                "scripts",
                "styles",
                "configurable",
            ],
            Strictness::Error,
        );
        if let Some(f) = ext.get("fetch")
            && let Some(fetch) = self.map(f, "permissions.external.fetch")
        {
            fetch.check_keys(self, &["backend", "client"], Strictness::Error);
            for (key, kind) in
                [("backend", ExternalKind::FetchBackend), ("client", ExternalKind::FetchClient)]
            {
                if let Some(list) = fetch.get(key) {
                    let entries = self.egress_list(list, kind, remotes);
                    p.external.insert(kind, entries);
                }
            }
        }
        for (key, kind) in [
            ("fonts", ExternalKind::Fonts),
            ("frames", ExternalKind::Frames),
            ("navigation", ExternalKind::Navigation),
            ("images", ExternalKind::Images),
            ("media", ExternalKind::Media),
            ("scripts", ExternalKind::Scripts),
            ("styles", ExternalKind::Styles),
        ] {
            if let Some(list) = ext.get(key) {
                let entries = self.egress_list(list, kind, remotes);
                p.external.insert(kind, entries);
            }
        }
        if let Some(c) = ext.get("configurable")
            && let Some(cfg) = self.map(c, "permissions.external.configurable")
        {
            cfg.check_keys(self, &["enabled"], Strictness::Error);
            p.configurable_egress = self.opt_bool(&cfg, "enabled").unwrap_or(false);
        }
    }

    fn egress_list(&mut self, node: &Node, kind: ExternalKind, remotes: &[Remote]) -> Vec<EgressEntry> {
        let path = kind.manifest_path();
        let mut out: Vec<EgressEntry> = Vec::new();
        let items = match &node.value {
            Value::Null => return out,
            _ => match self.seq(node, path) {
                Some(items) => items,
                None => return out,
            },
        };
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let entry = match &item.value {
                Value::Str(s) => self.egress_target(s, item.pos, &p, kind).map(|target| EgressEntry {
                    target,
                    analytics: false,
                    in_scope_eud: true,
                }),
                Value::Map(_) => self.egress_object(item, &p, kind, remotes),
                _ => {
                    self.wrong_type(item, &p, "a host, URL or {address: ...} mapping");
                    None
                }
            };
            if let Some(entry) = entry
                && !out.contains(&entry)
            {
                out.push(entry);
            }
        }
        out
    }

    fn egress_object(
        &mut self,
        node: &Node,
        path: &str,
        kind: ExternalKind,
        remotes: &[Remote],
    ) -> Option<EgressEntry> {
        let m = self.map(node, path)?;
        if let Some(r) = m.get("remote") {
            m.check_keys(self, &["remote"], Strictness::Error);
            if !matches!(kind, ExternalKind::FetchBackend | ExternalKind::FetchClient) {
                self.error(
                    Code::InvalidEgress,
                    r.pos,
                    m.child("remote"),
                    "'remote' entries are only allowed under fetch.backend and fetch.client",
                    "list the remote's host instead",
                );
                return None;
            }
            let key = self.string(r, &m.child("remote"), MAX_EGRESS_LEN)?;
            if !remotes.iter().any(|x| x.key == key) {
                self.dangling(
                    r.pos,
                    &m.child("remote"),
                    "remote",
                    &key,
                    "remotes",
                    remotes.iter().map(|x| x.key.as_str()),
                );
                return None;
            }
            return Some(EgressEntry {
                target: EgressTarget::Remote(key),
                analytics: false,
                in_scope_eud: true,
            });
        }
        m.check_keys(self, &["address", "category", "inScopeEUD"], Strictness::Error);
        let (address, pos) =
            self.req_string(&m, "address", MAX_EGRESS_LEN, "add 'address: api.example.com'")?;
        let target = self.egress_target(&address, pos, &m.child("address"), kind)?;
        let analytics = match m.get("category") {
            Some(n) => self.one_of(n, &m.child("category"), &[("analytics", true)])?,
            None => false,
        };
        let in_scope_eud = self.opt_bool(&m, "inScopeEUD").unwrap_or(true);
        Some(EgressEntry { target, analytics, in_scope_eud })
    }

    /// Parse one egress string: `*`, `*.domain`, a bare host, or a URL.
    fn egress_target(&mut self, raw: &str, pos: Pos, path: &str, kind: ExternalKind) -> Option<EgressTarget> {
        let backend = kind == ExternalKind::FetchBackend;
        let text = raw.trim();
        let invalid = |cx: &mut Self, code: Code, why: String, hint: &str| {
            cx.error(code, pos, path, why, hint);
            None
        };
        if text.is_empty() {
            return invalid(
                self,
                Code::InvalidEgress,
                "an egress entry is empty".into(),
                "remove it or name a host",
            );
        }
        if text.len() > MAX_EGRESS_LEN {
            return invalid(
                self,
                Code::TooLarge,
                format!("egress entry is {} characters; the limit is {MAX_EGRESS_LEN}", text.len()),
                "shorten it to the host name",
            );
        }
        if text == "*" {
            self.warn(
                Code::Advice,
                pos,
                path,
                "'*' allows egress to every public host",
                "declare the hosts the app needs instead; customers must consent to every host it can reach",
            );
            return Some(EgressTarget::Any);
        }
        let lower = text.to_ascii_lowercase();
        if let Some((scheme, rest)) = lower.split_once(':') {
            let looks_like_scheme = !scheme.is_empty()
                && scheme.bytes().all(|b| b.is_ascii_alphabetic() || matches!(b, b'+' | b'-' | b'.'));
            let is_port = rest.bytes().next().is_some_and(|b| b.is_ascii_digit());
            if looks_like_scheme && !is_port {
                return match scheme {
                    "https" | "wss" if rest.starts_with("//") => self.egress_url(text, pos, path),
                    "http" | "ws" => invalid(
                        self,
                        Code::InsecureEgress,
                        format!("egress to '{text}' uses plain {scheme}:, which Kiln never allows"),
                        &format!(
                            "use https:// (egress is always encrypted), e.g. 'https://{}'",
                            truncate(rest.trim_start_matches('/'), 80)
                        ),
                    ),
                    s if BLOCKED_SCHEMES.contains(&s) => invalid(
                        self,
                        Code::InvalidEgress,
                        format!(
                            "egress to '{}' uses the {s}: scheme, which is never allowed",
                            truncate(text, 80)
                        ),
                        "declare an https host such as api.example.com",
                    ),
                    _ if backend => invalid(
                        self,
                        Code::InvalidEgress,
                        format!("backend egress '{}' is not an https host", truncate(text, 80)),
                        "backend fetch reaches https hosts only; declare e.g. api.example.com",
                    ),
                    s => Some(EgressTarget::Scheme(s.to_owned())),
                };
            }
        }
        if let Some(domain) = lower.strip_prefix("*.") {
            if !domain.trim_end_matches('.').contains('.') {
                return invalid(
                    self,
                    Code::InvalidEgress,
                    format!("'{text}' allows every host under a top-level domain"),
                    "narrow the wildcard to your own domain, e.g. *.example.com",
                );
            }
            let host = self.egress_host(domain, pos, path)?;
            return Some(EgressTarget::Subdomains(host));
        }
        if lower.contains('*') {
            return invalid(
                self,
                Code::InvalidEgress,
                format!("'{text}' has a wildcard that is not a leading '*.'"),
                "use '*.example.com' for subdomains, or list hosts one by one",
            );
        }
        self.egress_host(&lower, pos, path).map(EgressTarget::Host)
    }

    fn egress_url(&mut self, text: &str, pos: Pos, path: &str) -> Option<EgressTarget> {
        let Ok(url) = url::Url::parse(text) else {
            self.error(
                Code::InvalidEgress,
                pos,
                path,
                format!("'{}' is not a valid URL", truncate(text, 80)),
                "write an https URL such as https://api.example.com or a bare host",
            );
            return None;
        };
        if !url.username().is_empty() || url.password().is_some() {
            self.error(
                Code::InvalidEgress,
                pos,
                path,
                "egress URL carries user info",
                "remove the 'user:password@' part; credentials never belong in a manifest",
            );
            return None;
        }
        if (url.path() != "/" && !url.path().is_empty()) || url.query().is_some() {
            self.warn(
                Code::Advice,
                pos,
                path,
                "the path of an egress URL is ignored; only the host is checked",
                "declare the host alone",
            );
        }
        let host = url.host_str().unwrap_or_default().to_owned();
        if let Some(domain) = host.strip_prefix("*.") {
            return Some(EgressTarget::Subdomains(domain.to_owned()));
        }
        self.egress_host(&host, pos, path).map(EgressTarget::Host)
    }

    /// Validate and normalise a host name (lower case, IDNA, no trailing dot).
    fn egress_host(&mut self, host: &str, pos: Pos, path: &str) -> Option<String> {
        let bad_char = host.chars().find(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, '/' | '\\' | '?' | '#' | '@' | '%' | '*')
        });
        let parsed = match bad_char {
            Some(_) => None,
            None => url::Url::parse(&format!("https://{host}/")).ok(),
        };
        let normalised = parsed.and_then(|u| {
            let h = u.host_str()?.trim_end_matches('.').to_owned();
            (u.path() == "/").then_some(h)
        });
        match normalised {
            Some(h) if h.contains('.') || h.starts_with('[') => Some(h),
            _ => {
                self.error(
                    Code::InvalidEgress,
                    pos,
                    path,
                    format!("'{}' is not a host name", truncate(host, 80)),
                    "declare a fully qualified host such as api.example.com (no path, no spaces)",
                );
                None
            }
        }
    }

    // ------------------------------------------------------ remotes, resources

    /// Remote and resource keys: Forge's key pattern, at most 23 characters.
    fn short_key(&mut self, kind: &str, key: &str, pos: Pos, path: &str) -> bool {
        let ok = matches_key_pattern(key) && key.len() <= MAX_REMOTE_KEY_LEN;
        if !ok {
            self.error(
                Code::InvalidKey,
                pos,
                path,
                format!(
                    "{kind} key '{}' must be 1 to {MAX_REMOTE_KEY_LEN} letters, digits, '-' or '_'",
                    truncate(key, 40)
                ),
                format!("rename it, e.g. '{}'", cut(&sanitize_key(key), MAX_REMOTE_KEY_LEN)),
            );
        }
        ok
    }

    fn remotes(&mut self, node: &Node) -> Vec<Remote> {
        let mut out: Vec<Remote> = Vec::new();
        let Some(items) = self.seq(node, "remotes") else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("remotes[{i}]");
            let Some(m) = self.map(item, &path) else {
                continue;
            };
            m.check_keys(
                self,
                &["key", "baseUrl", "operations", "auth", "storage", "configurable"],
                Strictness::Error,
            );
            let Some((key, key_pos)) = self.req_string(&m, "key", 255, "give the remote a 'key'") else {
                continue;
            };
            if !self.short_key("remote", &key, key_pos, &m.child("key")) {
                continue;
            }
            if out.iter().any(|r| r.key == key) {
                self.error(
                    Code::DuplicateModuleKey,
                    key_pos,
                    m.child("key"),
                    format!("remote key '{key}' is declared twice"),
                    "remote keys must be unique",
                );
                continue;
            }
            let configurable = m.get("configurable").map(to_json);
            let base_urls = match m.get("baseUrl") {
                Some(n) => match self.base_urls(n, &m.child("baseUrl")) {
                    Some(b) => b,
                    None => continue,
                },
                None if configurable.is_some() => BTreeMap::new(),
                None => {
                    self.error(
                        Code::MissingKey,
                        m.pos,
                        m.child("baseUrl"),
                        format!("remote '{key}' is missing 'baseUrl'"),
                        "add 'baseUrl: https://remote.example.com'",
                    );
                    continue;
                }
            };
            let mut operations = Vec::new();
            if let Some(n) = m.get("operations")
                && let Some(ops) = self.seq(n, &m.child("operations"))
            {
                for (j, op) in ops.iter().enumerate() {
                    let p = format!("{}.operations[{j}]", path);
                    if let Some(o) = self.one_of(
                        op,
                        &p,
                        &[
                            ("storage", "storage"),
                            ("other", "other"),
                            ("compute", "compute"),
                            ("fetch", "fetch"),
                        ],
                    ) {
                        operations.push(o.to_owned());
                    }
                }
            }
            let (mut app_system_token, mut app_user_token) = (false, false);
            if let Some(n) = m.get("auth")
                && let Some(a) = self.map(n, &m.child("auth"))
            {
                a.check_keys(self, &["appSystemToken", "appUserToken"], Strictness::Error);
                for (k, slot) in
                    [("appSystemToken", &mut app_system_token), ("appUserToken", &mut app_user_token)]
                {
                    if let Some(t) = a.get(k)
                        && let Some(t) = self.map(t, &a.child(k))
                    {
                        t.check_keys(self, &["enabled"], Strictness::Error);
                        *slot = self.opt_bool(&t, "enabled").unwrap_or(false);
                    }
                }
            }
            let in_scope_eud = match m.get("storage") {
                Some(n) => self.map(n, &m.child("storage")).and_then(|s| {
                    s.check_keys(self, &["inScopeEUD"], Strictness::Error);
                    self.opt_bool(&s, "inScopeEUD")
                }),
                None => None,
            };
            if operations.iter().any(|o| o == "storage") && in_scope_eud.is_none() {
                self.error(
                    Code::MissingKey,
                    m.pos,
                    m.child("storage.inScopeEUD"),
                    format!("remote '{key}' stores data but does not say whether end-user data is in scope"),
                    "add 'storage: {inScopeEUD: true}' (or false if no end-user data is stored)",
                );
            }
            out.push(Remote {
                key,
                base_urls,
                operations,
                app_system_token,
                app_user_token,
                in_scope_eud,
                configurable,
            });
        }
        out
    }

    fn base_urls(&mut self, node: &Node, path: &str) -> Option<BTreeMap<String, String>> {
        const REGIONS: [&str; 12] =
            ["default", "EU", "US", "AU", "DE", "SG", "CA", "IN", "KR", "JP", "GB", "CH"];
        let mut out = BTreeMap::new();
        match &node.value {
            Value::Str(_) => {
                let url = self.https_url(node, path)?;
                out.insert("default".to_owned(), url);
            }
            Value::Map(_) => {
                let m = self.map(node, path)?;
                m.check_keys(self, &REGIONS, Strictness::Error);
                if m.get("default").is_none() {
                    self.error(
                        Code::MissingKey,
                        m.pos,
                        m.child("default"),
                        "a regional baseUrl needs a 'default' URL",
                        "add 'default: https://remote.example.com'",
                    );
                    return None;
                }
                for (k, v) in m.entries {
                    if REGIONS.contains(&k.name.as_str()) {
                        out.insert(k.name.clone(), self.https_url(v, &m.child(&k.name))?);
                    }
                }
            }
            _ => {
                self.wrong_type(node, path, "an https URL or a mapping of region to URL");
                return None;
            }
        }
        Some(out)
    }

    fn https_url(&mut self, node: &Node, path: &str) -> Option<String> {
        let text = self.string(node, path, 2048)?;
        match url::Url::parse(&text) {
            Ok(u)
                if u.scheme() == "https"
                    && u.username().is_empty()
                    && u.password().is_none()
                    && u.host_str().is_some() =>
            {
                Some(u.to_string())
            }
            Ok(u) if u.scheme() == "http" => {
                self.error(
                    Code::InsecureEgress,
                    node.pos,
                    path,
                    format!("'{}' uses plain http:", truncate(&text, 80)),
                    "remotes are reached over https only; use https://",
                );
                None
            }
            _ => {
                self.error(
                    Code::InvalidValue,
                    node.pos,
                    path,
                    format!("'{}' is not an https URL", truncate(&text, 80)),
                    "write it as https://remote.example.com (no user info)",
                );
                None
            }
        }
    }

    fn resources(&mut self, node: &Node) -> Vec<Resource> {
        let mut out: Vec<Resource> = Vec::new();
        let Some(items) = self.seq(node, "resources") else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("resources[{i}]");
            let Some(m) = self.map(item, &path) else {
                continue;
            };
            m.check_keys(self, &["key", "path", "bundler", "entry", "tunnel"], Strictness::Error);
            let key = self.req_string(&m, "key", 255, "give the resource a 'key'");
            let res_path = self.req_string(&m, "path", 1024, "add 'path: static/app/build'");
            let (Some((key, key_pos)), Some((res_path, path_pos))) = (key, res_path) else {
                continue;
            };
            if !self.short_key("resource", &key, key_pos, &m.child("key")) {
                continue;
            }
            if res_path.starts_with('/')
                || res_path.split(['/', '\\']).any(|s| s == "..")
                || res_path.contains('\\')
            {
                self.error(
                    Code::InvalidValue,
                    path_pos,
                    m.child("path"),
                    format!("resource path '{}' leaves the app directory", truncate(&res_path, 80)),
                    "use a relative path inside the app, e.g. static/app/build",
                );
                // Keep it listed so references to it are not also reported.
            }
            if out.iter().any(|r| r.key == key) {
                self.error(
                    Code::DuplicateModuleKey,
                    key_pos,
                    m.child("key"),
                    format!("resource key '{key}' is declared twice"),
                    "resource keys must be unique",
                );
                continue;
            }
            let carried = ["bundler", "entry", "tunnel"]
                .into_iter()
                .filter_map(|k| m.get(k).map(|n| (k.to_owned(), to_json(n))))
                .collect();
            out.push(Resource { key, path: res_path, carried });
        }
        out
    }

    fn environment(&mut self, node: &Node) -> Vec<EnvVariable> {
        let mut out: Vec<EnvVariable> = Vec::new();
        let Some(m) = self.map(node, "environment") else {
            return out;
        };
        m.check_keys(self, &["variables"], Strictness::Error);
        let Some(list) = m.get("variables") else {
            return out;
        };
        let Some(items) = self.seq(list, "environment.variables") else {
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("environment.variables[{i}]");
            let (name, default, pos) = match &item.value {
                Value::Str(s) => (s.clone(), None, item.pos),
                Value::Map(_) => {
                    let Some(v) = self.map(item, &path) else {
                        continue;
                    };
                    v.check_keys(self, &["key", "default"], Strictness::Error);
                    let Some((name, pos)) = self.req_string(&v, "key", 255, "add 'key: MY_VARIABLE'") else {
                        continue;
                    };
                    let default = match v.get("default") {
                        Some(_) => self.opt_string(&v, "default", MAX_STRING_LEN),
                        None => {
                            self.error(
                                Code::MissingKey,
                                v.pos,
                                v.child("default"),
                                format!("{path} is missing 'default'"),
                                "add 'default: <value>' or write the variable as a plain name",
                            );
                            continue;
                        }
                    };
                    (name, default, pos)
                }
                _ => {
                    self.wrong_type(item, &path, "a variable name or {key, default}");
                    continue;
                }
            };
            let valid = name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && name.len() <= 255;
            if !valid {
                self.error(
                    Code::InvalidKey,
                    pos,
                    &path,
                    format!("variable name '{}' is not valid", truncate(&name, 40)),
                    "use letters, digits and '_', not starting with a digit, e.g. API_BASE_URL",
                );
                continue;
            }
            if out.iter().any(|e| e.name == name) {
                self.warn(
                    Code::DuplicateKey,
                    pos,
                    &path,
                    format!("variable '{name}' is declared twice"),
                    "remove one",
                );
                continue;
            }
            out.push(EnvVariable { name, default });
        }
        out
    }
}

/// Schemes that must never be egress targets (script or local-resource
/// schemes), as in Forge's validator.
const BLOCKED_SCHEMES: [&str; 12] = [
    "javascript",
    "data",
    "vbscript",
    "view-source",
    "resource",
    "about",
    "chrome",
    "livescript",
    "mocha",
    "file",
    "mhtml",
    "smb",
];

fn is_csp_hash(s: &str) -> bool {
    let b64 = |t: &str, n: usize| {
        t.len() == n && t.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
    };
    s.strip_prefix("sha256-").is_some_and(|t| b64(t, 44))
        || s.strip_prefix("sha384-").is_some_and(|t| b64(t, 64))
        || s.strip_prefix("sha512-").is_some_and(|t| b64(t, 88))
}

fn describe(path: &str) -> String {
    if path.is_empty() { "the manifest".to_owned() } else { path.to_owned() }
}

fn sanitize_key(s: &str) -> String {
    let cleaned: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if cleaned.is_empty() { "key".to_owned() } else { cleaned }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// The first `max` characters, for suggesting a shorter name.
fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect::<String>().trim_end_matches('-').to_owned()
}
