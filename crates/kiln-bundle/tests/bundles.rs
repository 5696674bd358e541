//! Bundling real app layouts: the example, every valid fixture, and the ways
//! a bundle can fail.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a panic is a failed test"
)]

use std::path::{Path, PathBuf};

use kiln_bundle::{Built, Bundle, BundleError, Import, ModuleKind, build};
use kiln_manifest::{NoVariables, load};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn bundle(dir: &Path) -> Result<Built, BundleError> {
    let manifest = load(dir, &NoVariables).unwrap().manifest;
    build(dir, &manifest)
}

/// Copy an app directory so a test can break it.
fn copy_app(from: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(from, tmp.path());
    tmp
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn every_valid_fixture_bundles() {
    let valid = repo().join("tests/fixtures/apps/valid");
    let mut count = 0;
    for entry in std::fs::read_dir(valid).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.join("manifest.yml").exists() {
            continue;
        }
        count += 1;
        match bundle(&dir) {
            Ok(built) => assert!(!built.bundle.entries.is_empty(), "{}", dir.display()),
            Err(e) => panic!("{}: {e}", dir.display()),
        }
    }
    assert!(count >= 10);
}

#[test]
fn the_example_strips_typescript_and_maps_forge_imports_to_builtins() {
    let built = bundle(&repo().join("examples/issue-triage")).unwrap();
    let b = &built.bundle;
    let index = &b.modules["src/index.ts"];
    assert_eq!(index.kind, ModuleKind::Esm);
    assert!(!index.code.contains("interface "), "types must be stripped:\n{}", index.code);
    for module in b.modules.values() {
        for (spec, target) in &module.imports {
            if spec.starts_with("@forge/") {
                assert_eq!(target, &Import::Builtin(spec.clone()));
            }
        }
    }
    assert!(b.modules.contains_key("src/lib/triage.ts"), "{:?}", b.modules.keys());
    assert_eq!(b.entries["resolver"].module, "src/resolvers/index.ts");
    assert_eq!(b.entries["resolver"].export, "handler");
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);
}

#[test]
fn node_modules_resolve_by_condition_and_never_supply_forge_modules() {
    let built = bundle(&repo().join("tests/fixtures/apps/valid/with-node-modules")).unwrap();
    let b = &built.bundle;
    let esm = &b.modules["src/index.ts"].imports;
    assert_eq!(esm["tiny-slug"], Import::Module("node_modules/tiny-slug/esm/index.js".into()));
    assert_eq!(esm["left-trim"], Import::Module("node_modules/left-trim/index.js".into()));
    assert_eq!(esm["@forge/api"], Import::Builtin("@forge/api".into()));
    let cjs = &b.modules["src/legacy.js"].imports;
    assert_eq!(cjs["tiny-slug"], Import::Module("node_modules/tiny-slug/cjs/index.js".into()));
    assert_eq!(b.modules["src/legacy.js"].kind, ModuleKind::CommonJs);
    assert!(b.modules.keys().all(|k| !k.contains("@forge")), "{:?}", b.modules.keys());
    assert!(b.modules.contains_key("node_modules/left-trim/lib/chars.js"));
}

#[test]
fn bundles_are_deterministic_and_content_addressed() {
    let dir = repo().join("examples/issue-triage");
    let a = bundle(&dir).unwrap();
    let b = bundle(&dir).unwrap();
    assert_eq!(a.hash, b.hash);
    assert_eq!(a.encoded, b.encoded);
    let copy = copy_app(&dir);
    let path = copy.path().join("src/lib/triage.ts");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\nexport const addedLater = 1;\n");
    std::fs::write(&path, text).unwrap();
    let c = bundle(copy.path()).unwrap();
    assert_ne!(a.hash, c.hash);
    assert_eq!(Bundle::decode(&a.encoded, &a.hash).unwrap(), a.bundle);
}

#[test]
fn a_tampered_bundle_is_refused_on_decode() {
    let built = bundle(&repo().join("examples/issue-triage")).unwrap();
    let mut bytes = built.encoded.clone();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    assert!(matches!(Bundle::decode(&bytes, &built.hash), Err(BundleError::Corrupt { .. })));
}

