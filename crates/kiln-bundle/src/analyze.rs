//! One source file in, JavaScript and its import/export facts out.
//!
//! TypeScript and JSX are compiled away with oxc; plain JavaScript is kept
//! byte for byte. The facts are read from the final program (after type-only
//! imports have been removed), so the bundle never asks for a module that
//! only existed for the type checker.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use oxc::allocator::Allocator;
use oxc::ast::ast::{
    Argument, AssignmentTarget, BindingPattern, Declaration, Expression, ImportDeclarationSpecifier,
    ModuleDeclaration, ModuleExportName, ObjectPropertyKind, Program, PropertyKey, Statement,
};
use oxc::ast_visit::{Visit, walk};
use oxc::codegen::Codegen;
use oxc::diagnostics::{OxcDiagnostic, Severity};
use oxc::parser::Parser;
use oxc::semantic::SemanticBuilder;
use oxc::span::SourceType;
use oxc::transformer::{TransformOptions, Transformer};

use crate::ModuleKind;

/// Everything the bundler needs to know about one file.
#[derive(Debug)]
pub(crate) struct Analysis {
    pub(crate) kind: ModuleKind,
    pub(crate) code: String,
    /// Static specifiers the module loads, with the 1-based line of each.
    pub(crate) requests: Vec<Request>,
    pub(crate) exports: Exports,
    /// The module calls `require` (with any argument).
    pub(crate) calls_require: bool,
    /// Names the module imports (or re-exports) by name, per specifier:
    /// `import { a, b as c } from 'x'` and `export { a } from 'x'` ask `x`
    /// for `a` and `b`.
    pub(crate) imported: BTreeMap<String, BTreeSet<String>>,
}

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub(crate) specifier: String,
    pub(crate) line: u32,
    /// `require()` resolves with Node's `require` conditions, everything else
    /// with `import` conditions.
    pub(crate) via_require: bool,
}

/// What a module exports, as far as static analysis can tell.
#[derive(Debug, Default)]
pub(crate) struct Exports {
    pub(crate) names: BTreeSet<String>,
    /// `export * from 'x'` / `module.exports = require('x')`: specifiers
    /// whose exports are also this module's.
    pub(crate) star_from: Vec<String>,
    /// Something was assigned to `module.exports` that static analysis cannot
    /// see into (a function, a variable, a call result).
    pub(crate) opaque: bool,
}

/// A syntax or transform error, located.
#[derive(Debug)]
pub(crate) struct SourceError {
    pub(crate) line: u32,
    pub(crate) column: u32,
    pub(crate) message: String,
}

pub(crate) fn analyze(path: &Path, source: &str) -> Result<Analysis, SourceError> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("js");
    let source_type = match ext {
        "ts" | "mts" | "cts" => SourceType::ts(),
        "tsx" => SourceType::tsx(),
        "jsx" => SourceType::jsx(),
        "mjs" => SourceType::mjs(),
        "cjs" => SourceType::cjs(),
        _ => SourceType::unambiguous().with_jsx(true),
    };
    let needs_transform = matches!(ext, "ts" | "mts" | "cts" | "tsx" | "jsx");
    let allocator = Allocator::default();
    let parsed = Parser::new(&allocator, source, source_type).parse();
    if let Some(error) = first_error(&parsed.diagnostics) {
        return Err(located(source, error));
    }
    if parsed.panicked {
        return Err(SourceError { line: 1, column: 1, message: "the parser gave up on this file".into() });
    }
    let mut program = parsed.program;
    let code = if needs_transform {
        // The transformer lowers `enum` to objects from the member values
        // the semantic pass evaluates; without them it panics on any enum.
        let semantic = SemanticBuilder::new().with_enum_eval(true).build(&program);
        if let Some(error) = first_error(&semantic.diagnostics) {
            return Err(located(source, error));
        }
        let scoping = semantic.semantic.into_scoping();
        let options = TransformOptions::default();
        let transformed =
            Transformer::new(&allocator, path, &options).build_with_scoping(scoping, &mut program);
        if let Some(error) = first_error(&transformed.diagnostics) {
            return Err(located(source, error));
        }
        Codegen::new().build(&program).code
    } else {
        source.to_owned()
    };
    let has_module_syntax = program.body.iter().any(|s| s.is_module_declaration());
    let kind = match ext {
        "mjs" | "mts" => ModuleKind::Esm,
        "cjs" | "cts" => ModuleKind::CommonJs,
        _ if has_module_syntax => ModuleKind::Esm,
        _ => ModuleKind::CommonJs,
    };
    let mut collector =
        Collector { source, requests: Vec::new(), calls_require: false, imported: BTreeMap::new() };
    collector.visit_program(&program);
    let exports = exports_of(&program);
    Ok(Analysis {
        kind,
        code,
        requests: collector.requests,
        exports,
        calls_require: collector.calls_require,
        imported: collector.imported,
    })
}

fn first_error(diagnostics: &[OxcDiagnostic]) -> Option<&OxcDiagnostic> {
    diagnostics.iter().find(|d| d.severity == Severity::Error)
}

fn located(source: &str, error: &OxcDiagnostic) -> SourceError {
    let offset = error.labels.first().map_or(0, |label| label.offset());
    let (line, column) = line_col(source, offset as usize);
    SourceError { line, column, message: error.message.to_string() }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(source: &str, offset: usize) -> (u32, u32) {
    let before = source.get(..offset.min(source.len())).unwrap_or_default();
    let line = before.bytes().filter(|b| *b == b'\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (u32::try_from(line).unwrap_or(u32::MAX), u32::try_from(column).unwrap_or(u32::MAX))
}

struct Collector<'s> {
    source: &'s str,
    requests: Vec<Request>,
    calls_require: bool,
    imported: BTreeMap<String, BTreeSet<String>>,
}

impl Collector<'_> {
    fn push(&mut self, specifier: &str, offset: u32, via_require: bool) {
        let (line, _) = line_col(self.source, offset as usize);
        self.requests.push(Request { specifier: specifier.to_owned(), line, via_require });
    }
}

impl<'a> Visit<'a> for Collector<'_> {
    fn visit_module_declaration(&mut self, it: &ModuleDeclaration<'a>) {
        match it {
            ModuleDeclaration::ImportDeclaration(d) => {
                self.push(&d.source.value, d.span.start, false);
                let names = d.specifiers.iter().flatten().filter_map(|s| match s {
                    ImportDeclarationSpecifier::ImportSpecifier(s) => Some(export_name(&s.imported)),
                    _ => None,
                });
                self.imported.entry(d.source.value.to_string()).or_default().extend(names);
            }
            ModuleDeclaration::ExportAllDeclaration(d) => self.push(&d.source.value, d.span.start, false),
            ModuleDeclaration::ExportFromDeclaration(d) => {
                self.push(&d.source.value, d.span.start, false);
                let names = d.specifiers.iter().map(|s| export_name(&s.local));
                self.imported.entry(d.source.value.to_string()).or_default().extend(names);
            }
            _ => {}
        }
        walk::walk_module_declaration(self, it);
    }

    fn visit_import_expression(&mut self, it: &oxc::ast::ast::ImportExpression<'a>) {
        if let Some(s) = static_string(&it.source) {
            self.push(&s, it.span.start, false);
        }
        walk::walk_import_expression(self, it);
    }

    fn visit_call_expression(&mut self, it: &oxc::ast::ast::CallExpression<'a>) {
        if it.callee.is_specific_id("require") {
            self.calls_require = true;
            if let [Argument::StringLiteral(lit)] = it.arguments.as_slice() {
                self.push(&lit.value, it.span.start, true);
            }
        }
        walk::walk_call_expression(self, it);
    }
}