fn minimal_app(files: &[(&str, &str)], handler: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let manifest = format!(
        "app:\n  id: ari:cloud:ecosystem::app/11111111-2222-4333-8444-555555555555\n  runtime:\n    name: nodejs22.x\nmodules:\n  webtrigger:\n    - key: hook\n      function: main\n  function:\n    - key: main\n      handler: {handler}\n"
    );
    std::fs::write(tmp.path().join("manifest.yml"), manifest).unwrap();
    for (name, text) in files {
        let path = tmp.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    tmp
}

#[test]
fn a_missing_relative_import_names_the_module_and_line() {
    let app = minimal_app(
        &[("src/index.ts", "import { x } from './helpers';\nexport const run = () => x;\n")],
        "index.run",
    );
    let err = bundle(app.path()).unwrap_err().to_string();
    assert!(err.starts_with("src/index.ts:1: cannot resolve './helpers': no such file"), "{err}");
}

#[test]
fn a_missing_package_names_the_package_and_how_to_install_it() {
    let app = minimal_app(
        &[("src/index.js", "const _ = require('lodash/fp');\nexports.run = () => _;\n")],
        "index.run",
    );
    let err = bundle(app.path()).unwrap_err().to_string();
    assert!(err.contains("cannot resolve 'lodash/fp': package 'lodash' is not in node_modules"), "{err}");
    assert!(err.contains("npm install lodash"), "{err}");
}

#[test]
fn a_missing_export_names_the_module_the_export_and_what_it_has() {
    let app =
        minimal_app(&[("src/index.ts", "export const start = () => 1;\nexport default 2;\n")], "index.run");
    let err = bundle(app.path()).unwrap_err().to_string();
    assert!(
        err.starts_with("function 'main' (handler index.run): src/index.ts does not export 'run' (it exports: default, start)"),
        "{err}"
    );
}

#[test]
fn a_missing_handler_file_lists_what_was_tried() {
    let app = minimal_app(&[("src/other.ts", "export const run = 1;\n")], "index.run");
    let err = bundle(app.path()).unwrap_err();
    assert!(matches!(err, BundleError::HandlerFileMissing { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("src/index.ts, src/index.tsx, src/index.js"), "{text}");
}

#[test]
fn exports_through_star_reexports_and_commonjs_count() {
    let app = minimal_app(
        &[
            ("src/index.ts", "export * from './impl';\n"),
            ("src/impl.js", "module.exports = { run: () => 1 };\n"),
        ],
        "index.run",
    );
    bundle(app.path()).unwrap();
}

#[test]
fn syntax_errors_are_located_in_the_module() {
    let app =
        minimal_app(&[("src/index.ts", "export const run = () => {\n  return 1 +;\n};\n")], "index.run");
    let err = bundle(app.path()).unwrap_err().to_string();
    assert!(err.starts_with("src/index.ts:2:"), "{err}");
}

#[test]
fn node_builtins_map_to_kiln_builtins_and_unknown_forge_packages_warn() {
    let app = minimal_app(
        &[(
            "src/index.js",
            "const crypto = require('crypto');\nconst fs = require('node:fs');\nconst { view } = require('@forge/bridge');\nexports.run = () => [crypto, fs, view];\n",
        )],
        "index.run",
    );
    let built = bundle(app.path()).unwrap();
    let imports = &built.bundle.modules["src/index.js"].imports;
    assert_eq!(imports["crypto"], Import::Builtin("node:crypto".into()));
    assert_eq!(imports["node:fs"], Import::Builtin("node:fs".into()));
    assert_eq!(built.warnings.len(), 1, "{:?}", built.warnings);
    assert!(built.warnings[0].contains("'@forge/bridge' is a front-end package"));
}

#[test]
fn native_addons_are_refused() {
    let app = minimal_app(
        &[
            ("src/index.js", "const n = require('./addon.node');\nexports.run = () => n;\n"),
            ("src/addon.node", "ELF"),
        ],
        "index.run",
    );
    let err = bundle(app.path()).unwrap_err().to_string();
    assert!(err.contains("native and WebAssembly modules cannot run"), "{err}");
}

#[test]
fn import_cycles_terminate() {
    let app = minimal_app(
        &[
            ("src/index.ts", "import { b } from './b';\nexport const run = () => b;\nexport const a = 1;\n"),
            ("src/b.ts", "import { a } from './index';\nexport const b = () => a;\n"),
        ],
        "index.run",
    );
    assert_eq!(bundle(app.path()).unwrap().bundle.modules.len(), 2);
}

/// jenkins-for-jira's `enum RequestType { EVENT = 'event', ... }` made the
/// TypeScript transformer panic (the semantic pass had not evaluated the
/// enum's members), killing `kiln deploy` and `kiln invoke` outright.
#[test]
fn typescript_enums_bundle_instead_of_panicking() {
    let app = minimal_app(
        &[(
            "src/index.ts",
            "export enum RequestType { EVENT = 'event', PING = 'ping' }\nenum Level { Low = 1, High = Low + 1 }\nexport const run = () => [RequestType.PING, Level.High];\n",
        )],
        "index.run",
    );
    let built = bundle(app.path()).unwrap();
    let code = &built.bundle.modules["src/index.ts"].code;
    assert!(code.contains("\"ping\""), "{code}");
    assert!(!code.contains("enum "), "{code}");
}

/// node-fetch 2 does `try { convert = require('encoding').convert } catch (e) {}`
/// for its optional peer dependency; refusing the bundle because 'encoding'
/// was not installed stopped jenkins-for-jira from deploying at all.
#[test]
fn a_missing_optional_dependency_is_left_to_fail_at_run_time() {
    let app = minimal_app(
        &[
            ("src/index.js", "const f = require('fetchy');\nexports.run = () => f;\n"),
            (
                "node_modules/fetchy/package.json",
                r#"{"name":"fetchy","main":"index.js","peerDependencies":{"encoding":"^0.1.0"},"peerDependenciesMeta":{"encoding":{"optional":true}}}"#,
            ),
            (
                "node_modules/fetchy/index.js",
                "let convert;\ntry { convert = require('encoding').convert; } catch (e) {}\nmodule.exports = { convert };\n",
            ),
        ],
        "index.run",
    );
    let built = bundle(app.path()).unwrap();
    let fetchy = &built.bundle.modules["node_modules/fetchy/index.js"];
    assert!(fetchy.imports.is_empty(), "{:?}", fetchy.imports);
    assert_eq!(
        built.warnings,
        vec![
            "node_modules/fetchy/index.js:2: 'encoding' is an optional dependency of 'fetchy' and is not installed; loading it fails when the function runs"
                .to_owned()
        ]
    );
    // A dependency the package needs is still refused at deploy time.
    std::fs::write(
        app.path().join("node_modules/fetchy/package.json"),
        r#"{"name":"fetchy","main":"index.js"}"#,
    )
    .unwrap();
    let err = bundle(app.path()).unwrap_err().to_string();
    assert!(err.contains("cannot resolve 'encoding': package 'encoding' is not in node_modules"), "{err}");
}

/// jenkins-for-jira's `import { uniq } from 'lodash'`: lodash assigns
/// `module.exports` inside a function, so static analysis finds no names and
/// the engine refused the import ("Could not find export 'uniq'"). Names
/// imported by name from a CommonJS module are now part of its facade.
#[test]
fn names_imported_from_commonjs_become_its_exports() {
    let app = minimal_app(
        &[
            (
                "src/index.ts",
                "import { uniq, chunk as parts } from 'lodash';\nexport { isEmpty } from 'lodash';\nexport const run = () => [uniq, parts];\n",
            ),
            ("node_modules/lodash/package.json", r#"{"name":"lodash","main":"lodash.js"}"#),
            (
                "node_modules/lodash/lodash.js",
                ";(function () { var _ = { uniq: function (a) { return a; } }; module.exports = _; }.call(this));\n",
            ),
        ],
        "index.run",
    );
    let built = bundle(app.path()).unwrap();
    let lodash = &built.bundle.modules["node_modules/lodash/lodash.js"];
    assert_eq!(lodash.kind, ModuleKind::CommonJs);
    assert_eq!(lodash.exports, vec!["chunk".to_owned(), "isEmpty".to_owned(), "uniq".to_owned()]);
}

/// jenkins-for-jira imports node-fetch, whose code requires node:http at
/// load time and so failed every function that imported it, fetch or not.
#[test]
fn node_fetch_is_served_by_kilns_fetch() {
    let app = minimal_app(
        &[("src/index.ts", "import fetch from 'node-fetch';\nexport const run = () => fetch;\n")],
        "index.run",
    );
    let built = bundle(app.path()).unwrap();
    assert_eq!(
        built.bundle.modules["src/index.ts"].imports["node-fetch"],
        Import::Builtin("node-fetch".into())
    );
    assert_eq!(
        built.warnings,
        vec![
            "src/index.ts: 'node-fetch' is served by Kiln's fetch (the egress gateway, to the hosts the manifest declares); the package itself is not bundled"
                .to_owned()
        ]
    );
}