fn static_string(expr: &Expression<'_>) -> Option<String> {
    match expr {
        Expression::StringLiteral(lit) => Some(lit.value.to_string()),
        Expression::TemplateLiteral(t) if t.expressions.is_empty() => {
            t.quasis.first().and_then(|q| q.value.cooked).map(|c| c.to_string())
        }
        _ => None,
    }
}

fn export_name(name: &ModuleExportName<'_>) -> String {
    match name {
        ModuleExportName::IdentifierName(n) => n.name.to_string(),
        ModuleExportName::IdentifierReference(n) => n.name.to_string(),
        ModuleExportName::StringLiteral(s) => s.value.to_string(),
    }
}

fn exports_of(program: &Program<'_>) -> Exports {
    let mut out = Exports::default();
    for stmt in &program.body {
        match stmt {
            Statement::ExportDeclaration(d) => declared_names(&d.declaration, &mut out.names),
            Statement::ExportNamedDeclaration(d) => {
                out.names.extend(d.specifiers.iter().map(|s| export_name(&s.exported)));
            }
            Statement::ExportFromDeclaration(d) => {
                out.names.extend(d.specifiers.iter().map(|s| export_name(&s.exported)));
            }
            Statement::ExportDefaultDeclaration(_) => {
                out.names.insert("default".to_owned());
            }
            Statement::ExportAllDeclaration(d) => match &d.exported {
                Some(name) => {
                    out.names.insert(export_name(name));
                }
                None => out.star_from.push(d.source.value.to_string()),
            },
            Statement::ExpressionStatement(e) => commonjs_exports(&e.expression, &mut out),
            _ => {}
        }
    }
    out
}

fn declared_names(decl: &Declaration<'_>, names: &mut BTreeSet<String>) {
    match decl {
        Declaration::VariableDeclaration(v) => {
            for d in &v.declarations {
                binding_names(&d.id, names);
            }
        }
        Declaration::FunctionDeclaration(f) => names.extend(f.id.as_ref().map(|id| id.name.to_string())),
        Declaration::ClassDeclaration(c) => names.extend(c.id.as_ref().map(|id| id.name.to_string())),
        Declaration::TSEnumDeclaration(e) => {
            names.insert(e.id.name.to_string());
        }
        _ => {}
    }
}

fn binding_names(pattern: &BindingPattern<'_>, names: &mut BTreeSet<String>) {
    names.extend(pattern.get_binding_identifiers().iter().map(|id| id.name.to_string()));
}

/// `exports.x = ...`, `module.exports.x = ...`, `module.exports = {...}`,
/// `module.exports = require('y')` and
/// `Object.defineProperty(exports, 'x', ...)`, the forms hand-written and
/// compiler-emitted CommonJS use at the top level.
fn commonjs_exports(expr: &Expression<'_>, out: &mut Exports) {
    match expr {
        Expression::AssignmentExpression(a) => {
            let Some(target) = a.left.as_member_expression() else {
                if let AssignmentTarget::AssignmentTargetIdentifier(_) = &a.left {
                    // `exports = ...` rebinds a local; it exports nothing.
                }
                return;
            };
            let object = target.object();
            let property = target.static_property_name();
            if object.is_specific_id("exports") || object.is_specific_member_access("module", "exports") {
                out.names.extend(property.map(str::to_owned));
            } else if object.is_specific_id("module") && property == Some("exports") {
                module_exports_value(&a.right, out);
            }
            // Chained `exports.a = exports.b = ...` assigns both.
            commonjs_exports(&a.right, out);
        }
        Expression::CallExpression(c) if c.callee.is_specific_member_access("Object", "defineProperty") => {
            let mut args = c.arguments.iter();
            let target = args.next().and_then(Argument::as_expression);
            let name = args.next().and_then(Argument::as_expression).and_then(static_string);
            let exports_object = target.is_some_and(|t| {
                t.is_specific_id("exports") || t.is_specific_member_access("module", "exports")
            });
            if exports_object && let Some(name) = name {
                out.names.insert(name);
            }
        }
        Expression::SequenceExpression(s) => {
            for e in &s.expressions {
                commonjs_exports(e, out);
            }
        }
        _ => {}
    }
}

fn module_exports_value(value: &Expression<'_>, out: &mut Exports) {
    match value.without_parentheses() {
        Expression::ObjectExpression(obj) => {
            out.names.clear();
            for prop in &obj.properties {
                match prop {
                    ObjectPropertyKind::ObjectProperty(p) => match &p.key {
                        PropertyKey::StaticIdentifier(id) => {
                            out.names.insert(id.name.to_string());
                        }
                        key => match key.as_expression().and_then(static_string) {
                            Some(name) => {
                                out.names.insert(name);
                            }
                            None => out.opaque = true,
                        },
                    },
                    ObjectPropertyKind::SpreadProperty(_) => out.opaque = true,
                }
            }
        }
        Expression::CallExpression(c) if c.callee.is_specific_id("require") => {
            match c.arguments.first().and_then(Argument::as_expression).and_then(static_string) {
                Some(s) => out.star_from.push(s),
                None => out.opaque = true,
            }
        }
        // `module.exports = exports.x = ...` and the like.
        Expression::AssignmentExpression(a) => module_exports_value(&a.right, out),
        _ => out.opaque = true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(name: &str, src: &str) -> Analysis {
        analyze(Path::new(name), src).unwrap()
    }

    fn names(a: &Analysis) -> Vec<&str> {
        a.exports.names.iter().map(String::as_str).collect()
    }

    #[test]
    fn typescript_is_stripped_and_type_imports_vanish() {
        let a = run(
            "index.ts",
            "import type { Foo } from './types';\nimport { helper } from './lib';\ninterface X { a: number }\nexport const run = async (p: X): Promise<number> => helper(p.a as number);\nexport function other<T>(x: T): T { return x }\n",
        );
        assert_eq!(a.kind, ModuleKind::Esm);
        assert!(!a.code.contains("interface"), "{}", a.code);
        assert!(!a.code.contains(": X"), "{}", a.code);
        let specs: Vec<_> = a.requests.iter().map(|r| r.specifier.as_str()).collect();
        assert_eq!(specs, ["./lib"]);
        assert_eq!(names(&a), ["other", "run"]);
    }

    #[test]
    fn commonjs_export_forms_are_recognised() {
        let a = run(
            "x.js",
            "const a = require('./a');\nexports.one = 1;\nmodule.exports.two = 2;\nObject.defineProperty(exports, 'three', { value: 3 });\nexports.four = exports.five = 5;\n",
        );
        assert_eq!(a.kind, ModuleKind::CommonJs);
        assert_eq!(names(&a), ["five", "four", "one", "three", "two"]);
        assert!(a.requests[0].via_require);
        let b = run("y.js", "function run() {}\nmodule.exports = { run, 'quoted': 1, handler: run };\n");
        assert_eq!(names(&b), ["handler", "quoted", "run"]);
        let c = run("z.js", "module.exports = require('./impl');\n");
        assert_eq!(c.exports.star_from, ["./impl"]);
        let d = run("w.js", "module.exports = function () {};\n");
        assert!(d.exports.opaque);
    }

    #[test]
    fn esm_reexports_and_dynamic_imports_are_collected() {
        let a = run(
            "m.mjs",
            "export * from './all';\nexport * as ns from './ns';\nexport { a as b } from './ab';\nexport default 1;\nconst x = await import('./lazy');\nconst y = import(`./tpl`);\n",
        );
        assert_eq!(names(&a), ["b", "default", "ns"]);
        assert_eq!(a.exports.star_from, ["./all"]);
        let specs: Vec<_> = a.requests.iter().map(|r| (r.specifier.as_str(), r.line)).collect();
        assert_eq!(specs, [("./all", 1), ("./ns", 2), ("./ab", 3), ("./lazy", 5), ("./tpl", 6)]);
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = analyze(Path::new("bad.ts"), "export const a = 1;\nexport const b = ;\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
